//! Direct modify: an UPDATE or DELETE whose WHERE clause went to the nodes
//! whole, and whose new values do not depend on the row, runs as one
//! statement per target shard (routed like a scan) without fetching rows.
//! Anything else (a local filter, `SET x = x + 1`, RETURNING, row triggers)
//! takes the row-by-row path in `modify.rs`.

use crate::catalog::{cache, TableTopology};
use crate::convert::ColumnCodec;
use crate::errors::raise;
use crate::fdw::scan::{eval_bindings, explain_text, init_params, shard_key, ScanPlan};
use crate::parse::ParamSpec;
use crate::remote;
use crate::stats;
use crate::xact::streams::{self, NodeWork, ShardLabel};
use conductor_core::predicate::{deparse, deparse_template, Pred};
use conductor_core::remote_sql::{delete_sql, update_sql};
use conductor_core::router::route;
use conductor_hrana::{Stmt, Value};
use pgrx::prelude::*;
use pgrx::{PgList, PgMemoryContexts, PgSqlErrorCode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::rc::Rc;

#[derive(Debug, Serialize, Deserialize)]
struct DirectPlan {
    update: bool,
    pushed: Vec<Pred>,
    /// The WHERE clause's runtime parameters: the first fdw_exprs.
    params: Vec<ParamSpec>,
    /// UPDATE: the columns assigned; their new values are the remaining
    /// fdw_exprs, in this order.
    set: Vec<i16>,
}

fn is(node: *const pg_sys::Node, tag: pg_sys::NodeTag) -> bool {
    // SAFETY: a valid node pointer or null.
    !node.is_null() && unsafe { (*node).type_ } == tag
}

/// A SET value the node can receive as an argument: evaluated once per
/// statement by Postgres, not depending on the row being changed.
unsafe fn row_independent(expr: *mut pg_sys::Node, result_relation: i32) -> bool {
    // SAFETY: planner expression trees.
    unsafe {
        if pg_sys::contain_volatile_functions(expr) || pg_sys::contain_subplans(expr) {
            return false;
        }
        let flags = pg_sys::PVC_RECURSE_AGGREGATES
            | pg_sys::PVC_RECURSE_WINDOWFUNCS
            | pg_sys::PVC_INCLUDE_PLACEHOLDERS;
        PgList::<pg_sys::Node>::from_pg(pg_sys::pull_var_clause(expr, flags as i32))
            .iter_ptr()
            .all(|v| {
                is(v, pg_sys::NodeTag::T_Var) && (*(v as *mut pg_sys::Var)).varno != result_relation
            })
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn plan_direct_modify(
    root: *mut pg_sys::PlannerInfo,
    plan: *mut pg_sys::ModifyTable,
    result_relation: pg_sys::Index,
    _subplan_index: i32,
) -> bool {
    // SAFETY: planner structures valid for the callback; lists are built in
    // the planner's memory context.
    unsafe {
        let operation = (*plan).operation;
        let update = match operation {
            pg_sys::CmdType::CMD_UPDATE => true,
            pg_sys::CmdType::CMD_DELETE => false,
            _ => return false,
        };
        if !(*plan).returningLists.is_null() {
            return false;
        }
        let subplan = (*plan).plan.lefttree as *mut pg_sys::Node;
        if !is(subplan, pg_sys::NodeTag::T_ForeignScan) {
            return false;
        }
        let fscan = subplan as *mut pg_sys::ForeignScan;
        if (*fscan).scan.scanrelid != result_relation || !(*fscan).scan.plan.qual.is_null() {
            return false;
        }
        let relid = (**(*root).simple_rte_array.add(result_relation as usize)).relid;
        if has_row_triggers(relid, update) {
            return false;
        }
        let topology = cache::table(relid);
        let scan: ScanPlan = super::private_to((*fscan).fdw_private);
        let mut exprs = (*fscan).fdw_exprs;
        let mut set = Vec::new();
        if update {
            let mut tlist: *mut pg_sys::List = std::ptr::null_mut();
            let mut attrs: *mut pg_sys::List = std::ptr::null_mut();
            pg_sys::get_translated_update_targetlist(root, result_relation, &mut tlist, &mut attrs);
            let attnums: Vec<i32> = PgList::<i32>::from_pg(attrs).iter_int().collect();
            if attnums.contains(&(topology.key().attnum as i32)) {
                return false; // the row-by-row path refuses it with a clear error
            }
            for (tle, attnum) in PgList::<pg_sys::TargetEntry>::from_pg(tlist)
                .iter_ptr()
                .zip(attnums)
            {
                let expr = (*tle).expr as *mut pg_sys::Node;
                if !row_independent(expr, result_relation as i32) {
                    return false;
                }
                exprs = pg_sys::lappend(exprs, expr.cast());
                set.push(attnum as i16);
            }
        }
        let direct = DirectPlan {
            update,
            pushed: scan.pushed,
            params: scan.params,
            set,
        };
        (*fscan).operation = operation;
        (*fscan).resultRelation = result_relation;
        (*fscan).fdw_exprs = exprs;
        (*fscan).fdw_private = super::private_from(&direct);
        true
    }
}

unsafe fn has_row_triggers(relid: pg_sys::Oid, update: bool) -> bool {
    // SAFETY: the planner holds a lock on the relation; it is closed again.
    unsafe {
        let rel = pg_sys::RelationIdGetRelation(relid);
        let t = (*rel).trigdesc;
        let found = !t.is_null()
            && if update {
                (*t).trig_update_before_row || (*t).trig_update_after_row
            } else {
                (*t).trig_delete_before_row || (*t).trig_delete_after_row
            };
        pg_sys::RelationClose(rel);
        found
    }
}

struct DirectState {
    topology: Rc<TableTopology>,
    plan: DirectPlan,
    params: Vec<(*mut pg_sys::ExprState, pg_sys::Oid)>,
    /// Indexes into topology.columns of the SET columns, and their codecs.
    set_columns: Vec<usize>,
    set_codecs: Vec<ColumnCodec>,
    econtext: *mut pg_sys::ExprContext,
    estate: *mut pg_sys::EState,
    done: bool,
    route: Option<conductor_core::router::Route>,
}

unsafe fn state<'a>(node: *mut pg_sys::ForeignScanState) -> &'a mut DirectState {
    // SAFETY: fdw_state was set by begin_direct_modify.
    unsafe { &mut *((*node).fdw_state as *mut DirectState) }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn begin_direct_modify(
    node: *mut pg_sys::ForeignScanState,
    _eflags: i32,
) {
    // SAFETY: the executor's state for our rewritten ForeignScan.
    unsafe {
        let fscan = (*node).ss.ps.plan as *mut pg_sys::ForeignScan;
        let relid = (*(*node).ss.ss_currentRelation).rd_id;
        let topology = cache::table(relid);
        let plan: DirectPlan = super::private_to((*fscan).fdw_private);
        let params = init_params((*fscan).fdw_exprs, node.cast());
        let set_columns: Vec<usize> = plan
            .set
            .iter()
            .map(|&a| {
                topology
                    .columns
                    .iter()
                    .position(|c| c.attnum == a)
                    .unwrap_or_else(|| error!("conductor: column {a} is not in the topology"))
            })
            .collect();
        let set_codecs = set_columns
            .iter()
            .map(|&i| {
                let c = &topology.columns[i];
                ColumnCodec::new(&c.name, c.ty, c.typoid, c.typmod)
            })
            .collect();
        let state = DirectState {
            topology,
            plan,
            params,
            set_columns,
            set_codecs,
            econtext: (*node).ss.ps.ps_ExprContext,
            estate: (*node).ss.ps.state,
            done: false,
            route: None,
        };
        (*node).fdw_state = PgMemoryContexts::CurrentMemoryContext
            .leak_and_drop_on_delete(state)
            .cast();
    }
}

impl DirectState {
    /// Send the statement to every target shard (in this transaction's
    /// remote transaction) and count the rows changed.
    unsafe fn run(&mut self) {
        let n_where = self.plan.params.len();
        let bindings =
            unsafe { eval_bindings(&self.params[..n_where], &self.plan.params, self.econtext) };
        let mut set_values: Vec<Value> = Vec::with_capacity(self.set_codecs.len());
        for ((state, _), codec) in self.params[n_where..].iter().zip(&self.set_codecs) {
            let mut is_null = false;
            // SAFETY: an ExprState of this node; encoded right away.
            let datum =
                unsafe { pg_sys::ExecEvalExprSwitchContext(*state, self.econtext, &mut is_null) };
            set_values.push(if is_null {
                Value::Null
            } else {
                unsafe { codec.encode(datum) }.unwrap_or_else(|e| {
                    raise(
                        PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
                        format!("conductor cannot store this value: {e}"),
                    )
                    .error()
                })
            });
        }
        let topology = self.topology.clone();
        let key = shard_key(&topology);
        let routed = route(&self.plan.pushed, &key, &bindings).unwrap_or_else(|e| {
            raise(
                PgSqlErrorCode::ERRCODE_FDW_ERROR,
                format!("conductor: cannot route the statement: {e}"),
            )
            .error()
        });
        let names: Vec<&str> = topology.columns.iter().map(|c| c.name.as_str()).collect();
        let set_names: Vec<&str> = self.set_columns.iter().map(|&i| names[i]).collect();
        let token = crate::catalog::credentials::token_for(topology.server_id);
        let table = topology.display.clone();
        let mut per_node: BTreeMap<&str, NodeWork> = BTreeMap::new();
        for &shard in routed.shards.keys() {
            let placement = &topology.shards[shard as usize];
            let preds = routed.shard_preds(&self.plan.pushed, &key, shard);
            let (where_sql, where_args) = deparse(&preds, &names, &bindings).unwrap_or_else(|e| {
                raise(
                    PgSqlErrorCode::ERRCODE_FDW_ERROR,
                    format!("conductor: cannot build the shard statement: {e}"),
                )
                .error()
            });
            let where_sql = (!preds.is_empty()).then_some(where_sql.as_str());
            let (sql, mut args) = if self.plan.update {
                (
                    update_sql(&placement.remote_table, &set_names, where_sql),
                    set_values.clone(),
                )
            } else {
                (
                    delete_sql(&placement.remote_table, where_sql, &[]),
                    Vec::new(),
                )
            };
            args.extend(where_args);
            per_node
                .entry(placement.node_id.as_str())
                .or_insert_with(|| NodeWork {
                    key: (topology.server_id.to_u32(), placement.node_id.clone()),
                    endpoint: remote::endpoint(placement, token.clone()),
                    stmts: Vec::new(),
                })
                .stmts
                .push((
                    ShardLabel {
                        table: table.clone(),
                        shard,
                    },
                    Stmt::new(sql, args),
                ));
        }
        stats::count_shard_requests(topology.relid, routed.shards.keys().copied());
        let mut changed = 0u64;
        for result in streams::run(per_node.into_values().collect()) {
            match result {
                Ok(results) => changed += results.iter().map(|r| r.affected_row_count).sum::<u64>(),
                Err(err) => remote::report_shard_error(&err),
            }
        }
        // SAFETY: the executor's EState; direct modify reports its count here.
        unsafe { (*self.estate).es_processed += changed };
        self.route = Some(routed);
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn iterate_direct_modify(
    node: *mut pg_sys::ForeignScanState,
) -> *mut pg_sys::TupleTableSlot {
    // SAFETY: our state and the node's scan slot.
    unsafe {
        let state = state(node);
        if !state.done {
            state.done = true;
            state.run();
        }
        pg_sys::ExecClearTuple((*node).ss.ss_ScanTupleSlot)
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn end_direct_modify(_node: *mut pg_sys::ForeignScanState) {}

#[pg_guard]
pub unsafe extern "C-unwind" fn explain_direct_modify(
    node: *mut pg_sys::ForeignScanState,
    es: *mut pg_sys::ExplainState,
) {
    // SAFETY: our state and the explain state.
    unsafe {
        let state = state(node);
        let topology = &state.topology;
        let key = shard_key(topology);
        let routed = state
            .route
            .clone()
            .or_else(|| route(&state.plan.pushed, &key, &[]).ok());
        let shards = match &routed {
            Some(r) => format!(
                "{} of {} ({}), one statement each",
                r.shards.len(),
                topology.shard_count,
                r.reason
            ),
            None => format!(
                "chosen at execution from parameters, of {}",
                topology.shard_count
            ),
        };
        explain_text(c"Shards", &shards, es);
        if (*es).verbose {
            let names: Vec<&str> = topology.columns.iter().map(|c| c.name.as_str()).collect();
            let shard = routed
                .as_ref()
                .and_then(|r| r.shards.keys().next().copied())
                .unwrap_or(0);
            let preds = match &routed {
                Some(r) => r.shard_preds(&state.plan.pushed, &key, shard),
                None => state.plan.pushed.clone(),
            };
            let where_sql = deparse_template(&preds, &names);
            let where_sql = (!preds.is_empty()).then_some(where_sql.as_str());
            let table = &topology.shards[shard as usize].remote_table;
            let sql = if state.plan.update {
                let set: Vec<&str> = state.set_columns.iter().map(|&i| names[i]).collect();
                update_sql(table, &set, where_sql)
            } else {
                delete_sql(table, where_sql, &[])
            };
            explain_text(c"Remote SQL", &sql, es);
        }
    }
}
