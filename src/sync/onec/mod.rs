//! 1C as a sync target: the writer (issue 19), system `onec` of the sync
//! runtime. It creates in 1C the counterparties a CRM (or the push API)
//! has and 1C lacks, never twice, over 1C's standard OData interface with
//! a write user of its own (`[sync.onec] write_username`/`write_password`;
//! the read user of `[onec]` stays read-only).
//!
//! - Create: 1C is searched by INN (and KPP, see [`body::dedupe_filter`]),
//!   `DeletionMark eq false and IsFolder eq false`, `$top=2`: none → a POST
//!   with the contact rows embedded; one → adopted (outcome `exists`, no
//!   write); two → nothing written, a `conflicts` row with both refs, the
//!   row dead. The same search is the runtime's lookup before a create
//!   ([`System::find_existing`]), so a timeout or a kill -9 after 1C's
//!   commit adopts what 1C holds instead of creating it again.
//! - Update: 1C's copy is read, the fields that differ are PATCHed; the
//!   contact rows are sent as the union of 1C's and ours (a row 1C has is
//!   never dropped). 404: the id-map's link is closed, a conflict says so,
//!   nothing is created again.
//! - Bank: the record's bank details (the sync store's requisites) give a
//!   BIK and an account: the bank is found in `Catalog_Банки` by BIK, the
//!   account POSTed to `Catalog_БанковскиеСчета` and made the main one. A
//!   BIK 1C lacks: no account, a conflict row says why.
//! - A remove is never sent: the gateway deletes nothing in an accounting
//!   base; the row is confirmed as it is.
//!
//! 1C's refusals become the runtime's outcomes ([`outcome_of`]): 400 (and
//! other 4xx) dead with 1C's message; 401/403 block the system, naming the
//! credentials or the rights; 5xx, timeouts and cut-off answers are retried.
//! Field names default to Бухгалтерия 3.0's (`docs/1c-writer.md`).
//!
//! Under `[sync.onec] transport = "pull"` no worker sends: 1C polls the
//! gateway for the rows and acknowledges them ([`pull`], its XML form
//! [`pull_xml`], `docs/1c-pull.md`).

pub mod body;
mod metrics;
pub mod payments;
pub mod pull;
pub mod pull_xml;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::{Map, Value};

use crate::config::{
    Config, ContactsLayout, DedupeKey as ConfigDedupeKey, OnecConfig, OnecSyncConfig, ONEC_SYSTEM,
};
use crate::directory::requisites;
use crate::directory::Counterparty;
use crate::sources::onec::odata::{OdataClient, OdataError};
use crate::store::{NewConflict, OutboxOp, Store};
use crate::sync::hash::CLOSED;
use crate::sync::inbound::Inbound;
use crate::sync::limiter::Limiter;
use crate::sync::registry::{DedupeKey, SystemSpec};
use crate::sync::system::{
    Attach, Outcome, OutgoingRow, Page, PublishedLimit, Remote, RemoteFuture, Report, System,
    Webhook, WebhookError, WriteOutcome,
};
use crate::sync::Feed;
use body::KindKeys;
pub use metrics::WriteMetrics;

/// The fields of the model the writer keeps in step: a change to another
/// (a manager, a category) is no write to 1C.
const FIELDS: &[&str] = &[
    "name",
    "full_name",
    "inn",
    "kpp",
    "ogrn",
    "ogrnip",
    "kind",
    "phones",
    "emails",
    "address",
];

/// 1C's published limit is none: five requests a second leaves an
/// accounting base's users their server (`[sync.onec] per_second`).
const PER_SECOND: u32 = 5;

/// The writer's limit: at most `per_second` requests in any 1 s, a sliding
/// window (over a window 2% longer, with room for the requests still on
/// their way: `Limiter::for_system`), which a
/// token bucket's catch-up burst cannot promise; a late timer wake-up
/// loses nothing either, the window only counting what was sent.
fn published() -> PublishedLimit {
    PublishedLimit::Window {
        requests: PER_SECOND,
        window: std::time::Duration::from_secs(1),
    }
}

/// One call's requests to 1C against the system's limiter: the worker took
/// a token before the call, for its first request; each further one takes
/// its own (a create with a bank account is a POST, a bank lookup, an
/// account's POST and a PATCH), so that 1C sees at most `per_second`
/// requests in any second, whatever a call sends.
struct Pace<'a> {
    limiter: Option<&'a Limiter>,
    prepaid: bool,
}

impl Pace<'_> {
    /// Waits until the next request may go.
    async fn request(&mut self) {
        if std::mem::take(&mut self.prepaid) {
            return;
        }
        if let Some(limiter) = self.limiter {
            limiter.acquire().await;
        }
    }
}

/// An empty reference, as 1C's OData shows an unset one.
const EMPTY_REF: &str = "00000000-0000-0000-0000-000000000000";

/// `Owner_Type` of a bank account owned by a counterparty (БП 3.0's
/// composite owner).
const OWNER_TYPE: &str = "StandardODATA.Catalog_Контрагенты";

/// The 1C writer.
pub struct OnecWriter {
    spec: SystemSpec,
    client: OdataClient,
    /// `onec.counterparties`, `onec.banks`, the bank accounts' set.
    counterparties: String,
    banks: String,
    accounts: String,
    account_fields: crate::config::BankAccountFields,
    settings: OnecSyncConfig,
    inn_only: bool,
    /// Whether contact rows go in the catalog's tabular section: not where
    /// the base keeps them in an information register (КА 1.1, УПП:
    /// `onec.contacts_layout = "register"`), which a catalog write cannot
    /// carry.
    contacts_in_section: bool,
    /// The contact kinds' keys, once looked up.
    kinds: tokio::sync::Mutex<Option<KindKeys>>,
    /// Rows whose record the lookup before their create found in 1C, with
    /// its `Code`: their send adopts it (outcome `exists`) and writes
    /// nothing but a missing bank account.
    adopted: Mutex<HashMap<i64, Option<String>>>,
    store: OnceLock<Store>,
    feed: OnceLock<Feed>,
    metrics: OnceLock<WriteMetrics>,
    /// The system's limiter, for the requests after a call's first.
    limiter: OnceLock<Arc<Limiter>>,
}

/// The systems this build sends to, from the configuration: the 1C writer
/// when `[sync.onec]` and `[onec]` are set and OData writes are on. The one
/// list `Gateway::start` and the CLI use.
pub fn systems(config: &Config) -> Vec<Arc<dyn System>> {
    let mut systems: Vec<Arc<dyn System>> = Vec::new();
    let pulled = config.sync.system(ONEC_SYSTEM).is_some_and(|t| t.pulled());
    if pulled {
        systems.push(Arc::new(Pulled::new(config)));
    } else if let Some(writer) = OnecWriter::from_config(config) {
        systems.push(Arc::new(writer));
    }
    systems
}

/// The `onec` system's registration and spec: the writer's and, under
/// pull, [`Pulled`]'s, so that the feed queues the same rows either way.
fn spec(config: &Config) -> SystemSpec {
    let inn_only = config
        .sync
        .system(ONEC_SYSTEM)
        .is_some_and(|t| t.dedupe_key == ConfigDedupeKey::Inn);
    let dedupe = if inn_only {
        DedupeKey::Inn
    } else {
        DedupeKey::InnKpp
    };
    // A fixed name and fixed fields: never refused.
    SystemSpec::new(ONEC_SYSTEM)
        .and_then(|s| s.with_fields(FIELDS))
        .map(|s| s.with_dedupe_key(dedupe).with_record_kind("counterparty"))
        .unwrap_or_else(|e| unreachable!("the 1C writer's spec: {e}"))
}

/// System `onec` under `[sync.onec] transport = "pull"`: registered so that
/// the feed queues the rows 1C is to create, while no worker sends them (the
/// runtime starts none for a pulled system): 1C leases and acknowledges them
/// through the pull endpoints ([`pull`]). It needs neither `[onec]` nor a
/// write user.
pub struct Pulled {
    spec: SystemSpec,
}

impl Pulled {
    pub fn new(config: &Config) -> Pulled {
        Pulled { spec: spec(config) }
    }
}

impl System for Pulled {
    fn spec(&self) -> &SystemSpec {
        &self.spec
    }

    fn published_limit(&self) -> PublishedLimit {
        // Not applied: 1C paces itself.
        published()
    }

    fn batch_size(&self) -> usize {
        1
    }

    fn send<'a>(&'a self, rows: &'a [OutgoingRow]) -> RemoteFuture<'a, Vec<Outcome>> {
        // No worker calls it under pull; should one, nothing is lost.
        Box::pin(async move {
            rows.iter()
                .map(|_| Outcome::Retry("transport = \"pull\": 1C fetches this row".into()))
                .collect()
        })
    }

    fn find_existing<'a>(
        &'a self,
        _row: &'a OutgoingRow,
    ) -> RemoteFuture<'a, Result<Option<Remote>, Outcome>> {
        // 1C checks by INN itself before it creates (docs/1c-pull.md).
        Box::pin(async { Ok(None) })
    }

    fn authenticate(&self, _hook: &Webhook<'_>) -> bool {
        false
    }

    fn parse(&self, _hook: &Webhook<'_>) -> Result<Vec<Inbound>, WebhookError> {
        Err(WebhookError {
            what:
                "1C sends no webhooks: under pull it acknowledges through /api/v1/exchange/onec/ack"
                    .into(),
        })
    }

    fn list<'a>(&'a self, _after: Option<&'a str>) -> RemoteFuture<'a, Result<Page, Outcome>> {
        Box::pin(async { Ok(Page::default()) })
    }
}

/// Why the 1C writer does not run under `config`, when `[sync.onec]` is set
/// and it does not; `None` when it runs or is not asked for. For the log
/// and `check-config`.
pub fn writer_off(config: &Config) -> Option<String> {
    let table = config.sync.system(ONEC_SYSTEM)?;
    if table.pulled() {
        // Not off: under pull 1C fetches the rows, no OData write is made.
        return None;
    }
    if config.onec.is_none() {
        return Some("1C writer off: [sync.onec] is set without [onec]".into());
    }
    (!config.sync.onec.writes_on()).then(|| {
        format!(
            "1C writer off: OData writes need sync.onec.write_username and sync.onec.write_password (or {} and {}), a 1C user of their own with the right to add counterparties; the read user stays read-only",
            crate::config::ENV_ONEC_WRITE_USERNAME,
            crate::config::ENV_ONEC_WRITE_PASSWORD
        )
    })
}

impl OnecWriter {
    /// The writer `config` asks for, if any (see [`writer_off`]).
    pub fn from_config(config: &Config) -> Option<OnecWriter> {
        let table = config.sync.system(ONEC_SYSTEM)?;
        let onec = config.onec.as_ref()?;
        if let Some(why) = writer_off(config) {
            tracing::warn!("{why}");
            return None;
        }
        let settings = config.sync.onec.clone();
        let client = match OdataClient::writer(
            onec,
            &settings.write_username,
            settings.write_password.clone(),
            table.timeout,
        ) {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, "1C writer off: its HTTP client could not be set up");
                return None;
            }
        };
        Some(OnecWriter::new(onec, settings, client, spec(config)))
    }

    fn new(
        onec: &OnecConfig,
        settings: OnecSyncConfig,
        client: OdataClient,
        spec: SystemSpec,
    ) -> OnecWriter {
        let accounts = if onec.bank_accounts.is_empty() {
            "Catalog_БанковскиеСчета".to_owned()
        } else {
            onec.bank_accounts.clone()
        };
        let inn_only = spec.dedupe_key() == DedupeKey::Inn;
        OnecWriter {
            spec,
            client,
            counterparties: onec.counterparties.clone(),
            banks: onec.banks.clone(),
            accounts,
            account_fields: onec.bank_account_fields.clone(),
            inn_only,
            settings,
            contacts_in_section: onec.contacts_layout == ContactsLayout::Section,
            kinds: tokio::sync::Mutex::new(None),
            adopted: Mutex::new(HashMap::new()),
            store: OnceLock::new(),
            feed: OnceLock::new(),
            metrics: OnceLock::new(),
            limiter: OnceLock::new(),
        }
    }

    /// The record's contact rows, or none where the base keeps contacts
    /// outside the catalog.
    fn contact_rows(&self, record: &Counterparty, kinds: &KindKeys) -> Vec<Map<String, Value>> {
        if self.contacts_in_section {
            body::contact_rows(record, kinds)
        } else {
            Vec::new()
        }
    }

    fn entity(&self, ref_key: &str) -> String {
        format!("{}(guid'{}')", self.counterparties, ref_key)
    }

    fn count(&self, op: &str, outcome: &str) {
        if let Some(metrics) = self.metrics.get() {
            metrics.write(op, outcome);
        }
    }

    /// Records a conflict; a store that refuses is logged (the row's own
    /// outcome says what happened anyway).
    async fn conflict(&self, conflict: NewConflict) {
        let Some(store) = self.store.get() else {
            tracing::warn!(record = %crate::logging::Escaped(&conflict.record_key), field = %conflict.field, "1C writer: a conflict not recorded: no sync store attached");
            return;
        };
        if let Err(e) = store.conflict_add(conflict).await {
            tracing::error!(error = %e, "1C writer: a conflict could not be recorded");
        }
    }

    /// The record a row carries, with its INN checked.
    fn record(row: &OutgoingRow) -> Result<(Counterparty, String), Outcome> {
        let record: Counterparty = serde_json::from_str(&row.body).map_err(|e| {
            Outcome::Permanent(format!("the outbox row is not a counterparty's JSON: {e}"))
        })?;
        let Some(inn) = record
            .inn
            .as_deref()
            .map(str::trim)
            .filter(|i| !i.is_empty())
        else {
            return Err(Outcome::Permanent(
                "no INN: 1C is searched by INN before a create (\"Проверка по ИНН\"), so a record without one is not written to 1C".into(),
            ));
        };
        if let Err(problem) = requisites::inn(inn) {
            return Err(Outcome::Permanent(format!(
                "the INN {inn:?} {problem}: not written to 1C"
            )));
        }
        let inn = inn.to_owned();
        Ok((record, inn))
    }

    /// 1C's counterparties with the record's INN (and KPP), at most two.
    async fn search(&self, row: &OutgoingRow) -> Result<Option<Remote>, Outcome> {
        let (record, inn) = Self::record(row).inspect_err(|_| self.count("create", "failed"))?;
        self.not_deleted_in_1c(row).await?;
        let filter = body::dedupe_filter(
            &inn,
            record.kpp.as_deref(),
            self.inn_only,
            &self.settings.fields,
        );
        let answer = self
            .client
            .get(
                &self.counterparties,
                &[
                    ("$filter", &filter),
                    ("$select", "Ref_Key,DataVersion,Code"),
                    ("$top", "2"),
                ],
                "the search by INN before a create",
                None,
            )
            .await
            .map_err(|e| set_outcome(e, &self.counterparties))?;
        let found = values(&answer, "the search by INN")?;
        match found.as_slice() {
            [] => Ok(None),
            [one] => {
                let remote = remote_of(one).ok_or_else(|| {
                    Outcome::Retry("1C's answer to the search by INN has no Ref_Key".into())
                })?;
                tracing::info!(record = %crate::logging::Escaped(&row.record_key), onec_ref = %remote.remote_id, code = %text(one, "Code"), "1C writer: 1C has the counterparty already (same INN): adopted, not created");
                self.count("create", "exists");
                if let Ok(mut adopted) = self.adopted.lock() {
                    adopted.insert(row.id, code_of(one));
                }
                Ok(Some(remote))
            }
            [first, second, ..] => {
                let refs = format!("{}, {}", text(first, "Ref_Key"), text(second, "Ref_Key"));
                self.conflict(NewConflict {
                    system: ONEC_SYSTEM.into(),
                    record_key: row.record_key.clone(),
                    field: "inn".into(),
                    ours: Some(inn.clone()),
                    theirs: Some(refs.clone()),
                    resolution: "not_created_two_in_1c".into(),
                })
                .await;
                self.count("create", "failed");
                Err(Outcome::Permanent(format!(
                    "1C has two or more counterparties with INN {inn}{} ({refs}): nothing written; merge them in 1C, then retry the row",
                    record
                        .kpp
                        .as_deref()
                        .filter(|_| !self.inn_only && inn.len() == 10)
                        .map(|k| format!(" and KPP {k}"))
                        .unwrap_or_default()
                )))
            }
        }
    }

    /// Refuses a create of a record whose link 1C's deletion closed (a
    /// change queued before the close): 1C deleted it; it is not made again.
    async fn not_deleted_in_1c(&self, row: &OutgoingRow) -> Result<(), Outcome> {
        let Some(store) = self.store.get() else {
            return Ok(());
        };
        match store
            .idmap_get(ONEC_SYSTEM, &row.kind, &row.record_key)
            .await
        {
            Ok(Some(link)) if link.closed_at.is_some() => Err(Outcome::Permanent(format!(
                "1C deleted counterparty {} this record was linked to: not created again",
                link.remote_id.unwrap_or_default()
            ))),
            Ok(_) => Ok(()),
            Err(e) => Err(Outcome::Retry(format!("the id-map could not be read: {e}"))),
        }
    }

    /// The contact kinds' `Вид_Key`s: configured GUIDs as they are, names
    /// looked up once by `PredefinedDataName`.
    async fn kind_keys(&self, pace: &mut Pace<'_>) -> Result<KindKeys, Outcome> {
        if !self.contacts_in_section {
            // No contact rows are written: no kinds needed.
            return Ok(KindKeys {
                phone: String::new(),
                email: String::new(),
                address: String::new(),
            });
        }
        let mut kinds = self.kinds.lock().await;
        if let Some(kinds) = kinds.as_ref() {
            return Ok(kinds.clone());
        }
        let wanted = &self.settings.kinds;
        let names = [&wanted.phone, &wanted.email, &wanted.address];
        let mut found: Vec<(String, String)> = Vec::new();
        if names.iter().any(|n| !is_guid(n)) {
            pace.request().await;
            let answer = self
                .client
                .get(
                    &wanted.catalog,
                    &[
                        ("$filter", "Predefined eq true"),
                        ("$select", "Ref_Key,PredefinedDataName"),
                    ],
                    "the contact kinds",
                    None,
                )
                .await
                .map_err(|e| set_outcome(e, &wanted.catalog))?;
            for row in values(&answer, "the contact kinds")? {
                found.push((text(&row, "PredefinedDataName"), text(&row, "Ref_Key")));
            }
        }
        let key = |name: &str| -> Result<String, Outcome> {
            if is_guid(name) {
                return Ok(name.to_owned());
            }
            found
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, k)| k.clone())
                .ok_or_else(|| {
                    Outcome::Blocked(format!(
                        "1C's {} has no predefined kind {name:?}: set [sync.onec.kinds] to this base's names or Вид_Key GUIDs (docs/1c-writer.md)",
                        wanted.catalog
                    ))
                })
        };
        let keys = KindKeys {
            phone: key(&wanted.phone)?,
            email: key(&wanted.email)?,
            address: key(&wanted.address)?,
        };
        *kinds = Some(keys.clone());
        Ok(keys)
    }

    /// The director's name and the first bank account (BIK, number) the
    /// sync store's requisites hold for `record_key`.
    async fn requisites(&self, record_key: &str) -> (Option<String>, Option<(String, String)>) {
        let Some(store) = self.store.get() else {
            return (None, None);
        };
        let body = match store.requisites_get(record_key).await {
            Ok(Some(body)) => body,
            Ok(None) => return (None, None),
            Err(e) => {
                tracing::warn!(error = %e, "1C writer: a record's requisites could not be read: written without director and bank");
                return (None, None);
            }
        };
        let Ok(body) = serde_json::from_str::<Value>(&body) else {
            return (None, None);
        };
        let director = body
            .get("director")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let bank = body
            .get("bank")
            .and_then(Value::as_array)
            .and_then(|banks| {
                banks.iter().find_map(|b| {
                    let bik = b.get("bik")?.as_str()?.trim();
                    let account = b.get("account")?.as_str()?.trim();
                    (!bik.is_empty() && !account.is_empty())
                        .then(|| (bik.to_owned(), account.to_owned()))
                })
            });
        (director, bank)
    }

    async fn send_one(&self, row: &OutgoingRow, pace: &mut Pace<'_>) -> Outcome {
        if row.op == OutboxOp::Remove {
            // Nothing is ever deleted in an accounting base.
            return match &row.remote_id {
                Some(remote_id) => {
                    Outcome::Confirmed(Remote::new(remote_id.clone(), row.remote_version.clone()))
                }
                None => Outcome::Permanent("a remove of a record 1C never held".into()),
            };
        }
        let adopted = self.adopted.lock().ok().and_then(|mut a| a.remove(&row.id));
        match (&row.remote_id, adopted) {
            (Some(remote_id), Some(code)) => {
                // Maybe our own create, committed in 1C before a crash
                // took its answer (and its bank step) away.
                self.adopted_bank(row, remote_id, pace).await;
                Outcome::Confirmed(Remote {
                    remote_id: remote_id.clone(),
                    remote_version: row.remote_version.clone(),
                    report: Some(Report {
                        outcome: WriteOutcome::Exists,
                        code,
                    }),
                })
            }
            (Some(remote_id), None) => self.update(row, remote_id, pace).await,
            (None, _) => self.create(row, pace).await,
        }
    }

    async fn create(&self, row: &OutgoingRow, pace: &mut Pace<'_>) -> Outcome {
        let (record, _inn) = match Self::record(row) {
            Ok(r) => r,
            Err(outcome) => return outcome,
        };
        let kinds = match self.kind_keys(pace).await {
            Ok(k) => k,
            Err(outcome) => return outcome,
        };
        let (director, bank) = self.requisites(&row.record_key).await;
        let note = body::comment(
            &self.settings.fields.comment,
            &record.id,
            source_of(&record.id),
        );
        let scalars = body::scalars(
            &record,
            &self.settings.fields,
            director.as_deref(),
            note.as_deref(),
        );
        let payload = body::create_body(&scalars, self.contact_rows(&record, &kinds));
        pace.request().await;
        let answer = match self
            .client
            .post(
                &self.counterparties,
                payload.to_string().as_bytes(),
                "a counterparty's create",
            )
            .await
        {
            Ok(answer) => answer,
            Err(e) => {
                let outcome = outcome_of(e);
                if !matches!(outcome, Outcome::Retry(_)) {
                    self.count("create", "failed");
                }
                return outcome;
            }
        };
        let created: Map<String, Value> = match serde_json::from_slice(&answer) {
            Ok(m) => m,
            Err(e) => {
                // 1C committed, most likely: the retry's search adopts it.
                return Outcome::Retry(format!("1C's answer to a create is not JSON: {e}"));
            }
        };
        let Some(mut remote) = remote_of(&created) else {
            return Outcome::Retry("1C's answer to a create has no Ref_Key".into());
        };
        remote.report = Some(Report {
            outcome: WriteOutcome::Created,
            code: code_of(&created),
        });
        self.count("create", "created");
        tracing::info!(record = %crate::logging::Escaped(&row.record_key), onec_ref = %remote.remote_id, code = %text(&created, "Code"), "1C writer: counterparty created");
        if let Some((bik, account)) = bank {
            self.bank(row, &remote.remote_id, &bik, &account, pace)
                .await;
        }
        Outcome::Confirmed(remote)
    }

    async fn update(&self, row: &OutgoingRow, remote_id: &str, pace: &mut Pace<'_>) -> Outcome {
        let (record, _inn) = match Self::record(row) {
            Ok(r) => r,
            Err(outcome) => return outcome,
        };
        let kinds = match self.kind_keys(pace).await {
            Ok(k) => k,
            Err(outcome) => return outcome,
        };
        let entity = self.entity(remote_id);
        pace.request().await;
        let current = match self
            .client
            .get(&entity, &[], "a counterparty's current copy", None)
            .await
        {
            Ok(answer) => answer,
            Err(OdataError::Status { status: 404, .. }) => return self.gone(row, remote_id).await,
            Err(e) => return self.failed_update(e),
        };
        let current: Map<String, Value> = match serde_json::from_slice(&current) {
            Ok(m) => m,
            Err(e) => {
                return Outcome::Retry(format!("1C's copy of the counterparty is not JSON: {e}"))
            }
        };
        let (director, _) = self.requisites(&row.record_key).await;
        let scalars = body::scalars(&record, &self.settings.fields, director.as_deref(), None);
        let Some(payload) =
            body::update_body(&current, &scalars, self.contact_rows(&record, &kinds))
        else {
            self.count("update", "exists");
            return Outcome::Confirmed(Remote {
                remote_id: remote_id.to_owned(),
                remote_version: current
                    .get("DataVersion")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                report: Some(Report {
                    outcome: WriteOutcome::Exists,
                    code: code_of(&current),
                }),
            });
        };
        pace.request().await;
        match self
            .client
            .patch(
                &entity,
                payload.to_string().as_bytes(),
                "a counterparty's update",
            )
            .await
        {
            Ok(answer) => {
                self.count("update", "updated");
                let version = serde_json::from_slice::<Map<String, Value>>(&answer)
                    .ok()
                    .and_then(|m| {
                        m.get("DataVersion")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                    });
                tracing::info!(record = %crate::logging::Escaped(&row.record_key), onec_ref = %remote_id, "1C writer: counterparty updated");
                Outcome::Confirmed(Remote {
                    remote_id: remote_id.to_owned(),
                    remote_version: version,
                    report: Some(Report {
                        outcome: WriteOutcome::Updated,
                        code: code_of(&current),
                    }),
                })
            }
            Err(OdataError::Status { status: 404, .. }) => self.gone(row, remote_id).await,
            Err(e) => self.failed_update(e),
        }
    }

    fn failed_update(&self, e: OdataError) -> Outcome {
        let outcome = outcome_of(e);
        if !matches!(outcome, Outcome::Retry(_)) {
            self.count("update", "failed");
        }
        outcome
    }

    /// 1C no longer has the linked counterparty: the link is closed (the
    /// feed sends the record no more), a conflict says so, nothing is
    /// created again.
    async fn gone(&self, row: &OutgoingRow, remote_id: &str) -> Outcome {
        self.count("update", "failed");
        // Nor is the record sent again: the feed's next change of it would
        // find no open link and ask for a create (told before the close,
        // as the inbound path does).
        if let Some(feed) = self.feed.get() {
            feed.note_hashes(ONEC_SYSTEM, vec![(row.record_key.as_str().into(), CLOSED)]);
        }
        if let Some(store) = self.store.get() {
            if let Err(e) = store
                .idmap_close(ONEC_SYSTEM, &row.kind, &row.record_key)
                .await
            {
                tracing::error!(error = %e, "1C writer: the link of a counterparty 1C deleted could not be closed");
            }
        }
        self.conflict(NewConflict {
            system: ONEC_SYSTEM.into(),
            record_key: row.record_key.clone(),
            field: "deleted".into(),
            ours: None,
            theirs: Some(remote_id.to_owned()),
            resolution: "link_closed".into(),
        })
        .await;
        Outcome::Permanent(format!(
            "1C no longer has counterparty {remote_id} (HTTP 404): the link is closed, nothing is created again"
        ))
    }

    /// Adds the record's bank account to the counterparty 1C just created
    /// and makes it the main one. The counterparty is created whatever
    /// becomes of this: a failure is logged and recorded as a conflict.
    async fn bank(
        &self,
        row: &OutgoingRow,
        owner: &str,
        bik: &str,
        account: &str,
        pace: &mut Pace<'_>,
    ) {
        let result = self.bank_inner(owner, bik, account, pace).await;
        self.bank_done(row, owner, bik, account, result.map(|()| "created"))
            .await;
    }

    /// After an adoption (a create 1C committed before a crash, or a
    /// counterparty 1C had already): the record's account unless 1C's
    /// counterparty has one with its number (never two accounts with one
    /// number), made the main one unless the counterparty has one.
    async fn adopted_bank(&self, row: &OutgoingRow, owner: &str, pace: &mut Pace<'_>) {
        let (_, Some((bik, account))) = self.requisites(&row.record_key).await else {
            return;
        };
        let result = self.ensure_account(owner, &bik, &account, pace).await;
        self.bank_done(row, owner, &bik, &account, result).await;
    }

    /// The adopted counterparty's account with `account`'s number, created
    /// if 1C lacks it; made the main one where there is none. `created` or
    /// `exists`.
    async fn ensure_account(
        &self,
        owner: &str,
        bik: &str,
        account: &str,
        pace: &mut Pace<'_>,
    ) -> Result<&'static str, String> {
        let f = &self.account_fields;
        // `Owner` is a composite reference (`Owner_Type`): 1C compares it
        // with a `cast` to the owner's type (platform 8.3.8 and later).
        let filter = format!(
            "{} eq cast(guid'{}', '{}') and {} eq '{}' and DeletionMark eq false",
            f.owner,
            body::quote(owner),
            body::quote(&self.counterparties),
            f.number,
            body::quote(account)
        );
        pace.request().await;
        let answer = self
            .client
            .get(
                &self.accounts,
                &[("$filter", &filter), ("$select", "Ref_Key"), ("$top", "1")],
                "the counterparty's bank account by number",
                None,
            )
            .await
            .map_err(|e| e.to_string())?;
        let found = values(&answer, "the bank account by number").map_err(|_| {
            "1C's answer to the bank account by number is not an OData list".to_owned()
        })?;
        let (account_key, outcome) = match found.first() {
            Some(existing) => (text(existing, "Ref_Key"), "exists"),
            None => (
                self.create_account(owner, bik, account, pace).await?,
                "created",
            ),
        };
        let main = &self.settings.fields.main_bank_account;
        if main.is_empty() || account_key.is_empty() {
            return Ok(outcome);
        }
        pace.request().await;
        let current = self
            .client
            .get(
                &self.entity(owner),
                &[("$select", main)],
                "the counterparty's main bank account",
                None,
            )
            .await
            .map_err(|e| e.to_string())?;
        let current: Map<String, Value> = serde_json::from_slice(&current)
            .map_err(|e| format!("1C's answer to the main bank account: {e}"))?;
        let has_main = current
            .get(main)
            .and_then(Value::as_str)
            .is_some_and(|key| !key.is_empty() && key != EMPTY_REF);
        if !has_main {
            self.make_main(owner, &account_key, pace).await?;
        }
        Ok(outcome)
    }

    /// Counts what the bank step came to; a failure is logged and recorded
    /// as a conflict (the counterparty stays created or adopted).
    async fn bank_done(
        &self,
        row: &OutgoingRow,
        owner: &str,
        bik: &str,
        account: &str,
        result: Result<&'static str, String>,
    ) {
        let (outcome, why) = match result {
            Ok(outcome) => (outcome, None),
            Err(why) => ("failed", Some(why)),
        };
        self.count("bank", outcome);
        if let Some(why) = why {
            tracing::warn!(record = %crate::logging::Escaped(&row.record_key), onec_ref = %owner, reason = %crate::logging::Escaped(&why), "1C writer: the bank account was not written");
            self.conflict(NewConflict {
                system: ONEC_SYSTEM.into(),
                record_key: row.record_key.clone(),
                field: "bank".into(),
                ours: Some(format!("{bik} {account}")),
                theirs: None,
                resolution: why,
            })
            .await;
        }
    }

    async fn bank_inner(
        &self,
        owner: &str,
        bik: &str,
        account: &str,
        pace: &mut Pace<'_>,
    ) -> Result<(), String> {
        let account_key = self.create_account(owner, bik, account, pace).await?;
        self.make_main(owner, &account_key, pace).await
    }

    /// The bank found by BIK, the account POSTed: its `Ref_Key`.
    async fn create_account(
        &self,
        owner: &str,
        bik: &str,
        account: &str,
        pace: &mut Pace<'_>,
    ) -> Result<String, String> {
        let filter = format!("{} eq '{}'", self.settings.bank_bik_field, body::quote(bik));
        pace.request().await;
        let answer = self
            .client
            .get(
                &self.banks,
                &[("$filter", &filter), ("$select", "Ref_Key"), ("$top", "1")],
                "the bank by BIK",
                None,
            )
            .await
            .map_err(|e| e.to_string())?;
        let banks = values(&answer, "the bank by BIK")
            .map_err(|_| "1C's answer to the bank by BIK is not JSON".to_owned())?;
        let Some(bank) = banks.first() else {
            return Err(format!(
                "bank_not_in_1c: 1C's {} has no bank with BIK {bik}: no account written (add the bank in 1C)",
                self.banks
            ));
        };
        let bank_key = text(bank, "Ref_Key");
        let f = &self.account_fields;
        let mut payload = Map::new();
        payload.insert(f.owner.clone(), owner.into());
        payload.insert(format!("{}_Type", f.owner), OWNER_TYPE.into());
        payload.insert(f.number.clone(), account.into());
        payload.insert("Description".into(), account.into());
        payload.insert(f.bank.clone(), bank_key.into());
        pace.request().await;
        let created = self
            .client
            .post(
                &self.accounts,
                Value::Object(payload).to_string().as_bytes(),
                "a bank account's create",
            )
            .await
            .map_err(|e| e.to_string())?;
        let created: Map<String, Value> = serde_json::from_slice(&created)
            .map_err(|e| format!("1C's answer to the account's create: {e}"))?;
        Ok(text(&created, "Ref_Key"))
    }

    /// Makes `account_key` the counterparty's main account (where the
    /// configuration names the field).
    async fn make_main(
        &self,
        owner: &str,
        account_key: &str,
        pace: &mut Pace<'_>,
    ) -> Result<(), String> {
        let main = &self.settings.fields.main_bank_account;
        if main.is_empty() || account_key.is_empty() {
            return Ok(());
        }
        let mut patch = Map::new();
        patch.insert(main.clone(), account_key.into());
        pace.request().await;
        self.client
            .patch(
                &self.entity(owner),
                Value::Object(patch).to_string().as_bytes(),
                "the main bank account",
            )
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// The source named by a record's id (`bitrix24:company:1` → `bitrix24`),
/// for the comment's `{source}`.
fn source_of(id: &str) -> &str {
    id.split(':').next().unwrap_or(id)
}

/// The rows of an OData list answer.
fn values(answer: &[u8], what: &str) -> Result<Vec<Map<String, Value>>, Outcome> {
    #[derive(serde::Deserialize)]
    struct List {
        value: Vec<Map<String, Value>>,
    }
    serde_json::from_slice::<List>(answer)
        .map(|l| l.value)
        .map_err(|e| Outcome::Retry(format!("1C's answer to {what} is not an OData list: {e}")))
}

/// A string property of an entity, or "".
fn text(entity: &Map<String, Value>, name: &str) -> String {
    entity
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn remote_of(entity: &Map<String, Value>) -> Option<Remote> {
    let remote_id = entity.get("Ref_Key")?.as_str()?.to_owned();
    Some(Remote::new(
        remote_id,
        entity
            .get("DataVersion")
            .and_then(Value::as_str)
            .map(str::to_owned),
    ))
}

/// An entity's `Code`, if it has a non-empty one.
fn code_of(entity: &Map<String, Value>) -> Option<String> {
    entity
        .get("Code")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
}

fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// [`outcome_of`] for a read of a whole entity set, which every row needs:
/// a 404 there is the set missing from the base's OData composition (or a
/// configured name it lacks), no fault of the row's: the writer is blocked
/// until someone publishes it or fixes the name.
fn set_outcome(e: OdataError, set: &str) -> Outcome {
    match e {
        OdataError::Status { status: 404, .. } => Outcome::Blocked(format!(
            "1C has no entity set {set} ({e}): add it to the base's OData composition, or name the base's own in the configuration (docs/1c-writer.md)"
        )),
        other => outcome_of(other),
    }
}

/// What the runtime does with a failed request to 1C.
pub fn outcome_of(e: OdataError) -> Outcome {
    match e {
        OdataError::Unauthorized { .. } => Outcome::Blocked(e.to_string()),
        OdataError::Status { status: 403, ref message, .. } => Outcome::Blocked(format!(
            "1C refused the write (HTTP 403: {message}): the user sync.onec.write_username lacks the right to add or change counterparties (a role with \"Добавление\" and \"Изменение\" of the catalog over OData)"
        )),
        OdataError::Status { status: 429, .. } => Outcome::Limited { retry_after: None },
        OdataError::Status { status, .. } if (400..500).contains(&status) && status != 408 => {
            Outcome::Permanent(e.to_string())
        }
        OdataError::Status { .. }
        | OdataError::Timeout { .. }
        | OdataError::Transport { .. }
        | OdataError::Format { .. }
        | OdataError::TooLarge { .. } => Outcome::Retry(e.to_string()),
    }
}

impl System for OnecWriter {
    fn spec(&self) -> &SystemSpec {
        &self.spec
    }

    fn published_limit(&self) -> PublishedLimit {
        published()
    }

    fn batch_size(&self) -> usize {
        1
    }

    fn reports_outcomes(&self) -> bool {
        true
    }

    fn send<'a>(&'a self, rows: &'a [OutgoingRow]) -> RemoteFuture<'a, Vec<Outcome>> {
        Box::pin(async move {
            let mut outcomes = Vec::with_capacity(rows.len());
            // The worker took the token of the call's first request.
            let mut pace = Pace {
                limiter: self.limiter.get().map(|l| &**l),
                prepaid: true,
            };
            for row in rows {
                outcomes.push(self.send_one(row, &mut pace).await);
            }
            outcomes
        })
    }

    fn find_existing<'a>(
        &'a self,
        row: &'a OutgoingRow,
    ) -> RemoteFuture<'a, Result<Option<Remote>, Outcome>> {
        Box::pin(async move {
            if row.op == OutboxOp::Remove {
                return Ok(None);
            }
            // One request: the token the worker took before the call.
            self.search(row).await
        })
    }

    fn authenticate(&self, _hook: &Webhook<'_>) -> bool {
        // 1C sends no webhooks: its changes come through the `onec` source.
        false
    }

    fn parse(&self, _hook: &Webhook<'_>) -> Result<Vec<Inbound>, WebhookError> {
        Err(WebhookError {
            what: "1C sends no webhooks to the writer".into(),
        })
    }

    fn list<'a>(&'a self, _after: Option<&'a str>) -> RemoteFuture<'a, Result<Page, Outcome>> {
        // 1C's records are the `onec` source's: read there, not relinked here.
        Box::pin(async { Ok(Page::default()) })
    }

    fn attach(&self, parts: &Attach<'_>) {
        let _ = self.store.set(parts.store.clone());
        if let Some(limiter) = parts.limiter {
            let _ = self.limiter.set(Arc::clone(limiter));
        }
        if let Some(feed) = parts.feed {
            let _ = self.feed.set(feed.clone());
        }
        match WriteMetrics::new(parts.registry) {
            Ok(metrics) => {
                let _ = self.metrics.set(metrics);
            }
            Err(e) => {
                tracing::error!(error = %e, "1C writer: cti_onec_writes_total not registered")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> OdataError {
        OdataError::Status {
            status,
            what: "a create".into(),
            code: Some("-1".into()),
            message: "Поле ИНН заполнено неверно".into(),
        }
    }

    #[test]
    fn each_error_class_is_the_runtime_s_outcome() {
        assert!(
            matches!(outcome_of(status(400)), Outcome::Permanent(m) if m.contains("Поле ИНН заполнено неверно"))
        );
        assert!(
            matches!(outcome_of(status(403)), Outcome::Blocked(m) if m.contains("write_username"))
        );
        assert!(matches!(
            outcome_of(OdataError::Unauthorized { what: "a create".into(), credentials: "sync.onec.write_password" }),
            Outcome::Blocked(m) if m.contains("sync.onec.write_password")
        ));
        assert!(matches!(outcome_of(status(500)), Outcome::Retry(_)));
        assert!(matches!(outcome_of(status(503)), Outcome::Retry(_)));
        assert!(matches!(outcome_of(status(429)), Outcome::Limited { .. }));
        assert!(matches!(
            outcome_of(OdataError::Format {
                what: "a create".into(),
                cause: "cut off".into()
            }),
            Outcome::Retry(_)
        ));
    }

    #[test]
    fn the_writer_is_named_as_1c_s_source_so_the_feed_never_sends_1c_its_own() {
        // The feed skips a system's own source's records by name.
        assert_eq!(crate::sources::onec::SOURCE, ONEC_SYSTEM);
    }

    #[test]
    fn a_set_1c_does_not_publish_blocks_rather_than_killing_rows() {
        let missing = OdataError::Status {
            status: 404,
            what: "the contact kinds".into(),
            code: Some("-1".into()),
            message: "Не найден набор сущностей".into(),
        };
        assert!(matches!(
            set_outcome(missing, "Catalog_ВидыКонтактнойИнформации"),
            Outcome::Blocked(m) if m.contains("Catalog_ВидыКонтактнойИнформации")
        ));
        assert!(matches!(set_outcome(status(500), "X"), Outcome::Retry(_)));
    }

    #[test]
    fn a_record_without_a_valid_inn_is_refused_saying_so() {
        let row = |body: &str| OutgoingRow {
            id: 1,
            kind: "counterparty".into(),
            record_key: "push:1".into(),
            op: OutboxOp::Upsert,
            body: body.into(),
            remote_id: None,
            remote_version: None,
        };
        let no_inn = OnecWriter::record(&row(r#"{"id":"push:1","name":"A"}"#));
        assert!(matches!(no_inn, Err(Outcome::Permanent(m)) if m.starts_with("no INN")));
        let bad = OnecWriter::record(&row(r#"{"id":"push:1","name":"A","inn":"7707083894"}"#));
        assert!(matches!(bad, Err(Outcome::Permanent(m)) if m.contains("7707083894")));
        assert!(
            OnecWriter::record(&row(r#"{"id":"push:1","name":"A","inn":"7707083893"}"#)).is_ok()
        );
    }
}
