//! Client and executor against real in-process conductor-nodes (SQLite):
//! DDL and batched inserts built by `remote_sql`, every column type through
//! SQLite and back, SQL error codes, auth, and fan-out parallelism.

// ShardError is returned by value on purpose (it is what the FFI side reports).
#![allow(clippy::result_large_err)]

use conductor_core::client::{first_error, NodeEndpoint, NodeError};
use conductor_core::executor::{
    ExecHandle, Executor, ExecutorConfig, ScanHandle, ScanOptions, ScanPoll, ShardQuery,
    ShardRequest,
};
use conductor_core::placement::{shard_for, KeyValue};
use conductor_core::remote_sql::{
    create_table_sql, insert_sql, max_rows_per_insert, select_sql, shard_table_name,
};
use conductor_core::types::{ColumnType, TypedValue};
use conductor_core::ShardError;
use conductor_hrana::{PipelineReqBody, PipelineRespBody, Stmt, StreamRequest, Value};
use conductor_node::{spawn, Config, RunningNode};
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(50);

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

fn executes(ep: &NodeEndpoint, shard: Option<u32>, stmts: Vec<Stmt>) -> ShardRequest {
    ShardRequest {
        shard_id: shard,
        endpoint: ep.clone(),
        body: PipelineReqBody {
            baton: None,
            requests: stmts
                .into_iter()
                .map(|stmt| StreamRequest::Execute { stmt })
                .chain(std::iter::once(StreamRequest::Close))
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

fn run_ok(ex: &Executor, reqs: Vec<ShardRequest>) {
    for r in run(ex, reqs) {
        let resp = r.expect("request succeeds");
        assert!(first_error(&resp).is_none(), "{:?}", first_error(&resp));
    }
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

/// One column of every type, named hostilely; `id` is the key.
fn columns() -> Vec<(String, ColumnType, bool)> {
    let mut cols = vec![("id".to_string(), ColumnType::Int8, true)];
    for t in ColumnType::ALL {
        cols.push((format!("c \"{t}\"; --"), t, false));
    }
    cols
}

fn sample_rows() -> Vec<Vec<Option<TypedValue>>> {
    let full = |id: i64, flip: bool| -> Vec<Option<TypedValue>> {
        vec![
            Some(TypedValue::Int8(id)),
            Some(TypedValue::Int2(if flip { i16::MIN } else { i16::MAX })),
            Some(TypedValue::Int4(if flip { i32::MIN } else { i32::MAX })),
            Some(TypedValue::Int8(if flip { i64::MIN } else { i64::MAX })),
            Some(TypedValue::Float4(if flip { -1.5e38 } else { 0.1 })),
            Some(TypedValue::Float8(if flip { -0.0 } else { 5e-324 })),
            Some(TypedValue::Numeric(if flip {
                "NaN".into()
            } else {
                "-1234567890123456789012345678901234567890.0000000001".into()
            })),
            Some(TypedValue::Bool(flip)),
            Some(TypedValue::Text("héllo 🦀 '\"; -- \u{7}".into())),
            Some(TypedValue::Text("varchar".into())),
            Some(TypedValue::Text("bpchar    ".into())),
            Some(TypedValue::Bytea(if flip {
                vec![]
            } else {
                (0..=255).collect()
            })),
            Some(TypedValue::Uuid([if flip { 0 } else { 0xff }; 16])),
            Some(TypedValue::Date(if flip { i32::MIN } else { -1_000_000 })),
            Some(TypedValue::Timestamp(if flip { i64::MAX } else { -1 })),
            Some(TypedValue::Timestamp(0)),
            Some(TypedValue::Json("{\"a\": [1, \"x\"]}".into())),
            Some(TypedValue::Json("{}".into())),
        ]
    };
    let mut nulls = vec![None; columns().len()];
    nulls[0] = Some(TypedValue::Int8(3));
    vec![full(1, false), full(2, true), nulls]
}

#[test]
fn every_type_round_trips_through_sharded_tables() {
    let nodes: Vec<RunningNode> = (0..2).map(|_| node(|_| {})).collect();
    let eps: Vec<NodeEndpoint> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| endpoint(i, n))
        .collect();
    let shard_count = 4u32;
    // Shards round-robin over the nodes, as the extension places them.
    let ep_of = |shard: u32| &eps[shard as usize % eps.len()];
    let base = "tab\"le; DROP TABLE x; --";
    let cols = columns();
    let col_defs: Vec<(&str, ColumnType, bool)> = cols
        .iter()
        .map(|(n, t, nn)| (n.as_str(), *t, *nn))
        .collect();
    let names: Vec<&str> = cols.iter().map(|(n, _, _)| n.as_str()).collect();
    let ex = Executor::new(ExecutorConfig::default());

    run_ok(
        &ex,
        (0..shard_count)
            .map(|s| {
                let sql = create_table_sql(&shard_table_name(base, s), &col_defs, &["id"]);
                executes(ep_of(s), Some(s), vec![Stmt::new(sql, vec![])])
            })
            .collect(),
    );

    // Route each row by its key; one multi-row INSERT per shard.
    let rows = sample_rows();
    let mut per_shard: Vec<Vec<Value>> = vec![Vec::new(); shard_count as usize];
    let mut counts = vec![0usize; shard_count as usize];
    for row in &rows {
        let Some(TypedValue::Int8(id)) = row[0] else {
            panic!("key")
        };
        let s = shard_for(&KeyValue::Int(id), shard_count) as usize;
        counts[s] += 1;
        for (v, name) in row.iter().zip(&names) {
            per_shard[s].push(match v {
                Some(tv) => tv.to_value(name).expect("encodable"),
                None => Value::Null,
            });
        }
    }
    run_ok(
        &ex,
        (0..shard_count)
            .filter(|&s| counts[s as usize] > 0)
            .map(|s| {
                let sql = insert_sql(&shard_table_name(base, s), &names, counts[s as usize]);
                let args = std::mem::take(&mut per_shard[s as usize]);
                executes(ep_of(s), Some(s), vec![Stmt::new(sql, args)])
            })
            .collect(),
    );

    // Scan all shards at once and decode.
    let mut scan = ex.scan(
        (0..shard_count)
            .map(|s| ShardQuery {
                shard_id: s,
                endpoint: ep_of(s).clone(),
                stmt: Stmt::new(select_sql(&shard_table_name(base, s), &names, None), vec![]),
            })
            .collect(),
        ScanOptions::new(names.len()),
    );
    let mut got: Vec<(u32, Vec<Option<TypedValue>>)> = scan_all(&mut scan)
        .expect("scan")
        .into_iter()
        .map(|(shard, row)| {
            let decoded = row
                .iter()
                .zip(&cols)
                .map(|(v, (name, ty, _))| TypedValue::from_value(name, *ty, v).expect("decodes"))
                .collect();
            (shard, decoded)
        })
        .collect();
    got.sort_by_key(|(_, r)| match r[0] {
        Some(TypedValue::Int8(id)) => id,
        _ => i64::MAX,
    });
    assert_eq!(got.len(), rows.len());
    for ((shard, g), want) in got.iter().zip(&rows) {
        // Every row sits on the shard placement names.
        let Some(TypedValue::Int8(id)) = want[0] else {
            panic!("key")
        };
        assert_eq!(*shard, shard_for(&KeyValue::Int(id), shard_count));
        for ((a, b), (name, _, _)) in g.iter().zip(want).zip(&cols) {
            match (a, b) {
                (Some(TypedValue::Float8(x)), Some(TypedValue::Float8(y))) => {
                    assert_eq!(x.to_bits(), y.to_bits(), "{name}")
                }
                _ => assert_eq!(a, b, "{name}"),
            }
        }
    }
    assert_eq!(
        scan.stats().iter().map(|s| s.rows).sum::<u64>(),
        rows.len() as u64
    );
}

#[test]
fn stored_encodings_sort_like_postgres() {
    let n = node(|_| {});
    let ep = endpoint(0, &n);
    let ex = Executor::new(ExecutorConfig::default());
    let cols = [
        ("d", ColumnType::Date, false),
        ("ts", ColumnType::Timestamptz, false),
        ("u", ColumnType::Uuid, false),
    ];
    let names = ["d", "ts", "u"];
    // In Postgres order: -infinity/BC first, infinity last; uuids by bytes.
    let ordered = [
        (i32::MIN, i64::MIN, [0x00u8; 16]),
        (-800_000, -1, [0x0a; 16]),
        (0, 0, [0x9f; 16]),
        (9000, 1, [0xa0; 16]),
        (i32::MAX, i64::MAX, [0xff; 16]),
    ];
    let mut args = Vec::new();
    for (d, ts, u) in ordered.iter().rev() {
        args.push(TypedValue::Date(*d).to_value("d").expect("d"));
        args.push(TypedValue::Timestamp(*ts).to_value("ts").expect("ts"));
        args.push(TypedValue::Uuid(*u).to_value("u").expect("u"));
    }
    run_ok(
        &ex,
        vec![executes(
            &ep,
            None,
            vec![
                Stmt::new(create_table_sql("o", &cols, &[]), vec![]),
                Stmt::new(insert_sql("o", &names, ordered.len()), args),
            ],
        )],
    );
    for (i, col) in names.iter().enumerate() {
        let sql = format!("{} ORDER BY \"{col}\"", select_sql("o", &names, None));
        let mut scan = ex.scan(
            vec![ShardQuery {
                shard_id: 0,
                endpoint: ep.clone(),
                stmt: Stmt::new(sql, vec![]),
            }],
            ScanOptions::new(3),
        );
        let rows = scan_all(&mut scan).expect("scan");
        let got: Vec<Option<TypedValue>> = rows
            .iter()
            .map(|(_, r)| TypedValue::from_value(col, cols[i].1, &r[i]).expect("decode"))
            .collect();
        let want: Vec<Option<TypedValue>> = ordered
            .iter()
            .map(|(d, ts, u)| {
                Some(match i {
                    0 => TypedValue::Date(*d),
                    1 => TypedValue::Timestamp(*ts),
                    _ => TypedValue::Uuid(*u),
                })
            })
            .collect();
        assert_eq!(got, want, "ORDER BY {col}");
    }
}

#[test]
fn constraint_violations_carry_sqlite_codes() {
    let n = node(|_| {});
    let ep = endpoint(0, &n);
    let ex = Executor::new(ExecutorConfig::default());
    let create = create_table_sql("k", &[("id", ColumnType::Int8, true)], &["id"]);
    let insert = || Stmt::new(insert_sql("k", &["id"], 1), vec![Value::Integer(1)]);
    run_ok(
        &ex,
        vec![executes(
            &ep,
            Some(0),
            vec![Stmt::new(create, vec![]), insert()],
        )],
    );
    let results = run(&ex, vec![executes(&ep, Some(0), vec![insert()])]);
    let resp = results[0].as_ref().expect("a 200 reply");
    let e = first_error(resp).expect("duplicate key");
    assert_eq!(e.code.as_deref(), Some("SQLITE_CONSTRAINT_PRIMARYKEY"));

    // A failing scan statement reports the node's code through ShardError.
    let mut scan = ex.scan(
        vec![ShardQuery {
            shard_id: 9,
            endpoint: ep.clone(),
            stmt: Stmt::new(select_sql("missing", &["id"], None), vec![]),
        }],
        ScanOptions::new(1),
    );
    let err = scan_all(&mut scan).expect_err("no such table");
    assert!(
        err.sqlite_code().is_some_and(|c| c.starts_with("SQLITE_")),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with("node node-0 (http://127.0.0.1:"),
        "{err}"
    );
    assert!(err.to_string().contains(", shard 9: "), "{err}");
}

#[test]
fn largest_insert_fits_sqlites_parameter_limit() {
    let n = node(|_| {});
    let ep = endpoint(0, &n);
    let ex = Executor::new(ExecutorConfig::default());
    let names = ["a", "b"];
    let rows = max_rows_per_insert(names.len());
    let args: Vec<Value> = (0..rows * 2).map(|i| Value::Integer(i as i64)).collect();
    run_ok(
        &ex,
        vec![executes(
            &ep,
            None,
            vec![
                Stmt::new(
                    create_table_sql(
                        "big",
                        &[
                            ("a", ColumnType::Int8, false),
                            ("b", ColumnType::Int8, false),
                        ],
                        &[],
                    ),
                    vec![],
                ),
                Stmt::new(insert_sql("big", &names, rows), args),
            ],
        )],
    );
    let mut scan = ex.scan(
        vec![ShardQuery {
            shard_id: 0,
            endpoint: ep,
            stmt: Stmt::new(select_sql("big", &[], None), vec![]),
        }],
        ScanOptions::new(1),
    );
    assert_eq!(scan_all(&mut scan).expect("scan").len(), rows);
}

#[test]
fn sixteen_shards_on_slow_nodes_take_one_delay() {
    let delay = Duration::from_millis(200);
    let nodes: Vec<RunningNode> = (0..4)
        .map(|_| node(|c| c.delay_ms = delay.as_millis() as u64))
        .collect();
    let eps: Vec<NodeEndpoint> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| endpoint(i, n))
        .collect();
    let ex = Executor::new(ExecutorConfig::default());
    let shards = 16u32;
    let ep_of = |s: u32| eps[s as usize % eps.len()].clone();
    run_ok(
        &ex,
        (0..shards)
            .map(|s| {
                let t = shard_table_name("p", s);
                executes(
                    &ep_of(s),
                    Some(s),
                    vec![
                        Stmt::new(
                            create_table_sql(&t, &[("id", ColumnType::Int8, true)], &["id"]),
                            vec![],
                        ),
                        Stmt::new(
                            insert_sql(&t, &["id"], 1),
                            vec![Value::Integer(i64::from(s))],
                        ),
                    ],
                )
            })
            .collect(),
    );
    let t = Instant::now();
    let mut scan = ex.scan(
        (0..shards)
            .map(|s| ShardQuery {
                shard_id: s,
                endpoint: ep_of(s),
                stmt: Stmt::new(select_sql(&shard_table_name("p", s), &["id"], None), vec![]),
            })
            .collect(),
        ScanOptions::new(1),
    );
    let rows = scan_all(&mut scan).expect("scan");
    let took = t.elapsed();
    assert_eq!(rows.len(), 16);
    assert!(took >= delay && took < delay * 4, "16 shards took {took:?}");
}

#[test]
fn tokens_are_sent_as_bearer_auth() {
    let n = node(|c| c.auth_token = Some("t0ken".into()));
    let mut ep = endpoint(0, &n);
    let ex = Executor::new(ExecutorConfig::default());
    let select = || executes(&ep.clone(), None, vec![Stmt::new("SELECT 1", vec![])]);
    let results = run(&ex, vec![select()]);
    let err = results[0].as_ref().expect_err("unauthenticated");
    assert!(
        matches!(err.error, NodeError::Http { status: 401, .. }),
        "{err}"
    );
    ep.token = Some("t0ken".into());
    run_ok(
        &ex,
        vec![executes(&ep, None, vec![Stmt::new("SELECT 1", vec![])])],
    );
}

#[test]
fn health_of_a_real_node() {
    let n = node(|_| {});
    let ep = endpoint(0, &n);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let client = conductor_core::HranaClient::new(Default::default()).expect("client");
    rt.block_on(client.health(&ep)).expect("healthy");
    drop(n);
    let err = rt.block_on(client.health(&ep)).expect_err("down");
    assert!(err.is_transient(), "{err}");
}

#[test]
fn skip_failed_scans_return_the_reachable_shards() {
    let live = node(|_| {});
    let ep = endpoint(0, &live);
    let ex = Executor::new(ExecutorConfig::default());
    run_ok(
        &ex,
        vec![executes(
            &ep,
            Some(0),
            vec![
                Stmt::new("CREATE TABLE s_0000 (id INTEGER)", vec![]),
                Stmt::new("INSERT INTO s_0000 VALUES (1), (2)", vec![]),
            ],
        )],
    );
    // Shard 1 lives on a node nobody listens for.
    let dead = NodeEndpoint {
        node_id: "node-dead".into(),
        url: "http://127.0.0.1:1".into(),
        token: None,
    };
    let queries = |skip: bool| {
        let mut opts = ScanOptions::new(1);
        opts.skip_failed = skip;
        let q = |shard_id, endpoint: &NodeEndpoint| ShardQuery {
            shard_id,
            endpoint: endpoint.clone(),
            stmt: Stmt::new("SELECT id FROM s_0000", vec![]),
        };
        ex.scan(vec![q(0, &ep), q(1, &dead)], opts)
    };

    // Default: the failure ends the scan.
    let mut scan = queries(false);
    assert!(scan_all(&mut scan).is_err());

    // skip_failed: the dead shard is reported, the live one's rows arrive.
    let mut scan = queries(true);
    let end = Instant::now() + Duration::from_secs(30);
    let (mut rows, mut failed) = (Vec::new(), Vec::new());
    loop {
        assert!(Instant::now() < end, "scan timed out");
        match scan.next(POLL) {
            ScanPoll::Rows(c) => rows.extend(c.rows),
            ScanPoll::Pending => {}
            ScanPoll::Done => break,
            ScanPoll::Failed(e) => failed.push(e.shard_id),
        }
    }
    assert_eq!(failed, vec![Some(1)]);
    assert_eq!(rows.len(), 2);
}

/// A private CA and a certificate it signed for 127.0.0.1, made with the
/// openssl CLI: (CA certificate, node certificate, node key).
fn private_ca(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let openssl = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .stderr(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("run openssl");
        assert!(status.success(), "openssl {args:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem"],
            &["-days", "2", "-subj", "/CN=conductor test CA"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &["-keyout", "node.key", "-out", "node.csr"],
            &["-subj", "/CN=localhost"],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "node.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "node.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("node.pem"),
        dir.join("node.key"),
    )
}

#[test]
fn https_nodes_work_with_a_trusted_ca_and_fail_cleanly_without() {
    let dir = std::env::temp_dir().join(format!("conductor-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = private_ca(&dir);
    let n = node(|c| {
        c.tls_cert = Some(cert.clone());
        c.tls_key = Some(key.clone());
    });
    let ep = NodeEndpoint {
        node_id: "tls".into(),
        url: n.url().replacen("http://", "https://", 1),
        token: None,
    };
    let with_ca = |ca: Option<Vec<u8>>| {
        let mut config = ExecutorConfig::default();
        config.client.ca_pem = ca;
        Executor::new(config)
    };
    let select = |ex: &Executor| {
        run(
            ex,
            vec![executes(&ep, None, vec![Stmt::new("SELECT 1", vec![])])],
        )
        .pop()
        .unwrap()
    };
    // Trusting the cluster's CA: requests go over TLS.
    let ex = with_ca(Some(std::fs::read(&ca).unwrap()));
    let resp = select(&ex).expect("https request");
    assert!(first_error(&resp).is_none());
    // Without it the certificate is refused: a clear error, no panic.
    let err = select(&with_ca(None)).expect_err("untrusted certificate");
    assert!(err.to_string().contains("tls"), "{err}");
    // Plain HTTP to the TLS port is an error too.
    let plain = NodeEndpoint {
        url: n.url(),
        ..ep.clone()
    };
    let err = run(
        &with_ca(None),
        vec![executes(&plain, None, vec![Stmt::new("SELECT 1", vec![])])],
    )
    .pop()
    .unwrap()
    .expect_err("http to an https node");
    println!("untrusted: {err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Hundreds of shards on one node travel in a bounded number of cursor
/// requests (one batch step per shard): every row arrives tagged with its
/// shard, each shard's count is in the stats, and a shard whose statement
/// fails is reported alone (the others' rows still arrive with skip).
#[test]
fn many_shards_share_a_bounded_number_of_requests_per_node() {
    let n = node(|_| {});
    let ep = endpoint(0, &n);
    let ex = Executor::new(ExecutorConfig::default());
    let shards = 300u32;
    let mut setup = Vec::new();
    for s in 0..shards {
        let t = shard_table_name("m", s);
        setup.push(Stmt::new(
            format!("CREATE TABLE \"{t}\" (id INTEGER)"),
            vec![],
        ));
        // Shard s holds s % 7 rows; shard 5 holds 600 (several chunks).
        let rows = if s == 5 { 600 } else { s % 7 };
        for r in 0..rows {
            setup.push(Stmt::new(
                format!("INSERT INTO \"{t}\" VALUES (?)"),
                vec![Value::Integer(i64::from(s) * 1000 + i64::from(r))],
            ));
        }
    }
    run_ok(&ex, vec![executes(&ep, None, setup)]);
    let before = cursor_requests(&n);
    let queries = |missing: Option<u32>| {
        (0..shards)
            .map(|s| ShardQuery {
                shard_id: s,
                endpoint: ep.clone(),
                stmt: Stmt::new(
                    if Some(s) == missing {
                        "SELECT id FROM no_such_table".to_string()
                    } else {
                        select_sql(&shard_table_name("m", s), &["id"], None)
                    },
                    vec![],
                ),
            })
            .collect::<Vec<_>>()
    };
    let mut opts = ScanOptions::new(1);
    opts.max_requests_per_node = 4;
    let mut scan = ex.scan(queries(None), opts.clone());
    let rows = scan_all(&mut scan).expect("scan succeeds");
    let expected: u64 = (0..shards)
        .map(|s| if s == 5 { 600 } else { u64::from(s % 7) })
        .sum();
    assert_eq!(rows.len() as u64, expected);
    for (shard, row) in &rows {
        let Value::Integer(v) = row[0] else { panic!() };
        assert_eq!(v / 1000, i64::from(*shard), "row tagged with its shard");
    }
    for st in scan.stats() {
        let want = if st.shard_id == 5 {
            600
        } else {
            u64::from(st.shard_id % 7)
        };
        assert_eq!(st.rows, want, "shard {}", st.shard_id);
    }
    let cursors = cursor_requests(&n) - before;
    assert!(
        (1..=4).contains(&cursors),
        "{cursors} cursor requests for {shards} shards"
    );

    // One shard's statement fails: an error naming it; with skip, only it
    // is missing.
    let mut scan = ex.scan(queries(Some(42)), opts.clone());
    assert_eq!(scan_all(&mut scan).unwrap_err().shard_id, Some(42));
    opts.skip_failed = true;
    let mut scan = ex.scan(queries(Some(42)), opts);
    let (mut got, mut failed) = (0u64, Vec::new());
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < end, "scan timed out");
        match scan.next(POLL) {
            ScanPoll::Rows(c) => got += c.rows.len() as u64,
            ScanPoll::Pending => {}
            ScanPoll::Done => break,
            ScanPoll::Failed(e) => failed.push(e.shard_id),
        }
    }
    assert_eq!(failed, vec![Some(42)]);
    assert_eq!(got, expected - u64::from(42u32 % 7));
}

/// Cursor requests the node has served, in either encoding (from its
/// `/stats`).
fn cursor_requests(n: &RunningNode) -> u64 {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(n.addr()).expect("connect");
    conn.write_all(b"GET /stats HTTP/1.0\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut text = String::new();
    conn.read_to_string(&mut text).expect("read");
    let body = text.split("\r\n\r\n").nth(1).expect("a body");
    let stats: serde_json::Value = serde_json::from_str(body).expect("json");
    ["/v3/cursor", "/v3-protobuf/cursor"]
        .iter()
        .map(|e| stats["requests"][e].as_u64().expect("a count"))
        .sum()
}

/// A lone shard of unknown size (`small_first`): a few rows come whole in
/// one request on the caller's thread, no cursor; more than the threshold
/// come through a cursor, every row once and in the node's order (none of
/// the first request's); a shard that fails is still named.
#[test]
fn a_small_lone_shard_is_one_request_and_a_large_one_is_streamed() {
    let n = node(|_| {});
    let ep = endpoint(0, &n);
    let ex = Executor::new(ExecutorConfig::default());
    let t = shard_table_name("tenant", 3);
    let mut setup = vec![Stmt::new(
        format!("CREATE TABLE \"{t}\" (tenant INTEGER, id INTEGER)"),
        vec![],
    )];
    // Tenant 1 has 4 rows, tenant 2 has 700.
    for (tenant, rows) in [(1, 4), (2, 700)] {
        for id in 0..rows {
            setup.push(Stmt::new(
                format!("INSERT INTO \"{t}\" VALUES (?, ?)"),
                vec![Value::Integer(tenant), Value::Integer(id)],
            ));
        }
    }
    run_ok(&ex, vec![executes(&ep, None, setup)]);
    let query = |tenant: i64| ShardQuery {
        shard_id: 3,
        endpoint: ep.clone(),
        stmt: Stmt::new(
            format!(
                "{} ORDER BY \"id\"",
                select_sql(&t, &["id"], Some("\"tenant\" = ?"))
            ),
            vec![Value::Integer(tenant)],
        ),
    };
    let mut opts = ScanOptions::new(1);
    opts.small_first = Some(10);
    let ids = |rows: Vec<(u32, Vec<Value>)>| -> Vec<i64> {
        rows.into_iter()
            .map(|(shard, r)| {
                assert_eq!(shard, 3);
                let Value::Integer(v) = r[0] else {
                    panic!("{r:?}")
                };
                v
            })
            .collect()
    };

    let before = cursor_requests(&n);
    let mut scan = ex.scan(vec![query(1)], opts.clone());
    assert!(scan.runs_on_callers_thread());
    assert_eq!(ids(scan_all(&mut scan).expect("small")), vec![0, 1, 2, 3]);
    assert_eq!(scan.stats()[0].rows, 4);
    assert_eq!(cursor_requests(&n), before, "a small shard needs no cursor");

    let mut scan = ex.scan(vec![query(2)], opts.clone());
    assert_eq!(
        ids(scan_all(&mut scan).expect("large")),
        (0..700).collect::<Vec<_>>()
    );
    assert_eq!(scan.stats()[0].rows, 700);
    assert_eq!(cursor_requests(&n), before + 1, "a large shard is streamed");

    let mut bad = query(1);
    bad.stmt = Stmt::new("SELECT id FROM no_such_table", vec![]);
    let mut scan = ex.scan(vec![bad], opts);
    assert_eq!(scan_all(&mut scan).unwrap_err().shard_id, Some(3));
}
