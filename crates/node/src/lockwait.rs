//! Time spent waiting for SQLite's write lock, per request.
//!
//! Every connection gets this busy handler instead of SQLite's built-in
//! `busy_timeout`: the same back-off and the same limit, but each sleep is
//! added to a per-thread total. A request runs on one thread from start to
//! end (worker, writer or blocking thread), so the total taken before and
//! after it is what that request waited for another connection's lock. The
//! node sends it back in the `x-conductor-lock-wait-us` response header and
//! counts it in `/stats`.
//!
//! A waiter does not sleep through a fixed back-off: every commit and
//! rollback on the node's connections wakes the waiters of that database
//! (SQLite's WAL hook runs after the commit released the write lock, its
//! rollback hook after the rollback did), so the next writer takes the lock
//! as soon as it is free instead of up to 100 ms later. A wake-up missed in
//! the instant between a failed attempt and the wait costs at most
//! `MISSED_WAKEUP`.
//!
//! Waiters take their turns in arrival order: each wait draws a ticket, and
//! a release lets only the oldest waiter of its database try again (the
//! others go on waiting), so no waiter loses the lock over and over to
//! later ones. A writer that finds the lock free takes it without asking;
//! only the node's paths that would otherwise skip the queue altogether
//! (the worker-thread writes) check [`waiting`] first.

use rusqlite::Connection;
use std::cell::Cell;
use std::collections::{BTreeSet, HashMap};
use std::ffi::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// The response header carrying a request's lock wait, in microseconds
/// (absent when it did not wait).
pub const HEADER: &str = "x-conductor-lock-wait-us";

/// The longest a waiter waits before trying the lock again without being
/// woken.
const MISSED_WAKEUP: Duration = Duration::from_millis(10);

/// The waiters of one database file.
struct Queue {
    state: Mutex<QueueState>,
    released: Condvar,
}

#[derive(Default)]
struct QueueState {
    /// Lock releases (commits and rollbacks) so far.
    releases: u64,
    /// The last release a waiter tried the lock at.
    tried: u64,
    next_ticket: u64,
    /// Tickets of the waits in progress; the first is the next to try.
    waiting: BTreeSet<u64>,
}

/// A connection's busy handler argument: its database's queue and its
/// timeout.
struct Handler {
    queue: &'static Queue,
    timeout: Duration,
}

/// The queue of the database at `path`, made on first use and kept for the
/// life of the process (a node opens a handful of database files).
fn queue(path: &str) -> &'static Queue {
    static QUEUES: Mutex<Option<HashMap<String, &'static Queue>>> = Mutex::new(None);
    let mut queues = QUEUES.lock().unwrap_or_else(|p| p.into_inner());
    queues
        .get_or_insert_with(HashMap::new)
        .entry(path.to_owned())
        .or_insert_with(|| {
            Box::leak(Box::new(Queue {
                state: Mutex::new(QueueState::default()),
                released: Condvar::new(),
            }))
        })
}

/// The handler for `path` with `timeout`, likewise kept (one per database
/// and timeout in use).
fn handler(path: &str, timeout: Duration) -> &'static Handler {
    static HANDLERS: Mutex<Option<HashMap<(String, Duration), &'static Handler>>> =
        Mutex::new(None);
    let queue = queue(path);
    let mut handlers = HANDLERS.lock().unwrap_or_else(|p| p.into_inner());
    handlers
        .get_or_insert_with(HashMap::new)
        .entry((path.to_owned(), timeout))
        .or_insert_with(|| Box::leak(Box::new(Handler { queue, timeout })))
}

/// Requests of this process waiting for a lock right now (for /stats).
static WAITING: AtomicU64 = AtomicU64::new(0);

/// How many requests are waiting for a lock right now.
pub fn waiting() -> u64 {
    WAITING.load(Ordering::Relaxed)
}

thread_local! {
    static WAITED: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    /// When the current wait began (the busy handler's first call for it)
    /// and its ticket.
    static CURRENT_WAIT: Cell<Option<(Instant, u64)>> = const { Cell::new(None) };
}

/// The time this thread waited for locks since the last call (and resets it).
pub fn take() -> Duration {
    WAITED.with(|w| w.replace(Duration::ZERO))
}

/// Installs the counting busy handler with `timeout` (zero: fail at once
/// with SQLITE_BUSY, as `busy_timeout(0)` does).
pub fn set_timeout(conn: &Connection, timeout: Duration) -> rusqlite::Result<()> {
    // SAFETY: the handle is this open connection's; the callback's argument
    // is a `Handler` that lives as long as the process.
    let rc = unsafe {
        if timeout.is_zero() {
            rusqlite::ffi::sqlite3_busy_handler(conn.handle(), None, std::ptr::null_mut())
        } else {
            let h: *const Handler = handler(conn.path().unwrap_or(""), timeout);
            rusqlite::ffi::sqlite3_busy_handler(conn.handle(), Some(busy), h as *mut c_void)
        }
    };
    if rc == rusqlite::ffi::SQLITE_OK {
        Ok(())
    } else {
        Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rc),
            None,
        ))
    }
}

/// Wakes the waiters of `queue`'s database (after a commit or rollback of
/// one of its connections that [`wake_waiters_on_release`] watches).
fn released(queue: &Queue) {
    let mut state = queue.state.lock().unwrap_or_else(|p| p.into_inner());
    state.releases += 1;
    // A notify is a futex system call even when nobody waits, and this runs
    // at every commit; a waiter that registers after this sees the new
    // release count under the same mutex before it sleeps.
    if !state.waiting.is_empty() {
        queue.released.notify_all();
    }
}

/// Makes every commit and rollback of `conn` wake the waiters of its
/// database. Replaces the connection's WAL hook: call it after
/// `wal_autocheckpoint` is set (which installs its own), and only on
/// connections that never auto-checkpoint.
pub fn wake_waiters_on_release(conn: &Connection) {
    let queue: *const Queue = queue(conn.path().unwrap_or(""));
    // SAFETY: the handle is this open connection's; the callbacks' argument
    // is a `Queue` that lives as long as the process.
    unsafe {
        rusqlite::ffi::sqlite3_wal_hook(conn.handle(), Some(after_commit), queue as *mut c_void);
        rusqlite::ffi::sqlite3_rollback_hook(
            conn.handle(),
            Some(after_rollback),
            queue as *mut c_void,
        );
    }
}

extern "C" fn after_commit(
    queue: *mut c_void,
    _: *mut rusqlite::ffi::sqlite3,
    _: *const c_char,
    _: c_int,
) -> c_int {
    // SAFETY: the argument given in `wake_waiters_on_release`.
    released(unsafe { &*(queue as *const Queue) });
    rusqlite::ffi::SQLITE_OK
}

extern "C" fn after_rollback(queue: *mut c_void) {
    // SAFETY: the argument given in `wake_waiters_on_release`.
    released(unsafe { &*(queue as *const Queue) });
}

/// SQLite calls this while a lock it needs is held elsewhere; nonzero means
/// "try again". `count` is 0 on the first call of a wait.
extern "C" fn busy(arg: *mut c_void, count: c_int) -> c_int {
    // SAFETY: the argument given in `set_timeout`.
    let Handler { queue, timeout } = unsafe { &*(arg as *const Handler) };
    let now = Instant::now();
    let (start, ticket) = CURRENT_WAIT.with(|w| match w.get() {
        Some(current) if count > 0 => current,
        _ => {
            let mut state = queue.state.lock().unwrap_or_else(|p| p.into_inner());
            state.next_ticket += 1;
            let current = (now, state.next_ticket);
            w.set(Some(current));
            current
        }
    });
    if now.duration_since(start) >= *timeout {
        return 0;
    }
    let give_up = start + *timeout;
    WAITING.fetch_add(1, Ordering::Relaxed);
    let mut state = queue.state.lock().unwrap_or_else(|p| p.into_inner());
    state.waiting.insert(ticket);
    // First in line, try again at the first release no earlier waiter has
    // tried for, or after `MISSED_WAKEUP` without one (the release may
    // have come between the failed attempt and this wait). The others only
    // wait their turn.
    let mut head_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= give_up {
            break;
        }
        if state.waiting.first() == Some(&ticket) {
            if state.releases > state.tried {
                state.tried = state.releases;
                break;
            }
            let since = *head_since.get_or_insert(now);
            if now >= since + MISSED_WAKEUP {
                break;
            }
        }
        let wait = (give_up - now).min(MISSED_WAKEUP);
        state = queue
            .released
            .wait_timeout(state, wait)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
    state.waiting.remove(&ticket);
    drop(state);
    WAITING.fetch_sub(1, Ordering::Relaxed);
    WAITED.with(|w| w.set(w.get() + now.elapsed()));
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_that_waits_for_another_connections_lock_counts_the_wait() {
        let dir = std::env::temp_dir().join(format!("lockwait-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("db");
        let a = Connection::open(&path).unwrap();
        a.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(x)")
            .unwrap();
        let b = Connection::open(&path).unwrap();
        set_timeout(&b, Duration::from_millis(30)).unwrap();
        a.execute_batch("BEGIN IMMEDIATE").unwrap();
        take();
        let e = b.execute_batch("BEGIN IMMEDIATE").unwrap_err();
        assert_eq!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy)
        );
        let waited = take();
        assert!(waited > Duration::ZERO, "{waited:?}");
        assert_eq!(take(), Duration::ZERO, "taken once");
        a.execute_batch("COMMIT").unwrap();
        b.execute_batch("BEGIN IMMEDIATE; COMMIT").unwrap();
        assert_eq!(take(), Duration::ZERO, "no wait when the lock is free");
        // A waiter gets the lock once the holder commits, and counts the
        // wait on its own thread.
        a.execute_batch("BEGIN IMMEDIATE").unwrap();
        wake_waiters_on_release(&a);
        let b_path = path.clone();
        let waiter = std::thread::spawn(move || {
            let b = Connection::open(&b_path).unwrap();
            set_timeout(&b, Duration::from_secs(60)).unwrap();
            take();
            b.execute_batch("BEGIN IMMEDIATE; INSERT INTO t VALUES (2); COMMIT")
                .unwrap();
            take()
        });
        std::thread::sleep(Duration::from_millis(50));
        a.execute_batch("INSERT INTO t VALUES (1); COMMIT").unwrap();
        let waited = waiter.join().unwrap();
        assert!(waited > Duration::ZERO, "{waited:?}");
        assert_eq!(take(), Duration::ZERO, "the waiter's wait is its own");
        let n: i64 = a
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
        set_timeout(&b, Duration::ZERO).unwrap();
        a.execute_batch("BEGIN IMMEDIATE").unwrap();
        assert!(b.execute_batch("BEGIN IMMEDIATE").is_err());
        assert_eq!(take(), Duration::ZERO, "a zero timeout does not wait");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Waiters get the lock in the order they began waiting: a later
    /// waiter never overtakes an earlier one at a release (without the
    /// queue, each release is a race between the woken threads).
    #[test]
    fn waiters_take_the_lock_in_arrival_order() {
        let dir = std::env::temp_dir().join(format!("lockwait-order-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("db");
        let holder = Connection::open(&path).unwrap();
        holder
            .execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE t(round, who)")
            .unwrap();
        wake_waiters_on_release(&holder);
        for round in 0..10 {
            holder.execute_batch("BEGIN IMMEDIATE").unwrap();
            let waiters: Vec<_> = ["first", "second", "third"]
                .into_iter()
                .map(|who| {
                    let path = path.clone();
                    let w = std::thread::spawn(move || {
                        let c = Connection::open(&path).unwrap();
                        set_timeout(&c, Duration::from_secs(10)).unwrap();
                        wake_waiters_on_release(&c);
                        c.execute_batch("BEGIN IMMEDIATE").unwrap();
                        c.execute("INSERT INTO t VALUES (?1, ?2)", (round, who))
                            .unwrap();
                        // Hold the lock a moment: the others are woken by
                        // the release meanwhile and must not take it.
                        std::thread::sleep(Duration::from_millis(5));
                        c.execute_batch("COMMIT").unwrap();
                    });
                    // The next one arrives once this one waits.
                    std::thread::sleep(Duration::from_millis(20));
                    w
                })
                .collect();
            holder.execute_batch("COMMIT").unwrap();
            for w in waiters {
                w.join().unwrap();
            }
            let order: Vec<String> = holder
                .prepare("SELECT who FROM t WHERE round = ?1 ORDER BY rowid")
                .unwrap()
                .query_map([round], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(order, ["first", "second", "third"], "round {round}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
