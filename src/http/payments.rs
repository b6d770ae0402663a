//! `POST /api/v1/exchange/payments` (Bearer `api.token`): payments pushed
//! by 1C (or anything standing in for it) when `[payments] source =
//! "push"`. A JSON array of at most 1,000 payments, or its XML form
//! (`Content-Type: application/xml` or `text/xml`: `<payments><payment>…`),
//! at most 1 MiB, all or nothing: 200 `{"accepted":n,"duplicates":m}`
//! (to XML `<pushed accepted="n" duplicates="m"/>`) once committed to the
//! sync store (a version already held is a duplicate: nothing emitted
//! again); 400 for broken JSON or XML (line, column), 422 naming the
//! payment's index and the field, 413, 415, 401; 503 when the sync store
//! cannot commit (nothing acknowledged: send again). Refusals are JSON in
//! either form, as the pull exchange's. The body's rules are
//! `sync::onec::payments::push`'s (and `push_xml`'s); the use case
//! `Payments::commit_pushed`.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header;
use hyper::{Method, Request, Response, StatusCode};

use super::api::{
    body_refused, is_json_utf8, is_xml, method_not_allowed, no_query, push_refused, require_token,
};
use super::body;
use super::client::Client;
use super::respond::{bytes, json, with_header, Body};
use super::rfc3339;
use crate::config::{Config, PaymentsSource, Secret};
use crate::sync::onec::payments::push::{self, PushBodyError};
use crate::sync::onec::payments::push_xml;
use crate::sync::onec::payments::Payments;

pub const PAYMENTS: &str = "/api/v1/exchange/payments";

/// The largest body accepted.
pub const MAX_PAYMENTS_BODY: usize = 1024 * 1024;

/// The XML form's answer.
const XML_UTF8: &str = "application/xml; charset=utf-8";

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
                "POST a JSON array of payments (or its XML form, <payments>) here",
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
        let xml = match body_form(&req, client) {
            Ok(xml) => xml,
            Err(refused) => return refused,
        };
        let body = match body::read(req, MAX_PAYMENTS_BODY, self.body_read_timeout).await {
            Ok(body) => body,
            Err(e) => return body_refused(e, client.request),
        };
        let inline = body.len() <= INLINE_PARSE_BYTES;
        let parse = move || {
            if xml {
                push_xml::parse(&body, date_ok)
            } else {
                push::parse(&body, date_ok)
            }
        };
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
            Ok(done) if xml => bytes(
                format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<pushed accepted=\"{}\" duplicates=\"{}\"/>\n",
                    done.accepted, done.duplicates
                ),
                XML_UTF8,
            ),
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

/// Whether the body is XML (`application/xml`, `text/xml`) rather than
/// JSON (`application/json`, UTF-8); 415 for anything else.
#[allow(clippy::result_large_err)] // the Err is the answer itself
fn body_form(req: &Request<Incoming>, client: Client) -> Result<bool, Response<Body>> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    if is_xml(&content_type) {
        return Ok(true);
    }
    if is_json_utf8(&content_type) {
        return Ok(false);
    }
    Err(push_refused(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        serde_json::json!({ "error": format!(
            "Content-Type '{}' is neither JSON nor XML: send application/json (UTF-8) or application/xml; nothing was committed",
            content_type.chars().take(100).collect::<String>().escape_debug()
        ) }),
        client.request,
    ))
}

/// `date`: RFC 3339 with its offset (the journal's reader).
fn date_ok(text: &str) -> Result<(), String> {
    rfc3339::parse(text).map(|_| ()).map_err(|e| e.to_string())
}

fn refused(e: PushBodyError, client: Client) -> Response<Body> {
    let message = format!("{e}; nothing was committed");
    match e {
        PushBodyError::Malformed { line, column, .. }
        | PushBodyError::MalformedXml { line, column, .. } => push_refused(
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
