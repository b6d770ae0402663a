//! A mock of 1C:Enterprise's standard OData interface (OData v3, JSON), for
//! the integration tests and the benchmark.
//!
//! It serves, under `/base/odata/standard.odata/`, the counterparty catalog
//! `Catalog_Контрагенты` and its contact information
//! `Catalog_Контрагенты_КонтактнаяИнформация` (and the same rows as the
//! information register `InformationRegister_КонтактнаяИнформация` of КА 1.1 /
//! УПП: owner in `Объект`, the number only in `Представление`, no line
//! numbers) the way real bases answer (see
//! the "1C:Enterprise" section of `docs/external-systems.md`): HTTP
//! Basic auth on every request, `{"odata.metadata":…,"value":[…]}` lists,
//! embedded tabular sections, `DataVersion` changing on every write, noise
//! fields, `LineNumber` as a string, and `odata.error` bodies on errors.
//! It refuses what 1C refuses (an unknown property in `$select`, `$orderby`
//! or `$filter`, an unknown entity set) so a wrong configured name shows.
//!
//! With the sync store's requisites in mind it also serves the bank
//! accounts `Catalog_БанковскиеСчета` (owner in `Owner`, `НомерСчета`,
//! `Банк_Key`) and the banks `Catalog_Банки` (BIK in `Code`, `Description`,
//! `КоррСчет`), filled with [`MockOnec::add_bank`] and
//! [`MockOnec::add_bank_account`], and typed addresses
//! ([`MockCounterparty::typed_address`]: `Вид_Key` in the tabular section,
//! `Вид` in the register).
//!
//! Incoming payments: `Document_ПоступлениеНаРасчетныйСчет` ([`PAYMENTS`]),
//! with its tabular section `РасшифровкаПлатежа` embedded in each document,
//! amounts as JSON numbers (`Edm.Double`), `DataVersion` changing on every
//! write; lists take `$select`, `$filter=Date ge datetime'…'` (only that),
//! `$orderby=Date,Ref_Key`, `$top`/`$skip`; a document by key
//! (`(guid'…')`, 404 when gone); `POST (guid'…')/Post` and `/Unpost`.
//! Filled with [`MockOnec::upsert_payment`] and its siblings.
//!
//! Query options: `$format` (`json`; absent or `atom` gives Atom XML, another
//! value 406), `$select`, `$orderby` (`asc`/`desc`), `$top`, `$skip`,
//! `$inlinecount=allpages` and a `$filter` subset: `eq`/`ne` comparisons of a
//! property with a literal (`'text'`, `guid'…'`, `true`/`false`, integers),
//! `substringof('text', Property)`, joined with `and`/`or` and parentheses.
//! Anything else is a 400 `odata.error`.
//!
//! Served by `mock_http.rs` (accept loop, bounds, request log, [`Mode`]s):
//! self-contained apart from it (std, tokio, hyper, hyper-util,
//! http-body-util, bytes, serde_json, percent-encoding). The benchmark
//! includes both as siblings:
//! `#[path = "../tests/support/mock_http.rs"] mod mock_http;` and
//! `#[path = "../tests/support/mock_onec.rs"] mod mock_onec;`.
//!
//! Writes (the 1C writer's, issue 19), by [`WRITE_USERNAME`] only (the read
//! user's are 403, wrong credentials 401): POST `Catalog_Контрагенты` with
//! the tabular section `КонтактнаяИнформация` embedded (`LineNumber`
//! required), PATCH `Catalog_Контрагенты(guid'…')` (a section in it replaces
//! all its rows; `DataVersion` bumps; 404 for an unknown key), POST of bank
//! accounts and banks; a POST of rows to the section's own set is refused
//! with `odata.error` code `13`, an unknown property with a 400. The
//! predefined contact kinds are served as `Catalog_ВидыКонтактнойИнформации`.
//! [`MockOnec::fault_next_writes`]: a write committed, then never answered
//! or cut off.
//!
//! Bounds: request heads up to 64 KiB, at most 256 connections at once (more
//! wait to be accepted), request bodies up to 64 KiB.
//! Pages without `$filter` are cut from a sorted order kept until the next
//! write, so a full read of N rows costs the mock O(N log N) once, not per page.
//!
//! Each includer uses a part of it: include it under `#[allow(dead_code)]`
//! (`tests/support/mod.rs` allows it for all of `support`).

use std::cmp::Ordering;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Method, Response, StatusCode};
use serde_json::{json, Map, Value};

pub use super::mock_http::Mode;
use super::mock_http::{
    Handler, HandlerFuture, HttpRequest, Limits, Logged, MockHttp, GARBAGE_TAIL,
};

/// The Basic credentials [`MockOnec::start`] accepts.
pub const USERNAME: &str = "odata";
pub const PASSWORD: &str = "secret";
/// The published base's OData root (no trailing slash).
pub const ROOT_PATH: &str = "/base/odata/standard.odata";
pub const COUNTERPARTIES: &str = "Catalog_Контрагенты";
pub const CONTACTS: &str = "Catalog_Контрагенты_КонтактнаяИнформация";
/// КА 1.1's contact information register (the same contacts, another shape).
pub const REGISTER: &str = "InformationRegister_КонтактнаяИнформация";
/// 1C's empty reference.
pub const EMPTY_REF: &str = "00000000-0000-0000-0000-000000000000";
/// `Вид_Key` of the contact kinds (the configuration's predefined kinds).
pub const PHONE_KIND_KEY: &str = "2b7a9c64-1f0e-4d6a-9a41-7c1e0d5b3a01";
pub const EMAIL_KIND_KEY: &str = "2b7a9c64-1f0e-4d6a-9a41-7c1e0d5b3a02";
pub const ADDRESS_KIND_KEY: &str = "2b7a9c64-1f0e-4d6a-9a41-7c1e0d5b3a03";
/// `Вид_Key` of "Юридический адрес" and "Фактический адрес".
pub const LEGAL_ADDRESS_KIND_KEY: &str = "2b7a9c64-1f0e-4d6a-9a41-7c1e0d5b3a04";
pub const ACTUAL_ADDRESS_KIND_KEY: &str = "2b7a9c64-1f0e-4d6a-9a41-7c1e0d5b3a05";
/// The bank accounts and banks catalogs.
pub const BANK_ACCOUNTS: &str = "Catalog_БанковскиеСчета";
pub const BANKS: &str = "Catalog_Банки";
/// The contact information kinds (БСП's predefined ones, `PredefinedDataName`).
pub const KINDS: &str = "Catalog_ВидыКонтактнойИнформации";
/// The Basic credentials of the 1C writer's user: the only one allowed to
/// write ([`USERNAME`] reads, and its writes are refused with 403).
pub const WRITE_USERNAME: &str = "writer";
pub const WRITE_PASSWORD: &str = "write-secret-1c";
/// The properties Бухгалтерия 3.0 has that the writer fills by default
/// beyond the mock's own (defined by [`MockOnec::start_for_writes`]).
pub const BP30_WRITE_PROPERTIES: &[(&str, &str)] = &[
    ("РегистрационныйНомер", ""),
    ("ЮридическоеФизическоеЛицо", ""),
    ("Комментарий", ""),
    ("ОсновнойБанковскийСчет_Key", EMPTY_REF),
];

const LIMITS: Limits = Limits {
    max_connections: 256,
    max_body: 64 * 1024,
};

/// What a request was for, as the mock classifies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RequestKind {
    /// A list read of the catalog (a warm-up or refresh page).
    CatalogPage,
    /// A list read of the contact set without `substringof`.
    ContactsPage,
    /// A list read of the contact information register.
    RegisterPage,
    /// A list read of the bank accounts catalog.
    BankAccountsPage,
    /// A list read of the banks catalog.
    BanksPage,
    /// A live lookup: the contact set with a `substringof` `$filter`.
    Lookup,
    /// Counterparties by key: `(guid'…')` or a `Ref_Key eq guid'…'` filter.
    ByRef,
    /// Anything else (another path, an unknown entity set…).
    Other,
}

/// A request as the mock saw it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    /// Arrival order, from 0 for the mock's life (not reset).
    pub seq: u64,
    pub method: String,
    /// The raw request target (path and query) as sent.
    pub target: String,
    /// The entity set named by the path, percent-decoded (if it decoded).
    pub entity_set: Option<String>,
    /// The key of a single-entity request, `(guid'…')`.
    pub key: Option<String>,
    /// Query options, percent-decoded, in the order sent.
    pub query: Vec<(String, String)>,
    pub kind: RequestKind,
    /// Whether the Basic credentials were right.
    pub authorized: bool,
    /// The status answered; `None` while pending or if never answered (Hang).
    pub status: Option<u16>,
}

impl SeenRequest {
    /// The decoded value of a query option (`"$filter"`…).
    pub fn option(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One row of `Catalog_Контрагенты` with its contact information.
#[derive(Debug, Clone, PartialEq)]
pub struct MockCounterparty {
    /// A GUID; stored lowercase.
    pub ref_key: String,
    pub description: String,
    pub full_name: String,
    pub inn: String,
    pub kpp: String,
    pub is_folder: bool,
    pub deletion_mark: bool,
    /// The group it sits in; `None` is the top level (the empty ref).
    pub parent_key: Option<String>,
    /// Configuration-specific properties, e.g. `"КатегорияКлиента": 1`.
    pub extra: Map<String, Value>,
    pub contacts: Vec<MockContact>,
}

/// One row of the tabular section `КонтактнаяИнформация`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MockContact {
    /// `"Телефон"`, `"АдресЭлектроннойПочты"` or `"Адрес"`.
    pub kind: &'static str,
    /// `Представление`: free text.
    pub presentation: String,
    /// `НомерТелефона`: digits, possibly empty (older records).
    pub phone_digits: String,
    /// `АдресЭП`.
    pub email: String,
    /// `Вид_Key`, when not the kind's usual one.
    pub kind_key: Option<String>,
}

impl MockContact {
    pub fn phone(presentation: impl Into<String>, digits: impl Into<String>) -> MockContact {
        MockContact {
            kind: "Телефон",
            presentation: presentation.into(),
            phone_digits: digits.into(),
            email: String::new(),
            kind_key: None,
        }
    }

    pub fn email(address: impl Into<String>) -> MockContact {
        let address = address.into();
        MockContact {
            kind: "АдресЭлектроннойПочты",
            presentation: address.clone(),
            phone_digits: String::new(),
            email: address,
            kind_key: None,
        }
    }

    pub fn address(text: impl Into<String>) -> MockContact {
        MockContact {
            kind: "Адрес",
            presentation: text.into(),
            phone_digits: String::new(),
            email: String::new(),
            kind_key: None,
        }
    }

    /// An address of the contact kind `kind_key` (e.g. [`LEGAL_ADDRESS_KIND_KEY`]).
    pub fn typed_address(text: impl Into<String>, kind_key: &'static str) -> MockContact {
        MockContact {
            kind_key: Some(kind_key.to_owned()),
            ..MockContact::address(text)
        }
    }

    fn kind_key(&self) -> &str {
        if let Some(key) = &self.kind_key {
            return key;
        }
        match self.kind {
            "Телефон" => PHONE_KIND_KEY,
            "АдресЭлектроннойПочты" => EMAIL_KIND_KEY,
            _ => ADDRESS_KIND_KEY,
        }
    }
}

impl MockCounterparty {
    /// A top-level counterparty named `description` (also its full name).
    pub fn new(ref_key: impl Into<String>, description: impl Into<String>) -> MockCounterparty {
        let description = description.into();
        MockCounterparty {
            ref_key: ref_key.into(),
            full_name: description.clone(),
            description,
            inn: String::new(),
            kpp: String::new(),
            is_folder: false,
            deletion_mark: false,
            parent_key: None,
            extra: Map::new(),
            contacts: Vec::new(),
        }
    }

    pub fn full_name(mut self, full_name: impl Into<String>) -> Self {
        self.full_name = full_name.into();
        self
    }

    pub fn inn(mut self, inn: impl Into<String>, kpp: impl Into<String>) -> Self {
        self.inn = inn.into();
        self.kpp = kpp.into();
        self
    }

    pub fn extra(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(name.to_owned(), value.into());
        self
    }

    pub fn phone(mut self, presentation: impl Into<String>, digits: impl Into<String>) -> Self {
        self.contacts.push(MockContact::phone(presentation, digits));
        self
    }

    pub fn email(mut self, address: impl Into<String>) -> Self {
        self.contacts.push(MockContact::email(address));
        self
    }

    pub fn address(mut self, text: impl Into<String>) -> Self {
        self.contacts.push(MockContact::address(text));
        self
    }

    /// An address of the contact kind `kind_key` ([`LEGAL_ADDRESS_KIND_KEY`]…).
    pub fn typed_address(mut self, text: impl Into<String>, kind_key: &'static str) -> Self {
        self.contacts
            .push(MockContact::typed_address(text, kind_key));
        self
    }

    pub fn folder(mut self) -> Self {
        self.is_folder = true;
        self
    }

    pub fn deleted(mut self) -> Self {
        self.deletion_mark = true;
        self
    }

    pub fn parent(mut self, parent_key: impl Into<String>) -> Self {
        self.parent_key = Some(parent_key.into());
        self
    }

    /// Whether a gateway should have it in its directory (not a group, not
    /// marked for deletion).
    pub fn listed(&self) -> bool {
        !self.is_folder && !self.deletion_mark
    }
}

/// A deterministic, valid-looking GUID (version 4 layout), unique per `n`
/// below 2^48.
pub fn guid(n: u64) -> String {
    let h = splitmix64(n);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        0x8000 | ((h >> 40) & 0x3fff),
        n & 0xffff_ffff_ffff
    )
}

fn splitmix64(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `n` deterministic counterparties for the benchmark: `ООО "Клиент 000042"`,
/// one mobile `+7 (9XX) XXX-XX-XX` each (every 7th only in human form with an
/// empty `НомерТелефона`), a second office phone `+7 495 …` for every 3rd,
/// an e-mail for every 5th; every 50th is a group (folder, no contacts) and
/// every 40th is marked for deletion. Categories 0–3, extensions 200–299.
/// Row `i` has key [`guid`]`(i)` and mobile national number `9` + `i` in
/// nine digits.
pub fn generated(n: usize) -> Vec<MockCounterparty> {
    (0..n)
        .map(|i| {
            let key = guid(i as u64);
            if i % 50 == 49 {
                return MockCounterparty::new(key, format!("Группа {:04}", i / 50)).folder();
            }
            let mut c = MockCounterparty::new(key, format!("ООО \"Клиент {i:06}\""))
                .full_name(format!(
                    "Общество с ограниченной ответственностью \"Клиент {i:06}\""
                ))
                .inn(format!("77{:08}", i % 100_000_000), "770101001")
                .extra("КатегорияКлиента", (i % 4) as i64)
                .extra("ДобавочныйМенеджера", (200 + i % 100).to_string());
            let national = format!("9{:09}", i % 1_000_000_000);
            let (a, b, c2, d) = (
                &national[0..3],
                &national[3..6],
                &national[6..8],
                &national[8..10],
            );
            c = if i % 7 == 3 {
                c.phone(format!("8 ({a}) {b}-{c2}-{d}"), "")
            } else {
                c.phone(format!("+7 ({a}) {b}-{c2}-{d}"), format!("7{national}"))
            };
            if i % 3 == 0 {
                let office = format!("{:07}", i % 10_000_000);
                c = c.phone(
                    format!(
                        "+7 495 {}-{}-{}",
                        &office[0..3],
                        &office[3..5],
                        &office[5..7]
                    ),
                    format!("7495{office}"),
                );
            }
            if i % 5 == 0 {
                c = c.email(format!("client{i:06}@example.ru"));
            }
            if i % 40 == 39 {
                c = c.deleted();
            }
            c
        })
        .collect()
}

/// A running mock 1C base. Dropping it stops the server and every connection.
pub struct MockOnec {
    state: Arc<State>,
    server: MockHttp,
}

impl MockOnec {
    /// Starts an empty base on 127.0.0.1:0 accepting [`USERNAME`]/[`PASSWORD`].
    /// The configuration defines the properties `КатегорияКлиента` (number,
    /// default 0) and `ДобавочныйМенеджера` (string, default "").
    pub async fn start() -> MockOnec {
        let mut shared = None;
        let server = MockHttp::start(LIMITS, |addr| {
            let state = Arc::new(State {
                addr,
                auth: basic_token(USERNAME, PASSWORD),
                data: Mutex::new(Data {
                    rows: Vec::new(),
                    by_key: HashMap::new(),
                    extras: vec![
                        ("КатегорияКлиента".to_owned(), json!(0)),
                        ("ДобавочныйМенеджера".to_owned(), json!("")),
                    ],
                    version: 1,
                    next_code: 1,
                    orders: Vec::new(),
                    bank_accounts: Vec::new(),
                    banks: Vec::new(),
                    kinds: predefined_kinds(),
                    created: 0,
                }),
                lookup_delay: Mutex::new(Duration::ZERO),
                write_auth: basic_token(WRITE_USERNAME, WRITE_PASSWORD),
                write_faults: Mutex::new(Vec::new()),
                arrivals: Mutex::new(Vec::new()),
                payments: Mutex::new(PaymentDocs::default()),
            });
            shared = Some(Arc::clone(&state));
            OnecHandler(state)
        })
        .await;
        let state = shared.expect("the handler was built");
        MockOnec { state, server }
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT/base/odata/standard.odata`
    pub fn url(&self) -> String {
        format!("http://{}{ROOT_PATH}", self.addr())
    }

    /// Inserts or replaces (by `ref_key`) a counterparty; its `DataVersion`
    /// changes. New names in `extra` become properties of every row.
    pub fn upsert(&self, mut c: MockCounterparty) {
        c.ref_key = c.ref_key.to_ascii_lowercase();
        assert!(is_guid(&c.ref_key), "ref_key {:?} is not a GUID", c.ref_key);
        let mut data = self.state.data();
        for (name, value) in &c.extra {
            if !data.extras.iter().any(|(n, _)| n == name) {
                data.extras.push((name.clone(), default_like(value)));
            }
        }
        let version = data.bump();
        match data.by_key.get(&c.ref_key) {
            Some(&i) => {
                let row = &mut data.rows[i];
                row.cp = c;
                row.data_version = version;
            }
            None => {
                let code = format!("{:09}", data.next_code);
                data.next_code += 1;
                let at = data.rows.len();
                data.by_key.insert(c.ref_key.clone(), at);
                data.rows.push(Row {
                    cp: c,
                    code,
                    data_version: version,
                });
            }
        }
    }

    /// Adds a bank to `Catalog_Банки`: key, BIK (`Code`), name, correspondent account.
    pub fn add_bank(&self, ref_key: &str, bik: &str, name: &str, corr_account: &str) {
        let mut data = self.state.data();
        data.bump();
        data.banks.push(
            json!({"Ref_Key": ref_key, "DeletionMark": false, "IsFolder": false,
                   "Code": bik, "Description": name, "КоррСчет": corr_account, "Город": "г. Москва"})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        );
    }

    /// Adds an account of counterparty `owner` at bank `bank_key` to
    /// `Catalog_БанковскиеСчета` (`Owner` as БП 3.0 publishes it: a composite
    /// reference, with `Owner_Type`).
    pub fn add_bank_account(&self, ref_key: &str, owner: &str, number: &str, bank_key: &str) {
        let mut data = self.state.data();
        let version = data.bump();
        data.bank_accounts.push(
            json!({"Ref_Key": ref_key, "DataVersion": data_version(version), "DeletionMark": false,
                   "Owner": owner, "Owner_Type": "StandardODATA.Catalog_Контрагенты",
                   "Description": number, "НомерСчета": number, "Банк_Key": bank_key})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        );
    }

    /// Sets `DeletionMark`; its `DataVersion` changes. Panics if unknown.
    pub fn mark_deleted(&self, ref_key: &str) {
        let mut data = self.state.data();
        let version = data.bump();
        let i = *data
            .by_key
            .get(&ref_key.to_ascii_lowercase())
            .unwrap_or_else(|| panic!("mark_deleted: no counterparty {ref_key}"));
        data.rows[i].cp.deletion_mark = true;
        data.rows[i].data_version = version;
    }

    /// Deletes a counterparty for good (as 1C does after deletion-mark
    /// processing). Panics if unknown.
    pub fn remove(&self, ref_key: &str) {
        let mut data = self.state.data();
        let i = data
            .by_key
            .remove(&ref_key.to_ascii_lowercase())
            .unwrap_or_else(|| panic!("remove: no counterparty {ref_key}"));
        data.rows.remove(i);
        data.bump();
        let Data { rows, by_key, .. } = &mut *data;
        for (j, row) in rows.iter().enumerate().skip(i) {
            by_key.insert(row.cp.ref_key.clone(), j);
        }
    }

    /// Adds a configuration property every row has (`default` where a row's
    /// `extra` lacks it), e.g. to serve a `$select` that names it.
    pub fn define_property(&self, name: &str, default: Value) {
        let mut data = self.state.data();
        data.bump();
        match data.extras.iter_mut().find(|(n, _)| n == name) {
            Some((_, d)) => *d = default,
            None => data.extras.push((name.to_owned(), default)),
        }
    }

    /// How every later request is answered; [`Mode::Fail`] is a 500 with an
    /// `odata.error` body before the credentials are checked, [`Mode::Garbage`]
    /// a 200 `application/json` cut off in the middle of a row.
    pub fn set_mode(&self, mode: Mode) {
        self.server.set_mode(mode);
    }

    /// Extra delay before answering live lookups (contact-set requests whose
    /// `$filter` uses `substringof`), on top of [`Mode::Slow`].
    pub fn set_lookup_delay(&self, delay: Duration) {
        *lock(&self.state.lookup_delay) = delay;
    }

    /// Every request since the start or the last [`MockOnec::reset_requests`].
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.server
            .with_requests(|log| log.iter().map(|l| self.state.seen(l)).collect())
    }

    pub fn count(&self, kind: RequestKind) -> usize {
        self.server.with_requests(|log| {
            log.iter()
                .filter(|l| parse_target(&l.request.target).kind() == kind)
                .count()
        })
    }

    pub fn reset_requests(&self) {
        self.server.reset_requests();
    }

    /// [`MockOnec::start`] with what Бухгалтерия 3.0 has for the writer:
    /// [`BP30_WRITE_PROPERTIES`] defined.
    pub async fn start_for_writes() -> MockOnec {
        let mock = MockOnec::start().await;
        for (name, default) in BP30_WRITE_PROPERTIES {
            mock.define_property(name, json!(default));
        }
        mock
    }

    /// The next `faults.len()` successful writes are committed and then
    /// answered as each fault says.
    pub fn fault_next_writes(&self, faults: &[WriteFault]) {
        lock(&self.state.write_faults).extend_from_slice(faults);
    }

    /// Every counterparty as stored, with its `Code` and `DataVersion`.
    pub fn counterparties(&self) -> Vec<(MockCounterparty, String, String)> {
        self.state
            .data()
            .rows
            .iter()
            .map(|r| (r.cp.clone(), r.code.clone(), data_version(r.data_version)))
            .collect()
    }

    /// When each request since the start reached the mock's handler (after
    /// any [`Mode`] delay), in arrival order.
    pub fn arrivals(&self) -> Vec<std::time::Instant> {
        lock(&self.state.arrivals).clone()
    }

    /// Every bank account as served.
    pub fn bank_accounts(&self) -> Vec<Map<String, Value>> {
        self.state.data().bank_accounts.clone()
    }

    /// The writes (POST and PATCH) since the start or the last reset.
    pub fn writes(&self) -> Vec<SeenRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "POST" || r.method == "PATCH")
            .collect()
    }
}

// ---------------------------------------------------------------- state

struct State {
    addr: SocketAddr,
    /// `base64(user:password)`.
    auth: String,
    data: Mutex<Data>,
    lookup_delay: Mutex<Duration>,
    /// The write user's `base64(user:password)`.
    write_auth: String,
    /// What the next writes do after their commit, in order.
    write_faults: Mutex<Vec<WriteFault>>,
    /// When each request reached the handler (for a benchmark's rate).
    arrivals: Mutex<Vec<std::time::Instant>>,
    /// `Document_ПоступлениеНаРасчетныйСчет` (see "payment documents" below).
    payments: Mutex<PaymentDocs>,
}

impl State {
    fn data(&self) -> MutexGuard<'_, Data> {
        lock(&self.data)
    }

    fn authorized(&self, header: Option<&HeaderValue>) -> bool {
        self.user(header).is_some()
    }

    /// Who the Basic credentials are: the read user, the write user, or
    /// nobody (wrong or missing).
    fn user(&self, header: Option<&HeaderValue>) -> Option<User> {
        let value = header.and_then(|v| v.to_str().ok())?;
        let (scheme, token) = value.trim().split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return None;
        }
        if token.trim() == self.auth {
            Some(User::Reader)
        } else if token.trim() == self.write_auth {
            Some(User::Writer)
        } else {
            None
        }
    }

    /// A logged request as the mock classifies it.
    fn seen(&self, logged: &Logged) -> SeenRequest {
        let req = &logged.request;
        let parsed = parse_target(&req.target);
        SeenRequest {
            seq: req.seq,
            method: req.method.to_string(),
            target: req.target.clone(),
            kind: parsed.kind(),
            entity_set: parsed.entity_set,
            key: parsed.key,
            query: parsed.query,
            authorized: self.authorized(req.headers.get(AUTHORIZATION)),
            status: logged.status,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

struct Data {
    /// In insertion order: the order of answers without `$orderby`.
    rows: Vec<Row>,
    by_key: HashMap<String, usize>,
    /// Configuration-specific properties and the value of a row lacking them.
    extras: Vec<(String, Value)>,
    /// Bumped by every write: the last `DataVersion` given out.
    version: u64,
    next_code: u64,
    /// Unfiltered orders computed since the last write (a few: a full read
    /// pages both sets at once).
    orders: Vec<CachedOrder>,
    /// `Catalog_БанковскиеСчета` and `Catalog_Банки` rows, as served.
    bank_accounts: Vec<Map<String, Value>>,
    banks: Vec<Map<String, Value>>,
    /// `Catalog_ВидыКонтактнойИнформации`: the predefined kinds.
    kinds: Vec<Map<String, Value>>,
    /// Entities the writes created so far (their keys are drawn from it).
    created: u64,
}

struct CachedOrder {
    set: Set,
    orderby: Vec<(String, bool)>,
    /// (row, contact line index; 0 for the catalog)
    items: Arc<Vec<(usize, usize)>>,
}

impl Data {
    fn bump(&mut self) -> u64 {
        self.version += 1;
        self.orders.clear();
        self.version
    }
}

struct Row {
    cp: MockCounterparty,
    code: String,
    data_version: u64,
}

/// A value of the same JSON type, empty.
fn default_like(v: &Value) -> Value {
    match v {
        Value::Bool(_) => json!(false),
        Value::Number(_) => json!(0),
        Value::String(_) => json!(""),
        _ => Value::Null,
    }
}

/// 1C's `DataVersion` look: base64 of 8 bytes, e.g. `AAAAAgAAAAA=`.
fn data_version(v: u64) -> String {
    let mut bytes = [0u8; 8];
    bytes[..4].copy_from_slice(&(v as u32).to_be_bytes());
    bytes[4..].copy_from_slice(&((v >> 32) as u32).to_be_bytes());
    base64(&bytes)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn basic_token(user: &str, password: &str) -> String {
    base64(format!("{user}:{password}").as_bytes())
}

fn is_guid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

// ---------------------------------------------------------------- server

type Body = Full<Bytes>;

/// The OData answers, served by `mock_http`.
struct OnecHandler(Arc<State>);

impl Handler for OnecHandler {
    fn handle<'a>(&'a self, req: &'a HttpRequest) -> HandlerFuture<'a> {
        Box::pin(async move { self.answer(req).await })
    }

    fn fail(&self, _req: &HttpRequest) -> Response<Body> {
        odata_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Внутренняя ошибка сервера 1С:Предприятия (mock: Mode::Fail)",
        )
    }

    fn garbage(&self, _req: &HttpRequest) -> Response<Body> {
        let mut body = br#"{"odata.metadata":"mock","value":[{"Ref_Key":"00000000-0000-"#.to_vec();
        body.extend_from_slice(GARBAGE_TAIL);
        let mut r = Response::new(Full::new(Bytes::from(body)));
        r.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/json;charset=utf-8"),
        );
        r
    }
}

impl OnecHandler {
    /// The answer; `None` closes the connection without one (a write's
    /// [`WriteFault::CommitThenCut`]).
    async fn answer(&self, req: &HttpRequest) -> Option<Response<Body>> {
        let state = &self.0;
        lock(&state.arrivals).push(std::time::Instant::now());
        let parsed = parse_target(&req.target);
        if parsed.kind() == RequestKind::Lookup {
            let delay = *lock(&state.lookup_delay);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        let user = state.user(req.headers.get(AUTHORIZATION));
        if user.is_none() {
            let mut r = odata_error(
                StatusCode::UNAUTHORIZED,
                "Не пройдена аутентификация: неверное имя пользователя или пароль",
            );
            r.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"1C\""),
            );
            Some(r)
        } else if let Some(answer) = payment_answer(state, req) {
            // Before the writes: a payment document's Post/Unpost is a POST.
            Some(answer)
        } else if req.method == Method::POST || req.method == Method::PATCH {
            if user != Some(User::Writer) {
                return Some(odata_error(
                    StatusCode::FORBIDDEN,
                    "Нарушение прав доступа! (mock 1C: the read user may not write)",
                ));
            }
            let (answer, fault) = write(state, req, parsed);
            match fault {
                None => Some(answer),
                Some(WriteFault::CommitThenHang) => {
                    std::future::pending::<()>().await;
                    None
                }
                Some(WriteFault::CommitThenCut) => None,
            }
        } else if req.method != Method::GET {
            let mut r = odata_error(
                StatusCode::METHOD_NOT_ALLOWED,
                &format!("mock 1C serves GET, POST and PATCH, not {}", req.method),
            );
            r.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET, POST, PATCH"));
            Some(r)
        } else {
            Some(match parsed.plan {
                Ok(plan) => answer(state, &plan),
                Err(reject) => odata_error(reject.status, &reject.message),
            })
        }
    }
}

// ---------------------------------------------------------------- writes

/// Who a request's credentials are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum User {
    Reader,
    Writer,
}

/// What a write does after 1C committed it ([`MockOnec::fault_next_writes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteFault {
    /// Commits, then never answers (the client's timeout ends it).
    CommitThenHang,
    /// Commits, then closes the connection without an answer.
    CommitThenCut,
}

/// БСП's predefined contact kinds of counterparties, with the mock's keys.
fn predefined_kinds() -> Vec<Map<String, Value>> {
    [
        ("ТелефонКонтрагента", "Телефон", PHONE_KIND_KEY),
        (
            "EmailКонтрагента",
            "Адрес электронной почты",
            EMAIL_KIND_KEY,
        ),
        (
            "ЮрАдресКонтрагента",
            "Юридический адрес",
            LEGAL_ADDRESS_KIND_KEY,
        ),
        (
            "ФактАдресКонтрагента",
            "Фактический адрес",
            ACTUAL_ADDRESS_KIND_KEY,
        ),
    ]
    .into_iter()
    .filter_map(|(name, description, key)| {
        json!({"Ref_Key": key, "DeletionMark": false, "Description": description,
               "Predefined": true, "PredefinedDataName": name})
        .as_object()
        .cloned()
    })
    .collect()
}

/// An `odata.error` with 1C's `code`.
fn odata_error_code(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = json!({"odata.error": {"code": code, "message": {"lang": "ru", "value": message}}});
    respond(status, "application/json;charset=utf-8", body.to_string())
}

/// A POST or PATCH by the write user: applied (committed) or refused as 1C
/// refuses it; with the fault the next write was given, if any.
fn write(state: &State, req: &HttpRequest, parsed: Parsed) -> (Response<Body>, Option<WriteFault>) {
    let answer = match parsed.plan {
        Err(reject) => return (odata_error(reject.status, &reject.message), None),
        Ok(plan) => {
            let body: Map<String, Value> = match serde_json::from_slice(&req.body) {
                Ok(Value::Object(m)) => m,
                Ok(_) | Err(_) => {
                    return (
                        odata_error(
                            StatusCode::BAD_REQUEST,
                            "Неверный формат тела запроса: ожидается объект JSON",
                        ),
                        None,
                    )
                }
            };
            let mut data = state.data();
            match (req.method == Method::POST, plan.set, plan.key) {
                (true, Set::Counterparties, None) => data.create_counterparty(state, body),
                (false, Set::Counterparties, Some(key)) => {
                    data.patch_counterparty(state, &key, body)
                }
                (true, Set::Contacts, None) => Err(Reject {
                    status: StatusCode::BAD_REQUEST,
                    code: "13",
                    message: "Cоздание строк табличной части напрямую не поддерживается".into(),
                }),
                (true, Set::BankAccounts, None) => {
                    data.create_plain(state, Set::BankAccounts, body)
                }
                (true, Set::Banks, None) => data.create_plain(state, Set::Banks, body),
                (_, set, _) => Err(bad_request(format!(
                    "mock 1C: {} of {} is not supported",
                    req.method,
                    set.name()
                ))),
            }
        }
    };
    match answer {
        Ok(answer) => {
            let mut faults = lock(&state.write_faults);
            let fault = (!faults.is_empty()).then(|| faults.remove(0));
            (answer, fault)
        }
        Err(refused) => (
            odata_error_code(refused.status, refused.code, &refused.message),
            None,
        ),
    }
}

impl Data {
    /// A new entity's key: deterministic, never one [`generated`] uses.
    fn new_key(&mut self) -> String {
        self.created += 1;
        guid(0x00C0_FFEE_0000 + self.created)
    }

    /// Applies the catalog properties of `body` to `c`; refuses an unknown
    /// property, a contact row without `LineNumber` or of an unknown `Тип`.
    fn apply(&self, c: &mut MockCounterparty, body: Map<String, Value>) -> Result<(), Reject> {
        let bad = |m: String| bad_request(m);
        for (name, value) in body {
            let as_text = || value.as_str().map(str::to_owned);
            match name.as_str() {
                "Ref_Key" | "Code" | "DataVersion" | "Predefined" | "PredefinedDataName" => {}
                "Description" => c.description = as_text().unwrap_or_default(),
                "НаименованиеПолное" => {
                    c.full_name = as_text().unwrap_or_default()
                }
                "ИНН" => c.inn = as_text().unwrap_or_default(),
                "КПП" => c.kpp = as_text().unwrap_or_default(),
                "DeletionMark" => c.deletion_mark = value.as_bool().unwrap_or(false),
                "IsFolder" => c.is_folder = value.as_bool().unwrap_or(false),
                "Parent_Key" => {
                    c.parent_key = as_text().filter(|k| k != EMPTY_REF);
                }
                "КонтактнаяИнформация" => {
                    let rows = value.as_array().ok_or_else(|| {
                        bad("КонтактнаяИнформация: ожидается массив строк".into())
                    })?;
                    let mut contacts = Vec::with_capacity(rows.len());
                    for (i, row) in rows.iter().enumerate() {
                        contacts.push(contact_from(row).map_err(|m| {
                            bad(format!("КонтактнаяИнформация, строка {}: {m}", i + 1))
                        })?);
                    }
                    c.contacts = contacts;
                }
                other => {
                    if !self.extras.iter().any(|(n, _)| n == other) {
                        return Err(bad(format!(
                            "Неизвестное свойство {other} для {COUNTERPARTIES}"
                        )));
                    }
                    c.extra.insert(other.to_owned(), value);
                }
            }
        }
        Ok(())
    }

    fn create_counterparty(
        &mut self,
        state: &State,
        body: Map<String, Value>,
    ) -> Result<Response<Body>, Reject> {
        let key = self.new_key();
        let mut c = MockCounterparty::new(key.clone(), "");
        c.full_name = String::new();
        self.apply(&mut c, body)?;
        let version = self.bump();
        let code = format!("{:09}", self.next_code);
        self.next_code += 1;
        let at = self.rows.len();
        self.by_key.insert(key.clone(), at);
        self.rows.push(Row {
            cp: c,
            code,
            data_version: version,
        });
        Ok(self.entity_answer(state, StatusCode::CREATED, &key))
    }

    fn patch_counterparty(
        &mut self,
        state: &State,
        key: &str,
        body: Map<String, Value>,
    ) -> Result<Response<Body>, Reject> {
        let Some(&i) = self.by_key.get(key) else {
            return Err(not_found(format!(
                "Не найден объект {COUNTERPARTIES}(guid'{key}')"
            )));
        };
        let mut c = self.rows[i].cp.clone();
        self.apply(&mut c, body)?;
        let version = self.bump();
        self.rows[i].cp = c;
        self.rows[i].data_version = version;
        Ok(self.entity_answer(state, StatusCode::OK, key))
    }

    /// The entity `key` as 1C answers a write: every property, JSON.
    fn entity_answer(&self, state: &State, status: StatusCode, key: &str) -> Response<Body> {
        let i = self.by_key[key];
        let mut m = Map::new();
        m.insert(
            "odata.metadata".into(),
            json!(format!(
                "http://{}{ROOT_PATH}/$metadata#{COUNTERPARTIES}/@Element",
                state.addr
            )),
        );
        m.extend(self.render(Set::Counterparties, Item::Counterparty(&self.rows[i]), None));
        respond(
            status,
            "application/json;charset=utf-8",
            Value::Object(m).to_string(),
        )
    }

    /// A bank account or a bank: its known properties, a new key.
    fn create_plain(
        &mut self,
        state: &State,
        set: Set,
        body: Map<String, Value>,
    ) -> Result<Response<Body>, Reject> {
        let props = match set {
            Set::BankAccounts => BANK_ACCOUNT_PROPS,
            _ => BANK_PROPS,
        };
        if let Some(bad) = body.keys().find(|k| !props.iter().any(|(n, _)| n == k)) {
            return Err(bad_request(format!(
                "Неизвестное свойство {bad} для {}",
                set.name()
            )));
        }
        let key = self.new_key();
        let version = self.bump();
        let mut row = Map::new();
        for (name, ty) in props {
            let default = match ty {
                Ty::Bool => json!(false),
                Ty::Guid => json!(EMPTY_REF),
                _ => json!(""),
            };
            row.insert(
                (*name).to_owned(),
                body.get(*name).cloned().unwrap_or(default),
            );
        }
        row.insert("Ref_Key".into(), json!(key));
        if set == Set::BankAccounts {
            row.insert("DataVersion".into(), json!(data_version(version)));
            self.bank_accounts.push(row.clone());
        } else {
            self.banks.push(row.clone());
        }
        let mut m = Map::new();
        m.insert(
            "odata.metadata".into(),
            json!(format!(
                "http://{}{ROOT_PATH}/$metadata#{}/@Element",
                state.addr,
                set.name()
            )),
        );
        m.extend(row);
        Ok(respond(
            StatusCode::CREATED,
            "application/json;charset=utf-8",
            Value::Object(m).to_string(),
        ))
    }
}

/// A contact row as POSTed or PATCHed: `LineNumber` required, known
/// properties only, `Тип` one of the three the mock keeps.
fn contact_from(row: &Value) -> Result<MockContact, String> {
    let row = row.as_object().ok_or("ожидается объект")?;
    if !row.contains_key("LineNumber") {
        return Err("не заполнен LineNumber".into());
    }
    if let Some(bad) = row
        .keys()
        .find(|k| !CONTACT_PROPS.iter().any(|(n, _)| n == k))
    {
        return Err(format!("Неизвестное свойство {bad}"));
    }
    let text = |name: &str| {
        row.get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let kind = match text("Тип").as_str() {
        "Телефон" => "Телефон",
        "АдресЭлектроннойПочты" => "АдресЭлектроннойПочты",
        "Адрес" => "Адрес",
        other => return Err(format!("Неизвестный тип контактной информации {other:?}")),
    };
    let kind_key = Some(text("Вид_Key")).filter(|k| !k.is_empty());
    Ok(MockContact {
        kind,
        presentation: text("Представление"),
        phone_digits: text("НомерТелефона"),
        email: text("АдресЭП"),
        kind_key,
    })
}

fn odata_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = json!({"odata.error": {"code": "-1", "message": {"lang": "ru", "value": message}}});
    respond(status, "application/json;charset=utf-8", body.to_string())
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert("DataServiceVersion", HeaderValue::from_static("3.0"));
    r
}

// ---------------------------------------------------------------- parsing

#[derive(Debug)]
struct Reject {
    status: StatusCode,
    /// `odata.error`'s code: `-1` but for what 1C gives another (`13`).
    code: &'static str,
    message: String,
}

fn bad_request(message: impl Into<String>) -> Reject {
    Reject {
        status: StatusCode::BAD_REQUEST,
        code: "-1",
        message: message.into(),
    }
}

fn not_found(message: impl Into<String>) -> Reject {
    Reject {
        status: StatusCode::NOT_FOUND,
        code: "-1",
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Set {
    Counterparties,
    Contacts,
    Register,
    BankAccounts,
    Banks,
    Kinds,
}

impl Set {
    fn name(self) -> &'static str {
        match self {
            Set::Counterparties => COUNTERPARTIES,
            Set::Contacts => CONTACTS,
            Set::Register => REGISTER,
            Set::BankAccounts => BANK_ACCOUNTS,
            Set::Banks => BANKS,
            Set::Kinds => KINDS,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Atom,
}

#[derive(Debug)]
struct Plan {
    set: Set,
    key: Option<String>,
    format: Result<Format, String>,
    select: Option<Vec<String>>,
    /// (property, descending)
    orderby: Vec<(String, bool)>,
    top: Option<usize>,
    skip: usize,
    filter: Option<Expr>,
    inline_count: bool,
}

struct Parsed {
    entity_set: Option<String>,
    key: Option<String>,
    query: Vec<(String, String)>,
    plan: Result<Plan, Reject>,
}

impl Parsed {
    fn kind(&self) -> RequestKind {
        if self.key.is_some() {
            return RequestKind::ByRef;
        }
        let filter = self
            .query
            .iter()
            .find(|(k, _)| k == "$filter")
            .map(|(_, v)| v.as_str());
        let by_ref = match &self.plan {
            Ok(Plan {
                filter: Some(expr), ..
            }) => expr.names_ref_key(),
            _ => filter.is_some_and(|f| f.contains("Ref_Key")),
        };
        match self.entity_set.as_deref() {
            Some(CONTACTS) if filter.is_some_and(|f| f.contains("substringof")) => {
                RequestKind::Lookup
            }
            Some(COUNTERPARTIES | CONTACTS) if by_ref => RequestKind::ByRef,
            Some(COUNTERPARTIES) => RequestKind::CatalogPage,
            Some(CONTACTS) => RequestKind::ContactsPage,
            Some(REGISTER) => RequestKind::RegisterPage,
            Some(BANK_ACCOUNTS) => RequestKind::BankAccountsPage,
            Some(BANKS) => RequestKind::BanksPage,
            _ => RequestKind::Other,
        }
    }
}

/// Strict percent-decoding: every `%` starts two hex digits, `+` is a
/// plus, and the bytes must be UTF-8.
fn decode(raw: &str) -> Result<String, String> {
    let b = raw.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b'%'
            && !(b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        {
            return Err(format!("bad percent-encoding in {raw:?}"));
        }
    }
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("percent-encoded bytes are not UTF-8 in {raw:?}"))
}

fn parse_target(target: &str) -> Parsed {
    let mut parsed = Parsed {
        entity_set: None,
        key: None,
        query: Vec::new(),
        plan: Err(bad_request("")),
    };
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    // The query is decoded first, so the log shows it even when the path fails.
    let mut query_error = None;
    for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match (decode(k), decode(v)) {
            (Ok(k), Ok(v)) => parsed.query.push((k, v)),
            (Err(e), _) | (_, Err(e)) => {
                query_error.get_or_insert(e);
            }
        }
    }
    let (mut entity_set, mut key) = (None, None);
    let planned = plan(
        target,
        raw_path,
        &parsed.query,
        query_error,
        &mut entity_set,
        &mut key,
    );
    parsed.plan = planned;
    parsed.entity_set = entity_set;
    parsed.key = key;
    parsed
}

fn plan(
    target: &str,
    raw_path: &str,
    query: &[(String, String)],
    query_error: Option<String>,
    entity_set: &mut Option<String>,
    entity_key: &mut Option<String>,
) -> Result<Plan, Reject> {
    let Some(rest) = raw_path
        .strip_prefix(ROOT_PATH)
        .and_then(|r| r.strip_prefix('/'))
    else {
        return Err(not_found(format!(
            "mock 1C serves only {ROOT_PATH}/…, not {raw_path}"
        )));
    };
    let rest = decode(rest).map_err(bad_request)?;
    let (name, key) = match rest.split_once('(') {
        Some((name, tail)) => {
            let inner = tail
                .strip_suffix(')')
                .ok_or_else(|| bad_request(format!("Неверный формат ключа сущности: {rest}")))?;
            let key = inner
                .strip_prefix("guid'")
                .and_then(|k| k.strip_suffix('\''))
                .filter(|k| is_guid(k))
                .ok_or_else(|| {
                    bad_request(format!(
                        "Неверный формат ключа сущности: {inner} (mock 1C expects (guid'…'))"
                    ))
                })?;
            (name.to_owned(), Some(key.to_ascii_lowercase()))
        }
        None => (rest.clone(), None),
    };
    if name.contains('/') || name == "$metadata" || name.is_empty() {
        return Err(not_found(format!("mock 1C does not serve {rest}")));
    }
    *entity_set = Some(name.clone());
    *entity_key = key.clone();
    let set = match name.as_str() {
        COUNTERPARTIES => Set::Counterparties,
        CONTACTS => Set::Contacts,
        REGISTER => Set::Register,
        BANK_ACCOUNTS => Set::BankAccounts,
        BANKS => Set::Banks,
        KINDS => Set::Kinds,
        _ => return Err(not_found(format!("Не найден набор сущностей: {name}"))),
    };
    if set != Set::Counterparties && key.is_some() {
        return Err(bad_request(
            "mock 1C does not serve single rows of a tabular section or a register",
        ));
    }
    if !target.is_ascii() {
        return Err(bad_request(format!(
            "unencoded non-ASCII characters in the request target {target:?}"
        )));
    }
    if let Some(e) = query_error {
        return Err(bad_request(e));
    }

    let mut plan = Plan {
        set,
        key,
        format: Ok(Format::Atom),
        select: None,
        orderby: Vec::new(),
        top: None,
        skip: 0,
        filter: None,
        inline_count: false,
    };
    let mut seen: Vec<&str> = Vec::new();
    for (k, v) in query {
        if !k.starts_with('$') {
            continue; // custom query options are ignored, as OData allows
        }
        if seen.contains(&k.as_str()) {
            return Err(bad_request(format!("Параметр {k} указан дважды")));
        }
        seen.push(k);
        match k.as_str() {
            "$format" => {
                plan.format = match v.as_str() {
                    "json" | "application/json" => Ok(Format::Json),
                    "atom" | "xml" | "application/atom+xml" => Ok(Format::Atom),
                    other => Err(other.to_owned()),
                }
            }
            "$select" => {
                plan.select = Some(
                    v.split(',')
                        .map(|f| f.trim().to_owned())
                        .filter(|f| !f.is_empty())
                        .collect(),
                )
            }
            "$orderby" => {
                for item in v.split(',') {
                    let mut words = item.split_whitespace();
                    let field = words
                        .next()
                        .ok_or_else(|| bad_request(format!("Неверный $orderby: {v}")))?;
                    let desc = match words.next() {
                        None | Some("asc") => false,
                        Some("desc") => true,
                        Some(other) => {
                            return Err(bad_request(format!("Неверный $orderby: {other}")))
                        }
                    };
                    if words.next().is_some() {
                        return Err(bad_request(format!("Неверный $orderby: {v}")));
                    }
                    plan.orderby.push((field.to_owned(), desc));
                }
            }
            "$top" => {
                plan.top = Some(
                    v.parse()
                        .map_err(|_| bad_request(format!("Неверное значение $top: {v}")))?,
                )
            }
            "$skip" => {
                plan.skip = v
                    .parse()
                    .map_err(|_| bad_request(format!("Неверное значение $skip: {v}")))?
            }
            "$filter" => {
                plan.filter = Some(
                    parse_filter(v)
                        .map_err(|e| bad_request(format!("Ошибка в $filter ({v}): {e}")))?,
                )
            }
            "$inlinecount" => match v.as_str() {
                "allpages" => plan.inline_count = true,
                "none" => {}
                other => {
                    return Err(bad_request(format!(
                        "Неверное значение $inlinecount: {other}"
                    )))
                }
            },
            other => {
                return Err(bad_request(format!(
                    "Параметр {other} не поддерживается (mock 1C)"
                )))
            }
        }
    }
    if plan.key.is_some()
        && (plan.filter.is_some()
            || plan.top.is_some()
            || plan.skip != 0
            || !plan.orderby.is_empty())
    {
        return Err(bad_request(
            "mock 1C: $filter, $orderby, $top and $skip are not for a single entity",
        ));
    }
    Ok(plan)
}

// ---------------------------------------------------------------- $filter

#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Str(String),
    Guid(String),
    Bool(bool),
    Int(i64),
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cmp {
        field: String,
        negate: bool,
        lit: Lit,
    },
    SubstringOf {
        needle: String,
        field: String,
        /// `substringof(…) eq false`
        negate: bool,
    },
}

impl Expr {
    fn names_ref_key(&self) -> bool {
        match self {
            Expr::And(a, b) | Expr::Or(a, b) => a.names_ref_key() || b.names_ref_key(),
            Expr::Cmp {
                field,
                lit: Lit::Guid(_),
                ..
            } => field == "Ref_Key",
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Guid(String),
    Int(i64),
    Open,
    Close,
    Comma,
}

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    let read_quoted = |i: &mut usize| -> Result<String, String> {
        // chars[*i] is the opening quote.
        let mut out = String::new();
        *i += 1;
        loop {
            match chars.get(*i) {
                None => return Err("unterminated string literal".into()),
                Some('\'') if chars.get(*i + 1) == Some(&'\'') => {
                    out.push('\'');
                    *i += 2;
                }
                Some('\'') => {
                    *i += 1;
                    return Ok(out);
                }
                Some(&c) => {
                    out.push(c);
                    *i += 1;
                }
            }
        }
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' => i += 1,
            '(' => {
                toks.push(Tok::Open);
                i += 1;
            }
            ')' => {
                toks.push(Tok::Close);
                i += 1;
            }
            ',' => {
                toks.push(Tok::Comma);
                i += 1;
            }
            '\'' => toks.push(Tok::Str(read_quoted(&mut i)?)),
            c if c.is_ascii_digit() || c == '-' => {
                let start = i;
                i += 1;
                while chars.get(i).is_some_and(char::is_ascii_digit) {
                    i += 1;
                }
                let text: String = chars[start..i].iter().collect();
                toks.push(Tok::Int(
                    text.parse()
                        .map_err(|_| format!("bad number literal {text}"))?,
                ));
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while chars
                    .get(i)
                    .is_some_and(|c| c.is_alphanumeric() || *c == '_')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                if word == "guid" && chars.get(i) == Some(&'\'') {
                    let g = read_quoted(&mut i)?;
                    if !is_guid(&g) {
                        return Err(format!("bad guid literal guid'{g}'"));
                    }
                    toks.push(Tok::Guid(g.to_ascii_lowercase()));
                } else {
                    toks.push(Tok::Ident(word));
                }
            }
            other => return Err(format!("unexpected character {other:?}")),
        }
    }
    Ok(toks)
}

fn parse_filter(s: &str) -> Result<Expr, String> {
    let toks = tokenize(s)?;
    let mut p = FilterParser { toks, pos: 0 };
    let expr = p.or_expr()?;
    if p.pos != p.toks.len() {
        return Err(format!("unexpected {:?}", p.toks[p.pos]));
    }
    Ok(expr)
}

struct FilterParser {
    toks: Vec<Tok>,
    pos: usize,
}

impl FilterParser {
    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn peek_word(&self, word: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Tok::Ident(w)) if w == word)
    }

    fn expect(&mut self, tok: Tok) -> Result<(), String> {
        match self.next() {
            Some(t) if t == tok => Ok(()),
            other => Err(format!("expected {tok:?}, found {other:?}")),
        }
    }

    fn or_expr(&mut self) -> Result<Expr, String> {
        let mut left = self.and_expr()?;
        while self.peek_word("or") {
            self.pos += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and_expr()?));
        }
        Ok(left)
    }

    fn and_expr(&mut self) -> Result<Expr, String> {
        let mut left = self.primary()?;
        while self.peek_word("and") {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.primary()?));
        }
        Ok(left)
    }

    /// `eq` → false, `ne` → true (negate).
    fn operator(&mut self) -> Result<bool, String> {
        match self.next() {
            Some(Tok::Ident(op)) if op == "eq" => Ok(false),
            Some(Tok::Ident(op)) if op == "ne" => Ok(true),
            Some(Tok::Ident(op)) => Err(format!("operator {op} is not supported by the mock")),
            other => Err(format!("expected eq or ne, found {other:?}")),
        }
    }

    fn primary(&mut self) -> Result<Expr, String> {
        match self.next() {
            Some(Tok::Open) => {
                let e = self.or_expr()?;
                self.expect(Tok::Close)?;
                Ok(e)
            }
            Some(Tok::Ident(f)) if f == "substringof" => {
                self.expect(Tok::Open)?;
                let needle = match self.next() {
                    Some(Tok::Str(s)) => s,
                    other => {
                        return Err(format!(
                            "substringof wants a string literal first, found {other:?}"
                        ))
                    }
                };
                self.expect(Tok::Comma)?;
                let field = match self.next() {
                    Some(Tok::Ident(f)) => f,
                    other => {
                        return Err(format!(
                            "substringof wants a property second, found {other:?}"
                        ))
                    }
                };
                self.expect(Tok::Close)?;
                let mut negate = false;
                if self.peek_word("eq") || self.peek_word("ne") {
                    let ne = self.operator()?;
                    let value = match self.next() {
                        Some(Tok::Ident(b)) if b == "true" => true,
                        Some(Tok::Ident(b)) if b == "false" => false,
                        other => return Err(format!("expected true or false, found {other:?}")),
                    };
                    negate = ne == value;
                }
                Ok(Expr::SubstringOf {
                    needle,
                    field,
                    negate,
                })
            }
            Some(Tok::Ident(w)) if matches!(w.as_str(), "not" | "true" | "false" | "null") => {
                Err(format!("{w} here is not supported by the mock"))
            }
            Some(Tok::Ident(field)) => {
                if self.toks.get(self.pos) == Some(&Tok::Open) {
                    return Err(format!("function {field} is not supported by the mock"));
                }
                let negate = self.operator()?;
                let lit = match self.next() {
                    Some(Tok::Str(s)) => Lit::Str(s),
                    Some(Tok::Guid(g)) => Lit::Guid(g),
                    // A composite reference's value: `cast(guid'…', 'Catalog_X')`
                    // (1C 8.3.8's filter on composite-type fields).
                    Some(Tok::Ident(c)) if c == "cast" => {
                        self.expect(Tok::Open)?;
                        let g = match self.next() {
                            Some(Tok::Guid(g)) => g,
                            other => {
                                return Err(format!("cast wants a guid first, found {other:?}"))
                            }
                        };
                        self.expect(Tok::Comma)?;
                        match self.next() {
                            Some(Tok::Str(ty)) if !ty.is_empty() => {}
                            other => {
                                return Err(format!(
                                    "cast wants a type name second, found {other:?}"
                                ))
                            }
                        }
                        self.expect(Tok::Close)?;
                        Lit::Guid(g)
                    }
                    Some(Tok::Int(n)) => Lit::Int(n),
                    Some(Tok::Ident(b)) if b == "true" => Lit::Bool(true),
                    Some(Tok::Ident(b)) if b == "false" => Lit::Bool(false),
                    other => return Err(format!("expected a literal, found {other:?}")),
                };
                Ok(Expr::Cmp { field, negate, lit })
            }
            other => Err(format!("unexpected {other:?}")),
        }
    }
}

// ---------------------------------------------------------------- answering

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Guid,
    Str,
    Bool,
    Int,
    /// Dates, collections, anything that is only shown.
    Other,
}

/// One property's value for filtering and sorting.
#[derive(Debug, Clone, Copy)]
enum Prop<'a> {
    Str(&'a str),
    Bool(bool),
    Int(i64),
    None,
}

impl Prop<'_> {
    fn cmp(&self, other: &Prop<'_>) -> Ordering {
        match (self, other) {
            (Prop::Str(a), Prop::Str(b)) => a.cmp(b),
            (Prop::Bool(a), Prop::Bool(b)) => a.cmp(b),
            (Prop::Int(a), Prop::Int(b)) => a.cmp(b),
            _ => Ordering::Equal,
        }
    }
}

fn json_prop(v: &Value) -> Prop<'_> {
    match v {
        Value::String(s) => Prop::Str(s),
        Value::Bool(b) => Prop::Bool(*b),
        Value::Number(n) => n.as_i64().map_or(Prop::None, Prop::Int),
        _ => Prop::None,
    }
}

fn json_ty(v: &Value) -> Ty {
    match v {
        Value::String(_) => Ty::Str,
        Value::Bool(_) => Ty::Bool,
        Value::Number(_) => Ty::Int,
        _ => Ty::Other,
    }
}

const CATALOG_PROPS: &[(&str, Ty)] = &[
    ("Ref_Key", Ty::Guid),
    ("DataVersion", Ty::Str),
    ("DeletionMark", Ty::Bool),
    ("Parent_Key", Ty::Guid),
    ("IsFolder", Ty::Bool),
    ("Code", Ty::Str),
    ("Description", Ty::Str),
    ("НаименованиеПолное", Ty::Str),
    ("ИНН", Ty::Str),
    ("КПП", Ty::Str),
    ("ДатаСоздания", Ty::Other),
    ("Predefined", Ty::Bool),
    ("PredefinedDataName", Ty::Str),
    ("КонтактнаяИнформация", Ty::Other),
    ("ДополнительныеРеквизиты", Ty::Other),
];

const CONTACT_PROPS: &[(&str, Ty)] = &[
    ("Ref_Key", Ty::Guid),
    ("LineNumber", Ty::Int),
    ("Тип", Ty::Str),
    ("Вид_Key", Ty::Guid),
    ("Представление", Ty::Str),
    ("ЗначенияПолей", Ty::Str),
    ("НомерТелефона", Ty::Str),
    ("АдресЭП", Ty::Str),
];

/// The register's properties: dimensions `Объект` (a composite reference:
/// the GUID and its type), `Тип`, `Вид`; resources `Представление`,
/// `Поле1`…`Поле3`, `Комментарий`.
const REGISTER_PROPS: &[(&str, Ty)] = &[
    ("Объект", Ty::Guid),
    ("Объект_Type", Ty::Str),
    ("Тип", Ty::Str),
    ("Вид", Ty::Guid),
    ("Представление", Ty::Str),
    ("Поле1", Ty::Str),
    ("Поле2", Ty::Str),
    ("Поле3", Ty::Str),
    ("Комментарий", Ty::Str),
];

const BANK_ACCOUNT_PROPS: &[(&str, Ty)] = &[
    ("Ref_Key", Ty::Guid),
    ("DataVersion", Ty::Str),
    ("DeletionMark", Ty::Bool),
    ("Owner", Ty::Guid),
    ("Owner_Type", Ty::Str),
    ("Description", Ty::Str),
    ("НомерСчета", Ty::Str),
    ("Банк_Key", Ty::Guid),
];

const KIND_PROPS: &[(&str, Ty)] = &[
    ("Ref_Key", Ty::Guid),
    ("DeletionMark", Ty::Bool),
    ("Description", Ty::Str),
    ("Predefined", Ty::Bool),
    ("PredefinedDataName", Ty::Str),
];

const BANK_PROPS: &[(&str, Ty)] = &[
    ("Ref_Key", Ty::Guid),
    ("DeletionMark", Ty::Bool),
    ("IsFolder", Ty::Bool),
    ("Code", Ty::Str),
    ("Description", Ty::Str),
    ("КоррСчет", Ty::Str),
    ("Город", Ty::Str),
];

#[derive(Clone, Copy)]
enum Item<'a> {
    /// A bank account or bank row and its index in its list.
    Plain(&'a Map<String, Value>, usize),
    Counterparty(&'a Row),
    /// Owner and index into its contacts.
    Contact(&'a Row, usize),
    /// The same contact as a register row.
    Register(&'a Row, usize),
}

impl Data {
    fn property_type(&self, set: Set, name: &str) -> Option<Ty> {
        let fixed = match set {
            Set::Counterparties => CATALOG_PROPS,
            Set::Contacts => CONTACT_PROPS,
            Set::Register => REGISTER_PROPS,
            Set::BankAccounts => BANK_ACCOUNT_PROPS,
            Set::Banks => BANK_PROPS,
            Set::Kinds => KIND_PROPS,
        };
        if let Some((_, ty)) = fixed.iter().find(|(n, _)| *n == name) {
            return Some(*ty);
        }
        if set == Set::Counterparties {
            return self
                .extras
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, d)| json_ty(d));
        }
        None
    }

    fn property_names(&self, set: Set) -> Vec<&str> {
        match set {
            Set::Counterparties => CATALOG_PROPS
                .iter()
                .map(|(n, _)| *n)
                .chain(self.extras.iter().map(|(n, _)| n.as_str()))
                .collect(),
            Set::Contacts => CONTACT_PROPS.iter().map(|(n, _)| *n).collect(),
            Set::Register => REGISTER_PROPS.iter().map(|(n, _)| *n).collect(),
            Set::BankAccounts => BANK_ACCOUNT_PROPS.iter().map(|(n, _)| *n).collect(),
            Set::Banks => BANK_PROPS.iter().map(|(n, _)| *n).collect(),
            Set::Kinds => KIND_PROPS.iter().map(|(n, _)| *n).collect(),
        }
    }

    fn items(&self, set: Set) -> Vec<Item<'_>> {
        match set {
            Set::Counterparties => self.rows.iter().map(Item::Counterparty).collect(),
            Set::Contacts => self
                .rows
                .iter()
                .flat_map(|r| (0..r.cp.contacts.len()).map(move |i| Item::Contact(r, i)))
                .collect(),
            Set::Register => self
                .rows
                .iter()
                .flat_map(|r| (0..r.cp.contacts.len()).map(move |i| Item::Register(r, i)))
                .collect(),
            Set::BankAccounts => self
                .plain(set)
                .iter()
                .enumerate()
                .map(|(i, m)| Item::Plain(m, i))
                .collect(),
            Set::Banks | Set::Kinds => self
                .plain(set)
                .iter()
                .enumerate()
                .map(|(i, m)| Item::Plain(m, i))
                .collect(),
        }
    }

    /// The rows of a bank set.
    fn plain(&self, set: Set) -> &[Map<String, Value>] {
        match set {
            Set::BankAccounts => &self.bank_accounts,
            Set::Banks => &self.banks,
            Set::Kinds => &self.kinds,
            _ => &[],
        }
    }

    fn item(&self, set: Set, row: usize, line: usize) -> Item<'_> {
        match set {
            Set::Counterparties => Item::Counterparty(&self.rows[row]),
            Set::Contacts => Item::Contact(&self.rows[row], line),
            Set::Register => Item::Register(&self.rows[row], line),
            Set::BankAccounts | Set::Banks | Set::Kinds => Item::Plain(&self.plain(set)[row], row),
        }
    }

    /// Stable sort by `$orderby` (no-op without one: insertion order).
    fn sort(&self, items: &mut [Item<'_>], orderby: &[(String, bool)]) {
        if orderby.is_empty() {
            return;
        }
        items.sort_by(|a, b| {
            orderby
                .iter()
                .map(|(f, desc)| {
                    let o = self.prop(*a, f).cmp(&self.prop(*b, f));
                    if *desc {
                        o.reverse()
                    } else {
                        o
                    }
                })
                .find(|o| o.is_ne())
                .unwrap_or(Ordering::Equal)
        });
    }

    /// The whole set in `$orderby` order, as (row, line) indices; kept until
    /// the next write.
    fn ordered(&mut self, set: Set, orderby: &[(String, bool)]) -> Arc<Vec<(usize, usize)>> {
        if let Some(c) = self
            .orders
            .iter()
            .find(|c| c.set == set && c.orderby == orderby)
        {
            return Arc::clone(&c.items);
        }
        let order: Vec<(usize, usize)> = {
            let mut items = self.items(set);
            self.sort(&mut items, orderby);
            items
                .iter()
                .map(|it| match it {
                    Item::Counterparty(r) => (self.by_key[&r.cp.ref_key], 0),
                    Item::Plain(_, i) => (*i, 0),
                    Item::Contact(r, line) | Item::Register(r, line) => {
                        (self.by_key[&r.cp.ref_key], *line)
                    }
                })
                .collect()
        };
        let items = Arc::new(order);
        if self.orders.len() >= 4 {
            self.orders.remove(0);
        }
        self.orders.push(CachedOrder {
            set,
            orderby: orderby.to_vec(),
            items: Arc::clone(&items),
        });
        items
    }

    fn prop<'a>(&'a self, item: Item<'a>, name: &str) -> Prop<'a> {
        match item {
            Item::Plain(m, _) => m.get(name).map_or(Prop::None, json_prop),
            Item::Counterparty(row) => {
                let c = &row.cp;
                match name {
                    "Ref_Key" => Prop::Str(&c.ref_key),
                    "DeletionMark" => Prop::Bool(c.deletion_mark),
                    "Parent_Key" => Prop::Str(c.parent_key.as_deref().unwrap_or(EMPTY_REF)),
                    "IsFolder" => Prop::Bool(c.is_folder),
                    "Code" => Prop::Str(&row.code),
                    "Description" => Prop::Str(&c.description),
                    "НаименованиеПолное" => Prop::Str(&c.full_name),
                    "ИНН" => Prop::Str(&c.inn),
                    "КПП" => Prop::Str(&c.kpp),
                    "Predefined" => Prop::Bool(false),
                    "PredefinedDataName" => Prop::Str(""),
                    _ => match c.extra.get(name) {
                        Some(v) => json_prop(v),
                        None => self
                            .extras
                            .iter()
                            .find(|(n, _)| n == name)
                            .map_or(Prop::None, |(_, d)| json_prop(d)),
                    },
                }
            }
            Item::Contact(row, i) => {
                let k = &row.cp.contacts[i];
                match name {
                    "Ref_Key" => Prop::Str(&row.cp.ref_key),
                    "LineNumber" => Prop::Int(i as i64 + 1),
                    "Тип" => Prop::Str(k.kind),
                    "Вид_Key" => Prop::Str(k.kind_key()),
                    "Представление" => Prop::Str(&k.presentation),
                    "ЗначенияПолей" => Prop::Str(""),
                    "НомерТелефона" => Prop::Str(&k.phone_digits),
                    "АдресЭП" => Prop::Str(&k.email),
                    _ => Prop::None,
                }
            }
            Item::Register(row, i) => {
                let k = &row.cp.contacts[i];
                match name {
                    "Объект" => Prop::Str(&row.cp.ref_key),
                    "Объект_Type" => Prop::Str("StandardODATA.Catalog_Контрагенты"),
                    "Тип" => Prop::Str(k.kind),
                    "Вид" => Prop::Str(k.kind_key()),
                    "Представление" => Prop::Str(&k.presentation),
                    "Поле1" | "Поле2" | "Поле3" | "Комментарий" => {
                        Prop::Str("")
                    }
                    _ => Prop::None,
                }
            }
        }
    }

    /// The JSON value of one property (`DataVersion` and the collections
    /// are not in [`Data::prop`]).
    fn value(&self, item: Item<'_>, name: &str) -> Value {
        match (item, name) {
            (Item::Counterparty(row), "DataVersion") => json!(data_version(row.data_version)),
            (Item::Counterparty(_), "ДатаСоздания") => json!("0001-01-01T00:00:00"),
            (Item::Counterparty(_), "ДополнительныеРеквизиты") => json!([]),
            (Item::Counterparty(row), "КонтактнаяИнформация") => Value::Array(
                (0..row.cp.contacts.len())
                    .map(|i| {
                        let mut m = Map::new();
                        for (n, _) in &CONTACT_PROPS[1..] {
                            m.insert((*n).to_owned(), self.value(Item::Contact(row, i), n));
                        }
                        Value::Object(m)
                    })
                    .collect(),
            ),
            (Item::Counterparty(row), _) => match row.cp.extra.get(name) {
                Some(v) => v.clone(),
                None => match self.extras.iter().find(|(n, _)| n == name) {
                    Some((_, d)) => d.clone(),
                    None => prop_json(self.prop(item, name)),
                },
            },
            (Item::Contact(_, i), "LineNumber") => json!((i + 1).to_string()),
            (Item::Contact(..) | Item::Register(..), _) => prop_json(self.prop(item, name)),
            (Item::Plain(m, _), _) => m.get(name).cloned().unwrap_or(Value::Null),
        }
    }

    fn render(&self, set: Set, item: Item<'_>, select: Option<&[String]>) -> Map<String, Value> {
        let mut m = Map::new();
        match select {
            Some(fields) => {
                for f in fields {
                    m.insert(f.clone(), self.value(item, f));
                }
            }
            None => {
                for n in self.property_names(set) {
                    m.insert(n.to_owned(), self.value(item, n));
                }
                if let Item::Counterparty(row) = item {
                    let this = format!("{COUNTERPARTIES}(guid'{}')", row.cp.ref_key);
                    m.insert(
                        "Parent@navigationLinkUrl".into(),
                        json!(format!("{this}/Parent")),
                    );
                    m.insert(
                        "ДополнительныеРеквизиты@navigationLinkUrl".into(),
                        json!(format!("{this}/ДополнительныеРеквизиты")),
                    );
                }
            }
        }
        m
    }

    fn eval(&self, expr: &Expr, item: Item<'_>) -> bool {
        match expr {
            Expr::And(a, b) => self.eval(a, item) && self.eval(b, item),
            Expr::Or(a, b) => self.eval(a, item) || self.eval(b, item),
            Expr::SubstringOf {
                needle,
                field,
                negate,
            } => {
                let found = match self.prop(item, field) {
                    Prop::Str(s) => s.to_lowercase().contains(&needle.to_lowercase()),
                    _ => false,
                };
                found != *negate
            }
            Expr::Cmp { field, negate, lit } => {
                let equal = match (self.prop(item, field), lit) {
                    (Prop::Str(s), Lit::Guid(g)) => s.eq_ignore_ascii_case(g),
                    (Prop::Str(s), Lit::Str(t)) => s == t,
                    (Prop::Bool(b), Lit::Bool(c)) => b == *c,
                    (Prop::Int(n), Lit::Int(m)) => n == *m,
                    _ => false,
                };
                equal != *negate
            }
        }
    }

    /// What 1C would refuse: unknown properties, mismatched literal types.
    fn check_filter(&self, set: Set, expr: &Expr) -> Result<(), String> {
        match expr {
            Expr::And(a, b) | Expr::Or(a, b) => {
                self.check_filter(set, a)?;
                self.check_filter(set, b)
            }
            Expr::SubstringOf { field, .. } => match self.property_type(set, field) {
                None => Err(format!("Неизвестное свойство {field} в $filter")),
                Some(Ty::Str) => Ok(()),
                Some(_) => Err(format!("substringof: свойство {field} не строка")),
            },
            Expr::Cmp { field, lit, .. } => {
                let ty = self
                    .property_type(set, field)
                    .ok_or_else(|| format!("Неизвестное свойство {field} в $filter"))?;
                let fits = matches!(
                    (ty, lit),
                    (Ty::Guid, Lit::Guid(_))
                        | (Ty::Str, Lit::Str(_))
                        | (Ty::Bool, Lit::Bool(_))
                        | (Ty::Int, Lit::Int(_))
                );
                if fits {
                    Ok(())
                } else {
                    Err(format!(
                        "Несовместимые типы в $filter: свойство {field} ({ty:?}) и {lit:?}"
                    ))
                }
            }
        }
    }
}

fn prop_json(p: Prop<'_>) -> Value {
    match p {
        Prop::Str(s) => json!(s),
        Prop::Bool(b) => json!(b),
        Prop::Int(n) => json!(n),
        Prop::None => Value::Null,
    }
}

fn answer(state: &State, plan: &Plan) -> Response<Body> {
    let format = match &plan.format {
        Ok(f) => *f,
        Err(other) => {
            return odata_error(
                StatusCode::NOT_ACCEPTABLE,
                &format!("Неподдерживаемый формат: {other}"),
            )
        }
    };
    let mut guard = state.data();
    let set = plan.set;
    // Unfiltered pages share one sorted order until the next write.
    let cached =
        (plan.key.is_none() && plan.filter.is_none()).then(|| guard.ordered(set, &plan.orderby));
    let data = &*guard;
    if let Some(fields) = &plan.select {
        if let Some(bad) = fields.iter().find(|f| data.property_type(set, f).is_none()) {
            return odata_error(
                StatusCode::BAD_REQUEST,
                &format!("Неизвестное свойство {bad} в $select для {}", set.name()),
            );
        }
    }
    for (field, _) in &plan.orderby {
        match data.property_type(set, field) {
            None => {
                return odata_error(
                    StatusCode::BAD_REQUEST,
                    &format!("Неизвестное свойство {field} в $orderby для {}", set.name()),
                )
            }
            Some(Ty::Other) => {
                return odata_error(
                    StatusCode::BAD_REQUEST,
                    &format!("По свойству {field} нельзя упорядочивать"),
                )
            }
            Some(_) => {}
        }
    }
    if let Some(expr) = &plan.filter {
        if let Err(e) = data.check_filter(set, expr) {
            return odata_error(StatusCode::BAD_REQUEST, &e);
        }
    }
    let metadata = format!("http://{}{ROOT_PATH}/$metadata#{}", state.addr, set.name());
    let select = plan.select.as_deref();

    if let Some(key) = &plan.key {
        let Some(&i) = data.by_key.get(key) else {
            return odata_error(
                StatusCode::NOT_FOUND,
                &format!("Не найден объект {COUNTERPARTIES}(guid'{key}')"),
            );
        };
        let item = Item::Counterparty(&data.rows[i]);
        let mut m = Map::new();
        m.insert(
            "odata.metadata".into(),
            json!(format!("{metadata}/@Element")),
        );
        m.extend(data.render(set, item, select));
        return match format {
            Format::Json => respond(
                StatusCode::OK,
                "application/json;charset=utf-8",
                Value::Object(m).to_string(),
            ),
            Format::Atom => atom(state, set, &[data.render(set, item, select)]),
        };
    }

    let (total, page): (usize, Vec<Map<String, Value>>) = match cached {
        Some(order) => (
            order.len(),
            order
                .iter()
                .skip(plan.skip)
                .take(plan.top.unwrap_or(usize::MAX))
                .map(|&(row, line)| data.render(set, data.item(set, row, line), select))
                .collect(),
        ),
        None => {
            let mut items = data.items(set);
            if let Some(expr) = &plan.filter {
                items.retain(|it| data.eval(expr, *it));
            }
            data.sort(&mut items, &plan.orderby);
            (
                items.len(),
                items
                    .into_iter()
                    .skip(plan.skip)
                    .take(plan.top.unwrap_or(usize::MAX))
                    .map(|it| data.render(set, it, select))
                    .collect(),
            )
        }
    };
    match format {
        Format::Json => {
            let mut m = Map::new();
            m.insert("odata.metadata".into(), json!(metadata));
            if plan.inline_count {
                m.insert("odata.count".into(), json!(total.to_string()));
            }
            m.insert(
                "value".into(),
                Value::Array(page.into_iter().map(Value::Object).collect()),
            );
            respond(
                StatusCode::OK,
                "application/json;charset=utf-8",
                Value::Object(m).to_string(),
            )
        }
        Format::Atom => atom(state, set, &page),
    }
}

/// What 1C answers without `$format=json`: an Atom feed (scalar properties only).
fn atom(state: &State, set: Set, entries: &[Map<String, Value>]) -> Response<Body> {
    fn esc(s: &str) -> String {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    }
    let mut xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<feed xmlns=\"http://www.w3.org/2005/Atom\" \
         xmlns:d=\"http://schemas.microsoft.com/ado/2007/08/dataservices\" \
         xmlns:m=\"http://schemas.microsoft.com/ado/2007/08/dataservices/metadata\" \
         xml:base=\"http://{}{ROOT_PATH}/\">\n<title type=\"text\">{}</title>\n",
        state.addr,
        set.name()
    );
    for e in entries {
        xml.push_str("<entry><content type=\"application/xml\"><m:properties>");
        for (k, v) in e.iter().filter(|(k, _)| !k.contains('@')) {
            let text = match v {
                Value::String(s) => esc(s),
                Value::Bool(_) | Value::Number(_) => v.to_string(),
                _ => continue,
            };
            xml.push_str(&format!("<d:{k}>{text}</d:{k}>"));
        }
        xml.push_str("</m:properties></content></entry>\n");
    }
    xml.push_str("</feed>\n");
    respond(
        StatusCode::OK,
        "application/atom+xml;type=feed;charset=utf-8",
        xml,
    )
}

// ---------------------------------------------------------------- payment documents

/// Incoming bank payments (Бухгалтерия 3.0's document).
pub const PAYMENTS: &str = "Document_ПоступлениеНаРасчетныйСчет";
/// Its tabular section of payment rows, embedded in each document.
pub const PAYMENT_ROWS: &str = "РасшифровкаПлатежа";

/// A payment document as the mock holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct MockPayment {
    pub ref_key: String,
    pub number: String,
    /// 1C's local time, `YYYY-MM-DDTHH:MM:SS`.
    pub date: String,
    /// Decimal text, served as a JSON number (`15000.5`).
    pub amount: String,
    pub counterparty: String,
    pub rows: Vec<MockPaymentRow>,
    pub posted: bool,
    pub deletion_mark: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MockPaymentRow {
    pub amount: String,
    pub invoice: String,
    pub contract: String,
}

impl MockPayment {
    /// A posted payment of `amount` with one row for invoice `invoice`.
    pub fn new(ref_key: &str, date: &str, amount: &str, invoice: &str) -> MockPayment {
        MockPayment {
            ref_key: ref_key.to_ascii_lowercase(),
            number: format!("0000-{:06}", ref_key.len()),
            date: date.to_owned(),
            amount: amount.to_owned(),
            counterparty: guid(7),
            rows: vec![MockPaymentRow {
                amount: amount.to_owned(),
                invoice: invoice.to_owned(),
                contract: EMPTY_REF.to_owned(),
            }],
            posted: true,
            deletion_mark: false,
        }
    }
}

#[derive(Default)]
struct PaymentDocs {
    /// By `Ref_Key`: the document and its `DataVersion` counter.
    docs: HashMap<String, (MockPayment, u64)>,
    version: u64,
}

impl PaymentDocs {
    fn write(&mut self, p: MockPayment) {
        self.version += 1;
        let v = self.version;
        self.docs.insert(p.ref_key.clone(), (p, v));
    }

    fn edit(&mut self, ref_key: &str, f: impl FnOnce(&mut MockPayment)) -> bool {
        let Some((p, _)) = self.docs.get(&ref_key.to_ascii_lowercase()) else {
            return false;
        };
        let mut p = p.clone();
        f(&mut p);
        self.write(p);
        true
    }
}

impl MockOnec {
    /// Inserts or replaces (by `ref_key`) a payment document; its
    /// `DataVersion` changes.
    pub fn upsert_payment(&self, p: MockPayment) {
        assert!(is_guid(&p.ref_key), "ref_key {:?} is not a GUID", p.ref_key);
        lock(&self.state.payments).write(p);
    }

    /// Many payments at once (a bench's base).
    pub fn upsert_payments(&self, payments: impl IntoIterator<Item = MockPayment>) {
        let mut docs = lock(&self.state.payments);
        for p in payments {
            docs.write(p);
        }
    }

    /// Posts or unposts a document (as `…/Post` and `…/Unpost` do). Panics if unknown.
    pub fn set_payment_posted(&self, ref_key: &str, posted: bool) {
        assert!(
            lock(&self.state.payments).edit(ref_key, |p| p.posted = posted),
            "no payment {ref_key}"
        );
    }

    /// Sets the deletion mark (1C unposts a document it marks). Panics if unknown.
    pub fn mark_payment_deleted(&self, ref_key: &str) {
        assert!(
            lock(&self.state.payments).edit(ref_key, |p| {
                p.deletion_mark = true;
                p.posted = false;
            }),
            "no payment {ref_key}"
        );
    }

    /// Deletes a document for good. Panics if unknown.
    pub fn remove_payment(&self, ref_key: &str) {
        let removed = lock(&self.state.payments)
            .docs
            .remove(&ref_key.to_ascii_lowercase());
        assert!(removed.is_some(), "no payment {ref_key}");
    }

    /// The document as held now.
    pub fn payment(&self, ref_key: &str) -> Option<MockPayment> {
        lock(&self.state.payments)
            .docs
            .get(&ref_key.to_ascii_lowercase())
            .map(|(p, _)| p.clone())
    }

    /// Requests for payment documents (lists and by key) so far.
    pub fn payment_requests(&self) -> Vec<SeenRequest> {
        self.requests()
            .into_iter()
            .filter(|r| {
                r.entity_set
                    .as_deref()
                    .is_some_and(|s| s.starts_with(PAYMENTS))
            })
            .collect()
    }
}

/// The properties of a document, in 1C's order, as raw JSON text.
fn payment_props(p: &MockPayment, version: u64) -> Vec<(&'static str, String)> {
    let text = |s: &str| Value::from(s).to_string();
    let rows: Vec<String> = p
        .rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            format!(
                r#"{{"Ref_Key":{},"LineNumber":"{}","ДоговорКонтрагента_Key":{},"СуммаПлатежа":{},"СчетНаОплату_Key":{},"СтавкаНДС":"НДС20","СуммаНДС":0}}"#,
                text(&p.ref_key),
                i + 1,
                text(&r.contract),
                r.amount,
                text(&r.invoice),
            )
        })
        .collect();
    vec![
        ("Ref_Key", text(&p.ref_key)),
        ("DataVersion", text(&data_version(version))),
        ("DeletionMark", p.deletion_mark.to_string()),
        ("Number", text(&p.number)),
        ("Date", text(&p.date)),
        ("Posted", p.posted.to_string()),
        ("Организация_Key", text(&guid(1))),
        ("Контрагент_Key", text(&p.counterparty)),
        ("СуммаДокумента", p.amount.clone()),
        ("НазначениеПлатежа", text("Оплата по счету")),
        (PAYMENT_ROWS, format!("[{}]", rows.join(","))),
        (
            "Контрагент@navigationLinkUrl",
            text(&format!("{PAYMENTS}(guid'{}')/Контрагент", p.ref_key)),
        ),
    ]
}

fn payment_json(p: &MockPayment, version: u64, select: Option<&[String]>) -> String {
    let props: Vec<String> = payment_props(p, version)
        .into_iter()
        .filter(|(name, _)| select.is_none_or(|s| s.iter().any(|n| n == name)))
        .map(|(name, raw)| format!("{}:{raw}", Value::from(name)))
        .collect();
    format!("{{{}}}", props.join(","))
}

/// Requests under `{ROOT}/Document_ПоступлениеНаРасчетныйСчет…`: `None`
/// for any other path.
fn payment_answer(state: &State, req: &HttpRequest) -> Option<Response<Body>> {
    let (raw_path, raw_query) = req.target.split_once('?').unwrap_or((&req.target, ""));
    let rest = decode(raw_path.strip_prefix(ROOT_PATH)?.strip_prefix('/')?).ok()?;
    let tail = rest.strip_prefix(PAYMENTS)?;
    let mut query = Vec::new();
    for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match (decode(k), decode(v)) {
            (Ok(k), Ok(v)) => query.push((k, v)),
            _ => return Some(odata_error(StatusCode::BAD_REQUEST, "bad percent-encoding")),
        }
    }
    Some(match payment_plan(state, &req.method, tail, &query) {
        Ok(response) => response,
        Err(reject) => odata_error(reject.status, &reject.message),
    })
}

fn payment_plan(
    state: &State,
    method: &Method,
    tail: &str,
    query: &[(String, String)],
) -> Result<Response<Body>, Reject> {
    let option = |name: &str| query_option(query, name);
    let known: Vec<&str> = payment_props(&MockPayment::new(&guid(0), "", "0", EMPTY_REF), 0)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let select = match option("$select") {
        None => None,
        Some(v) => {
            let names: Vec<String> = v.split(',').map(|n| n.trim().to_owned()).collect();
            if let Some(bad) = names.iter().find(|n| !known.contains(&n.as_str())) {
                return Err(bad_request(format!("Неизвестное поле в $select: {bad}")));
            }
            Some(names)
        }
    };
    if option("$format").is_some_and(|f| f != "json") {
        return Err(bad_request("mock 1C serves payment documents as JSON only"));
    }
    if tail.is_empty() {
        if method != Method::GET {
            return Err(bad_request(format!(
                "mock 1C: {method} on the document list"
            )));
        }
        return payment_list(state, query, select.as_deref());
    }
    // `(guid'…')`, optionally `/Post` or `/Unpost`.
    let inner = tail
        .strip_prefix("(guid'")
        .ok_or_else(|| not_found(format!("Не найден набор сущностей: {PAYMENTS}{tail}")))?;
    let (key, action) = inner
        .split_once("')")
        .ok_or_else(|| bad_request(format!("Неверный формат ключа сущности: {tail}")))?;
    let key = key.to_ascii_lowercase();
    if !is_guid(&key) {
        return Err(bad_request(format!(
            "Неверный формат ключа сущности: {key}"
        )));
    }
    let mut docs = lock(&state.payments);
    match (method.as_str(), action) {
        ("GET", "") => {
            let (p, v) = docs
                .docs
                .get(&key)
                .ok_or_else(|| not_found(format!("Объект не найден: {key}")))?;
            let body = payment_json(p, *v, select.as_deref());
            Ok(respond(
                StatusCode::OK,
                "application/json;charset=utf-8",
                body,
            ))
        }
        ("POST", "/Post" | "/Unpost") => {
            if option("PostingModeOperational").is_none() && action == "/Post" {
                return Err(bad_request("mock 1C: Post wants PostingModeOperational"));
            }
            let posted = action == "/Post";
            if !docs.edit(&key, |p| p.posted = posted) {
                return Err(not_found(format!("Объект не найден: {key}")));
            }
            Ok(respond(
                StatusCode::OK,
                "application/json;charset=utf-8",
                String::new(),
            ))
        }
        _ => Err(bad_request(format!(
            "mock 1C: {method} {tail} is not served"
        ))),
    }
}

/// The value of query option `name`.
fn query_option<'a>(query: &'a [(String, String)], name: &str) -> Option<&'a str> {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn payment_list(
    state: &State,
    query: &[(String, String)],
    select: Option<&[String]>,
) -> Result<Response<Body>, Reject> {
    let option = |name: &str| query_option(query, name);
    let from = match option("$filter") {
        None => None,
        Some(f) => {
            let date = f
                .strip_prefix("Date ge datetime'")
                .and_then(|d| d.strip_suffix('\''))
                .filter(|d| d.len() == 19)
                .ok_or_else(|| {
                    bad_request(format!(
                        "mock 1C: the payment list's $filter is only Date ge datetime'…', not {f}"
                    ))
                })?;
            Some(date.to_owned())
        }
    };
    match option("$orderby") {
        None | Some("Date,Ref_Key") => {}
        Some(other) => {
            return Err(bad_request(format!(
                "mock 1C: $orderby {other} is not served"
            )))
        }
    }
    let number = |name: &str| -> Result<Option<usize>, Reject> {
        option(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| bad_request(format!("Неверное значение {name}: {v}")))
            })
            .transpose()
    };
    let (top, skip) = (number("$top")?, number("$skip")?.unwrap_or(0));
    let docs = lock(&state.payments);
    let mut list: Vec<&(MockPayment, u64)> = docs
        .docs
        .values()
        .filter(|(p, _)| from.as_deref().is_none_or(|from| p.date.as_str() >= from))
        .collect();
    list.sort_by(|(a, _), (b, _)| (&a.date, &a.ref_key).cmp(&(&b.date, &b.ref_key)));
    let page: Vec<String> = list
        .into_iter()
        .skip(skip)
        .take(top.unwrap_or(usize::MAX))
        .map(|(p, v)| payment_json(p, *v, select))
        .collect();
    let body = format!(
        r#"{{"odata.metadata":"{ROOT_PATH}/$metadata#{PAYMENTS}","value":[{}]}}"#,
        page.join(",")
    );
    Ok(respond(
        StatusCode::OK,
        "application/json;charset=utf-8",
        body,
    ))
}
