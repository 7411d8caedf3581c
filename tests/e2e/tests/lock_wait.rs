//! A write that waited for a node's write lock shows it: EXPLAIN ANALYZE
//! prints "Lock Wait" with the time per node, and the node counts the wait
//! in its /stats. One session holds a write transaction open on a node;
//! another session's write to that node waits for it.

mod common;

use common::{exec, node_index};
use conductor_e2e::postgres::NoTls;
use conductor_e2e::{pg_err, serde_json, Cluster, ClusterOptions};
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
         INSERT INTO t SELECT i, 0 FROM generate_series(1, 40) i;",
    );
    (cluster, db)
}

/// The node of a key, and another key on a different shard of that node.
fn keys_on_one_node(db: &mut conductor_e2e::postgres::Client) -> (String, i64, i64) {
    let rows = db
        .query(
            "SELECT i::bigint, s.shard_id, s.node_id
               FROM generate_series(1, 40) i
               JOIN conductor.shards s ON s.table_name = 't'::regclass
                                      AND s.shard_id = conductor.shard_for('t', i::bigint)
              ORDER BY i",
            &[],
        )
        .unwrap();
    let (k1, s1, n1): (i64, i32, String) = (rows[0].get(0), rows[0].get(1), rows[0].get(2));
    let k2 = rows
        .iter()
        .find(|r| r.get::<_, String>(2) == n1 && r.get::<_, i32>(1) != s1)
        .map(|r| r.get::<_, i64>(0))
        .expect("two shards of one node among 40 keys");
    (n1, k1, k2)
}

fn node_stats(cluster: &Cluster, node: usize) -> serde_json::Value {
    let (_, body) = cluster.node_get(node, "/stats").expect("stats");
    serde_json::from_str(&body).expect("json")
}

/// (requests that waited, microseconds they waited) from the node's /stats.
fn node_lock_waits(cluster: &Cluster, node: usize) -> (u64, u64) {
    let v = node_stats(cluster, node);
    (
        v["lock_waits"].as_u64().expect("lock_waits"),
        v["lock_wait_us"].as_u64().expect("lock_wait_us"),
    )
}

/// Until the node says a request is waiting for its lock.
fn until_a_request_waits(cluster: &Cluster, node: usize, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while node_stats(cluster, node)["lock_waiting"].as_u64() == Some(0) {
        assert!(
            Instant::now() < deadline,
            "{what}: no request waits on the node"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The most milliseconds EXPLAIN's "Lock Wait" lines give `node` (a
/// row-by-row UPDATE has one for its scan, which reads holding the lock,
/// and one for its modify).
fn lock_wait_ms(plan: &str, node: &str) -> Option<f64> {
    plan.lines()
        .filter_map(|l| l.trim().strip_prefix("Lock Wait: "))
        .flat_map(|l| l.split(", "))
        .filter_map(|entry| {
            let rest = entry.strip_prefix(node)?.strip_prefix(' ')?;
            rest.strip_suffix(" ms")?.parse::<f64>().ok()
        })
        .reduce(f64::max)
}

#[test]
fn a_write_that_waited_for_the_node_lock_shows_the_wait() {
    let (cluster, mut db) = setup();
    let (node, held_key, key) = keys_on_one_node(&mut db);
    let new_key: i64 = db
        .query_one(
            "SELECT i FROM generate_series(1000::bigint, 2000) i
               JOIN conductor.shards s ON s.table_name = 't'::regclass
                                      AND s.shard_id = conductor.shard_for('t', i)
              WHERE s.node_id = $1
              ORDER BY i LIMIT 1",
            &[&node],
        )
        .unwrap()
        .get(0);
    let cases = [
        // Alone in its transaction: one request, run by the node's writer.
        (
            "fast-path UPDATE",
            format!("EXPLAIN (ANALYZE, COSTS OFF) UPDATE t SET v = 7 WHERE id = {key}"),
            false,
        ),
        (
            "fast-path INSERT",
            format!("EXPLAIN (ANALYZE, COSTS OFF) INSERT INTO t VALUES ({new_key}, 1)"),
            false,
        ),
        // In a transaction: the row is read holding the write lock (its
        // stream's BEGIN IMMEDIATE waits), then updated.
        (
            "row-by-row UPDATE in a transaction",
            format!("EXPLAIN (ANALYZE, COSTS OFF) UPDATE t SET v = v + 1 WHERE id = {key}"),
            true,
        ),
    ];
    for (what, sql, in_transaction) in cases {
        let (waits_before, _) = node_lock_waits(&cluster, node_index(&node));
        let mut a = cluster.client();
        exec(&mut a, "BEGIN");
        exec(&mut a, &format!("UPDATE t SET v = 1 WHERE id = {held_key}"));
        let config = cluster.pg_config();
        let second = std::thread::spawn(move || {
            let mut b = config.connect(NoTls).unwrap();
            if in_transaction {
                b.batch_execute("BEGIN").unwrap();
            }
            let plan: Vec<String> = b
                .query(&sql, &[])
                .unwrap_or_else(|e| panic!("{sql}: {}", pg_err(&e)))
                .iter()
                .map(|r| r.get(0))
                .collect();
            if in_transaction {
                b.batch_execute("COMMIT").unwrap();
            }
            plan.join("\n")
        });
        until_a_request_waits(&cluster, node_index(&node), what);
        // Held a little longer, so the wait is not a rounding error.
        std::thread::sleep(Duration::from_millis(50));
        exec(&mut a, "COMMIT");
        let plan = second.join().unwrap();
        println!("{what}:\n{plan}");
        let waited = lock_wait_ms(&plan, &node)
            .unwrap_or_else(|| panic!("{what}: no Lock Wait for {node} in\n{plan}"));
        assert!(
            waited > 0.0,
            "{what}: the write waited for the lock, EXPLAIN says {waited} ms"
        );
        let (waits_after, us) = node_lock_waits(&cluster, node_index(&node));
        assert!(
            waits_after > waits_before && us > 0,
            "{what}: the node's /stats count the wait ({waits_before} -> {waits_after}, {us} us)"
        );
    }
    let v: i64 = db
        .query_one(&format!("SELECT v FROM t WHERE id = {key}"), &[])
        .unwrap()
        .get(0);
    assert_eq!(v, 8, "both writes to the key applied");
}

#[test]
fn a_write_that_did_not_wait_shows_no_wait() {
    let (_cluster, mut db) = setup();
    let (node, _, key) = keys_on_one_node(&mut db);
    let plan: Vec<String> = db
        .query(
            &format!("EXPLAIN (ANALYZE, COSTS OFF) UPDATE t SET v = 3 WHERE id = {key}"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    println!("{plan}");
    // Nothing else writes: the node answered at once.
    assert_eq!(lock_wait_ms(&plan, &node), Some(0.0), "{plan}");
    // Plain EXPLAIN runs nothing and shows no wait.
    let plain: Vec<String> = db
        .query(
            &format!("EXPLAIN (COSTS OFF) UPDATE t SET v = 3 WHERE id = {key}"),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!plain.iter().any(|l| l.contains("Lock Wait")), "{plain:?}");
}

#[test]
fn reads_at_the_start_of_a_transaction_do_not_hold_the_write_lock() {
    let (cluster, mut db) = setup();
    let (node, held_key, key) = keys_on_one_node(&mut db);
    for isolation in ["READ COMMITTED", "REPEATABLE READ"] {
        let mut a = cluster.client();
        exec(&mut a, &format!("BEGIN ISOLATION LEVEL {isolation}"));
        // A read (at REPEATABLE READ through the node transaction's
        // snapshot) never waits for the write lock, and says nothing of it.
        let read: Vec<String> = a
            .query(
                &format!("EXPLAIN (ANALYZE, COSTS OFF) SELECT v FROM t WHERE id = {held_key}"),
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            !read.iter().any(|l| l.contains("Lock Wait")),
            "{isolation}: {read:?}"
        );
        // The reader's transaction is open (at REPEATABLE READ with a
        // snapshot of the node): another session's write does not wait.
        let plan: Vec<String> = db
            .query(
                &format!("EXPLAIN (ANALYZE, COSTS OFF) UPDATE t SET v = v + 1 WHERE id = {key}"),
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let plan = plan.join("\n");
        println!("{isolation}:\n{plan}");
        assert_eq!(lock_wait_ms(&plan, &node), Some(0.0), "{isolation}: {plan}");
        exec(&mut a, "COMMIT");
    }
}

/// A write that gave up waiting for a node's write lock, caught by a
/// savepoint, leaves the transaction committable: its COMMIT succeeds with
/// the transaction's other writes, as a local table's does after a lock
/// timeout caught the same way.
#[test]
fn a_lock_timeout_rolled_back_to_a_savepoint_still_commits() {
    let (mut cluster, mut db) = setup();
    for i in 0..cluster.node_count() {
        cluster.restart_node_with_args(i, &["--busy-timeout-ms", "300"]);
    }
    exec(
        &mut db,
        "CREATE TABLE l (id bigint PRIMARY KEY, v bigint);
         INSERT INTO l SELECT i, 0 FROM generate_series(1, 40) i;",
    );
    let (node, held, _) = keys_on_one_node(&mut db);
    let other: i64 = db
        .query_one(
            "SELECT min(i)::bigint FROM generate_series(1, 40) i
               JOIN conductor.shards s ON s.table_name = 't'::regclass
                                      AND s.shard_id = conductor.shard_for('t', i::bigint)
              WHERE s.node_id <> $1",
            &[&node],
        )
        .unwrap()
        .get(0);
    let mut outcomes = Vec::new();
    for table in ["l", "t"] {
        let mut holder = cluster.client();
        exec(
            &mut holder,
            &format!("BEGIN; UPDATE {table} SET v = 1 WHERE id = {held}"),
        );
        let mut run = |sql: &str| match db.batch_execute(sql) {
            Ok(()) => "ok".to_string(),
            Err(e) => e.as_db_error().map_or("client error".into(), |d| {
                // The lock wait fails with the system's own SQLSTATE.
                if sql.contains("SET v = 3") {
                    "failed".into()
                } else {
                    d.code().code().to_string()
                }
            }),
        };
        let steps = [
            "SET lock_timeout = '300ms'".to_string(),
            "BEGIN".to_string(),
            format!("UPDATE {table} SET v = 2 WHERE id = {other}"),
            "SAVEPOINT s".to_string(),
            format!("UPDATE {table} SET v = 3 WHERE id = {held}"),
            "ROLLBACK TO SAVEPOINT s".to_string(),
            "COMMIT".to_string(),
            "RESET lock_timeout".to_string(),
        ];
        let got: Vec<String> = steps.iter().map(|s| run(s)).collect();
        exec(&mut holder, "COMMIT");
        outcomes.push(got);
    }
    assert_eq!(outcomes[1], outcomes[0], "statement outcomes (t vs l)");
    let rows = |db: &mut conductor_e2e::postgres::Client, table: &str| -> Vec<(i64, i64)> {
        db.query(&format!("SELECT id, v FROM {table} ORDER BY id"), &[])
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    assert_eq!(rows(&mut db, "t"), rows(&mut db, "l"));
}

/// A transaction whose write to a node is cancelled while it waits for the
/// node's write lock cannot roll that node back (its request holds the
/// stream's baton): the node finishes the request once the lock frees. It
/// then closes the stream, whose next baton nobody received, instead of
/// keeping the lock until the stream expires, so other sessions' writes go
/// on at once, as with a local table, and the cancelled write stays undone.
#[test]
fn a_write_cancelled_while_waiting_for_the_node_lock_does_not_keep_it() {
    let (cluster, mut db) = setup();
    exec(
        &mut db,
        "CREATE TABLE l (id bigint PRIMARY KEY, v bigint);
         INSERT INTO l SELECT i, 0 FROM generate_series(1, 40) i;",
    );
    let (_, held, _) = keys_on_one_node(&mut db);
    let mut outcomes = Vec::new();
    for table in ["l", "t"] {
        let mut holder = cluster.client();
        exec(
            &mut holder,
            &format!("BEGIN; UPDATE {table} SET v = v + 100 WHERE id = {held}"),
        );
        let mut w = cluster.client();
        exec(&mut w, "BEGIN");
        let token = w.cancel_token();
        let canceller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            token.cancel_query(NoTls).unwrap();
        });
        let cancelled = w
            .batch_execute(&format!("UPDATE {table} SET v = v + 1 WHERE id = {held}"))
            .map_err(|e| e.code().map(|c| c.code().to_string()));
        canceller.join().unwrap();
        exec(&mut w, "ROLLBACK");
        exec(&mut holder, "COMMIT");
        // The lock is free: a write of another session goes through at once.
        let started = Instant::now();
        let next = db
            .batch_execute(&format!("UPDATE {table} SET v = v + 5 WHERE id = {held}"))
            .map_err(|e| pg_err(&e));
        let took = started.elapsed();
        println!("{table}: cancelled write {cancelled:?}, next write {next:?} in {took:?}");
        assert!(
            took < Duration::from_secs(2),
            "{table}: the next write waited {took:?}"
        );
        let v: i64 = db
            .query_one(&format!("SELECT v FROM {table} WHERE id = {held}"), &[])
            .unwrap()
            .get(0);
        outcomes.push((cancelled, next, v));
    }
    assert_eq!(outcomes[1], outcomes[0], "t vs l");
}

/// A key of `t` on each node, in node order.
fn key_per_node(db: &mut conductor_e2e::postgres::Client) -> Vec<i64> {
    db.query(
        "SELECT min(i)::bigint
           FROM generate_series(1, 40) i
           JOIN conductor.shards s ON s.table_name = 't'::regclass
                                  AND s.shard_id = conductor.shard_for('t', i::bigint)
          GROUP BY s.node_id ORDER BY s.node_id",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// A plain read in a READ COMMITTED transaction that wrote to one node sees
/// its writes there and reads the other nodes without waiting for their
/// write locks. Two such transactions, each holding one node's lock, read
/// the whole table at once, as on a local table. (Reading the other nodes
/// holding their write lock made each wait for the other until the busy
/// timeout failed one of them with 40001, its writes rolled back.)
#[test]
fn reads_after_a_write_do_not_wait_for_other_nodes_write_locks() {
    let (cluster, mut db) = setup();
    exec(
        &mut db,
        "CREATE TABLE l (id bigint PRIMARY KEY, v bigint);
         INSERT INTO l SELECT i, 0 FROM generate_series(1, 40) i;",
    );
    let keys = key_per_node(&mut db);
    assert_eq!(keys.len(), 2);
    for table in ["l", "t"] {
        let mut sessions: Vec<_> = (0..2).map(|_| cluster.client()).collect();
        for (s, key) in sessions.iter_mut().zip(&keys) {
            exec(
                s,
                &format!("BEGIN; UPDATE {table} SET v = 7 WHERE id = {key}"),
            );
        }
        let both_read = std::sync::Arc::new(std::sync::Barrier::new(2));
        let readers: Vec<_> = sessions
            .into_iter()
            .map(|mut s| {
                let both_read = both_read.clone();
                std::thread::spawn(move || {
                    let started = Instant::now();
                    let read = s
                        .query_one(
                            &format!("SELECT count(*), sum(v)::bigint FROM {table}"),
                            &[],
                        )
                        .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1)))
                        .map_err(|e| pg_err(&e));
                    let rows = s
                        .query(&format!("SELECT id, v FROM {table} WHERE v = 7"), &[])
                        .map(|rows| rows.len())
                        .map_err(|e| pg_err(&e));
                    let took = started.elapsed();
                    both_read.wait();
                    let commit = s.batch_execute("COMMIT").map_err(|e| pg_err(&e));
                    (read, rows, took, commit)
                })
            })
            .collect();
        for r in readers {
            let (read, rows, took, commit) = r.join().unwrap();
            println!("{table}: {read:?} {rows:?} in {took:?}, {commit:?}");
            // Each sees its own write (and not the other's, uncommitted).
            assert_eq!(read, Ok((40, 7)), "{table}");
            assert_eq!(rows, Ok(1), "{table}");
            assert_eq!(commit, Ok(()), "{table}");
            assert!(
                took < Duration::from_secs(2),
                "{table}: the reads took {took:?}"
            );
        }
        let sum: i64 = db
            .query_one(&format!("SELECT sum(v)::bigint FROM {table}"), &[])
            .unwrap()
            .get(0);
        assert_eq!(sum, 14, "{table}: both transactions committed");
    }
}

/// What one session's steps gave on one table while another session held
/// a row of it: each step's outcome ("ok" or its SQLSTATE) and the two
/// rows' final values.
#[derive(Debug, PartialEq)]
struct HeldRowRun {
    outcomes: Vec<String>,
    rows: Vec<(i64, i64)>,
}

/// Runs `steps(table)` in a new session on the local table `l` and on `t`
/// while another session holds row `held` of it (an UPDATE of its open
/// transaction; `other` is on another node), each step under 2 s, then
/// `after(table)` once that session committed, also under 2 s (no lock of
/// the given-up waits is left); `check_error` sees every error a step
/// raised. Rows 1–40 of `l` hold 0, like `t`'s.
fn with_a_held_row(
    cluster: &Cluster,
    db: &mut conductor_e2e::postgres::Client,
    steps: impl Fn(&str, i64, i64) -> Vec<String>,
    after: impl Fn(&str, i64) -> String,
    check_error: impl Fn(&str, &conductor_e2e::postgres::error::DbError),
) -> Vec<HeldRowRun> {
    exec(
        db,
        "CREATE TABLE l (id bigint PRIMARY KEY, v bigint);
         INSERT INTO l SELECT i, 0 FROM generate_series(1, 40) i;",
    );
    let keys = key_per_node(db);
    let (held, other) = (keys[0], keys[1]);
    let mut runs = Vec::new();
    for table in ["l", "t"] {
        let mut holder = cluster.client();
        exec(
            &mut holder,
            &format!("BEGIN; UPDATE {table} SET v = v + 100 WHERE id = {held}"),
        );
        let mut w = cluster.client();
        let mut outcomes = Vec::new();
        for step in steps(table, held, other) {
            let started = Instant::now();
            let outcome = match w.batch_execute(&step) {
                Ok(()) => "ok".to_string(),
                Err(e) => {
                    if let Some(d) = e.as_db_error() {
                        check_error(table, d);
                    }
                    e.code()
                        .map_or_else(|| pg_err(&e), |c| c.code().to_string())
                }
            };
            let took = started.elapsed();
            assert!(
                took < Duration::from_secs(2),
                "{table}: {step} took {took:?} ({outcome})"
            );
            outcomes.push(outcome);
        }
        exec(&mut holder, "COMMIT");
        let started = Instant::now();
        exec(&mut w, &after(table, held));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(2), "{table}: {took:?}");
        let rows: Vec<(i64, i64)> = db
            .query(
                &format!("SELECT id, v FROM {table} WHERE id IN ({held}, {other}) ORDER BY id"),
                &[],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        println!("{table}: {outcomes:?} {rows:?}");
        runs.push(HeldRowRun { outcomes, rows });
    }
    runs
}

/// `lock_timeout` bounds a wait for a node's write lock as it bounds a
/// wait for a row lock: the statement fails with 55P03 once it passes (not
/// after the node's busy timeout), a savepoint catches it, the transaction
/// commits its other writes, and the given-up waits keep no lock.
#[test]
fn lock_timeout_bounds_the_wait_for_a_node_lock() {
    let (cluster, mut db) = setup();
    let runs = with_a_held_row(
        &cluster,
        &mut db,
        |table, held, other| {
            vec![
                "SET lock_timeout = '300ms'".to_string(),
                format!("UPDATE {table} SET v = v + 1 WHERE id = {held}"),
                "BEGIN".to_string(),
                format!("UPDATE {table} SET v = v + 2 WHERE id = {other}"),
                "SAVEPOINT s".to_string(),
                format!("SELECT v FROM {table} WHERE id = {held} FOR UPDATE"),
                "ROLLBACK TO SAVEPOINT s".to_string(),
                format!("UPDATE {table} SET v = v + 4 WHERE id = {held}"),
                "ROLLBACK TO SAVEPOINT s".to_string(),
                "COMMIT".to_string(),
            ]
        },
        |table, held| format!("UPDATE {table} SET v = v + 8 WHERE id = {held}"),
        |_, _| {},
    );
    assert_eq!(
        runs[0].outcomes[1], "55P03",
        "the local table's lock timeout"
    );
    assert_eq!(runs[1], runs[0], "t vs l");
}

/// `FOR UPDATE/SHARE … NOWAIT` fails at once with 55P03 when another
/// transaction holds the lock, and `SKIP LOCKED` leaves the locked rows
/// out, as on a local table: for a distributed table the lock is its node's
/// write lock, so the rows compared are on different nodes. A savepoint
/// catches the failure and the transaction commits its other writes; the
/// given-up requests keep no lock; both take a free lock and one this
/// transaction already holds.
#[test]
fn nowait_and_skip_locked_do_not_wait_for_a_held_lock() {
    let (cluster, mut db) = setup();
    let runs = with_a_held_row(
        &cluster,
        &mut db,
        |table, held, other| {
            vec![
                format!("SELECT v FROM {table} WHERE id = {held} FOR UPDATE NOWAIT"),
                format!("SELECT v FROM {table} WHERE id = {other} FOR UPDATE NOWAIT"),
                "BEGIN".to_string(),
                format!("UPDATE {table} SET v = v + 2 WHERE id = {other}"),
                format!("SELECT v FROM {table} WHERE id = {other} FOR SHARE NOWAIT"),
                "SAVEPOINT s".to_string(),
                format!("SELECT v FROM {table} WHERE id = {held} FOR SHARE NOWAIT"),
                "ROLLBACK TO SAVEPOINT s".to_string(),
                format!(
                    "UPDATE {table} SET v = v + 1000 WHERE id IN \
                     (SELECT id FROM {table} WHERE id IN ({held}, {other}) FOR UPDATE SKIP LOCKED)"
                ),
                "COMMIT".to_string(),
                format!(
                    "DO $$ BEGIN IF (SELECT count(*) FROM (SELECT id FROM {table} \
                     WHERE id IN ({held}, {other}) FOR UPDATE SKIP LOCKED) s) <> 1 \
                     THEN RAISE EXCEPTION 'skip locked'; END IF; END $$"
                ),
            ]
        },
        |table, held| format!("SELECT v FROM {table} WHERE id = {held} FOR UPDATE NOWAIT"),
        |table, e| {
            if e.code().code() == "55P03" {
                assert!(
                    e.message().contains(&format!("relation \"{table}\"")),
                    "{table}: {}",
                    e.message()
                );
            }
        },
    );
    assert_eq!(runs[0].outcomes[0], "55P03", "the local table's NOWAIT");
    assert_eq!(runs[1], runs[0], "t vs l");
}

/// A job queue on a distributed table: workers take one job at a time with
/// `FOR UPDATE SKIP LOCKED`, none waits for another's lock, and every job
/// is done exactly once.
#[test]
fn skip_locked_hands_each_job_to_one_worker() {
    let (cluster, mut db) = setup();
    exec(
        &mut db,
        "CREATE FOREIGN TABLE jobs (id bigint NOT NULL, done_by int) SERVER cluster;
         SELECT conductor.create_distributed_table('jobs', 'id', 8);
         INSERT INTO jobs SELECT i, NULL FROM generate_series(1, 60) i;",
    );
    const WORKERS: i32 = 4;
    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|me| {
            let config = cluster.pg_config();
            std::thread::spawn(move || {
                let mut c = config.connect(NoTls).unwrap();
                let mut done = 0;
                loop {
                    let mut tx = c.transaction().unwrap();
                    let job = tx
                        .query_opt(
                            "SELECT id FROM jobs WHERE done_by IS NULL \
                             ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
                            &[],
                        )
                        .unwrap_or_else(|e| panic!("worker {me}: {}", pg_err(&e)));
                    let Some(job) = job else {
                        drop(tx);
                        let left: i64 = c
                            .query_one("SELECT count(*) FROM jobs WHERE done_by IS NULL", &[])
                            .unwrap()
                            .get(0);
                        if left == 0 {
                            return done;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    let id: i64 = job.get(0);
                    let n = tx
                        .execute(
                            "UPDATE jobs SET done_by = $1 WHERE id = $2 AND done_by IS NULL",
                            &[&me, &id],
                        )
                        .unwrap();
                    assert_eq!(n, 1, "worker {me}: job {id} was done already");
                    tx.commit().unwrap();
                    done += 1;
                }
            })
        })
        .collect();
    let per_worker: Vec<i32> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    println!("{per_worker:?} in {:?}", started.elapsed());
    assert_eq!(per_worker.iter().sum::<i32>(), 60);
    let row = db
        .query_one("SELECT count(*), count(done_by) FROM jobs", &[])
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (60, 60));
}
