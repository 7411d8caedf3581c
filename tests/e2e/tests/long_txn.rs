//! Long transactions. The nodes here expire an idle stream after 2 s
//! (`--stream-idle-timeout-ms 2000`), so what takes minutes with the default
//! takes seconds:
//!
//! - a transaction that wrote to several nodes and then pauses far longer
//!   than the nodes' expiry (idle, and inside a long local query) commits
//!   everything: conductor's I/O side keeps its remote transactions alive;
//! - with `conductor.remote_transaction_idle_timeout` set low, the pause ends
//!   the remote transactions (other writers proceed), and the next statement
//!   or COMMIT fails with a clear error, committing nothing;
//! - a backend killed inside an open transaction stops renewing: the nodes
//!   roll it back within their expiry and another writer proceeds;
//! - a statement cancelled while a node runs its request loses that node's
//!   transaction: the next statement there and COMMIT say so plainly,
//!   unless the transaction only read that node, which COMMIT skips.

mod common;

use common::{describe, exec, expect_db_error, query_i64};
use conductor_e2e::postgres::Client;
use conductor_e2e::{pg_err, Cluster, ClusterOptions};
use std::time::{Duration, Instant};

const NODE_EXPIRY: Duration = Duration::from_millis(2000);

fn setup() -> (Cluster, Client) {
    let (mut cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        ..Default::default()
    });
    let expiry = NODE_EXPIRY.as_millis().to_string();
    for i in 0..cluster.node_count() {
        cluster.restart_node_with_args(i, &["--stream-idle-timeout-ms", &expiry]);
    }
    exec(
        &mut db,
        "CREATE FOREIGN TABLE t (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('t', 'id', shard_count => 6);",
    );
    (cluster, db)
}

/// Rows of `t` with ids in `range` counted on the nodes themselves.
fn rows_on_nodes(cluster: &Cluster, lo: i64, hi: i64) -> i64 {
    let mut total = 0;
    for i in 0..cluster.node_count() {
        for table in cluster.node_tables(i) {
            if !table.starts_with("t_") {
                continue;
            }
            let rows = cluster.node_query(
                i,
                &format!("SELECT count(*) FROM \"{table}\" WHERE id BETWEEN {lo} AND {hi}"),
                &[],
            );
            total += rows[0][0].as_i64().unwrap_or_else(|| {
                rows[0][0]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .expect("a count")
            });
        }
    }
    total
}

/// Nodes that rows with ids in [lo, hi] live on.
fn nodes_of(db: &mut Client, lo: i64, hi: i64) -> i64 {
    query_i64(
        db,
        &format!(
            "SELECT count(DISTINCT s.node_id) FROM generate_series({lo}, {hi}) i
               JOIN conductor.shards s ON s.table_name = 't'::regclass
                AND s.shard_id = conductor.shard_for('t', i::bigint)"
        ),
    )
}

#[test]
fn a_transaction_outlives_the_nodes_stream_expiry() {
    let (cluster, mut db) = setup();
    assert_eq!(nodes_of(&mut db, 1, 30), 3, "the rows span every node");
    let started = Instant::now();
    exec(&mut db, "BEGIN");
    exec(
        &mut db,
        "INSERT INTO t SELECT i, 'long' FROM generate_series(1, 30) i",
    );
    // Idle between statements: 3x the nodes' expiry.
    std::thread::sleep(NODE_EXPIRY * 3);
    // Busy in a long local query: 3x again.
    exec(&mut db, "SELECT pg_sleep(6)");
    // The transaction still reads its own writes on every node...
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM t"), 30);
    exec(
        &mut db,
        "INSERT INTO t SELECT i, 'long' FROM generate_series(31, 40) i",
    );
    std::thread::sleep(NODE_EXPIRY * 2);
    // ...and commits everything.
    exec(&mut db, "COMMIT");
    let elapsed = started.elapsed();
    assert_eq!(rows_on_nodes(&cluster, 1, 40), 40);
    println!(
        "open {elapsed:?} with nodes expiring idle streams after {NODE_EXPIRY:?}: 40 rows committed"
    );
}

#[test]
fn the_idle_timeout_rolls_back_and_fails_the_next_statement_or_commit() {
    let (cluster, mut db) = setup();
    let mut other = cluster.client();
    exec(
        &mut db,
        "SET conductor.remote_transaction_idle_timeout = '1s'",
    );
    for end in ["COMMIT", "INSERT INTO t VALUES (999, 'next')"] {
        exec(&mut db, "BEGIN");
        exec(
            &mut db,
            "INSERT INTO t SELECT i, 'idle' FROM generate_series(101, 130) i",
        );
        let started = Instant::now();
        // While this transaction holds the nodes' write locks, another
        // writer waits; once the idle limit rolled it back, it proceeds.
        let inserted = Instant::now();
        exec(
            &mut other,
            "INSERT INTO t SELECT i, 'other' FROM generate_series(201, 230) i",
        );
        let other_waited = inserted.elapsed();
        std::thread::sleep(Duration::from_millis(500));
        let e = expect_db_error(db.batch_execute(end), end);
        println!(
            "{end}: other writer waited {other_waited:?}; error after {:?}: {}",
            started.elapsed(),
            describe(&e)
        );
        assert_eq!(e.code().code(), "25P03", "{}", describe(&e));
        assert!(
            e.message()
                .contains("rolled back after 1000 ms without a statement")
                && e.message().contains("node node-"),
            "{}",
            describe(&e)
        );
        assert!(
            other_waited >= Duration::from_millis(800) && other_waited < Duration::from_secs(4),
            "the other writer waited {other_waited:?}"
        );
        if end != "COMMIT" {
            exec(&mut db, "ROLLBACK");
        }
        assert_eq!(rows_on_nodes(&cluster, 101, 130), 0, "nothing committed");
        assert_eq!(rows_on_nodes(&cluster, 999, 999), 0, "nothing committed");
        assert_eq!(rows_on_nodes(&cluster, 201, 230), 30);
        exec(&mut other, "DELETE FROM t WHERE id BETWEEN 201 AND 230");
    }
    // Off (0): the transaction lives as long as Postgres keeps it.
    exec(&mut db, "SET conductor.remote_transaction_idle_timeout = 0");
    exec(&mut db, "BEGIN");
    exec(&mut db, "INSERT INTO t VALUES (301, 'kept')");
    std::thread::sleep(NODE_EXPIRY * 2);
    exec(&mut db, "COMMIT");
    assert_eq!(rows_on_nodes(&cluster, 301, 301), 1);
}

#[test]
fn a_killed_backend_stops_renewing_and_the_nodes_roll_it_back() {
    let (cluster, db) = setup();
    let mut victim = cluster.client();
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    exec(&mut victim, "BEGIN");
    exec(
        &mut victim,
        "INSERT INTO t SELECT i, 'victim' FROM generate_series(401, 430) i",
    );
    // Renewed past the expiry while the backend lives.
    std::thread::sleep(NODE_EXPIRY * 2);
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    // SAFETY: signalling a backend of this test's Postgres.
    assert_eq!(unsafe { kill(pid, 9) }, 0);
    let killed = Instant::now();
    drop(victim);
    drop(db);
    // Postgres resets every backend after a crash; reconnect until it is back.
    let reconnect = || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match cluster.try_client() {
                Ok(c) => break c,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                Err(e) => panic!("reconnect: {e}"),
            }
        }
    };
    std::thread::sleep(Duration::from_millis(300));
    let mut db = reconnect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match db.batch_execute("INSERT INTO t SELECT i, 'after' FROM generate_series(501, 530) i") {
            Ok(()) => break,
            Err(e) if e.as_db_error().is_none() => db = reconnect(),
            Err(e) => {
                let code = e.as_db_error().map(|d| d.code().code().to_string());
                assert_eq!(code.as_deref(), Some("40001"), "{}", pg_err(&e));
                assert!(Instant::now() < deadline, "the nodes stayed locked");
            }
        }
    }
    let waited = killed.elapsed();
    println!("another writer proceeded {waited:?} after the kill ({attempts} attempts)");
    assert!(
        waited < NODE_EXPIRY + Duration::from_secs(6),
        "the nodes held the killed backend's locks for {waited:?}"
    );
    assert_eq!(rows_on_nodes(&cluster, 401, 430), 0, "rolled back");
    assert_eq!(rows_on_nodes(&cluster, 501, 530), 30);
}

/// A statement cancelled (here by statement_timeout) while a node runs its
/// request inside a transaction block leaves that node's transaction in
/// doubt: the node rolls it back, the writes of earlier statements with it,
/// and ROLLBACK TO SAVEPOINT cannot bring them back. The transaction's next
/// statement on that node, or its COMMIT, must say so plainly, commit
/// nothing, and leave the session usable after ROLLBACK.
#[test]
fn a_statement_cancelled_while_its_node_runs_it_loses_that_nodes_transaction_clearly() {
    let (mut cluster, mut db) = setup();
    // Every answer comes 1 s after the node ran the request: a 300 ms
    // statement_timeout gives up a request the node has already run.
    for i in 0..cluster.node_count() {
        cluster.set_node_delay(i, Some(1000));
    }
    for next in [
        "UPDATE t SET v = 'after' WHERE id = 1",
        "SELECT count(*) FROM t WHERE id = 1",
        "COMMIT",
    ] {
        exec(&mut db, "BEGIN");
        exec(&mut db, "INSERT INTO t VALUES (1, 'before')");
        exec(&mut db, "SAVEPOINT s");
        exec(&mut db, "SET LOCAL statement_timeout = '300ms'");
        let e = expect_db_error(
            db.batch_execute("UPDATE t SET v = 'cancelled' WHERE id = 1"),
            "the timed-out UPDATE",
        );
        assert_eq!(e.code().code(), "57014", "{}", describe(&e));
        exec(&mut db, "ROLLBACK TO SAVEPOINT s");
        exec(&mut db, "SET LOCAL statement_timeout = 0");
        let e = expect_db_error(db.batch_execute(next), next);
        println!("{next}: {}", describe(&e));
        assert_eq!(e.code().code(), "HV000", "{next}: {}", describe(&e));
        assert!(
            e.message().contains("the transaction on node node-")
                && e.message()
                    .contains("was lost: a request to it was interrupted"),
            "{next}: {}",
            describe(&e)
        );
        assert!(
            e.hint()
                .is_some_and(|h| h.contains("Roll back the transaction")),
            "{next}: {}",
            describe(&e)
        );
        exec(&mut db, "ROLLBACK");
        assert_eq!(
            rows_on_nodes(&cluster, 1, 1),
            0,
            "{next}: nothing committed"
        );
    }
    exec(&mut db, "INSERT INTO t VALUES (1, 'later')");
    assert_eq!(rows_on_nodes(&cluster, 1, 1), 1);
}

/// The same loss on a node a REPEATABLE READ transaction only read: its
/// snapshot there is gone, so a later read of that node fails, but it held
/// nothing to commit, so the transaction's writes on other nodes commit as
/// they do on Postgres after ROLLBACK TO SAVEPOINT.
#[test]
fn a_cancelled_read_loses_only_the_snapshot_of_a_node_the_transaction_read() {
    let (mut cluster, mut db) = setup();
    let node_of = |db: &mut Client, id: i64| -> String {
        db.query_one(
            "SELECT node_id FROM conductor.shards
              WHERE table_name = 't'::regclass AND shard_id = conductor.shard_for('t', $1::bigint)",
            &[&id],
        )
        .unwrap_or_else(|e| panic!("node of {id}: {}", pg_err(&e)))
        .get(0)
    };
    let written = 1_i64;
    let read = (2..100_i64)
        .find(|&id| node_of(&mut db, id) != node_of(&mut db, written))
        .expect("a key on another node");
    exec(&mut db, &format!("INSERT INTO t VALUES ({read}, 'old')"));
    for i in 0..cluster.node_count() {
        cluster.set_node_delay(i, Some(1000));
    }
    for end in ["read", "COMMIT"] {
        exec(&mut db, "BEGIN ISOLATION LEVEL REPEATABLE READ");
        let seen = format!("SELECT count(*) FROM t WHERE id = {read}");
        assert_eq!(query_i64(&mut db, &seen), 1);
        exec(
            &mut db,
            &format!("INSERT INTO t VALUES ({written}, '{end}')"),
        );
        exec(&mut db, "SAVEPOINT s");
        exec(&mut db, "SET LOCAL statement_timeout = '300ms'");
        let e = expect_db_error(db.batch_execute(&seen), "the timed-out read");
        assert_eq!(e.code().code(), "57014", "{}", describe(&e));
        exec(&mut db, "ROLLBACK TO SAVEPOINT s");
        exec(&mut db, "SET LOCAL statement_timeout = 0");
        if end == "read" {
            let e = expect_db_error(db.batch_execute(&seen), "a read of the lost snapshot");
            assert_eq!(e.code().code(), "HV000", "{}", describe(&e));
            assert!(e.message().contains("was lost"), "{}", describe(&e));
            exec(&mut db, "ROLLBACK");
            assert_eq!(rows_on_nodes(&cluster, written, written), 0);
        } else {
            db.batch_execute("COMMIT")
                .unwrap_or_else(|e| panic!("COMMIT after a lost read: {}", pg_err(&e)));
            assert_eq!(rows_on_nodes(&cluster, written, written), 1);
        }
    }
}
