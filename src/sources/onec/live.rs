//! Live lookup: a caller the directory does not know is asked of 1C while
//! the PBX waits, within `onec.lookup_budget_ms`.
//!
//! - A moka cache keeps what 1C answered: a found counterparty until the
//!   next full read has it anyway, a number 1C does not know for
//!   `onec.negative_ttl`, so an unknown caller does not reach 1C on every ring.
//! - Concurrent lookups of one number are one request (moka coalesces the
//!   loads of a key).
//! - The lookup runs in its own task: when 1C is slower than the budget the
//!   caller is answered "unknown" at the budget, and the lookup finishes in
//!   the background and fills the cache for the next ring.
//! - After a failure, lookups are skipped (answered unknown at once) for a
//!   backoff period, so a dead 1C costs the PBX nothing but the first budget.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::future::Cache;
use moka::Expiry;

use super::metrics::OnecMetrics;
use super::odata::{OdataClient, OdataError};
use super::rows::{self, FieldNames, CONTACTS_SELECT};
use super::{backoff, SOURCE};
use crate::directory::{Directory, Entry};
use crate::phone::{self, PhoneKey};

/// Most distinct numbers remembered.
const CACHE_CAPACITY: u64 = 100_000;
/// Longest a background lookup may take (shorter than a full read's timeout:
/// a lookup that slow helps nobody).
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Contact rows asked for per lookup, and counterparties fetched for them.
const MAX_CANDIDATE_ROWS: usize = 100;
const MAX_CANDIDATES: usize = 20;
/// Longest pause of lookups after failures.
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// What the cache remembers about a number.
#[derive(Clone)]
enum Cached {
    Found(Arc<Entry>),
    Unknown,
}

impl Cached {
    fn entry(self) -> Option<Arc<Entry>> {
        match self {
            Cached::Found(e) => Some(e),
            Cached::Unknown => None,
        }
    }
}

/// Found numbers live until the next refresh; unknown ones for `negative_ttl`.
struct Ttl {
    found: Duration,
    unknown: Duration,
}

impl Expiry<PhoneKey, Cached> for Ttl {
    fn expire_after_create(
        &self,
        _key: &PhoneKey,
        value: &Cached,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        Some(match value {
            Cached::Found(_) => self.found,
            Cached::Unknown => self.unknown,
        })
    }
}

/// Where 1C lookups stand after failures.
#[derive(Default)]
struct Breaker {
    failures: u32,
    paused_until: Option<Instant>,
}

#[derive(Clone)]
pub struct LiveLookup {
    inner: Arc<Live>,
}

struct Live {
    client: Arc<OdataClient>,
    catalog_set: String,
    contacts_set: String,
    /// False where the contacts cannot be searched by number (the КА 1.1
    /// register): every caller the directory lacks is unknown.
    enabled: bool,
    fields: FieldNames,
    directory: Arc<Directory>,
    cache: Cache<PhoneKey, Cached>,
    budget: Duration,
    metrics: Arc<OnecMetrics>,
    breaker: Mutex<Breaker>,
}

pub(super) struct LiveSettings {
    pub catalog_set: String,
    pub contacts_set: String,
    pub enabled: bool,
    pub fields: FieldNames,
    pub budget: Duration,
    pub found_ttl: Duration,
    pub unknown_ttl: Duration,
}

impl LiveLookup {
    pub(super) fn new(
        client: Arc<OdataClient>,
        settings: LiveSettings,
        directory: Arc<Directory>,
        metrics: Arc<OnecMetrics>,
    ) -> LiveLookup {
        let cache = Cache::builder()
            .max_capacity(CACHE_CAPACITY)
            .expire_after(Ttl {
                found: settings.found_ttl,
                unknown: settings.unknown_ttl,
            })
            .build();
        LiveLookup {
            inner: Arc::new(Live {
                client,
                catalog_set: settings.catalog_set,
                contacts_set: settings.contacts_set,
                enabled: settings.enabled,
                fields: settings.fields,
                directory,
                cache,
                budget: settings.budget,
                metrics,
                breaker: Mutex::new(Breaker::default()),
            }),
        }
    }

    /// The counterparty 1C has for `phone`, or `None` (unknown, or not known
    /// within the budget). Called only for numbers the directory lacks.
    pub async fn find(&self, phone: PhoneKey) -> Option<Arc<Entry>> {
        // Extensions are the office's own phones, never a 1C client's.
        if phone.is_extension() || !self.inner.enabled {
            return None;
        }
        let live = &self.inner;
        if let Some(cached) = live.cache.get(&phone).await {
            let hit = match cached {
                Cached::Found(_) => &live.metrics.cache_hits,
                Cached::Unknown => &live.metrics.cache_negative_hits,
            };
            hit.inc();
            return live.admitted(cached.entry());
        }
        live.metrics.cache_misses.inc();
        if live.paused() {
            live.metrics.lookups_skipped.inc();
            return None;
        }
        let task = {
            let live = Arc::clone(live);
            tokio::spawn(async move {
                let load = Arc::clone(&live).load(phone);
                live.cache.try_get_with(phone, load).await
            })
        };
        match tokio::time::timeout(live.budget, task).await {
            Ok(Ok(Ok(cached))) => live.admitted(cached.entry()),
            // The error was logged by the load; a panic by tokio.
            Ok(Ok(Err(_))) | Ok(Err(_)) => None,
            Err(_) => {
                live.metrics.lookups_over_budget.inc();
                None
            }
        }
    }

    /// Forgets every remembered answer: after a full read the directory
    /// knows better (found ones are in it, unknown ones may be now).
    pub fn forget_all(&self) {
        self.inner.cache.invalidate_all();
    }
}

impl Live {
    /// `found`, unless the directory says it must not answer: a copy someone
    /// deleted (and 1C has not changed since), or one another source
    /// overrides with a copy received later. Checked at every answer, the
    /// cached ones too: a delete or a push may come after the lookup.
    fn admitted(&self, found: Option<Arc<Entry>>) -> Option<Arc<Entry>> {
        found.filter(|e| self.directory.may_answer_live(e))
    }

    fn paused(&self) -> bool {
        let breaker = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        breaker.paused_until.is_some_and(|t| Instant::now() < t)
    }

    /// One lookup in 1C, timed, with the breaker and the log kept.
    async fn load(self: Arc<Self>, phone: PhoneKey) -> Result<Cached, OdataError> {
        let started = Instant::now();
        let result = self.ask(phone).await;
        self.metrics
            .lookup_seconds
            .observe(started.elapsed().as_secs_f64());
        let mut breaker = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(cached) => {
                let outcome = match cached {
                    Cached::Found(_) => &self.metrics.lookups_found,
                    Cached::Unknown => &self.metrics.lookups_unknown,
                };
                outcome.inc();
                if breaker.failures > 0 {
                    tracing::info!(
                        source = SOURCE,
                        failures = breaker.failures,
                        "live lookups in 1C answer again"
                    );
                }
                *breaker = Breaker::default();
            }
            Err(e) => {
                self.metrics.lookups_failed.inc();
                breaker.failures = breaker.failures.saturating_add(1);
                let pause = backoff(breaker.failures, MAX_PAUSE);
                breaker.paused_until = Some(Instant::now() + pause);
                if breaker.failures == 1 {
                    tracing::warn!(
                        source = SOURCE,
                        error = %e,
                        "live lookup in 1C failed; callers the directory lacks are answered unknown, lookups retried with backoff"
                    );
                }
            }
        }
        result
    }

    /// Finds the counterparties whose contact rows hold `phone`, then reads
    /// them and their contacts whole. 1C's `НомерТелефона` may lack the
    /// country code, so the filter matches the last ten digits and each
    /// candidate is confirmed here on the normalized number.
    async fn ask(&self, phone: PhoneKey) -> Result<Cached, OdataError> {
        let e164 = phone.display_e164();
        let ten = &e164[e164.len().saturating_sub(10)..];
        let filter = format!("substringof('{ten}', НомерТелефона)");
        let top = MAX_CANDIDATE_ROWS.to_string();
        let what = "a live lookup of a caller's phone";
        let body = self
            .client
            .get(
                &self.contacts_set,
                &[
                    ("$select", CONTACTS_SELECT),
                    ("$filter", &filter),
                    ("$top", &top),
                ],
                what,
                Some(LOOKUP_TIMEOUT),
            )
            .await?;
        let format = |cause| OdataError::Format {
            what: what.into(),
            cause,
        };
        let rows = rows::parse_contacts_page(&body).map_err(format)?;
        let mut owners: Vec<String> = Vec::new();
        for row in rows {
            let holds = [&row.phone_digits, &row.presentation]
                .iter()
                .any(|t| phone::normalize(t) == Some(phone));
            if holds && rows::is_guid(&row.owner) && !owners.contains(&row.owner) {
                owners.push(row.owner);
            }
        }
        owners.truncate(MAX_CANDIDATES);
        if owners.is_empty() {
            return Ok(Cached::Unknown);
        }
        let by_ref = owners
            .iter()
            .map(|o| format!("Ref_Key eq guid'{o}'"))
            .collect::<Vec<_>>()
            .join(" or ");
        let select = self.fields.catalog_select();
        let catalog_query = [("$select", select.as_str()), ("$filter", by_ref.as_str())];
        let contacts_query = [("$select", CONTACTS_SELECT), ("$filter", by_ref.as_str())];
        let (catalog, contacts) = tokio::try_join!(
            self.client.get(
                &self.catalog_set,
                &catalog_query,
                "a live lookup's counterparties",
                Some(LOOKUP_TIMEOUT),
            ),
            self.client.get(
                &self.contacts_set,
                &contacts_query,
                "a live lookup's contact information",
                Some(LOOKUP_TIMEOUT),
            ),
        )?;
        let catalog = rows::parse_catalog_page(&catalog, &self.fields).map_err(format)?;
        let contacts = rows::parse_contacts_page(&contacts).map_err(format)?;
        let (records, _) = rows::into_records(catalog, contacts);
        let best = records
            .into_iter()
            .map(|r| self.directory.prepare_entry(SOURCE, r))
            .filter(|e| e.phones().contains(&phone))
            .reduce(|best, e| {
                if e.wins_phone_over(&best, phone) {
                    e
                } else {
                    best
                }
            });
        Ok(best.map_or(Cached::Unknown, Cached::Found))
    }
}
