//! A node's shared state and its life cycle: start, stream expiry, and the
//! graceful stop (in-flight requests finish, open transactions roll back,
//! the database closes).

use crate::auth::Auth;
use crate::config::Config;
use crate::db::Db;
use crate::stats::Stats;
use crate::streams::Streams;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

pub struct Node {
    pub config: Config,
    /// Set when the node serves HTTPS (--tls-cert/--tls-key).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub db: Db,
    pub streams: Streams,
    pub stats: Stats,
    pub auth: Auth,
    /// The lookup database's node (`/lookup/…`): same listener, token and
    /// settings, its own file, connections, streams and statistics.
    pub lookup: Option<Arc<Node>>,
}

impl Node {
    pub fn open(config: Config) -> std::io::Result<Arc<Node>> {
        let lookup = Node::open_file(config.clone(), config.lookup_db_path(), None)?;
        Node::open_file(config.clone(), config.db_path(), Some(lookup))
    }

    fn open_file(
        config: Config,
        path: std::path::PathBuf,
        lookup: Option<Arc<Node>>,
    ) -> std::io::Result<Arc<Node>> {
        let db = Db::open(&config, path.clone()).map_err(|e| {
            std::io::Error::other(format!("cannot open the database {}: {e}", path.display()))
        })?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::acceptor(cert, key)?),
            _ => None,
        };
        Ok(Arc::new(Node {
            tls,
            streams: Streams::new(config.max_streams, config.stream_idle_timeout()),
            auth: Auth::new(config.auth_token.as_deref()),
            stats: Stats::default(),
            db,
            config,
            lookup,
        }))
    }

    /// Expires idle streams until the task is aborted. An expired stream's
    /// transaction is rolled back on a blocking thread.
    pub async fn reap_streams(self: Arc<Node>) {
        let period = (self.config.stream_idle_timeout() / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let expired = self.streams.take_expired();
            if expired.is_empty() {
                continue;
            }
            self.stats
                .streams_expired
                .fetch_add(expired.len() as u64, Relaxed);
            tracing::debug!(count = expired.len(), "idle streams expired");
            let node = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                for s in expired {
                    node.db.give_back(s.conn);
                }
            })
            .await;
        }
    }

    /// Closes an idle stream whose client can no longer continue it (it
    /// went away before receiving the stream's next baton), rolling its
    /// transaction back; on a blocking thread.
    pub fn close_stream(&self, id: u64) {
        if let Some(s) = self.streams.take(id) {
            self.db.give_back(s.conn);
        }
    }

    /// After the HTTP side has drained: roll back and close every stream,
    /// stop the writer, close the database.
    pub async fn close(self: Arc<Node>) {
        if let Some(lookup) = self.lookup.clone() {
            Box::pin(lookup.close()).await;
        }
        let node = self.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let open = node.streams.take_all();
            if !open.is_empty() {
                tracing::info!(
                    count = open.len(),
                    "closing open streams (transactions roll back)"
                );
            }
            for s in open {
                node.db.give_back(s.conn);
            }
            node.db.close();
        })
        .await;
    }
}
