//! Failed-auth throttling per client address: more than
//! `server.auth_failures_per_minute` failed credential checks from one
//! address within a minute block that address on every authenticated
//! endpoint for `server.auth_block` (429 with `Retry-After`).
//!
//! Only failures count: a client that authenticates is never slowed down,
//! and other addresses are never affected. The addresses of
//! `soap.allow_from` (the PBX's) are never throttled (the front does not
//! ask for them), so a PBX with a stale password after a rotation, or one
//! behind the same NAT as a guesser, keeps being answered. The state is
//! bounded: at most [`MAX_ADDRESSES`] addresses are remembered, the one
//! remembered first forgotten first, so a flood of source addresses cannot
//! grow memory.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// The most addresses remembered at once.
pub const MAX_ADDRESSES: usize = 100_000;

/// The window failures are counted in.
const WINDOW: Duration = Duration::from_secs(60);

/// What one address did lately.
struct Entry {
    /// When its current minute of counting began.
    window_start: Instant,
    failures: u32,
    /// Until when it is blocked, if it is.
    blocked_until: Option<Instant>,
}

#[derive(Default)]
struct State {
    entries: HashMap<IpAddr, Entry>,
    /// The remembered addresses, the one remembered first in front: an
    /// address enters once, when first remembered, and leaves only when
    /// forgotten, so this and `entries` always hold the same addresses.
    order: VecDeque<IpAddr>,
}

/// A failure that started a block: what the log line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewBlock {
    pub failures: u32,
    pub block: Duration,
}

/// The throttle, shared by every connection.
pub struct AuthThrottle {
    limit: u32,
    block: Duration,
    capacity: usize,
    state: Mutex<State>,
    /// When the last block ends, in milliseconds since `epoch` (0: no block
    /// is on): past it nobody is blocked, and a check takes no lock; at 0 it
    /// reads no clock either, which keeps the throttle off every
    /// authenticated request's path (SayName's included).
    blocks_end_ms: AtomicU64,
    epoch: Instant,
}

impl AuthThrottle {
    pub fn new(failures_per_minute: u32, block: Duration) -> AuthThrottle {
        AuthThrottle::with_capacity(failures_per_minute, block, MAX_ADDRESSES)
    }

    fn with_capacity(failures_per_minute: u32, block: Duration, capacity: usize) -> AuthThrottle {
        AuthThrottle {
            limit: failures_per_minute,
            block,
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
            blocks_end_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// How long `addr` stays blocked now, if it is: reads the clock only
    /// while some block may be on.
    pub fn blocked_now(&self, addr: IpAddr) -> Option<Duration> {
        if self.blocks_end_ms.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.blocked(addr, Instant::now())
    }

    /// How long `addr` stays blocked, if it is blocked at `now`.
    pub fn blocked(&self, addr: IpAddr, now: Instant) -> Option<Duration> {
        let end = self.blocks_end_ms.load(Ordering::Acquire);
        if self.millis(now) >= end {
            // Every block is over: later checks need no clock. A block
            // started meanwhile changed `end`, and then this does nothing.
            let _ =
                self.blocks_end_ms
                    .compare_exchange(end, 0, Ordering::AcqRel, Ordering::Relaxed);
            return None;
        }
        let mut state = self.state();
        let entry = state.entries.get_mut(&addr)?;
        let until = entry.blocked_until?;
        if until > now {
            return Some(until - now);
        }
        // The block is over: the address starts afresh.
        entry.blocked_until = None;
        entry.failures = 0;
        entry.window_start = now;
        None
    }

    /// Counts a failed credential check from `addr` at `now`; when it is
    /// the one over the limit, the block it starts.
    pub fn failed(&self, addr: IpAddr, now: Instant) -> Option<NewBlock> {
        let mut state = self.state();
        if !state.entries.contains_key(&addr) {
            while state.entries.len() >= self.capacity {
                let Some(oldest) = state.order.pop_front() else {
                    break;
                };
                state.entries.remove(&oldest);
            }
            state.order.push_back(addr);
        }
        let entry = state.entries.entry(addr).or_insert(Entry {
            window_start: now,
            failures: 0,
            blocked_until: None,
        });
        if entry.blocked_until.is_some_and(|until| until > now) {
            return None;
        }
        if entry.blocked_until.take().is_some() || now >= entry.window_start + WINDOW {
            entry.window_start = now;
            entry.failures = 0;
        }
        entry.failures = entry.failures.saturating_add(1);
        if entry.failures <= self.limit {
            return None;
        }
        let until = now + self.block;
        entry.blocked_until = Some(until);
        let failures = entry.failures;
        drop(state);
        self.blocks_end_ms
            .fetch_max(self.millis(until).max(1), Ordering::AcqRel);
        Some(NewBlock {
            failures,
            block: self.block,
        })
    }

    /// Addresses remembered now.
    #[cfg(test)]
    fn remembered(&self) -> usize {
        let state = self.state();
        debug_assert_eq!(state.entries.len(), state.order.len());
        state.entries.len()
    }

    fn millis(&self, t: Instant) -> u64 {
        u64::try_from(t.saturating_duration_since(self.epoch).as_millis()).unwrap_or(u64::MAX)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    const FIVE_MIN: Duration = Duration::from_secs(300);

    #[test]
    fn the_failure_over_the_limit_blocks_that_address_only() {
        let t = AuthThrottle::new(20, FIVE_MIN);
        let now = Instant::now();
        let guesser = ip("192.0.2.1");
        for _ in 0..20 {
            assert_eq!(t.failed(guesser, now), None);
            assert_eq!(t.blocked(guesser, now), None);
        }
        assert_eq!(
            t.failed(guesser, now),
            Some(NewBlock {
                failures: 21,
                block: FIVE_MIN
            })
        );
        assert_eq!(t.blocked(guesser, now), Some(FIVE_MIN));
        // Logged once per block: further failures start nothing new.
        assert_eq!(t.failed(guesser, now), None);
        assert_eq!(t.blocked(ip("192.0.2.2"), now), None);
        let later = now + Duration::from_secs(60);
        assert_eq!(
            t.blocked(guesser, later),
            Some(FIVE_MIN - Duration::from_secs(60))
        );
    }

    #[test]
    fn a_block_ends_and_the_address_starts_afresh() {
        let t = AuthThrottle::new(2, FIVE_MIN);
        let now = Instant::now();
        let a = ip("2001:db8::1");
        for _ in 0..3 {
            t.failed(a, now);
        }
        assert!(t.blocked(a, now).is_some());
        let after = now + FIVE_MIN;
        assert_eq!(t.blocked(a, after), None);
        // Two more failures are within the limit again.
        assert_eq!(t.failed(a, after), None);
        assert_eq!(t.failed(a, after), None);
        assert!(t.failed(a, after).is_some());
    }

    #[test]
    fn failures_spread_over_more_than_a_minute_do_not_add_up() {
        let t = AuthThrottle::new(3, FIVE_MIN);
        let mut now = Instant::now();
        let a = ip("192.0.2.9");
        for _ in 0..10 {
            assert_eq!(t.failed(a, now), None);
            now += Duration::from_secs(25);
        }
    }

    #[test]
    fn the_addresses_remembered_are_bounded_oldest_forgotten_first() {
        let t = AuthThrottle::with_capacity(1, FIVE_MIN, 3);
        let now = Instant::now();
        let first = ip("192.0.2.1");
        t.failed(first, now);
        t.failed(first, now);
        assert!(t.blocked(first, now).is_some());
        for i in 2..=4 {
            t.failed(ip(&format!("192.0.2.{i}")), now);
            assert!(t.remembered() <= 3);
        }
        assert_eq!(t.remembered(), 3);
        // The first one was forgotten to make room.
        assert_eq!(t.blocked(first, now), None);
    }
}
