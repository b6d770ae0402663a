//! One immutable, fully built view of the directory.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use super::build::{build_entries, reusable_entries, Stamps};
use super::entry::{unix_ms, Entry, Prepared};
use super::tombstone::{is_hidden, spend_tombstones, Tombstone, Tombstones};
use super::{Counterparty, Renderer, ReplaceReport};
use crate::phone::{PhoneKey, PhoneKeyHashing};

/// What the directory knows about one source's record set.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    pub name: Arc<str>,
    pub records: usize,
    pub fingerprint: Option<String>,
    pub loaded_at: SystemTime,
}

#[derive(Debug)]
struct SourceSet {
    info: SourceInfo,
    entries: Arc<[Arc<Entry>]>,
}

impl SourceSet {
    /// The same set, for a new index (the entries are shared, not copied).
    fn share(&self) -> SourceSet {
        SourceSet {
            info: self.info.clone(),
            entries: Arc::clone(&self.entries),
        }
    }
}

/// Immutable lookup structures over all sources' records. When two sources
/// hold the same id, the copy received last answers for it; a copy under a
/// tombstone does not answer.
#[derive(Debug)]
pub struct Index {
    loaded: bool,
    /// Deleted copies, shared between indexes until a change touches them.
    tombstones: Arc<Tombstones>,
    /// Ordered by `loaded_at`, oldest first.
    sources: Vec<SourceSet>,
    by_phone: HashMap<PhoneKey, Arc<Entry>, PhoneKeyHashing>,
    /// Sorted by id; a sorted vector costs 8 bytes a record, a map several times that.
    by_id: Vec<Arc<Entry>>,
    /// Records with an INN, sorted by it (INNs repeat: branches share one).
    by_inn: Vec<Arc<Entry>>,
    ambiguous_phones: usize,
}

impl Index {
    pub(super) fn empty() -> Index {
        Index {
            loaded: false,
            tombstones: Arc::default(),
            sources: Vec::new(),
            by_phone: HashMap::default(),
            by_id: Vec::new(),
            by_inn: Vec::new(),
            ambiguous_phones: 0,
        }
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    /// True when `entry` is a copy someone deleted: a tombstone of its
    /// source holds its id and its very content.
    pub fn is_deleted(&self, entry: &Entry) -> bool {
        is_hidden(&self.tombstones, entry)
    }

    /// True when `tombstone` is in force here.
    pub fn holds_tombstone(&self, tombstone: &Tombstone) -> bool {
        self.tombstones.get(&tombstone.id).is_some_and(|copies| {
            copies
                .iter()
                .any(|(s, c)| *s == tombstone.source && *c == tombstone.content)
        })
    }

    /// Every tombstone in force.
    pub fn tombstones(&self) -> Vec<Tombstone> {
        self.tombstones
            .iter()
            .flat_map(|(id, copies)| {
                copies.iter().map(|(source, content)| Tombstone {
                    id: id.clone(),
                    source: source.clone(),
                    content: *content,
                })
            })
            .collect()
    }

    /// Each source's copy of `id` (hidden ones included), oldest source first.
    pub fn copies(&self, id: &str) -> Vec<Arc<Entry>> {
        self.sources
            .iter()
            .filter_map(|s| s.entries.iter().find(|e| &*e.id == id).cloned())
            .collect()
    }

    /// Counterparties in the directory (each id once).
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    pub fn phone_count(&self) -> usize {
        self.by_phone.len()
    }

    pub fn ambiguous_phones(&self) -> usize {
        self.ambiguous_phones
    }

    pub fn sources(&self) -> impl Iterator<Item = &SourceInfo> {
        self.sources.iter().map(|s| &s.info)
    }

    /// What the directory knows about one source's set, if it has one.
    pub fn source(&self, name: &str) -> Option<&SourceInfo> {
        self.sources
            .iter()
            .find(|s| &*s.info.name == name)
            .map(|s| &s.info)
    }

    /// All records of one source, as last loaded.
    pub fn source_records(&self, source: &str) -> Option<Arc<[Arc<Entry>]>> {
        self.sources
            .iter()
            .find(|s| &*s.info.name == source)
            .map(|s| Arc::clone(&s.entries))
    }

    #[inline]
    pub fn by_phone(&self, phone: PhoneKey) -> Option<&Arc<Entry>> {
        self.by_phone.get(&phone)
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<Entry>> {
        self.by_id
            .binary_search_by(|e| (*e.id).cmp(id))
            .ok()
            .map(|i| &self.by_id[i])
    }

    pub fn by_inn(&self, inn: &str) -> &[Arc<Entry>] {
        fn inn_of(e: &Arc<Entry>) -> &str {
            e.inn.as_deref().unwrap_or_default()
        }
        let start = self.by_inn.partition_point(|e| inn_of(e) < inn);
        let end = start + self.by_inn[start..].partition_point(|e| inn_of(e) == inn);
        &self.by_inn[start..end]
    }

    /// When each of `records` counts as received if `source` took it now:
    /// the receive time of `source`'s copy of the same id when the content
    /// is the same, else `now` (unix ms). What a source stores beside a
    /// change it commits before applying it, so that store and directory
    /// agree.
    pub(super) fn receive_times(
        &self,
        source: &str,
        records: &[Counterparty],
        now: u64,
    ) -> Vec<u64> {
        let previous = self.source_records(source);
        let by_id = reusable_entries(previous.as_deref().unwrap_or_default());
        records
            .iter()
            .map(|r| match by_id.get(&*r.id) {
                Some(old) if old.content == Prepared::new(r.clone()).content => old.stamp,
                _ => now,
            })
            .collect()
    }

    /// A new index: this one with `source`'s records replaced by `records`.
    /// Records whose change marker (`data_version`) is that of their entry in
    /// the current set keep that entry, and with it the time it was received.
    // Internal: the directory's three replace entry points call it with
    // their own mix of these.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn with_source(
        &self,
        source: &str,
        records: Vec<Counterparty>,
        fingerprint: Option<String>,
        loaded_at: SystemTime,
        received: Option<Vec<Option<u64>>>,
        render: Renderer,
        reuse: bool,
    ) -> (Index, ReplaceReport) {
        let name: Arc<str> = Arc::from(source);
        let previous = self.source_records(source);
        let stamps = match received {
            Some(each) => Stamps::Each(each, unix_ms(loaded_at)),
            None => Stamps::All(unix_ms(loaded_at)),
        };
        let built = build_entries(
            records,
            &name,
            stamps,
            render,
            previous.as_deref().unwrap_or_default(),
            reuse,
        );
        drop(previous);
        let (tombstones, spent) = spend_tombstones(&self.tombstones, source, &built.entries);
        let info = SourceInfo {
            name: Arc::clone(&name),
            records: built.entries.len(),
            fingerprint,
            loaded_at,
        };
        let sources = self.sources_with(SourceSet {
            info,
            entries: built.entries,
        });
        let (index, mut report) = self.finish(
            sources,
            tombstones,
            name,
            built.unusable_phones,
            built.unchanged,
        );
        report.spent_tombstones = spent;
        (index, report)
    }

    /// A new index: this one with `upserts` added to (or replacing records of
    /// the same id in) `source`'s set, the records with an id in `removals`
    /// taken out of that set, and `buried` added to the tombstones (hiding
    /// other sources' copies of deleted ids).
    pub(super) fn with_changes(
        &self,
        source: &str,
        upserts: Vec<Counterparty>,
        removals: &[Box<str>],
        buried: &[Tombstone],
        at: SystemTime,
        render: Renderer,
    ) -> (Index, ReplaceReport) {
        let name: Arc<str> = Arc::from(source);
        // One id twice in one change: the later record is the change.
        let mut upserts = upserts;
        let mut seen = HashSet::with_capacity(upserts.len());
        upserts.reverse();
        upserts.retain(|r| seen.insert(r.id.clone()));
        upserts.reverse();
        // Compared with the source's own copies: an upsert of unchanged
        // content keeps its receive time (see `build_entries`).
        let previous = self.source_records(source);
        let built = build_entries(
            upserts,
            &name,
            Stamps::All(unix_ms(at)),
            render,
            previous.as_deref().unwrap_or_default(),
            true,
        );
        let replaced: HashSet<&str> = built.entries.iter().map(|e| &*e.id).collect();
        let removed: HashSet<&str> = removals.iter().map(|id| &**id).collect();
        let mut entries: Vec<Arc<Entry>> = previous
            .as_deref()
            .unwrap_or_default()
            .iter()
            .filter(|e| !removed.contains(&*e.id) && !replaced.contains(&*e.id))
            .cloned()
            .collect();
        drop(previous);
        entries.extend(built.entries.iter().cloned());
        let mut info = self.source(source).cloned().unwrap_or(SourceInfo {
            name: Arc::clone(&name),
            records: 0,
            fingerprint: None,
            loaded_at: at,
        });
        info.loaded_at = at;
        info.records = entries.len();
        let sources = self.sources_with(SourceSet {
            info,
            entries: entries.into(),
        });
        let tombstones = if buried.is_empty() {
            Arc::clone(&self.tombstones)
        } else {
            let mut more = (*self.tombstones).clone();
            for t in buried {
                let copies = more.entry(t.id.clone()).or_default();
                copies.retain(|(s, _)| *s != t.source);
                copies.push((t.source.clone(), t.content));
            }
            Arc::new(more)
        };
        self.finish(sources, tombstones, name, built.unusable_phones, 0)
    }

    /// This index's source sets (shared, not copied) with `set` in place of
    /// the one of its name.
    fn sources_with(&self, set: SourceSet) -> Vec<SourceSet> {
        let mut sources: Vec<SourceSet> = self
            .sources
            .iter()
            .filter(|s| s.info.name != set.info.name)
            .map(SourceSet::share)
            .collect();
        sources.push(set);
        sources
    }

    /// A new index: this one with `tombstones` in force instead of its own
    /// (the store's, at start-up, before any set is loaded).
    pub(super) fn with_tombstones(&self, tombstones: &[Tombstone]) -> Index {
        let mut all = Tombstones::with_capacity(tombstones.len());
        for t in tombstones {
            all.entry(t.id.clone())
                .or_default()
                .push((t.source.clone(), t.content));
        }
        let sources = self.sources.iter().map(SourceSet::share).collect();
        let mut index = Index::build(sources, Arc::new(all));
        index.loaded = self.loaded;
        index
    }

    fn finish(
        &self,
        mut sources: Vec<SourceSet>,
        tombstones: Arc<Tombstones>,
        name: Arc<str>,
        unusable_phones: usize,
        unchanged: usize,
    ) -> (Index, ReplaceReport) {
        sources.sort_by_key(|s| s.info.loaded_at);
        let index = Index::build(sources, tombstones);
        let report = ReplaceReport {
            records: index.source_records(&name).map_or(0, |e| e.len()),
            source: name,
            total_records: index.len(),
            phones: index.phone_count(),
            ambiguous_phones: index.ambiguous_phones,
            unusable_phones,
            unchanged,
            spent_tombstones: Vec::new(),
        };
        (index, report)
    }

    fn build(sources: Vec<SourceSet>, tombstones: Arc<Tombstones>) -> Index {
        // When sources share an id, the most recently received version
        // answers; between equal stamps, the source loaded last. Walking the
        // newest source first makes that the first copy seen. Deleted copies
        // (under a tombstone) take no part.
        let capacity: usize = sources.iter().map(|s| s.entries.len()).sum();
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(capacity);
        let mut by_id: Vec<Arc<Entry>> = Vec::with_capacity(capacity);
        for set in sources.iter().rev() {
            for entry in set.entries.iter() {
                if !tombstones.is_empty() && is_hidden(&tombstones, entry) {
                    continue;
                }
                match seen.entry(&entry.id) {
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(by_id.len());
                        by_id.push(Arc::clone(entry));
                    }
                    std::collections::hash_map::Entry::Occupied(slot) => {
                        let kept = &mut by_id[*slot.get()];
                        if entry.stamp > kept.stamp {
                            *kept = Arc::clone(entry);
                        }
                    }
                }
            }
        }
        drop(seen);
        by_id.sort_unstable_by(|a, b| a.id.cmp(&b.id));

        let phone_count: usize = by_id.iter().map(|e| e.phones.len()).sum();
        let mut by_phone: HashMap<PhoneKey, Arc<Entry>, PhoneKeyHashing> =
            HashMap::with_capacity_and_hasher(phone_count, PhoneKeyHashing::default());
        let mut ambiguous: HashSet<PhoneKey> = HashSet::new();
        for entry in &by_id {
            for &phone in entry.phones.iter() {
                match by_phone.entry(phone) {
                    std::collections::hash_map::Entry::Vacant(slot) => {
                        slot.insert(Arc::clone(entry));
                    }
                    std::collections::hash_map::Entry::Occupied(mut slot) => {
                        ambiguous.insert(phone);
                        if entry.wins_phone_over(slot.get(), phone) {
                            slot.insert(Arc::clone(entry));
                        }
                    }
                }
            }
        }
        by_phone.shrink_to_fit();

        let mut by_inn: Vec<Arc<Entry>> =
            by_id.iter().filter(|e| e.inn.is_some()).cloned().collect();
        by_inn.sort_by(|a, b| a.inn.cmp(&b.inn));

        Index {
            loaded: true,
            tombstones,
            sources,
            by_phone,
            by_id,
            by_inn,
            ambiguous_phones: ambiguous.len(),
        }
    }
}
