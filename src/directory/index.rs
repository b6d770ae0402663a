//! One immutable view of the directory, and how a change makes the next.
//!
//! Every map of an [`Index`] is a [`Shards`]: a change copies only the few
//! small leaves it touches and shares the rest with the index it was made
//! from. A change names the ids it touched (a source's copy added, changed
//! or gone, a tombstone put or spent); for each, the copy that answers is
//! chosen again by the rule below, and only the ids whose answer moved are
//! taken out of and put into the maps by id, phone and INN. A change that
//! touches much of the directory (a first load, a whole-set read that
//! changed most records) builds the maps in one pass instead: the same
//! index, sooner.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use super::build::{build_entries, Built, Stamps};
use super::entry::{unix_ms, Entry, Prepared};
use super::inherited::ManagerRules;
use super::keys::{
    by_id, by_inn, first_on_phone, overlay_of, tombstones_of, ById, ByInn, ByOverlay, OnPhone,
};
use super::overlay::Applied;
use super::shards::{hash_str, Edit, Sharded, Shards};
use super::tombstone::{is_hidden, is_spent_by, Tombstone, Tombstones};
use super::{Changes, Counterparty, Renderer, ReplaceReport};
use crate::phone::PhoneKey;

/// A change touching more than this share of the directory (1/8) builds its
/// maps in one pass: at that size one pass is cheaper than id by id.
const BULK_SHARE: usize = 8;
/// ... and at least this many ids (small directories change id by id).
const BULK_MIN: usize = 4_096;

/// What the directory knows about one source's record set.
#[derive(Debug, Clone)]
pub struct SourceInfo {
    pub name: Arc<str>,
    pub records: usize,
    pub fingerprint: Option<String>,
    pub loaded_at: SystemTime,
}

#[derive(Debug, Clone)]
struct SourceSet {
    info: SourceInfo,
    entries: Shards<ById>,
}

/// A source's whole new set, built beside the index (the costly part of a
/// full read: every record prepared and rendered), ready to be put in by
/// [`Index::with_set`].
pub(super) struct NewSet {
    info: SourceInfo,
    entries: Shards<ById>,
    unusable_phones: usize,
    unchanged: usize,
    /// Whether putting it in reports the ids it changed ([`Changes`]): not
    /// for a snapshot loaded at start-up, which is what the directory held.
    report_changes: bool,
    /// The overlays' generation the entries were built with: when an
    /// overlay was set since, [`Index::with_set`] applies it.
    overlay_generation: u64,
}

impl NewSet {
    /// Records in the set (each id once).
    pub(super) fn len(&self) -> usize {
        self.info.records
    }

    /// The source whose set it is.
    pub(super) fn source(&self) -> &str {
        &self.info.name
    }
}

/// A source's new set being made a few records at a time (see
/// [`Index::start_set`]).
pub(super) struct SetParts {
    name: Arc<str>,
    /// Receive time of every record (unix ms): the set's load time.
    stamp: u64,
    built: Built,
}

/// Immutable lookup structures over all sources' records.
///
/// The answering copy of an id: of the copies the sources hold that no
/// tombstone hides, the one received last (its entry's `stamp`); within one
/// millisecond, the copy of the source whose name sorts last, so that
/// neither the order sources load in nor a restart changes the answer.
#[derive(Debug)]
pub struct Index {
    loaded: bool,
    tombstones: Tombstones,
    sources: Vec<SourceSet>,
    /// The answering copy of each id.
    by_id: Shards<ById>,
    /// Each answering copy under each of its phones, best first.
    by_phone: Shards<OnPhone>,
    /// Each answering copy with an INN, under it.
    by_inn: Shards<ByInn>,
    /// Distinct phones in `by_phone`.
    phones: usize,
    /// Phones that more than one answering copy lists.
    ambiguous_phones: usize,
    /// CRMs' overlays by record id, applied to every copy of the id.
    overlays: Overlays,
    /// The sources' rules for a manager chosen at answer time: fixed when
    /// the directory is made, handed from each index to the next.
    manager_rules: Arc<ManagerRules>,
}

/// The overlays and a count of their changes, so that a set built against
/// older overlays is known to need them applied again.
#[derive(Debug, Clone)]
struct Overlays {
    map: Shards<ByOverlay>,
    generation: u64,
}

/// Whether copy `a` answers rather than copy `b` of the same id.
fn answers_over(a: &Entry, b: &Entry) -> bool {
    (a.stamp, &*a.source) > (b.stamp, &*b.source)
}

impl Index {
    pub(super) fn empty(manager_rules: Arc<ManagerRules>) -> Index {
        Index {
            manager_rules,
            loaded: false,
            tombstones: Shards::new(),
            sources: Vec::new(),
            by_id: Shards::new(),
            by_phone: Shards::new(),
            by_inn: Shards::new(),
            phones: 0,
            ambiguous_phones: 0,
            overlays: Overlays {
                map: Shards::new(),
                generation: 0,
            },
        }
    }

    /// The overlay set for `id`, if any (kept whether or not a source holds
    /// the record yet).
    pub(super) fn overlay(&self, id: &str) -> Option<&Arc<Applied>> {
        overlay_of(&self.overlays.map, id)
    }

    /// Every overlay set (O(overlays)).
    pub(super) fn overlays(&self) -> impl Iterator<Item = &Arc<Applied>> {
        self.overlays.map.iter().map(|o| &o.0)
    }

    pub(super) fn manager_rules(&self) -> &ManagerRules {
        &self.manager_rules
    }

    /// The answering copies with this INN (see [`Index::by_inn`]), borrowed:
    /// the answer-time manager's lookup allocates nothing for it.
    pub(super) fn answering_with_inn(&self, inn: &str) -> impl Iterator<Item = &Arc<Entry>> {
        by_inn(&self.by_inn, inn).iter().map(|e| &e.0)
    }

    /// Ids with an overlay.
    pub fn overlay_count(&self) -> usize {
        self.overlays.map.len()
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
        tombstones_of(&self.tombstones, &tombstone.id).contains(tombstone)
    }

    /// Every tombstone in force.
    pub fn tombstones(&self) -> Vec<Tombstone> {
        self.tombstones.iter().cloned().collect()
    }

    /// Each source's copy of `id` (hidden ones included).
    pub fn copies(&self, id: &str) -> Vec<Arc<Entry>> {
        self.sources
            .iter()
            .filter_map(|s| by_id(&s.entries, id).cloned())
            .collect()
    }

    /// Counterparties in the directory (each id once).
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.len() == 0
    }

    pub fn phone_count(&self) -> usize {
        self.phones
    }

    pub fn ambiguous_phones(&self) -> usize {
        self.ambiguous_phones
    }

    pub fn sources(&self) -> impl Iterator<Item = &SourceInfo> {
        self.sources.iter().map(|s| &s.info)
    }

    /// What the directory knows about one source's set, if it has one.
    pub fn source(&self, name: &str) -> Option<&SourceInfo> {
        self.set(name).map(|s| &s.info)
    }

    fn set(&self, name: &str) -> Option<&SourceSet> {
        self.sources.iter().find(|s| &*s.info.name == name)
    }

    /// All records of one source, as last loaded (collected: O(records),
    /// for readers of a whole set such as the snapshot's save).
    pub fn source_records(&self, source: &str) -> Option<Arc<[Arc<Entry>]>> {
        self.set(source)
            .map(|s| s.entries.iter().map(|e| Arc::clone(&e.0)).collect())
    }

    /// The answer for `phone`: of the answering copies that list it, the
    /// first by the shared-phone rule.
    #[inline]
    pub fn by_phone(&self, phone: PhoneKey) -> Option<&Arc<Entry>> {
        first_on_phone(&self.by_phone, phone).map(|p| &p.entry)
    }

    pub fn by_id(&self, id: &str) -> Option<&Arc<Entry>> {
        by_id(&self.by_id, id)
    }

    /// Every answering copy, each id once (O(directory): for a reconcile).
    pub fn answering(&self) -> impl Iterator<Item = &Arc<Entry>> {
        self.by_id.iter().map(|e| &e.0)
    }

    /// `source`'s own copy of `id`, answering or not.
    pub fn source_entry(&self, source: &str, id: &str) -> Option<&Arc<Entry>> {
        self.set(source).and_then(|s| by_id(&s.entries, id))
    }

    /// The answering copies with this INN, by id.
    pub fn by_inn(&self, inn: &str) -> Vec<Arc<Entry>> {
        by_inn(&self.by_inn, inn)
            .iter()
            .map(|e| Arc::clone(&e.0))
            .collect()
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
        let set = self.set(source).map(|s| &s.entries);
        records
            .iter()
            .map(|r| match set.and_then(|s| by_id(s, &r.id)) {
                Some(old) if old.content == Prepared::new(r.clone()).content => old.stamp,
                _ => now,
            })
            .collect()
    }

    /// `source`'s whole new set, built beside this index: records whose
    /// content is that of their entry in the current set keep its receive
    /// time, and with `reuse` and the same change marker the entry itself.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn prepare_set(
        &self,
        source: &str,
        records: Vec<Counterparty>,
        fingerprint: Option<String>,
        loaded_at: SystemTime,
        received: Option<Vec<Option<u64>>>,
        render: Renderer,
        reuse: bool,
    ) -> NewSet {
        let name: Arc<str> = Arc::from(source);
        let report_changes = received.is_none();
        let stamps = match received {
            Some(each) => Stamps::Each(each, unix_ms(loaded_at)),
            None => Stamps::All(unix_ms(loaded_at)),
        };
        let empty = Shards::new();
        let previous = self.set(source).map_or(&empty, |s| &s.entries);
        let built = build_entries(
            records,
            &name,
            stamps,
            render,
            previous,
            &self.overlays.map,
            &self.manager_rules,
            reuse,
        );
        self.new_set(name, built, fingerprint, loaded_at, report_changes)
    }

    /// A whole new set of `source` to be made a few records at a time
    /// ([`Index::add_to_set`], then [`Index::finish_set`], all on this
    /// index): the set [`Index::prepare_set`] makes of all the records at
    /// once, entry for entry, without all the records held at once. For a
    /// large file streamed in (SERVIO's), where the records read, not the
    /// entries, would be the peak of an import.
    pub(super) fn start_set(&self, source: &str, loaded_at: SystemTime) -> SetParts {
        SetParts {
            name: Arc::from(source),
            stamp: unix_ms(loaded_at),
            built: Built {
                entries: Vec::new(),
                unusable_phones: 0,
                unchanged: 0,
            },
        }
    }

    /// Turns `records` into entries of `parts`, compared with this index's
    /// set of the source as [`Index::prepare_set`] compares them.
    pub(super) fn add_to_set(
        &self,
        parts: &mut SetParts,
        records: Vec<Counterparty>,
        render: Renderer,
    ) {
        let empty = Shards::new();
        let previous = self.set(&parts.name).map_or(&empty, |s| &s.entries);
        let built = build_entries(
            records,
            &parts.name,
            Stamps::All(parts.stamp),
            render,
            previous,
            &self.overlays.map,
            &self.manager_rules,
            true,
        );
        parts.built.entries.extend(built.entries);
        parts.built.unusable_phones += built.unusable_phones;
        parts.built.unchanged += built.unchanged;
    }

    /// The set `parts` made, ready for [`Index::with_set`].
    pub(super) fn finish_set(
        &self,
        parts: SetParts,
        fingerprint: Option<String>,
        loaded_at: SystemTime,
    ) -> NewSet {
        self.new_set(parts.name, parts.built, fingerprint, loaded_at, true)
    }

    fn new_set(
        &self,
        name: Arc<str>,
        built: Built,
        fingerprint: Option<String>,
        loaded_at: SystemTime,
        report_changes: bool,
    ) -> NewSet {
        // One id twice in a set: the first record is the one kept.
        let entries = Shards::build(built.entries.into_iter().map(ById));
        NewSet {
            info: SourceInfo {
                name,
                records: entries.len(),
                fingerprint,
                loaded_at,
            },
            entries,
            unusable_phones: built.unusable_phones,
            unchanged: built.unchanged,
            report_changes,
            overlay_generation: self.overlays.generation,
        }
    }

    /// How many of this index's records of `set`'s source `set` leaves
    /// out, and how many there are: what putting it in would remove (for a
    /// guard such as `directory.max_shrink`).
    pub(super) fn removed_by(&self, set: &NewSet) -> (usize, usize) {
        let Some(old) = self.set(&set.info.name) else {
            return (0, 0);
        };
        let removed = old
            .entries
            .iter()
            .filter(|ById(e)| by_id(&set.entries, e.id()).is_none())
            .count();
        (removed, old.entries.len())
    }

    /// A new index: this one with `set` in place of its source's set.
    /// Costs the size of the set (to tell what changed) and then the size
    /// of the change. A set built before an overlay changed gets the
    /// overlays as they are now (`render` renders those entries again).
    pub(super) fn with_set(&self, set: &NewSet, render: Renderer) -> (Index, ReplaceReport) {
        let name = &set.info.name;
        let old = self.set(name).map(|s| &s.entries);
        let entries = if set.overlay_generation == self.overlays.generation {
            set.entries.clone()
        } else {
            self.with_current_overlays(&set.entries, render)
        };
        let mut touched: Vec<&str> = Vec::new();
        for ById(entry) in entries.iter() {
            let before = old.and_then(|o| by_id(o, entry.id()));
            if !before.is_some_and(|b| Arc::ptr_eq(b, entry)) {
                touched.push(entry.id());
            }
        }
        if let Some(old) = old {
            for ById(entry) in old.iter() {
                if by_id(&entries, entry.id()).is_none() {
                    touched.push(entry.id());
                }
            }
        }
        // A tombstone of this source is spent once its copy changed or is
        // gone; a tombstone of a copy this source never had is spent too.
        let mut tombstones = self.tombstones.edit();
        let mut spent = Vec::new();
        for t in self.tombstones.iter() {
            if *t.source == **name && is_spent_by(t, by_id(&entries, &t.id).map(|e| &**e)) {
                tombstones.remove(t);
                spent.push(t.clone());
                touched.push(&t.id);
            }
        }
        let sources = self.sources_with(SourceSet {
            info: set.info.clone(),
            entries: entries.clone(),
        });
        let index = self.derive(sources, tombstones.finish(), &touched, true);
        let changes = if set.report_changes {
            self.changes_to(&index, &touched)
        } else {
            Changes::default()
        };
        let report = index.report(name, set.unusable_phones, set.unchanged, spent, changes);
        (index, report)
    }

    /// `entries` with each entry whose overlay is not its id's here built
    /// again with it: O(entries) lookups, then O(overlays changed).
    fn with_current_overlays(&self, entries: &Shards<ById>, render: Renderer) -> Shards<ById> {
        let mut edit = entries.edit();
        for ById(entry) in entries.iter() {
            let overlay = self.overlay(entry.id());
            if !entry.same_overlay(overlay) {
                if let Some(again) =
                    entry.with_overlay(overlay.cloned(), render, &self.manager_rules)
                {
                    edit.insert(ById(Arc::new(again)));
                }
            }
        }
        edit.finish()
    }

    /// A new index: this one with `changes` made to the overlays (`None`
    /// takes an id's overlay away), every source's copy of each id built
    /// again with its new overlay, and the ids' answers chosen again. Costs
    /// the size of the change. Also gives the overlays replaced, by id.
    pub(super) fn with_overlays(
        &self,
        changes: &[(Box<str>, Option<Arc<Applied>>)],
        render: Renderer,
    ) -> (Index, Vec<Arc<Applied>>) {
        let mut map = self.overlays.map.edit();
        let mut replaced = Vec::new();
        let mut touched: Vec<&str> = Vec::with_capacity(changes.len());
        for (id, overlay) in changes {
            let old = match overlay {
                Some(overlay) => map.insert(ByOverlay(Arc::clone(overlay))),
                None => match self.overlay(id) {
                    Some(old) => map.remove(&ByOverlay(Arc::clone(old))),
                    None => None,
                },
            };
            replaced.extend(old.map(|o| o.0));
            touched.push(id);
        }
        let overlays = Overlays {
            map: map.finish(),
            generation: self.overlays.generation + 1,
        };
        let sources = self
            .sources
            .iter()
            .map(|set| {
                let mut entries = set.entries.edit();
                let mut changed = false;
                for id in &touched {
                    let Some(entry) = by_id(&set.entries, id) else {
                        continue;
                    };
                    let overlay = overlay_of(&overlays.map, id);
                    if entry.same_overlay(overlay) {
                        continue;
                    }
                    if let Some(again) =
                        entry.with_overlay(overlay.cloned(), render, &self.manager_rules)
                    {
                        entries.insert(ById(Arc::new(again)));
                        changed = true;
                    }
                }
                SourceSet {
                    info: set.info.clone(),
                    entries: if changed {
                        entries.finish()
                    } else {
                        set.entries.clone()
                    },
                }
            })
            .collect();
        let index = Index {
            overlays,
            ..self.derive(sources, self.tombstones.clone(), &touched, self.loaded)
        };
        (index, replaced)
    }

    /// A new index: this one with `upserts` added to (or replacing records of
    /// the same id in) `source`'s set, the records with an id in `removals`
    /// taken out of that set, and `buried` added to the tombstones (hiding
    /// other sources' copies of deleted ids). Costs the size of the change.
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
        let empty = Shards::new();
        let previous = self.set(source).map_or(&empty, |s| &s.entries);
        // Compared with the source's own copies: an upsert of unchanged
        // content keeps its receive time (see `build_entries`).
        let built = build_entries(
            upserts,
            &name,
            Stamps::All(unix_ms(at)),
            render,
            previous,
            &self.overlays.map,
            &self.manager_rules,
            true,
        );
        let mut entries = previous.edit();
        let mut touched: Vec<&str> = Vec::new();
        // In order: of one id twice in one change, the later record stays.
        for entry in &built.entries {
            let replaced = entries.insert(ById(Arc::clone(entry)));
            if !replaced.is_some_and(|r| Arc::ptr_eq(&r.0, entry)) {
                touched.push(entry.id());
            }
        }
        for id in removals {
            if let Some(entry) = by_id(previous, id) {
                entries.remove(&ById(Arc::clone(entry)));
                touched.push(id);
            }
        }
        let entries = entries.finish();
        let mut tombstones = self.tombstones.edit();
        let mut spent = Vec::new();
        if self.tombstones.len() > 0 {
            for id in &touched {
                for t in tombstones_of(&self.tombstones, id) {
                    if *t.source == *source && is_spent_by(t, by_id(&entries, id).map(|e| &**e)) {
                        tombstones.remove(t);
                        spent.push(t.clone());
                    }
                }
            }
        }
        for t in buried {
            tombstones.insert(t.clone());
            touched.push(&t.id);
        }
        let mut info = self.source(source).cloned().unwrap_or(SourceInfo {
            name: Arc::clone(&name),
            records: 0,
            fingerprint: None,
            loaded_at: at,
        });
        info.loaded_at = at;
        info.records = entries.len();
        let sources = self.sources_with(SourceSet { info, entries });
        let index = self.derive(sources, tombstones.finish(), &touched, true);
        let changes = self.changes_to(&index, &touched);
        let report = index.report(&name, built.unusable_phones, 0, spent, changes);
        (index, report)
    }

    /// A new index: this one with `tombstones` in force instead of its own
    /// (the store's, at start-up, before any set is loaded).
    pub(super) fn with_tombstones(&self, tombstones: &[Tombstone]) -> Index {
        let mut edit = Shards::new().edit();
        for t in tombstones {
            edit.insert(t.clone());
        }
        let new = edit.finish();
        let touched: Vec<&str> = self
            .tombstones
            .iter()
            .chain(new.iter())
            .map(|t| &*t.id)
            .collect();
        self.derive(self.sources.clone(), new.clone(), &touched, self.loaded)
    }

    /// This index's source sets (shared, not copied) with `set` in place of
    /// the one of its name.
    fn sources_with(&self, set: SourceSet) -> Vec<SourceSet> {
        let mut sources = self.sources.clone();
        match sources.iter_mut().find(|s| s.info.name == set.info.name) {
            Some(slot) => *slot = set,
            None => sources.push(set),
        }
        sources
    }

    fn report(
        &self,
        name: &Arc<str>,
        unusable_phones: usize,
        unchanged: usize,
        spent_tombstones: Vec<Tombstone>,
        changes: Changes,
    ) -> ReplaceReport {
        ReplaceReport {
            source: Arc::clone(name),
            records: self.source(name).map_or(0, |s| s.records),
            total_records: self.len(),
            phones: self.phones,
            ambiguous_phones: self.ambiguous_phones,
            unusable_phones,
            unchanged,
            spent_tombstones,
            changes,
        }
    }

    /// How the answers of the `touched` ids differ in `next`, made from
    /// this index: two lookups per id the change touched, never a pass
    /// over the directory. An id whose answer moved to a copy of the same
    /// content (another source's, or rebuilt alike) did not change.
    fn changes_to(&self, next: &Index, touched: &[&str]) -> Changes {
        let mut changes = Changes::default();
        let mut seen = HashSet::with_capacity(touched.len());
        for &id in touched {
            if !seen.insert(id) {
                continue;
            }
            match (self.by_id(id), next.by_id(id)) {
                (None, Some(_)) => changes.added.push(id.into()),
                (Some(before), Some(after)) if before.content != after.content => {
                    changes.rebuilt.push(id.into())
                }
                (Some(_), None) => changes.removed.push(id.into()),
                _ => {}
            }
        }
        changes
    }

    /// The index of `sources` under `tombstones`, where only the ids in
    /// `touched` may answer differently from this one.
    fn derive(
        &self,
        sources: Vec<SourceSet>,
        tombstones: Tombstones,
        touched: &[&str],
        loaded: bool,
    ) -> Index {
        let total: usize = sources.iter().map(|s| s.entries.len()).sum();
        let mut index = if touched.len() >= BULK_MIN && touched.len() * BULK_SHARE > total {
            Index::build(sources, tombstones, self.overlays.clone())
        } else {
            self.update(sources, tombstones, touched)
        };
        index.loaded = loaded;
        index.manager_rules = Arc::clone(&self.manager_rules);
        index
    }

    /// [`Index::derive`] id by id: each touched id's answer is chosen
    /// again, and where it moved the old answer leaves the maps and the new
    /// one enters them.
    fn update(&self, sources: Vec<SourceSet>, tombstones: Tombstones, touched: &[&str]) -> Index {
        let mut answers = Answers {
            by_id: self.by_id.edit(),
            by_phone: self.by_phone.edit(),
            by_inn: self.by_inn.edit(),
            phones: self.phones,
            ambiguous_phones: self.ambiguous_phones,
        };
        for id in touched {
            let now = answer_for(&sources, &tombstones, id);
            let leaf = answers.by_id.leaf(hash_str(id));
            let before = leaf
                .binary_search_by(|e| e.0.id().cmp(id))
                .ok()
                .map(|i| Arc::clone(&leaf[i].0));
            match (&before, &now) {
                (Some(b), Some(n)) if Arc::ptr_eq(b, n) => continue,
                (None, None) => continue,
                _ => {}
            }
            if let Some(before) = before {
                answers.remove(&before);
            }
            if let Some(now) = now {
                answers.add(now);
            }
        }
        Index {
            loaded: true,
            tombstones,
            sources,
            by_id: answers.by_id.finish(),
            by_phone: answers.by_phone.finish(),
            by_inn: answers.by_inn.finish(),
            phones: answers.phones,
            ambiguous_phones: answers.ambiguous_phones,
            overlays: self.overlays.clone(),
            manager_rules: Arc::clone(&self.manager_rules),
        }
    }

    /// [`Index::derive`] in one pass over every source's set.
    fn build(sources: Vec<SourceSet>, tombstones: Tombstones, overlays: Overlays) -> Index {
        let capacity: usize = sources.iter().map(|s| s.entries.len()).sum();
        let mut answering: HashMap<&str, &Arc<Entry>> = HashMap::with_capacity(capacity);
        for set in &sources {
            for ById(entry) in set.entries.iter() {
                if is_hidden(&tombstones, entry) {
                    continue;
                }
                answering
                    .entry(entry.id())
                    .and_modify(|kept| {
                        if answers_over(entry, kept) {
                            *kept = entry;
                        }
                    })
                    .or_insert(entry);
            }
        }
        let by_id = Shards::build(answering.values().map(|e| ById(Arc::clone(e))));
        drop(answering);
        let by_phone = Shards::build(by_id.iter().flat_map(|ById(e)| {
            e.phones.iter().map(|&phone| OnPhone {
                phone,
                entry: Arc::clone(e),
            })
        }));
        let by_inn = Shards::build(
            by_id
                .iter()
                .filter(|e| e.0.inn().is_some())
                .map(|e| ByInn(Arc::clone(&e.0))),
        );
        // A phone's items sit side by side in one leaf.
        let (mut phones, mut ambiguous_phones) = (0, 0);
        let mut last: Option<(PhoneKey, usize)> = None;
        for item in by_phone.iter() {
            last = match last {
                Some((phone, n)) if phone == item.phone => {
                    if n == 1 {
                        ambiguous_phones += 1;
                    }
                    Some((phone, n + 1))
                }
                _ => {
                    phones += 1;
                    Some((item.phone, 1))
                }
            };
        }
        Index {
            loaded: true,
            tombstones,
            sources,
            by_id,
            by_phone,
            by_inn,
            phones,
            ambiguous_phones,
            overlays,
            // [`Index::derive`] hands on the rules of the index it derives from.
            manager_rules: Arc::default(),
        }
    }
}

/// The copy of `id` that answers: see [`Index`].
fn answer_for(sources: &[SourceSet], tombstones: &Tombstones, id: &str) -> Option<Arc<Entry>> {
    sources
        .iter()
        .filter_map(|s| by_id(&s.entries, id))
        .filter(|e| !is_hidden(tombstones, e))
        .fold(None, |best: Option<&Arc<Entry>>, e| match best {
            Some(b) if !answers_over(e, b) => Some(b),
            _ => Some(e),
        })
        .cloned()
}

/// The maps of answering copies, being edited.
struct Answers {
    by_id: Edit<ById>,
    by_phone: Edit<OnPhone>,
    by_inn: Edit<ByInn>,
    phones: usize,
    ambiguous_phones: usize,
}

impl Answers {
    fn add(&mut self, entry: Arc<Entry>) {
        for &phone in entry.phones.iter() {
            let item = OnPhone {
                phone,
                entry: Arc::clone(&entry),
            };
            let listed = self.by_phone.change_leaf(item.shard_hash(), |items| {
                let start = items.partition_point(|p| p.phone < phone);
                let listed = items[start..].partition_point(|p| p.phone == phone);
                let at = start
                    + items[start..start + listed].partition_point(|p| p.order(&item).is_lt());
                items.insert(at, item);
                listed
            });
            match listed {
                0 => self.phones += 1,
                1 => self.ambiguous_phones += 1,
                _ => {}
            }
        }
        if entry.inn().is_some() {
            self.by_inn.insert(ByInn(Arc::clone(&entry)));
        }
        self.by_id.insert(ById(entry));
    }

    fn remove(&mut self, entry: &Arc<Entry>) {
        for &phone in entry.phones.iter() {
            let item = OnPhone {
                phone,
                entry: Arc::clone(entry),
            };
            let left = self.by_phone.change_leaf(item.shard_hash(), |items| {
                if let Some(i) = items
                    .iter()
                    .position(|p| p.phone == phone && p.entry.id() == entry.id())
                {
                    items.remove(i);
                }
                items.iter().filter(|p| p.phone == phone).count()
            });
            match left {
                0 => self.phones -= 1,
                1 => self.ambiguous_phones -= 1,
                _ => {}
            }
        }
        if entry.inn().is_some() {
            self.by_inn.remove(&ByInn(Arc::clone(entry)));
        }
        self.by_id.remove(&ById(Arc::clone(entry)));
    }
}

#[cfg(test)]
mod tests;
