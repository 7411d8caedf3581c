//! conductor: hash-sharded foreign tables over SQLite storage nodes.
//!
//! This crate is the thin FFI layer between PostgreSQL and `conductor-core`:
//! FDW callbacks (`fdw`), the topology catalog and its per-backend cache
//! (`catalog`), the SQL API (`api`), Datum <-> Hrana value conversion
//! (`convert`) and the bridge to the core's I/O executor (`remote`). See
//! docs/ARCHITECTURE.md for the map.

use pgrx::prelude::*;

mod api;
mod catalog;
mod convert;
mod errors;
mod fdw;
mod gucs;
mod health;
mod remote;
mod stats;
mod vindex;
mod xact;

::pgrx::pg_module_magic!();

extension_sql_file!("../sql/catalog.sql", name = "catalog", bootstrap);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // pgrx captures a Rust backtrace for every error that crosses into
    // Postgres (a cancel raised while we wait for a node included) when
    // RUST_BACKTRACE is set in the server's environment; resolving it costs
    // seconds in a debug build and lands in the user's DETAIL. Errors here
    // carry their own DETAIL, so library backtraces are turned off. The
    // backend is single-threaded at load time, so changing the environment
    // races with nothing.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    gucs::init();
    stats::init();
    catalog::cache::register_invalidation_callbacks();
    xact::register_callbacks();
}
