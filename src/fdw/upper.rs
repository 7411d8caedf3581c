//! Upper paths: aggregates, ORDER BY and LIMIT of a query over one
//! distributed table, run on the shards (GetForeignUpperPaths).
//!
//! - `UPPERREL_GROUP_AGG`: count/sum/avg/min/max with an optional GROUP BY
//!   on plain columns, as the rulebook allows (`pushdown::aggregate`,
//!   `pushdown::group_pushable`). Every shard returns one row per group of
//!   partial aggregates; the router combines them (`conductor_core::merge`)
//!   or, when the grouping contains the shard key, finishes each row as it
//!   arrives (every group lives on one shard). HAVING is evaluated by this
//!   scan on the merged rows.
//! - `UPPERREL_ORDERED`: ORDER BY plain columns whose SQLite order is
//!   Postgres' (`pushdown::sort_pushable`): every shard sorts with explicit
//!   NULLS FIRST/LAST and the router k-way merges the sorted streams as rows
//!   arrive, so the path is sorted and Postgres adds no Sort.
//! - `UPPERREL_FINAL`: LIMIT/OFFSET (constants or `$n`), with or without
//!   that ORDER BY: each shard returns its first `count + offset` rows, the
//!   router skips `offset` rows of the merged stream, returns `count` and
//!   then drops the scan, which cancels the requests still running.
//!
//! Only a query on one base relation whose WHERE went to the nodes whole
//! gets an upper path (a local filter must run before aggregation and
//! LIMIT); anything the rulebook refuses leaves the work to Postgres above
//! an ordinary foreign scan. The upper scan is a ForeignScan with
//! `scanrelid = 0`: its tuple is described by `fdw_scan_tlist` (grouping
//! columns and aggregates, or plain columns), and its fdw_private carries
//! an [`UpperPlan`] as JSON.

use crate::catalog::{cache, TableTopology};
use crate::convert::{column_type_of, ColumnCodec};
use crate::errors::raise;
use crate::fdw::lower::{collation_class, Lowering, ParamSpec};
use crate::fdw::scan::{eval_bindings, explain_text, init_params};
use crate::remote;
use crate::stats;
use crate::xact::{changed, streams};
use conductor_core::executor::{ScanHandle, ScanPoll, ShardError, ShardStats};
use conductor_core::merge::{AggFunc, AggSpec, Final, GroupMerge, KWayMerge, MergeKey};
use conductor_core::plan::{
    LimitError, LimitSpec, LimitValues, PushedQuery, RemoteExpr, RouteKind, ShardPlan, SortKey,
    StatementKind,
};
use conductor_core::predicate::{Binding, Operand, Pred};
use conductor_core::pushdown;
use conductor_core::types::{ColumnType, TypedValue};
use conductor_hrana::Value;
use pgrx::prelude::*;
use pgrx::{AnyNumeric, PgList, PgMemoryContexts, PgSqlErrorCode};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::ffi::CStr;
use std::rc::Rc;
use std::time::Duration;

const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Cost of one HTTP round trip (all shards go in parallel), as for scans.
const REQUEST_COST: f64 = 100.0;
const PER_SHARD_COST: f64 = 10.0;

/// What an upper scan pushes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpperKind {
    /// Aggregates (with or without GROUP BY).
    Aggregate,
    /// ORDER BY without LIMIT.
    Ordered,
    /// LIMIT/OFFSET, with or without ORDER BY.
    Limit,
}

/// What an upper ForeignScan carries from planning to execution.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpperPlan {
    pub upper: UpperKind,
    /// The foreign table.
    pub relid: u32,
    /// The WHERE clause (pushed whole).
    pub pushed: Vec<Pred>,
    /// One per fdw_exprs entry (WHERE parameters, then LIMIT/OFFSET).
    pub params: Vec<ParamSpec>,
    /// What every shard runs.
    pub query: PushedQuery,
    /// Aggregates: the grouping columns lead the shard's row, then each
    /// aggregate's partial columns.
    pub n_group: usize,
    pub aggs: Vec<AggSpec>,
    /// Every group lives on one shard (the grouping contains the shard
    /// key): rows are finished as they arrive, no combining.
    pub concat: bool,
    /// ORDER BY as positions in the shard's row.
    pub merge: Vec<MergeKey>,
    /// Per scan-tuple column: its position in the merged row (grouping
    /// values then one value per aggregate; or the shard's row).
    pub slots: Vec<usize>,
    /// Stages of the query above this scan that Postgres runs, and why
    /// (for EXPLAIN).
    #[serde(default)]
    pub local: Vec<String>,
    /// Over a pushed join: `query` reads the join's column space (the
    /// outer table's columns, then the inner's) and `pushed` is empty.
    #[serde(default)]
    pub join: Option<super::join::JoinSpec>,
}

use crate::fdw::lower::{is, list_nodes as nodes, strip_relabel};
use crate::fdw::scan::{
    fail_scan, fails_over, reachable_queries, scan_done, skip_failed, skippable, warn_skipped,
};

/// The base relation an upper path would replace the scan of.
struct Base {
    /// The table; over a pushed join, both tables as one (`join::combined`).
    topology: Rc<TableTopology>,
    relid: u32,
    join: Option<JoinBase>,
    pushed: Vec<Pred>,
    params: Vec<(*mut pg_sys::Expr, ParamSpec)>,
    /// The most arguments the conditions pushed so far bind in the
    /// statement (`Lowering::arguments`).
    arguments: usize,
    rows: f64,
    shards: usize,
}

/// A pushed join under the upper path.
struct JoinBase {
    spec: super::join::JoinSpec,
    outer: Rc<TableTopology>,
    inner: Rc<TableTopology>,
    inner_relid: u32,
}

impl Base {
    /// The topology column index of a plain column of this relation.
    unsafe fn column(&self, node: *mut pg_sys::Node) -> Option<(usize, ColumnType)> {
        let node = strip_relabel(node);
        if !is(node, pg_sys::NodeTag::T_Var) {
            return None;
        }
        // SAFETY: tag checked.
        let var = unsafe { &*(node as *mut pg_sys::Var) };
        if var.varlevelsup != 0 || var.varattno <= 0 {
            return None;
        }
        // The columns of the relation the Var is of, in the topology.
        let range = match &self.join {
            _ if var.varno as u32 == self.relid => {
                0..self.topology.columns.len()
                    - self.join.as_ref().map_or(0, |j| j.inner.columns.len())
            }
            Some(j) if var.varno as u32 == j.inner_relid => {
                j.outer.columns.len()..self.topology.columns.len()
            }
            _ => return None,
        };
        let index = range
            .clone()
            .find(|&i| self.topology.columns[i].attnum == var.varattno)?;
        Some((index, self.topology.columns[index].ty))
    }

    /// A clause over this relation's rows (an aggregate's FILTER, written
    /// `copies` times in the statement) as the scan's rules lower it, its
    /// runtime parameters added to the base's; None when any part of it
    /// would stay local.
    unsafe fn lower(&mut self, clause: *mut pg_sys::Node, copies: usize) -> Option<Vec<Pred>> {
        let topology = self.topology.clone();
        let sides = self
            .join
            .as_ref()
            .map(|j| (j.outer.clone(), j.inner.clone(), j.inner_relid));
        let mut lowering = match &sides {
            Some((outer, inner, inner_relid)) => {
                Lowering::over_join(outer, self.relid, inner, *inner_relid)
            }
            None => Lowering::new(&topology, self.relid),
        };
        lowering.params = std::mem::take(&mut self.params);
        lowering.arguments = self.arguments;
        lowering.copies = copies;
        let mut preds = Vec::new();
        let mut ok = true;
        for c in unsafe { implicit_and(clause) } {
            match unsafe { lowering.lower(c) } {
                Some(p) => preds.push(p),
                None => {
                    ok = false;
                    break;
                }
            }
        }
        self.params = lowering.params;
        if ok {
            self.arguments = lowering.arguments;
        }
        ok.then_some(preds)
    }

    fn param(&mut self, expr: *mut pg_sys::Node, spec: ParamSpec) -> Operand {
        self.params.push((expr.cast(), spec));
        Operand::Param(self.params.len() - 1)
    }

    /// Startup cost of an upper path. Each pushed stage is made cheaper than
    /// the scan (and a pushed LIMIT cheaper than a pushed ORDER BY): the
    /// shards send fewer rows and Postgres runs fewer nodes, which the row
    /// terms alone cannot show for small estimates, where the paths would
    /// cost the same within the planner's fuzz and the one added first (the
    /// local plan) would stay.
    fn startup_cost(&self, upper: UpperKind) -> f64 {
        let scan = REQUEST_COST + PER_SHARD_COST * self.shards as f64;
        match upper {
            UpperKind::Aggregate | UpperKind::Ordered => scan * 0.9,
            UpperKind::Limit => scan * 0.8,
        }
    }
}

/// A SELECT on this one base relation of ours whose WHERE clause went to
/// the nodes whole, or None.
unsafe fn base(root: *mut pg_sys::PlannerInfo, rel: *mut pg_sys::RelOptInfo) -> Option<Base> {
    // SAFETY: planner structures valid during the callback.
    unsafe {
        let parse = (*root).parse;
        if !rel.is_null() && (*rel).reloptkind == pg_sys::RelOptKind::RELOPT_JOINREL {
            return join_base(root, rel);
        }
        if !super::rel_is_one_table(root, rel)
            || (*parse).commandType != pg_sys::CmdType::CMD_SELECT
            || !(*parse).rowMarks.is_null()
            || (*parse).hasTargetSRFs
        {
            return None;
        }
        let rti = (*rel).relid;
        let rte = *(*root).simple_rte_array.add(rti as usize);
        let topology = cache::try_table((*rte).relid)?;
        let mut lowering = Lowering::new(&topology, rti);
        let mut pushed = Vec::new();
        for rinfo in PgList::<pg_sys::RestrictInfo>::from_pg((*rel).baserestrictinfo).iter_ptr() {
            if (*rinfo).pseudoconstant {
                return None;
            }
            let Some(pred) = lowering.lower((*rinfo).clause.cast()) else {
                not_pushed(
                    root,
                    "aggregates, ORDER BY and LIMIT: a WHERE clause stays in Postgres and must run first",
                );
                return None;
            };
            pushed.push(pred);
        }
        let params = lowering.params.clone();
        let arguments = lowering.arguments;
        let template = ShardPlan::template(
            &topology,
            &pushed,
            &StatementKind::Delete { returning: false },
        );
        let shards = match template.kind {
            RouteKind::AtExecution => 1,
            _ => template.statements.len(),
        };
        Some(Base {
            relid: rti,
            rows: (*rel).rows,
            topology,
            join: None,
            pushed,
            params,
            arguments,
            shards,
        })
    }
}

/// A SELECT over a join pushed to the shards whose conditions all went to
/// the nodes (a local one must run before the aggregates), or None.
unsafe fn join_base(root: *mut pg_sys::PlannerInfo, rel: *mut pg_sys::RelOptInfo) -> Option<Base> {
    // SAFETY: planner structures valid during the callback.
    unsafe {
        let parse = (*root).parse;
        if (*parse).commandType != pg_sys::CmdType::CMD_SELECT
            || !(*parse).rowMarks.is_null()
            || (*parse).hasTargetSRFs
            || !pg_sys::bms_is_empty((*rel).lateral_relids)
        {
            return None;
        }
        let (plan, exprs, local) = super::join::pushed_join(rel)?;
        let spec = plan.join?;
        if local {
            not_pushed(
                root,
                "aggregates: a condition of the join stays in Postgres and must run first",
            );
            return None;
        }
        let (outer_rti, inner_rti) = spec.rtis;
        if !pg_sys::bms_is_member(outer_rti as i32, (*rel).relids)
            || !pg_sys::bms_is_member(inner_rti as i32, (*rel).relids)
        {
            return None;
        }
        let outer = cache::try_table(pg_sys::Oid::from(spec.outer))?;
        let inner = cache::try_table(pg_sys::Oid::from(spec.inner))?;
        let template = ShardPlan::join_template(&outer, &inner, &spec.query);
        let shards = match template.kind {
            RouteKind::AtExecution => 1,
            _ => template.statements.len(),
        };
        let arguments = spec.arguments;
        Some(Base {
            topology: Rc::new(super::join::combined(&outer, &inner)),
            relid: outer_rti,
            arguments,
            join: Some(JoinBase {
                spec,
                outer,
                inner,
                inner_relid: inner_rti,
            }),
            pushed: Vec::new(),
            params: exprs.into_iter().zip(plan.params).collect(),
            rows: (*rel).rows,
            shards,
        })
    }
}

/// The conjuncts of a boolean expression (an AND's arguments, or itself).
unsafe fn implicit_and(clause: *mut pg_sys::Node) -> Vec<*mut pg_sys::Node> {
    // SAFETY: a planner expression; the tag is checked before the cast.
    unsafe {
        if is(clause, pg_sys::NodeTag::T_BoolExpr)
            && (*(clause as *mut pg_sys::BoolExpr)).boolop == pg_sys::BoolExprType::AND_EXPR
        {
            return nodes((*(clause as *mut pg_sys::BoolExpr)).args);
        }
        if is(clause, pg_sys::NodeTag::T_List) {
            return nodes(clause.cast());
        }
        vec![clause]
    }
}

const SORT_NOT_PUSHED: &str =
    "ORDER BY: a key that is not a plain column the nodes sort as Postgres does";
const LIMIT_NOT_PUSHED: &str = "LIMIT/OFFSET: a value that is neither a constant nor a parameter";

/// Remember why a stage of the query stays in Postgres: the base scan's
/// EXPLAIN shows it (the reasons live in the base rel's fdw_private, a
/// list of strings, until its plan is made).
unsafe fn not_pushed(root: *mut pg_sys::PlannerInfo, why: impl Into<String>) {
    // SAFETY: planner structures valid during the callback; the list and
    // strings are palloc'd in the planner's context.
    unsafe {
        let mut relid = 0;
        if !pg_sys::bms_get_singleton_member((*root).all_baserels, &mut relid) {
            return;
        }
        let rel = *(*root).simple_rel_array.add(relid as usize);
        if rel.is_null() {
            return;
        }
        let why = why.into();
        if not_pushed_reasons(rel).contains(&why) {
            return;
        }
        let Ok(c) = std::ffi::CString::new(why) else {
            return;
        };
        let node = pg_sys::makeString(pg_sys::pstrdup(c.as_ptr()));
        (*rel).fdw_private = pg_sys::lappend((*rel).fdw_private.cast(), node.cast()).cast();
    }
}

/// What [`not_pushed`] recorded for a base rel.
///
/// # Safety
/// `rel` is a base rel of this wrapper during planning.
pub unsafe fn not_pushed_reasons(rel: *mut pg_sys::RelOptInfo) -> Vec<String> {
    // SAFETY: per the contract; only not_pushed sets a base rel's fdw_private.
    unsafe {
        nodes((*rel).fdw_private.cast())
            .into_iter()
            .filter(|&n| is(n, pg_sys::NodeTag::T_String))
            .map(|n| {
                CStr::from_ptr((*(n as *mut pg_sys::String)).sval)
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }
}

/// An aggregate call as EXPLAIN names it: `sum(numeric)`, with DISTINCT,
/// ORDER BY or FILTER when it has them.
unsafe fn aggref_text(aggref: *mut pg_sys::Aggref) -> String {
    // SAFETY: a planner Aggref; format_procedure returns a palloc'd string.
    unsafe {
        let a = &*aggref;
        let mut text = CStr::from_ptr(pg_sys::format_procedure(a.aggfnoid))
            .to_string_lossy()
            .into_owned();
        if !a.aggdistinct.is_null() {
            text.push_str(" with DISTINCT");
        }
        if !a.aggorder.is_null() {
            text.push_str(" with ORDER BY");
        }
        if !a.aggfilter.is_null() {
            text.push_str(" with FILTER");
        }
        text
    }
}

/// A built-in function's name.
unsafe fn builtin_name(oid: pg_sys::Oid) -> Option<String> {
    // SAFETY: a syscache lookup by OID.
    unsafe { builtin_object_name(oid, pg_sys::get_func_name) }
}

/// The name `lookup` (a syscache lookup returning a palloc'd name or NULL)
/// finds for a built-in object; None for user-defined ones, whose names
/// say nothing of what they do.
unsafe fn builtin_object_name(
    oid: pg_sys::Oid,
    lookup: unsafe fn(pg_sys::Oid) -> *mut std::ffi::c_char,
) -> Option<String> {
    if oid.to_u32() >= pg_sys::FirstNormalObjectId {
        return None;
    }
    // SAFETY: per the contract; the name is copied before use.
    unsafe {
        let p = lookup(oid);
        (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

/// The pushed form of an aggregate call, or None. Its FILTER (WHERE …) is
/// lowered by the scan's rules (its runtime parameters join the base's)
/// into `filters`, which the spec points into.
unsafe fn agg_spec(
    base: &mut Base,
    filters: &mut Vec<Vec<Pred>>,
    aggref: *mut pg_sys::Aggref,
) -> Option<AggSpec> {
    // SAFETY: a planner Aggref.
    unsafe {
        let a = &*aggref;
        if !a.aggdistinct.is_null()
            || !a.aggorder.is_null()
            || !a.aggdirectargs.is_null()
            || a.aggvariadic
            || a.agglevelsup != 0
            || a.aggkind as u8 != b'n'
            || a.aggsplit != pg_sys::AggSplit::AGGSPLIT_SIMPLE
        {
            return None;
        }
        let name = builtin_name(a.aggfnoid)?;
        let mut spec = if a.aggstar {
            AggSpec {
                func: pushdown::aggregate(&name, None, false)?,
                column: None,
                filter: None,
            }
        } else {
            let args = PgList::<pg_sys::TargetEntry>::from_pg(a.args);
            if args.len() != 1 {
                return None;
            }
            let tle = args.get_ptr(0)?;
            let (column, ty) = base.column((*tle).expr.cast())?;
            let func = pushdown::aggregate(
                &name,
                Some((ty, collation_class(a.inputcollid))),
                base.topology.decimal_aggregates,
            )?;
            AggSpec {
                func,
                column: Some(column),
                filter: None,
            }
        };
        // The result type must be the one the merge produces.
        let want = match spec.func {
            AggFunc::CountStar | AggFunc::Count | AggFunc::SumInt => Some(pg_sys::INT8OID),
            AggFunc::SumBigint
            | AggFunc::AvgInt
            | AggFunc::SumDecimal
            | AggFunc::AvgDecimal
            | AggFunc::MinDecimal
            | AggFunc::MaxDecimal => Some(pg_sys::NUMERICOID),
            AggFunc::SumFloat | AggFunc::AvgFloat => Some(pg_sys::FLOAT8OID),
            AggFunc::BoolAnd | AggFunc::BoolOr => Some(pg_sys::BOOLOID),
            AggFunc::Min | AggFunc::Max => None,
        };
        match want {
            Some(oid) if a.aggtype != oid => return None,
            None if column_type_of(a.aggtype).is_none() => return None,
            _ => {}
        }
        if !a.aggfilter.is_null() {
            let filter = base.lower(a.aggfilter.cast(), spec.width())?;
            spec.filter = Some(match filters.iter().position(|f| *f == filter) {
                Some(i) => i,
                None => {
                    filters.push(filter);
                    filters.len() - 1
                }
            });
        }
        Some(spec)
    }
}

fn cpu_tuple_cost() -> f64 {
    // SAFETY: reading a planner GUC.
    unsafe { pg_sys::cpu_tuple_cost }
}

/// The path's fdw_private: the plan as JSON, the scan tuple's expressions,
/// the runtime parameters' expressions and the local quals (HAVING).
unsafe fn path_private(
    plan: &UpperPlan,
    scan_exprs: &[*mut pg_sys::Node],
    params: &[*mut pg_sys::Expr],
    quals: *mut pg_sys::List,
) -> *mut pg_sys::List {
    // SAFETY: lists palloc'd in the planner's context.
    unsafe {
        let mut list = super::private_from(plan);
        let mut tl: *mut pg_sys::List = std::ptr::null_mut();
        for &e in scan_exprs {
            tl = pg_sys::lappend(tl, e.cast());
        }
        let mut px: *mut pg_sys::List = std::ptr::null_mut();
        for &e in params {
            px = pg_sys::lappend(px, e.cast());
        }
        list = pg_sys::lappend(list, tl.cast());
        list = pg_sys::lappend(list, px.cast());
        list = pg_sys::lappend(list, quals.cast());
        list
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn get_foreign_upper_paths(
    root: *mut pg_sys::PlannerInfo,
    stage: pg_sys::UpperRelationKind::Type,
    input_rel: *mut pg_sys::RelOptInfo,
    output_rel: *mut pg_sys::RelOptInfo,
    extra: *mut std::ffi::c_void,
) {
    // SAFETY: planner structures valid during the callback.
    unsafe {
        match stage {
            pg_sys::UpperRelationKind::UPPERREL_GROUP_AGG => {
                add_grouping_path(root, input_rel, output_rel, extra.cast())
            }
            pg_sys::UpperRelationKind::UPPERREL_ORDERED => {
                add_ordered_path(root, input_rel, output_rel)
            }
            pg_sys::UpperRelationKind::UPPERREL_FINAL => {
                add_final_path(root, input_rel, output_rel, extra.cast())
            }
            _ => {}
        }
    }
}

unsafe fn add_grouping_path(
    root: *mut pg_sys::PlannerInfo,
    input_rel: *mut pg_sys::RelOptInfo,
    grouped_rel: *mut pg_sys::RelOptInfo,
    extra: *mut pg_sys::GroupPathExtraData,
) {
    // SAFETY: planner structures valid during the callback.
    unsafe {
        let parse = (*root).parse;
        if extra.is_null()
            || (*extra).patype != pg_sys::PartitionwiseAggregateType::PARTITIONWISE_AGGREGATE_NONE
        {
            return;
        }
        if !(*parse).groupingSets.is_null() {
            return not_pushed(root, "aggregates: GROUPING SETS");
        }
        let Some(mut base) = base(root, input_rel) else {
            return;
        };
        // GROUP BY: plain columns the rulebook groups exactly.
        let mut group_cols: Vec<(usize, u32, *mut pg_sys::Node)> = Vec::new();
        let mut group_exprs: *mut pg_sys::List = std::ptr::null_mut();
        for sgc in PgList::<pg_sys::SortGroupClause>::from_pg((*parse).groupClause).iter_ptr() {
            let expr = pg_sys::get_sortgroupclause_expr(sgc, (*parse).targetList);
            let Some((column, ty)) = base.column(expr) else {
                return not_pushed(root, "aggregates: a GROUP BY item is not a plain column");
            };
            let eq = builtin_opname((*sgc).eqop);
            if eq.as_deref() != Some("=")
                || !pushdown::group_pushable(ty, collation_class(pg_sys::exprCollation(expr)))
            {
                return not_pushed(
                    root,
                    format!(
                        "aggregates: GROUP BY {} (the nodes do not group its values as Postgres does)",
                        base.topology.columns[column].name
                    ),
                );
            }
            group_cols.push((column, (*sgc).tleSortGroupRef, expr));
            group_exprs = pg_sys::lappend(group_exprs, expr.cast());
        }
        // The scan tuple: grouping columns and aggregates the target and
        // HAVING need.
        let mut aggs: Vec<(AggSpec, *mut pg_sys::Node)> = Vec::new();
        let mut filters: Vec<Vec<Pred>> = Vec::new();
        let mut scan_exprs: Vec<*mut pg_sys::Node> = Vec::new();
        let mut slots: Vec<usize> = Vec::new();
        let n_group = group_cols.len();
        let mut add_item = |node: *mut pg_sys::Node,
                            aggs: &mut Vec<(AggSpec, *mut pg_sys::Node)>,
                            base: &mut Base|
         -> bool {
            if scan_exprs
                .iter()
                .any(|&e| pg_sys::equal(e.cast(), node.cast()))
            {
                return true;
            }
            if is(node, pg_sys::NodeTag::T_Aggref) {
                let at = match aggs
                    .iter()
                    .position(|(_, e)| pg_sys::equal((*e).cast(), node.cast()))
                {
                    Some(i) => i,
                    None => {
                        let Some(spec) = agg_spec(base, &mut filters, node.cast()) else {
                            let text = aggref_text(node.cast());
                            let numeric = ["sum", "avg", "min", "max"]
                                .iter()
                                .any(|f| text.starts_with(&format!("{f}(numeric)")));
                            let why = if numeric && !base.topology.decimal_aggregates {
                                "needs conductor-node's decimal aggregates, which a node of the table lacks"
                            } else {
                                "has no exact form on the nodes"
                            };
                            not_pushed(root, format!("aggregates: {text} {why}"));
                            return false;
                        };
                        aggs.push((spec, node));
                        aggs.len() - 1
                    }
                };
                scan_exprs.push(node);
                slots.push(n_group + at);
                return true;
            }
            // A column: only a grouping column can appear outside an aggregate.
            match group_cols.iter().position(|(_, _, e)| {
                pg_sys::equal(strip_relabel(*e).cast(), strip_relabel(node).cast())
            }) {
                Some(g) => {
                    scan_exprs.push(node);
                    slots.push(g);
                    true
                }
                None => {
                    not_pushed(
                        root,
                        "aggregates: an expression outside the aggregates is not a grouping column",
                    );
                    false
                }
            }
        };
        let target = (*grouped_rel).reltarget;
        let flags = (pg_sys::PVC_INCLUDE_AGGREGATES | pg_sys::PVC_RECURSE_PLACEHOLDERS) as i32;
        for (i, expr) in nodes((*target).exprs).into_iter().enumerate() {
            let sgref = if (*target).sortgrouprefs.is_null() {
                0
            } else {
                *(*target).sortgrouprefs.add(i)
            };
            if sgref != 0 && group_cols.iter().any(|(_, r, _)| *r == sgref) {
                if !add_item(expr, &mut aggs, &mut base) {
                    return;
                }
                continue;
            }
            if pg_sys::contain_subplans(expr) {
                return not_pushed(root, "aggregates: a subquery in the target list");
            }
            for item in nodes(pg_sys::pull_var_clause(expr, flags)) {
                if !add_item(item, &mut aggs, &mut base) {
                    return;
                }
            }
        }
        let having = (*extra).havingQual as *mut pg_sys::List;
        if !having.is_null() {
            if pg_sys::contain_subplans(having.cast()) {
                return not_pushed(root, "aggregates: a subquery in HAVING");
            }
            for item in nodes(pg_sys::pull_var_clause(having.cast(), flags)) {
                if !add_item(item, &mut aggs, &mut base) {
                    return;
                }
            }
        }
        let key_index = base.topology.key_index;
        let concat = group_cols.iter().any(|(c, _, _)| *c == key_index);
        let mut select: Vec<RemoteExpr> = group_cols
            .iter()
            .map(|(c, _, _)| RemoteExpr::Column(*c))
            .collect();
        let mut select_filter: Vec<Option<usize>> = vec![None; select.len()];
        for (spec, _) in &aggs {
            for e in spec.remote_exprs() {
                select.push(e);
                select_filter.push(spec.filter);
            }
        }
        if filters.is_empty() {
            select_filter.clear();
        }
        let mut plan = UpperPlan {
            upper: UpperKind::Aggregate,
            relid: base.topology.relid.to_u32(),
            pushed: base.pushed.clone(),
            params: Vec::new(),
            query: PushedQuery {
                select,
                select_filter,
                filters,
                group_by: group_cols.iter().map(|(c, _, _)| *c).collect(),
                ..Default::default()
            },
            n_group,
            aggs: aggs.iter().map(|(s, _)| *s).collect(),
            concat,
            merge: Vec::new(),
            slots,
            local: Vec::new(),
            join: base.join.as_ref().map(|j| j.spec.clone()),
        };
        // Every group on one shard: the HAVING clauses the rulebook passes
        // run on the shards (a shard's count/min/max/bool value is the
        // group's), the rest here.
        let mut local_having: *mut pg_sys::List = std::ptr::null_mut();
        if !having.is_null() {
            let outputs = if concat {
                plan.outputs(&base.topology, &scan_exprs)
            } else {
                Vec::new()
            };
            let topology = base.topology.clone();
            let mut lowering = Lowering::over_outputs(&topology, base.relid, outputs);
            lowering.params = std::mem::take(&mut base.params);
            lowering.arguments = base.arguments;
            for clause in nodes(having) {
                match concat.then(|| lowering.lower(clause)).flatten() {
                    Some(p) => plan.query.having.push(p),
                    None => local_having = pg_sys::lappend(local_having, clause.cast()),
                }
            }
            base.params = lowering.params;
            base.arguments = lowering.arguments;
        }
        plan.params = base.params.iter().map(|(_, s)| *s).collect();
        let sorted = !(*root).sort_pathkeys.is_null();
        let limited = !(*parse).limitCount.is_null() || !(*parse).limitOffset.is_null();
        if !local_having.is_null() {
            plan.local.push(if concat {
                "HAVING (a clause the shards cannot evaluate exactly)".into()
            } else {
                "HAVING, after the merge (a group's rows span shards)".into()
            });
        }
        if !concat && (sorted || limited) {
            plan.local
                .push("ORDER BY/LIMIT, after the merge (a group's rows span shards)".into());
        } else if sorted && grouped_sort_keys(root, &plan, &base.topology, &scan_exprs).is_none() {
            plan.local
                .push("ORDER BY (a key the shards do not sort as Postgres does)".into());
        } else if limited && !local_having.is_null() {
            plan.local
                .push("LIMIT (above a HAVING that runs here)".into());
        }
        let groups = if n_group == 0 {
            1.0
        } else {
            pg_sys::estimate_num_groups(
                root,
                group_exprs,
                base.rows,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
            .min(base.rows)
        };
        let startup = base.startup_cost(UpperKind::Aggregate);
        let total = startup + groups * cpu_tuple_cost();
        let param_exprs: Vec<*mut pg_sys::Expr> = base.params.iter().map(|(e, _)| *e).collect();
        let private = path_private(&plan, &scan_exprs, &param_exprs, local_having);
        let path = pg_sys::create_foreign_upper_path(
            root,
            grouped_rel,
            target,
            groups,
            startup,
            total,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            private,
        );
        pg_sys::add_path(grouped_rel, path.cast());
        // ORDER BY and LIMIT above the groups start from this path.
        (*grouped_rel).fdw_private = private.cast();
    }
}

fn builtin_opname(opno: pg_sys::Oid) -> Option<String> {
    // SAFETY: a syscache lookup by OID.
    unsafe { builtin_object_name(opno, pg_sys::get_opname) }
}

/// The query's ORDER BY as pushed sort keys with each key's column Var, or
/// None when a key is not a plain column the nodes sort as Postgres does.
unsafe fn sort_keys(
    root: *mut pg_sys::PlannerInfo,
    base: &Base,
) -> Option<Vec<(SortKey, *mut pg_sys::Node)>> {
    // SAFETY: planner structures valid during the callback.
    unsafe {
        let mut keys = Vec::new();
        for pk in PgList::<pg_sys::PathKey>::from_pg((*root).sort_pathkeys).iter_ptr() {
            let ec = (*pk).pk_eclass;
            if (*ec).ec_has_volatile {
                return None;
            }
            let mut found = None;
            for em in PgList::<pg_sys::EquivalenceMember>::from_pg((*ec).ec_members).iter_ptr() {
                if (*em).em_is_const {
                    continue;
                }
                let expr = (*em).em_expr as *mut pg_sys::Node;
                if let Some((column, ty)) = base.column(expr) {
                    found = Some((column, ty, expr));
                    break;
                }
            }
            let (column, ty, expr) = found?;
            let descending = sort_direction(pk, expr, ty)?;
            keys.push((
                SortKey {
                    column,
                    descending,
                    nulls_first: (*pk).pk_nulls_first,
                    output: false,
                },
                strip_relabel(expr),
            ));
        }
        Some(keys)
    }
}

/// A plain (not aggregated) upper scan of `target`'s columns, sorted by
/// `keys`, limited by `limit`.
#[allow(clippy::too_many_arguments)]
unsafe fn add_plain_path(
    root: *mut pg_sys::PlannerInfo,
    rel: *mut pg_sys::RelOptInfo,
    target: *mut pg_sys::PathTarget,
    base: &Base,
    keys: Vec<(SortKey, *mut pg_sys::Node)>,
    limit: Option<LimitSpec>,
    upper: UpperKind,
    rows: f64,
) {
    // SAFETY: planner structures valid during the callback.
    unsafe {
        let mut scan_exprs: Vec<*mut pg_sys::Node> = Vec::new();
        let mut columns: Vec<usize> = Vec::new();
        let flags = pg_sys::PVC_RECURSE_PLACEHOLDERS as i32;
        let mut vars = nodes(pg_sys::pull_var_clause((*target).exprs.cast(), flags));
        vars.extend(keys.iter().map(|(_, v)| *v));
        for var in vars {
            let Some((column, _)) = base.column(var) else {
                return; // a whole-row or system column, or another relation
            };
            if !columns.contains(&column) {
                columns.push(column);
                scan_exprs.push(var);
            }
        }
        let merge = keys
            .iter()
            .map(|(k, _)| MergeKey {
                position: columns.iter().position(|&c| c == k.column).expect("added"),
                descending: k.descending,
                nulls_first: k.nulls_first,
            })
            .collect();
        let plan = UpperPlan {
            upper,
            relid: base.topology.relid.to_u32(),
            pushed: base.pushed.clone(),
            params: base.params.iter().map(|(_, s)| *s).collect(),
            query: PushedQuery {
                select: columns.iter().map(|&c| RemoteExpr::Column(c)).collect(),
                order_by: keys.iter().map(|(k, _)| *k).collect(),
                limit,
                ..Default::default()
            },
            n_group: 0,
            aggs: Vec::new(),
            concat: false,
            merge,
            slots: (0..columns.len()).collect(),
            local: Vec::new(),
            join: None,
        };
        let pathkeys = if keys.is_empty() {
            std::ptr::null_mut()
        } else {
            (*root).sort_pathkeys
        };
        // Rows cost as in a base scan (sent in full by every shard); with
        // LIMIT pushed each shard stops at count + offset, so a Limit over
        // an ordered or plain scan (which still receives the shards'
        // buffered streams) costs more per row handed out.
        let per_row = if plan.query.limit.is_some() { 1.0 } else { 2.0 } * cpu_tuple_cost();
        let startup = base.startup_cost(upper);
        let total = startup + rows * per_row;
        let param_exprs: Vec<*mut pg_sys::Expr> = base.params.iter().map(|(e, _)| *e).collect();
        let private = path_private(&plan, &scan_exprs, &param_exprs, std::ptr::null_mut());
        let path = pg_sys::create_foreign_upper_path(
            root,
            rel,
            target,
            rows,
            startup,
            total,
            pathkeys,
            std::ptr::null_mut(),
            private,
        );
        pg_sys::add_path(rel, path.cast());
    }
}

/// Whether the query has a stage between the scan and ORDER BY/LIMIT.
unsafe fn has_middle_stages(parse: *mut pg_sys::Query) -> bool {
    // SAFETY: the planner's Query.
    unsafe {
        (*parse).hasAggs
            || !(*parse).groupClause.is_null()
            || !(*parse).groupingSets.is_null()
            || !(*parse).havingQual.is_null()
            || (*parse).hasWindowFuncs
            || !(*parse).distinctClause.is_null()
            || !(*parse).setOperations.is_null()
    }
}

unsafe fn add_ordered_path(
    root: *mut pg_sys::PlannerInfo,
    input_rel: *mut pg_sys::RelOptInfo,
    ordered_rel: *mut pg_sys::RelOptInfo,
) {
    // SAFETY: planner structures valid during the callback.
    unsafe {
        if let Some(grouped) = stashed(input_rel) {
            add_grouped_ordered_path(root, grouped, ordered_rel);
            return;
        }
        if has_middle_stages((*root).parse) {
            return;
        }
        // A plain path reads one table's rows: over a pushed join it would
        // drop the join (ORDER BY and LIMIT over a join run in Postgres).
        let Some(base) = base(root, input_rel).filter(|b| b.join.is_none()) else {
            return;
        };
        let Some(keys) = sort_keys(root, &base) else {
            return not_pushed(root, SORT_NOT_PUSHED);
        };
        if keys.is_empty() {
            return;
        }
        let target = (*root).upper_targets[pg_sys::UpperRelationKind::UPPERREL_ORDERED as usize];
        add_plain_path(
            root,
            ordered_rel,
            target,
            &base,
            keys,
            None,
            UpperKind::Ordered,
            base.rows,
        );
    }
}

/// A LIMIT or OFFSET expression as an operand: a constant, or a value
/// evaluated when the scan starts (a `$n`).
unsafe fn limit_operand(base: &mut Base, expr: *mut pg_sys::Node) -> Option<Operand> {
    // SAFETY: a planner expression or null.
    unsafe {
        if expr.is_null() {
            return Some(Operand::Const(None));
        }
        if pg_sys::exprType(expr) != pg_sys::INT8OID {
            return None;
        }
        if is(expr, pg_sys::NodeTag::T_Const) {
            let c = &*(expr as *mut pg_sys::Const);
            return Some(Operand::Const(
                (!c.constisnull).then(|| TypedValue::Int8(c.constvalue.value() as i64)),
            ));
        }
        if pg_sys::contain_volatile_functions(expr)
            || pg_sys::contain_subplans(expr)
            || !PgList::<pg_sys::Node>::from_pg(pg_sys::pull_var_clause(expr, 0)).is_empty()
        {
            return None;
        }
        Some(base.param(
            expr,
            ParamSpec {
                ty: ColumnType::Int8,
                list: false,
            },
        ))
    }
}

unsafe fn add_final_path(
    root: *mut pg_sys::PlannerInfo,
    input_rel: *mut pg_sys::RelOptInfo,
    final_rel: *mut pg_sys::RelOptInfo,
    extra: *mut pg_sys::FinalPathExtraData,
) {
    // SAFETY: planner structures valid during the callback.
    unsafe {
        let parse = (*root).parse;
        if extra.is_null()
            || !(*extra).limit_needed
            || (*parse).limitOption == pg_sys::LimitOption::LIMIT_OPTION_WITH_TIES
        {
            return;
        }
        if let Some(grouped) = stashed(input_rel) {
            add_grouped_final_path(root, grouped, final_rel, extra);
            return;
        }
        if has_middle_stages(parse) {
            return;
        }
        // The base relation: the input itself, or below ORDER BY.
        let rel = if (*parse).sortClause.is_null() {
            input_rel
        } else {
            let mut relid = 0;
            if !pg_sys::bms_get_singleton_member((*root).all_baserels, &mut relid) {
                return;
            }
            *(*root).simple_rel_array.add(relid as usize)
        };
        // As for ORDER BY: a plain path cannot stand for a pushed join.
        let Some(mut base) = base(root, rel).filter(|b| b.join.is_none()) else {
            return;
        };
        let keys = if (*parse).sortClause.is_null() {
            Vec::new()
        } else {
            match sort_keys(root, &base) {
                Some(k) if !k.is_empty() => k,
                _ => return not_pushed(root, "LIMIT: below an ORDER BY that stays in Postgres"),
            }
        };
        let Some(count) = limit_operand(&mut base, (*parse).limitCount) else {
            return not_pushed(root, LIMIT_NOT_PUSHED);
        };
        let Some(offset) = limit_operand(&mut base, (*parse).limitOffset) else {
            return not_pushed(root, LIMIT_NOT_PUSHED);
        };
        let target = (*root).upper_targets[pg_sys::UpperRelationKind::UPPERREL_FINAL as usize];
        let rows = if (*extra).limit_tuples > 0.0 {
            (*extra).limit_tuples.min(base.rows)
        } else {
            // A count or offset known only at execution ($n): the rows
            // Postgres estimates for its own Limit node (a tenth of the
            // input for an unknown count). Claiming every row instead made
            // a local Limit over the scan look cheaper, and the LIMIT of a
            // generic plan stayed in Postgres.
            let mut rows = base.rows;
            let (mut startup, mut total) = (0.0, 0.0);
            pg_sys::adjust_limit_rows_costs(
                &mut rows,
                &mut startup,
                &mut total,
                (*extra).offset_est,
                (*extra).count_est,
            );
            rows
        };
        add_plain_path(
            root,
            final_rel,
            target,
            &base,
            keys,
            Some(LimitSpec { count, offset }),
            UpperKind::Limit,
            rows,
        );
    }
}

/// A pushed grouping (or grouping and ORDER BY) as the stages above it
/// find it in their input rel's fdw_private: the path's private list.
struct Stashed {
    plan: UpperPlan,
    scan_exprs: Vec<*mut pg_sys::Node>,
    param_exprs: Vec<*mut pg_sys::Expr>,
    /// What runs locally on the scan's rows (HAVING clauses not pushed).
    quals: *mut pg_sys::List,
    /// The groups the rel estimates.
    rows: f64,
}

unsafe fn stashed(rel: *mut pg_sys::RelOptInfo) -> Option<Stashed> {
    // SAFETY: the rel's fdw_private, when set on an upper rel, was set by
    // add_grouping_path or add_grouped_ordered_path to a path's private list.
    unsafe {
        if rel.is_null()
            || (*rel).reloptkind != pg_sys::RelOptKind::RELOPT_UPPER_REL
            || (*rel).fdw_private.is_null()
        {
            return None;
        }
        let private = nodes((*rel).fdw_private.cast());
        if private.len() != 4 || !is(private[0], pg_sys::NodeTag::T_String) {
            return None;
        }
        let json = CStr::from_ptr((*(private[0] as *mut pg_sys::String)).sval);
        let plan: UpperPlan = serde_json::from_slice(json.to_bytes()).ok()?;
        Some(Stashed {
            plan,
            scan_exprs: nodes(private[1].cast()),
            param_exprs: nodes(private[2].cast())
                .into_iter()
                .map(|e| e.cast())
                .collect(),
            quals: private[3].cast(),
            rows: (*rel).rows,
        })
    }
}

/// The one base relation of the query, as an upper path sees it.
unsafe fn single_base(root: *mut pg_sys::PlannerInfo) -> Option<Base> {
    // SAFETY: planner structures valid during the callback.
    unsafe {
        let mut relid = 0;
        if !pg_sys::bms_get_singleton_member((*root).all_baserels, &mut relid) {
            return None;
        }
        base(root, *(*root).simple_rel_array.add(relid as usize))
    }
}

/// Whether every column and aggregate `target` uses is in the scan tuple.
unsafe fn target_covered(
    target: *mut pg_sys::PathTarget,
    scan_exprs: &[*mut pg_sys::Node],
) -> bool {
    // SAFETY: planner expressions.
    unsafe {
        let flags = (pg_sys::PVC_INCLUDE_AGGREGATES | pg_sys::PVC_RECURSE_PLACEHOLDERS) as i32;
        nodes(pg_sys::pull_var_clause((*target).exprs.cast(), flags))
            .into_iter()
            .all(|item| {
                scan_exprs
                    .iter()
                    .any(|&e| pg_sys::equal(e.cast(), item.cast()))
            })
    }
}

/// ORDER BY over groups that each live on one shard: every shard sorts
/// its groups (by grouping columns, counts, min/max and bool values, which
/// are final there) and the router merges the shards' sorted groups.
unsafe fn add_grouped_ordered_path(
    root: *mut pg_sys::PlannerInfo,
    grouped: Stashed,
    ordered_rel: *mut pg_sys::RelOptInfo,
) {
    // SAFETY: planner structures valid during the callback.
    unsafe {
        let Stashed {
            mut plan,
            scan_exprs,
            param_exprs,
            quals,
            rows,
        } = grouped;
        if !plan.concat || !plan.query.order_by.is_empty() || plan.query.limit.is_some() {
            return;
        }
        let Some(base) = single_base(root) else {
            return;
        };
        let Some(keys) = grouped_sort_keys(root, &plan, &base.topology, &scan_exprs) else {
            return;
        };
        if keys.is_empty() {
            return;
        }
        let target = (*root).upper_targets[pg_sys::UpperRelationKind::UPPERREL_ORDERED as usize];
        if !target_covered(target, &scan_exprs) {
            return;
        }
        plan.query.order_by = keys.iter().map(|(k, _)| *k).collect();
        plan.merge = keys.iter().map(|(_, m)| *m).collect();
        let rows = rows.max(1.0);
        let startup = base.startup_cost(UpperKind::Aggregate) * 0.95;
        let total = startup + rows * cpu_tuple_cost();
        let private = path_private(&plan, &scan_exprs, &param_exprs, quals);
        let path = pg_sys::create_foreign_upper_path(
            root,
            ordered_rel,
            target,
            rows,
            startup,
            total,
            (*root).sort_pathkeys,
            std::ptr::null_mut(),
            private,
        );
        pg_sys::add_path(ordered_rel, path.cast());
        (*ordered_rel).fdw_private = private.cast();
    }
}

/// The query's ORDER BY over grouped rows, as keys on the shards' rows
/// (select positions), or None when a key is not one the shards sort as
/// Postgres does.
unsafe fn grouped_sort_keys(
    root: *mut pg_sys::PlannerInfo,
    plan: &UpperPlan,
    topology: &TableTopology,
    scan_exprs: &[*mut pg_sys::Node],
) -> Option<Vec<(SortKey, MergeKey)>> {
    // SAFETY: planner structures valid during the callback.
    unsafe {
        let mut keys = Vec::new();
        for pk in PgList::<pg_sys::PathKey>::from_pg((*root).sort_pathkeys).iter_ptr() {
            let ec = (*pk).pk_eclass;
            if (*ec).ec_has_volatile {
                return None;
            }
            let mut found = None;
            for em in PgList::<pg_sys::EquivalenceMember>::from_pg((*ec).ec_members).iter_ptr() {
                if (*em).em_is_const {
                    continue;
                }
                let expr = strip_relabel((*em).em_expr as *mut pg_sys::Node);
                let Some(i) = scan_exprs
                    .iter()
                    .position(|&e| pg_sys::equal(strip_relabel(e).cast(), expr.cast()))
                else {
                    continue;
                };
                if let Some((position, ty)) = plan.output_of_slot(plan.slots[i], topology) {
                    found = Some((position, ty, expr));
                    break;
                }
            }
            let (position, ty, expr) = found?;
            let descending = sort_direction(pk, expr, ty)?;
            let nulls_first = (*pk).pk_nulls_first;
            keys.push((
                SortKey {
                    column: position,
                    descending,
                    nulls_first,
                    output: true,
                },
                MergeKey {
                    position,
                    descending,
                    nulls_first,
                },
            ));
        }
        Some(keys)
    }
}

/// LIMIT/OFFSET over groups that each live on one shard (sorted or not),
/// when HAVING went to the shards whole: each shard returns its first
/// count + offset groups, the router merges and stops.
unsafe fn add_grouped_final_path(
    root: *mut pg_sys::PlannerInfo,
    grouped: Stashed,
    final_rel: *mut pg_sys::RelOptInfo,
    extra: *mut pg_sys::FinalPathExtraData,
) {
    // SAFETY: planner structures valid during the callback.
    unsafe {
        let parse = (*root).parse;
        let Stashed {
            mut plan,
            scan_exprs,
            param_exprs,
            quals,
            rows: groups,
        } = grouped;
        let sorted = !(*root).sort_pathkeys.is_null();
        if !plan.concat
            || !quals.is_null()
            || plan.query.limit.is_some()
            || sorted == plan.query.order_by.is_empty()
        {
            return;
        }
        let Some(mut base) = single_base(root) else {
            return;
        };
        base.params = param_exprs
            .iter()
            .copied()
            .zip(plan.params.iter().copied())
            .collect();
        let Some(count) = limit_operand(&mut base, (*parse).limitCount) else {
            return;
        };
        let Some(offset) = limit_operand(&mut base, (*parse).limitOffset) else {
            return;
        };
        let target = (*root).upper_targets[pg_sys::UpperRelationKind::UPPERREL_FINAL as usize];
        if !target_covered(target, &scan_exprs) {
            return;
        }
        plan.query.limit = Some(LimitSpec { count, offset });
        plan.params = base.params.iter().map(|(_, s)| *s).collect();
        let param_exprs: Vec<*mut pg_sys::Expr> = base.params.iter().map(|(e, _)| *e).collect();
        let groups = groups.max(1.0);
        let rows = if (*extra).limit_tuples > 0.0 {
            (*extra).limit_tuples.min(groups)
        } else {
            groups
        };
        let startup = base.startup_cost(UpperKind::Aggregate) * 0.85;
        let total = startup + rows * cpu_tuple_cost();
        let private = path_private(&plan, &scan_exprs, &param_exprs, std::ptr::null_mut());
        let path = pg_sys::create_foreign_upper_path(
            root,
            final_rel,
            target,
            rows,
            startup,
            total,
            if sorted {
                (*root).sort_pathkeys
            } else {
                std::ptr::null_mut()
            },
            std::ptr::null_mut(),
            private,
        );
        pg_sys::add_path(final_rel, path.cast());
    }
}

/// GetForeignPlan of an upper path.
///
/// # Safety
/// Called from get_foreign_plan with a path built here.
pub unsafe fn get_foreign_plan(
    best_path: *mut pg_sys::ForeignPath,
    tlist: *mut pg_sys::List,
    outer_plan: *mut pg_sys::Plan,
) -> *mut pg_sys::ForeignScan {
    // SAFETY: the path's fdw_private was built by path_private.
    unsafe {
        let private = nodes((*best_path).fdw_private);
        let json = private[0];
        let scan_exprs = private[1] as *mut pg_sys::List;
        let fdw_exprs = private[2] as *mut pg_sys::List;
        let quals = private[3] as *mut pg_sys::List;
        let scan_tlist = super::scan_tlist(scan_exprs);
        pg_sys::make_foreignscan(
            tlist,
            quals,
            0,
            fdw_exprs,
            pg_sys::lappend(std::ptr::null_mut(), json.cast()),
            scan_tlist,
            std::ptr::null_mut(),
            outer_plan,
        )
    }
}

/// The upper plan of a ForeignScan, if it is one of ours.
///
/// # Safety
/// `fscan` is a planned ForeignScan.
pub unsafe fn plan_of(fscan: *mut pg_sys::ForeignScan) -> Option<UpperPlan> {
    // SAFETY: per the contract.
    unsafe {
        if (*fscan).scan.scanrelid != 0 {
            return None;
        }
        let first = PgList::<pg_sys::Node>::from_pg((*fscan).fdw_private).get_ptr(0)?;
        if !is(first, pg_sys::NodeTag::T_String) {
            return None;
        }
        let json = CStr::from_ptr((*(first as *mut pg_sys::String)).sval);
        serde_json::from_slice(json.to_bytes()).ok()
    }
}

impl UpperPlan {
    /// Where the value of a scan-tuple slot is in a shard's row, with its
    /// type, when that value is final on the shard that holds the group (a
    /// grouping column, or an aggregate whose partial is its value).
    fn output_of_slot(&self, slot: usize, topology: &TableTopology) -> Option<(usize, ColumnType)> {
        if slot < self.n_group {
            return Some((slot, topology.columns[self.query.group_by[slot]].ty));
        }
        let a = slot - self.n_group;
        let spec = self.aggs.get(a)?;
        if !spec.func.final_on_one_shard() {
            return None;
        }
        let position = self.n_group + self.aggs[..a].iter().map(AggSpec::width).sum::<usize>();
        let ty = match spec.func {
            AggFunc::CountStar | AggFunc::Count => ColumnType::Int8,
            AggFunc::BoolAnd | AggFunc::BoolOr => ColumnType::Bool,
            _ => topology.columns[spec.column?].ty,
        };
        Some((position, ty))
    }

    /// Per position of a shard's row: the scan-tuple expression whose
    /// value it is, final on its shard (null where there is none), and the
    /// value's type; what a HAVING pushed to the shards may compare.
    fn outputs(
        &self,
        topology: &TableTopology,
        scan_exprs: &[*mut pg_sys::Node],
    ) -> Vec<(*mut pg_sys::Node, ColumnType)> {
        let mut out = vec![(std::ptr::null_mut(), ColumnType::Int8); self.query.select.len()];
        for (i, &slot) in self.slots.iter().enumerate() {
            if let Some((position, ty)) = self.output_of_slot(slot, topology) {
                out[position] = (scan_exprs[i], ty);
            }
        }
        out
    }

    /// A readable name of each position of a shard's row.
    fn labels(&self, topology: &TableTopology) -> Vec<String> {
        let name = |c: usize| topology.columns[c].name.clone();
        let mut out: Vec<String> = self.query.group_by.iter().map(|&c| name(c)).collect();
        for a in &self.aggs {
            let label = match a.column {
                None => "count(*)".to_string(),
                Some(c) => format!("{}({})", a.func.name(), name(c)),
            };
            let label = match a.filter {
                Some(_) => format!("{label} FILTER (WHERE …)"),
                None => label,
            };
            out.extend(std::iter::repeat_n(label, a.width()));
        }
        out
    }

    /// What the nodes do and what the router does, for EXPLAIN and
    /// conductor_explain.
    pub fn describe(&self, topology: &TableTopology) -> String {
        let name = |c: usize| topology.columns[c].name.clone();
        let labels = self.labels(topology);
        let mut pushed = Vec::new();
        if !self.aggs.is_empty() {
            let aggs: Vec<String> = labels[self.n_group..].to_vec();
            let mut aggs_unique: Vec<String> = Vec::new();
            for a in aggs {
                if aggs_unique.last() != Some(&a) {
                    aggs_unique.push(a);
                }
            }
            pushed.push(aggs_unique.join(", "));
        }
        if !self.query.group_by.is_empty() {
            let cols: Vec<String> = self.query.group_by.iter().map(|&c| name(c)).collect();
            pushed.push(format!("GROUP BY {}", cols.join(", ")));
        }
        if !self.query.having.is_empty() {
            pushed.push("HAVING (per shard)".to_string());
        }
        if !self.query.order_by.is_empty() {
            let keys: Vec<String> = self
                .query
                .order_by
                .iter()
                .map(|k| {
                    format!(
                        "{}{} NULLS {}",
                        if k.output {
                            labels[k.column].clone()
                        } else {
                            name(k.column)
                        },
                        if k.descending { " DESC" } else { "" },
                        if k.nulls_first { "FIRST" } else { "LAST" }
                    )
                })
                .collect();
            pushed.push(format!("ORDER BY {}", keys.join(", ")));
        }
        if self.query.limit.is_some() {
            pushed.push("LIMIT (count + offset per shard)".to_string());
        }
        let router = match self.upper {
            UpperKind::Aggregate if self.concat && !self.merge.is_empty() => {
                "router merges the shards' sorted groups (each lives on one shard)"
            }
            UpperKind::Aggregate if self.concat => {
                "router concatenates the groups (each lives on one shard)"
            }
            UpperKind::Aggregate => "router combines the partial aggregates of each group",
            UpperKind::Ordered => "router merges the sorted shard streams",
            UpperKind::Limit if self.merge.is_empty() => {
                "router applies OFFSET/LIMIT to the rows as they arrive"
            }
            UpperKind::Limit => "router merges the sorted shard streams, then OFFSET/LIMIT",
        };
        if self.local.is_empty() {
            format!("{}; {router}", pushed.join(" "))
        } else {
            format!(
                "{}; {router}; in Postgres: {}",
                pushed.join(" "),
                self.local.join(", ")
            )
        }
    }
}

// ---------------------------------------------------------------------------
// Execution.

enum Phase {
    NotStarted,
    Streaming(Box<ScanHandle>),
    Finished,
}

/// Combines what the shards return into the scan's rows.
enum Merger {
    /// Rows as they arrive.
    Pass,
    /// Sorted shard streams.
    Sorted(KWayMerge),
    /// Partial aggregates per group.
    Groups(GroupMerge),
    /// Groups that each live on one shard, every shard's sorted.
    SortedGroups(KWayMerge, GroupMerge),
}

impl Merger {
    fn sorted(&mut self) -> Option<&mut KWayMerge> {
        match self {
            Merger::Sorted(m) | Merger::SortedGroups(m, _) => Some(m),
            _ => None,
        }
    }

    /// The next row of the merged sorted streams, finished.
    fn pop(&mut self) -> Option<Vec<Final>> {
        match self {
            Merger::Sorted(m) => m
                .pop()
                .map(|(_, row)| row.into_iter().map(Final::Value).collect()),
            Merger::SortedGroups(m, g) => m
                .pop()
                .map(|(_, row)| g.finish_row(row).unwrap_or_else(|e| merge_error(e))),
            _ => None,
        }
    }
}

struct UpperState {
    /// The table; over a pushed join, both as one (`join::combined`).
    topology: Rc<TableTopology>,
    /// Over a pushed join: the outer and the inner table.
    sides: Option<(Rc<TableTopology>, Rc<TableTopology>)>,
    plan: UpperPlan,
    /// Per scan-tuple column; None for avg of integers or numeric (built
    /// by numeric division).
    codecs: Vec<Option<ColumnCodec>>,
    params: Vec<(*mut pg_sys::ExprState, pg_sys::Oid)>,
    econtext: *mut pg_sys::ExprContext,
    phase: Phase,
    merger: Merger,
    /// Merged rows ready to be handed out.
    ready: VecDeque<Vec<Final>>,
    /// Rows still to skip (OFFSET) and to return (LIMIT; None: all).
    to_skip: i64,
    to_return: Option<i64>,
    last_plan: Option<ShardPlan>,
    shard_stats: Vec<ShardStats>,
    skipped: Vec<ShardError>,
    /// As the plain scan's: copies of a reference table that failed this
    /// read, and whether the running scan received rows.
    failed_copies: Vec<String>,
    delivered: bool,
    scan_urls: Vec<String>,
    /// The running scan's requests, counted as in flight to their nodes.
    in_flight: Option<crate::stats::InFlight>,
}

/// Whether a scan node is an upper scan (scanrelid 0).
///
/// # Safety
/// `node` is a ForeignScanState of this wrapper.
pub unsafe fn is_upper(node: *mut pg_sys::ForeignScanState) -> bool {
    // SAFETY: per the contract.
    unsafe {
        let plan = (*node).ss.ps.plan as *mut pg_sys::ForeignScan;
        (*plan).scan.scanrelid == 0 && !super::join::is_join_scan(plan)
    }
}

unsafe fn state<'a>(node: *mut pg_sys::ForeignScanState) -> &'a mut UpperState {
    // SAFETY: set by begin_foreign_scan.
    unsafe { &mut *((*node).fdw_state as *mut UpperState) }
}

/// # Safety
/// BeginForeignScan of an upper scan.
pub unsafe fn begin_foreign_scan(node: *mut pg_sys::ForeignScanState) {
    // SAFETY: our plan; executor structures valid.
    unsafe {
        let fscan = (*node).ss.ps.plan as *mut pg_sys::ForeignScan;
        let plan = plan_of(fscan)
            .unwrap_or_else(|| error!("conductor: foreign scan plan without conductor data"));
        let sides = plan.join.as_ref().map(|j| {
            let (outer, inner) = (
                cache::table(pg_sys::Oid::from(j.outer)),
                cache::table(pg_sys::Oid::from(j.inner)),
            );
            super::join::check_still_pushable(&outer, &inner);
            (outer, inner)
        });
        let topology = match &sides {
            Some((outer, inner)) => Rc::new(super::join::combined(outer, inner)),
            None => cache::table(pg_sys::Oid::from(plan.relid)),
        };
        let mut codecs = Vec::new();
        for (i, tle) in PgList::<pg_sys::TargetEntry>::from_pg((*fscan).fdw_scan_tlist)
            .iter_ptr()
            .enumerate()
        {
            let expr = (*tle).expr as *mut pg_sys::Node;
            let typoid = pg_sys::exprType(expr);
            let is_exact_avg = plan.upper == UpperKind::Aggregate
                && plan.slots[i] >= plan.n_group
                && matches!(
                    plan.aggs[plan.slots[i] - plan.n_group].func,
                    AggFunc::AvgInt | AggFunc::AvgDecimal
                );
            if is_exact_avg {
                codecs.push(None);
                continue;
            }
            let ty = column_type_of(typoid)
                .unwrap_or_else(|| error!("conductor: unexpected type in an upper scan"));
            codecs.push(Some(ColumnCodec::new(
                &format!("column {}", i + 1),
                ty,
                typoid,
                pg_sys::exprTypmod(expr),
            )));
        }
        let params = init_params((*fscan).fdw_exprs, node.cast());
        let state = UpperState {
            topology,
            sides,
            plan,
            codecs,
            params,
            econtext: (*node).ss.ps.ps_ExprContext,
            phase: Phase::NotStarted,
            merger: Merger::Pass,
            ready: VecDeque::new(),
            to_skip: 0,
            to_return: None,
            last_plan: None,
            shard_stats: Vec::new(),
            skipped: Vec::new(),
            failed_copies: Vec::new(),
            delivered: false,
            scan_urls: Vec::new(),
            in_flight: None,
        };
        (*node).fdw_state = PgMemoryContexts::CurrentMemoryContext
            .leak_and_drop_on_delete(state)
            .cast();
    }
}

fn merge_error(e: impl std::fmt::Display) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
        e.to_string(),
    )
    .error()
}

/// A pushed LIMIT/OFFSET's values, or Postgres' own error for a negative
/// one (what its Limit node raises when the clause stays local).
pub fn limit_values(spec: &LimitSpec, bindings: &[Binding]) -> LimitValues {
    match spec.values(bindings) {
        Ok(v) => v,
        Err(LimitError::NegativeOffset) => raise(
            PgSqlErrorCode::ERRCODE_INVALID_ROW_COUNT_IN_RESULT_OFFSET_CLAUSE,
            "OFFSET must not be negative",
        )
        .error(),
        Err(LimitError::NegativeCount) => raise(
            PgSqlErrorCode::ERRCODE_INVALID_ROW_COUNT_IN_LIMIT_CLAUSE,
            "LIMIT must not be negative",
        )
        .error(),
        Err(LimitError::Bad(e)) => error!("conductor: bad LIMIT/OFFSET value: {e}"),
    }
}

impl UpperState {
    /// What every shard runs, with the statement's parameters bound
    /// (`None`: the template, for EXPLAIN before execution).
    fn shard_plan(&self, topology: &TableTopology, bindings: Option<&[Binding]>) -> ShardPlan {
        let kind = StatementKind::Pushed(self.plan.query.clone());
        match (&self.sides, &self.plan.join, bindings) {
            (Some((outer, inner)), Some(join), b) => {
                ShardPlan::join_pushed(outer, inner, &join.query, &self.plan.query, b)
                    .unwrap_or_else(|e| {
                        raise(
                            PgSqlErrorCode::ERRCODE_FDW_ERROR,
                            format!("conductor: cannot build the shard statements: {e}"),
                        )
                        .error()
                    })
            }
            (_, _, Some(b)) => crate::fdw::scan::bound_plan(topology, &self.plan.pushed, b, &kind),
            (_, _, None) => ShardPlan::template(topology, &self.plan.pushed, &kind),
        }
    }

    unsafe fn start(&mut self) {
        let bindings = unsafe { eval_bindings(&self.params, &self.plan.params, self.econtext) };
        let topology = self.topology.for_reads(&self.failed_copies);
        self.delivered = false;
        let limit = self
            .plan
            .query
            .limit
            .as_ref()
            .map(|spec| limit_values(spec, &bindings));
        let LimitValues { count, offset } = limit.unwrap_or(LimitValues {
            count: None,
            offset: 0,
        });
        self.to_skip = offset;
        self.to_return = count;
        self.ready.clear();
        let plan = self.shard_plan(&topology, Some(&bindings));
        let shards = plan.shard_ids();
        self.merger = if !self.plan.aggs.is_empty() || self.plan.upper == UpperKind::Aggregate {
            let groups = GroupMerge::new(self.plan.n_group, self.plan.aggs.clone());
            if self.plan.concat && !self.plan.merge.is_empty() {
                let sorted = KWayMerge::new(shards.iter().copied(), self.plan.merge.clone());
                Merger::SortedGroups(sorted, groups)
            } else {
                Merger::Groups(groups)
            }
        } else if !self.plan.merge.is_empty() {
            Merger::Sorted(KWayMerge::new(
                shards.iter().copied(),
                self.plan.merge.clone(),
            ))
        } else {
            Merger::Pass
        };
        if count == Some(0) {
            // LIMIT 0: nothing to fetch (Postgres' Limit does not run its input).
            self.last_plan = Some(plan);
            self.phase = Phase::Finished;
            return;
        }
        changed::check_read(&topology, &plan, true);
        if let Some((_, inner)) = &self.sides {
            changed::check_read(inner, &plan, false);
        }
        if let Some(access) = crate::fdw::scan::read_access(&topology, &plan, false) {
            // Through this transaction's streams (whole): its own writes,
            // its snapshot under REPEATABLE READ.
            let results = streams::run_plan(&topology, &plan, access);
            self.last_plan = Some(plan);
            for (shard, r) in results {
                unsafe { self.accept(shard, r.rows) };
            }
            for shard in shards {
                self.shard_done(shard);
            }
            unsafe { self.finish_all() };
            self.phase = Phase::Finished;
            return;
        }
        stats::plan_sent(topology.relid, topology.shards.len(), &shards, false);
        if let (Some((_, inner)), Some(join)) = (&self.sides, &self.plan.join) {
            if !join.query.inner_reference {
                stats::plan_sent(inner.relid, inner.shards.len(), &shards, false);
            }
        }
        let (queries, refused) = reachable_queries(&topology, &plan);
        for err in refused {
            if let Some(shard) = err.shard_id {
                self.shard_done(shard);
            }
            self.skipped.push(err);
        }
        let width = self.plan.query.select.len().max(1);
        self.last_plan = Some(plan);
        self.scan_urls = queries.iter().map(|q| q.endpoint.url.clone()).collect();
        self.in_flight =
            Some(crate::stats::InFlight::per_node(queries.iter().map(|q| {
                (q.endpoint.url.as_str(), q.endpoint.node_id.as_str())
            })));
        if queries.is_empty() {
            unsafe { self.finish_all() };
            self.phase = Phase::Finished;
            warn_skipped(&mut self.skipped);
            return;
        }
        // Without a LIMIT of its own, a lone shard's answer (one group's
        // aggregates, a tenant's rows in order) is usually small.
        let rows = if self.plan.query.limit.is_none() {
            remote::ShardRows::Unknown
        } else {
            remote::ShardRows::Streamed
        };
        self.phase = Phase::Streaming(Box::new(remote::scan(queries, width, rows)));
    }

    fn shard_done(&mut self, shard: u32) {
        if let Some(m) = self.merger.sorted() {
            m.finish(shard);
        }
    }

    /// Rows of one shard.
    unsafe fn accept(&mut self, shard: u32, rows: Vec<Vec<Value>>) {
        let width = self.plan.query.select.len().max(1);
        if rows.iter().any(|r| r.len() != width) {
            let p = &self.topology.shards[shard as usize];
            raise(
                PgSqlErrorCode::ERRCODE_FDW_INVALID_DATA_TYPE,
                "conductor: node returned rows of the wrong width",
            )
            .detail(format!("node {} ({}), shard {shard}", p.node_id, p.url))
            .error()
        }
        match &mut self.merger {
            Merger::Pass => self.ready.extend(
                rows.into_iter()
                    .map(|r| r.into_iter().map(Final::Value).collect()),
            ),
            Merger::Sorted(m) | Merger::SortedGroups(m, _) => m.push(shard, rows),
            Merger::Groups(g) if self.plan.concat => {
                for row in rows {
                    let finished = g.finish_row(row).unwrap_or_else(|e| merge_error(e));
                    self.ready.push_back(finished);
                }
            }
            Merger::Groups(g) => {
                for row in rows {
                    g.push(row).unwrap_or_else(|e| merge_error(e));
                }
            }
        }
    }

    /// Move what the merge can tell into `ready`.
    fn drain_sorted(&mut self) {
        if let Some(m) = self.merger.sorted() {
            if let Phase::Streaming(handle) = &self.phase {
                for shard in m.waiting_for() {
                    if handle.shard_finished(shard) {
                        m.finish(shard);
                    }
                }
            }
            while let Some(row) = self.merger.pop() {
                self.ready.push_back(row);
            }
        }
    }

    /// Every shard has finished.
    unsafe fn finish_all(&mut self) {
        match std::mem::replace(&mut self.merger, Merger::Pass) {
            mut sorted @ (Merger::Sorted(_) | Merger::SortedGroups(..)) => {
                if let Some(m) = sorted.sorted() {
                    m.finish_all();
                }
                while let Some(row) = sorted.pop() {
                    self.ready.push_back(row);
                }
            }
            Merger::Groups(g) if !self.plan.concat => {
                let rows = g.finish().unwrap_or_else(|e| merge_error(e));
                self.ready.extend(rows);
            }
            _ => {}
        }
    }

    fn stop(&mut self) {
        self.stop_failed(None)
    }

    /// [`stop`](Self::stop) at a shard's failure: the failed node's request
    /// is counted as failed, not here.
    fn stop_failed(&mut self, failed: Option<&str>) {
        if let Phase::Streaming(handle) = std::mem::replace(&mut self.phase, Phase::Finished) {
            let stats =
                crate::remote::count_stopped_scan(&handle, &self.topology, &self.scan_urls, failed);
            self.shard_stats.extend(stats);
        }
        self.ready.clear();
    }

    /// The next row of the scan, or None at the end.
    unsafe fn next_row(&mut self) -> Option<Vec<Final>> {
        loop {
            if self.to_return == Some(0) {
                self.stop();
                return None;
            }
            if let Some(row) = self.ready.pop_front() {
                if self.to_skip > 0 {
                    self.to_skip -= 1;
                    continue;
                }
                if let Some(n) = &mut self.to_return {
                    *n -= 1;
                }
                return Some(row);
            }
            let poll = match &mut self.phase {
                Phase::Finished => return None,
                Phase::NotStarted => {
                    unsafe { self.start() };
                    continue;
                }
                Phase::Streaming(handle) => handle.next(POLL_INTERVAL),
            };
            match poll {
                ScanPoll::Rows(chunk) => {
                    self.delivered |= !chunk.rows.is_empty();
                    unsafe { self.accept(chunk.shard_id, chunk.rows) }
                }
                ScanPoll::Pending => {
                    pgrx::check_for_interrupts!();
                }
                ScanPoll::Done => {
                    unsafe { self.finish_all() };
                    if let Phase::Streaming(handle) =
                        std::mem::replace(&mut self.phase, Phase::Finished)
                    {
                        crate::remote::log_scan(&self.topology.table.name, handle.stats());
                        crate::remote::count_scan(
                            self.topology.relid,
                            &self.scan_urls,
                            handle.stats(),
                        );
                        self.shard_stats.extend_from_slice(handle.stats());
                    }
                    self.in_flight = None;
                    scan_done(std::mem::take(&mut self.scan_urls), &mut self.skipped);
                }
                ScanPoll::Failed(err)
                    if fails_over(
                        &self.topology,
                        &err,
                        self.delivered,
                        &mut self.failed_copies,
                    ) =>
                {
                    self.stop_failed(Some(&err.url));
                    self.phase = Phase::NotStarted;
                }
                ScanPoll::Failed(err) if skippable(&err) => {
                    if let Some(s) = err.shard_id {
                        self.shard_done(s);
                    }
                    skip_failed(err, &mut self.skipped)
                }
                ScanPoll::Failed(err) => {
                    // The other nodes' requests were sent: they count.
                    self.stop_failed(Some(&err.url));
                    fail_scan(&err)
                }
            }
            self.drain_sorted();
        }
    }

    /// Put a merged row into the scan slot.
    unsafe fn store(&self, slot: *mut pg_sys::TupleTableSlot, row: Vec<Final>) {
        // SAFETY: the slot's descriptor is fdw_scan_tlist's, one column per slot.
        unsafe {
            let natts = (*(*slot).tts_tupleDescriptor).natts as usize;
            let values = std::slice::from_raw_parts_mut((*slot).tts_values, natts);
            let nulls = std::slice::from_raw_parts_mut((*slot).tts_isnull, natts);
            nulls.fill(true);
            for (i, &at) in self.plan.slots.iter().enumerate().take(natts) {
                let datum = match (&row[at], &self.codecs[i]) {
                    (Final::Avg(None), _) => None,
                    (Final::Avg(Some((sum, count))), _) => {
                        // Postgres' own numeric division, as avg's final
                        // function does: same value, same scale.
                        let sum = AnyNumeric::try_from(sum.as_str())
                            .unwrap_or_else(|e| error!("conductor: bad sum {sum}: {e}"));
                        let avg = sum / AnyNumeric::from(*count);
                        avg.into_datum()
                    }
                    (Final::Value(v), Some(codec)) => match codec.decode(v) {
                        Ok(d) => d,
                        Err(e) => raise(
                            PgSqlErrorCode::ERRCODE_FDW_INVALID_DATA_TYPE,
                            format!("conductor: node returned a value that does not fit: {e}"),
                        )
                        .error(),
                    },
                    (Final::Value(_), None) => error!("conductor: no codec for an upper column"),
                };
                if let Some(d) = datum {
                    values[i] = d;
                    nulls[i] = false;
                }
            }
            pg_sys::ExecStoreVirtualTuple(slot);
        }
    }
}

/// # Safety
/// IterateForeignScan of an upper scan.
pub unsafe fn iterate_foreign_scan(
    node: *mut pg_sys::ForeignScanState,
) -> *mut pg_sys::TupleTableSlot {
    // SAFETY: our state and the node's scan slot.
    unsafe {
        let state = state(node);
        let slot = (*node).ss.ss_ScanTupleSlot;
        pg_sys::ExecClearTuple(slot);
        if let Some(row) = state.next_row() {
            state.store(slot, row);
        }
        slot
    }
}

/// # Safety
/// ReScanForeignScan of an upper scan.
pub unsafe fn re_scan_foreign_scan(node: *mut pg_sys::ForeignScanState) {
    // SAFETY: our state; dropping the handle cancels in-flight requests.
    unsafe {
        let state = state(node);
        state.phase = Phase::NotStarted;
        state.ready.clear();
        // The last run's LIMIT may be used up: a used-up count would end
        // the next run before it starts (start() sets both again).
        state.to_return = None;
        state.to_skip = 0;
    }
}

/// # Safety
/// EndForeignScan of an upper scan.
pub unsafe fn end_foreign_scan(node: *mut pg_sys::ForeignScanState) {
    // SAFETY: our state, if begun.
    unsafe {
        if !(*node).fdw_state.is_null() {
            state(node).stop();
        }
    }
}

/// # Safety
/// ExplainForeignScan of an upper scan.
pub unsafe fn explain_foreign_scan(
    node: *mut pg_sys::ForeignScanState,
    es: *mut pg_sys::ExplainState,
) {
    // SAFETY: our state and the explain state.
    unsafe {
        let state = state(node);
        let plan = match &state.last_plan {
            Some(p) => p.clone(),
            None => {
                let mut p = state.shard_plan(&state.topology, None);
                // A pushed join is routed by its shard keys only.
                if state.plan.join.is_none() {
                    crate::vindex::annotate(&state.topology, &state.plan.pushed, &mut p);
                }
                p
            }
        };
        explain_text(
            c"Relations",
            &format!(
                "{} on ({})",
                match state.plan.upper {
                    UpperKind::Aggregate => "Aggregate",
                    UpperKind::Ordered => "Ordered",
                    UpperKind::Limit => "Limit",
                },
                state.topology.name
            ),
            es,
        );
        if let (Some((outer, inner)), Some(join)) = (&state.sides, &state.plan.join) {
            explain_text(c"Join", &super::join::describe(join, outer, inner), es);
        }
        explain_text(c"Pushed", &state.plan.describe(&state.topology), es);
        let mut tables = vec![&*state.topology];
        if let Some((_, inner)) = &state.sides {
            tables.push(inner);
        }
        crate::fdw::scan::explain_plan_tables(&tables, &plan, state.plan.params.len(), "", es);
        if (*es).analyze {
            crate::fdw::scan::explain_shard_stats(&state.shard_stats, es);
        }
    }
}

/// Whether the nodes can sort `expr` (of conductor type `ty`) as the
/// pathkey asks, and then whether descending: the ordering must be the
/// type's default btree order, the rulebook must push a sort of it under
/// the pathkey's collation, and the strategy plain < or >.
///
/// # Safety
/// `pk` is a valid PathKey of the planner and `expr` a valid expression.
unsafe fn sort_direction(
    pk: *mut pg_sys::PathKey,
    expr: *mut pg_sys::Node,
    ty: ColumnType,
) -> Option<bool> {
    // SAFETY: per the contract; pk_eclass of a PathKey is never null.
    unsafe {
        let ec = (*pk).pk_eclass;
        let opclass = pg_sys::GetDefaultOpClass(pg_sys::exprType(expr), pg_sys::BTREE_AM_OID);
        if opclass == pg_sys::Oid::INVALID
            || pg_sys::get_opclass_family(opclass) != (*pk).pk_opfamily
            || !pushdown::sort_pushable(ty, collation_class((*ec).ec_collation))
        {
            return None;
        }
        match (*pk).pk_strategy as u32 {
            pg_sys::BTLessStrategyNumber => Some(false),
            pg_sys::BTGreaterStrategyNumber => Some(true),
            _ => None,
        }
    }
}
