//! The executor against scripted fake servers: parallelism, bounded
//! streaming, cancel, failures.

mod support;

use conductor_core::client::{ClientConfig, NodeEndpoint, NodeError, WireEncoding};
use conductor_core::executor::{
    ExecHandle, Executor, ExecutorConfig, ScanHandle, ScanOptions, ScanPoll, ShardQuery,
    ShardRequest,
};
use conductor_hrana::{PipelineReqBody, PipelineRespBody, Stmt, StreamRequest, Value};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use support::{cursor_lines, cursor_text, FakeServer, Reply};

const POLL: Duration = Duration::from_millis(50);

fn executor() -> Executor {
    Executor::new(executor_config())
}

fn executor_config() -> ExecutorConfig {
    ExecutorConfig {
        client: ClientConfig {
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            // These scripted servers speak JSON only.
            encoding: WireEncoding::Json,
            ..ClientConfig::default()
        },
        ..ExecutorConfig::default()
    }
}

fn query(shard_id: u32, url: &str) -> ShardQuery {
    ShardQuery {
        shard_id,
        endpoint: NodeEndpoint {
            node_id: format!("node-{shard_id}"),
            url: url.to_string(),
            token: None,
        },
        stmt: Stmt::new("SELECT id FROM t", vec![]),
    }
}

/// Poll to the end; the rows per shard, or the failure.
fn collect(scan: &mut ScanHandle, limit: Duration) -> Result<Vec<(u32, Vec<Value>)>, String> {
    let end = Instant::now() + limit;
    let mut rows = Vec::new();
    loop {
        assert!(Instant::now() < end, "scan did not finish within {limit:?}");
        assert!(scan.buffered() <= scan.capacity());
        match scan.next(POLL) {
            ScanPoll::Rows(c) => rows.extend(c.rows.into_iter().map(|r| (c.shard_id, r))),
            ScanPoll::Pending => {}
            ScanPoll::Done => return Ok(rows),
            ScanPoll::Failed(e) => return Err(e.to_string()),
        }
    }
}

/// The blocked-signal mask of a thread, from /proc (`SigBlk:` in hex);
/// None once the thread has ended.
fn blocked_signals(task_dir: &std::path::Path) -> Option<u64> {
    let status = std::fs::read_to_string(task_dir.join("status")).ok()?;
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .expect("SigBlk");
    Some(mask)
}

#[test]
fn executor_starts_lazily_with_named_threads_that_block_signals() {
    let me = std::path::PathBuf::from("/proc/thread-self");
    let mask_before = blocked_signals(&me).expect("our own mask");
    let ex = executor();
    assert!(!ex.is_started());
    ex.start().expect("start");
    assert!(ex.is_started());
    // Our own mask is restored after the threads were spawned.
    assert_eq!(blocked_signals(&me), Some(mask_before));
    // The masks of the I/O threads alive now: other tests of this process
    // run executors too, whose threads may end between the listing and the
    // read (this test's own live as long as `ex`).
    let io_threads: Vec<(std::path::PathBuf, u64)> = std::fs::read_dir("/proc/self/task")
        .expect("procfs")
        .filter_map(|t| {
            let dir = t.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?;
            if name.trim() != "conductor-io" {
                return None;
            }
            let mask = blocked_signals(&dir)?;
            Some((dir, mask))
        })
        .collect();
    assert!(io_threads.len() >= 2, "{io_threads:?}");
    // Postgres' signals (SIGHUP, SIGINT cancel, SIGUSR1 latch/procsignal,
    // SIGUSR2, SIGALRM timeouts, SIGTERM) must never reach an I/O thread.
    let bit = |sig: u32| 1u64 << (sig - 1);
    let pg_signals = bit(1) | bit(2) | bit(10) | bit(12) | bit(14) | bit(15);
    for (t, mask) in io_threads {
        assert_eq!(mask & pg_signals, pg_signals, "{t:?}");
    }
}

#[test]
fn scan_unions_all_shards() {
    let server = FakeServer::start(|_| Reply::Stream {
        delay: Duration::ZERO,
        lines: cursor_lines(1000),
    });
    let ex = executor();
    let mut scan = ex.scan(
        (0..4).map(|s| query(s, &server.url)).collect(),
        ScanOptions::new(1),
    );
    let rows = collect(&mut scan, Duration::from_secs(20)).expect("scan");
    assert_eq!(rows.len(), 4000);
    for s in 0..4 {
        assert_eq!(rows.iter().filter(|(id, _)| *id == s).count(), 1000);
    }
    let stats = scan.stats();
    assert_eq!(stats.len(), 4);
    assert!(stats.iter().all(|s| s.rows == 1000 && s.elapsed.is_some()));
    assert!(matches!(scan.next(POLL), ScanPoll::Done));
}

#[test]
fn shards_run_in_parallel() {
    let delay = Duration::from_millis(200);
    let server = FakeServer::start(move |_| Reply::Stream {
        delay,
        lines: cursor_lines(10),
    });
    let ex = executor();
    ex.start().expect("start");
    let t = Instant::now();
    let mut scan = ex.scan(
        (0..4).map(|s| query(s, &server.url)).collect(),
        ScanOptions::new(1),
    );
    let rows = collect(&mut scan, Duration::from_secs(10)).expect("scan");
    let took = t.elapsed();
    assert_eq!(rows.len(), 40);
    // Serial would be >= 800 ms; parallel is one delay plus overhead.
    assert!(
        took >= delay && took < Duration::from_millis(600),
        "{took:?}"
    );

    let server = FakeServer::start(move |_| Reply::Full {
        status: 200,
        body: json!({"baton": null, "base_url": null,
                     "results": [{"type": "ok", "response": {"type": "close"}}]})
        .to_string()
        .into_bytes(),
        delay,
    });
    let t = Instant::now();
    let mut exec = ex.execute((0..4).map(|s| request(s, &server.url)).collect());
    let results = wait_all(&mut exec, Duration::from_secs(10));
    let took = t.elapsed();
    assert!(results.iter().all(Result::is_ok));
    assert!(
        took >= delay && took < Duration::from_millis(600),
        "{took:?}"
    );
}

#[test]
fn a_million_rows_stream_with_bounded_memory() {
    const ROWS: u64 = 1_000_000;
    let server = FakeServer::start(|_| Reply::Stream {
        delay: Duration::ZERO,
        lines: cursor_lines(ROWS),
    });
    let ex = executor();
    let mut scan = ex.scan(vec![query(0, &server.url)], ScanOptions::new(1));
    assert_eq!(scan.capacity(), 4);

    // Take one chunk, then stop reading: the I/O side must stall, held back
    // by the full channel and TCP, far short of the whole body (~60 MB).
    loop {
        match scan.next(Duration::from_secs(10)) {
            ScanPoll::Rows(_) => break,
            ScanPoll::Pending => {}
            other => panic!("{other:?}"),
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let stalled_at = server.observed.streamed_bytes.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    let later = server.observed.streamed_bytes.load(Ordering::SeqCst);
    assert_eq!(scan.buffered(), scan.capacity(), "channel full, no more");
    assert_eq!(
        stalled_at, later,
        "the server is blocked while we do not read"
    );
    assert!(
        stalled_at < 20 << 20,
        "only socket buffers' worth sent: {stalled_at}"
    );

    // Then read everything; the channel never exceeds its capacity.
    let mut n = 256u64;
    let mut next_expected = 256i64;
    loop {
        assert!(scan.buffered() <= scan.capacity());
        match scan.next(Duration::from_secs(10)) {
            ScanPoll::Rows(c) => {
                assert!(c.rows.len() <= 256);
                for r in c.rows {
                    assert_eq!(r, vec![Value::Integer(next_expected)]);
                    next_expected += 1;
                    n += 1;
                }
            }
            ScanPoll::Pending => {}
            ScanPoll::Done => break,
            ScanPoll::Failed(e) => panic!("{e}"),
        }
    }
    assert_eq!(n, ROWS);
    assert_eq!(scan.stats()[0].rows, ROWS);
    assert!(server.observed.stream_completed.load(Ordering::SeqCst));
}

fn wait_until(what: &str, limit: Duration, cond: impl Fn() -> bool) -> Duration {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    t.elapsed()
}

#[test]
fn dropping_a_streaming_scan_closes_the_connection() {
    let server = FakeServer::start(|_| Reply::Stream {
        delay: Duration::ZERO,
        lines: cursor_lines(u64::MAX),
    });
    let ex = executor();
    let mut scan = ex.scan(vec![query(0, &server.url)], ScanOptions::new(1));
    assert!(matches!(
        scan.next(Duration::from_secs(10)),
        ScanPoll::Rows(_)
    ));
    let t = Instant::now();
    drop(scan);
    assert!(
        t.elapsed() < Duration::from_millis(50),
        "drop does not block"
    );
    let took = wait_until(
        "server sees the client leave",
        Duration::from_secs(5),
        || server.observed.client_went_away.load(Ordering::SeqCst),
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[test]
fn dropping_a_waiting_scan_closes_the_connection() {
    let server = FakeServer::start(|_| Reply::Hang);
    let ex = executor();
    let mut scan = ex.scan(
        (0..3).map(|s| query(s, &server.url)).collect(),
        ScanOptions::new(1),
    );
    wait_until("requests arrive", Duration::from_secs(5), || {
        server.requests().len() == 3
    });
    assert!(matches!(
        scan.next(Duration::from_millis(20)),
        ScanPoll::Pending
    ));
    drop(scan);
    wait_until(
        "server sees the client leave",
        Duration::from_secs(2),
        || server.observed.client_went_away.load(Ordering::SeqCst),
    );
}

#[test]
fn a_failing_shard_fails_the_scan_and_names_itself() {
    let good = FakeServer::start(|_| Reply::Stream {
        delay: Duration::ZERO,
        lines: cursor_lines(u64::MAX),
    });
    let bad = FakeServer::start(|_| Reply::status(500, "node exploded"));
    let ex = executor();
    let mut scan = ex.scan(
        vec![query(0, &good.url), query(3, &bad.url)],
        ScanOptions::new(1),
    );
    let err = collect(&mut scan, Duration::from_secs(10)).expect_err("fails");
    let want = format!(
        "node node-3 ({}), shard 3: HTTP 500: node exploded",
        bad.url
    );
    assert_eq!(err, want);
    assert!(matches!(scan.next(POLL), ScanPoll::Done));
    // The healthy shard's request was aborted too.
    wait_until(
        "the other shard is cancelled",
        Duration::from_secs(5),
        || good.observed.client_went_away.load(Ordering::SeqCst),
    );
}

#[test]
fn garbage_from_a_shard_is_an_error() {
    let header = "{\"baton\":null,\"base_url\":null}\n";
    let begin1 = "{\"type\":\"step_begin\",\"step\":0,\"cols\":[{\"name\":\"id\"}]}\n";
    let row = "{\"type\":\"row\",\"row\":[{\"type\":\"integer\",\"value\":\"1\"}]}\n";
    let end = "{\"type\":\"step_end\",\"affected_row_count\":0}\n";
    let cases: Vec<(String, &str)> = vec![
        // row narrower than asked
        (
            format!("{header}{begin1}{{\"type\":\"row\",\"row\":[]}}\n{end}"),
            "row has 0 columns, expected 1",
        ),
        // row wider than asked
        (
            format!(
                "{header}{begin1}{{\"type\":\"row\",\"row\":[{{\"type\":\"null\"}},{{\"type\":\"null\"}}]}}\n{end}"
            ),
            "row has 2 columns, expected 1",
        ),
        // result shape differs from the request
        (
            format!("{header}{{\"type\":\"step_begin\",\"step\":0,\"cols\":[]}}\n{end}"),
            "result has 0 columns, expected 1",
        ),
        // truncated after a row
        (format!("{header}{begin1}{row}"), "truncated inside step 0"),
        // truncated mid-line
        (format!("{header}{begin1}{{\"type\":\"ro"), "malformed cursor entry"),
        // no step at all
        (header.to_string(), "without completing its step"),
        // SQL error from the node
        (
            format!(
                "{header}{{\"type\":\"step_error\",\"step\":0,\"error\":{{\"message\":\"no such table: t\",\"code\":\"SQLITE_ERROR\"}}}}\n"
            ),
            "no such table: t (SQLITE_ERROR)",
        ),
        // malformed JSON
        (format!("{header}{begin1}{{{{{{\n"), "malformed cursor entry"),
    ];
    let ex = executor();
    for (body, want) in cases {
        let text = body.clone();
        let server = FakeServer::start(move |_| cursor_text(&text));
        let mut scan = ex.scan(vec![query(5, &server.url)], ScanOptions::new(1));
        let err = collect(&mut scan, Duration::from_secs(10)).expect_err(&body);
        assert!(err.contains(want), "{body:?}: {err}");
        assert!(err.contains(", shard 5: "), "{err}");
    }
}

#[test]
fn sql_error_codes_reach_the_caller() {
    let server = FakeServer::start(|_| {
        cursor_text(
            "{\"baton\":null,\"base_url\":null}\n{\"type\":\"error\",\"error\":{\"message\":\"UNIQUE constraint failed\",\"code\":\"SQLITE_CONSTRAINT_PRIMARYKEY\"}}\n",
        )
    });
    let ex = executor();
    let mut scan = ex.scan(vec![query(1, &server.url)], ScanOptions::new(1));
    let end = Instant::now() + Duration::from_secs(10);
    let err = loop {
        assert!(Instant::now() < end);
        match scan.next(POLL) {
            ScanPoll::Failed(e) => break e,
            ScanPoll::Pending => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(err.sqlite_code(), Some("SQLITE_CONSTRAINT_PRIMARYKEY"));
    assert_eq!(err.shard_id, Some(1));
    assert!(matches!(err.error, NodeError::Sql { .. }));
}

#[test]
fn every_shards_rows_arrive_in_chunks() {
    let server = FakeServer::start(|_| Reply::Stream {
        delay: Duration::ZERO,
        lines: cursor_lines(600),
    });
    let ex = executor();
    let mut scan = ex.scan(
        (0..2).map(|s| query(s, &server.url)).collect(),
        ScanOptions::new(1),
    );
    let mut n = 0;
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < end);
        match scan.next(POLL) {
            ScanPoll::Rows(chunk) => {
                assert!(chunk.rows.iter().all(|row| row.len() == 1));
                n += chunk.rows.len();
            }
            ScanPoll::Pending => {}
            ScanPoll::Done => break,
            ScanPoll::Failed(e) => panic!("{e}"),
        }
    }
    assert_eq!(n, 1200);
    assert_eq!(scan.stats().iter().map(|s| s.rows).sum::<u64>(), 1200);
}

#[test]
fn empty_scan_is_done_at_once() {
    let ex = executor();
    let mut scan = ex.scan(Vec::new(), ScanOptions::new(1));
    assert!(matches!(scan.next(Duration::ZERO), ScanPoll::Done));
    let mut exec = ex.execute(Vec::new());
    assert_eq!(exec.wait(Duration::ZERO).map(|v| v.len()), Some(0));
}

fn request(shard: u32, url: &str) -> ShardRequest {
    ShardRequest {
        shard_id: Some(shard),
        endpoint: NodeEndpoint {
            node_id: format!("node-{shard}"),
            url: url.to_string(),
            token: None,
        },
        body: PipelineReqBody {
            baton: None,
            requests: vec![StreamRequest::Close],
        },
    }
}

fn wait_all(
    exec: &mut ExecHandle,
    limit: Duration,
) -> Vec<Result<PipelineRespBody, conductor_core::ShardError>> {
    let end = Instant::now() + limit;
    loop {
        assert!(Instant::now() < end, "execute did not finish");
        if let Some(r) = exec.wait(POLL) {
            return r;
        }
    }
}

#[test]
fn execute_returns_results_in_request_order() {
    let ok = FakeServer::start(|_| {
        Reply::ok_json(json!({"baton": null, "base_url": null,
                              "results": [{"type": "ok", "response": {"type": "close"}}]}))
    });
    let broken = FakeServer::start(|_| Reply::status(200, "{\"results\": nope"));
    let slow = FakeServer::start(|_| Reply::Full {
        status: 200,
        body: json!({"baton": null, "base_url": null,
                     "results": [{"type": "ok", "response": {"type": "close"}}]})
        .to_string()
        .into_bytes(),
        delay: Duration::from_millis(300),
    });
    let ex = executor();
    let mut exec = ex.execute(vec![
        request(0, &slow.url),
        request(1, &broken.url),
        request(2, &ok.url),
        request(3, &support::dead_url()),
    ]);
    assert!(
        exec.wait(Duration::from_millis(10)).is_none(),
        "still running"
    );
    let results = wait_all(&mut exec, Duration::from_secs(10));
    assert_eq!(results.len(), 4);
    assert!(results[0].is_ok());
    let e1 = results[1].as_ref().expect_err("garbage");
    assert!(matches!(e1.error, NodeError::Protocol { .. }), "{e1}");
    assert!(results[2].is_ok());
    let e3 = results[3].as_ref().expect_err("refused");
    assert!(matches!(e3.error, NodeError::Connect { .. }), "{e3}");
    assert!(
        e3.to_string().starts_with("node node-3 (http://127.0.0.1:"),
        "{e3}"
    );
    assert_eq!(exec.wait(Duration::ZERO).map(|v| v.len()), Some(0));
}

#[test]
fn dropping_execute_aborts_requests() {
    let server = FakeServer::start(|_| Reply::Hang);
    let ex = executor();
    let exec = ex.execute((0..2).map(|s| request(s, &server.url)).collect());
    wait_until("requests arrive", Duration::from_secs(5), || {
        server.requests().len() == 2
    });
    drop(exec);
    wait_until(
        "server sees the client leave",
        Duration::from_secs(2),
        || server.observed.client_went_away.load(Ordering::SeqCst),
    );
}

#[test]
fn transient_read_failures_are_retried() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let c = calls.clone();
    let server = FakeServer::start(move |_| {
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::status(503, "warming up")
        } else {
            Reply::Stream {
                delay: Duration::ZERO,
                lines: cursor_lines(10),
            }
        }
    });
    let ex = executor();
    let mut scan = ex.scan(vec![query(0, &server.url)], ScanOptions::new(1));
    assert_eq!(
        collect(&mut scan, Duration::from_secs(10))
            .expect("retried")
            .len(),
        10
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // A persistent failure gives up after the configured attempts...
    let server = FakeServer::start(|_| Reply::status(503, "down"));
    let mut scan = ex.scan(vec![query(0, &server.url)], ScanOptions::new(1));
    let err = collect(&mut scan, Duration::from_secs(10)).expect_err("gives up");
    assert!(err.contains("HTTP 503"), "{err}");
    assert_eq!(server.requests().len(), 3);

    // ...and a non-transient one is not retried at all.
    let server = FakeServer::start(|_| Reply::status(400, "bad request"));
    let mut scan = ex.scan(vec![query(0, &server.url)], ScanOptions::new(1));
    collect(&mut scan, Duration::from_secs(10)).expect_err("fails");
    assert_eq!(server.requests().len(), 1);
}

#[test]
fn writes_retry_only_when_never_delivered() {
    // Nothing listens yet: the first attempt cannot connect; the node
    // comes up before the retry.
    let url = support::dead_url();
    let addr = url.trim_start_matches("http://").to_string();
    let ex = Executor::new(ExecutorConfig {
        retry_backoff: Duration::from_millis(300),
        client: ClientConfig {
            // This scripted server speaks JSON only.
            encoding: WireEncoding::Json,
            ..ClientConfig::default()
        },
        ..ExecutorConfig::default()
    });
    let mut exec = ex.execute(vec![request(0, &url)]);
    std::thread::sleep(Duration::from_millis(100));
    let server = FakeServer::start_at(&addr, |_| {
        Reply::ok_json(json!({"baton": null, "base_url": null,
                              "results": [{"type": "ok", "response": {"type": "close"}}]}))
    });
    let results = wait_all(&mut exec, Duration::from_secs(10));
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert_eq!(server.requests().len(), 1);

    // A delivered request that failed (HTTP 503) is not sent again.
    let server = FakeServer::start(|_| Reply::status(503, "busy"));
    let mut exec = ex.execute(vec![request(0, &server.url)]);
    assert!(wait_all(&mut exec, Duration::from_secs(10))[0].is_err());
    assert_eq!(server.requests().len(), 1);
}

/// A pipeline answer with one row of one integer column.
fn lookup_answer(v: i64) -> Reply {
    Reply::ok_json(json!({"baton": null, "base_url": null, "results": [
        {"type": "ok", "response": {"type": "execute", "result": {
            "cols": [{"name": "x"}],
            "rows": [[{"type": "integer", "value": v.to_string()}]],
            "affected_row_count": 0, "last_insert_rowid": null}}},
        {"type": "ok", "response": {"type": "close"}}]}))
}

fn lookup_options() -> ScanOptions {
    let mut o = ScanOptions::new(1);
    o.bounded = true;
    o
}

/// A lookup of one shard runs on the caller's thread, is retried like any
/// read, and its rows arrive as with a spawned request.
#[test]
fn one_shard_lookups_run_on_the_callers_thread_and_are_retried() {
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let c = calls.clone();
    let server = FakeServer::start(move |_| {
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::status(503, "warming up")
        } else {
            lookup_answer(42)
        }
    });
    let ex = executor();
    ex.start().expect("start");
    let mut scan = ex.scan(vec![query(0, &server.url)], lookup_options());
    assert!(scan.runs_on_callers_thread());
    let rows = collect(&mut scan, Duration::from_secs(10)).expect("retried");
    assert_eq!(rows, vec![(0, vec![Value::Integer(42)])]);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(scan.stats()[0].rows, 1);
    // A scan of several shards, or of one unbounded, uses the I/O threads.
    let two = ex.scan(
        vec![query(0, &server.url), query(1, &server.url)],
        lookup_options(),
    );
    assert!(!two.runs_on_callers_thread());
    assert!(!ex
        .scan(vec![query(0, &server.url)], ScanOptions::new(1))
        .runs_on_callers_thread());

    // A failure is the shard's, named.
    let bad = FakeServer::start(|_| Reply::status(400, "bad request"));
    let mut scan = ex.scan(vec![query(5, &bad.url)], lookup_options());
    let err = collect(&mut scan, Duration::from_secs(10)).expect_err("fails");
    assert!(err.contains("shard 5") && err.contains("HTTP 400"), "{err}");
}

/// A lookup waiting on a silent node answers every wait at once (the
/// caller can check for cancel), and dropping it closes the connection.
#[test]
fn a_waiting_one_shard_lookup_is_interruptible_and_dropping_it_closes_the_connection() {
    let server = FakeServer::start(|_| Reply::Hang);
    let ex = executor();
    let mut scan = ex.scan(vec![query(0, &server.url)], lookup_options());
    for _ in 0..5 {
        let t = Instant::now();
        assert!(matches!(
            scan.next(Duration::from_millis(20)),
            ScanPoll::Pending
        ));
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
    }
    wait_until("the request arrives", Duration::from_secs(5), || {
        server.requests().len() == 1
    });
    drop(scan);
    // Nothing drives the dropped request any more: its socket is closed.
    wait_until(
        "server sees the client leave",
        Duration::from_secs(2),
        || server.observed.client_went_away.load(Ordering::SeqCst),
    );
}

/// With `direct_lookups` off, a lookup runs on the I/O threads, with the
/// same result.
#[test]
fn lookups_on_the_io_threads_give_the_same_rows() {
    let server = FakeServer::start(|_| lookup_answer(-1));
    let ex = Executor::new(ExecutorConfig {
        direct_lookups: false,
        ..executor_config()
    });
    let mut scan = ex.scan(vec![query(3, &server.url)], lookup_options());
    assert!(!scan.runs_on_callers_thread());
    let rows = collect(&mut scan, Duration::from_secs(10)).expect("rows");
    assert_eq!(rows, vec![(3, vec![Value::Integer(-1)])]);
}
