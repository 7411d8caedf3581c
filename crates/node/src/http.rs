//! HTTP/1.1 serving: accept loop, routing, auth, body limits, responses.

use crate::encoding::Encoding;
use crate::errors::{self, code};
use crate::handlers::{self, Failure};
use crate::lockwait;
use crate::node::Node;
use crate::stats::{Endpoint, Gauges};
use bytes::Bytes;
use conductor_hrana::Error;
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body as _, Frame, Incoming};
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

pub type Body = Either<Full<Bytes>, ChannelBody>;

/// A response body fed by a cursor's channel, chunk by chunk.
pub struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// One HTTP/1.1 connection (plain or TLS) until it ends or the node stops.
async fn serve_connection<IO>(
    node: Arc<Node>,
    io: IO,
    peer: std::net::SocketAddr,
    mut stop_rx: watch::Receiver<bool>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let node = node.clone();
        async move { Ok::<_, Infallible>(handle(&node, req).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = stop_rx.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Serves until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish (up to the configured timeout) and closes the node.
pub async fn serve(node: Arc<Node>, listener: TcpListener, shutdown: impl Future<Output = ()>) {
    let reaper = tokio::spawn(node.clone().reap_streams());
    let lookup_reaper = node.lookup.clone().map(|l| tokio::spawn(l.reap_streams()));
    // Each connection task holds a clone of `alive`; when all are dropped,
    // `drained.recv()` returns None.
    let (alive, mut drained) = mpsc::channel::<()>(1);
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // e.g. out of file descriptors: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let node = node.clone();
        let alive = alive.clone();
        let stop_rx = stop_rx.clone();
        tokio::spawn(async move {
            match node.tls.clone() {
                None => serve_connection(node, stream, peer, stop_rx).await,
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls) => serve_connection(node, tls, peer, stop_rx).await,
                    Err(e) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                },
            }
            drop(alive);
        });
    }
    drop(listener);
    tracing::info!("shutting down: finishing in-flight requests");
    let _ = stop_tx.send(true);
    drop(alive);
    let timeout = Duration::from_millis(node.config.shutdown_timeout_ms);
    if tokio::time::timeout(timeout, drained.recv()).await.is_err() {
        tracing::warn!("in-flight requests did not finish in time; closing anyway");
    }
    reaper.abort();
    if let Some(r) = lookup_reaper {
        r.abort();
    }
    node.close().await;
    tracing::info!("stopped");
}

async fn handle(node: &Arc<Node>, req: Request<Incoming>) -> Response<Body> {
    let start = Instant::now();
    // Kept only for the per-request debug line; no allocation otherwise.
    // (Failures are logged at warn where they happen, with their message.)
    let what = (tracing::enabled!(tracing::Level::DEBUG))
        .then(|| (req.method().clone(), req.uri().path().to_owned()));
    // `/lookup/…` is the same protocol on the lookup database.
    let (node, path) = match req.uri().path().strip_prefix("/lookup") {
        Some(rest) if rest.starts_with('/') => match &node.lookup {
            Some(lookup) => (lookup, rest.to_owned()),
            None => (node, req.uri().path().to_owned()),
        },
        _ => (node, req.uri().path().to_owned()),
    };
    let endpoint = Endpoint::of_path(&path);
    let resp = route(node, req, endpoint, &path).await;
    let status = resp.status();
    let elapsed = start.elapsed();
    node.stats.record(endpoint, status.as_u16(), elapsed);
    if let Some((method, path)) = what {
        let micros = elapsed.as_micros() as u64;
        tracing::debug!(%method, %path, status = status.as_u16(), micros, "request");
    }
    resp
}

async fn route(
    node: &Arc<Node>,
    req: Request<Incoming>,
    endpoint: Endpoint,
    path: &str,
) -> Response<Body> {
    let method = req.method();
    let needs_auth = match endpoint {
        Endpoint::HEALTH | Endpoint::VERSION | Endpoint::PROBE => false,
        Endpoint::OTHER => {
            return error(
                StatusCode::NOT_FOUND,
                errors::error(
                    code::NOT_FOUND,
                    format!("no such endpoint: {}", req.uri().path()),
                ),
            );
        }
        _ => true,
    };
    if needs_auth
        && !node
            .auth
            .allows(req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes))
    {
        return error(
            StatusCode::UNAUTHORIZED,
            errors::error(
                code::UNAUTHORIZED,
                "missing or wrong `Authorization: Bearer` token",
            ),
        );
    }
    let encoding = if path.starts_with("/v3-protobuf/") {
        Encoding::Protobuf
    } else {
        Encoding::Json
    };
    let post = match (method, path) {
        (&Method::GET, "/health" | "/v2" | "/v3" | "/v3-protobuf") => {
            return text(StatusCode::OK, "ok\n")
        }
        (&Method::GET, "/version") => {
            return text(
                StatusCode::OK,
                concat!("conductor-node ", env!("CARGO_PKG_VERSION"), "\n"),
            )
        }
        (&Method::GET, "/stats") => {
            let body = node
                .stats
                .to_json(node.streams.open_count(), &node.db.group_stats)
                .to_string();
            return json(StatusCode::OK, body.into_bytes());
        }
        (&Method::GET, "/metrics") => {
            let gauges = Gauges {
                open_streams: node.streams.open_count(),
                open_transactions: node.streams.in_transaction_count(),
                wal_bytes: node.db.wal_bytes(),
            };
            let body = node.stats.to_prometheus(&gauges, &node.db.group_stats);
            let mut r = Response::new(Either::Left(Full::new(Bytes::from(body))));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            return r;
        }
        (&Method::POST, "/v2/pipeline" | "/v3/pipeline" | "/v3-protobuf/pipeline") => false,
        (&Method::POST, "/v3/cursor" | "/v3-protobuf/cursor") => true,
        _ => {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                errors::error(
                    code::PROTOCOL_ERROR,
                    format!("{method} is not allowed on {path}"),
                ),
            )
        }
    };
    let body = match read_body(node, req).await {
        Ok(b) => b,
        Err(Failure(status, e)) => return encoded_error(status, e, encoding),
    };
    let delay = node.config.delay_ms;
    let result = if post {
        handlers::cursor(node, &body, encoding).await.map(|rx| {
            let mut r = Response::new(Either::Right(ChannelBody(rx)));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(encoding.cursor_content_type()),
            );
            r
        })
    } else {
        handlers::pipeline(node, &body, encoding)
            .await
            .map(|(bytes, waited)| {
                let mut r = bytes_response(StatusCode::OK, bytes, encoding.content_type());
                if !waited.is_zero() {
                    r.headers_mut().insert(
                        lockwait::HEADER,
                        HeaderValue::from(waited.as_micros().max(1) as u64),
                    );
                }
                r
            })
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    match result {
        Ok(r) => r,
        Err(Failure(status, e)) => encoded_error(status, e, encoding),
    }
}

async fn read_body(node: &Node, req: Request<Incoming>) -> Result<Bytes, Failure> {
    let limit = node.config.max_body_bytes;
    let too_large = || {
        Failure(
            StatusCode::PAYLOAD_TOO_LARGE,
            errors::error(
                code::BODY_TOO_LARGE,
                format!("the request body is larger than the limit of {limit} bytes"),
            ),
        )
    };
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let body = req.into_body();
    if body.size_hint().lower() > limit as u64 {
        return Err(too_large());
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(Failure(
            StatusCode::BAD_REQUEST,
            errors::error(
                code::PROTOCOL_ERROR,
                format!("reading the request body: {e}"),
            ),
        )),
    }
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    bytes_response(status, body, "application/json")
}

fn bytes_response(status: StatusCode, body: Vec<u8>, content_type: &'static str) -> Response<Body> {
    let mut r = Response::new(Either::Left(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Either::Left(Full::new(Bytes::from_static(body.as_bytes()))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn error(status: StatusCode, e: Error) -> Response<Body> {
    encoded_error(status, e, Encoding::Json)
}

/// The `Error` body of a request that failed as a whole, in the encoding
/// of its endpoint (as sqld does).
fn encoded_error(status: StatusCode, e: Error, encoding: Encoding) -> Response<Body> {
    tracing::warn!(status = status.as_u16(), code = ?e.code, message = %e.message, "request failed");
    bytes_response(status, encoding.error_body(&e), encoding.content_type())
}
