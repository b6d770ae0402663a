//! The pull exchange over a real gateway (`[sync.onec] transport = "pull"`):
//! 1C leases the `onec` outbox's rows and acknowledges them; no worker
//! sends them. The system `onec` is the test system of `tests/support`
//! (its remote unreachable: under pull it is never called).

mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cti_gateway::config::Config;
use cti_gateway::store::{OutboxQuery, OutboxRow, OutboxState};
use cti_gateway::sync::system::System;
use cti_gateway::sync::SystemSpec;
use cti_gateway::Gateway;
use serde_json::{json, Value};
use support::test_system::TestSystem;
use support::*;

const LEASE: &str = "/api/v1/exchange/onec/counterparties/lease";
const ACK: &str = "/api/v1/exchange/onec/ack";
const BEARER: &str = "Authorization: Bearer api-token-for-tests";
const JSON: &str = "Content-Type: application/json";
const REF_A: &str = "0d8f6e5c-1b2a-11ef-9c3d-00155d000001";
const REF_B: &str = "0d8f6e5c-1b2a-11ef-9c3d-00155d000002";

/// `n` records of the file source, each queued for `onec` at start.
fn directory(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!("{{\"id\":\"k{i}\",\"name\":\"Клиент {i}\",\"phones\":[\"8495111{i:04}\"]}}\n")
        })
        .collect()
}

async fn start(records: usize, table: &str) -> TestGateway {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), directory(records))
        .expect("write directory");
    let path = dir.path().join("gateway.toml");
    let text = config_text(dir.path(), &format!("\n[sync.onec]\n{table}"));
    let config = Config::parse(&text, &path, &|_| None).expect("test config is valid");
    let spec = SystemSpec::new("onec")
        .expect("name")
        .with_fields(&["name", "phones"])
        .expect("fields");
    // Port 9 (discard) on loopback: nothing answers; nothing may call it.
    let system = TestSystem::new(spec, "http://127.0.0.1:9");
    let gateway = Gateway::start_with(config, vec![Arc::new(system) as Arc<dyn System>])
        .await
        .expect("gateway starts");
    let addr = gateway.local_addr();
    let gw = TestGateway {
        gateway: Some(gateway),
        addr,
        dir,
    };
    settled(&gw).await;
    gw
}

/// The feed has queued every change so far.
async fn settled(gw: &TestGateway) {
    let feed = gw.gateway().sync_feed().expect("a feed");
    tokio::time::timeout(Duration::from_secs(20), feed.settled())
        .await
        .expect("the feed settles");
}

async fn outbox(gw: &TestGateway, state: OutboxState) -> Vec<OutboxRow> {
    gw.gateway()
        .sync_store()
        .expect("sync store")
        .outbox_page(OutboxQuery {
            system: Some("onec".into()),
            state: Some(state),
            limit: 1_000,
            ..OutboxQuery::default()
        })
        .await
        .expect("outbox read")
}

/// A lease's answer (200 expected).
async fn lease(addr: SocketAddr, query: &str) -> Value {
    let reply = post(addr, &format!("{LEASE}{query}"), &[BEARER], b"").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    serde_json::from_str(&reply.body).expect("lease JSON")
}

fn ids(lease: &Value) -> Vec<i64> {
    lease["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["id"].as_i64().expect("id"))
        .collect()
}

async fn ack(addr: SocketAddr, body: &Value) -> Value {
    let reply = post(addr, ACK, &[BEARER, JSON], body.to_string().as_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    serde_json::from_str(&reply.body).expect("ack JSON")
}

async fn remote_id(gw: &TestGateway, key: &str) -> Option<String> {
    gw.gateway()
        .sync_store()
        .expect("sync store")
        .idmap_get("onec", "company", key)
        .await
        .expect("id-map read")
        .and_then(|row| row.remote_id)
}

async fn push(addr: SocketAddr, id: &str, name: &str, phone: &str) {
    let body = format!(r#"[{{"id":"{id}","name":"{name}","phones":["{phone}"]}}]"#);
    let reply = post(
        addr,
        "/api/v1/counterparties",
        &[JSON, BEARER],
        body.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[tokio::test]
async fn no_worker_sends_and_two_pollers_never_share_a_row() {
    let gw = start(30, "transport = \"pull\"\n").await;
    // Nothing sent: every row waits for 1C.
    assert_eq!(outbox(&gw, OutboxState::Pending).await.len(), 30);
    let (a, b, c) = tokio::join!(
        lease(gw.addr, "?limit=12"),
        lease(gw.addr, "?limit=12"),
        lease(gw.addr, "?limit=12"),
    );
    let mut seen = HashSet::new();
    let mut keys = HashSet::new();
    for answer in [&a, &b, &c] {
        assert!(answer["lease"].as_str().is_some_and(|l| !l.is_empty()));
        for item in answer["items"].as_array().expect("items") {
            assert!(
                seen.insert(item["id"].as_i64().expect("id")),
                "row handed out twice: {item}"
            );
            assert!(keys.insert(item["key"].as_str().expect("key").to_owned()));
            assert_eq!(item["op"], "create");
            assert_eq!(item["onec_ref"], Value::Null);
            let name = item["counterparty"]["name"].as_str().expect("name");
            assert!(name.starts_with("Клиент "), "{item}");
        }
    }
    assert_eq!(seen.len(), 30, "every row went to one of the pollers");
    // Oldest first within a lease.
    for answer in [&a, &b, &c] {
        let ids = ids(answer);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    }
    // All out: another poll gets nothing.
    assert!(ids(&lease(gw.addr, "").await).is_empty());
    // Leased rows stay pending (until acknowledged), never sent.
    assert_eq!(outbox(&gw, OutboxState::Pending).await.len(), 30);
}

#[tokio::test]
async fn an_ended_lease_is_pending_again_for_a_poll_started_without_after() {
    let gw = start(6, "transport = \"pull\"\nlease = \"1s\"\n").await;
    let first = lease(gw.addr, "?limit=2").await;
    let first_ids = ids(&first);
    assert_eq!(first_ids.len(), 2);
    let next_after = first["next_after"].as_i64().expect("next_after");
    assert_eq!(next_after, first_ids[1]);
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    // Going on from `after`: the rows after it, not the ended ones.
    let on = lease(gw.addr, &format!("?after={next_after}&limit=10")).await;
    let on_ids = ids(&on);
    assert_eq!(on_ids.len(), 4);
    assert!(on_ids.iter().all(|id| *id > next_after), "{on_ids:?}");
    // From the start: the ended ones again (the others are out).
    let again = lease(gw.addr, "?limit=10").await;
    assert_eq!(ids(&again), first_ids);
    let metrics = get(gw.addr, "/metrics").await.body;
    assert!(
        metrics.contains("cti_onec_pull_items_total{event=\"expired\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cti_onec_pull_items_total{event=\"leased\"} 8"),
        "{metrics}"
    );
    // Each lease was an attempt.
    let rows = outbox(&gw, OutboxState::Pending).await;
    let attempts: Vec<u32> = rows
        .iter()
        .filter(|r| first_ids.contains(&r.id))
        .map(|r| r.attempts)
        .collect();
    assert_eq!(attempts, [2, 2]);
}

#[tokio::test]
async fn a_newer_change_waits_while_an_older_row_of_its_record_is_out() {
    let gw = start(0, "transport = \"pull\"\nlease = \"1s\"\n").await;
    push(gw.addr, "p1", "Первый", "84951110001").await;
    push(gw.addr, "p2", "Второй", "84951110002").await;
    settled(&gw).await;
    let first = lease(gw.addr, "?limit=1").await;
    let key = first["items"][0]["key"].as_str().expect("key").to_owned();
    assert_eq!(key, "p1");
    let old_id = ids(&first)[0];
    // The record changes while its row is out.
    push(gw.addr, "p1", "Новое имя", "84951110001").await;
    settled(&gw).await;
    let during = lease(gw.addr, "?limit=10").await;
    assert!(
        during["items"]
            .as_array()
            .expect("items")
            .iter()
            .all(|i| i["key"] != key.as_str()),
        "a newer row of a record out was handed out: {during}"
    );
    // Its lease ends: a poll from `after` still holds the newer row back
    // (the older waits below `after`)...
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let after = during["next_after"].as_i64().expect("next_after");
    let on = lease(gw.addr, &format!("?after={after}")).await;
    assert!(ids(&on).is_empty(), "{on}");
    // ...and a poll from the start hands out the newest state alone, the
    // older row dropped.
    let fresh = lease(gw.addr, "").await;
    let items = fresh["items"].as_array().expect("items");
    let mine: Vec<&Value> = items.iter().filter(|i| i["key"] == key.as_str()).collect();
    assert_eq!(mine.len(), 1, "{fresh}");
    assert_eq!(mine[0]["counterparty"]["name"], "Новое имя");
    assert!(mine[0]["id"].as_i64().expect("id") > old_id);
    // A late ack of the dropped row is ignored; the newest one's counts.
    let answer = ack(
        gw.addr,
        &json!({"results":[
            {"id": old_id, "status": "created", "onec_ref": REF_A},
            {"id": mine[0]["id"], "status": "created", "onec_ref": REF_A},
        ]}),
    )
    .await;
    assert_eq!(answer["results"][0]["result"], "ignored");
    assert_eq!(answer["results"][1]["result"], "done");
    assert_eq!(remote_id(&gw, &key).await.as_deref(), Some(REF_A));
}

#[tokio::test]
async fn acks_link_the_id_map_late_and_repeated_acks_count_once_and_failures_die() {
    let gw = start(0, "transport = \"pull\"\nlease = \"1s\"\n").await;
    for i in 0..3 {
        push(
            gw.addr,
            &format!("p{i}"),
            &format!("Клиент {i}"),
            &format!("8495222000{i}"),
        )
        .await;
    }
    settled(&gw).await;
    let leased = lease(gw.addr, "").await;
    let items = leased["items"].as_array().expect("items").clone();
    assert_eq!(items.len(), 3);
    let (k0, k1, k2) = (
        items[0]["key"].as_str().expect("key").to_owned(),
        items[1]["key"].as_str().expect("key").to_owned(),
        items[2]["key"].as_str().expect("key").to_owned(),
    );
    // The lease ends before 1C answers: a late ack still counts.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let body = json!({"results":[
        {"id": items[0]["id"], "status": "created", "onec_ref": REF_A, "code": "00-000001"},
        {"id": items[1]["id"], "status": "exists", "onec_ref": REF_B.to_uppercase()},
        {"id": items[2]["id"], "status": "failed", "code": "ИНН", "message": "ИНН не прошёл проверку"},
        {"id": 999_999, "status": "created", "onec_ref": REF_A},
    ]});
    let answer = ack(gw.addr, &body).await;
    let results: Vec<&str> = answer["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["result"].as_str().expect("result"))
        .collect();
    assert_eq!(results, ["done", "done", "dead", "ignored"]);
    assert_eq!(
        (answer["done"].as_u64(), answer["ignored"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(remote_id(&gw, &k0).await.as_deref(), Some(REF_A));
    assert_eq!(remote_id(&gw, &k1).await.as_deref(), Some(REF_B));
    assert_eq!(remote_id(&gw, &k2).await, None);
    let dead = outbox(&gw, OutboxState::Dead).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].record_key, k2);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("ИНН не прошёл проверку")),
        "{:?}",
        dead[0].last_error
    );
    assert!(outbox(&gw, OutboxState::Pending).await.is_empty());
    // The same ack again: nothing left to do, all ignored.
    let again = ack(gw.addr, &body).await;
    assert_eq!(again["ignored"], 4, "{again}");
    // A change of a record 1C holds is an update naming 1C's ref.
    push(gw.addr, &k0, "Переименован", "84952220000").await;
    settled(&gw).await;
    let update = lease(gw.addr, "").await;
    let item = &update["items"][0];
    assert_eq!(item["key"], k0.as_str());
    assert_eq!(item["op"], "update");
    assert_eq!(item["onec_ref"], REF_A);
    let metrics = get(gw.addr, "/metrics").await.body;
    for (event, n) in [
        ("acked_created", 1),
        ("acked_exists", 1),
        ("acked_failed", 1),
        ("ignored", 5),
    ] {
        let line = format!("cti_onec_pull_items_total{{event=\"{event}\"}} {n}");
        assert!(metrics.contains(&line), "{line} not in {metrics}");
    }
}

#[tokio::test]
async fn changes_of_one_record_before_a_poll_come_as_its_last_state() {
    let gw = start(0, "transport = \"pull\"\n").await;
    for v in 1..=3 {
        push(gw.addr, "p1", &format!("Версия {v}"), "84951112233").await;
        settled(&gw).await;
    }
    assert_eq!(outbox(&gw, OutboxState::Pending).await.len(), 3);
    let leased = lease(gw.addr, "").await;
    let items = leased["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{leased}");
    assert_eq!(items[0]["counterparty"]["name"], "Версия 3");
    assert_eq!(outbox(&gw, OutboxState::Pending).await.len(), 1);
}

#[tokio::test]
async fn a_row_leased_ten_times_without_an_ack_is_dead() {
    let gw = start(1, "transport = \"pull\"\nlease = \"1s\"\n").await;
    // The runtime's dead-letter rule: ten attempts. Ten leases that
    // ended, made through the store with a clock an hour back (rather
    // than ten waits)...
    let store = gw.gateway().sync_store().expect("sync store").clone();
    let id = outbox(&gw, OutboxState::Pending).await[0].id;
    lease_until_attempts(&store, id, 10).await;
    // ...then a poll finds the tenth ended: the row is dead, not handed out.
    assert!(ids(&lease(gw.addr, "").await).is_empty());
    let dead = outbox(&gw, OutboxState::Dead).await;
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("never acknowledged")),
        "{:?}",
        dead[0].last_error
    );
}

/// `onec`'s line of the sync status.
async fn onec_status(addr: SocketAddr) -> Value {
    let reply = request(addr, "GET", "/api/v1/sync/status", &[BEARER], b"").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let status: Value = serde_json::from_str(&reply.body).expect("status JSON");
    status["systems"]
        .as_array()
        .expect("systems")
        .iter()
        .find(|s| s["system"] == "onec")
        .expect("onec in the status")
        .clone()
}

#[tokio::test]
async fn with_no_poll_after_a_lease_ends_a_row_leased_ten_times_dies_by_the_sweep() {
    let gw = start(2, "transport = \"pull\"\nlease = \"1s\"\n").await;
    let store = gw.gateway().sync_store().expect("sync store").clone();
    let first = outbox(&gw, OutboxState::Pending).await[0].id;
    // Nine leases of the first row, ended an hour ago; then 1C's tenth,
    // with the second row's first, and 1C stops polling.
    lease_until_attempts(&store, first, 9).await;
    let leased = lease(gw.addr, "?limit=2").await;
    assert_eq!(ids(&leased).len(), 2, "{leased}");
    assert_eq!(onec_status(gw.addr).await["leased"], 2);
    // Within the lease (1 s) and a sweep (a quarter of it) the first row is
    // dead, the second pending again: no poll came.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while outbox(&gw, OutboxState::Dead).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no row dead within 10 s of its lease's end, with no poll"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead = outbox(&gw, OutboxState::Dead).await;
    assert_eq!(dead.iter().map(|r| r.id).collect::<Vec<_>>(), [first]);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("leased 10 times, never acknowledged")),
        "{:?}",
        dead[0].last_error
    );
    let pending = outbox(&gw, OutboxState::Pending).await;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].attempts, 1);
    let onec = onec_status(gw.addr).await;
    assert_eq!(
        (
            onec["leased"].clone(),
            onec["dead"].clone(),
            onec["pending"].clone()
        ),
        (0.into(), 1.into(), 1.into()),
        "{onec}"
    );
    let metrics = get(gw.addr, "/metrics").await.body;
    assert!(
        metrics.contains(r#"cti_onec_pull_items_total{event="dead"} 1"#),
        "{metrics}"
    );
    // The next poll hands out the second row again, never the dead one.
    assert_eq!(ids(&lease(gw.addr, "").await), [pending[0].id]);
}

/// Leases row `id` (through the store, each lease ending at once, in the
/// past) until it has `attempts`.
async fn lease_until_attempts(store: &cti_gateway::store::Store, id: i64, attempts: u32) {
    use cti_gateway::store::LeaseRequest;
    let mut now = std::time::SystemTime::now() - Duration::from_secs(3_600);
    loop {
        let row = store
            .outbox_page(OutboxQuery {
                system: Some("onec".into()),
                limit: 10,
                ..OutboxQuery::default()
            })
            .await
            .expect("outbox")
            .into_iter()
            .find(|r| r.id == id)
            .expect("the row");
        if row.attempts >= attempts {
            return;
        }
        // Each lease a second after the last one's end.
        now += Duration::from_secs(1);
        store
            .outbox_lease(LeaseRequest {
                system: "onec".into(),
                after: None,
                limit: 1,
                lease: format!("test-{}", row.attempts),
                now,
                lease_for: Duration::from_millis(1),
                max_attempts: 100,
                dead_after: Duration::from_secs(7 * 24 * 3600),
            })
            .await
            .expect("lease");
    }
}

#[tokio::test]
async fn the_status_shows_the_transport_and_the_leased_rows() {
    let gw = start(4, "transport = \"pull\"\n").await;
    lease(gw.addr, "?limit=3").await;
    let reply = request(gw.addr, "GET", "/api/v1/sync/status", &[BEARER], b"").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let status: Value = serde_json::from_str(&reply.body).expect("status JSON");
    let onec = status["systems"]
        .as_array()
        .expect("systems")
        .iter()
        .find(|s| s["system"] == "onec")
        .expect("onec in the status")
        .clone();
    assert_eq!(onec["transport"], "pull", "{onec}");
    assert_eq!(onec["leased"], 3, "{onec}");
    assert_eq!(onec["pending"], 4, "{onec}");
}

#[tokio::test]
async fn bad_polls_and_ack_bodies_are_refused_naming_what_and_nothing_changes() {
    let gw = start(2, "transport = \"pull\"\n").await;
    let addr = gw.addr;
    // Polls.
    for (query, named) in [
        ("?after=abc", "after"),
        ("?limit=501", "limit"),
        ("?limit=0", "limit"),
        ("?format=csv", "format"),
        ("?since=1", "since"),
    ] {
        let reply = post(addr, &format!("{LEASE}{query}"), &[BEARER], b"").await;
        assert_eq!(reply.status, 400, "{query}: {}", reply.body);
        assert!(reply.body.contains(named), "{query}: {}", reply.body);
    }
    let reply = get(addr, LEASE).await;
    assert_eq!(reply.status, 405, "{}", reply.body);
    assert_eq!(reply.header("allow"), Some("POST"));
    let reply = post(addr, LEASE, &[], b"").await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    let reply = post(addr, LEASE, &["Authorization: Bearer wrong"], b"").await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    // Acks.
    let reply = post(addr, ACK, &[JSON], b"{\"results\":[]}").await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    let reply = post(addr, ACK, &[BEARER, "Content-Type: text/plain"], b"{}").await;
    assert_eq!(reply.status, 415, "{}", reply.body);
    let reply = post(
        addr,
        ACK,
        &[BEARER, JSON],
        b"{\"results\":[\n  {\"id\":1,,}]}",
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let refused: Value = serde_json::from_str(&reply.body).expect("JSON");
    assert_eq!(refused["line"], 2, "{refused}");
    assert!(
        refused["column"].as_u64().is_some_and(|c| c > 0),
        "{refused}"
    );
    let id = outbox(&gw, OutboxState::Pending).await[0].id;
    for (body, index, field) in [
        (
            json!({"results": [{"id": id, "status": "created", "onec_ref": REF_A}, {"id": "x", "status": "created"}]}),
            json!(1),
            "id",
        ),
        (
            json!({"results": [{"id": id, "status": "made", "onec_ref": REF_A}]}),
            json!(0),
            "status",
        ),
        (
            json!({"results": [{"id": id, "status": "updated"}]}),
            json!(0),
            "onec_ref",
        ),
        (
            json!({"results": [{"id": id, "status": "exists", "onec_ref": "не GUID"}]}),
            json!(0),
            "onec_ref",
        ),
        (
            json!({"results": [{"id": id, "status": "failed", "code": 13}]}),
            json!(0),
            "code",
        ),
        (json!({"acks": []}), Value::Null, "results"),
    ] {
        let reply = post(addr, ACK, &[BEARER, JSON], body.to_string().as_bytes()).await;
        assert_eq!(reply.status, 422, "{body}: {}", reply.body);
        let refused: Value = serde_json::from_str(&reply.body).expect("JSON");
        assert_eq!(refused["index"], index, "{body}: {refused}");
        assert_eq!(refused["field"], field, "{body}: {refused}");
    }
    // Nothing of a refused ack was written: its valid first result either.
    assert_eq!(remote_id(&gw, "k0").await, None);
    assert_eq!(remote_id(&gw, "k1").await, None);
    assert_eq!(outbox(&gw, OutboxState::Pending).await.len(), 2);
    let many: Vec<Value> = (1..=1_001)
        .map(|i| json!({"id": i, "status": "failed"}))
        .collect();
    let reply = post(
        addr,
        ACK,
        &[BEARER, JSON],
        json!({ "results": many }).to_string().as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    let big = format!(
        "{{\"results\":[],\"pad\":\"{}\"}}",
        "x".repeat(cti_gateway::http::MAX_ACK_BODY)
    );
    let reply = post(addr, ACK, &[BEARER, JSON], big.as_bytes()).await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert_eq!(outbox(&gw, OutboxState::Pending).await.len(), 2);
}

#[tokio::test]
async fn without_pull_the_exchange_says_so() {
    // The OData writer's transport needs [onec] (nothing answers there).
    let gw = start(
        1,
        "\n[onec]\nodata_url = \"http://127.0.0.1:9/base/odata/standard.odata\"\n",
    )
    .await;
    let reply = post(gw.addr, LEASE, &[BEARER], b"").await;
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(reply.body.contains("transport"), "{}", reply.body);
}

// ---------------------------------------------------------------- docs/1c-pull.md

/// The sample's lease: `ВызватьШлюз(АдресАренды(После), "")`, a POST with
/// no body (`Content-Length: 0`) and the Bearer header only.
async fn lease_1c(addr: SocketAddr, portion: u32, after: Option<i64>) -> Value {
    // `Формат(N, "ЧН=0; ЧГ=0")`: the digits, 0 for zero.
    let mut path = format!("{LEASE}?format=json&limit={portion}");
    if let Some(after) = after {
        path.push_str(&format!("&after={after}"));
    }
    let reply = request(addr, "POST", &path, &[BEARER], b"").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    serde_json::from_str(&reply.body).expect("JSONВЗначение reads it")
}

/// `ТекстПодтверждения`: `ЗаписьJSON` with `ПереносСтрокJSON.Нет`, the
/// properties in the sample's order, `id` a number as it came.
fn ack_text_1c(results: &[(i64, &str, &str, &str, &str)]) -> String {
    let quoted = |s: &str| Value::from(s).to_string();
    let items: Vec<String> = results
        .iter()
        .map(|(id, status, onec_ref, code, message)| {
            format!(
                "{{\"id\":{id},\"status\":{},\"onec_ref\":{},\"code\":{},\"message\":{}}}",
                quoted(status),
                quoted(onec_ref),
                quoted(code),
                quoted(message)
            )
        })
        .collect();
    format!("{{\"results\":[{}]}}", items.join(","))
}

async fn ack_1c(addr: SocketAddr, body: &[u8]) -> Reply {
    request(
        addr,
        "POST",
        ACK,
        &[BEARER, "Content-Type: application/json; charset=utf-8"],
        body,
    )
    .await
}

async fn push_card(addr: SocketAddr, id: &str, name: &str, inn: &str, kpp: &str, phone: &str) {
    let body = json!([{
        "id": id, "name": name, "full_name": format!("Общество с ограниченной ответственностью {name}"),
        "inn": inn, "kpp": kpp, "phones": [phone], "emails": ["info@veter.ru"],
    }]);
    let reply = post(
        addr,
        "/api/v1/counterparties",
        &[JSON, BEARER],
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.find("warnings").is_none(), "{}", reply.body);
}

#[tokio::test]
async fn pull_sample_requests_get_the_answers_the_sample_reads() {
    let gw = start(0, "transport = \"pull\"\n").await;
    push_card(
        gw.addr,
        "p1",
        "ООО \"Северный ветер\"",
        "7705123452",
        "770501001",
        "+7 (912) 345-67-89",
    )
    .await;
    push_card(
        gw.addr,
        "p2",
        "ООО \"Южный ветер\"",
        "7705123452",
        "770502001",
        "84957771122",
    )
    .await;
    settled(&gw).await;

    // The run's first lease, without after; a portion of 1 to go on with after.
    let first = lease_1c(gw.addr, 1, None).await;
    let item = &first["items"][0];
    let id = item["id"].as_i64().expect("id, a number");
    assert!(
        item["onec_ref"].is_null(),
        "ЗначениеЗаполнено(Неопределено) = Ложь"
    );
    let card = &item["counterparty"];
    assert_eq!(card["name"], "ООО \"Северный ветер\"");
    assert_eq!(card["inn"], "7705123452");
    assert_eq!(card["kpp"], "770501001");
    assert!(card["full_name"].is_string());
    assert!(
        card["phones"].as_array().is_some_and(|p| p.len() == 1),
        "{card}"
    );
    assert!(
        card["emails"].as_array().is_some_and(|p| p.len() == 1),
        "{card}"
    );
    let after = first["next_after"].as_i64().expect("next_after, a number");

    // `created`, with 1C's ref and code.
    let body = ack_text_1c(&[(id, "created", REF_A, "00-000123", "")]);
    let reply = ack_1c(gw.addr, body.as_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(remote_id(&gw, "p1").await.as_deref(), Some(REF_A));

    // The next lease of the run, with after; its ack `failed`, no ref, a
    // message with Cyrillic and quotes, written with a byte order mark.
    let second = lease_1c(gw.addr, 1, Some(after)).await;
    let id2 = second["items"][0]["id"].as_i64().expect("id");
    assert_eq!(second["items"][0]["key"], "p2");
    let message = "в 1С несколько контрагентов с ИНН 7705123452 и КПП 770502001 (\"Южный\")";
    let body = ack_text_1c(&[(id2, "failed", "", "duplicates", message)]);
    let with_bom = [b"\xEF\xBB\xBF".as_slice(), body.as_bytes()].concat();
    let reply = ack_1c(gw.addr, &with_bom).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(json_of(&reply)["dead"], 1);
    let dead = outbox(&gw, OutboxState::Dead).await;
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains(message)),
        "{:?}",
        dead[0].last_error
    );

    // The run ends on a lease with no items.
    let after = second["next_after"].as_i64().expect("next_after");
    let third = lease_1c(gw.addr, 100, Some(after)).await;
    assert_eq!(third["items"].as_array().map(Vec::len), Some(0));

    // The next run: a change of p1 comes as an update naming 1C's ref.
    push_card(
        gw.addr,
        "p1",
        "ООО \"Северный ветер и К\"",
        "7705123452",
        "770501001",
        "+7 (912) 345-67-89",
    )
    .await;
    settled(&gw).await;
    let run = lease_1c(gw.addr, 100, None).await;
    let item = &run["items"][0];
    assert_eq!(item["op"], "update");
    assert_eq!(item["onec_ref"], REF_A);
    let body = ack_text_1c(&[(
        item["id"].as_i64().expect("id"),
        "updated",
        REF_A,
        "00-000123",
        "",
    )]);
    let reply = ack_1c(gw.addr, body.as_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(json_of(&reply)["done"], 1);
    // Nothing left for 1C.
    assert!(outbox(&gw, OutboxState::Pending).await.is_empty());
}

fn json_of(reply: &Reply) -> Value {
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.body))
}

#[tokio::test]
async fn a_sync_store_that_cannot_write_is_a_503_and_nothing_is_acknowledged() {
    let gw = start(2, "transport = \"pull\"\n").await;
    let leased = lease(gw.addr, "").await;
    let id = ids(&leased)[0];
    // The sync store closed under the gateway: every write is refused.
    gw.gateway().sync_store().expect("sync store").close().await;
    let reply = post(gw.addr, LEASE, &[BEARER], b"").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    let body = json!({"results": [{"id": id, "status": "created", "onec_ref": REF_A}]});
    let reply = post(gw.addr, ACK, &[BEARER, JSON], body.to_string().as_bytes()).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(
        reply.body.contains("nothing was acknowledged"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn the_build_runs_onec_under_pull_without_onec_or_a_write_user() {
    // `Gateway::start`: this build's systems (`sync::build_systems`), not a
    // test system. Under pull neither [onec] nor a write user is needed.
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), directory(3)).expect("directory");
    let text = config_text(dir.path(), "\n[sync.onec]\ntransport = \"pull\"\n");
    let config = Config::parse(&text, &dir.path().join("gateway.toml"), &|_| None).expect("config");
    let gateway = Gateway::start(config).await.expect("gateway starts");
    let addr = gateway.local_addr();
    let gw = TestGateway {
        gateway: Some(gateway),
        addr,
        dir,
    };
    settled(&gw).await;
    let first = lease(gw.addr, "?limit=10").await;
    let keys: HashSet<&str> = first["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["key"].as_str().expect("key"))
        .collect();
    assert_eq!(keys, HashSet::from(["k0", "k1", "k2"]), "{first}");
    let status = request(gw.addr, "GET", "/api/v1/sync/status", &[BEARER], b"").await;
    assert!(
        status.body.contains("\"transport\":\"pull\""),
        "{}",
        status.body
    );
}

#[tokio::test]
async fn format_xml_leases_the_same_rows_and_an_xml_ack_is_checked_as_json_is() {
    let gw = start(0, "transport = \"pull\"\n").await;
    push_card(
        gw.addr,
        "p1",
        "ООО \"Ветер & Ко\"",
        "7705123452",
        "770501001",
        "+7 (912) 345-67-89",
    )
    .await;
    push_card(
        gw.addr,
        "p2",
        "ООО \"Южный\"",
        "7705123452",
        "770502001",
        "84957771122",
    )
    .await;
    settled(&gw).await;
    let reply = post(
        gw.addr,
        &format!("{LEASE}?format=xml&limit=10"),
        &[BEARER],
        b"",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/xml; charset=utf-8")
    );
    let xml = &reply.body;
    assert!(
        xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>"),
        "{xml}"
    );
    assert!(
        xml.contains("op=\"create\" key=\"p1\" onec_ref=\"\""),
        "{xml}"
    );
    assert!(
        xml.contains("<name>ООО &quot;Ветер &amp; Ко&quot;</name>"),
        "{xml}"
    );
    assert!(xml.contains("<inn>7705123452</inn>"), "{xml}");
    assert!(xml.contains("<phones><v>"), "{xml}");
    let ids: Vec<i64> = xml
        .match_indices("<item id=\"")
        .map(|(at, m)| {
            let rest = &xml[at + m.len()..];
            rest[..rest.find('"').expect("quote")]
                .parse()
                .expect("an id")
        })
        .collect();
    assert_eq!(ids.len(), 2, "{xml}");

    // An ack as ЗаписьXML would write it (attributes; the message as text).
    let xml_ack = |body: &str| {
        let body = body.to_owned();
        async move {
            request(
                gw.addr,
                "POST",
                ACK,
                &[BEARER, "Content-Type: application/xml; charset=utf-8"],
                body.as_bytes(),
            )
            .await
        }
    };
    // Checked as JSON is: a bad status is 422 naming index and field, nothing written.
    let bad = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ack><result id=\"{}\" status=\"created\" onec_ref=\"{REF_A}\"/><result id=\"{}\" status=\"made\"/></ack>",
        ids[0], ids[1]
    );
    let reply = xml_ack(&bad).await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    let refused: Value = serde_json::from_str(&reply.body).expect("JSON");
    assert_eq!(
        (refused["index"].as_u64(), refused["field"].as_str()),
        (Some(1), Some("status"))
    );
    assert_eq!(remote_id(&gw, "p1").await, None);
    // Malformed: 400 with the line.
    let reply = xml_ack("<ack>\n<result id=\"1\">\n</ack>").await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(
        serde_json::from_str::<Value>(&reply.body).expect("JSON")["line"],
        3
    );
    // A DTD: refused, never expanded.
    let reply = xml_ack("<!DOCTYPE ack [<!ENTITY x \"y\">]><ack/>").await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    // A good one, in windows-1251 as an 8.2 base may write it.
    let message = "нет КПП";
    let encoded = encoding_1251(message);
    let mut body = format!(
        "<?xml version=\"1.0\" encoding=\"windows-1251\"?><ack><result id=\"{}\" status=\"created\" onec_ref=\"{REF_A}\" code=\"00-1\"/><result id=\"{}\" status=\"failed\" code=\"kpp\">",
        ids[0], ids[1]
    )
    .into_bytes();
    body.extend_from_slice(&encoded);
    body.extend_from_slice(b"</result></ack>");
    let reply = request(
        gw.addr,
        "POST",
        ACK,
        &[BEARER, "Content-Type: text/xml"],
        &body,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply
            .body
            .contains("<acked done=\"1\" dead=\"1\" ignored=\"0\">"),
        "{}",
        reply.body
    );
    assert_eq!(remote_id(&gw, "p1").await.as_deref(), Some(REF_A));
    let dead = outbox(&gw, OutboxState::Dead).await;
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains(message)),
        "{:?}",
        dead[0].last_error
    );
}

/// `text` in windows-1251 (Cyrillic only, as the test needs).
fn encoding_1251(text: &str) -> Vec<u8> {
    text.chars()
        .map(|c| match c {
            'А'..='я' => (c as u32 - 'А' as u32 + 0xC0) as u8,
            'ё' => 0xB8,
            'Ё' => 0xA8,
            c if c.is_ascii() => c as u8,
            other => panic!("not in this test's windows-1251: {other}"),
        })
        .collect()
}
