//! `conductor_explain(sql)`: the second parse front end (DESIGN §2). SQL
//! text is parsed with sqlparser (PostgreSQL dialect), each WHERE clause is
//! lowered into the same predicate IR the FDW builds from planner nodes
//! ([`crate::predicate`]), routed by the same [`route`] and deparsed
//! by the same [`deparse`] + [`select_sql`], so what explain prints is what a
//! scan sends: one [`ExplainRow`] per target shard per distributed table.
//!
//! Lowering follows the FDW's rules (DESIGN §6, the extension's parse.rs): only what
//! SQLite evaluates exactly as Postgres is pushed; anything else in a
//! conjunct keeps that whole conjunct local, which can widen the shard set
//! but never narrow it wrongly. It also mimics what the planner does before
//! the FDW sees the quals: top-level ANDs split into conjuncts; NOT pushed
//! down (`NOT (id <> 5)` is `id = 5`); BETWEEN as two conjuncts; `x IN (v)`
//! as `x = v`; `b = true` as `b`; clauses common to every OR branch pulled
//! out; outer joins made inner by a strict WHERE qual; equivalence classes
//! (`a.k = b.k AND a.k = 5` also gives `b.k = 5`, inner joins only); a
//! constant `false` qual leaves no shard. Literals are typed as Postgres
//! types them (an untyped `'0.1'` against a float4 column is an f32, a
//! numeric constant an f64; integers compare across widths).
//!
//! Known gaps, each only ever widening the listed shards: expressions are
//! not constant-folded (`id = 1 + 1`, `id = abs(-1)`), functions are not
//! known strict (no outer-join reduction through them), subqueries in FROM
//! are not pulled up, equivalence classes through local tables' columns
//! are not derived, date/time literals are not parsed (kept local), and
//! parameterized nested loops (`key = outer.col`) are not shown.
//!
//! Columns fetched: those the statement references outside the conjuncts
//! pushed whole (as the FDW fetches reltarget + local quals), in table
//! order; all for `*` or a whole-row reference; UPDATE/DELETE add the key.
//! UPDATE and DELETE show the scan that finds their rows (the reason says
//! so); INSERT … VALUES shows per shard the multi-row INSERT and its rows.
//!
//! [`PlanCache`] caches, per SQL text, the parsed statement and its lowered
//! IR. The IR depends on the column names/types of the tables involved, so
//! it is reused only while the catalog reports the same columns for every
//! table name the statement mentions (otherwise it is lowered again from
//! the cached AST); placement (shard count, nodes, remote name) is read from
//! the catalog and routed on every call, so a cached plan is never stale.

use crate::predicate::{deparse, like_to_glob, Binding, CmpOp, ListOperand, Operand, Pred};
use crate::remote_sql::{insert_sql, select_sql, shard_table_name};
use crate::router::{route, ShardKey};
use crate::types::{ColumnType, TypedValue};
use conductor_hrana::Value;
use sqlparser::ast::{
    self, BinaryOperator, Expr, FromTable, Ident, JoinConstraint, JoinOperator, ObjectName,
    ObjectNamePart, Query, Select, SelectItem, SelectItemQualifiedWildcardKind, SetExpr, Statement,
    TableFactor, TableObject, TableWithJoins, UnaryOperator, UpdateTableFromKind, Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, Tokenizer};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::ops::ControlFlow;

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

/// A table name as written, normalized like Postgres does: unquoted parts
/// folded to lower case, quoted parts kept as they are.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TableName {
    pub schema: Option<String>,
    pub name: String,
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Where one shard of a table lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardPlacement {
    pub shard_id: u32,
    pub node_id: String,
    pub node_url: String,
}

/// What explain needs to know about a distributed table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableInfo {
    /// The name to show (e.g. as the user writes it, or schema-qualified).
    pub name: String,
    /// Columns in table order: (name as stored, type).
    pub columns: Vec<(String, ColumnType)>,
    /// Index of the shard key in `columns`.
    pub key_column: usize,
    pub shard_count: u32,
    /// Base name of the shard tables on the nodes ([`shard_table_name`]).
    pub remote_name: String,
    pub shards: Vec<ShardPlacement>,
}

/// The caller's view of the distributed tables. `None`: not a distributed
/// table (a local table, a view, or nothing at all); the FFI side resolves
/// unqualified names through `search_path`.
pub trait Catalog {
    fn table(&self, name: &TableName) -> Option<TableInfo>;

    /// Whether the database's default collation compares like "C" (then
    /// text ordering without a COLLATE clause is pushed, as the FDW does).
    fn default_collation_is_c(&self) -> bool {
        false
    }
}

impl<F: Fn(&TableName) -> Option<TableInfo>> Catalog for F {
    fn table(&self, name: &TableName) -> Option<TableInfo> {
        self(name)
    }
}

/// One target shard of one distributed table the statement reads or writes.
#[derive(Debug, Clone, PartialEq)]
pub struct ExplainRow {
    /// [`TableInfo::name`].
    pub table: String,
    /// The alias the statement gives the table, if any (a self-join lists
    /// the table once per alias).
    pub alias: Option<String>,
    pub shard_id: u32,
    pub node_id: String,
    pub node_url: String,
    /// The SQL sent to the shard, values as `?`.
    pub remote_sql: String,
    /// The arguments, in order. Parameters not bound (see
    /// [`explain_with_params`]) appear as NULL and the reason says so.
    pub args: Vec<Value>,
    /// The router's reason ("id = 42", "id IN (3 values) split over 2
    /// shards", "all shards: no usable predicate on id", "no shard: …").
    pub reason: String,
}

/// Why a statement cannot be explained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExplainError {
    /// sqlparser's message.
    Parse(String),
    /// No statement in the text.
    Empty,
    /// More than one statement (how many).
    MultipleStatements(usize),
    /// A statement kind or construct explain does not handle.
    Unsupported(String),
    /// The statement names a table the catalog does not know.
    NotDistributed(String),
    /// The catalog is inconsistent (e.g. a shard without a node).
    Catalog(String),
}

impl fmt::Display for ExplainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExplainError::Parse(m) => write!(f, "could not parse the statement: {m}"),
            ExplainError::Empty => f.write_str("no statement to explain"),
            ExplainError::MultipleStatements(n) => {
                write!(f, "conductor_explain takes exactly one statement, got {n}")
            }
            ExplainError::Unsupported(m) => write!(f, "not supported by conductor_explain: {m}"),
            ExplainError::NotDistributed(t) => {
                write!(f, "relation \"{t}\" is not a distributed table")
            }
            ExplainError::Catalog(m) => write!(f, "catalog: {m}"),
        }
    }
}

impl std::error::Error for ExplainError {}

/// Explain `sql` with no parameter values (`$n` stays unbound).
pub fn explain(sql: &str, catalog: &dyn Catalog) -> Result<Vec<ExplainRow>, ExplainError> {
    explain_with_params(sql, catalog, &[])
}

/// Explain `sql` with `bindings[n-1]` as the value of `$n` (as at
/// execution). Parameters without a binding do not restrict routing.
pub fn explain_with_params(
    sql: &str,
    catalog: &dyn Catalog,
    bindings: &[Binding],
) -> Result<Vec<ExplainRow>, ExplainError> {
    let stmt = parse(sql)?;
    let (plan, infos) = analyze(&stmt, catalog)?;
    render(&plan, &infos, bindings)
}

/// [`explain`] through a [`PlanCache`].
pub fn explain_cached(
    cache: &mut PlanCache,
    sql: &str,
    catalog: &dyn Catalog,
) -> Result<Vec<ExplainRow>, ExplainError> {
    cache.explain(sql, catalog, &[])
}

/// Bounded LRU cache of parsed statements and their lowered IR, keyed by
/// the exact SQL text (module docs say when the IR is reused).
pub struct PlanCache {
    capacity: usize,
    tick: u64,
    entries: HashMap<String, CacheEntry>,
    /// Calls whose text was found (no parsing).
    pub hits: u64,
    /// Calls that parsed the text.
    pub misses: u64,
    /// Hits whose IR was lowered again because a table's columns changed.
    pub relowered: u64,
}

struct CacheEntry {
    stmt: Statement,
    plan: Option<Plan>,
    last_used: u64,
}

impl Default for PlanCache {
    fn default() -> Self {
        PlanCache::new(256)
    }
}

impl PlanCache {
    pub fn new(capacity: usize) -> PlanCache {
        PlanCache {
            capacity: capacity.max(1),
            tick: 0,
            entries: HashMap::new(),
            hits: 0,
            misses: 0,
            relowered: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// [`explain_with_params`], skipping parsing (and lowering, while the
    /// tables' columns are unchanged) for a text seen before.
    pub fn explain(
        &mut self,
        sql: &str,
        catalog: &dyn Catalog,
        bindings: &[Binding],
    ) -> Result<Vec<ExplainRow>, ExplainError> {
        self.tick += 1;
        let tick = self.tick;
        if !self.entries.contains_key(sql) {
            self.misses += 1;
            let stmt = parse(sql)?;
            if self.entries.len() >= self.capacity {
                if let Some(oldest) = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(k, _)| k.clone())
                {
                    self.entries.remove(&oldest);
                }
            }
            self.entries.insert(
                sql.to_string(),
                CacheEntry {
                    stmt,
                    plan: None,
                    last_used: tick,
                },
            );
        } else {
            self.hits += 1;
        }
        let entry = self.entries.get_mut(sql).expect("inserted above");
        entry.last_used = tick;
        if let Some(plan) = &entry.plan {
            if let Some(infos) = plan.revalidate(catalog) {
                return render(plan, &infos, bindings);
            }
            self.relowered += 1;
        }
        let (plan, infos) = analyze(&entry.stmt, catalog)?;
        let rows = render(&plan, &infos, bindings);
        entry.plan = Some(plan);
        rows
    }
}

// ---------------------------------------------------------------------------
// Parsing and analysis
// ---------------------------------------------------------------------------

/// Most binary operators a statement may have. sqlparser builds a chain
/// `a OR b OR …` as a left-deep tree whose recursive drop uses stack in
/// proportion to its length; a backend's stack is a few megabytes.
pub const MAX_OPERATORS: usize = 10_000;

fn parse(sql: &str) -> Result<Statement, ExplainError> {
    let dialect = PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| ExplainError::Parse(e.to_string()))?;
    let operators = tokens
        .iter()
        .filter(|t| match &t.token {
            Token::Word(w) => {
                w.quote_style.is_none()
                    && (w.value.eq_ignore_ascii_case("and") || w.value.eq_ignore_ascii_case("or"))
            }
            Token::Eq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::StringConcat => true,
            _ => false,
        })
        .count();
    if operators > MAX_OPERATORS {
        return Err(ExplainError::Unsupported(format!(
            "statements with more than {MAX_OPERATORS} operators (this one has {operators})"
        )));
    }
    let mut stmts = Parser::new(&dialect)
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|e| ExplainError::Parse(e.to_string()))?;
    match stmts.len() {
        0 => Err(ExplainError::Empty),
        1 => Ok(stmts.pop().expect("one")),
        n => Err(ExplainError::MultipleStatements(n)),
    }
}

/// The columns and key of a table: what lowering depends on.
type Shape = (Vec<(String, ColumnType)>, usize);

fn shape(info: &TableInfo) -> Shape {
    (info.columns.clone(), info.key_column)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Select,
    Update,
    Delete,
    Insert,
}

/// The lowered statement: what depends on the text and the tables' shapes.
#[derive(Debug, Clone)]
struct Plan {
    /// The default collation was C when lowering.
    default_c: bool,
    kind: Kind,
    /// Every table name looked up and the shape it had (None: not
    /// distributed).
    lookups: Vec<(TableName, Option<Shape>)>,
    occs: Vec<Occ>,
}

/// An INSERT's columns and its VALUES rows.
type InsertRows = (Vec<usize>, Vec<Vec<Option<Operand>>>);

/// One occurrence of a distributed table in the statement.
#[derive(Debug, Clone)]
struct Occ {
    lookup: usize,
    alias: Option<String>,
    /// The name columns are qualified with (alias, else the table name).
    qualifier: String,
    needed: BTreeSet<usize>,
    /// The statement modifies this occurrence (UPDATE/DELETE target).
    target: bool,
    /// Pushed conjuncts, in statement order.
    conjuncts: Vec<Pred>,
    /// For INSERT: insert column indexes and rows of operands (None: an
    /// expression explain does not evaluate).
    insert: Option<InsertRows>,
}

impl Plan {
    /// The current infos when every looked-up name still has the shape it
    /// had when this plan was lowered.
    fn revalidate(&self, catalog: &dyn Catalog) -> Option<Vec<Option<TableInfo>>> {
        if catalog.default_collation_is_c() != self.default_c {
            return None;
        }
        let mut infos = Vec::with_capacity(self.lookups.len());
        for (name, old) in &self.lookups {
            let info = catalog.table(name);
            if info.as_ref().map(shape) != *old {
                return None;
            }
            infos.push(info);
        }
        Some(infos)
    }
}

fn analyze(
    stmt: &Statement,
    catalog: &dyn Catalog,
) -> Result<(Plan, Vec<Option<TableInfo>>), ExplainError> {
    let mut a = Analyzer {
        catalog,
        lookups: Vec::new(),
        infos: Vec::new(),
        occs: Vec::new(),
        ctes: HashSet::new(),
        first_local: None,
        error: None,
        consumed: Vec::new(),
        default_c: catalog.default_collation_is_c(),
    };
    let kind = match stmt {
        Statement::Query(_) => Kind::Select,
        Statement::Update(u) => {
            a.collect_ctes(stmt);
            a.update(u)?;
            Kind::Update
        }
        Statement::Delete(d) => {
            a.collect_ctes(stmt);
            a.delete(d)?;
            Kind::Delete
        }
        Statement::Insert(i) => {
            a.insert(i)?;
            Kind::Insert
        }
        other => {
            let text = other.to_string();
            let word = text.split_whitespace().next().unwrap_or("").to_uppercase();
            return Err(ExplainError::Unsupported(format!(
                "{word} statements (only SELECT, UPDATE, DELETE and INSERT)"
            )));
        }
    };
    // Every SELECT in the statement (top level, subqueries, CTEs) is its
    // own scope.
    if kind != Kind::Insert {
        a.collect_ctes(stmt);
        let _ = stmt.visit(&mut SelectVisitor { a: &mut a });
        if let Some(e) = a.error.take() {
            return Err(e);
        }
    }
    if a.occs.is_empty() {
        return Err(match a.first_local.take() {
            Some(t) => ExplainError::NotDistributed(t),
            None => {
                ExplainError::Unsupported("the statement references no distributed table".into())
            }
        });
    }
    a.mark_columns(stmt);
    let plan = Plan {
        default_c: a.default_c,
        kind,
        lookups: a.lookups,
        occs: a.occs,
    };
    Ok((plan, a.infos))
}

struct SelectVisitor<'a, 'c> {
    a: &'a mut Analyzer<'c>,
}

impl Visitor for SelectVisitor<'_, '_> {
    type Break = ();

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<()> {
        self.a.select(select);
        ControlFlow::Continue(())
    }
}

/// Postgres' folding of an identifier.
fn norm(ident: &Ident) -> String {
    if ident.quote_style.is_some() {
        ident.value.clone()
    } else {
        ident.value.to_lowercase()
    }
}

fn name_parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => norm(i),
            other => other.to_string(),
        })
        .collect()
}

/// An entry of a FROM clause.
#[derive(Debug, Clone)]
struct ScopeEntry {
    qualifier: String,
    occ: Option<usize>,
    /// On the nullable side of some outer join.
    nullable: bool,
}

/// A qualification clause and where it came from.
enum QualSource {
    /// The WHERE clause.
    Where,
    /// ON of an inner join.
    InnerOn,
    /// ON of the outer join `JoinInfo::outer[i]`.
    OuterOn(usize),
}

/// An outer join of a FROM clause: the scope entries of each side and
/// which side is null-extended.
#[derive(Debug, Clone)]
struct OuterJoin {
    left: Vec<usize>,
    right: Vec<usize>,
    left_nullable: bool,
    right_nullable: bool,
}

/// What a FROM clause contributes besides its tables.
#[derive(Default)]
struct JoinInfo<'s> {
    quals: Vec<(&'s Expr, QualSource)>,
    /// `JOIN … USING (c)` of inner joins: column equalities.
    using: Vec<(ColRef, ColRef)>,
    outer: Vec<OuterJoin>,
}

/// A column reference resolved in a scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ColRef {
    occ: usize,
    col: usize,
}

/// A WHERE clause after lowering its leaves, before splitting conjuncts.
#[derive(Debug, Clone)]
enum Tree {
    And(Vec<Tree>),
    Or(Vec<Tree>),
    Leaf(Leaf),
}

#[derive(Debug, Clone)]
enum Leaf {
    /// Lowered, about one table occurrence.
    Pred(usize, Pred),
    /// `a.x = b.y` between two routable columns.
    ColEq(ColRef, ColRef),
    /// `true` / `false`.
    Const(bool),
    /// Anything else: evaluated by Postgres.
    Opaque,
}

struct Analyzer<'c> {
    catalog: &'c dyn Catalog,
    lookups: Vec<(TableName, Option<Shape>)>,
    infos: Vec<Option<TableInfo>>,
    occs: Vec<Occ>,
    ctes: HashSet<String>,
    first_local: Option<String>,
    error: Option<ExplainError>,
    /// Conjuncts (as written) that went to the shards entirely.
    consumed: Vec<(Option<String>, String)>,
    /// [`Catalog::default_collation_is_c`] when lowering.
    default_c: bool,
}

impl Analyzer<'_> {
    fn collect_ctes(&mut self, stmt: &Statement) {
        struct V<'x>(&'x mut HashSet<String>);
        impl Visitor for V<'_> {
            type Break = ();
            fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
                if let Some(with) = &q.with {
                    for cte in &with.cte_tables {
                        self.0.insert(norm(&cte.alias.name));
                    }
                }
                ControlFlow::Continue(())
            }
        }
        let _ = stmt.visit(&mut V(&mut self.ctes));
    }

    fn lookup(&mut self, name: TableName) -> usize {
        if let Some(i) = self.lookups.iter().position(|(n, _)| *n == name) {
            return i;
        }
        let info = self.catalog.table(&name);
        self.lookups.push((name, info.as_ref().map(shape)));
        self.infos.push(info);
        self.lookups.len() - 1
    }

    fn shape(&self, occ: usize) -> &Shape {
        self.lookups[self.occs[occ].lookup]
            .1
            .as_ref()
            .expect("occurrences are distributed tables")
    }

    fn col_type(&self, c: ColRef) -> ColumnType {
        self.shape(c.occ).0[c.col].1
    }

    /// A table reference: a new occurrence when it is distributed.
    fn table_ref(
        &mut self,
        name: &ObjectName,
        alias: Option<&Ident>,
        target: bool,
    ) -> Result<ScopeEntry, ExplainError> {
        let parts = name_parts(name);
        let last = parts.last().cloned().unwrap_or_default();
        let alias = alias.map(norm);
        let qualifier = alias.clone().unwrap_or_else(|| last.clone());
        if parts.len() == 1 && self.ctes.contains(&last) {
            if target {
                return Err(ExplainError::NotDistributed(last));
            }
            return Ok(ScopeEntry {
                qualifier,
                occ: None,
                nullable: false,
            });
        }
        let schema = (parts.len() >= 2).then(|| parts[parts.len() - 2].clone());
        let tn = TableName { schema, name: last };
        let lookup = self.lookup(tn.clone());
        if self.lookups[lookup].1.is_none() {
            if target {
                return Err(ExplainError::NotDistributed(tn.to_string()));
            }
            self.first_local.get_or_insert_with(|| tn.to_string());
            return Ok(ScopeEntry {
                qualifier,
                occ: None,
                nullable: false,
            });
        }
        let mut needed = BTreeSet::new();
        if target {
            // UPDATE/DELETE find their rows again by the shard key.
            needed.insert(self.lookups[lookup].1.as_ref().expect("distributed").1);
        }
        self.occs.push(Occ {
            lookup,
            alias,
            qualifier: qualifier.clone(),
            needed,
            target,
            conjuncts: Vec::new(),
            insert: None,
        });
        Ok(ScopeEntry {
            qualifier,
            occ: Some(self.occs.len() - 1),
            nullable: false,
        })
    }

    fn factor<'s>(
        &mut self,
        f: &'s TableFactor,
        scope: &mut Vec<ScopeEntry>,
        info: &mut JoinInfo<'s>,
    ) -> Result<Vec<usize>, ExplainError> {
        let start = scope.len();
        match f {
            TableFactor::Table { name, alias, .. } => {
                let e = self.table_ref(name, alias.as_ref().map(|a| &a.name), false)?;
                scope.push(e);
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                self.join_tree(table_with_joins, scope, info)?;
                if let Some(a) = alias {
                    // The nested entries are reachable only through the alias.
                    for e in &mut scope[start..] {
                        e.qualifier = format!("{}\u{0}{}", norm(&a.name), e.qualifier);
                    }
                }
            }
            other => {
                let qualifier = match other {
                    TableFactor::Derived { alias, .. }
                    | TableFactor::TableFunction { alias, .. }
                    | TableFactor::Function { alias, .. }
                    | TableFactor::UNNEST { alias, .. } => alias.as_ref().map(|a| norm(&a.name)),
                    _ => None,
                };
                scope.push(ScopeEntry {
                    qualifier: qualifier.unwrap_or_default(),
                    occ: None,
                    nullable: false,
                });
            }
        }
        Ok((start..scope.len()).collect())
    }

    fn join_tree<'s>(
        &mut self,
        twj: &'s TableWithJoins,
        scope: &mut Vec<ScopeEntry>,
        info: &mut JoinInfo<'s>,
    ) -> Result<(), ExplainError> {
        let mut left = self.factor(&twj.relation, scope, info)?;
        for join in &twj.joins {
            let right = self.factor(&join.relation, scope, info)?;
            let (constraint, left_nullable, right_nullable) = match &join.join_operator {
                JoinOperator::Join(c) | JoinOperator::Inner(c) | JoinOperator::CrossJoin(c) => {
                    (Some(c), false, false)
                }
                JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (Some(c), false, true),
                JoinOperator::Right(c) | JoinOperator::RightOuter(c) => (Some(c), true, false),
                JoinOperator::FullOuter(c) => (Some(c), true, true),
                _ => (None, true, true),
            };
            let outer = left_nullable || right_nullable;
            if outer {
                info.outer.push(OuterJoin {
                    left: left.clone(),
                    right: right.clone(),
                    left_nullable,
                    right_nullable,
                });
            }
            match constraint {
                Some(JoinConstraint::On(e)) => {
                    let src = if outer {
                        QualSource::OuterOn(info.outer.len() - 1)
                    } else {
                        QualSource::InnerOn
                    };
                    info.quals.push((e, src));
                }
                Some(JoinConstraint::Using(cols)) => {
                    for c in cols {
                        let Some(col) = name_parts(c).pop() else {
                            continue;
                        };
                        // The USING column of each side, when one table has it.
                        let side = |a: &Self, ids: &[usize]| -> Option<(usize, usize)> {
                            let hits: Vec<(usize, usize)> = ids
                                .iter()
                                .filter_map(|&i| scope[i].occ)
                                .filter_map(|o| {
                                    a.shape(o)
                                        .0
                                        .iter()
                                        .position(|(n, _)| *n == col)
                                        .map(|c| (o, c))
                                })
                                .collect();
                            (hits.len() == 1).then(|| hits[0])
                        };
                        let l = side(self, &left);
                        let r = side(self, &right);
                        for (o, c) in l.iter().chain(r.iter()) {
                            self.occs[*o].needed.insert(*c);
                        }
                        if let (Some(l), Some(r), false, false) =
                            (l, r, left_nullable, right_nullable)
                        {
                            info.using.push((
                                ColRef { occ: l.0, col: l.1 },
                                ColRef { occ: r.0, col: r.1 },
                            ));
                        }
                    }
                }
                _ => {}
            }
            left.extend(right);
        }
        Ok(())
    }

    fn select(&mut self, select: &Select) {
        if self.error.is_some() {
            return;
        }
        let mut scope = Vec::new();
        let mut info = JoinInfo::default();
        for twj in &select.from {
            if let Err(e) = self.join_tree(twj, &mut scope, &mut info) {
                self.error = Some(e);
                return;
            }
        }
        for item in &select.projection {
            match item {
                SelectItem::Wildcard(_) => {
                    for e in &scope {
                        if let Some(o) = e.occ {
                            self.all_columns(o);
                        }
                    }
                }
                SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(n),
                    _,
                ) => {
                    if let Some(q) = name_parts(n).pop() {
                        for e in &scope {
                            if let (Some(o), true) = (e.occ, e.qualifier == q) {
                                self.all_columns(o);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if let Some(w) = &select.selection {
            info.quals.push((w, QualSource::Where));
        }
        self.distribute(&scope, &info);
    }

    fn all_columns(&mut self, occ: usize) {
        let n = self.shape(occ).0.len();
        self.occs[occ].needed.extend(0..n);
    }

    fn update(&mut self, u: &ast::Update) -> Result<(), ExplainError> {
        let TableFactor::Table { name, alias, .. } = &u.table.relation else {
            return Err(ExplainError::Unsupported(
                "UPDATE of something other than a table".into(),
            ));
        };
        let mut scope = vec![self.table_ref(name, alias.as_ref().map(|a| &a.name), true)?];
        let mut info = JoinInfo::default();
        if !u.table.joins.is_empty() {
            return Err(ExplainError::Unsupported("UPDATE with JOIN".into()));
        }
        if let Some(UpdateTableFromKind::AfterSet(from) | UpdateTableFromKind::BeforeSet(from)) =
            &u.from
        {
            for twj in from {
                self.join_tree(twj, &mut scope, &mut info)?;
            }
        }
        // Assigned columns are overwritten, not read: their targets are
        // not expressions, so mark_columns does not count them.
        if let Some(w) = &u.selection {
            info.quals.push((w, QualSource::Where));
        }
        self.distribute(&scope, &info);
        Ok(())
    }

    fn delete(&mut self, d: &ast::Delete) -> Result<(), ExplainError> {
        let from = match &d.from {
            FromTable::WithFromKeyword(f) | FromTable::WithoutKeyword(f) => f,
        };
        let Some(first) = from.first() else {
            return Err(ExplainError::Unsupported("DELETE without a table".into()));
        };
        if from.len() > 1 || !first.joins.is_empty() {
            return Err(ExplainError::Unsupported(
                "DELETE from more than one table".into(),
            ));
        }
        let TableFactor::Table { name, alias, .. } = &first.relation else {
            return Err(ExplainError::Unsupported(
                "DELETE from something other than a table".into(),
            ));
        };
        let mut scope = vec![self.table_ref(name, alias.as_ref().map(|a| &a.name), true)?];
        let mut info = JoinInfo::default();
        for twj in d.using.iter().flatten() {
            self.join_tree(twj, &mut scope, &mut info)?;
        }
        if let Some(w) = &d.selection {
            info.quals.push((w, QualSource::Where));
        }
        self.distribute(&scope, &info);
        Ok(())
    }

    fn insert(&mut self, i: &ast::Insert) -> Result<(), ExplainError> {
        let TableObject::TableName(name) = &i.table else {
            return Err(ExplainError::Unsupported(
                "INSERT into a table function".into(),
            ));
        };
        let entry = self.table_ref(name, None, true)?;
        let occ = entry.occ.expect("target is distributed");
        let (columns, _) = self.shape(occ).clone();
        let cols: Vec<usize> = if i.columns.is_empty() {
            (0..columns.len()).collect()
        } else {
            let mut v = Vec::new();
            for c in &i.columns {
                let n = name_parts(c).pop().unwrap_or_default();
                match columns.iter().position(|(cn, _)| *cn == n) {
                    Some(p) => v.push(p),
                    None => {
                        return Err(ExplainError::Unsupported(format!(
                            "INSERT names column \"{n}\", which the table does not have"
                        )))
                    }
                }
            }
            v
        };
        let values = match i.source.as_deref().map(|q| q.body.as_ref()) {
            Some(SetExpr::Values(v)) => v,
            _ => {
                return Err(ExplainError::Unsupported(
                    "INSERT other than INSERT … VALUES".into(),
                ))
            }
        };
        let mut rows = Vec::new();
        for row in &values.rows {
            if row.len() != cols.len() {
                return Err(ExplainError::Unsupported(format!(
                    "INSERT has {} columns but a VALUES row has {} values",
                    cols.len(),
                    row.len()
                )));
            }
            rows.push(
                row.iter()
                    .zip(&cols)
                    .map(|(e, &c)| literal(e, columns[c].1).ok())
                    .collect(),
            );
        }
        self.occs[occ].needed = cols.iter().copied().collect();
        self.occs[occ].insert = Some((cols, rows));
        Ok(())
    }

    /// Resolve a column reference in `scope`.
    fn column(&self, scope: &[ScopeEntry], expr: &Expr) -> Option<ColRef> {
        let (qualifier, col) = match expr {
            Expr::Identifier(i) => (None, norm(i)),
            Expr::CompoundIdentifier(parts) if parts.len() >= 2 => (
                Some(norm(&parts[parts.len() - 2])),
                norm(&parts[parts.len() - 1]),
            ),
            Expr::Nested(e) => return self.column(scope, e),
            // `varchar_col::text` is the column itself (a RelabelType).
            Expr::Cast {
                expr, data_type, ..
            } if cast_family(data_type) == Some(4) => {
                return self
                    .column(scope, expr)
                    .filter(|c| is_text(self.col_type(*c)));
            }
            _ => return None,
        };
        let mut hits = scope
            .iter()
            .filter(|e| qualifier.as_ref().is_none_or(|q| *q == e.qualifier))
            .filter(|e| {
                // A qualified name matches exactly one entry; an unqualified
                // one, the entries that have such a column.
                qualifier.is_some()
                    || e.occ
                        .is_some_and(|o| self.shape(o).0.iter().any(|(n, _)| *n == col))
            });
        let first = hits.next()?;
        if hits.next().is_some() {
            return None; // ambiguous: Postgres refuses it
        }
        let occ = first.occ?;
        let c = self.shape(occ).0.iter().position(|(n, _)| *n == col)?;
        Some(ColRef { occ, col: c })
    }

    /// Lower the qualification clauses of one scope and give each table its
    /// pushable conjuncts.
    fn distribute(&mut self, scope: &[ScopeEntry], info: &JoinInfo<'_>) {
        // Outer joins that WHERE makes inner (Postgres' reduce_outer_joins):
        // a WHERE qual that is false or NULL when a table of the
        // null-extended side is NULL removes the null-extended rows.
        let mut forced = BTreeSet::new();
        for (e, src) in &info.quals {
            if matches!(src, QualSource::Where) {
                forced.extend(self.strict_entries(scope, e));
            }
        }
        let effective: Vec<(bool, bool)> = info
            .outer
            .iter()
            .map(|oj| {
                (
                    oj.left_nullable && !oj.left.iter().any(|i| forced.contains(i)),
                    oj.right_nullable && !oj.right.iter().any(|i| forced.contains(i)),
                )
            })
            .collect();
        let mut scope = scope.to_vec();
        for (oj, &(ln, rn)) in info.outer.iter().zip(&effective) {
            for &i in &oj.left {
                scope[i].nullable |= ln;
            }
            for &i in &oj.right {
                scope[i].nullable |= rn;
            }
        }
        let scope = &scope[..];
        // Where each qual may be pushed: None like WHERE (any table it is
        // about), Some(entries) only into those entries.
        let targets = |src: &QualSource| -> Option<Vec<usize>> {
            match src {
                QualSource::Where | QualSource::InnerOn => None,
                QualSource::OuterOn(k) => match effective[*k] {
                    (false, false) => None,
                    (false, true) => Some(info.outer[*k].right.clone()),
                    (true, false) => Some(info.outer[*k].left.clone()),
                    (true, true) => Some(vec![]),
                },
            }
        };
        let quals = &info.quals;
        let mut pushed: Vec<(usize, Pred)> = Vec::new();
        let mut equalities: Vec<(ColRef, ColRef)> = info.using.clone();
        // Per top-level conjunct of the text: whether it went to the
        // shards entirely (then its columns need not be fetched), and the
        // column equalities it consists of.
        let mut sources: Vec<(&Expr, bool, Vec<ColRef>)> = Vec::new();
        for (expr, src) in quals {
            let mut exprs = Vec::new();
            split_and(expr, &mut exprs);
            for e in exprs {
                let mut conjuncts = Vec::new();
                let mut raw = Vec::new();
                flatten_and(self.tree(scope, e), &mut raw);
                for t in raw {
                    process_duplicate_ors(t, &mut conjuncts);
                }
                let mut all_pushed = true;
                let mut eqs = Vec::new();
                for t in conjuncts {
                    // A constant conjunct: `true` restricts nothing; `false`
                    // leaves no row (Postgres skips the scans).
                    if let Tree::Leaf(Leaf::Const(b)) = t {
                        if !b {
                            let entries =
                                targets(src).unwrap_or_else(|| (0..scope.len()).collect());
                            for i in entries {
                                if let Some(o) = scope[i].occ {
                                    pushed.push((o, Pred::Bool(false)));
                                }
                            }
                        }
                        continue;
                    }
                    if let Tree::Leaf(Leaf::ColEq(a, b)) = &t {
                        let inner = targets(src).is_none()
                            && !nullable(scope, a.occ)
                            && !nullable(scope, b.occ);
                        if inner {
                            equalities.push((*a, *b));
                            eqs.push(*a);
                        } else {
                            all_pushed = false;
                        }
                        continue;
                    }
                    let Some((occ, pred)) = combine(t) else {
                        all_pushed = false;
                        continue;
                    };
                    let ok = match targets(src) {
                        None => !nullable(scope, occ) || strict(&pred),
                        Some(entries) => entries.iter().any(|&i| scope[i].occ == Some(occ)),
                    };
                    if ok {
                        pushed.push((occ, pred));
                    } else {
                        all_pushed = false;
                    }
                }
                sources.push((e, all_pushed, eqs));
            }
        }
        // Equivalence classes: `a.k = b.k AND a.k = 5` gives `b.k = 5`,
        // and Postgres then drops the join clause itself.
        let (derived, constant) = derive_equalities(self, &equalities, &pushed);
        for (e, all_pushed, eqs) in sources {
            if all_pushed && eqs.iter().all(|c| constant.contains(c)) {
                self.consumed.extend(column_refs(e));
            }
        }
        for (occ, pred) in pushed.into_iter().chain(derived) {
            let conj = &mut self.occs[occ].conjuncts;
            if !conj.contains(&pred) {
                conj.push(pred);
            }
        }
    }

    /// The scope entries a qual forces non-NULL (Postgres'
    /// `find_nonnullable_rels`, for the operators explain knows strict).
    fn strict_entries(&self, scope: &[ScopeEntry], expr: &Expr) -> BTreeSet<usize> {
        let mut out = BTreeSet::new();
        match expr {
            Expr::Nested(e) => return self.strict_entries(scope, e),
            Expr::BinaryOp {
                op: op @ (BinaryOperator::And | BinaryOperator::Or),
                ..
            } => {
                let mut operands = Vec::new();
                chain(expr, op, &mut operands);
                let mut sets = operands.into_iter().map(|e| self.strict_entries(scope, e));
                if *op == BinaryOperator::And {
                    sets.for_each(|s| out.extend(s));
                } else if let Some(first) = sets.next() {
                    out = sets.fold(first, |acc, s| acc.intersection(&s).copied().collect());
                }
            }
            Expr::BinaryOp { left, right, .. } => {
                self.strict_vars(scope, left, 0, &mut out);
                self.strict_vars(scope, right, 0, &mut out);
            }
            Expr::Like { expr, pattern, .. } | Expr::ILike { expr, pattern, .. } => {
                self.strict_vars(scope, expr, 0, &mut out);
                self.strict_vars(scope, pattern, 0, &mut out);
            }
            Expr::IsNotNull(e)
            | Expr::In { expr: e, .. }
            | Expr::Between { expr: e, .. }
            | Expr::AnyOp { left: e, .. }
            | Expr::AllOp { left: e, .. } => self.strict_vars(scope, e, 0, &mut out),
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => {
                self.strict_vars(scope, expr, 0, &mut out)
            }
            _ => {}
        }
        out
    }

    /// Entries whose columns appear in `e` under strict operators only.
    fn strict_vars(&self, scope: &[ScopeEntry], e: &Expr, depth: usize, out: &mut BTreeSet<usize>) {
        if depth > 64 {
            return;
        }
        match e {
            Expr::Identifier(i) => {
                let col = norm(i);
                let mut hits = scope.iter().enumerate().filter(|(_, s)| {
                    s.occ
                        .is_some_and(|o| self.shape(o).0.iter().any(|(n, _)| *n == col))
                });
                if let (Some((i, _)), None) = (hits.next(), hits.next()) {
                    out.insert(i);
                }
            }
            Expr::CompoundIdentifier(p) if p.len() >= 2 => {
                let q = norm(&p[p.len() - 2]);
                let mut hits = scope.iter().enumerate().filter(|(_, s)| s.qualifier == q);
                if let (Some((i, _)), None) = (hits.next(), hits.next()) {
                    out.insert(i);
                }
            }
            Expr::Nested(x)
            | Expr::Cast { expr: x, .. }
            | Expr::Collate { expr: x, .. }
            | Expr::UnaryOp {
                op: UnaryOperator::Minus | UnaryOperator::Plus,
                expr: x,
            } => self.strict_vars(scope, x, depth + 1, out),
            Expr::BinaryOp { left, op, right }
                if !matches!(op, BinaryOperator::And | BinaryOperator::Or) =>
            {
                self.strict_vars(scope, left, depth + 1, out);
                self.strict_vars(scope, right, depth + 1, out);
            }
            _ => {}
        }
    }

    fn tree(&self, scope: &[ScopeEntry], expr: &Expr) -> Tree {
        match expr {
            Expr::Nested(e) => self.tree(scope, e),
            // Chains (`a OR b OR …`, thousands long in generated SQL) are
            // flattened without recursing along them.
            Expr::BinaryOp {
                op: op @ (BinaryOperator::And | BinaryOperator::Or),
                ..
            } => {
                let mut operands = Vec::new();
                chain(expr, op, &mut operands);
                let children = operands.into_iter().map(|e| self.tree(scope, e)).collect();
                if *op == BinaryOperator::And {
                    Tree::And(children)
                } else {
                    Tree::Or(children)
                }
            }
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr,
            } => negate(self.tree(scope, expr)),
            Expr::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let ge = self.comparison(scope, expr, CmpOp::Ge, low);
                let le = self.comparison(scope, expr, CmpOp::Le, high);
                let t = Tree::And(vec![Tree::Leaf(ge), Tree::Leaf(le)]);
                if *negated {
                    negate(t)
                } else {
                    t
                }
            }
            other => Tree::Leaf(self.leaf(scope, other)),
        }
    }

    fn leaf(&self, scope: &[ScopeEntry], expr: &Expr) -> Leaf {
        let pred = |c: ColRef, p: Pred| Leaf::Pred(c.occ, p);
        match expr {
            Expr::BinaryOp { left, op, right } => {
                let op = match op {
                    BinaryOperator::Eq => CmpOp::Eq,
                    BinaryOperator::NotEq => CmpOp::Ne,
                    BinaryOperator::Lt => CmpOp::Lt,
                    BinaryOperator::LtEq => CmpOp::Le,
                    BinaryOperator::Gt => CmpOp::Gt,
                    BinaryOperator::GtEq => CmpOp::Ge,
                    _ => return Leaf::Opaque,
                };
                if let (Some(a), Some(b)) = (self.column(scope, left), self.column(scope, right)) {
                    if op == CmpOp::Eq
                        && a != b
                        && same_key_family(self.col_type(a), self.col_type(b))
                    {
                        return Leaf::ColEq(a, b);
                    }
                    return Leaf::Opaque;
                }
                match self.comparison(scope, left, op, right) {
                    Leaf::Opaque => self.comparison(scope, right, op.commuted(), left),
                    l => l,
                }
            }
            // IS [NOT] NULL is exact for every type.
            Expr::IsNull(e) | Expr::IsNotNull(e) => match self.column(scope, e) {
                Some(c) => pred(
                    c,
                    Pred::IsNull {
                        column: c.col,
                        negated: matches!(expr, Expr::IsNotNull(_)),
                    },
                ),
                _ => Leaf::Opaque,
            },
            Expr::In {
                expr: e,
                target: ast::InTarget::List(list),
                negated,
                ..
            } => self.in_list(scope, e, list, *negated, true),
            Expr::AnyOp {
                left,
                compare_op: BinaryOperator::Eq,
                right,
                ..
            } => self.any(scope, left, right, false),
            Expr::AllOp {
                left,
                compare_op: BinaryOperator::NotEq,
                right,
            } => self.any(scope, left, right, true),
            Expr::Like {
                negated,
                any: false,
                expr: e,
                pattern,
                escape_char,
            } => {
                let escape_ok = match escape_char.as_deref() {
                    None => true,
                    Some(Expr::Value(v)) => {
                        matches!(&v.value, ast::Value::SingleQuotedString(s) if s == "\\")
                    }
                    Some(_) => false,
                };
                let (Some(c), Some(p), true) =
                    (self.column(scope, e), string_lit(pattern), escape_ok)
                else {
                    return Leaf::Opaque;
                };
                match (self.col_type(c), like_to_glob(&p)) {
                    (ColumnType::Text | ColumnType::Varchar, Some(glob)) => pred(
                        c,
                        Pred::Glob {
                            column: c.col,
                            pattern: glob,
                            negated: *negated,
                        },
                    ),
                    _ => Leaf::Opaque,
                }
            }
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => match self.column(scope, expr) {
                Some(c) if self.col_type(c) == ColumnType::Bool => pred(c, bool_column(c.col)),
                _ => Leaf::Opaque,
            },
            Expr::Value(v) => match v.value {
                ast::Value::Boolean(b) => Leaf::Const(b),
                _ => Leaf::Opaque,
            },
            _ => Leaf::Opaque,
        }
    }

    /// `col op value`, with an optional COLLATE on either side.
    fn comparison(&self, scope: &[ScopeEntry], col: &Expr, op: CmpOp, value: &Expr) -> Leaf {
        let (col, c1) = peel_collate(col);
        let (value, c2) = peel_collate(value);
        let collation = match (c1, c2) {
            (Some(a), Some(b)) if a != b => return Leaf::Opaque,
            (a, b) => a.or(b),
        };
        let Some(c) = self.column(scope, col) else {
            return Leaf::Opaque;
        };
        let ty = self.col_type(c);
        let c_collation = match collation.as_deref() {
            Some("C" | "POSIX") => true,
            None | Some("default") => self.default_c,
            Some(_) => false,
        };
        let ordered = !matches!(op, CmpOp::Eq | CmpOp::Ne);
        if !pushable(ty) || (ordered && is_text(ty) && !c_collation) {
            return Leaf::Opaque;
        }
        match literal(value, ty) {
            // Postgres simplifies `b = true` to `b` and `b = false` to
            // `NOT b`; the FDW then sees the bare column.
            Ok(Operand::Const(Some(TypedValue::Bool(b))))
                if matches!(op, CmpOp::Eq | CmpOp::Ne) =>
            {
                let bare = bool_column(c.col);
                Leaf::Pred(
                    c.occ,
                    if b == (op == CmpOp::Eq) {
                        bare
                    } else {
                        Pred::Not(Box::new(bare))
                    },
                )
            }
            Ok(v) => Leaf::Pred(
                c.occ,
                Pred::Cmp {
                    column: c.col,
                    op,
                    value: v,
                },
            ),
            Err(()) => Leaf::Opaque,
        }
    }

    fn in_list(
        &self,
        scope: &[ScopeEntry],
        e: &Expr,
        list: &[Expr],
        negated: bool,
        single_is_eq: bool,
    ) -> Leaf {
        let Some(c) = self.column(scope, e) else {
            return Leaf::Opaque;
        };
        let ty = self.col_type(c);
        if !pushable(ty) {
            return Leaf::Opaque;
        }
        let Ok(items) = list
            .iter()
            .map(|x| literal(x, ty))
            .collect::<Result<Vec<_>, ()>>()
        else {
            return Leaf::Opaque;
        };
        // Postgres turns `x IN (v)` into `x = v` (and NOT IN into `<>`).
        if let (true, [v]) = (single_is_eq, &items[..]) {
            return Leaf::Pred(
                c.occ,
                Pred::Cmp {
                    column: c.col,
                    op: if negated { CmpOp::Ne } else { CmpOp::Eq },
                    value: v.clone(),
                },
            );
        }
        let p = Pred::In {
            column: c.col,
            list: ListOperand::Items(items),
        };
        Leaf::Pred(c.occ, if negated { Pred::Not(Box::new(p)) } else { p })
    }

    /// `col = ANY(ARRAY[…] | $n)`, or `col <> ALL(…)` when `negated`.
    fn any(&self, scope: &[ScopeEntry], left: &Expr, right: &Expr, negated: bool) -> Leaf {
        let right = match right {
            Expr::Nested(e) => e.as_ref(),
            e => e,
        };
        let leaf = match right {
            Expr::Array(arr) => self.in_list(scope, left, &arr.elem, false, false),
            Expr::Value(v) => match (&v.value, self.column(scope, left)) {
                (ast::Value::Placeholder(p), Some(c))
                    if pushable(self.col_type(c)) && family(self.col_type(c)) != 2 =>
                {
                    match placeholder(p) {
                        Some(i) => Leaf::Pred(
                            c.occ,
                            Pred::In {
                                column: c.col,
                                list: ListOperand::Param(i),
                            },
                        ),
                        None => Leaf::Opaque,
                    }
                }
                (ast::Value::SingleQuotedString(text), Some(c)) => self.array_literal(c, text),
                _ => Leaf::Opaque,
            },
            // `ARRAY[a, b]::t[]` is `ARRAY[a::t, b::t]` (Postgres folds it
            // into one array constant before the FDW sees it).
            Expr::Cast {
                kind,
                expr,
                data_type: ast::DataType::Array(elem),
                format,
            } if matches!(expr.as_ref(), Expr::Array(_)) => {
                let (Expr::Array(arr), Some(t)) = (expr.as_ref(), array_elem_type(elem)) else {
                    return Leaf::Opaque;
                };
                let items: Vec<Expr> = arr
                    .elem
                    .iter()
                    .map(|e| Expr::Cast {
                        kind: kind.clone(),
                        expr: Box::new(e.clone()),
                        data_type: t.clone(),
                        format: format.clone(),
                    })
                    .collect();
                self.in_list(scope, left, &items, false, false)
            }
            Expr::Cast {
                expr,
                data_type: ast::DataType::Array(_),
                ..
            } => match (string_lit(expr), self.column(scope, left)) {
                (Some(text), Some(c)) => self.array_literal(c, &text),
                _ => Leaf::Opaque,
            },
            _ => Leaf::Opaque,
        };
        match leaf {
            Leaf::Pred(o, p) if negated => Leaf::Pred(o, Pred::Not(Box::new(p))),
            l => l,
        }
    }

    /// `col = ANY('{1,2,NULL}')`: a one-dimensional array literal.
    fn array_literal(&self, c: ColRef, text: &str) -> Leaf {
        let ty = self.col_type(c);
        if !pushable(ty) {
            return Leaf::Opaque;
        }
        match parse_array(text).and_then(|items| {
            items
                .into_iter()
                .map(|i| match i {
                    None => Some(Operand::Const(None)),
                    Some(s) => untyped(&s, ty).map(|v| Operand::Const(Some(v))),
                })
                .collect::<Option<Vec<_>>>()
        }) {
            Some(items) => Leaf::Pred(
                c.occ,
                Pred::In {
                    column: c.col,
                    list: ListOperand::Items(items),
                },
            ),
            None => Leaf::Opaque,
        }
    }

    /// Mark the columns each occurrence must fetch: every reference in the
    /// statement that may name it (a superset where a name is ambiguous
    /// across scopes).
    fn mark_columns(&mut self, stmt: &Statement) {
        let mut counts: HashMap<(usize, usize), i64> = HashMap::new();
        for (q, col) in column_refs(stmt) {
            self.count_ref(&q, &col, 1, &mut counts);
        }
        // Columns read only by conjuncts the shards evaluate are not
        // fetched (as the FDW does: reltarget + local quals).
        for (q, col) in std::mem::take(&mut self.consumed) {
            self.count_ref(&q, &col, -1, &mut counts);
        }
        for ((o, c), n) in counts {
            if n > 0 {
                self.occs[o].needed.insert(c);
            }
        }
    }

    fn count_ref(
        &mut self,
        q: &Option<String>,
        col: &str,
        delta: i64,
        counts: &mut HashMap<(usize, usize), i64>,
    ) {
        for o in 0..self.occs.len() {
            if self.occs[o].insert.is_some() {
                continue;
            }
            let pos = self.shape(o).0.iter().position(|(n, _)| n == col);
            match (q, pos) {
                (None, Some(p)) => *counts.entry((o, p)).or_default() += delta,
                // A bare table name: the whole row.
                (None, None) if self.occs[o].qualifier == col && delta > 0 => self.all_columns(o),
                (Some(q), Some(p)) if *q == self.occs[o].qualifier => {
                    *counts.entry((o, p)).or_default() += delta
                }
                _ => {}
            }
        }
    }
}

/// Every column reference (qualifier, column) in `node`.
fn column_refs<V: Visit>(node: &V) -> Vec<(Option<String>, String)> {
    let mut refs = Vec::new();
    let _ = ast::visit_expressions(node, |e: &Expr| {
        match e {
            Expr::Identifier(i) => refs.push((None, norm(i))),
            Expr::CompoundIdentifier(p) if p.len() >= 2 => {
                refs.push((Some(norm(&p[p.len() - 2])), norm(&p[p.len() - 1])))
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    refs
}

/// The elements of a one-dimensional Postgres array literal (`{a,"b c",NULL}`);
/// None for anything more complex (nested arrays, dimensions).
fn parse_array(text: &str) -> Option<Vec<Option<String>>> {
    let inner = text.trim().strip_prefix('{')?.strip_suffix('}')?;
    let mut items = Vec::new();
    if inner.trim().is_empty() {
        return Some(items);
    }
    let mut chars = inner.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.peek() == Some(&'"') {
            chars.next();
            let mut s = String::new();
            loop {
                match chars.next()? {
                    '\\' => s.push(chars.next()?),
                    '"' => break,
                    c => s.push(c),
                }
            }
            items.push(Some(s));
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
        } else {
            let mut s = String::new();
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                if matches!(c, '{' | '}' | '"' | '\\') {
                    return None;
                }
                s.push(c);
                chars.next();
            }
            let s = s.trim().to_string();
            if s.is_empty() {
                return None;
            }
            items.push(if s.eq_ignore_ascii_case("null") {
                None
            } else {
                Some(s)
            });
        }
        match chars.next() {
            None => return Some(items),
            Some(',') => continue,
            Some(_) => return None,
        }
    }
}

/// The top-level conjuncts of a qualification as written.
fn split_and<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    chain(e, &BinaryOperator::And, out)
}

/// The operands of a chain of `op` (through parentheses), in order,
/// iteratively: left-deep chains are as deep as they are long.
fn chain<'e>(e: &'e Expr, op: &BinaryOperator, out: &mut Vec<&'e Expr>) {
    let mut stack = vec![e];
    while let Some(x) = stack.pop() {
        match x {
            Expr::BinaryOp { left, op: o, right } if o == op => {
                stack.push(right);
                stack.push(left);
            }
            Expr::Nested(inner) if matches!(inner.as_ref(), Expr::BinaryOp { op: o, .. } if o == op) => {
                stack.push(inner)
            }
            other => out.push(other),
        }
    }
}

fn nullable(scope: &[ScopeEntry], occ: usize) -> bool {
    scope.iter().any(|e| e.occ == Some(occ) && e.nullable)
}

/// `(A AND B) OR (A AND C)` is `A AND (B OR C)`: Postgres'
/// canonicalize_qual pulls the clauses common to every OR branch out, so
/// they restrict (and route) on their own. Conjuncts go to `out`.
fn process_duplicate_ors(t: Tree, out: &mut Vec<Tree>) {
    let Tree::Or(branches) = t else {
        out.push(t);
        return;
    };
    let branches: Vec<Vec<Tree>> = branches
        .into_iter()
        .map(|b| {
            let mut v = Vec::new();
            flatten_and(b, &mut v);
            v
        })
        .collect();
    let same = |a: &Tree, b: &Tree| match (a, b) {
        (Tree::Leaf(Leaf::Pred(o1, p1)), Tree::Leaf(Leaf::Pred(o2, p2))) => o1 == o2 && p1 == p2,
        _ => false,
    };
    let common: Vec<Tree> = match branches.first() {
        Some(first) => first
            .iter()
            .filter(|c| branches.iter().all(|b| b.iter().any(|x| same(c, x))))
            .cloned()
            .collect(),
        None => Vec::new(),
    };
    if common.is_empty() {
        out.push(Tree::Or(
            branches
                .into_iter()
                .map(|mut b| {
                    if b.len() == 1 {
                        b.pop().expect("one")
                    } else {
                        Tree::And(b)
                    }
                })
                .collect(),
        ));
        return;
    }
    let rest: Vec<Vec<Tree>> = branches
        .into_iter()
        .map(|b| {
            b.into_iter()
                .filter(|x| !common.iter().any(|c| same(c, x)))
                .collect()
        })
        .collect();
    // A branch that was only common clauses makes the rest of the OR true.
    let or_true = rest.iter().any(|b| b.is_empty());
    out.extend(common);
    if !or_true {
        out.push(Tree::Or(
            rest.into_iter()
                .map(|mut b| {
                    if b.len() == 1 {
                        b.pop().expect("one")
                    } else {
                        Tree::And(b)
                    }
                })
                .collect(),
        ));
    }
}

fn flatten_and(t: Tree, out: &mut Vec<Tree>) {
    match t {
        Tree::And(ts) => ts.into_iter().for_each(|t| flatten_and(t, out)),
        other => out.push(other),
    }
}

/// One conjunct as a single-table predicate, if every part of it lowered
/// and it is about one table.
fn combine(t: Tree) -> Option<(usize, Pred)> {
    match t {
        Tree::Leaf(Leaf::Pred(o, p)) => Some((o, p)),
        Tree::Leaf(_) => None,
        Tree::And(ts) | Tree::Or(ts) if ts.is_empty() => None,
        t => {
            let is_and = matches!(t, Tree::And(_));
            let (Tree::And(ts) | Tree::Or(ts)) = t else {
                return None;
            };
            let mut occ = None;
            let mut preds = Vec::new();
            for c in ts {
                let (o, p) = combine(c)?;
                if occ.is_some_and(|x| x != o) {
                    return None;
                }
                occ = Some(o);
                // Flatten nested ORs (Postgres does too).
                match (is_and, p) {
                    (false, Pred::Or(inner)) => preds.extend(inner),
                    (true, Pred::And(inner)) => preds.extend(inner),
                    (_, p) => preds.push(p),
                }
            }
            Some((
                occ?,
                if is_and {
                    Pred::And(preds)
                } else {
                    Pred::Or(preds)
                },
            ))
        }
    }
}

/// A bare boolean column as the FDW lowers it: `col = true`.
fn bool_column(column: usize) -> Pred {
    Pred::Cmp {
        column,
        op: CmpOp::Eq,
        value: Operand::Const(Some(TypedValue::Bool(true))),
    }
}

/// NOT pushed down as Postgres' `negate_clause` does (exact in three-valued
/// logic).
fn negate(t: Tree) -> Tree {
    match t {
        Tree::And(ts) => Tree::Or(ts.into_iter().map(negate).collect()),
        Tree::Or(ts) => Tree::And(ts.into_iter().map(negate).collect()),
        Tree::Leaf(Leaf::Pred(o, p)) => Tree::Leaf(Leaf::Pred(o, negate_pred(p))),
        Tree::Leaf(Leaf::Const(b)) => Tree::Leaf(Leaf::Const(!b)),
        Tree::Leaf(_) => Tree::Leaf(Leaf::Opaque),
    }
}

fn negate_pred(p: Pred) -> Pred {
    match p {
        // NOT of a bare boolean column stays NOT.
        p @ Pred::Cmp {
            op: CmpOp::Eq,
            value: Operand::Const(Some(TypedValue::Bool(true))),
            ..
        } => Pred::Not(Box::new(p)),
        Pred::Bool(b) => Pred::Bool(!b),
        Pred::Cmp { column, op, value } => Pred::Cmp {
            column,
            op: match op {
                CmpOp::Eq => CmpOp::Ne,
                CmpOp::Ne => CmpOp::Eq,
                CmpOp::Lt => CmpOp::Ge,
                CmpOp::Le => CmpOp::Gt,
                CmpOp::Gt => CmpOp::Le,
                CmpOp::Ge => CmpOp::Lt,
            },
            value,
        },
        Pred::IsNull { column, negated } => Pred::IsNull {
            column,
            negated: !negated,
        },
        Pred::Glob {
            column,
            pattern,
            negated,
        } => Pred::Glob {
            column,
            pattern,
            negated: !negated,
        },
        Pred::And(ps) => Pred::Or(ps.into_iter().map(negate_pred).collect()),
        Pred::Or(ps) => Pred::And(ps.into_iter().map(negate_pred).collect()),
        Pred::Not(p) => *p,
        p @ Pred::In { .. } => Pred::Not(Box::new(p)),
    }
}

/// Whether the predicate is false or NULL when its column is NULL (so it
/// may be pushed below an outer join from WHERE).
fn strict(p: &Pred) -> bool {
    match p {
        Pred::Cmp { .. } | Pred::In { .. } | Pred::Glob { .. } => true,
        Pred::IsNull { negated, .. } => *negated,
        Pred::Bool(_) => false,
        Pred::And(ps) => ps.iter().any(strict),
        Pred::Or(ps) => !ps.is_empty() && ps.iter().all(strict),
        Pred::Not(p) => strict(p),
    }
}

fn derive_equalities(
    a: &Analyzer<'_>,
    equalities: &[(ColRef, ColRef)],
    pushed: &[(usize, Pred)],
) -> (Vec<(usize, Pred)>, BTreeSet<ColRef>) {
    if equalities.is_empty() {
        return (Vec::new(), BTreeSet::new());
    }
    // Union-find over the columns that appear in an equality.
    let mut parent: BTreeMap<ColRef, ColRef> = BTreeMap::new();
    fn find(parent: &mut BTreeMap<ColRef, ColRef>, c: ColRef) -> ColRef {
        let p = *parent.entry(c).or_insert(c);
        if p == c {
            return c;
        }
        let r = find(parent, p);
        parent.insert(c, r);
        r
    }
    for &(x, y) in equalities {
        let (rx, ry) = (find(&mut parent, x), find(&mut parent, y));
        if rx != ry {
            parent.insert(rx, ry);
        }
    }
    let members: Vec<ColRef> = parent.keys().copied().collect();
    let mut out = Vec::new();
    let mut constant = BTreeSet::new();
    for (occ, p) in pushed {
        let Pred::Cmp {
            column,
            op: CmpOp::Eq,
            value,
        } = p
        else {
            continue;
        };
        let me = ColRef {
            occ: *occ,
            col: *column,
        };
        if !parent.contains_key(&me) {
            continue;
        }
        let root = find(&mut parent, me);
        for &m in &members {
            if find(&mut parent, m) != root {
                continue;
            }
            constant.insert(m);
            if m == me {
                continue;
            }
            if let Some(v) = convert_operand(value, a.col_type(m)) {
                out.push((
                    m.occ,
                    Pred::Cmp {
                        column: m.col,
                        op: CmpOp::Eq,
                        value: v,
                    },
                ));
            }
        }
    }
    (out, constant)
}

impl PartialOrd for ColRef {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ColRef {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.occ, self.col).cmp(&(other.occ, other.col))
    }
}

/// A value of one key-family type as a value of another (None when it
/// does not fit: the FDW would not push it either).
fn convert_operand(v: &Operand, to: ColumnType) -> Option<Operand> {
    let Operand::Const(Some(tv)) = v else {
        return Some(v.clone());
    };
    let i = match tv {
        TypedValue::Int2(i) => i64::from(*i),
        TypedValue::Int4(i) => i64::from(*i),
        TypedValue::Int8(i) => *i,
        TypedValue::Text(_) | TypedValue::Uuid(_) => return Some(v.clone()),
        _ => return None,
    };
    int_value(i, to).map(|t| Operand::Const(Some(t)))
}

fn same_key_family(a: ColumnType, b: ColumnType) -> bool {
    use ColumnType::*;
    let fam = |t| match t {
        Int2 | Int4 | Int8 => 1,
        Text | Varchar => 2,
        Uuid => 3,
        _ => 0,
    };
    fam(a) != 0 && fam(a) == fam(b)
}

/// Types whose comparisons SQLite evaluates exactly as Postgres (text
/// ordering only under the C collation, checked by the caller).
fn pushable(ty: ColumnType) -> bool {
    use ColumnType::*;
    matches!(
        ty,
        Int2 | Int4 | Int8 | Float4 | Float8 | Bool | Text | Varchar | Bytea | Uuid
    )
}

fn is_text(ty: ColumnType) -> bool {
    matches!(ty, ColumnType::Text | ColumnType::Varchar)
}

fn peel_collate(e: &Expr) -> (&Expr, Option<String>) {
    match e {
        Expr::Collate { expr, collation } => {
            let name = name_parts(collation).pop().unwrap_or_default();
            (expr, Some(name))
        }
        Expr::Nested(inner) => {
            let (x, c) = peel_collate(inner);
            if c.is_some() {
                (x, c)
            } else {
                (e, None)
            }
        }
        _ => (e, None),
    }
}

fn placeholder(p: &str) -> Option<usize> {
    let n: usize = p.strip_prefix('$')?.parse().ok()?;
    n.checked_sub(1)
}

/// The element type of an array type (`bigint[]`, `ARRAY<bigint>`, …).
fn array_elem_type(elem: &ast::ArrayElemTypeDef) -> Option<&ast::DataType> {
    match elem {
        ast::ArrayElemTypeDef::SquareBracket(t, _)
        | ast::ArrayElemTypeDef::AngleBracket(t)
        | ast::ArrayElemTypeDef::Parenthesis(t)
        | ast::ArrayElemTypeDef::Qualified(t, _) => Some(t),
        ast::ArrayElemTypeDef::None | ast::ArrayElemTypeDef::ParenthesisNotNull(_) => None,
    }
}

fn string_lit(e: &Expr) -> Option<String> {
    match e {
        Expr::Nested(e) => string_lit(e),
        Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) | ast::Value::EscapedStringLiteral(s) => {
                Some(s.clone())
            }
            _ => None,
        },
        Expr::Cast {
            expr, data_type, ..
        } if matches!(
            data_type.to_string().to_lowercase().as_str(),
            "text" | "varchar" | "character varying"
        ) =>
        {
            string_lit(expr)
        }
        _ => None,
    }
}

fn int_value(i: i64, ty: ColumnType) -> Option<TypedValue> {
    Some(match ty {
        ColumnType::Int2 => TypedValue::Int2(i16::try_from(i).ok()?),
        ColumnType::Int4 => TypedValue::Int4(i32::try_from(i).ok()?),
        ColumnType::Int8 => TypedValue::Int8(i),
        _ => return None,
    })
}

/// The family a cast's target type belongs to (None: a cast explain does
/// not look through, e.g. `varchar(2)`, which truncates).
fn cast_family(dt: &ast::DataType) -> Option<u8> {
    cast_type(dt).map(family)
}

/// The type a cast produces, for the types explain reads literals of.
fn cast_type(dt: &ast::DataType) -> Option<ColumnType> {
    use ColumnType::*;
    Some(match dt.to_string().to_lowercase().as_str() {
        "smallint" | "int2" => Int2,
        "int" | "integer" | "int4" => Int4,
        "bigint" | "int8" => Int8,
        "real" | "float4" => Float4,
        "float8" | "double precision" => Float8,
        "bool" | "boolean" => Bool,
        "text" => Text,
        "varchar" | "character varying" => Varchar,
        "bytea" => Bytea,
        "uuid" => Uuid,
        _ => return None,
    })
}

fn family(ty: ColumnType) -> u8 {
    use ColumnType::*;
    match ty {
        Int2 | Int4 | Int8 => 1,
        Float4 | Float8 => 2,
        Bool => 3,
        Text | Varchar => 4,
        Bytea => 5,
        Uuid => 6,
        _ => 0,
    }
}

/// A constant or parameter compared with a column of type `ty`, typed as
/// Postgres would coerce it. Err: not a value explain can type exactly.
fn literal(e: &Expr, ty: ColumnType) -> Result<Operand, ()> {
    use ColumnType::*;
    let number = |s: &str, negative: bool| -> Result<Operand, ()> {
        let text = if negative {
            format!("-{s}")
        } else {
            s.to_string()
        };
        match ty {
            Int2 | Int4 | Int8 => {
                if !s.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(()); // 1.5 or 1e3 is numeric: compared as numeric
                }
                // Beyond i64 it is a numeric constant: compared as numeric.
                let i: i64 = text.parse().map_err(|_| ())?;
                // Beyond the column's range Postgres compares across
                // integer widths (int24eq, int48eq …), exact in SQLite too.
                Ok(Operand::Const(Some(
                    int_value(i, ty).unwrap_or(TypedValue::Int8(i)),
                )))
            }
            // Postgres compares float4 columns with a numeric constant as
            // float8: keep the double.
            Float4 | Float8 => {
                let f: f64 = text.parse().map_err(|_| ())?;
                if !f.is_finite() {
                    return Err(());
                }
                if s.bytes().all(|b| b.is_ascii_digit()) && f.abs() > 9_007_199_254_740_992.0 {
                    return Err(());
                }
                Ok(Operand::Const(Some(TypedValue::Float8(f))))
            }
            _ => Err(()),
        }
    };
    match e {
        Expr::Nested(inner) => literal(inner, ty),
        Expr::UnaryOp {
            op: op @ (UnaryOperator::Minus | UnaryOperator::Plus),
            expr,
        } => match expr.as_ref() {
            Expr::Value(v) => match &v.value {
                ast::Value::Number(s, _) => number(s, *op == UnaryOperator::Minus),
                _ => Err(()),
            },
            // `-0.1::float4` is `-(0.1::float4)`, folded by Postgres.
            inner @ Expr::Cast { .. } => match (literal(inner, ty)?, op) {
                (v, UnaryOperator::Plus) => Ok(v),
                (Operand::Const(Some(v)), _) => Ok(Operand::Const(Some(match v {
                    TypedValue::Int2(i) => TypedValue::Int2(i.checked_neg().ok_or(())?),
                    TypedValue::Int4(i) => TypedValue::Int4(i.checked_neg().ok_or(())?),
                    TypedValue::Int8(i) => TypedValue::Int8(i.checked_neg().ok_or(())?),
                    TypedValue::Float4(f) => TypedValue::Float4(-f),
                    TypedValue::Float8(f) => TypedValue::Float8(-f),
                    _ => return Err(()),
                }))),
                _ => Err(()),
            },
            _ => Err(()),
        },
        Expr::Value(v) => match &v.value {
            ast::Value::Null => Ok(Operand::Const(None)),
            // A float parameter could be NaN or infinite at run time: local
            // (as in the FDW).
            ast::Value::Placeholder(_) if matches!(ty, Float4 | Float8) => Err(()),
            ast::Value::Placeholder(p) => placeholder(p).map(Operand::Param).ok_or(()),
            ast::Value::Number(s, _) => number(s, false),
            ast::Value::Boolean(b) if ty == Bool => Ok(Operand::Const(Some(TypedValue::Bool(*b)))),
            ast::Value::SingleQuotedString(s) | ast::Value::EscapedStringLiteral(s) => {
                untyped(s, ty).map(|v| Operand::Const(Some(v))).ok_or(())
            }
            _ => Err(()),
        },
        Expr::Cast {
            expr, data_type, ..
        } => {
            // The constant has the cast's type (`0.1::float4` is an f32).
            let target = cast_type(data_type).ok_or(())?;
            if family(target) != family(ty) {
                return Err(());
            }
            match (target, expr.as_ref()) {
                (Float4, inner) => {
                    let (text, negative) = match inner {
                        Expr::UnaryOp {
                            op: UnaryOperator::Minus,
                            expr,
                        } => (string_or_number(expr).ok_or(())?, true),
                        other => (string_or_number(other).ok_or(())?, false),
                    };
                    match untyped(&text, Float4) {
                        Some(TypedValue::Float4(f)) => {
                            Ok(Operand::Const(Some(TypedValue::Float4(if negative {
                                -f
                            } else {
                                f
                            }))))
                        }
                        _ => Err(()),
                    }
                }
                (_, Expr::Value(_) | Expr::UnaryOp { .. } | Expr::Nested(_)) => {
                    literal(expr, target)
                }
                _ => Err(()),
            }
        }
        _ => Err(()),
    }
}

fn string_or_number(e: &Expr) -> Option<String> {
    match e {
        Expr::Value(v) => match &v.value {
            ast::Value::Number(s, _) => Some(s.clone()),
            ast::Value::SingleQuotedString(s) => Some(s.clone()),
            _ => None,
        },
        Expr::Nested(e) => string_or_number(e),
        _ => None,
    }
}

/// Postgres' `uuid_in`: 32 hex digits, an optional `-` after any group of
/// four, optionally inside braces.
fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    let braces = b.first() == Some(&b'{');
    let mut i = usize::from(braces);
    let mut out = [0u8; 16];
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    for (n, byte) in out.iter_mut().enumerate() {
        let hi = hex(*b.get(i)?)?;
        let lo = hex(*b.get(i + 1)?)?;
        *byte = hi << 4 | lo;
        i += 2;
        if n % 2 == 1 && n < 15 && b.get(i) == Some(&b'-') {
            i += 1;
        }
    }
    if braces {
        if b.get(i) != Some(&b'}') {
            return None;
        }
        i += 1;
    }
    (i == b.len()).then_some(out)
}

/// An untyped string literal read by the column type's input function.
fn untyped(s: &str, ty: ColumnType) -> Option<TypedValue> {
    use ColumnType::*;
    match ty {
        Int2 | Int4 | Int8 => {
            let t = s.trim();
            let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            int_value(t.parse().ok()?, ty)
        }
        Float4 | Float8 => {
            let t = s.trim();
            if !t
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+'))
            {
                return None;
            }
            // An untyped literal takes the column's type: float4in rounds
            // to f32.
            if ty == Float4 {
                let f: f32 = t.parse().ok()?;
                return f.is_finite().then_some(TypedValue::Float4(f));
            }
            let f: f64 = t.parse().ok()?;
            f.is_finite().then_some(TypedValue::Float8(f))
        }
        Bool => match s.trim().to_lowercase().as_str() {
            "t" | "true" | "yes" | "on" | "1" => Some(TypedValue::Bool(true)),
            "f" | "false" | "no" | "off" | "0" => Some(TypedValue::Bool(false)),
            _ => None,
        },
        Text | Varchar => Some(TypedValue::Text(s.to_string())),
        Uuid => parse_uuid(s).map(TypedValue::Uuid),
        Bytea => {
            let hex = s.strip_prefix("\\x")?;
            if hex.len() % 2 != 0 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
                .collect::<Option<Vec<u8>>>()?;
            Some(TypedValue::Bytea(bytes))
        }
        // Dates and timestamps are not parsed here; numeric, bpchar and
        // json are never pushed.
        _ => None,
    }
}

// ---------------------------------------------------------------------------
// Routing and rendering
// ---------------------------------------------------------------------------

fn params_in(p: &Pred, out: &mut BTreeMap<usize, bool>) {
    let op = |o: &Operand, out: &mut BTreeMap<usize, bool>| {
        if let Operand::Param(i) = o {
            out.entry(*i).or_insert(false);
        }
    };
    match p {
        Pred::Cmp { value, .. } => op(value, out),
        Pred::In { list, .. } => match list {
            ListOperand::Items(items) => items.iter().for_each(|o| op(o, out)),
            ListOperand::Param(i) => {
                out.insert(*i, true);
            }
        },
        Pred::And(ps) | Pred::Or(ps) => ps.iter().for_each(|p| params_in(p, out)),
        Pred::Not(p) => params_in(p, out),
        Pred::Bool(_) | Pred::IsNull { .. } | Pred::Glob { .. } => {}
    }
}

fn bound(b: &[Binding], i: usize, list: bool) -> bool {
    matches!(
        (b.get(i), list),
        (Some(Binding::Value(_)), false) | (Some(Binding::List(_)), true)
    )
}

fn placement(info: &TableInfo, shard: u32) -> Result<&ShardPlacement, ExplainError> {
    info.shards
        .iter()
        .find(|s| s.shard_id == shard)
        .ok_or_else(|| ExplainError::Catalog(format!("shard {shard} of {} has no node", info.name)))
}

fn render(
    plan: &Plan,
    infos: &[Option<TableInfo>],
    bindings: &[Binding],
) -> Result<Vec<ExplainRow>, ExplainError> {
    let mut rows = Vec::new();
    for occ in &plan.occs {
        let info = infos[occ.lookup].as_ref().expect("distributed");
        if info.key_column >= info.columns.len() {
            return Err(ExplainError::Catalog(format!(
                "{}: shard key column {} out of range",
                info.name, info.key_column
            )));
        }
        let names: Vec<&str> = info.columns.iter().map(|(n, _)| n.as_str()).collect();
        let key = ShardKey {
            column: info.key_column,
            name: names[info.key_column],
            shard_count: info.shard_count,
        };
        if let Some((cols, values)) = &occ.insert {
            render_insert(info, &key, cols, values, bindings, &mut rows)?;
            continue;
        }
        // Parameters the caller did not bind restrict nothing.
        let mut used = BTreeMap::new();
        let mut unbound_conj = Vec::new();
        for (i, p) in occ.conjuncts.iter().enumerate() {
            let mut ps = BTreeMap::new();
            params_in(p, &mut ps);
            if ps.iter().any(|(&i, &l)| !bound(bindings, i, l)) {
                unbound_conj.push(i);
            }
            used.extend(ps);
        }
        let unbound: Vec<(usize, bool)> = used
            .into_iter()
            .filter(|&(i, l)| !bound(bindings, i, l))
            .collect();
        let routed: Vec<Pred> = occ
            .conjuncts
            .iter()
            .enumerate()
            .filter(|(i, _)| !unbound_conj.contains(i))
            .map(|(_, p)| p.clone())
            .collect();
        let r = route(&routed, &key, bindings)
            .map_err(|e| ExplainError::Catalog(format!("routing failed: {e}")))?;
        let mut b = bindings.to_vec();
        for &(i, list) in &unbound {
            if b.len() <= i {
                b.resize(i + 1, Binding::Value(None));
            }
            b[i] = if list {
                Binding::List(Some(vec![None]))
            } else {
                Binding::Value(None)
            };
        }
        let mut reason = r.reason.clone();
        if !unbound.is_empty() {
            let list: Vec<String> = unbound.iter().map(|(i, _)| format!("${}", i + 1)).collect();
            reason.push_str(&format!(" ({} bound at execution)", list.join(", ")));
        }
        match plan.kind {
            Kind::Update if occ.target => {
                reason.push_str("; UPDATE modifies the rows this scan returns")
            }
            Kind::Delete if occ.target => {
                reason.push_str("; DELETE removes the rows this scan returns")
            }
            _ => {}
        }
        let columns: Vec<&str> = occ.needed.iter().map(|&c| names[c]).collect();
        for &shard in r.shards.keys() {
            let mine = r.shard_preds(&routed, &key, shard);
            let mut mine = mine.into_iter();
            let preds: Vec<Pred> = (0..occ.conjuncts.len())
                .map(|i| {
                    if unbound_conj.contains(&i) {
                        occ.conjuncts[i].clone()
                    } else {
                        mine.next().expect("one per routed conjunct")
                    }
                })
                .collect();
            let (where_sql, args) = deparse(&preds, &names, &b).map_err(|e| {
                ExplainError::Unsupported(format!("a pushed predicate cannot be sent: {e}"))
            })?;
            let table = shard_table_name(&info.remote_name, shard);
            let sql = select_sql(
                &table,
                &columns,
                (!preds.is_empty()).then_some(where_sql.as_str()),
            );
            let p = placement(info, shard)?;
            rows.push(ExplainRow {
                table: info.name.clone(),
                alias: occ.alias.clone(),
                shard_id: shard,
                node_id: p.node_id.clone(),
                node_url: p.node_url.clone(),
                remote_sql: sql,
                args,
                reason: reason.clone(),
            });
        }
    }
    Ok(rows)
}

fn render_insert(
    info: &TableInfo,
    key: &ShardKey,
    cols: &[usize],
    values: &[Vec<Option<Operand>>],
    bindings: &[Binding],
    rows: &mut Vec<ExplainRow>,
) -> Result<(), ExplainError> {
    let Some(kpos) = cols.iter().position(|&c| c == info.key_column) else {
        return Err(ExplainError::Unsupported(format!(
            "INSERT without the shard key column \"{}\"",
            key.name
        )));
    };
    let names: Vec<&str> = cols.iter().map(|&c| info.columns[c].0.as_str()).collect();
    let mut per_shard: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (n, row) in values.iter().enumerate() {
        let Some(k) = &row[kpos] else {
            return Err(ExplainError::Unsupported(format!(
                "INSERT row {}: the shard key is not a constant",
                n + 1
            )));
        };
        let eq = Pred::Cmp {
            column: info.key_column,
            op: CmpOp::Eq,
            value: k.clone(),
        };
        let r = route(&[eq], key, bindings)
            .map_err(|e| ExplainError::Unsupported(format!("INSERT row {}: {e}", n + 1)))?;
        let Some((&shard, _)) = r.shards.iter().next().filter(|_| r.restricted) else {
            return Err(ExplainError::Unsupported(format!(
                "INSERT row {}: shard key column \"{}\" must not be null",
                n + 1,
                key.name
            )));
        };
        per_shard.entry(shard).or_default().push(n);
    }
    for (shard, ns) in per_shard {
        let mut args = Vec::new();
        let mut complete = true;
        for &n in &ns {
            for (i, v) in values[n].iter().enumerate() {
                let value = match v {
                    Some(Operand::Const(None)) => Some(Value::Null),
                    Some(Operand::Const(Some(t))) => t.to_value(names[i]).ok(),
                    Some(Operand::Param(p)) => match bindings.get(*p) {
                        Some(Binding::Value(None)) => Some(Value::Null),
                        Some(Binding::Value(Some(t))) => t.to_value(names[i]).ok(),
                        _ => None,
                    },
                    None => None,
                };
                match value {
                    Some(v) => args.push(v),
                    None => complete = false,
                }
            }
        }
        if !complete {
            args.clear();
        }
        let table = shard_table_name(&info.remote_name, shard);
        let p = placement(info, shard)?;
        rows.push(ExplainRow {
            table: info.name.clone(),
            alias: None,
            shard_id: shard,
            node_id: p.node_id.clone(),
            node_url: p.node_url.clone(),
            remote_sql: insert_sql(&table, &names, ns.len()),
            args,
            reason: format!(
                "INSERT: {} row{} by {}{}",
                ns.len(),
                if ns.len() == 1 { "" } else { "s" },
                key.name,
                if complete {
                    ""
                } else {
                    " (some values are computed at execution)"
                }
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::{shard_for, KeyValue};
    use std::cell::Cell;

    fn table(name: &str, cols: &[(&str, ColumnType)], key: usize, shards: u32) -> TableInfo {
        TableInfo {
            name: name.into(),
            columns: cols.iter().map(|(n, t)| (n.to_string(), *t)).collect(),
            key_column: key,
            shard_count: shards,
            remote_name: name.into(),
            shards: (0..shards)
                .map(|s| ShardPlacement {
                    shard_id: s,
                    node_id: format!("n{}", s % 3),
                    node_url: format!("http://127.0.0.1:900{}", s % 3),
                })
                .collect(),
        }
    }

    fn users() -> TableInfo {
        use ColumnType::*;
        table(
            "users",
            &[
                ("id", Int8),
                ("name", Text),
                ("age", Int4),
                ("score", Float8),
                ("active", Bool),
                ("data", Bytea),
                ("uid", Uuid),
                ("amount", Numeric),
                ("code", Bpchar),
                ("born", Date),
                ("small", Int2),
                ("f4", Float4),
                ("Mixed", Varchar),
            ],
            0,
            16,
        )
    }

    fn orders() -> TableInfo {
        use ColumnType::*;
        table(
            "orders",
            &[
                ("order_id", Int8),
                ("user_id", Int4),
                ("total", Float8),
                ("note", Text),
            ],
            1,
            8,
        )
    }

    fn emails() -> TableInfo {
        use ColumnType::*;
        table("emails", &[("email", Text), ("n", Int8)], 0, 4)
    }

    fn catalog(name: &TableName) -> Option<TableInfo> {
        if name.schema.as_deref().is_some_and(|s| s != "public") {
            return None;
        }
        match name.name.as_str() {
            "users" => Some(users()),
            "orders" => Some(orders()),
            "emails" => Some(emails()),
            _ => None,
        }
    }

    fn ex(sql: &str) -> Vec<ExplainRow> {
        explain(sql, &catalog).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn shard(i: i64, n: u32) -> u32 {
        shard_for(&KeyValue::Int(i), n)
    }

    fn shards_of(rows: &[ExplainRow], table: &str) -> Vec<u32> {
        rows.iter()
            .filter(|r| r.table == table)
            .map(|r| r.shard_id)
            .collect()
    }

    /// The WHERE clause users' scan sends (None: nothing pushed).
    fn pushed(where_: &str) -> Option<(String, Vec<Value>)> {
        let rows = ex(&format!("SELECT count(*) FROM users WHERE {where_}"));
        let r = &rows[0];
        let (_, w) = r.remote_sql.split_once(" FROM ")?;
        w.split_once(" WHERE ")
            .map(|(_, w)| (w.to_string(), r.args.clone()))
    }

    #[test]
    fn point_lookup_routes_to_one_shard() {
        let rows = ex("SELECT * FROM users WHERE id = 42");
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        let s = shard(42, 16);
        assert_eq!(r.shard_id, s);
        assert_eq!(r.table, "users");
        assert_eq!(r.node_id, format!("n{}", s % 3));
        assert_eq!(r.node_url, format!("http://127.0.0.1:900{}", s % 3));
        assert_eq!(r.reason, "id = 42");
        assert_eq!(r.args, vec![Value::Integer(42)]);
        assert_eq!(
            r.remote_sql,
            format!(
                "SELECT \"id\", \"name\", \"age\", \"score\", \"active\", \"data\", \"uid\", \
                 \"amount\", \"code\", \"born\", \"small\", \"f4\", \"Mixed\" \
                 FROM \"users_{s:04}\" WHERE \"id\" = ?"
            )
        );
        // Literal on the left, parenthesized, typed strings and casts.
        for w in [
            "42 = id",
            "(id = 42)",
            "id = '42'",
            "id = 42::bigint",
            "id = CAST('42' AS int8)",
            "users.id = 42",
            "public.users.id = 42",
            "ID = 42",
        ] {
            assert_eq!(
                shards_of(&ex(&format!("SELECT 1 FROM users WHERE {w}")), "users"),
                vec![s],
                "{w}"
            );
        }
    }

    #[test]
    fn needed_columns_in_table_order() {
        let rows = ex("SELECT name, id FROM users WHERE age > 30 ORDER BY score");
        assert_eq!(rows.len(), 16);
        assert_eq!(
            rows[3].remote_sql,
            "SELECT \"id\", \"name\", \"score\" FROM \"users_0003\" WHERE \"age\" > ?"
        );
        assert_eq!(rows[3].args, vec![Value::Integer(30)]);
        assert_eq!(rows[3].reason, "all shards: no usable predicate on id");
        let rows = ex("SELECT count(*) FROM users");
        assert_eq!(rows[0].remote_sql, "SELECT NULL FROM \"users_0000\"");
        let rows = ex("SELECT \"Mixed\" FROM users");
        assert_eq!(rows[0].remote_sql, "SELECT \"Mixed\" FROM \"users_0000\"");
        // Unquoted Mixed folds to "mixed", which the table does not have.
        let rows = ex("SELECT count(*) FROM users WHERE Mixed = 'a'");
        assert_eq!(rows[0].remote_sql, "SELECT NULL FROM \"users_0000\"");
    }

    #[test]
    fn comparisons_by_type() {
        let cases: &[(&str, Option<&str>, Vec<Value>)] = &[
            ("age <> 5", Some("\"age\" <> ?"), vec![Value::Integer(5)]),
            ("age < -5", Some("\"age\" < ?"), vec![Value::Integer(-5)]),
            ("5 < age", Some("\"age\" > ?"), vec![Value::Integer(5)]),
            ("age <= 7", Some("\"age\" <= ?"), vec![Value::Integer(7)]),
            (
                "small >= 3",
                Some("\"small\" >= ?"),
                vec![Value::Integer(3)],
            ),
            (
                "score >= 1.5",
                Some("\"score\" >= ?"),
                vec![Value::Float(1.5)],
            ),
            ("score = 2", Some("\"score\" = ?"), vec![Value::Float(2.0)]),
            // float4 columns compare with a float8 constant in Postgres.
            ("f4 = 0.1", Some("\"f4\" = ?"), vec![Value::Float(0.1)]),
            (
                "active = true",
                Some("\"active\" = ?"),
                vec![Value::Integer(1)],
            ),
            (
                "active = 'f'",
                Some("NOT (\"active\" = ?)"),
                vec![Value::Integer(1)],
            ),
            ("active", Some("\"active\" = ?"), vec![Value::Integer(1)]),
            (
                "NOT active",
                Some("NOT (\"active\" = ?)"),
                vec![Value::Integer(1)],
            ),
            (
                "data = '\\x01ff'",
                Some("\"data\" = ?"),
                vec![Value::Blob(vec![1, 255])],
            ),
            (
                "uid < '123E4567-E89B-12D3-A456-426614174000'",
                Some("\"uid\" < ?"),
                vec![Value::Text("123e4567-e89b-12d3-a456-426614174000".into())],
            ),
            (
                "uid = '123e4567e89b12d3a456426614174000'::uuid",
                Some("\"uid\" = ?"),
                vec![Value::Text("123e4567-e89b-12d3-a456-426614174000".into())],
            ),
            (
                "name = 'bob'",
                Some("\"name\" = ?"),
                vec![Value::Text("bob".into())],
            ),
            (
                "name <> 'bob'",
                Some("\"name\" <> ?"),
                vec![Value::Text("bob".into())],
            ),
            (
                "\"Mixed\" = 'x'",
                Some("\"Mixed\" = ?"),
                vec![Value::Text("x".into())],
            ),
            (
                "name < 'bob' COLLATE \"C\"",
                Some("\"name\" < ?"),
                vec![Value::Text("bob".into())],
            ),
            (
                "name COLLATE \"C\" >= 'm'",
                Some("\"name\" >= ?"),
                vec![Value::Text("m".into())],
            ),
            ("name IS NULL", Some("\"name\" IS NULL"), vec![]),
            ("age IS NOT NULL", Some("\"age\" IS NOT NULL"), vec![]),
            ("NOT (age IS NULL)", Some("\"age\" IS NOT NULL"), vec![]),
            (
                "NOT (age < 5)",
                Some("\"age\" >= ?"),
                vec![Value::Integer(5)],
            ),
            (
                "age BETWEEN 1 AND 9",
                Some("\"age\" >= ? AND \"age\" <= ?"),
                vec![Value::Integer(1), Value::Integer(9)],
            ),
            (
                "age IN (1, NULL, 3)",
                Some("\"age\" IN (?, ?, ?)"),
                vec![Value::Integer(1), Value::Null, Value::Integer(3)],
            ),
            (
                "age NOT IN (1)",
                Some("\"age\" <> ?"),
                vec![Value::Integer(1)],
            ),
            ("age IN (5)", Some("\"age\" = ?"), vec![Value::Integer(5)]),
            (
                "age NOT IN (1, 2)",
                Some("NOT (\"age\" IN (?, ?))"),
                vec![Value::Integer(1), Value::Integer(2)],
            ),
            (
                "age <> ALL(ARRAY[1])",
                Some("NOT (\"age\" IN (?))"),
                vec![Value::Integer(1)],
            ),
            // Across integer widths, as Postgres compares them.
            (
                "age = 3000000000",
                Some("\"age\" = ?"),
                vec![Value::Integer(3_000_000_000)],
            ),
            (
                "small = 40000",
                Some("\"small\" = ?"),
                vec![Value::Integer(40000)],
            ),
            ("amount IS NULL", Some("\"amount\" IS NULL"), vec![]),
            (
                "name = 'x' COLLATE \"de_DE\"",
                Some("\"name\" = ?"),
                vec![Value::Text("x".into())],
            ),
            ("name < 'x' COLLATE \"de_DE\"", None, vec![]),
            (
                "active = false",
                Some("NOT (\"active\" = ?)"),
                vec![Value::Integer(1)],
            ),
            (
                "active <> 'f'",
                Some("\"active\" = ?"),
                vec![Value::Integer(1)],
            ),
            (
                "age = ANY(ARRAY[4, 5])",
                Some("\"age\" IN (?, ?)"),
                vec![Value::Integer(4), Value::Integer(5)],
            ),
            (
                "age = ANY(ARRAY[4, '5']::int[])",
                Some("\"age\" IN (?, ?)"),
                vec![Value::Integer(4), Value::Integer(5)],
            ),
            ("age = ANY(ARRAY[4, 5]::text[])", None, vec![]),
            (
                "name LIKE 'a%_'",
                Some("\"name\" GLOB ?"),
                vec![Value::Text("a*?".into())],
            ),
            (
                "name NOT LIKE 'a*'",
                Some("\"name\" NOT GLOB ?"),
                vec![Value::Text("a[*]".into())],
            ),
            (
                "age = 1 OR age = 2",
                Some("\"age\" = ? OR \"age\" = ?"),
                vec![Value::Integer(1), Value::Integer(2)],
            ),
            (
                "NOT (age = 1 OR name = 'x')",
                Some("\"age\" <> ? AND \"name\" <> ?"),
                vec![Value::Integer(1), Value::Text("x".into())],
            ),
            (
                "age = 1 AND lower(name) = 'x'",
                Some("\"age\" = ?"),
                vec![Value::Integer(1)],
            ),
            // Not pushed: evaluated by Postgres.
            ("name < 'bob'", None, vec![]),
            ("name ILIKE 'a%'", None, vec![]),
            ("name LIKE 'a\\'", None, vec![]),
            ("code LIKE 'a%'", None, vec![]),
            ("amount = 1", None, vec![]),
            ("code = 'x'", None, vec![]),
            ("born = '2020-01-01'", None, vec![]),
            ("age = 99999999999999999999", None, vec![]),
            ("age = 1.5", None, vec![]),
            ("age = 1 + 1", None, vec![]),
            ("score = 'NaN'", None, vec![]),
            ("score < 1e400", None, vec![]),
            ("data = 'abc'", None, vec![]),
            ("uid = 'nope'", None, vec![]),
            ("age = 1 OR lower(name) = 'x'", None, vec![]),
            ("score = $1", None, vec![]),
            // An untyped literal or a float4 cast is an f32 in Postgres.
            (
                "f4 = '0.1'",
                Some("\"f4\" = ?"),
                vec![Value::Float(f64::from(0.1f32))],
            ),
            (
                "f4 < -0.1::float4",
                Some("\"f4\" < ?"),
                vec![Value::Float(f64::from(-0.1f32))],
            ),
            (
                "f4 = 0.1::float8",
                Some("\"f4\" = ?"),
                vec![Value::Float(0.1)],
            ),
            ("age = +4", Some("\"age\" = ?"), vec![Value::Integer(4)]),
            (
                "\"Mixed\"::text = 'q'",
                Some("\"Mixed\" = ?"),
                vec![Value::Text("q".into())],
            ),
            ("age::text = '1'", None, vec![]),
            (
                "uid = '{123e4567-e89b12d3-a456-4266-14174000}'",
                Some("\"uid\" = ?"),
                vec![Value::Text("123e4567-e89b-12d3-a456-426614174000".into())],
            ),
            ("uid = '123e4567-e89b-12d3-a456-42661417400'", None, vec![]),
            ("uid = '123-e4567e89b12d3a456426614174000'", None, vec![]),
            ("score = ANY($1)", None, vec![]),
            (
                "age = ANY('{1, NULL,3}')",
                Some("\"age\" IN (?, ?, ?)"),
                vec![Value::Integer(1), Value::Null, Value::Integer(3)],
            ),
            (
                "name = ANY('{\"a,b\",c}'::text[])",
                Some("\"name\" IN (?, ?)"),
                vec![Value::Text("a,b".into()), Value::Text("c".into())],
            ),
            ("age = ANY('{{1},{2}}')", None, vec![]),
            ("NOT (age = 1 AND lower(name) = 'x')", None, vec![]),
            ("active IS TRUE", None, vec![]),
            ("age IS DISTINCT FROM 3", None, vec![]),
            ("name = 'a'::varchar(1)", None, vec![]),
        ];
        for (w, sql, args) in cases {
            let got = pushed(w);
            match sql {
                Some(sql) => {
                    assert_eq!(got, Some((sql.to_string(), args.clone())), "{w}");
                }
                None => assert_eq!(got, None, "{w}"),
            }
        }
    }

    #[test]
    fn common_or_clauses_are_pulled_out() {
        // The common `id = 1` routes even though the rest stays local.
        let rows = ex(
            "SELECT count(*) FROM users WHERE (id = 1 AND lower(name) = 'a') \
                       OR (id = 1 AND lower(name) = 'b')",
        );
        assert_eq!(shards_of(&rows, "users"), vec![shard(1, 16)]);
        assert_eq!(
            rows[0].remote_sql.split(" WHERE ").nth(1),
            Some("\"id\" = ?")
        );
        let rows =
            ex("SELECT count(*) FROM users WHERE (id = 1 AND age = 2) OR (id = 1 AND age = 3)");
        assert_eq!(
            rows[0].remote_sql.split(" WHERE ").nth(1),
            Some("\"id\" = ? AND (\"age\" = ? OR \"age\" = ?)")
        );
        let rows = ex("SELECT count(*) FROM users WHERE id = 1 OR (id = 1 AND age = 3)");
        assert_eq!(
            rows[0].remote_sql.split(" WHERE ").nth(1),
            Some("\"id\" = ?")
        );
    }

    #[test]
    fn key_values_and_contradictions() {
        assert!(ex("SELECT * FROM users WHERE id = NULL").is_empty());
        assert!(ex("SELECT * FROM users WHERE id = 1 AND id = 2").is_empty());
        assert!(ex("SELECT * FROM users WHERE id IN (1) AND id = 2").is_empty());
        assert!(ex("SELECT * FROM users WHERE NOT (id <> 3) AND id = 4").is_empty());
        // NOT (id <> 3) is id = 3.
        assert_eq!(
            shards_of(&ex("SELECT * FROM users WHERE NOT (id <> 3)"), "users"),
            vec![shard(3, 16)]
        );
        // A conjunct that is not pushed never narrows routing.
        assert_eq!(
            ex("SELECT * FROM users WHERE id = 1 OR lower(name) = 'x'").len(),
            16
        );
        assert_eq!(ex("SELECT * FROM users WHERE id <> 1").len(), 16);
        let mut two = vec![shard(1, 16), shard(2, 16)];
        two.sort();
        two.dedup();
        assert_eq!(
            shards_of(&ex("SELECT * FROM users WHERE id = 1 OR id = 2"), "users"),
            two
        );
        assert_eq!(
            shards_of(
                &ex("SELECT * FROM users WHERE id = 1 OR (id = 2 AND age > 3)"),
                "users"
            ),
            two
        );
        // Text keys.
        let rows = ex("SELECT n FROM emails WHERE email = 'a@b'");
        assert_eq!(
            shards_of(&rows, "emails"),
            vec![shard_for(&KeyValue::Text("a@b"), 4)]
        );
        assert_eq!(rows[0].reason, "email = 'a@b'");
    }

    #[test]
    fn long_conditions_do_not_overflow_the_stack() {
        // Lists of thousands of ORs come from generated SQL; a backend's
        // stack is small.
        let mut ors: Vec<String> = (0..4000).map(|i| format!("id = {i}")).collect();
        // The deepest chain the operator limit admits.
        ors.extend((0..MAX_OPERATORS - 2 * 4000).map(|_| "active".to_string()));
        let sql = format!("SELECT id FROM users WHERE {}", ors.join(" OR "));
        let rows = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(move || explain(&sql, &catalog).map(|r| r.len()))
            .unwrap()
            .join()
            .expect("no stack overflow");
        assert_eq!(rows, Ok(16));
    }

    #[test]
    fn too_many_operators_is_an_error() {
        let ors: Vec<String> = (0..=MAX_OPERATORS / 2)
            .map(|i| format!("id = {i}"))
            .collect();
        let sql = format!("SELECT id FROM users WHERE {}", ors.join(" OR "));
        let e = explain(&sql, &catalog).unwrap_err();
        assert!(e.to_string().contains("more than 10000 operators"), "{e}");
        // Long IN lists are fine: they are not deep.
        let list: Vec<String> = (0..20_000).map(|i| i.to_string()).collect();
        let sql = format!("SELECT id FROM users WHERE id IN ({})", list.join(","));
        assert_eq!(explain(&sql, &catalog).unwrap().len(), 16);
    }

    #[test]
    fn constant_conditions() {
        assert!(ex("SELECT * FROM users WHERE false").is_empty());
        assert!(ex("SELECT * FROM users u JOIN orders o ON false").is_empty());
        assert!(ex("SELECT * FROM users WHERE NOT true AND age = 1").is_empty());
        assert_eq!(ex("SELECT * FROM users WHERE true").len(), 16);
        // Only users is emptied by a false ON of its left join.
        let rows = ex("SELECT * FROM orders o LEFT JOIN users u ON false");
        assert_eq!(
            (
                shards_of(&rows, "orders").len(),
                shards_of(&rows, "users").len()
            ),
            (8, 0)
        );
    }

    #[test]
    fn default_collation_c_pushes_text_ordering() {
        struct C;
        impl Catalog for C {
            fn table(&self, name: &TableName) -> Option<TableInfo> {
                catalog(name)
            }
            fn default_collation_is_c(&self) -> bool {
                true
            }
        }
        let sql = "SELECT count(*) FROM users WHERE name < 'b'";
        let rows = explain(sql, &C).unwrap();
        assert!(
            rows[0].remote_sql.ends_with("WHERE \"name\" < ?"),
            "{}",
            rows[0].remote_sql
        );
        assert!(!ex(sql)[0].remote_sql.contains("WHERE"));
        // A cached plan is lowered again when the default changes.
        let mut cache = PlanCache::default();
        cache.explain(sql, &C, &[]).unwrap();
        let rows = cache.explain(sql, &catalog, &[]).unwrap();
        assert!(!rows[0].remote_sql.contains("WHERE"));
        assert_eq!(cache.relowered, 1);
    }

    #[test]
    fn in_lists_split_like_the_router() {
        let keys: Vec<i64> = (1..=30).collect();
        let list: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        let sql = format!(
            "SELECT id FROM users WHERE id IN ({}) AND age = 3",
            list.join(", ")
        );
        let rows = ex(&sql);
        let preds = vec![
            Pred::In {
                column: 0,
                list: ListOperand::Items(
                    keys.iter()
                        .map(|&k| Operand::Const(Some(TypedValue::Int8(k))))
                        .collect(),
                ),
            },
            Pred::Cmp {
                column: 2,
                op: CmpOp::Eq,
                value: Operand::Const(Some(TypedValue::Int4(3))),
            },
        ];
        let key = ShardKey {
            column: 0,
            name: "id",
            shard_count: 16,
        };
        let r = route(&preds, &key, &[]).unwrap();
        assert_eq!(
            rows.iter().map(|x| x.shard_id).collect::<Vec<_>>(),
            r.shards.keys().copied().collect::<Vec<_>>()
        );
        let names: Vec<String> = users().columns.into_iter().map(|(n, _)| n).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        for row in &rows {
            let (w, args) =
                deparse(&r.shard_preds(&preds, &key, row.shard_id), &names, &[]).unwrap();
            assert_eq!(
                row.remote_sql,
                format!("SELECT \"id\" FROM \"users_{:04}\" WHERE {w}", row.shard_id)
            );
            assert_eq!(row.args, args);
            // Each shard gets only its own keys.
            let n = args.len() - 1;
            assert_eq!(n, r.shards[&row.shard_id].len());
            for a in &args[..n] {
                let Value::Integer(k) = a else { panic!() };
                assert_eq!(shard(*k, 16), row.shard_id);
            }
            assert_eq!(row.reason, r.reason);
            assert!(row.reason.starts_with("id IN (30 values) split over"));
        }
        // = ANY(ARRAY[…]) splits the same way.
        let any = ex(&format!(
            "SELECT id FROM users WHERE id = ANY(ARRAY[{}]) AND age = 3",
            list.join(", ")
        ));
        assert_eq!(any, rows);
        // … also with the array cast (folded to one constant by Postgres).
        for ty in ["bigint", "int8", "integer"] {
            let cast = ex(&format!(
                "SELECT id FROM users WHERE id = ANY(ARRAY[{}]::{ty}[]) AND age = 3",
                list.join(", ")
            ));
            assert_eq!(cast, rows, "::{ty}[]");
        }
    }

    #[test]
    fn parameters() {
        let rows = ex("SELECT * FROM users WHERE id = $1");
        assert_eq!(rows.len(), 16);
        assert_eq!(
            rows[0].reason,
            "all shards: no usable predicate on id ($1 bound at execution)"
        );
        assert!(rows[0].remote_sql.ends_with("WHERE \"id\" = ?"));
        assert_eq!(rows[0].args, vec![Value::Null]);
        // Bound: one shard, the value as argument; $2 used twice, out of order.
        let b = [
            Binding::Value(Some(TypedValue::Int4(5))),
            Binding::Value(Some(TypedValue::Int8(9))),
        ];
        let sql = "SELECT id FROM users WHERE id = $2 AND age < $1 AND (id = $2 OR id = 11)";
        let rows = explain_with_params(sql, &catalog, &b).unwrap();
        assert_eq!(shards_of(&rows, "users"), vec![shard(9, 16)]);
        assert_eq!(rows[0].reason, "id = 9");
        assert_eq!(
            rows[0].args,
            vec![
                Value::Integer(9),
                Value::Integer(5),
                Value::Integer(9),
                Value::Integer(11)
            ]
        );
        // Partly bound: the bound conjuncts still route.
        let rows = explain_with_params(
            "SELECT id FROM users WHERE id = $1 AND age = $2",
            &catalog,
            &[Binding::Value(Some(TypedValue::Int8(9)))],
        )
        .unwrap();
        assert_eq!(shards_of(&rows, "users"), vec![shard(9, 16)]);
        assert_eq!(rows[0].reason, "id = 9 ($2 bound at execution)");
        // Array parameter: split.
        let b = [Binding::List(Some(vec![
            Some(TypedValue::Int8(1)),
            Some(TypedValue::Int8(2)),
        ]))];
        let rows =
            explain_with_params("SELECT id FROM users WHERE id = ANY($1)", &catalog, &b).unwrap();
        let mut two = vec![shard(1, 16), shard(2, 16)];
        two.sort();
        two.dedup();
        assert_eq!(shards_of(&rows, "users"), two);
        let rows = ex("SELECT id FROM users WHERE id = ANY($1)");
        assert_eq!(rows.len(), 16);
        assert!(rows[0].remote_sql.ends_with("WHERE \"id\" IN (?)"));
    }

    #[test]
    fn joins_with_aliases() {
        let sql = "SELECT u.name, o.total FROM users AS u JOIN orders o ON o.user_id = u.id \
                   WHERE u.id = 7 AND o.total > 10";
        let rows = ex(sql);
        assert_eq!(shards_of(&rows, "users"), vec![shard(7, 16)]);
        // Equivalence class: o.user_id = u.id = 7.
        assert_eq!(shards_of(&rows, "orders"), vec![shard(7, 8)]);
        let u = &rows[0];
        assert_eq!(u.alias.as_deref(), Some("u"));
        assert_eq!(
            u.remote_sql,
            format!(
                "SELECT \"name\" FROM \"users_{:04}\" WHERE \"id\" = ?",
                shard(7, 16)
            )
        );
        let o = &rows[1];
        assert_eq!(o.alias.as_deref(), Some("o"));
        assert_eq!(
            o.remote_sql,
            format!(
                "SELECT \"total\" FROM \"orders_{:04}\" WHERE \"total\" > ? AND \"user_id\" = ?",
                shard(7, 8)
            )
        );
        assert_eq!(o.args, vec![Value::Float(10.0), Value::Integer(7)]);
        assert_eq!(o.reason, "user_id = 7");
        // Unqualified columns resolve to the one table that has them;
        // comma joins and USING are inner joins too.
        let rows = ex("SELECT note FROM users, orders WHERE user_id = id AND id = 3");
        assert_eq!(shards_of(&rows, "orders"), vec![shard(3, 8)]);
        assert_eq!(
            rows.last().unwrap().remote_sql.split(" FROM ").next(),
            Some("SELECT \"note\"")
        );
        // Self-join: one entry per alias.
        let rows = ex("SELECT * FROM users a JOIN users b ON a.id = b.id WHERE b.id = 1");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].alias.as_deref(), Some("a"));
        assert_eq!(rows[1].alias.as_deref(), Some("b"));
        assert!(rows.iter().all(|r| r.shard_id == shard(1, 16)));
        // Ambiguous unqualified name: Postgres refuses it; not pushed here.
        assert_eq!(ex("SELECT 1 FROM users a, users b WHERE id = 1").len(), 32);
        // Local tables join fine and are not listed.
        let rows =
            ex("SELECT * FROM users u JOIN local_t l ON l.x = u.id WHERE u.id = 5 AND l.y = 2");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].shard_id, shard(5, 16));
        // A column of a local table never restricts a distributed one.
        assert_eq!(
            ex("SELECT * FROM users u JOIN local_t l ON l.id = 5").len(),
            16
        );
    }

    #[test]
    fn outer_joins() {
        // ON of a left join restricts the nullable side only; no
        // equivalence class through it.
        let rows = ex(
            "SELECT * FROM users u LEFT JOIN orders o ON o.user_id = u.id AND o.total > 5 \
                       WHERE u.id = 7",
        );
        assert_eq!(shards_of(&rows, "users"), vec![shard(7, 16)]);
        assert_eq!(shards_of(&rows, "orders").len(), 8);
        assert!(rows[1].remote_sql.ends_with("WHERE \"total\" > ?"));
        // ON of a left join on the preserved side: not pushed.
        let rows = ex("SELECT * FROM users u LEFT JOIN orders o ON u.id = 3");
        assert_eq!(shards_of(&rows, "users").len(), 16);
        // WHERE on the nullable side: strict quals are pushed, others not.
        let rows = ex(
            "SELECT * FROM users u LEFT JOIN orders o ON o.user_id = u.id \
                       WHERE o.user_id = 3",
        );
        assert_eq!(shards_of(&rows, "orders"), vec![shard(3, 8)]);
        // … and make the join inner (reduce_outer_joins): the ON equality
        // then routes users too.
        assert_eq!(shards_of(&rows, "users"), vec![shard(3, 16)]);
        let rows = ex(
            "SELECT * FROM users u LEFT JOIN orders o ON o.user_id = u.id \
                       WHERE o.total > 0 AND u.id = 4",
        );
        assert_eq!(shards_of(&rows, "orders"), vec![shard(4, 8)]);
        let rows = ex(
            "SELECT * FROM users u LEFT JOIN orders o ON o.user_id = u.id \
                       WHERE lower(o.note) = 'x' AND u.id = 4",
        );
        assert_eq!(
            shards_of(&rows, "orders").len(),
            8,
            "functions are not known strict"
        );
        let rows = ex(
            "SELECT * FROM users u LEFT JOIN orders o ON o.user_id = u.id \
                       WHERE o.user_id IS NULL AND u.id = 4",
        );
        assert_eq!(shards_of(&rows, "orders").len(), 8);
        let rows = ex("SELECT * FROM users u FULL JOIN orders o ON o.user_id = 1 WHERE u.id = 2");
        assert_eq!(shards_of(&rows, "users"), vec![shard(2, 16)]);
        assert_eq!(shards_of(&rows, "orders"), vec![shard(1, 8)]);
        let rows = ex(
            "SELECT * FROM users u LEFT JOIN orders o ON o.user_id = u.id \
                       WHERE o.user_id = 3 OR o.user_id IS NULL",
        );
        assert_eq!(shards_of(&rows, "orders").len(), 8);
        assert_eq!(shards_of(&rows, "users").len(), 16);
        let rows = ex(
            "SELECT * FROM orders o RIGHT JOIN users u ON o.user_id = u.id \
                       WHERE u.id = 2",
        );
        assert_eq!(shards_of(&rows, "users"), vec![shard(2, 16)]);
        assert_eq!(shards_of(&rows, "orders").len(), 8);
        let rows =
            ex("SELECT * FROM users u FULL JOIN orders o ON o.user_id = 1 WHERE u.age IS NULL");
        assert_eq!(rows.len(), 24);
    }

    #[test]
    fn subqueries_and_ctes_are_their_own_scopes() {
        let rows =
            ex("SELECT * FROM users WHERE id IN (SELECT user_id FROM orders WHERE user_id = 3)");
        assert_eq!(shards_of(&rows, "users").len(), 16);
        assert_eq!(shards_of(&rows, "orders"), vec![shard(3, 8)]);
        let rows = ex("WITH t AS (SELECT * FROM users WHERE id = 4) SELECT * FROM t");
        assert_eq!(shards_of(&rows, "users"), vec![shard(4, 16)]);
        // A correlated reference is another table's column: not pushed.
        let rows = ex("SELECT * FROM users u WHERE EXISTS \
                       (SELECT 1 FROM orders o WHERE o.user_id = u.age)");
        assert_eq!(rows.len(), 24);
    }

    #[test]
    fn update_delete_insert() {
        let rows = ex("DELETE FROM users WHERE id = 5");
        assert_eq!(rows.len(), 1);
        assert_eq!(
            rows[0].remote_sql,
            format!(
                "SELECT \"id\" FROM \"users_{:04}\" WHERE \"id\" = ?",
                shard(5, 16)
            )
        );
        assert_eq!(
            rows[0].reason,
            "id = 5; DELETE removes the rows this scan returns"
        );
        let rows =
            ex("UPDATE users SET name = 'x', age = age + 1 WHERE id IN (1, 2) AND score > 0");
        let mut two = vec![shard(1, 16), shard(2, 16)];
        two.sort();
        two.dedup();
        assert_eq!(shards_of(&rows, "users"), two);
        assert!(rows[0]
            .remote_sql
            .starts_with("SELECT \"id\", \"age\" FROM"));
        assert!(rows[0].reason.contains("UPDATE modifies"));
        let rows = ex(
            "UPDATE users u SET name = o.note FROM orders o WHERE o.user_id = u.id AND u.id = 6",
        );
        assert_eq!(shards_of(&rows, "users"), vec![shard(6, 16)]);
        assert_eq!(shards_of(&rows, "orders"), vec![shard(6, 8)]);
        assert!(!rows[1].reason.contains("UPDATE"));
        let rows = ex("INSERT INTO users (id, name) VALUES (1, 'a'), (2, 'b'), (1, NULL)");
        let total: usize = rows
            .iter()
            .map(|r| r.remote_sql.matches("(?, ?)").count())
            .sum();
        assert_eq!(total, 3);
        let one = rows.iter().find(|r| r.shard_id == shard(1, 16)).unwrap();
        assert_eq!(
            one.remote_sql,
            format!(
                "INSERT INTO \"users_{:04}\" (\"id\", \"name\") VALUES (?, ?), (?, ?)",
                shard(1, 16)
            )
        );
        assert_eq!(
            one.args,
            vec![
                Value::Integer(1),
                Value::Text("a".into()),
                Value::Integer(1),
                Value::Null
            ]
        );
        assert_eq!(one.reason, "INSERT: 2 rows by id");
        let e = explain("INSERT INTO users (id) VALUES (NULL)", &catalog).unwrap_err();
        assert!(e.to_string().contains("must not be null"), "{e}");
        let e = explain("INSERT INTO users (name) VALUES ('x')", &catalog).unwrap_err();
        assert!(e.to_string().contains("shard key"), "{e}");
        let e = explain("INSERT INTO users SELECT * FROM users", &catalog).unwrap_err();
        assert!(matches!(e, ExplainError::Unsupported(_)), "{e}");
    }

    #[test]
    fn errors() {
        let e = explain("SELEC * FROM users", &catalog).unwrap_err();
        assert!(matches!(&e, ExplainError::Parse(m) if !m.is_empty()), "{e}");
        assert!(e.to_string().starts_with("could not parse the statement: "));
        assert_eq!(
            explain("SELECT 1 FROM users; SELECT 2 FROM users", &catalog).unwrap_err(),
            ExplainError::MultipleStatements(2)
        );
        assert_eq!(explain("", &catalog).unwrap_err(), ExplainError::Empty);
        let e = explain("SELECT * FROM nope", &catalog).unwrap_err();
        assert_eq!(e, ExplainError::NotDistributed("nope".into()));
        assert_eq!(
            e.to_string(),
            "relation \"nope\" is not a distributed table"
        );
        let e = explain("DELETE FROM other.users WHERE id = 1", &catalog).unwrap_err();
        assert_eq!(
            e.to_string(),
            "relation \"other.users\" is not a distributed table"
        );
        let e = explain("CREATE TABLE t (a int)", &catalog).unwrap_err();
        assert!(
            matches!(&e, ExplainError::Unsupported(m) if m.starts_with("CREATE")),
            "{e}"
        );
        let e = explain("SELECT 1", &catalog).unwrap_err();
        assert!(matches!(e, ExplainError::Unsupported(_)));
        // A catalog without the shard's node is reported, not a panic.
        let broken = |n: &TableName| {
            catalog(n).map(|mut t| {
                t.shards.clear();
                t
            })
        };
        assert!(matches!(
            explain("SELECT * FROM users WHERE id = 1", &broken),
            Err(ExplainError::Catalog(_))
        ));
    }

    #[test]
    fn plan_cache_hits_and_follows_the_catalog() {
        let mut cache = PlanCache::new(2);
        let sql = "SELECT * FROM users WHERE id = 42";
        let first = explain_cached(&mut cache, sql, &catalog).unwrap();
        assert_eq!((cache.hits, cache.misses), (0, 1));
        let second = explain_cached(&mut cache, sql, &catalog).unwrap();
        assert_eq!((cache.hits, cache.misses, cache.relowered), (1, 1, 0));
        assert_eq!(first, second);
        // The shard count changed: same IR, routed again.
        let count = Cell::new(4u32);
        let resized = |n: &TableName| {
            catalog(n).map(|mut t| {
                t = table(&t.name.clone(), &[], 0, count.get()).clone_with(t);
                t
            })
        };
        let rows = cache.explain(sql, &resized, &[]).unwrap();
        assert_eq!(rows[0].shard_id, shard(42, 4));
        assert_eq!((cache.hits, cache.relowered), (2, 0));
        // The columns changed: lowered again from the cached AST.
        let renamed = |n: &TableName| {
            catalog(n).map(|mut t| {
                t.columns[0].1 = ColumnType::Int4;
                t
            })
        };
        let rows = cache.explain(sql, &renamed, &[]).unwrap();
        assert_eq!(rows[0].args, vec![Value::Integer(42)]);
        assert_eq!((cache.hits, cache.relowered), (3, 1));
        // Bounded: the least recently used text goes.
        explain_cached(&mut cache, "SELECT id FROM users", &catalog).unwrap();
        explain_cached(&mut cache, "SELECT age FROM users", &catalog).unwrap();
        assert_eq!(cache.len(), 2);
        explain_cached(&mut cache, sql, &catalog).unwrap();
        assert_eq!(cache.misses, 4);
        // Errors are reported, not cached as plans.
        assert!(explain_cached(&mut cache, "SELECT * FROM nope", &catalog).is_err());
        assert!(explain_cached(&mut cache, "SELECT * FROM nope", &catalog).is_err());
    }

    impl TableInfo {
        /// `self`'s shard layout with `base`'s columns.
        fn clone_with(self, base: TableInfo) -> TableInfo {
            TableInfo {
                columns: base.columns,
                key_column: base.key_column,
                ..self
            }
        }
    }
}
