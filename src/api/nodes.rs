//! add_node, update_node, remove_node.

use super::conductor_server;
use crate::catalog::credentials::token_for;
use crate::errors::raise;
use crate::remote;
use conductor_core::client::NodeEndpoint;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

fn check_node_id(node_id: &str) {
    let ok = !node_id.is_empty()
        && node_id.len() <= 63
        && node_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !ok {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid node id \"{node_id}\""),
        )
        .hint("A node id is 1 to 63 characters: letters, digits, '_', '.', '-'.")
        .error()
    }
}

/// Node URLs are a scheme and an authority, nothing else: every request path
/// is appended to it.
fn check_url(url: &str) -> String {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    let authority = rest.map(|r| r.strip_suffix('/').unwrap_or(r));
    match authority {
        Some(a)
            if !a.is_empty()
                && !a.contains(['/', '?', '#', ' ', '@'])
                && !a.chars().any(|c| c.is_control()) =>
        {
            url.trim_end_matches('/').to_string()
        }
        _ => raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("invalid node url \"{url}\""),
        )
        .hint("Use http://host:port or https://host:port, without a path.")
        .error(),
    }
}

fn require_reachable(server_id: pg_sys::Oid, node_id: &str, url: &str) {
    let endpoint = NodeEndpoint {
        node_id: node_id.to_string(),
        url: url.to_string(),
        token: token_for(server_id),
    };
    if let Err(err) = remote::check_health(endpoint) {
        raise(
            PgSqlErrorCode::ERRCODE_FDW_UNABLE_TO_ESTABLISH_CONNECTION,
            format!("node \"{node_id}\" at {url} is not reachable"),
        )
        .detail(err.to_string())
        .hint("Start the node (and check the user mapping's token) before adding it.")
        .error()
    }
}

/// Whether the node runs conductor-node's exact decimal aggregates and
/// arithmetic, asked once here so that planning never calls a node: a
/// node without them (a plain sqld answers "no such function") or any
/// failure of the probe means no, which only keeps numeric aggregates and
/// numeric `SET n = n + x` in Postgres.
fn offers_decimal_aggregates(server_id: pg_sys::Oid, node_id: &str, url: &str) -> bool {
    use conductor_core::executor::ShardRequest;
    use conductor_hrana::{
        decimal, PipelineReqBody, Stmt, StreamRequest, StreamResponse, StreamResult, Value,
    };
    let endpoint = NodeEndpoint {
        node_id: node_id.to_string(),
        url: url.to_string(),
        token: token_for(server_id),
    };
    let sql = format!(
        "SELECT {}(x), {}(x), {}(x), {}(min(x), max(x), 4, 2), {}(min(x), max(x), NULL, NULL) \
         FROM (SELECT ? AS x UNION ALL SELECT ?)",
        decimal::SUM_FUNCTION,
        decimal::MIN_FUNCTION,
        decimal::MAX_FUNCTION,
        decimal::ADD_FUNCTION,
        decimal::SUB_FUNCTION,
    );
    let request = ShardRequest {
        shard_id: None,
        endpoint,
        body: PipelineReqBody {
            baton: None,
            requests: vec![
                StreamRequest::Execute {
                    stmt: Stmt::new(
                        sql,
                        vec![Value::Text("-1.5".into()), Value::Text("2".into())],
                    ),
                },
                StreamRequest::Close,
            ],
        },
    };
    let Some(Ok(body)) = remote::execute(vec![request]).pop() else {
        return false;
    };
    // min/max of the texts are SQLite's text order: "-1.5", "2".
    let want = ["0.5", "-1.5", "2", "0.50", "-3.5"].map(|t| Value::Text(t.to_string()));
    matches!(
        body.results.first(),
        Some(StreamResult::Ok { response: StreamResponse::Execute { result } })
            if result.rows.len() == 1 && result.rows[0] == want
    )
}

/// Register a storage node of a conductor server.
#[pg_extern]
fn add_node(server: &str, node_id: &str, url: &str) {
    let server_id = conductor_server(server);
    check_node_id(node_id);
    let url = check_url(url);
    super::tables::with_node_catalog_locked(true, || {
        add_node_locked(server, server_id, node_id, url)
    })
}

fn add_node_locked(server: &str, server_id: pg_sys::Oid, node_id: &str, url: String) {
    let exists = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM conductor.node WHERE server_id = $1 AND node_id = $2)",
        &[server_id.into(), node_id.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if exists {
        raise(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!("node \"{node_id}\" already exists in server \"{server}\""),
        )
        .hint("Use conductor.update_node() to change its address.")
        .error()
    }
    require_reachable(server_id, node_id, &url);
    let decimal = offers_decimal_aggregates(server_id, node_id, &url);
    Spi::run_with_args(
        "INSERT INTO conductor.node (server_id, node_id, url, decimal_aggregates)
         VALUES ($1, $2, $3, $4)",
        &[
            server_id.into(),
            node_id.into(),
            url.as_str().into(),
            decimal.into(),
        ],
    )
    .unwrap_or_else(|e| error!("conductor: could not add node: {e}"));
    super::tables::copy_reference_tables(server_id, node_id, &url);
}

/// Point an existing node id at a new address (the node's data must be
/// there: shards stay assigned to the node id).
#[pg_extern]
fn update_node(server: &str, node_id: &str, url: &str) {
    let server_id = conductor_server(server);
    let url = check_url(url);
    require_known(server_id, server, node_id);
    require_reachable(server_id, node_id, &url);
    let decimal = offers_decimal_aggregates(server_id, node_id, &url);
    Spi::run_with_args(
        "UPDATE conductor.node SET url = $3, decimal_aggregates = $4
          WHERE server_id = $1 AND node_id = $2",
        &[
            server_id.into(),
            node_id.into(),
            url.as_str().into(),
            decimal.into(),
        ],
    )
    .unwrap_or_else(|e| error!("conductor: could not update node: {e}"));
}

/// Forget a node that holds no shards. Its copies of reference tables that
/// have copies elsewhere are forgotten with it (they stay on the node);
/// reads of such a table then prefer another copy.
#[pg_extern]
fn remove_node(server: &str, node_id: &str) {
    let server_id = conductor_server(server);
    require_known(server_id, server, node_id);
    // A move's step holds the target's row lock (FOR SHARE) until it
    // commits; once this lock is ours, every move onto the node is recorded
    // below, and none starts until this transaction ends.
    Spi::run_with_args(
        "SELECT FROM conductor.node WHERE server_id = $1 AND node_id = $2 FOR UPDATE",
        &[server_id.into(), node_id.into()],
    )
    .unwrap_or_else(|e| error!("conductor: could not lock the node: {e}"));
    let moving_in = Spi::get_one_with_args::<String>(
        "SELECT format('shard %s of %s', shard_id, relid::regclass) FROM conductor.shard
          WHERE server_id = $1 AND target_node_id = $2 ORDER BY relid, shard_id LIMIT 1",
        &[server_id.into(), node_id.into()],
    )
    .ok()
    .flatten();
    if let Some(shard) = moving_in {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            format!("node \"{node_id}\" is the target of a move of {shard}"),
        )
        .hint("Wait for the move to finish (conductor.shard_moves shows it) and move the shard off the node, or, for a move whose backend ended, run SELECT * FROM conductor.cleanup_moves() first.")
        .error()
    }
    Spi::run_with_args(
        "UPDATE conductor.shard s
            SET node_id = (SELECT min(r.node_id) FROM conductor.reference_placement r
                            WHERE r.relid = s.relid AND r.node_id <> $2)
          WHERE s.server_id = $1 AND s.node_id = $2
            AND EXISTS (SELECT FROM conductor.reference_placement r
                         WHERE r.relid = s.relid AND r.node_id <> $2);
         DELETE FROM conductor.reference_placement r
          WHERE r.server_id = $1 AND r.node_id = $2
            AND EXISTS (SELECT FROM conductor.reference_placement o
                         WHERE o.relid = r.relid AND o.node_id <> $2)",
        &[server_id.into(), node_id.into()],
    )
    .unwrap_or_else(|e| error!("conductor: could not forget the node's reference copies: {e}"));
    let shards = Spi::get_one_with_args::<i64>(
        "SELECT count(*) FROM conductor.shard WHERE server_id = $1 AND node_id = $2",
        &[server_id.into(), node_id.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(0);
    if shards > 0 {
        let named = Spi::get_one_with_args::<String>(
            "SELECT string_agg(format('shard %s of %s', shard_id, relid::regclass), ', '
                               ORDER BY relid::regclass::text, shard_id)
               FROM (SELECT relid, shard_id FROM conductor.shard
                      WHERE server_id = $1 AND node_id = $2
                      ORDER BY relid::regclass::text, shard_id LIMIT 10) s",
            &[server_id.into(), node_id.into()],
        )
        .ok()
        .flatten()
        .unwrap_or_default();
        let more = if shards > 10 { ", …" } else { "" };
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            format!("node \"{node_id}\" still holds {shards} shards"),
        )
        .detail(format!("It holds {named}{more}."))
        .hint("Move its shards to other nodes (CALL conductor.drain_node()) or drop their tables first; a table with virtual indexes moves only once they are dropped.")
        .error()
    }
    Spi::run_with_args(
        "DELETE FROM conductor.node WHERE server_id = $1 AND node_id = $2",
        &[server_id.into(), node_id.into()],
    )
    .unwrap_or_else(|e| error!("conductor: could not remove node: {e}"));
}

fn require_known(server_id: pg_sys::Oid, server: &str, node_id: &str) {
    let known = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM conductor.node WHERE server_id = $1 AND node_id = $2)",
        &[server_id.into(), node_id.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if !known {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("node \"{node_id}\" does not exist in server \"{server}\""),
        )
        .error()
    }
}
