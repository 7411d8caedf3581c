//! conductor's Postgres-free core (see docs/ARCHITECTURE.md).
//!
//! Nothing here links against Postgres, so `cargo test -p conductor-core`
//! runs in seconds. The extension crate is a thin FFI layer over this API:
//! it describes a table as a [`topology::Topology`], lowers WHERE clauses
//! into [`predicate`]s as the [`pushdown`] rulebook allows, asks
//! [`plan::ShardPlan`] what each shard is sent and runs it through
//! [`executor::Executor`].

pub mod client;
pub mod executor;
pub mod http1;
pub mod keepalive;
pub mod merge;
pub mod placement;
pub mod plan;
pub mod predicate;
pub mod pushdown;
pub mod remote_sql;
pub mod router;
pub mod schema;
pub mod shard_move;
pub mod tls;
pub mod topology;
pub mod types;
pub mod vindex;

pub use client::{HranaClient, NodeEndpoint, NodeError};
pub use executor::{Executor, ShardError};
