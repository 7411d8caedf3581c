//! Helpers shared by the end-to-end test files (each file includes this
//! module with `mod common;`, so not every helper is used by every file).
#![allow(dead_code)]

use conductor_e2e::postgres::{self, error::DbError, Client};
use conductor_e2e::{pg_err, Cluster};
use std::collections::BTreeMap;

/// The database error of a statement that must fail; panics (showing the
/// rows it returned) when it succeeded.
pub fn expect_db_error<T: std::fmt::Debug>(
    result: Result<T, postgres::Error>,
    what: &str,
) -> DbError {
    match result {
        Ok(v) => panic!("{what}: expected an error, got {v:?}"),
        Err(e) => match e.as_db_error() {
            Some(db) => db.clone(),
            None => panic!("{what}: expected a database error, got {e}"),
        },
    }
}

/// "SQLSTATE message\nDETAIL…" for assertion messages.
pub fn describe(e: &DbError) -> String {
    format!(
        "{} {}: {} | DETAIL: {:?} | HINT: {:?}",
        e.severity(),
        e.code().code(),
        e.message(),
        e.detail(),
        e.hint()
    )
}

/// Runs SQL that must succeed, panicking with the full Postgres error.
pub fn exec(client: &mut Client, sql: &str) {
    client
        .batch_execute(sql)
        .unwrap_or_else(|e| panic!("{sql}: {}", pg_err(&e)));
}

/// One bigint from a query that must succeed.
pub fn query_i64(client: &mut Client, sql: &str) -> i64 {
    client
        .query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", pg_err(&e)))
        .get(0)
}

/// Index of the harness node registered as `node-<i>`.
pub fn node_index(node_id: &str) -> usize {
    node_id
        .strip_prefix("node-")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected node id {node_id}"))
}

/// shard id -> (node id, remote table), from the conductor.shards view.
pub fn shard_map(client: &mut Client, table: &str) -> BTreeMap<i32, (String, String)> {
    client
        .query(
            "SELECT shard_id, node_id, remote_table FROM conductor.shards
              WHERE table_name = $1::text::regclass ORDER BY shard_id",
            &[&table],
        )
        .unwrap_or_else(|e| panic!("shards of {table}: {}", pg_err(&e)))
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect()
}

/// Every table on every node, as (node index, table name).
pub fn all_node_tables(cluster: &Cluster) -> Vec<(usize, String)> {
    (0..cluster.node_count())
        .flat_map(|i| cluster.node_tables(i).into_iter().map(move |t| (i, t)))
        .collect()
}

/// Node tables whose name starts with `<prefix>_` (shard tables of a remote
/// table name), as (node index, table name), sorted.
pub fn shard_tables_on_nodes(cluster: &Cluster, prefix: &str) -> Vec<(usize, String)> {
    let want = format!("{prefix}_");
    let mut v: Vec<(usize, String)> = all_node_tables(cluster)
        .into_iter()
        .filter(|(_, t)| t.starts_with(&want))
        .collect();
    v.sort();
    v
}

/// Catalog rows (distributed_table + shard) that mention `relid`-less name:
/// counts of conductor.distributed_table rows with this remote name and of
/// their shards.
pub fn catalog_rows_for_remote_name(client: &mut Client, remote_name: &str) -> (i64, i64) {
    let row = client
        .query_one(
            "SELECT (SELECT count(*) FROM conductor.distributed_table WHERE remote_name = $1),
                    (SELECT count(*) FROM conductor.shard s
                       JOIN conductor.distributed_table t USING (relid)
                      WHERE t.remote_name = $1)",
            &[&remote_name],
        )
        .unwrap_or_else(|e| panic!("catalog rows: {}", pg_err(&e)));
    (row.get(0), row.get(1))
}

/// The sqld binary named by `SQLD`, if it exists: the suites that run real
/// libSQL servers as nodes check nothing without one.
pub fn sqld_bin() -> Option<std::path::PathBuf> {
    let path = std::path::PathBuf::from(std::env::var_os("SQLD")?);
    path.exists().then_some(path)
}

/// Sends `sig` to a child process of this test (a node).
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: signalling a process this test started.
    let r = unsafe { conductor_e2e::libc::kill(pid as i32, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig})");
}

/// Requests each node has served on its data endpoints (pipelines and
/// cursors) so far, by its own counters (`/stats`).
pub fn node_requests(cluster: &Cluster) -> Vec<u64> {
    (0..cluster.node_count())
        .map(|i| {
            let (_, body) = cluster.node_get(i, "/stats").expect("node /stats");
            let v: conductor_e2e::serde_json::Value =
                conductor_e2e::serde_json::from_str(&body).expect("/stats JSON");
            [
                "/v2/pipeline",
                "/v3/pipeline",
                "/v3/cursor",
                "/v3-protobuf/pipeline",
                "/v3-protobuf/cursor",
            ]
            .iter()
            .map(|e| v["requests"][e].as_u64().unwrap_or(0))
            .sum::<u64>()
        })
        .collect()
}

/// Xorshift64* pseudo-random numbers for generated statements: a seed
/// replays the same run.
pub struct Rng(pub u64);

impl Rng {
    /// A generator from any seed (splitmix64-scrambled, never zero).
    pub fn new(seed: u64) -> Rng {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Rng(if z == 0 { 0x1234_5678 } else { z })
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// Inclusive range.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % ((hi - lo) as u64 + 1)) as i64
    }
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64) / ((1u64 << 53) as f64) < p
    }
    pub fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}
