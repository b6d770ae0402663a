//! The PBX's view: SOAP over real HTTP to a gateway on 127.0.0.1:0.

mod support;

use std::time::Duration;

use support::*;

/// The seed's first curl request, byte for byte: its Authorization header is
/// two headers run together by a typo (`...Mjhe-Control: no-cache`).
const SEED_SAY_NAME_HEADERS: [&str; 2] = [
    "Content-Type: text/xml",
    "Authorization: Basic U09BUDoxMjhe-Control: no-cache",
];
const SEED_SAY_NAME_BODY: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
    <soap:Body>
        <SayName xmlns="http://VATS">
            <Number>89235292926</Number>
        </SayName>
    </soap:Body>
</soap:Envelope>
"#;
const SEED_INCOMING_CALL_BODY: &str = r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
    <soap:Body>
        <IncomingCall xmlns="http://VATS">
            <NumFrom>89235292926</NumFrom>
            <Key>gW3cyUJAtl50PhF</Key>
        </IncomingCall>
    </soap:Body>
</soap:Envelope>
"#;

const KNOWN_DATA: &str = "<?xml version=\"1.0\"?>\n<data>\n    <title>Фэйковый чиж</title>\n    <category>0</category>\n    <manager>\n        <phone>244</phone>\n    </manager>\n</data>\n";

#[tokio::test]
async fn seed_say_name_request_with_its_header_typo_is_refused_with_a_clear_fault() {
    let gw = start("").await;
    let reply = post(
        gw.addr,
        SOAP_PATH,
        &SEED_SAY_NAME_HEADERS,
        SEED_SAY_NAME_BODY.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    assert!(reply
        .header("www-authenticate")
        .is_some_and(|v| v.starts_with("Basic")));
    assert!(
        reply.body.contains("faultstring")
            && reply.body.contains("not valid HTTP Basic credentials"),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn seed_say_name_request_with_the_seed_credentials_gets_the_callers_data() {
    let gw = start("").await;
    let reply = post(
        gw.addr,
        SOAP_PATH,
        &[
            "Content-Type: text/xml",
            &format!("Authorization: {SEED_AUTH}"),
            "Cache-Control: no-cache",
        ],
        SEED_SAY_NAME_BODY.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply
        .header("content-type")
        .is_some_and(|v| v.starts_with("text/xml")));
    assert!(
        reply
            .body
            .contains(r#"<m:SayNameResponse xmlns:m="http://VATS">"#),
        "{}",
        reply.body
    );
    // Escaped text, not CDATA and not child elements.
    assert!(
        reply
            .body
            .contains("&lt;title&gt;Фэйковый чиж&lt;/title&gt;"),
        "{}",
        reply.body
    );
    assert!(!reply.body.contains("CDATA"));
    assert_eq!(say_name_data(&reply), KNOWN_DATA);
}

#[tokio::test]
async fn seed_incoming_call_request_answers_1_and_reaches_the_operators_subscriber() {
    let gw = start("").await;
    let mut screen = gw
        .gateway()
        .hub()
        .subscribe(OPERATOR_KEY, None)
        .expect("known key");
    let mut other = gw
        .gateway()
        .hub()
        .subscribe(OTHER_KEY, None)
        .expect("known key");
    let reply = post(
        gw.addr,
        SOAP_PATH,
        &[
            &format!("Authorization: {SEED_AUTH}"),
            "Content-Type: text/xml",
        ],
        SEED_INCOMING_CALL_BODY.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply
            .body
            .contains("<m:IncomingCallResponse xmlns:m=\"http://VATS\">"),
        "{}",
        reply.body
    );
    assert_eq!(element_text(&reply.body, "m:return"), Some("1"));

    let message = tokio::time::timeout(Duration::from_secs(2), screen.recv())
        .await
        .expect("pop-up within 2 s")
        .expect("subscription open");
    let json: serde_json::Value = serde_json::from_str(&message.json).expect("json");
    assert_eq!(json["type"], "incoming_call");
    assert_eq!(json["number"], "+79235292926");
    assert_eq!(json["raw_number"], "89235292926");
    assert_eq!(json["key"], OPERATOR_KEY);
    assert_eq!(json["counterparty"]["name"], "Фэйковый чиж");
    assert_eq!(json["counterparty"]["manager_phone"], "244");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), other.recv())
            .await
            .is_err(),
        "another operator's screen got the pop-up"
    );

    let calls = gw
        .gateway()
        .store()
        .calls(Some(OPERATOR_KEY), None, 10)
        .await
        .expect("journal");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].counterparty_id.as_deref(), Some("a1"));
    assert_eq!(calls[0].delivered, 1);
}

#[tokio::test]
async fn unknown_caller_gets_all_three_fields_present_and_empty() {
    let gw = start("").await;
    let reply = soap(gw.addr, &say_name_envelope("89990000000")).await;
    assert_eq!(reply.status, 200);
    let data = say_name_data(&reply);
    assert!(
        data.contains("<title></title>")
            && data.contains("<category></category>")
            && data.contains("<phone></phone>"),
        "{data}"
    );
    assert!(!reply.body.to_lowercase().contains("unknown"));
}

#[tokio::test]
async fn every_phone_format_of_a_known_caller_finds_it() {
    let gw = start("").await;
    for number in [
        "89235292926",
        "+79235292926",
        "79235292926",
        "9235292926",
        "+7 (923) 529-29-26",
        "8-923-529-29-26",
    ] {
        let reply = soap(gw.addr, &say_name_envelope(number)).await;
        assert!(
            say_name_data(&reply).contains("Фэйковый чиж"),
            "{number}: {}",
            reply.body
        );
    }
}

#[tokio::test]
async fn names_with_quotes_ampersands_and_brackets_are_escaped_twice() {
    let gw = start("").await;
    let reply = soap(gw.addr, &say_name_envelope("89165555555")).await;
    // Once inside <data>, once more inside m:return.
    assert!(
        reply.body.contains("&amp;amp; &amp;lt;Ко&amp;gt;"),
        "{}",
        reply.body
    );
    let data = say_name_data(&reply);
    assert!(
        data.contains("<title>ООО \"Ромашка\" &amp; &lt;Ко&gt;</title>"),
        "{data}"
    );
    assert!(data.contains("<category>2</category>") && data.contains("<phone>301</phone>"));
}

#[tokio::test]
async fn shared_office_phone_is_answered_by_the_record_with_a_manager() {
    let gw = start("").await;
    let reply = soap(gw.addr, &say_name_envelope("84950000001")).await;
    assert!(
        say_name_data(&reply).contains("Фэйковый чиж"),
        "{}",
        reply.body
    );
    let metrics = get(gw.addr, "/metrics").await;
    assert!(
        metrics.body.contains("cti_directory_ambiguous_phones 1"),
        "{}",
        metrics.body
    );
}

#[tokio::test]
async fn older_pbx_namespace_and_lowercase_number_are_answered_in_that_namespace() {
    let gw = start("").await;
    let body = r#"<?xml version="1.0"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/"><soapenv:Body><sayname xmlns="http://test"><number>+7 923 529 29 26</number></sayname></soapenv:Body></soapenv:Envelope>"#;
    let reply = soap(gw.addr, body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply.body.contains(r#"xmlns:m="http://test""#),
        "{}",
        reply.body
    );
    assert!(say_name_data(&reply).contains("Фэйковый чиж"));
}

#[tokio::test]
async fn soap_12_request_gets_a_soap_12_answer() {
    let gw = start("").await;
    let body = r#"<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope"><env:Body><v:SayName xmlns:v="http://VATS"><v:Number>89235292926</v:Number></v:SayName></env:Body></env:Envelope>"#;
    let reply = post(
        gw.addr,
        SOAP_PATH,
        &[
            "Content-Type: application/soap+xml; charset=utf-8",
            &format!("Authorization: {SEED_AUTH}"),
        ],
        body.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply
        .header("content-type")
        .is_some_and(|v| v.starts_with("application/soap+xml")));
    assert!(reply
        .body
        .contains("http://www.w3.org/2003/05/soap-envelope"));
    assert!(say_name_data(&reply).contains("Фэйковый чиж"));
}

#[tokio::test]
async fn soapaction_header_is_accepted_but_the_body_decides() {
    let gw = start("").await;
    let reply = post(
        gw.addr,
        SOAP_PATH,
        &[
            "Content-Type: text/xml",
            &format!("Authorization: {SEED_AUTH}"),
            "SOAPAction: \"http://VATS#IncomingCall\"",
        ],
        say_name_envelope("89235292926").as_bytes(),
    )
    .await;
    assert!(reply.body.contains("SayNameResponse"), "{}", reply.body);
}

#[tokio::test]
async fn missing_and_wrong_credentials_get_401_with_a_soap_fault() {
    let gw = start("").await;
    let body = say_name_envelope("89235292926");
    let missing = post(
        gw.addr,
        SOAP_PATH,
        &["Content-Type: text/xml"],
        body.as_bytes(),
    )
    .await;
    assert_eq!(missing.status, 401);
    assert!(missing.header("www-authenticate").is_some());
    assert!(
        missing.body.contains("<faultcode>soap:Client</faultcode>"),
        "{}",
        missing.body
    );
    let wrong = post(
        gw.addr,
        SOAP_PATH,
        &[
            "Content-Type: text/xml",
            "Authorization: Basic U09BUDoxMjQ=",
        ],
        body.as_bytes(),
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert!(
        wrong.body.contains("wrong user name or password"),
        "{}",
        wrong.body
    );
}

#[tokio::test]
async fn incoming_call_for_a_key_no_operator_has_still_answers_1_and_is_journaled() {
    let gw = start("").await;
    let reply = soap(
        gw.addr,
        &incoming_call_envelope("89235292926", "nobodysKey"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(element_text(&reply.body, "m:return"), Some("1"));
    let calls = gw
        .gateway()
        .store()
        .calls(Some("nobodysKey"), None, 10)
        .await
        .expect("journal");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].delivered, 0);
    let metrics = get(gw.addr, "/metrics").await;
    assert!(
        metrics
            .body
            .contains("cti_incoming_calls_unknown_key_total 1"),
        "{}",
        metrics.body
    );
}

#[tokio::test]
async fn a_body_with_two_operations_is_a_client_fault_and_nothing_is_journaled() {
    let gw = start("").await;
    let one = |number: &str| {
        format!(
            "<IncomingCall xmlns=\"http://VATS\"><NumFrom>{number}</NumFrom><Key>{OPERATOR_KEY}</Key></IncomingCall>"
        )
    };
    let body = format!(
        r#"<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body>{}{}</soap:Body></soap:Envelope>"#,
        one("89235292926"),
        one("244")
    );
    let reply = soap(gw.addr, &body).await;
    assert_eq!(reply.status, 500, "SOAP 1.1 faults are 500: {}", reply.body);
    assert_eq!(element_text(&reply.body, "faultcode"), Some("soap:Client"));
    assert_eq!(
        element_text(&reply.body, "faultstring"),
        Some("the Body holds IncomingCall after IncomingCall: send one operation per request")
    );
    let calls = gw
        .gateway()
        .store()
        .calls(Some(OPERATOR_KEY), None, 10)
        .await
        .expect("journal");
    assert!(calls.is_empty(), "neither call was journaled: {calls:?}");
}

#[tokio::test]
async fn incoming_call_from_an_unknown_number_journals_it_without_a_counterparty() {
    let gw = start("").await;
    let mut screen = gw
        .gateway()
        .hub()
        .subscribe(OPERATOR_KEY, None)
        .expect("known key");
    let reply = soap(gw.addr, &incoming_call_envelope("244", OPERATOR_KEY)).await;
    assert_eq!(reply.status, 200);
    let message = tokio::time::timeout(Duration::from_secs(2), screen.recv())
        .await
        .expect("in time")
        .expect("open");
    let json: serde_json::Value = serde_json::from_str(&message.json).expect("json");
    assert_eq!(json["number"], "244");
    assert!(json["counterparty"].is_null());
}

#[tokio::test]
async fn wsdl_is_served_with_this_gateways_address() {
    let gw = start("").await;
    let reply = get(gw.addr, &format!("{SOAP_PATH}?wsdl")).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body.contains("definitions"));
    assert!(
        reply
            .body
            .contains(&format!("http://{}{SOAP_PATH}", gw.addr)),
        "{}",
        reply.body
    );
}

#[tokio::test]
async fn wsdl_can_require_credentials() {
    let gw = start("soap.wsdl_requires_auth = true").await;
    assert_eq!(get(gw.addr, &format!("{SOAP_PATH}?WSDL")).await.status, 401);
    let req = format!("GET {SOAP_PATH}?WSDL HTTP/1.1\r\nHost: x\r\nAuthorization: {SEED_AUTH}\r\nConnection: close\r\n\r\n");
    assert_eq!(raw(gw.addr, req.as_bytes()).await.status, 200);
}

#[tokio::test]
async fn health_readiness_and_metrics_endpoints_answer() {
    let gw = start("").await;
    assert_eq!(get(gw.addr, "/healthz").await.status, 200);
    let ready = get(gw.addr, "/readyz").await;
    assert_eq!(ready.status, 200);
    let json: serde_json::Value = serde_json::from_str(&ready.body).expect("json");
    assert_eq!(json["ready"], true);
    assert_eq!(json["counterparties"], 3);
    assert_eq!(json["sources"]["file"]["records"], 3);
    soap(gw.addr, &say_name_envelope("89235292926")).await;
    soap(gw.addr, &say_name_envelope("89990000000")).await;
    let metrics = get(gw.addr, "/metrics").await;
    for needle in [
        r#"cti_soap_requests_total{operation="SayName",outcome="known"} 1"#,
        r#"cti_soap_requests_total{operation="SayName",outcome="unknown"} 1"#,
        "cti_soap_request_duration_seconds_bucket",
        "cti_directory_counterparties 3",
        "cti_directory_reloads_total",
        "process_resident_memory_bytes",
    ] {
        assert!(
            metrics.body.contains(needle),
            "{needle} missing from\n{}",
            metrics.body
        );
    }
    assert_eq!(get(gw.addr, "/nowhere").await.status, 404);
}

#[tokio::test]
async fn a_changed_directory_file_is_picked_up_without_a_restart() {
    let gw = start("").await;
    let added = format!(
        "{DIRECTORY}{}\n",
        r#"{"id":"d4","name":"Новый клиент","phones":["89001112233"]}"#
    );
    std::fs::write(gw.directory_file(), added).expect("rewrite");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let reply = soap(gw.addr, &say_name_envelope("89001112233")).await;
        if say_name_data(&reply).contains("Новый клиент") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new record never appeared"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_broken_directory_file_keeps_the_old_directory_serving() {
    let gw = start("").await;
    std::fs::write(gw.directory_file(), "{\"id\":\"x\",\"name\":").expect("rewrite");
    gw.gateway().reload();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let ready = get(gw.addr, "/readyz").await;
        if ready.body.contains(r#""state":"failing""#) {
            assert!(ready.body.contains("line 1"), "{}", ready.body);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the failure never showed: {}",
            ready.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = soap(gw.addr, &say_name_envelope("89235292926")).await;
    assert!(say_name_data(&reply).contains("Фэйковый чиж"));
}

#[tokio::test]
async fn a_restart_answers_from_the_snapshot_before_any_source_is_read() {
    let mut gw = start("").await;
    gw.stop().await;
    let dir = gw.dir;
    std::fs::remove_file(dir.path().join("counterparties.jsonl")).expect("remove the source");
    let gw = start_in(dir, "").await;
    let reply = soap(gw.addr, &say_name_envelope("89235292926")).await;
    assert_eq!(say_name_data(&reply), KNOWN_DATA);
    let ready = get(gw.addr, "/readyz").await;
    assert_eq!(ready.status, 200);
    assert!(
        ready.body.contains(r#""state":"failing""#),
        "the missing file must show: {}",
        ready.body
    );
}

#[tokio::test]
async fn shutdown_flushes_the_call_journal() {
    let mut gw = start("").await;
    for _ in 0..20 {
        let reply = soap(
            gw.addr,
            &incoming_call_envelope("89235292926", OPERATOR_KEY),
        )
        .await;
        assert_eq!(reply.status, 200);
    }
    gw.stop().await;
    let dir = gw.dir;
    let gw = start_in(dir, "").await;
    let calls = gw
        .gateway()
        .store()
        .calls(Some(OPERATOR_KEY), None, 100)
        .await
        .expect("journal");
    assert_eq!(calls.len(), 20);
}
