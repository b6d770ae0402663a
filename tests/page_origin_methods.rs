//! The operator page contained (issue 15, item 7), over real sockets: the
//! page's policy allows nothing inline and its script and styles are files
//! of their own; screens opened by pages of other origins are refused when
//! `popup.allowed_origins` is set; `HEAD` on the read-only endpoints, 405
//! with `Allow` for other methods; a compressed request body is refused with
//! 415 in the path's protocol.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use support::*;

const API_TOKEN: &str = "api-token-for-tests";
const CRM: &str = "https://crm.example.ru";
const ORIGINS: &str = "[popup]\nallowed_origins = [\"https://crm.example.ru\"]\n";

/// The value of `attribute="..."` on the page's tag that has it.
fn attribute<'a>(html: &'a str, attribute: &str) -> &'a str {
    let start = html
        .find(&format!("{attribute}=\""))
        .unwrap_or_else(|| panic!("no {attribute}= in the page"))
        + attribute.len()
        + 2;
    let len = html[start..].find('"').expect("closing quote");
    &html[start..start + len]
}

#[tokio::test]
async fn the_page_allows_nothing_inline_and_serves_its_files() {
    let gw = start("").await;
    let page = get(gw.addr, "/operator").await;
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{directive} not in {csp}");
    }
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert_eq!(page.header("cache-control"), Some("no-store"));
    assert!(!page.body.contains("<script>") && !page.body.contains("<style"));
    assert!(!page.body.contains(" style=") && !page.body.contains(" onclick="));

    let script = attribute(&page.body, "src");
    let style = attribute(&page.body, "href");
    assert!(
        script.starts_with("/operator/app.") && script.ends_with(".js"),
        "{script}"
    );
    assert!(
        style.starts_with("/operator/app.") && style.ends_with(".css"),
        "{style}"
    );
    for (path, content_type, sample) in [
        (script, "text/javascript; charset=utf-8", "new WebSocket("),
        (style, "text/css; charset=utf-8", "#status"),
    ] {
        let file = get(gw.addr, path).await;
        assert_eq!(file.status, 200, "{path}: {}", file.body);
        assert_eq!(file.header("content-type"), Some(content_type), "{path}");
        assert_eq!(
            file.header("cache-control"),
            Some("public, max-age=31536000, immutable"),
            "{path}"
        );
        assert_eq!(file.header("x-content-type-options"), Some("nosniff"));
        assert!(file.body.contains(sample), "{path}");
    }
    // Only the current files: another name is no file.
    assert_eq!(get(gw.addr, "/operator/app.js").await.status, 404);
    assert_eq!(
        get(gw.addr, "/operator/app.0000000000000000.js")
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn the_pages_files_fall_under_popup_allow_from() {
    let gw = start("[popup]\nallow_from = [\"127.0.0.1\"]\n").await;
    let page = get(gw.addr, "/operator").await;
    let script = attribute(&page.body, "src").to_owned();
    let reply = request_from("127.0.0.1", gw.addr, "GET", &script, &[], b"").await;
    assert_eq!(reply.status, 200);
    let reply = request_from("127.0.0.2", gw.addr, "GET", &script, &[], b"").await;
    assert_eq!(reply.status, 403, "{}", reply.body);
}

/// The WebSocket handshake's status with `origin` (none: no header).
async fn websocket_status(addr: SocketAddr, origin: Option<&str>) -> u16 {
    let mut request = format!("ws://{addr}/operator/ws?token={OPERATOR_TOKEN}")
        .into_client_request()
        .expect("request");
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("Origin", origin.parse().expect("header value"));
    }
    let stream = TcpStream::connect(addr).await.expect("connect");
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async(request, stream),
    )
    .await
    .expect("answer within 5 s");
    match answer {
        Ok((_, response)) => response.status().as_u16(),
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("handshake: {e}"),
    }
}

/// `cti_http_refused_total{endpoint,reason="origin"}`.
async fn origin_refusals(addr: SocketAddr, endpoint: &str) -> u64 {
    let metrics = get(addr, "/metrics").await.body;
    let prefix = format!("cti_http_refused_total{{endpoint=\"{endpoint}\",reason=\"origin\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.parse().expect("a count"))
}

#[tokio::test]
async fn a_screen_from_a_foreign_origin_is_refused_when_origins_are_set() {
    let gw = start(ORIGINS).await;
    let own = format!("http://{}", gw.addr);
    assert_eq!(websocket_status(gw.addr, Some(CRM)).await, 101);
    // 1C's client sends no Origin.
    assert_eq!(websocket_status(gw.addr, None).await, 101);
    // The gateway's own page.
    assert_eq!(websocket_status(gw.addr, Some(&own)).await, 101);
    assert_eq!(
        websocket_status(gw.addr, Some("https://evil.example")).await,
        403
    );
    assert_eq!(websocket_status(gw.addr, Some("null")).await, 403);
    // The CRM over plain http is another origin.
    assert_eq!(
        websocket_status(gw.addr, Some("http://crm.example.ru")).await,
        403
    );
    assert_eq!(origin_refusals(gw.addr, "operator_ws").await, 3);

    // The long-poll the same way.
    let events = format!("/operator/events?token={OPERATOR_TOKEN}&wait=0");
    let from = |origin: &'static str| format!("Origin: {origin}");
    let reply = request(
        gw.addr,
        "GET",
        &events,
        &[&from("https://evil.example")],
        b"",
    )
    .await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(
        reply.body.contains("popup.allowed_origins"),
        "{}",
        reply.body
    );
    assert!(reply
        .header("content-type")
        .is_some_and(|v| v.contains("json")));
    let reply = request(gw.addr, "GET", &events, &[&from(CRM)], b"").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = request(gw.addr, "GET", &events, &[], b"").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(origin_refusals(gw.addr, "operator_events").await, 1);
}

#[tokio::test]
async fn without_allowed_origins_any_origin_may_open_a_screen() {
    let gw = start("").await;
    assert_eq!(
        websocket_status(gw.addr, Some("https://evil.example")).await,
        101
    );
}

/// A `HEAD` request's status line and headers, read until the server
/// closes (a `HEAD` answer has a `Content-Length` but no body).
async fn head(addr: SocketAddr, path: &str) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let req = format!("HEAD {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("send");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf))
        .await
        .expect("closed within 10 s")
        .expect("read");
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole head");
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers, buf[end + 4..].to_vec())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn head_answers_as_get_without_the_body() {
    let gw = start("").await;
    let page = get(gw.addr, "/operator").await;
    let script = attribute(&page.body, "src").to_owned();
    // The WSDL too: a monitor checking the PBX's endpoint sends HEAD.
    let wsdl = format!("{SOAP_PATH}?wsdl");
    for path in [
        "/operator",
        "/healthz",
        "/readyz",
        "/metrics",
        &script,
        &wsdl,
    ] {
        let got = get(gw.addr, path).await;
        let (status, headers, body) = head(gw.addr, path).await;
        assert_eq!(status, got.status, "HEAD {path}");
        assert!(body.is_empty(), "HEAD {path} sent a body");
        assert_eq!(
            header(&headers, "content-type"),
            got.header("content-type"),
            "HEAD {path}"
        );
        let length: usize = header(&headers, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("HEAD {path}: no Content-Length: {headers:?}"));
        // /metrics counts this very request: its length may move a little.
        if path != "/metrics" {
            assert_eq!(length, got.body.len(), "HEAD {path}");
        } else {
            assert!(length > 0);
        }
    }
    assert_eq!(
        header(
            &head(gw.addr, "/operator").await.1,
            "content-security-policy"
        ),
        page.header("content-security-policy")
    );
}

#[tokio::test]
async fn other_methods_on_read_only_endpoints_are_405_with_allow() {
    let gw = start("").await;
    let bearer = format!("Authorization: Bearer {API_TOKEN}");
    for (method, path, allow) in [
        ("POST", "/operator", "GET, HEAD"),
        ("PUT", "/healthz", "GET, HEAD"),
        ("DELETE", "/readyz", "GET, HEAD"),
        ("POST", "/metrics", "GET, HEAD"),
        ("POST", "/operator/ws", "GET"),
        ("HEAD", "/operator/ws", "GET"),
        ("POST", "/operator/events", "GET"),
        ("POST", "/api/v1/calls", "GET"),
    ] {
        let reply = if method == "HEAD" {
            let (status, headers, _) = head(gw.addr, path).await;
            assert_eq!(status, 405, "{method} {path}");
            assert_eq!(header(&headers, "allow"), Some(allow), "{method} {path}");
            continue;
        } else {
            request(gw.addr, method, path, &[&bearer], b"").await
        };
        assert_eq!(reply.status, 405, "{method} {path}: {}", reply.body);
        assert_eq!(reply.header("allow"), Some(allow), "{method} {path}");
        assert!(
            reply.body.contains("not allowed"),
            "{method} {path}: {}",
            reply.body
        );
    }
    // Paths that are no endpoint stay 404 whatever the method.
    assert_eq!(
        request(gw.addr, "POST", "/nothing", &[], b"").await.status,
        404
    );
}

/// A small gzip member (of `[]`), as a client that compresses would send it.
const GZIP_BODY: &[u8] = &[
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x8b, 0x8e, 0x05, 0x00, 0x29, 0xbb,
    0x4c, 0x0d, 0x02, 0x00, 0x00, 0x00,
];

#[tokio::test]
async fn a_compressed_body_is_refused_with_415_in_the_paths_protocol() {
    let gw = start("").await;
    // SOAP: a fault, with the codings the endpoint takes.
    let reply = post(
        gw.addr,
        SOAP_PATH,
        &[
            "Content-Type: text/xml; charset=utf-8",
            &format!("Authorization: {SEED_AUTH}"),
            "Content-Encoding: gzip",
        ],
        GZIP_BODY,
    )
    .await;
    assert_eq!(reply.status, 415, "{}", reply.body);
    assert!(
        reply.body.contains("Fault") && reply.body.contains("Content-Encoding"),
        "{}",
        reply.body
    );
    assert!(reply
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/xml")));
    assert_eq!(reply.header("accept-encoding"), Some("identity"));

    // The push API: JSON, nothing changed.
    let bearer = format!("Authorization: Bearer {API_TOKEN}");
    let reply = post(
        gw.addr,
        "/api/v1/counterparties",
        &[
            &bearer,
            "Content-Type: application/json",
            "Content-Encoding: gzip",
        ],
        GZIP_BODY,
    )
    .await;
    assert_eq!(reply.status, 415, "{}", reply.body);
    let body: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("Content-Encoding")),
        "{body}"
    );
    assert_eq!(reply.header("accept-encoding"), Some("identity"));

    // `identity` is no coding: SayName is answered.
    let body = say_name_envelope("89235292926");
    let reply = post(
        gw.addr,
        SOAP_PATH,
        &[
            "Content-Type: text/xml; charset=utf-8",
            &format!("Authorization: {SEED_AUTH}"),
            "Content-Encoding: identity",
        ],
        body.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[tokio::test]
async fn operator_me_names_the_tokens_operator_with_the_screens_refusals() {
    let gw = start(ORIGINS).await;
    let reply = get(gw.addr, &format!("/operator/me?token={OPERATOR_TOKEN}")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let me: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON");
    assert_eq!(
        me,
        serde_json::json!({ "name": "Иванова", "key": OPERATOR_KEY })
    );
    // The bearer header too.
    let bearer = format!("Authorization: Bearer {OTHER_TOKEN}");
    let reply = request(gw.addr, "GET", "/operator/me", &[&bearer], b"").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains("Петров"), "{}", reply.body);

    // The screens' refusals: 401 with Bearer, 403 from a foreign origin,
    // 405 for another method.
    for path in ["/operator/me", "/operator/me?token=nope"] {
        let reply = get(gw.addr, path).await;
        assert_eq!(reply.status, 401, "{path}: {}", reply.body);
        assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        assert!(!reply.body.contains("Иванова"), "{}", reply.body);
    }
    let me = format!("/operator/me?token={OPERATOR_TOKEN}");
    let reply = request(gw.addr, "GET", &me, &["Origin: https://evil.example"], b"").await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert_eq!(origin_refusals(gw.addr, "operator_me").await, 1);
    let reply = request(gw.addr, "POST", &me, &[], b"").await;
    assert_eq!(reply.status, 405, "{}", reply.body);
}
