//! How a sync system is doing, as its worker reports it: `ok`, `failing`
//! (its requests fail: retried with backoff), `limited` (it answered that
//! its limit was hit: paused until it said), `blocked` (it refuses all work
//! until someone acts: probes only). With a reason and since when, as a
//! source's health is kept ([`crate::sources::SourceHealth`]): one log line
//! when the state changes, none on every retry.
//!
//! `/readyz` shows each system under `sync.<system>` (a CRM never makes the
//! gateway unready: calls go on), `cti_sync_state{system,state}` is 1 for
//! the current state and 0 for the others, and `GET /api/v1/sync/status`
//! adds the state to each system's queue.

use std::fmt;
use std::sync::Mutex;
use std::time::SystemTime;

use prometheus::IntGaugeVec;

/// A sync system's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    Ok,
    Failing,
    Limited,
    Blocked,
}

impl SyncState {
    pub const ALL: [SyncState; 4] = [
        SyncState::Ok,
        SyncState::Failing,
        SyncState::Limited,
        SyncState::Blocked,
    ];

    /// Its name in `/readyz`, the status API and `cti_sync_state`.
    pub fn name(self) -> &'static str {
        match self {
            SyncState::Ok => "ok",
            SyncState::Failing => "failing",
            SyncState::Limited => "limited",
            SyncState::Blocked => "blocked",
        }
    }

    /// Whether `/readyz` lists the system in `failing_sources`: it sends
    /// nothing and will not until it answers (a limit passes by itself).
    pub fn is_failing(self) -> bool {
        matches!(self, SyncState::Failing | SyncState::Blocked)
    }
}

impl fmt::Display for SyncState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A system's health as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncReport {
    pub state: SyncState,
    /// Why it is not `ok` (the last failure, the block's reason, the limit);
    /// `None` while `ok`. May name hosts: `/readyz` shows it only to
    /// `metrics.allow_from`.
    pub reason: Option<String>,
    /// When the system entered this state (for `ok`: since the gateway
    /// started, or since it recovered).
    pub since: SystemTime,
    /// The last request the system answered well.
    pub last_success: Option<SystemTime>,
    /// While `limited`: until when it asked us to wait.
    pub limited_until: Option<SystemTime>,
}

/// One system's health, shared by its worker (which reports) and the
/// endpoints (which read).
#[derive(Debug)]
pub struct SyncHealth {
    system: String,
    gauge: IntGaugeVec,
    report: Mutex<SyncReport>,
}

impl SyncHealth {
    /// `system` starts `ok`, its `cti_sync_state` series on `gauge` (labels
    /// `system`, `state`) set accordingly.
    pub fn new(system: &str, gauge: IntGaugeVec) -> SyncHealth {
        let health = SyncHealth {
            system: system.to_owned(),
            gauge,
            report: Mutex::new(SyncReport {
                state: SyncState::Ok,
                reason: None,
                since: SystemTime::now(),
                last_success: None,
                limited_until: None,
            }),
        };
        health.set_gauge(SyncState::Ok);
        health
    }

    pub fn system(&self) -> &str {
        &self.system
    }

    /// The system answered a request well.
    pub fn ok(&self) {
        let now = SystemTime::now();
        self.enter(SyncState::Ok, None, None, Some(now));
    }

    /// The system's requests fail (5xx, timeout, refused, malformed): it is
    /// retried with backoff.
    pub fn failing(&self, reason: &str) {
        self.enter(SyncState::Failing, Some(reason), None, None);
    }

    /// The system answered that its limit was hit: nothing is sent to it
    /// before `until`.
    pub fn limited(&self, until: SystemTime) {
        let reason = format!(
            "the system's rate limit was hit: paused until {}",
            humantime::format_rfc3339_seconds(until)
        );
        self.enter(SyncState::Limited, Some(&reason), Some(until), None);
    }

    /// The system refuses all work until someone acts (unblocks the
    /// account): nothing but a probe now and then is sent.
    pub fn blocked(&self, reason: &str) {
        self.enter(SyncState::Blocked, Some(reason), None, None);
    }

    pub fn state(&self) -> SyncState {
        self.lock().state
    }

    pub fn report(&self) -> SyncReport {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SyncReport> {
        self.report.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves to `state` (or stays, the reason updated); logs a change once.
    fn enter(
        &self,
        state: SyncState,
        reason: Option<&str>,
        limited_until: Option<SystemTime>,
        success: Option<SystemTime>,
    ) {
        let mut report = self.lock();
        if let Some(at) = success {
            report.last_success = Some(at);
        }
        report.reason = reason.map(str::to_owned);
        report.limited_until = limited_until;
        let was = report.state;
        if was == state {
            return;
        }
        let now = SystemTime::now();
        let lasted = now
            .duration_since(report.since)
            .map(|d| humantime::format_duration(std::time::Duration::from_secs(d.as_secs())))
            .map(|d| d.to_string())
            .unwrap_or_default();
        report.state = state;
        report.since = now;
        drop(report);
        self.set_gauge(state);
        let system = self.system.as_str();
        // One line per change, naming the state left and how long it lasted.
        match state {
            SyncState::Ok => tracing::info!(
                system,
                state = state.name(),
                was = was.name(),
                lasted = %lasted,
                "sync: the system answers again; sending resumes"
            ),
            SyncState::Limited => tracing::info!(
                system,
                state = state.name(),
                was = was.name(),
                lasted = %lasted,
                reason,
                "sync: the system's rate limit was hit; sending paused"
            ),
            SyncState::Failing => tracing::warn!(
                system,
                state = state.name(),
                was = was.name(),
                lasted = %lasted,
                reason,
                "sync: requests to the system fail; retrying with backoff, changes keep queuing"
            ),
            SyncState::Blocked => tracing::error!(
                system,
                state = state.name(),
                was = was.name(),
                lasted = %lasted,
                reason,
                "sync: the system blocks the gateway; sending stopped, changes keep queuing, a probe now and then (or POST /api/v1/sync/{system}/resume once unblocked)"
            ),
        }
    }

    fn set_gauge(&self, current: SyncState) {
        for state in SyncState::ALL {
            self.gauge
                .with_label_values(&[self.system.as_str(), state.name()])
                .set(i64::from(state == current));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge() -> IntGaugeVec {
        IntGaugeVec::new(
            prometheus::Opts::new("cti_sync_state", "test"),
            &["system", "state"],
        )
        .expect("gauge")
    }

    fn value(gauge: &IntGaugeVec, state: &str) -> i64 {
        gauge.with_label_values(&["crm", state]).get()
    }

    #[test]
    fn states_change_with_reason_since_and_gauge() {
        let gauge = gauge();
        let health = SyncHealth::new("crm", gauge.clone());
        assert_eq!(health.state(), SyncState::Ok);
        assert_eq!(value(&gauge, "ok"), 1);
        assert_eq!(value(&gauge, "blocked"), 0);

        health.failing("503 from the system");
        let first = health.report();
        assert_eq!(first.state, SyncState::Failing);
        assert_eq!(first.reason.as_deref(), Some("503 from the system"));
        assert_eq!((value(&gauge, "ok"), value(&gauge, "failing")), (0, 1));
        // Another failure keeps the state and its start, the reason is the last.
        health.failing("timeout");
        let again = health.report();
        assert_eq!(again.since, first.since);
        assert_eq!(again.reason.as_deref(), Some("timeout"));

        let until = SystemTime::now() + std::time::Duration::from_secs(2);
        health.limited(until);
        let limited = health.report();
        assert_eq!(limited.state, SyncState::Limited);
        assert_eq!(limited.limited_until, Some(until));
        assert!(!limited.state.is_failing());

        health.blocked("403: the account is blocked");
        assert!(health.state().is_failing());
        assert_eq!((value(&gauge, "limited"), value(&gauge, "blocked")), (0, 1));
        assert_eq!(health.report().limited_until, None);

        health.ok();
        let ok = health.report();
        assert_eq!((ok.state, ok.reason), (SyncState::Ok, None));
        assert!(ok.last_success.is_some());
        let sum: i64 = SyncState::ALL.iter().map(|s| value(&gauge, s.name())).sum();
        assert_eq!((sum, value(&gauge, "ok")), (1, 1));
    }
}
