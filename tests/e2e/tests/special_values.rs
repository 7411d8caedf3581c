//! NaN, ±Infinity and -0 in real and double precision columns, ±infinity
//! in timestamp, timestamptz and date columns, next to NULLs and ordinary
//! values: stored (INSERT and COPY), filtered (=, <>, <, <=, >, >=, IN, IS
//! NULL, NOT, with constants and with parameters), sorted (ASC/DESC, NULLS
//! FIRST/LAST, with LIMIT), aggregated (count, min, max, sum, avg, GROUP BY)
//! and modified (UPDATE, DELETE, RETURNING) through a 1-shard and a
//! 16-shard table, always with the answer of the same rows in a local
//! table. On each wire encoding: the JSON one has no form for a float
//! infinity, so there an infinity is refused on write, naming the column,
//! and a stored one cannot be read (an error saying so); everything else
//! behaves the same. None of these types can be a shard key (the shard key
//! here is id).

mod common;

use common::{describe, exec, expect_db_error, query_i64};
use conductor_e2e::postgres::{Client, SimpleQueryMessage};
use conductor_e2e::{pg_err, Cluster, ClusterOptions};
use std::io::{Read, Write};
use std::path::PathBuf;

/// Values of each column (SQL literals without quotes, None is NULL).
struct Values {
    f8: Vec<Option<&'static str>>,
    f4: Vec<Option<&'static str>>,
    ts: Vec<Option<&'static str>>,
    tz: Vec<Option<&'static str>>,
    d: Vec<Option<&'static str>>,
}

fn values(with_float_infinities: bool) -> Values {
    let keep =
        |v: &Option<&str>| with_float_infinities || !v.is_some_and(|s| s.contains("Infinity"));
    // Finite float values are small binary fractions: every sum of them is
    // exact, so a sum in another order (the shards') is the same number.
    let f8 = [
        Some("NaN"),
        Some("Infinity"),
        Some("-Infinity"),
        Some("-0"),
        Some("0"),
        Some("1.5"),
        Some("-2.25"),
        Some("3"),
        Some("1024"),
        None,
    ];
    let f4 = [
        Some("NaN"),
        Some("Infinity"),
        Some("-Infinity"),
        Some("-0"),
        Some("0"),
        Some("0.5"),
        Some("-8"),
        Some("7"),
        None,
    ];
    Values {
        f8: f8.into_iter().filter(keep).collect(),
        f4: f4.into_iter().filter(keep).collect(),
        ts: vec![
            Some("infinity"),
            Some("-infinity"),
            Some("2000-01-01 00:00:00"),
            Some("1999-12-31 23:59:59.999999"),
            Some("2024-02-29 12:34:56.5"),
            Some("1900-06-01 00:00:00"),
            None,
        ],
        tz: vec![
            Some("infinity"),
            Some("-infinity"),
            Some("2000-01-01 00:00:00+00"),
            Some("2024-02-29 12:34:56.5+05:30"),
            Some("1969-07-20 20:17:40+00"),
            None,
        ],
        d: vec![
            Some("infinity"),
            Some("-infinity"),
            Some("2000-01-01"),
            Some("1999-12-31"),
            Some("2024-02-29"),
            None,
        ],
    }
}

const ROWS: usize = 60;
const COLUMNS: &str =
    "id bigint, k int, f8 double precision, f4 real, ts timestamp, tz timestamptz, d date";

fn lit(v: Option<&str>) -> String {
    match v {
        Some(s) => format!("'{s}'"),
        None => "NULL".into(),
    }
}

/// Creates the local table `<local>` and the distributed `<d1>` (one
/// shard, filled by INSERT … SELECT) and `<d16>` (16 shards, filled by COPY).
fn create(db: &mut Client, tables: [&str; 3], v: &Values) {
    let [l, d1, d16] = tables;
    exec(
        db,
        &format!(
            "CREATE TABLE {l} ({COLUMNS});
             CREATE FOREIGN TABLE {d1} ({COLUMNS}) SERVER cluster;
             SELECT conductor.create_distributed_table('{d1}', 'id', shard_count => 1);
             CREATE FOREIGN TABLE {d16} ({COLUMNS}) SERVER cluster;
             SELECT conductor.create_distributed_table('{d16}', 'id', shard_count => 16);"
        ),
    );
    let rows: Vec<String> = (1..=ROWS)
        .map(|g| {
            let pick = |vals: &[Option<&str>], i: usize| lit(vals[i % vals.len()]);
            format!(
                "({g}, {}, {}, {}, {}, {}, {})",
                g % 5,
                pick(&v.f8, g),
                pick(&v.f4, g),
                pick(&v.ts, g),
                pick(&v.tz, g),
                pick(&v.d, g / 2)
            )
        })
        .collect();
    exec(db, &format!("INSERT INTO {l} VALUES {}", rows.join(", ")));
    exec(db, &format!("INSERT INTO {d1} SELECT * FROM {l}"));
    let mut text = Vec::new();
    db.copy_out(&format!("COPY {l} TO STDOUT"))
        .expect("copy out")
        .read_to_end(&mut text)
        .expect("copy out");
    let mut w = db
        .copy_in(&format!("COPY {d16} FROM STDIN"))
        .expect("copy in");
    w.write_all(&text).unwrap();
    w.finish()
        .unwrap_or_else(|e| panic!("COPY {d16}: {}", pg_err(&e)));
}

type Rows = Vec<Vec<Option<String>>>;

fn rows(db: &mut Client, sql: &str) -> Result<Rows, String> {
    let msgs = db.simple_query(sql).map_err(|e| pg_err(&e))?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect())
}

/// `sql` with `{T}` standing for each table of `tables`: the same rows
/// (in the same order when it has ORDER BY), or the same SQLSTATE.
fn same(db: &mut Client, tables: [&str; 3], sql: &str) -> usize {
    same_as(db, tables, sql, false)
}

/// [`same`] for queries of sums: a float sum of negative zeros only is -0
/// in Postgres and 0 through conductor (the one known difference; no
/// other column of these queries can be -0), so "-0" reads as "0".
fn same_sums(db: &mut Client, tables: [&str; 3], sql: &str) -> usize {
    same_as(db, tables, sql, true)
}

fn same_as(db: &mut Client, tables: [&str; 3], sql: &str, zero_sign: bool) -> usize {
    let results: Vec<Result<Rows, String>> = tables
        .iter()
        .map(|t| rows(db, &sql.replace("{T}", t)))
        .map(|r| {
            r.map(|rows| {
                rows.into_iter()
                    .map(|row| {
                        row.into_iter()
                            .map(|c| {
                                c.map(|c| {
                                    if zero_sign && c == "-0" {
                                        "0".into()
                                    } else {
                                        c
                                    }
                                })
                            })
                            .collect()
                    })
                    .collect()
            })
        })
        .collect();
    let ordered = sql.contains("ORDER BY");
    let norm = |r: &Result<Rows, String>| match r {
        Ok(rows) => {
            let mut rows = rows.clone();
            if !ordered {
                rows.sort();
            }
            Ok(rows)
        }
        Err(e) => Err(e.split(':').next().unwrap_or("").to_string()),
    };
    let want = norm(&results[0]);
    for (t, r) in tables.iter().zip(&results).skip(1) {
        assert_eq!(
            norm(r),
            want,
            "{sql}\n  on {t}: {r:?}\n  local: {:?}",
            results[0]
        );
    }
    results[0].as_ref().map(Vec::len).unwrap_or(0)
}

/// Both tables' rows in id order, as text.
fn contents_agree(db: &mut Client, tables: [&str; 3], what: &str) {
    let sql = "SELECT * FROM {T} ORDER BY id";
    let want = rows(db, &sql.replace("{T}", tables[0])).unwrap();
    for t in &tables[1..] {
        let got = rows(db, &sql.replace("{T}", t)).unwrap_or_else(|e| panic!("{what}: {t}: {e}"));
        assert_eq!(got, want, "{what}: contents of {t}");
    }
}

/// The read differential over the three tables. `light`: a subset (fewer
/// columns, operators and variants), for nodes slow to serve thousands of
/// statements.
fn reads(db: &mut Client, tables: [&str; 3], v: &Values, light: bool) {
    contents_agree(db, tables, "round trip");
    // Binary results too: the raw IEEE bits (the sign of -0, NaN).
    let bits = |db: &mut Client, t: &str| -> Vec<(i64, Option<u64>, Option<u32>)> {
        db.query(&format!("SELECT id, f8, f4 FROM {t} ORDER BY id"), &[])
            .unwrap_or_else(|e| panic!("{t}: {}", pg_err(&e)))
            .iter()
            .map(|r| {
                let a: Option<f64> = r.get(1);
                let b: Option<f32> = r.get(2);
                (r.get(0), a.map(f64::to_bits), b.map(f32::to_bits))
            })
            .collect()
    };
    let want = bits(db, tables[0]);
    for t in &tables[1..] {
        assert_eq!(bits(db, t), want, "float bits of {t}");
    }

    let columns: [(&str, &[Option<&str>]); 5] = [
        ("f8", &v.f8),
        ("f4", &v.f4),
        ("ts", &v.ts),
        ("tz", &v.tz),
        ("d", &v.d),
    ];
    let mut matched = 0;
    let ops: &[&str] = if light {
        &["=", ">"]
    } else {
        &["=", "<>", "<", "<=", ">", ">="]
    };
    let full = !light;
    for (col, vals) in columns {
        if light && !matches!(col, "f8" | "tz") {
            continue;
        }
        let lits: Vec<&str> = vals.iter().flatten().copied().collect();
        for x in &lits {
            for op in ops {
                matched += same(
                    db,
                    tables,
                    &format!("SELECT id FROM {{T}} WHERE {col} {op} '{x}'"),
                );
            }
            if light {
                continue;
            }
            same(
                db,
                tables,
                &format!("SELECT id FROM {{T}} WHERE NOT ({col} < '{x}')"),
            );
            same(
                db,
                tables,
                &format!("SELECT id FROM {{T}} WHERE '{x}' >= {col} AND k <> 2"),
            );
        }
        for pair in lits.windows(2).take(if light { 1 } else { usize::MAX }) {
            same(
                db,
                tables,
                &format!(
                    "SELECT id FROM {{T}} WHERE {col} IN ('{}', '{}')",
                    pair[0], pair[1]
                ),
            );
            same(
                db,
                tables,
                &format!(
                    "SELECT id FROM {{T}} WHERE {col} NOT IN ('{}', '{}', NULL) OR k = 0",
                    pair[0], pair[1]
                ),
            );
        }
        same(
            db,
            tables,
            &format!("SELECT id FROM {{T}} WHERE {col} IS NULL"),
        );
        same(
            db,
            tables,
            &format!("SELECT id FROM {{T}} WHERE {col} IS NOT NULL"),
        );
        for dir in ["ASC", "DESC"] {
            for nulls in ["NULLS FIRST", "NULLS LAST"] {
                same(
                    db,
                    tables,
                    &format!("SELECT id, {col} FROM {{T}} ORDER BY {col} {dir} {nulls}, id"),
                );
                if full {
                    same(
                        db,
                        tables,
                        &format!(
                            "SELECT id, {col} FROM {{T}} ORDER BY {col} {dir} {nulls}, id LIMIT 7"
                        ),
                    );
                }
            }
        }
        same(
            db,
            tables,
            &format!("SELECT id, {col} FROM {{T}} ORDER BY {col}, id"),
        );
        same(
            db,
            tables,
            &format!("SELECT id, {col} FROM {{T}} ORDER BY {col} DESC, id"),
        );
        // -0 and 0 are never both the extreme of one of these sets.
        let filters = [
            "true".to_string(),
            format!("{col} < '{}'", lits[0]),
            format!("{col} <> '{}'", lits[0]),
            format!("{col} > '{}'", lits[lits.len() - 1]),
        ];
        for filter in filters.iter().take(if light { 2 } else { 4 }) {
            same(
                db,
                tables,
                &format!(
                    "SELECT count(*), count({col}), min({col}), max({col}) FROM {{T}} WHERE {filter}"
                ),
            );
            same(
                db,
                tables,
                &format!(
                    "SELECT k, count({col}), min({col}), max({col}) FROM {{T}} WHERE {filter} GROUP BY k"
                ),
            );
        }
        same(
            db,
            tables,
            &format!("SELECT count(*), min(id), max(id) FROM {{T}} GROUP BY {col}"),
        );
        same(
            db,
            tables,
            &format!("SELECT count(DISTINCT {col}) FROM {{T}}"),
        );
    }
    assert!(matched > 0, "the comparisons matched rows");

    // Sums and averages: NaN makes NaN, Infinity + -Infinity makes NaN, one
    // infinity wins over finite values (see `same_sums` for the sign of a
    // sum of negative zeros).
    let sum_filters = [
        "true",
        "f8 <> 'NaN'",
        "f8 < 'Infinity'",
        "f8 > '-Infinity'",
        "f8 > '-Infinity' AND f8 < 'Infinity'",
        "f8 IN ('Infinity', '1.5', '3')",
        "f8 IN ('Infinity', '-Infinity')",
        "f8 = '-Infinity' OR f8 = '1024'",
        "f4 <> 'NaN'",
        "f4 < 'Infinity'",
        "f4 > '-Infinity' AND f4 < 'NaN'",
        "f4 = 'Infinity' OR f4 = '7'",
        "f8 IS NULL",
        "false",
    ];
    for filter in sum_filters.iter().take(if light { 6 } else { usize::MAX }) {
        same_sums(
            db,
            tables,
            &format!("SELECT sum(f8), avg(f8), avg(f4), count(f8) FROM {{T}} WHERE {filter}"),
        );
        same_sums(
            db,
            tables,
            &format!("SELECT k, sum(f8), avg(f8), avg(f4) FROM {{T}} WHERE {filter} GROUP BY k"),
        );
        // sum(real) is Postgres' own (it sums in single precision).
        same(
            db,
            tables,
            &format!("SELECT sum(f4) FROM {{T}} WHERE {filter}"),
        );
    }
    same_sums(
        db,
        tables,
        "SELECT d, sum(f8), avg(f4), min(ts), max(tz) FROM {T} GROUP BY d",
    );

    // Values known only at run time (parameters of a prepared statement,
    // arrays), and a float4 column against a float8 value.
    let specials = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.0, 1.5];
    for x in specials {
        for op in ops {
            let per: Vec<Vec<i64>> = tables
                .iter()
                .map(|t| {
                    let mut ids: Vec<i64> = db
                        .query(&format!("SELECT id FROM {t} WHERE f8 {op} $1"), &[&x])
                        .unwrap_or_else(|e| panic!("{t} f8 {op} {x}: {}", pg_err(&e)))
                        .iter()
                        .map(|r| r.get(0))
                        .collect();
                    ids.sort();
                    ids
                })
                .collect();
            assert!(per.iter().all(|p| *p == per[0]), "f8 {op} ${x}: {per:?}");
        }
        let list = vec![x, 3.0];
        let per: Vec<Vec<i64>> = tables
            .iter()
            .map(|t| {
                let mut ids: Vec<i64> = db
                    .query(
                        &format!("SELECT id FROM {t} WHERE f8 = ANY($1) OR f4 = ANY($1::real[])"),
                        &[&list],
                    )
                    .unwrap_or_else(|e| panic!("{t} = ANY({list:?}): {}", pg_err(&e)))
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                ids.sort();
                ids
            })
            .collect();
        assert!(per.iter().all(|p| *p == per[0]), "= ANY({list:?}): {per:?}");
    }
    for x in ["NaN", "-Infinity", "7"] {
        same(
            db,
            tables,
            &format!("SELECT id FROM {{T}} WHERE f4 < '{x}'::float8"),
        );
        same(
            db,
            tables,
            &format!("SELECT id FROM {{T}} WHERE f4 = '{x}'::float8"),
        );
    }
    same(
        db,
        tables,
        "SELECT id FROM {T} WHERE ts = 'infinity'::timestamp OR d < '-infinity'::date + 1 OR tz > now()",
    );
}

/// The same modifications on the three tables; their contents must agree
/// after each. `with_float_infinities`: statements that write a float
/// infinity are included.
fn writes(db: &mut Client, tables: [&str; 3], with_float_infinities: bool) {
    let mut statements = vec![
        "UPDATE {T} SET f4 = 'NaN' WHERE f8 = 'NaN' AND k = 3",
        "UPDATE {T} SET d = '-infinity', ts = 'infinity' WHERE f8 = '-0'",
        "UPDATE {T} SET f8 = f8 * 2 WHERE f4 = '-8'",
        "UPDATE {T} SET tz = 'infinity' WHERE d = '-infinity' RETURNING id, tz, d",
        "DELETE FROM {T} WHERE ts = 'infinity' AND f4 = 'NaN'",
        "DELETE FROM {T} WHERE f8 = 'NaN' AND k = 4 RETURNING id, f8, f4",
        "DELETE FROM {T} WHERE d = 'infinity' AND f8 > 1",
        "INSERT INTO {T} VALUES (1000, 1, 'NaN', '-0', '-infinity', 'infinity', '-infinity') RETURNING *",
        "UPDATE {T} SET f8 = 'NaN'::float8 + k WHERE tz IS NULL RETURNING id, f8",
    ];
    if with_float_infinities {
        statements.extend([
            "UPDATE {T} SET f4 = '-Infinity' WHERE f8 = 'Infinity' RETURNING id, f4",
            "UPDATE {T} SET f8 = '-Infinity', d = 'infinity' WHERE f8 = 'NaN' AND k = 1",
            "UPDATE {T} SET f8 = f8 - 'Infinity' WHERE f4 = 'Infinity'",
            "DELETE FROM {T} WHERE f8 = '-Infinity' AND k = 2 RETURNING id",
            "DELETE FROM {T} WHERE f4 IN ('Infinity', '-Infinity') AND k = 0",
            "INSERT INTO {T} VALUES (1001, 2, 'Infinity', '-Infinity', 'infinity', '-infinity', 'infinity')",
        ]);
    }
    for sql in statements {
        same(db, tables, sql);
        contents_agree(db, tables, sql);
    }
}

/// A new session speaking `encoding` to the nodes (read once per session,
/// so set before the first statement that talks to a node).
fn session(cluster: &Cluster, encoding: &str) -> Client {
    let mut db = cluster.client();
    exec(
        &mut db,
        &format!("SET conductor.wire_encoding = '{encoding}'"),
    );
    db
}

/// The Remote SQL lines of `EXPLAIN (VERBOSE)`.
fn remote_sql(db: &mut Client, sql: &str) -> String {
    rows(db, &format!("EXPLAIN (VERBOSE, COSTS OFF) {sql}"))
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|l| l.contains("Remote SQL"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn differential(cluster: &Cluster) {
    // Protobuf (auto picks it where the node serves it): everything.
    let mut db = session(cluster, "auto");
    let full = values(true);
    let t = ["l_auto", "d1_auto", "d16_auto"];
    create(&mut db, t, &full);
    // What the differential exercises is the nodes' work, not Postgres'
    // local fallback: comparisons with NaN and finite values, sorts and
    // aggregates of float and timestamp columns are pushed.
    for (sql, want) in [
        ("SELECT id FROM d16_auto WHERE f8 = 'NaN'", "WHERE"),
        (
            "SELECT id FROM d16_auto WHERE f4 < 'NaN' AND f8 >= '-0'",
            "WHERE",
        ),
        (
            "SELECT id FROM d16_auto WHERE ts = 'infinity' OR d < '-infinity'",
            "WHERE",
        ),
        (
            "SELECT id, f8 FROM d16_auto ORDER BY f8 DESC NULLS LAST, id LIMIT 3",
            "ORDER BY",
        ),
        (
            "SELECT sum(f8), avg(f4), min(tz), max(f8) FROM d16_auto",
            "max(",
        ),
        ("SELECT k, avg(f8) FROM d16_auto GROUP BY k", "GROUP BY"),
    ] {
        let remote = remote_sql(&mut db, sql);
        assert!(remote.contains(want), "{sql}: {remote}");
    }
    // A comparison with an infinity goes too, written without it.
    let remote = remote_sql(&mut db, "SELECT id FROM d16_auto WHERE f8 < 'Infinity'");
    assert!(remote.contains("WHERE"), "{remote}");
    reads(&mut db, t, &full, false);
    writes(&mut db, t, true);
    reads(&mut db, t, &full, false);

    let mut db = session(cluster, "protobuf");
    let t = ["l_pb", "d1_pb", "d16_pb"];
    create(&mut db, t, &full);
    reads(&mut db, t, &full, false);
    writes(&mut db, t, true);
}

#[test]
fn special_values_agree_with_a_local_table() {
    let (cluster, _db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    differential(&cluster);
}

/// A float avg keeps the sum of squared deviations beside the sum
/// (float8_accum) and fails when it overflows from finite values far apart,
/// even when their sum and average are finite: pushed to the shards, it
/// fails the same way.
#[test]
fn float_avg_of_values_far_apart_overflows_as_in_postgres() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE TABLE l (id bigint, g int, x double precision);
         CREATE FOREIGN TABLE d (id bigint, g int, x double precision) SERVER cluster;
         SELECT conductor.create_distributed_table('d', 'id', shard_count => 4);
         INSERT INTO l VALUES (1, 1, 1e300), (2, 1, 0), (3, 2, 1e154), (4, 2, 0),
                              (5, 3, 1e200), (6, 3, 1e200);
         INSERT INTO d SELECT * FROM l;",
    );
    for sql in [
        "SELECT avg(x) FROM {T} WHERE g = 1",
        "SELECT g, avg(x) FROM {T} GROUP BY g",
    ] {
        for t in ["l", "d"] {
            let q = sql.replace("{T}", t);
            let e = expect_db_error(db.query(&q, &[]), &q);
            assert_eq!(e.code().code(), "22003", "{q}: {}", describe(&e));
        }
    }
    for sql in [
        "SELECT avg(x) FROM {T} WHERE g = 2",
        "SELECT avg(x), sum(x) FROM {T} WHERE g = 3",
        "SELECT g, avg(x) FROM {T} WHERE g > 1 GROUP BY g ORDER BY g",
        "SELECT sum(x) FROM {T}",
    ] {
        let [local, distributed] = ["l", "d"].map(|t| {
            rows(&mut db, &sql.replace("{T}", t)).unwrap_or_else(|e| panic!("{sql} on {t}: {e}"))
        });
        assert_eq!(distributed, local, "{sql}");
    }
}

#[test]
fn json_encoding_refuses_float_infinities_and_agrees_otherwise() {
    let (cluster, mut setup) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    // A table holding infinities, written over Protobuf.
    exec(
        &mut setup,
        "CREATE FOREIGN TABLE inf (id bigint, f8 double precision, f4 real) SERVER cluster;
         SELECT conductor.create_distributed_table('inf', 'id', shard_count => 4);
         INSERT INTO inf VALUES (1, 'Infinity', 1), (2, 2, '-Infinity'), (3, 'NaN', 'NaN');",
    );

    let mut db = session(&cluster, "json");
    let finite = values(false);
    let t = ["l_json", "d1_json", "d16_json"];
    create(&mut db, t, &finite);
    reads(&mut db, t, &finite, false);
    writes(&mut db, t, false);

    // Writing a float infinity: refused before anything is sent, naming
    // the column and the reason; nothing of the statement is written.
    let before = query_i64(&mut db, "SELECT count(*) FROM d16_json");
    for (col, sql) in [
        (
            "f8",
            "INSERT INTO d16_json (id, f8) VALUES (2000, 1), (2001, 'Infinity'), (2002, 2)",
        ),
        (
            "f4",
            "INSERT INTO d16_json (id, f4) VALUES (2003, '-Infinity')",
        ),
        ("f8", "UPDATE d16_json SET f8 = '-Infinity' WHERE id = 1"),
        (
            "f4",
            "UPDATE d16_json SET f4 = f4 + 'Infinity' WHERE id < 10",
        ),
    ] {
        let e = expect_db_error(db.execute(sql, &[]), sql);
        assert_eq!(e.code().code(), "22003", "{sql}: {}", describe(&e));
        assert!(
            e.message().contains(&format!("\"{col}\"")) && e.message().contains("JSON"),
            "{sql}: {}",
            describe(&e)
        );
    }
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM d16_json"), before);
    contents_agree(&mut db, t, "after the refused writes");

    // Reading a stored infinity over JSON: an error that says why, and the
    // session goes on. NaN and finite values read fine.
    for sql in ["SELECT * FROM inf", "SELECT max(f8) FROM inf"] {
        let e = expect_db_error(db.query(sql, &[]), sql);
        assert!(e.message().contains("JSON"), "{sql}: {}", describe(&e));
    }
    let nan: f64 = db
        .query_one("SELECT f8 FROM inf WHERE id = 3", &[])
        .unwrap_or_else(|e| panic!("{}", pg_err(&e)))
        .get(0);
    assert!(nan.is_nan());
    assert_eq!(
        query_i64(&mut db, "SELECT count(*) FROM inf WHERE f8 = 'NaN'"),
        1
    );
}

#[test]
fn sqld_nodes_store_special_values_too() {
    let Some(sqld) = std::env::var_os("SQLD")
        .map(PathBuf::from)
        .filter(|p| p.exists())
    else {
        println!("SKIPPED: set SQLD=/path/to/sqld to run against real libSQL servers");
        return;
    };
    let cluster = Cluster::start_sqld(2, &sqld);
    let mut db = cluster.client();
    cluster.setup_conductor(&mut db, "cluster");
    let mut db = session(&cluster, "auto");
    let full = values(true);
    let t = ["l_sqld", "d1_sqld", "d16_sqld"];
    create(&mut db, t, &full);
    reads(&mut db, t, &full, true);
    writes(&mut db, t, true);

    // sqld writes a float infinity in JSON as a float without a value: an
    // error that says so, and NaN reads fine.
    let mut db = session(&cluster, "json");
    let e = expect_db_error(
        db.query("SELECT * FROM d16_sqld", &[]),
        "infinity over JSON",
    );
    assert!(describe(&e).contains("JSON"), "{}", describe(&e));
    same(
        &mut db,
        t,
        "SELECT id, f8, ts, tz, d FROM {T} WHERE f8 = 'NaN'",
    );
}
