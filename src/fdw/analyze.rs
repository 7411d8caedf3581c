//! ANALYZE of distributed tables (`AnalyzeForeignTable`): the row count of
//! every shard (`SELECT count(*)`), then a random sample of every shard
//! proportional to its share of the rows (`ORDER BY random() LIMIT n`), so
//! that `reltuples` and `pg_stats` describe the data and the planner
//! estimates scans and joins from them. Autovacuum never analyzes foreign
//! tables: ANALYZE runs when a user (or a job) runs it.

use crate::catalog::{cache, TableTopology};
use crate::remote;
use conductor_core::executor::ShardRequest;
use conductor_core::plan::{sample_sizes, ShardPlan};
use conductor_hrana::{
    PipelineReqBody, StmtResult, StreamRequest, StreamResponse, StreamResult, Value,
};
use pgrx::prelude::*;

#[pg_guard]
pub unsafe extern "C-unwind" fn analyze_foreign_table(
    relation: pg_sys::Relation,
    func: *mut pg_sys::AcquireSampleRowsFunc,
    totalpages: *mut pg_sys::BlockNumber,
) -> bool {
    // SAFETY: Postgres passes an open relation and out-parameters.
    unsafe {
        if cache::try_table((*relation).rd_id).is_none() {
            return false; // not distributed: nothing to sample
        }
        *func = Some(acquire_sample_rows);
        // The planner costs our scans by rows, not pages.
        *totalpages = 1;
    }
    true
}

/// Run a read-only shard plan outside the transaction's remote
/// transactions: one self-closing request per shard, all at once. A
/// failure is an ERROR naming node and shard.
fn read_plan(topology: &TableTopology, plan: &ShardPlan) -> Vec<(u32, StmtResult)> {
    let token = crate::catalog::credentials::token_for(topology.server_id);
    let requests: Vec<ShardRequest> = plan
        .statements
        .iter()
        .map(|s| ShardRequest {
            shard_id: Some(s.shard_id),
            endpoint: remote::endpoint(&topology.shards[s.shard_id as usize], token.clone()),
            body: PipelineReqBody {
                baton: None,
                requests: vec![
                    StreamRequest::Execute {
                        stmt: s.stmt.clone(),
                    },
                    StreamRequest::Close,
                ],
            },
        })
        .collect();
    crate::stats::plan_sent(
        topology.relid,
        topology.shards.len(),
        &plan.shard_ids(),
        false,
    );
    let shards: Vec<u32> = plan.statements.iter().map(|s| s.shard_id).collect();
    remote::execute(requests)
        .into_iter()
        .zip(shards)
        .map(|(r, shard)| {
            let resp = r.unwrap_or_else(|e| remote::report_shard_error(&e));
            match resp.results.into_iter().next() {
                Some(StreamResult::Ok {
                    response: StreamResponse::Execute { result },
                }) => (shard, result),
                other => error!(
                    "conductor: unexpected answer from shard {shard} of {}: {other:?}",
                    topology.name
                ),
            }
        })
        .collect()
}

#[pg_guard]
unsafe extern "C-unwind" fn acquire_sample_rows(
    relation: pg_sys::Relation,
    elevel: i32,
    rows: *mut pg_sys::HeapTuple,
    targrows: i32,
    totalrows: *mut f64,
    totaldeadrows: *mut f64,
) -> i32 {
    // SAFETY: rows has room for targrows tuples; tuples are formed in the
    // current (ANALYZE's) memory context, as Postgres expects.
    unsafe {
        let topology = cache::table((*relation).rd_id);
        let counts: Vec<(u32, u64)> = read_plan(&topology, &ShardPlan::row_counts(&topology))
            .into_iter()
            .map(
                |(shard, r)| match r.rows.first().and_then(|row| row.first()) {
                    Some(Value::Integer(n)) => (shard, (*n).max(0) as u64),
                    other => error!(
                        "conductor: shard {shard} of {} answered count(*) with {other:?}",
                        topology.name
                    ),
                },
            )
            .collect();
        let total: u64 = counts.iter().map(|&(_, n)| n).sum();
        let sizes = sample_sizes(&counts, targrows.max(0) as u64);
        let sampled = if sizes.is_empty() {
            Vec::new()
        } else {
            read_plan(&topology, &ShardPlan::sample(&topology, &sizes))
        };

        let codecs: Vec<_> = (0..topology.columns.len())
            .map(|i| topology.codec(i))
            .collect();
        let slot = pg_sys::MakeSingleTupleTableSlot((*relation).rd_att, &pg_sys::TTSOpsVirtual);
        let mut n = 0usize;
        'shards: for (shard, result) in &sampled {
            for row in &result.rows {
                if n >= targrows as usize {
                    break 'shards;
                }
                pg_sys::ExecClearTuple(slot);
                crate::fdw::scan::store_values(
                    slot,
                    row,
                    &codecs,
                    topology.columns.iter().map(|c| c.attnum),
                    || format!("a sampled row of {} shard {shard}", topology.name),
                );
                *rows.add(n) = pg_sys::ExecCopySlotHeapTuple(slot);
                n += 1;
            }
        }
        pg_sys::ExecDropSingleTupleTableSlot(slot);
        *totalrows = total as f64;
        *totaldeadrows = 0.0;
        let message = format!(
            "\"{}\": {} shards hold {total} rows; {n} rows in sample",
            topology.name,
            topology.shard_count()
        );
        if elevel >= pg_sys::INFO as i32 {
            pgrx::info!("{message}");
        } else {
            pgrx::debug1!("{message}");
        }
        n as i32
    }
}
