//! Configuration parameters (`SET conductor.…`).

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting, PostgresGucEnum};
use std::time::Duration;

/// Deadline of one shard request, in milliseconds.
pub static REQUEST_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(30_000);

/// Rows per INSERT batch when neither the table nor the server sets `batch_size`.
pub static DEFAULT_BATCH_SIZE: GucSetting<i32> = GucSetting::<i32>::new(1000);

/// What a read does when a shard's node fails.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum OnShardFailure {
    /// The statement fails with an ERROR naming node and shard.
    // Named as documented (and as SHOW prints them): lowercase, like
    // Postgres' own enum settings.
    #[name = c"error"]
    Error,
    /// The rows of the reachable shards are returned with a WARNING naming
    /// the missing shards. Writes never skip.
    #[name = c"skip"]
    Skip,
}

pub static ON_SHARD_FAILURE: GucSetting<OnShardFailure> =
    GucSetting::<OnShardFailure>::new(OnShardFailure::Error);

/// The encoding of Hrana over HTTP spoken to the nodes.
#[derive(PostgresGucEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum WireEncoding {
    /// Protobuf where the node serves it (probed on the first request to
    /// each node), JSON otherwise.
    #[name = c"auto"]
    Auto,
    /// Always JSON.
    #[name = c"json"]
    Json,
    /// Always Protobuf.
    #[name = c"protobuf"]
    Protobuf,
}

pub static WIRE_ENCODING: GucSetting<WireEncoding> =
    GucSetting::<WireEncoding>::new(WireEncoding::Auto);

/// A PEM bundle of extra certificate authorities trusted for https:// nodes.
pub static TLS_CA_FILE: GucSetting<Option<std::ffi::CString>> =
    GucSetting::<Option<std::ffi::CString>>::new(None);

/// How long a node marked unhealthy is left alone, in milliseconds.
pub static NODE_COOLDOWN_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);

/// Extra attempts of a read whose node failed transiently.
pub static READ_RETRIES: GucSetting<i32> = GucSetting::<i32>::new(2);

/// First retry delay in milliseconds (doubled per attempt, with jitter).
pub static RETRY_BACKOFF_MS: GucSetting<i32> = GucSetting::<i32>::new(50);

/// Most shard requests a scan keeps in flight to one node at a time.
pub static MAX_REQUESTS_PER_NODE: GucSetting<i32> = GucSetting::<i32>::new(1);
/// Longest time a remote transaction may stay open without a statement
/// sent to its node, in milliseconds (0: no limit).
pub static REMOTE_XACT_IDLE_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(300_000);

/// Remote requests taking at least this long are logged, in milliseconds
/// (-1: none, 0: all).
pub static LOG_REMOTE_MIN_DURATION_MS: GucSetting<i32> = GucSetting::<i32>::new(-1);

/// Longest time a shard move may block writes to the shard, in
/// milliseconds: the block expires on the node by itself after it.
pub static MOVE_WRITE_BLOCK_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
/// Whether statements, nodes and shards are counted in shared memory.
pub static TRACK_STATS: GucSetting<bool> = GucSetting::<bool>::new(true);

pub fn init() {
    GucRegistry::define_bool_guc(
        c"conductor.track_stats",
        c"Counts statements, node requests and shard accesses in shared memory.",
        c"The counts are what conductor.stat_statements, stat_nodes, stat_shards and stat_shard_keys show; they exist when conductor is in shared_preload_libraries. Node health is shared either way.",
        &TRACK_STATS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"conductor.move_write_block_timeout",
        c"Longest time a shard move blocks writes to the shard it moves.",
        c"The block expires on the source node by itself after this time, even if the moving backend dies. A move whose last catch-up and comparison of both copies take longer is abandoned and writes resume on the source.",
        &MOVE_WRITE_BLOCK_TIMEOUT_MS,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"conductor.log_remote_statements_min_duration",
        c"Logs each request to a node that took at least this long, with node, shard, duration and rows.",
        c"-1 (the default) logs none, 0 logs every request. A scan's shard counts from the start of the scan to the shard's last row; other requests sent together count the time until all of them answered.",
        &LOG_REMOTE_MIN_DURATION_MS,
        -1,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"conductor.remote_transaction_idle_timeout",
        c"Longest time a transaction's open remote transaction on a node may go without a statement.",
        c"Past it the node's transaction is rolled back (releasing its locks) and the next statement or COMMIT of the Postgres transaction fails. 0 disables the limit: remote transactions then live as long as the Postgres transaction.",
        &REMOTE_XACT_IDLE_TIMEOUT_MS,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_enum_guc(
        c"conductor.on_shard_failure",
        c"What a read does when a shard's node fails: error (default) or skip.",
        c"With skip, a read returns the rows of the reachable shards and a WARNING naming the missing shards; writes always fail.",
        &ON_SHARD_FAILURE,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"conductor.wire_encoding",
        c"Encoding of the requests to the nodes: auto (default), json or protobuf.",
        c"auto speaks Protobuf to nodes that serve it and JSON to the others. Read when the session first talks to a node.",
        &WIRE_ENCODING,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"conductor.tls_ca_file",
        c"PEM file of certificate authorities trusted for https:// nodes, besides the system's.",
        c"Read when the session first talks to a node.",
        &TLS_CA_FILE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"conductor.node_cooldown",
        c"How long a node that failed repeatedly is marked unhealthy.",
        c"Statements that need it fail fast (or, with on_shard_failure = skip, reads leave its shards out) until the cool-down ends; then the node is tried again.",
        &NODE_COOLDOWN_MS,
        0,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"conductor.read_retries",
        c"Extra attempts of a read whose node failed transiently.",
        c"Connection refused or reset, HTTP 502/503/504 and timeouts are retried before any row of the shard was returned. Writes are retried only when the request never reached the node.",
        &READ_RETRIES,
        0,
        10,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"conductor.max_requests_per_node",
        c"Most shard requests one scan keeps in flight to one node at a time.",
        c"1 (the default): a node's shards are read one after the other in one read transaction, so a scan sees one snapshot of each node. More reads a node's shards over that many parallel requests, each its own snapshot. Shards beyond it wait for a slot, so the connections (and file descriptors) a backend holds toward a node stay bounded whatever the shard count; nodes are always read in parallel.",
        &MAX_REQUESTS_PER_NODE,
        1,
        256,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"conductor.retry_backoff",
        c"Delay before the first retry of a failed request.",
        c"Doubled for each further attempt, with random jitter.",
        &RETRY_BACKOFF_MS,
        1,
        60_000,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"conductor.request_timeout",
        c"Deadline of one request to a storage node.",
        c"A shard request that has not completed within this time fails with an error naming the node and shard.",
        &REQUEST_TIMEOUT_MS,
        1,
        i32::MAX,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"conductor.batch_size",
        c"Rows sent to the nodes per INSERT batch, unless the table or server sets batch_size.",
        c"",
        &DEFAULT_BATCH_SIZE,
        1,
        100_000,
        GucContext::Userset,
        GucFlags::default(),
    );
}

pub fn request_timeout() -> Duration {
    Duration::from_millis(REQUEST_TIMEOUT_MS.get().max(1) as u64)
}

/// `conductor.remote_transaction_idle_timeout`, None when off.
pub fn remote_xact_idle_timeout() -> Option<Duration> {
    match REMOTE_XACT_IDLE_TIMEOUT_MS.get() {
        ms if ms <= 0 => None,
        ms => Some(Duration::from_millis(ms as u64)),
    }
}
