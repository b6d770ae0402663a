//! The HTTP server under the test mocks (`mock_onec.rs`, `mock_crm.rs`): the
//! accept loop, the bounds, the request log and the failure modes, generic
//! over a [`Handler`] that answers one request.
//!
//! - Bounds: request heads up to [`MAX_HEAD_BYTES`]; bodies up to
//!   [`Limits::max_body`] (more: 413, not logged); at most
//!   [`Limits::max_connections`] connections at once (more wait to be
//!   accepted).
//! - The request log ([`MockHttp::requests`]): every request, in arrival
//!   order, with its head, body and the status answered (`None` while
//!   pending or when never answered); [`MockHttp::set_keep_log`] turns the
//!   keeping off for long benchmark runs (the sequence numbers still count).
//! - Modes ([`Mode`]), applied to each request as it arrives, after any
//!   [`MockHttp::pause`]: slow answers, a hang without an answer, a 5xx, a
//!   garbage body. The handler chooses what the failure and the garbage
//!   look like ([`Handler::fail`], [`Handler::garbage`]).
//! - Pause: [`MockHttp::pause`] holds every request (logged, not yet
//!   answered) until [`MockHttp::resume`].
//!
//! Self-contained (std, tokio, hyper, hyper-util, http-body-util, bytes,
//! serde_json): benchmark binaries include it with `#[path]` next to the mock
//! that uses it (`#[path = "../tests/support/mock_http.rs"] mod mock_http;`).
//! Each includer uses a part of it: include it under `#[allow(dead_code)]`.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

/// The longest request head read (hyper's buffer): larger heads are refused.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// A mock's answer.
pub type Reply = Response<Full<Bytes>>;

/// What [`Handler::handle`] returns: boxed, so handlers are trait objects.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Option<Reply>> + Send + 'a>>;

/// How the server answers, applied to every request as it arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Waits this long before each answer.
    Slow(Duration),
    /// Reads the request and never answers (until the mode changes; then the
    /// connection is closed without an answer).
    Hang,
    /// [`Handler::fail`]'s answer (a 500), before the handler sees the request.
    Fail,
    /// [`Handler::garbage`]'s answer: a 200 whose body is not what the API
    /// sends (a proxy's broken page, a server restarting mid-answer).
    Garbage,
}

/// Bounds of one server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 64,
            max_body: 1024 * 1024,
        }
    }
}

/// A request as the server received it.
#[derive(Debug, Clone)]
pub struct HttpRequest {
    /// Arrival order, from 0 for the server's life (not reset).
    pub seq: u64,
    pub method: Method,
    /// The raw request target (path and query) as sent.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub peer: SocketAddr,
}

impl HttpRequest {
    /// The path part of the target (before `?`).
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// The query part of the target (after `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.target.split_once('?').map(|(_, q)| q)
    }

    /// A header as text (`None` when absent or not visible ASCII).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// One entry of the request log.
#[derive(Debug, Clone)]
pub struct Logged {
    pub request: HttpRequest,
    /// The status answered; `None` while pending or if never answered.
    pub status: Option<u16>,
}

/// What a mock does with a request.
pub trait Handler: Send + Sync + 'static {
    /// The answer to `req`; `None` closes the connection without one (a
    /// server killed mid-request). Runs in [`Mode::Normal`] and after the
    /// delay of [`Mode::Slow`].
    fn handle<'a>(&'a self, req: &'a HttpRequest) -> HandlerFuture<'a>;

    /// The answer in [`Mode::Fail`]: a 500 with a JSON error by default.
    fn fail(&self, _req: &HttpRequest) -> Reply {
        reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/json",
            r#"{"error":"INTERNAL_SERVER_ERROR","message":"mock: Mode::Fail"}"#,
        )
    }

    /// The answer in [`Mode::Garbage`]: by default a 200
    /// `application/json` cut off in the middle of a value, ending in bytes
    /// that are not UTF-8.
    fn garbage(&self, _req: &HttpRequest) -> Reply {
        let mut body = br#"{"results":[{"external_id":"0000-"#.to_vec();
        body.extend_from_slice(GARBAGE_TAIL);
        reply_bytes(StatusCode::OK, "application/json", body)
    }
}

/// The bytes a garbage answer ends with: not UTF-8, not JSON.
pub const GARBAGE_TAIL: &[u8] = &[0xff, 0xfe, 0x00, b'{', 0xc3];

/// An answer with a static content type.
pub fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    reply_bytes(status, content_type, body)
}

fn reply_bytes(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A JSON answer.
pub fn json_reply(status: StatusCode, body: &serde_json::Value) -> Reply {
    reply(status, "application/json", body.to_string())
}

/// A running server on 127.0.0.1. Dropping it stops the server and every
/// connection.
pub struct MockHttp {
    addr: SocketAddr,
    state: Arc<Shared>,
    server: JoinHandle<()>,
}

struct Shared {
    handler: Arc<dyn Handler>,
    limits: Limits,
    mode: watch::Sender<Mode>,
    paused: watch::Sender<bool>,
    keep_log: AtomicBool,
    log: Mutex<Log>,
}

#[derive(Default)]
struct Log {
    next_seq: u64,
    seen: Vec<Logged>,
}

impl MockHttp {
    /// Binds 127.0.0.1:0 and serves the handler `make` builds for the bound
    /// address (a mock whose answers name its own URL).
    pub async fn start<H: Handler>(limits: Limits, make: impl FnOnce(SocketAddr) -> H) -> MockHttp {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("mock server binds 127.0.0.1:0");
        MockHttp::serve(listener, limits, make)
    }

    /// Serves on a listener the caller bound (a benchmark's fixed address).
    pub fn serve<H: Handler>(
        listener: TcpListener,
        limits: Limits,
        make: impl FnOnce(SocketAddr) -> H,
    ) -> MockHttp {
        let addr = listener.local_addr().expect("mock server address");
        let state = Arc::new(Shared {
            handler: Arc::new(make(addr)),
            limits,
            mode: watch::channel(Mode::Normal).0,
            paused: watch::channel(false).0,
            keep_log: AtomicBool::new(true),
            log: Mutex::new(Log::default()),
        });
        let server = tokio::spawn(accept_loop(listener, Arc::clone(&state)));
        MockHttp {
            addr,
            state,
            server,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.state.mode.borrow()
    }

    /// Holds every request (new and waiting) until [`MockHttp::resume`].
    pub fn pause(&self) {
        self.state.paused.send_replace(true);
    }

    pub fn resume(&self) {
        self.state.paused.send_replace(false);
    }

    /// Whether requests are logged (on at first). Off, the log stays empty
    /// and the sequence numbers still count.
    pub fn set_keep_log(&self, keep: bool) {
        self.state.keep_log.store(keep, Ordering::SeqCst);
    }

    /// Every request logged since the start or the last
    /// [`MockHttp::reset_requests`].
    pub fn requests(&self) -> Vec<Logged> {
        lock(&self.state.log).seen.clone()
    }

    /// Runs `f` over the log without copying it.
    pub fn with_requests<T>(&self, f: impl FnOnce(&[Logged]) -> T) -> T {
        f(&lock(&self.state.log).seen)
    }

    /// How many requests arrived in the server's life (not reset).
    pub fn arrived(&self) -> u64 {
        lock(&self.state.log).next_seq
    }

    pub fn reset_requests(&self) {
        lock(&self.state.log).seen.clear();
    }
}

impl Drop for MockHttp {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A poisoned lock is still usable: a test that panicked holding it has
/// already failed.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn accept_loop(listener: TcpListener, state: Arc<Shared>) {
    // Connections live in this set: when the server task is aborted (the
    // mock dropped), the set is dropped and every connection with it.
    let mut connections = JoinSet::new();
    let permits = Arc::new(Semaphore::new(state.limits.max_connections));
    loop {
        while connections.try_join_next().is_some() {}
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let state = Arc::clone(&state);
        connections.spawn(async move {
            let service =
                hyper::service::service_fn(move |req| handle(Arc::clone(&state), peer, req));
            let _ = hyper::server::conn::http1::Builder::new()
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}

/// Returned by the service to close the connection without an answer
/// ([`Mode::Hang`], a handler's `None`).
#[derive(Debug)]
struct Hung;

impl fmt::Display for Hung {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("mock server hung up without answering")
    }
}

impl std::error::Error for Hung {}

async fn handle(
    state: Arc<Shared>,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Result<Reply, Hung> {
    let (parts, body) = req.into_parts();
    let target = parts
        .uri
        .path_and_query()
        .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let Ok(collected) = Limited::new(body, state.limits.max_body).collect().await else {
        return Ok(json_reply(
            StatusCode::PAYLOAD_TOO_LARGE,
            &serde_json::json!({"error": "PAYLOAD_TOO_LARGE"}),
        ));
    };
    let request = {
        let mut log = lock(&state.log);
        let seq = log.next_seq;
        log.next_seq += 1;
        let request = HttpRequest {
            seq,
            method: parts.method,
            target,
            headers: parts.headers,
            body: collected.to_bytes(),
            peer,
        };
        if state.keep_log.load(Ordering::SeqCst) {
            log.seen.push(Logged {
                request: request.clone(),
                status: None,
            });
        }
        request
    };

    if *state.paused.borrow() {
        let mut rx = state.paused.subscribe();
        let _ = rx.wait_for(|paused| !*paused).await;
    }
    let mode = *state.mode.borrow();
    let answer = match mode {
        Mode::Hang => {
            let mut rx = state.mode.subscribe();
            let _ = rx.wait_for(|m| *m != Mode::Hang).await;
            None
        }
        Mode::Fail => Some(state.handler.fail(&request)),
        Mode::Garbage => Some(state.handler.garbage(&request)),
        Mode::Slow(delay) => {
            tokio::time::sleep(delay).await;
            state.handler.handle(&request).await
        }
        Mode::Normal => state.handler.handle(&request).await,
    };
    let Some(answer) = answer else {
        return Err(Hung);
    };
    let mut log = lock(&state.log);
    if let Some(seen) = log
        .seen
        .iter_mut()
        .rev()
        .find(|r| r.request.seq == request.seq)
    {
        seen.status = Some(answer.status().as_u16());
    }
    Ok(answer)
}
