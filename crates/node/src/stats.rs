//! Counters served as JSON by `GET /stats`, so tests elsewhere can see how
//! many requests reached the node and what they did.

use crate::writer::GroupStats;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub struct Stats {
    pub v2_pipeline: AtomicU64,
    pub v3_pipeline: AtomicU64,
    pub v3_cursor: AtomicU64,
    pub v3_protobuf_pipeline: AtomicU64,
    pub v3_protobuf_cursor: AtomicU64,
    pub health: AtomicU64,
    pub version: AtomicU64,
    pub probe: AtomicU64,
    pub stats: AtomicU64,
    pub other: AtomicU64,
    /// SQL statements executed (execute, batch steps, sequence, cursor steps).
    pub statements: AtomicU64,
    /// Pipelines served on a worker thread's read connection.
    pub fast_reads: AtomicU64,
    /// Baton-less pipelines served by the writer connection on its thread.
    pub writer_pipelines: AtomicU64,
    /// Baton-less single-statement writes done on a worker thread with the
    /// writer connection.
    pub inline_writes: AtomicU64,
    /// Pipelines that waited for the write lock (held by another
    /// connection, e.g. a stream's open write transaction), and the time
    /// they waited in all, in microseconds.
    pub lock_waits: AtomicU64,
    pub lock_wait_us: AtomicU64,
    pub streams_opened: AtomicU64,
    pub streams_expired: AtomicU64,
    pub status_4xx: AtomicU64,
    pub status_5xx: AtomicU64,
}

impl Stats {
    pub fn to_json(&self, open_streams: usize, groups: &GroupStats) -> serde_json::Value {
        let g = |c: &AtomicU64| c.load(Relaxed);
        let by_endpoint = serde_json::json!({
            "/v2/pipeline": g(&self.v2_pipeline),
            "/v3/pipeline": g(&self.v3_pipeline),
            "/v3/cursor": g(&self.v3_cursor),
            "/v3-protobuf/pipeline": g(&self.v3_protobuf_pipeline),
            "/v3-protobuf/cursor": g(&self.v3_protobuf_cursor),
            "/health": g(&self.health),
            "/version": g(&self.version),
            "/v2, /v3 and /v3-protobuf": g(&self.probe),
            "/stats": g(&self.stats),
            "other": g(&self.other),
        });
        let total: u64 = [
            &self.v2_pipeline,
            &self.v3_pipeline,
            &self.v3_cursor,
            &self.v3_protobuf_pipeline,
            &self.v3_protobuf_cursor,
            &self.health,
            &self.version,
            &self.probe,
            &self.stats,
            &self.other,
        ]
        .iter()
        .map(|c| g(c))
        .sum();
        serde_json::json!({
            "requests_total": total,
            "requests": by_endpoint,
            "statements_executed": g(&self.statements),
            "open_streams": open_streams,
            "streams_opened": g(&self.streams_opened),
            "streams_expired": g(&self.streams_expired),
            "fast_read_pipelines": g(&self.fast_reads),
            "writer_pipelines": g(&self.writer_pipelines),
            "inline_write_pipelines": g(&self.inline_writes),
            "lock_waits": g(&self.lock_waits),
            "lock_wait_us": g(&self.lock_wait_us),
            "lock_waiting": crate::lockwait::waiting(),
            "group_commits": g(&groups.commits),
            "group_committed_writes": g(&groups.writes),
            "responses_4xx": g(&self.status_4xx),
            "responses_5xx": g(&self.status_5xx),
        })
    }
}
