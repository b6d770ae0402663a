//! The exchange endpoints 1C calls, Bearer `api.token` (issue 19, item 3),
//! served only under `[sync.onec] transport = "pull"`:
//!
//! - `POST /api/v1/exchange/onec/counterparties/lease?after=N&limit=L&format=json`:
//!   pending rows of the `onec` outbox, oldest first, leased to the caller
//!   (`{"lease":…,"items":[…],"next_after":N}`); a POST, since it changes
//!   state (a GET may be retried or prefetched by a proxy);
//! - `POST /api/v1/exchange/onec/ack`: `{"results":[{"id":N,"status":
//!   "created|exists|updated|failed","onec_ref":…,"code":…,"message":…}]}`,
//!   all or nothing: 400 malformed JSON (line, column), 422 naming the
//!   result's index and field, 413 over 1 MiB or 1,000 results, 415 not
//!   JSON, 503 when the sync store cannot commit (nothing acknowledged).
//!
//! The use case is `sync::onec::pull`; the rules of leases are the store's.

use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::Value;

use super::api::{is_json_utf8, is_xml, require_token};
use super::body::{self, BodyError};
use super::client::{Client, RequestId};
use super::query::ApiQuery;
use super::respond::{bytes, json, json_error, with_header, Body};
use crate::config::{Config, Secret};
use crate::logging::Escaped;
use crate::store::AckOutcome;
use crate::sync::onec::pull::{is_guid, AckItem, AckStatus, Lease, Pull, DEFAULT_LIMIT, MAX_LIMIT};
use crate::sync::onec::pull_xml::{lease_xml, read_ack, AckXmlError};

pub const LEASE: &str = "/api/v1/exchange/onec/counterparties/lease";
pub const ACK: &str = "/api/v1/exchange/onec/ack";

/// The largest ack body read.
pub const MAX_ACK_BODY: usize = 1024 * 1024;
/// The most results one ack carries.
pub const MAX_ACK_RESULTS: usize = 1_000;
/// The longest `code` and `message` kept of a result (longer: cut).
const MAX_TEXT: usize = 4 * 1024;
/// Acks larger than this are parsed on the blocking pool.
const INLINE_PARSE_BYTES: usize = 64 * 1024;

const LEASE_PARAMETERS: &[&str] = &["after", "limit", "format"];

/// The XML form's answers.
const XML_UTF8: &str = "application/xml; charset=utf-8";

/// The exchange endpoints, built once at start-up.
pub struct Exchange {
    token: Option<Secret>,
    body_read_timeout: Duration,
    /// The pull exchange, when `[sync.onec] transport = "pull"` and the
    /// sync store is open.
    pull: Option<Pull>,
    /// Whether `[sync.onec] transport = "pull"` is configured (a 503 then
    /// means the sync store is not open; without it, 409).
    pull_configured: bool,
}

impl Exchange {
    pub fn new(config: &Config) -> Exchange {
        Exchange {
            token: config.api.token.clone(),
            body_read_timeout: config.server.body_read_timeout,
            pull: None,
            pull_configured: config
                .sync
                .system(crate::config::ONEC_SYSTEM)
                .is_some_and(|t| t.pulled()),
        }
    }

    /// Serves the endpoints from `pull`.
    pub fn serve(&mut self, pull: Pull) {
        self.pull = Some(pull);
    }

    /// The token, then the exchange: 409 when 1C does not pull here, 503
    /// when the sync store is not open.
    #[allow(clippy::result_large_err)] // the Err is the answer itself
    fn checked(&self, req: &Request<Incoming>, client: Client) -> Result<&Pull, Response<Body>> {
        require_token(self.token.as_ref(), req, client)?;
        match (&self.pull, self.pull_configured) {
            (Some(pull), _) => Ok(pull),
            (None, true) => Err(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the sync store is not open on this gateway: nothing can be leased or acknowledged",
            )),
            (None, false) => Err(json_error(
                StatusCode::CONFLICT,
                "1C does not pull from this gateway: set [sync.onec] transport = \"pull\" to serve this exchange",
            )),
        }
    }

    /// `POST …/counterparties/lease?after=N&limit=L&format=json`.
    pub async fn lease(&self, req: &Request<Incoming>, client: Client) -> Response<Body> {
        if req.method() != Method::POST {
            return post_only(req.method(), "POST here leases the counterparties to create in 1C (it changes state: never a GET)");
        }
        let pull = match self.checked(req, client) {
            Ok(pull) => pull,
            Err(refused) => return refused,
        };
        let (after, limit, xml) = match lease_query(req.uri().query()) {
            Ok(query) => query,
            Err(message) => return refused(StatusCode::BAD_REQUEST, &message, client.request),
        };
        match pull.lease(after, limit).await {
            Ok(lease) if xml => bytes(lease_xml(&lease), XML_UTF8),
            Ok(lease) => json(StatusCode::OK, &lease_json(&lease)),
            Err(e) => {
                tracing::error!(error = %e, request_id = %client.request, "1C pull: a lease could not be written");
                json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the sync store could not lease rows now: nothing was handed out; poll again later",
                )
            }
        }
    }

    /// `POST /api/v1/exchange/onec/ack`.
    pub async fn ack(&self, req: Request<Incoming>, client: Client) -> Response<Body> {
        if req.method() != Method::POST {
            return post_only(
                req.method(),
                "POST 1C's results of a lease here as {\"results\":[…]}",
            );
        }
        let pull = match self.checked(&req, client) {
            Ok(pull) => pull,
            Err(refused) => return refused,
        };
        if let Err(message) = ApiQuery::parse(req.uri().query(), &[]) {
            return refused(StatusCode::BAD_REQUEST, &message, client.request);
        }
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        let xml = is_xml(&content_type);
        if !xml && !is_json_utf8(&content_type) {
            let message = format!(
                "Content-Type '{}' is neither JSON nor XML: send application/json (UTF-8) or application/xml; nothing was acknowledged",
                content_type.chars().take(100).collect::<String>().escape_debug()
            );
            return refused(StatusCode::UNSUPPORTED_MEDIA_TYPE, &message, client.request);
        }
        let body = match body::read(req, MAX_ACK_BODY, self.body_read_timeout).await {
            Ok(body) => body,
            Err(e) => return body_refused(e, client.request),
        };
        let results = match parse(body, xml).await {
            Ok(results) => results,
            Err(e) => return e.answer(client.request),
        };
        match pull.ack(results.clone()).await {
            Ok(outcomes) => {
                let mut counts = [0u64; 3];
                let shown: Vec<Value> = results
                    .iter()
                    .zip(&outcomes)
                    .map(|(r, o)| {
                        let slot = match o {
                            AckOutcome::Done => 0,
                            AckOutcome::Dead => 1,
                            AckOutcome::Ignored => 2,
                        };
                        counts[slot] += 1;
                        serde_json::json!({ "id": r.id, "result": o.as_str() })
                    })
                    .collect();
                if xml {
                    return bytes(acked_xml(&shown, counts), XML_UTF8);
                }
                json(
                    StatusCode::OK,
                    &serde_json::json!({
                        "results": shown,
                        "done": counts[0],
                        "dead": counts[1],
                        "ignored": counts[2],
                    }),
                )
            }
            Err(e) => {
                tracing::error!(error = %e, request_id = %client.request, "1C pull: an ack could not be committed");
                json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the sync store could not commit the ack: nothing was acknowledged; send the same ack again",
                )
            }
        }
    }
}

/// The lease as 1C reads it.
fn lease_json(lease: &Lease) -> Value {
    let items: Vec<Value> = lease
        .items
        .iter()
        .map(|item| {
            serde_json::json!({
                "id": item.id,
                "op": item.op,
                "key": item.key,
                "onec_ref": item.onec_ref,
                "counterparty": item.counterparty,
            })
        })
        .collect();
    serde_json::json!({
        "lease": lease.lease,
        "items": items,
        "next_after": lease.next_after,
    })
}

/// `after` (a whole number, 0 or more), `limit` (1 to 500, default 100)
/// and whether `format` is `xml` (else `json`, the default).
fn lease_query(query: Option<&str>) -> Result<(Option<i64>, u32, bool), String> {
    let query = ApiQuery::parse(query, LEASE_PARAMETERS)?;
    let (mut after, mut limit, mut xml) = (None, DEFAULT_LIMIT, false);
    for (name, value) in query.pairs() {
        match name {
            "after" => {
                after = Some(value.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                    format!(
                        "after is {value:?}, not a number: give the previous lease's next_after (a whole number, 0 or more), or leave it out to start from the oldest row"
                    )
                })?);
            }
            "limit" => {
                limit = value
                    .parse::<u32>()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| {
                        format!(
                            "limit is {value:?}: give 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT})"
                        )
                    })?;
            }
            "format" => {
                xml = match value {
                    "json" => false,
                    "xml" => true,
                    _ => return Err(format!("format is {value:?}: give json or xml")),
                };
            }
            _ => {}
        }
    }
    Ok((after, limit, xml))
}

/// An XML ack's answer: `<acked done= dead= ignored=><result id= result=/>…</acked>`.
fn acked_xml(shown: &[Value], counts: [u64; 3]) -> String {
    let mut out = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<acked done=\"{}\" dead=\"{}\" ignored=\"{}\">",
        counts[0], counts[1], counts[2]
    );
    for r in shown {
        // Ids are numbers and results fixed words: nothing to escape.
        out.push_str(&format!(
            "<result id=\"{}\" result=\"{}\"/>",
            r["id"],
            r["result"].as_str().unwrap_or_default()
        ));
    }
    out.push_str("</acked>\n");
    out
}

/// Why an ack body was refused.
#[derive(Debug)]
enum AckError {
    Malformed {
        message: String,
        line: usize,
        /// `None` for XML (its reader counts lines only).
        column: Option<usize>,
    },
    TooMany {
        count: usize,
    },
    Invalid {
        index: Option<usize>,
        field: String,
        message: String,
    },
    Internal,
}

impl AckError {
    fn answer(self, request: RequestId) -> Response<Body> {
        let (status, body) = match self {
            AckError::Malformed {
                message,
                line,
                column,
            } => (
                StatusCode::BAD_REQUEST,
                serde_json::json!({
                    "error": format!("the body is not JSON: {message}; nothing was acknowledged"),
                    "line": line,
                    "column": column,
                }),
            ),
            AckError::TooMany { count } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                serde_json::json!({
                    "error": format!("{count} results: an ack carries at most {MAX_ACK_RESULTS}; send them in several acks; nothing was acknowledged"),
                    "limit": MAX_ACK_RESULTS,
                }),
            ),
            AckError::Invalid {
                index,
                field,
                message,
            } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                serde_json::json!({
                    "error": format!("{message}; nothing was acknowledged"),
                    "index": index,
                    "field": field,
                }),
            ),
            AckError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({ "error": "the body could not be read; nothing was acknowledged" }),
            ),
        };
        let reason = body.get("error").and_then(Value::as_str).unwrap_or("");
        tracing::debug!(status = status.as_u16(), reason = %Escaped(reason), request_id = %request, "1C ack refused");
        json(status, &body)
    }
}

/// Reads an ack body (JSON, or XML when `xml`): on the request's task when
/// small, else on the blocking pool.
async fn parse(body: Bytes, xml: bool) -> Result<Vec<AckItem>, AckError> {
    let read = move |body: &[u8]| {
        if xml {
            parse_ack_xml(body)
        } else {
            parse_ack(body)
        }
    };
    if body.len() <= INLINE_PARSE_BYTES {
        return read(&body);
    }
    tokio::task::spawn_blocking(move || read(&body))
        .await
        .unwrap_or(Err(AckError::Internal))
}

/// `<ack><result id= status= onec_ref= code=>message</result>…</ack>`,
/// checked as the JSON form is (the same fields, the same 422s).
fn parse_ack_xml(body: &[u8]) -> Result<Vec<AckItem>, AckError> {
    let raw = read_ack(body, MAX_ACK_RESULTS).map_err(|e| match e {
        AckXmlError::TooMany(_) => AckError::TooMany {
            count: MAX_ACK_RESULTS + 1,
        },
        AckXmlError::Malformed(..) => AckError::Malformed {
            message: e.to_string(),
            line: usize::try_from(e.line()).unwrap_or(usize::MAX),
            column: None,
        },
        other => AckError::Invalid {
            index: None,
            field: "ack".to_owned(),
            message: other.to_string(),
        },
    })?;
    let text = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String);
    let results: Vec<Value> = raw
        .iter()
        .map(|r| {
            // A number where the JSON form has one: an id that is not one
            // stays a string, refused as the JSON form refuses it.
            let id = match r.id.as_deref().map(str::parse::<i64>) {
                Some(Ok(n)) => Value::from(n),
                _ => text(&r.id),
            };
            serde_json::json!({
                "id": id,
                "status": text(&r.status),
                "onec_ref": text(&r.onec_ref),
                "code": text(&r.code),
                "message": text(&r.message),
            })
        })
        .collect();
    check_ack(&serde_json::json!({ "results": results }))
}

/// `{"results":[…]}`, every result checked before any is written.
fn parse_ack(body: &[u8]) -> Result<Vec<AckItem>, AckError> {
    // 1C's `УстановитьТелоИзСтроки` may write a UTF-8 byte order mark.
    let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
    let value: Value = serde_json::from_slice(body).map_err(|e| AckError::Malformed {
        message: e.to_string(),
        line: e.line(),
        column: Some(e.column()),
    })?;
    check_ack(&value)
}

/// Every result of `{"results":[…]}` checked, before any is written.
fn check_ack(value: &Value) -> Result<Vec<AckItem>, AckError> {
    let invalid = |index: Option<usize>, field: &str, message: String| AckError::Invalid {
        index,
        field: field.to_owned(),
        message,
    };
    let results = value
        .as_object()
        .and_then(|o| o.get("results"))
        .and_then(Value::as_array)
        .ok_or_else(|| {
            invalid(
                None,
                "results",
                "the body is not {\"results\":[…]}: an object with an array of results".to_owned(),
            )
        })?;
    if results.len() > MAX_ACK_RESULTS {
        return Err(AckError::TooMany {
            count: results.len(),
        });
    }
    let mut items = Vec::with_capacity(results.len());
    for (i, result) in results.iter().enumerate() {
        let at = Some(i);
        let Some(result) = result.as_object() else {
            return Err(invalid(
                at,
                "results",
                format!("results[{i}] is not an object"),
            ));
        };
        let id = result
            .get("id")
            .and_then(Value::as_i64)
            .filter(|id| *id >= 1)
            .ok_or_else(|| {
                invalid(
                    at,
                    "id",
                    format!("results[{i}].id is not a row id (a whole number from 1, as the lease gave it)"),
                )
            })?;
        let status = result
            .get("status")
            .and_then(Value::as_str)
            .and_then(AckStatus::parse)
            .ok_or_else(|| {
                invalid(
                    at,
                    "status",
                    format!(
                        "results[{i}].status is not one of {}",
                        AckStatus::NAMES.join(", ")
                    ),
                )
            })?;
        let text = |field: &str| -> Result<Option<String>, AckError> {
            match result.get(field) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(cut(s.trim(), MAX_TEXT))),
                Some(_) => Err(invalid(
                    at,
                    field,
                    format!("results[{i}].{field} is not a string"),
                )),
            }
        };
        let onec_ref = text("onec_ref")?.filter(|r| !r.is_empty());
        let code = text("code")?;
        let message = text("message")?;
        let onec_ref = match (status, onec_ref) {
            (AckStatus::Failed, r) => r,
            (_, Some(r)) if is_guid(&r) => Some(r.to_ascii_lowercase()),
            (_, r) => {
                return Err(invalid(
                    at,
                    "onec_ref",
                    format!(
                        "results[{i}].onec_ref is {}: a {} result names 1C's Ref_Key, a GUID such as 0d8f6e5c-1b2a-11ef-9c3d-00155d012345",
                        r.map_or("missing".to_owned(), |r| format!("{:?}", cut(&r, 60))),
                        status.as_str()
                    ),
                ))
            }
        };
        items.push(AckItem {
            id,
            status,
            onec_ref,
            code,
            message,
        });
    }
    Ok(items)
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// 405 with `Allow: POST`.
fn post_only(method: &Method, hint: &str) -> Response<Body> {
    let message = format!("method {method} is not allowed here: {hint}");
    with_header(
        json_error(StatusCode::METHOD_NOT_ALLOWED, &message),
        header::ALLOW,
        "POST",
    )
}

fn refused(status: StatusCode, message: &str, request: RequestId) -> Response<Body> {
    tracing::debug!(status = status.as_u16(), reason = %Escaped(message), request_id = %request, "1C exchange request refused");
    json_error(status, message)
}

fn body_refused(e: BodyError, request: RequestId) -> Response<Body> {
    let message = match e {
        BodyError::TooLarge { .. } => {
            format!("{e}: send the results in several acks; nothing was acknowledged")
        }
        _ => format!("{e}; nothing was acknowledged"),
    };
    refused(e.status(), &message, request)
}

#[cfg(test)]
mod tests {
    use super::*;

    const REF: &str = "0d8f6e5c-1b2a-11ef-9c3d-00155d012345";

    #[test]
    fn a_lease_query_names_what_is_wrong() {
        assert_eq!(lease_query(None), Ok((None, DEFAULT_LIMIT, false)));
        assert_eq!(
            lease_query(Some("after=7&limit=500&format=json")),
            Ok((Some(7), 500, false))
        );
        assert_eq!(
            lease_query(Some("format=xml")),
            Ok((None, DEFAULT_LIMIT, true))
        );
        for (query, named) in [
            ("after=x", "after"),
            ("after=-1", "after"),
            ("limit=501", "limit"),
            ("limit=0", "limit"),
            ("format=csv", "format"),
            ("since=1", "since"),
        ] {
            let err = lease_query(Some(query)).expect_err(query);
            assert!(err.contains(named), "{query}: {err}");
        }
    }

    #[test]
    fn an_ack_is_read_whole_or_refused_naming_index_and_field() {
        let body = format!(
            r#"{{"results":[{{"id":1,"status":"created","onec_ref":"{}"}},{{"id":2,"status":"failed","code":"E","message":"нет ИНН"}}]}}"#,
            REF.to_uppercase()
        );
        let items = parse_ack(body.as_bytes()).expect("valid ack");
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].onec_ref.as_deref(), Some(REF));
        assert_eq!(items[1].status, AckStatus::Failed);
        assert_eq!(items[1].message.as_deref(), Some("нет ИНН"));

        match parse_ack(b"{\"results\":[\n{\"id\":1,}]}") {
            Err(AckError::Malformed { line, .. }) => assert_eq!(line, 2),
            other => panic!("{other:?}"),
        }
        for (body, index, field) in [
            (r#"{"results":[{"id":0,"status":"created"}]}"#, 0, "id"),
            (r#"{"results":[{"id":1,"status":"made"}]}"#, 0, "status"),
            (
                r#"{"results":[{"id":1,"status":"failed"},{"id":2,"status":"exists"}]}"#,
                1,
                "onec_ref",
            ),
            (
                r#"{"results":[{"id":1,"status":"updated","onec_ref":"1"}]}"#,
                0,
                "onec_ref",
            ),
            (
                r#"{"results":[{"id":1,"status":"failed","message":5}]}"#,
                0,
                "message",
            ),
        ] {
            match parse_ack(body.as_bytes()) {
                Err(AckError::Invalid {
                    index: Some(i),
                    field: f,
                    ..
                }) => assert_eq!((i, f.as_str()), (index, field), "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        let many = format!(
            "{{\"results\":[{}]}}",
            vec![r#"{"id":1,"status":"failed"}"#; MAX_ACK_RESULTS + 1].join(",")
        );
        assert!(matches!(
            parse_ack(many.as_bytes()),
            Err(AckError::TooMany { .. })
        ));
    }
}
