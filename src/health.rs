//! Node health as this backend has seen it: after repeated transport
//! failures a node is marked unhealthy for a cool-down, and statements that
//! need it fail fast with an ERROR naming it (or, with
//! `conductor.on_shard_failure = skip`, reads leave its shards out). When the
//! cool-down ends the next statement tries the node again, and one success
//! makes it healthy: a node that comes back is used without a restart.
//!
//! With the library in `shared_preload_libraries` the record is in shared
//! memory (the node entries of `src/stats.rs`): once one session marks a
//! node down, every session fails fast on it, and when the cool-down ends
//! one session probes it (it claims the probe; the others keep failing
//! fast until its answer, or until the probe's request deadline passed).
//! Without it the record is per backend, so each session learns on its
//! own; `conductor.nodes` shows the querying session's view then.

use conductor_core::client::{NodeEndpoint, NodeError, NodeRef};
use conductor_core::executor::ShardError;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

/// Consecutive transport failures that mark a node unhealthy.
const FAILURES_TO_MARK_DOWN: u32 = 3;

#[derive(Default)]
struct Health {
    consecutive_failures: u32,
    last_error: Option<(String, SystemTime)>,
    down_until: Option<Instant>,
}

thread_local! {
    static NODES: RefCell<BTreeMap<String, Health>> = const { RefCell::new(BTreeMap::new()) };
}

fn cooldown() -> Duration {
    Duration::from_millis(crate::gucs::NODE_COOLDOWN_MS.get().max(0) as u64)
}

/// Whether a failure says something about the node's health: it could not
/// be reached, broke the connection, stayed silent or answered 5xx. An SQL
/// error, a refused token (401) or a malformed request says nothing about it.
fn is_node_failure(e: &NodeError) -> bool {
    e.is_transient()
}

pub fn record_failure(err: &ShardError) {
    if !is_node_failure(&err.error) {
        // The node answered: whatever it refused, it is up.
        record_success(&err.url);
        return;
    }
    if let Some(e) = crate::stats::node(&err.url, &err.node_id) {
        let failures = e.failures.fetch_add(1, Ordering::AcqRel) + 1;
        crate::stats::set_last_error(e, &err.to_string());
        if failures >= FAILURES_TO_MARK_DOWN {
            let until = now_us() + cooldown().as_micros() as i64;
            e.down_until_us.store(until, Ordering::Release);
        }
        e.probe_since_us.store(0, Ordering::Release);
        return;
    }
    NODES.with(|n| {
        let mut nodes = n.borrow_mut();
        let h = nodes.entry(err.url.clone()).or_default();
        h.consecutive_failures += 1;
        h.last_error = Some((err.to_string(), SystemTime::now()));
        if h.consecutive_failures >= FAILURES_TO_MARK_DOWN {
            h.down_until = Some(Instant::now() + cooldown());
        }
    });
}

pub fn record_success(url: &str) {
    if crate::stats::is_shared() {
        if let Some(e) = crate::stats::find_node(url) {
            if e.failures.load(Ordering::Acquire) != 0
                || e.down_until_us.load(Ordering::Acquire) != 0
                || e.probe_since_us.load(Ordering::Acquire) != 0
            {
                e.failures.store(0, Ordering::Release);
                e.down_until_us.store(0, Ordering::Release);
                e.probe_since_us.store(0, Ordering::Release);
            }
        }
        return;
    }
    NODES.with(|n| {
        if let Some(h) = n.borrow_mut().get_mut(url) {
            h.consecutive_failures = 0;
            h.down_until = None;
        }
    });
}

/// The error a request to a node cooling down fails with at once (as if
/// the connection had been refused: nothing was sent).
pub fn refusal(endpoint: &NodeEndpoint, shard: Option<u32>) -> Option<ShardError> {
    let why = unavailable(&endpoint.url)?;
    Some(ShardError::new(
        shard,
        NodeError::Connect {
            node: NodeRef::from(endpoint),
            message: why,
        },
    ))
}

/// Why a node must not be contacted now, if it is cooling down.
fn unavailable(url: &str) -> Option<String> {
    if crate::stats::is_shared() {
        return unavailable_shared(url);
    }
    NODES.with(|n| {
        let nodes = n.borrow();
        let h = nodes.get(url)?;
        let until = h.down_until?;
        let left = until.checked_duration_since(Instant::now())?;
        Some(format!(
            "marked unhealthy after {} consecutive failures; retried in {:.1} s. Last error: {}",
            h.consecutive_failures,
            left.as_secs_f64(),
            h.last_error
                .as_ref()
                .map(|(e, _)| e.as_str())
                .unwrap_or("-")
        ))
    })
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn unavailable_shared(url: &str) -> Option<String> {
    let e = crate::stats::find_node(url)?;
    let until = e.down_until_us.load(Ordering::Acquire);
    if until == 0 {
        return None;
    }
    let now = now_us();
    let why = |what: String| {
        Some(format!(
            "marked unhealthy after {} consecutive failures; {what}. Last error: {}",
            e.failures.load(Ordering::Acquire),
            crate::stats::last_error(e).unwrap_or_else(|| "-".to_string())
        ))
    };
    if now < until {
        return why(format!("retried in {:.1} s", (until - now) as f64 / 1e6));
    }
    // The cool-down is over: one session probes the node, the others wait
    // for its answer (or for its request deadline, should it never come).
    // SAFETY: the backend's own pid, set before any query runs.
    let me = unsafe { pg_sys::MyProcPid };
    let since = e.probe_since_us.load(Ordering::Acquire);
    let limit = crate::gucs::request_timeout().as_micros() as i64 + 1_000_000;
    if since != 0 && now - since < limit {
        if e.probe_pid.load(Ordering::Acquire) == me {
            return None;
        }
        return why("another session is checking whether it is back".to_string());
    }
    match e
        .probe_since_us
        .compare_exchange(since, now, Ordering::AcqRel, Ordering::Acquire)
    {
        Ok(_) => {
            e.probe_pid.store(me, Ordering::Release);
            None
        }
        Err(_) => why("another session is checking whether it is back".to_string()),
    }
}

/// Every session's view (shared memory) or this session's, by URL.
#[pg_extern]
fn node_health() -> TableIterator<
    'static,
    (
        name!(url, String),
        name!(healthy, bool),
        name!(consecutive_failures, i32),
        name!(last_error, Option<String>),
        name!(last_error_at, Option<pgrx::datum::TimestampWithTimeZone>),
    ),
> {
    if crate::stats::is_shared() {
        let now = now_us();
        let rows: Vec<_> = crate::stats::nodes()
            .into_iter()
            .map(|(url, _, e)| {
                let down = e.down_until_us.load(Ordering::Acquire);
                let failed_at = e.last_error_at_us.load(Ordering::Acquire);
                (
                    url,
                    !(down != 0 && down > now),
                    e.failures.load(Ordering::Acquire) as i32,
                    crate::stats::last_error(e),
                    (failed_at != 0)
                        .then(|| to_timestamp(failed_at as f64 / 1e6))
                        .flatten(),
                )
            })
            .collect();
        return TableIterator::new(rows);
    }
    let rows: Vec<_> = NODES.with(|n| {
        n.borrow()
            .iter()
            .map(|(url, h)| {
                let down = h.down_until.is_some_and(|u| u > Instant::now());
                let at = h.last_error.as_ref().and_then(|(_, t)| {
                    to_timestamp(t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs_f64())
                });
                (
                    url.clone(),
                    !down,
                    h.consecutive_failures as i32,
                    h.last_error.as_ref().map(|(e, _)| e.clone()),
                    at,
                )
            })
            .collect()
    });
    TableIterator::new(rows)
}

fn to_timestamp(unix_seconds: f64) -> Option<pgrx::datum::TimestampWithTimeZone> {
    Spi::get_one_with_args::<pgrx::datum::TimestampWithTimeZone>(
        "SELECT to_timestamp($1)",
        &[unix_seconds.into()],
    )
    .ok()
    .flatten()
}
