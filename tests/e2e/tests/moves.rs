//! Online shard moves: shards move, by hand, by rebalancing and by
//! draining a node, while several sessions write and read; no write is
//! lost and the table returns the rows a local table given the same writes
//! returns. A move killed, cut off from its target or past its write-block
//! limit leaves the source authoritative and can be run again.

mod common;

use common::sqld_bin;
use conductor_e2e::postgres::{self, Client};
use conductor_e2e::{pg_err, Cluster, ClusterOptions};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn exec(db: &mut Client, sql: &str) {
    db.batch_execute(sql)
        .unwrap_or_else(|e| panic!("{sql}: {}", pg_err(&e)));
}

fn sqlstate(e: &postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

/// Every row of `table` as text, in key order.
fn rows(db: &mut Client, table: &str) -> Vec<String> {
    db.query(&format!("SELECT x::text FROM {table} x ORDER BY id"), &[])
        .unwrap_or_else(|e| panic!("read {table}: {}", pg_err(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn assert_same_rows(db: &mut Client, table: &str, local: &str) {
    let a = rows(db, table);
    let b = rows(db, local);
    assert_eq!(a.len(), b.len(), "{table} and {local} differ in row count");
    assert!(a == b, "{table} and {local} differ");
}

/// (shard, node, status) of every shard of `table`.
fn placement(db: &mut Client, table: &str) -> Vec<(i32, String, String)> {
    db.query(
        "SELECT shard_id, node_id, status FROM conductor.shards
          WHERE table_name = $1::text::regclass ORDER BY shard_id",
        &[&table],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect()
}

/// Each shard table is on the node the catalog names and nowhere else, and
/// no node keeps anything a move creates.
fn assert_nodes_match_catalog(cluster: &Cluster, db: &mut Client, table: &str) {
    let placed = placement(db, table);
    for i in 0..cluster.node_count() {
        let tables = cluster.node_tables(i);
        assert!(
            !tables.iter().any(|t| t.contains("__move_")),
            "node-{i} keeps move objects: {tables:?}"
        );
        for (shard, node, status) in &placed {
            assert_eq!(status, "active");
            let name = format!("{table}_{shard:04}");
            assert_eq!(
                tables.contains(&name),
                node == &cluster.node_id(i),
                "{name} on node-{i}; the catalog says {node}"
            );
        }
    }
}

/// A tiny deterministic generator (no dependency for it).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Runs `sql` until it succeeds, retrying only the failures a move makes
/// retryable (40001); any other failure fails the test.
fn retrying<T>(
    what: &str,
    retries: &AtomicU64,
    mut f: impl FnMut() -> Result<T, postgres::Error>,
) -> T {
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if sqlstate(&e) == "40001" => {
                retries.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("{what}: {}", pg_err(&e)),
        }
    }
}

const WRITERS: u64 = 4;
const KEYS: u64 = 4000;

/// One session: writes its own keys (id % WRITERS = w) through conductor
/// and the same statements to the local table, and reads its keys back
/// through conductor, which must return what it last wrote.
fn worker(
    cfg: postgres::Config,
    w: u64,
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    retries: Arc<AtomicU64>,
) {
    let mut db = cfg.connect(postgres::NoTls).unwrap();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (w + 1));
    let mut expected: HashMap<i64, (i64, String)> = db
        .query(
            "SELECT id, v, s FROM t_local WHERE id % $1 = $2",
            &[&(WRITERS as i64), &(w as i64)],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) || n < 50 {
        n += 1;
        let id = ((rng.next() % (KEYS / WRITERS)) * WRITERS + w) as i64;
        let s = format!("w{w}-{n}");
        let roll = rng.next() % 8;
        match expected.get(&id).cloned() {
            None => {
                for table in ["t", "t_local"] {
                    let sql = format!("INSERT INTO {table} (id, v, s) VALUES ($1, 0, $2)");
                    retrying(&sql, &retries, || db.execute(&sql, &[&id, &s]));
                }
                expected.insert(id, (0, s));
            }
            Some((v, _)) if roll < 4 => {
                for table in ["t", "t_local"] {
                    let sql = format!("UPDATE {table} SET v = v + 1, s = $2 WHERE id = $1");
                    let changed = retrying(&sql, &retries, || db.execute(&sql, &[&id, &s]));
                    assert_eq!(changed, 1, "{sql} for {id}");
                }
                expected.insert(id, (v + 1, s));
            }
            Some(_) if roll < 6 => {
                for table in ["t", "t_local"] {
                    let sql = format!("DELETE FROM {table} WHERE id = $1");
                    let changed = retrying(&sql, &retries, || db.execute(&sql, &[&id]));
                    assert_eq!(changed, 1, "{sql} for {id}");
                }
                expected.remove(&id);
            }
            Some(want) => {
                let got = retrying("read", &retries, || {
                    db.query("SELECT v, s FROM t WHERE id = $1", &[&id])
                });
                assert_eq!(got.len(), 1, "key {id} is missing");
                let have: (i64, String) = (got[0].get(0), got[0].get(1));
                assert_eq!(have, want, "key {id} reads an old value");
            }
        }
        ops.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn shards_move_while_sessions_write_and_read() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        node_delay_ms: None,
        token: None,
    });
    // Start on two nodes; the third is added later, as a cluster grows.
    exec(&mut db, "SELECT conductor.remove_node('cluster', 'node-2')");
    exec(
        &mut db,
        "CREATE FOREIGN TABLE t (id bigint NOT NULL, v bigint, s text) SERVER cluster;
         SELECT conductor.create_distributed_table('t', 'id', shard_count => 8);
         CREATE TABLE t_local (id bigint PRIMARY KEY, v bigint, s text);
         INSERT INTO t SELECT i * 2, i, 'initial' FROM generate_series(0, 1499) i;
         INSERT INTO t_local SELECT i * 2, i, 'initial' FROM generate_series(0, 1499) i;",
    );
    let url = cluster.node_url(2);
    db.execute(
        "SELECT conductor.add_node('cluster', 'node-2', $1)",
        &[&url],
    )
    .unwrap();

    let plan: Vec<(String, i32, String, String)> = db
        .query(
            "SELECT table_name::text, shard_id, source_node, target_node
               FROM conductor.rebalance_plan('cluster')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        plan.len(),
        2,
        "8 shards over 3 nodes: two move to the new one: {plan:?}"
    );
    assert!(plan.iter().all(|p| p.3 == "node-2"));

    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (cfg, stop, ops, retries) = (
                cluster.pg_config(),
                stop.clone(),
                ops.clone(),
                retries.clone(),
            );
            std::thread::spawn(move || worker(cfg, w, stop, ops, retries))
        })
        .collect();
    let wait_ops = |at_least: u64| {
        while ops.load(Ordering::Relaxed) < at_least {
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    wait_ops(200);
    exec(&mut db, "CALL conductor.rebalance('cluster')");
    let before = ops.load(Ordering::Relaxed);
    wait_ops(before + 100);
    // By hand, a shard back and forth.
    let (shard, from): (i32, String) = {
        let r = db
            .query_one(
                "SELECT shard_id, node_id FROM conductor.shards
                  WHERE table_name = 't'::regclass AND node_id = 'node-0' ORDER BY shard_id LIMIT 1",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    exec(
        &mut db,
        &format!("CALL conductor.move_shard('t', {shard}, 'node-1')"),
    );
    exec(
        &mut db,
        &format!("CALL conductor.move_shard('t', {shard}, '{from}')"),
    );
    let before = ops.load(Ordering::Relaxed);
    wait_ops(before + 100);
    // Drain node-1 and remove it: its shards go to the others.
    exec(&mut db, "CALL conductor.drain_node('cluster', 'node-1')");
    let before = ops.load(Ordering::Relaxed);
    wait_ops(before + 100);
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        if w.join().is_err() {
            eprintln!("{}", cluster.pg_log());
            panic!("a worker failed");
        }
    }

    assert_same_rows(&mut db, "t", "t_local");
    for r in db
        .query(
            "SELECT shard_id, source_node, target_node, rows_copied, changes_applied, block_ms
               FROM conductor.shard_moves ORDER BY move_id",
            &[],
        )
        .unwrap()
    {
        let (s, f, t, c, a, b): (i32, String, String, i64, i64, Option<f64>) =
            (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
        eprintln!("moved shard {s} {f} -> {t}: {c} rows copied, {a} changes replayed, writes blocked {b:?} ms");
    }
    eprintln!(
        "{} operations, {} retried",
        ops.load(Ordering::Relaxed),
        retries.load(Ordering::Relaxed)
    );
    let moves: Vec<(String, i64)> = db
        .query(
            "SELECT phase, rows_copied FROM conductor.shard_moves ORDER BY move_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(moves.len() >= 5, "{moves:?}");
    assert!(moves.iter().all(|(p, _)| p == "done"), "{moves:?}");
    assert!(moves.iter().all(|(_, n)| *n > 0), "{moves:?}");
    let on_node1: i64 = db
        .query_one(
            "SELECT count(*) FROM conductor.shards WHERE node_id = 'node-1'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(on_node1, 0, "node-1 was drained");
    exec(&mut db, "SELECT conductor.remove_node('cluster', 'node-1')");
    assert_nodes_match_catalog(&cluster, &mut db, "t");
    // Nothing left to clean.
    let leftovers: i64 = db
        .query_one(
            "SELECT (SELECT count(*) FROM conductor.cleanup_moves())
                  + (SELECT count(*) FROM conductor.cleanup_pending)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(leftovers, 0);
    // Reads and writes go on after the moves.
    exec(
        &mut db,
        "UPDATE t SET v = v * 2 WHERE id % 3 = 0; UPDATE t_local SET v = v * 2 WHERE id % 3 = 0;",
    );
    assert_same_rows(&mut db, "t", "t_local");
}

/// Polls until move of `shard` has copied some rows; returns the pid of the
/// backend running it.
fn wait_for_copy(db: &mut Client, shard: i32) -> i32 {
    for _ in 0..6000 {
        let r = db
            .query(
                "SELECT m.pid FROM conductor.shard_move m
                  WHERE m.shard_id = $1 AND m.phase = 'copying' AND m.rows_copied > 0",
                &[&shard],
            )
            .unwrap();
        if let Some(r) = r.first() {
            return r.get(0);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!("the move of shard {shard} never started copying");
}

fn move_objects(cluster: &Cluster) -> Vec<(usize, String)> {
    (0..cluster.node_count())
        .flat_map(|i| {
            cluster
                .node_tables(i)
                .into_iter()
                .filter(|t| t.contains("__move_"))
                .map(move |t| (i, t))
        })
        .collect()
}

#[test]
fn failed_moves_leave_the_source_authoritative() {
    let (mut cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        node_delay_ms: None,
        token: None,
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE t (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('t', 'id', shard_count => 3);
         CREATE TABLE t_local (id bigint PRIMARY KEY, v text);
         INSERT INTO t SELECT i, 'row ' || i FROM generate_series(1, 45000) i;
         INSERT INTO t_local SELECT * FROM t;
         SET conductor.node_cooldown = 0;",
    );
    // Shard i starts on node-i.
    assert_eq!(
        placement(&mut db, "t")
            .iter()
            .map(|p| p.1.clone())
            .collect::<Vec<_>>(),
        ["node-0", "node-1", "node-2"]
    );
    // Slow requests to node-2 stretch each copy step.
    cluster.set_node_delay(2, Some(40));

    // A move commits step by step: not inside a transaction block.
    let err = db
        .batch_execute("BEGIN; CALL conductor.move_shard('t', 1, 'node-2')")
        .expect_err("refused in a transaction block");
    assert_eq!(sqlstate(&err), "25001", "{}", pg_err(&err));
    exec(&mut db, "ROLLBACK");
    // Predictable failures are refused before anything changes.
    for (call, state) in [
        ("CALL conductor.move_shard('t', 1, 'node-9')", "42704"),
        ("CALL conductor.move_shard('t', 7, 'node-2')", "22023"),
    ] {
        let err = db.batch_execute(call).expect_err(call);
        assert_eq!(sqlstate(&err), state, "{call}: {}", pg_err(&err));
    }
    let moves: i64 = db
        .query_one("SELECT count(*) FROM conductor.shard_moves", &[])
        .unwrap()
        .get(0);
    assert_eq!(moves, 0);

    // 1. The moving backend is killed while it copies.
    let cfg = cluster.pg_config();
    let mover = std::thread::spawn(move || {
        let mut c = cfg.connect(postgres::NoTls).unwrap();
        c.batch_execute("CALL conductor.move_shard('t', 1, 'node-2')")
    });
    let pid = wait_for_copy(&mut db, 1);
    db.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    assert!(mover.join().unwrap().is_err(), "the killed move failed");
    let shown: (String, Option<String>) = {
        let r = db
            .query_one(
                "SELECT status, target_node_id FROM conductor.shards
                  WHERE table_name = 't'::regclass AND shard_id = 1",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(shown, ("rebalancing_source".into(), Some("node-2".into())));
    // The source serves reads and writes meanwhile.
    exec(
        &mut db,
        "UPDATE t SET v = 'after kill' WHERE conductor.shard_for('t', id) = 1 AND id % 7 = 0;
         UPDATE t_local SET v = 'after kill' WHERE conductor.shard_for('t', id) = 1 AND id % 7 = 0;",
    );
    assert_same_rows(&mut db, "t", "t_local");
    // The write block holds only its shard: with a block row in force on
    // node-1 (as a cut-over inserts it), writes to shard 1 are refused as
    // retryable, naming node and shard, while a table sharing node-1 is
    // written; without it, shard 1 is written again.
    exec(
        &mut db,
        "CREATE FOREIGN TABLE u (id bigint NOT NULL) SERVER cluster;
         SELECT conductor.create_distributed_table('u', 'id', shard_count => 3, colocate_with => 'none');",
    );
    cluster.node_query(
        1,
        "INSERT INTO t_0001__move_block (until) VALUES (julianday('now') + 1)",
        &[],
    );
    let in_shard_1: i64 = db
        .query_one(
            "SELECT min(i)::bigint FROM generate_series(1, 100) i WHERE conductor.shard_for('t', i) = 1",
            &[],
        )
        .unwrap()
        .get(0);
    let err = db
        .execute("UPDATE t SET v = v WHERE id = $1", &[&in_shard_1])
        .expect_err("blocked");
    assert_eq!(sqlstate(&err), "40001", "{}", pg_err(&err));
    let e = pg_err(&err);
    assert!(
        e.contains("node-1 (shard 1)") && e.contains("being moved"),
        "{e}"
    );
    exec(&mut db, "INSERT INTO u SELECT generate_series(1, 30)");
    cluster.node_query(1, "DELETE FROM t_0001__move_block", &[]);
    db.execute("UPDATE t SET v = v WHERE id = $1", &[&in_shard_1])
        .unwrap();

    // Routing and conductor_explain keep the shard on its source.
    let (node, reason): (String, String) = {
        let r = db
            .query_one(
                "SELECT node_id, reason FROM conductor_explain(
                    'SELECT * FROM t WHERE id = ' ||
                    (SELECT min(i) FROM generate_series(1, 100) i WHERE conductor.shard_for('t', i) = 1))",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(node, "node-1");
    assert!(reason.contains("moving to node node-2"), "{reason}");
    // The shard tables' schema cannot change under a move.
    let err = db
        .batch_execute("ALTER FOREIGN TABLE t ADD COLUMN w integer")
        .expect_err("refused while a shard moves");
    assert_eq!(sqlstate(&err), "55006", "{}", pg_err(&err));
    let cleaned: Vec<(String, String)> = db
        .query(
            "SELECT table_name, outcome FROM conductor.cleanup_moves()",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(cleaned, [("t".to_string(), "undone".to_string())]);
    assert!(move_objects(&cluster).is_empty());
    assert!(!cluster.node_tables(2).contains(&"t_0001".to_string()));
    // Run again, it moves; writes made while it copies reach the target.
    // By key, so that only shard 1 is written.
    let keys = |db: &mut Client, filter: &str| -> Vec<i64> {
        db.query_one(
            &format!(
                "SELECT coalesce(array_agg(i::bigint), '{{}}'::bigint[]) FROM generate_series(1, 50300) i
                  WHERE conductor.shard_for('t', i) = 1 AND {filter}"
            ),
            &[],
        )
        .unwrap()
        .get(0)
    };
    let (updated, deleted, inserted) = (
        keys(&mut db, "i <= 45000 AND i % 5 = 0"),
        keys(&mut db, "i <= 45000 AND i % 11 = 1"),
        keys(&mut db, "i > 50000"),
    );
    let cfg = cluster.pg_config();
    let mover = std::thread::spawn(move || {
        let mut c = cfg.connect(postgres::NoTls).unwrap();
        c.batch_execute("CALL conductor.move_shard('t', 1, 'node-2')")
            .map_err(|e| pg_err(&e))
    });
    wait_for_copy(&mut db, 1);
    // Writes that meet the move's write block are refused as retryable.
    let retries = AtomicU64::new(0);
    for table in ["t", "t_local"] {
        let sql = format!("UPDATE {table} SET v = 'during copy' WHERE id = ANY($1)");
        retrying(&sql, &retries, || db.execute(&sql, &[&updated]));
        let sql = format!("DELETE FROM {table} WHERE id = ANY($1)");
        retrying(&sql, &retries, || db.execute(&sql, &[&deleted]));
        let sql = format!(
            "INSERT INTO {table} SELECT i, 'inserted during copy' FROM unnest($1::bigint[]) i"
        );
        retrying(&sql, &retries, || db.execute(&sql, &[&inserted]));
    }
    mover.join().unwrap().expect("the move succeeds");
    let applied: i64 = db
        .query_one(
            "SELECT changes_applied FROM conductor.shard_moves ORDER BY move_id DESC LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(applied > 0, "changes made during the copy were replayed");
    assert_same_rows(&mut db, "t", "t_local");
    assert_nodes_match_catalog(&cluster, &mut db, "t");

    // 2. The target node fails while the shard is copied to it.
    let cfg = cluster.pg_config();
    let mover = std::thread::spawn(move || {
        let mut c = cfg.connect(postgres::NoTls).unwrap();
        c.batch_execute("CALL conductor.move_shard('t', 0, 'node-2')")
            .map_err(|e| pg_err(&e))
    });
    wait_for_copy(&mut db, 0);
    cluster.stop_node(2);
    let err = mover
        .join()
        .unwrap()
        .expect_err("a move to a failed node fails");
    assert!(err.contains("node-2"), "{err}");
    let (phase, cleaned_up): (String, bool) = {
        let r = db
            .query_one(
                "SELECT phase, cleaned FROM conductor.shard_moves ORDER BY move_id DESC LIMIT 1",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((phase.as_str(), cleaned_up), ("aborted", true));
    assert_eq!(
        placement(&mut db, "t")[0],
        (0, "node-0".into(), "active".into())
    );
    // Its partial copy waits on the failed node, recorded.
    let pending: Vec<(String, String)> = db
        .query(
            "SELECT node_id, table_name FROM conductor.cleanup_pending",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(pending, [("node-2".to_string(), "t_0000".to_string())]);
    cluster.start_node(2);
    exec(&mut db, "SELECT * FROM conductor.cleanup()");
    assert!(!cluster.node_tables(2).contains(&"t_0000".to_string()));
    assert!(move_objects(&cluster).is_empty());
    assert_same_rows(&mut db, "t", "t_local");

    // 3. The write block's limit is exceeded: the move is abandoned and
    // writes resume on the source at once.
    exec(&mut db, "SET conductor.move_write_block_timeout = 1");
    let err = db
        .batch_execute("CALL conductor.move_shard('t', 0, 'node-2')")
        .expect_err("the block limit cannot be met");
    assert_eq!(sqlstate(&err), "55P03", "{}", pg_err(&err));
    exec(
        &mut db,
        "INSERT INTO t SELECT i, 'after timeout' FROM generate_series(45001, 45100) i;
         INSERT INTO t_local SELECT i, 'after timeout' FROM generate_series(45001, 45100) i;
         RESET conductor.move_write_block_timeout;",
    );
    assert!(move_objects(&cluster).is_empty());
    assert!(!cluster.node_tables(2).contains(&"t_0000".to_string()));
    assert_same_rows(&mut db, "t", "t_local");
    exec(&mut db, "CALL conductor.move_shard('t', 0, 'node-2')");
    assert_same_rows(&mut db, "t", "t_local");
    assert_nodes_match_catalog(&cluster, &mut db, "t");
    // 4. The move is cancelled while it copies: it undoes itself.
    let cfg = cluster.pg_config();
    let mover = std::thread::spawn(move || {
        let mut c = cfg.connect(postgres::NoTls).unwrap();
        c.batch_execute("CALL conductor.move_shard('t', 2, 'node-1')")
            .map_err(|e| sqlstate(&e))
    });
    // Shard 2 is on node-2 (slow): its copy's reads take a while.
    let pid = wait_for_copy(&mut db, 2);
    db.execute("SELECT pg_cancel_backend($1)", &[&pid]).unwrap();
    assert_eq!(mover.join().unwrap(), Err("57014".to_string()));
    assert!(move_objects(&cluster).is_empty());
    assert!(!cluster.node_tables(1).contains(&"t_0002".to_string()));
    let (phase, cleaned_up): (String, bool) = {
        let r = db
            .query_one(
                "SELECT phase, cleaned FROM conductor.shard_moves ORDER BY move_id DESC LIMIT 1",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((phase.as_str(), cleaned_up), ("aborted", true));
    assert_same_rows(&mut db, "t", "t_local");
    assert_nodes_match_catalog(&cluster, &mut db, "t");

    // 5. The source node fails while the shard is copied from it: the
    // move is abandoned; its capture stays on the source until it answers.
    cluster.set_node_delay(2, None);
    cluster.set_node_delay(0, Some(40));
    let cfg = cluster.pg_config();
    let mover = std::thread::spawn(move || {
        let mut c = cfg.connect(postgres::NoTls).unwrap();
        c.batch_execute("CALL conductor.move_shard('t', 2, 'node-0')")
            .map_err(|e| pg_err(&e))
    });
    wait_for_copy(&mut db, 2);
    cluster.stop_node(2);
    let err = mover
        .join()
        .unwrap()
        .expect_err("a move from a failed node fails");
    assert!(err.contains("node-2"), "{err}");
    cluster.start_node(2);
    let (phase, cleaned_up): (String, bool) = {
        let r = db
            .query_one(
                "SELECT phase, cleaned FROM conductor.shard_moves ORDER BY move_id DESC LIMIT 1",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!((phase.as_str(), cleaned_up), ("aborted", false));
    assert_same_rows(&mut db, "t", "t_local");
    let cleaned: Vec<String> = db
        .query("SELECT outcome FROM conductor.cleanup_moves()", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(cleaned, ["undone"]);
    assert!(move_objects(&cluster).is_empty());
    assert!(!cluster.node_tables(0).contains(&"t_0002".to_string()));
    assert_nodes_match_catalog(&cluster, &mut db, "t");

    let phases: Vec<String> = db
        .query(
            "SELECT phase FROM conductor.shard_moves ORDER BY move_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        phases,
        ["aborted", "done", "aborted", "aborted", "done", "aborted", "aborted"]
    );
}

/// On real libSQL servers (sqld): change capture, the write block and the
/// catalog switch work the same; moves under a writing and reading session
/// lose nothing.
#[test]
fn a_shard_moves_between_sqld_nodes() {
    let Some(sqld) = sqld_bin() else {
        println!("SKIPPED: set SQLD=/path/to/sqld to run conductor against real libSQL servers");
        return;
    };
    let cluster = Cluster::start_sqld(2, &sqld);
    let mut db = cluster.client();
    cluster.setup_conductor(&mut db, "cluster");
    exec(
        &mut db,
        "CREATE FOREIGN TABLE t (id bigint NOT NULL, v bigint, s text) SERVER cluster;
         SELECT conductor.create_distributed_table('t', 'id', shard_count => 4);
         CREATE TABLE t_local (id bigint PRIMARY KEY, v bigint, s text);
         INSERT INTO t SELECT i * 2, i, 'initial' FROM generate_series(0, 2999) i;
         INSERT INTO t_local SELECT * FROM t;",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let writer = {
        let (cfg, stop, ops, retries) = (
            cluster.pg_config(),
            stop.clone(),
            ops.clone(),
            retries.clone(),
        );
        std::thread::spawn(move || worker(cfg, 0, stop, ops, retries))
    };
    while ops.load(Ordering::Relaxed) < 50 {
        std::thread::sleep(Duration::from_millis(10));
    }
    exec(&mut db, "CALL conductor.move_shard('t', 0, 'node-1')");
    exec(&mut db, "CALL conductor.move_shard('t', 1, 'node-0')");
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("the writer failed");
    assert_same_rows(&mut db, "t", "t_local");
    assert_nodes_match_catalog(&cluster, &mut db, "t");
}

/// A transaction that began before a move switched over may still hold the
/// shard's old location: the old copy is kept (fenced, recorded for
/// conductor.cleanup()) while it runs, a write there is refused as
/// retryable, and the transaction's write lands on the new copy.
#[test]
fn a_transaction_older_than_the_switch_never_writes_the_old_copy() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        node_delay_ms: None,
        token: None,
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE t (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('t', 'id', shard_count => 3);
         CREATE TABLE t_local (id bigint PRIMARY KEY, v text);
         INSERT INTO t SELECT i, 'row ' || i FROM generate_series(1, 1000) i;
         INSERT INTO t_local SELECT * FROM t;",
    );
    let key_in = |db: &mut Client, shard: i32| -> i64 {
        db.query_one(
            "SELECT min(i)::bigint FROM generate_series(1, 100) i WHERE conductor.shard_for('t', i) = $1",
            &[&shard],
        )
        .unwrap()
        .get(0)
    };
    let (key, other) = (key_in(&mut db, 0), key_in(&mut db, 1));
    // A transaction that has written the table (shard 1, on node-1) keeps
    // the topology it started with for its later statements.
    let mut old = cluster.client();
    old.batch_execute("BEGIN").unwrap();
    old.execute("UPDATE t SET v = v WHERE id = $1", &[&other])
        .unwrap();

    // The move finishes; the old copy stays, fenced, while `old` is open.
    exec(&mut db, "CALL conductor.move_shard('t', 0, 'node-2')");
    let pending: Vec<(String, String)> = db
        .query(
            "SELECT node_id, table_name FROM conductor.cleanup_pending",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(
        pending.contains(&("node-0".to_string(), "t_0000".to_string())),
        "{pending:?}"
    );

    // The old copy refuses writes: what a write holding the old location
    // meets there, asked of the node directly.
    let refused = cluster
        .try_node_query(
            0,
            "UPDATE t_0000 SET v = 'stale' WHERE id = ?",
            &[serde_json::json!(key)],
        )
        .expect_err("the old copy is fenced");
    assert!(
        refused.contains("conductor: shard is being moved"),
        "{refused}"
    );
    // Through conductor, the open transaction's write either meets the
    // fence (40001; its retry is a new transaction, which reaches the new
    // location) or already reaches the new location; never the old copy.
    match old.execute("UPDATE t SET v = 'updated' WHERE id = $1", &[&key]) {
        Ok(n) => {
            assert_eq!(n, 1);
            old.batch_execute("COMMIT").unwrap();
        }
        Err(err) => {
            assert_eq!(sqlstate(&err), "40001", "{}", pg_err(&err));
            let e = pg_err(&err);
            assert!(e.contains("node-0") && e.contains("shard 0"), "{e}");
            old.batch_execute("ROLLBACK").unwrap();
            old.execute("UPDATE t SET v = 'updated' WHERE id = $1", &[&key])
                .unwrap();
        }
    }
    db.execute("UPDATE t_local SET v = 'updated' WHERE id = $1", &[&key])
        .unwrap();
    let on_old = cluster.node_query(
        0,
        "SELECT v FROM t_0000 WHERE id = ?",
        &[serde_json::json!(key)],
    );
    assert_eq!(on_old, [[serde_json::json!(format!("row {key}"))]]);
    assert_same_rows(&mut db, "t", "t_local");
    exec(&mut db, "SELECT * FROM conductor.cleanup()");
    assert!(!cluster.node_tables(0).contains(&"t_0000".to_string()));
    assert!(cluster.node_tables(2).contains(&"t_0000".to_string()));
    assert_same_rows(&mut db, "t", "t_local");
}

/// A cluster of `nodes` nodes whose last one joins empty and slow (40 ms
/// per request) after `t` (`shards` shards, ids 1..=`rows`) and its local
/// twin `t_local` were loaded on the others; node cool-down off.
fn with_an_empty_slow_node(nodes: usize, shards: i32, rows: i64) -> (Cluster, Client) {
    let (mut cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes,
        node_delay_ms: None,
        token: None,
    });
    let last = nodes - 1;
    exec(
        &mut db,
        &format!("SELECT conductor.remove_node('cluster', 'node-{last}')"),
    );
    exec(
        &mut db,
        &format!(
            "CREATE FOREIGN TABLE t (id bigint NOT NULL, v text) SERVER cluster;
             SELECT conductor.create_distributed_table('t', 'id', shard_count => {shards});
             CREATE TABLE t_local (id bigint PRIMARY KEY, v text);
             INSERT INTO t SELECT i, 'row ' || i FROM generate_series(1, {rows}) i;
             INSERT INTO t_local SELECT * FROM t;
             SET conductor.node_cooldown = 0;"
        ),
    );
    let url = cluster.node_url(last);
    db.execute(
        &format!("SELECT conductor.add_node('cluster', 'node-{last}', $1)"),
        &[&url],
    )
    .unwrap();
    cluster.set_node_delay(last, Some(40));
    (cluster, db)
}

/// A rebalance whose move fails half-way stops there: the moves before it
/// are done, the failed one is undone, and running it again finishes.
#[test]
fn a_rebalance_that_fails_half_way_is_run_again() {
    // The new node is slow: the first move's copy takes a while.
    let (mut cluster, mut db) = with_an_empty_slow_node(3, 6, 60000);
    let cfg = cluster.pg_config();
    let rebalance = std::thread::spawn(move || {
        let mut c = cfg.connect(postgres::NoTls).unwrap();
        c.batch_execute("CALL conductor.rebalance('cluster')")
            .map_err(|e| pg_err(&e))
    });
    let first: i32 = {
        let mut shard = None;
        for _ in 0..6000 {
            let r = db
                .query(
                    "SELECT shard_id FROM conductor.shard_move
                      WHERE phase = 'copying' AND rows_copied > 0
                        AND (SELECT count(*) FROM conductor.shard_move WHERE phase = 'done') = 1",
                    &[],
                )
                .unwrap();
            if let Some(r) = r.first() {
                shard = Some(r.get(0));
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        shard.expect("the rebalance's second move started copying")
    };
    cluster.stop_node(2);
    rebalance
        .join()
        .unwrap()
        .expect_err("the rebalance stops at the failed move");
    cluster.start_node(2);
    let moving: i64 = db
        .query_one(
            "SELECT count(*) FROM conductor.shards WHERE status <> 'active'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(moving, 0, "the failed move of shard {first} was undone");
    let on_node2: i64 = db
        .query_one(
            "SELECT count(*) FROM conductor.shards WHERE node_id = 'node-2'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(on_node2, 1, "the move before it stays done");
    assert_same_rows(&mut db, "t", "t_local");
    exec(&mut db, "SELECT * FROM conductor.cleanup()");
    cluster.set_node_delay(2, None);
    exec(&mut db, "CALL conductor.rebalance('cluster')");
    let per_node: Vec<i64> = db
        .query(
            "SELECT count(*) FROM conductor.shards GROUP BY node_id ORDER BY node_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(per_node, [2, 2, 2]);
    assert!(db
        .query("SELECT * FROM conductor.rebalance_plan('cluster')", &[])
        .unwrap()
        .is_empty());
    assert_same_rows(&mut db, "t", "t_local");
    assert_nodes_match_catalog(&cluster, &mut db, "t");
}

/// The node a shard moves to stays a node that takes shards until the
/// switch: removing it is refused while the move runs, and draining it
/// abandons the move, so the shard never lands on a node that is being
/// emptied or forgotten.
#[test]
fn a_node_drained_or_removed_during_a_move_onto_it_gets_no_shard() {
    // A slow target stretches the copy.
    let (mut cluster, mut db) = with_an_empty_slow_node(4, 3, 45000);
    let cfg = cluster.pg_config();
    let mover = std::thread::spawn(move || {
        let mut c = cfg.connect(postgres::NoTls).unwrap();
        c.batch_execute("CALL conductor.move_shard('t', 1, 'node-3')")
    });
    wait_for_copy(&mut db, 1);
    let err = db
        .batch_execute("SELECT conductor.remove_node('cluster', 'node-3')")
        .expect_err("the node receives a shard");
    assert_eq!(sqlstate(&err), "55006", "{}", pg_err(&err));
    let e = pg_err(&err);
    assert!(e.contains("target of a move of shard 1 of t"), "{e}");
    // Draining the target waits for the running step; the move's next
    // step finds the node disabled and undoes the move.
    exec(&mut db, "CALL conductor.drain_node('cluster', 'node-3')");
    let err = mover
        .join()
        .unwrap()
        .expect_err("the move onto a drained node is abandoned");
    assert_eq!(sqlstate(&err), "55000", "{}", pg_err(&err));
    let e = pg_err(&err);
    assert!(
        e.contains("node \"node-3\" is disabled") && e.contains("was abandoned"),
        "{e}"
    );
    cluster.set_node_delay(3, None);
    exec(
        &mut db,
        "UPDATE t SET v = 'after' WHERE conductor.shard_for('t', id) = 1 AND id % 5 = 0;
         UPDATE t_local SET v = 'after' WHERE conductor.shard_for('t', id) = 1 AND id % 5 = 0;",
    );
    assert_eq!(
        placement(&mut db, "t")
            .iter()
            .map(|p| p.1.clone())
            .collect::<Vec<_>>(),
        ["node-0", "node-1", "node-2"]
    );
    assert_same_rows(&mut db, "t", "t_local");
    assert_nodes_match_catalog(&cluster, &mut db, "t");
    exec(&mut db, "SELECT conductor.remove_node('cluster', 'node-3')");
    assert_same_rows(&mut db, "t", "t_local");
}

/// A table dropped while one of its shards moves: the move stops at its
/// next step saying so, removes what it made on the nodes, and a table of
/// that name can be created again.
#[test]
fn a_table_dropped_during_a_move_stops_the_move_clearly() {
    let (mut cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        node_delay_ms: None,
        token: None,
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE t (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('t', 'id', shard_count => 3);
         INSERT INTO t SELECT i, 'row ' || i FROM generate_series(1, 45000) i;
         SET conductor.node_cooldown = 0;",
    );
    cluster.set_node_delay(2, Some(40));
    let cfg = cluster.pg_config();
    let mover = std::thread::spawn(move || {
        let mut c = cfg.connect(postgres::NoTls).unwrap();
        c.batch_execute("CALL conductor.move_shard('t', 1, 'node-2')")
    });
    wait_for_copy(&mut db, 1);
    exec(&mut db, "DROP FOREIGN TABLE t");
    let err = mover.join().unwrap().expect_err("the move stops");
    assert_eq!(sqlstate(&err), "42P01", "{}", pg_err(&err));
    let e = pg_err(&err);
    assert!(
        e.contains("t_0001") && e.contains("dropped") && !e.contains("again"),
        "{e}"
    );
    cluster.set_node_delay(2, None);
    for i in 0..cluster.node_count() {
        let left = cluster.node_tables(i);
        assert!(
            !left.iter().any(|t| t.starts_with("t_")),
            "node-{i}: {left:?}"
        );
    }
    let unfinished: i64 = db
        .query_one(
            "SELECT count(*) FROM conductor.shard_moves WHERE NOT cleaned",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(unfinished, 0);
    exec(
        &mut db,
        "CREATE FOREIGN TABLE t (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('t', 'id', shard_count => 3);
         CREATE TABLE t_local (id bigint PRIMARY KEY, v text);
         INSERT INTO t SELECT i, 'new ' || i FROM generate_series(1, 300) i;
         INSERT INTO t_local SELECT * FROM t;",
    );
    exec(&mut db, "CALL conductor.move_shard('t', 1, 'node-2')");
    assert_same_rows(&mut db, "t", "t_local");
    assert_nodes_match_catalog(&cluster, &mut db, "t");
}

/// Co-located tables move together (shard i of each stays on one node, so
/// their joins keep running on the nodes), a rebalance moves a group's
/// shard as one unit, and what cannot move is refused before anything
/// moves: a reference table, a group with a virtual index.
#[test]
fn co_located_tables_move_together() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE orders (id bigint NOT NULL, amount int) SERVER cluster;
         CREATE FOREIGN TABLE lines (id bigint NOT NULL, line int NOT NULL, qty int) SERVER cluster
             OPTIONS (primary_key 'id,line');
         SELECT conductor.create_distributed_table('orders', 'id', shard_count => 4, colocate_with => 'none');
         SELECT conductor.create_distributed_table('lines', 'id', shard_count => 4, colocate_with => 'orders');
         CREATE TABLE l_orders (id bigint PRIMARY KEY, amount int);
         CREATE TABLE l_lines (id bigint, line int, qty int, PRIMARY KEY (id, line));
         INSERT INTO l_orders SELECT i, i % 97 FROM generate_series(1, 400) i;
         INSERT INTO l_lines SELECT i, j, i * j % 13 FROM generate_series(1, 400) i, generate_series(1, 3) j;
         INSERT INTO orders SELECT * FROM l_orders;
         INSERT INTO lines SELECT * FROM l_lines;
         CREATE FOREIGN TABLE countries (code text NOT NULL, name text) SERVER cluster;
         SELECT conductor.create_reference_table('countries');",
    );
    let join = |t1: &str, t2: &str| {
        format!(
            "SELECT o.id, o.amount, sum(l.qty) FROM {t1} o JOIN {t2} l ON l.id = o.id
              GROUP BY o.id, o.amount ORDER BY o.id"
        )
    };
    let result = |db: &mut Client, sql: &str| -> Vec<String> {
        db.query(&format!("SELECT x::text FROM ({sql}) x"), &[])
            .unwrap_or_else(|e| panic!("{sql}: {}", pg_err(&e)))
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let want = result(&mut db, &join("l_orders", "l_lines"));
    let nodes: Vec<String> = placement(&mut db, "orders")
        .iter()
        .map(|p| p.1.clone())
        .collect();
    let shard = 1;
    let target = ["node-0", "node-1", "node-2"]
        .into_iter()
        .find(|n| *n != nodes[shard])
        .unwrap();
    exec(
        &mut db,
        &format!("CALL conductor.move_shard('orders', {shard}, '{target}')"),
    );
    let moved_orders = placement(&mut db, "orders");
    let moved_lines = placement(&mut db, "lines");
    assert_eq!(moved_orders[shard].1, target);
    let map = |p: &[(i32, String, String)]| p.iter().map(|x| x.1.clone()).collect::<Vec<_>>();
    assert_eq!(
        map(&moved_orders),
        map(&moved_lines),
        "the group moved as one"
    );
    assert_nodes_match_catalog(&cluster, &mut db, "orders");
    assert_nodes_match_catalog(&cluster, &mut db, "lines");
    // Still co-located: the join runs on the nodes and agrees.
    let plan: Vec<String> = db
        .query(
            &format!("EXPLAIN (VERBOSE, COSTS OFF) {}", join("orders", "lines")),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        plan.iter().any(|l| l.contains("JOIN")),
        "join pushed after the move:\n{}",
        plan.join("\n")
    );
    assert_eq!(result(&mut db, &join("orders", "lines")), want);
    assert_same_rows(&mut db, "orders", "l_orders");

    // A rebalance plans one move per group shard, naming one member.
    let planned: Vec<String> = db
        .query(
            "SELECT table_name::text FROM conductor.rebalance_plan('cluster')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    // (The move above left node-0 with three group shards, another node
    // with none.)
    assert!(
        !planned.is_empty() && planned.iter().all(|t| t == "orders"),
        "one unit per group shard: {planned:?}"
    );
    exec(&mut db, "CALL conductor.rebalance('cluster')");
    assert_eq!(
        map(&placement(&mut db, "orders")),
        map(&placement(&mut db, "lines"))
    );
    assert_eq!(result(&mut db, &join("orders", "lines")), want);
    // A table created later joins the group by default, where the group
    // is now (not where round robin would put it); a reference table is
    // no group to join.
    exec(
        &mut db,
        "CREATE FOREIGN TABLE returns (id bigint NOT NULL, why text) SERVER cluster;
         SELECT conductor.create_distributed_table('returns', 'id', shard_count => 4);",
    );
    assert_eq!(
        map(&placement(&mut db, "returns")),
        map(&placement(&mut db, "orders"))
    );
    let groups: i64 = db
        .query_one(
            "SELECT count(DISTINCT colocation_id) FROM conductor.tables
              WHERE table_name IN ('orders'::regclass, 'lines'::regclass, 'returns'::regclass)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(groups, 1);
    let err = db
        .batch_execute(
            "CREATE FOREIGN TABLE notes (code text NOT NULL) SERVER cluster;
             SELECT conductor.create_distributed_table('notes', 'code', colocate_with => 'countries')",
        )
        .expect_err("a reference table is no group");
    assert_eq!(sqlstate(&err), "22023", "{}", pg_err(&err));

    // Refused before anything moves.
    let err = db
        .batch_execute(&format!(
            "CALL conductor.move_shard('countries', 0, '{target}')"
        ))
        .expect_err("a reference table does not move");
    assert_eq!(sqlstate(&err), "0A000", "{}", pg_err(&err));
    exec(
        &mut db,
        "CALL conductor.create_virtual_index('lines', ARRAY['qty'])",
    );
    let before = map(&placement(&mut db, "orders"));
    let other = ["node-0", "node-1", "node-2"]
        .into_iter()
        .find(|n| *n != before[0])
        .unwrap();
    let err = db
        .batch_execute(&format!(
            "CALL conductor.move_shard('orders', 0, '{other}')"
        ))
        .expect_err("a group member has a virtual index");
    assert_eq!(sqlstate(&err), "0A000", "{}", pg_err(&err));
    assert_eq!(map(&placement(&mut db, "orders")), before, "nothing moved");
    assert_eq!(map(&placement(&mut db, "lines")), before);
    // Asked of the indexed table itself, the refusal has no empty DETAIL.
    let err = db
        .batch_execute(&format!("CALL conductor.move_shard('lines', 0, '{other}')"))
        .expect_err("a table with a virtual index");
    let db_err = err.as_db_error().expect("a server error");
    assert_eq!(db_err.detail(), None, "{}", pg_err(&err));

    // Draining a node leaves the group's shards on it: the drain says so,
    // naming them, and so does remove_node.
    let warnings = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = warnings.clone();
    let mut config = cluster.pg_config();
    config.notice_callback(move |n| sink.lock().unwrap().push(n.message().to_string()));
    let mut op = config.connect(postgres::NoTls).unwrap();
    let drained = before[0].clone();
    exec(
        &mut op,
        &format!("CALL conductor.drain_node('cluster', '{drained}')"),
    );
    let warned = warnings.lock().unwrap().clone();
    assert!(
        warned.iter().any(|w| w.contains(&format!("\"{drained}\""))
            && w.contains("shard 0 of orders")
            && w.contains("shard 0 of lines")),
        "{warned:?}"
    );
    let err = db
        .batch_execute(&format!(
            "SELECT conductor.remove_node('cluster', '{drained}')"
        ))
        .expect_err("the node keeps the group's shards");
    assert_eq!(sqlstate(&err), "55006", "{}", pg_err(&err));
    let e = pg_err(&err);
    assert!(
        e.contains("shard 0 of lines") && e.contains("shard 0 of orders"),
        "{e}"
    );
}

/// A write alone in its transaction waits out a move's switch-over instead
/// of failing: it is refused by the block or the old copy's fence, takes in
/// the committed catalog change and is sent where the shard now is.
/// Single-statement writes from two sessions during moves: none fails,
/// none is lost.
#[test]
fn lone_writes_wait_for_a_move_instead_of_failing() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE t (id bigint NOT NULL, v bigint) SERVER cluster;
         SELECT conductor.create_distributed_table('t', 'id', shard_count => 2);
         INSERT INTO t SELECT i, 0 FROM generate_series(1, 20000) i;",
    );
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let cfg = cluster.pg_config();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = cfg.connect(postgres::NoTls).unwrap();
                let mut done: HashMap<i64, i64> = HashMap::new();
                let mut errors = Vec::new();
                let mut n = 0i64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let id = 1 + (n * 7919 + w * 13) % 20000;
                    let began = std::time::Instant::now();
                    let r = if n % 3 == 0 {
                        c.execute(
                            "INSERT INTO t VALUES ($1, 1)",
                            &[&(100_000 + w * 1_000_000 + n)],
                        )
                        .map(|_| ())
                    } else {
                        c.execute("UPDATE t SET v = v + 1 WHERE id = $1", &[&id])
                            .map(|_| {
                                *done.entry(id).or_default() += 1;
                            })
                    };
                    if let Err(e) = r {
                        errors.push(format!("after {:?}: {}", began.elapsed(), pg_err(&e)));
                    }
                }
                (done, n, errors)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for (shard, to) in [(0, "node-1"), (1, "node-0"), (0, "node-0")] {
        exec(
            &mut db,
            &format!("CALL conductor.move_shard('t', {shard}, '{to}')"),
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut increments: HashMap<i64, i64> = HashMap::new();
    let mut inserts = 0;
    for w in writers {
        let (done, n, errors) = w.join().unwrap();
        assert!(
            errors.is_empty(),
            "lone writes failed during moves: {errors:?}"
        );
        inserts += n / 3;
        for (id, k) in done {
            *increments.entry(id).or_default() += k;
        }
    }
    let blocked: f64 = db
        .query_one(
            "SELECT coalesce(sum(block_ms), 0) FROM conductor.shard_moves",
            &[],
        )
        .unwrap()
        .get(0);
    println!("writes blocked {blocked:.1} ms in all; {inserts} inserts");
    let total: i64 = db
        .query_one("SELECT sum(v)::bigint FROM t WHERE id <= 20000", &[])
        .unwrap()
        .get(0);
    assert_eq!(
        total,
        increments.values().sum::<i64>(),
        "every increment landed once"
    );
    let inserted: i64 = db
        .query_one("SELECT count(*) FROM t WHERE id > 20000", &[])
        .unwrap()
        .get(0);
    assert_eq!(inserted, inserts, "every insert landed");
    assert_nodes_match_catalog(&cluster, &mut db, "t");
}

/// A move checks the target's room first (conductor-node's free space less
/// its `--reserve-bytes`, against twice the shard's pages), and a rebalance
/// weighs shards by their size on the nodes: a big table's shards move
/// before a small table's.
#[test]
fn moves_check_room_and_rebalancing_weighs_sizes() {
    let (mut cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        ..Default::default()
    });
    exec(&mut db, "SELECT conductor.remove_node('cluster', 'node-2')");
    // The small table first: ordered by count alone, its shards would be
    // the first to go.
    exec(
        &mut db,
        "CREATE FOREIGN TABLE small (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('small', 'id', shard_count => 4, colocate_with => 'none');
         INSERT INTO small SELECT i, 'x' FROM generate_series(1, 8) i;
         CREATE FOREIGN TABLE big (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('big', 'id', shard_count => 4, colocate_with => 'none');
         INSERT INTO big SELECT i, repeat('y', 500) FROM generate_series(1, 8000) i;",
    );
    let url = cluster.node_url(2);
    db.execute(
        "SELECT conductor.add_node('cluster', 'node-2', $1)",
        &[&url],
    )
    .unwrap();
    let planned: Vec<String> = db
        .query(
            "SELECT table_name::text FROM conductor.rebalance_plan('cluster')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        planned.first().map(String::as_str) == Some("big"),
        "by size a shard of big goes first: {planned:?}"
    );

    // Room: node-2 keeps (nearly) all its disk for itself.
    cluster.restart_node_with_args(2, &["--reserve-bytes", "18446744073709551615"]);
    let big_shard: i32 = db
        .query_one(
            "SELECT shard_id FROM conductor.shards WHERE table_name = 'big'::regclass
              ORDER BY shard_id LIMIT 1",
            &[],
        )
        .unwrap()
        .get(0);
    let err = db
        .batch_execute(&format!(
            "CALL conductor.move_shard('big', {big_shard}, 'node-2')"
        ))
        .expect_err("no room on node-2");
    assert_eq!(sqlstate(&err), "53100", "{}", pg_err(&err));
    assert!(pg_err(&err).contains("free space"), "{}", pg_err(&err));
    let recorded: i64 = db
        .query_one("SELECT count(*) FROM conductor.shard_moves", &[])
        .unwrap()
        .get(0);
    assert_eq!(recorded, 0, "refused before anything was recorded");
    cluster.restart_node_with_args(2, &[]);
    exec(
        &mut db,
        &format!("CALL conductor.move_shard('big', {big_shard}, 'node-2')"),
    );
    assert_nodes_match_catalog(&cluster, &mut db, "big");
}

/// A join pushed to the nodes depends on where both tables' shards are: a
/// prepared statement's cached plan of it is planned again once a move
/// changes that. Here a group move dies between its members' switches,
/// leaving the group split (one member's shard on the target, the other's
/// partial copy beside it): a session that prepared the join before reads
/// every row, never the partial copy, and after `cleanup_moves()` and the
/// move that reunites the group the join is pushed again.
#[test]
fn cached_join_plans_follow_moves() {
    let (mut cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE orders (id bigint NOT NULL, amount int) SERVER cluster;
         CREATE FOREIGN TABLE lines (id bigint NOT NULL, qty int) SERVER cluster;
         SELECT conductor.create_distributed_table('orders', 'id', shard_count => 2, colocate_with => 'none');
         SELECT conductor.create_distributed_table('lines', 'id', shard_count => 2, colocate_with => 'orders');
         INSERT INTO orders SELECT i, 1 FROM generate_series(1, 20000) i;
         INSERT INTO lines SELECT i, 2 FROM generate_series(1, 20000) i;",
    );
    assert_eq!(
        placement(&mut db, "lines")[0],
        (0, "node-0".into(), "active".into())
    );
    // A long-lived session with the join prepared: rows of the join, and
    // an aggregate over it.
    let mut app = cluster.client();
    exec(
        &mut app,
        "PREPARE rows_of AS SELECT o.id, l.qty FROM orders o JOIN lines l ON l.id = o.id;
         PREPARE totals AS SELECT count(*), sum(l.qty) FROM orders o JOIN lines l USING (id);",
    );
    let check = |app: &mut Client, pushed: bool, when: &str| {
        let n = app
            .query("EXECUTE rows_of", &[])
            .unwrap_or_else(|e| panic!("{when}: {}", pg_err(&e)))
            .len();
        assert_eq!(n, 20000, "{when}: rows of the join");
        let r = app
            .query_one("EXECUTE totals", &[])
            .unwrap_or_else(|e| panic!("{when}: {}", pg_err(&e)));
        let (count, sum): (i64, i64) = (r.get(0), r.get(1));
        assert_eq!((count, sum), (20000, 40000), "{when}: totals of the join");
        let plan: Vec<String> = app
            .query("EXPLAIN (VERBOSE, COSTS OFF) EXECUTE rows_of", &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(
            plan.iter().any(|l| l.contains(" JOIN ")),
            pushed,
            "{when}: join pushed = {pushed}:\n{}",
            plan.join("\n")
        );
    };
    check(&mut app, true, "before the move");

    // Slow answers from node-1 stretch the copy of lines' shard 0.
    cluster.set_node_delay(1, Some(40));
    let cfg = cluster.pg_config();
    let mover = std::thread::spawn(move || {
        let mut c = cfg.connect(postgres::NoTls).unwrap();
        c.batch_execute("CALL conductor.move_shard('orders', 0, 'node-1')")
    });
    let pid: i32 = (0..6000)
        .find_map(|_| {
            let r = db
                .query(
                    "SELECT pid FROM conductor.shard_move
                      WHERE relid = 'lines'::regclass AND phase = 'copying' AND rows_copied > 0",
                    &[],
                )
                .unwrap();
            if r.is_empty() {
                std::thread::sleep(Duration::from_millis(5));
            }
            r.first().map(|r| r.get(0))
        })
        .expect("the move of lines' shard 0 copies");
    db.execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
    assert!(mover.join().unwrap().is_err(), "the killed move failed");
    cluster.set_node_delay(1, None);
    assert_eq!(placement(&mut db, "orders")[0].1, "node-1");
    assert_eq!(
        placement(&mut db, "lines")[0],
        (0, "node-0".into(), "rebalancing_source".into())
    );
    assert!(
        cluster.node_tables(1).contains(&"lines_0000".to_string()),
        "lines' partial copy is on node-1"
    );
    check(&mut app, false, "with the group split and a partial copy");

    let cleaned: Vec<String> = db
        .query("SELECT outcome FROM conductor.cleanup_moves()", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(cleaned, ["undone"]);
    check(&mut app, false, "with the group split");

    exec(&mut db, "CALL conductor.move_shard('lines', 0, 'node-1')");
    assert_eq!(
        placement(&mut db, "orders")
            .iter()
            .map(|p| p.1.clone())
            .collect::<Vec<_>>(),
        placement(&mut db, "lines")
            .iter()
            .map(|p| p.1.clone())
            .collect::<Vec<_>>()
    );
    check(&mut app, true, "with the group together again");
}

/// A virtual index's lookup tables are placed with the table's shards, so
/// a move and a virtual index's build never overlap, whichever waits for
/// the other's first step: a move that waited for a build's first step
/// (which records the index and creates its lookup tables) is refused, and
/// so is a build that waited for a move's first step. Neither leaves a
/// lookup table behind on a shard's old node.
#[test]
fn a_move_and_a_virtual_index_build_never_overlap() {
    let (mut cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE t (id bigint NOT NULL, email text) SERVER cluster;
         SELECT conductor.create_distributed_table('t', 'id', shard_count => 2);
         INSERT INTO t SELECT i, 'e' || i FROM generate_series(1, 1000) i;",
    );
    assert_eq!(placement(&mut db, "t")[0].1, "node-0");
    // Waits until backend `pid` waits for a lock.
    let waits_for_lock = |db: &mut Client, pid: i32| {
        for _ in 0..2000 {
            let waiting: bool = db
                .query_one(
                    "SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1",
                    &[&pid],
                )
                .unwrap()
                .get(0);
            if waiting {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("backend {pid} never waited for a lock");
    };

    // 1. The build's first step holds the table while the move starts.
    let mut build = cluster.client();
    exec(
        &mut build,
        "BEGIN; SELECT conductor._vidx_begin('t', ARRAY['email'], false, 't_email')",
    );
    let mut mover = cluster.client();
    let mover_pid: i32 = mover
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let moving = std::thread::spawn(move || {
        mover
            .batch_execute("CALL conductor.move_shard('t', 0, 'node-1')")
            .map_err(|e| (sqlstate(&e), pg_err(&e)))
    });
    waits_for_lock(&mut db, mover_pid);
    exec(&mut build, "COMMIT");
    let (state, err) = moving
        .join()
        .unwrap()
        .expect_err("a move of a table with a virtual index is refused");
    assert_eq!(state, "0A000", "{err}");
    assert_eq!(
        placement(&mut db, "t")[0],
        (0, "node-0".into(), "active".into())
    );
    exec(&mut db, "SELECT conductor.drop_virtual_index('t_email')");

    // 2. The move's first step holds the table while the build starts
    // (slow answers from node-1 stretch that step).
    cluster.set_node_delay(1, Some(100));
    let mut mover = cluster.client();
    let mover_pid: i32 = mover
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let moving = std::thread::spawn(move || {
        mover
            .batch_execute("CALL conductor.move_shard('t', 0, 'node-1')")
            .map_err(|e| pg_err(&e))
    });
    for _ in 0..2000 {
        let holds: bool = db
            .query_one(
                "SELECT EXISTS (SELECT FROM pg_locks WHERE pid = $1 AND relation = 't'::regclass
                                   AND mode = 'ShareUpdateExclusiveLock' AND granted)",
                &[&mover_pid],
            )
            .unwrap()
            .get(0);
        if holds {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let mut builder = cluster.client();
    let builder_pid: i32 = builder
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let building = std::thread::spawn(move || {
        builder
            .batch_execute("CALL conductor.create_virtual_index('t', ARRAY['email'])")
            .map_err(|e| (sqlstate(&e), pg_err(&e)))
    });
    waits_for_lock(&mut db, builder_pid);
    let (state, err) = building
        .join()
        .unwrap()
        .expect_err("a build while a shard moves is refused");
    assert_eq!(state, "55006", "{err}");
    moving.join().unwrap().expect("the move goes on");
    cluster.set_node_delay(1, None);
    let indexes: i64 = db
        .query_one("SELECT count(*) FROM conductor.virtual_index", &[])
        .unwrap()
        .get(0);
    assert_eq!(indexes, 0);
    assert_nodes_match_catalog(&cluster, &mut db, "t");
    for i in 0..cluster.node_count() {
        let lookups: Vec<String> = cluster
            .node_tables(i)
            .into_iter()
            .filter(|t| t.contains("_vx_"))
            .collect();
        assert!(lookups.is_empty(), "node-{i} keeps {lookups:?}");
    }
    let n: i64 = db
        .query_one("SELECT count(*) FROM t WHERE email = 'e5'", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
}

/// A lone write to two shards of one node waits out a move of one of them
/// like a write to one shard: once the switch is seen its shards are on two
/// nodes, and it goes to both in one transaction, not to the old copy.
#[test]
fn a_lone_write_to_two_shards_of_a_node_waits_for_a_move() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE t (id bigint NOT NULL, v bigint) SERVER cluster;
         SELECT conductor.create_distributed_table('t', 'id', shard_count => 4);
         INSERT INTO t SELECT i, 0 FROM generate_series(1, 4000) i;",
    );
    // Shards 0 and 2 start on node-0.
    let key_of = |db: &mut Client, shard: i32| -> i64 {
        db.query_one(
            "SELECT min(i)::bigint FROM generate_series(1, 100) i WHERE conductor.shard_for('t', i::bigint) = $1",
            &[&shard],
        )
        .unwrap()
        .get(0)
    };
    let keys = vec![key_of(&mut db, 0), key_of(&mut db, 2)];
    let p = placement(&mut db, "t");
    assert_eq!((p[0].1.as_str(), p[2].1.as_str()), ("node-0", "node-0"));
    // Rounds of: a writer updates both rows while shard 0 moves away from
    // shard 2's node (its writes go to one node until the switch); shard 0
    // comes back with no write running (a write to two nodes meets the
    // block and fails, as documented).
    let mut total = 0;
    for _ in 0..3 {
        let stop = Arc::new(AtomicBool::new(false));
        let cfg = _cluster.pg_config();
        let (stop2, keys2) = (stop.clone(), keys.clone());
        let writer = std::thread::spawn(move || {
            let mut c = cfg.connect(postgres::NoTls).unwrap();
            let (mut done, mut errors) = (0i64, Vec::new());
            while !stop2.load(Ordering::Relaxed) {
                match c.execute("UPDATE t SET v = v + 1 WHERE id = ANY($1)", &[&keys2]) {
                    Ok(n) => {
                        assert_eq!(n, 2);
                        done += 1;
                    }
                    Err(e) => errors.push(pg_err(&e)),
                }
            }
            (done, errors)
        });
        std::thread::sleep(Duration::from_millis(100));
        exec(&mut db, "CALL conductor.move_shard('t', 0, 'node-1')");
        std::thread::sleep(Duration::from_millis(50));
        stop.store(true, Ordering::Relaxed);
        let (done, errors) = writer.join().unwrap();
        assert!(
            errors.is_empty(),
            "lone writes failed during the move: {errors:?}"
        );
        total += done;
        exec(&mut db, "CALL conductor.move_shard('t', 0, 'node-0')");
    }
    let sums: Vec<i64> = db
        .query("SELECT v FROM t WHERE id = ANY($1) ORDER BY id", &[&keys])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(sums, [total, total], "every write landed once on both rows");
}

/// A move cancelled after its catalog switch (while it waits for older
/// transactions before dropping the old copy) says that the shard moved,
/// not that the source stays authoritative; `cleanup_moves()` finishes it.
#[test]
fn a_move_cancelled_after_its_switch_says_the_shard_moved() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE t (id bigint NOT NULL, v int) SERVER cluster;
         SELECT conductor.create_distributed_table('t', 'id', shard_count => 2);
         INSERT INTO t SELECT i, 0 FROM generate_series(1, 1000) i;",
    );
    // A transaction older than the switch: the old copy's drop waits for it
    // (up to 5 s), and the statement timeout ends the wait.
    let mut old = cluster.client();
    exec(&mut old, "BEGIN; SELECT count(*) FROM t");
    exec(&mut db, "SET statement_timeout = '3s'");
    let err = db
        .batch_execute("CALL conductor.move_shard('t', 0, 'node-1')")
        .expect_err("cancelled");
    exec(&mut db, "RESET statement_timeout");
    assert_eq!(sqlstate(&err), "57014", "{}", pg_err(&err));
    let e = pg_err(&err);
    assert!(
        e.contains("had switched") && !e.contains("stays authoritative"),
        "{e}"
    );
    assert_eq!(
        placement(&mut db, "t")[0],
        (0, "node-1".into(), "active".into())
    );
    exec(&mut old, "COMMIT");
    let cleaned: Vec<String> = db
        .query("SELECT outcome FROM conductor.cleanup_moves()", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(cleaned, ["finished"]);
    assert_nodes_match_catalog(&cluster, &mut db, "t");
    let n: i64 = db.query_one("SELECT count(*) FROM t", &[]).unwrap().get(0);
    assert_eq!(n, 1000);
}
