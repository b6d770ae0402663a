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

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use rusqlite::{params, Connection, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::metrics::Metrics;
use super::snapshot::{self, Plan, RecordSet, RowOp};
use super::{unix_ms, CallRecord, StoreError};

/// Room in the channel: callers beyond it wait (asynchronously) for space.
pub(super) const CHANNEL_CAPACITY: usize = 1024;

/// Most journal appends committed in one transaction.
const GROUP_CAP: usize = 256;

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
    /// Runs raw SQL on the write connection (tests: inject failures).
    #[cfg(test)]
    Exec {
        sql: String,
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
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let writer = Writer {
        conn,
        path,
        metrics,
        generation,
        failures: FailureLog::default(),
        buf: Vec::with_capacity(1024),
    };
    std::thread::Builder::new()
        .name("cti-store-writer".into())
        .spawn(move || writer.run(rx))
}

struct Writer {
    conn: Connection,
    path: PathBuf,
    metrics: Metrics,
    /// Snapshot writes committed so far; a plan made at another count is stale.
    generation: Arc<AtomicU64>,
    failures: FailureLog,
    /// Reused JSON buffer for snapshot rows.
    buf: Vec<u8>,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut next: Option<Command> = None;
        let mut batch: Vec<(CallRecord, Reply<i64>)> = Vec::with_capacity(GROUP_CAP);
        loop {
            let cmd = match next.take() {
                Some(cmd) => cmd,
                None => match rx.blocking_recv() {
                    Some(cmd) => cmd,
                    None => break,
                },
            };
            match cmd {
                Command::AppendCall { call, reply } => {
                    batch.push((call, reply));
                    // Group commit: take every append already waiting, up to
                    // the cap; anything else waits for the next turn.
                    while batch.len() < GROUP_CAP {
                        match rx.try_recv() {
                            Ok(Command::AppendCall { call, reply }) => batch.push((call, reply)),
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.append_calls(&mut batch);
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
                #[cfg(test)]
                Command::Exec { sql, reply } => {
                    let result = self
                        .conn
                        .execute_batch(&sql)
                        .map_err(|e| StoreError::sqlite(&self.path, "test SQL", e));
                    let _ = reply.send(result);
                }
            }
        }
        self.shutdown();
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

    /// One transaction: after it, the source's snapshot rows are exactly
    /// `records` (the last one of each id) and its `sources` row carries the
    /// fingerprint. Only rows that differ are written. Uses `plan` when no
    /// snapshot write happened since it was computed, else diffs here.
    fn replace_source(
        &mut self,
        source: &str,
        fingerprint: &str,
        records: &dyn RecordSet,
        plan: Option<Plan>,
    ) -> Result<(), StoreError> {
        let started = Instant::now();
        let generation = self.generation.load(Ordering::Acquire);
        let plan = plan.filter(|p| p.generation == generation).map(|p| p.diff);
        let planned = plan.is_some();
        let saved_at = unix_ms(SystemTime::now());
        let mut buf = std::mem::take(&mut self.buf);
        let result = self.transact("replacing a source's snapshot", |tx| {
            let diff = match plan {
                Some(diff) => diff,
                None => snapshot::diff_rows(tx, source, records, &mut buf)?,
            };
            tx.execute(
                "INSERT INTO sources (source, fingerprint, saved_at, records)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (source) DO UPDATE SET fingerprint = excluded.fingerprint,
                     saved_at = excluded.saved_at, records = excluded.records",
                params![source, fingerprint, saved_at, diff.kept as i64],
            )?;
            snapshot::apply(tx, source, records, &diff, &mut buf)?;
            Ok(diff)
        });
        self.buf = buf;
        match result {
            Ok(diff) => {
                // Plans computed before this commit are stale now.
                self.generation.fetch_add(1, Ordering::AcqRel);
                self.metrics.snapshot_ok.inc();
                tracing::info!(
                    source,
                    records = diff.kept,
                    inserted = diff.count(|op| matches!(op, RowOp::Insert(_))),
                    updated = diff.count(|op| matches!(op, RowOp::Update(_))),
                    deleted = diff.count(|op| matches!(op, RowOp::Delete(_))),
                    unchanged = diff.unchanged,
                    duplicate_ids = records.len() - diff.kept,
                    planned_off_writer = planned,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "store: source snapshot saved"
                );
                Ok(())
            }
            Err(e) => {
                self.metrics.snapshot_error.inc();
                self.failures.failed("source snapshot replace", 1, &e);
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
