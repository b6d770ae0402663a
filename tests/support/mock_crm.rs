//! A mock CRM on loopback: a JSON API that records every request it
//! receives, for the sync tests. The test system registered by
//! `tests/sync_foundation.rs` names it; the sync runtime (issue 18) sends
//! to it and grows it (batch upsert by external id, lookup, list, the exact
//! leaky bucket, block mode, validation errors, webhooks fired back).
//!
//! For now it answers every request with the status set
//! ([`MockCrm::set_status`], 200 at first) and a JSON body
//! `{"ok": true, "n": <request number>}` (`{"ok": false}` for an error
//! status), and keeps each request's method, path and body.
//!
//! Self-contained (std, tokio, hyper, hyper-util, http-body-util, bytes,
//! serde_json), like `mock_onec.rs`. Bounds: request heads up to 64 KiB,
//! bodies up to 1 MiB (more: 413, not recorded), at most 64 connections.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: usize = 1024 * 1024;
const MAX_CONNECTIONS: usize = 64;

/// One request the mock received.
#[derive(Debug, Clone, PartialEq)]
pub struct CrmRequest {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The body as JSON (`Value::Null` when empty or not JSON; see `raw`).
    pub body: Value,
    pub raw: String,
}

struct State {
    status: AtomicU16,
    log: Mutex<Vec<CrmRequest>>,
}

/// A running mock CRM. Dropping it stops the server and its connections.
pub struct MockCrm {
    addr: SocketAddr,
    state: Arc<State>,
    server: JoinHandle<()>,
}

impl MockCrm {
    /// Starts on 127.0.0.1:0, answering 200.
    pub async fn start() -> MockCrm {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("mock CRM binds");
        let addr = listener.local_addr().expect("mock CRM address");
        let state = Arc::new(State {
            status: AtomicU16::new(200),
            log: Mutex::new(Vec::new()),
        });
        let server = tokio::spawn(serve(listener, Arc::clone(&state)));
        MockCrm {
            addr,
            state,
            server,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The status every later request is answered with.
    pub fn set_status(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<CrmRequest> {
        self.state.log.lock().expect("mock CRM log").clone()
    }

    pub fn reset_requests(&self) {
        self.state.log.lock().expect("mock CRM log").clear();
    }
}

impl Drop for MockCrm {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    // Connections live in this set: aborting the server drops them all.
    let mut connections = JoinSet::new();
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        while connections.try_join_next().is_some() {}
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return;
        };
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = Arc::clone(&state);
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |req| handle(Arc::clone(&state), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(permit);
        });
    }
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let method = req.method().to_string();
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let authorization = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let Ok(collected) = Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    else {
        return Ok(answer(StatusCode::PAYLOAD_TOO_LARGE, json!({"ok": false})));
    };
    let raw = String::from_utf8_lossy(&collected.to_bytes()).into_owned();
    let body = serde_json::from_str(&raw).unwrap_or(Value::Null);
    let n = {
        let mut log = state.log.lock().expect("mock CRM log");
        log.push(CrmRequest {
            method,
            target,
            authorization,
            body,
            raw,
        });
        log.len()
    };
    let status =
        StatusCode::from_u16(state.status.load(Ordering::SeqCst)).unwrap_or(StatusCode::OK);
    let ok = status.is_success();
    Ok(answer(status, json!({"ok": ok, "n": n})))
}

fn answer(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
