//! The push API over real HTTP: `POST /api/v1/counterparties` and
//! `DELETE /api/v1/counterparties/{id}`, what they change in the answers to
//! the PBX, and what survives a restart.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use cti_gateway::config::Config;
use cti_gateway::Gateway;
use support::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const PATH: &str = "/api/v1/counterparties";
const BEARER: &str = "Authorization: Bearer api-token-for-tests";
const JSON: &str = "Content-Type: application/json";

async fn push(addr: SocketAddr, body: &str) -> Reply {
    request(addr, "POST", PATH, &[JSON, BEARER], body.as_bytes()).await
}

/// `id` goes into the path as given (percent-encode it first if needed).
async fn delete(addr: SocketAddr, id: &str) -> Reply {
    request(addr, "DELETE", &format!("{PATH}/{id}"), &[BEARER], b"").await
}

fn json(reply: &Reply) -> serde_json::Value {
    serde_json::from_str(&reply.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", reply.status, reply.body))
}

/// The SayName `<data>` for `number`: (title, category, manager's phone).
async fn say_name(addr: SocketAddr, number: &str) -> (String, String, String) {
    let reply = soap(addr, &say_name_envelope(number)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let data = say_name_data(&reply);
    let field = |tag| element_text(&data, tag).unwrap_or_default().to_owned();
    (field("title"), field("category"), field("phone"))
}

async fn title(addr: SocketAddr, number: &str) -> String {
    say_name(addr, number).await.0
}

/// Counterparties in the directory, as `/readyz` says.
async fn counterparties(addr: SocketAddr) -> u64 {
    let ready = get(addr, "/readyz").await;
    json(&ready)["counterparties"]
        .as_u64()
        .expect("counterparties")
}

async fn restart(mut gw: TestGateway) -> TestGateway {
    gw.stop().await;
    let dir = gw.dir;
    start_in(dir, "").await
}

/// The file source's snapshot is saved in the background after start-up;
/// wait for it, so that a restart finds the file already loaded.
async fn wait_for_file_snapshot(gw: &TestGateway) {
    for _ in 0..250 {
        let saved = gw.gateway().store().source_fingerprint("file").await;
        if saved.expect("store readable").is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the file's snapshot was never saved");
}

fn record(id: &str, name: &str, phone: &str) -> serde_json::Value {
    serde_json::json!({"id": id, "name": name, "manager_phone": "512", "phones": [phone]})
}

fn body(records: &[serde_json::Value]) -> String {
    serde_json::Value::from(records.to_vec()).to_string()
}

#[tokio::test]
async fn a_pushed_counterparty_is_answered_by_say_name_in_any_number_format() {
    let gw = start("").await;
    assert_eq!(title(gw.addr, "89123456789").await, "", "unknown before");
    let reply = push(
        gw.addr,
        r#"[{"id":"p-1","name":"ООО Пушкин","category":3,"manager_phone":"512","phones":["+7 (912) 345-67-89"]}]"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_eq!(
        json(&reply),
        serde_json::json!({"upserted": 1, "records": 1, "counterparties": 4})
    );
    for number in [
        "89123456789",
        "+79123456789",
        "79123456789",
        "9123456789",
        "8 (912) 345-67-89",
        "+7-912-345-67-89",
    ] {
        assert_eq!(
            say_name(gw.addr, number).await,
            ("ООО Пушкин".into(), "3".into(), "512".into()),
            "{number}"
        );
    }
    let metrics = get(gw.addr, "/metrics").await;
    assert!(
        metrics
            .body
            .contains(r#"cti_push_records_total{op="upsert"} 1"#),
        "{}",
        metrics.body
    );
}

#[tokio::test]
async fn a_pushed_counterparty_survives_a_restart() {
    let gw = start("").await;
    let reply = push(
        gw.addr,
        &body(&[record("p-1", "ООО Пушкин", "89123456789")]),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let gw = restart(gw).await;
    assert_eq!(title(gw.addr, "+79123456789").await, "ООО Пушкин");
    assert_eq!(counterparties(gw.addr).await, 4);
}

#[tokio::test]
async fn an_upsert_of_the_same_id_replaces_the_record_before_and_after_a_restart() {
    let gw = start("").await;
    push(
        gw.addr,
        &body(&[record("p-1", "Старое имя", "89120000001")]),
    )
    .await;
    let reply = push(gw.addr, &body(&[record("p-1", "Новое имя", "89120000002")])).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(json(&reply)["records"], 1, "one record in the push source");
    assert_eq!(title(gw.addr, "89120000002").await, "Новое имя");
    assert_eq!(
        title(gw.addr, "89120000001").await,
        "",
        "the old phone is gone"
    );
    let gw = restart(gw).await;
    assert_eq!(title(gw.addr, "89120000002").await, "Новое имя");
    assert_eq!(title(gw.addr, "89120000001").await, "");
    assert_eq!(counterparties(gw.addr).await, 4);
}

#[tokio::test]
async fn a_body_holding_one_id_twice_is_refused_naming_both_records() {
    let gw = start("").await;
    let reply = push(
        gw.addr,
        &body(&[
            record("p-1", "Первый", "89120000001"),
            record("p-2", "Другой", "89120000002"),
            record("p-1", "Второй", "89120000001"),
        ]),
    )
    .await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    let answer = json(&reply);
    assert_eq!(answer["record"], 2);
    assert_eq!(answer["id"], "p-1");
    assert_eq!(answer["field"], "id");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("records 0 and 2")),
        "{answer}"
    );
    assert_eq!(
        title(gw.addr, "89120000001").await,
        "",
        "nothing was changed"
    );
    assert_eq!(
        title(gw.addr, "89120000002").await,
        "",
        "nothing was changed"
    );
}

#[tokio::test]
async fn a_push_overrides_the_file_copy_of_the_same_id_also_after_a_restart() {
    let gw = start("").await;
    wait_for_file_snapshot(&gw).await;
    assert_eq!(
        title(gw.addr, "89165555555").await,
        "ООО \"Ромашка\" &amp; &lt;Ко&gt;"
    );
    let reply = push(
        gw.addr,
        &body(&[record("b2", "Ромашка из 1С", "+7 916 555-55-55")]),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        json(&reply)["counterparties"],
        3,
        "the same id, not a fourth"
    );
    assert_eq!(title(gw.addr, "89165555555").await, "Ромашка из 1С");
    let gw = restart(gw).await;
    assert_eq!(title(gw.addr, "89165555555").await, "Ромашка из 1С");
}

#[tokio::test]
async fn delete_removes_a_pushed_and_a_file_counterparty_and_both_stay_removed_after_a_restart() {
    let gw = start("").await;
    wait_for_file_snapshot(&gw).await;
    let reply = push(
        gw.addr,
        &body(&[record("контрагент/1", "ИП Удаляев", "89120000009")]),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(title(gw.addr, "89120000009").await, "ИП Удаляев");

    // The id percent-encoded, '/' included.
    let encoded = "%D0%BA%D0%BE%D0%BD%D1%82%D1%80%D0%B0%D0%B3%D0%B5%D0%BD%D1%82%2F1";
    let reply = delete(gw.addr, encoded).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        json(&reply),
        serde_json::json!({"removed": true, "id": "контрагент/1", "counterparties": 3})
    );
    let reply = delete(gw.addr, "b2").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(json(&reply)["counterparties"], 2);
    assert_eq!(title(gw.addr, "89120000009").await, "");
    assert_eq!(title(gw.addr, "89165555555").await, "");
    assert_eq!(
        title(gw.addr, "89235292926").await,
        "Фэйковый чиж",
        "the others stay"
    );
    let metrics = get(gw.addr, "/metrics").await;
    assert!(
        metrics
            .body
            .contains(r#"cti_push_records_total{op="delete"} 2"#),
        "{}",
        metrics.body
    );

    let gw = restart(gw).await;
    assert_eq!(title(gw.addr, "89120000009").await, "");
    assert_eq!(
        title(gw.addr, "89165555555").await,
        "",
        "the file was not re-read"
    );
    assert_eq!(counterparties(gw.addr).await, 2);
    let reply = delete(gw.addr, "b2").await;
    assert_eq!(reply.status, 404, "gone from every source: {}", reply.body);
}

#[tokio::test]
async fn a_file_edit_of_other_lines_keeps_a_deleted_counterparty_deleted() {
    let gw = start("").await;
    wait_for_file_snapshot(&gw).await;
    assert_eq!(delete(gw.addr, "b2").await.status, 200);
    assert_eq!(title(gw.addr, "89165555555").await, "");
    // The export is written again, with b2 and one more line.
    let mut content = DIRECTORY.to_owned();
    content.push_str(r#"{"id":"d4","name":"Новый","phones":["84950000004"]}"#);
    content.push('\n');
    std::fs::write(gw.directory_file(), content).expect("rewrite the file");
    for _ in 0..100 {
        if title(gw.addr, "84950000004").await == "Новый" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        title(gw.addr, "84950000004").await,
        "Новый",
        "the file was re-read"
    );
    assert_eq!(
        title(gw.addr, "89165555555").await,
        "",
        "b2's own line did not change: it stays deleted (tests/directory_truth.rs: until it does)"
    );
}

#[tokio::test]
async fn broken_json_is_a_400_that_says_where_and_changes_nothing() {
    let gw = start("").await;
    let reply = push(
        gw.addr,
        "[{\"id\":\"x\",\"name\":\"y\",\"phones\":[\"89120000001\"]},\n{\"id\": }]",
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let answer = json(&reply);
    assert_eq!(
        (answer["line"].as_u64(), answer["column"].as_u64()),
        (Some(2), Some(8))
    );
    let error = answer["error"].as_str().expect("error");
    assert!(
        error.contains("line 2, column 8") && error.contains("nothing was changed"),
        "{error}"
    );
    assert_eq!(title(gw.addr, "89120000001").await, "");

    let reply = push(gw.addr, r#"{"id":"x","name":"y"}"#).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(
        reply.body.contains("expected a JSON array"),
        "{}",
        reply.body
    );
    let reply = push(gw.addr, "").await;
    assert_eq!(reply.status, 400, "{}", reply.body);
}

#[tokio::test]
async fn a_record_without_a_name_is_a_422_naming_record_and_field_and_nothing_is_changed() {
    let gw = start("").await;
    let reply = push(
        gw.addr,
        r#"[{"id":"p-ok","name":"Годный","phones":["89120000001"]},{"id":"p-bad","phones":["89120000002"]}]"#,
    )
    .await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    let answer = json(&reply);
    assert_eq!(answer["record"], 1);
    assert_eq!(answer["id"], "p-bad");
    assert_eq!(answer["field"], "name");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("record 1") && e.contains("nothing was changed")),
        "{answer}"
    );
    assert_eq!(
        title(gw.addr, "89120000001").await,
        "",
        "record 0 was not applied"
    );
    assert_eq!(counterparties(gw.addr).await, 3);
    let snapshot = gw
        .gateway()
        .store()
        .load_snapshot()
        .await
        .expect("snapshot");
    assert!(
        snapshot.iter().all(|s| s.source != "push"),
        "nothing was saved: {snapshot:?}"
    );
}

#[tokio::test]
async fn a_record_with_33_phones_is_a_422_naming_the_phones_and_nothing_is_changed() {
    let gw = start("").await;
    let phones: Vec<String> = (0..33).map(|i| format!("8912{i:07}")).collect();
    let reply = push(
        gw.addr,
        &body(&[
            record("p-ok", "Годный", "89130000001"),
            serde_json::json!({"id": "p-many", "name": "Многотелефонный", "phones": phones}),
        ]),
    )
    .await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    let answer = json(&reply);
    assert_eq!(
        (&answer["record"], &answer["id"], &answer["field"]),
        (
            &serde_json::json!(1),
            &serde_json::json!("p-many"),
            &serde_json::json!("phones")
        )
    );
    assert_eq!(title(gw.addr, "89130000001").await, "");
    assert_eq!(title(gw.addr, "89120000000").await, "");
    assert_eq!(counterparties(gw.addr).await, 3);
}

#[tokio::test]
async fn pushes_and_deletes_without_the_right_bearer_token_get_401() {
    let gw = start("").await;
    let one = body(&[record("p-1", "Взломщик", "89120000001")]);
    for auth in [
        None,
        Some("Authorization: Bearer wrong-token"),
        Some("Authorization: Bearer api-token-for-test"),
        Some("Authorization: Basic U09BUDoxMjM="),
    ] {
        let headers: Vec<&str> = [Some(JSON), auth].into_iter().flatten().collect();
        let reply = request(gw.addr, "POST", PATH, &headers, one.as_bytes()).await;
        assert_eq!(reply.status, 401, "{auth:?}: {}", reply.body);
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        assert!(json(&reply)["error"].is_string());
        let headers: Vec<&str> = auth.into_iter().collect();
        let reply = request(gw.addr, "DELETE", &format!("{PATH}/a1"), &headers, b"").await;
        assert_eq!(reply.status, 401, "{auth:?}: {}", reply.body);
    }
    assert_eq!(title(gw.addr, "89120000001").await, "");
    assert_eq!(title(gw.addr, "89235292926").await, "Фэйковый чиж");
}

#[tokio::test]
async fn without_an_api_token_configured_every_push_gets_401() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), DIRECTORY).expect("write directory");
    let text = config_text(dir.path(), "").replace("token = \"api-token-for-tests\"\n", "");
    assert!(!text.contains("api-token-for-tests"));
    let config = Config::parse(&text, &dir.path().join("gateway.toml"), &|_| None).expect("config");
    let gateway = Gateway::start(config).await.expect("starts");
    let addr = gateway.local_addr();
    let reply = push(addr, &body(&[record("p-1", "Кто-то", "89120000001")])).await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    // It says the API is off and how to turn it on, not to send a token.
    for needle in [
        "endpoint is off",
        "no api.token",
        "set api.token",
        "CTI_API_TOKEN",
        "restart",
    ] {
        assert!(reply.body.contains(needle), "{needle}: {}", reply.body);
    }
    // An empty Bearer token is no way in either.
    let reply = request(addr, "POST", PATH, &[JSON, "Authorization: Bearer "], b"[]").await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert_eq!(title(addr, "89120000001").await, "");
    gateway.shutdown().await;
}

#[tokio::test]
async fn a_body_over_8_mib_gets_413_whether_declared_or_chunked() {
    let gw = start("").await;
    let limit = 8 * 1024 * 1024;

    // Declared: refused from the head, before the body is read.
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    let head = format!(
        "POST {PATH} HTTP/1.1\r\nHost: x\r\n{JSON}\r\n{BEARER}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n[",
        limit + 1
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let reply = read_reply(&mut stream).await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert_eq!(json(&reply)["limit_bytes"], limit);

    // Chunked: no length to refuse up front; the limit applies while reading.
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    let head = format!(
        "POST {PATH} HTTP/1.1\r\nHost: x\r\n{JSON}\r\n{BEARER}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let chunk = vec![b' '; 64 * 1024];
    let mut sent = 0;
    while sent <= limit {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(&chunk);
        framed.extend_from_slice(b"\r\n");
        if stream.write_all(&framed).await.is_err() {
            break; // the server has answered and closed
        }
        sent += chunk.len();
    }
    let reply = read_reply(&mut stream).await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    assert!(
        reply.body.contains("larger than 8388608 bytes"),
        "{}",
        reply.body
    );
    assert_eq!(counterparties(gw.addr).await, 3);
}

#[tokio::test]
async fn more_than_10000_records_get_413_naming_the_limit_and_10000_are_taken() {
    let gw = start("").await;
    let records = |n: usize| {
        let items: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"id":"r-{i}","name":"Контрагент {i}","phones":["8977{i:07}"]}}"#))
            .collect();
        format!("[{}]", items.join(","))
    };
    let reply = push(gw.addr, &records(10_001)).await;
    assert_eq!(reply.status, 413, "{}", reply.body);
    let answer = json(&reply);
    assert_eq!(answer["limit"], 10_000);
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("10000")),
        "{answer}"
    );
    assert_eq!(counterparties(gw.addr).await, 3);

    let reply = push(gw.addr, &records(10_000)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        json(&reply),
        serde_json::json!({"upserted": 10_000, "records": 10_000, "counterparties": 10_003})
    );
    assert_eq!(title(gw.addr, "89770009999").await, "Контрагент 9999");
}

#[tokio::test]
async fn a_body_that_is_not_declared_utf8_json_gets_415() {
    let gw = start("").await;
    let one = body(&[record("p-1", "Кто-то", "89120000001")]);
    for content_type in [
        None,
        Some("Content-Type: text/plain"),
        Some("Content-Type: application/x-www-form-urlencoded"),
        Some("Content-Type: application/json; charset=windows-1251"),
    ] {
        let headers: Vec<&str> = [Some(BEARER), content_type].into_iter().flatten().collect();
        let reply = request(gw.addr, "POST", PATH, &headers, one.as_bytes()).await;
        assert_eq!(reply.status, 415, "{content_type:?}: {}", reply.body);
        assert!(json(&reply)["error"].is_string());
    }
    assert_eq!(title(gw.addr, "89120000001").await, "");
    for (i, content_type) in [
        "Content-Type: application/json; charset=utf-8",
        "Content-Type: Application/JSON;charset=\"UTF-8\"",
    ]
    .into_iter()
    .enumerate()
    {
        let one = body(&[record(&format!("p-{i}"), "Кто-то", "89120000001")]);
        let reply = request(
            gw.addr,
            "POST",
            PATH,
            &[BEARER, content_type],
            one.as_bytes(),
        )
        .await;
        assert_eq!(reply.status, 200, "{content_type}: {}", reply.body);
    }
}

#[tokio::test]
async fn other_methods_on_the_push_paths_get_405_with_allow() {
    let gw = start("").await;
    for method in ["GET", "PUT", "PATCH", "DELETE"] {
        let reply = request(gw.addr, method, PATH, &[JSON, BEARER], b"").await;
        assert_eq!(reply.status, 405, "{method}: {}", reply.body);
        assert_eq!(reply.header("allow"), Some("POST"), "{method}");
        assert!(json(&reply)["error"].is_string());
    }
    for method in ["GET", "PUT", "POST"] {
        let reply = request(gw.addr, method, &format!("{PATH}/a1"), &[JSON, BEARER], b"").await;
        assert_eq!(reply.status, 405, "{method}: {}", reply.body);
        assert_eq!(reply.header("allow"), Some("DELETE"), "{method}");
    }
    assert_eq!(title(gw.addr, "89235292926").await, "Фэйковый чиж");
}

#[tokio::test]
async fn a_query_parameter_on_a_push_path_is_a_400_naming_it_and_changes_nothing() {
    let gw = start("").await;
    let body = serde_json::to_string(&[record("q1", "Q", "+7 912 000-00-01")]).expect("json");
    let reply = request(
        gw.addr,
        "POST",
        &format!("{PATH}?dry_run=1"),
        &[JSON, BEARER],
        body.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let error = json(&reply)["error"].as_str().expect("error").to_owned();
    assert!(error.contains("'dry_run'"), "{error}");
    assert!(error.contains("takes no query parameters"), "{error}");
    let reply = request(
        gw.addr,
        "DELETE",
        &format!("{PATH}/a1?force"),
        &[BEARER],
        b"",
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(reply.body.contains("'force'"), "{}", reply.body);
    // Nothing changed: a1 still answers, q1 was never pushed.
    assert_eq!(title(gw.addr, "89235292926").await, "Фэйковый чиж");
    assert_eq!(
        request(gw.addr, "DELETE", &format!("{PATH}/q1"), &[BEARER], b"")
            .await
            .status,
        404
    );
    // The token is checked first: without it, a 401 says nothing about the query.
    let reply = request(
        gw.addr,
        "POST",
        &format!("{PATH}?x=1"),
        &[JSON],
        body.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 401, "{}", reply.body);
}

#[tokio::test]
async fn deleting_an_id_no_source_has_is_a_404_and_an_unreadable_id_a_400() {
    let gw = start("").await;
    let reply = delete(gw.addr, "nobody").await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    let answer = json(&reply);
    assert_eq!(
        (&answer["removed"], &answer["id"]),
        (&false.into(), &"nobody".into())
    );
    assert!(answer["error"].is_string());
    let metrics = get(gw.addr, "/metrics").await;
    assert!(
        metrics
            .body
            .contains(r#"cti_push_records_total{op="delete"} 0"#),
        "{}",
        metrics.body
    );
    for bad in ["%zz", "%FF", &"x".repeat(129), &"%D0%BA".repeat(65), "%20"] {
        let reply = delete(gw.addr, bad).await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
    }
    let reply = request(gw.addr, "DELETE", &format!("{PATH}/"), &[BEARER], b"").await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(counterparties(gw.addr).await, 3);
}

#[tokio::test]
async fn twenty_concurrent_pushes_are_all_present_after_a_restart() {
    let gw = start("").await;
    let addr = gw.addr;
    let tasks: Vec<_> = (0..20)
        .map(|t| {
            tokio::spawn(async move {
                let records: Vec<serde_json::Value> = (0..5)
                    .map(|i| {
                        record(
                            &format!("c-{t}-{i}"),
                            &format!("Клиент {t}-{i}"),
                            &format!("8914{t:03}{i:04}"),
                        )
                    })
                    .collect();
                push(addr, &body(&records)).await
            })
        })
        .collect();
    for task in tasks {
        let reply = task.await.expect("task");
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    assert_eq!(counterparties(addr).await, 103);
    let gw = restart(gw).await;
    assert_eq!(counterparties(gw.addr).await, 103);
    for t in 0..20 {
        for i in 0..5 {
            assert_eq!(
                title(gw.addr, &format!("8914{t:03}{i:04}")).await,
                format!("Клиент {t}-{i}")
            );
        }
    }
}

#[tokio::test]
async fn a_change_the_store_cannot_save_is_a_503_and_changes_nothing() {
    let gw = start("").await;
    gw.gateway().store().close().await;
    let reply = push(
        gw.addr,
        &body(&[record("p-1", "Несохранённый", "89120000001")]),
    )
    .await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(
        json(&reply)["error"]
            .as_str()
            .is_some_and(|e| e.contains("not saved") && e.contains("retry")),
        "{}",
        reply.body
    );
    assert_eq!(reply.header("retry-after"), Some("5"));
    assert_eq!(title(gw.addr, "89120000001").await, "");
    let reply = delete(gw.addr, "a1").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(title(gw.addr, "89235292926").await, "Фэйковый чиж");
}

#[tokio::test]
async fn a_body_slower_than_the_read_timeout_gets_408() {
    let gw = start("server.body_read_timeout = \"300ms\"").await;
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    let head = format!(
        "POST {PATH} HTTP/1.1\r\nHost: x\r\n{JSON}\r\n{BEARER}\r\nContent-Length: 100\r\nConnection: close\r\n\r\n[{{\"id\""
    );
    stream.write_all(head.as_bytes()).await.expect("head");
    let reply = read_reply(&mut stream).await;
    assert_eq!(reply.status, 408, "{}", reply.body);
    assert!(json(&reply)["error"].is_string());
}

#[tokio::test]
async fn a_push_that_a_newer_file_version_replaced_stays_replaced_after_a_restart() {
    let gw = start("").await;
    wait_for_file_snapshot(&gw).await;
    // Pushed: the push's copy of b2 answers.
    let reply = push(
        gw.addr,
        &body(&[record("b2", "Ромашка (push)", "+7 916 555-55-55")]),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(title(gw.addr, "89165555555").await, "Ромашка (push)");

    // Then the file brings a newer b2: it answers. The sleep is the
    // subject: receive times are in milliseconds, and the file's copy must
    // be received in a later one than the push's to be the newer.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let before = gw
        .gateway()
        .store()
        .source_fingerprint("file")
        .await
        .expect("store readable");
    let newer = DIRECTORY.replace(
        r#""name":"ООО \"Ромашка\" & <Ко>""#,
        r#""name":"Ромашка (file)""#,
    );
    assert_ne!(newer, DIRECTORY, "the fixture changed shape");
    std::fs::write(gw.directory_file(), newer).expect("write the file");
    gw.gateway().reload();
    for _ in 0..250 {
        let saved = gw.gateway().store().source_fingerprint("file").await;
        if title(gw.addr, "89165555555").await == "Ромашка (file)"
            && saved.expect("store readable") != before
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(title(gw.addr, "89165555555").await, "Ромашка (file)");

    // A later push of something else makes the push source's snapshot the
    // newest; b2's pushed copy must still count as older than the file's.
    // The sleep is the subject: this push is received in a later
    // millisecond than the file's copy.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let reply = push(gw.addr, &body(&[record("p-9", "Другой", "89120000019")])).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let gw = restart(gw).await;
    assert_eq!(title(gw.addr, "89165555555").await, "Ромашка (file)");
    assert_eq!(title(gw.addr, "89120000019").await, "Другой");
}

#[tokio::test]
async fn a_mistyped_inn_is_taken_with_a_warning_answers_say_name_and_is_counted() {
    let gw = start("").await;
    // 7707083893 is a valid INN; its last digit off by one is not.
    let reply = push(
        gw.addr,
        r#"[{"id":"p-good","name":"Сбер","inn":"7707083893","phones":["89120000011"]},
            {"id":"p-inn","name":"Опечатка","inn":"7707083894","kpp":"77-07","manager_phone":"512","phones":["89120000012"]}]"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer = json(&reply);
    assert_eq!(answer["upserted"], 2);
    assert_eq!(
        answer["warnings"],
        serde_json::json!([
            {"record": 1, "id": "p-inn", "field": "inn", "value": "7707083894", "problem": "check digit does not match"},
            {"record": 1, "id": "p-inn", "field": "kpp", "value": "77-07",
             "problem": "must be 9 characters: 4 digits, 2 digits or capital Latin letters, 3 digits"}
        ]),
        "{answer}"
    );
    assert_eq!(
        say_name(gw.addr, "89120000012").await,
        ("Опечатка".into(), String::new(), "512".into()),
        "a mistyped INN never costs a caller"
    );
    let metrics = get(gw.addr, "/metrics").await.body;
    for line in [
        r#"cti_directory_invalid_requisites_total{field="inn",source="push"} 1"#,
        r#"cti_directory_invalid_requisites_total{field="kpp",source="push"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    // The same content pushed again is not counted again; a clean push
    // answers without `warnings`.
    let again = push(
        gw.addr,
        r#"[{"id":"p-inn","name":"Опечатка","inn":"7707083894","kpp":"77-07","manager_phone":"512","phones":["89120000012"]}]"#,
    )
    .await;
    assert_eq!(json(&again)["warnings"].as_array().map(Vec::len), Some(2));
    let metrics = get(gw.addr, "/metrics").await.body;
    assert!(
        metrics.contains(r#"cti_directory_invalid_requisites_total{field="inn",source="push"} 1"#),
        "{metrics}"
    );
    let clean = push(gw.addr, &body(&[record("p-clean", "Чисто", "89120000013")])).await;
    assert_eq!(clean.status, 200, "{}", clean.body);
    assert!(json(&clean).get("warnings").is_none(), "{}", clean.body);
}

#[tokio::test]
async fn the_new_fields_round_trip_through_a_push_and_a_restart() {
    let gw = start("").await;
    let pushed = serde_json::json!({
        "id": "p-ip", "name": "ИП Петров", "inn": "500100732259",
        "ogrnip": "304500116000157", "code": "000000042", "kind": "sole_proprietor",
        "manager_phone": "512", "manager_name": "Иванова", "manager_source": "bitrix24",
        "phones": ["89120000021"],
        "links": [{"system": "bitrix24", "kind": "company",
                   "url": "https://portal.example/crm/company/details/2919/"}]
    });
    let reply = push(gw.addr, &body(std::slice::from_ref(&pushed))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(json(&reply).get("warnings").is_none(), "{}", reply.body);
    let gw = restart(gw).await;
    let entry = gw
        .gateway()
        .directory()
        .lookup_id("p-ip")
        .expect("restored from the snapshot");
    let back: serde_json::Value = serde_json::from_str(&entry.json()).expect("json");
    assert_eq!(back, pushed);
}

#[tokio::test]
async fn a_bad_kind_link_or_ninth_link_is_a_422_naming_record_id_and_field() {
    let gw = start("").await;
    let link = |url: &str| serde_json::json!({"system": "bitrix24", "kind": "company", "url": url});
    let cases = [
        (
            serde_json::json!({"id": "p-k", "name": "x", "kind": "company"}),
            "kind",
        ),
        (
            serde_json::json!({"id": "p-j", "name": "x", "links": [link("javascript:alert(1)")]}),
            "links",
        ),
        (
            serde_json::json!({"id": "p-n", "name": "x", "links": vec![link("https://h/"); 9]}),
            "links",
        ),
        (
            serde_json::json!({"id": "p-t", "name": "x", "links": [{"system": "b", "kind": "c", "href": "https://h/"}]}),
            "links",
        ),
        (
            serde_json::json!({"id": "p-s", "name": "x", "manager_source": "Битрикс"}),
            "manager_source",
        ),
        (
            serde_json::json!({"id": "p-o", "name": "x", "ogrnip": 304500116000157u64}),
            "ogrnip",
        ),
    ];
    for (record, field) in cases {
        let ok = serde_json::json!({"id": "p-ok", "name": "ok"});
        let reply = push(gw.addr, &body(&[ok, record.clone()])).await;
        assert_eq!(reply.status, 422, "{record}: {}", reply.body);
        let answer = json(&reply);
        assert_eq!(answer["record"], 1, "{answer}");
        assert_eq!(answer["id"], record["id"], "{answer}");
        assert_eq!(answer["field"], field, "{answer}");
    }
    assert!(gw.gateway().directory().lookup_id("p-ok").is_none());
}
