//! Every knob of a node, parsed from the command line by the binary and
//! built directly by tests (`Config::new`) through the library.

use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `PRAGMA synchronous` for the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Synchronous {
    /// WAL + NORMAL: a commit is written to the WAL file (the OS page cache)
    /// before the response is sent, but fsync happens only at checkpoints.
    /// Survives a crash or kill -9 of the node; an OS crash or power loss
    /// can lose the most recent commits (never corrupts the database).
    Normal,
    /// WAL + FULL: every commit also fsyncs the WAL before the response is
    /// sent. Survives power loss too, at the cost of one fsync per commit.
    Full,
}

impl Synchronous {
    pub(crate) fn pragma_value(self) -> &'static str {
        match self {
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
        }
    }
}

/// conductor-node: one SQLite database served over the libSQL remote
/// protocol (Hrana over HTTP, JSON encoding: /v2/pipeline, /v3/pipeline,
/// /v3/cursor), plus GET /health, /version, /v2, /v3 and /stats.
///
/// Durability: the database runs in WAL mode. A response is sent only after
/// SQLite has written the commit to the WAL file, so killing the node (even
/// with kill -9) after a successful commit loses nothing. With the default
/// `--synchronous normal` an OS crash or power loss may lose the latest
/// commits; `--synchronous full` fsyncs every commit and survives that too.
#[derive(Debug, Clone, Parser)]
#[command(name = "conductor-node", version, about, long_about)]
pub struct Config {
    /// Address to listen on (HTTP/1.1). Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:7401")]
    pub listen: SocketAddr,

    /// Directory holding the database (`node.db` plus its WAL files);
    /// created if missing.
    #[arg(long)]
    pub data_dir: PathBuf,

    /// Bearer token required in `Authorization: Bearer <token>` on the
    /// protocol endpoints (/v2/*, /v3/*, /stats). Never logged. Without it,
    /// requests are not authenticated.
    #[arg(
        long,
        env = "CONDUCTOR_NODE_AUTH_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub auth_token: Option<String>,

    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Largest accepted request body, in bytes; larger bodies get 413.
    #[arg(long, default_value_t = 256 * 1024 * 1024, value_name = "BYTES")]
    pub max_body_bytes: usize,

    /// An interactive stream (baton) unused for this long expires: its open
    /// transaction rolls back and its baton becomes invalid.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    pub stream_idle_timeout_ms: u64,

    /// A cursor whose client reads nothing for this long is given up (its
    /// read transaction would otherwise hold back WAL checkpoints forever).
    /// Generous by default: a Postgres cursor paused between FETCHes is a
    /// client that stops reading.
    #[arg(long, default_value_t = 300_000, value_name = "MS")]
    pub cursor_stall_timeout_ms: u64,

    /// Most streams open at once; a request opening one more gets 503.
    #[arg(long, default_value_t = 1024)]
    pub max_streams: usize,

    /// How long a statement waits for a lock held by another connection
    /// (SQLite busy_timeout) before failing with SQLITE_BUSY.
    #[arg(long, default_value_t = 5_000, value_name = "MS")]
    pub busy_timeout_ms: u64,

    /// SQLite `synchronous` setting (see above): `normal` survives a crash
    /// of the node process, `full` also survives power loss.
    #[arg(long, value_enum, default_value_t = Synchronous::Normal)]
    pub synchronous: Synchronous,

    /// Disk space the node keeps for itself, in bytes: the SQL function
    /// `conductor_free_bytes()` reports what is available beyond it, so a
    /// shard move that would eat into it is refused before it starts.
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    pub reserve_bytes: u64,

    /// Test knob: delay every pipeline/cursor response by N ms, for latency
    /// and fan-out tests. An async sleep: it never blocks a thread.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub delay_ms: u64,

    /// HTTP worker threads (0 = one per CPU). Short baton-less reads run
    /// on these threads directly, each with its own read connection.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,

    /// On SIGTERM, how long in-flight requests may take to finish before
    /// the node closes anyway.
    #[arg(long, default_value_t = 10_000, value_name = "MS")]
    pub shutdown_timeout_ms: u64,

    /// Log level: error, warn, info, debug (one line per request), trace.
    #[arg(long, default_value = "info")]
    pub log_level: String,

    /// Library only (`Config::temp`): remove `data_dir` when the node that
    /// `spawn` started shuts down.
    #[arg(skip)]
    pub remove_data_dir_on_shutdown: bool,
}

impl Config {
    /// A config for an in-process node: listens on 127.0.0.1 with an
    /// ephemeral port, everything else at its default.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        let mut c = Config::parse_from(["conductor-node", "--data-dir", "."]);
        c.data_dir = data_dir.into();
        // parse_from also read CONDUCTOR_NODE_AUTH_TOKEN; an in-process node
        // is unauthenticated unless the caller sets a token explicitly.
        c.auth_token = None;
        c.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        c
    }

    pub(crate) fn stream_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.stream_idle_timeout_ms)
    }

    pub(crate) fn cursor_stall_timeout(&self) -> Duration {
        Duration::from_millis(self.cursor_stall_timeout_ms)
    }

    pub(crate) fn db_path(&self) -> PathBuf {
        self.data_dir.join("node.db")
    }

    /// The lookup database (`/lookup/…` endpoints): a second SQLite file
    /// with its own write lock, for virtual-index entries, so a transaction
    /// holding the shard tables' write lock can still commit entries first.
    pub(crate) fn lookup_db_path(&self) -> PathBuf {
        self.data_dir.join("lookup.db")
    }
}
