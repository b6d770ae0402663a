//! Which encodings a document may be in, and how its bytes become text.
//!
//! Two are accepted: UTF-8 (with a byte order mark or without) and
//! windows-1251, the encoding 1C-side Russian software writes. Both keep
//! ASCII where ASCII is, so quick-xml reads the markup from the raw bytes and
//! only names, values and text are decoded here (encoding_rs, which
//! quick-xml's `encoding` feature brings). Anything else (UTF-16, KOI8-R...)
//! is refused by name rather than read as garbage.

use std::borrow::Cow;

/// An encoding a document can be read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Utf8,
    Windows1251,
}

impl Encoding {
    /// The encoding an XML declaration or a setting names, by the WHATWG
    /// labels (`utf-8`, `UTF8`, `windows-1251`, `cp1251`...). `Err` carries
    /// the name of an encoding that is not accepted, as written.
    pub fn from_label(label: &str) -> Result<Encoding, String> {
        match encoding_rs::Encoding::for_label(label.trim().as_bytes()) {
            Some(e) if e == encoding_rs::UTF_8 => Ok(Encoding::Utf8),
            Some(e) if e == encoding_rs::WINDOWS_1251 => Ok(Encoding::Windows1251),
            _ => Err(label.to_owned()),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::Utf8 => "UTF-8",
            Encoding::Windows1251 => "windows-1251",
        }
    }

    /// `bytes` as text, or `None` when they are not valid in this encoding
    /// (only UTF-8 can fail: WHATWG's windows-1251 assigns every byte, 0x98
    /// to U+0098).
    pub fn decode(self, bytes: &[u8]) -> Option<Cow<'_, str>> {
        match self {
            Encoding::Utf8 => std::str::from_utf8(bytes).ok().map(Cow::Borrowed),
            Encoding::Windows1251 => {
                encoding_rs::WINDOWS_1251.decode_without_bom_handling_and_without_replacement(bytes)
            }
        }
    }
}

/// How the reader learns a document's encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncodingChoice {
    /// From the XML declaration's `encoding`; UTF-8 without one (a UTF-8
    /// byte order mark is skipped either way).
    #[default]
    Auto,
    /// This one, whatever the declaration says: for an exporter that
    /// declares nothing, or declares wrongly.
    Given(Encoding),
}

impl EncodingChoice {
    /// `auto`, or an encoding label.
    pub fn from_setting(setting: &str) -> Result<EncodingChoice, String> {
        if setting.trim().eq_ignore_ascii_case("auto") {
            return Ok(EncodingChoice::Auto);
        }
        Encoding::from_label(setting).map(EncodingChoice::Given)
    }
}

/// What the first bytes of a document say about its encoding, before the
/// declaration is read: only a UTF-16 (or UTF-32) layout matters, since it
/// is not ASCII-compatible and is refused at once.
pub(super) fn sniff_wide(first: &[u8]) -> Option<&'static str> {
    match first {
        [0xFE, 0xFF, ..] | [0x00, b'<', 0x00, _, ..] => Some("UTF-16BE"),
        [0xFF, 0xFE, ..] | [b'<', 0x00, _, 0x00, ..] => Some("UTF-16LE"),
        [0x00, 0x00, ..] => Some("UTF-32"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_the_two_encodings_and_refuse_others_by_name() {
        assert_eq!(Encoding::from_label("UTF-8"), Ok(Encoding::Utf8));
        assert_eq!(Encoding::from_label("utf8"), Ok(Encoding::Utf8));
        assert_eq!(
            Encoding::from_label("Windows-1251"),
            Ok(Encoding::Windows1251)
        );
        assert_eq!(Encoding::from_label("cp1251"), Ok(Encoding::Windows1251));
        assert_eq!(Encoding::from_label("koi8-r"), Err("koi8-r".to_owned()));
        assert_eq!(Encoding::from_label("UTF-16"), Err("UTF-16".to_owned()));
        assert_eq!(Encoding::from_label("bogus"), Err("bogus".to_owned()));
        assert_eq!(
            EncodingChoice::from_setting("auto"),
            Ok(EncodingChoice::Auto)
        );
        assert_eq!(
            EncodingChoice::from_setting("windows-1251"),
            Ok(EncodingChoice::Given(Encoding::Windows1251))
        );
    }

    #[test]
    fn decoding_checks_the_bytes() {
        assert_eq!(
            Encoding::Windows1251.decode(&[0xCF, 0xF0, 0xE8]).as_deref(),
            Some("При")
        );
        assert_eq!(Encoding::Utf8.decode(&[0xCF, 0xF0]), None);
        assert_eq!(
            Encoding::Windows1251.decode(&[0x98]).as_deref(),
            Some("\u{98}")
        );
        assert_eq!(sniff_wide(&[0xFF, 0xFE, b'<', 0]), Some("UTF-16LE"));
        assert_eq!(sniff_wide(b"<?xml"), None);
    }
}
