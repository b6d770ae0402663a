//! Payments (issue 19 item 4): read from the mock 1C's
//! `Document_ПоступлениеНаРасчетныйСчет` by the OData poll, or pushed to
//! `POST /api/v1/exchange/payments`; each change reaches a subscribed
//! system once, as `payment.posted`, `payment.changed` or
//! `payment.reversed`, and nothing is emitted twice.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cti_gateway::config::Config;
use cti_gateway::store::OutboxOp;
use cti_gateway::sync::inbound::Inbound;
use cti_gateway::sync::system::{
    Outcome, OutgoingRow, Page, PublishedLimit, Remote, RemoteFuture, System, Webhook, WebhookError,
};
use cti_gateway::sync::{Exports, SystemSpec};
use cti_gateway::Gateway;
use serde_json::Value;
use support::mock_onec::{guid, MockOnec, MockPayment, Mode, PASSWORD, USERNAME};
use support::*;

const SINK: &str = "paysink";
const PAYMENTS: &str = "/api/v1/exchange/payments";
const BEARER: &str = "Authorization: Bearer api-token-for-tests";
const JSON: &str = "Content-Type: application/json";

/// A system that takes payments and keeps every event it is sent, in order
/// (and takes no counterparty: its exports accept none).
struct Sink {
    spec: SystemSpec,
    events: Arc<Mutex<Vec<Value>>>,
}

impl Sink {
    fn new() -> (Sink, Arc<Mutex<Vec<Value>>>) {
        let events = Arc::new(Mutex::new(Vec::new()));
        let spec = SystemSpec::new(SINK)
            .expect("name")
            .with_exports(Exports::Only(Arc::new(|_| false)))
            .with_payments();
        (
            Sink {
                spec,
                events: Arc::clone(&events),
            },
            events,
        )
    }
}

impl System for Sink {
    fn spec(&self) -> &SystemSpec {
        &self.spec
    }

    fn published_limit(&self) -> PublishedLimit {
        PublishedLimit::Bucket {
            burst: 1000,
            per_second: 1000.0,
        }
    }

    fn batch_size(&self) -> usize {
        50
    }

    fn send<'a>(&'a self, rows: &'a [OutgoingRow]) -> RemoteFuture<'a, Vec<Outcome>> {
        Box::pin(async move {
            let mut events = self.events.lock().expect("events");
            rows.iter()
                .map(|row| {
                    assert_eq!(row.op, OutboxOp::Upsert);
                    assert_eq!(row.kind, "payment", "only payments come here");
                    events.push(serde_json::from_str(&row.body).expect("an event is JSON"));
                    Outcome::Confirmed(Remote::new(row.record_key.clone(), None))
                })
                .collect()
        })
    }

    fn find_existing<'a>(
        &'a self,
        _row: &'a OutgoingRow,
    ) -> RemoteFuture<'a, Result<Option<Remote>, Outcome>> {
        Box::pin(async { Ok(None) })
    }

    fn authenticate(&self, _hook: &Webhook<'_>) -> bool {
        false
    }

    fn parse(&self, _hook: &Webhook<'_>) -> Result<Vec<Inbound>, WebhookError> {
        Ok(Vec::new())
    }

    fn list<'a>(&'a self, _after: Option<&'a str>) -> RemoteFuture<'a, Result<Page, Outcome>> {
        Box::pin(async { Ok(Page::default()) })
    }
}

/// A gateway with `[payments]` (`payments` is its table's body) and the
/// sink subscribed; with `onec`, `[onec]` reads the mock.
async fn start(onec: Option<&MockOnec>, payments: &str) -> (TestGateway, Arc<Mutex<Vec<Value>>>) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), DIRECTORY).expect("directory");
    let onec = onec
        .map(|m| {
            format!(
                "[onec]\nodata_url = \"{}\"\nusername = \"{USERNAME}\"\npassword = \"{PASSWORD}\"\nrefresh = \"1h\"\ntimeout = \"2s\"\n",
                m.url()
            )
        })
        .unwrap_or_default();
    let extra = format!("{onec}\n[payments]\n{payments}\n[sync.{SINK}]\n");
    let path = dir.path().join("gateway.toml");
    let text = config_text(dir.path(), &extra);
    let config = Config::parse(&text, &path, &|_| None).expect("test config is valid");
    let (sink, events) = Sink::new();
    let gateway = Gateway::start_with(config, vec![Arc::new(sink) as Arc<dyn System>])
        .await
        .expect("gateway starts");
    let addr = gateway.local_addr();
    (
        TestGateway {
            gateway: Some(gateway),
            addr,
            dir,
        },
        events,
    )
}

/// Waits (up to 20 s) until the sink holds `n` events; returns them all.
async fn events_reach(events: &Arc<Mutex<Vec<Value>>>, n: usize) -> Vec<Value> {
    let what = format!("{n} payment events");
    eventually(Duration::from_secs(20), &what, || {
        events.lock().expect("events").len() >= n
    })
    .await;
    events.lock().expect("events").clone()
}

/// (event, ref, amount) of each event.
fn summary(events: &[Value]) -> Vec<(String, String, String)> {
    events
        .iter()
        .map(|e| {
            (
                e["event"].as_str().unwrap_or_default().to_owned(),
                e["payment"]["ref"].as_str().unwrap_or_default().to_owned(),
                e["payment"]["amount"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .collect()
}

async fn status(addr: std::net::SocketAddr) -> Value {
    let reply = request(addr, "GET", "/api/v1/sync/status", &[BEARER], b"").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    serde_json::from_str(&reply.body).expect("status JSON")
}

async fn push(addr: std::net::SocketAddr, body: &str) -> Reply {
    post(addr, PAYMENTS, &[BEARER, JSON], body.as_bytes()).await
}

fn event(kind: &str, key: &str, amount: &str) -> (String, String, String) {
    (kind.to_owned(), key.to_owned(), amount.to_owned())
}

#[tokio::test]
async fn odata_payments_are_posted_changed_and_reversed_once_each() {
    let onec = MockOnec::start().await;
    let (a, b, c, d) = (guid(101), guid(102), guid(103), guid(104));
    onec.upsert_payment(MockPayment::new(
        &a,
        "2026-12-01T10:00:00",
        "15000.5",
        &guid(900),
    ));
    onec.upsert_payment(MockPayment::new(
        &b,
        "2026-12-02T11:00:00",
        "700",
        &guid(901),
    ));
    // A draft never posted is no news.
    let mut draft = MockPayment::new(&c, "2026-12-03T09:00:00", "1", &guid(902));
    draft.posted = false;
    onec.upsert_payment(draft);
    let (mut gw, events) = start(Some(&onec), "source = \"odata\"\npoll = \"1s\"").await;

    let first = events_reach(&events, 2).await;
    assert_eq!(
        summary(&first),
        [
            event("payment.posted", &a, "15000.50"),
            event("payment.posted", &b, "700.00")
        ]
    );
    let p = &first[0]["payment"];
    assert_eq!(first[0]["source"], "odata");
    assert_eq!(p["date"], "2026-12-01T10:00:00+03:00");
    assert_eq!(p["rows"][0]["amount"], "15000.50");
    assert_eq!(p["rows"][0]["invoice"], Value::from(guid(900)));
    assert_eq!(p["rows"][0]["contract"], Value::Null, "1C's empty ref");
    assert_eq!(p["counterparty"], Value::from(guid(7)));

    // Changed (a new amount), unposted, deletion-marked, deleted for good.
    let mut changed = onec.payment(&a).expect("a");
    changed.amount = "16000".into();
    changed.rows[0].amount = "16000".into();
    onec.upsert_payment(changed);
    onec.set_payment_posted(&b, false);
    onec.upsert_payment(MockPayment::new(
        &d,
        "2026-12-02T12:00:00",
        "42.42",
        &guid(903),
    ));
    let next = events_reach(&events, 5).await;
    assert_eq!(
        summary(&next[2..]),
        [
            event("payment.changed", &a, "16000.00"),
            event("payment.reversed", &b, "700.00"),
            event("payment.posted", &d, "42.42"),
        ]
    );
    onec.mark_payment_deleted(&a);
    onec.remove_payment(&d);
    let last = events_reach(&events, 7).await;
    let mut tail = summary(&last[5..]);
    tail.sort();
    let mut expected = [
        event("payment.reversed", &a, "16000.00"),
        event("payment.reversed", &d, "42.42"),
    ];
    expected.sort();
    assert_eq!(tail, expected);
    // A deleted document is asked for by key: 404.
    assert!(onec
        .payment_requests()
        .iter()
        .any(|r| r.key.as_deref() == Some(d.as_str()) && r.status == Some(404)));

    // Re-read after re-read: nothing more.
    let polls = onec.payment_requests().len();
    gw.gateway().reload();
    eventually(Duration::from_secs(10), "two more polls", || {
        onec.payment_requests().len() >= polls + 4
    })
    .await;
    assert_eq!(
        events.lock().expect("events").len(),
        7,
        "re-reads emit nothing"
    );

    // The poll's filter and order.
    let list = onec
        .payment_requests()
        .into_iter()
        .rfind(|r| r.key.is_none())
        .expect("a list read");
    assert_eq!(list.option("$orderby"), Some("Date,Ref_Key"));
    assert_eq!(
        list.option("$filter"),
        Some("Date ge datetime'2026-11-30T09:00:00'"),
        "the cursor (c's 2026-12-03T09:00:00, the last document read) less 3 days"
    );
    let metrics = get(gw.addr, "/metrics").await.body;
    assert!(
        metrics.contains(r#"cti_payments_events_total{kind="reversed",source="odata"} 3"#),
        "{metrics}"
    );
    assert!(metrics.contains("cti_payments_poll_seconds_count"));
    gw.stop().await;
}

#[tokio::test]
async fn a_failed_read_keeps_the_cursor_and_shows_in_readyz() {
    let onec = MockOnec::start().await;
    let a = guid(201);
    onec.upsert_payment(MockPayment::new(
        &a,
        "2026-12-01T10:00:00",
        "10",
        &guid(900),
    ));
    let (mut gw, events) = start(Some(&onec), "source = \"odata\"\npoll = \"1s\"").await;
    events_reach(&events, 1).await;
    let cursor = |s: &Value| s["payments"]["cursor"]["date"].clone();
    let before = status(gw.addr).await;
    assert_eq!(before["payments"]["source"], "odata");
    assert_eq!(cursor(&before), "2026-12-01T10:00:00");
    assert!(before["payments"]["lag_s"].as_f64().is_some(), "{before}");

    onec.set_mode(Mode::Fail);
    onec.upsert_payment(MockPayment::new(
        &guid(202),
        "2026-12-05T10:00:00",
        "20",
        &guid(901),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let ready = loop {
        let reply = get(gw.addr, "/readyz").await;
        let ready: Value = serde_json::from_str(&reply.body).expect("readyz JSON");
        if ready["sources"]["payments"]["state"] == "failing" {
            break ready;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "payments never failing: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let error = ready["sources"]["payments"]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("Внутренняя ошибка"), "1C's message: {ready}");
    assert!(ready["failing_sources"]
        .as_array()
        .is_some_and(|f| f.contains(&Value::from("payments"))));
    let during = status(gw.addr).await;
    assert_eq!(cursor(&during), "2026-12-01T10:00:00", "the cursor stays");
    assert!(during["payments"]["last_error"].is_string(), "{during}");
    assert_eq!(events.lock().expect("events").len(), 1);

    onec.set_mode(Mode::Normal);
    events_reach(&events, 2).await;
    let after = status(gw.addr).await;
    assert_eq!(cursor(&after), "2026-12-05T10:00:00");
    gw.stop().await;
}

fn pushed(key: &str, version: &str, posted: bool, amount: &str) -> String {
    format!(
        r#"{{"ref":"{key}","version":"{version}","number":"П-1","date":"2026-12-05T10:30:00+03:00","amount":"{amount}","counterparty":"{cp}","posted":{posted},"rows":[{{"amount":"{amount}","invoice":"{inv}","contract":null}}]}}"#,
        cp = guid(7),
        inv = guid(900),
    )
}

#[tokio::test]
async fn pushed_payments_are_deduplicated_on_ref_and_version() {
    let (mut gw, events) = start(None, "source = \"push\"").await;
    let (a, b) = (guid(301), guid(302));
    let body = format!(
        "[{},{}]",
        pushed(&a, "1", true, "100.5"),
        pushed(&b, "1", true, "7")
    );
    let reply = push(gw.addr, &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body, r#"{"accepted":2,"duplicates":0}"#);
    let again = push(gw.addr, &body).await;
    assert_eq!(again.body, r#"{"accepted":0,"duplicates":2}"#);
    let reversal = format!(
        "[{},{}]",
        pushed(&a, "2", false, "100.5"),
        pushed(&b, "1", true, "7")
    );
    let reply = push(gw.addr, &reversal).await;
    assert_eq!(reply.body, r#"{"accepted":1,"duplicates":1}"#);
    let all = events_reach(&events, 3).await;
    assert_eq!(
        summary(&all),
        [
            event("payment.posted", &a, "100.50"),
            event("payment.posted", &b, "7.00"),
            event("payment.reversed", &a, "100.50"),
        ]
    );
    assert_eq!(all[0]["source"], "push");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(events.lock().expect("events").len(), 3, "each event once");
    assert_eq!(status(gw.addr).await["payments"]["source"], "push");

    // A sync store that cannot commit: 503, nothing acknowledged.
    gw.gateway().sync_store().expect("sync store").close().await;
    let refused = push(
        gw.addr,
        &format!("[{}]", pushed(&guid(303), "1", true, "1")),
    )
    .await;
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        refused.body.contains("nothing was acknowledged"),
        "{}",
        refused.body
    );
    assert_eq!(refused.header("Retry-After"), Some("5"));
    gw.stop().await;
}

#[tokio::test]
async fn each_bad_push_is_refused_naming_what_and_where() {
    let (mut gw, events) = start(None, "source = \"push\"").await;
    let a = guid(401);
    let good = pushed(&a, "1", true, "1");
    let json = |r: &Reply| -> Value { serde_json::from_str(&r.body).expect("JSON answer") };

    let broken = push(gw.addr, "[\n  {\"ref\": }\n]").await;
    assert_eq!(broken.status, 400, "{}", broken.body);
    assert_eq!(
        (
            json(&broken)["line"].clone(),
            json(&broken)["column"].clone()
        ),
        (2.into(), 11.into())
    );

    for (patch, field) in [
        (r#""amount":"1,50""#, "amount"),
        (r#""date":"2026-12-05 10:30""#, "date"),
        (r#""date":"2026-12-05T10:30:00""#, "date"),
        (r#""ref":"not-a-guid""#, "ref"),
        (r#""posted":"yes""#, "posted"),
        (r#""surprise":1"#, "surprise"),
    ] {
        let (name, _) = patch.split_once(':').expect("patch");
        let mut item: serde_json::Map<String, Value> = serde_json::from_str(&good).expect("item");
        let value: Value = serde_json::from_str(&format!("{{{patch}}}")).expect("patch JSON");
        item.insert(
            name.trim_matches('"').to_owned(),
            value[name.trim_matches('"')].clone(),
        );
        let body = format!("[{good},{}]", Value::Object(item));
        let reply = push(gw.addr, &body).await;
        assert_eq!(reply.status, 422, "{patch}: {}", reply.body);
        let answer = json(&reply);
        assert_eq!(answer["index"], 1, "{patch}");
        assert_eq!(answer["field"], field, "{patch}");
        assert!(answer["error"]
            .as_str()
            .unwrap_or_default()
            .contains("nothing was committed"));
    }
    let row = good.replace(r#""amount":"1","invoice""#, r#""amount":1e5,"invoice""#);
    let reply = push(gw.addr, &format!("[{row}]")).await;
    assert_eq!(
        (reply.status, json(&reply)["field"].clone()),
        (422, "rows[0].amount".into())
    );

    let many = format!("[{}]", vec![good.as_str(); 1001].join(","));
    assert_eq!(push(gw.addr, &many).await.status, 413);
    let huge = format!("[{}]", " ".repeat(1024 * 1024));
    assert_eq!(push(gw.addr, &huge).await.status, 413);
    let text = post(
        gw.addr,
        PAYMENTS,
        &[BEARER, "Content-Type: text/plain"],
        b"[]",
    )
    .await;
    assert_eq!(text.status, 415);
    let anonymous = post(gw.addr, PAYMENTS, &[JSON], good.as_bytes()).await;
    assert_eq!(anonymous.status, 401);
    let wrong = post(
        gw.addr,
        PAYMENTS,
        &["Authorization: Bearer nope", JSON],
        b"[]",
    )
    .await;
    assert_eq!(wrong.status, 401);
    let got = request(gw.addr, "GET", PAYMENTS, &[BEARER], b"").await;
    assert_eq!(got.status, 405);

    // Nothing of any refused body was committed.
    let ok = push(gw.addr, &format!("[{good}]")).await;
    assert_eq!(ok.body, r#"{"accepted":1,"duplicates":0}"#);
    assert_eq!(events_reach(&events, 1).await.len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_push_where_payments_come_from_odata_is_a_conflict() {
    let onec = MockOnec::start().await;
    let (mut gw, _events) = start(Some(&onec), "source = \"odata\"").await;
    let reply = push(gw.addr, &format!("[{}]", pushed(&guid(1), "1", true, "1"))).await;
    assert_eq!(reply.status, 409, "{}", reply.body);
    gw.stop().await;
}
