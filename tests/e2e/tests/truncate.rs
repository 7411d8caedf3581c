//! TRUNCATE of distributed tables: every shard emptied inside the Postgres
//! transaction (ROLLBACK restores every row, COMMIT empties every shard on
//! the nodes), several tables in one statement, RESTART IDENTITY accepted,
//! CASCADE refused with a clear error.

mod common;

use common::{describe, exec, expect_db_error, query_i64};
use conductor_e2e::{Cluster, ClusterOptions};

/// Rows of a table counted on the nodes themselves (all its shard tables).
fn rows_on_nodes(cluster: &Cluster, prefix: &str) -> i64 {
    common::shard_tables_on_nodes(cluster, prefix)
        .into_iter()
        .map(|(node, table)| {
            let rows = cluster.node_query(node, &format!("SELECT count(*) FROM \"{table}\""), &[]);
            rows[0][0].as_i64().unwrap()
        })
        .sum()
}

#[test]
fn truncate_is_transactional_and_covers_every_shard_and_table() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE tr_a (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('tr_a', 'id', 16);
         CREATE FOREIGN TABLE tr_b (k text NOT NULL, n int) SERVER cluster;
         SELECT conductor.create_distributed_table('tr_b', 'k', 8);
         INSERT INTO tr_a SELECT i, 'v' || i FROM generate_series(1, 5000) i;
         INSERT INTO tr_b SELECT 'k' || i, i FROM generate_series(1, 700) i;",
    );
    assert_eq!(rows_on_nodes(&cluster, "tr_a"), 5000);
    assert_eq!(rows_on_nodes(&cluster, "tr_b"), 700);

    // ROLLBACK: the transaction sees both tables empty, then every row is back.
    exec(&mut db, "BEGIN; TRUNCATE tr_a, tr_b;");
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM tr_a"), 0);
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM tr_b"), 0);
    exec(&mut db, "ROLLBACK");
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM tr_a"), 5000);
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM tr_b"), 700);
    assert_eq!(rows_on_nodes(&cluster, "tr_a"), 5000);
    assert_eq!(rows_on_nodes(&cluster, "tr_b"), 700);

    // ROLLBACK TO SAVEPOINT undoes it too.
    exec(
        &mut db,
        "BEGIN; SAVEPOINT s; TRUNCATE tr_a; ROLLBACK TO SAVEPOINT s;",
    );
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM tr_a"), 5000);
    exec(&mut db, "COMMIT");

    // CASCADE is refused, and nothing is removed.
    let e = expect_db_error(db.batch_execute("TRUNCATE tr_a CASCADE"), "CASCADE");
    assert_eq!(e.code().code(), "0A000", "{}", describe(&e));
    assert!(e.message().contains("CASCADE"), "{}", describe(&e));
    assert_eq!(rows_on_nodes(&cluster, "tr_a"), 5000);

    // A failing statement after the TRUNCATE in the same transaction
    // aborts it: every row stays.
    let e = expect_db_error(
        db.batch_execute(
            "BEGIN; TRUNCATE tr_a, tr_b; INSERT INTO tr_a VALUES (NULL, 'x'); COMMIT;",
        ),
        "null key after truncate",
    );
    assert_eq!(e.code().code(), "23502", "{}", describe(&e));
    exec(&mut db, "ROLLBACK");
    assert_eq!(rows_on_nodes(&cluster, "tr_a"), 5000);
    assert_eq!(rows_on_nodes(&cluster, "tr_b"), 700);

    // COMMIT: two tables at once, RESTART IDENTITY accepted; every shard
    // table on every node is empty, and the tables take new rows.
    exec(
        &mut db,
        "BEGIN; TRUNCATE TABLE tr_a, tr_b RESTART IDENTITY; COMMIT;",
    );
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM tr_a"), 0);
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM tr_b"), 0);
    assert_eq!(rows_on_nodes(&cluster, "tr_a"), 0);
    assert_eq!(rows_on_nodes(&cluster, "tr_b"), 0);
    assert_eq!(common::shard_tables_on_nodes(&cluster, "tr_a").len(), 16);
    exec(&mut db, "INSERT INTO tr_a VALUES (1, 'again')");
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM tr_a"), 1);

    // Outside a transaction block it commits by itself; a distributed and a
    // local table in one statement are both emptied.
    exec(
        &mut db,
        "CREATE TABLE tr_local (i int); INSERT INTO tr_local VALUES (1), (2);
         TRUNCATE tr_a, tr_local;",
    );
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM tr_a"), 0);
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM tr_local"), 0);
}
