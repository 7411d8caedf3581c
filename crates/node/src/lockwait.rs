//! Time spent waiting for SQLite's write lock, per request.
//!
//! Every connection gets this busy handler instead of SQLite's built-in
//! `busy_timeout`: the same back-off and the same limit, but each sleep is
//! added to a per-thread total. A request runs on one thread from start to
//! end (worker, writer or blocking thread), so the total taken before and
//! after it is what that request waited for another connection's lock. The
//! node sends it back in the `x-conductor-lock-wait-us` response header and
//! counts it in `/stats`.

use rusqlite::Connection;
use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::time::{Duration, Instant};

/// The response header carrying a request's lock wait, in microseconds
/// (absent when it did not wait).
pub const HEADER: &str = "x-conductor-lock-wait-us";

/// SQLite's own back-off for its busy timeout (sqlite3.c, sqliteDefaultBusyCallback), in ms.
const DELAYS: [u64; 12] = [1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100];

thread_local! {
    static WAITED: Cell<Duration> = const { Cell::new(Duration::ZERO) };
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

/// SQLite calls this while a lock it needs is held elsewhere; nonzero means
/// "try again". `count` is how many times it was called for this wait.
extern "C" fn busy(arg: *mut c_void, count: c_int) -> c_int {
    let timeout = arg as usize as u64;
    let count = count.max(0) as usize;
    let waited_before: u64 = if count < DELAYS.len() {
        DELAYS[..count].iter().sum()
    } else {
        DELAYS.iter().sum::<u64>() + (count - DELAYS.len()) as u64 * DELAYS[DELAYS.len() - 1]
    };
    let mut delay = DELAYS[count.min(DELAYS.len() - 1)];
    if waited_before + delay > timeout {
        delay = timeout.saturating_sub(waited_before);
        if delay == 0 {
            return 0;
        }
    }
    let start = Instant::now();
    std::thread::sleep(Duration::from_millis(delay));
    let slept = start.elapsed();
    WAITED.with(|w| w.set(w.get() + slept));
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
        set_timeout(&b, Duration::ZERO).unwrap();
        a.execute_batch("BEGIN IMMEDIATE").unwrap();
        assert!(b.execute_batch("BEGIN IMMEDIATE").is_err());
        assert_eq!(take(), Duration::ZERO, "a zero timeout does not wait");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
