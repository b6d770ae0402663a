//! The sending runtime's metrics: requests to each system by method and
//! outcome, and
//! each system's outbox (depth, oldest pending age, dead rows: the counts
//! `GET /api/v1/sync/status` shows, from `Store::sync_status`).

use prometheus::{GaugeVec, IntCounterVec, IntGaugeVec, Opts, Registry};

use crate::sync::system::Outcome;

/// Which of the system's calls a request was, as `cti_sync_requests_total`
/// labels it (`method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `System::send`: a batch of rows (a blocked system's probe too).
    Send,
    /// `System::find_existing`: the lookup before a create.
    FindExisting,
    /// `System::list_linked`: a page of a relink's list.
    List,
}

impl Method {
    const ALL: [Method; 3] = [Method::Send, Method::FindExisting, Method::List];

    pub fn name(self) -> &'static str {
        match self {
            Method::Send => "send",
            Method::FindExisting => "find_existing",
            Method::List => "list",
        }
    }
}

/// What became of a request to a system, as `cti_sync_requests_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// The system answered (at least one row confirmed or refused for good,
    /// or a lookup answered).
    Ok,
    /// Every row is to be tried again (5xx, refused connection, malformed
    /// answer).
    Retry,
    /// No answer within `[sync.<system>] timeout`.
    Timeout,
    /// The system's limit was hit.
    Limited,
    /// The system refuses all work.
    Blocked,
}

impl RequestOutcome {
    const ALL: [RequestOutcome; 5] = [
        RequestOutcome::Ok,
        RequestOutcome::Retry,
        RequestOutcome::Timeout,
        RequestOutcome::Limited,
        RequestOutcome::Blocked,
    ];

    /// How a request whose rows came to `outcomes` is counted.
    pub fn of(outcomes: &[Outcome]) -> RequestOutcome {
        if outcomes.iter().any(|o| matches!(o, Outcome::Blocked(_))) {
            RequestOutcome::Blocked
        } else if outcomes
            .iter()
            .any(|o| matches!(o, Outcome::Limited { .. }))
        {
            RequestOutcome::Limited
        } else if outcomes
            .iter()
            .any(|o| matches!(o, Outcome::Confirmed(_) | Outcome::Permanent(_)))
        {
            RequestOutcome::Ok
        } else {
            RequestOutcome::Retry
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RequestOutcome::Ok => "ok",
            RequestOutcome::Retry => "retry",
            RequestOutcome::Timeout => "timeout",
            RequestOutcome::Limited => "limited",
            RequestOutcome::Blocked => "blocked",
        }
    }
}

/// `cti_sync_requests_total`, `cti_sync_outbox_*`.
#[derive(Clone)]
pub struct RuntimeMetrics {
    requests: IntCounterVec,
    depth: IntGaugeVec,
    oldest: GaugeVec,
    dead: IntGaugeVec,
}

impl RuntimeMetrics {
    /// Registered on `registry`, each of `systems`' series at 0.
    pub fn new(registry: &Registry, systems: &[&str]) -> Result<RuntimeMetrics, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "cti_sync_requests_total",
                "Requests the sync runtime made to each system, by method (send, find_existing: the lookup before a create, list: a relink's pages) and outcome (ok, retry, timeout, limited, blocked).",
            ),
            &["system", "method", "outcome"],
        )?;
        let depth = IntGaugeVec::new(
            Opts::new(
                "cti_sync_outbox_pending",
                "Outbox rows waiting to be sent to each system.",
            ),
            &["system"],
        )?;
        let oldest = GaugeVec::new(
            Opts::new(
                "cti_sync_outbox_oldest_pending_seconds",
                "Age of the oldest outbox row waiting for each system (0 when none waits).",
            ),
            &["system"],
        )?;
        let dead = IntGaugeVec::new(
            Opts::new(
                "cti_sync_outbox_dead",
                "Outbox rows given up on (dead) for each system: see GET /api/v1/sync/outbox?state=dead, retry with POST /api/v1/sync/outbox/{id}/retry.",
            ),
            &["system"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(depth.clone()))?;
        registry.register(Box::new(oldest.clone()))?;
        registry.register(Box::new(dead.clone()))?;
        for system in systems {
            for method in Method::ALL {
                for outcome in RequestOutcome::ALL {
                    requests.with_label_values(&[system, method.name(), outcome.name()]);
                }
            }
            depth.with_label_values(&[system]);
            oldest.with_label_values(&[system]);
            dead.with_label_values(&[system]);
        }
        Ok(RuntimeMetrics {
            requests,
            depth,
            oldest,
            dead,
        })
    }

    pub fn request(&self, system: &str, method: Method, outcome: RequestOutcome) {
        self.requests
            .with_label_values(&[system, method.name(), outcome.name()])
            .inc();
    }

    /// Sets `system`'s outbox gauges.
    pub fn outbox(&self, system: &str, status: Option<&crate::store::SystemStatus>) {
        let (pending, oldest, dead) = status.map_or((0, 0.0, 0), |s| {
            (
                s.pending,
                s.oldest_pending_age.map_or(0.0, |a| a.as_secs_f64()),
                s.dead,
            )
        });
        self.depth
            .with_label_values(&[system])
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.oldest.with_label_values(&[system]).set(oldest);
        self.dead
            .with_label_values(&[system])
            .set(i64::try_from(dead).unwrap_or(i64::MAX));
    }
}
