//! The protocol endpoints: which connection serves a pipeline or cursor.
//!
//! - Baton-less pipeline that closes its stream and only queries: run right
//!   here on the worker thread's read connection (no thread hop).
//! - Baton-less pipeline that closes its stream and may write: on the single
//!   writer connection. A lone INSERT/UPDATE/DELETE/REPLACE is queued to the
//!   writer thread, which commits the ones queued together at once (group
//!   commit); another lone statement (DDL, …) runs right here when the
//!   writer is free; anything else (or when busy) is queued.
//! - Anything that keeps or continues a stream: the stream's own connection,
//!   on a blocking thread — except what cannot wait for another connection
//!   (ending a transaction that holds the write lock; a transaction's first
//!   write while the lock is free), which runs here.

use crate::cursor;
use crate::db::Inline;
use crate::encoding::Encoding;
use crate::errors::{self, code};
use crate::exec::{self, StreamCtx};
use crate::node::Node;
use crate::streams::{Lease, StreamState};
use crate::{lockwait, writer};
use bytes::Bytes;
use conductor_hrana::{
    BatchCond, CursorReqBody, CursorRespBody, Error, PipelineReqBody, PipelineRespBody,
    StreamRequest, StreamResponse, StreamResult,
};
use hyper::StatusCode;
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// A request that failed as a whole: an HTTP status and an `Error` body.
pub struct Failure(pub StatusCode, pub Error);

impl Failure {
    pub fn bad_request(e: Error) -> Failure {
        Failure(StatusCode::BAD_REQUEST, e)
    }
    pub fn internal(message: impl Into<String>) -> Failure {
        Failure(
            StatusCode::INTERNAL_SERVER_ERROR,
            errors::error(code::INTERNAL, message),
        )
    }
}

/// The encoded response and how long the request waited for the write
/// lock.
pub async fn pipeline(
    node: &Arc<Node>,
    body: &[u8],
    encoding: Encoding,
) -> Result<(Vec<u8>, Duration), Failure> {
    let req: PipelineReqBody = encoding.pipeline_request(body)?;
    let closes = req
        .requests
        .iter()
        .any(|r| matches!(r, StreamRequest::Close));
    let (resp, waited) = match req.baton {
        None if closes => {
            let (results, waited) = if let Some(results) = fast_read(node, &req.requests) {
                (results, Duration::ZERO)
            } else if let Some(results) = inline_write(node, &req.requests) {
                // Inline writes never wait (busy timeout off). Measured
                // with 8 pgbench clients updating by key (A/B, nodes
                // swapped): 93–95 µs of node CPU per write this way,
                // 122–153 µs when every lone write went to the writer
                // thread; group commit still takes what finds it busy.
                (results, Duration::ZERO)
            } else if let Some(stmt) = lone_dml(&req.requests) {
                grouped_write(node, stmt.clone()).await?
            } else {
                on_writer(node, req.requests).await?
            };
            (
                PipelineRespBody {
                    baton: None,
                    base_url: None,
                    results,
                    lock_wait_us: 0,
                },
                waited,
            )
        }
        None => {
            let lease = node.streams.open().map_err(too_many)?;
            node.stats.streams_opened.fetch_add(1, Relaxed);
            on_stream(node, lease, None, req.requests).await?
        }
        Some(baton) => {
            let (lease, state) = node.streams.acquire(&baton).map_err(Failure::bad_request)?;
            on_stream(node, lease, Some(state), req.requests).await?
        }
    };
    node.stats.count_rows(&resp.results);
    if !waited.is_zero() {
        node.stats.lock_waits.fetch_add(1, Relaxed);
        node.stats
            .lock_wait_us
            .fetch_add(waited.as_micros() as u64, Relaxed);
    }
    Ok((encoding.pipeline_response(resp)?, waited))
}

fn too_many(e: Error) -> Failure {
    Failure(StatusCode::SERVICE_UNAVAILABLE, e)
}

/// Runs a query-only, self-closing pipeline on this worker thread's read
/// connection; `None` if it may write (or the reader is unavailable).
fn fast_read(node: &Node, requests: &[StreamRequest]) -> Option<Vec<StreamResult>> {
    if !every_statement(requests, exec::looks_like_query) {
        return None;
    }
    node.db
        .with_reader(|conn| {
            // SQLite decides read-only-ness: prepare (cached) every statement
            // before running any of them.
            let readonly = |sql: &Option<String>| {
                sql.as_deref()
                    .map(|sql| conn.prepare_cached(sql).map_or(true, |s| s.readonly()))
                    .unwrap_or(true)
            };
            let all_readonly = requests.iter().all(|r| match r {
                StreamRequest::Execute { stmt } => readonly(&stmt.sql),
                StreamRequest::Batch { batch } => batch.steps.iter().all(|s| readonly(&s.stmt.sql)),
                _ => true,
            });
            if !all_readonly {
                return None;
            }
            node.stats.fast_reads.fetch_add(1, Relaxed);
            let mut ctx = StreamCtx::default();
            Some(exec::run_pipeline(
                conn,
                &mut ctx,
                requests,
                &node.stats.statements,
            ))
        })
        .ok()
        .flatten()
}

/// The statement of a self-closing pipeline of one plain INSERT, UPDATE,
/// DELETE or REPLACE: it may share a commit with others (group commit).
fn lone_dml(requests: &[StreamRequest]) -> Option<&conductor_hrana::Stmt> {
    match requests {
        [StreamRequest::Execute { stmt }, StreamRequest::Close]
            if stmt.sql.as_deref().is_some_and(writer::groupable) =>
        {
            Some(stmt)
        }
        _ => None,
    }
}

async fn grouped_write(
    node: &Node,
    stmt: conductor_hrana::Stmt,
) -> Result<(Vec<StreamResult>, Duration), Failure> {
    node.stats.writer_pipelines.fetch_add(1, Relaxed);
    node.stats.statements.fetch_add(1, Relaxed);
    let (result, waited) = node
        .db
        .lone_write(stmt)
        .await
        .ok_or_else(|| Failure::internal("the node is shutting down"))?;
    Ok((
        vec![
            match result {
                Ok(result) => StreamResult::Ok {
                    response: StreamResponse::Execute { result },
                },
                Err(error) => StreamResult::Error { error },
            },
            StreamResult::Ok {
                response: StreamResponse::Close,
            },
        ],
        waited,
    ))
}

/// Runs a single-statement self-closing pipeline (`execute`, `close`) on the
/// writer connection right here on the worker thread, if that can be done
/// without waiting (see `Db::try_write_inline`); `None` otherwise.
fn inline_write(node: &Node, requests: &[StreamRequest]) -> Option<Vec<StreamResult>> {
    let [StreamRequest::Execute { stmt }, StreamRequest::Close] = requests else {
        return None;
    };
    let outcome = node.db.try_write_inline(|conn| {
        let result = exec::execute(conn, &HashMap::new(), stmt);
        if result.as_ref().is_err_and(errors::lock_was_taken) {
            // It changed nothing: it can run again on the writer thread.
            return None;
        }
        if !conn.is_autocommit() {
            // e.g. a lone BEGIN: the stream ends with this request.
            let _ = conn.execute_batch("ROLLBACK");
        }
        Some(result)
    });
    match outcome {
        Inline::Done(result) => {
            node.stats.inline_writes.fetch_add(1, Relaxed);
            node.stats.statements.fetch_add(1, Relaxed);
            let first = match result {
                Ok(result) => StreamResult::Ok {
                    response: StreamResponse::Execute { result },
                },
                Err(error) => StreamResult::Error { error },
            };
            Some(vec![
                first,
                StreamResult::Ok {
                    response: StreamResponse::Close,
                },
            ])
        }
        Inline::Busy => {
            node.stats.write_lock_waits.fetch_add(1, Relaxed);
            None
        }
    }
}

/// Runs a self-closing pipeline on the writer thread. A transaction it
/// leaves open is rolled back: its stream ends with the request.
async fn on_writer(
    node: &Arc<Node>,
    requests: Vec<StreamRequest>,
) -> Result<(Vec<StreamResult>, Duration), Failure> {
    node.stats.writer_pipelines.fetch_add(1, Relaxed);
    let n = node.clone();
    node.db
        .with_writer(move |conn| {
            lockwait::take();
            let mut ctx = StreamCtx::default();
            let results = exec::run_pipeline(conn, &mut ctx, &requests, &n.stats.statements);
            if !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            (results, lockwait::take())
        })
        .await
        .ok_or_else(|| Failure::internal("the node is shutting down"))
}

/// Gets the stream's connection (a new stream takes one from the pool);
/// runs on a blocking thread.
fn stream_state(node: &Node, state: Option<StreamState>) -> Result<StreamState, Error> {
    match state {
        Some(s) => Ok(s),
        None => node
            .db
            .take_conn()
            .map(|conn| StreamState {
                conn,
                ctx: StreamCtx::default(),
            })
            .map_err(errors::from_sqlite),
    }
}

async fn on_stream(
    node: &Arc<Node>,
    lease: Lease,
    state: Option<StreamState>,
    requests: Vec<StreamRequest>,
) -> Result<(PipelineRespBody, Duration), Failure> {
    let ran = match state {
        // Ending a transaction that holds the write lock waits for no lock
        // and takes no time worth a thread: it runs here, without the hop
        // to a blocking thread and back. Other statements may run long, and
        // would hold up every request queued on this worker thread.
        Some(state)
            if every_statement(&requests, exec::ends_transaction)
                && holds_write_lock(&state.conn) =>
        {
            node.stats.inline_stream_pipelines.fetch_add(1, Relaxed);
            run_on_stream(node, lease, Some(state), requests)
        }
        // A transaction's first write, when the write lock is free (and no
        // write waits for it, to go first): it waits for nothing either, so
        // it runs here too.
        None if opens_write_transaction(&requests) => match node.db.idle_conn_for_write() {
            Some(conn) => match open_without_waiting(node, conn, &requests) {
                Opened::Ran(state, results) => {
                    node.stats.inline_stream_pipelines.fetch_add(1, Relaxed);
                    Ok(hand_back(node, lease, state, results, Duration::ZERO))
                }
                Opened::Busy(conn) => {
                    let state = StreamState {
                        conn,
                        ctx: StreamCtx::default(),
                    };
                    on_blocking_thread(node, lease, Some(state), requests).await?
                }
                Opened::Failed => {
                    node.streams.finish(lease.id, None);
                    Err(internal_error())
                }
            },
            None => on_blocking_thread(node, lease, None, requests).await?,
        },
        state => on_blocking_thread(node, lease, state, requests).await?,
    };
    match ran {
        Ok((baton, results, waited)) => Ok((
            PipelineRespBody {
                baton,
                base_url: None,
                results,
                lock_wait_us: 0,
            },
            waited,
        )),
        Err(e) => Err(Failure(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
}

async fn on_blocking_thread(
    node: &Arc<Node>,
    lease: Lease,
    state: Option<StreamState>,
    requests: Vec<StreamRequest>,
) -> Result<Result<(Option<String>, Vec<StreamResult>, Duration), Error>, Failure> {
    let n = node.clone();
    // The blocking task hands the stream back itself: if the client goes
    // away and this future is dropped, the stream is still returned (or
    // forgotten), never left checked out. Its next baton is then never
    // delivered, so nothing can continue the stream: it is closed as soon
    // as both the request has run and the client is known gone, rolling
    // its transaction back, rather than holding the write lock it may have
    // taken (after waiting for it) until it expires.
    let id = lease.id;
    let watch = Arc::new(std::sync::Mutex::new(Abandon::default()));
    let mut guard = AbandonOnDrop {
        node: node.clone(),
        id,
        watch: watch.clone(),
        armed: true,
    };
    let ran = tokio::task::spawn_blocking(move || {
        let ran = run_on_stream(&n, lease, state, requests);
        let mut w = watch.lock().unwrap();
        w.ran = true;
        if w.abandoned {
            n.close_stream(id);
        }
        ran
    })
    .await
    .map_err(|_| Failure::internal("internal error while executing the request"));
    guard.armed = false;
    ran
}

/// Whether a stream's request has run and whether its client went away.
#[derive(Default)]
struct Abandon {
    ran: bool,
    abandoned: bool,
}

/// Dropped with a request's future when its client goes away before the
/// answer: closes the stream once the request has run.
struct AbandonOnDrop {
    node: Arc<Node>,
    id: u64,
    watch: Arc<std::sync::Mutex<Abandon>>,
    /// Cleared once the answer is handed to the HTTP side.
    armed: bool,
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut w = self.watch.lock().unwrap();
        w.abandoned = true;
        if w.ran {
            let (node, id) = (self.node.clone(), self.id);
            tokio::task::spawn_blocking(move || node.close_stream(id));
        }
    }
}

/// Whether a new stream's pipeline is one batch that begins a write
/// transaction and then only runs plain INSERT/UPDATE/DELETE/REPLACE, each
/// step only if the one before it succeeded — how a transaction's first
/// write to a node arrives. If its `BEGIN IMMEDIATE` fails, nothing else
/// ran.
fn opens_write_transaction(requests: &[StreamRequest]) -> bool {
    let [StreamRequest::Batch { batch }] = requests else {
        return false;
    };
    let Some((first, rest)) = batch.steps.split_first() else {
        return false;
    };
    first.condition.is_none()
        && first
            .stmt
            .sql
            .as_deref()
            .is_some_and(|sql| sql.trim().eq_ignore_ascii_case("BEGIN IMMEDIATE"))
        && !rest.is_empty()
        && rest.iter().enumerate().all(|(i, step)| {
            step.condition == Some(BatchCond::Ok { step: i as u32 })
                && step.stmt.sql.as_deref().is_some_and(writer::groupable)
        })
}

/// What [`open_without_waiting`] did.
enum Opened {
    /// It ran; the stream's state and the pipeline's results.
    Ran(StreamState, Vec<StreamResult>),
    /// The write lock was taken: nothing ran, here is the connection back.
    Busy(rusqlite::Connection),
    /// It panicked; the connection was dropped (which rolls it back).
    Failed,
}

/// Runs a pipeline that [`opens_write_transaction`] on `conn` here on the
/// worker thread, with the busy timeout off: if the write lock is taken,
/// its `BEGIN IMMEDIATE` fails at once and nothing else runs, and the
/// connection comes back for the pipeline to run on a blocking thread,
/// where it may wait. Once it holds the lock, nothing in it waits for
/// another connection.
fn open_without_waiting(
    node: &Node,
    conn: rusqlite::Connection,
    requests: &[StreamRequest],
) -> Opened {
    let mut state = StreamState {
        conn,
        ctx: StreamCtx::default(),
    };
    // Statements are counted only for the run whose results are kept.
    let statements = std::sync::atomic::AtomicU64::new(0);
    let ran = node.db.without_waiting(&state.conn, || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            exec::run_pipeline(&state.conn, &mut state.ctx, requests, &statements)
        }))
    });
    match ran {
        None => Opened::Busy(state.conn),
        Some(Err(_)) => Opened::Failed,
        Some(Ok(results)) if began_busy(&results) && state.conn.is_autocommit() => {
            Opened::Busy(state.conn)
        }
        Some(Ok(results)) => {
            node.stats
                .statements
                .fetch_add(statements.into_inner(), Relaxed);
            Opened::Ran(state, results)
        }
    }
}

/// Whether the batch's first step (its BEGIN) failed for a lock held
/// elsewhere.
fn began_busy(results: &[StreamResult]) -> bool {
    let [StreamResult::Ok {
        response: StreamResponse::Batch { result },
    }] = results
    else {
        return false;
    };
    result
        .step_errors
        .first()
        .is_some_and(|e| e.as_ref().is_some_and(errors::lock_was_taken))
}

/// Whether the pipeline's requests are statements (or close and
/// autocommit queries) and every statement's SQL satisfies `sql_is`.
fn every_statement(requests: &[StreamRequest], sql_is: fn(&str) -> bool) -> bool {
    let ok = |stmt: &conductor_hrana::Stmt| stmt.sql.as_deref().is_some_and(sql_is);
    requests.iter().all(|r| match r {
        StreamRequest::Close | StreamRequest::GetAutocommit => true,
        StreamRequest::Execute { stmt } => ok(stmt),
        StreamRequest::Batch { batch } => batch.steps.iter().all(|s| ok(&s.stmt)),
        _ => false,
    })
}

/// Whether the connection is inside a transaction that holds its
/// database's write lock (nothing it runs waits for another connection).
fn holds_write_lock(conn: &rusqlite::Connection) -> bool {
    matches!(
        conn.transaction_state(None::<&str>),
        Ok(rusqlite::TransactionState::Write)
    )
}

/// Runs a stream's requests on its connection (taking one from the pool for
/// a new stream) and hands the stream back: the next baton, or none if the
/// requests closed it.
fn run_on_stream(
    n: &Node,
    lease: Lease,
    state: Option<StreamState>,
    requests: Vec<StreamRequest>,
) -> Result<(Option<String>, Vec<StreamResult>, Duration), Error> {
    let id = lease.id;
    let mut state = match stream_state(n, state) {
        Ok(s) => s,
        Err(e) => {
            n.streams.finish(id, None);
            return Err(e);
        }
    };
    lockwait::take();
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        exec::run_pipeline(&state.conn, &mut state.ctx, &requests, &n.stats.statements)
    }));
    let waited = lockwait::take();
    let Ok(results) = run else {
        // Dropping the connection rolls its transaction back.
        n.streams.finish(id, None);
        return Err(internal_error());
    };
    Ok(hand_back(n, lease, state, results, waited))
}

/// Returns a stream after its requests ran: kept for its next baton, or,
/// if they closed it, its connection back to the pool.
fn hand_back(
    n: &Node,
    lease: Lease,
    state: StreamState,
    results: Vec<StreamResult>,
    waited: Duration,
) -> (Option<String>, Vec<StreamResult>, Duration) {
    if state.ctx.closed {
        n.db.give_back(state.conn);
        n.streams.finish(lease.id, None);
        (None, results, waited)
    } else {
        n.streams.finish(lease.id, Some(state));
        (Some(lease.next_baton), results, waited)
    }
}

fn internal_error() -> Error {
    errors::error(code::INTERNAL, "internal error while executing the request")
}

/// Starts a cursor and returns the receiving end of its body.
pub async fn cursor(
    node: &Arc<Node>,
    body: &[u8],
    encoding: Encoding,
) -> Result<mpsc::Receiver<Bytes>, Failure> {
    let req: CursorReqBody = encoding.cursor_request(body)?;
    let (lease, state) = match req.baton {
        None => {
            let lease = node.streams.open().map_err(too_many)?;
            node.stats.streams_opened.fetch_add(1, Relaxed);
            (lease, None)
        }
        Some(baton) => {
            let (lease, state) = node.streams.acquire(&baton).map_err(Failure::bad_request)?;
            (lease, Some(state))
        }
    };
    let mut first_line = Vec::with_capacity(256);
    encoding.cursor_head(
        &CursorRespBody {
            baton: Some(lease.next_baton.clone()),
            base_url: None,
        },
        &mut first_line,
    );
    let (tx, rx) = mpsc::channel(cursor::CHANNEL_CHUNKS);
    let n = node.clone();
    tokio::task::spawn_blocking(move || {
        let state = match stream_state(&n, state) {
            Ok(s) => s,
            Err(e) => {
                n.streams.finish(lease.id, None);
                let _ = tx.blocking_send(cursor::fatal(first_line, e, encoding));
                return;
            }
        };
        let stall = n.config.cursor_stall_timeout();
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            cursor::run(
                &state.conn,
                &state.ctx,
                &req.batch,
                first_line,
                cursor::Output {
                    tx: &tx,
                    encoding,
                    stall,
                },
                &n.stats,
            )
        }));
        match run {
            Ok(tail) => {
                n.streams.finish(lease.id, Some(state));
                tail.send();
            }
            // After a panic the connection's state is unknown: drop it
            // (that rolls back) and forget the stream.
            Err(_) => n.streams.finish(lease.id, None),
        }
    });
    Ok(rx)
}
