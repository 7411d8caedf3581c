//! Executing Hrana stream requests on one SQLite connection.
//!
//! Pure functions of (connection, request): the same code serves the
//! worker-thread readers, the writer thread, streams and cursors.

use crate::errors::{self, code, from_sqlite};
use conductor_hrana::{
    Batch, BatchCond, BatchResult, Col, DescribeParam, DescribeResult, Error, NamedArg, Stmt,
    StmtResult, StreamRequest, StreamResponse, StreamResult, Value,
};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, Statement, StatementStatus};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Largest result (roughly, in bytes of values) an `execute` collects in
/// memory; a pipeline holds its whole response, so an accidental full scan
/// must not take the node's memory with it. Cursors have no such limit.
const MAX_RESULT_BYTES: usize = 256 << 20;

/// Most SQL texts one stream may store with `store_sql`.
const MAX_STORED_SQL: usize = 1000;

/// Per-stream state besides the connection: SQL texts stored with
/// `store_sql` (their scope is the stream) and whether `close` was seen.
#[derive(Default)]
pub struct StreamCtx {
    pub sqls: HashMap<i32, String>,
    pub closed: bool,
}

/// Runs every request of a pipeline in order (all of them, even after one
/// fails). `statements` counts executed SQL statements for /stats.
pub fn run_pipeline(
    conn: &Connection,
    ctx: &mut StreamCtx,
    requests: &[StreamRequest],
    statements: &AtomicU64,
) -> Vec<StreamResult> {
    requests
        .iter()
        .map(|req| match run_request(conn, ctx, req, statements) {
            Ok(response) => StreamResult::Ok { response },
            Err(error) => StreamResult::Error { error },
        })
        .collect()
}

fn run_request(
    conn: &Connection,
    ctx: &mut StreamCtx,
    req: &StreamRequest,
    statements: &AtomicU64,
) -> Result<StreamResponse, Error> {
    if ctx.closed {
        return Err(errors::error(
            code::STREAM_CLOSED,
            "the stream was closed by an earlier `close` request",
        ));
    }
    match req {
        StreamRequest::Close => {
            ctx.closed = true;
            Ok(StreamResponse::Close)
        }
        StreamRequest::Execute { stmt } => {
            statements.fetch_add(1, Ordering::Relaxed);
            execute(conn, &ctx.sqls, stmt).map(|result| StreamResponse::Execute { result })
        }
        StreamRequest::Batch { batch } => run_batch(conn, &ctx.sqls, batch, statements)
            .map(|result| StreamResponse::Batch { result }),
        StreamRequest::Sequence { sql, sql_id } => {
            let sql = sql_text(&ctx.sqls, sql.as_deref(), *sql_id)?;
            statements.fetch_add(1, Ordering::Relaxed);
            conn.execute_batch(sql).map_err(from_sqlite)?;
            Ok(StreamResponse::Sequence)
        }
        StreamRequest::Describe { sql, sql_id } => {
            let sql = sql_text(&ctx.sqls, sql.as_deref(), *sql_id)?;
            describe(conn, sql).map(|result| StreamResponse::Describe { result })
        }
        StreamRequest::StoreSql { sql_id, sql } => {
            if !ctx.sqls.contains_key(sql_id) && ctx.sqls.len() >= MAX_STORED_SQL {
                return Err(errors::error(
                    code::SQL_STORE_TOO_MANY,
                    format!("a stream may store at most {MAX_STORED_SQL} SQL texts"),
                ));
            }
            ctx.sqls.insert(*sql_id, sql.clone());
            Ok(StreamResponse::StoreSql)
        }
        StreamRequest::CloseSql { sql_id } => {
            ctx.sqls.remove(sql_id);
            Ok(StreamResponse::CloseSql)
        }
        StreamRequest::GetAutocommit => Ok(StreamResponse::GetAutocommit {
            is_autocommit: conn.is_autocommit(),
        }),
    }
}

/// The SQL of a statement: exactly one of `sql` and `sql_id`.
pub fn sql_text<'a>(
    sqls: &'a HashMap<i32, String>,
    sql: Option<&'a str>,
    sql_id: Option<i32>,
) -> Result<&'a str, Error> {
    match (sql, sql_id) {
        (Some(sql), None) => Ok(sql),
        (None, Some(id)) => sqls.get(&id).map(String::as_str).ok_or_else(|| {
            errors::error(
                code::SQL_NOT_FOUND,
                format!("no SQL text stored with sql_id {id} on this stream"),
            )
        }),
        (Some(_), Some(_)) => Err(errors::error(
            code::PROTOCOL_ERROR,
            "a statement has both `sql` and `sql_id`; send exactly one",
        )),
        (None, None) => Err(errors::error(
            code::PROTOCOL_ERROR,
            "a statement has neither `sql` nor `sql_id`",
        )),
    }
}

/// Prepares (from the connection's cache) and binds a statement.
pub fn prepare<'c>(
    conn: &'c Connection,
    sqls: &HashMap<i32, String>,
    stmt: &Stmt,
) -> Result<rusqlite::CachedStatement<'c>, Error> {
    let sql = sql_text(sqls, stmt.sql.as_deref(), stmt.sql_id)?;
    let mut prepared = conn.prepare_cached(sql).map_err(from_sqlite)?;
    bind(&mut prepared, &stmt.args, &stmt.named_args)?;
    Ok(prepared)
}

/// Binds positional then named arguments (a named one wins when both give
/// the same parameter). Every parameter must get a value and every argument
/// must have a parameter, as the spec requires.
fn bind(stmt: &mut Statement<'_>, args: &[Value], named: &[NamedArg]) -> Result<(), Error> {
    let count = stmt.parameter_count();
    if args.len() > count {
        return Err(errors::error(
            code::ARGS_INVALID,
            format!(
                "{} positional arguments given, the statement has {count} parameters",
                args.len()
            ),
        ));
    }
    for (i, v) in args.iter().enumerate() {
        stmt.raw_bind_parameter(i + 1, rusqlite::types::ToSqlOutput::Borrowed(value_ref(v)))
            .map_err(from_sqlite)?;
    }
    let mut bound_by_name = 0u64; // a bit per parameter index < 64 (fast path)
    let mut bound_set: Vec<usize> = Vec::new();
    for arg in named {
        let idx = named_index(stmt, &arg.name)?.ok_or_else(|| {
            errors::error(
                code::ARGS_INVALID,
                format!("the statement has no parameter named {:?}", arg.name),
            )
        })?;
        stmt.raw_bind_parameter(
            idx,
            rusqlite::types::ToSqlOutput::Borrowed(value_ref(&arg.value)),
        )
        .map_err(from_sqlite)?;
        if idx < 64 {
            bound_by_name |= 1 << idx;
        } else {
            bound_set.push(idx);
        }
    }
    for idx in args.len() + 1..=count {
        let named_ok = if idx < 64 {
            bound_by_name & (1 << idx) != 0
        } else {
            bound_set.contains(&idx)
        };
        if !named_ok {
            let name = stmt.parameter_name(idx).unwrap_or("?");
            return Err(errors::error(
                code::ARGS_INVALID,
                format!("no value given for parameter {idx} ({name})"),
            ));
        }
    }
    Ok(())
}

/// A named argument's parameter index; a name without SQLite's prefix
/// (`:`, `@`, `$`) is tried with each, as the spec asks servers to guess.
fn named_index(stmt: &Statement<'_>, name: &str) -> Result<Option<usize>, Error> {
    if name.starts_with([':', '@', '$', '?']) {
        return stmt.parameter_index(name).map_err(from_sqlite);
    }
    for prefix in [':', '@', '$'] {
        let full = format!("{prefix}{name}");
        if let Some(i) = stmt.parameter_index(&full).map_err(from_sqlite)? {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

fn value_ref(v: &Value) -> ValueRef<'_> {
    match v {
        Value::Null => ValueRef::Null,
        Value::Integer(i) => ValueRef::Integer(*i),
        Value::Float(f) => ValueRef::Real(*f),
        Value::Text(s) => ValueRef::Text(s.as_bytes()),
        Value::Blob(b) => ValueRef::Blob(b),
    }
}

/// A SQLite value as a Hrana value. Text that is not UTF-8 (SQLite does not
/// enforce it) is sent with replacement characters rather than failing. A
/// float infinity (SQLite can hold it) is kept: Protobuf carries it, and the
/// JSON encoding turns it into an error of its statement
/// ([`unrepresentable_in_json`]).
pub fn to_value(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Float(f),
        ValueRef::Text(t) => Value::Text(match std::str::from_utf8(t) {
            Ok(s) => s.to_owned(),
            Err(_) => String::from_utf8_lossy(t).into_owned(),
        }),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// The error of a statement whose result holds a value JSON has no form
/// for (a float infinity), when it is to be sent in JSON.
pub fn unrepresentable_in_json(row: &[Value]) -> Option<Error> {
    row.iter().find_map(|v| match v {
        Value::Float(f) if !f.is_finite() => Some(errors::error(
            code::VALUE_NOT_REPRESENTABLE,
            format!(
                "the result holds the float {}, which the JSON encoding cannot represent \
                 (the Protobuf encoding can)",
                if *f > 0.0 { "Infinity" } else { "-Infinity" }
            ),
        )),
        _ => None,
    })
}

pub fn columns(stmt: &Statement<'_>) -> Vec<Col> {
    stmt.columns()
        .map(|c| Col {
            name: Some(c.name().to_owned()),
            decltype: c.decl_type().map(str::to_owned),
        })
        .collect()
}

/// Runs one statement and collects its result.
pub fn execute(
    conn: &Connection,
    sqls: &HashMap<i32, String>,
    stmt: &Stmt,
) -> Result<StmtResult, Error> {
    let started = Instant::now();
    let mut prepared = prepare(conn, sqls, stmt)?;
    execute_prepared(conn, &mut prepared, stmt.want_rows.unwrap_or(true), started)
}

/// Runs a prepared, bound statement. The result carries the statistics
/// sqld reports (see [`Stats`]); `started` is when its preparation began.
pub fn execute_prepared(
    conn: &Connection,
    prepared: &mut Statement<'_>,
    want_rows: bool,
    started: Instant,
) -> Result<StmtResult, Error> {
    let before = conn.total_changes();
    // A cached statement keeps its counters from earlier runs.
    prepared.reset_status(StatementStatus::FullscanStep);
    let cols = columns(prepared);
    let ncols = cols.len();
    let mut rows_out = Vec::new();
    let mut stepped = 0u64;
    let mut size = 0usize;
    let mut rows = prepared.raw_query();
    while let Some(row) = rows.next().map_err(from_sqlite)? {
        stepped += 1;
        if want_rows {
            let mut out = Vec::with_capacity(ncols);
            for i in 0..ncols {
                let v = row.get_ref_unwrap(i);
                size += match v {
                    ValueRef::Text(b) | ValueRef::Blob(b) => b.len() + 32,
                    _ => 32,
                };
                out.push(to_value(v));
            }
            rows_out.push(out);
            if size > MAX_RESULT_BYTES {
                return Err(errors::error(
                    code::RESPONSE_TOO_LARGE,
                    format!(
                        "the result exceeds {} MiB; read large results through /v3/cursor, \
                         which streams them",
                        MAX_RESULT_BYTES >> 20
                    ),
                ));
            }
        }
    }
    drop(rows);
    let stats = Stats::measure(conn, prepared, before, stepped, started);
    Ok(StmtResult {
        cols,
        rows: rows_out,
        affected_row_count: affected_rows(conn, before),
        last_insert_rowid: Some(conn.last_insert_rowid().to_string()),
        rows_read: Some(stats.rows_read),
        rows_written: Some(stats.rows_written),
        query_duration_ms: Some(stats.query_duration_ms),
    })
}

/// The statistics of one statement, as sqld reports them in every
/// `StmtResult` (`rows_read`, `rows_written`, `query_duration_ms`).
///
/// sqld takes the row counts from counters of its own SQLite fork, which
/// plain SQLite does not keep, so they are measured here as:
/// - `rows_written`: rows the statement inserted, updated or deleted,
///   including through triggers and foreign-key actions (the growth of
///   `sqlite3_total_changes`); index entries are not counted.
/// - `rows_read`: an estimate, the largest of the rows the statement
///   returned, the rows it wrote, and the steps it took through full table
///   scans (`SQLITE_STMTSTATUS_FULLSCAN_STEP`); rows looked at through an
///   index and then discarded are not counted.
/// - `query_duration_ms`: wall time from preparing the statement to its
///   last row, in milliseconds with microsecond resolution.
pub struct Stats {
    pub rows_read: u64,
    pub rows_written: u64,
    pub query_duration_ms: f64,
}

impl Stats {
    /// Reads (and resets) the counters of `prepared`, which just ran to
    /// completion, returning `stepped` rows; `total_changes_before` is
    /// `total_changes()` from before it ran.
    pub fn measure(
        conn: &Connection,
        prepared: &Statement<'_>,
        total_changes_before: u64,
        stepped: u64,
        started: Instant,
    ) -> Stats {
        let rows_written = conn.total_changes().saturating_sub(total_changes_before);
        let fullscan = prepared.reset_status(StatementStatus::FullscanStep).max(0) as u64;
        Stats {
            rows_read: stepped.max(rows_written).max(fullscan),
            rows_written,
            query_duration_ms: duration_ms(started.elapsed()),
        }
    }
}

fn duration_ms(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// Rows changed by the statement that just ran, given `total_changes()`
/// from before it. `changes()` alone would repeat the count of an earlier
/// INSERT/UPDATE/DELETE after, say, a CREATE TABLE; `total_changes()` alone
/// would count rows changed by triggers.
pub fn affected_rows(conn: &Connection, total_changes_before: u64) -> u64 {
    if conn.total_changes() == total_changes_before {
        0
    } else {
        conn.changes()
    }
}

/// Outcome of the steps run so far, for evaluating conditions.
pub struct StepOutcomes {
    outcome: Vec<Option<bool>>, // None: skipped or not yet run; Some(ok?)
}

impl StepOutcomes {
    pub fn new(n: usize) -> Self {
        StepOutcomes {
            outcome: vec![None; n],
        }
    }

    pub fn record(&mut self, step: usize, ok: bool) {
        self.outcome[step] = Some(ok);
    }

    /// Evaluates a step's condition; a condition may only name earlier
    /// steps.
    pub fn eval(&self, cond: &BatchCond, current: usize, conn: &Connection) -> Result<bool, Error> {
        Ok(match cond {
            BatchCond::Ok { step } => self.step(*step, current)? == Some(true),
            BatchCond::Error { step } => self.step(*step, current)? == Some(false),
            BatchCond::Not { cond } => !self.eval(cond, current, conn)?,
            BatchCond::And { conds } => {
                for c in conds {
                    if !self.eval(c, current, conn)? {
                        return Ok(false);
                    }
                }
                true
            }
            BatchCond::Or { conds } => {
                for c in conds {
                    if self.eval(c, current, conn)? {
                        return Ok(true);
                    }
                }
                false
            }
            BatchCond::IsAutocommit => conn.is_autocommit(),
        })
    }

    fn step(&self, step: u32, current: usize) -> Result<Option<bool>, Error> {
        let step = step as usize;
        if step >= current {
            return Err(errors::error(
                code::BATCH_COND_INVALID,
                format!("the condition of step {current} refers to step {step}, which is not an earlier step"),
            ));
        }
        Ok(self.outcome[step])
    }
}

pub fn run_batch(
    conn: &Connection,
    sqls: &HashMap<i32, String>,
    batch: &Batch,
    statements: &AtomicU64,
) -> Result<BatchResult, Error> {
    let n = batch.steps.len();
    let mut outcomes = StepOutcomes::new(n);
    let mut result = BatchResult {
        step_results: Vec::with_capacity(n),
        step_errors: Vec::with_capacity(n),
    };
    for (i, step) in batch.steps.iter().enumerate() {
        if let Some(cond) = &step.condition {
            if !outcomes.eval(cond, i, conn)? {
                result.step_results.push(None);
                result.step_errors.push(None);
                continue;
            }
        }
        statements.fetch_add(1, Ordering::Relaxed);
        match execute(conn, sqls, &step.stmt) {
            Ok(r) => {
                outcomes.record(i, true);
                result.step_results.push(Some(r));
                result.step_errors.push(None);
            }
            Err(e) => {
                outcomes.record(i, false);
                result.step_results.push(None);
                result.step_errors.push(Some(e));
            }
        }
    }
    Ok(result)
}

fn describe(conn: &Connection, sql: &str) -> Result<DescribeResult, Error> {
    let stmt = conn.prepare_cached(sql).map_err(from_sqlite)?;
    let params = (1..=stmt.parameter_count())
        .map(|i| DescribeParam {
            name: stmt.parameter_name(i).map(str::to_owned),
        })
        .collect();
    Ok(DescribeResult {
        params,
        cols: columns(&stmt),
        is_explain: stmt.is_explain() != 0,
        is_readonly: stmt.readonly(),
    })
}

/// Whether a statement may run on a `query_only` worker reader: it must be
/// a plain query (SELECT/WITH/VALUES; transaction control is "read-only" to
/// SQLite but changes connection state) and SQLite must agree it is
/// read-only (a `WITH … INSERT` is not).
pub fn looks_like_query(sql: &str) -> bool {
    let s = sql
        .trim_start_matches(|c: char| c.is_ascii_whitespace() || c == '(')
        .as_bytes();
    let starts = |kw: &[u8]| s.len() >= kw.len() && s[..kw.len()].eq_ignore_ascii_case(kw);
    starts(b"select") || starts(b"with") || starts(b"values")
}

/// Whether `sql` only ends a transaction or a savepoint (COMMIT, END,
/// ROLLBACK, RELEASE): quick for a connection that holds the write lock.
pub fn ends_transaction(sql: &str) -> bool {
    let s = sql
        .trim_start_matches(|c: char| c.is_ascii_whitespace())
        .as_bytes();
    let starts = |kw: &[u8]| {
        s.len() >= kw.len()
            && s[..kw.len()].eq_ignore_ascii_case(kw)
            && s.get(kw.len())
                .is_none_or(|c| !c.is_ascii_alphanumeric() && *c != b'_')
    };
    !sql.contains(';')
        && (starts(b"commit") || starts(b"end") || starts(b"rollback") || starts(b"release"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transaction_end_detection() {
        assert!(ends_transaction("COMMIT"));
        assert!(ends_transaction(" rollback to s2"));
        assert!(ends_transaction("RELEASE s1"));
        assert!(ends_transaction("END TRANSACTION"));
        assert!(!ends_transaction("COMMIT; DELETE FROM t"));
        assert!(!ends_transaction("ENDx"));
        assert!(!ends_transaction("UPDATE t SET v = 1"));
        assert!(!ends_transaction("-- c\nCOMMIT"));
    }

    #[test]
    fn query_detection() {
        assert!(looks_like_query("SELECT 1"));
        assert!(looks_like_query("  (select 1)"));
        assert!(looks_like_query("with x as (select 1) select * from x"));
        assert!(looks_like_query("VALUES (1)"));
        assert!(!looks_like_query("INSERT INTO t VALUES (1)"));
        assert!(!looks_like_query("BEGIN"));
        assert!(!looks_like_query("sel"));
        assert!(!looks_like_query("-- c\nSELECT 1"));
    }
}
