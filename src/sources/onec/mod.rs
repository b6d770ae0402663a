//! 1C:Enterprise as the source of truth, through its standard OData
//! interface.
//!
//! - **Full read** ([`OnecSource::refresh`]): the counterparties catalog and
//!   its contact information set, paged with `$top`/`$skip` over a stable
//!   `$orderby`, `$select`ing only what the directory needs. The records
//!   replace the `onec` source's set (other sources stay); records whose
//!   `DataVersion` did not change keep their entries; unchanged content is
//!   not rebuilt at all. The snapshot is saved after each read that changed
//!   something, so a restart while 1C is down answers from it.
//! - **Refresh loop** ([`OnecSource::run`]): a full read every
//!   `onec.refresh`, at once on SIGHUP; after a failure, retries with
//!   exponential backoff and jitter while the last good directory keeps
//!   serving. The log says once when 1C goes down and once when it is back.
//! - **Live lookup** ([`LiveLookup`]): callers the directory lacks, asked of
//!   1C within `onec.lookup_budget_ms`.

mod live;
mod metrics;
mod odata;
mod rows;

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::{SnapshotSaver, SnapshotSavers, SourceHealth};
use crate::config::OnecConfig;
use crate::directory::{Counterparty, Directory, ReplaceReport};
use crate::store::Store;
pub use live::LiveLookup;
use metrics::OnecMetrics;
use odata::OdataClient;
pub use odata::OdataError;
use rows::{CatalogRow, ContactRow, FieldNames, CONTACTS_SELECT};

/// The name this source's records carry in the directory and the store.
pub const SOURCE: &str = "onec";

/// Most rows one full read accepts from one set: far beyond any real
/// catalog, and a bound on what a misbehaving server can make us hold.
const MAX_ROWS: usize = 5_000_000;
/// Longest wait between retries after failures (also bounded by `onec.refresh`).
const MAX_RETRY_WAIT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum OnecError {
    #[error(transparent)]
    Odata(#[from] OdataError),
    #[error("1C sent more than {MAX_ROWS} rows of {set}; check onec.counterparties/onec.contacts")]
    TooManyRows { set: String },
    #[error("building the directory from 1C's records failed: {0}")]
    Build(String),
    #[error("the 1C source's metrics could not be registered: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// What one full read did.
#[derive(Debug, Clone)]
pub struct RefreshReport {
    pub records: usize,
    /// Records built anew (new, or a new `DataVersion`).
    pub changed: usize,
    /// Records whose entries were kept.
    pub unchanged: usize,
    pub folders: usize,
    pub deleted: usize,
    pub invalid: usize,
    pub elapsed: Duration,
}

pub struct OnecSource {
    client: Arc<OdataClient>,
    catalog_set: String,
    contacts_set: String,
    fields: FieldNames,
    page_size: usize,
    refresh_every: Duration,
    /// A tag of the settings that shape records (field names): records read
    /// under other settings are rebuilt even when their `DataVersion` is the same.
    settings_tag: String,
    directory: Arc<Directory>,
    health: Arc<SourceHealth>,
    metrics: Arc<OnecMetrics>,
    saver: Arc<SnapshotSaver>,
    live: LiveLookup,
}

impl OnecSource {
    pub fn new(
        config: &OnecConfig,
        directory: Arc<Directory>,
        store: Store,
        health: Arc<SourceHealth>,
        registry: &prometheus::Registry,
        savers: &SnapshotSavers,
    ) -> Result<OnecSource, OnecError> {
        let client = Arc::new(OdataClient::new(config)?);
        let metrics = Arc::new(OnecMetrics::register(registry)?);
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let fields = FieldNames {
            category: non_empty(&config.category_field),
            manager_phone: non_empty(&config.manager_phone_field),
        };
        let live = LiveLookup::new(
            Arc::clone(&client),
            live::LiveSettings {
                catalog_set: config.counterparties.clone(),
                contacts_set: config.contacts.clone(),
                fields: fields.clone(),
                budget: config.lookup_budget(),
                found_ttl: config.refresh,
                unknown_ttl: config.negative_ttl,
            },
            Arc::clone(&directory),
            Arc::clone(&metrics),
        );
        let settings_tag = {
            let mut h = std::hash::DefaultHasher::new();
            h.write(config.counterparties.as_bytes());
            h.write(config.contacts.as_bytes());
            h.write(fields.catalog_select().as_bytes());
            format!("{:08x}", h.finish() as u32)
        };
        Ok(OnecSource {
            client,
            catalog_set: config.counterparties.clone(),
            contacts_set: config.contacts.clone(),
            page_size: config.page_size,
            refresh_every: config.refresh,
            settings_tag,
            fields,
            saver: {
                let saver = Arc::new(SnapshotSaver::new(SOURCE, Arc::clone(&directory), store));
                savers.register(Arc::clone(&saver));
                saver
            },
            directory,
            health,
            metrics,
            live,
        })
    }

    /// The live lookup for SayName and IncomingCall.
    pub fn live_lookup(&self) -> LiveLookup {
        self.live.clone()
    }

    /// Reads every counterparty from 1C and makes them the `onec` source's
    /// set. On error the directory is left as it was.
    pub async fn refresh(&self) -> Result<RefreshReport, OnecError> {
        let started = Instant::now();
        let catalog_select = self.fields.catalog_select();
        let fields = &self.fields;
        let (catalog, contacts) = tokio::try_join!(
            self.read_all(&self.catalog_set, &catalog_select, "Ref_Key", |body| {
                rows::parse_catalog_page(body, fields)
            }),
            self.read_all(
                &self.contacts_set,
                CONTACTS_SELECT,
                "Ref_Key,LineNumber",
                rows::parse_contacts_page,
            ),
        )?;
        let directory = Arc::clone(&self.directory);
        let tag = self.settings_tag.clone();
        let built = tokio::task::spawn_blocking(move || build(&directory, catalog, contacts, &tag))
            .await
            .map_err(|e| OnecError::Build(e.to_string()))?;
        let Built {
            report,
            records,
            skipped,
        } = built;
        let (changed, unchanged) = match &report {
            Some(r) => (r.records - r.unchanged, r.unchanged),
            None => (0, records),
        };
        if report.is_some() {
            self.saver.save();
        }
        // Found callers are in the directory now; unknown ones may be too.
        self.live.forget_all();
        self.metrics.refresh_changed.set(changed as i64);
        self.metrics.refresh_unchanged.set(unchanged as i64);
        let elapsed = started.elapsed();
        self.metrics.refresh_seconds.observe(elapsed.as_secs_f64());
        Ok(RefreshReport {
            records,
            changed,
            unchanged,
            folders: skipped.folders,
            deleted: skipped.deleted,
            invalid: skipped.invalid,
            elapsed,
        })
    }

    /// Every row of `set`, page by page. A row that moved between pages
    /// while 1C was being read may come twice (callers keep one) or be
    /// missed until the next read.
    async fn read_all<T>(
        &self,
        set: &str,
        select: &str,
        order_by: &str,
        parse: impl Fn(&[u8]) -> Result<Vec<T>, String>,
    ) -> Result<Vec<T>, OnecError> {
        let top = self.page_size.to_string();
        let mut rows = Vec::new();
        loop {
            let skip = rows.len().to_string();
            let what = format!("{set} from row {skip}");
            let body = self
                .client
                .get(
                    set,
                    &[
                        ("$select", select),
                        ("$orderby", order_by),
                        ("$top", &top),
                        ("$skip", &skip),
                    ],
                    &what,
                    None,
                )
                .await?;
            let page = parse(&body).map_err(|cause| OdataError::Format { what, cause })?;
            let got = page.len();
            rows.extend(page);
            if rows.len() > MAX_ROWS {
                return Err(OnecError::TooManyRows { set: set.into() });
            }
            // A short page is the last; a page longer than asked means the
            // server ignored $top and sent everything.
            if got != self.page_size {
                return Ok(rows);
            }
        }
    }

    /// Reads 1C every `onec.refresh` (and on `reload`) until `shutdown`;
    /// after a failure, again after a backoff.
    pub async fn run(self, mut reload: watch::Receiver<u64>, mut shutdown: watch::Receiver<bool>) {
        let mut failures: u32 = 0;
        loop {
            let ok = tokio::select! {
                ok = self.refresh_and_report() => ok,
                _ = shutdown.changed() => break,
            };
            failures = if ok { 0 } else { failures.saturating_add(1) };
            let wait = if ok {
                self.refresh_every
            } else {
                backoff(failures, self.refresh_every.min(MAX_RETRY_WAIT))
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                changed = reload.changed() => {
                    if changed.is_err() {
                        break; // the gateway is gone
                    }
                    tracing::info!(source = SOURCE, "reload requested: reading 1C again");
                }
                _ = shutdown.changed() => break,
            }
        }
        self.saver.finish().await;
    }

    /// One refresh, with the health, the log and the metrics kept.
    async fn refresh_and_report(&self) -> bool {
        match self.refresh().await {
            Ok(r) => {
                if self.health.success(SOURCE) {
                    tracing::info!(source = SOURCE, "1C answers again; the directory is fresh");
                }
                tracing::info!(
                    source = SOURCE,
                    records = r.records,
                    changed = r.changed,
                    unchanged = r.unchanged,
                    folders = r.folders,
                    deleted = r.deleted,
                    invalid = r.invalid,
                    elapsed_ms = r.elapsed.as_millis() as u64,
                    "counterparties read from 1C"
                );
                true
            }
            Err(e) => {
                if self.health.failure(SOURCE, &e.to_string()) {
                    tracing::warn!(
                        source = SOURCE,
                        error = %e,
                        "reading 1C failed; the last directory keeps serving, retrying with backoff"
                    );
                }
                false
            }
        }
    }
}

/// The directory side of a full read.
struct Built {
    /// `None`: the content was what the directory already had.
    report: Option<ReplaceReport>,
    records: usize,
    skipped: rows::Skipped,
}

fn build(
    directory: &Directory,
    mut catalog: Vec<CatalogRow>,
    mut contacts: Vec<ContactRow>,
    settings_tag: &str,
) -> Built {
    // Rows that moved between pages during the read can come twice.
    let mut seen = HashSet::with_capacity(catalog.len());
    catalog.retain(|r| seen.insert(r.ref_key.clone()));
    drop(seen);
    let mut seen = HashSet::with_capacity(contacts.len());
    contacts.retain(|c| seen.insert((c.owner.clone(), c.line)));
    drop(seen);
    let (records, skipped) = rows::into_records(catalog, contacts);
    let fingerprint = fingerprint(settings_tag, &records);
    let current = directory.snapshot();
    let loaded = current.sources().find(|s| &*s.name == SOURCE);
    // The count too: a record removed through the push API leaves the
    // fingerprint as it was, and 1C, still listing it, brings it back.
    if loaded.is_some_and(|s| {
        s.fingerprint.as_deref() == Some(fingerprint.as_str()) && s.records == records.len()
    }) {
        return Built {
            report: None,
            records: records.len(),
            skipped,
        };
    }
    // Entries built under other settings are not reused.
    let same_settings = loaded
        .and_then(|s| s.fingerprint.as_deref())
        .is_some_and(|f| f.starts_with(settings_tag));
    drop(current);
    let count = records.len();
    let report = if same_settings {
        directory.replace_source(SOURCE, records, Some(fingerprint), SystemTime::now())
    } else {
        directory.replace_source_rebuilt(SOURCE, records, Some(fingerprint), SystemTime::now())
    };
    Built {
        report: Some(report),
        records: count,
        skipped,
    }
}

/// What a full read brought, in one string: the settings' tag, the count,
/// and a hash of every record's id and `DataVersion` (of its JSON when 1C
/// sent no `DataVersion`).
fn fingerprint(settings_tag: &str, records: &[Counterparty]) -> String {
    let mut h = std::hash::DefaultHasher::new();
    for r in records {
        h.write(r.id.as_bytes());
        match &r.data_version {
            Some(v) => h.write(v.as_bytes()),
            None => h.write(serde_json::to_string(r).unwrap_or_default().as_bytes()),
        }
    }
    format!("{settings_tag}-{}-{:016x}", records.len(), h.finish())
}

/// The wait before retry number `failures` (from 1): 1 s doubling up to
/// `cap`, each wait drawn between half and all of that ("equal jitter"), so
/// gateways that lost 1C together do not come back together.
pub(crate) fn backoff(failures: u32, cap: Duration) -> Duration {
    let exp = Duration::from_secs(1)
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(cap);
    // RandomState is seeded randomly per instance: enough randomness for jitter.
    let random = RandomState::new().build_hasher().finish();
    let fraction = 0.5 + (random % 1000) as f64 / 2000.0;
    exp.mul_f64(fraction)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let cap = Duration::from_secs(60);
        for (failures, full) in [(1, 1), (2, 2), (3, 4), (7, 60), (40, 60)] {
            let w = backoff(failures, cap);
            let full = Duration::from_secs(full);
            assert!(w >= full / 2 && w <= full, "retry {failures}: {w:?}");
        }
    }

    #[test]
    fn fingerprint_follows_versions_and_settings() {
        let r = |v: &str| Counterparty {
            id: "k".into(),
            name: "A".into(),
            full_name: None,
            inn: None,
            kpp: None,
            ogrn: None,
            category: None,
            manager_phone: None,
            manager_name: None,
            phones: vec![],
            emails: vec![],
            address: None,
            data_version: Some(v.into()),
        };
        assert_eq!(fingerprint("t", &[r("1")]), fingerprint("t", &[r("1")]));
        assert_ne!(fingerprint("t", &[r("1")]), fingerprint("t", &[r("2")]));
        assert_ne!(fingerprint("t", &[r("1")]), fingerprint("u", &[r("1")]));
    }
}
