//! Faults with real libSQL servers (sqld) as the nodes, each run the same
//! way on conductor-node: a node killed in the middle of a scan, killed in
//! the middle of a transaction, restarted, and stopped (a node that does not
//! answer: the request deadline, statement_timeout and cancel), and lock
//! contention (a paused holder and a waiting writer; a lock request given
//! up by NOWAIT or lock_timeout, which sqld still serves). What the
//! user sees — SQLSTATE, message, a DETAIL naming node and shard — must be
//! the same with both kinds of node.
//!
//! Runs when `SQLD` names a sqld binary (`make test` passes it when one is
//! installed); otherwise it says so and checks nothing.

mod common;

use common::{describe, exec, expect_db_error, query_i64, shard_map, signal, sqld_bin};
use conductor_e2e::postgres::{Client, NoTls};
use conductor_e2e::{pg_err, Cluster, ClusterOptions};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
enum Kind {
    ConductorNode,
    Sqld(PathBuf),
}

/// Both kinds of node, or None (and a message) without a sqld binary.
fn kinds() -> Option<[Kind; 2]> {
    match sqld_bin() {
        Some(p) => Some([Kind::ConductorNode, Kind::Sqld(p)]),
        None => {
            println!(
                "SKIPPED: set SQLD=/path/to/sqld to run the faults against real libSQL servers (see the README)"
            );
            None
        }
    }
}

/// Two nodes of `kind`, conductor set up, and table `f` (8 shards) holding
/// `rows` rows of `width` characters.
fn start(kind: &Kind, rows: i64, width: i64) -> (Cluster, Client) {
    let cluster = match kind {
        Kind::ConductorNode => Cluster::start(ClusterOptions {
            nodes: 2,
            node_delay_ms: None,
            token: None,
        }),
        Kind::Sqld(bin) => Cluster::start_sqld(2, bin),
    };
    let mut db = cluster.client();
    cluster.setup_conductor(&mut db, "cluster");
    exec(
        &mut db,
        &format!(
            "CREATE FOREIGN TABLE f (id bigint NOT NULL, v text) SERVER cluster;
             SELECT conductor.create_distributed_table('f', 'id', shard_count => 8);
             INSERT INTO f SELECT i, repeat('x', {width}) FROM generate_series(1, {rows}) i;"
        ),
    );
    (cluster, db)
}

/// A key of table `f` on each node: node id -> key.
fn key_on(db: &mut Client, node: &str) -> i64 {
    let shards = shard_map(db, "f");
    (1_000_000..1_001_000i64)
        .find(|k| {
            let s = query_i64(
                db,
                &format!("SELECT conductor.shard_for('f', {k}::bigint)::bigint"),
            );
            shards[&(s as i32)].0 == node
        })
        .unwrap_or_else(|| panic!("no key on {node}"))
}

/// What a user is shown, without what differs between runs (ports, shard
/// numbers): "SQLSTATE message | DETAIL names the node and a shard".
fn shown(e: &conductor_e2e::postgres::error::DbError, node: &str) -> String {
    let detail = e.detail().unwrap_or("");
    format!(
        "{} | DETAIL names {node}: {}, a shard: {}",
        code_and_message(e),
        detail.contains(node),
        detail.contains("shard ")
    )
}

/// SQLSTATE and message, with the two transport failures of a just-killed
/// node made one: whether a request meets the node's closed pooled
/// connection ("request to node … failed") or finds no listener ("could not
/// connect to node …") is a race with the kernel's delivery of the close to
/// the router's I/O thread, on either kind of node.
fn code_and_message(e: &conductor_e2e::postgres::error::DbError) -> String {
    let message = e.message();
    let message = if message.starts_with("conductor: could not connect to node ")
        || (message.starts_with("conductor: request to node ") && message.ends_with(" failed"))
    {
        "node unreachable".to_string()
    } else {
        message.to_string()
    };
    format!("{} {message}", e.code().code())
}

/// node-1 is killed while a scan streams from it: rows were handed over,
/// so the scan cannot be retried and fails, naming the node; the session
/// reads everything once the node is back.
fn killed_mid_scan(kind: &Kind) -> String {
    // Far more than the sockets and the scan's channels hold: every node is
    // still sending when the first rows are fetched.
    let (mut cluster, _db) = start(kind, 100_000, 300);
    let mut session = cluster.client();
    exec(
        &mut session,
        "BEGIN; DECLARE c CURSOR FOR SELECT id, v FROM f",
    );
    let first = session.query("FETCH 100 FROM c", &[]).expect("first rows");
    assert_eq!(first.len(), 100);
    cluster.stop_node(1); // SIGKILL
    let e = expect_db_error(
        session.query("FETCH ALL FROM c", &[]),
        "scan of a killed node",
    );
    println!("{kind:?}: killed mid-scan: {}", describe(&e));
    assert!(
        e.detail().unwrap_or("").contains("node-1"),
        "{}",
        describe(&e)
    );
    exec(&mut session, "ROLLBACK");
    cluster.start_node(1);
    assert_eq!(query_i64(&mut session, "SELECT count(*) FROM f"), 100_000);
    // The message depends on the failure seen last, which is a race with
    // either kind of node: a shard that had handed over no rows yet is
    // retried, and then finds the node gone ("could not connect"); one
    // that had is cut off ("request to node node-1 failed").
    let detail = e.detail().unwrap_or("");
    format!(
        "{} | DETAIL names node-1: {}, a shard: {}",
        e.code().code(),
        detail.contains("node-1"),
        detail.contains("shard ")
    )
}

#[test]
fn a_sqld_killed_mid_scan_fails_as_conductor_node_does() {
    let Some(kinds) = kinds() else { return };
    let [node, sqld] = kinds.map(|k| killed_mid_scan(&k));
    assert_eq!(sqld, node);
}

/// node-1 is killed inside a transaction: a statement that needs it fails
/// naming it and nothing of the transaction is committed anywhere; a
/// COMMIT it misses commits nothing on it, and says what committed where.
fn killed_mid_transaction(kind: &Kind) -> Vec<String> {
    let (mut cluster, mut db) = start(kind, 1_000, 10);
    let k0 = key_on(&mut db, "node-0");
    let k1 = key_on(&mut db, "node-1");
    let mut shown_errors = Vec::new();

    // A statement after the kill.
    let mut s = cluster.client();
    exec(
        &mut s,
        &format!("BEGIN; INSERT INTO f VALUES ({k0}, 'a'), ({k1}, 'a'); UPDATE f SET v = 'u' WHERE id <= 100"),
    );
    cluster.stop_node(1);
    let e = expect_db_error(
        s.batch_execute("UPDATE f SET v = 'w' WHERE id > 100"),
        "a statement on a killed node",
    );
    println!("{kind:?}: statement after the kill: {}", describe(&e));
    shown_errors.push(shown(&e, "node-1"));
    exec(&mut s, "ROLLBACK");
    cluster.start_node(1);
    assert_eq!(
        query_i64(
            &mut db,
            &format!("SELECT count(*) FROM f WHERE id IN ({k0}, {k1}) OR v <> repeat('x', 10)")
        ),
        0,
        "nothing of the rolled back transaction"
    );

    // COMMIT after the kill, the transaction's writes all on the killed node.
    exec(
        &mut s,
        &format!("BEGIN; INSERT INTO f VALUES ({k1}, 'b'); UPDATE f SET v = 'b' WHERE id = {k1}"),
    );
    cluster.stop_node(1);
    let e = expect_db_error(s.batch_execute("COMMIT"), "COMMIT on a killed node");
    println!("{kind:?}: COMMIT after the kill: {}", describe(&e));
    let detail = e.detail().unwrap_or("");
    assert!(
        detail.contains("node-1") && !detail.contains("Committed:"),
        "{}",
        describe(&e)
    );
    shown_errors.push(code_and_message(&e));
    cluster.start_node(1);
    assert_eq!(
        query_i64(&mut db, &format!("SELECT count(*) FROM f WHERE id = {k1}")),
        0,
        "the killed node committed nothing"
    );

    // COMMIT after the kill with writes on both nodes: node-0 commits,
    // node-1 does not, and the user is told which.
    let notices = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = notices.clone();
    let mut config = cluster.pg_config();
    config.notice_callback(move |n| {
        sink.lock().unwrap().push(format!(
            "{}: {} | {}",
            n.severity(),
            n.message(),
            n.detail().unwrap_or("")
        ))
    });
    let mut s = config.connect(NoTls).expect("connect");
    exec(
        &mut s,
        &format!("BEGIN; INSERT INTO f VALUES ({k0}, 'c'), ({k1}, 'c')"),
    );
    cluster.stop_node(1);
    let e = expect_db_error(s.batch_execute("COMMIT"), "COMMIT with a killed node");
    println!(
        "{kind:?}: COMMIT across nodes after the kill: {}",
        describe(&e)
    );
    shown_errors.push(code_and_message(&e));
    let notices = notices.lock().unwrap().clone();
    let warning = notices
        .iter()
        .find(|n| n.contains("committed on some nodes only"))
        .unwrap_or_else(|| panic!("a WARNING names what committed: {notices:?}"));
    // As in the conductor-node suite: a COMMIT written on a pooled
    // connection the kill closed is reported as of unknown outcome.
    assert!(
        warning.contains("Committed: node node-0")
            && (warning.contains("Not committed: node node-1")
                || warning.contains("may have committed before its answer was lost): node node-1")),
        "{warning}"
    );
    cluster.start_node(1);
    let ids: Vec<i64> = db
        .query(
            &format!("SELECT id FROM f WHERE id IN ({k0}, {k1}) ORDER BY id"),
            &[],
        )
        .unwrap_or_else(|e| panic!("{}", pg_err(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![k0], "node-0 committed, the killed node did not");
    shown_errors
}

#[test]
fn a_sqld_killed_mid_transaction_commits_nothing_on_it_as_conductor_node() {
    let Some(kinds) = kinds() else { return };
    let [node, sqld] = kinds.map(|k| killed_mid_transaction(&k));
    assert_eq!(sqld, node);
}

/// A node restarted between two statements (its pooled connections are
/// dead): the next read and write reach it without an error.
fn restarted(kind: &Kind) {
    let (mut cluster, mut db) = start(kind, 1_000, 10);
    let k1 = key_on(&mut db, "node-1");
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM f"), 1_000);
    cluster.stop_node(1);
    cluster.start_node(1);
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM f"), 1_000);
    exec(&mut db, &format!("INSERT INTO f VALUES ({k1}, 'r')"));
    cluster.stop_node(1);
    cluster.start_node(1);
    exec(
        &mut db,
        &format!("BEGIN; UPDATE f SET v = 'rr' WHERE id = {k1}; COMMIT"),
    );
    assert_eq!(
        query_i64(
            &mut db,
            &format!("SELECT count(*) FROM f WHERE v = 'rr' AND id = {k1}")
        ),
        1
    );
}

#[test]
fn a_restarted_sqld_is_used_again_as_conductor_node_is() {
    let Some(kinds) = kinds() else { return };
    for k in &kinds {
        restarted(k);
    }
}

/// node-1 stops answering (SIGSTOP): the request deadline fails the
/// statement naming it; statement_timeout and pg_cancel_backend end a
/// statement waiting on it; the session stays usable; once it answers
/// again everything is read.
fn stopped(kind: &Kind) -> Vec<String> {
    let (cluster, mut db) = start(kind, 1_000, 10);
    let pid = cluster.node_pid(1).expect("node-1 runs");
    let mut seen = Vec::new();
    signal(pid, conductor_e2e::libc::SIGSTOP);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        exec(
            &mut db,
            "SET conductor.request_timeout = '1s'; SET conductor.read_retries = 0",
        );
        let t = Instant::now();
        let e = expect_db_error(db.query("SELECT count(*) FROM f", &[]), "deadline");
        println!(
            "{kind:?}: request_timeout 1s: ERROR after {:?}: {}",
            t.elapsed(),
            describe(&e)
        );
        assert!(
            e.detail().unwrap_or("").contains("node-1"),
            "{}",
            describe(&e)
        );
        seen.push(shown(&e, "node-1"));

        // A deadline far away: only the cancel can end these statements.
        exec(
            &mut db,
            "SET conductor.request_timeout = '120s'; SET statement_timeout = '300ms'",
        );
        let e = expect_db_error(db.query("SELECT count(*) FROM f", &[]), "statement_timeout");
        assert_eq!(e.code().code(), "57014", "{}", describe(&e));
        seen.push(format!("{} {}", e.code().code(), e.message()));
        exec(&mut db, "RESET statement_timeout");

        let backend: i32 = db.query_one("SELECT pg_backend_pid()", &[]).unwrap().get(0);
        let config = cluster.pg_config();
        let canceler = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            let mut c = config.connect(NoTls).unwrap();
            c.execute("SELECT pg_cancel_backend($1)", &[&backend])
                .unwrap();
        });
        let e = expect_db_error(db.query("SELECT count(*) FROM f", &[]), "pg_cancel_backend");
        canceler.join().unwrap();
        assert_eq!(e.code().code(), "57014", "{}", describe(&e));
        seen.push(format!("{} {}", e.code().code(), e.message()));
        assert_eq!(query_i64(&mut db, "SELECT 1::bigint"), 1);
    }));
    signal(pid, conductor_e2e::libc::SIGCONT);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    exec(&mut db, "RESET conductor.request_timeout");
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM f"), 1_000);
    seen
}

#[test]
fn a_sqld_that_does_not_answer_fails_at_the_deadline_and_cancel_works() {
    let Some(kinds) = kinds() else { return };
    let [node, sqld] = kinds.map(|k| stopped(&k));
    assert_eq!(sqld, node);
}

/// Keys of table `f` on `node`, `n` of them.
fn keys_on(db: &mut Client, node: &str, n: usize) -> Vec<i64> {
    let shards = shard_map(db, "f");
    (2_000_000..2_001_000i64)
        .filter(|k| {
            let s = query_i64(
                db,
                &format!("SELECT conductor.shard_for('f', {k}::bigint)::bigint"),
            );
            shards[&(s as i32)].0 == node
        })
        .take(n)
        .collect()
}

/// A transaction holds node-1's write lock while another session's write
/// waits for it; after a pause longer than either kind of node lets a
/// writer wait, the transaction runs `then`. What the holder and the waiting
/// writer got, the rows that exist afterwards, and the keys used (the
/// holder's, the waiter's, the holder's second).
type LockOutcome = (Result<(), String>, Result<(), String>, Vec<i64>, Vec<i64>);

fn lock_holder_pauses(kind: &Kind, then: &str) -> LockOutcome {
    let (cluster, mut db) = start(kind, 0, 1);
    let keys = keys_on(&mut db, "node-1", 3);
    let mut a = cluster.client();
    exec(
        &mut a,
        &format!("BEGIN; INSERT INTO f VALUES ({}, 'a')", keys[0]),
    );
    let config = cluster.pg_config();
    let waiter_key = keys[1];
    let waiter = std::thread::spawn(move || {
        let mut b = config.connect(NoTls).unwrap();
        let t = Instant::now();
        let r = b
            .batch_execute(&format!("INSERT INTO f VALUES ({waiter_key}, 'b')"))
            .map_err(|e| pg_err(&e));
        (r, t.elapsed())
    });
    std::thread::sleep(Duration::from_secs(8));
    let then = then.replace("{K}", &keys[2].to_string());
    let holder = a.batch_execute(&then).map_err(|e| pg_err(&e));
    let _ = a.batch_execute("ROLLBACK");
    let (waited, took) = waiter.join().unwrap();
    println!(
        "{kind:?}: {then}: the holder: {holder:?}; the waiting writer, after {took:?}: {waited:?}"
    );
    let ids: Vec<i64> = db
        .query("SELECT id FROM f ORDER BY id", &[])
        .unwrap_or_else(|e| panic!("{}", pg_err(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect();
    (holder, waited, ids, keys)
}

/// Which transaction gets a node's write lock differs: conductor-node
/// makes the waiting writer give up (the holder keeps its transaction),
/// sqld rolls the holder back and lets the waiting writer in. Either way
/// the one that loses gets SQLSTATE 40001 (retry) naming the node and
/// shard, and exactly the winner's writes exist.
#[test]
fn a_paused_lock_holder_and_a_waiting_writer_one_loses_with_40001() {
    let Some(kinds) = kinds() else { return };
    for then in ["COMMIT", "INSERT INTO f VALUES ({K}, 'c'); COMMIT"] {
        for kind in &kinds {
            let (holder, waiter, ids, keys) = lock_holder_pauses(kind, then);
            let (loser, mut won) = match kind {
                Kind::ConductorNode => {
                    assert_eq!(holder, Ok(()), "{then}");
                    let mut won = vec![keys[0]];
                    if then.starts_with("INSERT") {
                        won.push(keys[2]);
                    }
                    (waiter.expect_err("the waiting writer gives up"), won)
                }
                Kind::Sqld(_) => {
                    assert_eq!(waiter, Ok(()), "{then}");
                    (
                        holder.expect_err("sqld rolled the holder back"),
                        vec![keys[1]],
                    )
                }
            };
            assert!(loser.starts_with("ERROR 40001"), "{kind:?}: {loser}");
            let detail = loser.split("DETAIL:").nth(1).unwrap_or("");
            assert!(
                detail.contains("node-1") && detail.contains("shard"),
                "{kind:?}: {loser}"
            );
            won.sort();
            assert_eq!(ids, won, "{kind:?}: {then}");
        }
    }
}

/// A transaction holds node-1's write lock; another session's statement
/// asks for it and gives up at once (`waiter`: NOWAIT, or a short
/// `lock_timeout` writing a key of node-1); the holder goes on after a pause longer than sqld lets
/// a writer wait, writes again and commits. What the holder got and the
/// rows that exist afterwards, with the holder's two keys.
fn holder_after_a_given_up_waiter(
    kind: &Kind,
    waiter: &str,
) -> (Result<(), String>, Vec<i64>, Vec<i64>) {
    let (cluster, mut db) = start(kind, 0, 1);
    let keys = keys_on(&mut db, "node-1", 3);
    let waiter = waiter.replace("{W}", &keys[2].to_string());
    let mut a = cluster.client();
    exec(
        &mut a,
        &format!("BEGIN; INSERT INTO f VALUES ({}, 'a')", keys[0]),
    );
    let mut b = cluster.client();
    let t = Instant::now();
    let gave_up = b.batch_execute(&waiter).map_err(|e| pg_err(&e));
    let took = t.elapsed();
    assert!(
        gave_up
            .as_ref()
            .is_err_and(|e| e.starts_with("ERROR 55P03")),
        "{kind:?}: {waiter}: {gave_up:?}"
    );
    assert!(
        took < Duration::from_secs(2),
        "{kind:?}: {waiter}: waited {took:?}"
    );
    std::thread::sleep(Duration::from_secs(7));
    let holder = a
        .batch_execute(&format!("INSERT INTO f VALUES ({}, 'c'); COMMIT", keys[1]))
        .map_err(|e| pg_err(&e));
    let _ = a.batch_execute("ROLLBACK");
    println!("{kind:?}: {waiter}: the holder: {holder:?}");
    let ids: Vec<i64> = db
        .query("SELECT id FROM f ORDER BY id", &[])
        .unwrap_or_else(|e| panic!("{}", pg_err(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect();
    (holder, ids, keys[..2].to_vec())
}

/// A lock request that conductor gave up (NOWAIT, lock_timeout) cannot be
/// withdrawn from the node: sqld still counts it as a waiting writer and
/// rolls the holder back after a few seconds (40001 naming node and shard,
/// nothing of the holder committed, nothing of the waiter either), while
/// on conductor-node the holder commits. The README says so.
#[test]
fn a_given_up_lock_request_still_rolls_a_sqld_holder_back() {
    let Some(kinds) = kinds() else { return };
    for waiter in [
        "SELECT id FROM f ORDER BY id FOR UPDATE NOWAIT",
        "SET lock_timeout = '300ms'; INSERT INTO f VALUES ({W}, 'b')",
    ] {
        for kind in &kinds {
            let (holder, ids, keys) = holder_after_a_given_up_waiter(kind, waiter);
            match kind {
                Kind::ConductorNode => {
                    assert_eq!(holder, Ok(()), "{waiter}");
                    assert_eq!(ids, keys, "{waiter}");
                }
                Kind::Sqld(_) => {
                    let e = holder.expect_err("sqld rolled the holder back");
                    assert!(e.starts_with("ERROR 40001"), "{waiter}: {e}");
                    let detail = e.split("DETAIL:").nth(1).unwrap_or("");
                    assert!(
                        detail.contains("node-1") && detail.contains("shard"),
                        "{waiter}: {e}"
                    );
                    assert_eq!(ids, Vec::<i64>::new(), "{waiter}");
                }
            }
        }
    }
}
