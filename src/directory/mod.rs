//! The directory: every counterparty the gateway knows, indexed for the ring.
//!
//! Sources hand the directory either a whole record set
//! ([`Directory::replace_source`]: the JSON Lines file, a 1C full read, the
//! snapshot at start-up; or made a few records at a time as a large file is
//! read, [`Directory::build_set`]: SERVIO's full files) or a change
//! ([`Directory::apply_changes`]: the push API). Either way a new [`Index`]
//! is made beside the one readers use and swapped in one step
//! (`arc-swap`), so a reader sees either the old directory or the new one,
//! never half of each. Lookups take no lock and allocate nothing.
//!
//! A change costs its size, not the directory's: the index's maps share all
//! they can with the previous index ([`shards`]), and only the ids a change
//! touched are looked at again ([`index`]). A whole set is built outside any
//! lock, on the caller's thread (the lowest-priority one for a 1C read), and
//! put in with a compare-and-swap; writers of changes take the writer lock,
//! which a lowest-priority thread never holds (see [`Directory::replace_source`]).
//!
//! The directory never calls out: it knows no source, no store, no network.
//! The SayName answer for each record is rendered once, when the record is
//! loaded, by the function the directory is built with (the `soap` module's),
//! so the directory itself knows no XML either.

mod build;
mod entry;
mod index;
mod inherited;
mod keys;
pub mod model;
pub mod overlay;
mod packed;
pub mod requisites;
mod shards;
mod tombstone;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;

pub use entry::Entry;
pub use index::{Index, SourceInfo};
pub use inherited::{ManagerAtAnswer, ManagerRule, ManagerRules};
pub use model::Counterparty;
pub use overlay::{EffectiveManager, Manager, Managers, Overlay, OverlayManager, Told};

pub use tombstone::Tombstone;

use crate::logging;
use crate::phone::PhoneKey;

/// Renders the ready-made SayName answer payload of a record.
pub type Renderer = fn(&Counterparty) -> Box<[u8]>;

/// What a source replacement changed, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplaceReport {
    pub source: Arc<str>,
    /// Records of this source now in the directory.
    pub records: usize,
    /// Records of all sources.
    pub total_records: usize,
    /// Distinct normalized phones in the whole directory.
    pub phones: usize,
    /// Phones that more than one counterparty lists.
    pub ambiguous_phones: usize,
    /// Phone strings of this source's records that are not a number.
    pub unusable_phones: usize,
    /// Records whose content and change marker were unchanged: their
    /// entries were kept as they were, not rebuilt.
    pub unchanged: usize,
    /// Tombstones of this source that its new set spent (the copy changed or
    /// is gone); the directory also keeps them for [`Directory::take_spent_tombstones`].
    pub spent_tombstones: Vec<Tombstone>,
    /// The ids whose answer this replacement or change moved (empty for a
    /// snapshot loaded at start-up).
    pub changes: Changes,
}

/// The ids whose answering record a replacement or change added, changed
/// or took away: what the change feed hands to the systems that sync
/// (`sync::feed`). Made from the ids the change touched (the index knows
/// them), so a one-record push reports in proportion to itself. A record
/// that left its source (a 1C record marked for deletion leaves the read
/// set) and left no other source's copy answering is removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Ids that had no answer before.
    pub added: Vec<Box<str>>,
    /// Ids whose answer's content changed (a new version, or another
    /// source's different copy answering now).
    pub rebuilt: Vec<Box<str>>,
    /// Ids that answer no more.
    pub removed: Vec<Box<str>>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.rebuilt.is_empty() && self.removed.is_empty()
    }

    /// Ids changed in any way.
    pub fn len(&self) -> usize {
        self.added.len() + self.rebuilt.len() + self.removed.len()
    }
}

/// Told of every replacement or change that moved an answer, after the
/// swap, on the thread that made it: it must not block (the change feed
/// hands the report to a bounded channel and never waits).
pub type ChangeSink = Arc<dyn Fn(&ReplaceReport) + Send + Sync>;

/// An id's overlay as the index takes it (`None`: taken away).
type AppliedOverlay = (Box<str>, Option<Arc<overlay::Applied>>);

/// Tries a whole-set replacement makes without the writer lock.
const OPTIMISTIC_TRIES: usize = 3;

pub struct Directory {
    current: ArcSwap<Index>,
    render: Renderer,
    /// Serializes writers of changes: two changes must not each start from
    /// the same old index and lose the other. Never held by a
    /// lowest-priority thread but in [`Directory::replace_source`]'s last
    /// resort, so normal-priority writers do not wait on one.
    writer: Mutex<()>,
    /// Tombstones spent by a source's new set, for the store to forget
    /// (a store write is not the directory's to make).
    spent: Mutex<Vec<Tombstone>>,
    spent_added: tokio::sync::Notify,
    /// `cti_directory_unusable_phones_total{source}`, when one is handed over.
    unusable_phones: Option<prometheus::IntCounterVec>,
    /// `cti_directory_invalid_requisites_total{source,field}`, likewise.
    invalid_requisites: Option<prometheus::IntCounterVec>,
    /// Who hears of the changes (the change feed), when someone does.
    changes: Option<ChangeSink>,
    /// `[[manager]]` and `manager_precedence`, applied to overlays when
    /// set, and the mappings modules learned (see [`Directory::learn_managers`]).
    managers: ArcSwap<Managers>,
    /// CRM users that overlays name and no `[[manager]]` maps.
    unmapped: Mutex<UnmappedUsers>,
    /// `cti_sync_unmapped_managers{system}`, when one is handed over.
    unmapped_gauge: Option<prometheus::IntGaugeVec>,
}

/// The CRM users overlays name that no `[[manager]]` maps: how many
/// overlays name each, and which were logged (once each); and the users a
/// source's own records name unmapped, by system (1C's).
#[derive(Default)]
struct UnmappedUsers {
    overlays: HashMap<(Box<str>, Box<str>), usize>,
    logged: HashSet<(Box<str>, Box<str>)>,
    by_source: HashMap<Box<str>, HashSet<Box<str>>>,
}

/// An overlay the directory refused: whose, which field, why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("overlay of id {id:?}: {problem}")]
pub struct OverlayError {
    pub id: Box<str>,
    pub problem: model::FieldError,
}

/// The records of a change or a set whose requisites fail
/// [`requisites::check`]: they are kept (a mistyped INN never costs a
/// caller), and counted once [`Directory::count_requisite_faults`] is told
/// the records went in.
#[derive(Debug, Default)]
pub struct RequisiteFaults {
    /// In the records' order.
    pub records: Vec<FaultyRecord>,
    /// The failing fields of records whose content the source did not hold
    /// yet: what is counted (a record read again is not counted again).
    new_fields: Vec<&'static str>,
}

/// A record whose requisites fail their check.
#[derive(Debug)]
pub struct FaultyRecord {
    /// Its position in the records given.
    pub index: usize,
    pub id: Box<str>,
    pub problems: Vec<requisites::Problem>,
}

impl RequisiteFaults {
    /// Failing fields of records the source did not hold with this content.
    pub fn new_faults(&self) -> usize {
        self.new_fields.len()
    }

    /// The first `n` faulty records, for a log line:
    /// `id "k1": `inn`: check digit does not match: 7707083894; …`.
    pub fn first_few(&self, n: usize) -> String {
        let mut text = String::new();
        for record in self.records.iter().take(n) {
            for problem in &record.problems {
                if !text.is_empty() {
                    text.push_str("; ");
                }
                let id: String = record.id.chars().take(64).collect();
                text.push_str(&format!("id {id:?}: {problem}"));
            }
        }
        if self.records.len() > n {
            text.push_str(&format!("; and {} more records", self.records.len() - n));
        }
        text
    }
}

impl Directory {
    pub fn new(render: Renderer) -> Directory {
        Directory {
            current: ArcSwap::from_pointee(Index::empty(Arc::default())),
            render,
            writer: Mutex::new(()),
            spent: Mutex::new(Vec::new()),
            spent_added: tokio::sync::Notify::new(),
            unusable_phones: None,
            invalid_requisites: None,
            changes: None,
            managers: ArcSwap::from_pointee(Managers::default()),
            unmapped: Mutex::new(UnmappedUsers::default()),
            unmapped_gauge: None,
        }
    }

    /// Maps CRM users to extensions and ranks managers by this (see
    /// [`overlay`]); for overlays set from now on.
    pub fn with_managers(self, managers: Managers) -> Directory {
        self.managers.store(Arc::new(managers));
        self
    }

    /// The sources' rules for a manager chosen when a call is answered
    /// (SERVIO's `manager_from_inn` and `default_manager_phone`; see
    /// [`inherited`]). Fixed for the directory's life: call it before any
    /// record is loaded (whether an entry needs its rule is decided when it
    /// is built).
    pub fn with_manager_rules(self, rules: ManagerRules) -> Directory {
        self.current.store(Arc::new(Index::empty(Arc::new(rules))));
        self
    }

    /// Mappings a module learned of `system`'s users (a CRM's user list):
    /// (user id, manager). A user `[[manager]]` maps keeps that mapping
    /// (config wins); one learned before is replaced. The overlays naming
    /// a user whose mapping changed are mapped again (one swap; a pass over
    /// the overlays, not the records). In memory: a module learns its
    /// users again at each start. Gives the number of overlays changed.
    pub fn learn_managers(&self, system: &str, learned: Vec<(String, Manager)>) -> usize {
        let mut users: HashSet<Box<str>> = HashSet::new();
        let managers = {
            // Learners one at a time: each starts from the last one's map.
            let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            let mut managers = Managers::clone(&self.managers.load());
            for (user, manager) in learned {
                if managers.learn(system, &user, manager) {
                    users.insert(user.trim().into());
                }
            }
            let managers = Arc::new(managers);
            self.managers.store(Arc::clone(&managers));
            managers
        };
        if users.is_empty() {
            return 0;
        }
        let (replaced, changes) = self.write(|base| {
            let changes: Vec<AppliedOverlay> = base
                .overlays()
                .filter(|o| o.names_user_of(system, &users))
                .filter_map(|o| {
                    managers
                        .reapply(o)
                        .map(|again| (o.id.clone(), Some(Arc::new(again))))
                })
                .collect();
            let (index, replaced) = base.with_overlays(&changes, self.render);
            (index, (replaced, changes))
        });
        self.count_unmapped(&replaced, &changes);
        changes.len()
    }

    /// The users a source's own records name that no `[[manager]]` maps
    /// (1C's responsible users, `onec.manager_ref_field`): they replace
    /// what `system` reported before, count in
    /// `cti_sync_unmapped_managers{system}` and are logged once each, like
    /// the CRMs' users overlays name.
    pub fn note_unmapped_users(&self, system: &str, users: HashSet<Box<str>>) {
        let mut unmapped = self.unmapped.lock().unwrap_or_else(|p| p.into_inner());
        for user in &users {
            let key: (Box<str>, Box<str>) = (system.into(), user.clone());
            if unmapped.logged.insert(key) {
                tracing::warn!(
                    system = %logging::Escaped(system),
                    user_id = %logging::Escaped(user),
                    "a responsible user no [[manager]] maps (add a [[manager]] with this user's key as onec_user): their clients' calls go without an extension; logged once per user, counted in cti_sync_unmapped_managers"
                );
            }
        }
        unmapped.by_source.insert(system.into(), users);
        self.set_unmapped_gauge(&unmapped, std::iter::once(Box::<str>::from(system)));
    }

    /// Sets `cti_sync_unmapped_managers{system}`: how many CRM users that
    /// overlays name have no `[[manager]]`.
    pub fn counting_unmapped_managers(mut self, gauge: prometheus::IntGaugeVec) -> Directory {
        self.unmapped_gauge = Some(gauge);
        self
    }

    /// Sets, replaces (`Some`) or takes away (`None`) the overlays of these
    /// ids, mapping the CRMs' users to extensions now (see [`overlay`]), and
    /// swaps in the index where every copy of those ids carries its new
    /// overlay: no reader sees a number an overlay adds unknown, or twice.
    /// An id no source holds keeps its overlay until a record of it comes.
    /// Costs the size of the change. Refuses the whole change if an
    /// overlay breaks the model's bounds. Gives the number of ids changed.
    pub fn set_overlays(
        &self,
        changes: Vec<(Box<str>, Option<Overlay>)>,
    ) -> Result<usize, OverlayError> {
        let applied = self.prepare_overlays(changes)?;
        let replaced = self.write(|base| base.with_overlays(&applied, self.render));
        self.count_unmapped(&replaced, &applied);
        Ok(applied.len())
    }

    /// Takes the records of `removals` out of `source`'s set and sets the
    /// `overlays`, in ONE swap: what a CRM-only record becomes when it is
    /// linked to another source's record (its numbers, manager and page
    /// move to that record's overlay), so no reader sees a number unknown
    /// (gone from the one, not yet on the other) or twice. Refuses the
    /// whole change, changing nothing, if an overlay breaks the model's
    /// bounds.
    pub fn move_to_overlays(
        &self,
        source: &str,
        removals: &[Box<str>],
        overlays: Vec<(Box<str>, Option<Overlay>)>,
        at: SystemTime,
    ) -> Result<ReplaceReport, OverlayError> {
        let applied = self.prepare_overlays(overlays)?;
        let (report, replaced) = self.write(|base| {
            let (removed, report) =
                base.with_changes(source, Vec::new(), removals, &[], at, self.render);
            let (index, replaced) = removed.with_overlays(&applied, self.render);
            (index, (report, replaced))
        });
        self.count_unmapped(&replaced, &applied);
        Ok(self.replaced(report))
    }

    /// Overlays checked, cleaned and mapped (users to extensions) for the
    /// index; refused whole if one breaks the model's bounds.
    fn prepare_overlays(
        &self,
        changes: Vec<(Box<str>, Option<Overlay>)>,
    ) -> Result<Vec<AppliedOverlay>, OverlayError> {
        let managers = self.managers.load();
        let mut applied = Vec::with_capacity(changes.len());
        for (id, overlay) in changes {
            let overlay = match overlay {
                Some(mut overlay) => {
                    if let Err(problem) = overlay.validate() {
                        return Err(OverlayError { id, problem });
                    }
                    // What reaches a card is clean, as a source's records are.
                    for m in &mut overlay.managers {
                        m.name = m.name.take().map(|n| model::clean_text(&n).trim().into());
                    }
                    for p in &mut overlay.phones {
                        *p = model::clean_text(p).trim().into();
                    }
                    for e in &mut overlay.emails {
                        *e = model::clean_text(e).trim().into();
                    }
                    Some(Arc::new(managers.apply(&id, overlay)))
                }
                None => None,
            };
            applied.push((id, overlay));
        }
        Ok(applied)
    }

    /// Updates `cti_sync_unmapped_managers`: the `replaced` overlays' users
    /// count no more, the new ones' do; a user is logged the first time.
    fn count_unmapped(
        &self,
        replaced: &[Arc<overlay::Applied>],
        set: &[(Box<str>, Option<Arc<overlay::Applied>>)],
    ) {
        let mut unmapped = self.unmapped.lock().unwrap_or_else(|p| p.into_inner());
        let mut systems: HashSet<Box<str>> = HashSet::new();
        for user in replaced.iter().flat_map(|o| o.unmapped.iter()) {
            if let Some(n) = unmapped.overlays.get_mut(user) {
                *n -= 1;
                if *n == 0 {
                    unmapped.overlays.remove(user);
                }
            }
            systems.insert(user.0.clone());
        }
        for (id, overlay) in set {
            for user in overlay.iter().flat_map(|o| o.unmapped.iter()) {
                *unmapped.overlays.entry(user.clone()).or_default() += 1;
                systems.insert(user.0.clone());
                if unmapped.logged.insert(user.clone()) {
                    tracing::warn!(
                        system = %logging::Escaped(&user.0),
                        user_id = %logging::Escaped(&user.1),
                        id = %logging::Escaped(id),
                        "a CRM names a responsible user no [[manager]] maps: their records' calls go to the next manager by [sync] manager_precedence (add a [[manager]] with this user id; logged once per user, counted in cti_sync_unmapped_managers)"
                    );
                }
            }
        }
        self.set_unmapped_gauge(&unmapped, systems.into_iter());
    }

    /// Sets `cti_sync_unmapped_managers` of `systems`: the distinct users
    /// overlays name or a source reported, unmapped.
    fn set_unmapped_gauge(
        &self,
        unmapped: &UnmappedUsers,
        systems: impl Iterator<Item = Box<str>>,
    ) {
        let Some(gauge) = &self.unmapped_gauge else {
            return;
        };
        for system in systems {
            let mut users: HashSet<&str> = unmapped
                .overlays
                .keys()
                .filter(|k| k.0 == system)
                .map(|k| &*k.1)
                .collect();
            if let Some(reported) = unmapped.by_source.get(&system) {
                users.extend(reported.iter().map(|u| &**u));
            }
            gauge
                .with_label_values(&[&*system])
                .set(i64::try_from(users.len()).unwrap_or(i64::MAX));
        }
    }

    /// Whether `id` has an overlay (whether or not a source holds it yet).
    pub fn has_overlay(&self, id: &str) -> bool {
        self.current.load().overlay(id).is_some()
    }

    /// Hands every non-empty [`Changes`] report to `sink` (see [`ChangeSink`]).
    pub fn reporting_changes(mut self, sink: ChangeSink) -> Directory {
        self.changes = Some(sink);
        self
    }

    /// Counts, by source and field, the records that entered with a
    /// requisite failing [`requisites::check`] (see [`RequisiteFaults`]).
    pub fn counting_invalid_requisites(mut self, counter: prometheus::IntCounterVec) -> Directory {
        self.invalid_requisites = Some(counter);
        self
    }

    /// Checks the requisites of `records`, about to enter `source`. Costs
    /// a few digit sums per record; only a failing record is compared with
    /// the source's copy (to count each content once).
    pub fn check_requisites(&self, source: &str, records: &[Counterparty]) -> RequisiteFaults {
        let index = self.current.load();
        let mut faults = RequisiteFaults::default();
        for (i, record) in records.iter().enumerate() {
            let problems = requisites::check(record);
            if problems.is_empty() {
                continue;
            }
            let known = index
                .source_entry(source, &record.id)
                .is_some_and(|old| old.content == entry::Prepared::new(record.clone()).content);
            if !known {
                faults.new_fields.extend(problems.iter().map(|p| p.field));
            }
            faults.records.push(FaultyRecord {
                index: i,
                id: record.id.clone(),
                problems,
            });
        }
        faults
    }

    /// Counts `faults` once their records are in the directory.
    pub fn count_requisite_faults(&self, source: &str, faults: &RequisiteFaults) {
        if let Some(counter) = &self.invalid_requisites {
            for field in &faults.new_fields {
                counter.with_label_values(&[source, field]).inc();
            }
        }
    }

    /// Counts requisites kept outside the directory (1C's bank details, in
    /// the sync store) that fail their check, one per failing field; the
    /// caller counts each content once, as [`Directory::check_requisites`] does.
    pub fn count_invalid_requisites(&self, source: &str, fields: &[&'static str]) {
        if let Some(counter) = &self.invalid_requisites {
            for field in fields {
                counter.with_label_values(&[source, field]).inc();
            }
        }
    }

    /// Counts, by source, the phone strings dropped at load because they
    /// hold no usable number (the record is kept without them).
    pub fn counting_unusable_phones(mut self, counter: prometheus::IntCounterVec) -> Directory {
        self.unusable_phones = Some(counter);
        self
    }

    fn count_unusable(&self, report: &ReplaceReport) {
        if let (Some(counter), n @ 1..) = (&self.unusable_phones, report.unusable_phones) {
            counter
                .with_label_values(&[&*report.source])
                .inc_by(n as u64);
        }
    }

    /// Puts the store's tombstones in force: call it before any set is loaded.
    pub fn set_tombstones(&self, tombstones: &[Tombstone]) {
        self.write(|base| (base.with_tombstones(tombstones), ()));
    }

    /// The tombstones a delete of `id` leaves: one for each copy of it that
    /// a source other than `except` holds now, with that copy's content
    /// (copies already deleted have theirs).
    pub fn tombstones_for(&self, id: &str, except: &str) -> Vec<Tombstone> {
        let index = self.current.load();
        index
            .copies(id)
            .iter()
            .filter(|e| &*e.source != except && !index.is_deleted(e))
            .map(|e| Tombstone {
                id: id.into(),
                source: (*e.source).into(),
                content: e.content(),
            })
            .collect()
    }

    /// Waits until some tombstones were spent, then takes them all.
    pub async fn spent_tombstones(&self) -> Vec<Tombstone> {
        loop {
            let notified = self.spent_added.notified();
            let taken = self.take_spent_tombstones();
            if !taken.is_empty() {
                return taken;
            }
            notified.await;
        }
    }

    /// The tombstones spent since the last call.
    pub fn take_spent_tombstones(&self) -> Vec<Tombstone> {
        std::mem::take(&mut *self.spent.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Whether a live lookup's `entry` (a copy `source` holds now, read
    /// outside a full read) may answer: not when that copy was deleted (a
    /// tombstone with its content), nor when another source's copy of the
    /// id was received later. Its receive time is its source's copy's when
    /// the content is the same, else its own.
    pub fn may_answer_live(&self, entry: &Entry) -> bool {
        let index = self.current.load();
        if index.is_deleted(entry) {
            return false;
        }
        // Only an id another source answers for needs its source's own copy
        // (a walk of the sets): the common live answer, an id the directory
        // lacks or holds from the same source, takes two lookups.
        let Some(current) = index.by_id(entry.id()).filter(|c| c.source != entry.source) else {
            return true;
        };
        let received = index
            .copies(entry.id())
            .iter()
            .find(|c| c.source == entry.source && c.content() == entry.content())
            .map_or(entry.received_at_ms(), |c| c.received_at_ms());
        current.received_at_ms() <= received
    }

    /// The record answering for this phone, by the ambiguity rule of [`Index`].
    #[inline]
    pub fn lookup_phone(&self, phone: PhoneKey) -> Option<Arc<Entry>> {
        self.current.load().by_phone(phone).cloned()
    }

    /// Runs `f` on the record answering for this phone (or `None`) and on
    /// whether any directory is loaded, without cloning the `Arc`: the
    /// SayName path copies the answer bytes out and needs nothing more.
    #[inline]
    pub fn with_phone<T>(
        &self,
        phone: Option<PhoneKey>,
        f: impl FnOnce(Option<&Entry>, bool) -> T,
    ) -> T {
        let index = self.current.load();
        let entry = phone.and_then(|p| index.by_phone(p)).map(|e| &**e);
        f(entry, index.is_loaded())
    }

    /// The manager a call from `entry` goes to when it is chosen at answer
    /// time ([`Entry::manager_at_answer`]; see [`Index::manager_at_answer`]),
    /// from the index as it is now. `None` for every other entry.
    pub fn manager_at_answer(&self, entry: &Entry) -> Option<EffectiveManager> {
        if !entry.manager_at_answer() {
            return None;
        }
        self.current.load().manager_at_answer(entry)
    }

    /// Where that manager comes from ([`Index::manager_source_at_answer`]):
    /// what a SayName answer is written with. `None` for every other entry.
    pub fn manager_source_at_answer(&self, entry: &Entry) -> Option<ManagerAtAnswer> {
        if !entry.manager_at_answer() {
            return None;
        }
        self.current.load().manager_source_at_answer(entry)
    }

    /// The card the operator's pop-up shows for `entry`: [`Entry::card`]
    /// with the manager chosen at answer time, when the entry's is (the
    /// same manager SayName routes the call to).
    pub fn card(&self, entry: &Entry) -> Result<Counterparty, serde_json::Error> {
        let mut card = entry.card()?;
        if let Some(manager) = self.manager_at_answer(entry) {
            card.manager_phone = manager.extension;
            card.manager_name = manager.name;
            card.manager_source = Some(manager.source);
        }
        Ok(card)
    }

    pub fn lookup_id(&self, id: &str) -> Option<Arc<Entry>> {
        self.current.load().by_id(id).cloned()
    }

    pub fn lookup_inn(&self, inn: &str) -> Vec<Arc<Entry>> {
        self.current.load().by_inn(inn)
    }

    /// The answering records with this INN and this KPP (`None`: those
    /// without a KPP), both compared as [`entry::normalize_kpp`] writes
    /// them: a branch of a company shares its INN, not its KPP.
    pub fn lookup_inn_kpp(&self, inn: &str, kpp: Option<&str>) -> Vec<Arc<Entry>> {
        let wanted = kpp.and_then(entry::normalize_kpp);
        let mut found = self.current.load().by_inn(inn);
        found.retain(|e| e.kpp == wanted);
        found
    }

    /// The whole current index, for readers that need a consistent view.
    pub fn snapshot(&self) -> Arc<Index> {
        self.current.load_full()
    }

    /// True once any record set (possibly empty) has been loaded.
    pub fn is_loaded(&self) -> bool {
        self.current.load().is_loaded()
    }

    /// Replaces every record of `source` with `records`; other sources' records
    /// stay. Builds the new index beside the current one (CPU-heavy for large
    /// sets: call it from a blocking task) and swaps it in.
    pub fn replace_source(
        &self,
        source: &str,
        records: Vec<Counterparty>,
        fingerprint: Option<String>,
        loaded_at: SystemTime,
    ) -> ReplaceReport {
        self.replace(source, records, fingerprint, loaded_at, None, true)
    }

    /// [`Directory::replace_source`] for records whose receive times are
    /// known one by one (unix ms, beside `records`; `None`: `loaded_at`):
    /// a snapshot's rows, so that after a restart the version received last
    /// still answers when two sources hold one id.
    pub fn replace_source_received(
        &self,
        source: &str,
        records: Vec<Counterparty>,
        received_at_ms: Vec<Option<u64>>,
        fingerprint: Option<String>,
        loaded_at: SystemTime,
    ) -> ReplaceReport {
        self.replace(
            source,
            records,
            fingerprint,
            loaded_at,
            Some(received_at_ms),
            true,
        )
    }

    /// [`Directory::replace_source`] that builds every entry anew, even for
    /// records whose change marker is the same: for when what an entry is
    /// built from changed (a source's field mapping).
    pub fn replace_source_rebuilt(
        &self,
        source: &str,
        records: Vec<Counterparty>,
        fingerprint: Option<String>,
        loaded_at: SystemTime,
    ) -> ReplaceReport {
        self.replace(source, records, fingerprint, loaded_at, None, false)
    }

    fn replace(
        &self,
        source: &str,
        records: Vec<Counterparty>,
        fingerprint: Option<String>,
        loaded_at: SystemTime,
        received: Option<Vec<Option<u64>>>,
        reuse: bool,
    ) -> ReplaceReport {
        // The costly part (every record prepared and rendered, the set's map
        // built) needs no lock: the caller may be the lowest-priority thread.
        let set = self.current.load().prepare_set(
            source,
            records,
            fingerprint,
            loaded_at,
            received,
            self.render,
            reuse,
        );
        self.put_set(&set)
    }

    /// Starts a whole new set of `source`, made a few records at a time
    /// ([`SetBuilder::add`]) and put in by [`BuiltSet::put`]: the same set
    /// and the same swap as [`Directory::replace_source`] of all the
    /// records, without all of them held at once (a record read costs more
    /// memory than its entry, and an unchanged record's entry is the one
    /// the directory holds already). The records are compared with the
    /// source's set as it is now; like `replace_source`, call it from a
    /// blocking task or a low-priority thread.
    pub fn build_set(&self, source: &str, loaded_at: SystemTime) -> SetBuilder<'_> {
        let base = self.current.load_full();
        let parts = base.start_set(source, loaded_at);
        SetBuilder {
            directory: self,
            base,
            parts,
            loaded_at,
        }
    }

    /// Puts a whole set in, without the writer lock: a writer that
    /// swapped meanwhile makes this try again on its index.
    fn put_set(&self, set: &index::NewSet) -> ReplaceReport {
        for _ in 0..OPTIMISTIC_TRIES {
            let base = self.current.load_full();
            let (index, report) = base.with_set(set, self.render);
            if self.swap(&base, index) {
                return self.replaced(report);
            }
        }
        // Writes kept winning (a stream of pushes during a read that changed
        // most of a large set): take the lock, at last, and say so.
        tracing::warn!(
            source = set.source(),
            tries = OPTIMISTIC_TRIES,
            "directory: a whole-set replacement kept losing to concurrent changes; changes now wait for it"
        );
        let report = self.write(|base| base.with_set(set, self.render));
        self.replaced(report)
    }

    /// What follows a replacement: metrics, spent tombstones handed over.
    fn replaced(&self, report: ReplaceReport) -> ReplaceReport {
        self.count_unusable(&report);
        if let (Some(sink), false) = (&self.changes, report.changes.is_empty()) {
            sink(&report);
        }
        if !report.spent_tombstones.is_empty() {
            self.spent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(report.spent_tombstones.iter().cloned());
            self.spent_added.notify_one();
        }
        report
    }

    /// Swaps `index` in if the current index is still `base`.
    fn swap(&self, base: &Arc<Index>, index: Index) -> bool {
        let previous = self.current.compare_and_swap(base, Arc::new(index));
        Arc::ptr_eq(&previous, base)
    }

    /// Makes the next index from the current one under the writer lock.
    /// Only a whole-set replacement, which takes no lock, can swap in
    /// between; then the change is made again on its index.
    fn write<R>(&self, change: impl Fn(&Index) -> (Index, R)) -> R {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let base = self.current.load_full();
            let (index, report) = change(&base);
            if self.swap(&base, index) {
                return report;
            }
        }
    }

    /// Upserts `records` into `source`'s set (a record replaces the one of
    /// the same id there), takes the records whose id is in `removals` out
    /// of that set, and puts `buried` in force (other sources' copies of
    /// deleted ids, hidden while their content is the deleted one). Costs
    /// the size of the change, not of the directory.
    pub fn apply_changes(
        &self,
        source: &str,
        records: Vec<Counterparty>,
        removals: &[Box<str>],
        buried: &[Tombstone],
        at: SystemTime,
    ) -> ReplaceReport {
        let report = self.write(|base| {
            base.with_changes(source, records.clone(), removals, buried, at, self.render)
        });
        self.replaced(report)
    }

    /// When each of `records` counts as received if `source` took them at
    /// `now`: its copy's receive time where the content did not change (see
    /// [`Index`]'s rule), else `now`. A source that commits a change to the
    /// store before applying it stores these, so that a restart agrees.
    pub fn receive_times(
        &self,
        source: &str,
        records: &[Counterparty],
        now: SystemTime,
    ) -> Vec<SystemTime> {
        let now_ms = entry::unix_ms(now);
        self.current
            .load()
            .receive_times(source, records, now_ms)
            .into_iter()
            .map(|ms| SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms))
            .collect()
    }

    /// An entry for a record that is not (yet) in the directory, rendered
    /// like the directory's own: what a live lookup answers with.
    pub fn prepare_entry(&self, source: &str, record: Counterparty) -> Arc<Entry> {
        let index = self.current.load();
        let overlay = index.overlay(&record.id);
        Arc::new(Entry::detached(
            record,
            source,
            self.render,
            overlay,
            index.manager_rules(),
        ))
    }
}

/// A whole set of one source being made a few records at a time (see
/// [`Directory::build_set`]). Dropped unfinished, it changes nothing.
pub struct SetBuilder<'d> {
    directory: &'d Directory,
    /// The index the records are compared with (its source's set, its
    /// overlays), the same for every part.
    base: Arc<Index>,
    parts: index::SetParts,
    loaded_at: SystemTime,
}

impl<'d> SetBuilder<'d> {
    /// Makes entries of `records` (on the calling thread, and on every core
    /// for a large part). Of one id twice in the set, the first record is
    /// the one kept, as in [`Directory::replace_source`].
    pub fn add(&mut self, records: Vec<Counterparty>) {
        self.base
            .add_to_set(&mut self.parts, records, self.directory.render);
    }

    /// The set made, to be checked ([`BuiltSet::removes`]) and put in.
    pub fn finish(self, fingerprint: Option<String>) -> BuiltSet<'d> {
        let set = self
            .base
            .finish_set(self.parts, fingerprint, self.loaded_at);
        BuiltSet {
            directory: self.directory,
            set,
        }
    }
}

/// A whole set of one source, made and not yet put in: dropped, it changes
/// nothing.
pub struct BuiltSet<'d> {
    directory: &'d Directory,
    set: index::NewSet,
}

impl BuiltSet<'_> {
    /// Records in the set, each id once.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.len() == 0
    }

    /// How many of its source's records in the directory now the set
    /// leaves out (would remove), and how many there are.
    pub fn removes(&self) -> (usize, usize) {
        self.directory.current.load().removed_by(&self.set)
    }

    /// Puts the set in, in one swap, as [`Directory::replace_source`] does.
    pub fn put(self) -> ReplaceReport {
        self.directory.put_set(&self.set)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phone::normalize;

    fn render(c: &Counterparty) -> Box<[u8]> {
        c.name.as_bytes().into()
    }

    #[test]
    fn a_faulty_record_is_counted_once_per_content_and_kept() {
        let counter =
            prometheus::IntCounterVec::new(prometheus::Opts::new("t", "t"), &["source", "field"])
                .expect("metric");
        let dir = Directory::new(render).counting_invalid_requisites(counter.clone());
        let mut typo = cp("1", "A", &["89160000001"], None);
        typo.inn = Some("7707083894".into());
        let mut clean = cp("2", "B", &["89160000002"], None);
        clean.inn = Some("7707083893".into());
        let records = vec![typo.clone(), clean];
        let faults = dir.check_requisites("onec", &records);
        assert_eq!(faults.records.len(), 1);
        assert_eq!(faults.new_faults(), 1);
        dir.replace_source("onec", records.clone(), None, SystemTime::now());
        dir.count_requisite_faults("onec", &faults);
        assert!(dir.lookup_id("1").is_some(), "kept");
        // Read again, the same content: reported, not counted again.
        let again = dir.check_requisites("onec", &records);
        assert_eq!((again.records.len(), again.new_faults()), (1, 0));
        // Another source's same record is new to that source.
        assert_eq!(dir.check_requisites("push", &records).new_faults(), 1);
        typo.name = "A2".into();
        assert_eq!(dir.check_requisites("onec", &[typo]).new_faults(), 1);
        assert_eq!(counter.with_label_values(&["onec", "inn"]).get(), 1);
    }

    fn cp(id: &str, name: &str, phones: &[&str], manager: Option<&str>) -> Counterparty {
        Counterparty {
            id: id.into(),
            name: name.into(),
            full_name: None,
            inn: Some(format!("77{id}").into()),
            kpp: None,
            ogrn: None,
            category: None,
            manager_phone: manager.map(Into::into),
            manager_name: None,
            phones: phones.iter().map(|p| (*p).into()).collect(),
            emails: vec![],
            address: None,
            data_version: None,
            ..Default::default()
        }
    }

    fn name_of(e: &Entry) -> String {
        e.counterparty().expect("entry json parses").name.into()
    }

    fn name_for(dir: &Directory, phone: &str) -> Option<String> {
        let key = normalize(phone)?;
        dir.lookup_phone(key).map(|e| name_of(&e))
    }

    #[test]
    fn finds_a_record_by_any_format_of_its_phone() {
        let dir = Directory::new(render);
        dir.replace_source(
            "file",
            vec![cp("1", "Ромашка", &["+7 916 555-55-55"], None)],
            None,
            SystemTime::now(),
        );
        for q in [
            "89165555555",
            "79165555555",
            "9165555555",
            "+7 (916) 555 55 55",
        ] {
            assert_eq!(name_for(&dir, q).as_deref(), Some("Ромашка"), "{q}");
        }
        assert_eq!(name_for(&dir, "89160000000"), None);
    }

    #[test]
    fn answer_is_rendered_at_load_time() {
        let dir = Directory::new(render);
        dir.replace_source(
            "file",
            vec![cp("1", "Ромашка", &["244"], None)],
            None,
            SystemTime::now(),
        );
        let e = dir
            .lookup_phone(normalize("244").expect("ext"))
            .expect("found");
        assert_eq!(&*e.say_name, "Ромашка".as_bytes());
    }

    #[test]
    fn replacing_one_source_keeps_the_others() {
        let dir = Directory::new(render);
        dir.replace_source(
            "file",
            vec![cp("1", "A", &["89160000001"], None)],
            None,
            SystemTime::now(),
        );
        dir.replace_source(
            "push",
            vec![cp("2", "B", &["89160000002"], None)],
            None,
            SystemTime::now(),
        );
        dir.replace_source(
            "file",
            vec![cp("3", "C", &["89160000003"], None)],
            None,
            SystemTime::now(),
        );
        assert_eq!(name_for(&dir, "89160000001"), None);
        assert_eq!(name_for(&dir, "89160000002").as_deref(), Some("B"));
        assert_eq!(name_for(&dir, "89160000003").as_deref(), Some("C"));
        assert_eq!(dir.snapshot().len(), 2);
    }

    #[test]
    fn shared_phone_goes_to_the_record_with_a_manager_then_main_phone_then_lowest_id() {
        let dir = Directory::new(render);
        // No manager loses to one with a manager, whatever the ids.
        let report = dir.replace_source(
            "file",
            vec![
                cp("a", "NoManager", &["89160000001"], None),
                cp(
                    "z",
                    "WithManager",
                    &["84950000000", "89160000001"],
                    Some("244"),
                ),
            ],
            None,
            SystemTime::now(),
        );
        assert_eq!(report.ambiguous_phones, 1);
        assert_eq!(
            name_for(&dir, "89160000001").as_deref(),
            Some("WithManager")
        );
        // Both with managers: the record that lists the phone first (its main number) wins.
        dir.replace_source(
            "file",
            vec![
                cp("a", "Secondary", &["84950000000", "89160000001"], Some("1")),
                cp("z", "Main", &["89160000001"], Some("2")),
            ],
            None,
            SystemTime::now(),
        );
        assert_eq!(name_for(&dir, "89160000001").as_deref(), Some("Main"));
        // Otherwise equal: the lowest id wins, in whatever order they came.
        for order in [["b", "a"], ["a", "b"]] {
            dir.replace_source(
                "file",
                order
                    .iter()
                    .map(|id| cp(id, id, &["89160000001"], Some("1")))
                    .collect(),
                None,
                SystemTime::now(),
            );
            assert_eq!(name_for(&dir, "89160000001").as_deref(), Some("a"));
        }
    }

    #[test]
    fn lookup_by_id_and_inn() {
        let dir = Directory::new(render);
        dir.replace_source(
            "file",
            vec![cp("1", "A", &[], None), cp("2", "B", &[], None)],
            None,
            SystemTime::now(),
        );
        assert_eq!(
            dir.lookup_id("2").map(|e| name_of(&e)).as_deref(),
            Some("B")
        );
        assert!(dir.lookup_id("3").is_none());
        assert_eq!(dir.lookup_inn("771").len(), 1);
        assert!(dir.lookup_inn("000").is_empty());
    }

    #[test]
    fn same_id_in_two_sources_is_found_once_preferring_the_later_source() {
        let dir = Directory::new(render);
        dir.replace_source(
            "file",
            vec![cp("1", "Old", &["89160000001"], None)],
            None,
            SystemTime::now(),
        );
        dir.replace_source(
            "push",
            vec![cp("1", "New", &["89160000001"], None)],
            None,
            SystemTime::now(),
        );
        assert_eq!(name_for(&dir, "89160000001").as_deref(), Some("New"));
        assert_eq!(
            dir.lookup_id("1").map(|e| name_of(&e)).as_deref(),
            Some("New")
        );
        assert_eq!(dir.snapshot().len(), 1);
    }

    fn versioned(id: &str, name: &str, phone: &str, version: &str) -> Counterparty {
        Counterparty {
            data_version: Some(version.into()),
            ..cp(id, name, &[phone], None)
        }
    }

    #[test]
    fn a_refresh_keeps_the_entries_of_records_whose_change_marker_did_not_move() {
        let dir = Directory::new(render);
        dir.replace_source(
            "onec",
            vec![
                versioned("1", "A", "89160000001", "v1"),
                versioned("2", "B", "89160000002", "v1"),
            ],
            None,
            SystemTime::now(),
        );
        let before = dir.lookup_id("1").expect("1");
        let report = dir.replace_source(
            "onec",
            vec![
                versioned("1", "A", "89160000001", "v1"),
                versioned("2", "B2", "89160000002", "v2"),
            ],
            None,
            SystemTime::now(),
        );
        assert_eq!(report.unchanged, 1);
        assert!(Arc::ptr_eq(&before, &dir.lookup_id("1").expect("1")));
        assert_eq!(name_for(&dir, "89160000002").as_deref(), Some("B2"));
    }

    #[test]
    fn a_set_built_in_parts_is_the_set_replace_source_makes() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let later = at + std::time::Duration::from_secs(60);
        let first: Vec<Counterparty> = (0..50)
            .map(|i| versioned(&i.to_string(), "A", &format!("8916{i:07}"), "v1"))
            .collect();
        // 0..40 kept (every fifth renamed), 40..50 gone, 50..60 new.
        let second: Vec<Counterparty> = (0..60)
            .filter(|i| !(40..50).contains(i))
            .map(|i| match i % 5 {
                0 => versioned(&i.to_string(), "B", &format!("8916{i:07}"), "v2"),
                _ => versioned(&i.to_string(), "A", &format!("8916{i:07}"), "v1"),
            })
            .collect();
        let whole = Directory::new(render);
        let parts = Directory::new(render);
        for dir in [&whole, &parts] {
            dir.replace_source("servio", first.clone(), Some("h1".into()), at);
        }
        let kept = parts.lookup_id("1").expect("1");
        let expected = whole.replace_source("servio", second.clone(), Some("h2".into()), later);

        let mut builder = parts.build_set("servio", later);
        for chunk in second.chunks(7) {
            builder.add(chunk.to_vec());
        }
        // Dropped unfinished, a set changes nothing.
        drop(parts.build_set("servio", later));
        let set = builder.finish(Some("h2".into()));
        assert_eq!((set.len(), set.is_empty()), (50, false));
        assert_eq!(set.removes(), (10, 50));
        assert_eq!(
            parts.snapshot().source("servio").map(|s| s.records),
            Some(50)
        );
        let report = set.put();

        assert_eq!(report, expected);
        assert_eq!(report.unchanged, 32);
        assert!(
            Arc::ptr_eq(&kept, &parts.lookup_id("1").expect("1")),
            "an unchanged entry is kept"
        );
        let info = parts.snapshot().source("servio").cloned().expect("servio");
        assert_eq!(
            (info.records, info.fingerprint.as_deref()),
            (50, Some("h2"))
        );
        for i in 0..60 {
            let id = i.to_string();
            let (w, p) = (whole.lookup_id(&id), parts.lookup_id(&id));
            assert_eq!(
                w.as_ref().map(|e| name_of(e)),
                p.as_ref().map(|e| name_of(e)),
                "{id}"
            );
            assert_eq!(
                w.map(|e| e.received_at_ms()),
                p.map(|e| e.received_at_ms()),
                "{id}"
            );
            let phone = format!("8916{i:07}");
            assert_eq!(
                name_for(&whole, &phone),
                name_for(&parts, &phone),
                "{phone}"
            );
        }
    }

    #[test]
    fn only_usable_numbers_count_as_positions_in_the_shared_phone_rule() {
        let dir = Directory::new(render);
        dir.replace_source(
            "file",
            vec![
                // "b" lists the shared number first among its usable ones.
                cp("a", "A", &["89160000002", "89160000001"], None),
                cp("b", "B", &["нет", "8916300", "+7 916 000-00-01"], None),
            ],
            None,
            SystemTime::now(),
        );
        assert_eq!(name_for(&dir, "89160000001").as_deref(), Some("B"));
    }

    #[test]
    fn between_sources_the_most_recently_received_version_of_a_record_answers() {
        let dir = Directory::new(render);
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        let later = |s| t0 + std::time::Duration::from_secs(s);
        dir.replace_source(
            "onec",
            vec![versioned("1", "From1C", "89160000001", "v1")],
            None,
            t0,
        );
        // A push after that read wins...
        dir.apply_changes(
            "push",
            vec![cp("1", "Pushed", &["89160000001"], None)],
            &[],
            &[],
            later(10),
        );
        assert_eq!(name_for(&dir, "89160000001").as_deref(), Some("Pushed"));
        // ...and keeps winning over later refreshes that bring the old version,
        // since that version was received before the push.
        dir.replace_source(
            "onec",
            vec![versioned("1", "From1C", "89160000001", "v1")],
            None,
            later(20),
        );
        assert_eq!(name_for(&dir, "89160000001").as_deref(), Some("Pushed"));
        // A new version in 1C is newer than the push.
        dir.replace_source(
            "onec",
            vec![versioned("1", "Changed", "89160000001", "v2")],
            None,
            later(30),
        );
        assert_eq!(name_for(&dir, "89160000001").as_deref(), Some("Changed"));
        assert_eq!(dir.snapshot().len(), 1);
    }

    #[test]
    fn changes_upsert_into_one_source_and_deletes_hide_other_sources_copies() {
        let dir = Directory::new(render);
        dir.replace_source(
            "file",
            vec![
                cp("1", "A", &["89160000001"], None),
                cp("2", "B", &["89160000002"], None),
            ],
            None,
            SystemTime::now(),
        );
        let report = dir.apply_changes(
            "push",
            vec![
                cp("3", "C", &["89160000003"], None),
                cp("3", "C2", &["89160000033"], None),
            ],
            &[],
            &[],
            SystemTime::now(),
        );
        assert_eq!(
            report.records, 1,
            "the second record of id 3 replaced the first"
        );
        assert_eq!(name_for(&dir, "89160000033").as_deref(), Some("C2"));
        let buried = dir.tombstones_for("1", "push");
        assert_eq!(buried.len(), 1, "the file's copy of 1");
        dir.apply_changes(
            "push",
            vec![],
            &["1".into(), "3".into()],
            &buried,
            SystemTime::now(),
        );
        assert_eq!(name_for(&dir, "89160000001"), None);
        assert_eq!(name_for(&dir, "89160000033"), None);
        assert_eq!(name_for(&dir, "89160000002").as_deref(), Some("B"));
        let index = dir.snapshot();
        let counts: Vec<(String, usize)> = index
            .sources()
            .map(|s| (s.name.to_string(), s.records))
            .collect();
        assert!(
            counts.contains(&("file".into(), 2)) && counts.contains(&("push".into(), 0)),
            "the file's copy stays in its set, hidden: {counts:?}"
        );
        assert_eq!(index.len(), 1);
    }

    fn render_with_manager(c: &Counterparty) -> Box<[u8]> {
        format!("{}/{}", c.name, c.manager_phone.as_deref().unwrap_or("-"))
            .into_bytes()
            .into()
    }

    fn crm_overlay(user: &str, phones: &[&str]) -> Overlay {
        Overlay {
            managers: vec![OverlayManager {
                system: "bitrix24".into(),
                user_id: Some(user.into()),
                ..Default::default()
            }],
            links: vec![],
            phones: phones.iter().map(|p| (*p).into()).collect(),
            ..Default::default()
        }
    }

    fn crm_directory(precedence: &[&str]) -> Directory {
        let mut managers = Managers::new(precedence.iter().copied());
        for (user, ext) in [("17", "301"), ("18", "302")] {
            managers.map(
                "bitrix24",
                user,
                Manager {
                    extension: ext.into(),
                    name: format!("user {user}").into(),
                },
            );
        }
        Directory::new(render_with_manager).with_managers(managers)
    }

    fn answer(dir: &Directory, phone: &str) -> Option<String> {
        let e = dir.lookup_phone(normalize(phone)?)?;
        Some(String::from_utf8_lossy(&e.say_name).into_owned())
    }

    #[test]
    fn an_overlay_is_applied_to_the_answer_and_reapplied_when_it_changes() {
        let dir = crm_directory(&["bitrix24", "onec"]);
        dir.replace_source(
            "onec",
            vec![
                cp("1", "A", &["89160000001"], Some("244")),
                cp("2", "B", &["89160000002"], Some("245")),
            ],
            None,
            SystemTime::now(),
        );
        let untouched = dir.lookup_id("2").expect("2");
        dir.set_overlays(vec![(
            "1".into(),
            Some(crm_overlay("17", &["89160000011"])),
        )])
        .expect("valid overlay");
        assert_eq!(answer(&dir, "89160000001").as_deref(), Some("A/301"));
        assert_eq!(answer(&dir, "89160000011").as_deref(), Some("A/301"));
        assert!(
            Arc::ptr_eq(&untouched, &dir.lookup_id("2").expect("2")),
            "only the overlay's id is rebuilt"
        );
        // The JSON stays the source's: no CRM value in what is stored.
        let entry = dir.lookup_id("1").expect("1");
        assert!(!entry.json().contains("301") && !entry.json().contains("89160000011"));
        let card = entry.card().expect("card");
        assert_eq!(card.manager_source.as_deref(), Some("bitrix24"));
        assert_eq!(card.manager_name.as_deref(), Some("user 17"));
        // A new responsible user.
        dir.set_overlays(vec![("1".into(), Some(crm_overlay("18", &[])))])
            .expect("valid overlay");
        assert_eq!(answer(&dir, "89160000001").as_deref(), Some("A/302"));
        assert_eq!(answer(&dir, "89160000011"), None);
        // A refresh with the same content keeps the overlay (and the entry).
        let before = dir.lookup_id("1").expect("1");
        let report = dir.replace_source(
            "onec",
            vec![
                cp("1", "A", &["89160000001"], Some("244")),
                cp("2", "B", &["89160000002"], Some("245")),
            ],
            None,
            SystemTime::now(),
        );
        assert_eq!(report.unchanged, 2);
        assert!(Arc::ptr_eq(&before, &dir.lookup_id("1").expect("1")));
        // A changed record gets it too; a push's copy of the id as well.
        dir.apply_changes(
            "push",
            vec![cp("1", "A2", &["89160000001"], Some("244"))],
            &[],
            &[],
            SystemTime::now(),
        );
        assert_eq!(answer(&dir, "89160000001").as_deref(), Some("A2/302"));
        // Taken away: the record's own manager again.
        dir.set_overlays(vec![("1".into(), None)]).expect("removal");
        assert_eq!(answer(&dir, "89160000001").as_deref(), Some("A2/244"));
        assert!(!dir.has_overlay("1"));
    }

    #[test]
    fn the_records_own_manager_answers_when_its_source_ranks_first() {
        let dir = crm_directory(&["onec", "bitrix24"]);
        dir.replace_source(
            "onec",
            vec![cp("1", "A", &["89160000001"], Some("244"))],
            None,
            SystemTime::now(),
        );
        dir.set_overlays(vec![("1".into(), Some(crm_overlay("17", &[])))])
            .expect("valid overlay");
        assert_eq!(answer(&dir, "89160000001").as_deref(), Some("A/244"));
        // An unmapped user gives no extension: the record's own answers
        // even where the CRM ranks first, and the gauge counts the user.
        let gauge =
            prometheus::IntGaugeVec::new(prometheus::Opts::new("g", "g"), &["system"]).expect("g");
        let dir = crm_directory(&["bitrix24", "onec"]).counting_unmapped_managers(gauge.clone());
        dir.replace_source(
            "onec",
            vec![cp("1", "A", &["89160000001"], Some("244"))],
            None,
            SystemTime::now(),
        );
        dir.set_overlays(vec![("1".into(), Some(crm_overlay("99", &[])))])
            .expect("valid overlay");
        assert_eq!(answer(&dir, "89160000001").as_deref(), Some("A/244"));
        assert_eq!(gauge.with_label_values(&["bitrix24"]).get(), 1);
        dir.set_overlays(vec![("1".into(), Some(crm_overlay("17", &[])))])
            .expect("valid overlay");
        assert_eq!(gauge.with_label_values(&["bitrix24"]).get(), 0);
        assert_eq!(answer(&dir, "89160000001").as_deref(), Some("A/301"));
    }

    #[test]
    fn a_learned_mapping_routes_the_overlays_naming_its_user_and_config_wins() {
        let gauge =
            prometheus::IntGaugeVec::new(prometheus::Opts::new("g", "g"), &["system"]).expect("g");
        let dir = crm_directory(&["bitrix24", "onec"]).counting_unmapped_managers(gauge.clone());
        dir.replace_source(
            "onec",
            vec![
                cp("1", "A", &["89160000001"], Some("244")),
                cp("2", "B", &["89160000002"], Some("245")),
            ],
            None,
            SystemTime::now(),
        );
        dir.set_overlays(vec![
            ("1".into(), Some(crm_overlay("40", &[]))),
            ("2".into(), Some(crm_overlay("17", &[]))),
        ])
        .expect("valid overlays");
        assert_eq!(answer(&dir, "89160000001").as_deref(), Some("A/244"));
        assert_eq!(gauge.with_label_values(&["bitrix24"]).get(), 1);
        let learned = |ext: &str| Manager {
            extension: ext.into(),
            name: "learned".into(),
        };
        // The CRM's user list names 40 (new) and 17 (configured: 301 stays).
        let changed = dir.learn_managers(
            "bitrix24",
            vec![("40".into(), learned("401")), ("17".into(), learned("417"))],
        );
        assert_eq!(changed, 1);
        assert_eq!(answer(&dir, "89160000001").as_deref(), Some("A/401"));
        assert_eq!(answer(&dir, "89160000002").as_deref(), Some("B/301"));
        assert_eq!(gauge.with_label_values(&["bitrix24"]).get(), 0);
        // Learned again otherwise: the later one.
        dir.learn_managers("bitrix24", vec![("40".into(), learned("402"))]);
        assert_eq!(answer(&dir, "89160000001").as_deref(), Some("A/402"));
        // An overlay set later maps with what was learned.
        dir.set_overlays(vec![("2".into(), Some(crm_overlay("40", &[])))])
            .expect("valid overlay");
        assert_eq!(answer(&dir, "89160000002").as_deref(), Some("B/402"));
        // 1C's own unmapped users count under its name.
        dir.note_unmapped_users("onec", ["u1".into(), "u2".into()].into());
        assert_eq!(gauge.with_label_values(&["onec"]).get(), 2);
        dir.note_unmapped_users("onec", HashSet::new());
        assert_eq!(gauge.with_label_values(&["onec"]).get(), 0);
    }

    #[test]
    fn an_overlay_waits_for_its_record_and_a_set_built_before_it_gets_it() {
        let dir = crm_directory(&["bitrix24", "onec"]);
        dir.set_overlays(vec![("1".into(), Some(crm_overlay("17", &[])))])
            .expect("valid overlay");
        assert!(dir.has_overlay("1") && dir.lookup_id("1").is_none());
        dir.replace_source(
            "onec",
            vec![cp("1", "A", &["89160000001"], None)],
            None,
            SystemTime::now(),
        );
        assert_eq!(answer(&dir, "89160000001").as_deref(), Some("A/301"));
        // A whole set prepared before an overlay changed (a 1C read on its
        // own thread) is swapped in with the overlay as it is now.
        let set = dir.current.load().prepare_set(
            "onec",
            vec![
                cp("1", "A", &["89160000001"], None),
                cp("2", "B", &[], None),
            ],
            None,
            SystemTime::now(),
            None,
            dir.render,
            true,
        );
        dir.set_overlays(vec![("1".into(), Some(crm_overlay("18", &[])))])
            .expect("valid overlay");
        let (index, _) = dir.current.load().with_set(&set, dir.render);
        let entry = index.by_id("1").expect("1");
        assert_eq!(&*entry.say_name, b"A/302");
    }

    #[test]
    fn the_shared_phone_rule_looks_at_the_effective_manager() {
        let dir = crm_directory(&["onec", "bitrix24"]);
        dir.replace_source(
            "onec",
            vec![
                cp("a", "A", &["89160000001"], None),
                cp("b", "B", &["89160000001"], None),
            ],
            None,
            SystemTime::now(),
        );
        assert_eq!(answer(&dir, "89160000001").as_deref(), Some("A/-"));
        dir.set_overlays(vec![("b".into(), Some(crm_overlay("17", &[])))])
            .expect("valid overlay");
        assert_eq!(answer(&dir, "89160000001").as_deref(), Some("B/301"));
    }

    #[test]
    fn an_overlay_with_a_javascript_link_is_refused_naming_the_id() {
        let dir = crm_directory(&["onec"]);
        let mut overlay = crm_overlay("17", &[]);
        overlay.links.push(model::Link {
            system: "bitrix24".into(),
            kind: "company".into(),
            url: "javascript:alert(1)".into(),
        });
        let err = dir
            .set_overlays(vec![("1".into(), Some(overlay))])
            .expect_err("refused");
        assert_eq!((&*err.id, err.problem.field), ("1", "links"));
        assert!(!dir.has_overlay("1"));
    }

    #[test]
    fn an_entry_stays_within_104_bytes() {
        // 152 bytes with the record as JSON and its id, INN and change marker
        // apart; 104 with them in one compact record (`packed.rs`, one
        // pointer and a length): with its `Arc`'s counts, 120 bytes, in the
        // allocator's 128-byte size class instead of 192 (mimalloc's classes
        // go 128, 160, 192): 64 MB at a million.
        assert!(
            std::mem::size_of::<Entry>() <= 104,
            "{}",
            std::mem::size_of::<Entry>()
        );
    }

    #[test]
    fn changes_report_the_ids_added_changed_and_removed_not_a_snapshot_load() {
        let dir = Directory::new(render);
        let report = dir.replace_source_received(
            "file",
            vec![cp("1", "A", &[], None), cp("2", "B", &[], None)],
            vec![None, None],
            None,
            SystemTime::now(),
        );
        assert!(report.changes.is_empty(), "a snapshot load reports nothing");
        let report = dir.replace_source(
            "file",
            vec![
                cp("1", "A", &[], None),
                cp("2", "B2", &[], None),
                cp("3", "C", &[], None),
            ],
            None,
            SystemTime::now(),
        );
        let ids = |v: &[Box<str>]| v.iter().map(|i| i.to_string()).collect::<Vec<_>>();
        assert_eq!(ids(&report.changes.added), ["3"]);
        assert_eq!(ids(&report.changes.rebuilt), ["2"]);
        assert!(report.changes.removed.is_empty());
        // The same content again, rebuilt or pushed alike: nothing changed.
        let report = dir.apply_changes(
            "push",
            vec![cp("1", "A", &[], None)],
            &[],
            &[],
            SystemTime::now(),
        );
        assert!(report.changes.is_empty(), "{:?}", report.changes);
        // A push of other content answers now; its removal gives the file's copy back.
        let report = dir.apply_changes(
            "push",
            vec![cp("1", "A2", &[], None)],
            &[],
            &[],
            SystemTime::now(),
        );
        assert_eq!(ids(&report.changes.rebuilt), ["1"]);
        let report = dir.apply_changes("push", vec![], &["1".into()], &[], SystemTime::now());
        assert_eq!(ids(&report.changes.rebuilt), ["1"]);
        let report = dir.replace_source(
            "file",
            vec![cp("1", "A", &[], None)],
            None,
            SystemTime::now(),
        );
        let mut removed = ids(&report.changes.removed);
        removed.sort();
        assert_eq!(removed, ["2", "3"]);
        assert!(report.changes.added.is_empty() && report.changes.rebuilt.is_empty());
    }

    #[test]
    fn the_change_sink_hears_every_change_that_moved_an_answer() {
        let heard = Arc::new(Mutex::new(Vec::new()));
        let sink = {
            let heard = Arc::clone(&heard);
            Arc::new(move |r: &ReplaceReport| {
                heard.lock().expect("lock").push(r.changes.len());
            }) as ChangeSink
        };
        let dir = Directory::new(render).reporting_changes(sink);
        dir.replace_source(
            "file",
            vec![cp("1", "A", &[], None)],
            None,
            SystemTime::now(),
        );
        dir.replace_source(
            "file",
            vec![cp("1", "A", &[], None)],
            None,
            SystemTime::now(),
        );
        dir.apply_changes(
            "push",
            vec![cp("2", "B", &[], None)],
            &[],
            &[],
            SystemTime::now(),
        );
        assert_eq!(
            *heard.lock().expect("lock"),
            [1, 1],
            "an unchanged reload is not heard"
        );
    }

    #[test]
    fn an_inn_is_looked_up_with_its_kpp() {
        let dir = Directory::new(render);
        let with = |id: &str, kpp: Option<&str>| Counterparty {
            inn: Some("7707083893".into()),
            kpp: kpp.map(Into::into),
            ..cp(id, id, &[], None)
        };
        dir.replace_source(
            "file",
            vec![
                with("head", Some("773601001")),
                with("branch", Some("7736 0A 002")),
                with("none", None),
            ],
            None,
            SystemTime::now(),
        );
        let ids =
            |found: Vec<Arc<Entry>>| found.iter().map(|e| e.id().to_owned()).collect::<Vec<_>>();
        assert_eq!(
            ids(dir.lookup_inn_kpp("7707083893", Some("773601001"))),
            ["head"]
        );
        assert_eq!(
            ids(dir.lookup_inn_kpp("7707083893", Some("77360a002"))),
            ["branch"]
        );
        assert_eq!(ids(dir.lookup_inn_kpp("7707083893", None)), ["none"]);
        assert!(dir
            .lookup_inn_kpp("7707083893", Some("773601009"))
            .is_empty());
        assert_eq!(dir.lookup_inn("7707083893").len(), 3);
        assert_eq!(
            dir.lookup_id("branch").expect("branch").kpp(),
            Some("77360A002")
        );
    }

    #[test]
    fn readers_see_whole_directories_during_a_reload() {
        let dir = Arc::new(Directory::new(render));
        let set = |tag: &str| -> Vec<Counterparty> {
            (0..2000)
                .map(|i| cp(&i.to_string(), tag, &[&format!("8916{i:07}")], None))
                .collect()
        };
        dir.replace_source("file", set("A"), None, SystemTime::now());
        let reader = {
            let dir = Arc::clone(&dir);
            std::thread::spawn(move || {
                for _ in 0..200 {
                    let index = dir.snapshot();
                    let first = index
                        .by_phone(normalize("89160000000").expect("n"))
                        .map(|e| name_of(e));
                    let last = index
                        .by_phone(normalize("89160001999").expect("n"))
                        .map(|e| name_of(e));
                    assert_eq!(first, last, "a reader saw half a directory");
                }
            })
        };
        for round in 0..20 {
            dir.replace_source(
                "file",
                set(if round % 2 == 0 { "B" } else { "A" }),
                None,
                SystemTime::now(),
            );
        }
        reader.join().expect("reader thread");
    }
}
