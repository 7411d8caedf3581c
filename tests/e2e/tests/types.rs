//! Every supported column type round-trips exactly through a sharded table
//! (the same rows in a local table are the reference; NaN and infinities
//! included), unsupported types and shard key types are refused at create
//! time, and a NULL shard key on INSERT.

mod common;

use common::{
    catalog_rows_for_remote_name, describe, exec, expect_db_error, query_i64, shard_tables_on_nodes,
};
use conductor_e2e::{pg_err, postgres, Cluster, ClusterOptions};

/// (column name, SQL type, values as SQL expressions). Row `r` takes value
/// `r % len` of each column, so every value appears; one more row is all
/// NULLs. Values are expressions evaluated once, into the local table.
const COLUMNS: &[(&str, &str, &[&str])] = &[
    ("c_int2", "smallint", &["-32768", "32767", "0", "-1", "NULL"]),
    ("c_int4", "integer", &["-2147483648", "2147483647", "0", "-7", "NULL"]),
    (
        "c_int8",
        "bigint",
        &["-9223372036854775808", "9223372036854775807", "0", "42", "NULL"],
    ),
    (
        "c_real",
        "real",
        &[
            "'0'",
            "'-0'",
            "'3.4028235e38'",
            "'-3.4028235e38'",
            "'1.4e-45'",        // smallest subnormal
            "'1.1754942e-38'",  // largest subnormal
            "'1.17549435e-38'", // smallest normal
            "'0.1'",
            "'-123.456'",
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "NULL",
        ],
    ),
    (
        "c_float8",
        "double precision",
        &[
            "'-0'",
            "'0'",
            "'1.7976931348623157e308'",
            "'-1.7976931348623157e308'",
            "'5e-324'",                  // smallest subnormal
            "'2.225073858507201e-308'",  // largest subnormal
            "'2.2250738585072014e-308'", // smallest normal
            "'0.1'",
            "'3.141592653589793'",
            "'-1e-300'",
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "NULL",
        ],
    ),
    (
        "c_numeric",
        "numeric",
        &[
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "'0'",
            "'1.10'", // trailing zero (scale) must survive
            "'-0.00000000000000000000000000000001'",
            "'123456789012345678901234567890.123456789012345678901234567890'",
            "'1e1000'",  // 1001 digits
            "'1e-1000'", // scale 1000
            "'-99999999999999999999999999999999999999'",
            "NULL",
        ],
    ),
    ("c_bool", "boolean", &["true", "false", "NULL"]),
    (
        "c_text",
        "text",
        &[
            "''",
            "'plain ascii'",
            "'emoji 🦀 👩‍👩‍👧‍👦 🇫🇷'",
            "E'combining e\\u0301 vs \\u00e9, hangul \\u1100\\u1161'",
            "E'quotes '' \" \\\\ backslash, tab\\t newline\\n cr\\r'",
            "'日本語テキスト, Ελληνικά, עברית, العربية'",
            "repeat('long text ', 20000)", // 180 kB, TOASTed locally
            "E'\\u0001 control \\u007f del'",
            "' leading and trailing spaces '",
            "NULL",
        ],
    ),
    (
        "c_varchar",
        "varchar(20)",
        &["''", "'abc'", "'ünïcödé'", "'🦀🦀🦀'", "'12345678901234567890'", "NULL"],
    ),
    (
        "c_char",
        "char(5)",
        &["''", "'ab'", "'abcde'", "'é'", "'a  '", "NULL"],
    ),
    (
        "c_bytea",
        "bytea",
        &[
            "'\\x'::bytea",
            "'\\x00'::bytea",
            "decode((SELECT string_agg(lpad(to_hex(i), 2, '0'), '') FROM generate_series(0, 255) i), 'hex')",
            "decode((SELECT string_agg(lpad(to_hex(255 - i), 2, '0'), '') FROM generate_series(0, 255) i), 'hex')",
            "'\\xff00ff'::bytea",
            "convert_to('🦀', 'UTF8')",
            "NULL",
        ],
    ),
    (
        "c_uuid",
        "uuid",
        &[
            "'00000000-0000-0000-0000-000000000000'",
            "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
            "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'",
            "gen_random_uuid()",
            "NULL",
        ],
    ),
    (
        "c_date",
        "date",
        &[
            "'infinity'",
            "'-infinity'",
            "'4714-11-24 BC'", // the earliest date
            "'0001-01-01 BC'",
            "'0001-01-01'",
            "'1999-12-31'",
            "'2000-01-01'",
            "'2024-02-29'",
            "'5874897-12-31'", // the latest date
            "NULL",
        ],
    ),
    (
        "c_ts",
        "timestamp",
        &[
            "'infinity'",
            "'-infinity'",
            "'4714-11-24 00:00:00 BC'",
            "'0044-03-15 12:00:00 BC'",
            "'1970-01-01 00:00:00.000001'",
            "'1999-12-31 23:59:59.999999'",
            "'2000-01-01 00:00:00'",
            "'2024-02-29 12:34:56.789'",
            "'294276-12-31 23:59:59.999999'",
            "NULL",
        ],
    ),
    (
        "c_tstz",
        "timestamptz",
        &[
            "'infinity'",
            "'-infinity'",
            "'4713-01-01 00:00:00+00 BC'",
            "'1900-01-01 00:00:00 Europe/Paris'",
            "'1999-12-31 23:59:59.999999+14'",
            "'2000-01-01 00:00:00+00'",
            "'2024-06-01 12:00:00.123456+05:30'",
            "'294276-12-31 23:59:59.999999+00'",
            "NULL",
        ],
    ),
    (
        "c_json",
        "json",
        &[
            r#"'{ "b" : 1,  "a" : [1, 2, {"x": null}], "a": "dup" }'"#, // whitespace and duplicate keys kept
            "'null'",
            r#"'"🦀 \u00e9 \u0000"'"#,
            "'[]'",
            "'1e400'",
            "'123.4500'",
            "NULL",
        ],
    ),
    (
        "c_jsonb",
        "jsonb",
        &[
            r#"'{"b": 1, "a": [1, 2, {"x": null}]}'"#,
            r#"'{"a": 1, "a": 2}'"#,
            "'null'",
            r#"'"ünï 🦀"'"#,
            "'123.4500'",
            r#"'[1, "2", true, null, {}]'"#,
            "NULL",
        ],
    ),
];

fn column_defs() -> String {
    COLUMNS
        .iter()
        .map(|(name, ty, _)| format!("{name} {ty}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn column_names() -> String {
    COLUMNS
        .iter()
        .map(|(name, _, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn rows_sql(first_id: i32) -> (String, i64) {
    let nrows = COLUMNS.iter().map(|(_, _, v)| v.len()).max().unwrap();
    let mut rows = Vec::new();
    for r in 0..nrows {
        let values: Vec<&str> = COLUMNS.iter().map(|(_, _, v)| v[r % v.len()]).collect();
        rows.push(format!("({}, {})", first_id + r as i32, values.join(", ")));
    }
    // All NULL but the key.
    rows.push(format!(
        "({}, {})",
        first_id + nrows as i32,
        vec!["NULL"; COLUMNS.len()].join(", ")
    ));
    (rows.join(",\n"), nrows as i64 + 1)
}

/// `id, col::text` per row, for one column.
fn column_text(
    client: &mut postgres::Client,
    table: &str,
    col: &str,
) -> Vec<(i32, Option<String>)> {
    let sql = format!("SELECT id, {col}::text FROM {table} ORDER BY id");
    client
        .query(sql.as_str(), &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", pg_err(&e)))
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn whole_rows(client: &mut postgres::Client, table: &str) -> Vec<String> {
    let sql = format!("SELECT t::text FROM {table} t ORDER BY id");
    client
        .query(sql.as_str(), &[])
        .unwrap_or_else(|e| panic!("{sql}: {}", pg_err(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn compare(client: &mut postgres::Client, local: &str, dist: &str, expect_rows: i64) {
    let l = whole_rows(client, local);
    let d = whole_rows(client, dist);
    assert_eq!(l.len() as i64, expect_rows, "rows in {local}");
    assert_eq!(d.len(), l.len(), "row count of {dist} vs {local}");
    for (a, b) in l.iter().zip(&d) {
        assert!(
            a == b,
            "whole row differs:\n local: {}\n dist:  {}",
            &a[..a.len().min(2000)],
            &b[..b.len().min(2000)]
        );
    }
    // Column by column: each projection fetches one column only.
    for (col, _, _) in COLUMNS {
        let l = column_text(client, local, col);
        let d = column_text(client, dist, col);
        assert_eq!(l, d, "column {col}: {local} vs {dist}");
    }
}

#[test]
fn every_supported_type_round_trips_exactly() {
    let (_cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 4,
        ..Default::default()
    });
    let defs = column_defs();
    exec(
        &mut db,
        &format!(
            "CREATE TABLE types_local (id integer PRIMARY KEY, {defs});
             CREATE FOREIGN TABLE types_dist (id integer NOT NULL, {defs}) SERVER cluster;
             SELECT conductor.create_distributed_table('types_dist', 'id', shard_count => 8);
             CREATE FOREIGN TABLE types_dist_values (id integer NOT NULL, {defs}) SERVER cluster;
             SELECT conductor.create_distributed_table('types_dist_values', 'id', shard_count => 5);"
        ),
    );
    let (rows, n) = rows_sql(1);
    exec(
        &mut db,
        &format!(
            "INSERT INTO types_local (id, {}) VALUES {rows}",
            column_names()
        ),
    );
    // INSERT ... SELECT (batched) into one table ...
    exec(&mut db, "INSERT INTO types_dist SELECT * FROM types_local");
    // ... and one VALUES row at a time into the other (the single-row path),
    // copying from the local table so both get the very same values.
    for id in 1..=n {
        exec(
            &mut db,
            &format!("INSERT INTO types_dist_values SELECT * FROM types_local WHERE id = {id}"),
        );
    }

    // The text form of timestamptz depends on the session's TimeZone; compare
    // under zones on both sides of UTC, and with different DateStyles.
    for settings in [
        "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'",
        "SET TimeZone = 'America/Los_Angeles'; SET DateStyle = 'SQL, DMY'",
        "SET TimeZone = 'Asia/Kolkata'; SET DateStyle = 'Postgres, MDY'; SET extra_float_digits = 3",
    ] {
        exec(&mut db, settings);
        compare(&mut db, "types_local", "types_dist", n);
        compare(&mut db, "types_local", "types_dist_values", n);
    }
    exec(&mut db, "RESET ALL");

    // Binary results too (the postgres crate asks for binary format): the
    // bytes of a bytea, the raw floats, with their signs.
    let sign_local: Vec<(i32, Option<f64>, Option<f32>)> = db
        .query(
            "SELECT id, c_float8, c_real FROM types_local ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let sign_dist: Vec<(i32, Option<f64>, Option<f32>)> = db
        .query(
            "SELECT id, c_float8, c_real FROM types_dist ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let bits = |v: &[(i32, Option<f64>, Option<f32>)]| -> Vec<(i32, Option<u64>, Option<u32>)> {
        v.iter()
            .map(|(i, a, b)| (*i, a.map(f64::to_bits), b.map(f32::to_bits)))
            .collect()
    };
    assert_eq!(bits(&sign_local), bits(&sign_dist), "float bit patterns");
    let bytes: Vec<u8> = db
        .query_one("SELECT c_bytea FROM types_dist WHERE id = 3", &[])
        .unwrap()
        .get(0);
    assert_eq!(bytes, (0..=255u8).collect::<Vec<u8>>(), "bytes 0x00..0xff");
}

#[test]
fn unsupported_types_and_values_are_refused() {
    let (cluster, mut db) = Cluster::start_with_conductor(ClusterOptions {
        nodes: 2,
        ..Default::default()
    });
    exec(&mut db, "CREATE DOMAIN posint AS integer CHECK (VALUE > 0)");

    // Each unsupported column type is named in the error, nothing is created.
    for (n, (col, ty)) in [
        ("p", "point"),
        ("tags", "integer[]"),
        ("span", "interval"),
        ("dom", "posint"),
        ("t", "time"),
        ("addr", "inet"),
    ]
    .iter()
    .enumerate()
    {
        let table = format!("bad_type_{n}");
        exec(
            &mut db,
            &format!(
                "CREATE FOREIGN TABLE {table} (id bigint, ok text, {col} {ty}) SERVER cluster"
            ),
        );
        let e = expect_db_error(
            db.execute(
                "SELECT conductor.create_distributed_table($1::text::regclass, 'id')",
                &[&table],
            ),
            &format!("create with a {ty} column"),
        );
        assert_eq!(e.code().code(), "0A000", "{}", describe(&e));
        assert!(
            e.message().contains(&format!("\"{col}\"")),
            "error names the column {col}: {}",
            describe(&e)
        );
        assert!(
            !e.message().contains("\"ok\"") && !e.message().contains("\"id\""),
            "error names only the bad column: {}",
            describe(&e)
        );
        assert!(
            shard_tables_on_nodes(&cluster, &table).is_empty(),
            "no shard tables for {table}"
        );
        assert_eq!(catalog_rows_for_remote_name(&mut db, &table), (0, 0));
    }

    // A supported type that cannot be a shard key.
    exec(
        &mut db,
        "CREATE FOREIGN TABLE bad_key (id bigint, d date) SERVER cluster",
    );
    let e = expect_db_error(
        db.execute(
            "SELECT conductor.create_distributed_table('bad_key', 'd')",
            &[],
        ),
        "date shard key",
    );
    assert_eq!(e.code().code(), "0A000", "{}", describe(&e));
    assert!(e.message().contains("\"d\""), "{}", describe(&e));
    assert!(shard_tables_on_nodes(&cluster, "bad_key").is_empty());

    exec(
        &mut db,
        "CREATE FOREIGN TABLE floats (id bigint, r real, d double precision) SERVER cluster;
         SELECT conductor.create_distributed_table('floats', 'id', shard_count => 4);
         INSERT INTO floats VALUES (1, 1.5, 2.5);",
    );
    // NULL shard key refused.
    let e = expect_db_error(
        db.execute("INSERT INTO floats (id, r) VALUES (NULL, 1)", &[]),
        "NULL shard key",
    );
    assert_eq!(e.code().code(), "23502", "{}", describe(&e));
    assert_eq!(query_i64(&mut db, "SELECT count(*) FROM floats"), 1);
}
