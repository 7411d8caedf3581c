//! Per-backend counters of the work sent to the nodes (metrics): which
//! shards each scan contacted, so routing can be observed rather than
//! assumed, and what `conductor.shard_requests()` reports.

use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::BTreeMap;

thread_local! {
    static SHARD_REQUESTS: RefCell<BTreeMap<(u32, u32), i64>> = const { RefCell::new(BTreeMap::new()) };
}

/// Record one request to each of `shards` of table `relid`.
pub fn count_shard_requests(relid: pg_sys::Oid, shards: impl Iterator<Item = u32>) {
    SHARD_REQUESTS.with(|m| {
        let mut m = m.borrow_mut();
        for shard in shards {
            *m.entry((relid.to_u32(), shard)).or_default() += 1;
        }
    });
}

/// Requests this backend sent per table and shard since it started (or
/// since `conductor.reset_shard_requests()`).
#[pg_extern]
fn shard_requests() -> TableIterator<
    'static,
    (
        name!(table_name, pg_sys::Oid),
        name!(shard_id, i32),
        name!(requests, i64),
    ),
> {
    let rows: Vec<_> = SHARD_REQUESTS.with(|m| {
        m.borrow()
            .iter()
            .map(|(&(relid, shard), &n)| (pg_sys::Oid::from(relid), shard as i32, n))
            .collect()
    });
    TableIterator::new(rows)
}

/// Forget this backend's request counters.
#[pg_extern]
fn reset_shard_requests() {
    SHARD_REQUESTS.with(|m| m.borrow_mut().clear());
}
