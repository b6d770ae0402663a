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
//! - **Requisites** (with the sync store only): the director, the typed
//!   addresses and the bank details go to the sync store's `requisites`
//!   after each full read, never to the directory (see `requisites.rs`).
//! - **Live lookup** ([`LiveLookup`]): callers the directory lacks, asked of
//!   1C within `onec.lookup_budget_ms`.

mod live;
mod metrics;
/// The OData client: the source reads with it, the 1C writer (`sync::onec`) writes.
pub mod odata;
mod requisites;
/// Reachable in the crate for `crate::fuzzing` only.
pub(crate) mod rows;

pub use rows::{OnecManager, OnecUsers};

use std::collections::HashSet;
use std::hash::Hasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use super::backoff::Backoff;
use super::low_priority::LowPriority;
use super::{SnapshotSaver, SnapshotSavers, SourceHealth};
use crate::config::{ContactsLayout, OnecConfig};
use crate::directory::{Counterparty, Directory, ReplaceReport};
use crate::store::Store;
pub use live::LiveLookup;
use metrics::OnecMetrics;
pub(crate) use odata::OdataClient;
pub use odata::OdataError;
use requisites::Requisites;
use rows::{CatalogRow, ContactRow, FieldNames, CONTACTS_SELECT};

/// The name this source's records carry in the directory and the store.
pub const SOURCE: &str = "onec";
/// The low-priority thread that receives, parses and builds full reads.
const WORKER: &str = "cti-onec-read";

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

/// The stores the 1C source writes to.
pub struct OnecStores {
    /// 1C's own file: the snapshot of its records.
    pub snapshot: Store,
    /// The sync store, when there is one: the requisites go there.
    pub sync: Option<Store>,
}

pub struct OnecSource {
    /// The full read; it runs on `low`.
    reader: Arc<Reader>,
    refresh_every: Duration,
    health: Arc<SourceHealth>,
    metrics: Arc<OnecMetrics>,
    saver: Arc<SnapshotSaver>,
    live: LiveLookup,
    /// Receives and parses pages and builds the set, below the calls'
    /// priority; the payments poll runs here too.
    low: Arc<LowPriority>,
}

/// What a full read needs. It has an HTTP client of its own: its
/// connections live on the low-priority thread's runtime, the live
/// lookup's on the main one.
struct Reader {
    client: OdataClient,
    catalog_set: String,
    contacts_set: String,
    contacts_layout: ContactsLayout,
    fields: FieldNames,
    /// `$select` of the contact read (the tabular section's, or the register's).
    contacts_select: String,
    page_size: usize,
    /// With the sync store: what is written to its `requisites`.
    requisites: Option<Requisites>,
    /// A tag of the settings that shape records (field names): records read
    /// under other settings are rebuilt even when their `DataVersion` is the same.
    settings_tag: String,
    directory: Arc<Directory>,
    last_built: Mutex<Option<Outcome>>,
}

impl OnecSource {
    pub fn new(
        config: &OnecConfig,
        users: OnecUsers,
        directory: Arc<Directory>,
        stores: OnecStores,
        health: Arc<SourceHealth>,
        registry: &prometheus::Registry,
        savers: &SnapshotSavers,
    ) -> Result<OnecSource, OnecError> {
        let OnecStores {
            snapshot: store,
            sync: sync_store,
        } = stores;
        let metrics = Arc::new(OnecMetrics::register(registry)?);
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        let fields = FieldNames {
            category: non_empty(&config.category_field),
            manager_phone: non_empty(&config.manager_phone_field),
            ogrn: non_empty(&config.ogrn_field),
            code: non_empty(&config.code_field),
            kind: non_empty(&config.kind_field),
            manager_ref: non_empty(&config.manager_ref_field),
            // Requisites are read only where they can be kept.
            director: non_empty(&config.director_field).filter(|_| sync_store.is_some()),
            users: Arc::new(users),
        };
        let requisites =
            sync_store.and_then(|s| Requisites::new(config, s, Arc::clone(&directory)));
        let contacts_set = config.contacts_set();
        let register = config.contacts_layout == ContactsLayout::Register;
        if register {
            tracing::info!(
                source = SOURCE,
                contacts = %contacts_set,
                "onec.contacts_layout = \"register\": callers the directory lacks are not looked up live in 1C (the register keeps no digits-only number to search by)"
            );
        }
        let live = LiveLookup::new(
            Arc::new(OdataClient::new(config)?),
            live::LiveSettings {
                catalog_set: config.counterparties.clone(),
                contacts_set: contacts_set.clone(),
                enabled: !register,
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
            h.write(contacts_set.as_bytes());
            h.write(&[register as u8]);
            // What `rows.rs` makes of a row: a new version rebuilds records
            // whose rows are unchanged (2: ogrnip, code and kind).
            h.write(b"rows 2");
            h.write(fields.catalog_select().as_bytes());
            // Who each responsible user is: a changed [[manager]] rebuilds.
            if fields.manager_ref.is_some() {
                std::hash::Hash::hash(&*fields.users, &mut h);
            }
            format!("{:08x}", h.finish() as u32)
        };
        let contacts_select = {
            let (select, kind) = if register {
                (rows::REGISTER_SELECT, rows::REGISTER_KIND_FIELD)
            } else {
                (CONTACTS_SELECT, rows::SECTION_KIND_FIELD)
            };
            if requisites.as_ref().is_some_and(|r| r.reads_address_kinds()) {
                format!("{select},{kind}")
            } else {
                select.to_owned()
            }
        };
        let saver = Arc::new(SnapshotSaver::new(SOURCE, Arc::clone(&directory), store));
        savers.register(Arc::clone(&saver));
        Ok(OnecSource {
            reader: Arc::new(Reader {
                client: OdataClient::new(config)?,
                catalog_set: config.counterparties.clone(),
                contacts_set,
                contacts_layout: config.contacts_layout,
                page_size: config.page_size,
                settings_tag,
                fields,
                contacts_select,
                requisites,
                directory,
                last_built: Mutex::new(None),
            }),
            refresh_every: config.refresh,
            saver,
            health,
            metrics,
            live,
            low: Arc::new(LowPriority::start(WORKER).map_err(|e| OnecError::Build(e.to_string()))?),
        })
    }

    /// The low-priority worker full reads run on: what else reads 1C in
    /// bulk (the payments poll) runs there too, one read at a time.
    pub(crate) fn worker(&self) -> Arc<LowPriority> {
        Arc::clone(&self.low)
    }

    /// The live lookup for SayName and IncomingCall.
    pub fn live_lookup(&self) -> LiveLookup {
        self.live.clone()
    }

    /// Reads every counterparty from 1C and makes them the `onec` source's
    /// set. On error the directory is left as it was. The whole read
    /// (receiving, parsing, building) runs on the low-priority thread:
    /// calls come first.
    pub async fn refresh(&self) -> Result<RefreshReport, OnecError> {
        let started = Instant::now();
        let reader = Arc::clone(&self.reader);
        let Built { report, outcome } = self
            .low
            .run_future(WORKER, async move { reader.read().await })
            .await
            .map_err(|e| OnecError::Build(e.to_string()))??;
        let (changed, unchanged) = match &report {
            Some(r) => (r.records - r.unchanged, r.unchanged),
            None => (0, outcome.records),
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
            records: outcome.records,
            changed,
            unchanged,
            folders: outcome.skipped.folders,
            deleted: outcome.skipped.deleted,
            invalid: outcome.skipped.invalid,
            elapsed,
        })
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

impl Reader {
    /// One full read and build; runs on the low-priority thread.
    async fn read(&self) -> Result<Built, OnecError> {
        let catalog_select = self.fields.catalog_select();
        let fields = self.fields.clone();
        let contacts = async {
            match self.contacts_layout {
                ContactsLayout::Section => {
                    self.read_all(
                        &self.contacts_set,
                        &self.contacts_select,
                        "Ref_Key,LineNumber",
                        rows::parse_contacts_page,
                    )
                    .await
                }
                ContactsLayout::Register => {
                    let pages = self
                        .read_all(
                            &self.contacts_set,
                            &self.contacts_select,
                            rows::REGISTER_ORDER,
                            rows::parse_register_page,
                        )
                        .await?;
                    let mut rows: Vec<ContactRow> = pages.into_iter().flatten().collect();
                    rows::number_register_rows(&mut rows);
                    Ok(vec![rows])
                }
            }
        };
        let directory_rows = async {
            tokio::try_join!(
                self.read_all(&self.catalog_set, &catalog_select, "Ref_Key", move |body| {
                    rows::parse_catalog_page(body, &fields)
                }),
                contacts,
            )
        };
        // The bank catalogs are read alongside; their failure fails no read.
        let (read, accounts) = tokio::join!(directory_rows, self.read_accounts());
        let (catalog, contacts) = read?;
        let pending = self.requisites.as_ref().and_then(|r| {
            let accounts = match accounts {
                None => None,
                Some(result) => Some(r.banks_read(result)?),
            };
            Some(r.gather(&catalog, &contacts, accounts.as_ref()))
        });
        let last = self
            .last_built
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if self.fields.manager_ref.is_some() {
            self.directory
                .note_unmapped_users(SOURCE, unmapped_users(&catalog, &self.fields.users));
        }
        let before = self.directory.snapshot();
        let built = build(&self.directory, catalog, contacts, &self.settings_tag, last);
        *self.last_built.lock().unwrap_or_else(|p| p.into_inner()) = Some(built.outcome.clone());
        // After the directory took the records.
        if let (Some(r), Some(pending)) = (&self.requisites, pending) {
            r.write(pending).await;
        }
        // Records 1C deleted (gone from the read, or marked for deletion)
        // take their requisites with them.
        if let (Some(r), Some(_)) = (&self.requisites, &built.report) {
            let after = self.directory.snapshot();
            let gone: Vec<String> = before
                .source_records(SOURCE)
                .iter()
                .flat_map(|records| records.iter())
                .filter(|e| after.source_entry(SOURCE, e.id()).is_none())
                .map(|e| e.id().to_owned())
                .collect();
            r.remove(gone).await;
        }
        Ok(built)
    }

    /// With the sync store and `onec.bank_accounts`: the bank accounts with
    /// their banks joined, by owner; `None` when they are not read.
    async fn read_accounts(&self) -> Option<Result<requisites::AccountsByOwner, String>> {
        let sets = self.requisites.as_ref()?.bank_sets()?;
        let (accounts_select, banks_select) = (sets.accounts_select(), sets.banks_select());
        let read = async {
            tokio::try_join!(
                self.read_all(&sets.accounts_set, &accounts_select, "Ref_Key", |body| {
                    requisites::parse_accounts_page(body, &sets.account_fields)
                }),
                self.read_all(&sets.banks_set, &banks_select, "Ref_Key", |body| {
                    requisites::parse_banks_page(body, &sets.bank_fields)
                }),
            )
        };
        Some(
            read.await
                .map(|(accounts, banks)| {
                    requisites::join_accounts(
                        accounts.into_iter().flatten().collect(),
                        banks.into_iter().flatten().collect(),
                    )
                })
                .map_err(|e| e.to_string()),
        )
    }

    /// Every row of `set`, page by page, as the pages came. A row that
    /// moved between pages while 1C was being read may come twice (the
    /// build keeps one) or be missed until the next read.
    async fn read_all<T>(
        &self,
        set: &str,
        select: &str,
        order_by: &str,
        parse: impl Fn(&[u8]) -> Result<Vec<T>, String>,
    ) -> Result<Vec<Vec<T>>, OnecError> {
        let top = self.page_size.to_string();
        let mut pages = Vec::new();
        let mut rows = 0usize;
        loop {
            let skip = rows.to_string();
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
            rows += got;
            pages.push(page);
            if rows > MAX_ROWS {
                return Err(OnecError::TooManyRows { set: set.into() });
            }
            // A short page is the last; a page longer than asked means the
            // server ignored $top and sent everything.
            if got != self.page_size {
                return Ok(pages);
            }
        }
    }
}

/// What the last full read built: when 1C's rows are the same again, the
/// read ends there.
#[derive(Debug, Clone)]
struct Outcome {
    fingerprint: String,
    records: usize,
    skipped: rows::Skipped,
}

/// The directory side of a full read.
struct Built {
    /// `None`: the content was what the directory already had.
    report: Option<ReplaceReport>,
    outcome: Outcome,
}

fn build(
    directory: &Directory,
    catalog: Vec<Vec<CatalogRow>>,
    contacts: Vec<Vec<ContactRow>>,
    settings_tag: &str,
    last: Option<Outcome>,
) -> Built {
    let mut catalog: Vec<CatalogRow> = catalog.into_iter().flatten().collect();
    let mut contacts: Vec<ContactRow> = contacts.into_iter().flatten().collect();
    // Rows that moved between pages during the read can come twice.
    keep_first(&mut catalog, |r| (r.ref_key.as_str(), 0));
    keep_first(&mut contacts, |c| (c.owner.as_str(), c.line));
    // The directory holds what a read with this fingerprint built (a push
    // DELETE leaves the fingerprint but not the count).
    let loaded = |fingerprint: &str, records: usize| {
        directory
            .snapshot()
            .source(SOURCE)
            .is_some_and(|s| s.fingerprint.as_deref() == Some(fingerprint) && s.records == records)
    };
    // Every row's DataVersion as last time: nothing to do.
    let by_rows = rows_fingerprint(settings_tag, &catalog);
    if let (Some(print), Some(last)) = (&by_rows, &last) {
        if *print == last.fingerprint && loaded(print, last.records) {
            return Built {
                report: None,
                outcome: last.clone(),
            };
        }
    }
    let (records, skipped) = rows::into_records(catalog, contacts);
    let fingerprint = by_rows.unwrap_or_else(|| records_fingerprint(settings_tag, &records));
    let outcome = Outcome {
        fingerprint: fingerprint.clone(),
        records: records.len(),
        skipped,
    };
    if loaded(&fingerprint, records.len()) {
        return Built {
            report: None,
            outcome,
        };
    }
    // Entries built under other settings are not reused.
    let same_settings = directory
        .snapshot()
        .source(SOURCE)
        .and_then(|s| s.fingerprint.as_deref())
        .is_some_and(|f| f.starts_with(settings_tag));
    let faults = directory.check_requisites(SOURCE, &records);
    let report = if same_settings {
        directory.replace_source(SOURCE, records, Some(fingerprint), SystemTime::now())
    } else {
        directory.replace_source_rebuilt(SOURCE, records, Some(fingerprint), SystemTime::now())
    };
    directory.count_requisite_faults(SOURCE, &faults);
    super::log_requisite_faults(SOURCE, &faults);
    Built {
        report: Some(report),
        outcome,
    }
}

/// The responsible users (`onec.manager_ref_field`) of the read's records
/// that no `[[manager]] onec_user` maps; an empty reference (1C's
/// all-zero GUID) names nobody.
fn unmapped_users(catalog: &[Vec<CatalogRow>], users: &OnecUsers) -> HashSet<Box<str>> {
    catalog
        .iter()
        .flatten()
        .filter(|r| !r.is_folder && !r.deletion_mark)
        .map(|r| r.manager_ref.trim())
        .filter(|user| !user.is_empty() && user.chars().any(|c| c != '0' && c != '-'))
        .filter(|user| !users.contains_key(*user))
        .map(Into::into)
        .collect()
}

/// Keeps the first of the items with one key, in order, without copying keys.
fn keep_first<T>(items: &mut Vec<T>, key: impl for<'a> Fn(&'a T) -> (&'a str, u32)) {
    let keep: Vec<bool> = {
        let mut seen = HashSet::with_capacity(items.len());
        items.iter().map(|item| seen.insert(key(item))).collect()
    };
    let mut flags = keep.into_iter();
    items.retain(|_| flags.next().unwrap_or(true));
}

/// What 1C sent, by its change markers: the settings' tag, the number of
/// counterparty rows (not folders, not deletion-marked) and a hash of their
/// `Ref_Key` and `DataVersion`. `None` when a row has no `DataVersion`
/// (then only the records themselves tell a change).
fn rows_fingerprint(settings_tag: &str, catalog: &[CatalogRow]) -> Option<String> {
    let mut h = std::hash::DefaultHasher::new();
    let mut rows = 0usize;
    for row in catalog.iter().filter(|r| !r.is_folder && !r.deletion_mark) {
        h.write(row.ref_key.as_bytes());
        h.write_u8(0);
        h.write(row.data_version.as_deref()?.as_bytes());
        h.write_u8(0);
        rows += 1;
    }
    Some(format!("{settings_tag}-v{rows}-{:016x}", h.finish()))
}

/// What a full read brought when 1C sent no `DataVersion`: the settings'
/// tag, the count, and a hash of every record's id and JSON.
fn records_fingerprint(settings_tag: &str, records: &[Counterparty]) -> String {
    let mut h = std::hash::DefaultHasher::new();
    for r in records {
        h.write(r.id.as_bytes());
        h.write(serde_json::to_string(r).unwrap_or_default().as_bytes());
    }
    format!("{settings_tag}-{}-{:016x}", records.len(), h.finish())
}

/// The wait before retry number `failures` (from 1): 1 s doubling up to
/// `cap`, with equal jitter (see [`Backoff`]).
pub(crate) fn backoff(failures: u32, cap: Duration) -> Duration {
    Backoff::new(Duration::from_secs(1), cap).delay(failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_follows_versions_and_settings() {
        let row = |key: &str, v: Option<&str>| CatalogRow {
            ref_key: key.into(),
            data_version: v.map(Into::into),
            description: "A".into(),
            ..Default::default()
        };
        let print = |tag, rows: &[CatalogRow]| rows_fingerprint(tag, rows);
        let base = [row("k1", Some("1")), row("k2", Some("1"))];
        assert_eq!(print("t", &base), print("t", &base.clone()));
        assert_ne!(
            print("t", &base),
            print("t", &[row("k1", Some("2")), row("k2", Some("1"))])
        );
        assert_ne!(print("t", &base), print("u", &base));
        // Folders and deletion-marked rows are not counterparties.
        let mut with_folder = base.to_vec();
        with_folder.push(CatalogRow {
            is_folder: true,
            ..row("f", None)
        });
        assert_eq!(print("t", &base), print("t", &with_folder));
        // Without a DataVersion, rows cannot tell a change.
        assert_eq!(print("t", &[row("k1", None)]), None);
        // Key and version are hashed apart ("k1"+"2" is not "k"+"12").
        assert_ne!(
            print("t", &[row("k1", Some("2"))]),
            print("t", &[row("k", Some("12"))])
        );
    }

    #[test]
    fn keep_first_drops_later_repeats_in_order() {
        let mut items = vec![("a", 1), ("b", 2), ("a", 3), ("c", 4), ("b", 5), ("a", 1)];
        keep_first(&mut items, |i| (i.0, 0));
        assert_eq!(items, [("a", 1), ("b", 2), ("c", 4)]);
    }
}
