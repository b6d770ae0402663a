//! How a system (a CRM, later 1C as a target) registers with the core: its
//! name, how it tells the same client ([`DedupeKey`]), its link templates,
//! which records it takes ([`Exports`]) and which of their fields it keeps
//! in step ([`Field`]). The change feed and the reconcile read nothing else
//! about a system; the sending runtime (issue 18) builds on the same spec.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use crate::directory::model::is_system_name;
use crate::directory::Counterparty;

/// How a system's records are matched with the directory's by business key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DedupeKey {
    /// The INN alone ("Проверка по ИНН").
    Inn,
    /// The INN and the KPP: a company's branches share the INN.
    #[default]
    InnKpp,
}

impl DedupeKey {
    /// The configuration's spelling: `"inn"` or `"inn_kpp"`.
    pub fn parse(text: &str) -> Option<DedupeKey> {
        match text {
            "inn" => Some(DedupeKey::Inn),
            "inn_kpp" => Some(DedupeKey::InnKpp),
            _ => None,
        }
    }
}

/// A field of the model a system keeps in step. Hashed in this order
/// whatever order a system lists them in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    Name,
    FullName,
    Inn,
    Kpp,
    Ogrn,
    Ogrnip,
    Code,
    Kind,
    Category,
    ManagerPhone,
    ManagerName,
    Phones,
    Emails,
    Address,
    Links,
}

impl Field {
    /// Every field a system may keep in step (not the id, which is the
    /// record's key, nor the source's change marker).
    pub const ALL: &'static [Field] = &[
        Field::Name,
        Field::FullName,
        Field::Inn,
        Field::Kpp,
        Field::Ogrn,
        Field::Ogrnip,
        Field::Code,
        Field::Kind,
        Field::Category,
        Field::ManagerPhone,
        Field::ManagerName,
        Field::Phones,
        Field::Emails,
        Field::Address,
        Field::Links,
    ];

    /// The model's (JSON) name of the field.
    pub fn name(self) -> &'static str {
        match self {
            Field::Name => "name",
            Field::FullName => "full_name",
            Field::Inn => "inn",
            Field::Kpp => "kpp",
            Field::Ogrn => "ogrn",
            Field::Ogrnip => "ogrnip",
            Field::Code => "code",
            Field::Kind => "kind",
            Field::Category => "category",
            Field::ManagerPhone => "manager_phone",
            Field::ManagerName => "manager_name",
            Field::Phones => "phones",
            Field::Emails => "emails",
            Field::Address => "address",
            Field::Links => "links",
        }
    }

    /// The field of that model name.
    pub fn parse(name: &str) -> Option<Field> {
        Field::ALL.iter().copied().find(|f| f.name() == name)
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which of the directory's records a system takes.
#[derive(Clone, Default)]
pub enum Exports {
    /// Every record.
    #[default]
    All,
    /// The records the predicate accepts (e.g. legal entities only). A
    /// record that stops being accepted is not removed from the system:
    /// it is no longer sent (a filter change must not delete in a CRM).
    Only(Arc<dyn Fn(&Counterparty) -> bool + Send + Sync>),
}

impl Exports {
    pub fn accepts(&self, record: &Counterparty) -> bool {
        match self {
            Exports::All => true,
            Exports::Only(accepts) => accepts(record),
        }
    }
}

impl fmt::Debug for Exports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exports::All => f.write_str("All"),
            Exports::Only(_) => f.write_str("Only(..)"),
        }
    }
}

/// A system as it registers with the core.
#[derive(Debug, Clone)]
pub struct SystemSpec {
    name: Arc<str>,
    /// The id-map's `kind` of the records the feed enqueues (`company`).
    record_kind: Arc<str>,
    dedupe_key: DedupeKey,
    /// `company = "https://portal/crm/company/details/{id}/"`: carried for
    /// the overlay, which makes the card's links.
    link_templates: BTreeMap<String, String>,
    exports: Exports,
    /// Sorted, each once.
    fields: Vec<Field>,
    /// Whether it takes payment events (`payment.posted|changed|reversed`):
    /// each is queued for it in the transaction that stores the payment.
    takes_payments: bool,
}

/// A registration the core refuses, naming what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    #[error("sync system name {0:?} is not a system name (1-64 lowercase Latin letters, digits, _ or -)")]
    BadName(String),
    #[error(
        "sync system {system}: {field:?} is not a field of the counterparty model (known: {known})"
    )]
    UnknownField {
        system: String,
        field: String,
        known: String,
    },
    #[error("sync system {0}: no synced fields")]
    NoFields(String),
    #[error("sync system {0} is registered twice")]
    Duplicate(String),
}

impl SystemSpec {
    /// A system named `name` taking every record, every field, deduplicated
    /// by INN and KPP, its records kept in the id-map as `company`.
    pub fn new(name: &str) -> Result<SystemSpec, RegistryError> {
        if !is_system_name(name) {
            return Err(RegistryError::BadName(name.chars().take(64).collect()));
        }
        Ok(SystemSpec {
            name: name.into(),
            record_kind: "company".into(),
            dedupe_key: DedupeKey::default(),
            link_templates: BTreeMap::new(),
            exports: Exports::All,
            fields: Field::ALL.to_vec(),
            takes_payments: false,
        })
    }

    /// Subscribes the system to payment events (see `sync::onec::payments`):
    /// [`System::send`](crate::sync::system::System::send) then also gets
    /// rows of kind [`PAYMENT_KIND`](crate::store::PAYMENT_KIND), op
    /// `upsert`, record key `payment:<ref>`, body `{"event":
    /// "payment.posted|changed|reversed", "source": "odata|push", "payment":
    /// {…}}`, one at a time per payment and in order; before a payment's
    /// first, `find_existing` is asked (answering `Ok(None)` is right for a
    /// system that keeps no payment records).
    pub fn with_payments(mut self) -> SystemSpec {
        self.takes_payments = true;
        self
    }

    pub fn takes_payments(&self) -> bool {
        self.takes_payments
    }

    pub fn with_dedupe_key(mut self, key: DedupeKey) -> SystemSpec {
        self.dedupe_key = key;
        self
    }

    pub fn with_record_kind(mut self, kind: &str) -> SystemSpec {
        self.record_kind = kind.into();
        self
    }

    pub fn with_link_templates(mut self, templates: BTreeMap<String, String>) -> SystemSpec {
        self.link_templates = templates;
        self
    }

    pub fn with_exports(mut self, exports: Exports) -> SystemSpec {
        self.exports = exports;
        self
    }

    /// Keeps only the fields of these model names in step.
    pub fn with_fields(mut self, names: &[&str]) -> Result<SystemSpec, RegistryError> {
        let mut fields = Vec::with_capacity(names.len());
        for name in names {
            let field = Field::parse(name).ok_or_else(|| RegistryError::UnknownField {
                system: self.name.to_string(),
                field: name.chars().take(64).collect(),
                known: Field::ALL
                    .iter()
                    .map(|f| f.name())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
            fields.push(field);
        }
        fields.sort();
        fields.dedup();
        if fields.is_empty() {
            return Err(RegistryError::NoFields(self.name.to_string()));
        }
        self.fields = fields;
        Ok(self)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn record_kind(&self) -> &str {
        &self.record_kind
    }

    pub fn dedupe_key(&self) -> DedupeKey {
        self.dedupe_key
    }

    pub fn link_templates(&self) -> &BTreeMap<String, String> {
        &self.link_templates
    }

    pub fn exports(&self) -> &Exports {
        &self.exports
    }

    pub fn fields(&self) -> &[Field] {
        &self.fields
    }
}

/// The registered systems, each name once.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    systems: Arc<[SystemSpec]>,
}

impl Registry {
    pub fn new(systems: Vec<SystemSpec>) -> Result<Registry, RegistryError> {
        for (i, system) in systems.iter().enumerate() {
            if systems[..i].iter().any(|s| s.name == system.name) {
                return Err(RegistryError::Duplicate(system.name.to_string()));
            }
        }
        Ok(Registry {
            systems: systems.into(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.systems.is_empty()
    }

    pub fn systems(&self) -> &[SystemSpec] {
        &self.systems
    }

    pub fn get(&self, name: &str) -> Option<&SystemSpec> {
        self.systems.iter().find(|s| &*s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_names_what_it_refuses() {
        assert!(matches!(
            SystemSpec::new("Bitrix 24"),
            Err(RegistryError::BadName(_))
        ));
        let spec = SystemSpec::new("bitrix24").expect("name");
        assert_eq!(spec.dedupe_key(), DedupeKey::InnKpp);
        assert_eq!(spec.fields(), Field::ALL);
        let err = spec
            .clone()
            .with_fields(&["name", "phone"])
            .expect_err("phone is not a field");
        assert!(err.to_string().contains("\"phone\""), "{err}");
        let spec = spec
            .with_fields(&["phones", "name", "phones"])
            .expect("fields");
        assert_eq!(spec.fields(), [Field::Name, Field::Phones]);
        let twice = Registry::new(vec![spec.clone(), spec]).expect_err("twice");
        assert_eq!(twice, RegistryError::Duplicate("bitrix24".into()));
    }

    #[test]
    fn dedupe_keys_read_as_configured() {
        assert_eq!(DedupeKey::parse("inn"), Some(DedupeKey::Inn));
        assert_eq!(DedupeKey::parse("inn_kpp"), Some(DedupeKey::InnKpp));
        assert_eq!(DedupeKey::parse("kpp"), None);
    }

    #[test]
    fn exports_filter_records() {
        let legal = Exports::Only(Arc::new(|c: &Counterparty| {
            c.inn.as_deref().is_some_and(|i| i.len() == 10)
        }));
        let mut record = Counterparty {
            id: "1".into(),
            name: "A".into(),
            inn: Some("7707083893".into()),
            ..Default::default()
        };
        assert!(legal.accepts(&record) && Exports::All.accepts(&record));
        record.inn = Some("500100732259".into());
        assert!(!legal.accepts(&record));
    }
}
