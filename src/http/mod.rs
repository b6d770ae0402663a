//! The HTTP front: method + path → handler. Auth checks live here, once.
//!
//! Every answer is in the caller's protocol: the PBX gets SOAP (faults
//! included, even for 401/405/413/415), Prometheus gets its text format,
//! orchestrators get JSON.

mod auth;
pub mod server;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::config::Config;
use crate::directory::Directory;
use crate::metrics::Metrics;
use crate::popup::{self, Hub, OperatorInfo, ScreenQuery, TransportConfig};
use crate::soap::{self, FaultCode, SoapVersion};
use crate::sources::SourceHealth;
use crate::store::Store;
use crate::vats::{SoapReply, Vats};

pub use auth::{constant_time_eq, AuthFailure};

/// The largest SOAP request accepted; the PBX's requests are a few hundred bytes.
pub const MAX_SOAP_BODY: usize = 64 * 1024;

pub type Body = Full<Bytes>;

/// Everything a request handler needs, built once at start-up.
pub struct Front {
    soap_path: String,
    wsdl_requires_auth: bool,
    public_url: Option<String>,
    body_read_timeout: Duration,
    basic: auth::BasicAuth,
    vats: Vats,
    directory: Arc<Directory>,
    health: Arc<SourceHealth>,
    metrics: Arc<Metrics>,
    /// The pop-up hub the operator screens' transports read from.
    hub: Arc<Hub>,
    screens: TransportConfig,
    store: Store,
    api_token: Option<crate::config::Secret>,
    /// `server.max_connections` slots, shared by HTTP connections and the
    /// WebSocket screens they upgrade into (hyper's connection ends at the
    /// upgrade, so a screen takes a slot of its own for its lifetime).
    connection_slots: Arc<tokio::sync::Semaphore>,
    /// `cti_http_responses_total{endpoint="soap",status="200"}`, resolved once.
    soap_ok_responses: prometheus::IntCounter,
}

impl Front {
    pub fn new(
        config: &Config,
        vats: Vats,
        directory: Arc<Directory>,
        health: Arc<SourceHealth>,
        metrics: Arc<Metrics>,
        hub: Arc<Hub>,
        store: Store,
    ) -> Front {
        let password = config
            .soap
            .password
            .as_ref()
            .map(|p| p.expose())
            .unwrap_or_default();
        Front {
            soap_path: config.soap.path.clone(),
            wsdl_requires_auth: config.soap.wsdl_requires_auth,
            public_url: config.soap.public_url.clone(),
            body_read_timeout: config.server.body_read_timeout,
            basic: auth::BasicAuth::new(&config.soap.username, password),
            vats,
            directory,
            health,
            soap_ok_responses: metrics.http_responses.with_label_values(&["soap", "200"]),
            metrics,
            hub,
            store,
            api_token: config.api.token.clone(),
            connection_slots: Arc::new(tokio::sync::Semaphore::new(config.server.max_connections)),
            screens: TransportConfig {
                ping_interval: config.popup.ping_interval,
                long_poll_max_wait: config.popup.long_poll_max_wait,
            },
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn connection_slots(&self) -> Arc<tokio::sync::Semaphore> {
        Arc::clone(&self.connection_slots)
    }

    /// `GET /api/v1/calls?key=&since=&limit=`: the call journal, newest
    /// first. Bearer `api.token`. `since` is an RFC 3339 time; `limit`
    /// defaults to 100, at most 1000.
    async fn calls_endpoint(&self, req: &Request<Incoming>) -> Response<Body> {
        let token = self.api_token.as_ref().map(|t| t.expose());
        if let Err(failure) = auth::check_bearer(req.headers().get(header::AUTHORIZATION), token) {
            let mut response = json_error(StatusCode::UNAUTHORIZED, &failure.to_string());
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
        let (mut key, mut since, mut limit) = (None, None, 100u32);
        for pair in req
            .uri()
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let (name, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let Some(value) = crate::popup::query::percent_decode(raw) else {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    &format!("query parameter '{name}' is not valid percent-encoded UTF-8"),
                );
            };
            match name {
                "key" => key = Some(value),
                "since" => match humantime::parse_rfc3339_weak(&value) {
                    Ok(t) => since = Some(t),
                    Err(_) => {
                        return json_error(
                            StatusCode::BAD_REQUEST,
                            "since must be an RFC 3339 time, e.g. 2026-11-23T10:00:00Z",
                        )
                    }
                },
                "limit" => match value.parse::<u32>() {
                    Ok(n) if (1..=1000).contains(&n) => limit = n,
                    _ => {
                        return json_error(
                            StatusCode::BAD_REQUEST,
                            "limit must be a number from 1 to 1000",
                        )
                    }
                },
                _ => {}
            }
        }
        match self.store.calls(key.as_deref(), since, limit).await {
            Ok(calls) => {
                let calls: Vec<serde_json::Value> = calls
                    .into_iter()
                    .map(|c| {
                        serde_json::json!({
                            "id": c.id,
                            "at": humantime::format_rfc3339_millis(c.at).to_string(),
                            "raw_number": c.raw_number,
                            "number": c.number,
                            "key": c.key,
                            "counterparty_id": c.counterparty_id,
                            "delivered": c.delivered,
                        })
                    })
                    .collect();
                json(StatusCode::OK, &serde_json::json!({ "calls": calls }))
            }
            Err(e) => {
                tracing::error!(error = %e, "call journal query failed");
                json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("the call journal cannot be read: {e}"),
                )
            }
        }
    }

    /// hyper's entry point: never fails, every error is an answer.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let path = req.uri().path();
        let (endpoint, response) = if path == self.soap_path {
            ("soap", self.soap_endpoint(req).await)
        } else {
            match (req.method(), path) {
                (&Method::GET, "/metrics") => ("metrics", self.metrics_endpoint()),
                (&Method::GET, "/healthz") => ("healthz", text(StatusCode::OK, "ok\n")),
                (&Method::GET, "/readyz") => ("readyz", self.readyz()),
                (&Method::GET, "/operator" | "/operator/") => ("operator_page", operator_page()),
                (&Method::GET, "/api/v1/calls") => ("api_calls", self.calls_endpoint(&req).await),
                (&Method::GET, "/operator/ws") => ("operator_ws", self.operator_ws(req)),
                (&Method::GET, "/operator/events") => {
                    ("operator_events", self.operator_events(req).await)
                }
                _ => (
                    "other",
                    json_error(StatusCode::NOT_FOUND, "no such endpoint"),
                ),
            }
        };
        if endpoint == "soap" && response.status() == StatusCode::OK {
            self.soap_ok_responses.inc();
        } else {
            self.metrics
                .http_responses
                .with_label_values(&[endpoint, response.status().as_str()])
                .inc();
        }
        Ok(response)
    }

    async fn soap_endpoint(&self, req: Request<Incoming>) -> Response<Body> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let declared = SoapVersion::from_content_type(content_type);
        let hint = declared.unwrap_or(SoapVersion::V11);
        let is_wsdl = req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.eq_ignore_ascii_case("wsdl")));

        match *req.method() {
            Method::POST => {}
            Method::GET if is_wsdl => return self.wsdl(&req),
            _ => {
                let reply = SoapReply::fault(
                    hint,
                    FaultCode::Client,
                    &format!(
                        "method {} is not allowed here: POST a SOAP request, or GET ?wsdl",
                        req.method()
                    ),
                );
                let mut response = soap_response(reply);
                *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("GET, POST"));
                return response;
            }
        }
        if let Err(failure) = self.basic.check(req.headers().get(header::AUTHORIZATION)) {
            return unauthorized(hint, failure);
        }
        let Some(version) = declared else {
            let reply = SoapReply::fault(
                hint,
                FaultCode::Client,
                &format!("Content-Type '{content_type:.100}' is not SOAP: send text/xml (SOAP 1.1) or application/soap+xml (SOAP 1.2)"),
            );
            return with_status(soap_response(reply), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        };
        let too_large = || {
            let reply = SoapReply::fault(
                version,
                FaultCode::Client,
                &format!("request body is larger than {MAX_SOAP_BODY} bytes"),
            );
            with_status(soap_response(reply), StatusCode::PAYLOAD_TOO_LARGE)
        };
        let declared_len = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared_len.is_some_and(|n| n > MAX_SOAP_BODY as u64) {
            return too_large();
        }
        let collect = Limited::new(req.into_body(), MAX_SOAP_BODY).collect();
        tokio::pin!(collect);
        // The PBX's request usually arrives in one packet with its headers: the
        // body is then complete at the first poll and no timer is armed for it.
        let collected = match poll_once(collect.as_mut()) {
            Some(done) => Ok(done),
            None => tokio::time::timeout(self.body_read_timeout, collect).await,
        };
        let body = match collected {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "request body could not be read");
                let reply = SoapReply::fault(
                    version,
                    FaultCode::Client,
                    "request body could not be read in full",
                );
                return with_status(soap_response(reply), StatusCode::BAD_REQUEST);
            }
            Err(_) => {
                let reply = SoapReply::fault(
                    version,
                    FaultCode::Client,
                    &format!(
                        "request body did not arrive within {} s",
                        self.body_read_timeout.as_secs_f64()
                    ),
                );
                return with_status(soap_response(reply), StatusCode::REQUEST_TIMEOUT);
            }
        };
        soap_response(self.vats.answer(&body, version).await)
    }

    /// `GET /operator/ws?token=T[&after=N]`: the token is checked before
    /// anything else (401, and no handshake), then `after`, then the handshake.
    fn operator_ws(&self, mut req: Request<Incoming>) -> Response<Body> {
        let (operator, query) = match self.screen(req.uri().query()) {
            Ok(found) => found,
            Err((status, message)) => return json_error(status, &message),
        };
        let after = match query.after() {
            Ok(after) => after,
            Err(e) => return json_error(StatusCode::BAD_REQUEST, &e),
        };
        let handshake = match popup::websocket::Handshake::check(&mut req) {
            Ok(handshake) => handshake,
            Err(refusal) => {
                let mut response = json_error(refusal.status, refusal.message);
                response.headers_mut().extend(refusal.headers());
                return response;
            }
        };
        let Ok(slot) = Arc::clone(&self.connection_slots).try_acquire_owned() else {
            tracing::warn!(key = %operator.key, "operator screen refused: server.max_connections are open");
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many connections (server.max_connections); try again later",
            );
        };
        match handshake.accept(
            &self.hub,
            &operator,
            after,
            self.screens.ping_interval,
            slot,
        ) {
            Ok(response) => response,
            Err(e) => {
                tracing::error!(error = %e, key = %operator.key, "operator screen not subscribed");
                json_error(StatusCode::INTERNAL_SERVER_ERROR, "cannot subscribe")
            }
        }
    }

    /// `GET /operator/events?token=T&after=N[&wait=S]`: the long-poll.
    async fn operator_events(&self, req: Request<Incoming>) -> Response<Body> {
        let (operator, query) = match self.screen(req.uri().query()) {
            Ok(found) => found,
            Err((status, message)) => return json_error(status, &message),
        };
        let (after, wait) = match (query.after(), query.wait_secs()) {
            (Ok(after), Ok(wait)) => (after, wait),
            (Err(e), _) | (_, Err(e)) => return json_error(StatusCode::BAD_REQUEST, &e),
        };
        let wait = popup::long_poll::wait_for(wait, self.screens.long_poll_max_wait);
        match popup::long_poll::poll(&self.hub, &operator.key, after, wait).await {
            Ok(body) => {
                let mut response = Response::new(Full::new(Bytes::from(body)));
                let headers = response.headers_mut();
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                response
            }
            Err(e) => {
                tracing::error!(error = %e, key = %operator.key, "long-poll failed");
                json_error(StatusCode::INTERNAL_SERVER_ERROR, "cannot read messages")
            }
        }
    }

    /// The operator whose screen this is, from `?token=`; a 400 for a query
    /// that cannot be read, a 401 for a missing or unknown token.
    fn screen(
        &self,
        query: Option<&str>,
    ) -> Result<(OperatorInfo, ScreenQuery), (StatusCode, String)> {
        let query = ScreenQuery::parse(query).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
        let Some(token) = query.token() else {
            return Err((
                StatusCode::UNAUTHORIZED,
                "missing token: connect with ?token=<this screen's token>".into(),
            ));
        };
        match self.hub.operator_for_token(token) {
            Some(operator) => Ok((operator, query)),
            None => {
                // Debug only: a screen with an outdated token retries for ever;
                // refusals are counted in cti_http_responses_total.
                tracing::debug!("operator screen refused: unknown token");
                Err((StatusCode::UNAUTHORIZED, "unknown token".into()))
            }
        }
    }

    fn wsdl(&self, req: &Request<Incoming>) -> Response<Body> {
        if self.wsdl_requires_auth {
            if let Err(failure) = self.basic.check(req.headers().get(header::AUTHORIZATION)) {
                return unauthorized(SoapVersion::V11, failure);
            }
        }
        let url = match &self.public_url {
            Some(url) => url.clone(),
            None => {
                // The address the client reached us by; a Host header that is not a
                // plain authority would inject text into the document, so it is checked.
                let host = req
                    .headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .and_then(|h| h.parse::<hyper::http::uri::Authority>().ok())
                    .map_or_else(|| "localhost".to_owned(), |a| a.to_string());
                format!("http://{host}{}", self.soap_path)
            }
        };
        let mut response = Response::new(Full::new(Bytes::from(soap::wsdl(&url))));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/xml; charset=utf-8"),
        );
        response
    }

    fn metrics_endpoint(&self) -> Response<Body> {
        let index = self.directory.snapshot();
        self.metrics
            .directory_counterparties
            .set(index.len() as i64);
        self.metrics
            .directory_phones
            .set(index.phone_count() as i64);
        self.metrics
            .directory_ambiguous_phones
            .set(index.ambiguous_phones() as i64);
        for info in index.sources() {
            self.metrics
                .source_records
                .with_label_values(&[&*info.name])
                .set(info.records as i64);
        }
        for (name, state) in self.health.report() {
            let last = state
                .last_success
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0.0, |d| d.as_secs_f64());
            self.metrics
                .source_last_success
                .with_label_values(&[&name])
                .set(last);
            self.metrics
                .source_consecutive_failures
                .with_label_values(&[&name])
                .set(i64::from(state.consecutive_failures));
        }
        let mut response = Response::new(Full::new(Bytes::from(self.metrics.render())));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        response
    }

    /// 200 once a directory is loaded (from a source or the snapshot), with
    /// each source's state; 503 only before that.
    fn readyz(&self) -> Response<Body> {
        let index = self.directory.snapshot();
        let health = self.health.report();
        let mut sources = serde_json::Map::new();
        for info in index.sources() {
            sources.insert(
                info.name.to_string(),
                serde_json::json!({
                    "records": info.records,
                    "loaded_at": rfc3339(info.loaded_at),
                }),
            );
        }
        let mut stale = Vec::new();
        for (name, state) in &health {
            let entry = sources
                .entry(name.clone())
                .or_insert_with(|| serde_json::json!({ "records": 0 }));
            if let Some(obj) = entry.as_object_mut() {
                obj.insert(
                    "state".into(),
                    (if state.failing_since.is_some() {
                        "failing"
                    } else {
                        "ok"
                    })
                    .into(),
                );
                obj.insert(
                    "last_success".into(),
                    state.last_success.map(rfc3339).into(),
                );
                obj.insert(
                    "consecutive_failures".into(),
                    state.consecutive_failures.into(),
                );
                if let Some(since) = state.failing_since {
                    obj.insert("failing_since".into(), rfc3339(since).into());
                    obj.insert("last_error".into(), state.last_error.clone().into());
                    stale.push(name.clone());
                }
            }
        }
        let ready = index.is_loaded();
        let body = serde_json::json!({
            "ready": ready,
            "counterparties": index.len(),
            "phones": index.phone_count(),
            "sources": sources,
            "failing_sources": stale,
        });
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json(status, &body)
    }
}

/// Polls a future once, with a waker that does nothing: `Some` if it was
/// already complete. A `None` leaves the future as it was, to be awaited.
fn poll_once<F: Future>(fut: std::pin::Pin<&mut F>) -> Option<F::Output> {
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

fn operator_page() -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(
        crate::popup::page::OPERATOR_PAGE.as_bytes(),
    )));
    for (name, value) in crate::popup::page::PAGE_HEADERS {
        response
            .headers_mut()
            .insert(name, HeaderValue::from_static(value));
    }
    response
}

pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn with_status(mut response: Response<Body>, status: StatusCode) -> Response<Body> {
    *response.status_mut() = status;
    response
}

fn soap_response(reply: SoapReply) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(reply.body)));
    *response.status_mut() =
        StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(reply.version.content_type()),
    );
    response
}

/// Unix second of the last "bad credentials" warning: a misconfigured PBX or
/// a password guesser must not write a log line per request.
static LAST_AUTH_WARNING: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
const AUTH_WARNING_EVERY_S: u64 = 60;

fn unauthorized(version: SoapVersion, failure: AuthFailure) -> Response<Body> {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST_AUTH_WARNING.load(std::sync::atomic::Ordering::Relaxed);
    if now >= last + AUTH_WARNING_EVERY_S
        && LAST_AUTH_WARNING
            .compare_exchange(
                last,
                now,
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
            )
            .is_ok()
    {
        tracing::warn!(reason = %failure, "SOAP request refused: bad credentials (repeats within a minute are counted in cti_http_responses_total{{status=\"401\"}}, not logged)");
    } else {
        tracing::debug!(reason = %failure, "SOAP request refused: bad credentials");
    }
    let reply = SoapReply::fault(version, FaultCode::Client, &failure.to_string());
    let mut response = with_status(soap_response(reply), StatusCode::UNAUTHORIZED);
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"cti-gateway\", charset=\"UTF-8\""),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

pub fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}
