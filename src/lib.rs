//! conductor: the PostgreSQL extension (the thin FFI layer over conductor-core).
use pgrx::prelude::*;

::pgrx::pg_module_magic!();
