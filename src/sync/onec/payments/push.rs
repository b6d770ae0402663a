//! The body of `POST /api/v1/exchange/payments`: a JSON array of payments
//! in the events' shape plus `posted` (`false`: the payment was reversed),
//! read whole or refused whole, every problem said with where it is (line
//! and column for broken JSON; index and field for an item that does not
//! fit).
//!
//! ```json
//! [{"ref": "6f1a0d2e-…", "version": "AAAAAQAAAAA=", "number": "0000-000123",
//!   "date": "2026-12-05T10:30:00+03:00", "amount": "15000.00",
//!   "counterparty": "…", "posted": true,
//!   "rows": [{"amount": "15000.00", "invoice": "…", "contract": "…"}]}]
//! ```
//!
//! Amounts are decimal strings (a JSON number is taken too, read from its
//! digits); `ref` is a GUID; `date` RFC 3339 with its offset (checked by the
//! caller's reader, the HTTP layer's); unknown fields are refused. The
//! XML form ([`super::push_xml`]) is read into this shape and checked here.

use std::collections::HashMap;

use serde_json::value::RawValue;

use super::{is_guid, Amount, Payment, PaymentRow};

/// Most payments one push may carry.
pub const MAX_ITEMS: usize = 1_000;
/// Longest `version`, `number`, `counterparty`, `invoice` or `contract`.
const MAX_TEXT: usize = 256;

/// Why a push body was refused; nothing of it is committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushBodyError {
    #[error("the body is not a JSON array of payments: {problem} at line {line}, column {column}")]
    Malformed {
        problem: String,
        line: usize,
        column: usize,
    },
    #[error(
        "the body is not an XML <payments> document: {problem} at line {line}, column {column}"
    )]
    MalformedXml {
        problem: String,
        line: usize,
        column: usize,
    },
    #[error("more than {limit} payments in one push: send at most {limit} per request")]
    TooMany { limit: usize },
    #[error("payment {index}: field `{field}`: {problem}")]
    Item {
        index: usize,
        field: String,
        problem: String,
    },
}

/// Reads a push body; `date_ok` checks a `date` (RFC 3339 with an offset),
/// giving the problem when it is not one.
pub fn parse(
    body: &[u8],
    date_ok: impl Fn(&str) -> Result<(), String>,
) -> Result<Vec<Payment>, PushBodyError> {
    let body = body.strip_prefix(b"\xef\xbb\xbf").unwrap_or(body);
    let items: Vec<&RawValue> =
        serde_json::from_slice(body).map_err(|e| PushBodyError::Malformed {
            problem: problem_of(&e),
            line: e.line(),
            column: e.column(),
        })?;
    if items.len() > MAX_ITEMS {
        return Err(PushBodyError::TooMany { limit: MAX_ITEMS });
    }
    items
        .iter()
        .enumerate()
        .map(|(index, raw)| item(index, raw.get(), &date_ok))
        .collect()
}

/// serde_json's message without its " at line L column C" (said apart).
fn problem_of(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

type Props<'a> = HashMap<String, &'a RawValue>;

pub(super) const ITEM_FIELDS: &[&str] = &[
    "ref",
    "version",
    "number",
    "date",
    "amount",
    "counterparty",
    "rows",
    "posted",
];
pub(super) const ROW_FIELDS: &[&str] = &["amount", "invoice", "contract"];

fn item(
    index: usize,
    raw: &str,
    date_ok: &impl Fn(&str) -> Result<(), String>,
) -> Result<Payment, PushBodyError> {
    let fail = |field: &str, problem: String| PushBodyError::Item {
        index,
        field: field.to_owned(),
        problem,
    };
    let props = object(raw, ITEM_FIELDS).map_err(|(field, problem)| fail(&field, problem))?;
    let ref_key = required_text(&props, "ref").map_err(|p| fail("ref", p))?;
    if !is_guid(&ref_key) {
        return Err(fail(
            "ref",
            format!(
                "{:?} is not a GUID (1C's Ref_Key: 8-4-4-4-12 hex digits)",
                cut(&ref_key)
            ),
        ));
    }
    let version = required_text(&props, "version").map_err(|p| fail("version", p))?;
    let number = optional_text(&props, "number")
        .map_err(|p| fail("number", p))?
        .unwrap_or_default();
    let date = required_text(&props, "date").map_err(|p| fail("date", p))?;
    date_ok(&date).map_err(|p| fail("date", p))?;
    let amount = required_amount(&props, "amount").map_err(|p| fail("amount", p))?;
    let counterparty =
        optional_text(&props, "counterparty").map_err(|p| fail("counterparty", p))?;
    let posted = match props.get("posted").map(|r| r.get()) {
        Some("true") => true,
        Some("false") => false,
        None => {
            return Err(fail(
                "posted",
                "is missing (true: posted; false: reversed)".into(),
            ))
        }
        Some(_) => return Err(fail("posted", "is not true or false".into())),
    };
    let rows = match props.get("rows") {
        None => Vec::new(),
        Some(raw) if raw.get() == "null" => Vec::new(),
        Some(raw) => {
            let rows: Vec<&RawValue> = serde_json::from_str(raw.get())
                .map_err(|_| fail("rows", "is not an array of rows".into()))?;
            rows.iter()
                .enumerate()
                .map(|(i, row)| {
                    let at = |f: &str| format!("rows[{i}].{f}");
                    let props = object(row.get(), ROW_FIELDS)
                        .map_err(|(field, problem)| fail(&at(&field), problem))?;
                    Ok(PaymentRow {
                        amount: required_amount(&props, "amount")
                            .map_err(|p| fail(&at("amount"), p))?,
                        invoice: optional_text(&props, "invoice")
                            .map_err(|p| fail(&at("invoice"), p))?,
                        contract: optional_text(&props, "contract")
                            .map_err(|p| fail(&at("contract"), p))?,
                    })
                })
                .collect::<Result<_, _>>()?
        }
    };
    Ok(Payment {
        ref_key: ref_key.to_ascii_lowercase(),
        version,
        number,
        date,
        amount,
        counterparty,
        rows,
        posted,
    })
}

/// An object with only `known` fields; the field at fault and why otherwise.
fn object<'a>(raw: &'a str, known: &[&str]) -> Result<Props<'a>, (String, String)> {
    let props: Props<'a> = serde_json::from_str(raw)
        .map_err(|_| (String::new(), "is not a JSON object".to_owned()))?;
    if let Some(unknown) = props.keys().find(|k| !known.contains(&k.as_str())) {
        return Err((
            cut(unknown),
            format!("is not a field (known: {})", known.join(", ")),
        ));
    }
    Ok(props)
}

fn optional_text(props: &Props<'_>, name: &str) -> Result<Option<String>, String> {
    match props.get(name) {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => {
            let text: String =
                serde_json::from_str(raw.get()).map_err(|_| "is not a string".to_owned())?;
            let text = text.trim().to_owned();
            if text.len() > MAX_TEXT {
                return Err(format!("is longer than {MAX_TEXT} bytes"));
            }
            Ok((!text.is_empty()).then_some(text))
        }
    }
}

fn required_text(props: &Props<'_>, name: &str) -> Result<String, String> {
    optional_text(props, name)?.ok_or_else(|| "is missing or empty".to_owned())
}

fn required_amount(props: &Props<'_>, name: &str) -> Result<Amount, String> {
    match props.get(name) {
        None => Err("is missing".into()),
        Some(raw) => Amount::from_json(raw.get()),
    }
}

/// A name or key the client sent, cut to 64 characters for a message
/// (the JSON and the XML form alike).
pub(super) fn cut(text: &str) -> String {
    text.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any_date(_: &str) -> Result<(), String> {
        Ok(())
    }

    #[test]
    fn a_push_reads_in_the_events_shape() {
        let body = r#"[{"ref":"6F1A0D2E-0000-4000-8000-000000000001","version":"1","number":"12",
            "date":"2026-12-05T10:30:00+03:00","amount":"150.5","posted":false,
            "rows":[{"amount":150.5,"invoice":"inv-1"}]}]"#;
        let p = parse(body.as_bytes(), any_date).expect("body");
        assert_eq!(p[0].ref_key, "6f1a0d2e-0000-4000-8000-000000000001");
        assert_eq!(p[0].amount.to_string(), "150.50");
        assert!(!p[0].posted);
        assert_eq!(p[0].rows[0].invoice.as_deref(), Some("inv-1"));
        assert_eq!(p[0].rows[0].contract, None);
    }

    #[test]
    fn each_problem_is_named_by_index_and_field() {
        let ok = r#"{"ref":"6f1a0d2e-0000-4000-8000-000000000001","version":"1","date":"d","amount":"1","posted":true}"#;
        let with = |patch: &str| format!("[{ok},{}]", ok.replacen("{", &format!("{{{patch},"), 1));
        let field_of = |body: &str| match parse(body.as_bytes(), any_date) {
            Err(PushBodyError::Item { index, field, .. }) => (index, field),
            other => panic!("{other:?}"),
        };
        // A later key overrides an earlier one in the map: patches replace.
        assert_eq!(field_of(&with(r#""x":1"#)), (1, "x".to_owned()));
        let bad_amount = format!(
            "[{ok},{}]",
            ok.replace(r#""amount":"1""#, r#""amount":"1,5""#)
        );
        assert_eq!(field_of(&bad_amount), (1, "amount".to_owned()));
        let bad_ref = format!("[{}]", ok.replace("6f1a0d2e-0000", "6f1a0d2e0000"));
        assert_eq!(field_of(&bad_ref), (0, "ref".to_owned()));
        let bad_row = format!(
            "[{}]",
            ok.replace(
                r#""posted":true"#,
                r#""posted":true,"rows":[{"amount":"x"}]"#
            )
        );
        assert_eq!(field_of(&bad_row), (0, "rows[0].amount".to_owned()));
        let bad_date = parse(format!("[{ok}]").as_bytes(), |_| Err("no".into()));
        assert!(matches!(bad_date, Err(PushBodyError::Item { ref field, .. }) if field == "date"));
        match parse(b"[\n{\"ref\": }]", any_date) {
            Err(PushBodyError::Malformed { line, column, .. }) => {
                assert_eq!((line, column), (2, 9))
            }
            other => panic!("{other:?}"),
        }
        let many = format!("[{}]", vec![ok; MAX_ITEMS + 1].join(","));
        assert_eq!(
            parse(many.as_bytes(), any_date),
            Err(PushBodyError::TooMany { limit: MAX_ITEMS })
        );
    }
}
