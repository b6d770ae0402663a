//! What the core does with a record a system reports (issue 17 item 10),
//! over a real gateway and its sync store: `sync::inbound::Applier` called
//! as the sync runtime (issue 18) will call it. The directory file plays
//! the owning source (1C's part): what a CRM reports never lands in its
//! JSON.

mod spec_only;
mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cti_gateway::config::Config;
use cti_gateway::phone::normalize;
use cti_gateway::store::{Conflict, ConflictQuery, OutboxQuery, OutboxRow, Store};
use cti_gateway::sync::inbound::{Applier, Change, Inbound, InboundError, Outcome, RemoteRecord};
use cti_gateway::sync::{DedupeKey, SystemSpec};
use cti_gateway::Gateway;
use support::*;

const SYSTEM: &str = "bitrix24";
const TEMPLATE: &str = "https://portal.example/crm/company/details/{id}/";

/// k1 and k2 share the INN (head office and branch, KPPs apart).
const FILE: &str = concat!(
    r#"{"id":"k1","name":"Альфа","inn":"7707083893","kpp":"773601001","phones":["84951110001"]}"#,
    "\n",
    r#"{"id":"k2","name":"Альфа, филиал","inn":"7707083893","kpp":"773602001","phones":["84951110002"]}"#,
    "\n",
    r#"{"id":"k3","name":"Бета","phones":["84951110003"]}"#,
    "\n",
);

/// bitrix24 user 17 is extension 301.
const MANAGERS: &str = r#"
[[manager]]
extension = "301"
name = "Смирнова Ольга"
bitrix24_user_id = "17"
"#;

struct Syncing {
    gw: TestGateway,
    applier: Applier,
}

impl Syncing {
    fn store(&self) -> &Store {
        self.gw.gateway().sync_store().expect("a sync store")
    }

    async fn apply(&self, remote_id: &str, change: Change) -> Outcome {
        self.applier
            .apply(Inbound {
                system: SYSTEM.to_owned(),
                kind: "company".to_owned(),
                remote_id: remote_id.to_owned(),
                change,
            })
            .await
            .expect("applied")
    }

    async fn conflicts(&self) -> Vec<Conflict> {
        self.store()
            .conflicts_page(ConflictQuery {
                limit: 1_000,
                ..ConflictQuery::default()
            })
            .await
            .expect("conflicts read")
    }

    async fn outbox(&self) -> Vec<OutboxRow> {
        self.store()
            .outbox_page(OutboxQuery {
                limit: 1_000,
                ..OutboxQuery::default()
            })
            .await
            .expect("outbox read")
    }

    async fn settled(&self) {
        let feed = self.gw.gateway().sync_feed().expect("a feed");
        tokio::time::timeout(Duration::from_secs(30), feed.settled())
            .await
            .expect("the feed settles");
    }
}

async fn start(dedupe_key: DedupeKey) -> Syncing {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), FILE).expect("write directory");
    start_in(dir, dedupe_key).await
}

/// A gateway over `dir` as it is (a restart over the same stores).
async fn start_in(dir: tempfile::TempDir, dedupe_key: DedupeKey) -> Syncing {
    let path = dir.path().join("gateway.toml");
    let text = config_text(dir.path(), &format!("{MANAGERS}\n[sync.{SYSTEM}]\n"));
    let config = Config::parse(&text, &path, &|_| None).expect("test config is valid");
    let spec = SystemSpec::new(SYSTEM)
        .expect("name")
        .with_dedupe_key(dedupe_key)
        .with_link_templates(BTreeMap::from([(
            "company".to_owned(),
            TEMPLATE.to_owned(),
        )]));
    let gateway = Gateway::start_with(config, spec_only::systems(vec![spec.clone()]))
        .await
        .expect("gateway starts");
    let applier = Applier::new(
        spec,
        std::sync::Arc::clone(gateway.directory()),
        gateway.sync_store().expect("a sync store").clone(),
        gateway.sync_feed().expect("a feed").clone(),
        std::sync::Arc::clone(gateway.crm_records(SYSTEM).expect("registered")),
    );
    let addr = gateway.local_addr();
    let syncing = Syncing {
        gw: TestGateway {
            gateway: Some(gateway),
            addr,
            dir,
        },
        applier,
    };
    // The start-up reconcile has queued the file's records (their id-map hashes).
    syncing.settled().await;
    syncing
}

/// SayName's (title, manager's phone) for `number`.
async fn say_name(addr: std::net::SocketAddr, number: &str) -> (String, String) {
    let reply = soap(addr, &say_name_envelope(number)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let data = say_name_data(&reply);
    let field = |tag| element_text(&data, tag).unwrap_or_default().to_owned();
    (field("title"), field("phone"))
}

/// The CRM's copy of k1 as the gateway sent it, plus `phones`.
fn alpha(extra_phones: &[&str]) -> RemoteRecord {
    let mut phones = vec!["+7 (495) 111-00-01".to_owned()];
    phones.extend(extra_phones.iter().map(|p| (*p).to_owned()));
    RemoteRecord {
        name: Some(" Альфа ".into()),
        inn: Some("7707083893".into()),
        kpp: Some("773601001".into()),
        phones: Some(phones),
        manager_user_id: Some("17".into()),
        ..RemoteRecord::default()
    }
}

fn upsert(record: RemoteRecord) -> Change {
    Change::Upsert(Box::new(record))
}

#[tokio::test]
async fn a_new_remote_record_becomes_a_crm_only_record_answering_say_name() {
    let mut s = start(DedupeKey::InnKpp).await;
    let record = RemoteRecord {
        name: Some("Новый клиент".into()),
        phones: Some(vec!["89125550101".into()]),
        manager_user_id: Some("17".into()),
        ..RemoteRecord::default()
    };
    let outcome = s.apply("101", upsert(record.clone())).await;
    assert_eq!(
        outcome,
        Outcome::Created {
            id: "bitrix24:company:101".into()
        }
    );
    assert_eq!(
        say_name(s.gw.addr, "+7 912 555-01-01").await,
        ("Новый клиент".to_owned(), "301".to_owned())
    );
    let entry =
        s.gw.gateway()
            .directory()
            .lookup_id("bitrix24:company:101")
            .expect("answers");
    assert!(
        entry
            .json()
            .contains("https://portal.example/crm/company/details/101/"),
        "its page from the template: {}",
        entry.json()
    );
    let link = s
        .store()
        .idmap_by_remote(SYSTEM, "company", "101")
        .await
        .expect("id-map read")
        .expect("linked");
    assert_eq!(link.local_id, "bitrix24:company:101");
    // The same record again (a repeated webhook): nothing to do.
    assert_eq!(s.apply("101", upsert(record.clone())).await, Outcome::Echo);
    // Renamed there: applied, it is its own source.
    let renamed = RemoteRecord {
        name: Some("Новый клиент 2".into()),
        ..record
    };
    assert_eq!(
        s.apply("101", upsert(renamed)).await,
        Outcome::Updated {
            id: "bitrix24:company:101".into()
        }
    );
    assert_eq!(say_name(s.gw.addr, "89125550101").await.0, "Новый клиент 2");
    // Deleted there: gone from its source.
    assert_eq!(
        s.apply("101", Change::Deleted).await,
        Outcome::Removed {
            id: "bitrix24:company:101".into()
        }
    );
    assert_eq!(say_name(s.gw.addr, "89125550101").await.0, "");
    assert!(
        s.conflicts().await.is_empty(),
        "no conflict for its own record"
    );
    s.gw.stop().await;
}

#[tokio::test]
async fn a_crm_only_record_with_a_failing_requisite_is_not_applied_and_recorded() {
    let mut s = start(DedupeKey::InnKpp).await;
    let record = RemoteRecord {
        name: Some("Опечатка".into()),
        inn: Some("7707083894".into()),
        phones: Some(vec!["89125550102".into()]),
        ..RemoteRecord::default()
    };
    assert_eq!(
        s.apply("102", upsert(record)).await,
        Outcome::Refused { conflicts: 1 }
    );
    assert_eq!(say_name(s.gw.addr, "89125550102").await.0, "");
    // An id that cannot key a record: refused, nothing written.
    for (kind, remote_id) in [("company", " "), ("com:pany", "103"), ("", "103")] {
        let refused = s
            .applier
            .apply(Inbound {
                system: SYSTEM.to_owned(),
                kind: kind.to_owned(),
                remote_id: remote_id.to_owned(),
                change: Change::Deleted,
            })
            .await;
        assert!(
            matches!(refused, Err(InboundError::Invalid { .. })),
            "{kind:?}/{remote_id:?}: {refused:?}"
        );
    }
    let conflicts = s.conflicts().await;
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].record_key, "bitrix24:company:102");
    assert_eq!(conflicts[0].field, "inn");
    assert_eq!(conflicts[0].theirs.as_deref(), Some("7707083894"));
    assert!(
        conflicts[0].resolution.starts_with("not_applied: "),
        "{:?}",
        conflicts[0].resolution
    );
    s.gw.stop().await;
}

#[tokio::test]
async fn the_same_inn_and_kpp_links_to_the_record_and_its_extra_phone_answers_through_the_overlay()
{
    let mut s = start(DedupeKey::InnKpp).await;
    let records = s.gw.gateway().directory().snapshot().len();
    let outcome = s.apply("201", upsert(alpha(&["89125550201"]))).await;
    assert_eq!(
        outcome,
        Outcome::Merged {
            id: "k1".into(),
            linked_now: true,
            conflicts: 0,
            sent_back: false,
            overlay_changed: true,
        }
    );
    let directory = s.gw.gateway().directory();
    assert_eq!(directory.snapshot().len(), records, "no new record");
    assert!(directory.lookup_id("bitrix24:company:201").is_none());
    assert!(
        !directory
            .lookup_id("k1")
            .expect("k1")
            .json()
            .contains("89125550201"),
        "the file's JSON keeps only its own numbers"
    );
    // The CRM's number and its manager answer, through the overlay.
    assert_eq!(
        say_name(s.gw.addr, "8 912 555-02-01").await,
        ("Альфа".to_owned(), "301".to_owned())
    );
    let link = s
        .store()
        .idmap_get(SYSTEM, "company", "k1")
        .await
        .expect("id-map read")
        .expect("a row");
    assert_eq!(link.remote_id.as_deref(), Some("201"));
    assert!(link.closed_at.is_none());
    assert!(s.conflicts().await.is_empty());
    s.gw.stop().await;
}

#[tokio::test]
async fn an_echo_of_our_own_value_writes_nothing() {
    let mut s = start(DedupeKey::InnKpp).await;
    s.apply("201", upsert(alpha(&[]))).await;
    s.settled().await;
    let (outbox, conflicts) = (s.outbox().await, s.conflicts().await);
    let overlay = s.store().overlay_get("k1").await.expect("overlay read");
    // What the gateway sent, written the CRM's way.
    let mut echo = alpha(&[]);
    echo.phones = Some(vec!["74951110001".into()]);
    echo.inn = Some("7707 083893".into());
    assert_eq!(s.apply("201", upsert(echo)).await, Outcome::Echo);
    s.settled().await;
    assert_eq!(s.outbox().await, outbox, "nothing queued");
    assert_eq!(s.conflicts().await, conflicts, "no conflict");
    assert_eq!(
        s.store().overlay_get("k1").await.expect("overlay read"),
        overlay
    );
    s.gw.stop().await;
}

#[tokio::test]
async fn a_crm_changing_the_inn_of_a_linked_record_is_a_conflict_and_gets_1cs_value_back() {
    let mut s = start(DedupeKey::InnKpp).await;
    s.apply("201", upsert(alpha(&[]))).await;
    s.settled().await;
    let before = s.outbox().await.last().map_or(0, |r| r.id);
    let mut changed = alpha(&[]);
    changed.inn = Some("7702070139".into());
    let outcome = s.apply("201", upsert(changed)).await;
    assert_eq!(
        outcome,
        Outcome::Merged {
            id: "k1".into(),
            linked_now: false,
            conflicts: 1,
            sent_back: true,
            overlay_changed: false,
        }
    );
    let conflicts = s.conflicts().await;
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    let c = &conflicts[0];
    assert_eq!(
        (c.system.as_str(), c.record_key.as_str(), c.field.as_str()),
        (SYSTEM, "k1", "inn")
    );
    assert_eq!(c.ours.as_deref(), Some("7707083893"));
    assert_eq!(c.theirs.as_deref(), Some("7702070139"));
    assert_eq!(c.resolution, "1c_wins");
    // Not applied.
    let entry = s.gw.gateway().directory().lookup_id("k1").expect("k1");
    assert_eq!(entry.inn(), Some("7707083893"));
    // 1C's value queued back, once: the feed, told of its hash, adds none.
    s.settled().await;
    let sent: Vec<OutboxRow> = s
        .outbox()
        .await
        .into_iter()
        .filter(|r| r.id > before)
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(
        (sent[0].system.as_str(), sent[0].record_key.as_str()),
        (SYSTEM, "k1")
    );
    let body: serde_json::Value = serde_json::from_str(&sent[0].body).expect("JSON body");
    assert_eq!(body["inn"], "7707083893");
    // The CRM then takes it: an echo.
    assert_eq!(s.apply("201", upsert(alpha(&[]))).await, Outcome::Echo);
    s.gw.stop().await;
}

#[tokio::test]
async fn a_crm_deleting_a_linked_record_keeps_it_and_closes_the_link() {
    let mut s = start(DedupeKey::InnKpp).await;
    s.apply("201", upsert(alpha(&["89125550201"]))).await;
    assert_eq!(say_name(s.gw.addr, "89125550201").await.0, "Альфа");
    assert_eq!(
        s.apply("201", Change::Deleted).await,
        Outcome::KeptIn1c { id: "k1".into() }
    );
    assert_eq!(
        say_name(s.gw.addr, "84951110001").await.0,
        "Альфа",
        "still answers"
    );
    assert_eq!(
        say_name(s.gw.addr, "89125550201").await.0,
        "",
        "the CRM's overlay dropped"
    );
    let conflicts = s.conflicts().await;
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(
        (
            conflicts[0].field.as_str(),
            conflicts[0].resolution.as_str()
        ),
        ("deleted", "kept_in_1c")
    );
    let link = s
        .store()
        .idmap_get(SYSTEM, "company", "k1")
        .await
        .expect("id-map read")
        .expect("the row is kept");
    assert!(link.closed_at.is_some(), "closed: {link:?}");
    // A second deletion finds no open link.
    assert_eq!(s.apply("201", Change::Deleted).await, Outcome::NotLinked);
    // A change of the record here is not sent to the system that deleted
    // it (that would create it there anew), while the others' changes are.
    let before = s.outbox().await.last().map_or(0, |r| r.id);
    let renamed = FILE
        .replace("\"Альфа\"", "\"Альфа Плюс\"")
        .replace("\"Бета\"", "\"Бета Плюс\"");
    std::fs::write(s.gw.dir.path().join("counterparties.jsonl"), renamed).expect("write");
    s.gw.gateway().reload();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while say_name(s.gw.addr, "84951110003").await.0 != "Бета Плюс" {
        assert!(
            std::time::Instant::now() < deadline,
            "the file was not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.settled().await;
    let queued: Vec<String> = s
        .outbox()
        .await
        .into_iter()
        .filter(|r| r.id > before)
        .map(|r| r.record_key)
        .collect();
    assert_eq!(queued, ["k3"], "k1's link is closed: only k3 is sent");
    s.gw.stop().await;
}

#[tokio::test]
async fn a_record_matching_several_is_refused_counted_and_recorded() {
    let mut s = start(DedupeKey::Inn).await;
    let record = RemoteRecord {
        name: Some("Альфа?".into()),
        inn: Some("7707083893".into()),
        phones: Some(vec!["89125550301".into()]),
        ..RemoteRecord::default()
    };
    assert_eq!(
        s.apply("301", upsert(record)).await,
        Outcome::Refused { conflicts: 1 }
    );
    assert_eq!(
        say_name(s.gw.addr, "89125550301").await.0,
        "",
        "created nowhere"
    );
    let conflicts = s.conflicts().await;
    assert_eq!(conflicts.len(), 1, "{conflicts:?}");
    assert_eq!(conflicts[0].resolution, "refused_duplicate");
    assert_eq!(conflicts[0].ours.as_deref(), Some("k1,k2"));
    let metrics = get(s.gw.addr, "/metrics").await.body;
    assert!(
        metrics.contains(r#"cti_sync_duplicates_refused_total{system="bitrix24"} 1"#),
        "{metrics}"
    );
    // A second record of a client the system already holds: refused too.
    let mut by_key = start(DedupeKey::InnKpp).await;
    by_key.apply("201", upsert(alpha(&[]))).await;
    assert_eq!(
        by_key.apply("202", upsert(alpha(&[]))).await,
        Outcome::Refused { conflicts: 1 }
    );
    by_key.gw.stop().await;
    s.gw.stop().await;
}

#[tokio::test]
async fn a_new_record_sharing_a_phone_with_a_known_one_is_kept_apart() {
    let mut s = start(DedupeKey::InnKpp).await;
    // k3's number, another client (no INN to match): a CRM-only record of
    // its own; the phone never merges the two.
    let record = RemoteRecord {
        name: Some("Бухгалтерия на аутсорсе".into()),
        phones: Some(vec!["+7 495 111-00-03".into()]),
        ..RemoteRecord::default()
    };
    assert_eq!(
        s.apply("401", upsert(record)).await,
        Outcome::Created {
            id: "bitrix24:company:401".into()
        }
    );
    let directory = s.gw.gateway().directory();
    assert!(directory.lookup_id("k3").is_some(), "k3 untouched");
    assert!(directory.lookup_id("bitrix24:company:401").is_some());
    assert!(
        s.store()
            .idmap_get(SYSTEM, "company", "k3")
            .await
            .expect("id-map read")
            .is_none_or(|row| row.remote_id.is_none()),
        "k3 not linked"
    );
    s.gw.stop().await;
}

/// Writes `text` as the directory file and waits until `number` answers
/// with `title` (the file's reload went through).
async fn reload_file(s: &Syncing, text: &str, number: &str, title: &str) {
    std::fs::write(s.gw.dir.path().join("counterparties.jsonl"), text).expect("write");
    s.gw.gateway().reload();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while say_name(s.gw.addr, number).await.0 != title {
        assert!(
            std::time::Instant::now() < deadline,
            "the file was not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the CRM-only record `id` answers no more.
async fn until_gone(s: &Syncing, id: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while s.gw.gateway().directory().lookup_id(id).is_some() {
        assert!(std::time::Instant::now() < deadline, "{id} was not linked");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const GAMMA_NUMBER: &str = "89125550401";

/// A CRM-only client: VTB's INN, its own number, an e-mail, user 17.
fn gamma_crm() -> RemoteRecord {
    RemoteRecord {
        name: Some("Гамма (CRM)".into()),
        inn: Some("7702070139".into()),
        kpp: Some("770201001".into()),
        phones: Some(vec![GAMMA_NUMBER.into()]),
        emails: Some(vec!["Office@Gamma.ru".into()]),
        manager_user_id: Some("17".into()),
        ..RemoteRecord::default()
    }
}

/// The file (1C's part) with the same client as `gamma_crm`, its own number only.
fn file_with_gamma() -> String {
    format!(
        "{FILE}{}\n",
        r#"{"id":"k9","name":"Гамма","inn":"7702070139","kpp":"770201001","phones":["84951110009"]}"#
    )
}

#[tokio::test]
async fn a_crm_only_record_linked_to_a_new_1c_record_leaves_its_number_never_unknown_or_twice() {
    let mut s = start(DedupeKey::InnKpp).await;
    let crm_id = "bitrix24:company:401";
    assert_eq!(
        s.apply("401", upsert(gamma_crm())).await,
        Outcome::Created { id: crm_id.into() }
    );
    assert_eq!(
        say_name(s.gw.addr, GAMMA_NUMBER).await,
        ("Гамма (CRM)".to_owned(), "301".to_owned())
    );
    let directory = Arc::clone(s.gw.gateway().directory());
    let number = normalize(GAMMA_NUMBER).expect("a number");
    // Readers of whole indexes, and SayName over HTTP, all through the link.
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let directory = Arc::clone(&directory);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut seen = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let index = directory.snapshot();
                    let entry = index.by_phone(number).expect("never unknown");
                    assert!(
                        entry.id() == "bitrix24:company:401" || entry.id() == "k9",
                        "{}",
                        entry.id()
                    );
                    assert_eq!(index.ambiguous_phones(), 0, "a number listed twice");
                    seen += 1;
                }
                seen
            })
        })
        .collect();
    let addr = s.gw.addr;
    let callers = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut calls = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (title, extension) = say_name(addr, GAMMA_NUMBER).await;
                assert!(
                    title == "Гамма (CRM)" || title == "Гамма",
                    "SayName answered {title:?}"
                );
                assert_eq!(extension, "301", "{title}");
                calls += 1;
            }
            calls
        })
    };
    // 1C's read (the file here) brings the same client: linked, one swap.
    reload_file(&s, &file_with_gamma(), "84951110009", "Гамма").await;
    until_gone(&s, crm_id).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        assert!(reader.join().expect("a reader saw a bad index") > 0);
    }
    assert!(callers.await.expect("a caller saw a bad answer") > 0);
    // The number, the manager and the e-mail are k9's overlay now.
    assert_eq!(
        say_name(s.gw.addr, GAMMA_NUMBER).await,
        ("Гамма".to_owned(), "301".to_owned())
    );
    let card = directory.lookup_id("k9").expect("k9").card().expect("card");
    assert!(
        card.emails.iter().any(|e| &**e == "office@gamma.ru"),
        "{:?}",
        card.emails
    );
    assert!(
        !directory
            .lookup_id("k9")
            .expect("k9")
            .json()
            .contains(GAMMA_NUMBER),
        "the file's JSON keeps its own numbers"
    );
    // The id-map row moved; the CRM-only record left the sync store too.
    let link = s
        .store()
        .idmap_by_remote(SYSTEM, "company", "401")
        .await
        .expect("id-map read")
        .expect("linked");
    assert_eq!(link.local_id, "k9");
    assert!(s
        .store()
        .idmap_get(SYSTEM, "company", crm_id)
        .await
        .expect("id-map read")
        .is_none());
    assert!(s.store().overlay_get(crm_id).await.expect("read").is_none());
    let stored = s.store().load_snapshot().await.expect("snapshot");
    assert!(
        stored
            .iter()
            .filter(|set| set.source == SYSTEM)
            .all(|set| set.records.iter().all(|r| &*r.id != crm_id)),
        "the CRM-only record left the sync store's set"
    );
    // Nothing asks the CRM to remove its own record.
    s.settled().await;
    let removes: Vec<OutboxRow> = s
        .outbox()
        .await
        .into_iter()
        .filter(|r| r.system == SYSTEM && r.record_key == crm_id)
        .collect();
    assert!(removes.is_empty(), "{removes:?}");
    // The CRM's next change of its record merges into k9.
    let mut next = gamma_crm();
    next.name = None;
    next.phones = Some(vec![GAMMA_NUMBER.into(), "89125550402".into()]);
    let outcome = s.apply("401", upsert(next)).await;
    assert!(
        matches!(&outcome, Outcome::Merged { id, conflicts: 0, .. } if id == "k9"),
        "{outcome:?}"
    );
    assert_eq!(say_name(s.gw.addr, "89125550402").await.0, "Гамма");
    // After a restart: the same, from the sync store.
    s.gw.stop().await;
    let dir = std::mem::replace(&mut s.gw.dir, tempfile::tempdir().expect("temp dir"));
    let mut s = start_in(dir, DedupeKey::InnKpp).await;
    assert_eq!(
        say_name(s.gw.addr, GAMMA_NUMBER).await,
        ("Гамма".to_owned(), "301".to_owned())
    );
    assert!(s.gw.gateway().directory().lookup_id(crm_id).is_none());
    s.gw.stop().await;
}

#[tokio::test]
async fn a_crm_only_record_whose_change_finds_a_1c_record_is_linked_on_the_inbound_path() {
    let mut s = start(DedupeKey::InnKpp).await;
    let mut record = gamma_crm();
    record.inn = None;
    record.kpp = None;
    reload_file(&s, &file_with_gamma(), "84951110009", "Гамма").await;
    assert!(matches!(
        s.apply("402", upsert(record)).await,
        Outcome::Created { .. }
    ));
    assert_eq!(say_name(s.gw.addr, GAMMA_NUMBER).await.0, "Гамма (CRM)");
    // The CRM adds the INN and KPP: the same client as k9.
    let found = RemoteRecord {
        inn: Some("7702070139".into()),
        kpp: Some("770201001".into()),
        ..RemoteRecord::default()
    };
    let outcome = s.apply("402", upsert(found)).await;
    assert!(
        matches!(&outcome, Outcome::Merged { id, linked_now: true, conflicts: 0, .. } if id == "k9"),
        "{outcome:?}"
    );
    assert!(s
        .gw
        .gateway()
        .directory()
        .lookup_id("bitrix24:company:402")
        .is_none());
    assert_eq!(
        say_name(s.gw.addr, GAMMA_NUMBER).await,
        ("Гамма".to_owned(), "301".to_owned())
    );
    s.gw.stop().await;
}

#[tokio::test]
async fn a_crms_numbers_are_its_current_set_and_a_field_it_did_not_tell_is_no_change() {
    let mut s = start(DedupeKey::InnKpp).await;
    s.apply("201", upsert(alpha(&["89125550201", "89125550202"])))
        .await;
    assert_eq!(say_name(s.gw.addr, "89125550201").await.0, "Альфа");
    // The CRM removed 0201; its webhook tells the numbers only.
    let numbers_only = RemoteRecord {
        phones: Some(vec!["+7 (495) 111-00-01".into(), "89125550202".into()]),
        ..RemoteRecord::default()
    };
    assert_eq!(
        s.apply("201", upsert(numbers_only)).await,
        Outcome::Merged {
            id: "k1".into(),
            linked_now: false,
            conflicts: 0,
            sent_back: false,
            overlay_changed: true,
        }
    );
    assert_eq!(say_name(s.gw.addr, "89125550201").await.0, "", "gone");
    assert_eq!(
        say_name(s.gw.addr, "89125550202").await,
        ("Альфа".to_owned(), "301".to_owned()),
        "the manager not told: kept"
    );
    // E-mails it adds are kept, lowercased, shown on the card.
    let emails_only = RemoteRecord {
        emails: Some(vec!["Sales@Alpha.RU".into()]),
        ..RemoteRecord::default()
    };
    s.apply("201", upsert(emails_only)).await;
    let card =
        s.gw.gateway()
            .directory()
            .lookup_id("k1")
            .expect("k1")
            .card()
            .expect("card");
    assert_eq!(card.emails, vec![Box::<str>::from("sales@alpha.ru")]);
    assert!(s.conflicts().await.is_empty(), "nothing 1C owns was told");
    // Told as cleared, the INN is a change 1C refuses.
    let cleared = RemoteRecord {
        inn: Some(String::new()),
        ..RemoteRecord::default()
    };
    let outcome = s.apply("201", upsert(cleared)).await;
    assert!(
        matches!(
            outcome,
            Outcome::Merged {
                conflicts: 1,
                sent_back: true,
                ..
            }
        ),
        "{outcome:?}"
    );
    s.gw.stop().await;
}
