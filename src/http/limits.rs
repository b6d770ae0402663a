//! Who may open a connection: `server.max_connections` in all,
//! `server.max_connections_per_address` from one client address, and the
//! last `server.reserved_connections` of them kept for the PBX.
//!
//! Decided at accept, on the TCP peer's address (no request has been read
//! yet, so a proxy's forwarding headers are not known): one client that
//! opens connections and sends nothing cannot take every slot, and the
//! PBX always finds one. The per-address count is touched twice per
//! connection, at accept and at close, never per request; it holds only
//! addresses with a connection open, so it is bounded by
//! `server.max_connections`.
//!
//! Exempt from the per-address limit: `server.trusted_proxies` (every
//! client behind a proxy comes from its address) and `soap.allow_from`
//! (the PBX's addresses, vouched for by the configuration). The reserved
//! slots are taken by those same addresses once the others are full; they
//! are set aside only when `soap.allow_from` is set (with no list they
//! would be for nobody). An IPv6 client counts by its /64, which one
//! host usually has whole.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{AddressList, Config};

/// Why a connection was closed at accept; the `reason` label of
/// `cti_http_refused_total{endpoint="connection"}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address had `server.max_connections_per_address` open.
    PerAddress,
    /// Only the reserved slots were free, and its address may not take them.
    Reserved,
    /// Every slot was taken.
    MaxConnections,
}

impl Refusal {
    pub const ALL: [Refusal; 3] = [
        Refusal::PerAddress,
        Refusal::Reserved,
        Refusal::MaxConnections,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Refusal::PerAddress => "per_address",
            Refusal::Reserved => "reserved",
            Refusal::MaxConnections => "max_connections",
        }
    }
}

/// What an admitted connection holds until it closes: a slot, and its
/// place in its address's count (none for an exempt address).
pub struct Admission {
    _slot: OwnedSemaphorePermit,
    _address: Option<AddressSlot>,
}

/// The slots and the count of open connections by address, shared by the
/// accept loop and the connections (which give theirs back on close).
pub struct ConnectionLimits {
    /// The slots anyone may take; also what a WebSocket screen takes for
    /// its lifetime (see `screens.rs`).
    general: Arc<Semaphore>,
    /// The last slots, for `reserved_for` only; none without `soap.allow_from`.
    reserved: Option<Arc<Semaphore>>,
    per_address: usize,
    /// Open connections by address (an IPv6 one by its /64).
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// `soap.allow_from`: may take reserved slots, has no per-address limit.
    vouched: AddressList,
    /// `server.trusted_proxies`: the same.
    proxies: AddressList,
}

impl ConnectionLimits {
    pub fn new(config: &Config) -> ConnectionLimits {
        let server = &config.server;
        let vouched = config.soap.allow_from.clone();
        // Validation keeps reserved below max_connections when it applies;
        // the min() only keeps a hand-built config from panicking here.
        let reserved = if vouched.is_empty() {
            0
        } else {
            server.reserved_connections.min(server.max_connections - 1)
        };
        ConnectionLimits {
            general: Arc::new(Semaphore::new(server.max_connections - reserved)),
            reserved: (reserved > 0).then(|| Arc::new(Semaphore::new(reserved))),
            per_address: server.max_connections_per_address,
            open: Arc::default(),
            vouched,
            proxies: server.trusted_proxies.clone(),
        }
    }

    /// The slots anyone may take (the WebSocket screens' too).
    pub fn general_slots(&self) -> Arc<Semaphore> {
        Arc::clone(&self.general)
    }

    /// A connection from `peer`, accepted now: its slot, or why it is closed.
    pub fn admit(&self, peer: IpAddr) -> Result<Admission, Refusal> {
        let peer = peer.to_canonical();
        let trusted = self.vouched.contains(peer) || self.proxies.contains(peer);
        let address = if trusted {
            None
        } else {
            Some(self.count_in(peer)?)
        };
        // On a refusal below, `address` drops and gives its count back.
        let slot = match Arc::clone(&self.general).try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => match &self.reserved {
                None => return Err(Refusal::MaxConnections),
                Some(reserved) if trusted => Arc::clone(reserved)
                    .try_acquire_owned()
                    .map_err(|_| Refusal::MaxConnections)?,
                Some(reserved) if reserved.available_permits() == 0 => {
                    return Err(Refusal::MaxConnections)
                }
                Some(_) => return Err(Refusal::Reserved),
            },
        };
        Ok(Admission {
            _slot: slot,
            _address: address,
        })
    }

    /// One more connection from `peer`, unless it has its limit open.
    fn count_in(&self, peer: IpAddr) -> Result<AddressSlot, Refusal> {
        let key = counted_as(peer);
        let mut open = lock(&self.open);
        let count = open.entry(key).or_insert(0);
        if *count >= self.per_address {
            return Err(Refusal::PerAddress);
        }
        *count += 1;
        Ok(AddressSlot {
            open: Arc::clone(&self.open),
            key,
        })
    }

    /// Addresses with a connection open now.
    #[cfg(test)]
    fn addresses(&self) -> usize {
        lock(&self.open).len()
    }
}

/// The address a connection counts against: an IPv4 address itself, an
/// IPv6 one by its /64 (a host is usually given a whole /64, and could
/// otherwise open each connection from another of its addresses).
fn counted_as(peer: IpAddr) -> IpAddr {
    match peer {
        IpAddr::V4(_) => peer,
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
    }
}

fn lock(open: &Mutex<HashMap<IpAddr, usize>>) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
    open.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A connection's place in its address's count, given back on drop; the
/// address is forgotten with its last connection.
struct AddressSlot {
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    key: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        if let Some(count) = open.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("address")
    }

    fn limits(max: usize, per_address: usize, reserved: usize, pbx: &[&str]) -> ConnectionLimits {
        let mut config = Config::default();
        config.server.max_connections = max;
        config.server.max_connections_per_address = per_address;
        config.server.reserved_connections = reserved;
        config.server.trusted_proxies = AddressList::parse(["10.0.0.1"]);
        config.soap.allow_from = AddressList::parse(pbx);
        ConnectionLimits::new(&config)
    }

    #[test]
    fn one_address_gets_its_limit_and_others_are_not_affected() {
        let l = limits(100, 3, 0, &[]);
        let held: Vec<_> = (0..3)
            .map(|_| l.admit(ip("192.0.2.1")).expect("admitted"))
            .collect();
        assert_eq!(l.admit(ip("192.0.2.1")).err(), Some(Refusal::PerAddress));
        assert!(l.admit(ip("192.0.2.2")).is_ok());
        // An IPv4 address mapped into IPv6 is the same client.
        assert_eq!(
            l.admit(ip("::ffff:192.0.2.1")).err(),
            Some(Refusal::PerAddress)
        );
        drop(held);
        assert!(l.admit(ip("192.0.2.1")).is_ok());
        assert_eq!(l.addresses(), 0, "closed connections leave nothing behind");
    }

    #[test]
    fn an_ipv6_client_counts_by_its_slash_64() {
        let l = limits(100, 2, 0, &[]);
        let _a = l.admit(ip("2001:db8:1:2::1")).expect("first");
        let _b = l.admit(ip("2001:db8:1:2::ffff:2")).expect("second");
        assert_eq!(
            l.admit(ip("2001:db8:1:2:abcd::3")).err(),
            Some(Refusal::PerAddress)
        );
        assert!(l.admit(ip("2001:db8:1:3::1")).is_ok());
    }

    #[test]
    fn proxies_and_the_pbx_have_no_per_address_limit() {
        let l = limits(100, 1, 0, &["203.0.113.0/24"]);
        let _held: Vec<_> = (0..10)
            .flat_map(|_| [l.admit(ip("10.0.0.1")), l.admit(ip("203.0.113.7"))])
            .map(|a| a.expect("exempt"))
            .collect();
        assert_eq!(l.addresses(), 0);
    }

    #[test]
    fn the_reserved_slots_are_for_the_pbx_only() {
        let l = limits(5, 100, 2, &["203.0.113.7"]);
        let _strangers: Vec<_> = (0..3)
            .map(|i| l.admit(ip(&format!("192.0.2.{i}"))).expect("general slot"))
            .collect();
        assert_eq!(l.admit(ip("192.0.2.9")).err(), Some(Refusal::Reserved));
        let _pbx: Vec<_> = (0..2)
            .map(|_| l.admit(ip("203.0.113.7")).expect("reserved slot"))
            .collect();
        assert_eq!(
            l.admit(ip("203.0.113.7")).err(),
            Some(Refusal::MaxConnections)
        );
        assert_eq!(
            l.admit(ip("192.0.2.9")).err(),
            Some(Refusal::MaxConnections)
        );
        // A refused connection kept no count.
        assert_eq!(l.addresses(), 3);
    }

    #[test]
    fn without_soap_allow_from_nothing_is_reserved() {
        let l = limits(3, 100, 2, &[]);
        let _held: Vec<_> = (0..3)
            .map(|i| l.admit(ip(&format!("192.0.2.{i}"))).expect("every slot"))
            .collect();
        assert_eq!(
            l.admit(ip("192.0.2.9")).err(),
            Some(Refusal::MaxConnections)
        );
    }
}
