//! ShardExecutor: runs shard requests in parallel on a private tokio
//! runtime and hands results to the (single-threaded) caller over bounded
//! channels (docs/ARCHITECTURE.md, Execution inside a backend).
//!
//! - The runtime is created on first use, never at load time: Postgres'
//!   postmaster forks backends, and threads do not survive a fork.
//! - Its threads only do I/O and JSON decoding; they never call back into
//!   the caller. Every wait on the caller's side takes a timeout so the
//!   backend can check for cancel between waits.
//! - Dropping a handle aborts its tasks, which drops their HTTP requests.
//! - A lookup of one shard (a bounded scan of a single shard), and an
//!   [`Executor::execute`] of a single request (a one-shard write, a
//!   node's statement or commit), run on the caller's own thread instead,
//!   on a current-thread runtime driven by the caller's waits
//!   ([`ExecutorConfig::direct_lookups`]): no hop to an I/O thread and back
//!   for the one request.

use crate::client::{ClientConfig, HranaClient, NodeEndpoint, NodeError, NodeRef};
use conductor_hrana::{
    Batch, BatchStep, CursorEntry, CursorReqBody, PipelineReqBody, PipelineRespBody, Stmt,
    StreamRequest, StreamResponse, StreamResult, Value,
};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

/// Retried requests (every executor of the process): the extension reads
/// the difference across a statement's requests for its statistics.
pub static RETRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Executor settings.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Timeouts and limits of the HTTP client.
    pub client: ClientConfig,
    /// I/O worker threads (named `conductor-io`).
    pub worker_threads: usize,
    /// Extra attempts of an [`Executor::execute`] request whose connection
    /// could not be made. Only that failure is retried: the request never
    /// reached the node, so a write cannot apply twice.
    pub connect_retries: u32,
    /// Wait before the first retry; doubled for each further one.
    pub retry_backoff: Duration,
    /// A bounded scan of one shard (a lookup) and an execute of a single
    /// request run on the caller's thread, within its waits
    /// ([`ScanHandle::next`], [`ExecHandle::wait`]), with their own
    /// connection pool, rather than on the I/O threads.
    pub direct_lookups: bool,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            client: ClientConfig::default(),
            worker_threads: 2,
            connect_retries: 2,
            retry_backoff: Duration::from_millis(50),
            direct_lookups: true,
        }
    }
}

/// The I/O side: a tokio runtime and a Hrana client, both created lazily.
pub struct Executor {
    config: ExecutorConfig,
    started: Mutex<Option<Arc<Started>>>,
}

struct Started {
    runtime: Runtime,
    client: HranaClient,
    renewer: Arc<Renewer>,
    /// For lookups on the caller's thread (`None` if it could not be built).
    local: Option<Arc<Local>>,
}

/// A current-thread runtime, run only inside the caller's waits, and a
/// client whose connections live on it.
struct Local {
    runtime: Runtime,
    client: HranaClient,
}

impl Local {
    /// Let the runtime look at its sockets before a request: it runs only
    /// inside the caller's waits, so a pooled connection the node closed
    /// while it was idle is noticed (and left out of the pool) only now —
    /// otherwise the request would be written to it and fail, and a write
    /// cannot be retried once sent. Plain `http://` connections are checked
    /// by their pool when taken (see `http1`): only reqwest's need this.
    fn notice_closed_connections(&self, endpoint: &NodeEndpoint) {
        if self.client.is_plain_http(endpoint) || tokio::runtime::Handle::try_current().is_ok() {
            return;
        }
        signals::with_all_blocked(|| {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.runtime.block_on(async {
                    for _ in 0..2 {
                        tokio::task::yield_now().await;
                    }
                })
            }));
        });
    }
}

impl fmt::Debug for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Executor")
            .field("config", &self.config)
            .field("started", &self.is_started())
            .finish()
    }
}

/// One shard's read: a single statement run through `/v3/cursor`.
#[derive(Debug, Clone)]
pub struct ShardQuery {
    /// Tags the shard's rows, stats and errors.
    pub shard_id: u32,
    /// The node holding the shard.
    pub endpoint: NodeEndpoint,
    /// The SELECT, values as arguments (see `remote_sql::select_sql`).
    pub stmt: Stmt,
}

/// Knobs of a scan.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Columns every row must have (what the SELECT asked for); a row wider
    /// or narrower than this is an error of its shard.
    pub columns: usize,
    /// Rows per chunk handed over the channel.
    pub rows_per_chunk: usize,
    /// Channel capacity per shard, in chunks. Memory held in the channel is
    /// at most `shards * chunks_per_shard * rows_per_chunk` rows.
    pub chunks_per_shard: usize,
    /// Extra attempts of a shard whose read failed transiently (connect,
    /// timeout, broken connection, HTTP 5xx/429) before any of its rows
    /// were handed over; after that a retry could duplicate rows.
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one.
    pub retry_backoff: Duration,
    /// Every shard returns a few rows (the caller knows, e.g. a lookup by
    /// the whole primary key): each shard is one self-closing pipeline
    /// request (execute + close) instead of a cursor stream, which saves
    /// the node a stream and the round trip that would close it.
    pub bounded: bool,
    /// A lone shard whose row count is not known (a tenant's rows, a
    /// join of one customer): it is first asked, in one self-closing
    /// request on the caller's thread like a lookup, for at most this
    /// many rows plus one (its SELECT, which must have no LIMIT of its
    /// own, with `LIMIT` appended). If that many come, none is kept and
    /// the shard is streamed from the start through a cursor on the I/O
    /// threads, as without this. Ignored for several shards.
    pub small_first: Option<usize>,
    /// A failed shard does not stop the others: [`ScanHandle::next`]
    /// reports it as `Failed` and the scan goes on (the caller's opt-in
    /// degradation, `conductor.on_shard_failure = skip`).
    pub skip_failed: bool,
    /// Most shards of one node read at the same time (0: no limit). The
    /// others wait for a slot, so a table of thousands of shards holds a
    /// bounded number of connections and node streams per node.
    pub max_requests_per_node: usize,
    /// Read all of a node's shards in one read transaction: when a node
    /// holds several target shards, they are read by one cursor whose
    /// batch is `BEGIN`, one SELECT per shard, `COMMIT`, so the scan sees
    /// one snapshot of that node (never the before of one shard and the
    /// after of another of the same concurrent commit). The node's shards
    /// are then read one after the other, whatever `max_requests_per_node`;
    /// nodes still run in parallel. A node with one target shard is read as
    /// without this (a lookup stays one request).
    pub one_snapshot_per_node: bool,
}

impl ScanOptions {
    /// Defaults (256 rows per chunk, 4 chunks per shard) for `columns` columns.
    pub fn new(columns: usize) -> Self {
        ScanOptions {
            columns,
            rows_per_chunk: 256,
            chunks_per_shard: 4,
            retries: 2,
            retry_backoff: Duration::from_millis(50),
            bounded: false,
            small_first: None,
            skip_failed: false,
            max_requests_per_node: 8,
            one_snapshot_per_node: false,
        }
    }
}

/// Rows of one shard, in the order the node sent them.
#[derive(Debug, Clone, PartialEq)]
pub struct RowChunk {
    /// The shard the rows came from.
    pub shard_id: u32,
    /// At most `ScanOptions::rows_per_chunk` rows, each exactly
    /// `ScanOptions::columns` wide.
    pub rows: Vec<Vec<Value>>,
}

/// What [`ScanHandle::next`] saw within its wait.
#[derive(Debug)]
pub enum ScanPoll {
    /// The next chunk of some shard's rows.
    Rows(RowChunk),
    /// Nothing arrived within the wait: check for cancel, then call again.
    Pending,
    /// Every shard finished and every row was handed out.
    Done,
    /// A shard failed; the scan is aborted and later calls return `Done`
    /// (with [`ScanOptions::skip_failed`], only that shard stopped and the
    /// scan goes on).
    Failed(ShardError),
}

/// Per-shard figures of a scan (for EXPLAIN ANALYZE).
#[derive(Debug, Clone, PartialEq)]
pub struct ShardStats {
    /// The shard (as given in its `ShardQuery`).
    pub shard_id: u32,
    /// The node that served it.
    pub node_id: String,
    /// Rows the node sent.
    pub rows: u64,
    /// Time from the start of the scan to the shard's last row; `None`
    /// while the shard is still running (or if it failed).
    pub elapsed: Option<Duration>,
}

/// An error of one shard's request, or of the executor itself
/// (`shard_id: None`). `Display` is meant for a Postgres DETAIL:
/// "node node-0 (http://…), shard 3: …".
#[derive(Debug, Clone, PartialEq)]
pub struct ShardError {
    /// The shard, when the request was for one.
    pub shard_id: Option<u32>,
    /// The node's catalog name.
    pub node_id: String,
    /// The node's base URL.
    pub url: String,
    /// What went wrong.
    pub error: NodeError,
}

impl ShardError {
    /// Wrap a node error with the shard it happened on.
    pub fn new(shard_id: Option<u32>, error: NodeError) -> Self {
        let NodeRef { node_id, url } = error.node().clone();
        ShardError {
            shard_id,
            node_id,
            url,
            error,
        }
    }

    /// The SQLite error code the node returned (e.g.
    /// `SQLITE_CONSTRAINT_PRIMARYKEY`), for mapping to a SQLSTATE.
    pub fn sqlite_code(&self) -> Option<&str> {
        self.error.sqlite_code()
    }

    fn internal(shard_id: Option<u32>, node: NodeRef, message: impl Into<String>) -> Self {
        ShardError::new(
            shard_id,
            NodeError::Internal {
                node,
                message: message.into(),
            },
        )
    }
}

impl fmt::Display for ShardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} ({})", self.node_id, self.url)?;
        if let Some(s) = self.shard_id {
            write!(f, ", shard {s}")?;
        }
        write!(f, ": {}", self.error.detail())
    }
}

impl std::error::Error for ShardError {}

/// One shard's write or DDL: a whole pipeline request.
#[derive(Debug, Clone)]
pub struct ShardRequest {
    /// The shard, if the request is about one (`None` for node-wide work).
    pub shard_id: Option<u32>,
    /// The node to send it to.
    pub endpoint: NodeEndpoint,
    /// The pipeline, sent as is (`POST /v3/pipeline`).
    pub body: PipelineReqBody,
}

impl Executor {
    /// A not-yet-started executor: no threads, no sockets. Safe to create
    /// anywhere; the runtime starts on the first scan/execute (or [`start`]).
    ///
    /// [`start`]: Executor::start
    pub fn new(config: ExecutorConfig) -> Self {
        Executor {
            config,
            started: Mutex::new(None),
        }
    }

    /// Set the deadline of requests started from now on (a session may
    /// change it between statements).
    pub fn set_request_timeout(&self, timeout: Duration) {
        let guard = self.started.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(started) = guard.as_ref() {
            started.client.set_request_timeout(timeout);
        }
    }

    /// Whether the runtime has been created.
    pub fn is_started(&self) -> bool {
        self.started.lock().map(|s| s.is_some()).unwrap_or(false)
    }

    /// Create the runtime and client now if not yet done; reports why it
    /// could not (scan/execute would report it as a failed handle).
    pub fn start(&self) -> std::io::Result<()> {
        self.get().map(|_| ())
    }

    fn get(&self) -> std::io::Result<Arc<Started>> {
        // A poisoned lock only means a panic elsewhere; the Option is still sound.
        let mut guard = self.started.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = guard.as_ref() {
            return Ok(s.clone());
        }
        let runtime = signals::with_all_blocked(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(self.config.worker_threads.max(1))
                .max_blocking_threads(4)
                .thread_name("conductor-io")
                .on_thread_start(signals::block_all)
                .enable_all()
                .build()
        })?;
        // reqwest needs a runtime context only when used, but building it
        // inside one keeps any future internal spawns on our threads.
        let client = {
            let _ctx = runtime.enter();
            HranaClient::new(self.config.client.clone())?
        };
        let local = signals::with_all_blocked(|| {
            tokio::runtime::Builder::new_current_thread()
                .on_thread_start(signals::block_all)
                .enable_all()
                .build()
        })
        .ok()
        .and_then(|runtime| {
            let client = {
                let _ctx = runtime.enter();
                client.with_own_pool().ok()?
            };
            Some(Arc::new(Local { runtime, client }))
        });
        let started = Arc::new(Started {
            runtime,
            client,
            renewer: Arc::default(),
            local,
        });
        *guard = Some(started.clone());
        Ok(started)
    }

    /// Start every shard's query at once; rows come back through the
    /// handle's bounded channel as they arrive.
    pub fn scan(&self, shards: Vec<ShardQuery>, opts: ScanOptions) -> ScanHandle {
        let started = match self.get() {
            Ok(s) => s,
            Err(e) => {
                return ScanHandle::failed(ShardError::internal(
                    None,
                    local_node(),
                    format!("cannot start the I/O runtime: {e}"),
                ))
            }
        };
        let groups = group_by_node(&shards, &opts);
        // A group streams one shard at a time: groups bound what the
        // channel must hold.
        let capacity = opts.chunks_per_shard.max(1) * groups.len().max(1);
        let (tx, rx) = flume::bounded(capacity);
        // Failures skip the queue of rows: a slow reader learns at once that
        // a shard failed, not after draining every chunk before it.
        let (failures_tx, failures) = flume::unbounded();
        let begin = Instant::now();
        let stats: Vec<ShardStats> = shards
            .iter()
            .map(|q| ShardStats {
                shard_id: q.shard_id,
                node_id: q.endpoint.node_id.clone(),
                rows: 0,
                elapsed: None,
            })
            .collect();
        let mut queries: Vec<Option<ShardQuery>> = shards.into_iter().map(Some).collect();
        // A lookup of one shard: its request runs on this thread, in the
        // waits of `ScanHandle::next`. Not from inside a runtime, whose
        // thread may not block.
        let local = started.local.as_ref().filter(|_| {
            self.config.direct_lookups
                && (opts.bounded || opts.small_first.is_some())
                && queries.len() == 1
                && tokio::runtime::Handle::try_current().is_err()
        });
        if let Some(local) = local {
            local.notice_closed_connections(&queries[0].as_ref().expect("one shard").endpoint);
            let q = queries[0].take().expect("one shard");
            let handoff = Arc::new(Mutex::new(None));
            let task: DirectTask = match opts.small_first.filter(|_| !opts.bounded) {
                Some(rows) => Box::pin(small_shard_first(
                    local.client.clone(),
                    (started.runtime.handle().clone(), started.client.clone()),
                    handoff.clone(),
                    rows,
                    q,
                    opts.clone(),
                    begin,
                    tx,
                    failures_tx,
                )),
                None => Box::pin(scan_group(
                    local.client.clone(),
                    vec![(0, q)],
                    opts.clone(),
                    begin,
                    tx,
                    failures_tx,
                )),
            };
            return ScanHandle {
                rx,
                failures,
                skip_failed: opts.skip_failed,
                capacity,
                reported: vec![false; stats.len()],
                remaining: stats.len(),
                tasks: Vec::new(),
                task_shards: Vec::new(),
                stats,
                finished: false,
                early_failure: None,
                direct: Some(Direct {
                    local: local.clone(),
                    task: Some(task),
                    handoff,
                }),
                begin,
            };
        }
        let mut tasks = Vec::with_capacity(groups.len());
        let mut task_shards = Vec::with_capacity(groups.len());
        for group in groups {
            let members: Vec<(usize, ShardQuery)> = group
                .iter()
                .map(|&i| (i, queries[i].take().expect("each shard in one group")))
                .collect();
            let task = scan_group(
                started.client.clone(),
                members,
                opts.clone(),
                begin,
                tx.clone(),
                failures_tx.clone(),
            );
            tasks.push(started.runtime.spawn(task));
            task_shards.push(group);
        }
        ScanHandle {
            rx,
            failures,
            skip_failed: opts.skip_failed,
            capacity,
            reported: vec![false; stats.len()],
            remaining: stats.len(),
            tasks,
            task_shards,
            stats,
            finished: false,
            early_failure: None,
            direct: None,
            begin,
        }
    }

    /// Send every request at once; [`ExecHandle::wait`] returns all the
    /// results, in request order, when the last one is in.
    pub fn execute(&self, requests: Vec<ShardRequest>) -> ExecHandle {
        let n = requests.len();
        let mut handle = ExecHandle {
            rx: None,
            tasks: Vec::with_capacity(n),
            meta: requests
                .iter()
                .map(|r| (r.shard_id, NodeRef::from(&r.endpoint)))
                .collect(),
            results: (0..n).map(|_| None).collect(),
            missing: n,
            direct: None,
        };
        let started = match self.get() {
            Ok(s) => s,
            Err(e) => {
                for (i, slot) in handle.results.iter_mut().enumerate() {
                    let (shard, node) = handle.meta[i].clone();
                    *slot = Some(Err(ShardError::internal(
                        shard,
                        node,
                        format!("cannot start the I/O runtime: {e}"),
                    )));
                }
                handle.missing = 0;
                return handle;
            }
        };
        // Each task sends exactly one message, so capacity n never blocks.
        let (tx, rx) = flume::bounded(n.max(1));
        let (retries, backoff) = (self.config.connect_retries, self.config.retry_backoff);
        // One request: it runs on this thread, in the waits of
        // `ExecHandle::wait`. Not from inside a runtime, whose thread may
        // not block.
        let local = started.local.as_ref().filter(|_| {
            self.config.direct_lookups && n == 1 && tokio::runtime::Handle::try_current().is_err()
        });
        if let Some(local) = local {
            local.notice_closed_connections(&requests[0].endpoint);
        }
        for (index, req) in requests.into_iter().enumerate() {
            let client = match local {
                Some(local) => local.client.clone(),
                None => started.client.clone(),
            };
            let tx = tx.clone();
            let task = async move {
                let mut attempt = 0;
                let result = loop {
                    match client.pipeline(&req.endpoint, &req.body).await {
                        Err(NodeError::Connect { .. }) if attempt < retries => {
                            back_off(backoff, &mut attempt).await;
                        }
                        other => break other.map_err(|e| ShardError::new(req.shard_id, e)),
                    }
                };
                let _ = tx.send((index, result));
            };
            match local {
                Some(local) => {
                    handle.direct = Some(Direct {
                        local: local.clone(),
                        task: Some(Box::pin(task)),
                        handoff: Arc::default(),
                    })
                }
                None => handle.tasks.push(started.runtime.spawn(task)),
            }
        }
        handle.rx = Some(rx);
        handle
    }
}

/// Background tasks running (their count drops when a task ends or is
/// dropped).
static BACKGROUND: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct Background;

impl Background {
    fn start() -> Background {
        BACKGROUND.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Background
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        BACKGROUND.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// A virtual-index entry a read found pointing at a shard that sent no row
/// for its value (a deleted row's, a write that never committed).
#[derive(Debug, Clone)]
pub struct ExtraEntry {
    /// The node of the shard the entry points at.
    pub holder: NodeEndpoint,
    /// Reads that shard's rows with the entry's value.
    pub probe: Stmt,
    /// The node (database) holding the entry.
    pub lookup: NodeEndpoint,
    /// Deletes the entry.
    pub delete: Stmt,
    /// Writes the entry again (`ON CONFLICT DO NOTHING`): sent when the
    /// delete may have landed after the holder's lock was released.
    pub reinsert: Stmt,
    /// The entry is in the holder's database: the delete runs inside the
    /// holder's transaction (a second connection would wait for its lock).
    pub same_database: bool,
}

impl Executor {
    /// Remove `extra` on the I/O threads, without the caller waiting: holding
    /// the holder node's write lock (`BEGIN IMMEDIATE`, so no write of such
    /// a row is in flight there), probe for a row with the value and, if
    /// none, delete the entry before the lock is released. A writer whose
    /// row comes later rechecks its entry under that lock and writes it
    /// again. Failures are ignored: an extra only costs a wasted probe.
    pub fn remove_extra_in_background(&self, extra: ExtraEntry) {
        let Ok(started) = self.get() else { return };
        let client = started.client.clone();
        let running = Background::start();
        started.runtime.spawn(async move {
            remove_extra(client, extra).await;
            drop(running);
        });
    }

    /// Wait (up to `limit`) for the background work to end: a process about
    /// to exit must not cut a removal between taking a node's write lock and
    /// releasing it (the node would keep it until the stream expires).
    pub fn wait_for_background(&self, limit: Duration) {
        let until = Instant::now() + limit;
        while BACKGROUND.load(std::sync::atomic::Ordering::Acquire) > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Keep a remote transaction's stream alive until its owner finishes
    /// it (see [`crate::keepalive`]): every `every`, an unused stream is
    /// renewed with an empty request; past the keeper's idle limit it is
    /// rolled back and closed. Runs on the executor's runtime, without the
    /// caller's help. One renewer task looks after every kept stream of the
    /// executor: registering a stream only adds it to a list, so the usual
    /// transaction, over in milliseconds, costs no wake-up of an I/O thread.
    pub fn keep_alive(
        &self,
        endpoint: NodeEndpoint,
        keeper: Arc<crate::keepalive::StreamKeeper>,
        every: Duration,
    ) {
        let Ok(started) = self.get() else {
            return; // no runtime: the node's own expiry applies
        };
        let renewer = started.renewer.clone();
        let mut kept = renewer.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.push(Kept {
            endpoint,
            keeper,
            every,
        });
        // Under the list's lock, so the renewer cannot stop in between.
        let start = !renewer
            .running
            .swap(true, std::sync::atomic::Ordering::AcqRel);
        drop(kept);
        if start {
            let client = started.client.clone();
            started.runtime.spawn(renew_kept_streams(renewer, client));
        }
    }
}

/// The streams an executor keeps alive, looked after by one task.
#[derive(Default)]
struct Renewer {
    kept: Mutex<Vec<Kept>>,
    /// Whether the task runs; changed only with `kept` locked.
    running: std::sync::atomic::AtomicBool,
}

struct Kept {
    endpoint: NodeEndpoint,
    keeper: Arc<crate::keepalive::StreamKeeper>,
    every: Duration,
}

/// Ticks past which a renewer with nothing to keep ends (a busy backend's
/// next stream comes sooner and finds it still running).
const RENEWER_IDLE_TICKS: u32 = 8;

/// The renewer task: at each tick, asks every kept stream's keeper what to
/// do; a renewal or rollback is sent on a task of its own, so a slow node
/// does not delay the others. Streams whose owner finished them leave the
/// list.
async fn renew_kept_streams(renewer: Arc<Renewer>, client: HranaClient) {
    use crate::keepalive::Tick;
    let mut idle_ticks = 0;
    let mut step = Duration::from_millis(50);
    loop {
        tokio::time::sleep(step).await;
        let mut actions = Vec::new();
        {
            let mut kept = renewer.kept.lock().unwrap_or_else(|p| p.into_inner());
            kept.retain(|k| match k.keeper.tick(k.every) {
                Tick::Stop => false,
                Tick::Wait => true,
                tick => {
                    actions.push((tick, k.endpoint.clone(), k.keeper.clone()));
                    true
                }
            });
            if kept.is_empty() {
                idle_ticks += 1;
                if idle_ticks >= RENEWER_IDLE_TICKS {
                    renewer
                        .running
                        .store(false, std::sync::atomic::Ordering::Release);
                    return;
                }
            } else {
                idle_ticks = 0;
                step = kept
                    .iter()
                    .map(|k| (k.every / 4).max(Duration::from_millis(50)))
                    .min()
                    .unwrap_or(step);
            }
        }
        for (tick, endpoint, keeper) in actions {
            tokio::spawn(renew_once(client.clone(), endpoint, keeper, tick));
        }
    }
}

async fn renew_once(
    client: HranaClient,
    endpoint: NodeEndpoint,
    keeper: Arc<crate::keepalive::StreamKeeper>,
    tick: crate::keepalive::Tick,
) {
    use crate::keepalive::Tick;
    match tick {
        Tick::Renew(baton) => {
            let body = PipelineReqBody {
                baton: Some(baton),
                requests: vec![],
            };
            let result = match client.pipeline(&endpoint, &body).await {
                Ok(resp) => resp
                    .baton
                    .ok_or_else(|| "the node closed the stream".to_string()),
                Err(e) => Err(e.detail()),
            };
            keeper.renewed(result);
        }
        Tick::RollBack(baton) => {
            let body = PipelineReqBody {
                baton: Some(baton),
                requests: vec![
                    StreamRequest::Execute {
                        stmt: Stmt::new("ROLLBACK", vec![]),
                    },
                    StreamRequest::Close,
                ],
            };
            // If this fails the node's own expiry rolls back.
            let _ = client.pipeline(&endpoint, &body).await;
            let limit = match keeper.lost() {
                Some(crate::keepalive::Lost::Idle(l)) => l,
                _ => Duration::ZERO,
            };
            keeper.rolled_back(limit);
        }
        Tick::Wait | Tick::Stop => {}
    }
}

impl Drop for Executor {
    fn drop(&mut self) {
        // Dropping a runtime from inside another runtime's context panics;
        // shut ours down without blocking instead.
        if let Some(started) = self.started.get_mut().ok().and_then(|s| s.take()) {
            if let Ok(s) = Arc::try_unwrap(started) {
                s.runtime.shutdown_background();
                if let Some(Ok(local)) = s.local.map(Arc::try_unwrap) {
                    local.runtime.shutdown_background();
                }
            }
        }
    }
}

fn local_node() -> NodeRef {
    NodeRef {
        node_id: "(local)".into(),
        url: "-".into(),
    }
}

enum ScanMsg {
    Rows(RowChunk),
    Done {
        index: usize,
        rows: u64,
        elapsed: Duration,
    },
    Failed {
        index: usize,
        error: ShardError,
    },
}

/// The shards of a scan as the requests that carry them: per node at most
/// `max_requests_per_node` requests, each a cursor whose batch reads its
/// shards one after another (a node's connections and streams stay bounded
/// whatever the shard count, while every node works in parallel). A lookup
/// (`bounded`) keeps one request per shard.
fn group_by_node(shards: &[ShardQuery], opts: &ScanOptions) -> Vec<Vec<usize>> {
    if opts.one_snapshot_per_node {
        // One group per node: one read transaction each.
        let mut per_node: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, q) in shards.iter().enumerate() {
            match per_node.iter_mut().find(|(url, _)| *url == q.endpoint.url) {
                Some((_, v)) => v.push(i),
                None => per_node.push((q.endpoint.url.as_str(), vec![i])),
            }
        }
        return per_node.into_iter().map(|(_, v)| v).collect();
    }
    if opts.bounded || opts.max_requests_per_node == 0 {
        return (0..shards.len()).map(|i| vec![i]).collect();
    }
    let mut per_node: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, q) in shards.iter().enumerate() {
        match per_node.iter_mut().find(|(url, _)| *url == q.endpoint.url) {
            Some((_, v)) => v.push(i),
            None => per_node.push((q.endpoint.url.as_str(), vec![i])),
        }
    }
    let mut groups = Vec::new();
    for (_, indexes) in per_node {
        let n = indexes.len().min(opts.max_requests_per_node);
        let mut node_groups: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (k, i) in indexes.into_iter().enumerate() {
            node_groups[k % n].push(i);
        }
        groups.extend(node_groups);
    }
    groups
}

/// Read the shards of one group: a lone shard through [`scan_shard`]
/// (with its retries), several through one cursor whose batch has a step
/// per shard. Every shard ends with its own `Done` or `Failed`.
async fn scan_group(
    client: HranaClient,
    members: Vec<(usize, ShardQuery)>,
    opts: ScanOptions,
    begin: Instant,
    tx: flume::Sender<ScanMsg>,
    failures: flume::Sender<ScanMsg>,
) {
    if members.len() == 1 {
        let (index, q) = members.into_iter().next().expect("one member");
        return scan_shard(client, index, q, opts, begin, tx, failures).await;
    }
    let mut attempt = 0;
    loop {
        let mut progress = GroupProgress::new(members.len());
        let result = stream_group(
            &client,
            &members,
            &opts,
            begin,
            &tx,
            &failures,
            &mut progress,
        )
        .await;
        match result {
            Err(e) if !progress.anything_sent() && e.is_transient() && attempt < opts.retries => {
                back_off(opts.retry_backoff, &mut attempt).await;
            }
            Err(e) => {
                // The shards of the group that did not finish share the error.
                for (k, (index, q)) in members.iter().enumerate() {
                    if !progress.finished[k] {
                        let _ = failures.send(ScanMsg::Failed {
                            index: *index,
                            error: ShardError::new(Some(q.shard_id), e.clone()),
                        });
                    }
                }
                return;
            }
            Ok(()) => return,
        }
    }
}

/// Which shards of a group have ended, and whether any message went out
/// (after which a retry could duplicate rows).
struct GroupProgress {
    finished: Vec<bool>,
    sent: bool,
}

impl GroupProgress {
    fn new(n: usize) -> Self {
        GroupProgress {
            finished: vec![false; n],
            sent: false,
        }
    }

    fn anything_sent(&self) -> bool {
        self.sent
    }
}

async fn stream_group(
    client: &HranaClient,
    members: &[(usize, ShardQuery)],
    opts: &ScanOptions,
    begin: Instant,
    tx: &flume::Sender<ScanMsg>,
    failures: &flume::Sender<ScanMsg>,
    progress: &mut GroupProgress,
) -> Result<(), NodeError> {
    let endpoint = &members[0].1.endpoint;
    let node = NodeRef::from(endpoint);
    let step = |stmt: Stmt| BatchStep {
        stmt,
        condition: None,
    };
    // One snapshot of the node: the shards' steps between BEGIN (deferred:
    // the first SELECT pins the snapshot) and COMMIT.
    let snapshot = opts.one_snapshot_per_node;
    let mut steps = Vec::with_capacity(members.len() + 2);
    if snapshot {
        steps.push(step(Stmt::new("BEGIN", vec![])));
    }
    steps.extend(members.iter().map(|(_, q)| step(q.stmt.clone())));
    if snapshot {
        steps.push(step(Stmt::new("COMMIT", vec![])));
    }
    // The member a batch step reads (None: BEGIN or COMMIT).
    let member = |step: u32| -> Option<usize> {
        (step as usize)
            .checked_sub(snapshot as usize)
            .filter(|&i| i < members.len())
    };
    let body = CursorReqBody {
        baton: None,
        batch: Batch { steps },
    };
    let mut cursor = client.cursor(endpoint, &body).await?;
    let _closer = CursorCloser::new(client, endpoint, &cursor);
    let per_chunk = opts.rows_per_chunk.max(1);
    let mut chunk: Vec<Vec<Value>> = Vec::with_capacity(per_chunk);
    let mut current: Option<usize> = None;
    // Inside the BEGIN or COMMIT step.
    let mut in_control = false;
    let mut rows = 0u64;
    let result: Result<(), NodeError> = async {
        while let Some(entry) = cursor.next().await? {
            match entry {
                CursorEntry::StepBegin { step, .. } if member(step).is_none() => {
                    if current.is_some() || in_control || !snapshot {
                        return Err(NodeError::protocol(
                            &node,
                            format!("unexpected step_begin of step {step}"),
                        ));
                    }
                    in_control = true;
                }
                CursorEntry::StepEnd { .. } if in_control => in_control = false,
                CursorEntry::StepError { step, error } if member(step).is_none() => {
                    // BEGIN or COMMIT failed: the group's reads are not one
                    // snapshot (or not ended): the whole group fails.
                    return Err(NodeError::sql(&node, &error));
                }
                CursorEntry::StepBegin { step, cols } => {
                    let step = member(step).expect("a member step");
                    if current.is_some() || in_control || progress.finished[step] {
                        return Err(NodeError::protocol(
                            &node,
                            format!("unexpected step_begin of step {step}"),
                        ));
                    }
                    check_width(&node, "result", cols.len(), opts.columns)?;
                    current = Some(step);
                    rows = 0;
                }
                CursorEntry::Row { row } => {
                    let Some(step) = current else {
                        return Err(NodeError::protocol(&node, "row outside of a step"));
                    };
                    check_width(&node, "row", row.len(), opts.columns)?;
                    chunk.push(row);
                    rows += 1;
                    if chunk.len() >= per_chunk {
                        let full = std::mem::replace(&mut chunk, Vec::with_capacity(per_chunk));
                        progress.sent = true;
                        let msg = ScanMsg::Rows(RowChunk {
                            shard_id: members[step].1.shard_id,
                            rows: full,
                        });
                        // Waits while the channel is full (backpressure).
                        if tx.send_async(msg).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                CursorEntry::StepEnd { .. } => {
                    let Some(step) = current.take() else {
                        return Err(NodeError::protocol(&node, "step_end outside of a step"));
                    };
                    progress.sent = true;
                    if !chunk.is_empty() {
                        let msg = ScanMsg::Rows(RowChunk {
                            shard_id: members[step].1.shard_id,
                            rows: std::mem::replace(&mut chunk, Vec::with_capacity(per_chunk)),
                        });
                        if tx.send_async(msg).await.is_err() {
                            return Ok(());
                        }
                    }
                    progress.finished[step] = true;
                    let done = ScanMsg::Done {
                        index: members[step].0,
                        rows,
                        elapsed: begin.elapsed(),
                    };
                    if tx.send_async(done).await.is_err() {
                        return Ok(());
                    }
                }
                CursorEntry::StepError { step, error } => {
                    let step = member(step).expect("a member step");
                    if progress.finished[step] {
                        return Err(NodeError::protocol(
                            &node,
                            format!("unexpected step_error of step {step}"),
                        ));
                    }
                    current = None;
                    chunk.clear();
                    progress.sent = true;
                    progress.finished[step] = true;
                    let _ = failures.send(ScanMsg::Failed {
                        index: members[step].0,
                        error: ShardError::new(
                            Some(members[step].1.shard_id),
                            NodeError::sql(&node, &error),
                        ),
                    });
                }
                CursorEntry::Error { error } => return Err(NodeError::sql(&node, &error)),
            }
        }
        if progress.finished.iter().any(|f| !f) {
            return Err(NodeError::protocol(
                &node,
                "cursor stream ended before every step completed",
            ));
        }
        Ok(())
    }
    .await;
    result
}

/// A cursor leaves a stream open on the node, holding one of its
/// connections (sqld has 128, then answers 429) until the node's idle expiry
/// unless it is closed. The guard closes it when dropped: when the cursor is
/// done, and also when its task is aborted — the scan's consumer stopped
/// early, or had every row before the cursor's trailing entries (sqld sends
/// a replication index after the last step). The close is not waited for.
/// sqld takes a stream back from its cursor only once it has sent the last
/// entry (or seen the response dropped), and refuses a close that comes
/// first as a reused baton (HTTP 400): that is retried for a moment.
struct CursorCloser {
    client: HranaClient,
    endpoint: NodeEndpoint,
    baton: Option<String>,
}

impl CursorCloser {
    fn new(
        client: &HranaClient,
        endpoint: &NodeEndpoint,
        cursor: &crate::client::CursorStream,
    ) -> Self {
        CursorCloser {
            client: client.clone(),
            endpoint: endpoint.clone(),
            baton: cursor.baton().map(str::to_string),
        }
    }
}

impl Drop for CursorCloser {
    fn drop(&mut self) {
        // An aborted task is dropped by its runtime, so one is current here;
        // none only while the runtime itself shuts down (the backend exits),
        // when the node's expiry is left to do it.
        let (Some(baton), Ok(runtime)) = (self.baton.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        let client = self.client.clone();
        let endpoint = self.endpoint.clone();
        runtime.spawn(async move {
            const RETRY_AFTER_MS: [u64; 7] = [1, 2, 5, 10, 20, 50, 100];
            let close = PipelineReqBody {
                baton: Some(baton),
                requests: vec![StreamRequest::Close],
            };
            for wait_ms in std::iter::once(0).chain(RETRY_AFTER_MS) {
                tokio::time::sleep(Duration::from_millis(wait_ms)).await;
                match client.pipeline(&endpoint, &close).await {
                    Err(NodeError::Http { status: 400, .. }) => continue,
                    _ => return,
                }
            }
        });
    }
}

/// Waits before retry number `attempt` (the back-off doubling from
/// `base`, jittered), counts it, and moves `attempt` on.
async fn back_off(base: Duration, attempt: &mut u32) {
    tokio::time::sleep(jittered(base * 2u32.saturating_pow(*attempt))).await;
    RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    *attempt += 1;
}

/// `base` scaled by a random factor in [0.5, 1.5), so that many backends
/// retrying the same node do not come back in lockstep.
fn jittered(base: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded per process and per instance: enough entropy
    // for spreading retries, no extra dependency.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    let factor = 0.5 + (h.finish() % 1000) as f64 / 1000.0;
    base.mul_f64(factor)
}

async fn scan_shard(
    client: HranaClient,
    index: usize,
    q: ShardQuery,
    opts: ScanOptions,
    begin: Instant,
    tx: flume::Sender<ScanMsg>,
    failures: flume::Sender<ScanMsg>,
) {
    let mut attempt = 0;
    let result = loop {
        let mut handed_over = false;
        match stream_shard(&client, &q, &opts, &tx, &mut handed_over).await {
            Err(e) if !handed_over && e.is_transient() && attempt < opts.retries => {
                back_off(opts.retry_backoff, &mut attempt).await;
            }
            other => break other,
        }
    };
    // Err means the handle is gone: nobody is waiting any more.
    match result {
        Ok(rows) => {
            let done = ScanMsg::Done {
                index,
                rows,
                elapsed: begin.elapsed(),
            };
            let _ = tx.send_async(done).await;
        }
        Err(e) => {
            let _ = failures.send(ScanMsg::Failed {
                index,
                error: ShardError::new(Some(q.shard_id), e),
            });
        }
    }
}

/// Stream one shard's rows into the channel in chunks; returns the row
/// count. Sets `handed_over` once a chunk went to the channel.
async fn stream_shard(
    client: &HranaClient,
    q: &ShardQuery,
    opts: &ScanOptions,
    tx: &flume::Sender<ScanMsg>,
    handed_over: &mut bool,
) -> Result<u64, NodeError> {
    let node = NodeRef::from(&q.endpoint);
    if opts.bounded {
        return fetch_shard(client, q, opts, tx, handed_over).await;
    }
    let body = CursorReqBody {
        baton: None,
        batch: Batch {
            steps: vec![BatchStep {
                stmt: q.stmt.clone(),
                condition: None,
            }],
        },
    };
    let mut cursor = client.cursor(&q.endpoint, &body).await?;
    let _closer = CursorCloser::new(client, &q.endpoint, &cursor);
    stream_rows(&mut cursor, &node, q, opts, tx, handed_over).await
}

/// One shard's rows through one self-closing pipeline request.
async fn fetch_shard(
    client: &HranaClient,
    q: &ShardQuery,
    opts: &ScanOptions,
    tx: &flume::Sender<ScanMsg>,
    handed_over: &mut bool,
) -> Result<u64, NodeError> {
    let rows = fetch_rows(client, q, &q.stmt, opts.columns).await?;
    Ok(hand_over(q, rows, tx, handed_over).await)
}

/// The rows of `stmt` (one shard's SELECT) through one self-closing
/// pipeline request, each `columns` wide.
async fn fetch_rows(
    client: &HranaClient,
    q: &ShardQuery,
    stmt: &Stmt,
    columns: usize,
) -> Result<Vec<Vec<Value>>, NodeError> {
    let node = NodeRef::from(&q.endpoint);
    let body = PipelineReqBody {
        baton: None,
        requests: vec![
            StreamRequest::Execute { stmt: stmt.clone() },
            StreamRequest::Close,
        ],
    };
    let resp = client.pipeline(&q.endpoint, &body).await?;
    if let Some(e) = crate::client::first_error(&resp) {
        return Err(NodeError::sql(&node, e));
    }
    let result = match resp.results.into_iter().next() {
        Some(StreamResult::Ok {
            response: StreamResponse::Execute { result },
        }) => result,
        _ => return Err(NodeError::protocol(&node, "expected an execute result")),
    };
    if result.cols.len() != columns || result.rows.iter().any(|r| r.len() != columns) {
        return Err(NodeError::protocol(
            &node,
            format!("result rows do not have {columns} columns"),
        ));
    }
    Ok(result.rows)
}

/// Hands a shard's fetched rows to the channel as one chunk; their count.
async fn hand_over(
    q: &ShardQuery,
    rows: Vec<Vec<Value>>,
    tx: &flume::Sender<ScanMsg>,
    handed_over: &mut bool,
) -> u64 {
    let n = rows.len() as u64;
    if n > 0 {
        *handed_over = true;
        let _ = tx
            .send_async(ScanMsg::Rows(RowChunk {
                shard_id: q.shard_id,
                rows,
            }))
            .await;
    }
    n
}

/// A lone shard of unknown size (see [`ScanOptions::small_first`]): at
/// most `small` rows come whole in one request on the caller's thread;
/// more, and the shard is streamed from the start by a task on the I/O
/// runtime (its cursor's close needs a runtime that keeps running), which
/// reports through the same channels.
#[allow(clippy::too_many_arguments)]
async fn small_shard_first(
    client: HranaClient,
    (io, io_client): (tokio::runtime::Handle, HranaClient),
    handoff: Arc<Mutex<Option<JoinHandle<()>>>>,
    small: usize,
    q: ShardQuery,
    opts: ScanOptions,
    begin: Instant,
    tx: flume::Sender<ScanMsg>,
    failures: flume::Sender<ScanMsg>,
) {
    let limited = crate::remote_sql::with_row_limit(&q.stmt, small as u64 + 1);
    let mut attempt = 0;
    let fetched = loop {
        match fetch_rows(&client, &q, &limited, opts.columns).await {
            Err(e) if e.is_transient() && attempt < opts.retries => {
                back_off(opts.retry_backoff, &mut attempt).await;
            }
            other => break other,
        }
    };
    match fetched {
        Ok(rows) if rows.len() <= small => {
            let rows = hand_over(&q, rows, &tx, &mut false).await;
            let done = ScanMsg::Done {
                index: 0,
                rows,
                elapsed: begin.elapsed(),
            };
            let _ = tx.send_async(done).await;
        }
        Ok(_) => {
            let mut opts = opts;
            opts.small_first = None;
            let task = io.spawn(scan_shard(io_client, 0, q, opts, begin, tx, failures));
            *handoff.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        }
        Err(e) => {
            let _ = failures.send(ScanMsg::Failed {
                index: 0,
                error: ShardError::new(Some(q.shard_id), e),
            });
        }
    }
}

/// A result or row of a shard's answer has as many columns as the SELECT
/// asked for; a node answering otherwise is out of step with the plan.
fn check_width(node: &NodeRef, what: &str, got: usize, expected: usize) -> Result<(), NodeError> {
    if got == expected {
        Ok(())
    } else {
        Err(NodeError::protocol(
            node,
            format!("{what} has {got} columns, expected {expected}"),
        ))
    }
}

/// Read a cursor's rows into the channel in chunks.
async fn stream_rows(
    cursor: &mut crate::client::CursorStream,
    node: &NodeRef,
    q: &ShardQuery,
    opts: &ScanOptions,
    tx: &flume::Sender<ScanMsg>,
    handed_over: &mut bool,
) -> Result<u64, NodeError> {
    let node = node.clone();
    let per_chunk = opts.rows_per_chunk.max(1);
    let mut chunk = Vec::with_capacity(per_chunk);
    let mut rows = 0u64;
    let mut began = false;
    let mut ended = false;
    while let Some(entry) = cursor.next().await? {
        match entry {
            CursorEntry::StepBegin { cols, .. } => {
                if began {
                    return Err(NodeError::protocol(&node, "more than one step_begin"));
                }
                check_width(&node, "result", cols.len(), opts.columns)?;
                began = true;
            }
            CursorEntry::Row { row } => {
                if !began || ended {
                    return Err(NodeError::protocol(&node, "row outside of a step"));
                }
                check_width(&node, "row", row.len(), opts.columns)?;
                chunk.push(row);
                rows += 1;
                if chunk.len() >= per_chunk {
                    let full = std::mem::replace(&mut chunk, Vec::with_capacity(per_chunk));
                    let msg = ScanMsg::Rows(RowChunk {
                        shard_id: q.shard_id,
                        rows: full,
                    });
                    // Waits while the channel is full: this is the backpressure
                    // that keeps a huge scan's memory bounded.
                    *handed_over = true;
                    if tx.send_async(msg).await.is_err() {
                        return Ok(rows);
                    }
                }
            }
            CursorEntry::StepEnd { .. } => ended = true,
            CursorEntry::StepError { error, .. } | CursorEntry::Error { error } => {
                return Err(NodeError::sql(&node, &error));
            }
        }
    }
    if !ended {
        return Err(NodeError::protocol(
            &node,
            "cursor stream ended without completing its step",
        ));
    }
    if !chunk.is_empty() {
        let msg = ScanMsg::Rows(RowChunk {
            shard_id: q.shard_id,
            rows: chunk,
        });
        let _ = tx.send_async(msg).await;
    }
    Ok(rows)
}

/// A running scan. Poll with [`next`](ScanHandle::next); drop to cancel.
#[derive(Debug)]
pub struct ScanHandle {
    rx: flume::Receiver<ScanMsg>,
    /// Shard failures, delivered ahead of the rows (see `Executor::scan`).
    failures: flume::Receiver<ScanMsg>,
    /// See [`ScanOptions::skip_failed`].
    skip_failed: bool,
    capacity: usize,
    tasks: Vec<JoinHandle<()>>,
    /// Per task: the shards (indexes) it reads.
    task_shards: Vec<Vec<usize>>,
    /// Per shard: whether its final message (done/failed) was received.
    reported: Vec<bool>,
    remaining: usize,
    stats: Vec<ShardStats>,
    finished: bool,
    early_failure: Option<ShardError>,
    /// A lookup run on the caller's thread (see `Executor::scan`).
    direct: Option<Direct>,
    /// When the scan was started: the `elapsed` of its shard stats.
    begin: Instant,
}

/// The task of a lookup run on the caller's thread: polled only inside
/// [`ScanHandle::next`], on the executor's current-thread runtime; it
/// reports through the handle's channels like a spawned one.
struct Direct {
    local: Arc<Local>,
    /// `None` once it finished (its senders dropped with it).
    task: Option<DirectTask>,
    /// The I/O task a small-first shard handed its stream to, if it had
    /// more rows (aborted with the scan, like the spawned tasks).
    handoff: Arc<Mutex<Option<JoinHandle<()>>>>,
}

type DirectTask = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl fmt::Debug for Direct {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Direct")
            .field("running", &self.task.is_some())
            .finish()
    }
}

impl Direct {
    /// Drop the task (and with it its request), then let the runtime run
    /// briefly so the connection's own task sees the request cancelled and
    /// closes the connection, instead of holding it until the next lookup.
    fn cancel(&mut self) {
        if let Some(t) = self
            .handoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            t.abort();
        }
        if self.task.take().is_some() && tokio::runtime::Handle::try_current().is_err() {
            let rt = &self.local.runtime;
            signals::with_all_blocked(|| {
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    rt.block_on(async {
                        for _ in 0..4 {
                            tokio::task::yield_now().await;
                        }
                    })
                }));
            });
        }
    }

    /// Run the task until it finishes or `deadline` passes. `Err` if it
    /// panicked (it is dropped then). Signals stay blocked meanwhile: one
    /// sent to the process waits for the caller's thread, at most `deadline`
    /// (Postgres' handlers must not run inside the runtime), and a thread the
    /// runtime starts (name resolution) never takes one.
    fn run_until(&mut self, deadline: Instant) -> Result<(), ()> {
        let Some(task) = self.task.as_mut() else {
            return Ok(());
        };
        let wait = deadline.saturating_duration_since(Instant::now());
        let rt = &self.local.runtime;
        let ran = signals::with_all_blocked(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                // The timer is made inside the runtime, which it needs.
                rt.block_on(async { tokio::time::timeout(wait, task.as_mut()).await })
            }))
        });
        match ran {
            Ok(Ok(())) => {
                self.task = None;
                Ok(())
            }
            Ok(Err(_elapsed)) => Ok(()),
            Err(_) => {
                self.task = None;
                Err(())
            }
        }
    }
}

impl fmt::Debug for ScanMsg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScanMsg::Rows(c) => write!(f, "Rows(shard {}, {} rows)", c.shard_id, c.rows.len()),
            ScanMsg::Done { index, .. } => write!(f, "Done({index})"),
            ScanMsg::Failed { error, .. } => write!(f, "Failed({error})"),
        }
    }
}

impl ScanHandle {
    fn failed(error: ShardError) -> Self {
        let (_, rx) = flume::bounded(1);
        let (_, failures) = flume::unbounded();
        ScanHandle {
            rx,
            failures,
            skip_failed: false,
            capacity: 1,
            tasks: Vec::new(),
            task_shards: Vec::new(),
            reported: Vec::new(),
            remaining: 0,
            stats: Vec::new(),
            finished: false,
            early_failure: Some(error),
            direct: None,
            begin: Instant::now(),
        }
    }

    /// Wait up to `wait` for the next chunk (or the end, or a failure).
    /// `Duration::ZERO` only takes what is already there.
    pub fn next(&mut self, wait: Duration) -> ScanPoll {
        if let Some(e) = self.early_failure.take() {
            self.finished = true;
            return ScanPoll::Failed(e);
        }
        if self.finished {
            return ScanPoll::Done;
        }
        let deadline = Instant::now() + wait;
        loop {
            if let Some(direct) = &mut self.direct {
                if direct.run_until(deadline).is_err() {
                    let e = self.stats.first().map(|s| {
                        ShardError::internal(
                            Some(s.shard_id),
                            NodeRef {
                                node_id: s.node_id.clone(),
                                url: "-".into(),
                            },
                            "the request of this shard ended unexpectedly",
                        )
                    });
                    if self.remaining > 0 {
                        if let Some(e) = e {
                            return self.fail(e);
                        }
                    }
                }
            }
            if let Ok(ScanMsg::Failed { index, error }) = self.failures.try_recv() {
                self.mark_reported(index);
                if self.skip_failed {
                    return ScanPoll::Failed(error);
                }
                return self.fail(error);
            }
            if self.remaining == 0 {
                self.finished = true;
                return ScanPoll::Done;
            }
            let msg = match self.rx.recv_deadline(deadline) {
                Ok(m) => m,
                Err(flume::RecvTimeoutError::Timeout) if !self.failures.is_empty() => continue,
                Err(flume::RecvTimeoutError::Timeout) => match self.dead_task() {
                    Some(e) => return self.fail(e),
                    None => return ScanPoll::Pending,
                },
                Err(flume::RecvTimeoutError::Disconnected) if !self.failures.is_empty() => continue,
                // Unreachable while a task is unreported (each holds a sender).
                Err(flume::RecvTimeoutError::Disconnected) => {
                    let e = self.dead_task().unwrap_or_else(|| {
                        ShardError::internal(None, local_node(), "scan channel closed early")
                    });
                    return self.fail(e);
                }
            };
            match msg {
                ScanMsg::Rows(c) => {
                    // Rows so far, for a scan its reader ends early; the
                    // shard's done message sets the total.
                    let reported = &self.reported;
                    if let Some(s) = self
                        .stats
                        .iter_mut()
                        .enumerate()
                        .find(|(i, s)| s.shard_id == c.shard_id && !reported[*i])
                        .map(|(_, s)| s)
                    {
                        s.rows += c.rows.len() as u64;
                    }
                    return ScanPoll::Rows(c);
                }
                ScanMsg::Done {
                    index,
                    rows,
                    elapsed,
                } => {
                    if let Some(s) = self.stats.get_mut(index) {
                        s.rows = rows;
                        s.elapsed = Some(elapsed);
                    }
                    self.mark_reported(index);
                }
                ScanMsg::Failed { index, error } => {
                    self.mark_reported(index);
                    if self.skip_failed {
                        return ScanPoll::Failed(error);
                    }
                    return self.fail(error);
                }
            }
        }
    }

    fn mark_reported(&mut self, index: usize) {
        if let Some(r) = self.reported.get_mut(index) {
            if !*r {
                *r = true;
                self.remaining -= 1;
            }
        }
    }

    fn fail(&mut self, e: ShardError) -> ScanPoll {
        self.abort();
        self.finished = true;
        ScanPoll::Failed(e)
    }

    /// A task that ended without its final message (it panicked). Checked
    /// only when the channel looked empty; the task finished before the
    /// re-check of the channel below, so all it ever sent is visible.
    fn dead_task(&mut self) -> Option<ShardError> {
        let dead = (0..self.tasks.len())
            .filter(|&t| self.tasks[t].is_finished())
            .find_map(|t| {
                self.task_shards[t]
                    .iter()
                    .copied()
                    .find(|&i| !self.reported[i])
            })?;
        if !self.rx.is_empty() || !self.failures.is_empty() {
            return None;
        }
        let s = &self.stats[dead];
        Some(ShardError::internal(
            Some(s.shard_id),
            NodeRef {
                node_id: s.node_id.clone(),
                url: "-".into(),
            },
            "the I/O task of this shard ended unexpectedly",
        ))
    }

    /// Whether every row of this shard has been returned by `next` (its
    /// end, or its failure, was received after its last row): a merge of
    /// sorted shard streams needs to know which shards can still send.
    pub fn shard_finished(&self, shard_id: u32) -> bool {
        self.finished
            || self
                .stats
                .iter()
                .zip(&self.reported)
                .any(|(s, &r)| r && s.shard_id == shard_id)
    }

    /// Whether the scan's request runs on the caller's thread, inside
    /// [`next`](ScanHandle::next) (a one-shard lookup, see
    /// [`ExecutorConfig::direct_lookups`]).
    pub fn runs_on_callers_thread(&self) -> bool {
        self.direct.is_some()
    }

    /// Per-shard figures; complete once `next` returned `Done`.
    pub fn stats(&self) -> &[ShardStats] {
        &self.stats
    }

    /// Per-shard figures of a scan its reader ends before `Done` (a LIMIT
    /// or EXISTS above it was satisfied, a cursor closed): a shard still
    /// running counts the rows received so far, until now. Failed shards
    /// stay without `elapsed`.
    pub fn stats_at_end(&self) -> Vec<ShardStats> {
        let now = self.begin.elapsed();
        self.stats
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut s = s.clone();
                if !self.reported.get(i).copied().unwrap_or(true) {
                    s.elapsed = Some(now);
                }
                s
            })
            .collect()
    }

    /// Chunks waiting in the channel now (never more than [`capacity`]).
    ///
    /// [`capacity`]: ScanHandle::capacity
    pub fn buffered(&self) -> usize {
        self.rx.len()
    }

    /// The channel's capacity in chunks.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Abort every in-flight shard request (also done by `Drop`).
    pub fn abort(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(d) = &mut self.direct {
            d.cancel();
        }
    }
}

impl Drop for ScanHandle {
    fn drop(&mut self) {
        self.abort();
    }
}

async fn remove_extra(client: HranaClient, x: ExtraEntry) {
    let execute = |stmt: Stmt| StreamRequest::Execute { stmt };
    let begin = PipelineReqBody {
        baton: None,
        requests: vec![
            execute(Stmt::new("BEGIN IMMEDIATE", vec![])),
            execute(x.probe),
        ],
    };
    let Ok(resp) = client.pipeline(&x.holder, &begin).await else {
        return;
    };
    let empty = |r: &StreamResult| match r {
        StreamResult::Ok {
            response: StreamResponse::Execute { result },
        } => result.rows.is_empty(),
        _ => false,
    };
    let locked_and_empty = resp.results.len() == 2
        && matches!(resp.results[0], StreamResult::Ok { .. })
        && empty(&resp.results[1]);
    let mut end = Vec::new();
    // Whether the delete is known to have run while the holder's lock was
    // held; otherwise (an error, no answer: it may still run later) the
    // entry is written again once the holder's transaction is over.
    let mut deleted_under_lock = true;
    if locked_and_empty {
        if x.same_database {
            end.push(execute(x.delete));
        } else {
            deleted_under_lock = client
                .pipeline(
                    &x.lookup,
                    &crate::client::one_request_transaction(vec![x.delete]),
                )
                .await
                .is_ok_and(|r| all_ok(&r));
        }
    }
    end.push(execute(Stmt::new("COMMIT", vec![])));
    end.push(StreamRequest::Close);
    let committed = match resp.baton {
        Some(baton) => client
            .pipeline(
                &x.holder,
                &PipelineReqBody {
                    baton: Some(baton),
                    requests: end,
                },
            )
            .await
            .is_ok_and(|r| all_ok(&r)),
        None => false,
    };
    if locked_and_empty && !(deleted_under_lock && committed) {
        // The holder's lock may have ended (its stream expired) before the
        // delete: a row written since has its entry only if it is written
        // again. An extra is harmless.
        let _ = client
            .pipeline(
                &x.lookup,
                &crate::client::one_request_transaction(vec![x.reinsert]),
            )
            .await;
    }
}

/// Every request of a pipeline answer, and every step of its batches,
/// succeeded.
fn all_ok(resp: &PipelineRespBody) -> bool {
    resp.results.iter().all(|r| match r {
        StreamResult::Ok {
            response: StreamResponse::Batch { result },
        } => result.step_errors.iter().all(Option::is_none),
        StreamResult::Ok { .. } => true,
        _ => false,
    })
}

/// Results of [`Executor::execute`]. Drop to cancel.
#[derive(Debug)]
pub struct ExecHandle {
    rx: Option<flume::Receiver<(usize, Result<PipelineRespBody, ShardError>)>>,
    tasks: Vec<JoinHandle<()>>,
    meta: Vec<(Option<u32>, NodeRef)>,
    results: Vec<Option<Result<PipelineRespBody, ShardError>>>,
    missing: usize,
    /// The one request, run on the caller's thread within `wait`.
    direct: Option<Direct>,
}

impl ExecHandle {
    /// Wait up to `wait`; `Some(results)` (in request order) once all are
    /// in, `None` while some are still running. Returns the results once;
    /// later calls return `Some` of an empty vector.
    pub fn wait(&mut self, wait: Duration) -> Option<Vec<Result<PipelineRespBody, ShardError>>> {
        let deadline = Instant::now() + wait;
        if let Some(direct) = self.direct.as_mut() {
            if direct.run_until(deadline).is_err() && self.missing > 0 {
                let (shard, node) = self.meta[0].clone();
                self.store(
                    0,
                    Err(ShardError::internal(
                        shard,
                        node,
                        "the I/O task of this request ended unexpectedly",
                    )),
                );
            }
        }
        if let Some(rx) = self.rx.clone() {
            while self.missing > 0 {
                match rx.recv_deadline(deadline) {
                    Ok((i, r)) => self.store(i, r),
                    Err(flume::RecvTimeoutError::Timeout) => {
                        self.reap_dead(false);
                        if self.missing > 0 {
                            return None;
                        }
                    }
                    // Every task is gone and everything sent was received.
                    Err(flume::RecvTimeoutError::Disconnected) => self.reap_dead(true),
                }
            }
        }
        Some(
            std::mem::take(&mut self.results)
                .into_iter()
                .flatten()
                .collect(),
        )
    }

    fn store(&mut self, i: usize, r: Result<PipelineRespBody, ShardError>) {
        if let Some(slot) = self.results.get_mut(i) {
            if slot.is_none() {
                self.missing -= 1;
            }
            *slot = Some(r);
        }
    }

    /// Fill the slots of tasks that ended without sending (panicked);
    /// `all_gone`: every sender is dropped, so every empty slot is such a task.
    fn reap_dead(&mut self, all_gone: bool) {
        let Some(rx) = self.rx.clone() else { return };
        let dead: Vec<usize> = (0..self.tasks.len())
            .filter(|&i| self.results[i].is_none() && (all_gone || self.tasks[i].is_finished()))
            .collect();
        // Finished tasks sent before finishing: drain first.
        while let Ok((i, r)) = rx.try_recv() {
            self.store(i, r);
        }
        for i in dead {
            if self.results[i].is_none() {
                let (shard, node) = self.meta[i].clone();
                self.store(
                    i,
                    Err(ShardError::internal(
                        shard,
                        node,
                        "the I/O task of this request ended unexpectedly",
                    )),
                );
            }
        }
    }
}

impl Drop for ExecHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(d) = &mut self.direct {
            d.cancel();
        }
    }
}

/// Keep Postgres' signals off the I/O threads: a process-directed signal
/// (SIGINT for cancel, SIGUSR1 for latches, ...) may be delivered to any
/// thread that does not block it, and Postgres' handlers must run on the
/// backend's own thread.
mod signals {
    /// Block every signal in the calling thread.
    pub fn block_all() {
        // SAFETY: sigfillset initialises the set; pthread_sigmask only
        // changes this thread's mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut set);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        }
    }

    /// Run `f` with every signal blocked in this thread, so threads it
    /// spawns start with them blocked (no window before `on_thread_start`),
    /// then restore the old mask.
    pub fn with_all_blocked<T>(f: impl FnOnce() -> T) -> T {
        // SAFETY: as above; `old` is written by pthread_sigmask before use.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut set);
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            let out = f();
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
            out
        }
    }
}
