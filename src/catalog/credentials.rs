//! Node bearer tokens, kept where Postgres keeps FDW secrets: the `token`
//! option of a USER MAPPING (visible only to superusers and the mapping's
//! user). Cached per (server, user) and dropped when any user mapping or
//! server changes.

use crate::fdw::options::def_elems;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;

thread_local! {
    static TOKENS: RefCell<HashMap<(pg_sys::Oid, pg_sys::Oid), Option<String>>> =
        RefCell::new(HashMap::new());
    /// Tokens captured at the start of a DROP, for dropping shard tables
    /// after a DROP SERVER CASCADE has already removed the user mappings.
    static REMEMBERED: RefCell<HashMap<pg_sys::Oid, Option<String>>> = RefCell::new(HashMap::new());
}

/// The token the current user presents to the nodes of `server_id`, if any.
pub fn token_for(server_id: pg_sys::Oid) -> Option<String> {
    // SAFETY: GetUserId only reads backend state.
    let user = unsafe { pg_sys::GetUserId() };
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
