//! Remote transactions: the writes of a Postgres transaction run on one Hrana
//! stream per node (a stream is one SQLite connection), opened with BEGIN
//! IMMEDIATE on
//! the first statement that needs it, committed at pre-commit (all nodes in
//! parallel) and rolled back on abort, as postgres_fdw does with its
//! connections. Subtransactions map to SQLite savepoints `s<level>`, created
//! lazily before the first statement that runs at a deeper level.
//!
//! There is no two-phase commit: if a node fails between two nodes'
//! COMMITs, one may be committed and the other not; the user then gets a
//! WARNING naming both sides (README, "Writes and transactions").

use crate::catalog::TableTopology;
use crate::errors::raise;
use crate::remote::{self, ShardRequest};
use conductor_core::client::{NodeEndpoint, NodeError, NodeRef};
use conductor_core::executor::ShardError;
use conductor_core::plan::ShardPlan;
use conductor_hrana::{
    Batch, BatchCond, BatchStep, PipelineReqBody, PipelineRespBody, Stmt, StmtResult,
    StreamRequest, StreamResponse, StreamResult,
};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

/// A node of a server: (server oid, node id).
pub type NodeKey = (u32, String);

/// Run a shard plan of `topology` in this transaction's remote
/// transactions: each node gets one request with its shards' statements,
/// all nodes in parallel. Returns every statement's result with its shard,
/// in plan order per node; a failure is raised as an ERROR naming node and
/// shard.
pub fn run_plan(topology: &TableTopology, plan: &ShardPlan) -> Vec<(u32, StmtResult)> {
    let token = crate::catalog::credentials::token_for(topology.server_id);
    let server = topology.server_id.to_u32();
    let mut shards: Vec<Vec<u32>> = Vec::new();
    let work: Vec<NodeWork> = plan
        .by_node(topology)
        .into_iter()
        .map(|node| {
            shards.push(node.statements.iter().map(|s| s.shard_id).collect());
            NodeWork {
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
    crate::stats::count_shard_requests(topology.relid, plan.shard_ids().into_iter());
    let mut out = Vec::with_capacity(plan.statements.len());
    for (result, shards) in run(work).into_iter().zip(shards) {
        let results = result.unwrap_or_else(|e| remote::report_shard_error(&e));
        out.extend(shards.into_iter().zip(results));
    }
    out
}

/// Statements for one node, each tagged with the table and shard it acts
/// on (for messages and the commit report).
pub struct NodeWork {
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

struct Stream {
    endpoint: NodeEndpoint,
    baton: Option<String>,
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
}

fn nest_level() -> i32 {
    // SAFETY: reads backend transaction state.
    unsafe { pg_sys::GetCurrentTransactionNestLevel() }
}

/// Whether this transaction has a stream open on the node.
pub fn has_stream(key: &NodeKey) -> bool {
    STREAMS.with(|s| s.borrow().contains_key(key))
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

fn lost_error(endpoint: &NodeEndpoint, why: &str) -> ShardError {
    ShardError::new(
        None,
        NodeError::Protocol {
            node: NodeRef::from(endpoint),
            message: format!("the transaction on this node was lost: {why}"),
        },
    )
}

/// Run each node's statements on its transaction stream, all nodes in
/// parallel; per node, the results of its statements in order, or the first
/// error (naming the shard whose statement failed). A failed statement has
/// no effect on the node; the caller raises an ERROR, and the transaction's
/// abort rolls the node back.
pub fn run(work: Vec<NodeWork>) -> Vec<Result<Vec<StmtResult>, ShardError>> {
    let level = nest_level();
    let mut requests = Vec::with_capacity(work.len());
    let mut prefixes = Vec::with_capacity(work.len());
    STREAMS.with(|streams| {
        let mut streams = streams.borrow_mut();
        for w in &work {
            let stream = streams.entry(w.key.clone()).or_insert_with(|| Stream {
                endpoint: w.endpoint.clone(),
                baton: None,
                level: 0,
                lost: None,
                touched: BTreeSet::new(),
            });
            if let Some(why) = &stream.lost {
                let why = why.clone();
                drop(streams);
                remote::report_shard_error(&lost_error(&w.endpoint, &why));
            }
            let mut stmts = Vec::with_capacity(w.stmts.len() + 2);
            if stream.level == 0 {
                // IMMEDIATE takes the node's write lock now: a transaction
                // that reads and then writes (UPDATE by row identity) cannot
                // lose another session's update, and writers queue instead
                // of failing at their first write.
                stmts.push(Stmt::new("BEGIN IMMEDIATE", vec![]));
            }
            for l in (stream.level.max(1) + 1)..=level {
                stmts.push(Stmt::new(format!("SAVEPOINT s{l}"), vec![]));
            }
            prefixes.push(stmts.len());
            stmts.extend(w.stmts.iter().map(|(_, s)| s.clone()));
            requests.push(ShardRequest {
                shard_id: w.stmts.first().map(|(l, _)| l.shard),
                endpoint: w.endpoint.clone(),
                body: PipelineReqBody {
                    baton: stream.baton.take(),
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
            stream.lost = Some("a request to it was interrupted".into());
        }
    });

    let results = remote::execute_raw(requests, true);

    STREAMS.with(|streams| {
        let mut streams = streams.borrow_mut();
        work.iter()
            .zip(results)
            .zip(prefixes)
            .map(|((w, result), prefix)| {
                let stream = streams.get_mut(&w.key).expect("registered above");
                let resp = match result {
                    Ok(resp) => resp,
                    Err(e) => {
                        stream.lost = Some(e.error.detail());
                        return Err(e);
                    }
                };
                let Some(baton) = resp.baton.clone() else {
                    let why = "the node closed the stream";
                    stream.lost = Some(why.into());
                    return Err(lost_error(&w.endpoint, why));
                };
                stream.baton = Some(baton);
                stream.lost = None;
                stream.level = level.max(1);
                batch_results(&resp, prefix, w)
            })
            .collect()
    })
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
        let shard = i.checked_sub(prefix).map(|j| work.stmts[j].0.shard);
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

/// Pre-commit: COMMIT every node's transaction, in parallel. If any node
/// fails, the Postgres transaction fails too; if others had already
/// committed, a WARNING names what was and was not committed.
pub fn commit_all() {
    let streams = STREAMS.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if streams.is_empty() {
        return;
    }
    let mut failed: Vec<(NodeKey, BTreeSet<ShardLabel>, String)> = Vec::new();
    let mut sent: Vec<(NodeKey, BTreeSet<ShardLabel>)> = Vec::new();
    let mut requests = Vec::new();
    for (key, stream) in streams {
        match (&stream.lost, &stream.baton) {
            (None, Some(baton)) => {
                requests.push(ShardRequest {
                    shard_id: None,
                    endpoint: stream.endpoint.clone(),
                    body: PipelineReqBody {
                        baton: Some(baton.clone()),
                        requests: vec![
                            StreamRequest::Execute {
                                stmt: Stmt::new("COMMIT", vec![]),
                            },
                            StreamRequest::Close,
                        ],
                    },
                });
                sent.push((key, stream.touched));
            }
            (why, _) => failed.push((
                key,
                stream.touched,
                why.clone().unwrap_or_else(|| "no stream".into()),
            )),
        }
    }
    // A cancel now could leave some nodes committed and others not: wait
    // for every answer (each request has its deadline).
    let results = remote::execute_raw(requests, false);
    let mut committed = Vec::new();
    // COMMIT was sent but no answer came back (the connection broke, the
    // deadline passed): the node may or may not have committed.
    let mut unknown: Vec<(NodeKey, BTreeSet<ShardLabel>, String)> = Vec::new();
    for ((key, touched), result) in sent.into_iter().zip(results) {
        match result {
            Ok(resp) => match conductor_core::client::first_error(&resp) {
                None => committed.push((key, touched)),
                Some(e) => failed.push((key, touched, e.message.clone())),
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
    raise(
        PgSqlErrorCode::ERRCODE_FDW_ERROR,
        "conductor: could not commit the transaction on every node",
    )
    .detail(outcome)
    .error()
}

/// Abort: roll every node back. Runs while the transaction ends, so it
/// never raises an error; a node that cannot be reached rolls back by
/// itself when the stream expires.
pub fn rollback_all() {
    let streams = STREAMS.with(|s| std::mem::take(&mut *s.borrow_mut()));
    let requests: Vec<ShardRequest> = streams
        .into_values()
        .filter(|s| s.lost.is_none())
        .filter_map(|s| {
            Some(ShardRequest {
                shard_id: None,
                body: PipelineReqBody {
                    baton: Some(s.baton?),
                    requests: vec![
                        StreamRequest::Execute {
                            stmt: Stmt::new("ROLLBACK", vec![]),
                        },
                        StreamRequest::Close,
                    ],
                },
                endpoint: s.endpoint,
            })
        })
        .collect();
    if !requests.is_empty() {
        remote::execute_raw(requests, false);
    }
}

/// Subtransaction `level` aborted: roll each node back to its savepoint.
pub fn rollback_to(level: i32) {
    let targets: Vec<(NodeKey, NodeEndpoint, String)> = STREAMS.with(|s| {
        s.borrow_mut()
            .iter_mut()
            .filter(|(_, st)| st.level >= level && st.lost.is_none())
            .filter_map(|(k, st)| Some((k.clone(), st.endpoint.clone(), st.baton.take()?)))
            .collect()
    });
    if targets.is_empty() {
        return;
    }
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
            match result {
                Ok(resp)
                    if resp.baton.is_some()
                        && conductor_core::client::first_error(&resp).is_none() =>
                {
                    stream.baton = resp.baton;
                    stream.level = level - 1;
                }
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
