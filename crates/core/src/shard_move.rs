//! Moving a shard between nodes while it is read and written: the SQLite
//! statements of change capture, copy, catch-up, the write block and the
//! fence, the row checksum both copies are compared by, and the rebalance
//! planner. The extension drives the phases (src/api/moves.rs); the design
//! and its invariants are in docs/ARCHITECTURE.md, Moving shards.
//!
//! Every object a move creates on a node is named after the shard table, so
//! a move that died can be cleaned up from its catalog record alone.

use crate::remote_sql::{qualified_column, quote_ident};
use conductor_hrana::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The text a blocked or fenced shard table's triggers raise; the extension
/// recognizes it in a node's error and reports a retryable failure.
pub const FENCE_MESSAGE: &str = "conductor: shard is being moved";

/// Until this Julian day a fence lasts: for ever.
const FOREVER: &str = "1e308";

/// The table on the source node that receives the primary key of every row
/// changed while the shard is being copied.
pub fn changes_table(shard_table: &str) -> String {
    format!("{shard_table}__move_changes")
}

/// The one-row table on the source node whose row, while its time has not
/// passed, makes writes to the shard table fail.
pub fn block_table(shard_table: &str) -> String {
    format!("{shard_table}__move_block")
}

const TRIGGERS: [&str; 6] = ["ai", "au", "ad", "bi", "bu", "bd"];

fn trigger_name(shard_table: &str, which: &str) -> String {
    format!("{shard_table}__move_{which}")
}

/// Every table a move may leave on the source node besides the shard table.
pub fn source_leftovers(shard_table: &str) -> [String; 2] {
    [changes_table(shard_table), block_table(shard_table)]
}

fn key_columns(n: usize) -> String {
    (0..n)
        .map(|i| format!("k{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn row_of(prefix: &str, key: &[&str]) -> String {
    key.iter()
        .map(|k| format!("{prefix}.{}", quote_ident(k)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The statements, in one node transaction, that start capturing changes
/// to `shard_table` (whose primary key is `key`) and install its write
/// block (inactive until a block row is inserted). The change table names
/// its key columns by position, so no user column can collide with `seq`.
pub fn capture_setup_sql(shard_table: &str, key: &[&str]) -> Vec<String> {
    let t = quote_ident(shard_table);
    let changes = quote_ident(&changes_table(shard_table));
    let block = quote_ident(&block_table(shard_table));
    let cols = key_columns(key.len());
    let new = row_of("NEW", key);
    let old = row_of("OLD", key);
    let mut sql = vec![
        format!("CREATE TABLE {changes} (seq INTEGER PRIMARY KEY, {cols})"),
        format!("CREATE TABLE {block} (until REAL NOT NULL)"),
        format!(
            "CREATE TRIGGER {} AFTER INSERT ON {t} BEGIN INSERT INTO {changes} ({cols}) VALUES ({new}); END",
            quote_ident(&trigger_name(shard_table, "ai"))
        ),
        format!(
            "CREATE TRIGGER {} AFTER UPDATE ON {t} BEGIN INSERT INTO {changes} ({cols}) VALUES ({old}), ({new}); END",
            quote_ident(&trigger_name(shard_table, "au"))
        ),
        format!(
            "CREATE TRIGGER {} AFTER DELETE ON {t} BEGIN INSERT INTO {changes} ({cols}) VALUES ({old}); END",
            quote_ident(&trigger_name(shard_table, "ad"))
        ),
    ];
    for (which, op) in [("bi", "INSERT"), ("bu", "UPDATE"), ("bd", "DELETE")] {
        sql.push(format!(
            "CREATE TRIGGER {} BEFORE {op} ON {t} WHEN EXISTS (SELECT 1 FROM {block} WHERE until > julianday('now')) BEGIN SELECT RAISE(ABORT, '{FENCE_MESSAGE}'); END",
            quote_ident(&trigger_name(shard_table, which))
        ));
    }
    sql
}

/// The statements that remove capture and block from the source, leaving
/// the shard table as it was; harmless when some of it is not there.
pub fn capture_teardown_sql(shard_table: &str) -> Vec<String> {
    let mut sql: Vec<String> = TRIGGERS
        .iter()
        .map(|w| {
            format!(
                "DROP TRIGGER IF EXISTS {}",
                quote_ident(&trigger_name(shard_table, w))
            )
        })
        .collect();
    for t in source_leftovers(shard_table) {
        sql.push(format!("DROP TABLE IF EXISTS {}", quote_ident(&t)));
    }
    sql
}

/// Start the write block: writes to the shard table fail from the commit
/// of these statements until `?` milliseconds later by the node's clock,
/// whatever happens to the mover, so a mover that dies cannot block
/// writes for longer than that.
pub fn block_sql(shard_table: &str) -> [String; 2] {
    let block = quote_ident(&block_table(shard_table));
    [
        format!("DELETE FROM {block}"),
        format!("INSERT INTO {block} (until) VALUES (julianday('now') + ? / 86400000.0)"),
    ]
}

/// Make a block that has not yet expired permanent (the fence of the old
/// copy): changes one row exactly when the block held without a gap.
pub fn fence_sql(shard_table: &str) -> String {
    format!(
        "UPDATE {} SET until = {FOREVER} WHERE until > julianday('now')",
        quote_ident(&block_table(shard_table))
    )
}

/// Lift the block (the move was abandoned).
pub fn unblock_sql(shard_table: &str) -> String {
    format!("DELETE FROM {}", quote_ident(&block_table(shard_table)))
}

/// `SELECT cols FROM t [WHERE (key) > (?, …)] ORDER BY key LIMIT ?`: the
/// next chunk of rows in primary-key order after the last key copied.
pub fn chunk_sql(shard_table: &str, columns: &[&str], key: &[&str], after: bool) -> String {
    let mut sql = String::from("SELECT ");
    sql.push_str(&qualified_list(shard_table, columns));
    let _ = write!(sql, " FROM {}", quote_ident(shard_table));
    let key_list = qualified_list(shard_table, key);
    if after {
        let marks = vec!["?"; key.len()].join(", ");
        if key.len() == 1 {
            let _ = write!(sql, " WHERE {key_list} > ?");
        } else {
            let _ = write!(sql, " WHERE ({key_list}) > ({marks})");
        }
    }
    let _ = write!(sql, " ORDER BY {key_list} LIMIT ?");
    sql
}

fn qualified_list(table: &str, names: &[&str]) -> String {
    names
        .iter()
        .map(|c| qualified_column(table, c))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `INSERT OR REPLACE` of `rows` rows: copying and replaying are
/// idempotent, a row already on the target is overwritten.
pub fn upsert_sql(shard_table: &str, columns: &[&str], rows: usize) -> String {
    let insert = crate::remote_sql::insert_sql(shard_table, columns, rows);
    insert.replacen("INSERT INTO", "INSERT OR REPLACE INTO", 1)
}

/// The oldest captured changes: `seq` and the key.
pub fn read_changes_sql(shard_table: &str, key_len: usize) -> String {
    format!(
        "SELECT seq, {} FROM {} ORDER BY seq LIMIT ?",
        key_columns(key_len),
        quote_ident(&changes_table(shard_table))
    )
}

/// Forget the changes replayed: every one up to `?`.
pub fn delete_changes_sql(shard_table: &str) -> String {
    format!(
        "DELETE FROM {} WHERE seq <= ?",
        quote_ident(&changes_table(shard_table))
    )
}

/// How many changes wait to be replayed.
pub fn pending_changes_sql(shard_table: &str) -> String {
    format!(
        "SELECT count(*) FROM {}",
        quote_ident(&changes_table(shard_table))
    )
}

/// One row by its key.
pub fn row_by_key_sql(shard_table: &str, columns: &[&str], key: &[&str]) -> String {
    format!(
        "SELECT {} FROM {} WHERE {}",
        qualified_list(shard_table, columns),
        quote_ident(shard_table),
        crate::remote_sql::key_match_sql(shard_table, key)
    )
}

/// Delete one row by its key.
pub fn delete_by_key_sql(shard_table: &str, key: &[&str]) -> String {
    format!(
        "DELETE FROM {} WHERE {}",
        quote_ident(shard_table),
        crate::remote_sql::key_match_sql(shard_table, key)
    )
}

/// A table's DDL and its indexes' on a node, to create the same on the
/// target: `?` is the shard table's name.
pub const SCHEMA_OF_TABLE_SQL: &str = "SELECT type, name, sql FROM sqlite_master WHERE tbl_name = ? AND type IN ('table', 'index') AND sql IS NOT NULL ORDER BY type = 'index', name";

/// The columns a table has on a node, in order: `?` is its name.
pub const COLUMNS_OF_TABLE_SQL: &str = "SELECT name FROM pragma_table_info(?) ORDER BY cid";

/// Which of the tables named in the JSON array `?` exist on a node.
pub const EXISTING_TABLES_SQL: &str = "SELECT name FROM sqlite_master WHERE type = 'table' AND name IN (SELECT value FROM json_each(?))";

/// Row count and an order-independent checksum of a shard's rows, added up
/// chunk by chunk on both copies: equal rows give equal sums, whatever the
/// order they are read in.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Checksum {
    pub rows: u64,
    pub sum: u64,
}

impl Checksum {
    pub fn add_row(&mut self, row: &[Value]) {
        self.rows += 1;
        self.sum = self.sum.wrapping_add(row_hash(row));
    }
}

pub use conductor_hrana::checksum::row_hash;

/// `SELECT count(*), conductor_row_checksum(cols) FROM t`: a shard's
/// [`Checksum`] computed on a node that offers the aggregate.
pub fn checksum_sql(shard_table: &str, columns: &[&str]) -> String {
    format!(
        "SELECT count(*), {}({}) FROM {}",
        conductor_hrana::checksum::CHECKSUM_FUNCTION,
        qualified_list(shard_table, columns),
        quote_ident(shard_table)
    )
}

/// A key as a map key (values are not `Ord`: floats).
pub fn key_fingerprint(key: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in key {
        let h = row_hash(std::slice::from_ref(v));
        out.extend_from_slice(&h.to_le_bytes());
        if let Value::Text(s) = v {
            out.extend_from_slice(s.as_bytes());
        }
    }
    out
}

/// Bytes of every table of a node's database with its indexes, from
/// SQLite's dbstat (one row per table; a libSQL server lacks dbstat and
/// answers with an error): what the rebalance planner weighs shards by.
pub const TABLE_BYTES_SQL: &str = "SELECT coalesce(s.tbl_name, d.name), sum(d.pgsize) \
     FROM dbstat AS d LEFT JOIN sqlite_schema AS s ON s.type = 'index' AND s.name = d.name \
     WHERE d.aggregate = TRUE GROUP BY 1";

/// One unit the planner may move: shard `shard_id` of a table (or of a
/// co-location group, which moves as one), with its weight (the number of
/// tables it stands for, or its size when known).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedShard<K> {
    pub table: K,
    pub shard_id: u32,
    pub node: String,
    pub weight: u64,
}

/// A planned move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedMove<K> {
    pub table: K,
    pub shard_id: u32,
    pub from: String,
    pub to: String,
}

/// The moves that leave no shard on a node outside `nodes` and even out
/// the weight over `nodes`: every shard on another node goes to the
/// lightest node, then a shard of the heaviest node goes to the lightest
/// while that narrows the gap — the one whose weight is closest to half
/// the gap. Deterministic: ties go to the first node id and to the table
/// with the most shards on the node, then the highest shard id.
pub fn plan_rebalance<K: Clone + Ord>(
    nodes: &[String],
    shards: &[PlacedShard<K>],
) -> Vec<PlannedMove<K>> {
    let mut plan = Vec::new();
    if nodes.is_empty() {
        return plan;
    }
    let mut load: BTreeMap<&str, u64> = nodes.iter().map(|n| (n.as_str(), 0)).collect();
    let mut placed: Vec<PlacedShard<K>> = shards.to_vec();
    for s in &placed {
        if let Some(l) = load.get_mut(s.node.as_str()) {
            *l += s.weight;
        }
    }
    let lightest = |load: &BTreeMap<&str, u64>| -> String {
        load.iter()
            .min_by_key(|(n, l)| (**l, **n))
            .map(|(n, _)| n.to_string())
            .unwrap_or_default()
    };
    // Shards off the given nodes, heaviest first.
    let mut off: Vec<usize> = (0..placed.len())
        .filter(|&i| !load.contains_key(placed[i].node.as_str()))
        .collect();
    off.sort_by(|&a, &b| {
        placed[b]
            .weight
            .cmp(&placed[a].weight)
            .then(placed[a].table.cmp(&placed[b].table))
            .then(placed[a].shard_id.cmp(&placed[b].shard_id))
    });
    for i in off {
        let to = lightest(&load);
        *load.get_mut(to.as_str()).expect("a node") += placed[i].weight;
        plan.push(PlannedMove {
            table: placed[i].table.clone(),
            shard_id: placed[i].shard_id,
            from: placed[i].node.clone(),
            to: to.clone(),
        });
        placed[i].node = to;
    }
    loop {
        let (heavy, heavy_load) = load
            .iter()
            .max_by_key(|(n, l)| (**l, std::cmp::Reverse(**n)))
            .map(|(n, l)| (n.to_string(), *l))
            .expect("a node");
        let light = lightest(&load);
        let light_load = load[light.as_str()];
        // Tables with the most shards on the heavy node give one first.
        let mut per_table: BTreeMap<&K, usize> = BTreeMap::new();
        for s in placed.iter().filter(|s| s.node == heavy) {
            *per_table.entry(&s.table).or_default() += 1;
        }
        let candidate = placed
            .iter()
            .enumerate()
            .filter(|(_, s)| s.node == heavy && s.weight > 0)
            // Moving it must narrow the gap.
            .filter(|(_, s)| light_load + s.weight < heavy_load)
            // The unit closest to half the gap evens out the most (all
            // alike when weights are counts), then as described above.
            .max_by(|(_, a), (_, b)| {
                let off_half = |w: u64| (heavy_load - light_load).abs_diff(2 * w);
                off_half(b.weight)
                    .cmp(&off_half(a.weight))
                    .then(per_table[&a.table].cmp(&per_table[&b.table]))
                    .then(b.table.cmp(&a.table))
                    .then(a.shard_id.cmp(&b.shard_id))
            })
            .map(|(i, _)| i);
        let Some(i) = candidate else { break };
        let w = placed[i].weight;
        *load.get_mut(heavy.as_str()).expect("a node") -= w;
        *load.get_mut(light.as_str()).expect("a node") += w;
        plan.push(PlannedMove {
            table: placed[i].table.clone(),
            shard_id: placed[i].shard_id,
            from: heavy.clone(),
            to: light.clone(),
        });
        placed[i].node = light;
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(table: &str, id: u32, node: &str) -> PlacedShard<String> {
        PlacedShard {
            table: table.into(),
            shard_id: id,
            node: node.into(),
            weight: 1,
        }
    }

    fn nodes(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn counts(n: &[String], s: &[PlacedShard<String>], plan: &[PlannedMove<String>]) -> Vec<u64> {
        let mut at: Vec<PlacedShard<String>> = s.to_vec();
        for m in plan {
            let p = at
                .iter_mut()
                .find(|p| p.table == m.table && p.shard_id == m.shard_id)
                .unwrap();
            assert_eq!(p.node, m.from, "a move starts where the shard is");
            p.node = m.to.clone();
        }
        n.iter()
            .map(|node| at.iter().filter(|p| &p.node == node).count() as u64)
            .collect()
    }

    #[test]
    fn by_size_the_unit_that_halves_the_gap_moves() {
        // a: one big shard and three small ones on n1; n2 empty.
        let mut s: Vec<PlacedShard<String>> = (0..4).map(|i| shard("a", i, "n1")).collect();
        s[0].weight = 90;
        for x in &mut s[1..] {
            x.weight = 10;
        }
        let plan = plan_rebalance(&nodes(&["n1", "n2"]), &s);
        // 120 on n1: the 90 is nearest half the gap (60); after it, 30/90,
        // and no unit on n2 narrows that gap.
        assert_eq!(plan.len(), 1, "{plan:?}");
        assert_eq!(plan[0].shard_id, 0);
        // Small ones: several move where one would not even out.
        s[0].weight = 30;
        for x in &mut s[1..] {
            x.weight = 30;
        }
        s.push(shard("b", 0, "n1"));
        s[4].weight = 120;
        // n1: 240, n2: 0. The 120 halves it exactly and goes alone.
        let plan = plan_rebalance(&nodes(&["n1", "n2"]), &s);
        assert_eq!(plan.len(), 1, "{plan:?}");
        assert_eq!((plan[0].table.as_str(), plan[0].shard_id), ("b", 0));
        s[4].weight = 10;
        // n1: 130: two 30s (60/70) even it out; the 10 stays.
        let plan = plan_rebalance(&nodes(&["n1", "n2"]), &s);
        assert_eq!(plan.len(), 2, "{plan:?}");
        assert!(plan.iter().all(|m| m.table == "a"), "{plan:?}");
    }

    #[test]
    fn a_new_node_gets_its_share() {
        let n = nodes(&["a", "b", "c"]);
        let s: Vec<_> = (0..12)
            .map(|i| shard("t", i, if i % 2 == 0 { "a" } else { "b" }))
            .collect();
        let plan = plan_rebalance(&n, &s);
        assert_eq!(plan.len(), 4);
        assert!(plan.iter().all(|m| m.to == "c"));
        assert_eq!(counts(&n, &s, &plan), vec![4, 4, 4]);
    }

    #[test]
    fn balanced_is_left_alone() {
        let n = nodes(&["a", "b"]);
        let s = vec![shard("t", 0, "a"), shard("t", 1, "b"), shard("t", 2, "a")];
        assert!(plan_rebalance(&n, &s).is_empty());
    }

    #[test]
    fn a_drained_node_is_emptied() {
        let n = nodes(&["a", "b"]);
        let s: Vec<_> = (0..9)
            .map(|i| shard("t", i, ["a", "b", "x"][i as usize % 3]))
            .collect();
        let plan = plan_rebalance(&n, &s);
        assert!(plan.iter().all(|m| m.from == "x"));
        assert_eq!(plan.len(), 3);
        let c = counts(&n, &s, &plan);
        assert_eq!(c.iter().sum::<u64>(), 9);
        assert!(c.iter().max().unwrap() - c.iter().min().unwrap() <= 1);
    }

    #[test]
    fn evens_out_over_tables() {
        let n = nodes(&["a", "b", "c", "d"]);
        let mut s = Vec::new();
        for t in ["t1", "t2", "t3"] {
            for i in 0..5 {
                s.push(shard(t, i, "a"));
            }
        }
        let plan = plan_rebalance(&n, &s);
        let c = counts(&n, &s, &plan);
        assert!(c.iter().max().unwrap() - c.iter().min().unwrap() <= 1);
        assert_eq!(plan, plan_rebalance(&n, &s), "deterministic");
    }

    #[test]
    fn checksum_is_order_independent_and_typed() {
        let r1 = vec![Value::Integer(1), Value::Text("a".into())];
        let r2 = vec![Value::Integer(2), Value::Null];
        let mut x = Checksum::default();
        x.add_row(&r1);
        x.add_row(&r2);
        let mut y = Checksum::default();
        y.add_row(&r2);
        y.add_row(&r1);
        assert_eq!(x, y);
        assert_ne!(
            row_hash(&[Value::Integer(1)]),
            row_hash(&[Value::Text("1".into())])
        );
        assert_ne!(
            row_hash(&[Value::Text("ab".into()), Value::Text("c".into())]),
            row_hash(&[Value::Text("a".into()), Value::Text("bc".into())])
        );
    }

    #[test]
    fn statements_quote_names() {
        let setup = capture_setup_sql("we\"ird_0001", &["id", "seq"]);
        assert!(setup[0].starts_with(
            "CREATE TABLE \"we\"\"ird_0001__move_changes\" (seq INTEGER PRIMARY KEY, k0, k1)"
        ));
        assert!(setup[3].contains("VALUES (OLD.\"id\", OLD.\"seq\"), (NEW.\"id\", NEW.\"seq\")"));
        assert_eq!(capture_teardown_sql("t_0001").len(), 8);
        assert_eq!(
            chunk_sql("t_0001", &["id", "v"], &["id"], true),
            "SELECT \"t_0001\".\"id\", \"t_0001\".\"v\" FROM \"t_0001\" WHERE \"t_0001\".\"id\" > ? ORDER BY \"t_0001\".\"id\" LIMIT ?"
        );
        assert!(chunk_sql("t", &["a", "b"], &["a", "b"], true)
            .contains("WHERE (\"t\".\"a\", \"t\".\"b\") > (?, ?)"));
        assert!(upsert_sql("t", &["a"], 2).starts_with("INSERT OR REPLACE INTO \"t\""));
    }
}
