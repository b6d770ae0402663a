//! What the 1C writer sends: a record of the directory turned into
//! `Catalog_Контрагенты`'s JSON with the names `[sync.onec.fields]` gives,
//! the contact rows of its tabular section (`КонтактнаяИнформация`), and,
//! for an update, only what differs from 1C's copy, with 1C's contact rows
//! kept: a PATCH carrying a tabular section replaces all its rows, so the
//! union is sent, renumbered, and a row 1C has is never dropped.
//!
//! Pure functions: no I/O, unit-tested here.

use serde_json::{Map, Value};

use crate::config::OnecWriteFields;
use crate::directory::model::Kind;
use crate::directory::Counterparty;

/// 1C's name of the contact information's tabular section.
pub const CONTACTS_SECTION: &str = "КонтактнаяИнформация";

/// `Тип` of a contact row (`Перечисление.ТипыКонтактнойИнформации`).
pub const TYPE_PHONE: &str = "Телефон";
pub const TYPE_EMAIL: &str = "АдресЭлектроннойПочты";
pub const TYPE_ADDRESS: &str = "Адрес";

/// The `Вид_Key` of each kind of contact row the writer adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindKeys {
    pub phone: String,
    pub email: String,
    pub address: String,
}

/// The record's INN and KPP as 1C is searched by: the INN alone for a
/// 12-digit INN (a person or a sole proprietor has no KPP), when the KPP is
/// missing, or when `inn_only` (`dedupe_key = "inn"`).
pub fn dedupe_filter(
    inn: &str,
    kpp: Option<&str>,
    inn_only: bool,
    fields: &OnecWriteFields,
) -> String {
    let mut filter = format!("{} eq '{}'", fields.inn, quote(inn));
    match kpp.map(str::trim).filter(|k| !k.is_empty()) {
        Some(kpp) if !inn_only && inn.len() == 10 && !fields.kpp.is_empty() => {
            filter.push_str(&format!(" and {} eq '{}'", fields.kpp, quote(kpp)));
        }
        _ => {}
    }
    filter.push_str(" and DeletionMark eq false and IsFolder eq false");
    filter
}

/// An OData string literal's content: a quote doubled.
pub fn quote(text: &str) -> String {
    text.replace('\'', "''")
}

/// The kind of party, as the record says or its INN's length tells.
fn kind_of(record: &Counterparty) -> Option<Kind> {
    record.kind.or(match record.inn.as_deref().map(str::len) {
        Some(10) => Some(Kind::Legal),
        Some(12) if record.ogrnip.is_some() => Some(Kind::SoleProprietor),
        Some(12) => Some(Kind::Person),
        _ => None,
    })
}

/// The catalog's scalar properties the record fills, by 1C's names (an
/// empty configured name, or a value the record lacks, is not written).
pub fn scalars(
    record: &Counterparty,
    fields: &OnecWriteFields,
    director: Option<&str>,
    comment: Option<&str>,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut put = |name: &str, value: Option<&str>| {
        let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
            return;
        };
        if name.is_empty() || out.iter().any(|(n, _)| n == name) {
            return;
        }
        out.push((name.to_owned(), value.to_owned()));
    };
    put(&fields.name, Some(record.name.as_ref()));
    put(
        &fields.full_name,
        record.full_name.as_deref().or(Some(record.name.as_ref())),
    );
    put(&fields.inn, record.inn.as_deref());
    put(&fields.kpp, record.kpp.as_deref());
    put(&fields.ogrn, record.ogrn.as_deref());
    put(&fields.ogrnip, record.ogrnip.as_deref());
    let kind = kind_of(record).map(|k| match k {
        Kind::Legal => fields.kind_values.legal.as_str(),
        Kind::SoleProprietor => fields.kind_values.sole_proprietor.as_str(),
        Kind::Person => fields.kind_values.person.as_str(),
    });
    put(&fields.kind, kind);
    put(&fields.director, director);
    put(&fields.comment_field, comment);
    out
}

/// The note `[sync.onec.fields] comment` makes for a record: `{id}` and
/// `{source}` replaced; `None` when no note is configured.
pub fn comment(template: &str, id: &str, source: &str) -> Option<String> {
    (!template.is_empty()).then(|| template.replace("{id}", id).replace("{source}", source))
}

/// The record's contact rows (phones, e-mails, its address), without
/// `LineNumber`: [`numbered`] gives them theirs.
pub fn contact_rows(record: &Counterparty, kinds: &KindKeys) -> Vec<Map<String, Value>> {
    let mut rows = Vec::new();
    for phone in record
        .phones
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
    {
        let mut row = Map::new();
        row.insert("Тип".into(), TYPE_PHONE.into());
        row.insert("Вид_Key".into(), kinds.phone.clone().into());
        row.insert("Представление".into(), phone.into());
        row.insert("НомерТелефона".into(), digits(phone).into());
        rows.push(row);
    }
    for email in record
        .emails
        .iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
    {
        let mut row = Map::new();
        row.insert("Тип".into(), TYPE_EMAIL.into());
        row.insert("Вид_Key".into(), kinds.email.clone().into());
        row.insert("Представление".into(), email.into());
        row.insert("АдресЭП".into(), email.into());
        rows.push(row);
    }
    if let Some(address) = record
        .address
        .as_deref()
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        let mut row = Map::new();
        row.insert("Тип".into(), TYPE_ADDRESS.into());
        row.insert("Вид_Key".into(), kinds.address.clone().into());
        row.insert("Представление".into(), address.into());
        rows.push(row);
    }
    rows
}

/// `rows` with `LineNumber` 1, 2, … (a string, as 1C writes it).
pub fn numbered(rows: Vec<Map<String, Value>>) -> Vec<Value> {
    rows.into_iter()
        .enumerate()
        .map(|(i, mut row)| {
            row.insert("LineNumber".into(), Value::from((i + 1).to_string()));
            Value::Object(row)
        })
        .collect()
}

/// The body of a create: the scalars and the contact rows.
pub fn create_body(scalars: &[(String, String)], contacts: Vec<Map<String, Value>>) -> Value {
    let mut body = Map::new();
    for (name, value) in scalars {
        body.insert(name.clone(), Value::from(value.as_str()));
    }
    if !contacts.is_empty() {
        body.insert(CONTACTS_SECTION.into(), Value::Array(numbered(contacts)));
    }
    Value::Object(body)
}

/// The body of an update of 1C's `current` entity: the scalars that differ
/// and, when the record has a contact 1C lacks, the whole section: 1C's
/// rows as they are, then the new ones, renumbered. `None`: nothing to
/// change.
pub fn update_body(
    current: &Map<String, Value>,
    scalars: &[(String, String)],
    contacts: Vec<Map<String, Value>>,
) -> Option<Value> {
    let mut body = Map::new();
    for (name, value) in scalars {
        let theirs = current.get(name).and_then(Value::as_str).map(str::trim);
        if theirs != Some(value.as_str()) {
            body.insert(name.clone(), Value::from(value.as_str()));
        }
    }
    let theirs: Vec<Map<String, Value>> = current
        .get(CONTACTS_SECTION)
        .and_then(Value::as_array)
        .map(|rows| {
            rows.iter()
                .filter_map(Value::as_object)
                .map(|row| {
                    let mut row = row.clone();
                    // The owner's key and the old number are not the row's to send.
                    row.remove("Ref_Key");
                    row.remove("LineNumber");
                    row
                })
                .collect()
        })
        .unwrap_or_default();
    let new: Vec<Map<String, Value>> = contacts
        .into_iter()
        .filter(|ours| !theirs.iter().any(|row| same_contact(row, ours)))
        .collect();
    if !new.is_empty() {
        let mut all = theirs;
        all.extend(new);
        body.insert(CONTACTS_SECTION.into(), Value::Array(numbered(all)));
    }
    (!body.is_empty()).then_some(Value::Object(body))
}

/// Whether 1C's row `theirs` already holds the contact `ours`: a phone by
/// its last ten digits, an e-mail without case, an address by its text.
fn same_contact(theirs: &Map<String, Value>, ours: &Map<String, Value>) -> bool {
    let text = |row: &Map<String, Value>, name: &str| {
        row.get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let kind = text(ours, "Тип");
    if text(theirs, "Тип") != kind {
        return false;
    }
    match kind.as_str() {
        TYPE_PHONE => {
            let key = |row: &Map<String, Value>| {
                let mut d = digits(&text(row, "НомерТелефона"));
                if d.is_empty() {
                    d = digits(&text(row, "Представление"));
                }
                let start = d.len().saturating_sub(10);
                d[start..].to_owned()
            };
            let ours = key(ours);
            !ours.is_empty() && key(theirs) == ours
        }
        TYPE_EMAIL => {
            let key = |row: &Map<String, Value>| {
                let e = text(row, "АдресЭП");
                if e.is_empty() {
                    text(row, "Представление").to_lowercase()
                } else {
                    e.to_lowercase()
                }
            };
            key(theirs) == key(ours)
        }
        _ => {
            text(theirs, "Представление").to_lowercase()
                == text(ours, "Представление").to_lowercase()
        }
    }
}

/// The digits of a phone number as written.
fn digits(text: &str) -> String {
    text.chars().filter(char::is_ascii_digit).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn kinds() -> KindKeys {
        KindKeys {
            phone: "p".into(),
            email: "e".into(),
            address: "a".into(),
        }
    }

    fn record() -> Counterparty {
        serde_json::from_value(json!({
            "id": "bitrix24:company:1",
            "name": "Ромашка",
            "inn": "7707083893",
            "kpp": "773601001",
            "phones": ["+7 (495) 123-45-67"],
            "emails": ["Info@Romashka.ru"],
            "address": "Москва, ул. Ленина, 1"
        }))
        .expect("a record")
    }

    #[test]
    fn a_create_names_bp30_fields_and_numbers_the_contact_rows() {
        let fields = OnecWriteFields::default();
        let r = record();
        let body = create_body(
            &scalars(
                &r,
                &fields,
                None,
                comment("из {source}", &r.id, "bitrix24").as_deref(),
            ),
            contact_rows(&r, &kinds()),
        );
        assert_eq!(
            body,
            json!({
                "Description": "Ромашка",
                "НаименованиеПолное": "Ромашка",
                "ИНН": "7707083893",
                "КПП": "773601001",
                "ЮридическоеФизическоеЛицо": "ЮридическоеЛицо",
                "Комментарий": "из bitrix24",
                "КонтактнаяИнформация": [
                    {"LineNumber": "1", "Тип": "Телефон", "Вид_Key": "p",
                     "Представление": "+7 (495) 123-45-67", "НомерТелефона": "74951234567"},
                    {"LineNumber": "2", "Тип": "АдресЭлектроннойПочты", "Вид_Key": "e",
                     "Представление": "Info@Romashka.ru", "АдресЭП": "Info@Romashka.ru"},
                    {"LineNumber": "3", "Тип": "Адрес", "Вид_Key": "a",
                     "Представление": "Москва, ул. Ленина, 1"}
                ]
            })
        );
    }

    #[test]
    fn an_empty_field_name_is_not_written() {
        let fields = OnecWriteFields {
            kpp: String::new(),
            kind: String::new(),
            ..OnecWriteFields::default()
        };
        let names: Vec<String> = scalars(&record(), &fields, None, None)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["Description", "НаименованиеПолное", "ИНН"]);
    }

    #[test]
    fn the_dedupe_filter_takes_the_kpp_only_for_a_company() {
        let f = OnecWriteFields::default();
        assert_eq!(
            dedupe_filter("7707083893", Some("773601001"), false, &f),
            "ИНН eq '7707083893' and КПП eq '773601001' and DeletionMark eq false and IsFolder eq false"
        );
        assert_eq!(
            dedupe_filter("7707083893", Some("773601001"), true, &f),
            "ИНН eq '7707083893' and DeletionMark eq false and IsFolder eq false"
        );
        assert_eq!(
            dedupe_filter("500100732259", Some("x"), false, &f),
            "ИНН eq '500100732259' and DeletionMark eq false and IsFolder eq false"
        );
        assert_eq!(quote("O'Neil"), "O''Neil");
    }

    #[test]
    fn an_update_keeps_1c_s_rows_and_adds_only_what_1c_lacks() {
        let fields = OnecWriteFields::default();
        let r = record();
        let current = json!({
            "Description": "Ромашка",
            "НаименованиеПолное": "ООО Ромашка",
            "ИНН": "7707083893",
            "КПП": "773601001",
            "ЮридическоеФизическоеЛицо": "ЮридическоеЛицо",
            "КонтактнаяИнформация": [
                {"LineNumber": "1", "Тип": "Телефон", "Вид_Key": "p1",
                 "Представление": "8 495 123-45-67", "НомерТелефона": ""},
                {"LineNumber": "2", "Тип": "Телефон", "Вид_Key": "p1",
                 "Представление": "+7 999 000-00-00", "НомерТелефона": "79990000000"}
            ]
        });
        let body = update_body(
            current.as_object().expect("object"),
            &scalars(&r, &fields, None, None),
            contact_rows(&r, &kinds()),
        )
        .expect("something to change");
        // The full name differs ("Ромашка" is ours); 1C's phone is the same
        // number in another format: kept as 1C wrote it, not added again.
        assert_eq!(body["НаименованиеПолное"], "Ромашка");
        assert!(body.get("Description").is_none());
        let rows = body["КонтактнаяИнформация"].as_array().expect("rows");
        let shown: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| {
                (
                    r["LineNumber"].as_str().unwrap_or_default(),
                    r["Представление"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("1", "8 495 123-45-67"),
                ("2", "+7 999 000-00-00"),
                ("3", "Info@Romashka.ru"),
                ("4", "Москва, ул. Ленина, 1")
            ]
        );
        assert_eq!(rows[0]["Вид_Key"], "p1");
    }

    #[test]
    fn an_update_with_nothing_new_sends_nothing() {
        let fields = OnecWriteFields::default();
        let r = record();
        let mut current = create_body(
            &scalars(&r, &fields, None, None),
            contact_rows(&r, &kinds()),
        );
        current["КонтактнаяИнформация"][1]["АдресЭП"] = json!("info@romashka.ru");
        assert_eq!(
            update_body(
                current.as_object().expect("object"),
                &scalars(&r, &fields, None, None),
                contact_rows(&r, &kinds())
            ),
            None
        );
    }
}
