//! Protocol tests against an in-process node: every request type, batch
//! condition and value type, interactive streams, cursors, auth and bad
//! input.

mod common;

use common::*;
use serde_json::{json, Value as J};
use std::time::{Duration, Instant};

#[test]
fn endpoints_answer() {
    let n = node();
    for p in ["/health", "/v2", "/v3"] {
        assert_eq!(get(n.addr(), p).status, 200, "{p}");
    }
    let v = get(n.addr(), "/version");
    assert_eq!(v.status, 200);
    assert!(v.text().starts_with("conductor-node "), "{}", v.text());
    let r = get(n.addr(), "/nope");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["code"], "NOT_FOUND");
    assert_eq!(get(n.addr(), "/v3/pipeline").status, 405);
    // Protobuf is served beside JSON (tests/protobuf.rs).
    assert_eq!(get(n.addr(), "/v3-protobuf").status, 200);
    assert_eq!(get(n.addr(), "/v3-protobuf/nope").status, 404);
}

#[test]
fn values_round_trip_exactly() {
    let n = node();
    let a = n.addr();
    exec(a, "CREATE TABLE v(k INTEGER PRIMARY KEY, x)", vec![]);
    let values = vec![
        json!({"type": "null"}),
        int(i64::MIN),
        int(i64::MAX),
        int(0),
        json!({"type": "float", "value": 1.5}),
        json!({"type": "float", "value": -0.0}),
        json!({"type": "float", "value": 1e308}),
        json!({"type": "float", "value": 5e-324}),
        json!({"type": "float", "value": 0.1}),
        text(""),
        text("héllo ' \" ;-- \u{1F600} \\ \n"),
        json!({"type": "blob", "base64": ""}),
        json!({"type": "blob", "base64": "AAEC/w=="}),
    ];
    for (i, v) in values.iter().enumerate() {
        exec(
            a,
            "INSERT INTO v VALUES (?, ?)",
            vec![int(i as i64), v.clone()],
        );
    }
    let r = exec(a, "SELECT x FROM v ORDER BY k", vec![]);
    let rows = r["rows"].as_array().unwrap();
    assert_eq!(rows.len(), values.len());
    for (row, v) in rows.iter().zip(&values) {
        // Compare decoded values (JSON number formatting may differ).
        let got: conductor_hrana::Value = serde_json::from_value(row[0].clone()).unwrap();
        let want: conductor_hrana::Value = serde_json::from_value(v.clone()).unwrap();
        match (&got, &want) {
            (conductor_hrana::Value::Float(g), conductor_hrana::Value::Float(w)) => {
                assert_eq!(g.to_bits(), w.to_bits(), "{g} vs {w}")
            }
            _ => assert_eq!(got, want),
        }
    }
    assert_eq!(r["cols"], json!([{"name": "x", "decltype": null}]));
    let t = exec(a, "SELECT typeof(x) FROM v ORDER BY k", vec![]);
    let types: Vec<&str> = t["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0]["value"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "null", "integer", "integer", "integer", "real", "real", "real", "real", "real",
            "text", "text", "blob", "blob"
        ]
    );
}

#[test]
fn execute_reports_counts_and_rowids() {
    let n = node();
    let a = n.addr();
    exec(
        a,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL)",
        vec![],
    );
    let r = exec(a, "INSERT INTO t(v) VALUES ('a'), ('b'), ('c')", vec![]);
    assert_eq!(r["affected_row_count"], 3);
    assert_eq!(r["last_insert_rowid"], "3");
    let r = exec(a, "UPDATE t SET v = 'z' WHERE id >= ?", vec![int(2)]);
    assert_eq!(r["affected_row_count"], 2);
    let r = exec(a, "SELECT id, v FROM t ORDER BY id", vec![]);
    assert_eq!(r["affected_row_count"], 0);
    // Not the count of the UPDATE before it: DDL changes no rows.
    let body = pipeline(
        a,
        None,
        vec![
            execute("UPDATE t SET v = 'y'", vec![]),
            execute("CREATE TABLE other(x)", vec![]),
            close(),
        ],
    );
    assert_eq!(
        body["results"][0]["response"]["result"]["affected_row_count"],
        3
    );
    assert_eq!(
        body["results"][1]["response"]["result"]["affected_row_count"],
        0
    );
    assert_eq!(
        r["cols"],
        json!([{"name":"id","decltype":"INTEGER"},{"name":"v","decltype":"TEXT"}])
    );
    assert_eq!(r["rows"].as_array().unwrap().len(), 3);
    // want_rows: false runs the statement and returns no rows.
    let body = pipeline(
        a,
        None,
        vec![
            json!({"type":"execute","stmt":{"sql":"SELECT * FROM t","want_rows":false}}),
            close(),
        ],
    );
    assert_eq!(body["results"][0]["response"]["result"]["rows"], json!([]));
}

#[test]
fn named_arguments_bind_with_or_without_prefix() {
    let n = node();
    let a = n.addr();
    let body = pipeline(
        a,
        None,
        vec![
            json!({"type":"execute","stmt":{"sql":"SELECT ?, :a, @b, $c",
                "args":[int(4)],
                "named_args":[
                    {"name":":a","value":int(1)},
                    {"name":"b","value":int(2)},
                    {"name":"$c","value":int(3)}]}}),
            // A named argument overrides a positional one for the same slot.
            json!({"type":"execute","stmt":{"sql":"SELECT :x","args":[int(1)],
                "named_args":[{"name":"x","value":int(9)}]}}),
            json!({"type":"execute","stmt":{"sql":"SELECT ?, ?","args":[int(1)]}}),
            json!({"type":"execute","stmt":{"sql":"SELECT ?","args":[int(1), int(2)]}}),
            json!({"type":"execute","stmt":{"sql":"SELECT :a","named_args":[{"name":"nope","value":int(1)}]}}),
            close(),
        ],
    );
    let res = &body["results"];
    let row = &res[0]["response"]["result"]["rows"][0];
    let got: Vec<&str> = (0..4).map(|i| row[i]["value"].as_str().unwrap()).collect();
    assert_eq!(got, ["4", "1", "2", "3"]);
    assert_eq!(res[1]["response"]["result"]["rows"][0][0]["value"], "9");
    for i in 2..5 {
        assert_eq!(res[i]["type"], "error", "{}", res[i]);
        assert_eq!(res[i]["error"]["code"], "ARGS_INVALID", "{}", res[i]);
    }
}

#[test]
fn batch_conditions() {
    let n = node();
    let a = n.addr();
    exec(a, "CREATE TABLE t(id INTEGER PRIMARY KEY)", vec![]);
    let step = |sql: &str, cond: Option<J>| match cond {
        Some(c) => json!({"stmt": {"sql": sql}, "condition": c}),
        None => json!({"stmt": {"sql": sql}}),
    };
    let ok = |s: u32| json!({"type":"ok","step":s});
    let err = |s: u32| json!({"type":"error","step":s});
    let steps = vec![
        step("SELECT 1", None),                                     // 0 ok
        step("SELECT nope", None),                                  // 1 error
        step("SELECT 2", Some(ok(0))),                              // 2 run
        step("SELECT 3", Some(ok(1))),                              // 3 skip
        step("SELECT 4", Some(err(1))),                             // 4 run
        step("SELECT 5", Some(json!({"type":"not","cond":ok(0)}))), // 5 skip
        step(
            "SELECT 6",
            Some(json!({"type":"and","conds":[ok(0), err(1)]})),
        ), // 6 run
        step(
            "SELECT 7",
            Some(json!({"type":"and","conds":[ok(0), ok(1)]})),
        ), // 7 skip
        step(
            "SELECT 8",
            Some(json!({"type":"or","conds":[ok(1), ok(3)]})),
        ), // 8 skip
        step(
            "SELECT 9",
            Some(json!({"type":"or","conds":[ok(1), err(1)]})),
        ), // 9 run
        step("SELECT 10", Some(json!({"type":"is_autocommit"}))),   // 10 run
        step("SELECT 11", Some(ok(3))),                             // 11 skip: 3 was skipped
        step("SELECT 12", Some(err(3))),                            // 12 skip
        step("SELECT 13", Some(json!({"type":"and","conds":[]}))),  // 13 run
        step("SELECT 14", Some(json!({"type":"or","conds":[]}))),   // 14 skip
    ];
    let ran = [
        true, false, true, false, true, false, true, false, false, true, true, false, false, true,
        false,
    ];
    let body = pipeline(
        a,
        None,
        vec![json!({"type":"batch","batch":{"steps":steps}}), close()],
    );
    let result = &body["results"][0]["response"]["result"];
    for (i, ran) in ran.iter().enumerate() {
        let r = &result["step_results"][i];
        let e = &result["step_errors"][i];
        if i == 1 {
            assert!(r.is_null() && e["message"].is_string(), "step 1: {r} {e}");
            continue;
        }
        assert_eq!(!r.is_null(), *ran, "step {i}: {r}");
        assert!(e.is_null(), "step {i}: {e}");
    }

    // The usual transaction batch: a failing insert rolls everything back.
    let txn = |ids: &[i64]| {
        let mut steps = vec![step("BEGIN", None)];
        for (k, id) in ids.iter().enumerate() {
            steps.push(
                json!({"stmt":{"sql":"INSERT INTO t VALUES (?)","args":[int(*id)]},
                "condition": ok(k as u32)}),
            );
        }
        let last = ids.len() as u32;
        steps.push(json!({"stmt":{"sql":"COMMIT"},"condition":ok(last)}));
        steps.push(
            json!({"stmt":{"sql":"ROLLBACK"},"condition":{"type":"not","cond":ok(last + 1)}}),
        );
        pipeline(
            a,
            None,
            vec![json!({"type":"batch","batch":{"steps":steps}}), close()],
        )
    };
    txn(&[1, 2]);
    assert_eq!(count(a, "t"), 2);
    let body = txn(&[3, 1, 4]);
    let errs = &body["results"][0]["response"]["result"]["step_errors"];
    assert_eq!(errs[2]["code"], "SQLITE_CONSTRAINT_PRIMARYKEY", "{errs}");
    assert_eq!(count(a, "t"), 2, "the failed transaction rolled back");

    // A condition naming a later step is an error of the whole request.
    let body = pipeline(
        a,
        None,
        vec![
            json!({"type":"batch","batch":{"steps":[step("SELECT 1", Some(ok(0)))]}}),
            close(),
        ],
    );
    assert_eq!(body["results"][0]["type"], "error");
}

#[test]
fn other_requests() {
    let n = node();
    let a = n.addr();
    let body = pipeline(
        a,
        None,
        vec![
            json!({"type":"get_autocommit"}),
            json!({"type":"sequence","sql":"CREATE TABLE s(a INTEGER, b TEXT); INSERT INTO s VALUES (1, 'x'); BEGIN"}),
            json!({"type":"get_autocommit"}),
            json!({"type":"describe","sql":"SELECT a AS aa, b FROM s WHERE a = :p AND b = ?"}),
            json!({"type":"store_sql","sql_id":7,"sql":"SELECT count(*) FROM s"}),
            json!({"type":"execute","stmt":{"sql_id":7}}),
            json!({"type":"close_sql","sql_id":7}),
            json!({"type":"execute","stmt":{"sql_id":7}}),
            json!({"type":"execute","stmt":{"sql":"SELECT 1","sql_id":1}}),
            json!({"type":"sequence","sql":"ROLLBACK"}),
            close(),
            json!({"type":"get_autocommit"}),
        ],
    );
    let r = &body["results"];
    assert_eq!(
        r[0]["response"],
        json!({"type":"get_autocommit","is_autocommit":true})
    );
    assert_eq!(r[1]["response"], json!({"type":"sequence"}));
    assert_eq!(r[2]["response"]["is_autocommit"], false);
    let d = &r[3]["response"]["result"];
    assert_eq!(d["params"], json!([{"name":":p"},{"name":null}]));
    assert_eq!(
        d["cols"],
        json!([{"name":"aa","decltype":"INTEGER"},{"name":"b","decltype":"TEXT"}])
    );
    assert_eq!(d["is_explain"], false);
    assert_eq!(d["is_readonly"], true);
    assert_eq!(r[4]["response"]["type"], "store_sql");
    assert_eq!(r[5]["response"]["result"]["rows"][0][0]["value"], "1");
    assert_eq!(r[6]["response"]["type"], "close_sql");
    assert_eq!(r[7]["error"]["code"], "SQL_NOT_FOUND");
    assert_eq!(r[8]["type"], "error");
    assert_eq!(r[9]["type"], "ok");
    assert_eq!(r[10]["response"]["type"], "close");
    assert_eq!(r[11]["error"]["code"], "STREAM_CLOSED");
    assert!(body["baton"].is_null());
    // The sequence's table exists (it committed before BEGIN).
    assert_eq!(count(a, "s"), 1);
}

#[test]
fn interactive_transaction_spans_requests() {
    let n = node();
    let a = n.addr();
    exec(a, "CREATE TABLE t(id INTEGER PRIMARY KEY)", vec![]);
    let b1 = pipeline(
        a,
        None,
        vec![
            execute("BEGIN", vec![]),
            execute("INSERT INTO t VALUES (1)", vec![]),
        ],
    );
    let baton1 = b1["baton"]
        .as_str()
        .expect("a stream stays open")
        .to_owned();
    // Not visible outside the transaction yet.
    assert_eq!(count(a, "t"), 0);
    let b2 = pipeline(
        a,
        Some(&baton1),
        vec![
            execute("INSERT INTO t VALUES (2)", vec![]),
            json!({"type":"get_autocommit"}),
        ],
    );
    assert_eq!(b2["results"][1]["response"]["is_autocommit"], false);
    let baton2 = b2["baton"].as_str().unwrap().to_owned();
    assert_ne!(baton1, baton2);
    let b3 = pipeline(a, Some(&baton2), vec![execute("COMMIT", vec![]), close()]);
    assert!(b3["baton"].is_null());
    assert_eq!(count(a, "t"), 2);

    // ROLLBACK across requests too, and on /v2/pipeline.
    let r = post(
        a,
        "/v2/pipeline",
        &json!({"baton":null,"requests":[execute("BEGIN", vec![]), execute("DELETE FROM t", vec![])]}),
    );
    let baton = r.json()["baton"].as_str().unwrap().to_owned();
    let r = post(
        a,
        "/v2/pipeline",
        &json!({"baton":baton,"requests":[execute("ROLLBACK", vec![]), close()]}),
    );
    assert_eq!(r.status, 200);
    assert_eq!(count(a, "t"), 2);
}

#[test]
fn baton_misuse_is_http_400() {
    let n = node();
    let a = n.addr();
    let b1 = pipeline(a, None, vec![execute("SELECT 1", vec![])]);
    let baton1 = b1["baton"].as_str().unwrap().to_owned();
    let b2 = pipeline(a, Some(&baton1), vec![execute("SELECT 2", vec![])]);
    let baton2 = b2["baton"].as_str().unwrap().to_owned();
    // Reused.
    let r = post(a, "/v3/pipeline", &json!({"baton": baton1, "requests": []}));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "BATON_REUSED");
    // Forged: flip a character of a valid baton.
    let mut forged = baton2.clone().into_bytes();
    forged[3] = if forged[3] == b'A' { b'B' } else { b'A' };
    let r = post(
        a,
        "/v3/pipeline",
        &json!({"baton": String::from_utf8(forged).unwrap(), "requests": []}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "BATON_INVALID");
    let r = post(
        a,
        "/v3/pipeline",
        &json!({"baton": "garbage", "requests": []}),
    );
    assert_eq!(r.status, 400);
    // The stream survives misuse: the latest baton still works, then close.
    let b3 = pipeline(a, Some(&baton2), vec![close()]);
    assert!(b3["baton"].is_null());
    // Closed: the last baton is now unknown.
    let r = post(a, "/v3/pipeline", &json!({"baton": baton2, "requests": []}));
    assert_eq!(r.status, 400);
    // A baton from another node is forged there.
    let other = node();
    let b = pipeline(other.addr(), None, vec![])["baton"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = post(a, "/v3/pipeline", &json!({"baton": b, "requests": []}));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "BATON_INVALID");
}

#[test]
fn idle_stream_expires_and_rolls_back() {
    let n = node_with(|c| c.stream_idle_timeout_ms = 300);
    let a = n.addr();
    exec(a, "CREATE TABLE t(id INTEGER PRIMARY KEY)", vec![]);
    let b = pipeline(
        a,
        None,
        vec![
            execute("BEGIN IMMEDIATE", vec![]),
            execute("INSERT INTO t VALUES (1)", vec![]),
        ],
    );
    let baton = b["baton"].as_str().unwrap().to_owned();
    std::thread::sleep(Duration::from_millis(900));
    let r = post(
        a,
        "/v3/pipeline",
        &json!({"baton": baton, "requests": [execute("COMMIT", vec![])]}),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "STREAM_EXPIRED");
    // Rolled back, and the write lock is free again: a write goes through
    // at once (it would wait for busy_timeout otherwise).
    let t = Instant::now();
    exec(a, "INSERT INTO t VALUES (2)", vec![]);
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(count(a, "t"), 1);
    let stats = get(a, "/stats").json();
    assert_eq!(stats["streams_expired"], 1);
    assert_eq!(stats["open_streams"], 0);
}

#[test]
fn cursor_streams_steps_and_rows() {
    let n = node();
    let a = n.addr();
    exec(a, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)", vec![]);
    exec(
        a,
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 5000) \
         INSERT INTO t SELECT i, 'row ' || i FROM c",
        vec![],
    );
    let r = post(
        a,
        "/v3/cursor",
        &json!({"baton": null, "batch": {"steps": [
            {"stmt": {"sql": "SELECT id, v FROM t ORDER BY id"}},
            {"stmt": {"sql": "SELECT nope FROM t"}},
            {"stmt": {"sql": "SELECT 1"}, "condition": {"type":"ok","step":1}},
            {"stmt": {"sql": "INSERT INTO t VALUES (?, 'x')", "args": [int(9999)]}, "condition": {"type":"error","step":1}},
        ]}}),
    );
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().contains("ndjson"));
    let lines = r.lines();
    let baton = lines[0]["baton"]
        .as_str()
        .expect("cursor returns a baton")
        .to_owned();
    assert!(lines[0]["base_url"].is_null());
    assert_eq!(lines[1]["type"], "step_begin");
    assert_eq!(lines[1]["step"], 0);
    assert_eq!(lines[1]["cols"][1], json!({"name":"v","decltype":"TEXT"}));
    for i in 0..5000 {
        let row = &lines[2 + i];
        assert_eq!(row["type"], "row");
        assert_eq!(row["row"][0]["value"], (i + 1).to_string());
    }
    assert_eq!(lines[5002]["type"], "step_end");
    assert_eq!(lines[5003]["type"], "step_error");
    assert_eq!(lines[5003]["step"], 1);
    assert_eq!(lines[5003]["error"]["code"], "SQLITE_ERROR");
    // Step 2 skipped: nothing. Step 3 runs.
    assert_eq!(lines[5004], json!({"type":"step_begin","step":3,"cols":[]}));
    assert_eq!(lines[5005]["type"], "step_end");
    assert_eq!(lines[5005]["affected_row_count"], 1);
    assert_eq!(lines[5005]["last_insert_rowid"], "9999");
    assert_eq!(lines.len(), 5006);
    // The cursor's stream goes on with the baton.
    let b = pipeline(
        a,
        Some(&baton),
        vec![execute("SELECT count(*) FROM t", vec![]), close()],
    );
    assert_eq!(
        b["results"][0]["response"]["result"]["rows"][0][0]["value"],
        "5001"
    );
}

/// A client that has read a cursor's last entry may use its baton at once:
/// the node hands the stream back before the body's last bytes leave (the
/// client need not wait for the end of the HTTP body).
#[test]
fn a_cursor_read_to_its_last_entry_leaves_its_stream_free() {
    use std::io::{Read, Write};
    let n = node();
    let a = n.addr();
    exec(a, "CREATE TABLE t(id INTEGER PRIMARY KEY)", vec![]);
    let body =
        json!({"baton": null, "batch": {"steps": [{"stmt": {"sql": "SELECT count(*) FROM t"}}]}})
            .to_string();
    for _ in 0..1000 {
        let mut s = std::net::TcpStream::connect(a).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "POST /v3/cursor HTTP/1.1\r\nHost: {a}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&raw).contains("step_end") {
            let got = s.read(&mut buf).unwrap();
            assert!(
                got > 0,
                "the cursor ended early: {}",
                String::from_utf8_lossy(&raw)
            );
            raw.extend_from_slice(&buf[..got]);
        }
        let text = String::from_utf8_lossy(&raw).into_owned();
        let baton = text
            .split("\"baton\":\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a baton")
            .to_owned();
        let closed = post(
            a,
            "/v3/pipeline",
            &json!({"baton": baton, "requests": [close()]}),
        );
        assert_eq!(closed.status, 200, "{}", closed.text());
    }
    assert_eq!(get(a, "/stats").json()["open_streams"], 0);
}

#[test]
fn cursor_on_an_open_transaction() {
    let n = node();
    let a = n.addr();
    exec(a, "CREATE TABLE t(id INTEGER PRIMARY KEY)", vec![]);
    let b = pipeline(
        a,
        None,
        vec![
            execute("BEGIN", vec![]),
            execute("INSERT INTO t VALUES (1)", vec![]),
        ],
    );
    let baton = b["baton"].as_str().unwrap();
    let r = post(
        a,
        "/v3/cursor",
        &json!({"baton": baton, "batch": {"steps": [{"stmt": {"sql": "SELECT id FROM t"}}]}}),
    );
    assert_eq!(r.status, 200);
    let lines = r.lines();
    assert_eq!(lines[2]["row"][0]["value"], "1", "sees its own transaction");
    let baton = lines[0]["baton"].as_str().unwrap();
    pipeline(a, Some(baton), vec![execute("ROLLBACK", vec![]), close()]);
    assert_eq!(count(a, "t"), 0);
    // Misused batons on the cursor endpoint are 400 too.
    let r = post(
        a,
        "/v3/cursor",
        &json!({"baton": baton, "batch": {"steps": []}}),
    );
    assert_eq!(r.status, 400);
}

#[test]
fn auth_token_is_required() {
    let n = node_with(|c| c.auth_token = Some("s3cret".into()));
    let a = n.addr();
    let body =
        json!({"baton": null, "requests": [execute("SELECT 1", vec![]), close()]}).to_string();
    for headers in [
        vec![],
        vec![("Authorization", "Bearer wrong")],
        vec![("Authorization", "s3cret")],
    ] {
        let r = request(a, "POST", "/v3/pipeline", &headers, body.as_bytes());
        assert_eq!(r.status, 401, "{headers:?}");
        assert_eq!(r.json()["code"], "UNAUTHORIZED");
        let r = request(a, "POST", "/v3/cursor", &headers, b"{}");
        assert_eq!(r.status, 401);
    }
    let r = request(
        a,
        "POST",
        "/v3/pipeline",
        &[("Authorization", "Bearer s3cret")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["results"][0]["type"], "ok");
    assert_eq!(get(a, "/health").status, 200);
}

#[test]
fn bad_input_gets_clear_errors_and_the_node_keeps_serving() {
    let n = node_with(|c| c.max_body_bytes = 4096);
    let a = n.addr();
    let raw = |body: &str| request(a, "POST", "/v3/pipeline", &[], body.as_bytes());
    for (body, needle) in [
        ("{not json", "invalid pipeline request body"),
        (
            r#"{"baton":null,"requests":[{"type":"frobnicate"}]}"#,
            "frobnicate",
        ),
        (
            r#"{"baton":null,"requests":[{"type":"execute","stmt":{"sql":"SELECT ?","args":[{"type":"integer","value":1}]}}]}"#,
            "integer",
        ),
        (
            r#"{"baton":null,"requests":[{"type":"execute","stmt":{"sql":"SELECT ?","args":[{"type":"blob","base64":"!!"}]}}]}"#,
            "base64",
        ),
        (r#"{"baton":null}"#, "requests"),
    ] {
        let r = raw(body);
        assert_eq!(r.status, 400, "{body}");
        let e = r.json();
        assert!(
            e["message"].as_str().unwrap().contains(needle),
            "{body}: {e}"
        );
    }
    // Too large: 413, whether or not the length is declared up front.
    let big = format!(
        r#"{{"baton":null,"requests":[{{"type":"execute","stmt":{{"sql":"SELECT '{}'"}}}}]}}"#,
        "x".repeat(5000)
    );
    assert_eq!(raw(&big).status, 413);

    // Per-request errors with codes; the other requests still run.
    exec(
        a,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, u TEXT UNIQUE, n TEXT NOT NULL)",
        vec![],
    );
    exec(a, "INSERT INTO t VALUES (1, 'a', 'x')", vec![]);
    let body = pipeline(
        a,
        None,
        vec![
            execute("SELECT 1; SELECT 2", vec![]),
            execute("INSERT INTO t VALUES (1, 'b', 'x')", vec![]),
            execute("INSERT INTO t VALUES (2, 'a', 'x')", vec![]),
            execute("INSERT INTO t VALUES (3, 'c', NULL)", vec![]),
            execute("SELEC 1", vec![]),
            execute("SELECT * FROM missing", vec![]),
            execute("   ", vec![]),
            execute("SELECT 9e999", vec![]),
            execute("SELECT 42", vec![]),
            close(),
        ],
    );
    let r = &body["results"];
    let codes: Vec<&str> = (0..8)
        .map(|i| r[i]["error"]["code"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(
        codes,
        [
            "SQL_MANY_STATEMENTS",
            "SQLITE_CONSTRAINT_PRIMARYKEY",
            "SQLITE_CONSTRAINT_UNIQUE",
            "SQLITE_CONSTRAINT_NOTNULL",
            "SQLITE_ERROR",
            "SQLITE_ERROR",
            "SQL_NO_STATEMENT",
            "VALUE_NOT_REPRESENTABLE",
        ]
    );
    assert!(r[5]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("no such table"));
    assert_eq!(r[8]["response"]["result"]["rows"][0][0]["value"], "42");
    // Nothing of that left a mark.
    assert_eq!(count(a, "t"), 1);
    assert_eq!(get(a, "/health").status, 200);
    let stats = get(a, "/stats").json();
    assert!(stats["responses_4xx"].as_u64().unwrap() >= 6, "{stats}");
}

#[test]
fn delay_knob_delays_responses() {
    let n = node_with(|c| c.delay_ms = 300);
    let a = n.addr();
    let t = Instant::now();
    exec(a, "SELECT 1", vec![]);
    assert!(t.elapsed() >= Duration::from_millis(300));
    let t = Instant::now();
    let r = post(
        a,
        "/v3/cursor",
        &json!({"baton": null, "batch": {"steps": []}}),
    );
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
    // Health checks are not delayed.
    let t = Instant::now();
    get(a, "/health");
    assert!(t.elapsed() < Duration::from_millis(300));
    // Concurrent requests are delayed in parallel: an async sleep, not a
    // blocked thread.
    let t = Instant::now();
    let hs: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(move || exec(a, "SELECT 1", vec![])))
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn stats_count_requests_and_paths() {
    let n = node();
    let a = n.addr();
    exec(a, "CREATE TABLE t(id INTEGER PRIMARY KEY)", vec![]);
    exec(a, "INSERT INTO t VALUES (1)", vec![]);
    exec(a, "SELECT * FROM t WHERE id = ?", vec![int(1)]);
    exec(
        a,
        "WITH x AS (SELECT 1) INSERT INTO t SELECT 2 FROM x",
        vec![],
    );
    post(
        a,
        "/v2/pipeline",
        &json!({"baton":null,"requests":[close()]}),
    );
    let s = get(a, "/stats").json();
    assert_eq!(s["requests"]["/v3/pipeline"], 4, "{s}");
    assert_eq!(s["requests"]["/v2/pipeline"], 1, "{s}");
    assert_eq!(s["statements_executed"], 4, "{s}");
    // The read ran on a worker's read connection; writes on the writer,
    // including the WITH … INSERT that looks like a query.
    assert_eq!(s["fast_read_pipelines"], 2, "{s}");
    let writes =
        s["writer_pipelines"].as_u64().unwrap() + s["inline_write_pipelines"].as_u64().unwrap();
    assert_eq!(writes, 3, "{s}");
    assert_eq!(count(a, "t"), 2);
}

#[test]
fn concurrent_readers_and_writers() {
    let n = node();
    let a = n.addr();
    exec(
        a,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, v INTEGER)",
        vec![],
    );
    let hs: Vec<_> = (0..6)
        .map(|w| {
            std::thread::spawn(move || {
                for i in 0..100 {
                    if w % 2 == 0 {
                        exec(a, "INSERT INTO t(v) VALUES (?)", vec![int(i)]);
                    } else {
                        exec(a, "SELECT count(*) FROM t", vec![]);
                        // An interactive transaction per iteration too.
                        let b = pipeline(
                            a,
                            None,
                            vec![
                                execute("BEGIN", vec![]),
                                execute("INSERT INTO t(v) VALUES (-1)", vec![]),
                            ],
                        );
                        let baton = b["baton"].as_str().unwrap();
                        let b = pipeline(a, Some(baton), vec![execute("COMMIT", vec![]), close()]);
                        assert_eq!(b["results"][0]["type"], "ok", "{b}");
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(count(a, "t"), 600);
}

#[test]
fn a_write_waits_for_a_streams_write_lock() {
    let n = node();
    let a = n.addr();
    exec(a, "CREATE TABLE t(id INTEGER PRIMARY KEY)", vec![]);
    let b = pipeline(
        a,
        None,
        vec![
            execute("BEGIN IMMEDIATE", vec![]),
            execute("INSERT INTO t VALUES (1)", vec![]),
        ],
    );
    let baton = b["baton"].as_str().unwrap().to_owned();
    let t = Instant::now();
    let writer = std::thread::spawn(move || exec(a, "INSERT INTO t VALUES (2)", vec![]));
    // A lone DDL statement tries the writer inline, finds the lock taken
    // and is queued rather than failing.
    let ddl = std::thread::spawn(move || exec(a, "CREATE TABLE t2(x)", vec![]));
    // Reads are not blocked by the open write transaction meanwhile.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(a, "t"), 0);
    pipeline(a, Some(&baton), vec![execute("COMMIT", vec![]), close()]);
    let r = writer.join().unwrap();
    assert_eq!(r["affected_row_count"], 1);
    ddl.join().unwrap();
    assert_eq!(count(a, "t2"), 0);
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(count(a, "t"), 2);
    let s = get(a, "/stats").json();
    assert!(
        s["writer_pipelines"].as_u64().unwrap() >= 1,
        "the busy write went to the writer thread: {s}"
    );
}

#[test]
fn the_wal_is_checkpointed_and_restarted() {
    let n = node();
    let a = n.addr();
    exec(a, "CREATE TABLE b(id INTEGER PRIMARY KEY, x BLOB)", vec![]);
    // Four bursts of 250 commits of ~3 pages each: ~12 MB of WAL if it were
    // never restarted, ~3 MB if the checkpointer (once a second) runs
    // between bursts.
    for _ in 0..4 {
        for _ in 0..250 {
            exec(a, "INSERT INTO b(x) VALUES (randomblob(8000))", vec![]);
        }
        std::thread::sleep(Duration::from_millis(1300));
    }
    let wal = n.data_dir().join("node.db-wal");
    let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert!(size < 6 * 1024 * 1024, "WAL is {size} bytes");
    assert_eq!(count(a, "b"), 1000);
}

#[test]
fn too_many_streams_is_503() {
    let n = node_with(|c| c.max_streams = 2);
    let a = n.addr();
    let b1 = pipeline(a, None, vec![execute("SELECT 1", vec![])]);
    let _b2 = pipeline(a, None, vec![execute("SELECT 1", vec![])]);
    let r = post(
        a,
        "/v3/pipeline",
        &json!({"baton": null, "requests": [execute("SELECT 1", vec![])]}),
    );
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["code"], "TOO_MANY_STREAMS");
    // Self-closing requests need no stream slot; closing one frees a slot.
    exec(a, "SELECT 1", vec![]);
    pipeline(a, b1["baton"].as_str(), vec![close()]);
    pipeline(a, None, vec![execute("SELECT 1", vec![])]);
}

#[test]
fn concurrent_lone_writes_keep_their_own_results() {
    // Lone INSERTs from many clients share commits (group commit); each
    // still gets its own outcome, as if it had run alone.
    let n = node();
    let a = n.addr();
    exec(
        a,
        "CREATE TABLE t(id INTEGER PRIMARY KEY, k INTEGER UNIQUE)",
        vec![],
    );
    let hs: Vec<_> = (0..8)
        .map(|w| {
            std::thread::spawn(move || {
                let (mut ok, mut dup) = (0, 0);
                for i in 0..150i64 {
                    // Keys collide across threads: 8 threads, 300 distinct keys.
                    let k = (i * 2 + w % 2) % 300;
                    let body = pipeline(
                        a,
                        None,
                        vec![
                            execute("INSERT INTO t(k) VALUES (?)", vec![int(k)]),
                            close(),
                        ],
                    );
                    let r = &body["results"][0];
                    if r["type"] == "ok" {
                        let rowid: i64 = r["response"]["result"]["last_insert_rowid"]
                            .as_str()
                            .unwrap()
                            .parse()
                            .unwrap();
                        let row = exec(a, "SELECT k FROM t WHERE id = ?", vec![int(rowid)]);
                        assert_eq!(scalar(&row), k, "rowid {rowid} holds another key");
                        ok += 1;
                    } else {
                        assert_eq!(r["error"]["code"], "SQLITE_CONSTRAINT_UNIQUE", "{r}");
                        dup += 1;
                    }
                }
                (ok, dup)
            })
        })
        .collect();
    let (mut ok, mut dup) = (0, 0);
    for h in hs {
        let (o, d) = h.join().unwrap();
        ok += o;
        dup += d;
    }
    assert_eq!(ok + dup, 1200);
    assert_eq!(ok, 300, "each key inserted exactly once");
    assert_eq!(count(a, "t"), 300);
    let s = get(a, "/stats").json();
    eprintln!(
        "group commits: {} carrying {} writes",
        s["group_commits"], s["group_committed_writes"]
    );
}

#[test]
fn a_huge_pipeline_result_is_an_error_not_an_outage() {
    let n = node();
    let a = n.addr();
    // ~300 MiB of values: too much to collect for a pipeline response.
    let e = exec_err(
        a,
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 300) \
         SELECT zeroblob(1048576) FROM c",
        vec![],
    );
    assert_eq!(e["code"], "RESPONSE_TOO_LARGE", "{e}");
    assert!(e["message"].as_str().unwrap().contains("/v3/cursor"));
    assert_eq!(get(a, "/health").status, 200);
}

/// The error of a statement that must fail with "no such column" naming
/// `name` (SQLite adds: `"name" - should this be a string literal in
/// single-quotes?`).
fn assert_no_such_column(error: &J, name: &str, what: &str) {
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("no such column") && message.contains(name),
        "{what}: {error}"
    );
    assert_eq!(error["code"], "SQLITE_ERROR", "{what}: {error}");
}

/// SQLite's double-quoted string literals are off on every connection: a
/// misspelt or missing column in double quotes is an error, never silently
/// the string of its name. Checked on each kind of connection the node
/// has: the worker's read connection (a self-closing query), the writer
/// (a lone UPDATE is group-committed; other statements run inline or on
/// the writer thread), a stream's pooled connection, and a cursor's.
#[test]
fn double_quoted_strings_are_identifiers_only() {
    let n = node();
    let a = n.addr();
    exec(a, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)", vec![]);
    exec(a, "INSERT INTO t VALUES (1, 'one'), (2, 'two')", vec![]);

    // Reader: the SELECT list and the WHERE clause.
    let e = exec_err(a, "SELECT \"missing_col\" FROM t", vec![]);
    assert_no_such_column(&e, "missing_col", "select list");
    let e = exec_err(a, "SELECT id FROM t WHERE \"missing\" = ?", vec![text("x")]);
    assert_no_such_column(&e, "missing", "where clause");
    // Double quotes still quote identifiers, and strings still work.
    let r = exec(a, "SELECT \"v\", 'v' FROM t WHERE \"id\" = ?", vec![int(1)]);
    assert_eq!(r["rows"], json!([[text("one"), text("v")]]));

    // Writer: a lone UPDATE (group commit), in the WHERE clause and in SET.
    let e = exec_err(
        a,
        "UPDATE t SET v = ? WHERE \"missing\" = ?",
        vec![text("new"), text("missing")],
    );
    assert_no_such_column(&e, "missing", "update where");
    let e = exec_err(a, "UPDATE t SET v = \"missing_col\" WHERE id = 1", vec![]);
    assert_no_such_column(&e, "missing_col", "update set");
    // Writer, several statements in one self-closing pipeline.
    let body = pipeline(
        a,
        None,
        vec![
            execute("INSERT INTO t VALUES (3, 'three')", vec![]),
            execute("DELETE FROM t WHERE \"missing\" = 'three'", vec![]),
            close(),
        ],
    );
    assert_eq!(body["results"][0]["type"], "ok", "{body}");
    assert_no_such_column(&body["results"][1]["error"], "missing", "delete where");
    // DDL (inline on the writer): an index on a double-quoted name that is
    // no column would otherwise index a constant string.
    let e = exec_err(a, "CREATE INDEX t_missing ON t(\"missing\")", vec![]);
    assert_no_such_column(&e, "missing", "create index");
    let e = exec_err(a, "CREATE TABLE c(x TEXT CHECK (x <> \"missing\"))", vec![]);
    assert_no_such_column(&e, "missing", "check constraint");

    // A stream's connection (baton).
    let body = pipeline(
        a,
        None,
        vec![execute("SELECT \"missing_col\" FROM t", vec![])],
    );
    assert_no_such_column(&body["results"][0]["error"], "missing_col", "stream");
    let baton = body["baton"].as_str().unwrap().to_owned();
    let body = pipeline(
        a,
        Some(&baton),
        vec![
            execute("UPDATE t SET v = 'x' WHERE \"missing\" = ?", vec![int(1)]),
            close(),
        ],
    );
    assert_no_such_column(&body["results"][0]["error"], "missing", "stream update");

    // A cursor's connection.
    let r = post(
        a,
        "/v3/cursor",
        &json!({"baton": null, "batch": {"steps": [
            {"stmt": {"sql": "SELECT \"missing_col\" FROM t"}},
            {"stmt": {"sql": "SELECT id FROM t WHERE \"missing\" = 'x'"}},
        ]}}),
    );
    assert_eq!(r.status, 200);
    let lines = r.lines();
    assert_eq!(lines[1]["type"], "step_error", "{lines:?}");
    assert_no_such_column(&lines[1]["error"], "missing_col", "cursor select list");
    assert_eq!(lines[2]["type"], "step_error", "{lines:?}");
    assert_no_such_column(&lines[2]["error"], "missing", "cursor where");

    // Nothing was changed by any of it.
    let r = exec(a, "SELECT id, v FROM t ORDER BY id", vec![]);
    assert_eq!(
        r["rows"],
        json!([
            [int(1), text("one")],
            [int(2), text("two")],
            [int(3), text("three")]
        ])
    );
}

/// A database whose schema was written with double-quoted string literals
/// (by another SQLite, before) still opens and works: SQLite accepts them
/// while reading a stored schema, and the literal keeps its old meaning.
#[test]
fn a_legacy_schema_with_double_quoted_strings_still_loads() {
    let config = conductor_node::Config::temp();
    std::fs::create_dir_all(&config.data_dir).unwrap();
    {
        // SQLite's defaults: double-quoted strings allowed.
        let db = rusqlite::Connection::open(config.data_dir.join("node.db")).unwrap();
        db.execute_batch(
            "CREATE TABLE legacy(x TEXT CHECK (x <> \"bad\"));
             INSERT INTO legacy VALUES ('good');",
        )
        .unwrap();
    }
    let n = conductor_node::spawn(config).expect("spawn node");
    let a = n.addr();
    let r = exec(a, "SELECT x FROM legacy", vec![]);
    assert_eq!(r["rows"], json!([[text("good")]]));
    let e = exec_err(a, "INSERT INTO legacy VALUES ('bad')", vec![]);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("CHECK constraint failed"),
        "{e}"
    );
    exec(a, "INSERT INTO legacy VALUES ('fine')", vec![]);
    assert_eq!(count(a, "legacy"), 2);
}

/// The statistics of a result: (rows_read, rows_written); its
/// query_duration_ms must be a non-negative number.
fn stats(result: &J) -> (u64, u64) {
    let ms = result["query_duration_ms"]
        .as_f64()
        .unwrap_or_else(|| panic!("no query_duration_ms in {result}"));
    assert!((0.0..60_000.0).contains(&ms), "{result}");
    (
        result["rows_read"]
            .as_u64()
            .unwrap_or_else(|| panic!("no rows_read in {result}")),
        result["rows_written"]
            .as_u64()
            .unwrap_or_else(|| panic!("no rows_written in {result}")),
    )
}

/// Execute and batch step results carry sqld's statistics, `rows_read`,
/// `rows_written` and `query_duration_ms`, with sqld's names and JSON types;
/// a cached statement's counts do not add up over its runs; and the
/// result still decodes as the client's `StmtResult`.
#[test]
fn results_carry_statistics_like_sqld() {
    let n = node();
    let a = n.addr();
    let r = exec(a, "CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT)", vec![]);
    assert_eq!(stats(&r), (0, 0));
    exec(
        a,
        "CREATE TABLE audit(id INTEGER PRIMARY KEY AUTOINCREMENT, what TEXT)",
        vec![],
    );
    exec(
        a,
        "CREATE TRIGGER t_del AFTER DELETE ON t BEGIN INSERT INTO audit(what) VALUES ('del'); END",
        vec![],
    );
    let r = exec(
        a,
        "WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < 100) \
         INSERT INTO t SELECT i, 'row ' || i FROM c",
        vec![],
    );
    assert_eq!(r["affected_row_count"], 100);
    assert_eq!(stats(&r).1, 100);

    // A full scan reads every row, whether it returns them or not.
    for _ in 0..2 {
        let r = exec(a, "SELECT id, v FROM t", vec![]);
        assert_eq!(stats(&r), (100, 0), "{r}");
        let r = exec(a, "SELECT id FROM t WHERE v = 'none'", vec![]);
        let (read, written) = stats(&r);
        assert!((99..=100).contains(&read), "{r}");
        assert_eq!(written, 0);
    }
    // A primary-key lookup reads its row.
    let r = exec(a, "SELECT v FROM t WHERE id = ?", vec![int(7)]);
    assert_eq!(stats(&r), (1, 0));
    // Writes count their rows, and a trigger's.
    let r = exec(a, "UPDATE t SET v = 'x' WHERE id <= ?", vec![int(10)]);
    assert_eq!(stats(&r), (10, 10));
    let r = exec(a, "DELETE FROM t WHERE id IN (1, 2)", vec![]);
    assert_eq!(r["affected_row_count"], 2);
    assert_eq!(stats(&r), (4, 4), "two deletions, two audit rows: {r}");

    // Batch steps carry them too; a skipped step has no result.
    let body = pipeline(
        a,
        None,
        vec![
            json!({"type": "batch", "batch": {"steps": [
                {"stmt": {"sql": "SELECT count(*) FROM t WHERE v = 'x'"}},
                {"stmt": {"sql": "INSERT INTO t VALUES (1000, 'new')"}},
                {"stmt": {"sql": "SELECT 1"}, "condition": {"type": "error", "step": 1}},
            ]}}),
            close(),
        ],
    );
    let steps = &body["results"][0]["response"]["result"]["step_results"];
    assert_eq!(steps[0]["rows"][0][0]["value"], "8");
    assert_eq!(stats(&steps[1]), (1, 1));
    assert!(steps[2].is_null());
    let (read, _) = stats(&steps[0]);
    assert!(read >= 97, "{}", steps[0]);

    // Numbers in JSON, as sqld writes them; and the client's types read them.
    let raw = post(
        a,
        "/v3/pipeline",
        &json!({"requests": [execute("SELECT v FROM t WHERE id = 1000", vec![]), close()]}),
    );
    let text = raw.text();
    assert!(text.contains("\"rows_read\":1,"), "{text}");
    assert!(text.contains("\"rows_written\":0,"), "{text}");
    assert!(text.contains("\"query_duration_ms\":"), "{text}");
    let decoded: conductor_hrana::PipelineRespBody = serde_json::from_slice(&raw.body).unwrap();
    match &decoded.results[0] {
        conductor_hrana::StreamResult::Ok {
            response: conductor_hrana::StreamResponse::Execute { result },
        } => {
            assert_eq!((result.rows_read, result.rows_written), (Some(1), Some(0)));
            assert!(result.query_duration_ms.is_some_and(|ms| ms >= 0.0));
        }
        other => panic!("{other:?}"),
    }
}

/// `/lookup/…` serves the same protocol on a second database file with a
/// write lock of its own: a transaction holding the main database's write
/// lock does not keep a write on the lookup database waiting, and the two
/// databases' tables are separate.
#[test]
fn the_lookup_database_has_its_own_tables_and_write_lock() {
    let n = node();
    let a = n.addr();
    exec(a, "CREATE TABLE t(id INTEGER PRIMARY KEY)", vec![]);
    let on_lookup = |requests: Vec<J>, baton: Option<&str>| {
        let r = post(
            a,
            "/lookup/v3/pipeline",
            &json!({"baton": baton, "requests": requests}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()
    };
    on_lookup(
        vec![
            execute("CREATE TABLE e(v TEXT PRIMARY KEY)", vec![]),
            close(),
        ],
        None,
    );
    let main_tx = pipeline(
        a,
        None,
        vec![
            execute("BEGIN IMMEDIATE", vec![]),
            execute("INSERT INTO t VALUES (1)", vec![]),
        ],
    );
    let baton = main_tx["baton"].as_str().unwrap().to_owned();
    // Sharing the lock, BEGIN IMMEDIATE would fail after the busy timeout.
    let r = on_lookup(
        vec![
            execute("BEGIN IMMEDIATE", vec![]),
            execute("INSERT INTO e VALUES ('x')", vec![]),
            execute("COMMIT", vec![]),
            close(),
        ],
        None,
    );
    for i in 0..3 {
        assert_eq!(r["results"][i]["type"], "ok", "{r}");
    }
    pipeline(a, Some(&baton), vec![execute("COMMIT", vec![]), close()]);
    // Each database sees only its own tables.
    let missing = exec_err(a, "SELECT count(*) FROM e", vec![]);
    assert!(missing.to_string().contains("no such table"), "{missing}");
    let r = on_lookup(
        vec![execute("SELECT count(*) FROM t", vec![]), close()],
        None,
    );
    assert_eq!(r["results"][0]["type"], "error", "{r}");
    let r = on_lookup(
        vec![execute("SELECT count(*) FROM e", vec![]), close()],
        None,
    );
    assert_eq!(scalar(&r["results"][0]["response"]["result"]), 1);
    assert_eq!(count(a, "t"), 1);
    // The lookup database answers health probes and keeps its own stats.
    assert_eq!(get(a, "/lookup/v3").status, 200);
    let s = get(a, "/lookup/stats").json();
    assert!(s["requests"]["/v3/pipeline"].as_u64().unwrap() >= 4, "{s}");
}

/// A transaction's first write arrives as one batch, `BEGIN IMMEDIATE` and
/// then its statements, each on the success of the one before. With the
/// write lock free it runs on the worker thread; with the lock held by
/// another stream it waits its turn (on a blocking thread) instead of
/// failing, and both transactions commit.
#[test]
fn a_transactions_first_write_runs_at_once_or_waits_its_turn() {
    let n = node();
    let a = n.addr();
    exec(a, "CREATE TABLE t(id INTEGER PRIMARY KEY)", vec![]);
    let open = move |id: i64| {
        let batch = json!({"type": "batch", "batch": {"steps": [
            {"stmt": {"sql": "BEGIN IMMEDIATE"}},
            {"stmt": {"sql": "INSERT INTO t VALUES (?)", "args": [int(id)]},
             "condition": {"type": "ok", "step": 0}},
        ]}});
        pipeline(a, None, vec![batch])
    };
    let inline = || {
        get(a, "/stats").json()["inline_stream_pipelines"]
            .as_u64()
            .unwrap()
    };
    let commit = |baton: &str| pipeline(a, Some(baton), vec![execute("COMMIT", vec![]), close()]);

    // A stream's connection comes from the pool (a new one is opened on a
    // blocking thread): one stream first, so one is there.
    let warm = pipeline(a, None, vec![execute("BEGIN", vec![])]);
    pipeline(
        a,
        warm["baton"].as_str(),
        vec![execute("COMMIT", vec![]), close()],
    );
    let before = inline();

    let first = open(1);
    let errors = &first["results"][0]["response"]["result"]["step_errors"];
    assert!(errors.as_array().unwrap().iter().all(J::is_null), "{first}");
    let holder = first["baton"]
        .as_str()
        .expect("the stream stays open")
        .to_owned();
    assert_eq!(
        inline(),
        before + 1,
        "the first write ran on the worker thread"
    );

    let waiter = std::thread::spawn(move || open(2));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !waiter.is_finished(),
        "the second transaction waits for the lock"
    );
    assert_eq!(count(a, "t"), 0, "nothing committed yet");
    commit(&holder);
    let second = waiter.join().unwrap();
    let errors = &second["results"][0]["response"]["result"]["step_errors"];
    assert!(
        errors.as_array().unwrap().iter().all(J::is_null),
        "{second}"
    );
    commit(second["baton"].as_str().unwrap());
    assert_eq!(count(a, "t"), 2);
    let s = get(a, "/stats").json();
    // The first write and the two COMMITs; the second write waited.
    assert_eq!(s["inline_stream_pipelines"], before + 3, "{s}");
    assert!(s["lock_waits"].as_u64().unwrap() >= 1, "{s}");
}
