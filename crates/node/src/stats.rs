//! The node's counters, served two ways from the same atomics: as JSON by
//! `GET /stats` (the tests elsewhere read how many requests reached the
//! node and what they did) and in the Prometheus text format by
//! `GET /metrics`.

use crate::writer::GroupStats;
use conductor_hrana::{StreamResponse, StreamResult};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// An endpoint the counters tell apart: (key in `/stats`, `endpoint` label
/// in `/metrics`), indexed by [`Endpoint`].
const ENDPOINTS: [(&str, &str); 11] = [
    ("/v2/pipeline", "/v2/pipeline"),
    ("/v3/pipeline", "/v3/pipeline"),
    ("/v3/cursor", "/v3/cursor"),
    ("/v3-protobuf/pipeline", "/v3-protobuf/pipeline"),
    ("/v3-protobuf/cursor", "/v3-protobuf/cursor"),
    ("/health", "/health"),
    ("/version", "/version"),
    ("/v2, /v3 and /v3-protobuf", "probe"),
    ("/stats", "/stats"),
    ("/metrics", "/metrics"),
    ("other", "other"),
];

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Endpoint(usize);

impl Endpoint {
    pub const V2_PIPELINE: Endpoint = Endpoint(0);
    pub const V3_PIPELINE: Endpoint = Endpoint(1);
    pub const V3_CURSOR: Endpoint = Endpoint(2);
    pub const V3_PROTOBUF_PIPELINE: Endpoint = Endpoint(3);
    pub const V3_PROTOBUF_CURSOR: Endpoint = Endpoint(4);
    pub const HEALTH: Endpoint = Endpoint(5);
    pub const VERSION: Endpoint = Endpoint(6);
    pub const PROBE: Endpoint = Endpoint(7);
    pub const STATS: Endpoint = Endpoint(8);
    pub const METRICS: Endpoint = Endpoint(9);
    pub const OTHER: Endpoint = Endpoint(10);

    /// The endpoint a request path counts under.
    pub fn of_path(path: &str) -> Endpoint {
        match path {
            "/v2/pipeline" => Endpoint::V2_PIPELINE,
            "/v3/pipeline" => Endpoint::V3_PIPELINE,
            "/v3/cursor" => Endpoint::V3_CURSOR,
            "/v3-protobuf/pipeline" => Endpoint::V3_PROTOBUF_PIPELINE,
            "/v3-protobuf/cursor" => Endpoint::V3_PROTOBUF_CURSOR,
            "/health" => Endpoint::HEALTH,
            "/version" => Endpoint::VERSION,
            "/v2" | "/v3" | "/v3-protobuf" => Endpoint::PROBE,
            "/stats" => Endpoint::STATS,
            "/metrics" => Endpoint::METRICS,
            _ => Endpoint::OTHER,
        }
    }
}

/// HTTP status codes 100..=599, one counter each per endpoint: exact codes
/// for the price of a few kilobytes and no lock on the request path.
const STATUS_MIN: u16 = 100;
const STATUS_SLOTS: usize = 500;

/// Upper bounds (seconds) of the request latency histogram's buckets,
/// log-spaced from 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

struct Latency {
    /// Requests per bucket (not cumulative); the last one is +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

pub struct Stats {
    /// Responses per endpoint and status: `ENDPOINTS.len() * STATUS_SLOTS`.
    responses: Box<[AtomicU64]>,
    latency: [Latency; ENDPOINTS.len()],
    /// SQL statements executed (execute, batch steps, sequence, cursor steps).
    pub statements: AtomicU64,
    /// Rows statements read and wrote, as each statement's result reports
    /// them (`rows_read`, `rows_written`).
    pub rows_read: AtomicU64,
    pub rows_written: AtomicU64,
    /// Pipelines served on a worker thread's read connection.
    pub fast_reads: AtomicU64,
    /// Baton-less pipelines served by the writer connection on its thread.
    pub writer_pipelines: AtomicU64,
    /// Baton-less single-statement writes done on a worker thread with the
    /// writer connection.
    pub inline_writes: AtomicU64,
    /// Stream pipelines run on a worker thread (the others run on a
    /// blocking thread): those that only end a transaction holding the
    /// write lock (COMMIT, ROLLBACK), and a transaction's first write when
    /// the lock was free.
    pub inline_stream_pipelines: AtomicU64,
    /// Pipelines that waited for the write lock (held by another
    /// connection, e.g. a stream's open write transaction), and the time
    /// they waited in all, in microseconds.
    pub lock_waits: AtomicU64,
    pub lock_wait_us: AtomicU64,
    /// Single-statement writes that found the write lock taken (by the
    /// writer thread or a stream's transaction) and were queued instead.
    pub write_lock_waits: AtomicU64,
    pub streams_opened: AtomicU64,
    pub streams_expired: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            responses: (0..ENDPOINTS.len() * STATUS_SLOTS)
                .map(|_| AtomicU64::new(0))
                .collect(),
            latency: std::array::from_fn(|_| Latency::default()),
            statements: AtomicU64::new(0),
            rows_read: AtomicU64::new(0),
            rows_written: AtomicU64::new(0),
            fast_reads: AtomicU64::new(0),
            writer_pipelines: AtomicU64::new(0),
            inline_writes: AtomicU64::new(0),
            inline_stream_pipelines: AtomicU64::new(0),
            lock_waits: AtomicU64::new(0),
            lock_wait_us: AtomicU64::new(0),
            write_lock_waits: AtomicU64::new(0),
            streams_opened: AtomicU64::new(0),
            streams_expired: AtomicU64::new(0),
        }
    }
}

/// What `/metrics` shows besides the counters: gauges read when asked.
pub struct Gauges {
    pub open_streams: usize,
    pub open_transactions: usize,
    pub wal_bytes: u64,
}

impl Stats {
    /// One request answered: its status and the time to its response head
    /// (a cursor's rows stream after that).
    pub fn record(&self, endpoint: Endpoint, status: u16, elapsed: Duration) {
        let slot =
            (status.clamp(STATUS_MIN, STATUS_MIN + STATUS_SLOTS as u16 - 1) - STATUS_MIN) as usize;
        self.responses[endpoint.0 * STATUS_SLOTS + slot].fetch_add(1, Relaxed);
        let latency = &self.latency[endpoint.0];
        let secs = elapsed.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(LATENCY_BUCKETS.len());
        latency.buckets[bucket].fetch_add(1, Relaxed);
        latency
            .sum_micros
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    /// Adds the rows the statements of a pipeline's results read and wrote.
    pub fn count_rows(&self, results: &[StreamResult]) {
        let (mut read, mut written) = (0, 0);
        let mut add = |r: &conductor_hrana::StmtResult| {
            read += r.rows_read.unwrap_or(0);
            written += r.rows_written.unwrap_or(0);
        };
        for result in results {
            match result {
                StreamResult::Ok {
                    response: StreamResponse::Execute { result },
                } => add(result),
                StreamResult::Ok {
                    response: StreamResponse::Batch { result },
                } => result.step_results.iter().flatten().for_each(&mut add),
                _ => {}
            }
        }
        self.add_rows(read, written);
    }

    pub fn add_rows(&self, read: u64, written: u64) {
        if read > 0 {
            self.rows_read.fetch_add(read, Relaxed);
        }
        if written > 0 {
            self.rows_written.fetch_add(written, Relaxed);
        }
    }

    /// (endpoint, status, responses) for every non-zero counter.
    fn responses(&self) -> impl Iterator<Item = (usize, u16, u64)> + '_ {
        self.responses.iter().enumerate().filter_map(|(i, c)| {
            let n = c.load(Relaxed);
            (n > 0).then(|| (i / STATUS_SLOTS, (i % STATUS_SLOTS) as u16 + STATUS_MIN, n))
        })
    }

    pub fn to_json(&self, open_streams: usize, groups: &GroupStats) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Relaxed);
        let mut per_endpoint = [0u64; ENDPOINTS.len()];
        let (mut total, mut r4xx, mut r5xx) = (0, 0, 0);
        for (endpoint, status, n) in self.responses() {
            per_endpoint[endpoint] += n;
            total += n;
            match status {
                400..=499 => r4xx += n,
                500..=599 => r5xx += n,
                _ => {}
            }
        }
        let by_endpoint: serde_json::Map<String, serde_json::Value> = ENDPOINTS
            .iter()
            .zip(per_endpoint)
            .map(|((key, _), n)| (key.to_string(), n.into()))
            .collect();
        serde_json::json!({
            "requests_total": total,
            "requests": by_endpoint,
            "statements_executed": g(&self.statements),
            "rows_read": g(&self.rows_read),
            "rows_written": g(&self.rows_written),
            "open_streams": open_streams,
            "streams_opened": g(&self.streams_opened),
            "streams_expired": g(&self.streams_expired),
            "fast_read_pipelines": g(&self.fast_reads),
            "writer_pipelines": g(&self.writer_pipelines),
            "inline_write_pipelines": g(&self.inline_writes),
            "inline_stream_pipelines": g(&self.inline_stream_pipelines),
            "lock_waits": g(&self.lock_waits),
            "lock_wait_us": g(&self.lock_wait_us),
            "lock_waiting": crate::lockwait::waiting(),
            "write_lock_waits": g(&self.write_lock_waits),
            "group_commits": g(&groups.commits),
            "group_committed_writes": g(&groups.writes),
            "responses_4xx": r4xx,
            "responses_5xx": r5xx,
        })
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn to_prometheus(&self, gauges: &Gauges, groups: &GroupStats) -> String {
        let mut out = String::with_capacity(8192);
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };

        family(
            &mut out,
            "conductor_node_http_requests_total",
            "counter",
            "HTTP requests answered, by endpoint and status code.",
        );
        for (endpoint, status, n) in self.responses() {
            let _ = writeln!(
                out,
                "conductor_node_http_requests_total{{endpoint=\"{}\",code=\"{status}\"}} {n}",
                ENDPOINTS[endpoint].1
            );
        }

        family(
            &mut out,
            "conductor_node_http_request_duration_seconds",
            "histogram",
            "Time from a request's arrival to its response head (a cursor's rows stream after it), by endpoint.",
        );
        for (endpoint, latency) in self.latency.iter().enumerate() {
            let label = ENDPOINTS[endpoint].1;
            let counts: Vec<u64> = latency.buckets.iter().map(|b| b.load(Relaxed)).collect();
            let count: u64 = counts.iter().sum();
            if count == 0 {
                continue;
            }
            let mut cumulative = 0;
            for (le, n) in LATENCY_BUCKETS.iter().zip(&counts) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "conductor_node_http_request_duration_seconds_bucket{{endpoint=\"{label}\",le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "conductor_node_http_request_duration_seconds_bucket{{endpoint=\"{label}\",le=\"+Inf\"}} {count}\n\
                 conductor_node_http_request_duration_seconds_sum{{endpoint=\"{label}\"}} {}\n\
                 conductor_node_http_request_duration_seconds_count{{endpoint=\"{label}\"}} {count}",
                latency.sum_micros.load(Relaxed) as f64 / 1e6
            );
        }

        let counters: [(&str, &str, u64); 14] = [
            (
                "conductor_node_statements_total",
                "SQL statements executed.",
                self.statements.load(Relaxed),
            ),
            (
                "conductor_node_rows_read_total",
                "Rows read by statements, as their results report rows_read.",
                self.rows_read.load(Relaxed),
            ),
            (
                "conductor_node_rows_written_total",
                "Rows inserted, updated or deleted by statements.",
                self.rows_written.load(Relaxed),
            ),
            (
                "conductor_node_streams_opened_total",
                "Streams (interactive connections) opened.",
                self.streams_opened.load(Relaxed),
            ),
            (
                "conductor_node_streams_expired_total",
                "Streams closed for being idle too long (their transactions rolled back).",
                self.streams_expired.load(Relaxed),
            ),
            (
                "conductor_node_fast_read_pipelines_total",
                "Pipelines served on a worker thread's read connection.",
                self.fast_reads.load(Relaxed),
            ),
            (
                "conductor_node_writer_pipelines_total",
                "Pipelines served by the writer thread.",
                self.writer_pipelines.load(Relaxed),
            ),
            (
                "conductor_node_inline_write_pipelines_total",
                "Single-statement writes done on a worker thread with the writer connection.",
                self.inline_writes.load(Relaxed),
            ),
            (
                "conductor_node_inline_stream_pipelines_total",
                "Stream pipelines run on a worker thread: ending a write transaction (COMMIT, ROLLBACK), or a transaction's first write while the write lock was free.",
                self.inline_stream_pipelines.load(Relaxed),
            ),
            (
                "conductor_node_write_lock_waits_total",
                "Single-statement writes that found the write lock taken and were queued for the writer thread.",
                self.write_lock_waits.load(Relaxed),
            ),
            (
                "conductor_node_lock_waits_total",
                "Pipelines that waited for another connection's write lock.",
                self.lock_waits.load(Relaxed),
            ),
            (
                "conductor_node_lock_wait_microseconds_total",
                "Time those pipelines waited for the write lock.",
                self.lock_wait_us.load(Relaxed),
            ),
            (
                "conductor_node_group_commits_total",
                "Commits of the writer thread's groups of single-statement writes.",
                groups.commits.load(Relaxed),
            ),
            (
                "conductor_node_group_committed_writes_total",
                "Writes committed in those groups.",
                groups.writes.load(Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            family(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {value}");
        }

        let gauge_values: [(&str, &str, u64); 3] = [
            (
                "conductor_node_open_streams",
                "Streams open now.",
                gauges.open_streams as u64,
            ),
            (
                "conductor_node_open_transactions",
                "Streams whose connection is inside a transaction, as of their last request.",
                gauges.open_transactions as u64,
            ),
            (
                "conductor_node_wal_bytes",
                "Size of the database's write-ahead log file.",
                gauges.wal_bytes,
            ),
        ];
        for (name, help, value) in gauge_values {
            family(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}
