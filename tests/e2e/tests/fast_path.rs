//! A write alone in its transaction that reaches one node is one request to
//! that node (the node begins, executes and commits); anything else keeps
//! the remote transaction. Counted with the nodes' own request counters.

mod common;

use common::exec;
use conductor_e2e::postgres::Client;
use conductor_e2e::{pg_err, Cluster, ClusterOptions};

/// Data requests (pipelines and cursors) every node has served so far.
fn node_requests(cluster: &Cluster) -> u64 {
    common::node_requests(cluster).iter().sum()
}

fn requests_for(cluster: &Cluster, db: &mut Client, sql: &str) -> u64 {
    let before = node_requests(cluster);
    exec(db, sql);
    // Closing a scan's cursor is not waited for: let it land.
    std::thread::sleep(std::time::Duration::from_millis(100));
    node_requests(cluster) - before
}

fn value(db: &mut Client, id: i64) -> Option<String> {
    db.query_opt("SELECT v FROM t WHERE id = $1", &[&id])
        .unwrap()
        .map(|r| r.get(0))
}

#[test]
fn a_lone_one_node_write_is_one_request() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        node_delay_ms: None,
        token: None,
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE t (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('t', 'id', shard_count => 8);
         INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 100) i;",
    );
    // Warm the session (topology, connections).
    exec(&mut db, "SELECT * FROM t WHERE id = 1");

    let cases: &[(&str, u64)] = &[
        ("UPDATE t SET v = 'a' WHERE id = 5", 1),
        // A new value computed from the row, on the node.
        ("UPDATE t SET v = v || '!' WHERE id = 9", 1),
        ("UPDATE t SET v = v || '?' WHERE id = 10 RETURNING id, v", 1),
        ("DELETE FROM t WHERE id = 11 RETURNING *", 1),
        ("INSERT INTO t VALUES (1000, 'new')", 1),
        ("DELETE FROM t WHERE id = 7", 1),
        ("INSERT INTO t VALUES (1001, 'r') RETURNING id, v", 1),
    ];
    for (sql, want) in cases {
        let n = requests_for(&cluster, &mut db, sql);
        println!("{sql}: {n} node request(s)");
        assert_eq!(n, *want, "{sql}");
    }
    assert_eq!(value(&mut db, 5).as_deref(), Some("a"));
    assert_eq!(value(&mut db, 9).as_deref(), Some("v9!"));
    assert_eq!(value(&mut db, 10).as_deref(), Some("v10?"));
    assert_eq!(value(&mut db, 11), None);
    assert_eq!(value(&mut db, 1000).as_deref(), Some("new"));
    assert_eq!(value(&mut db, 7), None);

    // Inside BEGIN … COMMIT the remote transaction stays: BEGIN + write,
    // then COMMIT.
    let n = requests_for(
        &cluster,
        &mut db,
        "BEGIN; UPDATE t SET v = 'b' WHERE id = 6; COMMIT",
    );
    assert!(n >= 2, "explicit transaction: {n} requests");
    assert_eq!(value(&mut db, 6).as_deref(), Some("b"));

    // Several statements in one query string share one transaction: the
    // second one's failure undoes the first.
    let err = db
        .batch_execute("UPDATE t SET v = 'c' WHERE id = 8; INSERT INTO t VALUES (1000, 'dup')")
        .expect_err("duplicate key");
    assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("23505"));
    assert_eq!(value(&mut db, 8).as_deref(), Some("v8"), "rolled back");

    // Errors keep their meaning on the fast path.
    let err = db
        .batch_execute("INSERT INTO t VALUES (1000, 'dup')")
        .expect_err("duplicate key");
    assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("23505"));
    assert!(pg_err(&err).contains("node-"), "{}", pg_err(&err));

    // A write on two nodes keeps the transactional path and stays atomic.
    let keys: Vec<i64> = db
        .query(
            "SELECT a.id::bigint FROM (SELECT id, conductor.shard_for('t', id) s FROM generate_series(1, 100) id) a
              JOIN conductor.shards sh ON sh.table_name = 't'::regclass AND sh.shard_id = a.s
              ORDER BY sh.node_id, a.id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (first, last) = (keys[0], keys[keys.len() - 1]);
    let n = requests_for(
        &cluster,
        &mut db,
        &format!("UPDATE t SET v = 'both' WHERE id IN ({first}, {last})"),
    );
    assert!(n >= 4, "two nodes, transactional: {n} requests");
    assert_eq!(value(&mut db, first).as_deref(), Some("both"));
    assert_eq!(value(&mut db, last).as_deref(), Some("both"));
}

/// SQLSTATE of a statement that failed, or "ok".
fn outcome(db: &mut Client, sql: &str) -> String {
    match db.batch_execute(sql) {
        Ok(()) => "ok".into(),
        Err(e) => e
            .as_db_error()
            .map(|d| d.code().code().to_string())
            .unwrap_or_else(|| format!("client error: {e}")),
    }
}

fn contents(db: &mut Client, table: &str) -> Vec<(i64, Option<String>)> {
    db.query(&format!("SELECT id, v FROM {table} ORDER BY id"), &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// A one-node write whose Postgres transaction goes on after it (a function
/// or DO block that fails later, a RETURNING expression or a view's CHECK
/// OPTION that fails over the written row, the next statement of a
/// pipeline) must not be committed on its own: afterwards the distributed
/// table holds what a local table holds.
#[test]
fn a_write_the_transaction_outlives_is_undone_with_it() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        node_delay_ms: None,
        token: None,
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE t (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('t', 'id', shard_count => 8);
         CREATE TABLE l (id bigint PRIMARY KEY, v text);
         INSERT INTO t SELECT i, 'v' || i FROM generate_series(1, 20) i;
         INSERT INTO l SELECT i, 'v' || i FROM generate_series(1, 20) i;
         CREATE VIEW t_short AS SELECT * FROM t WHERE length(v) < 5 WITH CHECK OPTION;
         CREATE VIEW l_short AS SELECT * FROM l WHERE length(v) < 5 WITH CHECK OPTION;
         CREATE FUNCTION write_then_fail(sql text) RETURNS void LANGUAGE plpgsql AS
           $$ BEGIN EXECUTE sql; RAISE EXCEPTION 'after the write' USING ERRCODE = 'P0001'; END $$;
         CREATE TABLE parent (id int PRIMARY KEY);
         CREATE TABLE child (parent_id int REFERENCES parent DEFERRABLE INITIALLY DEFERRED);
         CREATE FUNCTION orphan_child() RETURNS text LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO child VALUES (999); RETURN 'o'; END $$;
         CREATE FUNCTION loop_then_fail(sql text) RETURNS void LANGUAGE plpgsql AS
           $$ DECLARE r record; BEGIN
                FOR r IN EXECUTE sql LOOP END LOOP;
                RAISE EXCEPTION 'after the write' USING ERRCODE = 'P0001';
              END $$;",
    );
    for table in ["l", "t"] {
        exec(
            &mut db,
            &format!(
                "CREATE FUNCTION static_loop_{table}(k bigint) RETURNS void LANGUAGE plpgsql AS
                   $$ DECLARE r record; BEGIN
                        FOR r IN INSERT INTO {table} VALUES (k, 's') RETURNING id LOOP END LOOP;
                        RAISE EXCEPTION 'after the write' USING ERRCODE = 'P0001';
                      END $$;
                 CREATE FUNCTION touch_all_{table}() RETURNS text LANGUAGE plpgsql AS
                   $$ BEGIN UPDATE {table} SET v = v || '+'; RETURN 'w'; END $$;
                 CREATE PROCEDURE committing_loop_{table}() LANGUAGE plpgsql AS
                   $$ DECLARE r record; BEGIN
                        FOR r IN INSERT INTO {table} VALUES (120, 'kept') RETURNING id LOOP END LOOP;
                        COMMIT;
                        FOR r IN EXECUTE 'INSERT INTO {table} VALUES (121, ''lost'') RETURNING id'
                          LOOP END LOOP;
                        RAISE EXCEPTION 'after the write' USING ERRCODE = 'P0001';
                      END $$;"
            ),
        );
    }
    let statements = [
        "SELECT write_then_fail('INSERT INTO {T} VALUES (100, ''f'')')",
        "SELECT write_then_fail('UPDATE {T} SET v = ''f'' WHERE id = 3')",
        "DO $$ BEGIN DELETE FROM {T} WHERE id = 4; PERFORM 1 / 0; END $$",
        "INSERT INTO {T} VALUES (101, '') RETURNING 1 / length(v)",
        "UPDATE {T} SET v = '' WHERE id = 5 RETURNING 1 / length(v)",
        "DELETE FROM {T} WHERE id = 6 RETURNING 1 / (id - 6)",
        "INSERT INTO {T}_short VALUES (102, 'too long')",
        // A local write of the statement whose deferred check fails at
        // COMMIT.
        "INSERT INTO {T} VALUES (106, orphan_child())",
        "UPDATE {T} SET v = orphan_child() WHERE id = 14",
        "DELETE FROM {T} WHERE id = 15 AND orphan_child() = 'o'",
        // A write of the statement's own function through conductor (it
        // holds the write lock of every node it wrote until COMMIT).
        "INSERT INTO {T} VALUES (107, touch_all_{T}())",
        // What can still fail is plain columns: the fast path stays.
        "INSERT INTO {T} VALUES (103, 'r') RETURNING id, v",
    ];
    for sql in statements {
        let local = outcome(&mut db, &sql.replace("{T}", "l"));
        let dist = outcome(&mut db, &sql.replace("{T}", "t"));
        assert_eq!(dist, local, "{sql}");
        assert_eq!(
            contents(&mut db, "t"),
            contents(&mut db, "l"),
            "after {sql}"
        );
    }

    // RETURNING sends the written row to the client, converted to its
    // encoding: a character that encoding lacks fails the statement.
    exec(
        &mut db,
        "UPDATE l SET v = U&'\\20AC' WHERE id = 12; UPDATE t SET v = U&'\\20AC' WHERE id = 12",
    );
    for sql in [
        "INSERT INTO {T} VALUES (105, U&'\\20AC') RETURNING id, v",
        "UPDATE {T} SET v = U&'\\20AC!' WHERE id = 13 RETURNING v",
        "DELETE FROM {T} WHERE id = 12 RETURNING *",
    ] {
        let mut outcomes = Vec::new();
        for table in ["l", "t"] {
            exec(&mut db, "SET client_encoding = 'LATIN1'");
            outcomes.push(outcome(&mut db, &sql.replace("{T}", table)));
            exec(&mut db, "RESET client_encoding");
        }
        assert_eq!(
            outcomes[1], outcomes[0],
            "{sql} with client_encoding LATIN1"
        );
        assert_eq!(
            contents(&mut db, "t"),
            contents(&mut db, "l"),
            "after {sql} with client_encoding LATIN1"
        );
    }

    // A function's cursor over a write (a PL/pgSQL FOR loop over a query
    // with RETURNING, static or EXECUTEd) is a portal of its own; the
    // function goes on after it. Sent as a simple Query and through the
    // extended protocol (Bind, Execute and Sync together).
    let looped = [
        "SELECT loop_then_fail('INSERT INTO {T} VALUES (110, ''c'') RETURNING id')",
        "SELECT loop_then_fail('UPDATE {T} SET v = ''c'' WHERE id = 9 RETURNING id')",
        "SELECT loop_then_fail('DELETE FROM {T} WHERE id = 10 RETURNING id')",
        "DO $$ DECLARE r record; BEGIN \
           FOR r IN EXECUTE 'INSERT INTO {T} VALUES (111, ''d'') RETURNING id' LOOP END LOOP; \
           PERFORM 1 / 0; END $$",
        "SELECT static_loop_{T}(112)",
        // A procedure's statements after its COMMIT are a transaction of
        // their own, which the failure rolls back.
        "CALL committing_loop_{T}()",
    ];
    for sql in looped {
        for extended in [false, true] {
            let run = |db: &mut Client, sql: &str| {
                if extended {
                    match db.execute(sql, &[]) {
                        Ok(_) => "ok".to_string(),
                        Err(e) => e
                            .as_db_error()
                            .map(|d| d.code().code().to_string())
                            .unwrap_or_else(|| format!("client error: {e}")),
                    }
                } else {
                    outcome(db, sql)
                }
            };
            let local = run(&mut db, &sql.replace("{T}", "l"));
            let dist = run(&mut db, &sql.replace("{T}", "t"));
            assert_eq!(dist, local, "{sql} (extended: {extended})");
            assert_eq!(
                contents(&mut db, "t"),
                contents(&mut db, "l"),
                "after {sql} (extended: {extended})"
            );
        }
    }

    // Execute messages before one Sync are one implicit transaction: the
    // second one's failure undoes the first (pgbench sends a pipeline so).
    for table in ["l", "t"] {
        let script = cluster.dir().join(format!("pipeline_{table}.sql"));
        std::fs::write(
            &script,
            format!(
                "\\startpipeline\nINSERT INTO {table} VALUES (200, 'p');\n\
                 UPDATE {table} SET v = 'p' WHERE id = 7;\n\
                 INSERT INTO {table} VALUES (1, 'dup');\n\\endpipeline\n"
            ),
        )
        .unwrap();
        let out = std::process::Command::new(cluster.pg_bindir().join("pgbench"))
            .args(["-n", "-M", "extended", "-t", "1", "-f"])
            .arg(&script)
            .arg(cluster.pg_url())
            .output()
            .expect("run pgbench");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("duplicate key") || stderr.contains("UNIQUE"),
            "{stderr}"
        );
    }
    assert_eq!(
        contents(&mut db, "t"),
        contents(&mut db, "l"),
        "after the pipeline"
    );

    // A lone statement through the extended protocol (Bind, Execute and
    // Sync sent together) is still one request.
    exec(&mut db, "SELECT * FROM t WHERE id = 8");
    let before = node_requests(&cluster);
    db.execute("UPDATE t SET v = $1 WHERE id = $2", &[&"x", &8i64])
        .unwrap();
    assert_eq!(node_requests(&cluster) - before, 1, "extended protocol");
    assert_eq!(value(&mut db, 8).as_deref(), Some("x"));
}

/// The protocol messages a driver's pipeline sends for `sql` run alone
/// (psycopg's `conn.pipeline()` with a sync after each statement): Parse,
/// Bind, Execute, Sync of the unnamed statement and portal.
fn extended_query(sql: &str) -> Vec<u8> {
    fn message(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
        out.push(kind);
        out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        out.extend_from_slice(body);
    }
    let mut out = Vec::new();
    let mut parse = vec![0u8]; // unnamed statement
    parse.extend_from_slice(sql.as_bytes());
    parse.extend_from_slice(&[0, 0, 0]); // no parameter types
    message(&mut out, b'P', &parse);
    // Unnamed portal and statement, no parameters, text results.
    message(&mut out, b'B', &[0, 0, 0, 0, 0, 0, 0, 0]);
    message(&mut out, b'E', &[0, 0, 0, 0, 0]); // unnamed portal, all rows
    message(&mut out, b'S', &[]);
    out
}

/// A connection speaking the wire protocol by hand, so that several
/// statements can be sent in one write before any answer is read.
struct Wire(std::net::TcpStream);

impl Wire {
    fn connect(cluster: &Cluster) -> Wire {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", cluster.pg_port())).unwrap();
        let mut body = 196608i32.to_be_bytes().to_vec(); // protocol 3.0
        body.extend_from_slice(b"user\0postgres\0database\0conductor\0\0");
        let mut startup = (body.len() as i32 + 4).to_be_bytes().to_vec();
        startup.extend_from_slice(&body);
        std::io::Write::write_all(&mut s, &startup).unwrap();
        let mut wire = Wire(s);
        assert_eq!(wire.until_ready(), vec![Ok(String::new())], "startup");
        wire
    }

    fn send(&mut self, bytes: &[u8]) {
        std::io::Write::write_all(&mut self.0, bytes).unwrap();
    }

    /// Reads messages up to the next ReadyForQuery: each statement's
    /// command tag or SQLSTATE.
    fn until_ready(&mut self) -> Vec<Result<String, String>> {
        use std::io::Read;
        let mut outcomes = Vec::new();
        let mut tag = String::new();
        loop {
            let mut head = [0u8; 5];
            self.0.read_exact(&mut head).unwrap();
            let len = i32::from_be_bytes(head[1..5].try_into().unwrap()) as usize - 4;
            let mut body = vec![0u8; len];
            self.0.read_exact(&mut body).unwrap();
            match head[0] {
                b'C' => tag = String::from_utf8_lossy(&body[..len - 1]).into_owned(),
                b'E' => {
                    let code = body
                        .split(|b| *b == 0)
                        .find(|f| f.first() == Some(&b'C'))
                        .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
                        .unwrap_or_default();
                    outcomes.push(Err(code));
                    tag.clear();
                }
                b'Z' => {
                    if outcomes.is_empty() || !tag.is_empty() {
                        outcomes.push(Ok(std::mem::take(&mut tag)));
                    }
                    return outcomes;
                }
                _ => {}
            }
        }
    }
}

/// A one-node write alone in its transaction is committed by the node
/// once sent, so a cancel or statement_timeout that arrives while it waits
/// for the node (here for another transaction's write lock) must not end
/// the statement as failed: the client would take the write for rolled
/// back while the node applies it once the lock frees. The statement waits
/// for the node's answer and reports it; a pipelined next statement is not
/// cancelled in its place.
#[test]
fn a_cancel_while_a_lone_write_waits_for_the_node_reports_what_the_node_did() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        node_delay_ms: None,
        token: None,
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE t (id bigint NOT NULL, k bigint) SERVER cluster;
         SELECT conductor.create_distributed_table('t', 'id', shard_count => 4);
         INSERT INTO t SELECT i, 0 FROM generate_series(1, 10) i;",
    );
    let k = |db: &mut Client| -> i64 {
        db.query_one("SELECT k FROM t WHERE id = 1", &[])
            .unwrap()
            .get(0)
    };
    // Another transaction holds the node's write lock for a second, then
    // commits; meanwhile `write` sends the lone write and is cancelled.
    let with_lock_held = |write: &dyn Fn() -> Result<String, String>| {
        let mut holder = cluster.client();
        exec(&mut holder, "BEGIN; UPDATE t SET k = k + 100 WHERE id = 1");
        let commit = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(1000));
            holder.batch_execute("COMMIT").unwrap();
        });
        let outcome = write();
        commit.join().unwrap();
        outcome
    };
    let code = |r: Result<u64, conductor_e2e::postgres::Error>| match r {
        Ok(n) => Ok(format!("UPDATE {n}")),
        Err(e) => Err(e.code().map(|c| c.code().to_string()).unwrap_or_default()),
    };

    let cases: [(&str, Box<dyn Fn() -> Result<String, String>>); 3] = [
        (
            "statement_timeout, simple query",
            Box::new(|| {
                let mut w = cluster.client();
                exec(&mut w, "SET statement_timeout = '300ms'");
                code(w.execute("UPDATE t SET k = k + 1 WHERE id = 1", &[]))
            }),
        ),
        (
            "statement_timeout, extended protocol",
            Box::new(|| {
                let mut w = cluster.client();
                exec(&mut w, "SET statement_timeout = '300ms'");
                code(w.execute("UPDATE t SET k = k + $1 WHERE id = $2", &[&1i64, &1i64]))
            }),
        ),
        (
            "cancel request",
            Box::new(|| {
                let mut w = cluster.client();
                let token = w.cancel_token();
                let cancel = std::thread::spawn(move || {
                    std::thread::sleep(std::time::Duration::from_millis(300));
                    token.cancel_query(conductor_e2e::postgres::NoTls).unwrap();
                });
                let r = code(w.execute("UPDATE t SET k = k + 1 WHERE id = 1", &[]));
                cancel.join().unwrap();
                r
            }),
        ),
    ];
    for (what, write) in cases {
        let before = k(&mut db);
        let outcome = with_lock_held(write.as_ref());
        let after = k(&mut db);
        println!("{what}: {outcome:?}, k {before} -> {after}");
        match &outcome {
            Ok(tag) => assert_eq!(
                (tag.as_str(), after),
                ("UPDATE 1", before + 101),
                "{what}: the write succeeded"
            ),
            Err(code) => assert_eq!(
                after,
                before + 100,
                "{what}: the write failed with {code}, yet the node applied it"
            ),
        }
    }

    // A pipeline: the lone write, its Sync, then a query, sent at once.
    let before = k(&mut db);
    let outcome = with_lock_held(&|| {
        let mut w = Wire::connect(&cluster);
        w.send(&extended_query("SET statement_timeout = '300ms'"));
        assert_eq!(w.until_ready(), vec![Ok("SET".to_string())]);
        let mut both = extended_query("UPDATE t SET k = k + 1 WHERE id = 1");
        both.extend(extended_query("SELECT 42"));
        w.send(&both);
        let write = w.until_ready();
        let next = w.until_ready();
        assert_eq!(next, vec![Ok("SELECT 1".to_string())], "the next statement");
        write.into_iter().next().unwrap()
    });
    let after = k(&mut db);
    println!("pipeline: {outcome:?}, k {before} -> {after}");
    match &outcome {
        Ok(tag) => assert_eq!((tag.as_str(), after), ("UPDATE 1", before + 101)),
        Err(code) => assert_eq!(after, before + 100, "failed with {code}, yet applied"),
    }
}
