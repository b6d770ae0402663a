//! One counterparty as the directory serves it ([`Entry`]), and what a
//! record is turned into first ([`Prepared`]): cleaned, written as canonical
//! JSON and hashed, so that whether it changed is known before anything is
//! rendered.

use std::sync::Arc;
use std::time::SystemTime;

use super::inherited::ManagerRules;
use super::overlay::{self, Applied};
use super::packed::Packed;
use super::{Counterparty, Renderer};
use crate::phone::{self, PhoneKey};

/// One counterparty as the directory serves it.
///
/// Compact on purpose: a million of these stay in memory. The record itself
/// is kept in one allocation in a compact form ([`Packed`]: its id, INN and
/// change marker first, read in place; the rest tagged; a name the answer
/// holds as it is, not again), and only what lookups and the ambiguity rule
/// need is kept beside it. The full [`Counterparty`] and its canonical JSON
/// are made again on the rare paths that need them (an IncomingCall's
/// pop-up, the API, a snapshot save, the sync feed).
#[derive(Debug)]
pub struct Entry {
    /// The SayName answer payload, rendered once at load time.
    pub say_name: Box<[u8]>,
    /// The record (as the source gave it, without the overlay), its id, INN
    /// and change marker included.
    record: Packed,
    /// The KPP, normalized ([`normalize_kpp`]); `None` when absent or not
    /// nine letters and digits. Nine bytes in place, no allocation: a
    /// million entries stay in memory.
    pub(super) kpp: Option<Kpp>,
    /// The source this record came from (`file`, `onec`, `push`...).
    pub source: Arc<str>,
    /// The record's phones, normalized, without repeats, in the order written.
    pub(super) phones: Box<[PhoneKey]>,
    /// Whether the record has an effective manager's extension when built
    /// (its own or a CRM overlay's): what the shared-phone rule
    /// ([`Entry::wins_phone_over`]) ranks by. A manager chosen at answer
    /// time ([`Entry::manager_at_answer`]) does not count: it depends on
    /// other records, and which record a phone answers with must depend on
    /// the records that list the phone only (so that an index built change
    /// by change and one built in one pass agree).
    pub(super) has_manager: bool,
    /// Set when built: the record has no effective manager and its source
    /// has a rule that chooses one when a call is answered (see
    /// [`inherited`](super::inherited)). Only such entries pay for it.
    manager_at_answer: bool,
    /// A hash of the record's content (its canonical JSON without the change
    /// marker, after cleaning): a record whose content did not change keeps
    /// its receive time, whatever else changed in its source.
    pub(super) content: u64,
    /// When the gateway received this content of the record (unix ms): when
    /// the content last changed in this source. When two sources hold the
    /// same id, the newer content answers.
    pub(super) stamp: u64,
    /// What CRMs add to the record (see [`overlay`]), applied to `say_name`,
    /// `phones` and `has_manager`, never to `record`. One pointer: a record
    /// without an overlay grows by no more.
    pub(super) overlay: Option<Arc<Applied>>,
}

/// A record made ready for an entry: cleaned and its content hashed (of its
/// canonical JSON without the change marker). Enough to tell whether it
/// changed, before anything is rendered.
pub(super) struct Prepared {
    counterparty: Counterparty,
    pub(super) data_version: Option<Box<str>>,
    pub(super) content: u64,
}

impl Prepared {
    pub(super) fn new(mut counterparty: Counterparty) -> Prepared {
        // Every source's records pass here: what reaches a phone's display,
        // a card or the snapshot is clean whichever source sent it.
        counterparty.clean_display_fields();
        let data_version = counterparty.data_version.take();
        // The hash of the canonical JSON, hashed as it is written: the
        // string itself is not kept (the entry packs the record), so it is
        // never allocated (a million of them at a start from the snapshot).
        // Serializing a struct of strings and numbers cannot fail.
        let mut hasher = ContentHasher(FNV_OFFSET);
        let _ = serde_json::to_writer(&mut hasher, &counterparty);
        let content = hasher.0;
        Prepared {
            counterparty,
            data_version,
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
    fnv(FNV_OFFSET, bytes)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv(start: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(start, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// [`content_hash`] of what is written to it, in any number of writes.
struct ContentHasher(u64);

impl std::io::Write for ContentHasher {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 = fnv(self.0, bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Entry {
    pub(super) fn new(
        prepared: Prepared,
        source: &Arc<str>,
        stamp: u64,
        render: Renderer,
        overlay: Option<&Arc<Applied>>,
        rules: &ManagerRules,
    ) -> (Entry, usize) {
        let Prepared {
            mut counterparty,
            data_version,
            content,
        } = prepared;
        counterparty.data_version = data_version;
        Entry::assemble(
            counterparty,
            content,
            source,
            stamp,
            render,
            overlay.cloned(),
            rules,
        )
    }

    /// This entry with `overlay` in place of its own: the same record
    /// (content, receive time), rendered again. `None` if the record no
    /// longer reads back, which only a bug could cause.
    pub(super) fn with_overlay(
        &self,
        overlay: Option<Arc<Applied>>,
        render: Renderer,
        rules: &ManagerRules,
    ) -> Option<Entry> {
        // Packed again with the new answer: the name may be kept as a part
        // of the answer, which is rendered again.
        let counterparty = self.counterparty().ok()?;
        let (entry, _) = Entry::assemble(
            counterparty,
            self.content,
            &self.source,
            self.stamp,
            render,
            overlay,
            rules,
        );
        Some(entry)
    }

    /// The entry of `counterparty` (with its change marker), with the
    /// overlay applied to what is rendered and indexed: its effective
    /// manager, its numbers after the record's own.
    fn assemble(
        counterparty: Counterparty,
        content: u64,
        source: &Arc<str>,
        stamp: u64,
        render: Renderer,
        overlay: Option<Arc<Applied>>,
        rules: &ManagerRules,
    ) -> (Entry, usize) {
        let mut phones = Vec::with_capacity(counterparty.phones.len());
        let mut unusable = 0;
        for raw in &counterparty.phones {
            match phone::normalize(raw) {
                Some(key) if !phones.contains(&key) => phones.push(key),
                Some(_) => {}
                None => unusable += 1,
            }
        }
        // What is rendered and routed is the record with the overlay; what
        // is kept is the record as its source gave it.
        let shown = overlay.as_ref().map(|overlay| {
            // A CRM's number that is no number is its problem, not the
            // source's: not counted as the source's unusable phones.
            for key in overlay.phones.iter().filter_map(|p| phone::normalize(p)) {
                if !phones.contains(&key) {
                    phones.push(key);
                }
            }
            let mut shown = counterparty.clone();
            overlay::apply(&mut shown, source, Some(overlay));
            shown
        });
        let shown = shown.as_ref().unwrap_or(&counterparty);
        let say_name = render(shown);
        let has_manager = shown
            .manager_phone
            .as_deref()
            .is_some_and(|m| !m.trim().is_empty());
        let entry = Entry {
            record: Packed::new(&counterparty, &say_name),
            say_name,
            has_manager,
            manager_at_answer: !has_manager && rules.applies_to(source),
            kpp: counterparty.kpp.as_deref().and_then(normalize_kpp),
            source: Arc::clone(source),
            phones: phones.into_boxed_slice(),
            content,
            stamp,
            overlay,
        };
        (entry, unusable)
    }

    /// An entry outside any index (a live lookup's result), stamped now,
    /// with the overlay its id has in the directory.
    pub(super) fn detached(
        counterparty: Counterparty,
        source: &str,
        render: Renderer,
        overlay: Option<&Arc<Applied>>,
        rules: &ManagerRules,
    ) -> Entry {
        let source: Arc<str> = Arc::from(source);
        Entry::new(
            Prepared::new(counterparty),
            &source,
            unix_ms(SystemTime::now()),
            render,
            overlay,
            rules,
        )
        .0
    }

    pub fn id(&self) -> &str {
        self.record.id()
    }

    /// The INN, `None` when absent or empty.
    pub fn inn(&self) -> Option<&str> {
        self.record.inn().filter(|i| !i.is_empty())
    }

    /// The KPP as [`normalize_kpp`] writes it.
    pub fn kpp(&self) -> Option<&str> {
        self.kpp.as_ref().map(Kpp::as_str)
    }

    /// The record as canonical JSON, the shape of the contract: what the
    /// snapshot stores, written again from the entry's compact form (the
    /// bytes serde_json writes for [`Entry::counterparty`]). Empty if the
    /// record does not read back, which only a bug could cause.
    pub fn json(&self) -> String {
        let mut buf = Vec::new();
        match self.write_json(&mut buf) {
            Ok(()) => String::from_utf8(buf).unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Appends [`Entry::json`] to `buf`.
    pub fn write_json(&self, buf: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        self.record
            .write_json(&self.say_name, buf)
            .map_err(<serde_json::Error as serde::de::Error>::custom)
    }

    /// The full record, read back from the entry's compact form: the
    /// source's, without what a CRM's overlay adds.
    pub fn counterparty(&self) -> Result<Counterparty, serde_json::Error> {
        self.record
            .unpack(&self.say_name)
            .map_err(<serde_json::Error as serde::de::Error>::custom)
    }

    /// The record as the operator's card shows it: the effective manager
    /// (`manager_phone`, `manager_name`, `manager_source`: its own, named by
    /// its source, or a CRM's, by `[sync] manager_precedence`), the
    /// overlay's links and numbers after the record's own.
    pub fn card(&self) -> Result<Counterparty, serde_json::Error> {
        let mut record = self.counterparty()?;
        overlay::apply(&mut record, &self.source, self.overlay.as_deref());
        Ok(record)
    }

    /// The manager calls for this record are routed to (see [`Entry::card`]),
    /// as built: a manager chosen at answer time is not here (see
    /// [`Entry::manager_at_answer`], [`Index::manager_at_answer`](super::Index::manager_at_answer)).
    pub fn manager(&self) -> Option<overlay::EffectiveManager> {
        let record = self.counterparty().ok()?;
        overlay::effective_manager(&record, &self.source, self.overlay.as_deref())
    }

    /// Whether this record's manager is chosen when a call is answered
    /// (it has none of its own and its source has a rule for that; see
    /// [`Index::manager_at_answer`](super::Index::manager_at_answer)). False
    /// for every other entry, whose answer is [`Entry::say_name`] as it is.
    #[inline]
    pub fn manager_at_answer(&self) -> bool {
        self.manager_at_answer
    }

    /// Whether a CRM's overlay is applied to this entry.
    pub fn has_overlay(&self) -> bool {
        self.overlay.is_some()
    }

    /// The same overlay (one `Arc`) as `other`, or both none.
    pub(super) fn same_overlay(&self, other: Option<&Arc<Applied>>) -> bool {
        match (&self.overlay, other) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }

    pub fn phones(&self) -> &[PhoneKey] {
        &self.phones
    }

    /// When the gateway received this version of the record (unix ms).
    pub fn received_at_ms(&self) -> u64 {
        self.stamp
    }

    pub fn data_version(&self) -> Option<&str> {
        self.record.data_version()
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
    /// answer is the one that (1) has a responsible manager's extension (its
    /// effective manager's: a CRM's overlay may give one; not one chosen at
    /// answer time, by INN or a source's default: see `has_manager`), so the
    /// PBX can route the call; then (2) lists that phone earlier among its own
    /// phones (a client's main number beats a shared office line listed
    /// later); then (3) has the lowest id in byte order, so the choice never
    /// depends on load order.
    pub fn wins_phone_over(&self, other: &Entry, phone: PhoneKey) -> bool {
        let rank = |e: &Entry| (!e.has_manager, e.position_of(phone));
        (rank(self), self.id()) < (rank(other), other.id())
    }
}

/// A KPP in nine bytes: four digits, two digits or capital Latin letters,
/// three digits (the tax service's form; only its characters are checked
/// here, `requisites::check` checks the form).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Kpp([u8; 9]);

impl Kpp {
    fn as_str(&self) -> &str {
        // Only ASCII letters and digits are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// A written KPP as entries keep it: spaces and dashes dropped, letters
/// capitalized; `None` unless nine ASCII letters and digits remain.
pub(super) fn normalize_kpp(text: &str) -> Option<Kpp> {
    let mut kpp = [0u8; 9];
    let mut n = 0;
    for b in text.bytes().filter(|b| !matches!(b, b' ' | b'-' | b'\t')) {
        if !b.is_ascii_alphanumeric() || n == kpp.len() {
            return None;
        }
        kpp[n] = b.to_ascii_uppercase();
        n += 1;
    }
    (n == kpp.len()).then_some(Kpp(kpp))
}

/// Unix milliseconds of `t` (0 before the epoch).
pub(super) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests;
