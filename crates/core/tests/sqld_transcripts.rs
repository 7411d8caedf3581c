//! Recorded transcripts of a real libSQL server (sqld): every request shape
//! conductor's client sends — pipelines of execute, batch and close,
//! transactions carried by batons across requests, the empty request that
//! keeps a stream alive, cursors of one statement and of a node's snapshot,
//! SQL errors and constraint violations, a stale baton, an expired stream —
//! in both encodings of the protocol, with sqld's exact answers, committed
//! under `tests/fixtures/sqld-<version>/` (its README says how they were made).
//!
//! The replay serves each recorded answer byte for byte to the real client
//! ([`HranaClient`], and the [`Executor`] for scans and lookups), checks
//! that the client sent byte for byte the request that was recorded, and
//! asserts what the decoded answers say. The same scenario, with the same
//! assertions, runs while recording against a live sqld:
//!
//! ```text
//! SQLD=/path/to/sqld cargo test -p conductor-core --test sqld_transcripts \
//!     -- --ignored record_sqld_transcripts
//! ```

mod support;

use base64::Engine as _;
use conductor_core::client::{
    first_error, one_request_transaction, ClientConfig, HranaClient, NodeEndpoint, NodeError,
    WireEncoding,
};
use conductor_core::executor::{Executor, ExecutorConfig, ScanOptions, ScanPoll, ShardQuery};
use conductor_hrana::protobuf as pb;
use conductor_hrana::{
    Batch, BatchCond, BatchResult, BatchStep, CursorEntry, CursorReqBody, Error, PipelineReqBody,
    PipelineRespBody, Stmt, StmtResult, StreamRequest, StreamResponse, StreamResult, Value,
};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{FakeServer, Reply};

/// The sqld release the committed transcripts were recorded from.
const SQLD_VERSION: &str = "0.24.33";

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("sqld-{SQLD_VERSION}"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Enc {
    Json,
    Protobuf,
}

impl Enc {
    fn name(self) -> &'static str {
        match self {
            Enc::Json => "json",
            Enc::Protobuf => "protobuf",
        }
    }

    fn wire(self) -> WireEncoding {
        match self {
            Enc::Json => WireEncoding::Json,
            Enc::Protobuf => WireEncoding::Protobuf,
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Enc::Json => "/v3",
            Enc::Protobuf => "/v3-protobuf",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Enc::Json => "application/json",
            Enc::Protobuf => "application/x-protobuf",
        }
    }

    /// Bodies are kept as text in a JSON transcript, as base64 in a
    /// Protobuf one.
    fn store(self, bytes: &[u8]) -> String {
        match self {
            Enc::Json => String::from_utf8(bytes.to_vec()).expect("a JSON body is UTF-8"),
            Enc::Protobuf => base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }

    fn load(self, stored: &str) -> Vec<u8> {
        match self {
            Enc::Json => stored.as_bytes().to_vec(),
            Enc::Protobuf => base64::engine::general_purpose::STANDARD
                .decode(stored)
                .expect("base64 body"),
        }
    }

    fn pipeline_body(self, body: &PipelineReqBody) -> Vec<u8> {
        match self {
            Enc::Json => serde_json::to_vec(body).unwrap(),
            Enc::Protobuf => pb::PipelineReqBody::from(body.clone()).encode_to_vec(),
        }
    }

    fn cursor_body(self, body: &CursorReqBody) -> Vec<u8> {
        match self {
            Enc::Json => serde_json::to_vec(body).unwrap(),
            Enc::Protobuf => pb::CursorReqBody::from(body.clone()).encode_to_vec(),
        }
    }
}

/// One request and sqld's answer to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Exchange {
    name: String,
    path: String,
    request: String,
    status: u16,
    content_type: String,
    response: String,
}

/// What a transcript file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Transcript {
    /// sqld's `/version` answer.
    server: String,
    encoding: String,
    /// `text` (JSON bodies as they are) or `base64` (Protobuf bodies).
    bodies: String,
    exchanges: Vec<Exchange>,
}

fn transcript_path(enc: Enc) -> PathBuf {
    fixture_dir().join(format!("{}.json", enc.name()))
}

fn load(enc: Enc) -> Transcript {
    let path = transcript_path(enc);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (record it, see the README)", path.display()));
    let t: Transcript = serde_json::from_str(&text).expect("transcript");
    assert_eq!(t.encoding, enc.name());
    assert!(t.server.contains(SQLD_VERSION), "{}", t.server);
    t
}

/// Where answers come from: the transcript, or a live sqld being recorded.
enum Source {
    Replay(VecDeque<Exchange>),
    Record {
        url: String,
        http: reqwest::Client,
        recorded: Vec<Exchange>,
    },
}

/// What the replaying server expects next, and what did not match.
#[derive(Default)]
struct Script {
    pending: VecDeque<Exchange>,
    mismatches: Vec<String>,
}

/// The fake node that serves recorded answers in order, and checks that
/// each request is byte for byte the one recorded.
fn replay_server(enc: Enc, script: Arc<Mutex<Script>>) -> FakeServer {
    FakeServer::start(move |req| {
        let mut s = script.lock().unwrap();
        let Some(x) = s.pending.pop_front() else {
            s.mismatches
                .push(format!("unexpected request {} {}", req.method, req.path));
            return Reply::status(599, "no recorded answer");
        };
        if req.path != x.path {
            s.mismatches.push(format!(
                "{}: path {} != recorded {}",
                x.name, req.path, x.path
            ));
        }
        if req.body != enc.load(&x.request) {
            s.mismatches.push(format!(
                "{}: the client sent\n  {:?}\nnot the recorded\n  {:?}",
                x.name,
                String::from_utf8_lossy(&req.body),
                String::from_utf8_lossy(&enc.load(&x.request))
            ));
        }
        if req.header("content-type") != Some(enc.content_type()) {
            s.mismatches.push(format!(
                "{}: content-type {:?}",
                x.name,
                req.header("content-type")
            ));
        }
        Reply::Raw {
            status: x.status,
            content_type: x.content_type.clone(),
            body: enc.load(&x.response),
        }
    })
}

fn client_config(enc: Enc) -> ClientConfig {
    ClientConfig {
        request_timeout: Duration::from_secs(20),
        idle_timeout: Duration::from_secs(20),
        encoding: enc.wire(),
        ..ClientConfig::default()
    }
}

/// The client's side of a transcript.
struct Peer {
    enc: Enc,
    source: Source,
    script: Arc<Mutex<Script>>,
    server: FakeServer,
    client: HranaClient,
    /// Decoded answers, normalized (see [`normalize`]), for comparing the
    /// encodings.
    log: Vec<(String, String)>,
}

impl Peer {
    fn replay(enc: Enc) -> Peer {
        let t = load(enc);
        Peer::new(enc, Source::Replay(t.exchanges.into()))
    }

    fn record(enc: Enc, url: String) -> Peer {
        Peer::new(
            enc,
            Source::Record {
                url,
                http: http_client(),
                recorded: Vec::new(),
            },
        )
    }

    fn new(enc: Enc, source: Source) -> Peer {
        let script = Arc::new(Mutex::new(Script::default()));
        let server = replay_server(enc, script.clone());
        Peer {
            enc,
            source,
            script,
            server,
            client: HranaClient::new(client_config(enc)).unwrap(),
            log: Vec::new(),
        }
    }

    fn endpoint(&self) -> NodeEndpoint {
        NodeEndpoint {
            node_id: "sqld-0".into(),
            url: self.server.url.clone(),
            token: None,
        }
    }

    /// Queue the recorded answer to `body` on `path` (recording it first).
    async fn expect(&mut self, name: &str, path: &str, body: Vec<u8>) {
        let enc = self.enc;
        let x = match &mut self.source {
            Source::Replay(left) => {
                let x = left
                    .pop_front()
                    .unwrap_or_else(|| panic!("{name}: the transcript has no more exchanges"));
                assert_eq!(
                    x.name, name,
                    "the transcript is of another scenario: re-record"
                );
                x
            }
            Source::Record {
                url,
                http,
                recorded,
            } => {
                let resp = http
                    .post(format!("{url}{path}"))
                    .header("content-type", enc.content_type())
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                let status = resp.status().as_u16();
                let content_type = resp
                    .headers()
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                let bytes = resp.bytes().await.unwrap();
                let x = Exchange {
                    name: name.into(),
                    path: path.into(),
                    request: enc.store(&body),
                    status,
                    content_type,
                    response: enc.store(&bytes),
                };
                recorded.push(x.clone());
                x
            }
        };
        self.script.lock().unwrap().pending.push_back(x);
    }

    async fn pipeline(
        &mut self,
        name: &str,
        body: PipelineReqBody,
    ) -> Result<PipelineRespBody, NodeError> {
        let path = format!("{}/pipeline", self.enc.prefix());
        self.expect(name, &path, self.enc.pipeline_body(&body))
            .await;
        let r = self.client.pipeline(&self.endpoint(), &body).await;
        self.log.push((name.into(), normalize_pipeline(&r)));
        self.check();
        r
    }

    /// A cursor's baton and entries (up to the first failure).
    async fn cursor(
        &mut self,
        name: &str,
        body: CursorReqBody,
    ) -> Result<(Option<String>, Vec<CursorEntry>), NodeError> {
        let path = format!("{}/cursor", self.enc.prefix());
        self.expect(name, &path, self.enc.cursor_body(&body)).await;
        let r = async {
            let mut stream = self.client.cursor(&self.endpoint(), &body).await?;
            let mut entries = Vec::new();
            while let Some(e) = stream.next().await? {
                entries.push(e);
            }
            Ok((stream.baton().map(str::to_string), entries))
        }
        .await;
        self.log.push((name.into(), normalize_cursor(&r)));
        self.check();
        r
    }

    /// Let the node's stream idle (only a live sqld needs the wait).
    async fn idle(&self, d: Duration) {
        if matches!(self.source, Source::Record { .. }) {
            tokio::time::sleep(d).await;
        }
    }

    fn check(&self) {
        let s = self.script.lock().unwrap();
        assert!(s.mismatches.is_empty(), "{}", s.mismatches.join("\n"));
        assert!(s.pending.is_empty(), "not requested: {:?}", s.pending);
    }

    fn finish(self) -> (Vec<(String, String)>, Option<Vec<Exchange>>) {
        self.check();
        match self.source {
            Source::Replay(left) => {
                assert!(left.is_empty(), "exchanges never replayed: {left:?}");
                (self.log, None)
            }
            Source::Record { recorded, .. } => (self.log, Some(recorded)),
        }
    }
}

/// The decoded answer without what differs from run to run (batons, which
/// are random, and timings), and with statistics of 0 as absent: sqld's
/// Protobuf answers leave a count of 0 out, as proto3 does with every
/// scalar at its default value.
fn normalize_pipeline(r: &Result<PipelineRespBody, NodeError>) -> String {
    fn normalize(s: &mut StmtResult) {
        s.query_duration_ms = None;
        s.rows_read = s.rows_read.filter(|&n| n > 0);
        s.rows_written = s.rows_written.filter(|&n| n > 0);
    }
    match r {
        Ok(resp) => {
            let mut resp = resp.clone();
            resp.baton = resp.baton.map(|_| "<baton>".into());
            for r in &mut resp.results {
                match r {
                    StreamResult::Ok {
                        response: StreamResponse::Execute { result },
                    } => normalize(result),
                    StreamResult::Ok {
                        response: StreamResponse::Batch { result },
                    } => {
                        result.step_results.iter_mut().flatten().for_each(normalize);
                    }
                    _ => {}
                }
            }
            format!("{resp:?}")
        }
        Err(e) => format!("error: {}", e.detail()),
    }
}

fn normalize_cursor(r: &Result<(Option<String>, Vec<CursorEntry>), NodeError>) -> String {
    match r {
        Ok((baton, entries)) => format!("baton: {}, {entries:?}", baton.is_some()),
        Err(e) => format!("error: {}", e.detail()),
    }
}

// ---- the requests, as conductor builds them ---------------------------------

fn int(i: i64) -> Value {
    Value::Integer(i)
}

fn text(s: &str) -> Value {
    Value::Text(s.into())
}

fn exec_then_close(baton: Option<String>, stmt: Stmt) -> PipelineReqBody {
    PipelineReqBody {
        baton,
        requests: vec![StreamRequest::Execute { stmt }, StreamRequest::Close],
    }
}

/// Statements on a transaction's stream: each runs if the previous one
/// succeeded; the stream stays open (no close).
fn on_stream(baton: Option<String>, stmts: Vec<Stmt>) -> PipelineReqBody {
    let steps = stmts
        .into_iter()
        .enumerate()
        .map(|(i, stmt)| BatchStep {
            stmt,
            condition: (i > 0).then(|| BatchCond::Ok { step: i as u32 - 1 }),
        })
        .collect();
    PipelineReqBody {
        baton,
        requests: vec![StreamRequest::Batch {
            batch: Batch { steps },
        }],
    }
}

fn only(baton: Option<String>, requests: Vec<StreamRequest>) -> PipelineReqBody {
    PipelineReqBody { baton, requests }
}

/// A cursor of steps without conditions (a scan's shape).
fn cursor_of(stmts: Vec<Stmt>) -> CursorReqBody {
    CursorReqBody {
        baton: None,
        batch: Batch {
            steps: stmts
                .into_iter()
                .map(|stmt| BatchStep {
                    stmt,
                    condition: None,
                })
                .collect(),
        },
    }
}

const CREATE: &str = "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL, \
                      n INTEGER CHECK (n >= 0), f REAL, b BLOB, UNIQUE (v))";
const INSERT_RETURNING: &str =
    "INSERT INTO t (id, v, n, f, b) VALUES (?, ?, ?, ?, ?), (?, ?, ?, ?, ?) RETURNING id, v, n, f, b";
const INSERT: &str = "INSERT INTO t (id, v, n) VALUES (?, ?, ?)";
const LOOKUP: &str = "SELECT id, v, n, f, b FROM t WHERE id = ?";
const SCAN: &str = "SELECT id, v, n, f, b FROM t WHERE id >= ? ORDER BY id";
const SNAPSHOT_LOW: &str = "SELECT id, v FROM t WHERE id < ? ORDER BY id";
const SNAPSHOT_HIGH: &str = "SELECT id, v FROM t WHERE id > ? ORDER BY id";
/// Rows 10..=1009, `n` = id % 7.
const BULK: &str = "INSERT INTO t (id, v, n) WITH RECURSIVE c(x) AS \
                    (SELECT 10 UNION ALL SELECT x + 1 FROM c WHERE x < 1009) \
                    SELECT x, 'r' || x, x % 7 FROM c";
const UNICODE: &str = "héllo \"q\" ✓";

fn row_one() -> Vec<Value> {
    vec![
        int(1),
        text("ada"),
        int(3),
        Value::Float(1.5),
        Value::Blob(vec![0, 1, 2, 255]),
    ]
}

fn row_min() -> Vec<Value> {
    vec![
        int(i64::MIN),
        text(UNICODE),
        Value::Null,
        Value::Float(-0.25),
        Value::Blob(vec![]),
    ]
}

fn bulk_row(i: i64) -> Vec<Value> {
    vec![
        int(i),
        text(&format!("r{i}")),
        int(i % 7),
        Value::Null,
        Value::Null,
    ]
}

// ---- reading answers ---------------------------------------------------------

fn execute_result(resp: &PipelineRespBody, i: usize) -> &StmtResult {
    match &resp.results[i] {
        StreamResult::Ok {
            response: StreamResponse::Execute { result },
        } => result,
        other => panic!("result {i} is not an execute result: {other:?}"),
    }
}

fn batch_result(resp: &PipelineRespBody, i: usize) -> &BatchResult {
    match &resp.results[i] {
        StreamResult::Ok {
            response: StreamResponse::Batch { result },
        } => result,
        other => panic!("result {i} is not a batch result: {other:?}"),
    }
}

fn request_error(resp: &PipelineRespBody, i: usize) -> &Error {
    match &resp.results[i] {
        StreamResult::Error { error } => error,
        other => panic!("result {i} is not an error: {other:?}"),
    }
}

fn is_close(resp: &PipelineRespBody, i: usize) -> bool {
    matches!(
        resp.results[i],
        StreamResult::Ok {
            response: StreamResponse::Close
        }
    )
}

/// sqld reports a constraint violation with SQLite's primary code; the kind
/// is in the message (which the extension maps to a SQLSTATE).
fn assert_constraint(e: &Error, message: &str) {
    assert_eq!(e.code.as_deref(), Some("SQLITE_CONSTRAINT"), "{e:?}");
    assert!(e.message.contains(message), "{e:?}");
}

/// The rows of each step of a cursor's entries, checking the entries'
/// order (begin, rows, end) and that every row is as wide as its step.
fn steps_of(entries: &[CursorEntry]) -> Vec<Result<Vec<Vec<Value>>, Error>> {
    let mut out = Vec::new();
    let mut open: Option<(u32, usize, Vec<Vec<Value>>)> = None;
    for e in entries {
        match e {
            CursorEntry::StepBegin { step, cols } => {
                assert!(open.is_none(), "{entries:?}");
                assert_eq!(*step as usize, out.len(), "steps in order");
                open = Some((*step, cols.len(), Vec::new()));
            }
            CursorEntry::Row { row } => {
                let (_, width, rows) = open.as_mut().expect("a row inside a step");
                assert_eq!(row.len(), *width);
                rows.push(row.clone());
            }
            CursorEntry::StepEnd { .. } => {
                let (_, _, rows) = open.take().expect("step_end of an open step");
                out.push(Ok(rows));
            }
            CursorEntry::StepError { step, error } => {
                assert!(open.is_none());
                assert_eq!(*step as usize, out.len());
                out.push(Err(error.clone()));
            }
            CursorEntry::Error { error } => panic!("cursor error: {error:?}"),
        }
    }
    assert!(open.is_none(), "a step left open");
    out
}

// ---- the scenario --------------------------------------------------------------

/// Every request shape the client sends, in order, asserting what sqld
/// answered. Runs the same on a live sqld (recording) and on the replay.
async fn scenario(p: &mut Peer) {
    // A node is added: conductor checks it with an empty, closing request.
    let r = p
        .pipeline("health-close", only(None, vec![StreamRequest::Close]))
        .await
        .unwrap();
    assert!(is_close(&r, 0));
    assert_eq!(r.baton, None, "a closed stream has no baton");

    let r = p
        .pipeline(
            "create-table",
            exec_then_close(None, Stmt::new(CREATE, vec![])),
        )
        .await
        .unwrap();
    assert!(first_error(&r).is_none(), "{r:?}");
    assert!(is_close(&r, 1));

    // One statement on one node: execute + close, values of every kind.
    let args: Vec<Value> = row_one().into_iter().chain(row_min()).collect();
    let r = p
        .pipeline(
            "insert-returning",
            exec_then_close(None, Stmt::new(INSERT_RETURNING, args)),
        )
        .await
        .unwrap();
    let res = execute_result(&r, 0);
    assert_eq!(res.rows, vec![row_one(), row_min()]);
    assert_eq!(res.affected_row_count, 2);
    let names: Vec<_> = res.cols.iter().map(|c| c.name.as_deref()).collect();
    assert_eq!(
        names,
        [Some("id"), Some("v"), Some("n"), Some("f"), Some("b")]
    );
    assert_eq!(res.cols[0].decltype.as_deref(), Some("INTEGER"));
    // sqld's statistics are decoded (it counts index entries as writes).
    assert!(res.rows_written.is_some_and(|n| n >= 2), "{res:?}");
    assert!(res.rows_read.is_some(), "{res:?}");
    assert!(res.query_duration_ms.is_some());
    assert!(is_close(&r, 1));

    // Statements on several shards of a node: one request transaction.
    let r = p
        .pipeline(
            "transaction-commit",
            one_request_transaction(vec![
                Stmt::new("UPDATE t SET n = n + 1 WHERE id = ?", vec![int(1)]),
                Stmt::new(BULK, vec![]),
            ]),
        )
        .await
        .unwrap();
    assert!(first_error(&r).is_none(), "{r:?}");
    let b = batch_result(&r, 0);
    assert_eq!(b.step_results.len(), 5);
    assert_eq!(b.step_results[1].as_ref().unwrap().affected_row_count, 1);
    assert_eq!(b.step_results[2].as_ref().unwrap().affected_row_count, 1000);
    assert!(b.step_results[3].is_some(), "COMMIT ran");
    assert!(b.step_results[4].is_none(), "ROLLBACK was skipped");
    assert!(b.step_errors.iter().all(Option::is_none));

    // A constraint violation inside it: COMMIT skipped, ROLLBACK run.
    let r = p
        .pipeline(
            "transaction-unique-violation",
            one_request_transaction(vec![
                Stmt::new(INSERT, vec![int(5), text("gone"), int(0)]),
                Stmt::new(INSERT, vec![int(6), text("ada"), int(0)]),
            ]),
        )
        .await
        .unwrap();
    let b = batch_result(&r, 0);
    assert_eq!(b.step_results.len(), 5);
    assert!(b.step_results[1].is_some());
    assert_constraint(
        b.step_errors[2].as_ref().unwrap(),
        "UNIQUE constraint failed: t.v",
    );
    assert!(b.step_results[3].is_none() && b.step_errors[3].is_none());
    assert!(b.step_results[4].is_some(), "ROLLBACK ran");
    assert_constraint(first_error(&r).unwrap(), "UNIQUE constraint failed");

    // Single statements that fail: constraint violations and SQL errors.
    for (name, args, message) in [
        (
            "insert-primary-key-violation",
            vec![int(1), text("dup"), int(0)],
            "UNIQUE constraint failed: t.id",
        ),
        (
            "insert-not-null-violation",
            vec![int(7), Value::Null, int(0)],
            "NOT NULL constraint failed: t.v",
        ),
        (
            "insert-check-violation",
            vec![int(8), text("neg"), int(-1)],
            "CHECK constraint failed: n >= 0",
        ),
    ] {
        let r = p
            .pipeline(name, exec_then_close(None, Stmt::new(INSERT, args)))
            .await
            .unwrap();
        assert_constraint(request_error(&r, 0), message);
        assert!(is_close(&r, 1), "the close after a failed request runs");
    }
    let r = p
        .pipeline(
            "syntax-error",
            exec_then_close(None, Stmt::new("SELEC 1", vec![])),
        )
        .await
        .unwrap();
    let e = request_error(&r, 0);
    assert_eq!(e.code.as_deref(), Some("SQL_PARSE_ERROR"), "{e:?}");
    assert!(e.message.contains("SELEC"), "{e:?}");
    let r = p
        .pipeline(
            "no-such-table",
            exec_then_close(None, Stmt::new("SELECT * FROM missing", vec![])),
        )
        .await
        .unwrap();
    let e = request_error(&r, 0);
    assert!(e.message.contains("no such table: missing"), "{e:?}");
    assert!(e.code.is_some(), "{e:?}");

    // A lookup of one shard (what the executor sends for a bounded scan).
    let r = p
        .pipeline(
            "lookup",
            exec_then_close(None, Stmt::new(LOOKUP, vec![int(1)])),
        )
        .await
        .unwrap();
    let mut one = row_one();
    one[2] = int(4);
    assert_eq!(execute_result(&r, 0).rows, vec![one.clone()]);

    // A transaction's stream, carried by batons across requests.
    let r = p
        .pipeline(
            "stream-begin",
            on_stream(
                None,
                vec![
                    Stmt::new("BEGIN IMMEDIATE", vec![]),
                    Stmt::new(
                        format!("{INSERT} RETURNING id"),
                        vec![int(2000), text("tx"), int(1)],
                    ),
                ],
            ),
        )
        .await
        .unwrap();
    assert!(first_error(&r).is_none(), "{r:?}");
    assert_eq!(
        batch_result(&r, 0).step_results[1].as_ref().unwrap().rows,
        vec![vec![int(2000)]]
    );
    let baton = r.baton.clone();
    assert!(baton.is_some(), "an open stream has a baton");

    let r = p
        .pipeline(
            "stream-savepoint-violation",
            on_stream(
                baton,
                vec![
                    Stmt::new("SAVEPOINT s2", vec![]),
                    Stmt::new(INSERT, vec![int(2001), text("tx"), int(1)]),
                ],
            ),
        )
        .await
        .unwrap();
    let b = batch_result(&r, 0);
    assert!(b.step_results[0].is_some());
    assert_constraint(
        b.step_errors[1].as_ref().unwrap(),
        "UNIQUE constraint failed: t.v",
    );
    let baton = r.baton.clone();
    assert!(baton.is_some(), "a failed statement keeps the stream");

    // The keep-alive: an empty request renews the baton.
    let r = p
        .pipeline("stream-renew", only(baton, vec![]))
        .await
        .unwrap();
    assert!(r.results.is_empty());
    let baton = r.baton.clone();
    assert!(baton.is_some());

    let r = p
        .pipeline(
            "stream-rollback-to-savepoint",
            on_stream(
                baton,
                vec![
                    Stmt::new("ROLLBACK TO SAVEPOINT s2", vec![]),
                    Stmt::new("RELEASE SAVEPOINT s2", vec![]),
                ],
            ),
        )
        .await
        .unwrap();
    assert!(first_error(&r).is_none(), "{r:?}");
    let r = p
        .pipeline(
            "stream-read",
            on_stream(
                r.baton.clone(),
                vec![Stmt::new(
                    "SELECT count(*) FROM t WHERE v = ?",
                    vec![text("tx")],
                )],
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        batch_result(&r, 0).step_results[0].as_ref().unwrap().rows,
        vec![vec![int(1)]],
        "the stream sees its own insert, not the rolled back one"
    );
    let used = r.baton.clone();
    let r = p
        .pipeline(
            "stream-rollback",
            exec_then_close(used.clone(), Stmt::new("ROLLBACK", vec![])),
        )
        .await
        .unwrap();
    assert!(first_error(&r).is_none() && is_close(&r, 1), "{r:?}");
    assert_eq!(r.baton, None);

    // A baton used twice is refused.
    let e = p
        .pipeline("stream-stale-baton", only(used, vec![]))
        .await
        .expect_err("a used baton");
    assert!(matches!(&e, NodeError::Http { status: 400, .. }), "{e:?}");
    assert!(!e.is_transient());

    // A transaction that commits over two requests.
    let r = p
        .pipeline(
            "stream-write",
            on_stream(
                None,
                vec![
                    Stmt::new("BEGIN IMMEDIATE", vec![]),
                    Stmt::new("DELETE FROM t WHERE 0", vec![]),
                    Stmt::new(
                        "UPDATE t SET v = v || '!' WHERE id = ? RETURNING v",
                        vec![int(1)],
                    ),
                ],
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        batch_result(&r, 0).step_results[2].as_ref().unwrap().rows,
        vec![vec![text("ada!")]]
    );
    let r = p
        .pipeline(
            "stream-commit",
            exec_then_close(r.baton.clone(), Stmt::new("COMMIT", vec![])),
        )
        .await
        .unwrap();
    assert!(first_error(&r).is_none() && is_close(&r, 1), "{r:?}");
    let r = p
        .pipeline(
            "after-transactions",
            exec_then_close(
                None,
                Stmt::new(
                    "SELECT (SELECT count(*) FROM t WHERE v = 'tx'), \
                     (SELECT count(*) FROM t WHERE id = 5), (SELECT v FROM t WHERE id = ?)",
                    vec![int(1)],
                ),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        execute_result(&r, 0).rows,
        vec![vec![int(0), int(0), text("ada!")]],
        "rolled back: nothing; committed: the update"
    );

    // A shard's scan: one cursor, then a close of its stream.
    let (baton, entries) = p
        .cursor(
            "cursor-scan",
            cursor_of(vec![Stmt::new(SCAN, vec![int(i64::MIN)])]),
        )
        .await
        .unwrap();
    let steps = steps_of(&entries);
    let rows = steps[0].as_ref().unwrap();
    let mut one = row_one();
    one[1] = text("ada!");
    one[2] = int(4);
    let expected: Vec<Vec<Value>> = [row_min(), one]
        .into_iter()
        .chain((10..=1009).map(bulk_row))
        .collect();
    assert_eq!(rows, &expected);
    let r = p
        .pipeline("cursor-scan-close", only(baton, vec![StreamRequest::Close]))
        .await
        .unwrap();
    assert!(is_close(&r, 0));

    // A node's shards in one snapshot (BEGIN, a SELECT per shard, COMMIT).
    let (baton, entries) = p
        .cursor("cursor-snapshot", snapshot_cursor())
        .await
        .unwrap();
    let steps = steps_of(&entries);
    assert_eq!(steps.len(), 4);
    assert_eq!(steps[0], Ok(vec![]));
    assert_eq!(steps[1], Ok(snapshot_low()));
    assert_eq!(steps[2], Ok(snapshot_high()));
    assert_eq!(steps[3], Ok(vec![]));
    p.pipeline(
        "cursor-snapshot-close",
        only(baton, vec![StreamRequest::Close]),
    )
    .await
    .unwrap();

    // A statement of a cursor fails: its step's error, not the cursor's.
    let (baton, entries) = p
        .cursor(
            "cursor-step-error",
            cursor_of(vec![Stmt::new("SELECT id FROM missing", vec![])]),
        )
        .await
        .unwrap();
    match &steps_of(&entries)[..] {
        [Err(e)] => {
            assert!(e.message.contains("no such table: missing"), "{e:?}");
            assert!(e.code.is_some(), "{e:?}");
        }
        other => panic!("{other:?}"),
    }
    p.pipeline(
        "cursor-step-error-close",
        only(baton, vec![StreamRequest::Close]),
    )
    .await
    .unwrap();

    // A transaction holds the write lock while another writer waits: sqld
    // rolls the holder back and lets the waiter in (after some seconds on
    // a live server).
    let r = p
        .pipeline(
            "lock-holder",
            on_stream(
                None,
                vec![
                    Stmt::new("BEGIN IMMEDIATE", vec![]),
                    Stmt::new(INSERT, vec![int(3000), text("holder"), int(0)]),
                ],
            ),
        )
        .await
        .unwrap();
    assert!(first_error(&r).is_none(), "{r:?}");
    let holder = r.baton.clone();
    let r = p
        .pipeline(
            "lock-waiter",
            one_request_transaction(vec![Stmt::new(
                INSERT,
                vec![int(3001), text("waiter"), int(0)],
            )]),
        )
        .await
        .unwrap();
    assert!(first_error(&r).is_none(), "the waiter got the lock: {r:?}");
    let r = p
        .pipeline(
            "lock-holder-commit",
            exec_then_close(holder, Stmt::new("COMMIT", vec![])),
        )
        .await
        .unwrap();
    let e = request_error(&r, 0);
    assert_eq!(e.code.as_deref(), Some("TRANSACTION_TIMEOUT"), "{e:?}");
    assert!(is_close(&r, 1));
    let r = p
        .pipeline(
            "lock-outcome",
            exec_then_close(
                None,
                Stmt::new("SELECT id FROM t WHERE id IN (3000, 3001)", vec![]),
            ),
        )
        .await
        .unwrap();
    assert_eq!(
        execute_result(&r, 0).rows,
        vec![vec![int(3001)]],
        "the holder's insert was rolled back"
    );

    // A stream left idle past the server's expiry.
    let r = p
        .pipeline(
            "idle-begin",
            on_stream(None, vec![Stmt::new("BEGIN", vec![])]),
        )
        .await
        .unwrap();
    assert!(r.baton.is_some());
    p.idle(Duration::from_secs(12)).await;
    let e = p
        .pipeline("idle-expired", only(r.baton.clone(), vec![]))
        .await
        .expect_err("expired");
    match &e {
        NodeError::Http {
            status: 400, code, ..
        } => assert_eq!(code.as_deref(), Some("STREAM_EXPIRED"), "{e}"),
        other => panic!("{other:?}"),
    }
}

fn snapshot_cursor() -> CursorReqBody {
    cursor_of(vec![
        Stmt::new("BEGIN", vec![]),
        Stmt::new(SNAPSHOT_LOW, vec![int(11)]),
        Stmt::new(SNAPSHOT_HIGH, vec![int(1005)]),
        Stmt::new("COMMIT", vec![]),
    ])
}

fn snapshot_low() -> Vec<Vec<Value>> {
    vec![
        vec![int(i64::MIN), text(UNICODE)],
        vec![int(1), text("ada!")],
        vec![int(10), text("r10")],
    ]
}

fn snapshot_high() -> Vec<Vec<Value>> {
    (1006..=1009)
        .map(|i| vec![int(i), text(&format!("r{i}"))])
        .collect()
}

/// A plain HTTP client for talking to the sqld being recorded.
fn http_client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().no_proxy().build().unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn replay_scenario(enc: Enc) -> Vec<(String, String)> {
    runtime().block_on(async {
        let mut p = Peer::replay(enc);
        scenario(&mut p).await;
        p.finish().0
    })
}

#[test]
fn json_transcript_decodes_to_what_sqld_said() {
    replay_scenario(Enc::Json);
}

#[test]
fn protobuf_transcript_decodes_to_what_sqld_said() {
    replay_scenario(Enc::Protobuf);
}

#[test]
fn both_encodings_decode_to_the_same_answers() {
    let json = replay_scenario(Enc::Json);
    let protobuf = replay_scenario(Enc::Protobuf);
    assert_eq!(json.len(), protobuf.len());
    for ((name, a), (_, b)) in json.iter().zip(&protobuf) {
        assert_eq!(a, b, "{name}: JSON and Protobuf answers differ");
    }
}

// ---- the executor on recorded answers -----------------------------------------

/// The executor's scan of `shards` against the recorded exchanges `names`:
/// each shard's rows, or the scan's failure.
fn executor_scan(
    enc: Enc,
    names: &[&str],
    shards: Vec<Stmt>,
    opts: ScanOptions,
) -> Result<Vec<(u32, Vec<Vec<Value>>)>, String> {
    let t = load(enc);
    let script = Arc::new(Mutex::new(Script::default()));
    for name in names {
        let x = t
            .exchanges
            .iter()
            .find(|x| x.name == *name)
            .unwrap_or_else(|| panic!("no exchange {name}"));
        script.lock().unwrap().pending.push_back(x.clone());
    }
    let server = replay_server(enc, script.clone());
    let endpoint = NodeEndpoint {
        node_id: "sqld-0".into(),
        url: server.url.clone(),
        token: None,
    };
    let ex = Executor::new(ExecutorConfig {
        client: client_config(enc),
        ..ExecutorConfig::default()
    });
    let queries = shards
        .into_iter()
        .enumerate()
        .map(|(i, stmt)| ShardQuery {
            shard_id: i as u32 + 1,
            endpoint: endpoint.clone(),
            stmt,
        })
        .collect();
    let mut scan = ex.scan(queries, opts);
    let end = Instant::now() + Duration::from_secs(30);
    let mut out: Vec<(u32, Vec<Vec<Value>>)> = Vec::new();
    let result = loop {
        assert!(Instant::now() < end, "the scan did not finish");
        match scan.next(Duration::from_millis(50)) {
            ScanPoll::Rows(c) => match out.iter_mut().find(|(s, _)| *s == c.shard_id) {
                Some((_, rows)) => rows.extend(c.rows),
                None => out.push((c.shard_id, c.rows)),
            },
            ScanPoll::Pending => {}
            ScanPoll::Done => break Ok(()),
            ScanPoll::Failed(e) => break Err(e.to_string()),
        }
    };
    // The close of a cursor's stream is sent after the scan, unwaited.
    while Instant::now() < end && !script.lock().unwrap().pending.is_empty() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let s = script.lock().unwrap();
    assert!(s.mismatches.is_empty(), "{}", s.mismatches.join("\n"));
    assert!(s.pending.is_empty(), "not requested: {:?}", s.pending);
    out.sort_by_key(|(s, _)| *s);
    result.map(|()| out)
}

#[test]
fn the_executor_reads_recorded_scans_and_lookups() {
    for enc in [Enc::Json, Enc::Protobuf] {
        // Two shards of one node in one snapshot: the cursor the executor
        // sends is the recorded one, its rows land with their shards.
        let mut opts = ScanOptions::new(2);
        opts.one_snapshot_per_node = true;
        let got = executor_scan(
            enc,
            &["cursor-snapshot", "cursor-snapshot-close"],
            vec![
                Stmt::new(SNAPSHOT_LOW, vec![int(11)]),
                Stmt::new(SNAPSHOT_HIGH, vec![int(1005)]),
            ],
            opts,
        );
        assert_eq!(
            got,
            Ok(vec![(1, snapshot_low()), (2, snapshot_high())]),
            "{enc:?}"
        );

        // One shard's scan through a cursor.
        let got = executor_scan(
            enc,
            &["cursor-scan", "cursor-scan-close"],
            vec![Stmt::new(SCAN, vec![int(i64::MIN)])],
            ScanOptions::new(5),
        )
        .unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].1.len(), 1002, "{enc:?}");
        assert_eq!(got[0].1[0], row_min());

        // A lookup: one self-closing request.
        let mut opts = ScanOptions::new(5);
        opts.bounded = true;
        let got = executor_scan(
            enc,
            &["lookup"],
            vec![Stmt::new(LOOKUP, vec![int(1)])],
            opts,
        )
        .unwrap();
        let mut one = row_one();
        one[2] = int(4);
        assert_eq!(got, vec![(1, vec![one])], "{enc:?}");

        // A shard whose statement fails: an error naming the node, with
        // sqld's message.
        let err = executor_scan(
            enc,
            &["cursor-step-error", "cursor-step-error-close"],
            vec![Stmt::new("SELECT id FROM missing", vec![])],
            ScanOptions::new(1),
        )
        .expect_err("no such table");
        assert!(
            err.contains("sqld-0") && err.contains("no such table: missing"),
            "{enc:?}: {err}"
        );
    }
}

// ---- recording ---------------------------------------------------------------------

/// A sqld on a temp dir and a free loopback port, killed when dropped.
struct Sqld {
    child: std::process::Child,
    dir: PathBuf,
    url: String,
}

impl Sqld {
    fn start(bin: &str) -> Sqld {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!(
            "conductor-sqld-record-{}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("sqld.log")).unwrap();
        let child = std::process::Command::new(bin)
            .arg("--http-listen-addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--db-path")
            .arg(dir.join("db"))
            .arg("--no-welcome")
            .current_dir(&dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{bin}: {e}"));
        let url = format!("http://127.0.0.1:{port}");
        let sqld = Sqld { child, dir, url };
        let end = Instant::now() + Duration::from_secs(30);
        while !std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            assert!(Instant::now() < end, "sqld did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        sqld
    }
}

impl Drop for Sqld {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Re-records the transcripts from the sqld named by `SQLD`, each encoding
/// against a fresh server, asserting the scenario on the live answers.
#[test]
#[ignore = "needs SQLD=/path/to/sqld; rewrites the committed transcripts"]
fn record_sqld_transcripts() {
    let bin = std::env::var("SQLD").expect("SQLD=/path/to/sqld");
    for enc in [Enc::Json, Enc::Protobuf] {
        let sqld = Sqld::start(&bin);
        let (server, exchanges) = runtime().block_on(async {
            let http = http_client();
            let end = Instant::now() + Duration::from_secs(30);
            let server = loop {
                if let Ok(r) = http.get(format!("{}/version", sqld.url)).send().await {
                    if r.status().is_success() {
                        break r.text().await.unwrap().trim().to_string();
                    }
                }
                assert!(Instant::now() < end, "sqld /version");
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let mut p = Peer::record(enc, sqld.url.clone());
            scenario(&mut p).await;
            (server, p.finish().1.unwrap())
        });
        assert!(
            server.contains(SQLD_VERSION),
            "{server}: record into a fixture directory named after this version"
        );
        let t = Transcript {
            server,
            encoding: enc.name().into(),
            bodies: match enc {
                Enc::Json => "text".into(),
                Enc::Protobuf => "base64".into(),
            },
            exchanges,
        };
        std::fs::create_dir_all(fixture_dir()).unwrap();
        let mut text = serde_json::to_string_pretty(&t).unwrap();
        text.push('\n');
        std::fs::write(transcript_path(enc), text).unwrap();
        println!(
            "recorded {} exchanges into {}",
            t.exchanges.len(),
            transcript_path(enc).display()
        );
    }
}
