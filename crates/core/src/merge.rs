//! The router's side of pushed-down ORDER BY and aggregates: what Postgres
//! would have computed over all rows, rebuilt exactly from what each shard
//! returned.
//!
//! - [`KWayMerge`]: every shard returns its rows sorted (the same ORDER BY,
//!   with explicit NULLS FIRST/LAST); the merge hands out the smallest head
//!   as soon as every shard still running has a row queued, so rows flow as
//!   they arrive and the reader can stop early (LIMIT).
//! - [`GroupMerge`]: every shard returns one row per group (grouping values
//!   first, then each aggregate's partial columns, see
//!   [`AggSpec::remote_exprs`]); partials of the same group are combined
//!   and finished into what Postgres' aggregate returns. Integer sums are
//!   carried as two SQLite sums that cannot overflow (`x >> 32` and
//!   `x & 0xffffffff`) and combined in 128 bits, so a sum past 64 bits is
//!   exact. `avg` of integers is handed back as the exact sum and count
//!   ([`Final::Avg`]): the caller divides with Postgres' own numeric
//!   division, so the scale is Postgres'.
//!
//! Values compare as SQLite compares one column's values: NULL first, then
//! numbers (integers and reals by value), text bytewise, blobs bytewise.
//! The pushdown rulebook only pushes sort keys whose SQLite order is
//! Postgres' order, so this order is Postgres' too.

use crate::plan::RemoteExpr;
use crate::types::NAN_TEXT;
use conductor_hrana::decimal::{Decimal, DecimalSum};
use conductor_hrana::Value;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::{HashMap, VecDeque};
use std::fmt;

/// SQLite's order of two values of one column (NULL lowest).
pub fn compare_values(a: &Value, b: &Value) -> Ordering {
    fn class(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Integer(_) | Value::Float(_) => 1,
            Value::Text(_) => 2,
            Value::Blob(_) => 3,
        }
    }
    match (a, b) {
        (Value::Integer(x), Value::Integer(y)) => x.cmp(y),
        (Value::Float(x), Value::Float(y)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
        (Value::Integer(x), Value::Float(y)) => cmp_int_float(*x, *y),
        (Value::Float(x), Value::Integer(y)) => cmp_int_float(*y, *x).reverse(),
        (Value::Text(x), Value::Text(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Blob(x), Value::Blob(y)) => x.cmp(y),
        _ => class(a).cmp(&class(b)),
    }
}

fn cmp_int_float(i: i64, f: f64) -> Ordering {
    // Exact: compare as i128 when f is integral and in range, else by float.
    if f.is_nan() {
        return Ordering::Equal;
    }
    if f >= 9.3e18 {
        return Ordering::Less;
    }
    if f <= -9.3e18 {
        return Ordering::Greater;
    }
    let t = f.trunc();
    match (i as i128).cmp(&(t as i128)) {
        Ordering::Equal if f > t => Ordering::Less,
        Ordering::Equal if f < t => Ordering::Greater,
        o => o,
    }
}

/// One ORDER BY key of the merge: a position in the shard's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeKey {
    pub position: usize,
    pub descending: bool,
    pub nulls_first: bool,
}

/// Compare two rows by `keys`, as `ORDER BY … [DESC] NULLS FIRST|LAST`.
pub fn compare_rows(a: &[Value], b: &[Value], keys: &[MergeKey]) -> Ordering {
    for k in keys {
        let (x, y) = (&a[k.position], &b[k.position]);
        let o = match (x, y) {
            (Value::Null, Value::Null) => Ordering::Equal,
            (Value::Null, _) if k.nulls_first => Ordering::Less,
            (Value::Null, _) => Ordering::Greater,
            (_, Value::Null) if k.nulls_first => Ordering::Greater,
            (_, Value::Null) => Ordering::Less,
            _ if k.descending => compare_values(x, y).reverse(),
            _ => compare_values(x, y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    Ordering::Equal
}

struct Source {
    shard_id: u32,
    rows: VecDeque<Vec<Value>>,
    finished: bool,
}

/// Merges shard streams that are each sorted by `keys` into one sorted
/// stream. Ties go to the lower shard id (any order of ties is a correct
/// ORDER BY answer).
pub struct KWayMerge {
    keys: Vec<MergeKey>,
    sources: Vec<Source>,
}

impl KWayMerge {
    pub fn new(shards: impl IntoIterator<Item = u32>, keys: Vec<MergeKey>) -> Self {
        let mut sources: Vec<Source> = shards
            .into_iter()
            .map(|shard_id| Source {
                shard_id,
                rows: VecDeque::new(),
                finished: false,
            })
            .collect();
        sources.sort_by_key(|s| s.shard_id);
        sources.dedup_by_key(|s| s.shard_id);
        KWayMerge { keys, sources }
    }

    fn source(&mut self, shard_id: u32) -> &mut Source {
        let i = self
            .sources
            .binary_search_by_key(&shard_id, |s| s.shard_id)
            .unwrap_or_else(|_| panic!("rows of shard {shard_id}, which the merge does not read"));
        &mut self.sources[i]
    }

    /// Rows of one shard, in the order the shard sent them.
    pub fn push(&mut self, shard_id: u32, rows: Vec<Vec<Value>>) {
        self.source(shard_id).rows.extend(rows);
    }

    /// The shard sent its last row.
    pub fn finish(&mut self, shard_id: u32) {
        self.source(shard_id).finished = true;
    }

    /// Every shard sent its last row.
    pub fn finish_all(&mut self) {
        for s in &mut self.sources {
            s.finished = true;
        }
    }

    /// Shards that have not finished and have no row queued: the merge
    /// cannot go on until they send one (or finish).
    pub fn waiting_for(&self) -> Vec<u32> {
        self.sources
            .iter()
            .filter(|s| !s.finished && s.rows.is_empty())
            .map(|s| s.shard_id)
            .collect()
    }

    /// The next row in order, once it is known: every unfinished shard has
    /// a row queued. `None` means wait for more rows (or, when
    /// [`is_done`](Self::is_done), that every row was handed out).
    pub fn pop(&mut self) -> Option<(u32, Vec<Value>)> {
        if self
            .sources
            .iter()
            .any(|s| !s.finished && s.rows.is_empty())
        {
            return None;
        }
        let mut best: Option<usize> = None;
        for (i, s) in self.sources.iter().enumerate() {
            let Some(head) = s.rows.front() else { continue };
            best = match best {
                Some(b)
                    if compare_rows(head, self.sources[b].rows.front().unwrap(), &self.keys)
                        != Ordering::Less =>
                {
                    Some(b)
                }
                _ => Some(i),
            };
        }
        let b = best?;
        let row = self.sources[b].rows.pop_front().expect("a head row");
        Some((self.sources[b].shard_id, row))
    }

    /// Every shard finished and every row was handed out.
    pub fn is_done(&self) -> bool {
        self.sources.iter().all(|s| s.finished && s.rows.is_empty())
    }

    /// Rows queued in the merge now.
    pub fn buffered(&self) -> usize {
        self.sources.iter().map(|s| s.rows.len()).sum()
    }
}

/// An aggregate the shards compute partially and the router finishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AggFunc {
    /// `count(*)` → bigint.
    CountStar,
    /// `count(col)` → bigint.
    Count,
    /// `sum` of smallint/integer → bigint.
    SumInt,
    /// `sum` of bigint → numeric.
    SumBigint,
    /// `sum` of double precision → double precision.
    SumFloat,
    /// `avg` of smallint/integer/bigint → numeric (sum / count, divided by
    /// the caller with Postgres' numeric division).
    AvgInt,
    /// `avg` of real/double precision → double precision.
    AvgFloat,
    /// `min` → the argument's type.
    Min,
    /// `max` → the argument's type.
    Max,
    /// `bool_and`/`every` → boolean: the minimum of the stored 0/1 values
    /// (NULLs ignored, no value gives NULL, as Postgres).
    BoolAnd,
    /// `bool_or` → boolean: their maximum.
    BoolOr,
    /// `sum` of numeric → numeric, by the nodes' exact decimal sum.
    SumDecimal,
    /// `avg` of numeric → numeric: exact sum and count, divided by the
    /// caller with Postgres' numeric division (as for integers).
    AvgDecimal,
    /// `min` of numeric, by numeric order (the stored text's order is not).
    MinDecimal,
    /// `max` of numeric.
    MaxDecimal,
}

impl AggFunc {
    pub fn name(self) -> &'static str {
        match self {
            AggFunc::CountStar | AggFunc::Count => "count",
            AggFunc::SumInt | AggFunc::SumBigint | AggFunc::SumFloat | AggFunc::SumDecimal => "sum",
            AggFunc::AvgInt | AggFunc::AvgFloat | AggFunc::AvgDecimal => "avg",
            AggFunc::Min | AggFunc::MinDecimal => "min",
            AggFunc::Max | AggFunc::MaxDecimal => "max",
            AggFunc::BoolAnd => "bool_and",
            AggFunc::BoolOr => "bool_or",
        }
    }

    /// Whether a shard's partial is one column holding the final value when
    /// the group lives on that shard alone, so that the shard can sort its
    /// groups by it and filter them on it (HAVING). Not a numeric's
    /// min/max: a node would sort and compare its text.
    pub fn final_on_one_shard(self) -> bool {
        matches!(
            self,
            AggFunc::CountStar
                | AggFunc::Count
                | AggFunc::Min
                | AggFunc::Max
                | AggFunc::BoolAnd
                | AggFunc::BoolOr
        )
    }
}

/// One aggregate: its function and argument (a topology column index),
/// and its FILTER (WHERE …) as an index into the pushed query's filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AggSpec {
    pub func: AggFunc,
    pub column: Option<usize>,
    #[serde(default)]
    pub filter: Option<usize>,
}

impl AggSpec {
    /// What each shard computes for it: these columns of its row, in order.
    pub fn remote_exprs(&self) -> Vec<RemoteExpr> {
        let c = self.column.unwrap_or(0);
        match self.func {
            AggFunc::CountStar => vec![RemoteExpr::CountStar],
            AggFunc::Count => vec![RemoteExpr::Count(c)],
            AggFunc::SumInt | AggFunc::SumBigint => {
                vec![RemoteExpr::SumHigh(c), RemoteExpr::SumLow(c)]
            }
            AggFunc::AvgInt => vec![
                RemoteExpr::SumHigh(c),
                RemoteExpr::SumLow(c),
                RemoteExpr::Count(c),
            ],
            // min and max tell whether NaN or an infinity was summed (see
            // `Specials`), which SQLite's sum cannot say.
            AggFunc::SumFloat => vec![RemoteExpr::Sum(c), RemoteExpr::Min(c), RemoteExpr::Max(c)],
            AggFunc::AvgFloat => vec![
                RemoteExpr::Sum(c),
                RemoteExpr::Count(c),
                RemoteExpr::Min(c),
                RemoteExpr::Max(c),
            ],
            AggFunc::Min | AggFunc::BoolAnd => vec![RemoteExpr::Min(c)],
            AggFunc::Max | AggFunc::BoolOr => vec![RemoteExpr::Max(c)],
            AggFunc::SumDecimal => vec![RemoteExpr::DecimalSum(c)],
            AggFunc::AvgDecimal => vec![RemoteExpr::DecimalSum(c), RemoteExpr::Count(c)],
            AggFunc::MinDecimal => vec![RemoteExpr::DecimalMin(c)],
            AggFunc::MaxDecimal => vec![RemoteExpr::DecimalMax(c)],
        }
    }

    pub fn width(&self) -> usize {
        self.remote_exprs().len()
    }
}

/// A finished aggregate (or grouping) value.
#[derive(Debug, Clone, PartialEq)]
pub enum Final {
    /// The value as a node would store a value of the result type:
    /// bigint as Integer, numeric as its text, double precision as Float,
    /// min/max and grouping values as the shard returned them.
    Value(Value),
    /// `avg` of integers or numeric: the exact sum (decimal text, possibly
    /// `NaN` or an infinity) and the count, or
    /// `None` (SQL NULL) when there were no values.
    Avg(Option<(String, i64)>),
}

/// Why partial results cannot be combined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MergeError {
    /// A shard's row does not have the shape the statement asked for.
    BadPartial(String),
    /// The result does not fit bigint (Postgres: "bigint out of range").
    BigintOutOfRange,
    /// A float sum of finite values past the largest double (Postgres:
    /// "value out of range: overflow").
    FloatOverflow,
}

impl fmt::Display for MergeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MergeError::BadPartial(why) => write!(f, "unexpected partial aggregate: {why}"),
            MergeError::BigintOutOfRange => f.write_str("bigint out of range"),
            MergeError::FloatOverflow => f.write_str("value out of range: overflow"),
        }
    }
}

impl std::error::Error for MergeError {}

#[derive(Debug, Clone, PartialEq)]
enum Partial {
    Count(i64),
    /// Exact integer sum; `None` until a non-NULL value was seen.
    Int(Option<i128>),
    AvgInt {
        sum: i128,
        count: i64,
    },
    Float {
        sum: Option<f64>,
        specials: Specials,
    },
    AvgFloat {
        sum: f64,
        count: i64,
        specials: Specials,
        /// The finite extremes, for [`squares_overflow`].
        spread: Spread,
    },
    Extreme(Value),
    Decimal(DecimalSum),
    AvgDecimal {
        sum: DecimalSum,
        count: i64,
    },
    DecimalExtreme(Option<Decimal>),
}

fn decimal_of(v: &Value, what: &str) -> Result<Option<Decimal>, MergeError> {
    match v {
        Value::Null => Ok(None),
        Value::Text(t) => Decimal::parse(t)
            .map(Some)
            .ok_or_else(|| MergeError::BadPartial(format!("{what} is {t:?}"))),
        other => Err(MergeError::BadPartial(format!("{what} is {other:?}"))),
    }
}

fn decimal_sum_of(v: &Value) -> Result<DecimalSum, MergeError> {
    let mut sum = DecimalSum::default();
    if let Some(d) = decimal_of(v, "decimal sum")? {
        sum.add(&d);
    }
    Ok(sum)
}

fn int_of(v: &Value, what: &str) -> Result<Option<i64>, MergeError> {
    match v {
        Value::Null => Ok(None),
        Value::Integer(i) => Ok(Some(*i)),
        other => Err(MergeError::BadPartial(format!("{what} is {other:?}"))),
    }
}

fn float_of(v: &Value, what: &str) -> Result<Option<f64>, MergeError> {
    match v {
        Value::Null => Ok(None),
        Value::Float(f) => Ok(Some(*f)),
        Value::Integer(i) => Ok(Some(*i as f64)),
        other => Err(MergeError::BadPartial(format!("{what} is {other:?}"))),
    }
}

/// The exact integer sum a shard reported as `sum(x >> 32)`, `sum(x &
/// 0xffffffff)` (both NULL when it had no value).
fn split_sum(high: &Value, low: &Value) -> Result<Option<i128>, MergeError> {
    match (
        int_of(high, "sum of high halves")?,
        int_of(low, "sum of low halves")?,
    ) {
        (Some(h), Some(l)) => Ok(Some(((h as i128) << 32) + l as i128)),
        (None, None) => Ok(None),
        _ => Err(MergeError::BadPartial(
            "one half of a split sum is NULL".into(),
        )),
    }
}

/// The non-finite values among a float column's, read from its stored
/// min and max: the stored order is -Infinity < numbers < Infinity < NaN
/// (`types.rs`), so NaN is present when the max is NaN, an infinity when
/// the min or max is one. SQLite's sum cannot tell: it reads NaN (stored as
/// text) as 0 and turns `Infinity + -Infinity` into NULL.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Specials {
    nan: bool,
    infinity: bool,
    minus_infinity: bool,
    /// Any value at all (the min is not NULL).
    values: bool,
}

impl Specials {
    fn read(min: &Value, max: &Value) -> Result<Specials, MergeError> {
        let is_nan = |v: &Value, what: &str| match v {
            Value::Text(t) if t == NAN_TEXT => Ok(true),
            Value::Text(_) | Value::Blob(_) => {
                Err(MergeError::BadPartial(format!("{what} is {v:?}")))
            }
            _ => Ok(false),
        };
        is_nan(min, "min")?;
        Ok(Specials {
            nan: is_nan(max, "max")?,
            infinity: matches!(max, Value::Float(f) if *f == f64::INFINITY),
            minus_infinity: matches!(min, Value::Float(f) if *f == f64::NEG_INFINITY),
            values: !matches!(min, Value::Null),
        })
    }

    fn or(self, o: Specials) -> Specials {
        Specials {
            nan: self.nan || o.nan,
            infinity: self.infinity || o.infinity,
            minus_infinity: self.minus_infinity || o.minus_infinity,
            values: self.values || o.values,
        }
    }

    /// What IEEE addition (Postgres' float sum, in any order) makes of
    /// these values with finite ones: None when none was seen.
    fn sum(self) -> Option<f64> {
        if self.nan || (self.infinity && self.minus_infinity) {
            Some(f64::NAN)
        } else if self.infinity {
            Some(f64::INFINITY)
        } else if self.minus_infinity {
            Some(f64::NEG_INFINITY)
        } else {
            None
        }
    }
}

/// The least and greatest finite values of a float avg's input.
///
/// Postgres' float avg keeps, beside the sum, the running sum of squared
/// deviations that stddev and variance use (float8_accum), and raises
/// "value out of range: overflow" when it becomes infinite from finite
/// values. Its terms depend on the order the rows are added in, which the
/// shards' partials do not keep; the largest any order can reach is bounded
/// by the spread of the values, so an average whose bound overflows is the
/// same ERROR. Postgres adding the rows in another order may still answer
/// when the bound is just past the largest float.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Spread {
    least: Option<f64>,
    greatest: Option<f64>,
}

impl Spread {
    /// From a shard's min and max (NaN, which is text, and the
    /// infinities are `Specials`' to handle).
    fn read(min: &Value, max: &Value) -> Spread {
        let finite = |v: &Value| float_of(v, "").ok().flatten().filter(|f| f.is_finite());
        Spread {
            least: finite(min),
            greatest: finite(max),
        }
    }

    fn or(self, o: Spread) -> Spread {
        Spread {
            least: combine_opt(self.least, o.least, f64::min),
            greatest: combine_opt(self.greatest, o.greatest, f64::max),
        }
    }

    /// Whether the sum of squared deviations of `count` values this far
    /// apart can overflow: a value added as the k-th deviates from the mean
    /// of all k by at most (k-1)/k of the spread; float8_accum squares k
    /// times that deviation, at most ((k-1)·spread)², and adds the square
    /// over k(k-1), so the sum stays below that square for k = `count`.
    fn squares_overflow(self, count: i64) -> bool {
        let (Some(least), Some(greatest)) = (self.least, self.greatest) else {
            return false;
        };
        let spread = greatest - least;
        !((count as f64 - 1.0) * spread).powi(2).is_finite()
    }
}

fn add_opt<T: std::ops::Add<Output = T>>(a: Option<T>, b: Option<T>) -> Option<T> {
    combine_opt(a, b, T::add)
}

/// `f` of both when both are there, else the one that is.
fn combine_opt<T>(a: Option<T>, b: Option<T>, f: impl FnOnce(T, T) -> T) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(f(a, b)),
        (a, None) => a,
        (None, b) => b,
    }
}

impl Partial {
    fn empty(func: AggFunc) -> Partial {
        match func {
            AggFunc::CountStar | AggFunc::Count => Partial::Count(0),
            AggFunc::SumInt | AggFunc::SumBigint => Partial::Int(None),
            AggFunc::AvgInt => Partial::AvgInt { sum: 0, count: 0 },
            AggFunc::SumFloat => Partial::Float {
                sum: None,
                specials: Specials::default(),
            },
            AggFunc::AvgFloat => Partial::AvgFloat {
                sum: 0.0,
                count: 0,
                specials: Specials::default(),
                spread: Spread::default(),
            },
            AggFunc::Min | AggFunc::Max | AggFunc::BoolAnd | AggFunc::BoolOr => {
                Partial::Extreme(Value::Null)
            }
            AggFunc::SumDecimal => Partial::Decimal(DecimalSum::default()),
            AggFunc::AvgDecimal => Partial::AvgDecimal {
                sum: DecimalSum::default(),
                count: 0,
            },
            AggFunc::MinDecimal | AggFunc::MaxDecimal => Partial::DecimalExtreme(None),
        }
    }

    /// A shard's partial from its columns.
    fn read(func: AggFunc, cols: &[Value]) -> Result<Partial, MergeError> {
        Ok(match func {
            AggFunc::CountStar | AggFunc::Count => {
                Partial::Count(int_of(&cols[0], "count")?.unwrap_or(0))
            }
            AggFunc::SumInt | AggFunc::SumBigint => Partial::Int(split_sum(&cols[0], &cols[1])?),
            AggFunc::AvgInt => Partial::AvgInt {
                sum: split_sum(&cols[0], &cols[1])?.unwrap_or(0),
                count: int_of(&cols[2], "count")?.unwrap_or(0),
            },
            AggFunc::SumFloat => Partial::Float {
                sum: float_of(&cols[0], "sum")?,
                specials: Specials::read(&cols[1], &cols[2])?,
            },
            AggFunc::AvgFloat => {
                let count = int_of(&cols[1], "count")?.unwrap_or(0);
                // A NULL sum of values is SQLite's NaN (an overflow of
                // finite values, or opposite infinities).
                let none = if count == 0 { 0.0 } else { f64::NAN };
                Partial::AvgFloat {
                    sum: float_of(&cols[0], "sum")?.unwrap_or(none),
                    count,
                    specials: Specials::read(&cols[2], &cols[3])?,
                    spread: Spread::read(&cols[2], &cols[3]),
                }
            }
            AggFunc::Min | AggFunc::Max | AggFunc::BoolAnd | AggFunc::BoolOr => {
                Partial::Extreme(cols[0].clone())
            }
            AggFunc::SumDecimal => Partial::Decimal(decimal_sum_of(&cols[0])?),
            AggFunc::AvgDecimal => Partial::AvgDecimal {
                sum: decimal_sum_of(&cols[0])?,
                count: int_of(&cols[1], "count")?.unwrap_or(0),
            },
            AggFunc::MinDecimal | AggFunc::MaxDecimal => {
                Partial::DecimalExtreme(decimal_of(&cols[0], func.name())?)
            }
        })
    }

    fn combine(&mut self, func: AggFunc, other: Partial) {
        *self = match (std::mem::replace(self, Partial::Count(0)), other) {
            (Partial::Count(a), Partial::Count(b)) => Partial::Count(a + b),
            (Partial::Int(a), Partial::Int(b)) => Partial::Int(add_opt(a, b)),
            (Partial::AvgInt { sum: s, count: c }, Partial::AvgInt { sum, count }) => {
                Partial::AvgInt {
                    sum: s + sum,
                    count: c + count,
                }
            }
            (
                Partial::Float {
                    sum: a,
                    specials: x,
                },
                Partial::Float { sum, specials },
            ) => Partial::Float {
                sum: add_opt(a, sum),
                specials: x.or(specials),
            },
            (
                Partial::AvgFloat {
                    sum: s,
                    count: c,
                    specials: x,
                    spread: r,
                },
                Partial::AvgFloat {
                    sum,
                    count,
                    specials,
                    spread,
                },
            ) => Partial::AvgFloat {
                sum: s + sum,
                count: c + count,
                specials: x.or(specials),
                spread: r.or(spread),
            },
            (Partial::Extreme(a), Partial::Extreme(b)) => Partial::Extreme(match (&a, &b) {
                (Value::Null, _) => b,
                (_, Value::Null) => a,
                _ => {
                    let o = compare_values(&b, &a);
                    let take_b = if matches!(func, AggFunc::Min | AggFunc::BoolAnd) {
                        o == Ordering::Less
                    } else {
                        o == Ordering::Greater
                    };
                    if take_b {
                        b
                    } else {
                        a
                    }
                }
            }),
            (Partial::Decimal(mut a), Partial::Decimal(b)) => {
                a.merge(&b);
                Partial::Decimal(a)
            }
            (
                Partial::AvgDecimal {
                    sum: mut s,
                    count: c,
                },
                Partial::AvgDecimal { sum, count },
            ) => {
                s.merge(&sum);
                Partial::AvgDecimal {
                    sum: s,
                    count: c + count,
                }
            }
            (Partial::DecimalExtreme(a), Partial::DecimalExtreme(b)) => {
                Partial::DecimalExtreme(match (a, b) {
                    (None, b) => b,
                    (a, None) => a,
                    (Some(a), Some(b)) => {
                        let keep = if func == AggFunc::MinDecimal {
                            Ordering::Less
                        } else {
                            Ordering::Greater
                        };
                        // Of equal values of different scales the later
                        // partial's, as Postgres' numeric_smaller and
                        // numeric_larger keep the later value.
                        Some(if b.cmp(&a) != keep.reverse() { b } else { a })
                    }
                })
            }
            (a, _) => a, // same spec, same variant: unreachable
        };
    }

    fn finish(self, func: AggFunc) -> Result<Final, MergeError> {
        Ok(match self {
            Partial::Count(n) => Final::Value(Value::Integer(n)),
            Partial::Int(None) => Final::Value(Value::Null),
            Partial::Int(Some(s)) if func == AggFunc::SumInt => Final::Value(Value::Integer(
                i64::try_from(s).map_err(|_| MergeError::BigintOutOfRange)?,
            )),
            Partial::Int(Some(s)) => Final::Value(Value::Text(s.to_string())),
            Partial::AvgInt { count: 0, .. } => Final::Avg(None),
            Partial::AvgInt { sum, count } => Final::Avg(Some((sum.to_string(), count))),
            // The sum of a shard whose values included both infinities is
            // NULL (SQLite's NaN); the specials decide then.
            // A sum of negative zeros only is -0 in Postgres (its first
            // value starts the sum) but +0 here: SQLite's sum starts from
            // +0, and no SQLite function shows the sign of a zero.
            // Finite values only whose sum is not finite (or NULL, SQLite's
            // NaN) overflowed: Postgres fails as it adds them, in any order
            // but at the boundary.
            Partial::Float { sum, specials } => match specials.sum() {
                Some(f) => Final::Value(Value::Float(f)),
                None if specials.values && !sum.is_some_and(f64::is_finite) => {
                    return Err(MergeError::FloatOverflow)
                }
                None => Final::Value(sum.map_or(Value::Null, Value::Float)),
            },
            Partial::AvgFloat { count: 0, .. } => Final::Value(Value::Null),
            Partial::AvgFloat {
                sum,
                count,
                specials,
                spread,
            } => match specials.sum() {
                Some(f) => Final::Value(Value::Float(f)),
                None if !sum.is_finite() || spread.squares_overflow(count) => {
                    return Err(MergeError::FloatOverflow)
                }
                None => Final::Value(Value::Float(sum / count as f64)),
            },
            Partial::Extreme(v) => Final::Value(v),
            Partial::Decimal(sum) => Final::Value(
                sum.value()
                    .map_or(Value::Null, |v| Value::Text(v.to_string())),
            ),
            Partial::AvgDecimal { count: 0, .. } => Final::Avg(None),
            Partial::AvgDecimal { sum, count } => match sum.value() {
                Some(v) => Final::Avg(Some((v.to_string(), count))),
                None => {
                    return Err(MergeError::BadPartial(
                        "a count of values without their sum".into(),
                    ))
                }
            },
            Partial::DecimalExtreme(v) => {
                Final::Value(v.map_or(Value::Null, |v| Value::Text(v.to_string())))
            }
        })
    }
}

/// A grouping value as a hash key (floats by their bits, -0 as 0: they are
/// one group in both SQLite and Postgres).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum GroupKey {
    Null,
    Int(i64),
    Float(u64),
    Text(String),
    Blob(Vec<u8>),
}

fn group_key(v: &Value) -> GroupKey {
    match v {
        Value::Null => GroupKey::Null,
        Value::Integer(i) => GroupKey::Int(*i),
        Value::Float(f) => GroupKey::Float(if *f == 0.0 { 0 } else { f.to_bits() }),
        Value::Text(s) => GroupKey::Text(s.clone()),
        Value::Blob(b) => GroupKey::Blob(b.clone()),
    }
}

/// Combines the shards' per-group partial rows into finished groups.
pub struct GroupMerge {
    n_group: usize,
    aggs: Vec<AggSpec>,
    index: HashMap<Vec<GroupKey>, usize>,
    groups: Vec<(Vec<Value>, Vec<Partial>)>,
}

impl GroupMerge {
    /// Rows start with `n_group` grouping values, then each aggregate's
    /// partial columns.
    pub fn new(n_group: usize, aggs: Vec<AggSpec>) -> Self {
        GroupMerge {
            n_group,
            aggs,
            index: HashMap::new(),
            groups: Vec::new(),
        }
    }

    /// Columns a shard's row has.
    pub fn width(n_group: usize, aggs: &[AggSpec]) -> usize {
        n_group + aggs.iter().map(AggSpec::width).sum::<usize>()
    }

    fn partials(&self, row: &[Value]) -> Result<Vec<Partial>, MergeError> {
        if row.len() != Self::width(self.n_group, &self.aggs) {
            return Err(MergeError::BadPartial(format!(
                "a row of {} columns, expected {}",
                row.len(),
                Self::width(self.n_group, &self.aggs)
            )));
        }
        let mut at = self.n_group;
        let mut out = Vec::with_capacity(self.aggs.len());
        for a in &self.aggs {
            let w = a.width();
            out.push(Partial::read(a.func, &row[at..at + w])?);
            at += w;
        }
        Ok(out)
    }

    /// One shard's row for one group.
    pub fn push(&mut self, row: Vec<Value>) -> Result<(), MergeError> {
        let partials = self.partials(&row)?;
        let key: Vec<GroupKey> = row[..self.n_group].iter().map(group_key).collect();
        match self.index.get(&key) {
            Some(&i) => {
                for ((p, new), a) in self.groups[i].1.iter_mut().zip(partials).zip(&self.aggs) {
                    p.combine(a.func, new);
                }
            }
            None => {
                self.index.insert(key, self.groups.len());
                let mut values = row;
                values.truncate(self.n_group);
                self.groups.push((values, partials));
            }
        }
        Ok(())
    }

    /// Finish a row whose group no other shard has (the grouping contains
    /// the shard key): grouping values, then one [`Final`] per aggregate.
    pub fn finish_row(&self, row: Vec<Value>) -> Result<Vec<Final>, MergeError> {
        let partials = self.partials(&row)?;
        Self::finish_group(row, self.n_group, partials, &self.aggs)
    }

    fn finish_group(
        mut values: Vec<Value>,
        n_group: usize,
        partials: Vec<Partial>,
        aggs: &[AggSpec],
    ) -> Result<Vec<Final>, MergeError> {
        values.truncate(n_group);
        let mut out: Vec<Final> = values.into_iter().map(Final::Value).collect();
        for (p, a) in partials.into_iter().zip(aggs) {
            out.push(p.finish(a.func)?);
        }
        Ok(out)
    }

    /// Every group, finished, in the order first seen. Without grouping
    /// columns there is exactly one row, also over no input (count 0, the
    /// other aggregates NULL), as in Postgres.
    pub fn finish(self) -> Result<Vec<Vec<Final>>, MergeError> {
        let GroupMerge {
            n_group,
            aggs,
            mut groups,
            ..
        } = self;
        if n_group == 0 && groups.is_empty() {
            groups.push((
                Vec::new(),
                aggs.iter().map(|a| Partial::empty(a.func)).collect(),
            ));
        }
        groups
            .into_iter()
            .map(|(values, partials)| Self::finish_group(values, n_group, partials, &aggs))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn i(v: i64) -> Value {
        Value::Integer(v)
    }

    fn key(position: usize, descending: bool, nulls_first: bool) -> MergeKey {
        MergeKey {
            position,
            descending,
            nulls_first,
        }
    }

    #[test]
    fn bool_aggregates_ignore_nulls_and_are_null_without_values() {
        let aggs = vec![
            AggSpec {
                func: AggFunc::BoolAnd,
                column: Some(1),
                filter: None,
            },
            AggSpec {
                func: AggFunc::BoolOr,
                column: Some(1),
                filter: None,
            },
        ];
        let mut m = GroupMerge::new(1, aggs);
        // Group 1: shards saw {true}, {NULL only}, {false, true}.
        m.push(vec![i(1), i(1), i(1)]).unwrap();
        m.push(vec![i(1), Value::Null, Value::Null]).unwrap();
        m.push(vec![i(1), i(0), i(1)]).unwrap();
        // Group 2: no value anywhere.
        m.push(vec![i(2), Value::Null, Value::Null]).unwrap();
        // Group 3: only true.
        m.push(vec![i(3), i(1), i(1)]).unwrap();
        let v = |x: Value| Final::Value(x);
        assert_eq!(
            m.finish().unwrap(),
            vec![
                vec![v(i(1)), v(i(0)), v(i(1))],
                vec![v(i(2)), v(Value::Null), v(Value::Null)],
                vec![v(i(3)), v(i(1)), v(i(1))],
            ]
        );
    }

    #[test]
    fn numeric_partials_merge_exactly_and_in_numeric_order() {
        let spec = |func| AggSpec {
            func,
            column: Some(1),
            filter: None,
        };
        let aggs = vec![
            spec(AggFunc::SumDecimal),
            spec(AggFunc::AvgDecimal),
            spec(AggFunc::MinDecimal),
            spec(AggFunc::MaxDecimal),
        ];
        assert_eq!(GroupMerge::width(1, &aggs), 6);
        let t = |s: &str| Value::Text(s.into());
        let n = Value::Null;
        let mut m = GroupMerge::new(1, aggs);
        // Group 1: three shards, sums past any fixed width, scales 2 and 3.
        m.push(vec![
            i(1),
            t("99999999999999999999999.99"),
            t("99999999999999999999999.99"),
            i(1),
            t("99999999999999999999999.99"),
            t("99999999999999999999999.99"),
        ])
        .unwrap();
        m.push(vec![i(1), t("0.011"), t("0.011"), i(2), t("-5"), t("10")])
            .unwrap();
        m.push(vec![i(1), n.clone(), n.clone(), i(0), n.clone(), n.clone()])
            .unwrap();
        // Group 2: an infinity on each side is NaN; NaN is the maximum.
        m.push(vec![
            i(2),
            t("Infinity"),
            t("Infinity"),
            i(1),
            t("Infinity"),
            t("Infinity"),
        ])
        .unwrap();
        m.push(vec![
            i(2),
            t("-Infinity"),
            t("-Infinity"),
            i(1),
            t("-Infinity"),
            t("NaN"),
        ])
        .unwrap();
        // Group 3: no value at all.
        m.push(vec![i(3), n.clone(), n.clone(), i(0), n.clone(), n.clone()])
            .unwrap();
        // Group 4: equal extremes of different scales: the later partial's.
        m.push(vec![i(4), t("3.50"), t("3.50"), i(2), t("1.0"), t("2.50")])
            .unwrap();
        m.push(vec![i(4), t("3.5"), t("3.5"), i(2), t("1.00"), t("2.5")])
            .unwrap();
        let v = |x: Value| Final::Value(x);
        let avg = |s: &str, c: i64| Final::Avg(Some((s.to_string(), c)));
        assert_eq!(
            m.finish().unwrap(),
            vec![
                vec![
                    v(i(1)),
                    v(t("100000000000000000000000.001")),
                    avg("100000000000000000000000.001", 3),
                    v(t("-5")),
                    v(t("99999999999999999999999.99"))
                ],
                vec![
                    v(i(2)),
                    v(t("NaN")),
                    avg("NaN", 2),
                    v(t("-Infinity")),
                    v(t("NaN"))
                ],
                vec![
                    v(i(3)),
                    v(n.clone()),
                    Final::Avg(None),
                    v(n.clone()),
                    v(n.clone())
                ],
                vec![
                    v(i(4)),
                    v(t("7.00")),
                    avg("7.00", 4),
                    v(t("1.00")),
                    v(t("2.5"))
                ],
            ]
        );
        let mut bad = GroupMerge::new(0, vec![spec(AggFunc::SumDecimal)]);
        assert!(matches!(
            bad.push(vec![t("1e3")]),
            Err(MergeError::BadPartial(_))
        ));
        assert!(!AggFunc::MaxDecimal.final_on_one_shard());
    }

    #[test]
    fn value_order_is_sqlites() {
        assert_eq!(compare_values(&Value::Null, &i(-5)), Ordering::Less);
        assert_eq!(compare_values(&i(2), &Value::Float(1.5)), Ordering::Greater);
        assert_eq!(compare_values(&i(2), &Value::Float(2.0)), Ordering::Equal);
        assert_eq!(
            compare_values(&i(i64::MAX), &Value::Float(9.3e18)),
            Ordering::Less
        );
        assert_eq!(
            compare_values(&Value::Text("B".into()), &Value::Text("a".into())),
            Ordering::Less
        );
        assert_eq!(
            compare_values(&Value::Text("é".into()), &Value::Text("z".into())),
            Ordering::Greater
        );
        assert_eq!(
            compare_values(&Value::Blob(vec![1]), &Value::Blob(vec![1, 0])),
            Ordering::Less
        );
    }

    #[test]
    fn nulls_first_and_last_follow_the_key() {
        let asc = [key(0, false, false)];
        let desc = [key(0, true, true)];
        assert_eq!(
            compare_rows(&[Value::Null], &[i(1)], &asc),
            Ordering::Greater
        );
        assert_eq!(compare_rows(&[Value::Null], &[i(1)], &desc), Ordering::Less);
        assert_eq!(compare_rows(&[i(2)], &[i(1)], &desc), Ordering::Less);
    }

    fn drain(m: &mut KWayMerge) -> Vec<Vec<Value>> {
        let mut out = Vec::new();
        while let Some((_, r)) = m.pop() {
            out.push(r);
        }
        out
    }

    #[test]
    fn merge_waits_for_every_running_shard() {
        let mut m = KWayMerge::new([0, 1, 2], vec![key(0, false, false)]);
        m.push(0, vec![vec![i(1)], vec![i(4)]]);
        assert_eq!(
            m.pop(),
            None,
            "shards 1 and 2 may still send something smaller"
        );
        assert_eq!(m.waiting_for(), vec![1, 2]);
        m.push(1, vec![vec![i(2)]]);
        m.finish(2); // an empty shard
        assert_eq!(m.pop(), Some((0, vec![i(1)])));
        assert_eq!(m.pop(), Some((1, vec![i(2)])));
        assert_eq!(m.pop(), None, "shard 1 is not finished");
        m.finish(1);
        assert_eq!(m.pop(), Some((0, vec![i(4)])));
        assert_eq!(m.pop(), None);
        assert!(!m.is_done());
        m.finish(0);
        assert!(m.is_done());
        let mut none = KWayMerge::new(Vec::<u32>::new(), vec![]);
        assert!(none.is_done());
        assert_eq!(none.pop(), None);
    }

    proptest! {
        /// Whatever the shards hold and however their rows arrive in
        /// chunks, the merge returns every row once, in order.
        #[test]
        fn k_way_merge_is_a_sort(
            shards in proptest::collection::vec(
                proptest::collection::vec(proptest::option::of(-20i64..20), 0..30), 0..6),
            desc in any::<bool>(),
            nulls_first in any::<bool>(),
            chunk in 1usize..5,
        ) {
            let keys = vec![key(0, desc, nulls_first)];
            let val = |v: &Option<i64>| v.map(Value::Integer).unwrap_or(Value::Null);
            let mut sorted: Vec<Vec<Vec<Value>>> = shards.iter().map(|s| {
                let mut rows: Vec<Vec<Value>> = s.iter().map(|v| vec![val(v)]).collect();
                rows.sort_by(|a, b| compare_rows(a, b, &keys));
                rows
            }).collect();
            let mut m = KWayMerge::new(0..sorted.len() as u32, keys.clone());
            let mut out = Vec::new();
            // Round-robin chunks, as arrivals interleave.
            loop {
                let mut sent = false;
                for (s, rows) in sorted.iter_mut().enumerate() {
                    if rows.is_empty() { continue; }
                    let n = chunk.min(rows.len());
                    m.push(s as u32, rows.drain(..n).collect());
                    if rows.is_empty() { m.finish(s as u32); }
                    sent = true;
                    out.extend(drain(&mut m));
                }
                if !sent { break; }
            }
            for s in 0..sorted.len() as u32 { m.finish(s); }
            out.extend(drain(&mut m));
            prop_assert!(m.is_done());
            let mut want: Vec<Vec<Value>> = shards.iter().flatten().map(|v| vec![val(v)]).collect();
            want.sort_by(|a, b| compare_rows(a, b, &keys));
            prop_assert_eq!(out, want);
        }
    }

    /// What a shard would return for `values` (one group).
    fn shard_row(aggs: &[AggSpec], group: Vec<Value>, values: &[Option<i64>]) -> Vec<Value> {
        let non_null: Vec<i64> = values.iter().flatten().copied().collect();
        let mut row = group;
        for a in aggs {
            for e in a.remote_exprs() {
                row.push(match e {
                    RemoteExpr::CountStar => i(values.len() as i64),
                    RemoteExpr::Count(_) => i(non_null.len() as i64),
                    RemoteExpr::SumHigh(_) if non_null.is_empty() => Value::Null,
                    RemoteExpr::SumLow(_) if non_null.is_empty() => Value::Null,
                    // SQLite's own sum() would raise on overflow; the halves cannot.
                    RemoteExpr::SumHigh(_) => i(non_null.iter().map(|v| v >> 32).sum()),
                    RemoteExpr::SumLow(_) => i(non_null.iter().map(|v| v & 0xffff_ffff).sum()),
                    RemoteExpr::Min(_) => {
                        non_null.iter().min().map(|&v| i(v)).unwrap_or(Value::Null)
                    }
                    RemoteExpr::Max(_) => {
                        non_null.iter().max().map(|&v| i(v)).unwrap_or(Value::Null)
                    }
                    RemoteExpr::Sum(_) if non_null.is_empty() => Value::Null,
                    RemoteExpr::Sum(_) => Value::Float(non_null.iter().map(|&v| v as f64).sum()),
                    // The node's decimal aggregates, over the values' text.
                    RemoteExpr::DecimalSum(_) if non_null.is_empty() => Value::Null,
                    RemoteExpr::DecimalSum(_) => Value::Text(
                        non_null
                            .iter()
                            .map(|&v| v as i128)
                            .sum::<i128>()
                            .to_string(),
                    ),
                    RemoteExpr::DecimalMin(_) => non_null
                        .iter()
                        .min()
                        .map_or(Value::Null, |v| Value::Text(v.to_string())),
                    RemoteExpr::DecimalMax(_) => non_null
                        .iter()
                        .max()
                        .map_or(Value::Null, |v| Value::Text(v.to_string())),
                    RemoteExpr::Column(_) => unreachable!(),
                });
            }
        }
        row
    }

    fn all_aggs() -> Vec<AggSpec> {
        [
            AggFunc::CountStar,
            AggFunc::Count,
            AggFunc::SumInt,
            AggFunc::SumBigint,
            AggFunc::AvgInt,
            AggFunc::Min,
            AggFunc::Max,
            AggFunc::SumFloat,
            AggFunc::AvgFloat,
        ]
        .into_iter()
        .map(|func| AggSpec {
            func,
            column: Some(1),
            filter: None,
        })
        .collect()
    }

    #[test]
    fn sums_past_64_bits_are_exact() {
        let aggs = vec![
            AggSpec {
                func: AggFunc::SumBigint,
                column: Some(0),
                filter: None,
            },
            AggSpec {
                func: AggFunc::AvgInt,
                column: Some(0),
                filter: None,
            },
        ];
        let mut m = GroupMerge::new(0, aggs.clone());
        // Two shards, each with values whose sum alone passes i64.
        m.push(shard_row(
            &aggs,
            vec![],
            &[Some(i64::MAX), Some(i64::MAX), None],
        ))
        .unwrap();
        m.push(shard_row(&aggs, vec![], &[Some(i64::MAX), Some(1)]))
            .unwrap();
        let out = m.finish().unwrap();
        let want = 3 * (i64::MAX as i128) + 1;
        assert_eq!(
            out,
            vec![vec![
                Final::Value(Value::Text(want.to_string())),
                Final::Avg(Some((want.to_string(), 4))),
            ]]
        );
        // And far below.
        let mut m = GroupMerge::new(0, aggs.clone());
        m.push(shard_row(&aggs, vec![], &[Some(i64::MIN), Some(i64::MIN)]))
            .unwrap();
        m.push(shard_row(&aggs, vec![], &[Some(-1)])).unwrap();
        let want = 2 * (i64::MIN as i128) - 1;
        assert_eq!(
            m.finish().unwrap()[0][0],
            Final::Value(Value::Text(want.to_string()))
        );
    }

    #[test]
    fn bigint_results_that_do_not_fit_are_an_error() {
        let aggs = vec![AggSpec {
            func: AggFunc::SumInt,
            column: Some(0),
            filter: None,
        }];
        let mut m = GroupMerge::new(0, aggs.clone());
        // Partials as if a shard held 2^32 + 1 values of i32::MAX … enough
        // to pass i64 after combining.
        m.push(vec![i(i64::MAX >> 32), i(0xffff_ffff)]).unwrap();
        m.push(vec![i(1), i(0)]).unwrap();
        assert_eq!(m.finish(), Err(MergeError::BigintOutOfRange));
    }

    #[test]
    fn empty_input_and_all_null_groups() {
        let aggs = all_aggs();
        // No shard returned anything (no shard was reached).
        let out = GroupMerge::new(0, aggs.clone()).finish().unwrap();
        assert_eq!(
            out,
            vec![vec![
                Final::Value(i(0)),
                Final::Value(i(0)),
                Final::Value(Value::Null),
                Final::Value(Value::Null),
                Final::Avg(None),
                Final::Value(Value::Null),
                Final::Value(Value::Null),
                Final::Value(Value::Null),
                Final::Value(Value::Null),
            ]]
        );
        // Shards that each saw no row still return one row without GROUP BY.
        let mut m = GroupMerge::new(0, aggs.clone());
        m.push(shard_row(&aggs, vec![], &[])).unwrap();
        m.push(shard_row(&aggs, vec![], &[None, None])).unwrap();
        let out = m.finish().unwrap();
        assert_eq!(out[0][0], Final::Value(i(2)));
        assert_eq!(out[0][1], Final::Value(i(0)));
        assert_eq!(out[0][4], Final::Avg(None));
        // With GROUP BY, no input is no group.
        assert!(GroupMerge::new(1, aggs).finish().unwrap().is_empty());
    }

    #[test]
    fn groups_combine_across_shards_and_null_is_a_group() {
        let aggs = vec![
            AggSpec {
                func: AggFunc::CountStar,
                column: None,
                filter: None,
            },
            AggSpec {
                func: AggFunc::Min,
                column: Some(1),
                filter: None,
            },
            AggSpec {
                func: AggFunc::Max,
                column: Some(1),
                filter: None,
            },
            AggSpec {
                func: AggFunc::AvgFloat,
                column: Some(1),
                filter: None,
            },
        ];
        let mut m = GroupMerge::new(1, aggs.clone());
        m.push(shard_row(&aggs, vec![i(1)], &[Some(5), Some(-3)]))
            .unwrap();
        m.push(shard_row(&aggs, vec![Value::Null], &[Some(7)]))
            .unwrap();
        m.push(shard_row(&aggs, vec![i(1)], &[Some(10), None]))
            .unwrap();
        m.push(shard_row(&aggs, vec![Value::Null], &[None]))
            .unwrap();
        let out = m.finish().unwrap();
        assert_eq!(
            out,
            vec![
                vec![
                    Final::Value(i(1)),
                    Final::Value(i(4)),
                    Final::Value(i(-3)),
                    Final::Value(i(10)),
                    Final::Value(Value::Float(4.0)),
                ],
                vec![
                    Final::Value(Value::Null),
                    Final::Value(i(2)),
                    Final::Value(i(7)),
                    Final::Value(i(7)),
                    Final::Value(Value::Float(7.0)),
                ],
            ]
        );
        // A row of the wrong width is refused, not misread.
        let mut m = GroupMerge::new(1, aggs);
        assert!(matches!(m.push(vec![i(1)]), Err(MergeError::BadPartial(_))));
    }

    /// What a shard returns for `sum` and `avg` of a float column holding
    /// `values` (stored forms, as SQLite computes it: NaN is text, read as
    /// 0 by sum; a sum meeting both infinities is NULL).
    fn float_partials(values: &[f64]) -> Vec<Value> {
        use crate::types::float_value;
        let stored: Vec<Value> = values.iter().map(|&f| float_value(f)).collect();
        let min = stored
            .iter()
            .min_by(|a, b| compare_values(a, b))
            .cloned()
            .unwrap_or(Value::Null);
        let max = stored
            .iter()
            .max_by(|a, b| compare_values(a, b))
            .cloned()
            .unwrap_or(Value::Null);
        let sum: f64 = values
            .iter()
            .fold(0.0, |s, f| s + if f.is_nan() { 0.0 } else { *f });
        let sum = if values.is_empty() || sum.is_nan() {
            Value::Null
        } else {
            Value::Float(sum)
        };
        let count = i(values.len() as i64);
        vec![sum.clone(), min.clone(), max.clone(), sum, count, min, max]
    }

    #[test]
    fn float_sums_with_nan_and_infinities_are_postgres_sums() {
        let aggs = vec![
            AggSpec {
                func: AggFunc::SumFloat,
                column: Some(0),
                filter: None,
            },
            AggSpec {
                func: AggFunc::AvgFloat,
                column: Some(0),
                filter: None,
            },
        ];
        let (inf, nan) = (f64::INFINITY, f64::NAN);
        let cases: Vec<Vec<Vec<f64>>> = vec![
            vec![vec![1.0, 2.0], vec![4.0]],
            vec![vec![1.0, inf], vec![4.0]],
            vec![vec![1.0, -inf], vec![]],
            vec![vec![1.0, inf], vec![-inf]],
            vec![vec![inf, -inf], vec![2.0]],
            vec![vec![1.0], vec![nan, 2.0]],
            vec![vec![nan], vec![inf]],
            vec![vec![-inf], vec![nan]],
            vec![vec![], vec![]],
            vec![vec![-0.0, 3.0], vec![]],
            vec![vec![-0.0], vec![0.0]],
            vec![vec![1.5, -1.5], vec![-0.0]],
        ];
        for shards in cases {
            let mut m = GroupMerge::new(0, aggs.clone());
            for values in &shards {
                if !values.is_empty() {
                    m.push(float_partials(values)).unwrap();
                }
            }
            let all: Vec<f64> = shards.iter().flatten().copied().collect();
            // Postgres: plain IEEE addition in row order.
            let want_sum = all.iter().copied().reduce(|a, b| a + b);
            // avg's transition state starts from +0.
            let want_avg = want_sum.map(|_| all.iter().fold(0.0, |s, f| s + f) / all.len() as f64);
            let got = m.finish().unwrap();
            let as_float = |f: &Final| match f {
                Final::Value(Value::Float(f)) => Some(*f),
                Final::Value(Value::Null) => None,
                other => panic!("{other:?}"),
            };
            for (got, want) in [
                (as_float(&got[0][0]), want_sum),
                (as_float(&got[0][1]), want_avg),
            ] {
                match (got, want) {
                    (Some(g), Some(w)) if w.is_nan() => assert!(g.is_nan(), "{shards:?}: {g}"),
                    (g, w) => assert_eq!(g.map(f64::to_bits), w.map(f64::to_bits), "{shards:?}"),
                }
            }
        }
    }

    #[test]
    fn float_sums_past_the_largest_double_fail_as_in_postgres() {
        let aggs = |func| {
            vec![AggSpec {
                func,
                column: Some(0),
                filter: None,
            }]
        };
        let big = f64::MAX / 2.0 * 1.5;
        // (shards' values, sum overflows, avg overflows): avg also keeps
        // the sum of squared deviations (float8_accum), which overflows
        // when the values are far enough apart, whatever their sum.
        for (shards, sum_overflows, avg_overflows) in [
            (vec![vec![big], vec![big]], true, true),
            (vec![vec![big, big], vec![]], true, true),
            (vec![vec![big, -big, big, big]], true, true),
            (vec![vec![-big], vec![-big, 1.0]], true, true),
            (vec![vec![big], vec![-big]], false, true),
            (vec![vec![1e300], vec![0.0]], false, true),
            (vec![vec![1e300, 0.0]], false, true),
            (vec![vec![1e154], vec![0.0]], false, false),
            (vec![vec![1e200, 1e200], vec![1e200]], false, false),
            (vec![vec![big, f64::INFINITY], vec![big]], false, false),
            (vec![vec![big, f64::NAN], vec![big]], false, false),
            (vec![vec![], vec![]], false, false),
        ] {
            for (func, width, overflows) in [
                (AggFunc::SumFloat, 0..3, sum_overflows),
                (AggFunc::AvgFloat, 3..7, avg_overflows),
            ] {
                let mut m = GroupMerge::new(0, aggs(func));
                for values in &shards {
                    if !values.is_empty() {
                        m.push(float_partials(values)[width.clone()].to_vec())
                            .unwrap();
                    }
                }
                let got = m.finish();
                if overflows {
                    assert_eq!(got, Err(MergeError::FloatOverflow), "{func:?} {shards:?}");
                } else {
                    assert!(got.is_ok(), "{func:?} {shards:?}: {got:?}");
                }
            }
        }
    }

    #[test]
    fn float_extremes_order_nan_last() {
        let aggs = vec![
            AggSpec {
                func: AggFunc::Min,
                column: Some(0),
                filter: None,
            },
            AggSpec {
                func: AggFunc::Max,
                column: Some(0),
                filter: None,
            },
        ];
        let nan = Value::Text(NAN_TEXT.into());
        let mut m = GroupMerge::new(0, aggs);
        m.push(vec![Value::Float(1.0), nan.clone()]).unwrap();
        m.push(vec![
            Value::Float(f64::NEG_INFINITY),
            Value::Float(f64::INFINITY),
        ])
        .unwrap();
        assert_eq!(
            m.finish().unwrap(),
            vec![vec![
                Final::Value(Value::Float(f64::NEG_INFINITY)),
                Final::Value(nan)
            ]]
        );
    }

    #[test]
    fn float_group_keys_treat_minus_zero_as_zero() {
        let aggs = vec![AggSpec {
            func: AggFunc::CountStar,
            column: None,
            filter: None,
        }];
        let mut m = GroupMerge::new(1, aggs);
        m.push(vec![Value::Float(0.0), i(1)]).unwrap();
        m.push(vec![Value::Float(-0.0), i(2)]).unwrap();
        assert_eq!(m.finish().unwrap().len(), 1);
    }

    proptest! {
        /// Splitting any multiset of rows over shards and groups, the merge
        /// gives what one pass over all rows gives.
        #[test]
        fn partials_combine_like_one_pass(
            rows in proptest::collection::vec(
                (0u32..4, 0i64..3, proptest::option::of(any::<i64>())), 0..40),
        ) {
            let aggs: Vec<AggSpec> = all_aggs()
                .into_iter()
                .filter(|a| matches!(a.func, AggFunc::CountStar | AggFunc::Count | AggFunc::SumBigint
                    | AggFunc::AvgInt | AggFunc::Min | AggFunc::Max))
                .chain([AggFunc::SumDecimal, AggFunc::AvgDecimal, AggFunc::MinDecimal, AggFunc::MaxDecimal]
                    .map(|func| AggSpec { func, column: Some(1), filter: None }))
                .collect();
            let mut m = GroupMerge::new(1, aggs.clone());
            let mut per: std::collections::BTreeMap<(u32, i64), Vec<Option<i64>>> = Default::default();
            for (shard, g, v) in &rows {
                per.entry((*shard, *g)).or_default().push(*v);
            }
            for ((_, g), values) in &per {
                m.push(shard_row(&aggs, vec![i(*g)], values)).unwrap();
            }
            let mut got = m.finish().unwrap();
            got.sort_by(|a, b| match (&a[0], &b[0]) {
                (Final::Value(x), Final::Value(y)) => compare_values(x, y),
                _ => Ordering::Equal,
            });
            let mut groups: std::collections::BTreeMap<i64, Vec<Option<i64>>> = Default::default();
            for (_, g, v) in &rows {
                groups.entry(*g).or_default().push(*v);
            }
            prop_assert_eq!(got.len(), groups.len());
            for (row, (g, values)) in got.iter().zip(&groups) {
                let nn: Vec<i128> = values.iter().flatten().map(|&v| v as i128).collect();
                let sum: i128 = nn.iter().sum();
                prop_assert_eq!(&row[0], &Final::Value(i(*g)));
                prop_assert_eq!(&row[1], &Final::Value(i(values.len() as i64)));
                prop_assert_eq!(&row[2], &Final::Value(i(nn.len() as i64)));
                let numeric = if nn.is_empty() { Value::Null } else { Value::Text(sum.to_string()) };
                prop_assert_eq!(&row[3], &Final::Value(numeric));
                let avg = (!nn.is_empty()).then(|| (sum.to_string(), nn.len() as i64));
                prop_assert_eq!(&row[4], &Final::Avg(avg));
                let min = nn.iter().min().map(|&v| i(v as i64)).unwrap_or(Value::Null);
                let max = nn.iter().max().map(|&v| i(v as i64)).unwrap_or(Value::Null);
                prop_assert_eq!(&row[5], &Final::Value(min));
                prop_assert_eq!(&row[6], &Final::Value(max));
                prop_assert_eq!(&row[7], &row[3]);
                prop_assert_eq!(&row[8], &row[4]);
                let text = |v: Option<&i128>| v.map_or(Value::Null, |v| Value::Text(v.to_string()));
                prop_assert_eq!(&row[9], &Final::Value(text(nn.iter().min())));
                prop_assert_eq!(&row[10], &Final::Value(text(nn.iter().max())));
            }
        }
    }
}
