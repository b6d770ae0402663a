//! Which web pages may open an operator screen's WebSocket or long-poll:
//! `popup.allowed_origins`, checked on the `Origin` header.
//!
//! A browser sends `Origin` with every WebSocket handshake and every
//! cross-origin request, and a page cannot forge it; without a check, any
//! site an operator visits could open `/operator/ws` with a token it got
//! hold of, from the operator's own machine and address (past
//! `popup.allow_from`). Programs (1C's WebSocket client, a screen of one's
//! own) send no `Origin` and are let through: for them the token is the
//! check. The gateway's own page is always let through too: its origin is
//! the one the request was sent to (`Host`, with `https` when the client
//! reached the gateway, or a trusted proxy, over TLS), so turning the check
//! on never breaks `/operator`.

use hyper::header::{self, HeaderMap};

use crate::config::{normalize_origin, OriginList};

/// `popup.allowed_origins`, built once at start-up.
pub struct AllowedOrigins {
    list: OriginList,
}

/// A request whose `Origin` is not allowed: what it said, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignOrigin(pub String);

impl AllowedOrigins {
    pub fn new(list: &OriginList) -> AllowedOrigins {
        AllowedOrigins { list: list.clone() }
    }

    /// Whether the request may go on: always with no list or no `Origin`;
    /// otherwise when its origin is in the list or is the gateway's own
    /// (`Host` over `http`, or `https` when `https`).
    pub fn check(&self, headers: &HeaderMap, https: bool) -> Result<(), ForeignOrigin> {
        if self.list.is_empty() {
            return Ok(());
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let said = String::from_utf8_lossy(origin.as_bytes());
        let Some(origin) = normalize_origin(&said) else {
            // `null` (a sandboxed frame, a file) or no origin at all.
            return Err(ForeignOrigin(said.chars().take(100).collect()));
        };
        if self.list.contains(&origin)
            || own_origin(headers, https).is_some_and(|own| own == origin)
        {
            return Ok(());
        }
        Err(ForeignOrigin(origin))
    }
}

/// The origin the request was addressed to: its `Host` with the scheme the
/// client used.
fn own_origin(headers: &HeaderMap, https: bool) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let scheme = if https { "https" } else { "http" };
    normalize_origin(&format!("{scheme}://{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn headers(origin: Option<&'static str>, host: &'static str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static(host));
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_static(origin));
        }
        headers
    }

    fn allowed(entries: &[&str]) -> AllowedOrigins {
        let list = OriginList::from(entries.iter().map(|e| e.to_string()).collect::<Vec<_>>());
        AllowedOrigins::new(&list)
    }

    #[test]
    fn no_list_checks_nothing() {
        let origins = allowed(&[]);
        let h = headers(Some("https://evil.example"), "gw.example");
        assert_eq!(origins.check(&h, false), Ok(()));
    }

    #[test]
    fn a_listed_origin_passes_and_another_is_refused() {
        let origins = allowed(&["https://crm.example.ru"]);
        let h = headers(Some("https://crm.example.ru"), "gw.example:8080");
        assert_eq!(origins.check(&h, false), Ok(()));
        let h = headers(Some("https://CRM.example.ru:443"), "gw.example:8080");
        assert_eq!(origins.check(&h, false), Ok(()));
        let h = headers(Some("https://evil.example"), "gw.example:8080");
        assert_eq!(
            origins.check(&h, false),
            Err(ForeignOrigin("https://evil.example".into()))
        );
        let h = headers(Some("null"), "gw.example:8080");
        assert_eq!(origins.check(&h, false), Err(ForeignOrigin("null".into())));
    }

    #[test]
    fn no_origin_and_the_gateways_own_page_pass() {
        let origins = allowed(&["https://crm.example.ru"]);
        assert_eq!(origins.check(&headers(None, "gw.example"), false), Ok(()));
        let h = headers(Some("http://gw.example:8080"), "gw.example:8080");
        assert_eq!(origins.check(&h, false), Ok(()));
        // Over TLS the page's origin is https; a page on http is another origin.
        let h = headers(Some("https://gw.example"), "gw.example:443");
        assert_eq!(origins.check(&h, true), Ok(()));
        let h = headers(Some("http://gw.example:8080"), "gw.example:8080");
        assert!(origins.check(&h, true).is_err());
    }
}
