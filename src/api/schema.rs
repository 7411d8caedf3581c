//! Schema of distributed tables on the nodes: `ALTER FOREIGN TABLE` carried
//! to every shard table inside the statement's transaction (an event
//! trigger at the end of each ALTER calls [`sync_shard_schema`]), shard
//! indexes, and `check_schema`, which asks every shard what it has.
//!
//! The catalog keeps the columns the shard tables have
//! (`distributed_table.shard_columns`); the difference between them and the
//! foreign table's columns is what the shards must do
//! (`conductor_core::schema`). A change the shards cannot follow is refused
//! with an ERROR, which undoes the ALTER: nothing changes anywhere.

use crate::catalog::{cache, relation_columns, relation_display_name, TableTopology};
use crate::errors::raise;
use crate::fdw::options::table_option;
use crate::xact::streams;
use conductor_core::plan::ShardPlan;
use conductor_core::remote_sql::{
    create_index_sql, drop_index_sql, shard_index_name, ShardIndexDef, REFRESH_SCHEMA_SQL,
};
use conductor_core::schema::{plan_change, NewColumn, ShardColumn};
use conductor_hrana::{Stmt, Value};
use pgrx::prelude::*;
use pgrx::{JsonB, PgRelation, PgSqlErrorCode};
use std::ffi::CString;

/// What the catalog says about a distributed table's shard schema.
struct Recorded {
    remote_name: String,
    shard_key: String,
    primary_key: Vec<String>,
    columns: Vec<ShardColumn>,
}

fn recorded(relid: pg_sys::Oid) -> Option<Recorded> {
    Spi::connect(|client| -> Result<Option<Recorded>, pgrx::spi::Error> {
        let rows = client.select(
            "SELECT remote_name, shard_key::text, primary_key::text[], shard_columns
               FROM conductor.distributed_table WHERE relid = $1",
            Some(1),
            &[relid.into()],
        )?;
        if rows.is_empty() {
            return Ok(None);
        }
        let row = rows.first();
        let columns: Option<JsonB> = row.get(4)?;
        Ok(Some(Recorded {
            remote_name: row.get(1)?.unwrap_or_default(),
            shard_key: row.get(2)?.unwrap_or_default(),
            primary_key: row.get(3)?.unwrap_or_default(),
            columns: columns
                .and_then(|j| serde_json::from_value(j.0).ok())
                .unwrap_or_default(),
        }))
    })
    .unwrap_or_else(|e| error!("conductor: could not read the distributed table: {e}"))
}

/// The shard indexes every shard table (every copy of a reference table)
/// of `relid` carries.
pub(crate) fn indexes(relid: pg_sys::Oid) -> Vec<ShardIndexDef> {
    Spi::connect(|client| -> Result<Vec<ShardIndexDef>, pgrx::spi::Error> {
        client
            .select(
                "SELECT index_name::text, columns::text[], is_unique
                   FROM conductor.shard_index WHERE relid = $1 ORDER BY index_name",
                None,
                &[relid.into()],
            )?
            .map(|row| {
                Ok(ShardIndexDef {
                    name: row.get(1)?.unwrap_or_default(),
                    columns: row.get(2)?.unwrap_or_default(),
                    unique: row.get(3)?.unwrap_or(false),
                })
            })
            .collect()
    })
    .unwrap_or_else(|e| error!("conductor: could not read the shard indexes: {e}"))
}

/// The columns of the table's unique virtual indexes.
fn unique_virtual_index_columns(relid: pg_sys::Oid) -> Vec<String> {
    Spi::connect(|client| -> Result<Vec<String>, pgrx::spi::Error> {
        let mut columns = Vec::new();
        let rows = client.select(
            "SELECT columns::text[] FROM conductor.virtual_index WHERE relid = $1 AND is_unique",
            None,
            &[relid.into()],
        )?;
        for row in rows {
            columns.extend(row.get::<Vec<String>>(1)?.unwrap_or_default());
        }
        Ok(columns)
    })
    .unwrap_or_else(|e| error!("conductor: could not read the virtual indexes: {e}"))
}

/// The foreign table's columns as its shard tables must have them: a
/// column is NOT NULL there when declared so or part of the row identity.
/// Unsupported types are refused by the caller through `plan_change`.
fn shard_columns_now(relid: pg_sys::Oid, identity: &[i16]) -> Vec<(ShardColumn, pg_sys::Oid)> {
    let columns = Spi::connect(|client| relation_columns(client, relid))
        .unwrap_or_else(|e| error!("conductor: could not read columns: {e}"));
    columns
        .into_iter()
        .map(|c| match c {
            Ok(c) => (
                ShardColumn {
                    attnum: c.column.attnum,
                    name: c.column.name.clone(),
                    ty: c.column.ty.pg_name().to_string(),
                    typmod: c.pg_type.typmod,
                    not_null: c.column.not_null || identity.contains(&c.column.attnum),
                },
                c.pg_type.oid,
            ),
            Err((name, ty)) => raise(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!("conductor cannot store column \"{name}\" of type {ty}"),
            )
            .error(),
        })
        .collect()
}

/// The value existing rows take for a new column: its DEFAULT evaluated
/// once, as the node stores it. Err(()) when the default is volatile.
fn new_column_default(
    relid: pg_sys::Oid,
    column: &ShardColumn,
    typoid: pg_sys::Oid,
) -> Result<Option<Value>, ()> {
    let adbin = Spi::get_one_with_args::<String>(
        "SELECT adbin::text FROM pg_catalog.pg_attrdef WHERE adrelid = $1 AND adnum = $2",
        &[relid.into(), column.attnum.into()],
    )
    .ok()
    .flatten();
    let Some(adbin) = adbin else {
        return Ok(None);
    };
    // A generated column's expression reads the row's other columns: it
    // cannot be evaluated alone, and the nodes cannot compute it for the
    // rows they hold.
    let generated = Spi::get_one_with_args::<bool>(
        "SELECT attgenerated <> '' FROM pg_catalog.pg_attribute WHERE attrelid = $1 AND attnum = $2",
        &[relid.into(), column.attnum.into()],
    )
    .unwrap_or_else(|e| error!("conductor: could not read the new column: {e}"))
    .unwrap_or(false);
    if generated {
        refuse(
            relid,
            format!(
                "column \"{}\" is generated, and the rows already on the shards cannot compute it",
                column.name
            ),
        );
    }
    let text = CString::new(adbin).expect("a node tree has no NUL");
    let ty = column.column_type().expect("a supported type");
    // SAFETY: pg_attrdef.adbin is a node tree of this column's default;
    // expression_planner prepares it for execution in this transaction.
    unsafe {
        let expr = pg_sys::stringToNode(text.as_ptr()) as *mut pg_sys::Expr;
        let expr = pg_sys::expression_planner(expr) as *mut pg_sys::Node;
        if pg_sys::contain_volatile_functions(expr) {
            return Err(());
        }
        let codec = crate::convert::ColumnCodec::new(&column.name, ty, typoid, column.typmod);
        match crate::convert::evaluate_standalone(expr, &codec) {
            Ok(Value::Null) => Ok(None),
            Ok(v) => Ok(Some(v)),
            Err(e) => raise(
                PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
                format!(
                    "conductor cannot store the default of column \"{}\": {e}",
                    column.name
                ),
            )
            .error(),
        }
    }
}

fn refuse(relid: pg_sys::Oid, why: impl std::fmt::Display) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        format!(
            "cannot change {} on its shards: {why}",
            relation_display_name(relid)
        ),
    )
    .hint("Nothing was changed. conductor carries out ADD COLUMN (with a constant default), DROP COLUMN, RENAME COLUMN, SET/DROP NOT NULL, widening ALTER COLUMN TYPE and RENAME of the table.")
    .error()
}

/// A virtual index names its columns and stores their values: dropping,
/// renaming or retyping one of them is refused while the index exists.
fn refuse_indexed_column_change(relid: pg_sys::Oid, rec: &Recorded) {
    let indexed: Vec<(String, Vec<String>)> = Spi::connect(|client| {
        client
            .select(
                "SELECT index_name, columns::text[] FROM conductor.virtual_index WHERE relid = $1",
                None,
                &[relid.into()],
            )?
            .map(|row| {
                Ok((
                    row.get::<String>(1)?.unwrap_or_default(),
                    row.get::<Vec<String>>(2)?.unwrap_or_default(),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| error!("conductor: could not read the virtual indexes: {e}"));
    if indexed.is_empty() {
        return;
    }
    let now = Spi::connect(|client| relation_columns(client, relid))
        .unwrap_or_else(|e| error!("conductor: could not read the columns: {e}"));
    for (index, columns) in indexed {
        for c in columns {
            let before = rec.columns.iter().find(|r| r.name == c).map(|r| &r.ty);
            let after = now.iter().find_map(|col| match col {
                Ok(p) if p.column.name == c => Some(p.column.ty.pg_name().to_string()),
                _ => None,
            });
            if after.is_none() || before != after.as_ref() {
                refuse(
                    relid,
                    format!("column \"{c}\" is in virtual index \"{index}\"; drop the index first"),
                );
            }
        }
    }
}

/// Runs at the end of every ALTER of a table (event trigger): brings the
/// shard tables of a distributed table to its new columns, in this
/// transaction's remote transactions, or refuses the change. An ALTER of a
/// partitioned or inherited table changes its descendants too, yet the
/// event trigger reports only the table it names, so every descendant that
/// is distributed is brought along as well.
#[pg_extern(name = "_sync_shard_schema")]
fn sync_shard_schema(relid: pg_sys::Oid) {
    let tables: Vec<pg_sys::Oid> = Spi::connect(|client| {
        client
            .select(
                "WITH RECURSIVE tree(relid) AS (
                     SELECT $1::oid
                     UNION
                     SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.relid)
                 SELECT relid FROM tree",
                None,
                &[relid.into()],
            )?
            .map(|row| Ok(row.get::<pg_sys::Oid>(1)?.unwrap_or(relid)))
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| error!("conductor: could not read the inheritance tree: {e}"));
    for table in tables {
        sync_table_shard_schema(table);
    }
}

fn sync_table_shard_schema(relid: pg_sys::Oid) {
    let Some(rec) = recorded(relid) else {
        return; // not distributed
    };
    if let Some(name) = table_option(relid, "table_name") {
        if name != rec.remote_name {
            refuse(
                relid,
                format!(
                    "the shard tables are named after \"{}\"; the table_name option cannot change once the table is distributed",
                    rec.remote_name
                ),
            );
        }
    }
    refuse_indexed_column_change(relid, &rec);
    let attnum_of = |name: &str| {
        rec.columns
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.attnum)
    };
    let key = attnum_of(&rec.shard_key)
        .unwrap_or_else(|| error!("conductor: the catalog lost the shard key's column"));
    let identity: Vec<i16> = rec
        .primary_key
        .iter()
        .filter_map(|n| attnum_of(n))
        .collect();
    if let Some(option) = table_option(relid, "primary_key") {
        let now: Vec<&str> = option.split(',').map(str::trim).collect();
        if now
            != rec
                .primary_key
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        {
            refuse(
                relid,
                format!(
                    "the primary_key option cannot change once the table is distributed (the shard tables' key is '{}')",
                    rec.primary_key.join(",")
                ),
            );
        }
    }
    // Keys are told apart by their stored form on the nodes (see
    // create_distributed_table): a column of the primary key or of a
    // unique index cannot take a collation or a type under which equal
    // values are stored differently (numeric(10,2) to numeric would let
    // 1.0 and 1.00 both in).
    let mut keyed = identity.clone();
    let unique_columns = indexes(relid)
        .into_iter()
        .filter(|ix| ix.unique)
        .flat_map(|ix| ix.columns)
        .chain(unique_virtual_index_columns(relid));
    keyed.extend(unique_columns.filter_map(|c| attnum_of(&c)));
    for attnum in keyed {
        if let Some((why, _, _)) = super::tables::unique_key_refusal(relid, attnum) {
            let name = rec
                .columns
                .iter()
                .find(|c| c.attnum == attnum)
                .map_or("?", |c| c.name.as_str());
            refuse(relid, format!("key column \"{name}\" {why}"));
        }
    }
    let now = shard_columns_now(relid, &identity);
    let mut new_columns = Vec::with_capacity(now.len());
    for (column, typoid) in now {
        let is_new = !rec.columns.iter().any(|c| c.attnum == column.attnum);
        let (default, default_not_constant) = if is_new && column.column_type().is_some() {
            match new_column_default(relid, &column, typoid) {
                Ok(v) => (v, false),
                Err(()) => (None, true),
            }
        } else {
            (None, false)
        };
        new_columns.push(NewColumn {
            column,
            default,
            default_not_constant,
        });
    }
    super::moves::refuse_while_moving(relid, "alter");
    let shard_indexes = indexes(relid);
    // A rebuilt shard table gets every index it had: the shard indexes and
    // the local index of each virtual index (a unique one is what refuses a
    // second row with a value on the shard holding it). Their columns
    // cannot be dropped or renamed (refused above).
    let rebuilt_indexes: Vec<ShardIndexDef> = shard_indexes
        .iter()
        .cloned()
        .chain(super::vindex::local_indexes(relid))
        .collect();
    let change = plan_change(&rec.columns, &new_columns, key, &identity, &rebuilt_indexes)
        .unwrap_or_else(|why| refuse(relid, why));

    // Record what the shards will have, with renames applied to the key,
    // the row identity and the indexes.
    let renamed = |name: &str| -> String {
        change
            .renames
            .iter()
            .find(|(from, _)| from == name)
            .map(|(_, to)| to.clone())
            .unwrap_or_else(|| name.to_string())
    };
    let columns: Vec<ShardColumn> = new_columns.into_iter().map(|n| n.column).collect();
    let owner = crate::catalog::current_user_owns(relid);
    crate::catalog::writing_as_extension_owner(owner, || {
        Spi::connect_mut(|client| -> Result<(), pgrx::spi::Error> {
            client.update(
                "UPDATE conductor.distributed_table
                SET shard_columns = $2, shard_key = $3::name, primary_key = $4::name[]
              WHERE relid = $1",
                None,
                &[
                    relid.into(),
                    JsonB(serde_json::to_value(&columns).expect("serializable")).into(),
                    renamed(&rec.shard_key).into(),
                    rec.primary_key
                        .iter()
                        .map(|n| renamed(n))
                        .collect::<Vec<String>>()
                        .into(),
                ],
            )?;
            for ix in &shard_indexes {
                let cols: Vec<String> = ix.columns.iter().map(|c| renamed(c)).collect();
                if cols != ix.columns {
                    client.update(
                    "UPDATE conductor.shard_index SET columns = $2::name[] WHERE index_name = $1",
                    None,
                    &[ix.name.as_str().into(), cols.into()],
                )?;
                }
            }
            Ok(())
        })
        .unwrap_or_else(|e| error!("conductor: could not record the shard schema: {e}"))
    });

    // The shard tables follow (after the catalog, so the topology is read
    // with the new names); a failure on any node fails the ALTER, and the
    // transaction's abort undoes the catalog and every shard.
    if !change.is_empty() {
        let topology = cache::table(relid);
        let plan = ShardPlan::every_shard(&topology, "ALTER", |table| change.for_table(table));
        streams::run_plan(&topology, &plan, streams::Access::Write);
    }

    // The primary_key option names the key's columns: it follows their
    // renames, or every later ALTER would find it changed and be refused
    // (and a restore would read the old names). The nested ALTER comes
    // back here, finds the option equal to the catalog and changes nothing.
    if let Some(option) = table_option(relid, "primary_key") {
        let names: Vec<&str> = option.split(',').map(str::trim).collect();
        let followed: Vec<String> = names.iter().map(|n| renamed(n)).collect();
        if followed.iter().zip(&names).any(|(new, old)| new != old) {
            let alter = Spi::get_one_with_args::<String>(
                "SELECT format('ALTER FOREIGN TABLE %s OPTIONS (SET primary_key %L)', $1::regclass, $2)",
                &[relid.into(), followed.join(",").into()],
            )
            .ok()
            .flatten()
            .unwrap_or_else(|| error!("conductor: could not name the table"));
            Spi::run(&alter).unwrap_or_else(|e| {
                error!("conductor: could not rename the primary_key option's columns: {e}")
            });
        }
    }
}

/// The shard columns to record for a newly distributed table.
pub fn initial_shard_columns(relid: pg_sys::Oid, identity: &[i16]) -> JsonB {
    let columns: Vec<ShardColumn> = shard_columns_now(relid, identity)
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    JsonB(serde_json::to_value(columns).expect("serializable"))
}

/// The shard columns of a distributed table as its foreign table's columns
/// describe them now (its recorded primary key is the row identity): what
/// an extension upgrade records for tables distributed before the catalog
/// kept them.
#[pg_extern]
fn _shard_columns_of(tbl: PgRelation) -> JsonB {
    let relid = tbl.oid();
    let identity: Vec<i16> = Spi::connect(|client| -> Result<Vec<i16>, pgrx::spi::Error> {
        client
            .select(
                "SELECT a.attnum FROM conductor.distributed_table t
                   JOIN pg_catalog.pg_attribute a
                     ON a.attrelid = t.relid AND a.attname = ANY (t.primary_key)
                  WHERE t.relid = $1 AND a.attnum > 0 AND NOT a.attisdropped",
                None,
                &[relid.into()],
            )?
            .map(|row| Ok(row.get(1)?.unwrap_or_default()))
            .collect()
    })
    .unwrap_or_else(|e| error!("conductor: could not read the primary key: {e}"));
    initial_shard_columns(relid, &identity)
}

/// Every shard's columns and indexes compared with what the foreign table
/// and the catalog say it should have: one row per difference (none when
/// every shard is in order).
#[pg_extern]
fn check_schema(
    tbl: PgRelation,
) -> TableIterator<
    'static,
    (
        name!(shard_id, i32),
        name!(node_id, String),
        name!(problem, String),
    ),
> {
    let relid = tbl.oid();
    let Some(rec) = recorded(relid) else {
        raise(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!(
                "{} is not a distributed table",
                relation_display_name(relid)
            ),
        )
        .error()
    };
    let topology = cache::table(relid);
    let expected = expected_columns(&topology, &rec);
    // The shard indexes and the local index of each virtual index.
    let mut shard_indexes = indexes(relid);
    shard_indexes.extend(super::vindex::local_indexes(relid));
    let plan = ShardPlan::every_shard(&topology, "check_schema", |table| {
        vec![
            Stmt::new(
                "SELECT name, type, \"notnull\", pk FROM pragma_table_info(?) ORDER BY cid",
                vec![Value::Text(table.to_string())],
            ),
            Stmt::new(
                "SELECT il.name, il.\"unique\",
                        (SELECT group_concat(name, ',') FROM
                           (SELECT name FROM pragma_index_info(il.name) ORDER BY seqno))
                   FROM pragma_index_list(?) il WHERE il.origin = 'c' ORDER BY il.name",
                vec![Value::Text(table.to_string())],
            ),
        ]
    });
    // A write plan of a reference table answers with one copy's results:
    // each copy is asked on its own, so that one that differs is reported.
    let copies: Vec<crate::catalog::TableTopology> = if topology.is_reference() {
        topology
            .replicas
            .iter()
            .map(|location| {
                let mut copy = (*topology).clone();
                copy.replicas.clear();
                copy.table.shards[0] = location.clone();
                copy
            })
            .collect()
    } else {
        vec![(*topology).clone()]
    };
    let mut results = Vec::new();
    for copy in &copies {
        for (shard, result) in streams::run_plan(copy, &plan, streams::Access::Write) {
            results.push((copy.shards[shard as usize].clone(), shard, result));
        }
    }
    let mut problems = Vec::new();
    for pair in results.chunks(2) {
        let [(location, shard, cols), (_, _, idx)] = pair else {
            continue;
        };
        let mut say = |p: String| problems.push((*shard as i32, location.node_id.clone(), p));
        let have: Vec<(String, String, bool, i64)> = cols
            .rows
            .iter()
            .map(|r| {
                let text = |v: &Value| match v {
                    Value::Text(s) => s.clone(),
                    _ => String::new(),
                };
                let int = |v: &Value| match v {
                    Value::Integer(i) => *i,
                    _ => 0,
                };
                (text(&r[0]), text(&r[1]), int(&r[2]) != 0, int(&r[3]))
            })
            .collect();
        if have.is_empty() {
            say(format!("shard table {} is missing", location.remote_table));
            continue;
        }
        for want in &expected {
            match have.iter().find(|h| h.0 == want.0) {
                None => say(format!("column \"{}\" is missing", want.0)),
                Some(h) => {
                    if h.1 != want.1 {
                        say(format!(
                            "column \"{}\" is declared {:?}, expected {:?}",
                            want.0, h.1, want.1
                        ));
                    }
                    if h.2 != want.2 {
                        say(format!(
                            "column \"{}\" is {}NOT NULL, expected {}NOT NULL",
                            want.0,
                            if h.2 { "" } else { "not " },
                            if want.2 { "" } else { "not " }
                        ));
                    }
                    if h.3 != want.3 {
                        say(format!(
                            "column \"{}\" is at position {} of the primary key, expected {}",
                            want.0, h.3, want.3
                        ));
                    }
                }
            }
        }
        for h in &have {
            if !expected.iter().any(|w| w.0 == h.0) {
                say(format!("column \"{}\" is not in the foreign table", h.0));
            }
        }
        let have_ix: Vec<(String, bool, String)> = idx
            .rows
            .iter()
            .map(|r| {
                (
                    match &r[0] {
                        Value::Text(s) => s.clone(),
                        _ => String::new(),
                    },
                    matches!(r[1], Value::Integer(1)),
                    match &r[2] {
                        Value::Text(s) => s.clone(),
                        _ => String::new(),
                    },
                )
            })
            .collect();
        for ix in &shard_indexes {
            let name = shard_index_name(&location.remote_table, &ix.name);
            match have_ix.iter().find(|h| h.0 == name) {
                None => say(format!("index \"{name}\" is missing")),
                Some(h) if h.1 != ix.unique || h.2 != ix.columns.join(",") => say(format!(
                    "index \"{name}\" is {}({}), expected {}({})",
                    if h.1 { "UNIQUE " } else { "" },
                    h.2,
                    if ix.unique { "UNIQUE " } else { "" },
                    ix.columns.join(",")
                )),
                Some(_) => {}
            }
        }
        for h in &have_ix {
            if !shard_indexes
                .iter()
                .any(|ix| shard_index_name(&location.remote_table, &ix.name) == h.0)
            {
                say(format!(
                    "index \"{}\" is not a shard index of the table",
                    h.0
                ));
            }
        }
    }
    TableIterator::new(problems)
}

/// (name, declared type, NOT NULL, position in the primary key) per column,
/// as `create_table_sql` declares them.
fn expected_columns(topology: &TableTopology, rec: &Recorded) -> Vec<(String, String, bool, i64)> {
    topology
        .columns
        .iter()
        .map(|c| {
            let pk = rec
                .primary_key
                .iter()
                .position(|n| *n == c.name)
                .map(|p| p as i64 + 1)
                .unwrap_or(0);
            (
                c.name.clone(),
                c.ty.sqlite_decltype().to_string(),
                c.not_null || pk > 0,
                pk,
            )
        })
        .collect()
}

/// Creates an index on every shard table of a distributed table (in this
/// transaction). Unique means unique within a shard, so it is refused
/// unless the columns include the shard key, which makes it unique
/// globally.
#[pg_extern]
fn create_shard_index(
    tbl: PgRelation,
    columns: Vec<String>,
    name: default!(Option<String>, "NULL"),
    is_unique: default!(bool, false),
) -> String {
    let relid = tbl.oid();
    let display = relation_display_name(relid);
    let Some(rec) = recorded(relid) else {
        raise(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("{display} is not a distributed table"),
        )
        .error()
    };
    if columns.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "a shard index needs at least one column",
        )
        .error()
    }
    super::moves::refuse_while_moving(relid, "index");
    let topology = cache::table(relid);
    for c in &columns {
        if !topology.columns.iter().any(|t| &t.name == c) {
            raise(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!("column \"{c}\" of {display} does not exist"),
            )
            .error()
        }
    }
    if is_unique && !columns.contains(&rec.shard_key) {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "a unique shard index must include the shard key",
        )
        .detail(format!(
            "Each shard checks uniqueness only among its own rows; with the shard key \"{}\" among the columns, equal values always meet on one shard.",
            rec.shard_key
        ))
        .error()
    }
    if is_unique {
        for c in &columns {
            super::tables::refuse_unique_key_column(relid, c, "unique index column");
        }
    }
    let name = name.unwrap_or_else(|| format!("{}_idx", columns.join("_")));
    if name.is_empty() || name.len() > 48 {
        raise(
            PgSqlErrorCode::ERRCODE_INVALID_NAME,
            "a shard index name has 1 to 48 characters",
        )
        .error()
    }
    Spi::run_with_args(
        "INSERT INTO conductor.shard_index (index_name, relid, columns, is_unique)
         VALUES ($1, $2, $3::name[], $4)",
        &[
            name.as_str().into(),
            relid.into(),
            columns.clone().into(),
            is_unique.into(),
        ],
    )
    .unwrap_or_else(|e| error!("conductor: could not record the shard index: {e}"));
    let def = ShardIndexDef {
        name: name.clone(),
        columns,
        unique: is_unique,
    };
    let plan = ShardPlan::every_shard(&topology, "CREATE INDEX", |table| {
        vec![
            Stmt::new(REFRESH_SCHEMA_SQL, vec![]),
            Stmt::new(create_index_sql(table, &def), vec![]),
        ]
    });
    streams::run_plan(&topology, &plan, streams::Access::Write);
    name
}

/// Drops a shard index from every shard table (in this transaction).
#[pg_extern]
fn drop_shard_index(name: &str) {
    let relid = Spi::get_one_with_args::<pg_sys::Oid>(
        "DELETE FROM conductor.shard_index WHERE index_name = $1 RETURNING relid::oid",
        &[name.into()],
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("shard index \"{name}\" does not exist"),
        )
        .error()
    });
    super::moves::refuse_while_moving(relid, "drop an index of");
    let topology = cache::table(relid);
    let plan = ShardPlan::every_shard(&topology, "DROP INDEX", |table| {
        vec![
            Stmt::new(REFRESH_SCHEMA_SQL, vec![]),
            Stmt::new(drop_index_sql(table, name), vec![]),
        ]
    });
    streams::run_plan(&topology, &plan, streams::Access::Write);
}
