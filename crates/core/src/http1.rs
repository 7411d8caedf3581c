//! Plain HTTP/1.1 to the nodes (`http://` URLs): a request is written on a
//! pooled keep-alive connection and its answer read back, nothing more.
//!
//! Why not reqwest for these: measured with `examples/request_cpu.rs`, an
//! `Executor::execute` of a one-row write cost the calling process 71–75
//! µs of CPU through reqwest and hyper (their layers: the pool's checkout
//! and connection tasks, header maps, the body channel) and 37–43 µs
//! through this module, and that request is most of what a one-row write
//! costs the router beyond Postgres' own work. `https://` nodes keep
//! reqwest and rustls (see `client`).
//!
//! What it does:
//! - One request at a time per connection; an idle connection goes back to
//!   its pool only once its answer was read to the end.
//! - A pooled connection is checked before it is used (a non-blocking peek
//!   at the socket): one the node closed while idle is dropped, and the
//!   request goes on a new one — never written to a dead socket, which for
//!   a write would leave its outcome unknown.
//! - A request that could not be written at all (the connection refused it
//!   before its first byte) was never delivered: [`Error::Connect`], which
//!   callers may retry. Anything failing after that is [`Error::Io`].
//! - Bodies framed by Content-Length, chunked transfer encoding, or the
//!   end of the connection; headers up to [`MAX_HEAD_BYTES`].
//! - No deadline of its own: callers bound every await (tokio timeouts),
//!   and dropping a request or an unfinished answer closes its connection.

use bytes::{Buf, Bytes, BytesMut};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest answer head (status line and headers) accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Longest chunk-size line of a chunked body.
const MAX_CHUNK_LINE: usize = 4096;
/// Bytes asked of the socket per read.
const READ_SIZE: usize = 64 * 1024;
/// A request body at most this large is written in one piece with its head.
const COALESCE_BYTES: usize = 16 * 1024;
/// Idle connections kept per node.
const MAX_IDLE_PER_HOST: usize = 64;

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The request was never delivered (no connection, or refused before
    /// its first byte was written).
    Connect(String),
    /// The connection failed after the request may have been delivered.
    Io(String),
    /// The node answered something that is not HTTP/1.1.
    Protocol(String),
}

/// Idle keep-alive connections by `host:port`. Cheap to clone (shared).
/// A connection is bound to the tokio runtime it was opened on: a pool
/// must be used on one runtime only.
#[derive(Debug, Clone)]
pub struct Pool {
    idle: Arc<Mutex<HashMap<String, Vec<Idle>>>>,
    connect_timeout: Duration,
    idle_timeout: Duration,
}

#[derive(Debug)]
struct Idle {
    conn: Conn,
    since: Instant,
}

#[derive(Debug)]
struct Conn {
    stream: TcpStream,
    /// Bytes read and not yet consumed.
    buf: BytesMut,
}

/// What a request is sent to and with.
pub struct Request<'a> {
    pub method: reqwest::Method,
    pub url: &'a reqwest::Url,
    pub content_type: Option<&'a str>,
    pub bearer: Option<&'a str>,
    pub body: &'a [u8],
}

impl Pool {
    pub fn new(connect_timeout: Duration, idle_timeout: Duration) -> Self {
        Pool {
            idle: Arc::default(),
            connect_timeout,
            idle_timeout,
        }
    }

    /// Send `req` and read its answer's head; the body is read with
    /// [`Response::chunk`].
    pub async fn send(&self, req: Request<'_>) -> Result<Response, Error> {
        let url = req.url;
        let host = url
            .host_str()
            .ok_or_else(|| Error::Connect(format!("no host in {url}")))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| Error::Connect(format!("no port in {url}")))?;
        let key = format!("{host}:{port}");
        let head = request_head(&req, &key);
        let mut message = head;
        let coalesce = req.body.len() <= COALESCE_BYTES;
        if coalesce {
            message.extend_from_slice(req.body);
        }
        // A pooled connection that turns out to refuse the request before
        // its first byte gets one replacement; a new connection does not.
        loop {
            let (mut conn, pooled) = match self.checkout(&key) {
                Some(conn) => (conn, true),
                None => (self.connect(url, host, port).await?, false),
            };
            match write_request(&mut conn.stream, &message, (!coalesce).then_some(req.body)).await {
                Ok(()) => {}
                Err(Written::Nothing(_)) if pooled => continue,
                Err(Written::Nothing(e)) => return Err(Error::Connect(e)),
                Err(Written::Partly(e)) => return Err(Error::Io(e)),
            }
            return Response::read(conn, self.clone(), key).await;
        }
    }

    /// The most recently used idle connection to `key` that is still open.
    fn checkout(&self, key: &str) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(key)?;
        while let Some(entry) = list.pop() {
            if entry.since.elapsed() < self.idle_timeout
                && entry.conn.buf.is_empty()
                && still_open(&entry.conn.stream)
            {
                return Some(entry.conn);
            }
        }
        None
    }

    fn checkin(&self, key: String, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(key).or_default();
        let timeout = self.idle_timeout;
        list.retain(|e| e.since.elapsed() < timeout);
        if list.len() < MAX_IDLE_PER_HOST {
            list.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self, url: &reqwest::Url, host: &str, port: u16) -> Result<Conn, Error> {
        let connecting = async {
            match url.host() {
                Some(url::Host::Ipv4(ip)) => TcpStream::connect((ip, port)).await,
                Some(url::Host::Ipv6(ip)) => TcpStream::connect((ip, port)).await,
                _ => TcpStream::connect((host, port)).await,
            }
        };
        let stream = match tokio::time::timeout(self.connect_timeout, connecting).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(Error::Connect(format!("tcp connect to {host}:{port}: {e}"))),
            Err(_) => {
                return Err(Error::Connect(format!(
                    "tcp connect to {host}:{port}: no connection within {:?}",
                    self.connect_timeout
                )))
            }
        };
        // Requests are small and answered at once: never hold one back.
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: BytesMut::new(),
        })
    }
}

fn request_head(req: &Request<'_>, host_port: &str) -> Vec<u8> {
    use std::io::Write as _;
    let mut head = Vec::with_capacity(192 + req.body.len().min(COALESCE_BYTES));
    let path = match req.url.query() {
        Some(q) => format!("{}?{q}", req.url.path()),
        None => req.url.path().to_string(),
    };
    // Writing into a Vec cannot fail.
    let _ = write!(
        head,
        "{} {path} HTTP/1.1\r\nHost: {host_port}\r\nContent-Length: {}\r\n",
        req.method,
        req.body.len()
    );
    if let Some(t) = req.content_type {
        let _ = write!(head, "Content-Type: {t}\r\n");
    }
    if let Some(token) = req.bearer {
        let _ = write!(head, "Authorization: Bearer {token}\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

enum Written {
    /// Not one byte left: the node cannot have seen the request.
    Nothing(String),
    Partly(String),
}

async fn write_request(
    stream: &mut TcpStream,
    message: &[u8],
    body: Option<&[u8]>,
) -> Result<(), Written> {
    let mut sent = 0usize;
    for part in std::iter::once(message).chain(body) {
        let mut rest = part;
        while !rest.is_empty() {
            match stream.write(rest).await {
                Ok(0) => return Err(failed(sent, "connection closed while sending".into())),
                Ok(n) => {
                    sent += n;
                    rest = &rest[n..];
                }
                Err(e) => return Err(failed(sent, format!("sending the request: {e}"))),
            }
        }
    }
    Ok(())
}

fn failed(sent: usize, message: String) -> Written {
    if sent == 0 {
        Written::Nothing(message)
    } else {
        Written::Partly(message)
    }
}

/// Whether the node has not closed (or reset) an idle connection, without
/// waiting: the pool's runtime may not have run since the node closed it.
fn still_open(stream: &TcpStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = 0u8;
    // SAFETY: the descriptor belongs to `stream`, borrowed for the call;
    // MSG_PEEK | MSG_DONTWAIT reads at most one byte into `byte`, consumes
    // nothing and never blocks.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    // 0: closed; > 0: bytes nobody asked for (the connection is out of
    // step); an error other than "nothing to read": broken.
    n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
}

/// How the rest of an answer's body is framed.
#[derive(Debug)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

#[derive(Debug)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk, this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines up to an empty one.
    Trailers,
}

/// An answer: its status and headers, then its body chunk by chunk.
/// Dropping it before the body's end closes its connection.
#[derive(Debug)]
pub struct Response {
    status: u16,
    /// Names in lower case.
    headers: Vec<(String, String)>,
    conn: Option<Conn>,
    framing: Framing,
    /// The connection may carry another request once the body is read.
    reusable: bool,
    pool: Pool,
    key: String,
}

impl Response {
    async fn read(mut conn: Conn, pool: Pool, key: String) -> Result<Self, Error> {
        loop {
            let end = loop {
                if let Some(at) = find(&conn.buf, b"\r\n\r\n") {
                    break at;
                }
                if conn.buf.len() > MAX_HEAD_BYTES {
                    return Err(Error::Protocol(format!(
                        "answer head longer than {MAX_HEAD_BYTES} bytes"
                    )));
                }
                if fill(&mut conn).await? == 0 {
                    return Err(Error::Io(if conn.buf.is_empty() {
                        "connection closed before an answer".into()
                    } else {
                        "connection closed inside the answer's head".into()
                    }));
                }
            };
            let head = conn.buf.split_to(end + 4);
            let Head {
                version_11,
                status,
                headers,
            } = parse_head(&head[..end])?;
            // An interim answer (100 Continue) precedes the real one.
            if (100..200).contains(&status) && status != 101 {
                continue;
            }
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str())
            };
            let closes = header("connection")
                .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
            let chunked = header("transfer-encoding").is_some_and(|v| {
                v.split(',')
                    .next_back()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
            });
            let framing = if status == 204 || status == 304 {
                Framing::Done
            } else if chunked {
                Framing::Chunked(Chunk::Size)
            } else if let Some(length) = header("content-length") {
                let n = length
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| Error::Protocol(format!("invalid Content-Length {length:?}")))?;
                Framing::Length(n)
            } else {
                Framing::UntilClose
            };
            let reusable =
                version_11 && !closes && !matches!(framing, Framing::UntilClose) && status != 101;
            return Ok(Response {
                status,
                headers,
                conn: Some(conn),
                framing,
                reusable,
                pool,
                key,
            });
        }
    }

    pub fn status(&self) -> u16 {
        self.status
    }

    /// The first value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next piece of the body; `None` at its end (the connection then
    /// goes back to the pool if it can carry another request).
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, Error> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Ok(None);
            };
            match &mut self.framing {
                Framing::Done => {
                    let conn = self.conn.take().expect("checked above");
                    if self.reusable && conn.buf.is_empty() {
                        self.pool.checkin(std::mem::take(&mut self.key), conn);
                    }
                    return Ok(None);
                }
                Framing::Length(0) => self.framing = Framing::Done,
                Framing::Length(left) => {
                    let data = take_data(conn, left).await?;
                    return Ok(Some(data));
                }
                Framing::UntilClose => {
                    if conn.buf.is_empty() && fill(conn).await? == 0 {
                        self.framing = Framing::Done;
                        continue;
                    }
                    return Ok(Some(conn.buf.split().freeze()));
                }
                Framing::Chunked(Chunk::Data(0)) => self.framing = Framing::Chunked(Chunk::DataEnd),
                Framing::Chunked(Chunk::Data(left)) => {
                    let data = take_data(conn, left).await?;
                    return Ok(Some(data));
                }
                Framing::Chunked(Chunk::Size) => {
                    let line = read_line(conn).await?;
                    let line = std::str::from_utf8(&line).unwrap_or("");
                    let digits = line.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(digits, 16)
                        .map_err(|_| Error::Protocol(format!("invalid chunk size {digits:?}")))?;
                    self.framing = Framing::Chunked(if size == 0 {
                        Chunk::Trailers
                    } else {
                        Chunk::Data(size)
                    });
                }
                Framing::Chunked(Chunk::DataEnd) => {
                    if !read_line(conn).await?.is_empty() {
                        return Err(Error::Protocol("chunk data longer than its size".into()));
                    }
                    self.framing = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(Chunk::Trailers) => {
                    if read_line(conn).await?.is_empty() {
                        self.framing = Framing::Done;
                    }
                }
            }
        }
    }
}

/// Read more of the answer into the connection's buffer; 0 at its end.
async fn fill(conn: &mut Conn) -> Result<usize, Error> {
    conn.buf.reserve(READ_SIZE);
    conn.stream
        .read_buf(&mut conn.buf)
        .await
        .map_err(|e| Error::Io(format!("reading the answer: {e}")))
}

/// Up to `left` bytes of body data (at least one), counted off `left`.
async fn take_data(conn: &mut Conn, left: &mut u64) -> Result<Bytes, Error> {
    if conn.buf.is_empty() && fill(conn).await? == 0 {
        return Err(Error::Io(
            "connection closed before the end of the answer".into(),
        ));
    }
    let n = (conn.buf.len() as u64).min(*left) as usize;
    *left -= n as u64;
    Ok(conn.buf.split_to(n).freeze())
}

/// One CRLF-terminated line of chunk framing, without its CRLF.
async fn read_line(conn: &mut Conn) -> Result<Bytes, Error> {
    loop {
        if let Some(at) = find(&conn.buf, b"\r\n") {
            let line = conn.buf.split_to(at).freeze();
            conn.buf.advance(2);
            return Ok(line);
        }
        if conn.buf.len() > MAX_CHUNK_LINE {
            return Err(Error::Protocol("chunk framing line too long".into()));
        }
        if fill(conn).await? == 0 {
            return Err(Error::Io(
                "connection closed before the end of the answer".into(),
            ));
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// An answer's status line and headers.
struct Head {
    version_11: bool,
    status: u16,
    /// Names in lower case.
    headers: Vec<(String, String)>,
}

fn parse_head(head: &[u8]) -> Result<Head, Error> {
    let text =
        std::str::from_utf8(head).map_err(|_| Error::Protocol("answer head is not text".into()))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    let status = parts.next().and_then(|s| s.parse::<u16>().ok());
    let (version_11, status) = match (version, status) {
        ("HTTP/1.1", Some(s)) => (true, s),
        ("HTTP/1.0", Some(s)) => (false, s),
        _ => {
            let shown: String = status_line.chars().take(80).collect();
            return Err(Error::Protocol(format!(
                "not an HTTP/1.1 answer: {shown:?}"
            )));
        }
    };
    let mut headers = Vec::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(Error::Protocol(format!("malformed header line {line:?}")));
        };
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Head {
        version_11,
        status,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server answering each request on a connection with the next of
    /// `answers` (raw bytes), recording what it read; it closes after
    /// `answers` runs out.
    async fn serve(answers: Vec<Vec<u8>>) -> (reqwest::Url, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = reqwest::Url::parse(&format!(
            "http://{}/v3/pipeline",
            listener.local_addr().unwrap()
        ))
        .unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            for answer in answers {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap();
                seen.extend_from_slice(&buf[..n]);
                s.write_all(&answer).await.unwrap();
            }
            seen
        });
        (url, task)
    }

    async fn body(resp: &mut Response) -> Result<Vec<u8>, Error> {
        let mut all = Vec::new();
        while let Some(c) = resp.chunk().await? {
            all.extend_from_slice(&c);
        }
        Ok(all)
    }

    fn post<'a>(url: &'a reqwest::Url, body: &'a [u8]) -> Request<'a> {
        Request {
            method: reqwest::Method::POST,
            url,
            content_type: Some("application/json"),
            bearer: Some("tok"),
            body,
        }
    }

    #[tokio::test]
    async fn length_and_chunked_bodies_on_one_kept_connection() {
        let (url, server) = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Conductor-Lock-Wait-Us: 7\r\n\r\nhello".to_vec(),
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: t\r\n\r\n".to_vec(),
        ])
        .await;
        let pool = Pool::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut r = pool.send(post(&url, b"{}")).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.header("x-conductor-lock-wait-us"), Some("7"));
        assert_eq!(body(&mut r).await.unwrap(), b"hello");
        let mut r = pool.send(post(&url, b"[]")).await.unwrap();
        assert_eq!(body(&mut r).await.unwrap(), b"abcde");
        let seen = String::from_utf8(server.await.unwrap()).unwrap();
        assert!(
            seen.starts_with("POST /v3/pipeline HTTP/1.1\r\nHost: 127.0.0.1:"),
            "{seen}"
        );
        assert!(seen.contains("Authorization: Bearer tok\r\n"), "{seen}");
        assert!(seen.contains("\r\n\r\n{}POST "), "{seen}");
    }

    #[tokio::test]
    async fn a_connection_the_node_closed_while_idle_is_not_used() {
        let (url, server) = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na".to_vec()
        ])
        .await;
        let pool = Pool::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut r = pool.send(post(&url, b"{}")).await.unwrap();
        body(&mut r).await.unwrap();
        server.await.unwrap(); // the server closed its side
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The listener is gone too: a fresh connection is refused, and the
        // request was never delivered.
        match pool.send(post(&url, b"{}")).await {
            Err(Error::Connect(_)) => {}
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_cut_answer_is_an_io_error_and_garbage_a_protocol_error() {
        let (url, _server) = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec()
        ])
        .await;
        let pool = Pool::new(Duration::from_secs(1), Duration::from_secs(60));
        let mut r = pool.send(post(&url, b"{}")).await.unwrap();
        assert!(matches!(body(&mut r).await, Err(Error::Io(_))));
        let (url, _server) = serve(vec![b"SSH-2.0-OpenSSH\r\n\r\n".to_vec()]).await;
        assert!(matches!(
            pool.send(post(&url, b"{}")).await,
            Err(Error::Protocol(_))
        ));
        let (url, _server) = serve(vec![
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec(),
        ])
        .await;
        let mut r = pool.send(post(&url, b"{}")).await.unwrap();
        assert!(matches!(body(&mut r).await, Err(Error::Protocol(_))));
    }
}
