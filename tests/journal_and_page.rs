//! The call journal API and the operator page, over real HTTP.

mod support;

use support::*;

const API_TOKEN: &str = "api-token-for-tests";

async fn get_with(addr: std::net::SocketAddr, path: &str, auth: Option<&str>) -> Reply {
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n");
    raw(addr, req.as_bytes()).await
}

#[tokio::test]
async fn the_journal_lists_calls_newest_first_filtered_by_key() {
    let gw = start("").await;
    soap(
        gw.addr,
        &incoming_call_envelope("89235292926", OPERATOR_KEY),
    )
    .await;
    soap(gw.addr, &incoming_call_envelope("89990000000", OTHER_KEY)).await;
    soap(gw.addr, &incoming_call_envelope("244", OPERATOR_KEY)).await;

    let bearer = format!("Bearer {API_TOKEN}");
    let all = get_with(gw.addr, "/api/v1/calls", Some(&bearer)).await;
    assert_eq!(all.status, 200, "{}", all.body);
    let json: serde_json::Value = serde_json::from_str(&all.body).expect("json");
    let calls = json["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 3);
    assert_eq!(calls[0]["raw_number"], "244", "newest first");

    let mine = get_with(
        gw.addr,
        &format!("/api/v1/calls?key={OPERATOR_KEY}&limit=1"),
        Some(&bearer),
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(&mine.body).expect("json");
    let calls = json["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["key"], OPERATOR_KEY);
    assert_eq!(calls[0]["number"], "244");

    let first = get_with(
        gw.addr,
        &format!("/api/v1/calls?key={OPERATOR_KEY}"),
        Some(&bearer),
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(&first.body).expect("json");
    let oldest = &json["calls"][1];
    assert_eq!(oldest["number"], "+79235292926");
    assert_eq!(oldest["counterparty_id"], "a1");
    assert_eq!(oldest["delivered"], 0, "no screen was connected");

    let future = get_with(
        gw.addr,
        "/api/v1/calls?since=2999-01-01T00:00:00Z",
        Some(&bearer),
    )
    .await;
    assert_eq!(future.status, 200);
    assert!(future.body.contains("\"calls\":[]"), "{}", future.body);
}

#[tokio::test]
async fn the_journal_needs_the_api_token_and_sane_parameters() {
    let gw = start("").await;
    let none = get_with(gw.addr, "/api/v1/calls", None).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    let wrong = get_with(gw.addr, "/api/v1/calls", Some("Bearer nope")).await;
    assert_eq!(wrong.status, 401);
    let bearer = format!("Bearer {API_TOKEN}");
    for bad in [
        "limit=0",
        "limit=5000",
        "limit=x",
        "since=yesterday",
        "key=%zz",
    ] {
        let reply = get_with(gw.addr, &format!("/api/v1/calls?{bad}"), Some(&bearer)).await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
        assert!(reply.body.contains("error"));
    }
}

/// `delivered` of the journal rows, oldest first.
async fn delivered(addr: std::net::SocketAddr) -> Vec<u64> {
    let reply = get_with(addr, "/api/v1/calls", Some(&format!("Bearer {API_TOKEN}"))).await;
    let json: serde_json::Value = serde_json::from_str(&reply.body).expect("json");
    let mut rows: Vec<u64> = json["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| c["delivered"].as_u64().expect("delivered"))
        .collect();
    rows.reverse();
    rows
}

/// Waits (up to 2 s) until the rows' `delivered` are `expected`.
async fn delivered_becomes(addr: std::net::SocketAddr, expected: &[u64]) {
    for _ in 0..100 {
        if delivered(addr).await == expected {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(delivered(addr).await, expected);
}

/// `cti_popup_delivered_total` now.
async fn delivered_total(addr: std::net::SocketAddr) -> u64 {
    let body = get(addr, "/metrics").await.body;
    body.lines()
        .find_map(|l| l.strip_prefix("cti_popup_delivered_total "))
        .and_then(|v| v.trim().parse().ok())
        .expect("cti_popup_delivered_total")
}

#[tokio::test]
async fn a_card_a_long_poll_returns_counts_as_delivered_in_the_journal_and_the_metric() {
    let gw = start("").await;
    let events = format!("/operator/events?token={OPERATOR_TOKEN}&after=0&wait=10");
    // A long-poll waiting when the call comes: woken before the row is written.
    let waiting = tokio::spawn({
        let addr = gw.addr;
        let events = events.clone();
        async move { get(addr, &events).await }
    });
    let hub = gw.gateway().hub();
    eventually(
        std::time::Duration::from_secs(5),
        "long-poll waiting",
        || hub.long_poll_waiters(OPERATOR_KEY) == Some(1),
    )
    .await;
    soap(
        gw.addr,
        &incoming_call_envelope("89235292926", OPERATOR_KEY),
    )
    .await;
    let reply = waiting.await.expect("task");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains("\"seq\":1"), "{}", reply.body);

    // The answer does not wait for the journal: the count follows.
    delivered_becomes(gw.addr, &[1]).await;

    // A call no screen is waiting for, picked up by the next poll.
    soap(gw.addr, &incoming_call_envelope("244", OPERATOR_KEY)).await;
    assert_eq!(delivered(gw.addr).await, [1, 0]);
    let reply = get(
        gw.addr,
        &format!("/operator/events?token={OPERATOR_TOKEN}&after=1&wait=0"),
    )
    .await;
    assert!(reply.body.contains("\"seq\":2"), "{}", reply.body);
    delivered_becomes(gw.addr, &[1, 1]).await;
    assert_eq!(delivered_total(gw.addr).await, 2);
    // An empty answer counts nothing.
    get(
        gw.addr,
        &format!("/operator/events?token={OPERATOR_TOKEN}&after=2&wait=0"),
    )
    .await;
    assert_eq!(delivered_total(gw.addr).await, 2);
}

#[tokio::test]
async fn the_operator_page_is_served_self_contained() {
    let gw = start("").await;
    let page = get(gw.addr, "/operator").await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/html")));
    assert!(page
        .header("content-security-policy")
        .is_some_and(|v| v.contains("connect-src 'self'")));
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    assert!(
        page.body.contains("/operator/ws"),
        "the page connects to the WebSocket"
    );
    assert!(
        page.body.contains("#token=") || page.body.contains("location.hash"),
        "token from the fragment"
    );
    // The help names both ways a program passes a screen's token.
    assert!(
        page.body.contains("Authorization: Bearer &lt;токен&gt;")
            && page.body.contains("?token=&lt;токен&gt;"),
        "the page's help names the header and the query token"
    );
}
