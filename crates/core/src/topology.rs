//! The topology of one distributed table as every stage sees it: its
//! columns (with their conductor type), its shard key and row identity, and
//! where each shard lives. The extension builds it from its catalog; the
//! router, the pushdown rulebook and the shard plan read nothing else.

use crate::router::ShardKey;
use crate::types::ColumnType;

/// A column of a distributed table, as the foreign table declares it.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    /// Position in the foreign table (Postgres' attribute number).
    pub attnum: i16,
    pub name: String,
    pub ty: ColumnType,
    /// Declared NOT NULL: Postgres does not enforce constraints of foreign
    /// tables, so the shard tables do.
    pub not_null: bool,
}

/// Where a shard is in its life (docs/ARCHITECTURE.md, Moving shards).
/// Routing is the same for all: a shard is read and written where the
/// catalog places it, which during a move is the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardStatus {
    Active,
    /// Being copied away: still serves reads and writes.
    RebalancingSource,
    /// Receiving a copy: not yet read from. conductor's moves keep one
    /// row per shard (the source's, with the target beside it) and never
    /// set it; the catalog accepts it.
    RebalancingTarget,
}

impl ShardStatus {
    pub fn from_catalog(status: &str) -> Option<ShardStatus> {
        Some(match status {
            "active" => ShardStatus::Active,
            "rebalancing_source" => ShardStatus::RebalancingSource,
            "rebalancing_target" => ShardStatus::RebalancingTarget,
            _ => return None,
        })
    }
}

/// One shard: where it lives and what its table is called there.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardLocation {
    pub shard_id: u32,
    pub node_id: String,
    pub url: String,
    pub remote_table: String,
    pub status: ShardStatus,
}

/// Everything a statement needs to route and ship work for one table.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// `schema.table` as the user writes it, for messages and explain.
    pub name: String,
    /// Base name of the shard tables on the nodes.
    pub remote_name: String,
    /// Non-dropped columns in attnum order.
    pub columns: Vec<Column>,
    /// Index into `columns` of the shard key.
    pub key_index: usize,
    /// Indexes into `columns` of the row identity (includes the shard key).
    pub primary_key: Vec<usize>,
    /// Indexed by shard id.
    pub shards: Vec<ShardLocation>,
}

impl Topology {
    pub fn key(&self) -> &Column {
        &self.columns[self.key_index]
    }

    pub fn shard_count(&self) -> u32 {
        self.shards.len() as u32
    }

    pub fn shard_key(&self) -> ShardKey<'_> {
        ShardKey {
            column: self.key_index,
            name: &self.key().name,
            shard_count: self.shard_count(),
        }
    }

    pub fn column_index(&self, attnum: i16) -> Option<usize> {
        self.columns.iter().position(|c| c.attnum == attnum)
    }

    pub fn column_names(&self) -> Vec<&str> {
        self.columns.iter().map(|c| c.name.as_str()).collect()
    }

    /// Distinct node ids, sorted.
    pub fn node_ids(&self) -> Vec<&str> {
        let mut nodes: Vec<&str> = self.shards.iter().map(|p| p.node_id.as_str()).collect();
        nodes.sort_unstable();
        nodes.dedup();
        nodes
    }
}
