//! Bad input never panics, never hangs, and is answered in SOAP; a good
//! request right after each still gets its answer.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn assert_still_answers(gw: &TestGateway) {
    let reply = soap(gw.addr, &say_name_envelope("89235292926")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(say_name_data(&reply).contains("Фэйковый чиж"));
}

/// A SOAP 1.1 fault with HTTP `status` whose faultstring contains `says`.
fn assert_fault(reply: &Reply, status: u16, says: &str) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert!(
        reply.body.contains("<soap:Fault>") || reply.body.contains("Fault>"),
        "not a fault: {}",
        reply.body
    );
    let text = element_text(&reply.body, "faultstring").unwrap_or(&reply.body);
    assert!(
        text.contains(says),
        "faultstring {text:?} does not say {says:?}"
    );
}

#[tokio::test]
async fn malformed_and_truncated_xml_get_a_client_fault() {
    let gw = start("").await;
    let envelope = say_name_envelope("89235292926");
    for cut in [10, 60, 120, envelope.len() - 20] {
        let reply = soap(gw.addr, &envelope[..cut]).await;
        assert_eq!(reply.status, 500, "cut at {cut}: {}", reply.body);
        assert!(
            reply.body.contains("<faultcode>soap:Client</faultcode>"),
            "{}",
            reply.body
        );
    }
    let reply = soap(gw.addr, "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body><SayName><Number>1</Numbr></SayName></soap:Body></soap:Envelope>").await;
    assert_eq!(reply.status, 500);
    assert_still_answers(&gw).await;
}

#[tokio::test]
async fn unknown_operation_and_missing_number_are_named_in_the_fault() {
    let gw = start("").await;
    let unknown = soap(gw.addr, r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><HangUp xmlns="http://VATS"/></soap:Body></soap:Envelope>"#).await;
    assert_fault(&unknown, 500, "HangUp");
    let missing = soap(gw.addr, r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><SayName xmlns="http://VATS"/></soap:Body></soap:Envelope>"#).await;
    assert_fault(&missing, 500, "Number");
    assert_still_answers(&gw).await;
}

#[tokio::test]
async fn doctype_entities_and_external_references_are_refused() {
    let gw = start("").await;
    let laughs = r#"<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><SayName xmlns="http://VATS"><Number>&lol3;</Number></SayName></soap:Body></soap:Envelope>"#;
    let reply = soap(gw.addr, laughs).await;
    assert_eq!(reply.status, 500, "{}", reply.body);
    assert!(!reply.body.contains("lollol"));
    let xxe = r#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><SayName><Number>&xxe;</Number></SayName></soap:Body></soap:Envelope>"#;
    let reply = soap(gw.addr, xxe).await;
    assert_eq!(reply.status, 500);
    assert!(!reply.body.contains("root:"));
    let undefined = soap(gw.addr, &say_name_envelope("&xxe;")).await;
    assert_eq!(undefined.status, 500);
    assert_still_answers(&gw).await;
}

#[tokio::test]
async fn invalid_utf8_gets_a_fault() {
    let gw = start("").await;
    let mut body = say_name_envelope("89235292926").into_bytes();
    body.splice(100..100, [0xff, 0xfe, 0xc3]);
    let reply = post(
        gw.addr,
        SOAP_PATH,
        &[
            "Content-Type: text/xml",
            &format!("Authorization: {SEED_AUTH}"),
        ],
        &body,
    )
    .await;
    assert_fault(&reply, 500, "UTF-8");
    assert_still_answers(&gw).await;
}

#[tokio::test]
async fn a_body_over_64_kib_gets_413_whether_declared_or_streamed() {
    let gw = start("").await;
    let big = format!(
        "{}{}",
        say_name_envelope("89235292926"),
        " ".repeat(70 * 1024)
    );
    let declared = soap(gw.addr, &big).await;
    assert_fault(&declared, 413, "larger than");

    // Chunked: no Content-Length to refuse up front, the limit applies while reading.
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    let head = format!("POST {SOAP_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nAuthorization: {SEED_AUTH}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("head");
    let chunk = vec![b' '; 16 * 1024];
    for _ in 0..5 {
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(&chunk);
        framed.extend_from_slice(b"\r\n");
        if stream.write_all(&framed).await.is_err() {
            break; // the server may already have answered and closed
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let streamed = read_reply(&mut stream).await;
    assert_fault(&streamed, 413, "larger than");
    assert_still_answers(&gw).await;
}

#[tokio::test]
async fn deeply_nested_xml_gets_a_fault_quickly() {
    let gw = start("").await;
    let depth = 5_000; // stays under the 64 KiB body limit
    let body = format!(
        "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body><SayName>{}{}</SayName></soap:Body></soap:Envelope>",
        "<a>".repeat(depth),
        "</a>".repeat(depth)
    );
    let reply = soap(gw.addr, &body).await;
    assert_fault(&reply, 500, "deeper");
    assert_still_answers(&gw).await;
}

#[tokio::test]
async fn wrong_method_gets_405_with_allow_and_a_fault() {
    let gw = start("").await;
    for method in ["PUT", "DELETE", "PATCH"] {
        let req = format!("{method} {SOAP_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        let reply = raw(gw.addr, req.as_bytes()).await;
        assert_fault(&reply, 405, method);
        assert_eq!(reply.header("allow"), Some("GET, HEAD, POST"));
    }
    let plain_get = get(gw.addr, SOAP_PATH).await;
    assert_eq!(plain_get.status, 405);
    assert_still_answers(&gw).await;
}

#[tokio::test]
async fn wrong_content_type_gets_415_with_a_fault() {
    let gw = start("").await;
    for ct in ["application/json", "application/x-www-form-urlencoded"] {
        let reply = post(
            gw.addr,
            SOAP_PATH,
            &[
                &format!("Content-Type: {ct}"),
                &format!("Authorization: {SEED_AUTH}"),
            ],
            say_name_envelope("89235292926").as_bytes(),
        )
        .await;
        assert_fault(&reply, 415, "text/xml");
    }
    let none = post(
        gw.addr,
        SOAP_PATH,
        &[&format!("Authorization: {SEED_AUTH}")],
        say_name_envelope("1").as_bytes(),
    )
    .await;
    assert_eq!(none.status, 415);
    assert_still_answers(&gw).await;
}

#[tokio::test]
async fn a_header_flood_is_refused() {
    let gw = start("").await;
    let mut req = format!("POST {SOAP_PATH} HTTP/1.1\r\nHost: x\r\n");
    for i in 0..2000 {
        req.push_str(&format!("X-Flood-{i}: {}\r\n", "y".repeat(40)));
    }
    req.push_str("Connection: close\r\n\r\n");
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    let _ = stream.write_all(req.as_bytes()).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut buf))
        .await
        .expect("answered or closed within 5 s");
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 431"),
        "{text}"
    );
    assert_still_answers(&gw).await;
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let gw = start("server.header_read_timeout = \"300ms\"").await;
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    stream
        .write_all(b"POST /telephony/ws/VATS HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("partial head");
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut buf)).await;
    assert!(
        closed.is_ok(),
        "a half-sent request kept its connection for 3 s"
    );
    assert_still_answers(&gw).await;
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let gw = start("server.header_read_timeout = \"300ms\"").await;
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    let body = say_name_envelope("89235292926");
    let req = format!(
        "POST {SOAP_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nAuthorization: {SEED_AUTH}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(req.as_bytes()).await.expect("send");
    let first = read_reply(&mut stream).await;
    assert_eq!(first.status, 200);
    // Now idle: the server must close the connection on its own.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "an idle keep-alive connection stayed open for 3 s"
    );
}

#[tokio::test]
async fn a_body_that_never_arrives_is_answered_with_408() {
    let gw = start("server.body_read_timeout = \"300ms\"").await;
    let mut stream = TcpStream::connect(gw.addr).await.expect("connect");
    let head = format!("POST {SOAP_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nAuthorization: {SEED_AUTH}\r\nContent-Length: 500\r\n\r\n<soap:Env");
    stream.write_all(head.as_bytes()).await.expect("send");
    let reply = read_reply(&mut stream).await;
    assert_fault(&reply, 408, "did not arrive");
    assert_still_answers(&gw).await;
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_and_the_rest_still_served() {
    let gw = start("server.max_connections = 4").await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(gw.addr).await.expect("connect"));
    }
    // The server has taken all four (the gauge counts accepted connections
    // holding a slot), so the next one is over the limit.
    let metrics = gw.gateway().metrics();
    eventually(Duration::from_secs(3), "4 connections open", || {
        metrics.http_connections.get() == 4
    })
    .await;
    let mut extra = TcpStream::connect(gw.addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(3), extra.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "the fifth connection was not closed");
    drop(held);
    // The server has seen them close and freed their slots.
    eventually(Duration::from_secs(3), "the connections closed", || {
        metrics.http_connections.get() == 0
    })
    .await;
    assert_still_answers(&gw).await;
}
