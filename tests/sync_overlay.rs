//! CRM overlays on records 1C owns (issue 17, step c), seen from outside: a
//! gateway reading a mock 1C base, an overlay set through the directory's
//! API (there is no CRM module yet), and SayName asked over SOAP as the PBX
//! does; the card over a real WebSocket.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cti_gateway::config::SyncSystemConfig;
use cti_gateway::directory::model::Link;
use cti_gateway::directory::{Overlay, OverlayManager};
use cti_gateway::phone::normalize;
use futures_util::StreamExt;
use serde_json::Value;
use support::mock_onec::{guid, MockCounterparty, MockOnec};
use support::*;

/// The 1C record's number and its responsible manager's extension there.
const NUMBER: &str = "89250452343";
const ONEC_EXTENSION: &str = "244";
/// A number only the CRM knows.
const CRM_NUMBER: &str = "89250452399";
const TEMPLATE: &str = "https://portal.example/crm/company/details/{id}/";

/// `[[manager]]`s: bitrix24 users 17 and 18.
const MANAGERS: &str = r#"
[[manager]]
extension = "301"
name = "Смирнова Ольга"
bitrix24_user_id = "17"
[[manager]]
extension = "302"
name = "Петров Иван"
bitrix24_user_id = "18"
"#;

fn alpha() -> MockCounterparty {
    MockCounterparty::new(guid(1), "ООО \"Альфа\"")
        .inn("7701000001", "770101001")
        .extra("ДобавочныйМенеджера", ONEC_EXTENSION)
        .phone("+7 (925) 045-23-43", "79250452343")
}

/// A gateway reading `alpha` from a mock 1C, with `precedence` and the
/// managers above; returned once 1C's read is in.
async fn gateway(precedence: &str) -> (TestGateway, MockOnec) {
    let mock = MockOnec::start().await;
    mock.upsert(alpha());
    let extra = format!(
        r#"
[onec]
odata_url = "{url}"
username = "odata"
password = "{password}"
refresh = "1h"
lookup_budget_ms = 0
manager_phone_field = "ДобавочныйМенеджера"
timeout = "2s"
[sync]
manager_precedence = {precedence}
[sync.bitrix24]
link_templates = {{ company = "{TEMPLATE}" }}
{MANAGERS}"#,
        url = mock.url(),
        password = support::mock_onec::PASSWORD,
    );
    let gw = start_with("", &extra).await;
    let directory = Arc::clone(gw.gateway().directory());
    eventually(Duration::from_secs(10), "1C's read", || {
        directory.lookup_id(&guid(1)).is_some()
    })
    .await;
    (gw, mock)
}

/// The overlay a bitrix24 module would set: responsible `user`, the
/// company's page from the link template, `phones` it knows.
fn bitrix24(user: &str, company: &str, phones: &[&str]) -> Overlay {
    let templates = SyncSystemConfig {
        link_templates: [("company".to_owned(), TEMPLATE.to_owned())].into(),
        ..Default::default()
    };
    Overlay {
        managers: vec![OverlayManager {
            system: "bitrix24".into(),
            user_id: Some(user.into()),
            ..Default::default()
        }],
        links: vec![Link {
            system: "bitrix24".into(),
            kind: "company".into(),
            url: templates.link("company", company).expect("template").into(),
        }],
        phones: phones.iter().map(|p| (*p).into()).collect(),
        ..Default::default()
    }
}

fn set(gw: &TestGateway, overlay: Option<Overlay>) {
    gw.gateway()
        .directory()
        .set_overlays(vec![(guid(1).into(), overlay)])
        .expect("a valid overlay");
}

/// The extension SayName routes `number` to ("" when none).
async fn routed_to(addr: SocketAddr, number: &str) -> String {
    let reply = soap(addr, &say_name_envelope(number)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let data = say_name_data(&reply);
    element_text(&data, "phone").unwrap_or_default().to_owned()
}

#[tokio::test]
async fn precedence_routes_say_name_to_the_crms_manager_or_to_1cs() {
    let (mut crm_first, _mock) = gateway(r#"["bitrix24", "onec"]"#).await;
    assert_eq!(routed_to(crm_first.addr, NUMBER).await, ONEC_EXTENSION);
    set(&crm_first, Some(bitrix24("17", "2919", &[])));
    assert_eq!(routed_to(crm_first.addr, NUMBER).await, "301");
    // 1C's snapshot never holds the CRM's values.
    let entry = crm_first
        .gateway()
        .directory()
        .lookup_id(&guid(1))
        .expect("alpha");
    assert!(!entry.json().contains("301") && !entry.json().contains("bitrix24"));
    crm_first.stop().await;

    let (mut onec_first, _mock) = gateway(r#"["onec", "push", "file", "bitrix24"]"#).await;
    set(&onec_first, Some(bitrix24("17", "2919", &[])));
    assert_eq!(routed_to(onec_first.addr, NUMBER).await, ONEC_EXTENSION);
    onec_first.stop().await;
}

#[tokio::test]
async fn a_new_responsible_users_extension_answers_once_the_overlay_changes() {
    let (mut gw, _mock) = gateway(r#"["bitrix24", "onec"]"#).await;
    set(&gw, Some(bitrix24("17", "2919", &[])));
    assert_eq!(routed_to(gw.addr, NUMBER).await, "301");
    set(&gw, Some(bitrix24("18", "2919", &[])));
    assert_eq!(routed_to(gw.addr, NUMBER).await, "302");
    // The overlay taken away: 1C's manager again.
    set(&gw, None);
    assert_eq!(routed_to(gw.addr, NUMBER).await, ONEC_EXTENSION);
    gw.stop().await;
}

#[tokio::test]
async fn an_unmapped_user_gives_no_extension_and_sets_the_gauge() {
    let (mut gw, _mock) = gateway(r#"["bitrix24", "onec"]"#).await;
    set(&gw, Some(bitrix24("99", "2919", &[])));
    // The CRM ranks first, but its user maps to nobody: 1C's answers.
    assert_eq!(routed_to(gw.addr, NUMBER).await, ONEC_EXTENSION);
    let metrics = get(gw.addr, "/metrics").await.body;
    assert!(
        metrics.contains(r#"cti_sync_unmapped_managers{system="bitrix24"} 1"#),
        "{metrics}"
    );
    set(&gw, Some(bitrix24("17", "2919", &[])));
    assert_eq!(routed_to(gw.addr, NUMBER).await, "301");
    let metrics = get(gw.addr, "/metrics").await.body;
    assert!(
        metrics.contains(r#"cti_sync_unmapped_managers{system="bitrix24"} 0"#),
        "{metrics}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn while_an_overlay_adds_a_phone_no_reader_sees_it_unknown_or_twice() {
    let (mut gw, _mock) = gateway(r#"["bitrix24", "onec"]"#).await;
    let directory = Arc::clone(gw.gateway().directory());
    set(&gw, Some(bitrix24("17", "2919", &[CRM_NUMBER])));
    assert_eq!(routed_to(gw.addr, CRM_NUMBER).await, "301");
    let own = normalize(NUMBER).expect("number");
    let added = normalize(CRM_NUMBER).expect("number");
    // Readers of whole indexes while the overlay is set again and again
    // (its manager changing, its number kept).
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let directory = Arc::clone(&directory);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut seen = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let index = directory.snapshot();
                    for phone in [own, added] {
                        let entry = index.by_phone(phone).expect("never unknown");
                        assert_eq!(entry.id(), guid(1));
                    }
                    assert_eq!(
                        (index.phone_count(), index.ambiguous_phones()),
                        (2, 0),
                        "a number listed twice"
                    );
                    seen += 1;
                }
                seen
            })
        })
        .collect();
    for round in 0..200 {
        let user = if round % 2 == 0 { "18" } else { "17" };
        set(&gw, Some(bitrix24(user, "2919", &[CRM_NUMBER])));
        if round % 50 == 0 {
            let expected = if user == "18" { "302" } else { "301" };
            assert_eq!(routed_to(gw.addr, CRM_NUMBER).await, expected);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        assert!(reader.join().expect("a reader saw a bad index") > 0);
    }
    // Taken away, the CRM's number is unknown again; 1C's stays.
    set(&gw, None);
    assert_eq!(routed_to(gw.addr, NUMBER).await, ONEC_EXTENSION);
    assert!(directory.lookup_phone(added).is_none());
    gw.stop().await;
}

#[tokio::test]
async fn a_websocket_card_carries_links_manager_name_and_manager_source() {
    let (mut gw, _mock) = gateway(r#"["bitrix24", "onec"]"#).await;
    set(&gw, Some(bitrix24("17", "29 19", &[])));
    let url = format!("ws://{}/operator/ws?token={OPERATOR_TOKEN}", gw.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("handshake");
    let reply = soap(gw.addr, &incoming_call_envelope(NUMBER, OPERATOR_KEY)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let text = loop {
        let frame = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a card within 5 s")
            .expect("open")
            .expect("a frame");
        if frame.is_text() {
            break frame.into_text().expect("text").to_string();
        }
    };
    let card: Value = serde_json::from_str(&text).expect("JSON");
    let c = &card["counterparty"];
    assert_eq!(c["id"], guid(1));
    assert_eq!(c["manager_phone"], "301");
    assert_eq!(c["manager_name"], "Смирнова Ольга");
    assert_eq!(c["manager_source"], "bitrix24");
    assert_eq!(
        c["links"],
        serde_json::json!([{
            "system": "bitrix24",
            "kind": "company",
            "url": "https://portal.example/crm/company/details/29%2019/",
        }])
    );
    gw.stop().await;
}

/// A sync store in `dir`, as the gateway opens it.
fn sync_store(dir: &std::path::Path) -> cti_gateway::store::Store {
    cti_gateway::store::Store::open_with_options(
        &dir.join("gw.sync.sqlite"),
        &prometheus::Registry::new(),
        &cti_gateway::store::OpenOptions::sync(),
    )
    .expect("the sync store opens")
}

/// A directory mapping bitrix24 users 17 and 18 as [`MANAGERS`] does, CRM first.
fn directory_with_managers() -> cti_gateway::directory::Directory {
    use cti_gateway::directory::{Directory, Manager, Managers};
    let mut managers = Managers::new(["bitrix24", "onec"]);
    for (user, extension) in [("17", "301"), ("18", "302")] {
        managers.map(
            "bitrix24",
            user,
            Manager {
                extension: extension.into(),
                name: format!("user {user}").into(),
            },
        );
    }
    Directory::new(cti_gateway::soap::say_name_payload).with_managers(managers)
}

#[tokio::test]
async fn overlays_are_stored_before_they_apply_and_set_again_at_start() {
    use cti_gateway::sources::overlays;
    let dir = tempfile::tempdir().expect("temp dir");
    let record = || {
        serde_json::from_str::<cti_gateway::directory::Counterparty>(&format!(
            r#"{{"id":"k1","name":"Альфа","manager_phone":"244","phones":["{NUMBER}"]}}"#
        ))
        .expect("record")
    };
    let answer = |directory: &cti_gateway::directory::Directory| {
        directory
            .lookup_phone(normalize(NUMBER).expect("number"))
            .and_then(|e| e.manager())
            .and_then(|m| m.extension)
            .map(String::from)
    };
    {
        let store = sync_store(dir.path());
        let directory = directory_with_managers();
        directory.replace_source("onec", vec![record()], None, std::time::SystemTime::now());
        overlays::set(
            &store,
            &directory,
            vec![
                ("k1".into(), Some(bitrix24("17", "1", &[]))),
                ("k2".into(), Some(bitrix24("18", "2", &[]))),
            ],
        )
        .await
        .expect("stored and set");
        assert_eq!(answer(&directory).as_deref(), Some("301"));
        // A bad overlay is refused whole: nothing stored, nothing set.
        let mut bad = bitrix24("18", "1", &[]);
        bad.links[0].url = "javascript:alert(1)".into();
        let refused = overlays::set(
            &store,
            &directory,
            vec![("k1".into(), Some(bad)), ("k2".into(), None)],
        )
        .await;
        assert!(
            matches!(refused, Err(overlays::OverlayWriteError::Invalid(_))),
            "{refused:?}"
        );
        assert_eq!(answer(&directory).as_deref(), Some("301"));
        overlays::set(&store, &directory, vec![("k2".into(), None)])
            .await
            .expect("a removal");
        store.close().await;
    }
    // A restart: the snapshot's record, then the stored overlays.
    let store = sync_store(dir.path());
    let directory = directory_with_managers();
    directory.replace_source("onec", vec![record()], None, std::time::SystemTime::now());
    assert_eq!(answer(&directory).as_deref(), Some("244"));
    assert_eq!(overlays::load(&store, &directory).await.expect("loaded"), 1);
    assert_eq!(answer(&directory).as_deref(), Some("301"));
    assert!(!directory.has_overlay("k2"));
    store.close().await;
}
