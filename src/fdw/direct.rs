//! Direct modify: an UPDATE or DELETE whose WHERE clause went to the nodes
//! whole, and whose new values either do not depend on the row or are one
//! of the shapes the node computes exactly (`SET n = n + 1` over integers
//! or numeric, `SET s = s || 'x'` over text: `SetExpr`), runs as one
//! statement per target shard (routed like a scan) without fetching rows.
//! With RETURNING the shards return every column of the changed rows
//! (SQLite's `RETURNING`) and Postgres computes its RETURNING list over
//! them. Anything else (a local filter, other expressions of the row, row
//! triggers) takes the row-by-row path in `modify.rs`.

use crate::catalog::credentials::ActingUser;
use crate::catalog::{cache, TableTopology};
use crate::convert::ColumnCodec;
use crate::errors::raise;
use crate::fdw::lower::ParamSpec;
use crate::fdw::scan::{
    bound_plan, eval_bindings, explain_plan, explain_text, init_params, ScanPlan,
};
use crate::xact::{autocommit, changed, streams};
use conductor_core::plan::{ArithOp, SetExpr, ShardPlan, StatementKind};
use conductor_core::predicate::Pred;
use conductor_core::types::ColumnType;
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
    /// UPDATE: the columns assigned and how each new value is computed on
    /// the node from its operand; the operands are the remaining
    /// fdw_exprs, in this order.
    pub set: Vec<i16>,
    pub exprs: Vec<SetExpr>,
    /// The statement has RETURNING: the shards return the changed rows.
    pub returning: bool,
    /// The rows changed are the statement's count (its command tag): not
    /// for a data-modifying WITH, whose rows the main statement does not
    /// count.
    pub sets_tag: bool,
}

impl DirectPlan {
    /// What each shard is sent, with the SET values when known.
    pub fn statement(&self, topology: &TableTopology, values: Vec<Value>) -> StatementKind {
        if !self.update {
            return StatementKind::Delete {
                returning: self.returning,
            };
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
        StatementKind::Update {
            set,
            exprs: self.exprs.clone(),
            values,
            returning: self.returning,
        }
    }

    /// The converters of the SET operands: a plain value as its column
    /// stores it; an operand of arithmetic as a bigint (the planner casts
    /// it), of concatenation as text, of decimal arithmetic as numeric.
    ///
    /// # Safety
    /// As [`ColumnCodec::new`].
    pub unsafe fn operand_codecs(&self, topology: &TableTopology) -> Vec<ColumnCodec> {
        let Some(set) = self.update.then_some(&self.set) else {
            return Vec::new();
        };
        set.iter()
            .enumerate()
            .map(|(i, &attnum)| {
                let (ty, oid) = match self.exprs.get(i).copied().unwrap_or(SetExpr::Value) {
                    SetExpr::Value => {
                        let column = topology.column_index(attnum).unwrap_or_else(|| {
                            error!("conductor: column {attnum} is not in the topology")
                        });
                        // SAFETY: per the contract.
                        return unsafe { topology.codec(column) };
                    }
                    SetExpr::Integer { .. } => (ColumnType::Int8, pg_sys::INT8OID),
                    SetExpr::Concat { .. } => (ColumnType::Text, pg_sys::TEXTOID),
                    SetExpr::Decimal { .. } => (ColumnType::Numeric, pg_sys::NUMERICOID),
                };
                // SAFETY: per the contract.
                unsafe { ColumnCodec::new("operand", ty, oid, -1) }
            })
            .collect()
    }
}

use crate::fdw::lower::is;

/// A SET value the node can receive as an argument: evaluated once per
/// statement by Postgres, not depending on the row being changed.
unsafe fn row_independent(expr: *mut pg_sys::Node, result_relation: i32) -> bool {
    // SAFETY: planner expression trees.
    unsafe {
        if pg_sys::contain_volatile_functions(expr)
            || pg_sys::contain_subplans(expr)
            || contains_executor_param(expr)
        {
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

/// Whether `expr` reads a value a plan node sets while the statement runs:
/// `SET (a, b) = (SELECT …)` reads the sub-select's columns per row
/// (PARAM_MULTIEXPR, later PARAM_EXEC), which no Var shows.
unsafe fn contains_executor_param(expr: *mut pg_sys::Node) -> bool {
    unsafe extern "C-unwind" fn walker(
        node: *mut pg_sys::Node,
        context: *mut std::ffi::c_void,
    ) -> bool {
        // SAFETY: called by expression_tree_walker on valid nodes.
        unsafe {
            if node.is_null() {
                return false;
            }
            if is(node, pg_sys::NodeTag::T_Param) {
                let kind = (*(node as *mut pg_sys::Param)).paramkind;
                if kind == pg_sys::ParamKind::PARAM_EXEC
                    || kind == pg_sys::ParamKind::PARAM_MULTIEXPR
                {
                    return true;
                }
            }
            pg_sys::expression_tree_walker(node, Some(walker), context)
        }
    }
    // SAFETY: a planner expression tree.
    unsafe { walker(expr, std::ptr::null_mut()) }
}

/// `expr` without binary-compatible relabelling (varchar read as text).
unsafe fn unlabelled(mut expr: *mut pg_sys::Node) -> *mut pg_sys::Node {
    // SAFETY: planner expression trees.
    unsafe {
        while is(expr, pg_sys::NodeTag::T_RelabelType) {
            expr = (*(expr as *mut pg_sys::RelabelType)).arg as *mut pg_sys::Node;
        }
        expr
    }
}

/// The single argument of an implicit cast by `funcs`, else None.
unsafe fn implicit_cast_arg(expr: *mut pg_sys::Node, funcs: &[u32]) -> Option<*mut pg_sys::Node> {
    // SAFETY: planner expression trees.
    unsafe {
        if !is(expr, pg_sys::NodeTag::T_FuncExpr) {
            return None;
        }
        let f = expr as *mut pg_sys::FuncExpr;
        let args = PgList::<pg_sys::Node>::from_pg((*f).args);
        ((*f).funcformat == pg_sys::CoercionForm::COERCE_IMPLICIT_CAST
            && funcs.contains(&(*f).funcid.to_u32()))
        .then(|| args.get_ptr(0))
        .flatten()
    }
}

/// Casts between smallint, integer and bigint around a computed value
/// assigned to a column of another width (whose range then also holds).
const INTEGER_CASTS: [u32; 6] = [
    pg_sys::F_INT4_INT2,
    pg_sys::F_INT8_INT2,
    pg_sys::F_INT8_INT4,
    pg_sys::F_INT2_INT4,
    pg_sys::F_INT2_INT8,
    pg_sys::F_INT4_INT8,
];
/// The widening ones, which never fail: around a column inside the value.
const INTEGER_WIDENING: [u32; 3] = [
    pg_sys::F_INT4_INT2,
    pg_sys::F_INT8_INT2,
    pg_sys::F_INT8_INT4,
];
const INTEGER_ADD: [u32; 9] = [
    pg_sys::F_INT2PL,
    pg_sys::F_INT4PL,
    pg_sys::F_INT8PL,
    pg_sys::F_INT24PL,
    pg_sys::F_INT42PL,
    pg_sys::F_INT48PL,
    pg_sys::F_INT84PL,
    pg_sys::F_INT28PL,
    pg_sys::F_INT82PL,
];
const INTEGER_SUBTRACT: [u32; 9] = [
    pg_sys::F_INT2MI,
    pg_sys::F_INT4MI,
    pg_sys::F_INT8MI,
    pg_sys::F_INT24MI,
    pg_sys::F_INT42MI,
    pg_sys::F_INT48MI,
    pg_sys::F_INT84MI,
    pg_sys::F_INT28MI,
    pg_sys::F_INT82MI,
];

fn integer_range(ty: ColumnType) -> Option<(i64, i64)> {
    match ty {
        ColumnType::Int2 => Some((i16::MIN.into(), i16::MAX.into())),
        ColumnType::Int4 => Some((i32::MIN.into(), i32::MAX.into())),
        ColumnType::Int8 => Some((i64::MIN, i64::MAX)),
        _ => None,
    }
}

fn integer_type_of(oid: pg_sys::Oid) -> Option<ColumnType> {
    match oid {
        pg_sys::INT2OID => Some(ColumnType::Int2),
        pg_sys::INT4OID => Some(ColumnType::Int4),
        pg_sys::INT8OID => Some(ColumnType::Int8),
        _ => None,
    }
}

/// A new value of column `target` that depends on the row but is one of
/// the shapes the node computes exactly (`SetExpr`): the shape and the
/// operand Postgres evaluates once (cast to the operand type the shape's
/// codec expects). None for anything else.
unsafe fn row_dependent(
    expr: *mut pg_sys::Node,
    result_relation: i32,
    target: usize,
    topology: &TableTopology,
) -> Option<(SetExpr, *mut pg_sys::Node)> {
    // SAFETY: planner expression trees; new nodes are built in the
    // planner's memory context.
    unsafe {
        let target_ty = topology.columns[target].ty;
        let target_typmod = topology.pg_types[target].typmod;
        // The assignment cast Postgres added around the expression.
        let mut typmod = None;
        let body = match target_ty {
            ColumnType::Int2 | ColumnType::Int4 | ColumnType::Int8 => {
                implicit_cast_arg(expr, &INTEGER_CASTS).unwrap_or(expr)
            }
            ColumnType::Numeric if topology.decimal_aggregates => {
                if target_typmod == -1 {
                    expr
                } else {
                    let (precision, scale) = numeric_typmod(target_typmod)?;
                    typmod = Some((precision, scale));
                    if !is(expr, pg_sys::NodeTag::T_FuncExpr)
                        || (*(expr as *mut pg_sys::FuncExpr)).funcid.to_u32()
                            != pg_sys::F_NUMERIC_NUMERIC_INT4
                    {
                        return None;
                    }
                    PgList::<pg_sys::Node>::from_pg((*(expr as *mut pg_sys::FuncExpr)).args)
                        .get_ptr(0)?
                }
            }
            ColumnType::Text => unlabelled(expr),
            ColumnType::Varchar if target_typmod == -1 => unlabelled(expr),
            _ => return None,
        };
        if !is(body, pg_sys::NodeTag::T_OpExpr) {
            return None;
        }
        let opexpr = body as *mut pg_sys::OpExpr;
        pg_sys::set_opfuncid(opexpr);
        let func = (*opexpr).opfuncid.to_u32();
        let result_type = (*opexpr).opresulttype;
        let args = PgList::<pg_sys::Node>::from_pg((*opexpr).args);
        let (Some(left), Some(right)) = (args.get_ptr(0), args.get_ptr(1)) else {
            return None;
        };
        // Which side is a column of the row being changed, and which.
        let column_of = |e: *mut pg_sys::Node| -> Option<usize> {
            let e = unlabelled(implicit_cast_arg(e, &INTEGER_WIDENING).unwrap_or(e));
            if !is(e, pg_sys::NodeTag::T_Var) {
                return None;
            }
            let v = e as *mut pg_sys::Var;
            ((*v).varno == result_relation && (*v).varlevelsup == 0)
                .then(|| topology.column_index((*v).varattno))
                .flatten()
        };
        let (column, operand, column_first) = match (column_of(left), column_of(right)) {
            (Some(c), None) if row_independent(right, result_relation) => (c, right, true),
            (None, Some(c)) if row_independent(left, result_relation) => (c, left, false),
            _ => return None,
        };
        let source_ty = topology.columns[column].ty;
        let arith = |func: u32, add: &[u32], subtract: &[u32]| {
            if add.contains(&func) {
                Some(ArithOp::Add)
            } else if subtract.contains(&func) {
                Some(ArithOp::Subtract)
            } else {
                None
            }
        };
        let shape = match target_ty {
            ColumnType::Int2 | ColumnType::Int4 | ColumnType::Int8 => {
                let op = arith(func, &INTEGER_ADD, &INTEGER_SUBTRACT)?;
                integer_range(source_ty)?;
                // Postgres computes in the operator's result type, then
                // assigns to the column: the narrower range holds.
                let (tmin, tmax) = integer_range(target_ty)?;
                let (rmin, rmax) = integer_range(integer_type_of(result_type)?)?;
                SetExpr::Integer {
                    column,
                    op,
                    column_first,
                    min: tmin.max(rmin),
                    max: tmax.min(rmax),
                }
            }
            ColumnType::Numeric => {
                if source_ty != ColumnType::Numeric {
                    return None;
                }
                SetExpr::Decimal {
                    column,
                    op: arith(func, &[pg_sys::F_NUMERIC_ADD], &[pg_sys::F_NUMERIC_SUB])?,
                    column_first,
                    typmod,
                }
            }
            _ => {
                if func != pg_sys::F_TEXTCAT
                    || !matches!(source_ty, ColumnType::Text | ColumnType::Varchar)
                {
                    return None;
                }
                SetExpr::Concat {
                    column,
                    column_first,
                }
            }
        };
        let operand = match shape {
            SetExpr::Integer { .. } if pg_sys::exprType(operand) != pg_sys::INT8OID => {
                pg_sys::coerce_to_target_type(
                    std::ptr::null_mut(),
                    operand,
                    pg_sys::exprType(operand),
                    pg_sys::INT8OID,
                    -1,
                    pg_sys::CoercionContext::COERCION_IMPLICIT,
                    pg_sys::CoercionForm::COERCE_IMPLICIT_CAST,
                    -1,
                )
            }
            _ => operand,
        };
        (!operand.is_null()).then_some((shape, operand))
    }
}

/// `numeric(precision, scale)` of a numeric type modifier, when the scale
/// is within 0..=precision (Postgres 15 also allows negative scales and
/// scales above the precision; those stay on the row-by-row path).
fn numeric_typmod(typmod: i32) -> Option<(u32, u32)> {
    let t = typmod.checked_sub(pg_sys::VARHDRSZ as i32)?;
    if t < 0 {
        return None;
    }
    let precision = (t >> 16) & 0xffff;
    let scale = ((t & 0x7ff) ^ 1024) - 1024;
    (0 <= scale && scale <= precision).then_some((precision as u32, scale as u32))
}

#[pg_guard]
pub unsafe extern "C-unwind" fn plan_direct_modify(
    root: *mut pg_sys::PlannerInfo,
    plan: *mut pg_sys::ModifyTable,
    result_relation: pg_sys::Index,
    subplan_index: i32,
) -> bool {
    // SAFETY: planner structures valid for the callback; lists are built in
    // the planner's memory context.
    unsafe {
        super::modify::refuse_returned_system_columns(root, plan, result_relation, subplan_index);
        let operation = (*plan).operation;
        let update = match operation {
            pg_sys::CmdType::CMD_UPDATE => true,
            pg_sys::CmdType::CMD_DELETE => false,
            _ => return false,
        };
        let returning = !(*plan).returningLists.is_null();
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
        // Postgres computes stored generated columns from each new row;
        // the row-by-row path sends them.
        if update && !super::modify::stored_generated_attnums(relid).is_empty() {
            return false;
        }
        let topology = cache::table(relid);
        let scan: ScanPlan = super::private_to((*fscan).fdw_private);
        let mut exprs = (*fscan).fdw_exprs;
        let mut set = Vec::new();
        let mut set_exprs = Vec::new();
        if update {
            let mut tlist: *mut pg_sys::List = std::ptr::null_mut();
            let mut attrs: *mut pg_sys::List = std::ptr::null_mut();
            pg_sys::get_translated_update_targetlist(root, result_relation, &mut tlist, &mut attrs);
            let attnums: Vec<i32> = PgList::<i32>::from_pg(attrs).iter_int().collect();
            if attnums.contains(&(topology.key().attnum as i32)) {
                return false; // the row-by-row path refuses it with a clear error
            }
            // A partition's new rows are checked against its bounds, row
            // by row.
            if super::modify::partition_bound_attnums(relid)
                .iter()
                .any(|a| attnums.contains(a))
            {
                return false;
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
                let (shape, operand) = if row_independent(expr, result_relation as i32) {
                    (SetExpr::Value, expr)
                } else {
                    let Some(target) = topology.column_index(attnum as i16) else {
                        return false;
                    };
                    match row_dependent(expr, result_relation as i32, target, &topology) {
                        Some(found) => found,
                        None => return false,
                    }
                };
                exprs = pg_sys::lappend(exprs, operand.cast());
                set.push(attnum as i16);
                set_exprs.push(shape);
            }
        }
        if returning && update {
            returned_values_as_output(fscan, result_relation, relid, &set);
        }
        let direct = DirectPlan {
            update,
            pushed: scan.pushed,
            params: scan.params,
            set,
            exprs: set_exprs,
            returning,
            sets_tag: (*plan).canSetTag,
        };
        (*fscan).operation = operation;
        (*fscan).resultRelation = result_relation;
        (*fscan).fdw_exprs = exprs;
        (*fscan).fdw_private = super::private_from(&direct);
        true
    }
}

/// Make the scan's output columns the new values as the shards returned
/// them. The executor projects the scan's target list over each returned
/// row; left as the SET expressions, `n + 1` would be computed again over
/// the new `n` (and could even overflow).
unsafe fn returned_values_as_output(
    fscan: *mut pg_sys::ForeignScan,
    result_relation: pg_sys::Index,
    relid: pg_sys::Oid,
    set: &[i16],
) {
    // SAFETY: the plan's target list, being built by the planner: its
    // non-junk entries are the new values of `set`, in that order.
    unsafe {
        let entries = PgList::<pg_sys::TargetEntry>::from_pg((*fscan).scan.plan.targetlist);
        let new_values = entries.iter_ptr().filter(|&tle| !(*tle).resjunk);
        for (tle, &attnum) in new_values.zip(set) {
            let mut ty = pg_sys::InvalidOid;
            let mut typmod = -1;
            let mut collation = pg_sys::InvalidOid;
            pg_sys::get_atttypetypmodcoll(relid, attnum, &mut ty, &mut typmod, &mut collation);
            (*tle).expr =
                pg_sys::makeVar(result_relation as _, attnum, ty, typmod, collation, 0).cast();
        }
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
    /// RETURNING: the changed rows the shards returned, not yet handed
    /// to the executor, and the codecs of every column.
    returned: std::collections::VecDeque<Vec<Value>>,
    row_codecs: Vec<ColumnCodec>,
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
        let set_codecs = plan.operand_codecs(&topology);
        let row_codecs = if plan.returning {
            (0..topology.columns.len())
                .map(|i| topology.codec(i))
                .collect()
        } else {
            Vec::new()
        };
        let state = DirectState {
            topology,
            plan,
            params,
            set_codecs,
            returned: Default::default(),
            row_codecs,
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
        // The node finds the rows to change in their current state: not
        // when a WITH of this statement changed them already.
        changed::check_read(&topology, &plan, true);
        // SAFETY: the executor state of the running statement.
        changed::record_routed(&topology, &plan, unsafe { (*self.estate).es_output_cid });
        // SAFETY: the executor state of the running statement.
        let alone = unsafe { autocommit::statement_is_alone(self.estate, self.rinfo) };
        let results = crate::remote::recording_lock_waits(&mut self.lock_waits, || {
            alone
                .then(|| autocommit::run_alone(&topology, &plan))
                .flatten()
                .unwrap_or_else(|| streams::run_plan(&topology, &plan, streams::Access::Write))
        });
        if self.plan.returning {
            // Counted as the executor takes them.
            self.returned = results.into_iter().flat_map(|(_, r)| r.rows).collect();
        } else if self.plan.sets_tag {
            let changed: u64 = results.iter().map(|(_, r)| r.affected_row_count).sum();
            // SAFETY: the executor's EState; direct modify reports its
            // count here.
            unsafe { (*self.estate).es_processed += changed };
        }
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
            let _acting = ActingUser::for_result(state.estate, state.rinfo);
            state.run();
        }
        let slot = (*node).ss.ss_ScanTupleSlot;
        let Some(row) = state.returned.pop_front() else {
            return pg_sys::ExecClearTuple(slot);
        };
        crate::fdw::scan::store_values(
            slot,
            &row,
            &state.row_codecs,
            state.topology.columns.iter().map(|c| c.attnum),
            || format!("a row changed in {}", state.topology.name),
        );
        if state.plan.sets_tag {
            (*state.estate).es_processed += 1;
        }
        // The RETURNING list is computed over this row (ModifyTable passes
        // no tuple of its own for a direct modify).
        let projection = (*state.rinfo).ri_projectReturning;
        if !projection.is_null() {
            (*(*projection).pi_exprContext).ecxt_scantuple = slot;
        }
        slot
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
