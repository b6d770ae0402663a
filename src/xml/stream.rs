//! A document read as a stream of events, from any `Read` (a file of
//! hundreds of megabytes), with every bound of [`Limits`] enforced and the
//! text decoded from its encoding. No DOM: the caller keeps what it needs.
//!
//! quick-xml's buffered reader holds one whole event (a tag, a run of text)
//! in memory. [`Metered`], the buffer under it, counts what each event
//! takes and fails the read once it passes `max_run_bytes`, so a
//! gigabyte-long tag or text costs at most that bound plus one read buffer,
//! never the gigabyte. It also counts lines, for error messages.

use std::borrow::Cow;
use std::io::{self, BufRead, Read};
use std::ops::Range;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use super::encoding::{sniff_wide, Encoding, EncodingChoice};
use super::limits::{LimitError, Limits, Nesting};
use super::text::{configure, is_xml_whitespace, quote, resolve_reference, unescape_value};

/// Bytes read from the input at a time.
const READ_CHUNK: usize = 64 * 1024;

/// What is wrong with a document, and where: the line it was met on and the
/// path of the element open there (`/Export/Clients/Client/Name`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}{}: {kind}", if .path.is_empty() { String::new() } else { format!(", {}", .path) })]
pub struct XmlError {
    pub line: u64,
    pub path: String,
    pub kind: XmlErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlErrorKind {
    #[error("malformed XML: {0}")]
    Malformed(String),
    #[error("DTDs and entity declarations are not accepted")]
    DocType,
    #[error(transparent)]
    Reference(#[from] super::text::ReferenceError),
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error("a tag or run of text is longer than {0} bytes")]
    RunTooLong(usize),
    #[error("the document is larger than {0} bytes")]
    TooLarge(u64),
    #[error("bytes that are not valid {0}")]
    BadBytes(&'static str),
    #[error("encoding '{0}' is not supported: only UTF-8 and windows-1251 are")]
    UnsupportedEncoding(String),
    #[error("the document ends before its root element is closed")]
    Truncated,
    #[error("the document holds no element")]
    NoRoot,
    #[error("text or elements outside the root element")]
    ContentOutsideRoot,
    #[error("cannot read: {0}")]
    Io(String),
}

/// One step through the document. Element names are local (prefixes
/// dropped); [`XmlStream::path`], [`XmlStream::attributes`] and
/// [`XmlStream::text`] tell more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XmlEvent {
    /// An element starts (an empty element gives `Start` then `End`).
    Start,
    /// The element [`XmlStream::path`] names ends.
    End,
    /// A piece of an element's text ([`XmlStream::text`]), decoded,
    /// references resolved. One element's text may come in several pieces
    /// (text, references, CDATA).
    Text,
    /// The document ended well.
    Eof,
}

/// Reads one document; see the module's documentation.
pub struct XmlStream<R> {
    reader: Reader<Metered<R>>,
    buf: Vec<u8>,
    state: State,
}

/// Everything but the reader and its buffer, which an event borrows.
struct State {
    limits: Limits,
    choice: EncodingChoice,
    encoding: Encoding,
    utf8_bom: bool,
    nesting: Nesting,
    /// `/A/B/C`: the open elements' local names.
    path: String,
    /// Where each open element's segment starts in `path`.
    segments: Vec<usize>,
    /// The last event was `End`: its element leaves `path` at the next call.
    pop_pending: bool,
    /// The last event was the `Start` of an empty element: `End` comes next.
    end_pending: bool,
    first_event: bool,
    root_seen: bool,
    text: String,
    attributes: String,
    attribute_ranges: Vec<(Range<usize>, Range<usize>)>,
    line: u64,
    column: u64,
}

impl<R: Read> XmlStream<R> {
    /// Starts reading `input`. Fails only when its first bytes show an
    /// encoding that is not ASCII-compatible (UTF-16, UTF-32), or cannot be
    /// read.
    pub fn new(input: R, choice: EncodingChoice, limits: Limits) -> Result<Self, XmlError> {
        let mut metered = Metered::new(input, &limits);
        let fail = |kind| XmlError {
            line: 1,
            path: String::new(),
            kind,
        };
        let first = match metered.peek_start() {
            Ok(first) => first,
            Err(e) => return Err(fail(metered.error_kind(&e))),
        };
        if let Some(wide) = sniff_wide(first) {
            return Err(fail(XmlErrorKind::UnsupportedEncoding(wide.to_owned())));
        }
        let utf8_bom = first.starts_with(&[0xEF, 0xBB, 0xBF]);
        let encoding = match choice {
            EncodingChoice::Given(e) => e,
            EncodingChoice::Auto => Encoding::Utf8,
        };
        let mut reader = Reader::from_reader(metered);
        configure(reader.config_mut());
        Ok(XmlStream {
            reader,
            buf: Vec::new(),
            state: State {
                nesting: Nesting::new(&limits),
                limits,
                choice,
                encoding,
                utf8_bom,
                path: String::new(),
                segments: Vec::new(),
                pop_pending: false,
                end_pending: false,
                first_event: true,
                root_seen: false,
                text: String::new(),
                attributes: String::new(),
                attribute_ranges: Vec::new(),
                line: 1,
                column: 1,
            },
        })
    }

    /// The encoding the text is decoded from (settled by the declaration,
    /// when there is one and the choice is `Auto`).
    pub fn encoding(&self) -> Encoding {
        self.state.encoding
    }

    /// The line the last event started on (1-based).
    pub fn line(&self) -> u64 {
        self.state.line
    }

    /// The column the last event started at (1-based, in bytes of the
    /// input since its line's start, as serde_json counts columns): with
    /// [`XmlStream::line`], where a malformed document went wrong.
    pub fn column(&self) -> u64 {
        self.state.column
    }

    /// The open elements, `/Root/Child/...`; during `End`, still the
    /// element that ends.
    pub fn path(&self) -> &str {
        &self.state.path
    }

    /// Elements open, the one that starts or ends included.
    pub fn depth(&self) -> usize {
        self.state.segments.len()
    }

    /// The local name of the element the last `Start` or `End` was about.
    pub fn name(&self) -> &str {
        let state = &self.state;
        state
            .segments
            .last()
            .map_or("", |&at| &state.path[at + 1..])
    }

    /// The attributes of the element that last started: local names (those
    /// declaring namespaces left out) and values, decoded and resolved.
    pub fn attributes(&self) -> impl Iterator<Item = (&str, &str)> {
        let state = &self.state;
        state.attribute_ranges.iter().map(|(name, value)| {
            (
                &state.attributes[name.clone()],
                &state.attributes[value.clone()],
            )
        })
    }

    /// The piece of text the last `Text` event was about.
    pub fn text(&self) -> &str {
        &self.state.text
    }

    /// Bytes taken from the input so far.
    pub fn bytes_read(&self) -> u64 {
        self.reader.get_ref().total
    }

    /// The limits this stream enforces.
    pub fn limits(&self) -> &Limits {
        &self.state.limits
    }

    /// An error at the current place, for callers whose own rules (a
    /// mapping, say) a document broke.
    pub fn error(&self, kind: XmlErrorKind) -> XmlError {
        self.state.error(kind)
    }

    /// The next event.
    pub fn next_event(&mut self) -> Result<XmlEvent, XmlError> {
        let state = &mut self.state;
        if state.end_pending {
            state.end_pending = false;
            state.ended();
            return Ok(XmlEvent::End);
        }
        if state.pop_pending {
            state.pop_pending = false;
            if let Some(at) = state.segments.pop() {
                state.path.truncate(at);
            }
        }
        loop {
            self.buf.clear();
            self.reader.get_mut().mark();
            state.line = self.reader.get_ref().newlines + 1;
            state.column = self.reader.get_ref().column();
            let event = match self.reader.read_event_into(&mut self.buf) {
                Ok(event) => event,
                Err(quick_xml::Error::Io(e)) => {
                    let kind = self.reader.get_ref().error_kind(&e);
                    return Err(state.error(kind));
                }
                Err(e) => return Err(state.error(XmlErrorKind::Malformed(e.to_string()))),
            };
            // The buffer stops an event once it passes the bound by a read
            // buffer; this catches one that ended within that slack, so the
            // bound is exact.
            if self.reader.get_ref().since_mark > state.limits.max_run_bytes {
                return Err(state.error(XmlErrorKind::RunTooLong(state.limits.max_run_bytes)));
            }
            let first = std::mem::replace(&mut state.first_event, false);
            match event {
                Event::Decl(decl) => {
                    if first {
                        let label = decl
                            .encoding()
                            .transpose()
                            .map_err(|e| state.error(XmlErrorKind::Malformed(e.to_string())))?;
                        let label = label.map(|l| String::from_utf8_lossy(&l).into_owned());
                        state.settle_encoding(label)?;
                    }
                }
                Event::DocType(_) => return Err(state.error(XmlErrorKind::DocType)),
                Event::PI(_) | Event::Comment(_) => {}
                Event::Start(e) => {
                    state.started(&e)?;
                    return Ok(XmlEvent::Start);
                }
                Event::Empty(e) => {
                    state.started(&e)?;
                    state.end_pending = true;
                    return Ok(XmlEvent::Start);
                }
                Event::End(_) => {
                    state.ended();
                    return Ok(XmlEvent::End);
                }
                Event::Text(e) => {
                    let decoded = decode(state.encoding, &e).map_err(|k| state.error(k))?;
                    if state.nesting.depth() == 0 {
                        if decoded.chars().all(is_xml_whitespace) {
                            continue;
                        }
                        return Err(state.error(XmlErrorKind::ContentOutsideRoot));
                    }
                    state.set_text(&decoded);
                    return Ok(XmlEvent::Text);
                }
                Event::CData(e) => {
                    if state.nesting.depth() == 0 {
                        return Err(state.error(XmlErrorKind::ContentOutsideRoot));
                    }
                    let decoded = decode(state.encoding, &e).map_err(|k| state.error(k))?;
                    state.set_text(&decoded);
                    return Ok(XmlEvent::Text);
                }
                Event::GeneralRef(e) => {
                    if state.nesting.depth() == 0 {
                        return Err(state.error(XmlErrorKind::ContentOutsideRoot));
                    }
                    let mut utf8 = [0; 4];
                    let resolved = resolve_reference(&e, &mut utf8)
                        .map_err(|r| state.error(XmlErrorKind::Reference(r)))?;
                    state.set_text(resolved);
                    return Ok(XmlEvent::Text);
                }
                Event::Eof => {
                    return Err(state.error(if !state.root_seen {
                        XmlErrorKind::NoRoot
                    } else if state.nesting.depth() > 0 {
                        XmlErrorKind::Truncated
                    } else {
                        return Ok(XmlEvent::Eof);
                    }));
                }
            }
        }
    }
}

impl State {
    fn error(&self, kind: XmlErrorKind) -> XmlError {
        XmlError {
            line: self.line,
            path: self.path.clone(),
            kind,
        }
    }

    fn set_text(&mut self, text: &str) {
        self.text.clear();
        self.text.push_str(text);
    }

    /// The declaration's encoding, when the caller left it to the document.
    fn settle_encoding(&mut self, label: Option<String>) -> Result<(), XmlError> {
        if self.choice != EncodingChoice::Auto {
            return Ok(());
        }
        let Some(label) = label else {
            return Ok(());
        };
        let encoding = Encoding::from_label(&label).map_err(|name| {
            self.error(XmlErrorKind::UnsupportedEncoding(quote(name.as_bytes())))
        })?;
        if self.utf8_bom && encoding != Encoding::Utf8 {
            return Err(self.error(XmlErrorKind::UnsupportedEncoding(format!(
                "{} after a UTF-8 byte order mark",
                encoding.name()
            ))));
        }
        self.encoding = encoding;
        Ok(())
    }

    fn started(&mut self, e: &BytesStart<'_>) -> Result<(), XmlError> {
        if self.root_seen && self.nesting.depth() == 0 {
            return Err(self.error(XmlErrorKind::ContentOutsideRoot));
        }
        self.nesting
            .enter()
            .map_err(|l| self.error(XmlErrorKind::Limit(l)))?;
        self.root_seen = true;
        let local = e.local_name();
        let name = decode(self.encoding, local.as_ref()).map_err(|k| self.error(k))?;
        self.segments.push(self.path.len());
        self.path.push('/');
        self.path.push_str(&name);
        self.attributes.clear();
        self.attribute_ranges.clear();
        for attribute in e.attributes() {
            let attribute =
                attribute.map_err(|a| self.error(XmlErrorKind::Malformed(a.to_string())))?;
            let key = attribute.key;
            if key.as_ref() == b"xmlns" || key.prefix().is_some_and(|p| p.as_ref() == b"xmlns") {
                continue;
            }
            let local = key.local_name();
            let name = decode(self.encoding, local.as_ref()).map_err(|k| self.error(k))?;
            let raw = decode(self.encoding, &attribute.value).map_err(|k| self.error(k))?;
            let value = unescape_value(&raw).map_err(|r| self.error(XmlErrorKind::Reference(r)))?;
            let name_at = self.attributes.len();
            self.attributes.push_str(&name);
            let value_at = self.attributes.len();
            self.attributes.push_str(&value);
            self.attribute_ranges
                .push((name_at..value_at, value_at..self.attributes.len()));
        }
        Ok(())
    }

    fn ended(&mut self) {
        self.nesting.leave();
        self.pop_pending = true;
    }
}

fn decode(encoding: Encoding, bytes: &[u8]) -> Result<Cow<'_, str>, XmlErrorKind> {
    encoding
        .decode(bytes)
        .ok_or(XmlErrorKind::BadBytes(encoding.name()))
}

/// Why [`Metered`] stopped a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trip {
    Run,
    Document,
}

/// The buffer under quick-xml's reader: counts the bytes each event takes
/// (since [`Metered::mark`]), the whole document's bytes and its lines.
struct Metered<R> {
    inner: R,
    buf: Box<[u8]>,
    pos: usize,
    filled: usize,
    total: u64,
    since_mark: usize,
    newlines: u64,
    /// Bytes consumed up to the start of the current line.
    line_start: u64,
    /// Bytes consumed (handed to quick-xml) so far.
    consumed: u64,
    /// The last byte consumed.
    last_byte: Option<u8>,
    max_run: usize,
    max_total: u64,
    tripped: Option<Trip>,
}

impl<R: Read> Metered<R> {
    fn new(inner: R, limits: &Limits) -> Metered<R> {
        Metered {
            inner,
            buf: vec![0; READ_CHUNK].into_boxed_slice(),
            pos: 0,
            filled: 0,
            total: 0,
            since_mark: 0,
            newlines: 0,
            line_start: 0,
            consumed: 0,
            last_byte: None,
            max_run: limits.max_run_bytes,
            max_total: limits.max_document_bytes,
            tripped: None,
        }
    }

    /// The column the next event starts at (1-based, in bytes): the next
    /// byte to be consumed, or the `<` (`&`) quick-xml consumed already
    /// when it ended a run of text there.
    fn column(&self) -> u64 {
        let taken_ahead = u64::from(matches!(self.last_byte, Some(b'<' | b'&')));
        (self.consumed - taken_ahead).saturating_sub(self.line_start) + 1
    }

    /// A new event starts.
    fn mark(&mut self) {
        self.since_mark = 0;
    }

    /// The first bytes (at least four unless the input is shorter).
    fn peek_start(&mut self) -> io::Result<&[u8]> {
        while self.filled < 4 {
            let n = self.read_more(self.filled)?;
            if n == 0 {
                break;
            }
        }
        Ok(&self.buf[..self.filled])
    }

    fn read_more(&mut self, at: usize) -> io::Result<usize> {
        let n = loop {
            match self.inner.read(&mut self.buf[at..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        self.filled = at + n;
        self.total += n as u64;
        if self.total > self.max_total {
            return Err(self.trip(Trip::Document));
        }
        Ok(n)
    }

    fn trip(&mut self, trip: Trip) -> io::Error {
        self.tripped = Some(trip);
        io::Error::other("XML limit passed")
    }

    fn error_kind(&self, e: &io::Error) -> XmlErrorKind {
        match self.tripped {
            Some(Trip::Run) => XmlErrorKind::RunTooLong(self.max_run),
            Some(Trip::Document) => XmlErrorKind::TooLarge(self.max_total),
            None => XmlErrorKind::Io(e.to_string()),
        }
    }
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for Metered<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.tripped.is_some() {
            return Err(io::Error::other("XML limit passed"));
        }
        // quick-xml takes what it is given until it finds the end of the
        // event: asking for more past the bound is where it stops.
        if self.since_mark > self.max_run {
            return Err(self.trip(Trip::Run));
        }
        if self.pos == self.filled {
            self.pos = 0;
            self.filled = 0;
            self.read_more(0)?;
        }
        Ok(&self.buf[self.pos..self.filled])
    }

    fn consume(&mut self, amt: usize) {
        let amt = amt.min(self.filled - self.pos);
        let taken = &self.buf[self.pos..self.pos + amt];
        self.newlines += taken.iter().filter(|&&b| b == b'\n').count() as u64;
        if let Some(last) = taken.iter().rposition(|&b| b == b'\n') {
            self.line_start = self.consumed + last as u64 + 1;
        }
        self.consumed += amt as u64;
        if let Some(&last) = taken.last() {
            self.last_byte = Some(last);
        }
        self.since_mark += amt;
        self.pos += amt;
    }
}

#[cfg(test)]
mod tests;
