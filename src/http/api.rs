//! The JSON API under `/api/v1`, Bearer `api.token`: the push API
//! (`POST /api/v1/counterparties`, `DELETE /api/v1/counterparties/{id}`)
//! and the call journal (`GET /api/v1/calls`).
//!
//! Every answer is JSON, refusals included; a refused push says that
//! nothing was changed. The use cases are `sources::push`'s and the store's.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header;
use hyper::{Method, Request, Response, StatusCode};

use super::auth::{self, AuthFailure, RefusalLog};
use super::body::{self, BodyError};
use super::client::{Client, RequestId};
use super::query::ApiQuery;
use super::respond::{json, json_error, with_header, Body};
use super::rfc3339;
use crate::config::{Config, Secret, ENV_API_TOKEN};
use crate::directory::model::MAX_ID_LEN;
use crate::logging::Escaped;
use crate::phone;
use crate::sources::push::{self, BatchError, PushError, PushSource};
use crate::store::{CallQuery, Store, StoredCall};

/// Where the API lives; `soap.path` may not be under it.
pub const PREFIX: &str = "/api";
/// `POST` here upserts counterparties; `DELETE` below it removes one.
pub const COUNTERPARTIES: &str = "/api/v1/counterparties";
pub const COUNTERPARTY_PREFIX: &str = "/api/v1/counterparties/";
pub const CALLS: &str = "/api/v1/calls";

/// The largest push API body accepted (10,000 records of about 800 bytes).
pub const MAX_PUSH_BODY: usize = 8 * 1024 * 1024;

/// Push bodies up to this size are parsed on the request's task; larger
/// ones on the blocking pool (8 MiB of JSON is tens of milliseconds of CPU
/// that SayName answers must not wait behind).
const INLINE_PARSE_BYTES: usize = 64 * 1024;

/// Rows a journal page has unless `limit` says otherwise, and at most.
const DEFAULT_CALLS_LIMIT: u32 = 100;
const MAX_CALLS_LIMIT: u32 = 1000;

/// Bad or missing Bearer tokens, logged at most once a minute.
static REFUSALS: RefusalLog = RefusalLog::new("API request");

/// The API's endpoints, built once at start-up.
pub struct Api {
    token: Option<Secret>,
    body_read_timeout: Duration,
    push: Arc<PushSource>,
    store: Store,
}

impl Api {
    pub fn new(config: &Config, push: Arc<PushSource>, store: Store) -> Api {
        Api {
            token: config.api.token.clone(),
            body_read_timeout: config.server.body_read_timeout,
            push,
            store,
        }
    }

    /// `POST /api/v1/counterparties`: a JSON array of counterparties,
    /// upserted into the `push` source, all or none. 200 once committed in
    /// the store and applied to the directory.
    pub async fn upsert(&self, req: Request<Incoming>, client: Client) -> Response<Body> {
        if req.method() != Method::POST {
            return method_not_allowed(
                req.method(),
                "POST",
                "POST a JSON array of counterparties here; DELETE /api/v1/counterparties/{id} removes one",
                client.request,
            );
        }
        if let Err(refused) = self.check_token(&req, client) {
            return refused;
        }
        if let Err(refused) = no_query(&req, client.request) {
            return refused;
        }
        if let Err(refused) = require_json(&req, client.request) {
            return refused;
        }
        let body = match body::read(req, MAX_PUSH_BODY, self.body_read_timeout).await {
            Ok(body) => body,
            Err(e) => return body_refused(e, client.request),
        };
        let records = match parse_batch(body, client.request).await {
            Ok(records) => records,
            Err(refused) => return refused,
        };
        match self.push.upsert(records, client.request).await {
            Ok(report) => {
                let mut answer = serde_json::json!({
                    "upserted": report.upserted,
                    "records": report.records,
                    "counterparties": report.counterparties,
                });
                // Only when there is something to say: the answer of a clean
                // push stays what it was.
                if !report.warnings.is_empty() {
                    answer["warnings"] = serde_json::json!(report.warnings);
                }
                json(StatusCode::OK, &answer)
            }
            Err(e) => push_failed(e, client.request),
        }
    }

    /// `DELETE /api/v1/counterparties/{id}`: removes the id from every
    /// source; 404 when none has it.
    pub async fn delete(&self, req: Request<Incoming>, client: Client) -> Response<Body> {
        if req.method() != Method::DELETE {
            return method_not_allowed(
                req.method(),
                "DELETE",
                "DELETE /api/v1/counterparties/{id} removes a counterparty; POST /api/v1/counterparties upserts",
                client.request,
            );
        }
        if let Err(refused) = self.check_token(&req, client) {
            return refused;
        }
        if let Err(refused) = no_query(&req, client.request) {
            return refused;
        }
        let raw = req
            .uri()
            .path()
            .strip_prefix(COUNTERPARTY_PREFIX)
            .unwrap_or_default();
        let id = match id_from_path(raw, client.request) {
            Ok(id) => id,
            Err(refused) => return refused,
        };
        match self.push.delete(&id, client.request).await {
            Ok(report) if report.removed => json(
                StatusCode::OK,
                &serde_json::json!({
                    "removed": true,
                    "id": id,
                    "counterparties": report.counterparties,
                }),
            ),
            Ok(_) => {
                tracing::info!(id = %Escaped(&id), request_id = %client.request, "push: delete of an id no source has; nothing changed");
                json(
                    StatusCode::NOT_FOUND,
                    &serde_json::json!({
                        "error": format!("no source has a counterparty with id {id:?}; nothing was changed"),
                        "removed": false,
                        "id": id,
                    }),
                )
            }
            Err(e) => push_failed(e, client.request),
        }
    }

    /// `GET /api/v1/calls?key=&number=&since=&before=&limit=`: the call
    /// journal, newest first. `number` is any written form of a caller's
    /// number (normalized as SayName does); `since` an RFC 3339 time with
    /// its offset; `limit` defaults to 100, at most 1000. A full page
    /// carries `next_before`, the id to pass as `before` for the next
    /// (older) page; `null` once the journal is read. An unknown or repeated
    /// parameter is a 400 naming it.
    pub async fn calls(&self, req: &Request<Incoming>, client: Client) -> Response<Body> {
        if let Err(refused) = self.check_token(req, client) {
            return refused;
        }
        let query = match calls_query(req.uri().query()) {
            Ok(query) => query,
            Err(message) => return json_error(StatusCode::BAD_REQUEST, &message),
        };
        let limit = query.limit as usize;
        match self.store.calls_page(query).await {
            Ok(calls) => {
                let next_before = match calls.last() {
                    Some(last) if calls.len() == limit => Some(last.id),
                    _ => None,
                };
                let calls: Vec<serde_json::Value> = calls.iter().map(call_json).collect();
                json(
                    StatusCode::OK,
                    &serde_json::json!({ "calls": calls, "next_before": next_before }),
                )
            }
            Err(e) => {
                tracing::error!(error = %e, request_id = %client.request, "call journal query failed");
                json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("the call journal cannot be read: {e}"),
                )
            }
        }
    }

    #[allow(clippy::result_large_err)] // the Err is the answer itself
    fn check_token(&self, req: &Request<Incoming>, client: Client) -> Result<(), Response<Body>> {
        require_token(self.token.as_ref(), req, client)
    }
}

/// `Authorization: Bearer <api.token>`, compared in constant time; a 401
/// with `WWW-Authenticate: Bearer` otherwise, and always when no
/// `api.token` is configured; a 400 for two `Authorization` headers. Every
/// endpoint under `/api/v1` (the admin one included) checks with this.
#[allow(clippy::result_large_err)] // the Err is the answer itself
pub(super) fn require_token(
    token: Option<&Secret>,
    req: &Request<Incoming>,
    client: Client,
) -> Result<(), Response<Body>> {
    let token = token.map(Secret::expose);
    let Err(failure) =
        auth::authorization(req.headers()).and_then(|header| auth::check_bearer(header, token))
    else {
        return Ok(());
    };
    // Without a token configured no credential can be right: say that the
    // endpoint is off and how to turn it on, not how to send a token.
    let message = match token {
        Some(_) => failure.to_string(),
        None => format!(
            "this endpoint is off: no api.token is configured on the gateway, so no token is accepted; to turn it on, set api.token in the gateway's config file (or {ENV_API_TOKEN} in its environment) and restart it"
        ),
    };
    REFUSALS.refused(req.uri().path(), client, &message);
    let response = json_error(failure.status(), &message);
    Err(match failure {
        AuthFailure::Repeated => response,
        _ => with_header(response, header::WWW_AUTHENTICATE, "Bearer"),
    })
}

/// Reads a push body into records: on the request's task when small, on the
/// blocking pool when large.
#[allow(clippy::result_large_err)] // the Err is the answer itself
async fn parse_batch(
    body: Bytes,
    request: RequestId,
) -> Result<Vec<crate::directory::Counterparty>, Response<Body>> {
    let parsed = if body.len() <= INLINE_PARSE_BYTES {
        push::parse_batch(&body)
    } else {
        match tokio::task::spawn_blocking(move || push::parse_batch(&body)).await {
            Ok(parsed) => parsed,
            Err(e) => {
                tracing::error!(error = %e, request_id = %request, "push body parser task failed");
                return Err(json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the body could not be read; nothing was changed",
                ));
            }
        }
    };
    parsed.map_err(|e| match e {
        BatchError::Malformed { line, column, .. } => push_refused(
            StatusCode::BAD_REQUEST,
            serde_json::json!({
                "error": format!("{e}; nothing was changed"),
                "line": line,
                "column": column,
            }),
            request,
        ),
        BatchError::TooMany { limit } => push_refused(
            StatusCode::PAYLOAD_TOO_LARGE,
            serde_json::json!({ "error": format!("{e}; nothing was changed"), "limit": limit }),
            request,
        ),
        BatchError::Record(e) => record_refused(&e, request),
    })
}

/// The id a `DELETE` names, percent-decoded; a 400 when it cannot be one.
#[allow(clippy::result_large_err)] // the Err is the answer itself
fn id_from_path(raw: &str, request: RequestId) -> Result<String, Response<Body>> {
    let too_long = || {
        push_refused(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": format!("the id is longer than {MAX_ID_LEN} bytes (the longest an id may be)") }),
            request,
        )
    };
    // Each byte of an id is at most three characters percent-encoded.
    if raw.len() > 3 * MAX_ID_LEN {
        return Err(too_long());
    }
    let Some(id) = crate::popup::query::percent_decode(raw) else {
        return Err(push_refused(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": "the id in the path is not valid percent-encoded UTF-8" }),
            request,
        ));
    };
    if id.trim().is_empty() {
        return Err(push_refused(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": "no id: DELETE /api/v1/counterparties/{id}, the id percent-encoded" }),
            request,
        ));
    }
    if id.len() > MAX_ID_LEN {
        return Err(too_long());
    }
    Ok(id)
}

/// The parameters `GET /api/v1/calls` takes.
const CALLS_PARAMETERS: &[&str] = &["key", "number", "since", "before", "limit"];

/// The journal query a query string asks for; the message of a 400 if it
/// cannot be read (an unknown or repeated parameter named).
fn calls_query(query: Option<&str>) -> Result<CallQuery, String> {
    let mut calls = CallQuery {
        limit: DEFAULT_CALLS_LIMIT,
        ..CallQuery::default()
    };
    for (name, value) in ApiQuery::parse(query, CALLS_PARAMETERS)?.pairs() {
        match name {
            "key" if value.is_empty() => {
                return Err("key is empty: give an operator's abonent key, or leave key out for every operator".to_owned())
            }
            "key" => calls.key = Some(value.to_owned()),
            "number" => calls.number = Some(journal_number(value)?),
            "since" => {
                let since = rfc3339::parse(value).map_err(|e| format!("since: {e}"))?;
                calls.since = Some(since);
            }
            "before" => match value.parse::<i64>() {
                Ok(id) if id >= 1 => calls.before = Some(id),
                _ => {
                    return Err(
                        "before must be a call id (a whole number from 1 on), e.g. the next_before of the previous page".to_owned(),
                    )
                }
            },
            "limit" => match value.parse::<u32>() {
                Ok(n) if (1..=MAX_CALLS_LIMIT).contains(&n) => calls.limit = n,
                _ => return Err(format!("limit must be a number from 1 to {MAX_CALLS_LIMIT}")),
            },
            // `ApiQuery` let through only the names above.
            _ => {}
        }
    }
    Ok(calls)
}

/// A caller's number as the journal keeps it, from any written form: read
/// as SayName reads it, then written as the pop-up's `number` (E.164 with
/// `+`; an extension as its digits). A text that is no number the gateway
/// can read is taken as it is (trimmed), as the journal keeps such callers.
fn journal_number(value: &str) -> Result<String, String> {
    let value = value.trim();
    if value.is_empty() {
        return Err(
            "number is empty: give the caller's number in any written form, e.g. +7 912 345-67-89 or 89123456789".to_owned(),
        );
    }
    Ok(match phone::normalize(value) {
        Some(key) => key.display_e164(),
        None => value.to_owned(),
    })
}

/// 400 for any query parameter: the push and admin endpoints take none.
#[allow(clippy::result_large_err)] // the Err is the answer itself
pub(super) fn no_query(req: &Request<Incoming>, request: RequestId) -> Result<(), Response<Body>> {
    match ApiQuery::parse(req.uri().query(), &[]) {
        Ok(_) => Ok(()),
        Err(message) => Err(push_refused(
            StatusCode::BAD_REQUEST,
            serde_json::json!({ "error": format!("{message}; nothing was changed") }),
            request,
        )),
    }
}

/// One journal row as the API shows it.
fn call_json(c: &StoredCall) -> serde_json::Value {
    serde_json::json!({
        "id": c.id,
        "at": humantime::format_rfc3339_millis(c.at).to_string(),
        "raw_number": c.raw_number,
        "number": c.number,
        "key": c.key,
        "counterparty_id": c.counterparty_id,
        "delivered": c.delivered,
        "seq": c.seq,
    })
}

/// 415 in JSON unless the request's body is JSON in UTF-8 (a push of
/// records or of payments).
#[allow(clippy::result_large_err)] // the Err is the answer itself
pub(super) fn require_json(
    req: &Request<Incoming>,
    request: RequestId,
) -> Result<(), Response<Body>> {
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    if is_json_utf8(&content_type) {
        return Ok(());
    }
    Err(push_refused(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        serde_json::json!({ "error": format!(
            "Content-Type '{}' is not JSON: send application/json (UTF-8)",
            content_type.chars().take(100).collect::<String>().escape_debug()
        ) }),
        request,
    ))
}

/// `application/xml` or `text/xml`, whatever the charset (the document's
/// declaration says it; `xml::XmlStream` reads UTF-8 and windows-1251).
pub(super) fn is_xml(content_type: &str) -> bool {
    let media = content_type.split(';').next().unwrap_or("").trim();
    media.eq_ignore_ascii_case("application/xml") || media.eq_ignore_ascii_case("text/xml")
}

/// `application/json`, with no charset or a UTF-8 one (JSON is UTF-8).
pub(super) fn is_json_utf8(content_type: &str) -> bool {
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

/// A body that could not be read, in JSON: 413 with the limit, 400, 408.
pub(super) fn body_refused(e: BodyError, request: RequestId) -> Response<Body> {
    let body = match e {
        BodyError::TooLarge { limit } => serde_json::json!({
            "error": format!("{e}: send fewer records per request; nothing was changed"),
            "limit_bytes": limit,
        }),
        BodyError::Broken => serde_json::json!({ "error": format!("{e}; nothing was changed") }),
        BodyError::TimedOut { .. } => serde_json::json!({
            "error": format!("{e} (server.body_read_timeout); nothing was changed"),
        }),
        BodyError::Encoded => serde_json::json!({ "error": format!("{e}; nothing was changed") }),
    };
    let response = push_refused(e.status(), body, request);
    if e == BodyError::Encoded {
        // RFC 7694: the codings this endpoint takes.
        return with_header(response, header::ACCEPT_ENCODING, "identity");
    }
    response
}

/// A 405 in JSON with `Allow`.
pub(super) fn method_not_allowed(
    method: &Method,
    allow: &'static str,
    hint: &str,
    request: RequestId,
) -> Response<Body> {
    let response = push_refused(
        StatusCode::METHOD_NOT_ALLOWED,
        serde_json::json!({ "error": format!("method {method} is not allowed here: {hint}") }),
        request,
    );
    with_header(response, header::ALLOW, allow)
}

/// A refused push API request: logged (what and why, never the body or a
/// credential) and answered in JSON.
pub(super) fn push_refused(
    status: StatusCode,
    body: serde_json::Value,
    request: RequestId,
) -> Response<Body> {
    let reason = body.get("error").and_then(|e| e.as_str()).unwrap_or("");
    // Debug here: the front warns of every refusal with the client's
    // address and the request id, rate-limited per address.
    tracing::debug!(status = status.as_u16(), reason = %Escaped(reason), request_id = %request, "push API request refused");
    json(status, &body)
}

/// 422 for a record that does not fit the model: which one, which field.
fn record_refused(e: &push::RecordError, request: RequestId) -> Response<Body> {
    push_refused(
        StatusCode::UNPROCESSABLE_ENTITY,
        serde_json::json!({
            "error": format!("{e}; nothing was changed"),
            "record": e.index,
            "id": e.id,
            "field": e.field,
        }),
        request,
    )
}

/// A push the gateway accepted but could not (fully) carry out.
fn push_failed(e: PushError, request: RequestId) -> Response<Body> {
    match e {
        PushError::Invalid(e) => record_refused(&e, request),
        PushError::NotSaved(_) | PushError::Starting => with_header(
            json_error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
            header::RETRY_AFTER,
            "5",
        ),
        PushError::NotApplied(_) => json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_query_reads_its_parameters() {
        let q = calls_query(Some(
            "key=k%20x&before=250&limit=7&number=8%20(912)%20345-67-89",
        ))
        .expect("query");
        assert_eq!(q.key.as_deref(), Some("k x"));
        assert_eq!(q.number.as_deref(), Some("+79123456789"));
        assert_eq!(q.before, Some(250));
        assert_eq!(q.limit, 7);
        assert_eq!(q.since, None);
        assert_eq!(calls_query(None).expect("none").limit, DEFAULT_CALLS_LIMIT);
        let q = calls_query(Some("since=2026-12-04T23:00:00%2B03:00")).expect("since");
        assert_eq!(
            q.since,
            Some(humantime::parse_rfc3339("2026-12-04T20:00:00Z").expect("utc"))
        );
        for bad in [
            "before=0",
            "before=-3",
            "before=x",
            "before=",
            "limit=1001",
            "key=",
            "number=",
            "since=2026-12-04T23:00:00",
            "other=1",
            "key=a&key=b",
        ] {
            assert!(calls_query(Some(bad)).is_err(), "{bad}");
        }
        let e = calls_query(Some("numbr=1")).expect_err("unknown");
        assert!(e.contains("'numbr'") && e.contains("number"), "{e}");
        let e = calls_query(Some("since=2026-12-04T23:00:00")).expect_err("no offset");
        assert!(e.contains("offset"), "{e}");
    }

    #[test]
    fn a_number_is_written_as_the_journal_keeps_it() {
        for same in [
            "+7 912 345-67-89",
            "89123456789",
            "9123456789",
            "+7(912)3456789",
        ] {
            assert_eq!(
                journal_number(same).as_deref(),
                Ok("+79123456789"),
                "{same}"
            );
        }
        assert_eq!(journal_number(" 244 ").as_deref(), Ok("244"));
        assert_eq!(journal_number("anonymous").as_deref(), Ok("anonymous"));
        assert!(journal_number("  ").is_err());
    }

    #[test]
    fn json_with_a_utf8_charset_or_none_is_json() {
        assert!(is_json_utf8("application/json"));
        assert!(is_json_utf8("Application/JSON; charset=\"UTF-8\""));
        assert!(!is_json_utf8("application/json; charset=latin1"));
        assert!(!is_json_utf8("text/plain"));
    }
}
