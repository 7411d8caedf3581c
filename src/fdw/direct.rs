//! Direct modify: an UPDATE or DELETE whose WHERE clause went to the nodes
//! whole, and whose new values do not depend on the row, runs as one
//! statement per target shard (routed like a scan) without fetching rows.
//! Anything else (a local filter, `SET x = x + 1`, RETURNING, row triggers)
//! takes the row-by-row path in `modify.rs`.

use crate::catalog::{cache, TableTopology};
use crate::convert::ColumnCodec;
use crate::errors::raise;
use crate::fdw::lower::ParamSpec;
use crate::fdw::scan::{
    bound_plan, eval_bindings, explain_plan, explain_text, init_params, ScanPlan,
};
use crate::xact::{autocommit, streams};
use conductor_core::plan::{ShardPlan, StatementKind};
use conductor_core::predicate::Pred;
use conductor_hrana::Value;
use pgrx::prelude::*;
use pgrx::{PgList, PgMemoryContexts, PgSqlErrorCode};
use serde::{Deserialize, Serialize};
use std::rc::Rc;

#[derive(Debug, Serialize, Deserialize)]
pub struct DirectPlan {
    pub update: bool,
    pub pushed: Vec<Pred>,
    /// The WHERE clause's runtime parameters: the first fdw_exprs.
    pub params: Vec<ParamSpec>,
    /// UPDATE: the columns assigned; their new values are the remaining
    /// fdw_exprs, in this order.
    pub set: Vec<i16>,
}

impl DirectPlan {
    /// What each shard is sent, with the SET values when known.
    pub fn statement(&self, topology: &TableTopology, values: Vec<Value>) -> StatementKind {
        if !self.update {
            return StatementKind::Delete;
        }
        let set = self
            .set
            .iter()
            .map(|&a| {
                topology
                    .column_index(a)
                    .unwrap_or_else(|| error!("conductor: column {a} is not in the topology"))
            })
            .collect();
        StatementKind::Update { set, values }
    }
}

use crate::fdw::lower::is;

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
            // A virtual index's entries are written before the row changes,
            // which needs the row: row by row.
            if topology.virtual_indexes.iter().any(|ix| {
                ix.columns
                    .iter()
                    .any(|&c| attnums.contains(&(topology.columns[c].attnum as i32)))
            }) {
                return false;
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
    /// The codecs of the SET columns.
    set_codecs: Vec<ColumnCodec>,
    econtext: *mut pg_sys::ExprContext,
    estate: *mut pg_sys::EState,
    /// The result relation (for the fast path's trigger check).
    rinfo: *mut pg_sys::ResultRelInfo,
    done: bool,
    /// The shard plan that ran, for EXPLAIN ANALYZE.
    last_plan: Option<ShardPlan>,
    /// Per node, how long its requests waited for its write lock (EXPLAIN
    /// ANALYZE).
    lock_waits: std::collections::BTreeMap<String, std::time::Duration>,
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
        let set_codecs = match plan.statement(&topology, Vec::new()) {
            StatementKind::Update { set, .. } => set.iter().map(|&i| topology.codec(i)).collect(),
            _ => Vec::new(),
        };
        let state = DirectState {
            topology,
            plan,
            params,
            set_codecs,
            econtext: (*node).ss.ps.ps_ExprContext,
            estate: (*node).ss.ps.state,
            rinfo: (*node).resultRelInfo,
            done: false,
            last_plan: None,
            lock_waits: Default::default(),
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
        let statement = self.plan.statement(&topology, set_values);
        let plan = bound_plan(&topology, &self.plan.pushed, &bindings, &statement);
        // SAFETY: the executor state of the running statement.
        let alone = unsafe { autocommit::statement_is_alone(self.estate, self.rinfo) };
        let results = crate::remote::recording_lock_waits(&mut self.lock_waits, || {
            alone
                .then(|| autocommit::run_alone(&topology, &plan))
                .flatten()
                .unwrap_or_else(|| streams::run_plan(&topology, &plan, streams::Access::Write))
        });
        let changed: u64 = results.iter().map(|(_, r)| r.affected_row_count).sum();
        // SAFETY: the executor's EState; direct modify reports its count here.
        unsafe { (*self.estate).es_processed += changed };
        self.last_plan = Some(plan);
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
        let plan = match &state.last_plan {
            Some(p) => p.clone(),
            None => ShardPlan::template(
                &state.topology,
                &state.plan.pushed,
                &state.plan.statement(&state.topology, Vec::new()),
            ),
        };
        explain_plan(
            &state.topology,
            &plan,
            state.plan.params.len(),
            ", one statement each",
            es,
        );
        if (*es).analyze && !state.lock_waits.is_empty() {
            explain_text(
                c"Lock Wait",
                &crate::remote::describe_lock_waits(&state.lock_waits),
                es,
            );
        }
    }
}
