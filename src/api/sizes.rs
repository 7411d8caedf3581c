//! `conductor.shard_sizes(table)`: rows and bytes of every shard, asked of
//! the nodes, for operators and for rebalancing by size.

use crate::catalog::cache;
use crate::remote::{self, ShardRequest};
use conductor_core::remote_sql::count_sql;
use conductor_hrana::{
    PipelineReqBody, Stmt, StmtResult, StreamRequest, StreamResponse, StreamResult, Value,
};
use pgrx::prelude::*;

/// The pages of a shard table and its indexes, from SQLite's `dbstat`
/// virtual table (conductor-node's SQLite has it; a node whose SQLite lacks
/// it answers with an error, and the shard's bytes are unknown).
pub const BYTES_SQL: &str = "SELECT coalesce(sum(pgsize), 0) FROM dbstat \
     WHERE name = ? OR name IN (SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = ?)";

fn integer(result: Option<&StreamResult>) -> Option<i64> {
    match result? {
        StreamResult::Ok {
            response:
                StreamResponse::Execute {
                    result: StmtResult { rows, .. },
                },
        } => match rows.first()?.first()? {
            Value::Integer(i) => Some(*i),
            _ => None,
        },
        _ => None,
    }
}

/// Rows and bytes of every shard of `tbl`, asked of its nodes now; `bytes`
/// is NULL where the node cannot tell (a libSQL server without `dbstat`).
#[pg_extern]
fn shard_sizes(
    tbl: pgrx::PgRelation,
) -> TableIterator<
    'static,
    (
        name!(shard_id, i32),
        name!(node_id, String),
        name!(rows, i64),
        name!(bytes, Option<i64>),
    ),
> {
    let topology = cache::table(tbl.oid());
    let token = crate::catalog::credentials::token_for(topology.server_id);
    let requests: Vec<ShardRequest> = topology
        .shards
        .iter()
        .enumerate()
        .map(|(shard, location)| {
            let table = &location.remote_table;
            let name = Value::Text(table.clone());
            ShardRequest {
                shard_id: Some(shard as u32),
                endpoint: remote::endpoint(location, token.clone()),
                body: PipelineReqBody {
                    baton: None,
                    requests: vec![
                        StreamRequest::Execute {
                            stmt: Stmt::new(count_sql(table), Vec::new()),
                        },
                        StreamRequest::Execute {
                            stmt: Stmt::new(BYTES_SQL, vec![name.clone(), name]),
                        },
                        StreamRequest::Close,
                    ],
                },
            }
        })
        .collect();
    let rows: Vec<_> = remote::execute_raw(requests, true)
        .into_iter()
        .enumerate()
        .map(|(shard, r)| {
            let body = r.unwrap_or_else(|e| remote::report_shard_error(&e));
            let location = &topology.shards[shard];
            let count = integer(body.results.first()).unwrap_or_else(|| {
                let e = conductor_core::client::first_error(&body)
                    .map(|e| e.message.clone())
                    .unwrap_or_else(|| "no row count in the answer".into());
                crate::errors::raise(
                    pgrx::PgSqlErrorCode::ERRCODE_FDW_ERROR,
                    format!(
                        "conductor: cannot count the rows of shard {shard} of {}",
                        topology.name
                    ),
                )
                .detail(format!(
                    "node {} ({}), shard {shard}: {e}",
                    location.node_id, location.url
                ))
                .error()
            });
            (
                shard as i32,
                location.node_id.clone(),
                count,
                integer(body.results.get(1)),
            )
        })
        .collect();
    TableIterator::new(rows)
}
