//! UPDATEs whose new value depends on the row — `SET n = n + 1` over
//! smallint, integer, bigint and numeric, `SET s = s || 'x'` over text —
//! run on the nodes as one statement per shard instead of fetching every
//! row. Judged differentially: the same statements over the same rows in a
//! local table give the same rows, or fail with the same SQLSTATE (out of
//! range, numeric field overflow) and change nothing; EXPLAIN shows which
//! ones the nodes computed.

mod common;

use common::exec;
use conductor_e2e::postgres::{Client, SimpleQueryMessage};
use conductor_e2e::{Cluster, ClusterOptions};

const COLUMNS: &str = "id bigint NOT NULL, s smallint, i integer, b bigint, \
     n numeric(6,2), u numeric, t text, v varchar, w varchar(6)";

fn outcome(db: &mut Client, sql: &str) -> Result<(), String> {
    db.batch_execute(sql).map_err(|e| match e.as_db_error() {
        Some(d) => d.code().code().to_string(),
        None => e.to_string(),
    })
}

/// The rows a statement returns (sorted, as text), or its SQLSTATE.
fn returned(db: &mut Client, sql: &str) -> Result<Vec<Vec<String>>, String> {
    let messages = db.simple_query(sql).map_err(|e| match e.as_db_error() {
        Some(d) => d.code().code().to_string(),
        None => e.to_string(),
    })?;
    let mut rows: Vec<Vec<String>> = messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("∅").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    rows.sort();
    Ok(rows)
}

fn rows(db: &mut Client, table: &str) -> Vec<Vec<String>> {
    db.simple_query(&format!("SELECT * FROM {table} ORDER BY id"))
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("∅").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

fn remote_sql(db: &mut Client, sql: &str) -> String {
    db.simple_query(&format!("EXPLAIN (VERBOSE, COSTS OFF) {sql}"))
        .unwrap()
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn computed_updates_match_a_local_table() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        &format!(
            "CREATE TABLE local ({COLUMNS}, PRIMARY KEY (id));
             CREATE FOREIGN TABLE sharded ({COLUMNS}) SERVER cluster;
             SELECT conductor.create_distributed_table('sharded', 'id', shard_count => 8);
             INSERT INTO local VALUES
               (1, 0, 0, 0, 0, 0, '', '', ''),
               (2, 32767, 2147483647, 9223372036854775807, 9999.99, 1e30, 'héllo', 'v', 'abcdef'),
               (3, -32768, -2147483648, -9223372036854775808, -9999.99, -1.5, 'x', 'vv', 'a'),
               (4, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
               (5, 7, 7, 7, 1.25, 'NaN', '🙂', 'w', 'ww'),
               (6, -1, 100, -100, 0.05, 'Infinity', 'a''b', 'q', NULL);
             INSERT INTO sharded SELECT * FROM local;"
        ),
    );
    // (SET clause, computed on the nodes?) Every one runs on every row and
    // on one row, in both tables.
    let sets: &[(&str, bool)] = &[
        ("i = i + 1", true),
        ("i = 1 + i", true),
        ("i = i - 1", true),
        ("i = 5 - i", true),
        ("i = i + 2147483647", true),
        ("i = i + 3000000000::bigint", true),
        ("i = i - (-2147483648)", true),
        ("s = s + 1", true),
        ("s = s - 1::smallint", true),
        ("s = s + 40000", true),
        ("b = b + 1", true),
        ("b = b - 1", true),
        ("b = -1 - b", true),
        ("b = b + i", false),
        ("i = s + 1", true),
        ("s = i + 0", true),
        ("b = i + 2147483647", true),
        ("i = i + NULL", true),
        ("n = n + 1", true),
        ("n = n - 0.005", true),
        ("n = n + 0.004", true),
        ("n = 0.5 - n", true),
        ("n = n + 0.01", true),
        ("u = u + 1e-20", true),
        ("u = u - 'Infinity'", true),
        ("u = u + 'NaN'", true),
        ("n = n + 'Infinity'", true),
        ("n = u + 1", true),
        ("t = t || '!'", true),
        ("t = '<' || t", true),
        ("t = t || NULL", true),
        ("t = t || t", false),
        ("v = v || 'é'", true),
        ("t = v || 'x'", true),
        ("w = w || 'x'", false),
        ("i = i + 1, t = t || '.', n = n - 1", true),
        ("i = i * 2", false),
    ];
    let mut pushed = 0;
    for &(set, on_nodes) in sets {
        for filter in [
            "",
            " WHERE id = 5",
            " WHERE id IN (2, 3)",
            " WHERE id = 6 RETURNING *",
            " WHERE id <> 4 RETURNING id, i - 1, t, n",
        ] {
            let local = returned(&mut db, &format!("UPDATE local SET {set}{filter}"));
            let sql = format!("UPDATE sharded SET {set}{filter}");
            let plan = remote_sql(&mut db, &sql);
            let remote = returned(&mut db, &sql);
            assert_eq!(local, remote, "{sql}");
            assert_eq!(
                rows(&mut db, "local"),
                rows(&mut db, "sharded"),
                "after {sql}"
            );
            // Direct modify shows the UPDATE the nodes run; the row-by-row
            // path fetches rows first.
            let direct = plan.contains("UPDATE \"sharded_");
            assert_eq!(direct, on_nodes, "{sql}:\n{plan}");
            pushed += direct as usize;
        }
        // Bring overflowed rows back into range for the next statement.
        exec(
            &mut db,
            "UPDATE local SET i = 0, s = 0, b = 0 WHERE id = 2;
             UPDATE sharded SET i = 0, s = 0, b = 0 WHERE id = 2;",
        );
    }
    assert!(pushed > 0);
    // RETURNING sees the new values once: `i + 1000` is not computed
    // again over the returned row (which would overflow here).
    for table in ["local", "sharded"] {
        exec(
            &mut db,
            &format!("UPDATE {table} SET i = 2147482000 WHERE id = 1"),
        );
    }
    let sql = |t: &str| format!("UPDATE {t} SET i = i + 1000 WHERE id = 1 RETURNING i");
    let want = returned(&mut db, &sql("local"));
    assert_eq!(want, Ok(vec![vec!["2147483000".to_string()]]));
    assert_eq!(returned(&mut db, &sql("sharded")), want);
    for filter in ["WHERE id = 3", "WHERE id > 2"] {
        let local = returned(&mut db, &format!("DELETE FROM local {filter} RETURNING *"));
        let remote = returned(
            &mut db,
            &format!("DELETE FROM sharded {filter} RETURNING *"),
        );
        assert_eq!(local, remote, "DELETE {filter}");
    }
    assert_eq!(rows(&mut db, "local"), rows(&mut db, "sharded"));
    exec(
        &mut db,
        "INSERT INTO sharded SELECT * FROM local WHERE false",
    );
    // In a transaction: a failed computed UPDATE undoes nothing but
    // itself, and the transaction fails as Postgres' would.
    for table in ["local", "sharded"] {
        exec(
            &mut db,
            &format!("UPDATE {table} SET i = 2147483000 WHERE id = 1"),
        );
    }
    for table in ["local", "sharded"] {
        let r = outcome(
            &mut db,
            &format!(
                "BEGIN; UPDATE {table} SET t = 'tx' WHERE id = 5;
                 UPDATE {table} SET i = i + 1000 WHERE id = 1; COMMIT"
            ),
        );
        assert_eq!(r, Err("22003".to_string()), "{table}");
        exec(&mut db, "ROLLBACK");
    }
    assert_eq!(rows(&mut db, "local"), rows(&mut db, "sharded"));
}
