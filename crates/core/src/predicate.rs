//! The predicate IR the FDW lowers a scan's WHERE clause into (from
//! Postgres planner nodes, as the pushdown rulebook allows). It holds only
//! what SQLite evaluates exactly as Postgres does; whatever cannot be
//! expressed here stays a local filter in Postgres. The router reads the
//! shard key's constraints from it, and [`deparse`] turns it into the WHERE
//! clause a shard runs, values always as `?` arguments and every column
//! qualified with its shard table.

use crate::remote_sql::{in_json_sql, qualified_column};
use crate::types::{TypedValue, NAN_TEXT};
use conductor_hrana::Value;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A value a predicate compares a column with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Operand {
    /// Known when planning; `None` is SQL NULL.
    Const(Option<TypedValue>),
    /// Bound when the statement runs: index into the [`Binding`]s (a
    /// prepared statement's `$n`, a nested loop's outer value).
    Param(usize),
}

/// What a [`Operand::Param`] is bound to at execution.
#[derive(Debug, Clone, PartialEq)]
pub enum Binding {
    Value(Option<TypedValue>),
    /// An array parameter (`col = ANY($1)`); `None` is a NULL array.
    List(Option<Vec<Option<TypedValue>>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn sql(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }

    /// The operator with its operands swapped (`5 < col` is `col > 5`).
    pub fn commuted(self) -> CmpOp {
        match self {
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
            other => other,
        }
    }
}

/// The elements of an IN list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ListOperand {
    Items(Vec<Operand>),
    /// An array bound at execution ([`Binding::List`]).
    Param(usize),
}

/// A restriction on the rows of one table. Columns are indexes into the
/// scan's column list (names are supplied when deparsing).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Pred {
    Bool(bool),
    Cmp {
        column: usize,
        op: CmpOp,
        value: Operand,
    },
    /// `column IN (…)` / `column = ANY(…)`.
    In {
        column: usize,
        list: ListOperand,
    },
    IsNull {
        column: usize,
        negated: bool,
    },
    /// `column GLOB pattern`: a Postgres LIKE translated by [`like_to_glob`]
    /// (case-sensitive, unlike SQLite's LIKE).
    Glob {
        column: usize,
        pattern: String,
        negated: bool,
    },
    And(Vec<Pred>),
    Or(Vec<Pred>),
    Not(Box<Pred>),
    /// `left op right`: two columns of a join, each of its own table
    /// (indexes into the join's column space, see `plan::JoinQuery`).
    Columns {
        left: usize,
        op: CmpOp,
        right: usize,
    },
}

/// The most arguments (`?`) the conditions pushed into one statement may
/// bind together. SQLite takes at most 32,766 per statement; the rest is
/// room for the statement's other arguments (a LIMIT, the values of an
/// UPDATE's SET). A condition that would take a statement past it is
/// evaluated by Postgres instead.
pub const MAX_CONDITION_ARGUMENTS: usize = 30_000;

impl Pred {
    /// An OR of `terms`, the equalities of one column with values (and
    /// its IN lists) gathered into one IN list: `c = 1 OR d = 2 OR c = 3`
    /// is `c IN (1, 3) OR d = 2`. IN is defined as that OR, NULLs
    /// included, so the rows are the same; but a node evaluates a list by
    /// lookup where it would try each term in turn (an ORM's batch of a
    /// thousand lookups), one list on the shard key is split per shard
    /// like any other, and a long list of integers or text travels as one
    /// argument instead of one per term.
    pub fn any_of(terms: Vec<Pred>) -> Pred {
        // Per column, in order of first appearance: the position of its
        // first term, and its values.
        let mut lists: Vec<(usize, usize, Vec<Operand>, usize)> = Vec::new();
        let mut kept: Vec<Option<Pred>> = Vec::with_capacity(terms.len());
        for term in terms {
            let (column, values) = match term {
                Pred::Cmp {
                    column,
                    op: CmpOp::Eq,
                    value,
                } => (column, vec![value]),
                Pred::In {
                    column,
                    list: ListOperand::Items(items),
                } => (column, items),
                other => {
                    kept.push(Some(other));
                    continue;
                }
            };
            match lists.iter_mut().find(|(c, ..)| *c == column) {
                Some((_, _, list, merged)) => {
                    list.extend(values);
                    *merged += 1;
                }
                None => {
                    lists.push((column, kept.len(), values, 1));
                    kept.push(None);
                }
            }
        }
        for (column, at, values, terms) in lists {
            kept[at] = Some(if terms == 1 && values.len() == 1 {
                Pred::Cmp {
                    column,
                    op: CmpOp::Eq,
                    value: values.into_iter().next().expect("one value"),
                }
            } else {
                Pred::In {
                    column,
                    list: ListOperand::Items(values),
                }
            });
        }
        let mut terms: Vec<Pred> = kept.into_iter().flatten().collect();
        if terms.len() == 1 {
            terms.pop().expect("one term")
        } else {
            Pred::Or(terms)
        }
    }

    /// The most arguments [`deparse`] can bind for this predicate.
    /// `json_param(i)` says whether parameter `i`'s values travel as
    /// integers or text (the forms a long IN list sends as one JSON
    /// argument; not floats, whose infinities also take two arguments, nor
    /// bytea).
    pub fn max_arguments(&self, json_param: &dyn Fn(usize) -> bool) -> usize {
        let one = |operand: &Operand| match operand {
            Operand::Const(v) if json_value(v) => 1,
            Operand::Param(i) if json_param(*i) => 1,
            // a float's ±Infinity is two comparisons (infinity_cmp)
            _ => 2,
        };
        match self {
            Pred::Bool(_) | Pred::IsNull { .. } | Pred::Columns { .. } => 0,
            Pred::Cmp { value, .. } => one(value),
            Pred::Glob { .. } => 1,
            Pred::In {
                list: ListOperand::Items(items),
                ..
            } => {
                // one per element, or one for all of a long JSON list; a
                // list with infinities also compares with each sign (two
                // arguments apiece)
                match items.iter().all(|o| one(o) == 1) {
                    true if items.len() > IN_LIST_JSON_THRESHOLD => 1,
                    true => items.len(),
                    false => items.len() + 4,
                }
            }
            // Bound at execution: one argument per element up to the JSON
            // threshold, one in all past it (only lists whose values travel
            // as JSON are bound at run time: `pushdown::travels_as_json`).
            Pred::In {
                list: ListOperand::Param(_),
                ..
            } => IN_LIST_JSON_THRESHOLD,
            Pred::And(ps) | Pred::Or(ps) => ps.iter().map(|p| p.max_arguments(json_param)).sum(),
            Pred::Not(p) => p.max_arguments(json_param),
        }
    }
}

/// Whether a constant travels as an integer, text or NULL (see
/// [`json_list`] and `pushdown::travels_as_json`), judged by its variant
/// alone: a float (even one whose form is the text 'NaN') or a blob counts
/// as one that does not.
fn json_value(v: &Option<TypedValue>) -> bool {
    !matches!(
        v,
        Some(TypedValue::Float4(_) | TypedValue::Float8(_) | TypedValue::Bytea(_))
    )
}

/// Why a predicate cannot be turned into shard SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeparseError {
    /// A parameter the predicate refers to was not bound (a front-end bug,
    /// or `conductor_explain` of a statement with `$n`).
    Unbound(usize),
    /// A bound value has no exact SQLite form.
    Unrepresentable(String),
}

impl fmt::Display for DeparseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeparseError::Unbound(i) => write!(f, "parameter ${} is not bound", i + 1),
            DeparseError::Unrepresentable(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for DeparseError {}

pub(crate) fn bind_value(
    operand: &Operand,
    bindings: &[Binding],
) -> Result<Option<TypedValue>, DeparseError> {
    match operand {
        Operand::Const(v) => Ok(v.clone()),
        Operand::Param(i) => match bindings.get(*i) {
            Some(Binding::Value(v)) => Ok(v.clone()),
            _ => Err(DeparseError::Unbound(*i)),
        },
    }
}

/// The elements of an IN list; `None` when the list itself is NULL.
pub(crate) fn bind_list(
    list: &ListOperand,
    bindings: &[Binding],
) -> Result<Option<Vec<Option<TypedValue>>>, DeparseError> {
    match list {
        ListOperand::Items(items) => items
            .iter()
            .map(|o| bind_value(o, bindings))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        ListOperand::Param(i) => match bindings.get(*i) {
            Some(Binding::List(l)) => Ok(l.clone()),
            _ => Err(DeparseError::Unbound(*i)),
        },
    }
}

fn arg(value: Option<TypedValue>, column: &str) -> Result<Value, DeparseError> {
    match value {
        None => Ok(Value::Null),
        Some(v) => v
            .to_value(column)
            .map_err(|e| DeparseError::Unrepresentable(e.to_string())),
    }
}

/// `Some(true)` for a float +Infinity, `Some(false)` for -Infinity.
fn float_infinity(v: &Option<TypedValue>) -> Option<bool> {
    let f = match v {
        Some(TypedValue::Float8(f)) => *f,
        Some(TypedValue::Float4(f)) => f64::from(*f),
        _ => return None,
    };
    f.is_infinite().then_some(f > 0.0)
}

/// `column op ±Infinity` for a float column, written without the infinity
/// (which the JSON encoding cannot send) and exact on the stored forms:
/// finite and infinite REALs, and the text `'NaN'`, which SQLite orders
/// after every number. `M` is the largest finite double (above every
/// finite float4 or float8), `N` the NaN text; each form is NULL exactly
/// when the column is, so NOT keeps Postgres' three-valued logic.
fn infinity_cmp(column: &str, op: CmpOp, positive: bool) -> (String, Vec<Value>) {
    let max = || Value::Float(f64::MAX);
    let neg_max = || Value::Float(-f64::MAX);
    let nan = || Value::Text(NAN_TEXT.to_string());
    let one = |o: &str, v: Value| (format!("{column} {o} ?"), vec![v]);
    let two = |o1: &str, v1: Value, join: &str, o2: &str, v2: Value| {
        (
            format!("({column} {o1} ? {join} {column} {o2} ?)"),
            vec![v1, v2],
        )
    };
    match (positive, op) {
        // Infinity: only NaN is above it.
        (true, CmpOp::Eq) => two(">", max(), "AND", "<", nan()),
        (true, CmpOp::Ne) => two("<=", max(), "OR", ">=", nan()),
        (true, CmpOp::Lt) => one("<=", max()),
        (true, CmpOp::Le) => one("<", nan()),
        (true, CmpOp::Gt) => one(">=", nan()),
        (true, CmpOp::Ge) => one(">", max()),
        // -Infinity: below everything else.
        (false, CmpOp::Eq | CmpOp::Le) => one("<", neg_max()),
        (false, CmpOp::Ne | CmpOp::Gt) => one(">=", neg_max()),
        (false, CmpOp::Lt) => two("<", neg_max(), "AND", ">", neg_max()),
        (false, CmpOp::Ge) => two(">=", neg_max(), "OR", "<", neg_max()),
    }
}

/// IN lists longer than this travel as one JSON array argument expanded on
/// the node (`IN (SELECT value FROM json_each(?))`) instead of one `?` per
/// element: a list of any length then fits SQLite's limit of 32,766
/// arguments per statement, and the request carries one string instead of
/// a typed value object per element. Shorter lists keep the plain `IN (?,
/// …)` form.
pub const IN_LIST_JSON_THRESHOLD: usize = 1000;

/// The elements as one JSON array, when every one has an exact JSON form
/// that `json_each` hands back with the same SQLite type: integers
/// (INTEGER), text (TEXT) and NULL. Floats (whose decimal form SQLite
/// re-parses) and blobs (no JSON form) give `None`, and such a list keeps
/// one `?` per element.
fn json_list(values: &[Value]) -> Option<String> {
    let mut items = Vec::with_capacity(values.len());
    for v in values {
        items.push(match v {
            Value::Null => serde_json::Value::Null,
            Value::Integer(i) => serde_json::Value::from(*i),
            Value::Text(t) => serde_json::Value::String(t.clone()),
            Value::Float(_) | Value::Blob(_) => return None,
        });
    }
    Some(serde_json::Value::Array(items).to_string())
}

/// SQLite SQL for the conjunction of `preds`, with its arguments in order.
/// `names[i]` is the name of column `i` on the shard table `table`.
pub fn deparse(
    preds: &[Pred],
    table: &str,
    names: &[&str],
    bindings: &[Binding],
) -> Result<(String, Vec<Value>), DeparseError> {
    let names: Vec<String> = names.iter().map(|n| qualified_column(table, n)).collect();
    deparse_refs(preds, &names, bindings)
}

/// [`deparse`] over columns given as their SQL references (quoted and
/// qualified), e.g. the columns of both sides of a join.
pub fn deparse_refs(
    preds: &[Pred],
    names: &[String],
    bindings: &[Binding],
) -> Result<(String, Vec<Value>), DeparseError> {
    let mut sql = String::new();
    let mut args = Vec::new();
    deparse_joined(
        preds,
        " AND ",
        names,
        Some(bindings),
        &mut sql,
        &mut args,
        preds.len() > 1,
    )?;
    Ok((sql, args))
}

/// The SQL text of [`deparse`] before parameters are bound (for EXPLAIN of
/// a generic plan): a parameter is `?`, an array parameter `(?…)`.
pub fn deparse_template(preds: &[Pred], table: &str, names: &[&str]) -> String {
    let names: Vec<String> = names.iter().map(|n| qualified_column(table, n)).collect();
    deparse_refs_template(preds, &names)
}

/// [`deparse_template`] over columns given as their SQL references.
pub fn deparse_refs_template(preds: &[Pred], names: &[String]) -> String {
    let mut sql = String::new();
    let mut args = Vec::new();
    // Without bindings nothing can fail: values are not converted.
    let _ = deparse_joined(
        preds,
        " AND ",
        names,
        None,
        &mut sql,
        &mut args,
        preds.len() > 1,
    );
    sql
}

/// Terms of an AND or OR written one after the other; longer ones are
/// grouped (see [`deparse_joined`]).
const CHAIN_MAX: usize = 64;

/// `preds` joined by `joiner` (`" AND "` or `" OR "`), each parenthesized
/// when `parenthesize`. SQLite parses `a OR b OR c …` into a tree as deep
/// as the chain is long and refuses one deeper than 1,000 ("Expression
/// tree is too large"), as an ORM's OR of a few thousand key lookups
/// would be; AND and OR are associative (in three-valued logic too), so a
/// chain longer than [`CHAIN_MAX`] is written as its two halves, each
/// parenthesized and split the same way: the same condition, about
/// `CHAIN_MAX + log2(len)` deep.
fn deparse_joined(
    preds: &[Pred],
    joiner: &str,
    names: &[String],
    bindings: Option<&[Binding]>,
    sql: &mut String,
    args: &mut Vec<Value>,
    parenthesize: bool,
) -> Result<(), DeparseError> {
    if preds.len() > CHAIN_MAX {
        let (first, second) = preds.split_at(preds.len() / 2);
        sql.push('(');
        deparse_joined(first, joiner, names, bindings, sql, args, true)?;
        sql.push(')');
        sql.push_str(joiner);
        sql.push('(');
        deparse_joined(second, joiner, names, bindings, sql, args, true)?;
        sql.push(')');
        return Ok(());
    }
    for (i, p) in preds.iter().enumerate() {
        if i > 0 {
            sql.push_str(joiner);
        }
        deparse_one(p, names, bindings, sql, args, parenthesize)?;
    }
    Ok(())
}

/// `names` are the columns' SQL references (quoted and qualified).
fn deparse_one(
    pred: &Pred,
    names: &[String],
    bindings: Option<&[Binding]>,
    sql: &mut String,
    args: &mut Vec<Value>,
    parenthesize: bool,
) -> Result<(), DeparseError> {
    let open = |sql: &mut String| {
        if parenthesize {
            sql.push('(')
        }
    };
    let close = |sql: &mut String| {
        if parenthesize {
            sql.push(')')
        }
    };
    match pred {
        Pred::Bool(b) => sql.push_str(if *b { "1" } else { "0" }),
        Pred::Cmp { column, op, value } => {
            let name = names[*column].as_str();
            let bound = match (bindings, value) {
                (Some(bindings), _) => Some(bind_value(value, bindings)?),
                (None, Operand::Const(v)) => Some(v.clone()),
                (None, Operand::Param(_)) => None,
            };
            if let Some(positive) = bound.as_ref().and_then(float_infinity) {
                let (cmp_sql, cmp_args) = infinity_cmp(name, *op, positive);
                sql.push_str(&cmp_sql);
                if bindings.is_some() {
                    args.extend(cmp_args);
                }
                return Ok(());
            }
            sql.push_str(name);
            sql.push(' ');
            sql.push_str(op.sql());
            sql.push_str(" ?");
            if let Some(v) = bound.filter(|_| bindings.is_some()) {
                args.push(arg(v, name)?);
            }
        }
        Pred::In { column, list } => {
            let name = names[*column].as_str();
            let Some(bindings) = bindings else {
                match list {
                    ListOperand::Items(items) if items.len() > IN_LIST_JSON_THRESHOLD => {
                        sql.push_str(&in_json_sql(name));
                    }
                    ListOperand::Items(items) => {
                        let marks = vec!["?"; items.len()].join(", ");
                        sql.push_str(&format!("{name} IN ({marks})"));
                    }
                    ListOperand::Param(_) => sql.push_str(&format!("{name} IN (?…)")),
                }
                return Ok(());
            };
            match bind_list(list, bindings)? {
                // `x = ANY(NULL::int[])` is NULL for every row.
                None => sql.push_str("NULL"),
                Some(items) if items.is_empty() => sql.push('0'),
                Some(items) if items.iter().any(|v| float_infinity(v).is_some()) => {
                    // `x IN (a, Infinity)` is `(x IN (a) OR x = Infinity)`,
                    // NULL where the list alone would be.
                    let (infinite, rest): (Vec<_>, Vec<_>) =
                        items.into_iter().partition(|v| float_infinity(v).is_some());
                    let mut signs: Vec<bool> = infinite.iter().filter_map(float_infinity).collect();
                    signs.sort();
                    signs.dedup();
                    let mut terms = Vec::new();
                    if !rest.is_empty() {
                        let mut rest_sql = String::new();
                        deparse_one(
                            &Pred::In {
                                column: *column,
                                list: ListOperand::Items(
                                    rest.into_iter().map(Operand::Const).collect(),
                                ),
                            },
                            names,
                            Some(bindings),
                            &mut rest_sql,
                            args,
                            false,
                        )?;
                        terms.push(rest_sql);
                    }
                    for positive in signs {
                        let (eq_sql, eq_args) = infinity_cmp(name, CmpOp::Eq, positive);
                        terms.push(eq_sql);
                        args.extend(eq_args);
                    }
                    sql.push('(');
                    sql.push_str(&terms.join(" OR "));
                    sql.push(')');
                }
                Some(items) => {
                    let values = items
                        .into_iter()
                        .map(|v| arg(v, name))
                        .collect::<Result<Vec<_>, _>>()?;
                    match (values.len() > IN_LIST_JSON_THRESHOLD)
                        .then(|| json_list(&values))
                        .flatten()
                    {
                        Some(json) => {
                            sql.push_str(&in_json_sql(name));
                            args.push(Value::Text(json));
                        }
                        None => {
                            sql.push_str(name);
                            sql.push_str(" IN (");
                            for (i, v) in values.into_iter().enumerate() {
                                sql.push_str(if i == 0 { "?" } else { ", ?" });
                                args.push(v);
                            }
                            sql.push(')');
                        }
                    }
                }
            }
        }
        Pred::IsNull { column, negated } => {
            sql.push_str(&names[*column]);
            sql.push_str(if *negated { " IS NOT NULL" } else { " IS NULL" });
        }
        Pred::Glob {
            column,
            pattern,
            negated,
        } => {
            sql.push_str(&names[*column]);
            sql.push_str(if *negated { " NOT GLOB ?" } else { " GLOB ?" });
            args.push(Value::Text(pattern.clone()));
        }
        Pred::And(ps) | Pred::Or(ps) => {
            let joiner = if matches!(pred, Pred::And(_)) {
                " AND "
            } else {
                " OR "
            };
            if ps.is_empty() {
                sql.push_str(if matches!(pred, Pred::And(_)) {
                    "1"
                } else {
                    "0"
                });
                return Ok(());
            }
            open(sql);
            deparse_joined(ps, joiner, names, bindings, sql, args, true)?;
            close(sql);
        }
        Pred::Not(p) => {
            sql.push_str("NOT (");
            deparse_one(p, names, bindings, sql, args, false)?;
            sql.push(')');
        }
        Pred::Columns { left, op, right } => {
            sql.push_str(&names[*left]);
            sql.push(' ');
            sql.push_str(op.sql());
            sql.push(' ');
            sql.push_str(&names[*right]);
        }
    }
    Ok(())
}

/// Translate a Postgres LIKE pattern (escape character `\`) into an
/// equivalent SQLite GLOB pattern, which is case-sensitive as LIKE is in
/// Postgres. None when the pattern is invalid in Postgres (a trailing
/// escape), so the caller keeps the filter local and Postgres reports it.
pub fn like_to_glob(pattern: &str) -> Option<String> {
    let mut glob = String::with_capacity(pattern.len() + 8);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        let literal = match c {
            '%' => {
                glob.push('*');
                continue;
            }
            '_' => {
                glob.push('?');
                continue;
            }
            '\\' => chars.next()?,
            c => c,
        };
        match literal {
            '*' | '?' | '[' => {
                glob.push('[');
                glob.push(literal);
                glob.push(']');
            }
            c => glob.push(c),
        }
    }
    Some(glob)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn int(i: i64) -> Operand {
        Operand::Const(Some(TypedValue::Int8(i)))
    }

    #[test]
    fn deparse_uses_arguments_only() {
        let preds = vec![
            Pred::Cmp {
                column: 0,
                op: CmpOp::Ge,
                value: int(5),
            },
            Pred::Or(vec![
                Pred::IsNull {
                    column: 1,
                    negated: false,
                },
                Pred::In {
                    column: 1,
                    list: ListOperand::Items(vec![
                        Operand::Const(Some(TypedValue::Text("a'b".into()))),
                        Operand::Param(0),
                    ]),
                },
            ]),
            Pred::Not(Box::new(Pred::Glob {
                column: 1,
                pattern: "x*".into(),
                negated: false,
            })),
        ];
        let bindings = [Binding::Value(Some(TypedValue::Text("z".into())))];
        let (sql, args) = deparse(&preds, "t", &["id", "na\"me"], &bindings).unwrap();
        assert_eq!(
            sql,
            r#""t"."id" >= ? AND ("t"."na""me" IS NULL OR "t"."na""me" IN (?, ?)) AND NOT ("t"."na""me" GLOB ?)"#
        );
        assert_eq!(
            args,
            vec![
                Value::Integer(5),
                Value::Text("a'b".into()),
                Value::Text("z".into()),
                Value::Text("x*".into())
            ]
        );
    }

    #[test]
    fn long_chains_are_written_as_balanced_groups() {
        let eq = |i: i64| Pred::Cmp {
            column: 0,
            op: CmpOp::Eq,
            value: int(i),
        };
        // Short: one chain, as always.
        let short = Pred::Or((0..3).map(eq).collect());
        let (sql, _) = deparse(&[short], "t", &["x"], &[]).unwrap();
        assert_eq!(sql, r#""t"."x" = ? OR "t"."x" = ? OR "t"."x" = ?"#);
        // Long: every value in order, no chain longer than CHAIN_MAX, and
        // nesting that grows with the logarithm of the length.
        let n = 5_000;
        let long = Pred::Or((0..n).map(eq).collect());
        let (sql, args) = deparse(&[long.clone(), long], "t", &["x"], &[]).unwrap();
        let values: Vec<Value> = (0..n).chain(0..n).map(Value::Integer).collect();
        assert_eq!(args, values);
        let mut depth: usize = 0;
        let mut deepest = 0;
        for c in sql.chars() {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            deepest = deepest.max(depth);
        }
        assert_eq!(depth, 0);
        assert!(deepest <= 2 + 8, "{deepest}");
        for chain in sql.split(['(', ')']) {
            assert!(chain.matches(" OR ").count() < CHAIN_MAX, "{chain}");
        }
    }

    #[test]
    fn unbound_parameters_are_errors() {
        let preds = vec![Pred::Cmp {
            column: 0,
            op: CmpOp::Eq,
            value: Operand::Param(2),
        }];
        assert_eq!(
            deparse(&preds, "t", &["id"], &[]),
            Err(DeparseError::Unbound(2))
        );
    }

    #[test]
    fn empty_and_null_lists() {
        let empty = Pred::In {
            column: 0,
            list: ListOperand::Items(vec![]),
        };
        assert_eq!(deparse(&[empty], "t", &["id"], &[]).unwrap().0, "0");
        let null = Pred::In {
            column: 0,
            list: ListOperand::Param(0),
        };
        assert_eq!(
            deparse(&[null], "t", &["id"], &[Binding::List(None)])
                .unwrap()
                .0,
            "NULL"
        );
    }

    fn eq(column: usize, value: Operand) -> Pred {
        Pred::Cmp {
            column,
            op: CmpOp::Eq,
            value,
        }
    }

    fn float(f: f64) -> Operand {
        Operand::Const(Some(TypedValue::Float8(f)))
    }

    #[test]
    fn an_or_of_equalities_is_an_in_list_per_column() {
        let null = Operand::Const(None);
        let merged = Pred::any_of(vec![
            eq(0, int(1)),
            eq(1, int(2)),
            Pred::IsNull {
                column: 2,
                negated: false,
            },
            eq(0, null.clone()),
            Pred::In {
                column: 0,
                list: ListOperand::Items(vec![int(3), Operand::Param(0)]),
            },
        ]);
        assert_eq!(
            merged,
            Pred::Or(vec![
                Pred::In {
                    column: 0,
                    list: ListOperand::Items(vec![int(1), null, int(3), Operand::Param(0)]),
                },
                eq(1, int(2)),
                Pred::IsNull {
                    column: 2,
                    negated: false,
                },
            ])
        );
        // One term per column stays as written; a lone term is no OR.
        let apart = Pred::any_of(vec![eq(0, int(1)), eq(1, int(2))]);
        assert_eq!(apart, Pred::Or(vec![eq(0, int(1)), eq(1, int(2))]));
        assert_eq!(
            Pred::any_of(vec![eq(0, int(1)), eq(0, int(2))]),
            Pred::In {
                column: 0,
                list: ListOperand::Items(vec![int(1), int(2)]),
            }
        );
        // Other comparisons are not equalities with a list.
        let ranges = vec![
            Pred::Cmp {
                column: 0,
                op: CmpOp::Lt,
                value: int(1),
            },
            Pred::Cmp {
                column: 0,
                op: CmpOp::Gt,
                value: int(9),
            },
        ];
        assert_eq!(Pred::any_of(ranges.clone()), Pred::Or(ranges));
        // What SQLite is sent: the same rows' condition as one list.
        let (sql, args) = deparse(
            &[Pred::any_of((0..3).map(|i| eq(0, int(i))).collect())],
            "t",
            &["k"],
            &[],
        )
        .unwrap();
        assert_eq!(sql, r#""t"."k" IN (?, ?, ?)"#);
        assert_eq!(args.len(), 3);
    }

    #[test]
    fn arguments_are_counted_as_deparse_binds_them() {
        let ints = |n: i64| ListOperand::Items((0..n).map(int).collect());
        let floats = |n: i64| ListOperand::Items((0..n).map(|i| float(i as f64)).collect());
        let never = |_: usize| false;
        let cases = vec![
            (eq(0, int(1)), 1),
            (eq(0, float(f64::INFINITY)), 2),
            (
                Pred::In {
                    column: 0,
                    list: ints(1000),
                },
                1000,
            ),
            (
                Pred::In {
                    column: 0,
                    list: ints(1001),
                },
                1,
            ),
            (
                Pred::In {
                    column: 0,
                    list: ListOperand::Items(vec![
                        float(1.0),
                        float(f64::INFINITY),
                        float(-f64::INFINITY),
                    ]),
                },
                7,
            ),
            (
                Pred::Not(Box::new(Pred::And(vec![
                    Pred::In {
                        column: 0,
                        list: floats(5000),
                    },
                    Pred::Glob {
                        column: 1,
                        pattern: "a*".into(),
                        negated: false,
                    },
                    Pred::IsNull {
                        column: 1,
                        negated: true,
                    },
                ]))),
                5005,
            ),
        ];
        for (i, (pred, bound)) in cases.into_iter().enumerate() {
            assert_eq!(pred.max_arguments(&never), bound, "case {i}");
            // The bound holds for what deparse binds.
            let (_, args) = deparse(std::slice::from_ref(&pred), "t", &["a", "b"], &[]).unwrap();
            assert!(args.len() <= bound, "case {i}: {} arguments", args.len());
        }
        let param = eq(0, Operand::Param(0));
        assert_eq!(param.max_arguments(&|_| true), 1);
        assert_eq!(param.max_arguments(&never), 2);
        let list = Pred::In {
            column: 0,
            list: ListOperand::Param(0),
        };
        assert_eq!(list.max_arguments(&|_| true), IN_LIST_JSON_THRESHOLD);
    }

    #[test]
    fn like_patterns_become_globs() {
        assert_eq!(like_to_glob("a%b_c").unwrap(), "a*b?c");
        assert_eq!(like_to_glob(r"100\%").unwrap(), "100%");
        assert_eq!(like_to_glob("*?[").unwrap(), "[*][?][[]");
        assert_eq!(like_to_glob(r"a\_b").unwrap(), "a_b");
        assert_eq!(like_to_glob(r"\\").unwrap(), r"\");
        assert_eq!(like_to_glob("x\\"), None);
        assert_eq!(like_to_glob("]").unwrap(), "]");
    }

    proptest::proptest! {
        /// Values never reach the SQL text, whatever they contain: the
        /// statement is the same for every value, which travels only as an
        /// argument; hostile column names are quoted and leave the
        /// statement's shape alone.
        #[test]
        fn hostile_values_and_names_never_change_the_statement(
            value in ".*",
            name in ".*",
            pattern in "[%_a-z'\";-]{0,12}",
        ) {
            let preds = |v: &str| {
                vec![
                    Pred::Cmp {
                        column: 0,
                        op: CmpOp::Eq,
                        value: Operand::Const(Some(TypedValue::Text(v.to_string()))),
                    },
                    Pred::In {
                        column: 1,
                        list: ListOperand::Items(vec![Operand::Const(Some(TypedValue::Text(
                            v.to_string(),
                        )))]),
                    },
                    Pred::Glob {
                        column: 1,
                        pattern: like_to_glob(&pattern).unwrap_or_default(),
                        negated: false,
                    },
                ]
            };
            proptest::prop_assume!(name != "k");
            let (sql, args) = deparse(&preds(&value), "t", &["k", &name], &[]).unwrap();
            let (plain, _) = deparse(&preds("x"), "t", &["k", &name], &[]).unwrap();
            proptest::prop_assert_eq!(&sql, &plain);
            proptest::prop_assert_eq!(args[0].clone(), Value::Text(value.clone()));
            // The name is one quoted identifier: remove it and the
            // statement is the fixed skeleton.
            let quoted = crate::remote_sql::qualified_column("t", &name);
            proptest::prop_assert_eq!(
                sql.replace(&quoted, "N"),
                r#""t"."k" = ? AND N IN (?) AND N GLOB ?"#
            );
        }
    }
}
