//! The disk gate between the call journal and the sync store.
//!
//! Both stores live on the same disk, and an fsync waits for the writes
//! already queued on the device. A bulk enqueue writes hundreds of KB to the
//! sync file's WAL per commit and, at each checkpoint, megabytes to the
//! database file: a call's journal commit that lands behind that waits for
//! all of it (measured on the 2-core VM: journal p99 1.9 ms idle, 27.5 ms
//! during a bulk enqueue). The gate gives the disk to the journal: its writer
//! marks each commit it runs ([`DiskGate::journal_commit`]), and the sync
//! writer, before each of its own disk writes (a commit, a checkpoint step),
//! waits while one is marked ([`DiskGate::wait_clear`]), at most a bounded
//! time, so the sync store never stops for good when the journal is busy.
//!
//! Measured with the sync file's checkpoints already off its commits
//! (`bench/sync_store.rs`, release, this VM's disk, 3 runs each): journal
//! p99 during the bulk 4.0 / 4.9 / 47.1 ms with the gate (the last run met
//! a burst of another process's disk writes: its idle p99 was fine, its
//! max 57 ms), 5.2 / 8.0 / 10.2 ms without (`--no-gate`); the bulk's rate
//! the same (80,000-95,500 rows/s). A small gain, within the noise of one
//! run; kept because it costs a sync commit at most 20 ms.
//!
//! The gateway gives the process's gate ([`DiskGate::process`]) to both
//! stores it opens ([`OpenOptions::disk_gate`](super::OpenOptions::disk_gate));
//! a store opened without one neither marks nor waits.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a waiting sync writer looks at the gate again: a journal
/// commit takes 1-2 ms, so a finer poll would only burn CPU.
const POLL: Duration = Duration::from_micros(200);

/// Shared between the stores of one gateway. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct DiskGate {
    /// Journal commits in progress (several stores could mark it).
    journal_commits: Arc<AtomicU32>,
}

/// A journal commit in progress; the gate opens again when it drops.
pub(super) struct JournalCommit<'a> {
    gate: &'a DiskGate,
}

impl Drop for JournalCommit<'_> {
    fn drop(&mut self) {
        self.gate.journal_commits.fetch_sub(1, Ordering::AcqRel);
    }
}

impl DiskGate {
    /// A gate with no commit marked.
    pub fn new() -> DiskGate {
        DiskGate::default()
    }

    /// The process's gate: the gateway gives it to the main store and the
    /// sync store it opens (one gateway per process; tests that start
    /// several share it, which costs a sync write at most a bounded wait).
    pub fn process() -> &'static DiskGate {
        static GATE: std::sync::OnceLock<DiskGate> = std::sync::OnceLock::new();
        GATE.get_or_init(DiskGate::new)
    }

    /// Marks a journal commit until the returned guard drops.
    pub(super) fn journal_commit(&self) -> JournalCommit<'_> {
        self.journal_commits.fetch_add(1, Ordering::AcqRel);
        JournalCommit { gate: self }
    }

    /// Whether a journal commit is marked now.
    pub(super) fn journal_busy(&self) -> bool {
        self.journal_commits.load(Ordering::Acquire) > 0
    }

    /// Blocks (the calling thread: a writer thread, never a runtime's) while
    /// a journal commit is marked, at most `max`; returns how long it
    /// waited. A journal busy for longer than `max` (a flood of calls)
    /// lets the sync writer through anyway, one write at a time.
    pub(super) fn wait_clear(&self, max: Duration) -> Duration {
        let started = Instant::now();
        while self.journal_busy() {
            let waited = started.elapsed();
            if waited >= max {
                return waited;
            }
            std::thread::sleep(POLL.min(max - waited));
        }
        started.elapsed()
    }
}
