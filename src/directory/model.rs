//! The one counterparty model every source converts its input into.
//!
//! The same shape is the JSON Lines file format, the push API body and the
//! store's snapshot rows (see `docs/contract.md`). Strings are `Box<str>`
//! rather than `String`: a million records stay in memory, and the spare
//! capacity of a `String` is waste there.

use serde::{Deserialize, Serialize};

/// A client of the business as 1C (or another source) knows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counterparty {
    /// Stable identifier in the source (1C's `Ref_Key` GUID, a CRM id...).
    pub id: Box<str>,
    /// Short name shown on the operator's phone and card.
    pub name: Box<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_name: Option<Box<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inn: Option<Box<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kpp: Option<Box<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ogrn: Option<Box<str>>,
    /// A sole proprietor's registration number (15 digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ogrnip: Option<Box<str>>,
    /// The source's own code of the record (1C's `Код`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<Box<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<Kind>,
    /// Client category; its meaning is site-specific (often a VIP level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<i64>,
    /// Internal extension of the responsible manager: where the PBX routes the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager_phone: Option<Box<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager_name: Option<Box<str>>,
    /// Which system named the manager (`onec`, `bitrix24`...): a name of
    /// lowercase Latin letters, digits, `_` and `-`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager_source: Option<Box<str>>,
    /// Phone numbers as the source wrote them (any human format).
    #[serde(default)]
    pub phones: Vec<Box<str>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emails: Vec<Box<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Box<str>>,
    /// The record's pages in other systems (a CRM card...). A boxed slice:
    /// an absent list costs no allocation and no spare capacity.
    #[serde(default, skip_serializing_if = "<[Link]>::is_empty")]
    pub links: Box<[Link]>,
    /// The source's change marker (1C's `DataVersion`), used to skip unchanged records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_version: Option<Box<str>>,
}

/// What kind of party a counterparty is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An organization (10-digit INN).
    Legal,
    /// A sole proprietor, ИП (12-digit INN and an OGRNIP).
    SoleProprietor,
    /// A private person.
    Person,
}

/// A page about the record in another system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// The system (`bitrix24`, `amocrm`...).
    pub system: Box<str>,
    /// What the page shows there (`company`, `contact`, `deal`...).
    pub kind: Box<str>,
    /// An `http://` or `https://` URL: it becomes a link on the operator's card.
    pub url: Box<str>,
}

/// Bounds on one record, so a file line or a pushed record cannot make the
/// directory hold arbitrary amounts of memory or the answer arbitrary bytes.
pub const MAX_ID_LEN: usize = 128;
pub const MAX_TEXT_LEN: usize = 1024;
pub const MAX_PHONES: usize = 32;
pub const MAX_EMAILS: usize = 32;
pub const MAX_LINKS: usize = 8;
/// Longest system name (`manager_source`, a link's `system` and `kind`).
pub const MAX_NAME_LEN: usize = 64;

/// A record that breaks the model's rules: which field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {problem}")]
pub struct FieldError {
    pub field: &'static str,
    pub problem: String,
}

impl Counterparty {
    /// Checks what serde cannot: required text present, lengths bounded.
    pub fn validate(&self) -> Result<(), FieldError> {
        fn bad(field: &'static str, problem: impl Into<String>) -> Result<(), FieldError> {
            Err(FieldError {
                field,
                problem: problem.into(),
            })
        }
        if self.id.trim().is_empty() {
            return bad("id", "must not be empty");
        }
        if self.id.len() > MAX_ID_LEN {
            return bad("id", format!("longer than {MAX_ID_LEN} bytes"));
        }
        if clean_text(&self.name).trim().is_empty() {
            return bad("name", "must not be empty");
        }
        if let Some(m) = self.manager_phone.as_deref() {
            if !m.trim().is_empty() && !is_manager_phone(m) {
                return bad(
                    "manager_phone",
                    format!(
                        "{:?} is not an extension (2-6 digits) or a phone number: the PBX routes the call to it",
                        m.chars().take(40).collect::<String>()
                    ),
                );
            }
        }
        let texts = [
            ("name", Some(&self.name)),
            ("full_name", self.full_name.as_ref()),
            ("inn", self.inn.as_ref()),
            ("kpp", self.kpp.as_ref()),
            ("ogrn", self.ogrn.as_ref()),
            ("ogrnip", self.ogrnip.as_ref()),
            ("code", self.code.as_ref()),
            ("manager_phone", self.manager_phone.as_ref()),
            ("manager_name", self.manager_name.as_ref()),
            ("address", self.address.as_ref()),
            ("data_version", self.data_version.as_ref()),
        ];
        for (field, value) in texts {
            if value.is_some_and(|v| v.len() > MAX_TEXT_LEN) {
                return bad(field, format!("longer than {MAX_TEXT_LEN} bytes"));
            }
        }
        if self.phones.len() > MAX_PHONES {
            return bad("phones", format!("more than {MAX_PHONES} numbers"));
        }
        if self.emails.len() > MAX_EMAILS {
            return bad("emails", format!("more than {MAX_EMAILS} addresses"));
        }
        if let Some(p) = self.phones.iter().find(|p| p.len() > MAX_TEXT_LEN) {
            return bad(
                "phones",
                format!("a number is longer than {MAX_TEXT_LEN} bytes: {:.40}…", p),
            );
        }
        if self.emails.iter().any(|e| e.len() > MAX_TEXT_LEN) {
            return bad(
                "emails",
                format!("an address is longer than {MAX_TEXT_LEN} bytes"),
            );
        }
        if let Some(source) = self.manager_source.as_deref() {
            if !is_system_name(source) {
                return bad(
                    "manager_source",
                    format!(
                        "{:?} is not a system name (1-{MAX_NAME_LEN} lowercase Latin letters, digits, _ or -)",
                        source.chars().take(40).collect::<String>()
                    ),
                );
            }
        }
        if self.links.len() > MAX_LINKS {
            return bad("links", format!("more than {MAX_LINKS} links"));
        }
        for (i, link) in self.links.iter().enumerate() {
            if let Err(problem) = link.check() {
                return bad("links", format!("link {i}: {problem}"));
            }
        }
        Ok(())
    }

    /// Takes out of the text fields what must never reach a phone's display
    /// or the operator's card: line breaks and line or paragraph separators
    /// (each becomes a space), bidirectional overrides and isolates that
    /// would reorder the text around them, BOMs, and other control
    /// characters. The id and the change marker are left as they are.
    pub fn clean_display_fields(&mut self) {
        fn clean(field: &mut Box<str>) {
            if field.chars().any(is_unclean) {
                *field = clean_text(field).trim().into();
            }
        }
        clean(&mut self.name);
        for field in [
            &mut self.full_name,
            &mut self.inn,
            &mut self.kpp,
            &mut self.ogrn,
            &mut self.ogrnip,
            &mut self.code,
            &mut self.manager_phone,
            &mut self.manager_name,
            &mut self.address,
        ]
        .into_iter()
        .flatten()
        {
            clean(field);
        }
        self.phones.iter_mut().for_each(clean);
        self.emails.iter_mut().for_each(clean);
    }
}

impl Link {
    /// Names of a system and kind, and an `http(s)://` URL with a host,
    /// without spaces or control characters (it becomes an `href`).
    pub(crate) fn check(&self) -> Result<(), String> {
        if !is_system_name(&self.system) {
            return Err(format!(
                "`system` {:?} is not a system name (1-{MAX_NAME_LEN} lowercase Latin letters, digits, _ or -)",
                self.system.chars().take(40).collect::<String>()
            ));
        }
        if self.kind.trim().is_empty() || self.kind.len() > MAX_NAME_LEN {
            return Err(format!("`kind` must be 1-{MAX_NAME_LEN} bytes"));
        }
        if self.kind.chars().any(is_unclean) {
            return Err("`kind` holds control characters".into());
        }
        if !is_web_url(&self.url) {
            return Err(format!(
                "`url` {:?} is not an http:// or https:// URL (with a host, without spaces, at most {MAX_TEXT_LEN} bytes)",
                self.url.chars().take(60).collect::<String>()
            ));
        }
        Ok(())
    }
}

/// A system's name: 1-64 lowercase Latin letters, digits, `_` and `-`.
pub fn is_system_name(text: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// An `http://` or `https://` URL (scheme in any case) with a host, no
/// whitespace, control characters or quotes, at most [`MAX_TEXT_LEN`] bytes:
/// never `javascript:` or `data:`, whatever a CRM sends.
pub fn is_web_url(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    let rest = if lower.starts_with("https://") {
        &url[8..]
    } else if lower.starts_with("http://") {
        &url[7..]
    } else {
        return false;
    };
    url.len() <= MAX_TEXT_LEN
        && !rest.is_empty()
        && !rest.starts_with('/')
        && !url.chars().any(|c| {
            c.is_whitespace() || is_unclean(c) || matches!(c, '"' | '\'' | '<' | '>' | '\\')
        })
}

/// True for an extension (2-6 digits) or a number [`crate::phone::normalize`]
/// reads, written with digits, spaces, `+`, dashes and brackets only: text
/// such as `доб.` or markup is refused rather than sent to the PBX as the
/// routing target.
pub fn is_manager_phone(text: &str) -> bool {
    text.chars()
        .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '+' | '-' | '(' | ')' | '.'))
        && crate::phone::normalize(text).is_some()
}

/// Characters [`Counterparty::clean_display_fields`] removes or replaces.
fn is_unclean(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}'
        )
}

pub(crate) fn clean_text(text: &str) -> String {
    text.chars()
        .filter_map(|c| match c {
            '\n' | '\r' | '\t' | '\u{2028}' | '\u{2029}' => Some(' '),
            c if is_unclean(c) => None,
            c => Some(c),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> Counterparty {
        serde_json::from_str(r#"{"id":"1","name":"ООО \"Ромашка\""}"#).expect("valid json")
    }

    #[test]
    fn only_id_and_name_are_required() {
        let c = minimal();
        assert!(c.phones.is_empty());
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let err = serde_json::from_str::<Counterparty>(r#"{"id":"1","name":"x","phone":"1"}"#)
            .expect_err("typo must be caught");
        assert!(err.to_string().contains("phone"), "{err}");
    }

    #[test]
    fn empty_name_and_overlong_fields_are_named() {
        let mut c = minimal();
        c.name = " ".into();
        assert_eq!(c.validate().map_err(|e| e.field), Err("name"));
        let mut c = minimal();
        c.inn = Some("1".repeat(MAX_TEXT_LEN + 1).into());
        assert_eq!(c.validate().map_err(|e| e.field), Err("inn"));
        let mut c = minimal();
        c.phones = vec!["1".into(); MAX_PHONES + 1];
        assert_eq!(c.validate().map_err(|e| e.field), Err("phones"));
    }

    #[test]
    fn a_manager_phone_must_be_an_extension_or_a_number() {
        for good in [
            "244",
            "044",
            "+7 916 123-45-67",
            "8 (495) 123-45-67",
            " 301 ",
        ] {
            let mut c = minimal();
            c.manager_phone = Some(good.into());
            assert_eq!(c.validate(), Ok(()), "{good}");
        }
        for bad in [
            "2<4>&4\n",
            "1",
            "244 доб. 5",
            "1234567",
            "abc",
            "24\u{202e}4",
        ] {
            let mut c = minimal();
            c.manager_phone = Some(bad.into());
            assert_eq!(
                c.validate().map_err(|e| e.field),
                Err("manager_phone"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn display_fields_lose_line_breaks_bidi_overrides_and_controls() {
        let mut c = minimal();
        c.name = "ООО\u{202e}Ромашка\nи Ко\u{2028}\u{feff}\u{7}".into();
        c.address = Some("Москва,\r\nул. Ленина\u{2066}, 1\u{2069}".into());
        c.phones = vec!["+7 916\u{2029}123-45-67".into()];
        c.clean_display_fields();
        assert_eq!(&*c.name, "ОООРомашка и Ко");
        assert_eq!(c.address.as_deref(), Some("Москва,  ул. Ленина, 1"));
        assert_eq!(&*c.phones[0], "+7 916 123-45-67");
    }

    #[test]
    fn a_name_of_only_invisible_characters_is_empty() {
        let mut c = minimal();
        c.name = "\u{202e}\u{feff}\n".into();
        assert_eq!(c.validate().map_err(|e| e.field), Err("name"));
    }

    #[test]
    fn the_new_optional_fields_round_trip_and_are_absent_when_unset() {
        let text = r#"{"id":"1","name":"ИП Петров","inn":"500100732259","ogrnip":"304500116000157","code":"000000042","kind":"sole_proprietor","manager_source":"bitrix24","phones":[],"links":[{"system":"bitrix24","kind":"company","url":"https://portal.example/crm/company/details/2919/"}]}"#;
        let c: Counterparty = serde_json::from_str(text).expect("valid json");
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.kind, Some(Kind::SoleProprietor));
        let back = serde_json::to_string(&c).expect("serializes");
        assert_eq!(
            serde_json::from_str::<Counterparty>(&back).expect("reads back"),
            c
        );
        let plain = serde_json::to_string(&minimal()).expect("serializes");
        for absent in ["ogrnip", "code", "kind", "links", "manager_source"] {
            assert!(!plain.contains(absent), "{plain}");
        }
    }

    #[test]
    fn an_unknown_kind_or_a_mistyped_link_is_refused() {
        assert!(
            serde_json::from_str::<Counterparty>(r#"{"id":"1","name":"x","kind":"company"}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<Counterparty>(
            r#"{"id":"1","name":"x","links":[{"system":"a","kind":"b","href":"https://x"}]}"#
        )
        .is_err());
    }

    #[test]
    fn links_are_http_urls_at_most_eight() {
        let link = |url: &str| Link {
            system: "bitrix24".into(),
            kind: "company".into(),
            url: url.into(),
        };
        for good in [
            "https://portal.example/crm/company/details/1/",
            "HTTP://host:8080/a?b=c",
        ] {
            let mut c = minimal();
            c.links = vec![link(good)].into();
            assert_eq!(c.validate(), Ok(()), "{good}");
        }
        for bad in [
            "javascript:alert(1)",
            "data:text/html,x",
            "https://",
            "https:///path",
            "ftp://host/",
            "https://host/a b",
            "https://host/\"onmouseover=x",
            "//host/",
        ] {
            let mut c = minimal();
            c.links = vec![link(bad)].into();
            assert_eq!(c.validate().map_err(|e| e.field), Err("links"), "{bad}");
        }
        let mut c = minimal();
        c.links = vec![link("https://h/"); MAX_LINKS + 1].into();
        assert_eq!(c.validate().map_err(|e| e.field), Err("links"));
        let mut c = minimal();
        c.links = vec![Link {
            system: "Bitrix 24".into(),
            ..link("https://h/")
        }]
        .into();
        assert_eq!(c.validate().map_err(|e| e.field), Err("links"));
    }

    #[test]
    fn a_manager_source_is_a_system_name() {
        let mut c = minimal();
        c.manager_source = Some("onec".into());
        assert_eq!(c.validate(), Ok(()));
        c.manager_source = Some("1С Бухгалтерия".into());
        assert_eq!(c.validate().map_err(|e| e.field), Err("manager_source"));
    }
}
