//! TRUNCATE of distributed tables (`ExecForeignTruncate`): every shard of
//! every table named is emptied with `DELETE FROM` in the transaction's
//! remote transactions (`xact::streams`), so the statement is all or
//! nothing across shards and tables, and ROLLBACK undoes it.

use crate::catalog::cache;
use crate::errors::raise;
use crate::xact::streams;
use conductor_core::plan::ShardPlan;
use pgrx::prelude::*;
use pgrx::{PgList, PgSqlErrorCode};

/// Postgres calls this once per foreign server with the tables of that
/// server the TRUNCATE names. `RESTART IDENTITY` has nothing to restart on
/// the nodes (shard tables have no sequences) and is accepted; `CASCADE`
/// is refused: foreign tables have no foreign keys for it to follow, and a
/// CASCADE that silently did what plain TRUNCATE does would mislead.
#[pg_guard]
pub unsafe extern "C-unwind" fn exec_foreign_truncate(
    rels: *mut pg_sys::List,
    behavior: pg_sys::DropBehavior::Type,
    _restart_seqs: bool,
) {
    // SAFETY: rels is a List of open Relations of this wrapper's tables.
    let relids: Vec<pg_sys::Oid> = unsafe {
        PgList::<pg_sys::RelationData>::from_pg(rels)
            .iter_ptr()
            .map(|r| (*r).rd_id)
            .collect()
    };
    let topologies: Vec<_> = relids.into_iter().map(cache::table).collect();
    if behavior == pg_sys::DropBehavior::DROP_CASCADE {
        let names: Vec<&str> = topologies.iter().map(|t| t.name.as_str()).collect();
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!(
                "TRUNCATE … CASCADE is not supported for distributed tables ({})",
                names.join(", ")
            ),
        )
        .detail("Distributed tables have no foreign keys for CASCADE to follow.")
        .hint("Leave out CASCADE: TRUNCATE empties every shard of the tables named.")
        .error()
    }
    // Every table's shards in the same remote transactions: a failure on
    // any shard fails the statement, and the abort rolls back the rest.
    for topology in &topologies {
        streams::run_plan(
            topology,
            &ShardPlan::truncate(topology),
            streams::Access::Write,
        );
    }
}
