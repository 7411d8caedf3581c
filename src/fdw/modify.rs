//! Row-by-row and batched writes: INSERT (VALUES, INSERT … SELECT), COPY,
//! and UPDATE/DELETE that Postgres runs by fetching rows first (when the
//! statement cannot go to the nodes whole: see `direct.rs`).
//!
//! Every row is routed by its shard key; the rows of a batch are grouped per
//! shard and each node gets one request holding its shards' statements, all
//! nodes in parallel. Everything runs in the Postgres transaction's remote
//! transaction (`xact::streams`): committed at commit, rolled back on abort.

use crate::catalog::credentials::ActingUser;
use crate::catalog::{cache, TableTopology};
use crate::convert::ColumnCodec;
use crate::errors::raise;
use crate::fdw::options::table_option;
use crate::gucs;
use crate::xact::{changed, streams};
use conductor_core::plan::{OnConflict, PlanError, ShardPlan, StatementKind};
use conductor_hrana::{StmtResult, Value};
use pgrx::prelude::*;
use pgrx::{PgList, PgMemoryContexts, PgSqlErrorCode};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::CString;
use std::rc::Rc;
use std::time::Duration;

/// Junk column names carrying a row's identity from the scan to the
/// modify: `conductor_pk_<attnum>`.
fn identity_column(attnum: i16) -> CString {
    CString::new(format!("conductor_pk_{attnum}")).expect("no NUL")
}

/// A write in progress on one result relation; dropped with the executor's
/// memory context.
struct ModifyState {
    topology: Rc<TableTopology>,
    /// One codec per column, in `topology.columns` order.
    codecs: Vec<ColumnCodec>,
    batch_size: i32,
    /// UPDATE: the columns assigned (indexes into topology.columns).
    updated: Vec<usize>,
    /// UPDATE/DELETE: where each primary-key column's value is in the plan
    /// slot (junk attribute numbers), in `topology.primary_key` order.
    identity: Vec<i16>,
    /// DELETE … RETURNING: fetch the deleted row's columns.
    returning: bool,
    /// COPY: rows waiting to be sent (COPY in Postgres 15 inserts one row at
    /// a time; sending them in batches is what makes it fast).
    buffered: Vec<Vec<Value>>,
    buffering: bool,
    /// INSERT … ON CONFLICT DO NOTHING: rows whose primary key is already
    /// on their shard are skipped and not counted.
    on_conflict: OnConflict,
    /// A one-row INSERT alone in its transaction: sent to its node as one
    /// self-contained request (`xact::autocommit`).
    alone: bool,
    /// Per node, how long its requests waited for its write lock (EXPLAIN
    /// ANALYZE).
    lock_waits: RefCell<BTreeMap<String, Duration>>,
    /// A table with virtual indexes: rows whose entries are written, sent
    /// at the end of the statement (or every `DEFER_ROWS`), so every entry
    /// of the statement is written before any of its rows takes a node's
    /// write lock (src/vindex.rs).
    deferred: RefCell<Vec<Vec<Value>>>,
    deferred_pending: RefCell<Vec<crate::vindex::Pending>>,
    /// UPDATE: the rows (identities) this statement changed. A join can
    /// hand a row to the UPDATE more than once; as for a local table, only
    /// the first changes it and is counted.
    changed: std::collections::HashSet<Vec<u8>>,
    track_changed: bool,
    /// The statement's command id, which its changes are recorded with
    /// (`xact::changed`).
    cid: pg_sys::CommandId,
}

/// Most rows of one INSERT or COPY held back while their entries are
/// written (see `ModifyState::deferred`).
const DEFER_ROWS: usize = 100_000;

impl ModifyState {
    /// Run a plan in the transaction; the first statement's result.
    fn run(&self, plan: Result<ShardPlan, PlanError>) -> Option<StmtResult> {
        let plan = plan.unwrap_or_else(|e| plan_error(&self.topology, e));
        let mut waits = self.lock_waits.take();
        let results = crate::remote::recording_lock_waits(&mut waits, || {
            streams::run_plan(&self.topology, &plan, streams::Access::Write)
        });
        self.lock_waits.replace(waits);
        results.into_iter().next().map(|(_, r)| r)
    }

    /// Run a plan that changes the row with this identity (primary-key
    /// values): recorded as a change of its key first (`xact::changed`).
    fn change(&self, plan: Result<ShardPlan, PlanError>, identity: &[Value]) -> Option<StmtResult> {
        let plan = plan.unwrap_or_else(|e| plan_error(&self.topology, e));
        let t = &self.topology;
        let key_at = t
            .primary_key
            .iter()
            .position(|&c| c == t.key_index)
            .expect("the primary key contains the shard key");
        changed::record_rows(t, &plan, [&identity[key_at]], self.cid);
        self.run(Ok(plan))
    }

    /// A column's value as the node stores it; a value a node cannot hold
    /// exactly is refused before anything is sent.
    unsafe fn encode(&self, column: usize, datum: pg_sys::Datum, is_null: bool) -> Value {
        if is_null {
            return Value::Null;
        }
        unsafe { self.codecs[column].encode(datum) }.unwrap_or_else(|e| {
            raise(
                PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
                format!("conductor cannot store this value: {e}"),
            )
            .error()
        })
    }
}

unsafe fn state<'a>(rinfo: *mut pg_sys::ResultRelInfo) -> &'a mut ModifyState {
    // SAFETY: ri_FdwState was set by begin() to a live ModifyState.
    unsafe { &mut *((*rinfo).ri_FdwState as *mut ModifyState) }
}

/// `cid`: the command id the statement writes with (`xact::changed`).
unsafe fn begin(
    rinfo: *mut pg_sys::ResultRelInfo,
    updated_attnums: Vec<i16>,
    subplan_tlist: *mut pg_sys::List,
    buffering: bool,
    cid: pg_sys::CommandId,
) {
    // SAFETY: rinfo is the executor's result relation for our foreign table;
    // the subplan's target list carries the identity junk columns.
    unsafe {
        let relid = (*(*rinfo).ri_RelationDesc).rd_id;
        let topology = cache::table(relid);
        let codecs = (0..topology.columns.len())
            .map(|i| topology.codec(i))
            .collect();
        let batch_size = table_option(relid, "batch_size")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| gucs::DEFAULT_BATCH_SIZE.get());
        let updated = updated_attnums
            .iter()
            .filter_map(|&a| topology.columns.iter().position(|c| c.attnum == a))
            .collect();
        let identity = if subplan_tlist.is_null() {
            Vec::new()
        } else {
            topology
                .primary_key
                .iter()
                .map(|&i| {
                    let name = identity_column(topology.columns[i].attnum);
                    let attno = pg_sys::ExecFindJunkAttributeInTlist(subplan_tlist, name.as_ptr());
                    if attno <= 0 {
                        error!("conductor: row identity column missing from the plan");
                    }
                    attno
                })
                .collect()
        };
        let state = ModifyState {
            topology,
            codecs,
            batch_size,
            updated,
            identity,
            returning: false,
            buffered: Vec::new(),
            buffering,
            on_conflict: OnConflict::Error,
            alone: false,
            lock_waits: Default::default(),
            deferred: Default::default(),
            deferred_pending: Default::default(),
            changed: Default::default(),
            track_changed: false,
            cid,
        };
        (*rinfo).ri_FdwState = PgMemoryContexts::CurrentMemoryContext
            .leak_and_drop_on_delete(state)
            .cast();
    }
}

/// UPDATE/DELETE that fetch rows first: ask the scan for each row's
/// identity (its primary key, which contains the shard key).
#[pg_guard]
pub unsafe extern "C-unwind" fn add_foreign_update_targets(
    root: *mut pg_sys::PlannerInfo,
    rtindex: pg_sys::Index,
    _target_rte: *mut pg_sys::RangeTblEntry,
    target_relation: pg_sys::Relation,
) {
    // SAFETY: planner structures; makeVar allocates in the planner context.
    unsafe {
        let topology = cache::table((*target_relation).rd_id);
        for &i in &topology.primary_key {
            let c = &topology.columns[i];
            let ty = topology.pg_types[i];
            let attr = (*(*target_relation).rd_att)
                .attrs
                .as_ptr()
                .add(c.attnum as usize - 1);
            let var = pg_sys::makeVar(
                rtindex as i32,
                c.attnum,
                ty.oid,
                ty.typmod,
                (*attr).attcollation,
                0,
            );
            let name = identity_column(c.attnum);
            pg_sys::add_row_identity_var(root, var, rtindex, pg_sys::pstrdup(name.as_ptr()));
        }
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn plan_foreign_modify(
    root: *mut pg_sys::PlannerInfo,
    plan: *mut pg_sys::ModifyTable,
    result_relation: pg_sys::Index,
    subplan_index: i32,
) -> *mut pg_sys::List {
    // SAFETY: planner structures are valid for the duration of the callback.
    // fdw_private: [updated attnums, [returning as 0/1]] (RETURNING is not
    // set up yet when BeginForeignModify runs, so the plan carries it).
    unsafe {
        let mut updated: *mut pg_sys::List = std::ptr::null_mut();
        if (*plan).operation == pg_sys::CmdType::CMD_UPDATE {
            let relid = (**(*root).simple_rte_array.add(result_relation as usize)).relid;
            let topology = cache::table(relid);
            let mut tlist: *mut pg_sys::List = std::ptr::null_mut();
            let mut attrs: *mut pg_sys::List = std::ptr::null_mut();
            pg_sys::get_translated_update_targetlist(root, result_relation, &mut tlist, &mut attrs);
            let mut attnums: Vec<i32> = PgList::<i32>::from_pg(attrs).iter_int().collect();
            // An assigned shard key is compared with the row's own, row by
            // row (exec_foreign_update): assigning a row its own key, as
            // ORMs that write every column do, changes nothing.
            attnums.retain(|&a| a != topology.key().attnum as i32);
            // A BEFORE ROW UPDATE trigger may change any column of the new
            // row, not only the SET targets: every column but the row's
            // identity is sent then (as postgres_fdw does).
            // Stored generated columns are computed by Postgres from the
            // new row: they change with the columns they depend on.
            for a in stored_generated_attnums(relid) {
                if !attnums.contains(&a) {
                    attnums.push(a);
                }
            }
            if has_before_update_row_trigger(relid) {
                for (i, c) in topology.columns.iter().enumerate() {
                    if !topology.primary_key.contains(&i) && !attnums.contains(&(c.attnum as i32)) {
                        attnums.push(c.attnum as i32);
                    }
                }
            }
            for a in attnums {
                updated = pg_sys::lappend_int(updated, a);
            }
        }
        refuse_returned_system_columns(root, plan, result_relation, subplan_index);
        let returning = pg_sys::lappend_int(
            std::ptr::null_mut(),
            (!(*plan).returningLists.is_null()) as i32,
        );
        let do_nothing = pg_sys::lappend_int(
            std::ptr::null_mut(),
            (on_conflict_of(plan) == OnConflict::DoNothing) as i32,
        );
        let private = pg_sys::lappend(std::ptr::null_mut(), updated.cast());
        let private = pg_sys::lappend(private, returning.cast());
        pg_sys::lappend(private, do_nothing.cast())
    }
}

/// RETURNING of a system column: refused as in a scan
/// (`refuse_system_columns`). Checked while planning the modify, pushed
/// or not: RETURNING reads the written row, not the scan's.
///
/// # Safety
/// Planner structures of the statement being planned.
pub unsafe fn refuse_returned_system_columns(
    root: *mut pg_sys::PlannerInfo,
    plan: *mut pg_sys::ModifyTable,
    result_relation: pg_sys::Index,
    subplan_index: i32,
) {
    // SAFETY: per the contract; returningLists has one list per result
    // relation when it is not empty.
    unsafe {
        if (*plan).returningLists.is_null() {
            return;
        }
        let relid = (**(*root).simple_rte_array.add(result_relation as usize)).relid;
        crate::fdw::refuse_system_columns(
            pg_sys::list_nth((*plan).returningLists, subplan_index).cast(),
            None,
            &cache::table(relid).name,
        );
    }
}

/// The conflict rule of an INSERT: `ON CONFLICT DO NOTHING` (Postgres
/// accepts it on a foreign table only without a conflict target, which it
/// leaves to the wrapper: here, the shard table's PRIMARY KEY) or none.
/// `ON CONFLICT DO UPDATE` is refused by Postgres for foreign tables.
///
/// # Safety
/// `plan` is a ModifyTable of a planned statement (or null).
pub unsafe fn on_conflict_of(plan: *const pg_sys::ModifyTable) -> OnConflict {
    // SAFETY: per the contract.
    if !plan.is_null()
        && unsafe { (*plan).onConflictAction } == pg_sys::OnConflictAction::ONCONFLICT_NOTHING
    {
        OnConflict::DoNothing
    } else {
        OnConflict::Error
    }
}

/// The attribute numbers of the relation's stored generated columns.
///
/// # Safety
/// The caller holds a lock on the relation (planning a statement on it).
pub unsafe fn stored_generated_attnums(relid: pg_sys::Oid) -> Vec<i32> {
    // SAFETY: per the contract; the relation is closed again.
    unsafe {
        let rel = pg_sys::RelationIdGetRelation(relid);
        let td = (*rel).rd_att;
        let found = (*td)
            .attrs
            .as_slice((*td).natts as usize)
            .iter()
            .filter(|a| {
                !a.attisdropped && a.attgenerated as u8 == pg_sys::ATTRIBUTE_GENERATED_STORED
            })
            .map(|a| a.attnum as i32)
            .collect();
        pg_sys::RelationClose(rel);
        found
    }
}

/// The attribute numbers of the columns the relation's partition bounds
/// (its own and its ancestors') constrain; empty unless it is a partition.
///
/// # Safety
/// The caller holds a lock on the relation (planning a statement on it).
pub unsafe fn partition_bound_attnums(relid: pg_sys::Oid) -> Vec<i32> {
    extern "C-unwind" {
        // utils/partcache.h
        fn RelationGetPartitionQual(rel: pg_sys::Relation) -> *mut pg_sys::List;
    }
    // SAFETY: per the contract; the relation is closed again, and the
    // qual (a copy, in the current memory context) is only read.
    unsafe {
        let rel = pg_sys::RelationIdGetRelation(relid);
        let mut attnums = Vec::new();
        if (*(*rel).rd_rel).relispartition {
            let qual = RelationGetPartitionQual(rel);
            let mut columns: *mut pg_sys::Bitmapset = std::ptr::null_mut();
            pg_sys::pull_varattnos(qual.cast(), 1, &mut columns);
            let mut member = -1;
            loop {
                member = pg_sys::bms_next_member(columns, member);
                if member < 0 {
                    break;
                }
                attnums.push(member + pg_sys::FirstLowInvalidHeapAttributeNumber);
            }
        }
        pg_sys::RelationClose(rel);
        attnums
    }
}

/// A row written into a conductor table that is a partition must lie
/// within its bounds. Postgres checks them for local partitions only
/// (the foreign data wrapper's business otherwise): a row outside them
/// would sit where no query that prunes partitions finds it. A row an
/// UPDATE of the partitioned parent moves to another partition is
/// refused, as Postgres cannot move a row out of a foreign partition;
/// any other is a partition constraint violation (23514), as for a local
/// partition.
///
/// # Safety
/// `rinfo` is the executor's result relation for our foreign table and
/// `slot` holds a row of it.
unsafe fn check_partition_bounds(
    estate: *mut pg_sys::EState,
    rinfo: *mut pg_sys::ResultRelInfo,
    slot: *mut pg_sys::TupleTableSlot,
    update: bool,
) {
    // SAFETY: per the contract; ExecPartitionCheck builds the check in
    // the query's memory context on first use.
    unsafe {
        if !(*(*(*rinfo).ri_RelationDesc).rd_rel).relispartition {
            return;
        }
        // A row routed through the partitioned table was placed by its
        // bounds; only a BEFORE ROW trigger of the partition can change it
        // since (Postgres skips the check for a local partition the same way).
        if !update && !(*rinfo).ri_RootResultRelInfo.is_null() {
            let triggers = (*rinfo).ri_TrigDesc;
            if triggers.is_null() || !(*triggers).trig_insert_before_row {
                return;
            }
        }
        if pg_sys::ExecPartitionCheck(rinfo, slot, estate, false) {
            return;
        }
        if update && !(*rinfo).ri_RootResultRelInfo.is_null() {
            let name = cache::table((*(*rinfo).ri_RelationDesc).rd_id).name.clone();
            raise(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("cannot move rows out of conductor table {name} into another partition"),
            )
            .detail("The UPDATE gives a row of this partition a partition key value outside its bounds.")
            .hint("DELETE the rows and INSERT them through the partitioned table.")
            .error()
        }
        pg_sys::ExecPartitionCheckEmitError(rinfo, slot, estate);
    }
}

unsafe fn has_before_update_row_trigger(relid: pg_sys::Oid) -> bool {
    // SAFETY: the planner holds a lock on the relation; it is closed again.
    unsafe {
        let rel = pg_sys::RelationIdGetRelation(relid);
        let t = (*rel).trigdesc;
        let found = !t.is_null() && (*t).trig_update_before_row;
        pg_sys::RelationClose(rel);
        found
    }
}

/// Changing a row's shard key would have to move it to another shard; that
/// is refused (documented in the README) rather than done half-way.
pub fn refuse_key_update(topology: &TableTopology, updated_attnums: &[i32]) {
    let key = topology.key();
    if updated_attnums.contains(&(key.attnum as i32)) {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("cannot change the shard key column \"{}\"", key.name),
        )
        .detail("A row's shard key decides which shard holds it.")
        .hint("DELETE the row and INSERT it with the new key.")
        .error()
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn begin_foreign_modify(
    mtstate: *mut pg_sys::ModifyTableState,
    rinfo: *mut pg_sys::ResultRelInfo,
    fdw_private: *mut pg_sys::List,
    _subplan_index: i32,
    _eflags: i32,
) {
    // SAFETY: executor structures; fdw_private is what plan_foreign_modify
    // returned; the subplan (outer plan of ModifyTable) is initialized.
    unsafe {
        let _acting = ActingUser::for_result((*mtstate).ps.state, rinfo);
        let operation = (*mtstate).operation;
        let private = PgList::<pg_sys::List>::from_pg(fdw_private);
        let ints = |i: usize| -> Vec<i32> {
            private
                .get_ptr(i)
                .map(|l| PgList::<i32>::from_pg(l).iter_int().collect())
                .unwrap_or_default()
        };
        let updated: Vec<i16> = ints(0).into_iter().map(|a| a as i16).collect();
        let returning = ints(1).first() == Some(&1);
        let do_nothing = ints(2).first() == Some(&1);
        let tlist = if operation == pg_sys::CmdType::CMD_INSERT {
            std::ptr::null_mut()
        } else {
            (*(*(*mtstate).ps.lefttree).plan).targetlist
        };
        begin(
            rinfo,
            updated,
            tlist,
            false,
            (*(*mtstate).ps.state).es_output_cid,
        );
        state(rinfo).returning = returning;
        // Only a join under the UPDATE can hand it a row twice; a scan of
        // the table alone needs no memory of the rows it changed.
        state(rinfo).track_changed = operation == pg_sys::CmdType::CMD_UPDATE
            && !crate::fdw::lower::is(
                (*(*mtstate).ps.lefttree).plan.cast(),
                pg_sys::NodeTag::T_ForeignScan,
            );
        if do_nothing {
            state(rinfo).on_conflict = OnConflict::DoNothing;
        }
        // One row (a VALUES row or a SELECT without FROM: a Result with no
        // input) and nothing else in the transaction.
        if operation == pg_sys::CmdType::CMD_INSERT {
            let subplan = (*(*mtstate).ps.lefttree).plan;
            let one_row =
                (*subplan).type_ == pg_sys::NodeTag::T_Result && (*subplan).lefttree.is_null();
            // A table with virtual indexes writes its rows in the
            // transaction's remote transactions, after their entries.
            state(rinfo).alone = one_row
                && state(rinfo).topology.virtual_indexes.is_empty()
                && crate::xact::autocommit::statement_is_alone((*mtstate).ps.state, rinfo);
        }
    }
}

/// EXPLAIN ANALYZE of an INSERT, or of an UPDATE/DELETE that changes rows
/// one by one: per node, how long its requests waited for its write lock.
#[pg_guard]
pub unsafe extern "C-unwind" fn explain_foreign_modify(
    _mtstate: *mut pg_sys::ModifyTableState,
    rinfo: *mut pg_sys::ResultRelInfo,
    _fdw_private: *mut pg_sys::List,
    _subplan_index: i32,
    es: *mut pg_sys::ExplainState,
) {
    // SAFETY: the explain state; ri_FdwState is ours once begun (EXPLAIN
    // without ANALYZE may call this before any row was modified).
    unsafe {
        if !(*es).analyze || (*rinfo).ri_FdwState.is_null() {
            return;
        }
        let waits = state(rinfo).lock_waits.borrow();
        if !waits.is_empty() {
            crate::fdw::scan::explain_text(
                c"Lock Wait",
                &crate::remote::describe_lock_waits(&waits),
                es,
            );
        }
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn begin_foreign_insert(
    mtstate: *mut pg_sys::ModifyTableState,
    rinfo: *mut pg_sys::ResultRelInfo,
) {
    // SAFETY: rinfo is valid; mtstate is null for COPY, else the INSERT
    // routing rows into this partition. COPY (and tuple routing) insert row
    // by row; rows are buffered unless each must come back at once, or
    // each must be known inserted or skipped (ON CONFLICT DO NOTHING).
    unsafe {
        let estate = if mtstate.is_null() {
            std::ptr::null_mut()
        } else {
            (*mtstate).ps.state
        };
        let _acting = ActingUser::for_result(estate, rinfo);
        // COPY's command id, taken before anything here runs SPI (which
        // advances the current command id).
        let cid = if mtstate.is_null() {
            changed::current_command()
        } else {
            (*(*mtstate).ps.state).es_output_cid
        };
        let on_conflict = if mtstate.is_null() {
            OnConflict::Error
        } else {
            on_conflict_of((*mtstate).ps.plan as *const pg_sys::ModifyTable)
        };
        let name = || cache::table((*(*rinfo).ri_RelationDesc).rd_id).name.clone();
        // An UPDATE of a partitioned table moving rows into a conductor
        // partition that it also updates: one result relation cannot be
        // both a row-by-row (or pushed) UPDATE and an INSERT at once.
        if !mtstate.is_null()
            && (*mtstate).operation == pg_sys::CmdType::CMD_UPDATE
            && ((*rinfo).ri_usesFdwDirectModify || !(*rinfo).ri_FdwState.is_null())
        {
            raise(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!(
                    "cannot move rows into conductor table {} while the same UPDATE changes it",
                    name()
                ),
            )
            .hint("Update the rows that change partition with a statement that does not also update this partition, or DELETE them and INSERT them.")
            .error()
        }
        if !(*rinfo).ri_returningList.is_null() {
            crate::fdw::refuse_system_columns((*rinfo).ri_returningList.cast(), None, &name());
        }
        let triggers = (*rinfo).ri_TrigDesc;
        let row_triggers = !triggers.is_null()
            && ((*triggers).trig_insert_after_row || (*triggers).trig_insert_before_row);
        let buffering = (*rinfo).ri_projectReturning.is_null()
            && (*rinfo).ri_WithCheckOptions.is_null()
            && !row_triggers
            && on_conflict == OnConflict::Error;
        begin(rinfo, Vec::new(), std::ptr::null_mut(), buffering, cid);
        state(rinfo).on_conflict = on_conflict;
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn end_foreign_modify(
    estate: *mut pg_sys::EState,
    rinfo: *mut pg_sys::ResultRelInfo,
) {
    // SAFETY: the statement's executor state and result relation.
    unsafe {
        let _acting = ActingUser::for_result(estate, rinfo);
        flush(rinfo)
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn end_foreign_insert(
    estate: *mut pg_sys::EState,
    rinfo: *mut pg_sys::ResultRelInfo,
) {
    // SAFETY: the statement's executor state and result relation.
    unsafe {
        let _acting = ActingUser::for_result(estate, rinfo);
        flush(rinfo)
    }
}

unsafe fn flush(rinfo: *mut pg_sys::ResultRelInfo) {
    // SAFETY: our state, if begin ran (it does not under EXPLAIN).
    unsafe {
        if (*rinfo).ri_FdwState.is_null() {
            return;
        }
        let state = state(rinfo);
        let rows = std::mem::take(&mut state.buffered);
        if !rows.is_empty() {
            send_rows(state, rows);
        }
        send_deferred(state);
    }
}

/// Send the rows held back while their virtual index entries were written,
/// then recheck those entries.
fn send_deferred(state: &ModifyState) {
    let rows = state.deferred.take();
    let pending = state.deferred_pending.take();
    let chunk = state.batch_size.max(1) as usize;
    for part in rows.chunks(chunk) {
        let plan = ShardPlan::insert_with(&state.topology, part.to_vec(), state.on_conflict)
            .unwrap_or_else(|e| plan_error(&state.topology, e));
        let key = state.topology.key_index;
        changed::record_rows(
            &state.topology,
            &plan,
            part.iter().map(|r| &r[key]),
            state.cid,
        );
        let mut waits = state.lock_waits.take();
        crate::remote::recording_lock_waits(&mut waits, || {
            streams::run_plan(&state.topology, &plan, streams::Access::Write)
        });
        state.lock_waits.replace(waits);
    }
    for p in pending {
        crate::vindex::after_write(&state.topology, p);
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn get_foreign_modify_batch_size(
    rinfo: *mut pg_sys::ResultRelInfo,
) -> i32 {
    // SAFETY: rinfo is valid; Postgres requires 1 when rows must come back
    // one at a time (RETURNING, WITH CHECK OPTION, row triggers).
    unsafe {
        let triggers = (*rinfo).ri_TrigDesc;
        let row_triggers = !triggers.is_null()
            && ((*triggers).trig_insert_after_row || (*triggers).trig_insert_before_row);
        if !(*rinfo).ri_projectReturning.is_null()
            || !(*rinfo).ri_WithCheckOptions.is_null()
            || row_triggers
            || (*rinfo).ri_FdwState.is_null()
        {
            1
        } else {
            state(rinfo).batch_size.max(1)
        }
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn exec_foreign_insert(
    estate: *mut pg_sys::EState,
    rinfo: *mut pg_sys::ResultRelInfo,
    slot: *mut pg_sys::TupleTableSlot,
    _plan_slot: *mut pg_sys::TupleTableSlot,
) -> *mut pg_sys::TupleTableSlot {
    // SAFETY: our state and a slot of our relation.
    unsafe {
        let _acting = ActingUser::for_result(estate, rinfo);
        check_partition_bounds(estate, rinfo, slot, false);
        let state = state(rinfo);
        let row = encode_row(state, slot);
        if state.buffering {
            state.buffered.push(row);
            if state.buffered.len() >= state.batch_size.max(1) as usize {
                let rows = std::mem::take(&mut state.buffered);
                send_rows(state, rows);
            }
        } else if send_rows(state, vec![row]) == 0 {
            return std::ptr::null_mut(); // skipped by ON CONFLICT DO NOTHING
        }
    }
    slot
}

#[pg_guard]
pub unsafe extern "C-unwind" fn exec_foreign_batch_insert(
    estate: *mut pg_sys::EState,
    rinfo: *mut pg_sys::ResultRelInfo,
    slots: *mut *mut pg_sys::TupleTableSlot,
    _plan_slots: *mut *mut pg_sys::TupleTableSlot,
    num_slots: *mut i32,
) -> *mut *mut pg_sys::TupleTableSlot {
    // SAFETY: Postgres passes num_slots valid slots.
    unsafe {
        let _acting = ActingUser::for_result(estate, rinfo);
        let state = state(rinfo);
        let slots_slice = std::slice::from_raw_parts(slots, *num_slots as usize);
        for &s in slots_slice {
            check_partition_bounds(estate, rinfo, s, false);
        }
        let rows = slots_slice.iter().map(|&s| encode_row(state, s)).collect();
        let inserted = send_rows(state, rows);
        // Postgres counts the first *num_slots slots as inserted. A batch
        // only runs without RETURNING and row triggers, so which slots they
        // are does not matter, only how many (fewer under ON CONFLICT DO
        // NOTHING).
        *num_slots = inserted.min(*num_slots as u64) as i32;
    }
    slots
}

/// A row of the relation as the node stores it (all columns, in order).
unsafe fn encode_row(state: &ModifyState, slot: *mut pg_sys::TupleTableSlot) -> Vec<Value> {
    // SAFETY: the slot holds a row of our relation; getallattrs fills
    // tts_values/tts_isnull for every attribute.
    unsafe {
        pg_sys::slot_getallattrs(slot);
        let natts = (*(*slot).tts_tupleDescriptor).natts as usize;
        let values = std::slice::from_raw_parts((*slot).tts_values, natts);
        let nulls = std::slice::from_raw_parts((*slot).tts_isnull, natts);
        let key = state.topology.key();
        if nulls[key.attnum as usize - 1] {
            raise(
                PgSqlErrorCode::ERRCODE_NOT_NULL_VIOLATION,
                format!(
                    "shard key column \"{}\" of {} must not be null",
                    key.name, state.topology.name
                ),
            )
            .detail("Every row is placed on a shard by its shard key.")
            .error()
        }
        state
            .topology
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let a = c.attnum as usize - 1;
                state.encode(i, values[a], nulls[a])
            })
            .collect()
    }
}

/// A row that cannot be placed is an ERROR naming the column.
pub fn plan_error(topology: &TableTopology, e: PlanError) -> ! {
    match e {
        PlanError::NullKey { column } => raise(
            PgSqlErrorCode::ERRCODE_NOT_NULL_VIOLATION,
            format!(
                "shard key column \"{column}\" of {} must not be null",
                topology.name
            ),
        )
        .detail("Every row is placed on a shard by its shard key.")
        .error(),
        PlanError::BadKey(why) => error!("conductor: {why}"),
    }
}

/// Route rows by key, group them per shard, and send each node its shards'
/// multi-row INSERTs in one request, all nodes in parallel. Returns how
/// many rows were inserted (all of them, unless ON CONFLICT DO NOTHING
/// skipped some).
fn send_rows(state: &ModifyState, rows: Vec<Vec<Value>>) -> u64 {
    if rows.len() <= crate::stats::KEYS_PER_STATEMENT {
        for row in &rows {
            crate::stats::key_value(state.topology.relid, &row[state.topology.key_index]);
        }
    }
    let t = &state.topology;
    // Virtual index entries are durable before the rows they point at can
    // commit (src/vindex.rs).
    let pending = (!t.virtual_indexes.is_empty()).then(|| {
        let owners = crate::vindex::owners(t, &rows);
        let pairs: Vec<(u32, &[Value])> = owners
            .into_iter()
            .zip(rows.iter().map(Vec::as_slice))
            .collect();
        crate::vindex::before_write(
            t,
            &pairs,
            &crate::vindex::all(t),
            true,
            state.on_conflict == OnConflict::DoNothing,
        )
    });
    let rows = match &pending {
        Some(p) if !p.skipped.is_empty() => rows
            .into_iter()
            .enumerate()
            .filter(|(i, _)| !p.skipped.contains(i))
            .map(|(_, r)| r)
            .collect(),
        _ => rows,
    };
    let pending = match pending {
        Some(p) if state.on_conflict == OnConflict::Error => {
            // Every row is inserted or the statement fails: its count is
            // known now.
            let n = rows.len() as u64;
            state.deferred.borrow_mut().extend(rows);
            state.deferred_pending.borrow_mut().push(p);
            if state.deferred.borrow().len() >= DEFER_ROWS {
                send_deferred(state);
            }
            return n;
        }
        other => other,
    };
    let keys: Vec<Value> = rows.iter().map(|r| r[t.key_index].clone()).collect();
    let plan = ShardPlan::insert_with(&state.topology, rows, state.on_conflict)
        .unwrap_or_else(|e| plan_error(&state.topology, e));
    // Rows ON CONFLICT DO NOTHING skips change nothing (known only once
    // the nodes answered): a get-or-create's read of an existing key in
    // the same statement is then no read of a hidden change.
    let skippable = state.on_conflict == OnConflict::DoNothing;
    if !skippable {
        changed::record_rows(t, &plan, &keys, state.cid);
    }
    let mut waits = state.lock_waits.take();
    let results = crate::remote::recording_lock_waits(&mut waits, || {
        state
            .alone
            .then(|| crate::xact::autocommit::run_alone(&state.topology, &plan))
            .flatten()
            .unwrap_or_else(|| streams::run_plan(&state.topology, &plan, streams::Access::Write))
    });
    state.lock_waits.replace(waits);
    if let Some(pending) = pending {
        crate::vindex::after_write(t, pending);
    }
    let inserted = results.iter().map(|(_, r)| r.affected_row_count).sum();
    if skippable && inserted > 0 {
        changed::record_rows(t, &plan, &keys, state.cid);
    }
    inserted
}

/// The identity of the row being changed: its primary-key values in
/// `topology.primary_key` order.
unsafe fn identity(state: &ModifyState, plan_slot: *mut pg_sys::TupleTableSlot) -> Vec<Value> {
    let mut args = Vec::with_capacity(state.identity.len());
    for (&column, &attno) in state.topology.primary_key.iter().zip(&state.identity) {
        let mut is_null = false;
        // SAFETY: attno is a junk attribute of the plan slot (found at begin).
        let datum = unsafe { pg_sys::slot_getattr(plan_slot, attno as i32, &mut is_null) };
        if is_null {
            error!("conductor: the row to change has a NULL key");
        }
        args.push(unsafe { state.encode(column, datum, false) });
    }
    args
}

#[pg_guard]
pub unsafe extern "C-unwind" fn exec_foreign_update(
    estate: *mut pg_sys::EState,
    rinfo: *mut pg_sys::ResultRelInfo,
    slot: *mut pg_sys::TupleTableSlot,
    plan_slot: *mut pg_sys::TupleTableSlot,
) -> *mut pg_sys::TupleTableSlot {
    // SAFETY: our state; slot holds the new row, plan_slot the identity.
    unsafe {
        let _acting = ActingUser::for_result(estate, rinfo);
        check_partition_bounds(estate, rinfo, slot, true);
        let state = state(rinfo);
        let identity = identity(state, plan_slot);
        if state.track_changed
            && !state
                .changed
                .insert(conductor_hrana::checksum::row_bytes(&identity))
        {
            return std::ptr::null_mut(); // already changed by this statement
        }
        let mut row = encode_row(state, slot);
        // The new row's identity is the old one unless the UPDATE assigns
        // the shard key a different value (the key is compared here, not
        // sent) or a BEFORE ROW trigger changed it: the UPDATE would then
        // change a key it cannot.
        let t = &state.topology;
        for (j, &i) in t.primary_key.iter().enumerate() {
            if !state.updated.contains(&i) && row[i] != identity[j] {
                if i == t.key_index {
                    refuse_key_update(t, &[t.key().attnum as i32]);
                }
                raise(
                    PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    format!(
                        "cannot change the primary key column \"{}\" in a trigger",
                        t.columns[i].name
                    ),
                )
                .error()
            }
        }
        let touched = crate::vindex::touched(&state.topology, &state.updated);
        let pending =
            (!touched.is_empty()).then(|| index_update(state, &identity, &mut row, &touched));
        // Only the shard key was assigned, and its own value (checked
        // above): the row is still written, with its key, so that it is
        // locked and counted as Postgres would.
        let set = if state.updated.is_empty() {
            vec![t.key_index]
        } else {
            state.updated.clone()
        };
        let values: Vec<Value> = set
            .iter()
            .map(|&i| std::mem::replace(&mut row[i], Value::Null))
            .collect();
        let update = StatementKind::Update {
            set,
            exprs: Vec::new(),
            values,
            // Postgres has the new row: its RETURNING needs nothing back.
            returning: false,
        };
        let result = state.change(
            ShardPlan::by_identity(&state.topology, &update, identity.clone()),
            &identity,
        );
        if let Some(pending) = pending {
            crate::vindex::after_write(&state.topology, pending);
        }
        if result.map(|r| r.affected_row_count).unwrap_or(0) == 0 {
            return std::ptr::null_mut(); // the row is gone: not counted
        }
    }
    slot
}

/// The entries of a row's new values for the virtual indexes an UPDATE
/// touches, written before the row changes. An index with columns the
/// UPDATE does not set reads their current values from the row first.
fn index_update(
    state: &ModifyState,
    identity: &[Value],
    row: &mut [Value],
    touched: &[usize],
) -> crate::vindex::Pending {
    let t = &state.topology;
    let missing: Vec<usize> = touched
        .iter()
        .flat_map(|&i| t.virtual_indexes[i].columns.iter().copied())
        .filter(|c| !state.updated.contains(c))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !missing.is_empty() {
        let read = StatementKind::Select {
            columns: missing.clone(),
        };
        if let Some(current) = state.run(ShardPlan::by_identity(t, &read, identity.to_vec())) {
            if let Some(values) = current.rows.first() {
                for (c, v) in missing.iter().zip(values) {
                    row[*c] = v.clone();
                }
            }
        }
    }
    let key_at = t
        .primary_key
        .iter()
        .position(|&c| c == t.key_index)
        .expect("the primary key contains the shard key");
    let owner = conductor_core::plan::shard_of_value(t, &identity[key_at])
        .unwrap_or_else(|e| plan_error(t, e));
    crate::vindex::before_write(t, &[(owner, &*row)], touched, false, false)
}

#[pg_guard]
pub unsafe extern "C-unwind" fn exec_foreign_delete(
    estate: *mut pg_sys::EState,
    rinfo: *mut pg_sys::ResultRelInfo,
    slot: *mut pg_sys::TupleTableSlot,
    plan_slot: *mut pg_sys::TupleTableSlot,
) -> *mut pg_sys::TupleTableSlot {
    // SAFETY: our state; plan_slot carries the identity, slot receives the
    // deleted row for RETURNING.
    unsafe {
        let _acting = ActingUser::for_result(estate, rinfo);
        let state = state(rinfo);
        let identity = identity(state, plan_slot);
        let Some(result) = state.change(
            ShardPlan::by_identity(
                &state.topology,
                &StatementKind::Delete {
                    returning: state.returning,
                },
                identity.clone(),
            ),
            &identity,
        ) else {
            return std::ptr::null_mut();
        };
        if result.affected_row_count == 0 {
            return std::ptr::null_mut();
        }
        if state.returning {
            pg_sys::ExecClearTuple(slot);
            if let Some(row) = result.rows.first() {
                crate::fdw::scan::store_values(
                    slot,
                    row,
                    &state.codecs,
                    state.topology.columns.iter().map(|c| c.attnum),
                    || format!("a deleted row of {}", state.topology.name),
                );
            }
        }
    }
    slot
}
