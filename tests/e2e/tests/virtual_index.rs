//! Virtual indexes (docs/ARCHITECTURE.md, Virtual indexes).
//!
//! `routing_matches_a_local_table`: the same rows in a local table and a
//! 16-shard table with virtual indexes on a unique text column, a composite
//! (text, int), a uuid and an int column, written by INSERT, INSERT …
//! SELECT, COPY, UPDATE and DELETE, some before the indexes were built
//! (backfill) and some after. Generated equality, IN and `= ANY` queries,
//! literal and as generic prepared plans, return the same rows as the local
//! table, and the shards the nodes were asked to scan (counted at the nodes)
//! are exactly the shards holding matching rows (a value with no row: none),
//! once extras are repaired; before that, a superset of them.
//!
//! `unique_values`: 23505 naming index and value for a second row with a
//! value on any shard, in another session while the first is uncommitted
//! (and not after it rolled back); many NULLs; a unique index over
//! duplicates fails and names one.
//!
//! `concurrent_writers_never_lose_entries`: 8 sessions of random writes
//! (rollbacks, UPDATEs of indexed columns, unique conflicts, sessions
//! terminated mid-transaction) and reads that remove the extras they meet;
//! then `verify_virtual_index` finds no
//! missing entry and every row is found through each index.
//!
//! `concurrent_inserts_of_one_unique_value_one_wins`: two sessions insert
//! one value at the same moment on different shards; one gets 23505.
//!
//! `per_row_updates_across_nodes_and_a_backend_killed_mid_commit`: UPDATEs
//! setting indexed columns to per-row values whose entries live on the
//! other node agree with a local table; a backend SIGKILLed between two
//! nodes' commits leaves no row without its entry.

mod common;

use common::{exec, query_i64};
use conductor_e2e::postgres::{Client, SimpleQueryMessage};
use conductor_e2e::{pg_err, Cluster, ClusterOptions};
use std::collections::BTreeSet;
use std::io::Write as _;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Rows of a query rendered as text, sorted; or the error's SQLSTATE.
fn rows(db: &mut Client, sql: &str) -> Result<Vec<String>, String> {
    let messages = db.simple_query(sql).map_err(|e| match e.as_db_error() {
        Some(d) => format!("ERROR {}: {}", d.code().code(), d.message()),
        None => format!("ERROR {e}"),
    })?;
    let mut out = Vec::new();
    for m in messages {
        if let SimpleQueryMessage::Row(r) = m {
            out.push(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("∅").to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            );
        }
    }
    out.sort();
    Ok(out)
}

/// Shard reads the nodes' shard databases have served: streamed scans (one
/// cursor per shard with `conductor.max_requests_per_node` above the shards
/// per node) and one-request reads (a unique index's values); index lookups
/// go to the lookup databases.
fn scans(cluster: &Cluster) -> u64 {
    (0..cluster.node_count())
        .map(|i| {
            let (status, body) = cluster.node_get(i, "/stats").expect("GET /stats");
            assert_eq!(status, 200, "{body}");
            let v: conductor_e2e::serde_json::Value =
                conductor_e2e::serde_json::from_str(&body).unwrap();
            let cursors: u64 = ["/v3/cursor", "/v3-protobuf/cursor"]
                .iter()
                .map(|e| v["requests"][e].as_u64().unwrap_or(0))
                .sum();
            cursors
                + v["fast_read_pipelines"]
                    .as_u64()
                    .expect("fast_read_pipelines")
        })
        .sum()
}

const CITIES: [&str; 6] = ["Oslo", "oslo", "Lima", "São Paulo", "Pune", "it's"];

fn tag(i: i64) -> String {
    format!("00000000-0000-4000-8000-{:012x}", i * 7919)
}

/// One row of the data set as a VALUES tuple.
fn row(i: i64, rng: &mut Rng) -> String {
    let email = format!("'u{}@x.org'", (i * 37) % 100_003);
    let city = CITIES[rng.below(CITIES.len() as u64) as usize].replace('\'', "''");
    let age = if rng.below(10) == 0 {
        "NULL".to_string()
    } else {
        (18 + rng.below(20)).to_string()
    };
    let tag = if rng.below(8) == 0 {
        "NULL".to_string()
    } else {
        format!("'{}'", tag(i % 400))
    };
    format!(
        "({i}, {email}, '{city}', {age}, {tag}, 'n{}')",
        rng.below(1000)
    )
}

fn both(db: &mut Client, sql: &str) {
    exec(db, &sql.replace("{t}", "l_people"));
    exec(db, &sql.replace("{t}", "people"));
}

/// A generated predicate over the indexed columns.
fn predicate(rng: &mut Rng) -> String {
    let email = |rng: &mut Rng| format!("'u{}@x.org'", (rng.below(700) as i64 * 37) % 100_003);
    let city = |rng: &mut Rng| {
        format!(
            "'{}'",
            CITIES[rng.below(CITIES.len() as u64) as usize].replace('\'', "''")
        )
    };
    match rng.below(8) {
        0 => format!("email = {}", email(rng)),
        1 => format!("email IN ({}, {}, {})", email(rng), email(rng), email(rng)),
        2 => format!("email = ANY(ARRAY[{}, {}])", email(rng), email(rng)),
        3 => format!("city = {} AND age = {}", city(rng), 18 + rng.below(22)),
        4 => format!(
            "city IN ({}, {}) AND age IN ({}, {})",
            city(rng),
            city(rng),
            18 + rng.below(20),
            18 + rng.below(20)
        ),
        5 => format!("tag = '{}'", tag(rng.below(450) as i64)),
        // The index narrows by age; the shards scanned are those with the
        // age (`indexed` below), the filter applies on them.
        6 => format!("age = {} AND note LIKE 'n1%'", 18 + rng.below(22)),
        _ => "email = 'nobody@x.org'".to_string(),
    }
}

/// Runs generated queries on both tables: same rows; the nodes scanned the
/// shards holding matching rows (`exact`) or at least those.
fn check_queries(cluster: &Cluster, db: &mut Client, rng: &mut Rng, n: usize, exact: bool) {
    let mut total = 0;
    for q in 0..n {
        let pred = predicate(rng);
        let local = rows(db, &format!("SELECT * FROM l_people WHERE {pred}")).unwrap();
        let before = scans(cluster);
        let remote = rows(db, &format!("SELECT * FROM people WHERE {pred}"))
            .unwrap_or_else(|e| panic!("query {q}: {pred}: {e}"));
        let scanned = scans(cluster) - before;
        total += scanned;
        assert_eq!(local, remote, "query {q}: {pred}");
        let indexed = pred.split(" AND note").next().unwrap_or(&pred);
        let holding = query_i64(
            db,
            &format!(
                "SELECT count(DISTINCT conductor.shard_for('people', id)) FROM l_people WHERE {indexed}"
            ),
        ) as u64;
        if exact {
            assert_eq!(scanned, holding, "query {q}: {pred}: shards scanned");
        } else {
            assert!(
                scanned >= holding,
                "query {q}: {pred}: {scanned} < {holding}"
            );
            assert!(scanned < 16, "query {q}: {pred}: every shard scanned");
        }
    }
    println!(
        "{n} queries through virtual indexes scanned {total} shards ({} without them)",
        n * 16
    );
}

/// Generic prepared plans: `$1` bound at execution routes through the index.
fn check_generic(cluster: &Cluster, db: &mut Client, rng: &mut Rng) {
    exec(db, "SET plan_cache_mode = force_generic_plan");
    let by_email = db.prepare("SELECT * FROM people WHERE email = $1").unwrap();
    let by_city_age = db
        .prepare("SELECT * FROM people WHERE city = $1 AND age = $2")
        .unwrap();
    let by_any = db
        .prepare("SELECT * FROM people WHERE email = ANY($1)")
        .unwrap();
    let render = |rs: Vec<conductor_e2e::postgres::Row>| -> Vec<i64> {
        let mut ids: Vec<i64> = rs.iter().map(|r| r.get::<_, i64>(0)).collect();
        ids.sort();
        ids
    };
    for _ in 0..15 {
        let email = format!("u{}@x.org", (rng.below(700) as i64 * 37) % 100_003);
        let want: Vec<i64> = render(
            db.query("SELECT * FROM l_people WHERE email = $1", &[&email])
                .unwrap(),
        );
        let before = scans(cluster);
        let got = render(db.query(&by_email, &[&email]).unwrap());
        assert_eq!(got, want, "email = {email}");
        assert_eq!(
            scans(cluster) - before,
            want.len() as u64,
            "one shard per row"
        );

        let city = CITIES[rng.below(CITIES.len() as u64) as usize].to_string();
        let age = 18 + rng.below(20) as i32;
        let want = render(
            db.query(
                "SELECT * FROM l_people WHERE city = $1 AND age = $2",
                &[&city, &age],
            )
            .unwrap(),
        );
        let before = scans(cluster);
        let got = render(db.query(&by_city_age, &[&city, &age]).unwrap());
        assert_eq!(got, want, "city = {city} AND age = {age}");
        let holding: BTreeSet<i64> = db
            .query(
                "SELECT conductor.shard_for('people', id)::bigint FROM l_people WHERE city = $1 AND age = $2",
                &[&city, &age],
            )
            .unwrap()
            .iter()
            .map(|r| r.get::<_, i64>(0))
            .collect();
        assert_eq!(scans(cluster) - before, holding.len() as u64);

        let list = vec![email.clone(), "nobody@x.org".to_string()];
        let want = render(
            db.query("SELECT * FROM l_people WHERE email = ANY($1)", &[&list])
                .unwrap(),
        );
        assert_eq!(render(db.query(&by_any, &[&list]).unwrap()), want);
    }
    exec(db, "RESET plan_cache_mode");
}

fn verify(db: &mut Client, index: &str, repair: bool) -> (i64, i64, i64) {
    let r = db
        .query_one(
            "SELECT missing, extra, repaired FROM conductor.verify_virtual_index($1, $2)",
            &[&index, &repair],
        )
        .unwrap_or_else(|e| panic!("verify {index}: {}", pg_err(&e)));
    (r.get(0), r.get(1), r.get(2))
}

const INDEXES: [&str; 4] = [
    "people_email_vidx",
    "people_city_age_vidx",
    "people_tag_vidx",
    "people_age",
];

#[test]
fn routing_matches_a_local_table() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 4,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE TABLE l_people (id bigint PRIMARY KEY, email text, city text, age int, tag uuid, note text);
         CREATE FOREIGN TABLE people (id bigint NOT NULL, email text, city text, age int, tag uuid, note text)
             SERVER cluster;
         SELECT conductor.create_distributed_table('people', 'id', 16);
         SET conductor.max_requests_per_node = 64;",
    );
    let mut rng = Rng(0x5eed_1dc5);
    // Rows before the indexes: the build backfills them.
    let first: Vec<String> = (0..300).map(|i| row(i, &mut rng)).collect();
    both(
        &mut db,
        &format!("INSERT INTO {{t}} VALUES {}", first.join(", ")),
    );
    // Each CALL alone: the procedure commits between its steps, which a
    // multi-statement query string (one implicit transaction) forbids.
    for call in [
        "CALL conductor.create_virtual_index('people', ARRAY['email'], true)",
        "CALL conductor.create_virtual_index('people', ARRAY['city', 'age'])",
        "CALL conductor.create_virtual_index('people', ARRAY['tag'])",
        "CALL conductor.create_virtual_index('people', ARRAY['age'], false, 'people_age')",
    ] {
        exec(&mut db, call);
    }
    let ready = rows(
        &mut db,
        "SELECT index_name, status, shards_backfilled, shards, rows_backfilled
           FROM conductor.virtual_indexes",
    )
    .unwrap();
    assert_eq!(ready.len(), 4, "{ready:?}");
    for r in &ready {
        assert!(r.ends_with("|ready|16|16|300"), "{r}");
    }
    // Rows after: single-row and multi-row INSERT, INSERT … SELECT, COPY.
    for i in 300..320 {
        let r = row(i, &mut rng);
        both(&mut db, &format!("INSERT INTO {{t}} VALUES {r}"));
    }
    let more: Vec<String> = (320..500).map(|i| row(i, &mut rng)).collect();
    both(
        &mut db,
        &format!("INSERT INTO {{t}} VALUES {}", more.join(", ")),
    );
    exec(
        &mut db,
        "CREATE TEMP TABLE staging AS SELECT * FROM l_people WHERE false;",
    );
    let staged: Vec<String> = (500..600).map(|i| row(i, &mut rng)).collect();
    exec(
        &mut db,
        &format!("INSERT INTO staging VALUES {}", staged.join(", ")),
    );
    both(&mut db, "INSERT INTO {t} SELECT * FROM staging");
    let copied: Vec<String> = (600..700).map(|i| row(i, &mut rng)).collect();
    exec(
        &mut db,
        &format!("INSERT INTO l_people VALUES {}", copied.join(", ")),
    );
    let text = rows(
        &mut db,
        "SELECT id || E'\\t' || coalesce(email, '\\N') || E'\\t' || coalesce(city, '\\N') || E'\\t'
                || coalesce(age::text, '\\N') || E'\\t' || coalesce(tag::text, '\\N') || E'\\t' || note
           FROM l_people WHERE id >= 600",
    )
    .unwrap();
    let mut copy = db.copy_in("COPY people FROM STDIN").unwrap();
    for line in &text {
        writeln!(copy, "{line}").unwrap();
    }
    copy.finish().unwrap();

    for ix in INDEXES {
        assert_eq!(verify(&mut db, ix, false), (0, 0, 0), "{ix} after inserts");
    }
    check_queries(&cluster, &mut db, &mut rng, 120, true);
    check_generic(&cluster, &mut db, &mut rng);

    // Text collations follow shard-key routing: equality under a
    // deterministic collation is looked up; under a nondeterministic one
    // it is not sent to the nodes at all, so every shard is read and
    // Postgres compares.
    exec(
        &mut db,
        "CREATE COLLATION ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false)",
    );
    for (pred, routed) in [
        ("email = 'u37@x.org' COLLATE \"C\"", true),
        ("email = 'U37@X.ORG' COLLATE ci", false),
    ] {
        let local = rows(&mut db, &format!("SELECT id FROM l_people WHERE {pred}")).unwrap();
        let before = scans(&cluster);
        let remote = rows(&mut db, &format!("SELECT id FROM people WHERE {pred}")).unwrap();
        let scanned = scans(&cluster) - before;
        assert_eq!(local, remote, "{pred}");
        if routed {
            assert_eq!(scanned, local.len() as u64, "{pred}");
        } else {
            assert_eq!(scanned, 16, "{pred}");
        }
    }

    // EXPLAIN and conductor_explain name the index.
    let plan = rows(
        &mut db,
        "EXPLAIN SELECT * FROM people WHERE email = 'u37@x.org'",
    )
    .unwrap()
    .join("\n");
    assert!(plan.contains("virtual index people_email_vidx"), "{plan}");
    let plan = rows(
        &mut db,
        "EXPLAIN ANALYZE SELECT * FROM people WHERE city = 'Oslo' AND age = 20",
    )
    .unwrap()
    .join("\n");
    assert!(
        plan.contains("virtual index people_city_age_vidx"),
        "{plan}"
    );
    let reasons = rows(
        &mut db,
        "SELECT DISTINCT reason FROM conductor_explain('SELECT * FROM people WHERE tag = ''00000000-0000-4000-8000-000000000000''')",
    )
    .unwrap()
    .join("\n");
    assert!(
        reasons.contains("virtual index people_tag_vidx"),
        "{reasons}"
    );
    // A literal looked up in the index: no parameter decides the shards.
    assert!(!reasons.contains("parameter"), "{reasons}");

    // UPDATE of indexed columns (row by row) and of other columns (direct,
    // routed through an index), DELETE through an index.
    for _ in 0..40 {
        let id = rng.below(700);
        let stmt = match rng.below(5) {
            0 => format!(
                "UPDATE {{t}} SET email = 'moved{}@x.org' WHERE id = {id}",
                rng.below(100_000)
            ),
            1 => format!(
                "UPDATE {{t}} SET city = '{}' WHERE id = {id}",
                CITIES[rng.below(6) as usize].replace('\'', "''")
            ),
            2 => format!(
                "UPDATE {{t}} SET age = age + 1, tag = NULL WHERE email = 'u{}@x.org'",
                (id as i64 * 37) % 100_003
            ),
            3 => format!(
                "UPDATE {{t}} SET note = 'touched' WHERE age = {}",
                18 + rng.below(20)
            ),
            _ => format!(
                "DELETE FROM {{t}} WHERE email = 'u{}@x.org'",
                (id * 37) % 100_003
            ),
        };
        both(&mut db, &stmt);
    }
    // Many rows on every node set to one value: all their entries are on
    // the value's lookup node, which commits first.
    both(&mut db, "UPDATE {t} SET city = 'Lima' WHERE age = 25");
    both(&mut db, "UPDATE {t} SET email = NULL WHERE age = 26");
    for ix in INDEXES {
        let (missing, _, _) = verify(&mut db, ix, false);
        assert_eq!(missing, 0, "{ix} after updates");
    }
    check_queries(&cluster, &mut db, &mut rng, 60, false);
    for ix in INDEXES {
        let (missing, extra, repaired) = verify(&mut db, ix, true);
        assert_eq!(
            (missing, extra),
            (0, repaired),
            "{ix}: every extra repaired"
        );
        assert_eq!(verify(&mut db, ix, false), (0, 0, 0), "{ix} after repair");
    }
    check_queries(&cluster, &mut db, &mut rng, 60, true);

    // A dropped index routes nothing and leaves no lookup table behind.
    exec(
        &mut db,
        "SELECT conductor.drop_virtual_index('people_tag_vidx')",
    );
    let before = scans(&cluster);
    rows(
        &mut db,
        "SELECT * FROM people WHERE tag = '00000000-0000-4000-8000-000000000000'",
    )
    .unwrap();
    assert_eq!(scans(&cluster) - before, 16);
    assert!(common::all_node_tables(&cluster)
        .iter()
        .all(|(_, t)| !t.contains("_vx_people_tag_vidx")));
    let lookups = lookup_tables(&cluster);
    assert!(
        lookups.iter().any(|t| t.contains("_vx_people_email_vidx")),
        "{lookups:?}"
    );
    assert!(
        lookups.iter().all(|t| !t.contains("_vx_people_tag_vidx")),
        "{lookups:?}"
    );
    // Dropping the table drops its lookup tables too.
    exec(&mut db, "DROP FOREIGN TABLE people");
    let lookups = lookup_tables(&cluster);
    assert!(
        lookups.iter().all(|t| !t.contains("_vx_people")),
        "{lookups:?}"
    );
}

/// The tables in every node's lookup database.
fn lookup_tables(cluster: &Cluster) -> Vec<String> {
    let body = conductor_e2e::serde_json::json!({
        "baton": null,
        "requests": [
            {"type": "execute", "stmt": {
                "sql": "SELECT name FROM sqlite_master WHERE type = 'table'",
                "want_rows": true,
            }},
            {"type": "close"},
        ],
    });
    let mut out = Vec::new();
    for i in 0..cluster.node_count() {
        let (status, resp) = cluster
            .node_post(i, "/lookup/v2/pipeline", &body)
            .expect("lookup database answers");
        assert_eq!(status, 200, "{resp}");
        for row in resp["results"][0]["response"]["result"]["rows"]
            .as_array()
            .expect("rows")
        {
            out.push(row[0]["value"].as_str().unwrap_or_default().to_string());
        }
    }
    out
}

#[test]
fn unique_values() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE acct (id bigint NOT NULL, login text, n int) SERVER cluster;
         SELECT conductor.create_distributed_table('acct', 'id', 8);",
    );
    exec(
        &mut db,
        "CALL conductor.create_virtual_index('acct', ARRAY['login'], true, 'acct_login')",
    );
    exec(
        &mut db,
        "INSERT INTO acct VALUES (1, 'ann', 1), (2, NULL, 2), (3, NULL, 3)",
    );
    // Same value, other shards and the same shard (id 1 again is a key
    // conflict; look for ids on other shards and one on shard_for(1)).
    let shard1 = query_i64(
        &mut db,
        "SELECT conductor.shard_for('acct', 1::bigint)::bigint",
    );
    let mut same = None;
    let mut other = None;
    for id in 10..200i64 {
        let s = query_i64(
            &mut db,
            &format!("SELECT conductor.shard_for('acct', {id}::bigint)::bigint"),
        );
        if s == shard1 && same.is_none() {
            same = Some(id);
        }
        if s != shard1 && other.is_none() {
            other = Some(id);
        }
    }
    for id in [same.unwrap(), other.unwrap()] {
        let e = db
            .batch_execute(&format!("INSERT INTO acct VALUES ({id}, 'ann', 0)"))
            .unwrap_err();
        let d = e.as_db_error().expect("db error");
        assert_eq!(d.code().code(), "23505", "{}", pg_err(&e));
        assert!(d.message().contains("acct_login"), "{}", pg_err(&e));
        assert!(d.detail().unwrap_or("").contains("'ann'"), "{}", pg_err(&e));
    }
    // ON CONFLICT DO NOTHING skips a row whose unique value is taken, as
    // Postgres does for any unique constraint.
    let skipped = db
        .execute(
            &format!(
                "INSERT INTO acct VALUES ({}, 'ann', 0), (4, 'fresh', 4) ON CONFLICT DO NOTHING",
                other.unwrap()
            ),
            &[],
        )
        .unwrap();
    assert_eq!(skipped, 1, "only the row with a free value is inserted");
    assert_eq!(
        query_i64(
            &mut db,
            "SELECT count(*) FROM acct WHERE login IN ('ann', 'fresh')"
        ),
        2
    );
    // Changing a row to a taken value is refused too.
    let e = db
        .batch_execute("UPDATE acct SET login = 'ann' WHERE id = 2")
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("23505"), "{}", pg_err(&e));

    // Another session, while the first has not committed: it waits, then
    // fails once the first commits; after a rollback the value is free.
    let other_id = other.unwrap();
    for commit in [true, false] {
        let value = format!("bob{commit}");
        let mut a = cluster.client();
        a.batch_execute(&format!(
            "BEGIN; INSERT INTO acct VALUES ({}, '{value}', 0)",
            same.unwrap() + if commit { 1000 } else { 2000 }
        ))
        .unwrap();
        let url = cluster.pg_config();
        let v2 = value.clone();
        let b = std::thread::spawn(move || {
            let mut b = url.connect(conductor_e2e::postgres::NoTls).unwrap();
            b.batch_execute(&format!("INSERT INTO acct VALUES ({other_id}, '{v2}', 0)"))
                .map_err(|e| e.code().map(|c| c.code().to_string()))
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        a.batch_execute(if commit { "COMMIT" } else { "ROLLBACK" })
            .unwrap();
        let r = b.join().unwrap();
        if commit {
            assert_eq!(r, Err(Some("23505".into())), "second writer of {value}");
        } else {
            assert_eq!(r, Ok(()), "value free after the rollback");
            exec(&mut db, &format!("DELETE FROM acct WHERE id = {other_id}"));
        }
    }
    // A deleted row frees its value (its entry is taken over) once the
    // DELETE committed (in its own transaction: see
    // a_unique_value_removed_and_rewritten_in_one_transaction).
    exec(&mut db, "DELETE FROM acct WHERE id = 1");
    exec(
        &mut db,
        &format!("INSERT INTO acct VALUES ({other_id}, 'ann', 9)"),
    );
    assert_eq!(
        query_i64(&mut db, "SELECT count(*) FROM acct WHERE login = 'ann'"),
        1
    );
    let (missing, _, _) = verify(&mut db, "acct_login", false);
    assert_eq!(missing, 0);

    // A role that may only read and insert routes through the index and
    // meets its uniqueness too (the catalog is readable by everyone).
    exec(
        &mut db,
        "CREATE ROLE reader LOGIN; GRANT USAGE ON FOREIGN SERVER cluster TO reader;
         GRANT SELECT, INSERT ON acct TO reader;",
    );
    let mut config = cluster.pg_config();
    config.user("reader");
    let mut reader = config.connect(conductor_e2e::postgres::NoTls).unwrap();
    assert_eq!(
        query_i64(&mut reader, "SELECT count(*) FROM acct WHERE login = 'ann'"),
        1
    );
    let e = reader
        .batch_execute("INSERT INTO acct VALUES (7000, 'ann', 0)")
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("23505"), "{}", pg_err(&e));
    assert_eq!(
        rows(
            &mut reader,
            "SELECT index_name, status FROM conductor.virtual_indexes"
        )
        .unwrap(),
        ["acct_login|ready"]
    );

    // A unique index over duplicates fails, names one, and is left failed.
    exec(
        &mut db,
        "INSERT INTO acct VALUES (500, 'x500', 77), (501, 'x501', 77), (502, 'x502', 77)",
    );
    let e = db
        .batch_execute("CALL conductor.create_virtual_index('acct', ARRAY['n'], true, 'acct_n')")
        .unwrap_err();
    let d = e.as_db_error().expect("db error");
    assert_eq!(d.code().code(), "23505", "{}", pg_err(&e));
    assert!(
        d.detail().unwrap_or("").contains("(n)=(77)"),
        "{}",
        pg_err(&e)
    );
    let status = rows(
        &mut db,
        "SELECT status FROM conductor.virtual_indexes WHERE index_name = 'acct_n'",
    )
    .unwrap();
    assert!(
        status.is_empty() || status == ["failed"],
        "a failed build is failed or gone: {status:?}"
    );
    // Routing ignores it: a query on n visits every shard.
    let before = scans(&cluster);
    exec(&mut db, "SET conductor.max_requests_per_node = 64");
    rows(&mut db, "SELECT * FROM acct WHERE n = 77").unwrap();
    assert_eq!(scans(&cluster) - before, 8);
}

#[test]
fn concurrent_writers_never_lose_entries() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE ev (id bigint NOT NULL, k int, code text) SERVER cluster;
         SELECT conductor.create_distributed_table('ev', 'id', 12);",
    );
    exec(
        &mut db,
        "CALL conductor.create_virtual_index('ev', ARRAY['k'], false, 'ev_k')",
    );
    exec(
        &mut db,
        "CALL conductor.create_virtual_index('ev', ARRAY['code'], true, 'ev_code')",
    );
    let config = cluster.pg_config();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let config = config.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9 + t * 7919);
                let connect = || {
                    let mut db = config.connect(conductor_e2e::postgres::NoTls).unwrap();
                    db.batch_execute("SET application_name = 'vidx_writer'")
                        .unwrap();
                    db
                };
                let mut db = connect();
                let mut failures = 0;
                for step in 0..20u64 {
                    let id = |rng: &mut Rng| rng.below(200) as i64;
                    let mut sql = String::from("BEGIN;");
                    for _ in 0..1 + rng.below(3) {
                        sql.push_str(&match rng.below(8) {
                            0..=3 => format!(
                                "INSERT INTO ev VALUES ({}, {}, 'c{}') ON CONFLICT DO NOTHING;",
                                id(&mut rng) + 1000 * (t as i64 + 1),
                                rng.below(20),
                                rng.below(300)
                            ),
                            4 => format!(
                                "UPDATE ev SET k = {} WHERE id = {};",
                                rng.below(20),
                                id(&mut rng) + 1000 * (rng.below(8) as i64 + 1)
                            ),
                            5 => format!(
                                "UPDATE ev SET code = 'c{}' WHERE k = {};",
                                rng.below(300),
                                rng.below(20)
                            ),
                            6 => format!("DELETE FROM ev WHERE k = {};", rng.below(20)),
                            _ => format!(
                                "DELETE FROM ev WHERE id = {};",
                                id(&mut rng) + 1000 * (rng.below(8) as i64 + 1)
                            ),
                        });
                    }
                    sql.push_str(if rng.below(4) == 0 {
                        "ROLLBACK;"
                    } else {
                        "COMMIT;"
                    });
                    if step % 7 == 6 && t == 0 {
                        // A session of another thread is terminated wherever
                        // it is (between statements, mid-commit).
                        let _ = db.batch_execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                              WHERE pid <> pg_backend_pid() AND application_name = 'vidx_writer'
                              LIMIT 1",
                        );
                    }
                    // Reads through both indexes between the writes:
                    // the extras they meet are removed as they commit.
                    let _ = db.batch_execute(&format!(
                        "SELECT id FROM ev WHERE k = {}; SELECT id FROM ev WHERE code = 'c{}'",
                        rng.below(20),
                        rng.below(300)
                    ));
                    if db.batch_execute(&sql).is_err() {
                        failures += 1;
                        if db.is_closed() {
                            db = connect();
                        } else {
                            let _ = db.batch_execute("ROLLBACK");
                        }
                    }
                }
                failures
            })
        })
        .collect();
    let failures: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    println!("statements that failed (unique conflicts, serialization, terminated): {failures}");
    // Aborted remote transactions end when their nodes expire them.
    for ix in ["ev_k", "ev_code"] {
        let (missing, extra, _) = verify(&mut db, ix, false);
        assert_eq!(
            missing, 0,
            "{ix}: no row without its entry ({extra} extras)"
        );
    }
    // Every row is found through each index.
    let all = rows(&mut db, "SELECT id, k, code FROM ev WHERE id >= 0").unwrap();
    println!("rows at the end: {}", all.len());
    assert!(!all.is_empty(), "some writes committed");
    for r in &all {
        let f: Vec<&str> = r.split('|').collect();
        for pred in [format!("k = {}", f[1]), format!("code = '{}'", f[2])] {
            if pred.contains('∅') {
                continue;
            }
            let found = rows(&mut db, &format!("SELECT id, k, code FROM ev WHERE {pred}")).unwrap();
            assert!(found.contains(r), "{r} not found by {pred}");
        }
    }
    let codes = rows(&mut db, "SELECT code FROM ev WHERE code IS NOT NULL").unwrap();
    let distinct: BTreeSet<&String> = codes.iter().collect();
    assert_eq!(distinct.len(), codes.len(), "unique codes stayed unique");
}

/// A node that fails at commit never leaves a committed row without its
/// entry: the entry was committed in the node's lookup database before the
/// row was written, so whichever node is down at commit, a committed row has
/// its entry, and an entry whose row did not commit is only an extra.
#[test]
fn a_node_down_at_commit_leaves_no_row_without_its_entry() {
    let (mut cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE co (id bigint NOT NULL, k bigint) SERVER cluster;
         SELECT conductor.create_distributed_table('co', 'id', 4);",
    );
    exec(
        &mut db,
        "CALL conductor.create_virtual_index('co', ARRAY['k'], false, 'co_k')",
    );
    let shards = common::shard_map(&mut db, "co");
    let node_of = |db: &mut Client, v: i64| -> usize {
        let s = query_i64(
            db,
            &format!("SELECT conductor.shard_for('co', {v}::bigint)::bigint"),
        );
        common::node_index(&shards[&(s as i32)].0)
    };
    // With one indexed bigint column, an entry's lookup shard is the shard
    // the value would have as a shard key.
    let find = |db: &mut Client, node: usize, from: i64| -> i64 {
        (from..from + 1000)
            .find(|&v| node_of(db, v) == node)
            .expect("a value on the node")
    };
    for (down, base) in [(0usize, 100i64), (1, 200)] {
        let x = 0usize;
        let y = 1usize;
        let id1 = find(&mut db, x, base);
        let id2 = find(&mut db, y, base);
        let v = find(&mut db, x, base + 5000);
        db.batch_execute(&format!(
            "BEGIN; INSERT INTO co VALUES ({id1}, 1); INSERT INTO co VALUES ({id2}, {v})"
        ))
        .unwrap();
        cluster.stop_node(down);
        let committed = db.batch_execute("COMMIT").is_ok();
        cluster.start_node(down);
        assert!(!committed, "a node was down at commit");
        let _ = db.batch_execute("ROLLBACK");
        let row2 = query_i64(
            &mut db,
            &format!("SELECT count(*) FROM co WHERE id = {id2}"),
        );
        let (missing, extra, _) = verify(&mut db, "co_k", false);
        // The entry of v was committed (in node x's lookup database) before
        // the row went to node y, so whichever node failed, a committed
        // row has it.
        assert_eq!(missing, 0, "node {down} down: row {id2} committed: {row2}");
        println!("node {down} down at commit: row committed {row2}, extras {extra}");
    }
}

/// `conductor.virtual_indexes` lists every index while a node is down:
/// the entries it cannot count are NULL, with a WARNING naming the node,
/// and the count is back once the node is.
#[test]
fn the_index_list_stays_readable_with_a_node_down() {
    let (mut cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE vl (id bigint NOT NULL, k bigint) SERVER cluster;
         SELECT conductor.create_distributed_table('vl', 'id', 8);
         INSERT INTO vl SELECT i, i * 3 FROM generate_series(1, 50) i;",
    );
    exec(
        &mut db,
        "CALL conductor.create_virtual_index('vl', ARRAY['k'], false, 'vl_k')",
    );
    let entries = "SELECT entries FROM conductor.virtual_indexes WHERE index_name = 'vl_k'";
    assert_eq!(query_i64(&mut db, entries), 50);
    let warnings = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = warnings.clone();
    let mut config = cluster.pg_config();
    config.notice_callback(move |n| {
        sink.lock()
            .unwrap()
            .push(format!("{} | {}", n.message(), n.detail().unwrap_or("")))
    });
    let mut other = config.connect(conductor_e2e::postgres::NoTls).unwrap();
    exec(
        &mut other,
        "SET conductor.read_retries = 0; SET conductor.node_cooldown = 0",
    );
    cluster.stop_node(1);
    let rows = other
        .query(
            "SELECT index_name, status, entries FROM conductor.virtual_indexes",
            &[],
        )
        .expect("the list is readable with a node down");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, String>(0), "vl_k");
    assert_eq!(rows[0].get::<_, String>(1), "ready");
    assert_eq!(rows[0].get::<_, Option<i64>>(2), None);
    let seen = warnings.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|w| w.contains("vl_k") && w.contains("node-1")),
        "{seen:?}"
    );
    cluster.start_node(1);
    assert_eq!(query_i64(&mut other, entries), 50);
}

/// Whether `e` is the 40001 a cross-node deadlock ends with (the node's
/// busy timeout; nothing written), to be retried at most 3 times.
fn retry_deadlock(e: &conductor_e2e::postgres::Error, retried: &mut u32) -> bool {
    let again = e.code().map(|c| c.code()) == Some("40001") && *retried < 3;
    *retried += u32::from(again);
    again
}

/// Building over existing rows while other sessions write: the build waits
/// for older transactions, writes during the backfill keep their entries,
/// the index becomes ready complete. A cancelled build is failed, routing
/// ignores it, and it can be dropped. An indexed column cannot be altered.
#[test]
fn build_while_writing_and_cancel() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE bw (id bigint NOT NULL, k int) SERVER cluster;
         SELECT conductor.create_distributed_table('bw', 'id', 2);
         INSERT INTO bw SELECT g, g % 100 FROM generate_series(1, 6000) g;",
    );
    let config = cluster.pg_config();
    let builder = {
        let config = config.clone();
        std::thread::spawn(move || {
            let mut b = config.connect(conductor_e2e::postgres::NoTls).unwrap();
            let mut retried = 0;
            loop {
                match b.batch_execute(
                    "CALL conductor.create_virtual_index('bw', ARRAY['k'], false, 'bw_k')",
                ) {
                    // The deadlock below can end on this side instead: its
                    // first step, which failed, committed nothing.
                    Err(e) if retry_deadlock(&e, &mut retried) => {}
                    done => return done.map_err(|e| pg_err(&e)),
                }
            }
        })
    };
    let mut next = 10_000i64;
    let mut retried = 0;
    while !builder.is_finished() {
        let write = format!(
            "INSERT INTO bw VALUES ({next}, {}); UPDATE bw SET k = k + 1 WHERE id = {}",
            next % 100,
            next % 6000 + 1
        );
        match db.batch_execute(&write) {
            Ok(()) => next += 1,
            // The build's first step writes every shard in one transaction;
            // with this one writing both nodes too, each can hold one
            // node's write lock and wait for the other's. The node's busy
            // timeout ends that with 40001 and nothing written, on either
            // side: retried, as its hint says.
            Err(e) if retry_deadlock(&e, &mut retried) => {}
            Err(e) => panic!("{write}: {}", pg_err(&e)),
        }
    }
    builder.join().unwrap().expect("build");
    println!("rows written during the build: {}", next - 10_000);
    let status = rows(
        &mut db,
        "SELECT status, shards_backfilled, rows_backfilled >= 6000 FROM conductor.virtual_indexes",
    )
    .unwrap();
    // 2 shards of about 3000 rows: the backfill walked each in chunks.
    assert_eq!(status, ["ready|2|t"]);
    assert_eq!(verify(&mut db, "bw_k", false).0, 0, "no missing entry");
    for k in [0, 7, 99] {
        let routed = rows(&mut db, &format!("SELECT id FROM bw WHERE k = {k}")).unwrap();
        let full = rows(&mut db, &format!("SELECT id FROM bw WHERE k + 0 = {k}")).unwrap();
        assert_eq!(routed, full, "k = {k}");
    }

    // A build waiting for an older transaction, cancelled.
    let mut holder = cluster.client();
    holder.batch_execute("BEGIN; SELECT 1").unwrap();
    let builder = {
        let config = config.clone();
        std::thread::spawn(move || {
            let mut b = config.connect(conductor_e2e::postgres::NoTls).unwrap();
            b.batch_execute("SET application_name = 'vidx_builder'")
                .unwrap();
            b.batch_execute("CALL conductor.create_virtual_index('bw', ARRAY['k'], false, 'bw_k2')")
                .map_err(|e| e.code().map(|c| c.code().to_string()))
        })
    };
    loop {
        let waiting = query_i64(
            &mut db,
            "SELECT count(*) FROM conductor.virtual_index WHERE index_name = 'bw_k2'",
        );
        if waiting == 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    exec(
        &mut db,
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = 'vidx_builder'",
    );
    assert_eq!(builder.join().unwrap(), Err(Some("57014".into())));
    holder.batch_execute("COMMIT").unwrap();
    let status = rows(
        &mut db,
        "SELECT status FROM conductor.virtual_indexes WHERE index_name = 'bw_k2'",
    )
    .unwrap();
    assert_eq!(status, ["failed"]);
    exec(&mut db, "SELECT conductor.drop_virtual_index('bw_k2')");

    // An indexed column cannot be dropped, renamed or retyped.
    for alter in [
        "ALTER FOREIGN TABLE bw DROP COLUMN k",
        "ALTER FOREIGN TABLE bw RENAME COLUMN k TO kk",
        "ALTER FOREIGN TABLE bw ALTER COLUMN k TYPE bigint",
    ] {
        let e = db.batch_execute(alter).unwrap_err();
        assert_eq!(
            e.code().map(|c| c.code()),
            Some("0A000"),
            "{alter}: {}",
            pg_err(&e)
        );
    }
    exec(&mut db, "ALTER FOREIGN TABLE bw ADD COLUMN note text");
}

/// The same on real libSQL servers (skipped without `SQLD`): the lookup
/// tables, the claims' short transactions and the commit order work there.
#[test]
fn sqld_nodes_keep_and_use_virtual_indexes() {
    let Some(sqld) = common::sqld_bin() else {
        println!("SKIPPED: set SQLD=/path/to/sqld to run against real libSQL servers");
        return;
    };
    let cluster = Cluster::start_sqld(2, &sqld);
    let mut db = cluster.client();
    cluster.setup_conductor(&mut db, "cluster");
    exec(
        &mut db,
        "CREATE TABLE l_u (id bigint PRIMARY KEY, login text, n int);
         CREATE FOREIGN TABLE u (id bigint NOT NULL, login text, n int) SERVER cluster;
         SELECT conductor.create_distributed_table('u', 'id', 8);
         INSERT INTO l_u SELECT g, 'l' || g, g % 10 FROM generate_series(1, 300) g;
         INSERT INTO u SELECT g, 'l' || g, g % 10 FROM generate_series(1, 150) g;",
    );
    exec(
        &mut db,
        "CALL conductor.create_virtual_index('u', ARRAY['login'], true, 'u_login')",
    );
    exec(
        &mut db,
        "CALL conductor.create_virtual_index('u', ARRAY['n'], false, 'u_n')",
    );
    // sqld serves no lookup database: the entries sit beside the shards.
    assert_eq!(
        query_i64(
            &mut db,
            "SELECT count(*) FROM conductor.virtual_index WHERE lookup_database"
        ),
        0
    );
    // Three batches in one statement: every entry of the statement is
    // written before its first row.
    exec(
        &mut db,
        "ALTER FOREIGN TABLE u OPTIONS (ADD batch_size '50')",
    );
    exec(&mut db, "INSERT INTO u SELECT * FROM l_u WHERE id > 150");
    exec(
        &mut db,
        "UPDATE l_u SET login = 'moved' || id WHERE id % 7 = 0",
    );
    // An UPDATE of an indexed column over rows of both nodes may need both
    // nodes to commit first (each holds entries of the other's rows): it
    // is then refused as a serialization failure, nothing written, and the
    // rows are changed one by one.
    if let Err(e) = db.batch_execute("UPDATE u SET login = 'moved' || id WHERE id % 7 = 0") {
        assert_eq!(e.code().map(|c| c.code()), Some("40001"), "{}", pg_err(&e));
        for id in (7..=300).step_by(7) {
            exec(
                &mut db,
                &format!("UPDATE u SET login = 'moved' || id WHERE id = {id}"),
            );
        }
    }
    exec(
        &mut db,
        "DELETE FROM u WHERE id % 11 = 0; DELETE FROM l_u WHERE id % 11 = 0;",
    );
    for pred in [
        "login = 'l5'",
        "login = 'moved14'",
        "login IN ('l1', 'l22', 'nobody')",
        "n = 3",
        "n IN (1, 2) AND login LIKE 'l1%'",
    ] {
        assert_eq!(
            rows(&mut db, &format!("SELECT * FROM u WHERE {pred}")).unwrap(),
            rows(&mut db, &format!("SELECT * FROM l_u WHERE {pred}")).unwrap(),
            "{pred}"
        );
    }
    let e = db
        .batch_execute("INSERT INTO u VALUES (1000, 'l5', 0)")
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("23505"), "{}", pg_err(&e));
    for ix in ["u_login", "u_n"] {
        assert_eq!(verify(&mut db, ix, false).0, 0, "{ix}");
    }
}

/// On sqld, one autocommit UPDATE whose rows and new indexed values cross
/// the two nodes both ways cannot order its commits: it fails with 40001
/// before anything is written, and the DETAIL says that the conflicting
/// order comes from rows written earlier, possibly by this very statement
/// (the transaction has no other).
#[test]
fn sqld_one_update_crossing_nodes_both_ways_says_why_it_cannot_commit() {
    let Some(sqld) = common::sqld_bin() else {
        println!("SKIPPED: set SQLD=/path/to/sqld to run against real libSQL servers");
        return;
    };
    let cluster = Cluster::start_sqld(2, &sqld);
    let mut db = cluster.client();
    cluster.setup_conductor(&mut db, "cluster");
    exec(
        &mut db,
        "CREATE FOREIGN TABLE x (id bigint NOT NULL, n bigint) SERVER cluster;
         SELECT conductor.create_distributed_table('x', 'id', 8);
         INSERT INTO x SELECT g, g FROM generate_series(1, 200) g;",
    );
    exec(
        &mut db,
        "CALL conductor.create_virtual_index('x', ARRAY['n'], false, 'x_n')",
    );
    let e = db
        .batch_execute("UPDATE x SET n = n + 1000 + id")
        .expect_err("entries on both nodes pointing at rows of the other");
    assert_eq!(e.code().map(|c| c.code()), Some("40001"), "{}", pg_err(&e));
    let detail = e.as_db_error().and_then(|d| d.detail()).unwrap_or("");
    assert!(
        detail.contains("in this statement or an earlier one"),
        "{}",
        pg_err(&e)
    );
    assert_eq!(
        rows(&mut db, "SELECT count(*) FROM x WHERE n > 1000").unwrap(),
        rows(&mut db, "SELECT 0").unwrap()
    );
}

/// Rows on both nodes whose new values' entries live on the other node: a
/// multi-row UPDATE setting indexed columns to per-row values (alone and in
/// a transaction) succeeds and agrees with a local table, and a backend
/// SIGKILLed while one node has committed and the other is stopped
/// (SIGSTOP, then killed, so it never commits) leaves every committed row
/// findable through the indexes.
#[test]
fn per_row_updates_across_nodes_and_a_backend_killed_mid_commit() {
    let (mut cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE TABLE l_cr (id bigint PRIMARY KEY, k bigint, email text);
         CREATE FOREIGN TABLE cr (id bigint NOT NULL, k bigint, email text) SERVER cluster;
         SELECT conductor.create_distributed_table('cr', 'id', 8);
         INSERT INTO l_cr SELECT g, g, 'u' || g || '@example.com' FROM generate_series(1, 400) g;
         INSERT INTO cr SELECT * FROM l_cr;",
    );
    exec(
        &mut db,
        "CALL conductor.create_virtual_index('cr', ARRAY['k'], false, 'cr_k')",
    );
    exec(
        &mut db,
        "CALL conductor.create_virtual_index('cr', ARRAY['email'], true, 'cr_email')",
    );
    let in_lookup_databases = query_i64(
        &mut db,
        "SELECT count(*) FROM conductor.virtual_index WHERE lookup_database",
    );
    assert_eq!(in_lookup_databases, 2);
    for stmt in [
        "UPDATE {t} SET k = k * 7 + 3",
        "UPDATE {t} SET email = upper(email) WHERE id % 3 = 0",
        "BEGIN; UPDATE {t} SET k = id * 11, email = md5(email) WHERE id % 2 = 0; \
         UPDATE {t} SET k = k - 1 WHERE id % 5 = 0; COMMIT",
    ] {
        for t in ["l_cr", "cr"] {
            if let Err(e) = db.batch_execute(&stmt.replace("{t}", t)) {
                panic!("{t}: {stmt}: {}", pg_err(&e));
            }
        }
    }
    let local = rows(&mut db, "SELECT id, k, email FROM l_cr ORDER BY id").unwrap();
    assert_eq!(
        rows(&mut db, "SELECT id, k, email FROM cr ORDER BY id").unwrap(),
        local
    );
    for r in local.iter().step_by(9) {
        let f: Vec<&str> = r.split('|').collect();
        for pred in [format!("k = {}", f[1]), format!("email = '{}'", f[2])] {
            assert_eq!(
                rows(&mut db, &format!("SELECT * FROM cr WHERE {pred}")).unwrap(),
                rows(&mut db, &format!("SELECT * FROM l_cr WHERE {pred}")).unwrap(),
                "{pred}"
            );
        }
    }
    for ix in ["cr_k", "cr_email"] {
        assert_eq!(verify(&mut db, ix, false).0, 0, "{ix}");
    }

    // The victim's transaction writes rows on both nodes; node 1 is stopped
    // before COMMIT, so node 0 commits and node 1 cannot answer when the
    // backend is killed.
    let mut victim = cluster.client();
    let pid = query_i64(&mut victim, "SELECT pg_backend_pid()::bigint");
    victim
        .batch_execute("BEGIN; UPDATE cr SET k = k + 100000, email = 'x' || email WHERE id <= 200")
        .unwrap();
    let node1 = cluster.node_pid(1).expect("node 1 runs");
    common::signal(node1, conductor_e2e::libc::SIGSTOP);
    let commit = std::thread::spawn(move || victim.batch_execute("COMMIT").map_err(|e| pg_err(&e)));
    std::thread::sleep(std::time::Duration::from_millis(500));
    common::signal(pid as u32, conductor_e2e::libc::SIGKILL);
    assert!(commit.join().unwrap().is_err(), "the backend was killed");
    // Node 1 never commits: it dies (SIGKILL) before it reads the COMMIT,
    // and its uncommitted transaction is gone when it comes back.
    cluster.stop_node(1);
    cluster.start_node(1);
    // The postmaster restarts every backend after one is killed: wait for
    // that before connecting (a connection made earlier is cut by it).
    let started = std::time::Instant::now();
    while !cluster
        .pg_log()
        .contains("all server processes terminated; reinitializing")
    {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the postmaster did not restart its backends"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut db = loop {
        let last = match cluster.try_client() {
            Ok(mut c) => match c.batch_execute("SELECT 1") {
                Ok(()) => break c,
                Err(e) => pg_err(&e),
            },
            Err(e) => pg_err(&e),
        };
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "no connection after the backend was killed: {last}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    for ix in ["cr_k", "cr_email"] {
        assert_eq!(verify(&mut db, ix, false).0, 0, "{ix} after the kill");
    }
    // Every row, whichever outcome its node had, is found through both
    // indexes.
    let now = rows(&mut db, "SELECT id, k, email FROM cr ORDER BY id").unwrap();
    assert_eq!(now.len(), 400);
    let moved = now.iter().filter(|r| r.contains("|x")).count();
    println!("after the kill: {moved} of 200 rows carry the victim's update");
    assert!(
        0 < moved && moved < 200,
        "node 0 committed and node 1 did not: {moved} of 200"
    );
    for r in now.iter().take(220).step_by(7) {
        let f: Vec<&str> = r.split('|').collect();
        for pred in [format!("k = {}", f[1]), format!("email = '{}'", f[2])] {
            let found = rows(
                &mut db,
                &format!("SELECT id, k, email FROM cr WHERE {pred}"),
            )
            .unwrap();
            assert!(found.contains(r), "{r} not found through {pred}: {found:?}");
        }
    }
}

/// A read through an index that visits a shard whose row is gone (a
/// DELETE leaves its entry behind) removes that entry once it commits:
/// after every value was read once, verify finds no extra, and a value
/// with no row visits no shard.
#[test]
fn reads_remove_the_extras_they_meet() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE TABLE l_ex (id bigint PRIMARY KEY, email text);
         CREATE FOREIGN TABLE ex (id bigint NOT NULL, email text) SERVER cluster;
         SELECT conductor.create_distributed_table('ex', 'id', 8);
         INSERT INTO l_ex SELECT g, 'e' || (g % 50) FROM generate_series(1, 100) g;
         INSERT INTO ex SELECT * FROM l_ex;",
    );
    exec(
        &mut db,
        "CALL conductor.create_virtual_index('ex', ARRAY['email'], false, 'ex_email')",
    );
    for t in ["l_ex", "ex"] {
        exec(
            &mut db,
            &format!("DELETE FROM {t} WHERE id <= 30 OR id % 10 = 3"),
        );
    }
    let (missing, extra, _) = verify(&mut db, "ex_email", false);
    assert_eq!(missing, 0);
    assert!(extra > 10, "the DELETE left extras: {extra}");
    // One read of each value (each its own transaction).
    for v in 0..50 {
        let pred = format!("email = 'e{v}'");
        assert_eq!(
            rows(&mut db, &format!("SELECT id FROM ex WHERE {pred}")).unwrap(),
            rows(&mut db, &format!("SELECT id FROM l_ex WHERE {pred}")).unwrap(),
            "{pred}"
        );
    }
    // The removals run in the background after each read's commit.
    settle(&mut db, "ex_email", 0);
    // e13 lost both its rows (ids 13 and 63): its lookup now finds no shard.
    assert_eq!(
        query_i64(&mut db, "SELECT count(*) FROM l_ex WHERE email = 'e13'"),
        0
    );
    let before = scans(&cluster);
    rows(&mut db, "SELECT id FROM ex WHERE email = 'e13'").unwrap();
    assert_eq!(scans(&cluster) - before, 0);
    // A read inside a transaction that rolls back removes nothing.
    exec(
        &mut db,
        "DELETE FROM ex WHERE id = 44; DELETE FROM l_ex WHERE id = 44",
    );
    exec(
        &mut db,
        "BEGIN; SELECT id FROM ex WHERE email = 'e44'; ROLLBACK",
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(verify(&mut db, "ex_email", false).1, 1);
    // A session that ends right after its read still removes the extra
    // (the backend waits for its background removals before it exits).
    let mut short = cluster.client();
    exec(&mut short, "SELECT id FROM ex WHERE email = 'e44'");
    drop(short);
    settle(&mut db, "ex_email", 0);
    // No node write lock was left behind: a write to the table succeeds
    // (it would fail after the node's busy timeout behind a stuck lock).
    exec(&mut db, "INSERT INTO ex VALUES (1000, 'e44')");
}

/// Wait (up to 10 s) until `index` has `extras` extra entries and none
/// missing.
fn settle(db: &mut Client, index: &str, extras: i64) {
    let started = std::time::Instant::now();
    loop {
        let v = verify(db, index, false);
        if v == (0, extras, 0) {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{index}: (missing, extra, repaired) = {v:?}, expected {extras} extras"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Two sessions insert the same value of a unique index at the same moment,
/// on rows of different shards: exactly one succeeds, the other gets 23505.
#[test]
fn concurrent_inserts_of_one_unique_value_one_wins() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE uq (id bigint NOT NULL, login text) SERVER cluster;
         SELECT conductor.create_distributed_table('uq', 'id', 8);",
    );
    exec(
        &mut db,
        "CALL conductor.create_virtual_index('uq', ARRAY['login'], true, 'uq_login')",
    );
    // Pairs of ids on different shards.
    let shard = |db: &mut Client, id: i64| {
        query_i64(
            db,
            &format!("SELECT conductor.shard_for('uq', {id}::bigint)::bigint"),
        )
    };
    let mut pairs = Vec::new();
    let mut id = 1;
    while pairs.len() < 20 {
        let (a, b) = (id, id + 1);
        id += 2;
        if shard(&mut db, a) != shard(&mut db, b) {
            pairs.push((a, b));
        }
    }
    let config = cluster.pg_config();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
    let sessions: Vec<_> = [0usize, 1]
        .into_iter()
        .map(|side| {
            let (config, barrier, pairs) = (config.clone(), barrier.clone(), pairs.clone());
            std::thread::spawn(move || {
                let mut db = config.connect(conductor_e2e::postgres::NoTls).unwrap();
                pairs
                    .iter()
                    .enumerate()
                    .map(|(n, (a, b))| {
                        let id = if side == 0 { a } else { b };
                        barrier.wait();
                        db.batch_execute(&format!("INSERT INTO uq VALUES ({id}, 'same{n}')"))
                            .map_err(|e| e.code().map(|c| c.code().to_string()))
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let outcomes: Vec<Vec<Result<(), Option<String>>>> =
        sessions.into_iter().map(|s| s.join().unwrap()).collect();
    for n in 0..pairs.len() {
        let (a, b) = (&outcomes[0][n], &outcomes[1][n]);
        assert!(
            a.is_ok() != b.is_ok(),
            "value same{n}: exactly one insert succeeds: {a:?} {b:?}"
        );
        let failed = if a.is_ok() { b } else { a };
        assert_eq!(failed, &Err(Some("23505".into())), "value same{n}");
        assert_eq!(
            query_i64(
                &mut db,
                &format!("SELECT count(*) FROM uq WHERE login = 'same{n}'")
            ),
            1
        );
    }
    assert_eq!(verify(&mut db, "uq_login", false).0, 0);
}

/// An ALTER that rebuilds the shard tables (SET / DROP NOT NULL, ADD COLUMN
/// … NOT NULL) keeps the local index every shard has for a virtual index:
/// a unique index still refuses a second row with a value on the shard
/// that holds it (INSERT of two rows, UPDATE), which only that local index
/// catches.
#[test]
fn a_rebuilding_alter_keeps_the_local_indexes() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE acct (id bigint NOT NULL, login text, n int) SERVER cluster;
         SELECT conductor.create_distributed_table('acct', 'id', 2);",
    );
    exec(
        &mut db,
        "CALL conductor.create_virtual_index('acct', ARRAY['login'], true, 'acct_login')",
    );
    exec(
        &mut db,
        "CALL conductor.create_virtual_index('acct', ARRAY['n'], false, 'acct_n')",
    );
    // Keys of shard 0.
    let ids: Vec<i64> = (1..200i64)
        .filter(|id| {
            query_i64(
                &mut db,
                &format!("SELECT conductor.shard_for('acct', {id}::bigint)::bigint"),
            ) == 0
        })
        .take(4)
        .collect();
    exec(
        &mut db,
        &format!(
            "INSERT INTO acct VALUES ({}, 'ann', 1), ({}, 'bob', 2)",
            ids[0], ids[1]
        ),
    );
    let local_indexes = |cluster: &Cluster| -> Vec<String> {
        let mut names: Vec<String> = (0..cluster.node_count())
            .flat_map(|i| {
                cluster.node_query(
                    i,
                    "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE '%vx_%'",
                    &[],
                )
            })
            .map(|r| r[0].as_str().unwrap_or_default().to_string())
            .collect();
        names.sort();
        names
    };
    let before = local_indexes(&cluster);
    assert_eq!(
        before.len(),
        4,
        "two local indexes on each shard: {before:?}"
    );
    // check_schema knows them: nothing to report.
    assert_eq!(
        query_i64(
            &mut db,
            "SELECT count(*) FROM conductor.check_schema('acct')"
        ),
        0
    );
    for alter in [
        "ALTER FOREIGN TABLE acct ALTER COLUMN n SET NOT NULL",
        "ALTER FOREIGN TABLE acct ALTER COLUMN n DROP NOT NULL",
        "ALTER FOREIGN TABLE acct ADD COLUMN flag boolean NOT NULL DEFAULT false",
    ] {
        exec(&mut db, alter);
        assert_eq!(local_indexes(&cluster), before, "after {alter}");
        let e = db
            .batch_execute(&format!(
                "UPDATE acct SET login = 'ann' WHERE id = {}",
                ids[1]
            ))
            .unwrap_err();
        assert_eq!(
            e.code().map(|c| c.code()),
            Some("23505"),
            "UPDATE to a taken value after {alter}: {}",
            pg_err(&e)
        );
        let e = db
            .batch_execute(&format!(
                "INSERT INTO acct (id, login, n) VALUES ({}, 'cy', 3), ({}, 'cy', 4)",
                ids[2], ids[3]
            ))
            .unwrap_err();
        assert_eq!(
            e.code().map(|c| c.code()),
            Some("23505"),
            "two rows with one value after {alter}: {}",
            pg_err(&e)
        );
        assert_eq!(
            query_i64(
                &mut db,
                "SELECT count(*) FROM acct WHERE login IN ('ann', 'cy')"
            ),
            1,
            "after {alter}"
        );
    }
    assert_eq!(
        query_i64(
            &mut db,
            "SELECT count(*) FROM conductor.check_schema('acct')"
        ),
        0
    );
}

/// Dropping a virtual index waits for the statements using its table and
/// makes later ones wait for it, as DROP INDEX does: a write that knew the
/// index never meets its dropped lookup tables ("no such table"), and every
/// write lands.
#[test]
fn dropping_an_index_while_writing() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE t (id bigint NOT NULL, email text) SERVER cluster;
         SELECT conductor.create_distributed_table('t', 'id', 4);",
    );
    exec(
        &mut db,
        "CALL conductor.create_virtual_index('t', ARRAY['email'], false, 't_email')",
    );
    // A session that wrote (and cached the index) before the drop.
    let mut writer = cluster.client();
    exec(&mut writer, "INSERT INTO t VALUES (1, 'e1')");
    let writer_pid: i32 = writer
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    exec(
        &mut db,
        "BEGIN; SELECT conductor.drop_virtual_index('t_email')",
    );
    let writing = std::thread::spawn(move || {
        for i in 2..=40i64 {
            writer
                .execute(
                    "INSERT INTO t VALUES ($1::bigint, 'e' || $1::bigint)",
                    &[&i],
                )
                .map_err(|e| pg_err(&e))?;
        }
        Ok::<_, String>(writer)
    });
    // The writer waits for the drop's transaction (not for a node's lock).
    for _ in 0..2000 {
        let waits = query_i64(
            &mut db,
            &format!("SELECT count(*) FROM pg_locks WHERE pid = {writer_pid} AND NOT granted"),
        );
        if waits > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    exec(&mut db, "COMMIT");
    let mut writer = writing.join().unwrap().expect("writes after the drop land");
    assert_eq!(query_i64(&mut writer, "SELECT count(*) FROM t"), 40);
    assert_eq!(
        query_i64(&mut db, "SELECT count(*) FROM t WHERE email = 'e33'"),
        1
    );
    assert!(lookup_tables(&cluster).is_empty(), "lookup tables dropped");

    // The other way round: the drop waits for a transaction that wrote.
    exec(
        &mut db,
        "CALL conductor.create_virtual_index('t', ARRAY['email'], true, 't_email')",
    );
    exec(&mut writer, "BEGIN; INSERT INTO t VALUES (41, 'e41')");
    let cfg = cluster.pg_config();
    let dropping = std::thread::spawn(move || {
        let mut c = cfg.connect(conductor_e2e::postgres::NoTls).unwrap();
        c.batch_execute("SELECT conductor.drop_virtual_index('t_email')")
            .map_err(|e| pg_err(&e))
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    exec(&mut writer, "INSERT INTO t VALUES (42, 'e42'); COMMIT");
    dropping.join().unwrap().expect("the drop goes on");
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM t"), 42);
    assert!(lookup_tables(&cluster).is_empty(), "lookup tables dropped");
}

/// A transaction that removes a unique value from a row (DELETE, or an
/// UPDATE of the value) and then writes the value on another shard would
/// move the value's entry, committed at once, away from a row its rollback
/// brings back. It is refused instead (0A000, nothing written), so after
/// the rollback the row is still found through the index and the value is
/// still unique; on the same shard, or once the removal committed, the
/// value is written as usual.
#[test]
fn a_unique_value_removed_and_rewritten_in_one_transaction() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE acct (id bigint NOT NULL, login text) SERVER cluster;
         SELECT conductor.create_distributed_table('acct', 'id', 4);",
    );
    exec(
        &mut db,
        "CALL conductor.create_virtual_index('acct', ARRAY['login'], true, 'acct_login')",
    );
    let shard_of = |db: &mut Client, id: i64| {
        query_i64(
            db,
            &format!("SELECT conductor.shard_for('acct', {id}::bigint)::bigint"),
        )
    };
    let a = 1i64;
    let same = (2..200)
        .find(|&i| shard_of(&mut db, i) == shard_of(&mut db, a))
        .unwrap();
    let other = (2..200)
        .find(|&i| shard_of(&mut db, i) != shard_of(&mut db, a))
        .unwrap();
    let third = (2..200)
        .find(|&i| {
            let s = shard_of(&mut db, i);
            s != shard_of(&mut db, a) && s != shard_of(&mut db, other)
        })
        .unwrap();
    exec(&mut db, &format!("INSERT INTO acct VALUES ({a}, 'ann')"));
    let found = |db: &mut Client| -> Vec<String> {
        rows(db, "SELECT id FROM acct WHERE login = 'ann'").unwrap()
    };
    for (removal, write) in [
        (
            format!("DELETE FROM acct WHERE id = {a}"),
            format!("INSERT INTO acct VALUES ({other}, 'ann')"),
        ),
        (
            format!("UPDATE acct SET login = 'bob' WHERE id = {a}"),
            format!("INSERT INTO acct VALUES ({other}, 'ann')"),
        ),
        (
            format!("DELETE FROM acct WHERE id = {a}"),
            format!("INSERT INTO acct VALUES ({other}, 'x'); UPDATE acct SET login = 'ann' WHERE id = {other}"),
        ),
    ] {
        for savepoint in [false, true] {
            exec(&mut db, "BEGIN");
            if savepoint {
                exec(&mut db, "SAVEPOINT s");
            }
            exec(&mut db, &removal);
            let e = db.batch_execute(&write).unwrap_err();
            assert_eq!(
                e.code().map(|c| c.code()),
                Some("0A000"),
                "{removal}; {write}: {}",
                pg_err(&e)
            );
            exec(
                &mut db,
                if savepoint {
                    "ROLLBACK TO SAVEPOINT s; COMMIT"
                } else {
                    "ROLLBACK"
                },
            );
            assert_eq!(found(&mut db), [a.to_string()], "after {removal}; {write}");
            let (missing, _, _) = verify(&mut db, "acct_login", false);
            assert_eq!(missing, 0, "after {removal}; {write}");
            let e = db
                .batch_execute(&format!("INSERT INTO acct VALUES ({third}, 'ann')"))
                .unwrap_err();
            assert_eq!(e.code().map(|c| c.code()), Some("23505"), "{}", pg_err(&e));
        }
    }
    // On the same shard the value moves within the transaction.
    exec(
        &mut db,
        &format!("BEGIN; DELETE FROM acct WHERE id = {a}; INSERT INTO acct VALUES ({same}, 'ann'); COMMIT"),
    );
    assert_eq!(found(&mut db), [same.to_string()]);
    // Once the removal committed, to another shard too.
    exec(&mut db, &format!("DELETE FROM acct WHERE id = {same}"));
    exec(
        &mut db,
        &format!("BEGIN; INSERT INTO acct VALUES ({other}, 'ann'); COMMIT"),
    );
    assert_eq!(found(&mut db), [other.to_string()]);
    let (missing, _, _) = verify(&mut db, "acct_login", false);
    assert_eq!(missing, 0);
}
