//! `conductor_explain(sql)`: which shards a statement visits and what each
//! is sent, computed by the same router and deparser as execution (the
//! sqlparser front end lives in `conductor_core::explain`).

use crate::catalog::{cache, TableTopology};
use crate::errors::raise;
use conductor_core::explain::{Catalog, PlanCache, ShardPlacement, TableInfo, TableName};
use conductor_hrana::Value;
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};
use std::cell::RefCell;

thread_local! {
    /// Parsed statements by query text (seed item 14).
    static PLANS: RefCell<PlanCache> = RefCell::new(PlanCache::new(256));
}

/// Distributed tables as Postgres resolves their names (search_path).
struct PgCatalog;

fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

fn table_info(topology: &TableTopology) -> TableInfo {
    TableInfo {
        name: topology.display.clone(),
        columns: topology
            .columns
            .iter()
            .map(|c| (c.name.clone(), c.ty))
            .collect(),
        key_column: topology.key_index,
        shard_count: topology.shard_count,
        remote_name: topology.remote_name.clone(),
        shards: topology
            .shards
            .iter()
            .map(|p| ShardPlacement {
                shard_id: p.shard_id,
                node_id: p.node_id.clone(),
                node_url: p.url.clone(),
            })
            .collect(),
    }
}

impl Catalog for PgCatalog {
    fn table(&self, name: &TableName) -> Option<TableInfo> {
        let qualified = match &name.schema {
            Some(s) => format!("{}.{}", quote(s), quote(&name.name)),
            None => quote(&name.name),
        };
        let relid = Spi::get_one_with_args::<pg_sys::Oid>(
            "SELECT to_regclass($1)::oid",
            &[qualified.as_str().into()],
        )
        .ok()
        .flatten()?;
        let topology = cache::try_table(relid)?;
        Some(table_info(&topology))
    }

    fn default_collation_is_c(&self) -> bool {
        crate::parse::default_collation_is_c()
    }
}

fn args_json(args: &[Value]) -> serde_json::Value {
    use base64::Engine as _;
    serde_json::Value::Array(
        args.iter()
            .map(|v| match v {
                Value::Null => serde_json::Value::Null,
                Value::Integer(i) => serde_json::json!(i),
                Value::Float(f) => serde_json::json!(f),
                Value::Text(s) => serde_json::json!(s),
                Value::Blob(b) => {
                    serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(b) })
                }
            })
            .collect(),
    )
}

/// One row per target shard of every distributed table the statement
/// reads or writes: where it lives, the SQL it is sent (values as `?`,
/// listed in `args`) and why it is a target. Also callable unqualified as
/// `conductor_explain(sql)` (sql/finalize.sql).
#[pg_extern]
fn explain(
    sql: &str,
) -> TableIterator<
    'static,
    (
        name!(table_name, String),
        name!(shard_id, i32),
        name!(node_id, String),
        name!(node_url, String),
        name!(remote_sql, String),
        name!(args, JsonB),
        name!(reason, String),
    ),
> {
    let rows = PLANS
        .with(|p| p.borrow_mut().explain(sql, &PgCatalog, &[]))
        .unwrap_or_else(|e| {
            raise(
                PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
                format!("conductor_explain: {e}"),
            )
            .error()
        });
    TableIterator::new(rows.into_iter().map(|r| {
        (
            r.table,
            r.shard_id as i32,
            r.node_id,
            r.node_url,
            r.remote_sql,
            JsonB(args_json(&r.args)),
            r.reason,
        )
    }))
}

/// conductor_explain's parsed-plan cache counters for this backend.
pub fn plan_cache_counts() -> (i64, i64) {
    PLANS.with(|p| {
        let p = p.borrow();
        (p.hits as i64, p.misses as i64)
    })
}
