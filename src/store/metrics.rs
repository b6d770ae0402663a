//! The store's Prometheus metrics.

use prometheus::core::Collector;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};

use super::StoreError;

/// Commit latency buckets, 0.5 ms to 1 s.
const COMMIT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Handles to the store's metrics; cheap to clone (Arc inside each).
#[derive(Clone)]
pub(super) struct Metrics {
    pub journal_ok: IntCounter,
    pub journal_error: IntCounter,
    pub snapshot_ok: IntCounter,
    pub snapshot_error: IntCounter,
    pub commit_seconds: Histogram,
    /// Journal rows deleted by retention (`store.journal_retention`).
    pub journal_pruned: IntCounter,
    /// Sync store: outbox rows enqueued, by outcome (rows, not commands).
    pub outbox_ok: IntCounter,
    pub outbox_error: IntCounter,
    /// Sync store: webhook bodies appended to the inbox, by outcome.
    pub inbox_ok: IntCounter,
    pub inbox_error: IntCounter,
    journal: IntCounterVec,
    snapshot: IntCounterVec,
    outbox: IntCounterVec,
    inbox: IntCounterVec,
    /// Whether the sync store's counters are registered (only a sync
    /// store exports them: the others can never move them).
    sync: bool,
}

impl Metrics {
    /// Registers the metrics of the store `db` (a const label, so that two
    /// stores of one process report apart).
    /// `sync`: the store is the sync store, which also exports its outbox
    /// and inbox counters.
    pub fn register(registry: &Registry, db: &str, sync: bool) -> Result<Metrics, StoreError> {
        let err = |e: prometheus::Error| StoreError::Metrics {
            detail: e.to_string(),
        };
        let journal = IntCounterVec::new(
            Opts::new(
                "cti_store_journal_writes_total",
                "Call journal appends, by outcome (ok = committed).",
            )
            .const_label("db", db),
            &["outcome"],
        )
        .map_err(err)?;
        let snapshot = IntCounterVec::new(
            Opts::new(
                "cti_store_snapshot_writes_total",
                "Directory snapshot writes (one per source replace or pushed change), by outcome (ok = committed).",
            )
            .const_label("db", db),
            &["outcome"],
        )
        .map_err(err)?;
        let commit_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "cti_store_commit_seconds",
                "Time from BEGIN to the end of COMMIT of one store write transaction (a group of journal appends, or one chunk of a snapshot replace).",
            )
            .const_label("db", db)
            .buckets(COMMIT_BUCKETS.to_vec()),
        )
        .map_err(err)?;

        let journal_pruned = IntCounter::with_opts(
            Opts::new(
                "cti_store_journal_pruned_total",
                "Call journal rows deleted because they were older than store.journal_retention.",
            )
            .const_label("db", db),
        )
        .map_err(err)?;

        let outbox = IntCounterVec::new(
            Opts::new(
                "cti_store_outbox_rows_total",
                "Rows queued in the sync store's outbox, by outcome (ok = committed).",
            )
            .const_label("db", db),
            &["outcome"],
        )
        .map_err(err)?;
        let inbox = IntCounterVec::new(
            Opts::new(
                "cti_store_inbox_rows_total",
                "Webhook bodies appended to the sync store's inbox, by outcome (ok = committed).",
            )
            .const_label("db", db),
            &["outcome"],
        )
        .map_err(err)?;

        let metrics = Metrics {
            journal_ok: journal.with_label_values(&["ok"]),
            journal_error: journal.with_label_values(&["error"]),
            snapshot_ok: snapshot.with_label_values(&["ok"]),
            snapshot_error: snapshot.with_label_values(&["error"]),
            commit_seconds,
            journal_pruned,
            outbox_ok: outbox.with_label_values(&["ok"]),
            outbox_error: outbox.with_label_values(&["error"]),
            inbox_ok: inbox.with_label_values(&["ok"]),
            inbox_error: inbox.with_label_values(&["error"]),
            journal,
            snapshot,
            outbox,
            inbox,
            sync,
        };
        for (i, c) in metrics.collectors().into_iter().enumerate() {
            if let Err(e) = registry.register(c) {
                // Leave the registry as it was.
                for done in metrics.collectors().into_iter().take(i) {
                    let _ = registry.unregister(done);
                }
                return Err(err(e));
            }
        }
        Ok(metrics)
    }

    /// Removes the metrics from the registry, so the store can be opened
    /// again with the same registry after a close.
    pub fn unregister(&self, registry: &Registry) {
        for c in self.collectors() {
            let _ = registry.unregister(c);
        }
    }

    fn collectors(&self) -> Vec<Box<dyn Collector>> {
        let mut all: Vec<Box<dyn Collector>> = vec![
            Box::new(self.journal.clone()),
            Box::new(self.snapshot.clone()),
            Box::new(self.commit_seconds.clone()),
            Box::new(self.journal_pruned.clone()),
        ];
        if self.sync {
            all.push(Box::new(self.outbox.clone()));
            all.push(Box::new(self.inbox.clone()));
        }
        all
    }
}
