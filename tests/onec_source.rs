//! The 1C source seen from outside: a gateway on 127.0.0.1:0 reading a mock
//! 1C base (`support::mock_onec`) over its standard OData interface, asked
//! SayName over SOAP as the PBX does.
//!
//! The `[onec]` table below makes 1C small and quick to reason about: pages
//! of two rows, a 300 ms lookup budget, a 2 s timeout per request. Refreshes
//! are triggered with `Gateway::reload` (what SIGHUP does); background work
//! is waited for by polling with a deadline, never by fixed sleeps.

mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::mock_onec::{
    guid, MockCounterparty, MockOnec, Mode, RequestKind, ACTUAL_ADDRESS_KIND_KEY, BANKS,
    BANK_ACCOUNTS, CONTACTS, COUNTERPARTIES, LEGAL_ADDRESS_KIND_KEY, PASSWORD, REGISTER,
};
use support::*;

/// `onec.lookup_budget_ms` below.
const BUDGET: Duration = Duration::from_millis(300);
/// What an answer may take beyond the budget on a loaded 2-core machine:
/// loopback HTTP both ways, the SOAP parse and the scheduling.
const SLACK: Duration = Duration::from_millis(400);
/// `Authorization` for the mock's `odata:secret`.
const MOCK_AUTH: &str = "Basic b2RhdGE6c2VjcmV0";
/// `Catalog_Контрагенты` percent-encoded as UTF-8.
const ENCODED_CATALOG: &str =
    "Catalog_%D0%9A%D0%BE%D0%BD%D1%82%D1%80%D0%B0%D0%B3%D0%B5%D0%BD%D1%82%D1%8B";

fn onec_table(mock: &MockOnec, password: &str) -> String {
    format!(
        r#"
[onec]
odata_url = "{url}"
username = "odata"
password = "{password}"
refresh = "1h"
lookup_budget_ms = 300
category_field = "КатегорияКлиента"
manager_phone_field = "ДобавочныйМенеджера"
page_size = 2
timeout = "2s"
negative_ttl = "1m"
"#,
        url = mock.url()
    )
}

/// A gateway with an empty JSON Lines file and 1C as its source.
async fn start_on(mock: &MockOnec) -> TestGateway {
    start_with("", &onec_table(mock, PASSWORD)).await
}

// ---------------------------------------------------------------- the base

/// Listed, category 1, extension 244, a phone in both fields, an e-mail and an address.
fn alpha() -> MockCounterparty {
    MockCounterparty::new(guid(1), "ООО \"Альфа\"")
        .full_name("Общество с ограниченной ответственностью \"Альфа\"")
        .inn("7701000001", "770101001")
        .extra("КатегорияКлиента", 1)
        .extra("ДобавочныйМенеджера", "244")
        .phone("+7 (925) 045-23-43", "79250452343")
        .email("info@alpha.example")
        .address("г. Москва, ул. Тверская, д. 1")
}
const ALPHA_DATA: &str = "<?xml version=\"1.0\"?>\n<data>\n    <title>ООО \"Альфа\"</title>\n    <category>1</category>\n    <manager>\n        <phone>244</phone>\n    </manager>\n</data>\n";

/// An older record: its mobile only in `Представление` (`НомерТелефона` empty).
fn beta() -> MockCounterparty {
    MockCounterparty::new(guid(2), "ИП Бетов Борис Борисович")
        .inn("770200000002", "")
        .extra("КатегорияКлиента", 2)
        .extra("ДобавочныйМенеджера", "301")
        .phone("8 (916) 111-22-33", "")
        .phone("+7 495 700-00-02", "74957000002")
}

/// `НомерТелефона` with ten digits, no country code; no manager.
fn gamma() -> MockCounterparty {
    MockCounterparty::new(guid(3), "ООО Гамма")
        .extra("КатегорияКлиента", 0)
        .phone("925 777-66-55", "9257776655")
}

/// A group row, with a phone in its contact rows all the same.
fn folder() -> MockCounterparty {
    MockCounterparty::new(guid(4), "Покупатели")
        .folder()
        .phone("+7 926 000-00-04", "79260000004")
}

/// Marked for deletion.
fn deleted() -> MockCounterparty {
    MockCounterparty::new(guid(5), "ООО Удалённое")
        .deleted()
        .extra("ДобавочныйМенеджера", "400")
        .phone("+7 926 000-00-05", "79260000005")
}

/// Inside the group `folder`.
fn delta() -> MockCounterparty {
    MockCounterparty::new(guid(6), "АО Дельта")
        .parent(guid(4))
        .extra("КатегорияКлиента", 3)
        .extra("ДобавочныйМенеджера", "512")
        .phone("+7 (343) 200-00-06", "73432000006")
}

/// Added to 1C after the gateway's warm-up: only a live lookup can find it.
fn newcomer(n: u64, national: &str) -> MockCounterparty {
    MockCounterparty::new(guid(n), format!("ООО Новичок {n}"))
        .extra("КатегорияКлиента", 2)
        .extra("ДобавочныйМенеджера", "245")
        .phone(format!("+7 {national}"), format!("7{national}"))
}

async fn mock_with(rows: Vec<MockCounterparty>) -> MockOnec {
    let mock = MockOnec::start().await;
    for c in rows {
        mock.upsert(c);
    }
    mock
}

// ---------------------------------------------------------------- helpers

/// Polls `probe` every 25 ms until it gives `Ok`, or panics after `limit`
/// with `what` and the last `Err` it gave.
async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(last) => {
                assert!(
                    Instant::now() < deadline,
                    "{what}: not within {limit:?}; last seen: {last}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn readyz(addr: SocketAddr) -> Value {
    let reply = get(addr, "/readyz").await;
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("/readyz: {e}: {}", reply.body))
}

/// `sources.onec` of `/readyz`.
async fn onec_health(addr: SocketAddr) -> Value {
    readyz(addr).await["sources"]["onec"].clone()
}

/// Waits for the background warm-up: `sources.onec.last_success` set.
async fn wait_warm(addr: SocketAddr) -> Value {
    wait_for("the 1C warm-up", Duration::from_secs(10), || async move {
        let onec = onec_health(addr).await;
        if onec["last_success"].is_string() {
            Ok(onec)
        } else {
            Err(onec.to_string())
        }
    })
    .await
}

/// A gateway warmed from a 1C that lists alpha and delta.
async fn warmed() -> (MockOnec, TestGateway) {
    let mock = mock_with(vec![alpha(), delta()]).await;
    let gw = start_on(&mock).await;
    wait_warm(gw.addr).await;
    (mock, gw)
}

/// Puts 1C in `mode`, asks for a read, and waits until `/readyz` shows the
/// 1C source failing; returns `sources.onec`.
async fn fail_1c(mock: &MockOnec, gw: &TestGateway, mode: Mode) -> Value {
    mock.set_mode(mode);
    gw.gateway().reload();
    wait_onec_state(
        gw.addr,
        "the failure to show",
        "failing",
        Duration::from_secs(10),
    )
    .await
}

/// Waits until `sources.onec.state` of `/readyz` is `state` ("ok", "failing").
async fn wait_onec_state(addr: SocketAddr, what: &str, state: &str, limit: Duration) -> Value {
    wait_for(what, limit, || async move {
        let onec = onec_health(addr).await;
        if onec["state"] == state {
            Ok(onec)
        } else {
            Err(onec.to_string())
        }
    })
    .await
}

/// The `<data>` of a SayName answer and how long the answer took.
async fn say(addr: SocketAddr, number: &str) -> (String, Duration) {
    let started = Instant::now();
    let reply = soap(addr, &say_name_envelope(number)).await;
    let took = started.elapsed();
    assert_eq!(reply.status, 200, "SayName({number}): {}", reply.body);
    (say_name_data(&reply), took)
}

fn data_doc(title: &str, category: &str, phone: &str) -> String {
    format!("<?xml version=\"1.0\"?>\n<data>\n    <title>{title}</title>\n    <category>{category}</category>\n    <manager>\n        <phone>{phone}</phone>\n    </manager>\n</data>\n")
}

fn is_unknown(data: &str) -> bool {
    data.contains("<title></title>")
        && data.contains("<category></category>")
        && data.contains("<phone></phone>")
}

fn assert_unknown(number: &str, data: &str) {
    assert!(is_unknown(data), "{number} should be unknown: {data}");
}

/// The sum of the samples of metric `name` whose labels contain `labels`
/// (`""` for all); `None` when there is no such sample.
fn metric(body: &str, name: &str, labels: &str) -> Option<f64> {
    let mut found = None;
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric_name, label_part) = match series.split_once('{') {
            Some((n, l)) => (n, l),
            None => (series, ""),
        };
        if metric_name == name && label_part.contains(labels) {
            let v: f64 = value.parse().unwrap_or(f64::NAN);
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

async fn metrics(addr: SocketAddr) -> String {
    get(addr, "/metrics").await.body
}

/// A GET to the mock with its credentials.
async fn mock_get(mock: &MockOnec, path_and_query: &str) -> Reply {
    mock_get_as(mock, path_and_query, Some(MOCK_AUTH)).await
}

async fn mock_get_as(mock: &MockOnec, path_and_query: &str, auth: Option<&str>) -> Reply {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {}\r\n{auth}Connection: close\r\n\r\n",
        mock.addr()
    );
    raw(mock.addr(), req.as_bytes()).await
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn json(reply: &Reply) -> Value {
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.body))
}

// ---------------------------------------------------------------- the mock itself

#[tokio::test]
async fn mock_serves_pages_and_single_objects_as_1c_does() {
    let mock = mock_with(vec![alpha(), beta(), folder()]).await;
    let catalog = format!("/base/odata/standard.odata/{}", enc(COUNTERPARTIES));

    let page = |skip: usize| {
        format!(
            "{catalog}?$format=json&$select=Ref_Key,Description,{}&$orderby=Ref_Key&$top=2&$skip={skip}",
            enc("КатегорияКлиента")
        )
    };
    let first = json(&mock_get(&mock, &page(0)).await);
    let second = json(&mock_get(&mock, &page(2)).await);
    assert!(first["odata.metadata"]
        .as_str()
        .is_some_and(|m| m.ends_with("/$metadata#Catalog_Контрагенты")));
    let keys: Vec<&str> = first["value"]
        .as_array()
        .into_iter()
        .chain(second["value"].as_array())
        .flatten()
        .map(|r| r["Ref_Key"].as_str().expect("Ref_Key"))
        .collect();
    let mut sorted = vec![guid(1), guid(2), guid(4)];
    sorted.sort();
    assert_eq!(keys, sorted, "three rows over two pages, by Ref_Key");
    let row = &first["value"][0];
    assert_eq!(
        row.as_object().map(|o| o.len()),
        Some(3),
        "only the selected fields: {row}"
    );
    assert!(row["КатегорияКлиента"].is_number(), "{row}");

    // Without $select, everything a real base sends, noise included.
    let all = json(&mock_get(&mock, &format!("{catalog}?$format=json")).await);
    let a = all["value"]
        .as_array()
        .and_then(|v| v.iter().find(|r| r["Ref_Key"] == guid(1).as_str()))
        .expect("alpha listed");
    assert_eq!(a["Parent_Key"], "00000000-0000-0000-0000-000000000000");
    assert_eq!(a["КонтактнаяИнформация"][0]["LineNumber"], "1");
    assert_eq!(a["КонтактнаяИнформация"][0]["НомерТелефона"], "79250452343");
    assert!(a["DataVersion"].is_string() && a["Predefined"] == false);
    assert!(a
        .as_object()
        .is_some_and(|o| o.keys().any(|k| k.ends_with("@navigationLinkUrl"))));

    // A single object, without the value wrapper; its DataVersion moves on a write.
    let one = format!("{catalog}(guid'{}')?$format=json", guid(1));
    let before = json(&mock_get(&mock, &one).await);
    assert_eq!(before["Description"], "ООО \"Альфа\"");
    mock.upsert(alpha().full_name("Другое"));
    let after = json(&mock_get(&mock, &one).await);
    assert_ne!(before["DataVersion"], after["DataVersion"]);
    let missing = mock_get(
        &mock,
        &format!("{catalog}(guid'{}')?$format=json", guid(99)),
    )
    .await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("odata.error"), "{}", missing.body);

    // Contact rows carry the owner's key and a string LineNumber.
    let contacts = json(
        &mock_get(
            &mock,
            &format!(
                "/base/odata/standard.odata/{}?$format=json&$orderby=Ref_Key,LineNumber",
                enc(CONTACTS)
            ),
        )
        .await,
    );
    let rows = contacts["value"].as_array().expect("value");
    assert_eq!(rows.len(), 3 + 2 + 1);
    assert!(rows.iter().any(|r| r["Ref_Key"] == guid(2).as_str()
        && r["LineNumber"] == "1"
        && r["Представление"] == "8 (916) 111-22-33"
        && r["НомерТелефона"] == ""));
    assert_eq!(mock.count(RequestKind::CatalogPage), 3);
    assert_eq!(mock.count(RequestKind::ByRef), 3);
    assert_eq!(mock.count(RequestKind::ContactsPage), 1);
}

#[tokio::test]
async fn mock_filters_like_1c_and_decodes_strictly() {
    let mock = mock_with(vec![alpha(), beta(), deleted()]).await;
    let contacts = format!("/base/odata/standard.odata/{}", enc(CONTACTS));
    let catalog = format!("/base/odata/standard.odata/{}", enc(COUNTERPARTIES));

    let lookup = json(
        &mock_get(
            &mock,
            &format!(
                "{contacts}?$format=json&$filter={}",
                enc("substringof('9250452343', НомерТелефона) and Тип eq 'Телефон'")
            ),
        )
        .await,
    );
    let rows = lookup["value"].as_array().expect("value");
    assert_eq!(rows.len(), 1, "{lookup}");
    assert_eq!(rows[0]["Ref_Key"], guid(1).as_str());
    assert_eq!(mock.count(RequestKind::Lookup), 1);

    let by_ref = json(
        &mock_get(
            &mock,
            &format!(
                "{catalog}?$format=json&$select=Ref_Key&$filter={}",
                enc(&format!(
                    "Ref_Key eq guid'{}' or Ref_Key eq guid'{}'",
                    guid(2),
                    guid(5)
                ))
            ),
        )
        .await,
    );
    assert_eq!(by_ref["value"].as_array().map(Vec::len), Some(2));
    assert_eq!(mock.count(RequestKind::ByRef), 1);

    let live = json(
        &mock_get(
            &mock,
            &format!("{catalog}?$format=json&$filter=DeletionMark%20eq%20false"),
        )
        .await,
    );
    assert_eq!(live["value"].as_array().map(Vec::len), Some(2));

    // %2B is a plus, and so is a literal +: never a space.
    for plus in ["%2B", "+"] {
        let r = json(
            &mock_get(
                &mock,
                &format!(
                    "{contacts}?$format=json&$filter=substringof('{plus}7%20(925)',%20{})",
                    enc("Представление")
                ),
            )
            .await,
        );
        assert_eq!(r["value"].as_array().map(Vec::len), Some(1), "{plus}: {r}");
    }
    let bad_escape = mock_get(
        &mock,
        &format!("{contacts}?$format=json&$filter=substringof('%G1',%20Тип)"),
    )
    .await;
    assert_eq!(bad_escape.status, 400, "{}", bad_escape.body);
}

#[tokio::test]
async fn mock_refuses_what_1c_refuses() {
    let mock = mock_with(vec![alpha()]).await;
    let catalog = format!("/base/odata/standard.odata/{}", enc(COUNTERPARTIES));
    let ok = format!("{catalog}?$format=json");

    let anonymous = mock_get_as(&mock, &ok, None).await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(
        anonymous.header("www-authenticate"),
        Some("Basic realm=\"1C\"")
    );
    assert!(anonymous.body.contains("odata.error"));
    let wrong = mock_get_as(&mock, &ok, Some("Basic b2RhdGE6d3Jvbmc=")).await;
    assert_eq!(wrong.status, 401);

    let unknown_field = mock_get(&mock, &format!("{ok}&$select=Ref_Key,{}", enc("Менеджер"))).await;
    assert_eq!(unknown_field.status, 400);
    let error = json(&unknown_field);
    assert_eq!(error["odata.error"]["code"], "-1");
    assert!(
        error["odata.error"]["message"]["value"]
            .as_str()
            .is_some_and(|m| m.contains("Менеджер")),
        "{error}"
    );

    let unknown_set = mock_get(
        &mock,
        &format!(
            "/base/odata/standard.odata/{}?$format=json",
            enc("Catalog_Клиенты")
        ),
    )
    .await;
    assert_eq!(unknown_set.status, 404);

    for filter in [
        "Description gt 'А'",
        "startswith(Description, 'ООО')",
        "Ref_Key eq '1'",
        "substringof('1', НомерТелефона)",
    ] {
        let r = mock_get(&mock, &format!("{ok}&$filter={}", enc(filter))).await;
        assert_eq!(r.status, 400, "{filter}: {}", r.body);
    }

    let atom = mock_get(&mock, &catalog).await;
    assert_eq!(atom.status, 200);
    assert!(
        atom.header("content-type")
            .is_some_and(|t| t.starts_with("application/atom+xml")),
        "no $format: Atom, as 1C answers"
    );
    assert_eq!(
        mock_get(&mock, &format!("{catalog}?$format=csv"))
            .await
            .status,
        406
    );

    mock.set_mode(Mode::Fail);
    let failing = mock_get(&mock, &ok).await;
    assert_eq!(failing.status, 500);
    assert!(failing.body.contains("odata.error"));
}

// ---------------------------------------------------------------- the gateway

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_reads_the_whole_catalog_in_pages_and_answers_without_asking_1c() {
    let mock = mock_with(vec![alpha(), beta(), gamma(), folder(), deleted(), delta()]).await;
    let gw = start_on(&mock).await;
    let onec = wait_warm(gw.addr).await;
    assert_eq!(
        onec["records"], 4,
        "folders and deleted rows are not loaded: {onec}"
    );
    assert_eq!(readyz(gw.addr).await["counterparties"], 4);

    // Six catalog rows and nine contact rows, two per page.
    let seen = mock.requests();
    let skips = |kind: RequestKind| -> Vec<String> {
        seen.iter()
            .filter(|r| r.kind == kind)
            .map(|r| {
                assert_eq!(r.option("$top"), Some("2"), "page size 2: {}", r.target);
                r.option("$skip").unwrap_or("0").to_owned()
            })
            .collect()
    };
    let catalog_skips = skips(RequestKind::CatalogPage);
    for skip in ["0", "2", "4"] {
        assert!(
            catalog_skips.iter().any(|s| s == skip),
            "catalog page $skip={skip} missing: {catalog_skips:?}"
        );
    }
    let contact_skips = skips(RequestKind::ContactsPage);
    for skip in ["0", "2", "4", "6", "8"] {
        assert!(
            contact_skips.iter().any(|s| s == skip),
            "contact page $skip={skip} missing: {contact_skips:?}"
        );
    }

    // Every known caller in every format, with no request to 1C.
    mock.reset_requests();
    for number in [
        "89250452343",
        "+79250452343",
        "79250452343",
        "9250452343",
        "+7 (925) 045-23-43",
        "8-925-045-23-43",
    ] {
        assert_eq!(say(gw.addr, number).await.0, ALPHA_DATA, "{number}");
    }
    let beta_data = data_doc("ИП Бетов Борис Борисович", "2", "301");
    // Only in Представление, with НомерТелефона empty.
    assert_eq!(say(gw.addr, "+7 916 111-22-33").await.0, beta_data);
    assert_eq!(say(gw.addr, "84957000002").await.0, beta_data);
    // Ten digits in НомерТелефона.
    assert_eq!(
        say(gw.addr, "89257776655").await.0,
        data_doc("ООО Гамма", "0", "")
    );
    assert_eq!(
        say(gw.addr, "83432000006").await.0,
        data_doc("АО Дельта", "3", "512")
    );
    let asked: Vec<String> = mock.requests().into_iter().map(|r| r.target).collect();
    assert!(
        asked.is_empty(),
        "known callers must be answered from memory, but 1C was asked: {asked:?}"
    );

    // The group's and the deleted row's phones are nobody's.
    for number in ["89260000004", "89260000005"] {
        assert_unknown(number, &say(gw.addr, number).await.0);
    }

    // The e-mail reaches the operator's card.
    let mut screen = gw
        .gateway()
        .hub()
        .subscribe(OPERATOR_KEY, None)
        .expect("known key");
    let reply = soap(
        gw.addr,
        &incoming_call_envelope("89250452343", OPERATOR_KEY),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let message = tokio::time::timeout(Duration::from_secs(2), screen.recv())
        .await
        .expect("pop-up within 2 s")
        .expect("subscription open");
    let card: Value = serde_json::from_str(&message.json).expect("json");
    let counterparty = &card["counterparty"];
    assert_eq!(counterparty["id"], guid(1).as_str(), "{card}");
    assert_eq!(counterparty["name"], "ООО \"Альфа\"");
    assert_eq!(counterparty["inn"], "7701000001");
    assert_eq!(
        counterparty["emails"],
        serde_json::json!(["info@alpha.example"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_lookup_finds_a_counterparty_added_after_warm_up_within_the_budget() {
    let mock = mock_with(vec![alpha()]).await;
    let gw = start_on(&mock).await;
    wait_warm(gw.addr).await;
    mock.upsert(newcomer(10, "9161234567"));
    mock.reset_requests();

    let (data, took) = say(gw.addr, "8 916 123-45-67").await;
    assert_eq!(data, data_doc("ООО Новичок 10", "2", "245"));
    assert!(took < BUDGET + SLACK, "answered in {took:?}");
    let lookups: Vec<_> = mock
        .requests()
        .into_iter()
        .filter(|r| r.kind == RequestKind::Lookup)
        .collect();
    assert_eq!(lookups.len(), 1, "{lookups:?}");
    assert!(
        lookups[0]
            .option("$filter")
            .is_some_and(|f| f.contains("substringof('9161234567'")),
        "the lookup filters on the last ten digits: {:?}",
        lookups[0].option("$filter")
    );

    let before = mock.requests().len();
    assert_eq!(
        say(gw.addr, "+79161234567").await.0,
        data_doc("ООО Новичок 10", "2", "245")
    );
    assert_eq!(
        mock.requests().len(),
        before,
        "a found caller asked again must not reach 1C: {:?}",
        mock.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_1c_is_answered_unknown_within_the_budget_and_its_late_answer_is_kept() {
    let mock = mock_with(vec![alpha()]).await;
    let gw = start_on(&mock).await;
    wait_warm(gw.addr).await;
    mock.set_lookup_delay(Duration::from_millis(600));
    mock.upsert(newcomer(11, "9031112233"));
    mock.reset_requests();

    let (data, took) = say(gw.addr, "89031112233").await;
    assert_unknown("89031112233", &data);
    assert!(
        took < BUDGET + Duration::from_millis(200),
        "the answer must not wait for 1C beyond the budget: {took:?}"
    );

    // Let the lookup finish in the background: 1C has answered it (and
    // whatever followed it).
    wait_for(
        "1C answering the slow lookup",
        Duration::from_secs(5),
        || async {
            let seen = mock.requests();
            let lookup_answered = seen
                .iter()
                .any(|r| r.kind == RequestKind::Lookup && r.status.is_some());
            if lookup_answered && seen.iter().all(|r| r.status.is_some()) {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;
    wait_for(
        "the late answer to be used",
        Duration::from_secs(3),
        || async {
            let (data, _) = say(gw.addr, "89031112233").await;
            if data == data_doc("ООО Новичок 11", "2", "245") {
                Ok(())
            } else {
                Err(data)
            }
        },
    )
    .await;
    assert_eq!(
        mock.count(RequestKind::Lookup),
        1,
        "the background lookup's result must be kept, not asked again: {:?}",
        mock.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_number_asked_twice_reaches_1c_once() {
    let mock = mock_with(vec![alpha()]).await;
    let gw = start_on(&mock).await;
    wait_warm(gw.addr).await;
    mock.reset_requests();

    for _ in 0..2 {
        assert_unknown("89990001122", &say(gw.addr, "8 999 000-11-22").await.0);
    }
    assert_eq!(
        mock.count(RequestKind::Lookup),
        1,
        "the second ask must come from the negative cache: {:?}",
        mock.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_asks_for_one_new_number_make_one_lookup() {
    let mock = mock_with(vec![alpha()]).await;
    let gw = start_on(&mock).await;
    wait_warm(gw.addr).await;
    // Slow enough that the asks overlap, quick enough to fit the budget.
    mock.set_lookup_delay(Duration::from_millis(100));
    mock.upsert(newcomer(12, "9057778899"));
    mock.reset_requests();

    let mut asks = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let addr = gw.addr;
        asks.spawn(async move { say(addr, "89057778899").await.0 });
    }
    let expected = data_doc("ООО Новичок 12", "2", "245");
    let mut known = 0;
    while let Some(data) = asks.join_next().await {
        if data.expect("ask") == expected {
            known += 1;
        }
    }
    assert_eq!(
        mock.count(RequestKind::Lookup),
        1,
        "20 concurrent asks: {:?}",
        mock.requests()
    );
    assert_eq!(known, 20, "every waiter shares the one lookup's answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_applies_renames_removals_and_deletion_marks_and_skips_unchanged_records() {
    let row = |n: u64, name: &str| {
        MockCounterparty::new(guid(n), name)
            .extra("КатегорияКлиента", 1)
            .extra("ДобавочныйМенеджера", "244")
            .phone(format!("+7 916 100-00-{n:02}"), format!("79161000{n:03}"))
    };
    let mock = mock_with(vec![
        row(21, "ООО Старое имя"),
        row(22, "ООО Уходящее"),
        row(23, "ООО Помеченное"),
        row(24, "ООО Постоянное"),
        row(25, "ООО Неизменное"),
    ])
    .await;
    let gw = start_with(DIRECTORY, &onec_table(&mock, PASSWORD)).await;
    assert_eq!(wait_warm(gw.addr).await["records"], 5);
    assert_eq!(
        say(gw.addr, "89161000021").await.0,
        data_doc("ООО Старое имя", "1", "244")
    );

    mock.upsert(row(21, "ООО Новое имя"));
    mock.remove(&guid(22));
    mock.mark_deleted(&guid(23));
    gw.gateway().reload();

    let addr = gw.addr;
    wait_for("the refresh", Duration::from_secs(10), || async move {
        let onec = onec_health(addr).await;
        let (data, _) = say(addr, "89161000021").await;
        if onec["records"] == 3 && data.contains("ООО Новое имя") {
            Ok(())
        } else {
            Err(format!("{onec} {data}"))
        }
    })
    .await;
    assert_eq!(
        say(gw.addr, "89161000024").await.0,
        data_doc("ООО Постоянное", "1", "244")
    );
    for number in ["89161000022", "89161000023"] {
        assert_unknown(number, &say(gw.addr, number).await.0);
    }

    // The JSON Lines file's records are untouched.
    let ready = readyz(gw.addr).await;
    assert_eq!(ready["sources"]["file"]["records"], 3, "{ready}");
    assert_eq!(ready["counterparties"], 6, "{ready}");
    assert!(say(gw.addr, "89235292926").await.0.contains("Фэйковый чиж"));

    // Two rows kept their DataVersion: not processed again.
    let body = wait_for(
        "the refresh gauges",
        Duration::from_secs(5),
        || async move {
            let body = metrics(addr).await;
            let unchanged = metric(&body, "cti_onec_refresh_unchanged_records", "");
            if unchanged == Some(2.0) {
                Ok(body)
            } else {
                Err(format!(
                    "cti_onec_refresh_unchanged_records = {unchanged:?}"
                ))
            }
        },
    )
    .await;
    let changed = metric(&body, "cti_onec_refresh_changed_records", "");
    // The renamed row changed; whether the row now marked for deletion
    // counts as changed (its DataVersion moved) or as dropped is the
    // implementation's choice.
    assert!(
        matches!(changed, Some(v) if v == 1.0 || v == 2.0),
        "cti_onec_refresh_changed_records = {changed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_keeps_the_last_directory_serving_and_the_source_recovers() {
    let (mock, gw) = warmed().await;
    let addr = gw.addr;

    // 1C answers 500.
    let onec = fail_1c(&mock, &gw, Mode::Fail).await;
    assert!(onec["consecutive_failures"].as_u64() >= Some(1), "{onec}");
    let error = onec["last_error"].as_str().unwrap_or_default().to_owned();
    assert!(
        error.contains("500") || error.contains("Внутренняя ошибка сервера"),
        "last_error should say 1C answered 500: {onec}"
    );
    assert_eq!(onec["records"], 2, "{onec}");
    assert_eq!(say(addr, "89250452343").await.0, ALPHA_DATA);
    let body = metrics(addr).await;
    let failures = metric(&body, "cti_source_consecutive_failures", "source=\"onec\"");
    assert!(
        failures.is_some_and(|v| v >= 1.0),
        "cti_source_consecutive_failures{{source=\"onec\"}} = {failures:?}"
    );
    mock.upsert(newcomer(13, "9013334455"));
    let (data, took) = say(addr, "89013334455").await;
    assert_unknown("89013334455", &data);
    assert!(took < BUDGET + SLACK, "answered in {took:?} while 1C fails");

    // 1C accepts and never answers.
    mock.set_mode(Mode::Hang);
    let before = onec["consecutive_failures"].as_u64().unwrap_or(0);
    gw.gateway().reload();
    let onec = wait_for(
        "a timeout to show",
        Duration::from_secs(15),
        || async move {
            let onec = onec_health(addr).await;
            let error = onec["last_error"]
                .as_str()
                .unwrap_or_default()
                .to_lowercase();
            if onec["state"] == "failing"
                && onec["consecutive_failures"].as_u64() > Some(before)
                && (error.contains("timeout")
                    || error.contains("timed out")
                    || error.contains("within"))
            {
                Ok(onec)
            } else {
                Err(onec.to_string())
            }
        },
    )
    .await;
    assert_eq!(onec["records"], 2, "{onec}");
    assert_eq!(say(addr, "89250452343").await.0, ALPHA_DATA);
    mock.upsert(newcomer(14, "9014445566"));
    let (data, took) = say(addr, "89014445566").await;
    assert_unknown("89014445566", &data);
    assert!(took < BUDGET + SLACK, "answered in {took:?} while 1C hangs");

    // 1C is back: the retry (backoff from about 1 s) brings the source back.
    mock.set_mode(Mode::Normal);
    let onec = wait_onec_state(addr, "the recovery", "ok", Duration::from_secs(15)).await;
    assert_eq!(onec["consecutive_failures"], 0, "{onec}");
    assert_eq!(
        say(addr, "83432000006").await.0,
        data_doc("АО Дельта", "3", "512")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_shows_as_a_failing_source_and_loads_nothing() {
    let mock = mock_with(vec![alpha(), delta()]).await;
    let gw = start_with("", &onec_table(&mock, "wrong")).await;
    let addr = gw.addr;
    let onec = wait_onec_state(
        addr,
        "the refusal to show",
        "failing",
        Duration::from_secs(10),
    )
    .await;
    let error = onec["last_error"]
        .as_str()
        .unwrap_or_default()
        .to_lowercase();
    assert!(
        error.contains("401") || error.contains("credential") || error.contains("password"),
        "last_error should say the credentials were refused: {onec}"
    );
    assert!(onec["last_success"].is_null(), "{onec}");
    assert_eq!(readyz(addr).await["counterparties"], 0);

    let (data, took) = say(addr, "89250452343").await;
    assert_unknown("89250452343", &data);
    assert!(took < BUDGET + SLACK, "answered in {took:?}");
    let seen = mock.requests();
    assert!(!seen.is_empty(), "the gateway never asked 1C");
    assert!(
        seen.iter().all(|r| !r.authorized && r.status == Some(401)),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_while_1c_is_down_answers_from_the_snapshot_at_once() {
    let (mock, mut gw) = warmed().await;
    gw.stop().await;

    mock.set_mode(Mode::Hang);
    let started = Instant::now();
    let gw = start_in(gw.dir, &onec_table(&mock, PASSWORD)).await;
    let (data, _) = say(gw.addr, "89250452343").await;
    let took = started.elapsed();
    assert_eq!(data, ALPHA_DATA, "answered from the snapshot");
    assert!(
        took < Duration::from_millis(1500),
        "start-up and the first answer must not wait for 1C: {took:?}"
    );
    assert_eq!(
        say(gw.addr, "83432000006").await.0,
        data_doc("АО Дельта", "3", "512")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_1c_are_percent_encoded_json_with_select_and_paging() {
    let mock = mock_with(vec![alpha(), beta(), delta()]).await;
    let gw = start_on(&mock).await;
    wait_warm(gw.addr).await;
    mock.upsert(newcomer(15, "9025556677"));
    assert_eq!(
        say(gw.addr, "89025556677").await.0,
        data_doc("ООО Новичок 15", "2", "245")
    );
    assert_unknown("89990009988", &say(gw.addr, "89990009988").await.0);

    let seen = mock.requests();
    for kind in [
        RequestKind::CatalogPage,
        RequestKind::ContactsPage,
        RequestKind::Lookup,
        RequestKind::ByRef,
    ] {
        assert!(
            seen.iter().any(|r| r.kind == kind),
            "no {kind:?} request among {seen:?}"
        );
    }
    let encoded = format!("/base/odata/standard.odata/{ENCODED_CATALOG}").to_lowercase();
    for r in &seen {
        let what = &r.target;
        assert!(what.is_ascii(), "unencoded characters: {what}");
        assert!(
            what.to_lowercase().starts_with(&encoded),
            "entity set not percent-encoded UTF-8: {what}"
        );
        assert!(
            matches!(r.entity_set.as_deref(), Some(COUNTERPARTIES | CONTACTS)),
            "{what} decodes to {:?}",
            r.entity_set
        );
        assert!(r.authorized, "{what} without the credentials");
        assert_eq!(r.status, Some(200), "{what}");
        assert_eq!(r.option("$format"), Some("json"), "{what}");
        assert!(r.option("$select").is_some(), "no $select: {what}");
        if matches!(r.kind, RequestKind::CatalogPage | RequestKind::ContactsPage) {
            for option in ["$orderby", "$top", "$skip"] {
                assert!(r.option(option).is_some(), "page without {option}: {what}");
            }
        }
        if r.kind == RequestKind::Lookup {
            assert!(
                r.option("$filter")
                    .is_some_and(|f| f.contains("НомерТелефона")),
                "{what}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookup_and_source_metrics_are_exported() {
    let mock = mock_with(vec![alpha(), beta(), gamma(), folder()]).await;
    let gw = start_on(&mock).await;
    wait_warm(gw.addr).await;
    let body = metrics(gw.addr).await;
    assert_eq!(
        metric(&body, "cti_source_records", "source=\"onec\""),
        Some(3.0),
        "cti_source_records{{source=\"onec\"}}"
    );
    let last_success = metric(
        &body,
        "cti_source_last_success_timestamp_seconds",
        "source=\"onec\"",
    );
    assert!(
        last_success.is_some_and(|t| t > 0.0),
        "cti_source_last_success_timestamp_seconds{{source=\"onec\"}} = {last_success:?}"
    );

    mock.upsert(newcomer(16, "9036667788"));
    for _ in 0..2 {
        assert_eq!(
            say(gw.addr, "89036667788").await.0,
            data_doc("ООО Новичок 16", "2", "245")
        );
    }
    for _ in 0..2 {
        assert_unknown("89990008877", &say(gw.addr, "89990008877").await.0);
    }
    let body = metrics(gw.addr).await;
    for result in ["hit", "miss", "negative_hit"] {
        let v = metric(
            &body,
            "cti_onec_lookup_cache_total",
            &format!("result=\"{result}\""),
        );
        assert!(
            v.is_some_and(|v| v >= 1.0),
            "cti_onec_lookup_cache_total{{result=\"{result}\"}} = {v:?}"
        );
    }
    let count = metric(&body, "cti_onec_lookup_seconds_count", "");
    assert!(
        count.is_some_and(|v| v >= 1.0),
        "cti_onec_lookup_seconds_count = {count:?}"
    );
    assert!(
        body.contains("cti_onec_lookup_seconds_bucket"),
        "cti_onec_lookup_seconds is a histogram"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1c_counterparty_deleted_through_the_push_api_stays_hidden_until_1c_changes_it() {
    let mock = mock_with(vec![alpha(), gamma()]).await;
    let gw = start_on(&mock).await;
    wait_warm(gw.addr).await;
    assert_eq!(say(gw.addr, "89250452343").await.0, ALPHA_DATA);

    let deleted = request(
        gw.addr,
        "DELETE",
        &format!("/api/v1/counterparties/{}", guid(1)),
        &["Authorization: Bearer api-token-for-tests"],
        b"",
    )
    .await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    // Hidden at once, the live lookup in 1C included (1C still has it).
    assert_eq!(say(gw.addr, "89250452343").await.0, data_doc("", "", ""));
    assert_eq!(readyz(gw.addr).await["counterparties"], 1);

    // 1C did not change it: a refresh that still lists it keeps it hidden.
    // Full reads done, from the refresh histogram's count.
    let reads = |addr| async move {
        let metrics = get(addr, "/metrics").await.body;
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("cti_onec_refresh_seconds_count "))
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let before = reads(gw.addr).await;
    gw.gateway().reload();
    let addr = gw.addr;
    wait_for("the refresh", Duration::from_secs(10), || {
        let before = before.clone();
        async move {
            let now = reads(addr).await;
            if now != before {
                Ok(())
            } else {
                Err(now)
            }
        }
    })
    .await;
    assert_eq!(say(gw.addr, "89250452343").await.0, data_doc("", "", ""));

    // Someone changes it in 1C: the changed copy is a new one, and answers.
    mock.upsert(alpha().full_name("Альфа, изменена в 1С"));
    gw.gateway().reload();
    wait_for("the changed copy", Duration::from_secs(10), || async move {
        let (data, _) = say(addr, "89250452343").await;
        if data == ALPHA_DATA {
            Ok(())
        } else {
            Err(data)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_1c_snapshot_has_its_own_file_and_takes_over_from_an_older_main_store() {
    use cti_gateway::directory::Counterparty;
    use cti_gateway::gateway::onec_store_path;
    use cti_gateway::store::Store;

    // A main store as a gateway before the 1C store wrote it: 1C's records
    // in it, under the source "onec".
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), "").expect("write directory");
    let main_path = dir.path().join("store.sqlite");
    let old: Counterparty = serde_json::from_value(serde_json::json!({
        "id": guid(1),
        "name": "ООО \"Старая Альфа\"",
        "category": 1,
        "manager_phone": "244",
        "phones": ["+7 925 045-23-43"],
    }))
    .expect("record");
    let store = Store::open(&main_path, &prometheus::Registry::new()).expect("main store");
    store
        .replace_source("onec", "old-build", vec![old].into())
        .await
        .expect("save");
    store.close().await;

    // 1C hangs: the old records answer.
    let mock = mock_with(vec![alpha(), delta()]).await;
    mock.set_mode(Mode::Hang);
    let mut gw = start_in(dir, &onec_table(&mock, PASSWORD)).await;
    assert_eq!(
        say(gw.addr, "89250452343").await.0,
        data_doc("ООО \"Старая Альфа\"", "1", "244"),
        "the older main store answers for 1C until 1C is read"
    );

    // 1C is back and read: its records go to their own file.
    mock.set_mode(Mode::Normal);
    gw.gateway().reload();
    wait_for("1C's records", Duration::from_secs(10), || async {
        let (data, _) = say(gw.addr, "89250452343").await;
        if data == ALPHA_DATA {
            Ok(())
        } else {
            Err(data)
        }
    })
    .await;
    gw.stop().await;
    let onec_path = onec_store_path(&main_path);
    assert_eq!(onec_path, gw.dir.path().join("store.onec.sqlite"));
    let onec_store = Store::open_background(&onec_path, &prometheus::Registry::new(), "onec")
        .expect("1C's store");
    let saved = onec_store.load_snapshot().await.expect("load 1C's store");
    let names: Vec<&str> = saved
        .iter()
        .filter(|s| s.source == "onec")
        .flat_map(|s| s.records.iter().map(|r| r.name.as_ref()))
        .collect();
    assert_eq!(
        names,
        ["ООО \"Альфа\"", "АО Дельта"],
        "1C's records are in its own file"
    );
    onec_store.close().await;

    // Restarted while 1C hangs: the answers come from 1C's own file, and the
    // main store no longer holds 1C's records.
    mock.set_mode(Mode::Hang);
    let mut gw = start_in(gw.dir, &onec_table(&mock, PASSWORD)).await;
    assert_eq!(say(gw.addr, "89250452343").await.0, ALPHA_DATA);
    assert_eq!(
        say(gw.addr, "83432000006").await.0,
        data_doc("АО Дельта", "3", "512")
    );
    gw.stop().await;
    let store = Store::open(&main_path, &prometheus::Registry::new()).expect("main store");
    let sources: Vec<String> = store
        .load_snapshot()
        .await
        .expect("load")
        .into_iter()
        .map(|s| s.source)
        .collect();
    assert!(
        !sources.iter().any(|s| s == "onec"),
        "1C's records left the main store: {sources:?}"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_1c_is_a_failing_source_and_the_last_directory_keeps_serving() {
    let (mock, gw) = warmed().await;
    let addr = gw.addr;

    // 1C answers 200 with a cut-off, non-UTF-8 body, to reads and lookups.
    let onec = fail_1c(&mock, &gw, Mode::Garbage).await;
    let error = onec["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("not the OData JSON expected"),
        "last_error should say what 1C sent is not OData: {onec}"
    );
    assert_eq!(onec["records"], 2, "the last directory is kept: {onec}");
    assert_eq!(say(addr, "89250452343").await.0, ALPHA_DATA);
    mock.upsert(newcomer(15, "9015556677"));
    let (data, took) = say(addr, "89015556677").await;
    assert_unknown("89015556677", &data);
    assert!(
        took < BUDGET + SLACK,
        "answered in {took:?} while 1C sends garbage"
    );

    // 1C is sane again: the retry brings the source back.
    mock.set_mode(Mode::Normal);
    wait_onec_state(addr, "the recovery", "ok", Duration::from_secs(15)).await;
    assert_eq!(
        say(addr, "83432000006").await.0,
        data_doc("АО Дельта", "3", "512")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_while_1c_refuses_connections_answers_from_the_snapshot_and_says_1c_is_down() {
    let (mock, mut gw) = warmed().await;
    gw.stop().await;

    // Nothing listens where 1C was: every connection is refused.
    let closed = format!("127.0.0.1:{}", support::process::free_port());
    let table = onec_table(&mock, PASSWORD).replace(
        &mock.url(),
        &format!("http://{closed}/base/odata/standard.odata"),
    );
    let gw = start_in(gw.dir, &table).await;
    let addr = gw.addr;
    assert_eq!(
        say(addr, "89250452343").await.0,
        ALPHA_DATA,
        "answered from the snapshot"
    );
    let onec = wait_onec_state(addr, "1C shown as down", "failing", Duration::from_secs(10)).await;
    let error = onec["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("cannot reach 1C") && error.contains("onec.odata_url"),
        "last_error says 1C cannot be reached and what to check: {onec}"
    );
    assert_eq!(
        readyz(addr).await["ready"],
        true,
        "the snapshot makes it ready"
    );
    let (data, took) = say(addr, "89013334455").await;
    assert_unknown("89013334455", &data);
    assert!(
        took < BUDGET + SLACK,
        "answered in {took:?} while 1C is down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_lookup_never_answers_1cs_copy_of_an_id_a_later_push_overrides() {
    // 1C knows Alpha under two phones; a push of the same id keeps only the first.
    let mock = mock_with(vec![
        alpha().phone("+7 (925) 045-99-99", "79250459999"),
        gamma(),
    ])
    .await;
    let gw = start_on(&mock).await;
    wait_warm(gw.addr).await;
    assert_eq!(say(gw.addr, "89250459999").await.0, ALPHA_DATA);
    let body = serde_json::json!([{
        "id": guid(1), "name": "Альфа (CRM)", "manager_phone": "245", "phones": ["+7 925 045-23-43"],
    }])
    .to_string();
    let pushed = request(
        gw.addr,
        "POST",
        "/api/v1/counterparties",
        &[
            "Authorization: Bearer api-token-for-tests",
            "Content-Type: application/json",
        ],
        body.as_bytes(),
    )
    .await;
    assert_eq!(pushed.status, 200, "{}", pushed.body);
    assert_eq!(
        say(gw.addr, "89250452343").await.0,
        data_doc("Альфа (CRM)", "", "245")
    );
    // The second phone is no longer in the directory; 1C's live answer for
    // it is the copy the push overrode, received before it: not answered.
    mock.reset_requests();
    assert_eq!(say(gw.addr, "89250459999").await.0, data_doc("", "", ""));
    assert!(
        !mock.requests().is_empty(),
        "the number was asked of 1C (and its answer refused), not skipped"
    );
}

// ---------------------------------------------------------------- issue #17 (a): new fields, requisites, КА 1.1

/// The directory's JSON of `id`, as the snapshot and the card see it.
fn entry_json(gw: &TestGateway, id: &str) -> Value {
    let entry = gw
        .gateway()
        .directory()
        .lookup_id(id)
        .unwrap_or_else(|| panic!("{id} is in the directory"));
    serde_json::from_str(&entry.json()).expect("entry JSON")
}

#[tokio::test]
async fn ogrn_code_and_kind_are_read_by_the_configured_fields() {
    let legal = MockCounterparty::new(guid(71), "ПАО Сбербанк")
        .inn("7707083893", "773601001")
        .extra("ОГРН", "1027700132195")
        .extra("ЮрФизЛицо", "ЮрЛицо")
        .phone("+7 495 500-55-50", "74955005550");
    let sole = MockCounterparty::new(guid(72), "ИП Петров")
        .inn("500100732259", "")
        .extra("ОГРН", "304500116000157")
        .extra("ЮрФизЛицо", "ФизЛицо")
        .phone("+7 916 000-00-72", "79160000072");
    let unread = MockCounterparty::new(guid(73), "Петров Пётр")
        .inn("500100732259", "")
        .phone("+7 916 000-00-73", "79160000073");
    let mock = mock_with(vec![legal, sole, unread]).await;
    let table = onec_table(&mock, PASSWORD)
        + "ogrn_field = \"ОГРН\"\ncode_field = \"Code\"\nkind_field = \"ЮрФизЛицо\"\n";
    let gw = start_with("", &table).await;
    wait_warm(gw.addr).await;
    let legal = entry_json(&gw, &guid(71));
    assert_eq!(legal["ogrn"], "1027700132195", "{legal}");
    assert_eq!(legal["kind"], "legal", "{legal}");
    assert!(
        legal["code"].as_str().is_some_and(|c| c.len() == 9),
        "{legal}"
    );
    let sole = entry_json(&gw, &guid(72));
    assert_eq!(sole["ogrnip"], "304500116000157", "{sole}");
    assert!(sole.get("ogrn").is_none(), "{sole}");
    assert_eq!(sole["kind"], "sole_proprietor", "{sole}");
    // Empty ЮрФизЛицо, a 12-digit INN, no OGRNIP: a person.
    assert_eq!(entry_json(&gw, &guid(73))["kind"], "person");
    let select = mock
        .requests()
        .into_iter()
        .find(|r| r.kind == RequestKind::CatalogPage)
        .and_then(|r| r.option("$select").map(str::to_owned))
        .expect("a catalog page was read");
    for field in ["ОГРН", "Code", "ЮрФизЛицо"] {
        assert!(select.split(',').any(|f| f == field), "{field} in {select}");
    }
}

#[tokio::test]
async fn a_mistyped_inn_in_1c_answers_say_name_and_is_counted_once() {
    let typo = MockCounterparty::new(guid(74), "ООО Опечатка")
        .inn("7707083894", "77-07")
        .extra("ДобавочныйМенеджера", "250")
        .phone("+7 916 000-00-74", "79160000074");
    let mock = mock_with(vec![alpha(), typo]).await;
    let gw = start_on(&mock).await;
    wait_warm(gw.addr).await;
    let (data, _) = say(gw.addr, "89160000074").await;
    assert_eq!(data, data_doc("ООО Опечатка", "0", "250"));
    let counted = |body: &str, field: &str| {
        metric(
            body,
            "cti_directory_invalid_requisites_total",
            &format!("field=\"{field}\",source=\"onec\""),
        )
    };
    let body = metrics(gw.addr).await;
    assert_eq!(counted(&body, "kpp"), Some(1.0), "{body}");
    assert!(counted(&body, "inn").is_some_and(|n| n >= 1.0), "{body}");
    let inn_before = counted(&body, "inn");
    // Another record comes: the unchanged typo is not counted again.
    mock.upsert(gamma());
    gw.gateway().reload();
    wait_for("gamma to be read", Duration::from_secs(10), || async {
        let (data, _) = say(gw.addr, "89257776655").await;
        if is_unknown(&data) {
            Err(data)
        } else {
            Ok(())
        }
    })
    .await;
    let body = metrics(gw.addr).await;
    assert_eq!(counted(&body, "kpp"), Some(1.0), "{body}");
    assert_eq!(counted(&body, "inn"), inn_before, "{body}");
}

/// КА 1.1: contacts in `InformationRegister_КонтактнаяИнформация`.
fn register_table(mock: &MockOnec) -> String {
    onec_table(mock, PASSWORD) + "contacts_layout = \"register\"\n"
}

#[tokio::test]
async fn the_ka11_register_gives_phones_emails_and_addresses() {
    let mock = mock_with(vec![alpha(), beta(), delta()]).await;
    let gw = start_with("", &register_table(&mock)).await;
    wait_warm(gw.addr).await;
    let (data, _) = say(gw.addr, "89250452343").await;
    assert_eq!(data, ALPHA_DATA);
    // Beta's mobile is only in Представление, as every register number is.
    let (data, _) = say(gw.addr, "+7 916 111-22-33").await;
    assert!(data.contains("ИП Бетов"), "{data}");
    let alpha = entry_json(&gw, &guid(1));
    assert_eq!(alpha["emails"], serde_json::json!(["info@alpha.example"]));
    assert_eq!(alpha["address"], "г. Москва, ул. Тверская, д. 1");
    assert_eq!(mock.count(RequestKind::ContactsPage), 0);
    let register = mock
        .requests()
        .into_iter()
        .filter(|r| r.kind == RequestKind::RegisterPage)
        .collect::<Vec<_>>();
    assert!(!register.is_empty(), "the register was read");
    assert!(
        register.iter().all(|r| r.status == Some(200)
            && r.entity_set.as_deref() == Some(REGISTER)
            && r.option("$select") == Some("Объект,Тип,Представление")
            && r.option("$orderby") == Some("Объект,Тип")),
        "{register:?}"
    );
}

#[tokio::test]
async fn with_the_register_an_unknown_caller_is_not_looked_up_live() {
    let mock = mock_with(vec![alpha()]).await;
    let gw = start_with("", &register_table(&mock)).await;
    wait_warm(gw.addr).await;
    mock.upsert(newcomer(75, "916 000-00-75"));
    let (data, took) = say(gw.addr, "89160000075").await;
    assert_unknown("89160000075", &data);
    assert!(took < BUDGET + SLACK, "{took:?}");
    assert_eq!(mock.count(RequestKind::Lookup), 0);
    // The next full read finds it.
    gw.gateway().reload();
    wait_for(
        "the newcomer to be read",
        Duration::from_secs(10),
        || async {
            let (data, _) = say(gw.addr, "89160000075").await;
            if is_unknown(&data) {
                Err(data)
            } else {
                Ok(())
            }
        },
    )
    .await;
}

// ---------------------------------------------------------------- requisites

/// Sberbank's BIK and correspondent account, and an account keyed against them.
const BIK: &str = "044525225";
const CORR_ACCOUNT: &str = "30101810400000000225";
const ACCOUNT: &str = "40702810200000000001";
/// The director's field of the mock's catalog.
const DIRECTOR_FIELD: &str = "Руководитель";

/// The `[onec]` keys that read requisites (before any `[sync.*]` table).
fn requisites_keys() -> String {
    format!(
        "director_field = \"{DIRECTOR_FIELD}\"\nlegal_address_kind = \"{LEGAL_ADDRESS_KIND_KEY}\"\nactual_address_kind = \"{ACTUAL_ADDRESS_KIND_KEY}\"\nbank_accounts = \"{BANK_ACCOUNTS}\"\n"
    )
}

/// With `[sync.bitrix24]` the sync store exists (no system registered).
const SYNC_TABLE: &str = "\n[sync.bitrix24]\n";

/// A legal entity with a director, both typed addresses and a bank account.
fn epsilon(director: &str) -> MockCounterparty {
    MockCounterparty::new(guid(81), "ООО Эпсилон")
        .inn("7707083893", "773601001")
        .extra(DIRECTOR_FIELD, director)
        .extra("ДобавочныйМенеджера", "260")
        .phone("+7 916 000-00-81", "79160000081")
        .typed_address(
            "115035, г. Москва, ул. Садовническая, д. 1",
            LEGAL_ADDRESS_KIND_KEY,
        )
        .typed_address("г. Москва, ул. Тверская, д. 7", ACTUAL_ADDRESS_KIND_KEY)
}

/// 1C's banks and epsilon's account.
fn with_bank(mock: &MockOnec, bik: &str) {
    mock.add_bank(&guid(90), bik, "ПАО СБЕРБАНК", CORR_ACCOUNT);
    mock.add_bank_account(&guid(91), &guid(81), ACCOUNT, &guid(90));
}

/// Waits for record `id`'s requisites in the sync store to satisfy `done`.
async fn requisites_of(gw: &TestGateway, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let store = gw.gateway().sync_store().expect("the sync store is open");
    wait_for(
        "the requisites to be written",
        Duration::from_secs(10),
        || async {
            match store.requisites_get(id).await {
                Ok(Some(body)) => {
                    let body: Value = serde_json::from_str(&body).expect("requisites JSON");
                    if done(&body) {
                        Ok(body)
                    } else {
                        Err(body.to_string())
                    }
                }
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
}

#[tokio::test]
async fn the_director_addresses_and_bank_details_reach_the_sync_store() {
    let mock = mock_with(vec![alpha(), epsilon("Иванов Иван Иванович")]).await;
    with_bank(&mock, BIK);
    let table = onec_table(&mock, PASSWORD) + &requisites_keys() + SYNC_TABLE;
    let gw = start_with("", &table).await;
    wait_warm(gw.addr).await;
    let body = requisites_of(&gw, &guid(81), |_| true).await;
    assert_eq!(
        body,
        serde_json::json!({
            "director": "Иванов Иван Иванович",
            "legal_address": "115035, г. Москва, ул. Садовническая, д. 1",
            "actual_address": "г. Москва, ул. Тверская, д. 7",
            "bank": [{"name": "ПАО СБЕРБАНК", "bik": BIK, "account": ACCOUNT, "corr_account": CORR_ACCOUNT}]
        })
    );
    // Alpha's address has the usual kind, it has no director nor bank:
    // nothing to write.
    let store = gw.gateway().sync_store().expect("sync store");
    assert_eq!(store.requisites_get(&guid(1)).await.expect("reads"), None);
    // Nothing of it in the directory's entry.
    let entry = entry_json(&gw, &guid(81));
    assert!(
        entry.get("director").is_none() && entry.get("bank").is_none(),
        "{entry}"
    );
    // Valid bank details are not counted.
    let body = metrics(gw.addr).await;
    for field in ["bik", "account", "corr_account"] {
        let labels = format!("field=\"{field}\",source=\"onec\"");
        assert!(
            metric(&body, "cti_directory_invalid_requisites_total", &labels).unwrap_or(0.0) == 0.0,
            "{field}: {body}"
        );
    }
    // The requests named the requisites' fields.
    let requests = mock.requests();
    let select_of = |kind| {
        requests
            .iter()
            .find(|r| r.kind == kind)
            .and_then(|r| r.option("$select").map(str::to_owned))
            .unwrap_or_else(|| panic!("a {kind:?} request"))
    };
    assert!(select_of(RequestKind::CatalogPage)
        .split(',')
        .any(|f| f == DIRECTOR_FIELD));
    assert!(select_of(RequestKind::ContactsPage)
        .split(',')
        .any(|f| f == "Вид_Key"));
    assert!(select_of(RequestKind::BankAccountsPage).contains("НомерСчета"));
    assert!(select_of(RequestKind::BanksPage).contains("КоррСчет"));
    // A new director reaches the store at the next read.
    mock.upsert(epsilon("Петров Пётр Петрович"));
    gw.gateway().reload();
    let body = requisites_of(&gw, &guid(81), |b| b["director"] == "Петров Пётр Петрович").await;
    assert_eq!(body["bank"][0]["bik"], BIK, "{body}");
    // Marked for deletion in 1C: it leaves the directory, and its
    // requisites leave the sync store.
    mock.mark_deleted(&guid(81));
    gw.gateway().reload();
    wait_for(
        "the deleted record's requisites to go",
        Duration::from_secs(10),
        || async {
            match store.requisites_get(&guid(81)).await {
                Ok(None) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert!(gw.gateway().directory().lookup_id(&guid(81)).is_none());
}

#[tokio::test]
async fn a_bad_bik_is_stored_and_counted_and_the_record_answers() {
    let mock = mock_with(vec![epsilon("Иванов Иван Иванович")]).await;
    with_bank(&mock, "04452522");
    let table = onec_table(&mock, PASSWORD) + &requisites_keys() + SYNC_TABLE;
    let gw = start_with("", &table).await;
    wait_warm(gw.addr).await;
    let body = requisites_of(&gw, &guid(81), |_| true).await;
    assert_eq!(body["bank"][0]["bik"], "04452522", "{body}");
    let (data, _) = say(gw.addr, "89160000081").await;
    assert_eq!(data, data_doc("ООО Эпсилон", "0", "260"));
    let counted = wait_for(
        "the bad BIK to be counted",
        Duration::from_secs(5),
        || async {
            let body = metrics(gw.addr).await;
            metric(
                &body,
                "cti_directory_invalid_requisites_total",
                "field=\"bik\",source=\"onec\"",
            )
            .filter(|n| *n >= 1.0)
            .ok_or(body)
        },
    )
    .await;
    assert_eq!(counted, 1.0);
}

#[tokio::test]
async fn the_ka11_register_gives_phones_and_typed_addresses() {
    let mock = mock_with(vec![epsilon("Иванов Иван Иванович")]).await;
    let table = register_table(&mock) + &requisites_keys() + SYNC_TABLE;
    let gw = start_with("", &table).await;
    wait_warm(gw.addr).await;
    let (data, _) = say(gw.addr, "+7 916 000-00-81").await;
    assert_eq!(data, data_doc("ООО Эпсилон", "0", "260"));
    let body = requisites_of(&gw, &guid(81), |_| true).await;
    assert_eq!(
        body["legal_address"], "115035, г. Москва, ул. Садовническая, д. 1",
        "{body}"
    );
    assert_eq!(
        body["actual_address"], "г. Москва, ул. Тверская, д. 7",
        "{body}"
    );
    // 1C has no bank accounts here: none in the body.
    assert!(body.get("bank").is_none(), "{body}");
    assert!(mock
        .requests()
        .iter()
        .filter(|r| r.kind == RequestKind::RegisterPage)
        .all(|r| r.option("$select") == Some("Объект,Тип,Представление,Вид")));
}

#[tokio::test]
async fn without_a_sync_store_nothing_is_read_for_requisites() {
    let mock = mock_with(vec![epsilon("Иванов Иван Иванович")]).await;
    with_bank(&mock, BIK);
    // The keys without a sync store, and a sync store without the keys.
    let tables = [
        onec_table(&mock, PASSWORD) + &requisites_keys(),
        onec_table(&mock, PASSWORD) + SYNC_TABLE,
    ];
    for table in tables {
        mock.reset_requests();
        let gw = start_with("", &table).await;
        wait_warm(gw.addr).await;
        let (data, _) = say(gw.addr, "89160000081").await;
        assert_eq!(data, data_doc("ООО Эпсилон", "0", "260"));
        assert_eq!(mock.count(RequestKind::BankAccountsPage), 0);
        assert_eq!(mock.count(RequestKind::BanksPage), 0);
        for r in mock.requests() {
            let select = r.option("$select").unwrap_or_default();
            assert!(
                !select.contains(DIRECTOR_FIELD) && !select.contains("Вид"),
                "{:?} asked for {select}",
                r.kind
            );
            assert!(
                !matches!(r.entity_set.as_deref(), Some(BANKS | BANK_ACCOUNTS)),
                "{r:?}"
            );
        }
        if let Some(store) = gw.gateway().sync_store() {
            assert_eq!(store.requisites_get(&guid(81)).await.expect("reads"), None);
        }
    }
}

// ---------------------------------------------------------------- responsible users

/// A responsible user `[[manager]] onec_user` does not map is counted in
/// `cti_sync_unmapped_managers{system="onec"}` (each user once, however
/// many records name them; an empty reference is nobody), and a mapped one
/// routes the record's calls.
#[tokio::test]
async fn unmapped_1c_users_are_counted_once_each() {
    const FIELD: &str = "ОсновнойМенеджер_Key";
    let mapped = guid(70);
    let unmapped = guid(71);
    let nobody = "00000000-0000-0000-0000-000000000000";
    let mock = mock_with(vec![
        alpha().extra(FIELD, mapped.as_str()),
        beta().extra(FIELD, unmapped.as_str()),
        delta().extra(FIELD, unmapped.as_str()),
        gamma().extra(FIELD, nobody),
    ])
    .await;
    let table = onec_table(&mock, PASSWORD)
        + &format!(
            "manager_ref_field = \"{FIELD}\"\n\n[[manager]]\nextension = \"333\"\nname = \"Смирнова\"\nonec_user = \"{mapped}\"\n"
        );
    let gw = start_with("", &table).await;
    wait_warm(gw.addr).await;
    let body = metrics(gw.addr).await;
    assert_eq!(
        metric(&body, "cti_sync_unmapped_managers", "system=\"onec\""),
        Some(1.0),
        "{body}"
    );
    let entry = entry_json(&gw, &guid(1));
    assert_eq!(entry["manager_phone"], "333", "{entry}");
    // The unmapped user's records go: the gauge follows the read.
    mock.remove(&guid(2));
    mock.remove(&guid(6));
    gw.gateway().reload();
    wait_for(
        "the gauge to follow the read",
        Duration::from_secs(10),
        || async {
            let body = metrics(gw.addr).await;
            match metric(&body, "cti_sync_unmapped_managers", "system=\"onec\"") {
                Some(0.0) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}
