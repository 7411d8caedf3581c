//! Join pushdown (GetForeignJoinPaths): an inner or LEFT join of two
//! co-located distributed tables whose condition equates their shard keys
//! runs per shard as one SQL join on the node that holds shard i of both
//! (`ShardPlan::join`). Equal keys hash to the same shard, so every row
//! pair of the result is a pair of one shard, and an outer row's matches
//! all live on its own shard.
//!
//! Every clause goes through the rulebook as a scan's do (`lower.rs` over
//! the join's column space); what it refuses stays a local filter above the
//! join when that is equivalent (an inner join; the WHERE of a LEFT join,
//! which applies after it), and otherwise the join stays in Postgres (an ON
//! condition or a condition on the inner table of a LEFT join, which must
//! apply before it). A join that is not pushed says why in the EXPLAIN of
//! its scans.
//!
//! The plan is a ForeignScan with `scanrelid = 0`: its tuple is described
//! by `fdw_scan_tlist` (plain columns of both tables) and its fdw_private
//! carries a `ScanPlan` whose `join` says what runs; execution is the scan's
//! (`scan.rs`), with the outer table's shard locations.

use crate::catalog::{cache, TableTopology};
use crate::fdw::lower::{collation_class, is, list_nodes, strip_relabel, Lowering};
use crate::fdw::scan::ScanPlan;
use conductor_core::plan::{JoinQuery, JoinType, RouteKind, ShardPlan};
use conductor_core::predicate::{CmpOp, Pred};
use pgrx::prelude::*;
use pgrx::PgList;
use serde::{Deserialize, Serialize};
use std::ffi::CString;

/// Cost of one HTTP round trip, as for scans.
const REQUEST_COST: f64 = 100.0;
const PER_SHARD_COST: f64 = 10.0;

/// What a pushed join runs, in its ScanPlan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinSpec {
    /// The outer and inner foreign tables (oids).
    pub outer: u32,
    pub inner: u32,
    pub query: JoinQuery,
    /// The range-table indexes of the outer and inner table in the query
    /// that planned the join (an upper path over it maps Vars by them).
    #[serde(default)]
    pub rtis: (u32, u32),
    /// The most arguments its conditions bind (`Lowering::arguments`),
    /// which an aggregate's FILTER pushed with the join adds to.
    #[serde(default)]
    pub arguments: usize,
}

/// The second element of a join scan's fdw_private: tells it apart from an
/// upper scan (also `scanrelid = 0`) without reading the JSON.
const JOIN_MARK: &std::ffi::CStr = c"join";

/// Whether a ForeignScan is a pushed join.
///
/// # Safety
/// `fscan` is a planned ForeignScan of this wrapper.
pub unsafe fn is_join_scan(fscan: *mut pg_sys::ForeignScan) -> bool {
    // SAFETY: per the contract.
    unsafe {
        if (*fscan).scan.scanrelid != 0 {
            return false;
        }
        let private = PgList::<pg_sys::Node>::from_pg((*fscan).fdw_private);
        private.len() == 2
            && private.get_ptr(1).is_some_and(|n| {
                is(n, pg_sys::NodeTag::T_String)
                    && std::ffi::CStr::from_ptr((*(n as *mut pg_sys::String)).sval) == JOIN_MARK
            })
    }
}

unsafe fn rte_oid(root: *mut pg_sys::PlannerInfo, rti: u32) -> pg_sys::Oid {
    // SAFETY: simple_rte_array has an entry for every base relation index.
    unsafe { (**(*root).simple_rte_array.add(rti as usize)).relid }
}

/// Record on a base rel why its join stays in Postgres (the scan's EXPLAIN
/// shows it as "Not pushed").
unsafe fn note(rel: *mut pg_sys::RelOptInfo, why: &str) {
    // SAFETY: a base rel of this wrapper during planning; its fdw_private
    // is the list of such reasons (see upper::not_pushed_reasons).
    unsafe {
        if super::upper::not_pushed_reasons(rel)
            .iter()
            .any(|r| r == why)
        {
            return;
        }
        let Ok(c) = CString::new(why) else {
            return;
        };
        let node = pg_sys::makeString(pg_sys::pstrdup(c.as_ptr()));
        (*rel).fdw_private = pg_sys::lappend((*rel).fdw_private.cast(), node.cast()).cast();
    }
}

/// Whether the planner guarantees `outer key = inner key` on every joined
/// row: one equivalence class holds both keys (an inner join's
/// `o.k = l.k`, also when a constant made the planner drop the clause
/// itself), under built-in equality with a deterministic collation.
unsafe fn keys_equivalent(
    root: *mut pg_sys::PlannerInfo,
    outer_rti: u32,
    outer_key: i16,
    inner_rti: u32,
    inner_key: i16,
) -> bool {
    // SAFETY: planner structures valid during the callback.
    unsafe {
        for ec in PgList::<pg_sys::EquivalenceClass>::from_pg((*root).eq_classes).iter_ptr() {
            if (*ec).ec_has_volatile
                || !(*ec).ec_merged.is_null()
                || collation_class((*ec).ec_collation)
                    == conductor_core::pushdown::CollationClass::Nondeterministic
            {
                continue;
            }
            let builtin = PgList::<pg_sys::Oid>::from_pg((*ec).ec_opfamilies)
                .iter_oid()
                .all(|f| f.to_u32() < pg_sys::FirstNormalObjectId);
            if !builtin {
                continue;
            }
            let mut found = [false, false];
            for em in PgList::<pg_sys::EquivalenceMember>::from_pg((*ec).ec_members).iter_ptr() {
                let e = strip_relabel((*em).em_expr.cast());
                if !is(e, pg_sys::NodeTag::T_Var) {
                    continue;
                }
                let v = &*(e as *mut pg_sys::Var);
                if v.varlevelsup != 0 {
                    continue;
                }
                if v.varno == outer_rti as i32 && v.varattno == outer_key {
                    found[0] = true;
                }
                if v.varno == inner_rti as i32 && v.varattno == inner_key {
                    found[1] = true;
                }
            }
            if found == [true, true] {
                return true;
            }
        }
        false
    }
}

/// Whether `pred` is `outer key = inner key` (either way round).
fn is_key_equality(pred: &Pred, outer_key: usize, inner_key: usize) -> bool {
    matches!(pred, Pred::Columns { left, op: CmpOp::Eq, right }
        if (*left, *right) == (outer_key, inner_key) || (*left, *right) == (inner_key, outer_key))
}

/// Why two tables cannot be joined per shard, or None when they can.
fn colocation_refusal(outer: &TableTopology, inner: &TableTopology) -> Option<String> {
    if outer.server_id != inner.server_id {
        return Some("the tables are on different servers".into());
    }
    if outer.colocation_id != inner.colocation_id {
        return Some(format!(
            "{} and {} are not co-located (co-location groups {} and {})",
            outer.name, inner.name, outer.colocation_id, inner.colocation_id
        ));
    }
    let same_nodes = outer.shard_count() == inner.shard_count()
        && outer
            .shards
            .iter()
            .zip(&inner.shards)
            .all(|(a, b)| a.node_id == b.node_id);
    if !same_nodes {
        return Some(format!(
            "{} and {} do not have every shard on the same node",
            outer.name, inner.name
        ));
    }
    None
}

/// At execution, before any node is asked: the tables of a join planned to
/// run per shard still allow it. A shard move that committed after the
/// plan was made (a cached plan is planned again once the move's switch
/// reaches this backend, so only a move racing the statement) may have
/// split them: run as planned, the join would read a shard table where the
/// other table's shard no longer is (a partial copy, or none).
pub fn check_still_pushable(outer: &TableTopology, inner: &TableTopology) {
    let why = if inner.is_reference() {
        reference_refusal(outer, inner)
    } else {
        colocation_refusal(outer, inner)
    };
    if let Some(why) = why {
        crate::errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
            format!(
                "conductor: the join of {} and {} was planned to run on the nodes, but {why}",
                outer.name, inner.name
            ),
        )
        .detail("A shard move changed where their shards are after the statement was planned.")
        .hint("Retry the statement.")
        .error()
    }
}

/// Why a distributed table cannot be joined per shard with a reference
/// table, or None when every node holding one of its shards has a copy.
fn reference_refusal(outer: &TableTopology, inner: &TableTopology) -> Option<String> {
    if outer.server_id != inner.server_id {
        return Some("the tables are on different servers".into());
    }
    let missing: Vec<&str> = outer
        .node_ids()
        .into_iter()
        .filter(|n| !inner.replicas.iter().any(|r| r.node_id == *n))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "reference table {} has no copy on {}",
            inner.name,
            missing.join(", ")
        )
    })
}

/// What the planner hands over in the path's fdw_private until the plan
/// is made: the ScanPlan JSON, the local quals, fdw_exprs, the scan tlist.
unsafe fn path_private(
    plan: &ScanPlan,
    local: *mut pg_sys::List,
    fdw_exprs: *mut pg_sys::List,
    tlist_exprs: *mut pg_sys::List,
) -> *mut pg_sys::List {
    // SAFETY: palloc'd in the planner's context.
    unsafe {
        let mut private = super::private_from(plan);
        private = pg_sys::lappend(private, local.cast());
        private = pg_sys::lappend(private, fdw_exprs.cast());
        pg_sys::lappend(private, tlist_exprs.cast())
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn get_foreign_join_paths(
    root: *mut pg_sys::PlannerInfo,
    joinrel: *mut pg_sys::RelOptInfo,
    outerrel: *mut pg_sys::RelOptInfo,
    innerrel: *mut pg_sys::RelOptInfo,
    jointype: pg_sys::JoinType::Type,
    extra: *mut pg_sys::JoinPathExtraData,
) {
    // SAFETY: planner structures valid during the callback; everything built
    // here is palloc'd in the planner's context.
    unsafe {
        let parse = (*root).parse;
        if (*parse).commandType != pg_sys::CmdType::CMD_SELECT
            || !(*parse).rowMarks.is_null()
            || !super::rel_is_one_table(root, outerrel)
            || !super::rel_is_one_table(root, innerrel)
            || !pg_sys::bms_is_empty((*joinrel).lateral_relids)
        {
            return;
        }
        let join_type = match jointype {
            pg_sys::JoinType::JOIN_INNER => JoinType::Inner,
            pg_sys::JoinType::JOIN_LEFT => JoinType::Left,
            _ => return, // RIGHT is tried as LEFT with the sides swapped
        };
        let (outer_rti, inner_rti) = ((*outerrel).relid, (*innerrel).relid);
        let (Some(outer), Some(inner)) = (
            cache::try_table(rte_oid(root, outer_rti)),
            cache::try_table(rte_oid(root, inner_rti)),
        ) else {
            return;
        };
        let refuse = |why: String| {
            let why = format!("join of {} and {}: {why}", outer.name, inner.name);
            note(outerrel, &why);
            note(innerrel, &why);
        };
        // A placeholder (an expression of a subquery below an outer join)
        // evaluated at this join would have to be computed on the nodes.
        let placeholder = PgList::<pg_sys::PlaceHolderInfo>::from_pg((*root).placeholder_list)
            .iter_ptr()
            .any(|ph| pg_sys::bms_is_subset((*ph).ph_eval_at, (*joinrel).relids));
        if placeholder {
            return refuse("an expression of a subquery below an outer join".into());
        }
        if (*root).hasPseudoConstantQuals {
            return refuse("a condition without columns stays in Postgres".into());
        }
        if outer.is_reference() {
            // An inner join is also offered with the sides swapped.
            return refuse(format!(
                "{} is a reference table on the outer side",
                outer.name
            ));
        }
        let inner_reference = inner.is_reference();
        if inner_reference {
            if let Some(why) = reference_refusal(&outer, &inner) {
                return refuse(why);
            }
        } else if let Some(why) = colocation_refusal(&outer, &inner) {
            return refuse(why);
        }

        let mut lowering = Lowering::over_join(&outer, outer_rti, &inner, inner_rti);
        let mut on = Vec::new();
        let mut filter = Vec::new();
        let mut local: *mut pg_sys::List = std::ptr::null_mut();

        // The tables' own restrictions.
        for (rel, is_inner) in [(outerrel, false), (innerrel, true)] {
            for rinfo in PgList::<pg_sys::RestrictInfo>::from_pg((*rel).baserestrictinfo).iter_ptr()
            {
                let clause = (*rinfo).clause;
                match lowering.lower(clause.cast()) {
                    Some(p) if is_inner && join_type == JoinType::Left => on.push(p),
                    Some(p) => filter.push(p),
                    None if is_inner && join_type == JoinType::Left => {
                        return refuse(
                            "a condition on the inner table of a LEFT JOIN that the nodes cannot evaluate exactly".into(),
                        )
                    }
                    None => local = pg_sys::lappend(local, clause.cast()),
                }
            }
        }
        // The join's clauses: ON conditions, and (after an outer join) the
        // WHERE conditions over both tables.
        for rinfo in PgList::<pg_sys::RestrictInfo>::from_pg((*extra).restrictlist).iter_ptr() {
            let clause = (*rinfo).clause;
            let pushed_down = (*rinfo).is_pushed_down
                || !pg_sys::bms_is_subset((*rinfo).required_relids, (*joinrel).relids);
            let in_on = join_type == JoinType::Left && !pushed_down;
            match lowering.lower(clause.cast()) {
                Some(p) if in_on || join_type == JoinType::Inner => on.push(p),
                Some(p) => filter.push(p),
                None if in_on => {
                    return refuse(
                        "an ON condition of the LEFT JOIN that the nodes cannot evaluate exactly"
                            .into(),
                    )
                }
                None => local = pg_sys::lappend(local, clause.cast()),
            }
        }

        let n = outer.columns.len();
        let (outer_key, inner_key) = (outer.key_index, n + inner.key_index);
        let equated = match join_type {
            JoinType::Left => on.iter().any(|p| is_key_equality(p, outer_key, inner_key)),
            JoinType::Inner => {
                on.iter()
                    .chain(&filter)
                    .any(|p| is_key_equality(p, outer_key, inner_key))
                    || keys_equivalent(
                        root,
                        outer_rti,
                        outer.key().attnum,
                        inner_rti,
                        inner.key().attnum,
                    )
            }
        };
        if !equated && !inner_reference {
            return refuse(format!(
                "the join condition does not equate the shard keys {} and {}",
                outer.key().name,
                inner.key().name
            ));
        }

        // The scan tuple: the columns above the join needs and those the
        // local filters read.
        let flags = pg_sys::PVC_RECURSE_PLACEHOLDERS as i32;
        let mut tlist = pg_sys::add_to_flat_tlist(
            std::ptr::null_mut(),
            pg_sys::pull_var_clause((*(*joinrel).reltarget).exprs.cast(), flags),
        );
        tlist = pg_sys::add_to_flat_tlist(tlist, pg_sys::pull_var_clause(local.cast(), flags));
        let mut outputs = Vec::new();
        let mut tlist_exprs: *mut pg_sys::List = std::ptr::null_mut();
        for tle in PgList::<pg_sys::TargetEntry>::from_pg(tlist).iter_ptr() {
            let e = (*tle).expr as *mut pg_sys::Node;
            if !is(e, pg_sys::NodeTag::T_Var) {
                return refuse("an output that is not a plain column".into());
            }
            let v = &*(e as *mut pg_sys::Var);
            let (topology, offset) = if v.varno == outer_rti as i32 {
                (&outer, 0)
            } else if v.varno == inner_rti as i32 {
                (&inner, n)
            } else {
                return;
            };
            if v.varattno <= 0 {
                return refuse("a whole-row or system column".into());
            }
            let Some(index) = topology.column_index(v.varattno) else {
                return;
            };
            outputs.push(offset + index);
            tlist_exprs = pg_sys::lappend(tlist_exprs, e.cast());
        }

        let query = JoinQuery {
            join_type,
            outputs,
            on,
            filter,
            inner_reference,
        };
        let template = ShardPlan::join_template(&outer, &inner, &query);
        let shards = match template.kind {
            RouteKind::AtExecution => 1,
            _ => template.statements.len(),
        };
        let mut fdw_exprs: *mut pg_sys::List = std::ptr::null_mut();
        for (expr, _) in &lowering.params {
            fdw_exprs = pg_sys::lappend(fdw_exprs, (*expr).cast());
        }
        let plan = ScanPlan {
            retrieved: (1..=query.outputs.len() as i16).collect(),
            pushed: Vec::new(),
            params: lowering.params.iter().map(|(_, s)| *s).collect(),
            not_pushed: Vec::new(),
            join: Some(JoinSpec {
                outer: outer.relid.to_u32(),
                inner: inner.relid.to_u32(),
                query,
                rtis: (outer_rti, inner_rti),
                arguments: lowering.arguments,
            }),
        };
        // The nodes join; the router only receives the joined rows (a
        // join in Postgres pays for both tables' rows and the join itself).
        let rows = (*joinrel).rows;
        let startup = REQUEST_COST + PER_SHARD_COST * shards as f64;
        let total = startup + rows * pg_sys::cpu_tuple_cost;
        let path = pg_sys::create_foreign_join_path(
            root,
            joinrel,
            std::ptr::null_mut(),
            rows,
            startup,
            total,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            path_private(&plan, local, fdw_exprs, tlist_exprs),
        );
        pg_sys::add_path(joinrel, path.cast());
    }
}

/// GetForeignPlan of a join path.
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
        let private = list_nodes((*best_path).fdw_private);
        let json = private[0];
        let local = private[1] as *mut pg_sys::List;
        let fdw_exprs = private[2] as *mut pg_sys::List;
        let tlist_exprs = private[3] as *mut pg_sys::List;
        let scan_tlist = super::scan_tlist(tlist_exprs);
        let mut fdw_private = pg_sys::lappend(std::ptr::null_mut(), json.cast());
        fdw_private = pg_sys::lappend(
            fdw_private,
            pg_sys::makeString(pg_sys::pstrdup(JOIN_MARK.as_ptr())).cast(),
        );
        pg_sys::make_foreignscan(
            tlist,
            local,
            0,
            fdw_exprs,
            fdw_private,
            scan_tlist,
            std::ptr::null_mut(),
            outer_plan,
        )
    }
}

/// The join's rows as one table for the upper paths: the outer table's
/// columns, then the inner table's (the join's column numbering), on the
/// outer table's shards.
pub fn combined(outer: &TableTopology, inner: &TableTopology) -> TableTopology {
    let mut t = outer.clone();
    t.table.name = format!("{} JOIN {}", outer.name, inner.name);
    t.table.columns.extend(inner.columns.iter().cloned());
    t.pg_types.extend(inner.pg_types.iter().copied());
    t.decimal_aggregates &= inner.decimal_aggregates;
    t
}

/// The pushed join a join rel's path of this wrapper carries: its spec,
/// the expressions of its runtime parameters and whether any clause stays
/// local above it. None when the rel has no such path.
///
/// # Safety
/// `rel` is a join rel during planning.
pub unsafe fn pushed_join(
    rel: *mut pg_sys::RelOptInfo,
) -> Option<(ScanPlan, Vec<*mut pg_sys::Expr>, bool)> {
    // SAFETY: per the contract; only get_foreign_join_paths builds foreign
    // paths on a join rel of this wrapper (path_private).
    unsafe {
        if (*rel).reloptkind != pg_sys::RelOptKind::RELOPT_JOINREL {
            return None;
        }
        for mut path in PgList::<pg_sys::Path>::from_pg((*rel).pathlist).iter_ptr() {
            // The final scan/join target wraps the paths in projections.
            while is(path.cast(), pg_sys::NodeTag::T_ProjectionPath) {
                path = (*(path as *mut pg_sys::ProjectionPath)).subpath;
            }
            if !is(path.cast(), pg_sys::NodeTag::T_ForeignPath) {
                continue;
            }
            let private = list_nodes((*(path as *mut pg_sys::ForeignPath)).fdw_private);
            if private.len() != 4 || !is(private[0], pg_sys::NodeTag::T_String) {
                continue;
            }
            let json = std::ffi::CStr::from_ptr((*(private[0] as *mut pg_sys::String)).sval);
            let Ok(plan) = serde_json::from_slice::<ScanPlan>(json.to_bytes()) else {
                continue;
            };
            if plan.join.is_none() {
                continue;
            }
            let exprs = list_nodes(private[2].cast())
                .into_iter()
                .map(|e| e.cast())
                .collect();
            return Some((plan, exprs, !private[1].is_null()));
        }
        None
    }
}

/// The EXPLAIN line of a pushed join.
pub fn describe(spec: &JoinSpec, outer: &TableTopology, inner: &TableTopology) -> String {
    if spec.query.inner_reference {
        return format!(
            "{} join of {} with reference table {} per shard of {}",
            match spec.query.join_type {
                JoinType::Inner => "inner",
                JoinType::Left => "left",
            },
            outer.name,
            inner.name,
            outer.name
        );
    }
    format!(
        "{} join of {} and {} per shard (co-location group {})",
        match spec.query.join_type {
            JoinType::Inner => "inner",
            JoinType::Left => "left",
        },
        outer.name,
        inner.name,
        outer.colocation_id
    )
}
