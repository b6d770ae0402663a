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
use crate::config::OperatorConfig;
use crate::directory::model::MAX_ID_LEN;
use crate::directory::Directory;
use crate::metrics::Metrics;
use crate::popup::{self, Hub, ScreenQuery, TransportConfig};
use crate::soap::{self, FaultCode, SoapVersion};
use crate::sources::push::{self, BatchError, PushError, PushSource};
use crate::sources::SourceHealth;
use crate::store::Store;
use crate::vats::{SoapReply, Vats};

pub use auth::{constant_time_eq, AuthFailure};

/// The largest SOAP request accepted; the PBX's requests are a few hundred bytes.
pub const MAX_SOAP_BODY: usize = 64 * 1024;

/// The largest push API body accepted (10,000 records of about 800 bytes).
pub const MAX_PUSH_BODY: usize = 8 * 1024 * 1024;

/// `POST` here upserts counterparties; `DELETE` below it removes one.
const COUNTERPARTIES_PATH: &str = "/api/v1/counterparties";
const COUNTERPARTY_PREFIX: &str = "/api/v1/counterparties/";

/// Push bodies up to this size are parsed on the request's task; larger
/// ones on the blocking pool (8 MiB of JSON is tens of milliseconds of CPU
/// that SayName answers must not wait behind).
const INLINE_PARSE_BYTES: usize = 64 * 1024;

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
    /// The `[[operator]]` entries: a screen's token names one of them.
    operators: Vec<OperatorConfig>,
    screens: TransportConfig,
    store: Store,
    api_token: Option<crate::config::Secret>,
    /// The push API's use-case: `POST`/`DELETE` on `/api/v1/counterparties`.
    push: Arc<PushSource>,
    /// `server.max_connections` slots, shared by HTTP connections and the
    /// WebSocket screens they upgrade into (hyper's connection ends at the
    /// upgrade, so a screen takes a slot of its own for its lifetime).
    connection_slots: Arc<tokio::sync::Semaphore>,
    /// `cti_http_responses_total{endpoint="soap",status="200"}`, resolved once.
    soap_ok_responses: prometheus::IntCounter,
}

impl Front {
    // One handle per part it serves; built once, by the gateway only.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Config,
        vats: Vats,
        directory: Arc<Directory>,
        health: Arc<SourceHealth>,
        metrics: Arc<Metrics>,
        hub: Arc<Hub>,
        store: Store,
        push: Arc<PushSource>,
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
            operators: config.operators.clone(),
            store,
            api_token: config.api.token.clone(),
            push,
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
        if let Err(refused) = self.check_api_token(req, false) {
            return refused;
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

    /// `Authorization: Bearer <api.token>`, compared in constant time; a 401
    /// with `WWW-Authenticate: Bearer` otherwise, and always when no
    /// `api.token` is configured. `warn`: log the refusal (at most once a
    /// minute, the rest are counted in `cti_http_responses_total`).
    #[allow(clippy::result_large_err)] // the Err is the answer itself
    fn check_api_token(&self, req: &Request<Incoming>, warn: bool) -> Result<(), Response<Body>> {
        let token = self.api_token.as_ref().map(|t| t.expose());
        let Err(failure) = auth::check_bearer(req.headers().get(header::AUTHORIZATION), token)
        else {
            return Ok(());
        };
        let message = match token {
            None => "no api.token is configured on the gateway: this API refuses every request until one is set".to_owned(),
            Some(_) => failure.to_string(),
        };
        if warn && once_a_minute(&LAST_API_AUTH_WARNING) {
            tracing::warn!(path = req.uri().path(), reason = %message, "push API request refused: bad or missing Bearer token (repeats within a minute are not logged)");
        }
        let mut response = json_error(StatusCode::UNAUTHORIZED, &message);
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        Err(response)
    }

    /// `POST /api/v1/counterparties`: a JSON array of counterparties,
    /// upserted into the `push` source, all or none. 200 once committed in
    /// the store and applied to the directory.
    async fn counterparties_endpoint(&self, req: Request<Incoming>) -> Response<Body> {
        if req.method() != Method::POST {
            return method_not_allowed(
                req.method(),
                "POST",
                "POST a JSON array of counterparties here; DELETE /api/v1/counterparties/{id} removes one",
            );
        }
        if let Err(refused) = self.check_api_token(&req, true) {
            return refused;
        }
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        if !is_json_utf8(&content_type) {
            return push_refused(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                serde_json::json!({ "error": format!(
                    "Content-Type '{}' is not JSON: send application/json (UTF-8)",
                    content_type.chars().take(100).collect::<String>().escape_debug()
                ) }),
            );
        }
        let body = match self.read_body(req, MAX_PUSH_BODY).await {
            Ok(body) => body,
            Err(refused) => return refused,
        };
        let parsed = if body.len() <= INLINE_PARSE_BYTES {
            push::parse_batch(&body)
        } else {
            match tokio::task::spawn_blocking(move || push::parse_batch(&body)).await {
                Ok(parsed) => parsed,
                Err(e) => {
                    tracing::error!(error = %e, "push body parser task failed");
                    return json_error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the body could not be read; nothing was changed",
                    );
                }
            }
        };
        let records = match parsed {
            Ok(records) => records,
            Err(e @ BatchError::Malformed { line, column, .. }) => {
                return push_refused(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({
                        "error": format!("{e}; nothing was changed"),
                        "line": line,
                        "column": column,
                    }),
                );
            }
            Err(e @ BatchError::TooMany { limit }) => {
                return push_refused(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    serde_json::json!({ "error": format!("{e}; nothing was changed"), "limit": limit }),
                );
            }
            Err(BatchError::Record(e)) => return record_refused(&e),
        };
        match self.push.upsert(records).await {
            Ok(report) => json(
                StatusCode::OK,
                &serde_json::json!({
                    "upserted": report.upserted,
                    "records": report.records,
                    "counterparties": report.counterparties,
                }),
            ),
            Err(e) => push_failed(e),
        }
    }

    /// `DELETE /api/v1/counterparties/{id}`: removes the id from every
    /// source; 404 when none has it.
    async fn counterparty_endpoint(&self, req: Request<Incoming>) -> Response<Body> {
        if req.method() != Method::DELETE {
            return method_not_allowed(
                req.method(),
                "DELETE",
                "DELETE /api/v1/counterparties/{id} removes a counterparty; POST /api/v1/counterparties upserts",
            );
        }
        if let Err(refused) = self.check_api_token(&req, true) {
            return refused;
        }
        let raw = req
            .uri()
            .path()
            .strip_prefix(COUNTERPARTY_PREFIX)
            .unwrap_or_default();
        let too_long = || {
            push_refused(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": format!("the id is longer than {MAX_ID_LEN} bytes (the longest an id may be)") }),
            )
        };
        // Each byte of an id is at most three characters percent-encoded.
        if raw.len() > 3 * MAX_ID_LEN {
            return too_long();
        }
        let Some(id) = crate::popup::query::percent_decode(raw) else {
            return push_refused(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": "the id in the path is not valid percent-encoded UTF-8" }),
            );
        };
        if id.trim().is_empty() {
            return push_refused(
                StatusCode::BAD_REQUEST,
                serde_json::json!({ "error": "no id: DELETE /api/v1/counterparties/{id}, the id percent-encoded" }),
            );
        }
        if id.len() > MAX_ID_LEN {
            return too_long();
        }
        match self.push.delete(&id).await {
            Ok(report) if report.removed => json(
                StatusCode::OK,
                &serde_json::json!({
                    "removed": true,
                    "id": id,
                    "counterparties": report.counterparties,
                }),
            ),
            Ok(_) => {
                tracing::info!(id = %id, "push: delete of an id no source has; nothing changed");
                json(
                    StatusCode::NOT_FOUND,
                    &serde_json::json!({
                        "error": format!("no source has a counterparty with id {id:?}; nothing was changed"),
                        "removed": false,
                        "id": id,
                    }),
                )
            }
            Err(e) => push_failed(e),
        }
    }

    /// Reads a JSON API body of at most `limit` bytes within
    /// `server.body_read_timeout`: 413 when larger (declared or streamed),
    /// 408 when too slow, 400 when the connection breaks.
    #[allow(clippy::result_large_err)] // the Err is the answer itself
    async fn read_body(
        &self,
        req: Request<Incoming>,
        limit: usize,
    ) -> Result<Bytes, Response<Body>> {
        let too_large = || {
            push_refused(
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({
                    "error": format!("the request body is larger than {limit} bytes: send fewer records per request; nothing was changed"),
                    "limit_bytes": limit,
                }),
            )
        };
        let declared_len = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared_len.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let collect = Limited::new(req.into_body(), limit).collect();
        tokio::pin!(collect);
        let collected = match poll_once(collect.as_mut()) {
            Some(done) => Ok(done),
            None => tokio::time::timeout(self.body_read_timeout, collect).await,
        };
        match collected {
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "request body could not be read");
                Err(push_refused(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({ "error": "the request body could not be read in full; nothing was changed" }),
                ))
            }
            Err(_) => Err(push_refused(
                StatusCode::REQUEST_TIMEOUT,
                serde_json::json!({ "error": format!(
                    "the request body did not arrive within {} s (server.body_read_timeout); nothing was changed",
                    self.body_read_timeout.as_secs_f64()
                ) }),
            )),
        }
    }

    /// hyper's entry point: never fails, every error is an answer.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let path = req.uri().path();
        let (endpoint, response) = if head_len(&req) > server::MAX_HEAD_BYTES {
            ("head_too_large", self.head_too_large(path))
        } else if path == self.soap_path {
            ("soap", self.soap_endpoint(req).await)
        } else if path == COUNTERPARTIES_PATH {
            (
                "api_counterparties",
                self.counterparties_endpoint(req).await,
            )
        } else if path.starts_with(COUNTERPARTY_PREFIX) {
            ("api_counterparty", self.counterparty_endpoint(req).await)
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

    /// 431 for a request head over the limit, in the protocol of the path.
    fn head_too_large(&self, path: &str) -> Response<Body> {
        let message = format!(
            "the request line and headers are larger than {} bytes",
            server::MAX_HEAD_BYTES
        );
        let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        if path == self.soap_path {
            let reply = SoapReply::fault(SoapVersion::V11, FaultCode::Client, &message);
            with_status(soap_response(reply), status)
        } else {
            json_error(status, &message)
        }
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
            &operator.key,
            &operator.name,
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
    ) -> Result<(&OperatorConfig, ScreenQuery), (StatusCode, String)> {
        let query = ScreenQuery::parse(query).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
        let Some(token) = query.token() else {
            return Err((
                StatusCode::UNAUTHORIZED,
                "missing token: connect with ?token=<this screen's token>".into(),
            ));
        };
        match self.operator_for_token(token) {
            Some(operator) => Ok((operator, query)),
            None => {
                // Debug only: a screen with an outdated token retries for ever;
                // refusals are counted in cti_http_responses_total.
                tracing::debug!("operator screen refused: unknown token");
                Err((StatusCode::UNAUTHORIZED, "unknown token".into()))
            }
        }
    }

    /// The operator whose token this is, if any. Every configured token is
    /// compared in constant time, so the time taken does not tell which one
    /// (if any) matched; an empty token never matches; the first entry wins.
    fn operator_for_token(&self, token: &str) -> Option<&OperatorConfig> {
        let mut found = None;
        for operator in &self.operators {
            let configured = operator.token.expose().as_bytes();
            let equal = constant_time_eq(token.as_bytes(), configured) & !configured.is_empty();
            if equal && found.is_none() {
                found = Some(operator);
            }
        }
        found
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

/// The size of a request's head as sent: request line and header lines.
fn head_len<B>(req: &Request<B>) -> usize {
    let line = req.method().as_str().len()
        + req.uri().path_and_query().map_or(1, |p| p.as_str().len())
        + " HTTP/1.1\r\n ".len();
    req.headers().iter().fold(line, |n, (name, value)| {
        n + name.as_str().len() + value.len() + ": \r\n".len()
    })
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

/// Unix second of the last "bad Bearer token" warning of the push API.
static LAST_API_AUTH_WARNING: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// True at most once a minute per `last` (across threads).
fn once_a_minute(last: &std::sync::atomic::AtomicU64) -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let seen = last.load(Relaxed);
    now >= seen + AUTH_WARNING_EVERY_S && last.compare_exchange(seen, now, Relaxed, Relaxed).is_ok()
}

/// `application/json`, with no charset or a UTF-8 one (JSON is UTF-8).
fn is_json_utf8(content_type: &str) -> bool {
    let mut parts = content_type.split(';');
    if !parts
        .next()
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
    {
        return false;
    }
    parts.all(|param| match param.split_once('=') {
        Some((name, value)) if name.trim().eq_ignore_ascii_case("charset") => {
            let value = value.trim().trim_matches('"');
            value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("utf8")
        }
        _ => true,
    })
}

/// A 405 in JSON with `Allow`.
fn method_not_allowed(method: &Method, allow: &'static str, hint: &str) -> Response<Body> {
    let mut response = push_refused(
        StatusCode::METHOD_NOT_ALLOWED,
        serde_json::json!({ "error": format!("method {method} is not allowed here: {hint}") }),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// A refused push API request: logged (what and why, never the body or a
/// credential) and answered in JSON.
fn push_refused(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let reason = body.get("error").and_then(|e| e.as_str()).unwrap_or("");
    tracing::warn!(status = status.as_u16(), reason, "push API request refused");
    json(status, &body)
}

/// 422 for a record that does not fit the model: which one, which field.
fn record_refused(e: &push::RecordError) -> Response<Body> {
    push_refused(
        StatusCode::UNPROCESSABLE_ENTITY,
        serde_json::json!({
            "error": format!("{e}; nothing was changed"),
            "record": e.index,
            "id": e.id,
            "field": e.field,
        }),
    )
}

/// A push the gateway accepted but could not (fully) carry out.
fn push_failed(e: PushError) -> Response<Body> {
    match e {
        PushError::Invalid(e) => record_refused(&e),
        PushError::NotSaved(_) | PushError::Starting => {
            let mut response = json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            response
        }
        PushError::NotApplied(_) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
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
