//! `POST /api/v1/exchange/payments` (Bearer `api.token`): payments pushed
//! by 1C (or anything standing in for it) when `[payments] source =
//! "push"`. A JSON array of at most 1,000 payments, at most 1 MiB, all or
//! nothing: 200 `{"accepted":n,"duplicates":m}` once committed to the sync
//! store (a version already held is a duplicate: nothing emitted again);
//! 400 for broken JSON (line, column), 422 naming the payment's index and
//! the field, 413, 415, 401; 503 when the sync store cannot commit
//! (nothing acknowledged: send again). The body's rules are
//! `sync::onec::payments::push`'s; the use case `Payments::commit_pushed`.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header;
use hyper::{Method, Request, Response, StatusCode};

use super::api::{
    body_refused, method_not_allowed, no_query, push_refused, require_json, require_token,
};
use super::body;
use super::client::Client;
use super::respond::{json, with_header, Body};
use super::rfc3339;
use crate::config::{Config, PaymentsSource, Secret};
use crate::sync::onec::payments::push::{self, PushBodyError};
use crate::sync::onec::payments::Payments;

pub const PAYMENTS: &str = "/api/v1/exchange/payments";

/// The largest body accepted.
pub const MAX_PAYMENTS_BODY: usize = 1024 * 1024;

/// Bodies up to this size are read on the request's task; larger ones on
/// the blocking pool (SayName answers must not wait behind a parse).
const INLINE_PARSE_BYTES: usize = 64 * 1024;

/// What the endpoint has to work with.
enum State {
    /// No `[payments]`: 404.
    Off,
    /// `[payments] source = "odata"`: 409, payments come from 1C.
    FromOdata,
    /// `source = "push"` without a sync store (it did not open): 503.
    NoStore,
    Ready(Arc<Payments>),
}

pub struct PaymentsEndpoint {
    token: Option<Secret>,
    body_read_timeout: Duration,
    state: State,
}

impl PaymentsEndpoint {
    pub fn new(config: &Config) -> PaymentsEndpoint {
        let state = match config.payments.as_ref().map(|p| p.source) {
            None => State::Off,
            Some(PaymentsSource::Odata) => State::FromOdata,
            Some(PaymentsSource::Push) => State::NoStore,
        };
        PaymentsEndpoint {
            token: config.api.token.clone(),
            body_read_timeout: config.server.body_read_timeout,
            state,
        }
    }

    /// Takes pushes into `payments` (when `[payments] source = "push"`).
    pub fn serve(&mut self, payments: Arc<Payments>) {
        if matches!(self.state, State::NoStore) {
            self.state = State::Ready(payments);
        }
    }

    pub async fn receive(&self, req: Request<Incoming>, client: Client) -> Response<Body> {
        if req.method() != Method::POST {
            return method_not_allowed(
                req.method(),
                "POST",
                "POST a JSON array of payments here",
                client.request,
            );
        }
        if let Err(refused) = require_token(self.token.as_ref(), &req, client) {
            return refused;
        }
        let payments = match &self.state {
            State::Ready(payments) => Arc::clone(payments),
            State::Off => {
                return push_refused(
                    StatusCode::NOT_FOUND,
                    serde_json::json!({ "error": "payments are off: no [payments] in the gateway's config" }),
                    client.request,
                )
            }
            State::FromOdata => {
                return push_refused(
                    StatusCode::CONFLICT,
                    serde_json::json!({ "error": "payments are read from 1C's OData interface here ([payments] source = \"odata\"); pushes are not taken (set source = \"push\" to take them)" }),
                    client.request,
                )
            }
            State::NoStore => return unavailable("the sync store did not open at start-up"),
        };
        if let Err(refused) = no_query(&req, client.request) {
            return refused;
        }
        if let Err(refused) = require_json(&req, client.request) {
            return refused;
        }
        let body = match body::read(req, MAX_PAYMENTS_BODY, self.body_read_timeout).await {
            Ok(body) => body,
            Err(e) => return body_refused(e, client.request),
        };
        let inline = body.len() <= INLINE_PARSE_BYTES;
        let parse = move || push::parse(&body, date_ok);
        let parsed = if inline {
            parse()
        } else {
            match tokio::task::spawn_blocking(parse).await {
                Ok(parsed) => parsed,
                Err(_) => {
                    return json(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        &serde_json::json!({ "error": "the body could not be read; nothing was committed" }),
                    )
                }
            }
        };
        let items = match parsed {
            Ok(items) => items,
            Err(e) => return refused(e, client),
        };
        match payments.commit_pushed(&items).await {
            Ok(done) => json(
                StatusCode::OK,
                &serde_json::json!({ "accepted": done.accepted, "duplicates": done.duplicates }),
            ),
            Err(e) => {
                tracing::error!(error = %e, request_id = %client.request, "pushed payments not committed");
                unavailable(&e.to_string())
            }
        }
    }
}

/// `date`: RFC 3339 with its offset (the journal's reader).
fn date_ok(text: &str) -> Result<(), String> {
    rfc3339::parse(text).map(|_| ()).map_err(|e| e.to_string())
}

fn refused(e: PushBodyError, client: Client) -> Response<Body> {
    let message = format!("{e}; nothing was committed");
    match e {
        PushBodyError::Malformed { line, column, .. } => push_refused(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": message, "line": line, "column": column }),
            client.request,
        ),
        PushBodyError::TooMany { limit } => push_refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            serde_json::json!({ "error": message, "limit": limit }),
            client.request,
        ),
        PushBodyError::Item { index, field, .. } => push_refused(
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({ "error": message, "index": index, "field": field }),
            client.request,
        ),
    }
}

/// 503 with `Retry-After`: nothing was committed.
fn unavailable(why: &str) -> Response<Body> {
    with_header(
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({ "error": format!("payments cannot be committed now ({why}); nothing was acknowledged: send them again") }),
        ),
        header::RETRY_AFTER,
        "5",
    )
}
