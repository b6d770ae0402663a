//! A manager chosen when a call is answered, not when a record is loaded:
//! a source's rule for its records that have no manager of their own
//! (SERVIO's `manager_from_inn` and `default_manager_phone`).
//!
//! The rule: the manager of the one record of *another* source with the
//! same INN (and the same KPP when both records have one), so that a fuel
//! card driver's phone reaches the manager 1C names for the client; none,
//! or records naming different managers: no inherited one; then the
//! source's default, if it has one. It is looked up in the index answering
//! the call, so a manager changed in 1C is followed at once, without the
//! source's records being loaded again; nothing of it is written into the
//! entry, the record or the snapshot.
//!
//! What it costs: an entry knows when it is built whether it needs the rule
//! ([`Entry::manager_at_answer`](super::Entry::manager_at_answer): its
//! source has a rule and it has no effective manager of its own). Only those
//! entries pay, when answering, an INN lookup (a leaf of the index's INN
//! map) and an answer written from two prepared ones: the entry's name and
//! category, the other record's manager (its own answer carries it). The
//! records found are read back only when two or more name a manager, to
//! compare them. Every other entry answers with its bytes rendered at load,
//! as before.

use std::sync::Arc;

use super::entry::Entry;
use super::index::Index;
use super::EffectiveManager;

/// A source's rule for the manager of its records that have none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ManagerRule {
    /// Take the manager of another source's record with the same INN.
    pub by_inn: bool,
    /// Else this extension (or phone number).
    pub default_phone: Option<Arc<str>>,
}

impl ManagerRule {
    /// Whether the rule can give a manager at all.
    fn gives_any(&self) -> bool {
        self.by_inn || self.default_phone.is_some()
    }
}

/// The rules by source. Set when the directory is made (from the
/// configuration) and never changed after: whether an entry needs its
/// source's rule is decided when it is built.
#[derive(Debug, Clone, Default)]
pub struct ManagerRules {
    /// A handful of sources at most: a list.
    by_source: Vec<(Arc<str>, ManagerRule)>,
}

impl ManagerRules {
    /// Sets `source`'s rule (replacing one set before). A rule that gives no
    /// manager (no INN rule, no default) is not kept.
    pub fn set(&mut self, source: &str, rule: ManagerRule) {
        self.by_source.retain(|(s, _)| &**s != source);
        if rule.gives_any() {
            self.by_source.push((Arc::from(source), rule));
        }
    }

    pub(super) fn get(&self, source: &str) -> Option<&ManagerRule> {
        self.by_source
            .iter()
            .find(|(s, _)| &**s == source)
            .map(|(_, r)| r)
    }

    /// Whether `source`'s records without a manager take one at answer time.
    pub(super) fn applies_to(&self, source: &str) -> bool {
        self.get(source).is_some()
    }
}

/// Where the manager chosen at answer time comes from.
#[derive(Debug, Clone)]
pub enum ManagerAtAnswer {
    /// Another source's record with the same INN: its effective manager,
    /// the one its own answer carries (so a SayName answer takes the
    /// manager's part of that record's prepared answer as it is).
    Record(Arc<Entry>),
    /// The source's default extension.
    Default(Arc<str>),
}

impl Index {
    /// Where the manager of a call from `entry` comes from when the entry
    /// has none of its own (see the module's doc); `None` for any other
    /// entry, or when the rule gives none now. Costs an INN lookup; the
    /// records found are read back only when two or more of them name a
    /// manager (to tell whether it is the same one).
    pub fn manager_source_at_answer(&self, entry: &Entry) -> Option<ManagerAtAnswer> {
        if !entry.manager_at_answer() {
            return None;
        }
        let rule = self.manager_rules().get(&entry.source)?;
        if rule.by_inn {
            if let Some(record) = self.record_by_inn(entry) {
                return Some(ManagerAtAnswer::Record(Arc::clone(record)));
            }
        }
        rule.default_phone.clone().map(ManagerAtAnswer::Default)
    }

    /// [`Index::manager_source_at_answer`] as the manager itself (what the
    /// operator's card shows): the record's effective manager (extension,
    /// name, the system that named it), or the default's extension.
    pub fn manager_at_answer(&self, entry: &Entry) -> Option<EffectiveManager> {
        match self.manager_source_at_answer(entry)? {
            ManagerAtAnswer::Record(record) => record.manager(),
            ManagerAtAnswer::Default(phone) => Some(EffectiveManager {
                extension: Some((*phone).into()),
                name: None,
                source: (*entry.source).into(),
            }),
        }
    }

    /// The record of another source with `entry`'s INN (and KPP, where both
    /// have one) whose manager is the one such records name; `None` when
    /// none names a manager or two name different ones (by extension).
    fn record_by_inn(&self, entry: &Entry) -> Option<&Arc<Entry>> {
        let inn = entry.inn()?;
        let mut named = self.answering_with_inn(inn).filter(|other| {
            // `has_manager`: an effective extension, its own or a CRM's;
            // an entry that itself inherits has none and does not count.
            other.source != entry.source
                && other.has_manager
                && match (entry.kpp.as_ref(), other.kpp.as_ref()) {
                    (Some(a), Some(b)) => a == b,
                    _ => true,
                }
        });
        let first = named.next()?;
        // Usually one: nothing read back. More: the same extension, or none.
        let mut extension = None;
        for other in named {
            let first_extension = extension.get_or_insert_with(|| extension_of(first));
            if extension_of(other) != *first_extension {
                return None;
            }
        }
        Some(first)
    }
}

fn extension_of(entry: &Entry) -> Option<Box<str>> {
    entry.manager().and_then(|m| m.extension)
}

#[cfg(test)]
mod tests;
