//! The HTTP front: method + path → endpoint. The only module that knows
//! routes and credentials.
//!
//! Every answer is in the caller's protocol: the PBX gets SOAP (faults
//! included, even for 401/405/413/415), Prometheus gets its text format,
//! orchestrators and the API's clients get JSON.
//!
//! One file per endpoint group, each with its paths: `soap.rs` (the PBX's
//! endpoint and the WSDL), `screens.rs` (operator page, WebSocket,
//! long-poll), `api.rs` (push API, call journal), `payments.rs` (pushed payments), `admin.rs` (accepting
//! the directory file past its guard, backups), `sync.rs` (the sync admin
//! API over the sync store), `exchange.rs` (what 1C polls under
//! `[sync.onec] transport = "pull"`), `ops.rs` (`/metrics`,
//! `/healthz`, `/readyz`). This file holds only the route table; `front.rs`
//! builds the groups, `head.rs` reads each request's head in one pass (its
//! size, credentials, `Content-Type`, body length and coding), `server.rs`
//! accepts connections (`limits.rs` says
//! who may open one), `client.rs` tells who a request comes from (behind
//! trusted proxies too), `host.rs` which `Host` the WSDL may name,
//! `allow.rs` holds the address allow-lists of the groups, `origin.rs` the
//! web origins that may open operator screens, `throttle.rs` blocks addresses
//! that fail credential checks too often, `auth.rs` checks every
//! credential, `body.rs` reads bodies, `query.rs` reads the API's query
//! strings (`rfc3339.rs` their times), `respond.rs` builds answers. A new
//! endpoint group is a new file and its lines in the table.

mod admin;
mod allow;
mod api;
mod auth;
mod body;
mod client;
mod exchange;
mod front;
mod head;
mod host;
mod limits;
mod ops;
mod origin;
mod payments;
mod query;
mod respond;
mod rfc3339;
mod screens;
pub mod server;
mod soap;
mod sync;
mod sync_jobs;
mod throttle;
pub mod tls;
mod webhook;

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tokio::time::Instant;

use crate::config::{Config, ConfigError};
use allow::Group;
use auth::RefusalLog;
use client::Client;
use head::RequestHead;

pub use admin::{ACCEPT_FILE, BACKUP};
pub use api::MAX_PUSH_BODY;
pub use exchange::{
    ACK as EXCHANGE_ONEC_ACK, LEASE as EXCHANGE_ONEC_LEASE, MAX_ACK_BODY, MAX_ACK_RESULTS,
};
pub use front::Front;
pub use ops::{SyncSystemView, SyncSystemsView, READYZ};
pub use payments::{MAX_PAYMENTS_BODY, PAYMENTS as EXCHANGE_PAYMENTS};
pub use respond::Body;
pub use soap::MAX_SOAP_BODY;
pub use sync::{
    CONFLICTS as SYNC_CONFLICTS, IDMAP_CSV as SYNC_IDMAP_CSV, OUTBOX as SYNC_OUTBOX,
    OUTBOX_ROW as SYNC_OUTBOX_ROW, STATUS as SYNC_STATUS,
};
pub use webhook::{MAX_WEBHOOK_BODY, PREFIX as SYNC_SYSTEM};

/// The paths the gateway's own endpoints live at or under; `soap.path` may
/// be none of them nor lie under one (see [`check_soap_path`]).
pub const RESERVED_PREFIXES: &[&str] = &[
    ops::METRICS,
    ops::HEALTHZ,
    ops::READYZ,
    screens::PREFIX,
    api::PREFIX,
];

/// Whether `path` is one of [`RESERVED_PREFIXES`] or lies under one.
pub fn reserved_path(path: &str) -> bool {
    RESERVED_PREFIXES
        .iter()
        .any(|reserved| under(path, reserved))
}

/// Refuses a `soap.path` that would hide one of the gateway's own endpoints.
pub fn check_soap_path(config: &Config) -> Result<(), ConfigError> {
    if reserved_path(&config.soap.path) {
        return Err(config.invalid(
            "soap.path",
            "collides with one of the gateway's own endpoints",
        ));
    }
    Ok(())
}

/// Requests refused for their address, logged at most once a minute.
static ADDRESS_REFUSALS: RefusalLog = RefusalLog::new("request");
/// Screens refused for their page's origin, logged at most once a minute.
static ORIGIN_REFUSALS: RefusalLog = RefusalLog::new("operator screen");
/// Every other refusal (400, 405, 413, 415, 429, 431, 5xx, SOAP faults),
/// logged by the front once its answer is made.
static STATUS_REFUSALS: RefusalLog = RefusalLog::new("request");

/// `X-Request-Id`: the request's id, as its log lines name it.
static X_REQUEST_ID: hyper::header::HeaderName =
    hyper::header::HeaderName::from_static("x-request-id");

/// Every endpoint, as the route table finds it; its label is the
/// `endpoint` of `cti_http_responses_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Soap,
    ApiCounterparties,
    ApiCounterparty,
    ApiCalls,
    ApiAcceptFile,
    ApiBackup,
    ApiPayments,
    SyncStatus,
    SyncOutbox,
    SyncRetry,
    SyncConflicts,
    SyncIdmap,
    SyncResume,
    SyncWebhook,
    SyncJob,
    ExchangeLease,
    ExchangeAck,
    Metrics,
    Healthz,
    Readyz,
    OperatorPage,
    OperatorFile,
    OperatorWs,
    OperatorEvents,
    OperatorMe,
    Other,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::Soap => "soap",
            Route::ApiCounterparties => "api_counterparties",
            Route::ApiCounterparty => "api_counterparty",
            Route::ApiCalls => "api_calls",
            Route::ApiAcceptFile => "api_accept_file",
            Route::ApiBackup => "api_backup",
            Route::ApiPayments => "api_payments",
            Route::SyncStatus => "sync_status",
            Route::SyncOutbox => "sync_outbox",
            Route::SyncRetry => "sync_retry",
            Route::SyncConflicts => "sync_conflicts",
            Route::SyncIdmap => "sync_idmap",
            Route::SyncResume => "sync_resume",
            Route::SyncWebhook => "sync_webhook",
            Route::SyncJob => "sync_job",
            Route::ExchangeLease => "exchange_lease",
            Route::ExchangeAck => "exchange_ack",
            Route::Metrics => "metrics",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::OperatorPage => "operator_page",
            Route::OperatorFile => "operator_file",
            Route::OperatorWs => "operator_ws",
            Route::OperatorEvents => "operator_events",
            Route::OperatorMe => "operator_me",
            Route::Other => "other",
        }
    }

    /// The endpoints that check credentials: where failed checks are
    /// counted and a throttled address gets 429.
    fn authenticated(self) -> bool {
        match self {
            Route::Soap
            | Route::ApiCounterparties
            | Route::ApiCounterparty
            | Route::ApiCalls
            | Route::ApiAcceptFile
            | Route::ApiBackup
            | Route::ApiPayments
            | Route::SyncStatus
            | Route::SyncOutbox
            | Route::SyncRetry
            | Route::SyncConflicts
            | Route::SyncIdmap
            | Route::SyncResume
            | Route::SyncWebhook
            | Route::SyncJob
            | Route::ExchangeLease
            | Route::ExchangeAck
            | Route::OperatorWs
            | Route::OperatorEvents
            | Route::OperatorMe => true,
            Route::Metrics
            | Route::Healthz
            | Route::Readyz
            | Route::OperatorPage
            | Route::OperatorFile
            | Route::Other => false,
        }
    }

    /// The methods of an endpoint that takes only reads, for the route
    /// table to check (405 with this as `Allow`); `None` for the endpoints
    /// that check their methods themselves, in their own protocol. `HEAD`
    /// is a `GET` whose body hyper leaves out (with its `Content-Length`):
    /// load balancers check health with it. The screens' transports and the
    /// journal take no `HEAD`: it would subscribe, poll or query for nothing.
    fn read_methods(self) -> Option<&'static str> {
        match self {
            Route::Metrics
            | Route::Healthz
            | Route::Readyz
            | Route::OperatorPage
            | Route::OperatorFile => Some(GET_AND_HEAD),
            Route::ApiCalls
            | Route::SyncStatus
            | Route::SyncOutbox
            | Route::SyncConflicts
            | Route::SyncIdmap
            | Route::OperatorWs
            | Route::OperatorEvents
            | Route::OperatorMe => Some(GET_ONLY),
            Route::Soap
            | Route::ApiCounterparties
            | Route::ApiCounterparty
            | Route::ApiAcceptFile
            | Route::ApiBackup
            | Route::ApiPayments
            | Route::SyncRetry
            | Route::SyncResume
            | Route::SyncWebhook
            | Route::SyncJob
            | Route::ExchangeLease
            | Route::ExchangeAck
            | Route::Other => None,
        }
    }

    /// Whether `method` is one `read_methods` names.
    fn takes(self, method: &Method) -> bool {
        match self.read_methods() {
            None => true,
            Some(_) if method == Method::GET => true,
            Some(allow) => method == Method::HEAD && allow == GET_AND_HEAD,
        }
    }

    /// The endpoints a web page may open from another origin: checked
    /// against `popup.allowed_origins`.
    fn checks_origin(self) -> bool {
        matches!(
            self,
            Route::OperatorWs | Route::OperatorEvents | Route::OperatorMe
        )
    }
}

/// The `Allow` of the read-only endpoints ([`Route::read_methods`]).
const GET_AND_HEAD: &str = "GET, HEAD";
const GET_ONLY: &str = "GET";

/// 405 in JSON for a method a read-only endpoint does not take, with `Allow`.
fn method_not_allowed(route: Route, method: &Method) -> Response<Body> {
    let allow = route.read_methods().unwrap_or(GET_ONLY);
    let message = format!("method {method} is not allowed here: use {allow}");
    let mut response = respond::json_error(StatusCode::METHOD_NOT_ALLOWED, &message);
    response.headers_mut().insert(
        hyper::header::ALLOW,
        hyper::header::HeaderValue::from_static(allow),
    );
    response
}

/// Warns of a refused request that its endpoint has not warned of already
/// (401 and 403 are, with their reasons, by their [`RefusalLog`]s, but for
/// the screens' 401s); a 404
/// is not a refusal, only logged at debug level.
fn log_refusal(
    endpoint: &'static str,
    status: StatusCode,
    addr: IpAddr,
    request: client::RequestId,
) {
    let screen = endpoint == Route::OperatorWs.label() || endpoint == Route::OperatorEvents.label();
    match status {
        // The screens' own 401s (a token that is missing or no operator's)
        // are not logged where they are answered.
        StatusCode::UNAUTHORIZED if screen => {
            STATUS_REFUSALS.refused_status(endpoint, status.as_u16(), addr, request);
        }
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {}
        StatusCode::NOT_FOUND => {
            tracing::debug!(endpoint, client = %addr, request_id = %request, "not found");
        }
        s if s.is_client_error() || s.is_server_error() => {
            STATUS_REFUSALS.refused_status(endpoint, s.as_u16(), addr, request);
        }
        _ => {}
    }
}

/// `path` is `prefix` or lies under it.
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// A request after [`Front::dispatch`]: what is left to wait for.
enum Routed {
    /// Answered from the head alone: refusals, the WSDL.
    Answered(&'static str, Response<Body>),
    /// The PBX's request, its head checked: read the body and answer.
    Soap(crate::http::soap::SoapCall),
    /// Another endpoint's work.
    Later(Later),
}

/// Another endpoint's work, boxed: those futures are large (the push API's
/// is a kilobyte and a half) and rarely made.
struct Later {
    check: CredentialCheck,
    work: Pin<Box<dyn Future<Output = Response<Body>> + Send>>,
}

/// What a failed credential check needs to count toward the throttle.
struct CredentialCheck {
    route: Route,
    /// The route has credentials and the client may be throttled.
    throttled: bool,
    soap_version: Option<crate::soap::SoapVersion>,
    client: Client,
}

impl Front {
    /// hyper's entry point: never fails, every error is an answer. `peer`
    /// is the address the connection comes from, `local` the gateway's
    /// address it reached, `over_tls` whether it speaks TLS to this listener.
    ///
    /// Everything decided from the head (route, allow-list, throttle,
    /// credentials of the PBX) is done here, before the future is made: the
    /// future hyper stores and moves on every request then holds only what
    /// is left to wait for. For the PBX's requests that is reading the body
    /// and answering, unboxed; every other endpoint's work is boxed.
    ///
    /// `answered` is called once the answer is made (the connection's
    /// keep-alive wait starts then): inside this future rather than in one
    /// wrapped around it, which would move this one twice more per request.
    pub fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: IpAddr,
        local: SocketAddr,
        over_tls: bool,
        request: client::RequestId,
        answered: impl FnOnce() + Send + 'static,
    ) -> impl Future<Output = Result<Response<Body>, Infallible>> + Send + 'static {
        let mut client = self.clients.resolve(peer, req.headers());
        client.https |= over_tls;
        client.local = Some(local);
        client.request = request;
        // All the answer's future keeps of the client: its log needs no more.
        let addr = client.addr;
        let routed = self.dispatch(req, client);
        async move {
            let (endpoint, response) = match routed {
                Routed::Answered(endpoint, response) => (endpoint, response),
                Routed::Soap(call) => (Route::Soap.label(), self.soap.answer(call).await),
                Routed::Later(later) => {
                    let response = later.work.await;
                    let response = self.after_credentials(&later.check, response);
                    (later.check.route.label(), response)
                }
            };
            answered();
            let mut response = response;
            if endpoint == "soap" && response.status() == StatusCode::OK {
                // The PBX's answered request: no log line to find, so no id
                // sent (formatting and inserting it cost 3% of SayName's
                // requests/s on two cores, bench/ab.sh).
                self.metrics.soap_ok_response();
                return Ok(response);
            }
            let status = response.status();
            let labels = [endpoint, status.as_str()];
            self.metrics.http_responses.with_label_values(&labels).inc();
            log_refusal(endpoint, status, addr, request);
            // One small allocation (the header's bytes) and one insert.
            response
                .headers_mut()
                .insert(X_REQUEST_ID.clone(), client::request_id_header(request));
            Ok(response)
        }
    }

    /// The route table: the endpoint that answers, by path alone. Which
    /// methods each takes is [`Route::read_methods`]'s (the others check
    /// their own and answer 405 in their protocol).
    fn route(&self, path: &str) -> Route {
        if path == self.soap.path() {
            return Route::Soap;
        }
        match path {
            api::COUNTERPARTIES => Route::ApiCounterparties,
            p if p.starts_with(api::COUNTERPARTY_PREFIX) => Route::ApiCounterparty,
            api::CALLS => Route::ApiCalls,
            admin::ACCEPT_FILE => Route::ApiAcceptFile,
            admin::BACKUP => Route::ApiBackup,
            payments::PAYMENTS => Route::ApiPayments,
            sync::STATUS => Route::SyncStatus,
            sync::OUTBOX => Route::SyncOutbox,
            p if sync::is_outbox_row(p) => Route::SyncRetry,
            sync::CONFLICTS => Route::SyncConflicts,
            sync::IDMAP_CSV => Route::SyncIdmap,
            p if sync::resume_system(p).is_some() => Route::SyncResume,
            p if webhook::is_webhook(p) => Route::SyncWebhook,
            p if sync_jobs::is_job(p) => Route::SyncJob,
            exchange::LEASE => Route::ExchangeLease,
            exchange::ACK => Route::ExchangeAck,
            ops::METRICS => Route::Metrics,
            ops::HEALTHZ => Route::Healthz,
            ops::READYZ => Route::Readyz,
            screens::PAGE | screens::PAGE_SLASH => Route::OperatorPage,
            screens::WEBSOCKET => Route::OperatorWs,
            screens::EVENTS => Route::OperatorEvents,
            screens::ME => Route::OperatorMe,
            p if self.screens.is_page_file(p) => Route::OperatorFile,
            _ => Route::Other,
        }
    }

    /// The group whose allow-list covers `path`: by path alone, so a
    /// stranger gets the same 403 for an endpoint of the group and for a
    /// path under it that does not exist.
    fn group(&self, path: &str) -> Group {
        if path == self.soap.path() {
            Group::Soap
        } else if webhook::is_webhook(path) {
            // Not api.allow_from (the admin API's): each system's own
            // `sync.<system>.allow_from`, checked by `dispatch`.
            Group::Open
        } else if under(path, api::PREFIX) {
            Group::Api
        } else if under(path, screens::PREFIX) {
            Group::Popup
        } else if under(path, ops::METRICS) {
            Group::Metrics
        } else {
            Group::Open
        }
    }

    /// Checks the client's address against its group's allow-list, the
    /// method, a screen's `Origin` and, on an endpoint with credentials,
    /// the failed-auth throttle; then checks the PBX's request's head, or
    /// starts another endpoint's work.
    fn dispatch(self: &Arc<Self>, req: Request<Incoming>, client: Client) -> Routed {
        let path = req.uri().path();
        let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let head = RequestHead::scan(req.method(), path_and_query, req.headers());
        if head.too_large() {
            return Routed::Answered("head_too_large", self.head_too_large(path));
        }
        let route = self.route(path);
        if let Some(list) = self.allow.of(self.group(path)) {
            if !list.allows(client.addr) {
                let refused = self.address_refused(route, list.key(), &req, client);
                return Routed::Answered(route.label(), refused);
            }
        }
        if route == Route::SyncWebhook {
            if let Some(list) = self.webhooks.allow_list(path) {
                if !list.allows(client.addr) {
                    self.webhooks.refused_address(path);
                    let refused = self.address_refused(route, list.key(), &req, client);
                    return Routed::Answered(route.label(), refused);
                }
            }
        }
        if !route.takes(req.method()) {
            return Routed::Answered(route.label(), method_not_allowed(route, req.method()));
        }
        if route.checks_origin() {
            if let Err(origin) = self.origins.check(req.headers(), client.https) {
                let refused = self.origin_refused(route, &req, client, origin);
                return Routed::Answered(route.label(), refused);
            }
        }
        // The PBX's own addresses are never throttled.
        let throttled = route.authenticated() && !self.allow.soap().names(client.addr);
        if throttled {
            if let Some(left) = self.throttle.blocked_now(client.addr) {
                return Routed::Answered(route.label(), self.throttled(route, &req, left));
            }
        }
        // A 401 that starts a block is answered in SOAP when the request
        // said it speaks it; read before the endpoint takes the request.
        // Read once: the SOAP endpoint's check needs it too.
        let declared = if route == Route::Soap {
            crate::soap::SoapVersion::from_content_type(head.content_type())
        } else {
            None
        };
        let soap_version = if throttled { declared } else { None };
        let check = CredentialCheck {
            route,
            throttled,
            soap_version,
            client,
        };
        if route == Route::Soap {
            return match self.soap.check(&req, &head, client, declared) {
                Ok(checked) => Routed::Soap(checked.call(req.into_body())),
                Err(refused) => {
                    Routed::Answered(route.label(), self.after_credentials(&check, refused))
                }
            };
        }
        let front = Arc::clone(self);
        let work = Box::pin(async move { front.endpoint(route, req, client).await });
        Routed::Later(Later { check, work })
    }

    /// Counts a failed credential check toward the address's throttle: the
    /// failure that starts a block is answered 429 instead of 401.
    fn after_credentials(
        &self,
        check: &CredentialCheck,
        response: Response<Body>,
    ) -> Response<Body> {
        if !check.throttled || response.status() != StatusCode::UNAUTHORIZED {
            return response;
        }
        let Some(block) = self.throttle.failed(check.client.addr, Instant::now()) else {
            return response;
        };
        tracing::warn!(
            client = %check.client.addr,
            request_id = %check.client.request,
            failures = block.failures,
            block_s = block.block.as_secs(),
            "client address blocked: too many failed credential checks within a minute (server.auth_failures_per_minute); its requests to authenticated endpoints get 429 until the block ends"
        );
        self.throttled_as(check.route, check.soap_version, block.block)
    }

    /// The endpoint's answer.
    async fn endpoint(
        &self,
        route: Route,
        req: Request<Incoming>,
        client: Client,
    ) -> Response<Body> {
        match route {
            // Checked and answered by `dispatch` and `handle`.
            Route::Soap => {
                let checked = {
                    let path_and_query = req.uri().path_and_query().map_or("/", |p| p.as_str());
                    let head = RequestHead::scan(req.method(), path_and_query, req.headers());
                    let declared = crate::soap::SoapVersion::from_content_type(head.content_type());
                    self.soap.check(&req, &head, client, declared)
                };
                match checked {
                    Ok(checked) => self.soap.answer(checked.call(req.into_body())).await,
                    Err(refused) => refused,
                }
            }
            Route::ApiCounterparties => self.api.upsert(req, client).await,
            Route::ApiCounterparty => self.api.delete(req, client).await,
            Route::ApiCalls => self.api.calls(&req, client).await,
            Route::ApiAcceptFile => self.admin.accept_file(req, client).await,
            Route::ApiBackup => self.admin.backup(req, client).await,
            Route::ApiPayments => self.payments.receive(req, client).await,
            Route::SyncStatus => self.sync.status(&req, client).await,
            Route::SyncOutbox => self.sync.outbox(&req, client).await,
            Route::SyncRetry => self.sync.retry(&req, client).await,
            Route::SyncConflicts => self.sync.conflicts(&req, client).await,
            Route::SyncIdmap => self.sync.idmap_csv(&req, client).await,
            Route::SyncResume => self.sync.resume(&req, client).await,
            Route::SyncWebhook => self.webhooks.receive(req, client).await,
            Route::SyncJob => self.jobs.start(&req, client).await,
            Route::ExchangeLease => self.exchange.lease(&req, client).await,
            Route::ExchangeAck => self.exchange.ack(req, client).await,
            Route::Metrics => self.ops.metrics(),
            Route::Healthz => self.ops.healthz(),
            Route::Readyz => {
                // Everyone may probe readiness; the errors' texts are for
                // those who may read /metrics.
                self.ops.readyz(self.allow.metrics().allows(client.addr))
            }
            Route::OperatorPage => self.screens.page(),
            Route::OperatorFile => self.screens.page_file(req.uri().path()),
            Route::OperatorWs => self.screens.websocket(req, client.request),
            Route::OperatorEvents => self.screens.events(req, client.request).await,
            Route::OperatorMe => self.screens.me(&req, client.request),
            Route::Other => respond::json_error(StatusCode::NOT_FOUND, "no such endpoint"),
        }
    }

    /// 429 with `Retry-After` for a blocked address, in the path's
    /// protocol, counted.
    fn throttled(&self, route: Route, req: &Request<Incoming>, left: Duration) -> Response<Body> {
        self.throttled_as(route, soap::declared_version(req), left)
    }

    fn throttled_as(
        &self,
        route: Route,
        soap_version: Option<crate::soap::SoapVersion>,
        left: Duration,
    ) -> Response<Body> {
        self.metrics
            .http_refused
            .with_label_values(&[route.label(), "auth_throttled"])
            .inc();
        // Whole seconds, rounded up: never an invitation to come back early.
        let seconds = left.as_secs() + u64::from(left.subsec_nanos() > 0);
        let message = format!(
            "too many failed credential checks from this address: try again in {seconds} s"
        );
        let status = StatusCode::TOO_MANY_REQUESTS;
        let mut response = if route == Route::Soap {
            let version = soap_version.unwrap_or(crate::soap::SoapVersion::V11);
            soap::fault(version, status, &message)
        } else {
            respond::json_error(status, &message)
        };
        response.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from(seconds),
        );
        response
    }

    /// 403 for a client address outside the group's allow-list, in the
    /// path's protocol, counted and logged (at most once a minute at warn).
    fn address_refused(
        &self,
        route: Route,
        key: &str,
        req: &Request<Incoming>,
        client: Client,
    ) -> Response<Body> {
        self.metrics
            .http_refused
            .with_label_values(&[route.label(), "address"])
            .inc();
        // A webhook's last segment may be its secret: never logged.
        let path = webhook::loggable(req.uri().path());
        ADDRESS_REFUSALS.refused_address(&path, client, key);
        let message = format!(
            "requests to this endpoint from {} are not allowed",
            client.addr
        );
        let status = StatusCode::FORBIDDEN;
        if route == Route::Soap {
            let version = soap::declared_version(req).unwrap_or(crate::soap::SoapVersion::V11);
            soap::fault(version, status, &message)
        } else {
            respond::json_error(status, &message)
        }
    }

    /// 403 for a screen opened by a page of an origin not in
    /// `popup.allowed_origins`, in JSON, counted and logged (at most once a
    /// minute at warn).
    fn origin_refused(
        &self,
        route: Route,
        req: &Request<Incoming>,
        client: Client,
        origin: origin::ForeignOrigin,
    ) -> Response<Body> {
        self.metrics
            .http_refused
            .with_label_values(&[route.label(), "origin"])
            .inc();
        ORIGIN_REFUSALS.refused_origin(req.uri().path(), client, &origin.0);
        let message = format!(
            "pages of {} may not open operator screens (popup.allowed_origins)",
            origin.0
        );
        respond::json_error(StatusCode::FORBIDDEN, &message)
    }

    /// 431 for a request head over the limit, in the protocol of the path.
    fn head_too_large(&self, path: &str) -> Response<Body> {
        let message = format!(
            "the request line and headers are larger than {} bytes",
            head::MAX_HEAD_BYTES
        );
        let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        if path == self.soap.path() {
            soap::fault(crate::soap::SoapVersion::V11, status, &message)
        } else {
            respond::json_error(status, &message)
        }
    }
}
