//! The hub's Prometheus metrics (`cti_popup_*`): what was published, to how
//! many screens, what was replayed, who was cut off, who is connected.
//!
//! Calls for a key no operator has are counted once, by the SOAP side, in
//! `cti_incoming_calls_unknown_key_total` (the hub's own counter of them
//! counted the same calls a second time and is gone).

use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts, Registry};

pub(super) struct Metrics {
    pub(super) published: IntCounter,
    pub(super) delivered: IntCounter,
    pub(super) replayed: IntCounter,
    pub(super) slow_disconnects: IntCounter,
    pub(super) subscribers: IntGauge,
    /// `cti_popup_screens{key}`: one child per configured key, made when
    /// the hub is built (keys come from the configuration, never from a
    /// caller, so the label's values are bounded).
    screens: IntGaugeVec,
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
        let screens = IntGaugeVec::new(
            Opts::new(
                "cti_popup_screens",
                "WebSocket screens connected now, by operator key (every configured key, 0 when none: alert on it).",
            ),
            &["key"],
        )?;
        registry.register(Box::new(screens.clone()))?;
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
            screens,
        })
    }

    /// The `cti_popup_screens` gauge of one configured key.
    pub(super) fn screens_of(&self, key: &str) -> IntGauge {
        self.screens.with_label_values(&[key])
    }
}
