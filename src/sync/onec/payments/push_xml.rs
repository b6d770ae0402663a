//! The XML form of `POST /api/v1/exchange/payments`' body, for a 1C
//! without `ЧтениеJSON`/`ЗаписьJSON` (8.2, or 8.3 in an older compatibility
//! mode): the JSON array's shape as elements, read whole or refused whole
//! with the same answers.
//!
//! ```xml
//! <?xml version="1.0" encoding="UTF-8"?>
//! <payments>
//!   <payment>
//!     <ref>6f1a0d2e-…</ref><version>AAAAAQAAAAA=</version><number>0000-000123</number>
//!     <date>2026-12-05T10:30:00+03:00</date><amount>15000.50</amount>
//!     <counterparty>…</counterparty><posted>true</posted>
//!     <rows><row><amount>15000.50</amount><invoice>…</invoice><contract>…</contract></row></rows>
//!   </payment>
//! </payments>
//! ```
//!
//! Each JSON field is a child element of `<payment>` holding its text
//! (`posted`: `true` or `false`); an empty or missing element is a JSON
//! `null`; `<rows>` holds `<row>` elements, each with the row's fields.
//! Attributes are not read. Read with `xml::XmlStream` (no DTD, depth 5,
//! UTF-8 or windows-1251 as declared), then checked by [`push`]'s rules
//! (the same 422s, naming the payment's index from 0 and the field).

use serde_json::{Map, Value};

use crate::xml::{is_xml_whitespace, EncodingChoice, Limits, XmlError, XmlEvent, XmlStream};

use super::push::{self, cut, PushBodyError, ITEM_FIELDS, MAX_ITEMS, ROW_FIELDS};
use super::Payment;

/// Bytes of one field's text read before it is refused (push's own bound,
/// 256 after trimming, is checked after).
const MAX_FIELD_BYTES: usize = 4 * 1024;

/// `<payments>`, `<payment>`, `<rows>`, `<row>`, a row's field.
const MAX_DEPTH: usize = 5;

/// Reads an XML push body; `date_ok` as [`push::parse`]'s.
pub fn parse(
    body: &[u8],
    date_ok: impl Fn(&str) -> Result<(), String>,
) -> Result<Vec<Payment>, PushBodyError> {
    let items = read(body)?;
    // The same checks as the JSON form's, on the same shape: every 422
    // says the same thing whichever form the body came in.
    let json = Value::Array(items).to_string();
    push::parse(json.as_bytes(), date_ok)
}

/// Where the reader is.
enum Open {
    /// A field of the payment (`rows[i].` prefix for a row's), its text so far.
    Field { name: String, text: String },
    /// Inside `<rows>`: the rows read.
    Rows(Vec<Value>),
    /// Inside `<row>`: its fields.
    Row(Map<String, Value>),
}

/// The body's payments as the JSON form's objects, unchecked but for the
/// structure: which elements are where, each field once.
fn read(body: &[u8]) -> Result<Vec<Value>, PushBodyError> {
    let limits = Limits {
        max_depth: MAX_DEPTH,
        // The body is at most 1 MiB in memory, and every element that is
        // not a known field is refused as it starts: no bound needed.
        max_elements: usize::MAX,
        max_field_bytes: MAX_FIELD_BYTES,
        max_run_bytes: 256 * 1024,
        max_document_bytes: body.len() as u64,
    };
    let mut stream =
        XmlStream::new(body, EncodingChoice::Auto, limits).map_err(|e| malformed(&e, e.line, 1))?;
    let mut items: Vec<Value> = Vec::new();
    let mut payment: Option<Map<String, Value>> = None;
    let mut open: Vec<Open> = Vec::new();
    // Elements open before the event (the stream's depth takes an ended
    // element out only at the next call).
    let mut depth = 0usize;
    loop {
        let event = stream
            .next_event()
            .map_err(|e| malformed(&e, stream.line(), stream.column()))?;
        let index = items.len();
        let item = |field: &str, problem: String| PushBodyError::Item {
            index,
            field: field.to_owned(),
            problem,
        };
        match event {
            XmlEvent::Eof => break,
            XmlEvent::Start => {
                depth += 1;
                let name = stream.name().to_owned();
                match depth {
                    1 if name == "payments" => {}
                    1 => {
                        return Err(structure(
                            &stream,
                            format!("the root element is <{}>, not <payments>", cut(&name)),
                        ))
                    }
                    2 if name == "payment" => {
                        if items.len() >= MAX_ITEMS {
                            return Err(PushBodyError::TooMany { limit: MAX_ITEMS });
                        }
                        payment = Some(Map::new());
                    }
                    2 => {
                        return Err(item(
                            &cut(&name),
                            "is not a <payment> element: <payments> holds <payment> elements only"
                                .into(),
                        ))
                    }
                    3 => {
                        let seen = payment.as_ref().is_some_and(|p| p.contains_key(&name));
                        if !ITEM_FIELDS.contains(&name.as_str()) {
                            return Err(item(
                                &cut(&name),
                                format!("is not a field (known: {})", ITEM_FIELDS.join(", ")),
                            ));
                        }
                        if seen {
                            return Err(item(&name, "appears twice".into()));
                        }
                        open.push(if name == "rows" {
                            Open::Rows(Vec::new())
                        } else {
                            Open::Field {
                                name,
                                text: String::new(),
                            }
                        });
                    }
                    4 => match open.last() {
                        Some(Open::Rows(_)) if name == "row" => open.push(Open::Row(Map::new())),
                        Some(Open::Rows(rows)) => {
                            return Err(item(
                                &format!("rows[{}]", rows.len()),
                                format!(
                                    "is <{}>, not <row>: <rows> holds <row> elements only",
                                    cut(&name)
                                ),
                            ))
                        }
                        Some(Open::Field { name: field, .. }) => {
                            return Err(item(
                                field,
                                format!("holds <{}>: a field holds text only", cut(&name)),
                            ))
                        }
                        _ => return Err(structure(&stream, "unexpected element".into())),
                    },
                    5 => {
                        let (row_index, seen) = match open.as_slice() {
                            [.., Open::Rows(rows), Open::Row(row)] => {
                                (rows.len(), row.contains_key(&name))
                            }
                            [.., Open::Field { name: field, .. }] => {
                                return Err(item(
                                    field,
                                    format!("holds <{}>: a field holds text only", cut(&name)),
                                ))
                            }
                            _ => return Err(structure(&stream, "unexpected element".into())),
                        };
                        let at = format!("rows[{row_index}].{}", cut(&name));
                        if !ROW_FIELDS.contains(&name.as_str()) {
                            return Err(item(
                                &at,
                                format!("is not a field (known: {})", ROW_FIELDS.join(", ")),
                            ));
                        }
                        if seen {
                            return Err(item(&at, "appears twice".into()));
                        }
                        open.push(Open::Field {
                            name: at,
                            text: String::new(),
                        });
                    }
                    // The stream refuses a sixth level before this.
                    _ => return Err(structure(&stream, "nested too deep".into())),
                }
            }
            XmlEvent::Text => {
                let piece = stream.text();
                match open.last_mut() {
                    Some(Open::Field { name, text }) => {
                        if text.len() + piece.len() > MAX_FIELD_BYTES {
                            return Err(item(
                                name,
                                format!("is longer than {MAX_FIELD_BYTES} bytes"),
                            ));
                        }
                        text.push_str(piece);
                    }
                    _ if piece.chars().all(is_xml_whitespace) => {}
                    _ => {
                        return Err(structure(
                            &stream,
                            "text where elements are expected (a field's text goes in its element)"
                                .into(),
                        ))
                    }
                }
            }
            XmlEvent::End => {
                depth = depth.saturating_sub(1);
                match depth {
                    // `</payment>`
                    1 => {
                        if let Some(p) = payment.take() {
                            items.push(Value::Object(p));
                        }
                    }
                    // `</payments>`
                    0 => {}
                    _ => match open.pop() {
                        Some(Open::Field { name, text }) => {
                            let value = field_value(&name, text);
                            match open.last_mut() {
                                Some(Open::Row(row)) => {
                                    let field = name.rsplit('.').next().unwrap_or(&name);
                                    row.insert(field.to_owned(), value);
                                }
                                _ => {
                                    if let Some(p) = payment.as_mut() {
                                        p.insert(name, value);
                                    }
                                }
                            }
                        }
                        Some(Open::Row(row)) => {
                            if let Some(Open::Rows(rows)) = open.last_mut() {
                                rows.push(Value::Object(row));
                            }
                        }
                        Some(Open::Rows(rows)) => {
                            if let Some(p) = payment.as_mut() {
                                p.insert("rows".to_owned(), Value::Array(rows));
                            }
                        }
                        None => {}
                    },
                }
            }
        }
    }
    Ok(items)
}

/// A field's text as the JSON form's value: `posted`'s `true`/`false` a
/// boolean, an empty element `null`, anything else a string (push's
/// checks say what is wrong with it).
fn field_value(name: &str, text: String) -> Value {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Value::Null;
    }
    if name == "posted" {
        match trimmed {
            "true" => return Value::Bool(true),
            "false" => return Value::Bool(false),
            _ => {}
        }
    }
    Value::String(text)
}

fn malformed(e: &XmlError, line: u64, column: u64) -> PushBodyError {
    let problem = if e.path.is_empty() {
        e.kind.to_string()
    } else {
        format!("{} (in {})", e.kind, e.path)
    };
    PushBodyError::MalformedXml {
        problem,
        line: usize::try_from(line).unwrap_or(usize::MAX),
        column: usize::try_from(column).unwrap_or(usize::MAX),
    }
}

/// A document well formed but not shaped as a push: where the element
/// that breaks the shape starts.
fn structure<R: std::io::Read>(stream: &XmlStream<R>, problem: String) -> PushBodyError {
    PushBodyError::MalformedXml {
        problem: format!("{problem} (at {})", stream.path()),
        line: usize::try_from(stream.line()).unwrap_or(usize::MAX),
        column: usize::try_from(stream.column()).unwrap_or(usize::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any_date(_: &str) -> Result<(), String> {
        Ok(())
    }

    const OK: &str = "<payment><ref>6F1A0D2E-0000-4000-8000-000000000001</ref><version>1</version><date>d</date><amount>150.5</amount><posted>true</posted></payment>";

    fn doc(payments: &str) -> String {
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<payments>{payments}</payments>")
    }

    fn field_of(body: &str) -> (usize, String) {
        match parse(body.as_bytes(), any_date) {
            Err(PushBodyError::Item { index, field, .. }) => (index, field),
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn a_push_reads_as_its_json_form() {
        let body = doc(
            "\n <payment>\n  <ref>6F1A0D2E-0000-4000-8000-000000000001</ref>\n  <version>1</version>\n  <number>12</number>\n  <date>2026-12-05T10:30:00+03:00</date>\n  <amount>150.5</amount>\n  <counterparty/>\n  <posted>false</posted>\n  <rows><row><amount>150.5</amount><invoice>inv &amp; 1</invoice></row></rows>\n </payment>\n",
        );
        let p = parse(body.as_bytes(), any_date).expect("body");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].ref_key, "6f1a0d2e-0000-4000-8000-000000000001");
        assert_eq!(p[0].amount.to_string(), "150.50");
        assert_eq!(p[0].counterparty, None);
        assert!(!p[0].posted);
        assert_eq!(p[0].rows[0].invoice.as_deref(), Some("inv & 1"));
        assert_eq!(parse(doc("").as_bytes(), any_date), Ok(Vec::new()));
        let cp1251 = encoding_rs::WINDOWS_1251
            .encode(&format!(
                "<?xml version=\"1.0\" encoding=\"windows-1251\"?><payments>{}</payments>",
                OK.replace("<version>1", "<number>П-1</number><version>1")
            ))
            .0
            .into_owned();
        let p = parse(&cp1251, any_date).expect("windows-1251");
        assert_eq!(p[0].number, "П-1");
    }

    #[test]
    fn each_problem_is_named_by_index_and_field() {
        let second = |patch: &str| doc(&format!("{OK}{}", OK.replace("<posted>", patch)));
        assert_eq!(field_of(&second("<x>1</x><posted>")), (1, "x".to_owned()));
        assert_eq!(
            field_of(&second("<version>2</version><posted>")),
            (1, "version".to_owned())
        );
        assert_eq!(
            field_of(&doc(&OK.replace("150.5", "1,5"))),
            (0, "amount".to_owned())
        );
        assert_eq!(
            field_of(&doc(&OK.replace("<posted>true", "<posted>yes"))),
            (0, "posted".to_owned())
        );
        assert_eq!(
            field_of(&doc(&OK.replace("<posted>true</posted>", ""))),
            (0, "posted".to_owned())
        );
        assert_eq!(
            field_of(&doc(&OK.replace("6F1A0D2E-0000", "6F1A0D2E0000"))),
            (0, "ref".to_owned())
        );
        assert_eq!(
            field_of(&second(
                "<rows><row><amount>x</amount></row></rows><posted>"
            )),
            (1, "rows[0].amount".to_owned())
        );
        assert_eq!(
            field_of(&second(
                "<rows><row><amount>1</amount><y/></row></rows><posted>"
            )),
            (1, "rows[0].y".to_owned())
        );
        assert_eq!(
            field_of(&second("<rows><line/></rows><posted>")),
            (1, "rows[0]".to_owned())
        );
        assert_eq!(
            field_of(&doc(&OK.replace("<amount>150.5", "<amount><v>1</v>150.5"))),
            (0, "amount".to_owned())
        );
        assert_eq!(
            field_of(&doc(&format!("{OK}<pay/>"))),
            (1, "pay".to_owned())
        );
        let long = "9".repeat(MAX_FIELD_BYTES + 1);
        assert_eq!(
            field_of(&doc(&OK.replace("<version>1", &format!("<version>{long}")))),
            (0, "version".to_owned())
        );
        let bad_date = parse(doc(OK).as_bytes(), |_| Err("no".into()));
        assert!(matches!(bad_date, Err(PushBodyError::Item { ref field, .. }) if field == "date"));
    }

    #[test]
    fn a_malformed_document_is_refused_with_line_and_column() {
        let at = |body: &str| match parse(body.as_bytes(), any_date) {
            Err(PushBodyError::MalformedXml { line, column, .. }) => (line, column),
            other => panic!("{body}: {other:?}"),
        };
        assert_eq!(at("<payments>\n  <payment></paymnt>\n</payments>"), (2, 12));
        assert_eq!(at("<payments>\n<payment>"), (2, 10));
        assert_eq!(at("<pays/>"), (1, 1));
        assert_eq!(at("<payments>\n  text\n</payments>"), (1, 11));
        let doctype = "<!DOCTYPE payments [<!ENTITY x \"y\">]><payments/>";
        assert_eq!(at(doctype), (1, 1));
        let deep = doc(&OK.replace(
            "<amount>150.5",
            "<rows><row><amount><v><w/></v></amount></row></rows><amount>150.5",
        ));
        assert!(matches!(
            parse(deep.as_bytes(), any_date),
            Err(PushBodyError::MalformedXml { .. } | PushBodyError::Item { .. })
        ));
        let many = doc(&OK.repeat(MAX_ITEMS + 1));
        assert_eq!(
            parse(many.as_bytes(), any_date),
            Err(PushBodyError::TooMany { limit: MAX_ITEMS })
        );
        assert_eq!(
            parse(doc(&OK.repeat(MAX_ITEMS)).as_bytes(), any_date).map(|p| p.len()),
            Ok(MAX_ITEMS)
        );
    }
}
