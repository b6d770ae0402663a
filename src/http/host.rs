//! Which `Host` a request may have written into the WSDL as the service's
//! address (when `soap.public_url` is unset).
//!
//! Whatever a client sends as `Host` used to be echoed into the document
//! (`gw.corp.ru@evil.example` included): a cache or a client that keeps the
//! WSDL would then post the PBX's calls elsewhere. Now a `Host` is taken
//! only when it names the address the connection reached (IP and port) or
//! one of `server.names`; otherwise the WSDL names the address the
//! connection reached.

use std::net::{IpAddr, SocketAddr};

use hyper::header::HeaderValue;
use hyper::http::uri::Authority;

/// `server.names`: host names (with an optional port) the gateway is
/// reached by.
pub struct KnownHosts {
    /// Lower-cased host, and the port if the entry gave one (none: any).
    names: Vec<(String, Option<u16>)>,
}

impl KnownHosts {
    /// Entries that are not a host with an optional port (validation
    /// refuses them) are left out.
    pub fn new(names: &[String]) -> KnownHosts {
        let names = names
            .iter()
            .filter(|name| !name.contains('@'))
            .filter_map(|name| name.parse::<Authority>().ok())
            .map(|a| (a.host().to_ascii_lowercase(), a.port_u16()))
            .collect();
        KnownHosts { names }
    }

    /// The authority (`host[:port]`) of the service address: `host` (the
    /// request's `Host`) if it names `local` (the address the connection
    /// reached; a missing port is the scheme's) or a known name, else
    /// `local` itself.
    pub fn service_authority(
        &self,
        host: Option<&HeaderValue>,
        local: SocketAddr,
        https: bool,
    ) -> String {
        let local = SocketAddr::new(local.ip().to_canonical(), local.port());
        host.and_then(|h| h.to_str().ok())
            .filter(|h| !h.contains('@'))
            .and_then(|h| h.parse::<Authority>().ok())
            .filter(|a| self.knows(a, local, https))
            .map_or_else(|| local.to_string(), |a| a.as_str().to_owned())
    }

    fn knows(&self, authority: &Authority, local: SocketAddr, https: bool) -> bool {
        let host = authority.host();
        let port = authority.port_u16();
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .parse::<IpAddr>();
        if let Ok(ip) = literal {
            let default_port = if https { 443 } else { 80 };
            if ip.to_canonical() == local.ip() && port.unwrap_or(default_port) == local.port() {
                return true;
            }
        }
        self.names.iter().any(|(name, name_port)| {
            name.eq_ignore_ascii_case(host) && name_port.is_none_or(|p| Some(p) == port)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authority(known: &KnownHosts, host: &str, local: &str, https: bool) -> String {
        let value = HeaderValue::from_str(host).expect("header value");
        let local: SocketAddr = local.parse().expect("local address");
        known.service_authority(Some(&value), local, https)
    }

    #[test]
    fn a_host_naming_the_address_reached_is_taken() {
        let k = KnownHosts::new(&[]);
        assert_eq!(
            authority(&k, "192.0.2.10:8080", "192.0.2.10:8080", false),
            "192.0.2.10:8080"
        );
        assert_eq!(
            authority(&k, "192.0.2.10", "192.0.2.10:80", false),
            "192.0.2.10"
        );
        assert_eq!(
            authority(&k, "[2001:db8::1]:443", "[2001:db8::1]:443", true),
            "[2001:db8::1]:443"
        );
        // The port must be the one reached too.
        assert_eq!(
            authority(&k, "192.0.2.10:9999", "192.0.2.10:8080", false),
            "192.0.2.10:8080"
        );
        // A dual-stack listener sees an IPv4 local address mapped into IPv6.
        assert_eq!(
            authority(&k, "192.0.2.10:8080", "[::ffff:192.0.2.10]:8080", false),
            "192.0.2.10:8080"
        );
    }

    #[test]
    fn a_configured_name_is_taken_with_any_port_or_its_own() {
        let k = KnownHosts::new(&["GW.corp.ru".into(), "pbx-gw.corp.ru:8443".into()]);
        let local = "10.0.0.5:8080";
        assert_eq!(authority(&k, "gw.corp.ru", local, false), "gw.corp.ru");
        assert_eq!(
            authority(&k, "gw.corp.ru:8080", local, false),
            "gw.corp.ru:8080"
        );
        assert_eq!(
            authority(&k, "pbx-gw.corp.ru:8443", local, true),
            "pbx-gw.corp.ru:8443"
        );
        assert_eq!(authority(&k, "pbx-gw.corp.ru:9000", local, true), local);
    }

    #[test]
    fn any_other_host_gives_the_address_reached() {
        let k = KnownHosts::new(&["gw.corp.ru".into()]);
        let local = "10.0.0.5:8080";
        for host in [
            "gw.corp.ru@evil.example",
            "evil.example",
            "gw.corp.ru.evil.example",
            "10.0.0.6:8080",
            "gw.corp.ru/x",
            "",
        ] {
            assert_eq!(authority(&k, host, local, false), local, "{host}");
        }
        let none = k.service_authority(None, local.parse().expect("addr"), false);
        assert_eq!(none, local);
    }
}
