//! Reading a SayName by its number alone when the envelope around it is
//! the one the PBX sent last time.
//!
//! A PBX writes every SayName from one template: the same bytes but the
//! number. [`RequestReader`] keeps the shape of the last SayName it read in
//! full (the bytes before the number's text and after it); a body made of
//! exactly those bytes around a plain number is the same document with
//! another text in one element, so the full read would give the same
//! request with that text, and the number is taken without reading the XML
//! again. "Plain" is narrow on purpose: printable ASCII and XML whitespace,
//! no `<`, `&`, `>` or `]`, at most [`MAX_FIELD_LEN`] bytes. Anything else
//! (another template, an entity, a long or odd number, an IncomingCall) is
//! read in full, every check applied, and a SayName read so becomes the
//! shape. On the 2-core machine the full read is about a tenth of a
//! SayName's CPU; this path, two comparisons of a few hundred bytes.

use std::ops::Range;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::request::{parse_request_with_span, MAX_FIELD_LEN};
use super::{Operation, Request, RequestError, SayNameFrame, SoapVersion};

/// Reads request bodies, remembering the shape of the last SayName.
pub struct RequestReader {
    /// [`Shape::none`] until a SayName was read in full.
    shape: ArcSwap<Shape>,
}

impl Default for RequestReader {
    fn default() -> RequestReader {
        RequestReader {
            shape: ArcSwap::from_pointee(Shape::none()),
        }
    }
}

/// A SayName envelope without its number.
struct Shape {
    before: Box<[u8]>,
    after: Box<[u8]>,
    version: SoapVersion,
    namespace: String,
    /// The answers' shared bytes, for this version and namespace.
    frame: SayNameFrame,
    /// Taken from a SayName read in full (else [`Shape::none`]).
    learned: bool,
}

impl RequestReader {
    pub fn new() -> RequestReader {
        RequestReader::default()
    }

    /// What [`super::parse_request`] reads from `body`, by shape when it
    /// can: what the tests compare the two reads with.
    #[cfg(test)]
    fn read(&self, body: &[u8]) -> Result<Request, RequestError> {
        match self.read_shaped(body) {
            Some(shaped) => Ok(shaped.to_request()),
            None => self.read_in_full(body),
        }
    }

    /// A SayName of the last shape read, by its number alone: what
    /// [`super::parse_request`] would read, borrowed (the number from `body`,
    /// the rest from the shape) instead of copied into a [`Request`]. `None`
    /// for anything else, which [`RequestReader::read_in_full`] reads.
    pub fn read_shaped<'a>(&self, body: &'a [u8]) -> Option<Shaped<'a>> {
        // arc-swap's guard, not a counted reference: the count would be
        // written by both cores on every SayName (a cache line passed
        // between them each time, perf). Hold it for the answer only.
        let shape = self.shape.load();
        let number = shape.number_in(body)?;
        Some(Shaped { shape, number })
    }

    /// Reads `body` with the full XML reader, and keeps the shape of a
    /// SayName for the next ones.
    pub fn read_in_full(&self, body: &[u8]) -> Result<Request, RequestError> {
        let (request, span) = parse_request_with_span(body)?;
        if let (Operation::SayName { .. }, Some(span)) = (&request.operation, span) {
            if let Some(shape) = Shape::of(body, span, &request) {
                self.shape.store(Arc::new(shape));
            }
        }
        Ok(request)
    }

    #[cfg(test)]
    fn read_by_shape(&self, body: &[u8]) -> Option<Request> {
        self.read_shaped(body).map(|shaped| shaped.to_request())
    }
}

/// A SayName read by its shape ([`RequestReader::read_shaped`]).
pub struct Shaped<'a> {
    shape: arc_swap::Guard<Arc<Shape>>,
    number: &'a str,
}

impl Shaped<'_> {
    fn shape(&self) -> &Shape {
        &self.shape
    }

    pub fn version(&self) -> SoapVersion {
        self.shape().version
    }

    /// The operation's namespace, which the answer echoes.
    pub fn namespace(&self) -> &str {
        &self.shape().namespace
    }

    /// What its answer shares with every answer in this shape.
    pub fn frame(&self) -> &SayNameFrame {
        &self.shape().frame
    }

    /// The number, trimmed as the full read trims it.
    pub fn number(&self) -> &str {
        self.number
    }

    #[cfg(test)]
    fn to_request(&self) -> Request {
        Request {
            version: self.version(),
            namespace: self.shape().namespace.clone(),
            operation: Operation::SayName {
                number: self.number.to_owned(),
            },
        }
    }
}

impl Shape {
    /// The shape of `body`, a SayName whose number's text is `body[span]`,
    /// if that text is plain and the bytes around it end and begin a tag.
    fn of(body: &[u8], span: Range<usize>, request: &Request) -> Option<Shape> {
        let before = body.get(..span.start)?;
        let after = body.get(span.end..)?;
        let text = body.get(span)?;
        if before.last() != Some(&b'>') || !after.starts_with(b"</") || !is_plain(text) {
            return None;
        }
        Some(Shape {
            before: before.into(),
            after: after.into(),
            version: request.version,
            namespace: request.namespace.clone(),
            frame: SayNameFrame::new(request.version, &request.namespace),
            learned: true,
        })
    }

    /// The shape no body has: what the reader knows before its first SayName.
    fn none() -> Shape {
        Shape {
            before: Box::default(),
            after: Box::default(),
            version: SoapVersion::V11,
            namespace: String::new(),
            frame: SayNameFrame::new(SoapVersion::V11, ""),
            learned: false,
        }
    }

    /// The number in `body`, trimmed as the full read trims it, if `body`
    /// is this shape around a plain text.
    fn number_in<'a>(&self, body: &'a [u8]) -> Option<&'a str> {
        if !self.learned {
            return None;
        }
        let text = body
            .strip_prefix(&*self.before)?
            .strip_suffix(&*self.after)?;
        if !is_plain(text) {
            return None;
        }
        // Plain text is ASCII: always a str.
        let text = std::str::from_utf8(text).ok()?;
        Some(text.trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n')))
    }
}

/// Text the full read would take as it is: printable ASCII or XML
/// whitespace, no markup, within the field's limit.
fn is_plain(text: &[u8]) -> bool {
    text.len() <= MAX_FIELD_LEN
        && text.iter().all(|&b| {
            matches!(b, b' ' | b'\t' | b'\r' | b'\n')
                || (b.is_ascii_graphic() && !matches!(b, b'<' | b'&' | b'>' | b']'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soap::parse_request;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    const SAY_NAME: (&str, &str) = (
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\">\n    <soap:Body>\n        <SayName xmlns=\"http://VATS\">\n            <Number>",
        "</Number>\n        </SayName>\n    </soap:Body>\n</soap:Envelope>\n",
    );

    fn say_name(number: &str) -> Vec<u8> {
        format!("{}{number}{}", SAY_NAME.0, SAY_NAME.1).into_bytes()
    }

    fn outcome(r: Result<Request, RequestError>) -> Result<Request, String> {
        r.map_err(|e| e.to_string())
    }

    #[test]
    fn a_say_name_of_the_last_shape_is_read_by_its_number_alone() {
        let reader = RequestReader::new();
        assert!(reader.read_by_shape(&say_name("89160000001")).is_none());
        reader.read(&say_name("89160000001")).expect("read in full");
        let request = reader
            .read_by_shape(&say_name(" 8 (916) 000-00-02\n"))
            .expect("by shape");
        assert_eq!(
            request.operation,
            Operation::SayName {
                number: "8 (916) 000-00-02".into()
            }
        );
        assert_eq!(request.namespace, "http://VATS");
        assert_eq!(request.version, SoapVersion::V11);
    }

    #[test]
    fn anything_but_a_plain_number_in_the_same_shape_is_read_in_full() {
        let reader = RequestReader::new();
        reader.read(&say_name("1")).expect("read in full");
        for number in [
            "8&#57;16",
            "<![CDATA[1]]>",
            "1</Number><Number>2",
            "я",
            "a]]>b",
        ] {
            assert!(
                reader.read_by_shape(&say_name(number)).is_none(),
                "{number}"
            );
        }
        assert!(reader
            .read_by_shape(&say_name(&"1".repeat(MAX_FIELD_LEN + 1)))
            .is_none());
        // Another envelope around the same number: read in full.
        let other = format!("{}1{}", SAY_NAME.0, SAY_NAME.1)
            .replace("http://VATS", "http://test")
            .into_bytes();
        assert!(reader.read_by_shape(&other).is_none());
        assert_eq!(
            reader.read(&other).expect("read").namespace,
            "http://test",
            "and it becomes the shape"
        );
    }

    /// Random texts in the number's place, known shape or not, give what
    /// the full read gives (the same request or the same refusal).
    #[test]
    fn reading_by_shape_answers_as_the_full_read_does() {
        let reader = RequestReader::new();
        reader.read(&say_name("89160000001")).expect("learn");
        let plain: Vec<char> = " \t\r\n0123456789+-()#*abcx;/!".chars().collect();
        let odd: Vec<char> = "<>&]я[CDATA\u{1}".chars().collect();
        let mut rng = StdRng::seed_from_u64(13);
        for _ in 0..20_000 {
            let len = rng.random_range(0..(MAX_FIELD_LEN + 8));
            let text: String = (0..len)
                .map(|_| {
                    let set = if rng.random_bool(0.99) { &plain } else { &odd };
                    set[rng.random_range(0..set.len())]
                })
                .collect();
            let body = say_name(&text);
            assert_eq!(
                outcome(reader.read(&body)),
                outcome(parse_request(&body)),
                "{text:?}"
            );
            // Keep the seed's shape: a full read of another shape would
            // replace it.
            reader.read(&say_name("1")).expect("learn again");
        }
    }
}
