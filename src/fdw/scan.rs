//! Foreign scans. Planning lowers the restriction into the predicate IR
//! (`lower`), keeps what SQLite cannot evaluate exactly as a local filter,
//! offers parameterized paths for `key = outer.col`, and records the IR in
//! the plan. Execution binds the runtime parameters, builds the shard plan
//! (routing it), sends every target shard's query at once and streams the
//! rows back.

use crate::catalog::credentials::ActingUser;
use crate::catalog::{cache, TableTopology};
use crate::convert::ColumnCodec;
use crate::errors::raise;
use crate::fdw::lower::{deconstruct, Lowering, ParamSpec};
use crate::remote;
use crate::stats;
use crate::xact::{changed, streams};
use conductor_core::executor::{ScanHandle, ScanPoll, ShardError, ShardQuery, ShardStats};
use conductor_core::plan::{
    planned_key_values, planned_shards, RouteKind, ShardPlan, StatementKind,
};
use conductor_core::predicate::{Binding, Pred};
use conductor_hrana::Value;
use pgrx::prelude::*;
use pgrx::{PgList, PgMemoryContexts, PgSqlErrorCode};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::ffi::{CStr, CString};
use std::rc::Rc;
use std::time::Duration;

/// How long the backend waits for rows before it checks for cancel and
/// statement_timeout again.
const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Most primary-key values per shard for which a lookup is fetched in one
/// request rather than streamed.
const BOUNDED_LOOKUP_KEYS: usize = 1000;

/// Rows assumed per shard until statistics exist.
const ROWS_PER_SHARD_ESTIMATE: f64 = 1000.0;
/// Cost of one HTTP round trip (all shards go in parallel).
const REQUEST_COST: f64 = 100.0;
/// Extra cost per shard contacted: each one is a request, a cursor and a
/// stream to merge, so fewer shards is cheaper even in parallel.
const PER_SHARD_COST: f64 = 10.0;

/// What a ForeignScan plan carries from planning to execution (as JSON in
/// fdw_private, so it survives plan copying and caching).
#[derive(Debug, Serialize, Deserialize)]
pub struct ScanPlan {
    /// Attribute numbers fetched, in the order of the remote SELECT list.
    pub retrieved: Vec<i16>,
    /// The pushed-down restriction (a conjunction), over topology columns.
    pub pushed: Vec<Pred>,
    /// One per fdw_exprs entry: how its value is converted.
    pub params: Vec<ParamSpec>,
    /// Stages of the query above the scan that stay in Postgres, and why.
    #[serde(default)]
    pub not_pushed: Vec<String>,
    /// A pushed join (`join.rs`): then `retrieved` numbers the scan
    /// tuple's columns and `pushed` is empty; the join says what runs.
    #[serde(default)]
    pub join: Option<super::join::JoinSpec>,
}

impl ScanPlan {
    /// What each shard is sent: the retrieved columns.
    pub fn statement(&self, topology: &TableTopology) -> StatementKind {
        StatementKind::Select {
            columns: self
                .retrieved
                .iter()
                .map(|&attnum| {
                    topology.column_index(attnum).unwrap_or_else(|| {
                        error!(
                            "conductor: column {attnum} is not in the topology; re-plan the query"
                        )
                    })
                })
                .collect(),
        }
    }
}

/// The shard plan of a scan or direct modify with its parameters bound; a
/// failure (a value with no exact node form) is an ERROR.
pub fn bound_plan(
    topology: &TableTopology,
    pushed: &[Pred],
    bindings: &[Binding],
    kind: &StatementKind,
) -> ShardPlan {
    bound_plan_routed(topology, pushed, bindings, kind).0
}

/// [`bound_plan`], and the virtual-index route it took (its shards looked
/// up on the nodes), if any.
fn bound_plan_routed(
    topology: &TableTopology,
    pushed: &[Pred],
    bindings: &[Binding],
    kind: &StatementKind,
) -> (ShardPlan, Option<crate::vindex::IndexRoute>) {
    let route = crate::vindex::index_route(topology, pushed, bindings);
    let within = route.as_ref().map(|r| crate::vindex::within(topology, r));
    let plan = ShardPlan::build_within(topology, pushed, bindings, kind, within.as_ref())
        .unwrap_or_else(|e| {
            raise(
                PgSqlErrorCode::ERRCODE_FDW_ERROR,
                format!("conductor: cannot build the shard statements: {e}"),
            )
            .error()
        });
    (plan, route)
}

/// The restriction clauses of a base relation split into pushed IR and
/// local clauses.
unsafe fn lower_clauses(
    lowering: &mut Lowering,
    clauses: *mut pg_sys::List,
) -> (Vec<Pred>, *mut pg_sys::List) {
    let mut pushed = Vec::new();
    let mut local: *mut pg_sys::List = std::ptr::null_mut();
    // SAFETY: clauses is a List of RestrictInfo from the planner.
    unsafe {
        for rinfo in PgList::<pg_sys::RestrictInfo>::from_pg(clauses).iter_ptr() {
            if (*rinfo).pseudoconstant {
                continue; // the planner evaluates these itself
            }
            let clause = (*rinfo).clause;
            match lowering.lower(clause.cast()) {
                Some(p) => pushed.push(p),
                None => local = pg_sys::lappend(local, clause.cast()),
            }
        }
    }
    (pushed, local)
}

/// How a read of `plan` must run: through this transaction's remote
/// transactions with this access, or (None) streamed outside any
/// transaction. `writes` marks rows that will be written or are locked.
pub fn read_access(
    topology: &TableTopology,
    plan: &ShardPlan,
    writes: bool,
) -> Option<streams::Access> {
    let server = topology.server_id.to_u32();
    let reads_own_writes = plan
        .by_node(topology)
        .iter()
        .any(|n| streams::has_stream(&(server, n.location.node_id.clone())));
    // SAFETY: reads backend transaction state.
    let repeatable =
        unsafe { pg_sys::XactIsoLevel } >= pg_sys::XACT_REPEATABLE_READ as std::ffi::c_int;
    if writes {
        // Rows that will be written or are locked are read holding the
        // node's write lock (BEGIN IMMEDIATE): concurrent writers and
        // lockers of the node wait for this transaction.
        Some(streams::Access::Write)
    } else if repeatable {
        // REPEATABLE READ / SERIALIZABLE: every read of a node in this
        // transaction sees the snapshot its first read pinned (and its own
        // writes).
        Some(streams::Access::Read)
    } else if reads_own_writes {
        // READ COMMITTED in a transaction that wrote to a node the scan
        // reads: it sees its writes there. The scan's other nodes are read
        // as outside a transaction (`streams::run_plan`): a plain read never
        // waits for another transaction's write lock.
        Some(streams::Access::Read)
    } else {
        None
    }
}

fn scan_cost(shards: usize, rows: f64) -> (f64, f64) {
    // SAFETY: reading a planner GUC.
    let per_row = unsafe { pg_sys::cpu_tuple_cost } * 2.0;
    let startup = REQUEST_COST + PER_SHARD_COST * shards as f64;
    (startup, startup + rows * per_row)
}

/// Offer a scan path visiting `shards` shards and returning `rows` rows,
/// parameterized by `required_outer` (null: not parameterized).
unsafe fn add_scan_path(
    root: *mut pg_sys::PlannerInfo,
    baserel: *mut pg_sys::RelOptInfo,
    rows: f64,
    shards: usize,
    required_outer: pg_sys::Relids,
) {
    let (startup, total) = scan_cost(shards, rows);
    // SAFETY: planner structures valid for the callback; the path is
    // palloc'd in the planner's context.
    unsafe {
        let path = pg_sys::create_foreignscan_path(
            root,
            baserel,
            std::ptr::null_mut(),
            rows,
            startup,
            total,
            std::ptr::null_mut(),
            required_outer,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        );
        pg_sys::add_path(baserel, path.cast());
    }
}

unsafe fn rte_relid(root: *mut pg_sys::PlannerInfo, relid: u32) -> pg_sys::Oid {
    // SAFETY: simple_rte_array has an entry for every base relation index.
    unsafe { (**(*root).simple_rte_array.add(relid as usize)).relid }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn get_foreign_rel_size(
    root: *mut pg_sys::PlannerInfo,
    baserel: *mut pg_sys::RelOptInfo,
    relid: pg_sys::Oid,
) {
    let topology = cache::table(relid);
    // SAFETY: planner structures are valid for the duration of the callback.
    unsafe {
        if (*baserel).reloptkind == pg_sys::RelOptKind::RELOPT_OTHER_MEMBER_REL {
            crate::fdw::refuse_written_system_columns(root, (*baserel).relid, &topology.name);
        } else {
            crate::fdw::refuse_system_columns(
                (*(*baserel).reltarget).exprs.cast(),
                None,
                &topology.name,
            );
            crate::fdw::refuse_system_columns(
                pg_sys::extract_actual_clauses((*baserel).baserestrictinfo, false).cast(),
                None,
                &topology.name,
            );
        }
        let selectivity = pg_sys::clauselist_selectivity(
            root,
            (*baserel).baserestrictinfo,
            (*baserel).relid as i32,
            pg_sys::JoinType::JOIN_INNER,
            std::ptr::null_mut(),
        );
        // reltuples once ANALYZE has run (-1 before: Postgres 14+), else a
        // fixed guess per shard.
        let total = if (*baserel).tuples >= 0.0 {
            (*baserel).tuples
        } else {
            let guess = ROWS_PER_SHARD_ESTIMATE * topology.shard_count() as f64;
            (*baserel).tuples = guess;
            guess
        };
        let mut rows = total * selectivity;
        // A lookup of constant keys when the shard key is the whole primary
        // key returns at most one row per key, statistics or not.
        if topology.primary_key == [topology.key_index] {
            let mut lowering = Lowering::new(&topology, (*baserel).relid);
            let (pushed, _) = lower_clauses(&mut lowering, (*baserel).baserestrictinfo);
            if let Some(keys) = planned_key_values(&topology, &pushed) {
                rows = rows.min(keys as f64);
            }
        }
        (*baserel).rows = pg_sys::clamp_row_est(rows);
    }
}

/// Matches the equivalence-class member that is this relation's shard key.
#[pg_guard]
unsafe extern "C-unwind" fn is_shard_key_member(
    _root: *mut pg_sys::PlannerInfo,
    rel: *mut pg_sys::RelOptInfo,
    _ec: *mut pg_sys::EquivalenceClass,
    em: *mut pg_sys::EquivalenceMember,
    arg: *mut std::ffi::c_void,
) -> bool {
    // SAFETY: arg points at the key's attnum for the duration of the call.
    unsafe {
        let mut expr = (*em).em_expr as *mut pg_sys::Node;
        while !expr.is_null() && (*expr).type_ == pg_sys::NodeTag::T_RelabelType {
            expr = (*(expr as *mut pg_sys::RelabelType)).arg.cast();
        }
        if expr.is_null() || (*expr).type_ != pg_sys::NodeTag::T_Var {
            return false;
        }
        let var = &*(expr as *mut pg_sys::Var);
        var.varno == (*rel).relid as i32
            && var.varlevelsup == 0
            && var.varattno == *(arg as *const i16)
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn get_foreign_paths(
    root: *mut pg_sys::PlannerInfo,
    baserel: *mut pg_sys::RelOptInfo,
    relid: pg_sys::Oid,
) {
    let topology = cache::table(relid);
    // SAFETY: planner structures are valid for the duration of the callback;
    // paths are palloc'd in the planner's context.
    unsafe {
        let mut lowering = Lowering::new(&topology, (*baserel).relid);
        let (pushed, _) = lower_clauses(&mut lowering, (*baserel).baserestrictinfo);
        add_scan_path(
            root,
            baserel,
            (*baserel).rows,
            planned_shards(&topology, &pushed),
            std::ptr::null_mut(),
        );

        // `key = outer.col` join clauses: a parameterized path that visits
        // one shard per outer row, for nested loops.
        let mut key_attnum = topology.key().attnum;
        let clauses = pg_sys::generate_implied_equalities_for_column(
            root,
            baserel,
            Some(is_shard_key_member),
            (&mut key_attnum as *mut i16).cast(),
            (*baserel).lateral_referencers,
        );
        for rinfo in PgList::<pg_sys::RestrictInfo>::from_pg(clauses).iter_ptr() {
            let mut probe = Lowering::new(&topology, (*baserel).relid);
            let Some(pred) = probe.lower((*rinfo).clause.cast()) else {
                continue;
            };
            let mut preds = pushed.clone();
            preds.push(pred);
            let mut required = pg_sys::bms_union((*rinfo).clause_relids, (*baserel).lateral_relids);
            required = pg_sys::bms_del_member(required, (*baserel).relid as i32);
            if pg_sys::bms_is_empty(required) {
                continue;
            }
            let info = pg_sys::get_baserel_parampathinfo(root, baserel, required);
            add_scan_path(
                root,
                baserel,
                (*info).ppi_rows,
                planned_shards(&topology, &preds),
                required,
            );
        }
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn get_foreign_plan(
    root: *mut pg_sys::PlannerInfo,
    baserel: *mut pg_sys::RelOptInfo,
    _relid: pg_sys::Oid,
    _best_path: *mut pg_sys::ForeignPath,
    tlist: *mut pg_sys::List,
    scan_clauses: *mut pg_sys::List,
    outer_plan: *mut pg_sys::Plan,
) -> *mut pg_sys::ForeignScan {
    // SAFETY: planner structures are valid for the duration of the callback;
    // every list built here is palloc'd in the planner's memory context.
    unsafe {
        if (*baserel).reloptkind == pg_sys::RelOptKind::RELOPT_UPPER_REL {
            return super::upper::get_foreign_plan(_best_path, tlist, outer_plan);
        }
        if (*baserel).reloptkind == pg_sys::RelOptKind::RELOPT_JOINREL {
            return super::join::get_foreign_plan(_best_path, tlist, outer_plan);
        }
        let scan_relid = (*baserel).relid;
        let topology = cache::table(rte_relid(root, scan_relid));
        let mut lowering = Lowering::new(&topology, scan_relid);
        let (pushed, local_quals) = lower_clauses(&mut lowering, scan_clauses);

        // Columns to fetch: those the query returns and those the local
        // filters read (pushed filters run on the node).
        let mut attrs: *mut pg_sys::Bitmapset = std::ptr::null_mut();
        pg_sys::pull_varattnos((*(*baserel).reltarget).exprs.cast(), scan_relid, &mut attrs);
        pg_sys::pull_varattnos(local_quals.cast(), scan_relid, &mut attrs);
        let offset = pg_sys::FirstLowInvalidHeapAttributeNumber;
        let mut retrieved = Vec::new();
        let mut member = -1;
        loop {
            member = pg_sys::bms_next_member(attrs, member);
            if member < 0 {
                break;
            }
            match member + offset {
                0 => {
                    retrieved = topology.columns.iter().map(|c| c.attnum).collect();
                    break;
                }
                attnum if attnum > 0 => retrieved.push(attnum as i16),
                _ => {} // system columns: a foreign table has none to fetch
            }
        }

        let mut fdw_exprs: *mut pg_sys::List = std::ptr::null_mut();
        for (expr, _) in &lowering.params {
            fdw_exprs = pg_sys::lappend(fdw_exprs, (*expr).cast());
        }
        let plan = ScanPlan {
            retrieved,
            pushed,
            params: lowering.params.iter().map(|(_, s)| *s).collect(),
            not_pushed: super::upper::not_pushed_reasons(baserel),
            join: None,
        };
        let fdw_private = super::private_from(&plan);
        pg_sys::make_foreignscan(
            tlist,
            local_quals,
            scan_relid,
            fdw_exprs,
            fdw_private,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            outer_plan,
        )
    }
}

/// Where a scan is in its life.
enum Phase {
    /// Nothing sent yet (EXPLAIN without ANALYZE never leaves this).
    NotStarted,
    /// Rows stream from every target shard.
    Streaming(Box<ScanHandle>),
    /// Rows read whole through this transaction's streams, per shard.
    Materialized(VecDeque<(u32, Vec<Vec<Value>>)>),
    /// Every row was handed out.
    Finished,
}

/// A scan in progress. Lives in the executor's memory context: if the query
/// fails, deleting that context drops it, which drops the executor handle
/// and with it every in-flight request.
struct ScanState {
    /// The scanned table; of a pushed join, the outer table (whose shard
    /// locations are the inner table's too).
    topology: Rc<TableTopology>,
    /// The inner table of a pushed join.
    inner: Option<Rc<TableTopology>>,
    plan: ScanPlan,
    statement: StatementKind,
    codecs: Vec<ColumnCodec>,
    /// Runtime parameters: their expression states and array element types.
    params: Vec<(*mut pg_sys::ExprState, pg_sys::Oid)>,
    econtext: *mut pg_sys::ExprContext,
    phase: Phase,
    /// The scan finds the rows an UPDATE/DELETE of this table changes: it
    /// reads inside the transaction that will write them.
    for_modify: bool,
    /// Refuse to read rows changed since the statement's (or cursor's)
    /// snapshot (`xact::changed`). Not for the scan that feeds this
    /// table's own UPDATE/DELETE, which meets a row it changed only when a
    /// join hands it over twice, and then skips it as Postgres does; but
    /// it is when a WITH of the statement may have changed the rows.
    check_changes: bool,
    /// The rows are locked (`FOR UPDATE`/`NO KEY UPDATE`/`SHARE`/`KEY
    /// SHARE`) with this wait policy: the scan reads inside the node's write
    /// transaction.
    row_lock: Option<pg_sys::LockWaitPolicy::Type>,
    /// The rows of one shard being handed out.
    rows: std::vec::IntoIter<Vec<Value>>,
    current_shard: u32,
    /// The shard plan of the latest execution, for EXPLAIN ANALYZE.
    last_plan: Option<ShardPlan>,
    /// Per-shard figures of finished executions, for EXPLAIN ANALYZE.
    shard_stats: Vec<ShardStats>,
    /// Reads inside the node's write transaction: per node, how long they
    /// waited for its write lock (EXPLAIN ANALYZE).
    lock_waits: std::collections::BTreeMap<String, Duration>,
    /// Shards whose node failed while `conductor.on_shard_failure = skip`.
    skipped: Vec<ShardError>,
    /// Copies of a reference table whose node failed this read before it
    /// sent a row (node URLs): the read goes on from another copy.
    failed_copies: Vec<String>,
    /// The running scan has handed rows out (it can no longer start over
    /// on another copy).
    delivered: bool,
    /// Nodes the running scan reads from (their health is recorded at the end).
    scan_urls: Vec<String>,
    /// The running scan's requests, counted as in flight to their nodes.
    in_flight: Option<crate::stats::InFlight>,
    /// The running scan is routed through a virtual index by its
    /// equalities alone: a shard that sends no row points at an extra entry.
    index_route: Option<crate::vindex::IndexRoute>,
}

impl ScanState {
    /// Plan with the current parameter values and start every target
    /// shard's query.
    unsafe fn start(&mut self) {
        let bindings = unsafe { eval_bindings(&self.params, &self.plan.params, self.econtext) };
        let topology = self.topology.for_reads(&self.failed_copies);
        self.delivered = false;
        let (plan, index_route) = match (&self.inner, &self.plan.join) {
            (Some(inner), Some(join)) => (
                ShardPlan::join(&topology, inner, &join.query, &bindings).unwrap_or_else(|e| {
                    raise(
                        PgSqlErrorCode::ERRCODE_FDW_ERROR,
                        format!("conductor: cannot build the shard statements: {e}"),
                    )
                    .error()
                }),
                None,
            ),
            _ => bound_plan_routed(&topology, &self.plan.pushed, &bindings, &self.statement),
        };
        if self.check_changes {
            changed::check_read(&topology, &plan, true);
            if let Some(inner) = &self.inner {
                changed::check_read(inner, &plan, false);
            }
        }
        let access = read_access(&topology, &plan, self.for_modify || self.row_lock.is_some());
        if let Some(access) = access {
            // A stream carries one request at a time, so these rows are
            // fetched whole rather than streamed.
            let rows = if access == streams::Access::Write {
                // Only a read that takes the write lock can wait for it.
                let mut waits = std::mem::take(&mut self.lock_waits);
                let wait = match self.row_lock {
                    Some(pg_sys::LockWaitPolicy::LockWaitError) => {
                        Some(remote::RowLockWait::NoWait)
                    }
                    Some(pg_sys::LockWaitPolicy::LockWaitSkip) => {
                        Some(remote::RowLockWait::SkipLocked)
                    }
                    _ => None,
                };
                let rows = remote::recording_lock_waits(&mut waits, || match wait {
                    Some(wait) => remote::locking_rows(&topology.name, wait, || {
                        self.read_through_streams(&plan, access)
                    }),
                    None => self.read_through_streams(&plan, access),
                });
                self.lock_waits = waits;
                rows
            } else {
                self.read_through_streams(&plan, access)
            };
            self.phase = Phase::Materialized(rows);
            self.last_plan = Some(plan);
            return;
        }
        stats::plan_sent(
            topology.relid,
            topology.shards.len(),
            &plan.shard_ids(),
            false,
        );
        // A pushed join reads the inner table's shards too (a reference
        // table's one copy is not a shard of interest).
        if let Some(inner) = self.inner.as_ref().filter(|t| !t.is_reference()) {
            stats::plan_sent(inner.relid, inner.shards.len(), &plan.shard_ids(), false);
        }
        if plan.keys.len() <= stats::KEYS_PER_STATEMENT {
            stats::routed_keys(topology.relid, &plan.keys);
        }
        // Key values that are the whole primary key, and values of a unique
        // virtual index, match at most one row each: such a lookup is
        // fetched in one request, not streamed.
        let bounded = (plan.max_keys_per_shard > 0
            && topology.primary_key == [topology.key_index]
            && plan.max_keys_per_shard <= BOUNDED_LOOKUP_KEYS)
            || index_route
                .as_ref()
                .and_then(|r| r.unique_values(&topology))
                .is_some_and(|n| n <= BOUNDED_LOOKUP_KEYS);
        self.index_route = index_route.filter(crate::vindex::IndexRoute::observes_extras);
        let (queries, refused) = reachable_queries(&topology, &plan);
        self.skipped.extend(refused);
        self.last_plan = Some(plan);
        self.scan_urls = queries.iter().map(|q| q.endpoint.url.clone()).collect();
        self.in_flight =
            Some(crate::stats::InFlight::per_node(queries.iter().map(|q| {
                (q.endpoint.url.as_str(), q.endpoint.node_id.as_str())
            })));
        if queries.is_empty() {
            self.phase = Phase::Finished;
            warn_skipped(&mut self.skipped);
            return;
        }
        // With no column needed (count(*)), the statement asks for one NULL.
        self.phase = Phase::Streaming(Box::new(remote::scan(
            queries,
            self.codecs.len().max(1),
            if bounded {
                remote::ShardRows::Few
            } else {
                remote::ShardRows::Unknown
            },
        )));
    }

    fn read_through_streams(
        &self,
        plan: &ShardPlan,
        access: streams::Access,
    ) -> VecDeque<(u32, Vec<Vec<Value>>)> {
        let width = self.codecs.len().max(1);
        let mut out = VecDeque::new();
        for (shard, r) in streams::run_plan(&self.topology, plan, access) {
            if r.rows.iter().any(|row| row.len() != width) {
                let p = &self.topology.shards[shard as usize];
                raise(
                    PgSqlErrorCode::ERRCODE_FDW_INVALID_DATA_TYPE,
                    "conductor: node returned rows of the wrong width",
                )
                .detail(format!("node {} ({}), shard {shard}", p.node_id, p.url))
                .error()
            }
            out.push_back((shard, r.rows));
        }
        out
    }

    /// The shard plan as far as planning decides it (EXPLAIN before
    /// execution).
    fn template(&self) -> ShardPlan {
        match (&self.inner, &self.plan.join) {
            (Some(inner), Some(join)) => {
                ShardPlan::join_template(&self.topology, inner, &join.query)
            }
            _ => ShardPlan::template(&self.topology, &self.plan.pushed, &self.statement),
        }
    }

    /// Ends a scan its reader leaves before the last row (a LIMIT or EXISTS
    /// satisfied in Postgres, a cursor closed, a rescan): the requests it
    /// sent count as far as they got. Dropping the handle cancels them.
    fn stop(&mut self) {
        self.stop_failed(None)
    }

    /// [`stop`](Self::stop) at a shard's failure: the failed node's request
    /// is counted as failed, not here.
    fn stop_failed(&mut self, failed: Option<&str>) {
        if let Phase::Streaming(handle) = std::mem::replace(&mut self.phase, Phase::Finished) {
            let stats =
                crate::remote::count_stopped_scan(&handle, &self.topology, &self.scan_urls, failed);
            self.shard_stats.extend(stats);
        }
        self.in_flight = None;
    }

    fn finish(&mut self) {
        if let Phase::Streaming(handle) = std::mem::replace(&mut self.phase, Phase::Finished) {
            crate::remote::log_scan(&self.topology.table.name, handle.stats());
            crate::remote::count_scan(self.topology.relid, &self.scan_urls, handle.stats());
            if let Some(route) = self.index_route.take() {
                let empty: Vec<u32> = handle
                    .stats()
                    .iter()
                    .filter(|s| s.rows == 0 && s.elapsed.is_some())
                    .map(|s| s.shard_id)
                    .collect();
                if !empty.is_empty() {
                    crate::vindex::observe_empty_shards(&self.topology, &route, &empty);
                }
            }
            self.shard_stats.extend_from_slice(handle.stats());
        }
    }
}

/// Evaluate runtime parameters (ExprStates of fdw_exprs, with the element
/// type of array parameters) in the per-tuple context and convert them.
///
/// # Safety
/// The states must have been built by ExecInitExprList for the node whose
/// expression context `econtext` is.
pub unsafe fn eval_bindings(
    states: &[(*mut pg_sys::ExprState, pg_sys::Oid)],
    specs: &[ParamSpec],
    econtext: *mut pg_sys::ExprContext,
) -> Vec<Binding> {
    let mut bindings = Vec::with_capacity(states.len());
    for ((state, element_type), spec) in states.iter().zip(specs) {
        let mut is_null = false;
        // SAFETY: per the contract; the result is converted into Rust values
        // right away.
        let datum = unsafe { pg_sys::ExecEvalExprSwitchContext(*state, econtext, &mut is_null) };
        let binding = if spec.list {
            Binding::List(if is_null {
                None
            } else {
                Some(
                    unsafe { deconstruct(datum, *element_type, spec.ty) }
                        .unwrap_or_else(|| error!("conductor: cannot convert an array parameter")),
                )
            })
        } else {
            Binding::Value(if is_null {
                None
            } else {
                Some(
                    unsafe { crate::convert::typed_from_datum(spec.ty, datum) }
                        .unwrap_or_else(|| error!("conductor: cannot convert a parameter")),
                )
            })
        };
        bindings.push(binding);
    }
    bindings
}

/// The parameters' ExprStates and array element types, for eval_bindings.
///
/// # Safety
/// `exprs` is a plan's fdw_exprs and `parent` its PlanState.
pub unsafe fn init_params(
    exprs: *mut pg_sys::List,
    parent: *mut pg_sys::PlanState,
) -> Vec<(*mut pg_sys::ExprState, pg_sys::Oid)> {
    // SAFETY: per the contract.
    unsafe {
        let states = pg_sys::ExecInitExprList(exprs, parent);
        PgList::<pg_sys::Node>::from_pg(exprs)
            .iter_ptr()
            .zip(PgList::<pg_sys::ExprState>::from_pg(states).iter_ptr())
            .map(|(expr, state)| (state, pg_sys::get_element_type(pg_sys::exprType(expr))))
            .collect()
    }
}

/// The row lock the statement takes on this scan's rows (`SELECT … FOR
/// UPDATE` and friends), with its wait policy: the ExecRowMark of the
/// scan's range table entry (Postgres gives a foreign table without
/// GetForeignRowMarkType a ROW_MARK_COPY mark carrying the strength).
unsafe fn row_lock(node: *mut pg_sys::ForeignScanState) -> Option<pg_sys::LockWaitPolicy::Type> {
    // SAFETY: executor state of a scan node being initialized; InitPlan
    // filled es_rowmarks (es_range_table_size entries) before any node.
    unsafe {
        let estate = (*node).ss.ps.state;
        let plan = (*node).ss.ps.plan as *mut pg_sys::Scan;
        let rti = (*plan).scanrelid as usize;
        if (*estate).es_rowmarks.is_null()
            || rti == 0
            || rti > (*estate).es_range_table_size as usize
        {
            return None;
        }
        let erm = *(*estate).es_rowmarks.add(rti - 1);
        if erm.is_null() || (*erm).strength == pg_sys::LockClauseStrength::LCS_NONE {
            return None;
        }
        Some((*erm).waitPolicy)
    }
}

/// Whether this scan's relation is also the target of the statement's
/// UPDATE or DELETE (its result relation is set up before its scan).
unsafe fn feeds_modify(node: *mut pg_sys::ForeignScanState) -> bool {
    // SAFETY: executor state of a scan node being initialized.
    unsafe {
        let estate = (*node).ss.ps.state;
        let plan = (*node).ss.ps.plan as *mut pg_sys::Scan;
        let rti = (*plan).scanrelid as usize;
        !(*estate).es_result_relations.is_null()
            && rti > 0
            && rti <= (*estate).es_range_table_size as usize
            && !(*(*estate).es_result_relations.add(rti - 1)).is_null()
    }
}

/// Whether the running statement has a data-modifying WITH.
unsafe fn modifying_cte(node: *mut pg_sys::ForeignScanState) -> bool {
    // SAFETY: executor state of a scan node being initialized.
    unsafe {
        let stmt = (*(*node).ss.ps.state).es_plannedstmt;
        !stmt.is_null() && (*stmt).hasModifyingCTE
    }
}

unsafe fn state<'a>(node: *mut pg_sys::ForeignScanState) -> &'a mut ScanState {
    // SAFETY: fdw_state was set by begin_foreign_scan to a live ScanState.
    unsafe { &mut *((*node).fdw_state as *mut ScanState) }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn begin_foreign_scan(
    node: *mut pg_sys::ForeignScanState,
    _eflags: i32,
) {
    // SAFETY: node is the executor's scan state; its plan is our ForeignScan
    // whose fdw_private get_foreign_plan built.
    unsafe {
        if super::upper::is_upper(node) {
            return super::upper::begin_foreign_scan(node);
        }
        let plan_node = (*node).ss.ps.plan as *mut pg_sys::ForeignScan;
        let plan: ScanPlan = super::private_to((*plan_node).fdw_private);
        let (topology, inner, statement, codecs) = match &plan.join {
            Some(join) => {
                let outer = cache::table(pg_sys::Oid::from(join.outer));
                let inner = cache::table(pg_sys::Oid::from(join.inner));
                super::join::check_still_pushable(&outer, &inner);
                let n = outer.columns.len();
                let codecs = join
                    .query
                    .outputs
                    .iter()
                    .map(|&c| {
                        if c < n {
                            outer.codec(c)
                        } else {
                            inner.codec(c - n)
                        }
                    })
                    .collect();
                let statement = StatementKind::Select {
                    columns: Vec::new(),
                };
                (outer, Some(inner), statement, codecs)
            }
            None => {
                let relid = (*(*node).ss.ss_currentRelation).rd_id;
                let topology = cache::table(relid);
                let statement = plan.statement(&topology);
                let StatementKind::Select { columns } = &statement else {
                    unreachable!("a scan selects")
                };
                let codecs = columns.iter().map(|&i| topology.codec(i)).collect();
                (topology, None, statement, codecs)
            }
        };
        let params = init_params((*plan_node).fdw_exprs, node.cast());
        let state = ScanState {
            topology,
            inner,
            plan,
            statement,
            codecs,
            params,
            econtext: (*node).ss.ps.ps_ExprContext,
            phase: Phase::NotStarted,
            for_modify: feeds_modify(node),
            check_changes: !feeds_modify(node) || modifying_cte(node),
            row_lock: row_lock(node),
            rows: Vec::new().into_iter(),
            current_shard: 0,
            last_plan: None,
            shard_stats: Vec::new(),
            lock_waits: Default::default(),
            skipped: Vec::new(),
            failed_copies: Vec::new(),
            delivered: false,
            scan_urls: Vec::new(),
            in_flight: None,
            index_route: None,
        };
        // Nothing is sent before the first row is asked for, so EXPLAIN
        // without ANALYZE contacts no node.
        (*node).fdw_state = PgMemoryContexts::CurrentMemoryContext
            .leak_and_drop_on_delete(state)
            .cast();
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn iterate_foreign_scan(
    node: *mut pg_sys::ForeignScanState,
) -> *mut pg_sys::TupleTableSlot {
    // SAFETY: called by the executor with our scan state; the slot belongs to
    // the node and its arrays have natts entries.
    unsafe {
        if super::upper::is_upper(node) {
            let _acting = ActingUser::for_scan(node);
            return super::upper::iterate_foreign_scan(node);
        }
        let state = state(node);
        let slot = (*node).ss.ss_ScanTupleSlot;
        pg_sys::ExecClearTuple(slot);
        loop {
            if let Some(row) = state.rows.next() {
                store_row(state, slot, row);
                return slot;
            }
            // Only a row not yet received may mean a request: the rows
            // already here are served without looking the role up.
            let _acting = ActingUser::for_scan(node);
            let poll = match &mut state.phase {
                Phase::Finished => return slot,
                Phase::NotStarted => {
                    state.start();
                    continue;
                }
                Phase::Materialized(shards) => match shards.pop_front() {
                    Some((shard, rows)) => {
                        state.current_shard = shard;
                        state.rows = rows.into_iter();
                        continue;
                    }
                    None => {
                        state.phase = Phase::Finished;
                        continue;
                    }
                },
                Phase::Streaming(handle) => handle.next(POLL_INTERVAL),
            };
            match poll {
                ScanPoll::Rows(chunk) => {
                    state.current_shard = chunk.shard_id;
                    state.delivered |= !chunk.rows.is_empty();
                    state.rows = chunk.rows.into_iter();
                }
                ScanPoll::Pending => {
                    pgrx::check_for_interrupts!();
                }
                ScanPoll::Done => {
                    state.finish();
                    state.in_flight = None;
                    scan_done(std::mem::take(&mut state.scan_urls), &mut state.skipped);
                }
                ScanPoll::Failed(err)
                    if fails_over(
                        &state.topology,
                        &err,
                        state.delivered,
                        &mut state.failed_copies,
                    ) =>
                {
                    state.stop_failed(Some(&err.url));
                    state.phase = Phase::NotStarted;
                }
                ScanPoll::Failed(err) if skippable(&err) => skip_failed(err, &mut state.skipped),
                ScanPoll::Failed(err) => {
                    // The other nodes' requests were sent: they count.
                    state.stop_failed(Some(&err.url));
                    fail_scan(&err)
                }
            }
        }
    }
}

/// The plan's statements as requests to nodes that are not cooling down;
/// a refused one is an ERROR, or (under `conductor.on_shard_failure =
/// skip`) returned to be reported as skipped.
pub fn reachable_queries(
    topology: &TableTopology,
    plan: &ShardPlan,
) -> (Vec<ShardQuery>, Vec<ShardError>) {
    let token = crate::catalog::credentials::token_for(topology.server_id);
    let skip = crate::gucs::ON_SHARD_FAILURE.get() == crate::gucs::OnShardFailure::Skip;
    let mut queries = Vec::with_capacity(plan.statements.len());
    let mut refused = Vec::new();
    for s in &plan.statements {
        let location = &topology.shards[s.shard_id as usize];
        let endpoint = remote::endpoint(location, token.clone());
        match crate::health::refusal(&endpoint, Some(s.shard_id)) {
            None => queries.push(ShardQuery {
                shard_id: s.shard_id,
                endpoint,
                stmt: s.stmt.clone(),
            }),
            Some(err) => {
                if !skip {
                    remote::report_shard_error(&err);
                }
                refused.push(err);
            }
        }
    }
    (queries, refused)
}

/// A scan read to its end: the nodes it read from answered (all but those
/// of the skipped shards), then the warning naming the skipped shards.
pub fn scan_done(urls: Vec<String>, skipped: &mut Vec<ShardError>) {
    for url in urls {
        if !skipped.iter().any(|e| e.url == url) {
            crate::health::record_success(&url);
        }
    }
    warn_skipped(skipped);
}

/// Whether the scan goes on without the failed shard
/// (`conductor.on_shard_failure = skip`; a failure of no one shard never).
pub fn skippable(err: &ShardError) -> bool {
    err.shard_id.is_some()
        && crate::gucs::ON_SHARD_FAILURE.get() == crate::gucs::OnShardFailure::Skip
}

/// Goes on without a failed shard; its node's failure counts once per
/// scan, however many of its shards failed.
pub fn skip_failed(err: ShardError, skipped: &mut Vec<ShardError>) {
    if !skipped.iter().any(|e| e.url == err.url) {
        crate::health::record_failure(&err);
        crate::remote::count_failed(&err);
    }
    skipped.push(err)
}

/// Whether a read of a reference table whose copy failed goes on from
/// another copy: the node could not serve it (unreachable, broke off,
/// silent, 5xx), no row of it was handed out yet, and a copy whose node has
/// not failed this read and is not cooling down remains. The failure then
/// counts against its node, and `failed` names it. An SQL error is the
/// statement's own, the same on every copy: it ends the read.
pub fn fails_over(
    topology: &TableTopology,
    err: &ShardError,
    delivered: bool,
    failed: &mut Vec<String>,
) -> bool {
    if !topology.is_reference() || delivered || !err.error.is_transient() {
        return false;
    }
    failed.push(err.url.clone());
    if topology.read_copy(failed).is_none() {
        // None left: the read fails (or is skipped) as any other.
        failed.pop();
        return false;
    }
    crate::health::record_failure(err);
    crate::remote::count_failed(err);
    true
}

/// A failed shard ends the statement: counted against its node, raised.
pub fn fail_scan(err: &ShardError) -> ! {
    crate::health::record_failure(err);
    crate::remote::count_failed(err);
    remote::report_shard_error(err)
}

/// `conductor.on_shard_failure = skip`: one WARNING naming every shard whose
/// rows are missing (or incomplete, if its node failed mid-stream).
pub fn warn_skipped(skipped: &mut Vec<ShardError>) {
    if skipped.is_empty() {
        return;
    }
    let shards: Vec<String> = skipped
        .iter()
        .map(|e| format!("shard {}", e.shard_id.unwrap_or_default()))
        .collect();
    let details: Vec<String> = skipped.iter().map(|e| e.to_string()).collect();
    raise(
        PgSqlErrorCode::ERRCODE_WARNING,
        format!(
            "conductor: rows of {} are missing (conductor.on_shard_failure = skip)",
            shards.join(", ")
        ),
    )
    .detail(details.join("; "))
    .warning();
    skipped.clear();
}

unsafe fn store_row(state: &ScanState, slot: *mut pg_sys::TupleTableSlot, row: Vec<Value>) {
    let placement = &state.topology.shards[state.current_shard as usize];
    // SAFETY: the slot belongs to this scan's relation.
    unsafe {
        store_values(
            slot,
            &row,
            &state.codecs,
            state.plan.retrieved.iter().copied(),
            || {
                format!(
                    "node {} ({}), shard {}",
                    placement.node_id, placement.url, placement.shard_id
                )
            },
        )
    }
}

/// Put a node's row into a slot: `row[i]` is the column `attnums[i]`,
/// converted by `codecs[i]`; other columns are NULL. Datums are allocated in
/// CurrentMemoryContext (the per-tuple context during a scan). A value that
/// does not fit its column is an ERROR whose DETAIL is `origin()`.
///
/// # Safety
/// The slot must belong to the relation the attribute numbers refer to.
pub unsafe fn store_values(
    slot: *mut pg_sys::TupleTableSlot,
    row: &[Value],
    codecs: &[ColumnCodec],
    attnums: impl Iterator<Item = i16>,
    origin: impl Fn() -> String,
) {
    // SAFETY: the slot's arrays have natts entries.
    unsafe {
        let natts = (*(*slot).tts_tupleDescriptor).natts as usize;
        let values = std::slice::from_raw_parts_mut((*slot).tts_values, natts);
        let nulls = std::slice::from_raw_parts_mut((*slot).tts_isnull, natts);
        nulls.fill(true);
        for ((value, codec), attnum) in row.iter().zip(codecs).zip(attnums) {
            let index = attnum as usize - 1;
            match codec.decode(value) {
                Ok(Some(datum)) => {
                    values[index] = datum;
                    nulls[index] = false;
                }
                Ok(None) => {}
                Err(e) => raise(
                    PgSqlErrorCode::ERRCODE_FDW_INVALID_DATA_TYPE,
                    format!("conductor: node returned a value that does not fit: {e}"),
                )
                .detail(origin())
                .error(),
            }
        }
        pg_sys::ExecStoreVirtualTuple(slot);
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn re_scan_foreign_scan(node: *mut pg_sys::ForeignScanState) {
    // SAFETY: our scan state. Dropping the handle cancels in-flight
    // requests; parameters are re-evaluated and the scan re-routed.
    unsafe {
        let _acting = ActingUser::for_scan(node);
        if super::upper::is_upper(node) {
            return super::upper::re_scan_foreign_scan(node);
        }
        let state = state(node);
        state.stop();
        state.phase = Phase::NotStarted;
        state.rows = Vec::new().into_iter();
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn end_foreign_scan(node: *mut pg_sys::ForeignScanState) {
    // SAFETY: our scan state (null when EXPLAIN without ANALYZE never began it).
    unsafe {
        let _acting = ActingUser::for_scan(node);
        if super::upper::is_upper(node) {
            return super::upper::end_foreign_scan(node);
        }
        if !(*node).fdw_state.is_null() {
            state(node).stop();
        }
    }
}

#[pg_guard]
pub unsafe extern "C-unwind" fn explain_foreign_scan(
    node: *mut pg_sys::ForeignScanState,
    es: *mut pg_sys::ExplainState,
) {
    // SAFETY: our scan state and the explain state are valid here.
    unsafe {
        if super::upper::is_upper(node) {
            return super::upper::explain_foreign_scan(node, es);
        }
        let state = state(node);
        // After execution show the plan that ran; before it, the plan as
        // far as the plan's constants decide it.
        let plan = match &state.last_plan {
            Some(p) => p.clone(),
            None => {
                let mut p = state.template();
                // A pushed join is routed by its shard keys only.
                if state.plan.join.is_none() {
                    crate::vindex::annotate(&state.topology, &state.plan.pushed, &mut p);
                }
                p
            }
        };
        if let (Some(inner), Some(join)) = (&state.inner, &state.plan.join) {
            explain_text(
                c"Join",
                &super::join::describe(join, &state.topology, inner),
                es,
            );
        }
        let mut tables = vec![&*state.topology];
        tables.extend(state.inner.as_deref());
        explain_plan_tables(&tables, &plan, state.plan.params.len(), "", es);
        if !state.plan.not_pushed.is_empty() {
            explain_text(c"Not pushed", &state.plan.not_pushed.join("; "), es);
        }
        if (*es).analyze && !state.lock_waits.is_empty() {
            explain_text(
                c"Lock Wait",
                &remote::describe_lock_waits(&state.lock_waits),
                es,
            );
        }
        if (*es).analyze && !state.shard_stats.is_empty() {
            explain_shard_stats(&state.shard_stats, es);
        }
    }
}

/// The EXPLAIN lines of a shard plan: which shards and nodes, and with
/// VERBOSE what each node runs (the statement once when every shard runs
/// the same one but for its table's name, else one line per shard).
///
/// # Safety
/// `es` is the running EXPLAIN's state.
pub unsafe fn explain_plan(
    topology: &TableTopology,
    plan: &ShardPlan,
    params: usize,
    suffix: &str,
    es: *mut pg_sys::ExplainState,
) {
    // A direct write to a reference table runs on every copy.
    if topology.is_reference() && plan.kind != RouteKind::AtExecution {
        let copies: Vec<&str> = topology
            .replicas
            .iter()
            .map(|l| l.node_id.as_str())
            .collect();
        let shards = format!(
            "{} of {} ({}) on every copy: {}{suffix}",
            plan.shard_ids().len(),
            topology.shard_count(),
            plan.reason,
            copies.join(", ")
        );
        // SAFETY: per the contract.
        return unsafe { explain_shards(&[topology], plan, &shards, es) };
    }
    // SAFETY: per the contract.
    unsafe { explain_plan_tables(&[topology], plan, params, suffix, es) }
}

/// [`explain_plan`] of a plan whose statements name a shard of each of
/// `tables` (the first one's locations): a pushed join.
///
/// # Safety
/// `es` is the running EXPLAIN's state.
pub unsafe fn explain_plan_tables(
    tables: &[&TableTopology],
    plan: &ShardPlan,
    params: usize,
    suffix: &str,
    es: *mut pg_sys::ExplainState,
) {
    let topology = tables[0];
    let shards = match plan.kind {
        RouteKind::AtExecution if plan.reason.contains("through virtual index") => format!(
            "{}, of {} on {} nodes{suffix}",
            plan.reason,
            topology.shard_count(),
            topology.node_ids().len()
        ),
        RouteKind::AtExecution => format!(
            "chosen at execution from {params} parameter(s), of {} on {} nodes{suffix}",
            topology.shard_count(),
            topology.node_ids().len()
        ),
        _ => format!("{}{suffix}", plan.summary(topology)),
    };
    // SAFETY: per the contract.
    unsafe { explain_shards(tables, plan, &shards, es) }
}

/// The `Shards` line, and with VERBOSE the statements sent.
///
/// # Safety
/// `es` is the running EXPLAIN's state.
unsafe fn explain_shards(
    tables: &[&TableTopology],
    plan: &ShardPlan,
    shards: &str,
    es: *mut pg_sys::ExplainState,
) {
    // SAFETY: per the contract.
    unsafe {
        explain_text(c"Shards", shards, es);
        if !(*es).verbose {
            return;
        }
        // Values travel as arguments: the text shows `?` placeholders.
        let generic = |s: &conductor_core::plan::ShardStatement| {
            let mut sql = s.stmt.sql.clone().unwrap_or_default();
            for t in tables {
                // A reference table's one shard is joined with every shard.
                let i = if t.shards.len() == 1 {
                    0
                } else {
                    s.shard_id as usize
                };
                let table = &t.shards[i].remote_table;
                sql = sql.replace(&conductor_core::remote_sql::quote_ident(table), "<shard>");
            }
            sql
        };
        let Some(first) = plan.statements.first() else {
            return; // no shard: nothing is sent
        };
        let uniform = plan.statements.iter().all(|s| generic(s) == generic(first));
        if uniform {
            explain_text(c"Remote SQL", first.stmt.sql.as_deref().unwrap_or(""), es);
        } else {
            let lines: Vec<String> = plan
                .statements
                .iter()
                .map(|s| {
                    format!(
                        "shard {}: {}",
                        s.shard_id,
                        s.stmt.sql.as_deref().unwrap_or("")
                    )
                })
                .collect();
            explain_lines(c"Remote SQL", &lines, es);
        }
    }
}

/// The EXPLAIN ANALYZE line of each shard a scan read: its rows and time.
///
/// # Safety
/// `es` is the running EXPLAIN's state.
pub unsafe fn explain_shard_stats(stats: &[ShardStats], es: *mut pg_sys::ExplainState) {
    let lines: Vec<String> = stats
        .iter()
        .map(|s| {
            let ms = s.elapsed.map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0);
            format!(
                "{} on {}: rows={} time={ms:.3} ms",
                s.shard_id, s.node_id, s.rows
            )
        })
        .collect();
    // SAFETY: per the contract.
    unsafe { explain_lines(c"Shard", &lines, es) };
}

/// One EXPLAIN property per shard: a line each in the text format, one
/// list in the structured ones, where a repeated key would leave JSON and
/// YAML readers with the last shard's value only.
///
/// # Safety
/// `es` is the running EXPLAIN's state.
pub unsafe fn explain_lines(label: &CStr, values: &[String], es: *mut pg_sys::ExplainState) {
    if values.is_empty() {
        return;
    }
    // SAFETY: per the contract.
    unsafe {
        if (*es).format == pg_sys::ExplainFormat::EXPLAIN_FORMAT_TEXT {
            for v in values {
                explain_text(label, v, es);
            }
            return;
        }
        let mut list: *mut pg_sys::List = std::ptr::null_mut();
        for v in values {
            let v = CString::new(v.replace('\0', "")).expect("NULs removed");
            // pstrdup: the list outlives `v`, in the EXPLAIN's memory context.
            list = pg_sys::lappend(list, pg_sys::pstrdup(v.as_ptr()).cast());
        }
        pg_sys::ExplainPropertyList(label.as_ptr(), list, es);
    }
}

pub unsafe fn explain_text(label: &CStr, value: &str, es: *mut pg_sys::ExplainState) {
    let value = CString::new(value.replace('\0', "")).expect("NULs removed");
    // SAFETY: ExplainPropertyText copies both strings.
    unsafe { pg_sys::ExplainPropertyText(label.as_ptr(), value.as_ptr(), es) };
}
