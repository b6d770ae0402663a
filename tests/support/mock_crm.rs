//! A mock CRM on loopback: a small JSON API of "records" with the faults
//! real CRMs show (Bitrix24's and amoCRM's limits and blocks, validation
//! errors, webhooks), for the sync tests and the benchmark
//! (`bench/crm_mock.rs`). Served by `mock_http.rs`, so the failure modes,
//! the pause and the request log are the same as the mock 1C's.
//!
//! # The API
//!
//! Records have a numeric id given by the mock (as a string, `"17"`), an
//! optional `external_id` (the gateway's record key), `fields` (any JSON
//! object, kept as sent) and a `version` (a string of a number, bumped by
//! every write). Removing marks a record `removed`; nothing is deleted.
//! A record as the API shows it:
//!
//! ```json
//! {"id":"17","external_id":"k1","version":"3","removed":false,"fields":{"name":"Альфа"}}
//! ```
//!
//! - `POST /api/records/batch`, body
//!   `{"records":[{"external_id":"k1","fields":{…}}, {"external_id":"k2","remove":true}]}`,
//!   at most [`MAX_BATCH`] entries (more: 400 `{"error":"BATCH_TOO_LARGE"}`).
//!   An entry with `fields` creates or updates the record of that external
//!   id (reviving a removed one); one with `"remove": true` marks it
//!   removed. 200 `{"results":[…]}`, one per entry in order:
//!   `{"external_id","id","version","created":bool,"removed":bool}`, or
//!   `{"external_id","error":"message"}` for an entry refused: flagged with
//!   [`MockCrm::set_invalid`] (the message given), a remove of an unknown
//!   external id (`"NOT_FOUND"`), an entry without `external_id` or
//!   `fields`. A body that is not such JSON: 400
//!   `{"error":"BAD_REQUEST","message":…}`.
//! - `GET /api/records/by-external/{external_id}` (percent-encoded): 200
//!   `{"record":{…}}` (removed ones too), 404 `{"error":"NOT_FOUND"}`.
//! - `GET /api/records?after=ID&limit=N`: records with an id above `after`
//!   (all without it) in id order, `limit` 1–500 (default 50): 200
//!   `{"records":[…],"next":"ID"|null}`; `next` is the last id of a full
//!   page (`null` when there is no more). Removed records are listed.
//! - `POST /api/records/{id}/remove`: 200 `{"id","version","removed":true}`,
//!   404 `{"error":"NOT_FOUND"}`.
//! - Anything else: 404 `{"error":"NOT_FOUND"}` (405 for a known path with
//!   another method).
//!
//! # What every request meets, in order
//!
//! 1. [`MockCrm::pause`] holds it; then the [`Mode`] (slow, hang, a 500 of
//!    `{"error":"INTERNAL_SERVER_ERROR"}`, a garbage 200).
//! 2. [`MockCrm::set_status`]: a status other than 200 answers everything
//!    with it and `{"ok":false,"n":N}` (a broken front of the CRM).
//! 3. Block ([`MockCrm::set_blocked`]): 403 `text/html` (amoCRM's page once
//!    an account keeps exceeding its limits) to everything.
//! 4. The leaky bucket ([`MockCrm::set_bucket`]), exact: each request adds
//!    one to a level that drains continuously at `drain_per_second`; a
//!    request that would take it over `capacity` is not taken and gets the
//!    limit answer ([`LimitAnswer`]): 503 `{"error":"QUERY_LIMIT_EXCEEDED"}`
//!    (Bitrix24) or 429 with `Retry-After` (whole seconds until one request
//!    fits). Unlimited at first. [`MockCrm::force_limit`] gives the limit
//!    answer to the next requests whatever the bucket says.
//! 5. The API above ([`MockCrm::set_failing`], [`MockCrm::fail_times`]: a
//!    500 to a batch or lookup naming that external id; a batch stays in
//!    flight [`MockCrm::set_latency`] before it is applied, and one arriving
//!    while another naming the same external id is in flight is counted in
//!    `overlaps`). After a write is applied and before it is answered,
//!    the hook set with [`MockCrm::on_write`] runs (it may wait, or have the
//!    connection closed without an answer: a crash after the CRM accepted).
//!
//! Every write (through the API, or [`MockCrm::edit`] and
//! [`MockCrm::remove_by_user`] as a user of the CRM) fires a webhook when
//! one is set ([`MockCrm::set_webhook`]): a POST of
//! `{"event":"record.created"|"record.updated"|"record.removed","record":{…}}`
//! with the configured token header, one per record, in write order, from
//! one task (failures are counted, not retried).
//!
//! Self-contained apart from `mock_http.rs` (std, tokio, hyper, hyper-util,
//! http-body-util, bytes, serde_json): the benchmark includes both with
//! `#[path]`. Bounds: heads 64 KiB, bodies 1 MiB (more: 413, not logged),
//! 64 connections.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use super::mock_http::Mode;
use super::mock_http::{
    json_reply, lock, reply, Handler, HandlerFuture, HttpRequest, Limits, MockHttp, Reply,
};

/// The most entries one batch takes.
pub const MAX_BATCH: usize = 50;
/// The list's page size when `limit` is not given, and the largest taken.
pub const DEFAULT_PAGE: usize = 50;
pub const MAX_PAGE: usize = 500;

/// amoCRM's page to a blocked account (abridged).
pub const BLOCKED_PAGE: &str = "<!DOCTYPE html><html><head><title>403 Forbidden</title></head>\
<body><h1>Доступ запрещён</h1><p>Аккаунт заблокирован за превышение лимитов запросов. \
Обратитесь в техническую поддержку.</p></body></html>";

/// One request the mock received (the log of [`MockCrm::requests`]).
#[derive(Debug, Clone, PartialEq)]
pub struct CrmRequest {
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// The `Authorization` header, if any.
    pub authorization: Option<String>,
    /// The body as JSON (`Value::Null` when empty or not JSON; see `raw`).
    pub body: Value,
    pub raw: String,
    /// The status answered; `None` while pending or when never answered.
    pub status: Option<u16>,
}

/// A record the mock holds.
#[derive(Debug, Clone, PartialEq)]
pub struct CrmRecord {
    pub id: String,
    pub external_id: Option<String>,
    pub fields: Map<String, Value>,
    /// Bumped by every write of this record, from 1.
    pub version: u64,
    pub removed: bool,
}

impl CrmRecord {
    /// As the API shows it.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "external_id": self.external_id,
            "version": self.version.to_string(),
            "removed": self.removed,
            "fields": self.fields,
        })
    }
}

/// The leaky bucket: `capacity` requests at once, drained at
/// `drain_per_second` (Bitrix24: 50 and 2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub capacity: u32,
    pub drain_per_second: f64,
}

/// How a request over the bucket is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitAnswer {
    /// 503 `{"error":"QUERY_LIMIT_EXCEEDED"}`, as Bitrix24.
    QueryLimit503,
    /// 429 with `Retry-After: <seconds>` and `{"error":"TOO_MANY_REQUESTS"}`.
    RetryAfter429,
}

/// What the mock has done, since its start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests that reached the mock's checks (not held, hung or failed by
    /// a [`Mode`]).
    pub requests: u64,
    /// Records written through the API: creates, updates and removes.
    pub writes: u64,
    pub creates: u64,
    pub updates: u64,
    pub removes: u64,
    /// Batch entries refused (validation errors, unknown records).
    pub refused_entries: u64,
    /// Requests answered with the limit answer.
    pub limit_answers: u64,
    /// Requests answered with the block page.
    pub blocked_answers: u64,
    /// Writes by a user ([`MockCrm::edit`], [`MockCrm::remove_by_user`]).
    pub user_edits: u64,
    pub webhooks_sent: u64,
    pub webhooks_failed: u64,
    /// Lookups by external id answered (found or not), and those that found
    /// a record (a create the gateway adopts).
    pub lookups: u64,
    pub lookups_found: u64,
    /// Batches that arrived while another batch naming one of their external
    /// ids was still being answered (a sender breaking the order per record).
    pub overlaps: u64,
}

/// One record an API batch wrote (the log of [`MockCrm::writes_of`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiWrite {
    pub external_id: String,
    /// The fields sent (`None` for a remove).
    pub fields: Option<Map<String, Value>>,
}

/// One record a write touched, as the [`MockCrm::on_write`] hook sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteEvent {
    pub external_id: Option<String>,
    pub id: String,
    pub version: u64,
    pub created: bool,
    pub removed: bool,
}

/// The hook run after a write is applied and before its answer: given the
/// records the request wrote, it answers whether to send the answer (`false`:
/// the connection is closed without one).
pub type WriteHook =
    Arc<dyn Fn(Vec<WriteEvent>) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// Where webhooks go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    /// `http://127.0.0.1:PORT/path` (plain HTTP only).
    pub url: String,
    /// The header carrying `token` (`X-Mock-Token`).
    pub header: String,
    pub token: String,
}

/// A running mock CRM. Dropping it stops the server, its connections and
/// its webhook sender.
pub struct MockCrm {
    state: Arc<State>,
    server: MockHttp,
    webhooks: JoinHandle<()>,
}

struct State {
    data: Mutex<Data>,
    /// Sends each written record to the webhook task.
    hooks: mpsc::UnboundedSender<Value>,
    on_write: Mutex<Option<WriteHook>>,
}

struct Data {
    records: BTreeMap<u64, CrmRecord>,
    by_external: HashMap<String, u64>,
    next_id: u64,
    invalid: HashMap<String, String>,
    creates_by_external: HashMap<String, u32>,
    forced_status: Option<u16>,
    blocked: bool,
    bucket: Option<(Bucket, BucketLevel)>,
    limit_answer: LimitAnswer,
    /// The next this many requests get the limit answer whatever the bucket
    /// says, with `Retry-After` of `forced_retry_after` s on a 429.
    forced_limits: u32,
    forced_retry_after: u64,
    /// External ids whose batches and lookups answer 500, with how many
    /// more times (`u32::MAX`: until cleared).
    failing: HashMap<String, u32>,
    webhook: Option<WebhookTarget>,
    counters: Counters,
    /// The write log and the times below are kept with the request log
    /// ([`MockCrm::set_keep_log`]): a long benchmark keeps neither.
    keep_logs: bool,
    /// Every record written through the API, in order.
    writes: Vec<ApiWrite>,
    /// Batches being answered, per external id they name.
    in_flight: HashMap<String, u32>,
    /// How long a batch stays in flight before it is applied.
    latency: Duration,
    /// When each request reached the mock's checks, and when each limit
    /// answer was given.
    arrived_at: Vec<Instant>,
    limited_at: Vec<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct BucketLevel {
    level: f64,
    at: Instant,
}

impl MockCrm {
    /// Starts on 127.0.0.1:0: no records, unlimited, not blocked, no webhook.
    pub async fn start() -> MockCrm {
        MockCrm::start_with(None).await
    }

    /// Starts on `listener` (a benchmark's address), or on 127.0.0.1:0.
    pub async fn start_with(listener: Option<tokio::net::TcpListener>) -> MockCrm {
        let (hooks, queue) = mpsc::unbounded_channel();
        let state = Arc::new(State {
            data: Mutex::new(Data {
                records: BTreeMap::new(),
                by_external: HashMap::new(),
                next_id: 1,
                invalid: HashMap::new(),
                creates_by_external: HashMap::new(),
                forced_status: None,
                blocked: false,
                bucket: None,
                limit_answer: LimitAnswer::QueryLimit503,
                forced_limits: 0,
                forced_retry_after: 1,
                failing: HashMap::new(),
                webhook: None,
                counters: Counters::default(),
                keep_logs: true,
                writes: Vec::new(),
                in_flight: HashMap::new(),
                latency: Duration::ZERO,
                arrived_at: Vec::new(),
                limited_at: Vec::new(),
            }),
            hooks,
            on_write: Mutex::new(None),
        });
        let handler = CrmHandler(Arc::clone(&state));
        let server = match listener {
            Some(listener) => MockHttp::serve(listener, Limits::default(), |_| handler),
            None => MockHttp::start(Limits::default(), |_| handler).await,
        };
        let webhooks = tokio::spawn(send_webhooks(Arc::clone(&state), queue));
        MockCrm {
            state,
            server,
            webhooks,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// A status other than 200 answers every later request with it and
    /// `{"ok":false,"n":N}`; 200 returns to the API's answers.
    pub fn set_status(&self, status: u16) {
        self.data().forced_status = (status != 200).then_some(status);
    }

    pub fn set_mode(&self, mode: Mode) {
        self.server.set_mode(mode);
    }

    /// Holds every request until [`MockCrm::resume`].
    pub fn pause(&self) {
        self.server.pause();
    }

    pub fn resume(&self) {
        self.server.resume();
    }

    /// amoCRM's block: 403 HTML to everything while `true`.
    pub fn set_blocked(&self, blocked: bool) {
        self.data().blocked = blocked;
    }

    /// The leaky bucket (`None`: unlimited), starting empty.
    pub fn set_bucket(&self, bucket: Option<Bucket>) {
        self.data().bucket = bucket.map(|b| {
            (
                b,
                BucketLevel {
                    level: 0.0,
                    at: Instant::now(),
                },
            )
        });
    }

    pub fn set_limit_answer(&self, answer: LimitAnswer) {
        self.data().limit_answer = answer;
    }

    /// The next `count` requests get the limit answer whatever the bucket
    /// says (a 429 carries `Retry-After: retry_after_secs`): "a 429 with
    /// `Retry-After: 2`" on demand. Counted in `limit_answers`.
    pub fn force_limit(&self, count: u32, retry_after_secs: u64) {
        let mut data = self.data();
        data.forced_limits = count;
        data.forced_retry_after = retry_after_secs;
    }

    /// While `failing`, a batch naming `external_id` (and its lookup) is
    /// answered 500: one record failing while the rest of the system answers.
    pub fn set_failing(&self, external_id: &str, failing: bool) {
        let mut data = self.data();
        if failing {
            data.failing.insert(external_id.to_owned(), u32::MAX);
        } else {
            data.failing.remove(external_id);
        }
    }

    /// The next `times` batches (or lookups) naming `external_id` are
    /// answered 500, then it is written as usual.
    pub fn fail_times(&self, external_id: &str, times: u32) {
        self.data().failing.insert(external_id.to_owned(), times);
    }

    /// How many more 500s [`MockCrm::fail_times`] has left for `external_id`.
    pub fn failures_left(&self, external_id: &str) -> u32 {
        self.data().failing.get(external_id).copied().unwrap_or(0)
    }

    /// Each batch stays in flight this long before it is applied (so that
    /// two batches naming one record at once show in `overlaps`).
    pub fn set_latency(&self, latency: Duration) {
        self.data().latency = latency;
    }

    /// Writes of `external_id` are refused with `message` (a validation
    /// error) until [`MockCrm::clear_invalid`].
    pub fn set_invalid(&self, external_id: &str, message: &str) {
        self.data()
            .invalid
            .insert(external_id.to_owned(), message.to_owned());
    }

    pub fn clear_invalid(&self, external_id: &str) {
        self.data().invalid.remove(external_id);
    }

    /// Fires a webhook on each write from now on (`None`: none).
    pub fn set_webhook(&self, target: Option<WebhookTarget>) {
        self.data().webhook = target;
    }

    /// Runs `hook` after each write is applied and before it is answered
    /// (see [`WriteHook`]); the kill -9 test holds the answer there.
    pub fn on_write<F, Fut>(&self, hook: F)
    where
        F: Fn(Vec<WriteEvent>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        let hook: WriteHook = Arc::new(move |events| Box::pin(hook(events)));
        *lock(&self.state.on_write) = Some(hook);
    }

    pub fn clear_on_write(&self) {
        *lock(&self.state.on_write) = None;
    }

    /// A record that is in the CRM already (created there before the test):
    /// no webhook, not counted.
    pub fn seed(&self, external_id: Option<&str>, fields: Value) -> CrmRecord {
        let mut data = self.data();
        let fields = object(fields);
        data.insert(external_id, fields)
    }

    /// A user's edit in the CRM: `fields` merged into the record's, its
    /// version bumped, the webhook fired. `None` if there is no such id.
    pub fn edit(&self, id: &str, fields: Value) -> Option<CrmRecord> {
        let record = {
            let mut data = self.data();
            let key = id.parse::<u64>().ok()?;
            let record = data.records.get_mut(&key)?;
            for (name, value) in object(fields) {
                record.fields.insert(name, value);
            }
            record.version += 1;
            let record = record.clone();
            data.counters.user_edits += 1;
            record
        };
        self.state.fire("record.updated", &record);
        Some(record)
    }

    /// A user's removal in the CRM (marked removed, the webhook fired).
    pub fn remove_by_user(&self, id: &str) -> Option<CrmRecord> {
        let record = {
            let mut data = self.data();
            let key = id.parse::<u64>().ok()?;
            let record = data.records.get_mut(&key)?;
            record.removed = true;
            record.version += 1;
            let record = record.clone();
            data.counters.user_edits += 1;
            record
        };
        self.state.fire("record.removed", &record);
        Some(record)
    }

    /// Every record, in id order.
    pub fn records(&self) -> Vec<CrmRecord> {
        self.data().records.values().cloned().collect()
    }

    /// How many records the mock holds (removed ones too).
    pub fn record_count(&self) -> usize {
        self.data().records.len()
    }

    pub fn record_by_external(&self, external_id: &str) -> Option<CrmRecord> {
        let data = self.data();
        let id = data.by_external.get(external_id)?;
        data.records.get(id).cloned()
    }

    pub fn counters(&self) -> Counters {
        self.data().counters.clone()
    }

    /// The fields of each API write of `external_id`, in order (`Null` for
    /// a remove); user edits are not in it.
    pub fn writes_of(&self, external_id: &str) -> Vec<Value> {
        self.data()
            .writes
            .iter()
            .filter(|w| w.external_id == external_id)
            .map(|w| w.fields.clone().map_or(Value::Null, Value::Object))
            .collect()
    }

    /// Every API write so far, in order.
    pub fn writes(&self) -> Vec<ApiWrite> {
        self.data().writes.clone()
    }

    /// API writes per external id.
    pub fn writes_per_external_id(&self) -> HashMap<String, u32> {
        let mut counts = HashMap::new();
        for write in &self.data().writes {
            *counts.entry(write.external_id.clone()).or_default() += 1;
        }
        counts
    }

    /// When each request reached the mock's checks.
    pub fn arrivals(&self) -> Vec<Instant> {
        self.data().arrived_at.clone()
    }

    /// When each limit answer was given.
    pub fn limit_answer_times(&self) -> Vec<Instant> {
        self.data().limited_at.clone()
    }

    /// How many times the API created a record for `external_id`.
    pub fn creates_of(&self, external_id: &str) -> u32 {
        self.data()
            .creates_by_external
            .get(external_id)
            .copied()
            .unwrap_or(0)
    }

    /// Creates per external id, for "each created exactly once".
    pub fn creates_per_external_id(&self) -> HashMap<String, u32> {
        self.data().creates_by_external.clone()
    }

    /// Whether requests are logged (on at first; off for long benchmarks),
    /// and with them the API writes ([`MockCrm::writes`]), arrival and limit
    /// answer times; the counters are kept either way.
    pub fn set_keep_log(&self, keep: bool) {
        self.server.set_keep_log(keep);
        self.data().keep_logs = keep;
    }

    /// Every request received so far (since the last reset), in order.
    pub fn requests(&self) -> Vec<CrmRequest> {
        self.server.with_requests(|log| {
            log.iter()
                .map(|l| {
                    let raw = String::from_utf8_lossy(&l.request.body).into_owned();
                    CrmRequest {
                        method: l.request.method.to_string(),
                        target: l.request.target.clone(),
                        authorization: l
                            .request
                            .header(hyper::header::AUTHORIZATION.as_str())
                            .map(str::to_owned),
                        body: serde_json::from_str(&raw).unwrap_or(Value::Null),
                        raw,
                        status: l.status,
                    }
                })
                .collect()
        })
    }

    pub fn reset_requests(&self) {
        self.server.reset_requests();
    }

    fn data(&self) -> std::sync::MutexGuard<'_, Data> {
        lock(&self.state.data)
    }
}

impl Drop for MockCrm {
    fn drop(&mut self) {
        self.webhooks.abort();
    }
}

fn object(fields: Value) -> Map<String, Value> {
    match fields {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

impl Data {
    fn insert(&mut self, external_id: Option<&str>, fields: Map<String, Value>) -> CrmRecord {
        let id = self.next_id;
        self.next_id += 1;
        let record = CrmRecord {
            id: id.to_string(),
            external_id: external_id.map(str::to_owned),
            fields,
            version: 1,
            removed: false,
        };
        if let Some(ext) = external_id {
            self.by_external.insert(ext.to_owned(), id);
        }
        self.records.insert(id, record.clone());
        record
    }

    /// Whether a request naming `external_id` is to fail (500) now; counts
    /// the failure down.
    fn take_failure(&mut self, external_id: &str) -> bool {
        match self.failing.get_mut(external_id) {
            Some(left) if *left > 0 => {
                if *left != u32::MAX {
                    *left -= 1;
                }
                true
            }
            _ => false,
        }
    }

    /// Takes one request into the bucket; `Err(seconds until one fits)`
    /// when it would overflow.
    fn take_token(&mut self) -> Result<(), u64> {
        let Some((bucket, level)) = self.bucket.as_mut() else {
            return Ok(());
        };
        let now = Instant::now();
        let drained = now.duration_since(level.at).as_secs_f64() * bucket.drain_per_second;
        level.level = (level.level - drained).max(0.0);
        level.at = now;
        // A hair of tolerance: a client pacing at exactly the drain rate
        // must not be refused by float rounding.
        if level.level + 1.0 > f64::from(bucket.capacity) + 1e-9 {
            let over = level.level + 1.0 - f64::from(bucket.capacity);
            let wait = (over / bucket.drain_per_second.max(1e-9)).ceil().max(1.0);
            return Err(wait as u64);
        }
        level.level += 1.0;
        Ok(())
    }
}

impl State {
    fn fire(&self, event: &str, record: &CrmRecord) {
        // A closed channel: the mock is being dropped.
        let _ = self
            .hooks
            .send(json!({"event": event, "record": record.to_json()}));
    }
}

// ---------------------------------------------------------------- the API

struct CrmHandler(Arc<State>);

impl Handler for CrmHandler {
    fn handle<'a>(&'a self, req: &'a HttpRequest) -> HandlerFuture<'a> {
        Box::pin(self.answer(req))
    }
}

enum Route<'a> {
    Batch,
    ByExternal(&'a str),
    List,
    Remove(&'a str),
}

fn route(path: &str) -> Option<Route<'_>> {
    let rest = path.strip_prefix("/api/records")?;
    match rest {
        "" | "/" => Some(Route::List),
        "/batch" => Some(Route::Batch),
        _ => {
            if let Some(ext) = rest.strip_prefix("/by-external/") {
                return (!ext.is_empty()).then_some(Route::ByExternal(ext));
            }
            let id = rest.strip_prefix('/')?.strip_suffix("/remove")?;
            (!id.is_empty() && !id.contains('/')).then_some(Route::Remove(id))
        }
    }
}

fn not_found() -> Reply {
    json_reply(StatusCode::NOT_FOUND, &json!({"error": "NOT_FOUND"}))
}

/// The answer to a request naming a record set failing.
fn failing_answer() -> Reply {
    json_reply(
        StatusCode::INTERNAL_SERVER_ERROR,
        &json!({"error": "INTERNAL_SERVER_ERROR", "message": "mock: set_failing"}),
    )
}

fn bad_request(message: impl Into<String>) -> Reply {
    json_reply(
        StatusCode::BAD_REQUEST,
        &json!({"error": "BAD_REQUEST", "message": message.into()}),
    )
}

impl CrmHandler {
    async fn answer(&self, req: &HttpRequest) -> Option<Reply> {
        let path = req.path().to_owned();
        let batch = matches!(route(&path), Some(Route::Batch));
        // A batch is in flight, for `overlaps`, from its checks to its answer.
        let named = if batch {
            batch_external_ids(&req.body)
        } else {
            Vec::new()
        };
        let latency = {
            let mut data = lock(&self.0.data);
            data.counters.requests += 1;
            if data.keep_logs {
                data.arrived_at.push(Instant::now());
            }
            if let Some(reply) = self.checks(&mut data, req) {
                return Some(reply);
            }
            let mut overlap = false;
            for ext in &named {
                let n = data.in_flight.entry(ext.clone()).or_default();
                *n += 1;
                overlap |= *n > 1;
            }
            if overlap {
                data.counters.overlaps += 1;
            }
            data.latency
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let (reply, written) = {
            let mut data = lock(&self.0.data);
            for ext in &named {
                if let Some(n) = data.in_flight.get_mut(ext) {
                    *n = n.saturating_sub(1);
                }
            }
            match route(&path) {
                None => (not_found(), Vec::new()),
                Some(route) => self.api(&mut data, req, route),
            }
        };
        if !written.is_empty() {
            let hook = lock(&self.0.on_write).clone();
            if let Some(hook) = hook {
                if !hook(written).await {
                    return None;
                }
            }
        }
        Some(reply)
    }

    /// The forced status, the block and the bucket: an answer when one of
    /// them stops the request.
    fn checks(&self, data: &mut Data, req: &HttpRequest) -> Option<Reply> {
        if let Some(status) = data.forced_status {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Some(json_reply(status, &json!({"ok": false, "n": req.seq + 1})));
        }
        if data.blocked {
            data.counters.blocked_answers += 1;
            return Some(reply(
                StatusCode::FORBIDDEN,
                "text/html; charset=utf-8",
                BLOCKED_PAGE,
            ));
        }
        let over = if data.forced_limits > 0 {
            data.forced_limits -= 1;
            Err(data.forced_retry_after)
        } else {
            data.take_token()
        };
        if let Err(wait) = over {
            data.counters.limit_answers += 1;
            if data.keep_logs {
                data.limited_at.push(Instant::now());
            }
            return Some(match data.limit_answer {
                LimitAnswer::QueryLimit503 => json_reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &json!({"error": "QUERY_LIMIT_EXCEEDED", "error_description": "Too many requests"}),
                ),
                LimitAnswer::RetryAfter429 => {
                    let mut r = json_reply(
                        StatusCode::TOO_MANY_REQUESTS,
                        &json!({"error": "TOO_MANY_REQUESTS"}),
                    );
                    r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(wait));
                    r
                }
            });
        }
        None
    }

    fn api(
        &self,
        data: &mut Data,
        req: &HttpRequest,
        route: Route<'_>,
    ) -> (Reply, Vec<WriteEvent>) {
        let method_not_allowed = || {
            (
                json_reply(
                    StatusCode::METHOD_NOT_ALLOWED,
                    &json!({"error": "METHOD_NOT_ALLOWED"}),
                ),
                Vec::new(),
            )
        };
        match route {
            Route::Batch if req.method == Method::POST => self.batch(data, &req.body),
            Route::ByExternal(ext) if req.method == Method::GET => {
                let Some(ext) = percent_decode(ext) else {
                    return (
                        bad_request("external id is not percent-encoded UTF-8"),
                        Vec::new(),
                    );
                };
                if data.take_failure(&ext) {
                    return (failing_answer(), Vec::new());
                }
                data.counters.lookups += 1;
                let found = data
                    .by_external
                    .get(&ext)
                    .and_then(|id| data.records.get(id))
                    .map(CrmRecord::to_json);
                let reply = match found {
                    Some(record) => {
                        data.counters.lookups_found += 1;
                        json_reply(StatusCode::OK, &json!({"record": record}))
                    }
                    None => not_found(),
                };
                (reply, Vec::new())
            }
            Route::List if req.method == Method::GET => (list(data, req.query()), Vec::new()),
            Route::Remove(id) if req.method == Method::POST => {
                let Some(record) = id
                    .parse::<u64>()
                    .ok()
                    .and_then(|id| data.records.get_mut(&id))
                else {
                    return (not_found(), Vec::new());
                };
                record.removed = true;
                record.version += 1;
                let record = record.clone();
                data.counters.writes += 1;
                data.counters.removes += 1;
                self.0.fire("record.removed", &record);
                let reply = json_reply(
                    StatusCode::OK,
                    &json!({"id": record.id, "version": record.version.to_string(), "removed": true}),
                );
                let event = WriteEvent {
                    external_id: record.external_id,
                    id: record.id,
                    version: record.version,
                    created: false,
                    removed: true,
                };
                (reply, vec![event])
            }
            _ => method_not_allowed(),
        }
    }

    fn batch(&self, data: &mut Data, body: &Bytes) -> (Reply, Vec<WriteEvent>) {
        let parsed: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return (bad_request(format!("body is not JSON: {e}")), Vec::new()),
        };
        let Some(entries) = parsed.get("records").and_then(Value::as_array) else {
            return (bad_request("no \"records\" array"), Vec::new());
        };
        let mut names_failing = false;
        for ext in batch_external_ids(body) {
            names_failing |= data.take_failure(&ext);
        }
        if names_failing {
            return (failing_answer(), Vec::new());
        }
        if entries.len() > MAX_BATCH {
            return (
                json_reply(
                    StatusCode::BAD_REQUEST,
                    &json!({"error": "BATCH_TOO_LARGE", "message": format!("at most {MAX_BATCH} records")}),
                ),
                Vec::new(),
            );
        }
        let mut results = Vec::with_capacity(entries.len());
        let mut events = Vec::new();
        for entry in entries {
            match self.write_entry(data, entry) {
                Ok((result, event)) => {
                    results.push(result);
                    events.push(event);
                }
                Err((ext, message)) => {
                    data.counters.refused_entries += 1;
                    results.push(json!({"external_id": ext, "error": message}));
                }
            }
        }
        (
            json_reply(StatusCode::OK, &json!({"results": results})),
            events,
        )
    }

    /// One batch entry: its result and what it wrote, or (external id,
    /// error message).
    fn write_entry(
        &self,
        data: &mut Data,
        entry: &Value,
    ) -> Result<(Value, WriteEvent), (Value, String)> {
        let ext_value = entry.get("external_id").cloned().unwrap_or(Value::Null);
        let Some(ext) = ext_value.as_str().filter(|e| !e.is_empty()) else {
            return Err((ext_value, "external_id missing".to_owned()));
        };
        if let Some(message) = data.invalid.get(ext) {
            return Err((ext_value.clone(), message.clone()));
        }
        let remove = entry.get("remove").and_then(Value::as_bool) == Some(true);
        let existing = data.by_external.get(ext).copied();
        let (record, created, event) = if remove {
            let Some(record) = existing.and_then(|id| data.records.get_mut(&id)) else {
                return Err((ext_value, "NOT_FOUND".to_owned()));
            };
            record.removed = true;
            record.version += 1;
            data.counters.removes += 1;
            (record.clone(), false, "record.removed")
        } else {
            let Some(fields) = entry.get("fields").and_then(Value::as_object) else {
                return Err((ext_value, "fields missing (an object)".to_owned()));
            };
            match existing.and_then(|id| data.records.get_mut(&id)) {
                Some(record) => {
                    record.fields = fields.clone();
                    record.removed = false;
                    record.version += 1;
                    data.counters.updates += 1;
                    (record.clone(), false, "record.updated")
                }
                None => {
                    let record = data.insert(Some(ext), fields.clone());
                    data.counters.creates += 1;
                    *data.creates_by_external.entry(ext.to_owned()).or_default() += 1;
                    (record, true, "record.created")
                }
            }
        };
        data.counters.writes += 1;
        if data.keep_logs {
            data.writes.push(ApiWrite {
                external_id: ext.to_owned(),
                fields: (!remove).then(|| record.fields.clone()),
            });
        }
        self.0.fire(event, &record);
        let result = json!({
            "external_id": ext,
            "id": record.id,
            "version": record.version.to_string(),
            "created": created,
            "removed": record.removed,
        });
        let event = WriteEvent {
            external_id: record.external_id,
            id: record.id,
            version: record.version,
            created,
            removed: record.removed,
        };
        Ok((result, event))
    }
}

fn list(data: &Data, query: Option<&str>) -> Reply {
    let mut after = 0u64;
    let mut limit = DEFAULT_PAGE;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "after" if value.is_empty() => {}
            "after" => match value.parse() {
                Ok(v) => after = v,
                Err(_) => return bad_request(format!("after={value} is not a record id")),
            },
            "limit" => match value.parse::<usize>() {
                Ok(v) if (1..=MAX_PAGE).contains(&v) => limit = v,
                _ => return bad_request(format!("limit={value} is not 1-{MAX_PAGE}")),
            },
            _ => return bad_request(format!("unknown parameter {name}")),
        }
    }
    let page: Vec<&CrmRecord> = data
        .records
        .range(after.saturating_add(1)..)
        .map(|(_, r)| r)
        .take(limit)
        .collect();
    let next = (page.len() == limit)
        .then(|| page.last().map(|r| r.id.clone()))
        .flatten()
        .filter(|last| {
            last.parse::<u64>()
                .is_ok_and(|l| data.records.range(l + 1..).next().is_some())
        });
    let records: Vec<Value> = page.iter().map(|r| r.to_json()).collect();
    json_reply(StatusCode::OK, &json!({"records": records, "next": next}))
}

/// The external ids a batch body names (none when it is not a batch).
fn batch_external_ids(body: &[u8]) -> Vec<String> {
    let Ok(parsed) = serde_json::from_slice::<Value>(body) else {
        return Vec::new();
    };
    parsed
        .get("records")
        .and_then(Value::as_array)
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| e.get("external_id").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Strict percent-decoding to UTF-8 (`None` on a bad escape or bytes).
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------- webhooks

/// Sends each queued write to the webhook target, one at a time, in order.
async fn send_webhooks(state: Arc<State>, mut queue: mpsc::UnboundedReceiver<Value>) {
    while let Some(body) = queue.recv().await {
        let target = lock(&state.data).webhook.clone();
        let Some(target) = target else {
            continue;
        };
        let sent = tokio::time::timeout(Duration::from_secs(5), post_webhook(&target, body))
            .await
            .unwrap_or(false);
        let mut data = lock(&state.data);
        if sent {
            data.counters.webhooks_sent += 1;
        } else {
            data.counters.webhooks_failed += 1;
        }
    }
}

/// One POST on a new connection; whether a 2xx came back.
async fn post_webhook(target: &WebhookTarget, body: Value) -> bool {
    let Some(rest) = target.url.strip_prefix("http://") else {
        return false;
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let Ok(stream) = tokio::net::TcpStream::connect(authority).await else {
        return false;
    };
    let Ok((mut sender, connection)) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return false;
    };
    let driver = tokio::spawn(connection);
    let (Ok(name), Ok(value)) = (
        HeaderName::from_bytes(target.header.as_bytes()),
        HeaderValue::from_str(&target.token),
    ) else {
        driver.abort();
        return false;
    };
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(hyper::header::HOST, authority)
        .header(CONTENT_TYPE, "application/json")
        .header(name, value)
        .body(Full::new(Bytes::from(body.to_string())));
    let Ok(request) = request else {
        driver.abort();
        return false;
    };
    let ok = match sender.send_request(request).await {
        Ok(response) => {
            let status = response.status();
            let _ = response.into_body().collect().await;
            status.is_success()
        }
        Err(_) => false,
    };
    driver.abort();
    ok
}
