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

// ------------------------------------------------------------ the XML form

const XML: &str = "Content-Type: application/xml; charset=utf-8";

/// One `<payment>` as 1C's `ЗаписьXML` writes it in docs/1c-pull.md's
/// sample (`ТекстПлатежей`): no indentation, the fields in the sample's
/// order, `XMLСтрока` of each value; `rows` as (amount, invoice, contract).
fn payment_xml(
    key: &str,
    version: &str,
    posted: bool,
    amount: &str,
    rows: &[(&str, &str, &str)],
) -> String {
    let rows: String = rows
        .iter()
        .map(|(amount, invoice, contract)| {
            format!("<row><amount>{amount}</amount><invoice>{invoice}</invoice><contract>{contract}</contract></row>")
        })
        .collect();
    format!(
        "<payment><ref>{key}</ref><version>{version}</version><number>0000-000123</number><date>2026-12-05T10:30:00+03:00</date><amount>{amount}</amount><counterparty>{cp}</counterparty><posted>{posted}</posted><rows>{rows}</rows></payment>",
        cp = guid(7),
    )
}

/// The document `ТекстПлатежей` returns: the declaration `ЗаписьXML`
/// writes for `УстановитьСтроку("UTF-8")`, then `<payments>`.
fn payments_xml(payments: &[String]) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><payments>{}</payments>",
        payments.concat()
    )
}

async fn push_xml(addr: std::net::SocketAddr, body: &[u8]) -> Reply {
    post(addr, PAYMENTS, &[BEARER, XML], body).await
}

fn pushed_xml(accepted: u64, duplicates: u64) -> String {
    format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<pushed accepted=\"{accepted}\" duplicates=\"{duplicates}\"/>\n")
}

#[tokio::test]
async fn xml_payments_are_posted_changed_reversed_and_deduplicated() {
    let (mut gw, events) = start(None, "source = \"push\"").await;
    let (a, b) = (guid(501), guid(502));
    let inv = guid(900);
    let first = payments_xml(&[
        payment_xml(
            &a,
            "AAAAAQAAAAA=",
            true,
            "15000.5",
            &[("15000.5", &inv, "")],
        ),
        payment_xml(&b, "AAAAAQAAAAA=", true, "700", &[]),
    ]);
    let reply = push_xml(gw.addr, first.as_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body, pushed_xml(2, 0));
    assert_eq!(
        reply.header("Content-Type"),
        Some("application/xml; charset=utf-8")
    );
    // The same versions again: duplicates, nothing emitted.
    let again = push_xml(gw.addr, first.as_bytes()).await;
    assert_eq!(again.body, pushed_xml(0, 2));
    // a changed (a new version, a new amount), b reversed (unposted).
    let second = payments_xml(&[
        payment_xml(&a, "AAAAAgAAAAA=", true, "16000", &[("16000", &inv, "")]),
        payment_xml(&b, "AAAAAgAAAAA=", false, "700", &[]),
    ]);
    let reply = push_xml(gw.addr, second.as_bytes()).await;
    assert_eq!(reply.body, pushed_xml(2, 0), "{}", reply.body);
    let all = events_reach(&events, 4).await;
    assert_eq!(
        summary(&all),
        [
            event("payment.posted", &a, "15000.50"),
            event("payment.posted", &b, "700.00"),
            event("payment.changed", &a, "16000.00"),
            event("payment.reversed", &b, "700.00"),
        ]
    );
    let p = &all[0]["payment"];
    assert_eq!(all[0]["source"], "push");
    assert_eq!(p["number"], "0000-000123");
    assert_eq!(p["date"], "2026-12-05T10:30:00+03:00");
    assert_eq!(p["counterparty"], Value::from(guid(7)));
    assert_eq!(p["rows"][0]["invoice"], Value::from(inv.clone()));
    assert_eq!(p["rows"][0]["contract"], Value::Null, "an empty element");

    // windows-1251, as declared; text/xml is XML too.
    let c = guid(503);
    let text = format!(
        "<?xml version=\"1.0\" encoding=\"windows-1251\"?>\n<payments>\n  {}\n</payments>\n",
        payment_xml(&c, "1", true, "1", &[]).replace("0000-000123", "П-17")
    );
    let (cp1251, _, unmappable) = encoding_rs::WINDOWS_1251.encode(&text);
    assert!(!unmappable);
    let reply = post(
        gw.addr,
        PAYMENTS,
        &[BEARER, "Content-Type: text/xml"],
        &cp1251,
    )
    .await;
    assert_eq!(reply.body, pushed_xml(1, 0), "{}", reply.body);
    let all = events_reach(&events, 5).await;
    assert_eq!(all[4]["payment"]["number"], "П-17");
    gw.stop().await;
}

#[tokio::test]
async fn each_bad_xml_push_is_refused_naming_what_and_where() {
    let (mut gw, events) = start(None, "source = \"push\"").await;
    let json = |r: &Reply| -> Value { serde_json::from_str(&r.body).expect("JSON answer") };
    let good = payment_xml(&guid(601), "1", true, "1", &[("1", "", "")]);

    // Malformed: line and column of where it went wrong; a DTD; not <payments>.
    let broken = push_xml(gw.addr, b"<payments>\n  <payment></paymnt>\n</payments>").await;
    assert_eq!(broken.status, 400, "{}", broken.body);
    assert_eq!(
        (
            json(&broken)["line"].clone(),
            json(&broken)["column"].clone()
        ),
        (2.into(), 12.into()),
        "{}",
        broken.body
    );
    assert!(json(&broken)["error"]
        .as_str()
        .is_some_and(|e| e.contains("nothing was committed")));
    let doctype = push_xml(
        gw.addr,
        b"<!DOCTYPE payments [<!ENTITY x \"y\">]>\n<payments>&x;</payments>",
    )
    .await;
    assert_eq!(doctype.status, 400, "{}", doctype.body);
    assert!(doctype.body.contains("DTD"), "{}", doctype.body);
    let root = push_xml(gw.addr, b"<?xml version=\"1.0\"?>\n<pays/>").await;
    assert_eq!(
        (root.status, json(&root)["line"].clone()),
        (400, 2.into()),
        "{}",
        root.body
    );
    let koi8 = push_xml(
        gw.addr,
        b"<?xml version=\"1.0\" encoding=\"KOI8-R\"?><payments/>",
    )
    .await;
    assert_eq!(koi8.status, 400, "{}", koi8.body);

    // Each field that does not fit: 422 naming the index and the field.
    for (from, to, field) in [
        (
            "<amount>1</amount><counterparty>",
            "<amount>1,50</amount><counterparty>",
            "amount",
        ),
        ("2026-12-05T10:30:00+03:00", "2026-12-05 10:30", "date"),
        ("2026-12-05T10:30:00+03:00", "2026-12-05T10:30:00", "date"),
        ("<ref>", "<ref>not-a-guid", "ref"),
        ("<posted>true", "<posted>yes", "posted"),
        ("<posted>true</posted>", "", "posted"),
        (
            "<version>1</version>",
            "<version>1</version><version>2</version>",
            "version",
        ),
        ("<number>", "<surprise>1</surprise><number>", "surprise"),
        ("<row><amount>1", "<row><amount>1e5", "rows[0].amount"),
        ("<row>", "<row><note/>", "rows[0].note"),
    ] {
        let bad = good.replacen(from, to, 1);
        assert_ne!(bad, good, "{from}");
        let body = payments_xml(&[good.clone(), bad]);
        let reply = push_xml(gw.addr, body.as_bytes()).await;
        assert_eq!(reply.status, 422, "{to}: {}", reply.body);
        let answer = json(&reply);
        assert_eq!(
            (answer["index"].clone(), answer["field"].clone()),
            (1.into(), field.into()),
            "{to}: {}",
            reply.body
        );
        assert!(answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("nothing was committed")));
    }
    let stray = payments_xml(&[good.clone(), "<pay/>".to_owned()]);
    let reply = push_xml(gw.addr, stray.as_bytes()).await;
    assert_eq!(
        (reply.status, json(&reply)["index"].clone()),
        (422, 1.into())
    );

    let many = payments_xml(&vec![good.clone(); 1001]);
    assert_eq!(push_xml(gw.addr, many.as_bytes()).await.status, 413);
    let huge = format!("<payments>{}</payments>", " ".repeat(1024 * 1024));
    assert_eq!(push_xml(gw.addr, huge.as_bytes()).await.status, 413);
    let text = post(
        gw.addr,
        PAYMENTS,
        &[BEARER, "Content-Type: text/plain"],
        b"<payments/>",
    )
    .await;
    assert_eq!(text.status, 415);
    let anonymous = post(gw.addr, PAYMENTS, &[XML], good.as_bytes()).await;
    assert_eq!(anonymous.status, 401);

    // Nothing of any refused body was committed.
    let ok = push_xml(gw.addr, payments_xml(&[good]).as_bytes()).await;
    assert_eq!(ok.body, pushed_xml(1, 0));
    assert_eq!(events_reach(&events, 1).await.len(), 1);
    gw.stop().await;
}

/// docs/1c-pull.md's payments sample: what `ОтправитьПлатежи` sends, as
/// "What goes over the wire" shows it (the doc and this test change
/// together), with and without the byte order mark `УстановитьТелоИзСтроки`
/// may write, and indented (a `ЗаписьXML` whose parameters indent).
#[tokio::test]
async fn payments_sample_request_is_accepted() {
    let (mut gw, events) = start(None, "source = \"push\"").await;
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><payments><payment><ref>6f1a0d2e-5b7c-11ef-9c3d-00155d012345</ref><version>AAAAAQAAAAA=</version><number>0000-000123</number><date>2026-12-05T10:30:00+03:00</date><amount>15000.5</amount><counterparty>0d8f6e5c-1b2a-11ef-9c3d-00155d012345</counterparty><posted>true</posted><rows><row><amount>15000.5</amount><invoice>3a1b2c4d-1b2a-11ef-9c3d-00155d012345</invoice><contract>00000000-0000-0000-0000-000000000000</contract></row></rows></payment></payments>";
    let request = format!(
        "POST /api/v1/exchange/payments HTTP/1.1\r\nHost: cti-gateway:8080\r\nAuthorization: Bearer api-token-for-tests\r\nContent-Type: application/xml; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let reply = raw(gw.addr, request.as_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body, pushed_xml(1, 0));
    let with_bom = [b"\xEF\xBB\xBF".as_slice(), body.as_bytes()].concat();
    assert_eq!(push_xml(gw.addr, &with_bom).await.body, pushed_xml(0, 1));
    let indented = body
        .replace("?><payments>", "?>\r\n<payments>\r\n\t")
        .replace("<payment><ref>", "<payment>\r\n\t\t<ref>")
        .replace("</row></rows>", "</row>\r\n\t\t</rows>\r\n\t");
    assert_eq!(
        push_xml(gw.addr, indented.as_bytes()).await.body,
        pushed_xml(0, 1)
    );
    let all = events_reach(&events, 1).await;
    let p = &all[0]["payment"];
    assert_eq!(all[0]["event"], "payment.posted");
    assert_eq!(p["amount"], "15000.50");
    assert_eq!(
        p["rows"][0]["contract"],
        "00000000-0000-0000-0000-000000000000"
    );
    gw.stop().await;
}
