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
//! A source replace is written in chunks, one transaction of about
//! [`CHUNK_TIME`] each, commit included, and between two chunks the appends
//! that arrived meanwhile are committed: a call waits for one chunk, not for
//! a million rows. Other commands that arrive during a replace (another
//! replace, test SQL) wait until it is done, in the order they came. So
//! replaces never interleave: a second replace of the same source does not
//! supersede the first, it is written after it, and the rows a replace
//! walks or planned are changed by no one else between its chunks. How a
//! replace stays crash-safe across chunks: see [`Writer::replace_source`].

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{params, Connection, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::metrics::Metrics;
use super::snapshot::{self, Limit, OpCounts, Plan, RecordSet, RowOp, Upserted, Walk};
use super::{unix_ms, AppliedChanges, CallRecord, StoreError};

/// Room in the channel: callers beyond it wait (asynchronously) for space.
pub(super) const CHANNEL_CAPACITY: usize = 1024;

/// The writer thread of a [`Priority::Background`](super::Priority) store.
pub(super) const BACKGROUND_WRITER: &str = "cti-store-bg";

/// Most journal appends committed in one transaction.
const GROUP_CAP: usize = 256;

/// What one chunk of a source replace should take, from BEGIN to the end of
/// COMMIT: an append that arrives during a chunk waits about this long, plus
/// its own commit. Also the most a chunk's row changes may take before it
/// commits, whatever its size.
pub(super) const CHUNK_TIME: Duration = Duration::from_millis(100);

/// Row changes in the first chunk of a replace. Later chunks are sized from
/// the time the previous one took, commit included: rows in key order
/// (a first save) pack many per page and go fast; changes scattered over a
/// large table dirty a page each, and their commit costs more than their
/// statements.
const FIRST_CHUNK_OPS: usize = 1_000;

/// Bounds for the size of later chunks, in row changes. The upper one keeps
/// a fast machine's transactions (and their WAL) moderate; a chunk grows at
/// most twofold from one to the next.
const MIN_CHUNK_OPS: usize = 100;
pub(super) const MAX_CHUNK_OPS: usize = 20_000;

/// Most group commits between two chunks of a replace, so that a steady
/// flood of calls cannot stall a replace: the channel's worth.
const GROUPS_BETWEEN_CHUNKS: usize = CHANNEL_CAPACITY / GROUP_CAP;

/// Repeats of the same failure within this long are not logged again at warn.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

pub(super) type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// What the writer can be asked to do.
pub(super) enum Command {
    AppendCall {
        call: CallRecord,
        reply: Reply<i64>,
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
        reply: Reply<AppliedChanges>,
    },
    /// Removes a source's rows and its entry; answers how many rows went.
    ForgetSource {
        source: String,
        reply: Reply<usize>,
    },
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

/// Starts the writer thread over an open, migrated connection.
pub(super) fn spawn(
    conn: Connection,
    path: PathBuf,
    metrics: Metrics,
    generation: Arc<AtomicU64>,
    rx: mpsc::Receiver<Command>,
    priority: super::Priority,
) -> std::io::Result<std::thread::JoinHandle<()>> {
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
        max_chunk_ops: MAX_CHUNK_OPS,
        chunk_time: CHUNK_TIME,
    };
    let name = match priority {
        super::Priority::Normal => "cti-store-writer",
        super::Priority::Background => BACKGROUND_WRITER,
    };
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            if priority == super::Priority::Background {
                crate::thread_priority::lower_current(name);
            }
            writer.run()
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
    /// [`MAX_CHUNK_OPS`] and [`CHUNK_TIME`], unless a measurement or a test
    /// set others ([`Store::set_chunk`](super::Store::set_chunk)).
    max_chunk_ops: usize,
    chunk_time: Duration,
}

/// What is left of a replace between two chunks.
enum Work {
    /// Applying a diff computed beforehand, from `ops[done]` on.
    Planned { ops: Vec<RowOp>, done: usize },
    /// Walking the stored rows and the records together on the writer.
    Walking { sorted: Vec<usize>, walk: Walk },
}

impl Writer {
    fn run(mut self) {
        loop {
            let cmd = match self.deferred.pop_front() {
                Some(cmd) => cmd,
                None => match self.rx.blocking_recv() {
                    Some(cmd) => cmd,
                    None => break,
                },
            };
            match cmd {
                Command::AppendCall { call, reply } => {
                    self.batch.push((call, reply));
                    self.commit_appends();
                }
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
                    reply,
                } => {
                    let result = self.apply_changes(&source, &*upserts, &removals);
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
        self.shutdown();
    }

    /// Group commit: adds every append already waiting in the channel to the
    /// batch, up to the cap, and commits it; returns how many it committed.
    /// Other commands met on the way wait in `deferred` for their turn.
    fn commit_appends(&mut self) -> usize {
        while self.batch.len() < GROUP_CAP {
            match self.rx.try_recv() {
                Ok(Command::AppendCall { call, reply }) => self.batch.push((call, reply)),
                Ok(other) => self.deferred.push_back(other),
                Err(_) => break,
            }
        }
        let n = self.batch.len();
        if n > 0 {
            let mut batch = std::mem::take(&mut self.batch);
            self.append_calls(&mut batch);
            self.batch = batch;
        }
        n
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

    /// Commits a group of journal appends in one transaction and answers each.
    fn append_calls(&mut self, batch: &mut Vec<(CallRecord, Reply<i64>)>) {
        let n = batch.len();
        let result = self.transact("appending to the call journal", |tx| {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO calls (at, raw_number, number, key, counterparty_id, delivered)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut ids = Vec::with_capacity(n);
            for (c, _) in batch.iter() {
                stmt.execute(params![
                    unix_ms(c.at),
                    c.raw_number,
                    c.number,
                    c.key,
                    c.counterparty_id,
                    c.delivered,
                ])?;
                ids.push(tx.last_insert_rowid());
            }
            Ok(ids)
        });
        match result {
            Ok(ids) => {
                self.metrics.journal_ok.inc_by(n as u64);
                for ((_, reply), id) in batch.drain(..).zip(ids) {
                    let _ = reply.send(Ok(id));
                }
            }
            Err(e) => {
                self.metrics.journal_error.inc_by(n as u64);
                self.failures.failed("call journal append", n, &e);
                for (_, reply) in batch.drain(..) {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// Brings the source's snapshot rows to exactly `records` (the last one
    /// of each id) and its `sources` row to `fingerprint`, writing only the
    /// rows that differ. Uses `plan` when no snapshot write happened since it
    /// was computed, else walks the rows here.
    ///
    /// The changes are committed in chunks, with the journal appends that
    /// wait served in between. Crash safety: the first chunk's transaction
    /// sets the source's fingerprint to NULL (and its row count to the new
    /// one), and only the last chunk's transaction writes the fingerprint.
    /// A crash or an error in between leaves a source without fingerprint,
    /// which nothing takes for a complete snapshot: the source does not find
    /// its fingerprint, so it is read and saved again. A replace that fits in
    /// one chunk is one transaction, as before: the NULL is never seen. A
    /// failure in the first chunk leaves the old snapshot whole.
    fn replace_source(
        &mut self,
        source: &str,
        fingerprint: &str,
        records: &dyn RecordSet,
        plan: Option<Plan>,
    ) -> Result<(), StoreError> {
        let started = Instant::now();
        let generation = self.generation.load(Ordering::Acquire);
        let planned = plan.as_ref().is_some_and(|p| p.generation == generation);
        let (mut work, kept, planned_unchanged) = match plan {
            Some(Plan { diff, .. }) if planned => {
                let kept = diff.kept();
                let work = Work::Planned {
                    ops: diff.ops,
                    done: 0,
                };
                (work, kept, diff.unchanged)
            }
            // Stale: the rows changed, but the order of the records holds.
            Some(Plan { diff, .. }) => {
                let kept = diff.kept();
                let work = Work::Walking {
                    sorted: diff.sorted,
                    walk: Walk::default(),
                };
                (work, kept, 0)
            }
            // Planning failed. Sorting here holds the writer (a fraction of
            // a second for a million records), but only the read side failed.
            None => {
                let sorted = snapshot::sorted_last_per_id(records);
                let kept = sorted.len();
                let work = Work::Walking {
                    sorted,
                    walk: Walk::default(),
                };
                (work, kept, 0)
            }
        };
        let saved_at = unix_ms(SystemTime::now());
        let mut counts = OpCounts::default();
        let mut chunks = 0usize;
        let mut buf = std::mem::take(&mut self.buf);
        let mut chunk_ops = FIRST_CHUNK_OPS.min(self.max_chunk_ops);
        let result = loop {
            let first = chunks == 0;
            let chunk_time = self.chunk_time;
            let chunk_started = Instant::now();
            let limit = Limit {
                ops: chunk_ops,
                deadline: Some(chunk_started + chunk_time),
            };
            let counts_before = counts;
            let chunk = self.transact("replacing a source's snapshot", |tx| {
                if first {
                    put_source(tx, source, None, saved_at, kept)?;
                }
                let finished = match &mut work {
                    Work::Planned { ops, done } => {
                        let rest = &ops[*done..];
                        *done += snapshot::apply(
                            tx,
                            source,
                            records,
                            rest,
                            limit,
                            &mut counts,
                            &mut buf,
                        )?;
                        *done == ops.len()
                    }
                    Work::Walking { sorted, walk } => {
                        // The walk takes half the time, its changes the rest.
                        let walk_limit = Limit {
                            deadline: Some(chunk_started + chunk_time / 2),
                            ..limit
                        };
                        let ops = snapshot::walk_rows(
                            tx, source, records, sorted, walk, walk_limit, &mut buf,
                        )?;
                        snapshot::apply(
                            tx,
                            source,
                            records,
                            &ops,
                            Limit::NONE,
                            &mut counts,
                            &mut buf,
                        )?;
                        walk.done
                    }
                };
                if finished {
                    put_source(tx, source, Some(fingerprint), saved_at, kept)?;
                }
                Ok(finished)
            });
            match chunk {
                Ok(finished) => {
                    chunks += 1;
                    // Plans computed before this commit are stale now.
                    self.generation.fetch_add(1, Ordering::AcqRel);
                    if finished {
                        break Ok(());
                    }
                    let did = counts.total() - counts_before.total();
                    let took = chunk_started.elapsed();
                    tracing::trace!(
                        source,
                        chunk = chunks,
                        ops = did,
                        took_us = took.as_micros() as u64,
                        "store: replace chunk committed"
                    );
                    chunk_ops =
                        next_chunk_ops(chunk_ops, did, took, chunk_time, self.max_chunk_ops);
                    self.serve_waiting_appends();
                }
                Err(e) => {
                    // Rolled back: report what was committed.
                    counts = counts_before;
                    break Err(e);
                }
            }
        };
        self.buf = buf;
        let unchanged = match &work {
            Work::Planned { .. } => planned_unchanged,
            Work::Walking { walk, .. } => walk.unchanged,
        };
        match result {
            Ok(()) => {
                self.metrics.snapshot_ok.inc();
                tracing::info!(
                    source,
                    records = kept,
                    inserted = counts.inserted,
                    updated = counts.updated,
                    deleted = counts.deleted,
                    unchanged,
                    duplicate_ids = records.len() - kept,
                    planned_off_writer = planned,
                    chunks,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "store: source snapshot saved"
                );
                Ok(())
            }
            Err(e) => {
                self.metrics.snapshot_error.inc();
                self.failures.failed("source snapshot replace", 1, &e);
                if chunks > 0 {
                    tracing::warn!(
                        source,
                        chunks_committed = chunks,
                        inserted = counts.inserted,
                        updated = counts.updated,
                        deleted = counts.deleted,
                        "store: a source replace failed part-way; the source is left without fingerprint and is saved again on its next read"
                    );
                }
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
    ) -> Result<AppliedChanges, StoreError> {
        let started = Instant::now();
        let saved_at = unix_ms(SystemTime::now());
        let sorted = snapshot::sorted_last_per_id(upserts);
        let mut buf = std::mem::take(&mut self.buf);
        let result = self.transact("applying pushed changes", |tx| {
            let mut done = AppliedChanges::default();
            if !removals.is_empty() {
                let sources: Vec<String> = tx
                    .prepare_cached("SELECT source FROM sources ORDER BY source")?
                    .query_map([], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                for from in sources {
                    let mut n = 0usize;
                    for id in removals {
                        n += snapshot::delete_row(tx, &from, id)?;
                    }
                    if n > 0 {
                        add_to_source_count(tx, &from, -(n as i64))?;
                        done.removed += n;
                        done.removed_from.push((from, n));
                    }
                }
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
        let result = (|| {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let value = f(&tx)?;
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
                Ok(value)
            }
            Err(e) => Err(StoreError::sqlite(&self.path, op, e)),
        }
    }

    /// Leaves the file tidy: the WAL folded back into the database.
    fn shutdown(self) {
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

/// The size of a replace's next chunk: as many row changes as fit in
/// `target` at the pace of the last chunk (`did` changes in `took`), at
/// least [`MIN_CHUNK_OPS`], at most twice the last size and at most `max`.
fn next_chunk_ops(last: usize, did: usize, took: Duration, target: Duration, max: usize) -> usize {
    if did == 0 {
        // A stretch of unchanged rows: nothing learnt about row changes.
        return last;
    }
    let fit = did as f64 * target.as_secs_f64() / took.as_secs_f64().max(1e-6);
    let grown = last.saturating_mul(2).min(max);
    (fit as usize).clamp(MIN_CHUNK_OPS.min(grown), grown)
}

/// Writes a source's `sources` row. `None` for the fingerprint marks a
/// snapshot being written (or left incomplete by a crash or an error).
fn put_source(
    tx: &Transaction<'_>,
    source: &str,
    fingerprint: Option<&str>,
    saved_at: i64,
    records: usize,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO sources (source, fingerprint, saved_at, records)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (source) DO UPDATE SET fingerprint = excluded.fingerprint,
             saved_at = excluded.saved_at, records = excluded.records",
    )?
    .execute(params![source, fingerprint, saved_at, records as i64])?;
    Ok(())
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
    suppressed: u64,
    failed_transactions: u64,
}

impl FailureLog {
    fn failed(&mut self, what: &'static str, commands: usize, e: &StoreError) {
        let now = Instant::now();
        match &mut self.failing {
            Some(f)
                if f.kind == e.kind() && now.duration_since(f.last_warn) < FAILURE_LOG_INTERVAL =>
            {
                f.suppressed += 1;
                f.failed_transactions += 1;
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
                    suppressed: 0,
                    failed_transactions: failed,
                });
            }
        }
    }

    fn succeeded(&mut self) {
        if let Some(f) = self.failing.take() {
            tracing::info!(
                failed_transactions = f.failed_transactions,
                "store writes succeed again"
            );
        }
    }
}
