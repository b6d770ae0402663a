//! Address allow-lists: which client addresses may reach an endpoint group.
//!
//! Each group of endpoints has a list of its own (`soap.allow_from`,
//! `popup.allow_from`, `api.allow_from`, `metrics.allow_from`), so that
//! locking one group to one system never locks another system out of its
//! own group; an endpoint added later for a remote system (a CRM's
//! webhooks) gets an [`AllowList`] of its own the same way. The check runs
//! before anything else of the request is read, credentials included, on
//! the client address of [`super::client`] (the proxy's client behind a
//! trusted proxy).

use std::borrow::Cow;
use std::net::IpAddr;

use crate::config::{AddressList, Config};

/// One configured list, with the key it came from (for the log): a
/// literal for the fixed groups, an owned string for a list named after a
/// system (`sync.<system>.allow_from`), never leaked.
pub struct AllowList {
    key: Cow<'static, str>,
    list: AddressList,
}

impl AllowList {
    pub fn new(key: impl Into<Cow<'static, str>>, list: &AddressList) -> AllowList {
        AllowList {
            key: key.into(),
            list: list.clone(),
        }
    }

    /// Whether `client` may reach the group: always for an empty list
    /// (nothing configured), never for a list with an entry that is no
    /// address (validation refuses those; a list built around it fails
    /// closed rather than open).
    pub fn allows(&self, client: IpAddr) -> bool {
        self.list.is_empty() || self.list.contains(client)
    }

    /// Whether `client` is named by the list itself (an empty list names
    /// nobody): the addresses a configuration vouches for.
    pub fn names(&self, client: IpAddr) -> bool {
        self.list.contains(client)
    }

    /// The configuration key of the list.
    pub fn key(&self) -> &str {
        &self.key
    }
}

/// The groups of endpoints that have a list, and the endpoints with none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// `soap.path`: the PBX's endpoint and the WSDL.
    Soap,
    /// Everything under `/operator`.
    Popup,
    /// Everything under `/api`.
    Api,
    /// `/metrics`.
    Metrics,
    /// `/healthz`, `/readyz` and paths of no group: open to everyone.
    Open,
}

/// The allow-list of each group, built once at start-up.
pub struct AllowLists {
    soap: AllowList,
    popup: AllowList,
    api: AllowList,
    metrics: AllowList,
}

impl AllowLists {
    pub fn new(config: &Config) -> AllowLists {
        AllowLists {
            soap: AllowList::new("soap.allow_from", &config.soap.allow_from),
            popup: AllowList::new("popup.allow_from", &config.popup.allow_from),
            api: AllowList::new("api.allow_from", &config.api.allow_from),
            metrics: AllowList::new("metrics.allow_from", &config.metrics.allow_from),
        }
    }

    /// The list of `group`, if it has one.
    pub fn of(&self, group: Group) -> Option<&AllowList> {
        match group {
            Group::Soap => Some(&self.soap),
            Group::Popup => Some(&self.popup),
            Group::Api => Some(&self.api),
            Group::Metrics => Some(&self.metrics),
            Group::Open => None,
        }
    }

    /// `soap.allow_from`: the PBX's addresses, when configured.
    pub fn soap(&self) -> &AllowList {
        &self.soap
    }

    /// `metrics.allow_from`: who may read `/metrics` (and `/readyz`'s
    /// error texts).
    pub fn metrics(&self) -> &AllowList {
        &self.metrics
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    #[test]
    fn an_empty_list_allows_everyone_and_names_nobody() {
        let list = AllowList::new("x.allow_from", &AddressList::default());
        assert!(list.allows(ip("192.0.2.1")) && list.allows(ip("::1")));
        assert!(!list.names(ip("192.0.2.1")));
    }

    #[test]
    fn a_list_allows_its_networks_only() {
        let list = AllowList::new(
            "x.allow_from",
            &AddressList::parse(["203.0.113.0/24", "2001:db8::/32"]),
        );
        assert!(list.allows(ip("203.0.113.77")) && list.names(ip("203.0.113.77")));
        assert!(list.allows(ip("2001:db8::5")));
        assert!(!list.allows(ip("203.0.114.1")));
        assert!(!list.allows(ip("2001:db9::5")));
    }

    #[test]
    fn a_list_with_a_bad_entry_fails_closed() {
        let list = AllowList::new("x.allow_from", &AddressList::parse(["pbx.example.ru"]));
        assert!(!list.allows(ip("192.0.2.1")));
    }
}
