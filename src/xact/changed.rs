//! Which shards (and, for the latest command, which keys) this transaction
//! changed, so a read never returns a change Postgres would hide from it.
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
//! `curcid` did). For the latest command the shard-key values it wrote are
//! kept too, so that a statement reading rows by key (a nested loop's
//! lookups while an UPDATE … FROM changes other keys) is refused only when
//! it reads a key it changed.

use crate::catalog::TableTopology;
use crate::errors::raise;
use conductor_core::plan::ShardPlan;
use conductor_core::types::{uuid_to_text, TypedValue};
use conductor_hrana::Value;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

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

/// Beyond this many keys per shard and command, a change counts as one of
/// the whole shard (bounded memory for bulk writes).
const MAX_KEYS: usize = 10_000;

struct Change {
    /// The latest command that changed the shard.
    cid: pg_sys::CommandId,
    /// The keys that command changed; None: any row of the shard.
    keys: Option<BTreeSet<Key>>,
}

thread_local! {
    /// (table oid, shard) -> its latest change in this transaction.
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
            let entry = changed.entry((relid, shard)).or_insert(Change {
                cid,
                keys: Some(BTreeSet::new()),
            });
            if entry.cid != cid {
                *entry = Change {
                    cid,
                    keys: Some(BTreeSet::new()),
                };
            }
            match (&mut entry.keys, keys) {
                (Some(set), Some(keys)) => {
                    set.extend(keys.iter().cloned());
                    if set.len() > MAX_KEYS {
                        entry.keys = None;
                    }
                }
                (slot, _) => *slot = None,
            }
        }
    });
}

/// [`record`] for a plan that writes rows by their stored key values.
pub fn record_rows<'a>(
    topology: &TableTopology,
    plan: &ShardPlan,
    key_values: impl IntoIterator<Item = &'a Value>,
    cid: pg_sys::CommandId,
) {
    let keys: Option<Vec<Key>> = key_values.into_iter().map(Key::stored).collect();
    record(topology, plan.shard_ids(), keys.as_deref(), cid);
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
            let Some(change) = changed.get(&(relid, shard)) else {
                return false;
            };
            if change.cid < curcid {
                return false; // an earlier command's change: visible
            }
            if change.cid > curcid {
                return true;
            }
            match (&change.keys, &read_keys) {
                (Some(written), Some(read)) => read.iter().any(|k| written.contains(k)),
                _ => true,
            }
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
