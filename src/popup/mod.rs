//! Pop-ups: the caller's card on every screen of the operator the PBX names.
//!
//! When the PBX sends `IncomingCall(number, key)`, the SOAP handler calls
//! [`Hub::queue`] with the abonent key and the call ([`CallEvent`]). The
//! hub gives the message the next sequence number of that key, renders its
//! JSON and WebSocket frame once ([`message`], see "Pop-up message" in
//! `docs/contract.md`), keeps it in the key's short replay buffer and puts it
//! in the mailbox of every screen subscribed to that key; the screens are
//! woken by one notification when the handler says so ([`Queued`]).
//! [`Hub::publish`] queues and wakes at once.
//!
//! The HTTP front owns the routes and the screens' tokens: it reads the
//! query string ([`ScreenQuery`]), resolves the operator from the token
//! (401 when no operator has it) and hands the transports that operator's
//! abonent key. The transports are thin layers over the hub:
//!
//! - WebSocket ([`websocket`]): [`Hub::subscribe`] with the key and the
//!   screen's `after`, then a loop over [`Subscription::recv`] writing each
//!   message's WebSocket frame, encoded once for every screen
//!   ([`Message::frame`]). A [`Closed`] says why the stream ended
//!   (a slow screen, or shutdown), so the transport can pick a close code; the
//!   screen reconnects with `after=<last seq it saw>` and catches up from the
//!   replay buffer. The screens' tasks run on the runtime that serves HTTP,
//!   woken while the PBX's `IncomingCall` waits for the journal's commit,
//!   a group of about sixty at a time, so that the PBX's request, woken by
//!   the commit, never queues behind a thousand of them (`vats`). (A runtime of the screens' own, tried before, cost every pop-up
//!   a wake-up across runtimes: last screen p99 1.9-2.1x the bare broadcast
//!   server's for 100 keys x 10 screens, 1.16-1.19x without it.)
//! - Long-poll ([`long_poll`]): [`Hub::wait_after`], which reads only the
//!   replay buffer.
//!
//! What the hub itself (`hub.rs`) must not do: know HTTP, tokens, or the PBX.
//! It is built from the configured keys only. It never awaits while
//! delivering: a screen that does not keep up is cut off, it never slows the
//! PBX's request or the other screens.
//!
//! Settings come from `[popup]` ([`crate::config::PopupConfig`], where their
//! defaults are written): [`HubConfig`] and [`TransportConfig`] are built
//! from it with `From`.

mod hub;
pub mod long_poll;
pub mod message;
pub mod page;
pub(crate) mod query;
pub mod websocket;

use std::time::Duration;

use crate::config::PopupConfig;

pub use hub::{Closed, Hub, HubConfig, HubError, Published, Queued, Subscription};
pub use message::{CallEvent, Message};
pub use query::ScreenQuery;

/// Settings of the screens' transports (`[popup]` in the configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportConfig {
    /// How often a WebSocket screen is pinged; a screen silent for two
    /// intervals is dropped.
    pub ping_interval: Duration,
    /// Longest a long-poll request waits (`wait=` is clamped to it).
    pub long_poll_max_wait: Duration,
}

impl From<&PopupConfig> for TransportConfig {
    fn from(popup: &PopupConfig) -> Self {
        Self {
            ping_interval: popup.ping_interval,
            long_poll_max_wait: popup.long_poll_max_wait,
        }
    }
}
