//! Writing answers and faults.
//!
//! The `SayName` answer follows the seed's shape byte for byte where it
//! matters: `m:return` carries the `<data>` document as escaped text (not
//! CDATA, not child elements), because that is what the PBX parses. The
//! document is rendered and escaped once per counterparty at load time
//! ([`say_name_payload`]); answering is then a copy.

use crate::directory::Counterparty;

use super::{FaultCode, SoapVersion, DEFAULT_SERVICE_NS};

const XML_DECLARATION: &[u8] = b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";

const RETURN_START: &[u8] = b"<m:return xmlns:xs=\"http://www.w3.org/2001/XMLSchema\" \
xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">";

/// Bytes of a fault around its message, rounded up, so that one
/// reservation covers the whole fault.
const ANSWER_OVERHEAD: usize = 512;

/// Longest fault message kept, in bytes before escaping: enough for any
/// message of ours, and a bound on what an echoed name can add.
const MAX_FAULT_MESSAGE: usize = 1024;

/// The unknown caller's `<data>`, escaped for `m:return`: every field present
/// and empty, never a word such as "Unknown" that a phone would show as a name.
const UNKNOWN_CALLER_PAYLOAD: &[u8] = &[0, 0, 0];

/// The constant parts of `m:return`'s text: the `<data>` document escaped
/// as text. A prepared answer's fields go between them.
const DATA_BEFORE_TITLE: &[u8] = b"&lt;?xml version=\"1.0\"?&gt;\n&lt;data&gt;\n    &lt;title&gt;";
const DATA_BEFORE_CATEGORY: &[u8] = b"&lt;/title&gt;\n    &lt;category&gt;";
const DATA_BEFORE_PHONE: &[u8] = b"&lt;/category&gt;\n    &lt;manager&gt;\n        &lt;phone&gt;";
const DATA_END: &[u8] = b"&lt;/phone&gt;\n    &lt;/manager&gt;\n&lt;/data&gt;\n";

/// The text content of `m:return` for a known caller: the `<data>` document
/// with the counterparty's name, category and manager's extension, escaped
/// once as the document's own text and once more as `m:return`'s.
pub fn say_name_payload(c: &Counterparty) -> Box<[u8]> {
    let category = c.category.map(|n| n.to_string());
    render_payload(
        &c.name,
        category.as_deref().unwrap_or(""),
        c.manager_phone.as_deref().unwrap_or(""),
    )
}

/// The text content of `m:return` for a caller the directory does not know.
pub fn unknown_caller_payload() -> &'static [u8] {
    UNKNOWN_CALLER_PAYLOAD
}

/// Appends a `SayName` answer carrying `payload` (from [`say_name_payload`]
/// or [`unknown_caller_payload`]) as it is. `namespace` is the request's;
/// `http://VATS` when it had none.
pub fn write_say_name_response(
    out: &mut Vec<u8>,
    version: SoapVersion,
    namespace: &str,
    payload: &[u8],
) {
    write_answer(
        out,
        version,
        namespace,
        "SayName",
        Return::Prepared(payload),
    );
}

/// [`write_say_name_response`] with the manager's extension `manager_phone`
/// in place of the one `payload` holds: the answer of a caller whose
/// manager is chosen when the call is answered (the directory's
/// `manager_at_answer`), the name and category as rendered at load.
pub fn write_say_name_response_with_manager(
    out: &mut Vec<u8>,
    version: SoapVersion,
    namespace: &str,
    payload: &[u8],
    manager_phone: &str,
) {
    write_answer(
        out,
        version,
        namespace,
        "SayName",
        Return::WithManager(payload, manager_phone),
    );
}

/// [`write_say_name_response`] with the manager's part of another prepared
/// answer, `manager_payload` (the record the manager is taken from, whose
/// answer carries its manager), in place of the one `payload` holds: a copy,
/// as every other answer is.
pub fn write_say_name_response_with_manager_of(
    out: &mut Vec<u8>,
    version: SoapVersion,
    namespace: &str,
    payload: &[u8],
    manager_payload: &[u8],
) {
    write_answer(
        out,
        version,
        namespace,
        "SayName",
        Return::WithManagerOf(payload, manager_payload),
    );
}

/// Appends an `IncomingCall` answer: `m:return` is `1`.
pub fn write_incoming_call_response(out: &mut Vec<u8>, version: SoapVersion, namespace: &str) {
    write_answer(out, version, namespace, "IncomingCall", Return::Text(b"1"));
}

/// Appends a fault in `version`'s shape. The message is cut to about 1 KiB.
pub fn write_fault(out: &mut Vec<u8>, version: SoapVersion, code: FaultCode, message: &str) {
    let (message, cut) = truncate(message, MAX_FAULT_MESSAGE);
    out.reserve(ANSWER_OVERHEAD + message.len() + message.len() / 4);
    out.extend_from_slice(XML_DECLARATION);
    match version {
        SoapVersion::V11 => {
            out.extend_from_slice(
                b"<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\">\
<soap:Body><soap:Fault><faultcode>",
            );
            out.extend_from_slice(match code {
                FaultCode::Client => b"soap:Client",
                FaultCode::Server => b"soap:Server",
            });
            out.extend_from_slice(b"</faultcode><faultstring>");
            push_text(out, message);
            if cut {
                out.extend_from_slice("…".as_bytes());
            }
            out.extend_from_slice(b"</faultstring></soap:Fault></soap:Body></soap:Envelope>");
        }
        SoapVersion::V12 => {
            out.extend_from_slice(
                b"<env:Envelope xmlns:env=\"http://www.w3.org/2003/05/soap-envelope\">\
<env:Body><env:Fault><env:Code><env:Value>",
            );
            out.extend_from_slice(match code {
                FaultCode::Client => b"env:Sender",
                FaultCode::Server => b"env:Receiver",
            });
            out.extend_from_slice(b"</env:Value></env:Code><env:Reason><env:Text xml:lang=\"en\">");
            push_text(out, message);
            if cut {
                out.extend_from_slice("…".as_bytes());
            }
            out.extend_from_slice(
                b"</env:Text></env:Reason></env:Fault></env:Body></env:Envelope>",
            );
        }
    }
}

/// What `m:return` holds: text as it is, or a prepared SayName answer.
enum Return<'a> {
    Text(&'a [u8]),
    Prepared(&'a [u8]),
    /// A prepared answer with another manager's extension (not escaped yet).
    WithManager(&'a [u8], &'a str),
    /// A prepared answer with the manager of another prepared answer.
    WithManagerOf(&'a [u8], &'a [u8]),
}

fn write_answer(
    out: &mut Vec<u8>,
    version: SoapVersion,
    namespace: &str,
    operation: &str,
    payload: Return<'_>,
) {
    let namespace = if namespace.is_empty() {
        DEFAULT_SERVICE_NS
    } else {
        namespace
    };
    // Exactly the answer's length (when the namespace needs no escaping,
    // the usual case): an empty `out` gets a buffer that fits, which
    // becomes the response body without being shrunk or copied again.
    let payload_len = match payload {
        Return::Text(t) => t.len(),
        Return::Prepared(p) => p.len().saturating_sub(PREPARED_HEADER_LEN) + DATA_TEMPLATE_LEN,
        // Rare (a manager chosen at answer time): room enough, not exact.
        Return::WithManager(p, phone) => p.len() + phone.len() + DATA_TEMPLATE_LEN,
        Return::WithManagerOf(p, other) => p.len() + other.len() + DATA_TEMPLATE_LEN,
    };
    let namespace_len = if is_plain_attribute(namespace) {
        namespace.len()
    } else {
        namespace.len() * MAX_ESCAPE_GROWTH
    };
    out.reserve(
        ANSWER_FIXED_LEN
            + version.envelope_namespace().len()
            + 2 * operation.len()
            + namespace_len
            + payload_len,
    );
    write_answer_head(out, version, namespace, operation);
    match payload {
        Return::Text(text) => out.extend_from_slice(text),
        Return::Prepared(prepared) => splice_prepared(out, prepared, Manager::Prepared),
        Return::WithManager(prepared, phone) => {
            splice_prepared(out, prepared, Manager::Extension(phone))
        }
        Return::WithManagerOf(prepared, other) => {
            splice_prepared(out, prepared, Manager::Of(other))
        }
    }
    out.extend_from_slice(RETURN_END);
    out.extend_from_slice(operation.as_bytes());
    out.extend_from_slice(ENVELOPE_END);
}

/// An answer's bytes up to `m:return`'s text. `namespace` is not empty.
fn write_answer_head(out: &mut Vec<u8>, version: SoapVersion, namespace: &str, operation: &str) {
    out.extend_from_slice(XML_DECLARATION);
    out.extend_from_slice(ENVELOPE_START);
    out.extend_from_slice(version.envelope_namespace().as_bytes());
    out.extend_from_slice(BODY_START);
    out.extend_from_slice(operation.as_bytes());
    out.extend_from_slice(RESPONSE_NAMESPACE);
    push_attribute(out, namespace);
    out.extend_from_slice(b"\">");
    out.extend_from_slice(RETURN_START);
}

/// What every SayName answer in one envelope version and namespace shares:
/// its bytes before `m:return`'s text, written once. The PBX asks in one
/// shape (`soap::RequestReader` learns it), so its answers are this head,
/// the prepared payload and a constant tail: no escaping and a third of
/// the copies of [`write_say_name_response`] (which it equals byte for
/// byte).
#[derive(Debug)]
pub struct SayNameFrame {
    head: Box<[u8]>,
}

/// A SayName answer's bytes after `m:return`'s text.
const SAY_NAME_TAIL: &[u8] = b"</m:return></m:SayNameResponse></soap:Body></soap:Envelope>";

impl SayNameFrame {
    /// The frame of answers in `version` echoing `namespace` (`http://VATS`
    /// when empty).
    pub fn new(version: SoapVersion, namespace: &str) -> SayNameFrame {
        let namespace = if namespace.is_empty() {
            DEFAULT_SERVICE_NS
        } else {
            namespace
        };
        let mut head = Vec::new();
        write_answer_head(&mut head, version, namespace, "SayName");
        SayNameFrame {
            head: head.into_boxed_slice(),
        }
    }

    /// Appends the answer carrying `payload` (as [`write_say_name_response`]).
    pub fn write(&self, out: &mut Vec<u8>, payload: &[u8]) {
        // Exactly the answer's length: see `write_answer`.
        out.reserve(
            self.head.len()
                + payload.len().saturating_sub(PREPARED_HEADER_LEN)
                + DATA_TEMPLATE_LEN
                + SAY_NAME_TAIL.len(),
        );
        out.extend_from_slice(&self.head);
        splice_prepared(out, payload, Manager::Prepared);
        out.extend_from_slice(SAY_NAME_TAIL);
    }
}

const ENVELOPE_START: &[u8] = b"<soap:Envelope xmlns:soap=\"";
const BODY_START: &[u8] = b"\"><soap:Body><m:";
const RESPONSE_NAMESPACE: &[u8] = b"Response xmlns:m=\"";
const RETURN_END: &[u8] = b"</m:return></m:";
const ENVELOPE_END: &[u8] = b"Response></soap:Body></soap:Envelope>";

/// An answer's bytes but the envelope's namespace, the operation's name
/// (twice), its namespace and `m:return`'s text.
const ANSWER_FIXED_LEN: usize = XML_DECLARATION.len()
    + ENVELOPE_START.len()
    + BODY_START.len()
    + RESPONSE_NAMESPACE.len()
    + 2
    + RETURN_START.len()
    + RETURN_END.len()
    + ENVELOPE_END.len();

/// The most one byte can grow when escaped (`"` → `&quot;`).
const MAX_ESCAPE_GROWTH: usize = 6;

/// The prepared payload's own header: the title's length (two bytes) and
/// the category's (one), not written to the answer.
const PREPARED_HEADER_LEN: usize = 3;

const DATA_TEMPLATE_LEN: usize =
    DATA_BEFORE_TITLE.len() + DATA_BEFORE_CATEGORY.len() + DATA_BEFORE_PHONE.len() + DATA_END.len();

/// Prepares a SayName answer at load time: the three fields escaped twice
/// (once as the `<data>` document's text, once more as `m:return`'s), in one
/// allocation: `[title length: u16 LE][category length: u8][title][category][phone]`.
/// Answering then copies these bytes between the constant template parts;
/// keeping the ~220 template bytes once instead of in every record saves
/// about 220 MB for a million counterparties.
fn render_payload(title: &str, category: &str, phone: &str) -> Box<[u8]> {
    let escape_twice = |s: &str| -> Vec<u8> {
        let mut twice = Vec::with_capacity(s.len() + 16);
        push_text_twice(&mut twice, s);
        twice
    };
    // Escaping twice turns one byte into at most 9 (`&` → `&amp;amp;`), so
    // cutting the raw text to a ninth of the length field keeps it in range.
    // The model allows names of at most 1 KiB, far below that.
    let title = escape_twice(cut_at_char(title, usize::from(u16::MAX) / 9));
    let category = escape_twice(cut_at_char(category, usize::from(u8::MAX) / 9));
    let phone = escape_twice(phone);
    let mut prepared = Vec::with_capacity(3 + title.len() + category.len() + phone.len());
    prepared.extend_from_slice(&(title.len() as u16).to_le_bytes());
    prepared.push(category.len() as u8);
    prepared.extend_from_slice(&title);
    prepared.extend_from_slice(&category);
    prepared.extend_from_slice(&phone);
    prepared.into_boxed_slice()
}

/// Appends `s` escaped twice: once as the `<data>` document's text, once
/// more as `m:return`'s.
fn push_text_twice(out: &mut Vec<u8>, s: &str) {
    let mut once = Vec::with_capacity(s.len() + 8);
    push_text(&mut once, s);
    for &b in &once {
        match b {
            b'&' => out.extend_from_slice(b"&amp;"),
            b'<' => out.extend_from_slice(b"&lt;"),
            b'>' => out.extend_from_slice(b"&gt;"),
            _ => out.push(b),
        }
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
fn cut_at_char(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The manager a prepared answer is written with.
enum Manager<'a> {
    /// Its own.
    Prepared,
    /// This extension, escaped when written.
    Extension(&'a str),
    /// The one of this other prepared answer.
    Of(&'a [u8]),
}

/// A prepared answer's parts (see [`render_payload`]): title, category and
/// the manager's extension, each escaped twice.
fn prepared_parts(prepared: &[u8]) -> (&[u8], &[u8], &[u8]) {
    match prepared {
        [t0, t1, c, rest @ ..] => {
            let title_len = usize::from(u16::from_le_bytes([*t0, *t1]));
            let category_len = usize::from(*c);
            match (
                rest.get(..title_len),
                rest.get(title_len..title_len + category_len),
            ) {
                (Some(t), Some(c)) => (t, c, &rest[title_len + category_len..]),
                // Not a prepared answer (cannot happen): answer as for an unknown caller.
                _ => (&[][..], &[][..], &[][..]),
            }
        }
        _ => (&[][..], &[][..], &[][..]),
    }
}

/// Writes a prepared answer between the template parts, with `manager`.
fn splice_prepared(out: &mut Vec<u8>, prepared: &[u8], manager: Manager<'_>) {
    let (title, category, phone) = prepared_parts(prepared);
    out.extend_from_slice(DATA_BEFORE_TITLE);
    out.extend_from_slice(title);
    out.extend_from_slice(DATA_BEFORE_CATEGORY);
    out.extend_from_slice(category);
    out.extend_from_slice(DATA_BEFORE_PHONE);
    match manager {
        Manager::Prepared => out.extend_from_slice(phone),
        Manager::Extension(extension) => push_text_twice(out, extension),
        Manager::Of(other) => out.extend_from_slice(prepared_parts(other).2),
    }
    out.extend_from_slice(DATA_END);
}

/// Appends `s` escaped as element text. Quotes may stay as they are in text.
fn push_text(out: &mut Vec<u8>, s: &str) {
    push_escaped(out, s, false);
}

/// Appends `s` escaped as a double-quoted attribute value. Tab and newline
/// become references so that attribute-value normalization keeps them.
fn push_attribute(out: &mut Vec<u8>, s: &str) {
    push_escaped(out, s, true);
}

/// Printable ASCII that neither text nor an attribute escapes: such a
/// string (a namespace such as `http://VATS`) is copied as it is.
fn is_plain_attribute(s: &str) -> bool {
    s.bytes()
        .all(|b| matches!(b, b' '..=b'~') && !matches!(b, b'&' | b'<' | b'>' | b'"'))
}

fn push_escaped(out: &mut Vec<u8>, s: &str, attribute: bool) {
    // The answer's namespace on every SayName: a byte scan, not the
    // per-character match below (about 350 instructions a call, callgrind).
    if is_plain_attribute(s) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let replacement: &[u8] = match c {
            '&' => b"&amp;",
            '<' => b"&lt;",
            '>' => b"&gt;",
            '"' if attribute => b"&quot;",
            '\t' if attribute => b"&#9;",
            '\n' if attribute => b"&#10;",
            '\t' | '\n' => continue,
            // XML 1.0 forbids C0 controls and U+FFFE/U+FFFF outright and
            // discourages DEL and C1; none belongs in a name or a message.
            c if c.is_control() || c == '\u{FFFE}' || c == '\u{FFFF}' => b"",
            _ => continue,
        };
        out.extend_from_slice(&s.as_bytes()[start..i]);
        out.extend_from_slice(replacement);
        start = i + c.len_utf8();
    }
    out.extend_from_slice(&s.as_bytes()[start..]);
}

/// `s` cut to at most `max` bytes on a character boundary, and whether it was cut.
fn truncate(s: &str, max: usize) -> (&str, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (&s[..end], true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quick_xml::events::Event;
    use quick_xml::name::QName;
    use quick_xml::Reader;

    fn counterparty(
        name: &str,
        category: Option<i64>,
        manager_phone: Option<&str>,
    ) -> Counterparty {
        let mut c: Counterparty =
            serde_json::from_str(r#"{"id":"1","name":"x"}"#).expect("minimal counterparty");
        c.name = name.into();
        c.category = category;
        c.manager_phone = manager_phone.map(Into::into);
        c
    }

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).expect("answers are UTF-8")
    }

    /// The text of `m:return` (still escaped) when `prepared` is answered.
    fn return_text(prepared: &[u8]) -> String {
        let mut out = Vec::new();
        write_say_name_response(&mut out, SoapVersion::V11, "http://VATS", prepared);
        let out = text(&out);
        let start = out
            .find(std::str::from_utf8(RETURN_START).expect("utf-8"))
            .expect("m:return")
            + RETURN_START.len();
        let end = out.find("</m:return>").expect("end of m:return");
        out[start..end].to_owned()
    }

    #[test]
    fn an_answer_with_a_manager_chosen_at_answer_time_is_the_answer_rendered_with_it() {
        let name = "ООО \"Ромашка\" & <Ко>";
        for own in [None, Some(""), Some("  ")] {
            let payload = say_name_payload(&counterparty(name, Some(2), own));
            for manager in ["245", "+7 (495) 000-00-01", "a&<b>"] {
                let mut spliced = Vec::new();
                write_say_name_response_with_manager(
                    &mut spliced,
                    SoapVersion::V11,
                    "http://VATS",
                    &payload,
                    manager,
                );
                let mut rendered = Vec::new();
                write_say_name_response(
                    &mut rendered,
                    SoapVersion::V11,
                    "http://VATS",
                    &say_name_payload(&counterparty(name, Some(2), Some(manager))),
                );
                assert_eq!(text(&spliced), text(&rendered), "{own:?} → {manager}");
                let mut of = Vec::new();
                write_say_name_response_with_manager_of(
                    &mut of,
                    SoapVersion::V11,
                    "http://VATS",
                    &payload,
                    &say_name_payload(&counterparty("1C's client", None, Some(manager))),
                );
                assert_eq!(text(&of), text(&rendered), "{own:?} → {manager} (of)");
            }
        }
    }

    /// Reads a whole document, checking it is well-formed, and returns the
    /// unescaped text of the first element named `name`.
    fn element_text(doc: &str, name: &str) -> String {
        let mut reader = Reader::from_str(doc);
        reader.config_mut().check_end_names = true;
        let mut found = None;
        loop {
            match reader.read_event() {
                Ok(Event::Start(e)) if e.name().as_ref() == name.as_bytes() && found.is_none() => {
                    let raw = reader
                        .read_text(QName(name.as_bytes()))
                        .expect("element closes");
                    let unescaped = quick_xml::escape::unescape(&raw).expect("escaped correctly");
                    found = Some(unescaped.into_owned());
                }
                Ok(Event::DocType(_)) => panic!("answers carry no DTD"),
                Ok(Event::Eof) => break,
                Ok(_) => {}
                Err(e) => panic!("not well-formed: {e}\n{doc}"),
            }
        }
        found.unwrap_or_else(|| panic!("no <{name}> in\n{doc}"))
    }

    #[test]
    fn a_frame_writes_what_the_general_writer_writes_in_a_buffer_of_its_exact_length() {
        let tricky = Counterparty {
            name: "ООО «Рога & Копыта» <b>".into(),
            category: Some(7),
            manager_phone: Some("101".into()),
            ..Counterparty::default()
        };
        let payloads = [
            say_name_payload(&tricky).to_vec(),
            say_name_payload(&Counterparty::default()).to_vec(),
            unknown_caller_payload().to_vec(),
        ];
        for version in [SoapVersion::V11, SoapVersion::V12] {
            for namespace in ["http://VATS", "", "urn:a&b\"<c>"] {
                let frame = SayNameFrame::new(version, namespace);
                for payload in &payloads {
                    let mut general = Vec::new();
                    write_say_name_response(&mut general, version, namespace, payload);
                    let mut framed = Vec::new();
                    frame.write(&mut framed, payload);
                    assert_eq!(
                        String::from_utf8_lossy(&framed),
                        String::from_utf8_lossy(&general)
                    );
                    assert_eq!(framed.len(), framed.capacity(), "{namespace}");
                }
            }
        }
    }

    #[test]
    fn known_caller_with_tricky_name_is_escaped_twice() {
        let c = counterparty(r#"ООО "Ромашка" & Ко <Лучшие>"#, Some(1), Some("244"));
        let payload = say_name_payload(&c);
        let expected_payload = "&lt;?xml version=\"1.0\"?&gt;\n\
&lt;data&gt;\n    \
&lt;title&gt;ООО \"Ромашка\" &amp;amp; Ко &amp;lt;Лучшие&amp;gt;&lt;/title&gt;\n    \
&lt;category&gt;1&lt;/category&gt;\n    \
&lt;manager&gt;\n        \
&lt;phone&gt;244&lt;/phone&gt;\n    \
&lt;/manager&gt;\n\
&lt;/data&gt;\n";
        assert_eq!(return_text(&payload), expected_payload);

        let mut out = Vec::new();
        write_say_name_response(&mut out, SoapVersion::V11, "http://VATS", &payload);
        let expected = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body>\
<m:SayNameResponse xmlns:m=\"http://VATS\">\
<m:return xmlns:xs=\"http://www.w3.org/2001/XMLSchema\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\
{expected_payload}</m:return></m:SayNameResponse></soap:Body></soap:Envelope>"
        );
        assert_eq!(text(&out), expected);
        assert!(text(&out).contains(r#"ООО "Ромашка" &amp;amp; Ко"#));
    }

    #[test]
    fn known_caller_without_category_or_manager_has_them_empty() {
        let payload = say_name_payload(&counterparty("Фэйковый чиж", None, None));
        let doc = element_text(&format!("<r>{}</r>", return_text(&payload)), "r");
        assert_eq!(
            doc,
            "<?xml version=\"1.0\"?>\n<data>\n    <title>Фэйковый чиж</title>\n    <category></category>\n    <manager>\n        <phone></phone>\n    </manager>\n</data>\n"
        );
        let payload = say_name_payload(&counterparty("x", Some(-3), Some("")));
        assert!(return_text(&payload).contains("&lt;category&gt;-3&lt;/category&gt;"));
    }

    #[test]
    fn overlong_fields_are_cut_without_splitting_an_entity() {
        let name = "&".repeat(20_000);
        let payload = say_name_payload(&counterparty(&name, None, None));
        let ret = return_text(&payload);
        let doc = element_text(&format!("<r>{ret}</r>"), "r");
        let title = element_text(&doc, "title");
        assert!(
            !title.is_empty() && title.chars().all(|c| c == '&'),
            "{title:.40}"
        );
        assert!(splice_is_total(&[0xff, 0xff, 0xff]));
    }

    /// Any bytes given as a prepared answer still produce a well-formed answer.
    fn splice_is_total(prepared: &[u8]) -> bool {
        let mut out = Vec::new();
        splice_prepared(&mut out, prepared, Manager::Prepared);
        out.ends_with(DATA_END)
    }

    #[test]
    fn control_characters_are_stripped_from_values() {
        let c = counterparty(
            "A\u{1}B\u{7}\tC\nD\r\u{7F}\u{85}\u{FFFF}E",
            None,
            Some("2\u{0}44"),
        );
        let payload = say_name_payload(&c);
        let doc = element_text(&format!("<r>{}</r>", return_text(&payload)), "r");
        assert_eq!(element_text(&doc, "title"), "AB\tC\nDE");
        assert_eq!(element_text(&doc, "phone"), "244");
    }

    #[test]
    fn unknown_caller_answer_has_all_fields_present_and_empty() {
        assert_eq!(
            unknown_caller_payload(),
            &*render_payload("", "", ""),
            "the constant and the renderer agree"
        );
        let mut out = Vec::new();
        write_say_name_response(
            &mut out,
            SoapVersion::V11,
            "http://test",
            unknown_caller_payload(),
        );
        assert_eq!(
            text(&out),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body>\
<m:SayNameResponse xmlns:m=\"http://test\">\
<m:return xmlns:xs=\"http://www.w3.org/2001/XMLSchema\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\
&lt;?xml version=\"1.0\"?&gt;\n&lt;data&gt;\n    &lt;title&gt;&lt;/title&gt;\n    \
&lt;category&gt;&lt;/category&gt;\n    &lt;manager&gt;\n        &lt;phone&gt;&lt;/phone&gt;\n    \
&lt;/manager&gt;\n&lt;/data&gt;\n\
</m:return></m:SayNameResponse></soap:Body></soap:Envelope>"
        );
        assert!(!text(&out).to_ascii_lowercase().contains("unknown"));
    }

    #[test]
    fn response_round_trips_to_the_data_document() {
        let name = r#"ИП "Иванов & сыновья" <опт>"#;
        let c = counterparty(name, Some(2), Some("244"));
        let mut out = Vec::new();
        write_say_name_response(
            &mut out,
            SoapVersion::V11,
            "http://VATS",
            &say_name_payload(&c),
        );
        let data = element_text(text(&out), "m:return");
        assert!(
            data.starts_with("<?xml version=\"1.0\"?>\n<data>\n"),
            "{data}"
        );
        assert_eq!(element_text(&data, "title"), name);
        assert_eq!(element_text(&data, "category"), "2");
        assert_eq!(element_text(&data, "phone"), "244");
    }

    #[test]
    fn an_answer_fills_exactly_the_buffer_it_reserves() {
        // The response body is the buffer as it is: spare room would cost a
        // shrink (a reallocation) on every SayName.
        let names = ["Ромашка", r#"ИП "Иванов & сыновья" <опт>"#, ""];
        let payloads: Vec<Box<[u8]>> = names
            .iter()
            .map(|n| say_name_payload(&counterparty(n, Some(2), Some("244"))))
            .chain([unknown_caller_payload().into()])
            .collect();
        for version in [SoapVersion::V11, SoapVersion::V12] {
            for namespace in ["http://VATS", "", "urn:x"] {
                for payload in &payloads {
                    let mut out = Vec::new();
                    write_say_name_response(&mut out, version, namespace, payload);
                    assert_eq!(out.len(), out.capacity(), "{namespace:?}");
                }
                let mut out = Vec::new();
                write_incoming_call_response(&mut out, version, namespace);
                assert_eq!(out.len(), out.capacity(), "{namespace:?}");
            }
        }
        // A namespace that needs escaping still answers whole (room to spare).
        let mut out = Vec::new();
        write_incoming_call_response(&mut out, SoapVersion::V11, "urn:a&\"b");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(text.contains(r#"xmlns:m="urn:a&amp;&quot;b""#), "{text}");
    }

    #[test]
    fn incoming_call_answer_returns_1() {
        let mut out = Vec::new();
        write_incoming_call_response(&mut out, SoapVersion::V11, "http://VATS");
        assert_eq!(
            text(&out),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body>\
<m:IncomingCallResponse xmlns:m=\"http://VATS\">\
<m:return xmlns:xs=\"http://www.w3.org/2001/XMLSchema\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">1</m:return>\
</m:IncomingCallResponse></soap:Body></soap:Envelope>"
        );
    }

    #[test]
    fn soap12_answer_uses_the_soap12_envelope() {
        let mut out = Vec::new();
        write_incoming_call_response(&mut out, SoapVersion::V12, "http://VATS");
        assert!(text(&out)
            .contains(r#"<soap:Envelope xmlns:soap="http://www.w3.org/2003/05/soap-envelope">"#));
        assert_eq!(element_text(text(&out), "m:return"), "1");
    }

    #[test]
    fn answer_namespace_defaults_to_vats_and_is_escaped() {
        let mut out = Vec::new();
        write_incoming_call_response(&mut out, SoapVersion::V11, "");
        assert!(text(&out).contains(r#"xmlns:m="http://VATS""#));
        let mut out = Vec::new();
        write_incoming_call_response(&mut out, SoapVersion::V11, "urn:a?b=1&c=\"<2>\"\t");
        assert!(
            text(&out).contains(r#"xmlns:m="urn:a?b=1&amp;c=&quot;&lt;2&gt;&quot;&#9;""#),
            "{}",
            text(&out)
        );
        element_text(text(&out), "m:return");
    }

    #[test]
    fn writers_append_to_what_is_there() {
        let mut out = b"prefix".to_vec();
        write_incoming_call_response(&mut out, SoapVersion::V11, "http://VATS");
        assert!(out.starts_with(b"prefix<?xml"));
    }

    #[test]
    fn soap11_fault_escapes_its_message() {
        let mut out = Vec::new();
        write_fault(
            &mut out,
            SoapVersion::V11,
            FaultCode::Client,
            "unknown entity '&foo;' <x>\u{1}",
        );
        assert_eq!(
            text(&out),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body><soap:Fault>\
<faultcode>soap:Client</faultcode><faultstring>unknown entity '&amp;foo;' &lt;x&gt;</faultstring>\
</soap:Fault></soap:Body></soap:Envelope>"
        );
        let mut out = Vec::new();
        write_fault(&mut out, SoapVersion::V11, FaultCode::Server, "store down");
        assert_eq!(element_text(text(&out), "faultcode"), "soap:Server");
    }

    #[test]
    fn soap12_fault_has_code_and_reason() {
        let mut out = Vec::new();
        write_fault(&mut out, SoapVersion::V12, FaultCode::Client, "a & b");
        assert_eq!(
            text(&out),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
<env:Envelope xmlns:env=\"http://www.w3.org/2003/05/soap-envelope\"><env:Body><env:Fault>\
<env:Code><env:Value>env:Sender</env:Value></env:Code>\
<env:Reason><env:Text xml:lang=\"en\">a &amp; b</env:Text></env:Reason>\
</env:Fault></env:Body></env:Envelope>"
        );
        let mut out = Vec::new();
        write_fault(&mut out, SoapVersion::V12, FaultCode::Server, "x");
        assert_eq!(element_text(text(&out), "env:Value"), "env:Receiver");
    }

    #[test]
    fn long_fault_message_is_cut_on_a_character_boundary() {
        let message = "я".repeat(2000);
        let mut out = Vec::new();
        write_fault(&mut out, SoapVersion::V11, FaultCode::Client, &message);
        let faultstring = element_text(text(&out), "faultstring");
        assert!(faultstring.len() <= MAX_FAULT_MESSAGE + "…".len());
        assert!(faultstring.ends_with("я…"), "{faultstring}");
    }

    #[test]
    fn written_answers_are_read_back_by_quick_xml_namespace_aware() {
        // The same reader that reads requests must accept what we write.
        let mut out = Vec::new();
        write_say_name_response(
            &mut out,
            SoapVersion::V12,
            "http://VATS",
            unknown_caller_payload(),
        );
        let mut reader = quick_xml::NsReader::from_reader(out.as_slice());
        let mut buf = Vec::new();
        let mut elements = 0;
        loop {
            match reader.read_resolved_event_into(&mut buf) {
                Ok((ns, Event::Start(_))) => {
                    assert!(matches!(ns, quick_xml::name::ResolveResult::Bound(_)));
                    elements += 1;
                }
                Ok((_, Event::Eof)) => break,
                Ok(_) => {}
                Err(e) => panic!("{e}"),
            }
            buf.clear();
        }
        assert_eq!(elements, 4);
    }
}
