//! Leftover shard tables of a table dropped while one of its nodes was down
//! are recorded and cleaned, and the tests run a build installed apart from
//! the demo's.

use conductor_e2e::postgres::Client;
use conductor_e2e::{pg_err, Cluster, ClusterOptions};

fn exec(db: &mut Client, sql: &str) {
    db.batch_execute(sql)
        .unwrap_or_else(|e| panic!("{sql}: {}", pg_err(&e)));
}

fn pending(db: &mut Client) -> Vec<(String, String)> {
    db.query(
        "SELECT node_id, table_name FROM conductor.cleanup_pending ORDER BY 1, 2",
        &[],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

fn tables_named(cluster: &Cluster, prefix: &str) -> Vec<(usize, String)> {
    (0..cluster.node_count())
        .flat_map(|i| {
            cluster
                .node_tables(i)
                .into_iter()
                .filter(|t| t.starts_with(prefix))
                .map(move |t| (i, t))
        })
        .collect()
}

const CREATE_T: &str = "CREATE FOREIGN TABLE t (id bigint NOT NULL, v text) SERVER cluster;
     SELECT conductor.create_distributed_table('t', 'id', shard_count => 6);";

#[test]
fn leftovers_of_a_drop_with_a_node_down_are_recorded_and_cleaned() {
    let (mut cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        node_delay_ms: None,
        token: None,
    });
    exec(&mut db, CREATE_T);
    exec(
        &mut db,
        "INSERT INTO t SELECT i, 'old' FROM generate_series(1, 60) i",
    );
    let on_node1: Vec<String> = cluster
        .node_tables(1)
        .into_iter()
        .filter(|t| t.starts_with("t_"))
        .collect();
    assert_eq!(on_node1.len(), 2);

    // A rolled-back drop records nothing.
    cluster.stop_node(1);
    exec(&mut db, "BEGIN; DROP FOREIGN TABLE t; ROLLBACK");
    assert!(pending(&mut db).is_empty());

    // The drop commits; node-1's shard tables stay and are recorded.
    exec(&mut db, "DROP FOREIGN TABLE t");
    let recorded = pending(&mut db);
    assert_eq!(
        recorded,
        on_node1
            .iter()
            .map(|t| ("node-1".to_string(), t.clone()))
            .collect::<Vec<_>>()
    );
    cluster.start_node(1);
    assert_eq!(tables_named(&cluster, "t_").len(), 2, "left on node-1");

    // Creating the same table again drops the recorded leftovers first.
    exec(&mut db, CREATE_T);
    assert!(pending(&mut db).is_empty());
    let n: i64 = db.query_one("SELECT count(*) FROM t", &[]).unwrap().get(0);
    assert_eq!(n, 0, "no old rows come back");
    assert_eq!(tables_named(&cluster, "t_").len(), 6);

    // Dropped again with node-1 down, then cleaned by conductor.cleanup().
    cluster.stop_node(1);
    exec(&mut db, "DROP FOREIGN TABLE t");
    assert_eq!(pending(&mut db).len(), 2);
    let kept: Vec<String> = db
        .query("SELECT outcome FROM conductor.cleanup()", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        kept.iter().all(|o| o.starts_with("kept")),
        "node still down: {kept:?}"
    );
    assert_eq!(pending(&mut db).len(), 2);
    cluster.start_node(1);
    let done: Vec<String> = db
        .query("SELECT outcome FROM conductor.cleanup()", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(done, vec!["dropped", "dropped"]);
    assert!(pending(&mut db).is_empty());
    assert!(tables_named(&cluster, "t_").is_empty(), "nothing left");

    // A table on a node that is not a recorded leftover still fails the
    // create, naming node and table.
    cluster.node_query(0, "CREATE TABLE \"x_0000\" (a)", &[]);
    let err = db
        .batch_execute(
            "CREATE FOREIGN TABLE x (id bigint NOT NULL) SERVER cluster;
             SELECT conductor.create_distributed_table('x', 'id', shard_count => 3);",
        )
        .expect_err("collision with a table that is not a leftover");
    let text = pg_err(&err);
    assert!(text.contains("node-0") && text.contains("x_0000"), "{text}");
}

#[test]
fn the_tests_run_a_build_installed_apart_from_the_demos() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 1,
        node_delay_ms: None,
        token: None,
    });
    let profile: String = db
        .query_one("SELECT profile FROM conductor.build_info()", &[])
        .unwrap()
        .get(0);
    assert!(profile == "debug" || profile == "release", "{profile}");
    let libdir: String = db
        .query_one(
            "SELECT setting FROM pg_config WHERE name = 'PKGLIBDIR'",
            &[],
        )
        .unwrap()
        .get(0);
    println!("the test cluster loads conductor ({profile}) from {libdir}");
    // The build id a session reports is the one of the file it loaded.
    let loaded: Option<String> = db
        .query_one("SELECT build_id FROM conductor.build_info()", &[])
        .unwrap()
        .get(0);
    let library = std::path::Path::new(&libdir).join("conductor.so");
    if let Ok(out) = std::process::Command::new("readelf")
        .arg("-n")
        .arg(&library)
        .output()
    {
        let notes = String::from_utf8_lossy(&out.stdout);
        let on_disk = notes
            .lines()
            .find_map(|l| l.trim().strip_prefix("Build ID: "))
            .map(str::to_string);
        assert!(on_disk.is_some(), "no build id in {}", library.display());
        assert_eq!(loaded, on_disk, "{}", library.display());
    }
    if std::env::var_os("CONDUCTOR_PG_BINDIR").is_some() {
        // Under `make test`: the private copy, never the system's library
        // directory that the demo cluster loads from.
        assert_ne!(libdir, "/usr/lib/postgresql/15/lib");
        assert!(std::path::Path::new(&libdir).join("conductor.so").exists());
    }
}
