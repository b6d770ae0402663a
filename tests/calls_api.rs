//! Reading the whole call journal, a page at a time: `GET /api/v1/calls`
//! with `before=<next_before of the previous page>`.

mod support;

use std::collections::HashSet;
use std::time::{Duration, UNIX_EPOCH};

use cti_gateway::store::{CallQuery, CallRecord, Store};
use serde_json::Value;
use support::*;

const API_TOKEN: &str = "api-token-for-tests";

async fn calls_page(addr: std::net::SocketAddr, query: &str) -> Value {
    let bearer = format!("Authorization: Bearer {API_TOKEN}");
    let reply = request(
        addr,
        "GET",
        &format!("/api/v1/calls?{query}"),
        &[&bearer],
        b"",
    )
    .await;
    assert_eq!(reply.status, 200, "{query}: {}", reply.body);
    serde_json::from_str(&reply.body).expect("json")
}

fn ids(page: &Value) -> Vec<i64> {
    page["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| c["id"].as_i64().expect("id"))
        .collect()
}

#[tokio::test]
async fn paging_through_250_calls_100_at_a_time_yields_every_call_once() {
    let gw = start("").await;
    for i in 0..250 {
        let number = format!("8923{i:07}");
        let reply = soap(gw.addr, &incoming_call_envelope(&number, OPERATOR_KEY)).await;
        assert_eq!(reply.status, 200, "call {i}: {}", reply.body);
    }

    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut query = "limit=100".to_owned();
    loop {
        let page = calls_page(gw.addr, &query).await;
        let got = ids(&page);
        assert!(got.windows(2).all(|w| w[0] > w[1]), "newest first: {got:?}");
        pages.push(got.len());
        seen.extend(got);
        match page["next_before"].as_i64() {
            Some(before) => query = format!("limit=100&before={before}"),
            None => {
                assert!(page["next_before"].is_null(), "{page}");
                break;
            }
        }
        assert!(pages.len() < 10, "paging does not end: {pages:?}");
    }
    assert_eq!(pages, [100, 100, 50]);
    let distinct: HashSet<i64> = seen.iter().copied().collect();
    assert_eq!(distinct.len(), 250, "every call exactly once");
    assert_eq!(seen.len(), 250);
    // The numbers too: each call the PBX made, once.
    let all = calls_page(gw.addr, "limit=1000").await;
    assert!(
        all["next_before"].is_null(),
        "a page that is not full ends the journal"
    );
    let numbers: HashSet<&str> = all["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| c["raw_number"].as_str().expect("raw_number"))
        .collect();
    assert_eq!(numbers.len(), 250);
}

#[tokio::test]
async fn before_combines_with_key_and_a_full_last_page_points_to_an_empty_one() {
    let gw = start("").await;
    for i in 0..4 {
        let key = if i % 2 == 0 { OPERATOR_KEY } else { OTHER_KEY };
        soap(gw.addr, &incoming_call_envelope(&format!("24{i}"), key)).await;
    }
    let first = calls_page(gw.addr, &format!("key={OPERATOR_KEY}&limit=1")).await;
    assert_eq!(first["calls"][0]["raw_number"], "242");
    let before = first["next_before"]
        .as_i64()
        .expect("a full page has next_before");
    let second = calls_page(
        gw.addr,
        &format!("key={OPERATOR_KEY}&limit=1&before={before}"),
    )
    .await;
    assert_eq!(second["calls"][0]["raw_number"], "240");
    let before = second["next_before"].as_i64().expect("full again");
    let third = calls_page(
        gw.addr,
        &format!("key={OPERATOR_KEY}&limit=1&before={before}"),
    )
    .await;
    assert_eq!(ids(&third), Vec::<i64>::new());
    assert!(third["next_before"].is_null());
}

/// A `GET /api/v1/calls` with the API token.
async fn calls_reply(addr: std::net::SocketAddr, query: &str) -> Reply {
    let bearer = format!("Authorization: Bearer {API_TOKEN}");
    request(
        addr,
        "GET",
        &format!("/api/v1/calls?{query}"),
        &[&bearer],
        b"",
    )
    .await
}

#[tokio::test]
async fn number_filters_the_journal_in_any_written_form() {
    let gw = start("").await;
    for number in [
        "89235292926",
        "+7 495 000-00-01",
        "8 (923) 529-29-26",
        "244",
    ] {
        soap(gw.addr, &incoming_call_envelope(number, OPERATOR_KEY)).await;
    }
    for form in [
        "89235292926",
        "%2B7%20923%20529-29-26",
        "+79235292926",
        "9235292926",
        "8%20(923)%20529-29-26",
    ] {
        let page = calls_page(gw.addr, &format!("number={form}")).await;
        let raw: Vec<&str> = page["calls"]
            .as_array()
            .expect("calls")
            .iter()
            .map(|c| c["raw_number"].as_str().expect("raw_number"))
            .collect();
        assert_eq!(raw, ["8 (923) 529-29-26", "89235292926"], "{form}");
    }
    let page = calls_page(gw.addr, &format!("number=244&key={OPERATOR_KEY}")).await;
    assert_eq!(ids(&page).len(), 1);
    let page = calls_page(gw.addr, &format!("number=244&key={OTHER_KEY}")).await;
    assert_eq!(ids(&page).len(), 0);
    let page = calls_page(gw.addr, "number=89990000000").await;
    assert_eq!(ids(&page).len(), 0, "nobody called from there");
}

#[tokio::test]
async fn an_unknown_or_repeated_parameter_is_a_400_naming_it() {
    let gw = start("").await;
    soap(gw.addr, &incoming_call_envelope("244", OPERATOR_KEY)).await;
    for (query, named) in [
        ("numbr=244", "'numbr'"),
        ("phone=244&limit=5", "'phone'"),
        ("_=1700000000", "'_'"),
        ("key=a&key=b", "'key' given more than once"),
        ("number=1&number=2", "'number' given more than once"),
    ] {
        let reply = calls_reply(gw.addr, query).await;
        assert_eq!(reply.status, 400, "{query}: {}", reply.body);
        assert!(reply.body.contains(named), "{query}: {}", reply.body);
    }
}

#[tokio::test]
async fn since_takes_any_rfc_3339_offset_and_refuses_a_time_without_one() {
    let gw = start("").await;
    soap(gw.addr, &incoming_call_envelope("244", OPERATOR_KEY)).await;
    let now = std::time::SystemTime::now();
    let utc = humantime::format_rfc3339_seconds(now - Duration::from_secs(60)).to_string();
    // The same instant in Moscow time, lowercase, encoded or not.
    let moscow_local = humantime::format_rfc3339_seconds(
        now - Duration::from_secs(60) + Duration::from_secs(3 * 3600),
    )
    .to_string();
    let moscow = moscow_local.replace('Z', "+03:00");
    for since in [
        utc.clone(),
        utc.to_lowercase(),
        moscow.clone(),
        moscow.replace('+', "%2B").replace(':', "%3A"),
    ] {
        let page = calls_page(gw.addr, &format!("since={since}")).await;
        assert_eq!(ids(&page).len(), 1, "{since}: {page}");
    }
    // A minute ahead: nothing yet.
    let ahead = humantime::format_rfc3339_seconds(now + Duration::from_secs(60)).to_string();
    let page = calls_page(gw.addr, &format!("since={ahead}")).await;
    assert_eq!(ids(&page).len(), 0);
    // No offset: refused, saying which it needs.
    let reply = calls_reply(gw.addr, &format!("since={}", utc.trim_end_matches('Z'))).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert!(
        reply.body.contains("offset") && reply.body.contains("+03:00"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn a_bad_before_is_a_400() {
    let gw = start("").await;
    let bearer = format!("Authorization: Bearer {API_TOKEN}");
    for bad in ["before=0", "before=-1", "before=x", "before="] {
        let reply = request(
            gw.addr,
            "GET",
            &format!("/api/v1/calls?{bad}"),
            &[&bearer],
            b"",
        )
        .await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
        assert!(reply.body.contains("before"), "{}", reply.body);
    }
}

/// Calls committed out of time order (a clock step, or two calls racing to
/// the journal) are still each read once: the page boundary is a position
/// in the journal's order, not only an id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_reads_calls_committed_out_of_time_order_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = prometheus::Registry::new();
    let store = Store::open(&dir.path().join("store.sqlite"), &registry).expect("store");
    // Ids 1..=9; times go down and up again.
    let times = [5, 9, 1, 7, 7, 3, 8, 2, 6];
    for (i, t) in times.iter().enumerate() {
        let call = CallRecord {
            at: UNIX_EPOCH + Duration::from_secs(1_800_000_000 + t),
            raw_number: format!("{i}"),
            number: format!("{i}"),
            key: "k".into(),
            counterparty_id: None,
            delivered: 0,
            seq: None,
        };
        store.append_call(call).await.expect("append");
    }
    for limit in 1..=4 {
        let mut seen = Vec::new();
        let mut before = None;
        loop {
            let query = CallQuery {
                before,
                limit,
                ..CallQuery::default()
            };
            let page = store.calls_page(query).await.expect("page");
            seen.extend(page.iter().map(|c| c.id));
            if page.len() < limit as usize {
                break;
            }
            before = page.last().map(|c| c.id);
        }
        // Newest first by time, then id: the same order as one big page.
        let whole = store.calls(None, None, 100).await.expect("all");
        let expected: Vec<i64> = whole.iter().map(|c| c.id).collect();
        assert_eq!(seen, expected, "limit {limit}");
        assert_eq!(expected, [2, 7, 5, 4, 9, 1, 6, 8, 3]);
    }
    // A `before` no call has: the newest call with a smaller id stands in.
    let query = CallQuery {
        before: Some(100),
        limit: 100,
        ..CallQuery::default()
    };
    let from_beyond = store.calls_page(query).await.expect("page");
    assert_eq!(
        from_beyond.len(),
        9,
        "every call is older than id 100's place"
    );
    store.close().await;
}
