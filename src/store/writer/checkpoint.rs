//! The sync store's checkpoints, off its writer thread and out of its bulk
//! writes.
//!
//! Why: a checkpoint copies the WAL's pages into the database file and
//! fsyncs it; after a bulk enqueue that is megabytes of scattered pages (the
//! id-map's keys are random), and every call journal commit that lands
//! during that fsync waits for it (measured on the 2-core VM with strace:
//! the journal's slow fsyncs, 8-27 ms, each fell inside one of the sync
//! file's checkpoint fsyncs, 5-30 ms; the sync WAL's own commit fsyncs,
//! 0.3-4 ms, did not show up). SQLite's automatic checkpoint runs one every
//! 1,000 pages, about every 5 commits of 1,000 rows, in the enqueue's own
//! COMMIT.
//!
//! So the sync file checkpoints here instead: a thread of its own with its
//! own connection runs `PRAGMA wal_checkpoint(PASSIVE)` once the writer has
//! committed nothing for [`IDLE`] (the bulk is over), at the lowest CPU
//! priority, and through the [`DiskGate`] (not while a journal commit is
//! marked). A bulk then writes only its WAL, sequentially, one short fsync
//! per commit. The WAL is still bounded: the writer connection keeps SQLite's
//! automatic checkpoint at the WAL's cap (`schema::SYNC_WAL_CAP_PAGES`, 128
//! MiB), which a bulk reaches about once per 100,000 rows (that checkpoint
//! runs inline, as all of them did before).
//!
//! Measured (`bench/sync.sh store`, release, this VM's disk, 3 runs each):
//! SQLite's checkpoint every 1,000 pages: 35,900-40,800 rows/s, journal p99
//! during the bulk 21-25 ms; a checkpoint after every commit (gated): 33,000-
//! 36,600 rows/s, 22-31 ms; this (with the partial index of migration 2 and
//! the gate): 90,900-95,000 rows/s, 6.9-9.4 ms (idle p99 about 2 ms). What
//! is left is the WAL commits' own fsyncs, 1-2.5 MB each late in the bulk.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use crate::store::gate::DiskGate;

/// How long the writer must have committed nothing before a checkpoint: a
/// bulk enqueue's commands come back to back (well under 1 ms apart), a
/// feed's changes in bursts.
const IDLE: Duration = Duration::from_millis(250);

/// How often the thread looks.
const POLL: Duration = Duration::from_millis(50);

/// Longest a checkpoint waits at the gate for a journal commit.
const GATE_MAX: Duration = Duration::from_millis(20);

/// The thread's name (what `top -H` shows).
const THREAD: &str = "cti-store-ckpt";

/// What the writer and the checkpoint thread share.
struct Shared {
    /// Sync transactions committed so far.
    commits: AtomicU64,
    /// When the last one was, in ms since `base`.
    last_commit_ms: AtomicU64,
    base: Instant,
    stop: AtomicBool,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// The writer's handle on the checkpoint thread.
pub(super) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread over its own connection to the sync file at
    /// `path` (already open and migrated by the writer). `None`, logged,
    /// when that fails: the writer's automatic checkpoint at the WAL's cap
    /// still bounds the WAL.
    pub(super) fn start(path: &Path, gate: Option<DiskGate>) -> Option<Checkpointer> {
        let conn = match crate::store::schema::open_checkpointer(path) {
            Ok(conn) => conn,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "store: no checkpoint thread for the sync file; its WAL is checkpointed when it reaches its cap");
                return None;
            }
        };
        let shared = Arc::new(Shared {
            commits: AtomicU64::new(0),
            last_commit_ms: AtomicU64::new(0),
            base: Instant::now(),
            stop: AtomicBool::new(false),
        });
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(THREAD.into())
                .spawn(move || run(&conn, &shared, gate.as_ref()))
        };
        match thread {
            Ok(thread) => Some(Checkpointer {
                shared,
                thread: Some(thread),
            }),
            Err(e) => {
                tracing::warn!(error = %e, "store: cannot start the sync file's checkpoint thread; its WAL is checkpointed when it reaches its cap");
                None
            }
        }
    }

    /// The writer committed a transaction.
    pub(super) fn committed(&self) {
        self.shared
            .last_commit_ms
            .store(self.shared.now_ms(), Ordering::Release);
        self.shared.commits.fetch_add(1, Ordering::AcqRel);
    }
}

/// Stops the thread and waits for it: the writer drops it before its last
/// checkpoint on close (and a writer that never started drops it at once).
impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

fn run(conn: &Connection, shared: &Shared, gate: Option<&DiskGate>) {
    crate::thread_priority::lower_current(THREAD);
    // Commits the last complete checkpoint covered.
    let mut covered = 0u64;
    while !shared.stop.load(Ordering::Acquire) {
        std::thread::park_timeout(POLL);
        let commits = shared.commits.load(Ordering::Acquire);
        let idle_ms = shared
            .now_ms()
            .saturating_sub(shared.last_commit_ms.load(Ordering::Acquire));
        if commits == covered || u128::from(idle_ms) < IDLE.as_millis() {
            continue;
        }
        if let Some(gate) = gate {
            gate.wait_clear(GATE_MAX);
        }
        let outcome = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        });
        match outcome {
            // Every frame is in the database file: the writer's next commit
            // starts the WAL over.
            Ok((0, log, done)) if done >= log => covered = commits,
            // A reader still needs some frames: the next round finishes.
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "store: sync checkpoint failed; the next round retries")
            }
        }
    }
}
