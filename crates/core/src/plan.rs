//! The shard plan: for one statement on one distributed table, which shards
//! it reaches (the route, as data, with its reason) and exactly what each is
//! sent (SQL text with `?` placeholders and its arguments). Scans, direct and
//! row-by-row modifies, inserts, EXPLAIN in all its forms and
//! `conductor_explain` all read a plan built here; nothing else assembles
//! shard statements.
//!
//! Every column reference in a plan's SQL is qualified with the shard table
//! (`"users_0007"."email"`): SQLite reads an unqualified double-quoted name
//! that matches no column as a string literal, while a qualified one is
//! always a column, so a shard whose schema lags the foreign table's fails
//! with "no such column" instead of returning the column's name as its value.

use crate::placement::{shard_for, KeyValue};
use crate::predicate::{
    deparse, deparse_refs, deparse_refs_template, deparse_template, Binding, DeparseError, Operand,
    Pred,
};
use crate::remote_sql::{
    count_sql, delete_sql, insert_do_nothing_sql, insert_sql, key_match_sql, max_rows_per_insert,
    qualified_column, quote_ident, sample_sql, select_sql, update_sql,
};
use crate::router::{route, Route, ShardKey};
use crate::topology::{ShardLocation, Topology};
use crate::types::TypedValue;
use crate::types::{uuid_from_text, ColumnType};
use conductor_hrana::{decimal, Stmt, Value};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What every target shard of a routed statement runs.
#[derive(Debug, Clone, PartialEq)]
pub enum StatementKind {
    /// `SELECT` of these columns (indexes into the topology's columns); with
    /// none, one NULL per row (what `count(*)` needs).
    Select { columns: Vec<usize> },
    /// `UPDATE … SET` these columns: `set[i]` to what `exprs[i]` computes
    /// from `values[i]` (a value Postgres evaluated once for the
    /// statement); no `exprs` means every column is set to its value.
    /// With `returning`, every column of each changed row comes back.
    Update {
        set: Vec<usize>,
        exprs: Vec<SetExpr>,
        values: Vec<Value>,
        returning: bool,
    },
    /// `DELETE`, returning every column of each deleted row when asked.
    Delete { returning: bool },
    /// A SELECT with aggregates, GROUP BY, ORDER BY or LIMIT pushed to
    /// every shard (the router merges the shards' answers: `merge.rs`).
    Pushed(PushedQuery),
}

/// How an UPDATE computes a column's new value on the node from its
/// operand (a value Postgres evaluated once for the statement), so a new
/// value that depends on the row (`SET n = n + 1`) needs no round trip to
/// fetch the row. Each shape is exact: the node computes what Postgres
/// would, or fails where Postgres would.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetExpr {
    /// The operand itself.
    Value,
    /// `column ± operand` or `operand ± column` over integers. A result
    /// outside `[min, max]` (the column type's range) fails on the node
    /// with SQLite's "integer overflow" (from `abs` of the smallest
    /// 64-bit integer), where Postgres raises "out of range".
    Integer {
        column: usize,
        op: ArithOp,
        column_first: bool,
        min: i64,
        max: i64,
    },
    /// `column || operand` or `operand || column` over text (NULL if
    /// either is NULL, in SQLite as in Postgres).
    Concat { column: usize, column_first: bool },
    /// numeric `column ± operand` or `operand ± column` through
    /// conductor-node's exact decimal functions, assigned to
    /// `numeric(precision, scale)` when the column has a type modifier.
    Decimal {
        column: usize,
        op: ArithOp,
        column_first: bool,
        typmod: Option<(u32, u32)>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ArithOp {
    Add,
    Subtract,
}

/// What SQLite's `abs` refuses with "integer overflow": the statement's
/// way to fail when an integer result leaves its column's range.
const OVERFLOW_PROBE: i64 = i64::MIN;

impl SetExpr {
    /// The SQL computing the new value in `table` and its arguments (the
    /// operand among them, possibly twice).
    fn render(
        &self,
        topology: &Topology,
        table: &str,
        operand: Option<&Value>,
    ) -> (String, Vec<Value>) {
        let column = |c: usize| qualified_column(table, &topology.columns[c].name);
        let operand = operand.cloned();
        let ordered = |c: usize, first: bool, op: &str| {
            if first {
                format!("{} {op} ?", column(c))
            } else {
                format!("? {op} {}", column(c))
            }
        };
        let args = |values: Vec<Value>| -> Vec<Value> {
            // A template (values not known yet) shows the SQL only.
            if operand.is_some() {
                values
            } else {
                Vec::new()
            }
        };
        let v = operand.clone().unwrap_or(Value::Null);
        match *self {
            SetExpr::Value => ("?".to_string(), args(vec![v])),
            SetExpr::Integer {
                column: c,
                op,
                column_first,
                min,
                max,
            } => {
                // SQLite turns a 64-bit overflow into a real, which may
                // round back onto the range's edge: only an integer in
                // range is a result.
                let e = ordered(c, column_first, op.sql());
                (
                    format!(
                        "CASE WHEN {e} IS NULL THEN NULL \
                         WHEN typeof({e}) = 'integer' AND {e} BETWEEN ? AND ? THEN {e} \
                         ELSE abs(?) END"
                    ),
                    args(vec![
                        v.clone(),
                        v.clone(),
                        v.clone(),
                        Value::Integer(min),
                        Value::Integer(max),
                        v,
                        Value::Integer(OVERFLOW_PROBE),
                    ]),
                )
            }
            SetExpr::Concat {
                column: c,
                column_first,
            } => (ordered(c, column_first, "||"), args(vec![v])),
            SetExpr::Decimal {
                column: c,
                op,
                column_first,
                typmod,
            } => {
                let function = match op {
                    ArithOp::Add => decimal::ADD_FUNCTION,
                    ArithOp::Subtract => decimal::SUB_FUNCTION,
                };
                let operands = if column_first {
                    format!("{}, ?", column(c))
                } else {
                    format!("?, {}", column(c))
                };
                let (p, s) = match typmod {
                    Some((p, s)) => (Value::Integer(p.into()), Value::Integer(s.into())),
                    None => (Value::Null, Value::Null),
                };
                (format!("{function}({operands}, ?, ?)"), args(vec![v, p, s]))
            }
        }
    }
}

impl ArithOp {
    fn sql(self) -> &'static str {
        match self {
            ArithOp::Add => "+",
            ArithOp::Subtract => "-",
        }
    }
}

/// One column of a pushed SELECT list, over topology column indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteExpr {
    Column(usize),
    /// `count(*)`
    CountStar,
    /// `count(col)`
    Count(usize),
    /// `sum(col >> 32)`: with [`RemoteExpr::SumLow`], an integer sum split
    /// so that neither half can overflow SQLite's 64-bit sum (which raises
    /// an error instead of widening); the router adds them in 128 bits.
    SumHigh(usize),
    /// `sum(col & 4294967295)`
    SumLow(usize),
    /// `sum(col)` (floats only: SQLite sums REALs as doubles)
    Sum(usize),
    Min(usize),
    Max(usize),
    /// conductor-node's exact sum of numeric text (see
    /// `conductor_hrana::decimal`); only nodes that offer it get it.
    DecimalSum(usize),
    /// conductor-node's numeric minimum (numeric order, not text order).
    DecimalMin(usize),
    /// conductor-node's numeric maximum.
    DecimalMax(usize),
}

impl RemoteExpr {
    /// The SQL of this expression, `col(i)` naming column `i`.
    pub fn sql(&self, col: impl Fn(usize) -> String) -> String {
        match *self {
            RemoteExpr::Column(c) => col(c),
            RemoteExpr::CountStar => "count(*)".to_string(),
            RemoteExpr::Count(c) => format!("count({})", col(c)),
            RemoteExpr::SumHigh(c) => format!("sum({} >> 32)", col(c)),
            RemoteExpr::SumLow(c) => format!("sum({} & 4294967295)", col(c)),
            RemoteExpr::Sum(c) => format!("sum({})", col(c)),
            RemoteExpr::Min(c) => format!("min({})", col(c)),
            RemoteExpr::Max(c) => format!("max({})", col(c)),
            RemoteExpr::DecimalSum(c) => format!("{}({})", decimal::SUM_FUNCTION, col(c)),
            RemoteExpr::DecimalMin(c) => format!("{}({})", decimal::MIN_FUNCTION, col(c)),
            RemoteExpr::DecimalMax(c) => format!("{}({})", decimal::MAX_FUNCTION, col(c)),
        }
    }
}

/// One ORDER BY key of a pushed SELECT. NULLS FIRST/LAST is always written
/// out: SQLite's default (NULLs first ascending) is not Postgres'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SortKey {
    /// A topology column, or with `output` a position in the select list
    /// (an aggregate's value: the groups are sorted after grouping).
    pub column: usize,
    pub descending: bool,
    pub nulls_first: bool,
    #[serde(default)]
    pub output: bool,
}

/// LIMIT and OFFSET of a pushed SELECT (constants or runtime parameters of
/// type bigint; a NULL count means no limit, a NULL offset none). Each shard
/// is sent `LIMIT count + offset`; the router skips `offset` rows of the
/// merged stream and stops after `count` more.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitSpec {
    pub count: Operand,
    pub offset: Operand,
}

/// LIMIT and OFFSET with their values bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitValues {
    /// `None`: no limit.
    pub count: Option<i64>,
    pub offset: i64,
}

impl LimitValues {
    /// Rows each shard must return so that the merge has every row of the
    /// answer: the first `count + offset` of its own (None: all).
    pub fn per_shard(&self) -> Option<i64> {
        self.count.map(|c| c.saturating_add(self.offset))
    }
}

/// Why LIMIT/OFFSET values are refused (Postgres' errors, same order: the
/// offset is checked first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitError {
    NegativeOffset,
    NegativeCount,
    Bad(DeparseError),
}

impl LimitSpec {
    /// Bind the values as Postgres' Limit node would.
    pub fn values(&self, bindings: &[Binding]) -> Result<LimitValues, LimitError> {
        let int = |o: &Operand| -> Result<Option<i64>, LimitError> {
            match crate::predicate::bind_value(o, bindings).map_err(LimitError::Bad)? {
                None => Ok(None),
                Some(TypedValue::Int8(v)) => Ok(Some(v)),
                Some(TypedValue::Int4(v)) => Ok(Some(v.into())),
                Some(TypedValue::Int2(v)) => Ok(Some(v.into())),
                Some(other) => Err(LimitError::Bad(DeparseError::Unrepresentable(format!(
                    "LIMIT/OFFSET value {other:?} is not an integer"
                )))),
            }
        };
        let offset = int(&self.offset)?.unwrap_or(0);
        if offset < 0 {
            return Err(LimitError::NegativeOffset);
        }
        let count = int(&self.count)?;
        if count.is_some_and(|c| c < 0) {
            return Err(LimitError::NegativeCount);
        }
        Ok(LimitValues { count, offset })
    }
}

/// A SELECT pushed to every target shard whole: `SELECT select FROM shard
/// [WHERE …] [GROUP BY group_by] [ORDER BY order_by] [LIMIT ?]`, or with a
/// `having`, `SELECT * FROM (SELECT … GROUP BY …) WHERE having [ORDER BY …]
/// [LIMIT ?]` (the grouped rows as a subquery whose columns the
/// predicates name by position: the same predicate IR and deparser as a
/// WHERE clause).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PushedQuery {
    pub select: Vec<RemoteExpr>,
    /// Per select item (or empty: none filtered): the index into `filters`
    /// of the aggregate's FILTER (WHERE …).
    #[serde(default)]
    pub select_filter: Vec<Option<usize>>,
    /// FILTER clauses, each a conjunction over topology columns.
    #[serde(default)]
    pub filters: Vec<Vec<Pred>>,
    pub group_by: Vec<usize>,
    /// HAVING over select positions (only when every group lives on one
    /// shard: then a shard's aggregate values are the final ones).
    #[serde(default)]
    pub having: Vec<Pred>,
    pub order_by: Vec<SortKey>,
    pub limit: Option<LimitSpec>,
}

/// The name of select position `i` in the subquery a HAVING reads.
fn output_name(i: usize) -> String {
    format!("c{i}")
}

const HAVING_ALIAS: &str = "grouped";

/// A pushed statement's text and the arguments before and after the WHERE
/// clause's.
struct PushedSql {
    sql: String,
    leading: Vec<Value>,
    trailing: Vec<Value>,
}

impl PushedQuery {
    /// The statement for one shard table; `bindings` None: the template
    /// (placeholders, no arguments).
    fn render(
        &self,
        topology: &Topology,
        table: &str,
        where_sql: Option<&str>,
        bindings: Option<&[Binding]>,
    ) -> Result<PushedSql, DeparseError> {
        let refs: Vec<String> = topology
            .columns
            .iter()
            .map(|c| qualified_column(table, &c.name))
            .collect();
        self.render_from(&refs, &quote_ident(table), where_sql, bindings)
    }

    /// [`PushedQuery::render`] over any FROM clause (a table, a pushed
    /// join), its columns given as their SQL references.
    fn render_from(
        &self,
        refs: &[String],
        from: &str,
        where_sql: Option<&str>,
        bindings: Option<&[Binding]>,
    ) -> Result<PushedSql, DeparseError> {
        let col = |c: usize| refs[c].clone();
        let mut leading = Vec::new();
        let mut trailing = Vec::new();
        let mut filter_sql = Vec::with_capacity(self.filters.len());
        for f in &self.filters {
            filter_sql.push(match bindings {
                Some(b) => deparse_refs(f, refs, b)?,
                None => (deparse_refs_template(f, refs), Vec::new()),
            });
        }
        let wrap = !self.having.is_empty();
        let mut exprs: Vec<String> = Vec::with_capacity(self.select.len());
        for (i, e) in self.select.iter().enumerate() {
            let filter = self.select_filter.get(i).copied().flatten();
            let filter_clause = match filter {
                Some(f) => {
                    let (sql, args) = &filter_sql[f];
                    leading.extend(args.iter().cloned());
                    format!(" FILTER (WHERE {sql})")
                }
                None => String::new(),
            };
            // An aggregate's text ends with its closing parenthesis, which
            // FILTER follows.
            let mut text = e.sql(&col) + &filter_clause;
            if wrap {
                text.push_str(" AS ");
                text.push_str(&output_name(i));
            }
            exprs.push(text);
        }
        let mut sql = format!(
            "SELECT {} FROM {}",
            if exprs.is_empty() {
                "NULL".to_string()
            } else {
                exprs.join(", ")
            },
            from
        );
        if let Some(w) = where_sql {
            sql.push_str(" WHERE ");
            sql.push_str(w);
        }
        if !self.group_by.is_empty() {
            let cols: Vec<String> = self.group_by.iter().map(|&c| col(c)).collect();
            sql.push_str(" GROUP BY ");
            sql.push_str(&cols.join(", "));
        }
        if wrap {
            let outputs: Vec<String> = (0..self.select.len()).map(output_name).collect();
            let outputs: Vec<&str> = outputs.iter().map(String::as_str).collect();
            let having = match bindings {
                Some(b) => {
                    let (sql, args) = deparse(&self.having, HAVING_ALIAS, &outputs, b)?;
                    trailing.extend(args);
                    sql
                }
                None => deparse_template(&self.having, HAVING_ALIAS, &outputs),
            };
            sql = format!(
                "SELECT * FROM ({sql}) AS {} WHERE {having}",
                quote_ident(HAVING_ALIAS)
            );
        }
        if !self.order_by.is_empty() {
            let keys: Vec<String> = self
                .order_by
                .iter()
                .map(|k| {
                    format!(
                        "{}{} NULLS {}",
                        if k.output {
                            (k.column + 1).to_string()
                        } else {
                            col(k.column)
                        },
                        if k.descending { " DESC" } else { "" },
                        if k.nulls_first { "FIRST" } else { "LAST" }
                    )
                })
                .collect();
            sql.push_str(" ORDER BY ");
            sql.push_str(&keys.join(", "));
        }
        if let Some(spec) = &self.limit {
            sql.push_str(" LIMIT ?");
            // The per-shard row cap (-1, SQLite's "no limit", when the
            // count is NULL).
            if let Some(b) = bindings {
                match spec.values(b) {
                    Ok(v) => trailing.push(Value::Integer(v.per_shard().unwrap_or(-1))),
                    Err(LimitError::Bad(e)) => return Err(e),
                    Err(e) => return Err(DeparseError::Unrepresentable(format!("{e:?}"))),
                }
            }
        }
        Ok(PushedSql {
            sql,
            leading,
            trailing,
        })
    }
}

/// How the two tables of a pushed join are joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JoinType {
    Inner,
    /// Every row of the outer table, with NULLs where no inner row matches.
    Left,
}

/// A join of two co-located tables run per shard as one SQL join: shard i
/// of the outer table joined with shard i of the inner one, on the node
/// that holds both. Columns are numbered over the join: the outer table's
/// columns first (`0..n`), then the inner table's (`n + i`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JoinQuery {
    pub join_type: JoinType,
    /// The SELECT list (join column numbers); none selects one NULL.
    pub outputs: Vec<usize>,
    /// The ON condition: the join clauses and, for a LEFT join, the inner
    /// table's own restriction (which filters inner rows before the join).
    pub on: Vec<Pred>,
    /// The WHERE clause: every other pushed condition.
    pub filter: Vec<Pred>,
    /// The inner table is a reference table: its one shard is on every
    /// node, so shard i of the outer table joins with it there, and its key
    /// says nothing about the outer table's shards.
    #[serde(default)]
    pub inner_reference: bool,
}

/// Alias of the outer table in a join's SQL (a self-join names one table
/// twice, so columns are qualified by alias, never by table).
pub const JOIN_OUTER_ALIAS: &str = "r1";
pub const JOIN_INNER_ALIAS: &str = "r2";

impl JoinQuery {
    /// The conditions whose shard-key constraints decide which shards can
    /// have result rows: all of them for an inner join; for a LEFT join only
    /// the WHERE (an ON condition never removes an outer row).
    fn routing(&self) -> Vec<Pred> {
        let mut preds = self.filter.clone();
        if self.join_type == JoinType::Inner {
            preds.extend(self.on.iter().cloned());
        }
        preds
    }

    fn keys<'a>(outer: &'a Topology, inner: &'a Topology) -> [ShardKey<'a>; 2] {
        let mut inner_key = inner.shard_key();
        inner_key.column += outer.columns.len();
        [outer.shard_key(), inner_key]
    }

    /// The route: the intersection of what the outer and the inner shard key
    /// admit (the join's key equality makes them equal on every result row),
    /// and which key's IN lists may be split per shard (the one that alone
    /// decided the route: 0 outer, 1 inner).
    fn route(
        &self,
        outer: &Topology,
        inner: &Topology,
        bindings: &[Binding],
    ) -> Result<(Route, Option<usize>), DeparseError> {
        let preds = self.routing();
        let [ok, ik] = Self::keys(outer, inner);
        let a = route(&preds, &ok, bindings)?;
        if self.inner_reference {
            return Ok((a, Some(0)));
        }
        let b = route(&preds, &ik, bindings)?;
        Ok(match (a.restricted, b.restricted) {
            (true, false) => (a, Some(0)),
            (false, _) => (b, Some(1)),
            (true, true) => (
                Route {
                    shards: a
                        .shards
                        .into_iter()
                        .filter(|(s, _)| b.shards.contains_key(s))
                        .collect(),
                    restricted: true,
                    reason: format!("{} and {}", a.reason, b.reason),
                },
                None,
            ),
        })
    }

    /// The conjuncts of `list` shard `shard` runs: when one key decided the
    /// route, its IN lists keep only the values that live there (only in
    /// the conditions the route was computed from).
    fn shard_list(
        &self,
        list: &[Pred],
        routed: bool,
        keys: [ShardKey; 2],
        route: &(Route, Option<usize>),
        shard: u32,
    ) -> Vec<Pred> {
        match route.1 {
            Some(k) if routed => route.0.shard_preds(list, &keys[k], shard),
            _ => list.to_vec(),
        }
    }

    /// The route with values bound (`Some`; a value that cannot be routed
    /// is an error), or as far as planning knows it (`None`: a key that
    /// depends on a parameter is chosen at execution, every shard listed).
    fn target(
        &self,
        outer: &Topology,
        inner: &Topology,
        bindings: Option<&[Binding]>,
    ) -> Result<JoinTarget, DeparseError> {
        let routed = match (self.route(outer, inner, bindings.unwrap_or(&[])), bindings) {
            (Ok(r), _) => r,
            (Err(e), Some(_)) => return Err(e),
            (Err(_), None) => {
                return Ok(JoinTarget {
                    kind: RouteKind::AtExecution,
                    reason: format!(
                        "chosen at execution: {} or {} depends on a parameter",
                        outer.key().name,
                        inner.key().name
                    ),
                    shards: (0..outer.shard_count()).collect(),
                    routed: None,
                })
            }
        };
        Ok(JoinTarget {
            kind: kind_of(&routed.0),
            reason: routed.0.reason.clone(),
            shards: routed.0.shards.keys().copied().collect(),
            routed: Some(routed),
        })
    }

    /// The ON and WHERE conjuncts shard `shard` runs: IN lists of the key
    /// that decided the route cut to its values there (an outer join's ON
    /// does not route, so it keeps them whole).
    fn shard_conditions(
        &self,
        outer: &Topology,
        inner: &Topology,
        routed: Option<&(Route, Option<usize>)>,
        shard: u32,
    ) -> (Vec<Pred>, Vec<Pred>) {
        match routed {
            Some(r) => (
                self.shard_list(
                    &self.on,
                    self.join_type == JoinType::Inner,
                    Self::keys(outer, inner),
                    r,
                    shard,
                ),
                self.shard_list(&self.filter, true, Self::keys(outer, inner), r, shard),
            ),
            None => (self.on.clone(), self.filter.clone()),
        }
    }

    fn refs(outer: &Topology, inner: &Topology) -> Vec<String> {
        outer
            .columns
            .iter()
            .map(|c| qualified_column(JOIN_OUTER_ALIAS, &c.name))
            .chain(
                inner
                    .columns
                    .iter()
                    .map(|c| qualified_column(JOIN_INNER_ALIAS, &c.name)),
            )
            .collect()
    }

    /// The SQL of one shard with the ON and WHERE texts given.
    fn sql(
        &self,
        outer: &Topology,
        inner: &Topology,
        shard: u32,
        on: &str,
        filter: &str,
    ) -> String {
        let refs = Self::refs(outer, inner);
        let list: Vec<&str> = self.outputs.iter().map(|&c| refs[c].as_str()).collect();
        let mut sql = format!(
            "SELECT {} FROM {}",
            if list.is_empty() {
                "NULL".to_string()
            } else {
                list.join(", ")
            },
            self.from(outer, inner, shard, on)
        );
        if !filter.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(filter);
        }
        sql
    }

    /// The FROM clause of one shard: both shard tables joined.
    fn from(&self, outer: &Topology, inner: &Topology, shard: u32, on: &str) -> String {
        format!(
            "{} AS {} {} {} AS {} ON {}",
            quote_ident(&outer.shards[shard as usize].remote_table),
            quote_ident(JOIN_OUTER_ALIAS),
            match self.join_type {
                JoinType::Inner => "JOIN",
                JoinType::Left => "LEFT JOIN",
            },
            quote_ident(
                &inner.shards[if self.inner_reference {
                    0
                } else {
                    shard as usize
                }]
                .remote_table
            ),
            quote_ident(JOIN_INNER_ALIAS),
            if on.is_empty() { "1" } else { on },
        )
    }
}

/// How a plan's shards were chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    /// The predicate admits no row: nothing is sent.
    NoShard,
    /// Key equalities (or an identity) name one shard.
    OneShard,
    /// Key values (an IN list, an OR of equalities) name several shards.
    SomeShards,
    /// Nothing restricts the shard key.
    AllShards,
    /// The key depends on values known only when the statement runs (a
    /// generic plan's `$n`, a nested loop's outer row): every shard is a
    /// candidate until then.
    AtExecution,
}

/// What an INSERT does with a row whose primary key is already on its
/// shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnConflict {
    /// The statement fails (a unique violation, SQLSTATE 23505).
    #[default]
    Error,
    /// The row is skipped (`INSERT … ON CONFLICT DO NOTHING`); only the
    /// rows actually inserted count.
    DoNothing,
}

/// The shards a virtual index found for a statement's values, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Within {
    pub shards: std::collections::BTreeSet<u32>,
    pub reason: String,
}

/// One statement for one shard.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardStatement {
    pub shard_id: u32,
    pub stmt: Stmt,
}

/// The statements one node receives, in shard order.
#[derive(Debug)]
pub struct NodeStatements<'a> {
    pub location: &'a ShardLocation,
    pub statements: Vec<&'a ShardStatement>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ShardPlan {
    pub kind: RouteKind,
    /// Why these shards: "id = 42", "id IN (3 values) split over 2 shards",
    /// "all shards: no usable predicate on id", …
    pub reason: String,
    /// The most key values any one shard was routed for (0 unless the key
    /// restricted the route): a lookup of few primary keys per shard is
    /// small enough to fetch whole.
    pub max_keys_per_shard: usize,
    /// The shard-key values the route names (empty unless the key
    /// restricted the route), for the statistics of busy keys.
    pub keys: Vec<TypedValue>,
    /// Ascending shard id; a shard may have several statements (an insert
    /// larger than one statement may carry).
    pub statements: Vec<ShardStatement>,
}

fn every_column(topology: &Topology) -> Vec<&str> {
    topology.columns.iter().map(|c| c.name.as_str()).collect()
}

fn column_list<'a>(topology: &'a Topology, indexes: &[usize]) -> Vec<&'a str> {
    indexes
        .iter()
        .map(|&i| topology.columns[i].name.as_str())
        .collect()
}

fn kind_of(route: &Route) -> RouteKind {
    match (route.restricted, route.shards.len()) {
        (false, _) => RouteKind::AllShards,
        (true, 0) => RouteKind::NoShard,
        (true, 1) => RouteKind::OneShard,
        (true, _) => RouteKind::SomeShards,
    }
}

impl ShardPlan {
    /// Route `preds` (the pushed-down WHERE clause, a conjunction over the
    /// topology's columns) with the statement's parameter values and build
    /// every target shard's statement with its arguments.
    pub fn build(
        topology: &Topology,
        preds: &[Pred],
        bindings: &[Binding],
        kind: &StatementKind,
    ) -> Result<ShardPlan, DeparseError> {
        Self::build_within(topology, preds, bindings, kind, None)
    }

    /// [`ShardPlan::build`] when a virtual index named the only shards that
    /// can hold matching rows: a route the shard key does not restrict
    /// visits those shards only.
    pub fn build_within(
        topology: &Topology,
        preds: &[Pred],
        bindings: &[Binding],
        kind: &StatementKind,
        within: Option<&Within>,
    ) -> Result<ShardPlan, DeparseError> {
        let key = topology.shard_key();
        let mut routed = route(preds, &key, bindings)?;
        if let Some(w) = within.filter(|_| !routed.restricted) {
            routed = Route {
                shards: w.shards.iter().map(|&s| (s, Vec::new())).collect(),
                restricted: true,
                reason: w.reason.clone(),
            };
        }
        let names = topology.column_names();
        let mut statements = Vec::with_capacity(routed.shards.len());
        for &shard in routed.shards.keys() {
            let table = &topology.shards[shard as usize].remote_table;
            let mine = routed.shard_preds(preds, &key, shard);
            let (where_sql, where_args) = deparse(&mine, table, &names, bindings)?;
            let where_sql = (!mine.is_empty()).then_some(where_sql.as_str());
            let (sql, args) = match kind {
                StatementKind::Pushed(q) => {
                    let p = q.render(topology, table, where_sql, Some(bindings))?;
                    let mut args = p.leading;
                    args.extend(where_args);
                    args.extend(p.trailing);
                    (p.sql, args)
                }
                _ => {
                    let (sql, mut args) = statement_sql(topology, table, kind, where_sql);
                    args.extend(where_args);
                    (sql, args)
                }
            };
            statements.push(ShardStatement {
                shard_id: shard,
                stmt: Stmt::new(sql, args),
            });
        }
        Ok(ShardPlan {
            kind: kind_of(&routed),
            max_keys_per_shard: if routed.restricted {
                routed.shards.values().map(Vec::len).max().unwrap_or(0)
            } else {
                0
            },
            keys: if routed.restricted {
                routed.shards.values().flatten().cloned().collect()
            } else {
                Vec::new()
            },
            reason: routed.reason,
            statements,
        })
    }

    /// The plan as far as planning knows it, for EXPLAIN before execution:
    /// values are not bound (the SQL shows `?` and no argument is listed).
    /// When parameters decide the route, every shard is listed and the kind
    /// is [`RouteKind::AtExecution`].
    pub fn template(topology: &Topology, preds: &[Pred], kind: &StatementKind) -> ShardPlan {
        let key = topology.shard_key();
        let names = topology.column_names();
        let (plan_kind, reason, routed) = match route(preds, &key, &[]) {
            Ok(r) => (kind_of(&r), r.reason.clone(), Some(r)),
            Err(_) => (
                RouteKind::AtExecution,
                format!("chosen at execution: {} depends on a parameter", key.name),
                None,
            ),
        };
        let shards: Vec<u32> = match &routed {
            Some(r) => r.shards.keys().copied().collect(),
            None => (0..topology.shard_count()).collect(),
        };
        let statements = shards
            .into_iter()
            .map(|shard| {
                let table = &topology.shards[shard as usize].remote_table;
                let mine = match &routed {
                    Some(r) => r.shard_preds(preds, &key, shard),
                    None => preds.to_vec(),
                };
                let where_sql = deparse_template(&mine, table, &names);
                let where_sql = (!mine.is_empty()).then_some(where_sql.as_str());
                let (sql, _) = statement_sql(topology, table, kind, where_sql);
                ShardStatement {
                    shard_id: shard,
                    stmt: Stmt::new(sql, Vec::new()),
                }
            })
            .collect();
        ShardPlan {
            kind: plan_kind,
            reason,
            max_keys_per_shard: 0,
            keys: Vec::new(),
            statements,
        }
    }

    /// Rows to insert (every column, in topology order, as the node stores
    /// them), routed by their key and sent as multi-row INSERTs, as many
    /// per shard as SQLite's parameter limit requires.
    pub fn insert(topology: &Topology, rows: Vec<Vec<Value>>) -> Result<ShardPlan, PlanError> {
        Self::insert_with(topology, rows, OnConflict::Error)
    }

    /// [`ShardPlan::insert`] with a conflict rule: under
    /// [`OnConflict::DoNothing`] each statement is `INSERT … ON CONFLICT DO
    /// NOTHING`, and its affected row count is the rows it inserted.
    pub fn insert_with(
        topology: &Topology,
        rows: Vec<Vec<Value>>,
        on_conflict: OnConflict,
    ) -> Result<ShardPlan, PlanError> {
        let sql_for = match on_conflict {
            OnConflict::Error => insert_sql,
            OnConflict::DoNothing => insert_do_nothing_sql,
        };
        let names = topology.column_names();
        let per_statement = max_rows_per_insert(names.len());
        let mut per_shard: BTreeMap<u32, Vec<Vec<Value>>> = BTreeMap::new();
        let total = rows.len();
        for row in rows {
            let shard = shard_of_value(topology, &row[topology.key_index])?;
            per_shard.entry(shard).or_default().push(row);
        }
        let mut statements = Vec::new();
        for (&shard, rows) in &per_shard {
            let table = &topology.shards[shard as usize].remote_table;
            for chunk in rows.chunks(per_statement) {
                let args = chunk.iter().flatten().cloned().collect();
                statements.push(ShardStatement {
                    shard_id: shard,
                    stmt: Stmt::new(sql_for(table, &names, chunk.len()), args),
                });
            }
        }
        Ok(ShardPlan {
            kind: match per_shard.len() {
                0 => RouteKind::NoShard,
                1 => RouteKind::OneShard,
                _ => RouteKind::SomeShards,
            },
            reason: format!(
                "INSERT: {total} row{} by {}{}",
                if total == 1 { "" } else { "s" },
                topology.key().name,
                match on_conflict {
                    OnConflict::Error => "",
                    OnConflict::DoNothing => ", skipping conflicts",
                }
            ),
            max_keys_per_shard: 0,
            keys: Vec::new(),
            statements,
        })
    }

    /// Change one row found by its identity (the primary-key values, in
    /// `topology.primary_key` order): `Update` sets its columns, `Delete`
    /// removes it.
    pub fn by_identity(
        topology: &Topology,
        kind: &StatementKind,
        identity: Vec<Value>,
    ) -> Result<ShardPlan, PlanError> {
        let key_at = topology
            .primary_key
            .iter()
            .position(|&c| c == topology.key_index)
            .expect("the primary key contains the shard key");
        let shard = shard_of_value(topology, &identity[key_at])?;
        let table = &topology.shards[shard as usize].remote_table;
        let pk = column_list(topology, &topology.primary_key);
        let where_sql = key_match_sql(table, &pk);
        let (sql, mut args) = statement_sql(topology, table, kind, Some(&where_sql));
        args.extend(identity);
        Ok(ShardPlan {
            kind: RouteKind::OneShard,
            reason: "the row's primary key".to_string(),
            max_keys_per_shard: 1,
            keys: Vec::new(),
            statements: vec![ShardStatement {
                shard_id: shard,
                stmt: Stmt::new(sql, args),
            }],
        })
    }

    /// The same work on every shard (DDL, schema checks): `statements`
    /// gives one shard table's statements from its name.
    pub fn every_shard(
        topology: &Topology,
        reason: impl Into<String>,
        statements: impl Fn(&str) -> Vec<Stmt>,
    ) -> ShardPlan {
        ShardPlan {
            kind: RouteKind::AllShards,
            reason: reason.into(),
            max_keys_per_shard: 0,
            keys: Vec::new(),
            statements: topology
                .shards
                .iter()
                .flat_map(|location| {
                    statements(&location.remote_table)
                        .into_iter()
                        .map(|stmt| ShardStatement {
                            shard_id: location.shard_id,
                            stmt,
                        })
                })
                .collect(),
        }
    }

    /// TRUNCATE: `DELETE FROM` every shard table (SQLite empties a table
    /// deleted without WHERE in one step). Run in the transaction's remote
    /// transactions, it is undone by ROLLBACK like any write.
    pub fn truncate(topology: &Topology) -> ShardPlan {
        Self::every_shard(topology, "TRUNCATE: every shard", |t| {
            vec![Stmt::new(delete_sql(t, None, &[]), Vec::new())]
        })
    }

    /// ANALYZE, first pass: `SELECT count(*)` of every shard.
    pub fn row_counts(topology: &Topology) -> ShardPlan {
        Self::every_shard(topology, "ANALYZE: row count of every shard", |t| {
            vec![Stmt::new(count_sql(t), Vec::new())]
        })
    }

    /// ANALYZE, second pass: a uniform random sample of every column of
    /// each listed shard, `(shard, rows)`: `ORDER BY random() LIMIT rows`.
    /// Shards asked for no rows are left out.
    pub fn sample(topology: &Topology, rows_per_shard: &[(u32, u64)]) -> ShardPlan {
        let all: Vec<usize> = (0..topology.columns.len()).collect();
        let names = column_list(topology, &all);
        let mut wanted: Vec<(u32, u64)> = rows_per_shard
            .iter()
            .copied()
            .filter(|&(_, n)| n > 0)
            .collect();
        wanted.sort();
        ShardPlan {
            kind: if wanted.len() == topology.shards.len() {
                RouteKind::AllShards
            } else {
                RouteKind::SomeShards
            },
            reason: "ANALYZE: random sample of every shard, proportional to its rows".into(),
            max_keys_per_shard: 0,
            keys: Vec::new(),
            statements: wanted
                .into_iter()
                .map(|(shard, n)| ShardStatement {
                    shard_id: shard,
                    stmt: Stmt::new(
                        sample_sql(&topology.shards[shard as usize].remote_table, &names),
                        vec![Value::Integer(n.min(i64::MAX as u64) as i64)],
                    ),
                })
                .collect(),
        }
    }

    /// A pushed join of two co-located tables (same shard count, shard i of
    /// both on one node): routed by the shard-key constraints of either
    /// side, one SQL join per target shard. The plan's shard locations are
    /// the outer table's.
    pub fn join(
        outer: &Topology,
        inner: &Topology,
        query: &JoinQuery,
        bindings: &[Binding],
    ) -> Result<ShardPlan, DeparseError> {
        Self::join_with(outer, inner, query, Some(bindings))
    }

    /// [`ShardPlan::join`] as far as planning knows it (no values bound).
    pub fn join_template(outer: &Topology, inner: &Topology, query: &JoinQuery) -> ShardPlan {
        // Without values nothing fails: a key that depends on a parameter is
        // chosen at execution and conditions show `?`.
        Self::join_with(outer, inner, query, None).unwrap_or_else(|e| ShardPlan {
            kind: RouteKind::AtExecution,
            reason: e.to_string(),
            max_keys_per_shard: 0,
            keys: Vec::new(),
            statements: Vec::new(),
        })
    }

    fn join_with(
        outer: &Topology,
        inner: &Topology,
        query: &JoinQuery,
        bindings: Option<&[Binding]>,
    ) -> Result<ShardPlan, DeparseError> {
        let refs = JoinQuery::refs(outer, inner);
        let target = query.target(outer, inner, bindings)?;
        let mut statements = Vec::with_capacity(target.shards.len());
        for &shard in &target.shards {
            let (on, filter) = query.shard_conditions(outer, inner, target.routed.as_ref(), shard);
            let ((on_sql, mut args), (filter_sql, filter_args)) =
                deparse_on_filter(&on, &filter, &refs, bindings)?;
            args.extend(filter_args);
            statements.push(ShardStatement {
                shard_id: shard,
                stmt: Stmt::new(query.sql(outer, inner, shard, &on_sql, &filter_sql), args),
            });
        }
        Ok(ShardPlan {
            kind: target.kind,
            reason: target.reason,
            max_keys_per_shard: 0,
            keys: Vec::new(),
            statements,
        })
    }

    /// A pushed join with aggregates, GROUP BY, HAVING, ORDER BY or LIMIT
    /// on top (`query` over the join's column space): the join's route,
    /// one statement per target shard. `bindings` None: the template.
    pub fn join_pushed(
        outer: &Topology,
        inner: &Topology,
        join: &JoinQuery,
        query: &PushedQuery,
        bindings: Option<&[Binding]>,
    ) -> Result<ShardPlan, DeparseError> {
        let refs = JoinQuery::refs(outer, inner);
        let target = join.target(outer, inner, bindings)?;
        let mut statements = Vec::with_capacity(target.shards.len());
        for &shard in &target.shards {
            let (on, filter) = join.shard_conditions(outer, inner, target.routed.as_ref(), shard);
            let ((on_sql, on_args), (filter_sql, filter_args)) =
                deparse_on_filter(&on, &filter, &refs, bindings)?;
            let from = join.from(outer, inner, shard, &on_sql);
            let where_sql = (!filter.is_empty()).then_some(filter_sql.as_str());
            let p = query.render_from(&refs, &from, where_sql, bindings)?;
            let mut args = p.leading;
            args.extend(on_args);
            args.extend(filter_args);
            args.extend(p.trailing);
            statements.push(ShardStatement {
                shard_id: shard,
                stmt: Stmt::new(p.sql, if bindings.is_some() { args } else { Vec::new() }),
            });
        }
        Ok(ShardPlan {
            kind: target.kind,
            reason: target.reason,
            max_keys_per_shard: 0,
            keys: Vec::new(),
            statements,
        })
    }

    /// The target shards, ascending, each once.
    pub fn shard_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.statements.iter().map(|s| s.shard_id).collect();
        ids.dedup();
        ids
    }

    /// The statements grouped by the node holding their shard, in node id
    /// order: what one request to each node carries.
    pub fn by_node<'a>(&'a self, topology: &'a Topology) -> Vec<NodeStatements<'a>> {
        let mut per_node: BTreeMap<&str, NodeStatements<'a>> = BTreeMap::new();
        for s in &self.statements {
            let location = &topology.shards[s.shard_id as usize];
            per_node
                .entry(location.node_id.as_str())
                .or_insert_with(|| NodeStatements {
                    location,
                    statements: Vec::new(),
                })
                .statements
                .push(s);
        }
        per_node.into_values().collect()
    }

    /// One line for EXPLAIN: "2 of 16 (id IN (3 values) split over 2
    /// shards) on node-1, node-3".
    pub fn summary(&self, topology: &Topology) -> String {
        let ids = self.shard_ids();
        let nodes: Vec<&str> = self
            .by_node(topology)
            .iter()
            .map(|n| n.location.node_id.as_str())
            .collect();
        format!(
            "{} of {} ({}) on {}",
            ids.len(),
            topology.shard_count(),
            self.reason,
            if nodes.is_empty() {
                "no node".to_string()
            } else {
                nodes.join(", ")
            }
        )
    }
}

/// How many shards a restriction visits, as far as planning knows (what
/// [`ShardPlan::template`] would list, without rendering any SQL): a key
/// bound at run time is assumed to reach one shard.
pub fn planned_shards(topology: &Topology, preds: &[Pred]) -> usize {
    route(preds, &topology.shard_key(), &[]).map_or(1, |routed| routed.shards.len())
}

/// How many shard-key values a restriction names, as far as planning knows
/// (constants only): `Some(n)` for `key = c` (1) or `key IN (n values)`,
/// `None` when the key is unrestricted or decided by a parameter.
pub fn planned_key_values(topology: &Topology, preds: &[Pred]) -> Option<usize> {
    let routed = route(preds, &topology.shard_key(), &[]).ok()?;
    routed
        .restricted
        .then(|| routed.shards.values().map(Vec::len).sum())
}

/// How many rows each shard gives to a sample of `target` rows in all,
/// proportional to its share of `counts` (`(shard, rows)`): never more than
/// a shard holds, and never more than `target` together.
pub fn sample_sizes(counts: &[(u32, u64)], target: u64) -> Vec<(u32, u64)> {
    let total: u64 = counts.iter().map(|&(_, n)| n).sum();
    if total == 0 || target == 0 {
        return Vec::new();
    }
    if total <= target {
        return counts.to_vec();
    }
    let mut out: Vec<(u32, u64)> = counts
        .iter()
        .map(|&(s, n)| (s, (n as u128 * target as u128 / total as u128) as u64))
        .collect();
    // Hand out what flooring left over, largest shards first.
    let mut left = target - out.iter().map(|&(_, n)| n).sum::<u64>();
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(counts[i].1));
    for i in order {
        if left == 0 {
            break;
        }
        if out[i].1 < counts[i].1 {
            out[i].1 += 1;
            left -= 1;
        }
    }
    out
}

/// The statement text for one shard table and the arguments that precede
/// the WHERE clause's (an UPDATE's new values).
fn statement_sql(
    topology: &Topology,
    table: &str,
    kind: &StatementKind,
    where_sql: Option<&str>,
) -> (String, Vec<Value>) {
    match kind {
        StatementKind::Select { columns } => (
            select_sql(table, &column_list(topology, columns), where_sql),
            Vec::new(),
        ),
        StatementKind::Update {
            set,
            exprs,
            values,
            returning,
        } => {
            let mut args = Vec::new();
            let assignments: Vec<(&str, String)> = set
                .iter()
                .enumerate()
                .map(|(i, &c)| {
                    let expr = exprs.get(i).copied().unwrap_or(SetExpr::Value);
                    let (sql, a) = expr.render(topology, table, values.get(i));
                    args.extend(a);
                    (topology.columns[c].name.as_str(), sql)
                })
                .collect();
            let returned = if *returning {
                every_column(topology)
            } else {
                Vec::new()
            };
            (update_sql(table, &assignments, where_sql, &returned), args)
        }
        StatementKind::Delete { returning } => {
            let returned = if *returning {
                every_column(topology)
            } else {
                Vec::new()
            };
            (delete_sql(table, where_sql, &returned), Vec::new())
        }
        StatementKind::Pushed(q) => (
            q.render(topology, table, where_sql, None)
                .map(|p| p.sql)
                .unwrap_or_default(),
            Vec::new(),
        ),
    }
}

/// Why a row cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    /// The shard key is NULL (every row needs a shard).
    NullKey { column: String },
    /// The stored form of the key is not one of its type.
    BadKey(String),
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanError::NullKey { column } => {
                write!(f, "shard key column \"{column}\" must not be null")
            }
            PlanError::BadKey(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for PlanError {}

/// The shard a shard-key value belongs to, from its stored form.
pub fn shard_of_value(topology: &Topology, value: &Value) -> Result<u32, PlanError> {
    let key = topology.key();
    let placement_key = match (key.ty, value) {
        (_, Value::Null) => {
            return Err(PlanError::NullKey {
                column: key.name.clone(),
            })
        }
        (ColumnType::Int2 | ColumnType::Int4 | ColumnType::Int8, Value::Integer(i)) => {
            KeyValue::Int(*i)
        }
        (ColumnType::Text | ColumnType::Varchar, Value::Text(s)) => KeyValue::Text(s),
        (ColumnType::Uuid, Value::Text(s)) => KeyValue::Uuid(
            uuid_from_text(s).map_err(|e| PlanError::BadKey(format!("bad uuid shard key: {e}")))?,
        ),
        (ty, v) => {
            return Err(PlanError::BadKey(format!(
                "a {ty} shard key cannot be {v:?}"
            )))
        }
    };
    Ok(shard_for(&placement_key, topology.shard_count()))
}

/// Where a pushed join goes: see `JoinQuery::target`.
struct JoinTarget {
    kind: RouteKind,
    reason: String,
    shards: Vec<u32>,
    routed: Option<(Route, Option<usize>)>,
}

/// An ON or WHERE list deparsed: SQL and its arguments.
type Deparsed = (String, Vec<Value>);

/// A join's ON and WHERE conjuncts as SQL with their arguments (`?` and no
/// arguments without values).
fn deparse_on_filter(
    on: &[Pred],
    filter: &[Pred],
    refs: &[String],
    bindings: Option<&[Binding]>,
) -> Result<(Deparsed, Deparsed), DeparseError> {
    Ok(match bindings {
        Some(b) => (deparse_refs(on, refs, b)?, deparse_refs(filter, refs, b)?),
        None => (
            (deparse_refs_template(on, refs), Vec::new()),
            (deparse_refs_template(filter, refs), Vec::new()),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::predicate::{CmpOp, ListOperand, Operand};
    use crate::topology::Column;
    use crate::types::TypedValue;
    use proptest::prelude::*;

    fn topology(shards: u32, key_ty: ColumnType) -> Topology {
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
                col(1, "k", key_ty),
                col(2, "v", ColumnType::Text),
                col(3, "n", ColumnType::Int4),
            ],
            key_index: 0,
            primary_key: vec![0],
            shards: (0..shards)
                .map(|s| ShardLocation {
                    shard_id: s,
                    node_id: format!("node-{}", s % 3),
                    url: format!("http://127.0.0.1:{}", 7000 + s % 3),
                    remote_table: format!("t_{s:04}"),
                    status: crate::topology::ShardStatus::Active,
                })
                .collect(),
        }
    }

    fn int(i: i64) -> Operand {
        Operand::Const(Some(TypedValue::Int8(i)))
    }

    /// A second table of the same shape and shard count, named `u`.
    fn other(shards: u32) -> Topology {
        let mut t = topology(shards, ColumnType::Int8);
        t.name = "public.u".into();
        t.remote_name = "u".into();
        for s in &mut t.shards {
            s.remote_table = format!("u_{:04}", s.shard_id);
        }
        t
    }

    fn key_join(join_type: JoinType, on: Vec<Pred>, filter: Vec<Pred>) -> JoinQuery {
        let mut on_all = vec![Pred::Columns {
            left: 0,
            op: CmpOp::Eq,
            right: 3,
        }];
        on_all.extend(on);
        JoinQuery {
            join_type,
            outputs: vec![1, 4],
            on: on_all,
            filter,
            inner_reference: false,
        }
    }

    #[test]
    fn a_join_runs_per_shard_with_aliases() {
        let (t, u) = (topology(4, ColumnType::Int8), other(4));
        let q = key_join(JoinType::Inner, vec![], vec![]);
        let plan = ShardPlan::join(&t, &u, &q, &[]).unwrap();
        assert_eq!(plan.kind, RouteKind::AllShards);
        assert_eq!(plan.statements.len(), 4);
        assert_eq!(
            plan.statements[2].stmt.sql.as_deref(),
            Some(
                "SELECT \"r1\".\"v\", \"r2\".\"v\" FROM \"t_0002\" AS \"r1\" JOIN \"u_0002\" AS \"r2\" \
                 ON \"r1\".\"k\" = \"r2\".\"k\""
            )
        );
        let left = key_join(JoinType::Left, vec![eq(5, int(1))], vec![eq(2, int(7))]);
        let plan = ShardPlan::join(&t, &u, &left, &[]).unwrap();
        let sql = plan.statements[0].stmt.sql.clone().unwrap();
        assert!(
            sql.contains("LEFT JOIN \"u_0000\" AS \"r2\" ON \"r1\".\"k\" = \"r2\".\"k\" AND \"r2\".\"n\" = ?")
                && sql.ends_with("WHERE \"r1\".\"n\" = ?"),
            "{sql}"
        );
        // ON arguments first, then the WHERE's.
        assert_eq!(
            plan.statements[0].stmt.args,
            vec![Value::Integer(1), Value::Integer(7)]
        );
    }

    #[test]
    fn either_key_routes_an_inner_join() {
        let (t, u) = (topology(16, ColumnType::Int8), other(16));
        let shard = |k: i64| shard_for(&KeyValue::Int(k), 16);
        for q in [
            key_join(JoinType::Inner, vec![], vec![eq(0, int(42))]),
            key_join(JoinType::Inner, vec![], vec![eq(3, int(42))]),
            key_join(JoinType::Inner, vec![eq(3, int(42))], vec![]),
            key_join(JoinType::Left, vec![], vec![eq(3, int(42))]),
        ] {
            let plan = ShardPlan::join(&t, &u, &q, &[]).unwrap();
            assert_eq!(plan.kind, RouteKind::OneShard, "{q:?}");
            assert_eq!(plan.shard_ids(), vec![shard(42)]);
        }
        // An ON condition of a LEFT join removes no outer row: all shards.
        let q = key_join(JoinType::Left, vec![eq(3, int(42))], vec![]);
        assert_eq!(
            ShardPlan::join(&t, &u, &q, &[]).unwrap().kind,
            RouteKind::AllShards
        );
        // Both keys restricted: the intersection, lists left whole.
        let list = |c: usize, ks: &[i64]| Pred::In {
            column: c,
            list: ListOperand::Items(ks.iter().map(|&k| int(k)).collect()),
        };
        let q = key_join(
            JoinType::Inner,
            vec![],
            vec![list(0, &[1, 2, 3, 4, 5]), list(3, &[5, 6, 7])],
        );
        let plan = ShardPlan::join(&t, &u, &q, &[]).unwrap();
        let want: std::collections::BTreeSet<u32> = [1, 2, 3, 4, 5]
            .iter()
            .map(|&k| shard(k))
            .filter(|s| [5, 6, 7].iter().any(|&k| shard(k) == *s))
            .collect();
        assert_eq!(plan.shard_ids(), want.into_iter().collect::<Vec<_>>());
        for s in &plan.statements {
            let sql = s.stmt.sql.as_deref().unwrap();
            assert!(sql.contains("\"r2\".\"k\" IN (?, ?, ?)"), "{sql}");
        }
        // One key restricted by a list: each shard gets its own values.
        let q = key_join(
            JoinType::Inner,
            vec![],
            vec![list(0, &[1, 2, 3, 4, 5, 6, 7, 8])],
        );
        let plan = ShardPlan::join(&t, &u, &q, &[]).unwrap();
        let total: usize = plan.statements.iter().map(|s| s.stmt.args.len()).sum();
        assert_eq!(total, 8);
    }

    #[test]
    fn a_reference_table_joins_every_shard_with_its_one_shard() {
        let t = topology(4, ColumnType::Int8);
        let mut r = other(1);
        r.remote_name = "r".into();
        r.shards[0].remote_table = "r_0000".into();
        let q = JoinQuery {
            join_type: JoinType::Inner,
            outputs: vec![1, 4],
            on: vec![Pred::Columns {
                left: 2,
                op: CmpOp::Eq,
                right: 3,
            }],
            filter: vec![eq(3, int(42))],
            inner_reference: true,
        };
        let plan = ShardPlan::join(&t, &r, &q, &[]).unwrap();
        // The reference table's key does not route the distributed table.
        assert_eq!(plan.kind, RouteKind::AllShards);
        for s in &plan.statements {
            let sql = s.stmt.sql.as_deref().unwrap();
            assert!(sql.contains("JOIN \"r_0000\" AS \"r2\""), "{sql}");
        }
    }

    fn eq(column: usize, value: Operand) -> Pred {
        Pred::Cmp {
            column,
            op: CmpOp::Eq,
            value,
        }
    }

    fn select_all() -> StatementKind {
        StatementKind::Select {
            columns: vec![0, 1, 2],
        }
    }

    #[test]
    fn a_virtual_index_narrows_only_an_unrestricted_route() {
        let t = topology(16, ColumnType::Int8);
        let within = Within {
            shards: [3, 9].into(),
            reason: "v through virtual index t_v: 1 value found on 2 shards".into(),
        };
        let by_v = [eq(1, Operand::Const(Some(TypedValue::Text("x".into()))))];
        let p = ShardPlan::build_within(&t, &by_v, &[], &select_all(), Some(&within)).unwrap();
        assert_eq!(p.shard_ids(), vec![3, 9]);
        assert_eq!(p.kind, RouteKind::SomeShards);
        assert_eq!(p.reason, within.reason);
        // The shard key decides by itself when it restricts the route.
        let by_key = [eq(0, int(42)), by_v[0].clone()];
        let p = ShardPlan::build_within(&t, &by_key, &[], &select_all(), Some(&within)).unwrap();
        assert_eq!(p.kind, RouteKind::OneShard);
        // No entry: no shard.
        let none = Within {
            shards: Default::default(),
            reason: "none".into(),
        };
        let p = ShardPlan::build_within(&t, &by_v, &[], &select_all(), Some(&none)).unwrap();
        assert_eq!(p.kind, RouteKind::NoShard);
        assert!(p.statements.is_empty());
    }

    #[test]
    fn one_shard_lookup_is_one_qualified_statement() {
        let t = topology(16, ColumnType::Int8);
        let plan = ShardPlan::build(&t, &[eq(0, int(42))], &[], &select_all()).unwrap();
        let shard = shard_for(&KeyValue::Int(42), 16);
        assert_eq!(plan.kind, RouteKind::OneShard);
        assert_eq!(plan.shard_ids(), vec![shard]);
        assert_eq!(plan.max_keys_per_shard, 1);
        let table = format!("t_{shard:04}");
        assert_eq!(
            plan.statements[0].stmt.sql.as_deref(),
            Some(
                format!(
                    r#"SELECT "{table}"."k", "{table}"."v", "{table}"."n" FROM "{table}" WHERE "{table}"."k" = ?"#
                )
                .as_str()
            )
        );
        assert_eq!(plan.statements[0].stmt.args, vec![Value::Integer(42)]);
    }

    #[test]
    fn route_kinds() {
        let t = topology(8, ColumnType::Int8);
        let kind = |preds: &[Pred]| ShardPlan::build(&t, preds, &[], &select_all()).unwrap();
        assert_eq!(kind(&[]).kind, RouteKind::AllShards);
        assert_eq!(kind(&[]).statements.len(), 8);
        assert_eq!(
            kind(&[eq(0, int(1)), eq(0, int(2))]).kind,
            RouteKind::NoShard
        );
        assert!(kind(&[eq(0, Operand::Const(None))]).statements.is_empty());
        // Find two keys on different shards.
        let a = 1;
        let b = (2..100)
            .find(|&k| shard_for(&KeyValue::Int(k), 8) != shard_for(&KeyValue::Int(a), 8))
            .unwrap();
        let list = Pred::In {
            column: 0,
            list: ListOperand::Items(vec![int(a), int(b)]),
        };
        let plan = kind(&[list]);
        assert_eq!(plan.kind, RouteKind::SomeShards);
        assert_eq!(plan.statements.len(), 2);
        // Each shard gets only its own value.
        for s in &plan.statements {
            assert_eq!(s.stmt.args.len(), 1);
        }
    }

    #[test]
    fn template_before_execution() {
        let t = topology(4, ColumnType::Int8);
        let preds = [eq(0, Operand::Param(0)), eq(2, int(5))];
        let plan = ShardPlan::template(&t, &preds, &select_all());
        assert_eq!(plan.kind, RouteKind::AtExecution);
        assert_eq!(plan.statements.len(), 4);
        assert!(plan.statements.iter().all(|s| s.stmt.args.is_empty()));
        // Bound, the same predicates reach one shard with two arguments.
        let bound = ShardPlan::build(
            &t,
            &preds,
            &[Binding::Value(Some(TypedValue::Int8(9)))],
            &select_all(),
        )
        .unwrap();
        assert_eq!(bound.kind, RouteKind::OneShard);
        assert_eq!(
            bound.statements[0].stmt.sql,
            plan.statements[bound.statements[0].shard_id as usize]
                .stmt
                .sql
        );
        assert_eq!(bound.statements[0].stmt.args.len(), 2);
        // A parameter off the key does not make the route wait.
        let off_key = ShardPlan::template(&t, &[eq(2, Operand::Param(0))], &select_all());
        assert_eq!(off_key.kind, RouteKind::AllShards);
    }

    #[test]
    fn update_values_precede_where_arguments() {
        let t = topology(4, ColumnType::Int8);
        let kind = StatementKind::Update {
            set: vec![1],
            exprs: Vec::new(),
            values: vec![Value::Text("x".into())],
            returning: false,
        };
        let plan = ShardPlan::build(&t, &[eq(0, int(3))], &[], &kind).unwrap();
        let s = &plan.statements[0];
        let table = format!("t_{:04}", s.shard_id);
        assert_eq!(
            s.stmt.sql.as_deref().unwrap(),
            format!(r#"UPDATE "{table}" SET "v" = ? WHERE "{table}"."k" = ?"#)
        );
        assert_eq!(
            s.stmt.args,
            vec![Value::Text("x".into()), Value::Integer(3)]
        );
        let del =
            ShardPlan::build(&t, &[], &[], &StatementKind::Delete { returning: false }).unwrap();
        assert_eq!(del.statements.len(), 4);
        assert_eq!(
            del.statements[0].stmt.sql.as_deref(),
            Some(r#"DELETE FROM "t_0000""#)
        );
    }

    #[test]
    fn inserts_route_every_row_and_group_by_node() {
        let t = topology(16, ColumnType::Int8);
        let rows: Vec<Vec<Value>> = (0..200)
            .map(|i| vec![Value::Integer(i), Value::Null, Value::Integer(i * 2)])
            .collect();
        let plan = ShardPlan::insert(&t, rows).unwrap();
        let mut placed = 0;
        for s in &plan.statements {
            let args = &s.stmt.args;
            for row in args.chunks(3) {
                let Value::Integer(k) = row[0] else { panic!() };
                assert_eq!(shard_for(&KeyValue::Int(k), 16), s.shard_id);
                placed += 1;
            }
        }
        assert_eq!(placed, 200);
        let nodes = plan.by_node(&t);
        assert_eq!(nodes.len(), 3);
        for n in &nodes {
            assert!(n
                .statements
                .iter()
                .all(|s| t.shards[s.shard_id as usize].node_id == n.location.node_id));
        }
        assert_eq!(
            ShardPlan::insert(&t, vec![vec![Value::Null, Value::Null, Value::Null]]),
            Err(PlanError::NullKey { column: "k".into() })
        );
    }

    #[test]
    fn identity_changes_reach_the_rows_shard() {
        let t = topology(16, ColumnType::Text);
        let plan = ShardPlan::by_identity(
            &t,
            &StatementKind::Delete { returning: true },
            vec![Value::Text("alice".into())],
        )
        .unwrap();
        let shard = shard_for(&KeyValue::Text("alice"), 16);
        let table = format!("t_{shard:04}");
        assert_eq!(plan.shard_ids(), vec![shard]);
        assert_eq!(
            plan.statements[0].stmt.sql.as_deref().unwrap(),
            format!(
                r#"DELETE FROM "{table}" WHERE "{table}"."k" = ? RETURNING "{table}"."k", "{table}"."v", "{table}"."n""#
            )
        );
    }

    #[test]
    fn truncate_deletes_from_every_shard() {
        let t = topology(4, ColumnType::Int8);
        let plan = ShardPlan::truncate(&t);
        assert_eq!(plan.kind, RouteKind::AllShards);
        assert_eq!(plan.shard_ids(), vec![0, 1, 2, 3]);
        for s in &plan.statements {
            assert_eq!(
                s.stmt.sql.as_deref().unwrap(),
                format!(r#"DELETE FROM "t_{:04}""#, s.shard_id)
            );
            assert!(s.stmt.args.is_empty());
        }
        // One request per node, carrying that node's shards.
        assert_eq!(plan.by_node(&t).len(), 3);
    }

    #[test]
    fn insert_do_nothing_skips_conflicts() {
        let t = topology(1, ColumnType::Int8);
        let row = |i| vec![Value::Integer(i), Value::Null, Value::Null];
        let plan = ShardPlan::insert_with(&t, vec![row(1), row(2)], OnConflict::DoNothing).unwrap();
        assert_eq!(
            plan.statements[0].stmt.sql.as_deref().unwrap(),
            r#"INSERT INTO "t_0000" ("k", "v", "n") VALUES (?, ?, ?), (?, ?, ?) ON CONFLICT DO NOTHING"#
        );
        let plain = ShardPlan::insert(&t, vec![row(1)]).unwrap();
        assert!(!plain.statements[0]
            .stmt
            .sql
            .as_deref()
            .unwrap()
            .contains("CONFLICT"));
    }

    #[test]
    fn analyze_counts_and_samples() {
        let t = topology(3, ColumnType::Int8);
        let counts = ShardPlan::row_counts(&t);
        assert_eq!(
            counts.statements[2].stmt.sql.as_deref().unwrap(),
            r#"SELECT count(*) FROM "t_0002""#
        );
        let sizes = sample_sizes(&[(0, 1000), (1, 3000), (2, 0)], 400);
        assert_eq!(sizes, vec![(0, 100), (1, 300), (2, 0)]);
        let sizes = sample_sizes(&[(0, 1), (1, 1), (2, 1)], 2);
        assert_eq!(sizes.iter().map(|s| s.1).sum::<u64>(), 2);
        assert_eq!(sample_sizes(&[(0, 5)], 100), vec![(0, 5)]);
        let plan = ShardPlan::sample(&t, &sizes);
        assert_eq!(plan.statements.len(), 2);
        let s = &ShardPlan::sample(&t, &[(1, 7)]).statements[0];
        assert_eq!(
            s.stmt.sql.as_deref().unwrap(),
            r#"SELECT "t_0001"."k", "t_0001"."v", "t_0001"."n" FROM "t_0001" ORDER BY random() LIMIT ?"#
        );
        assert_eq!(s.stmt.args, vec![Value::Integer(7)]);
    }

    #[test]
    fn planned_shards_agrees_with_the_template() {
        let t = topology(16, ColumnType::Int8);
        let kind = StatementKind::Delete { returning: false };
        let cases = [
            vec![eq(0, int(1))],
            vec![Pred::In {
                column: 0,
                list: ListOperand::Items((0..50).map(int).collect()),
            }],
            vec![],
            vec![eq(2, int(1))],
            vec![eq(0, int(1)), eq(0, int(2))],
        ];
        for preds in &cases {
            let template = ShardPlan::template(&t, preds, &kind);
            assert_eq!(
                planned_shards(&t, preds),
                template.statements.len(),
                "{preds:?}"
            );
        }
        // A key bound at run time: one shard assumed, where the template
        // lists every shard it might be.
        let param = [eq(0, Operand::Param(0))];
        assert_eq!(
            ShardPlan::template(&t, &param, &kind).kind,
            RouteKind::AtExecution
        );
        assert_eq!(planned_shards(&t, &param), 1);
    }

    #[test]
    fn planned_key_values_counts_constants() {
        let t = topology(16, ColumnType::Int8);
        assert_eq!(planned_key_values(&t, &[eq(0, int(1))]), Some(1));
        let list = Pred::In {
            column: 0,
            list: ListOperand::Items((0..50).map(int).collect()),
        };
        assert_eq!(planned_key_values(&t, &[list]), Some(50));
        assert_eq!(planned_key_values(&t, &[]), None);
        assert_eq!(planned_key_values(&t, &[eq(0, Operand::Param(0))]), None);
        assert_eq!(planned_key_values(&t, &[eq(2, int(1))]), None);
    }

    #[test]
    fn long_in_lists_travel_as_one_json_argument() {
        for (ty, item) in [
            (
                ColumnType::Int8,
                (|i: i64| Operand::Const(Some(TypedValue::Int8(i)))) as fn(i64) -> Operand,
            ),
            (ColumnType::Text, |i: i64| {
                Operand::Const(Some(TypedValue::Text(format!("k{i}"))))
            }),
        ] {
            let t = topology(1, ty);
            let n = 100_000;
            let list = Pred::In {
                column: 0,
                list: ListOperand::Items((0..n).map(item).collect()),
            };
            let plan = ShardPlan::build(&t, &[list.clone()], &[], &select_all()).unwrap();
            let s = &plan.statements[0];
            assert!(s
                .stmt
                .sql
                .as_deref()
                .unwrap()
                .ends_with(r#"WHERE "t_0000"."k" IN (SELECT value FROM json_each(?))"#));
            assert_eq!(s.stmt.args.len(), 1);
            let Value::Text(json) = &s.stmt.args[0] else {
                panic!()
            };
            let parsed: Vec<serde_json::Value> = serde_json::from_str(json).unwrap();
            assert_eq!(parsed.len(), n as usize);
            // The template (EXPLAIN) shows the same statement.
            let template = ShardPlan::template(&t, &[list], &select_all());
            assert_eq!(template.statements[0].stmt.sql, s.stmt.sql);
        }
        // Short lists keep one argument per element.
        let t = topology(1, ColumnType::Int8);
        let short = Pred::In {
            column: 0,
            list: ListOperand::Items((0..10).map(int).collect()),
        };
        let plan = ShardPlan::build(&t, &[short], &[], &select_all()).unwrap();
        assert_eq!(plan.statements[0].stmt.args.len(), 10);
    }

    #[test]
    fn pushed_selects_carry_aggregates_order_and_limit() {
        let t = topology(4, ColumnType::Int8);
        let q = PushedQuery {
            select: vec![
                RemoteExpr::Column(1),
                RemoteExpr::CountStar,
                RemoteExpr::SumHigh(2),
                RemoteExpr::SumLow(2),
                RemoteExpr::Max(1),
            ],
            group_by: vec![1],
            ..Default::default()
        };
        let plan = ShardPlan::build(&t, &[eq(2, int(5))], &[], &StatementKind::Pushed(q)).unwrap();
        assert_eq!(plan.statements.len(), 4);
        assert_eq!(
            plan.statements[0].stmt.sql.as_deref().unwrap(),
            r#"SELECT "t_0000"."v", count(*), sum("t_0000"."n" >> 32), sum("t_0000"."n" & 4294967295), max("t_0000"."v") FROM "t_0000" WHERE "t_0000"."n" = ? GROUP BY "t_0000"."v""#
        );
        let q = PushedQuery {
            select: vec![RemoteExpr::Column(0), RemoteExpr::Column(2)],
            order_by: vec![
                SortKey {
                    column: 2,
                    descending: true,
                    nulls_first: true,
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
                offset: int(3),
            }),
            ..Default::default()
        };
        let kind = StatementKind::Pushed(q.clone());
        let bind = |v: Option<i64>| [Binding::Value(v.map(TypedValue::Int8))];
        let plan = ShardPlan::build(&t, &[], &bind(Some(10)), &kind).unwrap();
        let s = &plan.statements[1].stmt;
        assert_eq!(
            s.sql.as_deref().unwrap(),
            r#"SELECT "t_0001"."k", "t_0001"."n" FROM "t_0001" ORDER BY "t_0001"."n" DESC NULLS FIRST, "t_0001"."k" NULLS LAST LIMIT ?"#
        );
        assert_eq!(s.args, vec![Value::Integer(13)], "count + offset per shard");
        // LIMIT NULL is no limit; negative values are Postgres' errors.
        let plan = ShardPlan::build(&t, &[], &bind(None), &kind).unwrap();
        assert_eq!(plan.statements[0].stmt.args, vec![Value::Integer(-1)]);
        let spec = q.limit.clone().unwrap();
        assert_eq!(spec.values(&bind(Some(-1))), Err(LimitError::NegativeCount));
        let neg_offset = LimitSpec {
            count: int(-1),
            offset: int(-1),
        };
        assert_eq!(neg_offset.values(&[]), Err(LimitError::NegativeOffset));
        assert!(ShardPlan::build(&t, &[], &bind(Some(-1)), &kind).is_err());
        // Before execution the cap is a placeholder.
        let template = ShardPlan::template(&t, &[], &kind);
        assert!(template.statements[0]
            .stmt
            .sql
            .as_deref()
            .unwrap()
            .ends_with("LIMIT ?"));
        assert!(template.statements[0].stmt.args.is_empty());
    }

    #[test]
    fn filters_having_and_output_order_travel_as_arguments() {
        let t = topology(2, ColumnType::Int8);
        // count(*) FILTER (WHERE n > $0) and sum(n) FILTER (WHERE n > $0), grouped
        // by the key, HAVING count > $1, ORDER BY the count, LIMIT 3.
        let gt = |column, value| Pred::Cmp {
            column,
            op: CmpOp::Gt,
            value,
        };
        let q = PushedQuery {
            select: vec![
                RemoteExpr::Column(0),
                RemoteExpr::CountStar,
                RemoteExpr::SumHigh(2),
                RemoteExpr::SumLow(2),
            ],
            select_filter: vec![None, Some(0), Some(0), Some(0)],
            filters: vec![vec![gt(2, Operand::Param(0))]],
            group_by: vec![0],
            having: vec![gt(1, Operand::Param(1))],
            order_by: vec![SortKey {
                column: 1,
                descending: true,
                nulls_first: true,
                output: true,
            }],
            limit: Some(LimitSpec {
                count: int(3),
                offset: int(0),
            }),
        };
        let bindings = [
            Binding::Value(Some(TypedValue::Int8(10))),
            Binding::Value(Some(TypedValue::Int8(20))),
        ];
        let kind = StatementKind::Pushed(q);
        let plan = ShardPlan::build(&t, &[eq(2, int(5))], &bindings, &kind).unwrap();
        let s = &plan.statements[0].stmt;
        assert_eq!(
            s.sql.as_deref().unwrap(),
            r#"SELECT * FROM (SELECT "t_0000"."k" AS c0, count(*) FILTER (WHERE "t_0000"."n" > ?) AS c1, sum("t_0000"."n" >> 32) FILTER (WHERE "t_0000"."n" > ?) AS c2, sum("t_0000"."n" & 4294967295) FILTER (WHERE "t_0000"."n" > ?) AS c3 FROM "t_0000" WHERE "t_0000"."n" = ? GROUP BY "t_0000"."k") AS "grouped" WHERE "grouped"."c1" > ? ORDER BY 2 DESC NULLS FIRST LIMIT ?"#
        );
        let i = Value::Integer;
        assert_eq!(s.args, vec![i(10), i(10), i(10), i(5), i(20), i(3)]);
        let template = ShardPlan::template(&t, &[], &kind);
        assert!(template.statements[0]
            .stmt
            .sql
            .as_deref()
            .unwrap()
            .contains(r#"count(*) FILTER (WHERE "t_0000"."n" > ?)"#));
    }

    proptest! {
        /// Whatever keys an IN list holds, the plan sends each key to the
        /// shard placement names, every key exactly once, and nothing else.
        #[test]
        fn in_lists_are_partitioned_exactly(keys in proptest::collection::vec(-1000i64..1000, 0..60), shards in 1u32..40) {
            let t = topology(shards, ColumnType::Int8);
            let list = Pred::In { column: 0, list: ListOperand::Items(keys.iter().map(|&k| int(k)).collect()) };
            let plan = ShardPlan::build(&t, &[list], &[], &select_all()).unwrap();
            let mut sent: Vec<i64> = Vec::new();
            for s in &plan.statements {
                for a in &s.stmt.args {
                    let Value::Integer(k) = a else { panic!() };
                    prop_assert_eq!(shard_for(&KeyValue::Int(*k), shards), s.shard_id);
                    sent.push(*k);
                }
            }
            let mut want = keys.clone();
            want.sort();
            want.dedup();
            sent.sort();
            prop_assert_eq!(sent, want);
        }
    }
}
