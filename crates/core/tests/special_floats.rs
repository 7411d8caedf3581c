//! NaN, ±Infinity and -0 as a float column stores them (`types.rs`), in a
//! real SQLite shard table: every comparison the rulebook pushes (as
//! `predicate::deparse` writes it, with and without NOT, constants and IN
//! lists, infinities included), ORDER BY with NULLS FIRST/LAST, and sum,
//! avg, min and max merged by `merge`, give Postgres' answers (but for
//! the sign of a sum of negative zeros only: -0 in Postgres, 0 here, as
//! no SQLite function shows the sign of a zero). Postgres'
//! float order is total: -Infinity < numbers < Infinity < NaN, NaN = NaN,
//! -0 = 0; NULL compares as unknown.

use conductor_core::merge::{compare_values, AggFunc, AggSpec, Final, GroupMerge};
use conductor_core::predicate::{deparse, Binding, CmpOp, ListOperand, Operand, Pred};
use conductor_core::remote_sql::create_table_sql;
use conductor_core::types::{ColumnType, TypedValue};
use conductor_hrana::Value;
use rusqlite::types::ValueRef;
use std::cmp::Ordering;

mod plain_sqlite;
use plain_sqlite::to_sqlite;

const VALUES: [f64; 11] = [
    f64::NAN,
    f64::INFINITY,
    f64::NEG_INFINITY,
    -0.0,
    0.0,
    1.5,
    -2.25,
    f64::MAX,
    -f64::MAX,
    f64::MIN_POSITIVE,
    3.4028234663852886e38, // the largest float4
];

/// Postgres' float8 comparison (float8_cmp_internal).
fn pg_cmp(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).unwrap(),
    }
}

fn holds(op: CmpOp, o: Ordering) -> bool {
    match op {
        CmpOp::Eq => o == Ordering::Equal,
        CmpOp::Ne => o != Ordering::Equal,
        CmpOp::Lt => o == Ordering::Less,
        CmpOp::Le => o != Ordering::Greater,
        CmpOp::Gt => o == Ordering::Greater,
        CmpOp::Ge => o != Ordering::Less,
    }
}

const OPS: [CmpOp; 6] = [
    CmpOp::Eq,
    CmpOp::Ne,
    CmpOp::Lt,
    CmpOp::Le,
    CmpOp::Gt,
    CmpOp::Ge,
];

fn from_sqlite(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Integer(i),
        ValueRef::Real(f) => Value::Float(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8(t.to_vec()).unwrap()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

/// Rows (id, x): x = VALUES[id], and one NULL (id = VALUES.len()).
fn load(ty: ColumnType) -> rusqlite::Connection {
    let db = rusqlite::Connection::open_in_memory().unwrap();
    db.execute(
        &create_table_sql(
            "t",
            &[("id", ColumnType::Int8, true), ("x", ty, false)],
            &["id"],
        ),
        [],
    )
    .unwrap();
    for (id, f) in VALUES.iter().enumerate() {
        let v = typed(ty, *f).to_value("x").unwrap();
        db.execute(
            "INSERT INTO \"t\" VALUES (?, ?)",
            rusqlite::params![id as i64, to_sqlite(&v)],
        )
        .unwrap();
    }
    db.execute(
        "INSERT INTO \"t\" VALUES (?, NULL)",
        rusqlite::params![VALUES.len() as i64],
    )
    .unwrap();
    db
}

fn typed(ty: ColumnType, f: f64) -> TypedValue {
    match ty {
        ColumnType::Float4 => TypedValue::Float4(f as f32),
        _ => TypedValue::Float8(f),
    }
}

/// What the column holds for row id (as Postgres sees it), None for NULL.
fn stored(ty: ColumnType, id: usize) -> Option<f64> {
    let f = *VALUES.get(id)?;
    Some(match ty {
        ColumnType::Float4 => f64::from(f as f32),
        _ => f,
    })
}

fn ids_where(db: &rusqlite::Connection, pred: &Pred) -> Vec<usize> {
    let (sql, args) = deparse(std::slice::from_ref(pred), "t", &["id", "x"], &[]).unwrap();
    assert!(
        args.iter()
            .all(|a| !matches!(a, Value::Float(f) if !f.is_finite())),
        "{sql}: an infinity is never an argument: {args:?}"
    );
    let mut stmt = db
        .prepare(&format!(
            "SELECT \"id\" FROM \"t\" WHERE {sql} ORDER BY \"id\""
        ))
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let rows = stmt
        .query_map(
            rusqlite::params_from_iter(args.iter().map(to_sqlite)),
            |r| r.get::<_, i64>(0),
        )
        .unwrap();
    rows.map(|r| r.unwrap() as usize).collect()
}

fn all_ids() -> std::ops::RangeInclusive<usize> {
    0..=VALUES.len()
}

#[test]
fn pushed_comparisons_are_postgres_comparisons() {
    for ty in [ColumnType::Float8, ColumnType::Float4] {
        let db = load(ty);
        for c in VALUES {
            let value = typed(ty, c);
            let c = match value {
                TypedValue::Float4(f) => f64::from(f),
                _ => c,
            };
            for op in OPS {
                let cmp = Pred::Cmp {
                    column: 1,
                    op,
                    value: Operand::Const(Some(value.clone())),
                };
                let want: Vec<usize> = all_ids()
                    .filter(|&id| stored(ty, id).is_some_and(|x| holds(op, pg_cmp(x, c))))
                    .collect();
                assert_eq!(ids_where(&db, &cmp), want, "{ty}: x {op:?} {c}");
                // NOT keeps NULL out: x op c is NULL there, not false.
                let want_not: Vec<usize> = all_ids()
                    .filter(|&id| stored(ty, id).is_some_and(|x| !holds(op, pg_cmp(x, c))))
                    .collect();
                assert_eq!(
                    ids_where(&db, &Pred::Not(Box::new(cmp))),
                    want_not,
                    "{ty}: NOT x {op:?} {c}"
                );
            }
        }
        // IN lists mixing infinities, NaN, finite values and NULL, bound at
        // run time as an array would be.
        let lists: Vec<Vec<Option<f64>>> = vec![
            vec![Some(f64::INFINITY), Some(1.5)],
            vec![Some(f64::NEG_INFINITY), Some(f64::INFINITY)],
            vec![Some(f64::NAN), Some(-0.0)],
            vec![Some(f64::INFINITY), None],
            vec![Some(f64::NEG_INFINITY)],
            vec![None, Some(-2.25), Some(f64::NAN), Some(f64::NEG_INFINITY)],
        ];
        for list in lists {
            let items: Vec<Option<TypedValue>> =
                list.iter().map(|v| v.map(|f| typed(ty, f))).collect();
            let pred = Pred::In {
                column: 1,
                list: ListOperand::Param(0),
            };
            let bindings = [Binding::List(Some(items))];
            let member = |x: f64| -> Option<bool> {
                // Postgres' IN: true on a match, else NULL if the list has
                // a NULL, else false.
                let c = |f: f64| match ty {
                    ColumnType::Float4 => f64::from(f as f32),
                    _ => f,
                };
                if list
                    .iter()
                    .flatten()
                    .any(|&f| pg_cmp(x, c(f)) == Ordering::Equal)
                {
                    Some(true)
                } else if list.iter().any(Option::is_none) {
                    None
                } else {
                    Some(false)
                }
            };
            for negated in [false, true] {
                let p = if negated {
                    Pred::Not(Box::new(pred.clone()))
                } else {
                    pred.clone()
                };
                let (sql, args) = deparse(&[p], "t", &["id", "x"], &bindings).unwrap();
                let mut stmt = db
                    .prepare(&format!(
                        "SELECT \"id\" FROM \"t\" WHERE {sql} ORDER BY \"id\""
                    ))
                    .unwrap();
                let got: Vec<usize> = stmt
                    .query_map(
                        rusqlite::params_from_iter(args.iter().map(to_sqlite)),
                        |r| r.get::<_, i64>(0),
                    )
                    .unwrap()
                    .map(|r| r.unwrap() as usize)
                    .collect();
                let want: Vec<usize> = all_ids()
                    .filter(|&id| {
                        stored(ty, id)
                            .and_then(member)
                            .is_some_and(|m| m != negated)
                    })
                    .collect();
                assert_eq!(got, want, "{ty}: {sql} with {list:?}");
            }
        }
    }
}

#[test]
fn sqlite_sorts_the_stored_forms_in_postgres_order() {
    for ty in [ColumnType::Float8, ColumnType::Float4] {
        let db = load(ty);
        for (dir, nulls) in [
            ("ASC", "LAST"),
            ("ASC", "FIRST"),
            ("DESC", "FIRST"),
            ("DESC", "LAST"),
        ] {
            let mut stmt = db
                .prepare(&format!(
                    "SELECT \"id\" FROM \"t\" ORDER BY \"x\" {dir} NULLS {nulls}, \"id\""
                ))
                .unwrap();
            let got: Vec<usize> = stmt
                .query_map([], |r| r.get::<_, i64>(0))
                .unwrap()
                .map(|r| r.unwrap() as usize)
                .collect();
            let mut want: Vec<usize> = all_ids().collect();
            want.sort_by(|&a, &b| {
                let o = match (stored(ty, a), stored(ty, b)) {
                    (None, None) => Ordering::Equal,
                    (None, _) => {
                        if nulls == "FIRST" {
                            Ordering::Less
                        } else {
                            Ordering::Greater
                        }
                    }
                    (_, None) => {
                        if nulls == "FIRST" {
                            Ordering::Greater
                        } else {
                            Ordering::Less
                        }
                    }
                    (Some(x), Some(y)) if dir == "DESC" => pg_cmp(y, x),
                    (Some(x), Some(y)) => pg_cmp(x, y),
                };
                o.then(a.cmp(&b))
            });
            assert_eq!(got, want, "{ty} ORDER BY x {dir} NULLS {nulls}");
        }
        // The router merges shards' rows with the same order.
        let stored_values: Vec<Value> = VALUES
            .iter()
            .map(|f| typed(ty, *f).to_value("x").unwrap())
            .collect();
        for (a, fa) in stored_values.iter().zip(VALUES) {
            for (b, fb) in stored_values.iter().zip(VALUES) {
                let (fa, fb) = match ty {
                    ColumnType::Float4 => (f64::from(fa as f32), f64::from(fb as f32)),
                    _ => (fa, fb),
                };
                assert_eq!(compare_values(a, b), pg_cmp(fa, fb), "{fa} vs {fb}");
            }
        }
    }
}

#[test]
fn pushed_float_aggregates_give_postgres_answers() {
    let ty = ColumnType::Float8;
    let db = load(ty);
    let aggs: Vec<AggSpec> = [
        AggFunc::SumFloat,
        AggFunc::AvgFloat,
        AggFunc::Min,
        AggFunc::Max,
    ]
    .into_iter()
    .map(|func| AggSpec {
        func,
        column: Some(1),
        filter: None,
    })
    .collect();
    // Subsets of the rows, each split over two "shards" (id ranges).
    let subsets: Vec<Vec<usize>> = vec![
        vec![5, 6, 3],
        vec![1, 5, 6],
        vec![2, 5, 11],
        vec![1, 2, 5],
        vec![0, 5, 6],
        vec![0, 1, 2],
        vec![1, 4],
        vec![11],
        vec![3, 4, 5, 6, 9],
        vec![3, 4],
        vec![4, 3],
        vec![3, 11, 4],
    ];
    for subset in subsets {
        let mut m = GroupMerge::new(0, aggs.clone());
        for shard in subset.chunks(2) {
            let ids: Vec<String> = shard.iter().map(|i| i.to_string()).collect();
            let select: Vec<String> = aggs
                .iter()
                .flat_map(|a| a.remote_exprs())
                .map(|e| e.sql(|_| "\"x\"".to_string()))
                .collect();
            let sql = format!(
                "SELECT {} FROM \"t\" WHERE \"id\" IN ({})",
                select.join(", "),
                ids.join(", ")
            );
            let row: Vec<Value> = db
                .query_row(&sql, [], |r| {
                    Ok((0..select.len())
                        .map(|i| from_sqlite(r.get_ref(i).unwrap()))
                        .collect())
                })
                .unwrap();
            m.push(row).unwrap();
        }
        let got = m.finish().unwrap().remove(0);
        let float = |f: &Final| -> Option<f64> {
            match f {
                Final::Value(Value::Null) => None,
                Final::Value(v) => TypedValue::from_value("x", ty, v)
                    .unwrap()
                    .map(|t| match t {
                        TypedValue::Float8(f) => f,
                        other => panic!("{other:?}"),
                    }),
                other => panic!("{other:?}"),
            }
        };
        // Postgres: sum and avg add in IEEE arithmetic; min and max by its
        // total order.
        let xs: Vec<f64> = subset.iter().filter_map(|&id| stored(ty, id)).collect();
        let sum = xs.iter().copied().reduce(|a, b| a + b);
        // avg's transition state starts from +0.
        let avg = sum.map(|_| xs.iter().fold(0.0, |s, x| s + x) / xs.len() as f64);
        let min = xs.iter().copied().min_by(|a, b| pg_cmp(*a, *b));
        let max = xs.iter().copied().max_by(|a, b| pg_cmp(*a, *b));
        for (name, got, want) in [
            ("sum", float(&got[0]), sum),
            ("avg", float(&got[1]), avg),
            ("min", float(&got[2]), min),
            ("max", float(&got[3]), max),
        ] {
            // The sign of a zero sum or average shows in Postgres' output.
            let same = match (got, want) {
                (Some(g), Some(w)) if name == "sum" || name == "avg" => {
                    g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan())
                }
                (Some(g), Some(w)) => pg_cmp(g, w) == Ordering::Equal,
                (g, w) => g == w,
            };
            assert!(same, "{name} of {xs:?}: got {got:?}, want {want:?}");
        }
    }
}
