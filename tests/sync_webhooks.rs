//! A sync system's webhooks into the inbox, the task that applies it, echo
//! counting, and a system's initial load and relink (issue 18 items 7, 8
//! and 10), over a real gateway on loopback with a test system defined
//! here: it authenticates a header token, its hooks are JSON lists of
//! records, and its list (for a relink) is what the test gives it. It
//! never sends: what the feed queues stays in the outbox.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cti_gateway::config::Config;
use cti_gateway::gateway::sync_store_path;
use cti_gateway::store::{OpenOptions, Store};
use cti_gateway::sync::inbound::{Change, Inbound, RemoteRecord};
use cti_gateway::sync::inbox::Stored;
use cti_gateway::sync::system::{
    Listed, ListedPage, Outcome, OutgoingRow, Page, PublishedLimit, Remote, RemoteFuture, System,
    Webhook, WebhookError, WebhookPath,
};
use cti_gateway::sync::SystemSpec;
use cti_gateway::Gateway;
use support::*;

const SYSTEM: &str = "hookcrm";
const HOOK: &str = "/api/v1/sync/hookcrm/webhook";
const HOOK_TOKEN: &str = "Hook-Token-5a9e";
const HOOK_SECRET: &str = "Hook-Secret-77c1d2";
const WRONG_SECRET: &str = "Wrong-Secret-3b4f90";
const GOOD: &str = "X-Hook-Token: Hook-Token-5a9e";
const BEARER: &str = "Authorization: Bearer api-token-for-tests";
const JSON: &str = "Content-Type: application/json";

/// Three records; `k2` with an INN a relink finds it by.
const FILE: &str = concat!(
    r#"{"id":"k1","name":"Альфа","phones":["84951110001"]}"#,
    "\n",
    r#"{"id":"k2","name":"Бета","inn":"7707083893","kpp":"773601001","phones":["84951110002"]}"#,
    "\n",
    r#"{"id":"k3","name":"Гамма","phones":["84951110003"]}"#,
    "\n",
);

/// The test's system: a header token, JSON hooks, a list set by the test.
struct HookCrm {
    spec: SystemSpec,
    listed: Mutex<Vec<Listed>>,
    /// `Secret`: authenticated by the path's last segment, not the header.
    path: WebhookPath,
}

impl HookCrm {
    fn new() -> Arc<HookCrm> {
        HookCrm::with_path(WebhookPath::Plain)
    }

    fn with_path(path: WebhookPath) -> Arc<HookCrm> {
        Arc::new(HookCrm {
            spec: SystemSpec::new(SYSTEM).expect("name"),
            listed: Mutex::new(Vec::new()),
            path,
        })
    }
}

fn field(value: &serde_json::Value, name: &str) -> Option<String> {
    value.get(name).and_then(|v| v.as_str()).map(str::to_owned)
}

impl System for HookCrm {
    fn spec(&self) -> &SystemSpec {
        &self.spec
    }

    fn published_limit(&self) -> PublishedLimit {
        PublishedLimit::Bucket {
            burst: 1,
            per_second: 1.0,
        }
    }

    fn batch_size(&self) -> usize {
        1
    }

    fn send<'a>(&'a self, _rows: &'a [OutgoingRow]) -> RemoteFuture<'a, Vec<Outcome>> {
        Box::pin(std::future::pending())
    }

    fn find_existing<'a>(
        &'a self,
        _row: &'a OutgoingRow,
    ) -> RemoteFuture<'a, Result<Option<Remote>, Outcome>> {
        Box::pin(std::future::pending())
    }

    fn authenticate(&self, hook: &Webhook<'_>) -> bool {
        match self.path {
            WebhookPath::Secret => hook.secret == Some(HOOK_SECRET),
            _ => {
                hook.headers.get("x-hook-token").map(|v| v.as_bytes())
                    == Some(HOOK_TOKEN.as_bytes())
            }
        }
    }

    fn webhook_path(&self) -> WebhookPath {
        self.path
    }

    /// `[{"id": "7", "name": "...", "phones": [...], "inn": "..."}]`; a
    /// record without a name is deleted there.
    fn parse(&self, hook: &Webhook<'_>) -> Result<Vec<Inbound>, WebhookError> {
        let bad = |what: &str| WebhookError { what: what.into() };
        // A system of several hooks: only its `company` hook is known.
        if self.path == WebhookPath::Named && hook.name != Some("company") {
            return Err(bad("no such hook: this system has the hook company"));
        }
        let value: serde_json::Value =
            serde_json::from_slice(hook.body).map_err(|_| bad("the body is not JSON"))?;
        let list = value
            .as_array()
            .ok_or_else(|| bad("the body is not a list"))?;
        list.iter()
            .map(|r| {
                let id = field(r, "id").ok_or_else(|| bad("a record has no id"))?;
                let change = match field(r, "name") {
                    None => Change::Deleted,
                    Some(name) => Change::Upsert(Box::new(RemoteRecord {
                        name: Some(name),
                        inn: field(r, "inn"),
                        kpp: field(r, "kpp"),
                        phones: r.get("phones").and_then(|p| p.as_array()).map(|p| {
                            p.iter()
                                .filter_map(|n| n.as_str())
                                .map(Into::into)
                                .collect()
                        }),
                        ..RemoteRecord::default()
                    })),
                };
                Ok(Inbound {
                    system: SYSTEM.into(),
                    kind: "company".into(),
                    remote_id: id,
                    change,
                })
            })
            .collect()
    }

    fn list<'a>(&'a self, _after: Option<&'a str>) -> RemoteFuture<'a, Result<Page, Outcome>> {
        Box::pin(async { Ok(Page::default()) })
    }

    fn list_linked<'a>(
        &'a self,
        _after: Option<&'a str>,
    ) -> RemoteFuture<'a, Result<ListedPage, Outcome>> {
        let listed = self.listed.lock().expect("list").clone();
        Box::pin(async move {
            Ok(ListedPage {
                records: listed,
                next: None,
            })
        })
    }
}

/// `sync`: keys of `[sync]`; `system`: keys of `[sync.hookcrm]`.
async fn start_hooked(
    dir: tempfile::TempDir,
    crm: &Arc<HookCrm>,
    sync: &str,
    system: &str,
) -> TestGateway {
    let path = dir.path().join("gateway.toml");
    let extra = format!("[sync]\n{sync}\n[sync.{SYSTEM}]\n{system}\n");
    let text = config_text(dir.path(), &extra);
    let config = Config::parse(&text, &path, &|_| None).expect("test config is valid");
    let gateway = Gateway::start_with(config, vec![Arc::clone(crm) as Arc<dyn System>])
        .await
        .expect("gateway starts");
    let addr = gateway.local_addr();
    TestGateway {
        gateway: Some(gateway),
        addr,
        dir,
    }
}

async fn start_fresh(crm: &Arc<HookCrm>, sync: &str, system: &str) -> TestGateway {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), FILE).expect("write directory");
    start_hooked(dir, crm, sync, system).await
}

async fn settled(gw: &TestGateway) {
    let feed = gw.gateway().sync_feed().expect("a feed");
    tokio::time::timeout(Duration::from_secs(30), feed.settled())
        .await
        .expect("the feed settles");
}

fn store(gw: &TestGateway) -> &Store {
    gw.gateway().sync_store().expect("a sync store")
}

async fn hook(addr: std::net::SocketAddr, headers: &[&str], body: &str) -> Reply {
    post(addr, HOOK, headers, body.as_bytes()).await
}

/// The value of the metric line that starts with `series`.
async fn metric(addr: std::net::SocketAddr, series: &str) -> f64 {
    let reply = get(addr, "/metrics").await;
    reply
        .body
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
}

fn refused(reason: &str) -> String {
    format!("cti_sync_inbox_refused_total{{reason=\"{reason}\",system=\"{SYSTEM}\"}}")
}

async fn say_name_title(addr: std::net::SocketAddr, number: &str) -> String {
    let reply = soap(addr, &say_name_envelope(number)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    element_text(&say_name_data(&reply), "title")
        .unwrap_or_default()
        .to_owned()
}

async fn eventually_async<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const RECORD_7: &str = r#"[{"id":"7","name":"Из вебхука","phones":["89125550007"]}]"#;

#[tokio::test]
async fn refused_webhooks_are_answered_counted_and_store_nothing() {
    let crm = HookCrm::new();
    let mut gw = start_fresh(&crm, "", "").await;
    let addr = gw.addr;

    let too_large = format!(
        "POST {HOOK} HTTP/1.1\r\nHost: {addr}\r\n{GOOD}\r\n{JSON}\r\nContent-Length: {}\r\n\r\n[]",
        2 * 1024 * 1024
    );
    assert_eq!(raw(addr, too_large.as_bytes()).await.status, 413);
    assert_eq!(metric(addr, &refused("too_large")).await, 1.0);

    let wrong = hook(addr, &["X-Hook-Token: nope", JSON], RECORD_7).await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    let none = hook(addr, &[JSON], RECORD_7).await;
    assert_eq!(none.status, 401, "{}", none.body);
    assert_eq!(metric(addr, &refused("unauthenticated")).await, 2.0);

    let malformed = hook(addr, &[GOOD, JSON], r#"{"id":"7"}"#).await;
    assert_eq!(malformed.status, 400);
    assert!(
        malformed.body.contains("not a list") && malformed.body.contains("nothing was stored"),
        "{}",
        malformed.body
    );
    let large = format!("{}{{}}", " ".repeat(100 * 1024));
    assert_eq!(hook(addr, &[GOOD, JSON], &large).await.status, 400);
    let large_wrong = hook(addr, &["X-Hook-Token: nope", JSON], &large).await;
    assert_eq!(large_wrong.status, 401);
    assert_eq!(metric(addr, &refused("malformed")).await, 2.0);
    assert_eq!(metric(addr, &refused("unauthenticated")).await, 3.0);
    assert_eq!(
        store(&gw).sync_depth(SYSTEM).await.expect("depth").inbox,
        0,
        "nothing stored"
    );
    assert_eq!(say_name_title(addr, "89125550007").await, "");

    let unknown = post(addr, "/api/v1/sync/nosuch/webhook", &[GOOD, JSON], b"[]").await;
    assert_eq!(unknown.status, 404);
    let segment = post(addr, &format!("{HOOK}/extra"), &[GOOD, JSON], b"[]").await;
    assert_eq!(segment.status, 404, "a plain system takes no segment");
    let get_hook = get(addr, HOOK).await;
    assert_eq!(get_hook.status, 405);
    gw.stop().await;
}

#[tokio::test]
async fn a_webhook_from_an_address_not_allowed_is_403() {
    let crm = HookCrm::new();
    let mut gw = start_fresh(&crm, "", "allow_from = [\"127.0.0.2\"]").await;
    let addr = gw.addr;
    let refused_reply = request_from("127.0.0.3", addr, "POST", HOOK, &[GOOD, JSON], b"[]").await;
    assert_eq!(refused_reply.status, 403, "{}", refused_reply.body);
    assert_eq!(metric(addr, &refused("address")).await, 1.0);
    let allowed = request_from("127.0.0.2", addr, "POST", HOOK, &[GOOD, JSON], b"[]").await;
    assert_eq!(allowed.status, 200, "{}", allowed.body);
    // The admin API is not the webhooks' list: api.allow_from is empty.
    let status = get_with(addr, "/api/v1/sync/status", &[BEARER]).await;
    assert_eq!(status.status, 200);
    gw.stop().await;
}

async fn get_with(addr: std::net::SocketAddr, path: &str, headers: &[&str]) -> Reply {
    request(addr, "GET", path, headers, b"").await
}

#[tokio::test]
async fn a_full_inbox_or_outbox_answers_503() {
    let crm = HookCrm::new();
    // The feed queues the file's three records; nothing sends them.
    let mut gw = start_fresh(&crm, "max_pending = 3", "").await;
    settled(&gw).await;
    assert_eq!(
        store(&gw).sync_depth(SYSTEM).await.expect("depth").outbox,
        3
    );
    let full = hook(gw.addr, &[GOOD, JSON], RECORD_7).await;
    assert_eq!(full.status, 503, "{}", full.body);
    assert!(full.header("retry-after").is_some());
    assert_eq!(metric(gw.addr, &refused("full")).await, 1.0);
    assert_eq!(store(&gw).sync_depth(SYSTEM).await.expect("depth").inbox, 0);
    gw.stop().await;
}

#[tokio::test]
async fn a_webhooks_record_reaches_the_directory_and_its_echo_is_counted_writing_nothing() {
    let crm = HookCrm::new();
    let mut gw = start_fresh(&crm, "", "").await;
    let addr = gw.addr;
    settled(&gw).await;
    // Over 64 KiB of JSON (whitespace): checked on the blocking pool.
    let padded = format!("{}{RECORD_7}", " ".repeat(100 * 1024));
    let taken = hook(addr, &[GOOD, JSON], &padded).await;
    assert_eq!(taken.status, 200, "{}", taken.body);
    eventually_async("the webhook's record answers SayName", || async {
        say_name_title(addr, "+7 912 555-00-07").await == "Из вебхука"
    })
    .await;
    eventually_async("the applied row is deleted", || async {
        store(&gw).sync_depth(SYSTEM).await.expect("depth").inbox == 0
    })
    .await;
    assert_eq!(
        metric(addr, "cti_sync_inbox_received_total{system=\"hookcrm\"}").await,
        1.0
    );
    let link = store(&gw)
        .idmap_by_remote(SYSTEM, "company", "7")
        .await
        .expect("read")
        .expect("linked");
    settled(&gw).await;
    let outbox_before = store(&gw).sync_depth(SYSTEM).await.expect("depth").outbox;

    // The same record again (our own change coming back, or a repeat).
    let again = hook(addr, &[GOOD, JSON], RECORD_7).await;
    assert_eq!(again.status, 200);
    eventually_async("the echo is counted", || async {
        metric(addr, "cti_sync_echoes_suppressed_total{system=\"hookcrm\"}").await == 1.0
    })
    .await;
    eventually_async("the echo's row is deleted", || async {
        store(&gw).sync_depth(SYSTEM).await.expect("depth").inbox == 0
    })
    .await;
    settled(&gw).await;
    let after = store(&gw)
        .idmap_by_remote(SYSTEM, "company", "7")
        .await
        .expect("read")
        .expect("linked");
    assert_eq!(after, link, "the id-map is as it was");
    assert_eq!(
        store(&gw).sync_depth(SYSTEM).await.expect("depth").outbox,
        outbox_before,
        "nothing enqueued"
    );
    gw.stop().await;
}

/// CRM-only records created by webhooks in a storm (1,000 records, 50 to a
/// hook, as an import in the CRM sends them) must reach SayName at about
/// the rate they arrive: they used to cost a second each (the CRM-only
/// source's fixed pace with one waiter at a time), ~1,000 s for these.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_crm_only_records_reaches_say_name_at_the_rate_it_arrives() {
    const RECORDS: usize = 1_000;
    const PER_HOOK: usize = 50;
    /// Far above what the storm needs on a loaded debug build, far below
    /// the ~1,000 s of a second per record.
    const BOUND: Duration = Duration::from_secs(60);
    let crm = HookCrm::new();
    let mut gw = start_fresh(&crm, "", "").await;
    let addr = gw.addr;
    settled(&gw).await;
    let number = |i: usize| format!("8912{:07}", 6_000_000 + i);
    let record = |i: usize, name: &str| serde_json::json!({"id": format!("storm{i}"), "name": name, "phones": [number(i)]});
    let started = std::time::Instant::now();
    let hooks: Vec<Vec<serde_json::Value>> = (0..RECORDS)
        .collect::<Vec<_>>()
        .chunks(PER_HOOK)
        .map(|chunk| {
            chunk
                .iter()
                .map(|&i| record(i, &format!("Клиент {i}")))
                .collect()
        })
        .collect();
    for (n, mut body) in hooks.into_iter().enumerate() {
        // A record created in one hook and edited in the next (and the
        // first one edited by the last hook): each must end as edited.
        if n > 0 {
            let edited = (n - 1) * PER_HOOK + 7;
            body.push(record(edited, &format!("Клиент {edited} исправлен")));
        }
        if n == RECORDS / PER_HOOK - 1 {
            body.push(record(0, "Клиент 0 исправлен"));
        }
        let body = serde_json::Value::Array(body).to_string();
        let taken = hook(addr, &[GOOD, JSON], &body).await;
        assert_eq!(taken.status, 200, "{}", taken.body);
    }
    loop {
        let left = store(&gw).sync_depth(SYSTEM).await.expect("depth").inbox;
        if left == 0 {
            break;
        }
        assert!(
            started.elapsed() < BOUND,
            "{left} of {} webhook rows still not applied after {:?}",
            RECORDS / PER_HOOK,
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let applied = started.elapsed();
    for i in 0..RECORDS {
        let edited = i == 0 || (i % PER_HOOK == 7 && i + PER_HOOK < RECORDS);
        let expected = if edited {
            format!("Клиент {i} исправлен")
        } else {
            format!("Клиент {i}")
        };
        assert_eq!(
            say_name_title(addr, &number(i)).await,
            expected,
            "record {i}"
        );
    }
    let answered = started.elapsed();
    println!(
        "BENCH_RESULT crm_only_storm_records={RECORDS} applied_ms={} answered_ms={}",
        applied.as_millis(),
        answered.as_millis()
    );
    assert!(
        answered < BOUND,
        "{RECORDS} CRM-only records took {answered:?} to answer SayName (applied in {applied:?}); bound {BOUND:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn rows_left_in_the_inbox_are_applied_at_start() {
    let crm = HookCrm::new();
    let mut gw = start_fresh(&crm, "", "").await;
    gw.stop().await;
    let dir = std::mem::replace(&mut gw.dir, tempfile::tempdir().expect("temp dir"));
    // As a crash would leave it: committed, never applied.
    let path = sync_store_path(&dir.path().join("store.sqlite"));
    let sync = Store::open_with_options(&path, &prometheus::Registry::new(), &OpenOptions::sync())
        .expect("the sync store opens");
    // First a row that can never apply (set aside), then a good one.
    let never = Stored {
        name: None,
        content_type: None,
        body: "no longer parses".into(),
    };
    sync.inbox_append(SYSTEM, never.encode())
        .await
        .expect("appended");
    let stored = Stored {
        name: None,
        content_type: Some("application/json".into()),
        body: RECORD_7.into(),
    };
    sync.inbox_append(SYSTEM, stored.encode())
        .await
        .expect("appended");
    sync.close().await;

    let mut gw = start_hooked(dir, &crm, "", "").await;
    let addr = gw.addr;
    eventually_async("the row left behind is applied", || async {
        say_name_title(addr, "89125550007").await == "Из вебхука"
    })
    .await;
    eventually_async("and deleted", || async {
        store(&gw).sync_depth(SYSTEM).await.expect("depth").inbox == 0
    })
    .await;
    let depth = store(&gw).sync_depth(SYSTEM).await.expect("depth");
    assert_eq!(depth.inbox_failed, 1, "the bad row is set aside");
    assert_eq!(
        metric(addr, "cti_sync_inbox_failed_total{system=\"hookcrm\"}").await,
        1.0
    );
    let status = get_with(addr, "/api/v1/sync/status", &[BEARER]).await;
    assert!(
        status.body.contains(r#""inbox":{"failed":1,"pending":0}"#),
        "{}",
        status.body
    );
    gw.stop().await;
}

/// `system`'s job as the status shows it.
async fn job(addr: std::net::SocketAddr) -> serde_json::Value {
    let reply = get_with(addr, "/api/v1/sync/status", &[BEARER]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let status: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON");
    status["systems"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["system"] == SYSTEM))
        .map(|s| s["job"].clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn an_initial_load_enqueues_what_is_missing_and_is_409_while_it_runs() {
    let crm = HookCrm::new();
    let mut gw = start_fresh(&crm, "", "").await;
    let addr = gw.addr;
    settled(&gw).await;
    let feed = gw.gateway().sync_feed().expect("feed").clone();
    // A change whose report is lost: only a reconcile finds it.
    feed.drop_reports_for_tests(true);
    let push = post(
        addr,
        "/api/v1/counterparties",
        &[BEARER, JSON],
        r#"[{"id":"p1","name":"Потерянный","phones":["84951110009"]}]"#.as_bytes(),
    )
    .await;
    assert_eq!(push.status, 200, "{}", push.body);
    feed.drop_reports_for_tests(false);
    // The feed reads no report meanwhile: the job stays running.
    feed.hold_for_tests(true);
    let push = post(
        addr,
        "/api/v1/counterparties",
        &[BEARER, JSON],
        r#"[{"id":"p2","name":"Второй","phones":["84951110010"]}]"#.as_bytes(),
    )
    .await;
    assert_eq!(push.status, 200, "{}", push.body);

    let path = format!("/api/v1/sync/{SYSTEM}/initial");
    assert_eq!(post(addr, &path, &[], b"").await.status, 401, "Bearer");
    let started = post(addr, &path, &[BEARER], b"").await;
    assert_eq!(started.status, 202, "{}", started.body);
    let again = post(addr, &path, &[BEARER], b"").await;
    assert_eq!(again.status, 409, "{}", again.body);
    assert_eq!(job(addr).await["state"], "running");
    let relink = post(
        addr,
        &format!("/api/v1/sync/{SYSTEM}/relink"),
        &[BEARER],
        b"",
    )
    .await;
    assert_eq!(relink.status, 409, "one job at a time: {}", relink.body);
    assert_eq!(
        post(addr, "/api/v1/sync/nosuch/initial", &[BEARER], b"")
            .await
            .status,
        404
    );
    feed.hold_for_tests(false);
    eventually_async("the initial load is done", || async {
        job(addr).await["state"] == "done"
    })
    .await;
    assert_eq!(job(addr).await["enqueued"], 2, "p1 and p2");
    let rows = store(&gw)
        .outbox_page(cti_gateway::store::OutboxQuery {
            system: Some(SYSTEM.into()),
            limit: 1_000,
            ..Default::default()
        })
        .await
        .expect("outbox");
    let keys: Vec<&str> = rows.iter().map(|r| r.record_key.as_str()).collect();
    assert!(
        keys.contains(&"p1"),
        "the lost change is enqueued: {keys:?}"
    );
    assert!(keys.contains(&"p2"), "{keys:?}");
    assert_eq!(
        keys.iter().filter(|k| **k == "k1").count(),
        1,
        "what was queued is not queued again: {keys:?}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_relink_links_by_external_id_then_business_key_and_creates_nothing() {
    let crm = HookCrm::new();
    let listed = |id: &str, external: Option<&str>, inn: Option<&str>, kpp: Option<&str>| Listed {
        record: Inbound {
            system: SYSTEM.into(),
            kind: "company".into(),
            remote_id: id.into(),
            change: Change::Upsert(Box::new(RemoteRecord {
                name: Some(format!("Запись {id}")),
                inn: inn.map(Into::into),
                kpp: kpp.map(Into::into),
                ..RemoteRecord::default()
            })),
        },
        external_id: external.map(Into::into),
    };
    *crm.listed.lock().expect("list") = vec![
        listed("r1", Some("k1"), None, None),
        listed("r2", None, Some("7707083893"), Some("773601001")),
        listed("r3", None, None, None),
        listed("r4", Some("no-such-record"), None, None),
    ];
    let mut gw = start_fresh(&crm, "", "").await;
    let addr = gw.addr;
    settled(&gw).await;
    let before = gw.gateway().directory().snapshot().len();
    let started = post(
        addr,
        &format!("/api/v1/sync/{SYSTEM}/relink"),
        &[BEARER],
        b"",
    )
    .await;
    assert_eq!(started.status, 202, "{}", started.body);
    eventually_async("the relink is done", || async {
        job(addr).await["state"] == "done"
    })
    .await;
    let job = job(addr).await;
    assert_eq!(
        (&job["seen"], &job["linked"], &job["unmatched"]),
        (&4.into(), &2.into(), &2.into()),
        "{job}"
    );
    for (remote, local) in [("r1", "k1"), ("r2", "k2")] {
        let row = store(&gw)
            .idmap_by_remote(SYSTEM, "company", remote)
            .await
            .expect("read")
            .unwrap_or_else(|| panic!("{remote} linked"));
        assert_eq!(row.local_id, local);
    }
    for remote in ["r3", "r4"] {
        assert!(store(&gw)
            .idmap_by_remote(SYSTEM, "company", remote)
            .await
            .expect("read")
            .is_none());
    }
    assert_eq!(
        gw.gateway().directory().snapshot().len(),
        before,
        "nothing created"
    );
    gw.stop().await;
}

#[tokio::test]
async fn an_outbound_change_of_an_equal_hash_is_never_enqueued() {
    let crm = HookCrm::new();
    let mut gw = start_fresh(&crm, "", "").await;
    settled(&gw).await;
    let rows_of = |rows: &[cti_gateway::store::OutboxRow], key: &str| {
        rows.iter().filter(|r| r.record_key == key).count()
    };
    let outbox = || async {
        store(&gw)
            .outbox_page(cti_gateway::store::OutboxQuery {
                system: Some(SYSTEM.into()),
                limit: 1_000,
                ..Default::default()
            })
            .await
            .expect("outbox")
    };
    let before = outbox().await;
    assert_eq!((rows_of(&before, "k1"), rows_of(&before, "k3")), (1, 1));
    // k1's number written another way (the same after normalizing), k3 renamed.
    let next = gw.dir.path().join("counterparties.next");
    std::fs::write(
        &next,
        FILE.replace("\"84951110001\"", "\"+7 (495) 111-00-01\"")
            .replace("Гамма", "Гамма-2"),
    )
    .expect("write directory");
    std::fs::rename(&next, gw.directory_file()).expect("rename directory");
    eventually_async("the file is read again", || async {
        gw.gateway()
            .directory()
            .lookup_id("k3")
            .is_some_and(|e| e.json().contains("Гамма-2"))
    })
    .await;
    assert!(gw
        .gateway()
        .directory()
        .lookup_id("k1")
        .is_some_and(|e| e.json().contains("+7 (495)")));
    settled(&gw).await;
    let after = outbox().await;
    assert_eq!(rows_of(&after, "k1"), 1, "an equal hash is not a change");
    assert_eq!(rows_of(&after, "k3"), 2, "a rename is");
    gw.stop().await;
}

/// Set in the child gateway of the log test: `<dir>|<listen address>`.
const LOG_CHILD: &str = "CTI_TEST_WEBHOOK_LOG_CHILD";

/// Not a test of its own: the child gateway of the log test below, run by
/// it as this binary with [`LOG_CHILD`] set (a no-op otherwise). Logs
/// everything at `trace` to standard output and runs until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_log_child() {
    let Ok(spec) = std::env::var(LOG_CHILD) else {
        return;
    };
    let (dir, listen) = spec.split_once('|').expect("dir|listen");
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("trace"))
        .with_ansi(false)
        .with_writer(std::io::stdout)
        .init();
    let dir = std::path::Path::new(dir);
    std::fs::write(dir.join("counterparties.jsonl"), FILE).expect("write directory");
    let extra = format!("[sync.{SYSTEM}]\nallow_from = [\"127.0.0.1\"]\n");
    let text = config_text_on(dir, listen, &extra);
    let config =
        Config::parse(&text, &dir.join("gateway.toml"), &|_| None).expect("test config is valid");
    let crm = HookCrm::with_path(WebhookPath::Secret);
    let _gateway = Gateway::start_with(config, vec![crm as Arc<dyn System>])
        .await
        .expect("gateway starts");
    std::future::pending::<()>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_webhook_secret_reaches_the_logs_even_at_trace_level() {
    use support::process::{free_port, Child};
    let dir = tempfile::tempdir().expect("temp dir");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let log_path = dir.path().join("child.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut command =
        std::process::Command::new(std::env::current_exe().expect("this test binary"));
    command
        .args([
            "--exact",
            "webhook_log_child",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(LOG_CHILD, format!("{}|{addr}", dir.path().display()))
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::from(log.try_clone().expect("log fd")))
        .stderr(std::process::Stdio::from(log));
    let child = Child::start(command, addr, "/healthz").await;

    let good = format!("{HOOK}/{HOOK_SECRET}");
    let wrong = format!("{HOOK}/{WRONG_SECRET}");
    assert_eq!(
        post(addr, &good, &[JSON], RECORD_7.as_bytes()).await.status,
        200
    );
    assert_eq!(
        post(addr, &wrong, &[JSON], RECORD_7.as_bytes())
            .await
            .status,
        401
    );
    assert_eq!(
        post(addr, HOOK, &[JSON], RECORD_7.as_bytes()).await.status,
        401
    );
    let elsewhere = request_from("127.0.0.2", addr, "POST", &good, &[JSON], b"[]").await;
    assert_eq!(elsewhere.status, 403);
    let too_large = format!(
        "POST {wrong} HTTP/1.1\r\nHost: {addr}\r\n{JSON}\r\nContent-Length: {}\r\n\r\n[]",
        2 * 1024 * 1024
    );
    assert_eq!(raw(addr, too_large.as_bytes()).await.status, 413);
    eventually_async("the webhook's record is applied", || async {
        say_name_title(addr, "89125550007").await == "Из вебхука"
    })
    .await;
    drop(child);

    let text = std::fs::read_to_string(&log_path).expect("the child's log");
    assert!(
        text.contains("sync webhook committed to the inbox")
            && text.contains("webhook/…")
            && text.contains("not in the endpoint's allow-list"),
        "the child logged what it did:\n{text}"
    );
    for secret in [HOOK_SECRET, WRONG_SECRET] {
        assert!(!text.contains(secret), "{secret} in the log:\n{text}");
    }
}

#[tokio::test]
#[ignore = "needs promtool (Debian package prometheus); .ci/run installs it"]
async fn the_inbox_metrics_pass_promtool_check_metrics() {
    use std::io::Write as _;
    let crm = HookCrm::new();
    let mut gw = start_fresh(&crm, "", "").await;
    assert_eq!(hook(gw.addr, &[GOOD, JSON], RECORD_7).await.status, 200);
    assert_eq!(hook(gw.addr, &[JSON], RECORD_7).await.status, 401);
    let metrics = get(gw.addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(metrics.body.contains("cti_sync_inbox_refused_total"));
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(metrics.body.as_bytes())
        .expect("feed promtool");
    let output = child.wait_with_output().expect("promtool finishes");
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_named_hook_keeps_its_name_in_the_inbox_for_the_parse() {
    let crm = HookCrm::with_path(WebhookPath::Named);
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), FILE).expect("write directory");
    let mut gw = start_hooked(dir, &crm, "", "").await;
    let addr = gw.addr;
    let other = post(
        addr,
        &format!("{HOOK}/deal"),
        &[GOOD, JSON],
        RECORD_7.as_bytes(),
    )
    .await;
    assert_eq!(other.status, 400, "{}", other.body);
    assert!(other.body.contains("no such hook"), "{}", other.body);
    let unnamed = post(addr, HOOK, &[GOOD, JSON], RECORD_7.as_bytes()).await;
    assert_eq!(unnamed.status, 400, "{}", unnamed.body);
    let named = post(
        addr,
        &format!("{HOOK}/company"),
        &[GOOD, JSON],
        RECORD_7.as_bytes(),
    )
    .await;
    assert_eq!(named.status, 200, "{}", named.body);
    // Applied by the task, which parses the stored body again with its name.
    eventually_async("the named hook's record answers SayName", || async {
        say_name_title(addr, "89125550007").await == "Из вебхука"
    })
    .await;
    assert_eq!(
        store(&gw)
            .sync_depth(SYSTEM)
            .await
            .expect("depth")
            .inbox_failed,
        0
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_webhook_is_answered_503_when_the_sync_store_did_not_open() {
    let crm = HookCrm::new();
    let mut gw = start_fresh(&crm, "", "").await;
    gw.stop().await;
    // An empty file where the sync store was: refused (a lost store), so
    // not opened.
    let path = sync_store_path(&gw.store_file());
    std::fs::write(&path, b"").expect("empty sync file");
    for suffix in ["-wal", "-shm"] {
        let mut side = path.clone().into_os_string();
        side.push(suffix);
        let _ = std::fs::remove_file(side);
    }
    let dir = std::mem::replace(&mut gw.dir, tempfile::tempdir().expect("temp dir"));
    let mut gw = start_hooked(dir, &crm, "", "").await;
    assert!(gw.gateway().sync_store().is_none());
    // The system is known: not a 404, but nothing can be stored.
    let reply = hook(gw.addr, &[GOOD, JSON], RECORD_7).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(
        reply.body.contains("sync store is unavailable"),
        "{}",
        reply.body
    );
    assert!(reply.body.contains("nothing was stored"), "{}", reply.body);
    assert!(reply.header("retry-after").is_some());
    // Before anything else: an unknown system is still a 404.
    let reply = request(
        gw.addr,
        "POST",
        "/api/v1/sync/nosuch/webhook",
        &[GOOD, JSON],
        RECORD_7.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    gw.stop().await;
}
