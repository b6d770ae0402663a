//! The sync admin API, Bearer `api.token` (issue 17, item 12), over the
//! sync store:
//!
//! - `GET /api/v1/sync/status`: per system, the outbox's pending rows, the
//!   oldest pending row's age and the dead rows; for a sending system also
//!   its state (why, since when, last success) and its limiter (rate,
//!   tokens, paused until); for `onec` its `transport` (`odata`, `pull`)
//!   and, under pull, the rows 1C holds a lease on (`leased`);
//! - `GET /api/v1/sync/outbox?system=&state=pending|dead|done&after=&limit=`:
//!   outbox rows in id order, at most 1,000 a page;
//! - `POST /api/v1/sync/outbox/{id}/retry`: a dead row pending again
//!   (404 for no such row, 409 for a row that is not dead);
//! - `GET /api/v1/sync/conflicts?system=&since=&limit=`;
//! - `GET /api/v1/sync/idmap.csv?system=`: a system's id-map as CSV,
//!   streamed in chunks as the store reads them;
//! - `POST /api/v1/sync/{system}/resume`: a system that blocked the gateway
//!   is probed now rather than at its next `block_probe` (issue 18).
//!
//! `cti-gateway sync status|outbox|retry|conflicts|export-map` is their
//! command-line client. A `system` parameter must name a system this gateway
//! syncs (registered, or with a `[sync.<system>]` section): another is a 404.

use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use tokio::sync::mpsc;

use super::api::{no_query, require_token};
use super::client::Client;
use super::ops::{SyncSystemView, SyncSystemsView};
use super::query::ApiQuery;
use super::respond::{json, json_error, with_header, Body, StreamError};
use super::rfc3339;
use crate::config::{Config, Secret};
use crate::store::{
    Conflict, ConflictQuery, IdMapRow, OutboxQuery, OutboxRow, OutboxState, RetryOutcome,
    RowOutcome, Store, StoreError, SystemStatus, MAX_PAGE,
};
use crate::sync::jobs::{JobProgress, SyncJobs};
use crate::sync::onec::payments::{Payments, PaymentsStatus};

pub const STATUS: &str = "/api/v1/sync/status";
pub const OUTBOX: &str = "/api/v1/sync/outbox";
/// `POST {OUTBOX_ROW}{id}/retry`.
pub const OUTBOX_ROW: &str = "/api/v1/sync/outbox/";
pub const CONFLICTS: &str = "/api/v1/sync/conflicts";
pub const IDMAP_CSV: &str = "/api/v1/sync/idmap.csv";
/// `POST {SYSTEM_PREFIX}{system}/resume`.
pub const SYSTEM_PREFIX: &str = "/api/v1/sync/";
const RESUME_SUFFIX: &str = "/resume";

/// Asks a system's worker to probe now; `false` when no worker runs for
/// it. Handed over by the gateway (this module knows no sync runtime).
pub type Resume = std::sync::Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// Rows a page has unless `limit` says otherwise.
const DEFAULT_LIMIT: u32 = 100;

/// Chunks of the CSV export waiting to be sent: a slow client holds the
/// export back instead of letting it pile up in memory.
const EXPORT_BACKLOG: usize = 4;

const OUTBOX_PARAMETERS: &[&str] = &["system", "state", "after", "limit"];
const CONFLICT_PARAMETERS: &[&str] = &["system", "since", "limit"];
const IDMAP_PARAMETERS: &[&str] = &["system"];

/// The sync API's endpoints, built once at start-up.
pub struct SyncAdmin {
    token: Option<Secret>,
    /// The sync store, once the gateway opened it.
    store: Option<Store>,
    /// The systems this gateway syncs (registered or configured): a
    /// `system` parameter naming another is a 404.
    systems: Vec<String>,
    /// The sending systems' state and limiters, which the status adds.
    runtime: Option<SyncSystemsView>,
    /// The running workers' resume, once the gateway hands it over.
    resume: Option<Resume>,
    /// The registered systems' initial loads and relinks, for the status.
    jobs: Option<SyncJobs>,
    /// `[sync.onec] transport`, when `[sync.onec]` is configured: the
    /// status shows it for `onec`.
    onec_transport: Option<&'static str>,
    /// 1C's pull exchange, whose leased rows the status shows.
    pull: Option<crate::sync::onec::pull::Pull>,
    /// With `[payments]`: their source, cursor and lag, for the status.
    payments: Option<Arc<Payments>>,
}

impl SyncAdmin {
    pub fn new(config: &Config) -> SyncAdmin {
        SyncAdmin {
            token: config.api.token.clone(),
            store: None,
            systems: Vec::new(),
            runtime: None,
            resume: None,
            jobs: None,
            onec_transport: config
                .sync
                .system(crate::config::ONEC_SYSTEM)
                .map(|t| t.transport().as_str()),
            pull: None,
            payments: None,
        }
    }

    /// The status shows the rows `pull` has leased out.
    pub fn report_pull(&mut self, pull: crate::sync::onec::pull::Pull) {
        self.pull = Some(pull);
    }

    /// Shows the payments (source, cursor, lag) in the status.
    pub fn show_payments(&mut self, payments: Arc<Payments>) {
        self.payments = Some(payments);
    }

    /// Lets `POST /api/v1/sync/{system}/resume` reach the workers.
    pub fn resuming_with(&mut self, resume: Resume) {
        self.resume = Some(resume);
    }

    /// `POST /api/v1/sync/{system}/resume`: the system's worker probes now
    /// (200); 404 for a system not synced, 409 for one no worker sends to
    /// (configured, its module not in this build).
    pub async fn resume(&self, req: &Request<Incoming>, client: Client) -> Response<Body> {
        if req.method() != Method::POST {
            let message = format!(
                "method {} is not allowed here: POST {SYSTEM_PREFIX}{{system}}{RESUME_SUFFIX} probes a blocked system now",
                req.method()
            );
            let refused = json_error(StatusCode::METHOD_NOT_ALLOWED, &message);
            return with_header(refused, header::ALLOW, "POST");
        }
        if let Err(refused) = self.checked(req, client) {
            return refused;
        }
        if let Err(refused) = no_query(req, client.request) {
            return refused;
        }
        let Some(system) = resume_system(req.uri().path()) else {
            return json_error(StatusCode::NOT_FOUND, "no such endpoint");
        };
        if let Err(refused) = self.known(Some(system)) {
            return refused;
        }
        let resumed = self.resume.as_ref().is_some_and(|resume| resume(system));
        if !resumed {
            return json_error(
                StatusCode::CONFLICT,
                &format!("no worker sends to {system} on this gateway (its module is not in this build): nothing to resume"),
            );
        }
        tracing::info!(system, "sync: resume asked by the admin API");
        json(
            StatusCode::OK,
            &serde_json::json!({ "system": system, "resumed": true }),
        )
    }

    /// The status shows each system's initial load or relink from `jobs`.
    pub fn show_jobs(&mut self, jobs: SyncJobs) {
        self.jobs = Some(jobs);
    }

    /// Serves the API from `store` (the sync store) for `systems`.
    pub fn serve_from(&mut self, store: Store, systems: Vec<String>) {
        self.store = Some(store);
        self.systems = systems;
    }

    /// The status adds each of these systems' state and limiter.
    pub fn report_systems(&mut self, runtime: SyncSystemsView) {
        self.runtime = Some(runtime);
    }

    /// 404 for a `system` parameter naming a system this gateway does not
    /// sync (a typo would otherwise look like an empty outbox).
    #[allow(clippy::result_large_err)] // the Err is the answer itself
    fn known(&self, system: Option<&str>) -> Result<(), Response<Body>> {
        match system {
            Some(name) if !self.systems.iter().any(|s| s == name) => Err(json_error(
                StatusCode::NOT_FOUND,
                &format!(
                    "unknown system {name:?}: this gateway syncs {}",
                    if self.systems.is_empty() {
                        "no system".to_owned()
                    } else {
                        self.systems.join(", ")
                    }
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The token, then the store; the refusal otherwise.
    #[allow(clippy::result_large_err)] // the Err is the answer itself
    fn checked(&self, req: &Request<Incoming>, client: Client) -> Result<&Store, Response<Body>> {
        require_token(self.token.as_ref(), req, client)?;
        self.store.as_ref().ok_or_else(|| {
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the sync store is not open on this gateway",
            )
        })
    }

    /// `GET /api/v1/sync/status`.
    pub async fn status(&self, req: &Request<Incoming>, client: Client) -> Response<Body> {
        let store = match self.checked(req, client) {
            Ok(store) => store,
            Err(refused) => return refused,
        };
        if let Err(refused) = no_query(req, client.request) {
            return refused;
        }
        match store.sync_status().await {
            Ok(mut systems) => {
                // Every system synced, with rows or not.
                for name in &self.systems {
                    if !systems.iter().any(|s| &s.system == name) {
                        systems.push(SystemStatus {
                            system: name.clone(),
                            pending: 0,
                            oldest_pending_age: None,
                            dead: 0,
                        });
                    }
                }
                systems.sort_by(|a, b| a.system.cmp(&b.system));
                let runtime = self.runtime.as_ref().map(|view| view()).unwrap_or_default();
                // The webhooks' inbox of each system: what waits to be
                // applied, and what was set aside.
                let mut inboxes = Vec::with_capacity(systems.len());
                for s in &systems {
                    match store.sync_depth(&s.system).await {
                        Ok(depth) => inboxes.push(serde_json::json!({
                            "pending": depth.inbox,
                            "failed": depth.inbox_failed,
                        })),
                        Err(e) => return unreadable("the inbox", &e),
                    }
                }
                let leased = match &self.pull {
                    Some(pull) => match pull.leased_now().await {
                        Ok(n) => Some(n),
                        Err(e) => return unreadable("the leased rows", &e),
                    },
                    None => None,
                };
                let systems: Vec<serde_json::Value> = systems
                    .iter()
                    .zip(inboxes)
                    .map(|(s, inbox)| {
                        let mut system = serde_json::json!({
                            "inbox": inbox,
                            "system": s.system,
                            "pending": s.pending,
                            "oldest_pending_age_s": s.oldest_pending_age.map(|a| a.as_secs_f64()),
                            "dead": s.dead,
                            "job": self
                                .jobs
                                .as_ref()
                                .and_then(|j| j.progress(&s.system))
                                .map(|j| job_json(&j)),
                        });
                        if s.system == crate::config::ONEC_SYSTEM {
                            if let (Some(transport), Some(obj)) =
                                (self.onec_transport, system.as_object_mut())
                            {
                                // The 1C writer's transport, and under
                                // pull the rows 1C holds a lease on.
                                obj.insert("transport".into(), transport.into());
                                obj.insert("leased".into(), leased.into());
                            }
                        }
                        let sending = runtime.iter().find(|r| r.name == s.system);
                        if let (Some(sending), Some(obj)) = (sending, system.as_object_mut()) {
                            add_runtime(obj, sending);
                        }
                        system
                    })
                    .collect();
                let mut answer = serde_json::json!({ "systems": systems });
                if let Some(payments) = &self.payments {
                    match payments.status().await {
                        Ok(status) => answer["payments"] = payments_json(&status),
                        Err(e) => return unreadable("the payments' cursor", &e),
                    }
                }
                json(StatusCode::OK, &answer)
            }
            Err(e) => unreadable("the sync status", &e),
        }
    }

    /// `GET /api/v1/sync/outbox?system=&state=pending|dead|done&after=&limit=`:
    /// rows in id order and `next_after`, the `after` of the next page
    /// (`null` on the last); each with its write `outcome` where its
    /// system reports one (the 1C writer's). `done`: the rows a system
    /// confirmed (gone from the outbox), by their outcomes.
    pub async fn outbox(&self, req: &Request<Incoming>, client: Client) -> Response<Body> {
        let store = match self.checked(req, client) {
            Ok(store) => store,
            Err(refused) => return refused,
        };
        let query = match outbox_query(req.uri().query()) {
            Ok(query) => query,
            Err(message) => return json_error(StatusCode::BAD_REQUEST, &message),
        };
        if let Err(unknown) = self.known(query.system.as_deref()) {
            return unknown;
        }
        let limit = query.limit as usize;
        if query.state == Some(OutboxState::Done) {
            return match store
                .outcomes_done(query.system, query.after, query.limit)
                .await
            {
                Ok(done) => {
                    let next_after = match done.last() {
                        Some(last) if done.len() == limit => Some(last.outbox_id),
                        _ => None,
                    };
                    let rows: Vec<serde_json::Value> = done.iter().map(done_json).collect();
                    json(
                        StatusCode::OK,
                        &serde_json::json!({ "rows": rows, "next_after": next_after }),
                    )
                }
                Err(e) => unreadable("the write outcomes", &e),
            };
        }
        let rows = match store.outbox_page(query).await {
            Ok(rows) => rows,
            Err(e) => return unreadable("the outbox", &e),
        };
        let outcomes = match store.outcomes_of(rows.iter().map(|r| r.id).collect()).await {
            Ok(outcomes) => outcomes,
            Err(e) => return unreadable("the write outcomes", &e),
        };
        let next_after = match rows.last() {
            Some(last) if rows.len() == limit => Some(last.id),
            _ => None,
        };
        let rows: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let mut row = outbox_json(r);
                row["outcome"] = outcomes
                    .get(&r.id)
                    .map_or(serde_json::Value::Null, outcome_json);
                row
            })
            .collect();
        json(
            StatusCode::OK,
            &serde_json::json!({ "rows": rows, "next_after": next_after }),
        )
    }

    /// `POST /api/v1/sync/outbox/{id}/retry`.
    pub async fn retry(&self, req: &Request<Incoming>, client: Client) -> Response<Body> {
        if req.method() != Method::POST {
            let message = format!(
                "method {} is not allowed here: POST {OUTBOX_ROW}{{id}}/retry makes a dead row pending again",
                req.method()
            );
            let refused = json_error(StatusCode::METHOD_NOT_ALLOWED, &message);
            return with_header(refused, header::ALLOW, "POST");
        }
        let store = match self.checked(req, client) {
            Ok(store) => store,
            Err(refused) => return refused,
        };
        if let Err(refused) = no_query(req, client.request) {
            return refused;
        }
        let Some(id) = retry_id(req.uri().path()) else {
            return json_error(
                StatusCode::NOT_FOUND,
                &format!("no such endpoint: POST {OUTBOX_ROW}{{id}}/retry, with the row's id (a whole number from 1 on)"),
            );
        };
        match store.outbox_retry(id).await {
            Ok(RetryOutcome::Retried) => {
                tracing::info!(
                    id,
                    "sync: dead outbox row made pending again by the admin API"
                );
                json(
                    StatusCode::OK,
                    &serde_json::json!({ "id": id, "state": OutboxState::Pending.as_str() }),
                )
            }
            Ok(RetryOutcome::NotFound) => {
                json_error(StatusCode::NOT_FOUND, &format!("no outbox row {id}"))
            }
            Ok(RetryOutcome::Superseded { by }) => json_error(
                StatusCode::CONFLICT,
                &format!(
                    "outbox row {id} was superseded by row {by}, a later change of its record the system has confirmed: retrying it would send an older state over that one"
                ),
            ),
            Ok(RetryOutcome::NotDead) => json_error(
                StatusCode::CONFLICT,
                &format!("outbox row {id} is not dead: only a dead row can be retried"),
            ),
            Err(e) => {
                tracing::error!(id, error = %e, "sync: retrying an outbox row failed");
                json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!("outbox row {id} was not changed: {e}"),
                )
            }
        }
    }

    /// `GET /api/v1/sync/conflicts?system=&since=&limit=`: in the order
    /// they were recorded.
    pub async fn conflicts(&self, req: &Request<Incoming>, client: Client) -> Response<Body> {
        let store = match self.checked(req, client) {
            Ok(store) => store,
            Err(refused) => return refused,
        };
        let query = match conflict_query(req.uri().query()) {
            Ok(query) => query,
            Err(message) => return json_error(StatusCode::BAD_REQUEST, &message),
        };
        if let Err(unknown) = self.known(query.system.as_deref()) {
            return unknown;
        }
        match store.conflicts_page(query).await {
            Ok(conflicts) => {
                let conflicts: Vec<serde_json::Value> =
                    conflicts.iter().map(conflict_json).collect();
                json(
                    StatusCode::OK,
                    &serde_json::json!({ "conflicts": conflicts }),
                )
            }
            Err(e) => unreadable("the conflicts", &e),
        }
    }

    /// `GET /api/v1/sync/idmap.csv?system=`: `text/csv`, a header line, then
    /// a line per id-map row, streamed as the store reads it in chunks. A
    /// read that fails part-way breaks the answer off (no last chunk), so a
    /// cut export never passes for a whole one.
    pub async fn idmap_csv(&self, req: &Request<Incoming>, client: Client) -> Response<Body> {
        let store = match self.checked(req, client) {
            Ok(store) => store.clone(),
            Err(refused) => return refused,
        };
        let system = match idmap_system(req.uri().query()) {
            Ok(system) => system,
            Err(message) => return json_error(StatusCode::BAD_REQUEST, &message),
        };
        if let Err(unknown) = self.known(Some(&system)) {
            return unknown;
        }
        let (rows_tx, mut rows_rx) = mpsc::channel::<Vec<IdMapRow>>(1);
        let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, StreamError>>(EXPORT_BACKLOG);
        tokio::spawn(async move {
            let header = Bytes::from_static(CSV_HEADER.as_bytes());
            if body_tx.send(Ok(header)).await.is_err() {
                return;
            }
            let export = {
                let system = system.clone();
                tokio::spawn(async move { store.idmap_export(&system, rows_tx).await })
            };
            while let Some(rows) = rows_rx.recv().await {
                if body_tx.send(Ok(csv_lines(&rows))).await.is_err() {
                    // The client went away; the export stops at its next chunk.
                    return;
                }
            }
            let failed = match export.await {
                Ok(Ok(rows)) => {
                    tracing::debug!(system = %system, rows, "sync: id-map exported");
                    None
                }
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(format!("the export task failed: {e}")),
            };
            if let Some(error) = failed {
                tracing::error!(system = %system, error = %error, "sync: the id-map export broke off");
                let _ = body_tx.send(Err(StreamError(error))).await;
            }
        });
        let mut response = Response::new(Body::stream(body_rx));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/csv; charset=utf-8"),
        );
        response
    }
}

/// The first line of the id-map export.
const CSV_HEADER: &str = "kind,local_id,remote_id,remote_version,hash,closed_at\r\n";

/// Rows as CSV lines (RFC 4180: CRLF, fields quoted where they must be).
fn csv_lines(rows: &[IdMapRow]) -> Bytes {
    let mut out = String::with_capacity(rows.len() * 64);
    for r in rows {
        let hash = r.hash.map(|h| format!("{h:016x}")).unwrap_or_default();
        let closed = r
            .closed_at
            .map(|t| humantime::format_rfc3339_millis(t).to_string())
            .unwrap_or_default();
        let fields = [
            r.kind.as_str(),
            &r.local_id,
            r.remote_id.as_deref().unwrap_or(""),
            r.remote_version.as_deref().unwrap_or(""),
            &hash,
            &closed,
        ];
        for (i, field) in fields.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            csv_field(&mut out, field);
        }
        out.push_str("\r\n");
    }
    Bytes::from(out)
}

/// `field`, quoted (its quotes doubled) when it holds a comma, a quote or a
/// line break.
fn csv_field(out: &mut String, field: &str) {
    if field.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&field.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(field);
    }
}

/// The id of `/api/v1/sync/outbox/{id}/retry`; `None` for another path.
fn retry_id(path: &str) -> Option<i64> {
    let id = path.strip_prefix(OUTBOX_ROW)?.strip_suffix("/retry")?;
    // Digits only: no sign, no spaces, no leading `+`.
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    id.parse().ok().filter(|&id| id >= 1)
}

/// Whether `path` is `/api/v1/sync/outbox/{something}`: the retry route
/// takes it, and answers 404 itself when it is not `{id}/retry`.
/// The system of `/api/v1/sync/{system}/resume`, if `path` is one.
pub fn resume_system(path: &str) -> Option<&str> {
    let system = path
        .strip_prefix(SYSTEM_PREFIX)?
        .strip_suffix(RESUME_SUFFIX)?;
    (!system.is_empty() && !system.contains('/')).then_some(system)
}

pub fn is_outbox_row(path: &str) -> bool {
    path.strip_prefix(OUTBOX_ROW)
        .is_some_and(|rest| !rest.is_empty())
}

fn outbox_query(query: Option<&str>) -> Result<OutboxQuery, String> {
    let mut outbox = OutboxQuery {
        limit: DEFAULT_LIMIT,
        ..OutboxQuery::default()
    };
    for (name, value) in ApiQuery::parse(query, OUTBOX_PARAMETERS)?.pairs() {
        match name {
            "system" => outbox.system = Some(system_name(value)?),
            "state" => {
                outbox.state = match OutboxState::parse(value) {
                    Some(state) => Some(state),
                    None => return Err("state must be pending, dead or done".to_owned()),
                }
            }
            "after" => match value.parse::<i64>() {
                Ok(id) if id >= 0 => outbox.after = Some(id),
                _ => {
                    return Err("after must be an outbox row id (a whole number from 0 on), e.g. the next_after of the previous page".to_owned())
                }
            },
            "limit" => outbox.limit = limit(value)?,
            // `ApiQuery` let through only the names above.
            _ => {}
        }
    }
    Ok(outbox)
}

fn conflict_query(query: Option<&str>) -> Result<ConflictQuery, String> {
    let mut conflicts = ConflictQuery {
        limit: DEFAULT_LIMIT,
        ..ConflictQuery::default()
    };
    for (name, value) in ApiQuery::parse(query, CONFLICT_PARAMETERS)?.pairs() {
        match name {
            "system" => conflicts.system = Some(system_name(value)?),
            "since" => {
                let since = rfc3339::parse(value).map_err(|e| format!("since: {e}"))?;
                conflicts.since = Some(since);
            }
            "limit" => conflicts.limit = limit(value)?,
            _ => {}
        }
    }
    Ok(conflicts)
}

fn idmap_system(query: Option<&str>) -> Result<String, String> {
    let query = ApiQuery::parse(query, IDMAP_PARAMETERS)?;
    let system = query.pairs().next().map(|(_, value)| system_name(value));
    system.unwrap_or_else(|| {
        Err(
            "system is missing: give the system whose id-map to export, e.g. system=bitrix24"
                .to_owned(),
        )
    })
}

/// A system's name as a parameter: not empty.
fn system_name(value: &str) -> Result<String, String> {
    if value.is_empty() {
        return Err("system is empty: give a system's name, e.g. bitrix24".to_owned());
    }
    Ok(value.to_owned())
}

fn limit(value: &str) -> Result<u32, String> {
    match value.parse::<u32>() {
        Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        _ => Err(format!("limit must be a number from 1 to {MAX_PAGE}")),
    }
}

/// A sending system's state (why, since when, its last success) and its
/// limiter (rate, tokens, paused until) in its status entry.
fn add_runtime(obj: &mut serde_json::Map<String, serde_json::Value>, system: &SyncSystemView) {
    obj.insert("state".into(), system.state.into());
    obj.insert("reason".into(), system.reason.clone().into());
    obj.insert("since".into(), time(system.since).into());
    obj.insert("last_success".into(), system.last_success.map(time).into());
    obj.insert(
        "limiter".into(),
        serde_json::json!({
            "rate_per_second": system.rate_per_second,
            "tokens": system.tokens,
            "paused_until": system.paused_until.map(time),
        }),
    );
}

/// 503 for a read of the sync store that failed, logged.
fn unreadable(what: &str, e: &StoreError) -> Response<Body> {
    tracing::error!(error = %e, "sync: reading {what} failed");
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("{what} cannot be read: {e}"),
    )
}

fn time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// One outbox row as the API shows it; the body as the JSON it is (as a
/// string if it is not JSON).
fn outbox_json(r: &OutboxRow) -> serde_json::Value {
    let body = serde_json::from_str::<serde_json::Value>(&r.body)
        .unwrap_or_else(|_| serde_json::Value::String(r.body.clone()));
    serde_json::json!({
        "id": r.id,
        "system": r.system,
        "kind": r.kind,
        "record_key": r.record_key,
        "op": r.op.as_str(),
        "state": r.state.as_str(),
        "attempts": r.attempts,
        "next_at": time(r.next_at),
        "created_at": time(r.created_at),
        "last_error": r.last_error,
        "body": body,
    })
}

/// A row's write outcome as the outbox listing shows it.
fn outcome_json(o: &RowOutcome) -> serde_json::Value {
    serde_json::json!({
        "outcome": o.outcome.as_str(),
        "remote_ref": o.remote_ref,
        "remote_code": o.remote_code,
        "message": o.message,
        "at": time(o.at),
    })
}

/// A confirmed row (gone from the outbox) by its outcome.
fn done_json(o: &RowOutcome) -> serde_json::Value {
    serde_json::json!({
        "id": o.outbox_id,
        "system": o.system,
        "kind": o.kind,
        "record_key": o.record_key,
        "state": "done",
        "outcome": outcome_json(o),
    })
}

/// A system's initial load or relink as the status shows it.
fn job_json(j: &JobProgress) -> serde_json::Value {
    serde_json::json!({
        "kind": j.kind.as_str(),
        "state": j.state.as_str(),
        "started_at": time(j.started_at),
        "finished_at": j.finished_at.map(time),
        "total": j.total,
        "enqueued": j.enqueued,
        "sent": j.sent,
        "pending_bound": j.bound,
        "eta_seconds": j.eta_seconds,
        "seen": j.seen,
        "linked": j.linked,
        "unchanged": j.unchanged,
        "unmatched": j.unmatched,
        "error": j.error,
    })
}

fn conflict_json(c: &Conflict) -> serde_json::Value {
    serde_json::json!({
        "id": c.id,
        "at": time(c.at),
        "system": c.system,
        "record_key": c.record_key,
        "field": c.field,
        "ours": c.ours,
        "theirs": c.theirs,
        "resolution": c.resolution,
    })
}

/// The payments in the sync status: source, cursor (OData), the last
/// success and the lag since it, the last error while failing.
fn payments_json(status: &PaymentsStatus) -> serde_json::Value {
    let at = |t: SystemTime| humantime::format_rfc3339_millis(t).to_string();
    serde_json::json!({
        "source": status.source,
        "cursor": status.cursor.as_ref().map(|c| serde_json::json!({
            "date": c.date,
            "ref": c.ref_key,
            "updated_at": at(c.updated_at),
        })),
        "last_success": status.last_success.map(at),
        "lag_s": status.lag.map(|l| l.as_secs_f64()),
        "last_error": status.last_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_path_takes_a_positive_id_only() {
        assert_eq!(retry_id("/api/v1/sync/outbox/17/retry"), Some(17));
        for bad in [
            "/api/v1/sync/outbox/0/retry",
            "/api/v1/sync/outbox/-1/retry",
            "/api/v1/sync/outbox/+1/retry",
            "/api/v1/sync/outbox/x/retry",
            "/api/v1/sync/outbox//retry",
            "/api/v1/sync/outbox/17",
            "/api/v1/sync/outbox/99999999999999999999/retry",
        ] {
            assert_eq!(retry_id(bad), None, "{bad}");
        }
        assert!(is_outbox_row("/api/v1/sync/outbox/17/retry"));
        assert!(!is_outbox_row("/api/v1/sync/outbox/"));
    }

    #[test]
    fn parameters_are_checked_and_named() {
        let q = outbox_query(Some("system=crm&state=dead&after=5&limit=1000")).expect("query");
        assert_eq!(q.system.as_deref(), Some("crm"));
        assert_eq!(q.state, Some(OutboxState::Dead));
        assert_eq!((q.after, q.limit), (Some(5), 1000));
        assert_eq!(outbox_query(None).expect("none").limit, DEFAULT_LIMIT);
        assert_eq!(
            outbox_query(Some("state=done")).expect("done").state,
            Some(OutboxState::Done)
        );
        for (query, names) in [
            ("state=finished", "state"),
            ("limit=1001", "limit"),
            ("limit=0", "limit"),
            ("after=x", "after"),
            ("system=", "system"),
            ("sytem=crm", "'sytem'"),
        ] {
            let e = outbox_query(Some(query)).expect_err(query);
            assert!(e.contains(names), "{query}: {e}");
        }
        assert!(conflict_query(Some("since=yesterday"))
            .expect_err("bad time")
            .starts_with("since"));
        assert!(idmap_system(None).expect_err("missing").contains("system"));
    }

    #[test]
    fn csv_fields_are_quoted_where_they_must_be() {
        let rows = [IdMapRow {
            kind: "company".into(),
            local_id: "a,b".into(),
            remote_id: Some("say \"hi\"".into()),
            remote_version: None,
            hash: Some(255),
            closed_at: None,
        }];
        assert_eq!(
            &csv_lines(&rows)[..],
            b"company,\"a,b\",\"say \"\"hi\"\"\",,00000000000000ff,\r\n"
        );
    }
}
