//! Joins of distributed tables (src/fdw/join.rs): co-location groups, and
//! joins of co-located tables on their shard keys run per shard on the
//! nodes.
//!
//! `generated_joins_match_local_tables`: orders, order lines (co-located
//! with orders by `colocate_with`, its key a bigint against orders'
//! integer), customers (co-located by default: same shard count and key
//! placement, created on the same nodes) and `other` (`colocate_with =>
//! 'none'`), with local copies. Several hundred generated joins (INNER and
//! LEFT, ON / USING / NATURAL, extra join conditions, filters on either
//! side reaching one shard, some or all, NULLs in the non-key columns,
//! filters the nodes cannot evaluate, self-joins, joins that are not
//! co-located or do not equate the keys, prepared statements run with
//! generic plans) must return the same rows as the local tables; the
//! pushed ones are counted by EXPLAIN, and a one-customer join must reach
//! exactly one shard request at the nodes.
//!
//! `colocation_groups`: conductor.tables shows the groups; colocate_with
//! refuses a different shard count or key type, takes the group's shard
//! count and its shard→node map.
//!
//! `text_of_conflicting_collations_is_refused_as_postgres_refuses_it`: a
//! comparison of text columns of different implicit collations fails with
//! Postgres' 42P22 instead of being answered by the nodes.
//!
//! Environment: `CONDUCTOR_JOIN_SEED`, `CONDUCTOR_JOIN_QUERIES` (default
//! 400), `CONDUCTOR_JOIN_VERBOSE=1`.

mod common;

use common::{exec, expect_db_error, node_requests, query_i64, shard_map, Rng};
use conductor_e2e::postgres::{Client, SimpleQueryMessage};
use conductor_e2e::{pg_err, Cluster, ClusterOptions};

const ORDERS: &str =
    "customer_id integer NOT NULL, order_id bigint NOT NULL, amount integer, note text, status varchar(10)";
const LINES: &str =
    "customer_id bigint NOT NULL, line_id integer NOT NULL, order_id bigint, qty integer, note text";
const CUSTOMERS: &str = "customer_id integer NOT NULL, name text, tier smallint";
const TIERS: &str = "tier smallint NOT NULL, label text, rate integer";
const OTHER: &str = "customer_id integer NOT NULL, order_id bigint NOT NULL, amount integer";

fn null_or(rng: &mut Rng, p: f64, v: String) -> String {
    if rng.chance(p) {
        "NULL".into()
    } else {
        v
    }
}

fn setup(seed: u64) -> (Cluster, Client) {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        ..Default::default()
    });
    exec(
        &mut db,
        &format!(
            "CREATE FOREIGN TABLE orders ({ORDERS}) SERVER cluster OPTIONS (primary_key 'customer_id, order_id');
             SELECT conductor.create_distributed_table('orders', 'customer_id', shard_count => 6);
             CREATE FOREIGN TABLE lines ({LINES}) SERVER cluster OPTIONS (primary_key 'customer_id, line_id');
             SELECT conductor.create_distributed_table('lines', 'customer_id', colocate_with => 'orders');
             CREATE FOREIGN TABLE customers ({CUSTOMERS}) SERVER cluster;
             SELECT conductor.create_distributed_table('customers', 'customer_id', shard_count => 6);
             CREATE FOREIGN TABLE other ({OTHER}) SERVER cluster OPTIONS (primary_key 'customer_id, order_id');
             SELECT conductor.create_distributed_table('other', 'customer_id', shard_count => 6, colocate_with => 'none');
             CREATE TABLE l_orders ({ORDERS});
             CREATE TABLE l_lines ({LINES});
             CREATE TABLE l_customers ({CUSTOMERS});
             CREATE FOREIGN TABLE tiers ({TIERS}) SERVER cluster;
             SELECT conductor.create_reference_table('tiers');
             CREATE TABLE l_other ({OTHER});
             CREATE TABLE l_tiers ({TIERS});"
        ),
    );
    let mut rng = Rng(seed | 1);
    let notes = ["'a'", "'b'", "'B'", "'ab'", "''", "'x y'"];
    let statuses = ["'new'", "'paid'", "'shipped'"];
    let mut customers = Vec::new();
    for c in 1..=50 {
        let name = {
            let v = format!("'c{}'", c % 17);
            null_or(&mut rng, 0.1, v)
        };
        let tier = {
            let v = rng.below(4).to_string();
            null_or(&mut rng, 0.2, v)
        };
        customers.push(format!("({c}, {name}, {tier})"));
    }
    let mut orders = Vec::new();
    let mut other = Vec::new();
    let mut lines = Vec::new();
    let mut line_id = 0;
    for o in 1..=400i64 {
        let c = 1 + rng.below(40);
        let amount = {
            let v = (rng.below(1000) as i64 - 100).to_string();
            null_or(&mut rng, 0.1, v)
        };
        let note = {
            let v = rng.pick(&notes).to_string();
            null_or(&mut rng, 0.2, v)
        };
        let status = {
            let v = rng.pick(&statuses).to_string();
            null_or(&mut rng, 0.1, v)
        };
        orders.push(format!("({c}, {o}, {amount}, {note}, {status})"));
        if rng.chance(0.5) {
            let amount = {
                let v = rng.below(1000).to_string();
                null_or(&mut rng, 0.1, v)
            };
            other.push(format!("({}, {o}, {amount})", 1 + rng.below(45)));
        }
        for _ in 0..rng.below(4) {
            line_id += 1;
            // Mostly lines of this order, some of another customer's order
            // or of none.
            let (lc, lo) = if rng.chance(0.85) {
                (c, o.to_string())
            } else {
                (1 + rng.below(45), null_or(&mut rng, 0.5, o.to_string()))
            };
            let qty = {
                let v = rng.below(10).to_string();
                null_or(&mut rng, 0.15, v)
            };
            let note = {
                let v = rng.pick(&notes).to_string();
                null_or(&mut rng, 0.3, v)
            };
            lines.push(format!("({lc}, {line_id}, {lo}, {qty}, {note})"));
        }
    }
    let tiers: Vec<String> = (0..3)
        .map(|t| format!("({t}, {}, {})", ["'std'", "NULL", "'gold'"][t], t * 5))
        .collect();
    for (t, rows) in [
        ("tiers", &tiers),
        ("customers", &customers),
        ("orders", &orders),
        ("lines", &lines),
        ("other", &other),
    ] {
        for chunk in rows.chunks(400) {
            let v = chunk.join(", ");
            exec(
                &mut db,
                &format!("INSERT INTO {t} VALUES {v}; INSERT INTO l_{t} VALUES {v};"),
            );
        }
    }
    exec(
        &mut db,
        "ANALYZE orders; ANALYZE lines; ANALYZE customers; ANALYZE other;
         ANALYZE l_orders; ANALYZE l_lines; ANALYZE l_customers; ANALYZE l_other;",
    );
    (cluster, db)
}

type Outcome = Result<Vec<String>, String>;

fn render(msgs: Vec<SimpleQueryMessage>) -> Vec<String> {
    msgs.into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("∅").to_string())
                    .collect::<Vec<_>>()
                    .join(" | "),
            ),
            _ => None,
        })
        .collect()
}

fn run(db: &mut Client, sql: &str) -> Outcome {
    db.simple_query(sql)
        .map(|m| {
            let mut rows = render(m);
            rows.sort();
            rows
        })
        .map_err(|e| match e.as_db_error() {
            Some(d) => d.code().code().to_string(),
            None => e.to_string(),
        })
}

/// Table, alias prefix, columns, key.
struct Table {
    name: &'static str,
    columns: &'static [&'static str],
}

const T_ORDERS: Table = Table {
    name: "orders",
    columns: &["customer_id", "order_id", "amount", "note", "status"],
};
const T_LINES: Table = Table {
    name: "lines",
    columns: &["customer_id", "line_id", "order_id", "qty", "note"],
};
const T_CUSTOMERS: Table = Table {
    name: "customers",
    columns: &["customer_id", "name", "tier"],
};
const T_OTHER: Table = Table {
    name: "other",
    columns: &["customer_id", "order_id", "amount"],
};

/// A restriction on one side (alias `a`), `$1` when `param`.
fn side_filter(rng: &mut Rng, t: &Table, a: &str, param: bool) -> String {
    let key = if param {
        "$1".to_string()
    } else {
        (1 + rng.below(45)).to_string()
    };
    let has = |c: &str| t.columns.contains(&c);
    let mut options = vec![
        format!("{a}.customer_id = {key}"),
        format!(
            "{a}.customer_id IN ({}, {}, {})",
            key,
            1 + rng.below(45),
            1 + rng.below(45)
        ),
        format!("{a}.customer_id < {}", 1 + rng.below(45)),
    ];
    if has("amount") {
        options.push(format!("{a}.amount > {}", rng.below(900)));
        options.push(format!("{a}.amount IS NULL"));
        // numeric arithmetic: stays in Postgres
        options.push(format!("({a}.amount::numeric / 3) > 50"));
    }
    if has("note") {
        options.push(format!("{a}.note = {}", rng.pick(&["'a'", "'B'", "''"])));
        options.push(format!("{a}.note LIKE 'a%'"));
        options.push(format!("{a}.note IS NOT NULL"));
        options.push(format!("lower({a}.note) = 'b'"));
    }
    if has("status") {
        options.push(format!("{a}.status <> 'paid'"));
    }
    if has("qty") {
        options.push(format!("{a}.qty >= {}", rng.below(10)));
        options.push(format!("({a}.qty > 5 OR {a}.qty IS NULL)"));
    }
    if has("tier") {
        options.push(format!("{a}.tier = {}", rng.below(4)));
    }
    if has("order_id") {
        options.push(format!(
            "{a}.order_id BETWEEN {} AND {}",
            rng.below(200),
            200 + rng.below(200)
        ));
    }
    let first = rng.pick(&options).clone();
    if !param && rng.chance(0.25) {
        format!("{first} AND {}", rng.pick(&options))
    } else {
        first
    }
}

struct Query {
    /// The statement with `{o}`/`{i}`/... table placeholders resolved per side.
    conductor: String,
    local: String,
}

/// A join of a distributed table with the reference table `tiers`.
fn generate_reference(rng: &mut Rng) -> Query {
    let (a, on) = *rng.pick(&[
        (&T_CUSTOMERS, "x.tier = y.tier"),
        (&T_CUSTOMERS, "x.tier = y.tier AND y.rate > 0"),
        (&T_ORDERS, "x.amount % 4 = y.tier"),
        (&T_LINES, "x.qty = y.rate"),
        (&T_LINES, "x.qty = y.tier AND x.note = y.label"),
    ]);
    let join = if rng.chance(0.5) { "LEFT JOIN" } else { "JOIN" };
    let param = rng.chance(0.2);
    let mut filters = Vec::new();
    if param || rng.chance(0.6) {
        filters.push(side_filter(rng, a, "x", param));
    }
    if rng.chance(0.3) {
        filters.push(
            rng.pick(&["y.label IS NULL", "y.rate < 7", "y.label = 'gold'"])
                .to_string(),
        );
    }
    let mut cols: Vec<String> = Vec::new();
    for c in a.columns {
        if rng.chance(0.5) {
            cols.push(format!("x.{c}"));
        }
    }
    for c in ["y.tier", "y.label", "y.rate"] {
        if rng.chance(0.5) {
            cols.push(c.to_string());
        }
    }
    let select = if cols.is_empty() {
        "count(*)".to_string()
    } else {
        cols.join(", ")
    };
    let sql_of = |prefix: &str| {
        let mut sql = format!(
            "SELECT {select} FROM {prefix}{} x {join} {prefix}tiers y ON {on}",
            a.name
        );
        if !filters.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&filters.join(" AND "));
        }
        sql
    };
    let (c, l) = (sql_of(""), sql_of("l_"));
    if param {
        let v = 1 + rng.below(45);
        let wrap = |s: String| format!("PREPARE q(integer) AS {s}; EXECUTE q({v}); DEALLOCATE q");
        Query {
            conductor: wrap(c),
            local: wrap(l),
        }
    } else {
        Query {
            conductor: c,
            local: l,
        }
    }
}

fn generate(rng: &mut Rng) -> Query {
    if rng.chance(0.2) {
        return generate_reference(rng);
    }
    let pairs: [(&Table, &Table); 7] = [
        (&T_ORDERS, &T_LINES),
        (&T_LINES, &T_ORDERS),
        (&T_CUSTOMERS, &T_ORDERS),
        (&T_ORDERS, &T_CUSTOMERS),
        (&T_ORDERS, &T_ORDERS),
        (&T_CUSTOMERS, &T_LINES),
        (&T_ORDERS, &T_OTHER),
    ];
    let (a, b) = *rng.pick(&pairs);
    let left = rng.chance(0.45);
    let join = if left { "LEFT JOIN" } else { "JOIN" };
    let common: Vec<&str> = a
        .columns
        .iter()
        .copied()
        .filter(|c| b.columns.contains(c))
        .collect();
    let form = rng.below(10);
    let (cond, using) = match form {
        0 => ("USING (customer_id)".to_string(), true),
        1 if common.contains(&"order_id") => ("USING (customer_id, order_id)".to_string(), true),
        2 => (String::new(), true), // NATURAL
        3 => {
            // no key equality: stays in Postgres
            let c = if common.contains(&"order_id") {
                "x.order_id = y.order_id"
            } else {
                "x.customer_id < y.customer_id + 1 AND x.customer_id > y.customer_id - 1"
            };
            (format!("ON {c}"), false)
        }
        4 if common.contains(&"order_id") => (
            "ON x.customer_id = y.customer_id AND x.order_id = y.order_id".to_string(),
            false,
        ),
        5 if common.contains(&"note") => (
            "ON x.customer_id = y.customer_id AND x.note = y.note".to_string(),
            false,
        ),
        6 => (
            format!(
                "ON y.customer_id = x.customer_id AND {}",
                side_filter(rng, b, "y", false)
            ),
            false,
        ),
        _ => ("ON x.customer_id = y.customer_id".to_string(), false),
    };
    let natural = form == 2;
    let param = rng.chance(0.15);
    let mut filters = Vec::new();
    if rng.chance(0.6) {
        filters.push(side_filter(rng, a, "x", param));
    }
    if rng.chance(0.35) {
        filters.push(side_filter(rng, b, "y", param && filters.is_empty()));
    }
    if param && filters.is_empty() {
        filters.push("x.customer_id = $1".to_string());
    }
    // The output: columns of both sides (USING/NATURAL merge the common ones).
    let mut out: Vec<String> = Vec::new();
    if using {
        out.push("customer_id".into());
    }
    for c in a.columns.iter().filter(|_| rng.chance(0.6)) {
        out.push(format!("x.{c}"));
    }
    for c in b.columns.iter().filter(|_| rng.chance(0.6)) {
        out.push(format!("y.{c}"));
    }
    let count = out.is_empty() || rng.chance(0.1);
    // Aggregates over the join (pushed with it when the nodes compute them
    // exactly), grouped or not.
    let aggregate = !count && rng.chance(0.2);
    let (select, group) = if count {
        ("count(*)".to_string(), String::new())
    } else if aggregate {
        let num = |t: &Table, alias: &str| {
            ["amount", "qty", "tier", "order_id"]
                .iter()
                .find(|c| t.columns.contains(c))
                .map(|c| format!("{alias}.{c}"))
        };
        let mut aggs = vec!["count(*)".to_string()];
        for (t, alias) in [(a, "x"), (b, "y")] {
            if let Some(c) = num(t, alias) {
                aggs.push(format!("sum({c})"));
                aggs.push(format!("max({c})"));
                aggs.push(format!("count({c})"));
            }
        }
        let key = if using {
            "customer_id"
        } else {
            "x.customer_id"
        };
        match rng.below(3) {
            0 => (aggs.join(", "), String::new()),
            1 => (
                format!("{key}, {}", aggs.join(", ")),
                format!(" GROUP BY {key}"),
            ),
            _ => {
                let g = if b.columns.contains(&"note") {
                    "y.note"
                } else {
                    "y.customer_id"
                };
                (
                    format!("{g}, {}", aggs.join(", ")),
                    format!(" GROUP BY {g}"),
                )
            }
        }
    } else {
        (out.join(", "), String::new())
    };
    let sql_of = |prefix: &str| {
        let from = if natural {
            format!("{prefix}{} x NATURAL {join} {prefix}{} y", a.name, b.name)
        } else {
            format!("{prefix}{} x {join} {prefix}{} y {cond}", a.name, b.name)
        };
        let mut sql = format!("SELECT {select} FROM {from}");
        if !filters.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&filters.join(" AND "));
        }
        sql.push_str(&group);
        sql
    };
    let (c, l) = (sql_of(""), sql_of("l_"));
    if param {
        let v = 1 + rng.below(45);
        let wrap = |s: String| format!("PREPARE q(integer) AS {s}; EXECUTE q({v}); DEALLOCATE q");
        Query {
            conductor: wrap(c),
            local: wrap(l),
        }
    } else {
        Query {
            conductor: c,
            local: l,
        }
    }
}

fn explain(db: &mut Client, sql: &str) -> String {
    let sql = match sql.strip_prefix("PREPARE q(integer) AS ") {
        Some(rest) => {
            let (body, tail) = rest.split_once("; EXECUTE q(").expect("prepared");
            let v = tail.split(')').next().expect("value");
            exec(db, &format!("PREPARE eq(integer) AS {body}"));
            let e = db
                .simple_query(&format!("EXPLAIN (VERBOSE) EXECUTE eq({v})"))
                .map(render);
            exec(db, "DEALLOCATE eq");
            return e.unwrap_or_default().join("\n");
        }
        None => sql,
    };
    db.simple_query(&format!("EXPLAIN (VERBOSE) {sql}"))
        .map(render)
        .unwrap_or_else(|e| panic!("EXPLAIN {sql}: {}", pg_err(&e)))
        .join("\n")
}

/// Runs `sql` and returns the nodes its requests reached (by the nodes'
/// own counters) and the shards of `table` it contacted (the backend's
/// per-shard request counters).
fn contacted(cluster: &Cluster, db: &mut Client, table: &str, sql: &str) -> (Vec<usize>, Vec<i32>) {
    std::thread::sleep(std::time::Duration::from_millis(150));
    exec(db, "SELECT conductor.reset_shard_requests()");
    let before = node_requests(cluster);
    run(db, sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let after = node_requests(cluster);
    let nodes = (0..before.len())
        .filter(|&i| after[i] > before[i])
        .collect();
    let shards = db
        .query(
            "SELECT shard_id FROM conductor.shard_requests()
              WHERE table_name = $1::text::regclass AND requests > 0 ORDER BY shard_id",
            &[&table],
        )
        .unwrap_or_else(|e| panic!("shard_requests: {}", pg_err(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect();
    (nodes, shards)
}

#[test]
fn generated_joins_match_local_tables() {
    let seed = std::env::var("CONDUCTOR_JOIN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x101_2026_u64);
    let n: usize = std::env::var("CONDUCTOR_JOIN_QUERIES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let verbose = std::env::var("CONDUCTOR_JOIN_VERBOSE").is_ok();
    eprintln!("CONDUCTOR_JOIN_SEED={seed}");
    let (cluster, mut db) = setup(seed);
    // Prepared statements run with generic plans: the route is decided at
    // execution from the parameter.
    exec(&mut db, "SET plan_cache_mode = force_generic_plan");
    let mut rng = Rng(seed.rotate_left(17) | 1);
    let mut mismatches = Vec::new();
    let (mut pushed, mut pushed_left, mut pushed_param, mut not_pushed) = (0, 0, 0, 0);
    let mut pushed_aggregate = 0;
    let mut pushed_reference = 0;
    // Shapes the generator does not make: three tables, a subquery's
    // expression below an outer join, RIGHT and FULL joins, a join whose
    // keys are equated through a constant only.
    let fixed = [
        "SELECT x.order_id, y.line_id, z.name FROM {p}orders x JOIN {p}lines y USING (customer_id, order_id) \
         JOIN {p}customers z ON z.customer_id = x.customer_id WHERE x.customer_id IN (3, 4, 5)",
        "SELECT x.order_id, y.one, y.qty FROM {p}orders x LEFT JOIN (SELECT l.*, 1 AS one FROM {p}lines l) y \
         ON x.customer_id = y.customer_id AND x.order_id = y.order_id",
        "SELECT x.order_id, y.line_id FROM {p}orders x RIGHT JOIN {p}lines y \
         ON x.customer_id = y.customer_id AND x.order_id = y.order_id",
        "SELECT x.order_id, y.line_id FROM {p}orders x FULL JOIN {p}lines y \
         ON x.customer_id = y.customer_id AND x.order_id = y.order_id",
        "SELECT x.order_id, y.line_id FROM {p}orders x, {p}lines y \
         WHERE x.customer_id = 7 AND y.customer_id = 7",
        "SELECT count(*) FROM {p}orders x JOIN {p}lines y ON x.customer_id = y.customer_id \
         WHERE x.order_id = y.order_id OR y.order_id IS NULL",
    ];
    for f in fixed {
        let c = f.replace("{p}", "");
        let l = f.replace("{p}", "l_");
        let (got, want) = (run(&mut db, &c), run(&mut db, &l));
        assert!(got.is_ok(), "{c}: {got:?}");
        assert_eq!(got, want, "{c}");
    }
    let plan = explain(&mut db, &fixed[4].replace("{p}", ""));
    assert!(
        plan.contains("Join: inner join") && plan.contains("Shards: 1 of 6"),
        "keys equated through a constant: {plan}"
    );
    for k in 0..n {
        let q = generate(&mut rng);
        let got = run(&mut db, &q.conductor);
        let want = run(&mut db, &q.local);
        let plan = explain(&mut db, &q.conductor);
        let is_pushed = plan.contains("Join: ");
        if is_pushed {
            pushed += 1;
            if plan.contains("Join: left") {
                pushed_left += 1;
            }
            if q.conductor.starts_with("PREPARE") {
                pushed_param += 1;
            }
            if plan.contains("with reference table") {
                pushed_reference += 1;
            }
            if plan.contains("Relations: Aggregate") {
                pushed_aggregate += 1;
            }
        } else {
            not_pushed += 1;
        }
        if verbose {
            eprintln!("#{k} pushed={is_pushed} {}", q.conductor);
        }
        if got != want {
            mismatches.push(format!(
                "#{k}: {}\n  conductor: {:?}\n  local: {:?}\n  plan:\n{plan}",
                q.conductor,
                got.as_ref().map(|r| r.iter().take(5).collect::<Vec<_>>()),
                want.as_ref().map(|r| r.iter().take(5).collect::<Vec<_>>())
            ));
        }
    }
    eprintln!(
        "joins: {n} queries, {pushed} pushed ({pushed_left} LEFT, {pushed_param} with a generic plan's parameter, {pushed_reference} with a reference table, {pushed_aggregate} with their aggregates), {not_pushed} at the router"
    );
    assert!(
        mismatches.is_empty(),
        "{} of {n} joins differ from the local tables:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert!(pushed >= n / 3, "too few joins pushed: {pushed} of {n}");
    assert!(
        pushed_left > 0
            && pushed_param > 0
            && pushed_reference > 0
            && pushed_aggregate > 0
            && not_pushed > 0
    );

    // One customer: one shard request at the nodes; all customers: one
    // request per node holding shards; not co-located: both tables' scans.
    let one = "SELECT o.order_id, l.line_id FROM orders o JOIN lines l \
               ON o.customer_id = l.customer_id WHERE o.customer_id = 7";
    let shard = query_i64(&mut db, "SELECT conductor.shard_for('orders', 7)::bigint") as i32;
    let node = common::node_index(&shard_map(&mut db, "orders")[&shard].0);
    assert_eq!(
        contacted(&cluster, &mut db, "orders", one),
        (vec![node], vec![shard]),
        "one-customer join: one shard, on its node"
    );
    assert_eq!(
        contacted(&cluster, &mut db, "lines", one).1,
        vec![shard],
        "the inner table's shard is counted too"
    );
    let all = "SELECT count(*) FROM orders o JOIN lines l USING (customer_id, order_id)";
    assert_eq!(
        contacted(&cluster, &mut db, "orders", all),
        (vec![0, 1, 2], (0..6).collect()),
        "all-customer join: every shard"
    );
    let plan = explain(&mut db, one);
    assert!(plan.contains("Shards: 1 of 6"), "{plan}");
    assert!(
        plan.contains("JOIN") && plan.contains("AS \"r2\" ON"),
        "EXPLAIN VERBOSE shows the per-shard join: {plan}"
    );
    // conductor_explain lists the shard under both tables, with the one
    // statement that reads both.
    let ce: Vec<(String, i32, String)> = db
        .query(
            "SELECT table_name, shard_id, remote_sql FROM conductor_explain($1) ORDER BY 1",
            &[&one],
        )
        .unwrap_or_else(|e| panic!("conductor_explain: {}", pg_err(&e)))
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(ce.len(), 2, "{ce:?}");
    assert_eq!(
        (ce[0].0.as_str(), ce[1].0.as_str()),
        ("lines", "orders"),
        "{ce:?}"
    );
    for (_, s, sql) in &ce {
        assert_eq!(*s, shard, "{ce:?}");
        assert!(sql.contains(" JOIN ") && sql.contains("\"lines_"), "{ce:?}");
    }
    let plan = explain(
        &mut db,
        "SELECT * FROM orders o JOIN other t ON o.customer_id = t.customer_id",
    );
    assert!(
        plan.contains("are not co-located"),
        "EXPLAIN says why the join stays: {plan}"
    );
}

#[test]
fn colocation_groups() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE a (k bigint NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('a', 'k', shard_count => 5);
         CREATE FOREIGN TABLE b (k integer NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_distributed_table('b', 'k', colocate_with => 'a');
         CREATE FOREIGN TABLE c (k smallint NOT NULL) SERVER cluster;
         SELECT conductor.create_distributed_table('c', 'k', shard_count => 5);
         CREATE FOREIGN TABLE d (k text NOT NULL) SERVER cluster;
         SELECT conductor.create_distributed_table('d', 'k', shard_count => 5);
         CREATE FOREIGN TABLE e (k bigint NOT NULL) SERVER cluster;
         SELECT conductor.create_distributed_table('e', 'k', shard_count => 5, colocate_with => 'none');
         CREATE FOREIGN TABLE f (k bigint NOT NULL) SERVER cluster;
         CREATE FOREIGN TABLE g (k text NOT NULL) SERVER cluster;",
    );
    let group = |db: &mut Client, t: &str| {
        query_i64(
            db,
            &format!("SELECT colocation_id::bigint FROM conductor.tables WHERE table_name = '{t}'::regclass"),
        )
    };
    let ga = group(&mut db, "a");
    assert_eq!(group(&mut db, "b"), ga, "colocate_with");
    assert_eq!(
        query_i64(
            &mut db,
            "SELECT shard_count::bigint FROM conductor.tables WHERE table_name = 'b'::regclass"
        ),
        5
    );
    assert_eq!(
        group(&mut db, "c"),
        ga,
        "default: same shard count, integer key"
    );
    assert_ne!(group(&mut db, "d"), ga, "a text key is placed differently");
    assert_ne!(group(&mut db, "e"), ga, "colocate_with => 'none'");
    let map_a = shard_map(&mut db, "a");
    for t in ["b", "c"] {
        let m = shard_map(&mut db, t);
        for (shard, (node, _)) in &map_a {
            assert_eq!(&m[shard].0, node, "{t} shard {shard}");
        }
    }
    let err = expect_db_error(
        db.batch_execute("SELECT conductor.create_distributed_table('f', 'k', shard_count => 4, colocate_with => 'a')"),
        "different shard count",
    );
    assert_eq!(err.code().code(), "22023", "{}", err.message());
    let err = expect_db_error(
        db.batch_execute(
            "SELECT conductor.create_distributed_table('g', 'k', colocate_with => 'a')",
        ),
        "different key type",
    );
    assert_eq!(err.code().code(), "22023", "{}", err.message());
    // A node that leaves the active set changes round-robin placement; the
    // default then starts a new group, colocate_with keeps the map.
    exec(
        &mut db,
        "UPDATE conductor.node SET status = 'disabled' WHERE node_id = 'node-2';
         SELECT conductor.create_distributed_table('f', 'k', shard_count => 5);
         SELECT conductor.create_distributed_table('g', 'k', shard_count => 5, colocate_with => 'd');",
    );
    assert_ne!(group(&mut db, "f"), ga);
    assert_eq!(group(&mut db, "g"), group(&mut db, "d"));
    let map_d = shard_map(&mut db, "d");
    let map_g = shard_map(&mut db, "g");
    for (shard, (node, _)) in &map_d {
        assert_eq!(&map_g[shard].0, node, "g shard {shard}");
    }
}

/// Text and varchar read as bpchar (`k::bpchar`, a binary-compatible cast)
/// are equal without trailing spaces, so a condition over such casts is not
/// one over the columns: `'abc'` in one table joins `'abc '` in the other
/// (rows on different shards when the casts are of the shard keys), as on
/// local tables.
#[test]
fn keys_and_columns_read_as_bpchar_join_as_bpchar() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE TABLE l_tk (k text, id bigint, t text);
         CREATE FOREIGN TABLE tk (k text, id bigint, t text) SERVER cluster;
         SELECT conductor.create_distributed_table('tk', 'k', shard_count => 4);
         CREATE TABLE l_tv (k varchar(10), id bigint, t text);
         CREATE FOREIGN TABLE tv (k varchar(10), id bigint, t text) SERVER cluster;
         SELECT conductor.create_distributed_table('tv', 'k', colocate_with => 'tk');
         INSERT INTO l_tk VALUES ('abc', 1, 'x'), ('a', 2, 'y '), (E'a\t', 3, 'z'), ('b', 4, 'w'),
           ('c', 5, 'q ');
         INSERT INTO l_tv VALUES ('abc ', 1, 'x '), ('a  ', 2, 'y'), ('a', 3, 'y'), ('b', 4, 'w'),
           ('c', 5, E'q\t');
         INSERT INTO tk SELECT * FROM l_tk;
         INSERT INTO tv SELECT * FROM l_tv;",
    );
    let statements = [
        "SELECT a.k, b.k FROM {tk} a JOIN {tv} b ON a.k::bpchar = b.k::bpchar",
        "SELECT a.k, b.k FROM {tk} a LEFT JOIN {tv} b ON a.k::bpchar = b.k::bpchar",
        "SELECT count(*) FROM {tk} a JOIN {tv} b ON a.k::bpchar = b.k::bpchar",
        "SELECT a.k, b.k FROM {tk} a JOIN {tv} b ON a.k = b.k AND a.t::bpchar = b.t::bpchar",
        "SELECT a.k, b.t FROM {tk} a LEFT JOIN {tv} b ON a.k = b.k AND a.t::bpchar = b.t::bpchar",
        "SELECT count(*) FROM {tk} a JOIN {tv} b ON a.k = b.k WHERE a.t::bpchar < b.t::bpchar",
    ];
    let mut mismatches = Vec::new();
    for sql in statements {
        let local = run(
            &mut db,
            &sql.replace("{tk}", "l_tk").replace("{tv}", "l_tv"),
        );
        let dist = run(&mut db, &sql.replace("{tk}", "tk").replace("{tv}", "tv"));
        if local != dist {
            mismatches.push(format!("{sql}\n  local: {local:?}\n  conductor: {dist:?}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// Text columns whose implicit collations differ (here C and POSIX, which
/// compare alike) cannot be compared: Postgres raises 42P22 rather than
/// pick one. Such a comparison is never sent to the nodes, which would
/// answer it, whether it is a condition of a pushed join or the outer
/// value of a parameterized scan; a COLLATE clause settles it as usual.
#[test]
fn text_of_conflicting_collations_is_refused_as_postgres_refuses_it() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    let columns = r#"k text COLLATE "C" NOT NULL, c text COLLATE "C", p text COLLATE "POSIX""#;
    exec(
        &mut db,
        &format!(
            "CREATE TABLE l_cc ({columns});
             CREATE FOREIGN TABLE cc ({columns}) SERVER cluster;
             SELECT conductor.create_distributed_table('cc', 'k', shard_count => 4);
             INSERT INTO l_cc VALUES ('a', 'a', 'a'), ('b', 'a', 'b'), ('c', 'b', 'a'), ('d', NULL, 'a');
             INSERT INTO cc SELECT * FROM l_cc;"
        ),
    );
    let statements = [
        "SELECT a.k FROM {cc} a JOIN {cc} b ON a.k = b.k AND a.c = b.p",
        "SELECT a.k FROM {cc} a LEFT JOIN {cc} b ON a.k = b.k AND a.c < b.p",
        "SELECT a.k FROM {cc} a JOIN {cc} b ON a.k = b.k WHERE a.p LIKE b.c",
        "SELECT a.k FROM {cc} a JOIN {cc} b ON a.k = b.k AND a.c = b.p COLLATE \"C\"",
        "SELECT a.k FROM {cc} a JOIN {cc} b ON a.k = b.k AND a.c < b.p COLLATE \"POSIX\"",
        // A nested loop whose inner scan looks its shard key up by the
        // outer row's value.
        "SELECT a.k, b.k FROM l_cc a JOIN {cc} b ON b.k = a.p",
        "SELECT a.k, b.k FROM l_cc a JOIN {cc} b ON b.k = a.p COLLATE \"C\"",
    ];
    exec(
        &mut db,
        "SET enable_hashjoin = off; SET enable_mergejoin = off; SET enable_material = off",
    );
    let mut mismatches = Vec::new();
    for sql in statements {
        let local = run(&mut db, &sql.replace("{cc}", "l_cc"));
        let dist = run(&mut db, &sql.replace("{cc}", "cc"));
        if local != dist {
            mismatches.push(format!("{sql}\n  local: {local:?}\n  conductor: {dist:?}"));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

/// The rows of a reference table's copy on node `i`, sorted.
fn copy_on(cluster: &Cluster, i: usize) -> Vec<String> {
    let mut rows: Vec<String> = cluster
        .node_query(
            i,
            "SELECT \"ref_0000\".\"id\", \"ref_0000\".\"v\", \"ref_0000\".\"n\" FROM \"ref_0000\"",
            &[],
        )
        .iter()
        .map(|r| format!("{r:?}"))
        .collect();
    rows.sort();
    rows
}

/// Writes to a reference table that run while `add_node` copies it, in
/// either order, reach every copy: the new node's too.
#[test]
fn writes_during_add_node_reach_the_new_copy() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        ..Default::default()
    });
    exec(
        &mut db,
        "SELECT conductor.remove_node('cluster', 'node-2');
         CREATE FOREIGN TABLE ref (id integer NOT NULL, v text, n integer) SERVER cluster;
         SELECT conductor.create_reference_table('ref');
         INSERT INTO ref VALUES (1, 'a', 1), (2, 'b', 2);",
    );
    let add_node = "SELECT conductor.add_node('cluster', 'node-2', $1)";
    let url = cluster.node_url(2);
    // add_node in a session of its own, answered when it commits.
    let add_in_background = |cluster: &Cluster| {
        let mut adder = cluster.client();
        let url = cluster.node_url(2);
        std::thread::spawn(move || {
            adder
                .execute(add_node, &[&url])
                .map(|_| ())
                .map_err(|e| pg_err(&e))
        })
    };

    // add_node first: a writer that starts before it commits.
    exec(&mut db, "BEGIN");
    db.execute(add_node, &[&url])
        .unwrap_or_else(|e| panic!("add_node: {}", pg_err(&e)));
    let mut writer = cluster.client();
    let write = std::thread::spawn(move || {
        writer
            .batch_execute(
                "INSERT INTO ref VALUES (3, 'c', 3);
                 UPDATE ref SET n = 10 WHERE id = 1;
                 DELETE FROM ref WHERE id = 2;",
            )
            .map_err(|e| pg_err(&e))
    });
    std::thread::sleep(std::time::Duration::from_millis(500));
    exec(&mut db, "COMMIT");
    write.join().unwrap().expect("the concurrent write");
    let expected = copy_on(&cluster, 0);
    assert_eq!(expected.len(), 2, "{expected:?}");
    for i in 1..3 {
        assert_eq!(copy_on(&cluster, i), expected, "copy on node-{i}");
    }

    // A writer first: add_node copies what it committed.
    exec(&mut db, "SELECT conductor.remove_node('cluster', 'node-2')");
    cluster.node_query(2, "DROP TABLE ref_0000", &[]);
    let mut writer = cluster.client();
    exec(
        &mut writer,
        "BEGIN; INSERT INTO ref VALUES (4, 'd', 4); UPDATE ref SET v = 'z' WHERE id = 3",
    );
    let add = add_in_background(&cluster);
    std::thread::sleep(std::time::Duration::from_millis(500));
    exec(&mut writer, "COMMIT");
    add.join().unwrap().expect("the concurrent add_node");
    let expected = copy_on(&cluster, 0);
    assert_eq!(expected.len(), 3, "{expected:?}");
    for i in 1..3 {
        assert_eq!(copy_on(&cluster, i), expected, "copy on node-{i}");
    }

    // A reference table created while add_node runs gets a copy on the
    // new node too, in either order.
    for create_first in [true, false] {
        exec(
            &mut db,
            "SELECT conductor.remove_node('cluster', 'node-2');
             DROP FOREIGN TABLE IF EXISTS ref2;",
        );
        for table in ["ref_0000", "ref2_0000"] {
            cluster.node_query(2, &format!("DROP TABLE IF EXISTS {table}"), &[]);
        }
        let mut creator = cluster.client();
        let create = "BEGIN;
             CREATE FOREIGN TABLE ref2 (id integer NOT NULL, v text) SERVER cluster;
             SELECT conductor.create_reference_table('ref2');
             INSERT INTO ref2 VALUES (1, 'a');";
        let mut adder = cluster.client();
        let url = cluster.node_url(2);
        let other = if create_first {
            exec(&mut creator, create);
            std::thread::spawn(move || {
                adder
                    .execute(add_node, &[&url])
                    .map(|_| ())
                    .map_err(|e| pg_err(&e))
            })
        } else {
            exec(&mut adder, "BEGIN");
            adder
                .execute(add_node, &[&url])
                .unwrap_or_else(|e| panic!("add_node: {}", pg_err(&e)));
            std::thread::spawn(move || adder.batch_execute("COMMIT").map_err(|e| pg_err(&e)))
        };
        if create_first {
            std::thread::sleep(std::time::Duration::from_millis(500));
            exec(&mut creator, "COMMIT");
            other.join().unwrap().expect("the concurrent add_node");
        } else {
            let create = std::thread::spawn(move || {
                creator
                    .batch_execute(&format!("{create} COMMIT"))
                    .map_err(|e| pg_err(&e))
            });
            std::thread::sleep(std::time::Duration::from_millis(500));
            other.join().unwrap().expect("add_node's commit");
            create.join().unwrap().expect("the concurrent create");
        }
        assert_eq!(
            query_i64(
                &mut db,
                "SELECT count(*) FROM conductor.reference_placement WHERE relid = 'ref2'::regclass"
            ),
            3,
            "create first: {create_first}"
        );
        assert_eq!(
            cluster.node_query(2, "SELECT count(*) FROM ref2_0000", &[]),
            cluster.node_query(0, "SELECT count(*) FROM ref2_0000", &[]),
            "create first: {create_first}"
        );
    }

    // A reference table dropped while add_node waits for it is left out.
    exec(&mut db, "SELECT conductor.remove_node('cluster', 'node-2')");
    for table in ["ref_0000", "ref2_0000"] {
        cluster.node_query(2, &format!("DROP TABLE IF EXISTS {table}"), &[]);
    }
    exec(&mut db, "BEGIN; DROP FOREIGN TABLE ref2");
    let add = add_in_background(&cluster);
    std::thread::sleep(std::time::Duration::from_millis(500));
    exec(&mut db, "COMMIT");
    add.join()
        .unwrap()
        .expect("add_node while a reference table is dropped");
    assert_eq!(copy_on(&cluster, 2), copy_on(&cluster, 0));
    // The DROP's commit dropped its shard tables: add_node held no node's
    // write lock while it waited.
    for i in 0..3 {
        assert!(
            !cluster.node_tables(i).contains(&"ref2_0000".to_string()),
            "node-{i} keeps ref2_0000"
        );
    }
    assert_eq!(
        query_i64(&mut db, "SELECT count(*) FROM conductor.cleanup_pending"),
        0
    );
}

#[test]
fn reference_tables() {
    let (mut cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 4,
        ..Default::default()
    });
    // node-3 joins later.
    exec(
        &mut db,
        "SELECT conductor.remove_node('cluster', 'node-3');
         CREATE FOREIGN TABLE ref (id integer NOT NULL, v text, n integer) SERVER cluster;
         SELECT conductor.create_reference_table('ref');
         CREATE TABLE l_ref (id integer NOT NULL, v text, n integer);
         CREATE FOREIGN TABLE d (k integer NOT NULL, ref_id integer) SERVER cluster;
         SELECT conductor.create_distributed_table('d', 'k', shard_count => 6);
         CREATE TABLE l_d (k integer NOT NULL, ref_id integer);",
    );
    assert_eq!(
        query_i64(&mut db, "SELECT count(*) FROM conductor.tables WHERE table_name = 'ref'::regclass AND reference"),
        1
    );
    let both = |db: &mut Client, sql: &str| {
        exec(
            db,
            &format!(
                "{sql}; {}",
                sql.replace(" ref", " l_ref").replace(" d ", " l_d ")
            ),
        );
    };
    both(
        &mut db,
        "INSERT INTO ref SELECT g, 'v' || g, g % 3 FROM generate_series(1, 50) g",
    );
    both(
        &mut db,
        "INSERT INTO d SELECT g, g % 60 FROM generate_series(1, 300) g",
    );
    both(&mut db, "UPDATE ref SET n = n + 10 WHERE id % 4 = 0");
    both(&mut db, "DELETE FROM ref WHERE id > 45");
    exec(
        &mut db,
        "BEGIN; INSERT INTO ref VALUES (100, 'x', 1); UPDATE ref SET v = 'y' WHERE id = 1; COMMIT;
         BEGIN; INSERT INTO l_ref VALUES (100, 'x', 1); UPDATE l_ref SET v = 'y' WHERE id = 1; COMMIT;",
    );
    let expected = copy_on(&cluster, 0);
    assert_eq!(expected.len(), 46);
    for i in 1..3 {
        assert_eq!(copy_on(&cluster, i), expected, "copy on node-{i}");
    }
    assert!(!cluster.node_tables(3).contains(&"ref_0000".to_string()));

    // Reads go to one copy; joins run per shard of d.
    for sql in [
        "SELECT * FROM ref",
        "SELECT x.k, r.v FROM d x JOIN ref r ON x.ref_id = r.id",
        "SELECT x.k, r.v FROM d x LEFT JOIN ref r ON x.ref_id = r.id AND r.n > 5",
        "SELECT x.k, r.v FROM d x JOIN ref r ON x.ref_id = r.id WHERE x.k = 7",
    ] {
        let local = sql.replace(" ref", " l_ref").replace(" d x", " l_d x");
        assert_eq!(run(&mut db, sql), run(&mut db, &local), "{sql}");
    }
    let plan = explain(
        &mut db,
        "SELECT x.k, r.v FROM d x JOIN ref r ON x.ref_id = r.id WHERE x.k = 7",
    );
    assert!(
        plan.contains("with reference table") && plan.contains("Shards: 1 of 6"),
        "{plan}"
    );

    // A node that fails in the middle of a transaction: the statement, or
    // the commit, fails, and every copy is as before.
    exec(&mut db, "BEGIN; INSERT INTO ref VALUES (200, 'a', 1)");
    cluster.stop_node(1);
    let r = db.batch_execute("INSERT INTO ref VALUES (201, 'b', 2); COMMIT");
    if r.is_err() {
        let _ = db.batch_execute("ROLLBACK");
    }
    assert!(r.is_err(), "a write with a copy's node down must fail");
    cluster.start_node(1);
    for i in 0..3 {
        assert_eq!(
            copy_on(&cluster, i),
            expected,
            "copy on node-{i} after the failed transaction"
        );
    }
    // The node is down at COMMIT: every node is asked before any commits,
    // so nothing is committed anywhere.
    let mut db = cluster.client();
    exec(&mut db, "BEGIN; INSERT INTO ref VALUES (300, 'c', 3)");
    cluster.stop_node(2);
    let r = db.batch_execute("COMMIT");
    cluster.start_node(2);
    assert!(r.is_err(), "COMMIT with a copy's node down must fail");
    for i in 0..3 {
        assert_eq!(
            copy_on(&cluster, i),
            expected,
            "copy on node-{i} after the failed commit"
        );
    }

    // A node added later receives a copy, with the copies' shard indexes.
    let mut db = cluster.client();
    exec(
        &mut db,
        "SELECT conductor.create_shard_index('ref', ARRAY['v'], 'ref_v');
         SELECT conductor.create_shard_index('ref', ARRAY['id', 'n'], 'ref_id_n', true);",
    );
    db.execute(
        "SELECT conductor.add_node('cluster', 'node-3', $1)",
        &[&cluster.node_url(3)],
    )
    .unwrap_or_else(|e| panic!("add_node: {}", pg_err(&e)));
    assert_eq!(
        copy_on(&cluster, 3),
        copy_on(&cluster, 0),
        "the new node's copy"
    );
    let indexes = |i: usize| {
        cluster.node_query(
            i,
            "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'ref_0000' AND sql IS NOT NULL ORDER BY name",
            &[],
        )
    };
    assert_eq!(indexes(0).len(), 2, "{:?}", indexes(0));
    assert_eq!(indexes(3), indexes(0), "the new node's indexes");
    // check_schema looks at every copy: one changed by hand is reported.
    assert_eq!(
        query_i64(
            &mut db,
            "SELECT count(*) FROM conductor.check_schema('ref')"
        ),
        0
    );
    cluster.node_query(3, "DROP INDEX ref_0000_ref_v", &[]);
    assert_eq!(
        run(
            &mut db,
            "SELECT node_id, problem FROM conductor.check_schema('ref')"
        ),
        run(
            &mut db,
            "SELECT 'node-3', 'index \"ref_0000_ref_v\" is missing'"
        ),
    );
    cluster.node_query(3, "CREATE INDEX ref_0000_ref_v ON ref_0000 (v)", &[]);
    exec(&mut db, "INSERT INTO ref VALUES (400, 'z', 4)");
    for i in 1..4 {
        assert_eq!(
            copy_on(&cluster, i),
            copy_on(&cluster, 0),
            "copy on node-{i}"
        );
    }
    // DDL goes to every copy.
    exec(&mut db, "ALTER FOREIGN TABLE ref ADD COLUMN z integer");
    for i in 0..4 {
        let columns = cluster.node_query(i, "SELECT name FROM pragma_table_info('ref_0000')", &[]);
        assert_eq!(columns.len(), 4, "node-{i}: {columns:?}");
    }
    // A node holding only a copy can be removed; the others keep theirs.
    exec(
        &mut db,
        "SELECT conductor.remove_node('cluster', 'node-3');
         INSERT INTO ref VALUES (500, 'w', 5, 1);",
    );
    for i in 1..3 {
        assert_eq!(
            copy_on(&cluster, i),
            copy_on(&cluster, 0),
            "copy on node-{i}"
        );
    }
    assert_eq!(
        query_i64(&mut db, "SELECT count(*) FROM ref WHERE id = 500"),
        1
    );
    // Added again, the node still holds the copy it kept: refused, naming
    // node and table, with nothing recorded.
    let e = db
        .execute(
            "SELECT conductor.add_node('cluster', 'node-3', $1)",
            &[&cluster.node_url(3)],
        )
        .unwrap_err();
    let db_error = e.as_db_error().expect("an ERROR");
    assert_eq!(db_error.code().code(), "42P07", "{}", pg_err(&e));
    assert!(
        db_error.message().contains("node-3") && db_error.message().contains("ref_0000"),
        "{}",
        pg_err(&e)
    );
    assert_eq!(
        query_i64(
            &mut db,
            "SELECT count(*) FROM conductor.nodes WHERE node_id = 'node-3'"
        ),
        0
    );
    exec(&mut db, "DROP FOREIGN TABLE ref");
    std::thread::sleep(std::time::Duration::from_millis(300));
    for i in 0..3 {
        assert!(
            !cluster.node_tables(i).contains(&"ref_0000".to_string()),
            "node-{i} keeps ref_0000"
        );
    }
}

/// Writes to a reference table that run while a node is added reach the
/// new node's copy too: add_node holds the table's writers back until the
/// new copy is in the catalog, so none writes only the copies it knew.
/// A read of a reference table whose copy's node is down goes on from
/// another copy: the rows a healthy cluster returns, under either
/// `conductor.on_shard_failure`, whether the read is a lookup, a stream of
/// many rows, a pushed aggregate or a sorted LIMIT. With every copy down
/// it fails as any read of a down node.
#[test]
fn a_reference_read_goes_to_another_copy_when_its_node_is_down() {
    let (mut cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE ref (id integer NOT NULL, v text) SERVER cluster;
         SELECT conductor.create_reference_table('ref');
         INSERT INTO ref SELECT g, 'v' || g FROM generate_series(1, 700) g;",
    );
    let queries = [
        "SELECT id, v FROM ref",
        "SELECT v FROM ref WHERE id = 7",
        "SELECT count(*), sum(id) FROM ref",
        "SELECT id FROM ref ORDER BY id DESC LIMIT 3",
    ];
    let healthy: Vec<Outcome> = queries.iter().map(|q| run(&mut db, q)).collect();
    assert_eq!(healthy[0].as_ref().map(Vec::len), Ok(700));
    let read_node = |db: &mut Client| -> usize {
        let node = &shard_map(db, "ref")[&0].0;
        node.trim_start_matches("node-").parse().unwrap()
    };
    let first = read_node(&mut db);
    cluster.stop_node(first);
    for policy in ["error", "skip"] {
        for (q, want) in queries.iter().zip(&healthy) {
            // A new session each time: none has seen the node fail yet.
            let mut c = cluster.client();
            exec(
                &mut c,
                &format!("SET conductor.on_shard_failure = {policy}"),
            );
            assert_eq!(&run(&mut c, q), want, "{policy}, node-{first} down: {q}");
        }
    }
    // Every copy down: the read fails, naming a node.
    for i in 0..3 {
        if i != first {
            cluster.stop_node(i);
        }
    }
    let mut c = cluster.client();
    let e = expect_db_error(c.query("SELECT * FROM ref", &[]), "every copy down");
    assert_eq!(e.code().code(), "HV00N", "{}", e.message());
}

#[test]
fn a_node_added_while_a_reference_table_is_written_gets_every_row() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 4,
        ..Default::default()
    });
    exec(
        &mut db,
        "SELECT conductor.remove_node('cluster', 'node-3');
         CREATE FOREIGN TABLE ref (id integer NOT NULL, v text, n integer) SERVER cluster;
         SELECT conductor.create_reference_table('ref');
         INSERT INTO ref SELECT g, 'v' || g, g FROM generate_series(1, 20000) g;",
    );
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    // Sessions writing one row per statement, in both protocols, alone
    // and in transaction blocks, until add_node has returned.
    let writers: Vec<_> = (0..2)
        .map(|w: i32| {
            let cfg = cluster.pg_config();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = cfg.connect(conductor_e2e::postgres::NoTls).unwrap();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let id = 100_000 * (w + 1) + n;
                    match n % 3 {
                        0 => c.batch_execute(&format!("INSERT INTO ref VALUES ({id}, 'w', 0)")),
                        1 => c
                            .execute("INSERT INTO ref VALUES ($1, 'w', 0)", &[&id])
                            .map(|_| ()),
                        _ => c.batch_execute(&format!(
                            "BEGIN; INSERT INTO ref VALUES ({id}, 'w', 0); COMMIT"
                        )),
                    }
                    .unwrap_or_else(|e| panic!("writer {w}: {}", pg_err(&e)));
                }
                n
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(500));
    db.execute(
        "SELECT conductor.add_node('cluster', 'node-3', $1)",
        &[&cluster.node_url(3)],
    )
    .unwrap_or_else(|e| panic!("add_node: {}", pg_err(&e)));
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let written: i32 = writers.into_iter().map(|w| w.join().unwrap()).sum();
    let on_0 = copy_on(&cluster, 0);
    assert_eq!(on_0.len(), 20_000 + written as usize);
    for i in 1..4 {
        let copy = copy_on(&cluster, i);
        assert!(
            copy == on_0,
            "copy on node-{i}: {} rows, node-0 {}",
            copy.len(),
            on_0.len()
        );
    }
}

/// A node removed while it held a copy of a reference table keeps that
/// copy; adding it again is refused clearly, naming the table, and works
/// once the table is dropped there.
#[test]
fn a_removed_node_added_again_says_which_old_copy_is_in_the_way() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE ref (id integer NOT NULL, v text, n integer) SERVER cluster;
         SELECT conductor.create_reference_table('ref');
         INSERT INTO ref SELECT g, 'v' || g, g FROM generate_series(1, 20) g;
         SELECT conductor.remove_node('cluster', 'node-2');
         INSERT INTO ref VALUES (21, 'after', 0);",
    );
    let url = cluster.node_url(2);
    let add = |db: &mut Client| {
        db.execute(
            "SELECT conductor.add_node('cluster', 'node-2', $1)",
            &[&url],
        )
    };
    let e = expect_db_error(add(&mut db), "add_node with the old copy in the way");
    assert_eq!(e.code().code(), "42P07", "{}", e.message());
    assert!(
        e.message().contains("node-2") && e.message().contains("ref_0000"),
        "{}",
        e.message()
    );
    assert_eq!(
        query_i64(
            &mut db,
            "SELECT count(*) FROM conductor.node WHERE node_id = 'node-2'"
        ),
        0
    );
    cluster.node_query(2, "DROP TABLE ref_0000", &[]);
    add(&mut db).unwrap_or_else(|e| panic!("add_node: {}", pg_err(&e)));
    assert_eq!(copy_on(&cluster, 2), copy_on(&cluster, 0));
    assert_eq!(copy_on(&cluster, 0).len(), 21);
}
