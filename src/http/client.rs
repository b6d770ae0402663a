//! Who a request comes from: the address allow-lists, throttling and logs
//! use, and whether the client reached the gateway over HTTPS.
//!
//! Without `server.trusted_proxies` that is the connection's peer, and the
//! forwarding headers are ignored. A connection from a trusted proxy names
//! its client in `Forwarded` (RFC 7239) or, when it sends none,
//! `X-Forwarded-For`: each proxy on the way appends the address it was
//! reached from, so the list is read from the right, past the trusted
//! proxies, and the first address that is not one is the client. Entries
//! to the left of it were written by the client itself and are never
//! believed.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use hyper::header::{HeaderMap, HeaderName};

use crate::config::AddressList;

static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// The client of one request, as far as the gateway can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// The peer, or the address a trusted proxy forwarded for.
    pub addr: IpAddr,
    /// The client spoke HTTPS to a trusted proxy (which said so), or to
    /// the gateway itself.
    pub https: bool,
    /// The gateway's address the connection reached (set by the front).
    pub local: Option<SocketAddr>,
    /// The request's id in the logs and its `X-Request-Id` (set by the front).
    pub request: RequestId,
}

pub use crate::logging::RequestId;

/// A request's id as its `X-Request-Id` header value: written on the
/// stack, one allocation (the header's bytes).
pub fn request_id_header(id: RequestId) -> hyper::header::HeaderValue {
    use std::io::Write as _;
    let mut buf = [0u8; 48];
    let len = {
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        // Two u64s and a dot fit in 48 bytes: the write cannot fail.
        let _ = write!(cursor, "{id}");
        usize::try_from(cursor.position()).unwrap_or(0)
    };
    hyper::header::HeaderValue::from_bytes(&buf[..len])
        .unwrap_or_else(|_| hyper::header::HeaderValue::from_static("0.0"))
}

/// `server.trusted_proxies`, and reading a request's client with them.
pub struct ClientResolver {
    trusted: AddressList,
}

/// One hop of a forwarding header: the address it names (`None` for
/// `unknown`, an obfuscated name or text that is no address) and, in
/// `Forwarded`, the protocol that hop was reached by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hop {
    addr: Option<IpAddr>,
    https: Option<bool>,
}

impl ClientResolver {
    pub fn new(trusted_proxies: &AddressList) -> ClientResolver {
        ClientResolver {
            trusted: trusted_proxies.clone(),
        }
    }

    /// The client of a request that arrived from `peer` with `headers`.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> Client {
        let peer = peer.to_canonical();
        let direct = Client {
            addr: peer,
            https: false,
            local: None,
            request: RequestId::default(),
        };
        // The common case costs one check: no proxies configured.
        if self.trusted.is_empty() || !self.trusted.contains(peer) {
            return direct;
        }
        let (hops, from_forwarded) = if headers.contains_key(&FORWARDED) {
            (forwarded_hops(headers), true)
        } else {
            (x_forwarded_for_hops(headers), false)
        };
        let mut client = direct;
        let mut hop_https = None;
        for hop in hops.iter().rev() {
            // An entry that names no address ends the walk: whoever is left
            // of it cannot be told, and the last known hop stands for them.
            let Some(addr) = hop.addr else { break };
            client.addr = addr.to_canonical();
            hop_https = hop.https;
            if !self.trusted.contains(client.addr) {
                break;
            }
        }
        client.https = match hop_https {
            Some(https) if from_forwarded => https,
            _ => forwarded_proto_https(headers),
        };
        client
    }
}

/// Every `for=` of every `Forwarded` header, left to right, with its
/// element's `proto=`.
fn forwarded_hops(headers: &HeaderMap) -> Vec<Hop> {
    let mut hops = Vec::new();
    for value in headers.get_all(&FORWARDED) {
        let Ok(text) = value.to_str() else {
            // Not text: no hop of it can be read, and none right of it trusted.
            hops.push(Hop {
                addr: None,
                https: None,
            });
            continue;
        };
        for element in split_outside_quotes(text, ',') {
            let mut hop = Hop {
                addr: None,
                https: None,
            };
            let mut has_for = false;
            for pair in split_outside_quotes(element, ';') {
                let Some((name, value)) = pair.split_once('=') else {
                    continue;
                };
                let value = unquote(value.trim());
                match name.trim().to_ascii_lowercase().as_str() {
                    "for" => {
                        has_for = true;
                        hop.addr = node_address(value);
                    }
                    "proto" => hop.https = Some(value.eq_ignore_ascii_case("https")),
                    _ => {}
                }
            }
            // An element without for= says nothing about who connected.
            if has_for {
                hops.push(hop);
            }
        }
    }
    hops
}

/// Every address of every `X-Forwarded-For` header, left to right.
fn x_forwarded_for_hops(headers: &HeaderMap) -> Vec<Hop> {
    let mut hops = Vec::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        match value.to_str() {
            Ok(text) => hops.extend(text.split(',').map(|entry| Hop {
                addr: node_address(unquote(entry.trim())),
                https: None,
            })),
            Err(_) => hops.push(Hop {
                addr: None,
                https: None,
            }),
        }
    }
    hops
}

/// The last `X-Forwarded-Proto` value (the one the nearest proxy wrote) is
/// `https`.
fn forwarded_proto_https(headers: &HeaderMap) -> bool {
    headers
        .get_all(&X_FORWARDED_PROTO)
        .iter()
        .next_back()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

/// The address of a node as RFC 7239 writes it (`192.0.2.60`,
/// `192.0.2.60:4711`, `[2001:db8::17]`, `[2001:db8::17]:4711`), also
/// a bare IPv6 address as some `X-Forwarded-For` writers send it.
fn node_address(node: &str) -> Option<IpAddr> {
    if let Some(rest) = node.strip_prefix('[') {
        let (v6, _port) = rest.split_once(']')?;
        return v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(addr) = node.parse::<IpAddr>() {
        return Some(addr);
    }
    let (host, port) = node.rsplit_once(':')?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// `value` without its surrounding double quotes, if it has them.
fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

/// `text` split at `separator`s that are not inside a quoted string.
fn split_outside_quotes(text: &str, separator: char) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == separator && !quoted => {
                parts.push(&text[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_static(name),
                HeaderValue::from_str(value).expect("value"),
            );
        }
        map
    }

    fn resolver(trusted: &[&str]) -> ClientResolver {
        ClientResolver::new(&AddressList::parse(trusted))
    }

    #[test]
    fn without_trusted_proxies_the_headers_are_ignored() {
        let r = resolver(&[]);
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.5"),
            ("x-forwarded-proto", "https"),
        ]);
        let client = r.resolve(ip("198.51.100.1"), &h);
        assert_eq!(client.addr, ip("198.51.100.1"));
        assert!(!client.https);
    }

    #[test]
    fn a_forged_header_from_a_stranger_changes_nothing() {
        let r = resolver(&["10.0.0.0/8"]);
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.5"),
            ("forwarded", "for=1.2.3.4"),
        ]);
        assert_eq!(r.resolve(ip("198.51.100.1"), &h).addr, ip("198.51.100.1"));
    }

    #[test]
    fn the_rightmost_untrusted_address_is_the_client() {
        let r = resolver(&["10.0.0.0/8"]);
        // The client forged the first entry; the proxy appended the real one.
        let h = headers(&[("x-forwarded-for", "1.1.1.1, 203.0.113.5, 10.0.0.7")]);
        assert_eq!(r.resolve(ip("10.0.0.1"), &h).addr, ip("203.0.113.5"));
        // Two header lines are one list.
        let h = headers(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "203.0.113.6"),
        ]);
        assert_eq!(r.resolve(ip("10.0.0.1"), &h).addr, ip("203.0.113.6"));
        // Only proxies: the leftmost is where it came from.
        let h = headers(&[("x-forwarded-for", "10.1.1.1, 10.2.2.2")]);
        assert_eq!(r.resolve(ip("10.0.0.1"), &h).addr, ip("10.1.1.1"));
        // No header: the proxy itself.
        assert_eq!(
            r.resolve(ip("10.0.0.1"), &HeaderMap::new()).addr,
            ip("10.0.0.1")
        );
        // An entry that is no address stops the walk at the last known hop.
        let h = headers(&[("x-forwarded-for", "203.0.113.5, garbage, 10.0.0.9")]);
        assert_eq!(r.resolve(ip("10.0.0.1"), &h).addr, ip("10.0.0.9"));
    }

    #[test]
    fn forwarded_with_ipv6_ports_quotes_and_proto() {
        let r = resolver(&["10.0.0.0/8", "2001:db8:ffff::/48"]);
        let h = headers(&[(
            "forwarded",
            r#"for=192.0.2.43;proto=http, for="[2001:db8:cafe::17]:4711";proto=https;by=10.0.0.1, For="[2001:db8:ffff::2]""#,
        )]);
        let client = r.resolve(ip("10.0.0.1"), &h);
        assert_eq!(client.addr, ip("2001:db8:cafe::17"));
        assert!(client.https);
        // Forwarded wins over X-Forwarded-For when both are sent.
        let h = headers(&[
            ("forwarded", "for=\"192.0.2.60:8080\""),
            ("x-forwarded-for", "203.0.113.9"),
        ]);
        let client = r.resolve(ip("10.0.0.1"), &h);
        assert_eq!(client.addr, ip("192.0.2.60"));
        assert!(!client.https);
        // An obfuscated or unknown node ends the walk.
        let h = headers(&[("forwarded", "for=192.0.2.1, for=_hidden, for=10.3.3.3")]);
        assert_eq!(r.resolve(ip("10.0.0.1"), &h).addr, ip("10.3.3.3"));
    }

    #[test]
    fn x_forwarded_proto_from_a_trusted_proxy_says_https() {
        let r = resolver(&["127.0.0.1"]);
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.5"),
            ("x-forwarded-proto", "https"),
        ]);
        assert!(r.resolve(ip("127.0.0.1"), &h).https);
        let h = headers(&[("x-forwarded-proto", "http")]);
        assert!(!r.resolve(ip("127.0.0.1"), &h).https);
    }

    #[test]
    fn an_ipv4_peer_mapped_into_ipv6_is_the_ipv4_address() {
        let r = resolver(&["127.0.0.1"]);
        let h = headers(&[("x-forwarded-for", "203.0.113.5")]);
        assert_eq!(
            r.resolve(ip("::ffff:127.0.0.1"), &h).addr,
            ip("203.0.113.5")
        );
        assert_eq!(
            resolver(&[]).resolve(ip("::ffff:192.0.2.1"), &h).addr,
            ip("192.0.2.1")
        );
    }

    #[test]
    fn node_addresses() {
        assert_eq!(node_address("192.0.2.1"), Some(ip("192.0.2.1")));
        assert_eq!(node_address("192.0.2.1:80"), Some(ip("192.0.2.1")));
        assert_eq!(node_address("[::1]:80"), Some(ip("::1")));
        assert_eq!(node_address("[::1]"), Some(ip("::1")));
        assert_eq!(node_address("2001:db8::1"), Some(ip("2001:db8::1")));
        for bad in [
            "unknown",
            "_hidden",
            "",
            "1.2.3.4:",
            "1.2.3.4:x",
            "[::1",
            "host:80",
        ] {
            assert_eq!(node_address(bad), None, "{bad}");
        }
    }
}
