//! A system's initial load, paced (issue 18 items 7 and 10): every
//! exported record the system lacks (no id-map row, or another hash) is
//! enqueued, but only while the system's pending outbox stays under a
//! bound, so a million-record load never puts a million rows in the outbox
//! at once: it enqueues as the worker drains.
//!
//! The load runs in the feed's task, between its batches of change
//! reports: a chunk reads each record's answer and last hash as they are
//! *then*, exactly as a change report would, so a change made during the
//! load and the load's row of the same record never race (whichever comes
//! first, the other compares with its hash). At the start the records to
//! send are counted (their ids kept: about 30 bytes a record), the removes
//! for ids the id-map holds that answer no more included; a record that
//! changed meanwhile is sent as it is, one that needs nothing any more is
//! skipped.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::{enqueue, row_for, Context, Inlet, Outbox, OutboxError, ENQUEUE_CHUNK};

/// The wait before the pending rows are counted again while the system's
/// outbox is at its bound.
pub(super) const PACE_POLL: Duration = Duration::from_millis(100);

/// An initial load's progress, shared by the feed (which enqueues it) and
/// its job (which shows it, `GET /api/v1/sync/status`).
#[derive(Debug)]
pub struct InitialLoad {
    system: String,
    /// The most rows of the system pending at once for the load to enqueue more.
    bound: u64,
    /// Rows to enqueue, counted when the load starts (`u64::MAX` before).
    total: AtomicU64,
    /// Rows enqueued so far.
    enqueued: AtomicU64,
    /// Records counted at the start that needed nothing by their turn.
    skipped: AtomicU64,
    finished: watch::Sender<Option<Result<(), String>>>,
}

impl InitialLoad {
    pub(super) fn new(system: &str, bound: u64) -> InitialLoad {
        InitialLoad {
            system: system.to_owned(),
            bound: bound.max(1),
            total: AtomicU64::new(u64::MAX),
            enqueued: AtomicU64::new(0),
            skipped: AtomicU64::new(0),
            finished: watch::Sender::new(None),
        }
    }

    pub fn system(&self) -> &str {
        &self.system
    }

    pub fn bound(&self) -> u64 {
        self.bound
    }

    /// The rows the load is to enqueue, once counted.
    pub fn total(&self) -> Option<u64> {
        match self.total.load(Ordering::SeqCst) {
            u64::MAX => None,
            n => Some(n),
        }
    }

    pub fn enqueued(&self) -> u64 {
        self.enqueued.load(Ordering::SeqCst)
    }

    /// Counted rows that needed nothing by their turn (sent meanwhile by a
    /// change, or changed back).
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::SeqCst)
    }

    /// Waits until every row is enqueued (`Ok`), or the load failed.
    pub async fn finished(&self) -> Result<(), String> {
        let mut rx = self.finished.subscribe();
        loop {
            if let Some(result) = rx.borrow_and_update().clone() {
                return result;
            }
            if rx.changed().await.is_err() {
                return Err("the change feed stopped".to_owned());
            }
        }
    }

    pub(super) fn finish(&self, result: Result<(), String>) {
        self.finished.send_if_modified(|r| {
            if r.is_some() {
                return false;
            }
            *r = Some(result);
            true
        });
    }
}

/// Loads asked for and not started yet, in order.
#[derive(Default)]
pub(super) struct Requests(Mutex<VecDeque<Arc<InitialLoad>>>);

impl Requests {
    pub(super) fn push(&self, load: Arc<InitialLoad>) {
        self.lock().push_back(load);
    }

    pub(super) fn pop(&self) -> Option<Arc<InitialLoad>> {
        self.lock().pop_front()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<InitialLoad>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The load the feed's task is running: the ids still to enqueue.
pub(super) struct Active {
    pub(super) load: Arc<InitialLoad>,
    pub(super) ids: VecDeque<Box<str>>,
}

/// The feed task's loads; whatever is left when the task ends (stopped)
/// fails, so no job waits for ever.
pub(super) struct Loads {
    pub(super) inlet: Arc<Inlet>,
    pub(super) active: Option<Active>,
}

impl Drop for Loads {
    fn drop(&mut self) {
        let stopped = || Err("the change feed stopped before the load was enqueued".to_owned());
        if let Some(active) = self.active.take() {
            active.load.finish(stopped());
        }
        while let Some(load) = self.inlet.initial.pop() {
            load.finish(stopped());
        }
    }
}

/// The ids the system needs a row for now: exported records with another
/// hash than the last queued or confirmed (or none), and ids the id-map
/// holds that answer no more. `None`: no such system.
pub(super) async fn count<O: Outbox>(
    context: &Context<O>,
    system: &str,
) -> Result<Option<VecDeque<Box<str>>>, OutboxError> {
    let Some(spec) = context
        .registry
        .systems()
        .iter()
        .find(|s| s.name() == system)
    else {
        return Ok(None);
    };
    let known = context.outbox.hashes(system, spec.record_kind()).await?;
    let index = context.directory.snapshot();
    let mut ids = VecDeque::new();
    for entry in index.answering() {
        let hash = known.get(entry.id()).copied();
        if row_for(context, spec, entry.id(), Some(entry), hash).is_some() {
            ids.push_back(entry.id().into());
        }
    }
    for (key, &hash) in &known {
        if index.by_id(key).is_none() && row_for(context, spec, key, None, Some(hash)).is_some() {
            ids.push_back(key.as_str().into());
        }
    }
    Ok(Some(ids))
}

/// Enqueues the next chunk of `active` if the system's pending rows are
/// under the bound: whether it did (more may follow at once).
pub(super) async fn step<O: Outbox>(
    context: &Context<O>,
    inlet: &Inlet,
    active: &mut Active,
) -> Result<bool, OutboxError> {
    let load = Arc::clone(&active.load);
    let pending = context.outbox.pending(&load.system).await?;
    if pending >= load.bound {
        return Ok(false);
    }
    let room = usize::try_from(load.bound - pending)
        .unwrap_or(usize::MAX)
        .min(ENQUEUE_CHUNK);
    let take = room.min(active.ids.len());
    let ids: Vec<Box<str>> = active.ids.drain(..take).collect();
    let Some(spec) = context
        .registry
        .systems()
        .iter()
        .find(|s| s.name() == load.system)
    else {
        return Ok(false);
    };
    let index = context.directory.snapshot();
    let mut rows = Vec::with_capacity(ids.len());
    for id in &ids {
        let entry = index.by_id(id).map(|e| &**e);
        let known = inlet.last_hash(&load.system, id);
        if let Some(row) = row_for(context, spec, id, entry, known) {
            rows.push(row);
        }
    }
    let (made, skipped) = (rows.len() as u64, (ids.len() - rows.len()) as u64);
    let name = load.system.clone();
    // At most one chunk: one transaction, all or nothing.
    let enqueued = enqueue(context, rows, |key, hash| {
        if let Some(known) = inlet
            .known_mut()
            .as_mut()
            .and_then(|k| k.get_mut(name.as_str()))
        {
            known.set(key, hash);
        }
    })
    .await;
    if let Err(e) = enqueued {
        // Nothing of the chunk was queued: its ids are taken again.
        for id in ids.into_iter().rev() {
            active.ids.push_front(id);
        }
        return Err(e);
    }
    load.enqueued.fetch_add(made, Ordering::SeqCst);
    load.skipped.fetch_add(skipped, Ordering::SeqCst);
    Ok(true)
}

/// Notes the count a load starts with.
pub(super) fn started(load: &InitialLoad, total: usize) {
    load.total.store(total as u64, Ordering::SeqCst);
}
