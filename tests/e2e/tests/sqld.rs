//! Real libSQL servers (sqld) as the nodes: the same statements over a
//! local table and over a distributed table on two sqld nodes agree —
//! reads (100,000-row scans read row by row, pushdown), writes with
//! RETURNING, COPY (and a COPY that fails), transactions, reads inside them
//! and rollbacks, constraint violations, schema changes, long values,
//! numeric aggregates (local: sqld lacks conductor-node's decimal
//! aggregates) — and a killed sqld is a clear error naming it (more faults in
//! `sqld_faults.rs`).
//!
//! Runs when `SQLD` names a sqld binary (`make test` passes it when one is
//! installed); otherwise it says so and checks nothing.

mod common;

use common::{exec, sqld_bin};
use conductor_e2e::postgres::{Client, SimpleQueryMessage};
use conductor_e2e::{pg_err, Cluster};
use std::io::Write;

fn rows(db: &mut Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
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

/// Run `sql` (with `T` standing for the table) on the local table and on
/// the distributed one: same rows, or both fail with the same SQLSTATE class.
fn same(db: &mut Client, sql: &str) {
    let local = rows(db, &sql.replace("{T}", "l"));
    let dist = rows(db, &sql.replace("{T}", "d"));
    match (&local, &dist) {
        (Ok(a), Ok(b)) => {
            let (mut a, mut b) = (a.clone(), b.clone());
            if !sql.contains("ORDER BY") {
                a.sort();
                b.sort();
            }
            assert_eq!(a, b, "{sql}");
        }
        (Err(a), Err(b)) => {
            // "ERROR 23505: …": the same SQLSTATE on both.
            let code = |e: &str| e.split(':').next().unwrap_or("").to_string();
            assert_eq!(code(a), code(b), "{sql}\n  local: {a}\n  sqld: {b}");
        }
        _ => panic!("{sql}: local {local:?}, distributed {dist:?}"),
    }
}

#[test]
fn sqld_nodes_answer_like_a_local_table() {
    let Some(sqld) = sqld_bin() else {
        println!(
            "SKIPPED: set SQLD=/path/to/sqld to run conductor against real libSQL servers (see the README)"
        );
        return;
    };
    let mut cluster = Cluster::start_sqld(2, &sqld);
    let mut db = cluster.client();
    cluster.setup_conductor(&mut db, "cluster");
    let version = cluster
        .node_get(0, "/version")
        .map(|(_, v)| v)
        .unwrap_or_default();
    println!("sqld version: {}", version.trim());
    exec(
        &mut db,
        "CREATE TABLE l (id bigint PRIMARY KEY, v text, n int, f float8, b bytea, ts timestamp);
         CREATE FOREIGN TABLE d (id bigint NOT NULL, v text, n int, f float8, b bytea, ts timestamp) SERVER cluster;
         SELECT conductor.create_distributed_table('d', 'id', shard_count => 8);
         CREATE TABLE lc (id bigint PRIMARY KEY, v text NOT NULL);
         CREATE FOREIGN TABLE dc (id bigint NOT NULL, v text NOT NULL) SERVER cluster;
         SELECT conductor.create_distributed_table('dc', 'id', shard_count => 4);",
    );
    // Constraint violations the shards report (sqld names the kind only in
    // its message).
    for sql in [
        "INSERT INTO {T}c VALUES (1, 'a'), (2, 'b')",
        "INSERT INTO {T}c VALUES (3, NULL)",
        "UPDATE {T}c SET v = NULL WHERE id = 1",
        "INSERT INTO {T}c VALUES (2, 'again')",
        "SELECT id, v FROM {T}c",
    ] {
        same(&mut db, sql);
    }
    // Schema changes reach the shards on sqld as on conductor-node.
    for clause in [
        "ADD COLUMN n int DEFAULT 7",
        "RENAME COLUMN v TO w",
        "ALTER COLUMN n SET NOT NULL",
        "ALTER COLUMN n TYPE bigint",
        "DROP COLUMN n",
        "ADD COLUMN t timestamp",
    ] {
        exec(&mut db, &format!("ALTER TABLE lc {clause}"));
        exec(&mut db, &format!("ALTER FOREIGN TABLE dc {clause}"));
        same(&mut db, "SELECT * FROM {T}c");
    }
    for sql in [
        "INSERT INTO {T}c VALUES (5, 'x', '2024-05-01 12:00') RETURNING *",
        "UPDATE {T}c SET w = w || '!' WHERE id < 5 RETURNING *",
        "SELECT * FROM {T}c WHERE w LIKE '%!' ORDER BY id",
    ] {
        same(&mut db, sql);
    }
    // Writes of every kind, on both.
    for sql in [
        "INSERT INTO {T} VALUES (1, 'a', 1, 1.5, '\\x00ff', '2024-01-01 10:00'), (2, NULL, NULL, NULL, NULL, NULL)",
        "INSERT INTO {T} SELECT i, 'v' || i, i % 100, i / 7.0, decode(md5(i::text), 'hex'), timestamp '2024-01-01' + i * interval '1 minute' FROM generate_series(3, 100000) i",
        "INSERT INTO {T} VALUES (100001, 'r', 5, 0, NULL, NULL) RETURNING id, v, n",
        "UPDATE {T} SET v = v || '!' WHERE id % 1000 = 0 RETURNING id, v",
        "UPDATE {T} SET n = n + 1 WHERE id BETWEEN 10 AND 20",
        // computed on the node, out of range refused as Postgres does
        "UPDATE {T} SET v = '<' || v WHERE id % 1000 = 1",
        "UPDATE {T} SET n = n + 2147483600 WHERE id BETWEEN 30 AND 300",
        "DELETE FROM {T} WHERE id % 777 = 0 RETURNING id",
        "DELETE FROM {T} WHERE id = 5",
        "INSERT INTO {T} VALUES (1, 'dup', 0, 0, NULL, NULL)",
    ] {
        same(&mut db, sql);
    }
    // COPY: the rows land alike; a COPY with a duplicate key fails alike
    // and leaves nothing.
    let copy = |db: &mut Client, t: &str, ids: std::ops::Range<i64>| -> Result<(), String> {
        let mut w = db
            .copy_in(&format!("COPY {t} (id, v, n) FROM STDIN"))
            .map_err(|e| pg_err(&e))?;
        for i in ids {
            writeln!(w, "{i}\tc{i}\t{}", i % 3).unwrap();
        }
        w.finish().map(|_| ()).map_err(|e| pg_err(&e))
    };
    for t in ["l", "d"] {
        copy(&mut db, t, 200000..205000).unwrap_or_else(|e| panic!("COPY {t}: {e}"));
    }
    same(&mut db, "SELECT id, v, n FROM {T} WHERE id >= 200000");
    let code = |e: String| e.split(':').next().unwrap_or("").to_string();
    let failed: Vec<String> = ["l", "d"]
        .iter()
        .map(|t| code(copy(&mut db, t, 204990..206000).expect_err("a duplicate key")))
        .collect();
    assert_eq!(failed[0], failed[1], "COPY with a duplicate key");
    same(&mut db, "SELECT count(*) FROM {T} WHERE id >= 205000");
    // Transactions: reads inside them see their writes; committed and
    // rolled back, across both nodes.
    exec(&mut db, "BEGIN");
    for sql in [
        "UPDATE {T} SET v = 'tx' WHERE id IN (1, 2, 3, 4) RETURNING id, v",
        "INSERT INTO {T} VALUES (300000, 'tx', 0, 0, NULL, NULL)",
        "SELECT id, v, n FROM {T} WHERE v = 'tx' OR id = 300000",
        "DELETE FROM {T} WHERE id BETWEEN 500 AND 600 RETURNING id",
        "SELECT count(*), sum(id) FROM {T}",
    ] {
        same(&mut db, sql);
    }
    exec(&mut db, "COMMIT");
    exec(&mut db, "BEGIN");
    for sql in [
        "DELETE FROM {T} WHERE id < 1000",
        "SAVEPOINT s",
        "UPDATE {T} SET v = 'gone' WHERE id < 5000",
        "ROLLBACK TO SAVEPOINT s",
        "SELECT id, v FROM {T} WHERE id < 5000",
    ] {
        same(&mut db, sql);
    }
    exec(&mut db, "ROLLBACK");
    same(&mut db, "SELECT id, v FROM {T} WHERE id < 5000");
    // Reads: scans, pushdown, aggregates over them.
    for sql in [
        "SELECT count(*), sum(n), min(v), max(id) FROM {T}",
        "SELECT * FROM {T} WHERE id = 42",
        "SELECT id, v FROM {T} WHERE id IN (1, 2, 3, 300000, 99999)",
        "SELECT count(*) FROM {T} WHERE v LIKE 'v1%'",
        "SELECT count(*) FROM {T} WHERE n BETWEEN 10 AND 20 AND f > 100",
        "SELECT id, encode(b, 'hex'), ts FROM {T} WHERE id < 50 ORDER BY id",
        "SELECT n, count(*) FROM {T} WHERE ts < '2024-01-02' GROUP BY n ORDER BY n",
        "SELECT count(*) FROM {T} WHERE v IS NULL OR n IS NULL",
    ] {
        same(&mut db, sql);
    }
    // Every row of the table, read through the scans (no aggregate runs on
    // the nodes here).
    same(&mut db, "SELECT id, v, n, f, encode(b, 'hex'), ts FROM {T}");
    let explain = rows(
        &mut db,
        "SELECT count(*) FROM conductor_explain('SELECT * FROM d WHERE id = 7')",
    )
    .unwrap();
    assert_eq!(explain, vec![vec![Some("1".to_string())]]);

    // numeric aggregates: sqld has no exact decimal aggregates (the probe
    // of add_node recorded that), so they run in Postgres over the rows.
    let offers = rows(
        &mut db,
        "SELECT node_id, decimal_aggregates FROM conductor.nodes ORDER BY 1",
    )
    .unwrap();
    assert!(
        offers.iter().all(|r| r[1].as_deref() == Some("f")),
        "{offers:?}"
    );
    exec(
        &mut db,
        "CREATE TABLE ln (id bigint PRIMARY KEY, g int, x numeric);
         CREATE FOREIGN TABLE dn (id bigint NOT NULL, g int, x numeric) SERVER cluster;
         SELECT conductor.create_distributed_table('dn', 'id', shard_count => 4);",
    );
    same(
        &mut db,
        "INSERT INTO {T}n SELECT i, i % 3, (i * 7919 % 1000 - 500) * 1000000000000.0001 + i / 8.0 FROM generate_series(1, 300) i",
    );
    same(
        &mut db,
        "INSERT INTO {T}n VALUES (1001, 0, 'NaN'), (1002, 1, 'Infinity'), (1003, 2, NULL)",
    );
    let grouped = "SELECT g, sum(x), avg(x), min(x), max(x) FROM {T}n GROUP BY g";
    same(&mut db, grouped);
    same(&mut db, "SELECT sum(x), min(x) FROM {T}n WHERE id <= 300");
    let plan = rows(
        &mut db,
        &format!("EXPLAIN (VERBOSE) {}", grouped.replace("{T}", "d")),
    )
    .unwrap()
    .into_iter()
    .map(|r| r[0].clone().unwrap_or_default())
    .collect::<Vec<_>>()
    .join("\n");
    assert!(
        plan.contains("Not pushed: aggregates: sum(numeric) needs conductor-node's decimal aggregates, which a node of the table lacks")
            && !plan.contains("conductor_decimal"),
        "{plan}"
    );

    // A killed sqld: a clear error naming it; back, everything works.
    cluster.stop_node(1);
    let err = rows(&mut db, "SELECT count(*) FROM d").expect_err("node down");
    assert!(err.contains("node-1"), "{err}");
    cluster.start_node(1);
    same(&mut db, "SELECT count(*), sum(n) FROM {T}");

    // Long values: up to sqld's limit they round-trip; beyond it (it stores
    // no value or row of more than 5,000,000 bytes, conductor-node far
    // more) the INSERT is refused with a clear error.
    same(
        &mut db,
        "INSERT INTO {T} (id, v, b) VALUES (400000, repeat('v', 2000000), decode(repeat('ab', 2000000), 'hex')) RETURNING id, length(v), length(b)",
    );
    same(
        &mut db,
        "SELECT id, length(v), md5(v), length(b), md5(b) FROM {T} WHERE id = 400000",
    );
    let err = rows(
        &mut db,
        "INSERT INTO d (id, b) VALUES (400001, decode(repeat('ab', 6000000), 'hex'))",
    )
    .expect_err("a value over sqld's limit");
    println!("a 6,000,000-byte value: {err}");
    assert!(err.starts_with("ERROR 54000"), "{err}");
    let detail = err.split("DETAIL:").nth(1).unwrap_or("");
    assert!(
        detail.contains("node-") && detail.contains("shard"),
        "{err}"
    );
    same(&mut db, "SELECT count(*) FROM {T} WHERE id > 300000");

    // Dropping the distributed table drops its shard tables on the nodes.
    let shard_tables: Vec<String> = rows(
        &mut db,
        "SELECT remote_table FROM conductor.shards WHERE table_name = 'd'::regclass",
    )
    .unwrap()
    .into_iter()
    .map(|r| r[0].clone().unwrap())
    .collect();
    assert_eq!(shard_tables.len(), 8);
    let on_nodes = |cluster: &Cluster| -> Vec<String> {
        (0..cluster.node_count())
            .flat_map(|i| cluster.node_tables(i))
            .filter(|t| shard_tables.contains(t))
            .collect()
    };
    assert_eq!(on_nodes(&cluster).len(), 8);
    exec(&mut db, "DROP FOREIGN TABLE d");
    assert_eq!(on_nodes(&cluster), Vec::<String>::new());
}

/// sqld expires a stream left idle for about 10 s (its transaction rolls
/// back); conductor renews the streams of an open transaction, so one that
/// pauses far longer still commits everything.
#[test]
fn a_transaction_outlives_sqlds_stream_expiry() {
    let Some(sqld) = sqld_bin() else {
        println!("SKIPPED: set SQLD=/path/to/sqld to run conductor against real libSQL servers");
        return;
    };
    let cluster = Cluster::start_sqld(2, &sqld);
    let mut db = cluster.client();
    cluster.setup_conductor(&mut db, "cluster");
    exec(
        &mut db,
        "CREATE TABLE l (id bigint PRIMARY KEY, v text);
         CREATE FOREIGN TABLE d (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('d', 'id', shard_count => 4);",
    );
    exec(&mut db, "BEGIN");
    same(
        &mut db,
        "INSERT INTO {T} SELECT i, 'long' FROM generate_series(1, 40) i RETURNING id",
    );
    std::thread::sleep(std::time::Duration::from_secs(15));
    same(&mut db, "SELECT id, v FROM {T}");
    same(
        &mut db,
        "UPDATE {T} SET v = 'later' WHERE id % 2 = 0 RETURNING id, v",
    );
    exec(&mut db, "COMMIT");
    same(&mut db, "SELECT id, v FROM {T}");
    // Counted on the sqld nodes themselves.
    let shards = rows(
        &mut db,
        "SELECT node_id, remote_table FROM conductor.shards WHERE table_name = 'd'::regclass",
    )
    .unwrap();
    let on_nodes: i64 = shards
        .iter()
        .map(|r| {
            let node: usize = r[0].as_deref().unwrap()["node-".len()..].parse().unwrap();
            let table = r[1].as_deref().unwrap();
            cluster.node_query(node, &format!("SELECT count(*) FROM \"{table}\""), &[])[0][0]
                .as_i64()
                .unwrap()
        })
        .sum();
    assert_eq!(on_nodes, 40);
}

/// Every scan's cursor stream is closed, also when the scan has all its rows
/// before sqld's trailing cursor entry: sqld holds a connection per open
/// stream (128), so 600 scans within its 10 s expiry once ran out of them
/// and were refused with HTTP 429 from about the 290th on.
#[test]
fn back_to_back_scans_leave_no_stream_open_on_sqld() {
    let Some(sqld) = sqld_bin() else {
        println!("SKIPPED: set SQLD=/path/to/sqld to run conductor against real libSQL servers");
        return;
    };
    let cluster = Cluster::start_sqld(2, &sqld);
    let mut db = cluster.client();
    cluster.setup_conductor(&mut db, "cluster");
    exec(
        &mut db,
        "CREATE FOREIGN TABLE d (id bigint NOT NULL, v int) SERVER cluster;
         SELECT conductor.create_distributed_table('d', 'id', shard_count => 16);
         INSERT INTO d SELECT i, i % 100 FROM generate_series(1, 1000) i;",
    );
    for i in 0..600 {
        let found = rows(&mut db, "SELECT id FROM d WHERE v = 42")
            .unwrap_or_else(|e| panic!("scan {i}: {e}"));
        assert_eq!(found.len(), 10, "scan {i}");
    }
}

#[test]
fn shard_sizes_on_sqld_nodes() {
    let Some(sqld) = sqld_bin() else {
        println!("SKIPPED: set SQLD=/path/to/sqld to run conductor against real libSQL servers");
        return;
    };
    let cluster = Cluster::start_sqld(2, &sqld);
    let mut db = cluster.client();
    cluster.setup_conductor(&mut db, "cluster");
    exec(
        &mut db,
        "CREATE FOREIGN TABLE s (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('s', 'id', shard_count => 4);
         INSERT INTO s SELECT i, 'v' || i FROM generate_series(1, 100) i;
         CREATE TABLE ls AS SELECT i::bigint AS id FROM generate_series(1, 100) i;",
    );
    let sizes = rows(
        &mut db,
        "SELECT z.shard_id, z.rows, z.bytes IS NULL OR z.bytes > 0
           FROM conductor.shard_sizes('s') z ORDER BY z.shard_id",
    )
    .unwrap();
    let expected = rows(
        &mut db,
        "SELECT s.shard, count(l.id), true
           FROM generate_series(0, 3) s(shard)
           LEFT JOIN ls l ON conductor.shard_for('s', l.id) = s.shard
          GROUP BY s.shard ORDER BY s.shard",
    )
    .unwrap();
    println!("sqld shard sizes: {sizes:?}");
    assert_eq!(sizes, expected);
}
