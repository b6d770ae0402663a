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

/// Normalizes a number written in any common format.
///
/// Rules: leading text such as `тел.` is skipped; the number ends at the first
/// letter or list separator after its digits begin, so `+7 495 123-45-67 доб. 12`
/// is the main number; spaces, dashes, dots, brackets and `+` are dropped.
/// Then 11 digits starting with 7 or 8 become `7` + the last ten, ten digits
/// become `7` + them, anything from 2 to 15 digits is kept as it is (short
/// extensions, foreign numbers). Returns `None` when no plausible number is
/// left (no digits, one digit, more than 15).
pub fn normalize(raw: &str) -> Option<PhoneKey> {
    let mut digits = [0u8; MAX_DIGITS];
    let mut n = 0usize;
    for c in raw.chars() {
        match c {
            '0'..='9' => {
                if n == MAX_DIGITS {
                    return None;
                }
                digits[n] = c as u8;
                n += 1;
            }
            ' ' | '\t' | '-' | '(' | ')' | '.' | '+' | '\u{a0}' | '\u{2010}'..='\u{2015}' => {}
            _ if n == 0 => {} // a label before the number: "тел.", "tel:"
            _ => break,       // "доб.", "ext", ",", ";": the number has ended
        }
    }
    let digits = &digits[..n];
    match digits {
        [b'7' | b'8', rest @ ..] if rest.len() == 10 => {
            let mut national = [b'7'; 11];
            national[1..].copy_from_slice(rest);
            Some(PhoneKey::from_digits(&national))
        }
        _ if n == 10 => {
            let mut national = [b'7'; 11];
            national[1..].copy_from_slice(digits);
            Some(PhoneKey::from_digits(&national))
        }
        _ if n >= MIN_DIGITS => Some(PhoneKey::from_digits(digits)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(s: &str) -> Option<String> {
        normalize(s).map(|k| k.to_string())
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
    fn other_lengths_keep_their_digits() {
        assert_eq!(norm("+380 44 123 45 67").as_deref(), Some("380441234567"));
        assert_eq!(norm("1234567").as_deref(), Some("1234567"));
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
