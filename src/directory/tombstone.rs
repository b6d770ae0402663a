//! Deleted copies: a [`Tombstone`] hides one source's copy of an id while
//! that copy's content is the one deleted, and is spent once it changes.

use std::collections::HashMap;
use std::sync::Arc;

use super::entry::Entry;

/// A deleted counterparty as one source held it: that source's copy stays
/// hidden while its content is the one deleted (`content`, see
/// [`Entry::content`]), and shows again once the source brings a changed one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tombstone {
    pub id: Box<str>,
    pub source: Box<str>,
    pub content: u64,
}

/// Tombstones by id (a few per id at most).
pub(super) type Tombstones = HashMap<Box<str>, Vec<(Box<str>, u64)>>;

/// True when a tombstone of `entry`'s source holds its id and content.
pub(super) fn is_hidden(tombstones: &Tombstones, entry: &Entry) -> bool {
    tombstones.get(&*entry.id).is_some_and(|copies| {
        copies
            .iter()
            .any(|(source, content)| **source == *entry.source && *content == entry.content)
    })
}

/// `tombstones` without those of `source` whose copy changed or is gone
/// from `entries` (the source's new set): a tombstone hides one content of
/// one copy, and is spent once that copy changes. The spent ones are
/// returned, for the store to forget.
pub(super) fn spend_tombstones(
    tombstones: &Arc<Tombstones>,
    source: &str,
    entries: &[Arc<Entry>],
) -> (Arc<Tombstones>, Vec<Tombstone>) {
    let of_source = |copies: &Vec<(Box<str>, u64)>| copies.iter().any(|(s, _)| &**s == source);
    if !tombstones.values().any(of_source) {
        return (Arc::clone(tombstones), Vec::new());
    }
    let now: HashMap<&str, u64> = entries.iter().map(|e| (&*e.id, e.content)).collect();
    let mut kept = Tombstones::with_capacity(tombstones.len());
    let mut spent = Vec::new();
    for (id, copies) in tombstones.iter() {
        let mut left = Vec::with_capacity(copies.len());
        for (s, content) in copies {
            if &**s == source && now.get(&**id) != Some(content) {
                spent.push(Tombstone {
                    id: id.clone(),
                    source: s.clone(),
                    content: *content,
                });
            } else {
                left.push((s.clone(), *content));
            }
        }
        if !left.is_empty() {
            kept.insert(id.clone(), left);
        }
    }
    (Arc::new(kept), spent)
}
