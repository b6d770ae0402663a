//! The pull exchange's XML form (`format=xml`, an ack sent as XML), for a
//! 1C without `ЧтениеJSON` (8.2, or 8.3 in an older compatibility mode):
//! the same content as the JSON form.
//!
//! A lease:
//!
//! ```xml
//! <?xml version="1.0" encoding="UTF-8"?>
//! <lease id="…" next_after="42">
//!   <item id="41" op="create" key="bitrix24:company:2919" onec_ref="">
//!     <counterparty><name>…</name><inn>…</inn><phones><v>…</v></phones></counterparty>
//!   </item>
//! </lease>
//! ```
//!
//! The counterparty's JSON as elements: a member as an element of its name
//! (members whose name is no plain XML name are left out), an array's
//! values as `<v>` children, `null` left out, numbers and booleans as text.
//! An ack:
//!
//! ```xml
//! <ack><result id="41" status="created" onec_ref="…" code="…">1C's message</result></ack>
//! ```
//!
//! read with `xml::XmlStream` (no DTD, bounded depth, elements and text;
//! UTF-8 or windows-1251 as declared).

use serde_json::Value;

use crate::xml::{is_xml_char, EncodingChoice, Limits, XmlEvent, XmlStream};

use super::pull::Lease;

/// What an XML ack holds, unchecked: per `<result>`, its attributes and
/// its text (the message). The endpoint checks it as it checks the JSON form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawResult {
    pub id: Option<String>,
    pub status: Option<String>,
    pub onec_ref: Option<String>,
    pub code: Option<String>,
    pub message: Option<String>,
}

/// Why an XML ack was not read: the line, the element path and what.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AckXmlError {
    #[error("{0}")]
    Malformed(String, u64),
    #[error("the root element is <{0}>, not <ack>")]
    NotAck(String),
    #[error("<{0}> in <ack>: only <result> elements are")]
    Unexpected(String),
    #[error("more than {0} results")]
    TooMany(usize),
}

impl AckXmlError {
    /// The line of a malformed document (1 otherwise).
    pub fn line(&self) -> u64 {
        match self {
            AckXmlError::Malformed(_, line) => *line,
            _ => 1,
        }
    }
}

/// Reads an XML ack's results (at most `max_results`), every one before
/// any is checked.
pub fn read_ack(body: &[u8], max_results: usize) -> Result<Vec<RawResult>, AckXmlError> {
    let limits = Limits {
        max_depth: 8,
        max_elements: max_results.saturating_add(2),
        max_field_bytes: 64 * 1024,
        max_run_bytes: 256 * 1024,
        max_document_bytes: body.len() as u64,
    };
    let malformed = |e: crate::xml::XmlError| AckXmlError::Malformed(e.to_string(), e.line);
    let mut stream = XmlStream::new(body, EncodingChoice::Auto, limits).map_err(malformed)?;
    let mut results: Vec<RawResult> = Vec::new();
    let mut current: Option<RawResult> = None;
    // Elements open before the event (the stream's own count takes an
    // ended element out only at the next call).
    let mut depth = 0usize;
    loop {
        let event = stream.next_event();
        match event {
            Err(e) => {
                if matches!(e.kind, crate::xml::XmlErrorKind::Limit(_))
                    && results.len() >= max_results
                {
                    return Err(AckXmlError::TooMany(max_results));
                }
                return Err(malformed(e));
            }
            Ok(XmlEvent::Eof) => break,
            Ok(XmlEvent::Start) => {
                depth += 1;
                let name = stream.name().to_owned();
                match depth - 1 {
                    0 if name != "ack" => return Err(AckXmlError::NotAck(name)),
                    0 => {}
                    1 if name == "result" => {
                        if results.len() >= max_results {
                            return Err(AckXmlError::TooMany(max_results));
                        }
                        let mut result = RawResult::default();
                        for (key, value) in stream.attributes() {
                            let value = Some(value.trim().to_owned());
                            match key {
                                "id" => result.id = value,
                                "status" => result.status = value,
                                "onec_ref" => result.onec_ref = value,
                                "code" => result.code = value,
                                _ => {}
                            }
                        }
                        current = Some(result);
                    }
                    _ => return Err(AckXmlError::Unexpected(name)),
                }
            }
            Ok(XmlEvent::Text) => {
                if let Some(result) = current.as_mut() {
                    result
                        .message
                        .get_or_insert_with(String::new)
                        .push_str(stream.text());
                }
            }
            Ok(XmlEvent::End) => {
                depth = depth.saturating_sub(1);
                if let Some(mut result) = current.take() {
                    result.message = result.message.map(|m| m.trim().to_owned());
                    results.push(result);
                }
            }
        }
    }
    Ok(results)
}

/// A lease as XML (UTF-8).
pub fn lease_xml(lease: &Lease) -> String {
    let mut out = String::with_capacity(512 + lease.items.len() * 512);
    out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<lease id=\"");
    escape_into(&mut out, &lease.lease);
    out.push_str(&format!("\" next_after=\"{}\">", lease.next_after));
    for item in &lease.items {
        out.push_str(&format!(
            "<item id=\"{}\" op=\"{}\" key=\"",
            item.id, item.op
        ));
        escape_into(&mut out, &item.key);
        out.push_str("\" onec_ref=\"");
        escape_into(&mut out, item.onec_ref.as_deref().unwrap_or(""));
        out.push_str("\">");
        element(&mut out, "counterparty", &item.counterparty);
        out.push_str("</item>");
    }
    out.push_str("</lease>\n");
    out
}

/// `<name>value</name>`; nothing for `null` or a name that is no plain XML
/// name.
fn element(out: &mut String, name: &str, value: &Value) {
    if value.is_null() || !is_plain_name(name) {
        return;
    }
    out.push('<');
    out.push_str(name);
    out.push('>');
    match value {
        Value::Object(members) => {
            for (key, member) in members {
                element(out, key, member);
            }
        }
        Value::Array(values) => {
            for v in values {
                element(out, "v", v);
            }
        }
        Value::String(s) => escape_into(out, s),
        other => out.push_str(&other.to_string()),
    }
    out.push_str("</");
    out.push_str(name);
    out.push('>');
}

/// Latin letters, digits, `_` and `-`, not starting with a digit or `-`
/// (nor `xml`, reserved).
fn is_plain_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !name.to_ascii_lowercase().starts_with("xml")
}

/// Text or an attribute's value, escaped; characters XML cannot hold
/// (control characters) left out.
fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if is_xml_char(c) => out.push(c),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::onec::pull::Item;

    #[test]
    fn a_lease_is_written_as_elements_escaped() {
        let lease = Lease {
            lease: "l-1".into(),
            items: vec![Item {
                id: 41,
                op: "create",
                key: "bitrix24:company:2919".into(),
                onec_ref: None,
                counterparty: serde_json::json!({
                    "name": "ООО \"Ветер\" & <К>",
                    "phones": ["+79123456789", "84957771122"],
                    "category": 2,
                    "inn": null,
                    "bad name": "x",
                }),
            }],
            next_after: 42,
        };
        let xml = lease_xml(&lease);
        assert!(
            xml.starts_with(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<lease id=\"l-1\" next_after=\"42\">"
            ),
            "{xml}"
        );
        assert!(
            xml.contains(
                "<item id=\"41\" op=\"create\" key=\"bitrix24:company:2919\" onec_ref=\"\">"
            ),
            "{xml}"
        );
        assert!(
            xml.contains("<name>ООО &quot;Ветер&quot; &amp; &lt;К&gt;</name>"),
            "{xml}"
        );
        assert!(
            xml.contains("<phones><v>+79123456789</v><v>84957771122</v></phones>"),
            "{xml}"
        );
        assert!(xml.contains("<category>2</category>"), "{xml}");
        assert!(!xml.contains("inn") && !xml.contains("bad"), "{xml}");
    }

    #[test]
    fn an_ack_is_read_with_its_attributes_and_message() {
        let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ack>\n <result id=\"41\" status=\"created\" onec_ref=\"0d8f6e5c-1b2a-11ef-9c3d-00155d012345\" code=\"00-1\"/>\n <result id=\"42\" status=\"failed\" code=\"E\"> нет &quot;ИНН&quot; </result>\n</ack>";
        let results = read_ack(body.as_bytes(), 10).expect("an ack");
        assert_eq!(results.len(), 2);
        assert_eq!(results[0].id.as_deref(), Some("41"));
        assert_eq!(results[0].message, None);
        assert_eq!(results[1].message.as_deref(), Some("нет \"ИНН\""));
        assert!(matches!(
            read_ack(b"<acks/>", 10),
            Err(AckXmlError::NotAck(_))
        ));
        assert!(matches!(
            read_ack(b"<ack><x/></ack>", 10),
            Err(AckXmlError::Unexpected(_))
        ));
        let err = read_ack(b"<ack>\n<result id=\"1\">\n</ack>", 10).expect_err("malformed");
        assert_eq!(err.line(), 3, "{err}");
        assert!(matches!(
            read_ack(b"<!DOCTYPE a [<!ENTITY x \"y\">]><ack/>", 10),
            Err(AckXmlError::Malformed(..))
        ));
        let many = format!(
            "<ack>{}</ack>",
            "<result id=\"1\" status=\"failed\"/>".repeat(11)
        );
        assert!(matches!(
            read_ack(many.as_bytes(), 10),
            Err(AckXmlError::TooMany(10))
        ));
    }
}
