//! SQL functions conductor-node adds to SQLite: the row checksum shard
//! moves compare copies by, and exact aggregates over
//! numeric values stored as Postgres' numeric text (see
//! `conductor_hrana::decimal`), so a router can push `sum`, `avg`, `min`
//! and `max` of numeric to the node and merge the partials exactly, and
//! the exact sum and difference of two such values assigned to a
//! `numeric(p, s)` column, so `SET amount = amount + 1` runs on the node.
//! Each returns the text form of its result (NULL over no value; NULLs
//! are skipped) and fails on a value that is not a decimal, never
//! guessing one. A plain sqld lacks them; conductor probes a node for
//! them when the node is added and pushes these aggregates only to nodes
//! that answered.

use conductor_hrana::checksum::{RowHasher, CHECKSUM_FUNCTION, FREE_BYTES_FUNCTION};
use conductor_hrana::decimal::{
    Decimal, DecimalSum, ADD_FUNCTION as DECIMAL_ADD, FIELD_OVERFLOW, MAX_FUNCTION as DECIMAL_MAX,
    MIN_FUNCTION as DECIMAL_MIN, SUB_FUNCTION as DECIMAL_SUB, SUM_FUNCTION as DECIMAL_SUM,
};
use rusqlite::functions::{Aggregate, Context, FunctionFlags};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, Error, Result};
use std::cmp::Ordering;

fn decimal_arg(ctx: &Context<'_>, function: &str) -> Result<Option<Decimal>> {
    decimal_arg_at(ctx, 0, function)
}

fn decimal_arg_at(ctx: &Context<'_>, index: usize, function: &str) -> Result<Option<Decimal>> {
    let parsed = match ctx.get_raw(index) {
        ValueRef::Null => return Ok(None),
        ValueRef::Text(t) => std::str::from_utf8(t).ok().and_then(Decimal::parse),
        ValueRef::Integer(i) => Some(Decimal::from_i64(i)),
        ValueRef::Real(_) | ValueRef::Blob(_) => None,
    };
    parsed
        .map(Some)
        .ok_or_else(|| Error::UserFunctionError(format!("{function}: not a decimal value").into()))
}

struct Sum;

impl Aggregate<DecimalSum, Option<String>> for Sum {
    fn init(&self, _: &mut Context<'_>) -> Result<DecimalSum> {
        Ok(DecimalSum::default())
    }

    fn step(&self, ctx: &mut Context<'_>, acc: &mut DecimalSum) -> Result<()> {
        if let Some(v) = decimal_arg(ctx, DECIMAL_SUM)? {
            acc.add(&v);
        }
        Ok(())
    }

    fn finalize(&self, _: &mut Context<'_>, acc: Option<DecimalSum>) -> Result<Option<String>> {
        Ok(acc.and_then(|a| a.value()).map(|v| v.to_string()))
    }
}

/// min (keep = Less) or max (keep = Greater). Of equal values of different
/// scales (`0.00`, `0.000`) the later is kept, as Postgres'
/// `numeric_smaller` and `numeric_larger` do, so a shard's rows give the
/// value Postgres would show over the same rows in the same order.
struct Extreme {
    keep: Ordering,
    name: &'static str,
}

impl Aggregate<Option<Decimal>, Option<String>> for Extreme {
    fn init(&self, _: &mut Context<'_>) -> Result<Option<Decimal>> {
        Ok(None)
    }

    fn step(&self, ctx: &mut Context<'_>, acc: &mut Option<Decimal>) -> Result<()> {
        if let Some(v) = decimal_arg(ctx, self.name)? {
            if acc.as_ref().is_none_or(|a| v.cmp(a) != self.keep.reverse()) {
                *acc = Some(v);
            }
        }
        Ok(())
    }

    fn finalize(
        &self,
        _: &mut Context<'_>,
        acc: Option<Option<Decimal>>,
    ) -> Result<Option<String>> {
        Ok(acc.flatten().map(|v| v.to_string()))
    }
}

/// `a ± b` (NULL if either is NULL), then assigned to `numeric(precision,
/// scale)` unless precision is NULL.
fn add_or_subtract(ctx: &Context<'_>, subtract: bool) -> Result<Option<String>> {
    let name = if subtract { DECIMAL_SUB } else { DECIMAL_ADD };
    let (Some(a), Some(b)) = (decimal_arg_at(ctx, 0, name)?, decimal_arg_at(ctx, 1, name)?) else {
        return Ok(None);
    };
    let b = if subtract { b.negated() } else { b };
    let result = a.plus(&b);
    let typmod: (Option<i64>, Option<i64>) = (ctx.get(2)?, ctx.get(3)?);
    let result = match typmod {
        (None, _) => result,
        (Some(p), Some(s)) if 0 <= s && s <= p && p <= 1000 => {
            result.with_typmod(p as u32, s as u32).map_err(|detail| {
                Error::UserFunctionError(format!("{FIELD_OVERFLOW}: {detail}").into())
            })?
        }
        _ => {
            return Err(Error::UserFunctionError(
                format!("{name}: unsupported precision and scale {typmod:?}").into(),
            ))
        }
    };
    Ok(Some(result.to_string()))
}

/// `conductor_row_checksum(col, …)`: the sum a shard move compares both
/// copies by (`conductor_hrana::checksum`), computed without sending rows.
struct RowChecksum;

impl Aggregate<u64, i64> for RowChecksum {
    fn init(&self, _: &mut Context<'_>) -> Result<u64> {
        Ok(0)
    }

    fn step(&self, ctx: &mut Context<'_>, acc: &mut u64) -> Result<()> {
        let mut h = RowHasher::default();
        for i in 0..ctx.len() {
            match ctx.get_raw(i) {
                ValueRef::Null => h.null(),
                ValueRef::Integer(v) => h.integer(v),
                ValueRef::Real(v) => h.float(v),
                ValueRef::Text(t) => h.text(t),
                ValueRef::Blob(b) => h.blob(b),
            }
        }
        *acc = acc.wrapping_add(h.finish());
        Ok(())
    }

    fn finalize(&self, _: &mut Context<'_>, acc: Option<u64>) -> Result<i64> {
        Ok(acc.unwrap_or(0) as i64)
    }
}

/// Bytes available to unprivileged writers on the file system holding
/// `path`, less `reserve`; None when the system cannot tell.
fn free_bytes(path: &std::path::Path, reserve: u64) -> Option<i64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs reads a NUL-terminated path and writes only into the
    // struct it is given, which lives across the call.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let available = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
    Some(available.saturating_sub(reserve).min(i64::MAX as u64) as i64)
}

/// Registers conductor-node's SQL functions on a connection of the
/// database file; `reserve_bytes` is the space `conductor_free_bytes()`
/// keeps out of its answer (`--reserve-bytes`).
pub fn register(conn: &Connection, reserve_bytes: u64) -> Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    // The database file's directory (an in-memory database has none: NULL).
    let data_dir = conn.path().filter(|p| !p.is_empty()).map(|p| {
        std::path::Path::new(p)
            .parent()
            .unwrap_or(std::path::Path::new("."))
            .to_path_buf()
    });
    conn.create_scalar_function(
        FREE_BYTES_FUNCTION,
        0,
        FunctionFlags::SQLITE_UTF8,
        move |_| {
            Ok(data_dir
                .as_deref()
                .and_then(|d| free_bytes(d, reserve_bytes)))
        },
    )?;
    conn.create_scalar_function(DECIMAL_ADD, 4, flags, |ctx| add_or_subtract(ctx, false))?;
    conn.create_scalar_function(DECIMAL_SUB, 4, flags, |ctx| add_or_subtract(ctx, true))?;
    conn.create_aggregate_function(CHECKSUM_FUNCTION, -1, flags, RowChecksum)?;
    conn.create_aggregate_function(DECIMAL_SUM, 1, flags, Sum)?;
    conn.create_aggregate_function(
        DECIMAL_MIN,
        1,
        flags,
        Extreme {
            keep: Ordering::Less,
            name: DECIMAL_MIN,
        },
    )?;
    conn.create_aggregate_function(
        DECIMAL_MAX,
        1,
        flags,
        Extreme {
            keep: Ordering::Greater,
            name: DECIMAL_MAX,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_checksum_in_sql_is_the_sum_of_row_hashes() {
        use conductor_hrana::checksum::row_hash;
        use conductor_hrana::Value;
        let conn = Connection::open_in_memory().unwrap();
        register(&conn, 0).unwrap();
        conn.execute_batch(
            "CREATE TABLE t (a, b);
             INSERT INTO t VALUES (1, 'x'), (2.5, NULL), ('1', x'00ff'), (-7, 'é');",
        )
        .unwrap();
        let rows = [
            [Value::Integer(1), Value::Text("x".into())],
            [Value::Float(2.5), Value::Null],
            [Value::Text("1".into()), Value::Blob(vec![0, 255])],
            [Value::Integer(-7), Value::Text("é".into())],
        ];
        let want = rows
            .iter()
            .fold(0u64, |acc, r| acc.wrapping_add(row_hash(r)));
        let got: i64 = conn
            .query_row("SELECT conductor_row_checksum(a, b) FROM t", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(got as u64, want);
        let none: i64 = conn
            .query_row(
                "SELECT conductor_row_checksum(a, b) FROM t WHERE 0",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(none, 0);
    }

    fn one(conn: &Connection, sql: &str) -> Option<String> {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn free_bytes_of_the_database_file_system() {
        let dir = std::env::temp_dir().join(format!("conductor-free-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("db.sqlite");
        let free = |reserve| {
            let conn = Connection::open(&path).unwrap();
            register(&conn, reserve).unwrap();
            conn.query_row("SELECT conductor_free_bytes()", [], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .unwrap()
        };
        let all = free(0).expect("a real file system answers");
        assert!(all > 0);
        assert_eq!(free(u64::MAX), Some(0), "the reserve is kept out");
        let memory = Connection::open_in_memory().unwrap();
        register(&memory, 0).unwrap();
        let none: Option<i64> = memory
            .query_row("SELECT conductor_free_bytes()", [], |r| r.get(0))
            .unwrap();
        assert_eq!(none, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn decimal_sum_and_difference_in_sql() {
        let conn = Connection::open_in_memory().unwrap();
        register(&conn, 0).unwrap();
        assert_eq!(
            one(&conn, "SELECT conductor_decimal_add('1.25', 1, 12, 2)").as_deref(),
            Some("2.25")
        );
        assert_eq!(
            one(
                &conn,
                "SELECT conductor_decimal_sub('1', '0.125', NULL, NULL)"
            )
            .as_deref(),
            Some("0.875")
        );
        assert_eq!(
            one(&conn, "SELECT conductor_decimal_add(NULL, 1, 12, 2)"),
            None
        );
        let err = conn
            .query_row(
                "SELECT conductor_decimal_add('9.99', '0.01', 3, 2)",
                [],
                |r| r.get::<_, String>(0),
            )
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(FIELD_OVERFLOW), "{err}");
    }

    #[test]
    fn decimal_aggregates_in_sql() {
        let conn = Connection::open_in_memory().unwrap();
        register(&conn, 0).unwrap();
        conn.execute_batch(
            "CREATE TABLE t (g INTEGER, x TEXT);
             INSERT INTO t VALUES (1, '1.50'), (1, '-0.255'), (1, NULL),
               (2, '123456789012345678901234567890.1'), (2, '0.000000000000000000009'),
               (3, 'NaN'), (3, '-Infinity'), (3, '7'), (4, NULL),
               (6, '0.00'), (6, '0.000'), (6, '-1.0'), (6, '-1');",
        )
        .unwrap();
        let q = |f: &str, g: i64| one(&conn, &format!("SELECT {f}(x) FROM t WHERE g = {g}"));
        assert_eq!(q(DECIMAL_SUM, 1).as_deref(), Some("1.245"));
        assert_eq!(
            q(DECIMAL_SUM, 2).as_deref(),
            Some("123456789012345678901234567890.100000000000000000009")
        );
        assert_eq!(q(DECIMAL_SUM, 3).as_deref(), Some("NaN"));
        assert_eq!(q(DECIMAL_SUM, 4), None);
        assert_eq!(q(DECIMAL_SUM, 5), None);
        assert_eq!(q(DECIMAL_MIN, 1).as_deref(), Some("-0.255"));
        assert_eq!(q(DECIMAL_MAX, 1).as_deref(), Some("1.50"));
        assert_eq!(q(DECIMAL_MIN, 3).as_deref(), Some("-Infinity"));
        assert_eq!(q(DECIMAL_MAX, 3).as_deref(), Some("NaN"));
        assert_eq!(q(DECIMAL_MAX, 4), None);
        // Equal values: the later one, as Postgres keeps it.
        assert_eq!(q(DECIMAL_MIN, 6).as_deref(), Some("-1"));
        assert_eq!(q(DECIMAL_MAX, 6).as_deref(), Some("0.000"));
        assert_eq!(
            one(
                &conn,
                "SELECT conductor_decimal_sum(x) FILTER (WHERE g = 1) FROM t"
            )
            .as_deref(),
            Some("1.245")
        );
        let err = conn
            .query_row("SELECT conductor_decimal_sum('1e5')", [], |r| {
                r.get::<_, Option<String>>(0)
            })
            .unwrap_err();
        assert!(err.to_string().contains("not a decimal"), "{err}");
        assert_eq!(
            one(&conn, "SELECT conductor_decimal_sum(2)").as_deref(),
            Some("2")
        );
    }
}
