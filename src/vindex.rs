//! Virtual indexes: keeping their entries on the nodes as rows are written,
//! and routing through them (docs/ARCHITECTURE.md, Virtual indexes).
//!
//! The invariant: a row committed on its shard has its entry (value…,
//! shard) committed in the index's lookup table. Writes keep it by making
//! every entry durable before the row it points at can commit. Lookup
//! tables live in the nodes' lookup databases (their own write locks, which
//! no transaction holds across requests) where the nodes have them, beside
//! the shards otherwise (sqld):
//!
//! - an entry whose lookup node's write lock this transaction does not hold
//!   (always, in a lookup database) is written and committed at once, in
//!   its own one-request transaction, before the row is written;
//! - an entry whose lookup node's write lock this transaction holds (a
//!   second connection would wait for it forever) is written in that
//!   node's remote transaction, and the commit order makes that node commit
//!   before the nodes of the rows it points at (`streams::commit_before`);
//!   the same node is one atomic commit.
//!
//! Entries are removed only by `verify_virtual_index(…, repair)`, and only
//! while holding the write lock of the owner's node and seeing no row there;
//! a writer therefore rechecks, once its rows are written (holding that same
//! lock), that its entries committed at once are still there.

use crate::catalog::TableTopology;
use crate::errors::raise;
use crate::remote::{self, ShardRequest};
use crate::xact::streams::{self, Access, NodeKey, NodeWork, ShardLabel};
use conductor_core::client::one_request_transaction;
use conductor_core::executor::ShardError;
use conductor_core::plan::Within;
use conductor_core::predicate::{Binding, Pred};
use conductor_core::vindex::{self, Entry, VirtualIndex};
use conductor_hrana::{
    PipelineReqBody, PipelineRespBody, Stmt, StmtResult, StreamRequest, StreamResponse,
    StreamResult, Value,
};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::collections::{BTreeMap, BTreeSet};

fn node_key(t: &TableTopology, shard: u32) -> NodeKey {
    (
        t.server_id.to_u32(),
        t.shards[shard as usize].node_id.clone(),
    )
}

fn endpoint(t: &TableTopology, shard: u32) -> conductor_core::NodeEndpoint {
    remote::endpoint(
        &t.shards[shard as usize],
        crate::catalog::credentials::token_for(t.server_id),
    )
}

/// Which database of a shard's node a job runs on.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Database {
    /// The node's database holding the shard tables.
    Shards,
    /// The node's lookup database: its own file and write lock, so entries
    /// can be committed at once while this transaction holds the shard
    /// tables' lock.
    Lookup,
}

/// Where an index's lookup tables live.
pub fn lookup_database(ix: &VirtualIndex) -> Database {
    if ix.lookup_database {
        Database::Lookup
    } else {
        Database::Shards
    }
}

/// The remote transaction key of `database` on `shard`'s node.
fn key_in(t: &TableTopology, shard: u32, database: Database) -> NodeKey {
    let (server, node) = node_key(t, shard);
    match database {
        Database::Shards => (server, node),
        Database::Lookup => (server, lookup_node_name(&node)),
    }
}

/// The name errors and statistics give a node's lookup database.
pub fn lookup_node_name(node_id: &str) -> String {
    format!("{node_id} (lookup database)")
}

/// The endpoint of `database` on `shard`'s node.
pub fn endpoint_in(
    t: &TableTopology,
    shard: u32,
    database: Database,
) -> conductor_core::NodeEndpoint {
    let mut e = endpoint(t, shard);
    if database == Database::Lookup {
        e.url = vindex::lookup_database_url(&e.url);
        e.node_id = lookup_node_name(&e.node_id);
    }
    e
}

/// Statements for the node of `shard` (any shard of the table on that
/// node), in one of its databases.
struct Job {
    shard: u32,
    database: Database,
    lock_table: String,
    stmts: Vec<Stmt>,
}

impl Job {
    /// On the node of shard `shard`, in its shard tables' database.
    fn on_shard(t: &TableTopology, shard: u32, stmts: Vec<Stmt>) -> Job {
        Job {
            shard,
            database: Database::Shards,
            lock_table: t.shards[shard as usize].remote_table.clone(),
            stmts,
        }
    }

    /// On index `ix`'s lookup shard `lshard`, wherever its lookup tables live.
    fn on_lookup(t: &TableTopology, ix: &VirtualIndex, lshard: u32, stmts: Vec<Stmt>) -> Job {
        Job {
            shard: lshard,
            database: lookup_database(ix),
            lock_table: ix.lookup_table(t, lshard),
            stmts,
        }
    }

    fn key(&self, t: &TableTopology) -> NodeKey {
        key_in(t, self.shard, self.database)
    }

    fn endpoint(&self, t: &TableTopology) -> conductor_core::NodeEndpoint {
        endpoint_in(t, self.shard, self.database)
    }
}

fn label(t: &TableTopology, shard: u32) -> ShardLabel {
    ShardLabel {
        table: t.name.clone(),
        shard,
    }
}

/// Run each job in this transaction's remote transaction on its node (all
/// nodes in parallel); per job, its statements' results.
fn in_streams(t: &TableTopology, jobs: Vec<Job>, access: Access) -> Vec<Vec<StmtResult>> {
    if jobs.is_empty() {
        return Vec::new();
    }
    let work = jobs
        .into_iter()
        .map(|j| NodeWork {
            access,
            key: j.key(t),
            endpoint: j.endpoint(t),
            lock_table: Some(j.lock_table),
            stmts: j
                .stmts
                .into_iter()
                .map(|s| (label(t, j.shard), s))
                .collect(),
        })
        .collect();
    streams::run(work)
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| remote::report_shard_error(&e)))
        .collect()
}

/// Run each job as its own one-request transaction on its node, committed
/// when the answer arrives (all nodes in parallel).
fn at_once(t: &TableTopology, jobs: Vec<Job>) -> Vec<Vec<StmtResult>> {
    let counts: Vec<usize> = jobs.iter().map(|j| j.stmts.len()).collect();
    let requests = jobs
        .into_iter()
        .map(|j| ShardRequest {
            shard_id: Some(j.shard),
            endpoint: j.endpoint(t),
            body: one_request_transaction(j.stmts),
        })
        .collect();
    remote::execute(requests)
        .into_iter()
        .zip(counts)
        .map(|(r, n)| {
            let resp = r.unwrap_or_else(|e| remote::report_shard_error(&e));
            batch_steps(&resp, 1, n)
        })
        .collect()
}

/// Plain reads on nodes without a transaction of ours: each job one
/// self-closing request.
fn read_at_once(t: &TableTopology, jobs: Vec<Job>) -> Vec<Vec<StmtResult>> {
    try_read_at_once(t, jobs)
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| remote::report_shard_error(&e)))
        .collect()
}

/// [`read_at_once`], each node's failure returned instead of raised.
fn try_read_at_once(t: &TableTopology, jobs: Vec<Job>) -> Vec<Result<Vec<StmtResult>, ShardError>> {
    let requests = jobs
        .into_iter()
        .map(|j| ShardRequest {
            shard_id: Some(j.shard),
            endpoint: j.endpoint(t),
            body: PipelineReqBody {
                baton: None,
                requests: j
                    .stmts
                    .into_iter()
                    .map(|stmt| StreamRequest::Execute { stmt })
                    .chain([StreamRequest::Close])
                    .collect(),
            },
        })
        .collect();
    remote::execute(requests)
        .into_iter()
        .map(|r| r.map(|resp| execute_results(&resp)))
        .collect()
}

/// Reads through this transaction's stream where it holds the node's write
/// lock (so its own uncommitted entries and rows count), else the latest
/// committed state: entries only grow, so the latest holds the entry of
/// every row any earlier snapshot of this transaction sees. Jobs on one node
/// share one request (a stream takes one request at a time).
fn read(t: &TableTopology, jobs: Vec<Job>) -> Vec<Vec<StmtResult>> {
    try_read(t, jobs)
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| remote::report_shard_error(&e)))
        .collect()
}

/// [`read`], the failure of a node read outside this transaction returned
/// instead of raised (a node this transaction writes fails it).
fn try_read(t: &TableTopology, jobs: Vec<Job>) -> Vec<Result<Vec<StmtResult>, ShardError>> {
    let counts: Vec<usize> = jobs.iter().map(|j| j.stmts.len()).collect();
    let mut merged: BTreeMap<NodeKey, Job> = BTreeMap::new();
    let mut place = Vec::with_capacity(jobs.len());
    for j in jobs {
        let key = j.key(t);
        let m = merged.entry(key.clone()).or_insert_with(|| Job {
            shard: j.shard,
            database: j.database,
            lock_table: j.lock_table.clone(),
            stmts: Vec::new(),
        });
        place.push((key, m.stmts.len()));
        m.stmts.extend(j.stmts);
    }
    let mut mine = Vec::new();
    let mut other = Vec::new();
    let mut keys_mine = Vec::new();
    let mut keys_other = Vec::new();
    for (k, j) in merged {
        if streams::holds_write(&k) {
            keys_mine.push(k);
            mine.push(j);
        } else {
            keys_other.push(k);
            other.push(j);
        }
    }
    let mut results: BTreeMap<NodeKey, Result<Vec<StmtResult>, ShardError>> = BTreeMap::new();
    results.extend(
        keys_mine
            .into_iter()
            .zip(in_streams(t, mine, Access::Read).into_iter().map(Ok)),
    );
    results.extend(keys_other.into_iter().zip(try_read_at_once(t, other)));
    place
        .into_iter()
        .zip(counts)
        .map(|((k, at), n)| match results.get(&k) {
            Some(Ok(r)) => Ok(r.iter().skip(at).take(n).cloned().collect()),
            Some(Err(e)) => Err(e.clone()),
            None => Ok(Vec::new()),
        })
        .collect()
}

fn batch_steps(resp: &PipelineRespBody, from: usize, n: usize) -> Vec<StmtResult> {
    match resp.results.first() {
        Some(StreamResult::Ok {
            response: StreamResponse::Batch { result },
        }) => result
            .step_results
            .iter()
            .skip(from)
            .take(n)
            .map(|r| r.clone().unwrap_or_default())
            .collect(),
        _ => Vec::new(),
    }
}

fn execute_results(resp: &PipelineRespBody) -> Vec<StmtResult> {
    resp.results
        .iter()
        .filter_map(|r| match r {
            StreamResult::Ok {
                response: StreamResponse::Execute { result },
            } => Some(result.clone()),
            _ => None,
        })
        .collect()
}

/// Entries committed at once, to check again once the rows are written.
#[derive(Default)]
pub struct Pending {
    recheck: Vec<(usize, u32, Entry)>,
    /// Rows (by position) an INSERT … ON CONFLICT DO NOTHING skips: their
    /// unique value is taken.
    pub skipped: BTreeSet<usize>,
}

/// The owner shard of each row (every column, stored form), by its key.
pub fn owners(t: &TableTopology, rows: &[Vec<Value>]) -> Vec<u32> {
    rows.iter()
        .map(|r| {
            conductor_core::plan::shard_of_value(t, &r[t.key_index])
                .unwrap_or_else(|e| error!("conductor: {e}"))
        })
        .collect()
}

/// `(columns)=(values)` of an entry, as Postgres shows a key in DETAIL.
fn key_display(t: &TableTopology, ix: &VirtualIndex, e: &Entry) -> String {
    format!(
        "({})=({})",
        ix.column_names(t).join(", "),
        vindex::display_values(e.values.iter().map(|v| &v.0))
            .trim_start_matches('(')
            .trim_end_matches(')')
    )
}

fn duplicate(t: &TableTopology, ix: &VirtualIndex, e: &Entry, holder: u32) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
        format!(
            "duplicate key value violates unique virtual index \"{}\"",
            ix.name
        ),
    )
    .detail(format!(
        "Key {} already exists in {} on shard {holder} (node {}).",
        key_display(t, ix, e),
        t.name,
        t.shards[holder as usize].node_id
    ))
    .error()
}

/// Write the entries of rows about to be written (owner shard, every
/// column in topology order), before the rows: `indexes` limits it to
/// those indexes (an UPDATE's touched ones). With `skip_conflicts` (INSERT
/// … ON CONFLICT DO NOTHING) a row whose unique value is taken is listed in
/// `Pending::skipped` instead of failing.
pub fn before_write(
    t: &TableTopology,
    rows: &[(u32, &[Value])],
    indexes: &[usize],
    inserting: bool,
    skip_conflicts: bool,
) -> Pending {
    let mut pending = Pending::default();
    if indexes.is_empty() {
        return pending;
    }
    let mut mine: BTreeMap<NodeKey, (Job, BTreeSet<NodeKey>)> = BTreeMap::new();
    let mut other: BTreeMap<NodeKey, Job> = BTreeMap::new();
    let mut unique: Vec<usize> = Vec::new();
    for &i in indexes {
        let ix = &t.virtual_indexes[i];
        let entries = ix
            .entries_of(t, rows.iter().map(|(s, r)| (*s, *r)))
            .unwrap_or_else(|e| error!("conductor: {e}"));
        if ix.unique {
            unique.push(i);
            continue;
        }
        for (lshard, set) in entries {
            let table = ix.lookup_table(t, lshard);
            let refs: Vec<&Entry> = set.iter().collect();
            let stmts = ix.insert_entries_stmts(&table, &refs);
            let job = Job::on_lookup(t, ix, lshard, Vec::new());
            let key = job.key(t);
            if streams::holds_write(&key) {
                let (job, owners) = mine.entry(key).or_insert_with(|| (job, BTreeSet::new()));
                job.stmts.extend(stmts);
                owners.extend(set.iter().map(|e| node_key(t, e.owner)));
            } else {
                other.entry(key).or_insert(job).stmts.extend(stmts);
                pending
                    .recheck
                    .extend(set.into_iter().map(|e| (i, lshard, e)));
            }
        }
    }
    // The order first: a contradiction fails the statement before anything
    // is written.
    for (key, (_, owners)) in &mine {
        streams::commit_before(key, owners);
    }
    in_streams(
        t,
        mine.into_values().map(|(j, _)| j).collect(),
        Access::Write,
    );
    at_once(t, other.into_values().collect());
    for i in unique {
        claim_all(t, i, rows, inserting, skip_conflicts, &mut pending);
    }
    pending
}

/// The entries of unique index `i` for `rows`, claimed together: one
/// request per lookup node inserts them and reads their owners, one per
/// owner shard probes for rows already holding the values (INSERT); only an
/// entry another shard holds (or one a repair removed meanwhile) goes
/// through `claim` alone. A row whose value is taken fails (or, with
/// `skip_conflicts`, is listed in `Pending::skipped`), in row order.
fn claim_all(
    t: &TableTopology,
    i: usize,
    rows: &[(u32, &[Value])],
    inserting: bool,
    skip_conflicts: bool,
    pending: &mut Pending,
) {
    let ix = &t.virtual_indexes[i];
    let types = ix.types(t);
    // Two rows of this statement with one value on two shards conflict
    // with each other; on one shard, the local unique index decides, and
    // the later row shares the first one's verdict.
    struct Wanted {
        lshard: u32,
        entry: Entry,
    }
    let mut wanted: Vec<Wanted> = Vec::new();
    let mut first: BTreeMap<Vec<vindex::EntryValue>, usize> = BTreeMap::new();
    // Per row in order: its entry's verdict, or the wanted entry it shares.
    enum Fate {
        Conflict(Entry, u32),
        As(usize),
    }
    let mut fates: Vec<(usize, Fate)> = Vec::new();
    for (ri, (owner, row)) in rows.iter().enumerate() {
        if pending.skipped.contains(&ri) {
            continue;
        }
        let values: Vec<Value> = ix.columns.iter().map(|&c| row[c].clone()).collect();
        let Some(lshard) = vindex::lookup_shard(&types, &values, t.shard_count())
            .unwrap_or_else(|e| error!("conductor: {e}"))
        else {
            continue; // a NULL: never a conflict
        };
        let entry = Entry {
            values: values.into_iter().map(vindex::EntryValue).collect(),
            owner: *owner,
        };
        match first.get(&entry.values) {
            Some(&w) if wanted[w].entry.owner != *owner => {
                let holder = wanted[w].entry.owner;
                fates.push((ri, Fate::Conflict(entry, holder)));
            }
            Some(&w) => fates.push((ri, Fate::As(w))),
            None => {
                first.insert(entry.values.clone(), wanted.len());
                fates.push((ri, Fate::As(wanted.len())));
                wanted.push(Wanted { lshard, entry });
            }
        }
    }
    if wanted.is_empty() {
        return;
    }
    // Insert every entry and read its owner: one job per lookup node.
    let mut jobs: BTreeMap<NodeKey, (Job, BTreeSet<NodeKey>)> = BTreeMap::new();
    let mut at: Vec<(NodeKey, usize)> = Vec::with_capacity(wanted.len());
    let mut by_lshard: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (w, x) in wanted.iter().enumerate() {
        by_lshard.entry(x.lshard).or_default().push(w);
    }
    at.resize(wanted.len(), (Default::default(), 0));
    for (lshard, ws) in &by_lshard {
        let table = ix.lookup_table(t, *lshard);
        let job = Job::on_lookup(t, ix, *lshard, Vec::new());
        let key = job.key(t);
        let (job, owners) = jobs
            .entry(key.clone())
            .or_insert_with(|| (job, BTreeSet::new()));
        let refs: Vec<&Entry> = ws.iter().map(|&w| &wanted[w].entry).collect();
        job.stmts.extend(ix.insert_entries_stmts(&table, &refs));
        for &w in ws {
            at[w] = (key.clone(), job.stmts.len());
            job.stmts.push(ix.owners_stmt(&table, &wanted[w].entry));
            owners.insert(node_key(t, wanted[w].entry.owner));
        }
    }
    let (mine, other): (Vec<_>, Vec<_>) = jobs
        .into_iter()
        .partition(|(key, _)| streams::holds_write(key));
    for (key, (_, owners)) in &mine {
        streams::commit_before(key, owners);
    }
    let at_once_keys: BTreeSet<NodeKey> = other.iter().map(|(k, _)| k.clone()).collect();
    let mut results: BTreeMap<NodeKey, Vec<StmtResult>> = BTreeMap::new();
    let (mine_keys, mine_jobs): (Vec<_>, Vec<_>) =
        mine.into_iter().map(|(k, (j, _))| (k, j)).unzip();
    results.extend(
        mine_keys
            .into_iter()
            .zip(in_streams(t, mine_jobs, Access::Write)),
    );
    let (other_keys, other_jobs): (Vec<_>, Vec<_>) =
        other.into_iter().map(|(k, (j, _))| (k, j)).unzip();
    results.extend(other_keys.into_iter().zip(at_once(t, other_jobs)));
    // Entries held by their own shard now: an INSERT still probes that shard
    // for a row already holding the value (all probes of a shard in one
    // request); the rest are claimed one by one.
    let mut verdicts: Vec<Option<Result<(), u32>>> = vec![None; wanted.len()];
    // Entries committed at once, to check again after the rows are written
    // (only those whose claim succeeds).
    let mut recheck = vec![false; wanted.len()];
    let mut probes: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (w, x) in wanted.iter().enumerate() {
        let (key, pos) = &at[w];
        let holder = results
            .get(key)
            .and_then(|r| r.get(*pos))
            .and_then(|r| r.rows.first())
            .and_then(|row| match row.first() {
                Some(Value::Integer(s)) => Some(*s as u32),
                _ => None,
            });
        if holder == Some(x.entry.owner) {
            recheck[w] = at_once_keys.contains(key);
            if inserting {
                probes.entry(x.entry.owner).or_default().push(w);
            } else {
                verdicts[w] = Some(Ok(()));
            }
        } else {
            verdicts[w] = Some(claim(t, i, x.lshard, &x.entry, inserting, pending));
        }
    }
    let probe_jobs: Vec<(u32, Vec<usize>)> = probes.into_iter().collect();
    let found = read(
        t,
        probe_jobs
            .iter()
            .map(|(shard, ws)| {
                let table = &t.shards[*shard as usize].remote_table;
                let stmts = ws
                    .iter()
                    .map(|&w| ix.probe_stmt(t, table, &wanted[w].entry))
                    .collect();
                Job::on_shard(t, *shard, stmts)
            })
            .collect(),
    );
    for ((shard, ws), r) in probe_jobs.iter().zip(found) {
        for (k, &w) in ws.iter().enumerate() {
            let held = r.get(k).is_some_and(|r| !r.rows.is_empty());
            verdicts[w] = Some(if held { Err(*shard) } else { Ok(()) });
        }
    }
    for (w, x) in wanted.iter().enumerate() {
        if recheck[w] && verdicts[w] == Some(Ok(())) {
            pending.recheck.push((i, x.lshard, x.entry.clone()));
        }
    }
    for (ri, fate) in fates {
        let (entry, verdict) = match fate {
            Fate::Conflict(entry, holder) => (entry, Err(holder)),
            Fate::As(w) => (wanted[w].entry.clone(), verdicts[w].unwrap_or(Ok(()))),
        };
        match verdict {
            Ok(()) => {}
            Err(_) if skip_conflicts => {
                pending.skipped.insert(ri);
            }
            Err(holder) => duplicate(t, ix, &entry, holder),
        }
    }
}

/// Make a unique value's entry point at `e.owner`: insert it, or take over
/// an entry whose owner shard does not hold the value (a row deleted, or a
/// write that never committed); the shard holding it when it does.
fn claim(
    t: &TableTopology,
    i: usize,
    lshard: u32,
    e: &Entry,
    inserting: bool,
    pending: &mut Pending,
) -> Result<(), u32> {
    let ix = &t.virtual_indexes[i];
    let table = ix.lookup_table(t, lshard);
    let lkey = key_in(t, lshard, lookup_database(ix));
    // An entry committed at once is checked again after the row is written.
    let mut committed_at_once = false;
    for _ in 0..8 {
        let refs = [e];
        let mut stmts = ix.insert_entries_stmts(&table, &refs);
        stmts.push(ix.owners_stmt(&table, e));
        let job = Job::on_lookup(t, ix, lshard, stmts);
        let results = if streams::holds_write(&lkey) {
            streams::commit_before(&lkey, &[node_key(t, e.owner)].into());
            in_streams(t, vec![job], Access::Write)
        } else {
            committed_at_once = true;
            at_once(t, vec![job])
        };
        let holder = results
            .first()
            .and_then(|r| r.last())
            .and_then(|r| r.rows.first())
            .and_then(|row| match row.first() {
                Some(Value::Integer(s)) => Some(*s as u32),
                _ => None,
            });
        let Some(holder) = holder else {
            continue; // removed meanwhile by a repair: insert again
        };
        if holder == e.owner {
            if inserting && probe(t, ix, holder, e) {
                return Err(holder);
            }
            if committed_at_once {
                pending.recheck.push((i, lshard, e.clone()));
            }
            return Ok(());
        }
        if !take_over(t, ix, lshard, e, holder) {
            return Err(holder);
        }
    }
    raise(
        PgSqlErrorCode::ERRCODE_T_R_SERIALIZATION_FAILURE,
        format!(
            "conductor: could not claim a value of unique virtual index \"{}\"",
            ix.name
        ),
    )
    .detail("Concurrent writers kept changing its entry.")
    .error()
}

/// Whether shard `shard` holds a row with the entry's values (as this
/// transaction sees it).
fn probe(t: &TableTopology, ix: &VirtualIndex, shard: u32, e: &Entry) -> bool {
    let shard_table = &t.shards[shard as usize].remote_table;
    let job = Job::on_shard(t, shard, vec![ix.probe_stmt(t, shard_table, e)]);
    read(t, vec![job])
        .first()
        .and_then(|r| r.first())
        .is_some_and(|r| !r.rows.is_empty())
}

/// Whether shard `shard`'s committed state (not this transaction's) holds
/// a row with the entry's values.
fn committed_row_holds(
    t: &TableTopology,
    ix: &VirtualIndex,
    shard: u32,
    shard_table: &str,
    e: &Entry,
) -> bool {
    let job = Job::on_shard(t, shard, vec![ix.probe_stmt(t, shard_table, e)]);
    read_at_once(t, vec![job])
        .first()
        .and_then(|r| r.first())
        .is_some_and(|r| !r.rows.is_empty())
}

/// One request on a temporary stream.
fn on_stream(
    t: &TableTopology,
    shard: u32,
    baton: Option<String>,
    requests: Vec<StreamRequest>,
) -> PipelineRespBody {
    let req = ShardRequest {
        shard_id: Some(shard),
        endpoint: endpoint(t, shard),
        body: PipelineReqBody { baton, requests },
    };
    remote::execute(vec![req])
        .pop()
        .expect("one answer")
        .unwrap_or_else(|e| remote::report_shard_error(&e))
}

/// With the write lock of the stale holder's node (so no write of a row
/// there is in flight), check that `holder` has no row with the value and
/// move the entry to `e.owner`. False when the holder has the row.
fn take_over(t: &TableTopology, ix: &VirtualIndex, lshard: u32, e: &Entry, holder: u32) -> bool {
    let table = ix.lookup_table(t, lshard);
    let update = ix.take_over_stmt(&table, e, holder);
    let stale = Entry {
        values: e.values.clone(),
        owner: holder,
    };
    unless_held(t, ix, lshard, &stale, update, Some(e.owner))
}

/// Remove an entry whose owner shard does not hold its value (checked with
/// the owner node's write lock). False when the owner holds it after all.
pub fn remove_extra(t: &TableTopology, i: usize, lshard: u32, e: &Entry) -> bool {
    let ix = &t.virtual_indexes[i];
    let table = ix.lookup_table(t, lshard);
    let delete = ix.delete_entry_stmt(&table, e);
    unless_held(t, ix, lshard, e, delete, None)
}

/// Run `change` on lookup shard `lshard` only if shard `e.owner` holds no
/// row with the entry's values, deciding while holding the write lock of
/// that shard's node: a write of such a row is either committed (and seen)
/// or not yet begun (and its writer rechecks its entry afterwards).
/// `new_owner`: the shard the changed entry points at (for commit order).
fn unless_held(
    t: &TableTopology,
    ix: &VirtualIndex,
    lshard: u32,
    e: &Entry,
    change: Stmt,
    new_owner: Option<u32>,
) -> bool {
    let holder = e.owner;
    let hkey = node_key(t, holder);
    let lkey = key_in(t, lshard, lookup_database(ix));
    let shard_table = t.shards[holder as usize].remote_table.clone();
    let update = change;
    let write_entry = || {
        let job = Job::on_lookup(t, ix, lshard, vec![update.clone()]);
        if streams::holds_write(&lkey) {
            if let Some(owner) = new_owner {
                streams::commit_before(&lkey, &[node_key(t, owner)].into());
            }
            in_streams(t, vec![job], Access::Write);
        } else {
            at_once(t, vec![job]);
        }
    };
    if streams::holds_write(&hkey) {
        // Our own transaction holds the lock: probe through it (as write,
        // so a read snapshot is upgraded to the lock).
        let job = Job::on_shard(t, holder, vec![ix.probe_stmt(t, &shard_table, e)]);
        let found = in_streams(t, vec![job], Access::Write)
            .first()
            .and_then(|r| r.first())
            .is_some_and(|r| !r.rows.is_empty());
        if found {
            return false;
        }
        // This transaction may itself have removed the row (a DELETE, or an
        // UPDATE of the value, not committed): an entry changed at once
        // would outlive a rollback that brings the row back, which would
        // then have no entry. The committed state tells (no other writer
        // commits on that node while this transaction holds its lock).
        if !streams::holds_write(&lkey) && committed_row_holds(t, ix, holder, &shard_table, e) {
            if new_owner.is_none() {
                return false; // not an extra: kept
            }
            raise(
                PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                format!(
                    "conductor: a value of unique virtual index \"{}\" cannot move to another shard in the transaction that removed it",
                    ix.name
                ),
            )
            .detail(format!(
                "Key {} is held by a committed row on shard {holder} (node {}) of {} that this transaction deleted or changed; its entry would have to move before this transaction commits.",
                key_display(t, ix, e),
                t.shards[holder as usize].node_id,
                t.name
            ))
            .hint("Commit the DELETE or UPDATE first, then write the value in another transaction.")
            .error()
        }
        write_entry();
        return true;
    }
    // A short transaction of its own on the holder's node.
    let resp = on_stream(
        t,
        holder,
        None,
        vec![
            StreamRequest::Execute {
                stmt: Stmt::new("BEGIN IMMEDIATE", vec![]),
            },
            StreamRequest::Execute {
                stmt: ix.probe_stmt(t, &shard_table, e),
            },
        ],
    );
    let baton = resp.baton.clone();
    let found = execute_results(&resp)
        .get(1)
        .is_some_and(|r| !r.rows.is_empty());
    let same_node = hkey == lkey && !streams::holds_write(&lkey);
    let mut end = Vec::new();
    if !found {
        if same_node {
            end.push(StreamRequest::Execute {
                stmt: update.clone(),
            });
        } else {
            write_entry();
        }
    }
    end.push(StreamRequest::Execute {
        stmt: Stmt::new("COMMIT", vec![]),
    });
    end.push(StreamRequest::Close);
    on_stream(t, holder, baton, end);
    !found
}

/// After the rows are written (this transaction now holds their nodes'
/// write locks): entries committed at once that a repair removed meanwhile
/// are written again, and a unique value taken over meanwhile is a
/// duplicate.
pub fn after_write(t: &TableTopology, pending: Pending) {
    if pending.recheck.is_empty() {
        return;
    }
    let jobs: Vec<Job> = pending
        .recheck
        .iter()
        .map(|(i, lshard, e)| {
            let ix = &t.virtual_indexes[*i];
            let table = ix.lookup_table(t, *lshard);
            let stmt = if ix.unique {
                ix.owners_stmt(&table, e)
            } else {
                ix.entry_stmt(&table, e)
            };
            Job::on_lookup(t, ix, *lshard, vec![stmt])
        })
        .collect();
    let results = read(t, jobs);
    for ((i, lshard, e), r) in pending.recheck.iter().zip(results) {
        let ix = &t.virtual_indexes[*i];
        let rows = r.first().map(|r| r.rows.clone()).unwrap_or_default();
        if ix.unique {
            match rows.first().and_then(|row| row.first()) {
                Some(Value::Integer(s)) if *s as u32 == e.owner => {}
                Some(Value::Integer(s)) => duplicate(t, ix, e, *s as u32),
                _ => {
                    let mut again = Pending::default();
                    if let Err(holder) = claim(t, *i, *lshard, e, false, &mut again) {
                        duplicate(t, ix, e, holder);
                    }
                }
            }
        } else if rows.is_empty() {
            let owner = e.owner;
            let row: Vec<Value> = {
                // Rebuild a row carrying just the indexed values.
                let mut row = vec![Value::Null; t.columns.len()];
                for (c, v) in ix.columns.iter().zip(&e.values) {
                    row[*c] = v.0.clone();
                }
                row
            };
            before_write(t, &[(owner, &row)], &[*i], false, false);
        }
    }
}

/// The indexes writes maintain (all of the table's, building or ready).
pub fn all(t: &TableTopology) -> Vec<usize> {
    (0..t.virtual_indexes.len()).collect()
}

/// The indexes an UPDATE of `updated` (column indexes) changes.
pub fn touched(t: &TableTopology, updated: &[usize]) -> Vec<usize> {
    t.virtual_indexes
        .iter()
        .enumerate()
        .filter(|(_, ix)| ix.columns.iter().any(|c| updated.contains(c)))
        .map(|(i, _)| i)
        .collect()
}

/// A scan's predicate routed through a ready virtual index (parameters
/// bound): the index and the value tuples to look up, by lookup shard.
pub struct IndexRoute {
    index: usize,
    tuples: vindex::TuplesByLookupShard,
    /// Every pushed predicate is one of the index's equalities.
    only_equalities: bool,
}

/// Whether this transaction's reads may be routed through virtual
/// indexes: not in REPEATABLE READ or SERIALIZABLE. The entries are read as
/// they are now, not in the snapshot a node's shards are read in: an entry
/// of a row the snapshot still holds may have been removed since (the row
/// changed or was deleted, and a read or a repair removed the extra
/// entry), and a row committed after the lookup may be in a snapshot taken
/// after it. Such a transaction's scans visit every shard the shard key
/// allows.
fn routes_reads() -> bool {
    // SAFETY: reads backend transaction state.
    unsafe { pg_sys::XactIsoLevel < pg_sys::XACT_REPEATABLE_READ as std::ffi::c_int }
}

/// The index route of a scan's predicate; None when no ready index applies.
pub fn index_route(t: &TableTopology, preds: &[Pred], bindings: &[Binding]) -> Option<IndexRoute> {
    if !routes_reads() {
        return None;
    }
    let ix = vindex::usable(t, &t.virtual_indexes, preds)?;
    let index = t.virtual_indexes.iter().position(|i| i.name == ix.name)?;
    let tuples = vindex::admitted(t, ix, preds, bindings).ok()??;
    Some(IndexRoute {
        index,
        tuples,
        only_equalities: preds.len() == ix.columns.len(),
    })
}

impl IndexRoute {
    fn values(&self) -> usize {
        self.tuples.values().map(Vec::len).sum()
    }

    /// How many values a unique index looks up (each matches at most one
    /// row of the table, so the shards' answers need no streaming); None
    /// for a non-unique index.
    pub fn unique_values(&self, t: &TableTopology) -> Option<usize> {
        t.virtual_indexes[self.index].unique.then(|| self.values())
    }

    /// Whether a visited shard that sends no row proves its entry extra:
    /// one value (every shard visited was named by one of its entries; with
    /// several, emptiness does not say whose entry was extra) and no other
    /// condition that could leave a holding shard empty.
    pub fn observes_extras(&self) -> bool {
        self.only_equalities && self.values() == 1
    }
}

/// The shards `route` names, looked up on the nodes now.
pub fn within(t: &TableTopology, route: &IndexRoute) -> Within {
    let ix = &t.virtual_indexes[route.index];
    let n_values = route.values();
    let mut per_node: BTreeMap<NodeKey, Job> = BTreeMap::new();
    for (lshard, tuples) in &route.tuples {
        let table = ix.lookup_table(t, *lshard);
        let job = Job::on_lookup(t, ix, *lshard, Vec::new());
        per_node
            .entry(job.key(t))
            .or_insert(job)
            .stmts
            .extend(ix.lookup_stmts(&table, tuples));
    }
    let mut shards = BTreeSet::new();
    for r in read(t, per_node.into_values().collect()) {
        for res in r {
            for row in res.rows {
                if let Some(Value::Integer(s)) = row.first() {
                    if (*s as usize) < t.shards.len() {
                        shards.insert(*s as u32);
                    }
                }
            }
        }
    }
    let reason = format!(
        "{} through virtual index {}: {n_values} value{} found on {} shard{}",
        ix.column_names(t).join(", "),
        ix.name,
        if n_values == 1 { "" } else { "s" },
        shards.len(),
        if shards.len() == 1 { "" } else { "s" },
    );
    Within { shards, reason }
}

/// For EXPLAIN without execution: the index a scan will be routed through.
pub fn planned(t: &TableTopology, preds: &[Pred]) -> Option<String> {
    if !routes_reads() {
        return None;
    }
    let ix = vindex::usable(t, &t.virtual_indexes, preds)?;
    Some(format!(
        "{} through virtual index {}: shards looked up when the statement runs",
        ix.column_names(t).join(", "),
        ix.name
    ))
}

/// A plan made before execution (EXPLAIN, conductor_explain) that will be
/// routed through a virtual index says so.
pub fn annotate(t: &TableTopology, preds: &[Pred], plan: &mut conductor_core::plan::ShardPlan) {
    if plan.kind != conductor_core::plan::RouteKind::AllShards {
        return;
    }
    if let Some(reason) = planned(t, preds) {
        plan.kind = conductor_core::plan::RouteKind::AtExecution;
        plan.reason = reason;
    }
}

/// Statements on every lookup shard in `database` (the lookup tables' DDL),
/// in this transaction's remote transactions: `stmts(lshard, lookup table)`.
pub fn on_every_lookup_shard(
    t: &TableTopology,
    database: Database,
    index: &str,
    stmts: impl Fn(u32, &str) -> Vec<Stmt>,
) {
    let mut per_node: BTreeMap<NodeKey, Job> = BTreeMap::new();
    for lshard in 0..t.shard_count() {
        let table = vindex::lookup_table_name(&t.remote_name, index, lshard);
        let job = Job {
            shard: lshard,
            database,
            lock_table: table.clone(),
            stmts: Vec::new(),
        };
        per_node
            .entry(job.key(t))
            .or_insert(job)
            .stmts
            .extend(stmts(lshard, &table));
    }
    in_streams(t, per_node.into_values().collect(), Access::Write);
}

/// Whether every node of the table serves a lookup database (conductor-node
/// does; sqld does not).
pub fn nodes_have_lookup_databases(t: &TableTopology) -> bool {
    let mut seen = BTreeSet::new();
    let mut all = true;
    for s in t.shards.iter().filter(|s| seen.insert(s.node_id.clone())) {
        match remote::check_health(endpoint_in(t, s.shard_id, Database::Lookup)) {
            Ok(()) => {}
            // The node answered that it has no such endpoint.
            Err(e)
                if matches!(
                    e.error,
                    conductor_core::client::NodeError::Http { status: 404, .. }
                ) =>
            {
                all = false
            }
            // Unreachable or failing now: deciding without it would fix the
            // index's placement on a guess.
            Err(e) => remote::report_shard_error(&e),
        }
    }
    all
}

/// One statement's rows from shard `shard`'s node (through this
/// transaction's stream when it has one there).
pub fn read_one(t: &TableTopology, shard: u32, stmt: Stmt) -> Vec<Vec<Value>> {
    read_in(t, shard, Database::Shards, stmt)
}

/// One statement's rows from `database` on shard `shard`'s node.
pub fn read_in(t: &TableTopology, shard: u32, database: Database, stmt: Stmt) -> Vec<Vec<Value>> {
    let mut job = Job::on_shard(t, shard, vec![stmt]);
    job.database = database;
    read(t, vec![job])
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next())
        .map(|r| r.rows)
        .unwrap_or_default()
}

/// The entries in the lookup tables of index `name` of `t`, stored in
/// `database`: every shard's table counted, one request per node, the nodes
/// in parallel. A node read outside this transaction that cannot answer is
/// returned rather than raised, so a report over all indexes can go on.
pub fn count_entries(t: &TableTopology, name: &str, database: Database) -> Result<i64, ShardError> {
    let jobs = (0..t.shard_count())
        .map(|s| {
            let table = vindex::lookup_table_name(&t.remote_name, name, s);
            let count = Stmt::new(
                format!(
                    "SELECT count(*) FROM {}",
                    conductor_core::remote_sql::quote_ident(&table)
                ),
                vec![],
            );
            let mut job = Job::on_shard(t, s, vec![count]);
            job.database = database;
            job
        })
        .collect();
    let mut n = 0;
    for counted in try_read(t, jobs) {
        for r in counted? {
            if let Some(Value::Integer(c)) = r.rows.first().and_then(|row| row.first()) {
                n += c;
            }
        }
    }
    Ok(n)
}

/// At most this many observed extras are queued per transaction (each
/// costs three requests at commit).
const MAX_OBSERVED_EXTRAS: usize = 16;

thread_local! {
    /// Entries a read of this transaction found pointing at a shard that
    /// sent no row for their value.
    static OBSERVED: std::cell::RefCell<Vec<conductor_core::executor::ExtraEntry>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// A scan routed by `route` ran to its end and the shards `empty` sent no
/// row: the entries of its tuples that point at them are queued for
/// removal once the transaction commits.
pub fn observe_empty_shards(t: &TableTopology, route: &IndexRoute, empty: &[u32]) {
    let ix = &t.virtual_indexes[route.index];
    let database = lookup_database(ix);
    OBSERVED.with(|o| {
        let mut observed = o.borrow_mut();
        let tuples = route
            .tuples
            .iter()
            .flat_map(|(lshard, ts)| ts.iter().map(move |t| (lshard, t)));
        for &shard in empty {
            for (lshard, tuple) in tuples.clone() {
                if observed.len() >= MAX_OBSERVED_EXTRAS {
                    return;
                }
                let e = Entry {
                    values: tuple.iter().cloned().map(vindex::EntryValue).collect(),
                    owner: shard,
                };
                let shard_table = &t.shards[shard as usize].remote_table;
                let same_database = key_in(t, *lshard, database) == node_key(t, shard);
                // Beside the shards (sqld), a removal holding the holder's
                // lock while it waits for another node's could stall a
                // writer holding that one: reads remove only extras of the
                // same database there.
                if database == Database::Shards && !same_database {
                    continue;
                }
                let lookup_table = ix.lookup_table(t, *lshard);
                let Some(reinsert) = ix.insert_entries_stmts(&lookup_table, &[&e]).pop() else {
                    continue;
                };
                observed.push(conductor_core::executor::ExtraEntry {
                    holder: endpoint(t, shard),
                    probe: ix.probe_stmt(t, shard_table, &e),
                    lookup: endpoint_in(t, *lshard, database),
                    delete: ix.delete_entry_stmt(&lookup_table, &e),
                    reinsert,
                    same_database,
                });
            }
        }
    });
}

/// The transaction committed (its remote transactions are over): the
/// extras its reads observed are removed in the background
/// (`Executor::remove_extra_in_background`), so the commit never waits for
/// a node's write lock.
pub fn repair_observed() {
    for x in OBSERVED.with(|o| std::mem::take(&mut *o.borrow_mut())) {
        remote::remove_extra_in_background(x);
    }
}

/// The transaction aborted: its observations are dropped.
pub fn forget_observed() {
    OBSERVED.with(|o| o.borrow_mut().clear());
}
