//! The SQL API of virtual indexes: the steps of
//! `conductor.create_virtual_index` (a procedure in sql/finalize.sql that
//! commits between them), `drop_virtual_index` and `verify_virtual_index`
//! (docs/ARCHITECTURE.md, Virtual indexes).

use crate::catalog::{cache, relation_display_name, TableTopology};
use crate::errors::raise;
use crate::xact::streams;
use conductor_core::plan::{RouteKind, ShardPlan, ShardStatement};
use conductor_core::remote_sql::{
    create_index_sql, drop_index_sql, drop_table_sql, ShardIndexDef, REFRESH_SCHEMA_SQL,
};
use conductor_core::vindex::{self, Entry, EntryValue};
use conductor_hrana::{Stmt, Value};
use pgrx::prelude::*;
use pgrx::{JsonB, PgRelation, PgSqlErrorCode};
use std::collections::BTreeSet;
use std::rc::Rc;

/// Rows per backfill chunk (one transaction of the build).
const BACKFILL_CHUNK: usize = 2000;

/// The local SQLite index every shard table gets for a virtual index.
fn local_index(name: &str, columns: Vec<String>, unique: bool) -> ShardIndexDef {
    ShardIndexDef {
        name: format!("vx_{name}"),
        columns,
        unique,
    }
}

/// The local indexes of `relid`'s virtual indexes (every status: a failed
/// index keeps its local index until it is dropped), which a shard table
/// rebuilt by an ALTER must get again.
pub fn local_indexes(relid: pg_sys::Oid) -> Vec<ShardIndexDef> {
    Spi::connect(|client| -> Result<Vec<ShardIndexDef>, pgrx::spi::Error> {
        client
            .select(
                "SELECT index_name, columns::text[], is_unique
                   FROM conductor.virtual_index WHERE relid = $1 ORDER BY index_name",
                None,
                &[relid.into()],
            )?
            .map(|row| {
                Ok(local_index(
                    &row.get::<String>(1)?.unwrap_or_default(),
                    row.get(2)?.unwrap_or_default(),
                    row.get(3)?.unwrap_or(false),
                ))
            })
            .collect()
    })
    .unwrap_or_else(|e| error!("conductor: could not read the virtual indexes: {e}"))
}

pub(crate) fn invalidate_plans(relid: pg_sys::Oid) {
    // SAFETY: queues a relcache invalidation of the foreign table (sent at
    // commit), which makes cached plans of it be planned again.
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
}

/// One statement list per shard, run in this transaction on every node.
fn on_every_shard(t: &TableTopology, reason: &str, stmts: impl Fn(u32, &str) -> Vec<Stmt>) {
    let mut statements = Vec::new();
    for s in &t.shards {
        for stmt in stmts(s.shard_id, &s.remote_table) {
            statements.push(ShardStatement {
                shard_id: s.shard_id,
                stmt,
            });
        }
    }
    let plan = ShardPlan {
        kind: RouteKind::AllShards,
        reason: reason.to_string(),
        max_keys_per_shard: 0,
        keys: Vec::new(),
        statements,
    };
    streams::run_plan(t, &plan, streams::Access::Write);
}

/// A unique index over rows that already share a value within one shard
/// fails, naming the value.
fn refuse_local_duplicates(t: &TableTopology, name: &str, columns: &[usize], shard: u32) {
    let table = &t.shards[shard as usize].remote_table;
    let cols: Vec<String> = columns
        .iter()
        .map(|&c| conductor_core::remote_sql::qualified_column(table, &t.columns[c].name))
        .collect();
    let not_null = cols
        .iter()
        .map(|c| format!("{c} IS NOT NULL"))
        .collect::<Vec<_>>()
        .join(" AND ");
    let sql = format!(
        "SELECT {0} FROM {1} WHERE {not_null} GROUP BY {0} HAVING count(*) > 1 LIMIT 1",
        cols.join(", "),
        conductor_core::remote_sql::quote_ident(table)
    );
    let rows = crate::vindex::read_one(t, shard, Stmt::new(sql, vec![]));
    if let Some(row) = rows.first() {
        raise(
            PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
            format!("could not create unique virtual index \"{name}\""),
        )
        .detail(format!(
            "Key ({})=({}) is duplicated on shard {shard} (node {}) of {}.",
            columns
                .iter()
                .map(|&c| t.columns[c].name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            vindex::display_values(row.iter())
                .trim_start_matches('(')
                .trim_end_matches(')'),
            t.shards[shard as usize].node_id,
            t.name
        ))
        .error()
    }
}

/// The first step of a build: record the index as building (writes keep its
/// entries from the moment this commits; routing ignores it), create its
/// lookup tables and a local index on the columns in every shard.
#[pg_extern(name = "_vidx_begin")]
fn vidx_begin(
    tbl: PgRelation,
    columns: Vec<String>,
    is_unique: bool,
    name: Option<String>,
) -> String {
    let relid = tbl.oid();
    drop(tbl);
    let display = relation_display_name(relid);
    let Some(t) = cache::try_table(relid) else {
        raise(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("{display} is not a distributed table"),
        )
        .error()
    };
    if t.is_reference() {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("{display} is a reference table: every node holds all its rows, a read of it visits one node"),
        )
        .hint("Use conductor.create_shard_index for a local index on its copies.")
        .error()
    }
    if columns.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "a virtual index needs at least one column",
        )
        .error()
    }
    // Lookup tables are placed with the table's shards: one created while a
    // shard moves would be left behind on the old node.
    crate::api::moves::refuse_while_moving(relid, "create a virtual index on");
    let mut idx = Vec::new();
    for c in &columns {
        let Some(i) = t.columns.iter().position(|col| &col.name == c) else {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!("column \"{c}\" of {display} does not exist"),
            )
            .error()
        };
        if !t.columns[i].ty.is_shard_key_type() {
            raise(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!(
                    "column \"{c}\" has type {}, which a virtual index cannot hold",
                    t.columns[i].ty
                ),
            )
            .detail("Virtual index values are placed by the shard-key hash: smallint, integer, bigint, text, varchar and uuid.")
            .error()
        }
        if is_unique {
            crate::api::tables::refuse_unique_key_column(relid, c, "unique index column");
        }
        if idx.contains(&i) {
            raise(
                PgSqlErrorCode::ERRCODE_DUPLICATE_COLUMN,
                format!("column \"{c}\" appears twice"),
            )
            .error()
        }
        idx.push(i);
    }
    let name = name.unwrap_or_else(|| {
        let raw = format!("{}_{}_vidx", t.remote_name, columns.join("_"));
        raw.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .take(40)
            .collect()
    });
    if !(1..=40).contains(&name.len())
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_NAME,
            "a virtual index name has 1 to 40 letters, digits or underscores",
        )
        .error()
    }
    let exists = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM conductor.virtual_index WHERE index_name = $1)",
        &[name.as_str().into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if exists {
        raise(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!("virtual index \"{name}\" already exists"),
        )
        .error()
    }
    if is_unique {
        for s in 0..t.shard_count() {
            refuse_local_duplicates(&t, &name, &idx, s);
        }
    }
    let lookup_database = crate::vindex::nodes_have_lookup_databases(&t);
    Spi::run_with_args(
        "INSERT INTO conductor.virtual_index
                (index_name, relid, columns, is_unique, builder_pid, lookup_database)
         VALUES ($1, $2, $3::name[], $4, pg_catalog.pg_backend_pid(), $5)",
        &[
            name.as_str().into(),
            relid.into(),
            columns.clone().into(),
            is_unique.into(),
            lookup_database.into(),
        ],
    )
    .unwrap_or_else(|e| error!("conductor: could not record the virtual index: {e}"));
    let types: Vec<_> = idx.iter().map(|&i| t.columns[i].ty).collect();
    let local = local_index(&name, columns, is_unique);
    on_every_shard(&t, "CREATE VIRTUAL INDEX", |_, table| {
        vec![
            Stmt::new(REFRESH_SCHEMA_SQL, vec![]),
            Stmt::new(create_index_sql(table, &local), vec![]),
        ]
    });
    crate::vindex::on_every_lookup_shard(&t, database(lookup_database), &name, |_, lookup| {
        vec![
            Stmt::new(REFRESH_SCHEMA_SQL, vec![]),
            Stmt::new(vindex::create_lookup_sql(lookup, &types, is_unique), vec![]),
        ]
    });
    invalidate_plans(relid);
    name
}

fn database(lookup_database: bool) -> crate::vindex::Database {
    if lookup_database {
        crate::vindex::Database::Lookup
    } else {
        crate::vindex::Database::Shards
    }
}

/// The table and catalog state of an index.
struct Recorded {
    relid: pg_sys::Oid,
    status: String,
    shards_done: i32,
    position: Option<JsonB>,
    lookup_database: bool,
}

fn recorded(name: &str) -> Recorded {
    Spi::connect(|client| {
        let rows = client.select(
            "SELECT relid::oid, status, backfill_shards, backfill_position, lookup_database
               FROM conductor.virtual_index WHERE index_name = $1",
            Some(1),
            &[name.into()],
        )?;
        if rows.is_empty() {
            return Ok(None);
        }
        let row = rows.first();
        Ok::<_, pgrx::spi::Error>(Some(Recorded {
            relid: row.get(1)?.unwrap_or(pg_sys::Oid::INVALID),
            status: row.get(2)?.unwrap_or_default(),
            shards_done: row.get(3)?.unwrap_or_default(),
            position: row.get(4)?,
            lookup_database: row.get(5)?.unwrap_or(false),
        }))
    })
    .unwrap_or_else(|e| error!("conductor: could not read the virtual index catalog: {e}"))
    .unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("virtual index \"{name}\" does not exist"),
        )
        .error()
    })
}

fn index_of(t: &TableTopology, name: &str) -> usize {
    t.virtual_indexes
        .iter()
        .position(|ix| ix.name == name)
        .unwrap_or_else(|| {
            raise(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("virtual index \"{name}\" is neither building nor ready"),
            )
            .error()
        })
}

/// One chunk of the backfill: the next rows of the current shard (in
/// primary-key order) get their entries; true once every shard is done.
#[pg_extern(name = "_vidx_backfill_step")]
fn vidx_backfill_step(name: &str) -> bool {
    let rec = recorded(name);
    if rec.status != "building" {
        raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("virtual index \"{name}\" is not building"),
        )
        .error()
    }
    let t: Rc<TableTopology> = cache::table(rec.relid);
    let i = index_of(&t, name);
    let ix = &t.virtual_indexes[i];
    let shard = rec.shards_done as u32;
    if shard >= t.shard_count() {
        return true;
    }
    let after: Option<Vec<Value>> = rec.position.and_then(|j| position_values(&j.0));
    let table = &t.shards[shard as usize].remote_table;
    let rows = crate::vindex::read_one(
        &t,
        shard,
        ix.backfill_stmt(&t, table, after.as_deref(), BACKFILL_CHUNK),
    );
    let npk = t.primary_key.len();
    let full: Vec<Vec<Value>> = rows
        .iter()
        .map(|r| {
            let mut row = vec![Value::Null; t.columns.len()];
            for (c, v) in ix.columns.iter().zip(&r[npk..]) {
                row[*c] = v.clone();
            }
            row
        })
        .collect();
    let pairs: Vec<(u32, &[Value])> = full.iter().map(|r| (shard, r.as_slice())).collect();
    // The rows are committed already: their entries only need to exist
    // before the index is ready.
    crate::vindex::before_write(&t, &pairs, &[i], false, false);
    let done_shard = rows.len() < BACKFILL_CHUNK;
    let position = if done_shard {
        None
    } else {
        rows.last()
            .map(|r| JsonB(serde_json::to_value(&r[..npk]).unwrap_or_default()))
    };
    Spi::run_with_args(
        "UPDATE conductor.virtual_index
            SET backfill_shards = backfill_shards + $2::int,
                backfill_position = $3,
                backfill_rows = backfill_rows + $4
          WHERE index_name = $1",
        &[
            name.into(),
            i32::from(done_shard).into(),
            position.into(),
            (rows.len() as i64).into(),
        ],
    )
    .unwrap_or_else(|e| error!("conductor: could not record the backfill's progress: {e}"));
    done_shard && shard + 1 >= t.shard_count()
}

fn position_values(j: &serde_json::Value) -> Option<Vec<Value>> {
    serde_json::from_value(j.clone()).ok()
}

/// The last step of a build: routing may use the index.
#[pg_extern(name = "_vidx_finish")]
fn vidx_finish(name: &str) {
    let rec = recorded(name);
    Spi::run_with_args(
        "UPDATE conductor.virtual_index SET status = 'ready', builder_pid = NULL,
                backfill_position = NULL
          WHERE index_name = $1 AND status = 'building'",
        &[name.into()],
    )
    .unwrap_or_else(|e| error!("conductor: could not mark the virtual index ready: {e}"));
    invalidate_plans(rec.relid);
}

/// A build that failed: the index stays, failed, until dropped; writes no
/// longer keep it and routing never uses it.
#[pg_extern(name = "_vidx_fail")]
fn vidx_fail(name: &str, why: &str) {
    let rec = recorded(name);
    Spi::run_with_args(
        "UPDATE conductor.virtual_index SET status = 'failed', builder_pid = NULL, failure = $2
          WHERE index_name = $1 AND status = 'building'",
        &[name.into(), why.into()],
    )
    .unwrap_or_else(|e| error!("conductor: could not mark the virtual index failed: {e}"));
    invalidate_plans(rec.relid);
}

/// Drops a virtual index: its catalog row, its lookup tables and the local
/// index of every shard (in this transaction).
#[pg_extern]
fn drop_virtual_index(name: &str) {
    // As DROP INDEX does, wait for the statements that read or write the
    // table and make later ones wait for this transaction: a writer that
    // knew the index would write its entries into lookup tables dropped
    // here and fail with "no such table"; after the commit, statements
    // plan without it.
    // SAFETY: a lock on a relation in a transaction, released at its end.
    unsafe {
        pg_sys::LockRelationOid(
            recorded(name).relid,
            pg_sys::AccessExclusiveLock as pg_sys::LOCKMODE,
        )
    };
    // Read again after the wait (a concurrent drop).
    let rec = recorded(name);
    let t = cache::table(rec.relid);
    Spi::run_with_args(
        "DELETE FROM conductor.virtual_index WHERE index_name = $1",
        &[name.into()],
    )
    .unwrap_or_else(|e| error!("conductor: could not forget the virtual index: {e}"));
    let local = format!("vx_{name}");
    on_every_shard(&t, "DROP VIRTUAL INDEX", |_, table| {
        vec![
            Stmt::new(REFRESH_SCHEMA_SQL, vec![]),
            Stmt::new(drop_index_sql(table, &local), vec![]),
        ]
    });
    crate::vindex::on_every_lookup_shard(&t, database(rec.lookup_database), name, |_, lookup| {
        vec![Stmt::new(drop_table_sql(lookup), vec![])]
    });
    invalidate_plans(rec.relid);
}

/// The number of entries in an index's lookup tables (read now); NULL with
/// a WARNING naming the node when one cannot be read, so that
/// `conductor.virtual_indexes` still lists every index while a node is down.
#[pg_extern]
fn virtual_index_entries(name: &str) -> Option<i64> {
    let rec = recorded(name);
    let t = cache::table(rec.relid);
    match crate::vindex::count_entries(&t, name, database(rec.lookup_database)) {
        Ok(n) => Some(n),
        Err(e) => {
            raise(
                PgSqlErrorCode::ERRCODE_WARNING,
                format!("conductor: the entries of virtual index {name} cannot be counted now"),
            )
            .detail(e.to_string())
            .warning();
            None
        }
    }
}

/// Recounts an index from the shards: entries no row has (`extra`), rows
/// whose entry is absent (`missing`, which must be 0); with `repair`,
/// removes the extras whose owner shard, checked under its node's write
/// lock, holds no such row.
#[pg_extern]
fn verify_virtual_index(
    name: &str,
    repair: default!(bool, false),
) -> TableIterator<
    'static,
    (
        name!(entries, i64),
        name!(missing, i64),
        name!(extra, i64),
        name!(repaired, i64),
    ),
> {
    let rec = recorded(name);
    let t = cache::table(rec.relid);
    let i = index_of(&t, name);
    let ix = &t.virtual_indexes[i];
    // Rows first, entries after: an entry is committed before its row, so
    // every row read has its entry committed by the time entries are read.
    let mut expected: BTreeSet<(u32, Entry)> = BTreeSet::new();
    let types = ix.types(&t);
    for s in 0..t.shard_count() {
        let table = &t.shards[s as usize].remote_table;
        for row in crate::vindex::read_one(&t, s, ix.shard_values_stmt(&t, table)) {
            let Ok(Some(lshard)) = vindex::lookup_shard(&types, &row, t.shard_count()) else {
                continue;
            };
            expected.insert((
                lshard,
                Entry {
                    values: row.into_iter().map(EntryValue).collect(),
                    owner: s,
                },
            ));
        }
    }
    let mut entries: BTreeSet<(u32, Entry)> = BTreeSet::new();
    let n = ix.columns.len();
    for s in 0..t.shard_count() {
        let table = ix.lookup_table(&t, s);
        let stmt = ix.all_entries_stmt(&table);
        for row in crate::vindex::read_in(&t, s, crate::vindex::lookup_database(ix), stmt) {
            let owner = match row.get(n) {
                Some(Value::Integer(o)) => *o as u32,
                _ => continue,
            };
            entries.insert((
                s,
                Entry {
                    values: row[..n].iter().cloned().map(EntryValue).collect(),
                    owner,
                },
            ));
        }
    }
    let missing = expected.difference(&entries).count() as i64;
    let extras: Vec<&(u32, Entry)> = entries.difference(&expected).collect();
    let mut repaired = 0i64;
    if repair {
        for (lshard, e) in &extras {
            if crate::vindex::remove_extra(&t, i, *lshard, e) {
                repaired += 1;
            }
        }
    }
    TableIterator::once((entries.len() as i64, missing, extras.len() as i64, repaired))
}
