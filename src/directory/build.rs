//! Records turned into entries, on every core, keeping what did not change:
//! an entry whose content is the same keeps its receive time (and, with the
//! same change marker, the entry itself).

use std::sync::Arc;

use super::entry::{Entry, Prepared};
use super::inherited::ManagerRules;
use super::keys::{by_id, overlay_of, ById, ByOverlay};
use super::shards::Shards;
use super::{Counterparty, Renderer};

/// When the records of a build were received.
pub(super) enum Stamps {
    /// All at this time (unix ms).
    All(u64),
    /// Each its own, one for one with the records; `None` (or missing): the default.
    Each(Vec<Option<u64>>, u64),
}

impl Stamps {
    /// Each record with its receive time.
    fn attach(self, records: Vec<Counterparty>) -> Vec<(Counterparty, u64)> {
        match self {
            Stamps::All(stamp) => records.into_iter().map(|r| (r, stamp)).collect(),
            Stamps::Each(each, default) => {
                let mut each = each.into_iter();
                records
                    .into_iter()
                    .map(|r| (r, each.next().flatten().unwrap_or(default)))
                    .collect()
            }
        }
    }
}

/// Records turned into entries, and what that took.
pub(super) struct Built {
    pub(super) entries: Vec<Arc<Entry>>,
    /// Phone strings that are not a number.
    pub(super) unusable_phones: usize,
    /// Records whose entry was kept from the previous set (same content and
    /// change marker).
    pub(super) unchanged: usize,
}

/// The fewest records one build thread gets, so that a thread is spawned
/// only for work that outweighs spawning it (a build of fewer records runs
/// on the calling thread).
const MIN_CHUNK: usize = 16_384;

/// Turns records into entries on every core: rendering and serializing a
/// million records is most of a start-up from the snapshot.
///
/// A record whose content is that of its entry in `previous` (the same
/// source's set) keeps that entry's receive time: it was not received
/// again, only read again. With the same change marker too, and `reuse`, it
/// keeps the entry itself (nothing is rendered), unless its id's overlay
/// (in `overlays`) is not the one that entry was built with. `rules` (the
/// same for every build of a directory) tell which entries choose their
/// manager at answer time.
#[allow(clippy::too_many_arguments)]
pub(super) fn build_entries(
    records: Vec<Counterparty>,
    source: &Arc<str>,
    stamps: Stamps,
    render: Renderer,
    previous: &Shards<ById>,
    overlays: &Shards<ByOverlay>,
    rules: &ManagerRules,
    reuse: bool,
) -> Built {
    let records = stamps.attach(records);
    let convert = |chunk: Vec<(Counterparty, u64)>| -> (Vec<Arc<Entry>>, usize, usize) {
        let (mut unusable, mut unchanged) = (0, 0);
        let entries = chunk
            .into_iter()
            .map(|(c, stamp)| {
                let prepared = Prepared::new(c);
                let overlay = overlay_of(overlays, prepared.id());
                let old =
                    by_id(previous, prepared.id()).filter(|old| old.content == prepared.content);
                if let Some(old) = old.filter(|_| reuse) {
                    if old.data_version() == prepared.data_version.as_deref()
                        && old.same_overlay(overlay)
                    {
                        unchanged += 1;
                        return Arc::clone(old);
                    }
                }
                let stamp = old.map_or(stamp, |old| old.stamp);
                let (entry, bad) = Entry::new(prepared, source, stamp, render, overlay, rules);
                unusable += bad;
                Arc::new(entry)
            })
            .collect();
        (entries, unusable, unchanged)
    };
    let parts = on_every_core(split_for_threads(records), convert);
    let unusable_phones = parts.iter().map(|p| p.1).sum();
    let unchanged = parts.iter().map(|p| p.2).sum();
    let entries = parts.into_iter().flat_map(|p| p.0).collect();
    Built {
        entries,
        unusable_phones,
        unchanged,
    }
}

/// `items` cut into one run per core, in order, each at least
/// [`MIN_CHUNK`] long (so a small build is one run).
fn split_for_threads<T>(mut items: Vec<T>) -> Vec<Vec<T>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = items.len().div_ceil(threads).max(MIN_CHUNK);
    let mut chunks = Vec::new();
    while items.len() > chunk {
        let tail = items.split_off(items.len() - chunk);
        chunks.push(tail);
    }
    chunks.push(items);
    chunks.reverse(); // split_off took them from the back
    chunks
}

/// `f` of each chunk, a thread each (none for a single chunk), in order. A
/// panic in a thread is raised again here.
fn on_every_core<T: Send, R: Send>(chunks: Vec<Vec<T>>, f: impl Fn(Vec<T>) -> R + Sync) -> Vec<R> {
    if chunks.len() == 1 {
        return chunks.into_iter().map(f).collect();
    }
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|c| scope.spawn(move || f(c)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    })
}
