//! The one writer: a dedicated thread that owns the read-write connection.
//!
//! Commands arrive over a bounded channel, each with a oneshot for its
//! answer; an `Ok` answer is sent only after COMMIT returned. Journal appends
//! waiting in the channel are committed together (group commit): one
//! transaction, one fsync, then every caller in it is answered. When that
//! transaction fails, every caller in it gets the error. The thread survives
//! any SQLite error and serves the next command; it ends when every sender is
//! gone (the store was closed or dropped), after finishing what the channel
//! still holds.
//!
//! A source replace (`replace.rs`) is written in chunks, one transaction of
//! about [`CHUNK_TIME`] each, commit included, and between two chunks the appends
//! that arrived meanwhile are committed: a call waits for one chunk, not for
//! a million rows. Other commands that arrive during a replace (another
//! replace, test SQL) wait until it is done, in the order they came. So
//! replaces never interleave: a second replace of the same source does not
//! supersede the first, it is written after it, and the rows a replace
//! walks or planned are changed by no one else between its chunks. How a
//! replace stays crash-safe across chunks: see `replace.rs`.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{params, Connection, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

mod checkpoint;
mod delivered;
mod inbox;
mod lease;
mod outbox;
mod payments;
mod replace;
mod sync;
mod sync_batch;

use super::gate::DiskGate;
use super::metrics::Metrics;
use super::refusals::RECOVERY_QUIET;
use super::snapshot::{self, Plan, RecordSet, Upserted};
use super::{unix_ms, AppliedChanges, CallRecord, StoreError, StoreRole};
use crate::directory::Tombstone;
use crate::thread_priority::Urgency;
use checkpoint::Checkpointer;
use delivered::EarlyDeliveries;
pub(super) use inbox::InboxWrite;
pub(super) use outbox::OutboxWrite;
pub(super) use payments::PaymentsWrite;
use replace::{CHUNK_TIME, MAX_CHUNK_OPS};
use sync::SyncGroup;
pub(super) use sync::SyncWrite;

/// Room in the channel: callers beyond it wait (asynchronously) for space.
pub(super) const CHANNEL_CAPACITY: usize = 1024;

/// The writer thread of a [`Priority::Background`](super::Priority) store.
pub(super) const BACKGROUND_WRITER: &str = "cti-store-bg";

/// The writer thread's name for a store of `role` (what `top -H` shows).
pub(super) fn thread_name(role: &StoreRole) -> &'static str {
    match role {
        StoreRole::Main => "cti-store-writer",
        StoreRole::Cache { .. } => BACKGROUND_WRITER,
        StoreRole::Sync => "cti-store-sync",
    }
}

/// Most journal appends committed in one transaction.
const GROUP_CAP: usize = 256;

/// Most group commits between two chunks of a replace, so that a steady
/// flood of calls cannot stall a replace: the channel's worth.
const GROUPS_BETWEEN_CHUNKS: usize = CHANNEL_CAPACITY / GROUP_CAP;

/// Longest a sync write waits at the [`DiskGate`] for a journal commit (one
/// takes 1-2 ms): past it, a flood of calls lets the sync store through.
const GATE_MAX: Duration = Duration::from_millis(20);

/// Repeats of the same failure within this long are not logged again at warn.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// What the writer can be asked to do.
pub(super) enum Command {
    AppendCall {
        call: CallRecord,
        reply: Reply<i64>,
    },
    /// One more screen got these pop-ups of `key` (a long-poll answer): adds
    /// one to each one's journal row. Committed with the appends' group;
    /// answers how many rows were there already (the others get it when
    /// their append comes).
    AddDelivered {
        key: String,
        seqs: Vec<u64>,
        reply: Reply<usize>,
    },
    ReplaceSource {
        source: String,
        fingerprint: String,
        records: Arc<dyn RecordSet>,
        /// The diff, computed off the writer; `None`: the writer diffs.
        plan: Option<Plan>,
        reply: Reply<()>,
    },
    /// Upserts rows of one source and removes ids from every source, in
    /// one transaction (the push API).
    ApplyChanges {
        source: String,
        upserts: Arc<dyn RecordSet>,
        removals: Arc<[Box<str>]>,
        tombstones: Arc<[Tombstone]>,
        reply: Reply<AppliedChanges>,
    },
    /// Forgets tombstones whose copy changed; answers how many went.
    ForgetTombstones {
        tombstones: Arc<[Tombstone]>,
        reply: Reply<usize>,
    },
    /// Writes a SERVIO file's ledger row (the SERVIO snapshot file only).
    ServioLedger {
        row: super::servio::LedgerRow,
        reply: Reply<()>,
    },
    /// Remembers a SERVIO file left in place as a duplicate (the SERVIO
    /// snapshot file only).
    ServioLeft {
        row: super::servio::LeftRow,
        reply: Reply<()>,
    },
    /// Removes a source's rows and its entry; answers how many rows went.
    ForgetSource {
        source: String,
        reply: Reply<usize>,
    },
    /// Deletes at most `limit` journal rows older than `before_ms` (unix
    /// ms), the oldest first (journal retention); answers how many went.
    PruneCalls {
        before_ms: i64,
        limit: u32,
        reply: Reply<usize>,
    },
    /// Queues rows in the sync store's outbox and sets their id-map
    /// hashes; group-committed with the other enqueues and inbox appends
    /// waiting (see `writer/sync.rs`).
    Enqueue {
        rows: Vec<super::sync::NewOutboxRow>,
        reply: Reply<Vec<i64>>,
    },
    /// Commits a webhook body to the sync store's inbox; group-committed
    /// like `Enqueue`.
    InboxAppend {
        system: String,
        body: String,
        reply: Reply<i64>,
    },
    /// A sync store write of its own transaction (overlay, requisites,
    /// retry, conflict).
    Sync(SyncWrite),
    /// What became of outbox rows a sync worker took (`writer/outbox.rs`).
    Outbox(OutboxWrite),
    /// Runs raw SQL on the write connection (tests: inject failures).
    #[cfg(test)]
    Exec {
        sql: String,
        reply: Reply<()>,
    },
    /// Changes the chunk size of replaces (measurements; tests: many
    /// chunks from few rows).
    SetChunk {
        ops: usize,
        time: Duration,
        reply: Reply<()>,
    },
}

/// The time slice the normal writer asks for: its work between waits is a
/// commit's CPU part, tens of microseconds. Measured on the 2-core VM with a
/// pop-up fanned out to 1,000 screens while the call is journaled: commit
/// p50 1.5 ms with it, 3.1 ms without (0.9-1.4 ms with no screens).
const WAKE_SLICE: std::time::Duration = std::time::Duration::from_micros(100);

/// The journal writer's scheduling, and one line saying what the kernel
/// allowed.
fn journal_urgency(name: &'static str) -> Urgency {
    let urgency = Urgency::start(name, WAKE_SLICE);
    if urgency.granted() {
        tracing::debug!(thread = name, "store: the call journal's writer runs real-time (SCHED_FIFO 1) while it waits for calls");
    } else {
        tracing::info!(
            thread = name,
            "store: the call journal's writer may not run real-time (no CAP_SYS_NICE or RLIMIT_RTPRIO); \
             IncomingCall answers may wait a few ms longer while the cores are busy; \
             allow it with LimitRTPRIO=1 in the systemd unit"
        );
    }
    urgency
}

/// Starts the writer thread over an open, migrated connection.
// Each argument is a distinct part of the store `open` assembled; a struct
// gathering them would be built at one call site only.
#[allow(clippy::too_many_arguments)]
pub(super) fn spawn(
    conn: Connection,
    path: PathBuf,
    metrics: Metrics,
    generation: Arc<AtomicU64>,
    rx: mpsc::Receiver<Command>,
    priority: super::Priority,
    role: &StoreRole,
    gate: Option<DiskGate>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let name = thread_name(role);
    let gate = match (role, gate) {
        (StoreRole::Main, Some(gate)) => GateUse::Marks(gate),
        (StoreRole::Sync, Some(gate)) => GateUse::Yields(gate),
        _ => GateUse::None,
    };
    // The sync file's checkpoints run on a thread of their own.
    let checkpointer = match (role, &gate) {
        (StoreRole::Sync, GateUse::Yields(gate)) => Checkpointer::start(&path, Some(gate.clone())),
        (StoreRole::Sync, _) => Checkpointer::start(&path, None),
        _ => None,
    };
    let writer = Writer {
        conn,
        path,
        metrics,
        generation,
        failures: FailureLog::default(),
        buf: Vec::with_capacity(1024),
        rx,
        deferred: VecDeque::new(),
        batch: Vec::with_capacity(GROUP_CAP),
        deliveries: Vec::new(),
        sync_group: SyncGroup::default(),
        early: EarlyDeliveries::default(),
        max_chunk_ops: MAX_CHUNK_OPS,
        chunk_time: CHUNK_TIME,
        gate,
        checkpointer,
    };
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let urgency = match priority {
                super::Priority::Background => {
                    crate::thread_priority::lower_current(name);
                    None
                }
                super::Priority::Journal => Some(journal_urgency(name)),
                // Only the journal's writer is urgent: the sync writer's bulk
                // enqueues must not preempt the cores that answer the PBX.
                super::Priority::Normal => None,
            };
            writer.run(urgency)
        })
}

struct Writer {
    conn: Connection,
    path: PathBuf,
    metrics: Metrics,
    /// Snapshot write transactions committed so far (each chunk counts); a
    /// plan made at another count is stale.
    generation: Arc<AtomicU64>,
    failures: FailureLog,
    /// Reused JSON buffer for snapshot rows.
    buf: Vec<u8>,
    rx: mpsc::Receiver<Command>,
    /// Commands taken off the channel while gathering appends, in the order
    /// they came; served before the channel.
    deferred: VecDeque<Command>,
    /// Journal appends of the next group commit.
    batch: Vec<(CallRecord, Reply<i64>)>,
    /// Deliveries of the next group commit (see [`Command::AddDelivered`]).
    deliveries: Vec<(String, Vec<u64>, Reply<usize>)>,
    /// Outbox enqueues and inbox appends of the next sync group commit.
    sync_group: SyncGroup,
    /// Deliveries that came before their journal row.
    early: EarlyDeliveries,
    /// [`MAX_CHUNK_OPS`] and [`CHUNK_TIME`], unless a measurement or a test
    /// set others ([`Store::set_chunk`](super::Store::set_chunk)).
    max_chunk_ops: usize,
    chunk_time: Duration,
    /// This writer's side of the disk gate, if any.
    gate: GateUse,
    /// The sync file's checkpoint thread (`None` elsewhere).
    checkpointer: Option<Checkpointer>,
}

/// What a writer does with the [`DiskGate`] it was given.
enum GateUse {
    None,
    /// The journal's writer: marks each commit.
    Marks(DiskGate),
    /// The sync writer: holds its disk writes while a journal commit is marked.
    Yields(DiskGate),
}

impl Writer {
    /// Serves commands until every sender is gone. With `urgency`, the
    /// thread waits and commits journal appends real-time (where granted)
    /// and does everything else relaxed.
    fn run(mut self, mut urgency: Option<Urgency>) {
        loop {
            let cmd = match self.deferred.pop_front() {
                Some(cmd) => cmd,
                None => match self.rx.blocking_recv() {
                    Some(cmd) => cmd,
                    None => break,
                },
            };
            // Long work is done relaxed; the thread waits for the next
            // command real-time again, so that a call's append wakes it at once.
            let brief = matches!(
                cmd,
                Command::AppendCall { .. } | Command::AddDelivered { .. }
            );
            if let (false, Some(urgency)) = (brief, urgency.as_mut()) {
                urgency.relaxed();
            }
            self.serve(cmd);
            if let Some(urgency) = urgency.as_mut() {
                urgency.urgent();
            }
        }
        self.shutdown();
    }

    fn serve(&mut self, cmd: Command) {
        match cmd {
            Command::AppendCall { call, reply } => {
                self.batch.push((call, reply));
                self.commit_appends();
            }
            Command::AddDelivered { key, seqs, reply } => {
                self.deliveries.push((key, seqs, reply));
                self.commit_appends();
            }
            Command::Enqueue { rows, reply } => {
                self.sync_group.enqueue(rows, reply);
                self.commit_appends();
            }
            Command::InboxAppend {
                system,
                body,
                reply,
            } => {
                self.sync_group.inbox(system, body, reply);
                self.commit_appends();
            }
            Command::Sync(write) => self.sync_write(write),
            Command::Outbox(write) => self.outbox_write(write),
            Command::ReplaceSource {
                source,
                fingerprint,
                records,
                plan,
                reply,
            } => {
                let result = self.replace_source(&source, &fingerprint, &*records, plan);
                let _ = reply.send(result);
            }
            Command::ApplyChanges {
                source,
                upserts,
                removals,
                tombstones,
                reply,
            } => {
                let result = self.apply_changes(&source, &*upserts, &removals, &tombstones);
                let _ = reply.send(result);
            }
            Command::ForgetTombstones { tombstones, reply } => {
                let result = self.transact("forgetting spent tombstones", |tx| {
                    let mut stmt = tx.prepare_cached(
                        "DELETE FROM tombstones WHERE id = ?1 AND source = ?2 AND content = ?3",
                    )?;
                    let mut n = 0;
                    for t in tombstones.iter() {
                        n += stmt.execute(params![&*t.id, &*t.source, t.content as i64])?;
                    }
                    Ok(n)
                });
                let _ = reply.send(result);
            }
            Command::ServioLedger { row, reply } => {
                let result = self.transact("writing the SERVIO ledger", |tx| {
                    super::servio::insert(tx, &row)
                });
                let _ = reply.send(result);
            }
            Command::ServioLeft { row, reply } => {
                let result = self.transact("remembering a SERVIO file left in place", |tx| {
                    super::servio::insert_left(tx, &row)
                });
                let _ = reply.send(result);
            }
            Command::ForgetSource { source, reply } => {
                let result = self.transact("forgetting a source's snapshot", |tx| {
                    let rows = tx
                        .prepare_cached("DELETE FROM counterparties WHERE source = ?1")?
                        .execute([&source])?;
                    tx.prepare_cached("DELETE FROM sources WHERE source = ?1")?
                        .execute([&source])?;
                    Ok(rows)
                });
                if result.is_ok() {
                    // Plans computed before this commit are stale now.
                    self.generation.fetch_add(1, Ordering::AcqRel);
                }
                let _ = reply.send(result);
            }
            Command::PruneCalls {
                before_ms,
                limit,
                reply,
            } => {
                // Retention is the least urgent work there is: the
                // appends already waiting are committed first.
                self.commit_appends();
                let result = self.prune_calls(before_ms, limit);
                let _ = reply.send(result);
            }
            #[cfg(test)]
            Command::Exec { sql, reply } => {
                let result = self
                    .conn
                    .execute_batch(&sql)
                    .map_err(|e| StoreError::sqlite(&self.path, "test SQL", e));
                let _ = reply.send(result);
            }
            Command::SetChunk { ops, time, reply } => {
                self.max_chunk_ops = ops.max(1);
                self.chunk_time = time;
                let _ = reply.send(Ok(()));
            }
        }
    }

    /// Group commit: adds every append (and delivery, enqueue, inbox
    /// append) already waiting in the channel to the batch, up to the caps,
    /// and commits it; returns how many commands it committed. Other
    /// commands met on the way wait in `deferred` for their turn. Journal
    /// appends and sync writes are committed in a transaction each (they
    /// live in different files; one store never gets both).
    fn commit_appends(&mut self) -> usize {
        while self.batch.len() + self.deliveries.len() + self.sync_group.commands() < GROUP_CAP
            && !self.sync_group.is_full()
        {
            match self.rx.try_recv() {
                Ok(Command::AppendCall { call, reply }) => self.batch.push((call, reply)),
                Ok(Command::AddDelivered { key, seqs, reply }) => {
                    self.deliveries.push((key, seqs, reply))
                }
                Ok(Command::Enqueue { rows, reply }) => self.sync_group.enqueue(rows, reply),
                Ok(Command::InboxAppend {
                    system,
                    body,
                    reply,
                }) => self.sync_group.inbox(system, body, reply),
                Ok(other) => self.deferred.push_back(other),
                Err(_) => break,
            }
        }
        let synced = self.commit_sync_group();
        let n = self.batch.len() + self.deliveries.len();
        if n == 0 {
            return synced;
        }
        let mut batch = std::mem::take(&mut self.batch);
        let mut deliveries = std::mem::take(&mut self.deliveries);
        self.append_calls(&mut batch, &mut deliveries);
        self.batch = batch;
        self.deliveries = deliveries;
        n + synced
    }

    /// Between two chunks of a replace: commits the appends that arrived
    /// meanwhile, a few groups at most.
    fn serve_waiting_appends(&mut self) {
        for _ in 0..GROUPS_BETWEEN_CHUNKS {
            if self.commit_appends() < GROUP_CAP {
                break;
            }
        }
    }

    /// Commits a group of journal appends and deliveries in one transaction
    /// and answers each. Appends go first, so a delivery of a call appended
    /// in the same group finds its row; a delivery whose row is not there is
    /// kept for its append ([`EarlyDeliveries`]), and an append takes the
    /// deliveries kept for it.
    fn append_calls(
        &mut self,
        batch: &mut Vec<(CallRecord, Reply<i64>)>,
        deliveries: &mut Vec<(String, Vec<u64>, Reply<usize>)>,
    ) {
        let n = batch.len();
        // Deliveries that came before these rows, taken now and put back if
        // the transaction fails.
        let early: Vec<u32> = batch
            .iter()
            .map(|(c, _)| c.seq.map_or(0, |seq| self.early.take(&c.key, seq)))
            .collect();
        let gate = match &self.gate {
            GateUse::Marks(gate) => Some(gate.clone()),
            _ => None,
        };
        // Marked for the transaction only: ended before anyone is answered.
        let marked = gate.as_ref().map(DiskGate::journal_commit);
        let result = self.transact("appending to the call journal", |tx| {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO calls (at, raw_number, number, key, counterparty_id, delivered, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut ids = Vec::with_capacity(n);
            for ((c, _), early) in batch.iter().zip(&early) {
                stmt.execute(params![
                    unix_ms(c.at),
                    c.raw_number,
                    c.number,
                    c.key,
                    c.counterparty_id,
                    c.delivered.saturating_add(*early),
                    c.seq.and_then(|s| i64::try_from(s).ok()),
                ])?;
                ids.push(tx.last_insert_rowid());
            }
            let mut update = tx.prepare_cached(
                "UPDATE calls SET delivered = delivered + 1 WHERE key = ?1 AND seq = ?2",
            )?;
            let mut missing = Vec::new();
            let mut found = Vec::with_capacity(deliveries.len());
            for (key, seqs, _) in deliveries.iter() {
                let mut rows = 0;
                for &seq in seqs {
                    let Ok(seq_value) = i64::try_from(seq) else {
                        continue;
                    };
                    match update.execute(params![key, seq_value])? {
                        0 => missing.push((key.clone(), seq)),
                        _ => rows += 1,
                    }
                }
                found.push(rows);
            }
            Ok((ids, found, missing))
        });
        drop(marked);
        match result {
            Ok((ids, found, missing)) => {
                for (key, seq) in missing {
                    self.early.keep(&key, seq);
                }
                self.metrics.journal_ok.inc_by(n as u64);
                for ((_, reply), id) in batch.drain(..).zip(ids) {
                    let _ = reply.send(Ok(id));
                }
                for ((_, _, reply), rows) in deliveries.drain(..).zip(found) {
                    let _ = reply.send(Ok(rows));
                }
            }
            Err(e) => {
                for ((c, _), early) in batch.iter().zip(early) {
                    if let Some(seq) = c.seq {
                        self.early.put_back(&c.key, seq, early);
                    }
                }
                self.metrics.journal_error.inc_by(n as u64);
                self.failures
                    .failed("call journal append", n + deliveries.len(), &e);
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
                for (_, _, reply) in deliveries.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// One batch of journal retention: at most `limit` rows older than
    /// `before_ms`, the oldest first (the `calls_at` index), in one short
    /// transaction, so an append that arrives meanwhile waits for one batch.
    fn prune_calls(&mut self, before_ms: i64, limit: u32) -> Result<usize, StoreError> {
        let result = self.transact("pruning old call journal rows", |tx| {
            tx.prepare_cached(
                "DELETE FROM calls WHERE id IN
                     (SELECT id FROM calls WHERE at < ?1 ORDER BY at LIMIT ?2)",
            )?
            .execute(params![before_ms, limit])
        });
        match result {
            Ok(n) => {
                self.metrics.journal_pruned.inc_by(n as u64);
                Ok(n)
            }
            Err(e) => {
                self.failures.failed("call journal retention", 1, &e);
                Err(e)
            }
        }
    }

    /// Upserts `upserts` (the last record of each id) into `source`'s rows
    /// and deletes the rows of every id in `removals` from every source, in
    /// one transaction: all of it is committed, or none of it. Removals come
    /// first, so an id both removed and upserted ends up in `source` only.
    ///
    /// Keeps the `sources` table true to the rows: each touched source's
    /// `records` moves by the rows inserted or deleted, so the snapshot still
    /// loads as complete. The upserted source's row is created if needed,
    /// with its name as fingerprint (it is not a copy of an outside input,
    /// so there is nothing else to fingerprint; a NULL, "save interrupted",
    /// is kept) and `saved_at` = now: the age of its newest records.
    /// Removals alone change no `saved_at`. A change to a source that a
    /// replace is diffing makes that replace's plan stale (the generation).
    fn apply_changes(
        &mut self,
        source: &str,
        upserts: &dyn RecordSet,
        removals: &[Box<str>],
        tombstones: &[Tombstone],
    ) -> Result<AppliedChanges, StoreError> {
        let started = Instant::now();
        let saved_at = unix_ms(SystemTime::now());
        let sorted = snapshot::sorted_last_per_id(upserts);
        let mut buf = std::mem::take(&mut self.buf);
        let result = self.transact("applying pushed changes", |tx| {
            let mut done = AppliedChanges::default();
            let mut n = 0usize;
            for id in removals {
                n += snapshot::delete_row(tx, source, id)?;
            }
            if n > 0 {
                add_to_source_count(tx, source, -(n as i64))?;
                done.removed += n;
                done.removed_from.push((source.to_owned(), n));
            }
            if !tombstones.is_empty() {
                let mut stmt = tx.prepare_cached(
                    "INSERT INTO tombstones (id, source, content, deleted_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (id, source) DO UPDATE SET content = excluded.content,
                         deleted_at = excluded.deleted_at",
                )?;
                for t in tombstones {
                    stmt.execute(params![&*t.id, &*t.source, t.content as i64, saved_at])?;
                }
                done.tombstones = tombstones.len();
            }
            if !sorted.is_empty() {
                tx.prepare_cached(
                    "INSERT INTO sources (source, fingerprint, saved_at, records)
                     VALUES (?1, ?1, ?2, 0)
                     ON CONFLICT (source) DO UPDATE SET saved_at = excluded.saved_at,
                         fingerprint = iif(sources.fingerprint IS NULL, NULL, excluded.fingerprint)",
                )?
                .execute(params![source, saved_at])?;
                for &i in &sorted {
                    match snapshot::upsert_row(tx, source, upserts.get(i), &mut buf)? {
                        Upserted::Inserted => done.inserted += 1,
                        Upserted::Updated => done.updated += 1,
                        Upserted::Unchanged => done.unchanged += 1,
                    }
                }
                if done.inserted > 0 {
                    add_to_source_count(tx, source, done.inserted as i64)?;
                }
            }
            Ok(done)
        });
        self.buf = buf;
        match result {
            Ok(done) => {
                if done.removed + done.inserted + done.updated > 0 {
                    // Plans computed before this commit are stale now.
                    self.generation.fetch_add(1, Ordering::AcqRel);
                }
                tracing::debug!(
                    source,
                    inserted = done.inserted,
                    updated = done.updated,
                    unchanged = done.unchanged,
                    removed = done.removed,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "store: changes committed"
                );
                self.metrics.snapshot_ok.inc();
                Ok(done)
            }
            Err(e) => {
                self.metrics.snapshot_error.inc();
                self.failures.failed("pushed changes", 1, &e);
                Err(e)
            }
        }
    }

    /// Runs `f` in one IMMEDIATE transaction and commits it; rolls back on
    /// any error. Times the whole of it for `cti_store_commit_seconds`.
    fn transact<T>(
        &mut self,
        op: &'static str,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let gate = match &self.gate {
            GateUse::Yields(gate) => Some(gate),
            _ => None,
        };
        let result = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = f(&tx)?;
            // The commit writes the WAL and fsyncs it: not while a call's
            // journal commit needs the disk.
            if let Some(gate) = gate {
                gate.wait_clear(GATE_MAX);
            }
            // On a failed COMMIT the transaction is rolled back when `tx` drops.
            tx.commit()?;
            Ok(value)
        })();
        self.metrics
            .commit_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(value) => {
                self.failures.succeeded();
                if let Some(checkpointer) = &self.checkpointer {
                    checkpointer.committed();
                }
                Ok(value)
            }
            Err(e) => Err(StoreError::sqlite(&self.path, op, e)),
        }
    }

    /// Leaves the file tidy: the WAL folded back into the database.
    fn shutdown(mut self) {
        // The checkpoint thread stops first: the last checkpoint is the writer's.
        drop(self.checkpointer.take());
        let checkpoint = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            });
        match checkpoint {
            Ok(0) => {}
            Ok(_) => tracing::debug!(
                path = %self.path.display(),
                "store: WAL checkpoint on close incomplete (a reader was active); it completes on next open"
            ),
            Err(e) => tracing::warn!(
                path = %self.path.display(),
                error = %e,
                "store: WAL checkpoint on close failed; the WAL is replayed on next open, nothing is lost"
            ),
        }
        if let Err((_, e)) = self.conn.close() {
            tracing::warn!(path = %self.path.display(), error = %e, "store: closing the write connection failed");
        }
        tracing::debug!(path = %self.path.display(), "store writer stopped");
    }
}

/// Moves a source's `records` count by `delta` rows (never below 0).
fn add_to_source_count(tx: &Transaction<'_>, source: &str, delta: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("UPDATE sources SET records = max(records + ?2, 0) WHERE source = ?1")?
        .execute(params![source, delta])?;
    Ok(())
}

/// Logs write failures once per change of state, not once per transaction:
/// a full disk under a steady call rate would otherwise flood the log.
#[derive(Default)]
struct FailureLog {
    failing: Option<Failing>,
}

struct Failing {
    kind: &'static str,
    last_warn: Instant,
    /// When the last transaction failed: a success ends the failure only
    /// once [`RECOVERY_QUIET`] has passed since (see [`FailureLog::succeeded`]).
    last_failure: Instant,
    suppressed: u64,
    failed_transactions: u64,
}

impl FailureLog {
    fn failed(&mut self, what: &'static str, commands: usize, e: &StoreError) {
        self.failed_at(Instant::now(), what, commands, e);
    }

    fn failed_at(&mut self, now: Instant, what: &'static str, commands: usize, e: &StoreError) {
        match &mut self.failing {
            Some(f)
                if f.kind == e.kind() && now.duration_since(f.last_warn) < FAILURE_LOG_INTERVAL =>
            {
                f.suppressed += 1;
                f.failed_transactions += 1;
                f.last_failure = now;
                tracing::debug!(what, commands, error = %e, "store write failed again");
            }
            state => {
                let (suppressed, failed) = state
                    .as_ref()
                    .map_or((0, 1), |f| (f.suppressed, f.failed_transactions + 1));
                tracing::warn!(
                    what,
                    commands,
                    failed_transactions = failed,
                    repeats_not_logged = suppressed,
                    error = %e,
                    "store write failed; its callers got the error, nothing of it was saved"
                );
                *state = Some(Failing {
                    kind: e.kind(),
                    last_warn: now,
                    last_failure: now,
                    suppressed: 0,
                    failed_transactions: failed,
                });
            }
        }
    }

    /// A transaction committed. On an almost full disk a small one fits
    /// between refused large ones: that does not end the failure (nor reset
    /// its counts, which would make the next refusal a new WARN); a success
    /// [`RECOVERY_QUIET`] after the last failure does.
    fn succeeded(&mut self) {
        self.succeeded_at(Instant::now());
    }

    fn succeeded_at(&mut self, now: Instant) {
        let recovered = self
            .failing
            .as_ref()
            .is_some_and(|f| now.duration_since(f.last_failure) >= RECOVERY_QUIET);
        if recovered {
            if let Some(f) = self.failing.take() {
                tracing::info!(
                    failed_transactions = f.failed_transactions,
                    "store writes succeed again"
                );
            }
        }
    }
}

#[cfg(test)]
mod failure_log_tests {
    use super::*;

    fn full() -> StoreError {
        StoreError::sqlite(
            std::path::Path::new("/tmp/x.sqlite"),
            "append_call",
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                None,
            ),
        )
    }

    #[test]
    fn a_small_write_between_failures_keeps_the_repeat_count() {
        let mut log = FailureLog::default();
        let t0 = Instant::now();
        log.failed_at(t0, "replace", 1, &full());
        for i in 1..50 {
            let at = t0 + Duration::from_millis(i * 100);
            log.succeeded_at(at);
            log.failed_at(at, "replace", 1, &full());
        }
        let failing = log.failing.as_ref().expect("still failing");
        assert_eq!(failing.failed_transactions, 50);
        assert_eq!(failing.suppressed, 49, "one WARN, 49 repeats counted");
        assert_eq!(failing.last_warn, t0);
        log.succeeded_at(t0 + Duration::from_secs(5) + RECOVERY_QUIET);
        assert!(log.failing.is_none(), "a quiet success ends it");
    }
}
