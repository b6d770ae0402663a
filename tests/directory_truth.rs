//! "The version received last answers", before and after a restart: a
//! record is received when its content changes, whichever source brings it,
//! and nothing else (a reload, an edit of another line, a new change
//! marker alone) moves it.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;

const BEARER: &str = "Authorization: Bearer api-token-for-tests";

fn line(id: &str, name: &str, manager: &str, phone: &str, version: Option<&str>) -> String {
    let mut record = serde_json::json!({
        "id": id, "name": name, "manager_phone": manager, "phones": [phone],
    });
    if let Some(v) = version {
        record["data_version"] = v.into();
    }
    format!("{record}\n")
}

/// The SayName answer for `number`: (title, manager's phone).
async fn answer(addr: SocketAddr, number: &str) -> (String, String) {
    let reply = soap(addr, &say_name_envelope(number)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let data = say_name_data(&reply);
    let field = |tag| element_text(&data, tag).unwrap_or_default().to_owned();
    (field("title"), field("phone"))
}

async fn push(addr: SocketAddr, records: &[serde_json::Value]) {
    let body = serde_json::Value::from(records.to_vec()).to_string();
    let reply = request(
        addr,
        "POST",
        "/api/v1/counterparties",
        &["Content-Type: application/json", BEARER],
        body.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

/// Writes the directory file whole (to a temporary name, then renamed, as
/// the README asks) and waits until `number` answers `title`.
async fn write_file_and_wait(gw: &TestGateway, text: &str, number: &str, title: &str) {
    let tmp = gw.dir.path().join("counterparties.jsonl.tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, gw.directory_file()).expect("rename");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while answer(gw.addr, number).await.0 != title {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the file change was not taken within 20 s ({number} should answer {title:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the file source's snapshot is saved with what it has now.
async fn wait_saved(gw: &TestGateway) {
    let gateway = gw.gateway();
    let expected = gateway
        .directory()
        .snapshot()
        .source("file")
        .and_then(|s| s.fingerprint.clone());
    for _ in 0..500 {
        let saved = gateway
            .store()
            .source_fingerprint("file")
            .await
            .expect("store");
        if saved.is_some() && saved == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the file's snapshot was not saved");
}

async fn restart(mut gw: TestGateway) -> TestGateway {
    wait_saved(&gw).await;
    gw.stop().await;
    start_in(gw.dir, "").await
}

#[tokio::test]
async fn an_edit_of_another_line_never_undoes_a_push_and_a_restart_agrees() {
    let file = line("c1", "FILE version", "201", "89160000001", None);
    let gw = start_with(&file, "").await;
    assert_eq!(
        answer(gw.addr, "89160000001").await,
        ("FILE version".into(), "201".into())
    );
    // A millisecond apart at least: receive times are kept to the millisecond.
    tokio::time::sleep(Duration::from_millis(5)).await;
    push(
        gw.addr,
        &[serde_json::json!({"id": "c1", "name": "PUSHED version", "manager_phone": "299", "phones": ["89160000001"]})],
    )
    .await;
    assert_eq!(
        answer(gw.addr, "89160000001").await,
        ("PUSHED version".into(), "299".into())
    );

    // An unrelated line is appended: c1's own line did not change.
    let edited = format!("{file}{}", line("c2", "Second", "202", "89160000002", None));
    write_file_and_wait(&gw, &edited, "89160000002", "Second").await;
    assert_eq!(
        answer(gw.addr, "89160000001").await,
        ("PUSHED version".into(), "299".into()),
        "the file re-read c1 but did not receive it again"
    );
    let gw = restart(gw).await;
    assert_eq!(
        answer(gw.addr, "89160000001").await,
        ("PUSHED version".into(), "299".into()),
        "a restart agrees"
    );

    // Now c1's own line changes: the file brings a newer c1.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let changed = format!(
        "{}{}",
        line("c1", "FILE version 2", "203", "89160000001", None),
        line("c2", "Second", "202", "89160000002", None)
    );
    write_file_and_wait(&gw, &changed, "89160000001", "FILE version 2").await;
    let gw = restart(gw).await;
    assert_eq!(
        answer(gw.addr, "89160000001").await,
        ("FILE version 2".into(), "203".into())
    );
}

#[tokio::test]
async fn a_changed_record_under_an_unchanged_data_version_is_taken_and_kept_after_a_restart() {
    let gw = start_with(
        &line("c1", "Old name", "201", "89160000001", Some("v1")),
        "",
    )
    .await;
    assert_eq!(answer(gw.addr, "89160000001").await.0, "Old name");
    // Renamed and renumbered by hand, the marker left as it was.
    write_file_and_wait(
        &gw,
        &line("c1", "New name", "201", "89160000002", Some("v1")),
        "89160000002",
        "New name",
    )
    .await;
    assert_eq!(
        answer(gw.addr, "89160000001").await.0,
        "",
        "the old phone is gone"
    );
    let gw = restart(gw).await;
    assert_eq!(answer(gw.addr, "89160000002").await.0, "New name");
    assert_eq!(answer(gw.addr, "89160000001").await.0, "");
}

#[tokio::test]
async fn a_new_data_version_alone_does_not_undo_a_push() {
    let gw = start_with(&line("c1", "FILE", "201", "89160000001", Some("v1")), "").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    push(
        gw.addr,
        &[serde_json::json!({"id": "c1", "name": "PUSHED", "phones": ["89160000001"]})],
    )
    .await;
    assert_eq!(answer(gw.addr, "89160000001").await.0, "PUSHED");
    // Same content, a new marker, and a second line to see the reload by.
    let text = format!(
        "{}{}",
        line("c1", "FILE", "201", "89160000001", Some("v2")),
        line("c2", "Second", "202", "89160000002", None)
    );
    write_file_and_wait(&gw, &text, "89160000002", "Second").await;
    assert_eq!(answer(gw.addr, "89160000001").await.0, "PUSHED");
    let gw = restart(gw).await;
    assert_eq!(answer(gw.addr, "89160000001").await.0, "PUSHED");
}

#[tokio::test]
async fn a_push_of_the_same_content_again_keeps_its_receive_time() {
    let gw = start_with(&line("c1", "FILE", "201", "89160000001", None), "").await;
    let pushed = serde_json::json!({"id": "c1", "name": "PUSHED", "phones": ["89160000001"]});
    tokio::time::sleep(Duration::from_millis(5)).await;
    push(gw.addr, std::slice::from_ref(&pushed)).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    // The file's c1 changes after the push: the file's is now the newer.
    write_file_and_wait(
        &gw,
        &line("c1", "FILE 2", "201", "89160000001", None),
        "89160000001",
        "FILE 2",
    )
    .await;
    // Pushing the very same content again is not a change.
    push(gw.addr, std::slice::from_ref(&pushed)).await;
    assert_eq!(answer(gw.addr, "89160000001").await.0, "FILE 2");
    let gw = restart(gw).await;
    assert_eq!(answer(gw.addr, "89160000001").await.0, "FILE 2");
}

#[tokio::test]
async fn a_deleted_file_record_stays_deleted_until_its_own_line_changes() {
    let file = format!(
        "{}{}",
        line("c4", "Fourth", "204", "89160000004", None),
        line("c5", "Fifth", "205", "89160000005", None)
    );
    let gw = start_with(&file, "").await;
    let deleted = request(
        gw.addr,
        "DELETE",
        "/api/v1/counterparties/c4",
        &[BEARER],
        b"",
    )
    .await;
    assert_eq!(deleted.status, 200, "{}", deleted.body);
    assert_eq!(answer(gw.addr, "89160000004").await.0, "");
    // SIGHUP (a reload of the same file) and a restart keep it deleted.
    gw.gateway().reload();
    let gw = restart(gw).await;
    assert_eq!(answer(gw.addr, "89160000004").await.0, "");
    // Another line changes: c4 stays deleted.
    let edited = format!(
        "{}{}",
        line("c4", "Fourth", "204", "89160000004", None),
        line("c5", "Fifth, edited", "205", "89160000005", None)
    );
    write_file_and_wait(&gw, &edited, "89160000005", "Fifth, edited").await;
    assert_eq!(answer(gw.addr, "89160000004").await.0, "");
    // c4's own line changes: the file brings it again.
    let again = format!(
        "{}{}",
        line("c4", "Fourth, back", "204", "89160000004", None),
        line("c5", "Fifth, edited", "205", "89160000005", None)
    );
    write_file_and_wait(&gw, &again, "89160000004", "Fourth, back").await;
    let gw = restart(gw).await;
    assert_eq!(answer(gw.addr, "89160000004").await.0, "Fourth, back");
    // The spent tombstone is forgotten by the store.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !gw
        .gateway()
        .store()
        .load_tombstones()
        .await
        .expect("tombstones")
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the spent tombstone was not forgotten"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn foreign_callers_keep_their_country_and_never_get_a_russian_clients_card() {
    // Ryazan's 8 (4912) 34-56-78 and a Vietnamese client, +84 91 234 5678.
    let file = format!(
        "{}{}{}",
        line("ryazan", "Рязань", "201", "8 (4912) 34-56-78", None),
        line("hanoi", "Hanoi Trading", "202", "+84 91 234 5678", None),
        line("minsk", "Минск", "203", "+375 29 123-45-67", None)
    );
    let gw = start_with(&file, "").await;
    // As the PBX may send them: with +, with 00 or 810, or as bare digits.
    for (number, title) in [
        ("+84912345678", "Hanoi Trading"),
        ("0084912345678", "Hanoi Trading"),
        ("84912345678", "Рязань"),
        ("+74912345678", "Рязань"),
        ("+375291234567", "Минск"),
        ("00375291234567", "Минск"),
        ("810375291234567", "Минск"),
        ("375291234567", "Минск"),
        ("+82 2 1234 5678", ""),
        ("+81312345678", ""),
    ] {
        assert_eq!(answer(gw.addr, number).await.0, title, "{number}");
    }
    // The pop-up and the journal carry the caller's own E.164 number.
    let reply = soap(
        gw.addr,
        &incoming_call_envelope("+81 3 1234 5678", OPERATOR_KEY),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let calls = gw
        .gateway()
        .store()
        .calls(Some(OPERATOR_KEY), None, 1)
        .await
        .expect("journal");
    assert_eq!(calls[0].number, "+81312345678");
    assert_eq!(calls[0].counterparty_id, None);
}

#[tokio::test]
async fn unusable_phones_are_dropped_and_counted_and_never_indexed_as_short_keys() {
    // A zero-width space once cut this number to the key 8916, an extension.
    let file = line("z", "Zero-width", "201", "8916\u{200b}3000101", None)
        + &line("short", "Short", "202", "8916300", None);
    let gw = start_with(&file, "").await;
    assert_eq!(answer(gw.addr, "89163000101").await.0, "Zero-width");
    assert_eq!(answer(gw.addr, "8916").await.0, "", "no short key");
    assert_eq!(
        answer(gw.addr, "8916300").await.0,
        "",
        "7 digits are no number"
    );
    let metrics = get(gw.addr, "/metrics").await.body;
    assert!(
        metrics.contains(r#"cti_directory_unusable_phones_total{source="file"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn what_reaches_the_phones_display_is_clean_and_a_bad_manager_phone_is_refused() {
    let file = line(
        "bidi",
        "ООО\u{202e} Ромашка\nи Ко\u{2028}\u{feff}",
        "244",
        "89160000007",
        None,
    );
    let gw = start_with(&file, "").await;
    assert_eq!(
        answer(gw.addr, "89160000007").await,
        ("ООО Ромашка и Ко".into(), "244".into())
    );
    let body = serde_json::json!([{"id": "m", "name": "M", "manager_phone": "2<4>&4\n", "phones": ["89160000008"]}])
        .to_string();
    let reply = request(
        gw.addr,
        "POST",
        "/api/v1/counterparties",
        &["Content-Type: application/json", BEARER],
        body.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 422, "{}", reply.body);
    assert!(
        reply.body.contains("\"field\":\"manager_phone\""),
        "{}",
        reply.body
    );
    assert_eq!(answer(gw.addr, "89160000008").await.0, "");
}
