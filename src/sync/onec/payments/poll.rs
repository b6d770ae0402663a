//! The OData poll (`[payments] source = "odata"`): every `poll` (and on a
//! reload), on the 1C source's low-priority worker with its read user,
//!
//! 1. reads `{document}?$filter=Date ge datetime'<cursor − reread>'`
//!    `&$orderby=Date,Ref_Key&$top=N&$skip=k` page by page (no filter
//!    before the first cursor: the first read takes every document),
//!    each page committed with the cursor moved to its last document, so
//!    a poll cut short keeps what it handed on;
//! 2. asks 1C by key (`{document}(guid'…')`) for each payment handed on
//!    as posted, dated within the window, that the read no longer saw: a
//!    404 is a deletion (reversed), anything else its current version.
//!
//! A version already stored is a duplicate (nothing emitted), so a re-read
//! of unchanged documents commits nothing but an unchanged cursor. A failed
//! read keeps the cursor where the last committed page left it; the next
//! try follows the backoff, and `/readyz` shows `payments` failing with 1C's
//! message until a poll passes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::rows::{self, Document};
use super::{dates, Payments, HEALTH_NAME};
use crate::config::{OnecConfig, PaymentFields, PaymentsConfig};
use crate::sources::backoff::Backoff;
use crate::sources::onec::{OdataClient, OdataError};
use crate::sources::{LowPriority, SourceHealth};
use crate::store::StoreError;

/// The worker's name in errors (the 1C source's thread).
const WORKER: &str = "cti-onec-read";
/// Longest wait between retries after failures (also bounded by `poll`).
const MAX_RETRY_WAIT: Duration = Duration::from_secs(300);
/// Most documents one poll reads: far beyond a bank's year of receipts.
const MAX_DOCUMENTS: usize = 5_000_000;

#[derive(Debug, thiserror::Error)]
pub enum PollError {
    #[error(transparent)]
    Odata(#[from] OdataError),
    #[error("the payments could not be committed to the sync store: {0}")]
    Store(#[from] StoreError),
    #[error("1C sent more than {MAX_DOCUMENTS} payment documents in one poll; check payments.fields.document")]
    TooMany,
    #[error("{0}")]
    Worker(String),
}

/// What one poll did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PollReport {
    /// Documents read in the window.
    pub read: usize,
    /// Documents asked for by key (gone from the window).
    pub fetched: usize,
    /// Versions new to the store.
    pub accepted: usize,
    pub events: usize,
    pub elapsed: Duration,
}

/// The poll of one gateway.
pub struct PaymentsPoll {
    reader: Arc<Reader>,
    payments: Arc<Payments>,
    health: Arc<SourceHealth>,
    low: Arc<LowPriority>,
    every: Duration,
}

/// What a poll needs on the worker thread: an HTTP client of its own, whose
/// connections live on that thread's runtime.
struct Reader {
    client: OdataClient,
    fields: PaymentFields,
    select: String,
    page_size: usize,
    reread: Duration,
    offset: String,
    payments: Arc<Payments>,
}

impl PaymentsPoll {
    /// A poll reading 1C with `onec`'s URL and read user, on `low` (the 1C
    /// source's worker).
    pub(crate) fn new(
        config: &PaymentsConfig,
        onec: &OnecConfig,
        payments: Arc<Payments>,
        health: Arc<SourceHealth>,
        low: Arc<LowPriority>,
    ) -> Result<PaymentsPoll, OdataError> {
        Ok(PaymentsPoll {
            reader: Arc::new(Reader {
                client: OdataClient::new(onec)?,
                select: rows::select(&config.fields),
                fields: config.fields.clone(),
                page_size: config.page_size,
                reread: config.reread,
                offset: config.utc_offset.clone(),
                payments: Arc::clone(&payments),
            }),
            payments,
            health,
            low,
            every: config.poll,
        })
    }

    /// One poll, on the worker thread.
    pub async fn poll(&self) -> Result<PollReport, PollError> {
        let started = Instant::now();
        let reader = Arc::clone(&self.reader);
        let result = self
            .low
            .run_future(WORKER, async move { reader.poll().await })
            .await
            .map_err(|e| PollError::Worker(e.to_string()))
            .and_then(|r| r);
        let elapsed = started.elapsed();
        self.payments
            .metrics()
            .poll_seconds
            .observe(elapsed.as_secs_f64());
        result.map(|report| PollReport { elapsed, ..report })
    }

    /// Polls every `poll` (and on `reload`) until `shutdown`; after a
    /// failure, again after the backoff.
    pub async fn run(self, mut reload: watch::Receiver<u64>, mut shutdown: watch::Receiver<bool>) {
        let backoff = Backoff::new(Duration::from_secs(1), self.every.min(MAX_RETRY_WAIT));
        let mut failures: u32 = 0;
        loop {
            let ok = tokio::select! {
                ok = self.poll_and_report() => ok,
                _ = shutdown.changed() => break,
            };
            failures = if ok { 0 } else { failures.saturating_add(1) };
            let wait = if ok {
                self.every
            } else {
                backoff.delay(failures)
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                changed = reload.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    tracing::info!(source = HEALTH_NAME, "reload requested: reading 1C's payments again");
                }
                _ = shutdown.changed() => break,
            }
        }
    }

    async fn poll_and_report(&self) -> bool {
        match self.poll().await {
            Ok(r) => {
                self.payments.succeeded();
                if self.health.success(HEALTH_NAME) {
                    tracing::info!(source = HEALTH_NAME, "1C's payments are read again");
                }
                tracing::debug!(
                    source = HEALTH_NAME,
                    read = r.read,
                    fetched = r.fetched,
                    accepted = r.accepted,
                    events = r.events,
                    elapsed_ms = r.elapsed.as_millis() as u64,
                    "payments read from 1C"
                );
                true
            }
            Err(e) => {
                let message = e.to_string();
                self.payments.failed(&message);
                if self.health.failure(HEALTH_NAME, &message) {
                    tracing::warn!(
                        source = HEALTH_NAME,
                        error = %e,
                        "reading 1C's payments failed; the cursor stays, retrying with backoff"
                    );
                }
                false
            }
        }
    }
}

impl Reader {
    async fn poll(&self) -> Result<PollReport, PollError> {
        let store = self.payments.store();
        let source = self.payments.source().as_str();
        let cursor = store.payments_cursor(source).await?;
        // The window's start, as 1C writes dates; `None`: read everything.
        let from = cursor
            .as_ref()
            .and_then(|c| dates::minus(&c.date, self.reread));
        let filter = from
            .as_ref()
            .map(|from| format!("{} ge datetime'{from}'", self.fields.date));
        let order = format!("{},Ref_Key", self.fields.date);
        let mut at = cursor.map(|c| (c.date, c.ref_key));
        let mut report = PollReport::default();
        let mut seen: HashSet<String> = HashSet::new();
        let top = self.page_size.to_string();
        loop {
            let skip = report.read.to_string();
            let mut query = vec![
                ("$select", self.select.as_str()),
                ("$orderby", order.as_str()),
                ("$top", top.as_str()),
                ("$skip", skip.as_str()),
            ];
            if let Some(filter) = &filter {
                query.push(("$filter", filter.as_str()));
            }
            let what = format!("{} from document {skip}", self.fields.document);
            let body = self
                .client
                .get(&self.fields.document, &query, &what, None)
                .await?;
            let page = rows::parse_page(&body, &self.fields, &self.offset)
                .map_err(|cause| OdataError::Format { what, cause })?;
            let got = page.len();
            report.read += got;
            if report.read > MAX_DOCUMENTS {
                return Err(PollError::TooMany);
            }
            // The cursor only moves forward: a re-read page lies behind it.
            if let Some(last) = page.last() {
                let last = (last.onec_date.clone(), last.payment.ref_key.clone());
                if at.as_ref().is_none_or(|at| last > *at) {
                    at = Some(last);
                }
            }
            for doc in &page {
                seen.insert(doc.payment.ref_key.clone());
            }
            self.commit(page, at.clone(), &mut report).await?;
            // A short page is the last; one longer than asked means 1C
            // ignored $top and sent everything.
            if got != self.page_size {
                break;
            }
        }
        // Payments handed on as posted, in the window, that the read did
        // not see: moved out of it, or deleted.
        let known = store
            .payments_posted_since(source, from.as_deref().unwrap_or(""))
            .await?;
        let mut gone = Vec::new();
        for p in known.into_iter().filter(|p| !seen.contains(&p.ref_key)) {
            report.fetched += 1;
            gone.push(self.fetch(&p.ref_key, &p.version, &p.date).await?);
        }
        self.commit(gone.into_iter().flatten().collect(), None, &mut report)
            .await?;
        Ok(report)
    }

    /// The current version of a payment the window lost: 1C's document by
    /// key, or on a 404 the stored version marked reversed.
    async fn fetch(
        &self,
        ref_key: &str,
        version: &str,
        date: &str,
    ) -> Result<Option<Document>, PollError> {
        let resource = format!("{}(guid'{ref_key}')", self.fields.document);
        let what = format!("{} {ref_key}", self.fields.document);
        match self
            .client
            .get(&resource, &[("$select", &self.select)], &what, None)
            .await
        {
            Ok(body) => {
                let text = String::from_utf8_lossy(&body);
                let doc = rows::parse_document(&text, &self.fields, &self.offset)
                    .map_err(|cause| OdataError::Format { what, cause })?;
                Ok(Some(doc))
            }
            Err(OdataError::Status { status: 404, .. }) => {
                let Some(stored) = self.payments.store().payment_get(ref_key).await? else {
                    return Ok(None);
                };
                let Ok(mut payment) = serde_json::from_str::<super::Payment>(&stored.body) else {
                    tracing::warn!(
                        payment = ref_key,
                        "a stored payment's body does not read; its deletion is not reported"
                    );
                    return Ok(None);
                };
                // Deleted for good: a version of its own, so that it is
                // stored (and reported) once.
                payment.version = format!("{version}/deleted");
                payment.posted = false;
                Ok(Some(Document {
                    payment,
                    onec_date: date.to_owned(),
                }))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn commit(
        &self,
        docs: Vec<Document>,
        cursor: Option<(String, String)>,
        report: &mut PollReport,
    ) -> Result<(), PollError> {
        let items = docs
            .iter()
            .map(|d| d.payment.to_new(&d.onec_date))
            .collect();
        let done = self.payments.commit(items, cursor).await?;
        report.accepted += done.accepted;
        report.events += done.events.len();
        Ok(())
    }
}
