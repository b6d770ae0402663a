//! A change to one source's set, made durable before it is visible: the
//! path the push API takes ([`super::push`]), and the CRM-only records of a
//! sync system (`sync::crm_source`) on the sync store.
//!
//! [`commit`] writes the change to a store in one transaction (the records
//! with the receive time the directory will give them, so that after a
//! restart the version received last still answers); [`apply`] then makes
//! the directory's next index. A caller serializes its changes (one mutex
//! over both steps), so they are applied in the order they were committed;
//! between the two, a failing store has changed nothing anywhere.

use std::sync::Arc;
use std::time::SystemTime;

use crate::directory::{Counterparty, Directory, ReplaceReport, Tombstone};
use crate::store::{AppliedChanges, SnapshotRecord, Store, StoreError};

/// A change committed to a store, to be applied to the directory.
pub(crate) struct Committed {
    source: Arc<str>,
    records: Arc<[Received]>,
    removals: Vec<Box<str>>,
    buried: Vec<Tombstone>,
    at: SystemTime,
    /// What the store's transaction did.
    pub(crate) applied: AppliedChanges,
}

/// Commits to `store` the upserts of `records` into `source`'s set, the
/// removal of the ids in `removals` from it, and the tombstones `buried`
/// (other sources' copies of deleted ids). A record whose content `source`
/// already holds keeps its receive time, in the store as in the directory.
pub(crate) async fn commit(
    store: &Store,
    directory: &Directory,
    source: &str,
    records: Vec<Counterparty>,
    removals: Vec<Box<str>>,
    buried: Vec<Tombstone>,
    at: SystemTime,
) -> Result<Committed, StoreError> {
    let received = directory.receive_times(source, &records, at);
    let records: Arc<[Received]> = records
        .into_iter()
        .zip(received)
        .map(|(record, at)| Received { record, at })
        .collect();
    let applied = store
        .apply_changes(source, Arc::clone(&records), &removals, &buried)
        .await?;
    Ok(Committed {
        source: source.into(),
        records,
        removals,
        buried,
        at,
        applied,
    })
}

/// Applies a committed change to the directory (on a blocking thread: a
/// large change costs its size). `Err` only when that thread failed (a
/// bug): the change is then served from the next start on.
pub(crate) async fn apply(
    directory: &Arc<Directory>,
    committed: &Committed,
) -> Result<ReplaceReport, String> {
    let directory = Arc::clone(directory);
    let source = Arc::clone(&committed.source);
    let records = Arc::clone(&committed.records);
    let removals = committed.removals.clone();
    let buried = committed.buried.clone();
    let at = committed.at;
    tokio::task::spawn_blocking(move || {
        let records = records.iter().map(|r| r.record.clone()).collect();
        directory.apply_changes(&source, records, &removals, &buried, at)
    })
    .await
    .map_err(|e| e.to_string())
}

/// A record as the store keeps it: with the time it was received, so that
/// after a restart it still loses to a newer version from 1C or the file,
/// and still wins over an older one.
struct Received {
    record: Counterparty,
    at: SystemTime,
}

impl SnapshotRecord for Received {
    fn id(&self) -> &str {
        &self.record.id
    }

    fn encode(&self, buf: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        serde_json::to_writer(buf, &self.record)
    }

    fn received_at(&self) -> Option<SystemTime> {
        Some(self.at)
    }
}
