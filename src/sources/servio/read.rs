//! One SERVIO file read into counterparties through the mapping, streamed:
//! the file is never held whole, only the client being read and the
//! records made so far. Every problem names its line, the element path and
//! the field; reading goes on past a bad client (up to [`MAX_PROBLEMS`]) so
//! that one look at the error file shows what to fix, and stops at the first
//! XML error, after which nothing can be trusted.

use std::collections::HashMap;
use std::io::Read;

use super::mapping::{Field, FileRule, Mapping, Mode, Transform, ONE_VALUE_FIELDS};
use crate::directory::Counterparty;
use crate::xml::{FieldText, Limits, XmlEvent, XmlStream};

/// What a SERVIO file may hold: deep enough for any export (a client is a
/// few levels down), fields of 4 KiB (an address, a long name), runs of
/// 64 KiB; 512 MiB in all, checked before reading and while reading.
pub const LIMITS: Limits = Limits {
    max_depth: 64,
    max_elements: usize::MAX,
    max_field_bytes: 4 * 1024,
    max_run_bytes: 64 * 1024,
    max_document_bytes: 512 * 1024 * 1024,
};

/// Problems listed before reading stops.
pub const MAX_PROBLEMS: usize = 20;

/// The prefix of every SERVIO record's id in the directory.
pub const ID_PREFIX: &str = "servio:";

/// One thing wrong with a file: where, which field, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: u64,
    pub path: String,
    pub field: Option<&'static str>,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}", self.line)?;
        if !self.path.is_empty() {
            write!(f, ", {}", self.path)?;
        }
        if let Some(field) = self.field {
            write!(f, ", field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// A file read well: the clients to upsert, the ids marked deleted (delta
/// files; a full file simply leaves them out), and how many clients it had.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Parsed {
    pub upserts: Vec<Counterparty>,
    pub removals: Vec<Box<str>>,
    pub clients: usize,
}

/// Reads one file of the kind `rule` describes. `max_records`: the most
/// clients a file may hold.
pub fn read_records<R: Read>(
    input: R,
    rule: &FileRule,
    mapping: &Mapping,
    max_records: usize,
) -> Result<Parsed, Vec<Problem>> {
    let mut upserts = Vec::new();
    let read = read_each(input, rule, mapping, max_records, &mut |r| upserts.push(r))?;
    Ok(Parsed {
        upserts,
        removals: read.removals,
        clients: read.clients,
    })
}

/// What [`read_each`] gives besides the records: the ids marked deleted
/// (delta files) and how many clients the file had.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ReadSummary {
    pub removals: Vec<Box<str>>,
    pub clients: usize,
}

/// [`read_records`] handing each record to `each` as soon as it is read,
/// in the file's order, instead of collecting them: a caller that turns
/// them into something smaller at once (a full file's directory set) never
/// holds them all. A file with problems may have handed some records over
/// before its first problem was found (none after it): the caller drops
/// what it made of them.
pub fn read_each<R: Read>(
    input: R,
    rule: &FileRule,
    mapping: &Mapping,
    max_records: usize,
    each: &mut dyn FnMut(Counterparty),
) -> Result<ReadSummary, Vec<Problem>> {
    let mut reader = Reader::new(rule, mapping, max_records, each);
    reader.run(input);
    if reader.problems.is_empty() {
        Ok(reader.summary)
    } else {
        Err(reader.problems)
    }
}

/// A field element being read: its depth, the fields its text fills.
struct Open {
    depth: usize,
    fields: Vec<Field>,
    text: FieldText,
}

/// The client being read.
struct Client {
    line: u64,
    values: [Option<(String, u64)>; ONE_VALUE_FIELDS],
    phones: Vec<String>,
    emails: Vec<String>,
    /// A problem was listed for it: it is not made into a record.
    broken: bool,
}

struct Reader<'m, 's> {
    rule: &'m FileRule,
    mapping: &'m Mapping,
    max_records: usize,
    /// Fields by element path below the record (`""`: the record element).
    texts: HashMap<&'m str, Vec<Field>>,
    attributes: HashMap<&'m str, Vec<(&'m str, Field)>>,
    client: Option<Client>,
    open: Vec<Open>,
    /// Each id read, and the line of its client.
    seen: HashMap<Box<str>, u64>,
    /// Where each record goes.
    each: &'s mut dyn FnMut(Counterparty),
    summary: ReadSummary,
    problems: Vec<Problem>,
    /// Reading ends: more clients than `max_records`.
    stop: bool,
}

impl<'m, 's> Reader<'m, 's> {
    fn new(
        rule: &'m FileRule,
        mapping: &'m Mapping,
        max_records: usize,
        each: &'s mut dyn FnMut(Counterparty),
    ) -> Reader<'m, 's> {
        let mut texts: HashMap<&str, Vec<Field>> = HashMap::new();
        let mut attributes: HashMap<&str, Vec<(&str, Field)>> = HashMap::new();
        for (field, path) in &mapping.fields {
            match &path.attribute {
                Some(name) => attributes
                    .entry(path.element.as_str())
                    .or_default()
                    .push((name.as_str(), *field)),
                None => texts.entry(path.element.as_str()).or_default().push(*field),
            }
        }
        Reader {
            rule,
            mapping,
            max_records,
            texts,
            attributes,
            client: None,
            open: Vec::new(),
            seen: HashMap::new(),
            each,
            summary: ReadSummary::default(),
            problems: Vec::new(),
            stop: false,
        }
    }

    fn full(&self) -> bool {
        self.stop || self.problems.len() >= MAX_PROBLEMS
    }

    fn run<R: Read>(&mut self, input: R) {
        let mut stream = match XmlStream::new(input, self.rule.encoding, LIMITS) {
            Ok(stream) => stream,
            Err(e) => return self.xml_problem(e),
        };
        let record = self.rule.record.as_str();
        while !self.full() {
            let event = match stream.next_event() {
                Ok(event) => event,
                Err(e) => return self.xml_problem(e),
            };
            match event {
                XmlEvent::Start => {
                    let path = stream.path();
                    if self.client.is_none() {
                        if path != record {
                            continue;
                        }
                        self.client = Some(Client {
                            line: stream.line(),
                            values: Default::default(),
                            phones: Vec::new(),
                            emails: Vec::new(),
                            broken: false,
                        });
                    }
                    let relative = &path[record.len()..];
                    if let Some(fields) = self.texts.get(relative) {
                        self.open.push(Open {
                            depth: stream.depth(),
                            fields: fields.clone(),
                            text: FieldText::new(),
                        });
                    }
                    if let Some(wanted) = self.attributes.get(relative) {
                        let found: Vec<(Field, String)> = wanted
                            .iter()
                            .filter_map(|(name, field)| {
                                stream
                                    .attributes()
                                    .find(|(n, _)| n == name)
                                    .map(|(_, v)| (*field, v.trim().to_owned()))
                            })
                            .collect();
                        let (line, path) = (stream.line(), stream.path().to_owned());
                        for (field, value) in found {
                            self.set(field, value, line, &path);
                        }
                    }
                }
                XmlEvent::Text => {
                    let depth = stream.depth();
                    let Some(open) = self.open.last_mut().filter(|o| o.depth == depth) else {
                        continue;
                    };
                    if open
                        .text
                        .push(stream.text(), LIMITS.max_field_bytes)
                        .is_err()
                    {
                        let field = open.fields[0];
                        self.open.pop();
                        let (line, path) = (stream.line(), stream.path().to_owned());
                        self.client_problem(
                            line,
                            path,
                            Some(field),
                            format!("longer than {} bytes", LIMITS.max_field_bytes),
                        );
                    }
                }
                XmlEvent::End => {
                    let depth = stream.depth();
                    if self.open.last().is_some_and(|o| o.depth == depth) {
                        if let Some(open) = self.open.pop() {
                            let value = open.text.finish();
                            let (line, path) = (stream.line(), stream.path().to_owned());
                            for field in open.fields {
                                self.set(field, value.clone(), line, &path);
                            }
                        }
                    }
                    if self.client.is_some() && stream.path() == record {
                        self.open.clear();
                        if let Some(client) = self.client.take() {
                            let path = stream.path().to_owned();
                            self.finish(client, &path);
                        }
                    }
                }
                XmlEvent::Eof => return,
            }
        }
    }

    fn xml_problem(&mut self, e: crate::xml::XmlError) {
        self.problems.push(Problem {
            line: e.line,
            path: e.path,
            field: None,
            message: e.kind.to_string(),
        });
    }

    /// A problem with the client being read; it will not become a record.
    fn client_problem(&mut self, line: u64, path: String, field: Option<Field>, message: String) {
        if let Some(client) = self.client.as_mut() {
            client.broken = true;
        }
        self.problems.push(Problem {
            line,
            path,
            field: field.map(Field::name),
            message,
        });
    }

    /// A value read for `field` of the client being read.
    fn set(&mut self, field: Field, value: String, line: u64, path: &str) {
        if value.is_empty() {
            return;
        }
        let transforms = self
            .mapping
            .transforms
            .get(&field)
            .map_or(&[][..], Vec::as_slice);
        let Some(client) = self.client.as_mut() else {
            return;
        };
        if field.is_list() {
            let list = if field == Field::Phones {
                &mut client.phones
            } else {
                &mut client.emails
            };
            if transforms.contains(&Transform::Split) {
                for piece in value.split(|c| self.mapping.separators.contains(c)) {
                    let piece = transform(piece.trim(), transforms);
                    if !piece.is_empty() {
                        list.push(piece);
                    }
                }
            } else {
                let value = transform(&value, transforms);
                if !value.is_empty() {
                    list.push(value);
                }
            }
            return;
        }
        let value = transform(&value, transforms);
        if value.is_empty() {
            return;
        }
        let slot = &mut client.values[field.slot()];
        if let Some((_, first)) = slot {
            let first = *first;
            self.client_problem(
                line,
                path.to_owned(),
                Some(field),
                format!("a second value (the first was on line {first}); this field takes one"),
            );
            return;
        }
        *slot = Some((value, line));
    }

    /// The client's end: a record, a removal, or problems.
    fn finish(&mut self, mut client: Client, path: &str) {
        let line = client.line;
        if client.broken {
            return;
        }
        let mut take = |field: Field| client.values[field.slot()].take().map(|(v, _)| v);
        let Some(raw_id) = take(Field::Id) else {
            return self.client_problem(
                line,
                path.to_owned(),
                Some(Field::Id),
                "a client without an id".into(),
            );
        };
        let id: Box<str> = format!("{ID_PREFIX}{raw_id}").into();
        if let Some(first) = self.seen.insert(id.clone(), line) {
            return self.client_problem(
                line,
                path.to_owned(),
                Some(Field::Id),
                format!("id {raw_id:?} is used twice: lines {first} and {line}"),
            );
        }
        self.summary.clients += 1;
        if self.summary.clients > self.max_records {
            self.problems.push(Problem {
                line,
                path: path.to_owned(),
                field: None,
                message: format!(
                    "more than servio.max_records = {} clients",
                    self.max_records
                ),
            });
            // The file is refused whatever follows: reading stops here.
            self.stop = true;
            return;
        }
        let deleted = take(Field::Deleted).is_some_and(|v| {
            self.mapping
                .deleted_values
                .contains(&v.trim().to_lowercase())
        });
        if deleted {
            if self.rule.mode == Mode::Delta {
                self.summary.removals.push(id);
            }
            return;
        }
        let Some(name) = take(Field::Name) else {
            return self.client_problem(
                line,
                path.to_owned(),
                Some(Field::Name),
                format!("client {raw_id:?} has no name"),
            );
        };
        let category = match take(Field::Category) {
            None => self.mapping.category_default,
            Some(text) => match self.category(&text) {
                Some(n) => Some(n),
                None => {
                    return self.client_problem(
                        line,
                        path.to_owned(),
                        Some(Field::Category),
                        format!("{text:?} is not in category.values, not a number, and category.default is not set"),
                    )
                }
            },
        };
        let boxed = |v: Option<String>| v.map(String::into_boxed_str);
        let mut record = Counterparty {
            id,
            name: name.into(),
            full_name: boxed(take(Field::FullName)),
            inn: boxed(take(Field::Inn)),
            kpp: boxed(take(Field::Kpp)),
            ogrn: boxed(take(Field::Ogrn)),
            address: boxed(take(Field::Address)),
            manager_phone: boxed(take(Field::ManagerPhone)),
            manager_name: boxed(take(Field::ManagerName)),
            category,
            phones: client
                .phones
                .drain(..)
                .map(String::into_boxed_str)
                .collect(),
            emails: client
                .emails
                .drain(..)
                .map(String::into_boxed_str)
                .collect(),
            ..Counterparty::default()
        };
        record.data_version = Some(content_hash(&record).into());
        if let Err(e) = record.validate() {
            return self.client_problem(
                line,
                path.to_owned(),
                None,
                format!("client {raw_id:?}: {e}"),
            );
        }
        // A file with a problem is refused whole: its later records go
        // nowhere (reading goes on only to list its problems).
        if self.problems.is_empty() {
            (self.each)(record);
        }
    }

    /// A category's number: its text in `category.values`, or the text
    /// itself when it is a number, or `category.default`.
    fn category(&self, text: &str) -> Option<i64> {
        let key = text.trim().to_lowercase();
        self.mapping
            .category_values
            .get(&key)
            .copied()
            .or_else(|| key.parse().ok())
            .or(self.mapping.category_default)
    }
}

/// Applies a field's transforms (trimming is always done).
fn transform(value: &str, transforms: &[Transform]) -> String {
    let mut value = value.trim().to_owned();
    for t in transforms {
        match t {
            Transform::Trim | Transform::Split => {}
            Transform::Digits => value.retain(|c| c.is_ascii_digit()),
            Transform::CollapseSpaces => {
                value = value.split_whitespace().collect::<Vec<_>>().join(" ");
            }
        }
    }
    value
}

/// The record's change marker: FNV-1a of its mapped fields, so a client
/// read again unchanged keeps its directory entry.
fn content_hash(record: &Counterparty) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut feed = |bytes: &[u8]| {
        for b in bytes.iter().chain(std::iter::once(&0xFF)) {
            hash ^= u64::from(*b);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    let category = record.category.map(|c| c.to_string());
    for value in [
        Some(&*record.name),
        record.full_name.as_deref(),
        record.inn.as_deref(),
        record.kpp.as_deref(),
        record.ogrn.as_deref(),
        record.address.as_deref(),
        record.manager_phone.as_deref(),
        record.manager_name.as_deref(),
        category.as_deref(),
    ] {
        feed(value.unwrap_or("\u{0}").as_bytes());
    }
    for list in [&record.phones, &record.emails] {
        feed(list.len().to_string().as_bytes());
        for v in list {
            feed(v.as_bytes());
        }
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests;
