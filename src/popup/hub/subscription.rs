//! A screen's side of the hub: its mailbox (the messages queued for it and
//! why it was closed) and the [`Subscription`] that reads it.
//!
//! Queuing and waking are separate steps. [`Hub`](super::Hub) pushes a
//! message into every mailbox of the key under the key's lock, which wakes
//! nobody; the key's `arrived` notification then wakes every subscription
//! waiting in [`Subscription::recv`], a group of them per notification
//! (`WAKE_GROUPS`). So the publisher decides when the screens' tasks run
//! (see [`Queued`](super::Queued)), and a few notifications serve a
//! thousand screens.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{Closed, KeyState, WAKE_GROUPS};
use crate::popup::message::Message;

pub(super) const OPEN: u8 = 0;
pub(super) const SLOW: u8 = 1;
pub(super) const SHUTDOWN: u8 = 2;

/// The messages queued for one subscription, and why it was closed.
pub(super) struct Mailbox {
    queue: Mutex<VecDeque<Message>>,
    reason: AtomicU8,
}

impl Mailbox {
    pub(super) fn new() -> Mailbox {
        Mailbox {
            queue: Mutex::new(VecDeque::new()),
            reason: AtomicU8::new(OPEN),
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Message>> {
        // Nothing under this lock panics.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `message` unless `capacity` messages already wait: then the
    /// mailbox is closed as slow and `false` returned. Wakes nobody.
    pub(super) fn offer(&self, message: &Message, capacity: usize) -> bool {
        let mut queue = self.lock();
        if queue.len() >= capacity {
            // Set before the subscriber is dropped from the key, so a reader
            // woken after that sees it.
            self.close(SLOW);
            return false;
        }
        queue.push_back(message.clone());
        true
    }

    pub(super) fn close(&self, reason: u8) {
        self.reason.store(reason, Ordering::Release);
    }

    fn pop(&self) -> Option<Message> {
        self.lock().pop_front()
    }

    fn closed(&self) -> Option<Closed> {
        match self.reason.load(Ordering::Acquire) {
            OPEN => None,
            SLOW => Some(Closed::SlowConsumer),
            _ => Some(Closed::HubShutdown),
        }
    }
}

/// A screen's stream of messages for one key. Dropping it unregisters it.
pub struct Subscription {
    pub(super) state: Arc<KeyState>,
    /// `None` when it was closed from the start (subscribed after shutdown).
    pub(super) id: Option<u64>,
    /// Replayed messages, handed out before the mailbox.
    pub(super) pending: VecDeque<Message>,
    pub(super) mailbox: Arc<Mailbox>,
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
    /// and gets them from the replay buffer. Cancel-safe (fit for `select!`):
    /// a message is taken only when it is returned.
    pub async fn recv(&mut self) -> Result<Message, Closed> {
        loop {
            // Created before the mailbox is looked at: a notification sent
            // after this line wakes it, even before it is first polled (and
            // it costs nothing if it is dropped unpolled).
            let arrived = self.state.arrived[self.wake_group()].notified();
            if let Some(closed) = self.mailbox.closed() {
                return Err(closed);
            }
            if let Some(m) = self.pending.pop_front() {
                return Ok(m);
            }
            if let Some(m) = self.mailbox.pop() {
                return Ok(m);
            }
            arrived.await;
        }
    }

    /// The notification of the key that wakes this subscription.
    fn wake_group(&self) -> usize {
        // The remainder is below WAKE_GROUPS: the cast cannot truncate.
        self.id.map_or(0, |id| (id % WAKE_GROUPS as u64) as usize)
    }

    /// The operator key this subscription is for.
    pub fn key(&self) -> &str {
        &self.state.key
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.state.unregister(id);
        }
    }
}
