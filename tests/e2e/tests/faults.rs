//! Faults against real processes: a node killed in the middle of
//! a scan, a stopped (SIGSTOP) node and deadlines, cancel while waiting on
//! it, opt-in degradation, retries of reads, and a node that answers
//! garbage.

mod common;

use common::{describe, exec, expect_db_error, query_i64, signal};
use conductor_e2e::{pg_err, Cluster, ClusterOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn setup(rows: i64) -> (Cluster, conductor_e2e::postgres::Client) {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 4,
        node_delay_ms: None,
        token: None,
    });
    exec(
        &mut db,
        &format!(
            "CREATE FOREIGN TABLE f (id bigint NOT NULL, v text) SERVER cluster;
             SELECT conductor.create_distributed_table('f', 'id', shard_count => 16);
             INSERT INTO f SELECT i, repeat('x', 100) FROM generate_series(1, {rows}) i;"
        ),
    );
    (cluster, db)
}

const SIGSTOP: i32 = conductor_e2e::libc::SIGSTOP;
const SIGCONT: i32 = conductor_e2e::libc::SIGCONT;

#[test]
fn a_node_killed_mid_scan_is_an_error_naming_it_and_the_session_recovers() {
    let (mut cluster, mut db) = setup(16_000);
    // node-2 answers 2 s late, so its shards are still in flight when it
    // is killed; the other shards have streamed by then.
    cluster.set_node_delay(2, Some(2_000));
    let config = cluster.pg_config();
    let scan = std::thread::spawn(move || {
        let mut c = config.connect(conductor_e2e::postgres::NoTls).unwrap();
        let t = Instant::now();
        let r = c.query_one("SELECT count(*), sum(length(v)) FROM f", &[]);
        (r.map(|row| row.get::<_, i64>(0)), t.elapsed(), c)
    });
    std::thread::sleep(Duration::from_millis(500));
    let killed_at = Instant::now();
    cluster.stop_node(2); // SIGKILL
    let (result, elapsed, mut session) = scan.join().unwrap();
    let after_kill = killed_at.elapsed();
    let e = expect_db_error(result, "scan across a killed node");
    println!(
        "killed node: ERROR {after_kill:?} after the kill ({elapsed:?} into the scan): {}",
        describe(&e)
    );
    let detail = e.detail().unwrap_or("");
    assert!(
        detail.contains("node-2") && detail.contains("shard"),
        "{}",
        describe(&e)
    );
    assert!(
        after_kill < Duration::from_secs(5),
        "the error came promptly: {after_kill:?}"
    );
    // The backend survived, and once the node is back the same session
    // reads everything again.
    cluster.set_node_delay(2, None);
    assert_eq!(query_i64(&mut session, "SELECT count(*) FROM f"), 16_000);
    assert_eq!(query_i64(&mut db, "SELECT 1::bigint"), 1);
}

#[test]
fn a_stopped_node_fails_at_the_deadline_and_cancel_is_prompt() {
    let (cluster, mut db) = setup(1_000);
    let pid = cluster.node_pid(1).expect("node-1 runs");
    signal(pid, SIGSTOP);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        // The request deadline (without retries: a timeout is retried like
        // any transient failure, each attempt with its own deadline).
        exec(
            &mut db,
            "SET conductor.request_timeout = '1s'; SET conductor.read_retries = 0",
        );
        let t = Instant::now();
        let e = expect_db_error(db.query("SELECT count(*) FROM f", &[]), "stopped node");
        let waited = t.elapsed();
        println!(
            "request_timeout 1s: ERROR after {waited:?}: {}",
            describe(&e)
        );
        assert!(
            e.detail().unwrap_or("").contains("node-1"),
            "{}",
            describe(&e)
        );
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
            "{waited:?}"
        );

        // statement_timeout ends a statement waiting on the node.
        exec(
            &mut db,
            "SET conductor.request_timeout = '60s'; SET statement_timeout = '300ms'",
        );
        // Warm the session (runtime, connections) so the figure is the wait.
        let _ = db.query("SELECT count(*) FROM f WHERE id = 1", &[]);
        let t = Instant::now();
        let e = expect_db_error(db.query("SELECT count(*) FROM f", &[]), "statement_timeout");
        let late = t.elapsed().saturating_sub(Duration::from_millis(300));
        println!("statement_timeout: canceled {late:?} after the timeout");
        assert_eq!(e.code().code(), "57014", "{}", describe(&e));
        assert!(late < Duration::from_millis(100), "{late:?}");
        exec(&mut db, "RESET statement_timeout");

        // pg_cancel_backend from another session.
        let pid: i32 = db.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        let config = cluster.pg_config();
        let canceler = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let mut c = config.connect(conductor_e2e::postgres::NoTls).unwrap();
            let t = Instant::now();
            c.execute("SELECT pg_cancel_backend($1)", &[&pid]).unwrap();
            t
        });
        let e = expect_db_error(db.query("SELECT count(*) FROM f", &[]), "pg_cancel_backend");
        let sent = canceler.join().unwrap();
        let delay = sent.elapsed();
        println!("pg_cancel_backend: statement ended {delay:?} after the cancel was sent");
        assert_eq!(e.code().code(), "57014", "{}", describe(&e));
        assert!(delay < Duration::from_millis(100), "{delay:?}");
        // The session is usable.
        assert_eq!(query_i64(&mut db, "SELECT 1::bigint"), 1);
    }));
    signal(pid, SIGCONT);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    exec(&mut db, "RESET conductor.request_timeout");
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM f"), 1_000);
}

#[test]
fn skip_returns_the_reachable_shards_with_a_warning_and_writes_never_skip() {
    let (mut cluster, _db) = setup(1_600);
    let warnings = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = warnings.clone();
    let mut config = cluster.pg_config();
    config.notice_callback(move |n| {
        sink.lock()
            .unwrap()
            .push(format!("{} | {}", n.message(), n.detail().unwrap_or("")))
    });
    let mut db = config.connect(conductor_e2e::postgres::NoTls).unwrap();
    let on_node_3: i64 = query_i64(
        &mut db,
        "SELECT count(*) FROM generate_series(1, 1600) i
          WHERE conductor.shard_for('f', i::bigint) IN
                (SELECT shard_id FROM conductor.shards WHERE node_id = 'node-3')",
    );
    cluster.stop_node(3);
    // No cool-down: this test is about skipping, not about health.
    exec(
        &mut db,
        "SET conductor.read_retries = 0; SET conductor.node_cooldown = 0",
    );
    // Default: an error.
    let e = expect_db_error(db.query("SELECT count(*) FROM f", &[]), "default");
    assert!(
        e.detail().unwrap_or("").contains("node-3"),
        "{}",
        describe(&e)
    );
    // skip: the other shards' rows, and a WARNING naming the missing ones.
    exec(&mut db, "SET conductor.on_shard_failure = 'skip'");
    let n = query_i64(&mut db, "SELECT count(*) FROM f");
    assert_eq!(n, 1_600 - on_node_3);
    let w = warnings.lock().unwrap().clone();
    let missing = w
        .iter()
        .find(|w| w.contains("are missing"))
        .unwrap_or_else(|| panic!("a WARNING names the missing shards: {w:?}"));
    let shards_on_3: Vec<i32> = db
        .query(
            "SELECT shard_id FROM conductor.shards WHERE table_name = 'f'::regclass AND node_id = 'node-3'",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for s in &shards_on_3 {
        assert!(missing.contains(&format!("shard {s}")), "{missing}");
    }
    // Writes never skip.
    let key_on_3: i64 = query_i64(
        &mut db,
        "SELECT i::bigint FROM generate_series(5000, 6000) i
          WHERE conductor.shard_for('f', i::bigint) IN
                (SELECT shard_id FROM conductor.shards WHERE node_id = 'node-3') LIMIT 1",
    );
    let e = expect_db_error(
        db.execute(
            &format!("INSERT INTO f VALUES ({key_on_3}, 'w')") as &str,
            &[],
        ),
        "write to a dead node",
    );
    assert!(
        e.detail().unwrap_or("").contains("node-3"),
        "{}",
        describe(&e)
    );
    cluster.start_node(3);
    exec(&mut db, "RESET conductor.on_shard_failure");
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM f"), 1_600);
}

#[test]
fn a_read_retries_a_node_that_comes_back() {
    let (mut cluster, mut db) = setup(160);
    cluster.stop_node(0);
    exec(
        &mut db,
        "SET conductor.read_retries = 6; SET conductor.retry_backoff = '200ms'",
    );
    let config = cluster.pg_config();
    let reader = std::thread::spawn(move || {
        let mut c = config.connect(conductor_e2e::postgres::NoTls).unwrap();
        c.batch_execute("SET conductor.read_retries = 6; SET conductor.retry_backoff = '200ms'")
            .unwrap();
        c.query_one("SELECT count(*) FROM f", &[])
            .map(|r| r.get::<_, i64>(0))
            .map_err(|e| pg_err(&e))
    });
    std::thread::sleep(Duration::from_millis(400));
    cluster.start_node(0);
    assert_eq!(
        reader.join().unwrap(),
        Ok(160),
        "the read retried until node-0 was back"
    );
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM f"), 160);
}

/// A one-node "cluster" whose node answers the health check properly, the
/// Protobuf endpoints with 404 (it speaks JSON only) and everything else
/// with `garbage`.
fn http(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn garbage_node(garbage: Vec<u8>) -> String {
    let garbage: &'static [u8] = Box::leak(garbage.into_boxed_slice());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut length = 0usize;
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).unwrap();
                        if h == "\r\n" || h.is_empty() {
                            break;
                        }
                        if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    let body = String::from_utf8_lossy(&body);
                    let close_only = body.contains("\"close\"") && !body.contains("\"execute\"");
                    // A JSON-only node: no Protobuf endpoints (the client
                    // then speaks JSON to it, and gets the garbage).
                    let response: Vec<u8> = if request_line.contains(" /v3-protobuf/") {
                        http("404 Not Found", "text/plain", "not found")
                    } else if close_only {
                        let json = br#"{"baton":null,"base_url":null,"results":[{"type":"ok","response":{"type":"close"}}]}"#;
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            json.len()
                        )
                        .into_bytes();
                        r.extend_from_slice(json);
                        r
                    } else {
                        garbage.to_vec()
                    };
                    if conn.write_all(&response).is_err() {
                        return;
                    }
                    if request_line.contains(" /v3-protobuf/") {
                        continue;
                    }
                    if !close_only && !garbage.starts_with(b"HTTP/1.1 200") {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[test]
fn garbage_answers_are_clear_errors_and_the_backend_survives() {
    let (cluster, mut db) = setup(16);
    let ndjson = "application/x-ndjson";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "malformed JSON",
            http("200 OK", "application/json", r#"{"baton":"#),
        ),
        (
            "HTTP 500 with a text body",
            http("500 Internal Server Error", "text/plain", "it's broken"),
        ),
        (
            "a truncated cursor stream",
            http(
                "200 OK",
                ndjson,
                "{\"baton\":null,\"base_url\":null}\n{\"type\":\"step_begin\",\"step\":0,\"cols\":[{\"name\":\"",
            ),
        ),
        (
            "a row wider than the table",
            http(
                "200 OK",
                ndjson,
                concat!(
                    "{\"baton\":null,\"base_url\":null}\n",
                    "{\"type\":\"step_begin\",\"step\":0,\"cols\":[{\"name\":\"id\"},{\"name\":\"v\"}]}\n",
                    "{\"type\":\"row\",\"row\":[{\"type\":\"integer\",\"value\":\"1\"},{\"type\":\"null\"},{\"type\":\"null\"}]}\n",
                    "{\"type\":\"step_end\",\"affected_row_count\":0}\n"
                ),
            ),
        ),
    ];
    let real = cluster.node_url(0);
    for (what, garbage) in cases {
        let url = garbage_node(garbage);
        exec(
            &mut db,
            &format!("SELECT conductor.update_node('cluster', 'node-0', '{url}')"),
        );
        let e = expect_db_error(db.query("SELECT id, v FROM f", &[]), what);
        println!("{what}: {}", describe(&e));
        assert!(
            e.code().code().starts_with("HV"),
            "{what}: {}",
            describe(&e)
        );
        assert!(
            e.detail().unwrap_or("").contains("node-0"),
            "{what}: {}",
            describe(&e)
        );
        assert_eq!(
            query_i64(&mut db, "SELECT 1::bigint"),
            1,
            "{what}: backend alive"
        );
    }
    exec(
        &mut db,
        &format!("SELECT conductor.update_node('cluster', 'node-0', '{real}')"),
    );
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM f"), 16);
}

#[test]
fn a_failing_node_is_marked_unhealthy_fails_fast_and_comes_back() {
    let (mut cluster, mut db) = setup(160);
    exec(
        &mut db,
        "SET conductor.read_retries = 0; SET conductor.node_cooldown = '2s'",
    );
    cluster.stop_node(1);
    // Repeated failures mark the node unhealthy...
    for _ in 0..3 {
        let e = expect_db_error(db.query("SELECT count(*) FROM f", &[]), "node down");
        assert!(
            e.detail().unwrap_or("").contains("node-1"),
            "{}",
            describe(&e)
        );
    }
    let row = db
        .query_one(
            "SELECT health, consecutive_failures, last_error FROM conductor.nodes WHERE node_id = 'node-1'",
            &[],
        )
        .unwrap();
    let (health, failures, last_error): (String, i32, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    println!("node-1 after 3 failures: {health}, {failures} failures, last error {last_error:?}");
    assert_eq!(health, "unhealthy");
    assert!(failures >= 3);
    assert!(last_error.unwrap_or_default().contains("node-1"));
    // ...and statements that need it then fail fast, naming it.
    let t = Instant::now();
    let e = expect_db_error(db.query("SELECT count(*) FROM f", &[]), "fail fast");
    let took = t.elapsed();
    println!("fail fast: {took:?}: {}", describe(&e));
    assert!(
        e.detail().unwrap_or("").contains("marked unhealthy"),
        "{}",
        describe(&e)
    );
    assert!(took < Duration::from_millis(200), "{took:?}");
    // Other nodes' shards still serve a routed read.
    let healthy_key: i64 = query_i64(
        &mut db,
        "SELECT i::bigint FROM generate_series(1, 160) i
          WHERE conductor.shard_for('f', i::bigint) IN
                (SELECT shard_id FROM conductor.shards WHERE node_id <> 'node-1') LIMIT 1",
    );
    assert_eq!(
        query_i64(
            &mut db,
            &format!("SELECT count(*) FROM f WHERE id = {healthy_key}")
        ),
        1
    );
    // The node comes back: after the cool-down it is used again, without
    // a restart of anything on the Postgres side.
    cluster.start_node(1);
    std::thread::sleep(Duration::from_millis(2_100));
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM f"), 160);
    let health: String = db
        .query_one(
            "SELECT health FROM conductor.nodes WHERE node_id = 'node-1'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(health, "healthy");
    // Writes reach the restarted node through the pool too.
    exec(
        &mut db,
        "INSERT INTO f SELECT i, 'new' FROM generate_series(1000, 1100) i",
    );
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM f"), 261);
}

#[test]
fn writes_under_node_kills_lose_nothing_and_apply_nothing_twice() {
    let (mut cluster, mut db) = setup(0);
    exec(
        &mut db,
        "CREATE FOREIGN TABLE kw (id bigint NOT NULL, session int, seq int) SERVER cluster;
         SELECT conductor.create_distributed_table('kw', 'id', shard_count => 8);",
    );
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sessions: Vec<_> = (0..4)
        .map(|s| {
            let config = cluster.pg_config();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = config.connect(conductor_e2e::postgres::NoTls).unwrap();
                // No cool-down: keep every node under load while it flaps.
                c.batch_execute(
                    "SET conductor.node_cooldown = 0; SET conductor.request_timeout = '3s'",
                )
                .unwrap();
                let (mut ok, mut failed, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
                let mut seq = 0i64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    seq += 1;
                    let id = s as i64 * 1_000_000 + seq;
                    match c.execute(
                        "INSERT INTO kw VALUES ($1, $2, $3)",
                        &[&id, &(s as i32), &(seq as i32)],
                    ) {
                        Ok(1) => ok.push(id),
                        Ok(n) => panic!("INSERT reported {n} rows"),
                        Err(e) => {
                            let detail = e.as_db_error().and_then(|d| d.detail()).unwrap_or("");
                            if detail.contains("Outcome unknown") {
                                unknown.push(id)
                            } else {
                                failed.push(id)
                            }
                        }
                    }
                }
                (ok, failed, unknown)
            })
        })
        .collect();
    // Kill and restart nodes while the sessions write.
    let end = Instant::now() + Duration::from_secs(8);
    let mut victim = 0;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(400));
        cluster.stop_node(victim);
        std::thread::sleep(Duration::from_millis(300));
        cluster.start_node(victim);
        victim = (victim + 1) % cluster.node_count();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
    for s in sessions {
        let (o, f, u) = s.join().unwrap();
        ok.extend(o);
        failed.extend(f);
        unknown.extend(u);
    }
    println!(
        "under node kills: {} inserts succeeded, {} failed, {} with an unknown outcome",
        ok.len(),
        failed.len(),
        unknown.len()
    );
    assert!(
        !ok.is_empty() && !failed.is_empty(),
        "the kills must hit some writes"
    );
    // Abandoned streams of killed connections have expired by now.
    std::thread::sleep(Duration::from_secs(1));
    let counts: std::collections::HashMap<i64, i64> = db
        .query("SELECT id, count(*) FROM kw GROUP BY id", &[])
        .unwrap_or_else(|e| panic!("{}", pg_err(&e)))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for id in &ok {
        assert_eq!(
            counts.get(id),
            Some(&1),
            "acknowledged insert {id} present once"
        );
    }
    for id in &failed {
        assert_eq!(counts.get(id), None, "failed insert {id} left nothing");
    }
    for id in &unknown {
        assert!(
            counts.get(id).copied().unwrap_or(0) <= 1,
            "in-doubt insert {id} at most once"
        );
    }
    assert!(counts.values().all(|&n| n == 1), "no row twice");
    assert_eq!(
        counts.len(),
        ok.len() + unknown.iter().filter(|id| counts.contains_key(id)).count(),
        "nothing but what was acknowledged (or in doubt)"
    );
}

/// Every setting of the README's table shows its documented default, and
/// the enum ones take and show their documented (lowercase) values.
#[test]
fn settings_show_their_documented_defaults_and_values() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 1,
        node_delay_ms: None,
        token: None,
    });
    let show = |db: &mut conductor_e2e::postgres::Client, name: &str| -> String {
        db.query_one(&format!("SHOW conductor.{name}"), &[])
            .unwrap_or_else(|e| panic!("SHOW {name}: {}", pg_err(&e)))
            .get(0)
    };
    for (name, documented) in [
        ("request_timeout", "30s"),
        ("batch_size", "1000"),
        ("on_shard_failure", "error"),
        ("read_retries", "2"),
        ("retry_backoff", "50ms"),
        ("node_cooldown", "10s"),
        ("track_stats", "on"),
        ("max_requests_per_node", "1"),
        ("remote_transaction_idle_timeout", "5min"),
        ("log_remote_statements_min_duration", "-1"),
        ("move_write_block_timeout", "10s"),
        ("wire_encoding", "auto"),
    ] {
        assert_eq!(show(&mut db, name), documented, "conductor.{name}");
    }
    for (name, values) in [
        ("on_shard_failure", &["skip", "error"][..]),
        ("wire_encoding", &["json", "protobuf", "auto"][..]),
    ] {
        for v in values {
            exec(&mut db, &format!("SET conductor.{name} = {v}"));
            assert_eq!(show(&mut db, name), *v, "conductor.{name}");
        }
        let listed: Vec<String> = db
            .query_one(
                "SELECT enumvals::text[] FROM pg_settings WHERE name = $1",
                &[&format!("conductor.{name}")],
            )
            .unwrap()
            .get(0);
        let mut expected: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        expected.sort();
        let mut listed_sorted = listed.clone();
        listed_sorted.sort();
        assert_eq!(
            listed_sorted, expected,
            "pg_settings.enumvals of conductor.{name}"
        );
    }
}
