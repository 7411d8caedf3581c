//! Topology catalog: the per-backend cache (no catalog lookup on a hit,
//! committed changes seen by every other session's next query), and
//! create/drop keeping the nodes and the catalog consistent (rollback,
//! savepoints, failed create, DROP SERVER CASCADE), the node API and the
//! FDW option validator.

mod common;

use common::{
    catalog_rows_for_remote_name, describe, exec, expect_db_error, query_i64, shard_map,
    shard_tables_on_nodes,
};
use conductor_e2e::{free_port, pg_err, postgres, Cluster, ClusterOptions};
use std::path::Path;

fn cache_stats(db: &mut postgres::Client) -> (i64, i64, i64) {
    let r = db
        .query_one(
            "SELECT hits, misses, invalidations FROM conductor.cache_stats()",
            &[],
        )
        .unwrap_or_else(|e| panic!("cache_stats: {}", pg_err(&e)));
    (r.get(0), r.get(1), r.get(2))
}

/// Scans + index scans of the topology tables by this backend in the
/// current transaction (pg_stat_xact_user_tables counts them as they
/// happen).
fn catalog_reads(db: &mut postgres::Client) -> i64 {
    query_i64(
        db,
        "SELECT coalesce(sum(coalesce(seq_scan, 0) + coalesce(idx_scan, 0)), 0)::bigint
           FROM pg_stat_xact_user_tables
          WHERE schemaname = 'conductor' AND relname IN ('node', 'shard', 'distributed_table')",
    )
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn topology_cache_hits_and_cross_session_invalidation() {
    let mut cluster = Cluster::start(ClusterOptions {
        nodes: 5,
        ..Default::default()
    });
    let mut b = cluster.client();
    cluster.setup_conductor(&mut b, "cluster");
    // node-4 is a spare address for node-0's data, later.
    exec(&mut b, "SELECT conductor.remove_node('cluster', 'node-4')");
    exec(
        &mut b,
        "CREATE FOREIGN TABLE cache_t (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('cache_t', 'id', shard_count => 8);
         INSERT INTO cache_t SELECT i, 'v' || i FROM generate_series(1, 800) i;",
    );
    let mut a = cluster.client();

    // A: the first query loads the topology, the next ones hit the cache.
    assert_eq!(query_i64(&mut a, "SELECT count(*) FROM cache_t"), 800);
    let s1 = cache_stats(&mut a);
    assert!(s1.1 >= 1, "first query missed: {s1:?}");
    assert_eq!(query_i64(&mut a, "SELECT count(*) FROM cache_t"), 800);
    let s2 = cache_stats(&mut a);
    assert_eq!(s2.1, s1.1, "repeated query must not miss: {s1:?} -> {s2:?}");
    assert!(s2.0 > s1.0, "repeated query hits: {s1:?} -> {s2:?}");
    // Independently of the extension's own counters: a cached query reads
    // none of the topology tables.
    exec(&mut a, "BEGIN");
    assert_eq!(query_i64(&mut a, "SELECT count(*) FROM cache_t"), 800);
    let before = catalog_reads(&mut a);
    for _ in 0..3 {
        assert_eq!(query_i64(&mut a, "SELECT count(*) FROM cache_t"), 800);
        assert_eq!(
            query_i64(&mut a, "SELECT count(*) FROM cache_t WHERE id = 5"),
            1
        );
    }
    let after = catalog_reads(&mut a);
    exec(&mut a, "COMMIT");
    assert_eq!(before, after, "cached queries scanned the topology tables");

    // B changes a node's address but does not commit: A keeps working with
    // the committed topology. After B commits, A's next query uses the new
    // (dead) address and fails naming it; then B restores it.
    let node0_url = cluster.node_url(0);
    let dead = format!("http://127.0.0.1:{}", free_port());
    exec(
        &mut b,
        &format!("BEGIN; UPDATE conductor.node SET url = '{dead}' WHERE node_id = 'node-0'"),
    );
    assert_eq!(query_i64(&mut a, "SELECT count(*) FROM cache_t"), 800);
    // A new session (cold cache) reads the committed topology, not B's.
    let mut c = cluster.client();
    assert_eq!(query_i64(&mut c, "SELECT count(*) FROM cache_t"), 800);
    assert_eq!(cache_stats(&mut c).1, 1, "C loaded the topology once");
    exec(&mut b, "ROLLBACK");
    assert_eq!(query_i64(&mut a, "SELECT count(*) FROM cache_t"), 800);
    let s3 = cache_stats(&mut a);
    exec(
        &mut b,
        &format!("UPDATE conductor.node SET url = '{dead}' WHERE node_id = 'node-0'"),
    );
    let e = expect_db_error(
        a.query_one("SELECT count(*) FROM cache_t", &[]),
        "scan after a committed move to a dead address",
    );
    let detail = e.detail().unwrap_or_default().to_string();
    assert!(
        detail.contains("node-0") && detail.contains(&dead),
        "error names node-0 at its new address: {}",
        describe(&e)
    );
    let s4 = cache_stats(&mut a);
    assert!(s4.2 > s3.2, "A saw an invalidation: {s3:?} -> {s4:?}");
    assert!(s4.1 > s3.1, "A reloaded the topology: {s3:?} -> {s4:?}");
    exec(
        &mut b,
        &format!("UPDATE conductor.node SET url = '{node0_url}' WHERE node_id = 'node-0'"),
    );
    assert_eq!(query_i64(&mut a, "SELECT count(*) FROM cache_t"), 800);

    // update_node: node-0's data now served from another address (node-4's
    // port); the old address is dead. A follows without reconnecting.
    cluster.stop_node(0);
    cluster.stop_node(4);
    let spare_dir = cluster.node_data_dir(4).to_path_buf();
    std::fs::remove_dir_all(&spare_dir).unwrap();
    copy_dir(cluster.node_data_dir(0), &spare_dir);
    cluster.start_node(4);
    // While node-0's address is dead, A's scan fails naming node-0.
    let e = expect_db_error(
        a.query_one("SELECT count(*) FROM cache_t", &[]),
        "scan with node-0 down",
    );
    assert!(
        e.detail().unwrap_or_default().contains("node-0"),
        "{}",
        describe(&e)
    );
    b.execute(
        "SELECT conductor.update_node('cluster', 'node-0', $1)",
        &[&cluster.node_url(4)],
    )
    .unwrap_or_else(|e| panic!("update_node: {}", pg_err(&e)));
    assert_eq!(query_i64(&mut a, "SELECT count(*) FROM cache_t"), 800);
    assert_eq!(
        query_i64(&mut a, "SELECT count(*) FROM cache_t WHERE v = 'v' || id"),
        800
    );
    let url: String = a
        .query_one(
            "SELECT url FROM conductor.nodes WHERE node_id = 'node-0'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(url, cluster.node_url(4));

    // B drops the table and creates another under the same name (fewer
    // shards, other rows): A sees the new one.
    exec(
        &mut b,
        "DROP FOREIGN TABLE cache_t;
         CREATE FOREIGN TABLE cache_t (id bigint NOT NULL, v text) SERVER cluster
             OPTIONS (table_name 'cache_t2');
         SELECT conductor.create_distributed_table('cache_t', 'id', shard_count => 3);
         INSERT INTO cache_t VALUES (1, 'one'), (2, 'two');",
    );
    assert_eq!(query_i64(&mut a, "SELECT count(*) FROM cache_t"), 2);
    let shards: i64 = query_i64(
        &mut a,
        "SELECT count(*) FROM conductor.shards WHERE table_name = 'cache_t'::regclass",
    );
    assert_eq!(shards, 3);
    // And a dropped table is gone for A too.
    exec(&mut b, "DROP FOREIGN TABLE cache_t");
    let e = expect_db_error(
        a.query_one("SELECT count(*) FROM cache_t", &[]),
        "scan of a dropped table",
    );
    assert_eq!(e.code().code(), "42P01", "{}", describe(&e));
}

/// Expected placement: round-robin over the active nodes in node id order.
fn expect_round_robin(cluster: &Cluster, db: &mut postgres::Client, table: &str, shards: usize) {
    let nodes = cluster.node_count();
    let mut want: Vec<(usize, String)> = (0..shards)
        .map(|s| (s % nodes, format!("{table}_{s:04}")))
        .collect();
    want.sort();
    assert_eq!(
        shard_tables_on_nodes(cluster, table),
        want,
        "shard tables of {table} on the nodes"
    );
    let catalog: Vec<(usize, String)> = shard_map(db, table)
        .into_iter()
        .map(|(_, (node, t))| (common::node_index(&node), t))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(catalog, want, "conductor.shards of {table}");
}

#[test]
fn create_and_drop_keep_nodes_and_catalog_consistent() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 4,
        ..Default::default()
    });

    // Create: exactly the shard tables, on the nodes the catalog says, with
    // the columns (typed) and the primary key.
    exec(
        &mut db,
        "CREATE FOREIGN TABLE cd_a (id bigint NOT NULL, v text, n integer) SERVER cluster;
         SELECT conductor.create_distributed_table('cd_a', 'id', shard_count => 16);
         INSERT INTO cd_a SELECT i, 'v' || i, i FROM generate_series(1, 500) i;",
    );
    expect_round_robin(&cluster, &mut db, "cd_a", 16);
    let info = cluster.node_query(1, "PRAGMA table_info(\"cd_a_0001\")", &[]);
    let cols: Vec<(String, String, i64)> = info
        .iter()
        .map(|r| {
            (
                r[1].as_str().unwrap().to_string(),
                r[2].as_str().unwrap().to_string(),
                r[5].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        cols,
        vec![
            ("id".into(), "INTEGER".into(), 1),
            ("v".into(), "TEXT".into(), 0),
            ("n".into(), "INTEGER".into(), 0)
        ],
        "shard table columns (name, type, pk)"
    );
    assert_eq!(catalog_rows_for_remote_name(&mut db, "cd_a"), (1, 16));

    // DROP rolled back: everything stays, the table still answers.
    exec(&mut db, "BEGIN; DROP FOREIGN TABLE cd_a; ROLLBACK;");
    assert_eq!(catalog_rows_for_remote_name(&mut db, "cd_a"), (1, 16));
    expect_round_robin(&cluster, &mut db, "cd_a", 16);
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM cd_a"), 500);
    // Also from a savepoint.
    exec(
        &mut db,
        "BEGIN; SAVEPOINT s; DROP FOREIGN TABLE cd_a; ROLLBACK TO SAVEPOINT s; COMMIT;",
    );
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM cd_a"), 500);
    expect_round_robin(&cluster, &mut db, "cd_a", 16);

    // DROP committed: catalog rows gone, shard tables gone from the nodes.
    exec(&mut db, "DROP FOREIGN TABLE cd_a");
    assert_eq!(catalog_rows_for_remote_name(&mut db, "cd_a"), (0, 0));
    assert_eq!(shard_tables_on_nodes(&cluster, "cd_a"), vec![]);
    // A drop inside a transaction takes effect on the nodes at commit only.
    exec(
        &mut db,
        "CREATE FOREIGN TABLE cd_t (id bigint NOT NULL) SERVER cluster;
         SELECT conductor.create_distributed_table('cd_t', 'id', shard_count => 4);",
    );
    exec(&mut db, "BEGIN; DROP FOREIGN TABLE cd_t;");
    assert_eq!(
        shard_tables_on_nodes(&cluster, "cd_t").len(),
        4,
        "before commit"
    );
    exec(&mut db, "COMMIT");
    assert_eq!(
        shard_tables_on_nodes(&cluster, "cd_t"),
        vec![],
        "after commit"
    );

    // Dropped and created again in one transaction: the drop of the old
    // shard tables waits for COMMIT, where it would take the new ones of
    // the same names. The create is refused for that reason, and nothing
    // changes; once the DROP is committed, the create works.
    exec(
        &mut db,
        "CREATE FOREIGN TABLE cd_r (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('cd_r', 'id', shard_count => 4);
         INSERT INTO cd_r SELECT i, 'old' FROM generate_series(1, 20) i;",
    );
    exec(
        &mut db,
        "BEGIN; DROP FOREIGN TABLE cd_r;
         CREATE FOREIGN TABLE cd_r (id bigint NOT NULL, v text) SERVER cluster;",
    );
    let err = expect_db_error(
        db.simple_query(
            "SELECT conductor.create_distributed_table('cd_r', 'id', shard_count => 4)",
        ),
        "create again after a drop in the same transaction",
    );
    let text = describe(&err);
    assert_eq!(err.code().code(), "55006", "{text}");
    assert!(text.contains("COMMIT"), "says why: {text}");
    exec(&mut db, "ROLLBACK");
    assert_eq!(
        query_i64(&mut db, "SELECT count(*) FROM cd_r WHERE v = 'old'"),
        20
    );
    exec(&mut db, "DROP FOREIGN TABLE cd_r");
    exec(
        &mut db,
        "CREATE FOREIGN TABLE cd_r (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('cd_r', 'id', shard_count => 4);",
    );
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM cd_r"), 0);

    // Create rolled back: no shard tables, no catalog rows. The shard
    // tables are created inside the transaction's remote transactions: the
    // transaction itself uses them, nobody else sees them before commit.
    exec(
        &mut db,
        "BEGIN;
         CREATE FOREIGN TABLE cd_b (id text NOT NULL) SERVER cluster;
         SELECT conductor.create_distributed_table('cd_b', 'id', shard_count => 6);
         INSERT INTO cd_b VALUES ('a'), ('b'), ('c');",
    );
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM cd_b"), 3);
    assert_eq!(
        shard_tables_on_nodes(&cluster, "cd_b"),
        vec![],
        "not visible outside the transaction"
    );
    exec(&mut db, "ROLLBACK");
    assert_eq!(shard_tables_on_nodes(&cluster, "cd_b"), vec![]);
    assert_eq!(catalog_rows_for_remote_name(&mut db, "cd_b"), (0, 0));

    // Create rolled back to a savepoint, the transaction commits.
    exec(
        &mut db,
        "BEGIN;
         CREATE FOREIGN TABLE cd_c (id uuid NOT NULL, v text) SERVER cluster;
         SAVEPOINT s;
         SELECT conductor.create_distributed_table('cd_c', 'id', shard_count => 5);
         ROLLBACK TO SAVEPOINT s;
         COMMIT;",
    );
    assert_eq!(shard_tables_on_nodes(&cluster, "cd_c"), vec![]);
    assert_eq!(catalog_rows_for_remote_name(&mut db, "cd_c"), (0, 0));
    let e = expect_db_error(
        db.query_one("SELECT count(*) FROM cd_c", &[]),
        "scan of a table that is not distributed",
    );
    assert!(e.message().contains("not distributed"), "{}", describe(&e));
    // A savepoint released (subtransaction committed), then the whole
    // transaction rolled back: nothing left.
    exec(
        &mut db,
        "BEGIN;
         SAVEPOINT s;
         SELECT conductor.create_distributed_table('cd_c', 'id', shard_count => 5);
         RELEASE SAVEPOINT s;
         ROLLBACK;",
    );
    assert_eq!(shard_tables_on_nodes(&cluster, "cd_c"), vec![]);
    // And for real.
    exec(
        &mut db,
        "SELECT conductor.create_distributed_table('cd_c', 'id', shard_count => 5);
         INSERT INTO cd_c SELECT gen_random_uuid(), 'x' FROM generate_series(1, 50);",
    );
    expect_round_robin(&cluster, &mut db, "cd_c", 5);
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM cd_c"), 50);
    // Distributing twice is refused.
    let e = expect_db_error(
        db.execute(
            "SELECT conductor.create_distributed_table('cd_c', 'id')",
            &[],
        ),
        "second create",
    );
    assert_eq!(e.code().code(), "42710", "{}", describe(&e));
    expect_round_robin(&cluster, &mut db, "cd_c", 5);
}

#[test]
fn failed_create_leaves_nothing_behind() {
    let (mut cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 4,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE fc (id bigint NOT NULL, v text) SERVER cluster",
    );
    cluster.stop_node(2);
    let e = expect_db_error(
        db.execute(
            "SELECT conductor.create_distributed_table('fc', 'id', shard_count => 16)",
            &[],
        ),
        "create with node-2 stopped",
    );
    eprintln!("failed create: {}", describe(&e));
    assert!(
        e.code().code().starts_with("HV"),
        "FDW SQLSTATE: {}",
        describe(&e)
    );
    assert!(
        e.message().contains("fc"),
        "names the table: {}",
        describe(&e)
    );
    assert!(
        e.detail().unwrap_or_default().contains("node-2"),
        "DETAIL names the node: {}",
        describe(&e)
    );
    for i in [0, 1, 3] {
        assert!(
            !cluster.node_tables(i).iter().any(|t| t.starts_with("fc_")),
            "node-{i} has shard tables left: {:?}",
            cluster.node_tables(i)
        );
    }
    assert_eq!(catalog_rows_for_remote_name(&mut db, "fc"), (0, 0));
    cluster.start_node(2);
    assert_eq!(shard_tables_on_nodes(&cluster, "fc"), vec![]);
    // The session is fine and the create works once the node is back.
    exec(
        &mut db,
        "SELECT conductor.create_distributed_table('fc', 'id', shard_count => 16);
         INSERT INTO fc SELECT i, 'v' FROM generate_series(1, 100) i;",
    );
    expect_round_robin(&cluster, &mut db, "fc", 16);
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM fc"), 100);

    // Failed inside an explicit transaction: also nothing left after the
    // transaction ends.
    exec(
        &mut db,
        "CREATE FOREIGN TABLE fc2 (id bigint NOT NULL) SERVER cluster",
    );
    cluster.stop_node(1);
    exec(&mut db, "BEGIN");
    let e = expect_db_error(
        db.execute(
            "SELECT conductor.create_distributed_table('fc2', 'id', shard_count => 8)",
            &[],
        ),
        "create in a transaction with node-1 stopped",
    );
    assert!(
        e.detail().unwrap_or_default().contains("node-1"),
        "{}",
        describe(&e)
    );
    exec(&mut db, "ROLLBACK");
    cluster.start_node(1);
    assert_eq!(shard_tables_on_nodes(&cluster, "fc2"), vec![]);
    assert_eq!(catalog_rows_for_remote_name(&mut db, "fc2"), (0, 0));
}

#[test]
fn drop_server_cascade_and_the_node_api() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE keep_me (id bigint NOT NULL) SERVER cluster;
         SELECT conductor.create_distributed_table('keep_me', 'id', shard_count => 6);
         INSERT INTO keep_me SELECT generate_series(1, 60);
         CREATE SERVER cluster2 FOREIGN DATA WRAPPER conductor;",
    );

    // add_node: unreachable, malformed, duplicate are refused, nothing recorded.
    let ghost = format!("http://127.0.0.1:{}", free_port());
    let e = expect_db_error(
        db.execute(
            "SELECT conductor.add_node('cluster2', 'ghost', $1)",
            &[&ghost],
        ),
        "add_node of an unreachable url",
    );
    assert_eq!(e.code().code(), "HV00N", "{}", describe(&e));
    assert!(
        e.message().contains("ghost") && e.message().contains(&ghost),
        "{}",
        describe(&e)
    );
    for (id, url, code) in [
        ("bad-url", "ftp://127.0.0.1:1", "22023"),
        ("bad-url", "http://127.0.0.1:1/path", "22023"),
        ("bad id!", "http://127.0.0.1:1", "22023"),
    ] {
        let e = expect_db_error(
            db.execute(
                "SELECT conductor.add_node('cluster2', $1, $2)",
                &[&id, &url],
            ),
            &format!("add_node({id}, {url})"),
        );
        assert_eq!(e.code().code(), code, "{}", describe(&e));
    }
    let e = expect_db_error(
        db.execute(
            "SELECT conductor.add_node('cluster', 'node-0', $1)",
            &[&cluster.node_url(0)],
        ),
        "duplicate node id",
    );
    assert_eq!(e.code().code(), "42710", "{}", describe(&e));
    assert_eq!(
        query_i64(
            &mut db,
            "SELECT count(*) FROM conductor.nodes WHERE server = 'cluster2'"
        ),
        0
    );

    // remove_node: refused while the node holds shards; fine when it holds none.
    let e = expect_db_error(
        db.execute("SELECT conductor.remove_node('cluster', 'node-1')", &[]),
        "remove a node holding shards",
    );
    assert_eq!(e.code().code(), "55006", "{}", describe(&e));
    assert!(e.message().contains("node-1"), "{}", describe(&e));
    assert_eq!(
        query_i64(
            &mut db,
            "SELECT count(*) FROM conductor.nodes WHERE server = 'cluster'"
        ),
        3
    );
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM keep_me"), 60);

    // A server without nodes cannot distribute a table; bad shard counts
    // are refused too. Nothing is recorded.
    exec(
        &mut db,
        "CREATE FOREIGN TABLE no_nodes (id bigint NOT NULL) SERVER cluster2;
         CREATE FOREIGN TABLE bad_count (id bigint NOT NULL) SERVER cluster;",
    );
    let e = expect_db_error(
        db.execute(
            "SELECT conductor.create_distributed_table('no_nodes', 'id')",
            &[],
        ),
        "create on a server without nodes",
    );
    assert!(e.message().contains("no active nodes"), "{}", describe(&e));
    assert_eq!(catalog_rows_for_remote_name(&mut db, "no_nodes"), (0, 0));
    for n in [0, -1, 4097] {
        let e = expect_db_error(
            db.execute(
                "SELECT conductor.create_distributed_table('bad_count', 'id', shard_count => $1)",
                &[&n],
            ),
            &format!("shard_count {n}"),
        );
        assert_eq!(e.code().code(), "22023", "{}", describe(&e));
    }
    let e = expect_db_error(
        db.execute(
            "SELECT conductor.create_distributed_table('bad_count', 'nope')",
            &[],
        ),
        "missing key column",
    );
    assert_eq!(e.code().code(), "42703", "{}", describe(&e));
    assert_eq!(catalog_rows_for_remote_name(&mut db, "bad_count"), (0, 0));
    assert_eq!(shard_tables_on_nodes(&cluster, "bad_count"), vec![]);
    exec(&mut db, "DROP FOREIGN TABLE no_nodes, bad_count");

    for i in 0..cluster.node_count() {
        db.execute(
            "SELECT conductor.add_node('cluster2', $1, $2)",
            &[&format!("n{i}"), &cluster.node_url(i)],
        )
        .unwrap_or_else(|e| panic!("add_node cluster2: {}", pg_err(&e)));
    }
    exec(
        &mut db,
        "SELECT conductor.add_node('cluster2', 'spare', (SELECT url FROM conductor.nodes WHERE node_id = 'n0'));
         SELECT conductor.remove_node('cluster2', 'spare');",
    );
    assert_eq!(
        query_i64(
            &mut db,
            "SELECT count(*) FROM conductor.nodes WHERE server = 'cluster2'"
        ),
        3
    );
    exec(
        &mut db,
        "CREATE FOREIGN TABLE srv_t (id bigint NOT NULL, v text) SERVER cluster2
             OPTIONS (table_name 'srv_remote');
         SELECT conductor.create_distributed_table('srv_t', 'id', shard_count => 6);
         CREATE FOREIGN TABLE srv_u (k text NOT NULL) SERVER cluster2;
         SELECT conductor.create_distributed_table('srv_u', 'k', shard_count => 3);",
    );
    exec(
        &mut db,
        "INSERT INTO srv_t SELECT i, 'v' FROM generate_series(1, 60) i",
    );
    assert_eq!(shard_tables_on_nodes(&cluster, "srv_remote").len(), 6);
    assert_eq!(shard_tables_on_nodes(&cluster, "srv_u").len(), 3);

    // Rolled back: nothing changes.
    exec(&mut db, "BEGIN; DROP SERVER cluster2 CASCADE; ROLLBACK;");
    assert_eq!(shard_tables_on_nodes(&cluster, "srv_remote").len(), 6);
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM srv_t"), 60);

    // Committed: its tables' catalog rows and shard tables, and its nodes, go.
    exec(&mut db, "DROP SERVER cluster2 CASCADE");
    assert_eq!(shard_tables_on_nodes(&cluster, "srv_remote"), vec![]);
    assert_eq!(shard_tables_on_nodes(&cluster, "srv_u"), vec![]);
    assert_eq!(catalog_rows_for_remote_name(&mut db, "srv_remote"), (0, 0));
    assert_eq!(catalog_rows_for_remote_name(&mut db, "srv_u"), (0, 0));
    assert_eq!(
        query_i64(
            &mut db,
            "SELECT count(*) FROM conductor.node
              WHERE server_id NOT IN (SELECT oid FROM pg_foreign_server)"
        ),
        0,
        "nodes of the dropped server"
    );
    // The other server is untouched.
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM keep_me"), 60);
    assert_eq!(shard_tables_on_nodes(&cluster, "keep_me").len(), 6);
    assert_eq!(
        query_i64(
            &mut db,
            "SELECT count(*) FROM conductor.nodes WHERE server = 'cluster'"
        ),
        3
    );
}

#[test]
fn validator_rejects_unknown_and_malformed_options() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 1,
        ..Default::default()
    });
    for (sql, code, word) in [
        (
            "CREATE SERVER bad1 FOREIGN DATA WRAPPER conductor OPTIONS (foo 'bar')",
            "HV00D",
            "foo",
        ),
        (
            "ALTER SERVER cluster OPTIONS (ADD foo 'bar')",
            "HV00D",
            "foo",
        ),
        // token belongs in a user mapping, not on the server
        (
            "ALTER SERVER cluster OPTIONS (ADD token 'secret')",
            "HV00D",
            "token",
        ),
        (
            "CREATE USER MAPPING FOR CURRENT_USER SERVER cluster OPTIONS (foo 'bar')",
            "HV00D",
            "foo",
        ),
        (
            "CREATE USER MAPPING FOR CURRENT_USER SERVER cluster OPTIONS (batch_size '10')",
            "HV00D",
            "batch_size",
        ),
        (
            "CREATE FOREIGN TABLE bad2 (id bigint) SERVER cluster OPTIONS (foo 'bar')",
            "HV00D",
            "foo",
        ),
        (
            "CREATE FOREIGN TABLE bad3 (id bigint OPTIONS (foo 'bar')) SERVER cluster",
            "HV00D",
            "foo",
        ),
        (
            "ALTER FOREIGN DATA WRAPPER conductor OPTIONS (ADD foo 'bar')",
            "HV00D",
            "foo",
        ),
        (
            "ALTER SERVER cluster OPTIONS (ADD batch_size 'abc')",
            "HV024",
            "batch_size",
        ),
        (
            "ALTER SERVER cluster OPTIONS (ADD batch_size '0')",
            "HV024",
            "batch_size",
        ),
        (
            "CREATE FOREIGN TABLE bad4 (id bigint) SERVER cluster OPTIONS (table_name '')",
            "HV024",
            "table_name",
        ),
        (
            "CREATE USER MAPPING FOR CURRENT_USER SERVER cluster OPTIONS (token '')",
            "HV024",
            "token",
        ),
    ] {
        let e = expect_db_error(db.batch_execute(sql), sql);
        assert_eq!(e.code().code(), code, "{sql}: {}", describe(&e));
        assert!(
            e.message().contains(word),
            "{sql}: message names {word}: {}",
            describe(&e)
        );
    }
    // Nothing was created by the refused statements.
    assert_eq!(
        query_i64(
            &mut db,
            "SELECT count(*) FROM pg_foreign_server WHERE srvname = 'bad1'"
        ),
        0
    );
    assert_eq!(
        query_i64(
            &mut db,
            "SELECT count(*) FROM pg_class WHERE relname LIKE 'bad_'"
        ),
        0
    );
    // The valid options are accepted where they belong.
    exec(
        &mut db,
        "ALTER SERVER cluster OPTIONS (ADD batch_size '500');
         CREATE USER MAPPING FOR CURRENT_USER SERVER cluster OPTIONS (token 'anything');
         CREATE FOREIGN TABLE good (id bigint, v text) SERVER cluster
             OPTIONS (table_name 'good_remote', batch_size '10', primary_key 'id');",
    );
}

/// A transaction that wrote to a node (its remote transaction holds the
/// node's SQLite write lock until pre-commit) and then distributes another
/// table with shards on that node: the shard tables are created over a
/// separate connection, which waits for the lock our own transaction holds.
#[test]
fn create_after_a_write_in_the_same_transaction() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE w1 (id bigint NOT NULL) SERVER cluster;
         SELECT conductor.create_distributed_table('w1', 'id', shard_count => 4);",
    );
    exec(
        &mut db,
        "BEGIN;
         INSERT INTO w1 SELECT generate_series(1, 10);
         CREATE FOREIGN TABLE w2 (id bigint NOT NULL) SERVER cluster;
         SELECT conductor.create_distributed_table('w2', 'id', shard_count => 4);
         INSERT INTO w2 SELECT generate_series(1, 10);
         COMMIT;",
    );
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM w1"), 10);
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM w2"), 10);
    assert_eq!(shard_tables_on_nodes(&cluster, "w2").len(), 4);
}

/// A statement takes its snapshot before it locks its table, so a topology
/// change committed in between is delivered to it (the invalidation drops
/// the cache) but not visible to its catalog reads. What it loads then may
/// serve that statement, but the next transaction must see the change
/// (a shard move's switch: the old copy is dropped once no older
/// transaction runs, and a stale location would reach it).
#[test]
fn a_change_committed_while_a_statement_waits_for_its_lock_is_not_cached_stale() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE lagging (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('lagging', 'id', shard_count => 1);
         INSERT INTO lagging VALUES (1, 'a');",
    );
    let node_of = |db: &mut postgres::Client| -> String {
        db.query_one(
            "SELECT node_id FROM conductor.explain('SELECT * FROM lagging WHERE id = 1')",
            &[],
        )
        .unwrap_or_else(|e| panic!("explain: {}", pg_err(&e)))
        .get(0)
    };
    let before = node_of(&mut db);
    let other = if before == "node-0" {
        "node-1"
    } else {
        "node-0"
    };

    let mut holder = cluster.client();
    exec(
        &mut holder,
        // (Foreign tables cannot be LOCKed; an ALTER locks them exclusively.)
        "BEGIN; ALTER FOREIGN TABLE lagging ALTER COLUMN v SET DEFAULT 'x';",
    );
    let mut reader = cluster.client();
    let reader_pid = query_i64(&mut reader, "SELECT pg_backend_pid()::bigint");
    let waiting = std::thread::spawn(move || {
        // Its outcome does not matter: the catalog change is not a real
        // move, so the shard table is not where the catalog now says.
        let _ = reader.simple_query("SELECT count(*) FROM lagging");
        reader
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while query_i64(
        &mut db,
        &format!("SELECT count(*) FROM pg_locks WHERE pid = {reader_pid} AND NOT granted"),
    ) == 0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the read never waited"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The catalog says the shard is elsewhere (as a move's switch would);
    // the reader's snapshot predates it.
    exec(
        &mut holder,
        &format!(
            "UPDATE conductor.shard SET node_id = '{other}' WHERE relid = 'lagging'::regclass;
             COMMIT;"
        ),
    );
    let mut reader = waiting.join().unwrap();
    assert_eq!(
        node_of(&mut reader),
        other,
        "the reader's next transaction routes by the committed catalog"
    );
    exec(
        &mut db,
        &format!(
            "UPDATE conductor.shard SET node_id = '{before}' WHERE relid = 'lagging'::regclass"
        ),
    );
}
