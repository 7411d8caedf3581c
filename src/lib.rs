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
mod parse;
mod remote;
mod stats;
mod xact;

::pgrx::pg_module_magic!();

extension_sql_file!("../sql/catalog.sql", name = "catalog", bootstrap);
extension_sql_file!("../sql/finalize.sql", name = "finalize", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    catalog::cache::register_invalidation_callbacks();
    xact::register_callbacks();
}
