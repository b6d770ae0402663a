//! The sync module's metrics: the change feed's and the duplicate refusals.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use super::registry::Registry as Systems;

/// `cti_sync_feed_*`, `cti_sync_reconciles_total`, `cti_sync_duplicates_refused_total`.
#[derive(Clone)]
pub struct FeedMetrics {
    enqueued: IntCounterVec,
    held_back: IntCounterVec,
    pub(super) overflows: IntCounter,
    reconciles: IntCounterVec,
    duplicates_refused: IntCounterVec,
}

impl FeedMetrics {
    /// Registered on `registry`, each registered system's series at 0.
    pub fn new(registry: &Registry, systems: &Systems) -> Result<FeedMetrics, prometheus::Error> {
        let enqueued = IntCounterVec::new(
            Opts::new(
                "cti_sync_feed_enqueued_total",
                "Rows the change feed committed to a system's outbox, by op (upsert, remove).",
            ),
            &["system", "op"],
        )?;
        let held_back = IntCounterVec::new(
            Opts::new(
                "cti_sync_feed_invalid_requisites_total",
                "Records the change feed did not enqueue for a system because a requisite fails its check (each record once per content: looked at again by a later change or a reconcile, it is not counted again).",
            ),
            &["system"],
        )?;
        let overflows = IntCounter::new(
            "cti_sync_feed_overflows_total",
            "Change reports dropped because the feed's channel was full; each calls for a reconcile.",
        )?;
        let reconciles = IntCounterVec::new(
            Opts::new(
                "cti_sync_reconciles_total",
                "Reconciles of the directory with the systems' id-maps (at start-up and after a dropped report or failed enqueue), by outcome.",
            ),
            &["outcome"],
        )?;
        let duplicates_refused = IntCounterVec::new(
            Opts::new(
                "cti_sync_duplicates_refused_total",
                "Records of a system refused because they would duplicate a client the system already holds (same business key).",
            ),
            &["system"],
        )?;
        registry.register(Box::new(enqueued.clone()))?;
        registry.register(Box::new(held_back.clone()))?;
        registry.register(Box::new(overflows.clone()))?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(duplicates_refused.clone()))?;
        for system in systems.systems() {
            for op in ["upsert", "remove"] {
                enqueued.with_label_values(&[system.name(), op]);
            }
            held_back.with_label_values(&[system.name()]);
            duplicates_refused.with_label_values(&[system.name()]);
        }
        for outcome in ["ok", "failed"] {
            reconciles.with_label_values(&[outcome]);
        }
        Ok(FeedMetrics {
            enqueued,
            held_back,
            overflows,
            reconciles,
            duplicates_refused,
        })
    }

    pub(super) fn enqueued(&self, system: &str, upserts: u64, removes: u64) {
        self.enqueued
            .with_label_values(&[system, "upsert"])
            .inc_by(upserts);
        self.enqueued
            .with_label_values(&[system, "remove"])
            .inc_by(removes);
    }

    /// Rows the feed enqueued for `system` so far, both ops: an initial
    /// load's progress is its growth.
    pub fn enqueued_total(&self, system: &str) -> u64 {
        ["upsert", "remove"]
            .iter()
            .map(|op| self.enqueued.with_label_values(&[system, op]).get())
            .sum()
    }

    pub(super) fn held_back(&self, system: &str) {
        self.held_back.with_label_values(&[system]).inc();
    }

    /// `cti_sync_feed_invalid_requisites_total{system}` now.
    #[cfg(test)]
    pub(super) fn held_back_total(&self, system: &str) -> u64 {
        self.held_back.with_label_values(&[system]).get()
    }

    pub(super) fn reconcile(&self, ok: bool) {
        let outcome = if ok { "ok" } else { "failed" };
        self.reconciles.with_label_values(&[outcome]).inc();
    }

    /// A record of `system` refused as a duplicate ([`super::identity::Identity::Duplicate`]).
    pub fn duplicate_refused(&self, system: &str) {
        self.duplicates_refused.with_label_values(&[system]).inc();
    }
}
