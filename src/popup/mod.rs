//! Pop-ups: the caller's card on every screen of the operator the PBX names.
//!
//! When the PBX sends `IncomingCall(number, key)`, the SOAP handler calls
//! [`Hub::publish`] with the abonent key and the card. The hub gives the
//! message the next sequence number of that key, renders its JSON once
//! (see "Pop-up message" in `docs/contract.md`), keeps it in the key's short
//! replay buffer and hands it to every screen subscribed to that key.
//!
//! The transports are thin layers over the hub:
//!
//! - WebSocket ([`websocket`]): [`Hub::operator_for_token`] at the upgrade
//!   (401 when `None`, in the HTTP front), then [`Hub::subscribe`] with the
//!   screen's `after`, then a loop over [`Subscription::recv`] writing
//!   [`Message::json`] as text frames. A [`Closed`] says why the stream ended
//!   (a slow screen, or shutdown), so the transport can pick a close code; the
//!   screen reconnects with `after=<last seq it saw>` and catches up from the
//!   replay buffer.
//! - Long-poll ([`long_poll`]): [`Hub::wait_after`], which reads only the
//!   replay buffer.
//!
//! The HTTP front owns the routes and the token check; [`ScreenQuery`] reads
//! the query string both transports share.
//!
//! What the hub itself (`hub.rs`) must not do: know HTTP, tokens in URLs, or the PBX. It never
//! awaits while delivering: a screen that does not keep up is cut off, it
//! never slows the PBX's request or the other screens.

mod hub;
pub mod long_poll;
pub mod page;
pub(crate) mod query;
pub mod websocket;

use std::time::Duration;

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

impl Default for TransportConfig {
    fn default() -> Self {
        Self {
            ping_interval: Duration::from_secs(25),
            long_poll_max_wait: Duration::from_secs(60),
        }
    }
}

pub use hub::{
    CallEvent, Closed, Hub, HubConfig, HubError, Message, Operator, OperatorInfo, Published,
    Subscription,
};
