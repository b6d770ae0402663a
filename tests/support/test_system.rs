//! A [`System`] over the mock CRM (`mock_crm.rs`), speaking its JSON API
//! over HTTP with reqwest as a CRM module would: the system the sync
//! runtime's tests and `bench/sync.sh` register.
//!
//! - `send`: one `POST /api/records/batch` for the rows (upserts carry the
//!   row's body as `fields`; removes are `"remove": true` entries), the
//!   record key as the external id. What comes back:
//!   - 200, a result with `id` and `version` → `Confirmed`; a result with
//!     `error` → `Permanent(error)`;
//!   - 503 `{"error":"QUERY_LIMIT_EXCEEDED"}` or 429 → `Limited` (with
//!     `Retry-After` in seconds when sent);
//!   - 403 (amoCRM's HTML page) → `Blocked`;
//!   - anything else (5xx, a timeout, a refused connection, a body that is
//!     not the API's JSON, another status) → `Retry`.
//! - `find_existing`: `GET /api/records/by-external/{record_key}`.
//! - `authenticate`: the webhook's token header, compared in constant time.
//! - `parse`: the mock's webhook JSON into one [`Inbound`].
//! - `list`: `GET /api/records?after=&limit=`.
//!
//! Self-contained apart from the gateway crate and its dependencies
//! (reqwest, serde_json, hyper): a bench binary includes it with
//! `#[path = "../tests/support/test_system.rs"] mod test_system;`.

use std::time::Duration;

use cti_gateway::store::OutboxOp;
use cti_gateway::sync::inbound::{Change, Inbound, RemoteRecord};
use cti_gateway::sync::system::{
    Outcome, OutgoingRow, Page, PublishedLimit, Remote, RemoteFuture, RowOutcome, System, Webhook,
    WebhookError,
};
use cti_gateway::sync::SystemSpec;
use serde_json::{json, Map, Value};

/// The header the mock's webhooks carry their token in, by default.
pub const WEBHOOK_HEADER: &str = "X-Mock-Token";
/// The mock API's batch size.
pub const BATCH_SIZE: usize = 50;
/// Records per page of a relink's list.
pub const LIST_PAGE: usize = 100;

/// The test system: the mock CRM at `base`.
pub struct TestSystem {
    spec: SystemSpec,
    base: String,
    client: reqwest::Client,
    webhook_header: String,
    webhook_token: String,
    limit: PublishedLimit,
    batch_size: usize,
    /// The write outcomes of its records the runtime handed it
    /// (`System::linked`), and whether the hook then never returns (a
    /// stop in the middle of it).
    linked: LinkedLog,
    hang_linked: bool,
}

/// Where a [`TestSystem`] keeps the outcomes handed to it.
pub type LinkedLog = std::sync::Arc<std::sync::Mutex<Vec<RowOutcome>>>;

impl TestSystem {
    /// The system `spec` over the mock at `base` (`http://127.0.0.1:PORT`):
    /// Bitrix24's published limit (50, 2/s), batches of 50, a 5 s timeout,
    /// webhooks authenticated by `X-Mock-Token: webhook-token`.
    pub fn new(spec: SystemSpec, base: &str) -> TestSystem {
        TestSystem {
            spec,
            base: base.trim_end_matches('/').to_owned(),
            client: client(Duration::from_secs(5)),
            webhook_header: WEBHOOK_HEADER.to_owned(),
            webhook_token: "webhook-token".to_owned(),
            limit: PublishedLimit::Bucket {
                burst: 50,
                per_second: 2.0,
            },
            batch_size: BATCH_SIZE,
            linked: LinkedLog::default(),
            hang_linked: false,
        }
    }

    /// Keeps the write outcomes handed to it in `log`; with `hang`, the
    /// hook records and then never returns.
    pub fn with_linked_log(mut self, log: LinkedLog, hang: bool) -> TestSystem {
        self.linked = log;
        self.hang_linked = hang;
        self
    }

    pub fn with_limit(mut self, limit: PublishedLimit) -> TestSystem {
        self.limit = limit;
        self
    }

    /// At most `size` rows a send (1..=50, the mock's limit).
    pub fn with_batch_size(mut self, size: usize) -> TestSystem {
        self.batch_size = size.clamp(1, BATCH_SIZE);
        self
    }

    /// Each request's whole time limit (a hung mock is a `Retry` after it).
    pub fn with_timeout(mut self, timeout: Duration) -> TestSystem {
        self.client = client(timeout);
        self
    }

    pub fn with_webhook_token(mut self, header: &str, token: &str) -> TestSystem {
        self.webhook_header = header.to_owned();
        self.webhook_token = token.to_owned();
        self
    }

    pub fn webhook_header(&self) -> &str {
        &self.webhook_header
    }

    pub fn webhook_token(&self) -> &str {
        &self.webhook_token
    }

    /// One request; its status, headers and body, or the outcome of a
    /// transport failure.
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<Answer, Outcome> {
        let response = request.send().await.map_err(transport)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let html = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/html"));
        let body = response.bytes().await.map_err(transport)?;
        Ok(Answer {
            status,
            retry_after,
            html,
            body: body.to_vec(),
        })
    }

    /// A 200's JSON, or the outcome the answer means.
    async fn call_json(&self, request: reqwest::RequestBuilder) -> Result<Value, Outcome> {
        self.call(request).await?.json()
    }

    async fn send_rows(&self, rows: &[OutgoingRow]) -> Vec<Outcome> {
        // Rows the mock cannot be sent (a body that is not an object) are
        // refused here; the rest go in one batch.
        let mut outcomes: Vec<Option<Outcome>> = vec![None; rows.len()];
        let mut entries = Vec::new();
        let mut sent = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            let entry = match row.op {
                OutboxOp::Remove => json!({"external_id": row.record_key, "remove": true}),
                OutboxOp::Upsert => match serde_json::from_str::<Value>(&row.body) {
                    Ok(Value::Object(fields)) => {
                        json!({"external_id": row.record_key, "fields": fields})
                    }
                    _ => {
                        outcomes[i] = Some(Outcome::Permanent(
                            "the row's body is not a JSON object".to_owned(),
                        ));
                        continue;
                    }
                },
            };
            entries.push(entry);
            sent.push(i);
        }
        if !entries.is_empty() {
            let request = self
                .client
                .post(format!("{}/api/records/batch", self.base))
                .header("content-type", "application/json")
                .body(json!({ "records": entries }).to_string());
            let results = match self.call_json(request).await {
                Ok(body) => batch_results(&body, sent.len()),
                Err(outcome) => Err(outcome),
            };
            match results {
                Ok(results) => {
                    for (i, outcome) in sent.into_iter().zip(results) {
                        outcomes[i] = Some(outcome);
                    }
                }
                Err(outcome) => {
                    for i in sent {
                        outcomes[i] = Some(outcome.clone());
                    }
                }
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Retry("no outcome".to_owned())))
            .collect()
    }

    async fn find(&self, row: &OutgoingRow) -> Result<Option<Remote>, Outcome> {
        let request = self.client.get(format!(
            "{}/api/records/by-external/{}",
            self.base,
            encode(&row.record_key)
        ));
        let answer = self.call(request).await?;
        if answer.status == 404 {
            return Ok(None);
        }
        let body = answer.json()?;
        let record = body
            .get("record")
            .ok_or_else(|| malformed("no \"record\" in the lookup's answer"))?;
        remote_of(record).map(Some)
    }

    async fn list_page(&self, after: Option<&str>) -> Result<Page, Outcome> {
        let mut url = format!("{}/api/records?limit={LIST_PAGE}", self.base);
        if let Some(after) = after {
            url.push_str(&format!("&after={}", encode(after)));
        }
        let body = self.call_json(self.client.get(url)).await?;
        let records = body
            .get("records")
            .and_then(Value::as_array)
            .ok_or_else(|| malformed("no \"records\" in the list's answer"))?
            .iter()
            .map(|r| self.inbound(r, false))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| malformed(&e.what))?;
        let next = match body.get("next") {
            Some(Value::String(next)) => Some(next.clone()),
            Some(Value::Null) | None => None,
            Some(_) => return Err(malformed("\"next\" is not a string")),
        };
        Ok(Page { records, next })
    }

    /// A record of the mock's API as the runtime takes it.
    fn inbound(&self, record: &Value, removed_event: bool) -> Result<Inbound, WebhookError> {
        let what = |w: &str| WebhookError { what: w.to_owned() };
        let remote_id = record
            .get("id")
            .and_then(Value::as_str)
            .filter(|id| !id.is_empty())
            .ok_or_else(|| what("record.id missing"))?;
        let removed = removed_event || record.get("removed").and_then(Value::as_bool) == Some(true);
        let change = if removed {
            Change::Deleted
        } else {
            let fields = record
                .get("fields")
                .and_then(Value::as_object)
                .ok_or_else(|| what("record.fields missing"))?;
            Change::Upsert(Box::new(remote_record(fields)))
        };
        Ok(Inbound {
            system: self.spec.name().to_owned(),
            kind: self.spec.record_kind().to_owned(),
            remote_id: remote_id.to_owned(),
            change,
        })
    }
}

impl System for TestSystem {
    fn spec(&self) -> &SystemSpec {
        &self.spec
    }

    fn linked<'a>(&'a self, outcome: &'a RowOutcome) -> RemoteFuture<'a, ()> {
        Box::pin(async move {
            self.linked
                .lock()
                .expect("the linked log")
                .push(outcome.clone());
            if self.hang_linked {
                std::future::pending::<()>().await;
            }
        })
    }

    fn published_limit(&self) -> PublishedLimit {
        self.limit
    }

    fn batch_size(&self) -> usize {
        self.batch_size
    }

    fn send<'a>(&'a self, rows: &'a [OutgoingRow]) -> RemoteFuture<'a, Vec<Outcome>> {
        Box::pin(self.send_rows(rows))
    }

    fn find_existing<'a>(
        &'a self,
        row: &'a OutgoingRow,
    ) -> RemoteFuture<'a, Result<Option<Remote>, Outcome>> {
        Box::pin(self.find(row))
    }

    fn authenticate(&self, hook: &Webhook<'_>) -> bool {
        let given = hook
            .headers
            .get(self.webhook_header.as_str())
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        !self.webhook_token.is_empty() && constant_time_eq(given, self.webhook_token.as_bytes())
    }

    fn parse(&self, hook: &Webhook<'_>) -> Result<Vec<Inbound>, WebhookError> {
        let what = |w: &str| WebhookError { what: w.to_owned() };
        let body: Value =
            serde_json::from_slice(hook.body).map_err(|_| what("body is not JSON"))?;
        let removed = match body.get("event").and_then(Value::as_str) {
            Some("record.created" | "record.updated") => false,
            Some("record.removed") => true,
            Some(_) => return Err(what("event is not record.created, .updated or .removed")),
            None => return Err(what("event missing")),
        };
        let record = body.get("record").ok_or_else(|| what("record missing"))?;
        Ok(vec![self.inbound(record, removed)?])
    }

    fn list<'a>(&'a self, after: Option<&'a str>) -> RemoteFuture<'a, Result<Page, Outcome>> {
        Box::pin(self.list_page(after))
    }
}

fn client(timeout: Duration) -> reqwest::Client {
    // reqwest is built without a default TLS provider (the gateway's is
    // ring): install it as the gateway does; a second install is refused
    // harmlessly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .build()
        .expect("an HTTP client without TLS builds")
}

/// An answer as read.
struct Answer {
    status: u16,
    retry_after: Option<Duration>,
    html: bool,
    body: Vec<u8>,
}

impl Answer {
    /// A 200's JSON, or the outcome any other answer means.
    fn json(self) -> Result<Value, Outcome> {
        let parsed = serde_json::from_slice::<Value>(&self.body).ok();
        let error = parsed
            .as_ref()
            .and_then(|b| b.get("error"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        match self.status {
            200 => parsed.ok_or_else(|| malformed("a 200 whose body is not JSON")),
            503 if error == "QUERY_LIMIT_EXCEEDED" => Err(Outcome::Limited {
                retry_after: self.retry_after,
            }),
            429 => Err(Outcome::Limited {
                retry_after: self.retry_after,
            }),
            403 => Err(Outcome::Blocked(if self.html {
                "403 with an HTML page (the account is blocked)".to_owned()
            } else {
                format!("403 {error}")
            })),
            status => Err(Outcome::Retry(if error.is_empty() {
                format!("HTTP {status}")
            } else {
                format!("HTTP {status} {error}")
            })),
        }
    }
}

/// The outcome of each of `expected` batch entries, in order.
fn batch_results(body: &Value, expected: usize) -> Result<Vec<Outcome>, Outcome> {
    let results = body
        .get("results")
        .and_then(Value::as_array)
        .ok_or_else(|| malformed("no \"results\" in the batch's answer"))?;
    if results.len() != expected {
        return Err(malformed(&format!(
            "{} results for {expected} records",
            results.len()
        )));
    }
    Ok(results
        .iter()
        .map(|result| {
            if let Some(error) = result.get("error") {
                let message = error
                    .as_str()
                    .map_or_else(|| error.to_string(), str::to_owned);
                return Outcome::Permanent(message);
            }
            match remote_of(result) {
                Ok(remote) => Outcome::Confirmed(remote),
                Err(outcome) => outcome,
            }
        })
        .collect())
}

/// `{"id","version"}` of a result or record.
fn remote_of(value: &Value) -> Result<Remote, Outcome> {
    let remote_id = value
        .get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .ok_or_else(|| malformed("a record without an id"))?;
    let remote_version = value
        .get("version")
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(Remote::new(remote_id, remote_version))
}

/// The record's fields as the counterparty model names them: the test
/// system sends the directory's JSON as `fields`, so the names are the same.
fn remote_record(fields: &Map<String, Value>) -> RemoteRecord {
    let text = |name: &str| fields.get(name).and_then(Value::as_str).map(str::to_owned);
    let list = |name: &str| {
        fields.get(name).and_then(Value::as_array).map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
    };
    RemoteRecord {
        name: text("name"),
        inn: text("inn"),
        kpp: text("kpp"),
        ogrn: text("ogrn").or_else(|| text("ogrnip")),
        phones: list("phones"),
        emails: list("emails"),
        address: text("address"),
        manager_user_id: text("manager_user_id"),
        link: text("link"),
    }
}

fn transport(e: reqwest::Error) -> Outcome {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else if e.is_body() || e.is_decode() {
        "answer cut off"
    } else {
        "request failed"
    };
    Outcome::Retry(format!("{what}: {e}"))
}

fn malformed(what: &str) -> Outcome {
    Outcome::Retry(format!("malformed answer: {what}"))
}

/// Percent-encodes all but the unreserved characters (a path segment or a
/// query value).
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Equal bytes, in a time that depends only on the lengths.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = given.len() ^ expected.len();
    for i in 0..given.len().max(expected.len()) {
        let a = given.get(i).copied().unwrap_or(0);
        let b = expected.get(i).copied().unwrap_or(0);
        diff |= usize::from(a ^ b);
    }
    diff == 0
}
