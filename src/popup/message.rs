//! The pop-up message on the wire (see "Pop-up message" in
//! `docs/contract.md`): what the SOAP handler hands the hub ([`CallEvent`]),
//! how it is rendered as JSON, and the rendered result ([`Message`]).
//!
//! A message is rendered in two steps so that the hub's per-key lock covers
//! as little work as possible: `encode_body` renders everything but the
//! sequence number before the lock is taken, and `compose` puts
//! `{"type":"incoming_call","seq":N,` in front of it under the lock.
//!
//! `compose` writes the JSON once, as the payload of a WebSocket text frame
//! (header included): a server's frames are not masked (RFC 6455 §5.1), so
//! the very same bytes go to every screen's socket, and the long-poll
//! transport reads the JSON out of the same buffer. Handing a message to a
//! screen copies no byte: it counts one more reference to that buffer.
//!
//! [`rfc3339_seconds`] writes a time as the message does
//! (`2026-11-22T10:15:00Z`); it is public so that the call journal API can
//! write its times the same way instead of with a helper of its own.

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::Serialize;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::directory::model::Link;
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

/// One pop-up message, rendered once and shared by every screen: cloning it
/// copies no byte of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub seq: u64,
    /// The whole message as JSON text: an item of a long-poll answer's
    /// `messages` array, and the payload of [`Message::frame`] (the same
    /// bytes, not a copy).
    pub json: Utf8Bytes,
    /// The WebSocket text frame that carries `json`, header included, as it
    /// goes on every screen's socket.
    frame: Bytes,
}

impl Message {
    /// The encoded WebSocket frame (unmasked, final, text).
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }
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
    #[serde(skip_serializing_if = "Option::is_none")]
    manager_name: Option<&'a str>,
    /// Which system named the manager (`onec`, `bitrix24`...): with a CRM's
    /// overlay, the effective manager's (`[sync] manager_precedence`).
    #[serde(skip_serializing_if = "Option::is_none")]
    manager_source: Option<&'a str>,
    /// The record's pages in other systems, flat: its own, then a CRM's.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    links: &'a [Link],
    /// Always present (maybe empty), as in the counterparty JSON shape.
    phones: &'a [Box<str>],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    emails: &'a [Box<str>],
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<&'a str>,
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
            manager_name: c.manager_name.as_deref(),
            manager_source: c.manager_source.as_deref(),
            links: &c.links,
            phones: &c.phones,
            emails: &c.emails,
            address: c.address.as_deref(),
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

/// Why [`compose`] could not write a message. Cannot happen (a `Vec` takes
/// every write, and the pieces are UTF-8); an error rather than a panic on
/// the PBX's request path.
#[derive(Debug, thiserror::Error)]
pub(super) enum ComposeError {
    #[error("WebSocket frame header: {0}")]
    Header(#[from] tokio_tungstenite::tungstenite::Error),
    #[error("message is not UTF-8: {0}")]
    Utf8(#[from] std::str::Utf8Error),
    #[error("writing the message: {0}")]
    Write(#[from] std::io::Error),
}

/// The message numbered `seq`: `{"type":"incoming_call","seq":N,` + the body
/// without its opening brace, written once, behind its WebSocket frame header.
pub(super) fn compose(seq: u64, body: &str) -> Result<Message, ComposeError> {
    let rest = body.strip_prefix('{').unwrap_or(body);
    let json_len = HEAD.len() + decimal_len(seq) + 1 + rest.len();
    let header = FrameHeader {
        is_final: true,
        opcode: OpCode::Data(Data::Text),
        mask: None,
        ..FrameHeader::default()
    };
    let header_len = header.len(json_len as u64);
    let mut frame = Vec::with_capacity(header_len + json_len);
    header.format(json_len as u64, &mut frame)?;
    frame.extend_from_slice(HEAD.as_bytes());
    write!(frame, "{seq},")?;
    frame.extend_from_slice(rest.as_bytes());
    debug_assert_eq!(frame.len(), header_len + json_len);
    let frame = Bytes::from(frame);
    let json = Utf8Bytes::try_from(frame.slice(header_len..))?;
    Ok(Message { seq, json, frame })
}

/// How many digits `n` has in decimal.
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |l| l as usize + 1)
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
        let message = compose(42, body).expect("composed");
        assert_eq!(message.seq, 42);
        assert_eq!(
            message.json,
            r#"{"type":"incoming_call","seq":42,"at":"2026-11-22T10:15:00Z","key":"k"}"#
        );
    }

    /// What a client's WebSocket reader makes of `frame`: (final, opcode, payload).
    fn decode(frame: &[u8]) -> (bool, OpCode, Vec<u8>) {
        let mut cursor = std::io::Cursor::new(frame);
        let (header, len) = FrameHeader::parse(&mut cursor)
            .expect("a header")
            .expect("a whole header");
        let start = cursor.position() as usize;
        assert_eq!(header.mask, None, "a server's frames are not masked");
        assert_eq!(frame.len(), start + len as usize, "one frame, nothing more");
        (header.is_final, header.opcode, frame[start..].to_vec())
    }

    #[test]
    fn the_frame_is_one_final_text_frame_carrying_the_json_itself() {
        // Payload lengths on both sides of each length encoding (7 bits, 16, 64).
        for pad in [0, 60, 100, 65_600] {
            let body = format!(r#"{{"at":"{}"}}"#, "x".repeat(pad));
            for seq in [0, 9, 10, 99_999, u64::MAX] {
                let message = compose(seq, &body).expect("composed");
                let (is_final, opcode, payload) = decode(message.frame());
                assert!(is_final);
                assert_eq!(opcode, OpCode::Data(Data::Text));
                assert_eq!(payload, message.json.as_bytes());
                let v: serde_json::Value = serde_json::from_str(&message.json).expect("JSON");
                assert_eq!(v["seq"], seq);
                // The JSON is a view into the frame, not a copy.
                let frame = message.frame().as_ptr_range();
                assert!(frame.contains(&message.json.as_ptr()));
            }
        }
    }

    #[test]
    fn the_card_carries_the_manager_name_and_address_only_when_the_record_has_them() {
        let event = |c: Counterparty| CallEvent {
            at: UNIX_EPOCH,
            number: "+79235292926".into(),
            raw_number: "89235292926".into(),
            counterparty: Some(Arc::new(c)),
        };
        let full = Counterparty {
            id: "a1".into(),
            name: "Чиж".into(),
            manager_name: Some("Смирнова Ольга".into()),
            address: Some("г. Москва, ул. Тверская, д. 1".into()),
            ..Counterparty::default()
        };
        let body = encode_body("k", &event(full)).expect("encoded");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["counterparty"]["manager_name"], "Смирнова Ольга");
        assert_eq!(
            v["counterparty"]["address"],
            "г. Москва, ул. Тверская, д. 1"
        );

        let bare = Counterparty {
            id: "c3".into(),
            name: "ИП".into(),
            ..Counterparty::default()
        };
        let body = encode_body("k", &event(bare)).expect("encoded");
        assert!(
            !body.contains("manager_name") && !body.contains("address"),
            "{body}"
        );
    }

    #[test]
    fn the_card_carries_links_and_the_managers_source_when_set() {
        let card = Counterparty {
            id: "a1".into(),
            name: "Чиж".into(),
            manager_phone: Some("301".into()),
            manager_name: Some("Смирнова Ольга".into()),
            manager_source: Some("bitrix24".into()),
            links: vec![Link {
                system: "bitrix24".into(),
                kind: "company".into(),
                url: "https://portal.example/crm/company/details/2919/".into(),
            }]
            .into(),
            ..Counterparty::default()
        };
        let body = encode_body(
            "k",
            &CallEvent {
                at: UNIX_EPOCH,
                number: "+79235292926".into(),
                raw_number: "89235292926".into(),
                counterparty: Some(Arc::new(card)),
            },
        )
        .expect("encoded");
        let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(v["counterparty"]["manager_source"], "bitrix24");
        assert_eq!(
            v["counterparty"]["links"],
            serde_json::json!([{"system": "bitrix24", "kind": "company", "url": "https://portal.example/crm/company/details/2919/"}])
        );
    }

    #[test]
    fn decimal_len_counts_digits() {
        for n in [0u64, 1, 9, 10, 99, 100, 12_345, u64::MAX] {
            assert_eq!(decimal_len(n), n.to_string().len(), "{n}");
        }
    }
}
