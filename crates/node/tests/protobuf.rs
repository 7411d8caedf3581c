//! The Protobuf encoding (`/v3-protobuf/pipeline`, `/v3-protobuf/cursor`)
//! against JSON: one corpus of requests — every request type, batch
//! condition and value type, errors, an interactive stream continued by a
//! cursor and back, a large cursor, bad batons — runs on two fresh nodes,
//! one spoken to in JSON and one in Protobuf, and every answer must decode
//! to the same thing (the only differences allowed: batons, which are
//! random, durations, and the trailing skipped steps of a batch, which the
//! Protobuf map does not carry).

mod common;

use common::request;
use conductor_hrana::protobuf as pb;
use conductor_hrana::{
    Batch, BatchCond, BatchStep, CursorEntry, CursorReqBody, CursorRespBody, Error, NamedArg,
    PipelineReqBody, PipelineRespBody, Stmt, StreamRequest, StreamResponse, StreamResult, Value,
};
use prost::Message as _;
use std::net::SocketAddr;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Enc {
    Json,
    Protobuf,
}

/// What one step of the corpus got back, decoded and normalized.
#[derive(Debug, PartialEq)]
enum Answer {
    Pipeline(PipelineRespBody),
    Cursor(CursorRespBody, Vec<CursorEntry>),
    /// A request that failed as a whole: its status and code (the messages
    /// of undecodable bodies differ by encoding).
    Failed(u16, Option<String>),
}

/// A step of the corpus: a pipeline or a cursor, on a new stream, on the
/// stream of the previous answer, or with a baton that is not valid.
#[derive(Clone)]
enum Step {
    Pipeline(Baton, Vec<StreamRequest>),
    Cursor(Baton, Batch),
    /// A body that decodes in neither encoding.
    Garbage(&'static str),
}

#[derive(Clone, Copy)]
enum Baton {
    New,
    Continue,
    Forged,
}

struct Client {
    addr: SocketAddr,
    enc: Enc,
    baton: Option<String>,
}

impl Client {
    fn post(&self, what: &str, body: Vec<u8>) -> common::Resp {
        let (path, ct) = match self.enc {
            Enc::Json => (format!("/v3/{what}"), "application/json"),
            Enc::Protobuf => (format!("/v3-protobuf/{what}"), "application/x-protobuf"),
        };
        request(self.addr, "POST", &path, &[("Content-Type", ct)], &body)
    }

    fn baton(&self, b: Baton) -> Option<String> {
        match b {
            Baton::New => None,
            Baton::Continue => Some(self.baton.clone().expect("a stream to continue")),
            Baton::Forged => Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()),
        }
    }

    fn failed(&self, r: &common::Resp) -> Answer {
        let e: Error = match self.enc {
            Enc::Json => serde_json::from_slice(&r.body).expect("a JSON error body"),
            Enc::Protobuf => pb::Error::decode(&*r.body)
                .expect("a Protobuf error body")
                .into(),
        };
        assert!(!e.message.is_empty());
        Answer::Failed(r.status, e.code)
    }

    fn run(&mut self, step: &Step) -> Answer {
        match step {
            Step::Pipeline(b, requests) => {
                let req = PipelineReqBody {
                    baton: self.baton(*b),
                    requests: requests.clone(),
                };
                let body = match self.enc {
                    Enc::Json => serde_json::to_vec(&req).unwrap(),
                    Enc::Protobuf => pb::PipelineReqBody::from(req).encode_to_vec(),
                };
                let r = self.post("pipeline", body);
                if r.status != 200 {
                    return self.failed(&r);
                }
                let content_type = r.header("content-type").unwrap();
                let resp: PipelineRespBody = match self.enc {
                    Enc::Json => {
                        assert_eq!(content_type, "application/json");
                        serde_json::from_slice(&r.body).unwrap()
                    }
                    Enc::Protobuf => {
                        assert_eq!(content_type, "application/x-protobuf");
                        pb::PipelineRespBody::decode(&*r.body).unwrap().into()
                    }
                };
                self.baton = resp.baton.clone();
                Answer::Pipeline(normalize(resp))
            }
            Step::Cursor(b, batch) => {
                let req = CursorReqBody {
                    baton: self.baton(*b),
                    batch: batch.clone(),
                };
                let body = match self.enc {
                    Enc::Json => serde_json::to_vec(&req).unwrap(),
                    Enc::Protobuf => pb::CursorReqBody::from(req).encode_to_vec(),
                };
                let r = self.post("cursor", body);
                if r.status != 200 {
                    return self.failed(&r);
                }
                let (head, entries) = match self.enc {
                    Enc::Json => {
                        let text = r.text();
                        let mut lines = text.lines();
                        let head: CursorRespBody =
                            serde_json::from_str(lines.next().unwrap()).unwrap();
                        let entries = lines
                            .map(|l| CursorEntry::decode(l.as_bytes()).unwrap().unwrap())
                            .collect::<Vec<_>>();
                        (head, entries)
                    }
                    Enc::Protobuf => {
                        assert_eq!(
                            r.header("content-type").unwrap(),
                            "application/octet-stream"
                        );
                        let mut buf = &r.body[..];
                        let head: CursorRespBody =
                            pb::CursorRespBody::decode_length_delimited(&mut buf)
                                .unwrap()
                                .into();
                        let mut entries = Vec::new();
                        while !buf.is_empty() {
                            let e = pb::CursorEntry::decode_length_delimited(&mut buf).unwrap();
                            entries.push(pb::cursor_entry_from_pb(e).expect("a known entry"));
                        }
                        (head, entries)
                    }
                };
                self.baton = head.baton.clone();
                let head = CursorRespBody {
                    baton: head.baton.map(|_| "<baton>".into()),
                    base_url: head.base_url,
                };
                Answer::Cursor(head, entries)
            }
            Step::Garbage(body) => {
                let r = self.post("pipeline", body.as_bytes().to_vec());
                assert_eq!(r.status, 400, "{}", r.text());
                self.failed(&r)
            }
        }
    }
}

/// Batons are random and durations vary; a batch's trailing skipped steps
/// are not in the Protobuf encoding.
fn normalize(mut resp: PipelineRespBody) -> PipelineRespBody {
    resp.baton = resp.baton.map(|_| "<baton>".into());
    for r in &mut resp.results {
        match r {
            StreamResult::Ok {
                response: StreamResponse::Execute { result },
            } => {
                assert!(result.query_duration_ms.is_some());
                result.query_duration_ms = None;
            }
            StreamResult::Ok {
                response: StreamResponse::Batch { result },
            } => {
                for s in result.step_results.iter_mut().flatten() {
                    s.query_duration_ms = None;
                }
                while matches!(
                    (result.step_results.last(), result.step_errors.last()),
                    (Some(None), Some(None))
                ) {
                    result.step_results.pop();
                    result.step_errors.pop();
                }
            }
            _ => {}
        }
    }
    resp
}

fn stmt(sql: &str, args: Vec<Value>) -> Stmt {
    Stmt::new(sql, args)
}

fn exec(sql: &str, args: Vec<Value>) -> StreamRequest {
    StreamRequest::Execute {
        stmt: stmt(sql, args),
    }
}

fn step(sql: &str, condition: Option<BatchCond>) -> BatchStep {
    BatchStep {
        stmt: stmt(sql, vec![]),
        condition,
    }
}

fn corpus() -> Vec<Step> {
    use Baton::*;
    let close = StreamRequest::Close;
    let values = vec![
        Value::Null,
        Value::Integer(i64::MIN),
        Value::Integer(i64::MAX),
        Value::Integer(0),
        Value::Float(-0.0),
        Value::Float(5e-324),
        Value::Float(1e308),
        Value::Float(0.1),
        Value::Text(String::new()),
        Value::Text("héllo ' \" ;-- \u{1F600} \\ \n \u{0}".into()),
        Value::Blob(vec![]),
        Value::Blob((0..=255).collect()),
    ];
    let mut inserts: Vec<StreamRequest> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            exec(
                "INSERT INTO t(id, v) VALUES (?, ?)",
                vec![Value::Integer(i as i64 + 1), v.clone()],
            )
        })
        .collect();
    inserts.push(StreamRequest::Execute {
        stmt: Stmt {
            sql: Some("INSERT INTO t(id, v) VALUES (:id, @v)".into()),
            named_args: vec![
                NamedArg {
                    name: "id".into(),
                    value: Value::Integer(100),
                },
                NamedArg {
                    name: "@v".into(),
                    value: Value::Text("named".into()),
                },
            ],
            ..Default::default()
        },
    });
    inserts.push(close.clone());
    let ok = |step| Some(BatchCond::Ok { step });
    vec![
        Step::Pipeline(
            New,
            vec![
                exec(
                    "CREATE TABLE t(id INTEGER PRIMARY KEY, v, note TEXT DEFAULT 'n')",
                    vec![],
                ),
                close.clone(),
            ],
        ),
        Step::Pipeline(New, inserts),
        Step::Pipeline(
            New,
            vec![
                exec("SELECT id, v, typeof(v), note FROM t ORDER BY id", vec![]),
                StreamRequest::Execute {
                    stmt: Stmt {
                        want_rows: Some(false),
                        ..stmt("SELECT * FROM t", vec![])
                    },
                },
                exec("SELECT ?, ?, ?", values[9..12].to_vec()),
                close.clone(),
            ],
        ),
        // Errors of single requests.
        Step::Pipeline(
            New,
            vec![
                exec("INSERT INTO t(id) VALUES (1)", vec![]),
                exec("SELEC 1", vec![]),
                exec("SELECT ?", vec![]),
                exec("SELECT 1", vec![Value::Integer(1)]),
                exec("SELECT 1; SELECT 2", vec![]),
                // (A float infinity answers differently: see
                // float_infinities_travel_in_protobuf_only.)
                exec("SELECT abs(-9223372036854775808)", vec![]),
                close.clone(),
            ],
        ),
        // Every batch condition; the last step is skipped.
        Step::Pipeline(
            New,
            vec![
                StreamRequest::Batch {
                    batch: Batch {
                        steps: vec![
                            step("BEGIN", None),
                            step("INSERT INTO t(id, v) VALUES (200, 'b')", ok(0)),
                            step("INSERT INTO t(id, v) VALUES (200, 'dup')", ok(1)),
                            step("SELECT 'after error'", Some(BatchCond::Error { step: 2 })),
                            step(
                                "SELECT 'not'",
                                Some(BatchCond::Not {
                                    cond: Box::new(BatchCond::Ok { step: 2 }),
                                }),
                            ),
                            step(
                                "SELECT 'and'",
                                Some(BatchCond::And {
                                    conds: vec![
                                        BatchCond::Ok { step: 0 },
                                        BatchCond::Error { step: 2 },
                                    ],
                                }),
                            ),
                            step(
                                "SELECT 'or'",
                                Some(BatchCond::Or {
                                    conds: vec![BatchCond::Ok { step: 2 }, BatchCond::IsAutocommit],
                                }),
                            ),
                            step("COMMIT", Some(BatchCond::Not {
                                cond: Box::new(BatchCond::IsAutocommit),
                            })),
                            step("SELECT count(*) FROM t", None),
                            step("SELECT 'never'", ok(2)),
                        ],
                    },
                },
                // A condition on a later step makes the whole batch fail.
                StreamRequest::Batch {
                    batch: Batch {
                        steps: vec![step("SELECT 'bad condition'", ok(99))],
                    },
                },
                close.clone(),
            ],
        ),
        // Stored SQL, sequence, describe, autocommit.
        Step::Pipeline(
            New,
            vec![
                StreamRequest::StoreSql {
                    sql_id: 1,
                    sql: "SELECT count(*), sum(id) FROM t".into(),
                },
                StreamRequest::Execute {
                    stmt: Stmt {
                        sql_id: Some(1),
                        ..Default::default()
                    },
                },
                StreamRequest::Sequence {
                    sql: Some(
                        "INSERT INTO t(id, v) VALUES (300, 'a'); INSERT INTO t(id, v) VALUES (301, 'b');"
                            .into(),
                    ),
                    sql_id: None,
                },
                StreamRequest::Describe {
                    sql: Some("SELECT id, v AS value FROM t WHERE id = :id AND v = ?".into()),
                    sql_id: None,
                },
                StreamRequest::Describe {
                    sql: Some("EXPLAIN SELECT 1".into()),
                    sql_id: None,
                },
                StreamRequest::CloseSql { sql_id: 1 },
                StreamRequest::Execute {
                    stmt: Stmt {
                        sql_id: Some(1),
                        ..Default::default()
                    },
                },
                StreamRequest::GetAutocommit,
                close.clone(),
            ],
        ),
        // An interactive stream, continued by a cursor, then by a pipeline.
        Step::Pipeline(
            New,
            vec![
                exec("BEGIN", vec![]),
                exec("INSERT INTO t(id, v) VALUES (400, 'in tx')", vec![]),
                StreamRequest::GetAutocommit,
            ],
        ),
        Step::Cursor(
            Continue,
            Batch {
                steps: vec![
                    step("SELECT id, v FROM t WHERE id >= 100 ORDER BY id", None),
                    step("SELECT nope FROM t", None),
                    step("SELECT 'skipped'", ok(1)),
                    step("UPDATE t SET note = 'u' WHERE id = 400", Some(BatchCond::Error { step: 1 })),
                    step("SELECT 'bad condition'", ok(9)),
                ],
            },
        ),
        Step::Pipeline(
            Continue,
            vec![
                StreamRequest::GetAutocommit,
                exec("SELECT note FROM t WHERE id = 400", vec![]),
                exec("ROLLBACK", vec![]),
                close.clone(),
            ],
        ),
        // A cursor of many rows (several chunks) on a new stream.
        Step::Pipeline(
            New,
            vec![
                exec(
                    "WITH RECURSIVE c(i) AS (SELECT 1000 UNION ALL SELECT i + 1 FROM c WHERE i < 6000) \
                     INSERT INTO t(id, v) SELECT i, printf('row %d', i) FROM c",
                    vec![],
                ),
                close.clone(),
            ],
        ),
        Step::Cursor(
            New,
            Batch {
                steps: vec![step("SELECT id, v, x'00ff', id * 0.5 FROM t ORDER BY id", None)],
            },
        ),
        // Requests that fail as a whole.
        Step::Pipeline(Forged, vec![close.clone()]),
        Step::Cursor(Forged, Batch { steps: vec![] }),
        Step::Garbage("\u{1}\u{2}not a body\u{ff}"),
        // The end state.
        Step::Pipeline(
            New,
            vec![
                exec("SELECT count(*), sum(id), max(v) FROM t", vec![]),
                close,
            ],
        ),
    ]
}

#[test]
fn json_and_protobuf_answer_the_same() {
    let json_node = common::node();
    let pb_node = common::node();
    let mut json = Client {
        addr: json_node.addr(),
        enc: Enc::Json,
        baton: None,
    };
    let mut protobuf = Client {
        addr: pb_node.addr(),
        enc: Enc::Protobuf,
        baton: None,
    };
    let mut answers = 0;
    let mut all = Vec::new();
    for (i, step) in corpus().iter().enumerate() {
        let a = json.run(step);
        let b = protobuf.run(step);
        if let (Answer::Cursor(ha, ea), Answer::Cursor(hb, eb)) = (&a, &b) {
            // Entry by entry: a failure names the first difference only.
            assert_eq!(ha, hb, "step {i}");
            for (n, (x, y)) in ea.iter().zip(eb).enumerate() {
                assert_eq!(x, y, "step {i}, entry {n}");
            }
            assert_eq!(ea.len(), eb.len(), "step {i}");
            answers += ea.len();
        }
        assert_eq!(a, b, "step {i}");
        all.push(a);
    }
    // The corpus reached what it was meant to (and not, say, the same
    // failure on both sides).
    let results = |i: usize| match &all[i] {
        Answer::Pipeline(p) => p.results.clone(),
        other => panic!("step {i}: {other:?}"),
    };
    let errors = |i: usize| -> Vec<Option<String>> {
        results(i)
            .into_iter()
            .filter_map(|r| match r {
                StreamResult::Error { error } => Some(error.code),
                _ => None,
            })
            .collect()
    };
    assert!(errors(1).is_empty() && errors(2).is_empty());
    assert_eq!(errors(3).len(), 6, "{:?}", errors(3));
    assert_eq!(
        errors(3)[0].as_deref(),
        Some("SQLITE_CONSTRAINT_PRIMARYKEY")
    );
    match &results(4)[0] {
        StreamResult::Ok {
            response: StreamResponse::Batch { result },
        } => {
            assert_eq!(
                result.step_errors[2].as_ref().unwrap().code.as_deref(),
                Some("SQLITE_CONSTRAINT_PRIMARYKEY")
            );
            assert!(result.step_results[3].is_some() && result.step_results[8].is_some());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(errors(4), [Some("BATCH_COND_INVALID".into())]);
    assert!(matches!(
        &results(5)[3],
        StreamResult::Ok { response: StreamResponse::Describe { result } }
            if result.params.len() == 2 && result.cols.len() == 2
    ));
    assert!(matches!(&all[7], Answer::Cursor(_, e) if e.len() > 10));
    assert_eq!(all[11], Answer::Failed(400, Some("BATON_INVALID".into())));
    assert_eq!(all[12], Answer::Failed(400, Some("BATON_INVALID".into())));
    assert_eq!(all[13], Answer::Failed(400, Some("PROTOCOL_ERROR".into())));
    // The corpus did reach the rows it was meant to.
    assert!(answers > 5000, "{answers}");
    let stats = |addr| common::get(addr, "/stats").json();
    let s = stats(pb_node.addr());
    assert_eq!(s["requests"]["/v3-protobuf/pipeline"], 12, "{s}");
    assert_eq!(s["requests"]["/v3-protobuf/cursor"], 3, "{s}");
    assert_eq!(s["requests"]["/v3/pipeline"], 0, "{s}");
}

#[test]
fn protobuf_errors_are_protobuf() {
    let n = common::node_with(|c| c.auth_token = Some("tok".into()));
    let body = pb::PipelineReqBody::from(PipelineReqBody {
        baton: None,
        requests: vec![StreamRequest::Close],
    })
    .encode_to_vec();
    let r = request(n.addr(), "POST", "/v3-protobuf/pipeline", &[], &body);
    assert_eq!(r.status, 401);
    // Authentication fails before the endpoint's encoding is known: JSON.
    assert_eq!(r.json()["code"], "UNAUTHORIZED");
    let auth = [("Authorization", "Bearer tok")];
    let r = request(n.addr(), "POST", "/v3-protobuf/pipeline", &auth, &body);
    assert_eq!(r.status, 200);
    let resp: PipelineRespBody = pb::PipelineRespBody::decode(&*r.body).unwrap().into();
    assert_eq!(
        resp.results,
        vec![StreamResult::Ok {
            response: StreamResponse::Close
        }]
    );
    // A request with a member of an unknown kind is a protocol error, sent
    // as a Protobuf Error.
    let unknown_request = [0x12, 2, 0x4a, 0x00];
    let r = request(
        n.addr(),
        "POST",
        "/v3-protobuf/pipeline",
        &auth,
        &unknown_request,
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
    let e: Error = pb::Error::decode(&*r.body).unwrap().into();
    assert_eq!(e.code.as_deref(), Some("PROTOCOL_ERROR"));
    assert!(e.message.contains("Protobuf"), "{}", e.message);
    // A JSON body sent to the Protobuf endpoint does not decode.
    let r = request(
        n.addr(),
        "POST",
        "/v3-protobuf/cursor",
        &auth,
        br#"{"baton":null,"batch":{"steps":[]}}"#,
    );
    assert_eq!(r.status, 400);
}

#[test]
fn float_infinities_travel_in_protobuf_only() {
    let node = common::node();
    let mut protobuf = Client {
        addr: node.addr(),
        enc: Enc::Protobuf,
        baton: None,
    };
    let mut json = Client {
        addr: node.addr(),
        enc: Enc::Json,
        baton: None,
    };
    let (inf, ninf) = (f64::INFINITY, f64::NEG_INFINITY);
    let select = "SELECT x FROM f ORDER BY x";
    let a = protobuf.run(&Step::Pipeline(
        Baton::New,
        vec![
            exec("CREATE TABLE f(x)", vec![]),
            exec(
                "INSERT INTO f VALUES (?), (?), (?)",
                vec![Value::Float(inf), Value::Float(ninf), Value::Float(-0.0)],
            ),
            exec(select, vec![]),
            StreamRequest::Close,
        ],
    ));
    let Answer::Pipeline(resp) = a else {
        panic!("{a:?}")
    };
    let StreamResult::Ok {
        response: StreamResponse::Execute { result },
    } = &resp.results[2]
    else {
        panic!("{:?}", resp.results[2])
    };
    let got: Vec<u64> = result
        .rows
        .iter()
        .map(|r| match r[0] {
            Value::Float(f) => f.to_bits(),
            ref other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(got, [ninf.to_bits(), (-0.0f64).to_bits(), inf.to_bits()]);
    let a = protobuf.run(&Step::Cursor(
        Baton::New,
        Batch {
            steps: vec![step(select, None)],
        },
    ));
    assert!(
        matches!(&a, Answer::Cursor(_, e) if e.iter().filter(|e| matches!(e, CursorEntry::Row { .. })).count() == 3),
        "{a:?}"
    );

    // JSON has no form for them: the statement fails, saying so; the
    // others of the request still answer.
    let a = json.run(&Step::Pipeline(
        Baton::New,
        vec![
            exec(select, vec![]),
            exec("SELECT count(*) FROM f", vec![]),
            StreamRequest::Close,
        ],
    ));
    let Answer::Pipeline(resp) = a else {
        panic!("{a:?}")
    };
    match &resp.results[0] {
        StreamResult::Error { error } => {
            assert_eq!(error.code.as_deref(), Some("VALUE_NOT_REPRESENTABLE"));
            assert!(error.message.contains("Infinity"), "{}", error.message);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(&resp.results[1], StreamResult::Ok { .. }));
    let a = json.run(&Step::Cursor(
        Baton::New,
        Batch {
            steps: vec![step(select, None)],
        },
    ));
    assert!(
        matches!(&a, Answer::Cursor(_, e) if e.iter().any(|e| matches!(e, CursorEntry::StepError { error, .. } if error.code.as_deref() == Some("VALUE_NOT_REPRESENTABLE")))),
        "{a:?}"
    );
}
