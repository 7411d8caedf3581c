//! Remote transactions: the writes of a Postgres transaction run on one Hrana
//! stream per node (a stream is one SQLite connection), opened with BEGIN
//! IMMEDIATE on the first statement that needs it, committed at pre-commit
//! (all nodes in parallel, or in waves when virtual index entries must
//! commit before the rows they point at: `commit_before`) and rolled back
//! on abort, as postgres_fdw does with its connections. Subtransactions map to SQLite savepoints
//! `s<level>`, created lazily before the first statement that runs at a
//! deeper level.
//!
//! A transaction at REPEATABLE READ or SERIALIZABLE also reads through
//! these streams: the first read of a node opens a read transaction there
//! (`BEGIN`, deferred, whose first read pins a WAL snapshot) that lasts
//! until the Postgres transaction ends. A later write (or row lock) on that
//! node upgrades it to the node's write lock; if another writer committed
//! since the snapshot, SQLite refuses with SQLITE_BUSY_SNAPSHOT, raised as a
//! serialization failure (40001).
//!
//! While a transaction is open, the I/O side renews each stream so the node
//! does not expire it (`conductor_core::keepalive`); the backend and the
//! renewer share the stream's single-use baton through its keeper.
//!
//! There is no two-phase commit: if a node fails between two nodes'
//! COMMITs, one may be committed and the other not; the user then gets a
//! WARNING naming both sides (README, "Writes and transactions").

use crate::catalog::TableTopology;
use crate::errors::raise;
use crate::remote::{self, ShardRequest};
use conductor_core::client::{NodeEndpoint, NodeError, NodeRef};
use conductor_core::executor::ShardError;
use conductor_core::keepalive::{Lost, StreamKeeper};
use conductor_core::plan::ShardPlan;
use conductor_hrana::{
    Batch, BatchCond, BatchStep, PipelineReqBody, PipelineRespBody, Stmt, StmtResult,
    StreamRequest, StreamResponse, StreamResult,
};
use pgrx::pg_sys::submodules::ffi::pg_guard_ffi_boundary;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A node of a server: (server oid, node id).
pub type NodeKey = (u32, String);

/// Run a shard plan of `topology` in this transaction's remote
/// transactions: each node gets one request with its shards' statements,
/// all nodes in parallel. Returns every statement's result with its shard,
/// in plan order per node; a failure is raised as an ERROR naming node and
/// shard.
pub fn run_plan(
    topology: &TableTopology,
    plan: &ShardPlan,
    access: Access,
) -> Vec<(u32, StmtResult)> {
    let token = crate::catalog::credentials::token_for(topology.server_id);
    let server = topology.server_id.to_u32();
    let mut shards: Vec<Vec<u32>> = Vec::new();
    // A reference table's statements go to every copy when they write, in
    // this transaction's remote transaction on each node, so all copies
    // commit or none does (as far as the nodes' commits allow); a read
    // goes to the one copy the topology names.
    let by_node = plan.by_node(topology);
    let copies: Vec<conductor_core::plan::NodeStatements> =
        if topology.is_reference() && access == Access::Write {
            let statements: Vec<_> = by_node.into_iter().flat_map(|n| n.statements).collect();
            topology
                .replicas
                .iter()
                .map(|location| conductor_core::plan::NodeStatements {
                    location,
                    statements: statements.clone(),
                })
                .collect()
        } else {
            by_node
        };
    let first_copy = topology.is_reference() && access == Access::Write;
    if first_copy {
        REFERENCE_WRITTEN.with(|f| f.set(true));
    }
    let work: Vec<NodeWork> = copies
        .into_iter()
        .map(|node| {
            shards.push(node.statements.iter().map(|s| s.shard_id).collect());
            let lock_table = node
                .statements
                .first()
                .map(|s| topology.shards[s.shard_id as usize].remote_table.clone());
            NodeWork {
                access,
                lock_table,
                key: (server, node.location.node_id.clone()),
                endpoint: remote::endpoint(node.location, token.clone()),
                stmts: node
                    .statements
                    .into_iter()
                    .map(|s| {
                        (
                            ShardLabel {
                                table: topology.name.clone(),
                                shard: s.shard_id,
                            },
                            s.stmt.clone(),
                        )
                    })
                    .collect(),
            }
        })
        .collect();
    crate::stats::plan_sent(
        topology.relid,
        topology.shards.len(),
        &plan.shard_ids(),
        access == Access::Write,
    );
    let mut out = Vec::with_capacity(plan.statements.len());
    // A read in READ COMMITTED goes through this transaction's stream only
    // where it holds the node's write lock (to see its own writes there);
    // every other node is read in a transaction of its own, as a READ
    // COMMITTED statement outside a transaction is: it waits for no write
    // lock and pins no snapshot beyond the statement.
    // SAFETY: reads backend transaction state.
    let repeatable =
        unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as std::ffi::c_int;
    let (work, shards, outside): (Vec<NodeWork>, Vec<Vec<u32>>, Vec<(NodeWork, Vec<u32>)>) =
        if access == Access::Read && !repeatable {
            let (mine, outside): (Vec<_>, Vec<_>) = work
                .into_iter()
                .zip(shards)
                .partition(|(w, _)| holds_write(&w.key));
            let (work, shards) = mine.into_iter().unzip();
            (work, shards, outside)
        } else {
            (work, shards, Vec::new())
        };
    for (i, (result, shards)) in run(work).into_iter().zip(shards).enumerate() {
        let results = result.unwrap_or_else(|e| remote::report_shard_error(&e));
        // Every copy ran the same statements: one copy's results count.
        if !first_copy || i == 0 {
            out.extend(shards.into_iter().zip(results));
        }
    }
    if !outside.is_empty() {
        let mut requests = Vec::with_capacity(outside.len());
        let mut expect = Vec::with_capacity(outside.len());
        for (w, shards) in outside {
            expect.push((w.endpoint.clone(), shards));
            requests.push(ShardRequest {
                shard_id: w.stmts.first().map(|(l, _)| l.shard),
                endpoint: w.endpoint,
                body: conductor_core::client::one_request_transaction(
                    w.stmts.into_iter().map(|(_, s)| s).collect(),
                ),
            });
        }
        for (result, (endpoint, shards)) in remote::execute(requests).into_iter().zip(expect) {
            let resp = result.unwrap_or_else(|e| remote::report_shard_error(&e));
            // Step 0 is the BEGIN; the shards' statements follow it.
            let results = match resp.results.first() {
                Some(StreamResult::Ok {
                    response: StreamResponse::Batch { result },
                }) if result.step_results.len() > shards.len() => result.step_results
                    [1..=shards.len()]
                    .iter()
                    .cloned()
                    .collect::<Option<Vec<StmtResult>>>(),
                _ => None,
            };
            let Some(results) = results else {
                remote::report_shard_error(&ShardError::new(
                    shards.first().copied(),
                    NodeError::Protocol {
                        node: NodeRef::from(&endpoint),
                        message: "a read's batch result lacks a statement's result".into(),
                    },
                ))
            };
            out.extend(shards.into_iter().zip(results));
        }
    }
    for (shard, r) in &out {
        crate::stats::shard_rows(topology.relid, *shard, remote::result_rows(r));
    }
    out
}

/// Statements for one node, each tagged with the table and shard it acts
/// on (for messages and the commit report).
pub struct NodeWork {
    /// What the statements need of the node's transaction.
    pub access: Access,
    /// A table on the node, for upgrading a read transaction to a write
    /// transaction before the statements (None: they upgrade it themselves).
    pub lock_table: Option<String>,
    pub key: NodeKey,
    pub endpoint: NodeEndpoint,
    pub stmts: Vec<(ShardLabel, Stmt)>,
}

/// "table shard N", for messages.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ShardLabel {
    pub table: String,
    pub shard: u32,
}

/// What a statement needs of its node's remote transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// A snapshot: `BEGIN` (deferred), pinned by its first read.
    Read,
    /// The node's write lock: `BEGIN IMMEDIATE`, or a read transaction
    /// upgraded by its first write.
    Write,
}

struct Stream {
    endpoint: NodeEndpoint,
    /// The current baton, shared with the renewer (None until the node
    /// answered the first request).
    keeper: Option<Arc<StreamKeeper>>,
    /// What the node's transaction holds.
    access: Access,
    /// Deepest transaction nesting level with a savepoint on the node
    /// (1: just the top-level BEGIN).
    level: i32,
    /// Why the stream can no longer be used (a request was interrupted, the
    /// connection broke, the node closed it). Its transaction is gone: the
    /// node rolls it back when the stream expires.
    lost: Option<String>,
    touched: BTreeSet<ShardLabel>,
}

thread_local! {
    static STREAMS: RefCell<BTreeMap<NodeKey, Stream>> = const { RefCell::new(BTreeMap::new()) };
    /// Commit order this transaction must keep: (a, b) means node a's
    /// transaction commits before node b's (a holds virtual index entries of
    /// rows on b: docs/ARCHITECTURE.md, Virtual indexes).
    static ORDER: RefCell<BTreeSet<(NodeKey, NodeKey)>> = const { RefCell::new(BTreeSet::new()) };
    /// The transaction wrote a reference table: its copies must commit on
    /// every node or on none, so every node is asked first (commit_all).
    static REFERENCE_WRITTEN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether `to` is reachable from `from` over the recorded commit order.
fn reaches(order: &BTreeSet<(NodeKey, NodeKey)>, from: &NodeKey, to: &NodeKey) -> bool {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.clone()];
    while let Some(n) = todo.pop() {
        if &n == to {
            return true;
        }
        if seen.insert(n.clone()) {
            todo.extend(
                order
                    .iter()
                    .filter(|(a, _)| *a == n)
                    .map(|(_, b)| b.clone()),
            );
        }
    }
    false
}

/// Record that `first`'s transaction must commit before each of `then`.
/// An order that contradicts one recorded earlier cannot be kept (each node
/// commits once): the statement fails before it writes anything, as a
/// serialization failure the client may retry.
pub fn commit_before(first: &NodeKey, then: &BTreeSet<NodeKey>) {
    ORDER.with(|o| {
        let mut order = o.borrow_mut();
        for t in then {
            if t == first || order.contains(&(first.clone(), t.clone())) {
                continue;
            }
            if reaches(&order, t, first) {
                drop(order);
                raise(
                    PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
                    "conductor: this transaction's virtual index entries cannot be committed in a safe order",
                )
                .detail(format!(
                    "Node {} must commit before node {} (it holds index entries of rows there), and rows this transaction wrote earlier (in this statement or an earlier one) need the opposite order.",
                    first.1, t.1
                ))
                .hint("Retry the transaction; writing these rows in separate transactions (one row per transaction always works) avoids it.")
                .error()
            }
            order.insert((first.clone(), t.clone()));
        }
    })
}

/// The nodes grouped by commit wave: every node after all nodes it must
/// follow.
fn commit_waves(keys: &[NodeKey]) -> Vec<Vec<NodeKey>> {
    let order = ORDER.with(|o| std::mem::take(&mut *o.borrow_mut()));
    let mut wave: BTreeMap<NodeKey, usize> = keys.iter().map(|k| (k.clone(), 0)).collect();
    // The order is acyclic (commit_before refuses cycles): relaxing edges
    // as often as there are nodes settles every wave.
    for _ in 0..keys.len() {
        let mut changed = false;
        for (a, b) in &order {
            let (Some(&wa), Some(&wb)) = (wave.get(a), wave.get(b)) else {
                continue;
            };
            if wb <= wa {
                wave.insert(b.clone(), wa + 1);
                changed = true;
            }
        }
        if !changed {
            break;
        }
    }
    let mut out: Vec<Vec<NodeKey>> = Vec::new();
    for (k, w) in wave {
        if out.len() <= w {
            out.resize(w + 1, Vec::new());
        }
        out[w].push(k);
    }
    out
}

fn nest_level() -> i32 {
    // SAFETY: reads backend transaction state.
    unsafe { pg_sys::GetCurrentTransactionNestLevel() }
}

/// Whether this transaction has a stream open on the node.
pub fn has_stream(key: &NodeKey) -> bool {
    STREAMS.with(|s| s.borrow().contains_key(key))
}

/// Whether this transaction holds the node's write lock (its stream wrote
/// there or opened with BEGIN IMMEDIATE).
pub fn holds_write(key: &NodeKey) -> bool {
    STREAMS.with(|s| {
        s.borrow()
            .get(key)
            .is_some_and(|st| st.access == Access::Write && st.level > 0)
    })
}

/// Whether this transaction holds a remote transaction on any node.
pub fn any_open() -> bool {
    STREAMS.with(|s| !s.borrow().is_empty())
}

/// Steps that run in order, each only if the previous one succeeded.
fn chained(stmts: Vec<Stmt>) -> Batch {
    let steps = stmts
        .into_iter()
        .enumerate()
        .map(|(i, stmt)| BatchStep {
            stmt,
            condition: (i > 0).then(|| BatchCond::Ok { step: i as u32 - 1 }),
        })
        .collect();
    Batch { steps }
}

/// Whether two node URLs reach the same database: the catalog stores them
/// without a trailing `/`, which the client tolerates either way.
fn same_database(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

/// Two registered nodes (of two servers, or two node ids of one) at one
/// address are one SQLite database with one write lock. Each node key gets
/// its own remote transaction, so the second would wait for the first's
/// lock, held by this very transaction, until the node's busy timeout
/// failed it as "busy" (a retry can only fail the same way).
fn refuse_second_writer(key: &NodeKey, holder: &NodeKey, url: &str) -> ! {
    let name = |k: &NodeKey| format!("node \"{}\" of server \"{}\"", k.1, server_name(k.0));
    let message = format!(
        "conductor cannot write through {} in this transaction: \
         {} at the same address already holds its write lock",
        name(key),
        name(holder)
    );
    raise(PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED, message)
        .detail(format!(
            "Both are registered at {url}; a transaction writes a node through one node id only."
        ))
        .hint(
            "Write the tables of each node id in a transaction of its own, \
             or register the node once.",
        )
        .error()
}

fn server_name(server_id: u32) -> String {
    // SAFETY: the transaction holding streams of this server keeps its
    // foreign tables (and so the server) in use; missing_ok returns null
    // rather than raising for a server dropped in this transaction.
    unsafe {
        let server = pg_sys::GetForeignServerExtended(
            pg_sys::Oid::from(server_id),
            pg_sys::FSV_MISSING_OK as _,
        );
        if server.is_null() {
            return server_id.to_string();
        }
        std::ffi::CStr::from_ptr((*server).servername)
            .to_string_lossy()
            .into_owned()
    }
}

/// Why a stream whose request was given up before its answer is lost: the
/// node runs the request anyway and, its client gone, rolls the whole
/// transaction back.
const INTERRUPTED: &str =
    "a request to it was interrupted (a cancel or statement_timeout while the node ran it)";

fn lost_error(endpoint: &NodeEndpoint, why: &str) -> ShardError {
    ShardError::new(
        None,
        NodeError::Protocol {
            node: NodeRef::from(endpoint),
            message: format!("the transaction on this node was lost: {why}"),
        },
    )
}

/// Run each node's statements on its transaction stream; per node, the
/// results of its statements in order, or the first error (naming the shard
/// whose statement failed). A failed statement has no effect on the node;
/// the caller raises an ERROR, and the transaction's abort rolls the node
/// back.
///
/// Nodes whose write lock this transaction already holds, and reads, go
/// out all at once. Write locks it must still take are taken one node after
/// the other, in the order of the nodes' keys, the first of them together
/// with the rest: a statement waits for a node's lock only while it holds
/// no lock it took after that node's in the order. Two statements that
/// each need the same nodes' locks (an UPDATE of rows on two nodes from two
/// sessions) then queue on the first node instead of each taking one node
/// and waiting for the other until the busy timeout fails them both. Once
/// a node fails, the nodes after it are not sent their statements; they
/// report the same error.
pub fn run(work: Vec<NodeWork>) -> Vec<Result<Vec<StmtResult>, ShardError>> {
    let taking = |work: &[NodeWork]| -> Vec<usize> {
        let mut taking: Vec<usize> = (0..work.len())
            .filter(|&i| work[i].access == Access::Write && !holds_write(&work[i].key))
            .collect();
        taking.sort_by(|&a, &b| work[a].key.cmp(&work[b].key));
        taking
    };
    if let Some(limit) = remote::lock_wait_limit() {
        // Postgres' lock_timeout (or a row lock's NOWAIT or SKIP LOCKED)
        // bounds each wait for a node's write lock:
        // the lock is taken by a request that does nothing else (BEGIN
        // IMMEDIATE), so the wait can be given up without giving up a
        // statement the node may have run. A read transaction's upgrade
        // never waits (SQLite refuses it at once when the lock is taken).
        let mut skipped = Vec::new();
        for i in taking(&work) {
            let w = &work[i];
            if STREAMS.with(|s| s.borrow().get(&w.key).is_some_and(|st| st.level > 0)) {
                continue;
            }
            let lock = NodeWork {
                access: Access::Write,
                lock_table: None,
                key: w.key.clone(),
                endpoint: w.endpoint.clone(),
                stmts: Vec::new(),
            };
            let taken = if remote::skipping_locked() {
                match remote::unless_lock_held(limit, &w.key.1, || run_together(vec![lock])) {
                    Some(taken) => taken,
                    None => {
                        // SKIP LOCKED: another transaction holds the node's
                        // lock, so its rows are left out. The given-up
                        // request is the stream's only one (it holds no
                        // transaction of ours): forgetting the stream
                        // leaves the node as if never asked.
                        STREAMS.with(|s| s.borrow_mut().remove(&w.key));
                        skipped.push(i);
                        continue;
                    }
                }
            } else {
                remote::within_lock_timeout(limit, &w.key.1, || run_together(vec![lock]))
            };
            if let Some(Err(e)) = taken.into_iter().next() {
                return work.iter().map(|_| Err(e.clone())).collect();
            }
        }
        if !skipped.is_empty() {
            return skipping(work, &skipped);
        }
    }
    let taking = taking(&work);
    if taking.len() < 2 {
        return run_together(work);
    }
    // Round 0: everything that waits for no lock, and the first lock.
    let mut round_of = vec![0usize; work.len()];
    for (round, &i) in taking.iter().enumerate() {
        round_of[i] = round;
    }
    let rounds = taking.len();
    let mut items: Vec<Option<NodeWork>> = work.into_iter().map(Some).collect();
    let mut out: Vec<Option<Result<Vec<StmtResult>, ShardError>>> =
        (0..items.len()).map(|_| None).collect();
    let mut failure: Option<ShardError> = None;
    for round in 0..rounds {
        let indices: Vec<usize> = (0..items.len()).filter(|&i| round_of[i] == round).collect();
        let batch: Vec<NodeWork> = indices
            .iter()
            .map(|&i| items[i].take().expect("each item runs once"))
            .collect();
        for (i, result) in indices.into_iter().zip(run_together(batch)) {
            if let Err(e) = &result {
                failure.get_or_insert_with(|| e.clone());
            }
            out[i] = Some(result);
        }
        if failure.is_some() {
            break;
        }
    }
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(failure.clone().expect("a round failed before this one"))))
        .collect()
}

/// [`run`] for nodes that may all be sent their statements at once.
fn run_together(work: Vec<NodeWork>) -> Vec<Result<Vec<StmtResult>, ShardError>> {
    let level = nest_level();
    let idle_limit = crate::gucs::remote_xact_idle_timeout();
    let mut requests = Vec::with_capacity(work.len());
    let mut prefixes = Vec::with_capacity(work.len());
    let mut began = Vec::with_capacity(work.len());
    STREAMS.with(|streams| {
        let mut streams = streams.borrow_mut();
        // First every node's state: a lost one fails the statement before
        // any baton is taken out.
        for w in &work {
            let writes_anew = w.access == Access::Write
                && streams.get(&w.key).is_none_or(|s| s.access == Access::Read);
            if writes_anew {
                let twin = streams
                    .iter()
                    .find(|(k, s)| {
                        **k != w.key
                            && s.access == Access::Write
                            && s.lost.is_none()
                            && same_database(&s.endpoint.url, &w.endpoint.url)
                    })
                    .map(|(k, _)| k.clone());
                if let Some(twin) = twin {
                    drop(streams);
                    refuse_second_writer(&w.key, &twin, &w.endpoint.url);
                }
            }
            let stream = streams.entry(w.key.clone()).or_insert_with(|| Stream {
                endpoint: w.endpoint.clone(),
                keeper: None,
                access: w.access,
                level: 0,
                lost: None,
                touched: BTreeSet::new(),
            });
            if stream.lost.is_none() {
                if let Some(lost) = stream.keeper.as_ref().and_then(|k| k.lost()) {
                    stream.lost = Some(lost.to_string());
                }
            }
            if let Some(why) = &stream.lost {
                let why = why.clone();
                let idle = stream
                    .keeper
                    .as_ref()
                    .and_then(|k| k.lost())
                    .filter(|l| matches!(l, Lost::Idle(_)));
                drop(streams);
                if let Some(Lost::Idle(limit)) = idle {
                    report_idle(&w.key.1, limit);
                }
                report_lost(&w.key.1, &why);
            }
        }
        for (i, w) in work.iter().enumerate() {
            let stream = streams.get_mut(&w.key).expect("registered above");
            let baton = match &stream.keeper {
                None => None,
                Some(k) => match k.checkout() {
                    Ok(b) => Some(b),
                    Err(lost) => {
                        // Lost just now (a renewal failed): hand the batons
                        // taken for the nodes before back, unused.
                        stream.lost = Some(lost.to_string());
                        for (earlier, req) in work[..i].iter().zip(&mut requests) {
                            let req: &mut ShardRequest = req;
                            let st = streams.get_mut(&earlier.key).expect("registered above");
                            if let Some(k) = &st.keeper {
                                k.checkin(req.body.baton.take(), idle_limit);
                            }
                            st.lost = None;
                        }
                        drop(streams);
                        if let Lost::Idle(limit) = lost {
                            report_idle(&w.key.1, limit);
                        }
                        report_lost(&w.key.1, &lost.to_string());
                    }
                },
            };
            let mut stmts = Vec::with_capacity(w.stmts.len() + 2);
            if stream.level == 0 {
                stmts.push(Stmt::new(
                    match w.access {
                        // IMMEDIATE takes the node's write lock now: a
                        // transaction that reads and then writes (UPDATE by
                        // row identity, FOR UPDATE) cannot lose another
                        // session's update, and writers queue instead of
                        // failing at their first write.
                        Access::Write => "BEGIN IMMEDIATE",
                        // Deferred: the first read pins a snapshot.
                        Access::Read => "BEGIN",
                    },
                    vec![],
                ));
                stream.access = w.access;
            } else if w.access == Access::Write && stream.access == Access::Read {
                // Upgrade the read transaction to the write lock before
                // anything else: a write statement that matches nothing still
                // takes it, and fails with SQLITE_BUSY_SNAPSHOT if another
                // writer committed since this transaction's snapshot.
                if let Some(table) = &w.lock_table {
                    stmts.push(Stmt::new(
                        format!(
                            "DELETE FROM {} WHERE 0",
                            conductor_core::remote_sql::quote_ident(table)
                        ),
                        vec![],
                    ));
                }
            }
            began.push(stream.level == 0);
            for l in (stream.level.max(1) + 1)..=level {
                stmts.push(Stmt::new(format!("SAVEPOINT s{l}"), vec![]));
            }
            prefixes.push(stmts.len());
            stmts.extend(w.stmts.iter().map(|(_, s)| s.clone()));
            requests.push(ShardRequest {
                shard_id: w.stmts.first().map(|(l, _)| l.shard),
                endpoint: w.endpoint.clone(),
                body: PipelineReqBody {
                    baton,
                    requests: vec![StreamRequest::Batch {
                        batch: chained(stmts),
                    }],
                },
            });
            stream
                .touched
                .extend(w.stmts.iter().map(|(l, _)| l.clone()));
            // Until the answer arrives the stream is in doubt: a cancel now
            // leaves it lost, and the transaction must not commit.
            stream.lost = Some(INTERRUPTED.into());
        }
    });

    let results = remote::execute_raw(requests, true);

    STREAMS.with(|streams| {
        let mut streams = streams.borrow_mut();
        work.iter()
            .zip(results)
            .zip(prefixes)
            .zip(began)
            .map(|(((w, result), prefix), began)| {
                let stream = streams.get_mut(&w.key).expect("registered above");
                let baton = result.as_ref().ok().and_then(|r| r.baton.clone());
                match &stream.keeper {
                    Some(k) => k.checkin(baton.clone(), idle_limit),
                    None => {
                        if let Some(b) = &baton {
                            let keeper = Arc::new(StreamKeeper::new(b.clone(), idle_limit));
                            remote::keep_alive(stream.endpoint.clone(), keeper.clone());
                            stream.keeper = Some(keeper);
                        }
                    }
                }
                let resp = match result {
                    Ok(resp) => resp,
                    Err(e) => {
                        stream.lost = Some(e.error.detail());
                        return Err(e);
                    }
                };
                if baton.is_none() {
                    let why = "the node closed the stream";
                    stream.lost = Some(why.into());
                    return Err(lost_error(&w.endpoint, why));
                }
                stream.lost = None;
                let results = batch_results(&resp, prefix, w);
                if began && failed_step(&resp) == Some(0) {
                    // BEGIN itself failed (the node's write lock stayed
                    // taken): no transaction is open on the node; the next
                    // statement begins again.
                    return results;
                }
                stream.level = level.max(1);
                if results.is_ok() {
                    stream.access = stream.access.max(w.access);
                }
                results
            })
            .collect()
    })
}

/// `work` without the items at `skipped` (nodes whose lock another
/// transaction holds, under SKIP LOCKED), which get empty results.
fn skipping(work: Vec<NodeWork>, skipped: &[usize]) -> Vec<Result<Vec<StmtResult>, ShardError>> {
    let empty: Vec<Option<Vec<StmtResult>>> = work
        .iter()
        .enumerate()
        .map(|(i, w)| {
            skipped
                .contains(&i)
                .then(|| vec![StmtResult::default(); w.stmts.len()])
        })
        .collect();
    let rest: Vec<NodeWork> = work
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !skipped.contains(i))
        .map(|(_, w)| w)
        .collect();
    let mut ran = run(rest).into_iter();
    empty
        .into_iter()
        .map(|e| match e {
            Some(empty) => Ok(empty),
            None => ran.next().expect("one result per item run"),
        })
        .collect()
}

/// The index of the first failed step of a node's batch.
fn failed_step(resp: &PipelineRespBody) -> Option<usize> {
    match resp.results.first() {
        Some(StreamResult::Ok {
            response: StreamResponse::Batch { result },
        }) => result.step_errors.iter().position(|e| e.is_some()),
        _ => None,
    }
}

/// A node's transaction is gone (a request to it was interrupted, a renewal
/// failed): it took this transaction's work on that node with it, so the
/// transaction can only roll back. Raised by its next statement on that
/// node and by its COMMIT alike, whichever comes first.
fn report_lost(node: &str, why: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_FDW_ERROR,
        format!("conductor: the transaction on node {node} was lost: {why}"),
    )
    .detail(
        "Nothing of this transaction was committed on any node, and nothing of it can be \
         (ROLLBACK TO SAVEPOINT does not bring back what the node rolled back).",
    )
    .hint("Roll back the transaction and retry it.")
    .error()
}

/// The transaction's remote transaction on `node` went without a statement
/// for longer than `conductor.remote_transaction_idle_timeout` and was
/// rolled back there.
fn report_idle(node: &str, limit: std::time::Duration) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
        format!(
            "conductor: the remote transaction on node {node} was rolled back after {} ms without a statement",
            limit.as_millis()
        ),
    )
    .detail("conductor.remote_transaction_idle_timeout bounds how long a transaction may keep a node's transaction open without sending it a statement; nothing of this transaction will be committed.")
    .hint("Roll back and retry; raise conductor.remote_transaction_idle_timeout (0 disables it) for transactions that pause longer.")
    .error()
}

/// The results of a node's statements (after the BEGIN/SAVEPOINT prefix),
/// or the error of the first failed step.
fn batch_results(
    resp: &PipelineRespBody,
    prefix: usize,
    work: &NodeWork,
) -> Result<Vec<StmtResult>, ShardError> {
    let node = NodeRef::from(&work.endpoint);
    let protocol = |message: &str| {
        ShardError::new(
            None,
            NodeError::Protocol {
                node: node.clone(),
                message: message.to_string(),
            },
        )
    };
    let result = match resp.results.first() {
        Some(StreamResult::Ok {
            response: StreamResponse::Batch { result },
        }) => result,
        Some(StreamResult::Error { error }) => {
            return Err(ShardError::new(
                None,
                NodeError::Sql {
                    node,
                    message: error.message.clone(),
                    code: error.code.clone(),
                },
            ))
        }
        _ => return Err(protocol("expected a batch result")),
    };
    if let Some((i, e)) = result
        .step_errors
        .iter()
        .enumerate()
        .find_map(|(i, e)| e.as_ref().map(|e| (i, e)))
    {
        // A failed prefix step (BEGIN, the upgrade to the write lock) is
        // reported on the node's first shard.
        let shard = i
            .checked_sub(prefix)
            .map(|j| work.stmts[j].0.shard)
            .or_else(|| work.stmts.first().map(|(l, _)| l.shard));
        return Err(ShardError::new(
            shard,
            NodeError::Sql {
                node,
                message: e.message.clone(),
                code: e.code.clone(),
            },
        ));
    }
    let wanted = prefix + work.stmts.len();
    if result.step_results.len() != wanted {
        return Err(protocol("batch result has the wrong number of steps"));
    }
    result.step_results[prefix..]
        .iter()
        .map(|r| {
            r.clone()
                .ok_or_else(|| protocol("a batch step was skipped"))
        })
        .collect()
}

fn describe(labels: &BTreeSet<ShardLabel>) -> String {
    let mut by_table: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for l in labels {
        by_table
            .entry(l.table.as_str())
            .or_default()
            .push(l.shard.to_string());
    }
    by_table
        .into_iter()
        .map(|(t, shards)| format!("{t} shards {}", shards.join(", ")))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A SERIALIZABLE transaction that wrote local tables can still fail
/// Postgres' commit-time check (40001, "canceled on identification as a
/// pivot, during commit attempt"), which CommitTransaction runs after this
/// callback, when the nodes would have committed already. Run it now, as
/// PREPARE TRANSACTION does: once it passes, the transaction counts as
/// prepared for the other serializable transactions, which then fail
/// themselves rather than this one, so the check run again at the commit
/// passes.
fn check_serializable() {
    extern "C-unwind" {
        // storage/predicate.h of the backend.
        fn PreCommit_CheckForSerializationFailure();
    }
    // SAFETY: called while the transaction commits, where CommitTransaction
    // calls it too; it returns at once outside SERIALIZABLE, and raises an
    // ERROR (the transaction then aborts, and so do the nodes') otherwise.
    unsafe { pg_guard_ffi_boundary(|| PreCommit_CheckForSerializationFailure()) }
}

/// Pre-commit: COMMIT every node's transaction, in parallel. If any node
/// fails, the Postgres transaction fails too; if others had already
/// committed, a WARNING names what was and was not committed.
pub fn commit_all() {
    // A node whose transaction is already gone (rolled back after the idle
    // limit, a renewal that failed) fails the whole transaction before any
    // node commits: the streams stay registered and the abort rolls every
    // node back. A node this transaction only read (a snapshot, ended
    // rather than committed) lost nothing that COMMIT needs, unless the
    // idle limit, which promises that nothing commits, ended it.
    let lost = STREAMS.with(|s| {
        s.borrow().iter().find_map(|((_, node), st)| {
            let keeper_lost = st.keeper.as_ref().and_then(|k| k.lost());
            match (&st.lost, keeper_lost) {
                (_, Some(Lost::Idle(limit))) => Some((node.clone(), Err(limit))),
                _ if st.access == Access::Read => None,
                (Some(why), _) => Some((node.clone(), Ok(why.clone()))),
                (None, Some(l)) => Some((node.clone(), Ok(l.to_string()))),
                (None, None) => None,
            }
        })
    });
    match lost {
        None => {}
        Some((node, Err(limit))) => report_idle(&node, limit),
        Some((node, Ok(why))) => report_lost(&node, &why),
    }
    if REFERENCE_WRITTEN.with(|f| f.replace(false)) {
        check_writers_alive();
    }
    if any_open() {
        check_serializable();
    }
    let streams = STREAMS.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if streams.is_empty() {
        ORDER.with(|o| o.borrow_mut().clear());
        return;
    }
    let mut failed: Vec<(NodeKey, BTreeSet<ShardLabel>, String)> = Vec::new();
    let mut sent: Vec<(NodeKey, BTreeSet<ShardLabel>)> = Vec::new();
    let mut requests = Vec::new();
    // Read-only transactions (a snapshot) are ended, not committed: their
    // outcome changes nothing. So are streams without a transaction.
    let mut read_only = Vec::new();
    for (key, stream) in streams {
        let baton = match &stream.keeper {
            Some(k) => k.finish().map_err(|l| l.to_string()),
            None => Err("no stream".into()),
        };
        // Level 0: the stream's BEGIN failed (the node's write lock stayed
        // taken, and a savepoint caught the error), so no transaction is
        // open there and there is nothing to commit; COMMIT would fail.
        if stream.access == Access::Read || stream.level == 0 {
            if let Ok(baton) = baton {
                read_only.push(end_request(&stream.endpoint, baton, "ROLLBACK"));
            }
            continue;
        }
        match (&stream.lost, baton) {
            (None, Ok(baton)) => {
                requests.push(end_request(&stream.endpoint, baton, "COMMIT"));
                sent.push((key, stream.touched));
            }
            (Some(why), _) => failed.push((key, stream.touched, why.clone())),
            (None, Err(why)) => failed.push((key, stream.touched, why)),
        }
    }
    // Nodes commit in waves when virtual index entries must be durable
    // before the rows they point at; after a failed wave nothing later
    // commits (its rows would have no entries), it is rolled back.
    let keys: Vec<NodeKey> = sent.iter().map(|(k, _)| k.clone()).collect();
    let waves = commit_waves(&keys);
    let mut pending: BTreeMap<NodeKey, (ShardRequest, BTreeSet<ShardLabel>)> = sent
        .into_iter()
        .zip(requests)
        .map(|((k, t), r)| (k, (r, t)))
        .collect();
    let mut sent = Vec::new();
    let mut results = Vec::new();
    let mut stop = false;
    for wave in waves {
        let mut reqs = Vec::new();
        for k in wave {
            let Some((req, touched)) = pending.remove(&k) else {
                continue;
            };
            if stop {
                let mut rollback = req;
                if let Some(StreamRequest::Execute { stmt }) = rollback.body.requests.first_mut() {
                    *stmt = Stmt::new("ROLLBACK", vec![]);
                }
                remote::execute_raw(vec![rollback], false);
                failed.push((
                    k,
                    touched,
                    "not committed: a node holding virtual index entries of its rows failed to commit first".into(),
                ));
                continue;
            }
            reqs.push(req);
            sent.push((k, touched));
        }
        if reqs.is_empty() {
            continue;
        }
        // A cancel now could leave some nodes committed and others not: wait
        // for every answer (each request has its deadline).
        let wave_results = remote::execute_raw(reqs, false);
        stop = wave_results
            .iter()
            .any(|r| !matches!(r, Ok(resp) if conductor_core::client::first_error(resp).is_none()));
        results.extend(wave_results);
    }
    if !read_only.is_empty() {
        remote::execute_raw(read_only, false);
    }
    let mut committed = Vec::new();
    // COMMIT was sent but no answer came back (the connection broke, the
    // deadline passed): the node may or may not have committed.
    let mut unknown: Vec<(NodeKey, BTreeSet<ShardLabel>, String)> = Vec::new();
    // COMMITs refused because the node had rolled the transaction back to
    // give its write lock to another writer.
    let mut lock_taken = 0;
    for ((key, touched), result) in sent.into_iter().zip(results) {
        match result {
            Ok(resp) => match conductor_core::client::first_error(&resp) {
                None => committed.push((key, touched)),
                Some(e) => {
                    lock_taken +=
                        usize::from(e.code.as_deref() == Some(remote::TRANSACTION_TIMEOUT));
                    failed.push((key, touched, e.message.clone()))
                }
            },
            Err(e) => match e.error {
                NodeError::Connect { .. } | NodeError::Http { .. } | NodeError::Sql { .. } => {
                    failed.push((key, touched, e.error.detail()))
                }
                _ => unknown.push((key, touched, e.error.detail())),
            },
        }
    }
    if failed.is_empty() && unknown.is_empty() {
        return;
    }
    let list = |items: &[(NodeKey, BTreeSet<ShardLabel>)]| {
        items
            .iter()
            .map(|((_, node), t)| format!("node {node} ({})", describe(t)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let with_reasons = |items: &[(NodeKey, BTreeSet<ShardLabel>, String)]| {
        items
            .iter()
            .map(|((_, node), t, why)| format!("node {node} ({}): {why}", describe(t)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut outcome = Vec::new();
    if !failed.is_empty() {
        outcome.push(format!("Not committed: {}.", with_reasons(&failed)));
    }
    if !unknown.is_empty() {
        outcome.push(format!(
            "Outcome unknown (the node may have committed before its answer was lost): {}.",
            with_reasons(&unknown)
        ));
    }
    let outcome = outcome.join(" ");
    if !committed.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_WARNING,
            "conductor: the transaction was committed on some nodes only",
        )
        .detail(format!("Committed: {}. {outcome}", list(&committed)))
        .warning();
    }
    if committed.is_empty() && unknown.is_empty() && lock_taken == failed.len() {
        // Nothing committed anywhere, and only because of the lock: the
        // transaction can simply be retried.
        raise(
            PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
            "conductor: could not commit the transaction: a node rolled it back while another transaction waited for its write lock",
        )
        .detail(format!("Nothing was committed. {outcome}"))
        .hint(remote::LOCK_TIMEOUT_HINT)
        .error()
    }
    raise(
        PgSqlErrorCode::ERRCODE_FDW_ERROR,
        "conductor: could not commit the transaction on every node",
    )
    .detail(outcome)
    .error()
}

/// Before the COMMITs of a transaction that wrote a reference table: one
/// round trip on every node's write transaction, so that a node that
/// stopped answering fails the transaction while no node has committed
/// (the copies then stay equal). A node that fails between this answer
/// and its COMMIT is the window no protocol without two-phase commit
/// closes; the WARNING of commit_all names it.
fn check_writers_alive() {
    let probes: Vec<NodeWork> = STREAMS.with(|s| {
        s.borrow()
            .iter()
            .filter(|(_, st)| st.access == Access::Write && st.lost.is_none())
            .map(|(key, st)| NodeWork {
                access: Access::Write,
                lock_table: None,
                key: key.clone(),
                endpoint: st.endpoint.clone(),
                stmts: vec![(
                    ShardLabel {
                        table: "a reference table's copy".into(),
                        shard: 0,
                    },
                    Stmt::new("SELECT 1", vec![]),
                )],
            })
            .collect()
    });
    if probes.len() < 2 {
        return;
    }
    for result in run(probes) {
        if let Err(e) = result {
            raise(
                PgSqlErrorCode::ERRCODE_FDW_ERROR,
                format!(
                    "conductor: node {} did not answer before COMMIT",
                    e.node_id
                ),
            )
            .detail(format!(
                "The transaction wrote a reference table, whose copies commit on every node or none; nothing was committed on any node. {e}"
            ))
            .error()
        }
    }
}

/// Abort: roll every node back. Runs while the transaction ends, so it
/// never raises an error; a node that cannot be reached rolls back by
/// itself when the stream expires.
pub fn rollback_all() {
    ORDER.with(|o| o.borrow_mut().clear());
    REFERENCE_WRITTEN.with(|f| f.set(false));
    let streams = STREAMS.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let requests: Vec<ShardRequest> = streams
        .into_values()
        .filter_map(|s| {
            // finish() also stops the renewer. A stream the backend gave up
            // on (past the idle limit) still has its baton: roll it back
            // now rather than leave its locks to the node's expiry.
            let baton = s.keeper.as_ref()?.finish().ok()?;
            Some(end_request(&s.endpoint, baton, "ROLLBACK"))
        })
        .collect();
    if !requests.is_empty() {
        remote::execute_raw(requests, false);
    }
}

/// `statement` (COMMIT or ROLLBACK) and close, on a stream.
fn end_request(endpoint: &NodeEndpoint, baton: String, statement: &str) -> ShardRequest {
    ShardRequest {
        shard_id: None,
        endpoint: endpoint.clone(),
        body: PipelineReqBody {
            baton: Some(baton),
            requests: vec![
                StreamRequest::Execute {
                    stmt: Stmt::new(statement, vec![]),
                },
                StreamRequest::Close,
            ],
        },
    }
}

/// Subtransaction `level` aborted: roll each node back to its savepoint.
pub fn rollback_to(level: i32) {
    // A stream whose first request was given up before any answer (a
    // cancel, lock_timeout) holds nothing of this transaction that can
    // commit: the node rolls back what that request began once it has run
    // (its client gone), or when the stream expires. Forget it, so that the
    // transaction can go on and commit, as Postgres' does after ROLLBACK TO.
    STREAMS.with(|s| {
        s.borrow_mut()
            .retain(|_, st| st.keeper.is_some() || st.level > 0)
    });
    let targets: Vec<(NodeKey, NodeEndpoint, String)> = STREAMS.with(|s| {
        s.borrow_mut()
            .iter_mut()
            .filter(|(_, st)| st.level >= level && st.lost.is_none())
            .filter_map(|(k, st)| match st.keeper.as_ref()?.checkout() {
                Ok(baton) => Some((k.clone(), st.endpoint.clone(), baton)),
                Err(lost) => {
                    st.lost = Some(lost.to_string());
                    None
                }
            })
            .collect()
    });
    let requests = targets
        .iter()
        .map(|(_, endpoint, baton)| ShardRequest {
            shard_id: None,
            endpoint: endpoint.clone(),
            body: PipelineReqBody {
                baton: Some(baton.clone()),
                requests: vec![StreamRequest::Batch {
                    batch: chained(vec![
                        Stmt::new(format!("ROLLBACK TO SAVEPOINT s{level}"), vec![]),
                        Stmt::new(format!("RELEASE SAVEPOINT s{level}"), vec![]),
                    ]),
                }],
            },
        })
        .collect();
    let results = remote::execute_raw(requests, false);
    STREAMS.with(|s| {
        let mut streams = s.borrow_mut();
        for ((key, _, _), result) in targets.into_iter().zip(results) {
            let Some(stream) = streams.get_mut(&key) else {
                continue;
            };
            let ok = matches!(&result, Ok(resp) if resp.baton.is_some()
                && conductor_core::client::first_error(resp).is_none());
            let baton = result.as_ref().ok().and_then(|r| r.baton.clone());
            if let Some(k) = &stream.keeper {
                k.checkin(baton, crate::gucs::remote_xact_idle_timeout());
            }
            match result {
                _ if ok => stream.level = level - 1,
                Ok(resp) => {
                    stream.lost = Some(
                        conductor_core::client::first_error(&resp)
                            .map(|e| format!("rolling back to a savepoint failed: {}", e.message))
                            .unwrap_or_else(|| "the node closed the stream".into()),
                    )
                }
                Err(e) => stream.lost = Some(e.error.detail()),
            }
        }
    });
}

/// Subtransaction `level` committed: its savepoints now belong to the
/// parent. They are not released on the node (one round trip saved); a
/// later savepoint of the same name shadows them, which keeps ROLLBACK TO
/// correct.
pub fn release(level: i32) {
    STREAMS.with(|s| {
        for stream in s.borrow_mut().values_mut() {
            if stream.level >= level {
                stream.level = level - 1;
            }
        }
    });
}

/// PREPARE TRANSACTION cannot include node writes (no two-phase commit).
pub fn refuse_prepare() {
    if STREAMS.with(|s| !s.borrow().is_empty()) {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "cannot PREPARE a transaction that has used conductor nodes",
        )
        .error()
    }
}
