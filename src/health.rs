//! Node health as this backend has seen it: after repeated transport
//! failures a node is marked unhealthy for a cool-down, and statements that
//! need it fail fast with an ERROR naming it (or, with
//! `conductor.on_shard_failure = skip`, reads leave its shards out). When the
//! cool-down ends the next statement tries the node again, and one success
//! makes it healthy: a node that comes back is used without a restart.
//!
//! The record is per backend (no shared memory), so each session learns on
//! its own; `conductor.nodes` shows the querying session's view.

use conductor_core::client::{NodeEndpoint, NodeError, NodeRef};
use conductor_core::executor::ShardError;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::BTreeMap;
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

/// This session's view of every node it has talked to, by URL.
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
