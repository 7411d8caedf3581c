//! The node's SQLite connections and who may use which.
//!
//! - One **writer** connection. Baton-less requests that write use it, one at
//!   a time, so writers never contend on SQLite's write lock (contention
//!   means busy-handler sleeps, which kill throughput). A single-statement
//!   write tries it right on the HTTP worker thread when it is free and the
//!   write lock can be had at once (no thread hop); everything else is queued
//!   to the writer thread, which may wait for the lock.
//! - One **read** connection per HTTP worker thread (thread-local,
//!   `query_only`): short baton-less reads run right on the worker, with no
//!   thread hop. WAL readers never wait for the writer.
//! - A **pool** of general connections for streams (a baton owns one
//!   connection, so `BEGIN` … `COMMIT` spans requests) and cursors; they run
//!   on blocking threads because a client decides how long they live.
//! - A **checkpointer** thread: no connection checkpoints inside a commit
//!   (`wal_autocheckpoint=0`); every second, if the WAL changed, the
//!   checkpointer copies it back into the database, holding the writer
//!   connection only for its last, short pass, so the WAL restarts instead
//!   of growing and the fsyncs of a checkpoint never land on an HTTP worker.

use crate::config::{Config, Synchronous};
use crate::{lockwait, writer};
use conductor_hrana::Stmt;
use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, TryLockError};
use std::thread::JoinHandle;
use std::time::Duration;

/// Prepared statements kept per connection (rusqlite's LRU cache).
const STMT_CACHE_CAPACITY: usize = 256;
/// Idle pooled connections kept for new streams and cursors.
const POOL_MAX_IDLE: usize = 32;
/// How often the checkpointer copies the WAL back and lets it restart.
const CHECKPOINT_PERIOD: Duration = Duration::from_secs(1);
/// Checkpoint passes run while commits go on, before the one that holds the
/// writer (fewer when a pass copies no more than `SMALL_CHECKPOINT_FRAMES`).
const FREE_CHECKPOINT_PASSES: usize = 3;
const SMALL_CHECKPOINT_FRAMES: i64 = 256;
/// After a checkpoint the WAL file is truncated back to at most this.
const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

static NEXT_DB_ID: AtomicU64 = AtomicU64::new(1);

pub struct Db {
    /// Distinguishes nodes sharing a process (tests) in thread-local readers.
    id: u64,
    path: PathBuf,
    opening: Opening,
    writer: Arc<Mutex<Connection>>,
    writer_tx: Mutex<Option<mpsc::Sender<writer::Job>>>,
    /// Dropping the sender stops the checkpointer.
    checkpointer_stop: Mutex<Option<mpsc::Sender<()>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    pool: Mutex<Vec<Connection>>,
    pub group_stats: Arc<writer::GroupStats>,
}

/// The result of trying a write on the worker thread.
pub enum Inline<R> {
    Done(R),
    /// The writer was busy (or the write lock taken): queue it instead.
    Busy,
}

fn wal_path(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}-wal", db.display()))
}

impl Db {
    /// Bytes in the write-ahead log file now (0 when there is none).
    pub fn wal_bytes(&self) -> u64 {
        std::fs::metadata(wal_path(&self.path))
            .map(|m| m.len())
            .unwrap_or(0)
    }

    /// Creates the data directory, opens the database in WAL mode and starts
    /// the writer and checkpointer threads.
    pub fn open(config: &Config, path: PathBuf) -> rusqlite::Result<Db> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some(format!("cannot create {}: {e}", config.data_dir.display())),
            )
        })?;
        let busy_timeout = Duration::from_millis(config.busy_timeout_ms);
        let opening = Opening {
            busy_timeout,
            synchronous: config.synchronous,
            reserve_bytes: config.reserve_bytes,
        };
        let writer = open_connection(&path, &opening)?;
        // journal_mode is persistent in the file; setting it once here makes
        // every later connection WAL.
        let mode: String = writer.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                Some(format!("could not switch the database to WAL (got {mode})")),
            ));
        }
        let checkpointer = open_connection(&path, &opening)?;

        let writer = Arc::new(Mutex::new(writer));
        let group_stats = Arc::new(writer::GroupStats::default());
        let (tx, writer_thread) = writer::spawn(writer.clone(), group_stats.clone());
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let wal = wal_path(&path);
        let checkpoint_thread = std::thread::Builder::new()
            .name("conductor-checkpoint".into())
            .spawn({
                let writer = writer.clone();
                move || checkpoint_loop(checkpointer, writer, wal, stop_rx)
            })
            .expect("spawn checkpointer thread");
        Ok(Db {
            id: NEXT_DB_ID.fetch_add(1, Ordering::Relaxed),
            path,
            opening,
            writer,
            writer_tx: Mutex::new(Some(tx)),
            checkpointer_stop: Mutex::new(Some(stop_tx)),
            threads: Mutex::new(vec![writer_thread, checkpoint_thread]),
            pool: Mutex::new(Vec::new()),
            group_stats,
        })
    }

    fn open_connection(&self) -> rusqlite::Result<Connection> {
        open_connection(&self.path, &self.opening)
    }

    /// Runs `f` on the writer thread with the writer connection. `None` if
    /// the node is shutting down.
    pub async fn with_writer<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job = writer::Job::Any(Box::new(move |conn| {
            let _ = tx.send(f(conn));
        }));
        self.writer_tx.lock().unwrap().as_ref()?.send(job).ok()?;
        rx.await.ok()
    }

    /// Queues one INSERT/UPDATE/DELETE/REPLACE (see `writer::groupable`) as
    /// its own autocommit transaction; it may share a commit with others
    /// queued at the same time. `None` if the node is shutting down.
    pub async fn lone_write(&self, stmt: Stmt) -> Option<writer::LoneReply> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.writer_tx
            .lock()
            .unwrap()
            .as_ref()?
            .send(writer::Job::Lone(stmt, tx))
            .ok()?;
        rx.await.ok()
    }

    /// Tries `f` with the writer connection on the calling (worker) thread,
    /// without waiting: not if another write holds the connection, and with
    /// SQLite's busy timeout off, so a write lock held by a stream makes `f`
    /// fail with SQLITE_BUSY at once instead of blocking the worker. `f`
    /// returns `None` for "busy, nothing done"; then the caller queues the
    /// work to the writer thread. Never under `synchronous=FULL`, where every
    /// commit waits for an fsync.
    pub fn try_write_inline<R>(&self, f: impl FnOnce(&Connection) -> Option<R>) -> Inline<R> {
        // Not past writes already waiting for the lock: they go first.
        if self.opening.synchronous == Synchronous::Full || lockwait::waiting() > 0 {
            return Inline::Busy;
        }
        let conn = match self.writer.try_lock() {
            Ok(c) => c,
            Err(TryLockError::WouldBlock) => return Inline::Busy,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
        };
        match self.without_waiting(&conn, || f(&conn)).flatten() {
            Some(r) => Inline::Done(r),
            None => Inline::Busy,
        }
    }

    /// Runs `f` with this worker thread's read connection (opened on first
    /// use). Only for statements known to be read-only: the connection is
    /// `query_only`.
    pub fn with_reader<R>(&self, f: impl FnOnce(&Connection) -> R) -> rusqlite::Result<R> {
        thread_local! {
            static READERS: RefCell<Vec<(u64, Connection)>> = const { RefCell::new(Vec::new()) };
        }
        READERS.with(|readers| {
            let mut readers = readers.borrow_mut();
            let pos = match readers.iter().position(|(id, _)| *id == self.id) {
                Some(pos) => pos,
                None => {
                    let conn = self.open_connection()?;
                    conn.pragma_update(None, "query_only", true)?;
                    readers.push((self.id, conn));
                    readers.len() - 1
                }
            };
            Ok(f(&readers[pos].1))
        })
    }

    /// An idle pooled connection for a transaction's first write to try on
    /// the worker thread, if there is one and no write waits for the lock
    /// (those go first, as with [`Db::try_write_inline`]). Never opens one,
    /// so it may be called on a worker thread.
    pub fn idle_conn_for_write(&self) -> Option<Connection> {
        if lockwait::waiting() > 0 {
            return None;
        }
        self.pool.lock().unwrap().pop()
    }

    /// Runs `f` on `conn` with SQLite's busy timeout off (a lock held
    /// elsewhere fails at once with SQLITE_BUSY), then turns it back on.
    /// `None` if the timeout could not be switched off (nothing ran).
    pub fn without_waiting<R>(&self, conn: &Connection, f: impl FnOnce() -> R) -> Option<R> {
        lockwait::set_timeout(conn, Duration::ZERO).ok()?;
        let r = f();
        let _ = lockwait::set_timeout(conn, self.opening.busy_timeout);
        Some(r)
    }

    /// A general connection for a stream or cursor (blocking: call from a
    /// blocking thread).
    pub fn take_conn(&self) -> rusqlite::Result<Connection> {
        if let Some(c) = self.pool.lock().unwrap().pop() {
            return Ok(c);
        }
        self.open_connection()
    }

    /// Returns a connection to the pool; an open transaction is rolled back
    /// first (this is how expired and closed streams end theirs).
    pub fn give_back(&self, conn: Connection) {
        if !conn.is_autocommit() {
            if let Err(e) = conn.execute_batch("ROLLBACK") {
                tracing::warn!(error = %e, "rollback of an abandoned transaction failed; closing the connection");
                return;
            }
        }
        let mut pool = self.pool.lock().unwrap();
        if pool.len() < POOL_MAX_IDLE {
            pool.push(conn);
        }
    }

    /// Stops the writer and checkpointer threads and closes pooled
    /// connections. Worker-thread readers close when their runtime's threads
    /// exit; the last connection to close checkpoints and removes the WAL.
    pub fn close(&self) {
        self.pool.lock().unwrap().clear();
        drop(self.writer_tx.lock().unwrap().take());
        drop(self.checkpointer_stop.lock().unwrap().take());
        for t in self.threads.lock().unwrap().drain(..) {
            let _ = t.join();
        }
    }
}

/// How every connection of a database is set up.
#[derive(Clone, Copy)]
struct Opening {
    busy_timeout: Duration,
    synchronous: Synchronous,
    reserve_bytes: u64,
}

fn open_connection(path: &std::path::Path, opening: &Opening) -> rusqlite::Result<Connection> {
    let Opening {
        busy_timeout,
        synchronous,
        reserve_bytes,
    } = *opening;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    lockwait::set_timeout(&conn, busy_timeout)?;
    // No double-quoted string literals: `"name"` is an identifier only, so a
    // misspelt or missing column is "no such column", never silently the
    // string 'name'. Schemas already stored with such literals still load
    // (SQLite always accepts them while reading a schema).
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DQS_DML, false)?;
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_DQS_DDL, false)?;
    conn.pragma_update(None, "synchronous", synchronous.pragma_value())?;
    // Checkpoints belong to the checkpointer thread, not to commits.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    // After wal_autocheckpoint, which sets the WAL hook this replaces.
    lockwait::wake_waiters_on_release(&conn);
    // Whichever connection resets the WAL truncates a grown file.
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    conn.set_prepared_statement_cache_capacity(STMT_CACHE_CAPACITY);
    crate::functions::register(&conn, reserve_bytes)?;
    Ok(conn)
}

/// Checkpoints every `CHECKPOINT_PERIOD` if the WAL changed, until `stop` is
/// dropped. Doing it here rather than inside a commit (SQLite's
/// autocheckpoint) keeps its fsyncs off the HTTP workers.
///
/// A PASSIVE checkpoint never waits for readers or writers, but it copies
/// back only the frames that were in the WAL when it began, and the WAL
/// restarts from its beginning (instead of growing) only once every frame
/// has been copied. So the bulk is copied while commits go on (a pass
/// again if commits added much meanwhile), and only the last pass holds the
/// writer connection, for the few frames added during the passes before:
/// writes stall for that pass alone. Measured with 8 clients updating by
/// key on four nodes (docs/BENCHMARKS.md, "Checkpoints"): holding the
/// writer through a whole checkpoint every 100 ms stalled each node's
/// writes for ~4.5 ms ten times a second, and the 99th percentile latency
/// was 1.5–1.8 times what it is this way.
fn checkpoint_loop(
    conn: Connection,
    writer: Arc<Mutex<Connection>>,
    wal: PathBuf,
    stop: mpsc::Receiver<()>,
) {
    let stamp = || {
        std::fs::metadata(&wal)
            .ok()
            .map(|m| (m.len(), m.modified().ok()))
    };
    // The frames of the WAL copied back, as the pass left them.
    let checkpoint = || {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(2))
            .map_err(|e| tracing::warn!(error = %e, "checkpoint failed"))
            .ok()
    };
    let mut last = None;
    loop {
        match stop.recv_timeout(CHECKPOINT_PERIOD) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        let now = stamp();
        if now.is_none() || now == last {
            continue; // no WAL, or nothing written since the last checkpoint
        }
        let mut copied_before = 0;
        for _ in 0..FREE_CHECKPOINT_PASSES {
            let Some(copied) = checkpoint() else {
                break;
            };
            // Fewer copied than before: the WAL restarted meanwhile.
            let this_pass = copied.checked_sub(copied_before).unwrap_or(copied);
            copied_before = copied;
            if this_pass <= SMALL_CHECKPOINT_FRAMES {
                break;
            }
        }
        let _writer = writer.lock().unwrap_or_else(|p| p.into_inner());
        checkpoint();
        last = stamp();
    }
}
