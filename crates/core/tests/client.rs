//! The Hrana client against a scripted fake server: happy paths, and every
//! kind of garbage a node might send, which must be errors, never panics.

mod support;

use conductor_core::client::{
    first_error, ClientConfig, HranaClient, NodeEndpoint, NodeError, WireEncoding,
};
use conductor_hrana::{
    Batch, BatchStep, CursorEntry, CursorReqBody, PipelineReqBody, Stmt, StreamRequest, Value,
};
use serde_json::json;
use std::time::Duration;
use support::{cursor_lines, cursor_text, dead_url, FakeServer, Reply};

fn endpoint(url: &str) -> NodeEndpoint {
    NodeEndpoint {
        node_id: "node-7".into(),
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

fn one_execute() -> PipelineReqBody {
    PipelineReqBody {
        baton: None,
        requests: vec![StreamRequest::Execute {
            stmt: Stmt::new("SELECT ?", vec![Value::Integer(1)]),
        }],
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

#[tokio::test]
async fn pipeline_round_trip_with_token() {
    let server = FakeServer::start(|req| {
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/v3/pipeline");
        if req.header("authorization") != Some("Bearer s3cret") {
            return Reply::status(401, "unauthorized");
        }
        Reply::ok_json(json!({"baton": null, "base_url": null, "results": [
            {"type": "ok", "response": {"type": "execute", "result": {
                "cols": [{"name": "?", "decltype": null}],
                "rows": [[{"type": "integer", "value": "1"}]],
                "affected_row_count": 0, "last_insert_rowid": null}}}]}))
    });
    let mut ep = endpoint(&format!("{}/", server.url));
    ep.token = Some("s3cret".into());
    let resp = client().pipeline(&ep, &one_execute()).await.expect("ok");
    assert_eq!(resp.results.len(), 1);
    assert!(first_error(&resp).is_none());
    let sent = server.requests()[0].json();
    assert_eq!(sent["requests"][0]["stmt"]["args"][0]["value"], "1");
}

#[tokio::test]
async fn pipeline_sql_error_is_reported_in_the_body() {
    let server = FakeServer::start(|_| {
        Reply::ok_json(json!({"baton": null, "base_url": null, "results": [
            {"type": "error", "error": {"message": "UNIQUE constraint failed: t.id",
                                        "code": "SQLITE_CONSTRAINT_PRIMARYKEY"}}]}))
    });
    let resp = client()
        .pipeline(&endpoint(&server.url), &one_execute())
        .await
        .expect("a 200 reply");
    let e = first_error(&resp).expect("an error");
    assert_eq!(e.code.as_deref(), Some("SQLITE_CONSTRAINT_PRIMARYKEY"));
}

#[tokio::test]
async fn pipeline_garbage_is_a_protocol_error() {
    for body in [
        "not json",
        "{\"baton\":null,\"base_url\":null,\"results\":[",
        "{\"results\": 5}",
        "[]",
        "",
        "{\"baton\":null,\"base_url\":null,\"results\":[{\"type\":\"martian\"}]}",
        "{\"baton\":null,\"base_url\":null,\"results\":[{\"type\":\"ok\",\"response\":{\"type\":\"execute\",\"result\":{\"cols\":[],\"rows\":[[{\"type\":\"integer\",\"value\":\"x\"}]],\"affected_row_count\":0}}}]}",
    ] {
        let server = FakeServer::start(move |_| Reply::status(200, body));
        let err = client()
            .pipeline(&endpoint(&server.url), &one_execute())
            .await
            .expect_err(body);
        assert!(matches!(err, NodeError::Protocol { .. }), "{body}: {err}");
        assert!(err.to_string().starts_with("node node-7 (http://127.0.0.1:"), "{err}");
    }
}

#[tokio::test]
async fn pipeline_result_count_must_match() {
    let server = FakeServer::start(|_| {
        Reply::ok_json(json!({"baton": null, "base_url": null, "results": []}))
    });
    let err = client()
        .pipeline(&endpoint(&server.url), &one_execute())
        .await
        .expect_err("mismatch");
    assert!(matches!(err, NodeError::Protocol { .. }), "{err}");
}

#[tokio::test]
async fn http_errors_carry_status_and_excerpt() {
    let server = FakeServer::start(|_| Reply::status(500, "Internal Server Error: disk on fire"));
    let err = client()
        .pipeline(&endpoint(&server.url), &one_execute())
        .await
        .expect_err("500");
    match &err {
        NodeError::Http {
            status, message, ..
        } => {
            assert_eq!(*status, 500);
            assert!(message.contains("disk on fire"));
        }
        other => panic!("{other}"),
    }
    assert!(err.is_transient());

    let server = FakeServer::start(|_| {
        Reply::status(
            400,
            r#"{"message":"stream expired","code":"STREAM_EXPIRED"}"#,
        )
    });
    let err = client()
        .pipeline(&endpoint(&server.url), &one_execute())
        .await
        .expect_err("400");
    assert_eq!(err.sqlite_code(), Some("STREAM_EXPIRED"));
    assert!(
        err.to_string().contains("HTTP 400: stream expired"),
        "{err}"
    );

    // A huge error body is cut to an excerpt.
    let server = FakeServer::start(|_| Reply::status(502, &"x".repeat(100_000)));
    let err = client()
        .pipeline(&endpoint(&server.url), &one_execute())
        .await
        .expect_err("502");
    assert!(err.to_string().len() < 1000, "{}", err.to_string().len());
}

#[tokio::test]
async fn unreachable_node_is_a_connect_error() {
    let err = client()
        .pipeline(&endpoint(&dead_url()), &one_execute())
        .await
        .expect_err("refused");
    assert!(matches!(err, NodeError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("node-7"), "{err}");
    let err = client()
        .health(&endpoint("not a url"))
        .await
        .expect_err("bad url");
    assert!(matches!(err, NodeError::Connect { .. }), "{err}");
}

#[tokio::test]
async fn a_silent_node_times_out() {
    let server = FakeServer::start(|_| Reply::Hang);
    let client = HranaClient::new(ClientConfig {
        request_timeout: Duration::from_millis(300),
        // These scripted servers speak JSON only.
        encoding: WireEncoding::Json,
        ..ClientConfig::default()
    })
    .expect("client");
    let t = std::time::Instant::now();
    let err = client
        .pipeline(&endpoint(&server.url), &one_execute())
        .await
        .expect_err("timeout");
    assert!(matches!(err, NodeError::Timeout { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(3));
    let err = client
        .cursor(&endpoint(&server.url), &cursor_req())
        .await
        .expect_err("timeout");
    assert!(matches!(err, NodeError::Timeout { .. }), "{err}");
}

#[tokio::test]
async fn health() {
    let server = FakeServer::start(|req| {
        assert_eq!((req.method.as_str(), req.path.as_str()), ("GET", "/health"));
        Reply::status(200, "ok")
    });
    client()
        .health(&endpoint(&server.url))
        .await
        .expect("healthy");
    let server = FakeServer::start(|_| Reply::status(503, "starting"));
    let err = client()
        .health(&endpoint(&server.url))
        .await
        .expect_err("503");
    assert!(matches!(err, NodeError::Http { status: 503, .. }), "{err}");
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
async fn cursor_streams_entries() {
    let server = FakeServer::start(|req| {
        assert_eq!(req.path, "/v3/cursor");
        Reply::Stream {
            delay: Duration::ZERO,
            lines: cursor_lines(1000),
        }
    });
    let entries = drain(&server).await.expect("stream");
    assert_eq!(entries.len(), 1002);
    assert!(matches!(entries[0], CursorEntry::StepBegin { .. }));
    assert_eq!(
        entries[1000],
        CursorEntry::Row {
            row: vec![Value::Integer(999)]
        }
    );
    let sent = server.requests()[0].json();
    assert_eq!(sent["batch"]["steps"][0]["stmt"]["sql"], "SELECT id FROM t");
}

#[tokio::test]
async fn cursor_without_trailing_newline_is_fine() {
    let server = FakeServer::start(|_| {
        cursor_text(concat!(
            "{\"baton\":\"b1\",\"base_url\":null}\n",
            "{\"type\":\"step_begin\",\"step\":0,\"cols\":[]}\n\n",
            "{\"type\":\"step_end\",\"affected_row_count\":0}"
        ))
    });
    let mut stream = client()
        .cursor(&endpoint(&server.url), &cursor_req())
        .await
        .expect("cursor");
    assert_eq!(stream.baton(), Some("b1"));
    let mut n = 0;
    while stream.next().await.expect("entry").is_some() {
        n += 1;
    }
    assert_eq!(n, 2);
}

#[tokio::test]
async fn cursor_garbage_is_a_protocol_error() {
    let cases = [
        // empty body: no header line
        "",
        // header is not JSON
        "hello\n",
        // truncated mid-line
        "{\"baton\":null,\"base_url\":null}\n{\"type\":\"step_begin\",\"step\":0,\"cols\":[]}\n{\"type\":\"ro",
        // truncated inside a step, at a line boundary
        "{\"baton\":null,\"base_url\":null}\n{\"type\":\"step_begin\",\"step\":0,\"cols\":[]}\n{\"type\":\"row\",\"row\":[]}\n",
        // an entry without a type (one of an unknown type is skipped:
        // see sqld_interop.rs)
        "{\"baton\":null,\"base_url\":null}\n{\"row\":[]}\n",
        // a bad value inside a row
        "{\"baton\":null,\"base_url\":null}\n{\"type\":\"step_begin\",\"step\":0,\"cols\":[]}\n{\"type\":\"row\",\"row\":[{\"type\":\"blob\",\"base64\":\"!!\"}]}\n",
        // binary junk
        "{\"baton\":null,\"base_url\":null}\n\u{1}\u{2}\u{ff}\n",
    ];
    for body in cases {
        let server = FakeServer::start(move |_| cursor_text(body));
        let err = drain(&server).await.expect_err(body);
        assert!(matches!(err, NodeError::Protocol { .. }), "{body:?}: {err}");
    }
}

#[tokio::test]
async fn cursor_lines_are_bounded() {
    let server = FakeServer::start(|_| Reply::Stream {
        delay: Duration::ZERO,
        // A header, then 8 MiB without a newline.
        lines: Box::new(
            std::iter::once(b"{\"baton\":null,\"base_url\":null}\n".to_vec())
                .chain(std::iter::repeat_n(vec![b'x'; 1 << 20], 8)),
        ),
    });
    let client = HranaClient::new(ClientConfig {
        max_line_bytes: 1 << 20,
        // These scripted servers speak JSON only.
        encoding: WireEncoding::Json,
        ..ClientConfig::default()
    })
    .expect("client");
    let mut stream = client
        .cursor(&endpoint(&server.url), &cursor_req())
        .await
        .expect("header is fine");
    let err = stream.next().await.expect_err("line too long");
    assert!(
        matches!(&err, NodeError::Protocol { message, .. } if message.contains("exceeds")),
        "{err}"
    );
}

#[tokio::test]
async fn cursor_http_error() {
    let server = FakeServer::start(|_| Reply::status(500, "oops"));
    let err = drain(&server).await.expect_err("500");
    assert!(matches!(err, NodeError::Http { status: 500, .. }), "{err}");
}

#[tokio::test]
async fn https_to_a_plain_http_port_is_a_clean_error() {
    // Exercises the rustls stack (ring provider installed by the client):
    // a server that answers plain HTTP to the TLS handshake fails it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    std::thread::spawn(move || {
        use std::io::Write;
        if let Ok((mut sock, _)) = listener.accept() {
            let _ = sock.write_all(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n");
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let err = client()
        .health(&endpoint(&url))
        .await
        .expect_err("no TLS there");
    assert!(matches!(err, NodeError::Connect { .. }), "{err}");
}
