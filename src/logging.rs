//! What the gateway's own log lines need beyond `tracing`: text from
//! outside escaped, and warnings an outsider can cause rate-limited.
//!
//! `tracing-subscriber`'s text format writes a field's `Display` as it is:
//! a newline in a pushed id, a path or a key starts a line of the caller's
//! choosing (a fake `WARN` of an admin login), and an ESC byte reaches the
//! terminal of whoever tails the log. A field that can carry what a client
//! sent is either a plain `&str` field (written with `Debug`: quoted and
//! escaped) or, written with `%`, wrapped in [`Escaped`]. The JSON format
//! escapes on its own.
//!
//! Every line written while serving a request names it: `request_id`, a
//! [`RequestId`] passed down as a plain value (no span: entering one per
//! request would cost the PBX's SayName, which logs nothing).
//!
//! A refusal or an unknown key repeats as fast as a client sends: each
//! (reason, address) or key is warned of at most once a minute by a
//! [`WarnLimiter`], which counts what it kept quiet meanwhile.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

/// Text from outside, written with control characters (newlines, ESC, and
/// the Unicode line and paragraph separators) and backslashes escaped the
/// way Rust writes them (`\n`, `\u{1b}`, `\\`): one field stays on one line
/// and says what was sent.
#[derive(Clone, Copy)]
pub struct Escaped<'a>(pub &'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The common case (plain text) is written in one piece.
        let plain = |c: char| !(c.is_control() || c == '\\' || c == '\u{2028}' || c == '\u{2029}');
        if self.0.chars().all(plain) {
            return f.write_str(self.0);
        }
        for c in self.0.chars() {
            if plain(c) {
                f.write_char(c)?;
            } else {
                for e in c.escape_default() {
                    f.write_char(e)?;
                }
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// A request's id on its log lines (`request_id`) and in its
/// `X-Request-Id` answer header, so an admin can find the lines of an
/// answer a client shows them: `<connection>.<request>`, the connection's
/// number since start-up and the request's on that connection. A line of
/// work done for several requests at once (a group commit of pushes) names
/// each, comma-separated ([`RequestIds`]).
///
/// Both counters belong to one task each (the accept loop, the connection):
/// a counter shared by every request would bounce its cache line between
/// the cores on every request (2.5% of SayName's requests/s, measured).
/// Two `u64`s, `Copy`: passing it down costs a register or two, nothing on
/// the way of a request that logs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestId {
    pub connection: u64,
    pub number: u64,
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.connection, self.number)
    }
}

/// The ids of the requests one line speaks for, comma-separated
/// (`3.1,4.1`): what a group commit of pushes logs as its `request_id`.
pub struct RequestIds<'a>(pub &'a [RequestId]);

impl fmt::Display for RequestIds<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, id) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_char(',')?;
            }
            write!(f, "{id}")?;
        }
        Ok(())
    }
}

/// How many distinct keys a [`WarnLimiter`] remembers: a flood from many
/// addresses or of many keys must not grow it without bound. Past this,
/// entries older than the interval are forgotten; if all are recent, a new
/// key is not warned of (it is still logged at debug level by the caller).
const MAX_KEYS: usize = 1024;

/// Seconds between two warnings of one key.
pub const WARN_EVERY_S: u64 = 60;

/// Warnings at most once a minute per key (a reason and an address, an
/// operator key), with the count of the repeats it kept quiet.
pub struct WarnLimiter {
    /// Key → (unix second of its last warning, repeats since).
    last: Mutex<HashMap<String, (u64, u64)>>,
}

impl WarnLimiter {
    pub fn new() -> WarnLimiter {
        WarnLimiter {
            last: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(repeats kept quiet since the last warning)` when `key` may be
    /// warned of now, `None` when it was warned of within the minute.
    pub fn due(&self, key: &str) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.due_at(key, now)
    }

    fn due_at(&self, key: &str, now: u64) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, quiet)) = last.get_mut(key) {
            if now < *at + WARN_EVERY_S {
                *quiet += 1;
                return None;
            }
            let repeats = *quiet;
            *at = now;
            *quiet = 0;
            return Some(repeats);
        }
        if last.len() >= MAX_KEYS {
            last.retain(|_, (at, _)| now < *at + WARN_EVERY_S);
            if last.len() >= MAX_KEYS {
                return None;
            }
        }
        last.insert(key.to_owned(), (now, 0));
        Some(0)
    }
}

impl Default for WarnLimiter {
    fn default() -> Self {
        WarnLimiter::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_plain_text_is_not() {
        let forged = "nope\n2026-01-01T00:00:00Z  WARN cti_gateway: FAKE admin logged in";
        let shown = Escaped(forged).to_string();
        assert!(!shown.contains('\n'), "{shown}");
        assert!(shown.starts_with("nope\\n2026"), "{shown}");
        assert_eq!(Escaped("\u{1b}[31mred").to_string(), "\\u{1b}[31mred");
        assert_eq!(Escaped("a\\b\r\u{2028}").to_string(), "a\\\\b\\r\\u{2028}");
        assert_eq!(Escaped("Иванова 42").to_string(), "Иванова 42");
    }

    #[test]
    fn request_ids_are_written_connection_dot_request_and_a_group_comma_separated() {
        let a = RequestId {
            connection: 3,
            number: 1,
        };
        let b = RequestId {
            connection: 14,
            number: 2,
        };
        assert_eq!(a.to_string(), "3.1");
        assert_eq!(RequestIds(&[a]).to_string(), "3.1");
        assert_eq!(RequestIds(&[a, b]).to_string(), "3.1,14.2");
        assert_eq!(RequestIds(&[]).to_string(), "");
    }

    #[test]
    fn a_key_is_warned_of_once_a_minute_with_the_repeats_counted() {
        let limiter = WarnLimiter::new();
        assert_eq!(limiter.due_at("401 10.0.0.1", 1000), Some(0));
        assert_eq!(limiter.due_at("401 10.0.0.1", 1001), None);
        assert_eq!(limiter.due_at("401 10.0.0.1", 1059), None);
        // Another reason or address is its own key.
        assert_eq!(limiter.due_at("403 10.0.0.1", 1001), Some(0));
        assert_eq!(limiter.due_at("401 10.0.0.2", 1001), Some(0));
        assert_eq!(limiter.due_at("401 10.0.0.1", 1060), Some(2));
        assert_eq!(limiter.due_at("401 10.0.0.1", 1061), None);
    }

    #[test]
    fn a_flood_of_keys_is_bounded() {
        let limiter = WarnLimiter::new();
        for i in 0..MAX_KEYS {
            assert_eq!(limiter.due_at(&format!("k{i}"), 1000), Some(0));
        }
        assert_eq!(limiter.due_at("one more", 1000), None);
        // Once the old ones are over a minute old, they make room.
        assert_eq!(limiter.due_at("one more", 1000 + WARN_EVERY_S), Some(0));
        assert!(limiter.last.lock().expect("lock").len() <= MAX_KEYS);
    }
}
