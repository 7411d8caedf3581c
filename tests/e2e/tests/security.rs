//! Security: https:// nodes with a private CA, node tokens kept
//! where only superusers and the mapping's user see them, and topology
//! changes reserved to superusers or roles granted them.

mod common;

use common::{describe, exec, expect_db_error, query_i64};
use conductor_e2e::{free_port, node_bin, pg_err, Cluster, ClusterOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A private CA and a certificate it signed for 127.0.0.1, made with the
/// openssl CLI: (CA certificate, node certificate, node key).
fn private_ca(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        let status = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run openssl");
        assert!(status.success(), "openssl {args:?}");
    };
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let run = |s: &str| openssl(&s.split(' ').collect::<Vec<_>>());
    run(&format!(
        "req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=conductor-test-ca"
    ));
    run(&format!(
        "req {ec} -keyout node.key -out node.csr -subj /CN=localhost"
    ));
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run("x509 -req -in node.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out node.pem -days 2 -extfile ext.cnf");
    (
        dir.join("ca.pem"),
        dir.join("node.pem"),
        dir.join("node.key"),
    )
}

/// A conductor-node serving HTTPS; killed when dropped.
struct TlsNode {
    child: Child,
    url: String,
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_node(dir: &Path, cert: &Path, key: &Path) -> TlsNode {
    let port = free_port();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let child = Command::new(node_bin())
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(&data)
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start conductor-node with TLS");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "TLS node did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    TlsNode {
        child,
        url: format!("https://127.0.0.1:{port}"),
    }
}

#[test]
fn https_nodes_with_a_private_ca() {
    let cluster = Cluster::start(ClusterOptions::default());
    let dir = cluster.dir().join("tls");
    // (The harness's superuser is named `conductor`, so its "$user" schema
    // is the extension's; tables here are created in public explicitly.)
    std::fs::create_dir_all(&dir).unwrap();
    // Postgres (another OS user) reads the CA file.
    let _ = Command::new("chmod")
        .args(["-R", "a+rX"])
        .arg(&dir)
        .status();
    let (ca, cert, key) = private_ca(&dir);
    let _ = Command::new("chmod").args(["a+r"]).arg(&ca).status();
    let node = tls_node(&dir, &cert, &key);

    // Without the CA the node's certificate is refused, clearly.
    let mut db = cluster.client();
    exec(
        &mut db,
        "CREATE EXTENSION conductor; CREATE SERVER tls FOREIGN DATA WRAPPER conductor;",
    );
    let e = expect_db_error(
        db.execute("SELECT conductor.add_node('tls', 'n1', $1)", &[&node.url]),
        "untrusted certificate",
    );
    println!("without the CA: {}", describe(&e));
    assert!(
        e.detail().unwrap_or("").contains("certificate"),
        "{}",
        describe(&e)
    );

    // A session that trusts the CA works over https end to end.
    let mut db = cluster.client();
    exec(
        &mut db,
        &format!("SET conductor.tls_ca_file = '{}'", ca.display()),
    );
    db.execute("SELECT conductor.add_node('tls', 'n1', $1)", &[&node.url])
        .unwrap_or_else(|e| panic!("add_node over https: {}", pg_err(&e)));
    exec(
        &mut db,
        "CREATE FOREIGN TABLE public.secure (id bigint NOT NULL, v text) SERVER tls;
         SELECT conductor.create_distributed_table('public.secure', 'id', shard_count => 4);
         INSERT INTO public.secure SELECT i, 'v' || i FROM generate_series(1, 100) i;",
    );
    assert_eq!(
        query_i64(&mut db, "SELECT count(*) FROM public.secure"),
        100
    );
    assert_eq!(
        query_i64(&mut db, "SELECT id FROM public.secure WHERE id = 42"),
        42
    );
    // Only superusers may point sessions at other CAs.
    exec(&mut db, "CREATE ROLE plain LOGIN");
    let mut config = cluster.pg_config();
    config.user("plain");
    let mut plain = config.connect(conductor_e2e::postgres::NoTls).unwrap();
    // Once the library is loaded in the session (before, SET would only
    // store a placeholder that loading then discards).
    exec(&mut plain, "SELECT * FROM conductor.cache_stats()");
    let e = expect_db_error(
        plain.batch_execute("SET conductor.tls_ca_file = '/tmp/x'"),
        "non-superuser sets the CA",
    );
    assert_eq!(e.code().code(), "42501", "{}", describe(&e));
}

#[test]
fn tokens_and_topology_are_guarded() {
    let cluster = Cluster::start(ClusterOptions {
        nodes: 2,
        node_delay_ms: None,
        token: Some("s3cr3t-token".into()),
    });
    let mut admin = cluster.client();
    cluster.setup_conductor(&mut admin, "cluster");
    exec(
        &mut admin,
        "CREATE FOREIGN TABLE public.t (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('public.t', 'id', shard_count => 4);
         INSERT INTO public.t VALUES (1, 'a');
         CREATE ROLE alice LOGIN; CREATE ROLE bob LOGIN;
         GRANT USAGE ON FOREIGN SERVER cluster TO alice, bob;
         GRANT SELECT, INSERT ON public.t TO alice, bob;
         CREATE USER MAPPING FOR alice SERVER cluster OPTIONS (token 's3cr3t-token');",
    );
    let connect = |user: &str| {
        let mut config = cluster.pg_config();
        config.user(user);
        config.connect(conductor_e2e::postgres::NoTls).unwrap()
    };
    let mut alice = connect("alice");
    let mut bob = connect("bob");

    // The token is visible to superusers and to the mapping's own user only.
    let options = |c: &mut conductor_e2e::postgres::Client, user: &str| -> Option<Vec<String>> {
        c.query_one(
            "SELECT umoptions FROM pg_user_mappings WHERE srvname = 'cluster' AND usename = $1",
            &[&user],
        )
        .unwrap()
        .get(0)
    };
    assert_eq!(
        options(&mut alice, "alice"),
        Some(vec!["token=s3cr3t-token".to_string()])
    );
    assert_eq!(
        options(&mut bob, "alice"),
        None,
        "bob must not see alice's token"
    );
    let e = expect_db_error(
        bob.query("SELECT umoptions FROM pg_catalog.pg_user_mapping", &[]),
        "the raw catalog",
    );
    assert_eq!(e.code().code(), "42501", "{}", describe(&e));
    // No token on the wire in the catalog views either.
    let leaked: i64 = bob
        .query_one(
            "SELECT count(*) FROM (SELECT row_to_json(x)::text AS j FROM conductor.nodes x
                                   UNION ALL SELECT row_to_json(y)::text FROM conductor.shards y) s
              WHERE j LIKE '%s3cr3t%'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(leaked, 0);

    // alice's mapping carries the token: her reads work. bob has none: the
    // node refuses him, naming itself.
    assert_eq!(query_i64(&mut alice, "SELECT count(*) FROM public.t"), 1);
    let e = expect_db_error(bob.query("SELECT count(*) FROM public.t", &[]), "no token");
    assert!(e.detail().unwrap_or("").contains("401"), "{}", describe(&e));

    // Through a view, the view owner's mapping counts (the role Postgres
    // checks the table's permissions as), as with postgres_fdw: bob reads
    // and writes through the superuser's view with its token, in scans,
    // pushed-down aggregates and joins, direct and row-by-row writes, and
    // both kinds of transaction.
    exec(
        &mut admin,
        "CREATE VIEW public.t_admin AS SELECT * FROM public.t;
         GRANT SELECT, INSERT, UPDATE, DELETE ON public.t_admin TO bob;
         CREATE VIEW public.t_bob AS SELECT * FROM public.t;
         ALTER VIEW public.t_bob OWNER TO bob;
         GRANT SELECT ON public.t_bob TO alice;",
    );
    exec(
        &mut bob,
        "INSERT INTO public.t_admin VALUES (2, 'b'), (3, 'c')",
    );
    exec(
        &mut bob,
        "UPDATE public.t_admin SET v = v || '!' WHERE id = 2",
    );
    exec(
        &mut bob,
        "BEGIN; UPDATE public.t_admin SET v = upper(v) WHERE id IN (2, 3) AND v <> 'zz';
         DELETE FROM public.t_admin WHERE id = 3; COMMIT",
    );
    assert_eq!(
        query_i64(&mut bob, "SELECT count(*) FROM public.t_admin"),
        2
    );
    assert_eq!(
        query_i64(
            &mut bob,
            "SELECT count(*) FROM public.t_admin a JOIN public.t_admin b USING (id)
              WHERE a.v = 'B!'"
        ),
        1
    );
    let rows = bob
        .query("SELECT id, v FROM public.t_admin ORDER BY id", &[])
        .unwrap_or_else(|e| panic!("bob through the view: {}", pg_err(&e)));
    let rows: Vec<(i64, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(rows, vec![(1, "a".to_string()), (2, "B!".to_string())]);
    // A view bob owns reads with bob's mapping, which he does not have,
    // whoever queries it.
    let e = expect_db_error(
        alice.query("SELECT count(*) FROM public.t_bob", &[]),
        "the view owner has no token",
    );
    assert!(e.detail().unwrap_or("").contains("401"), "{}", describe(&e));

    // Topology is for superusers (or roles granted it).
    for sql in [
        "SELECT conductor.add_node('cluster', 'evil', 'http://127.0.0.1:1')",
        "SELECT conductor.remove_node('cluster', 'node-0')",
        "SELECT conductor.update_node('cluster', 'node-0', 'http://127.0.0.1:1')",
        "SELECT conductor.create_distributed_table('public.t', 'id')",
        "DELETE FROM conductor.shard",
        "UPDATE conductor.node SET url = 'http://127.0.0.1:1'",
    ] {
        let e = expect_db_error(alice.batch_execute(sql), sql);
        assert_eq!(e.code().code(), "42501", "{sql}: {}", describe(&e));
    }
    exec(
        &mut admin,
        "GRANT EXECUTE ON FUNCTION conductor.update_node(text, text, text) TO alice;
         GRANT UPDATE ON conductor.node TO alice;",
    );
    let url = cluster.node_url(0);
    alice
        .execute(
            "SELECT conductor.update_node('cluster', 'node-0', $1)",
            &[&url],
        )
        .unwrap_or_else(|e| panic!("granted update_node: {}", pg_err(&e)));
}

/// conductor's drop handling runs for every DROP in the database: a role
/// that is not a superuser still drops its own foreign tables and servers
/// of another wrapper (and its undistributed tables on a conductor
/// server), while a distributed table stays out of its reach.
#[test]
fn other_roles_drop_their_own_foreign_objects() {
    let (cluster, mut admin) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        node_delay_ms: None,
        token: None,
    });
    exec(
        &mut admin,
        "CREATE FOREIGN TABLE public.t (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('public.t', 'id', shard_count => 4);
         INSERT INTO public.t VALUES (1, 'a'), (2, 'b');
         CREATE FOREIGN DATA WRAPPER other_fdw;
         CREATE ROLE carol LOGIN;
         GRANT USAGE ON FOREIGN DATA WRAPPER other_fdw TO carol;
         GRANT USAGE ON FOREIGN SERVER cluster TO carol;
         GRANT CREATE ON SCHEMA public TO carol;
         GRANT CREATE ON DATABASE conductor TO carol;
         GRANT SELECT ON public.t TO carol;",
    );
    let mut config = cluster.pg_config();
    config.user("carol");
    let mut carol = config.connect(conductor_e2e::postgres::NoTls).unwrap();
    for sql in [
        "CREATE SERVER elsewhere FOREIGN DATA WRAPPER other_fdw;
         CREATE FOREIGN TABLE public.remote_a (x int) SERVER elsewhere;
         DROP FOREIGN TABLE public.remote_a;",
        "CREATE SCHEMA carols;
         CREATE FOREIGN TABLE carols.remote_b (x int) SERVER elsewhere;
         DROP SCHEMA carols CASCADE;",
        "CREATE FOREIGN TABLE public.remote_c (x int) SERVER elsewhere;
         DROP SERVER elsewhere CASCADE;",
        "CREATE FOREIGN TABLE public.undistributed (id bigint) SERVER cluster;
         DROP FOREIGN TABLE public.undistributed;",
    ] {
        carol
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {}", pg_err(&e)));
    }
    // The distributed table is not carol's to drop, and its rows stay.
    let e = expect_db_error(carol.batch_execute("DROP FOREIGN TABLE public.t"), "drop t");
    assert_eq!(e.code().code(), "42501", "{}", describe(&e));
    assert_eq!(query_i64(&mut carol, "SELECT count(*) FROM public.t"), 2);
    assert_eq!(
        query_i64(&mut admin, "SELECT count(*) FROM conductor.shard"),
        4
    );
}

/// conductor.stat_statements and stat_shard_keys show other sessions'
/// statement texts and key values: the functions behind them answer only
/// the roles that may read the views.
#[test]
fn statement_texts_and_key_values_stay_behind_their_views() {
    let (cluster, mut admin) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        node_delay_ms: None,
        token: None,
    });
    exec(
        &mut admin,
        "CREATE FOREIGN TABLE public.t (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('public.t', 'id', shard_count => 4);
         INSERT INTO public.t VALUES (1, 'a');
         CREATE ROLE erin LOGIN; CREATE ROLE frank LOGIN;
         GRANT SELECT ON conductor.stat_statements, conductor.stat_shard_keys TO frank;",
    );
    exec(
        &mut admin,
        "SELECT * FROM public.t WHERE id = 4242 AND v = 'private-text'",
    );
    let connect = |user: &str| {
        let mut config = cluster.pg_config();
        config.user(user);
        config.connect(conductor_e2e::postgres::NoTls).unwrap()
    };
    let mut erin = connect("erin");
    for sql in [
        "SELECT * FROM conductor.stat_statements",
        "SELECT * FROM conductor.stat_shard_keys",
        "SELECT * FROM conductor._stat_statements()",
        "SELECT * FROM conductor._stat_shard_keys()",
    ] {
        let e = expect_db_error(erin.query(sql, &[]), sql);
        assert_eq!(e.code().code(), "42501", "{sql}: {}", describe(&e));
    }
    // A role granted the views reads them (and so the functions behind).
    let mut frank = connect("frank");
    assert_eq!(
        query_i64(
            &mut frank,
            "SELECT count(*) FROM conductor.stat_statements WHERE query LIKE '%private-text%'"
        ),
        1
    );
    assert_eq!(
        query_i64(
            &mut frank,
            "SELECT count(*) FROM conductor.stat_shard_keys WHERE key_value = '4242'"
        ),
        1
    );
}

/// A distributed table's owner need not be a superuser to ALTER or DROP
/// it: the catalog follows the DDL Postgres allowed. A role that does not
/// own the table is still refused, also when it calls the catalog's
/// functions directly.
#[test]
fn a_tables_owner_alters_and_drops_it() {
    let (cluster, mut admin) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        node_delay_ms: None,
        token: None,
    });
    exec(
        &mut admin,
        "CREATE ROLE dave LOGIN; CREATE ROLE eve LOGIN;
         GRANT USAGE ON FOREIGN SERVER cluster TO dave, eve;
         CREATE FOREIGN TABLE public.dt (id bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('public.dt', 'id', shard_count => 4);
         ALTER FOREIGN TABLE public.dt OWNER TO dave;
         GRANT SELECT, INSERT ON public.dt TO eve;",
    );
    let connect = |user: &str| {
        let mut config = cluster.pg_config();
        config.user(user);
        config.connect(conductor_e2e::postgres::NoTls).unwrap()
    };
    let mut dave = connect("dave");
    let mut eve = connect("eve");
    let rows = |c: &mut conductor_e2e::postgres::Client, sql: &str| -> Vec<String> {
        c.query(sql, &[])
            .unwrap_or_else(|e| panic!("{sql}: {}", pg_err(&e)))
            .iter()
            .map(|r| {
                (0..r.len())
                    .map(|i| r.get::<_, Option<String>>(i).unwrap_or("NULL".into()))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect()
    };
    for sql in [
        "INSERT INTO public.dt VALUES (1, 'a'), (2, 'b')",
        "ALTER FOREIGN TABLE public.dt ADD COLUMN w int DEFAULT 7",
        "ALTER FOREIGN TABLE public.dt RENAME COLUMN v TO vv",
        "UPDATE public.dt SET vv = 'c', w = 8 WHERE id = 2",
    ] {
        dave.batch_execute(sql)
            .unwrap_or_else(|e| panic!("{sql}: {}", pg_err(&e)));
    }
    assert_eq!(
        rows(
            &mut dave,
            "SELECT id::text, vv, w::text FROM public.dt ORDER BY id"
        ),
        ["1,a,7", "2,c,8"]
    );
    for sql in [
        "ALTER FOREIGN TABLE public.dt ADD COLUMN z int",
        "SELECT conductor._sync_shard_schema('public.dt'::regclass::oid)",
        "SELECT conductor._forget_distributed_table('public.dt'::regclass::oid)",
        "DROP FOREIGN TABLE public.dt",
    ] {
        let e = expect_db_error(eve.batch_execute(sql), sql);
        assert_eq!(e.code().code(), "42501", "{sql}: {}", describe(&e));
    }
    assert_eq!(query_i64(&mut eve, "SELECT count(*) FROM public.dt"), 2);
    assert_eq!(common::shard_tables_on_nodes(&cluster, "dt").len(), 4);
    dave.batch_execute("DROP FOREIGN TABLE public.dt")
        .unwrap_or_else(|e| panic!("drop: {}", pg_err(&e)));
    assert_eq!(
        query_i64(&mut admin, "SELECT count(*) FROM conductor.shard"),
        0
    );
    assert!(common::shard_tables_on_nodes(&cluster, "dt").is_empty());
}
