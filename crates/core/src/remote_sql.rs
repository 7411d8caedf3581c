//! SQLite SQL text for the shard tables on the nodes.
//!
//! Two rules make this safe against hostile names and values: every
//! identifier is double-quoted with embedded `"` doubled, and no value ever
//! appears in the text: values travel as `?` arguments of the Hrana
//! statement. The property tests at the bottom check that the statement's
//! structure never depends on the identifiers.

use crate::types::ColumnType;
use std::fmt::Write as _;

/// SQLite's default `SQLITE_MAX_VARIABLE_NUMBER` (since 3.32): the most `?`
/// one statement may carry.
pub const SQLITE_MAX_HOST_PARAMETERS: usize = 32766;

/// `name` as a double-quoted SQLite identifier, `"` doubled. A NUL would end
/// the SQL text early inside SQLite, so it is replaced by U+FFFD (Postgres
/// names cannot contain NUL anyway).
pub fn quote_ident(name: &str) -> String {
    let mut s = String::with_capacity(name.len() + 2);
    s.push('"');
    for c in name.chars() {
        match c {
            '"' => s.push_str("\"\""),
            '\0' => s.push('\u{FFFD}'),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// A column reference qualified with its table: `"users_0007"."email"`.
/// SQLite reads an unqualified double-quoted name that matches no column as
/// a string literal; a qualified one is always a column reference (or an
/// error), so every column a statement reads is written this way.
pub fn qualified_column(table: &str, column: &str) -> String {
    let mut s = quote_ident(table);
    s.push('.');
    s.push_str(&quote_ident(column));
    s
}

/// Name of the table holding shard `shard_id` of `base` on its node,
/// e.g. `users_0007` (deterministic; docs/ARCHITECTURE.md, Shard tables).
pub fn shard_table_name(base: &str, shard_id: u32) -> String {
    format!("{base}_{shard_id:04}")
}

/// `CREATE TABLE` for a shard table (never IF NOT EXISTS: a leftover table
/// with old rows must be an error, not silently adopted). `columns` are
/// (name, type, NOT NULL); `primary_key` may be empty (no key).
pub fn create_table_sql(
    table: &str,
    columns: &[(&str, ColumnType, bool)],
    primary_key: &[&str],
) -> String {
    let mut sql = format!("CREATE TABLE {} (", quote_ident(table));
    for (i, (name, ty, not_null)) in columns.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&quote_ident(name));
        let decltype = ty.sqlite_decltype();
        if !decltype.is_empty() {
            sql.push(' ');
            sql.push_str(decltype);
        }
        if *not_null {
            sql.push_str(" NOT NULL");
        }
    }
    if !primary_key.is_empty() {
        if !columns.is_empty() {
            sql.push_str(", ");
        }
        sql.push_str("PRIMARY KEY (");
        push_list(&mut sql, primary_key);
        sql.push(')');
    }
    sql.push(')');
    sql
}

/// An index every shard table of a distributed table carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardIndexDef {
    /// The index's name in the catalog; on a node it is
    /// `<shard table>_<name>` (index names are per database in SQLite).
    pub name: String,
    pub columns: Vec<String>,
    pub unique: bool,
}

/// The name of an index on one shard table.
pub fn shard_index_name(table: &str, index: &str) -> String {
    format!("{table}_{index}")
}

/// `CREATE [UNIQUE] INDEX` of a shard index on one shard table.
pub fn create_index_sql(table: &str, index: &ShardIndexDef) -> String {
    let mut sql = format!(
        "CREATE {}INDEX {} ON {} (",
        if index.unique { "UNIQUE " } else { "" },
        quote_ident(&shard_index_name(table, &index.name)),
        quote_ident(table)
    );
    let cols: Vec<&str> = index.columns.iter().map(String::as_str).collect();
    push_list(&mut sql, &cols);
    sql.push(')');
    sql
}

/// `DROP INDEX IF EXISTS` of a shard index on one shard table.
pub fn drop_index_sql(table: &str, index: &str) -> String {
    format!(
        "DROP INDEX IF EXISTS {}",
        quote_ident(&shard_index_name(table, index))
    )
}

/// A read of the schema table, run before DDL on a connection another one
/// may have changed the schema from: SQLite notices the changed schema
/// cookie on it and reloads its cached schema. `ALTER TABLE … RENAME
/// COLUMN` checks the column against that cache while it is parsed, before
/// the cookie is checked, so a stale cache would refuse an existing column.
pub const REFRESH_SCHEMA_SQL: &str = "SELECT count(*) FROM sqlite_master";

/// `DROP TABLE IF EXISTS` for a shard table.
pub fn drop_table_sql(table: &str) -> String {
    format!("DROP TABLE IF EXISTS {}", quote_ident(table))
}

/// `SELECT cols FROM table [WHERE where_sql]`. Zero columns selects `NULL`
/// (one column per row), which is what `count(*)` needs. `where_sql` is a
/// fragment built by the router: identifiers quoted, values as `?`.
pub fn select_sql(table: &str, columns: &[&str], where_sql: Option<&str>) -> String {
    let mut sql = String::from("SELECT ");
    if columns.is_empty() {
        sql.push_str("NULL");
    } else {
        push_qualified_list(&mut sql, table, columns);
    }
    let _ = write!(sql, " FROM {}", quote_ident(table));
    if let Some(w) = where_sql {
        let _ = write!(sql, " WHERE {w}");
    }
    sql
}

/// Multi-row `INSERT INTO table (cols) VALUES (?, …), (?, …)` for `rows`
/// rows; arguments go row by row. Keep `rows <= max_rows_per_insert(ncols)`.
/// With no columns it is `INSERT … DEFAULT VALUES` (one row).
pub fn insert_sql(table: &str, columns: &[&str], rows: usize) -> String {
    let mut sql = format!("INSERT INTO {} ", quote_ident(table));
    if columns.is_empty() {
        sql.push_str("DEFAULT VALUES");
        return sql;
    }
    sql.push('(');
    push_list(&mut sql, columns);
    sql.push_str(") VALUES ");
    let mut tuple = String::with_capacity(columns.len() * 3 + 2);
    tuple.push('(');
    for i in 0..columns.len() {
        tuple.push_str(if i == 0 { "?" } else { ", ?" });
    }
    tuple.push(')');
    sql.reserve(rows * (tuple.len() + 2));
    for r in 0..rows {
        if r > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&tuple);
    }
    sql
}

/// [`insert_sql`] whose rows are skipped, not refused, when they conflict
/// with a row already there (a duplicate primary key): `… ON CONFLICT DO
/// NOTHING`. Unlike `INSERT OR IGNORE` it skips only uniqueness conflicts;
/// a NOT NULL violation still fails the statement, as in Postgres.
pub fn insert_do_nothing_sql(table: &str, columns: &[&str], rows: usize) -> String {
    let mut sql = insert_sql(table, columns, rows);
    sql.push_str(" ON CONFLICT DO NOTHING");
    sql
}

/// `SELECT count(*) FROM table`: a shard's row count (for ANALYZE).
pub fn count_sql(table: &str) -> String {
    format!("SELECT count(*) FROM {}", quote_ident(table))
}

/// `SELECT cols FROM table ORDER BY random() LIMIT ?`: a uniform random
/// sample of a shard's rows (for ANALYZE); the limit is the argument.
pub fn sample_sql(table: &str, columns: &[&str]) -> String {
    let mut sql = select_sql(table, columns, None);
    sql.push_str(" ORDER BY random() LIMIT ?");
    sql
}

/// A SELECT that has no LIMIT of its own, asking for at most `rows` rows:
/// ` LIMIT ?` appended, the count its last argument (the statement's
/// arguments are positional, so the new `?` is the last one).
pub fn with_row_limit(stmt: &conductor_hrana::Stmt, rows: u64) -> conductor_hrana::Stmt {
    let mut limited = stmt.clone();
    if let Some(sql) = limited.sql.as_mut() {
        sql.push_str(" LIMIT ?");
    }
    limited.args.push(conductor_hrana::Value::Integer(
        rows.min(i64::MAX as u64) as i64
    ));
    limited
}

/// `column IN (SELECT value FROM json_each(?))`: an IN list of any length
/// as one argument, a JSON array, so a list never runs into SQLite's
/// host-parameter limit. `json_each` yields integers as INTEGER and strings
/// as TEXT, and its `value` column has no affinity, so each element
/// compares with the column exactly as a `?` argument of the same value
/// would (the column's affinity and collation apply).
pub fn in_json_sql(column_ref: &str) -> String {
    format!("{column_ref} IN (SELECT value FROM json_each(?))")
}

/// Most rows one [`insert_sql`] statement may carry with `ncols` columns,
/// under SQLite's host-parameter limit (at least 1).
pub fn max_rows_per_insert(ncols: usize) -> usize {
    (SQLITE_MAX_HOST_PARAMETERS / ncols.max(1)).max(1)
}

fn push_qualified_list(sql: &mut String, table: &str, names: &[&str]) {
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&qualified_column(table, n));
    }
}

fn push_list(sql: &mut String, names: &[&str]) {
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&quote_ident(n));
    }
}

/// `UPDATE table SET a = <value sql>, … [WHERE where_sql] [RETURNING
/// cols]`: the SET values' arguments come first, the WHERE clause's follow.
pub fn update_sql(
    table: &str,
    assignments: &[(&str, String)],
    where_sql: Option<&str>,
    returning: &[&str],
) -> String {
    let mut sql = format!("UPDATE {} SET ", quote_ident(table));
    for (i, (c, value)) in assignments.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        let _ = write!(sql, "{} = {value}", quote_ident(c));
    }
    if let Some(w) = where_sql {
        let _ = write!(sql, " WHERE {w}");
    }
    if !returning.is_empty() {
        sql.push_str(" RETURNING ");
        push_qualified_list(&mut sql, table, returning);
    }
    sql
}

/// `DELETE FROM table [WHERE where_sql] [RETURNING cols]`.
pub fn delete_sql(table: &str, where_sql: Option<&str>, returning: &[&str]) -> String {
    let mut sql = format!("DELETE FROM {}", quote_ident(table));
    if let Some(w) = where_sql {
        let _ = write!(sql, " WHERE {w}");
    }
    if !returning.is_empty() {
        sql.push_str(" RETURNING ");
        push_qualified_list(&mut sql, table, returning);
    }
    sql
}

/// `"t"."a" = ? AND "t"."b" = ?`: a row's identity by its key columns.
pub fn key_match_sql(table: &str, columns: &[&str]) -> String {
    columns
        .iter()
        .map(|c| format!("{} = ?", qualified_column(table, c)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("users"), r#""users""#);
        assert_eq!(quote_ident(r#"a"b"#), r#""a""b""#);
        assert_eq!(quote_ident(""), r#""""#);
        assert_eq!(quote_ident("a\0b"), "\"a\u{FFFD}b\"");
    }

    #[test]
    fn shard_names() {
        assert_eq!(shard_table_name("users", 7), "users_0007");
        assert_eq!(shard_table_name("users", 12345), "users_12345");
    }

    #[test]
    fn statements() {
        assert_eq!(
            create_table_sql(
                "users_0001",
                &[
                    ("id", ColumnType::Int8, true),
                    ("email", ColumnType::Text, false)
                ],
                &["id"],
            ),
            r#"CREATE TABLE "users_0001" ("id" INTEGER NOT NULL, "email" TEXT, PRIMARY KEY ("id"))"#
        );
        assert_eq!(
            create_table_sql("t", &[("x", ColumnType::Uuid, false)], &[]),
            r#"CREATE TABLE "t" ("x" TEXT)"#
        );
        assert_eq!(
            create_table_sql("t", &[("f", ColumnType::Float8, true)], &[]),
            r#"CREATE TABLE "t" ("f" NOT NULL)"#
        );
        assert_eq!(drop_table_sql("t"), r#"DROP TABLE IF EXISTS "t""#);
        assert_eq!(select_sql("t", &[], None), r#"SELECT NULL FROM "t""#);
        assert_eq!(
            select_sql("t", &["a", "b"], Some(r#""t"."a" = ?"#)),
            r#"SELECT "t"."a", "t"."b" FROM "t" WHERE "t"."a" = ?"#
        );
        assert_eq!(
            insert_sql("t", &["a", "b"], 2),
            r#"INSERT INTO "t" ("a", "b") VALUES (?, ?), (?, ?)"#
        );
        assert_eq!(insert_sql("t", &[], 1), r#"INSERT INTO "t" DEFAULT VALUES"#);
    }

    #[test]
    fn insert_limits() {
        assert_eq!(max_rows_per_insert(0), SQLITE_MAX_HOST_PARAMETERS);
        assert_eq!(max_rows_per_insert(2), 16383);
        assert_eq!(max_rows_per_insert(40_000), 1);
        let n = max_rows_per_insert(3);
        let sql = insert_sql("t", &["a", "b", "c"], n);
        assert!(sql.matches('?').count() <= SQLITE_MAX_HOST_PARAMETERS);
    }

    /// Replace every quoted identifier by `I`, scanning like SQLite's
    /// tokenizer would; what remains is the statement's structure.
    fn skeleton(sql: &str) -> String {
        let mut out = String::new();
        let mut chars = sql.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '"' {
                out.push(c);
                continue;
            }
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                    }
                    Some('"') => break,
                    Some(_) => {}
                    None => panic!("unterminated identifier in {sql}"),
                }
            }
            out.push('I');
        }
        out
    }

    fn hostile() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z\"';\\-\\\\ ()?*/\\n\\t\u{0}é🦀\u{202e}]{0,12}",
            Just("\"; DROP TABLE x; --".to_string()),
            Just("a\" , \"b".to_string()),
            Just("?".to_string()),
            any::<String>(),
        ]
    }

    proptest! {
        #[test]
        fn structure_never_depends_on_identifiers(
            t in hostile(),
            a in hostile(),
            b in hostile(),
            rows in 1usize..4,
        ) {
            let create = create_table_sql(
                &t, &[(&a, ColumnType::Int8, true), (&b, ColumnType::Text, false)], &[&a]);
            prop_assert_eq!(
                skeleton(&create),
                "CREATE TABLE I (I INTEGER NOT NULL, I TEXT, PRIMARY KEY (I))"
            );
            prop_assert_eq!(skeleton(&drop_table_sql(&t)), "DROP TABLE IF EXISTS I");
            prop_assert_eq!(skeleton(&select_sql(&t, &[&a, &b], None)), "SELECT I.I, I.I FROM I");
            let ins = insert_sql(&t, &[&a, &b], rows);
            let want = format!("INSERT INTO I (I, I) VALUES {}", vec!["(?, ?)"; rows].join(", "));
            prop_assert_eq!(skeleton(&ins), want);
            // The only `?` are placeholders, outside identifiers.
            prop_assert_eq!(skeleton(&ins).matches('?').count(), rows * 2);
            prop_assert!(!create.contains('\0'));
        }
    }

    #[test]
    fn update_and_delete_statements() {
        assert_eq!(
            update_sql(
                "t_0001",
                &[("a", "?".into()), ("b\"c", "?".into())],
                Some(&key_match_sql("t_0001", &["id"])),
                &[]
            ),
            r#"UPDATE "t_0001" SET "a" = ?, "b""c" = ? WHERE "t_0001"."id" = ?"#
        );
        assert_eq!(
            delete_sql("t_0001", Some("\"id\" = ?"), &["id", "v"]),
            r#"DELETE FROM "t_0001" WHERE "id" = ? RETURNING "t_0001"."id", "t_0001"."v""#
        );
        assert_eq!(delete_sql("t", None, &[]), r#"DELETE FROM "t""#);
    }
}
