//! Answers in the JSON shapes a libSQL server (sqld) writes — its serde
//! encoding of the Hrana 3 types, extra fields included — decode to what
//! they say. The bodies in `tests/corpus/sqld/` are written by hand; what a
//! real sqld answered is recorded under `crates/core/tests/fixtures/` and
//! replayed through the client by `crates/core/tests/sqld_transcripts.rs`.

use conductor_hrana::{
    CursorEntry, CursorRespBody, Error, PipelineRespBody, StmtResult, StreamResponse, StreamResult,
    Value,
};

const PIPELINE_EXECUTE: &str = include_str!("corpus/sqld/pipeline_execute.json");
const PIPELINE_BATCH: &str = include_str!("corpus/sqld/pipeline_batch.json");
const PIPELINE_ERROR: &str = include_str!("corpus/sqld/pipeline_error.json");
const CURSOR: &str = include_str!("corpus/sqld/cursor.ndjson");
const CURSOR_ERROR: &str = include_str!("corpus/sqld/cursor_error.ndjson");
const HTTP_ERROR_STREAM_EXPIRED: &str = include_str!("corpus/sqld/http_error_stream_expired.json");

fn execute_result(r: &StreamResult) -> &StmtResult {
    match r {
        StreamResult::Ok {
            response: StreamResponse::Execute { result },
        } => result,
        other => panic!("not an execute result: {other:?}"),
    }
}

fn is_close(r: &StreamResult) -> bool {
    matches!(
        r,
        StreamResult::Ok {
            response: StreamResponse::Close
        }
    )
}

fn error(message: &str, code: &str) -> Error {
    Error {
        message: message.into(),
        code: Some(code.into()),
    }
}

#[test]
fn pipeline_execute_result_with_baton_base_url_and_statistics() {
    let resp: PipelineRespBody = serde_json::from_str(PIPELINE_EXECUTE).unwrap();
    assert_eq!(
        resp.baton.as_deref(),
        Some("AbCdEf0123456789-_xyzAbCdEf0123456789AbCdEf0123")
    );
    assert_eq!(resp.base_url.as_deref(), Some("http://127.0.0.1:8080"));
    assert_eq!(resp.results.len(), 2);
    let r = execute_result(&resp.results[0]);
    let names: Vec<_> = r.cols.iter().map(|c| c.name.as_deref().unwrap()).collect();
    assert_eq!(names, ["id", "name", "score", "data", "note"]);
    assert_eq!(r.cols[0].decltype.as_deref(), Some("INTEGER"));
    assert_eq!(r.cols[4].decltype, None);
    assert_eq!(
        r.rows,
        vec![
            vec![
                Value::Integer(1),
                Value::Text("ada".into()),
                Value::Float(1.5),
                // sqld writes blobs as base64 without padding.
                Value::Blob(vec![0, 1, 2, 255]),
                Value::Null,
            ],
            vec![
                Value::Integer(i64::MIN),
                Value::Text("héllo \"q\"".into()),
                Value::Float(-0.25),
                Value::Blob(vec![]),
                Value::Text("x".into()),
            ],
        ]
    );
    assert_eq!(r.affected_row_count, 0);
    assert_eq!(r.last_insert_rowid, None);
    // sqld's statistics are kept; its replication_index is ignored.
    assert_eq!(r.rows_read, Some(2));
    assert_eq!(r.rows_written, Some(0));
    assert_eq!(r.query_duration_ms, Some(0.081));
    assert!(is_close(&resp.results[1]));
}

#[test]
fn pipeline_batch_result_with_a_constraint_violation() {
    let resp: PipelineRespBody = serde_json::from_str(PIPELINE_BATCH).unwrap();
    assert_eq!(resp.baton, None);
    assert_eq!(resp.base_url, None);
    let result = match &resp.results[0] {
        StreamResult::Ok {
            response: StreamResponse::Batch { result },
        } => result,
        other => panic!("{other:?}"),
    };
    assert_eq!(result.step_results.len(), 5);
    assert_eq!(result.step_errors.len(), 5);
    let insert = result.step_results[1].as_ref().unwrap();
    assert_eq!(insert.affected_row_count, 1);
    assert_eq!(insert.last_insert_rowid.as_deref(), Some("7"));
    assert_eq!(insert.rows_written, Some(1));
    assert_eq!(insert.query_duration_ms, Some(0.031));
    assert!(result.step_results[2].is_none());
    assert_eq!(
        result.step_errors[2],
        Some(error(
            "SQLite error: UNIQUE constraint failed: t.id",
            "SQLITE_CONSTRAINT"
        ))
    );
    // The skipped COMMIT has neither a result nor an error.
    assert!(result.step_results[3].is_none() && result.step_errors[3].is_none());
    assert!(result.step_results[4].is_some());
    assert!(is_close(&resp.results[1]));
}

#[test]
fn pipeline_request_errors_carry_their_codes() {
    let resp: PipelineRespBody = serde_json::from_str(PIPELINE_ERROR).unwrap();
    let errors: Vec<&Error> = resp
        .results
        .iter()
        .filter_map(|r| match r {
            StreamResult::Error { error } => Some(error),
            _ => None,
        })
        .collect();
    assert_eq!(
        errors,
        [
            &error(
                "SQLite error: UNIQUE constraint failed: t.id",
                "SQLITE_CONSTRAINT"
            ),
            &error(
                "SQL string could not be parsed: near SELEC: syntax error",
                "SQL_PARSE_ERROR"
            ),
        ]
    );
    assert!(is_close(&resp.results[2]));
}

#[test]
fn cursor_stream_skips_replication_index() {
    let mut lines = CURSOR.lines();
    let head: CursorRespBody = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!(head.baton.as_deref(), Some("Zm9vYmFyYmF6cXV4"));
    assert_eq!(head.base_url.as_deref(), Some("http://127.0.0.1:8080"));
    let entries: Vec<CursorEntry> = lines
        .filter_map(|l| CursorEntry::decode(l.as_bytes()).unwrap())
        .collect();
    assert_eq!(
        entries,
        vec![
            CursorEntry::StepBegin {
                step: 0,
                cols: serde_json::from_str(
                    r#"[{"name":"id","decltype":"INTEGER"},{"name":"email","decltype":"TEXT"}]"#
                )
                .unwrap(),
            },
            CursorEntry::Row {
                row: vec![Value::Integer(1), Value::Text("a@b".into())]
            },
            CursorEntry::Row {
                row: vec![Value::Integer(2), Value::Null]
            },
            CursorEntry::StepEnd {
                affected_row_count: 0,
                last_insert_rowid: None
            },
            CursorEntry::StepBegin {
                step: 1,
                cols: vec![]
            },
            // sqld writes this rowid as a JSON number, not a string.
            CursorEntry::StepEnd {
                affected_row_count: 1,
                last_insert_rowid: Some("42".into())
            },
            CursorEntry::StepError {
                step: 2,
                error: error("SQLite error: no such table: missing", "SQLITE_ERROR"),
            },
        ]
    );
    // The last line is sqld's replication_index entry: skipped, not an error.
    let last = CURSOR.lines().last().unwrap();
    assert!(last.contains("\"replication_index\""));
    assert_eq!(CursorEntry::decode(last.as_bytes()).unwrap(), None);
}

#[test]
fn cursor_error_entry_and_null_replication_index() {
    let mut lines = CURSOR_ERROR.lines();
    let head: CursorRespBody = serde_json::from_str(lines.next().unwrap()).unwrap();
    assert_eq!((head.baton, head.base_url), (None, None));
    let entries: Vec<Option<CursorEntry>> = lines
        .map(|l| CursorEntry::decode(l.as_bytes()).unwrap())
        .collect();
    assert_eq!(
        entries,
        vec![
            Some(CursorEntry::Error {
                error: error("Transaction timed out", "TRANSACTION_TIMEOUT"),
            }),
            None,
        ]
    );
}

#[test]
fn http_error_body_is_an_error_object() {
    let e: Error = serde_json::from_str(HTTP_ERROR_STREAM_EXPIRED).unwrap();
    assert_eq!(
        e,
        error("The stream has expired due to inactivity", "STREAM_EXPIRED")
    );
}

#[test]
fn unknown_cursor_entries_are_skipped_and_known_ones_stay_strict() {
    for skipped in [
        r#"{"type":"replication_index","replication_index":7}"#,
        r#"{"type":"replication_index","replication_index":null}"#,
        r#"{"type":"replication_index"}"#,
        r#"{"type":"progress","rows":10,"nested":{"a":[1,2]}}"#,
        r#"{"type":"martian"}"#,
    ] {
        assert_eq!(
            CursorEntry::decode(skipped.as_bytes()).unwrap(),
            None,
            "{skipped}"
        );
    }
    // Unknown fields of a known entry are ignored.
    assert_eq!(
        CursorEntry::decode(
            br#"{"type":"row","row":[{"type":"integer","value":"5","extra":1}],"seq":9}"#
        )
        .unwrap(),
        Some(CursorEntry::Row {
            row: vec![Value::Integer(5)]
        })
    );
    for bad in [
        // no type at all
        r#"{"row":[]}"#,
        // known types of the wrong shape
        r#"{"type":"row"}"#,
        r#"{"type":"row","row":[{"type":"integer","value":"x"}]}"#,
        r#"{"type":"row","row":[{"type":"blob","base64":"!!"}]}"#,
        r#"{"type":"step_begin","cols":[]}"#,
        r#"{"type":"step_end","affected_row_count":"many"}"#,
        r#"{"type":"step_end","affected_row_count":1,"last_insert_rowid":1.5}"#,
        r#"{"type":"step_error","step":0}"#,
        r#"{"type":"error","error":{"code":"X"}}"#,
        // not an object, or not JSON
        r#"[]"#,
        r#"{"type":"row","row":[]"#,
        "\u{1}\u{2}",
    ] {
        assert!(CursorEntry::decode(bad.as_bytes()).is_err(), "{bad}");
    }
}

#[test]
fn unknown_fields_and_response_types_are_tolerated() {
    // Fields nobody defined yet, at every level, are ignored.
    let resp: PipelineRespBody = serde_json::from_str(
        r#"{"baton":null,"base_url":null,"future":{"x":1},"results":[
            {"type":"ok","hint":"h","response":{"type":"execute","extra":[1],"result":{
                "cols":[{"name":"a","decltype":null,"origin":"t"}],
                "rows":[[{"type":"integer","value":"1"}]],
                "affected_row_count":0,"last_insert_rowid":null,"new_stat":3}}},
            {"type":"error","error":{"message":"m","code":"C","details":{"offset":3}}},
            {"type":"ok","response":{"type":"teleport","result":{"x":1}}}]}"#,
    )
    .unwrap();
    assert_eq!(
        execute_result(&resp.results[0]).rows,
        vec![vec![Value::Integer(1)]]
    );
    assert!(matches!(
        &resp.results[1],
        StreamResult::Error { error } if error.message == "m" && error.code.as_deref() == Some("C")
    ));
    // A response of an unknown type decodes; whoever needed a particular
    // response sees that this is not it.
    assert!(matches!(
        &resp.results[2],
        StreamResult::Ok {
            response: StreamResponse::Unknown
        }
    ));
    // A known response still needs its fields, and a result must be ok or
    // error: without that the client cannot tell what happened.
    for bad in [
        r#"{"type":"ok","response":{"type":"execute"}}"#,
        r#"{"type":"ok","response":{"type":"batch","result":{"step_results":[]}}}"#,
        r#"{"type":"ok"}"#,
        r#"{"type":"maybe","response":{"type":"close"}}"#,
        r#"{"type":"error","error":"a string"}"#,
    ] {
        assert!(serde_json::from_str::<StreamResult>(bad).is_err(), "{bad}");
    }
}
