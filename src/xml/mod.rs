//! Safe XML reading, shared by every module that reads XML from outside:
//! `soap` (the PBX's envelopes), `sources::servio` (SERVIO PUMP's exchange
//! files) and, later, the XML forms of the 1C pull and payments endpoints.
//!
//! Each user keeps its own grammar; what they share lives here, so that the
//! rules for hostile input are written once:
//!
//! - [`configure`]: quick-xml's reader set up strictly (end names checked, no
//!   unmatched ends, no dangling `&`).
//! - DTDs refused ([`refuse_doctype`]): nothing is ever expanded or fetched;
//!   only the five predefined entities and character references resolve
//!   ([`resolve_reference`], [`unescape_value`]), to XML characters only
//!   ([`is_xml_char`]).
//! - [`Limits`] and the bookkeeping that enforces them: [`Nesting`] (depth,
//!   element count), [`FieldText`] (a field's text trimmed and bounded while
//!   it is read), and for files [`XmlStream`] (document size, every tag or
//!   text run bounded so memory stays bounded whatever the input).
//! - Encodings ([`EncodingChoice`]): UTF-8 (with a byte order mark or
//!   without) and windows-1251, from the declaration or given by the caller;
//!   any other encoding is refused by name.

mod encoding;
mod limits;
mod stream;
mod text;

pub use encoding::{Encoding, EncodingChoice};
pub use limits::{LimitError, Limits, Nesting};
pub use stream::{XmlError, XmlErrorKind, XmlEvent, XmlStream};
pub use text::{
    configure, is_xml_char, is_xml_whitespace, quote, refuse_doctype, resolve_reference,
    unescape_value, DocTypeRefused, FieldText, FieldTooLong, ReferenceError,
};
