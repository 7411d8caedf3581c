//! Thousands of shards: a 4,096-shard table behaves like a 16-shard one,
//! and the connections a backend holds toward each node stay bounded
//! (`conductor.max_requests_per_node`) whatever the shard count.

use conductor_e2e::postgres::Client;
use conductor_e2e::{pg_err, Cluster, ClusterOptions};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn exec(db: &mut Client, sql: &str) {
    db.batch_execute(sql)
        .unwrap_or_else(|e| panic!("{sql}: {}", pg_err(&e)));
}

fn count(db: &mut Client, sql: &str) -> i64 {
    db.query_one(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", pg_err(&e)))
        .get(0)
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn a_4096_shard_table_works_like_a_small_one_with_bounded_connections() {
    let (mut cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 4,
        node_delay_ms: None,
        token: None,
    });
    let started = Instant::now();
    exec(
        &mut db,
        "CREATE FOREIGN TABLE big (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('big', 'id', shard_count => 4096);",
    );
    let created = started.elapsed();
    exec(
        &mut db,
        "INSERT INTO big SELECT i, 'v' || i FROM generate_series(1, 20000) i",
    );
    let loaded = started.elapsed() - created;

    // A new session's first point lookup loads the 4,096-shard topology.
    let mut fresh = cluster.client();
    let t = Instant::now();
    assert_eq!(
        count(&mut fresh, "SELECT count(*) FROM big WHERE id = 77"),
        1
    );
    let first_lookup = t.elapsed();
    let t = Instant::now();
    for k in 1..=20 {
        assert_eq!(
            count(
                &mut fresh,
                &format!("SELECT count(*) FROM big WHERE id = {k}")
            ),
            1
        );
    }
    let later_lookup = t.elapsed() / 20;

    // Scans while the backend's file descriptors are watched.
    let pid: i32 = db.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let base_fds = open_fds(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicUsize::new(0));
    let watcher = {
        let (stop, peak) = (stop.clone(), peak.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(open_fds(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let t = Instant::now();
    for _ in 0..3 {
        assert_eq!(count(&mut db, "SELECT count(*) FROM big"), 20000);
    }
    let count_latency = t.elapsed() / 3;
    let sum: i64 = db
        .query_one("SELECT sum(length(v))::bigint FROM big", &[])
        .unwrap()
        .get(0);
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let peak_fds = peak.load(Ordering::Relaxed);
    let want_sum: i64 = (1..=20000)
        .map(|i: i64| 1 + i.to_string().len() as i64)
        .sum();
    assert_eq!(sum, want_sum);
    println!(
        "4096 shards: create {created:?}, load 20,000 rows {loaded:?}; first point lookup in a new session {first_lookup:?}, later ones {later_lookup:?}; count(*) {count_latency:?}; backend fds {base_fds} idle, {peak_fds} at peak"
    );
    // 4 nodes × 8 requests in flight, plus the backend's own files and
    // sockets: far below one per shard.
    assert!(
        peak_fds < base_fds + 4 * 8 + 24,
        "the backend held {peak_fds} file descriptors (idle {base_fds})"
    );

    // Writes and EXPLAIN ANALYZE.
    exec(
        &mut db,
        "UPDATE big SET v = 'changed' WHERE id IN (1, 2, 3)",
    );
    exec(&mut db, "DELETE FROM big WHERE id > 19990");
    assert_eq!(
        count(&mut db, "SELECT count(*) FROM big WHERE v = 'changed'"),
        3
    );
    assert_eq!(count(&mut db, "SELECT count(*) FROM big"), 19990);
    let plan: Vec<String> = db
        .query("EXPLAIN ANALYZE SELECT * FROM big WHERE id IN (5, 6)", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(plan.iter().any(|l| l.contains("of 4096")), "{plan:?}");

    // A node killed mid-scan: a clear error naming it, then the session works.
    let killer = {
        let pid = cluster.node_pid(2).expect("node-2 runs");
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            // SAFETY: SIGKILL to a node process this test started.
            unsafe { conductor_e2e::libc::kill(pid as i32, conductor_e2e::libc::SIGKILL) };
        })
    };
    let err = db.query("SELECT * FROM big", &[]);
    killer.join().unwrap();
    if let Err(e) = err {
        assert!(pg_err(&e).contains("node-2"), "{}", pg_err(&e));
    }
    cluster.start_node(2);
    assert_eq!(count(&mut db, "SELECT count(*) FROM big"), 19990);
}

#[test]
fn a_hundred_sessions_scan_a_256_shard_table_at_once() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 4,
        node_delay_ms: None,
        token: None,
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE wide (id bigint NOT NULL, v int) SERVER cluster;
         SELECT conductor.create_distributed_table('wide', 'id', shard_count => 256);
         INSERT INTO wide SELECT i, i % 10 FROM generate_series(1, 5000) i;",
    );
    let cluster = Arc::new(cluster);
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..100)
        .map(|_| {
            let (cluster, errors) = (cluster.clone(), errors.clone());
            std::thread::spawn(move || {
                let mut c = cluster.client();
                for _ in 0..2 {
                    match c.query_one("SELECT count(*) FROM wide WHERE v = 3", &[]) {
                        Ok(r) => assert_eq!(r.get::<_, i64>(0), 500),
                        Err(e) => {
                            println!("session error: {}", pg_err(&e));
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    println!(
        "100 sessions × 2 scans of 256 shards: {:?}, {} errors",
        started.elapsed(),
        errors.load(Ordering::Relaxed)
    );
    assert_eq!(errors.load(Ordering::Relaxed), 0);
}
