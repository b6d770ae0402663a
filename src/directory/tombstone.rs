//! Deleted copies: a [`Tombstone`] hides one source's copy of an id while
//! that copy's content is the one deleted, and is spent once it changes.

use super::entry::Entry;
use super::keys::tombstones_of;
use super::shards::Shards;

/// A deleted counterparty as one source held it: that source's copy stays
/// hidden while its content is the one deleted (`content`, see
/// [`Entry::content`]), and shows again once the source brings a changed one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tombstone {
    pub id: Box<str>,
    pub source: Box<str>,
    pub content: u64,
}

/// Tombstones by id (one per source and id at most).
pub(super) type Tombstones = Shards<Tombstone>;

/// True when a tombstone of `entry`'s source holds its id and content.
pub(super) fn is_hidden(tombstones: &Tombstones, entry: &Entry) -> bool {
    tombstones.len() > 0
        && tombstones_of(tombstones, entry.id())
            .iter()
            .any(|t| *t.source == *entry.source && t.content == entry.content)
}

/// True when `tombstone` is spent by `copy` (its source's copy of the id
/// now, if any): the copy is gone or its content changed.
pub(super) fn is_spent_by(tombstone: &Tombstone, copy: Option<&Entry>) -> bool {
    copy.is_none_or(|c| c.content != tombstone.content)
}
