//! INSERT … ON CONFLICT DO NOTHING on a distributed table, checked against
//! a local table with the same primary key: random single-row inserts,
//! multi-row VALUES (with duplicates inside the statement) and INSERT …
//! SELECT (large enough to span several batches), with and without
//! RETURNING, give the same row counts, the same RETURNING rows and the same
//! final contents. A NOT NULL violation is still an error (unlike SQLite's
//! INSERT OR IGNORE), and a conflict target is refused by Postgres.

mod common;

use common::{describe, exec, expect_db_error, query_i64};
use conductor_e2e::postgres::{Client, SimpleQueryMessage};
use conductor_e2e::{Cluster, ClusterOptions};

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

/// (rows affected, returned rows sorted) of one statement.
fn run(db: &mut Client, sql: &str) -> Result<(u64, Vec<Vec<String>>), String> {
    let messages = db.simple_query(sql).map_err(|e| match e.as_db_error() {
        Some(d) => format!("ERROR {}", d.code().code()),
        None => format!("ERROR {e}"),
    })?;
    let mut count = None;
    let mut rows = Vec::new();
    for m in messages {
        match m {
            SimpleQueryMessage::Row(r) => rows.push(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("∅").to_string())
                    .collect(),
            ),
            SimpleQueryMessage::CommandComplete(n) => count = Some(n),
            _ => {}
        }
    }
    rows.sort();
    Ok((count.expect("command complete"), rows))
}

fn contents(db: &mut Client, table: &str) -> Vec<Vec<String>> {
    run(db, &format!("SELECT id, v, n FROM {table} ORDER BY id"))
        .unwrap()
        .1
}

#[test]
fn do_nothing_matches_a_local_table() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE TABLE oc_local (id bigint PRIMARY KEY, v text NOT NULL, n int);
         CREATE FOREIGN TABLE oc (id bigint NOT NULL, v text NOT NULL, n int) SERVER cluster;
         SELECT conductor.create_distributed_table('oc', 'id', 8);
         ALTER FOREIGN TABLE oc OPTIONS (ADD batch_size '100');",
    );

    let mut rng = Rng(0x5eed_0c0c);
    let mut statements = 0;
    for step in 0..120 {
        let returning = if rng.below(2) == 0 {
            " RETURNING id, v, n"
        } else {
            ""
        };
        let body = match rng.below(4) {
            0 => {
                let k = rng.below(400);
                format!("VALUES ({k}, 's{step}', {})", rng.below(10))
            }
            1 => {
                let rows: Vec<String> = (0..1 + rng.below(25))
                    .map(|_| {
                        let k = rng.below(400);
                        format!("({k}, 'm{step}', {})", rng.below(10))
                    })
                    .collect();
                format!("VALUES {}", rows.join(", "))
            }
            2 => {
                let a = rng.below(1500);
                let b = a + rng.below(600);
                format!("SELECT i, 'g{step}', (i % 7)::int FROM generate_series({a}, {b}) i")
            }
            _ => {
                // Duplicates inside the statement itself.
                let m = 1 + rng.below(300);
                let n = rng.below(700);
                format!(
                    "SELECT i % {m} + 2000, 'd{step}', NULL::int FROM generate_series(0, {n}) i"
                )
            }
        };
        let sql = |t: &str| format!("INSERT INTO {t} {body} ON CONFLICT DO NOTHING{returning}");
        let want = run(&mut db, &sql("oc_local")).unwrap();
        let got = run(&mut db, &sql("oc")).unwrap_or_else(|e| panic!("{}: {e}", sql("oc")));
        assert_eq!(got, want, "step {step}: {}", sql("oc"));
        statements += 1;
    }
    assert_eq!(contents(&mut db, "oc"), contents(&mut db, "oc_local"));
    let rows = query_i64(&mut db, "SELECT count(*) FROM oc");
    assert!(rows > 1000, "the sequence inserted {rows} rows");
    eprintln!("{statements} statements agree; {rows} rows in the end");

    // Inside a transaction that is rolled back: nothing stays.
    exec(
        &mut db,
        "BEGIN; INSERT INTO oc SELECT i, 'r', 0 FROM generate_series(100000, 100500) i ON CONFLICT DO NOTHING; ROLLBACK;",
    );
    assert_eq!(contents(&mut db, "oc"), contents(&mut db, "oc_local"));

    // NOT NULL is still enforced (INSERT OR IGNORE would skip the row).
    for t in ["oc_local", "oc"] {
        let e = expect_db_error(
            db.batch_execute(&format!(
                "INSERT INTO {t} VALUES (999999, NULL, 1) ON CONFLICT DO NOTHING"
            )),
            "NOT NULL under DO NOTHING",
        );
        assert_eq!(e.code().code(), "23502", "{t}: {}", describe(&e));
    }
    // A conflict target is refused by Postgres for a foreign table.
    let e = expect_db_error(
        db.batch_execute("INSERT INTO oc VALUES (1, 'x', 1) ON CONFLICT (id) DO NOTHING"),
        "conflict target",
    );
    assert_eq!(e.code().code(), "42P10", "{}", describe(&e));
    // Without ON CONFLICT a duplicate is still an error.
    let dup = query_i64(&mut db, "SELECT min(id) FROM oc");
    let e = expect_db_error(
        db.batch_execute(&format!("INSERT INTO oc VALUES ({dup}, 'x', 1)")),
        "duplicate without ON CONFLICT",
    );
    assert_eq!(e.code().code(), "23505", "{}", describe(&e));

    // conductor_explain shows the statement the nodes run.
    let sql: String = db
        .query_one(
            "SELECT remote_sql FROM conductor_explain('INSERT INTO oc VALUES (5, ''e'', 1) ON CONFLICT DO NOTHING')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(sql.ends_with("ON CONFLICT DO NOTHING"), "{sql}");
}
