//! Placement: every row sits on exactly the shard `conductor.shard_for`
//! names (asked of the node directly, and no row anywhere else), and
//! `conductor.shard_for` agrees with an independent implementation of the
//! placement hash (docs/ARCHITECTURE.md, Placement) written here from its
//! description.

mod common;

use common::{exec, node_index, query_i64, shard_map};
use conductor_e2e::{pg_err, postgres, serde_json, Cluster, ClusterOptions};
use std::collections::BTreeMap;

// ---- Placement hash version 1, written independently of conductor-core --

enum Key<'a> {
    Int(i64),
    Text(&'a str),
    Uuid([u8; 16]),
}

fn spec_shard(key: &Key, n: u32) -> i32 {
    let h = match key {
        Key::Int(i) => xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes()),
        Key::Text(s) => xxhash_rust::xxh3::xxh3_64(s.as_bytes()),
        Key::Uuid(u) => xxhash_rust::xxh3::xxh3_64(u),
    };
    // jump_consistent_hash, as the spec writes it.
    let mut key = h;
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < n as i64 {
        b = j;
        key = key.wrapping_mul(2862933555777941757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as i32
}

fn uuid_bytes(s: &str) -> [u8; 16] {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    assert_eq!(hex.len(), 32, "uuid {s}");
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

// ---- helpers --------------------------------------------------------------

/// key (as Postgres' text form) -> shard, as conductor.shard_for says, for
/// every row of `table`.
fn shard_for_rows(db: &mut postgres::Client, table: &str, key: &str) -> BTreeMap<String, i32> {
    let sql = format!("SELECT {key}::text, conductor.shard_for('{table}', {key}) FROM {table}");
    db.query(sql.as_str(), &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", pg_err(&e)))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// key (text form) -> shard, as found by asking every node for the rows of
/// every shard table of `table`. Panics on a key found twice.
fn shard_of_rows_on_nodes(
    cluster: &Cluster,
    db: &mut postgres::Client,
    table: &str,
    key: &str,
) -> (BTreeMap<String, i32>, usize) {
    let mut found = BTreeMap::new();
    let mut total = 0;
    for (shard, (node_id, remote_table)) in shard_map(db, table) {
        let rows = cluster.node_query(
            node_index(&node_id),
            &format!("SELECT \"{key}\" FROM \"{remote_table}\""),
            &[],
        );
        total += rows.len();
        for row in rows {
            let k = match &row[0] {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if let Some(prev) = found.insert(k.clone(), shard) {
                panic!("{table}: key {k} on shard {prev} and shard {shard}");
            }
        }
    }
    (found, total)
}

/// Loads `rows_sql` (a SELECT producing the table's rows) into `table`,
/// then checks every row against the node that holds its shard.
fn check_rows_on_their_shards(
    cluster: &Cluster,
    db: &mut postgres::Client,
    table: &str,
    key: &str,
    expected_rows: i64,
) {
    assert_eq!(
        query_i64(db, &format!("SELECT count(*) FROM {table}")),
        expected_rows
    );
    let named = shard_for_rows(db, table, key);
    assert_eq!(named.len() as i64, expected_rows, "{table}: distinct keys");
    let (found, total) = shard_of_rows_on_nodes(cluster, db, table, key);
    assert_eq!(
        total as i64, expected_rows,
        "{table}: rows over all shard tables"
    );
    // Same keys, each on the shard shard_for names.
    let mut misplaced = Vec::new();
    for (k, shard) in &named {
        match found.get(k) {
            Some(s) if s == shard => {}
            other => misplaced.push(format!("{k}: shard_for {shard}, on node shard {other:?}")),
        }
    }
    assert!(
        misplaced.is_empty(),
        "{table}: {} of {} rows misplaced, e.g. {:?}",
        misplaced.len(),
        named.len(),
        &misplaced[..misplaced.len().min(5)]
    );
    // The rows are spread: every shard holds some.
    let used: std::collections::BTreeSet<i32> = found.values().copied().collect();
    assert_eq!(
        used.len(),
        shard_map(db, table).len(),
        "{table}: every shard used"
    );
}

#[test]
fn rows_sit_on_the_shard_shard_for_names() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 4,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE pl_bigint (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('pl_bigint', 'id', shard_count => 16);
         CREATE FOREIGN TABLE pl_text (k text NOT NULL, v integer) SERVER cluster;
         SELECT conductor.create_distributed_table('pl_text', 'k', shard_count => 16);
         CREATE FOREIGN TABLE pl_uuid (u uuid NOT NULL, v integer) SERVER cluster;
         SELECT conductor.create_distributed_table('pl_uuid', 'u', shard_count => 7);

         INSERT INTO pl_bigint
              SELECT i * 7919 - 5000000, 'v' || i FROM generate_series(1, 3000) i;
         INSERT INTO pl_bigint VALUES (-9223372036854775808, 'min'), (9223372036854775807, 'max'), (0, 'zero');
         INSERT INTO pl_text SELECT 'user-' || i || '@example.com', i FROM generate_series(1, 2000) i;
         INSERT INTO pl_text VALUES (''::text, -1), ('🦀', -2), (E'e\\u0301', -3), ('é', -4),
                                    (repeat('long', 1000), -5), ('  spaced  ', -6);
         INSERT INTO pl_uuid SELECT gen_random_uuid(), i FROM generate_series(1, 1500) i;
         INSERT INTO pl_uuid VALUES ('00000000-0000-0000-0000-000000000000', 0),
                                    ('ffffffff-ffff-ffff-ffff-ffffffffffff', 0);",
    );
    check_rows_on_their_shards(&cluster, &mut db, "pl_bigint", "id", 3003);
    check_rows_on_their_shards(&cluster, &mut db, "pl_text", "k", 2006);
    check_rows_on_their_shards(&cluster, &mut db, "pl_uuid", "u", 1502);

    // And each row's shard is the one the spec computes.
    for (k, shard) in shard_for_rows(&mut db, "pl_bigint", "id") {
        assert_eq!(
            spec_shard(&Key::Int(k.parse().unwrap()), 16),
            shard,
            "bigint {k}"
        );
    }
    for (k, shard) in shard_for_rows(&mut db, "pl_text", "k") {
        assert_eq!(spec_shard(&Key::Text(&k), 16), shard, "text {k:?}");
    }
    for (k, shard) in shard_for_rows(&mut db, "pl_uuid", "u") {
        assert_eq!(spec_shard(&Key::Uuid(uuid_bytes(&k)), 7), shard, "uuid {k}");
    }
}

#[test]
fn shard_for_matches_an_independent_implementation() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    let counts = [1u32, 2, 3, 16, 100, 1000];
    for n in counts {
        exec(
            &mut db,
            &format!(
                "CREATE FOREIGN TABLE sf_int_{n} (id bigint NOT NULL) SERVER cluster;
                 SELECT conductor.create_distributed_table('sf_int_{n}', 'id', shard_count => {n});
                 CREATE FOREIGN TABLE sf_text_{n} (k varchar NOT NULL) SERVER cluster;
                 SELECT conductor.create_distributed_table('sf_text_{n}', 'k', shard_count => {n});
                 CREATE FOREIGN TABLE sf_uuid_{n} (u uuid NOT NULL) SERVER cluster;
                 SELECT conductor.create_distributed_table('sf_uuid_{n}', 'u', shard_count => {n});"
            ),
        );
    }

    // Integer keys: extremes, small values, a spread; as bigint, and the
    // same values as integer/smallint where they fit (same placement).
    let mut ints: Vec<i64> = vec![i64::MIN, i64::MIN + 1, i64::MAX, i64::MAX - 1, 0, 1, -1];
    ints.extend(-1000..1000);
    let mut x: u64 = 0x9E3779B97F4A7C15;
    for _ in 0..3000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        ints.push(x as i64);
    }
    let texts: Vec<String> = (0..2000)
        .map(|i| format!("key-{i}"))
        .chain(
            [
                "",
                "a",
                "🦀",
                "e\u{301}",
                "\u{e9}",
                "日本語",
                "with 'quote' and \"dq\"",
                "tab\there",
            ]
            .map(String::from),
        )
        .chain([("x".repeat(10_000))])
        .collect();
    let uuids: Vec<String> = db
        .query(
            "SELECT gen_random_uuid()::text FROM generate_series(1, 2000)
             UNION ALL SELECT '00000000-0000-0000-0000-000000000000'
             UNION ALL SELECT 'ffffffff-ffff-ffff-ffff-ffffffffffff'
             UNION ALL SELECT '0123456789abcdef0123456789abcdef'::uuid::text",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();

    for n in counts {
        let got: Vec<(i64, i32, Option<i32>)> = db
            .query(
                &format!(
                    "SELECT k, conductor.shard_for('sf_int_{n}', k),
                            CASE WHEN k BETWEEN -2147483648 AND 2147483647
                                 THEN conductor.shard_for('sf_int_{n}', k::integer) END
                       FROM unnest($1::bigint[]) k"
                ),
                &[&ints],
            )
            .unwrap_or_else(|e| panic!("shard_for ints n={n}: {}", pg_err(&e)))
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        assert_eq!(got.len(), ints.len());
        for (k, s, s4) in got {
            let want = spec_shard(&Key::Int(k), n);
            assert_eq!(s, want, "shard_for(bigint {k}) with {n} shards");
            if let Some(s4) = s4 {
                assert_eq!(s4, want, "shard_for(integer {k}) with {n} shards");
            }
        }
        let small: Vec<(i16, i32)> = db
            .query(
                &format!(
                    "SELECT k::smallint, conductor.shard_for('sf_int_{n}', k::smallint)
                       FROM generate_series(-32768, 32767, 97) k"
                ),
                &[],
            )
            .unwrap_or_else(|e| panic!("shard_for smallint: {}", pg_err(&e)))
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        for (k, s) in small {
            assert_eq!(s, spec_shard(&Key::Int(k as i64), n), "smallint {k}");
        }

        let got: Vec<(String, i32, i32)> = db
            .query(
                &format!(
                    "SELECT k, conductor.shard_for('sf_text_{n}', k),
                               conductor.shard_for('sf_text_{n}', k::varchar)
                       FROM unnest($1::text[]) k"
                ),
                &[&texts],
            )
            .unwrap_or_else(|e| panic!("shard_for texts n={n}: {}", pg_err(&e)))
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        assert_eq!(got.len(), texts.len());
        for (k, s, sv) in got {
            let want = spec_shard(&Key::Text(&k), n);
            assert_eq!(s, want, "shard_for(text {k:?}) with {n} shards");
            assert_eq!(sv, want, "shard_for(varchar {k:?}) with {n} shards");
        }

        let got: Vec<(String, i32)> = db
            .query(
                &format!(
                    "SELECT k::text, conductor.shard_for('sf_uuid_{n}', k)
                       FROM unnest($1::text[]::uuid[]) k"
                ),
                &[&uuids],
            )
            .unwrap_or_else(|e| panic!("shard_for uuids n={n}: {}", pg_err(&e)))
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(got.len(), uuids.len());
        for (k, s) in got {
            assert_eq!(
                s,
                spec_shard(&Key::Uuid(uuid_bytes(&k)), n),
                "shard_for(uuid {k}) with {n} shards"
            );
        }
    }

    // A key of the wrong type is refused, not silently hashed.
    let e = db
        .query_one("SELECT conductor.shard_for('sf_int_16', 'abc'::text)", &[])
        .expect_err("text key for a bigint table");
    let db_err = e.as_db_error().expect("db error");
    assert_eq!(db_err.code().code(), "42804", "{}", pg_err(&e));
    let e = db
        .query_one("SELECT conductor.shard_for('sf_int_16', now()::date)", &[])
        .expect_err("date key");
    assert_eq!(
        e.as_db_error().unwrap().code().code(),
        "42804",
        "{}",
        pg_err(&e)
    );
}
