//! The harness's own helpers against real nodes: direct Hrana queries,
//! tokens, delays, restarts keeping data.

use conductor_e2e::{Cluster, ClusterOptions};
use serde_json::json;
use std::time::{Duration, Instant};

#[test]
fn node_query_round_trips_typed_values() {
    let cluster = Cluster::start(ClusterOptions {
        nodes: 1,
        ..Default::default()
    });
    cluster.node_query(0, "CREATE TABLE t (a INTEGER, b TEXT, c REAL, d BLOB)", &[]);
    cluster.node_query(
        0,
        "INSERT INTO t VALUES (?, ?, ?, ?)",
        &[json!(-42), json!("héllo"), json!(1.5), json!(null)],
    );
    let rows = cluster.node_query(0, "SELECT a, b, c, d FROM t WHERE a = ?", &[json!(-42)]);
    assert_eq!(
        rows,
        vec![vec![json!(-42), json!("héllo"), json!(1.5), json!(null)]]
    );
    assert_eq!(cluster.node_tables(0), vec!["t".to_string()]);
    assert!(cluster
        .try_node_query(0, "SELECT * FROM missing", &[])
        .is_err());
}

#[test]
fn token_delay_and_restart() {
    let mut cluster = Cluster::start(ClusterOptions {
        nodes: 2,
        node_delay_ms: None,
        token: Some("s3cret".into()),
    });
    assert_eq!(cluster.token(), Some("s3cret"));
    cluster.node_query(1, "CREATE TABLE kept (x INTEGER)", &[]);
    cluster.node_query(1, "INSERT INTO kept VALUES (7)", &[]);

    // Restart with a delay: data survives, answers come late.
    cluster.set_node_delay(1, Some(300));
    let t = Instant::now();
    let rows = cluster.node_query(1, "SELECT x FROM kept", &[]);
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(rows, vec![vec![json!(7)]]);

    // Node 0 was untouched and has no delay.
    let t = Instant::now();
    cluster.node_query(0, "SELECT 1", &[]);
    assert!(
        t.elapsed() < Duration::from_millis(300),
        "{:?}",
        t.elapsed()
    );
}
