//! The statements `ShardPlan` builds for pushed aggregates and ORDER BY …
//! LIMIT, run on real SQLite shard tables, merged by `merge`: the result is
//! what one pass over all rows gives, including integer sums past 64 bits
//! (where SQLite's own `sum()` raises "integer overflow").

use conductor_core::merge::{
    compare_rows, AggFunc, AggSpec, Final, GroupMerge, KWayMerge, MergeKey,
};
use conductor_core::plan::{LimitSpec, PushedQuery, RemoteExpr, ShardPlan, SortKey, StatementKind};
use conductor_core::predicate::{Binding, Operand};
use conductor_core::remote_sql::create_table_sql;
use conductor_core::topology::{Column, ShardLocation, ShardStatus, Topology};
use conductor_core::types::{ColumnType, TypedValue};
use conductor_hrana::Value;
use rusqlite::types::ValueRef;

const SHARDS: u32 = 4;

fn topology() -> Topology {
    let col = |attnum: i16, name: &str, ty| Column {
        attnum,
        name: name.into(),
        ty,
        not_null: attnum == 1,
    };
    Topology {
        name: "public.t".into(),
        remote_name: "t".into(),
        columns: vec![
            col(1, "id", ColumnType::Int8),
            col(2, "g", ColumnType::Int4),
            col(3, "x", ColumnType::Int8),
        ],
        key_index: 0,
        primary_key: vec![0],
        shards: (0..SHARDS)
            .map(|s| ShardLocation {
                shard_id: s,
                node_id: "node-0".into(),
                url: "http://127.0.0.1:1".into(),
                remote_table: format!("t_{s:04}"),
                status: ShardStatus::Active,
            })
            .collect(),
    }
}

/// Rows (id, g, x) spread over the shards by id, in one SQLite database.
fn load(rows: &[(i64, Option<i64>, Option<i64>)]) -> rusqlite::Connection {
    let db = rusqlite::Connection::open_in_memory().unwrap();
    let t = topology();
    for s in &t.shards {
        let cols: Vec<(&str, ColumnType, bool)> = t
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.ty, c.not_null))
            .collect();
        db.execute(&create_table_sql(&s.remote_table, &cols, &["id"]), [])
            .unwrap();
    }
    for &(id, g, x) in rows {
        let table = format!("t_{:04}", id.rem_euclid(SHARDS as i64));
        db.execute(
            &format!("INSERT INTO \"{table}\" VALUES (?, ?, ?)"),
            rusqlite::params![id, g, x],
        )
        .unwrap();
    }
    db
}

fn run(db: &rusqlite::Connection, sql: &str, args: &[Value]) -> rusqlite::Result<Vec<Vec<Value>>> {
    let mut stmt = db.prepare(sql)?;
    let params: Vec<rusqlite::types::Value> = args
        .iter()
        .map(|a| match a {
            Value::Integer(i) => rusqlite::types::Value::Integer(*i),
            Value::Null => rusqlite::types::Value::Null,
            other => panic!("unexpected argument {other:?}"),
        })
        .collect();
    let n = stmt.column_count();
    let rows = stmt.query_map(rusqlite::params_from_iter(params), |r| {
        Ok((0..n)
            .map(|i| match r.get_ref(i).unwrap() {
                ValueRef::Null => Value::Null,
                ValueRef::Integer(v) => Value::Integer(v),
                ValueRef::Real(f) => Value::Float(f),
                ValueRef::Text(t) => Value::Text(String::from_utf8(t.to_vec()).unwrap()),
                ValueRef::Blob(b) => Value::Blob(b.to_vec()),
            })
            .collect::<Vec<_>>())
    })?;
    rows.collect()
}

fn data() -> Vec<(i64, Option<i64>, Option<i64>)> {
    let mut rows = Vec::new();
    for id in 0..200i64 {
        let x = match id % 7 {
            0 => None,
            1 | 2 => Some(i64::MAX - id),
            3 => Some(i64::MIN + id),
            _ => Some(id * 1_000_003 - 50_000_000),
        };
        let g = (id % 5 != 0).then_some(id % 3);
        rows.push((id, g, x));
    }
    rows
}

#[test]
fn split_sums_are_exact_where_sqlite_sum_overflows() {
    let rows = data();
    let db = load(&rows);
    // SQLite's own sum() of a shard's x raises.
    let err = run(&db, "SELECT sum(\"x\") FROM \"t_0001\"", &[]).unwrap_err();
    assert!(err.to_string().contains("integer overflow"), "{err}");

    let t = topology();
    let aggs = vec![
        AggSpec {
            func: AggFunc::CountStar,
            column: None,
            filter: None,
        },
        AggSpec {
            func: AggFunc::SumBigint,
            column: Some(2),
            filter: None,
        },
        AggSpec {
            func: AggFunc::AvgInt,
            column: Some(2),
            filter: None,
        },
        AggSpec {
            func: AggFunc::Min,
            column: Some(2),
            filter: None,
        },
    ];
    let mut select = vec![RemoteExpr::Column(1)];
    for a in &aggs {
        select.extend(a.remote_exprs());
    }
    let query = PushedQuery {
        select,
        group_by: vec![1],
        ..Default::default()
    };
    let plan = ShardPlan::build(&t, &[], &[], &StatementKind::Pushed(query)).unwrap();
    let mut merge = GroupMerge::new(1, aggs);
    for s in &plan.statements {
        for row in run(&db, s.stmt.sql.as_deref().unwrap(), &s.stmt.args).unwrap() {
            merge.push(row).unwrap();
        }
    }
    let mut got = merge.finish().unwrap();
    got.sort_by_key(|r| match &r[0] {
        Final::Value(Value::Integer(g)) => Some(*g),
        _ => None,
    });
    let mut groups: std::collections::BTreeMap<Option<i64>, Vec<Option<i64>>> = Default::default();
    for &(_, g, x) in &rows {
        groups.entry(g).or_default().push(x);
    }
    assert_eq!(got.len(), groups.len());
    let mut past_64_bits = 0;
    for (row, (g, xs)) in got.iter().zip(&groups) {
        let nn: Vec<i128> = xs.iter().flatten().map(|&v| v as i128).collect();
        let sum: i128 = nn.iter().sum();
        if sum > i64::MAX as i128 || sum < i64::MIN as i128 {
            past_64_bits += 1;
        }
        let g = g.map(Value::Integer).unwrap_or(Value::Null);
        assert_eq!(
            row,
            &vec![
                Final::Value(g),
                Final::Value(Value::Integer(xs.len() as i64)),
                Final::Value(Value::Text(sum.to_string())),
                Final::Avg(Some((sum.to_string(), nn.len() as i64))),
                Final::Value(Value::Integer(*nn.iter().min().unwrap() as i64)),
            ]
        );
    }
    assert!(past_64_bits > 0, "the data must exercise sums past 64 bits");
}

#[test]
fn sorted_limited_shards_merge_into_the_global_order() {
    let rows = data();
    let db = load(&rows);
    let t = topology();
    for (descending, nulls_first) in [(false, false), (true, true), (false, true), (true, false)] {
        for (count, offset) in [(Some(5), 0), (Some(7), 3), (None, 190), (Some(0), 2)] {
            let query = PushedQuery {
                select: vec![RemoteExpr::Column(0), RemoteExpr::Column(2)],
                order_by: vec![
                    SortKey {
                        column: 2,
                        descending,
                        nulls_first,
                        output: false,
                    },
                    SortKey {
                        column: 0,
                        descending: false,
                        nulls_first: false,
                        output: false,
                    },
                ],
                limit: Some(LimitSpec {
                    count: Operand::Param(0),
                    offset: Operand::Param(1),
                }),
                ..Default::default()
            };
            let bindings = [
                Binding::Value(count.map(TypedValue::Int8)),
                Binding::Value(Some(TypedValue::Int8(offset))),
            ];
            let plan = ShardPlan::build(&t, &[], &bindings, &StatementKind::Pushed(query)).unwrap();
            let keys = vec![
                MergeKey {
                    position: 1,
                    descending,
                    nulls_first,
                },
                MergeKey {
                    position: 0,
                    descending: false,
                    nulls_first: false,
                },
            ];
            let mut merge = KWayMerge::new(plan.shard_ids(), keys.clone());
            for s in &plan.statements {
                let got = run(&db, s.stmt.sql.as_deref().unwrap(), &s.stmt.args).unwrap();
                if let Some(c) = count {
                    assert!(got.len() as i64 <= c + offset);
                }
                merge.push(s.shard_id, got);
                merge.finish(s.shard_id);
            }
            let mut merged = Vec::new();
            while let Some((_, r)) = merge.pop() {
                merged.push(r);
            }
            let merged: Vec<_> = merged
                .into_iter()
                .skip(offset as usize)
                .take(count.map(|c| c as usize).unwrap_or(usize::MAX))
                .collect();
            let mut all: Vec<Vec<Value>> = rows
                .iter()
                .map(|&(id, _, x)| {
                    vec![
                        Value::Integer(id),
                        x.map(Value::Integer).unwrap_or(Value::Null),
                    ]
                })
                .collect();
            all.sort_by(|a, b| compare_rows(a, b, &keys));
            let want: Vec<_> = all
                .into_iter()
                .skip(offset as usize)
                .take(count.map(|c| c as usize).unwrap_or(usize::MAX))
                .collect();
            assert_eq!(
                merged, want,
                "desc {descending} nulls_first {nulls_first} limit {count:?} offset {offset}"
            );
        }
    }
}
