//! ANALYZE of a distributed table: reltuples and pg_stats come from every
//! shard (row counts, and a sample proportional to each shard's rows), and
//! the planner's estimates follow: a key lookup is about one row, a whole
//! scan about the table's rows, and a join with a local table takes the
//! same shape as the same join with an equivalent local table.

mod common;

use common::exec;
use conductor_e2e::postgres::{Client, SimpleQueryMessage};
use conductor_e2e::serde_json::{self, Value};
use conductor_e2e::{Cluster, ClusterOptions};

const ROWS: i64 = 100_000;

fn one_text(db: &mut Client, sql: &str) -> String {
    db.simple_query(sql)
        .unwrap_or_else(|e| panic!("{sql}: {}", conductor_e2e::pg_err(&e)))
        .into_iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("").to_string()),
            _ => None,
        })
        .unwrap()
}

fn plan_of(db: &mut Client, sql: &str) -> Value {
    let text = one_text(db, &format!("EXPLAIN (FORMAT JSON) {sql}"));
    let v: Value = serde_json::from_str(&text).unwrap();
    v[0]["Plan"].clone()
}

/// The plan's estimated rows of the top node.
fn estimate(db: &mut Client, sql: &str) -> f64 {
    plan_of(db, sql)["Plan Rows"].as_f64().unwrap()
}

/// The plan's shape: node types, depth first, with the scanned relation
/// replaced by its role (`T` for the table under test), so a plan over the
/// distributed table and one over its local twin compare equal when they
/// join the same way.
fn shape(plan: &Value, table: &str, out: &mut Vec<String>) {
    let ty = plan["Node Type"].as_str().unwrap().to_string();
    let node = match plan["Relation Name"].as_str() {
        Some(r) if r == table => "scan T".to_string(),
        Some(r) => format!("scan {r}"),
        None => ty,
    };
    out.push(node);
    if let Some(children) = plan["Plans"].as_array() {
        for c in children {
            shape(c, table, out);
        }
    }
}

fn within(got: f64, want: f64, factor: f64) -> bool {
    got <= want * factor && got * factor >= want
}

#[test]
fn analyze_feeds_the_planner() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        ..Default::default()
    });
    exec(
        &mut db,
        &format!(
            "CREATE FOREIGN TABLE an (id bigint NOT NULL, n int, v text) SERVER cluster;
             SELECT conductor.create_distributed_table('an', 'id', 16);
             INSERT INTO an SELECT i, i % 100, 'v' || i FROM generate_series(1, {ROWS}) i;
             CREATE TABLE an_local (id bigint PRIMARY KEY, n int, v text);
             INSERT INTO an_local SELECT * FROM an;
             CREATE TABLE small (id bigint PRIMARY KEY, w text);
             INSERT INTO small SELECT i * 19997, 'w' FROM generate_series(1, 5) i;
             CREATE TABLE big (id bigint, w text);
             INSERT INTO big SELECT i * 2, 'w' FROM generate_series(1, 50000) i;
             ANALYZE an_local; ANALYZE small; ANALYZE big;"
        ),
    );
    let reltuples = |db: &mut Client| -> f64 {
        one_text(
            db,
            "SELECT reltuples FROM pg_class WHERE oid = 'an'::regclass",
        )
        .parse()
        .unwrap()
    };
    assert_eq!(reltuples(&mut db), -1.0, "never analyzed");

    // Before ANALYZE a key lookup is already about one row (the key is the
    // whole primary key).
    let before = estimate(&mut db, "SELECT * FROM an WHERE id = 42");
    assert!(
        within(before, 1.0, 2.0),
        "key lookup before ANALYZE: {before}"
    );

    exec(&mut db, "ANALYZE an");
    let tuples = reltuples(&mut db);
    eprintln!("reltuples after ANALYZE: {tuples} (true: {ROWS})");
    assert!(within(tuples, ROWS as f64, 1.1), "reltuples {tuples}");
    let stats: i64 = one_text(
        &mut db,
        "SELECT count(*) FROM pg_stats WHERE tablename = 'an' AND schemaname = current_schema()",
    )
    .parse()
    .unwrap();
    assert_eq!(stats, 3, "a pg_stats row per column");
    let nd: f64 = one_text(
        &mut db,
        "SELECT n_distinct FROM pg_stats WHERE tablename = 'an' AND schemaname = current_schema() AND attname = 'n'",
    )
    .parse()
    .unwrap();
    eprintln!("n_distinct(n) = {nd} (true: 100)");
    assert!(within(nd, 100.0, 1.1), "n_distinct(n) {nd}");

    for (sql, want) in [
        ("SELECT * FROM an WHERE id = 42", 1.0),
        ("SELECT * FROM an WHERE id IN (1, 2, 3, 4, 5, 6, 7, 8)", 8.0),
        ("SELECT * FROM an", ROWS as f64),
        ("SELECT * FROM an WHERE n < 10", ROWS as f64 / 10.0),
    ] {
        let got = estimate(&mut db, sql);
        eprintln!("{sql}: estimated {got}, true {want}");
        assert!(
            within(got, want, 2.0),
            "{sql}: estimated {got}, true {want}"
        );
    }

    // Joins with local tables: the same shape as with the local twin.
    for join in [
        "SELECT count(*) FROM small s JOIN {T} t ON t.id = s.id",
        "SELECT count(*) FROM big b JOIN {T} t ON t.id = b.id",
        "SELECT count(*) FROM big b JOIN {T} t ON t.id = b.id WHERE t.n = 3",
    ] {
        let mut dist = Vec::new();
        shape(
            &plan_of(&mut db, &join.replace("{T}", "an")),
            "an",
            &mut dist,
        );
        let mut local = Vec::new();
        shape(
            &plan_of(&mut db, &join.replace("{T}", "an_local")),
            "an_local",
            &mut local,
        );
        let joins = |s: &[String]| -> Vec<String> {
            s.iter()
                .filter(|n| n.contains("Join") || n.contains("Nested Loop"))
                .cloned()
                .collect()
        };
        eprintln!("{join}\n  distributed: {dist:?}\n  local:       {local:?}");
        assert_eq!(joins(&dist), joins(&local), "{join}");
    }
}
