//! A tiny scriptable HTTP/1.1 server on loopback for the client and
//! executor tests: it can answer late, answer garbage, stream a million
//! rows, hang, or cut a stream short, and it records what clients did.
//! Every response closes its connection, which keeps the server trivial.

#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

/// What to send back.
pub enum Reply {
    /// Status, content type and body, after `delay`.
    Full {
        status: u16,
        body: Vec<u8>,
        delay: Duration,
    },
    /// 200 with a body produced line by line (no length; ends at close).
    /// Each item is written as it comes, so TCP backpressure applies.
    Stream {
        delay: Duration,
        lines: Box<dyn Iterator<Item = Vec<u8>> + Send>,
    },
    /// Status, content type and body exactly as given (a recorded answer).
    Raw {
        status: u16,
        content_type: String,
        body: Vec<u8>,
    },
    /// Never answer; watch for the client to go away.
    Hang,
}

impl Reply {
    pub fn ok_json(v: serde_json::Value) -> Reply {
        Reply::Full {
            status: 200,
            body: v.to_string().into_bytes(),
            delay: Duration::ZERO,
        }
    }

    pub fn status(status: u16, body: &str) -> Reply {
        Reply::Full {
            status,
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
        }
    }
}

type Handler = dyn Fn(&Request) -> Reply + Send + Sync;

/// What the server observed; shared with the test.
#[derive(Default)]
pub struct Observed {
    pub requests: Mutex<Vec<Request>>,
    /// Bytes of streamed bodies written so far (all connections).
    pub streamed_bytes: AtomicU64,
    /// Set when a client closed a connection while we were still
    /// streaming to it or waiting to answer.
    pub client_went_away: AtomicBool,
    /// Set when a stream ran to its end.
    pub stream_completed: AtomicBool,
}

pub struct FakeServer {
    pub url: String,
    pub observed: Arc<Observed>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeServer {
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> FakeServer {
        Self::start_at("127.0.0.1:0", handler)
    }

    /// Like [`start`](FakeServer::start), on a given loopback address.
    pub fn start_at(
        addr: &str,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> FakeServer {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-node")
            .enable_all()
            .build()
            .expect("test runtime");
        // Bound with std so this works from inside another runtime too.
        let std_listener = std::net::TcpListener::bind(addr).expect("bind loopback");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let listener = {
            let _ctx = runtime.enter();
            TcpListener::from_std(std_listener).expect("register listener")
        };
        let addr = listener.local_addr().expect("local addr");
        let observed = Arc::new(Observed::default());
        let handler: Arc<Handler> = Arc::new(handler);
        let obs = observed.clone();
        runtime.spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let handler = handler.clone();
                let obs = obs.clone();
                tokio::spawn(async move {
                    let _ = serve_one(sock, handler, obs).await;
                });
            }
        });
        FakeServer {
            url: format!("http://{addr}"),
            observed,
            runtime: Some(runtime),
        }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.observed.requests.lock().expect("lock").clone()
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn serve_one(
    mut sock: TcpStream,
    handler: Arc<Handler>,
    obs: Arc<Observed>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let head_end = loop {
        let mut tmp = [0u8; 4096];
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_string();
    let path = first.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let mut tmp = vec![0u8; len - body.len()];
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            return Ok(());
        }
        body.extend_from_slice(&tmp[..n]);
    }
    let req = Request {
        method,
        path,
        headers,
        body,
    };
    let reply = handler(&req);
    obs.requests.lock().expect("lock").push(req);
    match reply {
        Reply::Full {
            status,
            body,
            delay,
        } => {
            if !wait_or_gone(&mut sock, delay, &obs).await {
                return Ok(());
            }
            let head = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            sock.write_all(head.as_bytes()).await?;
            sock.write_all(&body).await?;
            sock.shutdown().await
        }
        Reply::Raw {
            status,
            content_type,
            body,
        } => {
            let head = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            sock.write_all(head.as_bytes()).await?;
            sock.write_all(&body).await?;
            sock.shutdown().await
        }
        Reply::Stream { delay, lines } => {
            if !wait_or_gone(&mut sock, delay, &obs).await {
                return Ok(());
            }
            sock.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n",
            )
            .await?;
            // Batch small lines into moderate writes: fast, and still far
            // smaller than what a stalled reader's socket buffers hold.
            let mut out = Vec::with_capacity(64 * 1024);
            for line in lines {
                out.extend_from_slice(&line);
                if out.len() >= 32 * 1024 {
                    if sock.write_all(&out).await.is_err() {
                        obs.client_went_away.store(true, Ordering::SeqCst);
                        return Ok(());
                    }
                    obs.streamed_bytes
                        .fetch_add(out.len() as u64, Ordering::SeqCst);
                    out.clear();
                }
            }
            if sock.write_all(&out).await.is_err() {
                obs.client_went_away.store(true, Ordering::SeqCst);
                return Ok(());
            }
            obs.streamed_bytes
                .fetch_add(out.len() as u64, Ordering::SeqCst);
            obs.stream_completed.store(true, Ordering::SeqCst);
            sock.shutdown().await
        }
        Reply::Hang => {
            wait_or_gone(&mut sock, Duration::from_secs(3600), &obs).await;
            Ok(())
        }
    }
}

/// Sleep for `delay` unless the client closes first; false if it did.
async fn wait_or_gone(sock: &mut TcpStream, delay: Duration, obs: &Observed) -> bool {
    if delay.is_zero() {
        return true;
    }
    let mut tmp = [0u8; 1];
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        r = sock.read(&mut tmp) => {
            if matches!(r, Ok(0) | Err(_)) {
                obs.client_went_away.store(true, Ordering::SeqCst);
            }
            false
        }
    }
}

/// Lines of a well-formed cursor response with `rows` single-integer rows.
pub fn cursor_lines(rows: u64) -> Box<dyn Iterator<Item = Vec<u8>> + Send> {
    let head = [
        b"{\"baton\":null,\"base_url\":null}\n".to_vec(),
        b"{\"type\":\"step_begin\",\"step\":0,\"cols\":[{\"name\":\"id\",\"decltype\":\"INTEGER\"}]}\n"
            .to_vec(),
    ];
    let rows = (0..rows).map(|i| {
        format!("{{\"type\":\"row\",\"row\":[{{\"type\":\"integer\",\"value\":\"{i}\"}}]}}\n")
            .into_bytes()
    });
    let tail = std::iter::once(
        b"{\"type\":\"step_end\",\"affected_row_count\":0,\"last_insert_rowid\":null}\n".to_vec(),
    );
    Box::new(head.into_iter().chain(rows).chain(tail))
}

/// A cursor body given as complete text.
pub fn cursor_text(text: &str) -> Reply {
    Reply::Stream {
        delay: Duration::ZERO,
        lines: Box::new(std::iter::once(text.as_bytes().to_vec())),
    }
}

/// A port on loopback that nothing listens on (bound, then released).
pub fn dead_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    format!("http://{addr}")
}
