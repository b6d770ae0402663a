//! Where counterparties come from. Each source turns its own input into the
//! one [`Counterparty`](crate::directory::Counterparty) model and hands whole
//! record sets to the directory; the directory never knows the source.
//!
//! Sources report their health here, so `/readyz` and the logs can say which
//! source is down and since when; a source logs once when it goes down and
//! once when it comes back, not on every retry.

pub mod backoff;
pub(crate) mod changes;
pub mod file;
mod low_priority;
pub mod onec;
pub mod overlays;
pub mod push;
pub mod servio;

/// The lowest-priority worker: also the sync feed's (its reconcile reads
/// every record).
pub(crate) use low_priority::LowPriority;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::directory::{Directory, RequisiteFaults};
use crate::store::Store;

/// Logs the records of a read whose requisites fail their check (new ones
/// only: a record read again with the same content was logged when it
/// came): how many, and the first few by id, field and value. The records
/// are kept and answer; `cti_directory_invalid_requisites_total` counts them.
pub(crate) fn log_requisite_faults(source: &str, faults: &RequisiteFaults) {
    if faults.new_faults() == 0 {
        return;
    }
    tracing::warn!(
        source,
        records = faults.records.len(),
        first = %faults.first_few(3),
        "records whose requisites fail their check were kept (they answer; they will not be synced until corrected)"
    );
}

/// Writes one source's records to the store after the directory took them,
/// so a restart answers at once. Saves run in the background (the directory
/// already serves, and a first save of a million records takes seconds),
/// one after the other; each writes the source's set as the directory holds
/// it when the save starts, so a later save always leaves the store equal to
/// the directory. A failure is logged and costs only a re-read of the source
/// at the next start.
pub(crate) struct SnapshotSaver {
    source: &'static str,
    directory: Arc<Directory>,
    store: Store,
    pending: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl SnapshotSaver {
    pub(crate) fn new(source: &'static str, directory: Arc<Directory>, store: Store) -> Self {
        SnapshotSaver {
            source,
            directory,
            store,
            pending: Mutex::new(None),
        }
    }

    /// Queues a save of the source's set, under the fingerprint the
    /// directory holds for it (no fingerprint: nothing to vouch for, no save).
    pub(crate) fn save(&self) {
        let (store, directory, source) =
            (self.store.clone(), Arc::clone(&self.directory), self.source);
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let previous = pending.take();
        *pending = Some(tokio::spawn(async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            let index = directory.snapshot();
            let fingerprint = index.source(source).and_then(|s| s.fingerprint.clone());
            let (Some(entries), Some(fingerprint)) = (index.source_records(source), fingerprint)
            else {
                return;
            };
            drop(index);
            if let Err(e) = store.replace_source(source, &fingerprint, entries).await {
                tracing::error!(source, error = %e, "directory snapshot not saved; the next start reads the source again");
            }
        }));
    }

    /// Waits for the saves started so far.
    pub(crate) async fn finish(&self) {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = pending {
            let _ = task.await;
        }
    }
}

/// The snapshot savers of the sources that save in the background. A change
/// made outside a source (a delete through the push API) asks each to save
/// again: a save already under way may have taken the set before the change
/// and would otherwise write the removed record back.
#[derive(Default)]
pub struct SnapshotSavers {
    savers: Mutex<Vec<Arc<SnapshotSaver>>>,
}

impl SnapshotSavers {
    pub(crate) fn register(&self, saver: Arc<SnapshotSaver>) {
        self.savers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(saver);
    }

    /// Queues a save of every registered source.
    pub fn save_all(&self) {
        for saver in self.savers.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            saver.save();
        }
    }
}

/// The health of one source as `/readyz` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceState {
    pub last_success: Option<SystemTime>,
    pub consecutive_failures: u32,
    pub last_error: Option<String>,
    /// When the current run of failures began; `None` while healthy.
    pub failing_since: Option<SystemTime>,
}

#[derive(Debug, Default)]
pub struct SourceHealth {
    states: Mutex<BTreeMap<String, SourceState>>,
}

impl SourceHealth {
    fn with_state<T>(&self, source: &str, f: impl FnOnce(&mut SourceState) -> T) -> T {
        let mut states = self.states.lock().unwrap_or_else(|p| p.into_inner());
        f(states.entry(source.to_owned()).or_default())
    }

    /// Records a success; true when the source was failing until now.
    pub fn success(&self, source: &str) -> bool {
        self.with_state(source, |s| {
            let recovered = s.failing_since.is_some();
            s.last_success = Some(SystemTime::now());
            s.consecutive_failures = 0;
            s.failing_since = None;
            s.last_error = None;
            recovered
        })
    }

    /// Records a failure; true when this is the first of a run (the moment to log).
    pub fn failure(&self, source: &str, error: &str) -> bool {
        self.with_state(source, |s| {
            let first = s.failing_since.is_none();
            s.consecutive_failures = s.consecutive_failures.saturating_add(1);
            s.last_error = Some(error.to_owned());
            s.failing_since.get_or_insert_with(SystemTime::now);
            first
        })
    }

    pub fn report(&self) -> BTreeMap<String, SourceState> {
        self.states
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_changes_are_reported_once() {
        let h = SourceHealth::default();
        assert!(h.failure("onec", "timeout"));
        assert!(!h.failure("onec", "timeout"));
        assert_eq!(h.report()["onec"].consecutive_failures, 2);
        assert!(h.success("onec"));
        assert!(!h.success("onec"));
        assert_eq!(h.report()["onec"].failing_since, None);
    }
}
