//! The hub's Prometheus metrics (`cti_popup_*`): what was published, to how
//! many screens, what was replayed, who was cut off, who is connected.

use prometheus::{IntCounter, IntGauge, Registry};

pub(super) struct Metrics {
    pub(super) published: IntCounter,
    pub(super) delivered: IntCounter,
    pub(super) unknown_key: IntCounter,
    pub(super) replayed: IntCounter,
    pub(super) slow_disconnects: IntCounter,
    pub(super) subscribers: IntGauge,
}

impl Metrics {
    /// Registers the hub's metrics in `registry`; fails if it already has
    /// metrics of these names (a second hub on the same registry).
    pub(super) fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
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
                "Pop-up messages handed to screens: queued to a live WebSocket subscription, or returned to a long-poll request.",
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
