//! The writer thread: runs the queued work of the single writer connection,
//! in order, with group commit for lone writes.
//!
//! A lone INSERT/UPDATE/DELETE/REPLACE (a self-closing pipeline of one
//! statement) is its own autocommit transaction. When several are queued
//! together, they run in one transaction: one WAL commit instead of one per
//! statement (each of which rewrites the same pages). That is equivalent to
//! running them one after another in autocommit, because SQLite undoes a
//! failed statement's changes by itself either way and no response is sent
//! before the COMMIT. The one difference, a statement that rolls back the
//! whole transaction (`OR ROLLBACK`, `RAISE(ROLLBACK)`), and a failing
//! COMMIT are detected, and the group is then re-run one statement at a time
//! (nothing of it was committed, nothing answered).

use crate::{errors, exec, lockwait};
use conductor_hrana::{Error, Stmt, StmtResult};
use rusqlite::Connection;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use tokio::sync::oneshot;

/// Most lone writes sharing one commit.
const MAX_GROUP: usize = 128;

pub type LoneResult = Result<StmtResult, Error>;

/// A lone write's result and how long it waited for the write lock.
pub type LoneReply = (LoneResult, Duration);

pub enum Job {
    /// Runs alone, in queue order.
    Any(Box<dyn FnOnce(&mut Connection) + Send>),
    /// One data-changing statement in autocommit; may share a commit.
    Lone(Stmt, oneshot::Sender<LoneReply>),
}

/// Whether a lone statement may share a commit: plain INSERT, UPDATE,
/// DELETE, REPLACE (never transaction control or anything else).
pub fn groupable(sql: &str) -> bool {
    let s = sql.trim_start().as_bytes();
    let starts = |kw: &[u8]| {
        s.len() > kw.len()
            && s[..kw.len()].eq_ignore_ascii_case(kw)
            && s[kw.len()].is_ascii_whitespace()
    };
    starts(b"insert") || starts(b"update") || starts(b"delete") || starts(b"replace")
}

/// Commits that carried more than one lone write, and the writes they
/// carried (for /stats).
#[derive(Default)]
pub struct GroupStats {
    pub commits: AtomicU64,
    pub writes: AtomicU64,
}

pub fn spawn(
    conn: Arc<Mutex<Connection>>,
    stats: Arc<GroupStats>,
) -> (mpsc::Sender<Job>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel::<Job>();
    let thread = std::thread::Builder::new()
        .name("conductor-writer".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                // Everything queued meanwhile joins this round.
                let mut jobs = vec![first];
                while jobs.len() < MAX_GROUP {
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
                let mut conn = conn.lock().unwrap_or_else(|p| p.into_inner());
                let mut group = Vec::new();
                for job in jobs {
                    match job {
                        Job::Lone(stmt, reply) => group.push((stmt, reply)),
                        Job::Any(f) => {
                            commit_group(&conn, std::mem::take(&mut group), &stats);
                            f(&mut conn);
                        }
                    }
                }
                commit_group(&conn, group, &stats);
            }
        })
        .expect("spawn writer thread");
    (tx, thread)
}

type Lone = (Stmt, oneshot::Sender<LoneReply>);

/// Runs a group of lone writes in one transaction. Each write's wait for
/// the write lock is the group's (they all waited for the one BEGIN).
fn commit_group(conn: &Connection, group: Vec<Lone>, stats: &GroupStats) {
    if group.len() < 2 {
        return one_by_one(conn, group);
    }
    lockwait::take();
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let e = errors::from_sqlite(e);
        if e.code
            .as_deref()
            .is_some_and(|c| c.starts_with("SQLITE_BUSY"))
        {
            // The write lock stayed taken (by a stream) for the whole busy
            // timeout: each statement would have failed the same way, and
            // trying them one by one would wait that long for each.
            let waited = lockwait::take();
            for (_, reply) in group {
                let _ = reply.send((Err(e.clone()), waited));
            }
            return;
        }
        return one_by_one(conn, group);
    }
    let none = HashMap::new();
    let mut results = Vec::with_capacity(group.len());
    for (stmt, _) in &group {
        results.push(exec::execute(conn, &none, stmt));
        if conn.is_autocommit() {
            // This statement rolled the whole transaction back.
            return one_by_one(conn, group);
        }
    }
    if conn.execute_batch("COMMIT").is_err() {
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        return one_by_one(conn, group);
    }
    stats.commits.fetch_add(1, Ordering::Relaxed);
    stats
        .writes
        .fetch_add(group.len() as u64, Ordering::Relaxed);
    let waited = lockwait::take();
    for ((_, reply), result) in group.into_iter().zip(results) {
        let _ = reply.send((result, waited));
    }
}

fn one_by_one(conn: &Connection, group: Vec<Lone>) {
    let none = HashMap::new();
    for (stmt, reply) in group {
        lockwait::take();
        let result = exec::execute(conn, &none, &stmt);
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        let _ = reply.send((result, lockwait::take()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_dml_is_grouped() {
        for sql in [
            "INSERT INTO t VALUES (1)",
            "  update t set x=1",
            "DELETE FROM t",
            "replace into t values (1)",
        ] {
            assert!(groupable(sql), "{sql}");
        }
        for sql in [
            "BEGIN",
            "COMMIT",
            "insert",
            "SELECT 1",
            "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
            "PRAGMA x",
            "INSERTX",
        ] {
            assert!(!groupable(sql), "{sql}");
        }
    }

    fn lone(conn_sql: &str) -> (Lone, oneshot::Receiver<LoneReply>) {
        let (tx, rx) = oneshot::channel();
        ((Stmt::new(conn_sql, vec![]), tx), rx)
    }

    #[test]
    fn a_group_commits_together_with_per_statement_results() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, u UNIQUE)")
            .unwrap();
        let (a, ra) = lone("INSERT INTO t(u) VALUES (1)");
        let (b, rb) = lone("INSERT INTO t(u) VALUES (1)");
        let (c, rc) = lone("INSERT INTO t(u) VALUES (2)");
        let stats = GroupStats::default();
        commit_group(&conn, vec![a, b, c], &stats);
        assert_eq!(stats.writes.load(Ordering::Relaxed), 3);
        assert_eq!(
            ra.blocking_recv()
                .unwrap()
                .0
                .unwrap()
                .last_insert_rowid
                .as_deref(),
            Some("1")
        );
        let e = rb.blocking_recv().unwrap().0.unwrap_err();
        assert_eq!(e.code.as_deref(), Some("SQLITE_CONSTRAINT_UNIQUE"));
        assert_eq!(rc.blocking_recv().unwrap().0.unwrap().affected_row_count, 1);
        assert!(conn.is_autocommit());
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn a_statement_that_rolls_back_the_group_reruns_it_one_by_one() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t(id INTEGER PRIMARY KEY, u UNIQUE)")
            .unwrap();
        let (a, ra) = lone("INSERT INTO t(u) VALUES (1)");
        let (b, rb) = lone("INSERT OR ROLLBACK INTO t(u) VALUES (1)");
        let (c, rc) = lone("INSERT INTO t(u) VALUES (2)");
        commit_group(&conn, vec![a, b, c], &GroupStats::default());
        assert!(ra.blocking_recv().unwrap().0.is_ok());
        assert!(rb.blocking_recv().unwrap().0.is_err());
        assert!(rc.blocking_recv().unwrap().0.is_ok());
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2, "as if run one after another in autocommit");
    }
}
