//! Row locks on distributed tables: `SELECT … FOR UPDATE` (and NO KEY
//! UPDATE, SHARE, KEY SHARE) reads inside the node's write transaction, so
//! concurrent lockers of the node wait for each other and a read-modify-write
//! under FOR UPDATE loses no update (NOWAIT and SKIP LOCKED: lock_wait.rs).

mod common;

use common::{describe, exec, expect_db_error, query_i64};
use conductor_e2e::postgres::NoTls;
use conductor_e2e::{pg_err, Cluster, ClusterOptions};
use std::time::{Duration, Instant};

fn setup() -> (Cluster, conductor_e2e::postgres::Client) {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE t (id bigint NOT NULL, v bigint) SERVER cluster;
         SELECT conductor.create_distributed_table('t', 'id', shard_count => 8);
         INSERT INTO t SELECT i, 0 FROM generate_series(1, 20) i;",
    );
    (cluster, db)
}

#[test]
fn two_sessions_incrementing_under_a_row_lock_lose_nothing() {
    let (cluster, mut db) = setup();
    for strength in [
        "FOR UPDATE",
        "FOR NO KEY UPDATE",
        "FOR SHARE",
        "FOR KEY SHARE",
    ] {
        exec(&mut db, "UPDATE t SET v = 0 WHERE id = 5");
        let mut a = cluster.client();
        exec(&mut a, "BEGIN");
        let va = query_i64(&mut a, &format!("SELECT v FROM t WHERE id = 5 {strength}"));
        // The second session's locking read must wait for the first.
        let config = cluster.pg_config();
        let sql = format!("SELECT v FROM t WHERE id = 5 {strength}");
        let second = std::thread::spawn(move || {
            let mut b = config.connect(NoTls).unwrap();
            b.batch_execute("BEGIN").unwrap();
            let started = Instant::now();
            let vb: i64 = b
                .query_one(&sql, &[])
                .unwrap_or_else(|e| panic!("{sql}: {}", pg_err(&e)))
                .get(0);
            let waited = started.elapsed();
            b.batch_execute(&format!("UPDATE t SET v = {} WHERE id = 5", vb + 1))
                .unwrap();
            b.batch_execute("COMMIT").unwrap();
            (vb, waited)
        });
        let held = Duration::from_millis(700);
        std::thread::sleep(held);
        exec(&mut a, &format!("UPDATE t SET v = {} WHERE id = 5", va + 1));
        exec(&mut a, "COMMIT");
        let (vb, waited) = second.join().unwrap();
        let end = query_i64(&mut db, "SELECT v FROM t WHERE id = 5");
        println!(
            "{strength}: first read {va}, second read {vb} after waiting {waited:?}; v = {end}"
        );
        assert_eq!(va, 0);
        assert_eq!(
            vb, 1,
            "{strength}: the second locker read the first's commit"
        );
        assert_eq!(end, 2, "{strength}: no update lost");
        assert!(
            waited >= held - Duration::from_millis(200),
            "{strength}: the second locker did not wait ({waited:?})"
        );
    }
}

#[test]
fn eight_sessions_increment_exactly_as_often_as_they_commit() {
    let (cluster, mut db) = setup();
    const SESSIONS: usize = 8;
    const INCREMENTS: usize = 50;
    let started = Instant::now();
    let workers: Vec<_> = (0..SESSIONS)
        .map(|_| {
            let config = cluster.pg_config();
            std::thread::spawn(move || {
                let mut c = config.connect(NoTls).unwrap();
                let (mut committed, mut failed) = (0u64, 0u64);
                for _ in 0..INCREMENTS {
                    let r = (|| -> Result<(), conductor_e2e::postgres::Error> {
                        c.batch_execute("BEGIN")?;
                        let v: i64 = c
                            .query_one("SELECT v FROM t WHERE id = 7 FOR UPDATE", &[])?
                            .get(0);
                        c.batch_execute(&format!("UPDATE t SET v = {} WHERE id = 7", v + 1))?;
                        c.batch_execute("COMMIT")
                    })();
                    match r {
                        Ok(()) => committed += 1,
                        Err(e) => {
                            // Only a lock wait past the node's busy timeout
                            // may fail, as a serialization error.
                            let code = e.as_db_error().map(|d| d.code().code().to_string());
                            assert_eq!(code.as_deref(), Some("40001"), "{}", pg_err(&e));
                            failed += 1;
                            let _ = c.batch_execute("ROLLBACK");
                        }
                    }
                }
                (committed, failed)
            })
        })
        .collect();
    let (mut committed, mut failed) = (0, 0);
    for w in workers {
        let (c, f) = w.join().unwrap();
        committed += c;
        failed += f;
    }
    let v = query_i64(&mut db, "SELECT v FROM t WHERE id = 7");
    println!(
        "{SESSIONS} sessions x {INCREMENTS}: {committed} committed, {failed} failed, v = {v}, {:?}",
        started.elapsed()
    );
    assert_eq!(
        v as u64, committed,
        "every committed increment counted once"
    );
    assert!(
        committed >= (SESSIONS * INCREMENTS) as u64 * 9 / 10,
        "too many increments failed: {failed}"
    );
}

#[test]
fn a_lock_of_another_table_does_not_lock_this_one() {
    let (_cluster, mut db) = setup();
    exec(&mut db, "CREATE TABLE l (id int); INSERT INTO l VALUES (1)");
    let n = query_i64(
        &mut db,
        "SELECT count(*) FROM (SELECT 1 FROM t JOIN l ON t.id = l.id FOR UPDATE OF l) s",
    );
    assert_eq!(n, 1);
}

/// Two keys of `t` whose shards are on different nodes.
fn keys_on_two_nodes(db: &mut conductor_e2e::postgres::Client) -> (i64, i64) {
    let row = db
        .query_one(
            "SELECT min(i) FILTER (WHERE s.node_id = 'node-0')::bigint,
                    min(i) FILTER (WHERE s.node_id = 'node-1')::bigint
               FROM generate_series(1, 20) i
               JOIN conductor.shards s ON s.table_name = 't'::regclass
                                      AND s.shard_id = conductor.shard_for('t', i::bigint)",
            &[],
        )
        .unwrap_or_else(|e| panic!("keys on two nodes: {}", pg_err(&e)));
    (row.get(0), row.get(1))
}

/// A statement that writes (or locks) rows on two nodes takes both nodes'
/// write locks. Sessions running such statements at once queue for them as
/// for row locks of a local table: every statement succeeds, none waits for
/// the node's busy timeout. (Sent to both nodes at once, two such statements
/// could each take one node and wait for the other until the busy timeout
/// failed them both with 40001.)
#[test]
fn sessions_writing_the_same_two_nodes_queue_instead_of_deadlocking() {
    let (cluster, mut db) = setup();
    exec(
        &mut db,
        "CREATE TABLE l (id bigint PRIMARY KEY, v bigint);
         INSERT INTO l SELECT i, 0 FROM generate_series(1, 20) i;",
    );
    let (a, b) = keys_on_two_nodes(&mut db);
    const SESSIONS: usize = 8;
    const ROUNDS: usize = 10;
    for table in ["l", "t"] {
        let started = Instant::now();
        let workers: Vec<_> = (0..SESSIONS)
            .map(|_| {
                let config = cluster.pg_config();
                std::thread::spawn(move || {
                    let mut c = config.connect(NoTls).unwrap();
                    let mut errors = Vec::new();
                    let mut slowest = Duration::ZERO;
                    for round in 0..ROUNDS {
                        let sql = if round % 2 == 0 {
                            format!("UPDATE {table} SET v = v + 1 WHERE id IN ({a}, {b})")
                        } else {
                            format!(
                                "BEGIN;
                                 SELECT v FROM {table} WHERE id IN ({a}, {b}) FOR UPDATE;
                                 UPDATE {table} SET v = v + 1 WHERE id IN ({a}, {b});
                                 COMMIT"
                            )
                        };
                        let t0 = Instant::now();
                        if let Err(e) = c.batch_execute(&sql) {
                            errors.push(pg_err(&e));
                            let _ = c.batch_execute("ROLLBACK");
                        }
                        slowest = slowest.max(t0.elapsed());
                    }
                    (errors, slowest)
                })
            })
            .collect();
        let mut errors = Vec::new();
        let mut slowest = Duration::ZERO;
        for w in workers {
            let (e, s) = w.join().unwrap();
            errors.extend(e);
            slowest = slowest.max(s);
        }
        let sums = query_i64(
            &mut db,
            &format!("SELECT sum(v)::bigint FROM {table} WHERE id IN ({a}, {b})"),
        );
        println!(
            "{table}: {} errors, slowest statement {slowest:?}, sum {sums}, {:?}",
            errors.len(),
            started.elapsed()
        );
        assert!(errors.is_empty(), "{table}: {errors:#?}");
        assert_eq!(
            sums,
            (2 * SESSIONS * ROUNDS) as i64,
            "{table}: every increment counted"
        );
        assert!(
            slowest < Duration::from_secs(3),
            "{table}: a statement waited {slowest:?}"
        );
    }
}

/// Two servers may register the same nodes (their tables named apart on
/// them). Each registered node id has its own remote transaction, and a
/// node's database has one write lock: a transaction that wrote through one
/// server and then writes the same node through the other is refused at
/// once, instead of waiting for its own lock until the busy timeout and
/// failing as if another session held it. Reads through both, and writes
/// through each in its own transaction, work.
#[test]
fn one_transaction_writing_a_node_through_two_servers_is_refused_at_once() {
    let (cluster, mut db) = setup();
    exec(
        &mut db,
        "CREATE SERVER cluster2 FOREIGN DATA WRAPPER conductor",
    );
    for i in 0..cluster.node_count() {
        db.execute(
            "SELECT conductor.add_node('cluster2', $1, $2)",
            &[&format!("other-{i}"), &cluster.node_url(i)],
        )
        .unwrap_or_else(|e| panic!("add_node cluster2: {}", pg_err(&e)));
    }
    exec(
        &mut db,
        "CREATE FOREIGN TABLE u (id bigint NOT NULL, v bigint) SERVER cluster2
             OPTIONS (table_name 'u_remote');
         SELECT conductor.create_distributed_table('u', 'id', shard_count => 8);
         INSERT INTO u SELECT i, 0 FROM generate_series(1, 20) i;",
    );
    // One statement per implicit transaction: a query string of several
    // statements is one transaction.
    for sql in [
        "UPDATE t SET v = v + 1",
        "UPDATE u SET v = v + 1",
        "BEGIN;
         UPDATE t SET v = v + 1;
         SELECT count(*) FROM u;
         COMMIT;",
        "BEGIN ISOLATION LEVEL REPEATABLE READ;
         SELECT count(*) FROM t;
         SELECT count(*) FROM u;
         UPDATE u SET v = v + 1;
         COMMIT;",
    ] {
        exec(&mut db, sql);
    }
    assert_eq!(query_i64(&mut db, "SELECT sum(v)::bigint FROM t"), 40);
    assert_eq!(query_i64(&mut db, "SELECT sum(v)::bigint FROM u"), 40);

    for (what, setup_sql, sql) in [
        (
            "a second statement",
            "UPDATE t SET v = v + 1",
            "UPDATE u SET v = v + 1",
        ),
        (
            "one statement",
            "SELECT 1",
            "WITH a AS (UPDATE t SET v = v + 1 RETURNING id)
             UPDATE u SET v = v + 1 WHERE id IN (SELECT id FROM a)",
        ),
        (
            "row locks",
            "SELECT v FROM u FOR UPDATE",
            "SELECT v FROM t FOR UPDATE",
        ),
    ] {
        exec(&mut db, "BEGIN");
        exec(&mut db, setup_sql);
        let started = Instant::now();
        let e = expect_db_error(db.execute(sql, &[]), what);
        let took = started.elapsed();
        assert_eq!(e.code().code(), "0A000", "{what}: {}", describe(&e));
        assert!(
            e.message().contains("cluster2") && e.message().contains("\"cluster\""),
            "{what}: {}",
            describe(&e)
        );
        assert!(
            took < Duration::from_secs(3),
            "{what}: refused after {took:?}"
        );
        exec(&mut db, "ROLLBACK");
    }
    assert_eq!(query_i64(&mut db, "SELECT sum(v)::bigint FROM t"), 40);
    assert_eq!(query_i64(&mut db, "SELECT sum(v)::bigint FROM u"), 40);
}
