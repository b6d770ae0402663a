//! Credentials checks: HTTP Basic for the PBX.
//!
//! Comparisons take the same time whether the first byte or the last one
//! differs, so response timing does not reveal how much of a guess was right.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hyper::header::HeaderValue;

/// Why a request's credentials were refused; the message is safe to send
/// back (it never repeats what the client sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("authentication required: send HTTP Basic credentials (Authorization: Basic base64(user:password))")]
    Missing,
    #[error("the Authorization header is not valid HTTP Basic credentials: expected `Basic ` and base64(user:password)")]
    Malformed,
    #[error("wrong user name or password")]
    Wrong,
    #[error("authentication required: send `Authorization: Bearer <api.token>`")]
    MissingBearer,
    #[error("wrong token")]
    WrongToken,
}

/// Equality whose running time depends only on `expected`'s length, never on
/// where `given` differs nor on `given`'s length.
pub fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let mut diff = u8::from(given.len() != expected.len());
    for (i, e) in expected.iter().enumerate() {
        diff |= given.get(i).copied().unwrap_or(!e) ^ e;
    }
    diff == 0
}

pub struct BasicAuth {
    /// `Basic <base64>` exactly as a well-behaved client sends it: the common
    /// case is one comparison, no decoding.
    expected_header: Vec<u8>,
    expected_pair: Vec<u8>,
}

impl BasicAuth {
    pub fn new(username: &str, password: &str) -> BasicAuth {
        let pair = format!("{username}:{password}");
        BasicAuth {
            expected_header: format!("Basic {}", STANDARD.encode(&pair)).into_bytes(),
            expected_pair: pair.into_bytes(),
        }
    }

    pub fn check(&self, header: Option<&HeaderValue>) -> Result<(), AuthFailure> {
        let Some(header) = header else {
            return Err(AuthFailure::Missing);
        };
        let bytes = header.as_bytes();
        if constant_time_eq(bytes, &self.expected_header) {
            return Ok(());
        }
        // Slow path: other spellings of the scheme, spacing, missing padding.
        let text = std::str::from_utf8(bytes).map_err(|_| AuthFailure::Malformed)?;
        let (scheme, rest) = text.trim().split_once(' ').ok_or(AuthFailure::Malformed)?;
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(AuthFailure::Malformed);
        }
        let encoded = rest.trim();
        let decoded = STANDARD
            .decode(encoded)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded))
            .map_err(|_| AuthFailure::Malformed)?;
        if !decoded.contains(&b':') {
            return Err(AuthFailure::Malformed);
        }
        if constant_time_eq(&decoded, &self.expected_pair) {
            Ok(())
        } else {
            Err(AuthFailure::Wrong)
        }
    }
}

/// Checks `Authorization: Bearer <token>` against the configured token; no
/// configured token refuses everyone.
pub fn check_bearer(header: Option<&HeaderValue>, token: Option<&str>) -> Result<(), AuthFailure> {
    let given = header
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
        .ok_or(AuthFailure::MissingBearer)?;
    match token {
        Some(expected) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => Ok(()),
        _ => Err(AuthFailure::WrongToken),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hv(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).expect("header value")
    }

    #[test]
    fn seed_credentials_are_accepted() {
        let auth = BasicAuth::new("SOAP", "123");
        assert_eq!(auth.check(Some(&hv("Basic U09BUDoxMjM="))), Ok(()));
        assert_eq!(auth.check(Some(&hv("basic   U09BUDoxMjM"))), Ok(()));
    }

    #[test]
    fn wrong_missing_and_malformed_are_told_apart() {
        let auth = BasicAuth::new("SOAP", "123");
        assert_eq!(auth.check(None), Err(AuthFailure::Missing));
        assert_eq!(
            auth.check(Some(&hv("Basic U09BUDoxMjQ="))),
            Err(AuthFailure::Wrong)
        );
        // The seed's first curl example: two headers run together by a typo.
        assert_eq!(
            auth.check(Some(&hv("Basic U09BUDoxMjhe-Control: no-cache"))),
            Err(AuthFailure::Malformed)
        );
        assert_eq!(
            auth.check(Some(&hv("Bearer abc"))),
            Err(AuthFailure::Malformed)
        );
        assert_eq!(
            auth.check(Some(&hv("Basic bm9jb2xvbg=="))),
            Err(AuthFailure::Malformed)
        );
    }

    #[test]
    fn constant_time_eq_is_plain_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abd", b"abc"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"abcd", b"abc"));
        assert!(!constant_time_eq(b"", b"abc"));
        assert!(constant_time_eq(b"", b""));
        // A missing byte must not compare equal to anything, not even 0xff's complement.
        assert!(!constant_time_eq(b"", b"\x00"));
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(check_bearer(Some(&hv("Bearer t0k")), Some("t0k")), Ok(()));
        assert_eq!(check_bearer(Some(&hv("bearer  t0k ")), Some("t0k")), Ok(()));
        assert_eq!(
            check_bearer(Some(&hv("Bearer bad")), Some("t0k")),
            Err(AuthFailure::WrongToken)
        );
        assert_eq!(
            check_bearer(Some(&hv("Bearer t0k")), None),
            Err(AuthFailure::WrongToken)
        );
        assert_eq!(
            check_bearer(None, Some("t0k")),
            Err(AuthFailure::MissingBearer)
        );
        assert_eq!(
            check_bearer(Some(&hv("Basic dDA=")), Some("t0k")),
            Err(AuthFailure::MissingBearer)
        );
    }
}
