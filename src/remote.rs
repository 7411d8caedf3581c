//! The bridge to the core's I/O executor: one executor per backend, created
//! on first use (never in the postmaster), and waits that keep answering
//! cancel and statement_timeout.

use crate::errors::raise;
use crate::gucs;
use crate::health;
use conductor_core::client::{
    first_error, ClientConfig, NodeEndpoint, NodeError, NodeRef, WireEncoding,
};
use conductor_core::executor::{
    Executor, ExecutorConfig, ScanHandle, ScanOptions, ShardError, ShardStats,
};
use conductor_core::topology::ShardLocation;
use conductor_hrana::decimal;
use conductor_hrana::{
    PipelineReqBody, PipelineRespBody, StmtResult, StreamRequest, StreamResponse, StreamResult,
};
use pgrx::PgSqlErrorCode;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use conductor_core::executor::{ShardQuery, ShardRequest};

/// How long the backend blocks before checking for interrupts again.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Sleep `pause` while answering cancel and statement_timeout (checked
/// every `POLL_INTERVAL`).
pub fn sleep_interruptibly(pause: Duration) {
    let until = Instant::now() + pause;
    loop {
        pgrx::check_for_interrupts!();
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(POLL_INTERVAL));
    }
}

static EXECUTOR: OnceLock<Executor> = OnceLock::new();

/// `conductor.wire_encoding` as the executor read it (once per backend).
static ENCODING: OnceLock<gucs::WireEncoding> = OnceLock::new();

/// The encoding this backend speaks to the nodes: the setting read when it
/// first talked to one, or the current one until then.
pub fn wire_encoding() -> gucs::WireEncoding {
    ENCODING
        .get()
        .copied()
        .unwrap_or_else(|| gucs::WIRE_ENCODING.get())
}

/// The backend's executor, with the session's current request deadline.
fn executor() -> &'static Executor {
    let timeout = gucs::request_timeout();
    let executor = EXECUTOR.get_or_init(|| {
        register_exit_callback();
        let mut config = ExecutorConfig::default();
        config.client = ClientConfig {
            request_timeout: timeout,
            // The silence allowed inside a streaming answer follows the
            // request deadline (capped by this).
            idle_timeout: Duration::from_secs(24 * 3600),
            ca_pem: tls_ca_pem(),
            encoding: match *ENCODING.get_or_init(|| gucs::WIRE_ENCODING.get()) {
                gucs::WireEncoding::Auto => WireEncoding::Auto,
                gucs::WireEncoding::Json => WireEncoding::Json,
                gucs::WireEncoding::Protobuf => WireEncoding::Protobuf,
            },
            ..ClientConfig::default()
        };
        Executor::new(config)
    });
    executor.set_request_timeout(timeout);
    executor
}

/// The certificate authorities of `conductor.tls_ca_file`, if set.
fn tls_ca_pem() -> Option<Vec<u8>> {
    let path = gucs::TLS_CA_FILE.get()?;
    let path = path.to_string_lossy().into_owned();
    match std::fs::read(&path) {
        Ok(pem) => Some(pem),
        Err(e) => raise(
            PgSqlErrorCode::ERRCODE_CONFIG_FILE_ERROR,
            format!("conductor.tls_ca_file: cannot read \"{path}\": {e}"),
        )
        .error(),
    }
}

/// How long an open remote transaction's stream may go unused before the
/// I/O side renews it (well under the node's idle expiry, 10 s by default).
pub const KEEPALIVE_EVERY: Duration = Duration::from_secs(1);

/// Renew a remote transaction's stream from the I/O side until its keeper
/// is finished (see `conductor_core::keepalive`).
pub fn keep_alive(
    endpoint: NodeEndpoint,
    keeper: std::sync::Arc<conductor_core::keepalive::StreamKeeper>,
) {
    executor().keep_alive(endpoint, keeper, KEEPALIVE_EVERY);
}

/// See `Executor::remove_extra_in_background` (virtual-index extras).
pub fn remove_extra_in_background(extra: conductor_core::executor::ExtraEntry) {
    executor().remove_extra_in_background(extra);
}

/// At process exit: let background removals finish (bounded by the request
/// deadline), so none is cut while it holds a node's write lock.
#[pgrx::pg_guard]
unsafe extern "C-unwind" fn finish_background(_code: i32, _arg: pgrx::pg_sys::Datum) {
    if let Some(executor) = EXECUTOR.get() {
        executor.wait_for_background(gucs::request_timeout().min(Duration::from_secs(5)));
    }
}

/// Registered when the backend creates its executor (not in _PG_init: a
/// backend forked from the postmaster starts with an empty exit list).
fn register_exit_callback() {
    // SAFETY: called once per process, from the get_or_init below; the
    // callback only waits on an atomic counter of this process.
    unsafe { pgrx::pg_sys::on_proc_exit(Some(finish_background), pgrx::pg_sys::Datum::from(0)) };
}

pub fn endpoint(placement: &ShardLocation, token: Option<String>) -> NodeEndpoint {
    NodeEndpoint {
        node_id: placement.node_id.clone(),
        url: placement.url.clone(),
        token,
    }
}

/// What a scan's caller knows of how many rows each shard returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardRows {
    /// A few (a lookup by key): each shard fetched in one request.
    Few,
    /// Any number, and the statements have no LIMIT of their own: a lone
    /// shard is first asked for at most [`SMALL_SCAN_ROWS`] in one
    /// request, and streamed only if it has more.
    Unknown,
    /// Any number (the statements may carry a LIMIT): streamed.
    Streamed,
}

/// The most rows a lone shard of unknown size is fetched whole with (a
/// tenant's rows, one customer's orders joined with their lines); past
/// it, the shard is streamed, and that first request was wasted.
pub const SMALL_SCAN_ROWS: usize = 500;

/// Start a parallel scan of every shard in `queries`.
pub fn scan(queries: Vec<ShardQuery>, columns: usize, rows: ShardRows) -> ScanHandle {
    let mut options = ScanOptions::new(columns);
    options.bounded = rows == ShardRows::Few;
    options.small_first = (rows == ShardRows::Unknown).then_some(SMALL_SCAN_ROWS);
    options.retries = gucs::READ_RETRIES.get().max(0) as u32;
    options.retry_backoff = Duration::from_millis(gucs::RETRY_BACKOFF_MS.get().max(1) as u64);
    options.skip_failed = gucs::ON_SHARD_FAILURE.get() == gucs::OnShardFailure::Skip;
    options.max_requests_per_node = gucs::MAX_REQUESTS_PER_NODE.get().max(1) as usize;
    // With one request per node (the default), a scan never mixes the
    // before and after of one concurrent commit on a node: each node's
    // shards are read in one read transaction.
    options.one_snapshot_per_node = options.max_requests_per_node == 1;
    executor().scan(queries, options)
}

/// Send every request at once and wait for all of them, answering cancel
/// while waiting. A request whose pipeline reports an error (a failed
/// statement or batch step) is returned as that shard's error.
pub fn execute(requests: Vec<ShardRequest>) -> Vec<Result<PipelineRespBody, ShardError>> {
    execute_with(requests, true)
}

/// Like [`execute`], but never checks for interrupts: for transaction end,
/// where an ERROR is not allowed. The requests' own deadlines bound the wait.
pub fn execute_uninterruptible(
    requests: Vec<ShardRequest>,
) -> Vec<Result<PipelineRespBody, ShardError>> {
    execute_with(requests, false)
}

thread_local! {
    /// While a statement records them: per node, the time its requests
    /// waited for the node's write lock (as each node reported it).
    static LOCK_WAITS: RefCell<Option<BTreeMap<String, Duration>>> = const { RefCell::new(None) };
    /// While a request only takes a node's write lock: when its wait runs
    /// out, the limit, the node's name, and whether the request is then
    /// given up quietly (SKIP LOCKED) rather than failing the statement.
    static LOCK_DEADLINE: RefCell<Option<LockDeadline>> = const { RefCell::new(None) };
    /// Set when a request of [`unless_lock_held`] was given up.
    static GAVE_UP: Cell<bool> = const { Cell::new(false) };
    /// While a scan locks the rows of this relation NOWAIT or SKIP LOCKED.
    static ROW_LOCK_WAIT: RefCell<Option<(String, RowLockWait)>> = const { RefCell::new(None) };
}

struct LockDeadline {
    at: Instant,
    limit: Duration,
    node: String,
    give_up: bool,
}

/// A row lock's wait policy other than waiting.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RowLockWait {
    NoWait,
    SkipLocked,
}

/// How long a lock request under NOWAIT may go unanswered before the lock
/// counts as held by another transaction. A free lock is answered within a
/// round trip, far below this even on a loaded machine; a request cannot
/// tell "held" from "slow" any sooner.
const NOWAIT_GRACE: Duration = Duration::from_millis(100);

/// Postgres' `lock_timeout`, when set.
pub fn lock_timeout() -> Option<Duration> {
    // SAFETY: reads a GUC variable of this backend.
    let ms = unsafe { pgrx::pg_sys::LockTimeout };
    (ms > 0).then(|| Duration::from_millis(ms as u64))
}

/// How long a wait for a node's write lock may last before the statement
/// fails (55P03): [`NOWAIT_GRACE`] under a row lock's NOWAIT, else
/// Postgres' `lock_timeout`; `None`: up to the node's busy timeout.
pub fn lock_wait_limit() -> Option<Duration> {
    if ROW_LOCK_WAIT.with(|n| n.borrow().is_some()) {
        Some(NOWAIT_GRACE)
    } else {
        lock_timeout()
    }
}

/// Whether the running scan locks its rows SKIP LOCKED.
pub fn skipping_locked() -> bool {
    ROW_LOCK_WAIT.with(|n| matches!(*n.borrow(), Some((_, RowLockWait::SkipLocked))))
}

/// Run `f`, the scan of `relation` under `FOR UPDATE/SHARE … NOWAIT` or
/// `SKIP LOCKED`, where a node write lock held by another transaction is
/// not waited for: a lock request unanswered after [`NOWAIT_GRACE`] is
/// given up, and NOWAIT then fails the statement as Postgres does for a
/// locked row (55P03), SKIP LOCKED leaves that node's rows out.
pub fn locking_rows<R>(relation: &str, wait: RowLockWait, f: impl FnOnce() -> R) -> R {
    struct Reset(Option<(String, RowLockWait)>);
    impl Drop for Reset {
        fn drop(&mut self) {
            let outer = self.0.take();
            ROW_LOCK_WAIT.with(|n| *n.borrow_mut() = outer);
        }
    }
    let outer = ROW_LOCK_WAIT.with(|n| n.borrow_mut().replace((relation.to_string(), wait)));
    let _reset = Reset(outer);
    f()
}

/// Run `f`, whose requests only wait for `node`'s write lock, failing the
/// statement as Postgres' `lock_timeout` does (55P03) when `limit` passes
/// before they are answered. The abandoned request is left to the node,
/// like a cancelled one.
pub fn within_lock_timeout<R>(limit: Duration, node: &str, f: impl FnOnce() -> R) -> R {
    with_lock_deadline(limit, node, false, f)
}

/// Run `f`, whose requests only wait for `node`'s write lock, giving them
/// up when `limit` passes before they are answered: `None` then (the lock
/// is held by another transaction; the requests' results are errors), else
/// `f`'s result.
pub fn unless_lock_held<R>(limit: Duration, node: &str, f: impl FnOnce() -> R) -> Option<R> {
    GAVE_UP.with(|g| g.set(false));
    let r = with_lock_deadline(limit, node, true, f);
    (!GAVE_UP.with(|g| g.replace(false))).then_some(r)
}

fn with_lock_deadline<R>(limit: Duration, node: &str, give_up: bool, f: impl FnOnce() -> R) -> R {
    struct Reset(Option<LockDeadline>);
    impl Drop for Reset {
        fn drop(&mut self) {
            let outer = self.0.take();
            LOCK_DEADLINE.with(|d| *d.borrow_mut() = outer);
        }
    }
    let outer = LOCK_DEADLINE.with(|d| {
        d.borrow_mut().replace(LockDeadline {
            at: Instant::now() + limit,
            limit,
            node: node.to_string(),
            give_up,
        })
    });
    let _reset = Reset(outer);
    f()
}

/// Whether the lock wait of [`with_lock_deadline`] ran out: raises 55P03
/// for NOWAIT and `lock_timeout`; true when the requests are to be given
/// up quietly.
fn lock_deadline_passed() -> bool {
    let expired = LOCK_DEADLINE.with(|d| {
        d.borrow()
            .as_ref()
            .filter(|d| Instant::now() >= d.at)
            .map(|d| (d.limit, d.node.clone(), d.give_up))
    });
    let Some((limit, node, give_up)) = expired else {
        return false;
    };
    if give_up {
        GAVE_UP.with(|g| g.set(true));
        return true;
    }
    if let Some((relation, _)) = ROW_LOCK_WAIT.with(|n| n.borrow().clone()) {
        raise(
            PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
            format!("could not obtain lock on row in relation \"{relation}\""),
        )
        .detail(format!(
            "conductor: the write lock of node {node}, which locks the rows of its shards, is held by another transaction (NOWAIT)."
        ))
        .error()
    }
    raise(
        PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
        "canceling statement due to lock timeout",
    )
    .detail(format!(
        "conductor: waited {} ms for the write lock of node {node} (lock_timeout).",
        limit.as_millis()
    ))
    .error()
}

/// Per node, the time the requests sent while running `f` waited for the
/// node's write lock, added to `into` (every node that answered gets an
/// entry, zero when it did not wait): for EXPLAIN ANALYZE.
pub fn recording_lock_waits<R>(into: &mut BTreeMap<String, Duration>, f: impl FnOnce() -> R) -> R {
    let outer = LOCK_WAITS.with(|w| w.replace(Some(BTreeMap::new())));
    let r = f();
    let mine = LOCK_WAITS.with(|w| w.replace(outer)).unwrap_or_default();
    for (node, waited) in mine {
        *into.entry(node).or_default() += waited;
    }
    r
}

/// "node-1 0.000 ms, node-2 12.345 ms", for EXPLAIN.
pub fn describe_lock_waits(waits: &BTreeMap<String, Duration>) -> String {
    waits
        .iter()
        .map(|(node, d)| format!("{node} {:.3} ms", d.as_secs_f64() * 1000.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Send every request at once and return the node's answers as they are
/// (errors inside a pipeline stay in the body): for callers that need the
/// baton or per-step results even when a step failed.
pub fn execute_raw(
    requests: Vec<ShardRequest>,
    interruptible: bool,
) -> Vec<Result<PipelineRespBody, ShardError>> {
    // A node cooling down after repeated failures is not contacted: its
    // requests fail at once, as if the connection had been refused.
    let mut results: Vec<Option<Result<PipelineRespBody, ShardError>>> = Vec::new();
    let mut send = Vec::new();
    let mut send_nodes = Vec::new();
    let mut send_urls = Vec::new();
    let mut urls = Vec::new();
    for r in requests {
        urls.push(r.endpoint.url.clone());
        match health::refusal(&r.endpoint, r.shard_id) {
            Some(refused) => results.push(Some(Err(refused))),
            None => {
                results.push(None);
                send_nodes.push(r.endpoint.node_id.clone());
                send_urls.push(r.endpoint.url.clone());
                send.push(r);
            }
        }
    }
    let log_min = log_min_duration();
    let logged: Vec<(Option<u32>, String)> = match log_min {
        Some(_) => send
            .iter()
            .map(|r| (r.shard_id, r.endpoint.node_id.clone()))
            .collect(),
        None => Vec::new(),
    };
    let started = Instant::now();
    let sent = if send.is_empty() {
        Vec::new()
    } else {
        let _in_flight = crate::stats::InFlight::new(
            send.iter()
                .map(|r| (r.endpoint.url.as_str(), r.endpoint.node_id.as_str())),
        );
        let mut handle = executor().execute(send);
        loop {
            if let Some(r) = handle.wait(POLL_INTERVAL) {
                break r;
            }
            if interruptible {
                pgrx::check_for_interrupts!();
                if lock_deadline_passed() {
                    // Given up (SKIP LOCKED): the requests are abandoned like
                    // cancelled ones, and nothing is counted against the
                    // nodes, whose locks are merely taken.
                    drop(handle);
                    let mut sent = send_nodes.into_iter().zip(send_urls);
                    return results
                        .into_iter()
                        .map(|r| {
                            r.unwrap_or_else(|| {
                                let (node_id, url) = sent.next().expect("one per sent request");
                                Err(ShardError::new(
                                    None,
                                    NodeError::Timeout {
                                        node: NodeRef { node_id, url },
                                        after: POLL_INTERVAL,
                                    },
                                ))
                            })
                        })
                        .collect();
                }
            }
        }
    };
    if !sent.is_empty() {
        let elapsed = started.elapsed();
        crate::stats::remote_time(elapsed);
        for ((r, node), url) in sent.iter().zip(&send_nodes).zip(&send_urls) {
            let (rows, outcome) = match r {
                Ok(body) => (body_rows(body), crate::stats::Outcome::Ok),
                Err(e) if matches!(e.error, NodeError::Timeout { .. }) => {
                    (0, crate::stats::Outcome::TimedOut)
                }
                Err(_) => (0, crate::stats::Outcome::Failed),
            };
            crate::stats::node_request(url, node, Some(elapsed), rows, outcome);
        }
    }
    LOCK_WAITS.with(|w| {
        if let Some(waits) = w.borrow_mut().as_mut() {
            for (r, node) in sent.iter().zip(&send_nodes) {
                if let Ok(resp) = r {
                    *waits.entry(node.clone()).or_default() +=
                        Duration::from_micros(resp.lock_wait_us);
                }
            }
        }
    });
    if let Some(min) = log_min {
        let elapsed = started.elapsed();
        if elapsed >= min {
            for ((shard, node_id), r) in logged.iter().zip(&sent) {
                log_request(elapsed, node_id, *shard, r);
            }
        }
    }
    let mut sent = sent.into_iter();
    // One failure per node per call, however many of its shards failed.
    let mut failed_urls = std::collections::BTreeSet::new();
    results
        .into_iter()
        .zip(urls)
        .map(|(r, url)| match r {
            Some(early) => early,
            None => {
                let r = sent.next().expect("one result per sent request");
                match &r {
                    Ok(_) => health::record_success(&url),
                    Err(e) => {
                        if failed_urls.insert(url) {
                            health::record_failure(e)
                        }
                    }
                }
                r
            }
        })
        .collect()
}

/// `conductor.log_remote_statements_min_duration`, when logging is on.
fn log_min_duration() -> Option<Duration> {
    let ms = gucs::LOG_REMOTE_MIN_DURATION_MS.get();
    (ms >= 0).then(|| Duration::from_millis(ms as u64))
}

fn shard_text(shard: Option<u32>) -> String {
    shard.map_or_else(|| "none".to_string(), |s| s.to_string())
}

/// Rows the statements of a node's answer returned or changed.
fn body_rows(body: &PipelineRespBody) -> u64 {
    let mut rows = 0;
    for result in &body.results {
        match result {
            StreamResult::Ok {
                response: StreamResponse::Execute { result },
            } => rows += result_rows(result),
            StreamResult::Ok {
                response: StreamResponse::Batch { result },
            } => {
                rows += result
                    .step_results
                    .iter()
                    .flatten()
                    .map(result_rows)
                    .sum::<u64>()
            }
            _ => {}
        }
    }
    rows
}

/// Rows a statement returned, or else the rows it changed.
pub fn result_rows(r: &StmtResult) -> u64 {
    if r.rows.is_empty() {
        r.affected_row_count
    } else {
        r.rows.len() as u64
    }
}

fn log_request(
    elapsed: Duration,
    node_id: &str,
    shard: Option<u32>,
    result: &Result<PipelineRespBody, ShardError>,
) {
    let ms = elapsed.as_secs_f64() * 1000.0;
    let shard = shard_text(shard);
    match result {
        Ok(body) => {
            let (mut rows, mut statements, mut errors) = (0u64, 0usize, 0usize);
            let mut node_ms = 0.0;
            let mut add = |r: &StmtResult| {
                rows += result_rows(r);
                statements += 1;
                node_ms += r.query_duration_ms.unwrap_or(0.0);
            };
            for result in &body.results {
                match result {
                    StreamResult::Ok {
                        response: StreamResponse::Execute { result },
                    } => add(result),
                    StreamResult::Ok {
                        response: StreamResponse::Batch { result },
                    } => {
                        result.step_results.iter().flatten().for_each(&mut add);
                        errors += result.step_errors.iter().flatten().count();
                    }
                    StreamResult::Error { .. } => errors += 1,
                    _ => {}
                }
            }
            pgrx::log!(
                "conductor remote request: duration: {ms:.3} ms  node: {node_id}  shard: {shard}  \
                 rows: {rows}  statements: {statements}  errors: {errors}  node time: {node_ms:.3} ms"
            );
        }
        Err(e) => pgrx::log!(
            "conductor remote request: duration: {ms:.3} ms  node: {node_id}  shard: {shard}  failed: {e}"
        ),
    }
}

/// Counts (and logs) the scan of `table` behind `handle` as far as it got,
/// when its reader leaves it before the last row (a LIMIT or EXISTS
/// satisfied in Postgres, a cursor closed, a rescan) or a shard failed:
/// the requests of node `failed` are left out (counted as failed
/// elsewhere). `urls` are the scan's queries' nodes, in order. Dropping
/// the handle afterwards cancels what still runs.
pub fn count_stopped_scan(
    handle: &ScanHandle,
    table: &crate::catalog::TableTopology,
    urls: &[String],
    failed: Option<&str>,
) -> Vec<ShardStats> {
    let mut stats = handle.stats_at_end();
    if let Some(failed) = failed {
        for (s, url) in stats.iter_mut().zip(urls) {
            if url == failed {
                s.elapsed = None;
            }
        }
    }
    log_scan(&table.table.name, &stats);
    count_scan(table.relid, urls, &stats);
    stats
}

/// Counts a finished scan of table `relid`: per shard its rows, per node
/// its requests (`urls` in the order of the scan's queries, as `stats`).
pub fn count_scan(relid: pgrx::pg_sys::Oid, urls: &[String], stats: &[ShardStats]) {
    let mut longest = Duration::ZERO;
    // With one request per node, a node's shards were one request (one
    // snapshot): it lasted until its last shard's last row.
    let per_node = gucs::MAX_REQUESTS_PER_NODE.get() <= 1;
    let mut requests: Vec<(&str, &str, Duration, u64)> = Vec::new();
    for (s, url) in stats.iter().zip(urls) {
        crate::stats::shard_rows(relid, s.shard_id, s.rows);
        let Some(e) = s.elapsed else {
            continue;
        };
        longest = longest.max(e);
        match requests.iter_mut().find(|r| per_node && r.0 == url) {
            Some(r) => {
                r.2 = r.2.max(e);
                r.3 += s.rows;
            }
            None => requests.push((url, &s.node_id, e, s.rows)),
        }
    }
    for (url, node, elapsed, rows) in requests {
        crate::stats::node_request(url, node, Some(elapsed), rows, crate::stats::Outcome::Ok);
    }
    crate::stats::remote_time(longest);
}

/// Counts a scan's failed shard request against its node.
pub fn count_failed(err: &ShardError) {
    let outcome = if matches!(err.error, NodeError::Timeout { .. }) {
        crate::stats::Outcome::TimedOut
    } else {
        crate::stats::Outcome::Failed
    };
    crate::stats::node_request(&err.url, &err.node_id, None, 0, outcome);
}

/// Logs the shards of a finished scan of `table` that took at least
/// `conductor.log_remote_statements_min_duration`.
pub fn log_scan(table: &str, stats: &[ShardStats]) {
    let Some(min) = log_min_duration() else {
        return;
    };
    for s in stats {
        let Some(elapsed) = s.elapsed.filter(|e| *e >= min) else {
            continue;
        };
        pgrx::log!(
            "conductor remote request: duration: {:.3} ms  node: {}  shard: {}  rows: {}  scan of {table}",
            elapsed.as_secs_f64() * 1000.0,
            s.node_id,
            s.shard_id,
            s.rows
        );
    }
}

fn execute_with(
    requests: Vec<ShardRequest>,
    interruptible: bool,
) -> Vec<Result<PipelineRespBody, ShardError>> {
    let meta: Vec<(Option<u32>, NodeRef)> = requests
        .iter()
        .map(|r| (r.shard_id, NodeRef::from(&r.endpoint)))
        .collect();
    execute_raw(requests, interruptible)
        .into_iter()
        .zip(meta)
        .map(|(result, (shard, node))| {
            let resp = result?;
            match first_error(&resp) {
                None => Ok(resp),
                Some(e) => Err(ShardError::new(
                    shard,
                    NodeError::Sql {
                        node,
                        message: e.message.clone(),
                        code: e.code.clone(),
                    },
                )),
            }
        })
        .collect()
}

/// Check that a node answers, for add_node/update_node.
pub fn check_health(endpoint: NodeEndpoint) -> Result<(), ShardError> {
    let request = ShardRequest {
        shard_id: None,
        endpoint,
        body: PipelineReqBody {
            baton: None,
            requests: vec![StreamRequest::Close],
        },
    };
    execute(vec![request])
        .pop()
        .expect("one result")
        .map(|_| ())
}

/// The code of sqld's answer when it rolled a transaction back because the
/// transaction held the write lock while another writer waited (longer
/// than sqld allows): the node's work of that transaction is gone.
pub const TRANSACTION_TIMEOUT: &str = "TRANSACTION_TIMEOUT";

/// What a user can do about [`TRANSACTION_TIMEOUT`].
pub const LOCK_TIMEOUT_HINT: &str = "Retry the transaction. A libSQL server (sqld) ends a transaction that holds its write lock for a few seconds while another writer waits; keep transactions that write to such nodes short.";

/// Whether the node refused a value (or a row) longer than its SQLite
/// allows: SQLite's own code, or sqld's refusal of such an argument
/// (`ARGS_INVALID`, the reason named only in the message).
fn too_big(err: &ShardError) -> bool {
    match &err.error {
        NodeError::Sql { message, code, .. } => {
            code.as_deref() == Some("SQLITE_TOOBIG") || message.contains("string or blob too big")
        }
        _ => false,
    }
}

/// The SQLSTATE a node's failure maps to: SQLite constraint codes keep their
/// meaning, transport failures are FDW connection errors.
fn sqlstate(err: &ShardError) -> PgSqlErrorCode {
    use PgSqlErrorCode::*;
    if let Some(code) = err.sqlite_code() {
        return match code {
            c if c.starts_with("SQLITE_CONSTRAINT_PRIMARYKEY")
                || c.starts_with("SQLITE_CONSTRAINT_UNIQUE") =>
            {
                ERRCODE_UNIQUE_VIOLATION
            }
            c if c.starts_with("SQLITE_CONSTRAINT_NOTNULL") => ERRCODE_NOT_NULL_VIOLATION,
            c if c.starts_with("SQLITE_CONSTRAINT_CHECK") => ERRCODE_CHECK_VIOLATION,
            c if c.starts_with("SQLITE_CONSTRAINT_FOREIGNKEY") => ERRCODE_FOREIGN_KEY_VIOLATION,
            // sqld sends the primary code only; SQLite's message names the kind.
            c if c.starts_with("SQLITE_CONSTRAINT") => {
                let message = err.error.detail();
                if message.contains("UNIQUE constraint failed") {
                    ERRCODE_UNIQUE_VIOLATION
                } else if message.contains("NOT NULL constraint failed") {
                    ERRCODE_NOT_NULL_VIOLATION
                } else if message.contains("CHECK constraint failed") {
                    ERRCODE_CHECK_VIOLATION
                } else {
                    ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION
                }
            }
            // Another session holds the node's write lock: retry the transaction.
            c if c.starts_with("SQLITE_BUSY") || c.starts_with("SQLITE_LOCKED") => {
                ERRCODE_T_R_SERIALIZATION_FAILURE
            }
            // sqld rolled the transaction back to give its write lock to
            // another writer: retry the transaction.
            TRANSACTION_TIMEOUT => ERRCODE_T_R_SERIALIZATION_FAILURE,
            _ if too_big(err) => ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            _ => ERRCODE_FDW_ERROR,
        };
    }
    match err.error {
        NodeError::Connect { .. } | NodeError::Io { .. } => {
            ERRCODE_FDW_UNABLE_TO_ESTABLISH_CONNECTION
        }
        NodeError::Timeout { .. } => ERRCODE_FDW_ERROR,
        NodeError::Protocol { .. } => ERRCODE_FDW_INVALID_DATA_TYPE,
        _ => ERRCODE_FDW_ERROR,
    }
}

/// Raise a node's failure as a Postgres ERROR naming node and shard.
pub fn report_shard_error(err: &ShardError) -> ! {
    crate::stats::error();
    let what = match &err.error {
        NodeError::Sql { message, .. }
            if message.contains(conductor_core::shard_move::FENCE_MESSAGE) =>
        {
            refusal(
                err,
                PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
                "shard {node} is being moved: writes to it are paused while the move switches over",
                "Retry the transaction: it then writes the shard where the catalog places it. A move's write block lasts at most conductor.move_write_block_timeout; if it persists, the move died while switching over: run SELECT * FROM conductor.cleanup_moves().",
            )
        }
        NodeError::Sql { .. }
            if err
                .sqlite_code()
                .is_some_and(|c| c.starts_with("SQLITE_BUSY_SNAPSHOT")) =>
        {
            refusal(
                err,
                PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
                "could not serialize access: node {node} was changed by another transaction since this transaction read it",
                "Retry the transaction.",
            )
        }
        NodeError::Sql { .. }
            if err.sqlite_code().is_some_and(|c| {
                c.starts_with("SQLITE_BUSY") || c.starts_with("SQLITE_LOCKED")
            }) =>
        {
            refusal(
                err,
                PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
                "node {node} is busy: another transaction holds its write lock",
                "Retry the transaction. pg_stat_activity shows the sessions whose transactions are open (state 'idle in transaction'); a transaction that wrote to a node keeps its write lock until it ends.",
            )
        }
        NodeError::Sql { .. } if err.sqlite_code() == Some(TRANSACTION_TIMEOUT) => refusal(
            err,
            PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
            "node {node} rolled this transaction back: it held the node's write lock while another transaction waited for it",
            LOCK_TIMEOUT_HINT,
        ),
        NodeError::Sql { .. } if too_big(err) => refusal(
            err,
            sqlstate(err),
            "node {node} refused a value: string or blob too big",
            "The node's SQLite stores no value or row this long; a libSQL server (sqld 0.24.33) refuses values and rows of more than 5,000,000 bytes.",
        ),
        // What an UPDATE computed on the node (`SetExpr`) refused as
        // Postgres would have.
        NodeError::Sql { message, .. } if message.contains("integer overflow") => refusal(
            err,
            PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
            "integer out of range: a new value computed on node {node} does not fit its column's type",
            "Nothing was changed by this statement.",
        ),
        NodeError::Sql { message, .. } if message.contains(decimal::FIELD_OVERFLOW) => refusal(
            err,
            PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
            "numeric field overflow: a new value computed on node {node} does not fit its column's precision",
            "Nothing was changed by this statement.",
        ),
        NodeError::Sql { message, .. } => message.clone(),
        NodeError::Connect { .. } => format!("could not connect to node {}", err.node_id),
        NodeError::Timeout { .. } => format!("node {} did not answer in time", err.node_id),
        _ => format!("request to node {} failed", err.node_id),
    };
    raise(sqlstate(err), format!("conductor: {what}"))
        .detail(err.to_string())
        .error()
}

/// An ERROR for a node's refusal that the user can act on: `message` with
/// `{node}` standing for "<node> (shard N)", the node's own words as
/// DETAIL, and what to do as HINT.
fn refusal(err: &ShardError, code: PgSqlErrorCode, message: &str, hint: &str) -> ! {
    let shard = err
        .shard_id
        .map(|s| format!(" (shard {s})"))
        .unwrap_or_default();
    let node = format!("{}{shard}", err.node_id);
    raise(
        code,
        format!("conductor: {}", message.replace("{node}", &node)),
    )
    .detail(err.to_string())
    .hint(hint)
    .error()
}
