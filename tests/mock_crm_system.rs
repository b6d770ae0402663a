//! The test harness of the sync runtime (issue 18, item 12): the mock CRM
//! (`support::mock_crm`) and the test system over it
//! (`support::test_system`), each of the mock's answers mapped to the
//! outcome the runtime acts on.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cti_gateway::store::OutboxOp;
use cti_gateway::sync::inbound::{Change, Inbound};
use cti_gateway::sync::system::{Headers, Outcome, OutgoingRow, Remote, System, Webhook};
use cti_gateway::sync::SystemSpec;
use serde_json::json;
use support::mock_crm::{Bucket, LimitAnswer, MockCrm, Mode, WebhookTarget, MAX_BATCH};
use support::mock_http::{self, Handler, HandlerFuture, HttpRequest, Limits, MockHttp};
use support::test_system::TestSystem;
use support::{post, request};

fn system(crm: &MockCrm) -> TestSystem {
    TestSystem::new(SystemSpec::new("testcrm").expect("name"), &crm.url())
        .with_timeout(Duration::from_secs(2))
}

fn upsert(id: i64, key: &str, name: &str) -> OutgoingRow {
    OutgoingRow {
        id,
        kind: "company".to_owned(),
        record_key: key.to_owned(),
        op: OutboxOp::Upsert,
        body: json!({"id": key, "name": name, "inn": "7707083893", "phones": ["84951110001"]})
            .to_string(),
        remote_id: None,
        remote_version: None,
    }
}

fn remove(id: i64, key: &str) -> OutgoingRow {
    OutgoingRow {
        op: OutboxOp::Remove,
        body: json!(key).to_string(),
        ..upsert(id, key, "")
    }
}

fn confirmed(outcome: &Outcome) -> &Remote {
    match outcome {
        Outcome::Confirmed(remote) => remote,
        other => panic!("not confirmed: {other:?}"),
    }
}

fn is_retry(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Retry(_))
}

#[tokio::test]
async fn a_batch_creates_then_updates_by_external_id_and_a_remove_marks_the_record() {
    let crm = MockCrm::start().await;
    let sys = system(&crm);
    let outcomes = sys
        .send(&[upsert(1, "k1", "Альфа"), upsert(2, "k2", "Бета")])
        .await;
    assert_eq!(outcomes.len(), 2);
    let k1 = confirmed(&outcomes[0]).clone();
    assert_eq!(k1.remote_version.as_deref(), Some("1"));
    let outcomes = sys.send(&[upsert(3, "k1", "Альфа-2")]).await;
    let again = confirmed(&outcomes[0]);
    assert_eq!(
        again.remote_id, k1.remote_id,
        "an update, not a second create"
    );
    assert_eq!(again.remote_version.as_deref(), Some("2"));
    assert_eq!(
        crm.record_by_external("k1").expect("k1").fields["name"],
        "Альфа-2"
    );

    let outcomes = sys.send(&[remove(4, "k2")]).await;
    confirmed(&outcomes[0]);
    assert!(crm.record_by_external("k2").expect("kept").removed);
    let counters = crm.counters();
    assert_eq!(
        (
            counters.creates,
            counters.updates,
            counters.removes,
            counters.writes
        ),
        (2, 1, 1, 4)
    );
    assert_eq!(crm.creates_of("k1"), 1);
    assert_eq!(crm.records().len(), 2);
}

#[tokio::test]
async fn a_flagged_record_is_permanent_with_the_mocks_message_and_the_others_confirmed() {
    let crm = MockCrm::start().await;
    crm.set_invalid("k2", "ИНН: неверная контрольная сумма");
    let outcomes = system(&crm)
        .send(&[
            upsert(1, "k1", "Альфа"),
            upsert(2, "k2", "Бета"),
            remove(3, "k9"),
        ])
        .await;
    confirmed(&outcomes[0]);
    assert_eq!(
        outcomes[1],
        Outcome::Permanent("ИНН: неверная контрольная сумма".to_owned())
    );
    assert_eq!(outcomes[2], Outcome::Permanent("NOT_FOUND".to_owned()));
    assert!(crm.record_by_external("k2").is_none());
    assert_eq!(crm.counters().refused_entries, 2);
}

#[tokio::test]
async fn over_the_bucket_is_limited_503_or_429_with_retry_after_and_counted() {
    let crm = MockCrm::start().await;
    // Drains one request every 10 s: nothing drains within the test.
    crm.set_bucket(Some(Bucket {
        capacity: 3,
        drain_per_second: 0.1,
    }));
    let sys = system(&crm);
    for i in 0..3 {
        confirmed(&sys.send(&[upsert(i, "k1", "Альфа")]).await[0]);
    }
    assert_eq!(
        sys.send(&[upsert(4, "k1", "Альфа")]).await,
        vec![Outcome::Limited { retry_after: None }],
        "Bitrix24's 503 QUERY_LIMIT_EXCEEDED"
    );
    crm.set_limit_answer(LimitAnswer::RetryAfter429);
    let outcome = sys.send(&[upsert(5, "k1", "Альфа")]).await.remove(0);
    let Outcome::Limited {
        retry_after: Some(wait),
    } = outcome
    else {
        panic!("not limited with a wait: {outcome:?}");
    };
    assert!(
        (Duration::from_secs(1)..=Duration::from_secs(10)).contains(&wait),
        "{wait:?}"
    );
    let counters = crm.counters();
    assert_eq!((counters.limit_answers, counters.writes), (2, 3));
}

#[tokio::test]
async fn a_forced_429_carries_its_retry_after_and_one_failing_record_fails_only_its_batches() {
    let crm = MockCrm::start().await;
    let sys = system(&crm);
    crm.set_limit_answer(LimitAnswer::RetryAfter429);
    crm.force_limit(1, 2);
    assert_eq!(
        sys.send(&[upsert(1, "k1", "Альфа")]).await,
        vec![Outcome::Limited {
            retry_after: Some(Duration::from_secs(2))
        }]
    );
    confirmed(&sys.send(&[upsert(2, "k1", "Альфа")]).await[0]);
    assert_eq!(crm.counters().limit_answers, 1);

    crm.set_failing("k2", true);
    let outcome = sys.send(&[upsert(3, "k2", "Бета")]).await.remove(0);
    assert!(is_retry(&outcome), "{outcome:?}");
    let found = sys.find_existing(&upsert(3, "k2", "Бета")).await;
    assert!(matches!(found, Err(Outcome::Retry(_))), "{found:?}");
    confirmed(&sys.send(&[upsert(4, "k3", "Гамма")]).await[0]);
    crm.set_failing("k2", false);
    confirmed(&sys.send(&[upsert(5, "k2", "Бета")]).await[0]);
}

#[tokio::test]
async fn the_bucket_drains_exactly_at_its_rate() {
    let crm = MockCrm::start().await;
    crm.set_bucket(Some(Bucket {
        capacity: 2,
        drain_per_second: 20.0,
    }));
    let sys = system(&crm);
    // Two at once fill it; 50 ms drains one; a request 60 ms apart always fits.
    for i in 0..2 {
        confirmed(&sys.send(&[upsert(i, "k1", "Альфа")]).await[0]);
    }
    for i in 2..8 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        confirmed(&sys.send(&[upsert(i, "k1", "Альфа")]).await[0]);
    }
    assert_eq!(crm.counters().limit_answers, 0);
}

#[tokio::test]
async fn a_blocked_account_is_blocked_for_every_call_until_unblocked() {
    let crm = MockCrm::start().await;
    let sys = system(&crm);
    crm.set_blocked(true);
    let outcome = sys.send(&[upsert(1, "k1", "Альфа")]).await.remove(0);
    assert!(matches!(outcome, Outcome::Blocked(_)), "{outcome:?}");
    let found = sys.find_existing(&upsert(1, "k1", "Альфа")).await;
    assert!(matches!(found, Err(Outcome::Blocked(_))), "{found:?}");
    let reply = request(crm.addr(), "GET", "/api/records", &[], b"").await;
    assert_eq!(reply.status, 403);
    assert!(reply
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/html"));
    assert_eq!(crm.counters().blocked_answers, 3);
    crm.set_blocked(false);
    confirmed(&sys.send(&[upsert(2, "k1", "Альфа")]).await[0]);
}

#[tokio::test]
async fn failures_of_the_remote_are_retries() {
    let crm = MockCrm::start().await;
    let sys = TestSystem::new(SystemSpec::new("testcrm").expect("name"), &crm.url())
        .with_timeout(Duration::from_millis(300));
    let rows = [upsert(1, "k1", "Альфа"), upsert(2, "k2", "Бета")];
    for mode in [Mode::Fail, Mode::Garbage, Mode::Hang] {
        crm.set_mode(mode);
        let outcomes = sys.send(&rows).await;
        assert!(outcomes.iter().all(is_retry), "{mode:?}: {outcomes:?}");
        let found = sys.find_existing(&rows[0]).await;
        assert!(
            matches!(found, Err(Outcome::Retry(_))),
            "{mode:?}: {found:?}"
        );
        let listed = sys.list(None).await;
        assert!(
            matches!(listed, Err(Outcome::Retry(_))),
            "{mode:?}: {listed:?}"
        );
    }
    crm.set_mode(Mode::Normal);
    crm.set_status(502);
    assert!(sys.send(&rows).await.iter().all(is_retry));
    crm.set_status(200);
    assert!(sys
        .send(&rows)
        .await
        .iter()
        .all(|o| matches!(o, Outcome::Confirmed(_))));

    // A refused connection: a port nobody listens on any more.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let gone = TestSystem::new(
        SystemSpec::new("testcrm").expect("name"),
        &format!("http://{addr}"),
    );
    let outcome = gone.send(&rows[..1]).await.remove(0);
    assert!(is_retry(&outcome), "{outcome:?}");
}

#[tokio::test]
async fn a_write_the_mock_accepted_but_never_answered_is_found_before_a_second_create() {
    let crm = MockCrm::start().await;
    let sys = system(&crm);
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    crm.on_write(move |events| {
        let accepted_tx = accepted_tx.clone();
        async move {
            let _ = accepted_tx.send(events);
            false // the answer is lost: a crash after the CRM accepted
        }
    });
    let row = upsert(1, "k1", "Альфа");
    assert_eq!(sys.find_existing(&row).await, Ok(None));
    let outcome = sys.send(std::slice::from_ref(&row)).await.remove(0);
    assert!(is_retry(&outcome), "{outcome:?}");
    let events = accepted.recv().await.expect("the hook ran");
    assert_eq!(events.len(), 1);
    assert!(events[0].created);
    crm.clear_on_write();
    let found = sys
        .find_existing(&row)
        .await
        .expect("lookup")
        .expect("the accepted record is found");
    assert_eq!(found.remote_id, events[0].id);
    assert_eq!(crm.creates_of("k1"), 1);
}

#[tokio::test]
async fn a_paused_mock_holds_requests_until_resumed() {
    let crm = Arc::new(MockCrm::start().await);
    crm.pause();
    let sys = Arc::new(system(&crm));
    let sending = tokio::spawn({
        let sys = Arc::clone(&sys);
        async move { sys.send(&[upsert(1, "k1", "Альфа")]).await }
    });
    support::eventually(Duration::from_secs(5), "the request arrived", || {
        crm.requests().len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!sending.is_finished(), "answered while paused");
    assert_eq!(crm.counters().writes, 0);
    crm.resume();
    let outcome = sending.await.expect("send task").remove(0);
    confirmed(&outcome);
}

#[tokio::test]
async fn list_pages_every_record_in_order_with_removed_ones_deleted() {
    let crm = MockCrm::start().await;
    for i in 0..230 {
        crm.seed(
            Some(&format!("k{i}")),
            json!({"name": format!("Клиент {i}")}),
        );
    }
    crm.seed(None, json!({"name": "Без внешнего id"}));
    let removed = crm.records()[7].id.clone();
    crm.remove_by_user(&removed).expect("record");
    let sys = system(&crm);
    let mut seen: Vec<Inbound> = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = sys.list(after.as_deref()).await.expect("a page");
        pages += 1;
        seen.extend(page.records);
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
        assert!(pages < 10, "list does not end");
    }
    assert_eq!(pages, 3);
    let ids: Vec<String> = seen.iter().map(|r| r.remote_id.clone()).collect();
    let expected: Vec<String> = crm.records().into_iter().map(|r| r.id).collect();
    assert_eq!(ids, expected);
    assert_eq!(seen[7].change, Change::Deleted);
    let Change::Upsert(first) = &seen[0].change else {
        panic!("{:?}", seen[0]);
    };
    assert_eq!(first.name.as_deref(), Some("Клиент 0"));
    assert_eq!(
        (seen[0].system.as_str(), seen[0].kind.as_str()),
        ("testcrm", "company")
    );
}

/// A webhook receiver: keeps every request.
struct Sink(Arc<Mutex<Vec<HttpRequest>>>);

impl Handler for Sink {
    fn handle<'a>(&'a self, req: &'a HttpRequest) -> HandlerFuture<'a> {
        mock_http::lock(&self.0).push(req.clone());
        Box::pin(async { Some(mock_http::json_reply(hyper::StatusCode::OK, &json!({}))) })
    }
}

#[tokio::test]
async fn each_write_fires_a_webhook_the_system_authenticates_and_parses() {
    let received = Arc::new(Mutex::new(Vec::new()));
    let sink = MockHttp::start(Limits::default(), |_| Sink(Arc::clone(&received))).await;
    let crm = MockCrm::start().await;
    crm.set_webhook(Some(WebhookTarget {
        url: format!("http://{}/api/v1/sync/testcrm/webhook", sink.addr()),
        header: "X-Mock-Token".to_owned(),
        token: "webhook-token".to_owned(),
    }));
    let sys = system(&crm);
    let created = confirmed(&sys.send(&[upsert(1, "k1", "Альфа")]).await[0]).clone();
    crm.edit(
        &created.remote_id,
        json!({"name": "Альфа (CRM)", "phones": ["+7 916 555-55-55"]}),
    )
    .expect("record");
    confirmed(&sys.send(&[remove(2, "k1")]).await[0]);
    support::eventually(Duration::from_secs(5), "three webhooks", || {
        crm.counters().webhooks_sent == 3
    })
    .await;
    let hooks = mock_http::lock(&received).clone();
    assert_eq!(hooks.len(), 3);
    let parsed: Vec<Inbound> = hooks
        .iter()
        .map(|h| {
            assert_eq!(h.target, "/api/v1/sync/testcrm/webhook");
            let pairs = header_pairs(&h.headers);
            let hook = Webhook {
                name: None,
                secret: None,
                headers: Headers(&pairs),
                body: &h.body,
            };
            assert!(sys.authenticate(&hook), "the mock's token");
            sys.parse(&hook).expect("parses").remove(0)
        })
        .collect();
    assert!(parsed.iter().all(|p| p.remote_id == created.remote_id));
    let Change::Upsert(first) = &parsed[0].change else {
        panic!("{:?}", parsed[0]);
    };
    assert_eq!(first.name.as_deref(), Some("Альфа"));
    assert_eq!(first.inn.as_deref(), Some("7707083893"));
    let Change::Upsert(edited) = &parsed[1].change else {
        panic!("{:?}", parsed[1]);
    };
    assert_eq!(edited.name.as_deref(), Some("Альфа (CRM)"));
    assert_eq!(edited.phones, Some(vec!["+7 916 555-55-55".to_owned()]));
    assert_eq!(parsed[2].change, Change::Deleted);

    // A wrong or missing token, a body that is not the mock's.
    let mut headers = hooks[0].headers.clone();
    headers.insert("x-mock-token", "webhook-tokeN".parse().expect("value"));
    let forged_pairs = header_pairs(&headers);
    let forged = Webhook {
        name: None,
        secret: None,
        headers: Headers(&forged_pairs),
        body: &hooks[0].body,
    };
    assert!(!sys.authenticate(&forged));
    let mut without = headers.clone();
    without.remove("x-mock-token");
    let without_pairs = header_pairs(&without);
    assert!(!sys.authenticate(&Webhook {
        headers: Headers(&without_pairs),
        ..forged
    }));
    for body in [
        &b"{"[..],
        br#"{"event":"record.moved","record":{"id":"1"}}"#,
        br#"{"event":"record.updated"}"#,
    ] {
        let hook = Webhook { body, ..forged };
        let error = sys.parse(&hook).expect_err("refused");
        assert!(!error.what.is_empty());
    }
}

#[tokio::test]
async fn the_api_refuses_a_batch_over_fifty_and_answers_lookups_and_removes() {
    let crm = MockCrm::start().await;
    let records: Vec<_> = (0..=MAX_BATCH)
        .map(|i| json!({"external_id": format!("k{i}"), "fields": {"name": "x"}}))
        .collect();
    let body = json!({ "records": records }).to_string();
    let reply = post(crm.addr(), "/api/records/batch", &[], body.as_bytes()).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body.contains("BATCH_TOO_LARGE"), "{}", reply.body);
    assert!(crm.records().is_empty());

    let record = crm.seed(Some("ключ/1"), json!({"name": "Альфа"}));
    let reply = request(
        crm.addr(),
        "GET",
        "/api/records/by-external/%D0%BA%D0%BB%D1%8E%D1%87%2F1",
        &[],
        b"",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply.body.contains(&format!("\"id\":\"{}\"", record.id)),
        "{}",
        reply.body
    );
    let reply = request(crm.addr(), "GET", "/api/records/by-external/nope", &[], b"").await;
    assert_eq!(reply.status, 404);
    let path = format!("/api/records/{}/remove", record.id);
    let reply = post(crm.addr(), &path, &[], b"").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(crm.records()[0].removed);
    assert_eq!(
        post(crm.addr(), "/api/records/999/remove", &[], b"")
            .await
            .status,
        404
    );
    assert_eq!(
        request(crm.addr(), "GET", "/api/records/batch", &[], b"")
            .await
            .status,
        405
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_and_not_logged() {
    let crm = MockCrm::start().await;
    let big = vec![b'x'; 1024 * 1024 + 1];
    let reply = post(crm.addr(), "/api/records/batch", &[], &big).await;
    assert_eq!(reply.status, 413);
    assert!(crm.requests().is_empty());
    assert_eq!(crm.counters().requests, 0);
}

/// A request's headers as the gateway hands them to a system: names and raw values.
fn header_pairs(headers: &hyper::HeaderMap) -> Vec<(&str, &[u8])> {
    headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_bytes()))
        .collect()
}
