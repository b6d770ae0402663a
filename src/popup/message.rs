//! The pop-up message on the wire (see "Pop-up message" in
//! `docs/contract.md`): what the SOAP handler hands the hub ([`CallEvent`]),
//! how it is rendered as JSON, and the rendered result ([`Message`]).
//!
//! A message is rendered in two steps so that the hub's per-key lock covers
//! as little work as possible: `encode_body` renders everything but the
//! sequence number before the lock is taken, and `compose` puts
//! `{"type":"incoming_call","seq":N,` in front of it under the lock.
//!
//! [`rfc3339_seconds`] writes a time as the message does
//! (`2026-11-22T10:15:00Z`); it is public so that the call journal API can
//! write its times the same way instead of with a helper of its own.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::directory::Counterparty;

/// An incoming call as the SOAP handler hands it to the hub.
#[derive(Debug, Clone)]
pub struct CallEvent {
    /// When the PBX told us about the call.
    pub at: SystemTime,
    /// The caller in E.164 (`+79235292926`) for national numbers, or the
    /// extension as it came for short numbers.
    pub number: String,
    /// Exactly what the PBX sent.
    pub raw_number: String,
    /// The caller's card; `None` for an unknown caller.
    pub counterparty: Option<Arc<Counterparty>>,
}

/// One pop-up message, rendered once and shared by every screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub seq: u64,
    /// The whole message as JSON text: a WebSocket text frame as is, or an
    /// item of a long-poll answer's `messages` array.
    pub json: Arc<str>,
}

/// The message without `type` and `seq`, in contract order.
#[derive(Serialize)]
struct Body<'a> {
    at: String,
    number: &'a str,
    raw_number: &'a str,
    key: &'a str,
    counterparty: Option<Card<'a>>,
}

/// The card fields a screen shows (see "Pop-up message" in the contract).
#[derive(Serialize)]
struct Card<'a> {
    id: &'a str,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    inn: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kpp: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    category: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    manager_phone: Option<&'a str>,
    /// Always present (maybe empty), as in the counterparty JSON shape.
    phones: &'a [Box<str>],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    emails: &'a [Box<str>],
}

impl<'a> Card<'a> {
    fn of(c: &'a Counterparty) -> Self {
        Card {
            id: &c.id,
            name: &c.name,
            inn: c.inn.as_deref(),
            kpp: c.kpp.as_deref(),
            category: c.category,
            manager_phone: c.manager_phone.as_deref(),
            phones: &c.phones,
            emails: &c.emails,
        }
    }
}

/// Renders `{"at":…,"counterparty":…}` for [`compose`] to complete.
pub(super) fn encode_body(key: &str, event: &CallEvent) -> Result<String, serde_json::Error> {
    serde_json::to_string(&Body {
        at: rfc3339_seconds(event.at),
        number: &event.number,
        raw_number: &event.raw_number,
        key,
        counterparty: event.counterparty.as_deref().map(Card::of),
    })
}

const HEAD: &str = r#"{"type":"incoming_call","seq":"#;

/// `{"type":"incoming_call","seq":N,` + the body without its opening brace.
pub(super) fn compose(seq: u64, body: &str) -> Arc<str> {
    let rest = body.strip_prefix('{').unwrap_or(body);
    let mut json = String::with_capacity(HEAD.len() + 21 + rest.len());
    json.push_str(HEAD);
    // Writing to a String cannot fail.
    let _ = write!(json, "{seq},");
    json.push_str(rest);
    Arc::from(json)
}

/// `2026-11-22T10:15:00Z`: UTC, whole seconds.
///
/// humantime panics on times before 1970 and fails from year 10000 on; a
/// wrong clock must not take down a publish (or an answer), so the time is
/// clamped into what it can write.
pub fn rfc3339_seconds(at: SystemTime) -> String {
    const LAST: Duration = Duration::from_secs(253_402_300_799); // 9999-12-31T23:59:59Z
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let at = UNIX_EPOCH + since_epoch.min(LAST);
    let mut out = String::with_capacity(20);
    // Cannot fail for a time in range.
    let _ = write!(out, "{}", humantime::format_rfc3339_seconds(at));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_clock_is_clamped_not_a_panic() {
        assert_eq!(
            rfc3339_seconds(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00Z"
        );
        let far = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        assert_eq!(rfc3339_seconds(far), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn compose_puts_type_and_seq_first() {
        let body = r#"{"at":"2026-11-22T10:15:00Z","key":"k"}"#;
        assert_eq!(
            &*compose(42, body),
            r#"{"type":"incoming_call","seq":42,"at":"2026-11-22T10:15:00Z","key":"k"}"#
        );
    }
}
