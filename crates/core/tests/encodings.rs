//! The two wire encodings: JSON and Protobuf forced against a real
//! in-process conductor-node (the same requests must give the same answers,
//! on the endpoints of the chosen encoding only), the `Auto` probe and its
//! fallback to JSON, and Protobuf cursor bodies that are cut short or
//! malformed.

// ShardError is returned by value on purpose (it is what the FFI side reports).
#![allow(clippy::result_large_err)]

mod support;

use conductor_core::client::{
    first_error, ClientConfig, Encoding, HranaClient, NodeEndpoint, NodeError, WireEncoding,
};
use conductor_core::executor::{
    Executor, ExecutorConfig, ScanHandle, ScanOptions, ScanPoll, ShardQuery, ShardRequest,
};
use conductor_core::remote_sql::{select_sql, shard_table_name};
use conductor_hrana::protobuf as pb;
use conductor_hrana::{
    Batch, BatchCond, BatchStep, CursorEntry, CursorReqBody, PipelineReqBody, PipelineRespBody,
    Stmt, StreamRequest, StreamResponse, StreamResult, Value,
};
use conductor_node::{spawn, Config, RunningNode};
use prost::Message as _;
use serde_json::json;
use std::time::{Duration, Instant};
use support::{FakeServer, Reply};

const POLL: Duration = Duration::from_millis(10);

fn node() -> RunningNode {
    let mut c = Config::temp();
    c.threads = 1;
    c.log_level = "error".into();
    spawn(c).expect("start node")
}

fn endpoint(url: &str) -> NodeEndpoint {
    NodeEndpoint {
        node_id: "node-0".into(),
        url: url.into(),
        token: None,
    }
}

fn config(encoding: WireEncoding) -> ClientConfig {
    ClientConfig {
        encoding,
        request_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    }
}

fn run(ex: &Executor, body: PipelineReqBody, ep: &NodeEndpoint) -> PipelineRespBody {
    let mut h = ex.execute(vec![ShardRequest {
        shard_id: None,
        endpoint: ep.clone(),
        body,
    }]);
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < end, "execute timed out");
        if let Some(mut r) = h.wait(POLL) {
            return r.remove(0).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}

fn scan_all(scan: &mut ScanHandle) -> Vec<(u32, Vec<Value>)> {
    let end = Instant::now() + Duration::from_secs(30);
    let mut rows = Vec::new();
    loop {
        assert!(Instant::now() < end, "scan timed out");
        match scan.next(POLL) {
            ScanPoll::Rows(c) => rows.extend(c.rows.into_iter().map(|r| (c.shard_id, r))),
            ScanPoll::Pending => {}
            ScanPoll::Done => return rows,
            ScanPoll::Failed(e) => panic!("{e}"),
        }
    }
}

/// The node's request counts per endpoint (its `/stats`).
fn node_requests(n: &RunningNode) -> serde_json::Value {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(n.addr()).expect("connect");
    conn.write_all(b"GET /stats HTTP/1.0\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut text = String::new();
    conn.read_to_string(&mut text).expect("read");
    let body = text.split("\r\n\r\n").nth(1).expect("a body");
    let stats: serde_json::Value = serde_json::from_str(body).expect("json");
    stats["requests"].clone()
}

fn exec(sql: &str, args: Vec<Value>) -> StreamRequest {
    StreamRequest::Execute {
        stmt: Stmt::new(sql, args),
    }
}

/// Values at the edges of every kind.
fn edge_rows() -> Vec<Vec<Value>> {
    vec![
        vec![
            Value::Integer(1),
            Value::Integer(i64::MIN),
            Value::Float(-0.0),
            Value::Text("héllo \u{0} ' \" ;--".into()),
            Value::Blob(vec![0, 1, 2, 255]),
        ],
        vec![
            Value::Integer(2),
            Value::Integer(i64::MAX),
            Value::Float(5e-324),
            Value::Text(String::new()),
            Value::Blob(vec![]),
        ],
        vec![
            Value::Integer(3),
            Value::Null,
            Value::Float(1.0e308),
            Value::Null,
            Value::Null,
        ],
    ]
}

/// The same work in one encoding: DDL and inserts, a batch whose middle
/// step fails (its results keep their positions), a constraint violation
/// with its code, a scan of several shards in one cursor and of a lone
/// shard, and bounded lookups; the node sees only that encoding's
/// endpoints.
fn exercise(encoding: WireEncoding) {
    let n = node();
    let ep = endpoint(&n.url());
    let ex = Executor::new(ExecutorConfig {
        client: config(encoding),
        ..ExecutorConfig::default()
    });
    let shards = 3u32;
    let mut setup = Vec::new();
    for s in 0..shards {
        let t = shard_table_name("e", s);
        setup.push(exec(
            &format!("CREATE TABLE \"{t}\" (id INTEGER PRIMARY KEY, i, f, t, b)"),
            vec![],
        ));
        for row in edge_rows() {
            let mut row = row;
            row[0] = Value::Integer(
                i64::from(s) * 10
                    + match row[0] {
                        Value::Integer(i) => i,
                        _ => 0,
                    },
            );
            setup.push(exec(
                &format!("INSERT INTO \"{t}\" VALUES (?, ?, ?, ?, ?)"),
                row,
            ));
        }
    }
    setup.push(StreamRequest::Close);
    let resp = run(
        &ex,
        PipelineReqBody {
            baton: None,
            requests: setup,
        },
        &ep,
    );
    assert!(first_error(&resp).is_none(), "{:?}", first_error(&resp));

    // A batch: ok, fails (duplicate key), skipped (its condition), ok, and
    // a last step skipped: every step has its slot.
    let t0 = shard_table_name("e", 0);
    let insert_dup = Stmt::new(format!("INSERT INTO \"{t0}\" (id) VALUES (1)"), vec![]);
    let resp = run(
        &ex,
        PipelineReqBody {
            baton: None,
            requests: vec![
                StreamRequest::Batch {
                    batch: Batch {
                        steps: vec![
                            BatchStep {
                                stmt: Stmt::new("SELECT 1", vec![]),
                                condition: None,
                            },
                            BatchStep {
                                stmt: insert_dup.clone(),
                                condition: Some(BatchCond::Ok { step: 0 }),
                            },
                            BatchStep {
                                stmt: Stmt::new("SELECT 2", vec![]),
                                condition: Some(BatchCond::Ok { step: 1 }),
                            },
                            BatchStep {
                                stmt: Stmt::new("SELECT 3", vec![]),
                                condition: Some(BatchCond::Error { step: 1 }),
                            },
                            BatchStep {
                                stmt: Stmt::new("SELECT 4", vec![]),
                                condition: Some(BatchCond::Ok { step: 2 }),
                            },
                        ],
                    },
                },
                StreamRequest::Close,
            ],
        },
        &ep,
    );
    let StreamResult::Ok {
        response: StreamResponse::Batch { result },
    } = &resp.results[0]
    else {
        panic!("{:?}", resp.results[0])
    };
    assert_eq!(result.step_results.len(), 5, "{encoding:?}");
    assert_eq!(result.step_errors.len(), 5, "{encoding:?}");
    let present: Vec<bool> = result.step_results.iter().map(Option::is_some).collect();
    assert_eq!(present, [true, false, false, true, false], "{encoding:?}");
    let err = result.step_errors[1].as_ref().expect("step 1 failed");
    assert_eq!(err.code.as_deref(), Some("SQLITE_CONSTRAINT_PRIMARYKEY"));
    assert!(result.step_errors.iter().filter(|e| e.is_some()).count() == 1);

    // A scan: shards 0 and 1 in one cursor (one request per node), and
    // every value exactly as stored.
    let cols = ["id", "i", "f", "t", "b"];
    let queries = |only: &[u32]| {
        only.iter()
            .map(|&s| ShardQuery {
                shard_id: s,
                endpoint: ep.clone(),
                stmt: Stmt::new(
                    format!(
                        "{} ORDER BY \"id\"",
                        select_sql(&shard_table_name("e", s), &cols, None)
                    ),
                    vec![],
                ),
            })
            .collect::<Vec<_>>()
    };
    let mut opts = ScanOptions::new(cols.len());
    opts.max_requests_per_node = 1;
    let mut rows = scan_all(&mut ex.scan(queries(&[0, 1]), opts.clone()));
    rows.extend(scan_all(&mut ex.scan(queries(&[2]), opts.clone())));
    rows.sort_by_key(|(s, r)| (*s, format!("{:?}", r[0])));
    assert_eq!(rows.len(), 9);
    for (shard, row) in &rows {
        let Value::Integer(id) = row[0] else {
            panic!("{row:?}")
        };
        let mut want = edge_rows()[(id % 10 - 1) as usize].clone();
        want[0] = Value::Integer(id);
        assert_eq!(i64::from(*shard), id / 10);
        for (got, want) in row.iter().zip(&want) {
            match (got, want) {
                (Value::Float(a), Value::Float(b)) => assert_eq!(a.to_bits(), b.to_bits()),
                _ => assert_eq!(got, want, "{encoding:?}"),
            }
        }
    }

    // Bounded lookups: one self-closing pipeline per shard.
    let mut lopts = ScanOptions::new(cols.len());
    lopts.bounded = true;
    let lookups: Vec<ShardQuery> = (0..shards)
        .map(|s| ShardQuery {
            shard_id: s,
            endpoint: ep.clone(),
            stmt: Stmt::new(
                select_sql(&shard_table_name("e", s), &cols, Some("\"id\" = ?")),
                vec![Value::Integer(i64::from(s) * 10 + 2)],
            ),
        })
        .collect();
    let rows = scan_all(&mut ex.scan(lookups, lopts));
    assert_eq!(rows.len(), 3);
    assert!(rows
        .iter()
        .all(|(_, r)| r[1] == Value::Integer(i64::MAX) && r[4] == Value::Blob(vec![])));

    let counts = node_requests(&n);
    let (used, unused) = match encoding {
        WireEncoding::Json => ("/v3", "/v3-protobuf"),
        _ => ("/v3-protobuf", "/v3"),
    };
    let count = |e: &str| counts[e].as_u64().unwrap_or(0);
    assert!(count(&format!("{used}/pipeline")) >= 5, "{counts}");
    assert_eq!(count(&format!("{used}/cursor")), 2, "{counts}");
    assert_eq!(count(&format!("{unused}/pipeline")), 0, "{counts}");
    assert_eq!(count(&format!("{unused}/cursor")), 0, "{counts}");
}

#[test]
fn forced_json_against_a_real_node() {
    exercise(WireEncoding::Json);
}

#[test]
fn forced_protobuf_against_a_real_node() {
    exercise(WireEncoding::Protobuf);
}

#[test]
fn auto_speaks_protobuf_to_a_node_that_serves_it() {
    exercise(WireEncoding::Auto);
}

/// A node's error bodies in the Protobuf encoding are read as such: the
/// message and code of a request refused as a whole reach the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn protobuf_error_bodies_are_decoded() {
    let n = node();
    let ep = endpoint(&n.url());
    let client = HranaClient::new(config(WireEncoding::Protobuf)).expect("client");
    let err = client
        .pipeline(
            &ep,
            &PipelineReqBody {
                baton: Some("no-such-baton".into()),
                requests: vec![StreamRequest::Close],
            },
        )
        .await
        .expect_err("an unknown baton is refused");
    match &err {
        NodeError::Http {
            status, message, ..
        } => {
            assert!((400..500).contains(status), "{err}");
            assert!(message.is_ascii() && message.len() > 5, "{err}");
            assert!(!message.contains('\u{fffd}'), "{err}");
        }
        other => panic!("{other}"),
    }
}

fn pipeline_ok_json() -> Reply {
    Reply::ok_json(json!({"baton": null, "base_url": null,
                          "results": [{"type": "ok", "response": {"type": "close"}}]}))
}

fn close() -> PipelineReqBody {
    PipelineReqBody {
        baton: None,
        requests: vec![StreamRequest::Close],
    }
}

fn cursor_req() -> CursorReqBody {
    CursorReqBody {
        baton: None,
        batch: Batch {
            steps: vec![BatchStep {
                stmt: Stmt::new("SELECT 1", vec![]),
                condition: None,
            }],
        },
    }
}

fn json_cursor_reply() -> Reply {
    Reply::Stream {
        delay: Duration::ZERO,
        lines: Box::new(
            [
                "{\"baton\":null,\"base_url\":null}\n",
                "{\"type\":\"step_begin\",\"step\":0,\"cols\":[{\"name\":\"x\"}]}\n",
                "{\"type\":\"row\",\"row\":[{\"type\":\"integer\",\"value\":\"7\"}]}\n",
                "{\"type\":\"step_end\",\"affected_row_count\":0}\n",
            ]
            .into_iter()
            .map(|l| l.as_bytes().to_vec()),
        ),
    }
}

async fn drain(client: &HranaClient, ep: &NodeEndpoint) -> Result<Vec<CursorEntry>, NodeError> {
    let mut stream = client.cursor(ep, &cursor_req()).await?;
    let mut out = Vec::new();
    while let Some(e) = stream.next().await? {
        out.push(e);
    }
    Ok(out)
}

/// A server without the Protobuf endpoints (404): the probe is resent in
/// JSON, the node is remembered as JSON-only, and later requests go
/// straight to JSON.
#[tokio::test]
async fn auto_falls_back_to_json_on_404() {
    let server = FakeServer::start(|req| {
        if req.path.starts_with("/v3-protobuf/") {
            Reply::status(404, "not found")
        } else if req.path == "/v3/cursor" {
            json_cursor_reply()
        } else {
            pipeline_ok_json()
        }
    });
    let ep = endpoint(&server.url);
    let client = HranaClient::new(config(WireEncoding::Auto)).expect("client");
    client
        .pipeline(&ep, &close())
        .await
        .expect("resent in JSON");
    assert_eq!(client.known_encoding(&ep), Some(Encoding::Json));
    client.pipeline(&ep, &close()).await.expect("JSON");
    let entries = drain(&client, &ep).await.expect("cursor in JSON");
    assert_eq!(entries.len(), 3);
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/v3-protobuf/pipeline",
            "/v3/pipeline",
            "/v3/pipeline",
            "/v3/cursor"
        ]
    );
}

/// A first cursor answered with JSON (a server that ignores the path):
/// resent in JSON, a cursor only reads.
#[tokio::test]
async fn auto_falls_back_when_the_probe_is_answered_in_json() {
    let server = FakeServer::start(|req| {
        if req.path.ends_with("/cursor") {
            json_cursor_reply()
        } else {
            pipeline_ok_json()
        }
    });
    let ep = endpoint(&server.url);
    let client = HranaClient::new(config(WireEncoding::Auto)).expect("client");
    let entries = drain(&client, &ep).await.expect("resent in JSON");
    assert_eq!(entries.len(), 3);
    assert_eq!(client.known_encoding(&ep), Some(Encoding::Json));
    // A pipeline probe answered in JSON (application/json) is resent too:
    // the node could not have read a Protobuf body as JSON.
    let other = HranaClient::new(config(WireEncoding::Auto)).expect("client");
    other.pipeline(&ep, &close()).await.expect("resent in JSON");
    assert_eq!(other.known_encoding(&ep), Some(Encoding::Json));
    let paths: Vec<String> = server.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "/v3-protobuf/cursor",
            "/v3/cursor",
            "/v3-protobuf/pipeline",
            "/v3/pipeline"
        ]
    );
}

/// A node that does not answer is not taken for a JSON node: the error is
/// the caller's (a connect error, retried by the executor), and the next
/// request probes again.
#[tokio::test]
async fn an_unreachable_node_is_not_remembered() {
    let url = support::dead_url();
    let ep = endpoint(&url);
    let client = HranaClient::new(config(WireEncoding::Auto)).expect("client");
    let err = client.pipeline(&ep, &close()).await.expect_err("down");
    assert!(matches!(err, NodeError::Connect { .. }), "{err}");
    assert_eq!(client.known_encoding(&ep), None);
}

// ---- Protobuf cursor bodies, scripted ----

fn frame(m: impl prost::Message) -> Vec<u8> {
    m.encode_length_delimited_to_vec()
}

fn header() -> Vec<u8> {
    frame(pb::CursorRespBody {
        baton: None,
        base_url: None,
    })
}

fn entry(e: CursorEntry) -> Vec<u8> {
    frame(pb::CursorEntry::from(e))
}

fn step_begin() -> Vec<u8> {
    entry(CursorEntry::StepBegin {
        step: 0,
        cols: vec![conductor_hrana::Col {
            name: Some("x".into()),
            decltype: None,
        }],
    })
}

fn row(v: Value) -> Vec<u8> {
    entry(CursorEntry::Row { row: vec![v] })
}

fn step_end() -> Vec<u8> {
    entry(CursorEntry::StepEnd {
        affected_row_count: 0,
        last_insert_rowid: None,
    })
}

fn serve_frames(frames: Vec<Vec<u8>>) -> FakeServer {
    FakeServer::start(move |_| Reply::Stream {
        delay: Duration::ZERO,
        lines: Box::new(frames.clone().into_iter()),
    })
}

async fn drain_protobuf(
    frames: Vec<Vec<u8>>,
    max: usize,
) -> (Result<Vec<CursorEntry>, NodeError>, FakeServer) {
    let server = serve_frames(frames);
    let client = HranaClient::new(ClientConfig {
        max_line_bytes: max,
        ..config(WireEncoding::Protobuf)
    })
    .expect("client");
    let r = drain(&client, &endpoint(&server.url)).await;
    (r, server)
}

fn protocol_message(r: Result<Vec<CursorEntry>, NodeError>) -> String {
    match r {
        Err(NodeError::Protocol { message, .. }) => message,
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

#[tokio::test]
async fn protobuf_cursor_streams_entries_and_skips_unknown_ones() {
    // sqld's replication_index (CursorEntry field 6), and an entry of a
    // kind no one knows yet (field 15), are skipped.
    let replication_index = {
        let mut v = vec![0x30, 42];
        let mut out = Vec::new();
        prost::encoding::encode_varint(v.len() as u64, &mut out);
        out.append(&mut v);
        out
    };
    let unknown = vec![2, 0x78, 1];
    let (r, server) = drain_protobuf(
        vec![
            header(),
            step_begin(),
            row(Value::Integer(-7)),
            unknown,
            row(Value::Text("t".into())),
            step_end(),
            replication_index,
        ],
        1 << 20,
    )
    .await;
    let entries = r.expect("entries");
    assert_eq!(entries.len(), 4);
    assert_eq!(
        entries[1],
        CursorEntry::Row {
            row: vec![Value::Integer(-7)]
        }
    );
    let req = &server.requests()[0];
    assert_eq!(req.path, "/v3-protobuf/cursor");
    let body = pb::CursorReqBody::decode(&req.body[..]).expect("a Protobuf request");
    assert_eq!(body.batch.expect("batch").steps.len(), 1);
}

#[tokio::test]
async fn protobuf_cursor_cut_inside_an_entry_is_a_clear_error() {
    let mut last = row(Value::Text("a fairly long text value".into()));
    last.truncate(last.len() - 5);
    let (r, _s) = drain_protobuf(vec![header(), step_begin(), last], 1 << 20).await;
    let m = protocol_message(r);
    assert!(
        m.contains("truncated") && m.contains("inside an entry"),
        "{m}"
    );
}

#[tokio::test]
async fn protobuf_cursor_cut_between_entries_inside_a_step_is_truncation() {
    let (r, _s) = drain_protobuf(
        vec![header(), step_begin(), row(Value::Integer(1))],
        1 << 20,
    )
    .await;
    let m = protocol_message(r);
    assert!(m.contains("truncated inside step 0"), "{m}");
}

#[tokio::test]
async fn protobuf_cursor_malformed_frames_are_protocol_errors() {
    // A length prefix of 11 continuation bytes.
    let (r, _s) = drain_protobuf(vec![header(), vec![0xff; 11]], 1 << 20).await;
    assert!(protocol_message(r).contains("invalid length prefix"));
    // A frame whose bytes are not a message (a field with wire type 7).
    let (r, _s) = drain_protobuf(vec![header(), vec![2, 0x0f, 0x00]], 1 << 20).await;
    assert!(protocol_message(r).contains("malformed cursor entry"));
    // A value of a kind this client does not know (Value field 9).
    let strange = {
        let row = [0x0a, 2, 0x48, 1]; // Row.values[0] = Value { 9: 1 }
        let mut e = vec![0x22, row.len() as u8];
        e.extend_from_slice(&row);
        let mut f = vec![e.len() as u8];
        f.extend(e);
        f
    };
    let (r, _s) = drain_protobuf(vec![header(), step_begin(), strange], 1 << 20).await;
    assert!(protocol_message(r).contains("malformed cursor entry"));
    // A header that does not decode.
    let (r, _s) = drain_protobuf(vec![vec![3, 0x0a, 9, 0]], 1 << 20).await;
    assert!(protocol_message(r).contains("malformed cursor header"));
    // An empty body.
    let (r, _s) = drain_protobuf(vec![], 1 << 20).await;
    assert!(protocol_message(r).contains("ended before its header"));
}

/// An entry declared larger than the limit is refused from its length
/// alone, before its bytes are buffered.
#[tokio::test]
async fn protobuf_cursor_entries_are_bounded() {
    let big = row(Value::Blob(vec![7; 1 << 20]));
    let (r, server) = drain_protobuf(
        std::iter::once(header())
            .chain(std::iter::once(step_begin()))
            .chain(std::iter::repeat_n(big, 8))
            .collect(),
        64 << 10,
    )
    .await;
    let m = protocol_message(r);
    assert!(m.contains("exceeds the limit of 65536 bytes"), "{m}");
    // The client stopped reading long before the 8 MiB were sent.
    let _ = server;
}
