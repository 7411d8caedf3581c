//! CPU one request costs the calling process: a one-row UPDATE sent as one
//! self-contained pipeline (BEGIN, UPDATE, COMMIT), the way a one-shard
//! write on the fast path is sent, through
//!   - `executor`: `Executor::execute` on the caller's thread (what a
//!     backend does; plain `http://` nodes go through `http1`), and
//!   - `reqwest`: the same bytes POSTed with a bare `reqwest::Client` on a
//!     current-thread runtime (the HTTP layer `http1` replaced).
//! Both encode the body as Protobuf and decode the answer the same way.
//!
//!     cargo run --release -p conductor-core --example request_cpu -- http://127.0.0.1:7401 [requests]
//!
//! Needs a running node (it creates table `request_cpu` on it). CPU is the
//! process' user + system time (every thread), from getrusage.
use conductor_core::client::{one_request_transaction, NodeEndpoint};
use conductor_core::executor::{Executor, ExecutorConfig, ShardRequest};
use conductor_hrana::protobuf as pb;
use conductor_hrana::{PipelineReqBody, Stmt, Value};
use prost::Message as _;
use std::time::{Duration, Instant};

fn cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(us(ru.ru_utime) + us(ru.ru_stime))
}

fn execute(ex: &Executor, ep: &NodeEndpoint, body: &PipelineReqBody) {
    let mut h = ex.execute(vec![ShardRequest {
        shard_id: None,
        endpoint: ep.clone(),
        body: body.clone(),
    }]);
    loop {
        if let Some(r) = h.wait(Duration::from_millis(10)) {
            let r = r.into_iter().next().expect("one result").expect("request");
            assert!(conductor_core::client::first_error(&r).is_none(), "{r:?}");
            return;
        }
    }
}

fn measure(name: &str, n: usize, mut one: impl FnMut()) {
    for _ in 0..n / 10 {
        one(); // warm the pools and caches
    }
    let (c0, t0) = (cpu(), Instant::now());
    for _ in 0..n {
        one();
    }
    let (c, t) = (cpu() - c0, t0.elapsed());
    println!(
        "{name:>8}: {:6.1} µs CPU per request, {:6.1} µs wall",
        c.as_secs_f64() * 1e6 / n as f64,
        t.as_secs_f64() * 1e6 / n as f64
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .expect("usage: request_cpu <node URL> [requests]");
    let n: usize = args.next().map_or(20_000, |s| s.parse().expect("a count"));
    let ep = NodeEndpoint {
        node_id: "node".into(),
        url: url.clone(),
        token: std::env::var("CONDUCTOR_NODE_AUTH_TOKEN").ok(),
    };
    let ex = Executor::new(ExecutorConfig::default());
    execute(
        &ex,
        &ep,
        &one_request_transaction(vec![
            Stmt::new(
                "CREATE TABLE IF NOT EXISTS request_cpu (id INTEGER PRIMARY KEY, v TEXT)",
                vec![],
            ),
            Stmt::new("INSERT OR IGNORE INTO request_cpu VALUES (7, 'x')", vec![]),
        ]),
    );
    let body = one_request_transaction(vec![Stmt::new(
        "UPDATE request_cpu SET v = v || '' WHERE id = ?",
        vec![Value::Integer(7)],
    )]);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let http = reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .build()
        .expect("client");
    let target = format!("{}/v3-protobuf/pipeline", url.trim_end_matches('/'));
    let post = || {
        runtime.block_on(async {
            let encoded = pb::PipelineReqBody::from(body.clone()).encode_to_vec();
            let mut req = http
                .post(&target)
                .header("content-type", "application/x-protobuf")
                .body(encoded);
            if let Some(t) = &ep.token {
                req = req.bearer_auth(t);
            }
            let resp = tokio::time::timeout(Duration::from_secs(60), req.send())
                .await
                .expect("in time")
                .expect("sent");
            assert!(resp.status().is_success(), "{}", resp.status());
            let bytes = resp.bytes().await.expect("answer");
            let answer: conductor_hrana::PipelineRespBody =
                pb::PipelineRespBody::decode(&bytes[..])
                    .expect("Protobuf answer")
                    .into();
            assert!(
                conductor_core::client::first_error(&answer).is_none(),
                "{answer:?}"
            );
        })
    };
    // Alternate, so both see the same machine.
    for _ in 0..2 {
        measure("executor", n, || execute(&ex, &ep, &body));
        measure("reqwest", n, post);
    }
}
