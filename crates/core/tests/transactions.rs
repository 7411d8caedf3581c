//! Snapshots and long-lived streams against real in-process conductor-nodes:
//! a scan reading one snapshot per node, and the keeper that keeps a remote
//! transaction's stream alive past the node's idle expiry.

// ShardError is returned by value on purpose (it is what the FFI side reports).
#![allow(clippy::result_large_err)]

use conductor_core::client::{first_error, NodeEndpoint};
use conductor_core::executor::{
    ExecHandle, Executor, ExecutorConfig, ScanHandle, ScanOptions, ScanPoll, ShardQuery,
    ShardRequest,
};
use conductor_core::keepalive::{Lost, StreamKeeper};
use conductor_core::ShardError;
use conductor_hrana::{
    PipelineReqBody, PipelineRespBody, Stmt, StreamRequest, StreamResponse, StreamResult, Value,
};
use conductor_node::{spawn, Config, RunningNode};
use std::sync::Arc;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(20);

fn node(configure: impl FnOnce(&mut Config)) -> RunningNode {
    let mut c = Config::temp();
    c.threads = 1;
    c.log_level = "error".into();
    configure(&mut c);
    spawn(c).expect("start node")
}

fn endpoint(i: usize, n: &RunningNode) -> NodeEndpoint {
    NodeEndpoint {
        node_id: format!("node-{i}"),
        url: n.url(),
        token: None,
    }
}

fn pipeline(ep: &NodeEndpoint, baton: Option<String>, stmts: &[&str], close: bool) -> ShardRequest {
    ShardRequest {
        shard_id: None,
        endpoint: ep.clone(),
        body: PipelineReqBody {
            baton,
            requests: stmts
                .iter()
                .map(|s| StreamRequest::Execute {
                    stmt: Stmt::new(*s, vec![]),
                })
                .chain(close.then_some(StreamRequest::Close))
                .collect(),
        },
    }
}

fn run(ex: &Executor, reqs: Vec<ShardRequest>) -> Vec<Result<PipelineRespBody, ShardError>> {
    let mut h: ExecHandle = ex.execute(reqs);
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < end, "execute timed out");
        if let Some(r) = h.wait(POLL) {
            return r;
        }
    }
}

fn run_one(ex: &Executor, req: ShardRequest) -> PipelineRespBody {
    let resp = run(ex, vec![req]).pop().unwrap().expect("request succeeds");
    assert!(first_error(&resp).is_none(), "{:?}", first_error(&resp));
    resp
}

fn scan_all(scan: &mut ScanHandle) -> Result<Vec<(u32, Vec<Value>)>, ShardError> {
    let end = Instant::now() + Duration::from_secs(30);
    let mut rows = Vec::new();
    loop {
        assert!(Instant::now() < end, "scan timed out");
        match scan.next(POLL) {
            ScanPoll::Rows(c) => rows.extend(c.rows.into_iter().map(|r| (c.shard_id, r))),
            ScanPoll::Pending => {}
            ScanPoll::Done => return Ok(rows),
            ScanPoll::Failed(e) => return Err(e),
        }
    }
}

fn query(shard_id: u32, ep: &NodeEndpoint, table: &str) -> ShardQuery {
    ShardQuery {
        shard_id,
        endpoint: ep.clone(),
        stmt: Stmt::new(format!("SELECT v FROM {table}"), vec![]),
    }
}

#[test]
fn one_snapshot_per_node_reads_every_shard_of_a_node() {
    let (a, b) = (node(|_| {}), node(|_| {}));
    let (ea, eb) = (endpoint(0, &a), endpoint(1, &b));
    let ex = Executor::new(ExecutorConfig::default());
    run_one(
        &ex,
        pipeline(
            &ea,
            None,
            &[
                "CREATE TABLE s0 (v INTEGER)",
                "CREATE TABLE s1 (v INTEGER)",
                "CREATE TABLE s2 (v INTEGER)",
                "INSERT INTO s0 VALUES (1), (2)",
                "INSERT INTO s2 VALUES (3)",
            ],
            true,
        ),
    );
    run_one(
        &ex,
        pipeline(
            &eb,
            None,
            &["CREATE TABLE s3 (v INTEGER)", "INSERT INTO s3 VALUES (4)"],
            true,
        ),
    );
    let mut opts = ScanOptions::new(1);
    opts.one_snapshot_per_node = true;
    opts.rows_per_chunk = 1;
    let queries = vec![
        query(0, &ea, "s0"),
        query(3, &eb, "s3"),
        query(1, &ea, "s1"),
        query(2, &ea, "s2"),
    ];
    let mut scan = ex.scan(queries.clone(), opts.clone());
    let mut rows = scan_all(&mut scan).expect("scan");
    rows.sort_by_key(|(s, r)| (*s, format!("{r:?}")));
    let got: Vec<(u32, i64)> = rows
        .iter()
        .map(|(s, r)| match r[0] {
            Value::Integer(i) => (*s, i),
            ref other => panic!("not an integer: {other:?}"),
        })
        .collect();
    assert_eq!(got, vec![(0, 1), (0, 2), (2, 3), (3, 4)]);
    let stats: Vec<(u32, u64, bool)> = scan
        .stats()
        .iter()
        .map(|s| (s.shard_id, s.rows, s.elapsed.is_some()))
        .collect();
    assert_eq!(
        stats,
        vec![(0, 2, true), (3, 1, true), (1, 0, true), (2, 1, true)]
    );

    // A failing shard inside the node's read transaction is reported alone
    // (under skip); the node's other shards still come from its snapshot.
    let mut failing = queries.clone();
    failing[2] = query(1, &ea, "missing");
    opts.skip_failed = true;
    let mut scan = ex.scan(failing, opts);
    let mut failed = Vec::new();
    let mut rows = 0;
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < end);
        match scan.next(POLL) {
            ScanPoll::Failed(e) => failed.push((e.shard_id, e.node_id.clone())),
            ScanPoll::Rows(c) => rows += c.rows.len(),
            ScanPoll::Done => break,
            ScanPoll::Pending => {}
        }
    }
    assert_eq!(failed, vec![(Some(1), "node-0".to_string())]);
    assert_eq!(rows, 4);
}

/// Open a write transaction on a new stream; its baton.
fn begin_immediate(ex: &Executor, ep: &NodeEndpoint) -> String {
    run_one(ex, pipeline(ep, None, &["BEGIN IMMEDIATE"], false))
        .baton
        .expect("a baton")
}

#[test]
fn a_kept_stream_outlives_the_node_idle_expiry() {
    let n = node(|c| c.stream_idle_timeout_ms = 400);
    let ep = endpoint(0, &n);
    let ex = Executor::new(ExecutorConfig::default());
    run_one(
        &ex,
        pipeline(&ep, None, &["CREATE TABLE t (v INTEGER)"], true),
    );

    // Unkept, the stream expires.
    let baton = begin_immediate(&ex, &ep);
    std::thread::sleep(Duration::from_millis(1200));
    let r = run(&ex, vec![pipeline(&ep, Some(baton), &["COMMIT"], true)]);
    assert!(r[0].is_err(), "an idle stream expires: {r:?}");

    // Kept, it lives 6x the expiry and commits.
    let baton = begin_immediate(&ex, &ep);
    let keeper = Arc::new(StreamKeeper::new(baton, None));
    ex.keep_alive(ep.clone(), keeper.clone(), Duration::from_millis(150));
    std::thread::sleep(Duration::from_millis(1200));
    let baton = keeper.checkout().expect("still alive");
    let resp = run_one(
        &ex,
        pipeline(&ep, Some(baton), &["INSERT INTO t VALUES (1)"], false),
    );
    keeper.checkin(resp.baton, None);
    std::thread::sleep(Duration::from_millis(1200));
    let baton = keeper.finish().expect("still alive");
    run_one(&ex, pipeline(&ep, Some(baton), &["COMMIT"], true));
    let resp = run_one(&ex, pipeline(&ep, None, &["SELECT count(*) FROM t"], true));
    match &resp.results[0] {
        StreamResult::Ok {
            response: StreamResponse::Execute { result },
        } => assert_eq!(result.rows, vec![vec![Value::Integer(1)]]),
        other => panic!("{other:?}"),
    }
}

#[test]
fn past_the_idle_limit_the_keeper_rolls_back_and_frees_the_node() {
    let n = node(|c| {
        c.stream_idle_timeout_ms = 60_000;
        c.busy_timeout_ms = 100;
    });
    let ep = endpoint(0, &n);
    let ex = Executor::new(ExecutorConfig::default());
    let baton = begin_immediate(&ex, &ep);
    let keeper = Arc::new(StreamKeeper::new(baton, Some(Duration::from_millis(300))));
    ex.keep_alive(ep.clone(), keeper.clone(), Duration::from_millis(100));
    // While it holds the write lock, another writer is refused at once.
    let other = run(&ex, vec![pipeline(&ep, None, &["BEGIN IMMEDIATE"], true)]);
    assert!(
        first_error(other[0].as_ref().unwrap()).is_some(),
        "the node is locked"
    );
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(keeper.lost(), Some(Lost::Idle(Duration::from_millis(300))));
    // Rolled back by the keeper long before the node's 60 s expiry.
    run_one(
        &ex,
        pipeline(&ep, None, &["BEGIN IMMEDIATE", "ROLLBACK"], true),
    );
    assert_eq!(keeper.finish(), Err(Lost::Idle(Duration::from_millis(300))));
}
