//! The query string of a screen's request: `token`, `after`, `wait`.
//!
//! Values are percent-decoded as RFC 3986 says; a `+` stays a plus (tokens
//! may be base64, and a client that builds the URL by concatenation does not
//! encode it). A parameter given twice is refused rather than guessed at;
//! unknown parameters (a cache-buster such as `_=1700000000`) are ignored.
//!
//! Parsing is split so that the HTTP front can check the token before it
//! says anything else about the request: [`ScreenQuery::parse`] only fails on
//! a query that is not a query at all; `after` and `wait` are checked after
//! authentication.

/// The parameters a screen sends, percent-decoded, not yet interpreted.
#[derive(Default, PartialEq, Eq)]
pub struct ScreenQuery {
    token: Option<String>,
    after: Option<String>,
    wait: Option<String>,
}

/// Longest value of a parameter; tokens are short secrets, numbers shorter.
const MAX_VALUE_LEN: usize = 1024;

impl std::fmt::Debug for ScreenQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScreenQuery")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("after", &self.after)
            .field("wait", &self.wait)
            .finish()
    }
}

impl ScreenQuery {
    /// Reads `token`, `after` and `wait` from a query string (without `?`).
    pub fn parse(query: Option<&str>) -> Result<ScreenQuery, String> {
        let mut out = ScreenQuery::default();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let slot = match name {
                "token" => &mut out.token,
                "after" => &mut out.after,
                "wait" => &mut out.wait,
                _ => continue,
            };
            if slot.is_some() {
                return Err(format!("query parameter '{name}' is given more than once"));
            }
            if value.len() > MAX_VALUE_LEN {
                return Err(format!(
                    "query parameter '{name}' is longer than {MAX_VALUE_LEN} bytes"
                ));
            }
            *slot = Some(percent_decode(value).ok_or_else(|| {
                format!("query parameter '{name}' is not valid percent-encoded UTF-8")
            })?);
        }
        Ok(out)
    }

    /// The token the screen presented; `None` when absent or empty.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref().filter(|t| !t.is_empty())
    }

    /// `after=N`: the last seq the screen has seen. `None` when absent or
    /// empty: 1C's `Формат(0, "ЧГ=0")` writes 0 as an empty string, and a
    /// screen that has seen nothing asks for no replay.
    pub fn after(&self) -> Result<Option<u64>, String> {
        match self.after.as_deref() {
            Some("") => Ok(None),
            after => number(after, "after", "the last seq the screen has seen"),
        }
    }

    /// `wait=S`: seconds a long-poll may wait. `None` when absent. An empty
    /// `wait=` is refused: it is most likely a 0 that `Формат(0, "ЧГ=0")`
    /// wrote as nothing, and taking it as the default would hold the
    /// client for 25 s where it asked for an answer at once.
    pub fn wait_secs(&self) -> Result<Option<u64>, String> {
        number(self.wait.as_deref(), "wait", "whole seconds")
    }
}

fn number(value: Option<&str>, name: &str, meaning: &str) -> Result<Option<u64>, String> {
    let Some(value) = value else {
        return Ok(None);
    };
    if value.is_empty() {
        return Err(format!(
            "'{name}' is empty: give a whole number ({meaning}); in 1C, Формат(0, \"ЧГ=0\") writes 0 as an empty string, Формат(N, \"ЧН=0; ЧГ=0\") or XMLСтрока(N) writes it as 0"
        ));
    }
    // `u64::from_str` would accept a leading '+'; a screen sends digits.
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        // Digit groups (1C's `Формат` without `ЧГ=0` writes 1 234 with a
        // no-break space) are the likely slip: say so.
        let grouped = value
            .chars()
            .all(|c| c.is_ascii_digit() || c == ' ' || c == '\u{a0}' || c == '\u{202f}');
        let hint = if grouped {
            "; write it without digit grouping: in 1C, Формат(N, \"ЧН=0; ЧГ=0\") or XMLСтрока(N)"
        } else {
            ""
        };
        return Err(format!(
            "'{name}' must be a non-negative whole number ({meaning}), got '{:.20}'{hint}",
            value.escape_debug()
        ));
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| format!("'{name}' is too large (at most {})", u64::MAX))
}

/// `%XX` → byte; the result must be UTF-8. `None` on a broken escape.
pub(crate) fn percent_decode(value: &str) -> Option<String> {
    if !value.contains('%') {
        return Some(value.to_owned());
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_three_parameters_and_ignores_others() {
        let q = ScreenQuery::parse(Some("token=abc%2Bd+e&after=17&_=123&wait=5")).expect("query");
        assert_eq!(q.token(), Some("abc+d+e"));
        assert_eq!(q.after(), Ok(Some(17)));
        assert_eq!(q.wait_secs(), Ok(Some(5)));
        let q = ScreenQuery::parse(None).expect("no query");
        assert_eq!(q.token(), None);
        assert_eq!(q.after(), Ok(None));
        assert_eq!(q.wait_secs(), Ok(None));
        let q = ScreenQuery::parse(Some("token=&after")).expect("q");
        assert_eq!(q.token(), None);
        // An empty `after` (1C's `Формат(0, "ЧГ=0")`) asks for no replay.
        assert_eq!(q.after(), Ok(None));
        assert_eq!(
            ScreenQuery::parse(Some("after=")).expect("q").after(),
            Ok(None)
        );
        assert_eq!(
            ScreenQuery::parse(Some("after=0")).expect("q").after(),
            Ok(Some(0))
        );
        assert_eq!(
            ScreenQuery::parse(Some("token=%D0%B8")).expect("q").token(),
            Some("и")
        );
    }

    #[test]
    fn refuses_what_is_not_a_number_or_not_a_query() {
        for bad in ["abc", "-1", "+1", "1.5", " 1", "99999999999999999999999"] {
            let q = ScreenQuery::parse(Some(&format!("after={bad}"))).expect("query");
            assert!(q.after().is_err(), "{bad:?}");
        }
        // 1C's grouped digits: refused, saying how to write the number.
        let q = ScreenQuery::parse(Some("after=1%C2%A0234")).expect("query");
        let e = q.after().expect_err("grouped");
        assert!(e.contains("ЧН=0; ЧГ=0"), "{e}");
        // An empty `wait` is refused, saying why.
        let q = ScreenQuery::parse(Some("wait=")).expect("query");
        let e = q.wait_secs().expect_err("empty wait");
        assert!(e.contains("empty"), "{e}");
        for bad in [
            "token=%",
            "token=%G1",
            "token=%FF",
            "after=1&after=2",
            "token=a&token=a",
        ] {
            assert!(ScreenQuery::parse(Some(bad)).is_err(), "{bad:?}");
        }
        let long = format!("token={}", "x".repeat(MAX_VALUE_LEN + 1));
        assert!(ScreenQuery::parse(Some(&long)).is_err());
    }

    #[test]
    fn debug_never_shows_the_token() {
        let q = ScreenQuery::parse(Some("token=secret-token&after=1")).expect("query");
        assert!(!format!("{q:?}").contains("secret"));
    }
}
