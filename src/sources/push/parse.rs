//! The push API's body reader: a JSON array of counterparties in the
//! contract's shape, read whole or refused whole, every problem said with
//! where it is (line and column for broken JSON; index, id and field for a
//! record that does not fit the model).
//!
//! The array is split into raw elements by a serde visitor first, so that a
//! syntax error or too many records refuse the body before any record is
//! read; then each record is deserialized on its own, and one that fails is
//! diagnosed field by field against the model itself.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::directory::model::{FieldError, MAX_ID_LEN};
use crate::directory::Counterparty;

/// Most records one push may carry.
pub const MAX_RECORDS: usize = 10_000;

/// Why a push body was refused. Nothing of a refused body is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Not UTF-8, not JSON, or not an array; `line` and `column` (counted
    /// from 1, columns in bytes, as serde_json counts) say where.
    #[error(
        "the body is not a JSON array of counterparties: {problem} at line {line}, column {column}"
    )]
    Malformed {
        problem: String,
        line: usize,
        column: usize,
    },
    #[error("more than {limit} records in one push: send at most {limit} records per request")]
    TooMany { limit: usize },
    /// One record does not fit the model.
    #[error(transparent)]
    Record(#[from] RecordError),
}

/// A record that does not fit the model or fails its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    /// Its position in the array, from 0.
    pub index: usize,
    /// The line of the body where it starts, from 1 (0: not from a body).
    pub line: usize,
    /// Its id, if it has a readable one (cut to [`MAX_ID_LEN`] bytes).
    pub id: Option<String>,
    /// The field at fault, when one is.
    pub field: Option<String>,
    pub problem: String,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record {}", self.index)?;
        match (&self.id, self.line) {
            (Some(id), 0) => write!(f, " (id {id:?})")?,
            (Some(id), line) => write!(f, " (id {id:?}, line {line})")?,
            (None, 0) => {}
            (None, line) => write!(f, " (line {line})")?,
        }
        match &self.field {
            // serde's own messages name the field already ("missing field `name`").
            Some(field) if !self.problem.contains(&format!("`{field}`")) => {
                write!(f, ": field `{field}`: {}", self.problem)
            }
            _ => write!(f, ": {}", self.problem),
        }
    }
}

impl std::error::Error for RecordError {}

impl RecordError {
    /// A record that reads but fails [`Counterparty::validate`]; `line` is
    /// 0 when the record does not come from a body.
    pub(super) fn failed_check(
        index: usize,
        line: usize,
        record: &Counterparty,
        e: FieldError,
    ) -> RecordError {
        RecordError {
            index,
            line,
            id: Some(shown_id(&record.id)),
            field: Some(e.field.to_owned()),
            problem: e.problem,
        }
    }
}

/// Reads a push body: a JSON array of counterparties (the contract's shape,
/// unknown fields refused), each checked by [`Counterparty::validate`].
/// Records come back in the body's order, repeated ids included.
///
/// The array is split into its records first (a syntax error anywhere, or
/// more than [`MAX_RECORDS`] records, refuses the body before any record is
/// looked at), then each record is read on its own, so a bad record is
/// named by its index, its id and the field at fault. A leading byte order
/// mark is skipped (1C writes one unless told not to).
pub fn parse_batch(body: &[u8]) -> Result<Vec<Counterparty>, BatchError> {
    let text = match std::str::from_utf8(body) {
        Ok(text) => text,
        Err(e) => {
            let before = &body[..e.valid_up_to()];
            let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
            let column = 1 + before.iter().rev().take_while(|&&b| b != b'\n').count();
            return Err(BatchError::Malformed {
                problem: "not valid UTF-8".into(),
                line,
                column,
            });
        }
    };
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let raws = split(text)?;
    let mut records = Vec::with_capacity(raws.len());
    // Where the last record started, and its line: lines are counted once.
    let (mut counted, mut line) = (0usize, 1usize);
    for (index, raw) in raws.into_iter().enumerate() {
        let start = (raw.get().as_ptr() as usize)
            .checked_sub(text.as_ptr() as usize)
            .map_or(counted, |o| o.clamp(counted, text.len()));
        line += text.as_bytes()[counted..start]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        counted = start;
        records.push(parse_record(index, line, raw)?);
    }
    Ok(records)
}

/// The array's elements as slices of `text`; no tree is built.
fn split(text: &str) -> Result<Vec<&RawValue>, BatchError> {
    let mut too_many = false;
    let mut de = serde_json::Deserializer::from_str(text);
    let parsed = Elements {
        too_many: &mut too_many,
    }
    .deserialize(&mut de)
    .and_then(|raws| de.end().map(|()| raws));
    match parsed {
        Ok(raws) => Ok(raws),
        Err(_) if too_many => Err(BatchError::TooMany { limit: MAX_RECORDS }),
        Err(e) => Err(BatchError::Malformed {
            problem: without_position(&e),
            line: e.line(),
            column: e.column(),
        }),
    }
}

/// Reads a JSON array into borrowed raw elements, refusing more than
/// [`MAX_RECORDS`] of them as soon as the next one starts.
struct Elements<'f> {
    too_many: &'f mut bool,
}

impl<'de> DeserializeSeed<'de> for Elements<'_> {
    type Value = Vec<&'de RawValue>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Elements<'_> {
    type Value = Vec<&'de RawValue>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON array of counterparties")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut raws = Vec::new();
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            if raws.len() == MAX_RECORDS {
                *self.too_many = true;
                return Err(de::Error::custom("too many records"));
            }
            raws.push(raw);
        }
        Ok(raws)
    }
}

fn parse_record(index: usize, line: usize, raw: &RawValue) -> Result<Counterparty, RecordError> {
    match serde_json::from_str::<Counterparty>(raw.get()) {
        Ok(record) => match record.validate() {
            Ok(()) => Ok(record),
            Err(e) => Err(RecordError::failed_check(index, line, &record, e)),
        },
        Err(e) => Err(diagnose(index, line, raw, &e)),
    }
}

/// [`diagnose`] for one record's text outside a push body (a JSON Lines
/// line): its readable id, the field at fault and why. Text that is not
/// JSON keeps serde's own message.
pub(crate) fn diagnose_text(text: &str, error: &serde_json::Error) -> RecordError {
    match serde_json::from_str::<&RawValue>(text) {
        Ok(raw) => diagnose(0, 0, raw, error),
        Err(_) => RecordError {
            index: 0,
            line: 0,
            id: None,
            field: None,
            problem: error.to_string(),
        },
    }
}

/// Finds what is wrong with a record that does not deserialize: serde names
/// a missing or unknown field, but not the field whose value has the wrong
/// type. Each field is tried on its own, beside a valid `id` and `name`,
/// against the model itself (no second list of the fields' types here).
fn diagnose(index: usize, line: usize, raw: &RawValue, error: &serde_json::Error) -> RecordError {
    let Ok(Fields(fields)) = serde_json::from_str::<Fields<'_>>(raw.get()) else {
        return RecordError {
            index,
            line,
            id: None,
            field: None,
            problem: "a record must be a JSON object".into(),
        };
    };
    let id = fields
        .iter()
        .rev()
        .find(|(key, _)| key == "id")
        .and_then(|(_, value)| serde_json::from_str::<String>(value.get()).ok())
        .map(|id| shown_id(&id));
    let fault = |field: String, problem: String| RecordError {
        index,
        line,
        id: id.clone(),
        field: Some(field),
        problem,
    };
    for (key, value) in &fields {
        if let Err(e) = probe(key, value) {
            return fault(key.clone(), without_position(&e));
        }
    }
    // Every field fits on its own: one is missing or given twice, and
    // serde's message names it between backticks.
    let problem = without_position(error);
    let named = problem
        .split('`')
        .nth(1)
        .filter(|_| problem.starts_with("missing field") || problem.starts_with("duplicate field"))
        .map(str::to_owned);
    RecordError {
        index,
        line,
        id: id.clone(),
        field: named,
        problem,
    }
}

/// Deserializes `{"id":"x","name":"x", key: value}` (the key's own value
/// replacing `id` or `name` when it is one of them).
fn probe(key: &str, value: &RawValue) -> Result<(), serde_json::Error> {
    let mut text = String::with_capacity(value.get().len() + key.len() + 32);
    text.push('{');
    if key != "id" {
        text.push_str(r#""id":"x","#);
    }
    if key != "name" {
        text.push_str(r#""name":"x","#);
    }
    text.push_str(&serde_json::to_string(key)?);
    text.push(':');
    text.push_str(value.get());
    text.push('}');
    serde_json::from_str::<Counterparty>(&text).map(drop)
}

/// A JSON object's members in the order written, values left unparsed.
struct Fields<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = Fields<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::new();
                while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
                    fields.push(member);
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

/// serde_json's message without its " at line L column C" (the position
/// is given separately, or is relative to one record and would mislead).
fn without_position(e: &serde_json::Error) -> String {
    let mut message = e.to_string();
    if e.line() > 0 {
        if let Some(at) = message.rfind(" at line ") {
            message.truncate(at);
        }
    }
    message
}

/// An id as an error message may repeat it: at most [`MAX_ID_LEN`] bytes.
pub(super) fn shown_id(id: &str) -> String {
    if id.len() <= MAX_ID_LEN {
        return id.to_owned();
    }
    let mut end = MAX_ID_LEN;
    while !id.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &id[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::push::refuse_repeated_ids;

    fn record_error(body: &str) -> RecordError {
        match parse_batch(body.as_bytes()) {
            Err(BatchError::Record(e)) => e,
            other => panic!("expected a record error, got {other:?}"),
        }
    }

    #[test]
    fn a_batch_reads_in_order_with_a_byte_order_mark_and_repeated_ids() {
        let body = "\u{feff}[\n{\"id\":\"1\",\"name\":\"A\",\"phones\":[\"+7 916 555-55-55\"]},\n{\"id\":\"2\",\"name\":\"B\"},{\"id\":\"1\",\"name\":\"A2\"}\n]";
        let records = parse_batch(body.as_bytes()).expect("valid");
        let names: Vec<&str> = records.iter().map(|r| &*r.name).collect();
        assert_eq!(names, ["A", "B", "A2"]);
        let refused = refuse_repeated_ids(&records).expect_err("one id twice");
        assert_eq!((refused.index, refused.id.as_deref()), (2, Some("1")));
        assert!(
            refused
                .to_string()
                .contains("records 0 and 2 have the same id"),
            "{refused}"
        );
        assert_eq!(parse_batch(b" [ ] ").expect("empty array"), vec![]);
    }

    #[test]
    fn broken_json_is_refused_with_its_line_and_column() {
        let err =
            parse_batch(b"[\n{\"id\":\"1\",\"name\":\"A\"},\n{\"id\":\"2\" \"name\":\"B\"}\n]")
                .expect_err("broken");
        match err {
            BatchError::Malformed { line, column, .. } => assert_eq!((line, column), (3, 11)),
            other => panic!("{other:?}"),
        }
        for body in [
            &b"{\"id\":\"1\",\"name\":\"A\"}"[..],
            b"",
            b"[{}] x",
            b"[\"\xff\"]",
        ] {
            assert!(
                matches!(parse_batch(body), Err(BatchError::Malformed { .. })),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        let msg = parse_batch(b"{}").expect_err("object").to_string();
        assert!(msg.contains("expected a JSON array"), "{msg}");
    }

    #[test]
    fn more_records_than_the_limit_are_refused_before_any_is_read() {
        let body = format!("[{}{{}}]", "{},".repeat(MAX_RECORDS));
        assert_eq!(
            parse_batch(body.as_bytes()),
            Err(BatchError::TooMany { limit: MAX_RECORDS })
        );
        let at_limit = format!(
            "[{}{{\"id\":\"x\",\"name\":\"y\"}}]",
            "{\"id\":\"x\",\"name\":\"y\"},".repeat(MAX_RECORDS - 1)
        );
        assert_eq!(
            parse_batch(at_limit.as_bytes())
                .expect("at the limit")
                .len(),
            MAX_RECORDS
        );
    }

    #[test]
    fn a_bad_record_is_named_by_index_id_and_field() {
        let e = record_error("[{\"id\":\"a\",\"name\":\"A\"},\n{\"id\":\"b\",\"phones\":[]}]");
        assert_eq!(
            (e.index, e.id.as_deref(), e.field.as_deref(), e.line),
            (1, Some("b"), Some("name"), 2)
        );
        assert!(
            e.to_string()
                .starts_with("record 1 (id \"b\", line 2): missing field `name`"),
            "{e}"
        );

        let phones: Vec<String> = (0..33).map(|i| format!("\"8916000{i:04}\"")).collect();
        let e = record_error(&format!(
            "[{{\"id\":\"c\",\"name\":\"C\",\"phones\":[{}]}}]",
            phones.join(",")
        ));
        assert_eq!((e.index, e.field.as_deref()), (0, Some("phones")));
        assert!(e.problem.contains("32"), "{e}");

        let e = record_error(r#"[{"id":"d","name":"D","category":"VIP"}]"#);
        assert_eq!(e.field.as_deref(), Some("category"));
        let e = record_error(r#"[{"name":"E","phones":"89160000000","id":"e"}]"#);
        assert_eq!(
            (e.field.as_deref(), e.id.as_deref()),
            (Some("phones"), Some("e"))
        );
        let e = record_error(r#"[{"id":"f","name":"F","phone":["1"]}]"#);
        assert_eq!(e.field.as_deref(), Some("phone"));
        assert!(e.problem.contains("unknown field"), "{e}");
        let e = record_error(r#"[{"id":7,"name":"G"}]"#);
        assert_eq!((e.field.as_deref(), e.id), (Some("id"), None));
        let e = record_error(r#"[{"id":"h","name":"H","name":"H2"}]"#);
        assert_eq!(e.field.as_deref(), Some("name"));
        let e = record_error(r#"[{"id":"i","name":" "}]"#);
        assert_eq!(e.field.as_deref(), Some("name"));
        let e = record_error(r#"[{"id":"j","name":"J"}, 5]"#);
        assert_eq!((e.index, e.field), (1, None));
        let long = "я".repeat(100);
        let e = record_error(&format!(r#"[{{"id":"{long}","name":"K"}}]"#));
        assert_eq!(e.field.as_deref(), Some("id"));
        assert!(e
            .id
            .as_deref()
            .is_some_and(|id| id.len() <= MAX_ID_LEN + '…'.len_utf8()));
    }
}
