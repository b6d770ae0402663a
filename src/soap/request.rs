//! Reading a request envelope: one streaming pass with quick-xml, no DOM.
//!
//! What the PBX sends differs between its versions (namespace `http://VATS`
//! or `http://test`, `<Number>` or `<number>`), so operations and their
//! fields are matched by local name, case-insensitively, in any namespace.
//! The envelope itself must be SOAP 1.1 or 1.2: that picks the answer's
//! version. Everything from outside is bounded: depth, element count, field
//! length; DTDs are refused before anything could be expanded or fetched.

use std::borrow::Cow;

use quick_xml::encoding::EncodingError;
use quick_xml::events::Event;
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

use super::{SoapVersion, SOAP11_ENVELOPE_NS, SOAP12_ENVELOPE_NS};
use crate::xml::{
    self, is_xml_whitespace, quote, resolve_reference, FieldText, LimitError, Limits, Nesting,
    ReferenceError,
};

/// What an envelope may hold. Depth: deeper than any honest envelope
/// (Envelope/Body/Operation/Field is 4), low enough that a nesting bomb
/// stops at once. Elements: in the whole document, Header included. Field:
/// bytes of one field's text after trimming (numbers and keys are short).
/// The body itself is bounded by `http` before it gets here.
const LIMITS: Limits = Limits {
    max_depth: 32,
    max_elements: 1000,
    max_field_bytes: 256,
    max_run_bytes: usize::MAX,
    max_document_bytes: u64::MAX,
};
const MAX_DEPTH: usize = LIMITS.max_depth;
const MAX_ELEMENTS: usize = LIMITS.max_elements;
pub(super) const MAX_FIELD_LEN: usize = LIMITS.max_field_bytes;

/// A request the PBX sent, read from its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The SOAP version of the envelope; the answer uses the same.
    pub version: SoapVersion,
    /// The namespace URI of the operation element (`http://VATS`,
    /// `http://test`...), `""` when it had none. The answer echoes it.
    pub namespace: String,
    pub operation: Operation,
}

/// One of the PBX's two questions, with its fields' text trimmed of
/// surrounding whitespace. A field that is present but empty is `""`: what an
/// empty number means is the caller's business.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operation {
    /// "Who is calling?"
    SayName { number: String },
    /// "Show the caller's card to the operator whose abonent key is `key`."
    IncomingCall { num_from: String, key: String },
}

impl Operation {
    /// The operation's name as the WSDL spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Operation::SayName { .. } => OpKind::SayName.name(),
            Operation::IncomingCall { .. } => OpKind::IncomingCall.name(),
        }
    }
}

/// Why a request body is not a request we can answer. The message is meant
/// for a SOAP faultstring: it says what was wrong and what is expected.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request body is not valid UTF-8")]
    NotUtf8,
    #[error("malformed XML at byte {position}: {error}")]
    Malformed {
        position: u64,
        error: quick_xml::Error,
    },
    #[error("DTDs and entity declarations are not accepted")]
    DocType,
    #[error(
        "unknown entity '&{0};': only &amp; &lt; &gt; &quot; &apos; and character references are accepted"
    )]
    UnknownEntity(String),
    #[error("character reference '&{0};' is not an allowed XML character")]
    BadCharRef(String),
    #[error("XML nested deeper than {MAX_DEPTH} elements")]
    TooDeep,
    #[error("more than {MAX_ELEMENTS} XML elements")]
    TooManyElements,
    #[error("request body holds no SOAP Envelope")]
    NoEnvelope,
    #[error("not a SOAP request: the root element is '{0}', expected a SOAP Envelope")]
    NotEnvelope(String),
    #[error(
        "the Envelope has no namespace: expected {SOAP11_ENVELOPE_NS} (SOAP 1.1) or {SOAP12_ENVELOPE_NS} (SOAP 1.2)"
    )]
    EnvelopeWithoutNamespace,
    #[error(
        "Envelope namespace '{0}' is not SOAP: expected {SOAP11_ENVELOPE_NS} (SOAP 1.1) or {SOAP12_ENVELOPE_NS} (SOAP 1.2)"
    )]
    WrongEnvelopeNamespace(String),
    #[error("the Envelope has no Body")]
    NoBody,
    #[error("the Body is empty: expected SayName or IncomingCall")]
    EmptyBody,
    #[error("unknown operation '{0}': expected SayName or IncomingCall")]
    UnknownOperation(String),
    #[error("the Body holds {second} after {first}: send one operation per request")]
    SecondOperation {
        first: &'static str,
        second: &'static str,
    },
    #[error("{operation} has no {field} element")]
    MissingField {
        operation: &'static str,
        field: &'static str,
    },
    #[error("{operation} has more than one {field} element")]
    DuplicateField {
        operation: &'static str,
        field: &'static str,
    },
    #[error("{field} must hold text, not elements")]
    FieldNotText { field: &'static str },
    #[error("{field} is longer than {MAX_FIELD_LEN} bytes")]
    FieldTooLong { field: &'static str },
    #[error("the request ends before the Envelope is closed")]
    Truncated,
    #[error("text or elements outside the Envelope")]
    ContentOutsideEnvelope,
}

/// Reads a SOAP 1.1 or 1.2 envelope holding `SayName` or `IncomingCall`.
pub fn parse_request(body: &[u8]) -> Result<Request, RequestError> {
    parse_request_with_span(body).map(|(request, _)| request)
}

/// [`parse_request`], and where in `body` the text of the operation's only
/// field lies when it was read from plain text alone (no reference, no
/// CDATA): what [`super::RequestReader`] learns a request's shape from.
pub(super) fn parse_request_with_span(
    body: &[u8],
) -> Result<(Request, Option<std::ops::Range<usize>>), RequestError> {
    // Checked once here so that every event below can be read as `&str`
    // without a second look at the encoding.
    let text = std::str::from_utf8(body).map_err(|_| RequestError::NotUtf8)?;
    let mut reader = NsReader::from_str(text);
    xml::configure(reader.config_mut());
    let mut parser = Parser::default();
    let (mut field_start, mut span, mut fields_read, mut plain) = (0, None, 0, true);
    loop {
        let before = reader.buffer_position();
        let (resolved, event) = match reader.read_resolved_event() {
            Ok(pair) => pair,
            Err(error) => {
                return Err(RequestError::Malformed {
                    position: reader.error_position(),
                    error,
                })
            }
        };
        let was_reading = parser.reading.is_some();
        match &event {
            Event::CData(_) | Event::GeneralRef(_) if was_reading => plain = false,
            _ => {}
        }
        let (is_start, is_end) = (
            matches!(event, Event::Start(_)),
            matches!(event, Event::End(_)),
        );
        if let Some(request) = parser.feed(resolved, event)? {
            let span = span.filter(|_| plain && fields_read == 1);
            return Ok((request, span));
        }
        let reading = parser.reading.is_some();
        if is_start && reading && !was_reading {
            field_start = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        } else if is_end && was_reading && !reading {
            fields_read += 1;
            span = usize::try_from(before).ok().map(|end| field_start..end);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    SayName,
    IncomingCall,
}

impl OpKind {
    fn from_local_name(local: &[u8]) -> Option<OpKind> {
        if local.eq_ignore_ascii_case(b"SayName") {
            Some(OpKind::SayName)
        } else if local.eq_ignore_ascii_case(b"IncomingCall") {
            Some(OpKind::IncomingCall)
        } else {
            None
        }
    }

    fn name(self) -> &'static str {
        match self {
            OpKind::SayName => "SayName",
            OpKind::IncomingCall => "IncomingCall",
        }
    }

    /// Field names as the WSDL spells them; indexes into `Parser::fields`.
    fn fields(self) -> &'static [&'static str] {
        match self {
            OpKind::SayName => &["Number"],
            OpKind::IncomingCall => &["NumFrom", "Key"],
        }
    }
}

/// Where the reader is in the envelope.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before the root element.
    #[default]
    Prolog,
    /// Inside the Envelope, before its Body.
    Envelope,
    /// Inside the Body, before its first child.
    Body,
    /// Inside the operation element.
    Operation(OpKind),
    /// The operation is read and the Body is still open: a second operation
    /// in it is refused, other elements are skipped.
    AfterOperation(OpKind),
    /// The Body is closed; the rest of the Envelope is only checked for
    /// well-formedness and bounds.
    Rest,
    /// After the Envelope's end tag.
    Epilog,
}

#[derive(Debug)]
struct Parser {
    phase: Phase,
    nesting: Nesting,
    version: Option<SoapVersion>,
    namespace: String,
    fields: [Option<FieldText>; 2],
    /// Index into `fields` of the field whose text is being read.
    reading: Option<usize>,
    request: Option<(SoapVersion, Operation)>,
}

impl Default for Parser {
    fn default() -> Parser {
        Parser {
            phase: Phase::default(),
            nesting: Nesting::new(&LIMITS),
            version: None,
            namespace: String::new(),
            fields: [None, None],
            reading: None,
            request: None,
        }
    }
}

impl Parser {
    /// Takes one event; `Some` once the document has ended well.
    fn feed(
        &mut self,
        resolved: ResolveResult<'_>,
        event: Event<'_>,
    ) -> Result<Option<Request>, RequestError> {
        match event {
            Event::Start(e) => self.start(resolved, e.local_name().as_ref(), e.name().as_ref())?,
            Event::Empty(e) => {
                self.start(resolved, e.local_name().as_ref(), e.name().as_ref())?;
                self.end()?;
            }
            Event::End(_) => self.end()?,
            // Text between elements (indentation, mostly) matters only
            // outside the root, where it must be whitespace.
            Event::Text(_) if self.nesting.depth() > 0 && self.reading.is_none() => {}
            Event::Text(e) => {
                let text = e.decode().map_err(malformed)?;
                self.text(&text)?;
            }
            Event::CData(e) => {
                if self.nesting.depth() == 0 {
                    return Err(RequestError::ContentOutsideEnvelope);
                }
                let text = e.decode().map_err(malformed)?;
                self.append(&text)?;
            }
            Event::GeneralRef(e) => {
                if self.nesting.depth() == 0 {
                    return Err(RequestError::ContentOutsideEnvelope);
                }
                let mut utf8 = [0; 4];
                let resolved = resolve_reference(&e, &mut utf8)?;
                self.append(resolved)?;
            }
            Event::DocType(_) => {
                xml::refuse_doctype(&event).map_err(|_| RequestError::DocType)?;
            }
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Eof => return self.finish().map(Some),
        }
        Ok(None)
    }

    fn start(
        &mut self,
        resolved: ResolveResult<'_>,
        local: &[u8],
        qname: &[u8],
    ) -> Result<(), RequestError> {
        self.nesting.enter().map_err(|e| match e {
            LimitError::TooDeep(_) => RequestError::TooDeep,
            LimitError::TooManyElements(_) => RequestError::TooManyElements,
        })?;
        match (self.phase, self.nesting.depth()) {
            (Phase::Prolog, _) => self.envelope(resolved, local, qname)?,
            (Phase::Epilog, _) => return Err(RequestError::ContentOutsideEnvelope),
            // The Envelope's namespace has already chosen the version; its
            // children are told apart by local name alone, and anything
            // other than the Body (a Header, say) is skipped.
            (Phase::Envelope, 2) if local == b"Body" => self.phase = Phase::Body,
            (Phase::Body, 3) => {
                let kind = OpKind::from_local_name(local)
                    .ok_or_else(|| RequestError::UnknownOperation(quote(qname)))?;
                self.namespace = namespace_of(&resolved)?;
                self.phase = Phase::Operation(kind);
            }
            (Phase::AfterOperation(first), 3) => {
                if let Some(second) = OpKind::from_local_name(local) {
                    return Err(RequestError::SecondOperation {
                        first: first.name(),
                        second: second.name(),
                    });
                }
            }
            (Phase::Operation(kind), 4) => self.field(kind, local)?,
            (Phase::Operation(kind), _) => {
                if let Some(i) = self.reading {
                    return Err(RequestError::FieldNotText {
                        field: kind.fields()[i],
                    });
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The root element: a SOAP Envelope, whose namespace picks the version.
    fn envelope(
        &mut self,
        resolved: ResolveResult<'_>,
        local: &[u8],
        qname: &[u8],
    ) -> Result<(), RequestError> {
        if local != b"Envelope" {
            return Err(RequestError::NotEnvelope(quote(qname)));
        }
        self.version = Some(match resolved {
            ResolveResult::Bound(ns) if ns.as_ref() == SOAP11_ENVELOPE_NS.as_bytes() => {
                SoapVersion::V11
            }
            ResolveResult::Bound(ns) if ns.as_ref() == SOAP12_ENVELOPE_NS.as_bytes() => {
                SoapVersion::V12
            }
            ResolveResult::Bound(ns) => {
                return Err(RequestError::WrongEnvelopeNamespace(quote(ns.as_ref())))
            }
            ResolveResult::Unbound | ResolveResult::Unknown(_) => {
                return Err(RequestError::EnvelopeWithoutNamespace)
            }
        });
        self.phase = Phase::Envelope;
        Ok(())
    }

    /// A child of the operation: one of its fields starts being read;
    /// anything else is skipped.
    fn field(&mut self, kind: OpKind, local: &[u8]) -> Result<(), RequestError> {
        let fields = kind.fields();
        if let Some(i) = fields
            .iter()
            .position(|f| local.eq_ignore_ascii_case(f.as_bytes()))
        {
            if self.fields[i].is_some() {
                return Err(RequestError::DuplicateField {
                    operation: kind.name(),
                    field: fields[i],
                });
            }
            self.fields[i] = Some(FieldText::new());
            self.reading = Some(i);
        }
        Ok(())
    }

    fn end(&mut self) -> Result<(), RequestError> {
        match (self.phase, self.nesting.depth()) {
            (Phase::Operation(_), 4) => {
                // The field's text is trimmed when the operation is taken.
                self.reading = None;
            }
            (Phase::Operation(kind), 3) => {
                let operation = self.take_operation(kind)?;
                if let Some(version) = self.version {
                    self.request = Some((version, operation));
                }
                self.phase = Phase::AfterOperation(kind);
            }
            (Phase::AfterOperation(_), 2) => self.phase = Phase::Rest,
            (Phase::Body, 2) => return Err(RequestError::EmptyBody),
            (Phase::Envelope, 1) => return Err(RequestError::NoBody),
            (Phase::Rest, 1) => self.phase = Phase::Epilog,
            _ => {}
        }
        self.nesting.leave();
        Ok(())
    }

    fn take_operation(&mut self, kind: OpKind) -> Result<Operation, RequestError> {
        let names = kind.fields();
        let mut take = |i: usize| {
            self.fields[i]
                .take()
                .map(FieldText::finish)
                .ok_or(RequestError::MissingField {
                    operation: kind.name(),
                    field: names[i],
                })
        };
        Ok(match kind {
            OpKind::SayName => Operation::SayName { number: take(0)? },
            OpKind::IncomingCall => Operation::IncomingCall {
                num_from: take(0)?,
                key: take(1)?,
            },
        })
    }

    fn text(&mut self, text: &str) -> Result<(), RequestError> {
        if self.nesting.depth() == 0 {
            if text.chars().all(is_xml_whitespace) {
                return Ok(());
            }
            return Err(RequestError::ContentOutsideEnvelope);
        }
        self.append(text)
    }

    /// Adds a piece of text to the field being read, if any. A field's text
    /// may come in several pieces (text, references, CDATA); surrounding
    /// whitespace is trimmed across them, and the limit applies to what is
    /// left, without ever buffering more than the limit.
    fn append(&mut self, piece: &str) -> Result<(), RequestError> {
        let (Some(i), Phase::Operation(kind)) = (self.reading, self.phase) else {
            return Ok(());
        };
        let Some(field) = &mut self.fields[i] else {
            return Ok(());
        };
        field
            .push(piece, MAX_FIELD_LEN)
            .map_err(|_| RequestError::FieldTooLong {
                field: kind.fields()[i],
            })
    }

    fn finish(&mut self) -> Result<Request, RequestError> {
        match (self.phase, self.request.take()) {
            (Phase::Epilog, Some((version, operation))) => Ok(Request {
                version,
                namespace: std::mem::take(&mut self.namespace),
                operation,
            }),
            (Phase::Prolog, _) => Err(RequestError::NoEnvelope),
            _ => Err(RequestError::Truncated),
        }
    }
}

/// The operation's namespace URI as text. quick-xml hands over the
/// attribute's raw value, so references in it are resolved here. A prefix
/// bound nowhere is let through as no namespace: an old PBX's sloppiness is
/// no reason to miss a call.
fn namespace_of(resolved: &ResolveResult<'_>) -> Result<String, RequestError> {
    let ResolveResult::Bound(ns) = resolved else {
        return Ok(String::new());
    };
    let raw = std::str::from_utf8(ns.as_ref()).map_err(|e| malformed(EncodingError::from(e)))?;
    if !raw.contains('&') {
        return Ok(raw.to_owned());
    }
    quick_xml::escape::unescape(raw)
        .map(Cow::into_owned)
        .map_err(malformed)
}

fn malformed(error: impl Into<quick_xml::Error>) -> RequestError {
    // Only decoding errors come this way, and the input is already known to
    // be UTF-8: they cannot happen, and a position would add nothing.
    RequestError::Malformed {
        position: 0,
        error: error.into(),
    }
}

impl From<ReferenceError> for RequestError {
    fn from(e: ReferenceError) -> RequestError {
        match e {
            ReferenceError::UnknownEntity(name) => RequestError::UnknownEntity(name),
            ReferenceError::BadCharRef(name) => RequestError::BadCharRef(name),
            // Only attribute values come back unterminated, and the envelope's
            // are never unescaped that way: quick-xml refuses a lone `&` in
            // text as malformed first.
            ReferenceError::Unterminated => RequestError::BadCharRef(String::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// The seed's SayName request, verbatim.
    const SEED_SAY_NAME: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
    <soap:Body>
        <SayName xmlns="http://VATS">
            <Number>89235292926</Number>
        </SayName>
    </soap:Body>
</soap:Envelope>
"#;

    /// The seed's IncomingCall request, verbatim.
    const SEED_INCOMING_CALL: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
    <soap:Body>
        <IncomingCall xmlns="http://VATS">
            <NumFrom>89235292926</NumFrom>
            <Key>gW3cyUJAtl50PhF</Key>
        </IncomingCall>
    </soap:Body>
</soap:Envelope>
"#;

    fn parse(body: &str) -> Result<Request, RequestError> {
        parse_request(body.as_bytes())
    }

    fn ok(body: &str) -> Request {
        match parse(body) {
            Ok(r) => r,
            Err(e) => panic!("expected a request, got error: {e}\n{body}"),
        }
    }

    fn err(body: &str) -> RequestError {
        match parse(body) {
            Ok(r) => panic!("expected an error, got {r:?}\n{body}"),
            Err(e) => e,
        }
    }

    fn number(body: &str) -> String {
        match ok(body).operation {
            Operation::SayName { number } => number,
            other => panic!("expected SayName, got {other:?}"),
        }
    }

    /// A SOAP 1.1 SayName whose Number element holds `inner` verbatim.
    fn say_name_with(inner: &str) -> String {
        format!(
            r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><SayName xmlns="http://VATS"><Number>{inner}</Number></SayName></soap:Body></soap:Envelope>"#
        )
    }

    /// A SOAP 1.1 envelope whose Body holds `body` verbatim.
    fn envelope(body: &str) -> String {
        format!(
            r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>{body}</soap:Body></soap:Envelope>"#
        )
    }

    #[test]
    fn seed_say_name_is_read() {
        let r = ok(SEED_SAY_NAME);
        assert_eq!(r.version, SoapVersion::V11);
        assert_eq!(r.namespace, "http://VATS");
        assert_eq!(
            r.operation,
            Operation::SayName {
                number: "89235292926".into()
            }
        );
        assert_eq!(r.operation.name(), "SayName");
    }

    #[test]
    fn seed_incoming_call_is_read() {
        let r = ok(SEED_INCOMING_CALL);
        assert_eq!(r.version, SoapVersion::V11);
        assert_eq!(r.namespace, "http://VATS");
        assert_eq!(
            r.operation,
            Operation::IncomingCall {
                num_from: "89235292926".into(),
                key: "gW3cyUJAtl50PhF".into()
            }
        );
        assert_eq!(r.operation.name(), "IncomingCall");
    }

    #[test]
    fn old_pbx_namespace_and_lowercase_number_are_read() {
        let r = ok(r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
    <soap:Body>
        <SayName xmlns="http://test">
            <number>89235292926</number>
        </SayName>
    </soap:Body>
</soap:Envelope>"#);
        assert_eq!(r.namespace, "http://test");
        assert_eq!(
            r.operation,
            Operation::SayName {
                number: "89235292926".into()
            }
        );
    }

    #[test]
    fn operation_and_field_names_match_case_insensitively() {
        let r = ok(&envelope(
            "<incomingcall><NUMFROM>244</NUMFROM><key>k</key></incomingcall>",
        ));
        assert_eq!(
            r.operation,
            Operation::IncomingCall {
                num_from: "244".into(),
                key: "k".into()
            }
        );
    }

    #[test]
    fn soap12_envelope_is_read_as_v12() {
        let r = ok(r#"<?xml version="1.0"?>
<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope">
  <env:Body><SayName xmlns="http://VATS"><Number>244</Number></SayName></env:Body>
</env:Envelope>"#);
        assert_eq!(r.version, SoapVersion::V12);
        assert_eq!(r.namespace, "http://VATS");
        assert_eq!(
            r.operation,
            Operation::SayName {
                number: "244".into()
            }
        );
    }

    #[test]
    fn prefixed_operation_is_read_with_its_namespace() {
        let r = ok(&envelope(
            r#"<v:SayName xmlns:v="http://VATS"><v:Number>89235292926</v:Number></v:SayName>"#,
        ));
        assert_eq!(r.namespace, "http://VATS");
        assert_eq!(
            r.operation,
            Operation::SayName {
                number: "89235292926".into()
            }
        );
    }

    #[test]
    fn namespace_declared_on_the_envelope_applies_to_the_operation() {
        let r = ok(
            r#"<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" xmlns:v="http://VATS"><s:Body><v:SayName><v:Number>1</v:Number></v:SayName></s:Body></s:Envelope>"#,
        );
        assert_eq!(r.namespace, "http://VATS");
    }

    #[test]
    fn operation_without_namespace_has_an_empty_namespace() {
        let r = ok(&envelope("<SayName><Number>244</Number></SayName>"));
        assert_eq!(r.namespace, "");
        // An unbound prefix is sloppy XML, not a reason to miss a call.
        let r = ok(&envelope("<x:SayName><x:Number>244</x:Number></x:SayName>"));
        assert_eq!(r.namespace, "");
    }

    #[test]
    fn escaped_namespace_is_unescaped() {
        let r = ok(&envelope(
            r#"<SayName xmlns="urn:a?b=1&amp;c=&quot;2&quot;"><Number>1</Number></SayName>"#,
        ));
        assert_eq!(r.namespace, r#"urn:a?b=1&c="2""#);
    }

    #[test]
    fn whitespace_and_newlines_around_the_number_are_trimmed() {
        assert_eq!(
            number(&say_name_with("\n\t  89235292926 \r\n  ")),
            "89235292926"
        );
        // Inner whitespace is part of the value: the caller normalizes it.
        assert_eq!(
            number(&say_name_with(" +7 923 529-29-26 ")),
            "+7 923 529-29-26"
        );
    }

    #[test]
    fn number_split_by_entity_and_char_refs_is_reassembled() {
        assert_eq!(
            number(&say_name_with("8923&#53;29&#x32;926")),
            "89235292926"
        );
        assert_eq!(number(&say_name_with("&#56;9235292926")), "89235292926");
        assert_eq!(
            number(&say_name_with("a&amp;b&lt;c&gt;d&quot;e&apos;f")),
            "a&b<c>d\"e'f"
        );
        assert_eq!(number(&say_name_with("&#1087;&#x440;")), "пр");
        // A reference to whitespace is trimmed like any other whitespace.
        assert_eq!(number(&say_name_with("&#32;244&#10;")), "244");
    }

    #[test]
    fn cdata_is_accepted_as_text() {
        assert_eq!(
            number(&say_name_with("<![CDATA[89235292926]]>")),
            "89235292926"
        );
        assert_eq!(
            number(&say_name_with(" 8923<![CDATA[5292]]>926 ")),
            "89235292926"
        );
        assert_eq!(number(&say_name_with("<![CDATA[<&>]]>")), "<&>");
    }

    #[test]
    fn comments_and_processing_instructions_are_ignored() {
        assert_eq!(
            number(&say_name_with("89<!-- c -->235292926<?pi x?>")),
            "89235292926"
        );
    }

    #[test]
    fn header_is_skipped() {
        let r = ok(
            r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
  <soap:Header><wsse:Security xmlns:wsse="urn:x"><wsse:Token>t</wsse:Token></wsse:Security><SayName><Number>0</Number></SayName></soap:Header>
  <soap:Body><SayName xmlns="http://VATS"><Number>244</Number></SayName></soap:Body>
</soap:Envelope>"#,
        );
        assert_eq!(
            r.operation,
            Operation::SayName {
                number: "244".into()
            }
        );
    }

    #[test]
    fn unknown_extra_children_are_ignored() {
        assert_eq!(
            number(&envelope(
                "<SayName><Extra><Deep>x</Deep></Extra><Number>244</Number><More/></SayName><Another/>"
            )),
            "244"
        );
    }

    #[test]
    fn a_second_operation_in_the_body_is_refused() {
        let say = "<SayName xmlns=\"http://VATS\"><Number>244</Number></SayName>";
        let call =
            "<IncomingCall xmlns=\"http://VATS\"><NumFrom>1</NumFrom><Key>k</Key></IncomingCall>";
        let e = err(&envelope(&format!("{call}{call}")));
        assert!(
            matches!(
                e,
                RequestError::SecondOperation {
                    first: "IncomingCall",
                    second: "IncomingCall"
                }
            ),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            "the Body holds IncomingCall after IncomingCall: send one operation per request"
        );
        let e = err(&envelope(&format!("{say}<Other/>\n<sayname/>")));
        assert_eq!(
            e.to_string(),
            "the Body holds SayName after SayName: send one operation per request"
        );
        // An operation outside the Body (here in the Header) is not one.
        let header = format!(
            r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>{say}</soap:Body><soap:Header>{call}</soap:Header></soap:Envelope>"#
        );
        assert_eq!(number(&header), "244");
    }

    #[test]
    fn missing_number_is_named() {
        let e = err(&envelope(
            "<SayName xmlns=\"http://VATS\"><Num>1</Num></SayName>",
        ));
        assert!(
            matches!(
                e,
                RequestError::MissingField {
                    field: "Number",
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "SayName has no Number element");
        let e = err(&envelope("<SayName/>"));
        assert_eq!(e.to_string(), "SayName has no Number element");
        let e = err(&envelope(
            "<IncomingCall><NumFrom>1</NumFrom></IncomingCall>",
        ));
        assert_eq!(e.to_string(), "IncomingCall has no Key element");
    }

    #[test]
    fn empty_number_is_an_empty_string() {
        assert_eq!(number(&say_name_with("")), "");
        assert_eq!(number(&say_name_with("   \n ")), "");
        assert_eq!(number(&envelope("<SayName><Number/></SayName>")), "");
    }

    #[test]
    fn duplicate_field_is_refused() {
        let e = err(&envelope(
            "<SayName><Number>1</Number><number>2</number></SayName>",
        ));
        assert_eq!(e.to_string(), "SayName has more than one Number element");
    }

    #[test]
    fn field_holding_elements_is_refused() {
        let e = err(&envelope("<SayName><Number><b>1</b></Number></SayName>"));
        assert_eq!(e.to_string(), "Number must hold text, not elements");
    }

    #[test]
    fn unknown_operation_is_named() {
        let e = err(&envelope(
            "<Foo xmlns=\"http://VATS\"><Number>1</Number></Foo>",
        ));
        assert_eq!(
            e.to_string(),
            "unknown operation 'Foo': expected SayName or IncomingCall"
        );
    }

    #[test]
    fn overlong_names_in_messages_are_cut() {
        let name = "F".repeat(10_000);
        let e = err(&envelope(&format!("<{name}/>")));
        assert!(e.to_string().len() < 200, "{e}");
        assert!(e.to_string().contains('…'));
    }

    #[test]
    fn empty_body_and_missing_body_are_told_apart() {
        let e = err(&envelope(""));
        assert_eq!(
            e.to_string(),
            "the Body is empty: expected SayName or IncomingCall"
        );
        let e = err(
            r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Header/></soap:Envelope>"#,
        );
        assert_eq!(e.to_string(), "the Envelope has no Body");
        let e = err(r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"/>"#);
        assert_eq!(e.to_string(), "the Envelope has no Body");
    }

    #[test]
    fn not_an_envelope_is_refused() {
        let e = err("<SayName xmlns=\"http://VATS\"><Number>1</Number></SayName>");
        assert_eq!(
            e.to_string(),
            "not a SOAP request: the root element is 'SayName', expected a SOAP Envelope"
        );
        assert!(matches!(err(""), RequestError::NoEnvelope));
        assert!(matches!(err("  \n"), RequestError::NoEnvelope));
        assert!(matches!(
            err("<?xml version=\"1.0\"?>"),
            RequestError::NoEnvelope
        ));
        assert!(matches!(err("hello"), RequestError::ContentOutsideEnvelope));
        assert!(err("{\"Number\":\"1\"}")
            .to_string()
            .contains("outside the Envelope"));
    }

    #[test]
    fn wrong_envelope_namespace_is_refused() {
        let e = err(
            r#"<soap:Envelope xmlns:soap="http://example.com/soap"><soap:Body><SayName><Number>1</Number></SayName></soap:Body></soap:Envelope>"#,
        );
        assert!(
            e.to_string()
                .starts_with("Envelope namespace 'http://example.com/soap' is not SOAP"),
            "{e}"
        );
        let e = err("<Envelope><Body><SayName><Number>1</Number></SayName></Body></Envelope>");
        assert!(matches!(e, RequestError::EnvelopeWithoutNamespace), "{e:?}");
        assert!(e
            .to_string()
            .contains("http://schemas.xmlsoap.org/soap/envelope/"));
    }

    #[test]
    fn billion_laughs_doctype_is_refused() {
        let body = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol9 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
]>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><SayName><Number>&lol9;</Number></SayName></soap:Body></soap:Envelope>"#;
        let e = err(body);
        assert!(matches!(e, RequestError::DocType), "{e:?}");
        assert_eq!(
            e.to_string(),
            "DTDs and entity declarations are not accepted"
        );
    }

    #[test]
    fn external_entity_is_refused() {
        let body = r#"<?xml version="1.0"?>
<!DOCTYPE soap:Envelope [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><SayName><Number>&x;</Number></SayName></soap:Body></soap:Envelope>"#;
        assert!(matches!(err(body), RequestError::DocType));
        // A DOCTYPE anywhere is refused, not only before the root.
        let body = say_name_with("1").replace("<soap:Body>", "<soap:Body><!DOCTYPE x>");
        assert!(parse(&body).is_err());
    }

    #[test]
    fn undefined_entity_is_refused() {
        let e = err(&say_name_with("&foo;"));
        assert!(
            matches!(&e, RequestError::UnknownEntity(n) if n == "foo"),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("unknown entity '&foo;'"), "{e}");
        // Also outside a field: nothing in the envelope may name an entity.
        assert!(matches!(
            err(&envelope("&foo;<SayName><Number>1</Number></SayName>")),
            RequestError::UnknownEntity(_)
        ));
    }

    #[test]
    fn char_refs_to_forbidden_characters_are_refused() {
        for r in [
            "&#0;",
            "&#1;",
            "&#x1F;",
            "&#xFFFE;",
            "&#xD800;",
            "&#x110000;",
            "&#-1;",
            "&#xZZ;",
        ] {
            let e = err(&say_name_with(r));
            assert!(matches!(e, RequestError::BadCharRef(_)), "{r}: {e:?}");
        }
    }

    #[test]
    fn dangling_ampersand_is_malformed() {
        assert!(matches!(
            err(&say_name_with("1 & 2")),
            RequestError::Malformed { .. }
        ));
    }

    #[test]
    fn deep_nesting_is_refused_quickly() {
        let depth = 100_000;
        let mut body = String::with_capacity(depth * 8);
        body.push_str(r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><SayName><Number>"#);
        for _ in 0..depth {
            body.push_str("<a>");
        }
        for _ in 0..depth {
            body.push_str("</a>");
        }
        body.push_str("</Number></SayName></soap:Body></soap:Envelope>");
        let started = Instant::now();
        assert!(matches!(err(&body), RequestError::FieldNotText { .. }));
        let body = body
            .replace("<Number>", "<Extra>")
            .replace("</Number>", "</Extra>");
        assert!(matches!(err(&body), RequestError::TooDeep));
        // Deep nesting inside a skipped Header is bounded too.
        let header = "<a>".repeat(depth);
        let body = format!(
            r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Header>{header}"#
        );
        let e = err(&body);
        assert_eq!(e.to_string(), "XML nested deeper than 32 elements");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn too_many_elements_are_refused() {
        let many = "<x/>".repeat(MAX_ELEMENTS);
        let e = err(&envelope(&format!(
            "<SayName>{many}<Number>1</Number></SayName>"
        )));
        assert_eq!(e.to_string(), "more than 1000 XML elements");
        // Just under the bound still reads.
        let some = "<x/>".repeat(MAX_ELEMENTS - 10);
        assert_eq!(
            number(&envelope(&format!(
                "<SayName>{some}<Number>1</Number></SayName>"
            ))),
            "1"
        );
    }

    #[test]
    fn invalid_utf8_is_refused() {
        let mut body = say_name_with("1").into_bytes();
        body.extend_from_slice(&[0xff, 0xfe]);
        let e = parse_request(&body).map(|_| ()).err();
        assert!(matches!(e, Some(RequestError::NotUtf8)), "{e:?}");
        // windows-1251 Cyrillic is not UTF-8 either.
        let mut cp1251 = say_name_with("X").into_bytes();
        if let Some(x) = cp1251.iter().position(|&b| b == b'X') {
            cp1251[x] = 0xCF; // 'П' in windows-1251
        }
        assert!(matches!(parse_request(&cp1251), Err(RequestError::NotUtf8)));
    }

    #[test]
    fn utf8_byte_order_mark_is_accepted() {
        let body = format!("\u{FEFF}{SEED_SAY_NAME}");
        assert_eq!(number(&body), "89235292926");
    }

    #[test]
    fn every_truncation_of_the_seeds_is_refused_without_panic() {
        for seed in [SEED_SAY_NAME, SEED_INCOMING_CALL] {
            let bytes = seed.as_bytes();
            // The seed ends in a newline after the end tag: the whole document
            // closes at `len - 1`.
            let complete = seed.trim_end().len();
            for cut in 0..bytes.len() {
                let result = parse_request(&bytes[..cut]);
                if cut < complete {
                    assert!(result.is_err(), "prefix of {cut} bytes was accepted");
                } else {
                    assert!(result.is_ok(), "complete document of {cut} bytes refused");
                }
            }
        }
    }

    #[test]
    fn unclosed_and_mismatched_tags_are_refused() {
        assert!(parse(&say_name_with("1").replace("</soap:Envelope>", "")).is_err());
        let e = err(&say_name_with("1").replace("</Number>", "</Numbr>"));
        assert!(matches!(e, RequestError::Malformed { .. }), "{e:?}");
        assert!(e.to_string().starts_with("malformed XML at byte "), "{e}");
        assert!(parse(&say_name_with("1").replace("</SayName>", "</SayName></x>")).is_err());
    }

    #[test]
    fn trailing_garbage_after_the_envelope_is_refused() {
        let e = err(&format!("{SEED_SAY_NAME}garbage"));
        assert!(matches!(e, RequestError::ContentOutsideEnvelope), "{e:?}");
        assert!(parse(&format!("{SEED_SAY_NAME}<second/>")).is_err());
        // Whitespace and comments after it are fine.
        assert!(parse(&format!("{SEED_SAY_NAME}\n<!-- end -->\n")).is_ok());
    }

    #[test]
    fn field_longer_than_the_limit_is_refused() {
        let long = "1".repeat(MAX_FIELD_LEN + 1);
        let e = err(&say_name_with(&long));
        assert_eq!(e.to_string(), "Number is longer than 256 bytes");
        // Reassembled pieces count together.
        let half = "1".repeat(MAX_FIELD_LEN / 2 + 1);
        assert!(matches!(
            err(&say_name_with(&format!("{half}&#49;{half}"))),
            RequestError::FieldTooLong { field: "Number" }
        ));
        let e = err(&envelope(&format!(
            "<IncomingCall><NumFrom>1</NumFrom><Key>{long}</Key></IncomingCall>"
        )));
        assert_eq!(e.to_string(), "Key is longer than 256 bytes");
    }

    #[test]
    fn field_at_the_limit_with_surrounding_whitespace_is_read() {
        let exact = "1".repeat(MAX_FIELD_LEN);
        let padding = " ".repeat(10_000);
        assert_eq!(
            number(&say_name_with(&format!("{padding}{exact}{padding}"))),
            exact
        );
        assert_eq!(
            number(&say_name_with(&format!(
                "{exact}{padding}<!-- x -->\n{padding}"
            ))),
            exact
        );
        // Whitespace that would end up inside the value counts.
        let e = err(&say_name_with(&format!("{exact}{padding}<!-- x -->1")));
        assert!(matches!(e, RequestError::FieldTooLong { .. }), "{e:?}");
        let e = err(&say_name_with(&format!("{exact} 1")));
        assert!(matches!(e, RequestError::FieldTooLong { .. }), "{e:?}");
    }

    #[test]
    fn zeep_requests_are_read() {
        // Produced by python-zeep 4 from wsdl/vats.wsdl (client.create_message).
        let r = ok(r#"<?xml version='1.0' encoding='utf-8'?>
<soap-env:Envelope xmlns:soap-env="http://schemas.xmlsoap.org/soap/envelope/"><soap-env:Body><ns0:SayName xmlns:ns0="http://VATS"><ns0:Number>89235292926</ns0:Number></ns0:SayName></soap-env:Body></soap-env:Envelope>"#);
        assert_eq!(
            (r.version, r.namespace.as_str(), r.operation),
            (
                SoapVersion::V11,
                "http://VATS",
                Operation::SayName {
                    number: "89235292926".into()
                }
            )
        );
        let r = ok(r#"<?xml version='1.0' encoding='utf-8'?>
<soap-env:Envelope xmlns:soap-env="http://schemas.xmlsoap.org/soap/envelope/"><soap-env:Body><ns0:IncomingCall xmlns:ns0="http://VATS"><ns0:NumFrom>89235292926</ns0:NumFrom><ns0:Key>gW3cyUJAtl50PhF</ns0:Key></ns0:IncomingCall></soap-env:Body></soap-env:Envelope>"#);
        assert_eq!(
            r.operation,
            Operation::IncomingCall {
                num_from: "89235292926".into(),
                key: "gW3cyUJAtl50PhF".into()
            }
        );
        let r = ok(r#"<?xml version='1.0' encoding='utf-8'?>
<soap-env:Envelope xmlns:soap-env="http://www.w3.org/2003/05/soap-envelope"><soap-env:Body><ns0:SayName xmlns:ns0="http://VATS"><ns0:Number>89235292926</ns0:Number></ns0:SayName></soap-env:Body></soap-env:Envelope>"#);
        assert_eq!(r.version, SoapVersion::V12);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic fuzz: mutate the seed byte by byte.
        let seed = SEED_INCOMING_CALL.as_bytes();
        let mut state: u32 = 0x9E37_79B9;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let mut body = seed.to_vec();
            let at = state as usize % body.len();
            body[at] = (state >> 8) as u8;
            if state & 1 == 0 {
                body.truncate((state >> 3) as usize % body.len());
            }
            let _ = parse_request(&body);
        }
    }
}
