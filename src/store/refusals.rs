//! What the store's callers log when it refuses their writes: one line when
//! a kind of work starts being refused, a reminder with a count at most once
//! a minute while it goes on, and one line with the total once it is saved
//! again. A full disk under a steady call rate is then a handful of lines,
//! not one ERROR per call (the writer logs its own side the same way).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often a refusal that goes on is logged again, with the count since.
pub const REFUSAL_REMINDER: Duration = Duration::from_secs(60);

/// How long writes of one kind must go unrefused before a success counts as
/// the end of the failure: a small write that fits between refused large ones
/// (a disk that is almost full) does not end it, so it does not start a new
/// one (and a new ERROR) with the next refusal either.
pub const RECOVERY_QUIET: Duration = Duration::from_secs(10);

/// One kind of refused work (journal appends, pushes...), shared by its
/// callers.
#[derive(Debug, Default)]
pub struct RefusalLog {
    state: Mutex<Option<Refusing>>,
}

#[derive(Debug)]
struct Refusing {
    /// Refused since the failure began.
    total: u64,
    /// Refused since the last line.
    since_line: u64,
    last_line: Instant,
    last_refusal: Instant,
}

/// What the caller of [`RefusalLog::refused`] should log.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The first refusal after a time without: log it (ERROR).
    Began,
    /// Refusals go on: log a reminder with how many were refused since the
    /// last line, this one included.
    Continues { since_last_line: u64 },
    /// Counted; log nothing.
    Counted,
}

impl RefusalLog {
    pub fn new() -> RefusalLog {
        RefusalLog::default()
    }

    /// A write of this kind was refused.
    pub fn refused(&self) -> Refusal {
        self.refused_at(Instant::now())
    }

    /// A write of this kind was saved: `Some(total refused)` once when this
    /// ends a failure (log it), else `None`.
    pub fn saved(&self) -> Option<u64> {
        self.saved_at(Instant::now())
    }

    fn refused_at(&self, now: Instant) -> Refusal {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.as_mut() {
            None => {
                *state = Some(Refusing {
                    total: 1,
                    since_line: 0,
                    last_line: now,
                    last_refusal: now,
                });
                Refusal::Began
            }
            Some(r) => {
                r.total += 1;
                r.since_line += 1;
                r.last_refusal = now;
                if now.duration_since(r.last_line) >= REFUSAL_REMINDER {
                    let since_last_line = std::mem::take(&mut r.since_line);
                    r.last_line = now;
                    Refusal::Continues { since_last_line }
                } else {
                    Refusal::Counted
                }
            }
        }
    }

    fn saved_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.as_ref() {
            Some(r) if now.duration_since(r.last_refusal) >= RECOVERY_QUIET => {
                state.take().map(|r| r.total)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_storm_is_one_line_then_a_reminder_a_minute_and_the_total_once_saved() {
        let log = RefusalLog::new();
        let t0 = Instant::now();
        assert_eq!(log.refused_at(t0), Refusal::Began);
        for i in 1..900 {
            assert_eq!(
                log.refused_at(t0 + Duration::from_millis(i * 30)),
                Refusal::Counted
            );
        }
        assert_eq!(
            log.refused_at(t0 + REFUSAL_REMINDER),
            Refusal::Continues {
                since_last_line: 900
            }
        );
        let later = t0 + REFUSAL_REMINDER + RECOVERY_QUIET;
        assert_eq!(log.saved_at(later), Some(901));
        assert_eq!(log.saved_at(later), None, "said once");
        assert_eq!(log.refused_at(later), Refusal::Began, "a new failure");
    }

    #[test]
    fn a_small_write_saved_between_refusals_does_not_end_the_failure() {
        let log = RefusalLog::new();
        let t0 = Instant::now();
        assert_eq!(log.refused_at(t0), Refusal::Began);
        for i in 1..100 {
            let at = t0 + Duration::from_millis(i * 100);
            assert_eq!(log.saved_at(at), None);
            assert_eq!(log.refused_at(at), Refusal::Counted, "refusal {i}");
        }
        let quiet = t0 + Duration::from_secs(10) + RECOVERY_QUIET;
        assert_eq!(log.saved_at(quiet), Some(100));
    }
}
