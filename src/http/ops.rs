//! What operations people and their tools read: `GET /metrics`
//! (Prometheus), `GET /healthz` (alive) and `GET /readyz` (a directory is
//! loaded; which sources are failing; each sync system's state under
//! `sync.<system>`, never a reason to be unready).
//!
//! `/readyz` is open to everyone (load balancers probe it), but the texts
//! of its errors (a source's `last_error`, a certificate reload's) name
//! hosts, files and what 1C answered: only the addresses
//! `metrics.allow_from` lets read `/metrics` get them.

use std::sync::Arc;
use std::time::SystemTime;

use hyper::{Response, StatusCode};

use super::respond::{self, json, text, Body};
use crate::directory::Directory;
use crate::metrics::Metrics;
use crate::sources::SourceHealth;

use super::tls::Tls;

pub const METRICS: &str = "/metrics";
pub const HEALTHZ: &str = "/healthz";
pub const READYZ: &str = "/readyz";

/// The operations endpoints, built once at start-up.
pub struct Ops {
    directory: Arc<Directory>,
    health: Arc<SourceHealth>,
    metrics: Arc<Metrics>,
    /// The listener's TLS, whose certificate `/readyz` reports.
    tls: Option<Arc<Tls>>,
    /// Whether the sync store opened (`Ok`), or why not; `None` on a
    /// gateway that does not sync.
    sync: Option<Result<(), String>>,
    /// The sending systems' state, shown under `sync.<system>`.
    sync_systems: Option<SyncSystemsView>,
}

/// A sending system as `/readyz` and the sync status API show it: what the
/// sync runtime reports of its health and its limiter, in this layer's
/// terms (`http` does not import `sync`; the gateway fills it).
#[derive(Debug, Clone, PartialEq)]
pub struct SyncSystemView {
    pub name: String,
    /// `ok`, `failing`, `limited` or `blocked`.
    pub state: &'static str,
    /// `failing` or `blocked`: listed in `failing_sources`.
    pub failing: bool,
    /// Why it is not `ok`; may name hosts (`metrics.allow_from` only).
    pub reason: Option<String>,
    pub since: SystemTime,
    pub last_success: Option<SystemTime>,
    pub limited_until: Option<SystemTime>,
    /// The limiter: its long-run rate, what it would send at once now, and
    /// until when a limit answer paused it.
    pub rate_per_second: f64,
    pub tokens: f64,
    pub paused_until: Option<SystemTime>,
}

/// Each sending system as it stands now, by name.
pub type SyncSystemsView = Arc<dyn Fn() -> Vec<SyncSystemView> + Send + Sync>;

impl Ops {
    pub fn new(directory: Arc<Directory>, health: Arc<SourceHealth>, metrics: Arc<Metrics>) -> Ops {
        Ops {
            directory,
            health,
            metrics,
            tls: None,
            sync: None,
            sync_systems: None,
        }
    }

    /// `/readyz` reports the sync store as open.
    pub fn report_sync_open(&mut self) {
        self.sync = Some(Ok(()));
    }

    /// `/readyz` reports the sync store as failed to open, and why: never
    /// a reason to be unready (calls go on), but nothing is synced.
    pub fn report_sync_failure(&mut self, why: String) {
        self.sync = Some(Err(why));
    }

    /// `/readyz` reports each of these sending systems' state under
    /// `sync.<system>`.
    pub fn report_sync_systems(&mut self, systems: SyncSystemsView) {
        self.sync_systems = Some(systems);
    }

    /// `/readyz` reports this TLS's certificate.
    pub fn report_tls(&mut self, tls: Arc<Tls>) {
        self.tls = Some(tls);
    }

    /// `GET /healthz`: the process answers.
    pub fn healthz(&self) -> Response<Body> {
        text(StatusCode::OK, "ok\n")
    }

    /// `GET /metrics`: the gauges that mirror the directory and the sources
    /// are set from them now, then everything is rendered.
    pub fn metrics(&self) -> Response<Body> {
        let index = self.directory.snapshot();
        let m = &self.metrics;
        m.ready.set(i64::from(index.is_loaded()));
        m.directory_counterparties.set(index.len() as i64);
        m.directory_phones.set(index.phone_count() as i64);
        m.directory_ambiguous_phones
            .set(index.ambiguous_phones() as i64);
        for info in index.sources() {
            m.source_records
                .with_label_values(&[&*info.name])
                .set(info.records as i64);
        }
        for (name, state) in self.health.report() {
            let last = state
                .last_success
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map_or(0.0, |d| d.as_secs_f64());
            m.source_last_success.with_label_values(&[&name]).set(last);
            m.source_consecutive_failures
                .with_label_values(&[&name])
                .set(i64::from(state.consecutive_failures));
        }
        respond::bytes(m.render(), "text/plain; version=0.0.4; charset=utf-8")
    }

    /// `GET /readyz`: 200 once a directory is loaded (from a source or the
    /// snapshot), with each source's state; 503 only before that. The
    /// errors' texts only `with_errors` (for `metrics.allow_from`).
    pub fn readyz(&self, with_errors: bool) -> Response<Body> {
        let index = self.directory.snapshot();
        let mut sources = serde_json::Map::new();
        for info in index.sources() {
            sources.insert(
                info.name.to_string(),
                serde_json::json!({
                    "records": info.records,
                    "loaded_at": rfc3339(info.loaded_at),
                }),
            );
        }
        let mut failing = self.add_health(&mut sources, with_errors);
        let ready = index.is_loaded();
        let mut body = serde_json::json!({
            "ready": ready,
            "counterparties": index.len(),
            "phones": index.phone_count(),
            "sources": sources,
            "failing_sources": failing,
        });
        if let (Some(sync), Some(obj)) = (&self.sync, body.as_object_mut()) {
            let mut report = match sync {
                Ok(()) => serde_json::json!({ "store": "ok" }),
                Err(why) if with_errors => serde_json::json!({ "store": "failed", "error": why }),
                Err(_) => serde_json::json!({ "store": "failed" }),
            };
            if let (Some(systems), Some(report)) = (&self.sync_systems, report.as_object_mut()) {
                for system in systems() {
                    if system.failing {
                        failing.push(format!("sync.{}", system.name));
                    }
                    report.insert(system.name.clone(), readiness(system, with_errors));
                }
            }
            if let Some(failing_sources) = obj.get_mut("failing_sources") {
                *failing_sources = failing.clone().into();
            }
            obj.insert("sync".into(), report);
        }
        if let (Some(tls), Some(obj)) = (&self.tls, body.as_object_mut()) {
            // A failed reload leaves the old certificate serving: reported,
            // never a reason to be unready.
            let mut report = tls.report();
            let state = if report.reload_error.is_some() {
                "reload_failed"
            } else {
                "ok"
            };
            if !with_errors {
                report.reload_error = None;
            }
            obj.insert(
                "tls".into(),
                serde_json::json!({
                    "state": state,
                    "certificate_expires": report.expires.map(rfc3339),
                    "last_reload_error": report.reload_error,
                }),
            );
        }
        let status = if ready {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json(status, &body)
    }

    /// Adds each source's health to its entry in `sources` (creating the
    /// entry for a source that has loaded nothing), its last error's text
    /// only `with_errors`; the failing sources.
    fn add_health(
        &self,
        sources: &mut serde_json::Map<String, serde_json::Value>,
        with_errors: bool,
    ) -> Vec<String> {
        let mut failing = Vec::new();
        for (name, state) in self.health.report() {
            let entry = sources
                .entry(name.clone())
                .or_insert_with(|| serde_json::json!({ "records": 0 }));
            let Some(obj) = entry.as_object_mut() else {
                continue;
            };
            let word = if state.failing_since.is_some() {
                "failing"
            } else {
                "ok"
            };
            obj.insert("state".into(), word.into());
            obj.insert(
                "last_success".into(),
                state.last_success.map(rfc3339).into(),
            );
            obj.insert(
                "consecutive_failures".into(),
                state.consecutive_failures.into(),
            );
            if let Some(since) = state.failing_since {
                obj.insert("failing_since".into(), rfc3339(since).into());
                if with_errors {
                    obj.insert("last_error".into(), state.last_error.into());
                }
                failing.push(name);
            }
        }
        failing
    }
}

/// A sending system under `sync.<system>`: its state, since when, its last
/// success and (only `with_errors`: it may name hosts) why it is not ok.
fn readiness(system: SyncSystemView, with_errors: bool) -> serde_json::Value {
    let mut json = serde_json::json!({
        "state": system.state,
        "since": rfc3339(system.since),
        "last_success": system.last_success.map(rfc3339),
    });
    if let Some(obj) = json.as_object_mut() {
        if let Some(until) = system.limited_until {
            obj.insert("limited_until".into(), rfc3339(until).into());
        }
        if with_errors && system.reason.is_some() {
            obj.insert("reason".into(), system.reason.into());
        }
    }
    json
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
