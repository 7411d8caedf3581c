//! conductor-node: one SQLite database served over the libSQL remote
//! protocol (Hrana 3 over HTTP, JSON and Protobuf).
//!
//! The binary is `conductor-node`; other crates' tests run a node in-process:
//!
//! ```no_run
//! let node = conductor_node::spawn(conductor_node::Config::temp()).unwrap();
//! let url = node.url(); // http://127.0.0.1:PORT
//! // ... talk Hrana to `url` ...
//! node.shutdown();
//! ```

mod auth;
mod config;
mod cursor;
mod db;
mod encoding;
mod errors;
mod exec;
mod functions;
mod handlers;
mod http;
mod lockwait;
mod node;
mod stats;
mod streams;
mod tls;
mod writer;

pub use config::{Config, Synchronous};
pub use errors::sqlite_code_name;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Serves `config` on an already bound listener until `shutdown` resolves,
/// then shuts down gracefully. For callers that own a tokio runtime (the
/// binary does).
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let node = node::Node::open(config)?;
    http::serve(node, listener, shutdown).await;
    Ok(())
}

/// A node running on its own thread and tokio runtime, for tests: usable
/// from synchronous code. Dropping it shuts it down too.
pub struct RunningNode {
    addr: SocketAddr,
    data_dir: PathBuf,
    remove_data_dir: bool,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningNode {
    /// The address it listens on (the real port when the config said 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`, the base URL for Hrana clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Graceful stop: in-flight requests finish, open transactions roll
    /// back, the database closes. Returns when the node is down.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if self.remove_data_dir {
            let _ = std::fs::remove_dir_all(&self.data_dir);
        }
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

/// Starts a node on a new thread with its own runtime. Returns once it is
/// listening (so `addr()` is final) or with the error that stopped it
/// (address in use, database cannot be opened). `threads == 0` means 2
/// here. The node logs through whatever `tracing` subscriber the process
/// has (`log_level` is only used by the binary).
pub fn spawn(config: Config) -> std::io::Result<RunningNode> {
    let std_listener = std::net::TcpListener::bind(config.listen)?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let data_dir = config.data_dir.clone();
    let remove_data_dir = config.remove_data_dir_on_shutdown;
    let threads = if config.threads == 0 {
        2
    } else {
        config.threads
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(format!("conductor-node-{}", addr.port()))
        .enable_all()
        .build()?;
    // Open the database here so an error reaches the caller.
    let node = node::Node::open(config)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("conductor-node-{}", addr.port()))
        .spawn(move || {
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener)
                    .expect("register the listener with tokio");
                http::serve(node, listener, async {
                    let _ = stopped.await;
                })
                .await;
            });
            // Dropping the runtime ends its worker threads, which closes
            // their read connections.
            drop(runtime);
        })?;
    Ok(RunningNode {
        addr,
        data_dir,
        remove_data_dir,
        stop: Some(stop),
        thread: Some(thread),
    })
}

impl Config {
    /// [`Config::new`] on a fresh directory under the system temp dir,
    /// removed when the [`RunningNode`] shuts down.
    pub fn temp() -> Config {
        static N: AtomicU64 = AtomicU64::new(0);
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).expect("OS random source");
        let dir = std::env::temp_dir().join(format!(
            "conductor-node-{}-{}-{:016x}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            u64::from_le_bytes(r)
        ));
        let mut c = Config::new(dir);
        c.remove_data_dir_on_shutdown = true;
        c
    }
}
