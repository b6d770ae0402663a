//! The pop-up hub: per-key sequence numbers, replay buffers and subscribers.
//!
//! The set of keys is fixed when the hub is built (from the `[[operator]]`
//! entries), so the map of keys is immutable and read without a lock; each
//! key's state sits behind its own `std::sync::Mutex`, held for a few
//! microseconds and never across an `.await`. Publishes to different keys
//! never contend, and a key the PBX invents creates nothing.
//!
//! Delivery uses one bounded tokio mpsc queue per subscriber and `try_send`
//! only: when a subscriber's queue is full, the subscriber is cut off (its
//! [`Subscription::recv`] reports [`Closed::SlowConsumer`]) instead of the
//! publisher waiting for it.
//!
//! Ordering guarantee: the sequence number is assigned, the message stored in
//! the replay buffer and queued to every subscriber under the key's lock, and
//! a new subscription snapshots the buffer and registers under the same lock.
//! So a subscription with `after = N` sees every message with `seq > N` that
//! is still buffered or published later, exactly once and in order.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounter, IntGauge, Registry};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::directory::Counterparty;

/// Tuning of the hub. Every field has a default (see [`Default`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// Most messages kept per key for screens that reconnect or long-poll.
    pub replay_len: usize,
    /// Oldest message kept per key; older ones are not replayed.
    pub replay_age: Duration,
    /// Messages a subscriber may have waiting before it is cut off as slow.
    /// Zero is treated as one (a tokio mpsc queue needs room for one).
    pub queue_len: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            replay_len: 50,
            replay_age: Duration::from_secs(120),
            queue_len: 64,
        }
    }
}

/// One `[[operator]]` entry of the configuration: a screen login.
///
/// Several entries may share a key (one operator, several devices, one token
/// each); they then share the key's messages and sequence numbers.
#[derive(Clone, PartialEq, Eq)]
pub struct Operator {
    /// The abonent key the PBX sends in `IncomingCall`.
    pub key: String,
    /// What the screen presents when it connects. A secret.
    pub token: String,
    pub name: String,
}

impl fmt::Debug for Operator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Operator")
            .field("key", &self.key)
            .field("token", &"<redacted>")
            .field("name", &self.name)
            .finish()
    }
}

/// Who a token belongs to: what a transport needs after authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorInfo {
    pub key: String,
    pub name: String,
}

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

/// What [`Hub::publish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The sequence number the message got (per key, from 1).
    pub seq: u64,
    /// Live subscriptions the message was queued to. Long-poll screens read
    /// the replay buffer and are not counted here.
    pub delivered: usize,
}

/// One pop-up message, rendered once and shared by every screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub seq: u64,
    /// The whole message as JSON text: a WebSocket text frame as is, or an
    /// item of a long-poll answer's `messages` array.
    pub json: Arc<str>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// No `[[operator]]` has this key. Nothing was stored or allocated.
    #[error("no operator has this abonent key")]
    UnknownKey,
    /// The message could not be rendered as JSON. Cannot happen with the
    /// types involved (strings and integers); present so that the hub never
    /// panics on the PBX's request path.
    #[error("pop-up message could not be encoded: {0}")]
    Encode(String),
}

/// Why a [`Subscription`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Closed {
    /// The subscriber's queue was full when a message came: it was cut off
    /// so that it could not slow anyone else. It may resubscribe with `after`.
    #[error("subscriber too slow: its queue was full")]
    SlowConsumer,
    /// The hub shut down (or was dropped).
    #[error("pop-up hub shut down")]
    HubShutdown,
}

const OPEN: u8 = 0;
const SLOW: u8 = 1;
const SHUTDOWN: u8 = 2;

/// The hub. Build it once at start-up; share it behind an `Arc`.
pub struct Hub {
    keys: HashMap<Box<str>, Arc<KeyState>>,
    /// Every configured operator, in configuration order, for token checks.
    operators: Vec<(Box<[u8]>, OperatorInfo)>,
    config: HubConfig,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("keys", &self.keys.len())
            .field("operators", &self.operators.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

struct Metrics {
    published: IntCounter,
    delivered: IntCounter,
    unknown_key: IntCounter,
    replayed: IntCounter,
    slow_disconnects: IntCounter,
    subscribers: IntGauge,
}

impl Metrics {
    fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        fn counter(registry: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
            let c = IntCounter::new(name, help)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        }
        let subscribers = IntGauge::new(
            "cti_popup_subscribers",
            "Live pop-up subscriptions (WebSocket screens) now connected.",
        )?;
        registry.register(Box::new(subscribers.clone()))?;
        Ok(Self {
            published: counter(
                registry,
                "cti_popup_published_total",
                "Pop-up messages published to a configured operator key.",
            )?,
            delivered: counter(
                registry,
                "cti_popup_delivered_total",
                "Pop-up messages queued to live subscriptions.",
            )?,
            unknown_key: counter(
                registry,
                "cti_popup_unknown_key_total",
                "Incoming calls for an abonent key no operator has.",
            )?,
            replayed: counter(
                registry,
                "cti_popup_replayed_total",
                "Pop-up messages served from the replay buffer (reconnect catch-up and long-poll).",
            )?,
            slow_disconnects: counter(
                registry,
                "cti_popup_slow_disconnects_total",
                "Subscriptions cut off because their queue was full.",
            )?,
            subscribers,
        })
    }
}

struct KeyState {
    key: Box<str>,
    inner: Mutex<KeyInner>,
    /// The key's last seq, for long-poll waiters: they subscribe to it before
    /// reading the buffer, so a publish after their read always wakes them.
    last_seq_tx: watch::Sender<u64>,
    metrics: Arc<Metrics>,
}

struct KeyInner {
    last_seq: u64,
    buffer: VecDeque<Buffered>,
    subscribers: Vec<Subscriber>,
    next_subscriber_id: u64,
    closed: bool,
}

struct Buffered {
    stored: Instant,
    message: Message,
}

struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Message>,
    reason: Arc<AtomicU8>,
}

impl KeyState {
    fn lock(&self) -> MutexGuard<'_, KeyInner> {
        // Nothing under this lock panics; if something ever did, the state is
        // still consistent enough to go on (worst case a lost message).
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes the subscriber `id` if it is still registered.
    fn unregister(&self, id: u64) {
        let mut inner = self.lock();
        if let Some(i) = inner.subscribers.iter().position(|s| s.id == id) {
            inner.subscribers.swap_remove(i);
            self.metrics.subscribers.dec();
        }
    }
}

impl KeyInner {
    /// Drops what is too old or beyond the count from the replay buffer.
    fn evict(&mut self, config: &HubConfig, now: Instant) {
        while self.buffer.len() > config.replay_len {
            self.buffer.pop_front();
        }
        while self
            .buffer
            .front()
            .is_some_and(|b| now.saturating_duration_since(b.stored) > config.replay_age)
        {
            self.buffer.pop_front();
        }
    }

    /// The buffered messages with `seq > after`, in order.
    ///
    /// An `after` beyond the last seq the key has given cannot come from this
    /// run of the gateway: the screen saw numbers from before a restart
    /// (seq starts at 1 again). It is treated as a reset, as if `after` were
    /// 0, so the screen gets what is buffered from seq 1 instead of waiting
    /// for numbers it already has. The transport tells the screen where it
    /// now stands (long-poll's `next_after`).
    fn after(&self, after: u64) -> impl Iterator<Item = &Message> + '_ {
        let after = effective_after(after, self.last_seq);
        self.buffer
            .iter()
            .map(|b| &b.message)
            .filter(move |m| m.seq > after)
    }
}

fn effective_after(after: u64, last_seq: u64) -> u64 {
    if after > last_seq {
        0
    } else {
        after
    }
}

impl Hub {
    /// Builds the hub for the configured operators and registers its metrics.
    ///
    /// Fails only if `registry` already has metrics of these names (a second
    /// hub on the same registry): a start-up bug to report, not to panic on.
    pub fn new(
        operators: Vec<Operator>,
        config: HubConfig,
        registry: &Registry,
    ) -> Result<Hub, prometheus::Error> {
        let config = HubConfig {
            queue_len: config.queue_len.max(1),
            ..config
        };
        let metrics = Arc::new(Metrics::new(registry)?);
        let mut keys = HashMap::with_capacity(operators.len());
        let mut infos = Vec::with_capacity(operators.len());
        for op in operators {
            let key: Box<str> = op.key.as_str().into();
            keys.entry(key.clone()).or_insert_with(|| {
                Arc::new(KeyState {
                    key,
                    inner: Mutex::new(KeyInner {
                        last_seq: 0,
                        buffer: VecDeque::new(),
                        subscribers: Vec::new(),
                        next_subscriber_id: 0,
                        closed: false,
                    }),
                    last_seq_tx: watch::Sender::new(0),
                    metrics: Arc::clone(&metrics),
                })
            });
            infos.push((
                op.token.into_bytes().into_boxed_slice(),
                OperatorInfo {
                    key: op.key,
                    name: op.name,
                },
            ));
        }
        Ok(Hub {
            keys,
            operators: infos,
            config,
            metrics,
        })
    }

    fn state(&self, key: &str) -> Result<&Arc<KeyState>, HubError> {
        self.keys.get(key).ok_or(HubError::UnknownKey)
    }

    /// The operator whose token this is, if any.
    ///
    /// Every configured token is compared, each in time that does not depend
    /// on where the bytes differ, so the time taken does not tell which
    /// operator (if any) matched or how much of a guess was right. An empty
    /// token never matches. If two entries share a token, the first wins
    /// (configuration should refuse that).
    pub fn operator_for_token(&self, token: &str) -> Option<OperatorInfo> {
        let presented = token.as_bytes();
        let mut found: Option<&OperatorInfo> = None;
        for (configured, info) in &self.operators {
            let equal = constant_time_eq(presented, configured) & !configured.is_empty();
            if equal && found.is_none() {
                found = Some(info);
            }
        }
        found.cloned()
    }

    /// Publishes an incoming call to every screen of `key`.
    ///
    /// Never waits: subscribers whose queue is full are cut off. A key no
    /// operator has is refused (and counted), and nothing is stored for it.
    pub fn publish(&self, key: &str, event: &CallEvent) -> Result<Published, HubError> {
        let Some(state) = self.keys.get(key) else {
            self.metrics.unknown_key.inc();
            return Err(HubError::UnknownKey);
        };
        // Everything but the seq is rendered before taking the lock.
        let body = encode_body(&state.key, event).map_err(|e| {
            tracing::error!(error = %e, "pop-up message could not be encoded");
            HubError::Encode(e.to_string())
        })?;
        let now = Instant::now();
        let (seq, delivered, cut_off) = {
            let mut inner = state.lock();
            let seq = inner.last_seq + 1;
            inner.last_seq = seq;
            let message = Message {
                seq,
                json: compose(seq, &body),
            };
            let mut delivered = 0usize;
            let mut cut_off = 0usize;
            let before = inner.subscribers.len();
            inner
                .subscribers
                .retain(|s| match s.tx.try_send(message.clone()) {
                    Ok(()) => {
                        delivered += 1;
                        true
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        // Set the reason before the sender is dropped, so the
                        // receiver sees it once its channel reports closed.
                        s.reason.store(SLOW, Ordering::Release);
                        cut_off += 1;
                        false
                    }
                    // The receiver is gone without unregistering: prune.
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                });
            let removed = before - inner.subscribers.len();
            if removed > 0 {
                self.metrics.subscribers.sub(removed as i64);
            }
            inner.buffer.push_back(Buffered {
                stored: now,
                message,
            });
            inner.evict(&self.config, now);
            (seq, delivered, cut_off)
        };
        state.last_seq_tx.send_replace(seq);
        self.metrics.published.inc();
        self.metrics.delivered.inc_by(delivered as u64);
        if cut_off > 0 {
            self.metrics.slow_disconnects.inc_by(cut_off as u64);
            tracing::info!(key, seq, cut_off, "pop-up subscribers cut off: queue full");
        }
        Ok(Published { seq, delivered })
    }

    /// Subscribes to `key`'s messages.
    ///
    /// Without `after`: only messages published from now on. With
    /// `after = Some(n)`: first the buffered messages with `seq > n`, in
    /// order, then new ones, with no gap and no duplicate. An `n` beyond the
    /// key's last seq is treated as a reset (from seq 1), see [`Hub::wait_after`].
    /// After [`Hub::shutdown`] the subscription is already closed.
    pub fn subscribe(&self, key: &str, after: Option<u64>) -> Result<Subscription, HubError> {
        let state = self.state(key)?;
        let (tx, rx) = mpsc::channel(self.config.queue_len);
        let reason = Arc::new(AtomicU8::new(OPEN));
        let (pending, id) = {
            let mut inner = state.lock();
            if inner.closed {
                reason.store(SHUTDOWN, Ordering::Release);
                (VecDeque::new(), None)
            } else {
                inner.evict(&self.config, Instant::now());
                let pending: VecDeque<Message> = match after {
                    Some(n) => inner.after(n).cloned().collect(),
                    None => VecDeque::new(),
                };
                let id = inner.next_subscriber_id;
                inner.next_subscriber_id += 1;
                inner.subscribers.push(Subscriber {
                    id,
                    tx,
                    reason: Arc::clone(&reason),
                });
                self.metrics.subscribers.inc();
                (pending, Some(id))
            }
        };
        self.metrics.replayed.inc_by(pending.len() as u64);
        Ok(Subscription {
            state: Arc::clone(state),
            id,
            pending,
            rx,
            reason,
        })
    }

    /// For long-poll: the buffered messages of `key` with `seq > after`, at
    /// once if there are any; otherwise waits up to `wait` for the next
    /// message(s) and returns them, or an empty `Vec` when the time is up (or
    /// the hub shuts down).
    ///
    /// An `after` greater than the key's last seq is treated as a reset: the
    /// gateway restarted and its numbering began again at 1, so the screen
    /// gets what is buffered from seq 1 rather than nothing until the count
    /// catches up. For `next_after`, the transport can use the last returned
    /// seq, or, with nothing returned, `min(after, last_seq(key))`: seqs only
    /// grow, so that never skips a message.
    pub async fn wait_after(
        &self,
        key: &str,
        after: u64,
        wait: Duration,
    ) -> Result<Vec<Message>, HubError> {
        let state = self.state(key)?;
        // A `wait` too long to add is as good as forever.
        let deadline = Instant::now().checked_add(wait);
        // Subscribed before the first read: a publish after that read changes
        // the value, so `changed()` cannot miss it.
        let mut seq_rx = state.last_seq_tx.subscribe();
        let mut effective: Option<u64> = None;
        loop {
            let (found, closed) = {
                let mut inner = state.lock();
                inner.evict(&self.config, Instant::now());
                // The reset decision is taken once, on the first read.
                let after = *effective.get_or_insert(effective_after(after, inner.last_seq));
                let found: Vec<Message> = inner.after(after).cloned().collect();
                (found, inner.closed)
            };
            if !found.is_empty() {
                self.metrics.replayed.inc_by(found.len() as u64);
                return Ok(found);
            }
            if closed {
                return Ok(Vec::new());
            }
            let changed = match deadline {
                Some(deadline) => tokio::time::timeout_at(deadline, seq_rx.changed()).await,
                None => Ok(seq_rx.changed().await),
            };
            match changed {
                Ok(Ok(())) => continue,
                // Timed out, or the sender is gone (cannot happen while the
                // state lives).
                Ok(Err(_)) | Err(_) => return Ok(Vec::new()),
            }
        }
    }

    /// The last seq given for `key` (0 before the first message), or `None`
    /// for a key no operator has.
    pub fn last_seq(&self, key: &str) -> Option<u64> {
        self.keys.get(key).map(|s| s.lock().last_seq)
    }

    /// Live subscriptions of `key` now, or `None` for an unknown key.
    pub fn subscriber_count(&self, key: &str) -> Option<usize> {
        self.keys.get(key).map(|s| s.lock().subscribers.len())
    }

    /// Closes every subscription with [`Closed::HubShutdown`] and wakes the
    /// long-poll waiters (they return empty). Later subscriptions are closed
    /// at once; publishing still numbers and buffers messages. Idempotent.
    pub fn shutdown(&self) {
        for state in self.keys.values() {
            let removed = {
                let mut inner = state.lock();
                inner.closed = true;
                let removed = inner.subscribers.len();
                for s in inner.subscribers.drain(..) {
                    s.reason.store(SHUTDOWN, Ordering::Release);
                }
                removed
            };
            self.metrics.subscribers.sub(removed as i64);
            state.last_seq_tx.send_modify(|_| {});
        }
    }
}

impl Drop for Hub {
    /// Subscriptions keep their key's state alive; without this they would
    /// wait forever on a hub that is gone.
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A screen's stream of messages for one key. Dropping it unregisters it.
pub struct Subscription {
    state: Arc<KeyState>,
    /// `None` when it was closed from the start (subscribed after shutdown).
    id: Option<u64>,
    /// Replayed messages, handed out before the queue.
    pending: VecDeque<Message>,
    rx: mpsc::Receiver<Message>,
    reason: Arc<AtomicU8>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("key", &self.state.key)
            .field("id", &self.id)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The next message, or why there will be no more.
    ///
    /// Replayed messages come first, then live ones. Once the subscription
    /// is cut off (slow) or the hub shuts down, this reports it at once, even
    /// if messages were still queued: the screen resubscribes with `after`
    /// and gets them from the replay buffer. Cancel-safe (fit for `select!`).
    pub async fn recv(&mut self) -> Result<Message, Closed> {
        if let Some(closed) = self.closed() {
            return Err(closed);
        }
        if let Some(m) = self.pending.pop_front() {
            return Ok(m);
        }
        match self.rx.recv().await {
            Some(m) => Ok(m),
            None => Err(self.closed().unwrap_or(Closed::HubShutdown)),
        }
    }

    /// The operator key this subscription is for.
    pub fn key(&self) -> &str {
        &self.state.key
    }

    fn closed(&self) -> Option<Closed> {
        match self.reason.load(Ordering::Acquire) {
            OPEN => None,
            SLOW => Some(Closed::SlowConsumer),
            _ => Some(Closed::HubShutdown),
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.state.unregister(id);
        }
    }
}

/// Compares two byte strings in time that depends only on their lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..len {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= std::hint::black_box(x ^ y);
    }
    diff == 0
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

/// Renders `{"at":…,"counterparty":…}` for `compose` to complete.
fn encode_body(key: &str, event: &CallEvent) -> Result<String, serde_json::Error> {
    serde_json::to_string(&Body {
        at: rfc3339_seconds(event.at),
        number: &event.number,
        raw_number: &event.raw_number,
        key,
        counterparty: event.counterparty.as_deref().map(Card::of),
    })
}

/// `2026-11-22T10:15:00Z`. humantime panics on times before 1970 and fails
/// from year 10000 on; a wrong clock must not take down a publish, so the
/// time is clamped into what it can write.
fn rfc3339_seconds(at: SystemTime) -> String {
    const LAST: Duration = Duration::from_secs(253_402_300_799); // 9999-12-31T23:59:59Z
    let since_epoch = at.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let at = UNIX_EPOCH + since_epoch.min(LAST);
    let mut out = String::with_capacity(20);
    // Cannot fail for a time in range.
    let _ = write!(out, "{}", humantime::format_rfc3339_seconds(at));
    out
}

const HEAD: &str = r#"{"type":"incoming_call","seq":"#;

/// `{"type":"incoming_call","seq":N,` + the body without its opening brace.
fn compose(seq: u64, body: &str) -> Arc<str> {
    let rest = body.strip_prefix('{').unwrap_or(body);
    let mut json = String::with_capacity(HEAD.len() + 21 + rest.len());
    json.push_str(HEAD);
    // Writing to a String cannot fail.
    let _ = write!(json, "{seq},");
    json.push_str(rest);
    Arc::from(json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use tokio::time::timeout;

    const K1: &str = "gW3cyUJAtl50PhF";
    const K2: &str = "second-key";
    const WAIT: Duration = Duration::from_secs(25);

    fn operators() -> Vec<Operator> {
        let op = |key: &str, token: &str, name: &str| Operator {
            key: key.into(),
            token: token.into(),
            name: name.into(),
        };
        vec![
            op(K1, "tok-ivanova-desk", "Ivanova"),
            op(K2, "tok-petrov", "Petrov"),
            // Ivanova's second screen: another token, the same key.
            op(K1, "tok-ivanova-phone", "Ivanova (phone)"),
        ]
    }

    fn hub_with(config: HubConfig) -> (Hub, Registry) {
        let registry = Registry::new();
        let hub = Hub::new(operators(), config, &registry).expect("fresh registry");
        (hub, registry)
    }

    fn hub() -> (Hub, Registry) {
        hub_with(HubConfig::default())
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
        // Rendered once, shared by every screen.
        assert!(Arc::ptr_eq(&ma.json, &mb.json));
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
        assert_eq!(
            hub.subscribe("random-key", None).map(|_| ()),
            Err(HubError::UnknownKey)
        );
        assert_eq!(
            hub.wait_after("random-key", 0, WAIT).await,
            Err(HubError::UnknownKey)
        );
        assert_eq!(metric(&registry, "cti_popup_unknown_key_total"), 3.0);
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
            ..HubConfig::default()
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
            ..HubConfig::default()
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
            ..HubConfig::default()
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
            let (tx, rx) = mpsc::channel(1);
            drop(rx);
            let state = &hub.keys[K1];
            state.lock().subscribers.push(Subscriber {
                id: 999,
                tx,
                reason: Arc::new(AtomicU8::new(OPEN)),
            });
            hub.metrics.subscribers.inc();
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
        publish(&hub, K1);
        let got = waiter.await.expect("task").expect("key");
        assert_eq!(seqs(&got), vec![2]);
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
    fn operator_for_token_finds_the_right_operator_and_refuses_others() {
        let (hub, _r) = hub();
        let info = |key: &str, name: &str| {
            Some(OperatorInfo {
                key: key.into(),
                name: name.into(),
            })
        };
        assert_eq!(
            hub.operator_for_token("tok-ivanova-desk"),
            info(K1, "Ivanova")
        );
        assert_eq!(hub.operator_for_token("tok-petrov"), info(K2, "Petrov"));
        assert_eq!(
            hub.operator_for_token("tok-ivanova-phone"),
            info(K1, "Ivanova (phone)")
        );
        for wrong in [
            "",
            "tok-petro",
            "tok-petrov ",
            "TOK-PETROV",
            "tok-petrow",
            K1,
        ] {
            assert_eq!(hub.operator_for_token(wrong), None, "{wrong:?}");
        }
        // The token never shows in logs.
        assert!(!format!("{:?}", operators()).contains("tok-"));
    }

    #[test]
    fn an_empty_configured_token_matches_nothing() {
        let registry = Registry::new();
        let ops = vec![Operator {
            key: K1.into(),
            token: String::new(),
            name: "nobody".into(),
        }];
        let hub = Hub::new(ops, HubConfig::default(), &registry).expect("hub");
        assert_eq!(hub.operator_for_token(""), None);
    }

    #[test]
    fn a_wrong_clock_is_clamped_not_a_panic() {
        assert_eq!(
            rfc3339_seconds(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00Z"
        );
        let far = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        assert_eq!(rfc3339_seconds(far), "9999-12-31T23:59:59Z");
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

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"ab\0", b"ab"));
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
            "cti_popup_unknown_key_total",
            "cti_popup_replayed_total",
            "cti_popup_slow_disconnects_total",
            "cti_popup_subscribers",
        ] {
            assert_eq!(metric(&registry, name), 0.0, "{name}");
        }
        assert!(Hub::new(operators(), HubConfig::default(), &registry).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_queue_len_is_treated_as_one() {
        let (hub, _r) = hub_with(HubConfig {
            queue_len: 0,
            ..HubConfig::default()
        });
        let mut sub = hub.subscribe(K1, None).expect("sub");
        publish(&hub, K1);
        assert_eq!(ready(&mut sub).await, vec![1]);
    }
}
