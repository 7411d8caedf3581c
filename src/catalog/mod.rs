//! The topology: which nodes a server has, which foreign tables are
//! distributed and where each shard lives. Read from the catalog tables in
//! schema conductor (sql/catalog.sql) and cached per backend (`cache`).

pub mod cache;
pub mod credentials;

use crate::convert::{column_type_of, ColumnCodec};
use conductor_core::remote_sql::shard_table_name;
use conductor_core::topology::{Column, ShardLocation, ShardStatus, Topology};
use conductor_core::vindex::{IndexStatus, VirtualIndex};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

/// A column as the catalog reads it: the core's column and its Postgres
/// type (for converting values).
#[derive(Debug, Clone)]
pub struct PgColumn {
    pub column: Column,
    pub pg_type: PgType,
}

/// A column's Postgres type and modifier.
#[derive(Debug, Clone, Copy)]
pub struct PgType {
    pub oid: pg_sys::Oid,
    pub typmod: i32,
}

/// Everything a statement needs to route and ship work for one table: the
/// core's topology (which it dereferences to) and what only Postgres needs.
#[derive(Debug, Clone)]
pub struct TableTopology {
    pub relid: pg_sys::Oid,
    pub server_id: pg_sys::Oid,
    pub table: Topology,
    /// One per column of `table.columns`.
    pub pg_types: Vec<PgType>,
    /// Every node holding a shard offers the exact decimal aggregates.
    pub decimal_aggregates: bool,
    /// Its virtual indexes that writes maintain (building or ready).
    pub virtual_indexes: Vec<VirtualIndex>,
    /// The co-location group (`conductor.distributed_table.colocation_id`):
    /// tables of one group have shard i on the same node.
    pub colocation_id: i32,
    /// A reference table's copies (`conductor.reference_placement`): its one
    /// shard on each of these nodes, all written, one read. Empty for a
    /// distributed table.
    pub replicas: Vec<ShardLocation>,
}

impl std::ops::Deref for TableTopology {
    type Target = Topology;
    fn deref(&self) -> &Topology {
        &self.table
    }
}

impl TableTopology {
    pub fn is_reference(&self) -> bool {
        !self.replicas.is_empty()
    }

    /// The topology a read uses: of a reference table, with its shard on
    /// the first copy whose node is not cooling down after failures and
    /// not among `failed` (node URLs that failed this read already), the
    /// catalog's preferred node first.
    pub fn for_reads(self: &std::rc::Rc<Self>, failed: &[String]) -> std::rc::Rc<Self> {
        match self.read_copy(failed) {
            Some(l) if *l != self.shards[0] => {
                let mut t = (**self).clone();
                t.table.shards[0] = l.clone();
                std::rc::Rc::new(t)
            }
            _ => self.clone(),
        }
    }

    /// The copy [`for_reads`](Self::for_reads) reads a reference table
    /// from; `None` if every copy's node failed or is cooling down (or the
    /// table is distributed).
    pub fn read_copy(&self, failed: &[String]) -> Option<&ShardLocation> {
        if !self.is_reference() {
            return None;
        }
        let token = credentials::token_for(self.server_id);
        let healthy = |l: &&ShardLocation| {
            !failed.contains(&l.url)
                && crate::health::refusal(&crate::remote::endpoint(l, token.clone()), Some(0))
                    .is_none()
        };
        std::iter::once(&self.shards[0])
            .chain(&self.replicas)
            .find(healthy)
    }

    /// The value converter of column `index`.
    ///
    /// # Safety
    /// As [`ColumnCodec::new`]: in a transaction, with a memory context
    /// that outlives the codec.
    pub unsafe fn codec(&self, index: usize) -> ColumnCodec {
        let c = &self.columns[index];
        let t = self.pg_types[index];
        // SAFETY: per the contract.
        unsafe { ColumnCodec::new(&c.name, c.ty, t.oid, t.typmod) }
    }
}

/// A column conductor can store, or the (name, type) of one it cannot.
pub type ColumnOrRefusal = Result<PgColumn, (String, String)>;

/// The columns of any relation, with the conductor type of each; a column of
/// a type conductor cannot store is returned as `Err((name, typname))`.
pub fn relation_columns(
    client: &SpiClient<'_>,
    relid: pg_sys::Oid,
) -> Result<Vec<ColumnOrRefusal>, pgrx::spi::Error> {
    let rows = client.select(
        "SELECT a.attnum, a.attname::text, a.atttypid, a.atttypmod,
                format_type(a.atttypid, a.atttypmod), a.attnotnull
           FROM pg_catalog.pg_attribute a
          WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
          ORDER BY a.attnum",
        None,
        &[relid.into()],
    )?;
    let mut columns = Vec::new();
    for row in rows {
        let attnum: i16 = row.get(1)?.unwrap_or_default();
        let name: String = row.get(2)?.unwrap_or_default();
        let typoid: pg_sys::Oid = row.get(3)?.unwrap_or(pg_sys::Oid::INVALID);
        let typmod: i32 = row.get(4)?.unwrap_or(-1);
        let display: String = row.get(5)?.unwrap_or_default();
        let not_null: bool = row.get(6)?.unwrap_or(false);
        columns.push(match column_type_of(typoid) {
            Some(ty) => Ok(PgColumn {
                column: Column {
                    attnum,
                    name,
                    ty,
                    not_null,
                },
                pg_type: PgType {
                    oid: typoid,
                    typmod,
                },
            }),
            None => Err((name, display)),
        });
    }
    Ok(columns)
}

/// Read one table's topology; None when the relation is not distributed.
pub fn load_table(relid: pg_sys::Oid) -> Option<TableTopology> {
    Spi::connect(|client| -> Result<Option<TableTopology>, pgrx::spi::Error> {
        let table = client.select(
            "SELECT server_id, remote_name, shard_key::text, shard_count, hash_version,
                    primary_key::text[], colocation_id
               FROM conductor.distributed_table WHERE relid = $1",
            Some(1),
            &[relid.into()],
        )?;
        if table.is_empty() {
            return Ok(None);
        }
        let row = table.first();
        let server_id: pg_sys::Oid = row.get(1)?.unwrap_or(pg_sys::Oid::INVALID);
        let remote_name: String = row.get(2)?.unwrap_or_default();
        let shard_key: String = row.get(3)?.unwrap_or_default();
        let shard_count: i32 = row.get(4)?.unwrap_or_default();
        let hash_version: i32 = row.get(5)?.unwrap_or(1);
        let primary_key_names: Vec<String> = row.get(6)?.unwrap_or_default();
        let colocation_id: i32 = row.get(7)?.unwrap_or_default();

        let mut columns = Vec::new();
        let mut pg_types = Vec::new();
        for column in relation_columns(client, relid)? {
            match column {
                Ok(c) => {
                    columns.push(c.column);
                    pg_types.push(c.pg_type);
                }
                Err((name, ty)) => error!(
                    "column \"{name}\" of distributed table {} has type {ty}, which conductor cannot store",
                    relation_display_name(relid)
                ),
            }
        }
        let Some(key_index) = columns.iter().position(|c| c.name == shard_key) else {
            error!(
                "shard key column \"{shard_key}\" of {} no longer exists",
                relation_display_name(relid)
            )
        };

        let primary_key = primary_key_names
            .iter()
            .map(|name| {
                columns.iter().position(|c| &c.name == name).unwrap_or_else(|| {
                    error!(
                        "primary key column \"{name}\" of {} no longer exists",
                        relation_display_name(relid)
                    )
                })
            })
            .collect();

        let mut shards = Vec::with_capacity(shard_count as usize);
        let mut decimal_aggregates = true;
        let rows = client.select(
            "SELECT s.shard_id, s.node_id, n.url, s.status, n.decimal_aggregates
               FROM conductor.shard s
               JOIN conductor.node n USING (server_id, node_id)
              WHERE s.relid = $1
              ORDER BY s.shard_id",
            None,
            &[relid.into()],
        )?;
        for row in rows {
            let shard_id: i32 = row.get(1)?.unwrap_or_default();
            decimal_aggregates &= row.get::<bool>(5)?.unwrap_or(false);
            shards.push(ShardLocation {
                shard_id: shard_id as u32,
                node_id: row.get(2)?.unwrap_or_default(),
                url: row.get(3)?.unwrap_or_default(),
                remote_table: shard_table_name(&remote_name, shard_id as u32),
                status: ShardStatus::from_catalog(&row.get::<String>(4)?.unwrap_or_default())
                    .unwrap_or_else(|| error!("conductor: unknown shard status in the catalog")),
            });
        }
        let mut replicas = Vec::new();
        let rows = client.select(
            "SELECT r.node_id, n.url
               FROM conductor.reference_placement r
               JOIN conductor.node n USING (server_id, node_id)
              WHERE r.relid = $1
              ORDER BY r.node_id",
            None,
            &[relid.into()],
        )?;
        for row in rows {
            replicas.push(ShardLocation {
                shard_id: 0,
                node_id: row.get(1)?.unwrap_or_default(),
                url: row.get(2)?.unwrap_or_default(),
                remote_table: shard_table_name(&remote_name, 0),
                status: ShardStatus::Active,
            });
        }
        if shards.len() != shard_count as usize
            || shards.iter().enumerate().any(|(i, p)| p.shard_id as usize != i)
        {
            error!(
                "the catalog of {} is inconsistent: {} of {shard_count} shards placed",
                relation_display_name(relid),
                shards.len()
            );
        }
        if hash_version != conductor_core::placement::HASH_VERSION {
            error!(
                "{} uses placement hash version {hash_version}, which this build of conductor does not know",
                relation_display_name(relid)
            );
        }
        let mut virtual_indexes = Vec::new();
        let rows = client.select(
            "SELECT index_name, columns::text[], is_unique, status, lookup_database
               FROM conductor.virtual_index
              WHERE relid = $1 AND status IN ('building', 'ready')
              ORDER BY index_name",
            None,
            &[relid.into()],
        )?;
        for row in rows {
            let name: String = row.get(1)?.unwrap_or_default();
            let names: Vec<String> = row.get(2)?.unwrap_or_default();
            let columns = names
                .iter()
                .map(|n| {
                    columns.iter().position(|c| &c.name == n).unwrap_or_else(|| {
                        error!(
                            "column \"{n}\" of virtual index {name} of {} no longer exists",
                            relation_display_name(relid)
                        )
                    })
                })
                .collect();
            virtual_indexes.push(VirtualIndex {
                name,
                columns,
                unique: row.get(3)?.unwrap_or(false),
                status: if row.get::<String>(4)?.as_deref() == Some("ready") {
                    IndexStatus::Ready
                } else {
                    IndexStatus::Building
                },
                lookup_database: row.get(5)?.unwrap_or(false),
            });
        }
        Ok(Some(TableTopology {
            relid,
            server_id,
            table: Topology {
                name: relation_display_name(relid),
                remote_name,
                columns,
                key_index,
                primary_key,
                shards,
            },
            pg_types,
            decimal_aggregates,
            virtual_indexes,
            colocation_id,
            replicas,
        }))
    })
    .unwrap_or_else(|e| error!("conductor: could not read the topology catalog: {e}"))
}

/// `schema.table` as the user would write it, for messages.
pub fn relation_display_name(relid: pg_sys::Oid) -> String {
    Spi::get_one_with_args::<String>("SELECT $1::regclass::text", &[relid.into()])
        .ok()
        .flatten()
        .unwrap_or_else(|| format!("relation {}", relid.to_u32()))
}

/// A type's SQL name, for messages.
pub fn type_display_name(typoid: pg_sys::Oid) -> String {
    Spi::get_one_with_args::<String>("SELECT format_type($1, NULL)", &[typoid.into()])
        .ok()
        .flatten()
        .unwrap_or_else(|| format!("type {}", typoid.to_u32()))
}

/// Runs `f` with the rights of the extension's owner when `authorized`,
/// else as the current user. For the catalog writes that carry out a DDL
/// statement Postgres has already allowed — a table owner's ALTER or DROP
/// of a distributed table — since the catalog is writable by superusers
/// only and a table's owner need not be one. Only the catalog work goes
/// here: the nodes are still reached with the current user's credentials.
pub fn writing_as_extension_owner<R>(authorized: bool, f: impl FnOnce() -> R) -> R {
    if !authorized {
        return f();
    }
    let owner = Spi::get_one::<pg_sys::Oid>(
        "SELECT extowner FROM pg_catalog.pg_extension WHERE extname = 'conductor'",
    )
    .ok()
    .flatten()
    .unwrap_or_else(|| error!("conductor: the extension's owner is unknown"));
    /// Puts the user back also when `f` raises (Postgres' abort would too).
    struct Restore(pg_sys::Oid, i32);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: sets two backend globals back to what they were.
            unsafe { pg_sys::SetUserIdAndSecContext(self.0, self.1) }
        }
    }
    let (mut user, mut context) = (pg_sys::Oid::INVALID, 0);
    // SAFETY: reads and sets backend globals, as a SECURITY DEFINER
    // function call does; SECURITY_LOCAL_USERID_CHANGE keeps SET ROLE and
    // SET SESSION AUTHORIZATION from being used meanwhile.
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut user, &mut context);
        pg_sys::SetUserIdAndSecContext(
            owner,
            context | pg_sys::SECURITY_LOCAL_USERID_CHANGE as i32,
        );
    }
    let _restore = Restore(user, context);
    f()
}

/// Whether the current user owns relation `relid` (and so may ALTER it).
pub fn current_user_owns(relid: pg_sys::Oid) -> bool {
    // SAFETY: a catalog lookup inside a transaction.
    unsafe { pg_sys::pg_class_ownercheck(relid, pg_sys::GetUserId()) }
}

/// Whether relation `relid` no longer exists (dropped in this transaction,
/// which Postgres allowed).
pub fn relation_is_gone(relid: pg_sys::Oid) -> bool {
    // SAFETY: a syscache lookup; 0 for a relation that does not exist.
    unsafe { pg_sys::get_rel_relkind(relid) == 0 }
}
