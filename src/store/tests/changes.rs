//! Pushed changes (`Store::apply_changes`): upserts into one source,
//! removals from it and tombstones for the others' copies, in one
//! transaction, with row counts kept true so that the snapshot still loads
//! complete.

use super::*;
use crate::directory::Tombstone;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upserted_records_load_from_the_snapshot_as_a_complete_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_path(dir.path());
    let store = open(&path);
    let before = SystemTime::now() - Duration::from_millis(1);
    let first: Arc<[Counterparty]> =
        vec![counterparty("p-2", "Второй"), counterparty("p-1", "Первый")].into();
    let applied = store
        .apply_changes("push", first, &[], &[])
        .await
        .expect("first push");
    assert_eq!(
        (applied.inserted, applied.updated, applied.removed),
        (2, 0, 0)
    );

    let snapshot = store.load_snapshot().await.expect("load");
    let push = by_source(&snapshot, "push");
    assert_eq!(ids(push), ["p-1", "p-2"]);
    assert_eq!(&*push.records[0].name, "Первый");
    assert_eq!(
        push.fingerprint.as_deref(),
        Some("push"),
        "a fingerprint, so the load is complete"
    );
    assert!(push.saved_at >= before, "saved_at is the push's time");

    // One changed, one new, one the same: only what differs is written.
    let second: Arc<[Counterparty]> = vec![
        counterparty("p-1", "Первый, изменён"),
        counterparty("p-3", "Третий"),
        counterparty("p-2", "Второй"),
    ]
    .into();
    let applied = store
        .apply_changes("push", second, &[], &[])
        .await
        .expect("second push");
    assert_eq!(
        (applied.inserted, applied.updated, applied.unchanged),
        (1, 1, 1)
    );
    let snapshot = store.load_snapshot().await.expect("load again");
    let push = by_source(&snapshot, "push");
    assert_eq!(ids(push), ["p-1", "p-2", "p-3"]);
    assert_eq!(&*push.records[0].name, "Первый, изменён");
    assert_eq!(
        raw_source_row(&path, "push"),
        Some((Some("push".into()), 3))
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removal_takes_the_sources_own_row_and_tombstones_keep_the_others_rows_and_fingerprints()
{
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_path(dir.path());
    let store = open(&path);
    let with_shared = |prefix: &str| -> Arc<[Counterparty]> {
        let mut v = records(prefix, 3).to_vec();
        v.push(counterparty("shared", prefix));
        v.into()
    };
    store
        .replace_source("file", "f1", with_shared("file"))
        .await
        .expect("file");
    store
        .replace_source("onec", "o1", with_shared("onec"))
        .await
        .expect("onec");
    store
        .apply_changes("push", with_shared("push"), &[], &[])
        .await
        .expect("push");

    let applied = store
        .apply_changes::<Counterparty>(
            "push",
            Arc::from([]),
            &boxed(&["shared", "file-0001", "absent"]),
            &[
                tombstone("shared", "file"),
                tombstone("shared", "onec"),
                tombstone("file-0001", "file"),
            ],
        )
        .await
        .expect("removal");
    assert_eq!(applied.removed, 1, "only the push source's own row");
    assert_eq!(applied.removed_from, [("push".to_owned(), 1)]);
    assert_eq!(applied.tombstones, 3);

    let snapshot = store.load_snapshot().await.expect("load");
    assert_eq!(
        ids(by_source(&snapshot, "file")),
        ["file-0000", "file-0001", "file-0002", "shared"],
        "other sources' rows stay as their sources hold them"
    );
    assert_eq!(
        ids(by_source(&snapshot, "onec")),
        ["onec-0000", "onec-0001", "onec-0002", "shared"]
    );
    let mut kept = store.load_tombstones().await.expect("tombstones");
    kept.sort_by(|a, b| (&a.id, &a.source).cmp(&(&b.id, &b.source)));
    assert_eq!(
        kept,
        [
            tombstone("file-0001", "file"),
            tombstone("shared", "file"),
            tombstone("shared", "onec")
        ]
    );
    assert_eq!(
        ids(by_source(&snapshot, "push")),
        ["push-0000", "push-0001", "push-0002"]
    );
    // Complete loads: fingerprints kept, so the file is not read again and
    // what was removed stays removed.
    for (source, fp) in [("file", "f1"), ("onec", "o1"), ("push", "push")] {
        assert_eq!(
            by_source(&snapshot, source).fingerprint.as_deref(),
            Some(fp),
            "{source}"
        );
    }
    assert_eq!(
        store
            .source_fingerprint("file")
            .await
            .expect("fp")
            .as_deref(),
        Some("f1")
    );
    assert_counts_match_rows(&path);

    // Nothing to remove: nothing changes, and that is said.
    let applied = store
        .apply_changes::<Counterparty>("push", Arc::from([]), &boxed(&["shared"]), &[])
        .await
        .expect("removal of an absent id");
    assert_eq!(applied, AppliedChanges::default());
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_counts_stay_equal_to_rows_through_mixed_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_path(dir.path());
    let store = open(&path);
    store
        .replace_source("file", "f1", records("x", 50))
        .await
        .expect("file");
    for round in 0..20usize {
        // Upserts with a repeated id, overlapping the file's ids and earlier rounds.
        let upserts: Arc<[Counterparty]> = (0..10)
            .map(|i| {
                let n = (round * 7 + i * 3) % 40;
                counterparty(&format!("x-{n:04}"), &format!("round {round}"))
            })
            .chain([counterparty("x-0001", &format!("last of round {round}"))])
            .collect();
        let removals: Vec<Box<str>> = (0..4)
            .map(|i| format!("x-{:04}", (round * 11 + i * 13) % 60).into())
            .collect();
        store
            .apply_changes("push", upserts, &removals, &[])
            .await
            .expect("changes");
        assert_counts_match_rows(&path);
    }
    let snapshot = store.load_snapshot().await.expect("load");
    assert_eq!(
        by_source(&snapshot, "file").fingerprint.as_deref(),
        Some("f1")
    );
    assert_eq!(
        by_source(&snapshot, "push").fingerprint.as_deref(),
        Some("push")
    );
    // An id both removed and upserted in one change is in the upserted
    // source; another source's row of it stays (a tombstone would hide it).
    store
        .apply_changes(
            "push",
            Arc::from([counterparty("x-0045", "moved")]),
            &boxed(&["x-0045"]),
            &[],
        )
        .await
        .expect("remove and upsert");
    let snapshot = store.load_snapshot().await.expect("load");
    assert!(ids(by_source(&snapshot, "file")).contains(&"x-0045"));
    assert!(ids(by_source(&snapshot, "push")).contains(&"x-0045"));
    assert_counts_match_rows(&path);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_fails_commits_none_of_its_parts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_path(dir.path());
    let store = open(&path);
    store
        .replace_source("file", "f1", records("file", 3))
        .await
        .expect("file");
    store
        .apply_changes("push", Arc::from([counterparty("kept", "kept")]), &[], &[])
        .await
        .expect("push");
    store
        .exec_on_writer(
            "CREATE TEMP TRIGGER fail_boom BEFORE INSERT ON counterparties
             WHEN NEW.id = 'boom' BEGIN SELECT RAISE(ABORT, 'injected'); END",
        )
        .await
        .expect("trigger");
    let err = store
        .apply_changes(
            "push",
            Arc::from([counterparty("new", "new"), counterparty("boom", "boom")]),
            &boxed(&["file-0001", "kept"]),
            &[tombstone("file-0001", "file")],
        )
        .await
        .expect_err("the change fails");
    assert!(err.to_string().contains("injected"), "{err}");
    let snapshot = store.load_snapshot().await.expect("load");
    assert_eq!(
        ids(by_source(&snapshot, "file")),
        ["file-0000", "file-0001", "file-0002"]
    );
    assert_eq!(ids(by_source(&snapshot, "push")), ["kept"]);
    assert!(
        store
            .load_tombstones()
            .await
            .expect("tombstones")
            .is_empty(),
        "no tombstone of the failed change"
    );
    assert_counts_match_rows(&path);
    // The writer keeps serving.
    store
        .exec_on_writer("DROP TRIGGER fail_boom")
        .await
        .expect("drop trigger");
    store
        .apply_changes("push", Arc::from([counterparty("new", "new")]), &[], &[])
        .await
        .expect("the next change commits");
    store.close().await;
}

fn tombstone(id: &str, source: &str) -> Tombstone {
    Tombstone {
        id: id.into(),
        source: source.into(),
        content: 7,
    }
}
