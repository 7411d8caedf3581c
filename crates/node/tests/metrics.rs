//! GET /metrics: the node's counters in the Prometheus text format, behind
//! the token like /stats, and agreeing with /stats and with what the
//! statement results themselves reported.

mod common;

use common::*;
use serde_json::{json, Value as J};
use std::collections::BTreeMap;

/// `name{labels}` -> value of every sample; panics on a line that is not
/// a well-formed sample or comment, or a sample of an undeclared family.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut declared = Vec::new();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            declared.push(name.to_string());
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            declared.iter().any(|d| name == d
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| name.strip_suffix(s) == Some(d))),
            "sample of an undeclared family: {line}"
        );
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        assert!(
            out.insert(series.to_string(), value).is_none(),
            "twice: {line}"
        );
    }
    out
}

fn sample(s: &BTreeMap<String, f64>, series: &str) -> f64 {
    *s.get(series)
        .unwrap_or_else(|| panic!("no {series} in {s:#?}"))
}

/// The rows a statement result reports.
fn rows_of(result: &J) -> (u64, u64) {
    (
        result["rows_read"].as_u64().expect("rows_read"),
        result["rows_written"].as_u64().expect("rows_written"),
    )
}

#[test]
fn metrics_count_requests_rows_streams_and_latency() {
    let n = node();
    let a = n.addr();
    let (mut read, mut written) = (0, 0);
    let mut add = |r: &J| {
        let (rr, rw) = rows_of(r);
        read += rr;
        written += rw;
    };
    for sql in [
        "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)",
        "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')",
        "SELECT * FROM t",
        "UPDATE t SET v = 'B' WHERE id = 2",
    ] {
        add(&exec(a, sql, vec![]));
    }
    // A stream left inside a transaction.
    let open = pipeline(
        a,
        None,
        vec![
            execute("BEGIN", vec![]),
            execute("INSERT INTO t VALUES (4, 'd')", vec![]),
        ],
    );
    for r in open["results"].as_array().unwrap() {
        add(&r["response"]["result"]);
    }
    // A cursor reads 3 rows (the open transaction's row is not committed)
    // on a stream of its own.
    let cursor = post(
        a,
        "/v3/cursor",
        &json!({"baton": null, "batch": {"steps": [{"stmt": {"sql": "SELECT * FROM t"}}]}}),
    );
    assert_eq!(cursor.status, 200, "{}", cursor.text());
    read += 3;
    assert_eq!(get(a, "/nope").status, 404);

    let m = get(a, "/metrics");
    assert_eq!(m.status, 200, "{}", m.text());
    assert!(
        m.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        m.headers
    );
    let s = samples(&m.text());
    let requests = |endpoint: &str, code: u16| {
        sample(
            &s,
            &format!(
                "conductor_node_http_requests_total{{endpoint=\"{endpoint}\",code=\"{code}\"}}"
            ),
        )
    };
    assert_eq!(requests("/v3/pipeline", 200), 5.0);
    assert_eq!(requests("/v3/cursor", 200), 1.0);
    assert_eq!(requests("other", 404), 1.0);
    assert_eq!(sample(&s, "conductor_node_statements_total"), 7.0);
    assert_eq!(sample(&s, "conductor_node_rows_read_total"), read as f64);
    assert_eq!(
        sample(&s, "conductor_node_rows_written_total"),
        written as f64
    );
    assert_eq!(
        written, 5,
        "3 inserted, 1 updated, 1 inserted in the stream"
    );
    // The stream in a transaction, and the cursor's (a cursor opened
    // without a baton keeps its stream until closed or expired).
    assert_eq!(sample(&s, "conductor_node_open_streams"), 2.0);
    assert_eq!(sample(&s, "conductor_node_open_transactions"), 1.0);
    assert!(sample(&s, "conductor_node_wal_bytes") > 0.0);

    // The histogram: cumulative buckets ending in +Inf = count = requests.
    let hist = "conductor_node_http_request_duration_seconds";
    let label = "endpoint=\"/v3/pipeline\"";
    let buckets: Vec<f64> = s
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{hist}_bucket{{{label},")))
        .map(|(_, v)| *v)
        .collect();
    assert!(buckets.len() > 2, "{s:#?}");
    let count = sample(&s, &format!("{hist}_count{{{label}}}"));
    assert_eq!(count, 5.0);
    assert_eq!(
        sample(&s, &format!("{hist}_bucket{{{label},le=\"+Inf\"}}")),
        count
    );
    let mut finite: Vec<(f64, f64)> = s
        .iter()
        .filter_map(|(k, v)| {
            let le = k
                .strip_prefix(&format!("{hist}_bucket{{{label},le=\""))?
                .strip_suffix("\"}")?;
            le.parse::<f64>().ok().map(|le| (le, *v))
        })
        .collect();
    finite.sort_by(|x, y| x.0.total_cmp(&y.0));
    assert!(
        finite.windows(2).all(|w| w[0].1 <= w[1].1) && finite.last().unwrap().1 <= count,
        "buckets are cumulative: {finite:?}"
    );
    assert!(sample(&s, &format!("{hist}_sum{{{label}}}")) > 0.0);

    // One source of counters: /stats agrees (and counts the /metrics
    // request, answered after its own body was made).
    let stats = get(a, "/stats").json();
    let answered: f64 = s
        .iter()
        .filter(|(k, _)| k.starts_with("conductor_node_http_requests_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(stats["requests_total"].as_f64().unwrap(), answered + 1.0);
    assert_eq!(stats["requests"]["/metrics"], 1);
    assert_eq!(stats["rows_read"], read);
    assert_eq!(stats["rows_written"], written);
    assert_eq!(stats["statements_executed"], 7);
    assert_eq!(stats["responses_4xx"], 1);
}

#[test]
fn metrics_need_the_token() {
    let n = node_with(|c| c.auth_token = Some("s3cret".into()));
    let r = get(n.addr(), "/metrics");
    assert_eq!(r.status, 401, "{}", r.text());
    let r = request(
        n.addr(),
        "GET",
        "/metrics",
        &[("Authorization", "Bearer s3cret")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let s = samples(&r.text());
    assert_eq!(
        sample(
            &s,
            "conductor_node_http_requests_total{endpoint=\"/metrics\",code=\"401\"}"
        ),
        1.0
    );
}
