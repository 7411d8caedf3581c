//! How scans work: every node's request at once (a 16-shard scan of late
//! nodes takes about one late answer), cancel and statement_timeout stop a
//! running scan promptly and leave the session usable, only the needed
//! columns are fetched.

mod common;

use common::{describe, exec, expect_db_error, query_i64};
use conductor_e2e::{pg_err, Cluster, ClusterOptions};
use std::time::{Duration, Instant};

const DELAY_MS: u64 = 200;

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn sixteen_shards_of_late_nodes_take_one_late_answer() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 4,
        node_delay_ms: Some(DELAY_MS),
        token: None,
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE par16 (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('par16', 'id', shard_count => 16);
         CREATE FOREIGN TABLE par1 (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('par1', 'id', shard_count => 1);
         INSERT INTO par16 SELECT i, 'v' || i FROM generate_series(1, 1600) i;
         INSERT INTO par1 SELECT i, 'v' || i FROM generate_series(1, 1600) i;",
    );
    // The delay is real: a node asked directly answers late.
    let (_, direct) = timed(|| cluster.node_query(0, "SELECT 1", &[]));
    assert!(
        direct >= Duration::from_millis(DELAY_MS),
        "direct {direct:?}"
    );

    // Warm up (runtime, connections, topology cache), then measure.
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM par16"), 1600);
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM par1"), 1600);
    let mut t16 = Vec::new();
    let mut t1 = Vec::new();
    for _ in 0..5 {
        let (n, d) = timed(|| query_i64(&mut db, "SELECT count(*) FROM par16"));
        assert_eq!(n, 1600);
        t16.push(d);
        let (n, d) = timed(|| query_i64(&mut db, "SELECT count(*) FROM par1"));
        assert_eq!(n, 1600);
        t1.push(d);
    }
    // One cursor request per node holding shards of the table, all nodes
    // at once: a node's shards are read in one read transaction (one
    // snapshot of the node per scan).
    let cursors = |c: &Cluster| -> Vec<u64> {
        (0..c.node_count())
            .map(|i| {
                let (status, body) = c.node_get(i, "/stats").expect("GET /stats");
                assert_eq!(status, 200, "{body}");
                let v: conductor_e2e::serde_json::Value =
                    conductor_e2e::serde_json::from_str(&body).unwrap();
                // Conductor speaks Protobuf to the nodes; either encoding counts.
                ["/v3/cursor", "/v3-protobuf/cursor"]
                    .iter()
                    .map(|e| v["requests"][e].as_u64().expect("cursor count"))
                    .sum::<u64>()
            })
            .collect()
    };
    let before = cursors(&cluster);
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM par16"), 1600);
    let after = cursors(&cluster);
    let per_node: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let mut want = vec![0u64; cluster.node_count()];
    for (_, (node, _)) in common::shard_map(&mut db, "par16") {
        want[common::node_index(&node)] = 1;
    }
    assert_eq!(
        per_node, want,
        "cursor requests per node for one 16-shard scan"
    );

    let (m16, m1) = (median(t16.clone()), median(t1.clone()));
    let delay = Duration::from_millis(DELAY_MS);
    let serial_bound = delay * 16;
    eprintln!(
        "parallel scan, every node {DELAY_MS} ms late: 16 shards median {m16:?} {t16:?}; \
         1 shard median {m1:?} {t1:?}; one after another would be >= {serial_bound:?}"
    );
    // Every shard answered late, so even in parallel a scan takes one delay.
    assert!(m16 >= delay, "16-shard scan {m16:?} faster than one delay");
    assert!(m1 >= delay, "1-shard scan {m1:?} faster than one delay");
    // About one late answer, not sixteen.
    assert!(
        m16 < delay * 3,
        "16-shard scan took {m16:?}, more than 3 x {delay:?} (serial would be >= {serial_bound:?})"
    );
    // And no worse than a few single-shard scans (16 of them would be serial).
    assert!(
        m16 < m1 * 4,
        "16 shards {m16:?} vs 1 shard {m1:?}: not parallel"
    );
}

#[test]
fn statement_timeout_and_cancel_stop_a_running_scan() {
    let (mut cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 4,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE cancel_big (id bigint NOT NULL, payload text) SERVER cluster;
         SELECT conductor.create_distributed_table('cancel_big', 'id', shard_count => 16);
         INSERT INTO cancel_big SELECT i, repeat('x', 100) FROM generate_series(1, 100000) i;",
    );
    // Now every node answers 5 s late: a scan runs for at least 5 s.
    const SLOW_MS: u64 = 5000;
    for i in 0..cluster.node_count() {
        cluster.set_node_delay(i, Some(SLOW_MS));
    }

    // statement_timeout.
    exec(&mut db, "SET statement_timeout = '300ms'");
    let (r, took) =
        timed(|| db.query_one("SELECT count(*), sum(length(payload)) FROM cancel_big", &[]));
    let e = expect_db_error(r, "scan under statement_timeout");
    eprintln!("statement_timeout 300ms stopped the scan after {took:?}");
    assert_eq!(e.code().code(), "57014", "{}", describe(&e));
    assert!(
        took < Duration::from_secs(1),
        "statement_timeout took {took:?}"
    );
    exec(&mut db, "RESET statement_timeout");
    assert_eq!(query_i64(&mut db, "SELECT 1::bigint"), 1, "session usable");

    // pg_cancel_backend from another session.
    let pid: i32 = db.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
    let mut other = cluster.client();
    let scan = std::thread::spawn(move || {
        let t = Instant::now();
        let r = db.query_one("SELECT count(*) FROM cancel_big", &[]);
        (db, r, t.elapsed())
    });
    // Wait until the scan is running, give it a moment to be in flight.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let active: bool = other
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                                 WHERE pid = $1 AND state = 'active' AND query LIKE '%cancel_big%')",
                &[&pid],
            )
            .unwrap()
            .get(0);
        if active {
            break;
        }
        assert!(Instant::now() < deadline, "scan never became active");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
    let cancelled_at = Instant::now();
    let ok: bool = other
        .query_one("SELECT pg_cancel_backend($1)", &[&pid])
        .unwrap()
        .get(0);
    assert!(ok, "pg_cancel_backend");
    let (mut db, r, total) = scan.join().unwrap();
    let after_cancel = cancelled_at.elapsed();
    eprintln!(
        "pg_cancel_backend stopped the scan {after_cancel:?} after the cancel (scan ran {total:?})"
    );
    let e = expect_db_error(r, "cancelled scan");
    assert_eq!(e.code().code(), "57014", "{}", describe(&e));
    assert!(
        after_cancel < Duration::from_secs(1),
        "cancel took {after_cancel:?}"
    );
    assert!(total < Duration::from_millis(SLOW_MS), "scan ran {total:?}");

    // The same session scans fine afterwards (nothing left over from the
    // dropped requests), once the nodes are fast again.
    for i in 0..cluster.node_count() {
        cluster.set_node_delay(i, None);
    }
    assert_eq!(
        query_i64(&mut db, "SELECT count(*) FROM cancel_big"),
        100000
    );
    let (sum, full) = timed(|| query_i64(&mut db, "SELECT sum(length(payload)) FROM cancel_big"));
    assert_eq!(sum, 100000 * 100);

    // A timeout while rows are streaming (fast nodes; the table read three
    // times over takes 3 x `full`).
    let slow = "SELECT sum(length(payload))::bigint FROM (
                    SELECT payload FROM cancel_big UNION ALL
                    SELECT payload FROM cancel_big UNION ALL
                    SELECT payload FROM cancel_big) x";
    if full * 3 < Duration::from_millis(900) {
        eprintln!("full scan {full:?}: too fast to time out mid-stream; skipped");
    } else {
        exec(&mut db, "SET statement_timeout = '300ms'");
        let (r, took) = timed(|| db.query_one(slow, &[]));
        let e = expect_db_error(r, "streaming scan under statement_timeout");
        assert_eq!(e.code().code(), "57014", "{}", describe(&e));
        eprintln!(
            "full scan {full:?}; statement_timeout 300ms stopped a streaming scan after {took:?}"
        );
        assert!(
            took < Duration::from_secs(1),
            "statement_timeout took {took:?}"
        );
    }
    exec(&mut db, "RESET statement_timeout");
    assert_eq!(
        query_i64(&mut db, "SELECT count(*) FROM cancel_big"),
        100000
    );
}

/// EXPLAIN VERBOSE's "Remote SQL" of a scan.
fn remote_sql(db: &mut conductor_e2e::postgres::Client, query: &str) -> String {
    let sql = format!("EXPLAIN (VERBOSE) {query}");
    let lines: Vec<String> = db
        .query(sql.as_str(), &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", pg_err(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect();
    lines
        .iter()
        .find_map(|l| l.split_once("Remote SQL: ").map(|(_, s)| s.to_string()))
        .unwrap_or_else(|| panic!("no Remote SQL in {lines:#?}"))
}

#[test]
fn only_needed_columns_are_fetched() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE users (id bigint NOT NULL, email text, name text,
                                     bio text, created timestamptz) SERVER cluster;
         SELECT conductor.create_distributed_table('users', 'id', shard_count => 4);
         INSERT INTO users SELECT i, 'u' || i || '@example.com', 'name ' || i,
                                  repeat('bio', 100), '2024-01-01'::timestamptz + i * interval '1 min'
                             FROM generate_series(1, 1000) i;",
    );
    let cols = ["id", "email", "name", "bio", "created"];
    let fetched = |sql: &str| -> Vec<&str> {
        cols.iter()
            .copied()
            .filter(|c| sql.contains(&format!("\"{c}\"")))
            .collect()
    };
    for (query, want) in [
        ("SELECT email FROM users", vec!["email"]),
        ("SELECT email, id FROM users", vec!["id", "email"]),
        (
            "SELECT upper(name) FROM users WHERE length(email) > 3",
            vec!["email", "name"],
        ),
        ("SELECT count(*) FROM users", vec![]),
        ("SELECT * FROM users", cols.to_vec()),
        ("SELECT u FROM users u", cols.to_vec()),
    ] {
        let remote = remote_sql(&mut db, query);
        assert_eq!(fetched(&remote), want, "{query}: Remote SQL {remote}");
        // EXPLAIN ANALYZE runs it, and the answer is right.
        exec(&mut db, &format!("EXPLAIN (ANALYZE, VERBOSE) {query}"));
    }
    // The projected scan's values are the right ones.
    let emails: i64 = query_i64(
        &mut db,
        "SELECT count(*) FROM users WHERE email = 'u' || id || '@example.com'",
    );
    assert_eq!(emails, 1000);
    let n = query_i64(
        &mut db,
        "SELECT count(*) FROM (SELECT email FROM users) s WHERE email LIKE 'u%'",
    );
    assert_eq!(n, 1000);
}

/// `Threads:` of a process, from /proc.
fn threads(pid: i32) -> i64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

#[test]
fn the_io_runtime_is_created_lazily_in_the_backend() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE lazy_t (id bigint NOT NULL) SERVER cluster;
         SELECT conductor.create_distributed_table('lazy_t', 'id', shard_count => 4);",
    );
    exec(&mut db, "INSERT INTO lazy_t SELECT generate_series(1, 100)");

    let mut fresh = cluster.client();
    let pid: i32 = fresh
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    assert_eq!(threads(pid), 1, "a fresh backend is single-threaded");
    // The extension loaded (a catalog-only function), no I/O yet: no runtime.
    let _ = query_i64(&mut fresh, "SELECT hits FROM conductor.cache_stats()");
    let _ = query_i64(
        &mut fresh,
        "SELECT conductor.shard_for('lazy_t', 1::bigint)::bigint",
    );
    assert_eq!(
        threads(pid),
        1,
        "no I/O threads before the first remote request"
    );
    assert_eq!(query_i64(&mut fresh, "SELECT count(*) FROM lazy_t"), 100);
    let with_runtime = threads(pid);
    assert!(
        with_runtime > 1,
        "the scan started the I/O runtime in the backend"
    );
    // Not one more per query.
    for _ in 0..5 {
        assert_eq!(query_i64(&mut fresh, "SELECT count(*) FROM lazy_t"), 100);
    }
    assert_eq!(threads(pid), with_runtime, "one runtime per backend");

    // The postmaster never starts it (backends fork from a single thread).
    let pidfile = std::fs::read_to_string(cluster.dir().join("pgdata/postmaster.pid")).unwrap();
    let postmaster: i32 = pidfile.lines().next().unwrap().trim().parse().unwrap();
    assert_eq!(threads(postmaster), 1, "postmaster threads");
    eprintln!("backend threads with the I/O runtime: {with_runtime}; postmaster: 1");
}

/// A scan whose consumer pauses: a Postgres cursor over a big table, read
/// a little, then nothing for longer than a stream's idle expiry
/// (conductor-node `--stream-idle-timeout-ms`, 10 s), then the rest. The
/// streamed result is bounded on both sides, so the node waits for the
/// reader (up to `--cursor-stall-timeout-ms`, 5 min); every row must arrive.
#[test]
fn a_paused_scan_still_returns_every_row() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    // 2 shards of ~60 MB each: far more than the socket buffers and
    // channels between a node and the backend hold.
    exec(
        &mut db,
        "CREATE FOREIGN TABLE paused (id bigint NOT NULL, payload text) SERVER cluster;
         SELECT conductor.create_distributed_table('paused', 'id', shard_count => 2);",
    );
    exec(
        &mut db,
        "INSERT INTO paused SELECT i, repeat(md5(i::text), 32) FROM generate_series(1, 120000) i",
    );
    exec(
        &mut db,
        "BEGIN; DECLARE c NO SCROLL CURSOR FOR SELECT id, payload FROM paused;",
    );
    let first = db.query("FETCH 100 FROM c", &[]).unwrap();
    assert_eq!(first.len(), 100);
    std::thread::sleep(Duration::from_secs(13));
    let rest = db
        .query("FETCH ALL FROM c", &[])
        .unwrap_or_else(|e| panic!("FETCH ALL after a pause: {}", pg_err(&e)));
    assert_eq!(first.len() + rest.len(), 120000);
    exec(&mut db, "COMMIT");
}

/// Scans close every cursor stream they open, in the session that runs
/// them (the close is sent after the scan, not waited for): a node's open
/// streams return to none without waiting for its idle expiry.
#[test]
fn scans_close_their_streams() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE streams (id bigint NOT NULL, v int) SERVER cluster;
         SELECT conductor.create_distributed_table('streams', 'id', shard_count => 16);
         INSERT INTO streams SELECT i, i % 100 FROM generate_series(1, 1000) i;",
    );
    let open = |cluster: &Cluster| -> Vec<u64> {
        (0..cluster.node_count())
            .map(|i| {
                let (_, body) = cluster.node_get(i, "/stats").expect("node stats");
                conductor_e2e::serde_json::from_str::<conductor_e2e::serde_json::Value>(&body)
                    .expect("stats JSON")["open_streams"]
                    .as_u64()
                    .expect("open_streams")
            })
            .collect()
    };
    for _ in 0..200 {
        let found = db
            .query("SELECT id FROM streams WHERE v = 42", &[])
            .unwrap();
        assert_eq!(found.len(), 10);
    }
    // Well inside the nodes' 10 s idle expiry: only closes make this pass.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut streams = open(&cluster);
    while streams.iter().any(|&n| n > 0) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        // The session stays open and idle: its closes were sent by its own
        // I/O threads, not by a later statement.
        streams = open(&cluster);
    }
    assert_eq!(streams, vec![0, 0], "streams left open after 200 scans");
}

/// One tenant's rows (a lone shard, any number of rows): a few come from
/// its node in one request; past the threshold they are streamed. Either
/// way they are what a local table gives, plain, ordered, grouped, and
/// joined with a co-located table.
#[test]
fn one_tenants_rows_are_one_request_when_few() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE TABLE l_orders (tenant int NOT NULL, id int NOT NULL, amount int);
         CREATE TABLE l_lines (tenant int NOT NULL, id int NOT NULL, line int NOT NULL, qty int);
         CREATE FOREIGN TABLE orders (tenant int NOT NULL, id int NOT NULL, amount int) SERVER cluster
             OPTIONS (primary_key 'tenant,id');
         SELECT conductor.create_distributed_table('orders', 'tenant', shard_count => 8);
         CREATE FOREIGN TABLE lines (tenant int NOT NULL, id int NOT NULL, line int NOT NULL, qty int)
             SERVER cluster OPTIONS (primary_key 'tenant,id,line');
         SELECT conductor.create_distributed_table('lines', 'tenant', colocate_with => 'orders');
         INSERT INTO l_orders SELECT t, i, (t * 7 + i) % 100
             FROM generate_series(1, 5) t, generate_series(1, CASE WHEN t = 5 THEN 1200 ELSE 6 END) i;
         INSERT INTO l_lines SELECT tenant, id, n, n * id % 9 FROM l_orders, generate_series(1, 2) n;
         INSERT INTO orders SELECT * FROM l_orders;
         INSERT INTO lines SELECT * FROM l_lines;",
    );
    let rows = |db: &mut conductor_e2e::postgres::Client, sql: &str| -> Vec<String> {
        db.simple_query(sql)
            .expect(sql)
            .into_iter()
            .filter_map(|m| match m {
                conductor_e2e::postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or("NULL"))
                        .collect::<Vec<_>>()
                        .join("|"),
                ),
                _ => None,
            })
            .collect()
    };
    let queries = [
        "SELECT id, amount FROM {o} WHERE tenant = {t} ORDER BY id",
        "SELECT amount, count(*), sum(id) FROM {o} WHERE tenant = {t} GROUP BY amount ORDER BY amount",
        "SELECT o.id, l.line, l.qty FROM {o} o JOIN {l} l ON l.tenant = o.tenant AND l.id = o.id \
         WHERE o.tenant = {t} ORDER BY 1, 2",
    ];
    for tenant in [2, 5] {
        for q in queries {
            let sql = |o: &str, l: &str| {
                q.replace("{o}", o)
                    .replace("{l}", l)
                    .replace("{t}", &tenant.to_string())
            };
            let before: u64 = common::node_requests(&cluster).iter().sum();
            let cursors_before = cursor_requests(&cluster);
            let got = rows(&mut db, &sql("orders", "lines"));
            let requests = common::node_requests(&cluster).iter().sum::<u64>() - before;
            let cursors = cursor_requests(&cluster) - cursors_before;
            assert_eq!(
                got,
                rows(&mut db, &sql("l_orders", "l_lines")),
                "{q}, tenant {tenant}"
            );
            assert!(!got.is_empty());
            // Tenant 2 has 6 orders, 12 lines: one request. Tenant 5's
            // 1,200 orders (2,400 lines) are more than a lone shard is
            // fetched whole with: the first request, then the stream.
            if tenant == 2 || q.contains("GROUP BY") {
                assert_eq!(
                    (requests, cursors),
                    (1, 0),
                    "one request, no cursor, for a few rows: {q}, tenant {tenant}"
                );
            } else {
                assert!(
                    requests >= 2 && cursors == 1,
                    "{requests} requests, {cursors} cursors: {q}, tenant {tenant}"
                );
            }
        }
    }
}

/// Cursor requests the nodes have served so far (their `/stats`).
fn cursor_requests(cluster: &Cluster) -> u64 {
    (0..cluster.node_count())
        .map(|i| {
            let (_, body) = cluster.node_get(i, "/stats").expect("node /stats");
            let v: conductor_e2e::serde_json::Value =
                conductor_e2e::serde_json::from_str(&body).expect("/stats JSON");
            ["/v3/cursor", "/v3-protobuf/cursor"]
                .iter()
                .map(|e| v["requests"][e].as_u64().unwrap_or(0))
                .sum::<u64>()
        })
        .sum()
}
