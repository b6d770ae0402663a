//! Passwords and tokens never reach the logs, at any log level, whatever
//! fails: the real binary runs with `trace` logging for every crate and
//! distinctive secrets, is asked with right and wrong credentials on every
//! authenticated endpoint, talks to a 1C (the mock) that refuses its
//! password, and its whole output is searched for every secret, in clear,
//! base64 (Basic auth) and percent-encoded. A 1C that cannot be reached
//! (its lines of transport errors) with the password given twice, in
//! `onec.password` and in the URL's user info, shows neither. A sync
//! system's webhook secret (its path's last segment) is checked the same
//! way by `tests/sync_webhooks.rs`, on a child gateway with its test
//! system: this binary has no sync system to take a webhook. The 1C
//! writer's password (`[sync.onec]`, `CTI_ONEC_WRITE_PASSWORD`) is checked
//! through a write 1C takes and one it refuses.

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use support::mock_onec::MockOnec;
use support::process::{free_port, serve_command, Child};
use support::{get, request, say_name_envelope, soap, SOAP_PATH};

const SOAP_PASSWORD: &str = "Soap-Secret-7f3a91";
const API_TOKEN: &str = "Api-Token-9c1e55";
const OPERATOR_TOKEN: &str = "Operator-Token-4b2d08";
const ONEC_PASSWORD: &str = "Onec-Pass-2e8f63";
const WRONG_PASSWORD: &str = "Wrong-Pass-1111aa";
const WRONG_TOKEN: &str = "Wrong-Token-2222bb";

fn basic(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_or_token_reaches_the_logs_even_at_trace_level_and_on_failures() {
    let mock = MockOnec::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let config = format!(
        r#"
[server]
listen = "{addr}"
[soap]
username = "SOAP"
password = "{SOAP_PASSWORD}"
[directory]
file = "{file}"
[store]
path = "{store}"
[api]
token = "{API_TOKEN}"
[[operator]]
key = "key1"
token = "{OPERATOR_TOKEN}"
name = "Иванова"
[onec]
odata_url = "{onec}"
username = "odata"
password = "{ONEC_PASSWORD}"
refresh = "1h"
lookup_budget_ms = 300
timeout = "2s"
[log]
level = "trace"
"#,
        file = dir.path().join("counterparties.jsonl").display(),
        store = dir.path().join("store.sqlite").display(),
        onec = mock.url(),
    );
    std::fs::write(dir.path().join("counterparties.jsonl"), "").expect("directory file");
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(&config_path, config).expect("config");
    let log_path = dir.path().join("gateway.log");
    // Not /readyz: with 1C refusing and no snapshot it never gets ready.
    let gateway = Child::start(serve_command(&config_path, &log_path), addr, "/healthz").await;

    // SOAP: right and wrong credentials; an unknown number goes to 1C,
    // which refuses the gateway's password.
    let body = say_name_envelope("89001234567");
    for auth in [basic("SOAP", SOAP_PASSWORD), basic("SOAP", WRONG_PASSWORD)] {
        let header = format!("Authorization: Basic {auth}");
        let reply = request(
            addr,
            "POST",
            SOAP_PATH,
            &["Content-Type: text/xml; charset=utf-8", &header],
            body.as_bytes(),
        )
        .await;
        assert!(
            reply.status == 200 || reply.status == 401,
            "SOAP answered {}",
            reply.status
        );
    }
    let _ = soap(addr, &body).await;

    // Push API, journal and screens: right and wrong tokens.
    for token in [API_TOKEN, WRONG_TOKEN] {
        let header = format!("Authorization: Bearer {token}");
        let _ = request(
            addr,
            "POST",
            "/api/v1/counterparties",
            &["Content-Type: application/json", &header],
            b"[{\"id\": 1}]",
        )
        .await;
        let _ = request(addr, "GET", "/api/v1/calls?limit=1", &[&header], b"").await;
        let _ = request(
            addr,
            "DELETE",
            "/api/v1/counterparties/nobody",
            &[&header],
            b"",
        )
        .await;
        // The sync admin API: reads, a retry, the streamed id-map export.
        for path in [
            "/api/v1/sync/status",
            "/api/v1/sync/outbox?state=dead&limit=1",
            "/api/v1/sync/conflicts?limit=1",
            "/api/v1/sync/idmap.csv?system=crm",
        ] {
            let _ = raw_to_end(addr, "GET", path, &header).await;
        }
        let _ = raw_to_end(addr, "POST", "/api/v1/sync/outbox/1/retry", &header).await;
        let _ = raw_to_end(addr, "POST", "/api/v1/sync/crm/resume", &header).await;
    }
    for token in [OPERATOR_TOKEN, WRONG_TOKEN] {
        let _ = get(
            addr,
            &format!("/operator/events?token={token}&after=0&wait=0"),
        )
        .await;
        let upgrade = format!(
            "GET /operator/ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(upgrade.as_bytes())
            .await
            .expect("upgrade sent");
        let mut buf = [0u8; 512];
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await;
    }

    // 1C's refusal is logged (so the log is not silent); wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("401") || text.contains("refused the credentials") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "1C's refusal was never logged:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A clean stop flushes everything the process had to say.
    gateway.stop().await;

    let mut text = String::new();
    std::fs::File::open(&log_path)
        .expect("log")
        .read_to_string(&mut text)
        .expect("log is UTF-8");
    assert!(
        text.lines().count() > 20,
        "trace logging produced almost nothing:\n{text}"
    );
    let mut needles = Vec::new();
    for secret in [
        SOAP_PASSWORD,
        API_TOKEN,
        OPERATOR_TOKEN,
        ONEC_PASSWORD,
        WRONG_PASSWORD,
        WRONG_TOKEN,
    ] {
        needles.push(secret.to_owned());
    }
    needles.push(basic("SOAP", SOAP_PASSWORD));
    needles.push(basic("SOAP", WRONG_PASSWORD));
    needles.push(basic("odata", ONEC_PASSWORD));
    for needle in &needles {
        if let Some(line) = text.lines().find(|l| l.contains(needle.as_str())) {
            panic!("a secret ({needle}) is in the log:\n{line}");
        }
    }
}

/// A request with `header`, its answer read to the end as bytes (the id-map
/// export is chunked, which `support::request` does not read).
async fn raw_to_end(addr: std::net::SocketAddr, method: &str, path: &str, header: &str) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let length = if method == "GET" {
        ""
    } else {
        "Content-Length: 0\r\n"
    };
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{header}\r\n{length}Connection: close\r\n\r\n"
    );
    stream
        .write_all(req.as_bytes())
        .await
        .expect("request sent");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_1c_logs_neither_its_password_nor_the_one_in_its_url() {
    const URL_PASSWORD: &str = "Url-Pass-5d7c42";
    let dir = tempfile::tempdir().expect("temp dir");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    // Nobody listens there: every 1C request fails to connect.
    let onec_port = free_port();
    let config = format!(
        r#"
[server]
listen = "{addr}"
[soap]
username = "SOAP"
password = "{SOAP_PASSWORD}"
[directory]
file = "{file}"
[store]
path = "{store}"
[onec]
odata_url = "http://odata:{URL_PASSWORD}@127.0.0.1:{onec_port}/base/odata/standard.odata"
username = "odata"
password = "{ONEC_PASSWORD}"
refresh = "1h"
lookup_budget_ms = 300
timeout = "1s"
[log]
level = "trace"
"#,
        file = dir.path().join("counterparties.jsonl").display(),
        store = dir.path().join("store.sqlite").display(),
    );
    std::fs::write(dir.path().join("counterparties.jsonl"), "").expect("directory file");
    let config_path = dir.path().join("gateway.toml");
    std::fs::write(&config_path, config).expect("config");
    let log_path = dir.path().join("gateway.log");
    let gateway = Child::start(serve_command(&config_path, &log_path), addr, "/healthz").await;
    // A number the directory lacks: a live lookup, which fails too.
    let _ = soap(addr, &say_name_envelope("89001234567")).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("cannot reach 1C") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the unreachable 1C was never logged:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gateway.stop().await;
    let text = std::fs::read_to_string(&log_path).expect("log");
    for needle in [
        ONEC_PASSWORD.to_owned(),
        URL_PASSWORD.to_owned(),
        basic("odata", ONEC_PASSWORD),
        basic("odata", URL_PASSWORD),
        SOAP_PASSWORD.to_owned(),
    ] {
        if let Some(line) = text.lines().find(|l| l.contains(needle.as_str())) {
            panic!("a secret ({needle}) is in the log:\n{line}");
        }
    }
}

/// The 1C writer's password (issue 19), at `trace`: once right (from
/// `CTI_ONEC_WRITE_PASSWORD`: a search and a create go to 1C), once wrong
/// (from the file: 1C answers 401 and the writer is blocked). Neither
/// password, in clear or as Basic auth, is in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_1c_write_password_never_reaches_the_logs() {
    use support::mock_onec::{WRITE_PASSWORD, WRITE_USERNAME};
    const WRONG_WRITE_PASSWORD: &str = "Write-Wrong-3f9d27";
    let mock = MockOnec::start_for_writes().await;
    for (round, password_in_file, from_env) in [
        (0, "", Some(WRITE_PASSWORD)),
        (1, WRONG_WRITE_PASSWORD, None),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let config = format!(
            r#"
[server]
listen = "{addr}"
[soap]
username = "SOAP"
password = "{SOAP_PASSWORD}"
[directory]
file = "{file}"
[store]
path = "{store}"
[onec]
odata_url = "{onec}"
username = "odata"
password = "secret"
refresh = "1h"
timeout = "2s"
[sync.onec]
write_username = "{WRITE_USERNAME}"
{password_line}
retry_first = "50ms"
timeout = "2s"
[log]
level = "trace"
"#,
            file = dir.path().join("counterparties.jsonl").display(),
            store = dir.path().join("store.sqlite").display(),
            onec = mock.url(),
            password_line = if password_in_file.is_empty() {
                String::new()
            } else {
                format!("write_password = \"{password_in_file}\"")
            },
        );
        let inn = ["7707083893", "7736050003"][round];
        std::fs::write(
            dir.path().join("counterparties.jsonl"),
            format!("{{\"id\":\"w{round}\",\"name\":\"Запись {round}\",\"inn\":\"{inn}\"}}\n"),
        )
        .expect("directory file");
        let config_path = dir.path().join("gateway.toml");
        std::fs::write(&config_path, config).expect("config");
        let log_path = dir.path().join("gateway.log");
        let mut command = serve_command(&config_path, &log_path);
        if let Some(password) = from_env {
            command.env("CTI_ONEC_WRITE_PASSWORD", password);
        }
        let gateway = Child::start(command, addr, "/healthz").await;
        let wanted = if from_env.is_some() {
            "counterparty created"
        } else {
            "blocks the gateway"
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if text.contains(wanted) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: {wanted:?} was never logged:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        gateway.stop().await;
        let text = std::fs::read_to_string(&log_path).expect("log");
        for needle in [
            WRITE_PASSWORD.to_owned(),
            WRONG_WRITE_PASSWORD.to_owned(),
            basic(WRITE_USERNAME, WRITE_PASSWORD),
            basic(WRITE_USERNAME, WRONG_WRITE_PASSWORD),
        ] {
            if let Some(line) = text.lines().find(|l| l.contains(needle.as_str())) {
                panic!("round {round}: a secret ({needle}) is in the log:\n{line}");
            }
        }
    }
    assert_eq!(
        mock.counterparties().len(),
        1,
        "the right password wrote once"
    );
}
