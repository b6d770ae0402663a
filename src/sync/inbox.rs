//! The inbox (issue 18 items 7 and 8): what a system's webhooks reported,
//! committed before their 2xx (`http/webhook.rs`), applied here in the
//! order received.
//!
//! A task per system reads its pending rows in id order, parses each
//! stored body again with the system's [`System::parse`] and hands every
//! record to the inbound policy ([`Applier::apply`]), then deletes the row
//! (a read batch's applied rows together, in one transaction once the
//! batch is done). The delete is its own transaction, after the effects (the inbound
//! policy writes in several steps, none of which takes the inbox with it):
//! a crash between the two applies the row again at the next start, which
//! the policy's echo rule makes harmless (the record equals what the
//! id-map holds: nothing is written).
//!
//! A row that fails to apply is tried again after a growing wait, the rows
//! after it waiting (a record's changes stay in order); after
//! [`MAX_ATTEMPTS`], or at once when it can never apply (its body no
//! longer parses, a record the policy refuses as invalid), it is set aside
//! as `failed`, logged and counted, and the task goes on.
//!
//! The work runs on the lowest-priority thread ([`LowPriority`]): applying
//! a record rebuilds the directory's CRM-only source and writes the sync
//! store, CPU the calls' threads must not wait behind (a burst of webhooks
//! after a CRM's bulk edit is thousands of records).

use std::sync::Arc;
use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry as Prometheus};
use tokio::sync::{watch, Notify};

use crate::logging::Escaped;
use crate::sources::LowPriority;
use crate::store::{InboxRow, Store};

use super::inbound::{Applier, InboundError, Outcome};
use super::registry::Registry;
use super::system::{Headers, System, Webhook};

/// Attempts at a row before it is set aside as `failed`.
pub const MAX_ATTEMPTS: u32 = 5;
/// The first wait before a failed row is tried again; doubled each time.
const RETRY_FIRST: Duration = Duration::from_millis(500);
/// Rows read at once.
const BATCH: u32 = 100;
/// How often an idle task looks at its inbox without being woken (a
/// wake-up lost to a failed commit's answer costs at most this).
const IDLE_POLL: Duration = Duration::from_secs(5);
/// The wait after the inbox could not be read.
const READ_RETRY: Duration = Duration::from_secs(5);

/// A webhook as the inbox keeps it: what [`System::parse`] needs again
/// besides the body (the hook's name, the content type). Never the secret
/// segment or the headers that authenticated it: the row was authenticated
/// when it was received.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stored {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub content_type: Option<String>,
    pub body: String,
}

impl Stored {
    /// The inbox row's text.
    pub fn encode(&self) -> String {
        // A struct of strings always serializes.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn decode(text: &str) -> Result<Stored, String> {
        serde_json::from_str(text).map_err(|e| format!("the stored webhook does not read: {e}"))
    }

    /// Calls `f` with the hook as [`System::parse`] takes it.
    pub fn with_hook<T>(&self, f: impl FnOnce(&Webhook<'_>) -> T) -> T {
        let headers: Vec<(&str, &[u8])> = self
            .content_type
            .as_deref()
            .map(|ct| ("content-type", ct.as_bytes()))
            .into_iter()
            .collect();
        let hook = Webhook {
            name: self.name.as_deref(),
            secret: None,
            headers: Headers(&headers),
            body: self.body.as_bytes(),
        };
        f(&hook)
    }
}

/// `cti_sync_inbox_*` and `cti_sync_echoes_suppressed_total`.
#[derive(Clone)]
pub struct InboxMetrics {
    received: IntCounterVec,
    refused: IntCounterVec,
    applied: IntCounterVec,
    failed: IntCounterVec,
    echoes: IntCounterVec,
}

/// The reasons of `cti_sync_inbox_refused_total`.
pub const REFUSAL_REASONS: &[&str] = &[
    "address",
    "too_large",
    "unauthenticated",
    "malformed",
    "full",
    "commit_failed",
];

impl InboxMetrics {
    /// Registered on `registry`, each system's series at 0.
    pub fn new(
        registry: &Prometheus,
        systems: &Registry,
    ) -> Result<InboxMetrics, prometheus::Error> {
        let received = IntCounterVec::new(
            Opts::new(
                "cti_sync_inbox_received_total",
                "Webhooks a system sent that were committed to its inbox (then answered 2xx).",
            ),
            &["system"],
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "cti_sync_inbox_refused_total",
                "Webhooks refused, nothing stored, by reason: address (not in sync.<system>.allow_from), too_large (over 1 MiB), unauthenticated, malformed, full (sync.max_pending rows waiting), commit_failed.",
            ),
            &["system", "reason"],
        )?;
        let applied = IntCounterVec::new(
            Opts::new(
                "cti_sync_inbox_applied_total",
                "Inbox rows applied to the directory and deleted.",
            ),
            &["system"],
        )?;
        let failed = IntCounterVec::new(
            Opts::new(
                "cti_sync_inbox_failed_total",
                "Inbox rows set aside as failed (they never applied); the rows after them went on.",
            ),
            &["system"],
        )?;
        let echoes = IntCounterVec::new(
            Opts::new(
                "cti_sync_echoes_suppressed_total",
                "Records a system reported that equal what was last sent to it or taken from it (our own change coming back): nothing written.",
            ),
            &["system"],
        )?;
        for counter in [&received, &refused, &applied, &failed, &echoes] {
            registry.register(Box::new(counter.clone()))?;
        }
        for system in systems.systems() {
            let name = system.name();
            received.with_label_values(&[name]);
            applied.with_label_values(&[name]);
            failed.with_label_values(&[name]);
            echoes.with_label_values(&[name]);
            for reason in REFUSAL_REASONS {
                refused.with_label_values(&[name, reason]);
            }
        }
        Ok(InboxMetrics {
            received,
            refused,
            applied,
            failed,
            echoes,
        })
    }

    pub fn received(&self, system: &str) {
        self.received.with_label_values(&[system]).inc();
    }

    /// A webhook refused for `reason` (one of [`REFUSAL_REASONS`]).
    pub fn refused(&self, system: &str, reason: &'static str) {
        self.refused.with_label_values(&[system, reason]).inc();
    }

    fn applied(&self, system: &str) {
        self.applied.with_label_values(&[system]).inc();
    }

    fn failed(&self, system: &str) {
        self.failed.with_label_values(&[system]).inc();
    }

    fn echo(&self, system: &str) {
        self.echoes.with_label_values(&[system]).inc();
    }
}

/// One system's inbox task; `wake` is what the webhook endpoint notifies
/// once a row is committed.
pub struct InboxTask {
    system: Arc<dyn System>,
    applier: Arc<Applier>,
    store: Store,
    metrics: InboxMetrics,
    wake: Arc<Notify>,
}

impl InboxTask {
    pub fn new(
        system: Arc<dyn System>,
        applier: Arc<Applier>,
        store: Store,
        metrics: InboxMetrics,
        wake: Arc<Notify>,
    ) -> InboxTask {
        InboxTask {
            system,
            applier,
            store,
            metrics,
            wake,
        }
    }

    /// Applies the inbox until `stop`: rows left from before a restart
    /// first, then each as it is committed.
    pub(crate) async fn run(self, low: Arc<LowPriority>, mut stop: watch::Receiver<bool>) {
        let name = self.system.spec().name().to_owned();
        loop {
            if *stop.borrow() {
                return;
            }
            let rows = match self.store.inbox_pending(&name, 0, BATCH).await {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::error!(system = %name, error = %e, "sync inbox: reading the inbox failed; tried again");
                    if sleep_or_stop(READ_RETRY, &mut stop).await {
                        return;
                    }
                    continue;
                }
            };
            if rows.is_empty() {
                tokio::select! {
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(IDLE_POLL) => {}
                    _ = stop.changed() => {}
                }
                continue;
            }
            // The applied rows are deleted together once the read batch is
            // done (one commit, not one per row: with a CRM that sends a
            // record per hook, a per-row delete was a third of each row's
            // commits). Still only after their effects are committed; a
            // crash before the delete applies them again, echoes.
            let mut applied = Vec::new();
            let mut stopped = false;
            for row in rows {
                match self.settle(row, &low, &mut stop).await {
                    Ok(Some(id)) => applied.push(id),
                    Ok(None) => {}
                    Err(Stopped) => {
                        stopped = true;
                        break;
                    }
                }
            }
            if let Err(e) = self.store.inbox_delete_many(applied).await {
                // Read and applied again on the next pass: echoes then.
                tracing::error!(system = %name, error = %e, "sync inbox: applied rows could not be deleted; they are applied again");
                if sleep_or_stop(READ_RETRY, &mut stop).await {
                    return;
                }
            }
            if stopped {
                return;
            }
        }
    }

    /// Applies `row` (retrying), or sets it aside: `Some(id)` when applied,
    /// for the caller to delete. `Err`: stopped.
    async fn settle(
        &self,
        row: InboxRow,
        low: &Arc<LowPriority>,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Option<i64>, Stopped> {
        let name = self.system.spec().name();
        let mut wait = RETRY_FIRST;
        let mut attempt = 1;
        let failure = loop {
            let system = Arc::clone(&self.system);
            let applier = Arc::clone(&self.applier);
            let body = row.body.clone();
            let metrics = self.metrics.clone();
            let applying = low.run_future("sync inbox", async move {
                apply_row(&*system, &applier, &body, &metrics).await
            });
            let outcome = tokio::select! {
                done = applying => done.map_err(|e| Failure::Transient(e.to_string())).and_then(|r| r),
                _ = stop.wait_for(|s| *s) => return Err(Stopped),
            };
            match outcome {
                Ok(()) => break None,
                Err(Failure::Permanent(why)) => break Some(why),
                Err(Failure::Transient(why)) if attempt >= MAX_ATTEMPTS => break Some(why),
                Err(Failure::Transient(why)) => {
                    tracing::warn!(system = name, row = row.id, attempt, error = %Escaped(&why), retry_in = ?wait, "sync inbox: a row did not apply; tried again (the rows after it wait)");
                    if sleep_or_stop(wait, stop).await {
                        return Err(Stopped);
                    }
                    wait = (wait * 2).min(Duration::from_secs(30));
                    attempt += 1;
                }
            }
        };
        let Some(why) = failure else {
            self.metrics.applied(name);
            return Ok(Some(row.id));
        };
        tracing::error!(system = name, row = row.id, attempts = attempt, error = %Escaped(&why), "sync inbox: a row set aside as failed, never applied; the rows after it go on (it stays in the inbox table, state 'failed')");
        self.metrics.failed(name);
        if let Err(e) = self.store.inbox_fail(row.id).await {
            // Read and tried again on the next pass.
            tracing::error!(system = name, row = row.id, error = %e, "sync inbox: a failed row could not be set aside; it is tried again");
            if sleep_or_stop(READ_RETRY, stop).await {
                return Err(Stopped);
            }
        }
        Ok(None)
    }
}

struct Stopped;

enum Failure {
    /// Never applies, however often tried.
    Permanent(String),
    /// May apply later (the store, the CRM-only source).
    Transient(String),
}

/// Parses a stored webhook and applies each of its records in order.
async fn apply_row(
    system: &dyn System,
    applier: &Applier,
    text: &str,
    metrics: &InboxMetrics,
) -> Result<(), Failure> {
    let stored = Stored::decode(text).map_err(Failure::Permanent)?;
    let records = stored
        .with_hook(|hook| system.parse(hook))
        .map_err(|e| Failure::Permanent(e.to_string()))?;
    for inbound in records {
        match applier.apply(inbound).await {
            Ok(Outcome::Echo) => metrics.echo(applier.system()),
            Ok(_) => {}
            Err(e @ (InboundError::Invalid { .. } | InboundError::WrongSystem { .. })) => {
                return Err(Failure::Permanent(e.to_string()))
            }
            Err(e) => return Err(Failure::Transient(e.to_string())),
        }
    }
    Ok(())
}

/// Sleeps `wait`; true when stopped meanwhile.
async fn sleep_or_stop(wait: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    let stopped = tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        _ = stop.wait_for(|s| *s) => true,
    };
    stopped || *stop.borrow()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_hook_reads_back_as_it_was_received() {
        let stored = Stored {
            name: Some("company".into()),
            content_type: Some("application/json".into()),
            body: "{\"id\":\"7\"}".into(),
        };
        let back = Stored::decode(&stored.encode()).expect("reads back");
        assert_eq!(back, stored);
        back.with_hook(|hook| {
            assert_eq!(hook.name, Some("company"));
            assert_eq!(hook.secret, None);
            assert_eq!(
                hook.headers.get("Content-Type").map(|v| v.as_bytes()),
                Some(&b"application/json"[..])
            );
            assert_eq!(hook.body, b"{\"id\":\"7\"}");
        });
        assert!(Stored::decode("not json").is_err());
    }
}
