//! The HTTP front: method + path → endpoint. The only module that knows
//! routes and credentials.
//!
//! Every answer is in the caller's protocol: the PBX gets SOAP (faults
//! included, even for 401/405/413/415), Prometheus gets its text format,
//! orchestrators and the API's clients get JSON.
//!
//! One file per endpoint group, each with its paths: `soap.rs` (the PBX's
//! endpoint and the WSDL), `screens.rs` (operator page, WebSocket,
//! long-poll), `api.rs` (push API, call journal), `admin.rs` (accepting
//! the directory file past its guard), `ops.rs` (`/metrics`,
//! `/healthz`, `/readyz`). This file holds only the route table; `front.rs`
//! builds the groups, `server.rs` accepts connections, `auth.rs` checks every
//! credential, `body.rs` reads bodies, `query.rs` reads the API's query
//! strings (`rfc3339.rs` their times), `respond.rs` builds answers. A new
//! endpoint group is a new file and its lines in the table.

mod admin;
mod api;
mod auth;
mod body;
mod front;
mod ops;
mod query;
mod respond;
mod rfc3339;
mod screens;
pub mod server;
mod soap;

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};

use crate::config::{Config, ConfigError};

pub use admin::ACCEPT_FILE;
pub use api::MAX_PUSH_BODY;
pub use front::Front;
pub use respond::Body;
pub use soap::MAX_SOAP_BODY;

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
    RESERVED_PREFIXES.iter().any(|reserved| {
        path.strip_prefix(reserved)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
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

impl Front {
    /// hyper's entry point: never fails, every error is an answer.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        let (endpoint, response) = if server::head_len(&req) > server::MAX_HEAD_BYTES {
            ("head_too_large", self.head_too_large(req.uri().path()))
        } else {
            self.dispatch(req).await
        };
        if endpoint == "soap" && response.status() == StatusCode::OK {
            self.soap_ok_responses.inc();
        } else {
            let status = response.status();
            let labels = [endpoint, status.as_str()];
            self.metrics.http_responses.with_label_values(&labels).inc();
        }
        Ok(response)
    }

    /// The route table: the endpoint that answers, with its label in
    /// `cti_http_responses_total`. The API's paths take every method (and
    /// answer 405 in JSON); the others only `GET`.
    async fn dispatch(&self, req: Request<Incoming>) -> (&'static str, Response<Body>) {
        let path = req.uri().path();
        if path == self.soap.path() {
            return ("soap", self.soap.handle(req).await);
        }
        match (req.method(), path) {
            (_, api::COUNTERPARTIES) => ("api_counterparties", self.api.upsert(req).await),
            (_, p) if p.starts_with(api::COUNTERPARTY_PREFIX) => {
                ("api_counterparty", self.api.delete(req).await)
            }
            (&Method::GET, api::CALLS) => ("api_calls", self.api.calls(&req).await),
            (_, admin::ACCEPT_FILE) => ("api_accept_file", self.admin.accept_file(req).await),
            (&Method::GET, ops::METRICS) => ("metrics", self.ops.metrics()),
            (&Method::GET, ops::HEALTHZ) => ("healthz", self.ops.healthz()),
            (&Method::GET, ops::READYZ) => ("readyz", self.ops.readyz()),
            (&Method::GET, screens::PAGE | screens::PAGE_SLASH) => {
                ("operator_page", self.screens.page())
            }
            (&Method::GET, screens::WEBSOCKET) => ("operator_ws", self.screens.websocket(req)),
            (&Method::GET, screens::EVENTS) => ("operator_events", self.screens.events(req).await),
            _ => (
                "other",
                respond::json_error(StatusCode::NOT_FOUND, "no such endpoint"),
            ),
        }
    }

    /// 431 for a request head over the limit, in the protocol of the path.
    fn head_too_large(&self, path: &str) -> Response<Body> {
        let message = format!(
            "the request line and headers are larger than {} bytes",
            server::MAX_HEAD_BYTES
        );
        let status = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
        if path == self.soap.path() {
            soap::fault(crate::soap::SoapVersion::V11, status, &message)
        } else {
            respond::json_error(status, &message)
        }
    }
}
