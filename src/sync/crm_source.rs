//! CRM-only records: the clients a CRM holds that no other source has form
//! a directory source named after the system (`bitrix24`), their ids
//! prefixed with it (`bitrix24:company:2919`), so they answer SayName like
//! 1C's. Each change is stored first, in the sync store's snapshot tables
//! (the path of the push API, `sources::changes`), then applied; the set is
//! loaded at start like 1C's snapshot.
//!
//! A CRM sends changes one record at a time, often in storms (an import, a
//! mass edit): each directory change costs a new index, so a source applies
//! at most once a second, or at once when 1,000 changes wait. Callers (the
//! sync runtime's inbox, issue 18) are answered once their change is
//! committed and applied, and delete their inbox row only then.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;

use crate::directory::{requisites, Counterparty, Directory};
use crate::logging::Escaped;
use crate::sources::changes;
use crate::store::{Store, StoreError};

/// The least time between two applies of one source.
pub const APPLY_EVERY: Duration = Duration::from_secs(1);
/// Changes waiting that make an apply happen at once.
pub const APPLY_AT: usize = 1_000;

/// Why a CRM change was not made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CrmError {
    /// A record the model or the requisite check refuses, or an id without
    /// the system's prefix: nothing of the call was queued.
    #[error("record {id:?}: {problem}")]
    Invalid { id: String, problem: String },
    /// The sync store did not commit: nothing of the batch was changed.
    #[error("the CRM change was not saved; nothing was changed ({0})")]
    NotSaved(StoreError),
    /// Committed, but not applied to the directory (a bug): it is served
    /// from the next start on.
    #[error("the CRM change was saved but not applied to the directory ({0})")]
    NotApplied(String),
    /// The gateway is stopping.
    #[error("the gateway is stopping; the CRM change was not made")]
    Stopped,
}

enum Change {
    /// Boxed: a record is large beside an id.
    Upsert(Box<Counterparty>),
    Remove(Box<str>),
}

impl Change {
    fn id(&self) -> &str {
        match self {
            Change::Upsert(record) => &record.id,
            Change::Remove(id) => id,
        }
    }
}

struct Waiting {
    changes: Vec<Change>,
    reply: oneshot::Sender<Result<(), CrmError>>,
}

/// One system's CRM-only records.
pub struct CrmRecords {
    system: Arc<str>,
    /// `system:`, what every id starts with.
    prefix: String,
    directory: Arc<Directory>,
    store: Store,
    queue: Mutex<Vec<Waiting>>,
    /// Changes in `queue`.
    queued: std::sync::atomic::AtomicUsize,
    wake: Notify,
    /// One inbound change of the system at a time (`inbound::Applier`,
    /// whoever holds one for the system): an overlay is read, changed and
    /// written back.
    inbound: tokio::sync::Mutex<()>,
    /// Held while a change of the source is committed and applied, so a
    /// record linked to another source's (`Applier::link_crm_only`)
    /// leaves the source between two applies, never inside one.
    applying: tokio::sync::Mutex<()>,
}

impl CrmRecords {
    /// `store` is the sync store; its set named `system` is loaded at start
    /// by the gateway, with the other snapshot sets.
    pub fn new(system: &str, directory: Arc<Directory>, store: Store) -> CrmRecords {
        CrmRecords {
            system: system.into(),
            prefix: format!("{system}:"),
            directory,
            store,
            queue: Mutex::new(Vec::new()),
            queued: Default::default(),
            wake: Notify::new(),
            inbound: tokio::sync::Mutex::new(()),
            applying: tokio::sync::Mutex::new(()),
        }
    }

    /// Waits for the system's turn to apply an inbound change.
    pub(super) async fn inbound_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.inbound.lock().await
    }

    /// Waits until no change of the source is being committed or applied.
    pub(super) async fn applying_turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.applying.lock().await
    }

    /// The source's own record of `id`, if it holds one.
    pub fn record(&self, id: &str) -> Option<Counterparty> {
        self.directory
            .snapshot()
            .source_entry(&self.system, id)
            .and_then(|e| e.counterparty().ok())
    }

    /// The directory source (and snapshot set) these records form.
    pub fn source(&self) -> &str {
        &self.system
    }

    /// Upserts `records` (ids `system:kind:remote id`); resolves once they
    /// are committed to the sync store and applied. All or none: a record
    /// the model or the requisite check refuses refuses the call.
    pub async fn upsert(&self, records: Vec<Counterparty>) -> Result<(), CrmError> {
        for record in &records {
            self.check(record)?;
        }
        self.queue_and_wait(
            records
                .into_iter()
                .map(|r| Change::Upsert(Box::new(r)))
                .collect(),
        )
        .await
    }

    /// Removes the records of these ids from the source (an id it does not
    /// hold is no change).
    pub async fn remove(&self, ids: Vec<Box<str>>) -> Result<(), CrmError> {
        if let Some(id) = ids.iter().find(|id| !id.starts_with(&self.prefix)) {
            return Err(self.invalid(
                id,
                "the id does not start with the system's name and a colon",
            ));
        }
        self.queue_and_wait(ids.into_iter().map(Change::Remove).collect())
            .await
    }

    fn check(&self, record: &Counterparty) -> Result<(), CrmError> {
        if !record.id.starts_with(&self.prefix) || record.id.len() == self.prefix.len() {
            return Err(self.invalid(
                &record.id,
                &format!("the id must be {}KIND:ID", self.prefix),
            ));
        }
        record
            .validate()
            .map_err(|e| self.invalid(&record.id, &e.to_string()))?;
        // "Enforced on CRM input": a CRM's mistyped INN is not taken.
        if let Some(problem) = requisites::check(record).first() {
            return Err(self.invalid(&record.id, &problem.to_string()));
        }
        Ok(())
    }

    fn invalid(&self, id: &str, problem: &str) -> CrmError {
        CrmError::Invalid {
            id: id.chars().take(128).collect(),
            problem: problem.to_owned(),
        }
    }

    async fn queue_and_wait(&self, changes: Vec<Change>) -> Result<(), CrmError> {
        if changes.is_empty() {
            return Ok(());
        }
        let (reply, answer) = oneshot::channel();
        let n = changes.len();
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Waiting { changes, reply });
        self.queued
            .fetch_add(n, std::sync::atomic::Ordering::SeqCst);
        self.wake.notify_one();
        answer.await.unwrap_or(Err(CrmError::Stopped))
    }

    /// Applies what is queued, at most once per [`APPLY_EVERY`] or at once
    /// at [`APPLY_AT`] changes, until `stop`; what is still queued then is
    /// answered [`CrmError::Stopped`] (its inbox rows stay for the next start).
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) {
        self.apply_until(stop).await;
        let left = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
        for waiting in left {
            let _ = waiting.reply.send(Err(CrmError::Stopped));
        }
    }

    async fn apply_until(&self, mut stop: watch::Receiver<bool>) {
        let mut last: Option<Instant> = None;
        loop {
            if self.queued.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                tokio::select! {
                    _ = self.wake.notified() => continue,
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            // Wait out the rest of the second, unless enough changes wait.
            if let Some(due) = last.map(|l| l + APPLY_EVERY) {
                while Instant::now() < due
                    && self.queued.load(std::sync::atomic::Ordering::SeqCst) < APPLY_AT
                {
                    tokio::select! {
                        _ = tokio::time::sleep_until(due) => {}
                        _ = self.wake.notified() => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
            let batch = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
            let n: usize = batch.iter().map(|w| w.changes.len()).sum();
            self.queued
                .fetch_sub(n, std::sync::atomic::Ordering::SeqCst);
            last = Some(Instant::now());
            self.apply(batch).await;
        }
    }

    /// Commits `batch` in one transaction and applies it in one change;
    /// of several changes of one id, the last counts.
    async fn apply(&self, batch: Vec<Waiting>) {
        let _turn = self.applying.lock().await;
        let mut last_of: HashMap<Box<str>, Change> = HashMap::new();
        let mut replies = Vec::with_capacity(batch.len());
        let mut order: Vec<Box<str>> = Vec::new();
        for waiting in batch {
            for change in waiting.changes {
                let id: Box<str> = change.id().into();
                if last_of.insert(id.clone(), change).is_none() {
                    order.push(id);
                }
            }
            replies.push(waiting.reply);
        }
        let (mut upserts, mut removals) = (Vec::new(), Vec::new());
        for id in order {
            match last_of.remove(&id) {
                Some(Change::Upsert(record)) => upserts.push(*record),
                Some(Change::Remove(id)) => removals.push(id),
                None => {}
            }
        }
        let (upserted, removed) = (upserts.len(), removals.len());
        let result = match changes::commit(
            &self.store,
            &self.directory,
            &self.system,
            upserts,
            removals,
            Vec::new(),
            SystemTime::now(),
        )
        .await
        {
            Err(e) => {
                tracing::error!(system = %Escaped(&self.system), error = %e, "CRM records not saved: the sync store failed");
                Err(CrmError::NotSaved(e))
            }
            Ok(committed) => match changes::apply(&self.directory, &committed).await {
                Ok(report) => {
                    tracing::info!(
                        system = %Escaped(&self.system),
                        upserted,
                        removed,
                        records = report.records,
                        "CRM-only records applied"
                    );
                    Ok(())
                }
                Err(message) => {
                    tracing::error!(system = %Escaped(&self.system), error = %message, "CRM records saved but not applied");
                    Err(CrmError::NotApplied(message))
                }
            },
        };
        for reply in replies {
            // A caller that went away: its change is made all the same.
            let _ = reply.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::OpenOptions;

    fn record(id: &str, phone: &str) -> Counterparty {
        Counterparty {
            id: id.into(),
            name: id.into(),
            phones: vec![phone.into()],
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_queued_together_apply_once_the_last_change_of_an_id_winning() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let registry = prometheus::Registry::new();
        let store = Store::open_with_options(
            &tmp.path().join("s.sync.sqlite"),
            &registry,
            &OpenOptions::sync(),
        )
        .expect("sync store");
        let directory = Arc::new(Directory::new(crate::soap::say_name_payload));
        let crm = Arc::new(CrmRecords::new(
            "crm",
            Arc::clone(&directory),
            store.clone(),
        ));
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(Arc::clone(&crm).run(stopped));
        crm.upsert(vec![record("crm:company:1", "89160000001")])
            .await
            .expect("first");
        // Queued in this order (each change is queued when its future is
        // first polled, and `join!` polls them in order), so they apply
        // together after the first: spawned tasks would queue in any order.
        let (a, b, c) = tokio::join!(
            crm.upsert(vec![record("crm:company:2", "89160000002")]),
            crm.remove(vec!["crm:company:2".into()]),
            crm.upsert(vec![record("crm:company:3", "89160000003")]),
        );
        for applied in [a, b, c] {
            applied.expect("applied");
        }
        assert!(
            directory.lookup_id("crm:company:2").is_none(),
            "removed last"
        );
        assert!(directory.lookup_id("crm:company:3").is_some());
        let mut stored: Vec<String> = store
            .load_snapshot()
            .await
            .expect("snapshot")
            .into_iter()
            .filter(|s| s.source == "crm")
            .flat_map(|s| s.records.into_iter().map(|r| r.id.to_string()))
            .collect();
        stored.sort();
        assert_eq!(stored, ["crm:company:1", "crm:company:3"]);
        let refused = crm.upsert(vec![record("company:4", "89160000004")]).await;
        assert!(
            matches!(refused, Err(CrmError::Invalid { .. })),
            "{refused:?}"
        );
        stop.send_replace(true);
        task.await.expect("run ends");
        store.close().await;
    }
}
