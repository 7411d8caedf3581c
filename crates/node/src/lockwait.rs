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
//! rollback on the node's connections wakes the waiters (SQLite's WAL hook
//! runs after the commit released the write lock, its rollback hook after
//! the rollback did), so the next writer takes the lock as soon as it is
//! free instead of up to 100 ms later. A wake-up missed in the instant
//! between a failed attempt and the wait costs at most `MISSED_WAKEUP`.

use rusqlite::Connection;
use std::cell::Cell;
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

/// Counts lock releases (commits and rollbacks) in this process; waiters
/// wait for it to change.
static RELEASES: Mutex<u64> = Mutex::new(0);
static RELEASED: Condvar = Condvar::new();

/// Requests of this process waiting for a lock right now (for /stats).
static WAITING: AtomicU64 = AtomicU64::new(0);

/// How many requests are waiting for a lock right now.
pub fn waiting() -> u64 {
    WAITING.load(Ordering::Relaxed)
}

thread_local! {
    static WAITED: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    /// When the current wait began (the busy handler's first call for it).
    static WAIT_START: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The time this thread waited for locks since the last call (and resets it).
pub fn take() -> Duration {
    WAITED.with(|w| w.replace(Duration::ZERO))
}

/// Installs the counting busy handler with `timeout` (zero: fail at once
/// with SQLITE_BUSY, as `busy_timeout(0)` does).
pub fn set_timeout(conn: &Connection, timeout: Duration) -> rusqlite::Result<()> {
    let ms = timeout.as_millis().min(c_int::MAX as u128) as usize;
    // SAFETY: the handle is this open connection's; the callback's argument
    // is the timeout itself (no pointer to keep alive).
    let rc = unsafe {
        if ms == 0 {
            rusqlite::ffi::sqlite3_busy_handler(conn.handle(), None, std::ptr::null_mut())
        } else {
            rusqlite::ffi::sqlite3_busy_handler(conn.handle(), Some(busy), ms as *mut c_void)
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

/// Wakes the connections waiting for a lock (called after every commit and
/// rollback of a connection that [`wake_waiters_on_release`] watches).
fn released() {
    *RELEASES.lock().unwrap_or_else(|p| p.into_inner()) += 1;
    RELEASED.notify_all();
}

/// Makes every commit and rollback of `conn` wake the waiters. Replaces
/// the connection's WAL hook: call it after `wal_autocheckpoint` is set
/// (which installs its own), and only on connections that never
/// auto-checkpoint.
pub fn wake_waiters_on_release(conn: &Connection) {
    // SAFETY: the handle is this open connection's; the callbacks use no
    // argument.
    unsafe {
        rusqlite::ffi::sqlite3_wal_hook(conn.handle(), Some(after_commit), std::ptr::null_mut());
        rusqlite::ffi::sqlite3_rollback_hook(
            conn.handle(),
            Some(after_rollback),
            std::ptr::null_mut(),
        );
    }
}

extern "C" fn after_commit(
    _: *mut c_void,
    _: *mut rusqlite::ffi::sqlite3,
    _: *const c_char,
    _: c_int,
) -> c_int {
    released();
    rusqlite::ffi::SQLITE_OK
}

extern "C" fn after_rollback(_: *mut c_void) {
    released();
}

/// SQLite calls this while a lock it needs is held elsewhere; nonzero means
/// "try again". `count` is 0 on the first call of a wait.
extern "C" fn busy(arg: *mut c_void, count: c_int) -> c_int {
    let timeout = Duration::from_millis(arg as usize as u64);
    let now = Instant::now();
    let start = WAIT_START.with(|s| {
        if count == 0 || s.get().is_none() {
            s.set(Some(now));
        }
        s.get().unwrap_or(now)
    });
    let elapsed = now.duration_since(start);
    if elapsed >= timeout {
        return 0;
    }
    let slice = (timeout - elapsed).min(MISSED_WAKEUP);
    WAITING.fetch_add(1, Ordering::Relaxed);
    let guard = RELEASES.lock().unwrap_or_else(|p| p.into_inner());
    let seen = *guard;
    let _ = RELEASED.wait_timeout_while(guard, slice, |n| *n == seen);
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
}
