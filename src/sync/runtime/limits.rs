//! TEMPORARY adapter, to delete when branch `limits` merges: the API of its
//! `sync::limiter::Limiter`, `sync::health::SyncHealth` and
//! `sources::backoff::Backoff`, reduced to what the worker calls, so that
//! the worker compiles and is tested before that branch lands. At the merge
//! the worker imports those instead and the gateway hands it the limiter
//! and health of `sync::parts::SyncRuntimeParts`.
//!
//! Kept deliberately simple: the limiter keeps the published limit as a
//! minimum gap between requests (no burst) and honours pauses; the health
//! only logs its changes.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::sync::system::PublishedLimit;

/// Doubling waits from `first` up to `max`, with equal jitter.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    first: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff { first, max }
    }

    /// The wait before retry number `attempt` (from 1).
    pub fn delay(&self, attempt: u32) -> Duration {
        use std::hash::{BuildHasher, Hasher};
        let doublings = attempt.saturating_sub(1).min(30);
        let full = self.first.saturating_mul(1u32 << doublings).min(self.max);
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        full.mul_f64(0.5 + (random % 1000) as f64 / 2000.0)
    }
}

/// Requests at least a gap apart, and none during a pause.
#[derive(Debug)]
pub struct Limiter {
    gap: Duration,
    state: Mutex<(tokio::time::Instant, Option<tokio::time::Instant>)>,
}

impl Limiter {
    pub fn new(published: PublishedLimit) -> Limiter {
        let gap = match published {
            PublishedLimit::Bucket { per_second, .. } if per_second > 0.0 => {
                Duration::from_secs_f64(1.0 / per_second)
            }
            PublishedLimit::Bucket { .. } => Duration::ZERO,
            PublishedLimit::Interval { interval } => interval,
            PublishedLimit::Window { requests, window } => window / requests.max(1),
        };
        Limiter {
            gap,
            state: Mutex::new((tokio::time::Instant::now(), None)),
        }
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, (tokio::time::Instant, Option<tokio::time::Instant>)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub async fn acquire(&self) {
        loop {
            let now = tokio::time::Instant::now();
            let at = {
                let mut state = self.lock();
                let ready = state.1.map_or(state.0, |pause| pause.max(state.0));
                if ready <= now {
                    state.0 = now + self.gap;
                    return;
                }
                ready
            };
            tokio::time::sleep_until(at).await;
        }
    }

    pub fn pause_until(&self, until: Instant) {
        let until = tokio::time::Instant::from_std(until);
        let mut state = self.lock();
        state.1 = Some(state.1.map_or(until, |p| p.max(until)));
    }
}

/// A sync system's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncState {
    Ok,
    Failing,
    Limited,
    Blocked,
}

/// One system's state, logged once on each change.
#[derive(Debug)]
pub struct SyncHealth {
    system: String,
    state: Mutex<SyncState>,
}

impl SyncHealth {
    pub fn new(system: &str) -> SyncHealth {
        SyncHealth {
            system: system.to_owned(),
            state: Mutex::new(SyncState::Ok),
        }
    }

    fn enter(&self, state: SyncState, reason: &str) {
        let mut current = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if *current != state {
            tracing::info!(system = %self.system, from = ?*current, to = ?state, reason, "sync: system state changed");
            *current = state;
        }
    }

    pub fn ok(&self) {
        self.enter(SyncState::Ok, "");
    }

    pub fn failing(&self, reason: &str) {
        self.enter(SyncState::Failing, reason);
    }

    pub fn limited(&self, _until: SystemTime) {
        self.enter(SyncState::Limited, "limit answered");
    }

    pub fn blocked(&self, reason: &str) {
        self.enter(SyncState::Blocked, reason);
    }

    pub fn state(&self) -> SyncState {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
