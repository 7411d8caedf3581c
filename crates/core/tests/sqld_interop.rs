//! The client and the executor against hand-written answers in the shapes a
//! libSQL server (sqld) sends, served verbatim by the scripted fake server,
//! for the edge cases a recording does not produce (numeric rowids, a
//! cursor's `error` entry, sqld's error bodies outside the protocol, entry
//! types no server sends yet): they are understood, and what the client
//! needs is still checked. What a real sqld answered to every request the
//! client sends is replayed by `sqld_transcripts.rs`.

mod support;

use conductor_core::client::{
    first_error, ClientConfig, HranaClient, NodeEndpoint, NodeError, WireEncoding,
};
use conductor_core::executor::{Executor, ExecutorConfig, ScanOptions, ScanPoll, ShardQuery};
use conductor_hrana::{
    Batch, BatchStep, CursorEntry, CursorReqBody, PipelineReqBody, Stmt, StreamRequest,
    StreamResponse, StreamResult, Value,
};
use std::time::{Duration, Instant};
use support::{cursor_text, FakeServer, Reply};

const PIPELINE_EXECUTE: &str = include_str!("../../hrana/tests/corpus/sqld/pipeline_execute.json");
const PIPELINE_BATCH: &str = include_str!("../../hrana/tests/corpus/sqld/pipeline_batch.json");
const PIPELINE_ERROR: &str = include_str!("../../hrana/tests/corpus/sqld/pipeline_error.json");
const CURSOR: &str = include_str!("../../hrana/tests/corpus/sqld/cursor.ndjson");
const CURSOR_ERROR: &str = include_str!("../../hrana/tests/corpus/sqld/cursor_error.ndjson");
const HTTP_ERROR_STREAM_EXPIRED: &str =
    include_str!("../../hrana/tests/corpus/sqld/http_error_stream_expired.json");
const HTTP_ERROR_PLAIN: &str = include_str!("../../hrana/tests/corpus/sqld/http_error_plain.json");

fn endpoint(url: &str) -> NodeEndpoint {
    NodeEndpoint {
        node_id: "sqld-1".into(),
        url: url.into(),
        token: None,
    }
}

fn client() -> HranaClient {
    HranaClient::new(ClientConfig {
        request_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        // These scripted servers speak JSON only.
        encoding: WireEncoding::Json,
        ..ClientConfig::default()
    })
    .expect("client")
}

fn pipeline_of(n: usize) -> PipelineReqBody {
    let mut requests: Vec<StreamRequest> = (1..n)
        .map(|_| StreamRequest::Execute {
            stmt: Stmt::new("SELECT 1", vec![]),
        })
        .collect();
    requests.push(StreamRequest::Close);
    PipelineReqBody {
        baton: None,
        requests,
    }
}

fn cursor_req() -> CursorReqBody {
    CursorReqBody {
        baton: None,
        batch: Batch {
            steps: vec![BatchStep {
                stmt: Stmt::new("SELECT id FROM t", vec![]),
                condition: None,
            }],
        },
    }
}

fn serve(body: &'static str) -> FakeServer {
    FakeServer::start(move |_| Reply::status(200, body))
}

async fn drain(server: &FakeServer) -> Result<Vec<CursorEntry>, NodeError> {
    let mut stream = client()
        .cursor(&endpoint(&server.url), &cursor_req())
        .await?;
    let mut out = Vec::new();
    while let Some(e) = stream.next().await? {
        out.push(e);
    }
    Ok(out)
}

#[tokio::test]
async fn pipeline_execute_result() {
    let server = serve(PIPELINE_EXECUTE);
    let resp = client()
        .pipeline(&endpoint(&server.url), &pipeline_of(2))
        .await
        .expect("decodes");
    assert!(first_error(&resp).is_none());
    assert_eq!(resp.base_url.as_deref(), Some("http://127.0.0.1:8080"));
    assert!(resp.baton.is_some());
    let StreamResult::Ok {
        response: StreamResponse::Execute { result },
    } = &resp.results[0]
    else {
        panic!("{:?}", resp.results[0]);
    };
    assert_eq!(result.rows.len(), 2);
    assert_eq!(result.rows[0][3], Value::Blob(vec![0, 1, 2, 255]));
    assert_eq!(result.rows[1][0], Value::Integer(i64::MIN));
    assert_eq!(result.rows_read, Some(2));
}

#[tokio::test]
async fn pipeline_batch_and_request_errors_keep_their_codes() {
    let server = serve(PIPELINE_BATCH);
    let resp = client()
        .pipeline(&endpoint(&server.url), &pipeline_of(2))
        .await
        .expect("decodes");
    let e = first_error(&resp).expect("the failed step");
    assert_eq!(e.code.as_deref(), Some("SQLITE_CONSTRAINT"));
    assert!(e.message.contains("UNIQUE constraint failed: t.id"));

    let server = serve(PIPELINE_ERROR);
    let resp = client()
        .pipeline(&endpoint(&server.url), &pipeline_of(3))
        .await
        .expect("decodes");
    let e = first_error(&resp).expect("the failed request");
    assert_eq!(e.code.as_deref(), Some("SQLITE_CONSTRAINT"));
}

#[tokio::test]
async fn cursor_skips_replication_index() {
    let server = FakeServer::start(|_| cursor_text(CURSOR));
    let mut stream = client()
        .cursor(&endpoint(&server.url), &cursor_req())
        .await
        .expect("cursor");
    assert_eq!(stream.baton(), Some("Zm9vYmFyYmF6cXV4"));
    assert_eq!(stream.base_url(), Some("http://127.0.0.1:8080"));
    let mut entries = Vec::new();
    while let Some(e) = stream.next().await.expect("entry") {
        entries.push(e);
    }
    assert_eq!(entries.len(), 7, "{entries:?}");
    assert_eq!(
        entries[5],
        CursorEntry::StepEnd {
            affected_row_count: 1,
            last_insert_rowid: Some("42".into())
        }
    );
    assert!(matches!(
        &entries[6],
        CursorEntry::StepError { step: 2, error } if error.code.as_deref() == Some("SQLITE_ERROR")
    ));

    let server = FakeServer::start(|_| cursor_text(CURSOR_ERROR));
    let entries = drain(&server).await.expect("stream");
    assert!(matches!(
        &entries[..],
        [CursorEntry::Error { error }] if error.code.as_deref() == Some("TRANSACTION_TIMEOUT")
    ));
}

#[tokio::test]
async fn unknown_entries_are_skipped_anywhere() {
    let body = concat!(
        "{\"baton\":null,\"base_url\":null}\n",
        "{\"type\":\"martian\"}\n",
        "{\"type\":\"step_begin\",\"step\":0,\"cols\":[{\"name\":\"id\",\"decltype\":null}]}\n",
        "{\"type\":\"progress\",\"rows\":1}\n",
        "{\"type\":\"row\",\"row\":[{\"type\":\"integer\",\"value\":\"1\"}]}\n",
        "{\"type\":\"step_end\",\"affected_row_count\":0,\"last_insert_rowid\":null}\n",
        "{\"type\":\"replication_index\",\"replication_index\":3}\n",
    );
    let server = FakeServer::start(move |_| cursor_text(body));
    let entries = drain(&server).await.expect("stream");
    assert_eq!(entries.len(), 3, "{entries:?}");
    assert_eq!(
        entries[1],
        CursorEntry::Row {
            row: vec![Value::Integer(1)]
        }
    );
}

#[tokio::test]
async fn what_the_client_needs_is_still_checked() {
    let cases = [
        // truncated inside a step, though a replication_index entry followed
        concat!(
            "{\"baton\":null,\"base_url\":null}\n",
            "{\"type\":\"step_begin\",\"step\":0,\"cols\":[]}\n",
            "{\"type\":\"replication_index\",\"replication_index\":3}\n",
        ),
        // truncated mid-line after a replication_index entry
        concat!(
            "{\"baton\":null,\"base_url\":null}\n",
            "{\"type\":\"replication_index\",\"replication_index\":3}\n",
            "{\"type\":\"step_begin\",\"ste",
        ),
        // a malformed row
        concat!(
            "{\"baton\":null,\"base_url\":null}\n",
            "{\"type\":\"step_begin\",\"step\":0,\"cols\":[]}\n",
            "{\"type\":\"row\",\"row\":[{\"type\":\"integer\",\"value\":1}]}\n",
        ),
        // an entry without a type
        "{\"baton\":null,\"base_url\":null}\n{\"row\":[]}\n",
        // a malformed step_end
        concat!(
            "{\"baton\":null,\"base_url\":null}\n",
            "{\"type\":\"step_begin\",\"step\":0,\"cols\":[]}\n",
            "{\"type\":\"step_end\",\"affected_row_count\":-1}\n",
        ),
    ];
    for body in cases {
        let server = FakeServer::start(move |_| cursor_text(body));
        let err = drain(&server).await.expect_err(body);
        assert!(matches!(err, NodeError::Protocol { .. }), "{body:?}: {err}");
    }
}

#[tokio::test]
async fn sqld_http_error_bodies() {
    let server = FakeServer::start(|_| Reply::status(400, HTTP_ERROR_STREAM_EXPIRED));
    let err = client()
        .pipeline(&endpoint(&server.url), &pipeline_of(1))
        .await
        .expect_err("400");
    assert_eq!(err.sqlite_code(), Some("STREAM_EXPIRED"));
    assert!(
        err.to_string()
            .contains("HTTP 400: The stream has expired due to inactivity"),
        "{err}"
    );

    // sqld's errors outside the protocol: {"error": "..."}.
    let server = FakeServer::start(|_| Reply::status(401, HTTP_ERROR_PLAIN));
    let err = client()
        .pipeline(&endpoint(&server.url), &pipeline_of(1))
        .await
        .expect_err("401");
    match &err {
        NodeError::Http {
            status: 401,
            message,
            code: None,
            ..
        } => assert_eq!(message, "Authorization forbidden: no authorization header"),
        other => panic!("{other}"),
    }

    // A protocol error is plain text.
    let server = FakeServer::start(|_| Reply::status(400, "Received an invalid baton"));
    let err = drain(&server).await.expect_err("400");
    assert!(
        matches!(&err, NodeError::Http { status: 400, message, .. } if message == "Received an invalid baton"),
        "{err}"
    );
}

fn executor() -> Executor {
    Executor::new(ExecutorConfig {
        client: ClientConfig {
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            // These scripted servers speak JSON only.
            encoding: WireEncoding::Json,
            ..ClientConfig::default()
        },
        ..ExecutorConfig::default()
    })
}

/// A one-column scan through the executor; its rows, or its failure.
fn scan(body: &'static str) -> Result<Vec<Value>, String> {
    let server = FakeServer::start(move |_| cursor_text(body));
    let ex = executor();
    let mut scan = ex.scan(
        vec![ShardQuery {
            shard_id: 0,
            endpoint: endpoint(&server.url),
            stmt: Stmt::new("SELECT id FROM t", vec![]),
        }],
        ScanOptions::new(1),
    );
    let end = Instant::now() + Duration::from_secs(20);
    let mut rows = Vec::new();
    loop {
        assert!(Instant::now() < end, "scan did not finish");
        match scan.next(Duration::from_millis(50)) {
            ScanPoll::Rows(c) => rows.extend(c.rows.into_iter().flatten()),
            ScanPoll::Pending => {}
            ScanPoll::Done => return Ok(rows),
            ScanPoll::Failed(e) => return Err(e.to_string()),
        }
    }
}

#[test]
fn executor_scans_a_sqld_cursor() {
    let rows = scan(concat!(
        "{\"baton\":\"b\",\"base_url\":null}\n",
        "{\"type\":\"step_begin\",\"step\":0,\"cols\":[{\"name\":\"id\",\"decltype\":\"INTEGER\"}]}\n",
        "{\"type\":\"row\",\"row\":[{\"type\":\"integer\",\"value\":\"1\"}]}\n",
        "{\"type\":\"row\",\"row\":[{\"type\":\"integer\",\"value\":\"2\"}]}\n",
        "{\"type\":\"step_end\",\"affected_row_count\":0,\"last_insert_rowid\":0}\n",
        "{\"type\":\"replication_index\",\"replication_index\":12}\n",
    ))
    .expect("scan");
    assert_eq!(rows, vec![Value::Integer(1), Value::Integer(2)]);

    // A row wider than the table is still refused.
    let err = scan(concat!(
        "{\"baton\":\"b\",\"base_url\":null}\n",
        "{\"type\":\"step_begin\",\"step\":0,\"cols\":[{\"name\":\"id\",\"decltype\":\"INTEGER\"}]}\n",
        "{\"type\":\"replication_index\",\"replication_index\":12}\n",
        "{\"type\":\"row\",\"row\":[{\"type\":\"integer\",\"value\":\"1\"},{\"type\":\"null\"}]}\n",
        "{\"type\":\"step_end\",\"affected_row_count\":0,\"last_insert_rowid\":0}\n",
    ))
    .expect_err("too wide");
    assert!(err.contains("row has 2 columns, expected 1"), "{err}");

    // A stream that ends with replication_index but never ended its step
    // is truncated.
    let err = scan(concat!(
        "{\"baton\":\"b\",\"base_url\":null}\n",
        "{\"type\":\"step_begin\",\"step\":0,\"cols\":[{\"name\":\"id\",\"decltype\":\"INTEGER\"}]}\n",
        "{\"type\":\"row\",\"row\":[{\"type\":\"integer\",\"value\":\"1\"}]}\n",
        "{\"type\":\"replication_index\",\"replication_index\":12}\n",
    ))
    .expect_err("truncated");
    assert!(err.contains("truncated"), "{err}");
}
