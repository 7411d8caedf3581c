//! The read path of a backend, measured without Postgres: a whole-table
//! scan and single-shard lookups through the same `Executor` calls the
//! extension makes (`src/remote.rs` `scan`, polled every 10 ms as
//! `src/fdw/scan.rs` does), against spawned release `conductor-node`s.
//!
//! ```text
//! cargo build --release -p conductor-node
//! cargo run --release -p conductor-core --example scan_bench
//! ```
//!
//! Environment (all optional):
//! - `ROWS` (1000000), `SHARDS` (16), `NODES` (4): the table, shaped like
//!   the benchmark's `items` (docs/BENCHMARKS.md), placed with the
//!   placement hash, shard `s` on node `s % NODES`;
//! - `SCANS` (3): whole-table scans; `LOOKUPS` (5000): point lookups by key
//!   (one shard, bounded: one self-closing pipeline request);
//! - `NODE_BIN` (`target/release/conductor-node` of this workspace), `DATA`
//!   (a directory kept between runs so the table is loaded once; default a
//!   fresh temporary one);
//! - `ENCODING` (`auto`, `json` or `protobuf`): the client's wire encoding;
//! - `DIRECT` (1): `0` runs lookups on the I/O threads
//!   (`ExecutorConfig::direct_lookups` off).
//!
//! Figures: rows/s; CPU of this process per million rows (getrusage: all
//! threads), split per thread name from `/proc/self/task/*/schedstat`
//! (`conductor-io` is the executor's runtime, `main` the thread that plays
//! the backend); lookup latency percentiles and CPU per lookup.

use conductor_core::client::{ClientConfig, NodeEndpoint, WireEncoding};
use conductor_core::executor::{
    Executor, ExecutorConfig, ScanOptions, ScanPoll, ShardQuery, ShardRequest,
};
use conductor_core::placement::{shard_for, KeyValue};
use conductor_core::remote_sql::{insert_sql, quote_ident, select_sql, shard_table_name};
use conductor_hrana::{PipelineReqBody, Stmt, StreamRequest, Value};
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const COLUMNS: [&str; 7] = [
    "id",
    "customer_id",
    "name",
    "email",
    "amount",
    "created",
    "flag",
];

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A deterministic mixer (splitmix64) for the generated columns.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// One row as the extension stores it: bigint and int as integers, text,
/// numeric as its text form, timestamptz as Postgres' microseconds, bool
/// as 0/1.
fn row(i: i64) -> Vec<Value> {
    let h = mix(i as u64);
    vec![
        Value::Integer(i),
        Value::Integer(1 + (h % 100_000) as i64),
        Value::Text(format!("Customer {:012x}", mix(h) & 0xFFFF_FFFF_FFFF)),
        Value::Text(format!("{:016x}@example.com", mix(h ^ 1))),
        Value::Text(format!("{}.{:02}", (h >> 20) % 10_000, (h >> 40) % 100)),
        Value::Integer(757_382_400_000_000 + ((h >> 8) % 31_536_000) as i64 * 1_000_000),
        Value::Integer((h & 1) as i64),
    ]
}

struct Nodes {
    children: Vec<Child>,
    urls: Vec<String>,
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn start_nodes(bin: &str, data: &std::path::Path, n: usize) -> Nodes {
    let mut nodes = Nodes {
        children: Vec::new(),
        urls: Vec::new(),
    };
    for i in 0..n {
        let dir = data.join(format!("node-{i}"));
        std::fs::create_dir_all(&dir).expect("data dir");
        let port = free_port();
        let child = Command::new(bin)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&dir)
            .arg("--log-level")
            .arg("warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        nodes.children.push(child);
        nodes.urls.push(format!("http://127.0.0.1:{port}"));
    }
    for url in &nodes.urls {
        let addr = url.trim_start_matches("http://").to_string();
        let end = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < end, "node {url} did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    nodes
}

fn endpoint(nodes: &Nodes, shard: u32) -> NodeEndpoint {
    let i = shard as usize % nodes.urls.len();
    NodeEndpoint {
        node_id: format!("node-{i}"),
        url: nodes.urls[i].clone(),
        token: None,
    }
}

fn run(ex: &Executor, reqs: Vec<ShardRequest>) {
    let mut h = ex.execute(reqs);
    let results = loop {
        if let Some(r) = h.wait(Duration::from_millis(10)) {
            break r;
        }
    };
    for r in results {
        let resp = r.unwrap_or_else(|e| panic!("{e}"));
        if let Some(e) = conductor_core::client::first_error(&resp) {
            panic!("{}", e.message);
        }
    }
}

fn load(ex: &Executor, nodes: &Nodes, rows: i64, shards: u32) {
    let table = |s: u32| shard_table_name("items", s);
    let create: Vec<ShardRequest> = (0..shards)
        .map(|s| ShardRequest {
            shard_id: Some(s),
            endpoint: endpoint(nodes, s),
            body: PipelineReqBody {
                baton: None,
                requests: vec![
                    StreamRequest::Execute {
                        stmt: Stmt::new(
                            format!(
                                "CREATE TABLE {} (id INTEGER PRIMARY KEY, customer_id INTEGER \
                                 NOT NULL, name TEXT, email TEXT, amount TEXT, created INTEGER, \
                                 flag INTEGER)",
                                quote_ident(&table(s))
                            ),
                            vec![],
                        ),
                    },
                    StreamRequest::Close,
                ],
            },
        })
        .collect();
    run(ex, create);
    let per_insert = 500usize;
    let mut pending: BTreeMap<u32, Vec<Value>> = BTreeMap::new();
    let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
    let mut batch: Vec<ShardRequest> = Vec::new();
    let flush = |s: u32, args: Vec<Value>, n: usize, batch: &mut Vec<ShardRequest>| {
        batch.push(ShardRequest {
            shard_id: Some(s),
            endpoint: endpoint(nodes, s),
            body: PipelineReqBody {
                baton: None,
                requests: vec![
                    StreamRequest::Execute {
                        stmt: Stmt::new(insert_sql(&table(s), &COLUMNS, n), args),
                    },
                    StreamRequest::Close,
                ],
            },
        });
    };
    for i in 1..=rows {
        let s = shard_for(&KeyValue::Int(i), shards);
        let args = pending.entry(s).or_default();
        args.extend(row(i));
        let n = counts.entry(s).or_default();
        *n += 1;
        if *n == per_insert {
            flush(s, std::mem::take(args), per_insert, &mut batch);
            *n = 0;
            if batch.len() >= 16 {
                run(ex, std::mem::take(&mut batch));
            }
        }
    }
    for (s, args) in pending {
        let n = counts[&s];
        if n > 0 {
            flush(s, args, n, &mut batch);
        }
    }
    run(ex, batch);
}

/// CPU time (user + system) of the whole process.
fn process_cpu() -> Duration {
    // SAFETY: getrusage writes the struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time per thread name (`/proc/self/task/*/schedstat`, nanoseconds
/// on the CPU), the main thread reported as `main`.
fn thread_cpu() -> BTreeMap<String, Duration> {
    let mut out = BTreeMap::new();
    let me = std::process::id().to_string();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for t in tasks.flatten() {
        let tid = t.file_name().to_string_lossy().into_owned();
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let name = if tid == me {
            "main".to_string()
        } else {
            comm.trim().to_string()
        };
        let ns: u64 = std::fs::read_to_string(t.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
            .unwrap_or(0);
        *out.entry(name).or_default() += Duration::from_nanos(ns);
    }
    out
}

fn diff(after: &BTreeMap<String, Duration>, before: &BTreeMap<String, Duration>) -> String {
    after
        .iter()
        .map(|(k, v)| {
            let d = v.saturating_sub(before.get(k).copied().unwrap_or_default());
            format!("{k} {:.3}s", d.as_secs_f64())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn client_config() -> ClientConfig {
    let encoding = std::env::var("ENCODING").unwrap_or_else(|_| "auto".into());
    ClientConfig {
        encoding: WireEncoding::parse(&encoding)
            .unwrap_or_else(|| panic!("ENCODING: auto, json or protobuf, not {encoding:?}")),
        idle_timeout: Duration::from_secs(24 * 3600),
        ..ClientConfig::default()
    }
}

fn main() {
    let rows: i64 = env("ROWS", 1_000_000);
    let shards: u32 = env("SHARDS", 16);
    let nnodes: usize = env("NODES", 4);
    let scans: usize = env("SCANS", 3);
    let lookups: usize = env("LOOKUPS", 5000);
    let bin: String = env(
        "NODE_BIN",
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../target/release/conductor-node"
        )
        .to_string(),
    );
    let tmp;
    let data = match std::env::var("DATA") {
        Ok(d) => std::path::PathBuf::from(d),
        Err(_) => {
            tmp = std::env::temp_dir().join(format!("scan_bench_{}", std::process::id()));
            tmp.clone()
        }
    };
    let marker = data.join(format!("loaded-{rows}-{shards}-{nnodes}"));
    let fresh = !marker.exists();
    if fresh {
        let _ = std::fs::remove_dir_all(&data);
    }
    let nodes = start_nodes(&bin, &data, nnodes);
    let ex = Executor::new(ExecutorConfig {
        client: client_config(),
        direct_lookups: env("DIRECT", 1) == 1,
        ..ExecutorConfig::default()
    });
    ex.start().expect("executor");
    if fresh {
        let t = Instant::now();
        load(&ex, &nodes, rows, shards);
        std::fs::write(&marker, b"").expect("marker");
        eprintln!("loaded {rows} rows in {:.1?}", t.elapsed());
    }
    println!(
        "scan_bench: {rows} rows, {shards} shards on {nnodes} nodes, encoding {}, direct lookups {}, load average {}",
        std::env::var("ENCODING").unwrap_or_else(|_| "auto".into()),
        env("DIRECT", 1) == 1,
        loadavg()
    );

    let queries = |where_sql: Option<&str>, args: Vec<Value>, only: Option<u32>| {
        (0..shards)
            .filter(|s| only.is_none_or(|o| o == *s))
            .map(|s| ShardQuery {
                shard_id: s,
                endpoint: endpoint(&nodes, s),
                stmt: Stmt::new(
                    select_sql(&shard_table_name("items", s), &COLUMNS, where_sql),
                    args.clone(),
                ),
            })
            .collect::<Vec<_>>()
    };

    // Warm-up: connections, the runtime, the nodes' page caches.
    let mut opts = ScanOptions::new(COLUMNS.len());
    opts.max_requests_per_node = 8;
    for _ in 0..2 {
        let mut h = ex.scan(queries(Some("\"id\" <= 1000"), vec![], None), opts.clone());
        while !matches!(h.next(Duration::from_millis(10)), ScanPoll::Done) {}
    }

    let mut rates = Vec::new();
    let mut cpus = Vec::new();
    for run in 0..scans {
        let (cpu0, threads0, t0) = (process_cpu(), thread_cpu(), Instant::now());
        let mut h = ex.scan(queries(None, vec![], None), opts.clone());
        let (mut n, mut bytes) = (0u64, 0usize);
        loop {
            match h.next(Duration::from_millis(10)) {
                ScanPoll::Rows(c) => {
                    for r in c.rows {
                        n += 1;
                        for v in &r {
                            if let Value::Text(t) = v {
                                bytes += t.len();
                            }
                        }
                    }
                }
                ScanPoll::Pending => {}
                ScanPoll::Done => break,
                ScanPoll::Failed(e) => panic!("{e}"),
            }
        }
        let wall = t0.elapsed();
        let cpu = process_cpu() - cpu0;
        assert_eq!(n, rows as u64, "every row scanned");
        let rate = n as f64 / wall.as_secs_f64();
        let per_m = cpu.as_secs_f64() * 1e6 / n as f64;
        println!(
            "scan {run}: {n} rows ({bytes} text bytes) in {:.3}s = {rate:.0} rows/s; \
             CPU {:.3}s = {per_m:.3}s per 1M rows; per thread: {}",
            wall.as_secs_f64(),
            cpu.as_secs_f64(),
            diff(&thread_cpu(), &threads0)
        );
        rates.push(rate);
        cpus.push(per_m);
    }

    let mut lat = Vec::with_capacity(lookups);
    let mut lopts = ScanOptions::new(COLUMNS.len());
    lopts.bounded = true;
    let (cpu0, threads0, t0) = (process_cpu(), thread_cpu(), Instant::now());
    for k in 0..lookups {
        let id = 1 + (mix(k as u64 ^ 0xABCD) % rows as u64) as i64;
        let s = shard_for(&KeyValue::Int(id), shards);
        let t = Instant::now();
        let mut h = ex.scan(
            queries(Some("\"id\" = ?"), vec![Value::Integer(id)], Some(s)),
            lopts.clone(),
        );
        let mut got = 0;
        loop {
            match h.next(Duration::from_millis(10)) {
                ScanPoll::Rows(c) => got += c.rows.len(),
                ScanPoll::Pending => {}
                ScanPoll::Done => break,
                ScanPoll::Failed(e) => panic!("{e}"),
            }
        }
        drop(h);
        lat.push(t.elapsed());
        assert_eq!(got, 1, "lookup of {id}");
    }
    let lwall = t0.elapsed();
    let lcpu = process_cpu() - cpu0;
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    if lookups > 0 {
        println!(
            "lookups: {lookups} sequential in {:.3}s; latency p50 {:.1}us p90 {:.1}us p99 {:.1}us; \
             CPU {:.1}us per lookup; per thread: {}",
            lwall.as_secs_f64(),
            pct(0.50).as_secs_f64() * 1e6,
            pct(0.90).as_secs_f64() * 1e6,
            pct(0.99).as_secs_f64() * 1e6,
            lcpu.as_secs_f64() * 1e6 / lookups as f64,
            diff(&thread_cpu(), &threads0)
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    println!(
        "median of {scans} scans: {:.0} rows/s, {:.3} CPU s per 1M rows; load average {}",
        median(&mut rates),
        median(&mut cpus),
        loadavg()
    );
    drop(nodes);
}
