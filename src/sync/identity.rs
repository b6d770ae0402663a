//! "The same client?": which directory record a system's record is, so that
//! a lost link never breeds a duplicate. The order is fixed: the id-map
//! first (a link made once holds), then the business key the system
//! registered ([`DedupeKey`]: the INN, or the INN and the KPP), then a
//! shared phone, which is only logged: a phone is shared by a company's
//! branches, a reception desk, an accountant serving several clients, so it
//! never merges two records. A record that would be a second copy of a
//! client the system already holds is refused, created nowhere, and counted
//! in `cti_sync_duplicates_refused_total{system}` by the caller (the sync
//! runtime, issue 18, on each record it receives).

use std::sync::Arc;

use crate::directory::{Counterparty, Directory, Entry};
use crate::logging::Escaped;
use crate::phone;

use super::hash;
use super::registry::{DedupeKey, SystemSpec};

/// What a system's record is in the directory's terms.
#[derive(Debug, Clone)]
pub enum Identity {
    /// The id-map links it to this directory id.
    Linked(Box<str>),
    /// Not linked yet; its business key finds exactly this record, which no
    /// other record of the system is linked to: the two are one client.
    SameClient(Arc<Entry>),
    /// Its business key finds records the system already holds under
    /// other ids, or more than one record: taking it would make a
    /// duplicate. Refused; these are the directory ids it matched.
    Duplicate(Vec<Box<str>>),
    /// A client the directory does not know. `shares_phone_with` names a
    /// record that answers one of its phones: logged, never merged.
    New { shares_phone_with: Option<Box<str>> },
}

/// Identifies `record`, received from `system`.
///
/// `linked` is the id-map's directory id for the system's record, when it
/// has one; `linked_elsewhere(id)` says whether the directory record `id`
/// is already linked to another record of this system (the id-map, both
/// ways unique).
pub fn identify(
    directory: &Directory,
    system: &SystemSpec,
    record: &Counterparty,
    linked: Option<&str>,
    linked_elsewhere: impl Fn(&str) -> bool,
) -> Identity {
    if let Some(id) = linked {
        return Identity::Linked(id.into());
    }
    let candidates = by_business_key(directory, system.dedupe_key(), record);
    match candidates.as_slice() {
        [] => {}
        [one] if !linked_elsewhere(one.id()) => return Identity::SameClient(Arc::clone(one)),
        _ => return Identity::Duplicate(candidates.iter().map(|e| e.id().into()).collect()),
    }
    let shares_phone_with = record
        .phones
        .iter()
        .filter_map(|p| phone::normalize(p))
        .find_map(|key| directory.lookup_phone(key))
        .map(|e| Box::<str>::from(e.id()));
    if let Some(other) = &shares_phone_with {
        tracing::info!(
            system = system.name(),
            record = %Escaped(&record.id),
            shares_phone_with = %Escaped(other),
            "sync: a new client shares a phone with a known one; kept apart (a phone never merges records)"
        );
    }
    Identity::New { shares_phone_with }
}

/// The directory's records with `record`'s business key: none without an
/// INN. With [`DedupeKey::InnKpp`] a 10-digit INN matches with its KPP (a
/// record without one matches records without one); a 12-digit INN (a
/// sole proprietor or a person, who have no KPP) matches alone.
pub fn by_business_key(
    directory: &Directory,
    key: DedupeKey,
    record: &Counterparty,
) -> Vec<Arc<Entry>> {
    let Some(inn) = record
        .inn
        .as_deref()
        .map(hash::digits)
        .filter(|i| !i.is_empty())
    else {
        return Vec::new();
    };
    match key {
        DedupeKey::InnKpp if inn.len() != 12 => {
            directory.lookup_inn_kpp(&inn, record.kpp.as_deref().filter(|k| !k.trim().is_empty()))
        }
        _ => directory.lookup_inn(&inn),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn render(c: &Counterparty) -> Box<[u8]> {
        c.name.as_bytes().into()
    }

    fn record(id: &str, inn: Option<&str>, kpp: Option<&str>, phones: &[&str]) -> Counterparty {
        Counterparty {
            id: id.into(),
            name: id.into(),
            inn: inn.map(Into::into),
            kpp: kpp.map(Into::into),
            phones: phones.iter().map(|p| (*p).into()).collect(),
            ..Default::default()
        }
    }

    fn directory() -> Directory {
        let dir = Directory::new(render);
        dir.replace_source(
            "onec",
            vec![
                record(
                    "head",
                    Some("7707083893"),
                    Some("773601001"),
                    &["84951234567"],
                ),
                record(
                    "branch",
                    Some("7707083893"),
                    Some("773602001"),
                    &["84951234568"],
                ),
                record("ip", Some("500100732259"), None, &[]),
            ],
            None,
            SystemTime::now(),
        );
        dir
    }

    fn id_of(identity: &Identity) -> String {
        match identity {
            Identity::Linked(id) => format!("linked {id}"),
            Identity::SameClient(e) => format!("same {}", e.id()),
            Identity::Duplicate(ids) => format!("duplicate {}", ids.join(",")),
            Identity::New { shares_phone_with } => {
                format!("new {}", shares_phone_with.as_deref().unwrap_or("-"))
            }
        }
    }

    #[test]
    fn the_id_map_comes_first_then_the_business_key_then_a_phone_never_merges() {
        let dir = directory();
        let spec = SystemSpec::new("bitrix24").expect("spec");
        let unlinked = |_: &str| false;
        let incoming = record("b24:1", Some("7707083893"), Some("773602001"), &[]);
        // Linked: whatever its key says.
        let found = identify(&dir, &spec, &incoming, Some("head"), unlinked);
        assert_eq!(id_of(&found), "linked head");
        // By INN and KPP: the branch, not the head office.
        let found = identify(&dir, &spec, &incoming, None, unlinked);
        assert_eq!(id_of(&found), "same branch");
        // A sole proprietor by INN alone; digits only.
        let ip = record("b24:2", Some("5001 0073 2259"), None, &[]);
        assert_eq!(
            id_of(&identify(&dir, &spec, &ip, None, unlinked)),
            "same ip"
        );
        // A shared phone: a new client, the other named, nothing merged.
        let caller = record("b24:3", None, None, &["+7 495 123-45-67"]);
        assert_eq!(
            id_of(&identify(&dir, &spec, &caller, None, unlinked)),
            "new head"
        );
        let stranger = record("b24:4", Some("7702070139"), None, &["89160000000"]);
        assert_eq!(
            id_of(&identify(&dir, &spec, &stranger, None, unlinked)),
            "new -"
        );
    }

    #[test]
    fn a_second_copy_of_a_client_is_refused() {
        let dir = directory();
        let spec = SystemSpec::new("bitrix24").expect("spec");
        let incoming = record("b24:9", Some("7707083893"), Some("773601001"), &[]);
        // The head office is linked to another company of the system already.
        let found = identify(&dir, &spec, &incoming, None, |id| id == "head");
        assert_eq!(id_of(&found), "duplicate head");
        // By INN alone, head office and branch both match: which one is
        // not ours to guess.
        let by_inn = spec.with_dedupe_key(DedupeKey::Inn);
        let found = identify(&dir, &by_inn, &incoming, None, |_| false);
        assert!(matches!(found, Identity::Duplicate(ids) if ids.len() == 2));
    }
}
