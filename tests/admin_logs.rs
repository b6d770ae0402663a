//! Logs an admin can act on, and the metrics a dashboard needs (issue #16,
//! items 5 and 6), on the real binary and its real log file:
//!
//! - outside text cannot write a line of its own nor reach a terminal raw
//!   (a DELETE of an id with a newline and a forged WARN line; an ESC byte);
//! - every answer has an `X-Request-Id`, and a refusal's warning names it
//!   with the client's address; repeats within the minute stay quiet;
//! - an IncomingCall for a key no operator has is a warning naming the key,
//!   once a minute;
//! - `cti_http_connections` counts WebSocket screens, `cti_popup_screens`
//!   counts them per key, a call no screen saw is counted, one counter of
//!   unknown keys, and `cti_build_info`.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::process::{free_port, serve_command, Child};
use support::{get, incoming_call_envelope, request, soap, SEED_AUTH, SOAP_PATH};

const API_TOKEN: &str = "admin-logs-token";
const KEY: &str = "key-with-screen";
const SCREEN_TOKEN: &str = "screen-token-1";

/// The forged line, percent-encoded in the id of a DELETE.
const FORGED: &str = "2026-01-01T00:00:00Z  WARN cti_gateway: FAKE admin logged in";

async fn start(dir: &tempfile::TempDir) -> (Child, SocketAddr, std::path::PathBuf) {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let config = format!(
        r#"
[server]
listen = "{addr}"
[soap]
username = "SOAP"
password = "123"
[directory]
file = "{file}"
[store]
path = "{store}"
[api]
token = "{API_TOKEN}"
[[operator]]
key = "{KEY}"
token = "{SCREEN_TOKEN}"
name = "Иванова"
[log]
level = "info"
"#,
        file = dir.path().join("counterparties.jsonl").display(),
        store = dir.path().join("store.sqlite").display(),
    );
    std::fs::write(dir.path().join("counterparties.jsonl"), support::DIRECTORY)
        .expect("directory file");
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(&config_path, config).expect("config");
    let log_path = dir.path().join("gateway.log");
    let gateway = Child::start(serve_command(&config_path, &log_path), addr, "/readyz").await;
    (gateway, addr, log_path)
}

fn log_text(path: &std::path::Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

/// Waits (5 s at most) until the log has a line with every one of `needles`.
async fn line_with(path: &std::path::Path, needles: &[&str]) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = log_text(path);
        if let Some(line) = text.lines().find(|l| needles.iter().all(|n| l.contains(n))) {
            return line.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no line with {needles:?} in the log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_text_cannot_forge_a_log_line_nor_reach_a_terminal_raw() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (gateway, addr, log_path) = start(&dir).await;
    let auth = format!("Authorization: Bearer {API_TOKEN}");
    let forged_id = format!("nope%0A{}", FORGED.replace(' ', "%20"));
    for id in [forged_id.as_str(), "esc%1B%5B31mred"] {
        let path = format!("/api/v1/counterparties/{id}");
        let reply = request(addr, "DELETE", &path, &[&auth], b"").await;
        assert_eq!(reply.status, 404, "{}", reply.body);
    }
    // Ids a push may hold (the model refuses no control character in an
    // id): their removal's line is escaped too.
    let pushed = [
        format!("pushed\n{FORGED}"),
        "pushed-esc\u{1b}[31mred".to_owned(),
    ];
    let records: Vec<serde_json::Value> = pushed
        .iter()
        .enumerate()
        .map(|(i, id)| serde_json::json!({ "id": id, "name": "Кто-то", "phones": [format!("8913000000{i}")] }))
        .collect();
    let body = serde_json::to_string(&records).expect("json");
    let json = "Content-Type: application/json";
    let reply = request(
        addr,
        "POST",
        "/api/v1/counterparties",
        &[&auth, json],
        body.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let percent = |id: &str| {
        id.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b == b'-' {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    for id in &pushed {
        let path = format!("/api/v1/counterparties/{}", percent(id));
        let reply = request(addr, "DELETE", &path, &[&auth], b"").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    line_with(&log_path, &["esc\\u{1b}[31mred"]).await;
    line_with(
        &log_path,
        &["pushed-esc\\u{1b}[31mred", "counterparty removed"],
    )
    .await;
    gateway.stop().await;

    let bytes = std::fs::read(&log_path).expect("log");
    assert!(
        !bytes.contains(&0x1b),
        "an ESC byte reached the log raw:\n{}",
        String::from_utf8_lossy(&bytes)
    );
    let text = String::from_utf8_lossy(&bytes);
    for line in text.lines() {
        assert!(
            !line.starts_with("2026-01-01T00:00:00Z"),
            "a forged line is in the log:\n{text}"
        );
        if line.contains("FAKE admin") {
            assert!(
                line.contains("nope\\n2026-01-01") || line.contains("pushed\\n2026-01-01"),
                "{line}"
            );
        }
    }
    assert!(text.contains("nope\\n2026-01-01"), "{text}");
    assert!(text.contains("pushed\\n2026-01-01"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_name_the_client_and_the_request_id_once_a_minute() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (gateway, addr, log_path) = start(&dir).await;

    // Every answer has an id, each its own.
    let first = get(addr, "/healthz").await;
    let second = get(addr, "/healthz").await;
    // `<connection>.<request on it>`.
    let id = |r: &support::Reply| -> String {
        let id = r
            .header("x-request-id")
            .unwrap_or_else(|| panic!("no X-Request-Id in {:?}", r.headers));
        let (connection, number) = id.split_once('.').expect("connection.request");
        assert!(
            connection.parse::<u64>().is_ok() && number.parse::<u64>().is_ok(),
            "{id}"
        );
        id.to_owned()
    };
    assert_ne!(id(&first), id(&second));

    // 415: SOAP with the right credentials and a Content-Type that is not SOAP.
    let auth = format!("Authorization: {SEED_AUTH}");
    let refused = request(
        addr,
        "POST",
        SOAP_PATH,
        &["Content-Type: application/json", &auth],
        b"{}",
    )
    .await;
    assert_eq!(refused.status, 415);
    let request_id = format!("request_id={}", id(&refused));
    let line = line_with(&log_path, &["WARN", "status=415", &request_id]).await;
    assert!(line.contains("client=127.0.0.1"), "{line}");

    // 401: wrong password, with the client and the request id.
    let wrong = request(
        addr,
        "POST",
        SOAP_PATH,
        &[
            "Content-Type: text/xml",
            "Authorization: Basic U09BUDp3cm9uZw==",
        ],
        b"<x/>",
    )
    .await;
    assert_eq!(wrong.status, 401);
    let request_id = format!("request_id={}", id(&wrong));
    let line = line_with(
        &log_path,
        &["WARN", "wrong user name or password", &request_id],
    )
    .await;
    assert!(line.contains("client=127.0.0.1"), "{line}");

    // Repeats within the minute: no more warnings of that reason and address.
    for _ in 0..5 {
        let _ = request(
            addr,
            "POST",
            SOAP_PATH,
            &["Content-Type: application/json", &auth],
            b"{}",
        )
        .await;
    }
    gateway.stop().await;
    let text = log_text(&log_path);
    let warnings = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("status=415"))
        .count();
    assert_eq!(warnings, 1, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_keys_are_warned_of_and_screens_and_calls_are_counted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (gateway, addr, log_path) = start(&dir).await;

    // A call for a key no operator has: a warning naming it, once.
    for _ in 0..3 {
        let reply = soap(addr, &incoming_call_envelope("89235292926", "no-such-key")).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    line_with(&log_path, &["WARN", "key=\"no-such-key\""]).await;
    // A call for the operator's key with no screen open: undelivered.
    let reply = soap(addr, &incoming_call_envelope("89235292926", KEY)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // A screen: its WebSocket is a connection, and its key's screen.
    let url = format!("ws://{addr}/operator/ws?token={SCREEN_TOKEN}");
    let (screen, _) = tokio_tungstenite::connect_async(&url)
        .await
        .expect("screen connects");

    let metrics = get(addr, "/metrics").await;
    let text = &metrics.body;
    assert_eq!(
        metric(text, "cti_incoming_calls_unknown_key_total"),
        Some(3.0),
        "{text}"
    );
    assert!(!text.contains("cti_popup_unknown_key_total"), "{text}");
    assert_eq!(
        metric(text, "cti_incoming_calls_undelivered_total"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(text, &format!("cti_popup_screens{{key=\"{KEY}\"}}")),
        Some(1.0),
        "{text}"
    );
    // The screen and this request's connection.
    assert!(metric(text, "cti_http_connections") >= Some(2.0), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("cti_build_info{") && l.contains("commit=")),
        "{text}"
    );
    // CPU time in fractions of a second.
    let cpu = metric(text, "process_cpu_seconds_total").expect("process CPU");
    assert!(cpu.fract() != 0.0, "whole seconds: {cpu}");

    drop(screen);
    gateway.stop().await;
    let text = log_text(&log_path);
    let warnings = text
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("key=\"no-such-key\""))
        .count();
    assert_eq!(warnings, 1, "{text}");
}
