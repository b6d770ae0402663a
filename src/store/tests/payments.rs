//! Payments in the sync store: a version once, its event decided from the
//! ref's latest state, one outbox row per subscriber in the same
//! transaction, and the cursor.

use super::*;

fn open_sync(dir: &Path) -> Store {
    let path = dir.join("var").join("cti-gateway.sync.sqlite");
    Store::open_with_options(&path, &Registry::new(), &OpenOptions::sync())
        .expect("sync store opens")
}

fn version(key: &str, version: &str, posted: bool) -> NewPayment {
    NewPayment {
        ref_key: key.to_owned(),
        version: version.to_owned(),
        posted,
        date: "2026-12-05T10:00:00".to_owned(),
        body: format!(r#"{{"ref":"{key}","version":"{version}"}}"#),
    }
}

fn batch(payments: Vec<NewPayment>, cursor: Option<(&str, &str)>) -> PaymentsBatch {
    PaymentsBatch {
        source: "odata".into(),
        payments,
        subscribers: vec!["crm".into(), "erp".into()],
        cursor: cursor.map(|(d, r)| (d.to_owned(), r.to_owned())),
    }
}

#[tokio::test]
async fn each_version_makes_its_event_once_with_an_outbox_row_per_subscriber() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_sync(dir.path());
    let done = store
        .payments_commit(batch(
            vec![
                version("a", "1", true),
                version("b", "1", false),
                version("a", "1", true),
            ],
            Some(("2026-12-05T10:00:00", "b")),
        ))
        .await
        .expect("commit");
    assert_eq!((done.accepted, done.duplicates), (2, 1));
    assert_eq!(done.events, [PaymentEvent::Posted], "a draft is no news");
    // Read again: nothing.
    let again = store
        .payments_commit(batch(vec![version("a", "1", true)], None))
        .await
        .expect("again");
    assert_eq!((again.accepted, again.duplicates), (0, 1));
    assert!(again.events.is_empty());
    let next = store
        .payments_commit(batch(
            vec![
                version("a", "2", true),
                version("a", "3", false),
                version("b", "2", true),
            ],
            None,
        ))
        .await
        .expect("next");
    assert_eq!(
        next.events,
        [
            PaymentEvent::Changed,
            PaymentEvent::Reversed,
            PaymentEvent::Posted
        ]
    );
    let rows = store
        .outbox_page(OutboxQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("outbox");
    assert_eq!(rows.len(), 8, "4 events, 2 subscribers");
    assert!(rows.iter().all(|r| r.kind == PAYMENT_KIND));
    assert_eq!(rows[0].record_key, "payment:a");
    assert!(
        rows[0]
            .body
            .starts_with(r#"{"event":"payment.posted","source":"odata","payment":{"ref":"a""#),
        "{}",
        rows[0].body
    );
    let cursor = store
        .payments_cursor("odata")
        .await
        .expect("cursor")
        .expect("moved");
    assert_eq!(
        (cursor.date.as_str(), cursor.ref_key.as_str()),
        ("2026-12-05T10:00:00", "b")
    );
    let posted = store
        .payments_posted_since("odata", "2026-12-01T00:00:00")
        .await
        .expect("posted");
    assert_eq!(
        posted
            .iter()
            .map(|p| p.ref_key.as_str())
            .collect::<Vec<_>>(),
        ["b"],
        "a is reversed"
    );
    let a = store.payment_get("a").await.expect("get").expect("a");
    assert_eq!(
        (a.version.as_str(), a.posted, a.event),
        ("3", false, Some(PaymentEvent::Reversed))
    );
    store.close().await;
}
