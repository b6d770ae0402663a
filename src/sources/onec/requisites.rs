//! What 1C says of a counterparty's requisites beyond the directory's model
//! (the director, the legal and actual addresses, the bank details), written
//! to the sync store's `requisites` table, never to the directory's memory
//! (issue 17: the directory holds 830–967 MB at a million records already).
//!
//! Read only when the sync store exists: then a full read also asks for the
//! director's field (`onec.director_field`), the contact kind of each
//! contact row (`Вид_Key`, the register's `Вид`), and the bank accounts
//! (`onec.bank_accounts`, `Catalog_БанковскиеСчета`) with the banks they
//! refer to (`onec.banks`, `Catalog_Банки`). Without it no field and no
//! request more than before.
//!
//! A record's body is written only when it differs from what this process
//! wrote last: a hash per id is kept in memory (16 bytes of payload per
//! record, the id itself hashed too: about 35 MB at a million records), not
//! the body, and not compared with `requisites_get` (a read per record per
//! refresh, or every body loaded at start). Two ids whose hashes collide
//! only cost their bodies being written at every read. After a restart every
//! body is written once more, in chunks, on the low-priority reader.
//!
//! Nothing here fails or holds up the directory: it runs after the
//! directory took the read's records; a bank catalog that cannot be read or
//! a sync store that refuses is logged once per state and tried again at
//! the next read (what was not written is not remembered as written).

use std::collections::HashMap;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::{Deserializer, Serialize};

use super::rows::{self, CatalogRow, ContactRow, Flag, Text};
use super::SOURCE;
use crate::config::{BankAccountFields, BankFields, OnecConfig};
use crate::directory::requisites::check_bank;
use crate::directory::Directory;
use crate::store::Store;

/// Bodies per `requisites_put` (one transaction each).
const CHUNK: usize = 1_000;
/// Longest one chunk may wait for the sync store before this read gives up
/// writing (the next read tries again).
const PUT_TIMEOUT: Duration = Duration::from_secs(30);
/// Most bank accounts kept per record: a bound on a body's size.
const MAX_BANK_ACCOUNTS: usize = 16;

/// The bank catalogs and their field names.
#[derive(Debug, Clone)]
pub(super) struct BankSets {
    pub accounts_set: String,
    pub banks_set: String,
    pub account_fields: BankAccountFields,
    pub bank_fields: BankFields,
}

impl BankSets {
    /// `$select` of a bank accounts read: the key (for the order),
    /// `DeletionMark`, owner, number, bank.
    pub fn accounts_select(&self) -> String {
        let f = &self.account_fields;
        format!("Ref_Key,DeletionMark,{},{},{}", f.owner, f.number, f.bank)
    }

    /// `$select` of a banks read.
    pub fn banks_select(&self) -> String {
        let f = &self.bank_fields;
        format!("Ref_Key,{},{},{}", f.bik, f.name, f.corr_account)
    }
}

/// One bank's details as stored (only what was read).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(super) struct BankDetails {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bik: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub corr_account: Option<String>,
}

/// A record's requisites body: `{director, legal_address, actual_address,
/// bank: [{name, bik, account, corr_account}]}`, only what was read.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
struct Body {
    #[serde(skip_serializing_if = "Option::is_none")]
    director: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    legal_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    actual_address: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    bank: Vec<BankDetails>,
}

impl Body {
    fn is_empty(&self) -> bool {
        *self == Body::default()
    }
}

/// Bank accounts by owner (`Ref_Key` of the counterparty), banks joined.
pub(super) type AccountsByOwner = HashMap<String, Vec<BankDetails>>;

/// A body to write, gathered from the rows before the build took them.
pub(super) struct Pending {
    id: String,
    id_hash: u64,
    body_hash: u64,
    json: String,
    /// The failing fields of its bank details.
    bank_problems: Vec<&'static str>,
    first_problem: Option<String>,
}

/// The requisites side of the 1C reader; exists only with a sync store.
pub(super) struct Requisites {
    store: Store,
    directory: Arc<Directory>,
    legal_kind: Option<String>,
    actual_kind: Option<String>,
    banks: Option<BankSets>,
    /// Hash of an id → hash of the body last written for it.
    written: Mutex<HashMap<u64, u64>>,
    /// Whether the sync store refused the last write (logged once per state).
    store_failing: AtomicBool,
    /// Whether the bank catalogs failed the last read (logged once per state).
    banks_failing: AtomicBool,
}

impl Requisites {
    /// `None` when no requisites key is set: then nothing is gathered.
    pub fn new(config: &OnecConfig, store: Store, directory: Arc<Directory>) -> Option<Requisites> {
        let non_empty = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_ascii_lowercase());
        let configured = [
            &config.director_field,
            &config.legal_address_kind,
            &config.actual_address_kind,
            &config.bank_accounts,
        ];
        if configured.iter().all(|key| key.trim().is_empty()) {
            return None;
        }
        Some(Requisites {
            store,
            directory,
            legal_kind: non_empty(&config.legal_address_kind),
            actual_kind: non_empty(&config.actual_address_kind),
            banks: (!config.bank_accounts.is_empty()).then(|| BankSets {
                accounts_set: config.bank_accounts.clone(),
                banks_set: config.banks.clone(),
                account_fields: config.bank_account_fields.clone(),
                bank_fields: config.bank_fields.clone(),
            }),
            written: Mutex::new(HashMap::new()),
            store_failing: AtomicBool::new(false),
            banks_failing: AtomicBool::new(false),
        })
    }

    /// Whether contact rows are asked for their kind (typed addresses).
    pub fn reads_address_kinds(&self) -> bool {
        self.legal_kind.is_some() || self.actual_kind.is_some()
    }

    /// The bank catalogs to read, if configured.
    pub fn bank_sets(&self) -> Option<&BankSets> {
        self.banks.as_ref()
    }

    /// Notes how reading the bank catalogs went; `None` means not read.
    /// On failure this read writes no requisites (they would lose the bank
    /// details); logged once until a read succeeds.
    pub fn banks_read(&self, result: Result<AccountsByOwner, String>) -> Option<AccountsByOwner> {
        match result {
            Ok(accounts) => {
                if self.banks_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(
                        source = SOURCE,
                        "1C's bank accounts are read again; requisites are written again"
                    );
                }
                Some(accounts)
            }
            Err(e) => {
                if !self.banks_failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        source = SOURCE,
                        error = %e,
                        "reading 1C's bank accounts failed (check onec.bank_accounts, onec.banks and their fields): the directory is read as usual, requisites are not written until they are read"
                    );
                }
                None
            }
        }
    }

    /// The bodies that differ from what was written last, from the read's
    /// rows (duplicates across pages give the same body twice: harmless).
    pub fn gather(
        &self,
        catalog: &[Vec<CatalogRow>],
        contacts: &[Vec<ContactRow>],
        accounts: Option<&AccountsByOwner>,
    ) -> Vec<Pending> {
        let addresses = self.addresses(
            contacts
                .iter()
                .flatten()
                .chain(catalog.iter().flatten().flat_map(|r| r.contacts.iter())),
        );
        let written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        let mut pending = Vec::new();
        for row in catalog.iter().flatten() {
            if row.is_folder || row.deletion_mark {
                continue;
            }
            let id_hash = hash_of(row.ref_key.as_bytes());
            let (legal_address, actual_address) = match addresses.get(row.ref_key.as_str()) {
                Some(a) => (
                    a.legal.as_ref().map(|(_, t)| t.clone()),
                    a.actual.as_ref().map(|(_, t)| t.clone()),
                ),
                None => (None, None),
            };
            let body = Body {
                director: some(&row.director),
                legal_address,
                actual_address,
                bank: accounts
                    .and_then(|a| a.get(&row.ref_key))
                    .cloned()
                    .unwrap_or_default(),
            };
            let last = written.get(&id_hash).copied();
            // A record never written with nothing to say is not written.
            if body.is_empty() && last.is_none() {
                continue;
            }
            let json = serde_json::to_string(&body).unwrap_or_default();
            let body_hash = hash_of(json.as_bytes());
            if last == Some(body_hash) {
                continue;
            }
            let problems: Vec<_> = body
                .bank
                .iter()
                .flat_map(|b| {
                    let text = |v: &Option<String>| v.clone().unwrap_or_default();
                    check_bank(&text(&b.bik), &text(&b.account), &text(&b.corr_account))
                })
                .collect();
            pending.push(Pending {
                id: row.ref_key.clone(),
                id_hash,
                body_hash,
                json,
                bank_problems: problems.iter().map(|p| p.field).collect(),
                first_problem: problems.first().map(ToString::to_string),
            });
        }
        pending
    }

    /// Writes `pending` in chunks, remembers what was written, counts the
    /// bank details failing their check. Never fails: a refusing store is
    /// logged once and the rest waits for the next read.
    pub async fn write(&self, pending: Vec<Pending>) {
        let mut invalid: Vec<&'static str> = Vec::new();
        let mut faulty = 0usize;
        let mut first: Option<String> = None;
        let mut written = 0usize;
        let mut rest = pending.into_iter().peekable();
        while rest.peek().is_some() {
            let chunk: Vec<Pending> = rest.by_ref().take(CHUNK).collect();
            let entries = chunk
                .iter()
                .map(|p| (p.id.clone(), p.json.clone()))
                .collect();
            let put = tokio::time::timeout(PUT_TIMEOUT, self.store.requisites_put(entries)).await;
            let failure = match put {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!(
                    "the sync store took longer than {PUT_TIMEOUT:?} to write requisites"
                )),
            };
            if let Some(error) = failure {
                self.store_failed(&error);
                break;
            }
            if self.store_failing.swap(false, Ordering::Relaxed) {
                tracing::info!(
                    source = SOURCE,
                    "1C's requisites are written to the sync store again"
                );
            }
            let mut hashes = self.written.lock().unwrap_or_else(|p| p.into_inner());
            for p in chunk {
                hashes.insert(p.id_hash, p.body_hash);
                written += 1;
                if !p.bank_problems.is_empty() {
                    faulty += 1;
                    if first.is_none() {
                        first = p
                            .first_problem
                            .map(|problem| format!("id {:?}: {problem}", p.id));
                    }
                    invalid.extend(p.bank_problems);
                }
            }
        }
        if !invalid.is_empty() {
            self.directory.count_invalid_requisites(SOURCE, &invalid);
            tracing::warn!(
                source = SOURCE,
                records = faulty,
                first = first.as_deref().unwrap_or_default(),
                "bank details failing their check were stored (the records answer; they will not be synced until corrected)"
            );
        }
        if written > 0 {
            tracing::debug!(
                source = SOURCE,
                records = written,
                "requisites written to the sync store"
            );
        }
    }

    /// Deletes the requisites of `ids` (records 1C deleted) in chunks and
    /// forgets what was written for them. Never fails: a refusing store is
    /// logged once per state; the bodies stay until a later read removes
    /// other ids (an orphan body is never read: no record has its id).
    pub async fn remove(&self, ids: Vec<String>) {
        let mut removed = 0usize;
        let mut rest = ids.into_iter().peekable();
        while rest.peek().is_some() {
            let chunk: Vec<String> = rest.by_ref().take(CHUNK).collect();
            let hashes: Vec<u64> = chunk.iter().map(|id| hash_of(id.as_bytes())).collect();
            let delete =
                tokio::time::timeout(PUT_TIMEOUT, self.store.requisites_delete(chunk)).await;
            match delete {
                Ok(Ok(n)) => removed += n,
                Ok(Err(e)) => return self.store_failed(&e.to_string()),
                Err(_) => {
                    return self.store_failed(&format!(
                        "the sync store took longer than {PUT_TIMEOUT:?} to delete requisites"
                    ))
                }
            }
            let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
            for hash in hashes {
                written.remove(&hash);
            }
        }
        if removed > 0 {
            tracing::debug!(
                source = SOURCE,
                records = removed,
                "requisites of records 1C deleted removed from the sync store"
            );
        }
    }

    /// Logs a refusing sync store once per state.
    fn store_failed(&self, error: &str) {
        if !self.store_failing.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                source = SOURCE,
                %error,
                "1C's requisites were not written to the sync store: calls are answered as usual, the next read of 1C writes them"
            );
        }
    }

    /// The configured addresses by owner: the first non-empty row of each
    /// kind in line order.
    fn addresses<'a>(
        &self,
        rows: impl Iterator<Item = &'a ContactRow>,
    ) -> HashMap<&'a str, TypedAddresses> {
        let mut out: HashMap<&'a str, TypedAddresses> = HashMap::new();
        if !self.reads_address_kinds() {
            return out;
        }
        for row in rows {
            if row.kind != rows::KIND_ADDRESS || row.presentation.trim().is_empty() {
                continue;
            }
            let kind = row.kind_key.trim().to_ascii_lowercase();
            let slot = out.entry(row.owner.as_str()).or_default();
            let keep = |held: &mut Option<(u32, String)>| {
                if held.as_ref().is_none_or(|(line, _)| row.line < *line) {
                    *held = Some((row.line, row.presentation.trim().to_owned()));
                }
            };
            if Some(&kind) == self.legal_kind.as_ref() {
                keep(&mut slot.legal);
            }
            if Some(&kind) == self.actual_kind.as_ref() {
                keep(&mut slot.actual);
            }
        }
        out
    }
}

/// A record's typed addresses, with the line each came from.
#[derive(Debug, Default)]
struct TypedAddresses {
    legal: Option<(u32, String)>,
    actual: Option<(u32, String)>,
}

fn some(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn hash_of(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// One bank account row: owner, number, bank reference.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct AccountRow {
    pub key: String,
    pub deletion_mark: bool,
    pub owner: String,
    pub number: String,
    pub bank: String,
}

/// One bank row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct BankRow {
    pub key: String,
    pub bik: String,
    pub name: String,
    pub corr_account: String,
}

/// Reads a list answer of bank account rows by the configured names.
pub(super) fn parse_accounts_page(
    body: &[u8],
    fields: &BankAccountFields,
) -> Result<Vec<AccountRow>, String> {
    rows::parse_list(body, AccountSeed(fields))
}

/// Reads a list answer of bank rows by the configured names.
pub(super) fn parse_banks_page(body: &[u8], fields: &BankFields) -> Result<Vec<BankRow>, String> {
    rows::parse_list(body, BankSeed(fields))
}

/// Joins accounts (not deletion-marked) with their banks, by owner, in the
/// order read, at most [`MAX_BANK_ACCOUNTS`] per owner; a row read twice
/// (it moved between pages) is kept once.
pub(super) fn join_accounts(accounts: Vec<AccountRow>, banks: Vec<BankRow>) -> AccountsByOwner {
    let banks: HashMap<String, BankRow> = banks
        .into_iter()
        .map(|b| (b.key.trim().to_ascii_lowercase(), b))
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut out = AccountsByOwner::new();
    for a in accounts {
        if a.deletion_mark || a.owner.trim().is_empty() || !seen.insert(a.key.clone()) {
            continue;
        }
        let bank = banks.get(&a.bank.trim().to_ascii_lowercase());
        let details = BankDetails {
            name: bank.and_then(|b| some(&b.name)),
            bik: bank.and_then(|b| some(&b.bik)),
            account: some(&a.number),
            corr_account: bank.and_then(|b| some(&b.corr_account)),
        };
        let list = out.entry(a.owner.trim().to_owned()).or_default();
        if list.len() < MAX_BANK_ACCOUNTS {
            list.push(details);
        }
    }
    out
}

#[derive(Clone, Copy)]
struct AccountSeed<'a>(&'a BankAccountFields);

impl<'de> DeserializeSeed<'de> for AccountSeed<'_> {
    type Value = AccountRow;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<AccountRow, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for AccountSeed<'_> {
    type Value = AccountRow;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a bank account row")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AccountRow, A::Error> {
        let mut row = AccountRow::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "Ref_Key" => row.key = map.next_value::<Text>()?.0,
                "DeletionMark" => row.deletion_mark = map.next_value::<Flag>()?.0,
                k if k == self.0.owner => row.owner = map.next_value::<Text>()?.0,
                k if k == self.0.number => row.number = map.next_value::<Text>()?.0,
                k if k == self.0.bank => row.bank = map.next_value::<Text>()?.0,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(row)
    }
}

#[derive(Clone, Copy)]
struct BankSeed<'a>(&'a BankFields);

impl<'de> DeserializeSeed<'de> for BankSeed<'_> {
    type Value = BankRow;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<BankRow, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for BankSeed<'_> {
    type Value = BankRow;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a bank row")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<BankRow, A::Error> {
        let mut row = BankRow::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "Ref_Key" => row.key = map.next_value::<Text>()?.0,
                k if k == self.0.bik => row.bik = map.next_value::<Text>()?.0,
                k if k == self.0.name => row.name = map.next_value::<Text>()?.0,
                k if k == self.0.corr_account => row.corr_account = map.next_value::<Text>()?.0,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_join_their_banks_by_owner_and_deleted_ones_are_left_out() {
        let accounts = r#"{"value":[
          {"Ref_Key":"a1","DeletionMark":false,"Owner":"k1","Owner_Type":"StandardODATA.Catalog_Контрагенты","НомерСчета":"40702810900000000001","Банк_Key":"B1"},
          {"Ref_Key":"a2","DeletionMark":true,"Owner":"k1","НомерСчета":"40702810900000000002","Банк_Key":"b1"},
          {"Ref_Key":"a3","DeletionMark":false,"Owner":"k2","НомерСчета":"40702810900000000003","Банк_Key":"missing"},
          {"Ref_Key":"a1","DeletionMark":false,"Owner":"k1","НомерСчета":"40702810900000000001","Банк_Key":"b1"}
        ]}"#;
        let banks = r#"{"value":[{"Ref_Key":"b1","Code":"044525225","Description":"ПАО СБЕРБАНК","КоррСчет":"30101810400000000225","IsFolder":false}]}"#;
        let accounts = parse_accounts_page(accounts.as_bytes(), &BankAccountFields::default())
            .expect("parses");
        let banks = parse_banks_page(banks.as_bytes(), &BankFields::default()).expect("parses");
        let joined = join_accounts(accounts, banks);
        assert_eq!(
            joined["k1"],
            [BankDetails {
                name: Some("ПАО СБЕРБАНК".into()),
                bik: Some("044525225".into()),
                account: Some("40702810900000000001".into()),
                corr_account: Some("30101810400000000225".into()),
            }]
        );
        // An unknown bank: the account alone.
        assert_eq!(
            joined["k2"],
            [BankDetails {
                account: Some("40702810900000000003".into()),
                ..BankDetails::default()
            }]
        );
    }

    fn row(key: &str, director: &str) -> CatalogRow {
        CatalogRow {
            ref_key: key.into(),
            description: "A".into(),
            director: director.into(),
            ..CatalogRow::default()
        }
    }

    fn address(owner: &str, line: u32, kind_key: &str, text: &str) -> ContactRow {
        ContactRow {
            owner: owner.into(),
            line,
            kind: rows::KIND_ADDRESS.into(),
            kind_key: kind_key.into(),
            presentation: text.into(),
            ..ContactRow::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_changed_bodies_are_written_and_typed_addresses_are_told_apart() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let store = Store::open_with_options(
            &tmp.path().join("s.sync.sqlite"),
            &prometheus::Registry::new(),
            &crate::store::OpenOptions::sync(),
        )
        .expect("sync store");
        let config: OnecConfig = toml::from_str(
            "odata_url = \"http://1c/\"\nlegal_address_kind = \"AA\"\nactual_address_kind = \"bb\"\n",
        )
        .expect("[onec] parses");
        let directory = Arc::new(Directory::new(crate::soap::say_name_payload));
        let requisites =
            Requisites::new(&config, store.clone(), directory).expect("address kinds are set");
        let catalog = vec![vec![row("k1", "Иванов"), row("k2", "")]];
        let contacts = vec![vec![
            address("k1", 3, "aa", "Юр. адрес 2"),
            address("k1", 2, "AA", "Юр. адрес"),
            address("k1", 1, "bb", "Факт. адрес"),
            address("k2", 1, "cc", "Другой адрес"),
        ]];
        let pending = requisites.gather(&catalog, &contacts, None);
        // k2 has nothing the configuration asks for: not written.
        assert_eq!(pending.len(), 1);
        requisites.write(pending).await;
        let body = store.requisites_get("k1").await.expect("reads");
        assert_eq!(
            body.as_deref(),
            Some(
                r#"{"director":"Иванов","legal_address":"Юр. адрес","actual_address":"Факт. адрес"}"#
            )
        );
        assert!(requisites.gather(&catalog, &contacts, None).is_empty());
        // A changed director: written again; emptied: written empty.
        let changed = vec![vec![row("k1", "Петров"), row("k2", "")]];
        assert_eq!(requisites.gather(&changed, &contacts, None).len(), 1);
        let emptied = vec![vec![row("k1", ""), row("k2", "")]];
        let pending = requisites.gather(&emptied, &[], None);
        assert_eq!(pending.len(), 1);
        requisites.write(pending).await;
        let body = store.requisites_get("k1").await.expect("reads");
        assert_eq!(body.as_deref(), Some("{}"));
    }

    #[test]
    fn a_body_holds_only_what_was_read() {
        let body = Body {
            director: Some("Иванов И. И.".into()),
            bank: vec![BankDetails {
                bik: Some("044525225".into()),
                ..BankDetails::default()
            }],
            ..Body::default()
        };
        assert_eq!(
            serde_json::to_string(&body).expect("serializes"),
            r#"{"director":"Иванов И. И.","bank":[{"bik":"044525225"}]}"#
        );
        assert!(Body::default().is_empty());
    }
}
