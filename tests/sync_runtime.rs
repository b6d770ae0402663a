//! The sync runtime over a real gateway: a worker sends the outbox to the
//! mock CRM (`support::mock_crm`) on loopback through the test system
//! (`support::test_system`), as a CRM module would.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cti_gateway::config::Config;
use cti_gateway::store::{OutboxQuery, OutboxRow, OutboxState};
use cti_gateway::sync::system::{PublishedLimit, System};
use cti_gateway::sync::SystemSpec;
use cti_gateway::Gateway;
use serde_json::{json, Value};
use support::mock_crm::{LimitAnswer, MockCrm, Mode, WebhookTarget};
use support::test_system::TestSystem;
use support::*;

const SYSTEM: &str = "testcrm";
const PATH: &str = "/api/v1/counterparties";
const BEARER: &str = "Authorization: Bearer api-token-for-tests";
const JSON: &str = "Content-Type: application/json";

/// Three records; each sent to the CRM at start.
const FILE: &str = concat!(
    r#"{"id":"k1","name":"Альфа","phones":["84951110001"]}"#,
    "\n",
    r#"{"id":"k2","name":"Бета","phones":["84951110002"]}"#,
    "\n",
    r#"{"id":"k3","name":"Гамма","phones":["84951110003"]}"#,
    "\n",
);

/// The test system over `crm` sending batches of `batch`, unlimited (the
/// limiter's own tests bound it): what every test here registers.
fn system(crm_url: &str, batch: usize) -> TestSystem {
    let spec = SystemSpec::new(SYSTEM)
        .expect("name")
        .with_fields(&["name", "phones"])
        .expect("fields");
    TestSystem::new(spec, crm_url)
        .with_limit(PublishedLimit::Bucket {
            burst: 1_000,
            per_second: 10_000.0,
        })
        .with_batch_size(batch)
}

/// The `name` of each API write of `external_id`, in order.
fn names_written(crm: &MockCrm, external_id: &str) -> Vec<Value> {
    crm.writes_of(external_id)
        .iter()
        .map(|fields| fields["name"].clone())
        .collect()
}

const FAST_RETRIES: &str = "retry_first = \"10ms\"\nretry_max = \"100ms\"\n";

async fn start(crm: &MockCrm, table: &str, batch: usize) -> TestGateway {
    start_on(crm, FILE, table, batch).await
}

/// [`start`] with `file` as the directory.
async fn start_on(crm: &MockCrm, file: &str, table: &str, batch: usize) -> TestGateway {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), file).expect("write directory");
    let path = dir.path().join("gateway.toml");
    let text = config_text(dir.path(), &format!("\n[sync.{SYSTEM}]\n{table}"));
    let config = Config::parse(&text, &path, &|_| None).expect("test config is valid");
    let system = system(&crm.url(), batch);
    let gateway = Gateway::start_with(config, vec![Arc::new(system) as Arc<dyn System>])
        .await
        .expect("gateway starts");
    let addr = gateway.local_addr();
    TestGateway {
        gateway: Some(gateway),
        addr,
        dir,
    }
}

async fn push(addr: SocketAddr, id: &str, name: &str, phone: &str) {
    let body = format!(r#"[{{"id":"{id}","name":"{name}","phones":["{phone}"]}}]"#);
    let reply = request(addr, "POST", PATH, &[JSON, BEARER], body.as_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

async fn outbox(gw: &TestGateway, state: Option<OutboxState>) -> Vec<OutboxRow> {
    gw.gateway()
        .sync_store()
        .expect("sync store")
        .outbox_page(OutboxQuery {
            system: Some(SYSTEM.into()),
            state,
            limit: 1_000,
            ..OutboxQuery::default()
        })
        .await
        .expect("outbox read")
}

/// Polls (async) until `cond` holds, or panics naming `what`.
async fn until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The feed has queued every change so far, and the worker sent them all.
async fn drained(gw: &TestGateway) {
    settled(gw).await;
    until(Duration::from_secs(20), "the outbox drains", || async {
        outbox(gw, Some(OutboxState::Pending)).await.is_empty()
    })
    .await;
}

/// The feed has queued every change so far.
async fn settled(gw: &TestGateway) {
    let feed = gw.gateway().sync_feed().expect("a feed");
    tokio::time::timeout(Duration::from_secs(20), feed.settled())
        .await
        .expect("the feed settles");
}

/// The dead row of record `key`, once there is one (10 s at most).
async fn dead_row(gw: &TestGateway, key: &str) -> OutboxRow {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let dead = outbox(gw, Some(OutboxState::Dead)).await;
        if let Some(row) = dead.into_iter().find(|r| r.record_key == key) {
            return row;
        }
        assert!(tokio::time::Instant::now() < deadline, "{key} never dead");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn remote_id(gw: &TestGateway, id: &str) -> Option<String> {
    gw.gateway()
        .sync_store()
        .expect("sync store")
        .idmap_get(SYSTEM, "company", id)
        .await
        .expect("id-map read")
        .and_then(|row| row.remote_id)
}

#[tokio::test]
async fn records_go_out_in_order_per_record_under_concurrency_four() {
    let crm = MockCrm::start().await;
    // Each batch a while in flight, so that two naming one record would
    // overlap in the mock.
    crm.set_latency(Duration::from_millis(2));
    let gw = start(&crm, "concurrency = 4\n", 3).await;
    drained(&gw).await;
    // 20 records, 5 versions each, pushed as fast as the API takes them.
    for version in 1..=5 {
        for n in 0..20 {
            push(
                gw.addr,
                &format!("p{n}"),
                &format!("P{n} v{version}"),
                &format!("8912555{n:04}"),
            )
            .await;
        }
    }
    drained(&gw).await;
    {
        assert_eq!(
            crm.counters().overlaps,
            0,
            "two requests carried one record at once"
        );
        for n in 0..20 {
            let external = format!("p{n}");
            let versions: Vec<u32> = names_written(&crm, &external)
                .iter()
                .map(|name| {
                    let name = name.as_str().unwrap_or_default();
                    name.rsplit('v')
                        .next()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                })
                .collect();
            assert!(
                versions.windows(2).all(|w| w[0] < w[1]),
                "{external}: {versions:?}"
            );
            assert_eq!(
                versions.last(),
                Some(&5),
                "{external} ends at its last state"
            );
            assert_eq!(crm.creates_of(&external), 1, "{external} created once");
        }
    }
    for n in 0..20 {
        assert!(remote_id(&gw, &format!("p{n}")).await.is_some());
    }
    assert!(
        outbox(&gw, None).await.is_empty(),
        "every row confirmed and deleted"
    );
}

#[tokio::test]
async fn a_hundred_updates_while_the_crm_is_paused_make_one_write_of_the_last_state() {
    let crm = MockCrm::start().await;
    let gw = start(&crm, "", 10).await;
    drained(&gw).await;
    let before = crm.writes_of("k1").len();
    crm.pause();
    for i in 1..=100 {
        push(gw.addr, "k1", &format!("Альфа {i}"), "84951110001").await;
    }
    // Everything queued (the feed has written the last state).
    until(
        Duration::from_secs(10),
        "the last change queued",
        || async {
            outbox(&gw, Some(OutboxState::Pending))
                .await
                .iter()
                .any(|r| r.body.contains("Альфа 100"))
        },
    )
    .await;
    crm.resume();
    drained(&gw).await;
    let writes = names_written(&crm, "k1");
    let after = &writes[before..];
    assert!(
        after.len() <= 2,
        "at most the write in flight when paused and one of the last state: {after:?}"
    );
    assert_eq!(after.last(), Some(&json!("Альфа 100")));
}

#[tokio::test]
async fn failures_are_retried_at_the_backoff_and_a_record_failing_ten_times_is_dead() {
    let crm = MockCrm::start().await;
    // One row a request: the mock fails a whole batch naming a failing
    // record, and k3's failures must not be k1's.
    let gw = start(&crm, FAST_RETRIES, 1).await;
    drained(&gw).await;
    // Three failures, then it goes through.
    crm.fail_times("k2", 3);
    push(gw.addr, "k2", "Бета 2", "84951110002").await;
    drained(&gw).await;
    assert_eq!(
        names_written(&crm, "k2").last().cloned(),
        Some(json!("Бета 2"))
    );
    assert_eq!(crm.failures_left("k2"), 0, "tried until it passed");

    // Failing for good while the CRM answers others: dead after 10.
    crm.set_failing("k3", true);
    push(gw.addr, "k3", "Гамма 2", "84951110003").await;
    let mut n = 0;
    let dead = loop {
        let dead = outbox(&gw, Some(OutboxState::Dead)).await;
        if let Some(row) = dead.into_iter().find(|r| r.record_key == "k3") {
            break row;
        }
        n += 1;
        assert!(n < 1_500, "k3 never dead");
        // Another record's change, so the system keeps answering.
        push(gw.addr, "k1", &format!("Альфа {n}"), "84951110001").await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(dead.attempts, 10);
    assert!(
        dead.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("HTTP 500 INTERNAL_SERVER_ERROR"),
        "{dead:?}"
    );

    // The admin retry sends it once, now that the CRM takes it.
    crm.set_failing("k3", false);
    let writes = crm.writes_of("k3").len();
    let reply = request(
        gw.addr,
        "POST",
        &format!("/api/v1/sync/outbox/{}/retry", dead.id),
        &[BEARER],
        b"",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    drained(&gw).await;
    assert_eq!(crm.writes_of("k3").len(), writes + 1, "sent once");
    assert!(outbox(&gw, None).await.iter().all(|r| r.record_key != "k3"));
}

#[tokio::test]
async fn a_validation_error_is_dead_at_once_with_the_crms_message_and_a_newer_confirmed_row_supersedes_it(
) {
    let crm = MockCrm::start().await;
    let gw = start(&crm, FAST_RETRIES, 5).await;
    drained(&gw).await;
    crm.set_invalid("k2", "ИНН: неверная контрольная сумма");
    push(gw.addr, "k2", "Бета 2", "84951110002").await;
    let dead = dead_row(&gw, "k2").await;
    assert_eq!(dead.attempts, 1, "dead at once");
    assert_eq!(
        dead.last_error.as_deref(),
        Some("ИНН: неверная контрольная сумма")
    );

    // A later change of k2 goes through: retrying the dead one is refused.
    crm.clear_invalid("k2");
    push(gw.addr, "k2", "Бета 3", "84951110002").await;
    drained(&gw).await;
    let reply = request(
        gw.addr,
        "POST",
        &format!("/api/v1/sync/outbox/{}/retry", dead.id),
        &[BEARER],
        b"",
    )
    .await;
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(reply.body.contains("superseded by row"), "{}", reply.body);
}

#[tokio::test]
async fn a_record_the_crm_holds_already_is_adopted_not_created_again() {
    let crm = MockCrm::start().await;
    // As if the gateway had crashed after the CRM created k1 and before
    // the commit: the CRM has it, the id-map does not.
    let seeded = crm.seed(Some("k1"), json!({"name": "Альфа"})).id;
    let gw = start(&crm, "", 10).await;
    drained(&gw).await;
    assert_eq!(crm.creates_of("k1"), 0, "not created again");
    assert_eq!(crm.creates_of("k2"), 1);
    assert_eq!(remote_id(&gw, "k1").await.as_deref(), Some(seeded.as_str()));
    assert_eq!(crm.writes_of("k1").len(), 1, "updated once");
}

#[tokio::test]
async fn a_blocked_crm_gets_probes_only_and_resume_probes_now() {
    let crm = MockCrm::start().await;
    let gw = start(&crm, "block_probe = \"1h\"\n", 10).await;
    drained(&gw).await;
    crm.set_blocked(true);
    push(gw.addr, "k1", "Альфа 2", "84951110001").await;
    until(Duration::from_secs(10), "a blocked answer", || async {
        crm.counters().blocked_answers > 0
            && !outbox(&gw, Some(OutboxState::Pending)).await.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let requests = crm.counters().requests;
    push(gw.addr, "k2", "Бета 2", "84951110002").await;
    settled(&gw).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        crm.counters().requests,
        requests,
        "nothing sent while blocked"
    );
    assert_eq!(
        outbox(&gw, Some(OutboxState::Pending)).await.len(),
        2,
        "changes keep queuing"
    );
    crm.set_blocked(false);
    let reply = request(
        gw.addr,
        "POST",
        "/api/v1/sync/testcrm/resume",
        &[BEARER],
        b"",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    drained(&gw).await;
    assert_eq!(
        names_written(&crm, "k2").last().cloned(),
        Some(json!("Бета 2"))
    );
    let metrics = get(gw.addr, "/metrics").await.body;
    assert!(
        metrics.contains(
            "cti_sync_requests_total{method=\"send\",outcome=\"blocked\",system=\"testcrm\"}"
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_limit_answer_pauses_the_system_for_its_retry_after_and_costs_no_attempt() {
    let crm = MockCrm::start().await;
    let gw = start(&crm, FAST_RETRIES, 10).await;
    drained(&gw).await;
    crm.set_limit_answer(LimitAnswer::RetryAfter429);
    crm.force_limit(1, 1);
    push(gw.addr, "k1", "Альфа 2", "84951110001").await;
    until(Duration::from_secs(10), "a limit answer", || async {
        !crm.limit_answer_times().is_empty()
    })
    .await;
    let limited_at = crm.limit_answer_times()[0];
    let requests = crm.counters().requests;
    push(gw.addr, "k2", "Бета 2", "84951110002").await;
    settled(&gw).await;
    let pending = outbox(&gw, Some(OutboxState::Pending)).await;
    assert!(
        pending.iter().all(|r| r.attempts == 0),
        "attempts unchanged: {pending:?}"
    );
    drained(&gw).await;
    assert!(crm.counters().requests > requests, "sent after the pause");
    let arrivals = crm.arrivals();
    let early: Vec<_> = arrivals
        .iter()
        .filter(|at| {
            **at > limited_at && at.duration_since(limited_at) < Duration::from_millis(900)
        })
        .collect();
    assert!(early.is_empty(), "requests before Retry-After: {early:?}");
    let writes: Vec<_> = crm
        .writes()
        .iter()
        .map(|w| {
            let name = w.fields.as_ref().and_then(|f| f.get("name")).cloned();
            (w.external_id.clone(), name.unwrap_or(Value::Null))
        })
        .collect();
    assert!(
        writes.contains(&("k1".into(), json!("Альфа 2"))),
        "{writes:?}"
    );
    assert!(
        writes.contains(&("k2".into(), json!("Бета 2"))),
        "{writes:?}"
    );
}

#[tokio::test]
async fn an_outage_grows_the_systems_backoff_not_the_rows_attempts() {
    let crm = MockCrm::start().await;
    let gw = start(&crm, FAST_RETRIES, 1).await;
    drained(&gw).await;
    crm.set_status(503);
    for (id, name, phone) in [
        ("k1", "Альфа 2", "84951110001"),
        ("k2", "Бета 2", "84951110002"),
        ("k3", "Гамма 2", "84951110003"),
    ] {
        push(gw.addr, id, name, phone).await;
    }
    settled(&gw).await;
    // Many times the row backoff (10-100 ms): each row would be dead by now
    // if the outage counted against it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let requests = crm.counters().requests;
    let pending = outbox(&gw, Some(OutboxState::Pending)).await;
    assert_eq!(pending.len(), 3, "{pending:?}");
    assert!(pending.iter().all(|r| r.attempts <= 1), "{pending:?}");
    assert!(outbox(&gw, Some(OutboxState::Dead)).await.is_empty());
    // One request per system wait, not one per row per row wait.
    assert!(requests < 60, "{requests} requests in 2 s of outage");
    crm.set_status(200);
    drained(&gw).await;
    assert_eq!(
        names_written(&crm, "k3").last().cloned(),
        Some(json!("Гамма 2"))
    );
}

/// Set in the child gateway's environment: `<config file>|<CRM address>`.
const CHILD: &str = "CTI_SYNC_RUNTIME_CHILD";

/// Not a test of its own: the child gateway of
/// [`kill_9_during_a_drain_loses_nothing_and_creates_nothing_twice`], run
/// by it as this binary with [`CHILD`] set; without it, does nothing.
#[tokio::test]
async fn child_gateway() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let (config, crm_url) = spec.split_once('|').expect("config|crm");
    let config = Config::load(Path::new(config), &|_| None).expect("child config");
    let system = system(crm_url, 50);
    let _gateway = Gateway::start_with(config, vec![Arc::new(system) as Arc<dyn System>])
        .await
        .expect("child gateway starts");
    // Until killed.
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

fn spawn_child(config: &Path, crm_url: &str) -> tokio::process::Child {
    tokio::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "child_gateway",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, format!("{}|{crm_url}", config.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("child gateway")
}

/// Rows in the sync file's outbox, read beside the running child (WAL).
fn outbox_rows(sync_file: &Path) -> Option<i64> {
    let conn = rusqlite::Connection::open_with_flags(
        sync_file,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()?;
    conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
        .ok()
}

#[tokio::test]
async fn kill_9_during_a_drain_loses_nothing_and_creates_nothing_twice() {
    const RECORDS: usize = 2_000;
    let crm = MockCrm::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file: String = (0..RECORDS)
        .map(|i| {
            format!("{{\"id\":\"c{i:04}\",\"name\":\"Клиент {i}\",\"phones\":[\"8916{i:07}\"]}}\n")
        })
        .collect();
    std::fs::write(dir.path().join("counterparties.jsonl"), file).expect("write directory");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        config_text(dir.path(), &format!("\n[sync.{SYSTEM}]\n{FAST_RETRIES}")),
    )
    .expect("write config");
    let sync_file = cti_gateway::gateway::sync_store_path(&dir.path().join("store.sqlite"));
    let writes = || crm.counters().writes as usize;

    // Three kills at a random moment of the drain...
    for round in 0..3 {
        let mut child = spawn_child(&config, &crm.url());
        let from = writes();
        let wait = 50 + round * 150;
        until(Duration::from_secs(60), "the child sends", || async {
            writes() >= from + wait
        })
        .await;
        child.kill().await.expect("SIGKILL");
    }
    // ...and one between the CRM's accept and the gateway's commit: the
    // next batch is written, then its answer held until released.
    let hold_once = Arc::new(AtomicBool::new(true));
    let held = Arc::new(AtomicU32::new(0));
    let release = Arc::new(AtomicBool::new(false));
    {
        let (hold_once, held, release) = (
            Arc::clone(&hold_once),
            Arc::clone(&held),
            Arc::clone(&release),
        );
        crm.on_write(move |_written| {
            let hold = hold_once.swap(false, Ordering::SeqCst);
            let (held, release) = (Arc::clone(&held), Arc::clone(&release));
            async move {
                if hold {
                    held.fetch_add(1, Ordering::SeqCst);
                    while !release.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                true
            }
        });
    }
    let mut child = spawn_child(&config, &crm.url());
    until(Duration::from_secs(60), "a write held", || async {
        held.load(Ordering::SeqCst) == 1
    })
    .await;
    child.kill().await.expect("SIGKILL");
    release.store(true, Ordering::SeqCst);

    // The last run drains everything.
    let mut child = spawn_child(&config, &crm.url());
    until(
        Duration::from_secs(120),
        "every record in the CRM",
        || async { crm.record_count() == RECORDS },
    )
    .await;
    until(Duration::from_secs(60), "the outbox drained", || async {
        outbox_rows(&sync_file) == Some(0)
    })
    .await;
    child.kill().await.expect("SIGKILL");
    let creates = crm.creates_per_external_id();
    let twice: Vec<_> = creates.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "created other than once: {twice:?}");
    assert_eq!(creates.len(), RECORDS);
    assert!(
        crm.counters().lookups_found >= 1,
        "the write held at the kill was adopted, not created again"
    );
    let conn = rusqlite::Connection::open(&sync_file).expect("sync file");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity check");
    assert_eq!(check, "ok");
    let unlinked: i64 = conn
        .query_row(
            "SELECT count(*) FROM idmap WHERE system = ?1 AND remote_id IS NULL",
            [SYSTEM],
            |r| r.get(0),
        )
        .expect("id-map");
    assert_eq!(unlinked, 0, "every record linked to its CRM copy");
}

#[tokio::test]
async fn resume_names_what_it_cannot_resume() {
    // Configured, but no module of this build sends to it.
    let gw = support::start("\n[sync.bitrix24]\n").await;
    let resume = |system: &'static str| {
        let path = format!("/api/v1/sync/{system}/resume");
        async move { request(gw.addr, "POST", &path, &[BEARER], b"").await }
    };
    let reply = resume("bitrix24").await;
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(reply.body.contains("no worker"), "{}", reply.body);
    assert_eq!(resume("nosuch").await.status, 404);
    let reply = request(gw.addr, "POST", "/api/v1/sync/bitrix24/resume", &[], b"").await;
    assert_eq!(reply.status, 401);
    let reply = request(
        gw.addr,
        "GET",
        "/api/v1/sync/bitrix24/resume",
        &[BEARER],
        b"",
    )
    .await;
    assert_eq!(reply.status, 405);
}

#[tokio::test]
async fn a_blocked_crm_is_probed_every_block_probe_and_sending_resumes_when_it_answers() {
    let crm = MockCrm::start().await;
    let gw = start(&crm, "block_probe = \"1s\"\n", 10).await;
    drained(&gw).await;
    crm.set_blocked(true);
    let before = crm.counters().requests;
    push(gw.addr, "k1", "Альфа 2", "84951110001").await;
    push(gw.addr, "k2", "Бета 2", "84951110002").await;
    settled(&gw).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let during = crm.counters().requests - before;
    // The first request, then a probe a second: never a request per row.
    assert!((1..=4).contains(&during), "{during} requests while blocked");
    crm.set_blocked(false);
    drained(&gw).await;
    assert_eq!(
        names_written(&crm, "k1").last().cloned(),
        Some(json!("Альфа 2"))
    );
    assert_eq!(
        names_written(&crm, "k2").last().cloned(),
        Some(json!("Бета 2"))
    );
}

/// A series' value in `/metrics` (0 when absent).
async fn metric(addr: SocketAddr, series: &str) -> f64 {
    get(addr, "/metrics")
        .await
        .body
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

async fn say_name_title(addr: SocketAddr, number: &str) -> String {
    let reply = soap(addr, &say_name_envelope(number)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    element_text(&say_name_data(&reply), "title")
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echo_storm_writes_each_change_once_each_way_and_queues_nothing_back() {
    const N: usize = 200;
    // p000..: changed here (pushed) and sent; e000..: edited in the CRM.
    // Two sets, so that no push races an edit of the same record.
    let file: String = (0..N)
        .flat_map(|i| {
            [
                format!("{{\"id\":\"p{i:03}\",\"name\":\"Пуш {i}\",\"phones\":[\"8916100{i:04}\"]}}\n"),
                format!("{{\"id\":\"e{i:03}\",\"name\":\"Правка {i}\",\"phones\":[\"8916200{i:04}\"]}}\n"),
            ]
        })
        .collect();
    let crm = MockCrm::start().await;
    let gw = start_on(&crm, &file, "", 50).await;
    let addr = gw.addr;
    drained(&gw).await;
    assert_eq!(crm.record_count(), 2 * N, "every record created first");
    let echoes = format!("cti_sync_echoes_suppressed_total{{system=\"{SYSTEM}\"}}");
    let enqueued =
        |op: &str| format!("cti_sync_feed_enqueued_total{{op=\"{op}\",system=\"{SYSTEM}\"}}");
    let enqueued_before = metric(addr, &enqueued("upsert")).await;
    let writes_before = crm.writes_per_external_id();
    assert_eq!(metric(addr, &echoes).await, 0.0);

    // From now on every write, ours or a user's, comes back as a webhook.
    let system = system(&crm.url(), 50);
    crm.set_webhook(Some(WebhookTarget {
        url: format!("http://{addr}/api/v1/sync/{SYSTEM}/webhook"),
        header: system.webhook_header().to_owned(),
        token: system.webhook_token().to_owned(),
    }));
    let added = |i: usize| format!("8916300{i:04}");
    for i in 0..N {
        push(
            addr,
            &format!("p{i:03}"),
            &format!("Пуш {i} изменён"),
            &format!("8916100{i:04}"),
        )
        .await;
        // A user adds a number to e<i> in the CRM.
        let record = crm
            .record_by_external(&format!("e{i:03}"))
            .expect("created in the CRM");
        let mut phones = record.fields["phones"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        phones.push(json!(added(i)));
        crm.edit(&record.id, json!({ "phones": phones }))
            .expect("edited");
    }

    // Everything sent, every webhook in and applied, every echo counted.
    let store = gw.gateway().sync_store().expect("sync store");
    until(Duration::from_secs(60), "the storm settles", || async {
        let c = crm.counters();
        c.webhooks_sent + c.webhooks_failed == 2 * N as u64
            && store.sync_depth(SYSTEM).await.expect("depth").inbox == 0
            && outbox(&gw, Some(OutboxState::Pending)).await.is_empty()
    })
    .await;
    settled(&gw).await;
    assert_eq!(crm.counters().webhooks_failed, 0, "every webhook taken");

    // The CRM got exactly the 200 pushed changes: one write of each p, none
    // of an e (an edit there is not sent back).
    let writes = crm.writes_per_external_id();
    for i in 0..N {
        let (p, e) = (format!("p{i:03}"), format!("e{i:03}"));
        let new = |key: &str| writes.get(key).copied().unwrap_or(0) - writes_before[key];
        assert_eq!(new(&p), 1, "{p}: {writes:?}");
        assert_eq!(new(&e), 0, "{e} written back");
        assert_eq!(
            names_written(&crm, &p).last(),
            Some(&json!(format!("Пуш {i} изменён")))
        );
    }
    // The directory got exactly the 200 edits: each added number answers
    // its record, nothing else of it changed, no conflict.
    for i in 0..N {
        assert_eq!(say_name_title(addr, &added(i)).await, format!("Правка {i}"));
        assert_eq!(
            say_name_title(addr, &format!("8916100{i:04}")).await,
            format!("Пуш {i} изменён")
        );
    }
    let conflicts = store
        .conflicts_page(cti_gateway::store::ConflictQuery {
            system: Some(SYSTEM.into()),
            since: None,
            limit: 10,
        })
        .await
        .expect("conflicts");
    assert!(conflicts.is_empty(), "{conflicts:?}");
    // Each of our writes came back and was told from a change.
    assert_eq!(metric(addr, &echoes).await, N as f64);

    // Nothing queued back, then or a little later.
    tokio::time::sleep(Duration::from_secs(1)).await;
    settled(&gw).await;
    assert!(outbox(&gw, None).await.is_empty(), "the outbox is empty");
    assert_eq!(
        metric(addr, &enqueued("upsert")).await - enqueued_before,
        N as f64,
        "only the pushes were queued"
    );
    assert_eq!(metric(addr, &enqueued("remove")).await, 0.0);
    assert_eq!(
        crm.counters().writes as usize,
        2 * N + N,
        "creates and the pushes"
    );
}

#[tokio::test]
async fn rows_waiting_through_a_block_die_after_dead_after_without_a_failure_of_their_own() {
    let crm = MockCrm::start().await;
    let gw = start(&crm, "block_probe = \"1h\"\ndead_after = \"1s\"\n", 10).await;
    drained(&gw).await;
    crm.set_blocked(true);
    push(gw.addr, "k1", "Альфа 2", "84951110001").await;
    until(Duration::from_secs(10), "a blocked answer", || async {
        crm.counters().blocked_answers > 0
    })
    .await;
    // Queued while blocked: never sent, never failing of its own.
    push(gw.addr, "k2", "Бета 2", "84951110002").await;
    settled(&gw).await;
    let requests = crm.counters().requests;
    for key in ["k1", "k2"] {
        let dead = dead_row(&gw, key).await;
        assert_eq!(dead.attempts, 0, "{dead:?}");
        assert_eq!(
            dead.last_error.as_deref(),
            Some("pending longer than dead_after (1s) while the system was blocked"),
            "{dead:?}"
        );
    }
    assert!(outbox(&gw, Some(OutboxState::Pending)).await.is_empty());
    assert_eq!(crm.counters().requests, requests, "no request made for it");
}

/// The system's job as `GET /api/v1/sync/status` shows it.
async fn job(addr: SocketAddr) -> Value {
    let reply = request(addr, "GET", "/api/v1/sync/status", &[BEARER], b"").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let status: Value = serde_json::from_str(&reply.body).expect("status JSON");
    status["systems"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["system"] == SYSTEM))
        .map(|s| s["job"].clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_initial_load_is_paced_by_the_pending_rows_and_shows_its_progress_and_eta() {
    const N: usize = 400;
    // Batches of 10, one at a time: the load keeps at most 2 × 10 × 1 rows
    // of the system pending.
    const BOUND: u64 = 20;
    let crm = MockCrm::start().await;
    let gw = start(&crm, "concurrency = 1\n", 10).await;
    let addr = gw.addr;
    drained(&gw).await;
    // Records whose change reports are lost: only the initial load finds them.
    let feed = gw.gateway().sync_feed().expect("a feed").clone();
    feed.drop_reports_for_tests(true);
    let records: Vec<String> = (0..N)
        .map(|i| format!(r#"{{"id":"n{i:03}","name":"Новый {i}","phones":["8916400{i:04}"]}}"#))
        .collect();
    let body = format!("[{}]", records.join(","));
    let reply = request(addr, "POST", PATH, &[JSON, BEARER], body.as_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    feed.drop_reports_for_tests(false);
    settled(&gw).await;
    assert!(outbox(&gw, None).await.is_empty(), "nothing queued yet");

    crm.set_mode(Mode::Slow(Duration::from_millis(10)));
    let path = format!("/api/v1/sync/{SYSTEM}/initial");
    let started = request(addr, "POST", &path, &[BEARER], b"").await;
    assert_eq!(started.status, 202, "{}", started.body);
    let store = gw.gateway().sync_store().expect("sync store");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (mut most_pending, mut under_way) = (0, None);
    let done = loop {
        most_pending = most_pending.max(store.sync_depth(SYSTEM).await.expect("depth").outbox);
        let job = job(addr).await;
        assert_eq!(job["kind"], "initial", "{job}");
        if job["state"] == "done" {
            break job;
        }
        assert_eq!(job["state"], "running", "{job}");
        let sent = job["sent"].as_u64().unwrap_or(0);
        if job["total"] == N && sent > 0 && job["enqueued"].as_u64() < Some(N as u64) {
            assert!(
                job["eta_seconds"].is_u64(),
                "an ETA once rows are sent: {job}"
            );
            under_way = Some(job.clone());
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not done in time: {job}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        most_pending <= BOUND,
        "{most_pending} rows pending at once (bound {BOUND})"
    );
    let under_way = under_way.expect("the status showed the load under way");
    assert_eq!(under_way["pending_bound"], BOUND, "{under_way}");
    assert_eq!(done["total"], N, "{done}");
    assert_eq!(done["enqueued"], N, "{done}");
    assert!(done["error"].is_null(), "{done}");
    crm.set_mode(Mode::Normal);
    drained(&gw).await;
    for i in 0..N {
        assert_eq!(crm.creates_of(&format!("n{i:03}")), 1, "n{i:03}");
    }
}
