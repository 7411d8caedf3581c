//! conductor's Postgres-free core (see docs/ARCHITECTURE.md and DESIGN.md §2).
//!
//! Nothing here links against Postgres, so `cargo test -p conductor-core`
//! runs in seconds. The extension crate is a thin FFI layer over this API:
//! it converts datums to [`types::TypedValue`], asks [`placement`] for shards,
//! builds SQL with [`remote_sql`] and runs it through [`executor::Executor`].

pub mod client;
pub mod executor;
pub mod explain;
pub mod merge;
pub mod placement;
pub mod predicate;
pub mod remote_sql;
pub mod router;
pub mod types;

pub use client::{HranaClient, NodeEndpoint, NodeError};
pub use executor::{Executor, ShardError};
