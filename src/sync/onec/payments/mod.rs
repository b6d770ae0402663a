//! Incoming payments (issue 19 item 4): from 1C's OData interface
//! (`[payments] source = "odata"`, [`poll`]) or pushed to
//! `POST /api/v1/exchange/payments` (`source = "push"`, [`push`] reads the
//! body). Either way each version of a payment document goes through
//! [`Payments::commit`]: deduplicated on (ref, version) and turned into a
//! `payment.posted`, `payment.changed` or `payment.reversed` event in the
//! sync store's `payments` table, with one outbox row per system that takes
//! payments ([`SystemSpec::with_payments`](crate::sync::SystemSpec::with_payments)),
//! in one transaction. The sending runtime then delivers each event once,
//! in order per payment (events are never coalesced).
//!
//! Amounts are [`Amount`]s (kopecks), written as 2-place decimal strings.

pub mod amount;
mod dates;
pub mod poll;
pub mod push;
pub mod push_xml;
mod rows;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus::{Histogram, HistogramOpts, IntCounterVec, Opts, Registry};
use serde::{Deserialize, Serialize};

pub use amount::Amount;

use crate::config::PaymentsSource;
use crate::store::{
    NewPayment, PaymentCursor, PaymentEvent, PaymentsBatch, PaymentsCommitted, Store, StoreError,
};

/// The name under which the poll's health shows in `/readyz` (a source).
pub const HEALTH_NAME: &str = "payments";

/// A payment document in one version: the event's `payment`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// 1C's `Ref_Key`, lowercase.
    #[serde(rename = "ref")]
    pub ref_key: String,
    /// 1C's `DataVersion`, or a push's version.
    pub version: String,
    pub number: String,
    /// RFC 3339, with the offset (1C's local time with `[payments] utc_offset`).
    pub date: String,
    pub amount: Amount,
    /// The payer's `Ref_Key` in 1C (or a push's id); `None` when empty.
    pub counterparty: Option<String>,
    pub rows: Vec<PaymentRow>,
    /// Posted, and neither marked for deletion nor deleted.
    pub posted: bool,
}

/// A row of the payment's breakdown (1C's `РасшифровкаПлатежа`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRow {
    pub amount: Amount,
    /// The customer invoice paid (`СчетНаОплату_Key`), if any.
    pub invoice: Option<String>,
    /// The contract (`ДоговорКонтрагента_Key`), if any.
    pub contract: Option<String>,
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Amount, D::Error> {
        let text = String::deserialize(d)?;
        Amount::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl Payment {
    /// What the store keeps of this version: `stored_date` is the date as
    /// the source wrote it (1C's, without offset: the poll's window).
    fn to_new(&self, stored_date: &str) -> NewPayment {
        NewPayment {
            ref_key: self.ref_key.clone(),
            version: self.version.clone(),
            posted: self.posted,
            date: stored_date.to_owned(),
            // A struct of strings, amounts and booleans always serializes.
            body: serde_json::to_string(self).unwrap_or_default(),
        }
    }
}

/// The payments' metrics.
#[derive(Clone)]
pub struct PaymentsMetrics {
    /// `cti_payments_events_total{kind,source}`.
    events: IntCounterVec,
    /// `cti_payments_poll_seconds`: one OData poll, pages and fetches by key.
    pub(crate) poll_seconds: Histogram,
}

impl PaymentsMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<PaymentsMetrics> {
        let events = IntCounterVec::new(
            Opts::new(
                "cti_payments_events_total",
                "Payment events committed for the modules that take payments, by kind (posted, changed, reversed) and source (odata, push)",
            ),
            &["kind", "source"],
        )?;
        registry.register(Box::new(events.clone()))?;
        let poll_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "cti_payments_poll_seconds",
                "Duration of one poll of 1C's payment documents (every page, the fetches by key and the commits)",
            )
            .buckets(vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]),
        )?;
        registry.register(Box::new(poll_seconds.clone()))?;
        // Every label pair exists from the start (a scrape sees zeros).
        for kind in [
            PaymentEvent::Posted,
            PaymentEvent::Changed,
            PaymentEvent::Reversed,
        ] {
            for source in [PaymentsSource::Odata, PaymentsSource::Push] {
                events.with_label_values(&[kind.label(), source.as_str()]);
            }
        }
        Ok(PaymentsMetrics {
            events,
            poll_seconds,
        })
    }
}

/// How payments are doing, for the sync status API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentsStatus {
    pub source: &'static str,
    /// The poll's cursor (OData only).
    pub cursor: Option<PaymentCursor>,
    /// When 1C was last read in full (OData), or a push last committed.
    pub last_success: Option<SystemTime>,
    /// How old the gateway's view of the payments is: since `last_success`.
    pub lag: Option<Duration>,
    /// The last poll's error, while failing.
    pub last_error: Option<String>,
}

#[derive(Default)]
struct Progress {
    last_success: Option<SystemTime>,
    last_error: Option<String>,
}

/// The use case both sources commit through.
pub struct Payments {
    store: Store,
    source: PaymentsSource,
    /// Systems that take payments, by name.
    subscribers: Vec<String>,
    metrics: PaymentsMetrics,
    progress: Mutex<Progress>,
}

impl Payments {
    pub fn new(
        store: Store,
        source: PaymentsSource,
        subscribers: Vec<String>,
        metrics: PaymentsMetrics,
    ) -> Arc<Payments> {
        Arc::new(Payments {
            store,
            source,
            subscribers,
            metrics,
            progress: Mutex::new(Progress::default()),
        })
    }

    pub fn source(&self) -> PaymentsSource {
        self.source
    }

    pub fn subscribers(&self) -> &[String] {
        &self.subscribers
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn metrics(&self) -> &PaymentsMetrics {
        &self.metrics
    }

    /// Commits pushed payments (their dates as sent): all or none.
    pub async fn commit_pushed(
        &self,
        payments: &[Payment],
    ) -> Result<PaymentsCommitted, StoreError> {
        let items = payments.iter().map(|p| p.to_new(&p.date)).collect();
        let done = self.commit(items, None).await?;
        self.succeeded();
        Ok(done)
    }

    /// Commits versions (with the cursor, when the poll moves it) and
    /// counts their events.
    async fn commit(
        &self,
        payments: Vec<NewPayment>,
        cursor: Option<(String, String)>,
    ) -> Result<PaymentsCommitted, StoreError> {
        if payments.is_empty() && cursor.is_none() {
            return Ok(PaymentsCommitted::default());
        }
        let done = self
            .store
            .payments_commit(PaymentsBatch {
                source: self.source.as_str().to_owned(),
                payments,
                subscribers: self.subscribers.clone(),
                cursor,
            })
            .await?;
        for event in &done.events {
            self.metrics
                .events
                .with_label_values(&[event.label(), self.source.as_str()])
                .inc();
        }
        Ok(done)
    }

    fn succeeded(&self) {
        let mut p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        p.last_success = Some(SystemTime::now());
        p.last_error = None;
    }

    fn failed(&self, error: &str) {
        let mut p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
        p.last_error = Some(error.to_owned());
    }

    /// Source, cursor and lag, for the sync status API.
    pub async fn status(&self) -> Result<PaymentsStatus, StoreError> {
        let cursor = match self.source {
            PaymentsSource::Odata => self.store.payments_cursor(self.source.as_str()).await?,
            PaymentsSource::Push => None,
        };
        let (last_success, last_error) = {
            let p = self.progress.lock().unwrap_or_else(|p| p.into_inner());
            (p.last_success, p.last_error.clone())
        };
        Ok(PaymentsStatus {
            source: self.source.as_str(),
            cursor,
            last_success,
            lag: last_success.and_then(|t| SystemTime::now().duration_since(t).ok()),
            last_error,
        })
    }
}

/// True when `text` is a GUID (8-4-4-4-12 hex digits), as 1C writes keys.
pub fn is_guid(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// 1C's empty reference.
const EMPTY_REF: &str = "00000000-0000-0000-0000-000000000000";

/// A reference as an event carries it: lowercase, `None` when empty.
fn reference(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty() && text != EMPTY_REF).then(|| text.to_ascii_lowercase())
}
