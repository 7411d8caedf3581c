//! The node's SQLite connections and who may use which.
//!
//! - One **writer** connection on its own thread: baton-less requests that
//!   write are queued to it, so writers never contend on SQLite's write lock
//!   (contention means busy-handler sleeps, which kill throughput).
//! - One **read** connection per HTTP worker thread (thread-local,
//!   `query_only`): short baton-less reads run right on the worker, with no
//!   thread hop. WAL readers never wait for the writer.
//! - A **pool** of general connections for streams (a baton owns one
//!   connection, so `BEGIN` … `COMMIT` spans requests) and cursors; they run
//!   on blocking threads because a client decides how long they live.

use crate::config::Config;
use rusqlite::{Connection, OpenFlags};
use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Prepared statements kept per connection (rusqlite's LRU cache).
const STMT_CACHE_CAPACITY: usize = 256;
/// Idle pooled connections kept for new streams and cursors.
const POOL_MAX_IDLE: usize = 32;

static NEXT_DB_ID: AtomicU64 = AtomicU64::new(1);

type WriterJob = Box<dyn FnOnce(&mut Connection) + Send>;

pub struct Db {
    /// Distinguishes nodes sharing a process (tests) in thread-local readers.
    id: u64,
    path: PathBuf,
    busy_timeout: Duration,
    synchronous: &'static str,
    writer_tx: Mutex<Option<mpsc::Sender<WriterJob>>>,
    writer_thread: Mutex<Option<JoinHandle<()>>>,
    pool: Mutex<Vec<Connection>>,
}

impl Db {
    /// Creates the data directory, opens the database in WAL mode and starts
    /// the writer thread.
    pub fn open(config: &Config) -> rusqlite::Result<Db> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CANTOPEN),
                Some(format!("cannot create {}: {e}", config.data_dir.display())),
            )
        })?;
        let mut db = Db {
            id: NEXT_DB_ID.fetch_add(1, Ordering::Relaxed),
            path: config.db_path(),
            busy_timeout: Duration::from_millis(config.busy_timeout_ms),
            synchronous: config.synchronous.pragma_value(),
            writer_tx: Mutex::new(None),
            writer_thread: Mutex::new(None),
            pool: Mutex::new(Vec::new()),
        };
        let mut writer = db.open_connection()?;
        // journal_mode is persistent in the file; setting it once here makes
        // every later connection WAL.
        let mode: String = writer.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
                Some(format!("could not switch the database to WAL (got {mode})")),
            ));
        }
        let (tx, rx) = mpsc::channel::<WriterJob>();
        let thread = std::thread::Builder::new()
            .name("conductor-writer".into())
            .spawn(move || {
                for job in rx {
                    job(&mut writer);
                }
                // Dropping the writer closes it; the last connection to close
                // checkpoints and removes the WAL.
            })
            .expect("spawn writer thread");
        db.writer_tx = Mutex::new(Some(tx));
        db.writer_thread = Mutex::new(Some(thread));
        Ok(db)
    }

    fn open_connection(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )?;
        conn.busy_timeout(self.busy_timeout)?;
        conn.pragma_update(None, "synchronous", self.synchronous)?;
        conn.set_prepared_statement_cache_capacity(STMT_CACHE_CAPACITY);
        Ok(conn)
    }

    /// Runs `f` on the writer thread with the writer connection. `None` if
    /// the node is shutting down.
    pub async fn with_writer<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: WriterJob = Box::new(move |conn| {
            let _ = tx.send(f(conn));
        });
        self.writer_tx.lock().unwrap().as_ref()?.send(job).ok()?;
        rx.await.ok()
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

    /// Stops the writer thread and closes pooled connections. Worker-thread
    /// readers close when their runtime's threads exit.
    pub fn close(&self) {
        self.pool.lock().unwrap().clear();
        drop(self.writer_tx.lock().unwrap().take());
        if let Some(t) = self.writer_thread.lock().unwrap().take() {
            let _ = t.join();
        }
    }
}
