//! The items of the index's maps ([`Shards`]), each with its lookup: an
//! entry by id, an entry under each of its phones (best first, by the
//! shared-phone rule), an entry under its INN, a tombstone by id.

use std::cmp::Ordering;
use std::hash::BuildHasher;
use std::sync::Arc;

use super::entry::Entry;
use super::overlay::Applied;
use super::shards::{hash_str, Sharded, Shards};
use super::tombstone::Tombstone;
use crate::phone::{PhoneKey, PhoneKeyHashing};

/// An entry keyed by its id: a source's set, and the copy answering for
/// each id.
#[derive(Clone, Debug)]
pub(super) struct ById(pub(super) Arc<Entry>);

impl Sharded for ById {
    fn shard_hash(&self) -> u64 {
        hash_str(self.0.id())
    }
    fn order(&self, other: &Self) -> Ordering {
        self.0.id().cmp(other.0.id())
    }
}

/// The entry of `id` in a map by id.
pub(super) fn by_id<'a>(map: &'a Shards<ById>, id: &str) -> Option<&'a Arc<Entry>> {
    let leaf = map.leaf(hash_str(id));
    leaf.binary_search_by(|e| e.0.id().cmp(id))
        .ok()
        .map(|i| &leaf[i].0)
}

/// An answering entry under one of its phones. A phone's items sort best
/// first by the shared-phone rule ([`Entry::wins_phone_over`]), so the
/// first is the answer and the others wait their turn.
#[derive(Clone, Debug)]
pub(super) struct OnPhone {
    pub(super) phone: PhoneKey,
    pub(super) entry: Arc<Entry>,
}

#[inline]
pub(super) fn phone_hash(phone: PhoneKey) -> u64 {
    PhoneKeyHashing::default().hash_one(phone)
}

impl Sharded for OnPhone {
    fn shard_hash(&self) -> u64 {
        phone_hash(self.phone)
    }
    fn order(&self, other: &Self) -> Ordering {
        self.phone.cmp(&other.phone).then_with(|| {
            if self.entry.id() == other.entry.id() {
                Ordering::Equal
            } else if self.entry.wins_phone_over(&other.entry, self.phone) {
                Ordering::Less
            } else {
                Ordering::Greater
            }
        })
    }
}

/// The best item under `phone`: the answer (the SayName path).
#[inline]
pub(super) fn first_on_phone(map: &Shards<OnPhone>, phone: PhoneKey) -> Option<&OnPhone> {
    let leaf = map.leaf(phone_hash(phone));
    leaf.get(leaf.partition_point(|p| p.phone < phone))
        .filter(|p| p.phone == phone)
}

/// An answering entry that has an INN, under it (branches share one).
#[derive(Clone, Debug)]
pub(super) struct ByInn(pub(super) Arc<Entry>);

impl ByInn {
    fn inn(&self) -> &str {
        self.0.inn().unwrap_or_default()
    }
}

impl Sharded for ByInn {
    fn shard_hash(&self) -> u64 {
        hash_str(self.inn())
    }
    fn order(&self, other: &Self) -> Ordering {
        (self.inn(), self.0.id()).cmp(&(other.inn(), other.0.id()))
    }
}

/// Every entry with this INN, by id.
pub(super) fn by_inn<'a>(map: &'a Shards<ByInn>, inn: &str) -> &'a [ByInn] {
    let leaf = map.leaf(hash_str(inn));
    let start = leaf.partition_point(|e| e.inn() < inn);
    let end = start + leaf[start..].partition_point(|e| e.inn() == inn);
    &leaf[start..end]
}

impl Sharded for Tombstone {
    fn shard_hash(&self) -> u64 {
        hash_str(&self.id)
    }
    fn order(&self, other: &Self) -> Ordering {
        (&self.id, &self.source).cmp(&(&other.id, &other.source))
    }
}

/// The tombstones of `id` (one per source at most).
pub(super) fn tombstones_of<'a>(map: &'a Shards<Tombstone>, id: &str) -> &'a [Tombstone] {
    let leaf = map.leaf(hash_str(id));
    let start = leaf.partition_point(|t| &*t.id < id);
    let end = start + leaf[start..].partition_point(|t| &*t.id == id);
    &leaf[start..end]
}

/// A CRM's overlay, keyed by the id of the record it is for (held whether
/// or not a source has that record yet).
#[derive(Clone, Debug)]
pub(super) struct ByOverlay(pub(super) Arc<Applied>);

impl Sharded for ByOverlay {
    fn shard_hash(&self) -> u64 {
        hash_str(&self.0.id)
    }
    fn order(&self, other: &Self) -> Ordering {
        self.0.id.cmp(&other.0.id)
    }
}

/// The overlay of `id`, if any.
pub(super) fn overlay_of<'a>(map: &'a Shards<ByOverlay>, id: &str) -> Option<&'a Arc<Applied>> {
    let leaf = map.leaf(hash_str(id));
    leaf.binary_search_by(|o| (*o.0.id).cmp(id))
        .ok()
        .map(|i| &leaf[i].0)
}
