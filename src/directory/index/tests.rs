//! Incremental against full: random histories of whole-set replacements,
//! changes, deletes, CRM overlays set and taken away, and restarts, where after every step the index the
//! directory made change by change must answer every phone, id and INN as
//! an index built in one pass from the same sets and tombstones does.
//!
//! `CTI_INDEX_STEPS` raises the steps per history (default 120) and
//! `CTI_INDEX_SEEDS` the number of histories (default 8).

use std::time::{Duration, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use std::collections::BTreeMap;

use super::*;
use crate::directory::{Directory, Overlay, OverlayManager};
use crate::phone::normalize;

const SOURCES: [&str; 3] = ["file", "onec", "push"];
/// Few ids and phones: histories hit the same ids and share phones often.
const IDS: u32 = 40;
const PHONES: u32 = 16;
const INNS: u32 = 6;

/// The name and the (effective) manager: an overlay's manager shows.
fn render(c: &Counterparty) -> Box<[u8]> {
    format!("{}/{}", c.name, c.manager_phone.as_deref().unwrap_or("-"))
        .into_bytes()
        .into()
}

/// An overlay of a CRM whose manager (by extension, or none) may outrank
/// the record's own, with numbers of the universe the record may lack.
fn overlay(rng: &mut StdRng) -> Overlay {
    let system = ["bitrix24", "amocrm"][rng.random_range(0..2)];
    let phones = (0..rng.random_range(0..3))
        .map(|_| {
            let n = rng.random_range(0..PHONES);
            phone(rng, n)
        })
        .collect();
    Overlay {
        managers: vec![OverlayManager {
            system: system.into(),
            extension: rng
                .random_bool(0.7)
                .then(|| format!("3{}", rng.random_range(0..3)).into()),
            ..Default::default()
        }],
        links: vec![],
        phones,
        ..Default::default()
    }
}

/// A directory where bitrix24 outranks the sources and amocrm ranks last,
/// and where the push's records without a manager take one at answer time
/// (by INN, else a default), as SERVIO's do.
fn directory() -> Directory {
    let mut rules = crate::directory::ManagerRules::default();
    rules.set(
        "push",
        crate::directory::ManagerRule {
            by_inn: true,
            default_phone: Some("299".into()),
        },
    );
    Directory::new(render)
        .with_managers(crate::directory::Managers::new([
            "bitrix24", "onec", "push", "file",
        ]))
        .with_manager_rules(rules)
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A phone of the universe, written one of several ways.
fn phone(rng: &mut StdRng, n: u32) -> Box<str> {
    match rng.random_range(0..3) {
        0 => format!("8916000{n:04}"),
        1 => format!("+7 916 000-{:02}-{:02}", n / 100, n % 100),
        _ => format!("7916000{n:04}"),
    }
    .into()
}

fn record(rng: &mut StdRng, id: u32) -> Counterparty {
    let phones = (0..rng.random_range(0..4))
        .map(|_| {
            let n = rng.random_range(0..PHONES);
            phone(rng, n)
        })
        .collect();
    Counterparty {
        id: id.to_string().into(),
        // Few names: a record often comes back with the same content.
        name: format!("n{}", rng.random_range(0..3)).into(),
        full_name: None,
        inn: rng
            .random_bool(0.7)
            .then(|| format!("77{}", rng.random_range(0..INNS)).into()),
        kpp: None,
        ogrn: None,
        category: None,
        manager_phone: rng
            .random_bool(0.5)
            .then(|| format!("2{}", rng.random_range(0..3)).into()),
        manager_name: None,
        phones,
        emails: vec![],
        address: None,
        data_version: Some(format!("v{}", rng.random_range(0..2)).into()),
        ..Default::default()
    }
}

fn some_ids(rng: &mut StdRng, most: u32) -> Vec<u32> {
    (0..rng.random_range(0..=most))
        .map(|_| rng.random_range(0..IDS))
        .collect()
}

/// Which entry answers, as something two indexes can be compared by.
fn who(e: Option<&Arc<Entry>>) -> Option<(String, String, u64, u64)> {
    e.map(|e| (e.id().to_string(), e.source.to_string(), e.content, e.stamp))
}

/// Every answer of `index` against those of a one-pass build of its sets.
fn check_against_full_build(index: &Index, step: &str) {
    let full = Index::build(
        index.sources.clone(),
        index.tombstones.clone(),
        index.overlays.clone(),
    );
    for n in 0..PHONES {
        let key = normalize(&format!("8916000{n:04}")).expect("a phone");
        assert_eq!(
            who(index.by_phone(key)),
            who(full.by_phone(key)),
            "phone {n} after {step}"
        );
    }
    for id in 0..IDS {
        let id = id.to_string();
        assert_eq!(
            who(index.by_id(&id)),
            who(full.by_id(&id)),
            "id {id} after {step}"
        );
    }
    for inn in 0..INNS {
        let inn = format!("77{inn}");
        let ids = |i: &Index| -> Vec<String> {
            i.by_inn(&inn).iter().map(|e| e.id().to_string()).collect()
        };
        assert_eq!(ids(index), ids(&full), "INN {inn} after {step}");
    }
    assert_eq!(
        (index.len(), index.phone_count(), index.ambiguous_phones()),
        (full.len(), full.phone_count(), full.ambiguous_phones()),
        "counts after {step}"
    );
    // Every copy carries its id's overlay as the index holds it now, and
    // chooses its manager at answer time exactly when its source's rule
    // says so and it has no effective manager of its own.
    for set in &index.sources {
        for ById(e) in set.entries.iter() {
            assert!(
                e.same_overlay(index.overlay(e.id())),
                "id {} of {} has a stale overlay after {step}",
                e.id(),
                set.info.name
            );
            assert_eq!(
                e.manager_at_answer(),
                &*e.source == "push" && !e.has_manager,
                "id {} of {} after {step}",
                e.id(),
                set.info.name
            );
        }
    }
    // The manager chosen at answer time is the same both ways.
    let full = Index {
        manager_rules: Arc::clone(&index.manager_rules),
        ..full
    };
    for id in 0..IDS {
        let id = id.to_string();
        let chosen = |i: &Index| i.by_id(&id).and_then(|e| i.manager_at_answer(e));
        assert_eq!(
            chosen(index),
            chosen(&full),
            "manager of id {id} after {step}"
        );
    }
}

/// The directory a restart makes: the tombstones, then each source's set
/// with its receive times, in a random order of sources.
fn restarted(dir: &Directory, overlays: &BTreeMap<u32, Overlay>, rng: &mut StdRng) -> Directory {
    let old = dir.snapshot();
    let again = directory();
    again.set_tombstones(&old.tombstones());
    let mut sets: Vec<&SourceInfo> = old.sources().collect();
    for i in (1..sets.len()).rev() {
        sets.swap(i, rng.random_range(0..=i));
    }
    for info in sets {
        let entries = old.source_records(&info.name).unwrap_or_default();
        let records = entries
            .iter()
            .map(|e| e.counterparty().expect("an entry's JSON reads back"))
            .collect();
        let received = entries.iter().map(|e| Some(e.stamp)).collect();
        again.replace_source_received(&info.name, records, received, None, info.loaded_at);
    }
    // The stored overlays, set again after the snapshot (as at start).
    let stored = overlays
        .iter()
        .map(|(id, o)| (id.to_string().into(), Some(o.clone())))
        .collect();
    again.set_overlays(stored).expect("valid overlays");
    again
}

fn play(seed: u64, steps: usize) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut dir = directory();
    let mut overlays: BTreeMap<u32, Overlay> = BTreeMap::new();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let mut clock = 0u64;
    for step in 0..steps {
        // Often the same millisecond: ties between sources must be broken
        // the same way by both builds.
        clock += rng.random_range(0..2);
        let at = t0 + Duration::from_millis(clock);
        let source = SOURCES[rng.random_range(0..SOURCES.len())];
        let what = match rng.random_range(0..12) {
            0..=2 => {
                let ids = some_ids(&mut rng, IDS);
                let records = ids.iter().map(|&id| record(&mut rng, id)).collect();
                dir.replace_source(source, records, None, at);
                format!("replacing {source}'s set with {ids:?}")
            }
            3..=6 => {
                let ids = some_ids(&mut rng, 4);
                let records = ids.iter().map(|&id| record(&mut rng, id)).collect();
                dir.apply_changes(source, records, &[], &[], at);
                format!("upserting {ids:?} into {source}")
            }
            7..=8 => {
                let id: Box<str> = rng.random_range(0..IDS).to_string().into();
                let buried = dir.tombstones_for(&id, source);
                dir.apply_changes(source, vec![], std::slice::from_ref(&id), &buried, at);
                format!("deleting {id} through {source}")
            }
            9..=10 => {
                let id = rng.random_range(0..IDS);
                let change = rng.random_bool(0.75).then(|| overlay(&mut rng));
                match &change {
                    Some(o) => overlays.insert(id, o.clone()),
                    None => overlays.remove(&id),
                };
                let what = format!("overlay of {id}: {change:?}");
                dir.set_overlays(vec![(id.to_string().into(), change)])
                    .expect("a valid overlay");
                what
            }
            _ => {
                let again = restarted(&dir, &overlays, &mut rng);
                let (before, after) = (dir.snapshot(), again.snapshot());
                for n in 0..PHONES {
                    let key = normalize(&format!("8916000{n:04}")).expect("a phone");
                    assert_eq!(
                        who(before.by_phone(key)),
                        who(after.by_phone(key)),
                        "seed {seed} step {step}: a restart changed phone {n}'s answer"
                    );
                    assert_eq!(
                        before.by_phone(key).map(|e| e.say_name.clone()),
                        after.by_phone(key).map(|e| e.say_name.clone()),
                        "seed {seed} step {step}: a restart changed phone {n}'s SayName"
                    );
                }
                dir = again;
                "a restart".to_owned()
            }
        };
        check_against_full_build(&dir.snapshot(), &format!("seed {seed} step {step}: {what}"));
    }
}

#[test]
fn changes_made_one_by_one_answer_as_a_build_from_scratch_does() {
    let steps = env_or("CTI_INDEX_STEPS", 120);
    for seed in 0..env_or("CTI_INDEX_SEEDS", 8) as u64 {
        play(seed, steps);
    }
}

#[test]
fn a_large_change_is_built_in_one_pass_and_answers_the_same() {
    // Past the bulk threshold: the one-pass build runs inside a change.
    let dir = directory();
    let mut rng = StdRng::seed_from_u64(7);
    let many = |rng: &mut StdRng, name: &str| -> Vec<Counterparty> {
        (0..(BULK_MIN as u32 * 2))
            .map(|i| Counterparty {
                id: i.to_string().into(),
                name: name.into(),
                ..record(rng, i)
            })
            .collect()
    };
    let first = many(&mut rng, "a");
    dir.replace_source("file", first, None, SystemTime::now());
    let small = (0..10).map(|i| record(&mut rng, i)).collect();
    dir.apply_changes("push", small, &[], &[], SystemTime::now());
    let second = many(&mut rng, "b");
    dir.replace_source("onec", second, None, SystemTime::now());
    check_against_full_build(&dir.snapshot(), "two large sets and a push");
    assert_eq!(dir.snapshot().len(), BULK_MIN * 2);
    // Overlays on every id: past the threshold too.
    let all = (0..(BULK_MIN as u32 * 2))
        .map(|i| (i.to_string().into(), Some(overlay(&mut rng))))
        .collect();
    dir.set_overlays(all).expect("valid overlays");
    check_against_full_build(&dir.snapshot(), "overlays on every id");
    assert_eq!(dir.snapshot().overlay_count(), BULK_MIN * 2);
}
