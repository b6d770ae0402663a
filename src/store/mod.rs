//! The embedded store: SQLite (rusqlite, bundled) in WAL mode.
//!
//! It keeps two things:
//!
//! - **the directory snapshot**, per source: every counterparty as its JSON,
//!   plus the source's fingerprint and when it was saved. A restart loads it
//!   and answers before any source has been read again.
//! - **the call journal**: every `IncomingCall` the PBX sent.
//!
//! Only this module knows SQL. Its shape:
//!
//! - one **writer thread** (`writer.rs`) owns the read-write connection and
//!   takes commands over a bounded channel. An `Ok` from a write means the
//!   data is committed (`synchronous=FULL`: it survives power loss). Journal
//!   appends that queue up are committed together (group commit).
//! - **reads** (`read.rs`) run on read-only connections inside
//!   `spawn_blocking`; WAL lets them run while the writer writes. The
//!   snapshot load reads on one thread and decodes JSON on one per core.
//! - **snapshot rows** (`snapshot.rs`): a source replace writes only the rows
//!   that differ; the comparison runs on a read connection before the
//!   writer is asked, so the writer is busy only for the changes. The writer
//!   commits them in chunks of about 100 ms and serves the journal appends
//!   that wait in between, so a call never waits for a whole replace.
//! - **schema** (`schema.rs`): pragmas and migrations keyed on
//!   `PRAGMA user_version`, applied by [`Store::open`], and the checks made
//!   before opening: a missing or empty file where a store was expected is
//!   refused unless [`OpenOptions::new_store`] allows it, and
//!   [`Store::open_alone`] (maintenance commands) refuses a file a gateway
//!   has open.
//!
//! Errors ([`StoreError`]) say what to do, and what the file holds
//! ([`StoreRole`]) when they concern losing it. A full disk or a read-only file
//! answers the calls that hit it with an error; the writer keeps serving.

mod backup;
/// The snapshot tables (`sources`, `counterparties`, `tombstones`) as the
/// main store's stand after its migrations, for the first migration of a
/// file that holds a source's records beside its own tables (the sync
/// store's CRM-only records, SERVIO's): one text, so that the same loading
/// and saving code reads each. A literal, for `concat!`.
macro_rules! snapshot_tables_sql {
    () => {
        "
    CREATE TABLE sources (
        source      TEXT PRIMARY KEY NOT NULL,
        fingerprint TEXT,
        saved_at    INTEGER NOT NULL,
        records     INTEGER NOT NULL
    );
    CREATE TABLE counterparties (
        source      TEXT NOT NULL REFERENCES sources(source) ON DELETE CASCADE,
        id          TEXT NOT NULL,
        body        TEXT NOT NULL,
        received_at INTEGER,
        PRIMARY KEY (source, id)
    ) WITHOUT ROWID;
    CREATE TABLE tombstones (
        id         TEXT NOT NULL,
        source     TEXT NOT NULL,
        content    INTEGER NOT NULL,
        deleted_at INTEGER NOT NULL,
        PRIMARY KEY (id, source)
    ) WITHOUT ROWID;
    "
    };
}

mod error;
mod gate;
mod metrics;
mod open;
mod private;
mod read;
mod refusals;
mod retention;
mod schema;
mod servio;
mod snapshot;
mod sync;
mod writer;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use crate::directory::{Counterparty, Tombstone};
pub use backup::{check_target as check_backup_target, BackupError, BackupFile};
pub use error::{StoreError, StoreRole};
pub use gate::DiskGate;
use metrics::Metrics;
pub use open::{OpenOptions, StoredSet};
pub use refusals::{Refusal, RefusalLog};
pub use retention::{keep_journal_for, PRUNE_BATCH, PRUNE_PAUSE};
pub use servio::{LedgerRow, LeftRow};
pub use snapshot::SnapshotRecord;
pub use sync::{
    Ack, AckOutcome, AckResult, Conflict, ConflictQuery, IdMapKey, IdMapLink, IdMapRow, InboxRow,
    LeaseRequest, LeaseSweep, Leased, LeasedRow, Link, NewConflict, NewOutboxRow, NewPayment,
    OutboxOp, OutboxQuery, OutboxRow, OutboxState, PaymentCursor, PaymentEvent, PaymentsBatch,
    PaymentsCommitted, PostedPayment, RetryOutcome, RowOutcome, Settle, StoredPayment, Swept,
    SyncBatch, SyncDepth, SystemStatus, WriteOutcome, EXPORT_CHUNK, MAX_PAGE, PAYMENT_KIND,
};
use writer::Command;

/// Most idle read connections kept for reuse.
const MAX_IDLE_READERS: usize = 4;

/// The most rows one [`Store::calls`] answers, whatever `limit` asks.
const MAX_CALLS_LIMIT: u32 = 10_000;

/// One source's part of the directory snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSnapshot {
    pub source: String,
    /// What the source said its input was when it was saved; `None` when the
    /// snapshot cannot be trusted to match it (some rows did not load, or
    /// its last save did not finish).
    pub fingerprint: Option<String>,
    /// When the snapshot of this source was last written: the age of its
    /// records, which decides between two sources holding the same id.
    pub saved_at: SystemTime,
    /// In id order.
    pub records: Vec<Counterparty>,
    /// When the gateway received each record's version (unix ms), one for
    /// one beside `records`; `None` for rows saved before this was kept.
    pub received_at_ms: Vec<Option<i64>>,
}

/// What [`Store::apply_changes`] committed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedChanges {
    /// Upserted records that had no row in the source.
    pub inserted: usize,
    /// Upserted records whose row differed (rewritten).
    pub updated: usize,
    /// Upserted records whose row was already equal (not written).
    pub unchanged: usize,
    /// Rows of the source removed.
    pub removed: usize,
    /// The source, with how many rows it lost (empty when none).
    pub removed_from: Vec<(String, usize)>,
    /// Tombstones written (other sources' copies of removed ids).
    pub tombstones: usize,
}

/// One `IncomingCall` as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// When the call came; stored with millisecond precision.
    pub at: SystemTime,
    /// The number exactly as the PBX sent it.
    pub raw_number: String,
    /// The normalized number (E.164 or the extension).
    pub number: String,
    /// The operator key the PBX sent.
    pub key: String,
    pub counterparty_id: Option<String>,
    /// How many screens the pop-up reached.
    pub delivered: u32,
    /// The pop-up's sequence number for `key`; `None` when no pop-up was
    /// published (a key no operator has).
    pub seq: Option<u64>,
}

/// Which journal rows [`Store::calls_page`] reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CallQuery {
    /// Only this operator key's calls.
    pub key: Option<String>,
    /// Only calls from this number, in the journal's form (`number` of
    /// [`CallRecord`]: E.164 with `+`, an extension as its digits).
    pub number: Option<String>,
    /// Only calls from this time on (inclusive).
    pub since: Option<SystemTime>,
    /// Only the calls that come after call `before` in the journal's order
    /// (newest first): older ones, in practice those with a smaller id. When
    /// that call is not in the journal, the position is the latest time of
    /// the calls with a smaller id, so none of those is left out.
    pub before: Option<i64>,
    /// At most this many rows (never more than 10,000).
    pub limit: u32,
}

/// A journal row: a [`CallRecord`] with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCall {
    /// Grows with every append.
    pub id: i64,
    /// Millisecond precision (what the journal keeps).
    pub at: SystemTime,
    pub raw_number: String,
    pub number: String,
    pub key: String,
    pub counterparty_id: Option<String>,
    pub delivered: u32,
    /// The pop-up's sequence number (`None` for rows from before it was kept).
    pub seq: Option<u64>,
}

/// The handle to the store. Cheap to clone; all clones share one writer.
///
/// Dropping the last clone without [`Store::close`] lets the writer finish
/// what it was sent and stop; `close` also waits for that and tidies the file.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// `None` once closed: new writes are refused.
    sender: Mutex<Option<mpsc::Sender<Command>>>,
    /// The writer thread, taken by the first `close`.
    writer: tokio::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
    closed: AtomicBool,
    /// Idle read-only connections.
    readers: Mutex<Vec<Connection>>,
    /// Sources whose snapshot did not load whole: their fingerprint is not
    /// reported, so the source writes them again.
    untrusted: Mutex<HashSet<String>>,
    /// Snapshot writes committed; the writer bumps it after each.
    generation: Arc<AtomicU64>,
    metrics: Metrics,
    registry: prometheus::Registry,
    priority: Priority,
    /// What the file holds, for the messages about losing it.
    role: StoreRole,
}

/// How a store's writes compete for the CPU (see [`Store::open_background`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Priority {
    /// The call journal's store: the PBX waits for its commits, so its writer
    /// is real-time while it waits for them where the kernel allows it
    /// ([`Urgency`](crate::thread_priority::Urgency)).
    Journal,
    /// Callers wait for its writes, but nothing as urgent as a call (the
    /// sync store's acknowledged enqueues).
    Normal,
    /// Nobody waits for its writes but the next start-up.
    Background,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Every source's snapshot, in source order, from one consistent view.
    ///
    /// A row whose JSON no longer decodes (say, written by a newer build) is
    /// skipped and logged; its source then reports no fingerprint (here and
    /// from [`Store::source_fingerprint`]) so that it is written again.
    ///
    /// A source whose last replace did not finish (the process died between
    /// two of its chunks, or a chunk failed) has no fingerprint either, and
    /// is returned with the rows it has: the new records below the id where
    /// the replace stopped, the old ones above it, each row whole. That is
    /// deliberate: at start-up a directory that answers most callers beats
    /// an empty one, and since the fingerprint matches nothing the source is
    /// read again and its replace, diffed against these rows, completes it.
    pub async fn load_snapshot(&self) -> Result<Vec<SourceSnapshot>, StoreError> {
        let started = Instant::now();
        let loaded = self.read(read::load_snapshot).await?;
        let mut summary = String::new();
        let mut total = 0usize;
        let mut out = Vec::with_capacity(loaded.sources.len());
        for mut s in loaded.sources {
            let source = &s.snapshot.source;
            let got = s.snapshot.records.len();
            total += got;
            if !summary.is_empty() {
                summary.push_str(", ");
            }
            summary.push_str(&format!(
                "{source}={got} (saved {})",
                humantime::format_rfc3339_seconds(from_unix_ms(s.saved_at_ms))
            ));
            s.snapshot.saved_at = from_unix_ms(s.saved_at_ms);
            // No fingerprint: a replace of this source was interrupted.
            let interrupted = s.snapshot.fingerprint.is_none();
            let incomplete =
                interrupted || s.bad_rows > 0 || i64::try_from(got).ok() != Some(s.expected);
            if incomplete {
                tracing::warn!(
                    source = %source,
                    loaded = got,
                    expected = s.expected,
                    undecodable = s.bad_rows,
                    interrupted_save = interrupted,
                    first_error = s.first_error.as_deref().unwrap_or(""),
                    "store: snapshot of a source loaded incomplete; the source will be written again on its next read"
                );
                lock(&self.inner.untrusted).insert(source.clone());
                s.snapshot.fingerprint = None;
            }
            out.push(s.snapshot);
        }
        tracing::info!(
            path = %self.inner.path.display(),
            sources = out.len(),
            records = total,
            elapsed_ms = started.elapsed().as_millis() as u64,
            detail = %summary,
            "store: snapshot loaded"
        );
        Ok(out)
    }

    /// The fingerprint saved with `source`'s snapshot; `None` if the source
    /// was never saved, its last save did not finish, or its snapshot did not
    /// load whole.
    pub async fn source_fingerprint(&self, source: &str) -> Result<Option<String>, StoreError> {
        if lock(&self.inner.untrusted).contains(source) {
            return Ok(None);
        }
        let source = source.to_owned();
        self.read(move |conn, path| read::source_fingerprint(conn, path, &source))
            .await
    }

    /// Replaces `source`'s whole snapshot with `records` and `fingerprint`;
    /// other sources are untouched. Resolves once all of it is committed.
    /// Records with the same id: the last one wins.
    ///
    /// Only rows that differ are written. The comparison (the costly part,
    /// seconds of CPU for a million records) runs on a read connection
    /// first, so the writer is busy only for the rows that changed. Those
    /// are committed in chunks (about 100 ms each), with the journal appends
    /// that arrived meanwhile committed between two chunks: an append waits
    /// for one chunk, not for the whole replace. Replaces do not interleave:
    /// one sent while another is being written starts when it is done.
    ///
    /// The fingerprint is written with the last chunk; until then the source
    /// has none. An error (or a crash) part-way leaves the rows written so
    /// far and no fingerprint, so the source is read and saved again (see
    /// [`Store::load_snapshot`]); an error in the first chunk leaves the old
    /// snapshot and its fingerprint as they were.
    ///
    /// `records` may hold `Counterparty` or `Arc<Counterparty>` (what the
    /// directory keeps), so saving never copies the records.
    pub async fn replace_source<R>(
        &self,
        source: &str,
        fingerprint: &str,
        records: Arc<[R]>,
    ) -> Result<(), StoreError>
    where
        R: SnapshotRecord + 'static,
    {
        let records: Arc<dyn snapshot::RecordSet> = Arc::new(snapshot::Held(records));
        // A background store diffs on its own (lowered) writer thread; the
        // main store diffs on a read connection first, see above.
        let plan = match self.inner.priority {
            Priority::Background => None,
            Priority::Journal | Priority::Normal => self.plan_replace(source, &records).await?,
        };
        let result = self
            .request(|reply| Command::ReplaceSource {
                source: source.to_owned(),
                fingerprint: fingerprint.to_owned(),
                records,
                plan,
                reply,
            })
            .await;
        if result.is_ok() {
            lock(&self.inner.untrusted).remove(source);
        }
        result
    }

    /// The diff of a replace, computed on a read connection; `None` when
    /// that failed (the writer then compares itself and reports what fails).
    async fn plan_replace(
        &self,
        source: &str,
        records: &Arc<dyn snapshot::RecordSet>,
    ) -> Result<Option<snapshot::Plan>, StoreError> {
        let generation = self.inner.generation.load(Ordering::Acquire);
        let planned = {
            let (source, records) = (source.to_owned(), Arc::clone(records));
            self.read(move |conn, path| snapshot::plan(conn, path, &source, &*records))
                .await
        };
        match planned {
            Ok(diff) => Ok(Some(snapshot::Plan { generation, diff })),
            Err(StoreError::Closed) => Err(StoreError::Closed),
            Err(e) => {
                tracing::debug!(source, error = %e, "store: planning a replace failed; the writer diffs");
                Ok(None)
            }
        }
    }

    /// Upserts `upserts` into `source`'s snapshot rows (a record replaces the
    /// row of its id; of two records with one id, the later one counts),
    /// removes the ids in `removals` from `source`'s rows, and writes
    /// `tombstones` (other sources' copies of a deleted id, hidden while their
    /// content is the one deleted; their rows stay as their source holds
    /// them), all in one transaction: resolves `Ok` once all of it is
    /// committed (`synchronous=FULL`), and on `Err` none of it is. The
    /// counterpart of [`Directory::apply_changes`](crate::directory::Directory::apply_changes):
    /// the same change, made durable.
    ///
    /// The source's row count stays equal to its rows, and the upserted
    /// source gets a fingerprint (its name) and `saved_at` = now, so
    /// [`Store::load_snapshot`] loads the result as complete.
    ///
    /// Waits for a source replace being written (see [`Store::replace_source`]):
    /// changes never interleave with its chunks. Dropping the future once the
    /// command is sent does not cancel the write.
    pub async fn apply_changes<R>(
        &self,
        source: &str,
        upserts: Arc<[R]>,
        removals: &[Box<str>],
        tombstones: &[Tombstone],
    ) -> Result<AppliedChanges, StoreError>
    where
        R: SnapshotRecord + 'static,
    {
        let upserts: Arc<dyn snapshot::RecordSet> = Arc::new(snapshot::Held(upserts));
        let removals: Arc<[Box<str>]> = removals.into();
        let tombstones: Arc<[Tombstone]> = tombstones.into();
        self.request(|reply| Command::ApplyChanges {
            source: source.to_owned(),
            upserts,
            removals,
            tombstones,
            reply,
        })
        .await
    }

    /// The tombstones in force (see [`Store::apply_changes`]).
    pub async fn load_tombstones(&self) -> Result<Vec<Tombstone>, StoreError> {
        self.read(|conn, path| read::tombstones(conn, path)).await
    }

    /// Forgets tombstones a source's changed copy spent; resolves with how
    /// many were there.
    pub async fn forget_tombstones(&self, tombstones: &[Tombstone]) -> Result<usize, StoreError> {
        let tombstones: Arc<[Tombstone]> = tombstones.into();
        self.request(|reply| Command::ForgetTombstones { tombstones, reply })
            .await
    }

    /// Removes `source`'s snapshot (its rows and its entry) in one
    /// transaction; resolves with the number of rows removed. For a source
    /// whose snapshot moved to another store.
    pub async fn forget_source(&self, source: &str) -> Result<usize, StoreError> {
        let source = source.to_owned();
        self.request(|reply| Command::ForgetSource { source, reply })
            .await
    }

    /// Appends a call to the journal. Resolves with the row id once the row
    /// is committed. Dropping the future does not cancel the write.
    pub async fn append_call(&self, call: CallRecord) -> Result<i64, StoreError> {
        self.request(|reply| Command::AppendCall { call, reply })
            .await
    }

    /// One more screen got `key`'s pop-ups `seqs` after they were published
    /// (a long-poll request returned them): adds one to `delivered` of each
    /// one's journal row. Committed with the journal appends' group; a
    /// delivery that comes before its row (the hub wakes long-poll requests
    /// before the PBX's request writes the row) is added when the row is
    /// written. Resolves with how many of the rows were there already.
    pub async fn add_delivered(&self, key: &str, seqs: Vec<u64>) -> Result<usize, StoreError> {
        let key = key.to_owned();
        self.request(|reply| Command::AddDelivered { key, seqs, reply })
            .await
    }

    /// Journal rows, newest first (by `at`, then id), optionally only for
    /// `key` and only from `since` on (inclusive). At most `limit` rows, and
    /// never more than 10,000. [`Store::calls_page`] with no `before`.
    pub async fn calls(
        &self,
        key: Option<&str>,
        since: Option<SystemTime>,
        limit: u32,
    ) -> Result<Vec<StoredCall>, StoreError> {
        self.calls_page(CallQuery {
            key: key.map(str::to_owned),
            number: None,
            since,
            before: None,
            limit,
        })
        .await
    }

    /// Each operator key's largest journaled pop-up sequence number, for the
    /// hub to continue from at start-up.
    pub async fn last_seqs(&self) -> Result<Vec<(String, u64)>, StoreError> {
        self.read(|conn, path| read::last_seqs(conn, path)).await
    }

    /// The journal rows `query` selects, newest first (by `at`, then id).
    /// Paging with `before` set to the last id of the previous page reads
    /// every row exactly once, whatever order the calls were committed in.
    pub async fn calls_page(&self, query: CallQuery) -> Result<Vec<StoredCall>, StoreError> {
        let CallQuery {
            key,
            number,
            since,
            before,
            limit,
        } = query;
        let filter = read::CallFilter {
            key,
            number,
            since_ms: since.map(unix_ms),
            before,
            limit: limit.min(MAX_CALLS_LIMIT),
        };
        self.read(move |conn, path| read::calls(conn, path, &filter))
            .await
    }

    /// Stops accepting calls, lets the writer finish what it was sent,
    /// checkpoints the WAL and joins the writer thread. Idempotent; every
    /// call after it answers [`StoreError::Closed`]. Also removes the store's
    /// metrics from the registry, so the store can be opened again.
    pub async fn close(&self) {
        let mut writer = self.inner.writer.lock().await;
        self.inner.closed.store(true, Ordering::Release);
        drop(lock(&self.inner.sender).take());
        lock(&self.inner.readers).clear();
        let Some(handle) = writer.take() else {
            return;
        };
        match tokio::task::spawn_blocking(move || handle.join()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => tracing::error!(
                path = %self.inner.path.display(),
                "store writer thread panicked; writes in flight may not have been saved"
            ),
            Err(e) => tracing::warn!(
                path = %self.inner.path.display(),
                error = %e,
                "store: waiting for the writer thread failed"
            ),
        }
        self.inner.metrics.unregister(&self.inner.registry);
        tracing::info!(path = %self.inner.path.display(), "store closed");
    }

    /// Sends one command to the writer and waits for its answer.
    async fn request<T>(
        &self,
        command: impl FnOnce(writer::Reply<T>) -> Command,
    ) -> Result<T, StoreError> {
        let sender = lock(&self.inner.sender)
            .as_ref()
            .cloned()
            .ok_or(StoreError::Closed)?;
        let (reply, answer) = oneshot::channel();
        // The writer holds the receiver until every sender is gone, and we
        // hold one: a failed send means the writer thread died.
        sender
            .send(command(reply))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        drop(sender);
        let answer = answer.await.map_err(|_| StoreError::WriterGone)?;
        answer.map_err(|e| e.in_role(&self.inner.role))
    }

    /// Runs a query on an idle read connection (or a new one) on the
    /// blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &Path) -> Result<T, StoreError> + Send + 'static,
    {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let idle = lock(&inner.readers).pop();
            let mut conn = match idle {
                Some(conn) => conn,
                None => schema::open_reader(&inner.path)?,
            };
            let result = f(&mut conn, &inner.path);
            if !inner.closed.load(Ordering::Acquire) {
                let mut idle = lock(&inner.readers);
                if idle.len() < MAX_IDLE_READERS {
                    idle.push(conn);
                }
            }
            result
        })
        .await
        .map_err(|e| StoreError::ReadTask {
            detail: e.to_string(),
        })?
        .map_err(|e| e.in_role(&self.inner.role))
    }

    /// Sends raw SQL to the writer connection (tests inject failures with it).
    #[cfg(test)]
    async fn exec_on_writer(&self, sql: &str) -> Result<(), StoreError> {
        let sql = sql.to_owned();
        self.request(|reply| Command::Exec { sql, reply }).await
    }

    /// Sets the size of the chunks later replaces are committed in: at most
    /// `ops` row changes (at least 1), and about `time` of work, commit
    /// included. For measurements and tests only: `bench/store.sh` compares
    /// chunk sizes with it, tests make many chunks of few rows. The gateway
    /// never calls it and keeps the defaults (at most 20,000 row changes,
    /// about 100 ms: an append waits for one chunk at most).
    pub async fn set_chunk(&self, ops: usize, time: Duration) -> Result<(), StoreError> {
        self.request(|reply| Command::SetChunk { ops, time, reply })
            .await
    }

    /// Write transactions run so far (each group commit counts once).
    #[cfg(test)]
    pub(crate) fn transactions(&self) -> u64 {
        self.inner.metrics.commit_seconds.get_sample_count()
    }
}

/// Locks a mutex whose data stays valid even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `SystemTime` as signed unix milliseconds (negative before 1970).
fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
    }
}

fn from_unix_ms(ms: i64) -> SystemTime {
    let d = Duration::from_millis(ms.unsigned_abs());
    let t = if ms >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    };
    t.unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
mod tests;
