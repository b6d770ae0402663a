//! Failed-auth throttling per client address, over real sockets: a client
//! bound to 127.0.0.2 guesses, 127.0.0.1 keeps being answered.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;

const API_TOKEN: &str = "api-token-for-tests";
const GUESSER: &str = "127.0.0.2";
const LOCAL: &str = "127.0.0.1";
/// `SOAP:124`: the seed's user with a wrong password.
const WRONG_AUTH: &str = "Basic U09BUDoxMjQ=";

async fn say_name_from(source: &str, addr: SocketAddr, auth: &str) -> Reply {
    let body = say_name_envelope("89235292926");
    let headers = [
        "Content-Type: text/xml; charset=utf-8".to_owned(),
        format!("Authorization: {auth}"),
    ];
    let headers = [headers[0].as_str(), headers[1].as_str()];
    request_from(source, addr, "POST", SOAP_PATH, &headers, body.as_bytes()).await
}

async fn calls_from(source: &str, addr: SocketAddr, token: &str) -> Reply {
    let bearer = format!("Authorization: Bearer {token}");
    request_from(source, addr, "GET", "/api/v1/calls", &[&bearer], b"").await
}

#[tokio::test]
async fn a_guesser_is_throttled_and_nobody_else_notices() {
    let gw = start("").await;
    for i in 1..=20 {
        let reply = say_name_from(GUESSER, gw.addr, WRONG_AUTH).await;
        assert_eq!(reply.status, 401, "failure {i}: {}", reply.body);
    }
    // The 21st failure within the minute: 429, in SOAP, with Retry-After.
    let reply = say_name_from(GUESSER, gw.addr, WRONG_AUTH).await;
    assert_eq!(reply.status, 429, "{}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("text/xml; charset=utf-8")
    );
    assert_eq!(element_text(&reply.body, "faultcode"), Some("soap:Client"));
    let retry: u64 = reply
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After in seconds");
    assert!((290..=300).contains(&retry), "{retry}");

    // From then on every authenticated endpoint says 429 to that address,
    // right credentials or not; the API in JSON.
    let reply = say_name_from(GUESSER, gw.addr, SEED_AUTH).await;
    assert_eq!(reply.status, 429, "{}", reply.body);
    let reply = calls_from(GUESSER, gw.addr, API_TOKEN).await;
    assert_eq!(reply.status, 429, "{}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert!(reply.header("retry-after").is_some());
    // Endpoints without credentials still answer it.
    let reply = request_from(GUESSER, gw.addr, "GET", "/healthz", &[], b"").await;
    assert_eq!(reply.status, 200);

    // Another address is answered, and its own failures are its own.
    let reply = say_name_from(LOCAL, gw.addr, SEED_AUTH).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = say_name_from(LOCAL, gw.addr, WRONG_AUTH).await;
    assert_eq!(reply.status, 401);
    assert_eq!(calls_from(LOCAL, gw.addr, API_TOKEN).await.status, 200);

    let metrics = get(gw.addr, "/metrics").await.body;
    for line in [
        r#"cti_http_refused_total{endpoint="soap",reason="auth_throttled"} 2"#,
        r#"cti_http_refused_total{endpoint="api_calls",reason="auth_throttled"} 1"#,
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
}

#[tokio::test]
async fn successful_requests_never_count() {
    let gw = start("").await;
    for _ in 0..30 {
        let reply = say_name_from(GUESSER, gw.addr, SEED_AUTH).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    for _ in 0..20 {
        assert_eq!(
            say_name_from(GUESSER, gw.addr, WRONG_AUTH).await.status,
            401
        );
    }
    assert_eq!(say_name_from(GUESSER, gw.addr, SEED_AUTH).await.status, 200);
}

#[tokio::test]
async fn the_pbx_in_soap_allow_from_is_never_throttled() {
    // The PBX and a guesser behind one NAT address: the PBX's stale
    // password after a rotation never locks it out.
    let gw = start("soap.allow_from = [\"127.0.0.2\", \"127.0.0.1\"]\n").await;
    for _ in 0..30 {
        assert_eq!(
            say_name_from(GUESSER, gw.addr, WRONG_AUTH).await.status,
            401
        );
    }
    let reply = say_name_from(GUESSER, gw.addr, SEED_AUTH).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(calls_from(GUESSER, gw.addr, API_TOKEN).await.status, 200);
}

#[tokio::test]
async fn the_block_ends_after_auth_block() {
    let gw = start("server.auth_failures_per_minute = 3\nserver.auth_block = \"1s\"\n").await;
    for _ in 0..3 {
        assert_eq!(
            calls_from(GUESSER, gw.addr, "wrong-token").await.status,
            401
        );
    }
    let reply = calls_from(GUESSER, gw.addr, "wrong-token").await;
    assert_eq!(reply.status, 429, "{}", reply.body);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert_eq!(calls_from(GUESSER, gw.addr, API_TOKEN).await.status, 429);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(calls_from(GUESSER, gw.addr, API_TOKEN).await.status, 200);
    // It starts afresh: three more failures are within the limit again.
    for _ in 0..3 {
        assert_eq!(
            calls_from(GUESSER, gw.addr, "wrong-token").await.status,
            401
        );
    }
}
