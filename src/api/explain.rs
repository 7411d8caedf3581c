//! `conductor_explain(sql)`: which shards a statement visits and what each
//! is sent. The statement is parsed, analyzed, rewritten and planned by
//! Postgres itself (constants folded, equivalences derived, outer joins
//! reduced exactly as when it runs), then every foreign scan, direct modify
//! and insert of a distributed table in the plan yields the same shard plan
//! execution builds from it. Nothing is executed and no node is contacted.
//!
//! Values execution evaluates when a scan starts (a stable function such as
//! `now()`) are evaluated here the same way; values that exist only while
//! the statement runs (a nested loop's outer row, rows an `INSERT … SELECT`
//! produces) leave the route to execution: every shard it may reach is
//! listed and the reason says so.

use crate::catalog::{cache, TableTopology};
use crate::convert::ColumnCodec;
use crate::errors::raise;
use crate::fdw::direct::DirectPlan;
use crate::fdw::lower::ParamSpec;
use crate::fdw::scan::{eval_bindings, ScanPlan};
use conductor_core::plan::{OnConflict, RouteKind, ShardPlan, StatementKind};
use conductor_core::remote_sql::{insert_do_nothing_sql, insert_sql};
use conductor_core::topology::ShardLocation;
use conductor_hrana::{Stmt, Value};
use pgrx::prelude::*;
use pgrx::{JsonB, PgList, PgSqlErrorCode};
use std::ffi::CString;
use std::rc::Rc;

fn args_json(args: &[Value]) -> serde_json::Value {
    use base64::Engine as _;
    serde_json::Value::Array(
        args.iter()
            .map(|v| match v {
                Value::Null => serde_json::Value::Null,
                Value::Integer(i) => serde_json::json!(i),
                Value::Float(f) => serde_json::json!(f),
                Value::Text(s) => serde_json::json!(s),
                Value::Blob(b) => {
                    serde_json::json!({ "base64": base64::engine::general_purpose::STANDARD.encode(b) })
                }
            })
            .collect(),
    )
}

type ExplainRow = (String, i32, String, String, String, JsonB, String);

/// A table's shard plan in the statement, why, and whether it writes.
type Planned = (Rc<TableTopology>, ShardPlan, String, bool);

/// One row per target shard of every distributed table the statement
/// reads or writes: where it lives, the SQL it is sent (values as `?`,
/// listed in `args`) and why it is a target. Also callable unqualified as
/// `conductor_explain(sql)` (sql/finalize.sql).
#[pg_extern]
fn explain(
    sql: &str,
) -> TableIterator<
    'static,
    (
        name!(table_name, String),
        name!(shard_id, i32),
        name!(node_id, String),
        name!(node_url, String),
        name!(remote_sql, String),
        name!(args, JsonB),
        name!(reason, String),
    ),
> {
    let mut rows: Vec<ExplainRow> = Vec::new();
    for (topology, plan, note, write) in plan_statement(sql) {
        for s in &plan.statements {
            // A write to a reference table runs on every copy.
            let locations: Vec<&ShardLocation> = if write && topology.is_reference() {
                topology.replicas.iter().collect()
            } else {
                vec![&topology.shards[s.shard_id as usize]]
            };
            for location in locations {
                rows.push((
                    topology.name.clone(),
                    s.shard_id as i32,
                    location.node_id.clone(),
                    location.url.clone(),
                    s.stmt.sql.clone().unwrap_or_default(),
                    JsonB(args_json(&s.stmt.args)),
                    format!(
                        "{}{note}{}",
                        plan.reason,
                        moving_note(&topology, s.shard_id)
                    ),
                ));
            }
        }
    }
    TableIterator::new(rows)
}

/// A shard being moved is served by its source until the move switches
/// over: said so, with the node it is moving to.
fn moving_note(topology: &TableTopology, shard_id: u32) -> String {
    use conductor_core::topology::ShardStatus;
    if topology.shards[shard_id as usize].status == ShardStatus::Active {
        return String::new();
    }
    let target = Spi::get_one_with_args::<String>(
        "SELECT target_node_id FROM conductor.shard WHERE relid = $1 AND shard_id = $2",
        &[topology.relid.into(), (shard_id as i32).into()],
    )
    .ok()
    .flatten()
    .unwrap_or_default();
    format!("; shard {shard_id} is moving to node {target}: its source serves it until the move switches over")
}

fn refuse(message: impl Into<String>) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!("conductor_explain: {}", message.into()),
    )
    .error()
}

/// Plan `sql` with Postgres' planner and collect the shard plans of the
/// distributed tables in it, with a note on each plan's role and whether it
/// writes. `EXECUTE name(args)` plans the prepared statement with those
/// values, as its custom plan is.
fn plan_statement(sql: &str) -> Vec<Planned> {
    let text = CString::new(sql).unwrap_or_else(|_| refuse("the statement contains a NUL"));
    // SAFETY: parse/analyze/plan allocate in the current memory context,
    // which lives until this function returns; errors unwind through
    // pg_guard'd code as Postgres ERRORs.
    unsafe {
        let raw = PgList::<pg_sys::RawStmt>::from_pg(pg_sys::pg_parse_query(text.as_ptr()));
        if raw.len() != 1 {
            refuse(format!("expected one statement, got {}", raw.len()));
        }
        let mut raw_stmt = raw.get_ptr(0).expect("one statement");
        let mut source = text.as_ptr();
        let (mut param_types, mut params, mut bound): (
            *mut pg_sys::Oid,
            i32,
            pg_sys::ParamListInfo,
        ) = (std::ptr::null_mut(), 0, std::ptr::null_mut());
        if is((*raw_stmt).stmt, pg_sys::NodeTag::T_ExecuteStmt) {
            let execute = (*raw_stmt).stmt as *mut pg_sys::ExecuteStmt;
            let prepared = pg_sys::FetchPreparedStatement((*execute).name, true);
            let plansource = (*prepared).plansource;
            bound = execute_params(execute, plansource, source);
            raw_stmt = (*plansource).raw_parse_tree;
            source = (*plansource).query_string;
            param_types = (*plansource).param_types;
            params = (*plansource).num_params;
        }
        let queries = PgList::<pg_sys::Query>::from_pg(pg_sys::pg_analyze_and_rewrite_fixedparams(
            raw_stmt,
            source,
            param_types,
            params,
            std::ptr::null_mut(),
        ));
        let mut out = Vec::new();
        for query in queries.iter_ptr() {
            if (*query).commandType == pg_sys::CmdType::CMD_UTILITY {
                refuse("only SELECT, INSERT, UPDATE and DELETE can be explained");
            }
            let planned = pg_sys::pg_plan_query(query, source, 0, bound);
            let mut walker = Walker {
                stmt: planned,
                out: &mut out,
            };
            walker.plan((*planned).planTree, "");
            for sub in PgList::<pg_sys::Plan>::from_pg((*planned).subplans).iter_ptr() {
                walker.plan(sub, "");
            }
        }
        out
    }
}

/// The values of `EXECUTE name(args)`, coerced to the prepared statement's
/// parameter types and evaluated (as Postgres' EvaluateParams does), as
/// constants the planner folds into the plan.
///
/// # Safety
/// `execute` is a parsed EXECUTE of `plansource`; `text` its source text.
unsafe fn execute_params(
    execute: *mut pg_sys::ExecuteStmt,
    plansource: *mut pg_sys::CachedPlanSource,
    text: *const std::ffi::c_char,
) -> pg_sys::ParamListInfo {
    // SAFETY: per the contract; everything is allocated in the current
    // memory context, which outlives the planning.
    unsafe {
        let expected = (*plansource).num_params;
        let args = PgList::<pg_sys::Node>::from_pg((*execute).params);
        if args.len() != expected as usize {
            raise(
                PgSqlErrorCode::ERRCODE_SYNTAX_ERROR,
                format!(
                    "wrong number of parameters for prepared statement \"{}\"",
                    std::ffi::CStr::from_ptr((*execute).name).to_string_lossy()
                ),
            )
            .detail(format!(
                "Expected {expected} parameters but got {}.",
                args.len()
            ))
            .error();
        }
        if expected == 0 {
            return std::ptr::null_mut();
        }
        let pstate = pg_sys::make_parsestate(std::ptr::null_mut());
        (*pstate).p_sourcetext = text;
        let bound = pg_sys::makeParamList(expected);
        let slots = (*bound).params.as_mut_slice(expected as usize);
        for (i, arg) in args.iter_ptr().enumerate() {
            let want = *(*plansource).param_types.add(i);
            let expr = pg_sys::transformExpr(
                pstate,
                arg,
                pg_sys::ParseExprKind::EXPR_KIND_EXECUTE_PARAMETER,
            );
            let given = pg_sys::exprType(expr);
            let expr = pg_sys::coerce_to_target_type(
                pstate,
                expr,
                given,
                want,
                -1,
                pg_sys::CoercionContext::COERCION_ASSIGNMENT,
                pg_sys::CoercionForm::COERCE_IMPLICIT_CAST,
                -1,
            );
            if expr.is_null() {
                raise(
                    PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                    format!(
                        "parameter ${} of type {} cannot be coerced to the expected type {}",
                        i + 1,
                        type_name(given),
                        type_name(want)
                    ),
                )
                .hint("You will need to rewrite or cast the expression.")
                .error();
            }
            pg_sys::assign_expr_collations(pstate, expr);
            let expr = pg_sys::expression_planner(expr.cast());
            // The context is a child of the current one, freed with it: the
            // value lives in its memory until planning is done.
            let econtext = pg_sys::CreateStandaloneExprContext();
            let state = pg_sys::ExecInitExpr(expr, std::ptr::null_mut());
            let mut is_null = false;
            let datum = pg_sys::ExecEvalExprSwitchContext(state, econtext, &mut is_null);
            slots[i] = pg_sys::ParamExternData {
                value: datum,
                isnull: is_null,
                pflags: pg_sys::PARAM_FLAG_CONST as u16,
                ptype: want,
            };
        }
        bound
    }
}

/// Why a plan's shards are left to execution, when they are: a parameter's
/// value, unless a virtual index lookup (its reason says so) decides them.
fn at_execution(plan: &ShardPlan) -> &'static str {
    if plan.kind != RouteKind::AtExecution || plan.reason.contains("through virtual index") {
        return "";
    }
    "; a parameter known only when the statement runs decides the shards"
}

fn type_name(oid: pg_sys::Oid) -> String {
    // SAFETY: format_type_be returns a palloc'd name of any type oid.
    unsafe { std::ffi::CStr::from_ptr(pg_sys::format_type_be(oid)) }
        .to_string_lossy()
        .into_owned()
}

struct Walker<'a> {
    stmt: *mut pg_sys::PlannedStmt,
    out: &'a mut Vec<Planned>,
}

use crate::fdw::lower::is;

impl Walker<'_> {
    /// The relation a range-table index of the statement names.
    unsafe fn relid(&self, rti: u32) -> pg_sys::Oid {
        // SAFETY: rti indexes the planned statement's range table.
        unsafe {
            let rte = PgList::<pg_sys::RangeTblEntry>::from_pg((*self.stmt).rtable)
                .get_ptr(rti as usize - 1)
                .expect("range table entry");
            (*rte).relid
        }
    }

    /// Visit a plan node and its children in plan order. `note` describes
    /// the role of a foreign scan directly below a ModifyTable.
    unsafe fn plan(&mut self, plan: *mut pg_sys::Plan, note: &str) {
        use pg_sys::NodeTag::*;
        if plan.is_null() {
            return;
        }
        let node = plan as *mut pg_sys::Node;
        // SAFETY: every cast follows a tag check; the planner's trees are
        // well formed.
        unsafe {
            if is(node, T_ForeignScan) {
                self.foreign_scan(plan as *mut pg_sys::ForeignScan, note);
            }
            if is(node, T_Result) && never_runs((*(plan as *mut pg_sys::Result)).resconstantqual) {
                return; // a constant-false one-time filter: nothing below runs
            }
            if is(node, T_ModifyTable) {
                let mt = plan as *mut pg_sys::ModifyTable;
                let note = match (*mt).operation {
                    pg_sys::CmdType::CMD_UPDATE => "; UPDATE changes the rows this scan returns",
                    pg_sys::CmdType::CMD_DELETE => "; DELETE removes the rows this scan returns",
                    _ => "",
                };
                if (*mt).operation == pg_sys::CmdType::CMD_INSERT {
                    self.insert(mt);
                }
                self.plan((*plan).lefttree, note);
                return;
            }
            let lists: &[*mut pg_sys::List] = if is(node, T_Append) {
                &[(*(plan as *mut pg_sys::Append)).appendplans]
            } else if is(node, T_MergeAppend) {
                &[(*(plan as *mut pg_sys::MergeAppend)).mergeplans]
            } else if is(node, T_BitmapAnd) {
                &[(*(plan as *mut pg_sys::BitmapAnd)).bitmapplans]
            } else if is(node, T_BitmapOr) {
                &[(*(plan as *mut pg_sys::BitmapOr)).bitmapplans]
            } else if is(node, T_CustomScan) {
                &[(*(plan as *mut pg_sys::CustomScan)).custom_plans]
            } else {
                &[]
            };
            for list in lists {
                for child in PgList::<pg_sys::Plan>::from_pg(*list).iter_ptr() {
                    self.plan(child, "");
                }
            }
            if is(node, T_SubqueryScan) {
                self.plan((*(plan as *mut pg_sys::SubqueryScan)).subplan, "");
            }
            self.plan((*plan).lefttree, "");
            self.plan((*plan).righttree, "");
        }
    }

    unsafe fn foreign_scan(&mut self, fscan: *mut pg_sys::ForeignScan, note: &str) {
        // SAFETY: a ForeignScan of the planned statement.
        unsafe {
            let rti = (*fscan).scan.scanrelid;
            if rti == 0 {
                if crate::fdw::join::is_join_scan(fscan) {
                    return self.join_scan(fscan, note);
                }
                // Aggregates, ORDER BY or LIMIT pushed to the shards
                // (src/fdw/upper.rs); any other scan without a relation is
                // another wrapper's.
                if let Some(upper) = crate::fdw::upper::plan_of(fscan) {
                    self.upper_scan(fscan, upper, note);
                }
                return;
            }
            let Some(topology) = cache::try_table(self.relid(rti)) else {
                return; // another wrapper's table, or not distributed
            };
            let exprs = (*fscan).fdw_exprs;
            // Below a ModifyTable: the rows it returns are then changed.
            let modifies = !note.is_empty();
            let (plan, note) = match (*fscan).operation {
                pg_sys::CmdType::CMD_SELECT => {
                    let scan: ScanPlan = crate::fdw::private_to((*fscan).fdw_private);
                    let kind = scan.statement(&topology);
                    let plan = match evaluate(exprs, &scan.params) {
                        Some(bindings) => bound(&topology, &scan.pushed, &bindings, &kind),
                        None => {
                            let mut p = ShardPlan::template(&topology, &scan.pushed, &kind);
                            crate::vindex::annotate(&topology, &scan.pushed, &mut p);
                            p
                        }
                    };
                    (plan, note.to_string())
                }
                _ => {
                    let direct: DirectPlan = crate::fdw::private_to((*fscan).fdw_private);
                    let n_where = direct.params.len();
                    let set_specs = direct.statement(&topology, Vec::new()).clone();
                    let values = match &set_specs {
                        StatementKind::Update { .. } => {
                            evaluate_row(exprs, n_where, &direct.operand_codecs(&topology))
                        }
                        _ => Some(Vec::new()),
                    };
                    let bindings = evaluate(exprs, &direct.params);
                    let plan = match (bindings, values) {
                        (Some(b), Some(v)) => bound(
                            &topology,
                            &direct.pushed,
                            &b,
                            &direct.statement(&topology, v),
                        ),
                        _ => ShardPlan::template(&topology, &direct.pushed, &set_specs),
                    };
                    (
                        plan,
                        "; one statement per shard, no row is fetched".to_string(),
                    )
                }
            };
            let mut note = format!("{note}{}", at_execution(&plan));
            let write = (*fscan).operation != pg_sys::CmdType::CMD_SELECT;
            if !write && modifies && topology.is_reference() {
                note.push_str(&format!(
                    "; each changed row is then written to every copy (on {})",
                    topology
                        .replicas
                        .iter()
                        .map(|l| l.node_id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            self.out.push((topology, plan, note, write));
        }
    }

    /// A pushed join: the same shard plan its execution builds, listed
    /// under both tables (which share their shard locations).
    unsafe fn join_scan(&mut self, fscan: *mut pg_sys::ForeignScan, note: &str) {
        // SAFETY: a ForeignScan of the planned statement.
        unsafe {
            let scan: ScanPlan = crate::fdw::private_to((*fscan).fdw_private);
            let Some(join) = &scan.join else {
                return;
            };
            let (Some(outer), Some(inner)) = (
                cache::try_table(pg_sys::Oid::from(join.outer)),
                cache::try_table(pg_sys::Oid::from(join.inner)),
            ) else {
                return;
            };
            let plan = match evaluate((*fscan).fdw_exprs, &scan.params) {
                Some(bindings) => ShardPlan::join(&outer, &inner, &join.query, &bindings)
                    .unwrap_or_else(|e| refuse(format!("cannot build the shard statements: {e}"))),
                None => ShardPlan::join_template(&outer, &inner, &join.query),
            };
            let note = format!(
                "{note}; {}",
                crate::fdw::join::describe(join, &outer, &inner)
            );
            self.push_join(outer, inner, join.query.inner_reference, plan, note);
        }
    }

    /// A pushed join's plan, listed under both tables: shard i of both is
    /// read (a reference table's copy on each node is not a shard of its
    /// own).
    fn push_join(
        &mut self,
        outer: Rc<TableTopology>,
        inner: Rc<TableTopology>,
        inner_reference: bool,
        plan: ShardPlan,
        mut note: String,
    ) {
        note.push_str(at_execution(&plan));
        if !inner_reference {
            self.out.push((inner, plan.clone(), note.clone(), false));
        }
        self.out.push((outer, plan, note, false));
    }

    /// An upper scan: the same shard plan its execution builds.
    unsafe fn upper_scan(
        &mut self,
        fscan: *mut pg_sys::ForeignScan,
        upper: crate::fdw::upper::UpperPlan,
        note: &str,
    ) {
        // SAFETY: a ForeignScan of the planned statement.
        unsafe {
            if let Some(join) = &upper.join {
                let (Some(outer), Some(inner)) = (
                    cache::try_table(pg_sys::Oid::from(join.outer)),
                    cache::try_table(pg_sys::Oid::from(join.inner)),
                ) else {
                    return;
                };
                let bindings = evaluate((*fscan).fdw_exprs, &upper.params);
                let plan = ShardPlan::join_pushed(
                    &outer,
                    &inner,
                    &join.query,
                    &upper.query,
                    bindings.as_deref(),
                )
                .unwrap_or_else(|e| refuse(format!("cannot build the shard statements: {e}")));
                let combined = crate::fdw::join::combined(&outer, &inner);
                let note = format!(
                    "{note}; {}; pushed: {}",
                    crate::fdw::join::describe(join, &outer, &inner),
                    upper.describe(&combined)
                );
                self.push_join(outer, inner, join.query.inner_reference, plan, note);
                return;
            }
            let Some(topology) = cache::try_table(pg_sys::Oid::from(upper.relid)) else {
                return;
            };
            let kind = StatementKind::Pushed(upper.query.clone());
            let plan = match evaluate((*fscan).fdw_exprs, &upper.params) {
                Some(bindings) => {
                    // A negative LIMIT fails the statement when it starts:
                    // the same error here, not one about sending it.
                    if let Some(spec) = &upper.query.limit {
                        crate::fdw::upper::limit_values(spec, &bindings);
                    }
                    bound(&topology, &upper.pushed, &bindings, &kind)
                }
                None => {
                    let mut p = ShardPlan::template(&topology, &upper.pushed, &kind);
                    crate::vindex::annotate(&topology, &upper.pushed, &mut p);
                    p
                }
            };
            let mut note = format!("{note}; pushed: {}", upper.describe(&topology));
            note.push_str(at_execution(&plan));
            self.out.push((topology, plan, note, false));
        }
    }

    /// INSERT: the rows of a VALUES list are routed here as execution
    /// routes them; rows computed while the statement runs are routed then.
    unsafe fn insert(&mut self, mt: *mut pg_sys::ModifyTable) {
        // SAFETY: a ModifyTable of the planned statement.
        unsafe {
            let Some(rti) = PgList::<i32>::from_pg((*mt).resultRelations)
                .iter_int()
                .next()
            else {
                return;
            };
            let Some(topology) = cache::try_table(self.relid(rti as u32)) else {
                return;
            };
            let on_conflict = crate::fdw::modify::on_conflict_of(mt);
            let (plan, note) = match insert_rows((*mt).plan.lefttree, &topology) {
                Some(rows) => (
                    ShardPlan::insert_with(&topology, rows, on_conflict)
                        .unwrap_or_else(|e| crate::fdw::modify::plan_error(&topology, e)),
                    "",
                ),
                None => (
                    insert_template(&topology, on_conflict),
                    "; the rows are known only when the statement runs",
                ),
            };
            self.out.push((topology, plan, note.to_string(), true));
        }
    }
}

/// Whether a Result's one-time filter is a constant that is not true (the
/// planner proved the subtree returns nothing, e.g. `k = 'a' AND k = 'b'`).
unsafe fn never_runs(quals: *mut pg_sys::Node) -> bool {
    // SAFETY: a planner expression list (or a bare expression), or null.
    unsafe {
        let items: Vec<*mut pg_sys::Node> = if is(quals, pg_sys::NodeTag::T_List) {
            PgList::<pg_sys::Node>::from_pg(quals.cast())
                .iter_ptr()
                .collect()
        } else if quals.is_null() {
            Vec::new()
        } else {
            vec![quals]
        };
        items.into_iter().any(|q| {
            is(q, pg_sys::NodeTag::T_Const) && {
                let c = &*(q as *mut pg_sys::Const);
                c.constisnull || c.constvalue.value() & 0xff == 0
            }
        })
    }
}

fn bound(
    topology: &TableTopology,
    pushed: &[conductor_core::predicate::Pred],
    bindings: &[conductor_core::predicate::Binding],
    kind: &StatementKind,
) -> ShardPlan {
    let mut plan = ShardPlan::build(topology, pushed, bindings, kind)
        .unwrap_or_else(|e| refuse(format!("a pushed predicate cannot be sent: {e}")));
    crate::vindex::annotate(topology, pushed, &mut plan);
    plan
}

/// Every shard may receive the rows: they exist only at execution.
fn insert_template(topology: &TableTopology, on_conflict: OnConflict) -> ShardPlan {
    let names = topology.column_names();
    let sql_for = match on_conflict {
        OnConflict::Error => insert_sql,
        OnConflict::DoNothing => insert_do_nothing_sql,
    };
    ShardPlan {
        kind: RouteKind::AtExecution,
        reason: format!(
            "INSERT: each row goes to the shard of its {}",
            topology.key().name
        ),
        max_keys_per_shard: 0,
        keys: Vec::new(),
        statements: topology
            .shards
            .iter()
            .map(|s| conductor_core::plan::ShardStatement {
                shard_id: s.shard_id,
                stmt: Stmt::new(sql_for(&s.remote_table, &names, 1), Vec::new()),
            })
            .collect(),
    }
}

/// Whether an expression can be evaluated before the statement runs: no
/// executor parameter (a nested loop's outer value, a subquery's result).
unsafe fn evaluable(expr: *mut pg_sys::Node) -> bool {
    // SAFETY: a planner expression tree.
    unsafe {
        !pg_sys::contain_subplans(expr)
            && pg_sys::bms_is_empty(pg_sys::pull_paramids(expr.cast()))
            && PgList::<pg_sys::Node>::from_pg(pg_sys::pull_var_clause(expr, 0)).is_empty()
    }
}

/// Evaluate the first `specs.len()` of `exprs` as a scan does when it
/// starts; None when one of them needs the running statement.
unsafe fn evaluate(
    exprs: *mut pg_sys::List,
    specs: &[ParamSpec],
) -> Option<Vec<conductor_core::predicate::Binding>> {
    // SAFETY: fdw_exprs of a planned ForeignScan; the standalone context is
    // freed before returning (values are converted to Rust first).
    unsafe {
        let all = PgList::<pg_sys::Node>::from_pg(exprs);
        let mine: Vec<*mut pg_sys::Node> = all.iter_ptr().take(specs.len()).collect();
        if mine.iter().any(|&e| !evaluable(e)) {
            return None;
        }
        let mut list: *mut pg_sys::List = std::ptr::null_mut();
        for &e in &mine {
            list = pg_sys::lappend(list, e.cast());
        }
        let econtext = pg_sys::CreateStandaloneExprContext();
        let states = crate::fdw::scan::init_params(list, std::ptr::null_mut());
        let bindings = eval_bindings(&states, specs, econtext);
        pg_sys::FreeExprContext(econtext, true);
        Some(bindings)
    }
}

/// Evaluate `exprs[skip..]` as the operands of an UPDATE's SET (encoded by
/// `codecs`); None when one needs the running statement.
unsafe fn evaluate_row(
    exprs: *mut pg_sys::List,
    skip: usize,
    codecs: &[ColumnCodec],
) -> Option<Vec<Value>> {
    // SAFETY: as in evaluate().
    unsafe {
        let values: Vec<*mut pg_sys::Node> = PgList::<pg_sys::Node>::from_pg(exprs)
            .iter_ptr()
            .skip(skip)
            .collect();
        evaluate_values(&values, codecs)
    }
}

unsafe fn evaluate_values(
    exprs: &[*mut pg_sys::Node],
    codecs: &[ColumnCodec],
) -> Option<Vec<Value>> {
    // SAFETY: planner expressions of the planned statement.
    unsafe {
        if exprs.iter().any(|&e| !evaluable(e)) {
            return None;
        }
        let mut out = Vec::with_capacity(exprs.len());
        for (&expr, codec) in exprs.iter().zip(codecs) {
            out.push(
                crate::convert::evaluate_standalone(expr, codec)
                    .unwrap_or_else(|e| refuse(format!("conductor cannot store this value: {e}"))),
            );
        }
        Some(out)
    }
}

/// The rows an INSERT's subplan produces when they are constants (a
/// `VALUES` list, with defaults filled in by the planner), each with every
/// column in topology order; None when they are computed at execution.
unsafe fn insert_rows(
    subplan: *mut pg_sys::Plan,
    topology: &TableTopology,
) -> Option<Vec<Vec<Value>>> {
    // SAFETY: the ModifyTable's subplan; its target list has one entry per
    // attribute of the table (resno = attnum), as the planner builds
    // INSERT target lists.
    unsafe {
        let node = subplan as *mut pg_sys::Node;
        let tlist: Vec<*mut pg_sys::TargetEntry> =
            PgList::<pg_sys::TargetEntry>::from_pg((*subplan).targetlist)
                .iter_ptr()
                .collect();
        let column_of = |tle: *mut pg_sys::TargetEntry| topology.column_index((*tle).resno);
        let columns: Vec<usize> = tlist.iter().filter_map(|&t| column_of(t)).collect();
        if columns.len() != topology.columns.len() {
            return None;
        }
        let codecs: Vec<ColumnCodec> = columns.iter().map(|&c| topology.codec(c)).collect();
        let reorder = |values: Vec<Value>| {
            let mut row = vec![Value::Null; topology.columns.len()];
            for (v, &c) in values.into_iter().zip(&columns) {
                row[c] = v;
            }
            row
        };
        if is(node, pg_sys::NodeTag::T_Result) && (*subplan).lefttree.is_null() {
            let exprs: Vec<*mut pg_sys::Node> = tlist
                .iter()
                .map(|&t| (*t).expr as *mut pg_sys::Node)
                .collect();
            return evaluate_values(&exprs, &codecs).map(|v| vec![reorder(v)]);
        }
        if is(node, pg_sys::NodeTag::T_ValuesScan) {
            let scan = subplan as *mut pg_sys::ValuesScan;
            let scanrelid = (*scan).scan.scanrelid as i32;
            let mut rows = Vec::new();
            for values in PgList::<pg_sys::List>::from_pg((*scan).values_lists).iter_ptr() {
                let items: Vec<*mut pg_sys::Node> =
                    PgList::<pg_sys::Node>::from_pg(values).iter_ptr().collect();
                let mut exprs = Vec::with_capacity(tlist.len());
                for &tle in &tlist {
                    let e = (*tle).expr as *mut pg_sys::Node;
                    exprs.push(
                        if is(e, pg_sys::NodeTag::T_Var)
                            && (*(e as *mut pg_sys::Var)).varno == scanrelid
                        {
                            *items.get((*(e as *mut pg_sys::Var)).varattno as usize - 1)?
                        } else {
                            e
                        },
                    );
                }
                rows.push(reorder(evaluate_values(&exprs, &codecs)?));
            }
            return Some(rows);
        }
        None
    }
}
