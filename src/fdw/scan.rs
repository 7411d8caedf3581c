//! Foreign scans: plan which columns to fetch, then stream every shard's rows
//! at once through the core executor and hand them to Postgres one by one.

use crate::catalog::{cache, TableTopology};
use crate::convert::ColumnCodec;
use crate::remote;
use conductor_core::executor::{ScanHandle, ScanPoll, ShardQuery};
use conductor_core::remote_sql::select_sql;
use conductor_hrana::{Stmt, Value};
use pgrx::prelude::*;
use pgrx::{PgList, PgMemoryContexts};
use std::rc::Rc;
use std::time::Duration;

/// How long the backend waits for rows before it checks for cancel and
/// statement_timeout again.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Rows a node must return per shard before a scan of it costs more than the
/// round trip; a rough stand-in until statistics exist.
const ROWS_PER_SHARD_ESTIMATE: f64 = 1000.0;

#[pg_guard]
pub unsafe extern "C-unwind" fn get_foreign_rel_size(
    _root: *mut pg_sys::PlannerInfo,
    baserel: *mut pg_sys::RelOptInfo,
    relid: pg_sys::Oid,
) {
    let topology = cache::table(relid);
    // SAFETY: baserel is the planner's RelOptInfo for this scan.
    unsafe { (*baserel).rows = ROWS_PER_SHARD_ESTIMATE * topology.shard_count as f64 };
}

#[pg_guard]
pub unsafe extern "C-unwind" fn get_foreign_paths(
    root: *mut pg_sys::PlannerInfo,
    baserel: *mut pg_sys::RelOptInfo,
    relid: pg_sys::Oid,
) {
    let topology = cache::table(relid);
    // SAFETY: planner structures are valid for the duration of the callback.
    unsafe {
        let rows = (*baserel).rows;
        // One round trip, all shards in parallel, plus transferring rows.
        let startup = 25.0 + topology.shard_count as f64 * 0.5;
        let total = startup + rows * (pg_sys::cpu_tuple_cost * 2.0);
        let path = pg_sys::create_foreignscan_path(
            root,
            baserel,
            std::ptr::null_mut(),
            rows,
            startup,
            total,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        pg_sys::add_path(baserel, path.cast());
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn get_foreign_plan(
    _root: *mut pg_sys::PlannerInfo,
    baserel: *mut pg_sys::RelOptInfo,
    _relid: pg_sys::Oid,
    _best_path: *mut pg_sys::ForeignPath,
    tlist: *mut pg_sys::List,
    scan_clauses: *mut pg_sys::List,
    outer_plan: *mut pg_sys::Plan,
) -> *mut pg_sys::ForeignScan {
    // SAFETY: planner structures are valid for the duration of the callback;
    // every list built here is palloc'd in the planner's memory context.
    unsafe {
        // Every qual is evaluated locally for now; pushdown decides later
        // which of them SQLite evaluates exactly as Postgres does.
        let local_quals = pg_sys::extract_actual_clauses(scan_clauses, false);
        let scan_relid = (*baserel).relid;

        let mut attrs: *mut pg_sys::Bitmapset = std::ptr::null_mut();
        pg_sys::pull_varattnos((*(*baserel).reltarget).exprs.cast(), scan_relid, &mut attrs);
        pg_sys::pull_varattnos(local_quals.cast(), scan_relid, &mut attrs);
        let offset = pg_sys::FirstLowInvalidHeapAttributeNumber;
        let mut whole_row = false;
        let mut retrieved: *mut pg_sys::List = std::ptr::null_mut();
        let mut member = -1;
        loop {
            member = pg_sys::bms_next_member(attrs, member);
            if member < 0 {
                break;
            }
            let attnum = member + offset;
            if attnum == 0 {
                whole_row = true;
            } else if attnum > 0 {
                retrieved = pg_sys::lappend_int(retrieved, attnum);
            }
        }
        if whole_row {
            retrieved = std::ptr::null_mut();
            let rte_relid = (*(*_root).simple_rte_array.add(scan_relid as usize)).as_ref();
            if let Some(rte) = rte_relid {
                let topology = cache::table(rte.relid);
                for column in &topology.columns {
                    retrieved = pg_sys::lappend_int(retrieved, column.attnum as i32);
                }
            }
        }
        let fdw_private = pg_sys::lappend(std::ptr::null_mut(), retrieved.cast());
        pg_sys::make_foreignscan(
            tlist,
            local_quals,
            scan_relid,
            std::ptr::null_mut(),
            fdw_private,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            outer_plan,
        )
    }
}

/// A scan in progress. Lives in the executor's memory context: if the query
/// fails, deleting that context drops it, which drops the executor handle
/// and with it every in-flight request.
struct ScanState {
    topology: Rc<TableTopology>,
    /// Attribute numbers fetched, in the order of the remote SELECT list.
    retrieved: Vec<i16>,
    codecs: Vec<ColumnCodec>,
    handle: Option<ScanHandle>,
    finished: bool,
    rows: std::vec::IntoIter<Vec<Value>>,
    current_shard: u32,
}

impl ScanState {
    fn remote_sql(&self, table: &str) -> String {
        let names: Vec<&str> = self.codecs.iter().map(|c| c.name.as_str()).collect();
        select_sql(table, &names, None)
    }

    fn start(&mut self) {
        let token = crate::catalog::credentials::token_for(self.topology.server_id);
        let queries = self
            .topology
            .shards
            .iter()
            .map(|p| ShardQuery {
                shard_id: p.shard_id,
                endpoint: remote::endpoint(p, token.clone()),
                stmt: Stmt::new(self.remote_sql(&p.remote_table), vec![]),
            })
            .collect();
        // With no column needed (count(*)), select_sql asks for one NULL.
        self.handle = Some(remote::scan(queries, self.codecs.len().max(1)));
    }
}

unsafe fn state<'a>(node: *mut pg_sys::ForeignScanState) -> &'a mut ScanState {
    // SAFETY: fdw_state was set by begin_foreign_scan to a live ScanState.
    unsafe { &mut *((*node).fdw_state as *mut ScanState) }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn begin_foreign_scan(
    node: *mut pg_sys::ForeignScanState,
    eflags: i32,
) {
    // SAFETY: node is the executor's scan state; its plan is our ForeignScan.
    unsafe {
        let plan = (*node).ss.ps.plan as *mut pg_sys::ForeignScan;
        let relid = (*(*node).ss.ss_currentRelation).rd_id;
        let topology = cache::table(relid);
        let private = PgList::<pg_sys::List>::from_pg((*plan).fdw_private);
        let retrieved: Vec<i16> = match private.get_ptr(0) {
            Some(list) => PgList::<i32>::from_pg(list)
                .iter_int()
                .map(|a| a as i16)
                .collect(),
            None => Vec::new(),
        };
        let codecs = retrieved
            .iter()
            .map(|&attnum| {
                let c = topology
                    .column_by_attnum(attnum)
                    .unwrap_or_else(|| error!("conductor: column {attnum} is not in the topology"));
                ColumnCodec::new(&c.name, c.ty, c.typoid, c.typmod)
            })
            .collect();
        let state = ScanState {
            topology,
            retrieved,
            codecs,
            handle: None,
            finished: false,
            rows: Vec::new().into_iter(),
            current_shard: 0,
        };
        let _ = eflags & pg_sys::EXEC_FLAG_EXPLAIN_ONLY as i32; // nothing is sent before the first row is asked for
        (*node).fdw_state = PgMemoryContexts::CurrentMemoryContext
            .leak_and_drop_on_delete(state)
            .cast();
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn iterate_foreign_scan(
    node: *mut pg_sys::ForeignScanState,
) -> *mut pg_sys::TupleTableSlot {
    // SAFETY: called by the executor with our scan state; the slot belongs to
    // the node and its arrays have natts entries.
    unsafe {
        let state = state(node);
        let slot = (*node).ss.ss_ScanTupleSlot;
        pg_sys::ExecClearTuple(slot);
        loop {
            if let Some(row) = state.rows.next() {
                store_row(state, slot, row);
                return slot;
            }
            if state.finished {
                return slot;
            }
            if state.handle.is_none() {
                state.start();
            }
            let handle = state.handle.as_mut().expect("started above");
            match handle.next(POLL_INTERVAL) {
                ScanPoll::Rows(chunk) => {
                    state.current_shard = chunk.shard_id;
                    state.rows = chunk.rows.into_iter();
                }
                ScanPoll::Pending => {
                    pgrx::check_for_interrupts!();
                }
                ScanPoll::Done => state.finished = true,
                ScanPoll::Failed(err) => remote::report_shard_error(&err),
            }
        }
    }
}

unsafe fn store_row(state: &ScanState, slot: *mut pg_sys::TupleTableSlot, row: Vec<Value>) {
    // SAFETY: the slot's arrays have natts entries; datums are allocated in
    // the per-tuple memory context the executor calls us in.
    unsafe {
        let natts = (*(*slot).tts_tupleDescriptor).natts as usize;
        let values = std::slice::from_raw_parts_mut((*slot).tts_values, natts);
        let nulls = std::slice::from_raw_parts_mut((*slot).tts_isnull, natts);
        nulls.fill(true);
        for ((value, codec), &attnum) in row.iter().zip(&state.codecs).zip(&state.retrieved) {
            let index = attnum as usize - 1;
            match codec.decode(value) {
                Ok(Some(datum)) => {
                    values[index] = datum;
                    nulls[index] = false;
                }
                Ok(None) => {}
                Err(e) => {
                    let placement = &state.topology.shards[state.current_shard as usize];
                    crate::errors::raise(
                        PgSqlErrorCode::ERRCODE_FDW_INVALID_DATA_TYPE,
                        format!("conductor: node returned a value that does not fit {e}"),
                    )
                    .detail(format!(
                        "node {} ({}), shard {}",
                        placement.node_id, placement.url, placement.shard_id
                    ))
                    .error()
                }
            }
        }
        pg_sys::ExecStoreVirtualTuple(slot);
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn re_scan_foreign_scan(node: *mut pg_sys::ForeignScanState) {
    // SAFETY: our scan state; dropping the handle cancels in-flight requests.
    unsafe {
        let state = state(node);
        state.handle = None;
        state.finished = false;
        state.rows = Vec::new().into_iter();
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn end_foreign_scan(node: *mut pg_sys::ForeignScanState) {
    // SAFETY: our scan state (null when EXPLAIN without ANALYZE never began it).
    unsafe {
        if !(*node).fdw_state.is_null() {
            state(node).handle = None;
        }
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn explain_foreign_scan(
    node: *mut pg_sys::ForeignScanState,
    es: *mut pg_sys::ExplainState,
) {
    // SAFETY: our scan state and the explain state are valid here.
    unsafe {
        let state = state(node);
        let topology = &state.topology;
        let shards = format!(
            "{} of {} on {} nodes",
            topology.shard_count,
            topology.shard_count,
            topology.node_count()
        );
        explain_text(c"Shards", &shards, es);
        if (*es).verbose {
            let sql = state.remote_sql(&topology.shards[0].remote_table);
            explain_text(c"Remote SQL", &sql, es);
        }
    }
}

unsafe fn explain_text(label: &std::ffi::CStr, value: &str, es: *mut pg_sys::ExplainState) {
    let value = std::ffi::CString::new(value.replace('\0', "")).expect("NULs removed");
    // SAFETY: ExplainPropertyText copies both strings.
    unsafe { pg_sys::ExplainPropertyText(label.as_ptr(), value.as_ptr(), es) };
}
