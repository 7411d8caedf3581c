//! Shared statistics and node health: what one session ran is what another
//! session reads in conductor.stat_statements, stat_nodes, stat_shards and
//! stat_shard_keys; a node one session found down fails fast in another;
//! without shared_preload_libraries the views say how to enable them and
//! everything else works.

mod common;

use common::{describe, exec, expect_db_error, query_i64, signal};
use conductor_e2e::postgres::Client;
use conductor_e2e::{pg_err, Cluster, ClusterOptions};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const SHARDS: i64 = 8;
/// conductor.node_cooldown of the session that finds a node down.
const COOLDOWN: Duration = Duration::from_secs(5);

fn setup() -> (Cluster, Client) {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        node_delay_ms: None,
        token: None,
    });
    exec(
        &mut db,
        &format!(
            "CREATE FOREIGN TABLE f (id bigint NOT NULL, v text) SERVER cluster;
             SELECT conductor.create_distributed_table('f', 'id', shard_count => {SHARDS});
             INSERT INTO f SELECT i, 'v' || i FROM generate_series(1, 40) i;"
        ),
    );
    (cluster, db)
}

fn shard_of(db: &mut Client, id: i64) -> i32 {
    query_i64(
        db,
        &format!("SELECT conductor.shard_for('f', {id}::bigint)::bigint"),
    ) as i32
}

/// Runs `sql` and returns how long the client waited for it.
fn timed(db: &mut Client, sql: &str) -> Duration {
    let t = Instant::now();
    db.batch_execute(sql)
        .unwrap_or_else(|e| panic!("{sql}: {}", pg_err(&e)));
    t.elapsed()
}

#[test]
fn a_second_session_reads_what_the_first_ran() {
    let (cluster, mut db) = setup();
    exec(&mut db, "SELECT conductor.stat_reset()");
    // Known work in the first session: 7 lookups (id 5 three times), 3
    // counts over every shard, 2 inserts of one row each.
    let lookups = [5i64, 5, 5, 11, 17, 23, 29];
    let mut measured = Vec::new();
    for id in lookups {
        measured.push(timed(&mut db, &format!("SELECT v FROM f WHERE id = {id}")));
    }
    for _ in 0..3 {
        measured.push(timed(&mut db, "SELECT count(*) FROM f"));
    }
    for id in [101i64, 102] {
        measured.push(timed(
            &mut db,
            &format!("INSERT INTO f VALUES ({id}, 'new')"),
        ));
    }
    let slowest = measured.iter().max().copied().unwrap();

    let mut other = cluster.client();
    // Per statement (query id) and table.
    let stmt = |other: &mut Client, like: &str| {
        let row = other
            .query_one(
                "SELECT calls, rows, one_shard, some_shards, all_shards, errors,
                        total_time_ms, max_time_ms, mean_time_ms, remote_time_ms
                   FROM conductor.stat_statements
                  WHERE table_name = 'f'::regclass AND query LIKE $1",
                &[&like],
            )
            .unwrap_or_else(|e| panic!("stat_statements {like}: {}", pg_err(&e)));
        let ints: Vec<i64> = (0..6).map(|i| row.get(i)).collect();
        let times: Vec<f64> = (6..10).map(|i| row.get(i)).collect();
        (ints, times)
    };
    let (lookup, lookup_times) = stmt(&mut other, "SELECT v FROM f WHERE id = %");
    println!("lookups: {lookup:?} {lookup_times:?}");
    // calls, rows, one shard, several, all, errors
    assert_eq!(lookup, vec![7, 7, 7, 0, 0, 0]);
    let (total, max, mean, remote) = (
        lookup_times[0],
        lookup_times[1],
        lookup_times[2],
        lookup_times[3],
    );
    assert!(total > 0.0 && max <= total && max >= mean && remote <= total);
    assert!((mean - total / 7.0).abs() < 1e-6);
    let (count, _) = stmt(&mut other, "SELECT count(*) FROM f");
    println!("counts: {count:?}");
    assert_eq!(
        (count[0], count[1], count[2], count[3], count[4]),
        (3, 3 * SHARDS, 0, 0, 3),
        "each count reads one partial row per shard"
    );
    let (insert, _) = stmt(&mut other, "INSERT INTO f VALUES %");
    assert_eq!((insert[0], insert[1], insert[2]), (2, 2, 2));

    // Per shard: reads and writes exactly as routed.
    let mut expected: BTreeMap<i32, (i64, i64)> = (0..SHARDS as i32).map(|s| (s, (3, 0))).collect();
    for id in lookups {
        expected.get_mut(&shard_of(&mut db, id)).unwrap().0 += 1;
    }
    for id in [101, 102] {
        expected.get_mut(&shard_of(&mut db, id)).unwrap().1 += 1;
    }
    let got: BTreeMap<i32, (i64, i64)> = other
        .query(
            "SELECT shard_id, reads, writes FROM conductor.stat_shards
              WHERE table_name = 'f'::regclass",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    assert_eq!(got, expected);
    let shard_nodes = other
        .query_one(
            "SELECT count(*) FROM conductor.stat_shards s JOIN conductor.shards c
                 ON c.table_name = s.table_name AND c.shard_id = s.shard_id
              WHERE s.table_name = 'f'::regclass AND s.node_id = c.node_id",
            &[],
        )
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(shard_nodes, SHARDS);

    // The hottest shard-key value.
    let top = other
        .query_one(
            "SELECT key_value, statements FROM conductor.stat_shard_keys
              WHERE table_name = 'f'::regclass ORDER BY statements DESC, key_value LIMIT 1",
            &[],
        )
        .unwrap();
    assert_eq!(
        (top.get::<_, String>(0), top.get::<_, i64>(1)),
        ("5".to_string(), 3)
    );

    // Per node: every request counted, percentiles ordered and no slower
    // than the slowest statement the client saw (buckets are sqrt(2) wide).
    let nodes = other
        .query(
            "SELECT node_id, requests, errors, p50_ms, p95_ms, p99_ms, in_flight,
                    bytes_out, bytes_in
               FROM conductor.stat_nodes ORDER BY node_id",
            &[],
        )
        .unwrap();
    assert_eq!(nodes.len(), 3);
    let mut requests = 0;
    for n in &nodes {
        let (id, reqs, errors): (String, i64, i64) = (n.get(0), n.get(1), n.get(2));
        let (p50, p95, p99): (f64, f64, f64) = (n.get(3), n.get(4), n.get(5));
        let in_flight: i64 = n.get(6);
        let (bytes_out, bytes_in): (i64, i64) = (n.get(7), n.get(8));
        assert!(
            bytes_out > 0 && bytes_in > 0,
            "{id}: {bytes_out} bytes out, {bytes_in} in"
        );
        println!("{id}: {reqs} requests, p50 {p50:.3} p95 {p95:.3} p99 {p99:.3} ms, slowest statement {slowest:?}");
        assert_eq!((errors, in_flight), (0, 0));
        assert!(0.0 < p50 && p50 <= p95 && p95 <= p99, "{id}");
        assert!(
            p99 <= slowest.as_secs_f64() * 1000.0 * 1.5,
            "{id}: p99 {p99} ms against a slowest statement of {slowest:?}"
        );
        requests += reqs;
    }
    // Lookups: one request each; counts: one per node each; inserts: one each.
    assert_eq!(requests, 7 + 3 * 3 + 2);

    // Reset: the statements are gone for every session.
    exec(&mut other, "SELECT conductor.stat_statements_reset()");
    assert_eq!(
        query_i64(&mut db, "SELECT count(*) FROM conductor.stat_statements"),
        0
    );
}

/// calls, rows, one shard, all shards of the statements whose text starts
/// with `start`.
fn figures(db: &mut Client, start: &str) -> (i64, i64, i64, i64) {
    let r = db
        .query_one(
            "SELECT coalesce(sum(calls), 0)::bigint, coalesce(sum(rows), 0)::bigint,
                    coalesce(sum(one_shard), 0)::bigint, coalesce(sum(all_shards), 0)::bigint
               FROM conductor.stat_statements
              WHERE table_name = 'f'::regclass AND query LIKE $1 || '%'",
            &[&start],
        )
        .unwrap_or_else(|e| panic!("stat_statements {start}: {}", pg_err(&e)));
    (r.get(0), r.get(1), r.get(2), r.get(3))
}

#[test]
fn statements_after_a_rollback_to_savepoint_or_between_fetches_count_as_their_own() {
    let (_cluster, mut db) = setup();
    exec(&mut db, "SELECT conductor.stat_reset()");
    // A statement that fails after reading one shard, rolled back to a
    // savepoint: no executor end follows it.
    exec(&mut db, "BEGIN");
    exec(&mut db, "SAVEPOINT s");
    let e = expect_db_error(
        db.batch_execute("SELECT v::int FROM f WHERE id = 3"),
        "cast of a text value",
    );
    assert_eq!(e.code().code(), "22P02", "{}", describe(&e));
    for sql in [
        "ROLLBACK TO s",
        "SELECT count(*) FROM f",
        "SELECT count(*) FROM f",
        "COMMIT",
    ] {
        exec(&mut db, sql);
    }
    assert_eq!(
        figures(&mut db, "SELECT v::int"),
        (0, 0, 1, 0),
        "the failed statement: no call, the one shard it reached"
    );
    assert_eq!(
        figures(&mut db, "SELECT count(*)"),
        (2, 2 * SHARDS, 0, 2),
        "both counts, each over every shard"
    );

    // Statements run while a cursor is open are not the cursor's.
    exec(&mut db, "SELECT conductor.stat_reset()");
    for sql in [
        "BEGIN",
        "DECLARE c CURSOR FOR SELECT * FROM f WHERE id = 5",
        "FETCH 1 FROM c",
        "SELECT v FROM f WHERE id = 6",
        "SELECT v FROM f WHERE id = 7",
        "FETCH 1 FROM c",
        "CLOSE c",
        "COMMIT",
    ] {
        exec(&mut db, sql);
    }
    assert_eq!(
        figures(&mut db, "SELECT v FROM f"),
        (2, 2, 2, 0),
        "the lookups between the fetches"
    );
    // The cursor's statement is named by the fetch that first reached a node.
    let cursor = figures(&mut db, "FETCH");
    assert_eq!(
        (cursor.0, cursor.2),
        (1, 1),
        "the cursor: one call, one shard"
    );
}

#[test]
fn a_failed_statements_retries_are_its_own() {
    let (mut cluster, mut db) = setup();
    let on_node_0 = query_i64(
        &mut db,
        "SELECT id::bigint FROM generate_series(1, 40) id
          WHERE (SELECT node_id FROM conductor.shards
                  WHERE table_name = 'f'::regclass
                    AND shard_id = conductor.shard_for('f', id::bigint)) = 'node-0'
          LIMIT 1",
    );
    exec(
        &mut db,
        "SET conductor.read_retries = 2; SET conductor.retry_backoff = '1ms';
         SELECT conductor.stat_reset()",
    );
    cluster.stop_node(1);
    // Refused connections are retried, then the statement fails.
    let e = expect_db_error(
        db.batch_execute("SELECT count(*) FROM f"),
        "a count with node-1 down",
    );
    assert_eq!(e.code().code(), "HV00N", "{}", describe(&e));
    // A statement that needs no retry.
    exec(&mut db, &format!("SELECT v FROM f WHERE id = {on_node_0}"));
    let retries_errors = |db: &mut Client, start: &str| {
        let r = db
            .query_one(
                "SELECT retries, errors FROM conductor.stat_statements
                  WHERE table_name = 'f'::regclass AND query LIKE $1 || '%'",
                &[&start],
            )
            .unwrap_or_else(|e| panic!("stat_statements {start}: {}", pg_err(&e)));
        (r.get::<_, i64>(0), r.get::<_, i64>(1))
    };
    assert_eq!(retries_errors(&mut db, "SELECT count(*)"), (2, 1));
    assert_eq!(retries_errors(&mut db, "SELECT v FROM f"), (0, 0));
    // The failed count's requests to the nodes that answered count too.
    let requests: Vec<(String, i64, i64)> = db
        .query(
            "SELECT node_id, requests, errors FROM conductor.stat_nodes ORDER BY node_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        requests,
        vec![
            ("node-0".to_string(), 2, 0),
            ("node-1".to_string(), 1, 1),
            ("node-2".to_string(), 1, 0)
        ]
    );
}

#[test]
fn scans_left_before_their_last_row_are_counted() {
    let (_cluster, mut db) = setup();
    exec(
        &mut db,
        "INSERT INTO f SELECT i, 'w' || i FROM generate_series(100, 3000) i",
    );
    exec(&mut db, "SELECT conductor.stat_reset()");
    // A filter Postgres keeps (no LIMIT pushed): its LIMIT, an EXISTS and a
    // cursor closed early stop reading before the shards' last rows.
    for sql in [
        "SELECT * FROM f WHERE v ~ '^w' LIMIT 1",
        "SELECT EXISTS (SELECT 1 FROM f WHERE v ~ '^w')",
        "BEGIN; DECLARE c CURSOR FOR SELECT * FROM f; FETCH 2 FROM c; CLOSE c; COMMIT",
    ] {
        exec(&mut db, sql);
    }
    // Every scan read every node in one request.
    let requests: Vec<(String, i64)> = db
        .query(
            "SELECT node_id, requests FROM conductor.stat_nodes ORDER BY node_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (node, n) in &requests {
        assert_eq!(*n, 3, "{node}: {requests:?}");
    }
    let (statement_rows, shard_rows) = (
        query_i64(
            &mut db,
            "SELECT sum(rows)::bigint FROM conductor.stat_statements WHERE table_name = 'f'::regclass",
        ),
        query_i64(
            &mut db,
            "SELECT sum(rows)::bigint FROM conductor.stat_shards WHERE table_name = 'f'::regclass",
        ),
    );
    assert!(statement_rows >= 3, "rows received: {statement_rows}");
    assert_eq!(statement_rows, shard_rows);
    // Each statement is its own entry, counted once.
    assert_eq!(
        query_i64(
            &mut db,
            "SELECT sum(calls)::bigint FROM conductor.stat_statements WHERE table_name = 'f'::regclass"
        ),
        3
    );
}

#[test]
fn a_node_one_session_found_down_fails_fast_in_another() {
    let (cluster, mut db) = setup();
    let pid = cluster.node_pid(1).expect("node-1 runs");
    // A stopped node never answers: a session that tried it would wait for
    // its request deadline.
    signal(pid, conductor_e2e::libc::SIGSTOP);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        exec(
            &mut db,
            "SET conductor.read_retries = 0; SET conductor.request_timeout = '1s';
             SET conductor.node_cooldown = '5s'",
        );
        for _ in 0..3 {
            let e = expect_db_error(db.query("SELECT count(*) FROM f", &[]), "node down");
            assert!(
                e.detail().unwrap_or("").contains("node-1"),
                "{}",
                describe(&e)
            );
        }
        // A new session with the default deadline (30 s) and retries: it
        // fails at once, naming the node, without sending to it.
        let mut other = cluster.client();
        let e = expect_db_error(
            other.query("SELECT count(*) FROM f", &[]),
            "fail fast in another session",
        );
        println!("second session: {}", describe(&e));
        assert!(
            e.detail().unwrap_or("").contains("marked unhealthy")
                && e.detail().unwrap_or("").contains("node-1"),
            "{}",
            describe(&e)
        );
        let health: String = other
            .query_one(
                "SELECT health FROM conductor.nodes WHERE node_id = 'node-1'",
                &[],
            )
            .unwrap()
            .get(0);
        assert_eq!(health, "unhealthy");
        let (errors, timeouts): (i64, i64) = {
            let r = other
                .query_one(
                    "SELECT errors, timeouts FROM conductor.stat_nodes WHERE node_id = 'node-1'",
                    &[],
                )
                .unwrap();
            (r.get(0), r.get(1))
        };
        assert_eq!((errors, timeouts), (3, 3));
        let failed = query_i64(
            &mut other,
            "SELECT errors FROM conductor.stat_statements
              WHERE table_name = 'f'::regclass AND query LIKE 'SELECT count(*)%'",
        );
        assert_eq!(failed, 4, "three timeouts and one refusal");

        // The cool-down over, the first session to need the node probes
        // it (its request waits on the stopped node); the others keep
        // failing fast meanwhile instead of each sending a probe.
        std::thread::sleep(COOLDOWN + Duration::from_secs(1));
        let config = cluster.pg_config();
        let prober = std::thread::spawn(move || {
            let mut c = config.connect(conductor_e2e::postgres::NoTls).unwrap();
            c.batch_execute("SET conductor.request_timeout = '60s'")
                .unwrap();
            c.query_one("SELECT count(*) FROM f", &[])
                .map(|r| r.get::<_, i64>(0))
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while query_i64(
            &mut other,
            "SELECT in_flight FROM conductor.stat_nodes WHERE node_id = 'node-1'",
        ) == 0
        {
            assert!(Instant::now() < deadline, "the probe never started");
            std::thread::sleep(Duration::from_millis(50));
        }
        let e = expect_db_error(
            other.query("SELECT count(*) FROM f", &[]),
            "while another session probes",
        );
        println!("while probing: {}", describe(&e));
        assert!(
            e.detail()
                .unwrap_or("")
                .contains("another session is checking whether it is back"),
            "{}",
            describe(&e)
        );
        signal(pid, conductor_e2e::libc::SIGCONT);
        // The probe is answered once the node runs again.
        assert_eq!(prober.join().unwrap().map_err(|e| pg_err(&e)), Ok(40));
    }));
    signal(pid, conductor_e2e::libc::SIGCONT);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
    // One success made it healthy for every session.
    let health: String = db
        .query_one(
            "SELECT health FROM conductor.nodes WHERE node_id = 'node-1'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(health, "healthy");
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM f"), 40);
    let mut third = cluster.client();
    assert_eq!(query_i64(&mut third, "SELECT count(*) FROM f"), 40);
}

#[test]
fn without_preloading_the_views_say_how_to_enable_them() {
    let (mut cluster, _db) = setup();
    cluster.restart_postgres_with(&["shared_preload_libraries="]);
    let mut db = cluster.client();
    let e = expect_db_error(
        db.query("SELECT * FROM conductor.stat_statements", &[]),
        "stat_statements without shared memory",
    );
    assert!(
        e.hint().unwrap_or("").contains("shared_preload_libraries"),
        "{}",
        describe(&e)
    );
    for view in ["stat_nodes", "stat_shards", "stat_shard_keys"] {
        expect_db_error(
            db.query(&format!("SELECT * FROM conductor.{view}"), &[]),
            view,
        );
    }
    // Everything else works.
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM f"), 40);
    exec(&mut db, "INSERT INTO f VALUES (1000, 'x')");
    assert_eq!(
        query_i64(&mut db, "SELECT count(*) FROM f WHERE id = 1000"),
        1
    );
    assert_eq!(
        query_i64(
            &mut db,
            "SELECT count(*) FROM conductor.nodes WHERE health = 'healthy'"
        ),
        3
    );
}

#[test]
fn shard_sizes_asks_the_nodes() {
    let (_cluster, mut db) = setup();
    // The same ids in a local table: where each should live.
    exec(
        &mut db,
        "CREATE TABLE local_ids AS SELECT i::bigint AS id FROM generate_series(1, 40) i;
         INSERT INTO f SELECT i, repeat('y', 2000) FROM generate_series(1001, 1100) i;
         INSERT INTO local_ids SELECT i FROM generate_series(1001, 1100) i;",
    );
    let expected: BTreeMap<i32, i64> = db
        .query(
            "SELECT s.shard, count(l.id)
               FROM generate_series(0, 7) s(shard)
               LEFT JOIN local_ids l ON conductor.shard_for('f', l.id) = s.shard
              GROUP BY s.shard",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let sizes = db
        .query(
            "SELECT z.shard_id, z.rows, z.bytes, z.node_id = s.node_id
               FROM conductor.shard_sizes('f') z
               JOIN conductor.shards s ON s.table_name = 'f'::regclass AND s.shard_id = z.shard_id",
            &[],
        )
        .unwrap_or_else(|e| panic!("shard_sizes: {}", pg_err(&e)));
    let got: BTreeMap<i32, i64> = sizes.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(got, expected);
    for r in &sizes {
        let (shard, rows, bytes, same_node): (i32, i64, Option<i64>, bool) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        assert!(same_node, "shard {shard}");
        let bytes = bytes.unwrap_or_else(|| panic!("conductor-node reports bytes (shard {shard})"));
        // Every row carries 2,000 bytes or a few: the pages hold at least that.
        assert!(bytes > 0, "shard {shard}");
        if rows > 0 {
            let big: i64 = query_i64(
                &mut db,
                &format!(
                    "SELECT count(*) FROM local_ids WHERE id > 1000
                        AND conductor.shard_for('f', id) = {shard}"
                ),
            );
            assert!(
                bytes >= big * 2000,
                "shard {shard}: {bytes} bytes for {big} wide rows"
            );
        }
    }
}

#[test]
fn concurrent_sessions_are_all_counted() {
    let (cluster, mut db) = setup();
    exec(&mut db, "SELECT conductor.stat_reset()");
    const SESSIONS: usize = 4;
    const LOOKUPS: i64 = 60;
    let threads: Vec<_> = (0..SESSIONS)
        .map(|s| {
            let config = cluster.pg_config();
            std::thread::spawn(move || {
                let mut c = config.connect(conductor_e2e::postgres::NoTls).unwrap();
                for i in 0..LOOKUPS {
                    let id = (i * 7 + s as i64) % 40 + 1;
                    let v: String = c
                        .query_one(&format!("SELECT v FROM f WHERE id = {id}"), &[])
                        .unwrap_or_else(|e| panic!("session {s}: {}", pg_err(&e)))
                        .get(0);
                    assert_eq!(v, format!("v{id}"));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let row = db
        .query_one(
            "SELECT sum(calls)::bigint, sum(one_shard)::bigint, sum(errors)::bigint
               FROM conductor.stat_statements
              WHERE table_name = 'f'::regclass AND query LIKE 'SELECT v FROM f WHERE id = %'",
            &[],
        )
        .unwrap();
    let total = SESSIONS as i64 * LOOKUPS;
    assert_eq!(
        (
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, i64>(2)
        ),
        (total, total, 0)
    );
    assert_eq!(
        query_i64(
            &mut db,
            "SELECT sum(reads)::bigint FROM conductor.stat_shards WHERE table_name = 'f'::regclass"
        ),
        total
    );
    // The sketch may skip samples under contention, never count too few
    // of what it kept: every value it holds was looked up.
    let held = query_i64(
        &mut db,
        "SELECT count(*) FROM conductor.stat_shard_keys
          WHERE table_name = 'f'::regclass AND key_value::bigint NOT BETWEEN 1 AND 40",
    );
    assert_eq!(held, 0);
}
