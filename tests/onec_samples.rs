//! The 1C samples of `docs/1c-push.md` and `docs/1c-popups.md`, as the
//! gateway sees them: each test sends exactly the HTTP requests a sample
//! sends, written as 1C writes them, and checks the answers the sample's
//! code reads. No 1C platform runs here; what 1C puts on the wire is spelt
//! out below (`format_1c`, `encode_url_1c`, the bodies) so that a change of
//! a sample shows as a change here. **A sample and this file change together.**
//!
//! How 1C writes what the samples send:
//! - `Формат(N, "ЧН=0; ЧГ=0")` and `XMLСтрока(N)`: the digits, `0` for zero.
//!   `Формат(N, "ЧГ=0")` writes zero as an empty string; `Формат(N)` groups
//!   digits with a no-break space (`1 234`).
//! - `КодироватьСтроку(S, СпособКодированияСтроки.КодировкаURL)`: UTF-8 bytes,
//!   each one outside `A-Z a-z 0-9 - _ . ~` as `%XX`.
//! - `ЗаписьJSON` with `ПереносСтрокJSON.Нет`: compact JSON, Cyrillic as it
//!   is, `"` as `\"`; numbers as written by `XMLСтрока`; `HTTPЗапрос.
//!   УстановитьТелоИзСтроки` sends UTF-8, with or without a byte order mark.
//! - headers from the sample's `Заголовки`: `Authorization: Bearer <token>`,
//!   for a body `Content-Type: application/json; charset=utf-8`.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::StreamExt;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;

use support::*;

const API_TOKEN: &str = "api-token-for-tests";
const JSON_UTF8: &str = "Content-Type: application/json; charset=utf-8";

/// `Формат(N, …)` as the samples (and the former ones) call it.
#[derive(Clone, Copy)]
enum Format1c {
    /// `"ЧН=0; ЧГ=0"`: what the samples write.
    Plain,
    /// `"ЧГ=0"`: the former samples; zero becomes "".
    NoGroupsZeroEmpty,
    /// No format string: digit groups with a no-break space.
    Grouped,
}

fn format_1c(n: u64, format: Format1c) -> String {
    let digits = n.to_string();
    match format {
        Format1c::Plain => digits,
        Format1c::NoGroupsZeroEmpty if n == 0 => String::new(),
        Format1c::NoGroupsZeroEmpty => digits,
        Format1c::Grouped => {
            let mut out = String::new();
            for (i, c) in digits.chars().enumerate() {
                if i > 0 && (digits.len() - i) % 3 == 0 {
                    out.push('\u{a0}');
                }
                out.push(c);
            }
            out
        }
    }
}

/// `КодироватьСтроку(S, СпособКодированияСтроки.КодировкаURL)`.
fn encode_url_1c(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

fn json(reply: &Reply) -> Value {
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.body))
}

fn error_of(reply: &Reply) -> String {
    json(reply)["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {}", reply.body))
        .to_owned()
}

// ---------------------------------------------------------------- push

const GUID: &str = "9a1b2c3d-0000-4000-8000-000000000001";

/// `ТекстJSON` of one card, as `docs/1c-push.md` shows it going over the wire.
fn card_json() -> String {
    format!(
        r#"{{"id":"{GUID}","name":"ООО \"Северный ветер\"","full_name":"Общество с ограниченной ответственностью \"Северный ветер\"","inn":"7705123456","kpp":"770501001","category":0,"manager_phone":"245","phones":["+7 (912) 345-67-89","8 495 777-11-22"],"emails":["info@veter.ru"]}}"#
    )
}

/// `ОтправитьВШлюз`: `ВызватьHTTPМетод("POST", …)` with the sample's headers.
async fn push_1c(addr: SocketAddr, body: &[u8]) -> Reply {
    request(
        addr,
        "POST",
        "/api/v1/counterparties",
        &[&bearer(API_TOKEN), JSON_UTF8],
        body,
    )
    .await
}

/// `УдалитьИзШлюза`: `ВызватьHTTPМетод("DELETE", …)`, the id URL-encoded.
async fn delete_1c(addr: SocketAddr, id: &str, token: &str) -> Reply {
    let path = format!("/api/v1/counterparties/{}", encode_url_1c(id));
    request(addr, "DELETE", &path, &[&bearer(token)], b"").await
}

/// SayName's title and manager extension for `number`.
async fn say_name_of(addr: SocketAddr, number: &str) -> (String, String) {
    let reply = soap(addr, &say_name_envelope(number)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let data = say_name_data(&reply);
    let field = |tag: &str| unescape(element_text(&data, tag).unwrap_or_default());
    (field("title"), field("phone"))
}

#[tokio::test]
async fn push_sample_requests_get_the_answers_the_sample_reads() {
    let gw = start("").await;

    // One card, as ТекстJSON writes it: 200, `Выполнено`.
    let body = format!("[{}]", card_json());
    let reply = push_1c(gw.addr, body.as_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(json(&reply)["upserted"], 1);
    let (title, manager) = say_name_of(gw.addr, "89123456789").await;
    assert_eq!(title, "ООО \"Северный ветер\"");
    assert_eq!(manager, "245");

    // The same with a byte order mark, which УстановитьТелоИзСтроки may write.
    let with_bom = [b"\xEF\xBB\xBF".as_slice(), body.as_bytes()].concat();
    let reply = push_1c(gw.addr, &with_bom).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // category beyond 32 bits, and ЗаписьJSON's default layout (line breaks, tabs).
    let wide = format!(
        "[\r\n\t{{\r\n\t\t\"id\": \"w-1\",\r\n\t\t\"name\": \"Широкий\",\r\n\t\t\"category\": {},\r\n\t\t\"phones\": [\r\n\t\t\t\"8 916 000-00-07\"\r\n\t\t]\r\n\t}}\r\n]",
        format_1c(4_294_967_296, Format1c::Plain)
    );
    let reply = push_1c(gw.addr, wide.as_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);

    // A batch with a card the gateway refuses (a numeric extension, as the
    // former sample sent it): 422 and `record`, the index the job drops.
    let batch = format!(
        r#"[{},{{"id":"bad","name":"Плохой","manager_phone":245}},{{"id":"ok","name":"Хороший"}}]"#,
        card_json()
    );
    let reply = push_1c(gw.addr, batch.as_bytes()).await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    let answer = json(&reply);
    assert_eq!(answer["record"], 1);
    assert_eq!(answer["field"], "manager_phone");
    assert!(answer["error"].is_string());
    eprintln!("422 for a numeric manager_phone: {}", reply.body);

    // DELETE of the GUID: 200; of an id no source has: 404, which the sample
    // counts as done; a Cyrillic id URL-encoded.
    let reply = delete_1c(gw.addr, GUID, API_TOKEN).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(json(&reply)["removed"], true);
    let reply = delete_1c(gw.addr, GUID, API_TOKEN).await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    let cyrillic = r#"[{"id":"контрагент-17","name":"К"}]"#;
    assert_eq!(push_1c(gw.addr, cyrillic.as_bytes()).await.status, 200);
    let reply = delete_1c(gw.addr, "контрагент-17", API_TOKEN).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(json(&reply)["id"], "контрагент-17");

    // No token, a wrong one: 401 (the sample keeps the change queued), in JSON.
    let reply = request(
        gw.addr,
        "POST",
        "/api/v1/counterparties",
        &[JSON_UTF8],
        body.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert!(!error_of(&reply).is_empty());
    let reply = delete_1c(gw.addr, GUID, "wrong-token").await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert_eq!(error_of(&reply), "wrong token");

    // A query parameter: 400 naming it (the sample does not retry a 400).
    let reply = request(
        gw.addr,
        "POST",
        "/api/v1/counterparties?dry_run=1",
        &[&bearer(API_TOKEN), JSON_UTF8],
        body.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    eprintln!("400 for a query parameter: {}", reply.body);
}

/// A gateway whose push source never sees its snapshot loaded: the state of
/// one that is still loading a large snapshot at start.
struct StartingGateway {
    addr: SocketAddr,
    push: Arc<cti_gateway::sources::push::PushSource>,
    stop: Arc<tokio::sync::Notify>,
    _dir: tempfile::TempDir,
}

async fn starting_gateway() -> StartingGateway {
    use cti_gateway::config::Config;
    use cti_gateway::directory::Directory;
    use cti_gateway::http::{self, Front};
    use cti_gateway::metrics::Metrics;
    use cti_gateway::popup::{Hub, HubConfig};
    use cti_gateway::sources::push::PushSource;
    use cti_gateway::sources::SourceHealth;
    use cti_gateway::store::Store;
    use cti_gateway::vats::Vats;

    let dir = tempfile::tempdir().expect("temp dir");
    let text = config_text(dir.path(), "");
    let config =
        Config::parse(&text, &dir.path().join("gateway.toml"), &|_| None).expect("valid config");
    let metrics = Arc::new(Metrics::new());
    let store = Store::open(&config.store.path, metrics.registry()).expect("store");
    let directory = Arc::new(Directory::new(cti_gateway::soap::say_name_payload));
    let keys = config.operators.iter().map(|o| o.key.as_str());
    let hub =
        Arc::new(Hub::new(keys, HubConfig::from(&config.popup), metrics.registry()).expect("hub"));
    let vats = Vats::new(
        Arc::clone(&directory),
        Arc::clone(&hub),
        store.clone(),
        Arc::clone(&metrics),
    );
    let push = Arc::new(
        PushSource::new(Arc::clone(&directory), store.clone(), metrics.registry()).expect("push"),
    );
    let front = Arc::new(Front::new(
        &config,
        vats,
        directory,
        Arc::new(SourceHealth::default()),
        metrics,
        hub,
        store,
        Arc::clone(&push),
        None,
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = Arc::new(tokio::sync::Notify::new());
    let settings = config.server.clone();
    let stopped = Arc::clone(&stop);
    tokio::spawn(async move {
        http::server::run(listener, front, &settings, async move {
            stopped.notified().await
        })
        .await
    });
    StartingGateway {
        addr,
        push,
        stop,
        _dir: dir,
    }
}

/// `push_1c` for an answer that takes longer than the support client waits
/// (10 s): the status, the head and the body, or a panic after `limit`.
async fn post_waiting(addr: SocketAddr, body: &[u8], limit: Duration) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head = format!(
        "POST /api/v1/counterparties HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{}\r\n{JSON_UTF8}\r\nContent-Length: {}\r\n\r\n",
        bearer(API_TOKEN),
        body.len()
    );
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(head.as_bytes()).await.expect("send head");
    stream.write_all(body).await.expect("send body");
    let mut answer = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut answer))
        .await
        .expect("answered within the sample's timeout")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    (status, format!("{head}\r\n"), body.to_owned())
}

/// The sample's timeout (`ТаймаутСекунд`).
const PUSH_SAMPLE_TIMEOUT: Duration = Duration::from_secs(15);

#[tokio::test]
async fn a_push_during_start_up_gets_503_before_the_samples_timeout() {
    let gw = starting_gateway().await;
    let body = format!("[{}]", card_json());
    let sent = Instant::now();
    let (status, head, answer) = post_waiting(gw.addr, body.as_bytes(), PUSH_SAMPLE_TIMEOUT).await;
    let waited = sent.elapsed();
    assert_eq!(status, 503, "{head}{answer}");
    assert!(
        head.to_ascii_lowercase().contains("\r\nretry-after: 5\r\n"),
        "{head}"
    );
    assert!(answer.contains("starting"), "{answer}");
    assert!(
        waited >= Duration::from_secs(9) && waited < PUSH_SAMPLE_TIMEOUT,
        "{waited:?}"
    );
    eprintln!("start-up 503 after {waited:?}: {answer}");
    // Once loaded, the queued change goes through.
    gw.push.snapshot_loaded();
    let reply = push_1c(gw.addr, body.as_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    gw.stop.notify_one();
}

// ---------------------------------------------------------------- screens

/// `WebSocketКлиентСоединения.ОткрытьСоединение` with the sample's
/// `Заголовки["Authorization"]` and the URL it builds.
async fn open_connection_1c(
    addr: SocketAddr,
    query: &str,
    token: &str,
) -> Result<WebSocketStream<TcpStream>, WsError> {
    screen_with_bearer(addr, token, query).await
}

/// The URL's query as `Подключить` builds it from `ПоследнийSeq`.
fn after_query(last_seq: Option<u64>, format: Format1c) -> String {
    last_seq
        .map(|n| format!("?after={}", format_1c(n, format)))
        .unwrap_or_default()
}

/// The next text frame within 5 s, as `ПриПолученииСообщения` gets it.
async fn next_message(ws: &mut WebSocketStream<TcpStream>) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(WsMessage::Text(t)))) => {
                return serde_json::from_str(&t).expect("a JSON message")
            }
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Nothing within `limit`.
async fn no_message(ws: &mut WebSocketStream<TcpStream>, limit: Duration) {
    if let Ok(Some(Ok(WsMessage::Text(t)))) = tokio::time::timeout(limit, ws.next()).await {
        panic!("unexpected message {t}");
    }
}

async fn call(addr: SocketAddr, number: &str) {
    let reply = soap(addr, &incoming_call_envelope(number, OPERATOR_KEY)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

async fn wait_for_screens(gw: &TestGateway, n: usize) {
    let hub = gw.gateway().hub();
    eventually(Duration::from_secs(2), "screens subscribed", || {
        hub.subscriber_count(OPERATOR_KEY) == Some(n)
    })
    .await;
}

/// What `ПоказатьЗвонок` reads of a message.
fn assert_card(message: &Value, seq: u64) {
    assert_eq!(message["type"], "incoming_call");
    assert_eq!(message["seq"], seq);
    assert!(message["number"].is_string());
    let card = &message["counterparty"];
    assert!(card.is_null() || (card["id"].is_string() && card["name"].is_string()));
}

#[tokio::test]
async fn websocket_sample_requests_get_the_answers_the_sample_reads() {
    let gw = start("").await;
    call(gw.addr, "89235292926").await; // seq 1
    call(gw.addr, "89990000000").await; // seq 2, an unknown caller

    // The first connection of a session: no after, only new calls.
    let mut ws = open_connection_1c(gw.addr, &after_query(None, Format1c::Plain), OPERATOR_TOKEN)
        .await
        .expect("101 with the header token");
    wait_for_screens(&gw, 1).await;
    call(gw.addr, "89235292926").await; // seq 3
    let message = next_message(&mut ws).await;
    assert_card(&message, 3);
    assert_eq!(message["counterparty"]["id"], "a1");
    assert_eq!(message["counterparty"]["name"], "Фэйковый чиж");
    ws.close(None).await.expect("close");
    wait_for_screens(&gw, 0).await;

    // Calls while the screen is away; it reconnects with after=3.
    call(gw.addr, "89990000000").await; // seq 4: counterparty null
    call(gw.addr, "89235292926").await; // seq 5
    let mut ws = open_connection_1c(
        gw.addr,
        &after_query(Some(3), Format1c::Plain),
        OPERATOR_TOKEN,
    )
    .await
    .expect("101");
    let message = next_message(&mut ws).await;
    assert_card(&message, 4);
    assert!(message["counterparty"].is_null());
    assert_card(&next_message(&mut ws).await, 5);
    no_message(&mut ws, Duration::from_millis(200)).await;
    ws.close(None).await.expect("close");

    // after=0 as `Формат(0, "ЧН=0; ЧГ=0")` writes it: everything buffered.
    let mut ws = open_connection_1c(
        gw.addr,
        &after_query(Some(0), Format1c::Plain),
        OPERATOR_TOKEN,
    )
    .await
    .expect("101");
    for seq in 1..=5 {
        assert_card(&next_message(&mut ws).await, seq);
    }
    ws.close(None).await.expect("close");

    // after= as the former `Формат(0, "ЧГ=0")` wrote it: no replay, never a 400.
    let mut ws = open_connection_1c(
        gw.addr,
        &after_query(Some(0), Format1c::NoGroupsZeroEmpty),
        OPERATOR_TOKEN,
    )
    .await
    .expect("101 for an empty after");
    no_message(&mut ws, Duration::from_millis(300)).await;
    ws.close(None).await.expect("close");

    // A large after (from before a lost store): a reset, the buffer from seq 1.
    let mut ws = open_connection_1c(
        gw.addr,
        &after_query(Some(99_999_999_999), Format1c::Plain),
        OPERATOR_TOKEN,
    )
    .await
    .expect("101");
    assert_card(&next_message(&mut ws).await, 1);
    ws.close(None).await.expect("close");

    // A wrong token: 401 before any handshake; `ПриОшибке` and a reconnect.
    match open_connection_1c(gw.addr, "", "wrong-token").await {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status(), 401);
            assert_eq!(
                response
                    .headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok()),
                Some("Bearer")
            );
        }
        other => panic!("expected an HTTP 401, got {other:?}"),
    }
}

/// `ЗапросСобытий` / `СобытияЭкрана`: the long-poll URL from `next_after`.
fn events_path(wait: u64, next_after: Option<u64>, format: Format1c) -> String {
    let mut path = format!("/operator/events?wait={}", format_1c(wait, format));
    if let Some(n) = next_after {
        path.push_str(&format!("&after={}", format_1c(n, format)));
    }
    path
}

async fn events_1c(addr: SocketAddr, path: &str, token: &str) -> Reply {
    request(addr, "GET", path, &[&bearer(token)], b"").await
}

/// What `ПринятьСобытия` reads: the messages' seqs and `next_after`.
fn seqs_and_next(reply: &Reply) -> (Vec<u64>, u64) {
    assert_eq!(reply.status, 200, "{}", reply.body);
    let v = json(reply);
    let seqs = v["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            assert_card(m, m["seq"].as_u64().expect("seq"));
            m["seq"].as_u64().expect("seq")
        })
        .collect();
    (seqs, v["next_after"].as_u64().expect("next_after"))
}

#[tokio::test]
async fn long_poll_sample_requests_get_the_answers_the_sample_reads() {
    let gw = start("").await;
    call(gw.addr, "89235292926").await; // seq 1
    call(gw.addr, "89990000000").await; // seq 2

    // (b)'s first request: no after, wait=25; answered the moment a call comes.
    let first = tokio::spawn({
        let addr = gw.addr;
        async move {
            let path = events_path(25, None, Format1c::Plain);
            events_1c(addr, &path, OPERATOR_TOKEN).await
        }
    });
    let hub = gw.gateway().hub();
    eventually(Duration::from_secs(5), "the long-poll waits", || {
        hub.long_poll_waiters(OPERATOR_KEY) == Some(1)
    })
    .await;
    let started = Instant::now();
    call(gw.addr, "89235292926").await; // seq 3
    let reply = first.await.expect("task");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "woken by the call"
    );
    assert_eq!(seqs_and_next(&reply), (vec![3], 3));

    // (c): wait=0, after as `Формат(N, "ЧН=0; ЧГ=0")` writes it.
    let path = events_path(0, Some(3), Format1c::Plain);
    assert_eq!(path, "/operator/events?wait=0&after=3");
    let reply = events_1c(gw.addr, &path, OPERATOR_TOKEN).await;
    assert_eq!(seqs_and_next(&reply), (vec![], 3));
    let reply = events_1c(
        gw.addr,
        &events_path(0, Some(0), Format1c::Plain),
        OPERATOR_TOKEN,
    )
    .await;
    assert_eq!(seqs_and_next(&reply), (vec![1, 2, 3], 3));

    // The former samples' `Формат(…, "ЧГ=0")`: `wait=` is refused saying how
    // to write 0, `after=` is no replay (it was a 400 that stopped pop-ups).
    let reply = events_1c(gw.addr, "/operator/events?wait=0&after=", OPERATOR_TOKEN).await;
    assert_eq!(seqs_and_next(&reply), (vec![], 3));
    let path = events_path(0, Some(0), Format1c::NoGroupsZeroEmpty);
    assert_eq!(path, "/operator/events?wait=&after=");
    let reply = events_1c(gw.addr, &path, OPERATOR_TOKEN).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(error_of(&reply).contains("ЧН=0; ЧГ=0"), "{}", reply.body);

    // A large after from before a lost store: the buffer from 1, next_after back to 3.
    let reply = events_1c(
        gw.addr,
        &events_path(0, Some(99_999_999_999), Format1c::Plain),
        OPERATOR_TOKEN,
    )
    .await;
    assert_eq!(seqs_and_next(&reply), (vec![1, 2, 3], 3));

    // Digits grouped as `Формат(N)` groups them: a 400 saying how to write it.
    let grouped = events_path(0, Some(1234), Format1c::Grouped);
    let reply = events_1c(gw.addr, &encode_spaces(&grouped), OPERATOR_TOKEN).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(error_of(&reply).contains("ЧН=0; ЧГ=0"), "{}", reply.body);
    eprintln!("400 for a grouped after: {}", reply.body);

    // (b)'s next request waits and wakes with the next call.
    let next = tokio::spawn({
        let addr = gw.addr;
        async move {
            let path = events_path(25, Some(3), Format1c::Plain);
            events_1c(addr, &path, OPERATOR_TOKEN).await
        }
    });
    eventually(Duration::from_secs(5), "the long-poll waits", || {
        hub.long_poll_waiters(OPERATOR_KEY) == Some(1)
    })
    .await;
    call(gw.addr, "89235292926").await; // seq 4
    assert_eq!(seqs_and_next(&next.await.expect("task")), (vec![4], 4));

    // A wrong token, no token: 401, the sample backs off.
    let reply = events_1c(gw.addr, "/operator/events?wait=0", "wrong-token").await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert_eq!(error_of(&reply), "unknown token");
    let reply = get(gw.addr, "/operator/events?wait=0").await;
    assert_eq!(reply.status, 401, "{}", reply.body);
}

/// The no-break space of a grouped number, percent-encoded as 1C's HTTP
/// client sends a URL's non-ASCII characters.
fn encode_spaces(path: &str) -> String {
    path.replace('\u{a0}', "%C2%A0")
}

// ---------------------------------------------------------------- journal

/// `ОбщегоНазначения.ПредставлениеЛокальнойДатыСоСмещением` for a session in
/// Moscow (UTC+3): `2026-12-04T23:00:00+03:00`.
fn moscow_time_with_offset(t: SystemTime) -> String {
    let local = t + Duration::from_secs(3 * 3600);
    humantime::format_rfc3339_seconds(local)
        .to_string()
        .replace('Z', "+03:00")
}

async fn calls_1c(addr: SocketAddr, path: &str, token: &str) -> Reply {
    request(addr, "GET", path, &[&bearer(token)], b"").await
}

#[tokio::test]
async fn call_history_sample_requests_get_the_answers_the_sample_reads() {
    let gw = start("").await;
    let before_calls = SystemTime::now() - Duration::from_secs(60);
    call(gw.addr, "89235292926").await;
    call(gw.addr, "244").await;
    call(gw.addr, "+7 923 529-29-26").await;

    // `ЗвонкиПоНомеру("+7 (923) 529-29-26", С)`.
    let since = moscow_time_with_offset(before_calls);
    let path = format!(
        "/api/v1/calls?limit=50&number={}&since={}",
        encode_url_1c("+7 (923) 529-29-26"),
        encode_url_1c(&since)
    );
    assert!(path.contains("%2B7%20%28923%29%20529-29-26"), "{path}");
    assert!(path.contains("%2B03%3A00"), "{path}");
    let reply = calls_1c(gw.addr, &path, API_TOKEN).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer = json(&reply);
    let calls = answer["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 2, "{}", reply.body);
    for c in calls {
        assert_eq!(c["number"], "+79235292926");
        assert_eq!(c["key"], OPERATOR_KEY);
        assert!(c["delivered"].is_u64());
        // `Лев(at, 19)` is what XMLЗначение(Тип("Дата"), …) reads: UTC without a fraction.
        let at = c["at"].as_str().expect("at");
        assert!(at.ends_with('Z') && at.len() > 19, "{at}");
        humantime::parse_rfc3339(&format!("{}Z", &at[..19])).expect("YYYY-MM-DDThh:mm:ss");
    }
    assert!(answer["next_before"].is_null());

    // `since` a minute ahead: nothing; the same instant written raw, with `+`.
    let ahead = moscow_time_with_offset(SystemTime::now() + Duration::from_secs(60));
    let path = format!(
        "/api/v1/calls?limit=50&number={}&since={ahead}",
        encode_url_1c("89235292926")
    );
    let reply = calls_1c(gw.addr, &path, API_TOKEN).await;
    assert_eq!(json(&reply)["calls"].as_array().map(Vec::len), Some(0));

    // What the sample turns into an exception: a wrong token, a misspelt
    // parameter, a time with no offset; each with `error` to show.
    let reply = calls_1c(gw.addr, "/api/v1/calls?limit=50&number=244", "wrong-token").await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert!(!error_of(&reply).is_empty());
    let reply = calls_1c(gw.addr, "/api/v1/calls?limit=50&numbr=244", API_TOKEN).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(error_of(&reply).contains("'numbr'"), "{}", reply.body);
    eprintln!("400 for a misspelt parameter: {}", reply.body);
    let local = &since[..19];
    let reply = calls_1c(
        gw.addr,
        &format!("/api/v1/calls?since={}", encode_url_1c(local)),
        API_TOKEN,
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(error_of(&reply).contains("offset"), "{}", reply.body);
    eprintln!("400 for a time without an offset: {}", reply.body);
}

#[test]
fn one_c_number_and_url_writing_as_the_samples_assume() {
    assert_eq!(format_1c(0, Format1c::Plain), "0");
    assert_eq!(format_1c(0, Format1c::NoGroupsZeroEmpty), "");
    assert_eq!(format_1c(1_234_567, Format1c::Plain), "1234567");
    assert_eq!(
        format_1c(1_234_567, Format1c::Grouped),
        "1\u{a0}234\u{a0}567"
    );
    assert_eq!(format_1c(123, Format1c::Grouped), "123");
    assert_eq!(
        encode_url_1c("+7 (923) 529-29-26"),
        "%2B7%20%28923%29%20529-29-26"
    );
    assert_eq!(
        encode_url_1c("контрагент-17"),
        "%D0%BA%D0%BE%D0%BD%D1%82%D1%80%D0%B0%D0%B3%D0%B5%D0%BD%D1%82-17"
    );
    assert_eq!(encode_url_1c(GUID), GUID);
}
