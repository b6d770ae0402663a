//! Operator screens: the page (`GET /operator`) and its script and styles
//! (`GET /operator/app.<hash>.js`, `.css`), the WebSocket
//! (`GET /operator/ws`), the long-poll (`GET /operator/events`) and who the
//! token belongs to (`GET /operator/me`, the page's token check).
//!
//! Both transports authenticate the same way, here, before anything else is
//! read: the screen's token, from `Authorization: Bearer <token>` (what
//! 1C's WebSocket client sends in `ПараметрыWebSocketКлиентСоединения.Заголовки`)
//! or from `?token=` (what a browser can send), is looked up in the
//! screen-token table ([`ScreenTokens`]); the hub gets the key of the
//! operator that the token resolved to. Refusals are JSON.

use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::auth::{self, ScreenOperator, ScreenTokens};
use super::client::RequestId;
use super::respond::{bytes, json_error, with_header, Body};
use crate::config::Config;
use crate::popup::page::OperatorPage;
use crate::popup::{self, Hub, ScreenQuery, TransportConfig};
use crate::store::Store;

/// Where the screens' endpoints live; `soap.path` may not be under it.
pub const PREFIX: &str = "/operator";
pub const PAGE: &str = "/operator";
pub const PAGE_SLASH: &str = "/operator/";
pub const WEBSOCKET: &str = "/operator/ws";
pub const EVENTS: &str = "/operator/events";
pub const ME: &str = "/operator/me";

/// The screens' endpoints, built once at start-up.
pub struct Screens {
    hub: Arc<Hub>,
    tokens: ScreenTokens,
    transport: TransportConfig,
    /// `server.max_connections` slots, shared with the accept loop: hyper's
    /// connection ends at the upgrade, so a WebSocket screen takes a slot of
    /// its own for its lifetime.
    connection_slots: Arc<Semaphore>,
    /// `cti_http_connections`: a screen's WebSocket is counted in it while
    /// it lives, as it was while it was an HTTP connection.
    connections: prometheus::IntGauge,
    /// The call journal, whose rows count long-poll deliveries.
    store: Store,
    /// The page and its files, compiled in.
    page: OperatorPage,
}

impl Screens {
    pub fn new(
        config: &Config,
        hub: Arc<Hub>,
        store: Store,
        connection_slots: Arc<Semaphore>,
        connections: prometheus::IntGauge,
    ) -> Screens {
        Screens {
            hub,
            store,
            tokens: ScreenTokens::new(&config.operators),
            transport: TransportConfig::from(&config.popup),
            connection_slots,
            connections,
            page: OperatorPage::new(),
        }
    }

    /// Whether `path` is one of the page's files (its script, its styles).
    pub fn is_page_file(&self, path: &str) -> bool {
        self.page.file(path).is_some()
    }

    /// `GET /operator`: the page, compiled in, with its security headers.
    pub fn page(&self) -> Response<Body> {
        let mut response = Response::new(Body::new(self.page.html()));
        for (name, value) in popup::page::PAGE_HEADERS {
            response
                .headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        response
    }

    /// `GET /operator/app.<hash>.js` or `.css`: one of the page's files
    /// (a 404 for another path, which the route table does not send here).
    pub fn page_file(&self, path: &str) -> Response<Body> {
        let Some(file) = self.page.file(path) else {
            return json_error(StatusCode::NOT_FOUND, "no such endpoint");
        };
        let mut response = Response::new(Body::new(Bytes::from_static(file.body.as_bytes())));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(file.content_type),
        );
        for (name, value) in popup::page::FILE_HEADERS {
            headers.insert(name, HeaderValue::from_static(value));
        }
        response
    }

    /// `GET /operator/ws[?token=T][&after=N]`: the token (header or query)
    /// is checked before anything else (401, and no handshake), then
    /// `after`, then the handshake. Every line of the screen's connection
    /// names `request`, the handshake's id.
    pub fn websocket(&self, mut req: Request<Incoming>, request: RequestId) -> Response<Body> {
        let (operator, query) = match self.screen(&req, request) {
            Ok(found) => found,
            Err((status, message)) => return refused(status, &message),
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
        let Ok(permit) = Arc::clone(&self.connection_slots).try_acquire_owned() else {
            // Debug here: the front warns of the 503, once a minute per address.
            tracing::debug!(key = %operator.key, request_id = %request, "operator screen refused: server.max_connections are open");
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many connections (server.max_connections); try again later",
            );
        };
        let slot = ScreenSlot::new(permit, self.connections.clone());
        let ping = self.transport.ping_interval;
        let (key, name) = (&operator.key, &operator.name);
        match handshake.accept(&self.hub, key, name, after, ping, slot, request) {
            Ok(response) => response.map(Body::from),
            Err(e) => {
                tracing::error!(error = %e, key = %operator.key, request_id = %request, "operator screen not subscribed");
                json_error(StatusCode::INTERNAL_SERVER_ERROR, "cannot subscribe")
            }
        }
    }

    /// `GET /operator/events[?token=T][&after=N][&wait=S]`: the long-poll.
    pub async fn events(&self, req: Request<Incoming>, request: RequestId) -> Response<Body> {
        let (operator, query) = match self.screen(&req, request) {
            Ok(found) => found,
            Err((status, message)) => return refused(status, &message),
        };
        let (after, wait) = match (query.after(), query.wait_secs()) {
            (Ok(after), Ok(wait)) => (after, wait),
            (Err(e), _) | (_, Err(e)) => return json_error(StatusCode::BAD_REQUEST, &e),
        };
        let wait = popup::long_poll::wait_for(wait, self.transport.long_poll_max_wait);
        match popup::long_poll::poll(&self.hub, &operator.key, after, wait).await {
            Ok(polled) => {
                tracing::debug!(key = %operator.key, after, messages = polled.seqs.len(), request_id = %request, "operator screen's long-poll answered");
                self.journal_delivery(&operator.key, polled.seqs, request);
                let answer = bytes(polled.body, "application/json");
                with_header(answer, header::CACHE_CONTROL, "no-store")
            }
            Err(e) => {
                tracing::error!(error = %e, key = %operator.key, request_id = %request, "long-poll failed");
                json_error(StatusCode::INTERNAL_SERVER_ERROR, "cannot read messages")
            }
        }
    }

    /// `GET /operator/me[?token=T]`: `{"name":…,"key":…}` of the operator
    /// the token belongs to, or the screens' 401. The page asks it before
    /// opening its WebSocket (a refused handshake only shows as a closed
    /// socket) and shows the name. An endpoint of its own rather than a
    /// first message on the transports: 1C screens and other clients read
    /// every message as a call, and a long-poll with `after=0` would count
    /// the buffered calls as delivered to a page that only checked a token.
    pub fn me(&self, req: &Request<Incoming>, request: RequestId) -> Response<Body> {
        let (operator, _) = match self.screen(req, request) {
            Ok(found) => found,
            Err((status, message)) => return refused(status, &message),
        };
        let body = serde_json::json!({ "name": operator.name, "key": operator.key });
        let answer = bytes(body.to_string(), "application/json");
        with_header(answer, header::CACHE_CONTROL, "no-store")
    }

    /// Counts a long-poll answer's messages as delivered in their journal
    /// rows, in the background: the screen's answer does not wait for the
    /// store. (A WebSocket screen is counted when the call is published.)
    fn journal_delivery(&self, key: &str, seqs: Vec<u64>, request: RequestId) {
        if seqs.is_empty() {
            return;
        }
        let store = self.store.clone();
        let key = key.to_owned();
        tokio::spawn(async move {
            if let Err(e) = store.add_delivered(&key, seqs).await {
                tracing::warn!(error = %e, key, request_id = %request, "long-poll delivery not counted in the call journal");
            }
        });
    }

    /// The operator whose screen this is, from `Authorization: Bearer` or
    /// `?token=`; a 400 for a query that cannot be read or a token given
    /// both ways, a 401 for a missing or unknown token. Either way the token
    /// goes through the same constant-time lookup.
    fn screen(
        &self,
        req: &Request<Incoming>,
        request: RequestId,
    ) -> Result<(ScreenOperator, ScreenQuery), (StatusCode, String)> {
        if self.tokens.is_empty() {
            // No token can be right: say that screens are off and how to
            // turn them on, not how to send a token.
            return Err((
                StatusCode::UNAUTHORIZED,
                "operator screens are off: no [[operator]] is configured on the gateway, so no screen token is accepted; to turn them on, add an [[operator]] (key, token, name) to the gateway's config file and restart it".into(),
            ));
        }
        let query =
            ScreenQuery::parse(req.uri().query()).map_err(|e| (StatusCode::BAD_REQUEST, e))?;
        let header = auth::authorization(req.headers()).map_err(|e| (e.status(), e.to_string()))?;
        // Another scheme (a browser's cached Basic credentials) is not a
        // screen token: it is ignored, and `?token=` may still give one.
        let token = match (auth::bearer_token(header), query.token()) {
            (Some(_), Some(_)) => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "the token is given twice: send it either as `Authorization: Bearer <token>` or as ?token=, not both".into(),
                ))
            }
            (Some(token), None) | (None, Some(token)) => token,
            (None, None) => {
                return Err((
                    StatusCode::UNAUTHORIZED,
                    "missing token: send `Authorization: Bearer <this screen's token>` or connect with ?token=<this screen's token>".into(),
                ))
            }
        };
        match self.tokens.operator_for_token(token) {
            Some(operator) => Ok((operator, query)),
            None => {
                // Debug only: a screen with an outdated token retries for ever;
                // refusals are counted in cti_http_responses_total.
                tracing::debug!(request_id = %request, "operator screen refused: unknown token");
                Err((StatusCode::UNAUTHORIZED, "unknown token".into()))
            }
        }
    }
}

/// What a WebSocket screen holds while it lives: its `server.max_connections`
/// slot, and its place in `cti_http_connections` (hyper's connection, which
/// counted it, ended at the upgrade).
struct ScreenSlot {
    _permit: OwnedSemaphorePermit,
    connections: prometheus::IntGauge,
}

impl ScreenSlot {
    fn new(permit: OwnedSemaphorePermit, connections: prometheus::IntGauge) -> ScreenSlot {
        connections.inc();
        ScreenSlot {
            _permit: permit,
            connections,
        }
    }
}

impl Drop for ScreenSlot {
    fn drop(&mut self) {
        self.connections.dec();
    }
}

/// A screen's refusal in JSON; a 401 says which scheme the token takes.
fn refused(status: StatusCode, message: &str) -> Response<Body> {
    let response = json_error(status, message);
    if status == StatusCode::UNAUTHORIZED {
        return with_header(response, header::WWW_AUTHENTICATE, "Bearer");
    }
    response
}
