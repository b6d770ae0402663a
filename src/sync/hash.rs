//! The hash of what a system keeps of a record: its synced fields,
//! normalized first, so that a value written another way is not a change.
//! "+7 916 555-55-55" and "89165555555" are one phone, "7707 083893" and
//! "7707083893" one INN, "Ромашка  ООО " and "Ромашка ООО" one name,
//! "Info@Example.ru" and "info@example.ru" one address. The id-map keeps the
//! hash last enqueued per record and system; the feed enqueues a record only
//! where its hash differs, and the runtime (issue 18) drops a CRM's echo of
//! our own change the same way.
//!
//! FNV-1a over a length-prefixed encoding: stable across builds and
//! restarts (unlike std's hasher), since hashes are stored.

use crate::directory::model::Kind;
use crate::directory::Counterparty;
use crate::phone;

use super::registry::Field;

/// The id-map's hash of a record removed from a system: never the hash of
/// a record ([`hash`] avoids it), so a record that comes back is sent again.
pub const REMOVED: u64 = 0;

/// The id-map's mark of a link the system closed (it deleted its copy; the
/// record stays here): nothing is sent to that system for the record again,
/// until a new link replaces the mark. Never the hash of a record either.
pub const CLOSED: u64 = u64::MAX;

/// The hash of `record`'s `fields` (as a [`super::SystemSpec`] lists them:
/// sorted, each once), never [`REMOVED`] nor [`CLOSED`].
pub fn hash(record: &Counterparty, fields: &[Field]) -> u64 {
    let mut hasher = Fnv::new();
    for &field in fields {
        hasher.byte(field as u8);
        match field {
            Field::Name => hasher.text(&collapse(&record.name)),
            Field::FullName => hasher.option(record.full_name.as_deref().map(collapse)),
            Field::Inn => hasher.option(record.inn.as_deref().map(digits)),
            Field::Kpp => hasher.option(record.kpp.as_deref().map(kpp)),
            Field::Ogrn => hasher.option(record.ogrn.as_deref().map(digits)),
            Field::Ogrnip => hasher.option(record.ogrnip.as_deref().map(digits)),
            Field::Code => hasher.option(record.code.as_deref().map(collapse)),
            Field::Kind => {
                let kind = record.kind.map(|k| match k {
                    Kind::Legal => "legal",
                    Kind::SoleProprietor => "sole_proprietor",
                    Kind::Person => "person",
                });
                hasher.option(kind.map(str::to_owned))
            }
            Field::Category => hasher.option(record.category.map(|c| c.to_string())),
            Field::ManagerPhone => {
                hasher.option(record.manager_phone.as_deref().map(manager_phone))
            }
            Field::ManagerName => hasher.option(record.manager_name.as_deref().map(collapse)),
            Field::Phones => hasher.list(phones(&record.phones)),
            Field::Emails => hasher.list(emails(&record.emails)),
            Field::Address => hasher.option(record.address.as_deref().map(collapse)),
            Field::Links => {
                let mut links: Vec<String> = record
                    .links
                    .iter()
                    .map(|l| {
                        format!(
                            "{}\u{0}{}\u{0}{}",
                            collapse(&l.system),
                            collapse(&l.kind),
                            l.url.trim()
                        )
                    })
                    .collect();
                links.sort();
                links.dedup();
                hasher.list(links)
            }
        }
    }
    match hasher.finish() {
        REMOVED => 1,
        CLOSED => CLOSED - 1,
        h => h,
    }
}

/// Text trimmed, every run of whitespace one space.
pub fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The digits only (INN, OGRN, OGRNIP).
pub fn digits(text: &str) -> String {
    text.chars().filter(char::is_ascii_digit).collect()
}

/// A KPP's digits and letters, capitalized: its fifth and sixth characters
/// may be letters (`7736AB001`), so "digits only" would make two KPPs one.
pub fn kpp(text: &str) -> String {
    text.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Phones as their sorted [`phone::PhoneKey`]s, each once; what is not a
/// number is left out (the directory does not index it either).
pub fn phones(written: &[Box<str>]) -> Vec<String> {
    let mut keys: Vec<phone::PhoneKey> =
        written.iter().filter_map(|p| phone::normalize(p)).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter().map(|k| k.to_string()).collect()
}

/// E-mails trimmed and lowercased, sorted, each once.
pub fn emails(written: &[Box<str>]) -> Vec<String> {
    let mut emails: Vec<String> = written
        .iter()
        .map(|e| e.trim().to_lowercase())
        .filter(|e| !e.is_empty())
        .collect();
    emails.sort();
    emails.dedup();
    emails
}

/// An extension stays as written (trimmed); a phone number is normalized.
fn manager_phone(text: &str) -> String {
    phone::normalize(text).map_or_else(|| collapse(text), |k| k.to_string())
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn byte(&mut self, b: u8) {
        self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }

    fn bytes(&mut self, bytes: &[u8]) {
        // Length first: "ab","c" and "a","bc" differ.
        for b in (bytes.len() as u32).to_le_bytes() {
            self.byte(b);
        }
        for &b in bytes {
            self.byte(b);
        }
    }

    fn text(&mut self, text: &str) {
        self.bytes(text.as_bytes());
    }

    /// An absent value and an empty one are alike: a CRM that drops an
    /// empty field did not change it.
    fn option(&mut self, value: Option<String>) {
        match value.filter(|v| !v.is_empty()) {
            Some(v) => {
                self.byte(1);
                self.text(&v);
            }
            None => self.byte(0),
        }
    }

    fn list(&mut self, values: Vec<String>) {
        for b in (values.len() as u32).to_le_bytes() {
            self.byte(b);
        }
        for v in &values {
            self.text(v);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::model::Link;

    fn record() -> Counterparty {
        Counterparty {
            id: "1".into(),
            name: "Ромашка ООО".into(),
            inn: Some("7707083893".into()),
            kpp: Some("773601001".into()),
            ogrn: Some("1027700132195".into()),
            phones: vec!["+7 916 555-55-55".into(), "8 495 123 45 67".into()],
            emails: vec!["info@example.ru".into()],
            address: Some("Москва, ул. Ленина, 1".into()),
            kind: Some(Kind::Legal),
            ..Default::default()
        }
    }

    fn all(record: &Counterparty) -> u64 {
        hash(record, Field::ALL)
    }

    #[test]
    fn normalization_makes_equal_what_is_written_another_way() {
        let base = all(&record());
        let mut other = record();
        other.name = "  Ромашка   ООО ".into();
        other.inn = Some("7707 083893".into());
        other.kpp = Some("7736-01-001".into());
        other.ogrn = Some(" 1027700132195".into());
        other.phones = vec![
            "74951234567".into(),
            "89165555555".into(),
            "+7 (916) 555 55 55".into(),
            "нет".into(),
        ];
        other.emails = vec!["Info@Example.RU ".into(), "info@example.ru".into()];
        other.address = Some("Москва,  ул. Ленина,\t1".into());
        other.id = "another id".into();
        other.data_version = Some("AAAA".into());
        assert_eq!(all(&other), base);
        // An empty optional field is an absent one.
        let mut empty = record();
        empty.full_name = Some("  ".into());
        assert_eq!(all(&empty), base);
    }

    #[test]
    fn a_changed_field_changes_the_hash() {
        let base = all(&record());
        type Change = Box<dyn Fn(&mut Counterparty)>;
        let changes: Vec<(&str, Change)> = vec![
            ("name", Box::new(|c| c.name = "Ромашка АО".into())),
            ("inn", Box::new(|c| c.inn = Some("7707083894".into()))),
            ("kpp", Box::new(|c| c.kpp = Some("7736AB001".into()))),
            ("ogrn", Box::new(|c| c.ogrn = None)),
            ("phones", Box::new(|c| c.phones.push("89160000000".into()))),
            (
                "emails",
                Box::new(|c| c.emails = vec!["sales@example.ru".into()]),
            ),
            ("kind", Box::new(|c| c.kind = Some(Kind::Person))),
            ("category", Box::new(|c| c.category = Some(2))),
            (
                "manager",
                Box::new(|c| c.manager_phone = Some("244".into())),
            ),
            (
                "links",
                Box::new(|c| {
                    c.links = vec![Link {
                        system: "bitrix24".into(),
                        kind: "company".into(),
                        url: "https://portal/crm/company/details/1/".into(),
                    }]
                    .into()
                }),
            ),
        ];
        for (what, change) in changes {
            let mut changed = record();
            change(&mut changed);
            assert_ne!(all(&changed), base, "{what}");
        }
    }

    #[test]
    fn only_the_synced_fields_count() {
        let fields = [Field::Name, Field::Phones];
        let mut other = record();
        other.inn = Some("7707083894".into());
        other.emails.clear();
        assert_eq!(hash(&other, &fields), hash(&record(), &fields));
        other.name = "Другая".into();
        assert_ne!(hash(&other, &fields), hash(&record(), &fields));
        // Values do not slide from one field into the next.
        let a = Counterparty {
            name: "ab".into(),
            full_name: Some("c".into()),
            ..Default::default()
        };
        let b = Counterparty {
            name: "a".into(),
            full_name: Some("bc".into()),
            ..Default::default()
        };
        assert_ne!(all(&a), all(&b));
        assert_ne!(all(&a), REMOVED);
    }
}
