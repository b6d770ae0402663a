//! The pop-up hub: per-key sequence numbers, replay buffers and subscribers.
//!
//! The set of keys is fixed when the hub is built (from the `[[operator]]`
//! entries), so the map of keys is immutable and read without a lock; each
//! key's state sits behind its own `std::sync::Mutex`, held for a few
//! microseconds and never across an `.await`. Publishes to different keys
//! never contend, and a key the PBX invents creates nothing.
//!
//! Delivery puts the message into one bounded mailbox per subscriber and never
//! waits: when a subscriber's mailbox is full, the subscriber is cut off (its
//! [`Subscription::recv`] reports [`Closed::SlowConsumer`]) instead of the
//! publisher waiting for it. Queuing wakes nobody; one notification per key
//! then wakes every screen of the key ([`Hub::publish`] sends it at once,
//! [`Hub::queue`] leaves it to the caller: see [`Queued`]).
//!
//! Ordering guarantee: the sequence number is assigned, the message stored in
//! the replay buffer and queued to every subscriber under the key's lock, and
//! a new subscription snapshots the buffer and registers under the same lock.
//! So a subscription with `after = N` sees every message with `seq > N` that
//! is still buffered or published later, exactly once and in order.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use prometheus::Registry;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use self::metrics::Metrics;
use self::subscription::{Mailbox, SHUTDOWN};
use super::message::{compose, encode_body, CallEvent, Message};
use crate::config::PopupConfig;
use crate::logging::RequestId;

pub use self::subscription::Subscription;

mod metrics;
mod subscription;
#[cfg(test)]
mod tests;

/// Tuning of the hub, from `[popup]` (whose defaults are `PopupConfig`'s).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// Most messages kept per key for screens that reconnect or long-poll.
    pub replay_len: usize,
    /// Oldest message kept per key; older ones are not replayed.
    pub replay_age: Duration,
    /// Messages a subscriber may have waiting before it is cut off as slow.
    /// Zero is treated as one (a screen must be able to have one waiting).
    pub queue_len: usize,
}

impl From<&PopupConfig> for HubConfig {
    fn from(popup: &PopupConfig) -> Self {
        Self {
            replay_len: popup.replay_len,
            replay_age: popup.replay_age,
            queue_len: popup.queue_len,
        }
    }
}

/// What [`Hub::publish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// The sequence number the message got (per key, from 1).
    pub seq: u64,
    /// Live subscriptions the message was queued to. Long-poll screens read
    /// the replay buffer later and are not counted here (see
    /// [`Hub::wait_after`]).
    pub delivered: usize,
}

/// Why the hub refused a publish or a subscription.
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

/// The hub. Build it once at start-up; share it behind an `Arc`.
pub struct Hub {
    keys: HashMap<Box<str>, Arc<KeyState>>,
    config: HubConfig,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("keys", &self.keys.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

struct KeyState {
    key: Box<str>,
    inner: Mutex<KeyInner>,
    /// The key's last seq, for long-poll waiters: they subscribe to it before
    /// reading the buffer, so a publish after their read always wakes them.
    last_seq_tx: watch::Sender<u64>,
    /// Wakes the key's subscriptions waiting in [`Subscription::recv`],
    /// each subscription on the notification of its group (its id modulo
    /// [`WAKE_GROUPS`]): a large fan-out is woken a group at a time.
    arrived: [Notify; WAKE_GROUPS],
    metrics: Arc<Metrics>,
    /// This key's `cti_popup_screens{key}`, moved with `cti_popup_subscribers`.
    screens: prometheus::IntGauge,
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
    mailbox: Arc<Mailbox>,
}

/// How many groups a key's subscriptions are woken in. A thousand screens
/// woken at once are a thousand tasks queued on the worker that wakes them:
/// past tokio's local queue (256) they spill into the runtime's shared
/// queue, ahead of whatever is woken from another thread next, such as the
/// PBX's request when the journal commits. Sixty-odd at a time fit.
pub(super) const WAKE_GROUPS: usize = 16;

impl KeyState {
    /// Wakes every subscription waiting on the key now.
    fn wake_all(&self) {
        for group in &self.arrived {
            group.notify_waiters();
        }
    }

    /// Wakes the key's subscriptions a group at a time, letting the tasks
    /// woken (and anything else queued) run between groups.
    async fn wake_in_groups(&self) {
        for group in &self.arrived {
            group.notify_waiters();
            tokio::task::yield_now().await;
        }
    }

    fn new(key: Box<str>, metrics: Arc<Metrics>) -> Self {
        let screens = metrics.screens_of(&key);
        KeyState {
            screens,
            key,
            inner: Mutex::new(KeyInner {
                last_seq: 0,
                buffer: VecDeque::new(),
                subscribers: Vec::new(),
                next_subscriber_id: 0,
                closed: false,
            }),
            last_seq_tx: watch::Sender::new(0),
            arrived: std::array::from_fn(|_| Notify::new()),
            metrics,
        }
    }

    /// Counts `n` more screens of this key in the gauges.
    fn screens_came(&self, n: usize) {
        self.metrics.subscribers.add(n as i64);
        self.screens.add(n as i64);
    }

    /// Counts `n` screens of this key gone from the gauges.
    fn screens_gone(&self, n: usize) {
        self.metrics.subscribers.sub(n as i64);
        self.screens.sub(n as i64);
    }

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
            self.screens_gone(1);
        }
    }
}

impl KeyInner {
    /// Puts `message` into every subscriber's mailbox; drops the subscribers
    /// whose mailbox is full (closed as slow) and those whose subscription is
    /// gone without unregistering. Returns (delivered, cut off, gone).
    fn offer(&mut self, message: &Message, capacity: usize) -> (usize, usize, usize) {
        let (mut delivered, mut cut_off, mut gone) = (0, 0, 0);
        self.subscribers.retain(|s| {
            // Only the hub holds the mailbox: nobody will ever read it.
            if Arc::strong_count(&s.mailbox) == 1 {
                gone += 1;
                return false;
            }
            if s.mailbox.offer(message, capacity) {
                delivered += 1;
                true
            } else {
                cut_off += 1;
                false
            }
        });
        (delivered, cut_off, gone)
    }

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
    /// Builds the hub for the configured abonent keys (the `[[operator]]`
    /// entries' keys; a key listed twice, one operator's two screens, is one
    /// key) and registers its metrics.
    ///
    /// The hub is handed keys only: which screen may read which key is the
    /// HTTP front's business (it matches the screen's token).
    ///
    /// Fails only if `registry` already has metrics of these names (a second
    /// hub on the same registry): a start-up bug to report, not to panic on.
    pub fn new(
        keys: impl IntoIterator<Item = impl AsRef<str>>,
        config: HubConfig,
        registry: &Registry,
    ) -> Result<Hub, prometheus::Error> {
        let config = HubConfig {
            queue_len: config.queue_len.max(1),
            ..config
        };
        let metrics = Arc::new(Metrics::new(registry)?);
        let mut states = HashMap::new();
        for key in keys {
            let key: Box<str> = key.as_ref().into();
            states
                .entry(key.clone())
                .or_insert_with(|| Arc::new(KeyState::new(key, Arc::clone(&metrics))));
        }
        Ok(Hub {
            keys: states,
            config,
            metrics,
        })
    }

    /// Continues each listed key's sequence numbers from `last` (the
    /// largest the call journal holds), so that a screen reconnecting after a
    /// restart with `after=N` gets this run's calls, not a skipped few. Call
    /// it before the first publish; a key no operator has is ignored, and a
    /// key's number never goes down.
    pub fn continue_seqs(&self, last: impl IntoIterator<Item = (String, u64)>) {
        for (key, seq) in last {
            if let Some(state) = self.keys.get(key.as_str()) {
                let mut inner = state.lock();
                if seq > inner.last_seq {
                    inner.last_seq = seq;
                    drop(inner);
                    state.last_seq_tx.send_replace(seq);
                }
            }
        }
    }

    fn state(&self, key: &str) -> Result<&Arc<KeyState>, HubError> {
        self.keys.get(key).ok_or(HubError::UnknownKey)
    }

    /// Publishes an incoming call to every screen of `key` and wakes them:
    /// [`Hub::queue`], then [`Queued::wake_here`].
    ///
    /// Never waits: subscribers whose mailbox is full are cut off. A key no
    /// operator has is refused (and counted), and nothing is stored for it.
    pub fn publish(&self, key: &str, event: &CallEvent) -> Result<Published, HubError> {
        let queued = self.queue(key, event, None)?;
        let published = queued.published();
        queued.wake_here();
        Ok(published)
    }

    /// Queues an incoming call for every screen of `key` without waking
    /// them: the message is numbered, buffered for replay and long-poll, and
    /// in every subscriber's mailbox (subscribers whose mailbox is full are
    /// cut off, and are not counted in `delivered`); the screens' tasks run
    /// once the returned [`Queued`] is woken or dropped.
    ///
    /// Long-poll waiters are woken at once: they are few, and on the HTTP
    /// runtime anyway.
    ///
    /// `request` is the IncomingCall's id, which the cut-off line names.
    pub fn queue(
        &self,
        key: &str,
        event: &CallEvent,
        request: Option<RequestId>,
    ) -> Result<Queued, HubError> {
        let Some(state) = self.keys.get(key) else {
            // Counted by the caller (cti_incoming_calls_unknown_key_total).
            return Err(HubError::UnknownKey);
        };
        // Everything but the seq is rendered before taking the lock.
        let body = encode_body(&state.key, event).map_err(|e| {
            tracing::error!(error = %e, "pop-up message could not be encoded");
            HubError::Encode(e.to_string())
        })?;
        let now = Instant::now();
        let (seq, delivered, cut_off, gone) = {
            let mut inner = state.lock();
            let seq = inner.last_seq + 1;
            let message = compose(seq, &body).map_err(|e| {
                tracing::error!(error = %e, "pop-up message could not be written");
                HubError::Encode(e.to_string())
            })?;
            inner.last_seq = seq;
            let (delivered, cut_off, gone) = inner.offer(&message, self.config.queue_len);
            inner.buffer.push_back(Buffered {
                stored: now,
                message,
            });
            inner.evict(&self.config, now);
            (seq, delivered, cut_off, gone)
        };
        state.last_seq_tx.send_replace(seq);
        self.metrics.published.inc();
        self.metrics.delivered.inc_by(delivered as u64);
        state.screens_gone(cut_off + gone);
        if cut_off > 0 {
            self.metrics.slow_disconnects.inc_by(cut_off as u64);
            let request_id = request.map(tracing::field::display);
            tracing::info!(
                key,
                seq,
                cut_off,
                request_id,
                "pop-up subscribers cut off: queue full"
            );
        }
        Ok(Queued {
            published: Published { seq, delivered },
            state: Some(Arc::clone(state)),
        })
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
        let mailbox = Arc::new(Mailbox::new());
        let (pending, id) = {
            let mut inner = state.lock();
            if inner.closed {
                mailbox.close(SHUTDOWN);
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
                    mailbox: Arc::clone(&mailbox),
                });
                state.screens_came(1);
                (pending, Some(id))
            }
        };
        self.metrics.replayed.inc_by(pending.len() as u64);
        Ok(Subscription {
            state: Arc::clone(state),
            id,
            pending,
            mailbox,
        })
    }

    /// For long-poll: the buffered messages of `key` with `seq > after`, at
    /// once if there are any; otherwise waits up to `wait` for the next
    /// message(s) and returns them, or an empty `Vec` when the time is up (or
    /// the hub shuts down). What it returns counts as delivered (to the
    /// screen whose request this is) in `cti_popup_delivered_total`.
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
                // The long-poll request hands them to its screen: delivered.
                self.metrics.replayed.inc_by(found.len() as u64);
                self.metrics.delivered.inc_by(found.len() as u64);
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

    /// Long-poll requests of `key` inside [`Hub::wait_after`] now (waiting
    /// for a message, or about to read the buffer), or `None` for an unknown
    /// key.
    pub fn long_poll_waiters(&self, key: &str) -> Option<usize> {
        self.keys.get(key).map(|s| s.last_seq_tx.receiver_count())
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
                    s.mailbox.close(SHUTDOWN);
                }
                removed
            };
            state.screens_gone(removed);
            state.wake_all();
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

/// A message queued for every screen of its key, the screens not woken yet
/// ([`Hub::queue`]). Waking them is one notification, whatever their number;
/// dropping it wakes them too, so a message is never left unseen.
#[must_use = "the screens are woken when this is woken or dropped"]
pub struct Queued {
    published: Published,
    /// `None` once woken.
    state: Option<Arc<KeyState>>,
}

impl fmt::Debug for Queued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queued")
            .field("published", &self.published)
            .field("woken", &self.state.is_none())
            .finish()
    }
}

impl Queued {
    /// What [`Hub::queue`] did.
    pub fn published(&self) -> Published {
        self.published
    }

    /// Wakes the key's screens from a task of its own, a group at a time
    /// ([`WAKE_GROUPS`]): the caller only spawns one task, and the thousand
    /// wake-ups of a large fan-out run after it, interleaved with the
    /// screens' sends and whatever else is woken meanwhile.
    pub fn wake(mut self) {
        if let Some(state) = self.state.take() {
            tokio::spawn(async move { state.wake_in_groups().await });
        }
    }

    /// Wakes the key's screens from this thread, all at once.
    pub fn wake_here(mut self) {
        if let Some(state) = self.state.take() {
            state.wake_all();
        }
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            state.wake_all();
        }
    }
}
