//! Hrana-over-HTTP client for the storage nodes: conductor-node, or any
//! libSQL server speaking Hrana 3 over HTTP, such as sqld
//! (docs/ARCHITECTURE.md, The node protocol).
//!
//! Plain `http://` nodes are spoken to through [`crate::http1`] (a lean
//! keep-alive pool: a one-row write's request costs the router about half
//! the CPU it costs through reqwest); `https://` nodes through one
//! `reqwest::Client` with rustls. Every request
//! has a deadline; a cursor body is read chunk by chunk and split into lines
//! with a maximum line length, so memory stays bounded however large the
//! result. Whatever a node sends back, a malformed body is a
//! [`NodeError::Protocol`], never a panic.
//!
//! Both encodings of the protocol are spoken: Protobuf (`/v3-protobuf/*`,
//! cursor entries as length-delimited messages) where the node serves it,
//! JSON (`/v3/*`, cursor entries as lines) otherwise. With
//! [`WireEncoding::Auto`] the first request to a node is sent in Protobuf
//! and doubles as the probe: a Protobuf answer makes the client remember the
//! node (by URL) as Protobuf; an answer saying the node does not know the
//! encoding (HTTP 404, 405 or 415, or a JSON or text answer, to this or any
//! later Protobuf request) makes it resend the request in JSON and remember
//! the node as JSON-only. Requests are never resent after the node may have
//! run them (see [`HranaClient::pipeline`]).
//!
//! Decoding follows the protocol's forward-compatibility rule: unknown
//! fields are ignored, and cursor entries the client has no use for (sqld's
//! `replication_index`, or a type a newer server adds) are skipped. What the
//! client relies on — the result of every request, rows, values, the shape
//! of a step — is still checked strictly.

use conductor_hrana::protobuf as pb;
use conductor_hrana::{
    Batch, BatchCond, BatchStep, CursorEntry, CursorReqBody, CursorRespBody, PipelineReqBody,
    PipelineRespBody, Stmt, StreamRequest, StreamResponse, StreamResult,
};
use prost::Message as _;
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where a node lives and how to authenticate to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeEndpoint {
    /// The catalog's name of the node (shown in errors).
    pub node_id: String,
    /// Base URL, e.g. `http://127.0.0.1:7401` (a trailing `/` is fine).
    pub url: String,
    /// Sent as `Authorization: Bearer <token>` when set.
    pub token: Option<String>,
}

/// Where the bytes sent to and received from the nodes are reported: a
/// function of (node URL, bytes sent, bytes received) the embedding process
/// installs once. It is called on the I/O threads, so it must not call into
/// the host (the extension adds to atomics in shared memory).
pub static TRAFFIC: std::sync::OnceLock<fn(&str, u64, u64)> = std::sync::OnceLock::new();

fn count_traffic(url: &str, sent: u64, received: u64) {
    if let Some(report) = TRAFFIC.get() {
        report(url, sent, received);
    }
}

/// Names a node in errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRef {
    /// The catalog's name of the node.
    pub node_id: String,
    /// Its base URL.
    pub url: String,
}

impl From<&NodeEndpoint> for NodeRef {
    fn from(ep: &NodeEndpoint) -> Self {
        NodeRef {
            node_id: ep.node_id.clone(),
            url: ep.url.clone(),
        }
    }
}

/// Why a request to a node failed. Every variant names the node; the
/// `Display` form is "node <id> (<url>): <what>".
#[derive(Debug, Clone, PartialEq)]
pub enum NodeError {
    /// The node could not be reached (refused, DNS, bad URL): the request
    /// was never delivered, so retrying cannot apply it twice.
    Connect { node: NodeRef, message: String },
    /// The connection broke after the request may have been delivered.
    Io { node: NodeRef, message: String },
    /// No answer (or no further bytes of a streaming answer) within `after`.
    Timeout { node: NodeRef, after: Duration },
    /// A non-2xx status; `message` is the node's error message or an
    /// excerpt of its body, `code` its error code when it sent one.
    Http {
        node: NodeRef,
        status: u16,
        message: String,
        code: Option<String>,
    },
    /// The node answered something that is not the protocol (malformed
    /// JSON, wrong shape, truncated stream, oversized line).
    Protocol { node: NodeRef, message: String },
    /// SQLite refused the statement; `code` e.g. `SQLITE_CONSTRAINT_PRIMARYKEY`.
    Sql {
        node: NodeRef,
        message: String,
        code: Option<String>,
    },
    /// A failure on our side (I/O runtime could not start, task died).
    Internal { node: NodeRef, message: String },
}

impl NodeError {
    /// The node the error is about.
    pub fn node(&self) -> &NodeRef {
        match self {
            NodeError::Connect { node, .. }
            | NodeError::Io { node, .. }
            | NodeError::Timeout { node, .. }
            | NodeError::Http { node, .. }
            | NodeError::Protocol { node, .. }
            | NodeError::Sql { node, .. }
            | NodeError::Internal { node, .. } => node,
        }
    }

    /// The SQLite (or node) error code, when the node sent one.
    pub fn sqlite_code(&self) -> Option<&str> {
        match self {
            NodeError::Sql { code, .. } | NodeError::Http { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// Whether the failure is plausibly transient (worth a retry of a read).
    pub fn is_transient(&self) -> bool {
        match self {
            NodeError::Connect { .. } | NodeError::Io { .. } | NodeError::Timeout { .. } => true,
            NodeError::Http { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// What went wrong, without the node prefix (for messages that name the
    /// node themselves, such as `ShardError`).
    pub fn detail(&self) -> String {
        match self {
            NodeError::Connect { message, .. } => format!("cannot connect: {message}"),
            NodeError::Io { message, .. } => format!("connection failed: {message}"),
            NodeError::Timeout { after, .. } => format!("no answer within {after:?}"),
            NodeError::Http {
                status,
                message,
                code,
                ..
            } => match code {
                Some(c) => format!("HTTP {status}: {message} ({c})"),
                None => format!("HTTP {status}: {message}"),
            },
            NodeError::Protocol { message, .. } => format!("protocol error: {message}"),
            NodeError::Sql { message, code, .. } => match code {
                Some(c) => format!("{message} ({c})"),
                None => message.clone(),
            },
            NodeError::Internal { message, .. } => format!("internal error: {message}"),
        }
    }

    pub(crate) fn protocol(node: &NodeRef, message: impl Into<String>) -> Self {
        NodeError::Protocol {
            node: node.clone(),
            message: message.into(),
        }
    }

    pub(crate) fn sql(node: &NodeRef, e: &conductor_hrana::Error) -> Self {
        NodeError::Sql {
            node: node.clone(),
            message: e.message.clone(),
            code: e.code.clone(),
        }
    }
}

impl fmt::Display for NodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.node();
        write!(f, "node {} ({}): {}", n.node_id, n.url, self.detail())
    }
}

impl std::error::Error for NodeError {}

/// Which encoding of Hrana over HTTP the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WireEncoding {
    /// Protobuf where the node serves it, else JSON; decided per node on
    /// its first request and remembered (see the module documentation).
    #[default]
    Auto,
    /// Always JSON (`/v3/pipeline`, `/v3/cursor`).
    Json,
    /// Always Protobuf (`/v3-protobuf/pipeline`, `/v3-protobuf/cursor`);
    /// a node that does not serve it fails every request.
    Protobuf,
}

impl WireEncoding {
    /// `auto`, `json` or `protobuf` (any case).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Some(WireEncoding::Auto),
            "json" => Some(WireEncoding::Json),
            "protobuf" => Some(WireEncoding::Protobuf),
            _ => None,
        }
    }
}

/// The encoding of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Protobuf,
}

impl Encoding {
    fn pipeline_path(self) -> &'static str {
        match self {
            Encoding::Json => "v3/pipeline",
            Encoding::Protobuf => "v3-protobuf/pipeline",
        }
    }

    fn cursor_path(self) -> &'static str {
        match self {
            Encoding::Json => "v3/cursor",
            Encoding::Protobuf => "v3-protobuf/cursor",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Encoding::Json => "application/json",
            Encoding::Protobuf => "application/x-protobuf",
        }
    }
}

/// Timeouts and limits of the client.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// TCP connect deadline.
    pub connect_timeout: Duration,
    /// Deadline of a whole pipeline request, and of a cursor request up to
    /// its response headers.
    pub request_timeout: Duration,
    /// Longest silence allowed between two chunks of a streaming body.
    pub idle_timeout: Duration,
    /// Longest line of a cursor body; bounds the memory one entry can take.
    pub max_line_bytes: usize,
    /// Largest pipeline response body accepted.
    pub max_body_bytes: usize,
    /// How long an unused keep-alive connection stays in the pool. Below
    /// the 30 s after which hyper-based servers (conductor-node, sqld)
    /// close an idle connection, so a connection is not reused just as the
    /// node closes it (a write sent on it would have an unknown outcome).
    pub pool_idle_timeout: Duration,
    /// Extra trusted certificate authorities (PEM bundle) for `https://`
    /// nodes, added to the system's: a cluster's private CA.
    pub ca_pem: Option<Vec<u8>>,
    /// The wire encoding (default: Protobuf where the node serves it).
    pub encoding: WireEncoding,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            // A row carrying a 64 MiB bytea value is ~90 MB of JSON.
            max_line_bytes: 256 << 20,
            max_body_bytes: 512 << 20,
            pool_idle_timeout: Duration::from_secs(20),
            ca_pem: None,
            encoding: WireEncoding::Auto,
        }
    }
}

/// How much of an error body we keep for the message.
const ERROR_EXCERPT_BYTES: usize = 512;

/// Hrana client over keep-alive connection pools (one for `http://`
/// nodes, reqwest's for `https://`). Cheap to share (both are `Arc`s
/// inside); must be used within one tokio runtime, the one its
/// connections were opened on.
#[derive(Debug, Clone)]
pub struct HranaClient {
    http: reqwest::Client,
    plain: crate::http1::Pool,
    config: ClientConfig,
    /// The request deadline in milliseconds (also the longest silence of a
    /// streaming body), changeable while the client is in use (a session
    /// setting it): see [`HranaClient::set_request_timeout`].
    timeout_ms: Arc<AtomicU64>,
    /// With [`WireEncoding::Auto`]: the encoding each node (by URL) was
    /// found to speak. A node not in the map has not answered yet.
    known: Arc<Mutex<HashMap<String, Encoding>>>,
    /// Parsed request URLs by their text: parsing one (host, IDNA) costs
    /// more than the rest of building a small request.
    urls: Arc<Mutex<HashMap<String, reqwest::Url>>>,
}

/// Parsed URLs kept per client at most (a server has a few nodes, each a
/// few paths); past it the cache starts over.
const MAX_CACHED_URLS: usize = 1024;

/// What a Protobuf attempt of a request came to.
enum Attempt<T> {
    Done(Result<T, NodeError>),
    /// The node does not speak Protobuf and did not run the request:
    /// resend it in JSON.
    Fallback,
}

/// Whether an answer to a Protobuf request says that the node does not
/// speak the encoding (so it cannot have run the request): no such
/// endpoint, or an answer in another encoding.
fn not_protobuf(status: u16, content_type: Option<&str>) -> bool {
    if matches!(status, 404 | 405 | 415) {
        return true;
    }
    is_success(status)
        && content_type.is_some_and(|t| {
            let t = t.to_ascii_lowercase();
            t.contains("json") || t.starts_with("text/")
        })
}

fn is_plain(url: &reqwest::Url) -> bool {
    url.scheme() == "http"
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// A node's answer, from either transport.
#[derive(Debug)]
enum Response {
    Plain(crate::http1::Response),
    Reqwest(reqwest::Response),
}

impl Response {
    fn status(&self) -> u16 {
        match self {
            Response::Plain(r) => r.status(),
            Response::Reqwest(r) => r.status().as_u16(),
        }
    }

    /// Header `name` (lower case), if present and text.
    fn header(&self, name: &str) -> Option<&str> {
        match self {
            Response::Plain(r) => r.header(name),
            Response::Reqwest(r) => r.headers().get(name).and_then(|v| v.to_str().ok()),
        }
    }

    /// The node's `x-conductor-lock-wait-us` header: how long the request
    /// waited for the node's write lock (0 when absent).
    fn lock_wait_us(&self) -> u64 {
        self.header("x-conductor-lock-wait-us")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn content_type(&self) -> Option<&str> {
        self.header("content-type")
    }

    /// The next piece of the body, `None` at its end; `after` is what a
    /// timeout of the caller's would be reported as.
    async fn chunk(
        &mut self,
        node: &NodeRef,
        after: Duration,
    ) -> Result<Option<bytes::Bytes>, NodeError> {
        match self {
            Response::Plain(r) => r.chunk().await.map_err(|e| plain_error(node, e)),
            Response::Reqwest(r) => r.chunk().await.map_err(|e| transport_error(node, e, after)),
        }
    }
}

impl HranaClient {
    /// Build the client. Installs rustls' ring provider as the process
    /// default if none is installed yet (we build without aws-lc).
    pub fn new(config: ClientConfig) -> std::io::Result<Self> {
        // Err only means a provider is already installed, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let extra_roots = match &config.ca_pem {
            Some(pem) => crate::tls::parse_pem_bundle(pem).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("invalid CA certificates: {e}"),
                )
            })?,
            None => Vec::new(),
        };
        let tls = crate::tls::client_config(extra_roots).map_err(std::io::Error::other)?;
        let builder = reqwest::Client::builder().tls_backend_preconfigured(tls);
        let http = builder
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(config.pool_idle_timeout)
            .tcp_nodelay(true)
            // Loopback nodes must never be routed through an environment proxy.
            .no_proxy()
            .build()
            .map_err(std::io::Error::other)?;
        let timeout_ms = Arc::new(AtomicU64::new(config.request_timeout.as_millis() as u64));
        let plain = crate::http1::Pool::new(config.connect_timeout, config.pool_idle_timeout);
        Ok(HranaClient {
            http,
            plain,
            config,
            timeout_ms,
            known: Arc::default(),
            urls: Arc::default(),
        })
    }

    /// A client with its own connection pool, for use on another runtime
    /// (a pool's connections are driven by the runtime that opened them),
    /// sharing this one's settings, request deadline and known encodings.
    pub fn with_own_pool(&self) -> std::io::Result<HranaClient> {
        let mut c = HranaClient::new(self.config.clone())?;
        c.timeout_ms = self.timeout_ms.clone();
        c.known = self.known.clone();
        c.urls = self.urls.clone();
        Ok(c)
    }

    /// Change the deadline of requests started from now on (and the longest
    /// silence allowed within a streaming answer).
    pub fn set_request_timeout(&self, timeout: Duration) {
        self.timeout_ms
            .store(timeout.as_millis().max(1) as u64, Ordering::Relaxed);
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    /// The configuration this client was built with.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The encoding of the next request to `ep`, and whether it is the
    /// node's first (the probe, see the module documentation).
    fn encoding_for(&self, ep: &NodeEndpoint) -> (Encoding, bool) {
        match self.config.encoding {
            WireEncoding::Json => (Encoding::Json, false),
            WireEncoding::Protobuf => (Encoding::Protobuf, false),
            WireEncoding::Auto => {
                let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
                match known.get(node_key(ep)) {
                    Some(e) => (*e, false),
                    None => (Encoding::Protobuf, true),
                }
            }
        }
    }

    fn remember(&self, ep: &NodeEndpoint, encoding: Encoding) {
        if self.config.encoding == WireEncoding::Auto {
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            known.insert(node_key(ep).to_string(), encoding);
        }
    }

    /// The encoding this client found `ep` to speak (`None` before its
    /// first answer, and with a forced [`WireEncoding`]).
    pub fn known_encoding(&self, ep: &NodeEndpoint) -> Option<Encoding> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        known.get(node_key(ep)).copied()
    }

    /// `POST {url}/v3/pipeline` (or `/v3-protobuf/pipeline`). Per-request
    /// errors inside the body are returned as they are (see
    /// [`first_error`]); a reply whose result count differs from the request
    /// count is a protocol error. With [`WireEncoding::Auto`] a request is
    /// resent in JSON only when the answer shows the node did not read it
    /// (404/405/415, or an answer in JSON); an answer that does not decode
    /// is a protocol error, since the requests may have run.
    pub async fn pipeline(
        &self,
        ep: &NodeEndpoint,
        body: &PipelineReqBody,
    ) -> Result<PipelineRespBody, NodeError> {
        let node = NodeRef::from(ep);
        let deadline = self.request_timeout();
        let work = async {
            let (encoding, probe) = self.encoding_for(ep);
            if encoding == Encoding::Protobuf {
                match self.pipeline_protobuf(ep, &node, body, deadline).await {
                    Attempt::Done(r) => {
                        if probe && r.is_ok() {
                            self.remember(ep, Encoding::Protobuf);
                        }
                        return r;
                    }
                    Attempt::Fallback => self.remember(ep, Encoding::Json),
                }
            }
            self.pipeline_json(ep, &node, body, deadline).await
        };
        match tokio::time::timeout(deadline, work).await {
            Ok(r) => r,
            Err(_) => Err(NodeError::Timeout {
                node,
                after: deadline,
            }),
        }
    }

    async fn pipeline_json(
        &self,
        ep: &NodeEndpoint,
        node: &NodeRef,
        body: &PipelineReqBody,
        deadline: Duration,
    ) -> Result<PipelineRespBody, NodeError> {
        let json = serde_json::to_vec(body)
            .map_err(|e| NodeError::protocol(node, format!("cannot encode request: {e}")))?;
        let resp = self
            .send(
                ep,
                node,
                Encoding::Json.pipeline_path(),
                Encoding::Json,
                json,
                deadline,
            )
            .await?;
        if !is_success(resp.status()) {
            return Err(http_error(node, resp, deadline).await);
        }
        let waited = resp.lock_wait_us();
        let bytes = read_limited(node, resp, self.config.max_body_bytes, deadline).await?;
        let mut parsed: PipelineRespBody = serde_json::from_slice(&bytes)
            .map_err(|e| NodeError::protocol(node, format!("malformed pipeline response: {e}")))?;
        parsed.lock_wait_us = waited;
        check_results(node, body, parsed)
    }

    async fn pipeline_protobuf(
        &self,
        ep: &NodeEndpoint,
        node: &NodeRef,
        body: &PipelineReqBody,
        deadline: Duration,
    ) -> Attempt<PipelineRespBody> {
        let encoded = encode_pipeline(body);
        let path = Encoding::Protobuf.pipeline_path();
        let resp = match self
            .send(ep, node, path, Encoding::Protobuf, encoded, deadline)
            .await
        {
            Ok(r) => r,
            Err(e) => return Attempt::Done(Err(e)),
        };
        if self.config.encoding == WireEncoding::Auto
            && not_protobuf(resp.status(), resp.content_type())
        {
            return Attempt::Fallback;
        }
        if !is_success(resp.status()) {
            return Attempt::Done(Err(http_error(node, resp, deadline).await));
        }
        let waited = resp.lock_wait_us();
        let r = async {
            let bytes = read_limited(node, resp, self.config.max_body_bytes, deadline).await?;
            let parsed = pb::PipelineRespBody::decode(&bytes[..]).map_err(|e| {
                NodeError::protocol(node, format!("malformed Protobuf pipeline response: {e}"))
            })?;
            if !values_known(&parsed) {
                return Err(NodeError::protocol(
                    node,
                    "malformed Protobuf pipeline response: a value of an unknown kind",
                ));
            }
            let mut parsed: PipelineRespBody = parsed.into();
            parsed.lock_wait_us = waited;
            check_results(node, body, parsed)
        }
        .await;
        Attempt::Done(r)
    }

    /// POST a request body; a failure to send it is diagnosed (a body
    /// over the node's limit), a 413 answer restated.
    async fn send(
        &self,
        ep: &NodeEndpoint,
        node: &NodeRef,
        path: &str,
        encoding: Encoding,
        body: Vec<u8>,
        deadline: Duration,
    ) -> Result<Response, NodeError> {
        let size = body.len();
        let sent = self
            .request(
                reqwest::Method::POST,
                ep,
                node,
                path,
                Some(encoding.content_type()),
                body,
                deadline,
            )
            .await;
        let resp = match sent {
            Ok(r) => {
                count_traffic(&ep.url, size as u64, 0);
                r
            }
            Err(err) => return Err(diagnose_large_body(ep, node, size, err).await),
        };
        if resp.status() == 413 {
            let err = http_error(node, resp, deadline).await;
            return Err(explain_body_limit(node, size, err));
        }
        Ok(resp)
    }

    /// `POST {url}/v3/cursor` (or `/v3-protobuf/cursor`): waits for the
    /// response headers and the first entry, then hands back a stream of
    /// entries decoded as they arrive. With [`WireEncoding::Auto`], an
    /// answer that is not Protobuf is resent in JSON, and so is a probe (the
    /// node's first request) whose first frame does not decode: the cursors
    /// conductor sends only read.
    pub async fn cursor(
        &self,
        ep: &NodeEndpoint,
        body: &CursorReqBody,
    ) -> Result<CursorStream, NodeError> {
        let node = NodeRef::from(ep);
        let (encoding, probe) = self.encoding_for(ep);
        if encoding == Encoding::Protobuf {
            match self
                .cursor_in(ep, &node, body, Encoding::Protobuf, probe)
                .await
            {
                Attempt::Done(r) => {
                    if probe && r.is_ok() {
                        self.remember(ep, Encoding::Protobuf);
                    }
                    return r;
                }
                Attempt::Fallback => self.remember(ep, Encoding::Json),
            }
        }
        match self.cursor_in(ep, &node, body, Encoding::Json, false).await {
            Attempt::Done(r) => r,
            Attempt::Fallback => unreachable!("only a Protobuf probe falls back"),
        }
    }

    async fn cursor_in(
        &self,
        ep: &NodeEndpoint,
        node: &NodeRef,
        body: &CursorReqBody,
        encoding: Encoding,
        probe: bool,
    ) -> Attempt<CursorStream> {
        let deadline = self.request_timeout();
        let encoded = match encoding {
            Encoding::Json => serde_json::to_vec(body).map_err(|e| e.to_string()),
            Encoding::Protobuf => Ok(encode_cursor(body)),
        };
        let encoded = match encoded {
            Ok(b) => b,
            Err(e) => {
                return Attempt::Done(Err(NodeError::protocol(
                    node,
                    format!("cannot encode request: {e}"),
                )))
            }
        };
        let send = self.send(
            ep,
            node,
            encoding.cursor_path(),
            encoding,
            encoded,
            deadline,
        );
        let resp = match tokio::time::timeout(deadline, send).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Attempt::Done(Err(e)),
            Err(_) => {
                return Attempt::Done(Err(NodeError::Timeout {
                    node: node.clone(),
                    after: deadline,
                }))
            }
        };
        if encoding == Encoding::Protobuf
            && self.config.encoding == WireEncoding::Auto
            && not_protobuf(resp.status(), resp.content_type())
        {
            return Attempt::Fallback;
        }
        if !is_success(resp.status()) {
            return Attempt::Done(Err(http_error(node, resp, deadline).await));
        }
        let max = self.config.max_line_bytes;
        let mut stream = CursorStream {
            node: node.clone(),
            resp,
            idle_timeout: self.request_timeout().min(self.config.idle_timeout),
            reader: match encoding {
                Encoding::Json => Reader::Lines(LineReader::new(max)),
                Encoding::Protobuf => Reader::Frames(pb::FrameReader::new(max)),
            },
            header: None,
            open_step: None,
            width: 0,
        };
        let header = match stream.read_header().await {
            Ok(h) => h,
            Err(NodeError::Protocol { .. }) if probe => return Attempt::Fallback,
            Err(e) => return Attempt::Done(Err(e)),
        };
        stream.header = Some(header);
        Attempt::Done(Ok(stream))
    }

    /// `GET {url}/health`: `Ok` when the node answers 2xx.
    pub async fn health(&self, ep: &NodeEndpoint) -> Result<(), NodeError> {
        let node = NodeRef::from(ep);
        let deadline = self.request_timeout();
        let asked = self.request(
            reqwest::Method::GET,
            ep,
            &node,
            "health",
            None,
            Vec::new(),
            deadline,
        );
        let mut resp = match tokio::time::timeout(deadline, asked).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(NodeError::Timeout {
                    node,
                    after: deadline,
                })
            }
        };
        if !is_success(resp.status()) {
            return Err(http_error(&node, resp, deadline).await);
        }
        // Read to the end, so the connection can be used again.
        let drained = async {
            while resp.chunk(&node, deadline).await?.is_some() {}
            Ok(())
        };
        match tokio::time::timeout(deadline, drained).await {
            Ok(r) => r,
            Err(_) => Err(NodeError::Timeout {
                node,
                after: deadline,
            }),
        }
    }

    /// Send one request and wait for its answer's head: `http://` nodes
    /// through [`crate::http1`], others (and URLs that do not parse, for
    /// reqwest to report) through reqwest.
    #[allow(clippy::too_many_arguments)]
    async fn request(
        &self,
        method: reqwest::Method,
        ep: &NodeEndpoint,
        node: &NodeRef,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        deadline: Duration,
    ) -> Result<Response, NodeError> {
        let url = self.url(ep, path);
        if let Ok(url) = &url {
            if is_plain(url) {
                let req = crate::http1::Request {
                    method,
                    url,
                    content_type,
                    bearer: ep.token.as_deref(),
                    body: &body,
                };
                return match self.plain.send(req).await {
                    Ok(r) => Ok(Response::Plain(r)),
                    Err(e) => Err(plain_error(node, e)),
                };
            }
        }
        let mut req = match url {
            Ok(url) => self.http.request(method, url),
            Err(text) => self.http.request(method, text),
        };
        if let Some(t) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, t);
        }
        if let Some(t) = &ep.token {
            req = req.bearer_auth(t);
        }
        match req.body(body).send().await {
            Ok(r) => Ok(Response::Reqwest(r)),
            Err(e) => Err(transport_error(node, e, deadline)),
        }
    }

    /// Whether requests to `ep` go through [`crate::http1`], whose pool
    /// checks a connection before reusing it (reqwest's notices a closed
    /// one only when its runtime runs).
    pub fn is_plain_http(&self, ep: &NodeEndpoint) -> bool {
        self.url(ep, "").is_ok_and(|url| is_plain(&url))
    }

    /// The URL of `path` on `ep`, parsed once. Text that does not parse is
    /// handed on as it is, for reqwest to report.
    fn url(&self, ep: &NodeEndpoint, path: &str) -> Result<reqwest::Url, String> {
        let text = endpoint_url(ep, path);
        let mut urls = self.urls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(url) = urls.get(&text) {
            return Ok(url.clone());
        }
        match reqwest::Url::parse(&text) {
            Ok(url) => {
                if urls.len() >= MAX_CACHED_URLS {
                    urls.clear();
                }
                urls.insert(text, url.clone());
                Ok(url)
            }
            Err(_) => Err(text),
        }
    }
}

/// Statements run on one node as one transaction: each only if the previous
/// one succeeded, COMMIT at the end, ROLLBACK if anything failed, then the
/// stream is closed.
pub fn one_request_transaction(statements: Vec<Stmt>) -> PipelineReqBody {
    let mut steps = vec![BatchStep {
        stmt: Stmt::new("BEGIN", vec![]),
        condition: None,
    }];
    for stmt in statements.into_iter().chain([Stmt::new("COMMIT", vec![])]) {
        let prev = steps.len() as u32 - 1;
        steps.push(BatchStep {
            stmt,
            condition: Some(BatchCond::Ok { step: prev }),
        });
    }
    let commit = steps.len() as u32 - 1;
    steps.push(BatchStep {
        stmt: Stmt::new("ROLLBACK", vec![]),
        condition: Some(BatchCond::Not {
            cond: Box::new(BatchCond::Ok { step: commit }),
        }),
    });
    PipelineReqBody {
        baton: None,
        requests: vec![
            StreamRequest::Batch {
                batch: Batch { steps },
            },
            StreamRequest::Close,
        ],
    }
}

/// The first error inside a pipeline response: a failed request, or a
/// failed step of a batch. Useful for turning a 200 reply into an error.
pub fn first_error(resp: &PipelineRespBody) -> Option<&conductor_hrana::Error> {
    use conductor_hrana::{StreamResponse, StreamResult};
    resp.results.iter().find_map(|r| match r {
        StreamResult::Error { error } => Some(error),
        StreamResult::Ok {
            response: StreamResponse::Batch { result },
        } => result.step_errors.iter().flatten().next(),
        StreamResult::Ok { .. } => None,
    })
}

/// The key of a node in the encoding cache: its URL without a trailing `/`.
fn node_key(ep: &NodeEndpoint) -> &str {
    ep.url.trim_end_matches('/')
}

// The Protobuf encoding carries every value (a float infinity too); the
// JSON one refuses non-finite floats while serializing, saying why.
fn encode_pipeline(body: &PipelineReqBody) -> Vec<u8> {
    pb::PipelineReqBody::from(body.clone()).encode_to_vec()
}

fn encode_cursor(body: &CursorReqBody) -> Vec<u8> {
    pb::CursorReqBody::from(body.clone()).encode_to_vec()
}

/// Whether every value of a Protobuf pipeline answer is of a kind this
/// client knows (the conversion would read any other as NULL).
fn values_known(resp: &pb::PipelineRespBody) -> bool {
    use pb::stream_response::Response as R;
    let rows_ok = |r: &pb::StmtResult| {
        r.rows
            .iter()
            .all(|row| row.values.iter().all(|v| v.value.is_some()))
    };
    resp.results.iter().all(|r| match &r.result {
        Some(pb::stream_result::Result::Ok(resp)) => match &resp.response {
            Some(R::Execute(e)) => e.result.as_ref().is_none_or(rows_ok),
            Some(R::Batch(b)) => b
                .result
                .as_ref()
                .is_none_or(|b| b.step_results.values().all(rows_ok)),
            _ => true,
        },
        _ => true,
    })
}

/// A pipeline answer checked against its request: one result per request.
/// A batch's result gets one slot per step: the Protobuf encoding sends
/// only the steps that have a result or an error, so its results are padded
/// to the batch's length (a result for a step the batch does not have is a
/// protocol error).
fn check_results(
    node: &NodeRef,
    body: &PipelineReqBody,
    mut parsed: PipelineRespBody,
) -> Result<PipelineRespBody, NodeError> {
    if parsed.results.len() != body.requests.len() {
        return Err(NodeError::protocol(
            node,
            format!(
                "pipeline response has {} results for {} requests",
                parsed.results.len(),
                body.requests.len()
            ),
        ));
    }
    for (req, res) in body.requests.iter().zip(parsed.results.iter_mut()) {
        if let (
            StreamRequest::Batch { batch },
            StreamResult::Ok {
                response: StreamResponse::Batch { result },
            },
        ) = (req, res)
        {
            let steps = batch.steps.len();
            if result.step_results.len() > steps || result.step_errors.len() > steps {
                return Err(NodeError::protocol(
                    node,
                    format!("batch result has more steps than the {steps} sent"),
                ));
            }
            result.step_results.resize(steps, None);
            result.step_errors.resize(steps, None);
        }
    }
    Ok(parsed)
}

fn endpoint_url(ep: &NodeEndpoint, path: &str) -> String {
    format!("{}/{}", ep.url.trim_end_matches('/'), path)
}

/// reqwest's own message is terse ("error sending request"); the cause
/// chain says what actually happened (refused, reset, ...).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn plain_error(node: &NodeRef, e: crate::http1::Error) -> NodeError {
    let node = node.clone();
    match e {
        crate::http1::Error::Connect(message) => NodeError::Connect { node, message },
        crate::http1::Error::Io(message) => NodeError::Io { node, message },
        crate::http1::Error::Protocol(message) => NodeError::Protocol {
            node,
            message: format!("not an HTTP answer: {message}"),
        },
    }
}

fn transport_error(node: &NodeRef, e: reqwest::Error, after: Duration) -> NodeError {
    let node = node.clone();
    if e.is_timeout() {
        NodeError::Timeout { node, after }
    } else if e.is_connect() || e.is_builder() {
        NodeError::Connect {
            node,
            message: error_chain(&e),
        }
    } else {
        NodeError::Io {
            node,
            message: error_chain(&e),
        }
    }
}

/// Request bodies at least this large are worth asking the node about when
/// sending them failed: the node may have refused the size.
const LARGE_BODY_BYTES: usize = 1 << 20;

/// How long the size probe waits for the node's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The node's body limit from its 413 message ("… larger than the limit of
/// N bytes").
fn limit_in(message: &str) -> Option<u64> {
    let rest = &message[message.find("limit of ")? + "limit of ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// The error for a request body the node refuses as too large, naming the
/// size, the node's limit and the conductor-node flag that raises it.
fn body_too_large(node: &NodeRef, size: usize, limit: Option<u64>) -> NodeError {
    let limit_text = match limit {
        Some(l) => format!("its limit of {l} bytes"),
        None => "its request size limit".to_string(),
    };
    NodeError::Http {
        node: node.clone(),
        status: 413,
        message: format!(
            "the request of {size} bytes is larger than {limit_text}; \
             start conductor-node with --max-body-bytes {} (or more) to accept it",
            size.next_power_of_two().max(size)
        ),
        code: Some("BODY_TOO_LARGE".into()),
    }
}

/// A 413 answer, restated with the request size and the flag to raise.
fn explain_body_limit(node: &NodeRef, size: usize, err: NodeError) -> NodeError {
    match &err {
        NodeError::Http {
            status: 413,
            message,
            ..
        } => body_too_large(node, size, limit_in(message)),
        _ => err,
    }
}

/// Sending a large body failed mid-way ("Broken pipe", "connection reset"):
/// a node that refuses a body as too large answers 413 and closes the
/// connection without reading it, so the client sees only a broken write.
/// Ask the node: a request that declares the same Content-Length but sends
/// no body gets the 413 (with the limit) at once. Other failures, and
/// `https://` nodes (the probe speaks plain HTTP), keep the original error.
async fn diagnose_large_body(
    ep: &NodeEndpoint,
    node: &NodeRef,
    size: usize,
    err: NodeError,
) -> NodeError {
    if size < LARGE_BODY_BYTES || !matches!(err, NodeError::Io { .. }) {
        return err;
    }
    match tokio::time::timeout(PROBE_TIMEOUT, probe_body_limit(ep, size)).await {
        Ok(Some(limit)) => body_too_large(node, size, Some(limit)),
        _ => err,
    }
}

/// The node's body limit if it refuses a body of `size` bytes (from the
/// 413 it answers to the headers alone); None if it does not say so.
async fn probe_body_limit(ep: &NodeEndpoint, size: usize) -> Option<u64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = reqwest::Url::parse(&endpoint_url(ep, "v3/pipeline")).ok()?;
    if url.scheme() != "http" {
        return None;
    }
    let host = url.host_str()?;
    let port = url.port_or_known_default()?;
    let mut conn = tokio::net::TcpStream::connect((host, port)).await.ok()?;
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {size}\r\nConnection: close\r\n",
        url.path()
    );
    if let Some(t) = &ep.token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while answer.len() < 16 * 1024 {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    if !text.starts_with("HTTP/1.1 413") && !text.starts_with("HTTP/1.0 413") {
        return None;
    }
    limit_in(&text)
}

/// Turn a non-2xx response into `NodeError::Http`, reading at most a small
/// excerpt of its body (which may be a Hrana error object or plain text).
async fn http_error(node: &NodeRef, mut resp: Response, deadline: Duration) -> NodeError {
    let status = resp.status();
    let protobuf = resp.content_type().is_some_and(|t| t.contains("protobuf"));
    let mut body = Vec::new();
    let read = async {
        while body.len() < ERROR_EXCERPT_BYTES * 8 {
            match resp.chunk(node, deadline).await {
                Ok(Some(c)) => body.extend_from_slice(&c),
                _ => break,
            }
        }
    };
    // The status is what matters; a body that never comes is not worth waiting for.
    let _ = tokio::time::timeout(deadline.min(Duration::from_secs(5)), read).await;
    let decoded = if protobuf {
        protobuf_error_body(&body).or_else(|| error_body(&body))
    } else {
        error_body(&body)
    };
    let (message, code) = match decoded {
        Some(found) => found,
        None => {
            let text = String::from_utf8_lossy(&body);
            let text = text.trim();
            let mut excerpt: String = text.chars().take(ERROR_EXCERPT_BYTES).collect();
            if excerpt.len() < text.len() {
                excerpt.push_str("...");
            }
            if excerpt.is_empty() {
                excerpt = "(empty body)".into();
            }
            (excerpt, None)
        }
    };
    NodeError::Http {
        node: node.clone(),
        status,
        message,
        code,
    }
}

/// The message and code of a Protobuf `Error` body (what a node answers a
/// failed `/v3-protobuf/*` request with); `None` if it does not decode or
/// has no message.
fn protobuf_error_body(body: &[u8]) -> Option<(String, Option<String>)> {
    let e: conductor_hrana::Error = pb::Error::decode(body).ok()?.into();
    (!e.message.is_empty()).then_some((e.message, e.code))
}

/// The message and code of an error body: a Hrana `Error`
/// (`{"message", "code"}`), or sqld's `{"error": "..."}` for failures outside
/// the protocol (authentication, a missing database). `None` for anything
/// else (plain text, say).
fn error_body(body: &[u8]) -> Option<(String, Option<String>)> {
    if let Ok(e) = serde_json::from_slice::<conductor_hrana::Error>(body) {
        return Some((e.message, e.code));
    }
    #[derive(serde::Deserialize)]
    struct Plain {
        error: String,
    }
    serde_json::from_slice::<Plain>(body)
        .ok()
        .map(|p| (p.error, None))
}

async fn read_limited(
    node: &NodeRef,
    mut resp: Response,
    max: usize,
    deadline: Duration,
) -> Result<Vec<u8>, NodeError> {
    let mut body = Vec::new();
    while let Some(c) = resp.chunk(node, deadline).await? {
        if body.len() + c.len() > max {
            return Err(NodeError::protocol(
                node,
                format!("response body exceeds {max} bytes"),
            ));
        }
        count_traffic(&node.url, 0, c.len() as u64);
        body.extend_from_slice(&c);
    }
    Ok(body)
}

/// Splits a byte stream into lines without ever holding more than one
/// partial line (plus the chunk being split) in memory.
#[derive(Debug, Default)]
struct LineReader {
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`.
    start: usize,
    /// Bytes before this offset are known to hold no newline.
    scanned: usize,
    max_line: usize,
}

enum Line {
    Full(Vec<u8>),
    /// No complete line buffered; feed more bytes.
    Need,
}

impl LineReader {
    fn new(max_line: usize) -> Self {
        LineReader {
            max_line,
            ..Default::default()
        }
    }

    fn feed(&mut self, bytes: &[u8]) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.scanned -= self.start;
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete line (without its `\n`), or `Err(len)` when the
    /// unterminated tail is longer than the line limit.
    fn next_line(&mut self) -> Result<Line, usize> {
        let from = self.scanned.max(self.start);
        match self.buf[from..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                let end = from + i;
                let line = self.buf[self.start..end].to_vec();
                self.start = end + 1;
                self.scanned = self.start;
                if line.len() > self.max_line {
                    return Err(line.len());
                }
                Ok(Line::Full(line))
            }
            None => {
                self.scanned = self.buf.len();
                let pending = self.buf.len() - self.start;
                if pending > self.max_line {
                    Err(pending)
                } else {
                    Ok(Line::Need)
                }
            }
        }
    }

    /// What is left after the body ended (a last line without `\n`).
    fn take_rest(&mut self) -> Vec<u8> {
        let rest = self.buf[self.start..].to_vec();
        self.buf.clear();
        self.start = 0;
        self.scanned = 0;
        rest
    }
}

/// How a cursor body is cut into entries.
#[derive(Debug)]
enum Reader {
    /// JSON: one entry per line.
    Lines(LineReader),
    /// Protobuf: one length-delimited message per entry.
    Frames(pb::FrameReader),
}

/// The entries of a `/v3/cursor` (or `/v3-protobuf/cursor`) response,
/// decoded one by one as the body arrives. Dropping it closes the
/// connection (the node stops producing).
#[derive(Debug)]
pub struct CursorStream {
    node: NodeRef,
    resp: Response,
    idle_timeout: Duration,
    reader: Reader,
    header: Option<CursorRespBody>,
    /// The step that began and has not ended; EOF inside a step is truncation.
    open_step: Option<u32>,
    /// Columns of the last step begun: the expected width of its rows.
    width: usize,
}

impl CursorStream {
    /// The baton of the response's first line (continues the stream).
    pub fn baton(&self) -> Option<&str> {
        self.header.as_ref().and_then(|h| h.baton.as_deref())
    }

    /// The `base_url` of the response's first line: where the server asks
    /// later requests of this stream to go, if it named a place.
    pub fn base_url(&self) -> Option<&str> {
        self.header.as_ref().and_then(|h| h.base_url.as_deref())
    }

    /// The encoding of this stream's body.
    pub fn encoding(&self) -> Encoding {
        match self.reader {
            Reader::Lines(_) => Encoding::Json,
            Reader::Frames(_) => Encoding::Protobuf,
        }
    }

    async fn read_header(&mut self) -> Result<CursorRespBody, NodeError> {
        match self.reader {
            Reader::Lines(_) => {
                let first = self.next_line().await?.ok_or_else(|| {
                    NodeError::protocol(&self.node, "cursor response ended before its first line")
                })?;
                serde_json::from_slice(&first).map_err(|e| {
                    NodeError::protocol(&self.node, format!("malformed cursor header: {e}"))
                })
            }
            Reader::Frames(_) => {
                let range = self.next_frame().await?.ok_or_else(|| {
                    NodeError::protocol(&self.node, "cursor response ended before its header")
                })?;
                let Reader::Frames(frames) = &self.reader else {
                    unreachable!()
                };
                pb::CursorRespBody::decode(frames.bytes(range))
                    .map(Into::into)
                    .map_err(|e| {
                        NodeError::protocol(&self.node, format!("malformed cursor header: {e}"))
                    })
            }
        }
    }

    /// The next entry; `Ok(None)` at the clean end of the body. A body that
    /// ends mid-entry or inside a step is a protocol error (truncated).
    /// Entries the client need not understand are skipped (see
    /// [`CursorEntry::decode`] and [`pb::cursor_entry_from_pb`]).
    pub async fn next(&mut self) -> Result<Option<CursorEntry>, NodeError> {
        let entry = loop {
            let decoded = match self.reader {
                Reader::Lines(_) => {
                    let line = match self.next_line().await? {
                        None => return self.at_end(),
                        Some(l) if l.iter().all(u8::is_ascii_whitespace) => continue,
                        Some(l) => l,
                    };
                    CursorEntry::decode(&line).map_err(|e| e.to_string())
                }
                Reader::Frames(_) => {
                    let Some(range) = self.next_frame().await? else {
                        return self.at_end();
                    };
                    let Reader::Frames(frames) = &self.reader else {
                        unreachable!()
                    };
                    pb::decode_cursor_entry_sized(frames.bytes(range), self.width)
                        .map_err(|e| e.to_string())
                }
            };
            match decoded {
                Ok(Some(entry)) => break entry,
                Ok(None) => continue,
                Err(e) => {
                    return Err(NodeError::protocol(
                        &self.node,
                        format!("malformed cursor entry: {e}"),
                    ))
                }
            }
        };
        match &entry {
            CursorEntry::StepBegin { step, cols } => {
                self.open_step = Some(*step);
                self.width = cols.len();
            }
            CursorEntry::StepEnd { .. } | CursorEntry::StepError { .. } => self.open_step = None,
            CursorEntry::Error { .. } => self.open_step = None,
            CursorEntry::Row { .. } => {}
        }
        Ok(Some(entry))
    }

    fn at_end(&self) -> Result<Option<CursorEntry>, NodeError> {
        if let Some(step) = self.open_step {
            return Err(NodeError::protocol(
                &self.node,
                format!("cursor stream truncated inside step {step}"),
            ));
        }
        Ok(None)
    }

    /// The next chunk of the body; `None` at its end.
    async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>, NodeError> {
        let next = self.resp.chunk(&self.node, self.idle_timeout);
        match tokio::time::timeout(self.idle_timeout, next).await {
            Err(_) => Err(NodeError::Timeout {
                node: self.node.clone(),
                after: self.idle_timeout,
            }),
            Ok(r) => {
                let chunk = r?;
                if let Some(c) = &chunk {
                    count_traffic(&self.node.url, 0, c.len() as u64);
                }
                Ok(chunk)
            }
        }
    }

    /// The next raw line; `None` at the end of the body.
    async fn next_line(&mut self) -> Result<Option<Vec<u8>>, NodeError> {
        loop {
            let Reader::Lines(lines) = &mut self.reader else {
                unreachable!("a JSON cursor reads lines")
            };
            match lines.next_line() {
                Ok(Line::Full(l)) => return Ok(Some(l)),
                Ok(Line::Need) => {}
                Err(len) => {
                    return Err(NodeError::protocol(
                        &self.node,
                        format!(
                            "cursor line of {len}+ bytes exceeds the limit of {} bytes",
                            lines.max_line
                        ),
                    ))
                }
            }
            let chunk = self.next_chunk().await?;
            let Reader::Lines(lines) = &mut self.reader else {
                unreachable!()
            };
            match chunk {
                Some(bytes) => lines.feed(&bytes),
                None => {
                    let rest = lines.take_rest();
                    if rest.iter().all(u8::is_ascii_whitespace) {
                        return Ok(None);
                    }
                    // A last line without its newline: fine if it is whole
                    // JSON, truncation otherwise (the caller's parse says so).
                    return Ok(Some(rest));
                }
            }
        }
    }

    /// The next whole message of a Protobuf body (its bytes in the frame
    /// reader's buffer); `None` at a clean end of the body. A body that ends
    /// inside a message is a protocol error.
    async fn next_frame(&mut self) -> Result<Option<std::ops::Range<usize>>, NodeError> {
        loop {
            let Reader::Frames(frames) = &mut self.reader else {
                unreachable!("a Protobuf cursor reads frames")
            };
            match frames.next_frame() {
                Ok(pb::Frame::Full(r)) => return Ok(Some(r)),
                Ok(pb::Frame::Need) => {}
                Err(pb::FrameError::BadLength) => {
                    return Err(NodeError::protocol(
                        &self.node,
                        "malformed cursor frame: invalid length prefix",
                    ))
                }
                Err(pb::FrameError::TooLarge(len)) => {
                    return Err(NodeError::protocol(
                        &self.node,
                        format!(
                            "cursor entry of {len} bytes exceeds the limit of {} bytes",
                            frames.max_frame()
                        ),
                    ))
                }
            }
            let chunk = self.next_chunk().await?;
            let Reader::Frames(frames) = &mut self.reader else {
                unreachable!()
            };
            match chunk {
                Some(bytes) => frames.feed(&bytes),
                None => {
                    let left = frames.leftover();
                    if left == 0 {
                        return Ok(None);
                    }
                    return Err(NodeError::protocol(
                        &self.node,
                        format!(
                            "cursor stream truncated: the body ended inside an entry \
                             ({left} bytes of it received)"
                        ),
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]], max: usize) -> Result<Vec<String>, usize> {
        let mut r = LineReader::new(max);
        let mut out = Vec::new();
        for c in chunks {
            r.feed(c);
            while let Line::Full(l) = r.next_line()? {
                out.push(String::from_utf8_lossy(&l).into_owned());
            }
        }
        let rest = r.take_rest();
        if !rest.is_empty() {
            out.push(String::from_utf8_lossy(&rest).into_owned());
        }
        Ok(out)
    }

    proptest::proptest! {
        /// However a body is cut into chunks, the reader yields exactly its
        /// lines, and never accepts a line over the limit.
        #[test]
        fn line_reader_is_independent_of_chunking(
            body in proptest::collection::vec(
                proptest::prop_oneof![proptest::strategy::Just(b'\n'), proptest::prelude::any::<u8>()],
                0..400,
            ),
            cuts in proptest::collection::vec(0usize..400, 0..12),
            max in 1usize..64,
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (body.len() + 1)).collect();
            cuts.sort();
            cuts.dedup();
            let mut chunks: Vec<&[u8]> = Vec::new();
            let mut from = 0;
            for c in cuts.into_iter().chain([body.len()]) {
                chunks.push(&body[from..c]);
                from = c;
            }
            let expected: Vec<String> = {
                let mut v: Vec<String> = body
                    .split(|&b| b == b'\n')
                    .map(|l| String::from_utf8_lossy(l).into_owned())
                    .collect();
                if v.last().is_some_and(|l| l.is_empty()) {
                    v.pop();
                }
                v
            };
            let too_long = body.split(|&b| b == b'\n').any(|l| l.len() > max);
            match lines(&chunks, max) {
                Ok(got) => {
                    proptest::prop_assert!(!too_long);
                    proptest::prop_assert_eq!(got, expected);
                }
                Err(len) => {
                    proptest::prop_assert!(too_long);
                    proptest::prop_assert!(len > max);
                }
            }
        }
    }

    #[test]
    fn line_reader_splits_across_chunks() {
        assert_eq!(
            lines(&[b"ab", b"c\nde", b"f\n\ng", b"h"], 100).unwrap(),
            vec!["abc", "def", "", "gh"]
        );
        assert_eq!(lines(&[b"\n\n"], 100).unwrap(), vec!["", ""]);
    }

    #[test]
    fn line_reader_bounds_lines() {
        assert!(lines(&[b"0123456789", b"0123456789"], 15).is_err());
        assert!(lines(&[b"0123456789012345\n"], 15).is_err());
        assert!(lines(&[b"01234\n56789\n"], 5).is_ok());
    }

    #[test]
    fn errors_name_the_node() {
        let node = NodeRef {
            node_id: "node-0".into(),
            url: "http://127.0.0.1:1".into(),
        };
        let e = NodeError::Sql {
            node,
            message: "UNIQUE constraint failed: t.id".into(),
            code: Some("SQLITE_CONSTRAINT_PRIMARYKEY".into()),
        };
        assert_eq!(
            e.to_string(),
            "node node-0 (http://127.0.0.1:1): UNIQUE constraint failed: t.id (SQLITE_CONSTRAINT_PRIMARYKEY)"
        );
        assert_eq!(e.sqlite_code(), Some("SQLITE_CONSTRAINT_PRIMARYKEY"));
        assert!(!e.is_transient());
    }

    #[test]
    fn first_error_finds_batch_step_errors() {
        let resp: PipelineRespBody = serde_json::from_str(
            r#"{"baton":null,"base_url":null,"results":[
                {"type":"ok","response":{"type":"close"}},
                {"type":"ok","response":{"type":"batch","result":{
                    "step_results":[null,null],
                    "step_errors":[null,{"message":"boom","code":"SQLITE_ERROR"}]}}}]}"#,
        )
        .unwrap();
        assert_eq!(first_error(&resp).map(|e| e.message.as_str()), Some("boom"));
    }
}
