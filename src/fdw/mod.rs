//! The foreign-data wrapper: `conductor_fdw_handler` hands Postgres the
//! callbacks; each group of callbacks lives in its own module.

pub mod analyze;
pub mod direct;
pub mod join;
pub mod lower;
pub mod modify;
pub mod options;
pub mod scan;
pub mod truncate;
pub mod upper;

use pgrx::prelude::*;
use pgrx::PgList;
use std::ffi::{CStr, CString};

/// What planning hands to execution in a ForeignScan's fdw_private: one
/// String node holding JSON, which survives plan copying and caching.
///
/// # Safety
/// Must run in a backend; the list is palloc'd in CurrentMemoryContext.
pub unsafe fn private_from<T: serde::Serialize>(value: &T) -> *mut pg_sys::List {
    let json = CString::new(serde_json::to_string(value).expect("plan data serializes"))
        .expect("JSON has no NUL");
    // SAFETY: pstrdup copies into CurrentMemoryContext; makeString keeps it.
    unsafe {
        pg_sys::lappend(
            std::ptr::null_mut(),
            pg_sys::makeString(pg_sys::pstrdup(json.as_ptr())).cast(),
        )
    }
}

/// The value [`private_from`] stored.
///
/// # Safety
/// `fdw_private` must be a list built by [`private_from`] for `T`.
pub unsafe fn private_to<T: serde::de::DeserializeOwned>(fdw_private: *mut pg_sys::List) -> T {
    // SAFETY: per the contract.
    let json = unsafe {
        PgList::<pg_sys::Node>::from_pg(fdw_private)
            .get_ptr(0)
            .map(|s| CStr::from_ptr((*(s as *mut pg_sys::String)).sval))
            .unwrap_or_else(|| error!("conductor: foreign scan plan without conductor data"))
    };
    serde_json::from_slice(json.to_bytes())
        .unwrap_or_else(|e| error!("conductor: unreadable foreign scan plan: {e}"))
}

/// [`refuse_system_columns`] for the scan of a partition (or inheritance
/// child) `rti`: Postgres asks every partition for `ctid` when a row lock
/// or a join needs its local siblings' (a conductor partition's row lock
/// uses the whole row), so the query as written decides — its columns of
/// the partition or of the parents it was expanded from.
///
/// # Safety
/// Planner structures of the query being planned; `rti` is a child rel.
pub(crate) unsafe fn refuse_written_system_columns(
    root: *mut pg_sys::PlannerInfo,
    rti: pg_sys::Index,
    table: &str,
) {
    // SAFETY: per the contract: append_rel_array has an entry for every
    // child rel; the query's expressions are preprocessed (no SubLinks).
    unsafe {
        let mut varnos = vec![rti as i32];
        let mut at = rti;
        while !(*root).append_rel_array.is_null() {
            let info = *(*root).append_rel_array.add(at as usize);
            if info.is_null() {
                break;
            }
            at = (*info).parent_relid;
            varnos.push(at as i32);
        }
        // The planner adds its row marks' junk `ctid<n>` columns to the
        // query's own target list: those are not the query's.
        let mark_columns: Vec<String> = PgList::<pg_sys::PlanRowMark>::from_pg((*root).rowMarks)
            .iter_ptr()
            .map(|rc| format!("ctid{}", (*rc).rowmarkId))
            .collect();
        let parse = (*root).parse;
        for tle in PgList::<pg_sys::TargetEntry>::from_pg((*parse).targetList).iter_ptr() {
            let mark_column = (*tle).resjunk
                && !(*tle).resname.is_null()
                && mark_columns
                    .iter()
                    .any(|m| CStr::from_ptr((*tle).resname).to_bytes() == m.as_bytes());
            if !mark_column {
                refuse_system_columns((*tle).expr.cast(), Some(&varnos), table);
            }
        }
        for exprs in [
            (*parse).jointree.cast(),
            (*parse).returningList.cast(),
            (*parse).havingQual,
        ] {
            refuse_system_columns(exprs, Some(&varnos), table);
        }
    }
}

/// A conductor table's rows live on the nodes: they have no physical
/// address and no transaction stamps. Postgres would read `ctid` as the same
/// invalid address for every row (so `DELETE … WHERE ctid IN (SELECT ctid …
/// LIMIT 1)` would match them all) and fails deep in the executor on `xmin`
/// and the others; a query naming one is refused while it is planned.
/// `tableoid` is Postgres' own and is fine. Refused among the tree's Vars:
/// every one, or those of `varnos`.
///
/// # Safety
/// `exprs` is an expression tree or a List of them (or null), valid while
/// planning or starting a statement.
pub(crate) unsafe fn refuse_system_columns(
    exprs: *mut pg_sys::Node,
    varnos: Option<&[i32]>,
    table: &str,
) {
    // SAFETY: per the contract; pull_var_clause returns a new list of the
    // tree's own (level 0) Vars.
    let vars = unsafe {
        let flags = pg_sys::PVC_RECURSE_AGGREGATES
            | pg_sys::PVC_RECURSE_WINDOWFUNCS
            | pg_sys::PVC_RECURSE_PLACEHOLDERS;
        lower::list_nodes(pg_sys::pull_var_clause(exprs, flags as i32))
    };
    for v in vars {
        // SAFETY: pull_var_clause returns only Var nodes with these flags.
        let var = unsafe { &*(v as *mut pg_sys::Var) };
        let attno = var.varattno;
        if attno >= 0
            || attno == pg_sys::TableOidAttributeNumber as i16
            || varnos.is_some_and(|n| !n.contains(&var.varno))
        {
            continue;
        }
        // SAFETY: attno is a system attribute number.
        let name = unsafe {
            CStr::from_ptr(
                (*pg_sys::SystemAttributeDefinition(attno))
                    .attname
                    .data
                    .as_ptr(),
            )
        };
        crate::errors::raise(
            pgrx::PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!(
                "conductor table {table} has no system column \"{}\"",
                name.to_string_lossy()
            ),
        )
        .detail("Its rows live on the storage nodes, which give them no physical address or transaction stamps.")
        .hint("Identify rows by their primary key.")
        .error()
    }
}

#[pg_extern]
fn conductor_fdw_handler() -> PgBox<pg_sys::FdwRoutine> {
    // SAFETY: alloc_node returns a zeroed FdwRoutine node in
    // CurrentMemoryContext; Postgres copies what it needs.
    let mut routine =
        unsafe { PgBox::<pg_sys::FdwRoutine>::alloc_node(pg_sys::NodeTag::T_FdwRoutine) };

    routine.GetForeignRelSize = Some(scan::get_foreign_rel_size);
    routine.GetForeignPaths = Some(scan::get_foreign_paths);
    routine.GetForeignPlan = Some(scan::get_foreign_plan);
    routine.BeginForeignScan = Some(scan::begin_foreign_scan);
    routine.IterateForeignScan = Some(scan::iterate_foreign_scan);
    routine.ReScanForeignScan = Some(scan::re_scan_foreign_scan);
    routine.EndForeignScan = Some(scan::end_foreign_scan);
    routine.ExplainForeignScan = Some(scan::explain_foreign_scan);
    routine.GetForeignUpperPaths = Some(upper::get_foreign_upper_paths);
    routine.GetForeignJoinPaths = Some(join::get_foreign_join_paths);

    routine.AddForeignUpdateTargets = Some(modify::add_foreign_update_targets);
    routine.PlanForeignModify = Some(modify::plan_foreign_modify);
    routine.BeginForeignModify = Some(modify::begin_foreign_modify);
    routine.ExecForeignUpdate = Some(modify::exec_foreign_update);
    routine.ExecForeignDelete = Some(modify::exec_foreign_delete);
    routine.ExecForeignInsert = Some(modify::exec_foreign_insert);
    routine.ExecForeignBatchInsert = Some(modify::exec_foreign_batch_insert);
    routine.GetForeignModifyBatchSize = Some(modify::get_foreign_modify_batch_size);
    routine.EndForeignModify = Some(modify::end_foreign_modify);
    routine.ExplainForeignModify = Some(modify::explain_foreign_modify);
    routine.PlanDirectModify = Some(direct::plan_direct_modify);
    routine.BeginDirectModify = Some(direct::begin_direct_modify);
    routine.IterateDirectModify = Some(direct::iterate_direct_modify);
    routine.EndDirectModify = Some(direct::end_direct_modify);
    routine.ExplainDirectModify = Some(direct::explain_direct_modify);
    routine.BeginForeignInsert = Some(modify::begin_foreign_insert);
    routine.EndForeignInsert = Some(modify::end_foreign_insert);
    routine.ExecForeignTruncate = Some(truncate::exec_foreign_truncate);
    routine.AnalyzeForeignTable = Some(analyze::analyze_foreign_table);

    routine.into_pg_boxed()
}

/// Whether a planner rel stands for the rows of its one foreign table and
/// nothing else, so that a join or the aggregates, ORDER BY and LIMIT above
/// it may run on that table's shards: a base relation that is not proven
/// empty and has no lateral references. An inheritance parent (a table
/// other tables inherit from, read without ONLY) is a base relation too,
/// but its rows are an Append of its own and its children's, which the
/// shards do not hold. One whose children were all dropped is still
/// planned as an Append (`pg_class.relhassubclass` stays set until the
/// next ANALYZE), of itself alone: its rows are the table's.
///
/// # Safety
/// `root` and `rel` are valid planner structures (`rel` may be null).
pub(crate) unsafe fn rel_is_one_table(
    root: *mut pg_sys::PlannerInfo,
    rel: *mut pg_sys::RelOptInfo,
) -> bool {
    // SAFETY: per the contract; a base rel's relid indexes simple_rte_array,
    // and append_rel_list is a List of AppendRelInfo.
    unsafe {
        if rel.is_null()
            || (*rel).reloptkind != pg_sys::RelOptKind::RELOPT_BASEREL
            || !pg_sys::bms_is_empty((*rel).lateral_relids)
            || pg_sys::is_dummy_rel(rel)
        {
            return false;
        }
        let rte = *(*root).simple_rte_array.add((*rel).relid as usize);
        if !(*rte).inh {
            return true;
        }
        // The parent is a member of its own Append; any other is a child.
        let members = PgList::<pg_sys::AppendRelInfo>::from_pg((*root).append_rel_list)
            .iter_ptr()
            .filter(|&info| (*info).parent_relid == (*rel).relid)
            .count();
        members <= 1
    }
}

/// The `fdw_scan_tlist` of a pushed join or upper rel: one target entry per
/// expression the nodes return, in order (copies: the plan owns them).
///
/// # Safety
/// `exprs` is a List of planner expression nodes (or NIL); called while
/// planning, in the planner's memory context.
pub(crate) unsafe fn scan_tlist(exprs: *mut pg_sys::List) -> *mut pg_sys::List {
    // SAFETY: per the contract.
    unsafe {
        let mut tlist: *mut pg_sys::List = std::ptr::null_mut();
        for (i, e) in lower::list_nodes(exprs).into_iter().enumerate() {
            let tle = pg_sys::makeTargetEntry(
                pg_sys::copyObjectImpl(e.cast()).cast(),
                (i + 1) as i16,
                std::ptr::null_mut(),
                false,
            );
            tlist = pg_sys::lappend(tlist, tle.cast());
        }
        tlist
    }
}
