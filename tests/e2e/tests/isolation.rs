//! Isolation levels across the nodes.
//!
//! - REPEATABLE READ and SERIALIZABLE read the same snapshot of a node for
//!   the whole transaction, while READ COMMITTED sees what committed since;
//! - a REPEATABLE READ transaction that writes a node changed since its
//!   snapshot fails with a serialization error (40001) naming node and shard;
//! - a multi-shard scan in READ COMMITTED reads one snapshot per node: a sum
//!   over rows of one node never changes while other sessions move amounts
//!   between those rows;
//! - a point lookup in READ COMMITTED autocommit is still one request to
//!   one node, and a multi-shard scan one cursor per node.

mod common;

use common::{describe, exec, expect_db_error, query_i64};
use conductor_e2e::postgres::Client;
use conductor_e2e::{pg_err, Cluster, ClusterOptions};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn text(client: &mut Client, sql: &str) -> String {
    client
        .query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", pg_err(&e)))
        .get(0)
}

fn setup(nodes: usize) -> (Cluster, Client) {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE t (id bigint NOT NULL, v text, n bigint) SERVER cluster;
         SELECT conductor.create_distributed_table('t', 'id', shard_count => 8);
         INSERT INTO t SELECT i, 'before', 0 FROM generate_series(1, 40) i;",
    );
    (cluster, db)
}

#[test]
fn repeatable_read_repeats_and_read_committed_does_not() {
    let (cluster, mut db) = setup(2);
    let mut other = cluster.client();
    for level in ["REPEATABLE READ", "SERIALIZABLE", "READ COMMITTED"] {
        exec(&mut db, "UPDATE t SET v = 'before' WHERE id = 7");
        exec(&mut db, "DELETE FROM t WHERE id > 40");
        exec(&mut db, &format!("BEGIN ISOLATION LEVEL {level}"));
        let first = text(&mut db, "SELECT v FROM t WHERE id = 7");
        let count_first = query_i64(&mut db, "SELECT count(*) FROM t");
        assert_eq!(first, "before");
        assert_eq!(count_first, 40);
        // Another session commits a change to the row and new rows on every
        // shard in between.
        exec(&mut other, "UPDATE t SET v = 'after' WHERE id = 7");
        exec(
            &mut other,
            "INSERT INTO t SELECT i, 'new', 0 FROM generate_series(41, 60) i",
        );
        let second = text(&mut db, "SELECT v FROM t WHERE id = 7");
        let count_second = query_i64(&mut db, "SELECT count(*) FROM t");
        exec(&mut db, "COMMIT");
        if level == "READ COMMITTED" {
            assert_eq!(second, "after", "{level} sees the committed change");
            assert_eq!(count_second, 60, "{level} sees the new rows");
        } else {
            assert_eq!(second, "before", "{level} reads its snapshot again");
            assert_eq!(count_second, 40, "{level}: no new rows appear");
        }
        assert_eq!(text(&mut db, "SELECT v FROM t WHERE id = 7"), "after");
        println!("{level}: first {first}/{count_first}, second {second}/{count_second}");
    }
}

#[test]
fn repeatable_read_write_after_a_concurrent_change_is_a_serialization_failure() {
    let (cluster, mut db) = setup(2);
    let mut other = cluster.client();

    // Read, another session changes the row, then write it: 40001.
    exec(&mut db, "BEGIN ISOLATION LEVEL REPEATABLE READ");
    assert_eq!(text(&mut db, "SELECT v FROM t WHERE id = 5"), "before");
    exec(&mut other, "UPDATE t SET v = 'theirs' WHERE id = 5");
    let e = expect_db_error(
        db.batch_execute("UPDATE t SET v = 'mine' WHERE id = 5"),
        "write after a concurrent change",
    );
    assert_eq!(e.code().code(), "40001", "{}", describe(&e));
    let shard = query_i64(
        &mut other,
        "SELECT conductor.shard_for('t', 5::bigint)::bigint",
    );
    assert!(
        e.message().contains("could not serialize access")
            && e.message().contains("node node-")
            && e.message().contains(&format!("shard {shard}")),
        "{}",
        describe(&e)
    );
    exec(&mut db, "ROLLBACK");
    assert_eq!(text(&mut db, "SELECT v FROM t WHERE id = 5"), "theirs");

    // The same with a row-by-row UPDATE (new value computed from the row).
    exec(&mut db, "BEGIN ISOLATION LEVEL SERIALIZABLE");
    assert_eq!(query_i64(&mut db, "SELECT n FROM t WHERE id = 6"), 0);
    exec(&mut other, "UPDATE t SET n = n + 10 WHERE id = 6");
    let e = expect_db_error(
        db.batch_execute("UPDATE t SET n = n + 1 WHERE id = 6"),
        "row-by-row write after a concurrent change",
    );
    assert_eq!(e.code().code(), "40001", "{}", describe(&e));
    exec(&mut db, "ROLLBACK");
    assert_eq!(query_i64(&mut db, "SELECT n FROM t WHERE id = 6"), 10);

    // Without a concurrent change the read transaction upgrades and commits.
    exec(&mut db, "BEGIN ISOLATION LEVEL REPEATABLE READ");
    assert_eq!(query_i64(&mut db, "SELECT n FROM t WHERE id = 6"), 10);
    exec(&mut db, "UPDATE t SET n = n + 1 WHERE id = 6");
    assert_eq!(query_i64(&mut db, "SELECT n FROM t WHERE id = 6"), 11);
    exec(&mut db, "COMMIT");
    assert_eq!(query_i64(&mut other, "SELECT n FROM t WHERE id = 6"), 11);
}

/// Ids that live on distinct shards of `t` (all on the cluster's one node).
fn ids_on_distinct_shards(db: &mut Client, count: usize) -> Vec<i64> {
    let mut seen = std::collections::BTreeSet::new();
    let mut ids = Vec::new();
    for id in 1..=40i64 {
        let shard = query_i64(
            db,
            &format!("SELECT conductor.shard_for('t', {id}::bigint)::bigint"),
        );
        if seen.insert(shard) {
            ids.push(id);
        }
        if ids.len() == count {
            break;
        }
    }
    assert_eq!(ids.len(), count, "not enough distinct shards");
    ids
}

#[test]
fn a_multi_shard_scan_sees_one_snapshot_per_node() {
    // One node: every shard of the scan lives on it.
    let (cluster, mut db) = setup(1);
    let ids = ids_on_distinct_shards(&mut db, 6);
    let list = ids
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    exec(
        &mut db,
        &format!("UPDATE t SET n = 1000 WHERE id IN ({list})"),
    );
    let total = 1000 * ids.len() as i64;

    let stop = Arc::new(AtomicBool::new(false));
    let moves = Arc::new(AtomicU64::new(0));
    let movers: Vec<_> = (0..2)
        .map(|m| {
            let config = cluster.pg_config();
            let (stop, moves, ids) = (stop.clone(), moves.clone(), ids.clone());
            std::thread::spawn(move || {
                let mut c = config.connect(conductor_e2e::postgres::NoTls).unwrap();
                let mut k = m;
                while !stop.load(Ordering::Relaxed) {
                    // Move 1 between rows of two different shards, one
                    // transaction (one remote transaction on the node).
                    let (a, b) = (ids[k % ids.len()], ids[(k + 1 + m) % ids.len()]);
                    k += 1;
                    let r = c.batch_execute(&format!(
                        "BEGIN;
                         UPDATE t SET n = n - 1 WHERE id = {a};
                         UPDATE t SET n = n + 1 WHERE id = {b};
                         COMMIT;"
                    ));
                    match r {
                        Ok(()) => {
                            moves.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            let _ = c.batch_execute("ROLLBACK");
                        }
                    }
                }
            })
        })
        .collect();

    let sum_sql = format!("SELECT sum(n)::bigint FROM t WHERE id IN ({list}) OR n < 0");
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut reads = 0u64;
    let mut bad = Vec::new();
    while Instant::now() < deadline {
        // READ COMMITTED, autocommit: each statement one snapshot per node.
        let s = query_i64(&mut db, &sum_sql);
        reads += 1;
        if s != total {
            bad.push(s);
        }
        // REPEATABLE READ: the same sum twice in one transaction.
        exec(&mut db, "BEGIN ISOLATION LEVEL REPEATABLE READ");
        let first = query_i64(&mut db, &sum_sql);
        let second = query_i64(&mut db, &sum_sql);
        exec(&mut db, "COMMIT");
        reads += 2;
        for s in [first, second] {
            if s != total {
                bad.push(s);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for m in movers {
        m.join().unwrap();
    }
    let moves = moves.load(Ordering::Relaxed);
    println!("{reads} sums read while {moves} moves committed; wrong sums: {bad:?}");
    assert!(bad.is_empty(), "a scan mixed snapshots: {bad:?}");
    assert!(moves >= 20, "the movers barely ran ({moves} moves)");
    assert_eq!(query_i64(&mut db, &sum_sql), total);
}

/// Requests node `i` served so far, per endpoint path.
fn node_requests(cluster: &Cluster, i: usize) -> std::collections::BTreeMap<String, u64> {
    let (status, body) = cluster.node_get(i, "/stats").expect("GET /stats");
    assert_eq!(status, 200, "{body}");
    let v: conductor_e2e::serde_json::Value = conductor_e2e::serde_json::from_str(&body).unwrap();
    v["requests"]
        .as_object()
        .expect("requests per path")
        .iter()
        .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
        .collect()
}

fn requests_between(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> std::collections::BTreeMap<String, u64> {
    after
        .iter()
        .filter(|(k, _)| k.as_str() != "/stats")
        .map(|(k, n)| (k.clone(), n - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect()
}

#[test]
fn read_committed_point_lookups_cost_one_request() {
    let (cluster, mut db) = setup(1);
    // Warm up (runtime, connections, topology cache).
    assert_eq!(text(&mut db, "SELECT v FROM t WHERE id = 3"), "before");
    let before = node_requests(&cluster, 0);
    assert_eq!(text(&mut db, "SELECT v FROM t WHERE id = 3"), "before");
    let after = node_requests(&cluster, 0);
    let lookup = requests_between(&before, &after);
    println!("point lookup, READ COMMITTED autocommit: {lookup:?}");
    assert_eq!(
        lookup.values().sum::<u64>(),
        1,
        "one request for a point lookup: {lookup:?}"
    );

    // A scan of every shard (all on this node): one cursor, and the close
    // of its stream.
    let before = node_requests(&cluster, 0);
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM t"), 40);
    std::thread::sleep(Duration::from_millis(200)); // the close is not waited for
    let after = node_requests(&cluster, 0);
    let scan = requests_between(&before, &after);
    println!("8-shard scan on one node: {scan:?}");
    let cursors = scan.get("/v3/cursor").copied().unwrap_or(0)
        + scan.get("/v3-protobuf/cursor").copied().unwrap_or(0);
    assert_eq!(cursors, 1, "{scan:?}");
    assert!(scan.values().sum::<u64>() <= 2, "{scan:?}");
}

/// PREPARE TRANSACTION is refused for a transaction that dropped a
/// distributed table: its shard tables are dropped when it commits, in this
/// session, which a prepared transaction never does. (Accepted, the drop
/// stayed queued in the session and ran at its next commit, so a ROLLBACK
/// PREPARED brought back a table whose shard tables were gone.)
#[test]
fn prepare_transaction_of_a_drop_is_refused_and_the_table_survives() {
    let (mut cluster, _) = setup(2);
    cluster.restart_postgres_with(&[
        "shared_preload_libraries=conductor",
        "max_prepared_transactions=4",
    ]);
    let mut db = cluster.client();
    exec(&mut db, "BEGIN; DROP FOREIGN TABLE t");
    let prepared = db.batch_execute("PREPARE TRANSACTION 'drop_t'");
    // Whatever PREPARE did, the session's next commit must not drop the
    // shard tables, and the prepared transaction (if any) is undone. (No
    // ROLLBACK here: its abort would forget what the drop queued.)
    exec(&mut db, "BEGIN; CREATE TABLE after_prepare (i int); COMMIT");
    let _ = db.batch_execute("ROLLBACK PREPARED 'drop_t'");
    let count = db
        .query_one("SELECT count(*) FROM t", &[])
        .map(|r| r.get::<_, i64>(0))
        .map_err(|e| pg_err(&e));
    assert_eq!(count, Ok(40), "the table's rows after the PREPARE");
    let e = expect_db_error(prepared, "PREPARE TRANSACTION after a drop");
    assert_eq!(e.code().code(), "0A000", "{}", describe(&e));
    assert_eq!(
        query_i64(&mut db, "SELECT count(*) FROM pg_prepared_xacts"),
        0
    );
    // A transaction that only read the nodes in READ COMMITTED (no remote
    // transaction) prepares and commits as in Postgres.
    exec(&mut db, "BEGIN");
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM t"), 40);
    exec(&mut db, "PREPARE TRANSACTION 'read_t'");
    exec(&mut db, "COMMIT PREPARED 'read_t'");
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM t"), 40);
}

/// A REPEATABLE READ transaction reads a row by a virtually indexed column
/// as its snapshot has it, even after another session changed the value
/// and a third one's read removed the entry that became extra: the entries
/// are not part of the nodes' snapshots, so such a transaction does not
/// route through them. A write by that column to the row meets the
/// concurrent change (40001), as in Postgres.
#[test]
fn repeatable_read_finds_its_snapshot_rows_by_a_virtual_index() {
    let (cluster, mut db) = setup(2);
    exec(&mut db, "UPDATE t SET v = 'e' || id");
    exec(
        &mut db,
        "CALL conductor.create_virtual_index('t', ARRAY['v'])",
    );
    let mut other = cluster.client();
    for level in ["REPEATABLE READ", "SERIALIZABLE"] {
        exec(&mut db, "UPDATE t SET v = 'e5' WHERE id = 5");
        exec(&mut db, &format!("BEGIN ISOLATION LEVEL {level}"));
        assert_eq!(text(&mut db, "SELECT v FROM t WHERE id = 5"), "e5");
        exec(&mut other, "UPDATE t SET v = 'moved' WHERE id = 5");
        // A read by the old value finds no row and removes its entry once
        // it commits.
        let found = other.query("SELECT id FROM t WHERE v = 'e5'", &[]).unwrap();
        assert!(found.is_empty());
        let deadline = Instant::now() + Duration::from_secs(10);
        while query_i64(
            &mut other,
            "SELECT entries FROM conductor.virtual_indexes WHERE table_name = 't'::regclass",
        ) > 40
        {
            assert!(Instant::now() < deadline, "the extra entry was not removed");
            std::thread::sleep(Duration::from_millis(50));
        }
        let by_value = query_i64(&mut db, "SELECT count(*) FROM t WHERE v = 'e5'");
        let by_expression = query_i64(&mut db, "SELECT count(*) FROM t WHERE v || '' = 'e5'");
        assert_eq!(
            (by_value, by_expression),
            (1, 1),
            "{level}: the snapshot's row, found by the indexed column and without it"
        );
        let e = expect_db_error(
            db.batch_execute("UPDATE t SET n = 1 WHERE v = 'e5'"),
            "an update of a row changed since the snapshot",
        );
        assert_eq!(e.code().code(), "40001", "{level}: {}", describe(&e));
        exec(&mut db, "ROLLBACK");
        assert_eq!(
            query_i64(&mut db, "SELECT count(*) FROM t WHERE v = 'e5'"),
            0
        );
    }
}

/// A SERIALIZABLE transaction that also wrote local tables can fail
/// Postgres' commit-time check (write skew: it is the pivot of a
/// dangerous structure whose other transaction committed first). It must
/// then leave nothing on the nodes either, as it leaves nothing locally.
#[test]
fn a_serializable_commit_that_fails_its_check_commits_nothing_on_the_nodes() {
    let (cluster, mut db) = setup(2);
    exec(
        &mut db,
        "CREATE TABLE acc (id int, grp int, v int);
         INSERT INTO acc VALUES (1, 1, 100), (2, 1, 100);
         CREATE TABLE lt (id bigint PRIMARY KEY, v text, n bigint);",
    );
    for table in ["lt", "t"] {
        exec(&mut db, "UPDATE acc SET v = 100");
        let mut t1 = cluster.client();
        let mut t2 = cluster.client();
        exec(
            &mut t1,
            "BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT sum(v) FROM acc WHERE grp = 1;",
        );
        exec(
            &mut t2,
            "BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT sum(v) FROM acc WHERE grp = 1;",
        );
        exec(
            &mut t1,
            &format!(
                "UPDATE acc SET v = v - 150 WHERE id = 1;
                 INSERT INTO {table} VALUES (1001, 'skew', 1), (1002, 'skew', 2), (1003, 'skew', 3);"
            ),
        );
        exec(&mut t2, "UPDATE acc SET v = v - 150 WHERE id = 2; COMMIT;");
        let err = expect_db_error(t1.batch_execute("COMMIT"), "the pivot's COMMIT");
        assert_eq!(err.code().code(), "40001", "{table}: {}", describe(&err));
        assert_eq!(
            query_i64(
                &mut db,
                &format!("SELECT count(*) FROM {table} WHERE id > 1000")
            ),
            0,
            "{table}: rows of the failed transaction"
        );
    }
    // Without the dangerous structure, the same transaction commits both.
    exec(
        &mut db,
        "BEGIN ISOLATION LEVEL SERIALIZABLE;
         UPDATE acc SET v = v + 1 WHERE id = 1;
         INSERT INTO t VALUES (1001, 'ok', 1);
         COMMIT;",
    );
    assert_eq!(
        query_i64(&mut db, "SELECT count(*) FROM t WHERE id = 1001"),
        1
    );
}
