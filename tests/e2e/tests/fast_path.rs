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

/// SQLSTATE of a statement that failed, or "ok".
fn outcome(db: &mut Client, sql: &str) -> String {
    match db.batch_execute(sql) {
        Ok(()) => "ok".into(),
        Err(e) => e
            .as_db_error()
            .map(|d| d.code().code().to_string())
            .unwrap_or_else(|| format!("client error: {e}")),
    }
}

fn contents(db: &mut Client, table: &str) -> Vec<(i64, Option<String>)> {
    db.query(&format!("SELECT id, v FROM {table} ORDER BY id"), &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// A one-node write whose Postgres transaction goes on after it (a function
/// or DO block that fails later, a RETURNING expression or a view's CHECK
/// OPTION that fails over the written row, the next statement of a
/// pipeline) must not be committed on its own: afterwards the distributed
/// table holds what a local table holds.
#[test]
fn a_write_the_transaction_outlives_is_undone_with_it() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        node_delay_ms: None,
        token: None,
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE t (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('t', 'id', shard_count => 8);
         CREATE TABLE l (id bigint PRIMARY KEY, v text);
         INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 20) i;
         INSERT INTO l SELECT i, 'v' || i FROM generate_series(1, 20) i;
         CREATE VIEW t_short AS SELECT * FROM t WHERE length(v) < 5 WITH CHECK OPTION;
         CREATE VIEW l_short AS SELECT * FROM l WHERE length(v) < 5 WITH CHECK OPTION;
         CREATE FUNCTION write_then_fail(sql text) RETURNS void LANGUAGE plpgsql AS
           $$ BEGIN EXECUTE sql; RAISE EXCEPTION 'after the write' USING ERRCODE = 'P0001'; END $$;",
    );
    let statements = [
        "SELECT write_then_fail('INSERT INTO {T} VALUES (100, ''f'')')",
        "SELECT write_then_fail('UPDATE {T} SET v = ''f'' WHERE id = 3')",
        "DO $$ BEGIN DELETE FROM {T} WHERE id = 4; PERFORM 1 / 0; END $$",
        "INSERT INTO {T} VALUES (101, '') RETURNING 1 / length(v)",
        "UPDATE {T} SET v = '' WHERE id = 5 RETURNING 1 / length(v)",
        "DELETE FROM {T} WHERE id = 6 RETURNING 1 / (id - 6)",
        "INSERT INTO {T}_short VALUES (102, 'too long')",
        // What can still fail is plain columns: the fast path stays.
        "INSERT INTO {T} VALUES (103, 'r') RETURNING id, v",
    ];
    for sql in statements {
        let local = outcome(&mut db, &sql.replace("{T}", "l"));
        let dist = outcome(&mut db, &sql.replace("{T}", "t"));
        assert_eq!(dist, local, "{sql}");
        assert_eq!(
            contents(&mut db, "t"),
            contents(&mut db, "l"),
            "after {sql}"
        );
    }

    // Execute messages before one Sync are one implicit transaction: the
    // second one's failure undoes the first (pgbench sends a pipeline so).
    for table in ["l", "t"] {
        let script = cluster.dir().join(format!("pipeline_{table}.sql"));
        std::fs::write(
            &script,
            format!(
                "\\startpipeline\nINSERT INTO {table} VALUES (200, 'p');\n\
                 UPDATE {table} SET v = 'p' WHERE id = 7;\n\
                 INSERT INTO {table} VALUES (1, 'dup');\n\\endpipeline\n"
            ),
        )
        .unwrap();
        let out = std::process::Command::new(cluster.pg_bindir().join("pgbench"))
            .args(["-n", "-M", "extended", "-t", "1", "-f"])
            .arg(&script)
            .arg(cluster.pg_url())
            .output()
            .expect("run pgbench");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("duplicate key") || stderr.contains("UNIQUE"),
            "{stderr}"
        );
    }
    assert_eq!(
        contents(&mut db, "t"),
        contents(&mut db, "l"),
        "after the pipeline"
    );

    // A lone statement through the extended protocol (Bind, Execute and
    // Sync sent together) is still one request.
    exec(&mut db, "SELECT * FROM t WHERE id = 8");
    let before = node_requests(&cluster);
    db.execute("UPDATE t SET v = $1 WHERE id = $2", &[&"x", &8i64])
        .unwrap();
    assert_eq!(node_requests(&cluster) - before, 1, "extended protocol");
    assert_eq!(value(&mut db, 8).as_deref(), Some("x"));
}
