//! Per-backend topology cache with transactional invalidation.
//!
//! A lookup that hits does no catalog access at all. Every change to the
//! catalog tables fires a statement trigger that queues a relcache
//! invalidation of `conductor.distributed_table` (see sql/finalize.sql);
//! Postgres delivers it to this backend at the next command and to every
//! other backend when the change commits, and the callback below drops the
//! cache. ALTER/DROP of a foreign table invalidates that relation, which
//! drops its entry.

use super::{load_table, relation_display_name, TableTopology};
use crate::errors::raise;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

#[derive(Default, Clone, Copy)]
pub struct CacheStats {
    pub hits: i64,
    pub misses: i64,
    pub invalidations: i64,
}

thread_local! {
    static TABLES: RefCell<HashMap<pg_sys::Oid, Rc<TableTopology>>> = RefCell::new(HashMap::new());
    static STATS: Cell<CacheStats> = Cell::new(CacheStats::default());
    /// Oid of conductor.distributed_table, the relation whose invalidation
    /// means "the topology changed". Learned on first load.
    static CATALOG_RELID: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::Oid::INVALID) };
    /// Bumped by every invalidation of the topology, or of the table being
    /// loaded: a topology whose load saw it change is not kept (see
    /// `try_table`).
    static GENERATION: Cell<u64> = const { Cell::new(0) };
    /// The table `try_table` is loading.
    static LOADING: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::Oid::INVALID) };
}

fn bump(f: impl FnOnce(&mut CacheStats)) {
    STATS.with(|s| {
        let mut v = s.get();
        f(&mut v);
        s.set(v);
    });
}

pub fn stats() -> CacheStats {
    STATS.with(|s| s.get())
}

/// The topology of a distributed table; None if `relid` is not distributed.
pub fn try_table(relid: pg_sys::Oid) -> Option<Rc<TableTopology>> {
    if let Some(hit) = TABLES.with(|t| t.borrow().get(&relid).cloned()) {
        bump(|s| s.hits += 1);
        return Some(hit);
    }
    bump(|s| s.misses += 1);
    remember_catalog_relid();
    // Reading the catalog locks its tables, which delivers invalidations
    // queued meanwhile, but the rows are read with the statement's snapshot,
    // which may predate the change they announce (a shard move's switch):
    // kept, such a topology would outlive the invalidation that should have
    // dropped it. It serves this statement only (which the old location's
    // fence refuses if it writes there); the next one loads again.
    let generation = GENERATION.with(|g| g.get());
    let outer = LOADING.with(|l| l.replace(relid));
    let loaded = load_table(relid);
    LOADING.with(|l| l.set(outer));
    let loaded = Rc::new(loaded?);
    if GENERATION.with(|g| g.get()) == generation {
        // The invalidations were taken in before this load began too (when
        // the statement locked the table, after its snapshot was taken):
        // the entry kept is read under a snapshot taken now, which sees
        // every change whose invalidation this backend has processed, so
        // the next transaction does not reuse a location a move has left.
        // SAFETY: the snapshot is pushed and popped around the reads; an
        // ERROR in between pops it with the transaction's abort.
        unsafe { pg_sys::PushActiveSnapshot(pg_sys::GetLatestSnapshot()) };
        LOADING.with(|l| l.replace(relid));
        let current = load_table(relid);
        LOADING.with(|l| l.set(outer));
        unsafe { pg_sys::PopActiveSnapshot() };
        if let Some(current) = current {
            if GENERATION.with(|g| g.get()) == generation {
                TABLES.with(|t| t.borrow_mut().insert(relid, Rc::new(current)));
            }
        }
    }
    Some(loaded)
}

/// The topology of a foreign table that must be distributed.
pub fn table(relid: pg_sys::Oid) -> Rc<TableTopology> {
    try_table(relid).unwrap_or_else(|| {
        raise(
            PgSqlErrorCode::ERRCODE_FDW_TABLE_NOT_FOUND,
            format!(
                "foreign table {} is not distributed",
                relation_display_name(relid)
            ),
        )
        .hint("Call conductor.create_distributed_table() for it first.")
        .error()
    })
}

fn remember_catalog_relid() {
    if CATALOG_RELID.with(|c| c.get()) == pg_sys::Oid::INVALID {
        CATALOG_RELID.with(|c| c.set(catalog_relid()));
    }
}

fn catalog_relid() -> pg_sys::Oid {
    // SAFETY: plain catalog lookups inside a transaction.
    unsafe {
        let nsp = pg_sys::get_namespace_oid(c"conductor".as_ptr(), true);
        if nsp == pg_sys::Oid::INVALID {
            return pg_sys::Oid::INVALID;
        }
        pg_sys::get_relname_relid(c"distributed_table".as_ptr(), nsp)
    }
}

/// Called by the catalog triggers: queue an invalidation that reaches this
/// backend at the next command and every backend at commit.
#[pg_extern(name = "_invalidate_topology_cache")]
fn invalidate_topology_cache() {
    let relid = catalog_relid();
    // SAFETY: queues a transactional invalidation message; no pointers kept.
    unsafe { pg_sys::CacheInvalidateRelcacheByRelid(relid) };
}

#[pg_guard]
unsafe extern "C-unwind" fn on_relcache_invalidation(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    let catalog = CATALOG_RELID.with(|c| c.get());
    if relid == pg_sys::Oid::INVALID || relid == catalog || relid == LOADING.with(|l| l.get()) {
        GENERATION.with(|g| g.set(g.get() + 1));
    }
    TABLES.with(|t| {
        let mut tables = t.borrow_mut();
        if relid == pg_sys::Oid::INVALID || relid == catalog {
            if !tables.is_empty() {
                tables.clear();
                bump(|s| s.invalidations += 1);
            }
        } else if tables.remove(&relid).is_some() {
            bump(|s| s.invalidations += 1);
        }
    });
}

pub fn register_invalidation_callbacks() {
    // SAFETY: registered once per backend from _PG_init; the callback only
    // touches this backend's thread-local cache.
    unsafe {
        pg_sys::CacheRegisterRelcacheCallback(
            Some(on_relcache_invalidation),
            pg_sys::Datum::from(0),
        );
    }
    super::credentials::register_invalidation_callbacks();
}

/// This backend's topology cache counters.
#[pg_extern]
fn cache_stats() -> TableIterator<
    'static,
    (
        name!(hits, i64),
        name!(misses, i64),
        name!(invalidations, i64),
    ),
> {
    let s = stats();
    TableIterator::once((s.hits, s.misses, s.invalidations))
}
