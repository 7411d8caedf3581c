//! Errors from the nodes: tokens from the USER MAPPING (and clear errors
//! naming node and shard without them), a stopped node during a scan gives
//! an ERROR whose DETAIL names node and shard, and the session works again
//! once the node is back.

mod common;

use common::{describe, exec, expect_db_error, query_i64, shard_map};
use conductor_e2e::{pg_err, postgres, Cluster, ClusterOptions};
use std::time::{Duration, Instant};

const TOKEN: &str = "s3cret-token";

/// The DETAIL names a node and one of the shards that node holds.
fn assert_names_node_and_shard(
    e: &postgres::error::DbError,
    shards: &std::collections::BTreeMap<i32, (String, String)>,
    node: Option<&str>,
) {
    let detail = e.detail().unwrap_or_default();
    let named = shards.iter().find(|(shard, (n, _))| {
        node.is_none_or(|want| want == n)
            && detail.contains(&format!("node {n} "))
            && detail.contains(&format!("shard {shard}"))
    });
    assert!(
        named.is_some(),
        "DETAIL must name {} and one of its shards: {}",
        node.unwrap_or("a node"),
        describe(e)
    );
}

#[test]
fn tokens_come_from_the_user_mapping() {
    let cluster = Cluster::start(ClusterOptions {
        nodes: 3,
        node_delay_ms: None,
        token: Some(TOKEN.into()),
    });
    let mut db = cluster.client();
    // Creates the user mapping with the token, then adds the nodes (which
    // checks they answer with it).
    cluster.setup_conductor(&mut db, "cluster");
    exec(
        &mut db,
        "CREATE FOREIGN TABLE auth_t (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('auth_t', 'id', shard_count => 6);
         INSERT INTO auth_t SELECT i, 'v' || i FROM generate_series(1, 600) i;",
    );
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM auth_t"), 600);
    let shards = shard_map(&mut db, "auth_t");

    // A wrong token: the scan fails, clearly, naming node and shard.
    exec(
        &mut db,
        "ALTER USER MAPPING FOR CURRENT_USER SERVER cluster OPTIONS (SET token 'wrong')",
    );
    let e = expect_db_error(
        db.query_one("SELECT count(*) FROM auth_t", &[]),
        "scan with a wrong token",
    );
    eprintln!("wrong token: {}", describe(&e));
    assert!(
        e.code().code().starts_with("HV"),
        "FDW SQLSTATE: {}",
        describe(&e)
    );
    assert_names_node_and_shard(&e, &shards, None);
    assert!(
        e.detail().unwrap_or_default().contains("401")
            || e.detail()
                .unwrap_or_default()
                .to_lowercase()
                .contains("auth"),
        "DETAIL says it is about authentication: {}",
        describe(&e)
    );
    // Writes too.
    let e = expect_db_error(
        db.execute("INSERT INTO auth_t VALUES (1000, 'x')", &[]),
        "insert with a wrong token",
    );
    assert_names_node_and_shard(&e, &shards, None);

    // No token at all.
    exec(
        &mut db,
        "ALTER USER MAPPING FOR CURRENT_USER SERVER cluster OPTIONS (DROP token)",
    );
    let e = expect_db_error(
        db.query_one("SELECT count(*) FROM auth_t", &[]),
        "scan without a token",
    );
    assert_names_node_and_shard(&e, &shards, None);
    exec(&mut db, "DROP USER MAPPING FOR CURRENT_USER SERVER cluster");
    let e = expect_db_error(
        db.query_one("SELECT count(*) FROM auth_t", &[]),
        "scan without a user mapping",
    );
    assert_names_node_and_shard(&e, &shards, None);
    // add_node with no credentials is refused too.
    let e = expect_db_error(
        db.execute(
            "SELECT conductor.add_node('cluster', 'again', $1)",
            &[&cluster.node_url(0)],
        ),
        "add_node without a token",
    );
    assert_eq!(e.code().code(), "HV00N", "{}", describe(&e));

    // The right token again (a PUBLIC mapping works as well), in this
    // session and in another one that had cached the old state.
    let mut other = cluster.client();
    assert!(other.query_one("SELECT count(*) FROM auth_t", &[]).is_err());
    exec(
        &mut db,
        &format!("CREATE USER MAPPING FOR PUBLIC SERVER cluster OPTIONS (token '{TOKEN}')"),
    );
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM auth_t"), 600);
    assert_eq!(query_i64(&mut other, "SELECT count(*) FROM auth_t"), 600);
    exec(&mut db, "INSERT INTO auth_t VALUES (1000, 'x')");
    assert_eq!(query_i64(&mut other, "SELECT count(*) FROM auth_t"), 601);

    // The token is not readable from the topology views.
    let leaked = query_i64(
        &mut db,
        &format!(
            "SELECT count(*) FROM (
                SELECT n::text AS t FROM conductor.nodes n
                UNION ALL SELECT s::text FROM conductor.shards s
                UNION ALL SELECT t::text FROM conductor.tables t) x
              WHERE t LIKE '%{TOKEN}%'"
        ),
    );
    assert_eq!(leaked, 0);
}

#[test]
fn a_stopped_node_fails_the_scan_clearly_and_the_session_recovers() {
    let (mut cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 4,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE down_t (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('down_t', 'id', shard_count => 16);
         INSERT INTO down_t SELECT i, 'v' || i FROM generate_series(1, 1600) i;",
    );
    let shards = shard_map(&mut db, "down_t");
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM down_t"), 1600);

    // Stopped before the scan.
    cluster.stop_node(2);
    let t = Instant::now();
    let e = expect_db_error(
        db.query_one("SELECT count(*) FROM down_t", &[]),
        "scan with node-2 stopped",
    );
    eprintln!(
        "node-2 stopped: error after {:?}: {}",
        t.elapsed(),
        describe(&e)
    );
    assert!(
        e.code().code().starts_with("HV"),
        "FDW SQLSTATE: {}",
        describe(&e)
    );
    assert!(e.message().contains("node-2"), "{}", describe(&e));
    assert_names_node_and_shard(&e, &shards, Some("node-2"));
    cluster.start_node(2);
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM down_t"), 1600);
    assert_eq!(
        query_i64(&mut db, "SELECT count(*) FROM down_t WHERE v = 'v' || id"),
        1600
    );

    // Killed while the scan is in flight: node-2 answers late, and dies
    // before it answers.
    cluster.set_node_delay(2, Some(3000));
    let pid: i32 = db.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let scan = std::thread::spawn(move || {
        let r = db.query_one("SELECT count(*) FROM down_t", &[]);
        (db, r)
    });
    let mut watcher = cluster.client();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !watcher
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                             WHERE pid = $1 AND state = 'active' AND query LIKE '%down_t%')",
            &[&pid],
        )
        .unwrap()
        .get::<_, bool>(0)
    {
        assert!(Instant::now() < deadline, "scan never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    cluster.stop_node(2);
    let (mut db, r) = scan.join().unwrap();
    let e = expect_db_error(r, "scan with node-2 killed mid-scan");
    eprintln!("node-2 killed mid-scan: {}", describe(&e));
    assert!(
        e.code().code().starts_with("HV"),
        "FDW SQLSTATE: {}",
        describe(&e)
    );
    assert_names_node_and_shard(&e, &shards, Some("node-2"));

    // Back up (fast again): the same session works.
    cluster.set_node_delay(2, None);
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM down_t"), 1600);
    let ok: i64 = db
        .query_one("SELECT count(*) FROM down_t WHERE v = 'v' || id", &[])
        .unwrap_or_else(|e| panic!("{}", pg_err(&e)))
        .get(0);
    assert_eq!(ok, 1600);
}
