//! An UPDATE whose new value depends on the row (`SET n = n + 1`,
//! `SET s = s || 'x'`) runs on the node as SQL: these run the statements a
//! plan sends on plain SQLite and compare with Postgres' rules for the
//! same expression — integer results outside the column type's range are
//! an error ("integer overflow" on the node), never a stored value, and
//! NULL operands give NULL.

use conductor_core::plan::{ArithOp, SetExpr, ShardPlan, StatementKind};
use conductor_core::topology::Topology;
use conductor_core::types::ColumnType;
use conductor_hrana::Value;

mod plain_sqlite;
use plain_sqlite::{one_shard_table, to_sqlite};

fn topology() -> Topology {
    one_shard_table(&[
        ("id", ColumnType::Int8),
        ("n", ColumnType::Int4),
        ("s", ColumnType::Text),
    ])
}

/// Run `SET column = expr(operand)` on the one row holding `start`;
/// the stored value, or the node's error.
fn run(
    column: usize,
    expr: SetExpr,
    start: rusqlite::types::Value,
    operand: Value,
) -> Result<rusqlite::types::Value, String> {
    let db = rusqlite::Connection::open_in_memory().unwrap();
    db.execute_batch("CREATE TABLE t_0000 (id INTEGER PRIMARY KEY, n INTEGER, s TEXT)")
        .unwrap();
    let name = ["id", "n", "s"][column];
    db.execute(
        &format!("INSERT INTO t_0000 (id, {name}) VALUES (1, ?)"),
        [start],
    )
    .unwrap();
    let plan = ShardPlan::build(
        &topology(),
        &[],
        &[],
        &StatementKind::Update {
            set: vec![column],
            exprs: vec![expr],
            values: vec![operand],
            returning: false,
        },
    )
    .unwrap();
    let stmt = &plan.statements[0].stmt;
    let args: Vec<rusqlite::types::Value> = stmt.args.iter().map(to_sqlite).collect();
    db.execute(
        stmt.sql.as_deref().unwrap(),
        rusqlite::params_from_iter(args),
    )
    .map_err(|e| e.to_string())?;
    Ok(db
        .query_row(&format!("SELECT {name} FROM t_0000"), [], |r| r.get(0))
        .unwrap())
}

#[test]
fn integer_arithmetic_stays_in_range_or_fails() {
    use rusqlite::types::Value as S;
    // smallint, integer, bigint
    for (min, max) in [
        (i16::MIN as i64, i16::MAX as i64),
        (i32::MIN as i64, i32::MAX as i64),
        (i64::MIN, i64::MAX),
    ] {
        let starts = [0, 1, -1, max, min, max - 5, min + 5, 1 << 14];
        let operands = [0, 1, -1, 7, -7, max, min, i64::MAX, i64::MIN, 1 << 40];
        for op in [ArithOp::Add, ArithOp::Subtract] {
            for column_first in [true, false] {
                for &start in &starts {
                    for &operand in &operands {
                        let (a, b) = if column_first {
                            (start, operand)
                        } else {
                            (operand, start)
                        };
                        let want = match op {
                            ArithOp::Add => a.checked_add(b),
                            ArithOp::Subtract => a.checked_sub(b),
                        }
                        .filter(|v| (min..=max).contains(v));
                        let got = run(
                            1,
                            SetExpr::Integer {
                                column: 1,
                                op,
                                column_first,
                                min,
                                max,
                            },
                            S::Integer(start),
                            Value::Integer(operand),
                        );
                        match (want, got) {
                            (Some(w), Ok(S::Integer(g))) => assert_eq!(w, g, "{a} {op:?} {b}"),
                            (None, Err(e)) => assert!(e.contains("integer overflow"), "{e}"),
                            (w, g) => panic!("{a} {op:?} {b}: want {w:?}, got {g:?}"),
                        }
                    }
                }
            }
        }
    }
    let (min, max) = (i32::MIN as i64, i32::MAX as i64);
    // NULL on either side is NULL, not an error.
    let expr = SetExpr::Integer {
        column: 1,
        op: ArithOp::Add,
        column_first: true,
        min,
        max,
    };
    assert_eq!(run(1, expr, S::Null, Value::Integer(1)), Ok(S::Null));
    assert_eq!(run(1, expr, S::Integer(1), Value::Null), Ok(S::Null));
}

#[test]
fn text_concatenation_in_either_order() {
    use rusqlite::types::Value as S;
    let concat = |column_first| SetExpr::Concat {
        column: 2,
        column_first,
    };
    assert_eq!(
        run(
            2,
            concat(true),
            S::Text("ab".into()),
            Value::Text("ç!".into())
        ),
        Ok(S::Text("abç!".into()))
    );
    assert_eq!(
        run(
            2,
            concat(false),
            S::Text("ab".into()),
            Value::Text("x".into())
        ),
        Ok(S::Text("xab".into()))
    );
    assert_eq!(
        run(
            2,
            concat(true),
            S::Text("ab".into()),
            Value::Text(String::new())
        ),
        Ok(S::Text("ab".into()))
    );
    assert_eq!(
        run(2, concat(true), S::Null, Value::Text("x".into())),
        Ok(S::Null)
    );
    assert_eq!(
        run(2, concat(true), S::Text("a".into()), Value::Null),
        Ok(S::Null)
    );
}
