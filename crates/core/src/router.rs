//! QueryRouter: predicate IR + shard key → the shards a statement must visit
//! and, per shard, the key values that belong to it (an IN list is split,
//! not broadcast). One router for SELECT, UPDATE and DELETE; parameters are
//! bound when the statement runs, so a generic prepared plan still routes.

use crate::placement::{shard_for, KeyValue};
use crate::predicate::Binding;
use crate::predicate::{bind_list, bind_value, DeparseError, ListOperand, Operand, Pred};
use crate::types::TypedValue;
use std::collections::{BTreeMap, BTreeSet};

/// The shard key of a table.
#[derive(Debug, Clone, Copy)]
pub struct ShardKey<'a> {
    /// Index of the key in the predicate's column numbering.
    pub column: usize,
    pub name: &'a str,
    pub shard_count: u32,
}

/// A key value with Postgres' equality (all integer widths compare as one).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Int(i64),
    Text(String),
    Uuid([u8; 16]),
}

impl Key {
    fn from_typed(v: &TypedValue) -> Option<Key> {
        Some(match v {
            TypedValue::Int2(i) => Key::Int(i64::from(*i)),
            TypedValue::Int4(i) => Key::Int(i64::from(*i)),
            TypedValue::Int8(i) => Key::Int(*i),
            TypedValue::Text(s) => Key::Text(s.clone()),
            TypedValue::Uuid(u) => Key::Uuid(*u),
            _ => return None,
        })
    }

    fn placement(&self) -> KeyValue<'_> {
        match self {
            Key::Int(i) => KeyValue::Int(*i),
            Key::Text(s) => KeyValue::Text(s),
            Key::Uuid(u) => KeyValue::Uuid(*u),
        }
    }

    fn typed(&self) -> TypedValue {
        match self {
            Key::Int(i) => TypedValue::Int8(*i),
            Key::Text(s) => TypedValue::Text(s.clone()),
            Key::Uuid(u) => TypedValue::Uuid(*u),
        }
    }

    fn display(&self) -> String {
        match self {
            Key::Int(i) => i.to_string(),
            Key::Text(s) => format!("'{}'", s.replace('\'', "''")),
            Key::Uuid(u) => format!("'{}'", crate::types::uuid_to_text(*u)),
        }
    }
}

/// Which key values a predicate admits.
#[derive(Debug, Clone, PartialEq)]
enum KeySet {
    /// Not restricted by the key: every shard.
    All,
    /// Only rows whose key is one of these (empty: no row at all).
    Only(BTreeSet<Key>),
}

impl KeySet {
    fn and(self, other: KeySet) -> KeySet {
        match (self, other) {
            (KeySet::All, x) | (x, KeySet::All) => x,
            (KeySet::Only(a), KeySet::Only(b)) => {
                KeySet::Only(a.intersection(&b).cloned().collect())
            }
        }
    }

    fn or(self, other: KeySet) -> KeySet {
        match (self, other) {
            (KeySet::All, _) | (_, KeySet::All) => KeySet::All,
            (KeySet::Only(mut a), KeySet::Only(b)) => {
                a.extend(b);
                KeySet::Only(a)
            }
        }
    }
}

/// Where a statement goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Target shards in ascending order. With `restricted`, each carries
    /// the key values that live on it.
    pub shards: BTreeMap<u32, Vec<TypedValue>>,
    /// Whether the key predicate restricted the shards (false: all shards).
    pub restricted: bool,
    /// Why, for EXPLAIN and conductor_explain: "id = 42",
    /// "id IN (3 values) split over 2 shards", "all shards: no usable
    /// predicate on id", "no shard: …".
    pub reason: String,
}

impl Route {
    /// The conjuncts shard `shard` runs: each top-level `key IN (…)` keeps
    /// only the values that live on that shard.
    pub fn shard_preds(&self, preds: &[Pred], key: &ShardKey, shard: u32) -> Vec<Pred> {
        let Some(values) = self.shards.get(&shard).filter(|_| self.restricted) else {
            return preds.to_vec();
        };
        preds
            .iter()
            .map(|p| match p {
                Pred::In { column, .. } if *column == key.column => Pred::In {
                    column: *column,
                    list: ListOperand::Items(
                        values
                            .iter()
                            .map(|v| Operand::Const(Some(v.clone())))
                            .collect(),
                    ),
                },
                other => other.clone(),
            })
            .collect()
    }
}

fn key_set(pred: &Pred, key: &ShardKey, bindings: &[Binding]) -> Result<KeySet, DeparseError> {
    let single = |v: Option<TypedValue>| match v {
        None => KeySet::Only(BTreeSet::new()),
        Some(v) => match Key::from_typed(&v) {
            Some(k) => KeySet::Only([k].into()),
            None => KeySet::All,
        },
    };
    Ok(match pred {
        Pred::Bool(true) => KeySet::All,
        Pred::Bool(false) => KeySet::Only(BTreeSet::new()),
        Pred::Cmp { column, op, value }
            if *column == key.column && *op == crate::predicate::CmpOp::Eq =>
        {
            single(bind_value(value, bindings)?)
        }
        Pred::In { column, list } if *column == key.column => match bind_list(list, bindings)? {
            None => KeySet::Only(BTreeSet::new()),
            Some(items) => {
                let mut keys = BTreeSet::new();
                for v in items.into_iter().flatten() {
                    match Key::from_typed(&v) {
                        Some(k) => {
                            keys.insert(k);
                        }
                        None => return Ok(KeySet::All),
                    }
                }
                KeySet::Only(keys)
            }
        },
        Pred::And(ps) => {
            let mut set = KeySet::All;
            for p in ps {
                set = set.and(key_set(p, key, bindings)?);
            }
            set
        }
        Pred::Or(ps) => {
            let mut set = KeySet::Only(BTreeSet::new());
            for p in ps {
                set = set.or(key_set(p, key, bindings)?);
            }
            set
        }
        Pred::Not(p) if matches!(**p, Pred::Bool(_)) => {
            key_set(&Pred::Bool(!matches!(**p, Pred::Bool(true))), key, bindings)?
        }
        _ => KeySet::All,
    })
}

/// The values a conjunction admits for column `column` (integers widened
/// to bigint), or None when it does not restrict the column to a finite
/// list; empty when it admits none. Virtual indexes route with it, so their
/// values are read exactly as a shard key's.
pub fn admitted_values(
    preds: &[Pred],
    column: usize,
    bindings: &[Binding],
) -> Result<Option<Vec<TypedValue>>, DeparseError> {
    let key = ShardKey {
        column,
        name: "",
        shard_count: 1,
    };
    Ok(match key_set(&Pred::And(preds.to_vec()), &key, bindings)? {
        KeySet::All => None,
        KeySet::Only(keys) => Some(keys.iter().map(Key::typed).collect()),
    })
}

/// Whether a conjunction restricts `column` to a finite list, now or once
/// its parameters are bound.
pub fn restricts(preds: &[Pred], column: usize) -> bool {
    !matches!(admitted_values(preds, column, &[]), Ok(None))
}

/// Route the conjunction `preds` (the pushed-down WHERE clause of one
/// table) over `key.shard_count` shards.
pub fn route(preds: &[Pred], key: &ShardKey, bindings: &[Binding]) -> Result<Route, DeparseError> {
    let set = key_set(&Pred::And(preds.to_vec()), key, bindings)?;
    Ok(match set {
        KeySet::All => Route {
            shards: (0..key.shard_count).map(|s| (s, Vec::new())).collect(),
            restricted: false,
            reason: format!("all shards: no usable predicate on {}", key.name),
        },
        KeySet::Only(keys) => {
            let mut shards: BTreeMap<u32, Vec<TypedValue>> = BTreeMap::new();
            for k in &keys {
                shards
                    .entry(shard_for(&k.placement(), key.shard_count))
                    .or_default()
                    .push(k.typed());
            }
            let reason = match keys.len() {
                0 => format!("no shard: the predicate on {} admits no value", key.name),
                1 => format!(
                    "{} = {}",
                    key.name,
                    keys.iter().next().map(Key::display).unwrap_or_default()
                ),
                n => format!(
                    "{} IN ({n} values) split over {} shards",
                    key.name,
                    shards.len()
                ),
            };
            Route {
                shards,
                restricted: true,
                reason,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predicate::CmpOp;

    const KEY: ShardKey = ShardKey {
        column: 0,
        name: "id",
        shard_count: 16,
    };

    fn int(i: i64) -> Operand {
        Operand::Const(Some(TypedValue::Int8(i)))
    }

    fn eq(column: usize, v: Operand) -> Pred {
        Pred::Cmp {
            column,
            op: CmpOp::Eq,
            value: v,
        }
    }

    fn shard(i: i64) -> u32 {
        shard_for(&KeyValue::Int(i), 16)
    }

    fn targets(r: &Route) -> Vec<u32> {
        r.shards.keys().copied().collect()
    }

    #[test]
    fn equality_routes_to_one_shard() {
        let r = route(&[eq(0, int(42))], &KEY, &[]).unwrap();
        assert_eq!(targets(&r), vec![shard(42)]);
        assert_eq!(r.reason, "id = 42");
        // All integer widths are one key: 42::int4 routes like 42::int8.
        let r4 = route(
            &[eq(0, Operand::Const(Some(TypedValue::Int4(42))))],
            &KEY,
            &[],
        )
        .unwrap();
        assert_eq!(targets(&r4), targets(&r));
    }

    #[test]
    fn no_key_predicate_means_all_shards() {
        let r = route(&[eq(1, int(42))], &KEY, &[]).unwrap();
        assert_eq!(r.shards.len(), 16);
        assert!(!r.restricted);
        let range = Pred::Cmp {
            column: 0,
            op: CmpOp::Lt,
            value: int(5),
        };
        assert_eq!(route(&[range], &KEY, &[]).unwrap().shards.len(), 16);
        assert_eq!(route(&[], &KEY, &[]).unwrap().shards.len(), 16);
    }

    #[test]
    fn parameters_bind_at_execution_in_any_order_and_reused() {
        // id = $2 AND (id = $2 OR id = $1): $2 used twice, bound out of order.
        let preds = [
            eq(0, Operand::Param(1)),
            Pred::Or(vec![eq(0, Operand::Param(1)), eq(0, Operand::Param(0))]),
        ];
        let bindings = [
            Binding::Value(Some(TypedValue::Int8(7))),
            Binding::Value(Some(TypedValue::Int8(9))),
        ];
        let r = route(&preds, &KEY, &bindings).unwrap();
        assert_eq!(targets(&r), vec![shard(9)]);
        let swapped = [bindings[1].clone(), bindings[0].clone()];
        assert_eq!(
            targets(&route(&preds, &KEY, &swapped).unwrap()),
            vec![shard(7)]
        );
        assert_eq!(route(&preds, &KEY, &[]), Err(DeparseError::Unbound(1)));
    }

    #[test]
    fn in_lists_split_per_shard() {
        let keys: Vec<i64> = (1..=40).collect();
        let list = Pred::In {
            column: 0,
            list: ListOperand::Items(keys.iter().map(|&k| int(k)).collect()),
        };
        let preds = [list, eq(1, int(3))];
        let r = route(&preds, &KEY, &[]).unwrap();
        let mut expected: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
        for &k in &keys {
            expected.entry(shard(k)).or_default().push(k);
        }
        assert_eq!(targets(&r), expected.keys().copied().collect::<Vec<_>>());
        for (s, ks) in &expected {
            let mine = r.shard_preds(&preds, &KEY, *s);
            let Pred::In {
                list: ListOperand::Items(items),
                ..
            } = &mine[0]
            else {
                panic!("IN kept")
            };
            let got: Vec<i64> = items
                .iter()
                .map(|o| match o {
                    Operand::Const(Some(TypedValue::Int8(i))) => *i,
                    other => panic!("{other:?}"),
                })
                .collect();
            assert_eq!(&got, ks, "shard {s} gets only its own values");
            assert_eq!(mine[1], preds[1]);
        }
        assert!(r.reason.starts_with("id IN (40 values) split over"));
    }

    #[test]
    fn array_parameters_split_too() {
        let preds = [Pred::In {
            column: 0,
            list: ListOperand::Param(0),
        }];
        let b = [Binding::List(Some(vec![
            Some(TypedValue::Int8(1)),
            None,
            Some(TypedValue::Int8(2)),
        ]))];
        let r = route(&preds, &KEY, &b).unwrap();
        let mut want = vec![shard(1), shard(2)];
        want.sort();
        want.dedup();
        assert_eq!(targets(&r), want);
        assert!(route(&preds, &KEY, &[Binding::List(None)])
            .unwrap()
            .shards
            .is_empty());
    }

    #[test]
    fn or_unions_and_intersects() {
        let or = Pred::Or(vec![eq(0, int(1)), eq(0, int(2))]);
        let mut want = vec![shard(1), shard(2)];
        want.sort();
        want.dedup();
        assert_eq!(
            targets(&route(std::slice::from_ref(&or), &KEY, &[]).unwrap()),
            want
        );
        // OR with a non-key branch can be anything: all shards.
        let wide = Pred::Or(vec![eq(0, int(1)), eq(1, int(2))]);
        assert_eq!(route(&[wide], &KEY, &[]).unwrap().shards.len(), 16);
        // AND narrows: (1 or 2) and 2 → 2.
        assert_eq!(
            targets(&route(&[or, eq(0, int(2))], &KEY, &[]).unwrap()),
            vec![shard(2)]
        );
    }

    #[test]
    fn contradictions_null_and_empty_lists_touch_no_shard() {
        let none = |preds: &[Pred]| route(preds, &KEY, &[]).unwrap().shards.is_empty();
        assert!(none(&[eq(0, int(1)), eq(0, int(2))]));
        assert!(none(&[eq(0, Operand::Const(None))]));
        assert!(none(&[Pred::In {
            column: 0,
            list: ListOperand::Items(vec![])
        }]));
        assert!(none(&[Pred::Bool(false)]));
        assert!(none(&[Pred::Not(Box::new(Pred::Bool(true)))]));
        assert!(route(&[eq(0, Operand::Const(None))], &KEY, &[])
            .unwrap()
            .reason
            .starts_with("no shard"));
    }

    #[test]
    fn negations_are_not_routed() {
        let not = Pred::Not(Box::new(eq(0, int(1))));
        assert_eq!(route(&[not], &KEY, &[]).unwrap().shards.len(), 16);
    }

    #[test]
    fn text_and_uuid_keys() {
        let key = ShardKey {
            column: 2,
            name: "email",
            shard_count: 8,
        };
        let r = route(
            &[eq(2, Operand::Const(Some(TypedValue::Text("a@b".into()))))],
            &key,
            &[],
        )
        .unwrap();
        assert_eq!(targets(&r), vec![shard_for(&KeyValue::Text("a@b"), 8)]);
        let u = [7u8; 16];
        let r = route(
            &[eq(2, Operand::Const(Some(TypedValue::Uuid(u))))],
            &key,
            &[],
        )
        .unwrap();
        assert_eq!(targets(&r), vec![shard_for(&KeyValue::Uuid(u), 8)]);
    }
}
