//! Hrana-over-HTTP client for the storage nodes: conductor-node, or any
//! libSQL server speaking Hrana 3 over HTTP, such as sqld
//! (docs/ARCHITECTURE.md, The node protocol).
//!
//! One `reqwest::Client` (keep-alive pool) serves every node. Every request
//! has a deadline; a cursor body is read chunk by chunk and split into lines
//! with a maximum line length, so memory stays bounded however large the
//! result. Whatever a node sends back, a malformed body is a
//! [`NodeError::Protocol`], never a panic.
//!
//! Decoding follows the protocol's forward-compatibility rule: unknown
//! fields are ignored, and cursor entries the client has no use for (sqld's
//! `replication_index`, or a type a newer server adds) are skipped. What the
//! client relies on — the result of every request, rows, values, the shape
//! of a step — is still checked strictly.

use conductor_hrana::{
    CursorEntry, CursorReqBody, CursorRespBody, PipelineReqBody, PipelineRespBody,
};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
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
    /// How long an unused keep-alive connection stays in the pool.
    pub pool_idle_timeout: Duration,
    /// Extra trusted certificate authorities (PEM bundle) for `https://`
    /// nodes, added to the system's: a cluster's private CA.
    pub ca_pem: Option<Vec<u8>>,
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
            pool_idle_timeout: Duration::from_secs(60),
            ca_pem: None,
        }
    }
}

/// How much of an error body we keep for the message.
const ERROR_EXCERPT_BYTES: usize = 512;

/// Hrana client over one keep-alive connection pool. Cheap to share
/// (`reqwest::Client` is an `Arc` inside); must be used within a tokio runtime.
#[derive(Debug, Clone)]
pub struct HranaClient {
    http: reqwest::Client,
    config: ClientConfig,
    /// The request deadline in milliseconds (also the longest silence of a
    /// streaming body), changeable while the client is in use (a session
    /// setting it): see [`HranaClient::set_request_timeout`].
    timeout_ms: Arc<AtomicU64>,
}

impl HranaClient {
    /// Build the client. Installs rustls' ring provider as the process
    /// default if none is installed yet (we build without aws-lc).
    pub fn new(config: ClientConfig) -> std::io::Result<Self> {
        // Err only means a provider is already installed, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder();
        if let Some(pem) = &config.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("invalid CA certificates: {e}"),
                )
            })?;
            builder = builder.tls_certs_merge(certs);
        }
        let http = builder
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(config.pool_idle_timeout)
            .tcp_nodelay(true)
            // Loopback nodes must never be routed through an environment proxy.
            .no_proxy()
            .build()
            .map_err(std::io::Error::other)?;
        let timeout_ms = Arc::new(AtomicU64::new(config.request_timeout.as_millis() as u64));
        Ok(HranaClient {
            http,
            config,
            timeout_ms,
        })
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

    /// `POST {url}/v3/pipeline`. Per-request errors inside the body are
    /// returned as they are (see [`first_error`]); a reply whose result count
    /// differs from the request count is a protocol error.
    pub async fn pipeline(
        &self,
        ep: &NodeEndpoint,
        body: &PipelineReqBody,
    ) -> Result<PipelineRespBody, NodeError> {
        let node = NodeRef::from(ep);
        let deadline = self.request_timeout();
        let work = async {
            let json = serde_json::to_vec(body)
                .map_err(|e| NodeError::protocol(&node, format!("cannot encode request: {e}")))?;
            let size = json.len();
            let resp = match self.post(ep, "v3/pipeline", json).send().await {
                Ok(r) => r,
                Err(e) => {
                    let err = transport_error(&node, e, deadline);
                    return Err(diagnose_large_body(ep, &node, size, err).await);
                }
            };
            let status = resp.status();
            if !status.is_success() {
                let err = http_error(&node, resp, deadline).await;
                return Err(explain_body_limit(&node, size, err));
            }
            let bytes = read_limited(&node, resp, self.config.max_body_bytes, deadline).await?;
            let parsed: PipelineRespBody = serde_json::from_slice(&bytes).map_err(|e| {
                NodeError::protocol(&node, format!("malformed pipeline response: {e}"))
            })?;
            if parsed.results.len() != body.requests.len() {
                return Err(NodeError::protocol(
                    &node,
                    format!(
                        "pipeline response has {} results for {} requests",
                        parsed.results.len(),
                        body.requests.len()
                    ),
                ));
            }
            Ok(parsed)
        };
        match tokio::time::timeout(deadline, work).await {
            Ok(r) => r,
            Err(_) => Err(NodeError::Timeout {
                node,
                after: deadline,
            }),
        }
    }

    /// `POST {url}/v3/cursor`: waits for the response headers and the first
    /// line, then hands back a stream of entries read as they arrive.
    pub async fn cursor(
        &self,
        ep: &NodeEndpoint,
        body: &CursorReqBody,
    ) -> Result<CursorStream, NodeError> {
        let node = NodeRef::from(ep);
        let deadline = self.request_timeout();
        let json = serde_json::to_vec(body)
            .map_err(|e| NodeError::protocol(&node, format!("cannot encode request: {e}")))?;
        let size = json.len();
        let send = self.post(ep, "v3/cursor", json).send();
        let resp = match tokio::time::timeout(deadline, send).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                let err = transport_error(&node, e, deadline);
                return Err(diagnose_large_body(ep, &node, size, err).await);
            }
            Err(_) => {
                return Err(NodeError::Timeout {
                    node,
                    after: deadline,
                })
            }
        };
        if !resp.status().is_success() {
            let err = http_error(&node, resp, deadline).await;
            return Err(explain_body_limit(&node, size, err));
        }
        let mut stream = CursorStream {
            node,
            resp,
            idle_timeout: self.request_timeout().min(self.config.idle_timeout),
            lines: LineReader::new(self.config.max_line_bytes),
            header: None,
            open_step: None,
        };
        let first = stream.next_line().await?.ok_or_else(|| {
            NodeError::protocol(&stream.node, "cursor response ended before its first line")
        })?;
        let header: CursorRespBody = serde_json::from_slice(&first).map_err(|e| {
            NodeError::protocol(&stream.node, format!("malformed cursor header: {e}"))
        })?;
        stream.header = Some(header);
        Ok(stream)
    }

    /// `GET {url}/health`: `Ok` when the node answers 2xx.
    pub async fn health(&self, ep: &NodeEndpoint) -> Result<(), NodeError> {
        let node = NodeRef::from(ep);
        let deadline = self.request_timeout();
        let mut req = self.http.get(endpoint_url(ep, "health")).timeout(deadline);
        if let Some(t) = &ep.token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| transport_error(&node, e, deadline))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(http_error(&node, resp, deadline).await)
        }
    }

    fn post(&self, ep: &NodeEndpoint, path: &str, json: Vec<u8>) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .post(endpoint_url(ep, path))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(json);
        if let Some(t) = &ep.token {
            req = req.bearer_auth(t);
        }
        req
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
async fn http_error(node: &NodeRef, mut resp: reqwest::Response, deadline: Duration) -> NodeError {
    let status = resp.status().as_u16();
    let mut body = Vec::new();
    let read = async {
        while body.len() < ERROR_EXCERPT_BYTES * 8 {
            match resp.chunk().await {
                Ok(Some(c)) => body.extend_from_slice(&c),
                _ => break,
            }
        }
    };
    // The status is what matters; a body that never comes is not worth waiting for.
    let _ = tokio::time::timeout(deadline.min(Duration::from_secs(5)), read).await;
    let (message, code) = match error_body(&body) {
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
    mut resp: reqwest::Response,
    max: usize,
    deadline: Duration,
) -> Result<Vec<u8>, NodeError> {
    let mut body = Vec::new();
    while let Some(c) = resp
        .chunk()
        .await
        .map_err(|e| transport_error(node, e, deadline))?
    {
        if body.len() + c.len() > max {
            return Err(NodeError::protocol(
                node,
                format!("response body exceeds {max} bytes"),
            ));
        }
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

/// The entries of a `/v3/cursor` response, decoded line by line as the body
/// arrives. Dropping it closes the connection (the node stops producing).
#[derive(Debug)]
pub struct CursorStream {
    node: NodeRef,
    resp: reqwest::Response,
    idle_timeout: Duration,
    lines: LineReader,
    header: Option<CursorRespBody>,
    /// The step that began and has not ended; EOF inside a step is truncation.
    open_step: Option<u32>,
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

    /// The next entry; `Ok(None)` at the clean end of the body. A body that
    /// ends mid-line or inside a step is a protocol error (truncated).
    /// Entries the client need not understand are skipped (see
    /// [`CursorEntry::decode`]).
    pub async fn next(&mut self) -> Result<Option<CursorEntry>, NodeError> {
        let entry = loop {
            let line = match self.next_line().await? {
                None => {
                    if let Some(step) = self.open_step {
                        return Err(NodeError::protocol(
                            &self.node,
                            format!("cursor stream truncated inside step {step}"),
                        ));
                    }
                    return Ok(None);
                }
                Some(l) if l.iter().all(u8::is_ascii_whitespace) => continue,
                Some(l) => l,
            };
            match CursorEntry::decode(&line) {
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
            CursorEntry::StepBegin { step, .. } => self.open_step = Some(*step),
            CursorEntry::StepEnd { .. } | CursorEntry::StepError { .. } => self.open_step = None,
            CursorEntry::Error { .. } => self.open_step = None,
            CursorEntry::Row { .. } => {}
        }
        Ok(Some(entry))
    }

    /// The next raw line; `None` at the end of the body.
    async fn next_line(&mut self) -> Result<Option<Vec<u8>>, NodeError> {
        loop {
            match self.lines.next_line() {
                Ok(Line::Full(l)) => return Ok(Some(l)),
                Ok(Line::Need) => {}
                Err(len) => {
                    return Err(NodeError::protocol(
                        &self.node,
                        format!(
                            "cursor line of {len}+ bytes exceeds the limit of {} bytes",
                            self.lines.max_line
                        ),
                    ))
                }
            }
            let chunk = match tokio::time::timeout(self.idle_timeout, self.resp.chunk()).await {
                Err(_) => {
                    return Err(NodeError::Timeout {
                        node: self.node.clone(),
                        after: self.idle_timeout,
                    })
                }
                Ok(r) => r.map_err(|e| transport_error(&self.node, e, self.idle_timeout))?,
            };
            match chunk {
                Some(bytes) => self.lines.feed(&bytes),
                None => {
                    let rest = self.lines.take_rest();
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
