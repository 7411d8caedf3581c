//! Every column reference conductor sends is qualified with the shard
//! table, so even a SQLite that reads an unknown double-quoted name as a
//! string literal (the library's default, which a plain sqld keeps) fails
//! with "no such column" when a shard lacks a column, instead of returning
//! the column's name as its value.

use conductor_core::plan::{ShardPlan, StatementKind};
use conductor_core::predicate::{CmpOp, Operand, Pred};
use conductor_core::topology::Topology;
use conductor_core::types::{ColumnType, TypedValue};
use conductor_hrana::Value;

mod plain_sqlite;
use plain_sqlite::{one_shard_table, to_sqlite};

fn topology() -> Topology {
    // "note" was added to the foreign table but never reached the shard.
    one_shard_table(&[
        ("id", ColumnType::Int8),
        ("v", ColumnType::Text),
        ("note", ColumnType::Text),
    ])
}

#[test]
fn a_missing_column_is_an_error_on_a_sqlite_with_double_quoted_strings() {
    let db = rusqlite::Connection::open_in_memory().unwrap();
    db.execute_batch(
        "CREATE TABLE t_0000 (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t_0000 VALUES (1, 'a');",
    )
    .unwrap();
    // The trap is real on this connection: unqualified, the name is a string.
    let trap: String = db
        .query_row(r#"SELECT "note" FROM t_0000"#, [], |r| r.get(0))
        .unwrap();
    assert_eq!(trap, "note");

    let t = topology();
    let note_is = Pred::Cmp {
        column: 2,
        op: CmpOp::Eq,
        value: Operand::Const(Some(TypedValue::Text("note".into()))),
    };
    let plans = [
        ShardPlan::build(
            &t,
            &[],
            &[],
            &StatementKind::Select {
                columns: vec![0, 2],
            },
        ),
        ShardPlan::build(
            &t,
            std::slice::from_ref(&note_is),
            &[],
            &StatementKind::Select { columns: vec![0] },
        ),
        ShardPlan::build(
            &t,
            std::slice::from_ref(&note_is),
            &[],
            &StatementKind::Delete { returning: false },
        ),
        ShardPlan::build(
            &t,
            std::slice::from_ref(&note_is),
            &[],
            &StatementKind::Update {
                set: vec![1],
                exprs: Vec::new(),
                values: vec![Value::Text("x".into())],
                returning: false,
            },
        ),
    ];
    for plan in plans {
        let plan = plan.unwrap();
        let stmt = &plan.statements[0].stmt;
        let sql = stmt.sql.as_deref().unwrap();
        let args: Vec<rusqlite::types::Value> = stmt.args.iter().map(to_sqlite).collect();
        let err = db
            .prepare(sql)
            .and_then(|mut s| s.execute(rusqlite::params_from_iter(args)).map(|_| ()))
            .expect_err(sql);
        assert!(err.to_string().contains("no such column"), "{sql}: {err}");
    }
    // Nothing was changed by the statements that failed.
    let v: String = db
        .query_row("SELECT v FROM t_0000 WHERE id = 1", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, "a");
}
