//! A system's initial load and relink (issue 18 item 10), started by the
//! admin API (`POST /api/v1/sync/{system}/initial|relink`), one at a time
//! per system, their progress in `GET /api/v1/sync/status`.
//!
//! - **Initial load**: every exported record of the system with no id-map
//!   row or another hash is enqueued ([`Feed::initial_load`], in the feed's
//!   task, the reconcile's rule), paced: a chunk only while the system has
//!   fewer than [`initial_bound`] rows pending (twice what its concurrent
//!   batches take), so it enqueues as the worker drains and a million
//!   records never wait in the outbox at once. Not bound by `[sync]
//!   max_pending` (the webhooks'). The status shows the rows to send, those
//!   enqueued and sent (enqueued and no longer pending), and an ETA from
//!   the rate they were sent at so far; the job is done once every row is
//!   enqueued.
//! - **Relink**: the id-map rebuilt from the system's list
//!   ([`System::list_linked`]): each record the system holds is linked to
//!   the local record its external id names (the local record key the
//!   gateway wrote there), else to the one record of its business key
//!   ([`identity::by_business_key`]) that is linked to nothing else of the
//!   system. Nothing is created, here or there; a record matching nothing,
//!   or several, is left as it is (counted). A link keeps the id-map row's
//!   hash, so a record queued before is sent as an update of the linked
//!   copy, not a create.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::directory::{Counterparty, Directory};
use crate::logging::Escaped;
use crate::store::{IdMapLink, Store};
use crate::sync::parts::SyncRuntimeParts;

use super::feed::{Feed, InitialLoad};
use super::identity;
use super::inbound::Change;
use super::runtime::{Method, RequestOutcome, RuntimeMetrics};
use super::system::{ListedPage, System};

/// How often a running initial load's progress is noted.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Which job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Initial,
    Relink,
}

impl JobKind {
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Initial => "initial",
            JobKind::Relink => "relink",
        }
    }
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Running,
    Done,
    Failed,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
        }
    }
}

/// A system's last (or running) job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobProgress {
    pub kind: JobKind,
    pub state: JobState,
    pub started_at: SystemTime,
    pub finished_at: Option<SystemTime>,
    /// Initial load: rows to enqueue, once counted.
    pub total: Option<u64>,
    /// Initial load: rows enqueued for the system so far.
    pub enqueued: u64,
    /// Initial load: rows enqueued and no longer pending (sent, or given
    /// up on), estimated from the system's pending rows.
    pub sent: u64,
    /// Initial load: the most rows of the system pending for it to enqueue more.
    pub bound: Option<u64>,
    /// Initial load: seconds until every row is sent, at the rate rows
    /// were sent so far (none before the first is).
    pub eta_seconds: Option<u64>,
    /// Relink: the system's records read so far.
    pub seen: u64,
    /// Relink: links made (or made again).
    pub linked: u64,
    /// Relink: records already linked as they are.
    pub unchanged: u64,
    /// Relink: records matching no local record, or several (left alone).
    pub unmatched: u64,
    /// Why it failed.
    pub error: Option<String>,
}

impl JobProgress {
    fn start(kind: JobKind) -> JobProgress {
        JobProgress {
            kind,
            state: JobState::Running,
            started_at: SystemTime::now(),
            finished_at: None,
            total: None,
            enqueued: 0,
            sent: 0,
            bound: None,
            eta_seconds: None,
            seen: 0,
            linked: 0,
            unchanged: 0,
            unmatched: 0,
            error: None,
        }
    }
}

/// A job of the system is running already: the 409's text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {0} of this system is running; wait for it to finish (GET /api/v1/sync/status shows its progress)")]
pub struct Busy(pub &'static str);

/// The jobs of every registered system.
#[derive(Clone)]
pub struct SyncJobs {
    inner: Arc<Inner>,
}

struct Inner {
    systems: Vec<Arc<dyn System>>,
    directory: Arc<Directory>,
    store: Store,
    feed: Feed,
    /// Each system's settings (its concurrency paces an initial load).
    parts: Arc<SyncRuntimeParts>,
    /// `cti_sync_requests_total`: a relink's list requests.
    metrics: RuntimeMetrics,
    /// Each system's last job, by name.
    jobs: Mutex<HashMap<String, JobProgress>>,
}

impl SyncJobs {
    pub fn new(
        systems: Vec<Arc<dyn System>>,
        directory: Arc<Directory>,
        store: Store,
        feed: Feed,
        parts: Arc<SyncRuntimeParts>,
        metrics: RuntimeMetrics,
    ) -> SyncJobs {
        SyncJobs {
            inner: Arc::new(Inner {
                systems,
                directory,
                store,
                feed,
                parts,
                metrics,
                jobs: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Whether `system` is one of the registered systems.
    pub fn has(&self, system: &str) -> bool {
        self.system(system).is_some()
    }

    fn system(&self, name: &str) -> Option<Arc<dyn System>> {
        self.inner
            .systems
            .iter()
            .find(|s| s.spec().name() == name)
            .cloned()
    }

    /// `system`'s last job, if it had one since the start.
    pub fn progress(&self, system: &str) -> Option<JobProgress> {
        lock(&self.inner.jobs).get(system).cloned()
    }

    /// Starts `kind` for registered `system` in the background; `Busy`
    /// while one of its jobs runs. `None`: no such system.
    pub fn start(&self, system: &str, kind: JobKind) -> Option<Result<(), Busy>> {
        let sys = self.system(system)?;
        {
            let mut jobs = lock(&self.inner.jobs);
            if let Some(running) = jobs.get(system).filter(|j| j.state == JobState::Running) {
                return Some(Err(Busy(running.kind.as_str())));
            }
            jobs.insert(system.to_owned(), JobProgress::start(kind));
        }
        tracing::info!(
            system,
            job = kind.as_str(),
            "sync: started by the admin API"
        );
        let jobs = self.clone();
        tokio::spawn(async move {
            let name = sys.spec().name().to_owned();
            let result = match kind {
                JobKind::Initial => jobs.initial(&*sys).await,
                JobKind::Relink => jobs.relink(&*sys).await,
            };
            let mut all = lock(&jobs.inner.jobs);
            if let Some(job) = all.get_mut(&name) {
                job.finished_at = Some(SystemTime::now());
                match result {
                    Ok(()) => {
                        job.state = JobState::Done;
                        tracing::info!(system = %name, job = kind.as_str(), seen = job.seen, linked = job.linked, unmatched = job.unmatched, "sync: done");
                    }
                    Err(error) => {
                        tracing::error!(system = %name, job = kind.as_str(), error = %Escaped(&error), "sync: failed");
                        job.state = JobState::Failed;
                        job.error = Some(error);
                    }
                }
            }
        });
        Some(Ok(()))
    }

    /// The system's paced initial load, its progress noted each second.
    async fn initial(&self, system: &dyn System) -> Result<(), String> {
        let name = system.spec().name();
        let concurrency = self
            .inner
            .parts
            .get(name)
            .map_or(1, |p| p.config.concurrency);
        let bound = initial_bound(system.batch_size(), concurrency);
        let load = self.inner.feed.initial_load(name, bound);
        let started = std::time::Instant::now();
        let finished = load.finished();
        tokio::pin!(finished);
        let result = loop {
            tokio::select! {
                result = &mut finished => break result,
                _ = tokio::time::sleep(PROGRESS_EVERY) => {
                    self.note_initial(&load, started.elapsed()).await;
                }
            }
        };
        self.note_initial(&load, started.elapsed()).await;
        result
    }

    /// Notes an initial load's counts, and the rows sent and ETA from the
    /// system's pending rows.
    async fn note_initial(&self, load: &InitialLoad, elapsed: std::time::Duration) {
        let (total, enqueued) = (load.total(), load.enqueued());
        let pending = self
            .inner
            .store
            .sync_depth(load.system())
            .await
            .map(|d| d.outbox)
            .ok();
        self.note(load.system(), |j| {
            j.total = total;
            j.enqueued = enqueued;
            j.bound = Some(load.bound());
            if let Some(pending) = pending {
                // Rows of other changes pending too make this an estimate,
                // never above what was enqueued.
                j.sent = enqueued.saturating_sub(pending).max(j.sent.min(enqueued));
            }
            let to_send = total.map(|t| t.saturating_sub(load.skipped()));
            j.eta_seconds = match to_send {
                Some(to_send) if j.sent > 0 && elapsed.as_secs_f64() > 0.0 => {
                    let rate = j.sent as f64 / elapsed.as_secs_f64();
                    Some((to_send.saturating_sub(j.sent) as f64 / rate).ceil() as u64)
                }
                Some(0) => Some(0),
                _ => None,
            };
        });
    }

    fn note(&self, system: &str, f: impl FnOnce(&mut JobProgress)) {
        if let Some(job) = lock(&self.inner.jobs).get_mut(system) {
            f(job);
        }
    }

    async fn relink(&self, system: &dyn System) -> Result<(), String> {
        let spec = system.spec();
        let name = spec.name();
        let store = &self.inner.store;
        let directory = &self.inner.directory;
        let mut after: Option<String> = None;
        loop {
            let listed = system.list_linked(after.as_deref()).await;
            let outcome = match &listed {
                Ok(_) => RequestOutcome::Ok,
                Err(o) => RequestOutcome::of(std::slice::from_ref(o)),
            };
            self.inner.metrics.request(name, Method::List, outcome);
            let ListedPage { records, next } =
                listed.map_err(|o| format!("the system's list failed: {o:?}"))?;
            for listed in records {
                let record = listed.record;
                self.note(name, |j| j.seen += 1);
                let Change::Upsert(remote) = record.change else {
                    continue;
                };
                let (kind, remote_id) = (record.kind, record.remote_id);
                let current = store
                    .idmap_by_remote(name, &kind, &remote_id)
                    .await
                    .map_err(|e| e.to_string())?
                    .filter(|row| row.closed_at.is_none());
                // Free: no link of the system's, or a link to this very record.
                let free = |row: Option<crate::store::IdMapRow>| {
                    row.is_none_or(|r| {
                        r.closed_at.is_some()
                            || r.remote_id.is_none()
                            || r.remote_id.as_deref() == Some(&remote_id)
                    })
                };
                let by_external = match listed.external_id {
                    Some(id) if directory.lookup_id(&id).is_some() => {
                        let row = store
                            .idmap_get(name, &kind, &id)
                            .await
                            .map_err(|e| e.to_string())?;
                        free(row).then_some(id)
                    }
                    _ => None,
                };
                let local = match by_external {
                    Some(id) => Some(id),
                    None => {
                        let probe = Counterparty {
                            id: String::new().into(),
                            inn: remote.inn.as_deref().map(Into::into),
                            kpp: remote.kpp.as_deref().map(Into::into),
                            ..Default::default()
                        };
                        let found = identity::by_business_key(directory, spec.dedupe_key(), &probe);
                        match found.as_slice() {
                            [one] => {
                                let row = store
                                    .idmap_get(name, &kind, one.id())
                                    .await
                                    .map_err(|e| e.to_string())?;
                                free(row).then(|| one.id().to_owned())
                            }
                            _ => None,
                        }
                    }
                };
                match local {
                    Some(local)
                        if current.as_ref().map(|r| r.local_id.as_str()) == Some(&local) =>
                    {
                        self.note(name, |j| j.unchanged += 1);
                    }
                    Some(local) => {
                        store
                            .idmap_link(IdMapLink {
                                system: name.to_owned(),
                                kind,
                                local_id: local,
                                remote_id,
                                hash: None,
                            })
                            .await
                            .map_err(|e| e.to_string())?;
                        self.note(name, |j| j.linked += 1);
                    }
                    None => self.note(name, |j| j.unmatched += 1),
                }
            }
            match next {
                Some(next) if after.as_deref() != Some(&next) => after = Some(next),
                _ => return Ok(()),
            }
        }
    }
}

/// The most rows of a system pending for its initial load to enqueue
/// more: twice what its concurrent batches take (so the worker never waits
/// for the next chunk), at most 10,000.
pub fn initial_bound(batch_size: usize, concurrency: usize) -> u64 {
    let rows = 2 * batch_size.max(1) * concurrency.max(1);
    (rows as u64).min(10_000)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
