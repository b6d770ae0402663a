//! The sync foundation over a real gateway: systems registered with
//! `Gateway::start_with`, the change feed from the directory into the sync
//! store's outbox (read back from the store), and the reconcile that makes
//! good a lost report (a crash between the directory's swap and the
//! enqueue, a full channel); a system's CRM-only records as a source of
//! their own, stored in the sync store.

mod spec_only;
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use cti_gateway::config::Config;
use cti_gateway::directory::Counterparty;
use cti_gateway::gateway::sync_store_path;
use cti_gateway::store::{OutboxOp, OutboxQuery, OutboxRow};
use cti_gateway::sync::crm_source::CrmError;
use cti_gateway::sync::{DedupeKey, FeedSettings, SystemSpec};
use cti_gateway::Gateway;
use support::mock_crm::MockCrm;
use support::*;

const PATH: &str = "/api/v1/counterparties";
const BEARER: &str = "Authorization: Bearer api-token-for-tests";
const JSON: &str = "Content-Type: application/json";

/// Five records; only `k1` has requisites (valid ones).
const FILE: &str = concat!(
    r#"{"id":"k1","name":"Альфа","inn":"7707083893","kpp":"773601001","phones":["84951110001"]}"#,
    "\n",
    r#"{"id":"k2","name":"Бета","phones":["84951110002"]}"#,
    "\n",
    r#"{"id":"k3","name":"Гамма","phones":["84951110003"]}"#,
    "\n",
    r#"{"id":"k4","name":"Дельта","phones":["84951110004"]}"#,
    "\n",
    r#"{"id":"k5","name":"Эпсилон","phones":["84951110005"]}"#,
    "\n",
);

/// Two systems: one keeping every field, one names and phones only.
fn systems(crm: &MockCrm) -> Vec<SystemSpec> {
    let templates = BTreeMap::from([(
        "company".to_owned(),
        format!("{}/crm/company/details/{{id}}/", crm.url()),
    )]);
    let all = SystemSpec::new("testcrm")
        .expect("name")
        .with_link_templates(templates);
    let names = SystemSpec::new("othercrm")
        .expect("name")
        .with_dedupe_key(DedupeKey::Inn)
        .with_fields(&["name", "phones"])
        .expect("fields");
    vec![all, names]
}

async fn start_syncing(dir: tempfile::TempDir, crm: &MockCrm, feed: FeedSettings) -> TestGateway {
    let path = dir.path().join("gateway.toml");
    let specs = systems(crm);
    let config = Config::parse(
        &config_text(dir.path(), &spec_only::tables(&specs)),
        &path,
        &|_| None,
    )
    .expect("test config is valid");
    let gateway = Gateway::start_with_feed(config, spec_only::systems(specs), feed)
        .await
        .expect("gateway starts");
    let addr = gateway.local_addr();
    TestGateway {
        gateway: Some(gateway),
        addr,
        dir,
    }
}

async fn start_fresh(crm: &MockCrm, feed: FeedSettings) -> TestGateway {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), FILE).expect("write directory");
    start_syncing(dir, crm, feed).await
}

/// Waits for the feed to have handled every report and reconcile due.
async fn settled(gw: &TestGateway) {
    let feed = gw.gateway().sync_feed().expect("a feed with systems");
    tokio::time::timeout(Duration::from_secs(30), feed.settled())
        .await
        .expect("the feed settles");
}

/// `system`'s outbox rows after row `after`, in order.
async fn rows(gw: &TestGateway, system: &str, after: i64) -> Vec<OutboxRow> {
    gw.gateway()
        .sync_store()
        .expect("a sync store with systems")
        .outbox_page(OutboxQuery {
            system: Some(system.to_owned()),
            after: Some(after),
            limit: 1_000,
            ..OutboxQuery::default()
        })
        .await
        .expect("outbox read")
}

/// The last row id so far (0 when none).
async fn last_row(gw: &TestGateway) -> i64 {
    let mut last = 0;
    for system in ["testcrm", "othercrm"] {
        last = rows(gw, system, 0)
            .await
            .iter()
            .map(|r| r.id)
            .fold(last, i64::max);
    }
    last
}

/// `(record_key, op)` of each row, sorted.
fn keys(rows: &[OutboxRow]) -> Vec<(String, OutboxOp)> {
    let mut keys: Vec<_> = rows.iter().map(|r| (r.record_key.clone(), r.op)).collect();
    keys.sort_by(|a, b| a.0.cmp(&b.0));
    keys
}

/// Writes the directory file whole, in one rename: the watcher never reads half.
fn replace_file(gw: &TestGateway, text: &str) {
    let next = gw.dir.path().join("counterparties.next");
    std::fs::write(&next, text).expect("write directory");
    std::fs::rename(&next, gw.directory_file()).expect("rename directory");
}

async fn push(addr: std::net::SocketAddr, body: &str) -> Reply {
    request(addr, "POST", PATH, &[JSON, BEARER], body.as_bytes()).await
}

async fn delete(addr: std::net::SocketAddr, id: &str) -> Reply {
    request(addr, "DELETE", &format!("{PATH}/{id}"), &[BEARER], b"").await
}

#[tokio::test]
async fn a_refresh_changing_three_records_enqueues_three_rows_per_system_and_an_unchanged_one_none()
{
    let crm = MockCrm::start().await;
    let gw = start_fresh(&crm, FeedSettings::default()).await;
    settled(&gw).await;
    // The start-up reconcile sent every record to both systems.
    for system in ["testcrm", "othercrm"] {
        let rows = rows(&gw, system, 0).await;
        assert_eq!(rows.len(), 5, "{system}: {rows:?}");
        assert!(rows.iter().all(|r| r.op == OutboxOp::Upsert));
    }
    let before = last_row(&gw).await;
    // Three records change: a name, a phone, a new record.
    let changed = FILE
        .replace("Альфа", "Альфа-2")
        .replace("84951110002", "84951119999")
        + r#"{"id":"k6","name":"Дзета","phones":["84951110006"]}"#
        + "\n";
    replace_file(&gw, &changed);
    gw.gateway().reload();
    let mut tries = 0;
    while rows(&gw, "othercrm", before).await.len() < 3
        || rows(&gw, "testcrm", before).await.len() < 3
    {
        tries += 1;
        assert!(tries < 300, "the refresh was not enqueued");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    settled(&gw).await;
    let expected = [
        ("k1".to_owned(), OutboxOp::Upsert),
        ("k2".to_owned(), OutboxOp::Upsert),
        ("k6".to_owned(), OutboxOp::Upsert),
    ];
    for system in ["testcrm", "othercrm"] {
        assert_eq!(keys(&rows(&gw, system, before).await), expected, "{system}");
    }
    let upsert = &rows(&gw, "testcrm", before).await[0];
    let body: serde_json::Value = serde_json::from_str(&upsert.body).expect("JSON body");
    assert_eq!(body["name"], "Альфа-2", "the record's JSON");

    // A refresh that writes the same numbers and name another way changes
    // the directory's records, not what the systems hold.
    let before = last_row(&gw).await;
    let reformatted = changed
        .replace("\"84951110003\"", "\"+7 (495) 111-00-03\"")
        .replace("\"Дельта\"", "\"  Дельта \"");
    replace_file(&gw, &reformatted);
    gw.gateway().reload();
    let directory = gw.gateway().directory();
    let mut tries = 0;
    while !directory
        .lookup_id("k3")
        .is_some_and(|e| e.json().contains("+7 (495)"))
    {
        tries += 1;
        assert!(tries < 300, "the reformatted file was not read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    settled(&gw).await;
    for system in ["testcrm", "othercrm"] {
        assert!(rows(&gw, system, before).await.is_empty(), "{system}");
    }
    drop(gw);
}

#[tokio::test]
async fn a_removal_enqueues_a_remove_and_a_bad_inn_is_never_enqueued() {
    let crm = MockCrm::start().await;
    let mut gw = start_fresh(&crm, FeedSettings::default()).await;
    settled(&gw).await;
    let before = last_row(&gw).await;
    // A mistyped INN: answered, warned about, counted, never enqueued.
    let reply = push(
        gw.addr,
        r#"[{"id":"p-bad","name":"Опечатка","inn":"7707083894","phones":["89120000001"]},
            {"id":"p-good","name":"Верный","inn":"7707083893","kpp":"773601001","phones":["89120000002"]}]"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains("warnings"), "{}", reply.body);
    settled(&gw).await;
    for system in ["testcrm", "othercrm"] {
        assert_eq!(
            keys(&rows(&gw, system, before).await),
            [("p-good".to_owned(), OutboxOp::Upsert)],
            "{system}"
        );
    }
    let title = say_name_data(&soap(gw.addr, &say_name_envelope("89120000001")).await);
    assert!(
        title.contains("Опечатка"),
        "the bad INN still answers: {title}"
    );

    // Deletes: a pushed record and a file record hidden by the push API.
    let before = last_row(&gw).await;
    assert_eq!(delete(gw.addr, "p-good").await.status, 200);
    assert_eq!(delete(gw.addr, "k2").await.status, 200);
    assert_eq!(delete(gw.addr, "p-bad").await.status, 200);
    settled(&gw).await;
    for system in ["testcrm", "othercrm"] {
        let removed = rows(&gw, system, before).await;
        assert_eq!(
            keys(&removed),
            [
                ("k2".to_owned(), OutboxOp::Remove),
                ("p-good".to_owned(), OutboxOp::Remove)
            ],
            "{system}: never sent, never removed"
        );
        assert!(removed.iter().any(|r| r.body == "\"k2\""), "{removed:?}");
    }
    let metrics = get(gw.addr, "/metrics").await.body;
    assert!(
        metrics.contains(r#"cti_sync_duplicates_refused_total{system="testcrm"} 0"#),
        "registered per system"
    );
    assert!(
        metrics.contains(r#"cti_sync_feed_invalid_requisites_total{system="testcrm"} 1"#),
        "the bad INN held back once"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_crash_between_swap_and_enqueue_is_made_good_at_the_next_start_up() {
    let crm = MockCrm::start().await;
    let mut gw = start_fresh(&crm, FeedSettings::default()).await;
    settled(&gw).await;
    let before = last_row(&gw).await;
    let feed = gw.gateway().sync_feed().expect("feed").clone();
    // The directory swaps, the reports are lost as in a crash at that instant.
    feed.drop_reports_for_tests(true);
    let reply = push(
        gw.addr,
        r#"[{"id":"p1","name":"Новый","phones":["89120000011"]},
            {"id":"k3","name":"Гамма-2","phones":["84951110003"]}]"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(delete(gw.addr, "k4").await.status, 200);
    settled(&gw).await;
    assert_eq!(last_row(&gw).await, before, "nothing enqueued");
    gw.stop().await;

    let dir = std::mem::replace(&mut gw.dir, tempfile::tempdir().expect("temp dir"));
    let gw = start_syncing(dir, &crm, FeedSettings::default()).await;
    settled(&gw).await;
    let expected = [
        ("k3".to_owned(), OutboxOp::Upsert),
        ("k4".to_owned(), OutboxOp::Remove),
        ("p1".to_owned(), OutboxOp::Upsert),
    ];
    for system in ["testcrm", "othercrm"] {
        assert_eq!(keys(&rows(&gw, system, before).await), expected, "{system}");
    }
    drop(gw);
}

#[tokio::test]
async fn a_full_channel_drops_reports_for_a_reconcile_that_enqueues_them_all() {
    let crm = MockCrm::start().await;
    let tiny = FeedSettings {
        capacity: 1,
        retry_after: Duration::from_millis(50),
    };
    let gw = start_fresh(&crm, tiny).await;
    settled(&gw).await;
    let feed = gw.gateway().sync_feed().expect("feed").clone();
    let reconciles = feed.reconciles();
    let before = last_row(&gw).await;
    // The feed reads nothing: the first report fills the channel, the
    // others are dropped and the pushes answer all the same.
    feed.hold_for_tests(true);
    for i in 1..=4 {
        let body = format!(r#"[{{"id":"q{i}","name":"Q{i}","phones":["8912000010{i}"]}}]"#);
        assert_eq!(push(gw.addr, &body).await.status, 200);
    }
    feed.hold_for_tests(false);
    settled(&gw).await;
    assert!(feed.reconciles() > reconciles, "a reconcile ran");
    for system in ["testcrm", "othercrm"] {
        let keys: Vec<String> = keys(&rows(&gw, system, before).await)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["q1", "q2", "q3", "q4"], "{system}");
    }
    let metrics = get(gw.addr, "/metrics").await.body;
    let overflows: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cti_sync_feed_overflows_total "))
        .and_then(|n| n.trim().parse().ok())
        .expect("the overflow counter");
    assert!(overflows >= 1, "reports were dropped: {overflows}");
    drop(gw);
}

#[tokio::test]
async fn no_sync_file_appears_without_a_registered_system() {
    let mut plain = start("").await;
    assert!(plain.gateway().sync_store().is_none());
    assert!(plain.gateway().sync_feed().is_none());
    assert!(!sync_store_path(&plain.store_file()).exists());
    plain.stop().await;
    assert!(!sync_store_path(&plain.store_file()).exists());

    let crm = MockCrm::start().await;
    let mut syncing = start_fresh(&crm, FeedSettings::default()).await;
    assert!(sync_store_path(&syncing.store_file()).exists());
    syncing.stop().await;
}

#[tokio::test]
async fn a_system_registered_twice_stops_start_up() {
    let crm = MockCrm::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), FILE).expect("write directory");
    let path = dir.path().join("gateway.toml");
    let mut twice = systems(&crm);
    twice.push(twice[0].clone());
    let config = Config::parse(
        &config_text(dir.path(), &spec_only::tables(&twice[..2])),
        &path,
        &|_| None,
    )
    .expect("config");
    let error = Gateway::start_with(config, spec_only::systems(twice))
        .await
        .err()
        .expect("refused");
    assert!(error.to_string().contains("testcrm"), "{error}");
}

#[tokio::test]
async fn a_system_starts_with_its_table_and_a_table_no_system_claims_stops_start_up() {
    let crm = MockCrm::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), FILE).expect("write directory");
    let path = dir.path().join("gateway.toml");
    // No table: the systems are carried but not started (no sync file).
    let config = Config::parse(&config_text(dir.path(), ""), &path, &|_| None).expect("config");
    let idle = Gateway::start_with(config, spec_only::systems(systems(&crm)))
        .await
        .expect("starts");
    assert!(idle.sync_store().is_none() && idle.sync_feed().is_none());
    idle.shutdown().await;
    // A table of a system the gateway was not given.
    let text = config_text(dir.path(), "\n[sync.testcrm]\n[sync.nosuchcrm]\n");
    let config = Config::parse(&text, &path, &|_| None).expect("config");
    let error = Gateway::start_with(config, spec_only::systems(systems(&crm)))
        .await
        .err()
        .expect("refused");
    let message = error.to_string();
    assert!(
        message.contains("sync.nosuchcrm") && message.contains("gateway.toml"),
        "{message}"
    );
}

#[tokio::test]
async fn the_mock_crm_records_what_it_receives() {
    let crm = MockCrm::start().await;
    let reply = post(
        crm.addr(),
        "/api/records/batch",
        &[JSON, "Authorization: Bearer crm-token"],
        r#"{"records":[{"external_id":"k1","fields":{"name":"Альфа"}}]}"#.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    crm.set_status(503);
    let reply = post(crm.addr(), "/api/records/batch", &[JSON], b"{}").await;
    assert_eq!(reply.status, 503);
    let seen = crm.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].target, "/api/records/batch");
    assert_eq!(seen[0].body["records"][0]["fields"]["name"], "Альфа");
    assert_eq!(seen[0].authorization.as_deref(), Some("Bearer crm-token"));
}

fn crm_record(id: &str, name: &str, manager: &str, phone: &str) -> Counterparty {
    serde_json::from_value(serde_json::json!({
        "id": id, "name": name, "manager_phone": manager, "phones": [phone]
    }))
    .expect("a valid record")
}

/// SayName's (title, manager's phone) for `number`.
async fn say_name(addr: std::net::SocketAddr, number: &str) -> (String, String) {
    let reply = soap(addr, &say_name_envelope(number)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let data = say_name_data(&reply);
    let field = |tag| element_text(&data, tag).unwrap_or_default().to_owned();
    (field("title"), field("phone"))
}

#[tokio::test]
async fn a_crm_only_record_answers_say_name_with_its_manager_after_a_restart_too() {
    let crm = MockCrm::start().await;
    let mut gw = start_fresh(&crm, FeedSettings::default()).await;
    settled(&gw).await;
    let before = last_row(&gw).await;
    let records = gw
        .gateway()
        .crm_records("testcrm")
        .expect("registered")
        .clone();
    records
        .upsert(vec![crm_record(
            "testcrm:company:7",
            "Из CRM",
            "245",
            "89125550007",
        )])
        .await
        .expect("stored and applied");
    assert_eq!(
        say_name(gw.addr, "+7 912 555-00-07").await,
        ("Из CRM".to_owned(), "245".to_owned())
    );
    // Sent to the other system, never back to its own.
    settled(&gw).await;
    assert!(rows(&gw, "testcrm", before).await.is_empty());
    assert_eq!(
        keys(&rows(&gw, "othercrm", before).await),
        [("testcrm:company:7".to_owned(), OutboxOp::Upsert)]
    );
    // What the source refuses: another system's id, a mistyped INN.
    let foreign = records
        .upsert(vec![crm_record(
            "othercrm:company:1",
            "Чужая",
            "246",
            "89125550008",
        )])
        .await;
    assert!(
        matches!(foreign, Err(CrmError::Invalid { .. })),
        "{foreign:?}"
    );
    let mut typo = crm_record("testcrm:company:8", "Опечатка", "246", "89125550008");
    typo.inn = Some("7707083894".into());
    let refused = records.upsert(vec![typo]).await;
    assert!(
        matches!(&refused, Err(CrmError::Invalid { problem, .. }) if problem.contains("inn")),
        "{refused:?}"
    );
    assert_eq!(say_name(gw.addr, "89125550008").await.0, "", "not applied");
    gw.stop().await;

    let dir = std::mem::replace(&mut gw.dir, tempfile::tempdir().expect("temp dir"));
    let mut gw = start_syncing(dir, &crm, FeedSettings::default()).await;
    assert_eq!(
        say_name(gw.addr, "89125550007").await,
        ("Из CRM".to_owned(), "245".to_owned()),
        "loaded from the sync store at start"
    );
    let records = gw
        .gateway()
        .crm_records("testcrm")
        .expect("registered")
        .clone();
    records
        .remove(vec!["testcrm:company:7".into()])
        .await
        .expect("removed");
    assert_eq!(say_name(gw.addr, "89125550007").await.0, "");
    gw.stop().await;
}

/// No fixed pace (it used to apply at most once a second, which made every
/// inbox row of a CRM-only record wait a second): changes are applied as
/// they come, those queued during an apply together in the next.
#[tokio::test]
async fn a_crm_source_applies_changes_as_they_come() {
    let crm = MockCrm::start().await;
    let gw = start_fresh(&crm, FeedSettings::default()).await;
    let records = gw
        .gateway()
        .crm_records("othercrm")
        .expect("registered")
        .clone();
    records
        .upsert(vec![crm_record(
            "othercrm:company:1",
            "Первая",
            "245",
            "89125550101",
        )])
        .await
        .expect("first");
    let applied_first = std::time::Instant::now();
    let changes: Vec<_> = (2..5)
        .map(|i| {
            let records = records.clone();
            tokio::spawn(async move {
                let id = format!("othercrm:company:{i}");
                let phone = format!("8912555010{i}");
                records
                    .upsert(vec![crm_record(&id, "Следующая", "245", &phone)])
                    .await
            })
        })
        .collect();
    for change in changes {
        change.await.expect("task").expect("applied");
    }
    assert!(
        applied_first.elapsed() < Duration::from_millis(900),
        "applied {:?} after the previous apply: a pace again?",
        applied_first.elapsed()
    );
    assert_eq!(say_name(gw.addr, "89125550104").await.0, "Следующая");
    drop(gw);
}

#[tokio::test]
async fn a_sync_store_that_does_not_open_costs_no_call() {
    let crm = MockCrm::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), FILE).expect("write directory");
    // The main store exists; an empty sync file beside it is a lost one,
    // which the sync store refuses to start over from.
    let mut first = start_in(dir, "").await;
    first.stop().await;
    let dir = std::mem::replace(&mut first.dir, tempfile::tempdir().expect("temp dir"));
    std::fs::write(sync_store_path(&dir.path().join("store.sqlite")), b"").expect("empty file");
    let mut gw = start_syncing(dir, &crm, FeedSettings::default()).await;
    assert!(gw.gateway().sync_store().is_none(), "not opened");
    assert_eq!(say_name(gw.addr, "84951110001").await.0, "Альфа");
    gw.stop().await;
}
