//! The change feed: from the directory's change reports to the outbox of
//! every registered system.
//!
//! The directory tells the feed which ids a change moved
//! ([`crate::directory::Changes`]) through a bounded channel, after its
//! swap, on the thread of the change; the feed's task then, per system,
//! reads each id's answer *now* (so the order reports arrive in does not
//! matter, and a report read twice does nothing), hashes the synced fields
//! ([`super::hash`]) and enqueues only what differs from the last hash
//! queued or confirmed (the newest outbox row's, else the id-map's):
//! an upsert with the record's JSON, or a remove with its id for an id that
//! answers no more. A record whose requisites fail
//! [`requisites::check`] is never enqueued (counted).
//!
//! A source never waits for the feed: when the channel is full the report
//! is dropped and a flag set, and a **reconcile** runs instead: every
//! exported record whose hash differs from the last one is enqueued, and a
//! remove for every id queued or linked that answers no more. The
//! reconcile also runs at start-up, so a crash between a directory swap and
//! its enqueue (or a failed enqueue) loses nothing. The feed's work runs on
//! the lowest-priority thread ([`LowPriority`]): a reconcile parses every
//! record, and a call must never wait for it.
//!
//! The last hashes are kept in memory per system (read at each reconcile,
//! updated by each enqueue, keyed by a 64-bit hash of the id: about 20
//! bytes a record): one store read per reconcile, not per change; the
//! inbound path reads them too ([`Feed::last_hash`]). Whoever else writes
//! id-map hashes (a CRM's change applied here) tells the feed through the
//! same channel ([`Feed::note_hashes`]), or the feed would send that change
//! back.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{mpsc, watch, Notify};

use crate::directory::{requisites, ChangeSink, Counterparty, Directory, Entry, ReplaceReport};
use crate::logging::Escaped;
use crate::sources::LowPriority;
use crate::store::{NewOutboxRow, OutboxOp, Store};

use super::hash::{self, CLOSED, REMOVED};
use super::metrics::FeedMetrics;
use super::registry::{Field, Registry, SystemSpec};

mod initial;
pub use initial::InitialLoad;

/// Rows per enqueue: one store transaction each.
const ENQUEUE_CHUNK: usize = 1_000;
/// Reports taken from the channel at once.
const BATCH_REPORTS: usize = 64;

/// What a row asks of a system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Upsert,
    Remove,
}

/// One row the feed enqueues for a system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedRow {
    pub system: String,
    /// The id-map's kind of the record (the system's `record_kind`).
    pub kind: String,
    /// The directory id.
    pub record_key: String,
    pub op: Op,
    /// The record's JSON (upsert), or its id as a JSON string (remove).
    pub body: String,
    /// The hash of what the row sends ([`REMOVED`] for a remove): kept with
    /// the row, the id-map's once the system confirms it.
    pub hash: u64,
}

pub type OutboxError = Box<dyn std::error::Error + Send + Sync>;

/// Where the feed's rows go: the sync store's outbox and id-map.
pub trait Outbox: Clone + Send + Sync + 'static {
    /// Commits `rows`, each with its hash, in one transaction.
    fn enqueue(&self, rows: Vec<FeedRow>) -> impl Future<Output = Result<(), OutboxError>> + Send;

    /// The last hash queued or confirmed of each of `system`'s records of
    /// `kind`, by record key ([`Store::last_hashes`], closed links as [`CLOSED`]).
    fn hashes(
        &self,
        system: &str,
        kind: &str,
    ) -> impl Future<Output = Result<HashMap<String, u64>, OutboxError>> + Send;

    /// `system`'s rows waiting to be sent, which paces an initial load
    /// ([`Feed::initial_load`]). None by default.
    fn pending(&self, _system: &str) -> impl Future<Output = Result<u64, OutboxError>> + Send {
        async { Ok(0) }
    }
}

/// How the feed runs.
#[derive(Debug, Clone)]
pub struct FeedSettings {
    /// Change reports the channel holds before a source's next report is
    /// dropped for a reconcile.
    pub capacity: usize,
    /// The wait before a failed reconcile (or enqueue) is tried again.
    pub retry_after: Duration,
}

impl Default for FeedSettings {
    fn default() -> FeedSettings {
        FeedSettings {
            capacity: 1_024,
            retry_after: Duration::from_secs(5),
        }
    }
}

/// The feed's side the directory and the gateway hold: the sink for the
/// directory, and what tests wait on.
#[derive(Clone)]
pub struct Feed {
    inlet: Arc<Inlet>,
}

struct Inlet {
    sender: mpsc::Sender<Report>,
    /// A report was dropped (the channel was full, or an enqueue failed):
    /// a reconcile is due.
    overflowed: AtomicBool,
    wake: Notify,
    /// Reports put in the channel, for [`Feed::settled`].
    sent: AtomicU64,
    /// Test hook: reports are dropped as a crash after the swap would.
    dropping: AtomicBool,
    /// Test hook: while true the task reads no report (the channel fills).
    held: watch::Sender<bool>,
    progress: watch::Sender<Progress>,
    metrics: FeedMetrics,
    /// The last hash queued or confirmed per system and record, once the
    /// start-up reconcile has read them: the feed compares each change with
    /// it, and the inbound path ([`Feed::last_hash`]) tells an echo of a row
    /// still queued or in flight (the id-map takes a hash only when the
    /// system confirms). Locked briefly, never across an await.
    known: RwLock<Option<Known>>,
    /// Initial loads asked for, not started yet.
    initial: initial::Requests,
}

/// What the channel carries, in the order it happened.
enum Report {
    /// Ids whose answer a directory change moved.
    Changed(Vec<Box<str>>),
    /// Id-map hashes another writer committed (see [`Feed::note_hashes`]).
    Noted {
        system: Box<str>,
        hashes: Vec<(Box<str>, u64)>,
    },
}

/// How far the feed's task got.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    /// Reports taken and handled (enqueued, or failed and left to a reconcile).
    handled: u64,
    /// Reconciles done, each successful one.
    reconciles: u64,
    /// A reconcile is due or running.
    reconcile_due: bool,
}

/// The feed's receiving side, for [`run`].
pub struct FeedInput {
    receiver: mpsc::Receiver<Report>,
    inlet: Arc<Inlet>,
    retry_after: Duration,
}

/// A feed and its input. Nothing is read until [`run`] starts.
pub fn channel(settings: &FeedSettings, metrics: FeedMetrics) -> (Feed, FeedInput) {
    let (sender, receiver) = mpsc::channel(settings.capacity.max(1));
    let inlet = Arc::new(Inlet {
        sender,
        overflowed: AtomicBool::new(false),
        wake: Notify::new(),
        sent: AtomicU64::new(0),
        dropping: AtomicBool::new(false),
        held: watch::Sender::new(false),
        progress: watch::Sender::new(Progress {
            reconcile_due: true,
            ..Progress::default()
        }),
        metrics,
        known: RwLock::new(None),
        initial: initial::Requests::default(),
    });
    let input = FeedInput {
        receiver,
        inlet: Arc::clone(&inlet),
        retry_after: settings.retry_after,
    };
    (Feed { inlet }, input)
}

impl Feed {
    /// The directory's [`ChangeSink`]: never blocks.
    pub fn sink(&self) -> ChangeSink {
        let inlet = Arc::clone(&self.inlet);
        Arc::new(move |report: &ReplaceReport| inlet.hand_over(report))
    }

    /// Test hook: while on, change reports are dropped without a trace, as a
    /// crash between the directory's swap and the enqueue would lose them;
    /// the next start-up's reconcile must make them good.
    #[doc(hidden)]
    pub fn drop_reports_for_tests(&self, on: bool) {
        self.inlet.dropping.store(on, Ordering::SeqCst);
    }

    /// Test hook: while on, the feed's task reads no report, so the
    /// channel fills as behind a slow enqueue, and the next report takes
    /// the overflow path.
    #[doc(hidden)]
    pub fn hold_for_tests(&self, on: bool) {
        self.inlet.held.send_replace(on);
    }

    /// Waits until every report handed over before the call is handled and
    /// no reconcile is due (the start-up one included): then the outbox
    /// holds what the directory's state calls for.
    pub async fn settled(&self) {
        let target = self.inlet.sent.load(Ordering::SeqCst);
        let mut progress = self.inlet.progress.subscribe();
        loop {
            let due = self.inlet.overflowed.load(Ordering::SeqCst);
            let now = *progress.borrow_and_update();
            if now.handled >= target && !now.reconcile_due && !due {
                return;
            }
            if progress.changed().await.is_err() {
                return;
            }
        }
    }

    /// Tells the feed of id-map hashes `system`'s runtime committed (a
    /// record the system sent, applied here): the feed compares the next
    /// change of those records with them, so what the system sent is never
    /// queued back to it. Call it after the commit and before the change
    /// reaches the directory. Never blocks: when the channel is full a
    /// reconcile reads the id-map instead.
    pub fn note_hashes(&self, system: &str, hashes: Vec<(Box<str>, u64)>) {
        self.inlet.send(Report::Noted {
            system: system.into(),
            hashes,
        });
    }

    /// The last hash queued or confirmed for `system`'s record `key`, as the
    /// feed knows it (`None` before the start-up reconcile, or for a record
    /// never queued): newer than the id-map's while a row is queued or in
    /// flight.
    pub fn last_hash(&self, system: &str, key: &str) -> Option<u64> {
        self.inlet.last_hash(system, key)
    }

    /// Asks for a reconcile now (every exported record with no id-map row
    /// or another hash is enqueued, for every system);
    /// [`Feed::settled`] waits for it.
    pub fn reconcile_now(&self) {
        self.inlet.reconcile_later();
    }

    /// Starts `system`'s initial load: what a reconcile would enqueue for
    /// it, enqueued in chunks while the system has fewer than `bound` rows
    /// pending (see [`initial`]); loads run one after another. The handle
    /// shows its progress and end.
    pub fn initial_load(&self, system: &str, bound: u64) -> Arc<InitialLoad> {
        let load = Arc::new(InitialLoad::new(system, bound));
        self.inlet.initial.push(Arc::clone(&load));
        self.inlet.wake.notify_one();
        load
    }

    /// The sync metrics (the inbound path counts duplicates refused).
    pub fn metrics(&self) -> &FeedMetrics {
        &self.inlet.metrics
    }

    /// Successful reconciles so far (the start-up one included).
    pub fn reconciles(&self) -> u64 {
        self.inlet.progress.borrow().reconciles
    }
}

impl Inlet {
    /// Whether the start-up reconcile has read the last hashes.
    fn knows(&self) -> bool {
        self.known
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    fn last_hash(&self, system: &str, key: &str) -> Option<u64> {
        let known = self.known.read().unwrap_or_else(|e| e.into_inner());
        known.as_ref()?.get(system)?.get(key)
    }

    fn known_mut(&self) -> std::sync::RwLockWriteGuard<'_, Option<Known>> {
        self.known.write().unwrap_or_else(|e| e.into_inner())
    }

    fn hand_over(&self, report: &ReplaceReport) {
        if self.dropping.load(Ordering::SeqCst) {
            return;
        }
        let changes = &report.changes;
        let ids: Vec<Box<str>> = changes
            .added
            .iter()
            .chain(&changes.rebuilt)
            .chain(&changes.removed)
            .cloned()
            .collect();
        self.send(Report::Changed(ids));
    }

    fn send(&self, report: Report) {
        // Counted before the send: the task may handle it at once.
        self.sent.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.sender.try_send(report) {
            self.sent.fetch_sub(1, Ordering::SeqCst);
            if matches!(e, mpsc::error::TrySendError::Full(_)) {
                self.metrics.overflows.inc();
                self.reconcile_later();
            }
        }
    }

    fn reconcile_later(&self) {
        self.progress.send_modify(|p| p.reconcile_due = true);
        self.overflowed.store(true, Ordering::SeqCst);
        self.wake.notify_one();
    }
}

/// What the feed's work needs, shared with the low-priority thread.
struct Context<O> {
    directory: Arc<Directory>,
    registry: Registry,
    outbox: O,
    metrics: FeedMetrics,
    /// The records held back for a failing requisite, by a hash of
    /// (system, id), with a hash of the content that was counted: a record
    /// is counted once per content, not at every change report or
    /// reconcile that looks at it again. Only failing records are kept.
    held_back: std::sync::Mutex<HashMap<u64, u64>>,
}

impl<O> Context<O> {
    /// Notes whether `system`'s record `id` is held back for a failing
    /// requisite (`failing`: the record) and counts it in
    /// `cti_sync_feed_invalid_requisites_total` when its content is one not
    /// counted yet; a record that passes is forgotten (broken again, it
    /// counts again).
    fn held_back(&self, system: &str, id: &str, failing: Option<&Counterparty>) {
        let key = system_key_hash(system, id);
        let mut held = self.held_back.lock().unwrap_or_else(|p| p.into_inner());
        match failing {
            None => {
                if !held.is_empty() {
                    held.remove(&key);
                }
            }
            Some(record) => {
                let content = hash::hash(record, Field::ALL);
                if held.insert(key, content) != Some(content) {
                    self.metrics.held_back(system);
                }
            }
        }
    }
}

/// FNV-1a of a system's name and a record key, a zero byte between.
fn system_key_hash(system: &str, key: &str) -> u64 {
    system
        .bytes()
        .chain(std::iter::once(0))
        .chain(key.bytes())
        .fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        })
}

/// Per system: the last hash queued or confirmed of each record key.
type Known = HashMap<Box<str>, KnownHashes>;

/// One system's id-map hashes between reconciles, keyed by a 64-bit hash
/// of the record key: about 20 bytes a record, not a string each (a
/// million records, several systems). Two keys of one key hash (odds of
/// about 3·10⁻⁸ at a million) cost at most a row too many or too few until
/// the next reconcile, which compares whole keys.
#[derive(Default)]
struct KnownHashes(HashMap<u64, u64>);

impl KnownHashes {
    fn get(&self, key: &str) -> Option<u64> {
        self.0.get(&key_hash(key)).copied()
    }

    fn set(&mut self, key: &str, hash: u64) {
        self.0.insert(key_hash(key), hash);
    }
}

/// FNV-1a of a record key.
fn key_hash(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Starts the feed's task and its lowest-priority worker thread
/// (`cti-sync-feed`); both end at `stop`. First a reconcile (start-up),
/// then the change reports as they come, a reconcile whenever one was
/// dropped.
pub fn spawn<O: Outbox>(
    input: FeedInput,
    directory: Arc<Directory>,
    registry: Registry,
    outbox: O,
    stop: watch::Receiver<bool>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let low = Arc::new(LowPriority::start("cti-sync-feed")?);
    Ok(tokio::spawn(run(
        input, directory, registry, outbox, low, stop,
    )))
}

async fn run<O: Outbox>(
    input: FeedInput,
    directory: Arc<Directory>,
    registry: Registry,
    outbox: O,
    low: Arc<LowPriority>,
    mut stop: watch::Receiver<bool>,
) {
    let FeedInput {
        mut receiver,
        inlet,
        retry_after,
    } = input;
    let context = Arc::new(Context {
        directory,
        registry,
        outbox,
        metrics: inlet.metrics.clone(),
        held_back: std::sync::Mutex::new(HashMap::new()),
    });
    let mut loads = initial::Loads {
        inlet: Arc::clone(&inlet),
        active: None,
    };
    loop {
        if *stop.borrow() {
            return;
        }
        // The start-up reconcile, or one a dropped report or a failed
        // enqueue called for. The flag is cleared first: a report dropped
        // while it runs calls for another.
        if !inlet.knows() || inlet.overflowed.load(Ordering::SeqCst) {
            // Due before the flag is cleared: `Feed::settled` sees one or the other.
            inlet.progress.send_modify(|p| p.reconcile_due = true);
            inlet.overflowed.store(false, Ordering::SeqCst);
            let context = Arc::clone(&context);
            let reconciling = low.run_future("sync feed", async move { reconcile(&context).await });
            // Stopping cancels a reconcile on the worker: the next start makes one.
            let done = tokio::select! {
                done = reconciling => done,
                _ = stop.wait_for(|s| *s) => return,
            };
            let outcome = match done {
                Ok(Ok(fresh)) => Ok(fresh),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match outcome {
                Ok(fresh) => {
                    *inlet.known_mut() = Some(fresh);
                    reconciled(&inlet, true);
                }
                Err(error) => {
                    reconciled(&inlet, false);
                    tracing::warn!(error = %error, retry_in = ?retry_after, "sync feed: reconcile failed; tried again");
                    inlet.overflowed.store(true, Ordering::SeqCst);
                    tokio::select! {
                        _ = tokio::time::sleep(retry_after) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
            continue;
        }
        let mut held = inlet.held.subscribe();
        if *held.borrow_and_update() {
            tokio::select! {
                _ = held.wait_for(|on| !on) => {}
                changed = stop.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            continue;
        }
        // An initial load's next chunk, between batches of reports.
        let pace = match initial_load_step(&context, &inlet, &low, &mut loads, retry_after).await {
            Some(pace) => pace,
            None => return,
        };
        let mut reports = Vec::new();
        tokio::select! {
            got = receiver.recv_many(&mut reports, BATCH_REPORTS) => {
                if got == 0 {
                    return;
                }
            }
            _ = tokio::time::sleep(pace.unwrap_or_default()), if pace.is_some() => continue,
            _ = inlet.wake.notified() => continue,
            _ = held.wait_for(|on| *on) => continue,
            changed = stop.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        }
        let handled = reports.len() as u64;
        // Hashes noted first: a change of the same batch is compared with them.
        let mut ids: Vec<Box<str>> = Vec::new();
        for report in reports {
            match report {
                Report::Changed(changed) => ids.extend(changed),
                Report::Noted { system, hashes } => {
                    if let Some(known) = inlet.known_mut().as_mut().and_then(|k| k.get_mut(&system))
                    {
                        for (key, hash) in hashes {
                            known.set(&key, hash);
                        }
                    }
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let (context_for, inlet_for) = (Arc::clone(&context), Arc::clone(&inlet));
        let feeding = low.run_future("sync feed", async move {
            feed_changes(&context_for, &inlet_for, &ids).await
        });
        let done = tokio::select! {
            done = feeding => done,
            _ = stop.wait_for(|s| *s) => return,
        };
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "sync feed: enqueue failed; a reconcile will make it good");
                inlet.reconcile_later();
            }
            // The worker thread is gone: the next reconcile reads the id-map again.
            Err(e) => tracing::error!(error = %e, "sync feed: changes not handled"),
        }
        inlet.progress.send_modify(|p| p.handled += handled);
    }
}

/// Starts the next initial load asked for, if none runs, and enqueues the
/// running one's next chunk if its system has room: when to look again
/// (`Some(None)`: no load runs; `None`: the worker thread is gone).
async fn initial_load_step<O: Outbox>(
    context: &Arc<Context<O>>,
    inlet: &Arc<Inlet>,
    low: &Arc<LowPriority>,
    loads: &mut initial::Loads,
    retry_after: Duration,
) -> Option<Option<Duration>> {
    if loads.active.is_none() {
        let Some(load) = inlet.initial.pop() else {
            return Some(None);
        };
        let (context, system) = (Arc::clone(context), load.system().to_owned());
        let counted = low
            .run_future("sync feed", async move {
                initial::count(&context, &system).await
            })
            .await;
        match counted {
            Ok(Ok(Some(ids))) => {
                initial::started(&load, ids.len());
                tracing::info!(
                    system = load.system(),
                    rows = ids.len(),
                    bound = load.bound(),
                    "sync feed: initial load started, paced by the system's pending rows"
                );
                loads.active = Some(initial::Active { load, ids });
            }
            Ok(Ok(None)) => {
                load.finish(Err(format!("no system {} is registered", load.system())));
                return Some(Some(Duration::ZERO));
            }
            Ok(Err(e)) => {
                load.finish(Err(format!("the records to send were not counted: {e}")));
                return Some(Some(Duration::ZERO));
            }
            Err(_) => {
                load.finish(Err("the change feed's thread is gone".to_owned()));
                return None;
            }
        }
    }
    let mut active = loads.active.take()?;
    if active.ids.is_empty() {
        tracing::info!(
            system = active.load.system(),
            "sync feed: initial load: nothing to send"
        );
        active.load.finish(Ok(()));
        return Some(Some(Duration::ZERO));
    }
    let (context, inlet_for) = (Arc::clone(context), Arc::clone(inlet));
    let stepped = low
        .run_future("sync feed", async move {
            let stepped = initial::step(&context, &inlet_for, &mut active).await;
            (active, stepped.map_err(|e| e.to_string()))
        })
        .await;
    let Ok((active, stepped)) = stepped else {
        return None;
    };
    let pace = match stepped {
        Ok(true) => Duration::ZERO,
        Ok(false) => initial::PACE_POLL,
        Err(e) => {
            tracing::warn!(system = active.load.system(), error = %e, retry_in = ?retry_after, "sync feed: an initial load's chunk was not enqueued; tried again");
            retry_after
        }
    };
    if active.ids.is_empty() {
        tracing::info!(
            system = active.load.system(),
            enqueued = active.load.enqueued(),
            skipped = active.load.skipped(),
            "sync feed: initial load enqueued"
        );
        active.load.finish(Ok(()));
        return Some(Some(Duration::ZERO));
    }
    loads.active = Some(active);
    Some(Some(pace))
}

fn reconciled(inlet: &Inlet, ok: bool) {
    inlet.metrics.reconcile(ok);
    inlet.progress.send_modify(|p| {
        if ok {
            p.reconciles += 1;
        }
        p.reconcile_due = !ok;
    });
}

/// Enqueues, per system, what the changed `ids` call for.
async fn feed_changes<O: Outbox>(
    context: &Context<O>,
    inlet: &Inlet,
    ids: &[Box<str>],
) -> Result<(), OutboxError> {
    let index = context.directory.snapshot();
    for system in context.registry.systems() {
        let name = system.name();
        let mut rows = Vec::new();
        for id in ids {
            let entry = index.by_id(id).map(|e| &**e);
            let known = inlet.last_hash(name, id);
            if let Some(row) = row_for(context, system, id, entry, known) {
                rows.push(row);
            }
        }
        enqueue(context, rows, |key, hash| {
            if let Some(known) = inlet.known_mut().as_mut().and_then(|k| k.get_mut(name)) {
                known.set(key, hash);
            }
        })
        .await?;
    }
    Ok(())
}

/// Every system's id-map read again, and every record whose hash differs
/// enqueued: exported records with another hash (or none), removes for
/// ids the id-map holds that answer no more.
async fn reconcile<O: Outbox>(context: &Context<O>) -> Result<Known, OutboxError> {
    let started = std::time::Instant::now();
    let index = context.directory.snapshot();
    let mut all = Known::with_capacity(context.registry.systems().len());
    for system in context.registry.systems() {
        // Whole keys for the pass: removes need the ids the id-map holds.
        let mut known: HashMap<String, u64> = context
            .outbox
            .hashes(system.name(), system.record_kind())
            .await?;
        let mut rows = Vec::new();
        let mut enqueued = 0;
        for entry in index.answering() {
            let hash = known.get(entry.id()).copied();
            if let Some(row) = row_for(context, system, entry.id(), Some(entry), hash) {
                rows.push(row);
            }
            if rows.len() >= ENQUEUE_CHUNK {
                enqueued += rows.len();
                let chunk = std::mem::take(&mut rows);
                enqueue(context, chunk, |k, h| {
                    known.insert(k.to_owned(), h);
                })
                .await?;
            }
        }
        let gone: Vec<(String, u64)> = known
            .iter()
            .filter(|(key, &h)| h != REMOVED && h != CLOSED && index.by_id(key).is_none())
            .map(|(key, &h)| (key.clone(), h))
            .collect();
        for (key, hash) in gone {
            if let Some(row) = row_for(context, system, &key, None, Some(hash)) {
                rows.push(row);
            }
            if rows.len() >= ENQUEUE_CHUNK {
                enqueued += rows.len();
                let chunk = std::mem::take(&mut rows);
                enqueue(context, chunk, |k, h| {
                    known.insert(k.to_owned(), h);
                })
                .await?;
            }
        }
        enqueued += rows.len();
        enqueue(context, rows, |k, h| {
            known.insert(k.to_owned(), h);
        })
        .await?;
        tracing::info!(
            system = system.name(),
            records = index.len(),
            enqueued,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "sync feed: reconciled"
        );
        let mut compact = KnownHashes::default();
        compact.0.reserve(known.len());
        for (key, hash) in known {
            compact.set(&key, hash);
        }
        all.insert(system.name().into(), compact);
    }
    Ok(all)
}

/// The row `system` needs for `id`, whose answer is `entry`, if any: none
/// for a record of the system's own source (its CRM-only records).
fn row_for<O>(
    context: &Context<O>,
    system: &SystemSpec,
    id: &str,
    entry: Option<&Entry>,
    known: Option<u64>,
) -> Option<FeedRow> {
    let row = |op, body, hash| FeedRow {
        system: system.name().to_owned(),
        kind: system.record_kind().to_owned(),
        record_key: id.to_owned(),
        op,
        body,
        hash,
    };
    if known == Some(CLOSED) {
        // The system deleted its copy: never sent again (see hash::CLOSED).
        return None;
    }
    let Some(entry) = entry else {
        // A remove only for what the system was sent and holds.
        return match known {
            Some(h) if h != REMOVED => Some(row(
                Op::Remove,
                serde_json::Value::from(id).to_string(),
                REMOVED,
            )),
            _ => None,
        };
    };
    // A system's own CRM-only records are its, not ours to send it back.
    if &*entry.source == system.name() {
        return None;
    }
    let record = match entry.counterparty() {
        Ok(record) => record,
        Err(e) => {
            // The directory wrote that JSON itself: never seen.
            tracing::error!(id = %Escaped(id), error = %e, "sync feed: a record's JSON does not read back");
            return None;
        }
    };
    if !system.exports().accepts(&record) {
        return None;
    }
    if !requisites::check(&record).is_empty() {
        context.held_back(system.name(), id, Some(&record));
        return None;
    }
    context.held_back(system.name(), id, None);
    let hash = hash::hash(&record, system.fields());
    if known == Some(hash) {
        return None;
    }
    Some(row(Op::Upsert, entry.json(), hash))
}

/// Enqueues `rows` in chunks; `committed(key, hash)` for each row of each
/// committed chunk.
async fn enqueue<O: Outbox>(
    context: &Context<O>,
    rows: Vec<FeedRow>,
    mut committed: impl FnMut(&str, u64),
) -> Result<(), OutboxError> {
    let mut rows = rows.into_iter().peekable();
    while rows.peek().is_some() {
        let chunk: Vec<FeedRow> = rows.by_ref().take(ENQUEUE_CHUNK).collect();
        let counts = chunk.iter().fold((0, 0), |(u, r), row| match row.op {
            Op::Upsert => (u + 1, r),
            Op::Remove => (u, r + 1),
        });
        let keys: Vec<(String, u64)> = chunk
            .iter()
            .map(|r| (r.record_key.clone(), r.hash))
            .collect();
        let system = chunk[0].system.clone();
        context.outbox.enqueue(chunk).await?;
        context.metrics.enqueued(&system, counts.0, counts.1);
        for (key, hash) in keys {
            committed(&key, hash);
        }
    }
    Ok(())
}

/// The sync store's outbox and id-map.
impl Outbox for Store {
    async fn enqueue(&self, rows: Vec<FeedRow>) -> Result<(), OutboxError> {
        let rows = rows
            .into_iter()
            .map(|row| NewOutboxRow {
                system: row.system,
                kind: row.kind,
                record_key: row.record_key,
                op: match row.op {
                    Op::Upsert => OutboxOp::Upsert,
                    Op::Remove => OutboxOp::Remove,
                },
                body: row.body,
                hash: row.hash,
            })
            .collect();
        Store::enqueue(self, rows).await?;
        Ok(())
    }

    async fn pending(&self, system: &str) -> Result<u64, OutboxError> {
        Ok(self.sync_depth(system).await?.outbox)
    }

    async fn hashes(&self, system: &str, kind: &str) -> Result<HashMap<String, u64>, OutboxError> {
        let mut hashes = self.last_hashes(system, kind).await?;
        for key in self.idmap_closed(system, kind).await? {
            hashes.insert(key, CLOSED);
        }
        Ok(hashes)
    }
}

#[cfg(test)]
mod tests;
