//! Streaming: scanning a big sharded table keeps the backend's memory
//! bounded. The backend's peak resident set (VmHWM in /proc/<pid>/status,
//! pid from pg_backend_pid()) may grow by at most 64 MB over an idle
//! backend while it scans every row.
//!
//! `scan_memory_is_bounded_10m` loads 10,000,000 rows and takes minutes, so
//! it is #[ignore]d; `bench/scan_memory.sh` runs it (CONDUCTOR_SCAN_MEMORY_ROWS
//! overrides the row count). `scan_memory_is_bounded` runs in `make test` with
//! fewer rows: still far more data than the 64 MB budget if it were buffered.

mod common;

use common::{exec, query_i64};
use conductor_e2e::{postgres, Cluster, ClusterOptions};
use std::time::Instant;

const BUDGET_KB: i64 = 64 * 1024;

/// (VmHWM, VmRSS) of a process, in kB.
fn memory_kb(pid: i32) -> (i64, i64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|e| {
        panic!("read /proc/{pid}/status: {e} (the test must run on the Postgres host)")
    });
    let field = |name: &str| -> i64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmHWM:"), field("VmRSS:"))
}

fn backend_pid(db: &mut postgres::Client) -> i32 {
    db.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0)
}

fn run(rows: i64) {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 4,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE mem_users (id bigint NOT NULL, email text, name text,
                                         score double precision, created timestamptz) SERVER cluster;
         SELECT conductor.create_distributed_table('mem_users', 'id', shard_count => 16);
         CREATE FOREIGN TABLE mem_small (id bigint NOT NULL) SERVER cluster;
         SELECT conductor.create_distributed_table('mem_small', 'id', shard_count => 16);
         INSERT INTO mem_small VALUES (1), (2), (3);",
    );
    // The scanning backend starts now, so it measures the extension build
    // that the catalog was created with even if someone reinstalls the
    // extension during the long load: an idle baseline, then a tiny
    // conductor scan (extension loaded, I/O runtime started).
    let mut scan = cluster.client();
    let pid = backend_pid(&mut scan);
    let _ = query_i64(&mut scan, "SELECT 1::bigint");
    let (idle_hwm, idle_rss) = memory_kb(pid);
    assert_eq!(query_i64(&mut scan, "SELECT count(*) FROM mem_small"), 3);
    let (warm_hwm, _) = memory_kb(pid);

    let t = Instant::now();
    // In chunks, so the loading backend's own memory stays modest too.
    let chunk = 1_000_000;
    let mut done = 0;
    while done < rows {
        let n = chunk.min(rows - done);
        exec(
            &mut db,
            &format!(
                "INSERT INTO mem_users
                 SELECT i, 'user' || i || '@example.com', 'User number ' || i, i / 7.0,
                        '2024-01-01'::timestamptz + i * interval '1 second'
                   FROM generate_series({}, {}) i",
                done + 1,
                done + n
            ),
        );
        done += n;
    }
    let load = t.elapsed();
    eprintln!(
        "loaded {rows} rows in {load:?} ({:.0} rows/s)",
        rows as f64 / load.as_secs_f64()
    );

    let t = Instant::now();
    assert_eq!(query_i64(&mut scan, "SELECT count(*) FROM mem_users"), rows);
    let count_time = t.elapsed();
    let (after_count_hwm, _) = memory_kb(pid);
    eprintln!("count(*) of {rows} rows in {count_time:?}: VmHWM {idle_hwm} kB idle, {warm_hwm} kB warm, {after_count_hwm} kB after");
    let t = Instant::now();
    let total_len = query_i64(
        &mut scan,
        "SELECT sum(length(email))::bigint FROM mem_users",
    );
    let sum_time = t.elapsed();
    let (after_sum_hwm, after_rss) = memory_kb(pid);
    eprintln!("sum(length(email)) in {sum_time:?}: VmHWM {after_sum_hwm} kB after");
    // Independent expectation: sum of length('user' || i || '@example.com').
    let expected: i64 = (1..=rows)
        .map(|i| 4 + i.to_string().len() as i64 + 12)
        .sum();
    assert_eq!(total_len, expected, "sum(length(email))");
    // Whole rows too (every column decoded).
    let t = Instant::now();
    let n = query_i64(
        &mut scan,
        "SELECT count(*) FROM mem_users WHERE length(name) > 0 AND score >= 0 AND created > '2000-01-01'",
    );
    let rows_time = t.elapsed();
    assert_eq!(n, rows);
    let (after_rows_hwm, _) = memory_kb(pid);

    let growth = after_rows_hwm - idle_hwm;
    eprintln!(
        "backend {pid} VmHWM: idle {idle_hwm} kB (RSS {idle_rss} kB), after a tiny conductor scan \
         {warm_hwm} kB, after count(*) {after_count_hwm} kB ({count_time:?}), after \
         sum(length(email)) {after_sum_hwm} kB ({sum_time:?}), after a whole-row scan \
         {after_rows_hwm} kB ({rows_time:?}); RSS now {after_rss} kB. \
         Peak growth over idle: {growth} kB ({:.1} MB), over warm: {} kB, for {rows} rows",
        growth as f64 / 1024.0,
        after_rows_hwm - warm_hwm
    );
    assert!(
        growth < BUDGET_KB,
        "peak RSS grew by {growth} kB scanning {rows} rows (budget {BUDGET_KB} kB)"
    );
}

#[test]
fn scan_memory_is_bounded() {
    run(500_000);
}

#[test]
#[ignore = "loads 10M rows (minutes); run with bench/scan_memory.sh"]
fn scan_memory_is_bounded_10m() {
    let rows = std::env::var("CONDUCTOR_SCAN_MEMORY_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000_000);
    run(rows);
}
