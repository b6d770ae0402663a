//! CRM-only records: the clients a CRM holds that no other source has form
//! a directory source named after the system (`bitrix24`), their ids
//! prefixed with it (`bitrix24:company:2919`), so they answer SayName like
//! 1C's. Each change is stored first, in the sync store's snapshot tables
//! (the path of the push API, `sources::changes`), then applied; the set is
//! loaded at start like 1C's snapshot.
//!
//! A CRM sends changes one record at a time, often in storms (an import, a
//! mass edit). Changes are applied like a group commit: at once when none
//! is being applied, and what queues while one apply runs goes together
//! into the next (one transaction, one index), so concurrent callers share
//! applies and an idle source answers without delay. Callers (the sync
//! runtime's inbox, issue 18) are answered once their change is committed
//! and applied, and delete their inbox row only then.
//!
//! Why no fixed pace (it used to apply at most once a second): every
//! caller is the system's inbound path, which holds the system's inbound
//! turn while it waits (its next record's decision reads what this one
//! made), so there is only ever one waiter and a pace never gathered
//! anything: it made every inbox row cost a second (a CRM import of 10,000
//! records took hours). A one-record change costs the index a few leaf
//! copies (`Shards`), so applying at once costs about what the old pace
//! did per record, at the rate the records arrive.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::{oneshot, watch, Notify};

use crate::directory::{requisites, Counterparty, Directory};
use crate::logging::Escaped;
use crate::sources::changes;
use crate::store::{Store, StoreError};

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
        {
            // Counted under the queue's lock, so the count never runs
            // behind what the apply loop takes.
            let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.push(Waiting { changes, reply });
            self.queued
                .fetch_add(n, std::sync::atomic::Ordering::SeqCst);
        }
        self.wake.notify_one();
        answer.await.unwrap_or(Err(CrmError::Stopped))
    }

    /// Applies what is queued until `stop`, each apply taking all that
    /// queued before it began (see the module's doc); what is still queued
    /// then is answered [`CrmError::Stopped`] (its inbox rows stay for the
    /// next start).
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) {
        self.apply_until(stop).await;
        let left = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()));
        for waiting in left {
            let _ = waiting.reply.send(Err(CrmError::Stopped));
        }
    }

    async fn apply_until(&self, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                return;
            }
            if self.queued.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                // `notify_one` keeps a permit when no one waits: a change
                // queued between the load and here still wakes this.
                tokio::select! {
                    _ = self.wake.notified() => continue,
                    _ = stop.wait_for(|s| *s) => return,
                }
            }
            let batch = {
                let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                let batch = std::mem::take(&mut *queue);
                let n: usize = batch.iter().map(|w| w.changes.len()).sum();
                self.queued
                    .fetch_sub(n, std::sync::atomic::Ordering::SeqCst);
                batch
            };
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
    use tokio::time::Instant;

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
        // first polled, and `join!` polls them in order; spawned tasks
        // would queue in any order). The apply loop may take the first
        // alone and the others together once it is done, or all three
        // together: either way in order, the last change of an id winning.
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
        // Changes queued while an apply runs go together into the next:
        // held in its apply (the turn taken here), the loop takes nothing
        // else, so both wait in the queue and leave it in one batch.
        let turn = crm.applying_turn().await;
        // Polled once: queued (a change is queued when first polled).
        let first = crm.upsert(vec![record("crm:company:5", "89160000005")]);
        tokio::pin!(first);
        tokio::select! {
            biased;
            _ = &mut first => panic!("applied while the turn is held"),
            _ = std::future::ready(()) => {}
        }
        let wait_for_queued = |n: usize| {
            let crm = Arc::clone(&crm);
            async move {
                let deadline = Instant::now() + std::time::Duration::from_secs(10);
                while crm.queued.load(std::sync::atomic::Ordering::SeqCst) != n {
                    assert!(Instant::now() < deadline, "{n} changes never queued");
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        };
        // Taken by the loop, which now waits for the turn in its apply.
        wait_for_queued(0).await;
        let later: Vec<_> = [6, 7]
            .map(|i| {
                let crm = Arc::clone(&crm);
                tokio::spawn(async move {
                    let id = format!("crm:company:{i}");
                    crm.upsert(vec![record(&id, &format!("8916000000{i}"))])
                        .await
                })
            })
            .into();
        wait_for_queued(2).await;
        drop(turn);
        first.await.expect("applied");
        for change in later {
            change.await.expect("task").expect("applied");
        }
        assert_eq!(crm.queued.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(directory.lookup_id("crm:company:7").is_some());
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
