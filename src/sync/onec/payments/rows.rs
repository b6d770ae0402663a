//! 1C's payment documents, read from an OData answer into [`Payment`]s.
//!
//! Each document's properties are taken as raw JSON text (`RawValue`), so
//! amounts, which 1C publishes as `Edm.Double` JSON numbers, are read from
//! their digits ([`Amount::from_json`]), never through `f64`. The tabular
//! section is embedded in the document (1C embeds tabular sections in an
//! entity's JSON; no `$expand`), rows with `LineNumber` as a string.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{dates, reference, Amount, Payment, PaymentRow};
use crate::config::PaymentFields;

/// A document as read: the payment, and the date as 1C wrote it (local
/// time, the cursor's and the window's unit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Document {
    pub payment: Payment,
    pub onec_date: String,
}

#[derive(Deserialize)]
struct List<'a> {
    #[serde(borrow)]
    value: Vec<&'a RawValue>,
}

type Props<'a> = HashMap<String, &'a RawValue>;

/// `$select` of a document read: what [`parse_document`] reads.
pub(super) fn select(f: &PaymentFields) -> String {
    [
        "Ref_Key",
        "DataVersion",
        "DeletionMark",
        "Posted",
        &f.number,
        &f.date,
        &f.amount,
        &f.counterparty,
        &f.section,
    ]
    .join(",")
}

/// A list answer (`{"value":[…]}`), each document read.
pub(super) fn parse_page(
    body: &[u8],
    f: &PaymentFields,
    offset: &str,
) -> Result<Vec<Document>, String> {
    let list: List<'_> = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    list.value
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            parse_document(raw.get(), f, offset).map_err(|e| format!("document {i}: {e}"))
        })
        .collect()
}

/// One document (a single entity's answer, or an element of a list).
pub(super) fn parse_document(
    raw: &str,
    f: &PaymentFields,
    offset: &str,
) -> Result<Document, String> {
    let props: Props<'_> = serde_json::from_str(raw).map_err(|e| e.to_string())?;
    let ref_key = text(&props, "Ref_Key")?
        .filter(|k| super::is_guid(k))
        .ok_or("Ref_Key is missing or not a GUID")?
        .to_ascii_lowercase();
    let field = |name: &str| format!("{ref_key}: {name}");
    let version = text(&props, "DataVersion")?.ok_or_else(|| {
        format!(
            "{}: 1C sent no DataVersion (needed to tell a change)",
            ref_key
        )
    })?;
    let posted = flag(&props, "Posted").map_err(|e| format!("{}: {e}", field("Posted")))?;
    let deleted =
        flag(&props, "DeletionMark").map_err(|e| format!("{}: {e}", field("DeletionMark")))?;
    let onec_date =
        text(&props, &f.date)?.ok_or_else(|| format!("{} is missing", field(&f.date)))?;
    let date = dates::with_offset(&onec_date, offset)
        .ok_or_else(|| format!("{} is not a date: {onec_date:?}", field(&f.date)))?;
    let amount = amount_of(&props, &f.amount).map_err(|e| format!("{}: {e}", field(&f.amount)))?;
    let counterparty = text(&props, &f.counterparty)?.and_then(|k| reference(&k));
    let number = text(&props, &f.number)?
        .unwrap_or_default()
        .trim()
        .to_owned();
    let rows = match props.get(&f.section) {
        None => Vec::new(),
        Some(raw) if raw.get() == "null" => Vec::new(),
        Some(raw) => {
            let rows: Vec<Props<'_>> = serde_json::from_str(raw.get())
                .map_err(|e| format!("{}: {e}", field(&f.section)))?;
            rows.iter()
                .enumerate()
                .map(|(i, row)| {
                    let at = |name: &str| format!("{}[{i}].{name}", field(&f.section));
                    Ok(PaymentRow {
                        amount: amount_of(row, &f.row_amount)
                            .map_err(|e| format!("{}: {e}", at(&f.row_amount)))?,
                        invoice: optional_ref(row, &f.row_invoice)?,
                        contract: optional_ref(row, &f.row_contract)?,
                    })
                })
                .collect::<Result<_, String>>()?
        }
    };
    Ok(Document {
        payment: Payment {
            ref_key,
            version,
            number,
            date,
            amount,
            counterparty,
            rows,
            posted: posted && !deleted,
        },
        onec_date,
    })
}

/// A string property (`None` when absent or null).
fn text(props: &Props<'_>, name: &str) -> Result<Option<String>, String> {
    match props.get(name) {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => serde_json::from_str::<String>(raw.get())
            .map(Some)
            .map_err(|_| format!("{name} is not a string: {}", shown(raw.get()))),
    }
}

/// A boolean property; absent is false.
fn flag(props: &Props<'_>, name: &str) -> Result<bool, String> {
    match props.get(name).map(|r| r.get()) {
        None | Some("null") | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(other) => Err(format!("not a boolean: {}", shown(other))),
    }
}

fn amount_of(props: &Props<'_>, name: &str) -> Result<Amount, String> {
    match props.get(name) {
        None => Err("missing".into()),
        Some(raw) => Amount::from_json(raw.get()),
    }
}

/// A reference of a row (`None`: the field is not read, absent, or empty).
fn optional_ref(props: &Props<'_>, name: &str) -> Result<Option<String>, String> {
    if name.is_empty() {
        return Ok(None);
    }
    Ok(text(props, name)?.and_then(|k| reference(&k)))
}

fn shown(raw: &str) -> String {
    raw.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_reads_with_its_rows_and_exact_amounts() {
        let f = PaymentFields::default();
        let body = r#"{"odata.metadata":"x","value":[{"Ref_Key":"6F1A0D2E-0000-4000-8000-000000000001",
            "DataVersion":"AAAAAQAAAAA=","DeletionMark":false,"Posted":true,"Number":"0000-000123 ",
            "Date":"2026-12-05T10:30:00","СуммаДокумента":15000.1,"Контрагент_Key":"00000000-0000-0000-0000-000000000000",
            "Организация_Key":"x","РасшифровкаПлатежа":[
              {"LineNumber":"1","СуммаПлатежа":10000,"СчетНаОплату_Key":"aaaaaaaa-0000-4000-8000-000000000001","ДоговорКонтрагента_Key":"00000000-0000-0000-0000-000000000000"},
              {"LineNumber":"2","СуммаПлатежа":"5000.10","СчетНаОплату_Key":null}]}]}"#;
        let docs = parse_page(body.as_bytes(), &f, "+03:00").expect("page");
        let p = &docs[0].payment;
        assert_eq!(p.ref_key, "6f1a0d2e-0000-4000-8000-000000000001");
        assert_eq!(p.number, "0000-000123");
        assert_eq!(p.date, "2026-12-05T10:30:00+03:00");
        assert_eq!(docs[0].onec_date, "2026-12-05T10:30:00");
        assert_eq!(p.amount.to_string(), "15000.10");
        assert_eq!(p.counterparty, None);
        assert!(p.posted);
        assert_eq!(p.rows.len(), 2);
        assert_eq!(p.rows[0].amount.to_string(), "10000.00");
        assert_eq!(
            p.rows[0].invoice.as_deref(),
            Some("aaaaaaaa-0000-4000-8000-000000000001")
        );
        assert_eq!(p.rows[0].contract, None);
        assert_eq!(p.rows[1].invoice, None);
    }

    #[test]
    fn deletion_marked_or_unposted_documents_are_not_posted() {
        let f = PaymentFields::default();
        let doc = |posted: bool, deleted: bool| {
            format!(
                r#"{{"Ref_Key":"6f1a0d2e-0000-4000-8000-000000000001","DataVersion":"v","Posted":{posted},
                   "DeletionMark":{deleted},"Date":"2026-12-05T10:30:00","СуммаДокумента":1}}"#
            )
        };
        let posted = |p, d| parse_document(&doc(p, d), &f, "Z").map(|d| d.payment.posted);
        assert_eq!(posted(true, false), Ok(true));
        assert_eq!(posted(false, false), Ok(false));
        assert_eq!(posted(true, true), Ok(false));
        let bad = r#"{"Ref_Key":"6f1a0d2e-0000-4000-8000-000000000001","DataVersion":"v","Date":"2026-12-05T10:30:00","СуммаДокумента":1e3}"#;
        let e = parse_document(bad, &f, "Z").expect_err("exponent");
        assert!(e.contains("СуммаДокумента"), "{e}");
    }
}
