//! The harness itself works: a fresh Postgres answers, every node is healthy.

use conductor_e2e::{Cluster, ClusterOptions};

#[test]
fn postgres_and_nodes_come_up() {
    let mut cluster = Cluster::start(ClusterOptions {
        nodes: 2,
        node_delay_ms: None,
        token: None,
    });

    let mut db = cluster.client();
    let one: i32 = db.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
    let user: String = db
        .query_one("SELECT current_user::text", &[])
        .unwrap()
        .get(0);
    assert_eq!(user, conductor_e2e::PG_SUPERUSER);

    for i in 0..cluster.node_count() {
        let (status, _) = cluster.node_get(i, "/health").unwrap();
        assert_eq!(status, 200, "node-{i} /health");
    }

    // A stopped node stops answering; started again, it is healthy.
    cluster.stop_node(1);
    assert!(cluster.node_get(1, "/health").is_err());
    cluster.start_node(1);
    assert_eq!(cluster.node_get(1, "/health").unwrap().0, 200);
}
