//! When a changed file may be read: only once it has stayed the same (size,
//! modification time and inode) over two checks `directory.settle` apart,
//! so an export still being written in place is never taken half done.
//!
//! The checks are pure here (a stamp in, a decision out); the watcher in
//! `file.rs` does the waiting and the reading.

use std::path::Path;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

/// What the watcher compares between checks. The inode (and device) tell a
/// file replaced by a rename (`cp -p` then `mv`) from the one it replaced,
/// even when size and modification time are the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    inode: (u64, u64),
}

impl FileStamp {
    pub(super) fn of(meta: &std::fs::Metadata) -> FileStamp {
        #[cfg(unix)]
        let inode = {
            use std::os::unix::fs::MetadataExt as _;
            (meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let inode = (0, 0);
        FileStamp {
            len: meta.len(),
            modified: meta.modified().ok(),
            inode,
        }
    }

    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file was last modified at least `settle` ago: it has
    /// already stayed the same that long, no second check is needed. A
    /// modification time in the future (a clock set back) is not.
    pub(super) fn older_than(&self, settle: Duration, now: SystemTime) -> bool {
        self.modified
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age >= settle)
    }

    /// How long until the file is `settle` old (zero when it already is).
    pub(super) fn until_settled(&self, settle: Duration, now: SystemTime) -> Duration {
        let age = self
            .modified
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        settle.saturating_sub(age)
    }
}

/// The stamp of the file at `path`; `None` when it cannot be read (absent).
pub(super) fn stamp(path: &Path) -> Option<FileStamp> {
    std::fs::metadata(path).ok().map(|m| FileStamp::of(&m))
}

/// A change the watcher saw and will check again at `due`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Pending {
    seen: Option<FileStamp>,
    pub(super) due: Instant,
}

/// What a check decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Nothing to read: the file is as last read.
    Idle,
    /// Check again at the pending's `due`.
    Wait(Pending),
    /// The file has stayed the same over `settle`: read it now.
    Read,
}

/// The settling rule, with its one setting.
#[derive(Debug, Clone, Copy)]
pub(super) struct Settle {
    pub(super) settle: Duration,
}

impl Settle {
    /// A first check: the file now stamps `now_stamp`, it was last read as
    /// `last_read`. `forced` (SIGHUP) reads even an unchanged file, once it
    /// has stayed the same over `settle` like any other.
    pub(super) fn first(
        self,
        now_stamp: Option<FileStamp>,
        last_read: Option<FileStamp>,
        forced: bool,
        now: Instant,
    ) -> Step {
        if !forced && now_stamp == last_read {
            return Step::Idle;
        }
        if self.settle.is_zero() {
            return Step::Read;
        }
        Step::Wait(Pending {
            seen: now_stamp,
            due: now + self.settle,
        })
    }

    /// After a read that found the file changing under it: check again
    /// `settle` from now (with a zero `settle`, a moment from now: the
    /// file is being written at this very moment).
    pub(super) fn restart(self, now_stamp: Option<FileStamp>, now: Instant) -> Pending {
        Pending {
            seen: now_stamp,
            due: now + self.settle.max(Duration::from_millis(100)),
        }
    }

    /// The second check of `pending`, at its `due`: read when the file is
    /// still as the first check saw it, else wait again from now (it is
    /// still being written).
    pub(super) fn second(
        self,
        pending: Pending,
        now_stamp: Option<FileStamp>,
        now: Instant,
    ) -> Step {
        if now_stamp == pending.seen {
            return Step::Read;
        }
        Step::Wait(Pending {
            seen: now_stamp,
            due: now + self.settle,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(len: u64, secs: u64, inode: u64) -> Option<FileStamp> {
        Some(FileStamp {
            len,
            modified: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)),
            inode: (1, inode),
        })
    }

    const TWO: Settle = Settle {
        settle: Duration::from_secs(2),
    };

    #[test]
    fn an_unchanged_file_is_left_alone_unless_forced() {
        let now = Instant::now();
        assert_eq!(
            TWO.first(at(10, 1, 7), at(10, 1, 7), false, now),
            Step::Idle
        );
        assert!(matches!(
            TWO.first(at(10, 1, 7), at(10, 1, 7), true, now),
            Step::Wait(_)
        ));
    }

    #[test]
    fn a_change_is_read_only_when_two_checks_a_settle_apart_agree() {
        let now = Instant::now();
        let Step::Wait(pending) = TWO.first(at(20, 5, 7), at(10, 1, 7), false, now) else {
            panic!("a change waits");
        };
        assert_eq!(pending.due, now + Duration::from_secs(2));
        // Still growing at the second check: wait again, from then.
        let later = pending.due;
        let Step::Wait(again) = TWO.second(pending, at(30, 6, 7), later) else {
            panic!("a file still written waits");
        };
        assert_eq!(again.due, later + Duration::from_secs(2));
        assert_eq!(TWO.second(again, at(30, 6, 7), again.due), Step::Read);
    }

    #[test]
    fn a_replacement_with_the_same_size_and_time_is_a_change() {
        let now = Instant::now();
        assert!(matches!(
            TWO.first(at(10, 1, 8), at(10, 1, 7), false, now),
            Step::Wait(_)
        ));
    }

    #[test]
    fn a_zero_settle_reads_at_once() {
        let zero = Settle {
            settle: Duration::ZERO,
        };
        assert_eq!(
            zero.first(at(20, 5, 7), at(10, 1, 7), false, Instant::now()),
            Step::Read
        );
    }

    #[test]
    fn age_is_measured_from_the_modification_time() {
        let stamp = at(10, 100, 7).expect("stamp");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(101);
        assert!(!stamp.older_than(Duration::from_secs(2), now));
        assert_eq!(
            stamp.until_settled(Duration::from_secs(2), now),
            Duration::from_secs(1)
        );
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(103);
        assert!(stamp.older_than(Duration::from_secs(2), now));
        assert_eq!(
            stamp.until_settled(Duration::from_secs(2), now),
            Duration::ZERO
        );
        // A modification time in the future is not old.
        let past = SystemTime::UNIX_EPOCH + Duration::from_secs(50);
        assert!(!stamp.older_than(Duration::from_secs(2), past));
    }
}
