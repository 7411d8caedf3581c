//! Aggregates, ORDER BY and LIMIT pushed to the shards (src/fdw/upper.rs):
//! results must be exactly Postgres'.
//!
//! `generated_queries_match_a_local_table`: the same seeded data in a
//! sharded foreign table (`t`, 8 shards on 3 nodes) and a local table
//! (`l_t`), and an empty pair (`e` / `l_e`); a table sharded by a key with
//! many rows per value (`o`, 40 keys, some groups whose sums pass 64 bits
//! and some with no boolean value) and its empty twin (`oe`), grouped by
//! that key so that every group lives on one shard; several hundred
//! generated queries (aggregates with and without FILTER, bool_and/bool_or
//! × GROUP BY × HAVING × ORDER BY, aggregates first × LIMIT/OFFSET, WHERE
//! clauses reaching one shard, some shards, all shards or none, every
//! supported type with NULLs, integers whose sums pass 64 bits, numerics
//! of up to 38 integer and 12 fraction digits with NaN and infinities
//! (through conductor-node's decimal aggregates), prepared
//! statements run with generic plans, `$n` in WHERE, FILTER, HAVING, LIMIT
//! and OFFSET) must return the same rows on both sides, or fail with the
//! same SQLSTATE; the pushed shapes they reach are counted (`FEATURES`) and
//! each must occur. Float data are dyadic (exact in
//! binary), so float sums do not depend on the order of additions and are
//! compared exactly too.
//!
//! `an_inheritance_parent_keeps_its_childrens_rows`: over a distributed
//! table that local tables inherit from, aggregates, ORDER BY/LIMIT and
//! joins count the children's rows (nothing is pushed above the Append);
//! with ONLY they are pushed.
//!
//! `pushdown_happens`: for queries that should push, EXPLAIN shows no
//! local Aggregate/Sort/Limit above the foreign scan and the remote SQL
//! carries the aggregates, ORDER BY and LIMIT; EXPLAIN ANALYZE shows each
//! shard returning one row per group it holds; conductor_explain shows the
//! same remote SQL; numeric aggregates are pushed while every node of the
//! table has the decimal aggregates and stay local when one lacks them;
//! and the time of count(*) over the table with and
//! without pushdown is printed.
//!
//! Environment: `CONDUCTOR_AGG_SEED`, `CONDUCTOR_AGG_QUERIES` (default 600),
//! `CONDUCTOR_AGG_VERBOSE=1`.

mod common;

use common::{exec, query_i64, Rng};
use conductor_e2e::postgres::{Client, SimpleQueryMessage};
use conductor_e2e::{Cluster, ClusterOptions};
use std::time::Instant;

const ROWS: i64 = 3000;

const COLUMNS: &str = "id bigint NOT NULL, g integer, i2 smallint, i4 integer, i8 bigint, \
     f4 real, f8 double precision, b boolean, s text, vc varchar(12), by bytea, u uuid, \
     d date, ts timestamp, tz timestamptz, n numeric, c char(3), j jsonb, m numeric";

const OCOLUMNS: &str = "k integer NOT NULL, id bigint NOT NULL, g integer, i4 integer, \
     i8 bigint, b boolean, s text, f8 double precision, d date, m numeric";

/// A numeric of up to 38 integer digits and up to 12 fraction digits,
/// either sign, as a literal. Its last fraction digit is never 0, so equal
/// values have equal text (Postgres' min/max of 1.0 and 1.00 depends on
/// the order it reads them).
fn decimal(rng: &mut Rng) -> String {
    let mut s = String::new();
    if rng.chance(0.5) {
        s.push('-');
    }
    if rng.chance(0.2) {
        let digits = 20 + rng.below(19);
        s.push_str(&(1 + rng.below(9)).to_string());
        for _ in 1..digits {
            s.push_str(&rng.below(10).to_string());
        }
    } else {
        s.push_str(&rng.below(100_000).to_string());
    }
    let scale = *rng.pick(&[0, 0, 1, 2, 2, 3, 6, 12]);
    if scale > 0 {
        s.push('.');
        for _ in 1..scale {
            s.push_str(&rng.below(10).to_string());
        }
        s.push_str(&(1 + rng.below(9)).to_string());
    }
    s
}

/// Rows of `o`: 40 keys with many rows each, extreme integers in some
/// groups so that a group's sum passes 64 bits, NULLs everywhere but the
/// key.
fn o_rows(rng: &mut Rng) -> Vec<String> {
    let mut rows = Vec::new();
    for id in 1..=1600i64 {
        let k = rng.below(40);
        let i8v = if k % 5 == 0 && rng.chance(0.6) {
            rng.pick(&[i64::MAX, i64::MAX - 1, i64::MIN, 1 << 62])
                .to_string()
        } else {
            (rng.below(2_000_001) as i64 - 1_000_000).to_string()
        };
        // Some groups with no true, no false or no value at all.
        let b = if k % 7 == 1 || rng.chance(0.12) {
            "NULL".to_string()
        } else if k % 7 == 2 {
            "true".to_string()
        } else {
            rng.chance(0.5).to_string()
        };
        let texts = ["a", "B", "b", "é", "Z", "ab", "", "zz"];
        let values = [
            rng.below(6).to_string(),
            (rng.below(2001) as i64 - 1000).to_string(),
            i8v,
            format!("'{}'", rng.pick(&texts)),
            format!("{}", (rng.below(8001) as f64 - 4000.0) / 8.0),
            format!("date '2024-01-01' + {}", rng.below(20) as i64 - 10),
        ];
        let mut row = vec![k.to_string(), id.to_string()];
        for v in values {
            row.push(if rng.chance(0.12) {
                "NULL".to_string()
            } else {
                v
            });
        }
        row.insert(5, b);
        row.push(if rng.chance(0.12) {
            "NULL".to_string()
        } else {
            decimal(rng)
        });
        rows.push(format!("({})", row.join(", ")));
    }
    rows
}

fn setup() -> (Cluster, Client, u64) {
    let seed = std::env::var("CONDUCTOR_AGG_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0xA66_2026_u64);
    eprintln!("CONDUCTOR_AGG_SEED={seed}");
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        ..Default::default()
    });
    exec(
        &mut db,
        &format!(
            "CREATE FOREIGN TABLE t ({COLUMNS}) SERVER cluster;
             SELECT conductor.create_distributed_table('t', 'id', shard_count => 8);
             CREATE FOREIGN TABLE e ({COLUMNS}) SERVER cluster;
             SELECT conductor.create_distributed_table('e', 'id', shard_count => 4);
             CREATE TABLE l_t ({COLUMNS});
             CREATE TABLE l_e ({COLUMNS});
             CREATE FOREIGN TABLE o ({OCOLUMNS}) SERVER cluster OPTIONS (primary_key 'k, id');
             SELECT conductor.create_distributed_table('o', 'k', shard_count => 6);
             CREATE FOREIGN TABLE oe ({OCOLUMNS}) SERVER cluster OPTIONS (primary_key 'k, id');
             SELECT conductor.create_distributed_table('oe', 'k', shard_count => 3);
             CREATE TABLE l_o ({OCOLUMNS});
             CREATE TABLE l_oe ({OCOLUMNS});"
        ),
    );
    let mut rng = Rng(seed | 1);
    let mut values = Vec::new();
    for id in 1..=ROWS {
        macro_rules! null {
            ($rng:expr, $v:expr $(,)?) => {{
                let v: String = $v;
                if rng.chance(0.12) {
                    "NULL".to_string()
                } else {
                    v
                }
            }};
        }
        let big = [
            i64::MAX,
            i64::MIN,
            i64::MAX - 7,
            i64::MIN + 3,
            1 << 62,
            -(1 << 62),
        ];
        let i8v = if rng.chance(0.3) {
            rng.pick(&big).to_string()
        } else {
            (rng.below(2_000_001) as i64 - 1_000_000).to_string()
        };
        let texts = ["a", "B", "b", "é", "Z", "ab", "", "zz", "a b", "ß"];
        let row = [
            id.to_string(),
            null!(rng, (rng.below(7) as i64).to_string()),
            null!(rng, (rng.below(65536) as i64 - 32768).to_string()),
            null!(
                rng,
                (rng.below(u32::MAX as u64 + 1) as i64 + i32::MIN as i64).to_string(),
            ),
            null!(rng, i8v),
            null!(rng, format!("{}", (rng.below(8001) as f64 - 4000.0) / 4.0)),
            null!(
                rng,
                format!("{}", (rng.below(80001) as f64 - 40000.0) / 8.0)
            ),
            null!(rng, rng.chance(0.5).to_string()),
            null!(rng, format!("'{}'", rng.pick(&texts))),
            null!(rng, format!("'{}{}'", rng.pick(&texts), rng.below(3))),
            null!(
                rng,
                format!("'\\x{:02x}{:02x}'::bytea", rng.below(4), rng.below(256))
            ),
            null!(
                rng,
                format!(
                    "'{:08x}-0000-4000-8000-{:012x}'",
                    rng.below(5),
                    rng.below(3)
                ),
            ),
            null!(
                rng,
                format!("date '2024-01-01' + {}", rng.below(20) as i64 - 10)
            ),
            null!(
                rng,
                format!(
                    "timestamp '2024-01-01' + interval '{} minutes'",
                    rng.below(50)
                ),
            ),
            null!(
                rng,
                format!(
                    "timestamptz '2024-01-01 00:00+00' + interval '{} hours'",
                    rng.below(30)
                ),
            ),
            // Numerics equal only when their text is (17.4 and 17.40 are one
            // group whose representative depends on scan order).
            null!(rng, format!("{}.{}", rng.below(100), 1 + rng.below(9))),
            null!(rng, format!("'{}'", rng.pick(&["x", "y ", "zz"]))),
            null!(rng, format!("'{{\"k\": {}}}'", rng.below(3))),
            // Infinities among the last 50 rows, NaN among the last 25
            // (the aggregates over m FILTER some of them out).
            null!(
                rng,
                if id > ROWS - 25 && rng.chance(0.4) {
                    "'NaN'".to_string()
                } else if id > ROWS - 50 && rng.chance(0.5) {
                    rng.pick(&["'Infinity'", "'-Infinity'"]).to_string()
                } else {
                    decimal(&mut rng)
                }
            ),
        ];
        values.push(format!("({})", row.join(", ")));
    }
    for chunk in values.chunks(500) {
        let v = chunk.join(",\n");
        exec(
            &mut db,
            &format!("INSERT INTO t VALUES {v}; INSERT INTO l_t VALUES {v};"),
        );
    }
    for chunk in o_rows(&mut rng).chunks(500) {
        let v = chunk.join(",\n");
        exec(
            &mut db,
            &format!("INSERT INTO o VALUES {v}; INSERT INTO l_o VALUES {v};"),
        );
    }
    (cluster, db, seed)
}

type Outcome = Result<Vec<String>, String>;

fn render(msgs: Vec<SimpleQueryMessage>) -> Vec<String> {
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("∅").to_string())
                    .collect::<Vec<_>>()
                    .join(" | "),
            ),
            _ => None,
        })
        .collect()
}

fn run(db: &mut Client, sql: &str) -> Outcome {
    db.simple_query(sql)
        .map(render)
        .map_err(|e| match e.as_db_error() {
            Some(d) => d.code().code().to_string(),
            None => e.to_string(),
        })
}

struct Query {
    sql: String,
    /// Compare in order (the ORDER BY is total).
    ordered: bool,
    /// Statements run before (PREPARE) and the statement producing rows.
    prepare: Option<(String, String)>,
}

/// Aggregates over the columns, with where each one is pushed.
const AGGS: &[&str] = &[
    "count(*)",
    "count(i4)",
    "count(n)",
    "count(j)",
    "sum(i2)",
    "sum(i4)",
    "sum(i8)",
    "avg(i2)",
    "avg(i4)",
    "avg(i8)",
    "sum(f8)",
    "avg(f8)",
    "avg(f4)",
    "sum(f4)",
    "min(i4)",
    "max(i8)",
    "min(f4)",
    "max(f8)",
    "min(s)",
    "max(s)",
    "min(vc)",
    "max(s COLLATE \"C\")",
    "min(d)",
    "max(ts)",
    "min(tz)",
    "max(n)",
    "count(DISTINCT g)",
    "sum(i4) FILTER (WHERE b)",
    "bool_and(b)",
    "bool_or(b)",
    "every(b)",
    "count(*) FILTER (WHERE g > 2)",
    "sum(i8) FILTER (WHERE b)",
    "bool_and(b) FILTER (WHERE i4 > 0)",
    "min(d) FILTER (WHERE s = 'a')",
    "avg(i2) FILTER (WHERE id IN (1, 2, 3, 500, 2999))",
    "max(f8) FILTER (WHERE g IS NULL OR NOT b)",
    "avg(i4) FILTER (WHERE id % 3 = 0)",
    "sum(n)",
    "avg(n)",
    "min(n)",
    "sum(m)",
    "avg(m)",
    "min(m)",
    "max(m)",
    "sum(m) FILTER (WHERE id <= 2950)",
    "avg(m) FILTER (WHERE id <= 2950)",
    "min(m) FILTER (WHERE id <= 2950)",
    "max(m) FILTER (WHERE id <= 2950)",
    "sum(m) FILTER (WHERE id <= 2975)",
    "avg(m) FILTER (WHERE id <= 2975)",
    "max(m) FILTER (WHERE id <= 2975)",
];

/// Aggregates over `o`, whose shard key `k` is in every grouping of the
/// queries over it: each group lives on one shard.
const OAGGS: &[&str] = &[
    "count(*)",
    "count(i4)",
    "sum(i8)",
    "sum(i4)",
    "avg(i4)",
    "min(i4)",
    "max(i8)",
    "max(d)",
    "min(f8)",
    "min(s COLLATE \"C\")",
    "max(s)",
    "bool_and(b)",
    "bool_or(b)",
    "every(b)",
    "count(*) FILTER (WHERE g > 2)",
    "sum(i8) FILTER (WHERE b)",
    "min(i4) FILTER (WHERE s = 'a')",
    "bool_or(b) FILTER (WHERE i4 < 0)",
    "count(*) FILTER (WHERE i8 IS NULL)",
    "max(i4) FILTER (WHERE id % 2 = 0)",
    "sum(m)",
    "avg(m)",
    "min(m)",
    "max(m) FILTER (WHERE b)",
];

const GROUPS: &[&str] = &[
    "", "", "g", "g", "b", "s", "id", "g, b", "d", "u", "vc", "by", "n", "c", "i8", "f4", "ts",
];

const WHERES: &[&str] = &[
    "",
    "",
    "",
    "WHERE id = 17",
    "WHERE id IN (1, 2, 3, 500, 2999)",
    "WHERE g > 2",
    "WHERE i4 < 0",
    "WHERE id = -1",
    "WHERE s = 'a'",
    "WHERE id % 3 = 0",
    "WHERE s LIKE 'a%'",
    "WHERE b",
    "WHERE f8 > 0.5",
];

fn gen(rng: &mut Rng, i: usize) -> Query {
    let table = if rng.chance(0.08) { "$E" } else { "$T" };
    let w = *rng.pick(WHERES);
    match i % 4 {
        // Groups that each live on one shard: HAVING, ORDER BY and LIMIT
        // may run on the shards.
        3 => {
            let table = if rng.chance(0.08) { "$OE" } else { "$O" };
            let w = *rng.pick(&[
                "",
                "",
                "WHERE k = 7",
                "WHERE k IN (1, 2, 30)",
                "WHERE g > 2",
                "WHERE k = -1",
                "WHERE b",
            ]);
            let group = *rng.pick(&["k", "k", "k, g", "g, k", "k, b"]);
            let n = 1 + rng.below(3) as usize;
            let mut aggs: Vec<&str> = (0..n).map(|_| *rng.pick(OAGGS)).collect();
            aggs.dedup();
            let sel = format!("{group}, {}", aggs.join(", "));
            let cols = sel.matches(", ").count() + 1;
            let mut sql = format!("SELECT {sel} FROM {table} {w} GROUP BY {group}");
            if rng.chance(0.4) {
                let h = *rng.pick(&[
                    "count(*) > 30",
                    "bool_or(b)",
                    "max(i8) IS NOT NULL",
                    "min(i4) < 0 AND count(i4) >= 20",
                    "sum(i4) > 0",
                    "count(*) FILTER (WHERE b) >= 12",
                    "max(s) <> 'a'",
                    "min(d) >= date '2024-01-01'",
                ]);
                sql.push_str(&format!(" HAVING {h}"));
            }
            let ordered = rng.chance(0.8);
            if ordered {
                // First an aggregate, then every column: a total order.
                let first =
                    cols - rng.below((cols - group.matches(", ").count() - 1) as u64) as usize;
                let dir = *rng.pick(&["", " DESC", " DESC NULLS LAST", " NULLS FIRST"]);
                let all: Vec<String> = (1..=cols).map(|c| c.to_string()).collect();
                sql.push_str(&format!(" ORDER BY {first}{dir}, {}", all.join(", ")));
            }
            match rng.below(4) {
                0 => {}
                1 => sql.push_str(&format!(" LIMIT {}", rng.below(12))),
                2 => sql.push_str(&format!(
                    " LIMIT {} OFFSET {}",
                    rng.below(12),
                    rng.below(20)
                )),
                _ => sql.push_str(&format!(" OFFSET {}", rng.below(40))),
            }
            if !ordered && (sql.contains(" LIMIT ") || sql.contains(" OFFSET ")) {
                // Which groups is unspecified, how many is not.
                sql = format!("SELECT count(*) FROM ({sql}) q");
            }
            Query {
                sql,
                ordered,
                prepare: None,
            }
        }
        // Aggregates.
        0 | 1 => {
            let group = *rng.pick(GROUPS);
            let n = 1 + rng.below(3) as usize;
            let mut aggs: Vec<&str> = (0..n).map(|_| *rng.pick(AGGS)).collect();
            aggs.dedup();
            let sel = if group.is_empty() {
                aggs.join(", ")
            } else {
                format!("{group}, {}", aggs.join(", "))
            };
            let mut sql = format!("SELECT {sel} FROM {table} {w}");
            if !group.is_empty() {
                sql.push_str(&format!(" GROUP BY {group}"));
            }
            if rng.chance(0.3) {
                let h = *rng.pick(&[
                    "count(*) > 1",
                    "sum(i4) > 0",
                    "max(i8) IS NOT NULL",
                    "avg(i2) < 10",
                    "min(s) <> 'a'",
                    "sum(m) FILTER (WHERE id <= 2950) > 0",
                ]);
                sql.push_str(&format!(" HAVING {h}"));
            }
            let cols = sel.matches(", ").count() + 1;
            let ordered = rng.chance(0.4);
            if ordered {
                // Any column first (an aggregate's, as in a top-N), then
                // every column: a total order.
                let first = 1 + rng.below(cols as u64);
                let dir = *rng.pick(&["", " DESC", " DESC NULLS LAST"]);
                let all: Vec<String> = (1..=cols).map(|c| c.to_string()).collect();
                sql.push_str(&format!(" ORDER BY {first}{dir}, {}", all.join(", ")));
                if rng.chance(0.6) {
                    sql.push_str(&format!(" LIMIT {}", rng.below(5)));
                    if rng.chance(0.5) {
                        sql.push_str(&format!(" OFFSET {}", rng.below(3)));
                    }
                }
            }
            Query {
                sql,
                ordered,
                prepare: None,
            }
        }
        // ORDER BY / LIMIT / OFFSET over rows.
        _ => {
            let key = *rng.pick(&[
                "id",
                "g",
                "i2",
                "i4",
                "i8",
                "f4",
                "f8",
                "b",
                "s",
                "vc",
                "by",
                "u",
                "d",
                "ts",
                "tz",
                "n",
                "c",
                "s COLLATE \"C\"",
            ]);
            let dir = *rng.pick(&["", " DESC", " ASC", " NULLS FIRST", " DESC NULLS LAST"]);
            let sel = *rng.pick(&["id, g, s", "*", "id, i8 % 1000 + 1, f8", "id, u, d, ts"]);
            let order = if key == "id" {
                format!("ORDER BY id{dir}")
            } else {
                format!("ORDER BY {key}{dir}, id")
            };
            let limit = match rng.below(6) {
                0 => String::new(),
                1 => format!(" LIMIT {}", rng.below(40)),
                2 => format!(" LIMIT {} OFFSET {}", rng.below(40), rng.below(40)),
                3 => format!(" OFFSET {}", rng.below(3000)),
                4 => " LIMIT ALL OFFSET 2".to_string(),
                _ => format!(" LIMIT {}", 1 + rng.below(3)),
            };
            match rng.below(5) {
                // LIMIT without ORDER BY: which rows is unspecified, how many is not.
                0 => Query {
                    sql: format!(
                        "SELECT count(*), count(DISTINCT id) FROM (SELECT {sel} FROM {table} {w} LIMIT {} OFFSET {}) q",
                        rng.below(50),
                        rng.below(50)
                    ),
                    ordered: false,
                    prepare: None,
                },
                // Generic plans: LIMIT/OFFSET and a WHERE value as parameters.
                1 => {
                    let sql = format!(
                        "SELECT {sel} FROM {table} WHERE g <> $3 {order} LIMIT $1 OFFSET $2"
                    );
                    let args = format!(
                        "{}, {}, {}",
                        rng.pick(&["0", "1", "5", "NULL", "30"]),
                        rng.pick(&["0", "NULL", "4"]),
                        rng.below(7)
                    );
                    Query {
                        sql: sql.clone(),
                        ordered: true,
                        prepare: Some((sql, args)),
                    }
                }
                2 if rng.chance(0.5) => {
                    let sql = format!(
                        "SELECT g, count(*), sum(i8), avg(i4), min(s), max(d) FROM {table} WHERE id > $1 GROUP BY g ORDER BY 1, 2, 3, 4, 5, 6 LIMIT $2"
                    );
                    let args = format!("{}, {}", rng.below(3000), rng.below(9));
                    Query {
                        sql: sql.clone(),
                        ordered: true,
                        prepare: Some((sql, args)),
                    }
                }
                // Generic plans over groups that each live on one shard: $n
                // in FILTER, HAVING, LIMIT and OFFSET.
                2 => {
                    let o = if table == "$E" { "$OE" } else { "$O" };
                    let sql = format!(
                        "SELECT k, count(*) FILTER (WHERE i4 > $3), sum(i8) FILTER (WHERE g <> $3), bool_or(b) FROM {o} WHERE id > $3 * 20 GROUP BY k HAVING count(i4) >= $3 ORDER BY 2 DESC, 1 LIMIT $1 OFFSET $2"
                    );
                    let args = format!(
                        "{}, {}, {}",
                        rng.pick(&["0", "1", "5", "NULL", "30"]),
                        rng.pick(&["0", "NULL", "4"]),
                        rng.below(40)
                    );
                    Query {
                        sql: sql.clone(),
                        ordered: true,
                        prepare: Some((sql, args)),
                    }
                }
                _ => Query {
                    sql: format!("SELECT {sel} FROM {table} {w} {order}{limit}"),
                    ordered: true,
                    prepare: None,
                },
            }
        }
    }
}

fn run_query(db: &mut Client, q: &Query, local: bool, tag: usize) -> (String, Outcome) {
    let (t, e, o, oe) = if local {
        ("l_t", "l_e", "l_o", "l_oe")
    } else {
        ("t", "e", "o", "oe")
    };
    let fix = |s: &str| {
        s.replace("$T", t)
            .replace("$E", e)
            .replace("$OE", oe)
            .replace("$O", o)
    };
    match &q.prepare {
        None => {
            let sql = fix(&q.sql);
            let out = run(db, &sql);
            (sql, out)
        }
        Some((body, args)) => {
            let name = format!("p{tag}{}", if local { "l" } else { "s" });
            let body = fix(body);
            let types = if body.contains("$3") {
                "bigint, bigint, int"
            } else {
                "bigint, bigint"
            };
            exec(db, "SET plan_cache_mode = force_generic_plan");
            exec(db, &format!("PREPARE {name}({types}) AS {body}"));
            let sql = format!("EXECUTE {name}({args})");
            let out = run(db, &sql);
            exec(db, &format!("DEALLOCATE {name}; RESET plan_cache_mode"));
            (format!("{body} -- {sql}"), out)
        }
    }
}

/// Pushed shapes the generated queries must reach (EXPLAIN VERBOSE text).
const FEATURES: &[&str] = &[
    ") FILTER (WHERE ",
    "min(\"t_0000\".\"b\")",
    "router combines the partial aggregates",
    "router concatenates the groups",
    "router merges the shards' sorted groups",
    "HAVING (per shard)",
    ") AS \"grouped\" WHERE",
    "LIMIT (count + offset per shard); router merges the shards' sorted groups",
    "in Postgres: ORDER BY/LIMIT, after the merge",
    "conductor_decimal_sum(\"t_0000\".\"m\") FILTER (WHERE ",
    "conductor_decimal_max(\"o_0000\".\"m\")",
];

#[test]
fn generated_queries_match_a_local_table() {
    let (_cluster, mut db, seed) = setup();
    let n: usize = std::env::var("CONDUCTOR_AGG_QUERIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let verbose = std::env::var("CONDUCTOR_AGG_VERBOSE").is_ok();
    let mut rng = Rng(seed.wrapping_mul(31) | 1);
    let mut mismatches = 0;
    let mut pushed = 0;
    let mut errors = 0;
    let mut features = [0; FEATURES.len()];
    for i in 0..n {
        let q = gen(&mut rng, i);
        let (lsql, local) = run_query(&mut db, &q, true, i);
        let (ssql, sharded) = run_query(&mut db, &q, false, i);
        let same = match (&local, &sharded) {
            (Ok(l), Ok(s)) if q.ordered => l == s,
            (Ok(l), Ok(s)) => {
                let (mut l, mut s) = (l.clone(), s.clone());
                l.sort();
                s.sort();
                l == s
            }
            (Err(l), Err(s)) => {
                errors += 1;
                l == s
            }
            _ => false,
        };
        if q.prepare.is_none() {
            let plan = run(&mut db, &format!("EXPLAIN (VERBOSE) {ssql}")).unwrap_or_default();
            if plan.iter().any(|l| l.contains("Pushed:")) {
                pushed += 1;
            }
            let text = plan.join("\n");
            for (i, what) in FEATURES.iter().enumerate() {
                if text.contains(what) {
                    features[i] += 1;
                }
            }
        }
        if verbose {
            eprintln!("[{i}] {ssql} -> {sharded:?}");
        }
        if !same {
            mismatches += 1;
            let first_diff = match (&local, &sharded) {
                (Ok(l), Ok(s)) => {
                    let (mut l, mut s) = (l.clone(), s.clone());
                    if !q.ordered {
                        l.sort();
                        s.sort();
                    }
                    let at = (0..l.len().max(s.len()))
                        .find(|&k| l.get(k) != s.get(k))
                        .unwrap_or(0);
                    format!(
                        "{} local rows, {} sharded rows; first difference at row {at}: local {:?} sharded {:?}",
                        l.len(),
                        s.len(),
                        l.get(at),
                        s.get(at)
                    )
                }
                _ => format!("local {local:?}\n  sharded {sharded:?}"),
            };
            eprintln!(
                "MISMATCH [{i}] seed {seed}\n  local:   {lsql}\n  sharded: {ssql}\n  {first_diff}"
            );
        }
    }
    eprintln!(
        "{n} queries, {pushed} with an upper path pushed, {errors} failing alike on both sides, {mismatches} mismatches"
    );
    for (what, count) in FEATURES.iter().zip(features) {
        eprintln!("  {count} plans with {what:?}");
    }
    assert_eq!(
        mismatches, 0,
        "{mismatches} of {n} queries differ (seed {seed})"
    );
    for (what, count) in FEATURES.iter().zip(features) {
        assert!(count > 0, "no generated plan has {what:?}");
    }
    assert!(
        pushed > n / 4,
        "only {pushed} of {n} queries pushed anything"
    );
}

fn plan(db: &mut Client, sql: &str) -> Vec<String> {
    run(db, &format!("EXPLAIN (VERBOSE, COSTS OFF) {sql}")).unwrap()
}

/// Plan nodes (lines with "->" or the first line), trimmed.
fn plan_nodes(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .enumerate()
        .filter(|(i, l)| *i == 0 || l.trim_start().starts_with("->"))
        .map(|(_, l)| l.trim_start().trim_start_matches("->").trim().to_string())
        .collect()
}

fn assert_pushed(db: &mut Client, sql: &str, remote: &[&str]) -> Vec<String> {
    let lines = plan(db, sql);
    let nodes = plan_nodes(&lines);
    assert!(
        nodes.len() == 1 && nodes[0].starts_with("Foreign Scan"),
        "{sql}: expected one foreign scan and nothing above it:\n{}",
        lines.join("\n")
    );
    let text = lines.join("\n");
    for r in remote {
        assert!(text.contains(r), "{sql}: remote SQL lacks {r}:\n{text}");
    }
    lines
}

fn assert_local(db: &mut Client, sql: &str, node: &str) {
    let lines = plan(db, sql);
    let nodes = plan_nodes(&lines);
    assert!(
        nodes.iter().any(|n| n.contains(node)),
        "{sql}: expected a local {node}:\n{}",
        lines.join("\n")
    );
}

#[test]
fn pushdown_happens() {
    let (_cluster, mut db, _) = setup();
    // Aggregates, with and without GROUP BY.
    assert_pushed(
        &mut db,
        "SELECT count(*) FROM t",
        &["SELECT count(*) FROM \"t_0000\"", "Pushed: count(*);"],
    );
    assert_pushed(
        &mut db,
        "SELECT g, count(*), sum(i8), avg(i4), min(s), max(ts) FROM t WHERE b GROUP BY g",
        &[
            "sum(\"t_0000\".\"i8\" >> 32), sum(\"t_0000\".\"i8\" & 4294967295)",
            "GROUP BY \"t_0000\".\"g\"",
            "router combines the partial aggregates of each group",
        ],
    );
    assert_pushed(
        &mut db,
        "SELECT id, sum(i4) FROM t GROUP BY id HAVING sum(i4) > 0",
        &["router concatenates the groups", "Filter: ("],
    );
    // Integer sums past 64 bits, exact (SQLite's own sum() would raise).
    assert_pushed(
        &mut db,
        "SELECT sum(i8), avg(i8) FROM t",
        &["sum(\"t_0000\".\"i8\" >> 32)"],
    );
    let sharded = run(&mut db, "SELECT sum(i8), avg(i8) FROM t").unwrap();
    let local = run(&mut db, "SELECT sum(i8), avg(i8) FROM l_t").unwrap();
    assert_eq!(sharded, local);
    let sum: i128 = sharded[0].split(" | ").next().unwrap().parse().unwrap();
    assert!(
        sum.abs() > i64::MAX as i128,
        "sum {sum} should pass 64 bits"
    );
    // ORDER BY (no Sort), LIMIT/OFFSET (no Limit), LIMIT alone.
    assert_pushed(
        &mut db,
        "SELECT id, s FROM t ORDER BY s DESC, id",
        &["ORDER BY \"t_0000\".\"s\" DESC NULLS FIRST, \"t_0000\".\"id\" NULLS LAST"],
    );
    assert_pushed(
        &mut db,
        "SELECT id, f8 FROM t WHERE g = 3 ORDER BY f8 NULLS FIRST, id LIMIT 5 OFFSET 2",
        &["NULLS FIRST", "LIMIT ?", "then OFFSET/LIMIT"],
    );
    assert_pushed(&mut db, "SELECT * FROM t LIMIT 3", &["LIMIT ?"]);
    // In a transaction that wrote to the nodes, pushed queries read
    // through its remote transactions and see the writes.
    exec(
        &mut db,
        "BEGIN; INSERT INTO t (id, g, i8) VALUES (100000, 3, 5), (100001, NULL, -5);",
    );
    assert_eq!(
        run(&mut db, "SELECT count(*), max(id) FROM t").unwrap(),
        vec![format!("{} | 100001", ROWS + 2)]
    );
    assert_eq!(
        run(
            &mut db,
            "SELECT id FROM t ORDER BY id DESC LIMIT 2 OFFSET 1"
        )
        .unwrap(),
        vec!["100000".to_string(), ROWS.to_string()]
    );
    exec(&mut db, "ROLLBACK");
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM t"), ROWS);
    // Negative LIMIT/OFFSET fail as in Postgres.
    for (sql, code) in [
        ("SELECT id FROM t ORDER BY id LIMIT -1", "2201W"),
        ("SELECT id FROM t LIMIT 1 OFFSET -1", "2201X"),
    ] {
        assert_eq!(run(&mut db, sql), Err(code.to_string()), "{sql}");
    }
    // numeric: the nodes' exact decimal aggregates, merged exactly.
    let numeric =
        "SELECT g, sum(m), avg(m), min(m), max(m) FILTER (WHERE id <= 2950) FROM t GROUP BY g";
    assert_pushed(
        &mut db,
        numeric,
        &[
            "conductor_decimal_sum(\"t_0000\".\"m\"), count(\"t_0000\".\"m\")",
            "conductor_decimal_min(\"t_0000\".\"m\")",
            "conductor_decimal_max(\"t_0000\".\"m\") FILTER (WHERE \"t_0000\".\"id\" <= ?)",
            "Pushed: sum(m), avg(m), min(m), max(m) FILTER (WHERE …)",
        ],
    );
    let explained = run(
        &mut db,
        &format!("SELECT remote_sql FROM conductor_explain($${numeric}$$)"),
    )
    .unwrap();
    let verbose = plan(&mut db, numeric).join("\n");
    assert_eq!(explained.len(), 8, "{explained:?}");
    for remote in &explained {
        assert!(remote.contains("conductor_decimal_sum("), "{remote}");
    }
    let first = explained.iter().find(|r| r.contains("\"t_0000\"")).unwrap();
    assert!(
        verbose.contains(first.as_str()),
        "{first} not in\n{verbose}"
    );
    assert_eq!(
        run(
            &mut db,
            "SELECT count(*) FILTER (WHERE decimal_aggregates) FROM conductor.nodes"
        )
        .unwrap(),
        vec!["3".to_string()]
    );
    // One node without them keeps the table's numeric aggregates local;
    // update_node asks the node again.
    exec(
        &mut db,
        "UPDATE conductor.node SET decimal_aggregates = false WHERE node_id = 'node-1'",
    );
    let text = plan(&mut db, numeric).join("\n");
    assert!(
        text.contains("Not pushed: aggregates: sum(numeric) needs conductor-node's decimal aggregates, which a node of the table lacks")
            && !text.contains("conductor_decimal"),
        "{text}"
    );
    assert_eq!(
        run(&mut db, &format!("{numeric} ORDER BY 1")).unwrap(),
        run(
            &mut db,
            &format!("{} ORDER BY 1", numeric.replace(" t ", " l_t "))
        )
        .unwrap()
    );
    exec(
        &mut db,
        "SELECT conductor.update_node('cluster', 'node-1', (SELECT url FROM conductor.nodes WHERE node_id = 'node-1'))",
    );
    assert!(plan(&mut db, numeric)
        .join("\n")
        .contains("conductor_decimal_sum("));
    // The rows with infinities and NaN, alone and with finite values.
    let mut specials = std::collections::BTreeSet::new();
    for w in ["id > 2950", "id > 2950 AND id <= 2975", "id > 2900"] {
        let sql = format!(
            "SELECT g, sum(m), avg(m), min(m), max(m) FROM t WHERE {w} GROUP BY g ORDER BY 1"
        );
        let text = plan(&mut db, &sql).join("\n");
        assert!(text.contains("conductor_decimal_min("), "{text}");
        let sharded = run(&mut db, &sql).unwrap();
        assert_eq!(
            sharded,
            run(&mut db, &sql.replace(" t ", " l_t ")).unwrap(),
            "{sql}"
        );
        specials.extend(
            sharded
                .iter()
                .flat_map(|r| r.split(" | ").map(str::to_string)),
        );
    }
    for v in ["NaN", "Infinity", "-Infinity"] {
        assert!(specials.contains(v), "no {v} in {specials:?}");
    }
    let sum = "SELECT sum(m) FILTER (WHERE id <= 2950), sum(n), avg(n) FROM t";
    let sharded = run(&mut db, sum).unwrap();
    assert_eq!(sharded, run(&mut db, &sum.replace(" t", " l_t")).unwrap());
    assert!(
        sharded[0].split(" | ").next().unwrap().len() > 30,
        "{sharded:?}"
    );
    // What stays local.
    assert_local(
        &mut db,
        "SELECT count(*) FROM t WHERE id % 2 = 0",
        "Aggregate",
    );
    assert_local(&mut db, "SELECT sum(f4) FROM t", "Aggregate");
    assert_local(&mut db, "SELECT count(DISTINCT g) FROM t", "Aggregate");
    assert_local(&mut db, "SELECT id FROM t ORDER BY n LIMIT 3", "Limit");
    assert_local(
        &mut db,
        "SELECT id FROM t ORDER BY s COLLATE \"POSIX\" || 'x'",
        "Sort",
    );
    assert_local(
        &mut db,
        "SELECT c, count(*) FROM t GROUP BY c",
        "HashAggregate",
    );

    // The base scan's EXPLAIN says what stays in Postgres and why.
    for (sql, why) in [
        (
            "SELECT sum(f4) FROM t",
            "Not pushed: aggregates: sum(real) has no exact form on the nodes",
        ),
        (
            "SELECT count(*) FROM t WHERE id % 2 = 0",
            "Not pushed: aggregates, ORDER BY and LIMIT: a WHERE clause stays in Postgres and must run first",
        ),
        (
            "SELECT count(*) FILTER (WHERE id % 2 = 0) FROM t",
            "count() with FILTER has no exact form on the nodes",
        ),
        (
            "SELECT id FROM t ORDER BY n LIMIT 3",
            "Not pushed: ORDER BY: a key that is not a plain column the nodes sort as Postgres does",
        ),
        (
            "SELECT c, count(*) FROM t GROUP BY c",
            "Not pushed: aggregates: GROUP BY c (the nodes do not group its values as Postgres does)",
        ),
    ] {
        let text = plan(&mut db, sql).join("\n");
        assert!(text.contains(why), "{sql}:\n{text}");
    }
    // A generic plan: $n in FILTER, HAVING, LIMIT and OFFSET go to the shards.
    exec(
        &mut db,
        "SET plan_cache_mode = force_generic_plan;
         PREPARE top(bigint, bigint, int) AS SELECT k, count(*) FILTER (WHERE i4 > $3), bool_or(b) FROM o GROUP BY k HAVING count(i4) >= $3 ORDER BY 2 DESC, 1 LIMIT $1 OFFSET $2;
         PREPARE ltop(bigint, bigint, int) AS SELECT k, count(*) FILTER (WHERE i4 > $3), bool_or(b) FROM l_o GROUP BY k HAVING count(i4) >= $3 ORDER BY 2 DESC, 1 LIMIT $1 OFFSET $2;",
    );
    assert_pushed(
        &mut db,
        "EXECUTE top(3, 1, 20)",
        &[
            "count(*) FILTER (WHERE \"o_0000\".\"i4\" > ?)",
            "WHERE \"grouped\".\"c3\" >= ?",
            "ORDER BY 2 DESC NULLS FIRST, 1 NULLS LAST LIMIT ?",
        ],
    );
    for args in ["3, 1, 20", "0, 0, 0", "NULL, 2, 5", "100, 0, 41"] {
        assert_eq!(
            run(&mut db, &format!("EXECUTE top({args})")).unwrap(),
            run(&mut db, &format!("EXECUTE ltop({args})")).unwrap(),
            "{args}"
        );
    }
    // Over plain rows too: a generic plan's LIMIT $1 (unordered or under a
    // pushed ORDER BY) goes to the shards, as a constant one does.
    exec(
        &mut db,
        "PREPARE first(bigint, bigint) AS SELECT id, i4 FROM t ORDER BY id LIMIT $1 OFFSET $2;
         PREPARE lfirst(bigint, bigint) AS SELECT id, i4 FROM l_t ORDER BY id LIMIT $1 OFFSET $2;
         PREPARE anyrows(bigint) AS SELECT id FROM t LIMIT $1;",
    );
    assert_pushed(
        &mut db,
        "EXECUTE first(3, 1)",
        &["ORDER BY \"t_0000\".\"id\" NULLS LAST LIMIT ?"],
    );
    assert_pushed(&mut db, "EXECUTE anyrows(3)", &["FROM \"t_0000\" LIMIT ?"]);
    for args in ["3, 1", "0, 0", "NULL, 2", "5, NULL", "100, 0"] {
        assert_eq!(
            run(&mut db, &format!("EXECUTE first({args})")).unwrap(),
            run(&mut db, &format!("EXECUTE lfirst({args})")).unwrap(),
            "{args}"
        );
    }
    assert_eq!(run(&mut db, "EXECUTE anyrows(4)").unwrap().len(), 4);
    exec(
        &mut db,
        "DEALLOCATE top; DEALLOCATE ltop; DEALLOCATE first; DEALLOCATE lfirst; \
         DEALLOCATE anyrows; RESET plan_cache_mode",
    );
    // FILTER (by the WHERE rules) and the bool aggregates.
    assert_pushed(
        &mut db,
        "SELECT g, count(*) FILTER (WHERE i4 > 0), bool_and(b), every(b), bool_or(b) FILTER (WHERE s = 'a') FROM t GROUP BY g",
        &[
            "count(*) FILTER (WHERE \"t_0000\".\"i4\" > ?)",
            "min(\"t_0000\".\"b\")",
            "max(\"t_0000\".\"b\") FILTER (WHERE \"t_0000\".\"s\" = ?)",
        ],
    );
    assert_local(
        &mut db,
        "SELECT count(*) FILTER (WHERE id % 2 = 0) FROM t",
        "Aggregate",
    );
    // Groups that each live on one shard: HAVING, ORDER BY and LIMIT run
    // on the shards, the router merges the sorted groups.
    let top = "SELECT k, count(*) FROM o GROUP BY k HAVING count(*) > 30 ORDER BY count(*) DESC, k LIMIT 5";
    assert_pushed(
        &mut db,
        top,
        &[
            "SELECT * FROM (SELECT \"o_0000\".\"k\" AS c0, count(*) AS c1 FROM \"o_0000\" GROUP BY \"o_0000\".\"k\") AS \"grouped\" WHERE \"grouped\".\"c1\" > ? ORDER BY 2 DESC NULLS FIRST, 1 NULLS LAST LIMIT ?",
            "router merges the shards' sorted groups",
        ],
    );
    assert_eq!(
        run(&mut db, top).unwrap(),
        run(&mut db, &top.replace(" o ", " l_o ")).unwrap()
    );
    let explained = run(
        &mut db,
        &format!("SELECT remote_sql, reason FROM conductor_explain($${top}$$)"),
    )
    .unwrap();
    assert_eq!(explained.len(), 6, "{explained:?}");
    for row in &explained {
        assert!(
            row.contains(") AS \"grouped\" WHERE")
                && row.contains("LIMIT ?")
                && row.contains("router merges the shards' sorted groups"),
            "{row}"
        );
    }
    let lines = run(
        &mut db,
        &format!("EXPLAIN (ANALYZE, VERBOSE, COSTS OFF, TIMING OFF) {top}"),
    )
    .unwrap();
    for l in lines.iter().filter(|l| l.contains("Shard:")) {
        let r: i64 = l
            .split("rows=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(r <= 5, "{l}");
    }
    // A HAVING the shards cannot evaluate keeps LIMIT here; ORDER BY still
    // goes to the shards.
    assert_local(
        &mut db,
        "SELECT k, sum(i4) FROM o GROUP BY k HAVING sum(i4) > 0 ORDER BY count(*) DESC, k LIMIT 5",
        "Limit",
    );
    // Groups spanning shards: the merge runs first, ORDER BY/LIMIT above
    // it in Postgres, and EXPLAIN says why.
    let text = plan(
        &mut db,
        "SELECT g, count(*) FROM t GROUP BY g ORDER BY count(*) DESC LIMIT 3",
    )
    .join("\n");
    assert!(
        text.contains("in Postgres: ORDER BY/LIMIT, after the merge (a group's rows span shards)"),
        "{text}"
    );

    // One row per shard per group: each shard returns the groups it holds.
    exec(&mut db, "SET conductor.on_shard_failure = error");
    let want = query_i64(
        &mut db,
        "SELECT count(*) FROM (SELECT DISTINCT conductor.shard_for('t', id), g FROM l_t) s",
    );
    let lines = run(
        &mut db,
        "EXPLAIN (ANALYZE, VERBOSE, COSTS OFF, TIMING OFF) SELECT g, count(*) FROM t GROUP BY g",
    )
    .unwrap();
    let shard_rows: i64 = lines
        .iter()
        .filter_map(|l| l.split("rows=").nth(1).filter(|_| l.contains("Shard:")))
        .map(|r| r.split_whitespace().next().unwrap().parse::<i64>().unwrap())
        .sum();
    let shard_lines = lines.iter().filter(|l| l.contains("Shard:")).count();
    assert_eq!(shard_lines, 8, "{}", lines.join("\n"));
    assert_eq!(shard_rows, want, "{}", lines.join("\n"));
    // LIMIT: each shard returns at most count + offset rows.
    let lines = run(
        &mut db,
        "EXPLAIN (ANALYZE, VERBOSE, COSTS OFF, TIMING OFF) SELECT id FROM t ORDER BY i8 DESC, id LIMIT 4 OFFSET 3",
    )
    .unwrap();
    for l in lines.iter().filter(|l| l.contains("Shard:")) {
        let r: i64 = l
            .split("rows=")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(r <= 7, "{l}");
    }
    // conductor_explain shows the same remote SQL.
    let sql = "SELECT g, count(*), avg(i2) FROM t WHERE id IN (1, 2, 3) GROUP BY g";
    let explained = run(
        &mut db,
        &format!("SELECT remote_sql, reason FROM conductor_explain($${sql}$$)"),
    )
    .unwrap();
    let verbose = plan(&mut db, sql).join("\n");
    assert!(!explained.is_empty());
    for row in &explained {
        let remote = row.split(" | ").next().unwrap();
        assert!(
            remote.contains("count(*)") && remote.contains("GROUP BY"),
            "{row}"
        );
        assert!(row.contains("router combines"), "{row}");
    }
    let first = explained[0].split(" | ").next().unwrap();
    assert!(verbose.contains(first), "{first} not in\n{verbose}");

    // count(*) latency, pushed vs fetching every row (OFFSET 0 keeps the
    // subquery, so the count runs in Postgres over all rows).
    let time = |db: &mut Client, sql: &str| {
        let _ = query_i64(db, sql);
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            assert_eq!(query_i64(db, sql), ROWS);
            best = best.min(t.elapsed().as_secs_f64() * 1000.0);
        }
        best
    };
    let pushed = time(&mut db, "SELECT count(*) FROM t");
    let local = time(
        &mut db,
        "SELECT count(*) FROM (SELECT id FROM t OFFSET 0) s",
    );
    eprintln!(
        "count(*) over {ROWS} rows, 8 shards: pushed {pushed:.2} ms, fetching rows {local:.2} ms"
    );
}

/// A column read as another type by a binary-compatible cast sorts and
/// groups as that type: text and varchar read as bpchar (`t::bpchar`)
/// without trailing spaces (`'abc'` and `'abc '` are one group, `'a '`
/// sorts before `'a\t'`), an integer read as oid unsigned (-1 after 5).
/// Such an expression is not its column, so grouping, sorting and min/max
/// of it stay in Postgres and give a local table's answers.
#[test]
fn columns_read_as_another_type_group_and_sort_as_that_type() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    let columns = "id bigint, t text, v varchar(10), g integer, i integer";
    exec(
        &mut db,
        &format!(
            "CREATE TABLE l_bp ({columns});
             CREATE FOREIGN TABLE bp ({columns}) SERVER cluster;
             SELECT conductor.create_distributed_table('bp', 'id', shard_count => 4);
             INSERT INTO l_bp VALUES (1, 'abc', 'abc', 1, 5), (2, 'abc ', 'abc ', 1, -1),
               (3, 'a ', 'a ', 2, 0), (4, E'a\t', E'a\t', 2, -2147483648), (5, 'a', 'a', 2, 7),
               (6, 'b  ', 'b  ', 3, 2147483647), (7, NULL, NULL, 3, NULL);
             INSERT INTO bp SELECT * FROM l_bp;"
        ),
    );
    let statements = [
        // Equal values differ in their trailing spaces: which one stands
        // for the group (or is the max) is not fixed, so they are shown
        // as text, which drops the spaces.
        "SELECT min(id), count(*) FROM {bp} GROUP BY t::bpchar ORDER BY 1",
        "SELECT min(id), count(*) FROM {bp} GROUP BY v::bpchar ORDER BY 1",
        "SELECT g, max(t::bpchar)::text, min(v::bpchar)::text FROM {bp} GROUP BY g ORDER BY g",
        "SELECT max(t::bpchar)::text, min(t::bpchar)::text FROM {bp}",
        "SELECT id, t FROM {bp} ORDER BY t::bpchar, id",
        "SELECT id, t FROM {bp} ORDER BY t::bpchar, id LIMIT 3",
        "SELECT id, v FROM {bp} ORDER BY v::bpchar DESC, id LIMIT 3",
        "SELECT id, count(*) FROM {bp} GROUP BY id HAVING max(t::bpchar) = 'abc' ORDER BY id",
        "SELECT id FROM {bp} WHERE t::bpchar = 'abc' ORDER BY id",
        "SELECT id, i FROM {bp} ORDER BY i::oid LIMIT 4",
        "SELECT id, i FROM {bp} ORDER BY i::oid DESC NULLS LAST LIMIT 4",
    ];
    let mut mismatches = Vec::new();
    for sql in statements {
        let local = run(&mut db, &sql.replace("{bp}", "l_bp"));
        let dist = run(&mut db, &sql.replace("{bp}", "bp"));
        if local != dist {
            mismatches.push(format!("{sql}\n  local: {local:?}\n  conductor: {dist:?}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// A distributed table that local tables inherit from: read without ONLY,
/// its rows are its shards' and its children's (an Append), so neither the
/// aggregates, ORDER BY and LIMIT above it nor a join of it may run on the
/// shards alone; with ONLY they still do.
#[test]
fn an_inheritance_parent_keeps_its_childrens_rows() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    let columns = "id bigint NOT NULL, g integer, s text";
    exec(
        &mut db,
        &format!(
            "CREATE FOREIGN TABLE ip ({columns}) SERVER cluster;
             SELECT conductor.create_distributed_table('ip', 'id', shard_count => 4);
             CREATE FOREIGN TABLE ip2 (id bigint NOT NULL, x integer) SERVER cluster;
             SELECT conductor.create_distributed_table('ip2', 'id', colocate_with => 'ip');
             CREATE FOREIGN TABLE ipref (g integer NOT NULL, name text) SERVER cluster;
             SELECT conductor.create_reference_table('ipref');
             CREATE TABLE l_ip ({columns});
             CREATE TABLE l_ip2 (id bigint NOT NULL, x integer);
             CREATE TABLE l_ipref (g integer NOT NULL, name text);
             INSERT INTO l_ip SELECT i, i % 3, 's' || i FROM generate_series(1, 40) i;
             INSERT INTO l_ip2 SELECT i, i * 10 FROM generate_series(1, 40) i;
             INSERT INTO l_ipref SELECT i, 'g' || i FROM generate_series(0, 2) i;
             INSERT INTO ip SELECT * FROM l_ip;
             INSERT INTO ip2 SELECT * FROM l_ip2;
             INSERT INTO ipref SELECT * FROM l_ipref;
             CREATE TABLE ip_child (extra integer) INHERITS (ip);
             CREATE TABLE l_ip_child (extra integer) INHERITS (l_ip);
             INSERT INTO ip_child VALUES (100, 1, 'child', 0), (101, 2, 'zz', 0);
             INSERT INTO l_ip_child VALUES (100, 1, 'child', 0), (101, 2, 'zz', 0);"
        ),
    );
    let statements = [
        "SELECT count(*), sum(g), max(s) FROM {ip}",
        "SELECT g, count(*) FROM {ip} GROUP BY g ORDER BY g",
        "SELECT id, count(*) FROM {ip} GROUP BY id HAVING count(*) > 0 ORDER BY id DESC LIMIT 3",
        "SELECT id FROM {ip} ORDER BY id DESC LIMIT 3",
        "SELECT s FROM {ip} ORDER BY s DESC",
        "SELECT count(*) FROM (SELECT id FROM {ip} LIMIT 100) sub",
        "SELECT a.id, r.name FROM {ip} a JOIN {ipref} r ON a.g = r.g ORDER BY a.id",
        "SELECT a.id, b.x FROM {ip} a LEFT JOIN {ip2} b ON a.id = b.id ORDER BY a.id",
        "SELECT count(*), count(b.x) FROM {ip} a LEFT JOIN {ip2} b ON a.id = b.id",
        "SELECT count(*), max(s) FROM ONLY {ip}",
        "SELECT id FROM ONLY {ip} ORDER BY id DESC LIMIT 3",
    ];
    let mut mismatches = Vec::new();
    for sql in statements {
        let local = run(
            &mut db,
            &sql.replace("{ip}", "l_ip")
                .replace("{ip2}", "l_ip2")
                .replace("{ipref}", "l_ipref"),
        );
        let dist = run(
            &mut db,
            &sql.replace("{ip}", "ip")
                .replace("{ip2}", "ip2")
                .replace("{ipref}", "ipref"),
        );
        if local != dist {
            mismatches.push(format!("{sql}\n  local: {local:?}\n  conductor: {dist:?}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    // Without the children the table is read as before: with ONLY, and
    // once its last child is dropped (while pg_class still says it has
    // some, until an ANALYZE).
    assert_pushed(
        &mut db,
        "SELECT count(*), max(s) FROM ONLY ip",
        &["count(*)"],
    );
    assert_pushed(
        &mut db,
        "SELECT id FROM ONLY ip ORDER BY id DESC LIMIT 3",
        &["LIMIT ?"],
    );
    exec(&mut db, "DROP TABLE ip_child");
    assert_pushed(&mut db, "SELECT count(*), max(s) FROM ip", &["count(*)"]);
    assert_pushed(
        &mut db,
        "SELECT id FROM ip ORDER BY id DESC LIMIT 3",
        &["LIMIT ?"],
    );
    assert_eq!(
        run(
            &mut db,
            "SELECT count(*) FROM ip a JOIN ip2 b ON a.id = b.id"
        ),
        Ok(vec!["40".to_string()])
    );
}

/// A quick measurement, not a check: `CONDUCTOR_AGG_BENCH_ROWS` rows
/// (default 100000) in 16 shards on 3 nodes; best of 5 of count(*), a
/// grouped aggregate and ORDER BY … LIMIT 10, pushed and not pushed (the
/// same query over `OFFSET 0` subquery, which keeps the rows coming to
/// Postgres).
#[test]
#[ignore]
fn latency_before_and_after() {
    let rows: i64 = std::env::var("CONDUCTOR_AGG_BENCH_ROWS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        ..Default::default()
    });
    exec(
        &mut db,
        &format!(
            "CREATE FOREIGN TABLE big (id bigint NOT NULL, g int, v bigint) SERVER cluster;
             SELECT conductor.create_distributed_table('big', 'id', shard_count => 16);
             INSERT INTO big SELECT i, i % 10, i * 7919 FROM generate_series(1, {rows}) i;"
        ),
    );
    let mut time = |sql: &str| {
        let _ = run(&mut db, sql).unwrap();
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            run(&mut db, sql).unwrap();
            best = best.min(t.elapsed().as_secs_f64() * 1000.0);
        }
        best
    };
    for (what, pushed, local) in [
        (
            "count(*)",
            "SELECT count(*) FROM big",
            "SELECT count(*) FROM (SELECT id FROM big OFFSET 0) s",
        ),
        (
            "GROUP BY g: count, sum, avg",
            "SELECT g, count(*), sum(v), avg(v) FROM big GROUP BY g",
            "SELECT g, count(*), sum(v), avg(v) FROM (SELECT g, v FROM big OFFSET 0) s GROUP BY g",
        ),
        (
            "ORDER BY v DESC LIMIT 10",
            "SELECT id, v FROM big ORDER BY v DESC LIMIT 10",
            "SELECT * FROM (SELECT id, v FROM big OFFSET 0) s ORDER BY v DESC LIMIT 10",
        ),
    ] {
        let p = time(pushed);
        let l = time(local);
        eprintln!("{what} over {rows} rows, 16 shards: pushed {p:.1} ms, not pushed {l:.1} ms");
    }
}
