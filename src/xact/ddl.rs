//! Node DDL that waits for the Postgres transaction's outcome: the shard
//! tables of a dropped distributed table are dropped only once the drop
//! commits (and not at all if it, or its subtransaction, aborts). This runs
//! after the commit, on connections of its own, and only warns on failure
//! (an ERROR is impossible once a transaction has committed). Shard tables
//! are *created* inside the remote transactions instead (`streams`).

use crate::errors::raise;
use crate::remote::ShardRequest;
use conductor_core::executor::ShardError;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::cell::RefCell;

struct PendingDdl {
    /// Transaction nesting level that queued it.
    level: i32,
    what: String,
    /// The shard tables the request drops, on the node it goes to.
    tables: Vec<String>,
    request: ShardRequest,
}

thread_local! {
    static PENDING: RefCell<Vec<PendingDdl>> = const { RefCell::new(Vec::new()) };
}

/// Run `request`, which drops `tables` on its node, once the top-level
/// transaction commits.
pub fn on_commit(what: String, tables: Vec<String>, request: ShardRequest) {
    // SAFETY: reads backend transaction state.
    let level = unsafe { pg_sys::GetCurrentTransactionNestLevel() };
    PENDING.with(|p| {
        p.borrow_mut().push(PendingDdl {
            level,
            what,
            tables,
            request,
        })
    });
}

/// Which of `tables` on the node at `url` this transaction drops when it
/// commits.
pub fn dropped_at_commit(url: &str, tables: &[String]) -> Vec<String> {
    PENDING.with(|p| {
        p.borrow()
            .iter()
            .filter(|i| i.request.endpoint.url == url)
            .flat_map(|i| i.tables.iter())
            .filter(|t| tables.contains(t))
            .cloned()
            .collect()
    })
}

/// Send the requests and wait for them without answering interrupts: this
/// runs while the transaction is ending, where an ERROR is not allowed.
/// Each request still has its deadline (conductor.request_timeout).
fn run_and_warn(items: Vec<PendingDdl>) {
    if items.is_empty() {
        return;
    }
    let (whats, requests): (Vec<String>, Vec<ShardRequest>) =
        items.into_iter().map(|i| (i.what, i.request)).unzip();
    let results = crate::remote::execute_uninterruptible(requests);
    let failed: Vec<(String, ShardError)> = whats
        .into_iter()
        .zip(results)
        .filter_map(|(what, r)| r.err().map(|e| (what, e)))
        .collect();
    for (what, err) in failed {
        raise(
            PgSqlErrorCode::ERRCODE_WARNING,
            format!("conductor: could not {what}; it is left on the node"),
        )
        .detail(err.to_string())
        .warning();
    }
}

fn take(filter: impl Fn(&PendingDdl) -> bool) -> Vec<PendingDdl> {
    PENDING.with(|p| {
        let mut pending = p.borrow_mut();
        let (taken, kept): (Vec<_>, Vec<_>) = pending.drain(..).partition(|i| filter(i));
        *pending = kept;
        taken
    })
}

/// The top-level transaction committed: run what waited for it.
pub fn at_commit() {
    run_and_warn(take(|_| true));
}

/// The top-level transaction aborted: nothing it queued happens.
pub fn at_abort() {
    take(|_| true);
}

/// PREPARE TRANSACTION cannot carry what waits for the commit: the queue
/// lives in this backend, while COMMIT PREPARED or ROLLBACK PREPARED may
/// run in any session, or never. Left queued, it would run at this
/// session's next commit, whatever became of the prepared transaction.
pub fn refuse_prepare() {
    let what = PENDING.with(|p| p.borrow().first().map(|i| i.what.clone()));
    if let Some(what) = what {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "cannot PREPARE a transaction that dropped a distributed table",
        )
        .detail(format!(
            "The shard tables are dropped on the nodes when the transaction commits in this session (pending: {what}); a prepared transaction is committed later, possibly by another session."
        ))
        .error()
    }
}

/// Subtransaction `level` aborted: what it (and its children) queued is
/// forgotten.
pub fn at_subabort(level: i32) {
    take(|i| i.level >= level);
}

/// Subtransaction `level` committed: its work now belongs to its parent.
pub fn at_subcommit(level: i32) {
    PENDING.with(|p| {
        for item in p.borrow_mut().iter_mut().filter(|i| i.level >= level) {
            item.level = level - 1;
        }
    });
}
