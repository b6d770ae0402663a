//! The wait before trying again after a failure: doubling from a first wait
//! up to a cap, each wait drawn between half and all of that ("equal
//! jitter"), so that gateways that lost a remote together do not come back
//! together. 1C's reads and live lookups use it, and so do the sync
//! workers (`[sync.<system>] retry_first`, `retry_max`).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// Doubling waits from `first` up to `max`, with equal jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    first: Duration,
    max: Duration,
}

impl Backoff {
    /// Waits of `first`, twice that, four times... never more than `max`
    /// (a `max` under `first` caps the first wait too).
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { first, max }
    }

    /// The wait before retry number `attempt` (from 1; 0 counts as 1):
    /// `first · 2^(attempt-1)` capped at `max`, drawn between half and all
    /// of it.
    pub fn delay(&self, attempt: u32) -> Duration {
        let full = self.full(attempt);
        // RandomState is seeded randomly per instance: enough randomness
        // for jitter, without a generator to carry around.
        let random = RandomState::new().build_hasher().finish();
        let fraction = 0.5 + (random % 1000) as f64 / 2000.0;
        full.mul_f64(fraction)
    }

    /// The wait before jitter.
    fn full(&self, attempt: u32) -> Duration {
        // 2^30 times any first wait of a millisecond or more is past any
        // sensible cap; the shift stays within u32.
        let doublings = attempt.saturating_sub(1).min(30);
        self.first.saturating_mul(1u32 << doublings).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_from_the_first_with_jitter_up_to_the_cap() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for (attempt, full) in [(0, 1), (1, 1), (2, 2), (3, 4), (7, 60), (40, 60)] {
            let w = backoff.delay(attempt);
            let full = Duration::from_secs(full);
            assert!(w >= full / 2 && w <= full, "retry {attempt}: {w:?}");
        }
        let short = Backoff::new(Duration::from_millis(10), Duration::from_millis(100));
        assert_eq!(short.full(1), Duration::from_millis(10));
        assert_eq!(short.full(4), Duration::from_millis(80));
        assert_eq!(short.full(5), Duration::from_millis(100));
        assert_eq!(short.full(u32::MAX), Duration::from_millis(100));
    }

    #[test]
    fn waits_are_jittered() {
        let backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        let waits: std::collections::HashSet<_> = (0..20).map(|_| backoff.delay(5)).collect();
        assert!(waits.len() > 1, "20 waits all equal: {waits:?}");
    }
}
