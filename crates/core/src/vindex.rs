//! Virtual (secondary) indexes: for each value of a column or column tuple,
//! which shards hold a row with it (docs/ARCHITECTURE.md, Virtual indexes).
//!
//! The entries live on the nodes, in lookup tables sharded by the hash of the
//! indexed value: lookup shard `i` of an index sits beside shard `i` of its
//! table (same node) and holds the entries `(value…, owner shard)` whose value
//! hashes to `i`, exactly as a shard key would (same encoding, same jump hash,
//! so `42::int2` and `42::int8` meet). One request to the lookup shard of a
//! value names the only shards that can hold it.

use crate::placement::{jump_consistent_hash, key_hash, KeyValue};
use crate::predicate::{Binding, DeparseError, Pred};
use crate::remote_sql::{quote_ident, shard_table_name};
use crate::topology::Topology;
use crate::types::{uuid_from_text, ColumnType, TypedValue};
use conductor_hrana::{Stmt, Value};
use std::collections::{BTreeMap, BTreeSet};

/// The most value tuples one statement may look up through an index; a
/// larger IN list (or product of lists) visits the shards the shard key
/// gives instead.
pub const MAX_LOOKUP_VALUES: usize = 10_000;

/// Value tuples per lookup statement (SQLite's parameter limit is 32766).
const TUPLES_PER_STATEMENT: usize = 500;

/// Where an index is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexStatus {
    /// Writes maintain its entries, routing ignores it (backfill running).
    Building,
    /// Complete: routing may trust it.
    Ready,
}

/// A virtual index of one distributed table.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualIndex {
    pub name: String,
    /// Indexes into the topology's columns.
    pub columns: Vec<usize>,
    pub unique: bool,
    pub status: IndexStatus,
    /// The lookup tables live in each node's lookup database
    /// ([`lookup_database_url`]), whose write lock is not the shard tables'
    /// one; otherwise (a node without one, e.g. sqld) beside the shards.
    pub lookup_database: bool,
}

/// The base URL of a node's lookup database: the node's URL with
/// `/lookup`, under which conductor-node serves the same protocol on a
/// second SQLite file.
pub fn lookup_database_url(node_url: &str) -> String {
    format!("{}/lookup", node_url.trim_end_matches('/'))
}

/// The lookup table of `index` beside shard `shard` of a table whose shard
/// tables are named after `remote_name`: `<remote_name>_vx_<index>_<shard>`.
pub fn lookup_table_name(remote_name: &str, index: &str, shard: u32) -> String {
    shard_table_name(&format!("{remote_name}_vx_{index}"), shard)
}

/// The column of a lookup table holding the owner shard.
pub const OWNER_COLUMN: &str = "owner_shard";

/// Column names of a lookup table: `v0`, `v1`, … then the owner shard.
pub fn value_column(i: usize) -> String {
    format!("v{i}")
}

/// `CREATE TABLE` of one lookup shard. A non-unique index keys its entries
/// by (value…, owner shard), a unique one by the value alone, so inserting
/// an entry twice is harmless and a second owner of a unique value
/// conflicts on the node.
pub fn create_lookup_sql(table: &str, types: &[ColumnType], unique: bool) -> String {
    let mut cols: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, t)| {
            format!(
                "{} {} NOT NULL",
                quote_ident(&value_column(i)),
                t.sqlite_decltype()
            )
        })
        .collect();
    cols.push(format!("{} INTEGER NOT NULL", quote_ident(OWNER_COLUMN)));
    let mut key: Vec<String> = (0..types.len())
        .map(|i| quote_ident(&value_column(i)))
        .collect();
    if !unique {
        key.push(quote_ident(OWNER_COLUMN));
    }
    format!(
        "CREATE TABLE {} ({}, PRIMARY KEY ({})) WITHOUT ROWID",
        quote_ident(table),
        cols.join(", "),
        key.join(", ")
    )
}

/// The placement key of one stored value of an indexable type; None for
/// NULL (a NULL is never indexed: `col = NULL` matches no row).
fn placement_of<'a>(ty: ColumnType, v: &'a Value) -> Result<Option<KeyValue<'a>>, String> {
    Ok(Some(match (ty, v) {
        (_, Value::Null) => return Ok(None),
        (ColumnType::Int2 | ColumnType::Int4 | ColumnType::Int8, Value::Integer(i)) => {
            KeyValue::Int(*i)
        }
        (ColumnType::Text | ColumnType::Varchar, Value::Text(s)) => KeyValue::Text(s),
        (ColumnType::Uuid, Value::Text(s)) => {
            KeyValue::Uuid(uuid_from_text(s).map_err(|e| format!("bad uuid: {}", e.0))?)
        }
        (ty, v) => return Err(format!("a {ty} value cannot be {v:?}")),
    }))
}

/// The hash of a value tuple: one column hashes exactly as a shard key
/// (placement hash version 1); several hash the concatenation of their
/// encodings, each text prefixed by its length so no two tuples share one.
fn tuple_hash(keys: &[KeyValue]) -> u64 {
    if let [one] = keys {
        return key_hash(one);
    }
    let mut bytes = Vec::new();
    for k in keys {
        match k {
            KeyValue::Int(i) => bytes.extend_from_slice(&i.to_le_bytes()),
            KeyValue::Text(s) => {
                bytes.extend_from_slice(&(s.len() as u64).to_le_bytes());
                bytes.extend_from_slice(s.as_bytes());
            }
            KeyValue::Uuid(u) => bytes.extend_from_slice(u),
        }
    }
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// The lookup shard of a value tuple in stored form; None when any value
/// is NULL (not indexed).
pub fn lookup_shard(
    types: &[ColumnType],
    values: &[Value],
    shard_count: u32,
) -> Result<Option<u32>, String> {
    let mut keys = Vec::with_capacity(values.len());
    for (ty, v) in types.iter().zip(values) {
        match placement_of(*ty, v)? {
            Some(k) => keys.push(k),
            None => return Ok(None),
        }
    }
    Ok(Some(jump_consistent_hash(tuple_hash(&keys), shard_count)))
}

impl VirtualIndex {
    pub fn types(&self, topology: &Topology) -> Vec<ColumnType> {
        self.columns
            .iter()
            .map(|&c| topology.columns[c].ty)
            .collect()
    }

    pub fn column_names<'a>(&self, topology: &'a Topology) -> Vec<&'a str> {
        self.columns
            .iter()
            .map(|&c| topology.columns[c].name.as_str())
            .collect()
    }

    pub fn lookup_table(&self, topology: &Topology, shard: u32) -> String {
        lookup_table_name(&topology.remote_name, &self.name, shard)
    }

    /// The entries of rows (every column in topology order, stored form)
    /// with their owner shard, grouped by lookup shard: (value tuple,
    /// owner shard). Rows with a NULL in the index are skipped.
    pub fn entries_of<'a>(
        &self,
        topology: &Topology,
        rows: impl IntoIterator<Item = (u32, &'a [Value])>,
    ) -> Result<BTreeMap<u32, BTreeSet<Entry>>, String> {
        let types = self.types(topology);
        let mut out: BTreeMap<u32, BTreeSet<Entry>> = BTreeMap::new();
        for (owner, row) in rows {
            let values: Vec<Value> = self.columns.iter().map(|&c| row[c].clone()).collect();
            if let Some(shard) = lookup_shard(&types, &values, topology.shard_count())? {
                out.entry(shard).or_default().insert(Entry {
                    values: values.into_iter().map(EntryValue).collect(),
                    owner,
                });
            }
        }
        Ok(out)
    }

    /// `INSERT` of entries into one lookup shard, idempotent for a
    /// non-unique index (an entry already there is kept). For a unique
    /// index the caller inserts one entry per statement and handles the
    /// conflict.
    pub fn insert_entries_stmts(&self, table: &str, entries: &[&Entry]) -> Vec<Stmt> {
        let width = self.columns.len() + 1;
        let per = (32_000 / width).clamp(1, TUPLES_PER_STATEMENT);
        entries
            .chunks(per)
            .map(|chunk| {
                let mut cols: Vec<String> = (0..self.columns.len())
                    .map(|i| quote_ident(&value_column(i)))
                    .collect();
                cols.push(quote_ident(OWNER_COLUMN));
                let row = format!("({})", vec!["?"; width].join(", "));
                let sql = format!(
                    "INSERT INTO {} ({}) VALUES {} ON CONFLICT DO NOTHING",
                    quote_ident(table),
                    cols.join(", "),
                    vec![row; chunk.len()].join(", ")
                );
                let mut args = Vec::with_capacity(chunk.len() * width);
                for e in chunk {
                    args.extend(e.values.iter().map(|v| v.0.clone()));
                    args.push(Value::Integer(i64::from(e.owner)));
                }
                Stmt::new(sql, args)
            })
            .collect()
    }

    /// `SELECT DISTINCT owner_shard` of the value tuples on one lookup
    /// shard, as many statements as the parameter limit requires.
    pub fn lookup_stmts(&self, table: &str, tuples: &[Vec<Value>]) -> Vec<Stmt> {
        let n = self.columns.len();
        tuples
            .chunks(TUPLES_PER_STATEMENT)
            .map(|chunk| {
                let one = (0..n)
                    .map(|i| format!("{} = ?", quote_ident(&value_column(i))))
                    .collect::<Vec<_>>()
                    .join(" AND ");
                let cond = vec![format!("({one})"); chunk.len()].join(" OR ");
                let sql = format!(
                    "SELECT DISTINCT {} FROM {} WHERE {cond}",
                    quote_ident(OWNER_COLUMN),
                    quote_ident(table)
                );
                Stmt::new(sql, chunk.iter().flatten().cloned().collect())
            })
            .collect()
    }
}

impl VirtualIndex {
    fn value_match(&self) -> String {
        (0..self.columns.len())
            .map(|i| format!("{} = ?", quote_ident(&value_column(i))))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// The owner shards recorded for one value tuple.
    pub fn owners_stmt(&self, table: &str, entry: &Entry) -> Stmt {
        Stmt::new(
            format!(
                "SELECT {} FROM {} WHERE {}",
                quote_ident(OWNER_COLUMN),
                quote_ident(table),
                self.value_match()
            ),
            entry.values.iter().map(|v| v.0.clone()).collect(),
        )
    }

    /// Whether one entry (value tuple, owner) is present: one row if so.
    pub fn entry_stmt(&self, table: &str, entry: &Entry) -> Stmt {
        let mut args: Vec<Value> = entry.values.iter().map(|v| v.0.clone()).collect();
        args.push(Value::Integer(i64::from(entry.owner)));
        Stmt::new(
            format!(
                "SELECT 1 FROM {} WHERE {} AND {} = ?",
                quote_ident(table),
                self.value_match(),
                quote_ident(OWNER_COLUMN)
            ),
            args,
        )
    }

    /// Move a unique value's entry from a stale owner to `entry.owner`.
    pub fn take_over_stmt(&self, table: &str, entry: &Entry, stale_owner: u32) -> Stmt {
        let mut args = vec![Value::Integer(i64::from(entry.owner))];
        args.extend(entry.values.iter().map(|v| v.0.clone()));
        args.push(Value::Integer(i64::from(stale_owner)));
        Stmt::new(
            format!(
                "UPDATE {} SET {} = ? WHERE {} AND {} = ?",
                quote_ident(table),
                quote_ident(OWNER_COLUMN),
                self.value_match(),
                quote_ident(OWNER_COLUMN)
            ),
            args,
        )
    }

    /// Remove one entry.
    pub fn delete_entry_stmt(&self, table: &str, entry: &Entry) -> Stmt {
        let mut args: Vec<Value> = entry.values.iter().map(|v| v.0.clone()).collect();
        args.push(Value::Integer(i64::from(entry.owner)));
        Stmt::new(
            format!(
                "DELETE FROM {} WHERE {} AND {} = ?",
                quote_ident(table),
                self.value_match(),
                quote_ident(OWNER_COLUMN)
            ),
            args,
        )
    }

    /// Whether shard table `shard_table` holds a row with the entry's
    /// values: one row if so.
    pub fn probe_stmt(&self, topology: &Topology, shard_table: &str, entry: &Entry) -> Stmt {
        let cond = self
            .column_names(topology)
            .iter()
            .map(|c| {
                format!(
                    "{} = ?",
                    crate::remote_sql::qualified_column(shard_table, c)
                )
            })
            .collect::<Vec<_>>()
            .join(" AND ");
        Stmt::new(
            format!(
                "SELECT 1 FROM {} WHERE {cond} LIMIT 1",
                quote_ident(shard_table)
            ),
            entry.values.iter().map(|v| v.0.clone()).collect(),
        )
    }

    /// Every entry of one lookup shard: value columns, then the owner.
    pub fn all_entries_stmt(&self, table: &str) -> Stmt {
        let mut cols: Vec<String> = (0..self.columns.len())
            .map(|i| quote_ident(&value_column(i)))
            .collect();
        cols.push(quote_ident(OWNER_COLUMN));
        Stmt::new(
            format!("SELECT {} FROM {}", cols.join(", "), quote_ident(table)),
            vec![],
        )
    }

    /// The distinct non-NULL value tuples of one shard table, in the
    /// index's column order.
    pub fn shard_values_stmt(&self, topology: &Topology, shard_table: &str) -> Stmt {
        let cols: Vec<String> = self
            .column_names(topology)
            .iter()
            .map(|c| crate::remote_sql::qualified_column(shard_table, c))
            .collect();
        let not_null = cols
            .iter()
            .map(|c| format!("{c} IS NOT NULL"))
            .collect::<Vec<_>>()
            .join(" AND ");
        Stmt::new(
            format!(
                "SELECT DISTINCT {} FROM {} WHERE {not_null}",
                cols.join(", "),
                quote_ident(shard_table)
            ),
            vec![],
        )
    }

    /// One chunk of a shard's rows for the backfill, in primary-key order
    /// after `after` (the last primary key of the previous chunk): the
    /// primary-key columns, then the indexed ones.
    pub fn backfill_stmt(
        &self,
        topology: &Topology,
        shard_table: &str,
        after: Option<&[Value]>,
        limit: usize,
    ) -> Stmt {
        let pk: Vec<String> = topology
            .primary_key
            .iter()
            .map(|&c| crate::remote_sql::qualified_column(shard_table, &topology.columns[c].name))
            .collect();
        let mut cols = pk.clone();
        cols.extend(
            self.column_names(topology)
                .iter()
                .map(|c| crate::remote_sql::qualified_column(shard_table, c)),
        );
        let mut args: Vec<Value> = Vec::new();
        let where_sql = match after {
            Some(a) => {
                args.extend(a.iter().cloned());
                format!(
                    " WHERE ({}) > ({})",
                    pk.join(", "),
                    vec!["?"; pk.len()].join(", ")
                )
            }
            None => String::new(),
        };
        args.push(Value::Integer(limit as i64));
        Stmt::new(
            format!(
                "SELECT {} FROM {}{where_sql} ORDER BY {} LIMIT ?",
                cols.join(", "),
                quote_ident(shard_table),
                pk.join(", ")
            ),
            args,
        )
    }
}

/// A stored value, ordered so entries can be deduplicated.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryValue(pub Value);

impl Eq for EntryValue {}

impl PartialOrd for EntryValue {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for EntryValue {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        fn rank(v: &Value) -> (u8, Option<i64>, Option<&str>) {
            match v {
                Value::Null => (0, None, None),
                Value::Integer(i) => (1, Some(*i), None),
                Value::Text(s) => (2, None, Some(s)),
                _ => (3, None, None),
            }
        }
        rank(&self.0).cmp(&rank(&other.0))
    }
}

/// One index entry: a value tuple and the shard that holds a row with it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub values: Vec<EntryValue>,
    pub owner: u32,
}

impl Entry {
    /// `(a, 'b')` for messages.
    pub fn display(&self) -> String {
        display_values(self.values.iter().map(|v| &v.0))
    }
}

/// `a` or `(a, 'b')` for messages.
pub fn display_values<'a>(values: impl Iterator<Item = &'a Value>) -> String {
    let parts: Vec<String> = values
        .map(|v| match v {
            Value::Integer(i) => i.to_string(),
            Value::Text(s) => format!("'{}'", s.replace('\'', "''")),
            Value::Null => "NULL".into(),
            other => format!("{other:?}"),
        })
        .collect();
    if parts.len() == 1 {
        parts.into_iter().next().unwrap_or_default()
    } else {
        format!("({})", parts.join(", "))
    }
}

/// Value tuples (stored form) grouped by lookup shard.
pub type TuplesByLookupShard = BTreeMap<u32, Vec<Vec<Value>>>;

/// The value tuples a conjunction admits for `index` (stored form, grouped
/// by lookup shard), or None when it does not restrict every indexed column
/// to a finite list of at most [`MAX_LOOKUP_VALUES`] tuples.
pub fn admitted(
    topology: &Topology,
    index: &VirtualIndex,
    preds: &[Pred],
    bindings: &[Binding],
) -> Result<Option<TuplesByLookupShard>, DeparseError> {
    let mut per_column: Vec<Vec<Value>> = Vec::with_capacity(index.columns.len());
    for &c in &index.columns {
        let Some(values) = crate::router::admitted_values(preds, c, bindings)? else {
            return Ok(None);
        };
        let mut stored = Vec::with_capacity(values.len());
        for v in values {
            match typed_to_stored(&v, topology.columns[c].ty) {
                Some(s) => stored.push(s),
                None => return Ok(None),
            }
        }
        per_column.push(stored);
    }
    let total = per_column
        .iter()
        .try_fold(1usize, |acc, v| acc.checked_mul(v.len()))
        .unwrap_or(usize::MAX);
    if total > MAX_LOOKUP_VALUES {
        return Ok(None);
    }
    let mut tuples: Vec<Vec<Value>> = vec![Vec::new()];
    for col in &per_column {
        tuples = tuples
            .into_iter()
            .flat_map(|t| {
                col.iter().map(move |v| {
                    let mut t = t.clone();
                    t.push(v.clone());
                    t
                })
            })
            .collect();
    }
    let types = index.types(topology);
    let mut out: BTreeMap<u32, Vec<Vec<Value>>> = BTreeMap::new();
    for t in tuples {
        match lookup_shard(&types, &t, topology.shard_count()) {
            Ok(Some(s)) => out.entry(s).or_default().push(t),
            Ok(None) => {}
            Err(_) => return Ok(None),
        }
    }
    Ok(Some(out))
}

/// A routed key value in the stored form of a column of type `ty` (None:
/// no exact stored form, e.g. an integer constant against a text column).
fn typed_to_stored(v: &TypedValue, ty: ColumnType) -> Option<Value> {
    match (v, ty) {
        (
            TypedValue::Int2(_) | TypedValue::Int4(_) | TypedValue::Int8(_),
            ColumnType::Int2 | ColumnType::Int4 | ColumnType::Int8,
        )
        | (TypedValue::Text(_), ColumnType::Text | ColumnType::Varchar)
        | (TypedValue::Uuid(_), ColumnType::Uuid) => v.to_value("").ok(),
        _ => None,
    }
}

/// The index a statement can be routed through: of the ready indexes whose
/// every column the conjunction restricts to a finite list, the one with
/// the most columns (the narrowest), the first by name among equals.
pub fn usable<'a>(
    topology: &Topology,
    indexes: &'a [VirtualIndex],
    preds: &[Pred],
) -> Option<&'a VirtualIndex> {
    let mut best: Option<&VirtualIndex> = None;
    for ix in indexes.iter().filter(|ix| {
        ix.status == IndexStatus::Ready
            && ix
                .columns
                .iter()
                .all(|&c| crate::router::restricts(preds, c))
            && !crate::router::restricts(preds, topology.key_index)
    }) {
        if best.is_none_or(|b| ix.columns.len() > b.columns.len()) {
            best = Some(ix);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::shard_for;

    #[test]
    fn one_column_hashes_as_a_shard_key() {
        for i in [-5i64, 0, 42, 1_000_000] {
            for n in [1, 16, 1000] {
                assert_eq!(
                    lookup_shard(&[ColumnType::Int4], &[Value::Integer(i)], n).unwrap(),
                    Some(shard_for(&KeyValue::Int(i), n))
                );
            }
        }
        assert_eq!(
            lookup_shard(&[ColumnType::Text], &[Value::Text("a@b".into())], 16).unwrap(),
            Some(shard_for(&KeyValue::Text("a@b"), 16))
        );
        assert_eq!(
            lookup_shard(&[ColumnType::Text], &[Value::Null], 16).unwrap(),
            None
        );
    }

    #[test]
    fn tuples_do_not_collide_by_concatenation() {
        let t = [ColumnType::Text, ColumnType::Text];
        let a = tuple_hash(&[KeyValue::Text("ab"), KeyValue::Text("c")]);
        let b = tuple_hash(&[KeyValue::Text("a"), KeyValue::Text("bc")]);
        assert_ne!(a, b);
        assert!(lookup_shard(&t, &[Value::Text("x".into()), Value::Null], 4)
            .unwrap()
            .is_none());
    }

    fn topology() -> Topology {
        use crate::topology::{Column, ShardLocation, ShardStatus};
        let col = |attnum: i16, name: &str, ty| Column {
            attnum,
            name: name.into(),
            ty,
            not_null: attnum == 1,
        };
        Topology {
            name: "public.t".into(),
            remote_name: "t".into(),
            columns: vec![
                col(1, "id", ColumnType::Int8),
                col(2, "email", ColumnType::Text),
                col(3, "n", ColumnType::Int4),
            ],
            key_index: 0,
            primary_key: vec![0],
            shards: (0..8)
                .map(|s| ShardLocation {
                    shard_id: s,
                    node_id: format!("node-{}", s % 2),
                    url: format!("http://127.0.0.1:{}", 7000 + s % 2),
                    remote_table: format!("t_{s:04}"),
                    status: ShardStatus::Active,
                })
                .collect(),
        }
    }

    fn index(name: &str, columns: Vec<usize>, status: IndexStatus) -> VirtualIndex {
        VirtualIndex {
            name: name.into(),
            columns,
            unique: false,
            status,
            lookup_database: true,
        }
    }

    fn eq(column: usize, v: TypedValue) -> Pred {
        Pred::Cmp {
            column,
            op: crate::predicate::CmpOp::Eq,
            value: crate::predicate::Operand::Const(Some(v)),
        }
    }

    #[test]
    fn the_narrowest_ready_index_routes_and_the_shard_key_wins() {
        let t = topology();
        let ixs = [
            index("a_n", vec![2], IndexStatus::Ready),
            index("b_email_n", vec![1, 2], IndexStatus::Ready),
            index("c_email", vec![1], IndexStatus::Building),
        ];
        let email = eq(1, TypedValue::Text("a@b".into()));
        let n = eq(2, TypedValue::Int4(7));
        assert_eq!(
            usable(&t, &ixs, &[email.clone(), n.clone()]).unwrap().name,
            "b_email_n"
        );
        assert_eq!(usable(&t, &ixs, &[n.clone()]).unwrap().name, "a_n");
        // A building index is never used; the shard key routes by itself.
        assert!(usable(&t, &ixs, &[email.clone()]).is_none());
        let key = eq(0, TypedValue::Int8(1));
        assert!(usable(&t, &ixs, &[n.clone(), key]).is_none());
        // A parameter restricts the column too (bound at execution).
        let param = Pred::Cmp {
            column: 2,
            op: crate::predicate::CmpOp::Eq,
            value: crate::predicate::Operand::Param(0),
        };
        assert_eq!(usable(&t, &ixs, &[param.clone()]).unwrap().name, "a_n");
        let bound = admitted(
            &t,
            &ixs[0],
            &[param],
            &[Binding::Value(Some(TypedValue::Int4(7)))],
        )
        .unwrap()
        .unwrap();
        let want = lookup_shard(&[ColumnType::Int4], &[Value::Integer(7)], 8)
            .unwrap()
            .unwrap();
        assert_eq!(bound, [(want, vec![vec![Value::Integer(7)]])].into());
    }

    #[test]
    fn composite_lists_are_the_product_of_the_columns() {
        let t = topology();
        let ix = index("b", vec![1, 2], IndexStatus::Ready);
        let emails = Pred::In {
            column: 1,
            list: crate::predicate::ListOperand::Items(vec![
                crate::predicate::Operand::Const(Some(TypedValue::Text("x".into()))),
                crate::predicate::Operand::Const(Some(TypedValue::Text("y".into()))),
            ]),
        };
        let n = eq(2, TypedValue::Int4(1));
        let got = admitted(&t, &ix, &[emails, n], &[]).unwrap().unwrap();
        let tuples: usize = got.values().map(Vec::len).sum();
        assert_eq!(tuples, 2);
        // `email = NULL` admits nothing: no lookup, no shard.
        let none = Pred::Cmp {
            column: 1,
            op: crate::predicate::CmpOp::Eq,
            value: crate::predicate::Operand::Const(None),
        };
        let got = admitted(&t, &ix, &[none, eq(2, TypedValue::Int4(1))], &[])
            .unwrap()
            .unwrap();
        assert!(got.is_empty());
    }

    #[test]
    fn unique_lookup_is_keyed_by_value_only() {
        let sql = create_lookup_sql("t_vx_e_0001", &[ColumnType::Text], true);
        assert!(sql.contains("PRIMARY KEY (\"v0\")"), "{sql}");
        let sql = create_lookup_sql("t_vx_e_0001", &[ColumnType::Text], false);
        assert!(
            sql.contains("PRIMARY KEY (\"v0\", \"owner_shard\")"),
            "{sql}"
        );
    }
}
