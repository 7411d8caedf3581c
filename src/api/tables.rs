//! create_distributed_table, shard_for, and forgetting dropped tables.

use super::check_conductor_server;
use crate::catalog::{cache, credentials::token_for, relation_columns, relation_display_name};
use crate::errors::raise;
use crate::fdw::options::table_option;
use crate::remote::ShardRequest;
use crate::xact;
use crate::xact::streams::{self, NodeWork, ShardLabel};
use conductor_core::client::one_request_transaction;
use conductor_core::client::NodeEndpoint;
use conductor_core::placement::{shard_for as place, KeyValue, HASH_VERSION};
use conductor_core::remote_sql::{create_table_sql, drop_table_sql, shard_table_name};
use conductor_core::types::ColumnType;
use conductor_hrana::Stmt;
use pgrx::prelude::*;
use pgrx::{AnyElement, PgRelation, PgSqlErrorCode};
use std::collections::BTreeMap;

const MAX_SHARDS: i32 = 4096;

struct NodeRow {
    node_id: String,
    url: String,
}

/// The server's active nodes, by node id.
fn active_nodes(server_id: pg_sys::Oid) -> Vec<NodeRow> {
    nodes_where(server_id, true)
}

/// Every node of a server, whatever its status: a group's shards stay on
/// their nodes.
fn server_nodes(server_id: pg_sys::Oid) -> Vec<NodeRow> {
    nodes_where(server_id, false)
}

fn nodes_where(server_id: pg_sys::Oid, active_only: bool) -> Vec<NodeRow> {
    Spi::connect(|client| {
        client
            .select(
                "SELECT node_id, url FROM conductor.node
                  WHERE server_id = $1 AND (NOT $2 OR status = 'active') ORDER BY node_id",
                None,
                &[server_id.into(), active_only.into()],
            )?
            .map(|row| {
                Ok(NodeRow {
                    node_id: row.get::<String>(1)?.unwrap_or_default(),
                    url: row.get::<String>(2)?.unwrap_or_default(),
                })
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| error!("conductor: could not read nodes: {e}"))
}

/// A relation named as SQL names it (`'orders'`, `'s.orders'`), as regclass
/// input does.
fn resolve_relation(name: &str) -> pg_sys::Oid {
    Spi::get_one_with_args::<pg_sys::Oid>("SELECT $1::regclass::oid", &[name.into()])
        .ok()
        .flatten()
        .unwrap_or_else(|| invalid(format!("colocate_with: relation \"{name}\" does not exist")))
}

/// Why attribute `attnum` of `relid` cannot be in a key the nodes keep
/// unique (the primary key, a unique index), as (reason, detail, hint), or
/// None. The nodes tell key values apart by their stored form: values
/// Postgres' `=` calls equal must have one, so neither a collation under
/// which different strings are equal nor a type whose equal values are
/// stored differently (`ColumnType::equal_values_stored_alike`) can be
/// keyed.
pub fn unique_key_refusal(
    relid: pg_sys::Oid,
    attnum: i16,
) -> Option<(String, &'static str, &'static str)> {
    if attnum <= 0 {
        return None; // no such column: the caller reports that
    }
    // SAFETY: catalog lookups of an existing relation's attribute; the
    // type's name is copied before use.
    unsafe {
        let (mut typ, mut typmod, mut coll) = (pg_sys::Oid::INVALID, 0, pg_sys::Oid::INVALID);
        pg_sys::get_atttypetypmodcoll(relid, attnum, &mut typ, &mut typmod, &mut coll);
        if coll != pg_sys::Oid::INVALID && !pg_sys::get_collation_isdeterministic(coll) {
            return Some((
                "has a nondeterministic collation".into(),
                "The nodes compare keys byte by byte; this collation makes different strings equal.",
                "Use a deterministic collation for key columns.",
            ));
        }
        let ty = crate::convert::column_type_of(typ)?;
        if ty.equal_values_stored_alike(typmod) {
            return None;
        }
        let name = std::ffi::CStr::from_ptr(pg_sys::format_type_with_typemod(typ, typmod))
            .to_string_lossy()
            .into_owned();
        Some((
            format!("has type {name}, whose equal values can be stored differently"),
            "The nodes compare keys by their stored form: 1.0 and 1.00 (numeric), 'a' and 'a ' (bpchar) are equal in Postgres but stored as different values.",
            "Declare numeric with a scale (numeric(p, s)) or char with a length, or leave the column out of the key.",
        ))
    }
}

/// Raises the error of [`unique_key_refusal`] for column `name` of `relid`
/// (a "key column", "unique index column", …) when it has one.
pub fn refuse_unique_key_column(relid: pg_sys::Oid, name: &str, what: &str) {
    if let Some((why, detail, hint)) = unique_key_refusal(relid, attnum_of(relid, name)) {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!(
                "{what} \"{name}\" of {} {why}",
                relation_display_name(relid)
            ),
        )
        .detail(detail)
        .hint(hint)
        .error()
    }
}

/// The attribute number of column `name` of `relid` (0 when there is none).
pub fn attnum_of(relid: pg_sys::Oid, name: &str) -> i16 {
    let Ok(cname) = std::ffi::CString::new(name) else {
        return 0;
    };
    // SAFETY: a catalog lookup of an existing relation.
    unsafe { pg_sys::get_attnum(relid, cname.as_ptr()) }
}

fn invalid(message: String) -> ! {
    raise(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, message).error()
}

/// The shard count of a table created without one (and without a group to
/// take it from).
const DEFAULT_SHARDS: i32 = 16;

/// A co-location group a new table may join: its number, shard count, the
/// placement family of its shard key, and its shard→node map.
struct Group {
    colocation_id: i32,
    shard_count: i32,
    key_type: ColumnType,
    nodes: Vec<String>,
    display: String,
}

/// The groups of a server (one member each: they all share the map), or
/// the group of one table.
fn groups(server_id: pg_sys::Oid, of_table: Option<pg_sys::Oid>) -> Vec<Group> {
    let rows = Spi::connect(|client| {
        client
            .select(
                "SELECT DISTINCT ON (t.colocation_id) t.relid, t.colocation_id, t.shard_count,
                        (SELECT array_agg(s.node_id ORDER BY s.shard_id)
                           FROM conductor.shard s WHERE s.relid = t.relid)
                   FROM conductor.distributed_table t
                  WHERE t.server_id = $1 AND ($2::oid IS NULL OR t.relid = $2::oid)
                    AND NOT EXISTS (SELECT 1 FROM conductor.reference_placement r
                                     WHERE r.relid = t.relid)
                  ORDER BY t.colocation_id, t.relid",
                None,
                &[server_id.into(), of_table.into()],
            )?
            .map(|row| {
                Ok((
                    row.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::Oid::INVALID),
                    row.get::<i32>(2)?.unwrap_or_default(),
                    row.get::<i32>(3)?.unwrap_or_default(),
                    row.get::<Vec<String>>(4)?.unwrap_or_default(),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| error!("conductor: could not read co-location groups: {e}"));
    rows.into_iter()
        .filter_map(|(relid, colocation_id, shard_count, nodes)| {
            let topology = cache::try_table(relid)?;
            Some(Group {
                colocation_id,
                shard_count,
                key_type: topology.key().ty,
                nodes,
                display: relation_display_name(relid),
            })
        })
        .collect()
}

/// Shard keys whose values land on the same shard for equal values: the
/// placement hash encodes every integer width alike, and text like varchar.
fn same_placement(a: ColumnType, b: ColumnType) -> bool {
    conductor_core::pushdown::family(a) == conductor_core::pushdown::family(b)
}

/// Shard a foreign table by `shard_key` over the active nodes of its server:
/// create the shard tables on the nodes, then record the placement.
///
/// `colocate_with`: `'default'` joins an existing co-location group of the
/// server whose shard count and key placement match and whose shards are
/// all on active nodes (taking its shard→node map, also after the group
/// was rebalanced); `'none'` starts a new group; a table name joins that
/// table's group, taking its shard count and shard→node map.
#[pg_extern]
fn create_distributed_table(
    tbl: PgRelation,
    shard_key: &str,
    shard_count: default!(Option<i32>, "NULL"),
    colocate_with: default!(&str, "'default'"),
) {
    distribute(tbl, Some(shard_key), shard_count, colocate_with);
}

/// Replicate a foreign table to every active node of its server: one full
/// copy (one shard table, `<remote_name>_0000`) on each. Reads go to one
/// healthy node; writes go to every node in the statement's transaction;
/// a node added later receives a copy. A join of a distributed table with
/// it runs per shard of the distributed table.
#[pg_extern]
fn create_reference_table(tbl: PgRelation) {
    distribute(tbl, None, Some(1), "none");
}

/// create_distributed_table, or (no shard key) create_reference_table.
fn distribute(
    tbl: PgRelation,
    shard_key: Option<&str>,
    shard_count: Option<i32>,
    colocate_with: &str,
) {
    let reference = shard_key.is_none();
    let relid = tbl.oid();
    let display = relation_display_name(relid);
    if tbl.rd_rel.is_null()
        || unsafe { (*tbl.rd_rel).relkind } != pg_sys::RELKIND_FOREIGN_TABLE as std::ffi::c_char
    {
        raise(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("{display} is not a foreign table"),
        )
        .hint("Create it with CREATE FOREIGN TABLE ... SERVER <a conductor server>.")
        .error()
    }
    // SAFETY: GetForeignTable reads pg_foreign_table for a foreign table.
    let server_id = unsafe { (*pg_sys::GetForeignTable(relid)).serverid };
    check_conductor_server(server_id, &format!("of {display}"));
    if cache::try_table(relid).is_some() {
        raise(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!("{display} is already distributed"),
        )
        .error()
    }
    // SAFETY: reads the database encoding.
    if unsafe { pg_sys::GetDatabaseEncoding() } != pg_sys::pg_enc::PG_UTF8 as i32 {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "conductor needs a UTF8 database",
        )
        .detail("SQLite stores text as UTF-8.")
        .error()
    }
    let explicit_group = match colocate_with {
        "default" | "none" => None,
        name => {
            let other = resolve_relation(name);
            match cache::try_table(other) {
                None => invalid(format!(
                    "colocate_with: {} is not a distributed table",
                    relation_display_name(other)
                )),
                Some(t) if t.is_reference() => invalid(format!(
                    "colocate_with: {} is a reference table (a copy on every node): any distributed table joins it on the nodes",
                    relation_display_name(other)
                )),
                Some(_) => {}
            }
            let group = groups(server_id, Some(other)).pop().unwrap_or_else(|| {
                invalid(format!(
                    "colocate_with: {} belongs to another server than {display}",
                    relation_display_name(other)
                ))
            });
            Some(group)
        }
    };
    let shard_count = match (&explicit_group, shard_count) {
        (Some(g), Some(n)) if n != g.shard_count => invalid(format!(
            "shard_count {n} differs from the {} shards of {}, which {display} is to be co-located with",
            g.shard_count, g.display
        )),
        (Some(g), _) => g.shard_count,
        (None, n) => n.unwrap_or(DEFAULT_SHARDS),
    };
    if !(1..=MAX_SHARDS).contains(&shard_count) {
        invalid(format!(
            "shard_count must be between 1 and {MAX_SHARDS}, not {shard_count}"
        ));
    }

    let columns = Spi::connect(|client| relation_columns(client, relid))
        .unwrap_or_else(|e| error!("conductor: could not read columns: {e}"));
    let unsupported: Vec<String> = columns
        .iter()
        .filter_map(|c| c.as_ref().err().map(|(n, t)| format!("\"{n}\" ({t})")))
        .collect();
    if !unsupported.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!("conductor cannot store column {}", unsupported.join(", ")),
        )
        .hint(format!(
            "Supported types: {}.",
            ColumnType::ALL.map(|t| t.pg_name()).join(", ")
        ))
        .error()
    }
    let columns: Vec<_> = columns.into_iter().flatten().map(|c| c.column).collect();
    // A reference table's "shard key" is the first column of its primary key
    // (every row is on its one shard; the key only names the identity).
    let option_key = table_option(relid, "primary_key")
        .and_then(|list| list.split(',').next().map(|c| c.trim().to_string()));
    let shard_key: &str = match shard_key {
        Some(k) => k,
        None => option_key
            .as_deref()
            .or_else(|| columns.first().map(|c| c.name.as_str()))
            .unwrap_or_else(|| invalid(format!("{display} has no columns"))),
    };
    let Some(key) = columns.iter().find(|c| c.name == shard_key) else {
        raise(
            PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!("column \"{shard_key}\" of {display} does not exist"),
        )
        .error()
    };
    if !key.ty.is_shard_key_type() {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!(
                "shard key \"{shard_key}\" has type {}, which cannot be hashed",
                key.ty
            ),
        )
        .hint("A shard key is smallint, integer, bigint, text, varchar or uuid.")
        .error()
    }
    if let Some(g) = &explicit_group {
        if !same_placement(g.key_type, key.ty) {
            invalid(format!(
                "shard key \"{shard_key}\" ({}) is placed differently from the shard key of {} ({}), which {display} is to be co-located with",
                key.ty, g.display, g.key_type
            ));
        }
    }

    let primary_key: Vec<String> = match table_option(relid, "primary_key") {
        Some(list) => list.split(',').map(|c| c.trim().to_string()).collect(),
        None => vec![shard_key.to_string()],
    };
    for column in &primary_key {
        if !columns.iter().any(|c| &c.name == column) {
            invalid(format!(
                "primary_key column \"{column}\" of {display} does not exist"
            ));
        }
    }
    if !primary_key.iter().any(|c| c == shard_key) {
        invalid(format!(
            "the primary key of {display} must contain the shard key \"{shard_key}\""
        ));
    }
    // The nodes place and tell apart keys by their stored form: values
    // that are one key in Postgres ('ABC' = 'abc' under a case-insensitive
    // collation, 1.0 = 1.00) would be two rows on two shards, or in one
    // shard's primary key.
    for column in &primary_key {
        refuse_unique_key_column(relid, column, "key column");
    }

    let remote_name = table_option(relid, "table_name").unwrap_or_else(|| tbl.name().to_string());
    let taken = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM conductor.distributed_table
                         WHERE server_id = $1 AND remote_name = $2)",
        &[server_id.into(), remote_name.as_str().into()],
    )
    .ok()
    .flatten()
    .unwrap_or(false);
    if taken {
        raise(
            PgSqlErrorCode::ERRCODE_DUPLICATE_TABLE,
            format!("another distributed table of this server already uses the remote name \"{remote_name}\""),
        )
        .hint("Set a different one with ALTER FOREIGN TABLE ... OPTIONS (ADD table_name '...').")
        .error()
    }

    let nodes = active_nodes(server_id);
    if nodes.is_empty() {
        raise(
            PgSqlErrorCode::ERRCODE_FDW_UNABLE_TO_ESTABLISH_CONNECTION,
            "the server has no active nodes",
        )
        .hint("Add nodes with conductor.add_node() first.")
        .error()
    }

    // Round-robin placement over the active nodes, unless the table joins a
    // group: then its shard i goes where the group's shard i is.
    let round_robin: Vec<&NodeRow> = (0..shard_count as usize)
        .map(|shard| &nodes[shard % nodes.len()])
        .collect();
    // The default: the first group of the same shard count and key
    // placement whose shards are all on active nodes (preferring one laid
    // out as round robin would lay out this table), so related tables join
    // per shard unless told 'none', also after their group was rebalanced.
    let group = explicit_group.or_else(|| {
        if colocate_with != "default" {
            return None;
        }
        let mut candidates: Vec<Group> = groups(server_id, None)
            .into_iter()
            .filter(|g| {
                g.shard_count == shard_count
                    && same_placement(g.key_type, key.ty)
                    && g.nodes.len() == shard_count as usize
                    && g.nodes
                        .iter()
                        .all(|id| nodes.iter().any(|n| &n.node_id == id))
            })
            .collect();
        let laid_out_alike = candidates.iter().position(|g| {
            g.nodes
                .iter()
                .zip(&round_robin)
                .all(|(a, b)| *a == b.node_id)
        });
        match laid_out_alike {
            Some(i) => Some(candidates.swap_remove(i)),
            None => candidates.into_iter().next(),
        }
    });
    let all_nodes;
    let placement: Vec<&NodeRow> = match &group {
        None => round_robin,
        Some(g) => {
            all_nodes = server_nodes(server_id);
            g.nodes
                .iter()
                .map(|id| {
                    all_nodes
                        .iter()
                        .find(|n| &n.node_id == id)
                        .unwrap_or_else(|| {
                            error!(
                                "conductor: node {id} of {} is not in the catalog",
                                g.display
                            )
                        })
                })
                .collect()
        }
    };
    let colocation_id = group.as_ref().map(|g| g.colocation_id);
    // Where shard tables are created: each shard on its node, or for a
    // reference table its one shard on every active node.
    let creations: Vec<(u32, &NodeRow)> = if reference {
        nodes.iter().map(|n| (0, n)).collect()
    } else {
        placement
            .iter()
            .enumerate()
            .map(|(shard, n)| (shard as u32, *n))
            .collect()
    };
    let token = token_for(server_id);
    let column_defs: Vec<(&str, ColumnType, bool)> = columns
        .iter()
        .map(|c| {
            (
                c.name.as_str(),
                c.ty,
                c.not_null || primary_key.contains(&c.name),
            )
        })
        .collect();
    let pk: Vec<&str> = primary_key.iter().map(String::as_str).collect();

    // The shard tables are created inside this transaction's remote
    // transactions (SQLite DDL is transactional): they appear on the nodes
    // when Postgres commits, and a failure anywhere, a ROLLBACK or a
    // backend exit leaves none behind. It also keeps them behind any write
    // lock this transaction already holds on a node.
    let mut per_node: BTreeMap<&str, NodeWork> = BTreeMap::new();
    // Recorded leftovers of an earlier table with these shard names are
    // dropped first, in the same remote transactions.
    let mut leftovers: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
    for node in &nodes {
        let names: Vec<String> = creations
            .iter()
            .filter(|(_, n)| n.node_id == node.node_id)
            .map(|&(shard, _)| shard_table_name(&remote_name, shard))
            .collect();
        // A table dropped earlier in this transaction keeps its shard
        // tables until COMMIT, and the drop would then take the new ones.
        if let Some(table) = xact::ddl::dropped_at_commit(&node.url, &names).first() {
            raise(
                PgSqlErrorCode::ERRCODE_OBJECT_IN_USE,
                format!(
                    "conductor: shard table {table} on node {} is dropped when this transaction commits",
                    node.node_id
                ),
            )
            .detail(format!(
                "A distributed table dropped in this transaction keeps its shard tables on the nodes until COMMIT; {display} would create shard tables of the same names."
            ))
            .hint("Commit the DROP first, or give the new table another table_name option.")
            .error()
        }
        leftovers.extend(super::cleanup::take_colliding(
            server_id,
            &node.node_id,
            &names,
        ));
    }
    for &(shard, node) in &creations {
        let table = shard_table_name(&remote_name, shard);
        let label = ShardLabel {
            table: display.clone(),
            shard,
        };
        let work = per_node
            .entry(node.node_id.as_str())
            .or_insert_with(|| NodeWork {
                access: streams::Access::Write,
                lock_table: None,
                key: (server_id.to_u32(), node.node_id.clone()),
                endpoint: NodeEndpoint {
                    node_id: node.node_id.clone(),
                    url: node.url.clone(),
                    token: token.clone(),
                },
                stmts: Vec::new(),
            });
        if leftovers.contains(&table) {
            work.stmts
                .push((label.clone(), Stmt::new(drop_table_sql(&table), vec![])));
        }
        work.stmts.push((
            label,
            Stmt::new(create_table_sql(&table, &column_defs, &pk), vec![]),
        ));
    }
    for result in streams::run(per_node.into_values().collect()) {
        if let Err(err) = result {
            raise(
                PgSqlErrorCode::ERRCODE_FDW_UNABLE_TO_CREATE_EXECUTION,
                format!("could not create the shard tables of {display}"),
            )
            .detail(err.to_string())
            .hint("Nothing is left on any node; fix the node and try again.")
            .error()
        }
    }

    let identity: Vec<i16> = columns
        .iter()
        .filter(|c| primary_key.contains(&c.name))
        .map(|c| c.attnum)
        .collect();
    let shard_columns = super::schema::initial_shard_columns(relid, &identity);
    Spi::connect_mut(|client| -> Result<(), pgrx::spi::Error> {
        client.update(
            "INSERT INTO conductor.distributed_table
                 (relid, server_id, remote_name, shard_key, primary_key, shard_count, hash_version,
                  shard_columns, colocation_id)
             VALUES ($1, $2, $3, $4::name, $5::name[], $6, $7, $8,
                     coalesce($9, nextval('conductor.colocation_id_seq')::integer))",
            None,
            &[
                relid.into(),
                server_id.into(),
                remote_name.as_str().into(),
                shard_key.into(),
                primary_key.clone().into(),
                shard_count.into(),
                HASH_VERSION.into(),
                shard_columns.into(),
                colocation_id.into(),
            ],
        )?;
        client.update(
            "INSERT INTO conductor.shard (relid, shard_id, server_id, node_id)
             SELECT $1, s, $2, ($3::text[])[s + 1] FROM generate_series(0, $4 - 1) s",
            None,
            &[
                relid.into(),
                server_id.into(),
                placement
                    .iter()
                    .map(|n| n.node_id.clone())
                    .collect::<Vec<String>>()
                    .into(),
                shard_count.into(),
            ],
        )?;
        if reference {
            client.update(
                "INSERT INTO conductor.reference_placement (relid, server_id, node_id)
                 SELECT $1, $2, unnest($3::text[])",
                None,
                &[
                    relid.into(),
                    server_id.into(),
                    nodes
                        .iter()
                        .map(|n| n.node_id.clone())
                        .collect::<Vec<String>>()
                        .into(),
                ],
            )?;
        }
        Ok(())
    })
    .unwrap_or_else(|e| error!("conductor: could not record the distributed table: {e}"));
}

/// The shard a key value belongs to: exactly the placement hash, version 1
/// (docs/ARCHITECTURE.md, Placement), so any tool can reproduce placement.
#[pg_extern]
fn shard_for(tbl: PgRelation, key: AnyElement) -> i32 {
    let topology = cache::table(tbl.oid());
    let key_column = topology.key();
    // SAFETY: the datum is of the type AnyElement reports.
    let text: String;
    let value = unsafe {
        match key.oid() {
            pg_sys::INT2OID => KeyValue::Int(key.datum().value() as i16 as i64),
            pg_sys::INT4OID => KeyValue::Int(key.datum().value() as i32 as i64),
            pg_sys::INT8OID => KeyValue::Int(key.datum().value() as i64),
            pg_sys::UUIDOID => KeyValue::Uuid(*key.datum().cast_mut_ptr::<[u8; 16]>()),
            pg_sys::TEXTOID | pg_sys::VARCHAROID | pg_sys::UNKNOWNOID => {
                text = <String as FromDatum>::from_polymorphic_datum(key.datum(), false, key.oid())
                    .unwrap_or_default();
                KeyValue::Text(&text)
            }
            other => raise(
                PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                format!(
                    "a key of type {} cannot be placed",
                    crate::catalog::type_display_name(other)
                ),
            )
            .hint(format!(
                "The shard key \"{}\" is {}.",
                key_column.name, key_column.ty
            ))
            .error(),
        }
    };
    let compatible = matches!(
        (&value, key_column.ty),
        (
            KeyValue::Int(_),
            ColumnType::Int2 | ColumnType::Int4 | ColumnType::Int8
        ) | (KeyValue::Text(_), ColumnType::Text | ColumnType::Varchar)
            | (KeyValue::Uuid(_), ColumnType::Uuid)
    );
    if !compatible {
        raise(
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            format!("the shard key \"{}\" is {}", key_column.name, key_column.ty),
        )
        .error()
    }
    place(&value, topology.shard_count()) as i32
}

/// sql_drop: a distributed foreign table was dropped. Forget it now (the
/// catalog rows go with the transaction) and drop its shard tables on the
/// nodes once the transaction commits.
#[pg_extern(name = "_forget_distributed_table")]
fn forget_distributed_table(relid: pg_sys::Oid) {
    // The event trigger runs for every dropped foreign table, also other
    // wrappers' tables dropped by roles that may not write the catalog:
    // only a distributed table's drop touches it.
    if !catalog_has_row("distributed_table", "relid", relid) {
        return;
    }
    // The drop was Postgres' to allow (the table's owner may drop it); the
    // catalog rows it leaves behind are forgotten as the extension's owner.
    let dropped = crate::catalog::relation_is_gone(relid);
    let rows = Spi::connect(|client| {
        client
            .select(
                "SELECT t.remote_name, t.server_id, s.shard_id, n.node_id, n.url
                   FROM conductor.distributed_table t
                   JOIN (SELECT relid, shard_id, server_id, node_id FROM conductor.shard
                         UNION
                         SELECT relid, 0, server_id, node_id FROM conductor.reference_placement) s
                        USING (relid)
                   JOIN conductor.node n ON n.server_id = s.server_id AND n.node_id = s.node_id
                  WHERE t.relid = $1",
                None,
                &[relid.into()],
            )?
            .map(|row| {
                Ok((
                    row.get::<String>(1)?.unwrap_or_default(),
                    row.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::Oid::INVALID),
                    row.get::<i32>(3)?.unwrap_or_default(),
                    row.get::<String>(4)?.unwrap_or_default(),
                    row.get::<String>(5)?.unwrap_or_default(),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| error!("conductor: could not read the dropped table's shards: {e}"));
    // Its virtual indexes' lookup tables sit beside its shards.
    let indexes: Vec<(String, bool)> = Spi::connect(|client| {
        client
            .select(
                "SELECT index_name, lookup_database FROM conductor.virtual_index WHERE relid = $1",
                None,
                &[relid.into()],
            )?
            .map(|row| {
                Ok((
                    row.get::<String>(1)?.unwrap_or_default(),
                    row.get::<bool>(2)?.unwrap_or(false),
                ))
            })
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| error!("conductor: could not read the dropped table's indexes: {e}"));
    let mut per_node: BTreeMap<(String, String), (pg_sys::Oid, Vec<String>)> = BTreeMap::new();
    for (remote_name, server_id, shard_id, node_id, url) in rows {
        for (ix, lookup_database) in &indexes {
            // A lookup database is reached (and recorded for cleanup) as a
            // node of its own name and URL.
            let place = if *lookup_database {
                (
                    crate::vindex::lookup_node_name(&node_id),
                    conductor_core::vindex::lookup_database_url(&url),
                )
            } else {
                (node_id.clone(), url.clone())
            };
            per_node
                .entry(place)
                .or_insert_with(|| (server_id, Vec::new()))
                .1
                .push(conductor_core::vindex::lookup_table_name(
                    &remote_name,
                    ix,
                    shard_id as u32,
                ));
        }
        per_node
            .entry((node_id, url))
            .or_insert_with(|| (server_id, Vec::new()))
            .1
            .push(shard_table_name(&remote_name, shard_id as u32));
    }
    for ((node_id, url), (server_id, tables)) in per_node {
        let endpoint = NodeEndpoint {
            node_id: node_id.clone(),
            url: url.clone(),
            token: token_for(server_id),
        };
        // A node that does not answer now keeps its shard tables: they are
        // recorded (with this drop) for conductor.cleanup().
        if let Err(err) = crate::remote::check_health(endpoint.clone()) {
            crate::catalog::writing_as_extension_owner(dropped, || {
                super::cleanup::record(
                    server_id,
                    &node_id,
                    &url,
                    &tables,
                    "the node did not answer when the table was dropped",
                )
            });
            raise(
                PgSqlErrorCode::ERRCODE_WARNING,
                format!(
                    "conductor: node {node_id} did not answer; shard tables {} stay on it",
                    tables.join(", ")
                ),
            )
            .detail(err.to_string())
            .hint("They are listed in conductor.cleanup_pending; run SELECT * FROM conductor.cleanup() once the node is back.")
            .warning();
            continue;
        }
        let request = ShardRequest {
            shard_id: None,
            endpoint,
            body: one_request_transaction(
                tables
                    .iter()
                    .map(|t| Stmt::new(drop_table_sql(t), vec![]))
                    .collect(),
            ),
        };
        xact::on_commit(
            format!("drop shard tables {} on node {node_id}", tables.join(", ")),
            tables,
            request,
        );
    }
    crate::catalog::writing_as_extension_owner(dropped, || {
        Spi::run_with_args(
            "DELETE FROM conductor.distributed_table WHERE relid = $1",
            &[relid.into()],
        )
        .unwrap_or_else(|e| error!("conductor: could not forget the dropped table: {e}"))
    });
}

/// sql_drop: a server was dropped (its tables were handled one by one).
#[pg_extern(name = "_forget_server")]
fn forget_server(server_id: pg_sys::Oid) {
    // Every dropped server comes here; only one with nodes is forgotten.
    if !catalog_has_row("node", "server_id", server_id) {
        return;
    }
    // SAFETY: a catalog lookup inside a transaction; NULL when the server
    // does not exist (any more: its DROP was Postgres' to allow).
    let dropped = unsafe {
        pg_sys::GetForeignServerExtended(server_id, pg_sys::FSV_MISSING_OK as u16).is_null()
    };
    crate::catalog::writing_as_extension_owner(dropped, || {
        Spi::run_with_args(
            "DELETE FROM conductor.node WHERE server_id = $1",
            &[server_id.into()],
        )
        .unwrap_or_else(|e| error!("conductor: could not forget the dropped server's nodes: {e}"))
    });
}

/// Whether conductor.<table> has a row whose <column> is `oid` (the
/// catalog is readable by every role; writing it is not).
fn catalog_has_row(table: &str, column: &str, oid: pg_sys::Oid) -> bool {
    Spi::get_one_with_args::<bool>(
        &format!("SELECT EXISTS (SELECT FROM conductor.{table} WHERE {column} = $1)"),
        &[oid.into()],
    )
    .unwrap_or_else(|e| error!("conductor: could not read conductor.{table}: {e}"))
    .unwrap_or(false)
}

/// A node joins the server: every reference table of the server is copied
/// to it inside this transaction (its copies are read holding their write
/// locks, so no write slips between the read and the commit), and the new
/// node is recorded as one of its copies.
pub fn copy_reference_tables(server_id: pg_sys::Oid, node_id: &str, url: &str) {
    let relids = Spi::connect(|client| {
        client
            .select(
                "SELECT DISTINCT relid::oid FROM conductor.reference_placement
                  WHERE server_id = $1 ORDER BY 1",
                None,
                &[server_id.into()],
            )?
            .map(|row| Ok(row.get::<pg_sys::Oid>(1)?.unwrap_or(pg_sys::Oid::INVALID)))
            .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| error!("conductor: could not read reference tables: {e}"));
    for relid in relids {
        // A write that planned with the copies known before this node was
        // added would miss the new copy: EXCLUSIVE waits for the
        // transactions writing the table now and holds back new writers
        // until the new copy is in the catalog they plan with.
        // SAFETY: a lock on a relation in a transaction, released at its end.
        unsafe { pg_sys::LockRelationOid(relid, pg_sys::ExclusiveLock as pg_sys::LOCKMODE) };
        let topology = cache::table(relid);
        let all: Vec<usize> = (0..topology.columns.len()).collect();
        let read = conductor_core::plan::ShardPlan::build(
            &topology,
            &[],
            &[],
            &conductor_core::plan::StatementKind::Select { columns: all },
        )
        .unwrap_or_else(|e| error!("conductor: {e}"));
        let rows: Vec<Vec<conductor_hrana::Value>> =
            streams::run_plan(&topology, &read, streams::Access::Write)
                .into_iter()
                .flat_map(|(_, r)| r.rows)
                .collect();

        let mut copy = (*topology).clone();
        copy.replicas.clear();
        copy.table.shards[0].node_id = node_id.to_string();
        copy.table.shards[0].url = url.to_string();
        let table = copy.shards[0].remote_table.clone();
        let column_defs: Vec<(&str, ColumnType, bool)> = copy
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                (
                    c.name.as_str(),
                    c.ty,
                    c.not_null || copy.primary_key.contains(&i),
                )
            })
            .collect();
        let pk: Vec<&str> = copy
            .primary_key
            .iter()
            .map(|&i| copy.columns[i].name.as_str())
            .collect();
        // A node removed earlier keeps its copies (remove_node leaves them):
        // conductor does not overwrite a table it cannot tell it made.
        let on_node = |stmt: Stmt| conductor_core::plan::ShardPlan {
            kind: conductor_core::plan::RouteKind::OneShard,
            reason: format!("a copy of reference table {} for node {node_id}", copy.name),
            max_keys_per_shard: 0,
            keys: Vec::new(),
            statements: vec![conductor_core::plan::ShardStatement { shard_id: 0, stmt }],
        };
        let existing = on_node(Stmt::new(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
            vec![conductor_hrana::Value::Text(table.clone())],
        ));
        if streams::run_plan(&copy, &existing, streams::Access::Write)
            .iter()
            .any(|(_, r)| !r.rows.is_empty())
        {
            raise(
                PgSqlErrorCode::ERRCODE_DUPLICATE_TABLE,
                format!(
                    "cannot add node \"{node_id}\": it already has a table {table}, where the copy of reference table {} would go",
                    copy.name
                ),
            )
            .detail("A node removed with conductor.remove_node() keeps its copies of reference tables; this one may be such a copy, or another table of that name.")
            .hint(format!("Drop {table} on the node if it is not needed, then add the node again."))
            .error()
        }
        let create = on_node(Stmt::new(
            create_table_sql(&table, &column_defs, &pk),
            vec![],
        ));
        streams::run_plan(&copy, &create, streams::Access::Write);
        if !rows.is_empty() {
            let insert = conductor_core::plan::ShardPlan::insert(&copy, rows)
                .unwrap_or_else(|e| error!("conductor: {e}"));
            streams::run_plan(&copy, &insert, streams::Access::Write);
        }
        Spi::run_with_args(
            "INSERT INTO conductor.reference_placement (relid, server_id, node_id)
             VALUES ($1, $2, $3)",
            &[relid.into(), server_id.into(), node_id.into()],
        )
        .unwrap_or_else(|e| error!("conductor: could not record the copy: {e}"));
    }
}
