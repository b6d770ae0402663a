//! The store's tests, by subject, and the fixtures they share.
//!
//! - `snapshot.rs`: replacing and loading a source's snapshot, fingerprints,
//!   stale plans, the background store;
//! - `changes.rs`: pushed changes (`apply_changes`): upserts and removals;
//! - `journal.rs`: the call journal: appends, queries, group commit;
//! - `lifecycle.rs`: open, close, reopen, drop, migrations;
//! - `failures.rs`: a read-only or full disk, unusable paths and files,
//!   undecodable rows: errors that say what to do, a writer that keeps serving;
//! - `chunked_replace.rs`: large replaces written in chunks, with appends
//!   and other replaces in between;
//! - `crash.rs`: a writer killed (SIGKILL) in a child process;
//! - `start_checks.rs`: the checks before opening (a lost store file, a
//!   store in use) and messages that say what a file holds;
//! - `retention.rs`: journal retention (pruning old rows in batches);
//! - `backup.rs`: copies of a live store and the folders refused;
//! - `gate.rs`: the disk gate between the journal and the sync store, and
//!   the sync file's checkpoints off its writer;
//! - `sync.rs`: the sync store: its own migrations, outbox and id-map,
//!   group-committed enqueues, retry, paging, inbox, overlay, requisites;
//! - `sync_batch.rs`: an inbound change's writes in one transaction, and
//!   requisites deleted;
//! - `payments.rs`: payment versions, their events and outbox rows, the cursor.
//!
//! The 1M-row measurement is a bench program (`bench/store.sh`), not a test.

mod backup;
mod changes;
mod chunked_replace;
mod crash;
mod failures;
mod gate;
mod journal;
mod lifecycle;
mod payments;
mod retention;
mod snapshot;
mod start_checks;
mod sync;
mod sync_batch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::Registry;
use rusqlite::OptionalExtension;

use super::*;

/// A small valid counterparty (two phones, an INN, a manager).
fn counterparty(id: &str, name: &str) -> Counterparty {
    serde_json::from_value(serde_json::json!({
        "id": id,
        "name": name,
        "inn": "7701234567",
        "category": 1,
        "manager_phone": "244",
        "phones": ["+7 916 555-55-55", "84951234567"],
    }))
    .expect("valid counterparty")
}

/// `n` counterparties with ids `{prefix}-0000`, `{prefix}-0001`…, in id order.
fn records(prefix: &str, n: usize) -> Arc<[Counterparty]> {
    (0..n)
        .map(|i| {
            counterparty(
                &format!("{prefix}-{i:04}"),
                &format!("ООО \"{prefix} {i}\""),
            )
        })
        .collect()
}

/// `records` as what a replace writes.
fn held(records: &Arc<[Counterparty]>) -> Arc<dyn super::snapshot::RecordSet> {
    Arc::new(super::snapshot::Held(Arc::clone(records)))
}

/// The store file in a folder that does not exist yet (`open` creates it).
fn store_path(dir: &Path) -> PathBuf {
    dir.join("var").join("cti-gateway.sqlite")
}

/// Opens the store with a registry of its own.
fn open(path: &Path) -> Store {
    Store::open(path, &Registry::new()).expect("store opens")
}

/// Unix milliseconds as a time.
fn at_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// A journal row for operator `key` at `ms`, from the national `number`.
fn call(key: &str, ms: u64, number: &str) -> CallRecord {
    CallRecord {
        at: at_ms(ms),
        raw_number: format!("8{number}"),
        number: format!("+7{number}"),
        key: key.to_owned(),
        counterparty_id: None,
        delivered: 0,
        seq: None,
    }
}

/// One source of a loaded snapshot; panics when it is missing.
fn by_source<'a>(snapshot: &'a [SourceSnapshot], source: &str) -> &'a SourceSnapshot {
    snapshot
        .iter()
        .find(|s| s.source == source)
        .unwrap_or_else(|| panic!("source {source} in snapshot"))
}

/// The value of counter `name` with label value `outcome`, all series summed.
fn counter(registry: &Registry, name: &str, outcome: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == name)
        .flat_map(|f| f.get_metric())
        .filter(|m| m.get_label().iter().any(|l| l.value() == outcome))
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

/// The records in id order: how a load returns them.
fn sorted_by_id(records: &[Counterparty]) -> Vec<Counterparty> {
    let mut v = records.to_vec();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

/// A counterparty about as big as a real 1C one, with a random-looking
/// GUID as 1C gives (so rows do not arrive in key order).
fn realistic(i: usize) -> Counterparty {
    // splitmix64: a cheap, well-spread hash of the index.
    let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    Counterparty {
        id: format!(
            "{:08x}-{:04x}-11ee-8c90-{:012x}",
            z >> 32,
            (z >> 16) & 0xffff,
            i
        )
        .into(),
        name: format!("ООО \"Ромашка-{i}\"").into(),
        full_name: Some(format!("Общество с ограниченной ответственностью \"Ромашка-{i}\"").into()),
        inn: Some(format!("77{i:08}").into()),
        kpp: Some("770101001".into()),
        ogrn: None,
        category: Some((i % 3) as i64),
        manager_phone: Some(format!("{}", 200 + i % 50).into()),
        manager_name: Some("Иванова Мария".into()),
        phones: vec![
            format!(
                "+7 916 {:03}-{:02}-{:02}",
                i % 1000,
                i % 100,
                (i / 100) % 100
            )
            .into(),
            format!("8495{i:07}").into(),
        ],
        emails: vec![format!("client{i}@example.ru").into()],
        address: Some(format!("г. Москва, ул. Ленина, д. {}, офис {}", i % 200, i % 50).into()),
        data_version: Some(format!("AAAAAA{i:06}").into()),
        ..Default::default()
    }
}

/// The source's `sources` row as a raw read sees it: (fingerprint, records).
fn raw_source_row(path: &Path, source: &str) -> Option<(Option<String>, i64)> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("raw open");
    conn.query_row(
        "SELECT fingerprint, records FROM sources WHERE source = ?1",
        [source],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
    .expect("read sources row")
}

/// Rows stored for `source`, by a raw read.
fn raw_row_count(path: &Path, source: &str) -> i64 {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("raw open");
    conn.query_row(
        "SELECT count(*) FROM counterparties WHERE source = ?1",
        [source],
        |r| r.get(0),
    )
    .expect("count rows")
}

/// Waits until a replace of `source` has committed its first chunk but not
/// its last: the source's row is there, without fingerprint, with rows.
async fn wait_until_part_way(path: &Path, source: &str) {
    let (path, source) = (path.to_path_buf(), source.to_owned());
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((None, _)) = raw_source_row(&path, &source) {
                if raw_row_count(&path, &source) > 0 {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "the replace never got part-way");
            std::thread::sleep(Duration::from_millis(2));
        }
    })
    .await
    .expect("poll");
}

/// Every source's `sources.records` equals its rows, by a raw read.
fn assert_counts_match_rows(path: &Path) {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("raw open");
    let mut stmt = conn
        .prepare(
            "SELECT s.source, s.records, (SELECT count(*) FROM counterparties c WHERE c.source = s.source)
             FROM sources s",
        )
        .expect("prepare");
    let rows: Vec<(String, i64, i64)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    for (source, records, rows) in rows {
        assert_eq!(records, rows, "source {source}: sources.records vs rows");
    }
}

/// A loaded source's ids, in order.
fn ids(source: &SourceSnapshot) -> Vec<&str> {
    source.records.iter().map(|c| &*c.id).collect()
}

/// Ids as `apply_changes` takes its removals.
fn boxed(ids: &[&str]) -> Vec<Box<str>> {
    ids.iter().map(|&id| id.into()).collect()
}
