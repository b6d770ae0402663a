//! Caller numbers: one normalized key per number, whatever format it came in.
//!
//! Russian numbers arrive as `89235292926`, `+7 923 529-29-26`, `7(923)5292926`
//! or as ten digits without the trunk prefix; the PBX also sends short internal
//! extensions (`244`). All national forms normalize to `7XXXXXXXXXX`; short
//! numbers pass as they are. The key is packed into a `u64` so the hot-path
//! lookup hashes one integer and allocates nothing.

use std::fmt;

/// Longest digit string we accept as a phone number (E.164 allows 15).
const MAX_DIGITS: usize = 15;
/// Extensions are 2..=6 digits (see `docs/external-systems.md`).
const MAX_EXTENSION_DIGITS: usize = 6;
const MIN_DIGITS: usize = 2;

/// A normalized phone number: the digits and how many there are (leading
/// zeros of an extension such as `044` matter, so the length is kept).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PhoneKey(u64);

impl PhoneKey {
    const LEN_SHIFT: u32 = 56;
    const VALUE_MASK: u64 = (1 << Self::LEN_SHIFT) - 1;

    fn from_digits(digits: &[u8]) -> PhoneKey {
        debug_assert!(digits.len() <= MAX_DIGITS);
        let value = digits
            .iter()
            .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
        PhoneKey(((digits.len() as u64) << Self::LEN_SHIFT) | value)
    }

    fn len(self) -> usize {
        (self.0 >> Self::LEN_SHIFT) as usize
    }

    /// True for short internal numbers (2-6 digits) that are not normalized.
    pub fn is_extension(self) -> bool {
        self.len() <= MAX_EXTENSION_DIGITS
    }

    /// The caller as the pop-up shows it: `+7XXXXXXXXXX` for a national
    /// number, `+` and the digits for other long numbers, the digits of an
    /// extension as they are.
    pub fn display_e164(self) -> String {
        if self.is_extension() {
            self.to_string()
        } else {
            format!("+{self}")
        }
    }
}

impl fmt::Display for PhoneKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:0width$}",
            self.0 & Self::VALUE_MASK,
            width = self.len()
        )
    }
}

impl fmt::Debug for PhoneKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PhoneKey({self})")
    }
}

/// A hasher for [`PhoneKey`]s: one multiply instead of SipHash. The keys
/// in a map come from the directory (trusted data), callers can only look
/// up, so flooding one bucket from outside is not possible.
#[derive(Default, Clone, Copy)]
pub struct PhoneKeyHasher(u64);

impl std::hash::Hasher for PhoneKeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached if something other than a u64 is hashed; stay correct.
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing; the high bits, which hashbrown uses, mix all input bits.
        self.0 = (n ^ (n >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Builds [`PhoneKeyHasher`]s for `HashMap<PhoneKey, _, PhoneKeyHashing>`.
pub type PhoneKeyHashing = std::hash::BuildHasherDefault<PhoneKeyHasher>;

/// Country codes that begin with 8 (ITU-T E.164 assigned codes, world zone 8:
/// 800 freephone, 808, 81 Japan, 82 South Korea, 84 Vietnam, 850 North Korea,
/// 852 Hong Kong, 853 Macau, 855 Cambodia, 856 Laos, 86 China, 870 Inmarsat,
/// 878, 880 Bangladesh, 881-883 global services, 886 Taiwan, 888).
///
/// Needed only to tell a foreign number from the common slip `+8…` for a
/// Russian one (1C users write the trunk prefix 8 after a `+`): `+8` followed
/// by ten digits that do not begin one of these codes is read as Russian.
const ZONE_8_CODES: &[&[u8]] = &[
    b"800", b"808", b"81", b"82", b"84", b"850", b"852", b"853", b"855", b"856", b"86", b"870",
    b"878", b"880", b"881", b"882", b"883", b"886", b"888",
];

/// Shortest international number accepted (country code and subscriber
/// number; a few small countries have 7-digit numbers in all).
const MIN_INTERNATIONAL_DIGITS: usize = 7;

/// What one character of a written number is.
enum Char {
    Digit(u8),
    Plus,
    /// A space, dash, bracket, dot, minus sign, soft hyphen, zero-width or
    /// direction mark: dropped wherever it stands.
    Separator,
    /// Anything else: a label before the number, or the end after it.
    Other,
}

fn classify(c: char) -> Char {
    match c {
        '0'..='9' => Char::Digit(c as u8),
        // Fullwidth digits, as East Asian input methods and some exports write them.
        '\u{ff10}'..='\u{ff19}' => Char::Digit(b'0' + (u32::from(c) - 0xff10) as u8),
        '+' | '\u{ff0b}' => Char::Plus,
        ' ' | '\t' | '-' | '(' | ')' | '.'
        // No-break, narrow, thin, ideographic and other Unicode spaces.
        | '\u{a0}' | '\u{2000}'..='\u{200a}' | '\u{202f}' | '\u{205f}' | '\u{3000}'
        // Hyphens, dashes, the minus sign, their small and fullwidth forms, fullwidth brackets and dot.
        | '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{fe58}' | '\u{fe63}' | '\u{ff0d}'
        | '\u{ff08}' | '\u{ff09}' | '\u{ff0e}'
        // Soft hyphen, zero-width characters, direction marks and embeddings, BOM.
        | '\u{ad}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'
        | '\u{2066}'..='\u{2069}' | '\u{feff}' => Char::Separator,
        _ => Char::Other,
    }
}

/// Normalizes a number written in any common format.
///
/// Reading: a label before the number (`тел.`, `tel:`) is skipped; the number
/// ends at the first letter or list separator after its digits begin, so
/// `+7 495 123-45-67 доб. 12` is the main number. Spaces, dashes, minus signs,
/// brackets, dots, soft hyphens and zero-width characters are dropped wherever
/// they stand; fullwidth digits count as digits. More than 15 digits: `None`.
///
/// Then, by how the number was written:
/// - `+`, `00` or `810` before it (the international prefixes): the number
///   as E.164, its country code kept (`+84 91 234 5678` is Vietnam's, never a
///   Russian one). `+7` needs ten more digits. `+8` followed by a space or
///   bracket, or by ten digits that begin no zone-8 country code, is the
///   common slip for a Russian `8 …` and reads as Russian.
/// - 11 digits starting with 7 or 8, or 10 digits: Russian, `7` + ten digits.
/// - 2 to 6 digits: an extension, as it is (leading zeros kept).
/// - 11 to 15 other digits: an international number written without `+`.
/// - Anything else (one digit, 7 to 9 digits with no `+`): `None`, no usable
///   number: too short for a national number, too long for an extension.
pub fn normalize(raw: &str) -> Option<PhoneKey> {
    // The PBX's usual number is digits alone (`79161234567`): read as they
    // are, without classifying each character (half of this function's
    // instructions on every SayName, callgrind).
    let bytes = raw.as_bytes();
    if bytes.len() <= MAX_DIGITS && bytes.iter().all(u8::is_ascii_digit) {
        return key_of(bytes, false, false);
    }
    let mut digits = [0u8; MAX_DIGITS];
    let mut n = 0usize;
    let mut plus = false;
    // `+8` then a separator: the trunk prefix written after a `+`.
    let mut plus_eight_apart = false;
    for c in raw.chars() {
        match classify(c) {
            Char::Digit(d) => {
                if n == MAX_DIGITS {
                    return None;
                }
                digits[n] = d;
                n += 1;
            }
            Char::Plus if n == 0 => plus = true,
            Char::Plus | Char::Separator => {
                if plus && n == 1 && digits[0] == b'8' {
                    plus_eight_apart = true;
                }
            }
            // A label before the number ("тел.", "tel:"); a `+` before the label was not the number's.
            Char::Other if n == 0 => plus = false,
            Char::Other => break, // "доб.", "ext", ",", ";": the number has ended
        }
    }
    key_of(&digits[..n], plus, plus_eight_apart)
}

/// The key of a number's `digits` (ASCII), written after a `+` when `plus`.
fn key_of(digits: &[u8], plus: bool, plus_eight_apart: bool) -> Option<PhoneKey> {
    let n = digits.len();
    if plus {
        return international(digits, plus_eight_apart);
    }
    match digits {
        [b'0', b'0', rest @ ..] if rest.len() >= MIN_INTERNATIONAL_DIGITS => {
            international(rest, false)
        }
        [b'8', b'1', b'0', rest @ ..] if rest.len() >= MIN_INTERNATIONAL_DIGITS => {
            international(rest, false)
        }
        [b'7' | b'8', rest @ ..] if rest.len() == 10 => Some(russian(rest)),
        _ if n == 10 => Some(russian(digits)),
        _ if (MIN_DIGITS..=MAX_EXTENSION_DIGITS).contains(&n) => {
            Some(PhoneKey::from_digits(digits))
        }
        _ if n >= 11 => Some(PhoneKey::from_digits(digits)),
        _ => None,
    }
}

/// `7` and the ten digits of a Russian number.
fn russian(ten: &[u8]) -> PhoneKey {
    let mut national = [b'7'; 11];
    national[1..].copy_from_slice(ten);
    PhoneKey::from_digits(&national)
}

/// The digits after an international prefix, as E.164.
fn international(digits: &[u8], plus_eight_apart: bool) -> Option<PhoneKey> {
    match digits {
        [b'8', rest @ ..]
            if rest.len() == 10
                && (plus_eight_apart || !ZONE_8_CODES.iter().any(|c| digits.starts_with(c))) =>
        {
            Some(russian(rest))
        }
        [b'7', rest @ ..] => (rest.len() == 10).then(|| PhoneKey::from_digits(digits)),
        // No country code begins with 0.
        [b'0', ..] => None,
        _ if digits.len() >= MIN_INTERNATIONAL_DIGITS => Some(PhoneKey::from_digits(digits)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> Option<String> {
        normalize(s).map(|k| k.to_string())
    }

    /// Digits alone take a shortcut: every such string up to 17 digits is
    /// read as the same digits with a separator in front would be (which
    /// takes the character-by-character read).
    #[test]
    fn digits_alone_are_read_as_the_full_read_reads_them() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..50_000 {
            let len = rng.random_range(0..=MAX_DIGITS + 2);
            let digits: String = (0..len)
                .map(|_| char::from(b'0' + rng.random_range(0..10u8)))
                .collect();
            assert_eq!(
                normalize(&digits),
                normalize(&format!(" {digits}")),
                "{digits}"
            );
        }
    }

    #[test]
    fn national_forms_normalize_to_7_and_ten_digits() {
        for raw in [
            "89235292926",
            "+79235292926",
            "79235292926",
            "+7 923 529-29-26",
            "8 (923) 529-29-26",
            "7-923-529-29-26",
            "9235292926",
            "  +7(923)5292926 ",
            "8.923.529.29.26",
            "тел. 8 923 529 29 26",
            "+7\u{a0}923\u{a0}529\u{2011}29\u{2011}26",
        ] {
            assert_eq!(norm(raw).as_deref(), Some("79235292926"), "{raw}");
        }
    }

    #[test]
    fn additional_number_after_the_main_one_is_ignored() {
        assert_eq!(
            norm("+7 495 123-45-67 доб. 12").as_deref(),
            Some("74951234567")
        );
        assert_eq!(
            norm("84951234567, 89161234567").as_deref(),
            Some("74951234567")
        );
    }

    #[test]
    fn extensions_pass_as_they_are_with_leading_zeros() {
        assert_eq!(norm("244").as_deref(), Some("244"));
        assert_eq!(norm("044").as_deref(), Some("044"));
        assert_eq!(norm("12").as_deref(), Some("12"));
        assert!(normalize("044").is_some_and(|k| k.is_extension()));
        assert_ne!(normalize("044"), normalize("44"));
    }

    #[test]
    fn foreign_numbers_keep_their_country_code() {
        // As the PBX may send them: with +, with 00 or 810, or as bare digits.
        for (raw, e164) in [
            ("+380 44 123 45 67", "380441234567"),
            ("380441234567", "380441234567"),
            ("+84 91 234 5678", "84912345678"),
            ("+84912345678", "84912345678"),
            ("+82 2 1234 5678", "82212345678"),
            ("+81 3 1234 5678", "81312345678"),
            ("+375291234567", "375291234567"),
            ("00375291234567", "375291234567"),
            ("810375291234567", "375291234567"),
            ("8 10 375 29 123-45-67", "375291234567"),
            ("00 49 30 1234567", "49301234567"),
            ("+1 202 555 0123", "12025550123"),
        ] {
            assert_eq!(norm(raw).as_deref(), Some(e164), "{raw}");
            assert_eq!(
                normalize(raw).map(PhoneKey::display_e164),
                Some(format!("+{e164}")),
                "{raw}"
            );
        }
    }

    #[test]
    fn a_foreign_number_never_folds_into_a_russian_one() {
        // Vietnam and Ryazan, Seoul and +7 221…, Tokyo and +7 131….
        assert_ne!(normalize("+84 91 234 5678"), normalize("8 (4912) 34-56-78"));
        assert_eq!(norm("8 (4912) 34-56-78").as_deref(), Some("74912345678"));
        assert_ne!(normalize("+82 2 1234 5678"), normalize("+72212345678"));
        assert_ne!(normalize("+81 3 1234 5678"), normalize("+71312345678"));
    }

    #[test]
    fn plus_eight_is_the_russian_trunk_prefix_when_it_cannot_be_a_country_code() {
        for raw in [
            "+8 916 123-45-67",
            "+8(916)1234567",
            "+89161234567",
            "+8 495 123 45 67",
        ] {
            let want = if raw.contains("916") {
                "79161234567"
            } else {
                "74951234567"
            };
            assert_eq!(norm(raw).as_deref(), Some(want), "{raw}");
        }
        // Written together, +84… is Vietnam's code (see ZONE_8_CODES).
        assert_eq!(norm("+84951234567").as_deref(), Some("84951234567"));
        // With no +, eleven digits starting with 8 are Russian whatever follows.
        assert_eq!(norm("84912345678").as_deref(), Some("74912345678"));
    }

    #[test]
    fn unicode_spaces_dashes_and_invisible_characters_are_dropped() {
        for raw in [
            "8\u{202f}916\u{202f}300\u{202f}01\u{202f}01",
            "8\u{2009}916\u{2009}300\u{2009}01\u{2009}01",
            "8\u{3000}916\u{3000}3000101",
            "8 916 300\u{2212}01\u{2212}01",
            "8916\u{ad}300\u{ad}0101",
            "8916\u{200b}3000101",
            "\u{feff}+7\u{200e}9163000101",
            "８９１６３０００１０１",
            "８\u{ff08}９１６\u{ff09}３００\u{ff0d}０１\u{ff0d}０１",
            "\u{ff0b}７９１６３０００１０１",
            "8\u{2013}916\u{2014}300\u{2012}01\u{2010}01",
        ] {
            assert_eq!(norm(raw).as_deref(), Some("79163000101"), "{raw:?}");
        }
    }

    #[test]
    fn too_short_for_a_number_and_too_long_for_an_extension_is_unusable() {
        for raw in [
            "1234567",
            "8916300",
            "12345678",
            "123456789",
            "+7 916 123",
            "+12345",
        ] {
            assert_eq!(norm(raw), None, "{raw}");
        }
        assert_eq!(norm("+0123456789"), None, "no country code begins with 0");
    }

    #[test]
    fn nothing_plausible_gives_none() {
        assert_eq!(norm(""), None);
        assert_eq!(norm("   "), None);
        assert_eq!(norm("Unknown"), None);
        assert_eq!(norm("5"), None);
        assert_eq!(norm("1234567890123456"), None);
        assert_eq!(norm(&"9".repeat(10_000)), None);
    }

    #[test]
    fn display_is_e164_for_long_numbers_and_as_is_for_extensions() {
        assert_eq!(
            normalize("89235292926")
                .map(PhoneKey::display_e164)
                .as_deref(),
            Some("+79235292926")
        );
        assert_eq!(
            normalize("244").map(PhoneKey::display_e164).as_deref(),
            Some("244")
        );
    }

    #[test]
    fn never_panics_on_arbitrary_text() {
        for s in ["\u{0}", "++++", "８９２３", "9\u{301}", "-)(-", "7 8 8 8"] {
            let _ = normalize(s);
        }
    }
}
