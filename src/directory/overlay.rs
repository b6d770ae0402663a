//! What CRM systems add to a record they share with 1C (or another
//! source): their responsible managers, their pages and the numbers they
//! know. An [`Overlay`] lives beside the record's own copy, keyed by its
//! id: the record's JSON (what the snapshot stores, what 1C sent) stays the
//! source's, and the overlay is applied when the entry is built, before the
//! SayName answer is rendered.
//!
//! Which manager a call goes to: of the record's own manager (its
//! `manager_source`, else the source it came from) and the overlay's, the
//! first by `[sync] manager_precedence` that has an extension
//! ([`effective_manager`]). A CRM names its responsible *user*; the
//! directory maps the user to an extension through `[[manager]]`
//! ([`Managers`]) when the overlay is set, not at render: every render of
//! the record (its source changing, a refresh) then reads what the overlay
//! already holds, and the mapping's one owner, the overlay's setter, is the
//! one to count and log a user without mapping. `[[manager]]` is read at
//! start, when the overlays are loaded and set again, so a changed mapping
//! takes effect with the restart that reads it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::model::{
    is_manager_phone, is_system_name, FieldError, Link, MAX_EMAILS, MAX_LINKS, MAX_PHONES,
};
use super::Counterparty;

/// What a CRM adds to one record. Stored as JSON in the sync store
/// (`overlay` table) as it was set, CRM user ids unmapped, so that a start
/// maps them with the `[[manager]]` of that start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Overlay {
    /// The record's responsible managers in the CRMs, one per system as a rule.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub managers: Vec<OverlayManager>,
    /// The record's pages there (built from `link_templates`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
    /// Numbers the CRMs know that the record lacks: indexed after its own.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phones: Vec<Box<str>>,
    /// E-mails the CRMs know that the record lacks (lowercased): shown on
    /// the card after its own.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub emails: Vec<Box<str>>,
    /// Which system told which of `phones` and `emails`: the inbound path
    /// (`sync::inbound`) keeps each system's current set here, so a number
    /// a CRM removed leaves while another CRM's stays; `phones` and
    /// `emails` are their union. The directory applies only the union.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub told: Vec<Told>,
}

/// The numbers and e-mails one system told of a record (beyond its own).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Told {
    pub system: Box<str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub phones: Vec<Box<str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub emails: Vec<Box<str>>,
}

/// A record's manager as a CRM names it: by extension, or by the CRM's user
/// id, which [`Managers`] maps to an extension and a name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayManager {
    pub system: Box<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<Box<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension: Option<Box<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Box<str>>,
}

impl Overlay {
    /// The model's bounds: system names, `http(s)://` links (at most
    /// [`MAX_LINKS`]), at most [`MAX_PHONES`] numbers.
    pub fn validate(&self) -> Result<(), FieldError> {
        let bad = |field, problem: String| Err(FieldError { field, problem });
        for m in &self.managers {
            if !is_system_name(&m.system) {
                return bad("managers", format!("{:?} is not a system name", m.system));
            }
        }
        if self.links.len() > MAX_LINKS {
            return bad("links", format!("more than {MAX_LINKS} links"));
        }
        for (i, link) in self.links.iter().enumerate() {
            if let Err(problem) = link.check() {
                return bad("links", format!("link {i}: {problem}"));
            }
        }
        if self.phones.len() > MAX_PHONES {
            return bad("phones", format!("more than {MAX_PHONES} numbers"));
        }
        if self.emails.len() > MAX_EMAILS {
            return bad("emails", format!("more than {MAX_EMAILS} addresses"));
        }
        if self.told.len() > MAX_LINKS {
            return bad("told", format!("more than {MAX_LINKS} systems"));
        }
        for told in &self.told {
            if !is_system_name(&told.system) {
                return bad("told", format!("{:?} is not a system name", told.system));
            }
            if told.phones.len() > MAX_PHONES || told.emails.len() > MAX_EMAILS {
                return bad(
                    "told",
                    format!("{}: too many numbers or e-mails", told.system),
                );
            }
        }
        Ok(())
    }
}

/// One person calls are routed to (a `[[manager]]` block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manager {
    pub extension: Box<str>,
    pub name: Box<str>,
}

/// `[sync] manager_precedence` and `[[manager]]`'s user ids, as the
/// directory uses them, and the mappings modules learned (a CRM's user
/// list): a configured mapping always wins over a learned one; a learned
/// one is replaced by a later learned one.
#[derive(Debug, Clone)]
pub struct Managers {
    precedence: Arc<[Box<str>]>,
    by_user: HashMap<(Box<str>, Box<str>), Manager>,
    learned: HashMap<(Box<str>, Box<str>), Manager>,
}

/// `manager_precedence`'s default: a manager 1C pushed ranks with 1C's.
pub const DEFAULT_PRECEDENCE: &[&str] = &["onec", "push", "file", "bitrix24", "amocrm", "bpium"];

impl Default for Managers {
    fn default() -> Self {
        Managers::new(DEFAULT_PRECEDENCE.iter().copied())
    }
}

impl Managers {
    pub fn new<S: AsRef<str>>(precedence: impl IntoIterator<Item = S>) -> Managers {
        Managers {
            precedence: precedence.into_iter().map(|s| s.as_ref().into()).collect(),
            by_user: HashMap::new(),
            learned: HashMap::new(),
        }
    }

    /// `user_id` of `system` stands for `manager` (a `[[manager]]` block).
    pub fn map(&mut self, system: &str, user_id: &str, manager: Manager) {
        self.by_user
            .insert((system.into(), user_id.trim().into()), manager);
    }

    /// A mapping a module learned: `user_id` of `system` stands for
    /// `manager`, unless `[[manager]]` maps that user (config wins); it
    /// replaces what was learned of the user before. Gives whether the
    /// mapping in force changed.
    pub fn learn(&mut self, system: &str, user_id: &str, manager: Manager) -> bool {
        let key: (Box<str>, Box<str>) = (system.into(), user_id.trim().into());
        if key.1.is_empty() || self.by_user.contains_key(&key) {
            return false;
        }
        self.learned.insert(key, manager.clone()) != Some(manager)
    }

    /// The manager `user_id` of `system` stands for, if mapped: by
    /// `[[manager]]`, else as learned.
    pub fn lookup(&self, system: &str, user_id: &str) -> Option<&Manager> {
        // A borrowed tuple key needs owned parts: the maps are small and
        // this runs when an overlay is set, never on the ring path.
        let key = (system.into(), user_id.trim().into());
        self.by_user.get(&key).or_else(|| self.learned.get(&key))
    }

    /// The overlay made ready for entries: users mapped to extensions.
    pub(super) fn apply(&self, id: &str, overlay: Overlay) -> Applied {
        let mut unmapped = Vec::new();
        let managers = overlay
            .managers
            .into_iter()
            .map(|m| {
                let named = m.name.is_some();
                let by_user = m.extension.is_none();
                let mapped = m
                    .user_id
                    .as_deref()
                    .filter(|_| m.extension.is_none())
                    .map(|user| (user, self.lookup(&m.system, user)));
                let (extension, name) = match mapped {
                    Some((_, Some(found))) => (
                        Some(found.extension.clone()),
                        m.name.or_else(|| Some(found.name.clone())),
                    ),
                    Some((user, None)) => {
                        unmapped.push((m.system.clone(), user.into()));
                        (None, m.name)
                    }
                    None => (m.extension, m.name),
                };
                Candidate {
                    user_id: m.user_id.filter(|_| by_user),
                    system: m.system,
                    extension: extension.filter(|e| is_manager_phone(e)),
                    name,
                    named,
                }
            })
            .collect();
        Applied {
            id: id.into(),
            managers,
            links: overlay.links.into(),
            phones: overlay.phones.into(),
            emails: overlay.emails.into(),
            precedence: Arc::clone(&self.precedence),
            unmapped: unmapped.into(),
        }
    }

    /// `applied` with its CRM users mapped again by these mappings (after
    /// a module learned some); `None` when nothing of it changes.
    pub(super) fn reapply(&self, applied: &Applied) -> Option<Applied> {
        let mut unmapped = Vec::new();
        let mut changed = false;
        let managers = applied
            .managers
            .iter()
            .map(|c| {
                let Some(user) = c.user_id.as_deref() else {
                    return c.clone();
                };
                let (extension, name) = match self.lookup(&c.system, user) {
                    Some(found) => (
                        Some(found.extension.clone()).filter(|e| is_manager_phone(e)),
                        if c.named {
                            c.name.clone()
                        } else {
                            Some(found.name.clone())
                        },
                    ),
                    None => {
                        unmapped.push((c.system.clone(), user.into()));
                        (None, c.name.clone().filter(|_| c.named))
                    }
                };
                changed |= extension != c.extension || name != c.name;
                Candidate {
                    extension,
                    name,
                    ..c.clone()
                }
            })
            .collect();
        changed.then(|| Applied {
            id: applied.id.clone(),
            managers,
            links: applied.links.clone(),
            phones: applied.phones.clone(),
            emails: applied.emails.clone(),
            precedence: Arc::clone(&applied.precedence),
            unmapped: unmapped.into(),
        })
    }
}

/// A manager candidate: who, from which system, the extension if known.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Candidate {
    system: Box<str>,
    /// The CRM's user, when the extension is looked up by it.
    user_id: Option<Box<str>>,
    extension: Option<Box<str>>,
    name: Option<Box<str>>,
    /// Whether the CRM gave the name itself (a mapping's name does not
    /// override it).
    named: bool,
}

/// An overlay as entries hold it (one `Arc` shared by the copies of its
/// id): managers mapped, with the precedence it was set under.
#[derive(Debug)]
pub(super) struct Applied {
    pub(super) id: Box<str>,
    managers: Box<[Candidate]>,
    links: Box<[Link]>,
    pub(super) phones: Box<[Box<str>]>,
    emails: Box<[Box<str>]>,
    precedence: Arc<[Box<str>]>,
    /// (system, user id) of the managers no `[[manager]]` maps.
    pub(super) unmapped: Box<[(Box<str>, Box<str>)]>,
}

impl Applied {
    /// Whether a manager of `system` is one of `users` by user id.
    pub(super) fn names_user_of(&self, system: &str, users: &HashSet<Box<str>>) -> bool {
        self.managers
            .iter()
            .any(|c| *c.system == *system && c.user_id.as_ref().is_some_and(|u| users.contains(u)))
    }

    fn rank(&self, system: &str) -> usize {
        self.precedence
            .iter()
            .position(|s| **s == *system)
            .unwrap_or(self.precedence.len())
    }
}

/// The manager a record's calls go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveManager {
    pub extension: Option<Box<str>>,
    pub name: Option<Box<str>>,
    /// The system that named them.
    pub source: Box<str>,
}

/// The record's own manager (named by its `manager_source`, else by
/// `source`, the set it came from) and the overlay's, the first by
/// precedence with an extension; none with one: the record's own, as it is.
pub(super) fn effective_manager(
    record: &Counterparty,
    source: &str,
    overlay: Option<&Applied>,
) -> Option<EffectiveManager> {
    let own_extension = record
        .manager_phone
        .as_deref()
        .filter(|m| !m.trim().is_empty());
    let own =
        (own_extension.is_some() || record.manager_name.is_some()).then(|| EffectiveManager {
            extension: own_extension.map(Into::into),
            name: record.manager_name.clone(),
            source: record
                .manager_source
                .clone()
                .unwrap_or_else(|| source.into()),
        });
    let Some(overlay) = overlay else {
        return own;
    };
    let own_rank = own.as_ref().map_or(usize::MAX, |o| overlay.rank(&o.source));
    let best = overlay
        .managers
        .iter()
        .filter(|c| c.extension.is_some())
        .map(|c| (overlay.rank(&c.system), c))
        // The first of equal rank: the overlay's order.
        .fold(
            None,
            |best: Option<(usize, &Candidate)>, (rank, c)| match best {
                Some((r, _)) if r <= rank => best,
                _ => Some((rank, c)),
            },
        );
    match best {
        // The record's own wins a tie: the source is the record's owner.
        Some((rank, c)) if own_extension.is_none() || rank < own_rank => Some(EffectiveManager {
            extension: c.extension.clone(),
            name: c.name.clone(),
            source: c.system.clone(),
        }),
        _ => own,
    }
}

/// `record` as the card and the SayName answer show it: the effective
/// manager in `manager_phone`, `manager_name` and `manager_source`, the
/// overlay's links after the record's own, its numbers after the record's.
pub(super) fn apply(record: &mut Counterparty, source: &str, overlay: Option<&Applied>) {
    if let Some(manager) = effective_manager(record, source, overlay) {
        record.manager_phone = manager.extension;
        record.manager_name = manager.name;
        record.manager_source = Some(manager.source);
    }
    if let Some(overlay) = overlay {
        if !overlay.links.is_empty() {
            let mut links = std::mem::take(&mut record.links).into_vec();
            links.extend(overlay.links.iter().cloned());
            record.links = links.into();
        }
        record.phones.extend(overlay.phones.iter().cloned());
        // The CRMs' e-mails after the record's own, none twice.
        for email in overlay.emails.iter() {
            let known = record
                .emails
                .iter()
                .any(|own| own.trim().eq_ignore_ascii_case(email.trim()));
            if !known {
                record.emails.push(email.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(manager: Option<&str>) -> Counterparty {
        Counterparty {
            id: "1".into(),
            name: "Ромашка".into(),
            manager_phone: manager.map(Into::into),
            manager_name: manager.map(|_| "Иванова".into()),
            ..Default::default()
        }
    }

    fn crm(system: &str, user: &str) -> OverlayManager {
        OverlayManager {
            system: system.into(),
            user_id: Some(user.into()),
            ..Default::default()
        }
    }

    fn managers(precedence: &[&str]) -> Managers {
        let mut m = Managers::new(precedence.iter().copied());
        m.map(
            "bitrix24",
            "17",
            Manager {
                extension: "301".into(),
                name: "Смирнова".into(),
            },
        );
        m.map(
            "amocrm",
            "5",
            Manager {
                extension: "302".into(),
                name: "Петров".into(),
            },
        );
        m
    }

    fn effective(
        precedence: &[&str],
        own: Option<&str>,
        source: &str,
        crms: &[OverlayManager],
    ) -> Option<(Option<String>, String)> {
        let applied = managers(precedence).apply(
            "1",
            Overlay {
                managers: crms.to_vec(),
                ..Default::default()
            },
        );
        effective_manager(&record(own), source, Some(&applied))
            .map(|m| (m.extension.map(Into::into), m.source.into()))
    }

    fn answer(ext: &str, source: &str) -> Option<(Option<String>, String)> {
        Some((Some(ext.into()), source.into()))
    }

    #[test]
    fn precedence_picks_the_first_listed_manager_with_an_extension() {
        let b24 = [crm("bitrix24", "17")];
        // The default: 1C's own manager before a CRM's.
        assert_eq!(
            effective(DEFAULT_PRECEDENCE, Some("244"), "onec", &b24),
            answer("244", "onec")
        );
        // The CRM listed first wins.
        assert_eq!(
            effective(&["bitrix24", "onec"], Some("244"), "onec", &b24),
            answer("301", "bitrix24")
        );
        // Without an own manager, the CRM's answers whatever the order.
        assert_eq!(
            effective(DEFAULT_PRECEDENCE, None, "onec", &b24),
            answer("301", "bitrix24")
        );
        // Two CRMs: the one listed first.
        let both = [crm("amocrm", "5"), crm("bitrix24", "17")];
        assert_eq!(
            effective(DEFAULT_PRECEDENCE, None, "onec", &both),
            answer("301", "bitrix24")
        );
        // An unlisted system ranks after every listed one, the record's own
        // included: here `file` is unlisted, so bitrix24 wins.
        assert_eq!(
            effective(&["onec", "bitrix24"], Some("244"), "file", &b24),
            answer("301", "bitrix24")
        );
        // A record's manager_source names its manager's system, not its source.
        let mut pushed = record(Some("244"));
        pushed.manager_source = Some("bitrix24".into());
        let applied = managers(&["amocrm", "bitrix24"]).apply(
            "1",
            Overlay {
                managers: vec![crm("amocrm", "5")],
                ..Default::default()
            },
        );
        let m = effective_manager(&pushed, "push", Some(&applied)).expect("a manager");
        assert_eq!(
            (&*m.source, m.extension.as_deref()),
            ("amocrm", Some("302"))
        );
    }

    #[test]
    fn an_unmapped_user_gives_no_extension_and_the_next_candidate_answers() {
        let crms = [crm("bitrix24", "999"), crm("amocrm", "5")];
        assert_eq!(
            effective(&["bitrix24", "amocrm", "onec"], Some("244"), "onec", &crms),
            answer("302", "amocrm")
        );
        let applied = managers(DEFAULT_PRECEDENCE).apply(
            "1",
            Overlay {
                managers: crms.to_vec(),
                ..Default::default()
            },
        );
        assert_eq!(&*applied.unmapped, &[("bitrix24".into(), "999".into())][..]);
        // Nobody with an extension: the record's own, as it is.
        assert_eq!(
            effective(&["bitrix24"], None, "onec", &[crm("bitrix24", "999")]),
            None
        );
    }

    #[test]
    fn config_wins_over_a_learned_mapping_and_a_later_learned_one_replaces_it() {
        let mut m = managers(DEFAULT_PRECEDENCE);
        let learned = |ext: &str| Manager {
            extension: ext.into(),
            name: format!("learned {ext}").into(),
        };
        // User 17 is configured (301): learning it changes nothing.
        assert!(!m.learn("bitrix24", "17", learned("401")));
        assert_eq!(&*m.lookup("bitrix24", "17").expect("17").extension, "301");
        // A new user is learned, then learned again otherwise.
        let applied = m.apply(
            "1",
            Overlay {
                managers: vec![crm("bitrix24", "40")],
                ..Default::default()
            },
        );
        assert_eq!(applied.unmapped.len(), 1);
        assert!(m.reapply(&applied).is_none(), "nothing learned yet");
        assert!(m.learn("bitrix24", "40", learned("402")));
        assert!(!m.learn("bitrix24", "40", learned("402")), "the same again");
        let again = m.reapply(&applied).expect("mapped now");
        assert!(again.unmapped.is_empty());
        let found = effective_manager(&record(None), "onec", Some(&again)).expect("one");
        assert_eq!(found.extension.as_deref(), Some("402"));
        assert!(m.learn("bitrix24", "40", learned("403")));
        let later = m.reapply(&again).expect("changed");
        let found = effective_manager(&record(None), "onec", Some(&later)).expect("one");
        assert_eq!(
            (found.extension.as_deref(), found.name.as_deref()),
            (Some("403"), Some("learned 403"))
        );
    }

    #[test]
    fn apply_puts_the_overlay_after_the_records_own_links_and_numbers() {
        let mut r = record(None);
        r.phones = vec!["+7 916 000-00-01".into()];
        let applied = managers(DEFAULT_PRECEDENCE).apply(
            "1",
            Overlay {
                managers: vec![crm("bitrix24", "17")],
                links: vec![Link {
                    system: "bitrix24".into(),
                    kind: "company".into(),
                    url: "https://portal.example/crm/company/details/1/".into(),
                }],
                phones: vec!["+7 916 000-00-02".into()],
                emails: vec!["sales@romashka.ru".into(), "info@romashka.ru".into()],
                told: Vec::new(),
            },
        );
        r.emails = vec!["Info@Romashka.ru".into()];
        apply(&mut r, "onec", Some(&applied));
        assert_eq!(
            r.emails,
            vec!["Info@Romashka.ru".into(), "sales@romashka.ru".into()],
            "the CRM's e-mails after the record's own, none twice"
        );
        assert_eq!(r.manager_phone.as_deref(), Some("301"));
        assert_eq!(r.manager_name.as_deref(), Some("Смирнова"));
        assert_eq!(r.manager_source.as_deref(), Some("bitrix24"));
        assert_eq!(r.links.len(), 1);
        assert_eq!(r.phones.len(), 2);
        assert_eq!(&*r.phones[1], "+7 916 000-00-02");
    }
}
