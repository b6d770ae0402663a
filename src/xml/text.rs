//! Text from outside: references, characters, fields read in pieces.

use std::borrow::Cow;

use quick_xml::escape::EscapeError;
use quick_xml::events::{BytesRef, Event};

/// How many characters of a name taken from the input an error quotes.
const MAX_QUOTED_CHARS: usize = 64;

/// Sets quick-xml's reader up for input from outside: end tags must match
/// their start (and exist), a `&` must start a reference, and empty
/// elements stay `Empty` events (callers treat them as start and end).
pub fn configure(config: &mut quick_xml::reader::Config) {
    config.check_end_names = true;
    config.allow_unmatched_ends = false;
    config.allow_dangling_amp = false;
    config.expand_empty_elements = false;
}

/// A DOCTYPE (and with it any entity declaration) was met.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("DTDs and entity declarations are not accepted")]
pub struct DocTypeRefused;

/// Refuses a DOCTYPE wherever it appears: an entity it declared could expand
/// into gigabytes (billion laughs) or fetch a file (XXE), so none is read.
pub fn refuse_doctype(event: &Event<'_>) -> Result<(), DocTypeRefused> {
    match event {
        Event::DocType(_) => Err(DocTypeRefused),
        _ => Ok(()),
    }
}

/// A reference that stands for nothing allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// `&name;` for a name other than the five predefined entities (no DTD
    /// can define one: DTDs are refused).
    #[error(
        "unknown entity '&{0};': only &amp; &lt; &gt; &quot; &apos; and character references are accepted"
    )]
    UnknownEntity(String),
    /// `&#…;` that is not a number or not an XML character.
    #[error("character reference '&{0};' is not an allowed XML character")]
    BadCharRef(String),
    /// A `&` in an attribute value without its `;`.
    #[error("'&' without a reference after it")]
    Unterminated,
}

/// The text an entity or character reference stands for. Only the five
/// predefined entities exist without a DTD, and DTDs are refused.
pub fn resolve_reference<'a>(
    reference: &'a BytesRef<'_>,
    utf8: &'a mut [u8; 4],
) -> Result<&'a str, ReferenceError> {
    let name: &[u8] = reference;
    if reference.is_char_ref() {
        let bad = || ReferenceError::BadCharRef(quote(name));
        let c = match reference.resolve_char_ref() {
            Ok(Some(c)) if is_xml_char(c) => c,
            _ => return Err(bad()),
        };
        return Ok(c.encode_utf8(utf8));
    }
    predefined_entity(name).ok_or_else(|| ReferenceError::UnknownEntity(quote(name)))
}

fn predefined_entity(name: &[u8]) -> Option<&'static str> {
    Some(match name {
        b"amp" => "&",
        b"lt" => "<",
        b"gt" => ">",
        b"quot" => "\"",
        b"apos" => "'",
        _ => return None,
    })
}

/// An attribute value (already decoded to text) with its references
/// resolved by the same rules as [`resolve_reference`].
pub fn unescape_value(raw: &str) -> Result<Cow<'_, str>, ReferenceError> {
    if !raw.contains('&') {
        return Ok(Cow::Borrowed(raw));
    }
    let value = quick_xml::escape::unescape_with(raw, |name| predefined_entity(name.as_bytes()))
        .map_err(|e| match e {
            EscapeError::UnrecognizedEntity(_, name) => {
                ReferenceError::UnknownEntity(quote(name.as_bytes()))
            }
            EscapeError::InvalidCharRef(_) => ReferenceError::BadCharRef(bad_ref_name(raw)),
            EscapeError::UnterminatedEntity(_) => ReferenceError::Unterminated,
        })?;
    // quick-xml lets control characters through as references; XML does not.
    if let Some(c) = value.chars().find(|c| !is_xml_char(*c)) {
        return Err(ReferenceError::BadCharRef(format!("#x{:X}", u32::from(c))));
    }
    Ok(value)
}

/// The first character reference of `raw`, quoted, for an error.
fn bad_ref_name(raw: &str) -> String {
    let Some(at) = raw.find("&#") else {
        return String::new();
    };
    let rest = &raw[at + 1..];
    quote(rest.split(';').next().unwrap_or(rest).as_bytes())
}

/// XML 1.0 `Char`: what a character reference may stand for.
pub fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// XML's whitespace (`S`), narrower than Unicode's: a no-break space in a
/// key is part of the key.
pub fn is_xml_whitespace(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// A name from the input, fit to be quoted in an error message.
pub fn quote(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    match text.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.into_owned(),
    }
}

/// A field's text longer than its limit once trimmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("longer than {limit} bytes")]
pub struct FieldTooLong {
    pub limit: usize,
}

/// One field's text as it arrives in pieces (text, references, CDATA):
/// surrounding whitespace is trimmed across the pieces, and the limit applies
/// to what is left, without ever buffering more than the limit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FieldText {
    text: String,
    /// Trailing whitespace was dropped because it alone passed the limit:
    /// any more content makes the field too long.
    dropped_whitespace: bool,
}

impl FieldText {
    pub fn new() -> FieldText {
        FieldText::default()
    }

    /// Adds a piece; `limit` is the most bytes the trimmed text may hold.
    pub fn push(&mut self, piece: &str, limit: usize) -> Result<(), FieldTooLong> {
        let too_long = FieldTooLong { limit };
        let piece = if self.text.is_empty() {
            piece.trim_start_matches(is_xml_whitespace)
        } else {
            piece
        };
        let content = piece.trim_end_matches(is_xml_whitespace);
        let tail = &piece[content.len()..];
        if self.dropped_whitespace {
            // The dropped whitespace would be inside the value: too long.
            return if content.is_empty() {
                Ok(())
            } else {
                Err(too_long)
            };
        }
        if !content.is_empty() {
            if self.text.len() + content.len() > limit {
                return Err(too_long);
            }
            self.text.push_str(content);
        }
        if self.text.len() + tail.len() <= limit {
            self.text.push_str(tail);
        } else {
            self.dropped_whitespace = true;
        }
        Ok(())
    }

    /// The text read so far, trimmed at both ends.
    pub fn finish(mut self) -> String {
        let kept = self.text.trim_end_matches(is_xml_whitespace).len();
        self.text.truncate(kept);
        self.text
    }

    /// Empties it for the next field, keeping the allocation.
    pub fn clear(&mut self) {
        self.text.clear();
        self.dropped_whitespace = false;
    }

    /// The text read so far, trimmed at both ends, without giving it up.
    pub fn as_trimmed(&self) -> &str {
        self.text.trim_end_matches(is_xml_whitespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_text_trims_across_pieces_and_bounds_what_is_left() {
        let mut field = FieldText::new();
        field.push("  \n 12", 4).expect("fits");
        field
            .push("34   ", 4)
            .expect("trailing whitespace is not counted");
        field.push(" \n", 4).expect("still only whitespace");
        assert_eq!(field.as_trimmed(), "1234");
        assert_eq!(field.clone().finish(), "1234");
        assert_eq!(field.push("5", 4), Err(FieldTooLong { limit: 4 }));
        let mut field = FieldText::new();
        field.push("12", 4).expect("fits");
        assert_eq!(field.push(" 345", 4), Err(FieldTooLong { limit: 4 }));
        field.clear();
        assert_eq!(field.as_trimmed(), "");
    }

    #[test]
    fn attribute_values_resolve_only_predefined_entities_and_xml_chars() {
        assert_eq!(unescape_value("a &amp; b").expect("ok"), "a & b");
        assert_eq!(unescape_value("&#1055;&#x41;").expect("ok"), "ПA");
        assert!(matches!(
            unescape_value("plain"),
            Ok(Cow::Borrowed("plain"))
        ));
        assert_eq!(
            unescape_value("&foo;"),
            Err(ReferenceError::UnknownEntity("foo".into()))
        );
        assert!(matches!(
            unescape_value("&#1;"),
            Err(ReferenceError::BadCharRef(_))
        ));
        assert!(matches!(
            unescape_value("&#0;"),
            Err(ReferenceError::BadCharRef(_))
        ));
        assert!(matches!(
            unescape_value("&#xZZ;"),
            Err(ReferenceError::BadCharRef(_))
        ));
        assert_eq!(unescape_value("a & b"), Err(ReferenceError::Unterminated));
    }

    #[test]
    fn quote_cuts_long_names() {
        assert_eq!(quote(b"abc"), "abc");
        let long = quote("Ж".repeat(100).as_bytes());
        assert_eq!(long.chars().count(), MAX_QUOTED_CHARS + 1);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn xml_chars_and_whitespace() {
        assert!(is_xml_char('\t') && is_xml_char('Я') && is_xml_char('\u{10000}'));
        assert!(!is_xml_char('\0') && !is_xml_char('\u{1F}') && !is_xml_char('\u{FFFE}'));
        assert!(is_xml_whitespace('\r') && !is_xml_whitespace('\u{A0}'));
    }
}
