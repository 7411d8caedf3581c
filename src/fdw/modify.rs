//! INSERT and COPY into a distributed table: route every row by its shard key,
//! group the rows of each shard, and send each group as one request, all
//! shards in parallel.

use crate::catalog::{cache, TableTopology};
use crate::convert::ColumnCodec;
use crate::errors::raise;
use crate::fdw::options::table_option;
use crate::gucs;
use crate::remote;
use conductor_core::placement::{shard_for, KeyValue};
use conductor_core::remote_sql::{insert_sql, max_rows_per_insert};
use conductor_core::types::ColumnType;
use conductor_hrana::{PipelineReqBody, Stmt, Value};
use pgrx::prelude::*;
use pgrx::PgMemoryContexts;
use std::collections::BTreeMap;
use std::rc::Rc;

/// A write in progress on one result relation; dropped with the executor's
/// memory context.
struct ModifyState {
    topology: Rc<TableTopology>,
    /// One codec per column, in `topology.columns` order.
    codecs: Vec<ColumnCodec>,
    batch_size: i32,
}

unsafe fn begin(rinfo: *mut pg_sys::ResultRelInfo) {
    // SAFETY: rinfo is the executor's result relation for our foreign table.
    unsafe {
        let relid = (*(*rinfo).ri_RelationDesc).rd_id;
        let topology = cache::table(relid);
        let codecs = topology
            .columns
            .iter()
            .map(|c| ColumnCodec::new(&c.name, c.ty, c.typoid, c.typmod))
            .collect();
        let batch_size = table_option(relid, "batch_size")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| gucs::DEFAULT_BATCH_SIZE.get());
        let state = ModifyState {
            topology,
            codecs,
            batch_size,
        };
        (*rinfo).ri_FdwState = PgMemoryContexts::CurrentMemoryContext
            .leak_and_drop_on_delete(state)
            .cast();
    }
}

unsafe fn state<'a>(rinfo: *mut pg_sys::ResultRelInfo) -> &'a ModifyState {
    // SAFETY: ri_FdwState was set by begin() to a live ModifyState.
    unsafe { &*((*rinfo).ri_FdwState as *const ModifyState) }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn begin_foreign_modify(
    _mtstate: *mut pg_sys::ModifyTableState,
    rinfo: *mut pg_sys::ResultRelInfo,
    _fdw_private: *mut pg_sys::List,
    _subplan_index: i32,
    _eflags: i32,
) {
    unsafe { begin(rinfo) }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn begin_foreign_insert(
    _mtstate: *mut pg_sys::ModifyTableState,
    rinfo: *mut pg_sys::ResultRelInfo,
) {
    unsafe { begin(rinfo) }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn end_foreign_modify(
    _estate: *mut pg_sys::EState,
    _rinfo: *mut pg_sys::ResultRelInfo,
) {
}

#[pg_guard]
pub unsafe extern "C-unwind" fn end_foreign_insert(
    _estate: *mut pg_sys::EState,
    _rinfo: *mut pg_sys::ResultRelInfo,
) {
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
    _estate: *mut pg_sys::EState,
    rinfo: *mut pg_sys::ResultRelInfo,
    slot: *mut pg_sys::TupleTableSlot,
    _plan_slot: *mut pg_sys::TupleTableSlot,
) -> *mut pg_sys::TupleTableSlot {
    unsafe { insert_slots(state(rinfo), &[slot]) };
    slot
}

#[pg_guard]
pub unsafe extern "C-unwind" fn exec_foreign_batch_insert(
    _estate: *mut pg_sys::EState,
    rinfo: *mut pg_sys::ResultRelInfo,
    slots: *mut *mut pg_sys::TupleTableSlot,
    _plan_slots: *mut *mut pg_sys::TupleTableSlot,
    num_slots: *mut i32,
) -> *mut *mut pg_sys::TupleTableSlot {
    // SAFETY: Postgres passes num_slots valid slots.
    unsafe {
        let slots_slice = std::slice::from_raw_parts(slots, *num_slots as usize);
        insert_slots(state(rinfo), slots_slice);
    }
    slots
}

/// Encode, route and send a batch of rows.
unsafe fn insert_slots(state: &ModifyState, slots: &[*mut pg_sys::TupleTableSlot]) {
    let topology = &state.topology;
    let mut per_shard: BTreeMap<u32, Vec<Value>> = BTreeMap::new();
    for &slot in slots {
        // SAFETY: each slot holds a row of our relation; getallattrs fills
        // tts_values/tts_isnull for every attribute.
        unsafe {
            pg_sys::slot_getallattrs(slot);
            let natts = (*(*slot).tts_tupleDescriptor).natts as usize;
            let values = std::slice::from_raw_parts((*slot).tts_values, natts);
            let nulls = std::slice::from_raw_parts((*slot).tts_isnull, natts);
            let key = topology.key();
            let key_index = key.attnum as usize - 1;
            if nulls[key_index] {
                raise(
                    PgSqlErrorCode::ERRCODE_NOT_NULL_VIOLATION,
                    format!(
                        "shard key column \"{}\" of {} must not be null",
                        key.name, topology.remote_name
                    ),
                )
                .detail("Every row is placed on a shard by its shard key.")
                .error()
            }
            let shard = shard_of(topology, key.ty, values[key_index]);
            let row = per_shard.entry(shard).or_default();
            for (column, codec) in topology.columns.iter().zip(&state.codecs) {
                let i = column.attnum as usize - 1;
                row.push(if nulls[i] {
                    Value::Null
                } else {
                    codec.encode(values[i]).unwrap_or_else(|e| {
                        raise(
                            PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
                            format!("conductor cannot store this value: {e}"),
                        )
                        .error()
                    })
                });
            }
        }
    }
    let token = crate::catalog::credentials::token_for(topology.server_id);
    let ncols = topology.columns.len();
    let names: Vec<&str> = topology.columns.iter().map(|c| c.name.as_str()).collect();
    let requests = per_shard
        .into_iter()
        .map(|(shard, values)| {
            let placement = &topology.shards[shard as usize];
            let rows = values.len() / ncols;
            let body = insert_request(&placement.remote_table, &names, rows, values);
            remote::ShardRequest {
                shard_id: Some(shard),
                endpoint: remote::endpoint(placement, token.clone()),
                body,
            }
        })
        .collect();
    for result in remote::execute(requests) {
        if let Err(err) = result {
            remote::report_shard_error(&err);
        }
    }
}

/// The shard a key datum belongs to (DESIGN §4).
///
/// # Safety
/// `datum` must be a non-null datum of type `ty`.
pub unsafe fn shard_of(topology: &TableTopology, ty: ColumnType, datum: pg_sys::Datum) -> u32 {
    // SAFETY: per the contract above.
    unsafe {
        let text;
        let key = match ty {
            ColumnType::Int2 => KeyValue::Int(datum.value() as i16 as i64),
            ColumnType::Int4 => KeyValue::Int(datum.value() as i32 as i64),
            ColumnType::Int8 => KeyValue::Int(datum.value() as i64),
            ColumnType::Uuid => KeyValue::Uuid(*datum.cast_mut_ptr::<[u8; 16]>()),
            ColumnType::Text | ColumnType::Varchar => {
                let v = pg_sys::pg_detoast_datum_packed(datum.cast_mut_ptr());
                text = pgrx::varlena::text_to_rust_str(v)
                    .unwrap_or_else(|_| error!("shard key is not valid UTF-8"));
                KeyValue::Text(text)
            }
            other => error!("conductor: {other} cannot be a shard key"),
        };
        shard_for(&key, topology.shard_count)
    }
}

/// One request inserting `rows` rows into one shard table atomically, the
/// values travelling as typed arguments.
fn insert_request(
    table: &str,
    columns: &[&str],
    rows: usize,
    values: Vec<Value>,
) -> PipelineReqBody {
    let ncols = columns.len();
    let per_statement = max_rows_per_insert(ncols);
    let mut values = values.into_iter();
    let mut statements = Vec::new();
    let mut remaining = rows;
    while remaining > 0 {
        let n = remaining.min(per_statement);
        let args: Vec<Value> = values.by_ref().take(n * ncols).collect();
        statements.push(Stmt::new(insert_sql(table, columns, n), args));
        remaining -= n;
    }
    remote::transaction(statements)
}
