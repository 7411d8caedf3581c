//! Node bearer tokens, kept where Postgres keeps FDW secrets: the `token`
//! option of a USER MAPPING (visible only to superusers and the mapping's
//! user). Cached per (server, user) and dropped when any user mapping or
//! server changes.

use crate::fdw::options::def_elems;
use pgrx::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

thread_local! {
    static TOKENS: RefCell<HashMap<(pg_sys::Oid, pg_sys::Oid), Option<String>>> =
        RefCell::new(HashMap::new());
    /// Tokens captured at the start of a DROP, for dropping shard tables
    /// after a DROP SERVER CASCADE has already removed the user mappings.
    static REMEMBERED: RefCell<HashMap<pg_sys::Oid, Option<String>>> = RefCell::new(HashMap::new());
    /// The role whose mapping a running executor callback reads with; see
    /// [`ActingUser`].
    static ACTING_USER: Cell<pg_sys::Oid> = const { Cell::new(pg_sys::Oid::INVALID) };
}

/// While alive, node tokens come from the user mapping of the role Postgres
/// checks a relation's permissions as: a view's owner for the tables the
/// view reads (the range table entry's `checkAsUser`), else the current
/// user — as postgres_fdw picks its mapping. Set by the executor callbacks
/// around their remote work; nests, and restores on drop (also when an
/// ERROR unwinds).
pub struct ActingUser {
    previous: pg_sys::Oid,
}

impl ActingUser {
    /// For range table entry `rti` of the running statement. An index
    /// outside the range table (none, or a routed partition's 0 without a
    /// root) acts as the current user.
    ///
    /// # Safety
    /// `estate` is a running statement's executor state (or null).
    pub unsafe fn for_rte(estate: *mut pg_sys::EState, rti: pg_sys::Index) -> ActingUser {
        // SAFETY: per the contract; es_range_table lists the statement's
        // range table entries, for the 1-based indexes.
        let check_as = unsafe {
            if estate.is_null() || rti == 0 {
                None
            } else {
                pgrx::PgList::<pg_sys::RangeTblEntry>::from_pg((*estate).es_range_table)
                    .get_ptr(rti as usize - 1)
                    .map(|rte| (*rte).checkAsUser)
            }
        }
        .unwrap_or(pg_sys::Oid::INVALID);
        let previous = ACTING_USER.with(|u| u.replace(check_as));
        ActingUser { previous }
    }

    /// For the relation a foreign scan reads: its own range table entry, or
    /// for a join or aggregate pushed down, its lowest-numbered base
    /// relation's (the pushdown requires all of them to act as one role).
    ///
    /// # Safety
    /// `node` is a running foreign scan's state.
    pub unsafe fn for_scan(node: *mut pg_sys::ForeignScanState) -> ActingUser {
        // SAFETY: per the contract: the node's plan is its ForeignScan.
        unsafe {
            let plan = (*node).ss.ps.plan as *mut pg_sys::ForeignScan;
            let rti = match (*plan).scan.scanrelid {
                0 => pg_sys::bms_next_member((*plan).fs_relids, -1) as pg_sys::Index,
                rti => rti,
            };
            Self::for_rte((*node).ss.ps.state, rti)
        }
    }

    /// For the table a ModifyTable writes through `rinfo`. A partition
    /// that tuple routing reached has no entry of its own: its root's
    /// counts, as for postgres_fdw.
    ///
    /// # Safety
    /// `estate` and `rinfo` are the running statement's.
    pub unsafe fn for_result(
        estate: *mut pg_sys::EState,
        rinfo: *mut pg_sys::ResultRelInfo,
    ) -> ActingUser {
        // SAFETY: per the contract; the root result relation, when set,
        // is the statement's too.
        unsafe {
            let mut rti = (*rinfo).ri_RangeTableIndex;
            if rti == 0 && !(*rinfo).ri_RootResultRelInfo.is_null() {
                rti = (*(*rinfo).ri_RootResultRelInfo).ri_RangeTableIndex;
            }
            Self::for_rte(estate, rti)
        }
    }
}

impl Drop for ActingUser {
    fn drop(&mut self) {
        ACTING_USER.with(|u| u.set(self.previous));
    }
}

/// The token presented to the nodes of `server_id`, if any: from the user
/// mapping of the acting role ([`ActingUser`]), else of the current user.
pub fn token_for(server_id: pg_sys::Oid) -> Option<String> {
    let acting = ACTING_USER.with(|u| u.get());
    let user = if acting != pg_sys::Oid::INVALID {
        acting
    } else {
        // SAFETY: GetUserId only reads backend state.
        unsafe { pg_sys::GetUserId() }
    };
    if let Some(cached) = TOKENS.with(|t| t.borrow().get(&(server_id, user)).cloned()) {
        return cached;
    }
    let token = lookup(user, server_id)
        .or_else(|| lookup(pg_sys::Oid::INVALID, server_id))
        .flatten()
        .or_else(|| REMEMBERED.with(|r| r.borrow().get(&server_id).cloned().flatten()));
    TOKENS.with(|t| t.borrow_mut().insert((server_id, user), token.clone()));
    token
}

/// Some(token option) when a mapping for (user, server) exists.
fn lookup(user: pg_sys::Oid, server_id: pg_sys::Oid) -> Option<Option<String>> {
    // SAFETY: a syscache lookup inside a transaction; the tuple is released
    // before returning and the options are copied into Rust strings.
    unsafe {
        let tuple = pg_sys::SearchSysCache2(
            pg_sys::SysCacheIdentifier::USERMAPPINGUSERSERVER as i32,
            pg_sys::Datum::from(user),
            pg_sys::Datum::from(server_id),
        );
        if tuple.is_null() {
            return None;
        }
        let mut is_null = false;
        let options = pg_sys::SysCacheGetAttr(
            pg_sys::SysCacheIdentifier::USERMAPPINGUSERSERVER as i32,
            tuple,
            pg_sys::Anum_pg_user_mapping_umoptions as i16,
            &mut is_null,
        );
        let token = if is_null {
            None
        } else {
            def_elems(pg_sys::untransformRelOptions(options))
                .into_iter()
                .find(|(k, _)| k == "token")
                .map(|(_, v)| v)
        };
        pg_sys::ReleaseSysCache(tuple);
        Some(token)
    }
}

/// Called at the start of every DROP: remember the current user's token for
/// each conductor server so a cascaded drop can still reach its nodes.
#[pg_extern(name = "_remember_node_credentials")]
fn remember_node_credentials() {
    let servers: Vec<pg_sys::Oid> = Spi::connect(|client| {
        client
            .select("SELECT DISTINCT server_id FROM conductor.node", None, &[])?
            .map(|row| {
                row.get::<pg_sys::Oid>(1)
                    .map(|o| o.unwrap_or(pg_sys::Oid::INVALID))
            })
            .collect::<Result<Vec<_>, _>>()
    })
    .unwrap_or_default();
    for server in servers {
        let token = token_for(server);
        REMEMBERED.with(|r| r.borrow_mut().insert(server, token));
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_syscache_invalidation(
    _arg: pg_sys::Datum,
    _cache_id: i32,
    _hash: u32,
) {
    TOKENS.with(|t| t.borrow_mut().clear());
}

pub fn register_invalidation_callbacks() {
    // SAFETY: registered once per backend from _PG_init; the callback only
    // clears this backend's thread-local map.
    unsafe {
        for cache in [
            pg_sys::SysCacheIdentifier::USERMAPPINGOID,
            pg_sys::SysCacheIdentifier::FOREIGNSERVEROID,
        ] {
            pg_sys::CacheRegisterSyscacheCallback(
                cache as i32,
                Some(on_syscache_invalidation),
                pg_sys::Datum::from(0),
            );
        }
    }
}

/// Forget the tokens remembered for a DROP once its transaction ends.
pub fn forget_remembered() {
    REMEMBERED.with(|r| r.borrow_mut().clear());
}
