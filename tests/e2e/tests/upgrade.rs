//! ALTER EXTENSION conductor UPDATE from every released version: a database
//! whose catalog is at the released version (its nodes, a distributed table
//! and rows on the nodes) keeps working after the update, and its schema
//! is then the same as a fresh install's.

mod common;

use common::exec;
use conductor_e2e::postgres::{Client, NoTls};
use conductor_e2e::{pg_err, Cluster, ClusterOptions};
use std::collections::BTreeSet;

/// Released versions that `ALTER EXTENSION conductor UPDATE` upgrades from.
const RELEASED: &[&str] = &["0.1.0"];

fn connect(cluster: &Cluster, db: &str) -> Client {
    let mut config = cluster.pg_config();
    config.dbname(db);
    config
        .connect(NoTls)
        .unwrap_or_else(|e| panic!("connect to {db}: {e}"))
}

fn strings(client: &mut Client, sql: &str) -> Vec<String> {
    client
        .query(sql, &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", pg_err(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn rows(client: &mut Client, sql: &str) -> Vec<String> {
    strings(client, &format!("SELECT q::text FROM ({sql}) q"))
}

/// Every object of the extension, one line each, as the catalog describes
/// it: what an upgraded database and a fresh install must share. Columns
/// are compared by name, not position (an upgrade appends the columns it
/// adds; every statement of conductor names its columns).
const SCHEMA: &str = r#"
WITH ext AS (SELECT oid FROM pg_extension WHERE extname = 'conductor'),
members AS (
    SELECT d.classid, d.objid FROM pg_depend d, ext
     WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'
),
rels AS (
    SELECT c.oid, c.relname, c.relkind, c.relacl FROM pg_class c
     WHERE c.relnamespace = 'conductor'::regnamespace
)
SELECT 'member ' || pg_describe_object(classid, objid, 0) FROM members
UNION ALL
SELECT 'relation ' || relname || ' kind ' || relkind::text || ' acl ' || coalesce(relacl::text, '-')
  FROM rels
UNION ALL
SELECT 'column ' || r.relname || '.' || a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END
       || coalesce(' DEFAULT ' || pg_get_expr(ad.adbin, ad.adrelid), '')
  FROM rels r JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
  LEFT JOIN pg_attrdef ad ON ad.adrelid = r.oid AND ad.adnum = a.attnum
UNION ALL
SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = 'conductor'::regnamespace
UNION ALL
SELECT 'index ' || pg_get_indexdef(i.indexrelid)
  FROM pg_index i JOIN rels r ON r.oid = i.indrelid
UNION ALL
SELECT 'view ' || relname || ' ' || pg_get_viewdef(oid) FROM rels WHERE relkind = 'v'
UNION ALL
SELECT 'function ' || p.oid::regprocedure || ' returns ' || coalesce(pg_get_function_result(p.oid), '(procedure)')
       || ' ' || p.provolatile::text || p.proisstrict::text || p.prosecdef::text
       || ' ' || coalesce(p.probin, '') || ' ' || p.prosrc
       || ' config ' || coalesce(p.proconfig::text, '-') || ' acl ' || coalesce(p.proacl::text, '-')
  FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
UNION ALL
SELECT 'trigger ' || pg_get_triggerdef(t.oid)
  FROM pg_trigger t JOIN rels r ON r.oid = t.tgrelid WHERE NOT t.tgisinternal
UNION ALL
SELECT 'event trigger ' || evtname || ' on ' || evtevent || ' tags ' || coalesce(evttags::text, '-')
       || ' calls ' || evtfoid::regprocedure || ' enabled ' || evtenabled::text
  FROM pg_event_trigger
UNION ALL
SELECT 'dumped ' || c::regclass::text || ' where ' || coalesce(w, '')
  FROM pg_extension e, ext, unnest(e.extconfig, e.extcondition) AS x(c, w)
 WHERE e.oid = ext.oid
UNION ALL
SELECT 'schema acl ' || coalesce(nspacl::text, '-') FROM pg_namespace WHERE nspname = 'conductor'
UNION ALL
SELECT 'wrapper ' || fdwname || ' handler ' || fdwhandler::regproc || ' validator ' || fdwvalidator::regproc
  FROM pg_foreign_data_wrapper WHERE fdwname = 'conductor'
"#;

fn schema(client: &mut Client) -> BTreeSet<String> {
    strings(client, SCHEMA).into_iter().collect()
}

#[test]
fn update_from_each_released_version_keeps_tables_working() {
    let (cluster, mut a) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        node_delay_ms: None,
        token: None,
    });
    // The shard tables and their rows, put on the nodes by a current
    // database: the released version's catalog below describes them as that
    // version recorded the tables it distributed.
    exec(
        &mut a,
        "CREATE FOREIGN TABLE items (id bigint NOT NULL, v text, n integer) SERVER cluster;
         SELECT conductor.create_distributed_table('items', 'id', shard_count => 8);
         INSERT INTO items SELECT i, 'v' || i, i % 7 FROM generate_series(1, 300) i;",
    );
    let placement = rows(
        &mut a,
        "SELECT shard_id, node_id FROM conductor.shard WHERE relid = 'items'::regclass ORDER BY shard_id",
    );
    let nodes = rows(
        &mut a,
        "SELECT node_id, url FROM conductor.node ORDER BY node_id",
    );

    exec(&mut a, "CREATE DATABASE fresh");
    let mut fresh = connect(&cluster, "fresh");
    exec(&mut fresh, "CREATE EXTENSION conductor");
    let expected_schema = schema(&mut fresh);
    for kind in [
        "member ",
        "column node.",
        "view nodes",
        "function ",
        "trigger ",
        "event trigger ",
        "dumped ",
    ] {
        assert!(
            expected_schema.iter().any(|l| l.starts_with(kind)),
            "the schema description lists {kind}…"
        );
    }
    let version: String = strings(
        &mut fresh,
        "SELECT extversion FROM pg_extension WHERE extname = 'conductor'",
    )
    .remove(0);

    for released in RELEASED {
        let db = format!("from_{}", released.replace('.', "_"));
        exec(&mut a, &format!("CREATE DATABASE {db}"));
        let mut b = connect(&cluster, &db);
        // A database at the released version, as its install script made
        // it (the library is the current one: what a package upgrade
        // leaves until the update runs).
        exec(
            &mut b,
            &format!(
                "CREATE EXTENSION conductor VERSION '{released}';
                 CREATE SERVER cluster FOREIGN DATA WRAPPER conductor;
                 CREATE FOREIGN TABLE items (id bigint NOT NULL, v text, n integer) SERVER cluster;
                 CREATE TABLE expected AS SELECT i::bigint AS id, 'v' || i AS v, i % 7 AS n
                   FROM generate_series(1, 300) i;"
            ),
        );
        for node in &nodes {
            let (id, url) = parse_pair(node);
            exec(
                &mut b,
                &format!(
                    "INSERT INTO conductor.node (server_id, node_id, url)
                     SELECT oid, '{id}', '{url}' FROM pg_foreign_server WHERE srvname = 'cluster'"
                ),
            );
        }
        exec(
            &mut b,
            "INSERT INTO conductor.distributed_table
                 (relid, server_id, remote_name, shard_key, primary_key, shard_count, hash_version)
             SELECT 'items'::regclass, oid, 'items', 'id', '{id}', 8, 1
               FROM pg_foreign_server WHERE srvname = 'cluster'",
        );
        for shard in &placement {
            let (shard_id, node_id) = parse_pair(shard);
            exec(
                &mut b,
                &format!(
                    "INSERT INTO conductor.shard (relid, shard_id, server_id, node_id)
                     SELECT 'items'::regclass, {shard_id}, oid, '{node_id}'
                       FROM pg_foreign_server WHERE srvname = 'cluster'"
                ),
            );
        }

        exec(&mut b, "ALTER EXTENSION conductor UPDATE");
        assert_eq!(
            strings(
                &mut b,
                "SELECT extversion FROM pg_extension WHERE extname = 'conductor'"
            ),
            std::slice::from_ref(&version)
        );

        // The same schema as a fresh install, object by object.
        let upgraded = schema(&mut b);
        let missing: Vec<_> = expected_schema.difference(&upgraded).collect();
        let extra: Vec<_> = upgraded.difference(&expected_schema).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "after ALTER EXTENSION conductor UPDATE from {released}, the schema differs from a fresh {version} install.\n\
             In a fresh install only:\n  {}\nAfter the update only:\n  {}",
            missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "),
            extra.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  ")
        );

        // Reads, writes and ALTER work, and agree with a local table.
        let same = |b: &mut Client, what: &str| {
            assert_eq!(
                rows(b, "SELECT * FROM items ORDER BY id"),
                rows(b, "SELECT * FROM expected ORDER BY id"),
                "{what}"
            );
        };
        same(&mut b, "rows after the update");
        assert_eq!(
            rows(
                &mut b,
                "SELECT n, count(*), sum(id) FROM items GROUP BY n ORDER BY n"
            ),
            rows(
                &mut b,
                "SELECT n, count(*), sum(id) FROM expected GROUP BY n ORDER BY n"
            )
        );
        for t in ["items", "expected"] {
            exec(
                &mut b,
                &format!(
                    "INSERT INTO {t} SELECT i, 'new' || i, i % 5 FROM generate_series(1001, 1040) i;
                     UPDATE {t} SET v = v || '!' WHERE id % 3 = 0;
                     DELETE FROM {t} WHERE id % 10 = 1;"
                ),
            );
        }
        same(&mut b, "rows after writes");
        for t in ["items", "expected"] {
            let kind = if t == "items" {
                "FOREIGN TABLE"
            } else {
                "TABLE"
            };
            exec(
                &mut b,
                &format!(
                    "ALTER {kind} {t} ADD COLUMN extra integer DEFAULT 42;
                     UPDATE {t} SET extra = id WHERE id % 4 = 0;"
                ),
            );
        }
        same(&mut b, "rows after ALTER");
        assert_eq!(
            strings(
                &mut b,
                "SELECT count(*)::text FROM conductor.check_schema('items')"
            ),
            ["0"],
            "every shard has the columns the catalog records"
        );
        // The nodes the upgraded catalog names are the nodes that hold the
        // rows: a routed lookup reads one shard.
        let lookup = rows(&mut b, "SELECT * FROM items WHERE id = 1002");
        assert_eq!(lookup.len(), 1);
        assert_eq!(
            lookup,
            rows(&mut b, "SELECT * FROM expected WHERE id = 1002")
        );
        drop(b);
        exec(&mut a, &format!("DROP DATABASE {db}"));
    }
}

/// "(a,b)" → (a, b) for a row of two plain values.
fn parse_pair(row: &str) -> (String, String) {
    let inner = row.trim_start_matches('(').trim_end_matches(')');
    let (x, y) = inner.split_once(',').expect("two values");
    (x.to_string(), y.to_string())
}
