//! The mapping from a site's SERVIO export files to counterparties: which
//! files, where a client is in them, where each field is. SERVIO's XML is
//! described only in licensed, versioned documents (`SP_DataStruct_XXX.pdf`),
//! so nothing here guesses a schema: a site writes the mapping from its own
//! documentation (see `config/servio-mapping.example.toml`, every key
//! documented there). Unknown keys and bad values stop start-up and
//! `check-config`, naming the key and the file.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::xml::EncodingChoice;

/// A mapping file that cannot be used: the file, the key, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error("cannot read SERVIO mapping file {path}: {problem}")]
    Read { path: PathBuf, problem: String },
    #[error("SERVIO mapping file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("SERVIO mapping file {path}: `{key}` {problem}")]
    Invalid {
        path: PathBuf,
        key: String,
        problem: String,
    },
}

/// The mapping file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    #[serde(rename = "file")]
    files: Vec<FileFile>,
    fields: FieldsFile,
    #[serde(default)]
    transforms: TransformsFile,
    #[serde(default)]
    category: CategoryFile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFile {
    pattern: String,
    mode: Mode,
    #[serde(default = "auto")]
    encoding: String,
    record: String,
}

fn auto() -> String {
    "auto".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldsFile {
    id: String,
    name: String,
    full_name: Option<String>,
    inn: Option<String>,
    kpp: Option<String>,
    ogrn: Option<String>,
    address: Option<String>,
    manager_phone: Option<String>,
    manager_name: Option<String>,
    category: Option<String>,
    phones: Option<String>,
    emails: Option<String>,
    deleted: Option<String>,
    #[serde(default)]
    deleted_values: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransformsFile {
    id: Option<Vec<Transform>>,
    name: Option<Vec<Transform>>,
    full_name: Option<Vec<Transform>>,
    inn: Option<Vec<Transform>>,
    kpp: Option<Vec<Transform>>,
    ogrn: Option<Vec<Transform>>,
    address: Option<Vec<Transform>>,
    manager_phone: Option<Vec<Transform>>,
    manager_name: Option<Vec<Transform>>,
    category: Option<Vec<Transform>>,
    phones: Option<Vec<Transform>>,
    emails: Option<Vec<Transform>>,
    /// What `split` splits on (each character is a separator).
    separators: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CategoryFile {
    #[serde(default)]
    values: HashMap<String, i64>,
    default: Option<i64>,
}

/// Whether a file lists every client or only changed ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Every client: the source's set is replaced, absent clients leave.
    Full,
    /// Changed clients, each whole: upserted, or removed when marked deleted.
    Delta,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Delta => "delta",
        }
    }
}

/// What is done to a field's text after reading (trimming always is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transform {
    /// Already done to every value; accepted so a mapping may say it.
    Trim,
    /// Only the digits are kept (INN, KPP written with spaces or dashes).
    Digits,
    /// Runs of whitespace become one space.
    CollapseSpaces,
    /// One element holds several values (`"+7 916 ...; 8 495 ..."`): split
    /// at `transforms.separators` (default `,;`). Phones and e-mails only.
    Split,
}

/// The fields a mapping can fill. One-value fields come first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    Id,
    Name,
    FullName,
    Inn,
    Kpp,
    Ogrn,
    Address,
    ManagerPhone,
    ManagerName,
    Category,
    Deleted,
    Phones,
    Emails,
}

/// How many one-value fields there are: [`Field`]s before `Phones`.
pub const ONE_VALUE_FIELDS: usize = 11;

impl Field {
    pub fn name(self) -> &'static str {
        match self {
            Field::Id => "id",
            Field::Name => "name",
            Field::FullName => "full_name",
            Field::Inn => "inn",
            Field::Kpp => "kpp",
            Field::Ogrn => "ogrn",
            Field::Address => "address",
            Field::ManagerPhone => "manager_phone",
            Field::ManagerName => "manager_name",
            Field::Category => "category",
            Field::Deleted => "deleted",
            Field::Phones => "phones",
            Field::Emails => "emails",
        }
    }

    /// Whether each match is a value (phones, e-mails) rather than the one.
    pub fn is_list(self) -> bool {
        matches!(self, Field::Phones | Field::Emails)
    }

    /// The slot of a one-value field.
    pub fn slot(self) -> usize {
        self as usize
    }
}

/// Where a field is, relative to the record element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    /// Element path below the record element, `/A/B` (empty: the record
    /// element itself, for an attribute of it).
    pub element: String,
    /// The attribute of that element, or `None` for its text.
    pub attribute: Option<String>,
}

/// One kind of export file.
#[derive(Debug, Clone)]
pub struct FileRule {
    pub pattern: String,
    pub mode: Mode,
    pub encoding: EncodingChoice,
    /// `/Export/Clients/Client`: local names from the root.
    pub record: String,
}

/// A mapping ready to read files with.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub files: Vec<FileRule>,
    pub fields: Vec<(Field, FieldPath)>,
    pub transforms: HashMap<Field, Vec<Transform>>,
    pub separators: String,
    pub deleted_values: Vec<String>,
    pub category_values: HashMap<String, i64>,
    pub category_default: Option<i64>,
}

impl Mapping {
    /// Reads and checks the mapping file at `path`.
    pub fn load(path: &Path) -> Result<Mapping, MappingError> {
        let text = std::fs::read_to_string(path).map_err(|e| MappingError::Read {
            path: path.to_owned(),
            problem: e.to_string(),
        })?;
        Mapping::parse(&text, path)
    }

    /// Checks a mapping's text; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Mapping, MappingError> {
        let file: MappingFile = toml::from_str(text).map_err(|e| MappingError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        let invalid = |key: String, problem: &str| MappingError::Invalid {
            path: path.to_owned(),
            key,
            problem: problem.to_owned(),
        };
        if file.files.is_empty() {
            return Err(invalid(
                "file".into(),
                "is empty: add a [[file]] table for each kind of export file",
            ));
        }
        let mut files = Vec::new();
        for (i, f) in file.files.iter().enumerate() {
            let key = |k: &str| format!("file[{i}].{k}");
            check_pattern(&f.pattern).map_err(|p| invalid(key("pattern"), p))?;
            let encoding = EncodingChoice::from_setting(&f.encoding).map_err(|_| {
                invalid(
                    key("encoding"),
                    "must be \"auto\", \"utf-8\" or \"windows-1251\"",
                )
            })?;
            let record = record_path(&f.record).map_err(|p| invalid(key("record"), p))?;
            files.push(FileRule {
                pattern: f.pattern.clone(),
                mode: f.mode,
                encoding,
                record,
            });
        }
        let fl = &file.fields;
        let mut fields = Vec::new();
        for (field, value) in [
            (Field::Id, Some(&fl.id)),
            (Field::Name, Some(&fl.name)),
            (Field::FullName, fl.full_name.as_ref()),
            (Field::Inn, fl.inn.as_ref()),
            (Field::Kpp, fl.kpp.as_ref()),
            (Field::Ogrn, fl.ogrn.as_ref()),
            (Field::Address, fl.address.as_ref()),
            (Field::ManagerPhone, fl.manager_phone.as_ref()),
            (Field::ManagerName, fl.manager_name.as_ref()),
            (Field::Category, fl.category.as_ref()),
            (Field::Deleted, fl.deleted.as_ref()),
            (Field::Phones, fl.phones.as_ref()),
            (Field::Emails, fl.emails.as_ref()),
        ] {
            if let Some(value) = value {
                let parsed = field_path(value)
                    .map_err(|p| invalid(format!("fields.{}", field.name()), p))?;
                fields.push((field, parsed));
            }
        }
        if fl.deleted.is_some() && fl.deleted_values.is_empty() {
            return Err(invalid(
                "fields.deleted_values".into(),
                "is empty: list the texts that mark a removed client, e.g. [\"1\", \"true\"]",
            ));
        }
        if fl.deleted.is_none() && !fl.deleted_values.is_empty() {
            return Err(invalid(
                "fields.deleted_values".into(),
                "is set but fields.deleted is not",
            ));
        }
        let t = &file.transforms;
        let mut transforms = HashMap::new();
        for (field, list) in [
            (Field::Id, &t.id),
            (Field::Name, &t.name),
            (Field::FullName, &t.full_name),
            (Field::Inn, &t.inn),
            (Field::Kpp, &t.kpp),
            (Field::Ogrn, &t.ogrn),
            (Field::Address, &t.address),
            (Field::ManagerPhone, &t.manager_phone),
            (Field::ManagerName, &t.manager_name),
            (Field::Category, &t.category),
            (Field::Phones, &t.phones),
            (Field::Emails, &t.emails),
        ] {
            let Some(list) = list else { continue };
            let key = format!("transforms.{}", field.name());
            if !fields.iter().any(|(f, _)| *f == field) {
                return Err(invalid(
                    key,
                    "names a field the [fields] table does not map",
                ));
            }
            if list.contains(&Transform::Split) && !field.is_list() {
                return Err(invalid(
                    key,
                    "uses split, which only phones and emails take (a one-value field has one value)",
                ));
            }
            transforms.insert(field, list.clone());
        }
        let separators = t.separators.clone().unwrap_or_else(|| ",;".to_owned());
        if separators.is_empty() {
            return Err(invalid(
                "transforms.separators".into(),
                "is empty: give the characters split splits on, e.g. \",;\"",
            ));
        }
        let category_values = file
            .category
            .values
            .iter()
            .map(|(k, v)| (k.trim().to_lowercase(), *v))
            .collect::<HashMap<_, _>>();
        if category_values.len() != file.category.values.len() {
            return Err(invalid(
                "category.values".into(),
                "names one text twice (texts are compared trimmed, ignoring case)",
            ));
        }
        if (!category_values.is_empty() || file.category.default.is_some()) && fl.category.is_none()
        {
            return Err(invalid(
                "category".into(),
                "is set but fields.category is not",
            ));
        }
        Ok(Mapping {
            files,
            fields,
            transforms,
            separators,
            deleted_values: fl
                .deleted_values
                .iter()
                .map(|v| v.trim().to_lowercase())
                .collect(),
            category_values,
            category_default: file.category.default,
        })
    }

    /// The rule for a file of this name: the first whose pattern matches.
    pub fn rule_for(&self, file_name: &str) -> Option<&FileRule> {
        self.files
            .iter()
            .find(|rule| glob_matches(&rule.pattern, file_name))
    }
}

/// A glob on a file name: `*` any run, `?` one character, the rest itself;
/// compared ignoring case (SERVIO runs on Windows, where `Clients.XML` and
/// `clients.xml` are one file).
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.to_lowercase().chars().collect();
    let n: Vec<char> = name.to_lowercase().chars().collect();
    // Iterative matching with one backtrack point for the last `*`.
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn check_pattern(pattern: &str) -> Result<(), &'static str> {
    if pattern.trim().is_empty() {
        return Err("is empty: give a file name pattern such as \"Clients*.xml\"");
    }
    if pattern.contains(['/', '\\']) {
        return Err("must be a file name pattern, without folders");
    }
    if pattern.contains(['[', ']', '{', '}']) {
        return Err("may use only * and ? as wildcards");
    }
    Ok(())
}

/// One local name: a prefix (`s:Name`) is dropped, and what is left must be
/// a plain name.
fn local_name(segment: &str) -> Result<&str, &'static str> {
    let local = segment.rsplit(':').next().unwrap_or(segment);
    if local.is_empty() {
        return Err("has an empty step (`//`, or a step that is only a prefix)");
    }
    if local.contains(['[', ']', '(', ')', '*', '=', '\'', '"', ' ', '|', '@']) {
        return Err("may only hold element names and @attribute, without predicates, wildcards or functions");
    }
    Ok(local)
}

fn record_path(path: &str) -> Result<String, &'static str> {
    let Some(rest) = path.trim().strip_prefix('/') else {
        return Err("must be an absolute path of element names, e.g. \"/Export/Clients/Client\"");
    };
    if rest.is_empty() {
        return Err("names no element");
    }
    let mut out = String::new();
    for segment in rest.split('/') {
        if segment.starts_with('@') {
            return Err("must name an element, not an attribute");
        }
        out.push('/');
        out.push_str(local_name(segment)?);
    }
    Ok(out)
}

fn field_path(path: &str) -> Result<FieldPath, &'static str> {
    let path = path.trim();
    if path.is_empty() {
        return Err("is empty");
    }
    if path.starts_with('/') {
        return Err("must continue the record's path (no leading /), e.g. \"Name\" or \"@Code\"");
    }
    let segments: Vec<&str> = path.split('/').collect();
    let mut element = String::new();
    let mut attribute = None;
    for (i, segment) in segments.iter().enumerate() {
        if let Some(attr) = segment.strip_prefix('@') {
            if i + 1 != segments.len() {
                return Err("may have an @attribute only as its last step");
            }
            attribute = Some(local_name(attr)?.to_owned());
        } else {
            element.push('/');
            element.push_str(local_name(segment)?);
        }
    }
    Ok(FieldPath { element, attribute })
}

#[cfg(test)]
mod tests;
