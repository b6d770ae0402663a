//! Address allow-lists per endpoint group and the behind-a-proxy rules,
//! over real sockets: a client bound to 127.0.0.2 is "another address"
//! (Linux routes all of 127.0.0.0/8 to this machine).

mod support;

use std::net::SocketAddr;

use support::*;

const API_TOKEN: &str = "api-token-for-tests";
const OTHER: &str = "127.0.0.2";
const LOCAL: &str = "127.0.0.1";

fn soap_headers() -> [String; 2] {
    [
        "Content-Type: text/xml; charset=utf-8".to_owned(),
        format!("Authorization: {SEED_AUTH}"),
    ]
}

async fn say_name_from(source: &str, addr: SocketAddr, extra: &[&str]) -> Reply {
    let h = soap_headers();
    let mut headers = vec![h[0].as_str(), h[1].as_str()];
    headers.extend_from_slice(extra);
    let body = say_name_envelope("89235292926");
    request_from(source, addr, "POST", SOAP_PATH, &headers, body.as_bytes()).await
}

async fn get_from(source: &str, addr: SocketAddr, path: &str, headers: &[&str]) -> Reply {
    request_from(source, addr, "GET", path, headers, b"").await
}

async fn metrics_text(addr: SocketAddr) -> String {
    let reply = get(addr, "/metrics").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

const EVERY_GROUP_LOCAL_ONLY: &str = r#"
soap.allow_from = ["127.0.0.1"]
api.allow_from = ["127.0.0.1/32"]
[popup]
allow_from = ["127.0.0.1"]
[metrics]
allow_from = ["::1", "127.0.0.0/31"]
"#;

#[tokio::test]
async fn each_group_allows_its_addresses_and_refuses_others_before_credentials() {
    let gw = start(EVERY_GROUP_LOCAL_ONLY).await;
    let bearer = format!("Authorization: Bearer {API_TOKEN}");

    // From 127.0.0.1 everything works as before.
    let reply = say_name_from(LOCAL, gw.addr, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = get_from(LOCAL, gw.addr, "/api/v1/calls", &[&bearer]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = get_from(LOCAL, gw.addr, "/operator", &[]).await;
    assert_eq!(reply.status, 200);

    // From 127.0.0.2: the SOAP path answers a SOAP fault with 403, with
    // or without credentials (no 401, no WWW-Authenticate: the address is
    // refused before credentials are looked at).
    for extra in [&[][..], &["Authorization: Basic d3Jvbmc6d3Jvbmc="][..]] {
        let body = say_name_envelope("89235292926");
        let mut headers = vec!["Content-Type: text/xml; charset=utf-8"];
        headers.extend_from_slice(extra);
        let reply =
            request_from(OTHER, gw.addr, "POST", SOAP_PATH, &headers, body.as_bytes()).await;
        assert_eq!(reply.status, 403, "{}", reply.body);
        assert_eq!(
            reply.header("content-type"),
            Some("text/xml; charset=utf-8")
        );
        assert_eq!(element_text(&reply.body, "faultcode"), Some("soap:Client"));
        assert!(reply.body.contains("127.0.0.2"), "{}", reply.body);
        assert_eq!(reply.header("www-authenticate"), None);
    }
    // Good credentials do not help either.
    let reply = say_name_from(OTHER, gw.addr, &[]).await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    // SOAP 1.2 hears it in its own version.
    let reply = request_from(
        OTHER,
        gw.addr,
        "POST",
        SOAP_PATH,
        &["Content-Type: application/soap+xml"],
        b"<x/>",
    )
    .await;
    assert_eq!(reply.status, 403);
    assert!(reply
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/soap+xml")));
    // The WSDL is on the SOAP path too.
    let reply = get_from(OTHER, gw.addr, &format!("{SOAP_PATH}?wsdl"), &[]).await;
    assert_eq!(reply.status, 403);

    // The other groups answer JSON.
    for path in [
        "/api/v1/calls",
        "/api/v1/counterparties",
        "/api/v1/admin/accept-file",
        "/api/v1/no-such-thing",
        "/operator",
        "/operator/events",
        "/operator/ws",
        "/metrics",
    ] {
        let reply = get_from(OTHER, gw.addr, path, &[&bearer]).await;
        assert_eq!(reply.status, 403, "{path}: {}", reply.body);
        assert_eq!(
            reply.header("content-type"),
            Some("application/json"),
            "{path}"
        );
        assert!(reply.body.contains("not allowed"), "{path}: {}", reply.body);
    }
    // Health checks belong to no group.
    assert_eq!(get_from(OTHER, gw.addr, "/healthz", &[]).await.status, 200);
    assert_eq!(get_from(OTHER, gw.addr, "/readyz", &[]).await.status, 200);

    let text = metrics_text(gw.addr).await;
    for line in [
        r#"cti_http_refused_total{endpoint="soap",reason="address"} 5"#,
        r#"cti_http_refused_total{endpoint="api_calls",reason="address"} 1"#,
        r#"cti_http_refused_total{endpoint="metrics",reason="address"} 1"#,
        r#"cti_http_refused_total{endpoint="operator_ws",reason="address"} 1"#,
        r#"cti_http_responses_total{endpoint="soap",status="403"} 5"#,
    ] {
        assert!(text.contains(line), "{line} not in:\n{text}");
    }
}

#[tokio::test]
async fn one_groups_list_never_locks_another_group() {
    // The API locked to the 1C server: the PBX (from elsewhere) still calls SOAP.
    let gw = start("api.allow_from = [\"127.0.0.1\"]\n").await;
    let reply = say_name_from(OTHER, gw.addr, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let bearer = format!("Authorization: Bearer {API_TOKEN}");
    let reply = get_from(OTHER, gw.addr, "/api/v1/calls", &[&bearer]).await;
    assert_eq!(reply.status, 403);
    assert_eq!(get_from(OTHER, gw.addr, "/metrics", &[]).await.status, 200);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_forwarded_client_is_checked() {
    let gw = start(
        r#"
server.trusted_proxies = ["127.0.0.1"]
soap.allow_from = ["203.0.113.0/24", "2001:db8::/32"]
"#,
    )
    .await;
    // The proxy forwards the PBX's address: allowed.
    let reply = say_name_from(LOCAL, gw.addr, &["X-Forwarded-For: 203.0.113.5"]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // A client that wrote a PBX address itself, then went through the
    // proxy: the rightmost untrusted address is the client, refused.
    let reply = say_name_from(
        LOCAL,
        gw.addr,
        &["X-Forwarded-For: 203.0.113.5, 198.51.100.1"],
    )
    .await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(reply.body.contains("198.51.100.1"), "{}", reply.body);
    // The proxy itself, forwarding nobody, is not the PBX.
    let reply = say_name_from(LOCAL, gw.addr, &[]).await;
    assert_eq!(reply.status, 403);
    // Forwarded (RFC 7239) with an IPv6 client and a port.
    let reply = say_name_from(
        LOCAL,
        gw.addr,
        &[r#"Forwarded: for="[2001:db8:cafe::17]:4711";proto=https"#],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let reply = say_name_from(LOCAL, gw.addr, &[r#"Forwarded: for="[2001:db9::1]""#]).await;
    assert_eq!(reply.status, 403, "{}", reply.body);
}

#[tokio::test]
async fn a_forged_forwarding_header_from_a_stranger_changes_nothing() {
    let gw = start(
        r#"
server.trusted_proxies = ["127.0.0.1"]
soap.allow_from = ["203.0.113.0/24"]
"#,
    )
    .await;
    for header in ["X-Forwarded-For: 203.0.113.5", "Forwarded: for=203.0.113.5"] {
        let reply = say_name_from(OTHER, gw.addr, &[header]).await;
        assert_eq!(reply.status, 403, "{header}: {}", reply.body);
        assert!(reply.body.contains("127.0.0.2"), "{}", reply.body);
    }
}

#[tokio::test]
async fn the_wsdl_says_https_when_a_trusted_proxy_says_so() {
    let gw = start("server.trusted_proxies = [\"127.0.0.1\"]\n").await;
    let wsdl = format!("{SOAP_PATH}?wsdl");
    let reply = get_from(LOCAL, gw.addr, &wsdl, &["X-Forwarded-Proto: https"]).await;
    assert_eq!(reply.status, 200);
    let https = format!("https://{}{SOAP_PATH}", gw.addr);
    assert!(reply.body.contains(&https), "{}", reply.body);
    // Not from a stranger.
    let reply = get_from(OTHER, gw.addr, &wsdl, &["X-Forwarded-Proto: https"]).await;
    assert!(
        reply
            .body
            .contains(&format!("http://{}{SOAP_PATH}", gw.addr)),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn a_host_name_in_an_allow_list_stops_start_up_naming_key_entry_and_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gateway.toml");
    let text = config_text(dir.path(), "soap.allow_from = [\"pbx.mobilon.ru\"]\n");
    let err = cti_gateway::config::Config::parse(&text, &path, &|_| None)
        .expect_err("a host name is no address");
    let msg = err.to_string();
    assert!(
        msg.contains("soap.allow_from")
            && msg.contains("pbx.mobilon.ru")
            && msg.contains("gateway.toml"),
        "{msg}"
    );
}
