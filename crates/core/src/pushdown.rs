//! The pushdown rulebook: which comparisons a node may evaluate because
//! SQLite gives exactly the answer Postgres would. The FDW's lowering of
//! planner expressions asks these functions and nothing else; a clause they
//! refuse stays a local filter in Postgres, which costs speed, never
//! correctness.
//!
//! How each family is stored on a node (`types.rs`) decides what is exact:
//! - integers (all widths) are SQLite INTEGERs and compare as Postgres
//!   integers do, across widths;
//! - floats are REALs, ±Infinity included, and NaN is the text `'NaN'`:
//!   SQLite orders numbers before text, so every comparison and sort is
//!   Postgres' (-Infinity < numbers < Infinity < NaN, NaN = NaN, -0 = 0).
//!   A comparison with an infinity is sent without it (`predicate.rs`
//!   rewrites it against the largest finite double and the NaN text), so
//!   it runs on either encoding of the protocol. So every value of these
//!   families, constant or a parameter, has an exact form to compare with
//!   (an array parameter of floats stays local, see
//!   [`travels_as_json`]);
//! - booleans are 0/1, bytea are BLOBs (memcmp, as Postgres), uuids are
//!   lowercase canonical text (byte order is uuid order);
//! - date, timestamp and timestamptz are Postgres' internal integers: each
//!   compares exactly with its own type only (across them Postgres converts
//!   through the session time zone);
//! - text and varchar are UTF-8 TEXT compared bytewise (SQLite's BINARY
//!   collation): equality is exact under any deterministic collation,
//!   ordering only under C (byte order = code point order for UTF-8); a
//!   nondeterministic collation can make different strings equal, so
//!   nothing is pushed under one;
//! - numeric, char(n), json and jsonb are never compared on a node (text
//!   form order is not value order; char(n) ignores trailing spaces).
//!
//! ORDER BY, GROUP BY and aggregates (pushed by the FDW's upper paths, the
//! router merging what the shards return, `merge.rs`):
//! - a sort key or grouping column may go to a node when SQLite orders
//!   (groups) its stored values as Postgres does: every family that
//!   compares exactly above, text only under C; numeric, char(n), json
//!   never;
//! - `count(*)` and `count(col)` of any type (NULL-ness is stored exactly);
//!   `sum` of smallint/integer/bigint (sent as two half sums that cannot
//!   overflow, combined exactly) and of double precision; `avg` of
//!   integers (exact sum and count; the final division is Postgres' own
//!   numeric division) and of floats (each shard also returns the
//!   column's min and max, which say whether NaN or an infinity was
//!   summed, so the result is Postgres' NaN or infinity then);
//!   `min`/`max` of integers, floats,
//!   date/timestamp/timestamptz and text under C; `bool_and`/`every` and
//!   `bool_or` (the min and max of the stored 0/1). `sum`, `avg`, `min` and
//!   `max` of numeric only where every node of the table offers
//!   conductor-node's exact decimal aggregates (`conductor_hrana::decimal`:
//!   any precision, Postgres' scale, NaN and infinity rules; the router
//!   adds the partial sums with the same arithmetic and divides avg's
//!   with Postgres' numeric division); a plain sqld has none, so numeric
//!   stays local there. `sum(real)` stays local
//!   (Postgres accumulates it in single precision), as does every other
//!   aggregate, and any with DISTINCT or ORDER BY. A FILTER (WHERE …) goes
//!   with its aggregate when the WHERE rules above push every clause of it
//!   (SQLite's FILTER keeps a row only when the condition is true, as
//!   Postgres does). When every group lives on one shard (the grouping
//!   contains the shard key), a shard's count/min/max/bool partial is the
//!   group's final value, so the shard may also sort its groups by it and
//!   filter them on it (HAVING, by the same comparison rules). Float sums and
//!   averages are the only results that may differ from Postgres', in the
//!   last bits, because the additions happen in another order (SQLite
//!   sums with compensation), and in the sign of a sum of negative zeros
//!   only (SQLite's sum starts from +0).
//!
//! Operators are understood by meaning (the six comparisons and LIKE), never
//! by name alone: the caller maps only built-in operators here.

use crate::merge::AggFunc;
use crate::predicate::CmpOp;
use crate::types::ColumnType;

/// How a collation compares strings, as far as pushdown cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollationClass {
    /// Byte order (C, POSIX, or a database default that is C).
    C,
    /// Equal only when bytewise equal, ordered by locale rules.
    Deterministic,
    /// Different strings may compare equal (case- or accent-insensitive).
    Nondeterministic,
    /// No collation: a type that has none (collation never matters outside
    /// text), or text whose sides carry different implicit collations,
    /// which Postgres refuses to compare (SQLSTATE 42P22) rather than
    /// picking one; so no text comparison, sort or group goes to a node.
    Unresolved,
}

/// Types that compare with each other the same way on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Integer,
    Float,
    Bool,
    Text,
    Bytea,
    Uuid,
    Date,
    Timestamp,
    Timestamptz,
    /// Never compared on a node.
    Local,
}

pub fn family(ty: ColumnType) -> Family {
    use ColumnType::*;
    match ty {
        Int2 | Int4 | Int8 => Family::Integer,
        Float4 | Float8 => Family::Float,
        Bool => Family::Bool,
        Text | Varchar => Family::Text,
        Bytea => Family::Bytea,
        Uuid => Family::Uuid,
        Date => Family::Date,
        Timestamp => Family::Timestamp,
        Timestamptz => Family::Timestamptz,
        Numeric | Bpchar | Json | Jsonb => Family::Local,
    }
}

/// The comparison an operator name denotes, for built-in operators.
pub fn comparison(name: &str) -> Option<CmpOp> {
    Some(match name {
        "=" => CmpOp::Eq,
        "<>" => CmpOp::Ne,
        "<" => CmpOp::Lt,
        "<=" => CmpOp::Le,
        ">" => CmpOp::Gt,
        ">=" => CmpOp::Ge,
        _ => return None,
    })
}

/// Whether a built-in operator name is LIKE (`Some(false)`) or NOT LIKE
/// (`Some(true)`).
pub fn like_negation(name: &str) -> Option<bool> {
    match name {
        "~~" => Some(false),
        "!~~" => Some(true),
        _ => None,
    }
}

/// Whether `column op operand` gives Postgres' answer on a node, for a
/// column and a value side of these types compared under `collation` (the
/// operator's input collation).
pub fn comparison_pushable(
    column: ColumnType,
    operand: ColumnType,
    op: CmpOp,
    collation: CollationClass,
) -> bool {
    let f = family(column);
    if f == Family::Local || f != family(operand) {
        return false;
    }
    if f != Family::Text {
        return true;
    }
    match collation {
        CollationClass::C => true,
        CollationClass::Deterministic => matches!(op, CmpOp::Eq | CmpOp::Ne),
        CollationClass::Nondeterministic | CollationClass::Unresolved => false,
    }
}

/// Whether `left op right`, two columns of a pushed join (each stored by
/// its own type), gives Postgres' answer on a node: the stored forms of one
/// family compare as their values do, exactly as a column compares with a
/// value of its family (NULL on either side is unknown in both).
pub fn columns_comparison_pushable(
    left: ColumnType,
    right: ColumnType,
    op: CmpOp,
    collation: CollationClass,
) -> bool {
    comparison_pushable(left, right, op, collation)
}

/// Whether `column [NOT] LIKE constant` may become a case-sensitive GLOB.
pub fn like_pushable(column: ColumnType, pattern: ColumnType, collation: CollationClass) -> bool {
    family(column) == Family::Text
        && family(pattern) == Family::Text
        && matches!(collation, CollationClass::C | CollationClass::Deterministic)
}

/// Whether values of this type travel to the nodes as integers or text,
/// the forms a long IN list sends as one JSON argument (SQLite would
/// re-parse a float's decimal text; a blob has no JSON form). See
/// `Pred::max_arguments`. Only an array of such elements may be bound at
/// run time as the list of `column = ANY(…)`: its length is known only
/// when the statement runs, and a longer list of any other type would need
/// an argument per element, past SQLite's 32,766.
pub fn travels_as_json(ty: ColumnType) -> bool {
    !matches!(family(ty), Family::Float | Family::Bytea)
}

/// Whether `ORDER BY column` (ascending or descending, NULLS FIRST or
/// LAST, the type's default ordering) under `collation` may be done by the
/// nodes, the router merging their sorted streams.
pub fn sort_pushable(column: ColumnType, collation: CollationClass) -> bool {
    match family(column) {
        Family::Local => false,
        Family::Text => collation == CollationClass::C,
        _ => true,
    }
}

/// Whether `GROUP BY column` may be done by the nodes: the same values are
/// one group in SQLite and Postgres (and the router compares the groups
/// the shards return bytewise).
pub fn group_pushable(column: ColumnType, collation: CollationClass) -> bool {
    sort_pushable(column, collation)
}

/// The pushed form of a built-in aggregate `name` applied to `*` (`arg`
/// None) or to a column of this type whose input collation is
/// `collation`; None when it stays local.
/// `decimal`: every node of the table offers the exact decimal aggregates.
pub fn aggregate(
    name: &str,
    arg: Option<(ColumnType, CollationClass)>,
    decimal: bool,
) -> Option<AggFunc> {
    use ColumnType::*;
    let Some((ty, collation)) = arg else {
        return (name == "count").then_some(AggFunc::CountStar);
    };
    Some(match (name, ty) {
        ("count", _) => AggFunc::Count,
        ("sum", Int2 | Int4) => AggFunc::SumInt,
        ("sum", Int8) => AggFunc::SumBigint,
        ("sum", Float8) => AggFunc::SumFloat,
        ("avg", Int2 | Int4 | Int8) => AggFunc::AvgInt,
        ("avg", Float4 | Float8) => AggFunc::AvgFloat,
        ("bool_and" | "every", Bool) => AggFunc::BoolAnd,
        ("bool_or", Bool) => AggFunc::BoolOr,
        ("sum", Numeric) if decimal => AggFunc::SumDecimal,
        ("avg", Numeric) if decimal => AggFunc::AvgDecimal,
        ("min", Numeric) if decimal => AggFunc::MinDecimal,
        ("max", Numeric) if decimal => AggFunc::MaxDecimal,
        ("min" | "max", _) => {
            let ordered = match family(ty) {
                Family::Integer
                | Family::Float
                | Family::Date
                | Family::Timestamp
                | Family::Timestamptz => true,
                Family::Text => collation == CollationClass::C,
                _ => false,
            };
            if !ordered {
                return None;
            }
            if name == "min" {
                AggFunc::Min
            } else {
                AggFunc::Max
            }
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_lists_of_integers_and_text_are_bound_at_run_time() {
        use ColumnType::*;
        for ty in [Float4, Float8, Bytea] {
            assert!(!travels_as_json(ty));
        }
        for ty in [Int8, Text, Uuid, Date, Timestamptz, Bool] {
            assert!(travels_as_json(ty));
        }
    }

    use super::*;
    use ColumnType::*;

    #[test]
    fn what_sorts_groups_and_aggregates_on_a_node() {
        let c = CollationClass::C;
        let d = CollationClass::Deterministic;
        for ty in ColumnType::ALL {
            let local = family(ty) == Family::Local;
            assert_eq!(sort_pushable(ty, c), !local, "{ty}");
            assert_eq!(group_pushable(ty, c), !local, "{ty}");
            assert_eq!(
                aggregate("count", Some((ty, d)), false),
                Some(AggFunc::Count)
            );
        }
        assert!(!sort_pushable(Text, d));
        assert!(!group_pushable(Varchar, CollationClass::Nondeterministic));
        assert_eq!(aggregate("count", None, false), Some(AggFunc::CountStar));
        assert_eq!(aggregate("sum", None, false), None);
        assert_eq!(
            aggregate("sum", Some((Int4, c)), false),
            Some(AggFunc::SumInt)
        );
        assert_eq!(
            aggregate("sum", Some((Int8, c)), false),
            Some(AggFunc::SumBigint)
        );
        assert_eq!(aggregate("sum", Some((Float4, c)), false), None);
        assert_eq!(aggregate("sum", Some((Numeric, c)), false), None);
        assert_eq!(
            aggregate("avg", Some((Int2, c)), false),
            Some(AggFunc::AvgInt)
        );
        assert_eq!(
            aggregate("avg", Some((Float4, c)), false),
            Some(AggFunc::AvgFloat)
        );
        assert_eq!(aggregate("min", Some((Text, c)), false), Some(AggFunc::Min));
        assert_eq!(aggregate("max", Some((Text, d)), false), None);
        assert_eq!(aggregate("max", Some((Numeric, c)), false), None);
        assert_eq!(aggregate("max", Some((Bpchar, c)), false), None);
        assert_eq!(
            aggregate("max", Some((Timestamptz, d)), false),
            Some(AggFunc::Max)
        );
        assert_eq!(aggregate("stddev", Some((Int4, c)), false), None);
        assert_eq!(
            aggregate("bool_and", Some((Bool, d)), false),
            Some(AggFunc::BoolAnd)
        );
        assert_eq!(
            aggregate("every", Some((Bool, d)), false),
            Some(AggFunc::BoolAnd)
        );
        assert_eq!(
            aggregate("bool_or", Some((Bool, d)), false),
            Some(AggFunc::BoolOr)
        );
        // numeric only where the nodes have the exact decimal aggregates
        let n = Some((Numeric, d));
        assert_eq!(aggregate("sum", n, true), Some(AggFunc::SumDecimal));
        assert_eq!(aggregate("avg", n, true), Some(AggFunc::AvgDecimal));
        assert_eq!(aggregate("min", n, true), Some(AggFunc::MinDecimal));
        assert_eq!(aggregate("max", n, true), Some(AggFunc::MaxDecimal));
        assert_eq!(aggregate("avg", n, false), None);
        assert_eq!(aggregate("min", n, false), None);
        assert_eq!(
            aggregate("sum", Some((Int8, d)), true),
            Some(AggFunc::SumBigint)
        );
        assert_eq!(aggregate("max", Some((Bpchar, c)), true), None);
    }

    #[test]
    fn families_compare_only_with_themselves() {
        for a in ColumnType::ALL {
            for b in ColumnType::ALL {
                let pushed = comparison_pushable(a, b, CmpOp::Eq, CollationClass::C);
                assert_eq!(
                    pushed,
                    family(a) == family(b) && family(a) != Family::Local,
                    "{a} = {b}"
                );
            }
        }
        assert!(comparison_pushable(
            Int2,
            Int8,
            CmpOp::Lt,
            CollationClass::C
        ));
        assert!(!comparison_pushable(
            Date,
            Timestamp,
            CmpOp::Eq,
            CollationClass::C
        ));
        assert!(!comparison_pushable(
            Timestamp,
            Timestamptz,
            CmpOp::Eq,
            CollationClass::C
        ));
        assert!(comparison_pushable(
            Timestamptz,
            Timestamptz,
            CmpOp::Ge,
            CollationClass::Deterministic
        ));
    }

    #[test]
    fn text_depends_on_the_collation() {
        for op in [
            CmpOp::Eq,
            CmpOp::Ne,
            CmpOp::Lt,
            CmpOp::Le,
            CmpOp::Gt,
            CmpOp::Ge,
        ] {
            let equality = matches!(op, CmpOp::Eq | CmpOp::Ne);
            assert!(comparison_pushable(Text, Varchar, op, CollationClass::C));
            assert_eq!(
                comparison_pushable(Text, Text, op, CollationClass::Deterministic),
                equality
            );
            assert!(!comparison_pushable(
                Text,
                Text,
                op,
                CollationClass::Nondeterministic
            ));
        }
        // Conflicting implicit collations: Postgres raises an error.
        for op in [CmpOp::Eq, CmpOp::Lt] {
            assert!(!comparison_pushable(
                Text,
                Text,
                op,
                CollationClass::Unresolved
            ));
        }
        assert!(!like_pushable(Text, Text, CollationClass::Unresolved));
        assert!(!sort_pushable(Text, CollationClass::Unresolved));
        assert!(!group_pushable(Varchar, CollationClass::Unresolved));
        assert_eq!(
            aggregate("max", Some((Text, CollationClass::Unresolved)), false),
            None
        );
        // Collation never matters outside text.
        assert!(comparison_pushable(
            Int4,
            Int4,
            CmpOp::Lt,
            CollationClass::Nondeterministic
        ));
        for ty in [Int8, Float8, Bool, Bytea, Uuid, Date, Timestamptz] {
            assert!(comparison_pushable(
                ty,
                ty,
                CmpOp::Lt,
                CollationClass::Unresolved
            ));
            assert!(sort_pushable(ty, CollationClass::Unresolved));
        }
        assert!(like_pushable(Text, Text, CollationClass::Deterministic));
        assert!(!like_pushable(Text, Text, CollationClass::Nondeterministic));
        assert!(!like_pushable(Bpchar, Text, CollationClass::C));
    }

    #[test]
    fn float_arrays_bound_at_run_time_stay_local() {
        assert!(!travels_as_json(Float8));
        assert!(travels_as_json(Int8));
        assert!(travels_as_json(Timestamptz));
    }

    #[test]
    fn operators_by_meaning() {
        assert_eq!(comparison("<="), Some(CmpOp::Le));
        assert_eq!(comparison("~~"), None);
        assert_eq!(like_negation("!~~"), Some(true));
        assert_eq!(like_negation("="), None);
    }
}
