//! conductor_explain names exactly the shards execution contacts, on text,
//! varchar and uuid shard keys, under C, deterministic and nondeterministic
//! collations, with date and timestamp filters, constant folding, stable
//! functions, IN lists and writes.
//!
//! For each statement: the shards `conductor_explain` lists per table
//! against the shards the statement's execution sent requests to (the
//! backend's request counters). They must be equal, except where the plan
//! leaves the route to execution (a subquery's value, a nested loop's outer
//! row): then conductor_explain says so in its reason, lists every
//! candidate, and the contacted shards must be among them. Every
//! disagreement is a failure.

use conductor_e2e::postgres::Client;
use conductor_e2e::{pg_err, Cluster, ClusterOptions};
use std::collections::{BTreeMap, BTreeSet};

type ShardSet = BTreeMap<String, BTreeSet<i32>>;

fn exec(db: &mut Client, sql: &str) {
    db.batch_execute(sql)
        .unwrap_or_else(|e| panic!("{sql}: {}", pg_err(&e)));
}

fn listed(db: &mut Client, sql: &str) -> (ShardSet, Vec<String>) {
    let rows = db
        .query(
            "SELECT table_name, shard_id, reason FROM conductor_explain($1)",
            &[&sql],
        )
        .unwrap_or_else(|e| panic!("conductor_explain({sql}): {}", pg_err(&e)));
    let mut m = ShardSet::new();
    let mut reasons = Vec::new();
    for r in rows {
        m.entry(r.get(0)).or_default().insert(r.get(1));
        let reason: String = r.get(2);
        if !reasons.contains(&reason) {
            reasons.push(reason);
        }
    }
    (m, reasons)
}

fn contacted(db: &mut Client) -> ShardSet {
    let mut m = ShardSet::new();
    for r in db
        .query(
            "SELECT table_name::regclass::text, shard_id FROM conductor.shard_requests() WHERE requests > 0",
            &[],
        )
        .unwrap()
    {
        m.entry(r.get(0)).or_default().insert(r.get(1));
    }
    m
}

#[test]
fn conductor_explain_names_the_shards_execution_contacts() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        node_delay_ms: None,
        token: None,
    });
    exec(
        &mut db,
        "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
         CREATE COLLATION det (provider = icu, locale = 'en');
         CREATE FOREIGN TABLE tt (k text NOT NULL, d date, ts timestamp, tz timestamptz, n int) SERVER cluster;
         SELECT conductor.create_distributed_table('tt', 'k', shard_count => 8);
         CREATE FOREIGN TABLE tv (k varchar(20) NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('tv', 'k', shard_count => 8);
         CREATE FOREIGN TABLE tu (k uuid NOT NULL, v text, d date) SERVER cluster;
         SELECT conductor.create_distributed_table('tu', 'k', shard_count => 8);
         CREATE FOREIGN TABLE ti (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('ti', 'id', shard_count => 8);
         INSERT INTO tt SELECT 'k' || i, date '2024-01-01' + i, timestamp '2024-01-01' + i * interval '1 hour',
                               timestamptz '2024-01-01 00:00+00' + i * interval '1 hour', i
                          FROM generate_series(1, 200) i;
         INSERT INTO tt VALUES ('alice', '2024-02-01', '2024-02-01 10:00', '2024-02-01 10:00+00', 1),
                               ('Alice', '2024-02-02', '2024-02-02 10:00', '2024-02-02 10:00+00', 2),
                               ('xy', NULL, NULL, NULL, 3), ('BOB', NULL, NULL, NULL, 4);
         INSERT INTO tv SELECT 'v' || i, 'x' FROM generate_series(1, 100) i;
         INSERT INTO tu SELECT md5(i::text)::uuid, 'u' || i, date '2024-01-01' + i FROM generate_series(1, 100) i;
         INSERT INTO ti SELECT i, 'i' || i FROM generate_series(1, 100) i;
         CREATE TABLE local_keys (k text, id bigint);
         INSERT INTO local_keys VALUES ('alice', 3), ('k7', 9), ('k150', 40);
         ANALYZE local_keys;",
    );

    let statements: &[&str] = &[
        // text key, default (C) collation
        "SELECT * FROM tt WHERE k = 'alice'",
        "SELECT * FROM tt WHERE k = 'alice' COLLATE \"C\"",
        "SELECT * FROM tt WHERE k = 'alice' COLLATE det",
        "SELECT * FROM tt WHERE k = 'alice' COLLATE ci",
        "SELECT count(*) FROM tt WHERE k COLLATE ci = 'ALICE'",
        "SELECT * FROM tt WHERE k <> 'alice' COLLATE det",
        "SELECT * FROM tt WHERE k < 'k5'",
        "SELECT * FROM tt WHERE k < 'k5' COLLATE det",
        "SELECT * FROM tt WHERE k IN ('k1', 'k2', 'k3', 'nope')",
        "SELECT * FROM tt WHERE k = ANY (ARRAY['k10', 'k20'])",
        "SELECT * FROM tt WHERE k = ANY (ARRAY['k10', 'k20']::text[] COLLATE ci)",
        "SELECT * FROM tt WHERE k = 'x' || 'y'",
        "SELECT * FROM tt WHERE k = upper('bob')",
        "SELECT * FROM tt WHERE k = lower('BOB') OR k = 'k1'",
        "SELECT * FROM tt WHERE lower(k) = 'alice'",
        "SELECT * FROM tt WHERE k LIKE 'k1%'",
        "SELECT * FROM tt WHERE k = 'k1' AND k = 'k2'",
        "SELECT * FROM tt WHERE k = NULL",
        "SELECT * FROM tt WHERE k = 'k1' AND n > 0",
        "SELECT * FROM tt WHERE (k = 'k1' OR k = 'k2') AND NOT (n = 5)",
        "SELECT * FROM tt WHERE k BETWEEN 'k1' AND 'k2'",
        // dates and timestamps
        "SELECT * FROM tt WHERE d = date '2024-01-05'",
        "SELECT * FROM tt WHERE d >= '2024-01-05' AND d < '2024-01-09'",
        "SELECT * FROM tt WHERE ts > timestamp '2024-01-05 10:00'",
        "SELECT * FROM tt WHERE tz < now()",
        "SELECT * FROM tt WHERE ts = d",
        "SELECT * FROM tt WHERE d = current_date AND k = 'k3'",
        "SELECT * FROM tt WHERE k = 'k4' AND ts < localtimestamp",
        // varchar key
        "SELECT * FROM tv WHERE k = 'v7'",
        "SELECT * FROM tv WHERE k = 'v7'::text",
        "SELECT * FROM tv WHERE k::text = 'v7'",
        "SELECT * FROM tv WHERE k = 'v7' COLLATE ci",
        "SELECT * FROM tv WHERE k IN ('v1', 'v2', 'v3')",
        // uuid key
        "SELECT * FROM tu WHERE k = md5('7')::uuid",
        "SELECT * FROM tu WHERE k = 'b6d767d2-f8ed-5d21-a44b-0e5886680cb9'",
        "SELECT * FROM tu WHERE k IN (md5('1')::uuid, md5('2')::uuid, md5('3')::uuid)",
        "SELECT * FROM tu WHERE k::text = md5('7')",
        "SELECT * FROM tu WHERE d = '2024-01-08'",
        // integer key, folding and subqueries
        "SELECT * FROM ti WHERE id = 1 + 1",
        "SELECT * FROM ti WHERE id = abs(-3)",
        "SELECT * FROM ti WHERE id = 2::smallint",
        "SELECT * FROM ti WHERE id = (SELECT 5)",
        "SELECT * FROM ti WHERE id = (SELECT max(id) FROM local_keys)",
        "SELECT * FROM ti WHERE id IN (SELECT id FROM local_keys)",
        "SELECT * FROM ti WHERE id = 3 OR v = 'i4'",
        // joins
        "SELECT * FROM tt JOIN ti ON ti.id = tt.n WHERE tt.k = 'alice' AND ti.id = 1",
        "SELECT * FROM tt a JOIN tt b ON a.k = b.k WHERE a.k = 'k9'",
        "SELECT * FROM local_keys l JOIN tt ON tt.k = l.k",
        "SELECT * FROM tt LEFT JOIN ti ON ti.id = tt.n WHERE ti.id = 7",
        // writes (run inside a rolled-back transaction)
        "UPDATE tt SET n = 0 WHERE k = 'alice'",
        "UPDATE tt SET n = n + 1 WHERE k = 'k3'",
        "DELETE FROM tu WHERE k = md5('9')::uuid",
        "DELETE FROM tv WHERE k IN ('v1', 'v2') RETURNING *",
        "UPDATE ti SET v = 'z' WHERE id = 1 + 2",
        "INSERT INTO ti VALUES (1000, 'a')",
        "INSERT INTO ti VALUES (1001, 'a'), (1002, 'b'), (1003, upper('c'))",
        "INSERT INTO tt (k, n) VALUES ('new', 1)",
        "INSERT INTO tu VALUES (md5('x')::uuid, 'x', current_date)",
        "INSERT INTO ti SELECT id + 2000, 'c' FROM local_keys",
    ];

    let mut failures = Vec::new();
    let (mut exact, mut subsets) = (0, 0);
    for sql in statements {
        let (l, reasons) = listed(&mut db, sql);
        let at_execution = reasons.iter().any(|r| {
            r.contains("known only when the statement runs") || r.starts_with("chosen at execution")
        });
        let write = !sql.starts_with("SELECT");
        if write {
            exec(&mut db, "BEGIN");
        }
        exec(&mut db, "SELECT conductor.reset_shard_requests()");
        let result = db.simple_query(sql);
        let g = contacted(&mut db);
        if write {
            exec(&mut db, "ROLLBACK");
        }
        if let Err(e) = result {
            failures.push(format!("{sql}: failed: {}", pg_err(&e)));
            continue;
        }
        let tables: BTreeSet<&String> = l.keys().chain(g.keys()).collect();
        for t in tables {
            let empty = BTreeSet::new();
            let (ls, gs) = (l.get(t).unwrap_or(&empty), g.get(t).unwrap_or(&empty));
            if ls == gs {
                exact += 1;
            } else if at_execution && gs.is_subset(ls) {
                subsets += 1;
            } else {
                failures.push(format!(
                    "{sql}: table {t}: conductor_explain lists {ls:?} (reasons {reasons:?}), execution contacted {gs:?}"
                ));
            }
        }
    }
    println!(
        "explain-exact: {} statements, {exact} (statement, table) pairs equal, {subsets} chosen at execution and within the listed shards",
        statements.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(subsets > 0, "no statement left its route to execution");

    // The collation rules as EXPLAIN shows them: a nondeterministic
    // comparison on the key stays local and every shard is read.
    let plan: Vec<String> = db
        .query("EXPLAIN SELECT * FROM tt WHERE k = 'alice' COLLATE ci", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        plan.iter().any(|l| l.contains("Shards: 8 of 8")),
        "{plan:?}"
    );
    let rows: i64 = db
        .query_one("SELECT count(*) FROM tt WHERE k = 'ALICE' COLLATE ci", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        rows, 2,
        "alice and Alice under a case-insensitive collation"
    );
}

/// A shard table that lacks a column the foreign table has (changed by hand
/// on a node) makes statements that read it fail; the column's name never
/// comes back as its value.
#[test]
fn a_column_missing_on_the_shards_is_an_error_never_its_name() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        node_delay_ms: None,
        token: None,
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE drift (id bigint NOT NULL, v text, note text) SERVER cluster;
         SELECT conductor.create_distributed_table('drift', 'id', shard_count => 4);
         INSERT INTO drift SELECT i, 'v' || i FROM generate_series(1, 20) i;",
    );
    for i in 0..cluster.node_count() {
        for t in cluster.node_tables(i) {
            cluster.node_query(i, &format!("ALTER TABLE \"{t}\" DROP COLUMN note"), &[]);
        }
    }
    let problems: i64 = db
        .query_one("SELECT count(*) FROM conductor.check_schema('drift')", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        problems, 4,
        "check_schema sees the missing column on every shard"
    );
    for sql in [
        "SELECT id, note FROM drift WHERE id = 1",
        "SELECT count(*) FROM drift WHERE note = 'note'",
        "SELECT note FROM drift",
        "DELETE FROM drift WHERE note = 'note'",
        "UPDATE drift SET v = 'x' WHERE note IS NULL",
    ] {
        let err = db
            .simple_query(sql)
            .err()
            .unwrap_or_else(|| panic!("{sql} succeeded against shards without the column"));
        let text = pg_err(&err);
        assert!(text.contains("no such column"), "{sql}: {text}");
    }
    // Columns the shards have still work.
    let n: i64 = db
        .query_one("SELECT count(*) FROM drift WHERE v LIKE 'v1%'", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 11);
}

/// A statement that fails before it reaches a node (a negative LIMIT or
/// OFFSET pushed to the shards, a VALUES row without a shard key): its
/// conductor_explain fails with the statement's own error (SQLSTATE and
/// message), not with one about building the shard statements.
#[test]
fn conductor_explain_fails_as_the_statement_would() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE t (id bigint NOT NULL, g integer) SERVER cluster;
         SELECT conductor.create_distributed_table('t', 'id', shard_count => 4);
         INSERT INTO t SELECT i, i % 3 FROM generate_series(1, 20) i;",
    );
    for sql in [
        "SELECT id FROM t LIMIT -1",
        "SELECT id FROM t OFFSET -1",
        "SELECT id FROM t ORDER BY id LIMIT -2 OFFSET 1",
        "SELECT id FROM t ORDER BY id LIMIT -2 OFFSET -1",
        "SELECT id, count(*) FROM t GROUP BY id ORDER BY id LIMIT -1",
        "SELECT id, count(*) FROM t GROUP BY id ORDER BY count(*) DESC, id OFFSET -3",
        "INSERT INTO t VALUES (NULL, 1)",
        "INSERT INTO t VALUES (100, 1), (NULL, 2) ON CONFLICT DO NOTHING",
    ] {
        let ran = db.query(sql, &[]).expect_err(sql);
        let ran = ran.as_db_error().unwrap_or_else(|| panic!("{sql}: {ran}"));
        let explained = db
            .query("SELECT * FROM conductor_explain($1)", &[&sql])
            .expect_err(sql);
        let explained = explained
            .as_db_error()
            .unwrap_or_else(|| panic!("conductor_explain({sql}): {explained}"));
        assert_eq!(
            (explained.code(), explained.message()),
            (ran.code(), ran.message()),
            "{sql}"
        );
    }
}

/// The "Plan" object of a JSON EXPLAIN's top node (descending into the
/// first child until `key` appears).
fn plan_with(text: &str, key: &str) -> conductor_e2e::serde_json::Value {
    let v: conductor_e2e::serde_json::Value =
        conductor_e2e::serde_json::from_str(text).expect("EXPLAIN JSON");
    let mut plan = v[0]["Plan"].clone();
    while plan.get(key).is_none() {
        plan = plan["Plans"][0].clone();
        assert!(!plan.is_null(), "no {key} in {text}");
    }
    plan
}

#[test]
fn structured_explain_lists_every_shard() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        node_delay_ms: None,
        token: None,
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE ti (id bigint NOT NULL, n int) SERVER cluster;
         SELECT conductor.create_distributed_table('ti', 'id', shard_count => 8);
         INSERT INTO ti SELECT i, i % 5 FROM generate_series(1, 100) i;",
    );
    let explain_json = |db: &mut Client, sql: &str| -> String {
        let sql = format!("EXPLAIN (ANALYZE, VERBOSE, FORMAT JSON) {sql}");
        let msgs = db
            .simple_query(&sql)
            .unwrap_or_else(|e| panic!("{sql}: {}", pg_err(&e)));
        msgs.iter()
            .find_map(|m| match m {
                conductor_e2e::postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .expect("one row")
    };
    // A scan and a pushed aggregate: one "Shard" entry per shard read, in
    // a list a JSON reader keeps whole (a repeated key keeps only one).
    for sql in ["SELECT * FROM ti", "SELECT n, count(*) FROM ti GROUP BY n"] {
        let text = explain_json(&mut db, sql);
        let shards = plan_with(&text, "Shard")["Shard"].clone();
        let listed = shards.as_array().map(|a| a.len());
        assert_eq!(listed, Some(8), "{sql}: {shards}");
    }
    // An IN list split over shards: each shard's own statement.
    let ids: Vec<i64> = (1..=20).collect();
    let shards: BTreeSet<i64> = ids
        .iter()
        .map(|id| {
            db.query_one(
                "SELECT conductor.shard_for('ti', $1::bigint)::bigint",
                &[id],
            )
            .unwrap()
            .get::<_, i64>(0)
        })
        .collect();
    let list = ids
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let text = explain_json(&mut db, &format!("SELECT * FROM ti WHERE id IN ({list})"));
    let remote = plan_with(&text, "Remote SQL")["Remote SQL"].clone();
    let per_shard = remote.as_array().map(|a| a.len());
    assert_eq!(per_shard, Some(shards.len()), "{remote}");
    // The text format keeps a line per shard.
    let lines: Vec<String> = db
        .query("EXPLAIN (ANALYZE, VERBOSE) SELECT * FROM ti", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let shard_lines = lines
        .iter()
        .filter(|l| l.trim_start().starts_with("Shard: "))
        .count();
    assert_eq!(shard_lines, 8, "{lines:#?}");
}

/// Requests each node received on its data endpoints so far.
fn node_requests(cluster: &Cluster) -> Vec<u64> {
    (0..cluster.node_count())
        .map(|i| {
            let (_, body) = cluster.node_get(i, "/stats").expect("node /stats");
            let v: conductor_e2e::serde_json::Value =
                conductor_e2e::serde_json::from_str(&body).expect("/stats JSON");
            v["requests"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(e, _)| e.contains("pipeline") || e.contains("cursor"))
                        .map(|(_, n)| n.as_u64().unwrap_or(0))
                        .sum()
                })
                .unwrap_or(0)
        })
        .collect()
}

#[test]
fn conductor_explain_names_every_copy_a_reference_table_write_reaches() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        node_delay_ms: None,
        token: None,
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE r (id int NOT NULL, name text) SERVER cluster;
         SELECT conductor.create_reference_table('r');
         INSERT INTO r SELECT i, 'r' || i FROM generate_series(1, 10) i;",
    );
    for sql in [
        "SELECT * FROM r WHERE id = 3",
        "INSERT INTO r VALUES (50, 'n')",
        "UPDATE r SET name = 'x' WHERE id = 1",
        "DELETE FROM r WHERE id = 2 RETURNING *",
    ] {
        let listed: BTreeSet<String> = db
            .query("SELECT node_id FROM conductor_explain($1)", &[&sql])
            .unwrap_or_else(|e| panic!("conductor_explain({sql}): {}", pg_err(&e)))
            .iter()
            .map(|r| r.get(0))
            .collect();
        // EXPLAIN's Shards line (an INSERT has none): the nodes it names.
        let shards_line: Option<String> = db
            .query(&format!("EXPLAIN {sql}"), &[])
            .unwrap_or_else(|e| panic!("EXPLAIN {sql}: {}", pg_err(&e)))
            .iter()
            .map(|r| r.get::<_, String>(0))
            .find(|l| l.trim_start().starts_with("Shards:"));
        let before = node_requests(&cluster);
        exec(&mut db, sql);
        let after = node_requests(&cluster);
        let reached: BTreeSet<String> = (0..cluster.node_count())
            .filter(|&i| after[i] > before[i])
            .map(|i| cluster.node_id(i))
            .collect();
        assert_eq!(listed, reached, "{sql}");
        if let Some(line) = shards_line {
            let named: BTreeSet<String> = (0..cluster.node_count())
                .map(|i| cluster.node_id(i))
                .filter(|id| line.contains(id.as_str()))
                .collect();
            assert_eq!(named, reached, "EXPLAIN {sql}: {line}");
        }
    }
}

#[test]
fn conductor_explain_of_execute_routes_by_the_values_given() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        node_delay_ms: None,
        token: None,
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE ti (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('ti', 'id', shard_count => 8);
         INSERT INTO ti SELECT i, 'v' || i FROM generate_series(1, 100) i;
         PREPARE sel(bigint) AS SELECT * FROM ti WHERE id = $1;
         PREPARE two(bigint, bigint) AS SELECT count(*) FROM ti WHERE id IN ($1, $2);
         PREPARE upd(text, bigint) AS UPDATE ti SET v = $1 WHERE id = $2 RETURNING id;
         PREPARE del(int) AS DELETE FROM ti WHERE id = $1 + 1;
         PREPARE ins(bigint, text) AS INSERT INTO ti VALUES ($1, $2);",
    );
    // Run each often enough for Postgres to switch to its generic plan.
    let statements = [
        "EXECUTE sel(7)",
        "EXECUTE sel('12')",
        "EXECUTE two(3, 40)",
        "EXECUTE upd('x', 9)",
        "EXECUTE del(20)",
        "EXECUTE ins(500, 'new')",
    ];
    for round in 0..7 {
        for sql in statements {
            let (l, reasons) = listed(&mut db, sql);
            exec(&mut db, "SELECT conductor.reset_shard_requests()");
            exec(&mut db, &format!("BEGIN; {sql}; ROLLBACK"));
            let c = contacted(&mut db);
            assert_eq!(l, c, "round {round}: {sql}: {reasons:?}");
        }
    }
    // What EXECUTE itself refuses, conductor_explain refuses the same way.
    for sql in [
        "EXECUTE sel(1, 2)",
        "EXECUTE sel('x'::text)",
        "EXECUTE nope(1)",
    ] {
        let direct = db.batch_execute(sql).expect_err(sql);
        let explained = db
            .query("SELECT * FROM conductor_explain($1)", &[&sql])
            .expect_err(sql);
        let code = |e: &conductor_e2e::postgres::Error| e.code().map(|c| c.code().to_string());
        assert_eq!(
            code(&explained),
            code(&direct),
            "{sql}: {}",
            pg_err(&explained)
        );
    }
}
