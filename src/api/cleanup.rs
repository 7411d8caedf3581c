//! Leftover shard tables: a shard table that could not be dropped (its node
//! was unreachable when its distributed table was dropped) is recorded in
//! `conductor.cleanup`, in the transaction of the drop. `conductor.cleanup()`
//! drops what is recorded once the nodes answer, and creating a table whose
//! shard tables would collide with recorded leftovers drops them first.

use crate::catalog::credentials::token_for;
use crate::errors::raise;
use crate::remote::{self, ShardRequest};
use conductor_core::client::one_request_transaction;
use conductor_core::client::NodeEndpoint;
use conductor_core::remote_sql::drop_table_sql;
use conductor_hrana::Stmt;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::collections::BTreeMap;

/// Record shard tables left on a node.
pub fn record(server_id: pg_sys::Oid, node_id: &str, url: &str, tables: &[String], reason: &str) {
    Spi::run_with_args(
        "INSERT INTO conductor.cleanup (server_id, node_id, url, table_name, reason)
         SELECT $1, $2, $3, t, $4 FROM unnest($5::text[]) t
         ON CONFLICT (server_id, node_id, table_name) DO UPDATE
            SET reason = EXCLUDED.reason, url = EXCLUDED.url, recorded_at = now()",
        &[
            server_id.into(),
            node_id.into(),
            url.into(),
            reason.into(),
            tables.to_vec().into(),
        ],
    )
    .unwrap_or_else(|e| error!("conductor: could not record leftover shard tables: {e}"));
}

/// Recorded leftovers on `node_id` among `tables`: they are forgotten here
/// (in this transaction) and their names returned, for the caller to drop
/// ahead of its own statements on that node.
pub fn take_colliding(server_id: pg_sys::Oid, node_id: &str, tables: &[String]) -> Vec<String> {
    let dropped: Vec<String> = Spi::connect_mut(|client| {
        client
            .update(
                "DELETE FROM conductor.cleanup
                  WHERE server_id = $1 AND node_id = $2 AND table_name = ANY($3::text[])
                  RETURNING table_name",
                None,
                &[server_id.into(), node_id.into(), tables.to_vec().into()],
            )?
            .map(|row| Ok(row.get::<String>(1)?.unwrap_or_default()))
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| error!("conductor: could not read leftover shard tables: {e}"));
    dropped
}

/// Drops every recorded leftover whose node answers and forgets it; one row
/// per leftover with what happened.
#[pg_extern]
fn cleanup() -> TableIterator<
    'static,
    (
        name!(node_id, String),
        name!(table_name, String),
        name!(outcome, String),
    ),
> {
    let rows = Spi::connect(|client| {
        client
            .select(
                "SELECT c.server_id, c.node_id, coalesce(n.url, c.url), c.table_name,
                        s.oid IS NOT NULL
                   FROM conductor.cleanup c
                   LEFT JOIN conductor.node n USING (server_id, node_id)
                   LEFT JOIN pg_catalog.pg_foreign_server s ON s.oid = c.server_id
                  ORDER BY 1, 2, 4",
                None,
                &[],
            )?
            .map(|row| {
                Ok((
                    row.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::Oid::INVALID),
                    row.get::<String>(2)?.unwrap_or_default(),
                    row.get::<String>(3)?.unwrap_or_default(),
                    row.get::<String>(4)?.unwrap_or_default(),
                    row.get::<bool>(5)?.unwrap_or(false),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| error!("conductor: could not read the cleanup list: {e}"));
    let mut per_node: BTreeMap<(u32, String, String), (bool, Vec<String>)> = BTreeMap::new();
    for (server, node, url, table, server_exists) in rows {
        per_node
            .entry((server.to_u32(), node, url))
            .or_insert_with(|| (server_exists, Vec::new()))
            .1
            .push(table);
    }
    let mut requests = Vec::new();
    let mut keys = Vec::new();
    for ((server, node_id, url), (server_exists, tables)) in per_node {
        let server_id = pg_sys::Oid::from(server);
        requests.push(ShardRequest {
            shard_id: None,
            endpoint: NodeEndpoint {
                node_id: node_id.clone(),
                url,
                token: if server_exists {
                    token_for(server_id)
                } else {
                    None
                },
            },
            body: one_request_transaction(
                tables
                    .iter()
                    .map(|t| Stmt::new(drop_table_sql(t), vec![]))
                    .collect(),
            ),
        });
        keys.push((server_id, node_id, tables));
    }
    let mut out = Vec::new();
    for ((server_id, node_id, tables), result) in keys.into_iter().zip(remote::execute(requests)) {
        match result {
            Ok(_) => {
                Spi::run_with_args(
                    "DELETE FROM conductor.cleanup
                      WHERE server_id = $1 AND node_id = $2 AND table_name = ANY($3::text[])",
                    &[
                        server_id.into(),
                        node_id.as_str().into(),
                        tables.clone().into(),
                    ],
                )
                .unwrap_or_else(|e| error!("conductor: could not update the cleanup list: {e}"));
                out.extend(
                    tables
                        .into_iter()
                        .map(|t| (node_id.clone(), t, "dropped".to_string())),
                );
            }
            Err(e) => {
                raise(
                    PgSqlErrorCode::ERRCODE_WARNING,
                    format!(
                        "conductor: node {node_id} did not answer; its leftovers stay recorded"
                    ),
                )
                .detail(e.to_string())
                .warning();
                let why = format!("kept: {e}");
                out.extend(
                    tables
                        .into_iter()
                        .map(|t| (node_id.clone(), t, why.clone())),
                );
            }
        }
    }
    TableIterator::new(out)
}
