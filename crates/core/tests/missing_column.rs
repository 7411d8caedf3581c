//! Every column reference conductor sends is qualified with the shard
//! table, so even a SQLite that reads an unknown double-quoted name as a
//! string literal (the library's default, which a plain sqld keeps) fails
//! with "no such column" when a shard lacks a column, instead of returning
//! the column's name as its value.

use conductor_core::plan::{ShardPlan, StatementKind};
use conductor_core::predicate::{CmpOp, Operand, Pred};
use conductor_core::topology::{Column, ShardLocation, Topology};
use conductor_core::types::{ColumnType, TypedValue};
use conductor_hrana::Value;

fn topology() -> Topology {
    let col = |attnum, name: &str, ty| Column {
        attnum,
        name: name.into(),
        ty,
        not_null: false,
    };
    Topology {
        name: "t".into(),
        remote_name: "t".into(),
        // "note" was added to the foreign table but never reached the shard.
        columns: vec![
            col(1, "id", ColumnType::Int8),
            col(2, "v", ColumnType::Text),
            col(3, "note", ColumnType::Text),
        ],
        key_index: 0,
        primary_key: vec![0],
        shards: vec![ShardLocation {
            shard_id: 0,
            node_id: "n".into(),
            url: "http://unused".into(),
            remote_table: "t_0000".into(),
            status: conductor_core::topology::ShardStatus::Active,
        }],
    }
}

fn to_sql(v: &Value) -> rusqlite::types::Value {
    match v {
        Value::Null => rusqlite::types::Value::Null,
        Value::Integer(i) => rusqlite::types::Value::Integer(*i),
        Value::Float(f) => rusqlite::types::Value::Real(*f),
        Value::Text(s) => rusqlite::types::Value::Text(s.clone()),
        Value::Blob(b) => rusqlite::types::Value::Blob(b.clone()),
    }
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
        let args: Vec<rusqlite::types::Value> = stmt.args.iter().map(to_sql).collect();
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
