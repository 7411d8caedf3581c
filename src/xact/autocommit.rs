//! The fast path of a write that is alone in its transaction: a statement
//! that is the whole of an implicit transaction (not inside BEGIN … COMMIT,
//! not one of several statements sent in one query string or pipeline, not
//! run by a function or trigger), writes through
//! one ModifyTable with no trigger on its table, no writable CTE, and
//! reaches one node, goes to that node as one self-contained request: the
//! node begins, executes, commits. Its write lock is held only while the
//! node runs it, and the write costs one round trip instead of three
//! (BEGIN + statement, COMMIT, close).
//!
//! Nothing of the Postgres transaction can fail after that request but the
//! commit of a transaction that did nothing else, so the result is the same
//! as the transactional path's. A connection that breaks after the request
//! was sent leaves the outcome unknown, and the ERROR says so.

use crate::catalog::TableTopology;
use crate::errors::raise;
use crate::fdw::lower::{is, strip_relabel};
use crate::remote::{self, ShardRequest};
use crate::xact::streams;
use conductor_core::client::one_request_transaction;
use conductor_core::client::NodeError;
use conductor_core::plan::ShardPlan;
use conductor_hrana::{
    PipelineReqBody, PipelineRespBody, StmtResult, StreamRequest, StreamResponse, StreamResult,
};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

/// Whether the statement running in `estate`, writing `rinfo`, is alone in
/// its transaction with nothing after it that could fail.
///
/// The write is committed on its node before the statement ends, so
/// everything that could still fail in the Postgres transaction rules it
/// out: a statement run by a function, a DO block or a trigger (SPI: the
/// caller goes on after it), a rule's extra statements, a RETURNING
/// expression or a view's WITH CHECK OPTION evaluated over the written
/// row, a trigger on a partitioned parent, and the next statement of an
/// extended-protocol pipeline (Execute messages before one Sync share one
/// implicit transaction).
///
/// # Safety
/// `estate` and `rinfo` are the running statement's executor state.
pub unsafe fn statement_is_alone(
    estate: *mut pg_sys::EState,
    rinfo: *mut pg_sys::ResultRelInfo,
) -> bool {
    // SAFETY: per the contract; all reads of executor and transaction state.
    unsafe {
        // With lock_timeout set, a write takes the node's lock in a request
        // of its own, whose wait can be bounded (streams::run).
        if pg_sys::IsTransactionBlock()
            || pg_sys::GetCurrentTransactionNestLevel() != 1
            || remote::lock_timeout().is_some()
            || pg_sys::MyXactFlags & pg_sys::XACT_FLAGS_PIPELINING as i32 != 0
        {
            return false;
        }
        let stmt = (*estate).es_plannedstmt;
        if stmt.is_null() || (*stmt).hasModifyingCTE || !(*stmt).subplans.is_null() {
            return false;
        }
        if !runs_alone_in_client_portal(stmt) {
            return false;
        }
        let top = (*stmt).planTree as *mut pg_sys::Node;
        if top.is_null() || (*top).type_ != pg_sys::NodeTag::T_ModifyTable {
            return false;
        }
        let mt = top as *mut pg_sys::ModifyTable;
        if pg_sys::list_length((*mt).resultRelations) != 1
            || (*mt).rootRelation != 0
            || !(*mt).withCheckOptionLists.is_null()
        {
            return false;
        }
        // Read from the plan: the executor sets up the result relation's
        // RETURNING and WITH CHECK OPTION after BeginForeignModify.
        let returning = if (*mt).returningLists.is_null() {
            std::ptr::null_mut()
        } else {
            pg_sys::list_nth((*mt).returningLists, 0) as *mut pg_sys::List
        };
        returning_cannot_fail(returning) && (rinfo.is_null() || (*rinfo).ri_TrigDesc.is_null())
    }
}

/// Whether `stmt` is the one statement of the portal the client is running
/// and the client's transaction ends with it.
///
/// # Safety
/// Reads the backend's active portal and, for a portal of the extended
/// protocol, peeks at the client connection's already received bytes.
unsafe fn runs_alone_in_client_portal(stmt: *mut pg_sys::PlannedStmt) -> bool {
    // SAFETY: ActivePortal is the portal being run (null outside one); its
    // statement list belongs to it.
    unsafe {
        let portal = pg_sys::ActivePortal;
        if portal.is_null()
            || pg_sys::list_length((*portal).stmts) != 1
            || pg_sys::list_nth((*portal).stmts, 0) as *mut pg_sys::PlannedStmt != stmt
        {
            return false;
        }
        // A function's cursor (PL/pgSQL `FOR r IN INSERT … RETURNING`, `FOR
        // r IN EXECUTE …`, a PL/Python cursor) is a portal of its own,
        // active while the client's statement that called the function
        // still runs and may still fail. Only the client's portal runs the
        // client's statement text: exec_simple_query hands the portal the
        // very string it logs, exec_execute_message logs a copy of the
        // portal's.
        let client_text = pg_sys::debug_query_string;
        let text = (*portal).sourceText;
        if client_text.is_null() || text.is_null() {
            return false;
        }
        // A simple Query: its statements are its transaction (several of
        // them are an implicit transaction block, seen above). A function's
        // cursor over an unsaved plan (`FOR … IN EXECUTE`) has no cplan
        // either, but a text of its own.
        if (*portal).cplan.is_null() {
            return std::ptr::eq(text, client_text);
        }
        // A portal from a prepared plan: a Bind of the extended protocol
        // (or SQL EXECUTE). Its transaction ends at the next Sync, so the
        // statement is alone only if that Sync has already arrived; a
        // client that sends it later gets the transactional path.
        pg_sys::whereToSendOutput == pg_sys::CommandDest::DestRemote
            && std::ffi::CStr::from_ptr(text) == std::ffi::CStr::from_ptr(client_text)
            && next_message_is_sync()
    }
}

/// Whether the client's next protocol message, already received, is Sync.
/// Only bytes already in the connection's buffer are looked at: this never
/// waits for the client.
///
/// # Safety
/// Called between protocol messages (while one executes).
unsafe fn next_message_is_sync() -> bool {
    extern "C-unwind" {
        // libpq/libpq.h of the backend.
        fn pq_is_reading_msg() -> bool;
        fn pq_buffer_has_data() -> bool;
        fn pq_startmsgread();
        fn pq_peekbyte() -> std::ffi::c_int;
        fn pq_endmsgread();
    }
    // SAFETY: no message is being read (checked), and the buffer holds
    // bytes, so the peek neither reads the socket nor fails; the reading
    // state is restored right after.
    unsafe {
        if pq_is_reading_msg() || !pq_buffer_has_data() {
            return false;
        }
        pq_startmsgread();
        let next = pq_peekbyte();
        pq_endmsgread();
        next == b'S' as std::ffi::c_int
    }
}

/// Whether computing the RETURNING list over the written row cannot fail:
/// plain columns and constants (`RETURNING *`, `RETURNING id`). Anything
/// else (`1/x`, a cast, a function) could fail after the node committed.
/// So could sending a text to a client whose encoding differs from the
/// database's (22P05 for a character the client's encoding lacks).
///
/// # Safety
/// `list` is a RETURNING target list (or null).
unsafe fn returning_cannot_fail(list: *mut pg_sys::List) -> bool {
    // SAFETY: a target list of the running statement; the encodings are
    // the session's.
    unsafe {
        if !list.is_null() && pg_sys::pg_get_client_encoding() != pg_sys::GetDatabaseEncoding() {
            return false;
        }
        pgrx::PgList::<pg_sys::TargetEntry>::from_pg(list)
            .iter_ptr()
            .all(|tle| {
                let e = strip_relabel((*tle).expr.cast());
                is(e, pg_sys::NodeTag::T_Var) || is(e, pg_sys::NodeTag::T_Const)
            })
    }
}

thread_local! {
    /// `QueryCancelHoldoffCount` as [`hold_cancel`] left it, while it holds.
    static CANCEL_HELD: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// Keep query cancel (a client's cancel request, `statement_timeout`)
/// pending, from before a self-committing request is sent until
/// [`release_cancel`] (at the latest when the transaction ends): the
/// statement then reports what the node did, and a cancel that arrived
/// meanwhile is as late as one arriving during COMMIT. A cancel already
/// pending is honored first, before anything is sent. Termination
/// (`pg_terminate_backend`) is not held.
fn hold_cancel() {
    pgrx::check_for_interrupts!();
    if CANCEL_HELD.get().is_some() {
        return;
    }
    // SAFETY: the backend's own counter (HOLD_CANCEL_INTERRUPTS).
    let count = unsafe {
        pg_sys::QueryCancelHoldoffCount += 1;
        pg_sys::QueryCancelHoldoffCount
    };
    CANCEL_HELD.set(Some(count));
}

/// Undo [`hold_cancel`]: when the node refused the request, and when the
/// transaction aborts. An ERROR has already reset the counter (errfinish
/// zeroes it), so it is lowered only if it is still where the hold left it.
pub fn release_cancel() {
    if let Some(count) = CANCEL_HELD.take() {
        // SAFETY: the backend's own counter (RESUME_CANCEL_INTERRUPTS).
        unsafe {
            if pg_sys::QueryCancelHoldoffCount == count {
                pg_sys::QueryCancelHoldoffCount -= 1;
            }
        }
    }
}

/// Undo [`hold_cancel`] when the transaction commits: a cancel that
/// arrived while it held came for the statement that has now finished, so
/// it is dropped, as Postgres ignores one that arrives after a command
/// completed (it must not cancel the next statement of a pipeline).
pub fn release_cancel_at_commit() {
    if CANCEL_HELD.get().is_some() {
        release_cancel();
        // SAFETY: the backend's own flag; only set by signal handlers.
        unsafe { std::ptr::write_volatile(&raw mut pg_sys::QueryCancelPending, 0) };
    }
}

/// Run `plan` as one self-contained request when all of it is on one node;
/// `None` (nothing sent) when it spans several nodes.
///
/// A shard that a move is switching over refuses writes for a moment (its
/// write block, at most `conductor.move_write_block_timeout`), and after
/// the switch its old copy refuses them for good. Such a refusal changed
/// nothing (the node ran the request as one transaction), and this session
/// holds no lock on the node, so the write waits here: it sleeps, takes in
/// the catalog change the move committed, and sends the same statements to
/// wherever the shard now is (in the transaction's streams, when the move
/// left the statement's shards on several nodes).
pub fn run_alone(topology: &TableTopology, plan: &ShardPlan) -> Option<Vec<(u32, StmtResult)>> {
    if topology.is_reference() {
        return None; // every copy is written, in the transaction's streams
    }
    // A function of the statement that wrote a local table (a VALUES or
    // SET expression, evaluated by now) leaves the Postgres transaction
    // something that can still fail at COMMIT after the node committed: a
    // deferred constraint, a serialization failure. Writing assigns the
    // transaction an id; so does nextval() now and then, which only costs
    // that statement the one-request path.
    // SAFETY: reads the backend's transaction state.
    if unsafe { pg_sys::GetTopTransactionIdIfAny() } != pg_sys::TransactionId::INVALID {
        return None;
    }
    // Likewise a remote transaction open by now: one such function wrote
    // (or locked rows, or read at REPEATABLE READ) through conductor. Its
    // node work commits only with the Postgres transaction, and on this
    // statement's node it holds the write lock a self-contained request
    // would wait for until the busy timeout. Checked here, when the
    // statement's values have been computed, not when it began: an
    // INSERT's VALUES row runs its functions after the executor started.
    if streams::any_open() {
        return None;
    }
    let limit = std::time::Duration::from_millis(
        crate::gucs::MOVE_WRITE_BLOCK_TIMEOUT_MS.get().max(0) as u64,
    ) + std::time::Duration::from_secs(1);
    let started = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(2);
    let mut refreshed: Option<std::rc::Rc<TableTopology>> = None;
    loop {
        let current = refreshed.as_deref().unwrap_or(topology);
        let Some(sent) = send_alone(current, plan) else {
            // The switch put the statement's shards on several nodes: it
            // runs in the transaction's streams, where they now are (the
            // caller's topology would send it to the old copy's fence).
            return refreshed.map(|t| streams::run_plan(&t, plan, streams::Access::Write));
        };
        match sent {
            Ok(results) => return Some(results),
            Err(e) if is_moving(&e) && started.elapsed() < limit => {
                remote::sleep_interruptibly(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(50));
                // SAFETY: between node requests no catalog tuple is held.
                // The queued invalidations (the move's catalog switch) drop
                // the topology cache, and the catalog is read again under a
                // new snapshot: the statement's own predates the switch.
                // (At REPEATABLE READ the transaction's snapshot is kept,
                // and the write fails once the wait is over.) An ERROR in
                // between pops the snapshot with the transaction's abort.
                unsafe {
                    pg_sys::AcceptInvalidationMessages();
                    pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
                }
                refreshed = Some(crate::catalog::cache::table(topology.relid));
                unsafe { pg_sys::PopActiveSnapshot() };
            }
            Err(e) => remote::report_shard_error(&e),
        }
    }
}

fn is_moving(e: &conductor_core::ShardError) -> bool {
    matches!(&e.error, NodeError::Sql { message, .. }
        if message.contains(conductor_core::shard_move::FENCE_MESSAGE))
}

/// One attempt of [`run_alone`]: the results, or the node's refusal of
/// the request (nothing applied); `None` when the plan spans nodes. A
/// request whose outcome is unknown is an ERROR here.
fn send_alone(
    topology: &TableTopology,
    plan: &ShardPlan,
) -> Option<Result<Vec<(u32, StmtResult)>, conductor_core::ShardError>> {
    let by_node = plan.by_node(topology);
    let [node] = &by_node[..] else {
        return None;
    };
    let token = crate::catalog::credentials::token_for(topology.server_id);
    let endpoint = remote::endpoint(node.location, token);
    let shards: Vec<u32> = node.statements.iter().map(|s| s.shard_id).collect();
    let stmts: Vec<_> = node.statements.iter().map(|s| s.stmt.clone()).collect();
    let single = stmts.len() == 1;
    let body = if single {
        PipelineReqBody {
            baton: None,
            requests: vec![
                StreamRequest::Execute {
                    stmt: stmts[0].clone(),
                },
                StreamRequest::Close,
            ],
        }
    } else {
        one_request_transaction(stmts)
    };
    crate::stats::plan_sent(topology.relid, topology.shards.len(), &shards, true);
    let request = ShardRequest {
        shard_id: shards.first().copied(),
        endpoint,
        body,
    };
    // Once sent, the request commits on the node whatever this backend
    // does: a cancel or statement_timeout must not end the statement as
    // failed (and its transaction as rolled back) while the node may
    // still apply it. So cancel waits from here to the end of the
    // transaction, unless the node refused the request (nothing applied).
    hold_cancel();
    let resp = match remote::execute_raw(vec![request], true)
        .pop()
        .expect("one answer")
    {
        Ok(resp) => resp,
        Err(e) => {
            if matches!(e.error, NodeError::Connect { .. }) || e.error.sqlite_code().is_some() {
                release_cancel();
                return Some(Err(e));
            }
            raise(
                PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
                format!(
                    "conductor: the outcome of the write on node {} is unknown",
                    e.node_id
                ),
            )
            .detail(format!(
                "Outcome unknown: {e}. The statement ran alone in its transaction and was sent to the node as one request; no answer arrived, so it may or may not have been applied."
            ))
            .hint("Check the row before retrying.")
            .error()
        }
    };
    let results = match stmt_results(&resp, single, shards.len()) {
        Ok(r) => r,
        Err((shard_index, error)) => {
            release_cancel();
            return Some(Err(conductor_core::ShardError::new(
                shard_index.map(|i| shards[i]),
                NodeError::Sql {
                    node: conductor_core::client::NodeRef::from(&remote::endpoint(
                        node.location,
                        None,
                    )),
                    message: error.message,
                    code: error.code,
                },
            )));
        }
    };
    crate::health::record_success(&node.location.url);
    for (shard, r) in shards.iter().zip(&results) {
        crate::stats::shard_rows(topology.relid, *shard, remote::result_rows(r));
    }
    Some(Ok(shards.into_iter().zip(results).collect()))
}

/// The statements' results, or the failed one (its index among the
/// statements when known) with the node's error.
fn stmt_results(
    resp: &PipelineRespBody,
    single: bool,
    n: usize,
) -> Result<Vec<StmtResult>, (Option<usize>, conductor_hrana::Error)> {
    let protocol = |message: &str| {
        (
            None,
            conductor_hrana::Error {
                message: message.to_string(),
                code: None,
            },
        )
    };
    match resp.results.first() {
        Some(StreamResult::Ok {
            response: StreamResponse::Execute { result },
        }) if single => Ok(vec![result.clone()]),
        Some(StreamResult::Ok {
            response: StreamResponse::Batch { result },
        }) if !single => {
            // Steps: BEGIN, the statements, COMMIT, ROLLBACK.
            if let Some((i, e)) = result
                .step_errors
                .iter()
                .enumerate()
                .find_map(|(i, e)| e.as_ref().map(|e| (i, e)))
            {
                let index = (1..=n).contains(&i).then(|| i - 1);
                return Err((index, e.clone()));
            }
            result
                .step_results
                .get(1..=n)
                .ok_or_else(|| protocol("batch result has the wrong number of steps"))?
                .iter()
                .map(|r| {
                    r.clone()
                        .ok_or_else(|| protocol("a batch step was skipped"))
                })
                .collect()
        }
        Some(StreamResult::Error { error }) => Err((single.then_some(0), error.clone())),
        _ => Err(protocol("unexpected answer to a write")),
    }
}
