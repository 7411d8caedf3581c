//! Operations: the session a user opens creates their objects in public,
//! and a database using conductor survives pg_dump / pg_restore.

mod common;

use common::*;
use conductor_e2e::postgres::{Client, NoTls};
use conductor_e2e::{pg_err, Cluster, ClusterOptions, PG_SUPERUSER};
use std::collections::BTreeMap;
use std::process::Command;

fn strings(client: &mut Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", pg_err(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Every row of a query, each rendered as text, for comparisons.
fn rows(client: &mut Client, sql: &str) -> Vec<String> {
    strings(client, &format!("SELECT q::text FROM ({sql}) q"))
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn new_objects_land_in_public() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        node_delay_ms: None,
        token: None,
    });
    // The session as a user opens it: default search_path, the superuser
    // the README connects as.
    assert_eq!(strings(&mut db, "SHOW search_path"), ["\"$user\", public"]);
    assert_eq!(
        strings(&mut db, "SELECT current_user::text"),
        [PG_SUPERUSER]
    );
    exec(
        &mut db,
        "CREATE FOREIGN TABLE users (id bigint NOT NULL, email text) SERVER cluster;
         SELECT conductor.create_distributed_table('users', 'id', shard_count => 4);
         CREATE TABLE notes (id int);
         CREATE VIEW user_emails AS SELECT email FROM users;",
    );
    assert_eq!(
        strings(
            &mut db,
            "SELECT relname || ' ' || relnamespace::regnamespace::text FROM pg_class
              WHERE relname IN ('users', 'notes', 'user_emails') ORDER BY relname"
        ),
        ["notes public", "user_emails public", "users public"]
    );
    exec(&mut db, "INSERT INTO users VALUES (1, 'a@example.com')");
    assert_eq!(
        strings(&mut db, "SELECT email FROM user_emails"),
        ["a@example.com"]
    );
}

/// The rows, shards and node tables a database shows of `items`.
fn snapshot(client: &mut Client) -> (Vec<String>, Vec<String>) {
    (
        rows(client, "SELECT id, v, n FROM items ORDER BY id"),
        rows(
            client,
            "SELECT table_name::text, shard_id, node_id, url, status, remote_table
               FROM conductor.shards ORDER BY table_name::text, shard_id",
        ),
    )
}

#[test]
fn dump_and_restore_keep_the_topology() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        node_delay_ms: None,
        token: Some("dump-restore-token".into()),
    });
    // A dropped column (the restored table numbers its columns anew), a
    // shard index and a renamed server: all must survive.
    exec(
        &mut db,
        "CREATE FOREIGN TABLE items (id bigint NOT NULL, gone int, v text, n int) SERVER cluster;
         SELECT conductor.create_distributed_table('items', 'id', shard_count => 8);
         ALTER FOREIGN TABLE items DROP COLUMN gone;
         SELECT conductor.create_shard_index('items', ARRAY['n'], 'items_n');
         CREATE TABLE items_local (id bigint PRIMARY KEY, v text, n int);
         INSERT INTO items_local SELECT i, 'v' || i, i % 7 FROM generate_series(1, 300) i;
         INSERT INTO items SELECT * FROM items_local;
         CREATE FOREIGN TABLE other (k text NOT NULL, x int) SERVER cluster;
         SELECT conductor.create_distributed_table('other', 'k', shard_count => 3);
         INSERT INTO other VALUES ('a', 1), ('b', 2);
         ALTER SERVER cluster RENAME TO fleet;",
    );
    // A virtual index (its procedure commits, so it is called alone).
    exec(
        &mut db,
        "CALL conductor.create_virtual_index('other', ARRAY['x'], true, 'other_x')",
    );
    let before = snapshot(&mut db);
    assert_eq!(before.0.len(), 300);
    let node_tables = all_node_tables(&cluster);
    let server_oid = query_i64(
        &mut db,
        "SELECT oid::bigint FROM pg_foreign_server WHERE srvname = 'fleet'",
    );

    let dump = cluster.dir().join("conductor.dump");
    let port = cluster.pg_port().to_string();
    let connect = ["-h", "127.0.0.1", "-p", &port, "-U", PG_SUPERUSER];
    run(
        Command::new(cluster.pg_bindir().join("pg_dump"))
            .args(connect)
            .args(["-Fc", "-d", "conductor", "-f"])
            .arg(&dump),
        "pg_dump",
    );
    exec(&mut db, "CREATE DATABASE restored");
    run(
        Command::new(cluster.pg_bindir().join("pg_restore"))
            .args(connect)
            .args(["--exit-on-error", "-d", "restored"])
            .arg(&dump),
        "pg_restore",
    );
    let mut config = cluster.pg_config();
    config.dbname("restored");
    let mut restored = config
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("connect to restored: {}", pg_err(&e)));

    // The server was created anew (another oid), and the catalog follows it.
    let restored_oid = query_i64(
        &mut restored,
        "SELECT oid::bigint FROM pg_foreign_server WHERE srvname = 'fleet'",
    );
    assert_ne!(restored_oid, server_oid, "the restore made a new server");
    assert_eq!(
        query_i64(
            &mut restored,
            "SELECT (SELECT count(*) FROM conductor.node WHERE server_id = s.oid)
                  + (SELECT count(*) FROM conductor.distributed_table WHERE server_id = s.oid)
                  + (SELECT count(*) FROM conductor.shard WHERE server_id = s.oid)
               FROM pg_foreign_server s WHERE srvname = 'fleet'"
        ),
        3 + 2 + 8 + 3,
        "every catalog row refers to the restored server"
    );

    // The recorded shard columns follow the restored table's numbering.
    assert_eq!(
        query_i64(
            &mut restored,
            "SELECT count(*) FROM conductor.distributed_table t
               CROSS JOIN LATERAL jsonb_array_elements(t.shard_columns) c
               JOIN pg_attribute a ON a.attrelid = t.relid AND a.attname = c->>'name'
              WHERE (c->>'attnum')::int <> a.attnum"
        ),
        0
    );
    assert_eq!(
        query_i64(
            &mut restored,
            "SELECT attnum::bigint FROM pg_attribute WHERE attrelid = 'items'::regclass AND attname = 'n'"
        ),
        3,
        "the restored table has no dropped column"
    );

    // Same rows, same shards on the same nodes, and nothing created or
    // dropped on the nodes by the restore.
    assert_eq!(snapshot(&mut restored), before);
    assert_eq!(
        rows(&mut restored, "SELECT id, v, n FROM items ORDER BY id"),
        rows(
            &mut restored,
            "SELECT id, v, n FROM items_local ORDER BY id"
        ),
    );
    for sql in [
        "SELECT id, v, n FROM items WHERE id = 42",
        "SELECT n, count(*) FROM items GROUP BY n ORDER BY n",
        "SELECT * FROM other ORDER BY k",
    ] {
        assert_eq!(rows(&mut restored, sql), rows(&mut db, sql), "{sql}");
    }
    assert_eq!(
        rows(
            &mut restored,
            "SELECT table_name::text, index_name, columns FROM conductor.shard_indexes"
        ),
        ["(items,items_n,{n})"]
    );
    assert_eq!(
        rows(
            &mut restored,
            "SELECT table_name::text, index_name, columns, is_unique, status
               FROM conductor.virtual_indexes"
        ),
        ["(other,other_x,{x},t,ready)"]
    );
    assert_eq!(
        rows(&mut restored, "SELECT * FROM other WHERE x = 2"),
        rows(&mut db, "SELECT * FROM other WHERE x = 2")
    );
    let e = restored
        .batch_execute("INSERT INTO other VALUES ('c', 2)")
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("23505"), "{}", pg_err(&e));
    assert_eq!(all_node_tables(&cluster), node_tables);

    // Writes and schema changes work in the restored database, and reach
    // the same nodes the original reads.
    for sql in [
        "INSERT INTO {t} VALUES (1001, 'new', 3)",
        "UPDATE {t} SET v = 'updated' WHERE id = 5",
        "DELETE FROM {t} WHERE id = 6",
        "UPDATE {t} SET n = n + 1 WHERE n = 2",
    ] {
        exec(&mut restored, &sql.replace("{t}", "items"));
        exec(&mut restored, &sql.replace("{t}", "items_local"));
    }
    exec(
        &mut restored,
        "ALTER FOREIGN TABLE items ADD COLUMN w bigint;
         ALTER TABLE items_local ADD COLUMN w bigint;
         UPDATE items SET w = id * 2 WHERE id % 3 = 0;
         UPDATE items_local SET w = id * 2 WHERE id % 3 = 0;",
    );
    assert_eq!(
        rows(&mut restored, "SELECT id, v, n, w FROM items ORDER BY id"),
        rows(
            &mut restored,
            "SELECT id, v, n, w FROM items_local ORDER BY id"
        ),
    );
    assert_eq!(
        strings(
            &mut db,
            "SELECT v FROM items WHERE id IN (5, 6, 1001) ORDER BY id"
        ),
        ["updated", "new"]
    );
}

/// The fields of the `conductor remote request` lines the server logged
/// after the first `skip` of them: `key: value` pairs.
fn remote_log(cluster: &Cluster, skip: usize) -> Vec<BTreeMap<String, String>> {
    cluster
        .pg_log()
        .lines()
        .filter_map(|l| l.split_once("conductor remote request: ").map(|(_, r)| r))
        .skip(skip)
        .map(|rest| {
            rest.split("  ")
                .map(|field| match field.split_once(": ") {
                    Some((k, v)) => (k.to_string(), v.to_string()),
                    None => (field.to_string(), String::new()),
                })
                .collect()
        })
        .collect()
}

#[test]
fn remote_requests_are_logged_past_the_threshold() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        node_delay_ms: None,
        token: None,
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE logged (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('logged', 'id', shard_count => 4);
         INSERT INTO logged SELECT i, 'v' || i FROM generate_series(1, 100) i;
         SELECT * FROM logged;",
    );
    assert!(remote_log(&cluster, 0).is_empty(), "off by default");

    // Threshold 0: every request. A scan logs each shard with its rows.
    exec(
        &mut db,
        "SET conductor.log_remote_statements_min_duration = 0",
    );
    let mark = remote_log(&cluster, 0).len();
    assert_eq!(
        db.query("SELECT id, v FROM logged", &[])
            .unwrap_or_else(|e| panic!("{}", pg_err(&e)))
            .len(),
        100
    );
    let scan: Vec<_> = remote_log(&cluster, mark)
        .into_iter()
        .filter(|f| f.contains_key("scan of logged"))
        .collect();
    let logged: BTreeMap<i32, (String, i64)> = scan
        .iter()
        .map(|f| {
            assert!(f["duration"].ends_with(" ms"), "{f:?}");
            (
                f["shard"].parse().unwrap(),
                (f["node"].clone(), f["rows"].parse().unwrap()),
            )
        })
        .collect();
    assert_eq!(logged.len(), scan.len(), "one line per shard: {scan:?}");
    // The rows of each shard, computed locally; the node from the catalog.
    let expected: BTreeMap<i32, (String, i64)> = db
        .query(
            "SELECT s.shard_id, s.node_id, count(i)
               FROM conductor.shards s
               LEFT JOIN generate_series(1, 100) i
                 ON conductor.shard_for('logged', i::bigint) = s.shard_id
              WHERE s.table_name = 'logged'::regclass
              GROUP BY s.shard_id, s.node_id",
            &[],
        )
        .unwrap_or_else(|e| panic!("{}", pg_err(&e)))
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    assert_eq!(logged, expected);

    // A write names its shard and node, with the rows it changed.
    let mark = remote_log(&cluster, 0).len();
    exec(&mut db, "UPDATE logged SET v = 'x' WHERE id = 42");
    let shard = query_i64(
        &mut db,
        "SELECT conductor.shard_for('logged', 42::bigint)::bigint",
    );
    let node: String = db
        .query_one(
            "SELECT node_id FROM conductor.shards
              WHERE table_name = 'logged'::regclass AND shard_id = $1",
            &[&(shard as i32)],
        )
        .unwrap()
        .get(0);
    let write = remote_log(&cluster, mark);
    assert!(
        write
            .iter()
            .any(|f| f.get("shard") == Some(&shard.to_string())
                && f.get("node") == Some(&node)
                && f.get("rows").map(String::as_str) == Some("1")),
        "{write:?}"
    );

    // Past the threshold only.
    exec(
        &mut db,
        "SET conductor.log_remote_statements_min_duration = '1h'",
    );
    let mark = remote_log(&cluster, 0).len();
    exec(
        &mut db,
        "SELECT * FROM logged; UPDATE logged SET v = 'y' WHERE id = 42",
    );
    assert!(remote_log(&cluster, mark).is_empty());

    // Only superusers set it, as log_min_duration_statement.
    exec(&mut db, "CREATE ROLE plain LOGIN");
    let mut config = cluster.pg_config();
    config.user("plain");
    let mut plain = config.connect(NoTls).unwrap();
    exec(&mut plain, "SELECT * FROM conductor.cache_stats()");
    let e = expect_db_error(
        plain.batch_execute("SET conductor.log_remote_statements_min_duration = 0"),
        "non-superuser sets the remote log threshold",
    );
    assert_eq!(e.code().code(), "42501", "{}", describe(&e));
}
