//! Operator screens' view: pop-ups over WebSocket and long-poll, from a
//! gateway on 127.0.0.1:0, with IncomingCall sent over SOAP as the PBX does.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;

use support::*;

/// The seed's caller: counterparty `a1` of [`DIRECTORY`].
const CALLER: &str = "89235292926";

/// A screen's WebSocket, connected and handshaken.
async fn screen(addr: SocketAddr, token: &str, after: Option<u64>) -> WebSocketStream<TcpStream> {
    screen_on(
        TcpStream::connect(addr).await.expect("connect"),
        addr,
        token,
        after,
    )
    .await
}

async fn screen_on(
    stream: TcpStream,
    addr: SocketAddr,
    token: &str,
    after: Option<u64>,
) -> WebSocketStream<TcpStream> {
    let after = after.map(|n| format!("&after={n}")).unwrap_or_default();
    let url = format!("ws://{addr}/operator/ws?token={token}{after}");
    let (ws, response) = timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async(url, stream),
    )
    .await
    .expect("handshake within 5 s")
    .expect("handshake accepted");
    assert_eq!(response.status(), 101);
    ws
}

/// What a screen saw next.
#[derive(Debug)]
enum Seen {
    Text(String),
    Close(Option<CloseFrame>),
    /// The stream ended (or failed) without a close frame.
    Ended,
    /// Nothing within the time given.
    Nothing,
}

/// The next text or close frame within `limit`; pings are answered (by
/// tungstenite, while reading) and skipped.
async fn next_seen<S>(ws: &mut WebSocketStream<S>, limit: Duration) -> Seen
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Seen::Nothing,
            Ok(None) | Ok(Some(Err(_))) => return Seen::Ended,
            Ok(Some(Ok(WsMessage::Text(t)))) => return Seen::Text(t.to_string()),
            Ok(Some(Ok(WsMessage::Close(frame)))) => return Seen::Close(frame),
            Ok(Some(Ok(_))) => continue,
        }
    }
}

async fn next_text<S>(ws: &mut WebSocketStream<S>, limit: Duration) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match next_seen(ws, limit).await {
        Seen::Text(t) => t,
        other => panic!("expected a text frame within {limit:?}, saw {other:?}"),
    }
}

fn seq_of(json: &str) -> u64 {
    let v: Value = serde_json::from_str(json).expect("valid JSON");
    v["seq"].as_u64().expect("seq")
}

/// Asserts the screen's next frame is a close with `code`; returns its reason.
async fn expect_close<S>(ws: &mut WebSocketStream<S>, code: CloseCode, limit: Duration) -> String
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match next_seen(ws, limit).await {
        Seen::Close(Some(frame)) => {
            assert_eq!(frame.code, code, "reason: {}", frame.reason);
            frame.reason.to_string()
        }
        other => panic!("expected a close {code:?} within {limit:?}, saw {other:?}"),
    }
}

/// IncomingCall over SOAP; asserts the PBX gets its `1`.
async fn incoming_call(addr: SocketAddr, number: &str, key: &str) {
    let reply = soap(addr, &incoming_call_envelope(number, key)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(element_text(&reply.body, "m:return"), Some("1"));
}

/// A WebSocket upgrade request for `path_and_query`, as raw bytes.
fn upgrade_request(addr: SocketAddr, path_and_query: &str, version: &str) -> String {
    format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: {version}\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

fn json_body(reply: &Reply) -> Value {
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{reply:?}"
    );
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.body))
}

fn error_of(reply: &Reply) -> String {
    json_body(reply)["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {}", reply.body))
        .to_owned()
}

#[tokio::test]
async fn two_screens_of_one_operator_get_the_card_and_another_operator_gets_nothing() {
    let gw = start("").await;
    let mut desk = screen(gw.addr, OPERATOR_TOKEN, None).await;
    let mut phone = screen(gw.addr, OPERATOR_TOKEN, None).await;
    let mut other = screen(gw.addr, OTHER_TOKEN, None).await;

    let sent = Instant::now();
    incoming_call(gw.addr, CALLER, OPERATOR_KEY).await;
    for ws in [&mut desk, &mut phone] {
        let text = next_text(ws, Duration::from_secs(1)).await;
        let v: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(v["type"], "incoming_call");
        assert_eq!(v["seq"], 1);
        assert_eq!(v["key"], OPERATOR_KEY);
        assert_eq!(v["number"], "+79235292926");
        assert_eq!(v["raw_number"], CALLER);
        assert_eq!(v["counterparty"]["id"], "a1");
        assert_eq!(v["counterparty"]["name"], "Фэйковый чиж");
        assert_eq!(v["counterparty"]["manager_phone"], "244");
    }
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
    assert!(matches!(
        next_seen(&mut other, Duration::from_millis(200)).await,
        Seen::Nothing
    ));

    // The other operator's calls go to the other operator only; an unknown
    // caller comes with a null counterparty.
    incoming_call(gw.addr, "244", OTHER_KEY).await;
    let v: Value =
        serde_json::from_str(&next_text(&mut other, Duration::from_secs(1)).await).expect("JSON");
    assert_eq!(
        (v["seq"].as_u64(), v["key"].as_str()),
        (Some(1), Some(OTHER_KEY))
    );
    assert!(v["counterparty"].is_null());
    for ws in [&mut desk, &mut phone] {
        assert!(matches!(
            next_seen(ws, Duration::from_millis(200)).await,
            Seen::Nothing
        ));
    }

    // A screen that closes is answered and unregistered.
    desk.close(None).await.expect("close sent");
    assert!(matches!(
        next_seen(&mut desk, Duration::from_secs(2)).await,
        Seen::Close(_) | Seen::Ended
    ));
    let hub = gw.gateway().hub();
    eventually(Duration::from_secs(2), "desk unregistered", || {
        hub.subscriber_count(OPERATOR_KEY) == Some(1)
    })
    .await;
}

#[tokio::test]
async fn a_wrong_or_missing_token_gets_401_before_any_handshake() {
    let gw = start("").await;
    for path in [
        "/operator/ws?token=wrong-token",
        "/operator/ws",
        "/operator/ws?token=",
        "/operator/ws?after=1",
        // Another operator's key is not a token.
        &format!("/operator/ws?token={OPERATOR_KEY}"),
    ] {
        let reply = raw(gw.addr, upgrade_request(gw.addr, path, "13").as_bytes()).await;
        assert_eq!(reply.status, 401, "{path}: {reply:?}");
        assert!(reply.header("sec-websocket-accept").is_none());
        assert!(reply.header("upgrade").is_none());
        assert!(!error_of(&reply).is_empty());
    }
    // A real client sees the refusal as an HTTP error, not a WebSocket.
    let url = format!("ws://{}/operator/ws?token=wrong-token", gw.addr);
    match tokio_tungstenite::connect_async(url).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected an HTTP 401, got {other:?}"),
    }
    assert_eq!(gw.gateway().hub().subscriber_count(OPERATOR_KEY), Some(0));
}

#[tokio::test]
async fn a_bearer_header_carries_the_token_on_both_transports_with_the_same_refusals() {
    let gw = start("").await;
    let bearer = format!("Authorization: Bearer {OPERATOR_TOKEN}");

    // WebSocket: the header alone opens the operator's screen.
    let mut ws = screen_with_bearer(gw.addr, OPERATOR_TOKEN, "")
        .await
        .expect("accepted with the header");
    wait_for_subscribers(&gw, OPERATOR_KEY, 1).await;
    incoming_call(gw.addr, CALLER, OPERATOR_KEY).await;
    assert_eq!(seq_of(&next_text(&mut ws, Duration::from_secs(5)).await), 1);

    // Long-poll: the same.
    let reply = request(
        gw.addr,
        "GET",
        "/operator/events?after=0&wait=0",
        &[&bearer],
        b"",
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(json_body(&reply)["messages"][0]["seq"], 1);

    // A wrong header token: 401 before any handshake, on both.
    match screen_with_bearer(gw.addr, "wrong-token", "").await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 401),
        other => panic!("expected an HTTP 401, got {other:?}"),
    }
    let wrong = "Authorization: Bearer wrong-token";
    let upgrade = upgrade_request(gw.addr, "/operator/ws", "13").replacen(
        "\r\n\r\n",
        &format!("\r\n{wrong}\r\n\r\n"),
        1,
    );
    let reply = raw(gw.addr, upgrade.as_bytes()).await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
    assert!(reply.header("sec-websocket-accept").is_none());
    let reply = request(gw.addr, "GET", "/operator/events?wait=0", &[wrong], b"").await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert_eq!(error_of(&reply), "unknown token");

    // The token given both ways, or two Authorization headers: 400.
    let both = format!("/operator/events?wait=0&token={OPERATOR_TOKEN}");
    let reply = request(gw.addr, "GET", &both, &[&bearer], b"").await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(error_of(&reply).contains("twice"), "{}", reply.body);
    let reply = request(
        gw.addr,
        "GET",
        "/operator/events?wait=0",
        &[&bearer, &bearer],
        b"",
    )
    .await;
    assert_eq!(reply.status, 400, "{reply:?}");

    // Another scheme (a browser's cached Basic credentials) is no token:
    // the query's token still counts, and without one it is a 401.
    let reply = request(gw.addr, "GET", &both, &[SEED_AUTH_HEADER], b"").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let reply = request(
        gw.addr,
        "GET",
        "/operator/events?wait=0",
        &[SEED_AUTH_HEADER],
        b"",
    )
    .await;
    assert_eq!(reply.status, 401, "{reply:?}");
    assert!(error_of(&reply).contains("Bearer"), "{}", reply.body);

    ws.close(None).await.expect("close");
}

/// Waits until `key` has `n` live WebSocket screens.
async fn wait_for_subscribers(gw: &TestGateway, key: &str, n: usize) {
    let hub = gw.gateway().hub();
    eventually(Duration::from_secs(2), "screens subscribed", || {
        hub.subscriber_count(key) == Some(n)
    })
    .await;
}

const SEED_AUTH_HEADER: &str = "Authorization: Basic U09BUDoxMjM=";

#[tokio::test]
async fn an_empty_after_asks_for_no_replay_on_both_transports() {
    let gw = start("").await;
    incoming_call(gw.addr, CALLER, OPERATOR_KEY).await;
    incoming_call(gw.addr, CALLER, OPERATOR_KEY).await;

    // What 1C's `Формат(0, "ЧГ=0")` writes for 0: no replay, the key's place.
    let reply = get(
        gw.addr,
        &format!("/operator/events?token={OPERATOR_TOKEN}&after=&wait=0"),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        json_body(&reply),
        serde_json::json!({"messages": [], "next_after": 2})
    );

    let mut ws = screen_with_bearer(gw.addr, OPERATOR_TOKEN, "?after=")
        .await
        .expect("accepted");
    wait_for_subscribers(&gw, OPERATOR_KEY, 1).await;
    incoming_call(gw.addr, CALLER, OPERATOR_KEY).await;
    assert_eq!(
        seq_of(&next_text(&mut ws, Duration::from_secs(5)).await),
        3,
        "no replay of 1 and 2, then the live call"
    );

    // Anything else that is not a number stays a 400 that says what is wrong.
    let reply = get(
        gw.addr,
        &format!("/operator/events?token={OPERATOR_TOKEN}&after=1%C2%A0234&wait=0"),
    )
    .await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(error_of(&reply).contains("ЧН=0; ЧГ=0"), "{}", reply.body);
}

#[tokio::test]
async fn a_request_that_is_not_a_good_handshake_gets_400_or_426() {
    let gw = start("").await;
    let ws = format!("/operator/ws?token={OPERATOR_TOKEN}");

    // A plain GET with a good token.
    let reply = get(gw.addr, &ws).await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(error_of(&reply).contains("WebSocket"));

    // `after` not a number: 400, after the token check.
    let reply = raw(
        gw.addr,
        upgrade_request(gw.addr, &format!("{ws}&after=abc"), "13").as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(error_of(&reply).contains("after"));
    let reply = raw(
        gw.addr,
        upgrade_request(gw.addr, "/operator/ws?token=wrong-token&after=abc", "13").as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 401, "{reply:?}");

    // Another protocol version: 426 saying which one we speak.
    let reply = raw(gw.addr, upgrade_request(gw.addr, &ws, "8").as_bytes()).await;
    assert_eq!(reply.status, 426, "{reply:?}");
    assert_eq!(reply.header("sec-websocket-version"), Some("13"));
    assert_eq!(gw.gateway().hub().subscriber_count(OPERATOR_KEY), Some(0));
}

#[tokio::test]
async fn a_screen_that_reconnects_with_after_gets_what_it_missed_in_order_then_live_ones() {
    let gw = start("").await;
    let mut ws = screen(gw.addr, OPERATOR_TOKEN, None).await;
    for _ in 0..2 {
        incoming_call(gw.addr, CALLER, OPERATOR_KEY).await;
    }
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(seq_of(&next_text(&mut ws, Duration::from_secs(1)).await));
    }
    assert_eq!(seen, vec![1, 2]);
    drop(ws);

    // Missed while away.
    for number in [CALLER, "244", "+7 916 555-55-55"] {
        incoming_call(gw.addr, number, OPERATOR_KEY).await;
    }
    let mut back = screen(gw.addr, OPERATOR_TOKEN, Some(2)).await;
    let mut missed = Vec::new();
    for _ in 0..3 {
        missed.push(next_text(&mut back, Duration::from_secs(1)).await);
    }
    assert_eq!(
        missed.iter().map(|m| seq_of(m)).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    let v: Value = serde_json::from_str(&missed[2]).expect("JSON");
    assert_eq!(v["counterparty"]["id"], "b2");

    // Then live ones.
    incoming_call(gw.addr, CALLER, OPERATOR_KEY).await;
    assert_eq!(
        seq_of(&next_text(&mut back, Duration::from_secs(1)).await),
        6
    );

    // Without `after`, a new screen gets only what comes from now on.
    let mut fresh = screen(gw.addr, OPERATOR_TOKEN, None).await;
    assert!(matches!(
        next_seen(&mut fresh, Duration::from_millis(200)).await,
        Seen::Nothing
    ));
    incoming_call(gw.addr, CALLER, OPERATOR_KEY).await;
    assert_eq!(
        seq_of(&next_text(&mut fresh, Duration::from_secs(1)).await),
        7
    );
    assert_eq!(
        seq_of(&next_text(&mut back, Duration::from_secs(1)).await),
        7
    );
}

#[tokio::test]
async fn long_poll_gets_the_same_messages_as_the_websocket() {
    let gw = start("").await;
    let mut ws = screen(gw.addr, OPERATOR_TOKEN, None).await;
    incoming_call(gw.addr, CALLER, OPERATOR_KEY).await;
    incoming_call(gw.addr, "244", OPERATOR_KEY).await;
    let frames = [
        next_text(&mut ws, Duration::from_secs(1)).await,
        next_text(&mut ws, Duration::from_secs(1)).await,
    ];

    // A message after `after` exists: the answer comes at once.
    let started = Instant::now();
    let reply = get(
        gw.addr,
        &format!("/operator/events?token={OPERATOR_TOKEN}&after=0&wait=30"),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let v = json_body(&reply);
    assert_eq!(v["next_after"], 2);
    // Byte for byte the WebSocket frames.
    assert_eq!(
        reply.body,
        format!(
            r#"{{"messages":[{},{}],"next_after":2}}"#,
            frames[0], frames[1]
        )
    );

    let reply = get(
        gw.addr,
        &format!("/operator/events?token={OPERATOR_TOKEN}&after=1"),
    )
    .await;
    assert_eq!(
        reply.body,
        format!(r#"{{"messages":[{}],"next_after":2}}"#, frames[1])
    );
}

#[tokio::test]
async fn long_poll_answers_an_empty_list_after_wait_and_wakes_on_a_call() {
    let gw = start("").await;
    incoming_call(gw.addr, CALLER, OPERATOR_KEY).await;

    let started = Instant::now();
    let reply = get(
        gw.addr,
        &format!("/operator/events?token={OPERATOR_TOKEN}&after=1&wait=1"),
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        json_body(&reply),
        serde_json::json!({"messages": [], "next_after": 1})
    );
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(3),
        "{waited:?}"
    );

    // Without `after`: only a new message, and as soon as it comes.
    let addr = gw.addr;
    let poll = tokio::spawn(async move {
        let started = Instant::now();
        let reply = get(
            addr,
            &format!("/operator/events?token={OPERATOR_TOKEN}&wait=20"),
        )
        .await;
        (reply, started.elapsed())
    });
    // The call must come after the poll has read where the key stands.
    let hub = gw.gateway().hub();
    eventually(Duration::from_secs(5), "the long-poll waiting", || {
        hub.long_poll_waiters(OPERATOR_KEY) == Some(1)
    })
    .await;
    assert!(!poll.is_finished(), "answered before any new message");
    incoming_call(gw.addr, "244", OPERATOR_KEY).await;
    let (reply, took) = timeout(Duration::from_secs(5), poll)
        .await
        .expect("answered")
        .expect("task");
    assert!(took < Duration::from_secs(3), "{took:?}");
    let v = json_body(&reply);
    assert_eq!(v["next_after"], 2);
    assert_eq!(v["messages"][0]["seq"], 2);
    assert_eq!(v["messages"][0]["raw_number"], "244");

    // An `after` from before a restart is a reset: what is buffered, from seq 1.
    let reply = get(
        gw.addr,
        &format!("/operator/events?token={OPERATOR_TOKEN}&after=500&wait=0"),
    )
    .await;
    let v = json_body(&reply);
    assert_eq!(v["next_after"], 2);
    assert_eq!(v["messages"][0]["seq"], 1);
}

#[tokio::test]
async fn long_poll_refuses_bad_tokens_and_bad_numbers_and_clamps_wait() {
    let gw = start("[popup]\nlong_poll_max_wait = \"1s\"").await;
    for path in [
        "/operator/events?token=wrong-token&after=0".to_owned(),
        "/operator/events?after=0".to_owned(),
        format!("/operator/events?token={OPERATOR_KEY}&after=0"),
    ] {
        let reply = get(gw.addr, &path).await;
        assert_eq!(reply.status, 401, "{path}: {reply:?}");
        assert!(!error_of(&reply).is_empty());
    }
    for (query, word) in [
        ("after=abc", "after"),
        ("after=-1", "after"),
        ("after=0&wait=soon", "wait"),
        ("after=0&after=1", "more than once"),
    ] {
        let reply = get(
            gw.addr,
            &format!("/operator/events?token={OPERATOR_TOKEN}&{query}"),
        )
        .await;
        assert_eq!(reply.status, 400, "{query}: {reply:?}");
        assert!(error_of(&reply).contains(word), "{query}: {}", reply.body);
    }
    // wait=1000 is clamped to popup.long_poll_max_wait.
    let started = Instant::now();
    let reply = get(
        gw.addr,
        &format!("/operator/events?token={OPERATOR_TOKEN}&after=0&wait=1000"),
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

/// A counterparty whose card is about 33 KB, so that a few messages fill a
/// screen's socket buffers.
fn fat_directory() -> String {
    let emails: Vec<String> = (0..32)
        .map(|i| format!("{i:02}{}@example.ru", "x".repeat(990)))
        .collect();
    let line = serde_json::json!({
        "id": "fat", "name": "ООО \"Толстая карточка\"", "phones": [CALLER], "emails": emails,
    });
    format!("{line}\n")
}

#[tokio::test]
async fn a_screen_that_never_reads_is_cut_off_while_the_others_get_everything() {
    const CALLS: u64 = 30;
    let gw = start_with(&fat_directory(), "[popup]\nqueue_len = 2").await;
    // The sleeper's socket takes little before it stops the sender.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = socket.connect(gw.addr).await.expect("connect");
    let mut sleeper = screen_on(stream, gw.addr, OPERATOR_TOKEN, None).await;

    let mut reader = screen(gw.addr, OPERATOR_TOKEN, None).await;
    let reading = tokio::spawn(async move {
        let mut seqs = Vec::new();
        while (seqs.len() as u64) < CALLS {
            seqs.push(seq_of(
                &next_text(&mut reader, Duration::from_secs(10)).await,
            ));
        }
        (seqs, reader)
    });

    let mut slowest = Duration::ZERO;
    for _ in 0..CALLS {
        let started = Instant::now();
        incoming_call(gw.addr, CALLER, OPERATOR_KEY).await;
        slowest = slowest.max(started.elapsed());
    }
    assert!(
        slowest < Duration::from_secs(1),
        "slowest IncomingCall: {slowest:?}"
    );
    let (seqs, _reader) = timeout(Duration::from_secs(10), reading)
        .await
        .expect("reader done")
        .expect("task");
    assert_eq!(seqs, (1..=CALLS).collect::<Vec<_>>());

    let hub = gw.gateway().hub();
    eventually(Duration::from_secs(5), "the sleeper cut off", || {
        hub.subscriber_count(OPERATOR_KEY) == Some(1)
    })
    .await;
    let metrics = String::from_utf8_lossy(&gw.gateway().metrics().render()).into_owned();
    assert!(
        metrics.contains("cti_popup_slow_disconnects_total 1"),
        "{metrics}"
    );

    // Waking up, it reads what reached it, in order, then a close 1013 that
    // says where to resume; resuming there, it gets the rest.
    let mut got = Vec::new();
    let reason = loop {
        match next_seen(&mut sleeper, Duration::from_secs(10)).await {
            Seen::Text(t) => got.push(seq_of(&t)),
            Seen::Close(Some(frame)) => {
                assert_eq!(frame.code, CloseCode::Again, "{}", frame.reason);
                break frame.reason.to_string();
            }
            other => panic!("after {got:?}: {other:?}"),
        }
    };
    let last = got.last().copied().unwrap_or(0);
    assert_eq!(got, (1..=last).collect::<Vec<_>>());
    assert!(last < CALLS, "the sleeper got everything: not cut off");
    assert_eq!(reason, format!("too slow: reconnect with after={last}"));

    let mut resumed = screen(gw.addr, OPERATOR_TOKEN, Some(last)).await;
    for seq in last + 1..=CALLS {
        assert_eq!(
            seq_of(&next_text(&mut resumed, Duration::from_secs(2)).await),
            seq
        );
    }
}

#[tokio::test]
async fn a_screen_that_does_not_answer_pings_is_dropped_and_one_that_does_is_kept() {
    let gw = start("[popup]\nping_interval = \"200ms\"").await;
    let mut dead = screen(gw.addr, OPERATOR_TOKEN, None).await;
    let mut alive = screen(gw.addr, OPERATOR_TOKEN, None).await;
    // `alive` keeps reading (and so answers pings) until its card comes.
    let alive = tokio::spawn(async move {
        let started = Instant::now();
        let text = next_text(&mut alive, Duration::from_secs(10)).await;
        (seq_of(&text), started.elapsed())
    });
    let hub = gw.gateway().hub();
    eventually(Duration::from_secs(5), "the dead screen dropped", || {
        hub.subscriber_count(OPERATOR_KEY) == Some(1)
    })
    .await;
    // Seven more intervals: the live screen stays. This sleep is what the
    // test is about (ping intervals passing), not a wait for the server.
    tokio::time::sleep(Duration::from_millis(1400)).await;
    assert_eq!(hub.subscriber_count(OPERATOR_KEY), Some(1));
    incoming_call(gw.addr, CALLER, OPERATOR_KEY).await;
    let (seq, lived) = alive.await.expect("task");
    assert_eq!(seq, 1);
    assert!(lived > Duration::from_millis(1400), "{lived:?}");

    // What the dead one finds when it looks: pings, then a close 1008.
    let reason = expect_close(&mut dead, CloseCode::Policy, Duration::from_secs(2)).await;
    assert!(reason.contains("ping"), "{reason}");
}

#[tokio::test]
async fn a_screen_that_floods_or_sends_big_frames_is_closed() {
    let gw = start("").await;
    let mut flood = screen(gw.addr, OPERATOR_TOKEN, None).await;
    for i in 0..100 {
        if flood
            .send(WsMessage::text(format!("hello {i}")))
            .await
            .is_err()
        {
            break;
        }
    }
    expect_close(&mut flood, CloseCode::Policy, Duration::from_secs(2)).await;

    let mut big = screen(gw.addr, OPERATOR_TOKEN, None).await;
    big.send(WsMessage::text("x".repeat(5000)))
        .await
        .expect("sent");
    expect_close(&mut big, CloseCode::Size, Duration::from_secs(2)).await;

    let hub = gw.gateway().hub();
    eventually(Duration::from_secs(5), "both unregistered", || {
        hub.subscriber_count(OPERATOR_KEY) == Some(0)
    })
    .await;
    // Neither disturbed the PBX or a well-behaved screen.
    let mut ok = screen(gw.addr, OPERATOR_TOKEN, None).await;
    incoming_call(gw.addr, CALLER, OPERATOR_KEY).await;
    assert_eq!(seq_of(&next_text(&mut ok, Duration::from_secs(1)).await), 1);
}

#[tokio::test]
async fn shutdown_closes_screens_with_1001_and_answers_waiting_long_polls() {
    let mut gw = start("").await;
    let mut one = screen(gw.addr, OPERATOR_TOKEN, None).await;
    let mut two = screen(gw.addr, OTHER_TOKEN, None).await;
    let addr = gw.addr;
    let poll = tokio::spawn(async move {
        get(
            addr,
            &format!("/operator/events?token={OPERATOR_TOKEN}&after=0&wait=30"),
        )
        .await
    });
    let hub = gw.gateway().hub();
    eventually(Duration::from_secs(5), "the long-poll waiting", || {
        hub.long_poll_waiters(OPERATOR_KEY) == Some(1)
    })
    .await;

    let started = Instant::now();
    let screens = async {
        expect_close(&mut one, CloseCode::Away, Duration::from_secs(5)).await;
        expect_close(&mut two, CloseCode::Away, Duration::from_secs(5)).await;
    };
    tokio::join!(gw.stop(), screens);
    let reply = timeout(Duration::from_secs(5), poll)
        .await
        .expect("long-poll answered")
        .expect("task");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(json_body(&reply)["messages"], serde_json::json!([]));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn screens_count_against_max_connections_and_free_their_slot_when_they_close() {
    // A screen holds one slot; its handshake briefly needs a second one (the
    // HTTP connection's, released at the upgrade). So 4 slots admit 3 screens.
    let gw = start("server.max_connections = 4").await;
    let mut screens = Vec::new();
    for _ in 0..3 {
        screens.push(screen(gw.addr, OPERATOR_TOKEN, None).await);
    }
    // A fourth screen finds every slot taken: refused at accept or with 503.
    let url = format!("ws://{}/operator/ws?token={OPERATOR_TOKEN}", gw.addr);
    let fourth = timeout(
        Duration::from_secs(5),
        tokio_tungstenite::connect_async(url),
    )
    .await;
    assert!(
        matches!(fourth, Ok(Err(_))),
        "a fourth screen was accepted with server.max_connections = 4"
    );
    // Closing one screen frees its slot for another.
    let mut closing = screens.pop().expect("a screen");
    closing.close(None).await.expect("close");
    drop(closing);
    let hub = gw.gateway().hub();
    eventually(
        Duration::from_secs(5),
        "the closed screen unregistered",
        || hub.subscriber_count(OPERATOR_KEY) == Some(2),
    )
    .await;
    // The slot itself is given back when the screen's task ends, a moment
    // after it unregisters, and nothing outside shows it: a screen that
    // comes in that moment is refused, so new screens try until the deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    let admitted = loop {
        let url = format!("ws://{}/operator/ws?token={OPERATOR_TOKEN}", gw.addr);
        if let Ok(Ok(_)) = timeout(
            Duration::from_secs(1),
            tokio_tungstenite::connect_async(url),
        )
        .await
        {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(admitted, "the freed slot was never given to a new screen");
}

/// `seq` continues across a restart: a screen that saw seqs 1-3 before the
/// restart and reconnects with `after=3` gets the new run's first call,
/// which is seq 4 (it would be seq 1 and read as a reset otherwise, and once
/// the new run passed 3 calls the screen would silently skip its first).
#[tokio::test]
async fn seq_continues_across_a_restart_and_a_reconnecting_screen_misses_nothing() {
    let mut gw = start("").await;
    for _ in 0..3 {
        let reply = soap(gw.addr, &incoming_call_envelope(CALLER, OPERATOR_KEY)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    assert_eq!(gw.gateway().hub().last_seq(OPERATOR_KEY), Some(3));
    gw.stop().await;
    let gw = start_in(gw.dir, "").await;
    assert_eq!(
        gw.gateway().hub().last_seq(OPERATOR_KEY),
        Some(3),
        "the hub continues from the journal"
    );
    assert_eq!(gw.gateway().hub().last_seq(OTHER_KEY), Some(0));

    // Four calls in the new run: the screen that saw 3 gets exactly these.
    for _ in 0..4 {
        let reply = soap(gw.addr, &incoming_call_envelope(CALLER, OPERATOR_KEY)).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let polled = get(
        gw.addr,
        &format!("/operator/events?token={OPERATOR_TOKEN}&after=3&wait=1"),
    )
    .await;
    assert_eq!(polled.status, 200, "{}", polled.body);
    let body: Value = serde_json::from_str(&polled.body).expect("JSON");
    let seqs: Vec<u64> = body["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["seq"].as_u64())
        .collect();
    assert_eq!(seqs, [4, 5, 6, 7]);
    assert_eq!(body["next_after"], 7);

    // The journal says which seq each call got.
    let calls = gw
        .gateway()
        .store()
        .calls(Some(OPERATOR_KEY), None, 10)
        .await
        .expect("journal");
    let journaled: Vec<Option<u64>> = calls.iter().map(|c| c.seq).collect();
    assert_eq!(
        journaled,
        [7, 6, 5, 4, 3, 2, 1].map(Some),
        "newest first, each with its seq"
    );
}

/// A pop-up for more screens than `vats` wakes before the journal commits
/// (a large fan-out is woken after the answer): every screen still gets every
/// card exactly once, in order, and the PBX its `1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_fan_out_reaches_every_screen_once_and_in_order() {
    const SCREENS: usize = 150;
    let gw = start("").await;
    let mut screens = Vec::with_capacity(SCREENS);
    for _ in 0..SCREENS {
        screens.push(screen(gw.addr, OPERATOR_TOKEN, None).await);
    }
    assert_eq!(
        gw.gateway().hub().subscriber_count(OPERATOR_KEY),
        Some(SCREENS)
    );
    for number in [CALLER, "244", CALLER] {
        incoming_call(gw.addr, number, OPERATOR_KEY).await;
    }
    for ws in &mut screens {
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(seq_of(&next_text(ws, Duration::from_secs(5)).await));
        }
        assert_eq!(seen, vec![1, 2, 3]);
    }
    for ws in &mut screens {
        assert!(matches!(
            next_seen(ws, Duration::from_millis(20)).await,
            Seen::Nothing
        ));
    }
}
