//! A remote's request limit, modelled exactly: what a CRM answers "limit
//! exceeded" to. The limiter's tests and `bench/sync_limiter.rs` (which
//! includes this file by `#[path]`, so it uses std alone) drive the limiter
//! against it: never over, and most of what it allows used.
//!
//! Times are offsets from the model's start, so that paused tokio time and
//! the wall clock both fit. A refused request is not counted against the
//! limit (Bitrix24's bucket takes nothing from a 503).

use std::collections::VecDeque;
use std::time::Duration;

pub enum RemoteLimit {
    /// A leaky bucket: each request adds 1, `per_second` drains, more than
    /// `capacity` overflows.
    Bucket {
        capacity: f64,
        per_second: f64,
        level: f64,
        at: Duration,
    },
    /// Requests closer than `gap` overflow.
    Interval {
        gap: Duration,
        last: Option<Duration>,
    },
    /// More than `per_window` requests in any `window` overflow.
    Window {
        per_window: usize,
        window: Duration,
        seen: VecDeque<Duration>,
    },
}

impl RemoteLimit {
    pub fn bucket(capacity: u32, per_second: f64) -> RemoteLimit {
        RemoteLimit::Bucket {
            capacity: f64::from(capacity),
            per_second,
            level: 0.0,
            at: Duration::ZERO,
        }
    }

    pub fn interval(gap: Duration) -> RemoteLimit {
        RemoteLimit::Interval { gap, last: None }
    }

    pub fn window(per_window: u32, window: Duration) -> RemoteLimit {
        RemoteLimit::Window {
            per_window: per_window as usize,
            window,
            seen: VecDeque::new(),
        }
    }

    /// A request arrives `now` after the start: false when it is over the
    /// limit.
    pub fn arrive(&mut self, now: Duration) -> bool {
        match self {
            RemoteLimit::Bucket {
                capacity,
                per_second,
                level,
                at,
            } => {
                let drained = now.saturating_sub(*at).as_secs_f64() * *per_second;
                *level = (*level - drained).max(0.0);
                *at = now;
                // A hair of tolerance for float rounding, none for real.
                if *level + 1.0 > *capacity + 1e-9 {
                    return false;
                }
                *level += 1.0;
                true
            }
            RemoteLimit::Interval { gap, last } => {
                if last.is_some_and(|l| now.saturating_sub(l) < *gap) {
                    return false;
                }
                *last = Some(now);
                true
            }
            RemoteLimit::Window {
                per_window,
                window,
                seen,
            } => {
                while seen
                    .front()
                    .is_some_and(|&t| now.saturating_sub(t) >= *window)
                {
                    seen.pop_front();
                }
                if seen.len() >= *per_window {
                    return false;
                }
                seen.push_back(now);
                true
            }
        }
    }

    /// The most requests it takes over `span` from its start.
    pub fn allowance(&self, span: Duration) -> f64 {
        let s = span.as_secs_f64();
        match self {
            RemoteLimit::Bucket {
                capacity,
                per_second,
                ..
            } => capacity + s * per_second,
            RemoteLimit::Interval { gap, .. } => (s / gap.as_secs_f64()).floor() + 1.0,
            RemoteLimit::Window {
                per_window, window, ..
            } => *per_window as f64 * (s / window.as_secs_f64()).ceil(),
        }
    }
}
