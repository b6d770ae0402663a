//! Credentials at the HTTP front: a request with two `Authorization` headers
//! is refused with 400 in its path's protocol, whichever of them is right;
//! an endpoint whose credentials are not configured says it is off and how
//! to turn it on.

mod support;

use support::*;

const API_TOKEN: &str = "api-token-for-tests";
/// `SOAP:124`: the seed's user with a wrong password.
const WRONG_AUTH: &str = "Basic U09BUDoxMjQ=";

fn two(first: &str, second: &str) -> [String; 2] {
    [
        format!("Authorization: {first}"),
        format!("Authorization: {second}"),
    ]
}

#[tokio::test]
async fn two_authorization_headers_on_the_soap_path_get_a_400_fault() {
    let gw = start("").await;
    let body = say_name_envelope("89235292926");
    for (what, auth) in [
        ("wrong then right", two(WRONG_AUTH, SEED_AUTH)),
        ("right then wrong", two(SEED_AUTH, WRONG_AUTH)),
        ("right twice", two(SEED_AUTH, SEED_AUTH)),
    ] {
        let headers = ["Content-Type: text/xml", &auth[0], &auth[1]];
        let reply = post(gw.addr, SOAP_PATH, &headers, body.as_bytes()).await;
        assert_eq!(reply.status, 400, "{what}: {}", reply.body);
        assert_eq!(
            reply.header("content-type"),
            Some("text/xml; charset=utf-8"),
            "{what}"
        );
        assert_eq!(
            element_text(&reply.body, "faultcode"),
            Some("soap:Client"),
            "{what}: {}",
            reply.body
        );
        let says = element_text(&reply.body, "faultstring").unwrap_or_default();
        assert!(
            says.contains("more than one Authorization header"),
            "{what}: {says}"
        );
        assert_eq!(reply.header("www-authenticate"), None, "{what}");
    }
    // SOAP 1.2 hears it in its own version, still with 400.
    let v12 = body
        .replace(
            "http://schemas.xmlsoap.org/soap/envelope/",
            "http://www.w3.org/2003/05/soap-envelope",
        )
        .into_bytes();
    let auth = two(SEED_AUTH, SEED_AUTH);
    let headers = ["Content-Type: application/soap+xml", &auth[0], &auth[1]];
    let reply = post(gw.addr, SOAP_PATH, &headers, &v12).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(
        reply.header("content-type"),
        Some("application/soap+xml; charset=utf-8")
    );
    assert!(reply.body.contains("env:Sender"), "{}", reply.body);

    // One header still works.
    let reply = soap(gw.addr, &say_name_envelope("89235292926")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[tokio::test]
async fn two_authorization_headers_on_the_push_api_get_a_400_in_json() {
    let gw = start("").await;
    let bearer = format!("Bearer {API_TOKEN}");
    let record = br#"[{"id":"p1","name":"Pushed","phones":["84951112233"]}]"#;
    let auth = two("Bearer wrong-token", &bearer);
    let headers = ["Content-Type: application/json", &auth[0], &auth[1]];
    for (method, path, body) in [
        ("POST", "/api/v1/counterparties", &record[..]),
        ("DELETE", "/api/v1/counterparties/a1", &b""[..]),
        ("GET", "/api/v1/calls", &b""[..]),
    ] {
        let reply = request(gw.addr, method, path, &headers, body).await;
        assert_eq!(reply.status, 400, "{method} {path}: {}", reply.body);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        let v: serde_json::Value = serde_json::from_str(&reply.body).expect("json");
        assert!(
            v["error"]
                .as_str()
                .is_some_and(|e| e.contains("more than one Authorization header")),
            "{v}"
        );
        assert_eq!(reply.header("www-authenticate"), None);
    }
    // Nothing was changed: a1 is still there, p1 never came.
    let title = |reply: &Reply| element_text(&say_name_data(reply), "title").map(str::to_owned);
    let known = soap(gw.addr, &say_name_envelope("89235292926")).await;
    assert_eq!(title(&known).as_deref(), Some("Фэйковый чиж"));
    let pushed = soap(gw.addr, &say_name_envelope("84951112233")).await;
    assert_eq!(title(&pushed).as_deref(), Some(""));

    // One header still works.
    let one = format!("Authorization: {bearer}");
    let reply = post(
        gw.addr,
        "/api/v1/counterparties",
        &["Content-Type: application/json", &one],
        record,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

#[tokio::test]
async fn screens_without_any_operator_configured_say_they_are_off_and_how_to_turn_them_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), DIRECTORY).expect("write directory");
    let text = config_text(dir.path(), "");
    // The operators are the config's last tables.
    let text = &text[..text
        .find("[[operator]]")
        .expect("operators in the test config")];
    let config =
        cti_gateway::config::Config::parse(text, &dir.path().join("gateway.toml"), &|_| None)
            .expect("config");
    let gateway = cti_gateway::Gateway::start(config).await.expect("starts");
    let addr = gateway.local_addr();
    for path in [
        format!("/operator/me?token={OPERATOR_TOKEN}"),
        format!("/operator/events?token={OPERATOR_TOKEN}&wait=0"),
        "/operator/ws".to_owned(),
    ] {
        let reply = get(addr, &path).await;
        assert_eq!(reply.status, 401, "{path}: {}", reply.body);
        for needle in [
            "operator screens are off",
            "no [[operator]]",
            "add an [[operator]]",
            "restart",
        ] {
            assert!(
                reply.body.contains(needle),
                "{path}: {needle}: {}",
                reply.body
            );
        }
    }
    gateway.shutdown().await;
}
