//! Which shards and keys this transaction changed, so a read never returns
//! a change Postgres would hide from it.
//!
//! A node keeps one current version of each row. Postgres shows a statement
//! the rows as they were when it began, not the changes it makes itself: a
//! data-modifying WITH does not see its sibling's changes, a correlated
//! subquery over the table an UPDATE changes sees the old rows, and a
//! cursor sees the rows as they were when it was declared. A read that
//! starts on a node after such a change would return the new rows, so it
//! is refused instead (the other reads are unaffected).
//!
//! A change is recorded with the command id of the statement that made it
//! (Postgres' own visibility rule: a snapshot sees what commands before its
//! `curcid` did). The shard-key values written are kept too, each with the
//! latest command that changed it, so that a read by key (a nested loop's
//! lookups while an UPDATE … FROM changes other keys, a cursor declared
//! before writes of other keys) is refused only when it reads a key changed
//! since its snapshot.

use crate::catalog::TableTopology;
use crate::errors::raise;
use conductor_core::plan::{shard_of_value, ShardPlan};
use conductor_core::types::{uuid_to_text, TypedValue};
use conductor_hrana::Value;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::cell::RefCell;
use std::collections::BTreeMap;

/// A shard-key value as written (an integer of any width, or text: uuids
/// as their stored text).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Int(i64),
    Text(String),
}

impl Key {
    fn stored(v: &Value) -> Option<Key> {
        match v {
            Value::Integer(i) => Some(Key::Int(*i)),
            Value::Text(s) => Some(Key::Text(s.clone())),
            _ => None,
        }
    }

    fn typed(v: &TypedValue) -> Option<Key> {
        Some(match v {
            TypedValue::Int2(i) => Key::Int(i64::from(*i)),
            TypedValue::Int4(i) => Key::Int(i64::from(*i)),
            TypedValue::Int8(i) => Key::Int(*i),
            TypedValue::Text(s) => Key::Text(s.clone()),
            TypedValue::Uuid(u) => Key::Text(uuid_to_text(*u)),
            _ => return None,
        })
    }
}

/// Beyond this many keys per shard, the earlier commands' changes there
/// count as changes of any of its rows, and beyond this many of the latest
/// command's, its too (bounded memory for bulk writes).
const MAX_KEYS: usize = 10_000;

/// What this transaction changed in one shard, by command: a read by key
/// whose snapshot predates several later writes of other keys (a cursor
/// declared before them) still meets none of them.
#[derive(Default)]
struct Change {
    /// The latest command that changed the shard.
    latest: pg_sys::CommandId,
    /// The latest command that changed rows whose keys are not known.
    any_row: Option<pg_sys::CommandId>,
    /// Per key changed, the latest command that changed it.
    keys: BTreeMap<Key, pg_sys::CommandId>,
}

impl Change {
    /// Keep only the latest command's keys, or none when they alone are too
    /// many: the others become a change of any row by the latest of their
    /// commands. The running statement's reads by key (the lookups of a
    /// nested loop under a bulk UPDATE) stay allowed as long as possible.
    fn forget_keys(&mut self) {
        let latest = self.latest;
        if let Some(&older) = self.keys.values().filter(|&&c| c < latest).max() {
            self.any_row = Some(self.any_row.map_or(older, |c| c.max(older)));
            self.keys.retain(|_, c| *c == latest);
        }
        if self.keys.len() > MAX_KEYS {
            self.keys.clear();
            self.any_row = Some(latest);
        }
    }

    /// Whether a read with a snapshot of command `curcid` would see one of
    /// these changes hidden from it, reading rows with these keys (None:
    /// any rows).
    fn hides(&self, curcid: pg_sys::CommandId, read: Option<&[Key]>) -> bool {
        if self.latest < curcid {
            return false; // all by earlier commands: visible
        }
        match read {
            None => true,
            Some(read) => {
                self.any_row.is_some_and(|cid| cid >= curcid)
                    || read
                        .iter()
                        .any(|k| self.keys.get(k).is_some_and(|&cid| cid >= curcid))
            }
        }
    }
}

thread_local! {
    /// (table oid, shard) -> what this transaction changed there.
    static CHANGED: RefCell<BTreeMap<(u32, u32), Change>> = const { RefCell::new(BTreeMap::new()) };
}

/// The current command id: the one a statement writes with when taken
/// before anything in it ran SPI (which advances it; a statement's
/// ModifyTable keeps its own in `es_output_cid`).
pub fn current_command() -> pg_sys::CommandId {
    // SAFETY: reads backend transaction state.
    unsafe { pg_sys::GetCurrentCommandId(false) }
}

/// Record that command `cid` changes `shards` of `topology`, at rows with
/// these shard-key values (None: rows the nodes choose, e.g. an UPDATE
/// with a WHERE clause).
fn record(
    topology: &TableTopology,
    shards: impl IntoIterator<Item = u32>,
    keys: Option<&[Key]>,
    cid: pg_sys::CommandId,
) {
    let relid = topology.relid.to_u32();
    CHANGED.with(|c| {
        let mut changed = c.borrow_mut();
        for shard in shards {
            let entry = changed.entry((relid, shard)).or_default();
            entry.latest = entry.latest.max(cid);
            match keys {
                Some(keys) => {
                    for k in keys {
                        let at = entry.keys.entry(k.clone()).or_insert(cid);
                        *at = (*at).max(cid);
                    }
                    if entry.keys.len() > MAX_KEYS {
                        entry.forget_keys();
                    }
                }
                None => entry.any_row = Some(entry.any_row.map_or(cid, |c| c.max(cid))),
            }
        }
    });
}

/// [`record`] for a plan that writes rows by their stored key values: each
/// key in its own shard's record (a batch of rows spans many shards).
pub fn record_rows<'a>(
    topology: &TableTopology,
    plan: &ShardPlan,
    key_values: impl IntoIterator<Item = &'a Value>,
    cid: pg_sys::CommandId,
) {
    let values: Vec<&Value> = key_values.into_iter().collect();
    let keys: Option<Vec<Key>> = values.iter().map(|v| Key::stored(v)).collect();
    let Some(keys) = keys else {
        return record(topology, plan.shard_ids(), None, cid);
    };
    if topology.is_reference() {
        return record(topology, plan.shard_ids(), Some(&keys), cid);
    }
    let mut per_shard: BTreeMap<u32, Vec<Key>> = BTreeMap::new();
    for (value, key) in values.into_iter().zip(keys) {
        match shard_of_value(topology, value) {
            Ok(shard) => per_shard.entry(shard).or_default().push(key),
            // Not a placeable key (the plan would have refused it): the
            // plan's shards, any of their rows.
            Err(_) => return record(topology, plan.shard_ids(), None, cid),
        }
    }
    for (shard, keys) in per_shard {
        record(topology, [shard], Some(&keys), cid);
    }
}

/// [`record`] for a plan routed like a scan (an UPDATE or DELETE run on the
/// nodes): its key values when the key routed it, else whole shards.
pub fn record_routed(topology: &TableTopology, plan: &ShardPlan, cid: pg_sys::CommandId) {
    let keys = routed_keys(plan);
    record(topology, plan.shard_ids(), keys.as_deref(), cid);
}

fn routed_keys(plan: &ShardPlan) -> Option<Vec<Key>> {
    if plan.max_keys_per_shard == 0 {
        return None;
    }
    plan.keys.iter().map(Key::typed).collect()
}

/// Refuse a read of `plan`'s shards of `topology` that would see a change
/// hidden from the running statement's snapshot. `by_key`: the read is
/// routed by the plan's key values (only rows with those keys matter).
pub fn check_read(topology: &TableTopology, plan: &ShardPlan, by_key: bool) {
    if CHANGED.with(|c| c.borrow().is_empty()) {
        return; // nothing changed in this transaction (the usual case)
    }
    let relid = topology.relid.to_u32();
    let shards: Vec<u32> = if topology.is_reference() {
        vec![0]
    } else {
        plan.shard_ids()
    };
    let read_keys = if by_key { routed_keys(plan) } else { None };
    // SAFETY: reads the active snapshot, if any.
    let snapshot = unsafe { pg_sys::GetActiveSnapshot() };
    if snapshot.is_null() {
        return;
    }
    // SAFETY: a valid snapshot.
    let curcid = unsafe { (*snapshot).curcid };
    let hidden = CHANGED.with(|c| {
        let changed = c.borrow();
        shards.into_iter().find(|&shard| {
            changed
                .get(&(relid, shard))
                .is_some_and(|change| change.hides(curcid, read_keys.as_deref()))
        })
    });
    if let Some(shard) = hidden {
        raise(
            PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            format!(
                "conductor cannot read {} (shard {shard}) after this statement or a later one changed it",
                topology.name
            ),
        )
        .detail("Postgres shows a statement the rows as they were when it began (a cursor: when it was declared), but the nodes hold only the rows' current versions.")
        .hint("Read the rows in a statement of their own before changing them (or declare the cursor after the change).")
        .error()
    }
}

/// The transaction ended: nothing is hidden from the next one.
pub fn forget() {
    CHANGED.with(|c| c.borrow_mut().clear());
}
