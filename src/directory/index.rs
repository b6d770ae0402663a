//! One immutable, fully built view of the directory.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use super::{Counterparty, Renderer, ReplaceReport};
use crate::phone::{self, PhoneKey, PhoneKeyHashing};

/// One counterparty as the directory serves it.
///
/// Compact on purpose: a million of these stay in memory. The record itself
/// is kept as its canonical JSON (one allocation instead of a dozen small
/// strings), and only what lookups and the ambiguity rule need is kept
/// beside it. The full [`Counterparty`] is parsed back on the rare paths
/// that need it (an IncomingCall's pop-up, the API).
#[derive(Debug)]
pub struct Entry {
    /// The SayName answer payload, rendered once at load time.
    pub say_name: Box<[u8]>,
    /// The record as canonical JSON: what the snapshot stores.
    json: Box<str>,
    id: Box<str>,
    inn: Option<Box<str>>,
    /// The source this record came from (`file`, `onec`, `push`...).
    pub source: Arc<str>,
    /// The record's phones, normalized, without repeats, in the order written.
    phones: Box<[PhoneKey]>,
    has_manager: bool,
    /// The source's change marker (1C's `DataVersion`). Informative only:
    /// whether a record changed is decided by `content`.
    data_version: Option<Box<str>>,
    /// A hash of the record's content (its canonical JSON without the change
    /// marker, after cleaning): a record whose content did not change keeps
    /// its receive time, whatever else changed in its source.
    content: u64,
    /// When the gateway received this content of the record (unix ms): when
    /// the content last changed in this source. When two sources hold the
    /// same id, the newer content answers.
    stamp: u64,
}

/// A record made ready for an entry: cleaned, its canonical JSON written
/// (without the change marker) and its content hashed. Enough to tell
/// whether it changed, before anything is rendered.
pub(super) struct Prepared {
    counterparty: Counterparty,
    data_version: Option<Box<str>>,
    /// Canonical JSON without `data_version`.
    json: String,
    content: u64,
}

impl Prepared {
    pub(super) fn new(mut counterparty: Counterparty) -> Prepared {
        // Every source's records pass here: what reaches a phone's display,
        // a card or the snapshot is clean whichever source sent it.
        counterparty.clean_display_fields();
        let data_version = counterparty.data_version.take();
        // Serializing a struct of strings and numbers cannot fail; an empty
        // object would only make `counterparty()` fall back to the id and name.
        let json = serde_json::to_string(&counterparty).unwrap_or_default();
        let content = content_hash(json.as_bytes());
        Prepared {
            counterparty,
            data_version,
            json,
            content,
        }
    }

    pub(super) fn id(&self) -> &str {
        &self.counterparty.id
    }
}

/// FNV-1a, 64 bits: stable across builds and restarts (unlike std's
/// hasher), so content hashes may be compared with stored ones.
pub(crate) fn content_hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Entry {
    fn new(prepared: Prepared, source: &Arc<str>, stamp: u64, render: Renderer) -> (Entry, usize) {
        let Prepared {
            mut counterparty,
            data_version,
            mut json,
            content,
        } = prepared;
        let mut phones = Vec::with_capacity(counterparty.phones.len());
        let mut unusable = 0;
        for raw in &counterparty.phones {
            match phone::normalize(raw) {
                Some(key) if !phones.contains(&key) => phones.push(key),
                Some(_) => {}
                None => unusable += 1,
            }
        }
        // `data_version` is the model's last field: the canonical JSON with it
        // is the JSON without it, extended before the closing brace.
        if let (Some(version), Some(b'}')) = (&data_version, json.as_bytes().last()) {
            json.pop();
            json.push_str(",\"data_version\":");
            json.push_str(&serde_json::to_string(version).unwrap_or_else(|_| "null".into()));
            json.push('}');
        }
        counterparty.data_version = data_version;
        let Counterparty {
            id,
            inn,
            manager_phone,
            data_version,
            ..
        } = &counterparty;
        let entry = Entry {
            say_name: render(&counterparty),
            json: json.into_boxed_str(),
            has_manager: manager_phone
                .as_deref()
                .is_some_and(|m| !m.trim().is_empty()),
            id: id.clone(),
            inn: inn.clone().filter(|i| !i.is_empty()),
            source: Arc::clone(source),
            phones: phones.into_boxed_slice(),
            data_version: data_version.clone(),
            content,
            stamp,
        };
        (entry, unusable)
    }

    /// An entry outside any index (a live lookup's result), stamped now.
    pub(super) fn detached(counterparty: Counterparty, source: &str, render: Renderer) -> Entry {
        let source: Arc<str> = Arc::from(source);
        Entry::new(
            Prepared::new(counterparty),
            &source,
            unix_ms(SystemTime::now()),
            render,
        )
        .0
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn inn(&self) -> Option<&str> {
        self.inn.as_deref()
    }

    /// The record as canonical JSON, the shape of the contract.
    pub fn json(&self) -> &str {
        &self.json
    }

    /// The full record, parsed back from its JSON.
    pub fn counterparty(&self) -> Result<Counterparty, serde_json::Error> {
        serde_json::from_str(&self.json)
    }

    pub fn phones(&self) -> &[PhoneKey] {
        &self.phones
    }

    /// When the gateway received this version of the record (unix ms).
    pub fn received_at_ms(&self) -> u64 {
        self.stamp
    }

    pub fn data_version(&self) -> Option<&str> {
        self.data_version.as_deref()
    }

    /// The hash of the record's content (see [`content_hash`]).
    pub fn content(&self) -> u64 {
        self.content
    }

    fn position_of(&self, phone: PhoneKey) -> usize {
        self.phones
            .iter()
            .position(|p| *p == phone)
            .unwrap_or(usize::MAX)
    }

    /// The ambiguity rule: when several counterparties list one phone, the
    /// answer is the one that (1) has a responsible manager's extension, so the
    /// PBX can route the call; then (2) lists that phone earlier among its own
    /// phones (a client's main number beats a shared office line listed
    /// later); then (3) has the lowest id in byte order, so the choice never
    /// depends on load order.
    pub fn wins_phone_over(&self, other: &Entry, phone: PhoneKey) -> bool {
        let rank = |e: &Entry| (!e.has_manager, e.position_of(phone));
        (rank(self), &*self.id) < (rank(other), &*other.id)
    }
}

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
struct Built {
    entries: Arc<[Arc<Entry>]>,
    /// Phone strings that are not a number.
    unusable_phones: usize,
    /// Records whose entry was kept from the previous set (same content and
    /// change marker).
    unchanged: usize,
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
/// keeps the entry itself (nothing is rendered).
fn build_entries(
    records: Vec<Counterparty>,
    source: &Arc<str>,
    stamps: Stamps,
    render: Renderer,
    previous: &[Arc<Entry>],
    reuse: bool,
) -> Built {
    let records = stamps.attach(records);
    let reusable = reusable_entries(previous);
    let convert = |chunk: Vec<(Counterparty, u64)>| -> (Vec<Arc<Entry>>, usize, usize) {
        let (mut unusable, mut unchanged) = (0, 0);
        let entries = chunk
            .into_iter()
            .map(|(c, stamp)| {
                let prepared = Prepared::new(c);
                let old = reusable
                    .get(prepared.id())
                    .filter(|old| old.content == prepared.content);
                if let Some(old) = old.filter(|_| reuse) {
                    if old.data_version == prepared.data_version {
                        unchanged += 1;
                        return Arc::clone(old);
                    }
                }
                let stamp = old.map_or(stamp, |old| old.stamp);
                let (entry, bad) = Entry::new(prepared, source, stamp, render);
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

/// The entries of `previous` by id, for records of the same id to compare
/// their content with.
fn reusable_entries(previous: &[Arc<Entry>]) -> HashMap<&str, &Arc<Entry>> {
    previous.iter().map(|e| (&*e.id, e)).collect()
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

/// True when a tombstone of `entry`'s source holds its id and content.
fn is_hidden(tombstones: &Tombstones, entry: &Entry) -> bool {
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
fn spend_tombstones(
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

/// Unix milliseconds of `t` (0 before the epoch).
pub(super) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

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
        let mut sources: Vec<SourceSet> = self
            .sources
            .iter()
            .filter(|s| *s.info.name != *source)
            .map(SourceSet::share)
            .collect();
        sources.push(SourceSet {
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
        let mut sources: Vec<SourceSet> = self
            .sources
            .iter()
            .filter(|s| *s.info.name != *source)
            .map(SourceSet::share)
            .collect();
        sources.push(SourceSet {
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
