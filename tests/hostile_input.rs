//! Hostile input against a running gateway, over real sockets: each case gets
//! a bounded answer (every read here has a deadline) in the caller's protocol
//! (an HTTP status and a SOAP fault with its faultcode for SOAP, a close code
//! for WebSocket, a JSON error for the push API), and a good SayName succeeds
//! right after it.
//!
//! What the other test files already cover, in the form the issue asks for,
//! and what this file adds (the existing tests are not repeated here):
//!
//! - Billion laughs and external entities: `bad_input::
//!   doctype_entities_and_external_references_are_refused` sends a 3-level
//!   laugh and a `file://` SYSTEM entity and checks HTTP 500. Added: the full
//!   10-level billion laughs, an external DTD subset, a parameter entity and an
//!   `http://` entity pointing at a listener of this test (which must see no
//!   connection: nothing is fetched), an XInclude, a DOCTYPE in SOAP 1.2 (400
//!   with `env:Sender`), and the faultcode of each.
//! - 10 MB bodies: `bad_input::a_body_over_64_kib_gets_413_whether_declared_or_streamed`
//!   sends 70-80 KiB. Added: a real 10 MB SOAP body, declared and chunked, sent
//!   while the answer is read: 413 before the body is through, then the
//!   connection closed; the same without credentials (401 first).
//! - 100,000 nested elements: `bad_input::deeply_nested_xml_gets_a_fault_quickly`
//!   nests 5,000 balanced elements within 64 KiB. Added: 100,000 nested
//!   elements (700 KB, declared and chunked: 413), 21,000 unclosed ones in
//!   64 KiB (fault at depth 33), and 10,000 flat elements (the element cap).
//! - Invalid UTF-8: `bad_input::invalid_utf8_gets_a_fault` puts three bad bytes
//!   in the prologue. Added: an overlong form and a surrogate in `Number`, a
//!   cut sequence at the very end, bad bytes in an element name, in the
//!   `Content-Type` and `Authorization` headers and in the request path, and
//!   in push API JSON (below).
//! - Header floods: `bad_input::a_header_flood_is_refused` sends 2,000 headers
//!   and accepts either a 431 or a silent close. Added: 64 headers still
//!   served, 65 headers, one 200 KiB header and a head that never ends, each a
//!   431 (as the README says), a 70 KiB request line (414); and heads of
//!   65-100 KiB arriving in one read, which hyper let through (its buffer
//!   limit is checked only while a head is incomplete, hyperium/hyper#4081)
//!   until the gateway measured every head itself: a 431 SOAP fault.
//! - Half-sent requests: `bad_input::slow_headers_are_cut_off` and
//!   `a_body_that_never_arrives_is_answered_with_408` (and push_api's
//!   `a_body_slower_than_the_read_timeout_gets_408`) send part of a request and
//!   stop. Added: slowloris proper, 20 heads each trickled a byte every 100 ms
//!   (the trickle must not extend the header timeout) while SayName is served,
//!   and bodies trickled a byte every 100 ms, declared and chunked (408).
//! - Idle connections: `bad_input::idle_keep_alive_connections_are_closed`
//!   holds one; `connections_over_the_limit_are_closed_and_the_rest_still_served`
//!   fills a limit of 4. Added: 300 idle connections (silent, half a request
//!   line, idle after a keep-alive request) held while SayName is served, then
//!   all cut by `server.header_read_timeout`.
//! - Wrong and missing credentials: `soap::missing_and_wrong_credentials_get_401_with_a_soap_fault`,
//!   `push_api::pushes_and_deletes_without_the_right_bearer_token_get_401`,
//!   `journal_and_page::the_journal_needs_the_api_token_and_sane_parameters`,
//!   `popup_transports::a_wrong_or_missing_token_gets_401_before_any_handshake`
//!   and `long_poll_refuses_bad_tokens_and_bad_numbers_and_clamps_wait` cover
//!   missing, wrong and empty ones. Added: malformed Basic headers (bare
//!   scheme, 60 KB, not base64, no colon, non-ASCII bytes, a Bearer token, two
//!   headers), 100 wrong passwords in a row on one connection (no lockout of
//!   the PBX), hostile Bearer tokens, and screen tokens that are too long, not
//!   UTF-8, given twice or nearly right.
//! - WebSocket with a bad token: covered by the popup_transports test above.
//! - Oversized frames and floods: `popup_transports::a_screen_that_floods_or_sends_big_frames_is_closed`
//!   sends one 5,000-byte text frame (1009) and 100 text messages (1008).
//!   Added: a frame header declaring 2^40 bytes with no payload (1009 without
//!   waiting for it), a binary frame and a fragmented message over the limit
//!   (1009), an oversized ping (1002), a flood of 1,000 pings (1008, with
//!   at most one pong per frame read) and of 10,000 empty frames (1008); and
//!   an endless fragmented message of empty frames, which tungstenite never
//!   surfaced as frames until the gateway counted the bytes a screen sends
//!   (1008).
//! - Push API, huge or malformed arrays: `push_api::more_than_10000_records_get_413_naming_the_limit_and_10000_are_taken`
//!   (10,001 real records), `a_body_over_8_mib_gets_413_whether_declared_or_chunked`
//!   (a declared length with one byte sent, and a chunked body),
//!   `broken_json_is_a_400_that_says_where_and_changes_nothing`. Added: arrays
//!   of 10,001 `{}` (inline and chunked) and of a million `0` (413 before any
//!   record is read), a 9 MB body sent in full (413; without a token, 401),
//!   an 8 MiB array of strings (422), arrays nested 10,000 and 1,000,000 deep,
//!   and invalid UTF-8 (400 naming line and column).

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use support::*;

/// The longest any one answer may take in this file.
const WITHIN: Duration = Duration::from_secs(5);
const PUSH_PATH: &str = "/api/v1/counterparties";
const BEARER: &str = "Authorization: Bearer api-token-for-tests";
const JSON: &str = "Content-Type: application/json";
const SOAP11_NS: &str = "http://schemas.xmlsoap.org/soap/envelope/";
/// The README's limits.
const MAX_SOAP_BODY: usize = 64 * 1024;
const MAX_PUSH_BODY: usize = 8 * 1024 * 1024;

// ---------------------------------------------------------------- helpers

/// A good SayName on a new connection: 200 with the seed caller's card.
async fn say_name_still_works(addr: SocketAddr) {
    let reply = timeout(WITHIN, soap(addr, &say_name_envelope("89235292926")))
        .await
        .expect("SayName answered in time");
    assert_eq!(reply.status, 200, "{}", reply.body);
    let data = say_name_data(&reply);
    assert_eq!(element_text(&data, "title"), Some("Фэйковый чиж"), "{data}");
    assert_eq!(element_text(&data, "phone"), Some("244"), "{data}");
}

/// A SOAP 1.1 fault: HTTP `status`, `soap:Client`, a faultstring saying `says`.
fn assert_client_fault(reply: &Reply, status: u16, says: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("text/xml; charset=utf-8"),
        "{reply:?}"
    );
    assert_eq!(
        element_text(&reply.body, "faultcode"),
        Some("soap:Client"),
        "{}",
        reply.body
    );
    let text = element_text(&reply.body, "faultstring")
        .unwrap_or_else(|| panic!("no faultstring: {}", reply.body));
    assert!(
        text.contains(says),
        "faultstring {text:?} does not say {says:?}"
    );
}

/// A JSON error answer with `status`; returns the parsed body.
fn json_error(reply: &Reply, status: u16) -> Value {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{reply:?}"
    );
    let v: Value =
        serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.body));
    assert!(v["error"].is_string(), "{v}");
    v
}

/// The head of a SOAP 1.1 POST with the seed's credentials; `extra` is more
/// header lines, each ending in CRLF.
fn soap_head(extra: &str) -> String {
    format!(
        "POST {SOAP_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nAuthorization: {SEED_AUTH}\r\n{extra}Connection: close\r\n\r\n"
    )
}

fn push_head(extra: &str) -> String {
    format!("POST {PUSH_PATH} HTTP/1.1\r\nHost: x\r\n{JSON}\r\n{BEARER}\r\n{extra}Connection: close\r\n\r\n")
}

/// `body` in HTTP/1.1 chunked framing, `chunk` bytes a chunk.
fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16 * (body.len() / chunk + 2));
    for piece in body.chunks(chunk) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// Two handles on one socket, so that a task can keep writing while the other
/// handle reads the answer with `support::read_reply`.
fn reader_and_writer(stream: TcpStream) -> (TcpStream, TcpStream) {
    let std = stream.into_std().expect("std socket");
    let other = std.try_clone().expect("dup socket");
    (
        TcpStream::from_std(std).expect("tokio socket"),
        TcpStream::from_std(other).expect("tokio socket"),
    )
}

/// Whether the server ends the connection (EOF or reset) within `limit`;
/// anything it still sends is returned.
async fn closes_within(stream: &mut TcpStream, limit: Duration) -> (bool, Vec<u8>) {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return (false, got),
            Ok(Ok(0)) | Ok(Err(_)) => return (true, got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status of the HTTP answer in `bytes` (its first line), if any.
fn status_of(bytes: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(bytes).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// What became of a request whose body was still being sent.
struct Streamed {
    reply: Reply,
    /// From the first byte of the head to the whole answer.
    answered_after: Duration,
    /// Whether the server then closed the connection within 3 s.
    closed: bool,
    /// Body bytes the client managed to write before it gave up.
    sent: usize,
}

/// Sends `head` and then `body` on a new connection, reading the answer while
/// the body is still being written (each write waits at most [`WITHIN`]).
async fn stream_request(addr: SocketAddr, head: &[u8], body: Vec<u8>) -> Streamed {
    let (mut reader, mut writer) =
        reader_and_writer(TcpStream::connect(addr).await.expect("connect"));
    let started = Instant::now();
    writer.write_all(head).await.expect("head");
    let sending = tokio::spawn(async move {
        let mut sent = 0;
        for piece in body.chunks(64 * 1024) {
            match timeout(WITHIN, writer.write_all(piece)).await {
                Ok(Ok(())) => sent += piece.len(),
                _ => break, // answered and closed, or not reading
            }
        }
        sent
    });
    let reply = timeout(WITHIN, read_reply(&mut reader))
        .await
        .expect("answered while the body was being sent");
    let answered_after = started.elapsed();
    let (closed, _) = closes_within(&mut reader, Duration::from_secs(3)).await;
    let sent = timeout(2 * WITHIN, sending)
        .await
        .expect("the writer stopped")
        .expect("writer task");
    Streamed {
        reply,
        answered_after,
        closed,
        sent,
    }
}

/// Counterparties in the directory, as `/readyz` says.
async fn counterparties(addr: SocketAddr) -> u64 {
    let ready = timeout(WITHIN, get(addr, "/readyz")).await.expect("readyz");
    let v: Value = serde_json::from_str(&ready.body).expect("readyz JSON");
    v["counterparties"].as_u64().expect("counterparties")
}

// ------------------------------------------------------- XML bombs, entities

/// A TCP listener standing for an attacker's server: any connection to it
/// would mean the gateway fetched something a request pointed at.
struct Trap {
    listener: std::net::TcpListener,
}

impl Trap {
    fn new() -> Trap {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        Trap { listener }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "http://{}/{path}",
            self.listener.local_addr().expect("addr")
        )
    }

    /// Whether anyone connected (the kernel completes a connection before
    /// the connecting side goes on, so an answered request has done so).
    fn was_reached(&self) -> bool {
        match self.listener.accept() {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
            Err(e) => panic!("accept: {e}"),
        }
    }
}

#[tokio::test]
async fn billion_laughs_and_external_entities_get_a_client_fault_and_nothing_is_fetched() {
    let gw = start("").await;
    let trap = Trap::new();
    let envelope = |doctype: &str, number: &str| {
        format!(
            r#"<?xml version="1.0"?>
{doctype}
<soap:Envelope xmlns:soap="{SOAP11_NS}"><soap:Body><SayName xmlns="http://VATS"><Number>{number}</Number></SayName></soap:Body></soap:Envelope>"#
        )
    };
    // The classic: ten levels of ten, 10^9 "lol"s (3 GB) once expanded.
    let mut laughs = String::from("<!DOCTYPE lolz [\n<!ENTITY lol0 \"lol\">\n");
    for level in 1..=9 {
        let refs = format!("&lol{};", level - 1).repeat(10);
        laughs.push_str(&format!("<!ENTITY lol{level} \"{refs}\">\n"));
    }
    laughs.push_str("]>");
    let cases = [
        ("billion laughs", envelope(&laughs, "&lol9;")),
        (
            "external DTD subset",
            envelope(
                &format!(
                    r#"<!DOCTYPE soap:Envelope SYSTEM "{}">"#,
                    trap.url("evil.dtd")
                ),
                "89235292926",
            ),
        ),
        (
            "parameter entity",
            envelope(
                &format!(
                    r#"<!DOCTYPE x [<!ENTITY % remote SYSTEM "{}"> %remote;]>"#,
                    trap.url("p.dtd")
                ),
                "89235292926",
            ),
        ),
        (
            "external general entity over http",
            envelope(
                &format!(
                    r#"<!DOCTYPE x [<!ENTITY xxe SYSTEM "{}">]>"#,
                    trap.url("xxe")
                ),
                "&xxe;",
            ),
        ),
        (
            "public identifier",
            envelope(
                &format!(
                    r#"<!DOCTYPE x PUBLIC "-//EVIL//DTD//EN" "{}">"#,
                    trap.url("public.dtd")
                ),
                "89235292926",
            ),
        ),
    ];
    for (what, body) in cases {
        let started = Instant::now();
        let reply = timeout(WITHIN, soap(gw.addr, &body))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer within {WITHIN:?}"));
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{what}: {:?}",
            started.elapsed()
        );
        assert_client_fault(&reply, 500, "DTDs and entity declarations are not accepted");
        assert!(
            reply.body.len() < 1024,
            "{what}: {} bytes",
            reply.body.len()
        );
        assert!(!reply.body.contains("lollol"), "{what}: {}", reply.body);
        say_name_still_works(gw.addr).await;
    }

    // XInclude is not processed either: an element where text is expected.
    let xinclude = envelope(
        "",
        &format!(
            r#"<xi:include xmlns:xi="http://www.w3.org/2001/XInclude" href="{}" parse="text"/>"#,
            trap.url("inc")
        ),
    );
    let reply = timeout(WITHIN, soap(gw.addr, &xinclude))
        .await
        .expect("answered");
    assert_client_fault(&reply, 500, "Number must hold text");
    say_name_still_works(gw.addr).await;

    // SOAP 1.2: the same refusal in 1.2, a Sender fault with HTTP 400.
    let soap12 = format!(
        r#"<?xml version="1.0"?>{laughs}<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><SayName xmlns="http://VATS"><Number>&lol9;</Number></SayName></env:Body></env:Envelope>"#
    );
    let reply = timeout(
        WITHIN,
        post(
            gw.addr,
            SOAP_PATH,
            &[
                "Content-Type: application/soap+xml; charset=utf-8",
                &format!("Authorization: {SEED_AUTH}"),
            ],
            soap12.as_bytes(),
        ),
    )
    .await
    .expect("answered");
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/soap+xml; charset=utf-8")
    );
    assert_eq!(
        element_text(&reply.body, "env:Value"),
        Some("env:Sender"),
        "{}",
        reply.body
    );
    assert!(reply.body.contains("DTDs"), "{}", reply.body);

    assert!(
        !trap.was_reached(),
        "the gateway fetched a URL from a request"
    );
    say_name_still_works(gw.addr).await;
}

// ------------------------------------------------------------ big SOAP bodies

#[tokio::test]
async fn a_10_mb_soap_body_gets_413_before_it_is_through_declared_or_chunked() {
    let gw = start("").await;
    let ten_mb = 10 * 1000 * 1000;
    let mut body = say_name_envelope("89235292926").into_bytes();
    body.resize(ten_mb, b' ');

    let declared = stream_request(
        gw.addr,
        soap_head(&format!("Content-Length: {ten_mb}\r\n")).as_bytes(),
        body.clone(),
    )
    .await;
    let framed = chunked(&body, 64 * 1024);
    let total = framed.len();
    let streamed = stream_request(
        gw.addr,
        soap_head("Transfer-Encoding: chunked\r\n").as_bytes(),
        framed,
    )
    .await;
    for (what, s, size) in [("declared", declared, ten_mb), ("chunked", streamed, total)] {
        assert_client_fault(
            &s.reply,
            413,
            &format!("request body is larger than {MAX_SOAP_BODY} bytes"),
        );
        assert!(
            s.answered_after < Duration::from_secs(3),
            "{what}: answered after {:?}",
            s.answered_after
        );
        assert!(s.closed, "{what}: the connection stayed open after the 413");
        assert!(
            s.sent < size,
            "{what}: the server took all {size} bytes before refusing"
        );
        say_name_still_works(gw.addr).await;
    }

    // Without credentials the 10 MB is not even looked at: 401 first.
    let unauthenticated = format!(
        "POST {SOAP_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nContent-Length: {ten_mb}\r\nConnection: close\r\n\r\n"
    );
    let s = stream_request(gw.addr, unauthenticated.as_bytes(), body).await;
    assert_client_fault(&s.reply, 401, "authentication required");
    assert!(s.reply.header("www-authenticate").is_some());
    assert!(s.closed, "the connection stayed open after the 401");
    say_name_still_works(gw.addr).await;
}

#[tokio::test]
async fn a_body_of_100000_nested_elements_is_refused_by_size_and_what_fits_by_depth_or_count() {
    let gw = start("").await;
    let wrap = |inner: &str| {
        format!(
            r#"<soap:Envelope xmlns:soap="{SOAP11_NS}"><soap:Body><SayName xmlns="http://VATS">{inner}<Number>89235292926</Number></SayName></soap:Body></soap:Envelope>"#
        )
    };
    // 100,000 nested elements are 700 KB: over the body limit, refused
    // before any XML is read, whether the length is declared or not.
    let nested = wrap(&format!(
        "{}{}",
        "<a>".repeat(100_000),
        "</a>".repeat(100_000)
    ))
    .into_bytes();
    let declared = stream_request(
        gw.addr,
        soap_head(&format!("Content-Length: {}\r\n", nested.len())).as_bytes(),
        nested.clone(),
    )
    .await;
    let streamed = stream_request(
        gw.addr,
        soap_head("Transfer-Encoding: chunked\r\n").as_bytes(),
        chunked(&nested, 16 * 1024),
    )
    .await;
    for s in [declared, streamed] {
        assert_client_fault(&s.reply, 413, "larger than");
        assert!(s.closed, "the connection stayed open after the 413");
        assert!(
            s.answered_after < Duration::from_secs(3),
            "{:?}",
            s.answered_after
        );
        say_name_still_works(gw.addr).await;
    }

    // As deep as 64 KiB allows, never closed: refused at depth 33.
    let unclosed = wrap(&"<a>".repeat(21_000));
    assert!(unclosed.len() < MAX_SOAP_BODY);
    let started = Instant::now();
    let reply = timeout(WITHIN, soap(gw.addr, &unclosed))
        .await
        .expect("answered");
    assert_client_fault(&reply, 500, "nested deeper than 32");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    say_name_still_works(gw.addr).await;

    // 10,000 flat elements in 40 KB: the element cap.
    let flat = wrap(&"<a/>".repeat(10_000));
    assert!(flat.len() < MAX_SOAP_BODY);
    let reply = timeout(WITHIN, soap(gw.addr, &flat))
        .await
        .expect("answered");
    assert_client_fault(&reply, 500, "more than 1000 XML elements");
    say_name_still_works(gw.addr).await;
}

// ------------------------------------------------------------- invalid UTF-8

#[tokio::test]
async fn invalid_utf8_anywhere_in_a_soap_request_gets_a_soap_answer() {
    let gw = start("").await;
    let good = say_name_envelope("89235292926");
    let in_number = |bad: &[u8]| {
        let mut body = good.as_bytes().to_vec();
        let at = good.find("8923").expect("number");
        body.splice(at..at, bad.iter().copied());
        body
    };
    let mut cut_at_the_end = good.as_bytes().to_vec();
    cut_at_the_end.push(0xd0); // the first byte of a two-byte sequence
    let mut in_a_name = good.as_bytes().to_vec();
    let at = good.find("SayName").expect("SayName") + 3;
    in_a_name.insert(at, 0xff);
    for (what, body) in [
        ("overlong '/'", in_number(&[0xc0, 0xaf])),
        ("UTF-16 surrogate", in_number(&[0xed, 0xa0, 0x80])),
        (
            "code point over U+10FFFF",
            in_number(&[0xf4, 0x90, 0x80, 0x80]),
        ),
        ("cut sequence at the end", cut_at_the_end),
        ("0xFF in an element name", in_a_name),
    ] {
        let reply = timeout(
            WITHIN,
            post(
                gw.addr,
                SOAP_PATH,
                &[
                    "Content-Type: text/xml; charset=utf-8",
                    &format!("Authorization: {SEED_AUTH}"),
                ],
                &body,
            ),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: not answered"));
        assert_client_fault(&reply, 500, "not valid UTF-8");
        say_name_still_works(gw.addr).await;
    }

    // Non-ASCII bytes in header values: a Content-Type that cannot be read is
    // not SOAP (415), credentials that cannot be read are not credentials (401).
    let body = good.as_bytes();
    let mut req = format!(
        "POST {SOAP_PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: {SEED_AUTH}\r\nContent-Length: {}\r\nConnection: close\r\nContent-Type: text/xml; charset=",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(b"\xff\xfe\r\n\r\n");
    req.extend_from_slice(body);
    let reply = timeout(WITHIN, raw(gw.addr, &req)).await.expect("answered");
    assert_client_fault(&reply, 415, "is not SOAP");
    say_name_still_works(gw.addr).await;

    let mut req = format!(
        "POST {SOAP_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\nAuthorization: Basic ",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(b"\xd0\x9f\xff==\r\n\r\n");
    req.extend_from_slice(body);
    let reply = timeout(WITHIN, raw(gw.addr, &req)).await.expect("answered");
    assert_client_fault(&reply, 401, "not valid HTTP Basic credentials");
    assert!(reply.header("www-authenticate").is_some());
    say_name_still_works(gw.addr).await;

    // In the request path the request is never read as SOAP: the HTTP layer
    // answers 400 and closes.
    let mut req = format!("POST {SOAP_PATH}").into_bytes();
    req.extend_from_slice(b"\xff\xfe HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    let got = answer_then_close(gw.addr, req).await;
    assert_eq!(
        status_of(&got),
        Some(400),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    say_name_still_works(gw.addr).await;
}

// ------------------------------------------------------------- header floods

/// Sends `request` while reading, and returns what the server sent before it
/// closed (bounded by [`WITHIN`]).
async fn answer_then_close(addr: SocketAddr, request: Vec<u8>) -> Vec<u8> {
    let (mut reader, mut writer) =
        reader_and_writer(TcpStream::connect(addr).await.expect("connect"));
    let sending = tokio::spawn(async move {
        for piece in request.chunks(16 * 1024) {
            if !matches!(timeout(WITHIN, writer.write_all(piece)).await, Ok(Ok(()))) {
                break;
            }
        }
    });
    let (closed, got) = closes_within(&mut reader, WITHIN).await;
    assert!(
        closed,
        "still open after {WITHIN:?}; got {:?}",
        String::from_utf8_lossy(&got)
    );
    sending.abort();
    got
}

#[tokio::test]
async fn header_floods_get_431_by_count_by_size_and_when_the_head_never_ends() {
    let gw = start("").await;
    let body = say_name_envelope("89235292926");
    // Exactly 64 header lines (Host, Content-Type, Authorization,
    // Content-Length, Connection and 59 more): still served.
    let with_headers = |extra: usize| {
        let mut head = format!(
            "POST {SOAP_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nAuthorization: {SEED_AUTH}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        for i in 0..extra {
            head.push_str(&format!("X-H-{i}: v\r\n"));
        }
        head.push_str("\r\n");
        head.push_str(&body);
        head.into_bytes()
    };
    let reply = timeout(WITHIN, raw(gw.addr, &with_headers(59)))
        .await
        .expect("answered");
    assert_eq!(reply.status, 200, "64 headers: {}", reply.body);

    let big_value = with_big_header(&body, 200 * 1024);
    let endless = {
        let mut head = format!("POST {SOAP_PATH} HTTP/1.1\r\nHost: x\r\n");
        let mut i = 0;
        while head.len() < 2 * 1024 * 1024 {
            head.push_str(&format!("X-Flood-{i}: {}\r\n", "y".repeat(100)));
            i += 1;
        }
        head.into_bytes() // and never the blank line
    };
    for (what, request) in [
        ("65 headers", with_headers(60)),
        ("one 200 KiB header", big_value),
        ("a head that never ends", endless),
    ] {
        let started = Instant::now();
        let got = answer_then_close(gw.addr, request).await;
        assert_eq!(
            status_of(&got),
            Some(431),
            "{what}: {:?}",
            String::from_utf8_lossy(&got)
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{what}: {:?}",
            started.elapsed()
        );
        say_name_still_works(gw.addr).await;
    }

    // A 70 KiB request line: refused before routing, with 414 or 431.
    let long_line = format!(
        "GET /{}?wsdl HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let got = answer_then_close(gw.addr, long_line.into_bytes()).await;
    assert!(
        matches!(status_of(&got), Some(414 | 431)),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    say_name_still_works(gw.addr).await;
}

/// A good SayName whose head carries one more header of `size` bytes.
fn with_big_header(body: &str, size: usize) -> Vec<u8> {
    let head = soap_head(&format!(
        "Content-Length: {}\r\nX-Big: {}\r\n",
        body.len(),
        "v".repeat(size)
    ));
    (head + body).into_bytes()
}

#[tokio::test]
async fn a_request_head_just_over_64_kib_gets_431() {
    let gw = start("").await;
    let body = say_name_envelope("89235292926");
    for kib in [65, 70, 100] {
        let got = answer_then_close(gw.addr, with_big_header(&body, kib * 1024)).await;
        assert_eq!(
            status_of(&got),
            Some(431),
            "a {kib} KiB header: {:?}",
            String::from_utf8_lossy(&got[..got.len().min(200)])
        );
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.contains("Fault") && text.contains("larger than 65536 bytes"),
            "a SOAP fault that says the limit: {text}"
        );
    }
    say_name_still_works(gw.addr).await;
}

// ------------------------------------------------------ slowloris, trickles

/// Writes `bytes` one at a time, every 100 ms, until the server closes the
/// connection or `limit` passes. Returns when it was closed (None: never)
/// and what the server sent.
async fn trickle(addr: SocketAddr, bytes: Vec<u8>, limit: Duration) -> (Option<Duration>, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let started = Instant::now();
    let (mut rd, mut wr) = stream.split();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let mut next = bytes.iter();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            read = rd.read(&mut buf) => match read {
                Ok(0) | Err(_) => return (Some(started.elapsed()), got),
                Ok(n) => got.extend_from_slice(&buf[..n]),
            },
            _ = tick.tick() => {
                if started.elapsed() > limit {
                    return (None, got);
                }
                if let Some(b) = next.next() {
                    if wr.write_all(&[*b]).await.is_err() {
                        return (Some(started.elapsed()), got);
                    }
                }
            }
        }
    }
}

#[tokio::test]
async fn heads_trickled_a_byte_every_100_ms_are_cut_at_the_header_timeout_while_say_name_is_served()
{
    let gw = start("server.header_read_timeout = \"1s\"").await;
    // An endless header line: sent whole it would take minutes.
    let head = format!(
        "POST {SOAP_PATH} HTTP/1.1\r\nHost: x\r\nX-Slow: {}",
        "a".repeat(10_000)
    )
    .into_bytes();
    let mut slow = JoinSet::new();
    for _ in 0..20 {
        let head = head.clone();
        let addr = gw.addr;
        slow.spawn(async move { trickle(addr, head, Duration::from_secs(5)).await });
    }
    // Served while twenty slow heads hold their connections.
    say_name_still_works(gw.addr).await;
    while let Some(done) = slow.join_next().await {
        let (closed, got) = done.expect("trickler");
        let after = closed.expect("a trickled head kept its connection for 5 s");
        assert!(
            after >= Duration::from_millis(900) && after < Duration::from_secs(3),
            "cut after {after:?}"
        );
        // hyper closes without a word, or says 408.
        assert!(
            got.is_empty() || status_of(&got) == Some(408),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }
    say_name_still_works(gw.addr).await;
}

#[tokio::test]
async fn bodies_trickled_a_byte_every_100_ms_get_408_at_the_body_timeout() {
    let gw = start("server.body_read_timeout = \"1s\"").await;
    let body = say_name_envelope("89235292926");
    for (what, head, rest) in [
        (
            "declared",
            soap_head(&format!("Content-Length: {}\r\n", body.len())),
            body.clone().into_bytes(),
        ),
        (
            "chunked",
            soap_head("Transfer-Encoding: chunked\r\n"),
            chunked(body.as_bytes(), 1),
        ),
    ] {
        let (mut reader, mut writer) =
            reader_and_writer(TcpStream::connect(gw.addr).await.expect("connect"));
        let started = Instant::now();
        writer.write_all(head.as_bytes()).await.expect("head");
        let trickling = tokio::spawn(async move {
            for b in rest {
                if writer.write_all(&[b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        let reply = timeout(WITHIN, read_reply(&mut reader))
            .await
            .unwrap_or_else(|_| panic!("{what}: no answer"));
        let after = started.elapsed();
        trickling.abort();
        assert_client_fault(&reply, 408, "did not arrive within 1 s");
        assert!(
            after >= Duration::from_millis(900) && after < Duration::from_secs(3),
            "{what}: answered after {after:?}"
        );
        say_name_still_works(gw.addr).await;
    }
}

// -------------------------------------------------------- idle connections

#[tokio::test]
async fn three_hundred_idle_connections_leave_say_name_served_and_are_cut_by_the_header_timeout() {
    // All from 127.0.0.1, each held past first_request_timeout's default:
    // the per-address limit and that timeout are tests/connection_limits.rs's.
    let gw = start(
        "server.header_read_timeout = \"3s\"\nserver.max_connections_per_address = 400\nserver.first_request_timeout = \"10s\"",
    )
    .await;
    let opened = Instant::now();
    let mut idle = Vec::new();
    // 100 that never send a byte.
    for _ in 0..100 {
        idle.push(TcpStream::connect(gw.addr).await.expect("connect"));
    }
    // 100 that send half a request line.
    for _ in 0..100 {
        let mut s = TcpStream::connect(gw.addr).await.expect("connect");
        s.write_all(b"POST /telephony/ws/V")
            .await
            .expect("half a line");
        idle.push(s);
    }
    // 100 that ask once, keep the connection alive, then say nothing more.
    let body = say_name_envelope("89235292926");
    let request = soap_head(&format!("Content-Length: {}\r\n", body.len()))
        .replace("Connection: close\r\n", "")
        + &body;
    for _ in 0..100 {
        let mut s = TcpStream::connect(gw.addr).await.expect("connect");
        s.write_all(request.as_bytes()).await.expect("request");
        let reply = timeout(WITHIN, read_reply(&mut s)).await.expect("answered");
        assert_eq!(reply.status, 200, "{}", reply.body);
        idle.push(s);
    }
    let metrics = gw.gateway().metrics();
    eventually(WITHIN, "300 connections open", || {
        metrics.http_connections.get() >= 300
    })
    .await;
    assert!(
        opened.elapsed() < Duration::from_secs(2),
        "opening took {:?}: too long to check them held",
        opened.elapsed()
    );

    // Held, and the PBX is served, promptly.
    let started = Instant::now();
    say_name_still_works(gw.addr).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(metrics.http_connections.get() >= 300);

    // Then every one of them is cut, without a word.
    let mut waiting = JoinSet::new();
    for mut s in idle {
        waiting.spawn(async move { closes_within(&mut s, Duration::from_secs(8)).await });
    }
    let mut cut = 0;
    while let Some(done) = waiting.join_next().await {
        let (closed, got) = done.expect("task");
        assert!(closed, "an idle connection stayed open");
        assert!(
            got.is_empty() || status_of(&got) == Some(408),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
        cut += 1;
    }
    assert_eq!(cut, 300);
    let all_cut = opened.elapsed();
    assert!(
        all_cut >= Duration::from_millis(2900) && all_cut < Duration::from_secs(8),
        "{all_cut:?}"
    );
    eventually(WITHIN, "the connection gauge back to 0", || {
        metrics.http_connections.get() == 0
    })
    .await;
    say_name_still_works(gw.addr).await;
}

// -------------------------------------------------------------- credentials

#[tokio::test]
async fn malformed_and_guessed_soap_credentials_get_401_faults_and_do_not_lock_out_the_pbx() {
    // The PBX's address is in soap.allow_from, which failed-auth throttling
    // never blocks: a hundred wrong passwords from it are a hundred 401s
    // (a guesser from another address is throttled: tests/auth_throttle.rs).
    let gw = start("soap.allow_from = [\"127.0.0.1\"]").await;
    let body = say_name_envelope("89235292926");
    let b64 = |s: &[u8]| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(s)
    };
    let long = format!("Authorization: Basic {}", "QUFB".repeat(15_000));
    let no_colon = format!("Authorization: Basic {}", b64(b"SOAP123"));
    let wrong_case = format!("Authorization: Basic {}", b64(b"soap:123"));
    let not_utf8 = format!("Authorization: Basic {}", b64(b"SOAP:\xff\xfe"));
    let malformed = "not valid HTTP Basic";
    let wrong = "wrong user name or password";
    for (what, auth, says) in [
        ("a bare scheme", vec!["Authorization: Basic"], malformed),
        ("60 KB of base64", vec![long.as_str()], malformed),
        (
            "not base64",
            vec!["Authorization: Basic !!!!****"],
            malformed,
        ),
        ("no colon", vec![no_colon.as_str()], malformed),
        ("another user's case", vec![wrong_case.as_str()], wrong),
        ("a password not in UTF-8", vec![not_utf8.as_str()], wrong),
        ("the push API's Bearer token", vec![BEARER], malformed),
        // Two Authorization headers are a 400, not a guess: tests/http_auth.rs.
    ] {
        let mut headers = vec!["Content-Type: text/xml"];
        headers.extend(auth);
        let reply = timeout(WITHIN, post(gw.addr, SOAP_PATH, &headers, body.as_bytes()))
            .await
            .unwrap_or_else(|_| panic!("{what}: not answered"));
        assert_client_fault(&reply, 401, says);
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Basic realm=\"cti-gateway\", charset=\"UTF-8\""),
            "{what}"
        );
        say_name_still_works(gw.addr).await;
    }

    // A hundred guesses in a row on one keep-alive connection: each refused
    // at once, and the right password still works on the same connection.
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    let started = Instant::now();
    for guess in 0..100 {
        let auth = b64(format!("SOAP:{guess}").as_bytes());
        let req = format!(
            "POST {SOAP_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nAuthorization: Basic {auth}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(req.as_bytes()).await.expect("send");
        let reply = timeout(WITHIN, read_reply(&mut stream))
            .await
            .expect("answered");
        assert_client_fault(&reply, 401, "wrong user name or password");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let req = format!(
        "POST {SOAP_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nAuthorization: {SEED_AUTH}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.expect("send");
    let reply = timeout(WITHIN, read_reply(&mut stream))
        .await
        .expect("answered");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(say_name_data(&reply).contains("Фэйковый чиж"));
    say_name_still_works(gw.addr).await;
}

/// A WebSocket upgrade request for `path_and_query`, as raw bytes.
fn upgrade_request(path_and_query: &str) -> Vec<u8> {
    format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    .into_bytes()
}

#[tokio::test]
async fn hostile_tokens_on_the_push_api_and_the_screens_are_refused_in_json() {
    let gw = start("").await;
    let one = br#"[{"id":"intruder","name":"Intruder","phones":["89120000001"]}]"#;

    // Push API: 401 with WWW-Authenticate: Bearer, in JSON.
    let long = format!("Authorization: Bearer {}", "t".repeat(60_000));
    let mut not_ascii = format!(
        "POST {PUSH_PATH} HTTP/1.1\r\nHost: x\r\n{JSON}\r\nContent-Length: {}\r\nConnection: close\r\nAuthorization: Bearer api-token-for-tests",
        one.len()
    )
    .into_bytes();
    not_ascii.extend_from_slice(b"\xff\r\n\r\n");
    not_ascii.extend_from_slice(one);
    let mut replies = Vec::new();
    for auth in [
        long.as_str(),
        "Authorization: Bearer api-token-for-tests extra",
        "Authorization: Bearerapi-token-for-tests",
        "Authorization: Bearer api-token-for-test",
    ] {
        let reply = timeout(
            WITHIN,
            request(gw.addr, "POST", PUSH_PATH, &[JSON, auth], one),
        )
        .await
        .expect("answered");
        replies.push((auth.chars().take(60).collect::<String>(), reply));
    }
    replies.push((
        "a token with a 0xFF byte".into(),
        timeout(WITHIN, raw(gw.addr, &not_ascii))
            .await
            .expect("answered"),
    ));
    for (what, reply) in &replies {
        assert_eq!(reply.status, 401, "{what}: {}", reply.body);
        json_error(reply, 401);
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"), "{what}");
    }
    say_name_still_works(gw.addr).await;
    assert_eq!(counterparties(gw.addr).await, 3);

    // Screens: no handshake, a JSON error saying why.
    let long_token = format!("/operator/ws?token={}", "t".repeat(60_000));
    let twice = format!("/operator/ws?token={OPERATOR_TOKEN}&token=x");
    let nul = format!("/operator/ws?token={OPERATOR_TOKEN}%00");
    let prefix = format!(
        "/operator/ws?token={}",
        &OPERATOR_TOKEN[..OPERATOR_TOKEN.len() - 1]
    );
    for (path, status, says) in [
        (long_token.as_str(), 400, "longer than"),
        ("/operator/ws?token=%FF%FE", 400, "percent-encoded UTF-8"),
        ("/operator/ws?token=%zz", 400, "percent-encoded UTF-8"),
        (twice.as_str(), 400, "more than once"),
        (nul.as_str(), 401, "unknown token"),
        (prefix.as_str(), 401, "unknown token"),
    ] {
        let reply = timeout(WITHIN, raw(gw.addr, &upgrade_request(path)))
            .await
            .expect("answered");
        let v = json_error(&reply, status);
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains(says)),
            "{}: {v}",
            &path[..path.len().min(60)]
        );
        assert!(reply.header("sec-websocket-accept").is_none());
        // The long-poll checks the same way.
        let poll = path.replace("/operator/ws", "/operator/events") + "&wait=0";
        let reply = timeout(WITHIN, get(gw.addr, &poll))
            .await
            .expect("answered");
        json_error(&reply, status);
        say_name_still_works(gw.addr).await;
    }
    assert_eq!(gw.gateway().hub().subscriber_count(OPERATOR_KEY), Some(0));
    say_name_still_works(gw.addr).await;
}

// --------------------------------------------------------------- WebSocket

async fn screen(addr: SocketAddr) -> WebSocketStream<TcpStream> {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let url = format!("ws://{addr}/operator/ws?token={OPERATOR_TOKEN}");
    let (ws, response) = timeout(WITHIN, tokio_tungstenite::client_async(url, stream))
        .await
        .expect("handshake in time")
        .expect("handshake accepted");
    assert_eq!(response.status(), 101);
    ws
}

/// A masked client frame: `first` is the FIN bit and the opcode.
fn client_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = frame_header(first, payload.len() as u64);
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    frame
}

/// A masked frame's header (mask included) declaring `len` bytes of payload.
fn frame_header(first: u8, len: u64) -> Vec<u8> {
    let mut header = vec![first];
    match len {
        0..=125 => header.push(0x80 | len as u8),
        126..=0xffff => {
            header.push(0x80 | 126);
            header.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            header.push(0x80 | 127);
            header.extend_from_slice(&len.to_be_bytes());
        }
    }
    header.extend_from_slice(&[0x37, 0xfa, 0x21, 0x3d]);
    header
}

const FIN: u8 = 0x80;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const PING: u8 = 0x9;

/// What the server said after `bytes` were written under the WebSocket.
#[derive(Debug)]
struct Ending {
    /// The close code, if a close frame came.
    code: Option<CloseCode>,
    pongs: usize,
    after: Duration,
}

async fn write_raw_then_read_close(ws: &mut WebSocketStream<TcpStream>, bytes: &[u8]) -> Ending {
    let started = Instant::now();
    // The server may stop reading once it has decided: a write that cannot
    // finish is not the test's business.
    let _ = timeout(Duration::from_secs(2), ws.get_mut().write_all(bytes)).await;
    let deadline = started + WITHIN;
    let mut pongs = 0;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => {
                return Ending {
                    code: None,
                    pongs,
                    after: started.elapsed(),
                }
            }
            Ok(Some(Ok(WsMessage::Close(frame)))) => {
                return Ending {
                    code: frame.map(|f| f.code),
                    pongs,
                    after: started.elapsed(),
                }
            }
            Ok(Some(Ok(WsMessage::Pong(_)))) => pongs += 1,
            Ok(Some(Ok(_))) => {}
            Ok(None) | Ok(Some(Err(_))) => {
                return Ending {
                    code: None,
                    pongs,
                    after: started.elapsed(),
                }
            }
        }
    }
}

#[tokio::test]
async fn websocket_frames_over_the_limit_are_closed_without_waiting_for_their_payload() {
    let gw = start("").await;
    let mut fragmented = client_frame(TEXT, &[b'a'; 1000]);
    for _ in 0..5 {
        fragmented.extend(client_frame(CONTINUATION, &[b'a'; 1000]));
    }
    fragmented.extend(client_frame(FIN | CONTINUATION, b"a"));
    for (what, bytes, code) in [
        (
            "a header declaring 2^40 bytes, no payload",
            frame_header(FIN | TEXT, 1 << 40),
            CloseCode::Size,
        ),
        (
            "a header declaring 2^63-1 bytes, no payload",
            frame_header(FIN | BINARY, i64::MAX as u64),
            CloseCode::Size,
        ),
        (
            "a 4097-byte binary frame",
            client_frame(FIN | BINARY, &[0u8; 4097]),
            CloseCode::Size,
        ),
        (
            "a 6 KB message in 1 KB fragments",
            fragmented,
            CloseCode::Size,
        ),
        (
            "a 126-byte ping",
            client_frame(FIN | PING, &[0u8; 126]),
            CloseCode::Protocol,
        ),
    ] {
        let mut ws = screen(gw.addr).await;
        let ending = write_raw_then_read_close(&mut ws, &bytes).await;
        assert_eq!(ending.code, Some(code), "{what}: {ending:?}");
        assert!(ending.after < Duration::from_secs(2), "{what}: {ending:?}");
        say_name_still_works(gw.addr).await;
    }
    let hub = gw.gateway().hub();
    eventually(WITHIN, "every screen unregistered", || {
        hub.subscriber_count(OPERATOR_KEY) == Some(0)
    })
    .await;
}

#[tokio::test]
async fn websocket_floods_of_pings_or_empty_frames_are_closed_1008_with_pongs_bounded() {
    let gw = start("").await;
    let pings: Vec<u8> = (0..1000)
        .flat_map(|_| client_frame(FIN | PING, &[0x5a; 125]))
        .collect();
    let empties: Vec<u8> = (0..10_000)
        .flat_map(|_| client_frame(FIN | BINARY, b""))
        .collect();
    for (what, bytes) in [("1,000 pings", pings), ("10,000 empty frames", empties)] {
        let mut ws = screen(gw.addr).await;
        let ending = write_raw_then_read_close(&mut ws, &bytes).await;
        assert_eq!(ending.code, Some(CloseCode::Policy), "{what}: {ending:?}");
        assert!(ending.after < Duration::from_secs(3), "{what}: {ending:?}");
        // One pong at most per frame read before the flood was called.
        assert!(ending.pongs <= 17, "{what}: {ending:?}");
        say_name_still_works(gw.addr).await;
    }
    let hub = gw.gateway().hub();
    eventually(WITHIN, "every screen unregistered", || {
        hub.subscriber_count(OPERATOR_KEY) == Some(0)
    })
    .await;
}

#[tokio::test]
async fn an_endless_fragmented_message_of_empty_frames_is_a_flood() {
    let gw = start("").await;
    let mut bytes = client_frame(TEXT, b"a");
    for _ in 0..100_000 {
        bytes.extend(client_frame(CONTINUATION, b""));
    }
    let mut ws = screen(gw.addr).await;
    let ending = write_raw_then_read_close(&mut ws, &bytes).await;
    assert_eq!(ending.code, Some(CloseCode::Policy), "{ending:?}");
    say_name_still_works(gw.addr).await;
}

// ----------------------------------------------------------------- push API

async fn push(addr: SocketAddr, body: &[u8]) -> Reply {
    timeout(
        WITHIN,
        request(addr, "POST", PUSH_PATH, &[JSON, BEARER], body),
    )
    .await
    .expect("push answered")
}

#[tokio::test]
async fn push_arrays_huge_in_count_but_small_in_bytes_get_413_before_any_record_is_read() {
    let gw = start("").await;
    let array = |item: &str, n: usize| format!("[{}]", vec![item; n].join(",")).into_bytes();
    let empties = array("{}", 10_001);
    let zeros = array("0", 1_000_000);
    let started = Instant::now();
    for (what, reply) in [
        ("10,001 empty objects", push(gw.addr, &empties).await),
        ("a million zeros", push(gw.addr, &zeros).await),
        (
            "10,001 empty objects, chunked",
            stream_request(
                gw.addr,
                push_head("Transfer-Encoding: chunked\r\n").as_bytes(),
                chunked(&empties, 1000),
            )
            .await
            .reply,
        ),
    ] {
        let v = json_error(&reply, 413);
        assert_eq!(v["limit"], 10_000, "{what}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains("10000")),
            "{what}: {v}"
        );
        say_name_still_works(gw.addr).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(counterparties(gw.addr).await, 3);
}

#[tokio::test]
async fn a_9_mb_push_body_sent_in_full_gets_413_and_one_of_8_mib_is_read_off_the_request_task() {
    let gw = start("").await;
    let nine_mb = 9 * 1000 * 1000;
    let mut body = b"[".to_vec();
    body.resize(nine_mb - 1, b' ');
    body.push(b']');
    let s = stream_request(
        gw.addr,
        push_head(&format!("Content-Length: {nine_mb}\r\n")).as_bytes(),
        body,
    )
    .await;
    let v = json_error(&s.reply, 413);
    assert_eq!(v["limit_bytes"], MAX_PUSH_BODY, "{v}");
    assert!(
        s.answered_after < Duration::from_secs(3),
        "{:?}",
        s.answered_after
    );
    assert!(s.closed, "the connection stayed open after the 413");
    assert!(s.sent < nine_mb, "the server took all 9 MB before refusing");
    say_name_still_works(gw.addr).await;

    // Without the token the 9 MB is not even looked at: 401 first.
    let s = stream_request(
        gw.addr,
        push_head(&format!("Content-Length: {nine_mb}\r\n"))
            .replace(&format!("{BEARER}\r\n"), "")
            .as_bytes(),
        vec![b' '; nine_mb],
    )
    .await;
    json_error(&s.reply, 401);
    assert_eq!(s.reply.header("www-authenticate"), Some("Bearer"));
    assert!(s.closed, "the connection stayed open after the 401");
    say_name_still_works(gw.addr).await;

    // At the limit: a JSON array of 10,000 strings of 830 bytes, read whole
    // (off the request task) and refused at record 0 in bounded time; a
    // SayName sent meanwhile is answered.
    let item = format!("\"{}\"", "x".repeat(830));
    let mut body = format!("[{}]", vec![item.as_str(); 10_000].join(",")).into_bytes();
    assert!(body.len() <= MAX_PUSH_BODY, "{}", body.len());
    body.resize(MAX_PUSH_BODY, b' ');
    let addr = gw.addr;
    let pushing = tokio::spawn(async move {
        let started = Instant::now();
        (push(addr, &body).await, started.elapsed())
    });
    say_name_still_works(gw.addr).await;
    let (reply, took) = pushing.await.expect("push task");
    let v = json_error(&reply, 422);
    assert_eq!(v["record"], 0, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("JSON object")),
        "{v}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(counterparties(gw.addr).await, 3);
    say_name_still_works(gw.addr).await;
}

#[tokio::test]
async fn push_bodies_nested_10000_arrays_deep_get_400_or_422_quickly_and_change_nothing() {
    let gw = start("").await;
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("10,000 arrays deep", deep(10_000).into_bytes(), 422),
        ("1,000,000 arrays deep", deep(1_000_000).into_bytes(), 422),
        (
            "10,000 arrays opened, none closed",
            "[".repeat(10_000).into_bytes(),
            400,
        ),
        (
            "a record's phones 10,000 arrays deep",
            format!(r#"[{{"id":"n","name":"n","phones":{}}}]"#, deep(10_000)).into_bytes(),
            422,
        ),
        (
            "a record's field 10,000 objects deep",
            format!(
                r#"[{{"id":"n","name":"n","address":{}1{}}}]"#,
                r#"{"a":"#.repeat(10_000),
                "}".repeat(10_000)
            )
            .into_bytes(),
            422,
        ),
    ];
    for (what, body, status) in cases {
        let started = Instant::now();
        let reply = push(gw.addr, &body).await;
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{what}: {:?}",
            started.elapsed()
        );
        let v = json_error(&reply, status);
        assert!(
            v["error"]
                .as_str()
                .is_some_and(|e| e.contains("nothing was changed")),
            "{what}: {v}"
        );
        if status == 400 {
            assert!(v["line"].is_u64() && v["column"].is_u64(), "{what}: {v}");
        } else {
            assert_eq!(v["record"], 0, "{what}: {v}");
        }
        say_name_still_works(gw.addr).await;
    }
    assert_eq!(counterparties(gw.addr).await, 3);
}

#[tokio::test]
async fn invalid_utf8_in_push_json_gets_400_naming_line_and_column() {
    let gw = start("").await;
    let good = r#"{"id":"ok","name":"Годный","phones":["89120000001"]}"#;
    let with = |bad: &[u8]| {
        // Line 2, the bad bytes at column 19 (bytes, from 1).
        let mut body = format!("[{good},\n{{\"id\":\"u\",\"name\":\"").into_bytes();
        body.extend_from_slice(bad);
        body.extend_from_slice(b"\"}]");
        body
    };
    for (what, body) in [
        ("0xFF", with(b"\xff")),
        ("an overlong '\"'", with(b"\xc0\xa2")),
        ("a UTF-16 surrogate", with(b"\xed\xa0\x80")),
        ("a cut sequence", with(b"\xd0")),
    ] {
        let reply = push(gw.addr, &body).await;
        let v = json_error(&reply, 400);
        assert_eq!(
            (v["line"].as_u64(), v["column"].as_u64()),
            (Some(2), Some(19)),
            "{what}: {v}"
        );
        assert!(
            v["error"]
                .as_str()
                .is_some_and(|e| e.contains("not valid UTF-8")),
            "{what}: {v}"
        );
        say_name_still_works(gw.addr).await;
    }
    // UTF-16 with a byte-order mark is not UTF-8 either.
    let utf16: Vec<u8> = "\u{feff}[]"
        .encode_utf16()
        .flat_map(|u| u.to_le_bytes())
        .collect();
    json_error(&push(gw.addr, &utf16).await, 400);
    say_name_still_works(gw.addr).await;
    // A lone surrogate written as an escape is valid UTF-8 but no string:
    // the record is refused, naming the field.
    let reply = push(gw.addr, br#"[{"id":"s","name":"\udc00"}]"#).await;
    let v = json_error(&reply, 422);
    assert_eq!(
        (v["record"].as_u64(), v["field"].as_str()),
        (Some(0), Some("name")),
        "{v}"
    );
    assert_eq!(counterparties(gw.addr).await, 3);
    let unknown = say_name_data(&soap(gw.addr, &say_name_envelope("89120000001")).await);
    assert!(
        unknown.contains("<title></title>"),
        "a refused push answers: {unknown}"
    );
    say_name_still_works(gw.addr).await;
}
