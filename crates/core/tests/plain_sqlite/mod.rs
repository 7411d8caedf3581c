//! Running what a shard plan sends on plain SQLite (rusqlite) in the core's
//! tests: argument conversion and a one-shard table.

#![allow(dead_code)]

use conductor_core::topology::{Column, ShardLocation, ShardStatus, Topology};
use conductor_core::types::ColumnType;
use conductor_hrana::Value;

/// A Hrana argument as rusqlite binds it.
pub fn to_sqlite(v: &Value) -> rusqlite::types::Value {
    match v {
        Value::Null => rusqlite::types::Value::Null,
        Value::Integer(i) => rusqlite::types::Value::Integer(*i),
        Value::Float(f) => rusqlite::types::Value::Real(*f),
        Value::Text(t) => rusqlite::types::Value::Text(t.clone()),
        Value::Blob(b) => rusqlite::types::Value::Blob(b.clone()),
    }
}

/// Table `t` of these columns (the first is its shard key and primary
/// key) with one shard, `t_0000`, on node `n`.
pub fn one_shard_table(columns: &[(&str, ColumnType)]) -> Topology {
    Topology {
        name: "t".into(),
        remote_name: "t".into(),
        columns: columns
            .iter()
            .enumerate()
            .map(|(i, &(name, ty))| Column {
                attnum: i as i16 + 1,
                name: name.into(),
                ty,
                not_null: false,
            })
            .collect(),
        key_index: 0,
        primary_key: vec![0],
        shards: vec![ShardLocation {
            shard_id: 0,
            node_id: "n".into(),
            url: "http://unused".into(),
            remote_table: "t_0000".into(),
            status: ShardStatus::Active,
        }],
    }
}
