//! `Store::sync_batch` (the inbound policy's writes in one transaction)
//! and `Store::requisites_delete`.

use super::*;

fn open_sync(path: &Path) -> Store {
    Store::open_with_options(path, &Registry::new(), &OpenOptions::sync())
        .expect("sync store opens")
}

fn key(local_id: &str) -> IdMapKey {
    IdMapKey {
        system: "crm".into(),
        kind: "company".into(),
        local_id: local_id.into(),
    }
}

/// A CRM-only record linked to 1C's: everything the policy writes for it.
fn linking_batch() -> SyncBatch {
    SyncBatch {
        unlinks: vec![key("crm:company:7")],
        closes: Vec::new(),
        links: vec![IdMapLink {
            system: "crm".into(),
            kind: "company".into(),
            local_id: "onec-guid".into(),
            remote_id: "7".into(),
            hash: Some(42),
        }],
        outbox: vec![NewOutboxRow {
            system: "crm".into(),
            kind: "company".into(),
            record_key: "onec-guid".into(),
            op: OutboxOp::Upsert,
            body: r#"{"id":"onec-guid"}"#.into(),
            hash: 43,
        }],
        conflicts: vec![NewConflict {
            system: "crm".into(),
            record_key: "onec-guid".into(),
            field: "inn".into(),
            ours: Some("7707083893".into()),
            theirs: Some("7707083894".into()),
            resolution: "1c_wins".into(),
        }],
        overlays: vec![
            (
                "onec-guid".into(),
                Some(r#"{"phones":["89160000007"]}"#.into()),
            ),
            ("crm:company:7".into(), None),
        ],
        snapshot_removals: vec![("crm".into(), "crm:company:7".into())],
    }
}

async fn conflicts(store: &Store) -> usize {
    store
        .conflicts_page(ConflictQuery {
            limit: 100,
            ..ConflictQuery::default()
        })
        .await
        .expect("conflicts")
        .len()
}

#[tokio::test]
async fn a_batch_commits_whole_or_not_at_all_and_a_retry_writes_no_conflict_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_sync(&dir.path().join("s.sync.sqlite"));
    // Before: the CRM-only record, its link, its overlay.
    let crm_only = Arc::from(vec![Counterparty {
        id: "crm:company:7".into(),
        name: "Семь".into(),
        phones: vec!["89160000007".into()],
        ..Default::default()
    }]);
    store
        .apply_changes("crm", crm_only, &[], &[])
        .await
        .expect("stored");
    store
        .idmap_link(IdMapLink {
            system: "crm".into(),
            kind: "company".into(),
            local_id: "crm:company:7".into(),
            remote_id: "7".into(),
            hash: Some(1),
        })
        .await
        .expect("linked");
    store
        .overlay_put(vec![("crm:company:7".into(), Some("{}".into()))])
        .await
        .expect("overlay");
    // The last write of the batch fails: nothing of it stays.
    store
        .exec_on_writer(
            "CREATE TRIGGER fail_overlay BEFORE INSERT ON overlay BEGIN SELECT RAISE(ABORT, 'disk trouble'); END",
        )
        .await
        .expect("trigger");
    assert!(store.sync_batch(linking_batch()).await.is_err());
    assert_eq!(conflicts(&store).await, 0);
    let outbox = store
        .outbox_page(OutboxQuery {
            limit: 100,
            ..OutboxQuery::default()
        })
        .await
        .expect("outbox");
    assert!(outbox.is_empty(), "{outbox:?}");
    let old = store
        .idmap_by_remote("crm", "company", "7")
        .await
        .expect("read")
        .expect("the old link stays");
    assert_eq!(old.local_id, "crm:company:7");
    assert!(store
        .overlay_get("crm:company:7")
        .await
        .expect("read")
        .is_some());
    // Tried again once the file takes writes: each write once.
    store
        .exec_on_writer("DROP TRIGGER fail_overlay")
        .await
        .expect("drop trigger");
    store.sync_batch(linking_batch()).await.expect("committed");
    assert_eq!(conflicts(&store).await, 1);
    let moved = store
        .idmap_by_remote("crm", "company", "7")
        .await
        .expect("read")
        .expect("linked");
    // The link's hash is the link's; the row queued with it is newer.
    assert_eq!(
        (moved.local_id.as_str(), moved.hash),
        ("onec-guid", Some(42))
    );
    let last = store.last_hashes("crm", "company").await.expect("hashes");
    assert_eq!(last.get("onec-guid"), Some(&43));
    assert!(store
        .idmap_get("crm", "company", "crm:company:7")
        .await
        .expect("read")
        .is_none());
    assert!(store
        .overlay_get("crm:company:7")
        .await
        .expect("read")
        .is_none());
    assert!(store
        .overlay_get("onec-guid")
        .await
        .expect("read")
        .is_some());
    let snapshot = store.load_snapshot().await.expect("snapshot");
    let crm = snapshot
        .iter()
        .find(|s| s.source == "crm")
        .expect("crm set");
    assert!(
        crm.records.is_empty(),
        "the CRM-only record left its source"
    );
    store.close().await;
}

#[tokio::test]
async fn requisites_of_deleted_records_are_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_sync(&dir.path().join("s.sync.sqlite"));
    store
        .requisites_put(vec![
            ("a".into(), r#"{"director":"A"}"#.into()),
            ("b".into(), r#"{"director":"B"}"#.into()),
        ])
        .await
        .expect("put");
    let n = store
        .requisites_delete(vec!["a".into(), "never".into()])
        .await
        .expect("deleted");
    assert_eq!(n, 1);
    assert_eq!(store.requisites_get("a").await.expect("read"), None);
    assert!(store.requisites_get("b").await.expect("read").is_some());
    store.close().await;
}
