//! End-to-end test harness: a real PostgreSQL 15 with the `conductor`
//! extension available, plus N real `conductor-node` processes, all on free
//! loopback ports, all torn down when the [`Cluster`] is dropped.
//!
//! ```no_run
//! use conductor_e2e::{Cluster, ClusterOptions};
//! let cluster = Cluster::start(ClusterOptions { nodes: 4, node_delay_ms: None, token: None });
//! let mut db = cluster.client();
//! cluster.setup_conductor(&mut db, "cluster"); // extension + server + add_node ×N
//! let rows = cluster.node_query(0, "SELECT 1", &[]);
//! assert_eq!(rows, vec![vec![serde_json::json!(1)]]);
//! ```
//!
//! Facts a test can rely on:
//! - Postgres runs as an unprivileged user (`postgres`, or `$CONDUCTOR_PG_USER`)
//!   when the tests run as root, because Postgres refuses to run as root. It
//!   listens on 127.0.0.1 only, trust auth, database `conductor`, superuser
//!   `postgres` (as a user would connect: a role named `conductor` would
//!   put unqualified new tables in the extension's schema through
//!   "$user"), `--locale=C --encoding=UTF8`, fsync off.
//! - The extension must already be installed into that Postgres
//!   (`make test` does `cargo pgrx install`); [`Cluster::extension_installed`]
//!   tells.
//! - Nodes are numbered `0..n`; node `i` has node id `node-{i}` in
//!   [`Cluster::setup_conductor`], its own data dir and log file.
//! - Every child process gets `PR_SET_PDEATHSIG(SIGKILL)`, so a test binary
//!   that dies (even by SIGKILL) takes its servers with it.
//! - When a test panics, the tails of the Postgres and node logs are printed.
//!   Set `CONDUCTOR_E2E_KEEP=1` to keep the temp dir (its path is printed).
//!
//! Environment overrides: `CONDUCTOR_NODE_BIN` (node binary),
//! `CONDUCTOR_PG_BINDIR` (Postgres bin dir; else `$PG_CONFIG --bindir`, else
//! `/usr/lib/postgresql/15/bin`), `CONDUCTOR_PG_USER`.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use libc;
pub use postgres;
pub use serde_json;
use serde_json::{json, Value};

/// What to start. `ClusterOptions::default()` is zero nodes, no delay, no token.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Number of conductor-node processes.
    pub nodes: usize,
    /// `--delay-ms N` for every node (each answer is N ms late).
    pub node_delay_ms: Option<u64>,
    /// `--auth-token T` for every node; [`Cluster::setup_conductor`] then
    /// also creates the USER MAPPING carrying it.
    pub token: Option<String>,
}

struct Node {
    port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    delay_ms: Option<u64>,
    /// More conductor-node flags (see [`Cluster::restart_node_with_args`]).
    extra_args: Vec<String>,
    child: Option<Child>,
}

/// A running Postgres + nodes. Dropping it kills every process and removes
/// the temp dir.
pub struct Cluster {
    dir: PathBuf,
    pg_bindir: PathBuf,
    pg_port: u16,
    pg_log: PathBuf,
    pg: Option<Child>,
    node_bin: PathBuf,
    /// The nodes are real libSQL servers (sqld at `node_bin`), not
    /// conductor-node.
    sqld: bool,
    token: Option<String>,
    nodes: Vec<Node>,
    http: ureq::Agent,
}

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The superuser the tests connect as.
pub const PG_SUPERUSER: &str = "postgres";

impl Cluster {
    /// Starts a fresh Postgres and `opts.nodes` nodes; panics (with the
    /// relevant log) if anything fails to come up.
    pub fn start(opts: ClusterOptions) -> Cluster {
        let node_bin = if opts.nodes > 0 {
            node_bin()
        } else {
            PathBuf::new()
        };
        Cluster::start_nodes_of(opts, node_bin, false)
    }

    /// Like [`Cluster::start`] with real libSQL servers as the nodes: the
    /// sqld binary at `sqld` (no token support: sqld authenticates with
    /// JWTs).
    pub fn start_sqld(nodes: usize, sqld: &Path) -> Cluster {
        let opts = ClusterOptions {
            nodes,
            node_delay_ms: None,
            token: None,
        };
        Cluster::start_nodes_of(opts, sqld.to_path_buf(), true)
    }

    fn start_nodes_of(opts: ClusterOptions, node_bin: PathBuf, sqld: bool) -> Cluster {
        sweep_stale_temp_dirs();
        let dir = make_temp_dir("conductor-e2e");
        let pg_bindir = pg_bindir();
        let http = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(60)))
            .http_status_as_error(false)
            .build()
            .new_agent();
        let mut cluster = Cluster {
            pg_log: dir.join("postgres.log"),
            dir,
            pg_bindir,
            pg_port: 0,
            pg: None,
            node_bin,
            sqld,
            token: opts.token.clone(),
            nodes: Vec::new(),
            http,
        };
        // From here on, a panic drops `cluster`, which cleans up.
        cluster.start_postgres();
        for i in 0..opts.nodes {
            let data_dir = cluster.dir.join(format!("node-{i}"));
            fs::create_dir_all(&data_dir).expect("create node data dir");
            cluster.nodes.push(Node {
                port: free_port(),
                log: cluster.dir.join(format!("node-{i}.log")),
                data_dir,
                delay_ms: opts.node_delay_ms,
                extra_args: Vec::new(),
                child: None,
            });
            cluster.start_node(i);
        }
        cluster
    }

    // ---- Postgres -------------------------------------------------------

    fn start_postgres(&mut self) {
        let template = pg_template(&self.pg_bindir);
        let data = self.dir.join("pgdata");
        // `cp -a` keeps the owner (the unprivileged user) and mode 0700.
        run_ok(
            Command::new("cp").arg("-a").arg(&template).arg(&data),
            "copy the initdb template",
        );
        let sock = self.dir.join("sock");
        fs::create_dir_all(&sock).expect("create socket dir");
        chown_to_pg_user(&sock);
        self.pg_port = free_port();
        // Shared statistics and node health need the library loaded at
        // server start, as an installation that uses them configures it.
        let preload = if self.extension_installed() {
            "conductor"
        } else {
            ""
        };
        self.launch_postgres(&[&format!("shared_preload_libraries={preload}")]);
    }

    /// Stops Postgres (fast shutdown) and starts it again on the same data
    /// and port with `settings` (`name=value`) instead of the default
    /// `shared_preload_libraries`.
    pub fn restart_postgres_with(&mut self, settings: &[&str]) {
        if let Some(mut pg) = self.pg.take() {
            kill_and_wait(&mut pg, libc::SIGINT, Duration::from_secs(30));
        }
        self.launch_postgres(settings);
    }

    fn launch_postgres(&mut self, settings: &[&str]) {
        let data = self.dir.join("pgdata");
        let sock = self.dir.join("sock");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.pg_log)
            .expect("open postgres.log");
        let mut cmd = pg_command(&self.pg_bindir.join("postgres"));
        for setting in settings {
            cmd.arg("-c").arg(setting);
        }
        cmd.arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(self.pg_port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", sock.display()))
            .args(["-c", "fsync=off"])
            .args(["-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"])
            .args(["-c", "shared_buffers=64MB"])
            .args(["-c", "max_connections=120"])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.pg = Some(spawn(cmd).unwrap_or_else(|e| panic!("spawn postgres: {e}")));

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            match self.try_client() {
                Ok(_) => return,
                Err(e) => {
                    if let Some(status) = self.pg.as_mut().unwrap().try_wait().unwrap() {
                        panic!(
                            "postgres exited ({status}) during startup:\n{}",
                            tail(&self.pg_log, 40)
                        );
                    }
                    if Instant::now() > deadline {
                        panic!(
                            "postgres not accepting connections after {STARTUP_TIMEOUT:?}: {e}\n{}",
                            tail(&self.pg_log, 40)
                        );
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }

    /// Port Postgres listens on (127.0.0.1).
    pub fn pg_port(&self) -> u16 {
        self.pg_port
    }

    /// `postgresql://postgres@127.0.0.1:PORT/conductor` (for psql or libpq).
    pub fn pg_url(&self) -> String {
        format!(
            "postgresql://{PG_SUPERUSER}@127.0.0.1:{}/conductor",
            self.pg_port
        )
    }

    /// Connection settings for database `conductor`, user `postgres`.
    pub fn pg_config(&self) -> postgres::Config {
        let mut c = postgres::Config::new();
        c.host("127.0.0.1")
            .port(self.pg_port)
            .user(PG_SUPERUSER)
            .dbname("conductor")
            .connect_timeout(Duration::from_secs(5));
        c
    }

    /// A new connection (its own backend/session). Panics on failure.
    pub fn client(&self) -> postgres::Client {
        self.try_client()
            .unwrap_or_else(|e| panic!("connect to {}: {e}", self.pg_url()))
    }

    pub fn try_client(&self) -> Result<postgres::Client, postgres::Error> {
        self.pg_config().connect(postgres::NoTls)
    }

    /// True when `conductor.control` is in this Postgres' extension dir.
    pub fn extension_installed(&self) -> bool {
        extension_installed(&self.pg_bindir)
    }

    /// The usual setup: `CREATE EXTENSION conductor`, `CREATE SERVER
    /// <server> FOREIGN DATA WRAPPER conductor`, a USER MAPPING with the
    /// token when the cluster has one, and `conductor.add_node(server,
    /// 'node-i', node_url(i))` for every node. Panics on error.
    pub fn setup_conductor(&self, client: &mut postgres::Client, server: &str) {
        assert!(
            self.extension_installed(),
            "extension `conductor` is not installed into {} \
             (run `make test`, or `cargo pgrx install --pg-config {}/pg_config`)",
            self.pg_bindir.display(),
            self.pg_bindir.display()
        );
        let server_ident = quote_ident(server);
        client
            .batch_execute(&format!(
                "CREATE EXTENSION IF NOT EXISTS conductor;
                 CREATE SERVER {server_ident} FOREIGN DATA WRAPPER conductor;"
            ))
            .unwrap_or_else(|e| panic!("create extension/server: {}", pg_err(&e)));
        if let Some(token) = &self.token {
            client
                .batch_execute(&format!(
                    "CREATE USER MAPPING FOR CURRENT_USER SERVER {server_ident} \
                     OPTIONS (token {});",
                    quote_literal(token)
                ))
                .unwrap_or_else(|e| panic!("create user mapping: {}", pg_err(&e)));
        }
        for i in 0..self.nodes.len() {
            client
                .execute(
                    "SELECT conductor.add_node($1, $2, $3)",
                    &[&server, &self.node_id(i), &self.node_url(i)],
                )
                .unwrap_or_else(|e| panic!("add_node node-{i}: {}", pg_err(&e)));
        }
    }

    /// [`Cluster::start`], a connection, and [`Cluster::setup_conductor`]
    /// with server `cluster`: what most tests begin with.
    pub fn start_with_conductor(opts: ClusterOptions) -> (Cluster, postgres::Client) {
        let cluster = Cluster::start(opts);
        let mut client = cluster.client();
        cluster.setup_conductor(&mut client, "cluster");
        (cluster, client)
    }

    /// Everything Postgres logged so far.
    pub fn pg_log(&self) -> String {
        fs::read_to_string(&self.pg_log).unwrap_or_default()
    }

    // ---- nodes ----------------------------------------------------------

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// `node-{i}`: the id [`Cluster::setup_conductor`] registers node `i` under.
    pub fn node_id(&self, i: usize) -> String {
        assert!(i < self.nodes.len(), "no node {i}");
        format!("node-{i}")
    }

    /// `http://127.0.0.1:PORT` of node `i`.
    pub fn node_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.node_port(i))
    }

    pub fn node_port(&self, i: usize) -> u16 {
        self.nodes[i].port
    }

    /// The node's `--data-dir`.
    pub fn node_data_dir(&self, i: usize) -> &Path {
        &self.nodes[i].data_dir
    }

    /// Everything node `i` printed so far (all its runs).
    pub fn node_log(&self, i: usize) -> String {
        fs::read_to_string(&self.nodes[i].log).unwrap_or_default()
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn node_running(&mut self, i: usize) -> bool {
        match self.nodes[i].child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// The process id of node `i` while it runs (to SIGSTOP/SIGCONT it).
    pub fn node_pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(|c| c.id())
    }

    /// Kills node `i` (SIGKILL, like a crash) and waits for it. Its data dir
    /// and port are kept for [`Cluster::start_node`]. No-op if stopped.
    pub fn stop_node(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            kill_and_wait(&mut child, libc::SIGKILL, Duration::ZERO);
        }
    }

    /// Starts node `i` again on the same port and data dir, and waits until
    /// `/health` answers 200. No-op if running.
    pub fn start_node(&mut self, i: usize) {
        if self.node_running(i) {
            return;
        }
        let node = &mut self.nodes[i];
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open node log");
        let _ = writeln!(log, "==== e2e harness: starting node-{i} ====");
        let mut cmd = Command::new(&self.node_bin);
        if self.sqld {
            cmd.arg("--http-listen-addr")
                .arg(format!("127.0.0.1:{}", node.port))
                .arg("--db-path")
                .arg(node.data_dir.join("sqld"))
                .arg("--no-welcome");
        } else {
            cmd.arg("--listen")
                .arg(format!("127.0.0.1:{}", node.port))
                .arg("--data-dir")
                .arg(&node.data_dir);
            if let Some(t) = &self.token {
                cmd.arg("--auth-token").arg(t);
            }
            if let Some(d) = node.delay_ms {
                cmd.arg("--delay-ms").arg(d.to_string());
            }
        }
        cmd.args(&node.extra_args);
        cmd.current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        node.child =
            Some(spawn(cmd).unwrap_or_else(|e| panic!("spawn {}: {e}", self.node_bin.display())));

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            match self.node_get(i, "/health") {
                Ok((200, _)) => return,
                other => {
                    let child = self.nodes[i].child.as_mut().unwrap();
                    if let Some(status) = child.try_wait().unwrap() {
                        panic!(
                            "node-{i} exited ({status}) during startup:\n{}",
                            tail(&self.nodes[i].log, 40)
                        );
                    }
                    if Instant::now() > deadline {
                        panic!(
                            "node-{i} /health not 200 after {STARTUP_TIMEOUT:?}: {other:?}\n{}",
                            tail(&self.nodes[i].log, 40)
                        );
                    }
                    std::thread::sleep(Duration::from_millis(25));
                }
            }
        }
    }

    /// Restarts node `i` with these extra conductor-node flags (replacing
    /// earlier ones), e.g. `["--max-body-bytes", "268435456"]`.
    pub fn restart_node_with_args(&mut self, i: usize, args: &[&str]) {
        self.stop_node(i);
        self.nodes[i].extra_args = args.iter().map(|a| a.to_string()).collect();
        self.start_node(i);
    }

    /// Restarts node `i` with a new `--delay-ms` (None: no delay).
    pub fn set_node_delay(&mut self, i: usize, delay_ms: Option<u64>) {
        self.stop_node(i);
        self.nodes[i].delay_ms = delay_ms;
        self.start_node(i);
    }

    /// `GET path` on node `i` (token sent when the cluster has one):
    /// `(status, body)`, or the transport error as text.
    pub fn node_get(&self, i: usize, path: &str) -> Result<(u16, String), String> {
        let mut req = self.http.get(format!("{}{}", self.node_url(i), path));
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let mut resp = req.call().map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        Ok((status, body))
    }

    /// `POST path` with a JSON body on node `i`: `(status, body as JSON, or
    /// as a JSON string if it isn't JSON)`.
    pub fn node_post(&self, i: usize, path: &str, body: &Value) -> Result<(u16, Value), String> {
        let mut req = self.http.post(format!("{}{}", self.node_url(i), path));
        if let Some(t) = &self.token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        let mut resp = req.send_json(body).map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    /// Runs one statement on node `i` through `POST /v2/pipeline`, asking
    /// the node directly (no Postgres involved). `args` are plain JSON
    /// (see [`to_hrana`]); rows come back as plain JSON (see [`from_hrana`]).
    /// Panics on any error.
    pub fn node_query(&self, i: usize, sql: &str, args: &[Value]) -> Vec<Vec<Value>> {
        self.try_node_query(i, sql, args)
            .unwrap_or_else(|e| panic!("node-{i}: {sql}: {e}"))
    }

    /// Like [`Cluster::node_query`], errors (HTTP, transport or SQL) as text.
    pub fn try_node_query(
        &self,
        i: usize,
        sql: &str,
        args: &[Value],
    ) -> Result<Vec<Vec<Value>>, String> {
        let result = self.try_node_execute_raw(i, sql, args)?;
        let rows = result["rows"]
            .as_array()
            .ok_or_else(|| format!("no rows in result: {result}"))?;
        Ok(rows
            .iter()
            .map(|row| {
                row.as_array()
                    .map(|cells| cells.iter().map(from_hrana).collect())
                    .unwrap_or_default()
            })
            .collect())
    }

    /// Runs one statement on node `i`; returns the Hrana `StmtResult` as
    /// JSON (`cols`, `rows` with typed values, `affected_row_count`, …).
    pub fn try_node_execute_raw(
        &self,
        i: usize,
        sql: &str,
        args: &[Value],
    ) -> Result<Value, String> {
        let body = json!({
            "baton": null,
            "requests": [
                {"type": "execute", "stmt": {
                    "sql": sql,
                    "args": args.iter().map(to_hrana).collect::<Vec<_>>(),
                    "want_rows": true,
                }},
                {"type": "close"},
            ],
        });
        let (status, resp) = self.node_post(i, "/v2/pipeline", &body)?;
        if status != 200 {
            return Err(format!("HTTP {status}: {resp}"));
        }
        let first = &resp["results"][0];
        match first["type"].as_str() {
            Some("ok") => Ok(first["response"]["result"].clone()),
            Some("error") => Err(format!("SQL error: {}", first["error"])),
            _ => Err(format!("unexpected response: {resp}")),
        }
    }

    /// Names of the tables on node `i` (from `sqlite_master`), sorted.
    pub fn node_tables(&self, i: usize) -> Vec<String> {
        self.node_query(
            i,
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite_%' ORDER BY name",
            &[],
        )
        .into_iter()
        .filter_map(|r| {
            r.into_iter()
                .next()
                .and_then(|v| v.as_str().map(String::from))
        })
        .collect()
    }

    /// The temp dir holding everything (pgdata, sockets, node dirs, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory of this Postgres' programs (pg_dump, pg_restore, …).
    pub fn pg_bindir(&self) -> &Path {
        &self.pg_bindir
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- postgres.log (tail) ----\n{}", tail(&self.pg_log, 60));
            for (i, n) in self.nodes.iter().enumerate() {
                eprintln!("---- node-{i}.log (tail) ----\n{}", tail(&n.log, 30));
            }
        }
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                kill_and_wait(&mut c, libc::SIGKILL, Duration::ZERO);
            }
        }
        if let Some(mut pg) = self.pg.take() {
            // SIGQUIT = immediate shutdown: the postmaster takes its backends
            // down with it (SIGKILL would orphan them for a moment).
            kill_and_wait(&mut pg, libc::SIGQUIT, Duration::from_secs(10));
        }
        if std::env::var_os("CONDUCTOR_E2E_KEEP").is_some() {
            eprintln!("CONDUCTOR_E2E_KEEP: left {}", self.dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

// ---- Hrana values --------------------------------------------------------

/// Plain JSON → Hrana typed value: null → null, bool → integer 0/1, integer
/// → integer, other number → float, string → text; an object that already
/// has a `"type"` (e.g. `{"type":"blob","base64":"…"}`) is passed as is.
pub fn to_hrana(v: &Value) -> Value {
    match v {
        Value::Null => json!({"type": "null"}),
        Value::Bool(b) => json!({"type": "integer", "value": (*b as i64).to_string()}),
        Value::Number(n) if n.is_i64() || n.is_u64() => {
            json!({"type": "integer", "value": n.to_string()})
        }
        Value::Number(n) => json!({"type": "float", "value": n.as_f64().unwrap()}),
        Value::String(s) => json!({"type": "text", "value": s}),
        Value::Object(o) if o.contains_key("type") => v.clone(),
        other => panic!("to_hrana: no Hrana value for {other}"),
    }
}

/// Hrana typed value → plain JSON: null → null, integer → number (i64),
/// float → number, text → string. Blobs stay typed
/// (`{"type":"blob","base64":"…"}`) so they can't be mistaken for text.
pub fn from_hrana(v: &Value) -> Value {
    match v["type"].as_str() {
        Some("null") => Value::Null,
        Some("integer") => {
            let n: i64 = match &v["value"] {
                Value::String(s) => s.parse().expect("integer value"),
                Value::Number(n) => n.as_i64().expect("integer value"),
                other => panic!("bad integer value {other}"),
            };
            json!(n)
        }
        Some("float") => v["value"].clone(),
        Some("text") => v["value"].clone(),
        _ => v.clone(),
    }
}

// ---- helpers ------------------------------------------------------------

/// Quotes an SQL identifier ("…", doubled quotes).
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Quotes an SQL string literal ('…', doubled quotes).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A Postgres error with its SQLSTATE, message, detail and hint (the
/// `Display` of `postgres::Error` is just "db error").
pub fn pg_err(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
            if let Some(d) = db.detail() {
                s += &format!("\nDETAIL: {d}");
            }
            if let Some(h) = db.hint() {
                s += &format!("\nHINT: {h}");
            }
            s
        }
        None => e.to_string(),
    }
}

fn pg_bindir() -> PathBuf {
    if let Some(d) = std::env::var_os("CONDUCTOR_PG_BINDIR") {
        return PathBuf::from(d);
    }
    if let Some(pg_config) = std::env::var_os("PG_CONFIG") {
        if let Ok(out) = Command::new(pg_config).arg("--bindir").output() {
            if out.status.success() {
                return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            }
        }
    }
    PathBuf::from("/usr/lib/postgresql/15/bin")
}

fn extension_installed(bindir: &Path) -> bool {
    let out = Command::new(bindir.join("pg_config"))
        .arg("--sharedir")
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let share = String::from_utf8_lossy(&o.stdout).trim().to_string();
            Path::new(&share)
                .join("extension/conductor.control")
                .exists()
        }
        _ => false,
    }
}

/// The conductor-node binary: `$CONDUCTOR_NODE_BIN`, else the most recently
/// built of `target/{debug,release}/conductor-node` (the target dir is found
/// from this test binary's path, `$CARGO_TARGET_DIR` and the workspace).
pub fn node_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CONDUCTOR_NODE_BIN") {
        return PathBuf::from(p);
    }
    let mut target_dirs: Vec<PathBuf> = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/deps/<test-binary>
        if let Some(t) = exe
            .parent()
            .and_then(|d| d.parent())
            .and_then(|d| d.parent())
        {
            target_dirs.push(t.to_path_buf());
        }
    }
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        target_dirs.push(PathBuf::from(t));
    }
    target_dirs.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let newest = target_dirs
        .iter()
        .flat_map(|t| ["debug", "release"].map(|p| t.join(p).join("conductor-node")))
        .filter_map(|p| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max_by_key(|(mtime, _)| *mtime);
    match newest {
        Some((_, p)) => p,
        None => panic!(
            "conductor-node binary not found under {target_dirs:?}: \
             build it with `cargo build -p conductor-node` or set CONDUCTOR_NODE_BIN"
        ),
    }
}

/// uid/gid to run Postgres as: None when we are not root (run as ourselves).
fn pg_user() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::env::var("CONDUCTOR_PG_USER").unwrap_or_else(|_| "postgres".into());
    let cname = std::ffi::CString::new(name.clone()).unwrap();
    let pw = unsafe { libc::getpwnam(cname.as_ptr()) };
    assert!(
        !pw.is_null(),
        "running as root, but user {name:?} to run Postgres as does not exist \
         (install postgresql-15 or set CONDUCTOR_PG_USER)"
    );
    let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
    Some((uid, gid))
}

/// A Command for a Postgres binary, as the unprivileged user when root.
fn pg_command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    if let Some((uid, gid)) = pg_user() {
        // std sets gid, drops supplementary groups, then uid.
        cmd.uid(uid).gid(gid);
    }
    cmd.env_remove("PGDATA").env("LC_ALL", "C");
    cmd
}

fn chown_to_pg_user(path: &Path) {
    if let Some((uid, gid)) = pg_user() {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
    }
}

/// An initdb'd data dir (user `postgres`, database `conductor`, trust),
/// made once and reused by every cluster (copied with `cp -a`): initdb is
/// the slowest part of a cluster start. Cached across runs in /tmp, keyed by
/// the Postgres binary's identity; built under a temp name, then renamed.
fn pg_template(bindir: &Path) -> PathBuf {
    static TEMPLATE: OnceLock<PathBuf> = OnceLock::new();
    TEMPLATE
        .get_or_init(|| {
            let postgres = bindir.join("postgres");
            let meta = fs::metadata(&postgres).unwrap_or_else(|e| {
                panic!("{}: {e} (is postgresql-15 installed?)", postgres.display())
            });
            let owner = pg_user()
                .map(|(u, _)| u)
                .unwrap_or(unsafe { libc::geteuid() });
            let key = format!("{}-{}-{}-u{owner}", meta.ino(), meta.size(), meta.mtime());
            let root = PathBuf::from(format!("/tmp/conductor-e2e-pgtemplate-v2-{key}"));
            let data = root.join("data");
            if root.join("ready").exists() {
                return data;
            }
            let work = make_temp_dir("conductor-e2e-pgtemplate-build");
            let wdata = work.join("data");
            // initdb creates `data` itself; its parent must be the user's.
            chown_to_pg_user(&work);
            run_ok(
                pg_command(&bindir.join("initdb"))
                    .arg("-D")
                    .arg(&wdata)
                    .args([
                        "-U",
                        PG_SUPERUSER,
                        "-A",
                        "trust",
                        "-E",
                        "UTF8",
                        "--locale=C",
                        "--no-sync",
                    ])
                    .current_dir(&work),
                "initdb",
            );
            // Single-user mode: create the database without starting a server.
            let mut single = pg_command(&postgres);
            single
                .args(["--single", "-F", "-D"])
                .arg(&wdata)
                .arg("postgres")
                .current_dir(&work)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = single.spawn().expect("spawn postgres --single");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"CREATE DATABASE conductor;\n")
                .unwrap();
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && !stderr.contains("ERROR"),
                "create database conductor failed: {}\n{stderr}",
                out.status
            );
            File::create(work.join("ready")).unwrap();
            // Another test process may have won the race; then use theirs.
            if fs::rename(&work, &root).is_err() {
                let _ = fs::remove_dir_all(&work);
                assert!(
                    root.join("ready").exists(),
                    "template {} broken",
                    root.display()
                );
            }
            data
        })
        .clone()
}

/// A new, empty dir `/tmp/<prefix>-<pid>-<n>-<nanos>`, mode 0755 so the
/// unprivileged Postgres user can reach what we chown to it inside.
fn make_temp_dir(prefix: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Removes `/tmp/conductor-e2e-<pid>-…` dirs whose test process is gone
/// (a test binary killed before its Drop ran), once per process.
fn sweep_stale_temp_dirs() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("conductor-e2e-") else {
                continue;
            };
            let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
                continue; // the shared initdb template, or not ours
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    });
}

/// A loopback port nobody listens on, never handed out twice by this
/// process. Taken from 20000–32767, below Linux's ephemeral range, so the
/// many outgoing connections of a test can't be sitting on a port that a
/// restarted node wants back.
pub fn free_port() -> u16 {
    static USED: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut used = USED.lock().unwrap_or_else(|e| e.into_inner());
    let used = used.get_or_insert_with(HashSet::new);
    let seed = std::process::id()
        ^ SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
    const LO: u32 = 20000;
    const SPAN: u32 = 12768;
    for k in 0..SPAN {
        let port = (LO + (seed.wrapping_add(k.wrapping_mul(7919))) % SPAN) as u16;
        if used.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            used.insert(port);
            return port;
        }
    }
    panic!("no free loopback port in 20000-32767");
}

/// Spawns `cmd` so that it is killed (SIGKILL) when this test process dies.
///
/// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, and
/// test functions run on short-lived threads; so all forks happen on one
/// spawner thread that lives as long as the process.
fn spawn(mut cmd: Command) -> io::Result<Child> {
    type Req = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Req>>> = OnceLock::new();
    let parent = std::process::id() as libc::pid_t;
    unsafe {
        cmd.pre_exec(move || {
            // Runs after setuid (which would clear the death signal).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent died before prctl took effect: don't outlive it.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Req>();
        std::thread::Builder::new()
            .name("e2e-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawn e2e-spawner thread");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock()
        .unwrap_or_else(|e| e.into_inner())
        .send((cmd, reply_tx))
        .expect("e2e-spawner thread gone");
    reply_rx.recv().expect("e2e-spawner thread gone")
}

/// Sends `sig`, waits up to `grace` for exit, then SIGKILLs and reaps.
fn kill_and_wait(child: &mut Child, sig: libc::c_int, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn run_ok(cmd: &mut Command, what: &str) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Last `lines` lines of a file (reads at most its last 64 KiB).
fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("({} missing)", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut s = String::new();
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    s.push_str(&String::from_utf8_lossy(&buf));
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
