//! The SQL API in schema conductor: nodes, distributed tables, placement.

mod cleanup;
pub mod explain;
mod nodes;
pub mod schema;
mod tables;

use crate::errors::raise;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;
use std::ffi::{CStr, CString};

/// The oid of a foreign server that uses the conductor wrapper.
fn conductor_server(name: &str) -> pg_sys::Oid {
    let cname = CString::new(name).unwrap_or_else(|_| error!("server name contains a NUL byte"));
    // SAFETY: catalog lookups inside a transaction; missing_ok=false raises a
    // clear "server does not exist" error.
    unsafe {
        let oid = pg_sys::get_foreign_server_oid(cname.as_ptr(), false);
        check_conductor_server(oid, name);
        oid
    }
}

/// Refuse servers of other foreign-data wrappers.
fn check_conductor_server(server_id: pg_sys::Oid, display: &str) {
    // SAFETY: catalog lookups inside a transaction.
    let fdw_name = unsafe {
        let server = pg_sys::GetForeignServer(server_id);
        let fdw = pg_sys::GetForeignDataWrapper((*server).fdwid);
        CStr::from_ptr((*fdw).fdwname)
            .to_string_lossy()
            .into_owned()
    };
    if fdw_name != "conductor" {
        raise(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("server \"{display}\" does not use the conductor foreign-data wrapper"),
        )
        .detail(format!("It uses \"{fdw_name}\"."))
        .error()
    }
}

/// Which build of the extension this backend runs: its version and whether
/// it is the optimized (release) or the debug build.
#[pg_extern]
fn build_info() -> TableIterator<'static, (name!(version, String), name!(profile, String))> {
    TableIterator::once((
        env!("CARGO_PKG_VERSION").to_string(),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
        .to_string(),
    ))
}
