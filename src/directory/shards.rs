//! A persistent map cut into small shards: what lets the directory take a
//! change in proportion to its size.
//!
//! [`Shards`] is a fixed two-level hash trie: `FAN` middle nodes of `FAN`
//! leaves each, every node and leaf behind an `Arc`. A leaf is a sorted slice
//! of the items whose hash picks it (about 16 at a million items). Cloning a
//! map copies one pointer; an [`Edit`] copies the top node once, then only
//! the middle nodes and leaves it touches, so a change of k items costs
//! O(k) small copies whatever the map's size, and every older map (the
//! index readers hold) stays as it was. A lookup is three pointer hops and
//! a binary search in a slice of a few items; it takes no lock and
//! allocates nothing.
//!
//! Why not a general persistent map (`im`, `rpds`): their nodes keep 32-64
//! slots each or an allocation per item, several times the memory of these
//! packed leaves at a million counterparties; and this map needs ordered
//! leaves for its multimaps (every entry listing one phone, best first).

use std::sync::Arc;

/// Children per node: two levels of 256 give 65,536 leaves.
const FAN: usize = 256;

/// Fewer items than this are built by inserting them one by one.
const SMALL_BUILD: usize = 2_048;

type Leaf<T> = Arc<[T]>;
type Mid<T> = Arc<[Leaf<T>; FAN]>;

/// An item of a [`Shards`]: where it lives (`shard_hash`, a hash of its
/// lookup key) and its place in its leaf (`order`, a total order that
/// sorts items of one lookup key together).
pub(super) trait Sharded: Clone + Send + Sync + 'static {
    fn shard_hash(&self) -> u64;
    fn order(&self, other: &Self) -> std::cmp::Ordering;
}

pub(super) struct Shards<T> {
    top: Arc<[Mid<T>; FAN]>,
    len: usize,
}

impl<T> Clone for Shards<T> {
    fn clone(&self) -> Self {
        Shards {
            top: Arc::clone(&self.top),
            len: self.len,
        }
    }
}

impl<T> std::fmt::Debug for Shards<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards").field("len", &self.len).finish()
    }
}

/// The two node indexes of a hash: its top byte, then the next.
#[inline]
fn slots(hash: u64) -> (usize, usize) {
    ((hash >> 56) as usize, ((hash >> 48) & 0xff) as usize)
}

impl<T: Sharded> Shards<T> {
    /// An empty map: every slot shares one empty leaf and one empty middle
    /// node, so an empty map costs two allocations.
    pub(super) fn new() -> Shards<T> {
        let leaf: Leaf<T> = Arc::from(Vec::new());
        let mid: Mid<T> = Arc::new(std::array::from_fn(|_| Arc::clone(&leaf)));
        Shards {
            top: Arc::new(std::array::from_fn(|_| Arc::clone(&mid))),
            len: 0,
        }
    }

    /// A map of `items`, built in one pass (for whole sets: cheaper than
    /// editing item by item). Of items equal by `order`, the first is kept.
    pub(super) fn build(items: impl IntoIterator<Item = T>) -> Shards<T> {
        let items: Vec<T> = items.into_iter().collect();
        // A few items go in one by one: laying out 65,536 leaves would cost
        // more than the items.
        if items.len() < SMALL_BUILD {
            let mut edit = Shards::new().edit();
            for item in items {
                edit.change_leaf(item.shard_hash(), |leaf: &mut Vec<T>| {
                    if let Err(i) = leaf.binary_search_by(|x| x.order(&item)) {
                        leaf.insert(i, item);
                    }
                });
            }
            return edit.finish();
        }
        let mut leaves: Vec<Vec<T>> = (0..FAN * FAN).map(|_| Vec::new()).collect();
        for item in items {
            let (a, b) = slots(item.shard_hash());
            leaves[a * FAN + b].push(item);
        }
        let mut len = 0;
        let empty: Leaf<T> = Arc::from(Vec::new());
        let mut leaves = leaves.into_iter().map(|mut leaf| {
            if leaf.is_empty() {
                Arc::clone(&empty)
            } else {
                // Stable: the first of equal items comes first, and stays.
                leaf.sort_by(|x, y| x.order(y));
                leaf.dedup_by(|later, first| later.order(first).is_eq());
                len += leaf.len();
                Leaf::from(leaf)
            }
        });
        let top = std::array::from_fn(|_| {
            let mid: [Leaf<T>; FAN] =
                std::array::from_fn(|_| leaves.next().unwrap_or_else(|| Arc::clone(&empty)));
            Arc::new(mid)
        });
        drop(leaves);
        Shards {
            top: Arc::new(top),
            len,
        }
    }

    /// Items in the map.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The leaf that holds every item of this hash, sorted by `order`.
    #[inline]
    pub(super) fn leaf(&self, hash: u64) -> &[T] {
        let (a, b) = slots(hash);
        &self.top[a][b]
    }

    /// Every item, leaf by leaf.
    pub(super) fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.top
            .iter()
            .flat_map(|mid| mid.iter())
            .flat_map(|leaf| leaf.iter())
    }

    /// An edit of this map: the map itself stays as it is.
    pub(super) fn edit(&self) -> Edit<T> {
        Edit {
            top: Arc::clone(&self.top),
            len: self.len,
        }
    }
}

/// Changes to a copy of a [`Shards`]; [`Edit::finish`] makes it a map.
pub(super) struct Edit<T> {
    top: Arc<[Mid<T>; FAN]>,
    len: usize,
}

impl<T: Sharded> Edit<T> {
    /// Lets `change` rewrite the leaf of `hash` (as a vector, kept sorted by
    /// `order`); returns what `change` returns. Copies the nodes on the way
    /// the first time this edit touches them.
    pub(super) fn change_leaf<R>(&mut self, hash: u64, change: impl FnOnce(&mut Vec<T>) -> R) -> R {
        let (a, b) = slots(hash);
        let mid = Arc::make_mut(&mut Arc::make_mut(&mut self.top)[a]);
        let mut items = mid[b].to_vec();
        let before = items.len();
        let result = change(&mut items);
        self.len = self.len + items.len() - before;
        mid[b] = if items.is_empty() {
            empty_leaf()
        } else {
            Leaf::from(items)
        };
        result
    }

    /// Inserts `item` at its place by `order`, replacing an item equal to
    /// it by `order` (returned).
    pub(super) fn insert(&mut self, item: T) -> Option<T> {
        self.change_leaf(item.shard_hash(), |items| {
            match items.binary_search_by(|x| x.order(&item)) {
                Ok(i) => Some(std::mem::replace(&mut items[i], item)),
                Err(i) => {
                    items.insert(i, item);
                    None
                }
            }
        })
    }

    /// Removes the item equal to `item` by `order` (returned).
    pub(super) fn remove(&mut self, item: &T) -> Option<T> {
        self.change_leaf(item.shard_hash(), |items| {
            items
                .binary_search_by(|x| x.order(item))
                .ok()
                .map(|i| items.remove(i))
        })
    }

    /// The leaf of `hash` as it stands in this edit.
    pub(super) fn leaf(&self, hash: u64) -> &[T] {
        let (a, b) = slots(hash);
        &self.top[a][b]
    }

    pub(super) fn finish(self) -> Shards<T> {
        Shards {
            top: self.top,
            len: self.len,
        }
    }
}

/// One empty leaf per item type would need a generic static; a fresh empty
/// `Arc<[T]>` is one small allocation, made only when a leaf empties.
fn empty_leaf<T>() -> Leaf<T> {
    Arc::from(Vec::new())
}

/// A hash of a string key for [`Sharded::shard_hash`]: FNV-1a, then mixed
/// so that its top bits (which pick the shard) depend on every byte. Stable
/// and unkeyed: the keys are the directory's own, and callers only look up.
#[inline]
pub(super) fn hash_str(s: &str) -> u64 {
    mix(super::entry::content_hash(s.as_bytes()))
}

/// A hash of a number key (a phone): Fibonacci hashing, whose top bits mix
/// all bits of the input.
#[inline]
pub(super) fn mix(n: u64) -> u64 {
    (n ^ (n >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, PartialEq)]
    struct Item(u64, u32);

    impl Sharded for Item {
        fn shard_hash(&self) -> u64 {
            mix(self.0)
        }
        fn order(&self, other: &Self) -> std::cmp::Ordering {
            (self.0, self.1).cmp(&(other.0, other.1))
        }
    }

    fn find(map: &Shards<Item>, key: u64) -> Vec<u32> {
        map.leaf(mix(key))
            .iter()
            .filter(|i| i.0 == key)
            .map(|i| i.1)
            .collect()
    }

    #[test]
    fn an_edit_leaves_the_map_it_started_from_as_it_was() {
        let base = Shards::build((0..10_000).map(|k| Item(k, 0)));
        let mut edit = base.edit();
        edit.insert(Item(5, 1));
        edit.remove(&Item(7, 0));
        let changed = edit.finish();
        assert_eq!(find(&base, 5), vec![0]);
        assert_eq!(find(&base, 7), vec![0]);
        assert_eq!(base.len(), 10_000);
        assert_eq!(find(&changed, 5), vec![0, 1]);
        assert!(find(&changed, 7).is_empty());
        assert_eq!(changed.len(), 10_000);
    }

    #[test]
    fn a_built_map_and_an_edited_one_hold_the_same_items_in_the_same_order() {
        let items: Vec<Item> = (0..5_000u64).map(|k| Item(k % 1_000, k as u32)).collect();
        let built = Shards::build(items.iter().rev().cloned());
        let mut edit = Shards::new().edit();
        for item in &items {
            edit.insert(item.clone());
        }
        let edited = edit.finish();
        assert_eq!(built.len(), edited.len());
        assert!(built.iter().eq(edited.iter()));
    }

    #[test]
    fn a_build_keeps_the_first_of_equal_items() {
        let map = Shards::build([Item(1, 1), Item(2, 0), Item(1, 1), Item(1, 0)]);
        assert_eq!(map.len(), 3);
        assert_eq!(find(&map, 1), vec![0, 1]);
    }

    #[test]
    fn inserting_an_equal_item_replaces_it() {
        let mut edit = Shards::new().edit();
        assert_eq!(edit.insert(Item(1, 1)), None);
        assert_eq!(edit.insert(Item(1, 1)), Some(Item(1, 1)));
        assert_eq!(edit.finish().len(), 1);
    }
}
