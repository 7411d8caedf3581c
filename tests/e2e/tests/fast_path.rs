//! A write alone in its transaction that reaches one node is one request to
//! that node (the node begins, executes and commits); anything else keeps
//! the remote transaction. Counted with the nodes' own request counters.

mod common;

use common::exec;
use conductor_e2e::postgres::Client;
use conductor_e2e::{pg_err, Cluster, ClusterOptions};

/// Data requests (pipelines and cursors) every node has served so far.
fn node_requests(cluster: &Cluster) -> u64 {
    common::node_requests(cluster).iter().sum()
}

fn requests_for(cluster: &Cluster, db: &mut Client, sql: &str) -> u64 {
    let before = node_requests(cluster);
    exec(db, sql);
    // Closing a scan's cursor is not waited for: let it land.
    std::thread::sleep(std::time::Duration::from_millis(100));
    node_requests(cluster) - before
}

fn value(db: &mut Client, id: i64) -> Option<String> {
    db.query_opt("SELECT v FROM t WHERE id = $1", &[&id])
        .unwrap()
        .map(|r| r.get(0))
}

#[test]
fn a_lone_one_node_write_is_one_request() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        node_delay_ms: None,
        token: None,
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE t (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('t', 'id', shard_count => 8);
         INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 100) i;",
    );
    // Warm the session (topology, connections).
    exec(&mut db, "SELECT * FROM t WHERE id = 1");

    let cases: &[(&str, u64)] = &[
        ("UPDATE t SET v = 'a' WHERE id = 5", 1),
        // A new value computed from the row, on the node.
        ("UPDATE t SET v = v || '!' WHERE id = 9", 1),
        ("UPDATE t SET v = v || '?' WHERE id = 10 RETURNING id, v", 1),
        ("DELETE FROM t WHERE id = 11 RETURNING *", 1),
        ("INSERT INTO t VALUES (1000, 'new')", 1),
        ("DELETE FROM t WHERE id = 7", 1),
        ("INSERT INTO t VALUES (1001, 'r') RETURNING id, v", 1),
    ];
    for (sql, want) in cases {
        let n = requests_for(&cluster, &mut db, sql);
        println!("{sql}: {n} node request(s)");
        assert_eq!(n, *want, "{sql}");
    }
    assert_eq!(value(&mut db, 5).as_deref(), Some("a"));
    assert_eq!(value(&mut db, 9).as_deref(), Some("v9!"));
    assert_eq!(value(&mut db, 10).as_deref(), Some("v10?"));
    assert_eq!(value(&mut db, 11), None);
    assert_eq!(value(&mut db, 1000).as_deref(), Some("new"));
    assert_eq!(value(&mut db, 7), None);

    // Inside BEGIN … COMMIT the remote transaction stays: BEGIN + write,
    // then COMMIT.
    let n = requests_for(
        &cluster,
        &mut db,
        "BEGIN; UPDATE t SET v = 'b' WHERE id = 6; COMMIT",
    );
    assert!(n >= 2, "explicit transaction: {n} requests");
    assert_eq!(value(&mut db, 6).as_deref(), Some("b"));

    // Several statements in one query string share one transaction: the
    // second one's failure undoes the first.
    let err = db
        .batch_execute("UPDATE t SET v = 'c' WHERE id = 8; INSERT INTO t VALUES (1000, 'dup')")
        .expect_err("duplicate key");
    assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("23505"));
    assert_eq!(value(&mut db, 8).as_deref(), Some("v8"), "rolled back");

    // Errors keep their meaning on the fast path.
    let err = db
        .batch_execute("INSERT INTO t VALUES (1000, 'dup')")
        .expect_err("duplicate key");
    assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("23505"));
    assert!(pg_err(&err).contains("node-"), "{}", pg_err(&err));

    // A write on two nodes keeps the transactional path and stays atomic.
    let keys: Vec<i64> = db
        .query(
            "SELECT a.id::bigint FROM (SELECT id, conductor.shard_for('t', id) s FROM generate_series(1, 100) id) a
              JOIN conductor.shards sh ON sh.table_name = 't'::regclass AND sh.shard_id = a.s
              ORDER BY sh.node_id, a.id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (first, last) = (keys[0], keys[keys.len() - 1]);
    let n = requests_for(
        &cluster,
        &mut db,
        &format!("UPDATE t SET v = 'both' WHERE id IN ({first}, {last})"),
    );
    assert!(n >= 4, "two nodes, transactional: {n} requests");
    assert_eq!(value(&mut db, first).as_deref(), Some("both"));
    assert_eq!(value(&mut db, last).as_deref(), Some("both"));
}
