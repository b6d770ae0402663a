//! The long-poll transport: `GET /operator/events?token=T&after=N[&wait=S]`,
//! for 1C clients without a WebSocket client.
//!
//! The answer is `{"messages":[…],"next_after":N}`: as soon as at least one
//! message with `seq > after` exists, or after `wait` seconds with
//! `"messages":[]`. The items are the hub's [`Message::json`] as they are,
//! byte for byte the WebSocket frames' payloads. The screen sends `next_after` as its
//! next `after`.

use std::fmt::Write as _;
use std::time::Duration;

use super::{Hub, HubError, Message};

/// `wait` when the request gives none (the contract's 25 s).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(25);

/// The wait a request gets: `wait=S` seconds or [`DEFAULT_WAIT`], at most `max`.
pub fn wait_for(requested_secs: Option<u64>, max: Duration) -> Duration {
    requested_secs
        .map_or(DEFAULT_WAIT, Duration::from_secs)
        .min(max)
}

/// A long-poll answer: its JSON body, and the seqs of the messages in it
/// (delivered to the screen: the journal counts them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Polled {
    pub body: String,
    pub seqs: Vec<u64>,
}

/// Waits for `key`'s messages after `after` (up to `wait`) and returns the
/// answer.
///
/// Without `after`, only messages published from now on are waited for.
/// `next_after` is the last returned seq; with nothing returned it is
/// `min(after, last seq)`, the last seq read *before* waiting: an `after`
/// from before a restart (greater than any seq this run has given) is
/// brought back to where the key stands, and a message published while the
/// answer is being written is never skipped.
pub async fn poll(
    hub: &Hub,
    key: &str,
    after: Option<u64>,
    wait: Duration,
) -> Result<Polled, HubError> {
    let last_seq = hub.last_seq(key).ok_or(HubError::UnknownKey)?;
    let after = after.unwrap_or(last_seq);
    let messages = hub.wait_after(key, after, wait).await?;
    let next_after = messages.last().map_or(after.min(last_seq), |m| m.seq);
    Ok(Polled {
        body: render(&messages, next_after),
        seqs: messages.iter().map(|m| m.seq).collect(),
    })
}

fn render(messages: &[Message], next_after: u64) -> String {
    let size: usize = messages.iter().map(|m| m.json.len() + 1).sum();
    let mut body = String::with_capacity(size + 48);
    body.push_str(r#"{"messages":["#);
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&m.json);
    }
    // Writing to a String cannot fail.
    let _ = write!(body, r#"],"next_after":{next_after}}}"#);
    body
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::SystemTime;

    use prometheus::Registry;
    use serde_json::{json, Value};

    use super::*;
    use crate::config::PopupConfig;
    use crate::popup::{CallEvent, HubConfig};

    const KEY: &str = "key-1";

    fn hub() -> Hub {
        let config = HubConfig::from(&PopupConfig::default());
        Hub::new([KEY], config, &Registry::new()).expect("hub")
    }

    fn publish(hub: &Hub) -> u64 {
        let event = CallEvent {
            at: SystemTime::UNIX_EPOCH,
            number: "244".into(),
            raw_number: "244".into(),
            counterparty: None,
        };
        hub.publish(KEY, &event).expect("published").seq
    }

    fn parse(body: &str) -> Value {
        serde_json::from_str(body).expect("valid JSON")
    }

    #[test]
    fn wait_is_defaulted_and_clamped() {
        let max = Duration::from_secs(60);
        assert_eq!(wait_for(None, max), DEFAULT_WAIT);
        assert_eq!(wait_for(Some(0), max), Duration::ZERO);
        assert_eq!(wait_for(Some(7), max), Duration::from_secs(7));
        assert_eq!(wait_for(Some(u64::MAX), max), max);
        assert_eq!(
            wait_for(None, Duration::from_secs(10)),
            Duration::from_secs(10)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn returns_what_is_buffered_after_after_with_the_messages_as_they_are() {
        let hub = hub();
        for _ in 0..3 {
            publish(&hub);
        }
        let body = poll(&hub, KEY, Some(1), DEFAULT_WAIT)
            .await
            .expect("key")
            .body;
        let v = parse(&body);
        assert_eq!(v["next_after"], 3);
        assert_eq!(v["messages"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["messages"][0]["seq"], 2);
        let mut sub = hub.subscribe(KEY, Some(1)).expect("sub");
        let frame = sub.recv().await.expect("message");
        assert!(body.starts_with(&format!(r#"{{"messages":[{},"#, frame.json)));
    }

    #[tokio::test(start_paused = true)]
    async fn without_after_only_new_messages_and_an_empty_answer_keeps_its_place() {
        let hub = Arc::new(hub());
        publish(&hub);
        publish(&hub);
        let started = tokio::time::Instant::now();
        let body = poll(&hub, KEY, None, Duration::from_secs(5))
            .await
            .expect("key")
            .body;
        assert_eq!(parse(&body), json!({"messages": [], "next_after": 2}));
        assert_eq!(started.elapsed(), Duration::from_secs(5));

        let body = poll(&hub, KEY, Some(1), Duration::ZERO)
            .await
            .expect("key")
            .body;
        assert_eq!(parse(&body)["next_after"], 2);

        let waiter = {
            let hub = Arc::clone(&hub);
            tokio::spawn(async move { poll(&hub, KEY, None, DEFAULT_WAIT).await.map(|p| p.body) })
        };
        tokio::task::yield_now().await;
        publish(&hub);
        let v = parse(&waiter.await.expect("task").expect("key"));
        assert_eq!(v["next_after"], 3);
        assert_eq!(v["messages"][0]["seq"], 3);
    }

    #[tokio::test(start_paused = true)]
    async fn an_after_from_before_a_restart_is_a_reset() {
        let hub = hub();
        // Nothing published yet: next_after comes back to 0.
        let body = poll(&hub, KEY, Some(40), Duration::from_secs(1))
            .await
            .expect("key")
            .body;
        assert_eq!(parse(&body), json!({"messages": [], "next_after": 0}));
        publish(&hub);
        publish(&hub);
        let polled = poll(&hub, KEY, Some(40), DEFAULT_WAIT).await.expect("key");
        assert_eq!(polled.seqs, [1, 2]);
        let v = parse(&polled.body);
        assert_eq!(v["next_after"], 2);
        assert_eq!(v["messages"][0]["seq"], 1);
    }
}
