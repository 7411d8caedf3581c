//! Counters of the work sent to the nodes.
//!
//! Two kinds:
//! - per backend: which shards each plan contacted
//!   (`conductor.shard_requests()`), so a test can observe routing from
//!   its own session;
//! - in shared memory, when the library is in `shared_preload_libraries`:
//!   per statement and table (`conductor.stat_statements`), per node
//!   (`conductor.stat_nodes`, and the node health of `src/health.rs`), per
//!   shard (`conductor.stat_shards`) and the shard-key values with the most
//!   load (`conductor.stat_shard_keys`), seen by every session.
//!
//! The tables are fixed-size arrays allocated at server start. Node and
//! shard counters are atomics found without a lock (a node's slot is
//! claimed under a lock, once); statements and shard keys are updated
//! under their own LWLock, once per statement and table, at the end of the
//! statement. Nothing here allocates per row.
//!
//! Within a statement the backend adds up its plans' figures per table
//! (`Acc`); they reach shared memory when the top-level executor ends (or
//! the transaction, or the savepoint the statement ran in, is rolled back).
//! An open cursor's figures are kept aside while other statements run
//! between its fetches.

// Another module's hook may raise an ERROR: the boundary turns its longjmp
// into an unwind through these frames.
use pgrx::pg_sys::submodules::ffi::pg_guard_ffi_boundary;
use pgrx::prelude::*;
use std::cell::{RefCell, UnsafeCell};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Statement entries (query id × table); the least-called is evicted.
const MAX_STATEMENTS: usize = 1000;
/// Node entries (by URL); past this, new nodes are not tracked.
const MAX_NODES: usize = 128;
/// Shard counter slots (table × shard), open addressing.
const MAX_SHARDS: usize = 16384;
/// Probes before a shard is counted as dropped.
const SHARD_PROBES: usize = 64;
/// Shard-key values tracked by the space-saving sketch.
const TOP_KEYS: usize = 128;
const QUERY_TEXT: usize = 256;
const URL_LEN: usize = 256;
const NAME_LEN: usize = 64;
const ERROR_LEN: usize = 512;
const KEY_TEXT: usize = 64;
/// Latency buckets: bucket `b` holds requests faster than
/// `BUCKET_BASE_US * 2^(b/2)` (and slower than bucket `b - 1`'s bound);
/// the last one holds everything slower.
pub const BUCKETS: usize = 48;
const BUCKET_BASE_US: f64 = 50.0;

const ENABLE_HINT: &str = "Add conductor to shared_preload_libraries in postgresql.conf (shared_preload_libraries = 'conductor') and restart the server.";

#[repr(C)]
struct StmtKey {
    queryid: i64,
    relid: u32,
    used: u32,
}

#[repr(C)]
struct Statement {
    // Added to under the shared statement lock (many backends at once);
    // the entry is claimed, reset and its text set under the exclusive one.
    calls: AtomicU64,
    rows: AtomicU64,
    total_us: AtomicU64,
    max_us: AtomicU64,
    remote_us: AtomicU64,
    one_shard: AtomicU64,
    some_shards: AtomicU64,
    all_shards: AtomicU64,
    retries: AtomicU64,
    errors: AtomicU64,
    query_len: u32,
    query: [u8; QUERY_TEXT],
}

impl Statement {
    fn add(&self, acc: &Acc, call: Option<u64>) {
        let add = |c: &AtomicU64, v: u64| {
            if v > 0 {
                c.fetch_add(v, Ordering::Relaxed);
            }
        };
        if let Some(us) = call {
            add(&self.calls, 1);
            add(&self.total_us, us);
            self.max_us.fetch_max(us, Ordering::Relaxed);
        }
        add(&self.rows, acc.rows);
        add(&self.remote_us, acc.remote_us);
        add(&self.one_shard, acc.one_shard);
        add(&self.some_shards, acc.some_shards);
        add(&self.all_shards, acc.all_shards);
        add(&self.retries, acc.retries);
        add(&self.errors, acc.errors);
    }
}

#[repr(C)]
struct Text<const N: usize> {
    len: u32,
    bytes: [u8; N],
}

impl<const N: usize> Text<N> {
    fn set(&mut self, text: &str) {
        self.len = copy_text(&mut self.bytes, text);
    }
    fn get(&self) -> Option<String> {
        (self.len > 0).then(|| text_of(&self.bytes, self.len))
    }
}

#[repr(C)]
pub struct Node {
    /// Hash of the URL, 0 while the slot is free; published (Release) after
    /// the URL and name were written (under the node lock), so a reader that
    /// sees it sees them; they never change afterwards.
    hash: AtomicU64,
    url: UnsafeCell<Text<URL_LEN>>,
    name: UnsafeCell<Text<NAME_LEN>>,
    requests: AtomicU64,
    errors: AtomicU64,
    timeouts: AtomicU64,
    rows: AtomicU64,
    bytes_out: AtomicU64,
    bytes_in: AtomicU64,
    in_flight: AtomicI64,
    hist: [AtomicU64; BUCKETS],
    /// Health (src/health.rs).
    pub failures: AtomicU32,
    /// Unix microseconds until which the node is left alone (0: healthy).
    pub down_until_us: AtomicI64,
    /// When a session started probing the node after its cool-down (0: none).
    pub probe_since_us: AtomicI64,
    /// The backend probing it.
    pub probe_pid: std::sync::atomic::AtomicI32,
    pub last_error_at_us: AtomicI64,
    /// Under the node lock.
    last_error: UnsafeCell<Text<ERROR_LEN>>,
}

#[repr(C)]
struct Shard {
    /// `relid << 32 | shard`, 0 while free (relids are never 0).
    key: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    rows: AtomicU64,
}

#[repr(C)]
struct KeyEntry {
    relid: u32,
    text_len: u32,
    hash: u64,
    count: u64,
    /// Space-saving overestimate bound: the count the entry inherited.
    error: u64,
    text: [u8; KEY_TEXT],
}

#[repr(C)]
struct StmtTable {
    keys: [StmtKey; MAX_STATEMENTS],
    stmts: [Statement; MAX_STATEMENTS],
    evictions: u64,
}

#[repr(C)]
struct KeyTable {
    count: u32,
    keys: [KeyEntry; TOP_KEYS],
}

#[repr(C)]
struct Shared {
    stmt_lock: *mut pg_sys::LWLock,
    node_lock: *mut pg_sys::LWLock,
    key_lock: *mut pg_sys::LWLock,
    /// Under `stmt_lock`.
    stmts: UnsafeCell<StmtTable>,
    node_count: AtomicU32,
    nodes: [Node; MAX_NODES],
    shards_dropped: AtomicU64,
    shards: [Shard; MAX_SHARDS],
    /// Under `key_lock`.
    keys: UnsafeCell<KeyTable>,
}

/// Set in the postmaster's shared-memory startup; backends inherit it.
static mut SHARED: *mut Shared = std::ptr::null_mut();
static mut PREV_SHMEM_REQUEST: pg_sys::shmem_request_hook_type = None;
static mut PREV_SHMEM_STARTUP: pg_sys::shmem_startup_hook_type = None;
static mut PREV_EXECUTOR_START: pg_sys::ExecutorStart_hook_type = None;
static mut PREV_EXECUTOR_END: pg_sys::ExecutorEnd_hook_type = None;
static mut PREV_EXECUTOR_RUN: pg_sys::ExecutorRun_hook_type = None;
static mut PREV_EXECUTOR_FINISH: pg_sys::ExecutorFinish_hook_type = None;

const TRANCHE: &std::ffi::CStr = c"conductor";

/// From `_PG_init`: reserve shared memory and hook the executor, when
/// loaded by `shared_preload_libraries` (otherwise nothing is shared).
pub fn init() {
    // SAFETY: _PG_init runs on the backend's (or postmaster's) only thread.
    unsafe {
        if !pg_sys::process_shared_preload_libraries_in_progress {
            return;
        }
        PREV_SHMEM_REQUEST = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(shmem_request);
        PREV_SHMEM_STARTUP = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(shmem_startup);
        PREV_EXECUTOR_START = pg_sys::ExecutorStart_hook;
        pg_sys::ExecutorStart_hook = Some(executor_start);
        PREV_EXECUTOR_END = pg_sys::ExecutorEnd_hook;
        pg_sys::ExecutorEnd_hook = Some(executor_end);
        PREV_EXECUTOR_RUN = pg_sys::ExecutorRun_hook;
        pg_sys::ExecutorRun_hook = Some(executor_run);
        PREV_EXECUTOR_FINISH = pg_sys::ExecutorFinish_hook;
        pg_sys::ExecutorFinish_hook = Some(executor_finish);
        // Statements are keyed by Postgres' query id, which is computed
        // only when a module asks for it (as pg_stat_statements does).
        pg_sys::EnableQueryId();
        // Backends inherit it from the postmaster.
        let _ = conductor_core::client::TRAFFIC.set(traffic);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_request() {
    unsafe {
        if let Some(prev) = PREV_SHMEM_REQUEST {
            pg_guard_ffi_boundary(|| prev());
        }
        pg_sys::RequestAddinShmemSpace(std::mem::size_of::<Shared>());
        pg_sys::RequestNamedLWLockTranche(TRANCHE.as_ptr(), 3);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn shmem_startup() {
    unsafe {
        if let Some(prev) = PREV_SHMEM_STARTUP {
            pg_guard_ffi_boundary(|| prev());
        }
        let init_lock = &raw mut (*pg_sys::MainLWLockArray.add(21)).lock;
        pg_sys::LWLockAcquire(init_lock, pg_sys::LWLockMode::LW_EXCLUSIVE);
        let mut found = false;
        let shared = pg_sys::ShmemInitStruct(
            c"conductor stats".as_ptr(),
            std::mem::size_of::<Shared>(),
            &mut found,
        )
        .cast::<Shared>();
        if !found {
            // Every counter's initial state is zero.
            std::ptr::write_bytes(shared.cast::<u8>(), 0, std::mem::size_of::<Shared>());
            let locks = pg_sys::GetNamedLWLockTranche(TRANCHE.as_ptr());
            (*shared).stmt_lock = &raw mut (*locks.add(0)).lock;
            (*shared).node_lock = &raw mut (*locks.add(1)).lock;
            (*shared).key_lock = &raw mut (*locks.add(2)).lock;
        }
        SHARED = shared;
        pg_sys::LWLockRelease(init_lock);
    }
}

fn shared() -> Option<&'static Shared> {
    // SAFETY: set once before any backend exists; the memory lives as long
    // as the server.
    unsafe { SHARED.as_ref() }
}

/// Whether shared statistics exist (the library was preloaded).
pub fn is_shared() -> bool {
    shared().is_some()
}

fn shared_or_error() -> &'static Shared {
    shared().unwrap_or_else(|| {
        crate::errors::raise(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "conductor: shared statistics are not available",
        )
        .detail("The conductor library was not loaded at server start, so it has no shared memory.")
        .hint(ENABLE_HINT)
        .error()
    })
}

/// An LWLock held until dropped. Nothing that can raise an ERROR runs
/// while one is held.
struct Held(*mut pg_sys::LWLock);

impl Held {
    fn exclusive(lock: *mut pg_sys::LWLock) -> Held {
        unsafe { pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE) };
        Held(lock)
    }
    fn try_exclusive(lock: *mut pg_sys::LWLock) -> Option<Held> {
        // Only a lock acquired may become a guard (its drop releases it).
        unsafe { pg_sys::LWLockConditionalAcquire(lock, pg_sys::LWLockMode::LW_EXCLUSIVE) }
            .then(|| Held(lock))
    }
    fn shared(lock: *mut pg_sys::LWLock) -> Held {
        unsafe { pg_sys::LWLockAcquire(lock, pg_sys::LWLockMode::LW_SHARED) };
        Held(lock)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        unsafe { pg_sys::LWLockRelease(self.0) };
    }
}

/// Access to data guarded by one of the shared locks.
///
/// # Safety
/// The caller holds the lock guarding the data (exclusively to change it).
#[allow(clippy::mut_from_ref)]
unsafe fn guarded<T>(cell: &UnsafeCell<T>) -> &mut T {
    unsafe { &mut *cell.get() }
}

fn enabled() -> bool {
    crate::gucs::TRACK_STATS.get()
}

fn hash_str(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same in every process.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish() | 1
}

fn copy_text<const N: usize>(into: &mut [u8; N], text: &str) -> u32 {
    let mut end = text.len().min(N);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    into[..end].copy_from_slice(&text.as_bytes()[..end]);
    end as u32
}

fn text_of(bytes: &[u8], len: u32) -> String {
    String::from_utf8_lossy(&bytes[..(len as usize).min(bytes.len())]).into_owned()
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn micros(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

// ---- per backend -------------------------------------------------------

/// One table's figures within the running statement.
#[derive(Default)]
struct Acc {
    relid: u32,
    one_shard: u64,
    some_shards: u64,
    all_shards: u64,
    rows: u64,
    remote_us: u64,
    retries: u64,
    errors: u64,
}

struct Current {
    /// The top-level QueryDesc being executed (as an address).
    top: usize,
    queryid: i64,
    started: Option<Instant>,
    /// The transaction nest level the statement last ran at: a rollback
    /// to a savepoint at or below it ends the statement unfinished.
    level: i32,
    tables: Vec<Acc>,
    /// Index in `tables` of the table whose plan was sent last: remote time
    /// and errors are its.
    last: Option<usize>,
    /// The start of the statement's text, copied when it first reached a
    /// node (at abort the backend no longer knows its query).
    text: [u8; QUERY_TEXT],
    text_len: usize,
}

impl Default for Current {
    fn default() -> Self {
        Current {
            top: 0,
            queryid: 0,
            started: None,
            level: 0,
            tables: Vec::new(),
            last: None,
            text: [0; QUERY_TEXT],
            text_len: 0,
        }
    }
}

thread_local! {
    static SHARD_REQUESTS: RefCell<BTreeMap<(u32, u32), i64>> = const { RefCell::new(BTreeMap::new()) };
    static CURRENT: RefCell<Current> = RefCell::new(Current::default());
    /// Statements whose executor was started but is not running: open
    /// cursors while other statements run between their fetches.
    static PARKED: RefCell<Vec<Current>> = const { RefCell::new(Vec::new()) };
    /// Executors at work (in ExecutorStart, Run, Finish or End) in this
    /// backend: a statement started inside one is part of it.
    static DEPTH: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    /// `executor::RETRIES` when this backend last looked.
    static SEEN_RETRIES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn with_acc(relid: u32, f: impl FnOnce(&mut Acc)) {
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        let i = match c.tables.iter().position(|a| a.relid == relid) {
            Some(i) => i,
            None => {
                if c.tables.is_empty() {
                    let c = &mut *c;
                    c.text_len = query_text(&mut c.text);
                    if c.top == 0 {
                        // A utility statement (COPY, TRUNCATE, a DDL's
                        // node work): no executor hook saw it start.
                        // SAFETY: reads the backend's own status entry.
                        c.queryid = unsafe { pg_sys::pgstat_get_my_query_id() } as i64;
                        c.started = Some(Instant::now());
                    }
                }
                c.tables.push(Acc {
                    relid,
                    ..Acc::default()
                });
                c.tables.len() - 1
            }
        };
        c.last = Some(i);
        f(&mut c.tables[i]);
    })
}

fn with_last(f: impl FnOnce(&mut Acc)) {
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        if let Some(i) = c.last {
            f(&mut c.tables[i]);
        }
    })
}

/// A plan of table `relid` (with `shard_count` shards) is being sent to
/// `shards`; `write`: it changes rows.
pub fn plan_sent(relid: pg_sys::Oid, shard_count: usize, shards: &[u32], write: bool) {
    let relid = relid.to_u32();
    SHARD_REQUESTS.with(|m| {
        let mut m = m.borrow_mut();
        for &shard in shards {
            *m.entry((relid, shard)).or_default() += 1;
        }
    });
    if !enabled() || shared().is_none() || shards.is_empty() {
        return;
    }
    with_acc(relid, |a| match shards.len() {
        1 if shard_count > 1 => a.one_shard += 1,
        n if n >= shard_count => a.all_shards += 1,
        _ => a.some_shards += 1,
    });
    for &shard in shards {
        if let Some(s) = shard_slot(relid, shard) {
            let counter = if write { &s.writes } else { &s.reads };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Rows shard `shard` of `relid` returned or changed.
pub fn shard_rows(relid: pg_sys::Oid, shard: u32, rows: u64) {
    if rows == 0 || !enabled() || shared().is_none() {
        return;
    }
    let relid = relid.to_u32();
    if let Some(s) = shard_slot(relid, shard) {
        s.rows.fetch_add(rows, Ordering::Relaxed);
    }
    with_acc(relid, |a| a.rows += rows);
}

/// Time the backend spent on the nodes for the plan sent last (called when
/// its requests ended, which is also when their retries are known).
pub fn remote_time(elapsed: Duration) {
    let new = new_retries();
    if enabled() && shared().is_some() {
        with_last(|a| {
            a.remote_us += micros(elapsed);
            a.retries += new;
        });
    }
}

/// Requests the executor sent again since the last look: the plan sent
/// last's, whether it ended in [`remote_time`] or in [`error`].
fn new_retries() -> u64 {
    let retries = conductor_core::executor::RETRIES.load(Ordering::Relaxed);
    retries - SEEN_RETRIES.with(|s| s.replace(retries))
}

/// The plan sent last failed on a node.
pub fn error() {
    // Taken even when not counted, so that a later plan is not charged
    // with this one's retries.
    let new = new_retries();
    if enabled() && shared().is_some() {
        with_last(|a| {
            a.errors += 1;
            a.retries += new;
        });
    }
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

// ---- the executor hooks ------------------------------------------------

fn nest_level() -> i32 {
    // SAFETY: reads backend transaction state.
    unsafe { pg_sys::GetCurrentTransactionNestLevel() }
}

/// Counts the executors running while `f` runs; an ERROR unwinds through
/// the guard, so the count stays right after a caught error.
fn running<T>(f: impl FnOnce() -> T) -> T {
    struct Depth;
    impl Drop for Depth {
        fn drop(&mut self) {
            DEPTH.with(|d| d.set(d.get() - 1));
        }
    }
    DEPTH.with(|d| d.set(d.get() + 1));
    let _depth = Depth;
    f()
}

/// Makes the statement of `query_desc` the one figures are added to when
/// it runs at top level: an open cursor's fetches between other statements.
fn activate(query_desc: *mut pg_sys::QueryDesc) {
    if DEPTH.with(|d| d.get()) != 0 {
        return;
    }
    let desc = query_desc as usize;
    CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        if c.top != desc {
            let parked = PARKED.with(|p| {
                let mut p = p.borrow_mut();
                let i = p.iter().position(|s| s.top == desc)?;
                Some(p.swap_remove(i))
            });
            if let Some(parked) = parked {
                let previous = std::mem::replace(&mut *c, parked);
                park(previous);
            }
        }
        if c.top == desc {
            c.level = nest_level();
        }
    });
}

/// Keeps a started statement's figures aside while another one runs.
fn park(current: Current) {
    if current.top != 0 {
        PARKED.with(|p| p.borrow_mut().push(current));
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_start(query_desc: *mut pg_sys::QueryDesc, eflags: i32) {
    // A utility statement's figures, if one ran before this statement in
    // the same transaction.
    if CURRENT.with(|c| {
        let c = c.borrow();
        c.top == 0 && !c.tables.is_empty()
    }) {
        flush(true);
    }
    // Started inside a running executor (a function's query), the statement
    // is part of the running one; at top level it is a statement of its own,
    // also while a cursor's statement is open.
    if DEPTH.with(|d| d.get()) == 0 {
        let open = CURRENT.with(|c| std::mem::take(&mut *c.borrow_mut()));
        park(open);
        CURRENT.with(|c| {
            let mut c = c.borrow_mut();
            c.top = query_desc as usize;
            // SAFETY: the executor hands a valid QueryDesc.
            c.queryid = unsafe { (*(*query_desc).plannedstmt).queryId } as i64;
            c.started = Some(Instant::now());
            c.level = nest_level();
        });
    }
    // Queries the executor's start runs (catalog reads of a foreign scan's
    // setup) are part of the statement.
    running(|| unsafe {
        match PREV_EXECUTOR_START {
            Some(prev) => pg_guard_ffi_boundary(|| prev(query_desc, eflags)),
            None => pg_sys::standard_ExecutorStart(query_desc, eflags),
        }
    })
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_run(
    query_desc: *mut pg_sys::QueryDesc,
    direction: pg_sys::ScanDirection::Type,
    count: u64,
    execute_once: bool,
) {
    activate(query_desc);
    running(|| unsafe {
        match PREV_EXECUTOR_RUN {
            Some(prev) => {
                pg_guard_ffi_boundary(|| prev(query_desc, direction, count, execute_once))
            }
            None => pg_sys::standard_ExecutorRun(query_desc, direction, count, execute_once),
        }
    })
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_finish(query_desc: *mut pg_sys::QueryDesc) {
    activate(query_desc);
    running(|| unsafe {
        match PREV_EXECUTOR_FINISH {
            Some(prev) => pg_guard_ffi_boundary(|| prev(query_desc)),
            None => pg_sys::standard_ExecutorFinish(query_desc),
        }
    })
}

#[pg_guard]
unsafe extern "C-unwind" fn executor_end(query_desc: *mut pg_sys::QueryDesc) {
    let desc = query_desc as usize;
    // The statement is current while its nodes end: a scan its reader left
    // early counts its requests then.
    activate(query_desc);
    running(|| unsafe {
        match PREV_EXECUTOR_END {
            Some(prev) => pg_guard_ffi_boundary(|| prev(query_desc)),
            None => pg_sys::standard_ExecutorEnd(query_desc),
        }
    });
    if CURRENT.with(|c| c.borrow().top == desc) {
        flush(true);
    } else if let Some(parked) = PARKED.with(|p| {
        let mut p = p.borrow_mut();
        let i = p.iter().position(|s| s.top == desc)?;
        Some(p.swap_remove(i))
    }) {
        flush_statement(parked, true);
    }
}

/// At transaction abort: the failed statement's figures and those of the
/// cursors still open (none is counted as a call).
pub fn at_abort() {
    // No executor survives a transaction's abort.
    DEPTH.with(|d| d.set(0));
    flush(false);
    for parked in PARKED.with(|p| std::mem::take(&mut *p.borrow_mut())) {
        flush_statement(parked, false);
    }
}

/// At the rollback of subtransaction `level`: the statements that ran in it
/// end there (no executor end follows), unfinished.
pub fn at_subabort(level: i32) {
    if CURRENT.with(|c| {
        let c = c.borrow();
        c.top != 0 && c.level >= level
    }) {
        flush(false);
    }
    let ended: Vec<Current> = PARKED.with(|p| {
        let mut p = p.borrow_mut();
        let (ended, kept) = std::mem::take(&mut *p)
            .into_iter()
            .partition(|s| s.level >= level);
        *p = kept;
        ended
    });
    for parked in ended {
        flush_statement(parked, false);
    }
}

/// At commit: a utility statement's figures (executed statements were
/// counted when their executor ended).
pub fn at_commit() {
    if CURRENT.with(|c| !c.borrow().tables.is_empty()) {
        flush(true);
    }
    // A cursor's executor ends before the commit event: whatever is left
    // never finished.
    for parked in PARKED.with(|p| std::mem::take(&mut *p.borrow_mut())) {
        flush_statement(parked, false);
    }
}

/// The text of the statement the backend runs, cut to what is kept.
fn query_text(into: &mut [u8; QUERY_TEXT]) -> usize {
    // SAFETY: the backend's current query string (or NULL).
    let text = unsafe { pg_sys::debug_query_string };
    if text.is_null() {
        return 0;
    }
    let bytes = unsafe { std::ffi::CStr::from_ptr(text) }.to_bytes();
    let mut end = bytes.len().min(QUERY_TEXT);
    while end > 0 && end < bytes.len() && (bytes[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    into[..end].copy_from_slice(&bytes[..end]);
    end
}

/// Move the running statement's figures into shared memory.
fn flush(completed: bool) {
    let current = CURRENT.with(|c| std::mem::take(&mut *c.borrow_mut()));
    flush_statement(current, completed);
}

/// Move a statement's figures into shared memory.
fn flush_statement(current: Current, completed: bool) {
    if current.tables.is_empty() {
        return;
    }
    let Some(sh) = shared() else {
        return;
    };
    let elapsed = current.started.map(|s| micros(s.elapsed())).unwrap_or(0);
    let call = completed.then_some(elapsed);
    let find = |keys: &[StmtKey], relid: u32| {
        keys.iter()
            .position(|k| k.used != 0 && k.queryid == current.queryid && k.relid == relid)
    };
    // Known entries are added to under the shared lock; only a new entry
    // takes the exclusive one.
    let mut missing = Vec::new();
    {
        let _lock = Held::shared(sh.stmt_lock);
        // SAFETY: the statement lock is held; counters are atomics.
        let table: &StmtTable = unsafe { &*sh.stmts.get() };
        for acc in &current.tables {
            match find(&table.keys, acc.relid) {
                Some(i) => table.stmts[i].add(acc, call),
                None => missing.push(acc),
            }
        }
    }
    if missing.is_empty() {
        return;
    }
    let _lock = Held::exclusive(sh.stmt_lock);
    // SAFETY: the statement lock is held exclusively.
    let table = unsafe { guarded(&sh.stmts) };
    for acc in missing {
        let i = match find(&table.keys, acc.relid) {
            Some(i) => i,
            None => {
                let i = match table.keys.iter().position(|k| k.used == 0) {
                    Some(i) => i,
                    None => {
                        table.evictions += 1;
                        (0..MAX_STATEMENTS)
                            .min_by_key(|&i| table.stmts[i].calls.load(Ordering::Relaxed))
                            .expect("entries")
                    }
                };
                table.keys[i] = StmtKey {
                    queryid: current.queryid,
                    relid: acc.relid,
                    used: 1,
                };
                // SAFETY: all-zero is a valid Statement.
                table.stmts[i] = unsafe { std::mem::zeroed() };
                let s = &mut table.stmts[i];
                s.query[..current.text_len].copy_from_slice(&current.text[..current.text_len]);
                s.query_len = current.text_len as u32;
                i
            }
        };
        table.stmts[i].add(acc, call);
    }
}

// ---- shards ------------------------------------------------------------

fn shard_slot(relid: u32, shard: u32) -> Option<&'static Shard> {
    let sh = shared()?;
    let key = (relid as u64) << 32 | shard as u64;
    let start = (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize % MAX_SHARDS;
    for probe in 0..SHARD_PROBES {
        let slot = &sh.shards[(start + probe) % MAX_SHARDS];
        let k = slot.key.load(Ordering::Acquire);
        if k == key {
            return Some(slot);
        }
        if k == 0 {
            match slot
                .key
                .compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(slot),
                Err(k) if k == key => return Some(slot),
                Err(_) => continue,
            }
        }
    }
    sh.shards_dropped.fetch_add(1, Ordering::Relaxed);
    None
}

// ---- nodes -------------------------------------------------------------

/// The shared entry of the node at `url`, if it has one.
pub fn find_node(url: &str) -> Option<&'static Node> {
    let sh = shared()?;
    let hash = hash_str(url);
    let n = (sh.node_count.load(Ordering::Acquire) as usize).min(MAX_NODES);
    sh.nodes[..n].iter().find(|e| {
        // SAFETY: a published slot's URL never changes.
        e.hash.load(Ordering::Acquire) == hash
            && unsafe { &*e.url.get() }.bytes[..].starts_with(url.as_bytes())
            && unsafe { &*e.url.get() }.len as usize == url.len()
    })
}

/// The shared entry of the node at `url` (claimed on first use), or None
/// without shared memory or when every entry is taken.
pub fn node(url: &str, name: &str) -> Option<&'static Node> {
    let sh = shared()?;
    let hash = hash_str(url);
    let find = || find_node(url);
    if let Some(e) = find() {
        return Some(e);
    }
    if url.len() > URL_LEN {
        return None;
    }
    let _lock = Held::exclusive(sh.node_lock);
    if let Some(e) = find() {
        return Some(e);
    }
    let n = sh.node_count.load(Ordering::Acquire) as usize;
    if n >= MAX_NODES {
        return None;
    }
    let e = &sh.nodes[n];
    // SAFETY: the slot is unpublished (hash 0) and the node lock is held.
    unsafe {
        guarded(&e.url).set(url);
        guarded(&e.name).set(name);
    }
    e.hash.store(hash, Ordering::Release);
    sh.node_count.store(n as u32 + 1, Ordering::Release);
    Some(e)
}

/// Bytes sent to and received from the node at `url`: called by the core's
/// client on the I/O threads, so only atomics (the node's entry exists: it
/// is claimed before its requests are sent).
fn traffic(url: &str, sent: u64, received: u64) {
    if let Some(e) = find_node(url) {
        if sent > 0 {
            e.bytes_out.fetch_add(sent, Ordering::Relaxed);
        }
        if received > 0 {
            e.bytes_in.fetch_add(received, Ordering::Relaxed);
        }
    }
}

fn bucket(elapsed: Duration) -> usize {
    let us = elapsed.as_secs_f64() * 1e6;
    if us <= BUCKET_BASE_US {
        return 0;
    }
    let b = (2.0 * (us / BUCKET_BASE_US).log2()).ceil() as usize;
    b.min(BUCKETS - 1)
}

/// Upper bound of bucket `b`, in milliseconds.
fn bucket_bound_ms(b: usize) -> f64 {
    BUCKET_BASE_US * 2f64.powf(b as f64 / 2.0) / 1000.0
}

/// How a request to a node ended.
pub enum Outcome {
    Ok,
    Failed,
    TimedOut,
}

/// One request to a node finished after `elapsed`.
pub fn node_request(url: &str, name: &str, elapsed: Option<Duration>, rows: u64, outcome: Outcome) {
    if !enabled() {
        return;
    }
    let Some(e) = node(url, name) else {
        return;
    };
    e.requests.fetch_add(1, Ordering::Relaxed);
    e.rows.fetch_add(rows, Ordering::Relaxed);
    match &outcome {
        Outcome::Ok => {}
        Outcome::Failed => {
            e.errors.fetch_add(1, Ordering::Relaxed);
        }
        Outcome::TimedOut => {
            e.errors.fetch_add(1, Ordering::Relaxed);
            e.timeouts.fetch_add(1, Ordering::Relaxed);
        }
    }
    // Latency is that of answers: a failure's time says nothing about the node's speed.
    if let (Some(elapsed), Outcome::Ok) = (elapsed, outcome) {
        e.hist[bucket(elapsed)].fetch_add(1, Ordering::Relaxed);
    }
}

/// Requests in flight to nodes, counted while it lives.
pub struct InFlight(Vec<&'static Node>);

impl InFlight {
    /// One request per distinct node (a scan reads a node's shards in one
    /// request, or a few).
    pub fn per_node<'a>(nodes: impl Iterator<Item = (&'a str, &'a str)>) -> InFlight {
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for n in nodes {
            if !seen.iter().any(|s| s.0 == n.0) {
                seen.push(n);
            }
        }
        InFlight::new(seen.into_iter())
    }

    pub fn new<'a>(nodes: impl Iterator<Item = (&'a str, &'a str)>) -> InFlight {
        if !enabled() || shared().is_none() {
            return InFlight(Vec::new());
        }
        InFlight(
            nodes
                .filter_map(|(url, name)| {
                    let e = node(url, name)?;
                    e.in_flight.fetch_add(1, Ordering::Relaxed);
                    Some(e)
                })
                .collect(),
        )
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        for e in self.0.drain(..) {
            e.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Record `message` as the node's last error (health).
pub fn set_last_error(e: &Node, message: &str) {
    let Some(sh) = shared() else {
        return;
    };
    let _lock = Held::exclusive(sh.node_lock);
    // SAFETY: the node lock is held exclusively.
    unsafe { guarded(&e.last_error) }.set(message);
    e.last_error_at_us.store(now_us(), Ordering::Relaxed);
}

/// The node's last error, if any.
pub fn last_error(e: &Node) -> Option<String> {
    let sh = shared()?;
    let _lock = Held::shared(sh.node_lock);
    // SAFETY: the node lock is held.
    unsafe { guarded(&e.last_error) }.get()
}

/// Every tracked node: (url, name, entry).
pub fn nodes() -> Vec<(String, String, &'static Node)> {
    let Some(sh) = shared() else {
        return Vec::new();
    };
    let n = (sh.node_count.load(Ordering::Acquire) as usize).min(MAX_NODES);
    sh.nodes[..n]
        .iter()
        // SAFETY: a published slot's URL and name never change.
        .map(|e| unsafe {
            (
                guarded(&e.url).get().unwrap_or_default(),
                guarded(&e.name).get().unwrap_or_default(),
                e,
            )
        })
        .collect()
}

/// The `p`th percentile (0-1) of a latency histogram, in milliseconds,
/// interpolated within its bucket on the log scale.
fn percentile(hist: &[u64; BUCKETS], p: f64) -> Option<f64> {
    let total: u64 = hist.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (p * total as f64).ceil().max(1.0);
    let mut seen = 0u64;
    for (b, &n) in hist.iter().enumerate() {
        if n == 0 {
            continue;
        }
        if (seen + n) as f64 >= rank {
            let hi = bucket_bound_ms(b);
            let lo = if b == 0 {
                hi / 2.0
            } else {
                bucket_bound_ms(b - 1)
            };
            let within = (rank - seen as f64) / n as f64;
            return Some(lo * (hi / lo).powf(within));
        }
        seen += n;
    }
    Some(bucket_bound_ms(BUCKETS - 1))
}

// ---- shard keys --------------------------------------------------------

/// Statements naming more shard-key values than this are not counted per
/// value (a bulk load says nothing about hot keys, and would cost a sketch
/// update per row).
pub const KEYS_PER_STATEMENT: usize = 16;

/// The shard-key values a routed read names (its plan's keys).
pub fn routed_keys(relid: pg_sys::Oid, keys: &[conductor_core::types::TypedValue]) {
    if !enabled() || shared().is_none() {
        return;
    }
    for v in keys {
        use conductor_core::types::TypedValue::*;
        let text = match v {
            Int2(i) => i.to_string(),
            Int4(i) => i.to_string(),
            Int8(i) => i.to_string(),
            Text(t) => t.clone(),
            Uuid(u) => uuid_text(u),
            _ => continue,
        };
        key_load(relid, &text);
    }
}

/// A row's shard-key value as a node stores it (inserts).
pub fn key_value(relid: pg_sys::Oid, v: &conductor_hrana::Value) {
    if !enabled() || shared().is_none() {
        return;
    }
    match v {
        conductor_hrana::Value::Integer(i) => key_load(relid, &i.to_string()),
        conductor_hrana::Value::Text(t) => key_load(relid, t),
        _ => {}
    }
}

fn uuid_text(u: &[u8; 16]) -> String {
    let hex: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// A statement of table `relid` routed by the shard-key value `text`.
fn key_load(relid: pg_sys::Oid, text: &str) {
    if !enabled() {
        return;
    }
    let Some(sh) = shared() else {
        return;
    };
    let relid = relid.to_u32();
    let hash = hash_str(text);
    // A sample is dropped rather than waited for: the sketch is an
    // estimate, and a statement should not queue behind another's update.
    let Some(_lock) = Held::try_exclusive(sh.key_lock) else {
        return;
    };
    // SAFETY: the key lock is held exclusively.
    let KeyTable { count, keys } = unsafe { guarded(&sh.keys) };
    let n = *count as usize;
    if let Some(e) = keys[..n]
        .iter_mut()
        .find(|e| e.relid == relid && e.hash == hash)
    {
        e.count += 1;
        return;
    }
    // Space-saving: a new value takes a free entry, or replaces the
    // least-loaded one and inherits its count (an overestimate by at most
    // that count, kept as `error`).
    let (i, inherited) = if n < TOP_KEYS {
        *count += 1;
        (n, 0)
    } else {
        let i = (0..TOP_KEYS)
            .min_by_key(|&i| keys[i].count)
            .expect("entries");
        (i, keys[i].count)
    };
    let e = &mut keys[i];
    e.relid = relid;
    e.hash = hash;
    e.count = inherited + 1;
    e.error = inherited;
    e.text_len = copy_text(&mut e.text, text);
}

// ---- the views ---------------------------------------------------------

type StatementRow = (
    i64,
    pg_sys::Oid,
    Option<String>,
    i64,
    i64,
    f64,
    f64,
    f64,
    f64,
    i64,
    i64,
    i64,
    i64,
    i64,
);

/// The functions behind the views that show other sessions' statement
/// texts and key values answer whoever may read the view (a view's
/// functions run as the querying role, so EXECUTE alone cannot guard them).
fn require_view_privilege(view: &str) {
    let allowed = Spi::get_one_with_args::<bool>(
        "SELECT pg_catalog.has_table_privilege($1, 'SELECT')",
        &[view.into()],
    )
    .unwrap_or_else(|e| error!("conductor: could not check the privileges on {view}: {e}"))
    .unwrap_or(false);
    if !allowed {
        crate::errors::raise(
            PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
            format!("permission denied for view {view}"),
        )
        .hint(format!(
            "It shows other sessions' statements: superusers and roles granted SELECT on {view} read it."
        ))
        .error()
    }
}

/// Per query id and table: behind `conductor.stat_statements`.
#[pg_extern]
fn _stat_statements() -> TableIterator<
    'static,
    (
        name!(queryid, i64),
        name!(table_name, pg_sys::Oid),
        name!(query, Option<String>),
        name!(calls, i64),
        name!(rows, i64),
        name!(total_time_ms, f64),
        name!(mean_time_ms, f64),
        name!(max_time_ms, f64),
        name!(remote_time_ms, f64),
        name!(one_shard, i64),
        name!(some_shards, i64),
        name!(all_shards, i64),
        name!(retries, i64),
        name!(errors, i64),
    ),
> {
    require_view_privilege("conductor.stat_statements");
    let sh = shared_or_error();
    let rows: Vec<StatementRow> = {
        let _lock = Held::shared(sh.stmt_lock);
        // SAFETY: the statement lock is held; counters are atomics.
        let table: &StmtTable = unsafe { &*sh.stmts.get() };
        table
            .keys
            .iter()
            .zip(table.stmts.iter())
            .filter(|(k, _)| k.used != 0)
            .map(|(k, s)| {
                let ms = |us: u64| us as f64 / 1000.0;
                let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
                let (calls, total) = (get(&s.calls), get(&s.total_us));
                (
                    k.queryid,
                    pg_sys::Oid::from(k.relid),
                    (s.query_len > 0).then(|| text_of(&s.query, s.query_len)),
                    calls as i64,
                    get(&s.rows) as i64,
                    ms(total),
                    if calls > 0 {
                        ms(total) / calls as f64
                    } else {
                        0.0
                    },
                    ms(get(&s.max_us)),
                    ms(get(&s.remote_us)),
                    get(&s.one_shard) as i64,
                    get(&s.some_shards) as i64,
                    get(&s.all_shards) as i64,
                    get(&s.retries) as i64,
                    get(&s.errors) as i64,
                )
            })
            .collect()
    };
    TableIterator::new(rows)
}

/// Forget every statement's figures.
#[pg_extern]
fn stat_statements_reset() {
    let sh = shared_or_error();
    let _lock = Held::exclusive(sh.stmt_lock);
    // SAFETY: the statement lock is held exclusively.
    for k in unsafe { guarded(&sh.stmts) }.keys.iter_mut() {
        k.used = 0;
    }
}

/// Forget the node, shard and shard-key counters too (health is kept).
#[pg_extern]
fn stat_reset() {
    stat_statements_reset();
    let sh = shared_or_error();
    for (_, _, e) in nodes() {
        for c in [
            &e.requests,
            &e.errors,
            &e.timeouts,
            &e.rows,
            &e.bytes_out,
            &e.bytes_in,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        for c in &e.hist {
            c.store(0, Ordering::Relaxed);
        }
    }
    for s in &sh.shards {
        for c in [&s.reads, &s.writes, &s.rows] {
            c.store(0, Ordering::Relaxed);
        }
    }
    let _lock = Held::exclusive(sh.key_lock);
    // SAFETY: the key lock is held exclusively.
    unsafe { guarded(&sh.keys) }.count = 0;
}

type NodeRow = (
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    i64,
    i64,
    Option<f64>,
    Option<f64>,
    Option<f64>,
    i64,
);

/// Per node URL: behind `conductor.stat_nodes`.
#[pg_extern]
fn _stat_nodes() -> TableIterator<
    'static,
    (
        name!(url, String),
        name!(node_id, String),
        name!(requests, i64),
        name!(errors, i64),
        name!(timeouts, i64),
        name!(rows, i64),
        name!(bytes_out, i64),
        name!(bytes_in, i64),
        name!(p50_ms, Option<f64>),
        name!(p95_ms, Option<f64>),
        name!(p99_ms, Option<f64>),
        name!(in_flight, i64),
    ),
> {
    shared_or_error();
    let rows: Vec<NodeRow> = nodes()
        .into_iter()
        .map(|(url, name, e)| {
            let hist: [u64; BUCKETS] = std::array::from_fn(|b| e.hist[b].load(Ordering::Relaxed));
            (
                url,
                name,
                e.requests.load(Ordering::Relaxed) as i64,
                e.errors.load(Ordering::Relaxed) as i64,
                e.timeouts.load(Ordering::Relaxed) as i64,
                e.rows.load(Ordering::Relaxed) as i64,
                e.bytes_out.load(Ordering::Relaxed) as i64,
                e.bytes_in.load(Ordering::Relaxed) as i64,
                percentile(&hist, 0.50),
                percentile(&hist, 0.95),
                percentile(&hist, 0.99),
                e.in_flight.load(Ordering::Relaxed).max(0),
            )
        })
        .collect();
    TableIterator::new(rows)
}

/// Per table and shard: behind `conductor.stat_shards`.
#[pg_extern]
fn _stat_shards() -> TableIterator<
    'static,
    (
        name!(table_name, pg_sys::Oid),
        name!(shard_id, i32),
        name!(reads, i64),
        name!(writes, i64),
        name!(rows, i64),
    ),
> {
    let sh = shared_or_error();
    let rows: Vec<_> = sh
        .shards
        .iter()
        .filter_map(|s| {
            let key = s.key.load(Ordering::Acquire);
            let (reads, writes, rows) = (
                s.reads.load(Ordering::Relaxed),
                s.writes.load(Ordering::Relaxed),
                s.rows.load(Ordering::Relaxed),
            );
            (key != 0 && (reads, writes, rows) != (0, 0, 0)).then(|| {
                (
                    pg_sys::Oid::from((key >> 32) as u32),
                    (key & 0xffff_ffff) as i32,
                    reads as i64,
                    writes as i64,
                    rows as i64,
                )
            })
        })
        .collect();
    TableIterator::new(rows)
}

/// The shard-key values with the most statements: behind
/// `conductor.stat_shard_keys`.
#[pg_extern]
fn _stat_shard_keys() -> TableIterator<
    'static,
    (
        name!(table_name, pg_sys::Oid),
        name!(key_value, String),
        name!(statements, i64),
        name!(overcount_max, i64),
    ),
> {
    require_view_privilege("conductor.stat_shard_keys");
    let sh = shared_or_error();
    let rows: Vec<_> = {
        let _lock = Held::shared(sh.key_lock);
        // SAFETY: the key lock is held.
        let table = unsafe { guarded(&sh.keys) };
        table.keys[..table.count as usize]
            .iter()
            .map(|e| {
                (
                    pg_sys::Oid::from(e.relid),
                    text_of(&e.text, e.text_len),
                    e.count as i64,
                    e.error as i64,
                )
            })
            .collect()
    };
    TableIterator::new(rows)
}
