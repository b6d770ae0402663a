//! The hub's unit tests: numbering, replay, delivery, slow subscribers,
//! long-poll waits, shutdown, metrics, and the message as rendered.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use prometheus::Registry;
use serde_json::{json, Value};
use tokio::time::timeout;

use super::*;
use crate::config::PopupConfig;
use crate::directory::Counterparty;

const K1: &str = "gW3cyUJAtl50PhF";
const K2: &str = "second-key";
const WAIT: Duration = Duration::from_secs(25);

/// The configured keys, one per `[[operator]]` entry: Ivanova's second
/// screen is another entry with the same key.
const KEYS: [&str; 3] = [K1, K2, K1];

/// The hub's settings when `[popup]` sets nothing.
fn defaults() -> HubConfig {
    HubConfig::from(&PopupConfig::default())
}

fn hub_with(config: HubConfig) -> (Hub, Registry) {
    let registry = Registry::new();
    let hub = Hub::new(KEYS, config, &registry).expect("fresh registry");
    (hub, registry)
}

fn hub() -> (Hub, Registry) {
    hub_with(defaults())
}

fn call(number: &str) -> CallEvent {
    CallEvent {
        at: UNIX_EPOCH + Duration::from_millis(1_795_342_500_123),
        number: number.into(),
        raw_number: number.into(),
        counterparty: None,
    }
}

fn publish(hub: &Hub, key: &str) -> Published {
    hub.publish(key, &call("+79235292926"))
        .expect("configured key")
}

/// A metric's value from the text exposition (whatever the encoder's model).
fn metric(registry: &Registry, name: &str) -> f64 {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encodes");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{name} not in:\n{text}"))
        .parse()
        .expect("number")
}

/// What the subscription has ready now, without waiting (time is paused).
async fn ready(sub: &mut Subscription) -> Vec<u64> {
    let mut seqs = Vec::new();
    while let Ok(Ok(m)) = timeout(Duration::ZERO, sub.recv()).await {
        seqs.push(m.seq);
    }
    seqs
}

fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

#[tokio::test(start_paused = true)]
async fn both_subscribers_of_a_key_get_the_message_and_another_key_gets_nothing() {
    let (hub, registry) = hub();
    let mut a = hub.subscribe(K1, None).expect("sub");
    let mut b = hub.subscribe(K1, None).expect("sub");
    let mut other = hub.subscribe(K2, None).expect("sub");
    assert_eq!(a.key(), K1);

    let p = publish(&hub, K1);
    assert_eq!(
        p,
        Published {
            seq: 1,
            delivered: 2
        }
    );

    let ma = a.recv().await.expect("a gets it");
    let mb = b.recv().await.expect("b gets it");
    assert_eq!(ma.seq, 1);
    // Rendered once, shared by every screen: the same bytes, not copies.
    assert_eq!(ma.frame().as_ptr(), mb.frame().as_ptr());
    assert_eq!(ma.json.as_ptr(), mb.json.as_ptr());
    assert!(ready(&mut other).await.is_empty());
    assert_eq!(metric(&registry, "cti_popup_published_total"), 1.0);
    assert_eq!(metric(&registry, "cti_popup_delivered_total"), 2.0);
    assert_eq!(metric(&registry, "cti_popup_subscribers"), 3.0);
}

#[test]
fn seq_grows_per_key_independently() {
    let (hub, _r) = hub();
    assert_eq!(hub.last_seq(K1), Some(0));
    assert_eq!(publish(&hub, K1).seq, 1);
    assert_eq!(publish(&hub, K1).seq, 2);
    assert_eq!(publish(&hub, K2).seq, 1);
    assert_eq!(publish(&hub, K1).seq, 3);
    assert_eq!(publish(&hub, K2).seq, 2);
    assert_eq!((hub.last_seq(K1), hub.last_seq(K2)), (Some(3), Some(2)));
}

#[tokio::test]
async fn unknown_key_is_refused_and_allocates_no_state() {
    let (hub, registry) = hub();
    assert_eq!(hub.keys.len(), 2, "keys shared by two operators count once");
    for _ in 0..3 {
        assert_eq!(
            hub.publish("random-key", &call("1")),
            Err(HubError::UnknownKey)
        );
    }
    assert_eq!(hub.keys.len(), 2);
    assert_eq!(hub.last_seq("random-key"), None);
    assert_eq!(hub.subscriber_count("random-key"), None);
    assert_eq!(hub.long_poll_waiters("random-key"), None);
    assert_eq!(
        hub.subscribe("random-key", None).map(|_| ()),
        Err(HubError::UnknownKey)
    );
    assert_eq!(
        hub.wait_after("random-key", 0, WAIT).await,
        Err(HubError::UnknownKey)
    );
    // Counted once, by the SOAP side (cti_incoming_calls_unknown_key_total).
    assert!(!prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .expect("encodes")
        .contains("unknown_key"));
    assert_eq!(metric(&registry, "cti_popup_published_total"), 0.0);
}

#[tokio::test(start_paused = true)]
async fn without_after_only_new_messages_come() {
    let (hub, _r) = hub();
    publish(&hub, K1);
    let mut sub = hub.subscribe(K1, None).expect("sub");
    assert!(ready(&mut sub).await.is_empty());
    publish(&hub, K1);
    assert_eq!(ready(&mut sub).await, vec![2]);
}

#[tokio::test(start_paused = true)]
async fn replay_after_n_yields_exactly_later_seqs_in_order_then_live() {
    let (hub, registry) = hub();
    for _ in 0..5 {
        publish(&hub, K1);
    }
    let mut sub = hub.subscribe(K1, Some(2)).expect("sub");
    assert_eq!(ready(&mut sub).await, vec![3, 4, 5]);
    publish(&hub, K1);
    publish(&hub, K1);
    assert_eq!(ready(&mut sub).await, vec![6, 7]);
    assert_eq!(metric(&registry, "cti_popup_replayed_total"), 3.0);

    // Caught up: nothing replayed.
    let mut current = hub.subscribe(K1, Some(7)).expect("sub");
    assert!(ready(&mut current).await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn after_beyond_last_seq_is_a_reset_to_seq_one() {
    // The gateway restarted: the screen saw seq 40, this run is at 2.
    let (hub, _r) = hub();
    publish(&hub, K1);
    publish(&hub, K1);
    let mut sub = hub.subscribe(K1, Some(40)).expect("sub");
    assert_eq!(ready(&mut sub).await, vec![1, 2]);
    publish(&hub, K1);
    assert_eq!(ready(&mut sub).await, vec![3]);
    let got = hub.wait_after(K1, 40, WAIT).await.expect("known key");
    assert_eq!(seqs(&got), vec![1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn replay_buffer_is_bounded_by_count() {
    let (hub, _r) = hub_with(HubConfig {
        replay_len: 3,
        ..defaults()
    });
    for _ in 0..5 {
        publish(&hub, K1);
    }
    let mut sub = hub.subscribe(K1, Some(0)).expect("sub");
    assert_eq!(ready(&mut sub).await, vec![3, 4, 5]);
    let got = hub.wait_after(K1, 0, WAIT).await.expect("known key");
    assert_eq!(seqs(&got), vec![3, 4, 5]);
}

#[tokio::test(start_paused = true)]
async fn replay_buffer_is_bounded_by_age() {
    let (hub, _r) = hub_with(HubConfig {
        replay_age: Duration::from_secs(120),
        ..defaults()
    });
    publish(&hub, K1);
    tokio::time::advance(Duration::from_secs(60)).await;
    publish(&hub, K1);
    tokio::time::advance(Duration::from_secs(60)).await;
    // Exactly 120 s old: still kept.
    let got = hub.wait_after(K1, 0, Duration::ZERO).await.expect("key");
    assert_eq!(seqs(&got), vec![1, 2]);

    tokio::time::advance(Duration::from_secs(1)).await;
    let mut sub = hub.subscribe(K1, Some(0)).expect("sub");
    assert_eq!(ready(&mut sub).await, vec![2]);

    tokio::time::advance(Duration::from_secs(60)).await;
    let got = hub.wait_after(K1, 0, Duration::ZERO).await.expect("key");
    assert!(got.is_empty(), "both are older than replay_age");
    // The numbering goes on regardless.
    assert_eq!(hub.last_seq(K1), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn publish_racing_subscribe_never_loses_or_duplicates() {
    const TOTAL: u64 = 20_000;
    let config = HubConfig {
        replay_len: TOTAL as usize,
        replay_age: Duration::from_secs(3600),
        queue_len: TOTAL as usize,
    };
    let (hub, _r) = hub_with(config);
    let hub = Arc::new(hub);
    let publisher = {
        let hub = Arc::clone(&hub);
        std::thread::spawn(move || {
            for _ in 0..TOTAL {
                publish(&hub, K1);
            }
        })
    };
    const SUBSCRIBERS: u64 = 40;
    let mut readers = Vec::new();
    for i in 0..SUBSCRIBERS {
        // Spread the subscriptions over the stream.
        let target = i * TOTAL / SUBSCRIBERS;
        while hub.last_seq(K1).expect("key") < target {
            tokio::task::yield_now().await;
        }
        // Sometimes exactly where the publisher seems to be (a publish
        // may land between this read and the subscribe), sometimes a
        // little behind (so part comes from the buffer, part live).
        let last = hub.last_seq(K1).expect("key");
        let after = last.saturating_sub(i % 5);
        let mut sub = hub.subscribe(K1, Some(after)).expect("sub");
        readers.push(tokio::spawn(async move {
            let mut expect = after + 1;
            while expect <= TOTAL {
                let m = sub.recv().await.expect("not cut off");
                assert_eq!(m.seq, expect, "subscribed after {after}");
                expect += 1;
            }
            after
        }));
    }
    publisher.join().expect("publisher");
    let mut afters = Vec::new();
    for r in readers {
        afters.push(r.await.expect("reader saw seq after+1..=TOTAL"));
    }
    assert!(
        afters.iter().filter(|&&a| a > 0 && a < TOTAL).count() > 5,
        "subscribed mid-stream: {afters:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_subscriber_that_never_reads_is_cut_off_after_queue_len_plus_one() {
    let (hub, registry) = hub_with(HubConfig {
        queue_len: 4,
        ..defaults()
    });
    let mut sleeper = hub.subscribe(K1, None).expect("sub");
    let mut reader = hub.subscribe(K1, None).expect("sub");
    for seq in 1..=4 {
        assert_eq!(publish(&hub, K1), Published { seq, delivered: 2 });
        assert_eq!(reader.recv().await.map(|m| m.seq), Ok(seq));
    }
    assert_eq!(
        hub.subscriber_count(K1),
        Some(2),
        "a full queue is not yet a cut-off"
    );

    assert_eq!(
        publish(&hub, K1),
        Published {
            seq: 5,
            delivered: 1
        }
    );
    assert_eq!(hub.subscriber_count(K1), Some(1));
    assert_eq!(sleeper.recv().await, Err(Closed::SlowConsumer));
    assert_eq!(sleeper.recv().await, Err(Closed::SlowConsumer));
    assert_eq!(reader.recv().await.map(|m| m.seq), Ok(5));
    for seq in 6..=15 {
        assert_eq!(publish(&hub, K1), Published { seq, delivered: 1 });
        assert_eq!(ready(&mut reader).await, vec![seq]);
    }
    assert_eq!(metric(&registry, "cti_popup_slow_disconnects_total"), 1.0);
    assert_eq!(metric(&registry, "cti_popup_subscribers"), 1.0);

    // Cut off, it can come back and catch up from the buffer.
    let mut back = hub.subscribe(K1, Some(3)).expect("sub");
    assert_eq!(ready(&mut back).await, (4..=15).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn dropped_subscriptions_are_pruned() {
    let (hub, registry) = hub();
    let subs: Vec<_> = (0..3)
        .map(|_| hub.subscribe(K1, Some(0)).expect("sub"))
        .collect();
    assert_eq!(hub.subscriber_count(K1), Some(3));
    assert_eq!(metric(&registry, "cti_popup_subscribers"), 3.0);
    // Per key: every configured key is there, at 0 when it has no screen.
    let screens = |key: &str| metric(&registry, &format!("cti_popup_screens{{key=\"{key}\"}}"));
    assert_eq!(screens(K1), 3.0);
    assert_eq!(screens(K2), 0.0);
    drop(subs);
    assert_eq!(hub.subscriber_count(K1), Some(0));
    assert_eq!(metric(&registry, "cti_popup_subscribers"), 0.0);
    assert_eq!(publish(&hub, K1).delivered, 0);

    // Many short-lived screens leave nothing behind.
    for _ in 0..1000 {
        let _s = hub.subscribe(K1, None).expect("sub");
    }
    assert_eq!(hub.subscriber_count(K1), Some(0));
    assert!(hub.keys[K1].lock().subscribers.capacity() <= 4);
}

#[test]
fn publish_prunes_subscribers_whose_receiver_is_gone() {
    let (hub, registry) = hub();
    {
        // A subscriber whose subscription is gone (never unregistered): only
        // the hub holds its mailbox.
        let state = &hub.keys[K1];
        state.lock().subscribers.push(Subscriber {
            id: 999,
            mailbox: Arc::new(Mailbox::new()),
        });
        state.screens_came(1);
    }
    assert_eq!(hub.subscriber_count(K1), Some(1));
    assert_eq!(publish(&hub, K1).delivered, 0);
    assert_eq!(hub.subscriber_count(K1), Some(0));
    assert_eq!(metric(&registry, "cti_popup_subscribers"), 0.0);
    assert_eq!(metric(&registry, "cti_popup_slow_disconnects_total"), 0.0);
}

#[tokio::test(start_paused = true)]
async fn wait_after_returns_buffered_messages_at_once() {
    let (hub, registry) = hub();
    for _ in 0..3 {
        publish(&hub, K1);
    }
    let start = Instant::now();
    let got = hub.wait_after(K1, 1, WAIT).await.expect("key");
    assert_eq!(seqs(&got), vec![2, 3]);
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(metric(&registry, "cti_popup_replayed_total"), 2.0);
}

#[tokio::test(start_paused = true)]
async fn wait_after_waits_then_returns_the_new_message() {
    let (hub, _r) = hub();
    publish(&hub, K1);
    let hub = Arc::new(hub);
    let start = Instant::now();
    let waiter = {
        let hub = Arc::clone(&hub);
        tokio::spawn(async move { hub.wait_after(K1, 1, WAIT).await })
    };
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!(!waiter.is_finished());
    assert_eq!(hub.long_poll_waiters(K1), Some(1));
    assert_eq!(hub.long_poll_waiters(K2), Some(0));
    publish(&hub, K1);
    let got = waiter.await.expect("task").expect("key");
    assert_eq!(seqs(&got), vec![2]);
    assert_eq!(hub.long_poll_waiters(K1), Some(0));
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    // Another key's message does not wake a waiter.
    let waiter = {
        let hub = Arc::clone(&hub);
        tokio::spawn(async move { hub.wait_after(K1, 2, WAIT).await })
    };
    tokio::task::yield_now().await;
    publish(&hub, K2);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(!waiter.is_finished());
    publish(&hub, K1);
    assert_eq!(seqs(&waiter.await.expect("task").expect("key")), vec![3]);
}

#[tokio::test(start_paused = true)]
async fn wait_after_returns_empty_after_the_timeout() {
    let (hub, _r) = hub();
    publish(&hub, K1);
    let start = Instant::now();
    let got = hub.wait_after(K1, 1, WAIT).await.expect("key");
    assert!(got.is_empty());
    let waited = start.elapsed();
    assert!(
        waited >= WAIT && waited < WAIT + Duration::from_millis(10),
        "{waited:?}"
    );
}

#[tokio::test]
async fn message_json_matches_the_contract_for_a_known_caller() {
    let (hub, _r) = hub();
    let card: Counterparty = serde_json::from_value(json!({
        "id": "5f1c-1", "name": "ООО \"Ромашка\"", "full_name": "Общество \"Ромашка\"",
        "inn": "7701234567", "kpp": "770101001", "category": 1, "manager_phone": "244",
        "phones": ["+7 916 555-55-55", "84951234567"], "emails": ["a@b.ru"],
        "data_version": "AAAA"
    }))
    .expect("card");
    let event = CallEvent {
        at: UNIX_EPOCH + Duration::from_millis(1_795_342_500_987),
        number: "+79235292926".into(),
        raw_number: "89235292926".into(),
        counterparty: Some(Arc::new(card)),
    };
    let mut sub = hub.subscribe(K1, None).expect("sub");
    publish(&hub, K1);
    hub.publish(K1, &event).expect("published");
    let m = sub.recv().await.expect("first");
    let m = if m.seq == 1 {
        sub.recv().await.expect("second")
    } else {
        m
    };
    assert_eq!(m.seq, 2);
    assert!(
        m.json
            .starts_with(r#"{"type":"incoming_call","seq":2,"at":"2026-11-22T10:15:00Z","#),
        "{}",
        m.json
    );
    let v: Value = serde_json::from_str(&m.json).expect("valid JSON");
    assert_eq!(
        v,
        json!({
            "type": "incoming_call", "seq": 2, "at": "2026-11-22T10:15:00Z",
            "number": "+79235292926", "raw_number": "89235292926", "key": K1,
            "counterparty": {
                "id": "5f1c-1", "name": "ООО \"Ромашка\"", "inn": "7701234567",
                "kpp": "770101001", "category": 1, "manager_phone": "244",
                "phones": ["+7 916 555-55-55", "84951234567"], "emails": ["a@b.ru"]
            }
        })
    );

    // Only id and name known: the optional fields are left out, phones stay.
    let minimal: Counterparty =
        serde_json::from_value(json!({"id": "2", "name": "ИП Петров"})).expect("card");
    let event = CallEvent {
        counterparty: Some(Arc::new(minimal)),
        ..event
    };
    hub.publish(K1, &event).expect("published");
    let v: Value = serde_json::from_str(&sub.recv().await.expect("third").json).expect("json");
    assert_eq!(
        v["counterparty"],
        json!({"id": "2", "name": "ИП Петров", "phones": []})
    );
}

#[tokio::test]
async fn message_json_has_null_counterparty_for_an_unknown_caller() {
    let (hub, _r) = hub();
    let mut sub = hub.subscribe(K2, None).expect("sub");
    let event = CallEvent {
        at: UNIX_EPOCH + Duration::from_secs(1_795_342_500),
        number: "244".into(),
        raw_number: "244".into(),
        counterparty: None,
    };
    hub.publish(K2, &event).expect("published");
    let m = sub.recv().await.expect("message");
    let v: Value = serde_json::from_str(&m.json).expect("valid JSON");
    assert_eq!(
        v,
        json!({
            "type": "incoming_call", "seq": 1, "at": "2026-11-22T10:15:00Z",
            "number": "244", "raw_number": "244", "key": K2, "counterparty": null
        })
    );
    assert!(v.as_object().expect("object").contains_key("counterparty"));
}

#[test]
fn a_wrong_clock_does_not_stop_a_publish() {
    // The clamping itself is tested beside `rfc3339_seconds` (message.rs).
    let far = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
    let (hub, _r) = hub();
    let event = CallEvent {
        at: far,
        ..call("1")
    };
    assert_eq!(hub.publish(K1, &event).map(|p| p.seq), Ok(1));
}

#[tokio::test(start_paused = true)]
async fn an_endless_wait_is_not_an_overflow() {
    let (hub, _r) = hub();
    let hub = Arc::new(hub);
    let waiter = {
        let hub = Arc::clone(&hub);
        tokio::spawn(async move { hub.wait_after(K1, 0, Duration::MAX).await })
    };
    tokio::task::yield_now().await;
    publish(&hub, K1);
    assert_eq!(seqs(&waiter.await.expect("task").expect("key")), vec![1]);
}

#[tokio::test(start_paused = true)]
async fn shutdown_closes_subscriptions_and_wakes_long_polls() {
    let (hub, registry) = hub();
    publish(&hub, K1);
    let mut live = hub.subscribe(K1, None).expect("sub");
    let mut replaying = hub.subscribe(K1, Some(0)).expect("sub");
    let mut other = hub.subscribe(K2, None).expect("sub");
    let hub = Arc::new(hub);
    let waiter = {
        let hub = Arc::clone(&hub);
        tokio::spawn(async move { hub.wait_after(K2, 0, WAIT).await })
    };
    tokio::task::yield_now().await;
    let start = Instant::now();

    hub.shutdown();
    assert_eq!(live.recv().await, Err(Closed::HubShutdown));
    assert_eq!(replaying.recv().await, Err(Closed::HubShutdown));
    assert_eq!(other.recv().await, Err(Closed::HubShutdown));
    assert_eq!(waiter.await.expect("task"), Ok(Vec::new()));
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(hub.subscriber_count(K1), Some(0));
    assert_eq!(metric(&registry, "cti_popup_subscribers"), 0.0);

    // Later subscriptions are closed from the start; publishing still works.
    let mut late = hub.subscribe(K1, Some(0)).expect("sub");
    assert_eq!(late.recv().await, Err(Closed::HubShutdown));
    assert_eq!(
        publish(&hub, K1),
        Published {
            seq: 2,
            delivered: 0
        }
    );
    hub.shutdown();
    drop(live);
    assert_eq!(metric(&registry, "cti_popup_subscribers"), 0.0);
}

#[tokio::test]
async fn dropping_the_hub_closes_subscriptions() {
    let (hub, _r) = hub();
    let mut sub = hub.subscribe(K1, None).expect("sub");
    drop(hub);
    assert_eq!(sub.recv().await, Err(Closed::HubShutdown));
}

#[test]
fn metrics_are_registered_and_a_second_hub_on_one_registry_is_refused() {
    let (_hub, registry) = hub();
    for name in [
        "cti_popup_published_total",
        "cti_popup_delivered_total",
        "cti_popup_replayed_total",
        "cti_popup_slow_disconnects_total",
        "cti_popup_subscribers",
    ] {
        assert_eq!(metric(&registry, name), 0.0, "{name}");
    }
    assert!(Hub::new(KEYS, defaults(), &registry).is_err());
}

#[tokio::test(start_paused = true)]
async fn a_zero_queue_len_is_treated_as_one() {
    let (hub, _r) = hub_with(HubConfig {
        queue_len: 0,
        ..defaults()
    });
    let mut sub = hub.subscribe(K1, None).expect("sub");
    publish(&hub, K1);
    assert_eq!(ready(&mut sub).await, vec![1]);
}

#[tokio::test(start_paused = true)]
async fn queue_fills_the_mailboxes_and_wakes_nobody_until_told() {
    let (hub, registry) = hub();
    let mut sub = hub.subscribe(K1, None).expect("sub");
    let waiter = tokio::spawn(async move {
        let got = sub.recv().await.map(|m| m.seq);
        (got, sub)
    });
    tokio::task::yield_now().await;
    let mut late = hub.subscribe(K1, None).expect("sub");

    let queued = hub.queue(K1, &call("+79235292926"), None).expect("queued");
    assert_eq!(
        queued.published(),
        Published {
            seq: 1,
            delivered: 2
        }
    );
    assert_eq!(metric(&registry, "cti_popup_delivered_total"), 2.0);
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(!waiter.is_finished(), "queued, not woken");
    // Queued all the same: a screen that looks finds it.
    assert_eq!(ready(&mut late).await, vec![1]);

    queued.wake_here();
    let (got, mut sub) = waiter.await.expect("woken");
    assert_eq!(got, Ok(1));
    assert!(ready(&mut sub).await.is_empty(), "exactly once");

    // Dropped without a word, it wakes them too.
    let waiter = tokio::spawn(async move { sub.recv().await.map(|m| m.seq) });
    tokio::task::yield_now().await;
    drop(hub.queue(K1, &call("+79235292926"), None).expect("queued"));
    assert_eq!(waiter.await.expect("woken"), Ok(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_wakes_its_screens_from_the_screens_runtime() {
    let (hub, _r) = hub();
    let hub = Arc::new(hub);
    let mut subs: Vec<_> = (0..3)
        .map(|_| hub.subscribe(K1, None).expect("sub"))
        .collect();
    let waiters: Vec<_> = subs
        .drain(..)
        .map(|mut sub| tokio::spawn(async move { sub.recv().await.map(|m| m.seq) }))
        .collect();
    tokio::time::sleep(Duration::from_millis(20)).await;
    hub.queue(K1, &call("+79235292926"), None)
        .expect("queued")
        .wake();
    for waiter in waiters {
        let got = timeout(Duration::from_secs(5), waiter).await;
        assert_eq!(got.expect("woken within 5 s").expect("task"), Ok(1));
    }
}
