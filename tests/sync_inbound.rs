//! What the core does with a record a system reports (issue 17 item 10),
//! over a real gateway and its sync store: `sync::inbound::Applier` called
//! as the sync runtime (issue 18) will call it. The directory file plays
//! the owning source (1C's part): what a CRM reports never lands in its
//! JSON.

mod spec_only;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use cti_gateway::config::Config;
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
        name: " Альфа ".into(),
        inn: Some("7707083893".into()),
        kpp: Some("773601001".into()),
        phones,
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
        name: "Новый клиент".into(),
        phones: vec!["89125550101".into()],
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
        name: "Новый клиент 2".into(),
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
        name: "Опечатка".into(),
        inn: Some("7707083894".into()),
        phones: vec!["89125550102".into()],
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
    echo.phones = vec!["74951110001".into()];
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
        name: "Альфа?".into(),
        inn: Some("7707083893".into()),
        phones: vec!["89125550301".into()],
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
        name: "Бухгалтерия на аутсорсе".into(),
        phones: vec!["+7 495 111-00-03".into()],
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
