//! Peak memory of a large scan stays bounded: a huge scan holds a bounded
//! number of rows in memory (docs/ARCHITECTURE.md, Execution inside a
//! backend). Its own test binary, so no other test shares the process while
//! it measures.

mod support;

use conductor_core::client::{ClientConfig, NodeEndpoint, WireEncoding};
use conductor_core::executor::{Executor, ExecutorConfig, ScanOptions, ScanPoll, ShardQuery};
use conductor_hrana::Stmt;
use std::time::{Duration, Instant};
use support::{FakeServer, Reply};

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("field in /proc/self/status")
}

#[test]
fn scanning_200_mb_keeps_peak_memory_bounded() {
    const ROWS: u64 = 200_000;
    const SHARDS: u32 = 4;
    let text = "x".repeat(1000);
    let server = FakeServer::start(move |_| {
        let text = text.clone();
        let head = [
            b"{\"baton\":null,\"base_url\":null}\n".to_vec(),
            b"{\"type\":\"step_begin\",\"step\":0,\"cols\":[{\"name\":\"t\"}]}\n".to_vec(),
        ];
        let rows = (0..ROWS / u64::from(SHARDS)).map(move |_| {
            format!("{{\"type\":\"row\",\"row\":[{{\"type\":\"text\",\"value\":\"{text}\"}}]}}\n")
                .into_bytes()
        });
        let tail = std::iter::once(b"{\"type\":\"step_end\",\"affected_row_count\":0}\n".to_vec());
        Reply::Stream {
            delay: Duration::ZERO,
            lines: Box::new(head.into_iter().chain(rows).chain(tail)),
        }
    });
    let ex = Executor::new(ExecutorConfig {
        client: ClientConfig {
            // This scripted server speaks JSON only.
            encoding: WireEncoding::Json,
            ..ClientConfig::default()
        },
        ..ExecutorConfig::default()
    });
    ex.start().expect("start");

    // Reset the peak to the current resident size (Linux >= 4.0), so the
    // peak below is this scan's alone.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let baseline = status_kib("VmRSS:");

    let mut scan = ex.scan(
        (0..SHARDS)
            .map(|s| ShardQuery {
                shard_id: s,
                endpoint: NodeEndpoint {
                    node_id: format!("node-{s}"),
                    url: server.url.clone(),
                    token: None,
                },
                stmt: Stmt::new("SELECT t FROM big", vec![]),
            })
            .collect(),
        ScanOptions::new(1),
    );
    let (mut rows, mut bytes) = (0u64, 0u64);
    let end = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(Instant::now() < end, "scan too slow");
        match scan.next(Duration::from_millis(50)) {
            ScanPoll::Rows(c) => {
                for r in c.rows {
                    if let Some(conductor_hrana::Value::Text(t)) = r.first() {
                        bytes += t.len() as u64;
                    }
                    rows += 1;
                }
            }
            ScanPoll::Pending => {}
            ScanPoll::Done => break,
            ScanPoll::Failed(e) => panic!("{e}"),
        }
    }
    assert_eq!(rows, ROWS);
    assert_eq!(bytes, ROWS * 1000);
    let peak = status_kib("VmHWM:");
    let growth_mib = peak.saturating_sub(baseline) / 1024;
    eprintln!(
        "scanned {} MB; resident peak grew by {growth_mib} MiB",
        bytes >> 20
    );
    assert!(growth_mib < 64, "peak grew by {growth_mib} MiB");
}
