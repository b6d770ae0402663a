//! [`RequestHead`]: what the front reads of every request's head, in one
//! pass over its headers.
//!
//! The PBX's SayName goes through every check the contract asks for: the
//! head's size, the credentials, the `Content-Type`, the body's length and
//! coding. Looked up one by one, each is a hash of the header name and a
//! probe of hyper's `HeaderMap` (about 100 instructions each, and the size a
//! walk of its own); a request has a handful of headers, so one walk that
//! picks them out as it sums the size costs less than the lookups alone.

use hyper::header::{self, HeaderMap, HeaderValue};

use super::auth::AuthFailure;
use super::body::{self, BodyHead};

/// Largest request head (request line and headers) a client may send; a
/// header flood gets 431 from hyper instead of growing a buffer. hyper
/// checks it only while a head is incomplete: a larger head that arrives in
/// one read gets through (hyperium/hyper#4081), so every head is measured
/// again here.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// A request's head as the front's checks see it, borrowed from the request.
#[derive(Debug)]
pub struct RequestHead<'a> {
    /// The head's size as sent: request line and header lines.
    len: usize,
    content_type: Option<&'a HeaderValue>,
    /// The first `Authorization`, and whether another followed it.
    authorization: Option<&'a HeaderValue>,
    authorization_repeated: bool,
    /// The first `Content-Length` as a number (hyper has refused a request
    /// whose lengths disagree or are not numbers).
    content_length: Option<u64>,
    /// A `Content-Encoding` other than `identity` was sent.
    encoded: bool,
}

impl<'a> RequestHead<'a> {
    /// Reads the head of a request to `path_and_query` with `method`.
    pub fn scan(method: &hyper::Method, path_and_query: &str, headers: &'a HeaderMap) -> Self {
        let mut head = RequestHead {
            len: method.as_str().len() + path_and_query.len() + " HTTP/1.1\r\n ".len(),
            content_type: None,
            authorization: None,
            authorization_repeated: false,
            content_length: None,
            encoded: false,
        };
        for (name, value) in headers {
            head.len += name.as_str().len() + value.len() + ": \r\n".len();
            // Standard names compare as small integers: no string compares.
            if name == header::CONTENT_TYPE {
                head.content_type.get_or_insert(value);
            } else if name == header::AUTHORIZATION {
                if head.authorization.is_some() {
                    head.authorization_repeated = true;
                } else {
                    head.authorization = Some(value);
                }
            } else if name == header::CONTENT_LENGTH {
                if head.content_length.is_none() {
                    head.content_length = value.to_str().ok().and_then(|v| v.parse().ok());
                }
            } else if name == header::CONTENT_ENCODING {
                head.encoded |= !body::is_identity_coding(value);
            }
        }
        head
    }

    /// Larger than [`MAX_HEAD_BYTES`].
    pub fn too_large(&self) -> bool {
        self.len > MAX_HEAD_BYTES
    }

    /// The `Content-Type`, or "" when there is none (or not as text).
    pub fn content_type(&self) -> &'a str {
        self.content_type
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The one `Authorization` header, if any: as [`super::auth::authorization`].
    pub fn authorization(&self) -> Result<Option<&'a HeaderValue>, AuthFailure> {
        if self.authorization_repeated {
            return Err(AuthFailure::Repeated);
        }
        Ok(self.authorization)
    }

    /// What it says of the body: as [`BodyHead::of`].
    pub fn body(&self) -> BodyHead {
        BodyHead::new(self.content_length, self.encoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::auth;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                header::HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    const PBX: &[(&str, &str)] = &[
        ("Host", "127.0.0.1:8080"),
        ("Content-Type", "text/xml; charset=utf-8"),
        ("SOAPAction", "\"http://VATS/SayName\""),
        ("Authorization", "Basic U09BUDoxMjM="),
        ("Content-Length", "312"),
    ];

    #[test]
    fn the_pbx_head_is_read_as_the_lookups_one_by_one_read_it() {
        let map = headers(PBX);
        let head = RequestHead::scan(&hyper::Method::POST, "/telephony/ws/VATS", &map);
        assert_eq!(head.content_type(), "text/xml; charset=utf-8");
        assert_eq!(head.authorization(), auth::authorization(&map));
        let (ours, theirs) = (head.body(), BodyHead::of(&map));
        assert_eq!(format!("{ours:?}"), format!("{theirs:?}"));
        // The request line and each `name: value\r\n`, as sent (the blank
        // line that ends the head is not counted).
        let sent = "POST /telephony/ws/VATS HTTP/1.1\r\n".len()
            + PBX
                .iter()
                .map(|(n, v)| n.len() + ": ".len() + v.len() + "\r\n".len())
                .sum::<usize>();
        assert_eq!(head.len, sent);
        assert!(!head.too_large());
    }

    #[test]
    fn a_repeated_authorization_an_encoding_and_a_huge_header_are_seen() {
        let big = "x".repeat(MAX_HEAD_BYTES);
        let map = headers(&[
            ("Authorization", "Basic a"),
            ("Content-Encoding", "identity"),
            ("authorization", "Basic b"),
            ("Content-Encoding", "gzip"),
            ("X-Big", &big),
        ]);
        let head = RequestHead::scan(&hyper::Method::POST, "/", &map);
        assert_eq!(head.authorization(), Err(AuthFailure::Repeated));
        assert_eq!(
            format!("{:?}", head.body()),
            format!("{:?}", BodyHead::of(&map))
        );
        assert!(format!("{:?}", head.body()).contains("encoded: true"));
        assert!(head.too_large());
        assert_eq!(head.content_type(), "");
    }
}
