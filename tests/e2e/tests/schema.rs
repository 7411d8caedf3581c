//! Schema changes of distributed tables: every supported ALTER FOREIGN TABLE
//! reaches every shard inside the statement's transaction, anything else is
//! refused without changing anything, and `conductor.check_schema` finds
//! every shard in order afterwards.
//!
//! The main test is differential: a seeded random sequence of ALTERs mixed
//! with writes and reads runs on a local table and on a distributed one;
//! after every step both hold the same rows and the shards match the
//! foreign table.

use conductor_e2e::postgres::{Client, SimpleQueryMessage};
use conductor_e2e::{pg_err, Cluster, ClusterOptions};

fn exec(db: &mut Client, sql: &str) {
    db.batch_execute(sql)
        .unwrap_or_else(|e| panic!("{sql}: {}", pg_err(&e)));
}

fn rows(db: &mut Client, sql: &str) -> Result<Vec<Vec<Option<String>>>, String> {
    let msgs = db.simple_query(sql).map_err(|e| pg_err(&e))?;
    Ok(msgs
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect())
}

fn sqlstate(db: &mut Client, sql: &str) -> Result<(), String> {
    db.batch_execute(sql).map_err(|e| {
        e.as_db_error()
            .map(|d| d.code().code().to_string())
            .unwrap_or_else(|| e.to_string())
    })
}

fn schema_problems(db: &mut Client, table: &str) -> Vec<Vec<Option<String>>> {
    rows(
        db,
        &format!("SELECT shard_id, node_id, problem FROM conductor.check_schema('{table}')"),
    )
    .unwrap_or_else(|e| panic!("check_schema: {e}"))
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Clone)]
struct Col {
    name: String,
    ty: &'static str,
    not_null: bool,
}

fn value(rng: &mut Rng, ty: &str, nullable: bool) -> String {
    if nullable && rng.below(4) == 0 {
        return "NULL".into();
    }
    match ty {
        "integer" | "bigint" => format!("{}", rng.below(1000) as i64 - 500),
        "text" | "varchar(10)" => format!("'s{}'", rng.below(50)),
        "double precision" => format!("{}.25", rng.below(100)),
        "boolean" => (if rng.below(2) == 0 { "true" } else { "false" }).into(),
        "timestamp" => format!(
            "timestamp '2024-01-01' + interval '{} minutes'",
            rng.below(10000)
        ),
        other => panic!("{other}"),
    }
}

const TYPES: &[&str] = &[
    "integer",
    "text",
    "varchar(10)",
    "double precision",
    "boolean",
    "timestamp",
];

#[test]
fn random_alters_and_writes_match_a_local_table() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 3,
        node_delay_ms: None,
        token: None,
    });
    let seed: u64 = std::env::var("CONDUCTOR_SCHEMA_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_a17e);
    println!("schema differential: seed {seed}");
    let mut rng = Rng(seed | 1);
    exec(
        &mut db,
        "CREATE TABLE l (id bigint PRIMARY KEY, a integer, b text);
         CREATE FOREIGN TABLE d (id bigint NOT NULL, a integer, b text) SERVER cluster;
         SELECT conductor.create_distributed_table('d', 'id', shard_count => 6);",
    );
    let mut cols = vec![
        Col {
            name: "a".into(),
            ty: "integer",
            not_null: false,
        },
        Col {
            name: "b".into(),
            ty: "text",
            not_null: false,
        },
    ];
    let mut next_id = 0i64;
    let mut next_col = 0;
    let (mut alters, mut refused_both, mut writes) = (0, 0, 0);
    let steps = 120;
    for step in 0..steps {
        let both = |db: &mut Client,
                    local: &str,
                    dist: &str|
         -> (Result<(), String>, Result<(), String>) {
            (sqlstate(db, local), sqlstate(db, dist))
        };
        // The same ALTER clause on the local and the distributed table.
        let alter = |db: &mut Client, clause: &str| {
            both(
                db,
                &format!("ALTER TABLE l {clause}"),
                &format!("ALTER FOREIGN TABLE d {clause}"),
            )
        };
        let choice = rng.below(10);
        let (l, d, what) = if choice < 4 {
            // An ALTER.
            let kind = rng.below(7);
            let what;
            let (ls, ds) = match kind {
                0 | 1 => {
                    next_col += 1;
                    let name = format!("c{next_col}");
                    let ty = TYPES[rng.below(TYPES.len() as u64) as usize];
                    let with_default = rng.below(2) == 0;
                    let not_null = with_default && rng.below(2) == 0;
                    let mut clause = format!("ADD COLUMN {name} {ty}");
                    if with_default {
                        clause.push_str(&format!(" DEFAULT {}", value(&mut rng, ty, false)));
                    }
                    if not_null {
                        clause.push_str(" NOT NULL");
                    }
                    what = clause.clone();
                    let r = alter(&mut db, &clause);
                    if r.0.is_ok() {
                        cols.push(Col { name, ty, not_null });
                    }
                    r
                }
                2 if cols.len() > 1 => {
                    let i = rng.below(cols.len() as u64) as usize;
                    let clause = format!("DROP COLUMN {}", cols[i].name);
                    what = clause.clone();
                    let r = alter(&mut db, &clause);
                    if r.0.is_ok() {
                        cols.remove(i);
                    }
                    r
                }
                3 => {
                    let i = rng.below(cols.len() as u64) as usize;
                    next_col += 1;
                    let to = format!("r{next_col}");
                    let clause = format!("RENAME COLUMN {} TO {to}", cols[i].name);
                    what = clause.clone();
                    let r = alter(&mut db, &clause);
                    if r.0.is_ok() {
                        cols[i].name = to;
                    }
                    r
                }
                4 => {
                    let i = rng.below(cols.len() as u64) as usize;
                    let set = !cols[i].not_null;
                    let clause = format!(
                        "ALTER COLUMN {} {} NOT NULL",
                        cols[i].name,
                        if set { "SET" } else { "DROP" }
                    );
                    what = clause.clone();
                    let r = alter(&mut db, &clause);
                    if r.0.is_ok() {
                        cols[i].not_null = set;
                    }
                    r
                }
                5 => {
                    // Widening type changes.
                    let widen = cols
                        .iter()
                        .position(|c| c.ty == "integer" || c.ty == "varchar(10)");
                    match widen {
                        Some(i) => {
                            let to = if cols[i].ty == "integer" {
                                "bigint"
                            } else {
                                "text"
                            };
                            let clause = format!("ALTER COLUMN {} TYPE {to}", cols[i].name);
                            what = clause.clone();
                            let r = alter(&mut db, &clause);
                            if r.0.is_ok() {
                                cols[i].ty = to;
                            }
                            r
                        }
                        None => {
                            what = "no widening possible".into();
                            (Ok(()), Ok(()))
                        }
                    }
                }
                _ => {
                    // Unsupported on the distributed table: refused there,
                    // not applied locally.
                    let i = rng.below(cols.len() as u64) as usize;
                    let clause = if rng.below(2) == 0 {
                        let narrower = match cols[i].ty {
                            "integer" | "bigint" => "smallint",
                            _ => "varchar(3)",
                        };
                        format!("ALTER COLUMN {} TYPE {narrower}", cols[i].name)
                    } else {
                        format!("ADD COLUMN v{step} timestamptz DEFAULT clock_timestamp()")
                    };
                    what = clause.clone();
                    let before = rows(&mut db, "SELECT * FROM d ORDER BY id").unwrap();
                    let r = sqlstate(&mut db, &format!("ALTER FOREIGN TABLE d {clause}"));
                    assert_eq!(
                        r,
                        Err("0A000".to_string()),
                        "unsupported `{clause}` must be refused"
                    );
                    assert_eq!(
                        rows(&mut db, "SELECT * FROM d ORDER BY id").unwrap(),
                        before
                    );
                    refused_both += 1;
                    (Err("0A000".into()), Err("0A000".into()))
                }
            };
            alters += 1;
            (ls, ds, what)
        } else if choice < 8 {
            // INSERT a few rows with every column.
            let n = 1 + rng.below(5);
            let mut values = Vec::new();
            for _ in 0..n {
                next_id += 1;
                let mut v = vec![next_id.to_string()];
                for c in &cols {
                    v.push(value(&mut rng, c.ty, !c.not_null));
                }
                values.push(format!("({})", v.join(", ")));
            }
            let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
            let body = format!("(id, {}) VALUES {}", names.join(", "), values.join(", "));
            writes += 1;
            let r = both(
                &mut db,
                &format!("INSERT INTO l {body}"),
                &format!("INSERT INTO d {body}"),
            );
            (r.0, r.1, format!("INSERT {n}"))
        } else {
            // UPDATE or DELETE.
            let c = &cols[rng.below(cols.len() as u64) as usize];
            let k = 2 + rng.below(5);
            let sql = if rng.below(3) == 0 {
                format!(
                    "DELETE FROM TBL WHERE id % {k} = 0 AND id > {}",
                    next_id - 10
                )
            } else {
                format!(
                    "UPDATE TBL SET {} = {} WHERE id % {k} = 1",
                    c.name,
                    value(&mut rng, c.ty, !c.not_null)
                )
            };
            writes += 1;
            let r = both(&mut db, &sql.replace("TBL", "l"), &sql.replace("TBL", "d"));
            (r.0, r.1, sql)
        };
        // Both sides agree on success, or on the error class.
        let class = |r: &Result<(), String>| {
            r.as_ref()
                .err()
                .map(|c| c.chars().take(2).collect::<String>())
        };
        if class(&l) != class(&d) {
            // What the catalog and every shard say, for the report.
            let catalog = rows(
                &mut db,
                "SELECT shard_columns::text FROM conductor.distributed_table",
            );
            let mut shards = Vec::new();
            for i in 0..cluster.node_count() {
                for t in cluster.node_tables(i) {
                    let cols = cluster.node_query(
                        i,
                        "SELECT group_concat(name, ',') FROM pragma_table_info(?)",
                        &[conductor_e2e::serde_json::json!(t)],
                    );
                    shards.push(format!("node-{i} {t}: {cols:?}"));
                }
            }
            panic!(
                "step {step} (seed {seed}) `{what}`: local {l:?}, distributed {d:?}\ncatalog {catalog:?}\nshards:\n{}",
                shards.join("\n")
            );
        }
        let lr = rows(&mut db, "SELECT * FROM l ORDER BY id").unwrap();
        let dr = rows(&mut db, "SELECT * FROM d ORDER BY id").unwrap();
        assert_eq!(
            lr, dr,
            "step {step} (seed {seed}) after `{what}`: rows differ"
        );
        if choice < 4 {
            let problems = schema_problems(&mut db, "d");
            assert!(
                problems.is_empty(),
                "step {step} (seed {seed}) after `{what}`: check_schema {problems:?}"
            );
        }
    }
    println!(
        "schema differential: {steps} steps, {alters} ALTERs ({refused_both} unsupported, refused), {writes} writes, {} rows, {} columns at the end",
        next_id,
        cols.len() + 1
    );
}

#[test]
fn alters_roll_back_refuse_clearly_and_survive_a_dead_node() {
    let (mut cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        node_delay_ms: None,
        token: None,
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE t (id bigint NOT NULL, email text, n int) SERVER cluster;
         SELECT conductor.create_distributed_table('t', 'id', shard_count => 4);
         INSERT INTO t SELECT i, 'u' || i, i FROM generate_series(1, 40) i;",
    );
    // A rolled-back ALTER leaves the shards as they were.
    exec(
        &mut db,
        "BEGIN; ALTER FOREIGN TABLE t ADD COLUMN note text DEFAULT 'x'; ROLLBACK",
    );
    assert!(schema_problems(&mut db, "t").is_empty());
    assert_eq!(
        rows(&mut db, "SELECT count(*) FROM t").unwrap(),
        vec![vec![Some("40".to_string())]]
    );

    // Refusals name the reason; nothing changes.
    for (sql, needle) in [
        ("ALTER FOREIGN TABLE t DROP COLUMN id", "shard key"),
        (
            "ALTER FOREIGN TABLE t ALTER COLUMN id TYPE text",
            "shard key",
        ),
        (
            "ALTER FOREIGN TABLE t ALTER COLUMN n TYPE smallint",
            "widening",
        ),
        (
            "ALTER FOREIGN TABLE t ADD COLUMN z int NOT NULL",
            "NOT NULL without a default",
        ),
        (
            "ALTER FOREIGN TABLE t ADD COLUMN r float8 DEFAULT random()",
            "not a constant",
        ),
        (
            "ALTER FOREIGN TABLE t OPTIONS (ADD table_name 'other')",
            "table_name",
        ),
        // A local table computes a stored generated column for its rows;
        // the shards cannot (and its expression reads the row: it cannot be
        // evaluated alone as a default is).
        (
            "ALTER FOREIGN TABLE t ADD COLUMN twice bigint GENERATED ALWAYS AS (id * 2) STORED",
            "generated",
        ),
    ] {
        let err = db.batch_execute(sql).expect_err(sql);
        let text = pg_err(&err);
        assert!(text.contains(needle), "{sql}: {text}");
        assert_eq!(
            err.as_db_error().map(|d| d.code().code()),
            Some("0A000"),
            "{sql}"
        );
    }
    assert!(schema_problems(&mut db, "t").is_empty());

    // Renaming the shard key keeps routing working; renaming the table too.
    exec(&mut db, "ALTER FOREIGN TABLE t RENAME COLUMN id TO uid");
    exec(&mut db, "ALTER FOREIGN TABLE t RENAME TO t2");
    let r = rows(&mut db, "SELECT email FROM t2 WHERE uid = 7").unwrap();
    assert_eq!(r, vec![vec![Some("u7".to_string())]]);
    let plan = rows(&mut db, "EXPLAIN SELECT * FROM t2 WHERE uid = 7").unwrap();
    assert!(
        plan.iter()
            .any(|r| r[0].as_deref().unwrap_or("").contains("Shards: 1 of 4")),
        "{plan:?}"
    );
    assert!(schema_problems(&mut db, "t2").is_empty());

    // A node down during an ALTER: the statement fails, no shard changes,
    // and the same ALTER succeeds once the node is back.
    cluster.stop_node(1);
    let err = db
        .batch_execute("ALTER FOREIGN TABLE t2 ADD COLUMN note text DEFAULT 'hello'")
        .expect_err("an ALTER with a node down must fail");
    println!("ALTER with a node down: {}", pg_err(&err));
    cluster.start_node(1);
    assert!(schema_problems(&mut db, "t2").is_empty(), "old schema kept");
    exec(
        &mut db,
        "ALTER FOREIGN TABLE t2 ADD COLUMN note text DEFAULT 'hello'",
    );
    assert!(schema_problems(&mut db, "t2").is_empty());
    assert_eq!(
        rows(&mut db, "SELECT count(*) FROM t2 WHERE note = 'hello'").unwrap(),
        vec![vec![Some("40".to_string())]]
    );
}

#[test]
fn shard_indexes_are_created_checked_renamed_and_dropped() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        node_delay_ms: None,
        token: None,
    });
    exec(
        &mut db,
        "CREATE FOREIGN TABLE u (id bigint NOT NULL, email text, n int) SERVER cluster;
         SELECT conductor.create_distributed_table('u', 'id', shard_count => 4);
         INSERT INTO u SELECT i, 'u' || i, i % 7 FROM generate_series(1, 100) i;",
    );
    let name = rows(
        &mut db,
        "SELECT conductor.create_shard_index('u', ARRAY['email'])",
    )
    .unwrap();
    assert_eq!(name, vec![vec![Some("email_idx".to_string())]]);
    exec(
        &mut db,
        "SELECT conductor.create_shard_index('u', ARRAY['id', 'n'], 'by_id_n', true)",
    );
    assert!(schema_problems(&mut db, "u").is_empty());
    let err = db
        .batch_execute(
            "SELECT conductor.create_shard_index('u', ARRAY['email'], 'uniq_email', true)",
        )
        .expect_err("a unique index without the shard key");
    assert!(
        pg_err(&err).contains("must include the shard key"),
        "{}",
        pg_err(&err)
    );
    // The unique index holds within a shard: (id, n) duplicates fail.
    let err = db
        .batch_execute("INSERT INTO u VALUES (1, 'dup', 1)")
        .expect_err("duplicate");
    assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("23505"));
    // Renaming an indexed column keeps the index in order; dropping it is refused.
    exec(&mut db, "ALTER FOREIGN TABLE u RENAME COLUMN email TO mail");
    assert!(schema_problems(&mut db, "u").is_empty());
    let listed = rows(
        &mut db,
        "SELECT index_name, columns::text FROM conductor.shard_indexes ORDER BY 1",
    )
    .unwrap();
    assert_eq!(
        listed[1],
        vec![Some("email_idx".to_string()), Some("{mail}".to_string())]
    );
    let err = db
        .batch_execute("ALTER FOREIGN TABLE u DROP COLUMN mail")
        .expect_err("indexed column");
    assert!(
        pg_err(&err).contains("drop_shard_index"),
        "{}",
        pg_err(&err)
    );
    // A rebuild (SET NOT NULL) keeps the indexes.
    exec(
        &mut db,
        "ALTER FOREIGN TABLE u ALTER COLUMN mail SET NOT NULL",
    );
    assert!(schema_problems(&mut db, "u").is_empty());
    exec(&mut db, "SELECT conductor.drop_shard_index('email_idx')");
    exec(&mut db, "ALTER FOREIGN TABLE u DROP COLUMN mail");
    assert!(schema_problems(&mut db, "u").is_empty());
    let n = rows(&mut db, "SELECT count(*) FROM u WHERE n = 3").unwrap();
    assert_eq!(n, vec![vec![Some("14".to_string())]]);
}

/// Renaming a column the `primary_key` option names renames it in the
/// option too: later ALTERs still work, and the rows are still found by
/// their (renamed) key.
#[test]
fn renamed_primary_key_columns_keep_later_alters_working() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    let setup = "CREATE {kind} {t} (id bigint NOT NULL, sub int NOT NULL, v text) {server};
                 INSERT INTO {t} VALUES (1, 1, 'a'), (1, 2, 'b'), (2, 1, 'c');
                 ALTER {alter} {t} RENAME COLUMN sub TO sub2;
                 ALTER {alter} {t} ADD COLUMN w int;
                 ALTER {alter} {t} RENAME COLUMN id TO id2;
                 ALTER {alter} {t} ADD COLUMN x text DEFAULT 'x';
                 UPDATE {t} SET w = sub2 * 10 WHERE id2 = 1 AND sub2 = 2;
                 DELETE FROM {t} WHERE id2 = 2 AND sub2 = 1;";
    exec(
        &mut db,
        "CREATE FOREIGN TABLE pk (id bigint NOT NULL, sub int NOT NULL, v text)
             SERVER cluster OPTIONS (primary_key 'id, sub');
         SELECT conductor.create_distributed_table('pk', 'id', shard_count => 4);",
    );
    let distributed = setup
        .lines()
        .skip(1)
        .collect::<Vec<_>>()
        .join("\n")
        .replace("{alter}", "FOREIGN TABLE")
        .replace("{t}", "pk");
    exec(&mut db, &distributed);
    exec(
        &mut db,
        &setup
            .replace("{kind}", "TABLE")
            .replace("{alter}", "TABLE")
            .replace("{server}", "")
            .replace("{t}", "pk_local")
            .replace(
                "sub int NOT NULL, v text)",
                "sub int NOT NULL, v text, PRIMARY KEY (id, sub))",
            ),
    );
    let all = "SELECT id2, sub2, v, w, x FROM {t} ORDER BY id2, sub2";
    assert_eq!(
        rows(&mut db, &all.replace("{t}", "pk")).unwrap(),
        rows(&mut db, &all.replace("{t}", "pk_local")).unwrap()
    );
    assert_eq!(
        rows(
            &mut db,
            "SELECT primary_key::text, shard_key::text FROM conductor.distributed_table
              WHERE relid = 'pk'::regclass"
        )
        .unwrap(),
        [[Some("{id2,sub2}".into()), Some("id2".into())]]
    );
    assert_eq!(
        rows(
            &mut db,
            "SELECT ftoptions::text FROM pg_foreign_table WHERE ftrelid = 'pk'::regclass"
        )
        .unwrap(),
        [[Some(r#"{"primary_key=id2,sub2"}"#.into())]]
    );
    assert!(schema_problems(&mut db, "pk").is_empty());
}

/// An ALTER of a partitioned table changes its conductor partitions too;
/// their shard tables follow (or the ALTER is refused for them).
#[test]
fn alters_of_a_partitioned_table_reach_its_conductor_partitions() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(
        &mut db,
        "CREATE TABLE parent (id bigint NOT NULL, v text) PARTITION BY RANGE (id);
         CREATE FOREIGN TABLE remote_part PARTITION OF parent FOR VALUES FROM (0) TO (1000)
             SERVER cluster;
         SELECT conductor.create_distributed_table('remote_part', 'id', shard_count => 4);
         CREATE TABLE local_part PARTITION OF parent FOR VALUES FROM (1000) TO (2000);
         CREATE TABLE mirror (id bigint NOT NULL, v text);
         INSERT INTO parent VALUES (1, 'a'), (2, NULL), (1500, 'b');
         INSERT INTO mirror VALUES (1, 'a'), (2, NULL), (1500, 'b');",
    );
    for alter in [
        "ADD COLUMN w int DEFAULT 7",
        "RENAME COLUMN v TO v2",
        "ALTER COLUMN w TYPE bigint",
        "ADD COLUMN gone text",
        "DROP COLUMN gone",
    ] {
        exec(&mut db, &format!("ALTER TABLE parent {alter}"));
        exec(&mut db, &format!("ALTER TABLE mirror {alter}"));
        assert!(
            schema_problems(&mut db, "remote_part").is_empty(),
            "after {alter}"
        );
    }
    exec(
        &mut db,
        "INSERT INTO parent VALUES (3, 'c', 9), (1600, 'd', 10);
         INSERT INTO mirror VALUES (3, 'c', 9), (1600, 'd', 10);
         UPDATE parent SET w = w + 1 WHERE v2 IS NOT NULL;
         UPDATE mirror SET w = w + 1 WHERE v2 IS NOT NULL;",
    );
    let all = "SELECT id, v2, w FROM {t} ORDER BY id";
    assert_eq!(
        rows(&mut db, &all.replace("{t}", "parent")).unwrap(),
        rows(&mut db, &all.replace("{t}", "mirror")).unwrap()
    );
    // A change the shards cannot follow is refused for the partition, and
    // nothing changes.
    assert_eq!(
        sqlstate(&mut db, "ALTER TABLE parent ALTER COLUMN w TYPE smallint"),
        Err("0A000".into())
    );
    assert!(schema_problems(&mut db, "remote_part").is_empty());
}
