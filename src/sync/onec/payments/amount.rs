//! Money as a whole number of kopecks, read from decimal text and written
//! as a 2-place decimal string (`"1234.50"`), never through `f64`: 1C's
//! `Edm.Double` amounts arrive as JSON numbers (`15000`, `1234.5`), a push's
//! as strings, and a float would turn `0.1 + 0.2` into a kopeck of error.
//!
//! Read by hand rather than with a decimal crate: the grammar is a sign,
//! digits, a point and digits; what is needed is exactness to the kopeck
//! and a refusal of anything else, which `i64` gives for up to 92 quadrillion
//! roubles (1C's own type for sums is `Число(15, 2)`).

use std::fmt;

/// An amount in kopecks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Amount(i64);

/// Most digits before the point: 1C's sums are `Число(15, 2)`; more is not an amount.
const MAX_WHOLE_DIGITS: usize = 15;

impl Amount {
    pub fn from_kopecks(kopecks: i64) -> Amount {
        Amount(kopecks)
    }

    pub fn kopecks(self) -> i64 {
        self.0
    }

    /// Reads `-?\d+(\.\d+)?`: at most 15 digits before the point, and after
    /// it two places (more only when they are zeros: `"1.500"` is 1.50). No
    /// exponent, no spaces, no `+`, no bare point.
    pub fn parse(text: &str) -> Result<Amount, String> {
        let (negative, unsigned) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (whole, fraction) = match unsigned.split_once('.') {
            Some((w, f)) => (w, Some(f)),
            None => (unsigned, None),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(whole) || fraction.is_some_and(|f| !digits(f)) {
            return Err(format!(
                "{:?} is not a decimal amount (digits, optionally a point and two places: \"1234.50\")",
                shown(text)
            ));
        }
        let whole_digits = whole.trim_start_matches('0');
        if whole_digits.len() > MAX_WHOLE_DIGITS {
            return Err(format!(
                "{:?} has more than {MAX_WHOLE_DIGITS} digits before the point",
                shown(text)
            ));
        }
        let fraction = fraction.unwrap_or("");
        let (places, rest) = fraction.split_at(fraction.len().min(2));
        if rest.bytes().any(|b| b != b'0') {
            return Err(format!(
                "{:?} has more than two decimal places (amounts are to the kopeck)",
                shown(text)
            ));
        }
        let mut kopecks: i64 = 0;
        for b in whole_digits.bytes() {
            kopecks = kopecks * 10 + i64::from(b - b'0');
        }
        let mut cents = 0i64;
        for (i, b) in places.bytes().enumerate() {
            cents += i64::from(b - b'0') * if i == 0 { 10 } else { 1 };
        }
        kopecks = kopecks * 100 + cents;
        Ok(Amount(if negative { -kopecks } else { kopecks }))
    }

    /// Reads a JSON value's raw text: a number (`15000`, `1234.5`; an
    /// exponent is refused) or a string holding a decimal (`"1234.50"`).
    pub fn from_json(raw: &str) -> Result<Amount, String> {
        let raw = raw.trim();
        if raw.starts_with('"') {
            let text: String =
                serde_json::from_str(raw).map_err(|e| format!("not a JSON string: {e}"))?;
            Amount::parse(&text)
        } else if raw == "null" {
            Err("is null".into())
        } else {
            Amount::parse(raw)
        }
    }
}

/// At most 40 characters of what was sent, for a message.
fn shown(text: &str) -> String {
    text.chars().take(40).collect()
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        write!(f, "{sign}{}.{:02}", abs / 100, abs % 100)
    }
}

impl serde::Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_read_exactly_to_the_kopeck() {
        for (text, kopecks) in [
            ("0", 0),
            ("15000", 1_500_000),
            ("1234.5", 123_450),
            ("1234.50", 123_450),
            ("1234.500", 123_450),
            ("0.1", 10),
            ("0.01", 1),
            ("-7.25", -725),
            ("007.10", 710),
            ("999999999999999.99", 99_999_999_999_999_999),
        ] {
            assert_eq!(Amount::parse(text), Ok(Amount(kopecks)), "{text}");
        }
        for bad in [
            "",
            "-",
            ".5",
            "5.",
            "1e3",
            "1.005",
            "+1",
            " 1",
            "1,50",
            "abc",
            "1.2.3",
            "1000000000000000",
        ] {
            assert!(Amount::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn amounts_are_written_with_two_places() {
        assert_eq!(Amount(123_450).to_string(), "1234.50");
        assert_eq!(Amount(5).to_string(), "0.05");
        assert_eq!(Amount(-725).to_string(), "-7.25");
        assert_eq!(Amount(0).to_string(), "0.00");
    }

    #[test]
    fn json_numbers_and_strings_both_read() {
        assert_eq!(Amount::from_json("1234.5"), Ok(Amount(123_450)));
        assert_eq!(Amount::from_json("\"1234.50\""), Ok(Amount(123_450)));
        assert!(Amount::from_json("1.5e2").is_err());
        assert!(Amount::from_json("null").is_err());
        assert!(Amount::from_json("true").is_err());
        // 0.1 + 0.2 as floats is 0.30000000000000004; as text it is exact.
        let sum =
            Amount::parse("0.1").unwrap_or_default().0 + Amount::parse("0.2").unwrap_or_default().0;
        assert_eq!(Amount(sum).to_string(), "0.30");
    }
}
