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
//! map), the read of the other record's manager and a render of the answer
//! with it; every other entry answers with its bytes rendered at load, as
//! before.

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
    pub default_phone: Option<Box<str>>,
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

impl Index {
    /// The manager a call from `entry` goes to when the entry has none of
    /// its own (see the module's doc); `None` for any other entry, or when
    /// the rule gives none now. Costs an INN lookup and, per record of
    /// another source under that INN with a manager, a read of it.
    pub fn manager_at_answer(&self, entry: &Entry) -> Option<EffectiveManager> {
        if !entry.manager_at_answer() {
            return None;
        }
        let rule = self.manager_rules().get(&entry.source)?;
        if rule.by_inn {
            if let Some(manager) = self.manager_by_inn(entry) {
                return Some(manager);
            }
        }
        rule.default_phone.as_ref().map(|phone| EffectiveManager {
            extension: Some(phone.clone()),
            name: None,
            source: (*entry.source).into(),
        })
    }

    /// The one manager (by extension) the other sources' answering records
    /// with `entry`'s INN (and KPP, where both have one) name; `None` when
    /// none does or two name different ones.
    fn manager_by_inn(&self, entry: &Entry) -> Option<EffectiveManager> {
        let inn = entry.inn()?;
        let mut found: Option<EffectiveManager> = None;
        for other in self.answering_with_inn(inn) {
            // `has_manager`: an effective extension, its own or a CRM's;
            // an entry that itself inherits has none and does not count.
            if other.source == entry.source || !other.has_manager {
                continue;
            }
            if let (Some(a), Some(b)) = (entry.kpp.as_ref(), other.kpp.as_ref()) {
                if a != b {
                    continue;
                }
            }
            let Some(manager) = other.manager().filter(|m| m.extension.is_some()) else {
                continue;
            };
            match &found {
                None => found = Some(manager),
                Some(kept) if kept.extension == manager.extension => {}
                Some(_) => return None,
            }
        }
        found
    }
}

#[cfg(test)]
mod tests;
