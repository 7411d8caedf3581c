//! Large inputs: IN lists and arrays of any length (100,000 elements on 1-
//! and 16-shard tables keyed by bigint, text and uuid agree with a local
//! table: long lists travel as one JSON argument, not one SQLite variable
//! per element; lists of floats and bytea, which take one variable per
//! element, stay in Postgres once a statement's lists would pass SQLite's
//! limit), conditions of thousands of ORed or ANDed terms (in WHERE, an
//! aggregate's FILTER, a join's ON and HAVING, beyond SQLite's expression
//! depth of 1,000), and large values (64 MiB text and bytea round-trip
//! when the node accepts bodies that large; beyond its limit the ERROR
//! names the node, its limit and the conductor-node flag that raises it).

mod common;

use common::{describe, exec, expect_db_error};
use conductor_e2e::postgres::{Client, SimpleQueryMessage};
use conductor_e2e::{pg_err, Cluster, ClusterOptions};

fn texts(db: &mut Client, sql: &str) -> Vec<String> {
    db.simple_query(sql)
        .unwrap_or_else(|e| panic!("{}: {}", &sql[..sql.len().min(300)], pg_err(&e)))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("∅").to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            ),
            _ => None,
        })
        .collect()
}

const ROWS: i64 = 20_000;
const LIST: i64 = 100_000;

/// `int4send(i)` as hex: the big-endian bytes of `i`.
fn hex4(i: i32) -> String {
    i.to_be_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// 9,000 float literals: `step`, 2 × `step`, …
fn floats(step: f64) -> String {
    (1..=9_000)
        .map(|i| format!("{}", i as f64 * step))
        .collect::<Vec<_>>()
        .join(", ")
}

/// 9,000 bytea literals: `int4send` of `step`, 2 × `step`, …
fn blobs(step: i32) -> String {
    (1..=9_000)
        .map(|i: i32| format!("'\\x{}'::bytea", hex4(i * step)))
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
fn long_in_lists_and_arrays_agree_with_a_local_table() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        ..Default::default()
    });
    // key type, SQL type, key of integer i
    let kinds = [
        ("int", "bigint", "({i})::bigint"),
        ("text", "text", "'k' || ({i})"),
        ("uuid", "uuid", "md5(({i})::text)::uuid"),
    ];
    for (name, ty, key_of) in kinds {
        let key = |i: &str| key_of.replace("{i}", i);
        exec(
            &mut db,
            &format!(
                "CREATE TABLE l_{name} (k {ty} PRIMARY KEY, n int, v text, f float8, b bytea);
                 INSERT INTO l_{name} SELECT {}, i, 'v' || (i % 50), i * 1.5, int4send(i)
                   FROM generate_series(1, {ROWS}) i;",
                key("i")
            ),
        );
        for shards in [1, 16] {
            let t = format!("d_{name}_{shards}");
            exec(
                &mut db,
                &format!(
                    "CREATE FOREIGN TABLE {t} (k {ty} NOT NULL, n int, v text, f float8, b bytea) SERVER cluster;
                     SELECT conductor.create_distributed_table('{t}', 'k', {shards});
                     INSERT INTO {t} SELECT * FROM l_{name};"
                ),
            );
        }
        // 100,000 values: about a fifth present (keys 1..20000 of
        // (i * 7) % 120000), no duplicates, plus a NULL.
        let elements = format!(
            "SELECT {} FROM generate_series(1, {LIST}) i UNION ALL SELECT NULL",
            key("(i * 7) % 120000")
        );
        let literal_list: Vec<String> = texts(
            &mut db,
            &format!(
                "SELECT quote_literal(x) || '::{ty}' FROM ({elements}) s(x) WHERE x IS NOT NULL"
            ),
        );
        assert_eq!(literal_list.len() as i64, LIST);
        let literal_list = literal_list.join(", ");
        let queries = [
            // an array computed at execution (an InitPlan parameter)
            format!("SELECT count(*), coalesce(sum(n), 0) FROM {{T}} WHERE k = ANY(ARRAY({elements}))"),
            // a literal IN list of 100,000 constants
            format!("SELECT count(*), coalesce(sum(n), 0) FROM {{T}} WHERE k IN ({literal_list})"),
            // a long list on a column that is not the key (every shard)
            format!(
                "SELECT count(*), coalesce(sum(n), 0) FROM {{T}} WHERE n = ANY(ARRAY(SELECT (i * 3) % 30000 FROM generate_series(1, {LIST}) i))"
            ),
            // literal lists of 40,000 floats and of 40,000 bytea values on
            // columns that are not the key: they have no exact JSON form,
            // so past SQLite's argument limit Postgres filters them (never
            // an error)
            format!(
                "SELECT count(*), coalesce(sum(n), 0) FROM {{T}} WHERE f IN ({})",
                (1..=40_000).map(|i| format!("{}", i as f64 * 3.0)).collect::<Vec<_>>().join(", ")
            ),
            format!(
                "SELECT count(*), coalesce(sum(n), 0) FROM {{T}} WHERE b IN ({})",
                (1..=40_000)
                    .map(|i: i32| format!("'\\x{}'::bytea", hex4(i * 3)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            // lists of floats and bytea short enough to be pushed one by
            // one, whose arguments together would pass SQLite's limit
            // (four lists of 9,000; a FILTER's list is written once per
            // partial result, four for avg): the lists that no longer fit
            // are filtered by Postgres (never an error)
            format!(
                "SELECT count(*), coalesce(sum(n), 0) FROM {{T}} WHERE f IN ({f9}) AND b IN ({b9}) AND (f IN ({f9b}) OR b IN ({b9b}))",
                f9 = floats(3.0),
                b9 = blobs(3),
                f9b = floats(4.5),
                b9b = blobs(5),
            ),
            format!(
                "SELECT count(*), avg(f) FILTER (WHERE f IN ({})), count(*) FILTER (WHERE b IN ({})) FROM {{T}}",
                floats(3.0),
                blobs(3)
            ),
            // the list combined with other conditions
            format!(
                "SELECT count(*), coalesce(sum(n), 0) FROM {{T}} WHERE (k = ANY(ARRAY({elements})) AND n % 2 = 0) OR n < 10"
            ),
            // rows, not only aggregates
            format!(
                "SELECT k, n, v FROM {{T}} WHERE k = ANY(ARRAY({elements})) ORDER BY n LIMIT 5 OFFSET 1000"
            ),
        ];
        for (qi, q) in queries.iter().enumerate() {
            let want = texts(&mut db, &q.replace("{T}", &format!("l_{name}")));
            for shards in [1, 16] {
                let t = format!("d_{name}_{shards}");
                let got = texts(&mut db, &q.replace("{T}", &t));
                assert_eq!(got, want, "{name} key, {shards} shards, query {qi}");
            }
            eprintln!("{name} key, query {qi}: {want:?} on 1 and 16 shards");
        }
        // An array parameter bound by the client (extended protocol).
        if name == "int" {
            let keys: Vec<i64> = (1..=LIST).map(|i| (i * 7) % 120_000).collect();
            let want: i64 = db
                .query_one("SELECT count(*) FROM l_int WHERE k = ANY($1)", &[&keys])
                .unwrap()
                .get(0);
            for shards in [1, 16] {
                let got: i64 = db
                    .query_one(
                        &format!("SELECT count(*) FROM d_int_{shards} WHERE k = ANY($1)"),
                        &[&keys],
                    )
                    .unwrap_or_else(|e| panic!("{}", pg_err(&e)))
                    .get(0);
                assert_eq!(got, want, "bound array, {shards} shards");
            }
            // A bound array of 40,000 bytea values in a generic plan (in a
            // custom one it is a constant): no JSON form, so more arguments
            // than SQLite takes; Postgres filters (never an error).
            exec(&mut db, "SET plan_cache_mode = force_generic_plan");
            let blobs: Vec<Vec<u8>> = (1..=40_000)
                .map(|i: i32| (i * 3).to_be_bytes().to_vec())
                .collect();
            let want_blobs: i64 = db
                .query_one("SELECT count(*) FROM l_int WHERE b = ANY($1)", &[&blobs])
                .unwrap()
                .get(0);
            for shards in [1, 16] {
                let got: i64 = db
                    .query_one(
                        &format!("SELECT count(*) FROM d_int_{shards} WHERE b = ANY($1)"),
                        &[&blobs],
                    )
                    .unwrap_or_else(|e| panic!("{}", pg_err(&e)))
                    .get(0);
                assert_eq!(got, want_blobs, "bound bytea array, {shards} shards");
            }
            exec(&mut db, "RESET plan_cache_mode");
            // And DELETE with such a list reaches exactly those rows.
            let deleted = db
                .execute("DELETE FROM d_int_16 WHERE k = ANY($1)", &[&keys])
                .unwrap_or_else(|e| panic!("{}", pg_err(&e)));
            assert_eq!(deleted as i64, want);
        }
    }
}

/// An OR (or AND) of thousands of terms, as an ORM writes a batch of
/// lookups, goes to the nodes as one condition that SQLite can parse (it
/// refuses expressions more than 1,000 deep) and answers as Postgres.
#[test]
fn long_or_and_and_chains_agree_with_a_local_table() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    let columns = "id bigint NOT NULL, k integer NOT NULL, n integer, s text";
    exec(
        &mut db,
        &format!(
            "CREATE TABLE l_c ({columns});
             CREATE FOREIGN TABLE c ({columns}) SERVER cluster OPTIONS (primary_key 'id, k');
             SELECT conductor.create_distributed_table('c', 'id', shard_count => 4);
             CREATE TABLE l_c2 ({columns});
             CREATE FOREIGN TABLE c2 ({columns}) SERVER cluster OPTIONS (primary_key 'id, k');
             SELECT conductor.create_distributed_table('c2', 'id', colocate_with => 'c');
             INSERT INTO l_c SELECT i % 500, i, i % 3000, 's' || (i % 4000) FROM generate_series(1, 6000) i;
             INSERT INTO l_c2 SELECT * FROM l_c WHERE k % 3 = 0;
             INSERT INTO c SELECT * FROM l_c;
             INSERT INTO c2 SELECT * FROM l_c2;"
        ),
    );
    let any = |template: &str, terms: i32| {
        (0..terms)
            .map(|i| template.replace("{i}", &(i * 2).to_string()))
            .collect::<Vec<_>>()
    };
    let statements = [
        format!(
            "SELECT count(*), sum(n) FROM {{c}} WHERE {}",
            any("n = {i}", 2_500).join(" OR ")
        ),
        format!(
            "SELECT count(*) FROM {{c}} WHERE {}",
            any("(id = {i} AND n > 100)", 1_500).join(" OR ")
        ),
        format!(
            "SELECT count(*) FROM {{c}} WHERE NOT ({})",
            any("s = 's{i}'", 2_500).join(" OR ")
        ),
        format!(
            "SELECT count(*) FROM {{c}} WHERE {}",
            any("n <> {i}", 2_500).join(" AND ")
        ),
        format!(
            "SELECT id % 7, count(*) FILTER (WHERE {}) FROM {{c}} GROUP BY 1",
            any("n = {i}", 2_000).join(" OR ")
        ),
        format!(
            "SELECT count(*), count(b.k) FROM {{c}} a LEFT JOIN {{c2}} b ON a.id = b.id AND a.k = b.k AND ({})",
            any("b.n = {i}", 2_000).join(" OR ")
        ),
        format!(
            "SELECT id, count(*) FROM {{c}} GROUP BY id HAVING {}",
            any("max(n) = {i}", 2_000).join(" OR ")
        ),
        // equalities of the key, some among other terms: one list, split
        // per shard
        format!(
            "SELECT count(*), sum(n) FROM {{c}} WHERE {} OR s = 's7' OR id = 499",
            any("id = {i}", 120).join(" OR ")
        ),
        // more values than SQLite takes arguments in one statement (601
        // per term, none common to all terms, which Postgres would take
        // out of the OR): Postgres evaluates the condition
        format!(
            "SELECT count(*), sum(n) FROM {{c}} WHERE {}",
            (0..60)
                .map(|i| format!(
                    "(id = {} AND n IN ({}))",
                    i * 8,
                    (0..600).map(|v| (v * 5 + i).to_string()).collect::<Vec<_>>().join(", ")
                ))
                .collect::<Vec<_>>()
                .join(" OR ")
        ),
    ];
    let mut mismatches = Vec::new();
    for sql in &statements {
        let mut local = texts(&mut db, &sql.replace("{c}", "l_c").replace("{c2}", "l_c2"));
        let mut dist = texts(&mut db, &sql.replace("{c}", "c").replace("{c2}", "c2"));
        local.sort();
        dist.sort();
        if local != dist {
            mismatches.push(format!(
                "{}…\n  local: {local:?}\n  conductor: {dist:?}",
                &sql[..120]
            ));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn large_values_round_trip_or_name_the_node_limit() {
    let (mut cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE big (id int NOT NULL, t text, b bytea) SERVER cluster;
         SELECT conductor.create_distributed_table('big', 'id', 4);",
    );
    // Beyond the node's request limit (16 MiB here): a clear ERROR.
    for i in 0..cluster.node_count() {
        cluster.restart_node_with_args(i, &["--max-body-bytes", "16777216"]);
    }
    let e = expect_db_error(
        db.batch_execute("INSERT INTO big VALUES (1, repeat('x', 50000000), NULL)"),
        "50 MB value with the default node limit",
    );
    let all = describe(&e);
    eprintln!("{all}");
    assert!(all.contains("node-"), "{all}");
    assert!(all.contains("16777216"), "names the limit: {all}");
    assert!(all.contains("--max-body-bytes"), "names the flag: {all}");
    assert!(!all.contains("Broken pipe"), "{all}");
    assert_eq!(texts(&mut db, "SELECT count(*) FROM big"), vec!["0"]);

    // Nodes with the default limit (256 MiB bodies): 64 MiB text and
    // bytea round-trip.
    for i in 0..cluster.node_count() {
        // A debug build spends seconds converting a 64 MiB row between the
        // fetch and the write of a row-by-row UPDATE: longer than the
        // default 10 s a transaction's stream may sit idle.
        cluster.restart_node_with_args(i, &["--stream-idle-timeout-ms", "120000"]);
    }
    exec(
        &mut db,
        "CREATE TABLE big_local (id int, t text, b bytea);
         INSERT INTO big_local VALUES
             (1, repeat(md5('a') || 'é', 2 * 1024 * 1024), NULL),
             (2, NULL, decode(repeat('00ff7f80', 16 * 1024 * 1024), 'hex'));
         INSERT INTO big SELECT * FROM big_local WHERE id = 1;
         INSERT INTO big SELECT * FROM big_local WHERE id = 2;",
    );
    let check = "SELECT id, octet_length(t), md5(t), length(b), md5(b) FROM {T} ORDER BY id";
    let want = texts(&mut db, &check.replace("{T}", "big_local"));
    let got = texts(&mut db, &check.replace("{T}", "big"));
    eprintln!("64 MiB values: {want:?}");
    assert_eq!(got, want);
    assert!(want[0].starts_with(&format!("1|{}|", 33 * 2 * 1024 * 1024 + 2 * 1024 * 1024)));
    assert!(want[1].contains(&format!("|{}|", 64 * 1024 * 1024)));
    // Updated row by row (fetched first, inside the transaction), and read
    // back by key (a bounded lookup). A row over the node's 256 MiB cap on
    // one pipeline result could not be fetched this way: each row here
    // carries one 64 MiB value.
    exec(
        &mut db,
        "UPDATE big SET t = t || 'z' WHERE id = 1; UPDATE big_local SET t = t || 'z' WHERE id = 1;",
    );
    let check = "SELECT octet_length(t), md5(t), md5(b) FROM {T} WHERE id IN (1, 2) ORDER BY id";
    assert_eq!(
        texts(&mut db, &check.replace("{T}", "big")),
        texts(&mut db, &check.replace("{T}", "big_local"))
    );
}
