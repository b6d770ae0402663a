//! The push source: counterparty changes that 1C (or a script) sends to the
//! gateway, as opposed to sources the gateway reads.
//!
//! Two operations, each made durable before it is visible:
//!
//! - **upsert** a batch of records into the directory source named `push`;
//! - **delete** one id from every source (`push`, `file`, `onec`...).
//!
//! Each is committed to the store first (one transaction,
//! [`Store::apply_changes`]) and only then applied to the directory
//! ([`Directory::apply_changes`]): when the store fails, the directory is
//! left as it was and the caller is told to retry. One mutex covers both
//! steps, so two concurrent changes are applied in the order they were
//! committed, and each change runs in a task of its own, so a caller that
//! hangs up between the two steps does not leave a committed change
//! unapplied.
//!
//! Which copy of an id answers when sources disagree is the directory's
//! rule: the version received last. A push thus overrides an older 1C or
//! file copy of the same id until that source brings a newer version. A
//! delete removes the id from the sources' snapshot rows too, so it stays
//! deleted across restarts, until the source that had it brings it again
//! (a file whose content changes, a 1C refresh that still lists it).
//!
//! A push body is read by [`parse_batch`] (`parse.rs`): a JSON array of
//! records in the contract's shape, whole or not at all, every problem said
//! with where it is. HTTP (routes, auth, status codes) stays in `http`.

mod parse;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use super::changes;
use crate::directory::{Counterparty, Directory, Tombstone};
use crate::logging::{Escaped, RequestId, RequestIds};
use crate::store::{Refusal, RefusalLog, Store, StoreError};
pub(crate) use parse::diagnose_text;
pub use parse::{parse_batch, BatchError, RecordError, MAX_RECORDS};

/// The name pushed records carry in the directory and the store.
pub const SOURCE: &str = "push";

/// How long a change that arrives during start-up waits for the snapshot to
/// be loaded before it is refused (as "not saved, retry").
const READY_WAIT: Duration = Duration::from_secs(10);

/// Why a change was not (fully) made.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// A record fails the model's checks: nothing was changed.
    #[error(transparent)]
    Invalid(RecordError),
    /// The store did not commit: nothing was changed.
    #[error("the change was not saved, nothing was changed; retry later ({0})")]
    NotSaved(StoreError),
    /// The gateway is still loading its snapshot: nothing was changed.
    #[error("the gateway is starting (loading its snapshot); nothing was changed, retry in a few seconds")]
    Starting,
    /// Committed, but applying it to the directory failed (a bug): the
    /// change is served from the next start on.
    #[error("the change was saved but not applied to the directory ({0}); it is served after a restart of the gateway")]
    NotApplied(String),
}

/// What an accepted upsert did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushReport {
    /// Distinct ids upserted (of two records with one id, the later counts).
    pub upserted: usize,
    /// Records now in the push source.
    pub records: usize,
    /// Counterparties in the whole directory.
    pub counterparties: usize,
    /// Requisites of accepted records that fail their check: the records
    /// were taken all the same (a mistyped INN never costs a caller).
    pub warnings: Vec<RequisiteWarning>,
}

/// One requisite of an accepted record that fails
/// [`crate::directory::requisites::check`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RequisiteWarning {
    /// The record's position in the pushed array, from 0.
    pub record: usize,
    pub id: String,
    pub field: &'static str,
    pub value: String,
    pub problem: &'static str,
}

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeleteReport {
    /// Whether any source had the id (if none had, nothing was changed).
    pub removed: bool,
    /// Counterparties in the whole directory afterwards.
    pub counterparties: usize,
}

pub struct PushSource {
    directory: Arc<Directory>,
    store: Store,
    /// Held from the store commit to the end of the directory apply.
    order: tokio::sync::Mutex<()>,
    /// Upserts waiting for the next group commit.
    queued: std::sync::Mutex<Vec<Queued>>,
    /// True once the store's snapshot is in the directory; see
    /// [`PushSource::snapshot_loaded`].
    ready: tokio::sync::watch::Sender<bool>,
    upserted: IntCounter,
    deleted: IntCounter,
    /// Pushes and deletes the store refused: logged once per change of
    /// state with a count, not once per request.
    refusals: RefusalLog,
    /// Tests: pauses between a change's commit and its apply, one per change.
    #[cfg(test)]
    pauses: std::sync::Mutex<std::collections::VecDeque<Duration>>,
}

impl PushSource {
    /// Registers `cti_push_records_total{op}` in `registry`.
    pub fn new(
        directory: Arc<Directory>,
        store: Store,
        registry: &Registry,
    ) -> Result<PushSource, prometheus::Error> {
        let records = IntCounterVec::new(
            Opts::new(
                "cti_push_records_total",
                "Counterparty changes accepted through the push API and committed: op=upsert counts records, op=delete counts ids removed.",
            ),
            &["op"],
        )?;
        registry.register(Box::new(records.clone()))?;
        Ok(PushSource {
            directory,
            store,
            order: tokio::sync::Mutex::new(()),
            queued: std::sync::Mutex::new(Vec::new()),
            ready: tokio::sync::watch::Sender::new(false),
            upserted: records.with_label_values(&["upsert"]),
            deleted: records.with_label_values(&["delete"]),
            refusals: RefusalLog::new(),
            #[cfg(test)]
            pauses: Default::default(),
        })
    }

    /// A change the store refused: the first of a failure and a reminder a
    /// minute are logged; the rest are counted.
    /// `ids` are the refused change's requests.
    fn log_refused(&self, e: &StoreError, what: &str, records: usize, ids: &[RequestId]) {
        let (requests, request_id) = (ids.len(), RequestIds(ids));
        match self.refusals.refused() {
            Refusal::Began => tracing::error!(
                records,
                requests,
                error = %e,
                %request_id,
                "{what} (further refusals are counted, not logged one by one)"
            ),
            Refusal::Continues { since_last_line } => tracing::error!(
                refused = since_last_line,
                error = %e,
                %request_id,
                "pushes still not saved: the store keeps failing"
            ),
            Refusal::Counted => {}
        }
    }

    /// A change the store saved: ends a failure once it has been quiet.
    fn log_saved(&self, ids: &[RequestId]) {
        if let Some(refused) = self.refusals.saved() {
            tracing::info!(refused, request_id = %RequestIds(ids), "pushes are saved again");
        }
    }

    /// Lets changes through. Until then they wait (up to 10 s, then they
    /// are refused with [`PushError::Starting`]): loading the snapshot
    /// replaces the push source's records in the directory with the stored
    /// ones, and would drop a change applied just before.
    pub fn snapshot_loaded(&self) {
        self.ready.send_replace(true);
    }

    /// Waits for [`PushSource::snapshot_loaded`].
    async fn wait_ready(&self) -> Result<(), PushError> {
        let mut ready = self.ready.subscribe();
        let waited = tokio::time::timeout(READY_WAIT, ready.wait_for(|r| *r))
            .await
            .is_ok_and(|r| r.is_ok());
        if waited {
            Ok(())
        } else {
            Err(PushError::Starting)
        }
    }

    /// Upserts `records` into the push source: all of them or none. Checks
    /// each record first ([`Counterparty::validate`]); a batch holding one id
    /// twice is refused, naming both positions. Resolves once the change is
    /// committed in the store and applied to the directory. `request` is
    /// the push's id on the log lines.
    pub async fn upsert(
        self: &Arc<Self>,
        records: Vec<Counterparty>,
        request: RequestId,
    ) -> Result<PushReport, PushError> {
        for (index, record) in records.iter().enumerate() {
            if let Err(e) = record.validate() {
                return Err(PushError::Invalid(RecordError::failed_check(
                    index, 0, record, e,
                )));
            }
        }
        refuse_repeated_ids(&records).map_err(PushError::Invalid)?;
        let faults = self.directory.check_requisites(SOURCE, &records);
        let warnings: Vec<RequisiteWarning> = faults
            .records
            .iter()
            .flat_map(|faulty| {
                let (index, id) = (faulty.index, parse::shown_id(&faulty.id));
                faulty.problems.iter().map(move |p| RequisiteWarning {
                    record: index,
                    id: id.clone(),
                    field: p.field,
                    value: p.value.clone(),
                    problem: p.problem,
                })
            })
            .collect();
        let this = Arc::clone(self);
        let mut report = tokio::spawn(async move {
            let report = this.upsert_now(records, request).await;
            // Counted in the task: a caller that hangs up does not stop the change.
            if report.is_ok() {
                this.directory.count_requisite_faults(SOURCE, &faults);
            }
            report
        })
        .await
        .unwrap_or_else(|e| Err(PushError::NotApplied(e.to_string())))?;
        report.warnings = warnings;
        Ok(report)
    }

    /// Removes `id` from every source, in the store and in the directory.
    /// `removed: false` when no source had it (then nothing is changed).
    pub async fn delete(
        self: &Arc<Self>,
        id: &str,
        request: RequestId,
    ) -> Result<DeleteReport, PushError> {
        let this = Arc::clone(self);
        let id: Box<str> = id.into();
        tokio::spawn(async move { this.delete_now(id, request).await })
            .await
            .unwrap_or_else(|e| Err(PushError::NotApplied(e.to_string())))
    }

    /// Queues `records` and commits them, with every upsert queued
    /// meanwhile, once this change's turn comes: concurrent pushes share
    /// one store transaction and one directory change (group commit), and
    /// each is answered when that is done.
    async fn upsert_now(
        &self,
        records: Vec<Counterparty>,
        request: RequestId,
    ) -> Result<PushReport, PushError> {
        self.wait_ready().await?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.queued
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Queued {
                records,
                reply,
                at: Instant::now(),
                request,
            });
        {
            let _order = self.order.lock().await;
            // An earlier turn may have taken this change with its own.
            let group = std::mem::take(&mut *self.queued.lock().unwrap_or_else(|p| p.into_inner()));
            if !group.is_empty() {
                self.commit_group(group).await;
            }
        }
        answer.await.unwrap_or_else(|_| {
            Err(PushError::NotApplied(
                "the task committing the change stopped before answering".into(),
            ))
        })
    }

    /// Commits `group` (the upserts queued, in the order they came) in one
    /// store transaction, applies it to the directory in one change, and
    /// answers each. Of one id in two upserts, the later wins in both.
    /// Called under `order`.
    async fn commit_group(&self, group: Vec<Queued>) {
        let requests = group.len();
        let at = SystemTime::now();
        let mut replies = Vec::with_capacity(requests);
        let mut all = Vec::new();
        let mut oldest = Instant::now();
        // Every line of the group names each push's request.
        let ids: Vec<RequestId> = group.iter().map(|q| q.request).collect();
        let request_id = RequestIds(&ids);
        for queued in group {
            replies.push((queued.reply, queued.records.len()));
            all.extend(queued.records);
            oldest = oldest.min(queued.at);
        }
        let answer =
            |replies: Vec<(Reply, usize)>,
             result: &dyn Fn(usize) -> Result<PushReport, PushError>| {
                for (reply, upserted) in replies {
                    // The caller may have hung up: its change is made all the same.
                    let _ = reply.send(result(upserted));
                }
            };
        let upserted = all.len();
        if all.is_empty() {
            let index = self.directory.snapshot();
            let (records, counterparties) =
                (index.source(SOURCE).map_or(0, |s| s.records), index.len());
            answer(replies, &|_| {
                Ok(PushReport {
                    upserted: 0,
                    records,
                    counterparties,
                    warnings: Vec::new(),
                })
            });
            return;
        }
        // A record whose content the push source already holds keeps its
        // receive time, in the store as in the directory (under `order`, so
        // the push set cannot change in between).
        let committing = Instant::now();
        let committed = match changes::commit(
            &self.store,
            &self.directory,
            SOURCE,
            all,
            Vec::new(),
            Vec::new(),
            at,
        )
        .await
        {
            Ok(committed) => {
                self.log_saved(&ids);
                committed
            }
            Err(e) => {
                self.log_refused(
                    &e,
                    "push not saved: the store failed; the callers are told to retry",
                    upserted,
                    &ids,
                );
                answer(replies, &|_| Err(PushError::NotSaved(e.clone())));
                return;
            }
        };
        #[cfg(test)]
        self.pause().await;
        let store_ms = committing.elapsed().as_millis() as u64;
        let applying = Instant::now();
        let report = match changes::apply(&self.directory, &committed).await {
            Ok(report) => report,
            Err(message) => {
                tracing::error!(error = %message, %request_id, "push committed but not applied to the directory");
                answer(replies, &|_| Err(PushError::NotApplied(message.clone())));
                return;
            }
        };
        let applied = &committed.applied;
        self.upserted.inc_by(upserted as u64);
        tracing::info!(
            upserted,
            requests,
            inserted = applied.inserted,
            updated = applied.updated,
            unchanged = applied.unchanged,
            unusable_phones = report.unusable_phones,
            push_records = report.records,
            counterparties = report.total_records,
            store_ms,
            directory_us = applying.elapsed().as_micros() as u64,
            elapsed_ms = oldest.elapsed().as_millis() as u64,
            %request_id,
            "push: counterparties upserted"
        );
        answer(replies, &|upserted| {
            Ok(PushReport {
                upserted,
                records: report.records,
                counterparties: report.total_records,
                warnings: Vec::new(),
            })
        });
    }

    async fn delete_now(
        &self,
        id: Box<str>,
        request: RequestId,
    ) -> Result<DeleteReport, PushError> {
        let started = Instant::now();
        self.wait_ready().await?;
        let _order = self.order.lock().await;
        // The push copy goes; every other source's copy gets a tombstone with
        // its content, and stays hidden until that copy changes. Its rows
        // stay as its source holds them: a DELETE writes one row per source.
        let buried = self.directory.tombstones_for(&id, SOURCE);
        let sources: Vec<Box<str>> = buried.iter().map(|t| t.source.clone()).collect();
        let committed = changes::commit(
            &self.store,
            &self.directory,
            SOURCE,
            Vec::new(),
            vec![id.clone()],
            buried,
            SystemTime::now(),
        )
        .await
        .map_err(|e| {
            self.log_refused(
                &e,
                "push delete not saved: the store failed; the caller is told to retry",
                0,
                &[request],
            );
            PushError::NotSaved(e)
        })?;
        self.log_saved(&[request]);
        let applied = &committed.applied;
        if applied.removed == 0 && sources.is_empty() {
            return Ok(DeleteReport {
                removed: false,
                counterparties: self.directory.snapshot().len(),
            });
        }
        let report = changes::apply(&self.directory, &committed)
            .await
            .map_err(|message| {
                tracing::error!(error = %message, request_id = %request, "push delete committed but not applied to the directory");
                PushError::NotApplied(message)
            })?;
        self.deleted.inc();
        tracing::info!(
            id = %Escaped(&id),
            push_rows = applied.removed,
            hidden_in = ?sources,
            counterparties = report.total_records,
            elapsed_ms = started.elapsed().as_millis() as u64,
            request_id = %request,
            "push: counterparty removed"
        );
        Ok(DeleteReport {
            removed: true,
            counterparties: report.total_records,
        })
    }

    /// Makes the store forget `spent`, but those in force again: a DELETE
    /// made since may have put the very same tombstone back (the copy went
    /// back to the deleted content and was deleted again). Under `order`, so
    /// no DELETE comes in between.
    async fn forget(&self, spent: &mut Vec<Tombstone>) -> Result<usize, StoreError> {
        let _order = self.order.lock().await;
        let index = self.directory.snapshot();
        spent.retain(|t| !index.holds_tombstone(t));
        self.store.forget_tombstones(spent).await
    }

    /// Makes the store forget the tombstones that sources' changed copies
    /// spent, as the directory reports them, until `stop`. Run in a task of
    /// its own: a failure only keeps a spent tombstone a while longer (a
    /// restart spends it again against the snapshot).
    pub async fn forget_spent_tombstones(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            let mut spent = tokio::select! {
                spent = self.directory.spent_tombstones() => spent,
                _ = stop.wait_for(|s| *s) => return,
            };
            loop {
                match self.forget(&mut spent).await {
                    Ok(n) => {
                        tracing::info!(
                            forgotten = n,
                            "tombstones of deleted counterparties spent: their sources changed them"
                        );
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_s = 5, "spent tombstones not forgotten; retrying");
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(5)) => {}
                            _ = stop.wait_for(|s| *s) => return,
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
impl PushSource {
    async fn pause(&self) {
        let pause = self
            .pauses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
    }
}

type Reply = tokio::sync::oneshot::Sender<Result<PushReport, PushError>>;

/// An upsert waiting for its group commit.
struct Queued {
    records: Vec<Counterparty>,
    reply: Reply,
    at: Instant,
    /// The push's request, named on the group commit's log lines.
    request: RequestId,
}

/// Refuses a batch that holds one id twice: which copy is meant cannot be
/// guessed, and keeping one silently loses the other.
pub(super) fn refuse_repeated_ids(records: &[Counterparty]) -> Result<(), RecordError> {
    let mut first_at: HashMap<&str, usize> = HashMap::with_capacity(records.len());
    for (index, record) in records.iter().enumerate() {
        if let Some(first) = first_at.insert(&record.id, index) {
            return Err(RecordError {
                index,
                line: 0,
                id: Some(record.id.to_string()),
                field: Some("id".to_owned()),
                problem: format!(
                    "records {first} and {index} have the same id: send each counterparty once per request"
                ),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory() -> Arc<Directory> {
        Arc::new(Directory::new(crate::soap::say_name_payload))
    }

    fn cp(id: &str, name: &str, phone: &str) -> Counterparty {
        serde_json::from_value(serde_json::json!({"id": id, "name": name, "phones": [phone]}))
            .expect("valid")
    }

    fn push_source(dir: &std::path::Path, directory: &Arc<Directory>) -> (Arc<PushSource>, Store) {
        let registry = Registry::new();
        let store = Store::open(&dir.join("s.sqlite"), &registry).expect("store");
        let push = PushSource::new(Arc::clone(directory), store.clone(), &registry).expect("push");
        push.snapshot_loaded();
        (Arc::new(push), store)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delete_of_another_sources_id_is_a_tombstone_until_that_copy_changes() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let directory = directory();
        let (push, store) = push_source(tmp.path(), &directory);
        let records = |name: &str| -> Vec<Counterparty> {
            (0..3)
                .map(|i| {
                    cp(
                        &format!("{i:06}"),
                        if i == 0 { name } else { "N" },
                        &format!("8916{i:07}"),
                    )
                })
                .collect()
        };
        directory.replace_source("file", records("A"), Some("p1".into()), SystemTime::now());
        let deleted = push
            .delete("000000", RequestId::default())
            .await
            .expect("delete");
        assert_eq!(
            deleted,
            DeleteReport {
                removed: true,
                counterparties: 2
            }
        );
        assert!(directory.lookup_id("000000").is_none());
        let stored = store.load_tombstones().await.expect("tombstones");
        assert_eq!(stored.len(), 1, "one row for the one source that had it");
        assert_eq!((&*stored[0].id, &*stored[0].source), ("000000", "file"));

        // A restart: the tombstones first, then the same file: still hidden.
        let restarted = Arc::new(Directory::new(crate::soap::say_name_payload));
        restarted.set_tombstones(&stored);
        let report =
            restarted.replace_source("file", records("A"), Some("p1".into()), SystemTime::now());
        assert!(restarted.lookup_id("000000").is_none());
        assert!(report.spent_tombstones.is_empty());
        // The file changes that record: the copy shows again, the tombstone is spent.
        let report = restarted.replace_source(
            "file",
            records("A, renamed"),
            Some("p2".into()),
            SystemTime::now(),
        );
        assert!(restarted.lookup_id("000000").is_some());
        assert_eq!(report.spent_tombstones, stored);
        assert_eq!(restarted.take_spent_tombstones(), stored);
        assert_eq!(store.forget_tombstones(&stored).await.expect("forget"), 1);
        assert!(store
            .load_tombstones()
            .await
            .expect("tombstones")
            .is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tombstone_deleted_again_after_it_was_spent_is_not_forgotten() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let directory = directory();
        let (push, store) = push_source(tmp.path(), &directory);
        let file = |name: &str| vec![cp("c0", name, "89160000001")];
        directory.replace_source("file", file("A"), Some("1".into()), SystemTime::now());
        push.delete("c0", RequestId::default())
            .await
            .expect("delete");
        // The copy changes (the tombstone is spent), changes back, and is deleted again.
        directory.replace_source("file", file("B"), Some("2".into()), SystemTime::now());
        directory.replace_source("file", file("A"), Some("3".into()), SystemTime::now());
        assert!(directory.lookup_id("c0").is_some());
        push.delete("c0", RequestId::default())
            .await
            .expect("delete again");
        let mut spent = directory.take_spent_tombstones();
        assert_eq!(spent.len(), 1, "{spent:?}");
        assert_eq!(push.forget(&mut spent).await.expect("forget"), 0);
        assert_eq!(store.load_tombstones().await.expect("tombstones").len(), 1);
        assert!(directory.lookup_id("c0").is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_upsert_is_in_the_store_and_the_directory_and_a_delete_takes_it_out_of_both() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let directory = directory();
        let (push, store) = push_source(tmp.path(), &directory);
        let repeated = push
            .upsert(
                vec![
                    cp("1", "A", "89160000001"),
                    cp("2", "B", "89160000002"),
                    cp("1", "A2", "89160000001"),
                ],
                RequestId::default(),
            )
            .await;
        assert!(
            matches!(&repeated, Err(PushError::Invalid(e)) if e.index == 2),
            "one id twice in a batch is refused: {repeated:?}"
        );
        assert!(directory.lookup_id("1").is_none(), "nothing was changed");
        let report = push
            .upsert(
                vec![cp("2", "B", "89160000002"), cp("1", "A2", "89160000001")],
                RequestId::default(),
            )
            .await
            .expect("upsert");
        assert_eq!(
            report,
            PushReport {
                upserted: 2,
                records: 2,
                counterparties: 2,
                warnings: vec![],
            }
        );
        let name = |id: &str| {
            directory
                .lookup_id(id)
                .map(|e| e.counterparty().expect("json").name.to_string())
        };
        assert_eq!(name("1").as_deref(), Some("A2"));
        let snapshot = store.load_snapshot().await.expect("load");
        assert_eq!(snapshot[0].records.len(), 2);

        let deleted = push
            .delete("1", RequestId::default())
            .await
            .expect("delete");
        assert_eq!(
            deleted,
            DeleteReport {
                removed: true,
                counterparties: 1
            }
        );
        assert_eq!(name("1"), None);
        assert_eq!(
            store.load_snapshot().await.expect("load")[0].records.len(),
            1
        );
        let again = push
            .delete("1", RequestId::default())
            .await
            .expect("delete again");
        assert!(!again.removed);
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn when_the_store_fails_the_directory_is_left_as_it_was() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let directory = directory();
        let (push, store) = push_source(tmp.path(), &directory);
        push.upsert(vec![cp("1", "A", "89160000001")], RequestId::default())
            .await
            .expect("upsert");
        store.close().await;
        let err = push
            .upsert(vec![cp("2", "B", "89160000002")], RequestId::default())
            .await
            .expect_err("store closed");
        assert!(
            matches!(err, PushError::NotSaved(StoreError::Closed)),
            "{err}"
        );
        assert!(directory.lookup_id("2").is_none());
        let err = push
            .delete("1", RequestId::default())
            .await
            .expect_err("store closed");
        assert!(matches!(err, PushError::NotSaved(_)), "{err}");
        assert!(
            directory.lookup_id("1").is_some(),
            "not removed when not saved"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_changes_of_one_id_are_applied_in_the_order_they_were_committed() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let directory = directory();
        let (push, store) = push_source(tmp.path(), &directory);
        for round in 0..4u64 {
            // Changes committed early are held longest before their apply:
            // without the ordering they would be applied last.
            *push.pauses.lock().expect("pauses") =
                (0..8).map(|k| Duration::from_millis(40 - 5 * k)).collect();
            let tasks: Vec<_> = (0..8)
                .map(|k| {
                    let push = Arc::clone(&push);
                    tokio::spawn(async move {
                        push.upsert(
                            vec![cp("same", &format!("v{round}-{k}"), "89160000001")],
                            RequestId::default(),
                        )
                        .await
                    })
                })
                .collect();
            for task in tasks {
                task.await.expect("task").expect("upsert");
            }
            let served = directory
                .lookup_id("same")
                .map(|e| e.counterparty().expect("json").name.to_string());
            let snapshot = store.load_snapshot().await.expect("load");
            let saved = snapshot[0].records[0].name.to_string();
            assert_eq!(served.as_deref(), Some(saved.as_str()), "round {round}");
        }
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_upserts_share_a_commit_and_each_is_answered_with_its_own_count() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let directory = directory();
        let (push, store) = push_source(tmp.path(), &directory);
        // The first commit is held: the others queue behind it and go in
        // together.
        *push.pauses.lock().expect("pauses") = [Duration::from_millis(200)].into();
        let before = store.transactions();
        let tasks: Vec<_> = (0..32usize)
            .map(|k| {
                let push = Arc::clone(&push);
                tokio::spawn(async move {
                    let records = (0..=k % 3)
                        .map(|j| cp(&format!("{k}-{j}"), "N", &format!("8916{k:03}{j:04}")))
                        .collect();
                    (k, push.upsert(records, RequestId::default()).await)
                })
            })
            .collect();
        for task in tasks {
            let (k, report) = task.await.expect("task");
            assert_eq!(report.expect("upsert").upserted, k % 3 + 1, "upsert {k}");
        }
        let transactions = store.transactions() - before;
        assert!(
            transactions < 8,
            "{transactions} store transactions for 32 upserts"
        );
        let all: usize = (0..32).map(|k| k % 3 + 1).sum();
        assert_eq!(directory.snapshot().len(), all);
        assert_eq!(
            store.load_snapshot().await.expect("load")[0].records.len(),
            all
        );
        store.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_invalid_record_changes_nothing() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let directory = directory();
        let (push, store) = push_source(tmp.path(), &directory);
        let mut bad = cp("2", "B", "89160000002");
        bad.name = "".into();
        let err = push
            .upsert(vec![cp("1", "A", "89160000001"), bad], RequestId::default())
            .await
            .expect_err("invalid");
        match err {
            PushError::Invalid(e) => assert_eq!((e.index, e.field.as_deref()), (1, Some("name"))),
            other => panic!("{other}"),
        }
        assert!(directory.lookup_id("1").is_none());
        assert!(store.load_snapshot().await.expect("load").is_empty());
        store.close().await;
    }
}
