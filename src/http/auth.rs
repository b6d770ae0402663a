//! Every credentials check of the gateway: HTTP Basic for the PBX, Bearer
//! for the push and journal APIs, screen tokens for operator screens; and
//! the one rate-limited log of refusals.
//!
//! All of them compare with [`constant_time_eq`]: the same time whether the
//! first byte or the last one differs, so response timing does not reveal
//! how much of a guess was right.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::StatusCode;

use super::client::{Client, RequestId};
use crate::config::OperatorConfig;
use crate::logging::WarnLimiter;

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
    #[error("the request has more than one Authorization header: send exactly one")]
    Repeated,
}

impl AuthFailure {
    /// 400 for a request that cannot be read as one set of credentials, 401
    /// for missing or wrong ones.
    pub fn status(self) -> StatusCode {
        match self {
            AuthFailure::Repeated => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

/// The request's `Authorization` header, if it has one. Two or more are
/// refused rather than picking one: a proxy and a client disagreeing on
/// credentials must not have either of them win silently.
pub fn authorization(headers: &HeaderMap) -> Result<Option<&HeaderValue>, AuthFailure> {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    match (all.next(), all.next()) {
        (first, None) => Ok(first),
        (Some(_), Some(_)) | (None, Some(_)) => Err(AuthFailure::Repeated),
    }
}

/// Equality whose running time depends only on `expected`'s length, never on
/// where `given` differs nor on `given`'s length.
pub fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    let same_len = given.len() == expected.len();
    // Of another length, `expected` is compared with itself: the same loop
    // over the same number of bytes. `black_box` keeps the compiler from
    // seeing that and skipping it. A loop over two slices of one length has
    // no bounds checks and is vectorized (a byte-by-byte loop with them was
    // 200 instructions of every SayName, callgrind).
    let other = std::hint::black_box(if same_len { given } else { expected });
    let diff = other
        .iter()
        .zip(expected)
        .fold(0u8, |diff, (g, e)| diff | (g ^ e));
    same_len & (diff == 0)
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

/// The token of an `Authorization: Bearer <token>` header (the scheme in any
/// case, spaces around the token dropped); `None` for no header, another
/// scheme, or a value that is not text.
pub fn bearer_token(header: Option<&HeaderValue>) -> Option<&str> {
    header
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim())
}

/// Checks `Authorization: Bearer <token>` against the configured token; no
/// configured token refuses everyone.
pub fn check_bearer(header: Option<&HeaderValue>, token: Option<&str>) -> Result<(), AuthFailure> {
    let given = bearer_token(header).ok_or(AuthFailure::MissingBearer)?;
    match token {
        Some(expected) if constant_time_eq(given.as_bytes(), expected.as_bytes()) => Ok(()),
        _ => Err(AuthFailure::WrongToken),
    }
}

/// Who a screen token belongs to: what a screen transport needs once the
/// token is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScreenOperator {
    /// The abonent key whose pop-ups the screen gets.
    pub key: String,
    pub name: String,
}

/// The `[[operator]]` tokens, each with its operator. Several entries may
/// share a key (one operator, several devices, one token each).
pub struct ScreenTokens {
    entries: Vec<(Box<[u8]>, ScreenOperator)>,
}

impl ScreenTokens {
    pub fn new(operators: &[OperatorConfig]) -> ScreenTokens {
        let entries = operators
            .iter()
            .map(|op| {
                (
                    op.token.expose().as_bytes().into(),
                    ScreenOperator {
                        key: op.key.clone(),
                        name: op.name.clone(),
                    },
                )
            })
            .collect();
        ScreenTokens { entries }
    }

    /// No `[[operator]]` is configured: every screen is refused.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The operator whose token this is, if any.
    ///
    /// Every configured token is compared, each in constant time, so the time
    /// taken does not tell which operator (if any) matched or how much of a
    /// guess was right. An empty token never matches. If two entries share a
    /// token, the first wins (configuration refuses that).
    pub fn operator_for_token(&self, token: &str) -> Option<ScreenOperator> {
        let presented = token.as_bytes();
        let mut found: Option<&ScreenOperator> = None;
        for (configured, operator) in &self.entries {
            let equal = constant_time_eq(presented, configured) & !configured.is_empty();
            if equal && found.is_none() {
                found = Some(operator);
            }
        }
        found.cloned()
    }
}

impl std::fmt::Debug for ScreenTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The tokens are secrets: only who they belong to is shown.
        f.debug_list()
            .entries(self.entries.iter().map(|(_, operator)| operator))
            .finish()
    }
}

/// Seconds between two warnings of one [`RefusalLog`].
const REFUSAL_WARNING_EVERY_S: u64 = 60;

/// Logs refused requests at warn level, each (reason, client address) at
/// most once a minute with the count of repeats kept quiet, the rest at
/// debug level: a misconfigured PBX or a password guesser cannot write a
/// log line per request, and one noisy client does not hide another (every
/// refusal is counted in `cti_http_responses_total` anyway). Never logs
/// credentials; logs the client's address (behind a trusted proxy, the
/// proxy's client) and the request's id; what the client sent (path,
/// origin) as plain `&str` fields, which the log writes quoted and escaped
/// (`Debug`), never with `%` (`Display`, written raw).
pub struct RefusalLog {
    /// What was refused, for the log line: "SOAP request", "API request".
    what: &'static str,
    /// Unix second of the last warning of [`RefusalLog::warning_due`].
    last_warning: AtomicU64,
    /// Per (reason, address).
    limiter: LazyLock<WarnLimiter>,
}

impl RefusalLog {
    pub const fn new(what: &'static str) -> RefusalLog {
        RefusalLog {
            what,
            last_warning: AtomicU64::new(0),
            limiter: LazyLock::new(WarnLimiter::new),
        }
    }

    /// `Some(repeats)` when `reason` from `client` may be warned of now.
    fn due(&self, reason: &str, client: IpAddr) -> Option<u64> {
        self.limiter.due(&format!("{reason} {client}"))
    }

    /// Bad or missing credentials.
    pub fn refused(&self, path: &str, client: Client, reason: &dyn std::fmt::Display) {
        let what = self.what;
        let (request_id, client) = (client.request, client.addr);
        let reason = reason.to_string();
        match self.due(&reason, client) {
            Some(repeats) => {
                tracing::warn!(what, path, %client, %request_id, %reason, repeats, "request refused: bad or missing credentials (repeats of this reason from this address within a minute are logged at debug level and counted in cti_http_responses_total)")
            }
            None => {
                tracing::debug!(what, path, %client, %request_id, %reason, "request refused: bad or missing credentials")
            }
        }
    }

    /// A client address outside the allow-list `key`.
    pub fn refused_address(&self, path: &str, client: Client, key: &str) {
        let what = self.what;
        let (request_id, client) = (client.request, client.addr);
        match self.due("address", client) {
            Some(repeats) => {
                tracing::warn!(what, path, %client, %request_id, allow_list = key, repeats, "request refused: the client address is not in the endpoint's allow-list (repeats from this address within a minute are logged at debug level and counted in cti_http_refused_total)")
            }
            None => {
                tracing::debug!(what, path, %client, %request_id, allow_list = key, "request refused: the client address is not in the endpoint's allow-list")
            }
        }
    }

    /// An operator screen opened by a page of an origin not in
    /// `popup.allowed_origins`.
    pub fn refused_origin(&self, path: &str, client: Client, origin: &str) {
        let what = self.what;
        let (request_id, client) = (client.request, client.addr);
        match self.due("origin", client) {
            Some(repeats) => {
                tracing::warn!(what, path, %client, %request_id, origin, repeats, "request refused: the page's origin is not in popup.allowed_origins (repeats from this address within a minute are logged at debug level and counted in cti_http_refused_total)")
            }
            None => {
                tracing::debug!(what, path, %client, %request_id, origin, "request refused: the page's origin is not in popup.allowed_origins")
            }
        }
    }

    /// Any other refusal (405, 413, 415, 429, 431, a SOAP fault...): at
    /// warn level once a minute per (status, endpoint, address).
    pub fn refused_status(
        &self,
        endpoint: &str,
        status: u16,
        client: IpAddr,
        request_id: RequestId,
    ) {
        let what = self.what;
        match self.due(&format!("{status} {endpoint}"), client) {
            Some(repeats) => {
                tracing::warn!(what, endpoint, status, %client, %request_id, repeats, "request refused (repeats of this status on this endpoint from this address within a minute are logged at debug level and counted in cti_http_responses_total)")
            }
            None => {
                tracing::debug!(what, endpoint, status, %client, %request_id, "request refused")
            }
        }
    }

    /// True at most once a minute (across threads), whoever is refused:
    /// for refusals of a flood from many addresses (connections).
    pub(super) fn warning_due(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_warning.load(Ordering::Relaxed);
        now >= last + REFUSAL_WARNING_EVERY_S
            && self
                .last_warning
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    const K1: &str = "gW3cyUJAtl50PhF";
    const K2: &str = "otherKey0000001";

    fn operators() -> Vec<OperatorConfig> {
        [
            (K1, "tok-ivanova-desk", "Ivanova"),
            (K2, "tok-petrov", "Petrov"),
            (K1, "tok-ivanova-phone", "Ivanova (phone)"),
        ]
        .into_iter()
        .map(|(key, token, name)| OperatorConfig {
            key: key.into(),
            token: Secret::new(token),
            name: name.into(),
        })
        .collect()
    }

    #[test]
    fn operator_for_token_finds_the_right_operator_and_refuses_others() {
        let tokens = ScreenTokens::new(&operators());
        let info = |key: &str, name: &str| {
            Some(ScreenOperator {
                key: key.into(),
                name: name.into(),
            })
        };
        assert_eq!(
            tokens.operator_for_token("tok-ivanova-desk"),
            info(K1, "Ivanova")
        );
        assert_eq!(tokens.operator_for_token("tok-petrov"), info(K2, "Petrov"));
        assert_eq!(
            tokens.operator_for_token("tok-ivanova-phone"),
            info(K1, "Ivanova (phone)")
        );
        for wrong in [
            "",
            "tok-petro",
            "tok-petrov ",
            "TOK-PETROV",
            "tok-petrow",
            K1,
        ] {
            assert_eq!(tokens.operator_for_token(wrong), None, "{wrong:?}");
        }
        // The token never shows in logs.
        assert!(!format!("{:?}", operators()).contains("tok-"));
        assert!(!format!("{tokens:?}").contains("tok-"));
    }

    #[test]
    fn an_empty_configured_token_matches_nothing() {
        let tokens = ScreenTokens::new(&[OperatorConfig {
            key: K1.into(),
            token: Secret::new(""),
            name: "nobody".into(),
        }]);
        assert_eq!(tokens.operator_for_token(""), None);
    }

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"ab\0", b"ab"));
        assert!(!constant_time_eq(b"ab", b"abc"));
        assert!(!constant_time_eq(b"", b"abc"));
        assert!(!constant_time_eq(b"abc", b""));
    }

    #[test]
    fn two_authorization_headers_are_refused_not_picked_from() {
        let mut headers = HeaderMap::new();
        assert_eq!(authorization(&headers), Ok(None));
        headers.append(header::AUTHORIZATION, hv("Basic U09BUDoxMjM="));
        assert_eq!(authorization(&headers), Ok(Some(&hv("Basic U09BUDoxMjM="))));
        headers.append(header::AUTHORIZATION, hv("Basic U09BUDoxMjM="));
        assert_eq!(authorization(&headers), Err(AuthFailure::Repeated));
        assert_eq!(AuthFailure::Repeated.status(), StatusCode::BAD_REQUEST);
        assert_eq!(AuthFailure::Wrong.status(), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn the_refusal_log_warns_once_a_minute() {
        let log = RefusalLog::new("test request");
        assert!(log.warning_due());
        assert!(!log.warning_due());
        let client = Client {
            addr: IpAddr::from([127, 0, 0, 1]),
            https: false,
            local: None,
            request: RequestId {
                connection: 3,
                number: 7,
            },
        };
        log.refused("/x", client, &AuthFailure::Wrong);
        assert_eq!(log.due("wrong user name or password", client.addr), None);
        assert_eq!(
            log.due("wrong user name or password", [127, 0, 0, 2].into()),
            Some(0)
        );
    }

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
