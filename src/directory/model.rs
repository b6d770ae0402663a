//! The one counterparty model every source converts its input into.
//!
//! The same shape is the JSON Lines file format, the push API body and the
//! store's snapshot rows (see `docs/contract.md`). Strings are `Box<str>`
//! rather than `String`: a million records stay in memory, and the spare
//! capacity of a `String` is waste there.

use serde::{Deserialize, Serialize};

/// A client of the business as 1C (or another source) knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Client category; its meaning is site-specific (often a VIP level).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<i64>,
    /// Internal extension of the responsible manager: where the PBX routes the call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager_phone: Option<Box<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager_name: Option<Box<str>>,
    /// Phone numbers as the source wrote them (any human format).
    #[serde(default)]
    pub phones: Vec<Box<str>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub emails: Vec<Box<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Box<str>>,
    /// The source's change marker (1C's `DataVersion`), used to skip unchanged records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_version: Option<Box<str>>,
}

/// Bounds on one record, so a file line or a pushed record cannot make the
/// directory hold arbitrary amounts of memory or the answer arbitrary bytes.
pub const MAX_ID_LEN: usize = 128;
pub const MAX_TEXT_LEN: usize = 1024;
pub const MAX_PHONES: usize = 32;
pub const MAX_EMAILS: usize = 32;

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

fn clean_text(text: &str) -> String {
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
}
