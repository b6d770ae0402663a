//! The API's query strings: the parameters an endpoint takes, each at most
//! once. An unknown or repeated parameter is refused by name, as an unknown
//! configuration key is: `?number=…` on an endpoint that had no `number`
//! used to be ignored silently, answering every call to someone who asked
//! for one client's.
//!
//! Values are percent-decoded as RFC 3986 says; a `+` stays a plus (an RFC
//! 3339 offset such as `+03:00` written without encoding stays one). The
//! operator screens' query (`popup::query`) is another matter: screens may
//! add a cache-buster, which is ignored there.

use crate::popup::query::percent_decode;

/// Longest value of a parameter.
const MAX_VALUE_LEN: usize = 1024;

/// The parameters of one request, percent-decoded, in the order given.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ApiQuery {
    pairs: Vec<(&'static str, String)>,
}

impl ApiQuery {
    /// Reads `query` (without `?`) for an endpoint that takes the parameters
    /// `known` (none: any parameter is refused). The error names every
    /// unknown or repeated parameter.
    pub fn parse(query: Option<&str>, known: &[&'static str]) -> Result<ApiQuery, String> {
        let mut pairs: Vec<(&'static str, String)> = Vec::new();
        let (mut unknown, mut repeated) = (Vec::new(), Vec::new());
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let Some(&name) = known.iter().find(|&&k| k == raw_name) else {
                unknown.push(shown(raw_name));
                continue;
            };
            if pairs.iter().any(|(n, _)| *n == name) {
                if !repeated.contains(&name) {
                    repeated.push(name);
                }
                continue;
            }
            if raw_value.len() > MAX_VALUE_LEN {
                return Err(format!(
                    "query parameter '{name}' is longer than {MAX_VALUE_LEN} bytes"
                ));
            }
            let value = percent_decode(raw_value).ok_or_else(|| {
                format!("query parameter '{name}' is not valid percent-encoded UTF-8")
            })?;
            pairs.push((name, value));
        }
        let mut problems = Vec::new();
        if !unknown.is_empty() {
            let takes = if known.is_empty() {
                "this endpoint takes no query parameters".to_owned()
            } else {
                format!("this endpoint takes {}", known.join(", "))
            };
            problems.push(format!(
                "unknown query parameter{} {} ({takes})",
                if unknown.len() > 1 { "s" } else { "" },
                unknown.join(", ")
            ));
        }
        if !repeated.is_empty() {
            let names: Vec<String> = repeated.iter().map(|n| format!("'{n}'")).collect();
            problems.push(format!(
                "query parameter{} {} given more than once (give each once)",
                if repeated.len() > 1 { "s" } else { "" },
                names.join(", ")
            ));
        }
        if problems.is_empty() {
            Ok(ApiQuery { pairs })
        } else {
            Err(problems.join("; "))
        }
    }

    /// The parameters given, in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.pairs.iter().map(|(n, v)| (*n, v.as_str()))
    }
}

/// A parameter name as the refusal shows it: quoted, escaped, cut short.
fn shown(name: &str) -> String {
    let name: String = name.chars().take(40).collect();
    format!("'{}'", name.escape_debug())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLS: &[&str] = &["key", "since", "number"];

    #[test]
    fn known_parameters_are_read_once_each() {
        let q =
            ApiQuery::parse(Some("key=a%20b&number=%2B7%20912&since=x+y"), CALLS).expect("query");
        assert_eq!(
            q.pairs().collect::<Vec<_>>(),
            [("key", "a b"), ("number", "+7 912"), ("since", "x+y")]
        );
        assert_eq!(ApiQuery::parse(None, CALLS), Ok(ApiQuery::default()));
        assert_eq!(ApiQuery::parse(Some("&&"), &[]), Ok(ApiQuery::default()));
    }

    #[test]
    fn unknown_and_repeated_parameters_are_named() {
        let e = ApiQuery::parse(Some("numbr=1&key=a&_=2&key=b"), CALLS).expect_err("refused");
        assert!(e.contains("'numbr', '_'"), "{e}");
        assert!(e.contains("key, since, number"), "{e}");
        assert!(e.contains("'key' given more than once"), "{e}");
        let e = ApiQuery::parse(Some("force"), &[]).expect_err("refused");
        assert!(
            e.contains("'force'") && e.contains("takes no query parameters"),
            "{e}"
        );
        assert!(ApiQuery::parse(Some("key=%zz"), CALLS).is_err());
        let long = format!("key={}", "x".repeat(MAX_VALUE_LEN + 1));
        assert!(ApiQuery::parse(Some(&long), CALLS).is_err());
    }
}
