//! Online shard moves, draining and rebalancing (docs/ARCHITECTURE.md,
//! Moving shards). The procedures in sql/finalize.sql call these steps, each
//! in its own transaction; the SQLite statements are the core's
//! (`conductor_core::shard_move`).

use super::conductor_server;
use crate::catalog::cache;
use crate::catalog::credentials::token_for;
use crate::errors::raise;
use crate::gucs;
use crate::remote::{self, ShardRequest};
use conductor_core::client::{one_request_transaction, NodeEndpoint};
use conductor_core::remote_sql::{drop_table_sql, max_rows_per_insert, shard_table_name};
use conductor_core::shard_move as mv;
use conductor_core::ShardError;
use conductor_hrana::{
    PipelineReqBody, Stmt, StmtResult, StreamRequest, StreamResponse, StreamResult, Value,
};
use pgrx::prelude::*;
use pgrx::{JsonB, PgSqlErrorCode};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Rows read from the source per copy step (one committed step each).
const COPY_CHUNK_ROWS: i64 = 2000;
/// Changes replayed per catch-up round.
const CATCH_UP_BATCH: i64 = 1000;
/// Catch-up stops chasing and tries to cut over once this few changes wait
/// (or after `CATCH_UP_ROUNDS` rounds in one step, however many wait: the
/// write block's limit then decides).
const CUT_OVER_LAG: i64 = 100;
const CATCH_UP_ROUNDS: usize = 20;

/// One move as its catalog row records it.
struct Move {
    id: i64,
    relid: pg_sys::Oid,
    shard_id: i32,
    server_id: pg_sys::Oid,
    source: String,
    target: String,
    table: String,
    phase: String,
    last_key: Option<serde_json::Value>,
    changes_pending: i64,
}

fn load_move(id: i64) -> Move {
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT move_id, relid::oid, shard_id, server_id, source_node, target_node,
                    remote_table, phase, last_key, changes_pending
               FROM conductor.shard_move WHERE move_id = $1",
            None,
            &[id.into()],
        )?;
        if rows.is_empty() {
            error!("conductor: move {id} is not recorded");
        }
        let r = rows.first();
        Ok::<_, pgrx::spi::Error>(Move {
            id,
            relid: r.get(2)?.unwrap_or(pg_sys::Oid::INVALID),
            shard_id: r.get(3)?.unwrap_or_default(),
            server_id: r.get(4)?.unwrap_or(pg_sys::Oid::INVALID),
            source: r.get(5)?.unwrap_or_default(),
            target: r.get(6)?.unwrap_or_default(),
            table: r.get(7)?.unwrap_or_default(),
            phase: r.get(8)?.unwrap_or_default(),
            last_key: r.get::<JsonB>(9)?.map(|j| j.0),
            changes_pending: r.get(10)?.unwrap_or_default(),
        })
    })
    .unwrap_or_else(|e| error!("conductor: could not read move {id}: {e}"))
}

impl Move {
    fn shard(&self) -> u32 {
        self.shard_id as u32
    }
    fn source_ep(&self) -> NodeEndpoint {
        endpoint(self.server_id, &self.source)
    }
    fn target_ep(&self) -> NodeEndpoint {
        endpoint(self.server_id, &self.target)
    }
    fn set(&self, assignments: &str, args: Vec<pgrx::datum::DatumWithOid<'_>>) {
        let mut all = vec![self.id.into()];
        all.extend(args);
        Spi::run_with_args(
            &format!("UPDATE conductor.shard_move SET {assignments} WHERE move_id = $1"),
            &all,
        )
        .unwrap_or_else(|e| error!("conductor: could not record move {}: {e}", self.id));
    }
    /// Where the catalog places the shard now (None: the table is gone).
    fn current_node(&self) -> Option<String> {
        Spi::get_one_with_args::<String>(
            "SELECT node_id FROM conductor.shard WHERE relid = $1 AND shard_id = $2",
            &[self.relid.into(), self.shard_id.into()],
        )
        .ok()
        .flatten()
    }
}

fn endpoint(server_id: pg_sys::Oid, node_id: &str) -> NodeEndpoint {
    known_endpoint(server_id, node_id).unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("node \"{node_id}\" does not exist"),
        )
        .error()
    })
}

/// The node's address, if the catalog still knows it (a move's record
/// may outlive a node removed since).
fn known_endpoint(server_id: pg_sys::Oid, node_id: &str) -> Option<NodeEndpoint> {
    let url = Spi::get_one_with_args::<String>(
        "SELECT url FROM conductor.node WHERE server_id = $1 AND node_id = $2",
        &[server_id.into(), node_id.into()],
    )
    .ok()
    .flatten()?;
    Some(NodeEndpoint {
        node_id: node_id.to_string(),
        url,
        token: token_for(server_id),
    })
}

/// Statements as one node transaction that writes: it takes the node's
/// write lock first (waiting for it as the node allows), so it never fails
/// upgrading a read snapshot another writer made stale.
fn txn(ep: &NodeEndpoint, shard: u32, stmts: Vec<Stmt>) -> Result<Vec<StmtResult>, ShardError> {
    transaction(ep, shard, stmts, true)
}

/// Statements that only read, from one snapshot of the node.
fn read_txn(
    ep: &NodeEndpoint,
    shard: u32,
    stmts: Vec<Stmt>,
) -> Result<Vec<StmtResult>, ShardError> {
    transaction(ep, shard, stmts, false)
}

fn transaction(
    ep: &NodeEndpoint,
    shard: u32,
    stmts: Vec<Stmt>,
    write: bool,
) -> Result<Vec<StmtResult>, ShardError> {
    let n = stmts.len();
    let mut body = one_request_transaction(stmts);
    if write {
        if let Some(StreamRequest::Batch { batch }) = body.requests.first_mut() {
            batch.steps[0].stmt = Stmt::new("BEGIN IMMEDIATE", vec![]);
        }
    }
    let request = ShardRequest {
        shard_id: Some(shard),
        endpoint: ep.clone(),
        body,
    };
    // A node whose write lock stays taken past its busy timeout (a long
    // transaction of the application) fails the request before running
    // anything: it is sent again a few times before the move gives up.
    let mut attempt = 0;
    let body = loop {
        match remote::execute(vec![request.clone()])
            .pop()
            .expect("one result")
        {
            Err(e) if attempt < BUSY_RETRIES && is_busy(&e) => {
                attempt += 1;
                remote::sleep_interruptibly(Duration::from_millis(50 * attempt as u64));
            }
            r => break r?,
        }
    };
    let mut out = Vec::with_capacity(n);
    if let Some(StreamResult::Ok {
        response: StreamResponse::Batch { result },
    }) = body.results.into_iter().next()
    {
        // Step 0 is BEGIN.
        out.extend(
            result
                .step_results
                .into_iter()
                .skip(1)
                .take(n)
                .map(Option::unwrap_or_default),
        );
    }
    out.resize_with(n, StmtResult::default);
    Ok(out)
}

const BUSY_RETRIES: u32 = 4;

fn is_busy(e: &ShardError) -> bool {
    e.sqlite_code()
        .is_some_and(|c| c.starts_with("SQLITE_BUSY"))
}

/// One statement outside a transaction; its rows.
fn query_req(ep: &NodeEndpoint, shard: u32, stmt: Stmt) -> ShardRequest {
    ShardRequest {
        shard_id: Some(shard),
        endpoint: ep.clone(),
        body: PipelineReqBody {
            baton: None,
            requests: vec![StreamRequest::Execute { stmt }, StreamRequest::Close],
        },
    }
}

fn rows_of(
    r: Result<conductor_hrana::PipelineRespBody, ShardError>,
) -> Result<Vec<Vec<Value>>, ShardError> {
    let body = r?;
    Ok(match body.results.into_iter().next() {
        Some(StreamResult::Ok {
            response: StreamResponse::Execute { result },
        }) => result.rows,
        _ => Vec::new(),
    })
}

fn query(ep: &NodeEndpoint, shard: u32, stmt: Stmt) -> Result<Vec<Vec<Value>>, ShardError> {
    rows_of(
        remote::execute(vec![query_req(ep, shard, stmt)])
            .pop()
            .expect("one result"),
    )
}

fn ok<T>(r: Result<T, ShardError>) -> T {
    r.unwrap_or_else(|e| remote::report_shard_error(&e))
}

fn int_of(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::Integer(i)) => *i,
        _ => 0,
    }
}

fn text_values(rows: Vec<Vec<Value>>) -> Vec<String> {
    rows.into_iter()
        .filter_map(|r| match r.into_iter().next() {
            Some(Value::Text(t)) => Some(t),
            _ => None,
        })
        .collect()
}

/// The columns and primary key of a table's shards, by name.
struct Shape {
    columns: Vec<String>,
    key: Vec<String>,
}

impl Shape {
    fn of(relid: pg_sys::Oid) -> Shape {
        let topology = cache::table(relid);
        Shape {
            columns: topology
                .column_names()
                .iter()
                .map(|s| s.to_string())
                .collect(),
            key: topology
                .primary_key
                .iter()
                .map(|&i| topology.columns[i].name.clone())
                .collect(),
        }
    }
    fn cols(&self) -> Vec<&str> {
        self.columns.iter().map(String::as_str).collect()
    }
    fn keys(&self) -> Vec<&str> {
        self.key.iter().map(String::as_str).collect()
    }
    /// The key values of a full row.
    fn key_of(&self, row: &[Value]) -> Vec<Value> {
        self.key
            .iter()
            .map(|k| {
                let i = self.columns.iter().position(|c| c == k).expect("a column");
                row[i].clone()
            })
            .collect()
    }
}

/// ALTER and DROP of the table wait for a running step, and a step waits
/// for them: the shard's shape cannot change under a copy.
fn lock_table(relid: pg_sys::Oid) {
    // SAFETY: a lock on a relation in a transaction, released at its end.
    unsafe { pg_sys::LockRelationOid(relid, pg_sys::ShareUpdateExclusiveLock as pg_sys::LOCKMODE) };
}

/// Refuse a change of a table's shard tables while one of its shards is
/// moving: the target's copy was created from the source's schema when the
/// move began and would miss it. Waits for a running move step first.
pub fn refuse_while_moving(relid: pg_sys::Oid, what: &str) {
    lock_table(relid);
    let moving = Spi::get_one_with_args::<i32>(
        "SELECT shard_id FROM conductor.shard WHERE relid = $1 AND status <> 'active'
          ORDER BY shard_id LIMIT 1",
        &[relid.into()],
    )
    .ok()
    .flatten();
    if let Some(shard) = moving {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
            format!(
                "cannot {what} {}: its shard {shard} is being moved",
                crate::catalog::relation_display_name(relid)
            ),
        )
        .hint("Retry once the move is done (conductor.shard_moves shows it); a move that died is cleaned up by conductor.cleanup_moves().")
        .error()
    }
}

/// The tables to move together with `tbl`: its co-location group (shard i
/// of every member lives on one node, and stays so), `tbl` first. Checked
/// here, before any member moves, so a group never ends up split by a
/// refusal: a reference table has a copy on every node and nothing to move,
/// and a table with virtual indexes cannot move yet.
#[pg_extern(name = "_move_group")]
fn move_group(tbl: pg_sys::Oid) -> SetOfIterator<'static, pg_sys::Oid> {
    let members: Vec<pg_sys::Oid> = Spi::connect(|client| {
        client
            .select(
                "SELECT m.relid::oid FROM conductor.distributed_table t
                   JOIN conductor.distributed_table m
                     ON m.colocation_id = t.colocation_id AND m.server_id = t.server_id
                  WHERE t.relid = $1
                  ORDER BY m.relid::oid = $1 DESC, m.relid::oid",
                None,
                &[tbl.into()],
            )?
            .map(|r| Ok(r.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::InvalidOid)))
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| error!("conductor: could not read the co-location group: {e}"));
    if members.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!(
                "{} is not a distributed table",
                crate::catalog::relation_display_name(tbl)
            ),
        )
        .error()
    }
    for &m in &members {
        let topology = cache::table(m);
        if topology.is_reference() {
            raise(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!(
                    "{} is a reference table: it has a copy on every node, nothing to move",
                    topology.name
                ),
            )
            .error()
        }
        if !topology.virtual_indexes.is_empty() {
            let mut refusal = raise(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("cannot move shards of {}: it has virtual indexes", topology.name),
            )
            .hint("Drop its virtual indexes (conductor.drop_virtual_index), move, and create them again.");
            if m != tbl {
                refusal = refusal.detail(format!(
                    "It is co-located with {} and moves with it.",
                    crate::catalog::relation_display_name(tbl)
                ));
            }
            refusal.error()
        }
    }
    SetOfIterator::new(members)
}

/// Whether another backend is running move `id` now.
fn running_elsewhere(id: i64) -> Option<i32> {
    Spi::run("SELECT pg_catalog.pg_stat_clear_snapshot()")
        .unwrap_or_else(|e| error!("conductor: {e}"));
    // A role that may not see another role's sessions reads NULL for their
    // start and state: such a move counts as running.
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT m.pid FROM conductor.shard_move m
               JOIN pg_catalog.pg_stat_activity a ON a.pid = m.pid
              WHERE m.move_id = $1 AND m.pid <> pg_catalog.pg_backend_pid()
                AND (a.backend_start IS NULL OR a.backend_start = m.backend_start)
                AND (a.state IS NULL OR a.state = 'active')",
            None,
            &[id.into()],
        )?;
        match rows.into_iter().next() {
            Some(r) => r.get::<i32>(1),
            None => Ok(None),
        }
    })
    .unwrap_or_else(|e| error!("conductor: could not read pg_stat_activity: {e}"))
}

/// The target must be an active node of the server, at the start and at
/// every step until the switch: drain_node (which disables it) and
/// remove_node wait for the row lock taken here, so a node drained or
/// removed during a move never receives the shard.
fn require_active_target(server_id: pg_sys::Oid, to_node: &str, display: &str) {
    let target_status = Spi::get_one_with_args::<String>(
        "SELECT status FROM conductor.node WHERE server_id = $1 AND node_id = $2 FOR SHARE",
        &[server_id.into(), to_node.into()],
    )
    .ok()
    .flatten();
    match target_status.as_deref() {
        None => raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("node \"{to_node}\" does not exist in the server of {display}"),
        )
        .error(),
        Some("active") => {}
        Some(s) => raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("node \"{to_node}\" is {s}: shards are not moved to it"),
        )
        .error(),
    }
}

/// Checks, cleanup of earlier moves of the shard, and the move's record:
/// everything a predictable failure would stop happens before any node is
/// changed. NULL when the shard is already on `to_node`.
#[pg_extern(name = "_move_start")]
fn move_start(tbl: pg_sys::Oid, shard: i32, to_node: &str) -> Option<i64> {
    // SAFETY: reads the transaction state.
    if unsafe { pg_sys::IsTransactionBlock() } {
        raise(
            PgSqlErrorCode::ERRCODE_ACTIVE_SQL_TRANSACTION,
            "a shard move cannot run inside a transaction block",
        )
        .hint("Each step of a move commits: CALL it outside BEGIN ... COMMIT.")
        .error()
    }
    let topology = cache::table(tbl);
    let display = topology.name.clone();
    if shard < 0 || shard as u32 >= topology.shard_count() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!(
                "{display} has no shard {shard} (it has shards 0 to {})",
                topology.shard_count() - 1
            ),
        )
        .error()
    }
    let server_id = topology.server_id;
    lock_table(tbl);
    // From the catalog, after the lock: the topology read above predates a
    // build whose first step (recording the index and creating its lookup
    // tables beside the shards) held the lock meanwhile.
    let indexed = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM conductor.virtual_index WHERE relid = $1)",
        &[tbl.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if indexed {
        // A virtual index's lookup tables live beside the table's shards
        // and would have to move with them, entries and all; until moves
        // carry them, a move would leave entries where routing no longer
        // looks.
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("cannot move shards of {display}: it has virtual indexes"),
        )
        .hint(
            "Drop its virtual indexes (conductor.drop_virtual_index), move, and create them again.",
        )
        .error()
    }
    require_active_target(server_id, to_node, &display);
    // The shard's row lock serializes moves of one shard.
    Spi::run_with_args(
        "SELECT 1 FROM conductor.shard WHERE relid = $1 AND shard_id = $2 FOR UPDATE",
        &[tbl.into(), shard.into()],
    )
    .unwrap_or_else(|e| error!("conductor: could not lock the shard: {e}"));
    let earlier: Vec<i64> = Spi::connect(|client| {
        client
            .select(
                "SELECT move_id FROM conductor.shard_move
                  WHERE relid = $1 AND shard_id = $2 AND NOT cleaned ORDER BY move_id",
                None,
                &[tbl.into(), shard.into()],
            )?
            .map(|r| Ok(r.get::<i64>(1)?.unwrap_or_default()))
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| error!("conductor: could not read earlier moves: {e}"));
    for id in earlier {
        if let Some(pid) = running_elsewhere(id) {
            raise(
                PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
                format!("shard {shard} of {display} is being moved"),
            )
            .detail(format!("Move {id} runs in backend {pid}."))
            .error()
        }
        if let Err(why) = clean_move(&load_move(id), "the backend that ran it ended") {
            raise(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("an earlier move of shard {shard} of {display} left objects that could not be removed"),
            )
            .detail(why)
            .hint("Run SELECT * FROM conductor.cleanup_moves() once its nodes answer.")
            .error()
        }
    }
    let source = Spi::get_one_with_args::<String>(
        "SELECT node_id FROM conductor.shard WHERE relid = $1 AND shard_id = $2",
        &[tbl.into(), shard.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    if source == to_node {
        raise(
            PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
            format!("shard {shard} of {display} is already on node \"{to_node}\""),
        )
        .warning();
        return None;
    }
    let table = shard_table_name(&topology.remote_name, shard as u32);
    let src = endpoint(server_id, &source);
    let tgt = endpoint(server_id, to_node);
    for ep in [&src, &tgt] {
        if let Err(err) = remote::check_health(ep.clone()) {
            raise(
                PgSqlErrorCode::ERRCODE_FDW_UNABLE_TO_ESTABLISH_CONNECTION,
                format!(
                    "cannot move shard {shard} of {display}: node \"{}\" does not answer",
                    ep.node_id
                ),
            )
            .detail(err.to_string())
            .error()
        }
    }
    // The source's shard table must be what the catalog says it is.
    let shape = Shape::of(tbl);
    let on_source = text_values(ok(query(
        &src,
        shard as u32,
        Stmt::new(mv::COLUMNS_OF_TABLE_SQL, vec![Value::Text(table.clone())]),
    )));
    if on_source != shape.columns {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("cannot move shard {shard} of {display}: its table on node \"{source}\" does not have the table's columns"),
        )
        .detail(format!(
            "{table} has ({}); {display} has ({}).",
            on_source.join(", "),
            shape.columns.join(", ")
        ))
        .error()
    }
    // Room: the target's free space (conductor-node's conductor_free_bytes,
    // less its --reserve-bytes) must hold the copy and the write-ahead log
    // it goes through, twice the shard's pages on the source. A node that
    // cannot tell (a libSQL server has neither the function nor dbstat) is
    // not checked.
    let name = Value::Text(table.clone());
    let needed = query(
        &src,
        shard as u32,
        Stmt::new(super::sizes::BYTES_SQL, vec![name.clone(), name]),
    )
    .ok()
    .map(|rows| int_of(rows.first().and_then(|r| r.first())).saturating_mul(2));
    let free = query(
        &tgt,
        shard as u32,
        Stmt::new(
            format!(
                "SELECT {}()",
                conductor_hrana::checksum::FREE_BYTES_FUNCTION
            ),
            vec![],
        ),
    )
    .ok()
    .and_then(|rows| match rows.first().and_then(|r| r.first()) {
        Some(Value::Integer(i)) => Some(*i),
        _ => None,
    });
    if let (Some(needed), Some(free)) = (needed, free) {
        if free < needed {
            raise(
                PgSqlErrorCode::ERRCODE_DISK_FULL,
                format!("cannot move shard {shard} of {display}: node \"{to_node}\" has too little free space"),
            )
            .detail(format!(
                "The shard takes {needed_half} bytes on node \"{source}\"; the copy needs about {needed} (the table and its write-ahead log), and node \"{to_node}\" has {free} bytes free beyond its reserve.",
                needed_half = needed / 2
            ))
            .hint("Free space on the node, or move the shard to another node.")
            .error()
        }
    }
    // The target must not hold a table of that name, unless it is a
    // recorded leftover (dropped when the copy starts).
    let names = serde_json::to_string(&[&table]).expect("json");
    let there = text_values(ok(query(
        &tgt,
        shard as u32,
        Stmt::new(mv::EXISTING_TABLES_SQL, vec![Value::Text(names)]),
    )));
    if !there.is_empty()
        && super::cleanup::take_colliding(server_id, to_node, std::slice::from_ref(&table))
            .is_empty()
    {
        raise(
            PgSqlErrorCode::ERRCODE_DUPLICATE_TABLE,
            format!("cannot move shard {shard} of {display}: node \"{to_node}\" already has a table {table}"),
        )
        .hint("conductor does not overwrite a table it did not create; drop it on the node if it is not needed.")
        .error()
    }
    let id = Spi::get_one_with_args::<i64>(
        "INSERT INTO conductor.shard_move
             (relid, shard_id, server_id, source_node, target_node, remote_table, pid, backend_start)
         SELECT $1, $2, $3, $4, $5, $6, pg_catalog.pg_backend_pid(),
                (SELECT backend_start FROM pg_catalog.pg_stat_activity
                  WHERE pid = pg_catalog.pg_backend_pid())
         RETURNING move_id",
        &[
            tbl.into(),
            shard.into(),
            server_id.into(),
            source.as_str().into(),
            to_node.into(),
            table.as_str().into(),
        ],
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| error!("conductor: could not record the move"));
    Spi::run_with_args(
        "UPDATE conductor.shard SET status = 'rebalancing_source', target_node_id = $3
          WHERE relid = $1 AND shard_id = $2",
        &[tbl.into(), shard.into(), to_node.into()],
    )
    .unwrap_or_else(|e| error!("conductor: could not mark the shard as moving: {e}"));
    Some(id)
}

/// The next step of move `id`, in the caller's transaction; the phase it
/// leaves the move in.
#[pg_extern(name = "_move_step")]
fn move_step(id: i64) -> String {
    let m = load_move(id);
    lock_table(m.relid);
    if !matches!(m.phase.as_str(), "switched" | "done") {
        // DROP goes ahead between two steps; the step would otherwise fail
        // on the missing shard table, in the node's words.
        let dropped = Spi::get_one_with_args::<bool>(
            "SELECT NOT EXISTS (SELECT FROM conductor.distributed_table WHERE relid = $1)",
            &[m.relid.into()],
        )
        .ok()
        .flatten()
        .unwrap_or(false);
        if dropped {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!(
                    "the table of shard {} ({} on node \"{}\") was dropped during its move",
                    m.shard_id, m.table, m.source
                ),
            )
            .hint("There is nothing left to move: what the move made on the nodes is removed now.")
            .error()
        }
        require_active_target(
            m.server_id,
            &m.target,
            &crate::catalog::relation_display_name(m.relid),
        );
    }
    let next = match m.phase.as_str() {
        "starting" => {
            capture(&m);
            "copying"
        }
        "copying" => {
            if copy_chunk(&m) {
                "catching_up"
            } else {
                "copying"
            }
        }
        "catching_up" => {
            let shape = Shape::of(m.relid);
            let (src, tgt) = (m.source_ep(), m.target_ep());
            let mut pending = 0;
            for _ in 0..CATCH_UP_ROUNDS {
                pending = catch_up_round(&m, &shape, &src, &tgt);
                if pending <= CUT_OVER_LAG {
                    break;
                }
            }
            // Another step while the backlog shrinks; once it does not
            // (writes come faster than they are replayed), the cut-over is
            // tried and the block's limit decides.
            let first_step = m.changes_pending == 0;
            if pending > CUT_OVER_LAG && (first_step || pending < m.changes_pending) {
                "catching_up"
            } else {
                "cutting_over"
            }
        }
        "cutting_over" => {
            cut_over(&m);
            "switched"
        }
        "switched" => {
            finish(&m);
            "done"
        }
        other => error!("conductor: move {id} is {other}; it has no next step"),
    };
    if next != "switched" && next != "done" {
        m.set("phase = $2", vec![next.into()]);
    }
    next.to_string()
}

/// The target's copy of the shard table (same DDL and indexes as the
/// source's), then change capture and the write block on the source, each
/// in one node transaction. Capture starts before the first row is copied.
fn capture(m: &Move) {
    let shape = Shape::of(m.relid);
    let (src, tgt) = (m.source_ep(), m.target_ep());
    let schema = ok(query(
        &src,
        m.shard(),
        Stmt::new(mv::SCHEMA_OF_TABLE_SQL, vec![Value::Text(m.table.clone())]),
    ));
    let mut stmts = vec![Stmt::new(drop_table_sql(&m.table), vec![])];
    for row in schema {
        if let Some(Value::Text(sql)) = row.get(2) {
            stmts.push(Stmt::new(sql.clone(), vec![]));
        }
    }
    ok(txn(&tgt, m.shard(), stmts));
    let setup: Vec<Stmt> = mv::capture_teardown_sql(&m.table)
        .into_iter()
        .chain(mv::capture_setup_sql(&m.table, &shape.keys()))
        .map(|s| Stmt::new(s, vec![]))
        .collect();
    ok(txn(&src, m.shard(), setup));
}

fn key_json(key: &[Value]) -> serde_json::Value {
    serde_json::to_value(key).expect("serializable")
}

/// Copy the next chunk of rows in key order; true when it was the last.
fn copy_chunk(m: &Move) -> bool {
    let shape = Shape::of(m.relid);
    let (src, tgt) = (m.source_ep(), m.target_ep());
    let after: Option<Vec<Value>> = m
        .last_key
        .as_ref()
        .map(|j| serde_json::from_value(j.clone()).expect("a recorded key"));
    let mut args = after.clone().unwrap_or_default();
    args.push(Value::Integer(COPY_CHUNK_ROWS));
    let sql = mv::chunk_sql(&m.table, &shape.cols(), &shape.keys(), after.is_some());
    let rows = ok(query(&src, m.shard(), Stmt::new(sql, args)));
    let n = rows.len();
    if let Some(last) = rows.last() {
        let last_key = shape.key_of(last);
        ok(txn(&tgt, m.shard(), upserts(&m.table, &shape, rows)));
        m.set(
            "last_key = $2, rows_copied = rows_copied + $3",
            vec![JsonB(key_json(&last_key)).into(), (n as i64).into()],
        );
    }
    (n as i64) < COPY_CHUNK_ROWS
}

fn upserts(table: &str, shape: &Shape, rows: Vec<Vec<Value>>) -> Vec<Stmt> {
    let cols = shape.cols();
    let per = max_rows_per_insert(cols.len()).min(500);
    rows.chunks(per)
        .map(|chunk| {
            Stmt::new(
                mv::upsert_sql(table, &cols, chunk.len()),
                chunk.iter().flatten().cloned().collect(),
            )
        })
        .collect()
}

/// Replay the oldest captured changes on the target: each changed key's
/// current source row is written (or its absence deleted), which is
/// idempotent, and only then are the changes forgotten. The number of
/// changes still waiting.
fn catch_up_round(m: &Move, shape: &Shape, src: &NodeEndpoint, tgt: &NodeEndpoint) -> i64 {
    let keys = shape.keys();
    let changes = ok(query(
        src,
        m.shard(),
        Stmt::new(
            mv::read_changes_sql(&m.table, keys.len()),
            vec![Value::Integer(CATCH_UP_BATCH)],
        ),
    ));
    if changes.is_empty() {
        m.set("changes_pending = 0", vec![]);
        return 0;
    }
    let max_seq = int_of(changes.last().and_then(|r| r.first()));
    let mut distinct: BTreeMap<Vec<u8>, Vec<Value>> = BTreeMap::new();
    for c in changes {
        let key: Vec<Value> = c.into_iter().skip(1).collect();
        distinct.entry(mv::key_fingerprint(&key)).or_insert(key);
    }
    let distinct: Vec<Vec<Value>> = distinct.into_values().collect();
    let select = mv::row_by_key_sql(&m.table, &shape.cols(), &keys);
    let current = ok(read_txn(
        src,
        m.shard(),
        distinct
            .iter()
            .map(|k| Stmt::new(select.clone(), k.clone()))
            .collect(),
    ));
    let delete = mv::delete_by_key_sql(&m.table, &keys);
    let mut found = Vec::new();
    let mut apply = Vec::new();
    for (key, result) in distinct.iter().zip(current) {
        match result.rows.into_iter().next() {
            Some(row) => found.push(row),
            None => apply.push(Stmt::new(delete.clone(), key.clone())),
        }
    }
    apply.extend(upserts(&m.table, shape, found));
    ok(txn(tgt, m.shard(), apply));
    let done = ok(txn(
        src,
        m.shard(),
        vec![
            Stmt::new(
                mv::delete_changes_sql(&m.table),
                vec![Value::Integer(max_seq)],
            ),
            Stmt::new(mv::pending_changes_sql(&m.table), vec![]),
        ],
    ));
    let pending = int_of(
        done.get(1)
            .and_then(|r| r.rows.first())
            .and_then(|r| r.first()),
    );
    m.set(
        "changes_applied = changes_applied + $2, changes_pending = $3",
        vec![(distinct.len() as i64).into(), pending.into()],
    );
    pending
}

/// Count and checksum of a shard table on two nodes, both asked at once:
/// computed by the node where it offers the checksum aggregate
/// (conductor-node), else over its rows read in key order (sqld).
fn checksums(
    m: &Move,
    shape: &Shape,
    a: &NodeEndpoint,
    b: &NodeEndpoint,
    deadline: Instant,
) -> (mv::Checksum, mv::Checksum) {
    let sql = mv::checksum_sql(&m.table, &shape.cols());
    let answers = remote::execute(
        [a, b]
            .into_iter()
            .map(|ep| query_req(ep, m.shard(), Stmt::new(sql.clone(), vec![])))
            .collect(),
    );
    let mut sums = [mv::Checksum::default(), mv::Checksum::default()];
    let mut done = [false, false];
    for (i, r) in answers.into_iter().enumerate() {
        match rows_of(r) {
            Ok(rows) => {
                let row = rows.first();
                sums[i] = mv::Checksum {
                    rows: int_of(row.and_then(|r| r.first())) as u64,
                    sum: int_of(row.and_then(|r| r.get(1))) as u64,
                };
                done[i] = true;
            }
            Err(e) if e.to_string().contains("no such function") => {}
            Err(e) => remote::report_shard_error(&e),
        }
    }
    let mut after: [Option<Vec<Value>>; 2] = [None, None];
    while !(done[0] && done[1]) {
        check_deadline(m, deadline);
        let mut requests = Vec::new();
        let mut which = Vec::new();
        for (i, ep) in [a, b].into_iter().enumerate() {
            if done[i] {
                continue;
            }
            let mut args = after[i].clone().unwrap_or_default();
            args.push(Value::Integer(COPY_CHUNK_ROWS));
            let sql = mv::chunk_sql(&m.table, &shape.cols(), &shape.keys(), after[i].is_some());
            requests.push(query_req(ep, m.shard(), Stmt::new(sql, args)));
            which.push(i);
        }
        for (i, r) in which.into_iter().zip(remote::execute(requests)) {
            let rows = ok(rows_of(r));
            for row in &rows {
                sums[i].add_row(row);
            }
            after[i] = rows.last().map(|r| shape.key_of(r));
            done[i] = (rows.len() as i64) < COPY_CHUNK_ROWS;
        }
    }
    (sums[0], sums[1])
}

fn check_deadline(m: &Move, deadline: Instant) {
    if Instant::now() >= deadline {
        raise(
            PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE,
            format!(
                "could not move shard {} of {} within conductor.move_write_block_timeout ({} ms)",
                m.shard_id,
                crate::catalog::relation_display_name(m.relid),
                gucs::MOVE_WRITE_BLOCK_TIMEOUT_MS.get()
            ),
        )
        .hint("Writes to the shard resumed on the source. Retry when the shard is written less, or raise conductor.move_write_block_timeout.")
        .error()
    }
}

/// Block writes to the shard, replay the rest, compare both copies, fence
/// the source for good and point the catalog at the target (committed by
/// the caller).
fn cut_over(m: &Move) {
    let shape = Shape::of(m.relid);
    let (src, tgt) = (m.source_ep(), m.target_ep());
    let limit = gucs::MOVE_WRITE_BLOCK_TIMEOUT_MS.get().max(1) as i64;
    let started = Instant::now();
    let deadline = started + Duration::from_millis(limit as u64);
    let [clear, block] = mv::block_sql(&m.table);
    ok(txn(
        &src,
        m.shard(),
        vec![
            Stmt::new(clear, vec![]),
            Stmt::new(block, vec![Value::Integer(limit)]),
        ],
    ));
    // Writes committed before the block are all captured; none follow.
    while catch_up_round(m, &shape, &src, &tgt) > 0 {
        check_deadline(m, deadline);
    }
    let (s, t) = checksums(m, &shape, &src, &tgt, deadline);
    if s != t {
        raise(
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!(
                "the copy of shard {} on node \"{}\" does not match the source",
                m.shard_id, m.target
            ),
        )
        .detail(format!(
            "Source {}: {} rows, checksum {:016x}; target {}: {} rows, checksum {:016x}.",
            m.source, s.rows, s.sum, m.target, t.rows, t.sum
        ))
        .error()
    }
    check_deadline(m, deadline);
    // The block held throughout (the node's clock decides) and becomes the
    // fence of the old copy; no change slipped in.
    let fenced = ok(txn(
        &src,
        m.shard(),
        vec![
            Stmt::new(mv::fence_sql(&m.table), vec![]),
            Stmt::new(mv::pending_changes_sql(&m.table), vec![]),
        ],
    ));
    let held = fenced[0].affected_row_count == 1;
    let slipped = int_of(fenced[1].rows.first().and_then(|r| r.first()));
    if !held || slipped != 0 {
        check_deadline(m, Instant::now());
    }
    let block_ms = started.elapsed().as_secs_f64() * 1000.0;
    Spi::run_with_args(
        "UPDATE conductor.shard SET node_id = $3, status = 'active', target_node_id = NULL
          WHERE relid = $1 AND shard_id = $2",
        &[m.relid.into(), m.shard_id.into(), m.target.as_str().into()],
    )
    .unwrap_or_else(|e| error!("conductor: could not switch the shard: {e}"));
    // Cached plans of the table are planned again: a join pushed to the
    // nodes was planned for where both tables' shards were.
    super::vindex::invalidate_plans(m.relid);
    m.set(
        "phase = 'switched', block_ms = $2, changes_pending = 0, switched_at = clock_timestamp()",
        vec![block_ms.into()],
    );
}

/// Drop the old copy (and what the move added beside it); a source that
/// does not answer keeps them, recorded in conductor.cleanup.
fn finish(m: &Move) {
    let mut tables = vec![m.table.clone()];
    tables.extend(mv::source_leftovers(&m.table));
    if known_endpoint(m.server_id, &m.source).is_none() {
        // The old source was removed from the catalog: nothing to reach.
        m.set(
            "phase = 'done', cleaned = true, finished_at = now()",
            vec![],
        );
        return;
    }
    if !older_transactions_ended() {
        keep_old_copy(
            m,
            &tables,
            "the old copy of a moved shard, kept while transactions older than the move ran",
            format!(
                "conductor: the old copy of shard {} stays on node {} (fenced) while older transactions run",
                m.shard_id, m.source
            ),
            None,
            "It is listed in conductor.cleanup_pending; SELECT * FROM conductor.cleanup() drops it.",
        );
        m.set(
            "phase = 'done', cleaned = true, finished_at = now()",
            vec![],
        );
        return;
    }
    let result = txn(
        &m.source_ep(),
        m.shard(),
        tables
            .iter()
            .map(|t| Stmt::new(drop_table_sql(t), vec![]))
            .collect(),
    );
    if let Err(err) = result {
        keep_old_copy(
            m,
            &tables,
            "the old copy of a moved shard; its node did not answer",
            format!(
                "conductor: node {} did not answer; the old copy of shard {} stays on it (fenced)",
                m.source, m.shard_id
            ),
            Some(err.to_string()),
            "It is listed in conductor.cleanup_pending; SELECT * FROM conductor.cleanup() drops it once the node is back.",
        );
    }
    m.set(
        "phase = 'done', cleaned = true, finished_at = now()",
        vec![],
    );
}

/// The old copy stays on the source (fenced): recorded for
/// `conductor.cleanup()`, with a WARNING saying why.
fn keep_old_copy(
    m: &Move,
    tables: &[String],
    reason: &str,
    warning: String,
    detail: Option<String>,
    hint: &str,
) {
    super::cleanup::record(m.server_id, &m.source, &m.source_ep().url, tables, reason);
    let mut w = raise(PgSqlErrorCode::ERRCODE_WARNING, warning);
    if let Some(d) = detail {
        w = w.detail(d);
    }
    w.hint(hint).warning();
}

/// How long the old copy's drop waits for transactions that began before
/// the switch (they may have planned with the old location, and read it).
const OLD_TRANSACTIONS_WAIT: Duration = Duration::from_secs(5);

/// Whether every client transaction that began before the catalog switched
/// has ended (waiting for them a while).
fn older_transactions_ended() -> bool {
    let give_up = Instant::now() + OLD_TRANSACTIONS_WAIT;
    loop {
        // pg_stat_activity is read once per transaction unless cleared.
        Spi::run("SELECT pg_catalog.pg_stat_clear_snapshot()")
            .unwrap_or_else(|e| error!("conductor: {e}"));
        // This transaction began after the switch committed (a step of its
        // own), and so did every transaction that began after it: those
        // load the new location.
        let older = Spi::get_one_with_args::<i64>(
            "SELECT count(*) FROM pg_catalog.pg_stat_activity a
              WHERE a.pid <> pg_catalog.pg_backend_pid()
                AND a.backend_type = 'client backend'
                AND (a.xact_start < now()
                     -- a session this role may not see: assumed older
                     OR (a.xact_start IS NULL AND a.state IS NULL))",
            &[],
        )
        .unwrap_or_else(|e| error!("conductor: could not read pg_stat_activity: {e}"))
        .unwrap_or(0);
        if older == 0 {
            return true;
        }
        if Instant::now() >= give_up {
            return false;
        }
        remote::sleep_interruptibly(Duration::from_millis(10));
    }
}

/// Undo what an unfinished move did on the nodes, as far as they answer,
/// and give the shard back to its source in the catalog. Err names what
/// stays on the source (the target's leftovers go to conductor.cleanup).
fn undo(m: &Move) -> Result<(), String> {
    let current = m.current_node();
    let mut kept = Ok(());
    // A node the catalog no longer knows holds nothing conductor can reach.
    let source = known_endpoint(m.server_id, &m.source);
    let target = known_endpoint(m.server_id, &m.target);
    if let Some(ep) =
        source.filter(|_| current.as_deref() == Some(m.source.as_str()) || current.is_none())
    {
        let teardown = mv::capture_teardown_sql(&m.table)
            .into_iter()
            .map(|s| Stmt::new(s, vec![]))
            .collect();
        if let Err(e) = txn(&ep, m.shard(), teardown) {
            kept = Err(format!(
                "change capture on node {} stays until it answers: {e}",
                m.source
            ));
        }
    }
    if let Some(ep) = target.filter(|_| current.as_deref() != Some(m.target.as_str())) {
        if txn(
            &ep,
            m.shard(),
            vec![Stmt::new(drop_table_sql(&m.table), vec![])],
        )
        .is_err()
        {
            super::cleanup::record(
                m.server_id,
                &m.target,
                &ep.url,
                std::slice::from_ref(&m.table),
                "the partial copy of an abandoned shard move; its node did not answer",
            );
        }
    }
    Spi::run_with_args(
        "UPDATE conductor.shard SET status = 'active', target_node_id = NULL
          WHERE relid = $1 AND shard_id = $2 AND node_id = $3",
        &[m.relid.into(), m.shard_id.into(), m.source.as_str().into()],
    )
    .unwrap_or_else(|e| error!("conductor: could not reset the shard: {e}"));
    kept
}

/// Leave nothing of move `m` behind: finish a switched move, undo any other.
fn clean_move(m: &Move, reason: &str) -> Result<(), String> {
    match m.phase.as_str() {
        "switched" | "done" => {
            if m.current_node().as_deref() == Some(m.source.as_str()) {
                // The shard lives on the old source again: nothing to drop.
                m.set("cleaned = true", vec![]);
                return Ok(());
            }
            finish(m);
            Ok(())
        }
        _ => {
            let r = undo(m);
            m.set(
                "phase = 'aborted', finished_at = coalesce(finished_at, now()),
                 error = coalesce(error, $2), cleaned = $3",
                vec![reason.into(), r.is_ok().into()],
            );
            r
        }
    }
}

/// A step of move `id` failed: undo it (the procedure commits this, then
/// raises the step's error).
#[pg_extern(name = "_move_abort")]
fn move_abort(id: i64, reason: &str) {
    let m = load_move(id);
    match m.phase.as_str() {
        "switched" | "done" => m.set("error = $2", vec![reason.into()]),
        _ => {
            let r = undo(&m);
            m.set(
                "phase = 'aborted', finished_at = now(), error = $2, cleaned = $3",
                vec![reason.into(), r.is_ok().into()],
            );
        }
    }
}

/// Removes what moves that did not finish left behind (a killed backend, a
/// node that failed): a move that switched the catalog is finished (its old
/// copy dropped), any other is undone (the source stays). Moves still
/// running are left alone. One row per move looked at.
#[pg_extern]
fn cleanup_moves() -> TableIterator<
    'static,
    (
        name!(move_id, i64),
        name!(table_name, String),
        name!(shard_id, i32),
        name!(outcome, String),
    ),
> {
    let ids: Vec<i64> = Spi::connect(|client| {
        client
            .select(
                "SELECT move_id FROM conductor.shard_move WHERE NOT cleaned ORDER BY move_id",
                None,
                &[],
            )?
            .map(|r| Ok(r.get::<i64>(1)?.unwrap_or_default()))
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| error!("conductor: could not read the moves: {e}"));
    let mut out = Vec::new();
    for id in ids {
        let m = load_move(id);
        let name = crate::catalog::relation_display_name(m.relid);
        Spi::run_with_args(
            "SELECT 1 FROM conductor.shard WHERE relid = $1 AND shard_id = $2 FOR UPDATE",
            &[m.relid.into(), m.shard_id.into()],
        )
        .unwrap_or_else(|e| error!("conductor: could not lock the shard: {e}"));
        let outcome = if let Some(pid) = running_elsewhere(id) {
            format!("running in backend {pid}")
        } else {
            let m = load_move(id);
            match clean_move(&m, "the backend that ran it ended") {
                Ok(()) if m.phase == "switched" || m.phase == "done" => "finished".to_string(),
                Ok(()) => "undone".to_string(),
                Err(why) => format!("kept: {why}"),
            }
        };
        out.push((id, name, m.shard_id, outcome));
    }
    TableIterator::new(out)
}

/// The moves `rebalance` would run: shards off nodes that are not active,
/// then from the fullest active node to the emptiest while that evens the
/// count out (each shard of each table counts one).
#[pg_extern(name = "_rebalance_plan")]
fn rebalance_plan(
    server: &str,
) -> TableIterator<
    'static,
    (
        name!(relid, pg_sys::Oid),
        name!(shard_id, i32),
        name!(source_node, String),
        name!(target_node, String),
    ),
> {
    let server_id = conductor_server(server);
    let (nodes, shards) = Spi::connect(|client| {
        let nodes = client
            .select(
                "SELECT node_id FROM conductor.node
                  WHERE server_id = $1 AND status = 'active' ORDER BY node_id",
                None,
                &[server_id.into()],
            )?
            .map(|r| Ok(r.get::<String>(1)?.unwrap_or_default()))
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()?;
        let shards = client
            .select(
                // One unit per co-location group's shard (its members move
                // together); reference tables and tables with virtual
                // indexes do not move.
                "SELECT min(s.relid::oid)::bigint, s.shard_id, s.node_id, count(*),
                        array_agg(t.remote_name::text)
                   FROM conductor.shard s
                   JOIN conductor.distributed_table t ON t.relid = s.relid
                  WHERE s.server_id = $1
                    AND NOT EXISTS (SELECT 1 FROM conductor.reference_placement r
                                     WHERE r.relid = s.relid)
                    AND NOT EXISTS (SELECT 1 FROM conductor.distributed_table g
                                      JOIN conductor.virtual_index v ON v.relid = g.relid
                                     WHERE g.colocation_id = t.colocation_id)
                  GROUP BY t.colocation_id, s.shard_id, s.node_id
                  ORDER BY 1, 2",
                None,
                &[server_id.into()],
            )?
            .map(|r| {
                let shard_id = r.get::<i32>(2)?.unwrap_or_default() as u32;
                let tables: Vec<String> = r.get::<Vec<String>>(5)?.unwrap_or_default();
                Ok((
                    mv::PlacedShard {
                        table: r.get::<i64>(1)?.unwrap_or_default(),
                        shard_id,
                        node: r.get::<String>(3)?.unwrap_or_default(),
                        weight: r.get::<i64>(4)?.unwrap_or(1) as u64,
                    },
                    tables
                        .iter()
                        .map(|base| conductor_core::remote_sql::shard_table_name(base, shard_id))
                        .collect::<Vec<_>>(),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()?;
        Ok::<_, pgrx::spi::Error>((nodes, shards))
    })
    .unwrap_or_else(|e| error!("conductor: could not read the placement: {e}"));
    // By size when every node holding a unit can tell its tables' bytes;
    // else by count.
    let shards: Vec<mv::PlacedShard<i64>> = match table_bytes(server_id, &shards) {
        Some(bytes) => shards
            .into_iter()
            .map(|(mut unit, tables)| {
                let on_node = &bytes[&unit.node];
                unit.weight = tables
                    .iter()
                    .map(|t| on_node.get(t).copied().unwrap_or(0))
                    .sum::<u64>()
                    .max(1);
                unit
            })
            .collect(),
        None => {
            pgrx::notice!(
                "conductor: rebalancing by shard count: a node could not report its shards' sizes"
            );
            shards.into_iter().map(|(unit, _)| unit).collect()
        }
    };
    warn_of_unmovable_shards(server_id);
    let plan = mv::plan_rebalance(&nodes, &shards);
    TableIterator::new(plan.into_iter().map(|p| {
        (
            pg_sys::Oid::from(p.table as u32),
            p.shard_id as i32,
            p.from,
            p.to,
        )
    }))
}

/// The plan leaves the shards of tables with virtual indexes where they
/// are; on a node that is not active (drain_node) they stay behind, and
/// remove_node will refuse the node: say so now, naming them.
fn warn_of_unmovable_shards(server_id: pg_sys::Oid) {
    let stuck: Vec<(String, String)> = Spi::connect(|client| {
        client
            .select(
                "SELECT s.node_id, format('shard %s of %s', s.shard_id, s.relid::regclass)
                   FROM conductor.shard s
                   JOIN conductor.node n ON n.server_id = s.server_id AND n.node_id = s.node_id
                   JOIN conductor.distributed_table t ON t.relid = s.relid
                  WHERE s.server_id = $1 AND n.status <> 'active'
                    AND NOT EXISTS (SELECT 1 FROM conductor.reference_placement r
                                     WHERE r.relid = s.relid)
                    AND EXISTS (SELECT 1 FROM conductor.distributed_table g
                                  JOIN conductor.virtual_index v ON v.relid = g.relid
                                 WHERE g.colocation_id = t.colocation_id)
                  ORDER BY s.node_id, s.relid::regclass::text, s.shard_id",
                None,
                &[server_id.into()],
            )?
            .map(|r| {
                Ok((
                    r.get::<String>(1)?.unwrap_or_default(),
                    r.get::<String>(2)?.unwrap_or_default(),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| error!("conductor: could not read the placement: {e}"));
    let mut by_node: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (node, shard) in stuck {
        by_node.entry(node).or_default().push(shard);
    }
    for (node, shards) in by_node {
        raise(
            PgSqlErrorCode::ERRCODE_WARNING,
            format!(
                "conductor: node \"{node}\" is not active but keeps {} shard(s) that cannot move: {}",
                shards.len(),
                shards.join(", ")
            ),
        )
        .detail("Shards of tables with virtual indexes (and of the tables co-located with them) do not move.")
        .hint("Drop the virtual indexes (conductor.drop_virtual_index), rebalance, and create them again.")
        .warning();
    }
}

/// The bytes of every table (with its indexes) on each node holding one of
/// `units`, from SQLite's dbstat; None if a node cannot tell.
fn table_bytes(
    server_id: pg_sys::Oid,
    units: &[(mv::PlacedShard<i64>, Vec<String>)],
) -> Option<std::collections::HashMap<String, std::collections::HashMap<String, u64>>> {
    let nodes: std::collections::BTreeSet<&str> =
        units.iter().map(|(u, _)| u.node.as_str()).collect();
    let requests: Vec<ShardRequest> = nodes
        .iter()
        .map(|n| {
            query_req(
                &endpoint(server_id, n),
                0,
                Stmt::new(mv::TABLE_BYTES_SQL, vec![]),
            )
        })
        .collect();
    let mut out = std::collections::HashMap::new();
    for (node, answer) in nodes.iter().zip(remote::execute(requests)) {
        let rows = rows_of(answer).ok()?;
        let sizes = rows
            .into_iter()
            .filter_map(|r| match (r.first(), r.get(1)) {
                (Some(Value::Text(t)), Some(Value::Integer(b))) => Some((t.clone(), *b as u64)),
                _ => None,
            })
            .collect();
        out.insert(node.to_string(), sizes);
    }
    Some(out)
}

/// drain_node's first step: the node takes no more shards (new tables,
/// moves, rebalancing) and the rebalance that follows empties it.
#[pg_extern(name = "_drain_mark")]
fn drain_mark(server: &str, node_id: &str) {
    let server_id = conductor_server(server);
    let others = Spi::get_one_with_args::<i64>(
        "SELECT count(*) FROM conductor.node
          WHERE server_id = $1 AND node_id <> $2 AND status = 'active'",
        &[server_id.into(), node_id.into()],
    )
    .ok()
    .flatten()
    .unwrap_or(0);
    let updated = Spi::get_one_with_args::<String>(
        "UPDATE conductor.node SET status = 'disabled'
          WHERE server_id = $1 AND node_id = $2 RETURNING node_id",
        &[server_id.into(), node_id.into()],
    )
    .ok()
    .flatten();
    if updated.is_none() {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("node \"{node_id}\" does not exist in server \"{server}\""),
        )
        .error()
    }
    if others == 0 {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("node \"{node_id}\" is the only active node of server \"{server}\""),
        )
        .hint("Add a node with conductor.add_node() first.")
        .error()
    }
}
