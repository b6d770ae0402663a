//! 1C's OData rows, read into the one counterparty model.
//!
//! Field names differ between 1C configurations (the category and manager
//! fields are configured), so rows are read by a visitor that knows the
//! configured names and skips everything else (navigation links, other
//! tabular sections, `Predefined`…) without building a JSON tree.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserializer;

use crate::directory::model::{is_manager_phone, Kind, MAX_EMAILS, MAX_PHONES, MAX_TEXT_LEN};
use crate::directory::Counterparty;
use crate::phone;

/// The tabular section's name inside a catalog row, when 1C embeds it.
const EMBEDDED_CONTACTS: &str = "КонтактнаяИнформация";
/// The `Тип` values of contact information rows.
const KIND_PHONE: &str = "Телефон";
const KIND_EMAIL: &str = "АдресЭлектроннойПочты";
pub(super) const KIND_ADDRESS: &str = "Адрес";

/// The configured names of the catalog fields that vary by configuration.
#[derive(Debug, Clone, Default)]
pub struct FieldNames {
    pub category: Option<String>,
    pub manager_phone: Option<String>,
    /// OGRN or OGRNIP (told apart by length).
    pub ogrn: Option<String>,
    /// The catalog's code (`Code`).
    pub code: Option<String>,
    /// Legal or natural person (`ЮрФизЛицо`, `ВидКонтрагента`).
    pub kind: Option<String>,
    /// The responsible user, a `Catalog_Пользователи` reference
    /// (`onec.manager_ref_field`), mapped through `users`.
    pub manager_ref: Option<String>,
    /// The director's name (`onec.director_field`), for the sync store's
    /// requisites: set only when the sync store exists.
    pub director: Option<String>,
    /// `[[manager]] onec_user`: whom each 1C user's clients are routed to.
    pub users: Arc<OnecUsers>,
}

/// 1C users (their `Catalog_Пользователи` `_Key`) and the managers they are.
pub type OnecUsers = BTreeMap<String, OnecManager>;

/// The extension and name a 1C user's clients' calls go to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OnecManager {
    pub extension: String,
    pub name: String,
}

impl FieldNames {
    /// `$select` of a catalog read.
    pub fn catalog_select(&self) -> String {
        let mut select = String::from(
            "Ref_Key,DataVersion,DeletionMark,IsFolder,Description,НаименованиеПолное,ИНН,КПП",
        );
        let extras = [
            &self.category,
            &self.manager_phone,
            &self.ogrn,
            &self.code,
            &self.kind,
            &self.manager_ref,
            &self.director,
        ];
        for extra in extras.into_iter().flatten() {
            select.push(',');
            select.push_str(extra);
        }
        select
    }
}

/// `$select` of a contact information read.
pub const CONTACTS_SELECT: &str = "Ref_Key,LineNumber,Тип,Представление,НомерТелефона,АдресЭП";

/// `$select` and `$orderby` of a read of the contact information register
/// (`InformationRegister_КонтактнаяИнформация`, КА 1.1 / УПП): the owner is
/// the dimension `Объект` (a composite reference: the GUID, its type in
/// `Объект_Type`, not asked for: a GUID of another catalog never matches a
/// counterparty), the number only in `Представление`. Assumption: the
/// register as КА 1.1 ships it. Ordered by the dimensions `Объект` and `Тип`
/// only: `Вид`'s OData name depends on its type and `Представление` may be
/// a string 1C cannot order by; rows tied on both may move between pages
/// (read twice: kept once; missed: read at the next refresh), as any row
/// changed during a read may.
pub const REGISTER_SELECT: &str = "Объект,Тип,Представление";
pub const REGISTER_ORDER: &str = "Объект,Тип";

/// The contact kind's field, added to the `$select` of a contact read when
/// typed addresses are read for the sync store's requisites: `Вид_Key` in
/// the tabular section, the dimension `Вид` in the register (its GUID; the
/// same assumption on КА 1.1's shipped metadata as above).
pub const SECTION_KIND_FIELD: &str = "Вид_Key";
pub const REGISTER_KIND_FIELD: &str = "Вид";

/// One row of the counterparties catalog.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CatalogRow {
    pub ref_key: String,
    pub data_version: Option<String>,
    pub deletion_mark: bool,
    pub is_folder: bool,
    pub description: String,
    pub full_name: String,
    pub inn: String,
    pub kpp: String,
    pub category: Option<i64>,
    pub manager_phone: String,
    /// The manager's name, when the responsible user is mapped.
    pub manager_name: String,
    /// The responsible user's `Catalog_Пользователи` `_Key`.
    pub manager_ref: String,
    pub ogrn: String,
    pub code: String,
    pub kind: String,
    /// The director's name, for the sync store's requisites.
    pub director: String,
    /// Contact rows embedded in the catalog row, when 1C sent them.
    pub contacts: Vec<ContactRow>,
}

/// One row of the contact information tabular section.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ContactRow {
    /// The owner's `Ref_Key` (absent in rows embedded in their owner).
    pub owner: String,
    pub line: u32,
    pub kind: String,
    /// The contact kind (`Вид_Key`; the register's `Вид`): which address
    /// an address row is.
    pub kind_key: String,
    pub presentation: String,
    pub phone_digits: String,
    pub email: String,
}

/// Reads a list answer (`{"value":[…]}`) of catalog rows.
pub fn parse_catalog_page(body: &[u8], fields: &FieldNames) -> Result<Vec<CatalogRow>, String> {
    parse_list(body, CatalogSeed(fields))
}

/// Reads a list answer of contact information rows.
pub fn parse_contacts_page(body: &[u8]) -> Result<Vec<ContactRow>, String> {
    parse_list(body, ContactSeed)
}

/// Reads a list answer of contact information register rows; their line
/// numbers are 0 until [`number_register_rows`].
pub fn parse_register_page(body: &[u8]) -> Result<Vec<ContactRow>, String> {
    parse_list(body, RegisterSeed)
}

/// Gives register rows (which have no `LineNumber`) the line numbers of
/// the tabular section: per owner, from 1, in the order read. A row read
/// twice (it moved between pages) is kept once; a phone row whose
/// `Представление` lists several numbers (`"+7 495 …, +7 916 …"`, one kind
/// holds one value in the register) becomes one row per number.
pub fn number_register_rows(rows: &mut Vec<ContactRow>) {
    let mut seen: std::collections::HashSet<(String, String, String, String)> =
        std::collections::HashSet::with_capacity(rows.len());
    let mut lines: HashMap<String, u32> = HashMap::new();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows.drain(..) {
        // One address text may be both the legal and the actual address.
        let kind_key = if row.kind == KIND_ADDRESS {
            row.kind_key.clone()
        } else {
            String::new()
        };
        let key = (
            row.owner.clone(),
            row.kind.clone(),
            kind_key,
            row.presentation.clone(),
        );
        if !seen.insert(key) {
            continue;
        }
        let split: Vec<String> = row
            .presentation
            .split([',', ';'])
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect();
        let several = row.kind == KIND_PHONE
            && split.len() > 1
            && split.iter().all(|p| phone::normalize(p).is_some());
        let parts = if several {
            split
        } else {
            vec![row.presentation.clone()]
        };
        for presentation in parts {
            let line = lines.entry(row.owner.clone()).or_insert(0);
            *line += 1;
            out.push(ContactRow {
                line: *line,
                presentation,
                ..row.clone()
            });
        }
    }
    *rows = out;
}

/// Reads `{"value":[…]}` (other members ignored), each item with `item`.
pub(super) fn parse_list<S, T>(body: &[u8], item: S) -> Result<Vec<T>, String>
where
    S: for<'de> DeserializeSeed<'de, Value = T> + Copy,
{
    let mut de = serde_json::Deserializer::from_slice(body);
    let rows = ListSeed(item)
        .deserialize(&mut de)
        .map_err(|e| e.to_string())?;
    de.end().map_err(|e| e.to_string())?;
    rows.ok_or_else(|| "the answer has no \"value\" list".to_owned())
}

/// The list answer's object: finds `value`, skips the rest.
struct ListSeed<S>(S);

impl<'de, S: DeserializeSeed<'de> + Copy> DeserializeSeed<'de> for ListSeed<S> {
    type Value = Option<Vec<S::Value>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de, S: DeserializeSeed<'de> + Copy> Visitor<'de> for ListSeed<S> {
    type Value = Option<Vec<S::Value>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an OData list answer {\"value\":[…]}")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut rows = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "value" {
                rows = Some(map.next_value_seed(RowsSeed(self.0))?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(rows)
    }
}

/// The `value` list: each item read with the row seed.
struct RowsSeed<S>(S);

impl<'de, S: DeserializeSeed<'de> + Copy> DeserializeSeed<'de> for RowsSeed<S> {
    type Value = Vec<S::Value>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, S: DeserializeSeed<'de> + Copy> Visitor<'de> for RowsSeed<S> {
    type Value = Vec<S::Value>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of rows")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(50_000));
        while let Some(row) = seq.next_element_seed(self.0)? {
            out.push(row);
        }
        Ok(out)
    }
}

#[derive(Clone, Copy)]
struct CatalogSeed<'a>(&'a FieldNames);

impl<'de> DeserializeSeed<'de> for CatalogSeed<'_> {
    type Value = CatalogRow;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<CatalogRow, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for CatalogSeed<'_> {
    type Value = CatalogRow;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a catalog row")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CatalogRow, A::Error> {
        let mut row = CatalogRow::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "Ref_Key" => row.ref_key = map.next_value::<Text>()?.0,
                "DataVersion" => row.data_version = Some(map.next_value::<Text>()?.0),
                "DeletionMark" => row.deletion_mark = map.next_value::<Flag>()?.0,
                "IsFolder" => row.is_folder = map.next_value::<Flag>()?.0,
                "Description" => row.description = map.next_value::<Text>()?.0,
                "НаименованиеПолное" => {
                    row.full_name = map.next_value::<Text>()?.0
                }
                "ИНН" => row.inn = map.next_value::<Text>()?.0,
                "КПП" => row.kpp = map.next_value::<Text>()?.0,
                EMBEDDED_CONTACTS => {
                    row.contacts = map.next_value_seed(ContactsSeed)?;
                }
                k if Some(k) == self.0.category.as_deref() => {
                    row.category = map.next_value::<Number>()?.0;
                }
                k if Some(k) == self.0.manager_phone.as_deref() => {
                    row.manager_phone = map.next_value::<Text>()?.0;
                }
                k if Some(k) == self.0.ogrn.as_deref() => row.ogrn = map.next_value::<Text>()?.0,
                k if Some(k) == self.0.code.as_deref() => row.code = map.next_value::<Text>()?.0,
                k if Some(k) == self.0.kind.as_deref() => row.kind = map.next_value::<Text>()?.0,
                k if Some(k) == self.0.manager_ref.as_deref() => {
                    row.manager_ref = map.next_value::<Text>()?.0;
                }
                k if Some(k) == self.0.director.as_deref() => {
                    row.director = map.next_value::<Text>()?.0;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        if row.ref_key.is_empty() {
            return Err(de::Error::custom("a row without Ref_Key"));
        }
        // A responsible user `[[manager]]` maps gives the extension and the
        // name (over the extension field, which holds no name); an unmapped
        // or empty reference leaves the extension field's value.
        if let Some(manager) = self.0.users.get(row.manager_ref.trim()) {
            row.manager_phone.clone_from(&manager.extension);
            row.manager_name.clone_from(&manager.name);
        }
        Ok(row)
    }
}

struct ContactsSeed;

impl<'de> DeserializeSeed<'de> for ContactsSeed {
    type Value = Vec<ContactRow>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ContactsSeed {
    type Value = Vec<ContactRow>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of contact rows")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Vec::new())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(row) = seq.next_element_seed(ContactSeed)? {
            out.push(row);
        }
        Ok(out)
    }
}

#[derive(Clone, Copy)]
struct ContactSeed;

impl<'de> DeserializeSeed<'de> for ContactSeed {
    type Value = ContactRow;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ContactRow, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ContactSeed {
    type Value = ContactRow;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a contact information row")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ContactRow, A::Error> {
        let mut row = ContactRow::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "Ref_Key" => row.owner = map.next_value::<Text>()?.0,
                // A string in 1C's answers ("1"), a number in some others.
                "LineNumber" => {
                    row.line = map
                        .next_value::<Number>()?
                        .0
                        .and_then(|n| u32::try_from(n).ok())
                        .unwrap_or(0)
                }
                "Тип" => row.kind = map.next_value::<Text>()?.0,
                "Вид_Key" => row.kind_key = map.next_value::<Text>()?.0,
                "Представление" => row.presentation = map.next_value::<Text>()?.0,
                "НомерТелефона" => row.phone_digits = map.next_value::<Text>()?.0,
                "АдресЭП" => row.email = map.next_value::<Text>()?.0,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(row)
    }
}

#[derive(Clone, Copy)]
struct RegisterSeed;

impl<'de> DeserializeSeed<'de> for RegisterSeed {
    type Value = ContactRow;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<ContactRow, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RegisterSeed {
    type Value = ContactRow;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a contact information register row")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ContactRow, A::Error> {
        let mut row = ContactRow::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "Объект" => row.owner = map.next_value::<Text>()?.0,
                "Тип" => row.kind = map.next_value::<Text>()?.0,
                // A composite dimension in КА 1.1 (`Вид` and `Вид_Type`); a
                // single-typed one would be published as `Вид_Key`.
                "Вид" | "Вид_Key" => row.kind_key = map.next_value::<Text>()?.0,
                "Представление" => row.presentation = map.next_value::<Text>()?.0,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        // The register keeps an e-mail address in `Представление` too.
        if row.kind == KIND_EMAIL {
            row.email = row.presentation.clone();
        }
        Ok(row)
    }
}

/// A text field: a string, or a number or bool written as text; `null` is empty.
pub(super) struct Text(pub(super) String);

impl<'de> de::Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("text")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text, E> {
                Ok(Text(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Text, E> {
                Ok(Text(String::new()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Text, A::Error> {
                // A composite value where text was configured: not usable.
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Text(String::new()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Text, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Text(String::new()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A number field: a JSON number or a numeric string; anything else is none.
struct Number(Option<i64>);

impl<'de> de::Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Number, D::Error> {
        let Text(text) = Text::deserialize(d)?;
        let text = text.trim();
        Ok(Number(text.parse::<i64>().ok().or_else(|| {
            // 1C writes numbers with a fraction part when the field has one.
            text.parse::<f64>()
                .ok()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                .map(|f| f as i64)
        })))
    }
}

/// A boolean field: `true`/`false`, or their text.
pub(super) struct Flag(pub(super) bool);

impl<'de> de::Deserialize<'de> for Flag {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Flag, D::Error> {
        let Text(text) = Text::deserialize(d)?;
        Ok(Flag(text.eq_ignore_ascii_case("true")))
    }
}

/// What turning rows into records left out, for the log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Skipped {
    pub folders: usize,
    pub deleted: usize,
    /// Rows without a usable name or with an id the model refuses.
    pub invalid: usize,
}

/// Turns catalog rows and their contact rows (the set's rows, grouped by
/// owner here, plus any embedded ones) into counterparties. Folders and
/// deletion-marked rows are skipped; texts too long for the model are cut.
pub fn into_records(
    rows: Vec<CatalogRow>,
    contacts: Vec<ContactRow>,
) -> (Vec<Counterparty>, Skipped) {
    let mut by_owner: HashMap<String, Vec<ContactRow>> = HashMap::new();
    for c in contacts {
        by_owner.entry(c.owner.clone()).or_default().push(c);
    }
    let mut skipped = Skipped::default();
    let mut records = Vec::with_capacity(rows.len());
    for mut row in rows {
        if row.is_folder {
            skipped.folders += 1;
            continue;
        }
        if row.deletion_mark {
            skipped.deleted += 1;
            continue;
        }
        if let Some(mut set_rows) = by_owner.remove(&row.ref_key) {
            if row.contacts.is_empty() {
                row.contacts = set_rows;
            } else {
                // Both came: one row per line number.
                set_rows.retain(|r| !row.contacts.iter().any(|e| e.line == r.line));
                row.contacts.extend(set_rows);
            }
        }
        match record_of(row) {
            Some(record) => records.push(record),
            None => skipped.invalid += 1,
        }
    }
    (records, skipped)
}

/// One catalog row (with its contacts) as a counterparty; `None` when it
/// cannot be one (no name, a bad id).
pub fn record_of(row: CatalogRow) -> Option<Counterparty> {
    let CatalogRow {
        ref_key,
        data_version,
        description,
        full_name,
        inn,
        kpp,
        category,
        manager_phone,
        manager_name,
        ogrn,
        code,
        kind,
        mut contacts,
        ..
    } = row;
    contacts.sort_by_key(|c| c.line);
    let mut phones: Vec<Box<str>> = Vec::new();
    let mut emails: Vec<Box<str>> = Vec::new();
    let mut address = None;
    for c in contacts {
        match c.kind.as_str() {
            KIND_PHONE => {
                if let Some(p) = phone_of(&c) {
                    if phones.len() < MAX_PHONES {
                        phones.push(p.into());
                    }
                }
            }
            KIND_EMAIL => {
                let email = if c.email.trim().is_empty() {
                    c.presentation.trim()
                } else {
                    c.email.trim()
                };
                if !email.is_empty() && emails.len() < MAX_EMAILS {
                    emails.push(clip(email));
                }
            }
            KIND_ADDRESS if address.is_none() && !c.presentation.trim().is_empty() => {
                address = Some(clip(c.presentation.trim()));
            }
            _ => {}
        }
    }
    let name = [description.trim(), full_name.trim()]
        .into_iter()
        .find(|n| !n.is_empty())?;
    let some = |s: &str| (!s.trim().is_empty()).then(|| clip(s.trim()));
    // A 15-digit number is a sole proprietor's OGRNIP; anything else goes to
    // `ogrn`, where the requisite check names what is wrong with it.
    let (ogrn, ogrnip) = if ogrn.trim().len() == 15 {
        (None, some(&ogrn))
    } else {
        (some(&ogrn), None)
    };
    let kind = kind_of(&kind, &inn, ogrnip.is_some());
    let record = Counterparty {
        id: ref_key.into(),
        name: clip(name),
        full_name: some(&full_name),
        inn: some(&inn),
        kpp: some(&kpp),
        ogrn,
        ogrnip,
        code: some(&code),
        kind: Some(kind),
        category,
        // A manager field holding text or markup is not sent to the PBX as a
        // routing target; the record itself is kept.
        manager_phone: some(&manager_phone).filter(|m| is_manager_phone(m)),
        manager_name: some(&manager_name),
        manager_source: None,
        phones,
        emails,
        address,
        links: Box::default(),
        data_version: data_version.map(Into::into),
    };
    record.validate().ok().map(|()| record)
}

/// The kind of party from 1C's legal/natural person field (`ЮрФизЛицо`:
/// `ЮрЛицо`/`ФизЛицо`; `ВидКонтрагента` in other configurations), a
/// natural person with a 12-digit INN being a sole proprietor. Unread or
/// unknown: by the INN, 10 digits a legal entity, 12 with an OGRNIP a sole
/// proprietor, anything else a person.
fn kind_of(field: &str, inn: &str, has_ogrnip: bool) -> Kind {
    let inn = inn.trim();
    let inn_digits = if inn.bytes().all(|b| b.is_ascii_digit()) {
        inn.len()
    } else {
        0
    };
    match field.trim() {
        "ЮрЛицо" | "ЮридическоеЛицо" => Kind::Legal,
        "ИндивидуальныйПредприниматель" => Kind::SoleProprietor,
        "ФизЛицо" | "ФизическоеЛицо" if inn_digits == 12 => {
            Kind::SoleProprietor
        }
        "ФизЛицо" | "ФизическоеЛицо" => Kind::Person,
        _ if inn_digits == 10 => Kind::Legal,
        _ if inn_digits == 12 && has_ogrnip => Kind::SoleProprietor,
        _ => Kind::Person,
    }
}

/// The phone a contact row holds, as the text to keep: `НомерТелефона` is
/// not reliable (empty in older records, sometimes 10 digits), so the
/// human `Представление` is kept when it is the same number, or when it is
/// the only one that is a number.
fn phone_of(c: &ContactRow) -> Option<&str> {
    let digits = c.phone_digits.trim();
    let shown = c.presentation.trim();
    match (phone::normalize(digits), phone::normalize(shown)) {
        (Some(d), Some(s)) if d == s => Some(shown),
        (Some(_), _) => Some(digits),
        (None, Some(_)) => Some(shown),
        (None, None) => None,
    }
}

/// `text` cut to the model's bound, at a character boundary.
fn clip(text: &str) -> Box<str> {
    if text.len() <= MAX_TEXT_LEN {
        return text.into();
    }
    let mut end = MAX_TEXT_LEN;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].into()
}

/// True when `text` is a GUID as 1C writes `Ref_Key` (8-4-4-4-12 hex): only
/// such values are put into a `$filter`.
pub fn is_guid(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields() -> FieldNames {
        FieldNames {
            category: Some("КатегорияКлиента".into()),
            manager_phone: Some("ДобавочныйМенеджера".into()),
            ogrn: Some("ОГРН".into()),
            code: Some("Code".into()),
            kind: Some("ЮрФизЛицо".into()),
            ..FieldNames::default()
        }
    }

    #[test]
    fn a_mapped_responsible_user_gives_the_extension_and_the_name() {
        let mut users = OnecUsers::new();
        users.insert(
            "9a2b5c1e-0000-0000-0000-000000000001".into(),
            OnecManager {
                extension: "301".into(),
                name: "Смирнова Ольга".into(),
            },
        );
        let fields = FieldNames {
            manager_ref: Some("ОсновнойМенеджер_Key".into()),
            users: Arc::new(users),
            ..fields()
        };
        assert!(fields.catalog_select().ends_with(",ОсновнойМенеджер_Key"));
        let page = r#"{"value":[
          {"Ref_Key":"k1","Description":"А","ДобавочныйМенеджера":"244","ОсновнойМенеджер_Key":"9a2b5c1e-0000-0000-0000-000000000001"},
          {"Ref_Key":"k2","Description":"Б","ДобавочныйМенеджера":"245","ОсновнойМенеджер_Key":"00000000-0000-0000-0000-000000000000"}]}"#;
        let rows = parse_catalog_page(page.as_bytes(), &fields).expect("page");
        let records: Vec<_> = rows.into_iter().filter_map(record_of).collect();
        assert_eq!(records[0].manager_phone.as_deref(), Some("301"));
        assert_eq!(records[0].manager_name.as_deref(), Some("Смирнова Ольга"));
        // Unmapped (here 1C's empty reference): the extension field's value.
        assert_eq!(records[1].manager_phone.as_deref(), Some("245"));
        assert_eq!(records[1].manager_name, None);
    }

    /// A row as a real base sends it, noise included.
    const PAGE: &str = r#"{"odata.metadata":"http://1c/base/odata/standard.odata/$metadata#Catalog_Контрагенты","value":[
      {"Ref_Key":"5f1c2a3b-0000-11e0-8000-000000000001","DataVersion":"AAAAAgAAAAA=","DeletionMark":false,
       "IsFolder":false,"Parent_Key":"00000000-0000-0000-0000-000000000000","Code":"000000001",
       "Description":"Ромашка","НаименованиеПолное":"ООО \"Ромашка\"","ИНН":"7701234567","КПП":"770101001",
       "КатегорияКлиента":"2","ДобавочныйМенеджера":244,"Predefined":false,"PredefinedDataName":"",
       "ДополнительныеРеквизиты":[],"ДополнительныеРеквизиты@navigationLinkUrl":"Catalog_Контрагенты(guid'…')/ДополнительныеРеквизиты",
       "КонтактнаяИнформация":[
         {"LineNumber":"2","Тип":"АдресЭлектроннойПочты","Вид_Key":"x","Представление":"a@b.ru","НомерТелефона":"","АдресЭП":"a@b.ru"},
         {"LineNumber":"1","Тип":"Телефон","Вид_Key":"y","Представление":"+7 (925) 045-23-43","НомерТелефона":"79250452343","АдресЭП":""},
         {"LineNumber":"3","Тип":"Телефон","Вид_Key":"y","Представление":"8 495 123-45-67","НомерТелефона":"","АдресЭП":""}
       ]},
      {"Ref_Key":"5f1c2a3b-0000-11e0-8000-000000000002","IsFolder":true,"Description":"Покупатели"},
      {"Ref_Key":"5f1c2a3b-0000-11e0-8000-000000000003","DeletionMark":true,"Description":"Удалённый"}
    ]}"#;

    #[test]
    fn catalog_rows_are_read_by_the_configured_names_and_noise_is_skipped() {
        let rows = parse_catalog_page(PAGE.as_bytes(), &fields()).expect("page parses");
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].category, Some(2));
        assert_eq!(rows[0].manager_phone, "244");
        assert_eq!(rows[0].contacts.len(), 3);
        let (records, skipped) = into_records(rows, vec![]);
        assert_eq!(
            skipped,
            Skipped {
                folders: 1,
                deleted: 1,
                invalid: 0
            }
        );
        let r = &records[0];
        assert_eq!(&*r.name, "Ромашка");
        assert_eq!(r.full_name.as_deref(), Some("ООО \"Ромашка\""));
        // In line order; the human form kept when it is the same number.
        assert_eq!(
            r.phones.iter().map(|p| &**p).collect::<Vec<_>>(),
            ["+7 (925) 045-23-43", "8 495 123-45-67"]
        );
        assert_eq!(
            r.emails.iter().map(|p| &**p).collect::<Vec<_>>(),
            ["a@b.ru"]
        );
        assert_eq!(r.data_version.as_deref(), Some("AAAAAgAAAAA="));
    }

    #[test]
    fn contact_set_rows_join_their_owner() {
        let page = r#"{"value":[
          {"Ref_Key":"k1","LineNumber":"1","Тип":"Телефон","Представление":"нет","НомерТелефона":"9161234567","АдресЭП":""},
          {"Ref_Key":"k2","LineNumber":"1","Тип":"Телефон","Представление":"+7 916 000-00-02","НомерТелефона":null}
        ]}"#;
        let contacts = parse_contacts_page(page.as_bytes()).expect("parses");
        let rows = vec![
            CatalogRow {
                ref_key: "k1".into(),
                description: "A".into(),
                ..Default::default()
            },
            CatalogRow {
                ref_key: "k2".into(),
                description: "".into(),
                full_name: "Б полное".into(),
                ..Default::default()
            },
            CatalogRow {
                ref_key: "k3".into(),
                ..Default::default()
            },
        ];
        let (records, skipped) = into_records(rows, contacts);
        assert_eq!(
            skipped.invalid, 1,
            "a row without any name is not a counterparty"
        );
        // 10 digits in НомерТелефона, words in Представление: the digits are the phone.
        assert_eq!(&*records[0].phones[0], "9161234567");
        assert_eq!(&*records[1].name, "Б полное");
        assert_eq!(&*records[1].phones[0], "+7 916 000-00-02");
    }

    #[test]
    fn answers_that_are_not_lists_are_refused_with_a_reason() {
        assert!(parse_contacts_page(b"{}")
            .unwrap_err()
            .contains("no \"value\""));
        assert!(parse_contacts_page(b"[1,2]").is_err());
        assert!(parse_contacts_page(b"{\"value\":[1]}").is_err());
        assert!(
            parse_catalog_page(br#"{"value":[{"Description":"no key"}]}"#, &fields())
                .unwrap_err()
                .contains("Ref_Key")
        );
    }

    #[test]
    fn only_guids_go_into_filters() {
        assert!(is_guid("5f1c2a3b-0000-11e0-8000-00000000000a"));
        assert!(!is_guid(
            "5f1c2a3b-0000-11e0-8000-00000000000a') or true or ('"
        ));
        assert!(!is_guid("k1"));
    }

    #[test]
    fn ogrn_code_and_kind_are_read_by_the_configured_names() {
        let page = r#"{"value":[
          {"Ref_Key":"k1","Description":"Ромашка","ИНН":"7707083893","Code":" 000000001 ","ОГРН":"1027700132195","ЮрФизЛицо":"ЮрЛицо"},
          {"Ref_Key":"k2","Description":"ИП Петров","ИНН":"500100732259","ОГРН":"304500116000157","ЮрФизЛицо":"ФизЛицо"},
          {"Ref_Key":"k3","Description":"Петров","ИНН":"500100732259","ЮрФизЛицо":"ФизЛицо"},
          {"Ref_Key":"k4","Description":"Без вида","ИНН":"7707083893","ОГРН":"","ЮрФизЛицо":null}
        ]}"#;
        let rows = parse_catalog_page(page.as_bytes(), &fields()).expect("parses");
        let (records, _) = into_records(rows, vec![]);
        assert_eq!(records[0].code.as_deref(), Some("000000001"));
        assert_eq!(records[0].ogrn.as_deref(), Some("1027700132195"));
        assert_eq!(records[0].ogrnip, None);
        assert_eq!(records[0].kind, Some(Kind::Legal));
        assert_eq!(records[1].ogrn, None);
        assert_eq!(records[1].ogrnip.as_deref(), Some("304500116000157"));
        assert_eq!(records[1].kind, Some(Kind::SoleProprietor));
        assert_eq!(
            records[2].kind,
            Some(Kind::SoleProprietor),
            "ФизЛицо, 12-digit INN"
        );
        assert_eq!(records[3].kind, Some(Kind::Legal), "unread: by the INN");
        assert_eq!(records[3].ogrn, None);
    }

    #[test]
    fn an_unread_kind_follows_the_inn() {
        assert_eq!(kind_of("", "7707083893", false), Kind::Legal);
        assert_eq!(kind_of("", "500100732259", true), Kind::SoleProprietor);
        assert_eq!(kind_of("", "500100732259", false), Kind::Person);
        assert_eq!(kind_of("", "", false), Kind::Person);
        assert_eq!(kind_of("Неизвестно", "77070838", false), Kind::Person);
        assert_eq!(kind_of("ФизЛицо", "7707083893", false), Kind::Person);
        assert_eq!(kind_of("ЮрЛицо", "", false), Kind::Legal);
    }

    #[test]
    fn a_mistyped_inn_keeps_the_record() {
        let rows = vec![CatalogRow {
            ref_key: "k1".into(),
            description: "Ромашка".into(),
            inn: "7707083894".into(),
            kpp: "77-07".into(),
            ..Default::default()
        }];
        let (records, skipped) = into_records(rows, vec![]);
        assert_eq!(skipped.invalid, 0);
        assert_eq!(records[0].inn.as_deref(), Some("7707083894"));
    }

    #[test]
    fn register_rows_join_their_owner_with_line_numbers() {
        let page = r#"{"value":[
          {"Объект":"k1","Объект_Type":"StandardODATA.Catalog_Контрагенты","Тип":"Телефон","Вид":"v1","Представление":"+7 (495) 123-45-67, 8 916 000-00-01","Поле1":""},
          {"Объект":"k1","Тип":"АдресЭлектроннойПочты","Представление":"a@b.ru"},
          {"Объект":"k1","Тип":"Адрес","Представление":"Москва, ул. Ленина, 1"},
          {"Объект":"k1","Тип":"Телефон","Представление":"+7 (495) 123-45-67, 8 916 000-00-01"},
          {"Объект":"other","Тип":"Телефон","Представление":"+7 916 000-00-09"}
        ]}"#;
        let mut contacts = parse_register_page(page.as_bytes()).expect("parses");
        assert!(contacts.iter().all(|c| c.line == 0));
        number_register_rows(&mut contacts);
        assert_eq!(
            contacts
                .iter()
                .map(|c| (c.owner.as_str(), c.line))
                .collect::<Vec<_>>(),
            [("k1", 1), ("k1", 2), ("k1", 3), ("k1", 4), ("other", 1)]
        );
        let rows = vec![CatalogRow {
            ref_key: "k1".into(),
            description: "Ромашка".into(),
            ..Default::default()
        }];
        let (records, _) = into_records(rows, contacts);
        let r = &records[0];
        assert_eq!(
            r.phones.iter().map(|p| &**p).collect::<Vec<_>>(),
            ["+7 (495) 123-45-67", "8 916 000-00-01"]
        );
        assert_eq!(
            r.emails.iter().map(|e| &**e).collect::<Vec<_>>(),
            ["a@b.ru"]
        );
        assert_eq!(r.address.as_deref(), Some("Москва, ул. Ленина, 1"));
    }
}
