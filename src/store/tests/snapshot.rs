//! Source snapshots: a replace brings a source's rows to its new records,
//! leaves the other sources alone and stores its fingerprint; plans made
//! before another write are not applied; forgetting a source; the
//! background store.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_round_trips_per_source_and_replacing_one_leaves_the_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&store_path(dir.path()));
    assert!(store.load_snapshot().await.expect("empty load").is_empty());

    let file = records("file", 3);
    let onec = records("onec", 5);
    store
        .replace_source("file", "f1", file.clone())
        .await
        .expect("save file");
    store
        .replace_source("onec", "o1", onec.clone())
        .await
        .expect("save onec");

    let snapshot = store.load_snapshot().await.expect("load");
    assert_eq!(snapshot.len(), 2);
    assert_eq!(by_source(&snapshot, "file").records, file.to_vec());
    assert_eq!(by_source(&snapshot, "onec").records, onec.to_vec());

    // Replace one source with fewer, different records: the other stays.
    let file2: Arc<[Counterparty]> = vec![counterparty("file-new", "ИП Иванов")].into();
    store
        .replace_source("file", "f2", file2.clone())
        .await
        .expect("replace file");
    let snapshot = store.load_snapshot().await.expect("load again");
    assert_eq!(by_source(&snapshot, "file").records, file2.to_vec());
    assert_eq!(by_source(&snapshot, "onec").records, onec.to_vec());

    // An empty source is kept as a source with no records.
    store
        .replace_source("file", "f3", Arc::<[Counterparty]>::from([]))
        .await
        .expect("empty");
    let snapshot = store.load_snapshot().await.expect("load empty source");
    assert!(by_source(&snapshot, "file").records.is_empty());
    assert_eq!(by_source(&snapshot, "onec").records.len(), 5);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_brings_rows_to_the_new_records_through_inserts_updates_and_deletes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&store_path(dir.path()));
    // Enough rows for several load chunks, in an order that is not the key's.
    let first: Vec<Counterparty> = (0..5_000).rev().map(realistic).collect();
    store
        .replace_source("onec", "v1", first.clone().into())
        .await
        .expect("v1");
    store
        .replace_source("file", "f1", records("file", 10))
        .await
        .expect("file");

    // Every 10th changed, every 7th gone, 300 new.
    let second: Vec<Counterparty> = first
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 7 != 0)
        .map(|(i, c)| {
            let mut c = c.clone();
            if i % 10 == 0 {
                c.manager_phone = Some("999".into());
            }
            c
        })
        .chain((10_000..10_300).map(realistic))
        .collect();
    store
        .replace_source("onec", "v2", second.clone().into())
        .await
        .expect("v2");
    let snapshot = store.load_snapshot().await.expect("load");
    assert_eq!(by_source(&snapshot, "onec").records, sorted_by_id(&second));
    assert_eq!(
        by_source(&snapshot, "onec").fingerprint.as_deref(),
        Some("v2")
    );
    assert_eq!(
        by_source(&snapshot, "file").records,
        records("file", 10).to_vec()
    );

    // The same records again: nothing to write, the fingerprint still moves.
    store
        .replace_source("onec", "v3", second.clone().into())
        .await
        .expect("v3");
    let snapshot = store.load_snapshot().await.expect("load");
    assert_eq!(by_source(&snapshot, "onec").records, sorted_by_id(&second));
    assert_eq!(
        store
            .source_fingerprint("onec")
            .await
            .expect("fp")
            .as_deref(),
        Some("v3")
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_made_before_another_snapshot_write_is_not_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&store_path(dir.path()));
    let wanted = records("a", 20);
    store
        .replace_source("s", "0", records("z", 5))
        .await
        .expect("s0");
    // A plan against the current rows...
    let stale = store
        .plan_replace("s", &held(&wanted))
        .await
        .expect("store open")
        .expect("planned");
    // ...then the rows change: applying the old plan would leave "b-*" rows.
    store
        .replace_source("s", "1", records("b", 7))
        .await
        .expect("s1");
    store
        .request(|reply| Command::ReplaceSource {
            source: "s".into(),
            fingerprint: "2".into(),
            records: held(&wanted),
            plan: Some(stale),
            reply,
        })
        .await
        .expect("replace with a stale plan");
    let snapshot = store.load_snapshot().await.expect("load");
    assert_eq!(by_source(&snapshot, "s").records, wanted.to_vec());
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_the_directory_holds_in_arcs_are_saved_as_they_are() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&store_path(dir.path()));
    let held: Arc<[Arc<Counterparty>]> = records("d", 3).iter().cloned().map(Arc::new).collect();
    store.replace_source("file", "f", held).await.expect("save");
    let snapshot = store.load_snapshot().await.expect("load");
    assert_eq!(
        by_source(&snapshot, "file").records,
        records("d", 3).to_vec()
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_ids_in_one_replace_keep_the_last() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&store_path(dir.path()));
    let recs: Arc<[Counterparty]> = vec![
        counterparty("1", "first"),
        counterparty("2", "other"),
        counterparty("1", "last"),
    ]
    .into();
    store.replace_source("file", "f", recs).await.expect("save");
    let snapshot = store.load_snapshot().await.expect("load");
    let names: Vec<&str> = by_source(&snapshot, "file")
        .records
        .iter()
        .map(|c| &*c.name)
        .collect();
    assert_eq!(names, ["last", "other"]);
    // The stored count matches the rows, so the load is not seen as incomplete.
    assert_eq!(
        by_source(&snapshot, "file").fingerprint.as_deref(),
        Some("f")
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fingerprint_is_stored_per_source() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&store_path(dir.path()));
    assert_eq!(store.source_fingerprint("file").await.expect("read"), None);
    store
        .replace_source("file", "sha256:abc", records("f", 2))
        .await
        .expect("save");
    store
        .replace_source("onec", "dv:42", records("o", 1))
        .await
        .expect("save");
    assert_eq!(
        store
            .source_fingerprint("file")
            .await
            .expect("read")
            .as_deref(),
        Some("sha256:abc")
    );
    assert_eq!(
        store
            .source_fingerprint("onec")
            .await
            .expect("read")
            .as_deref(),
        Some("dv:42")
    );
    store
        .replace_source("file", "sha256:def", records("f", 2))
        .await
        .expect("save");
    assert_eq!(
        store
            .source_fingerprint("file")
            .await
            .expect("read")
            .as_deref(),
        Some("sha256:def")
    );
    let snapshot = store.load_snapshot().await.expect("load");
    assert_eq!(
        by_source(&snapshot, "onec").fingerprint.as_deref(),
        Some("dv:42")
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replace_planned_before_a_change_is_walked_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&store_path(dir.path()));
    let wanted = records("a", 20);
    store
        .replace_source("s", "0", records("z", 5))
        .await
        .expect("s0");
    let stale = store
        .plan_replace("s", &held(&wanted))
        .await
        .expect("store open")
        .expect("planned");
    // A change adds a row the plan does not know about.
    store
        .apply_changes("s", Arc::from([counterparty("b-0000", "b")]), &[], &[])
        .await
        .expect("change");
    store
        .request(|reply| Command::ReplaceSource {
            source: "s".into(),
            fingerprint: "1".into(),
            records: held(&wanted),
            plan: Some(stale),
            reply,
        })
        .await
        .expect("replace with a stale plan");
    let snapshot = store.load_snapshot().await.expect("load");
    let want: Vec<&str> = wanted.iter().map(|c| &*c.id).collect();
    assert_eq!(
        ids(by_source(&snapshot, "s")),
        want,
        "no row the plan missed"
    );
    assert_eq!(by_source(&snapshot, "s").fingerprint.as_deref(), Some("1"));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_a_source_removes_its_rows_and_leaves_the_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_path(dir.path());
    let store = open(&path);
    store
        .replace_source("file", "f1", records("file", 3))
        .await
        .expect("save file");
    store
        .replace_source("onec", "o1", records("onec", 5))
        .await
        .expect("save onec");

    assert_eq!(store.forget_source("onec").await.expect("forget"), 5);
    assert_eq!(store.forget_source("onec").await.expect("again"), 0);
    store.close().await;

    let store = open(&path);
    let snapshot = store.load_snapshot().await.expect("load");
    assert_eq!(snapshot.len(), 1, "only the file source is left");
    assert_eq!(by_source(&snapshot, "file").records.len(), 3);
    assert_eq!(store.source_fingerprint("onec").await.expect("read"), None);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_background_store_writes_from_a_lowered_thread_and_reports_apart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::new();
    let main = Store::open(&store_path(dir.path()), &registry).expect("main opens");
    let cache = Store::open_background(&dir.path().join("cache.sqlite"), &registry, "onec")
        .expect("background store opens beside the main one, same registry");

    // Replaces (diffed on the writer) round-trip as in the main store.
    let first = records("onec", 50);
    cache
        .replace_source("onec", "o1", first.clone())
        .await
        .expect("save");
    // The writer has served a command: it runs, named and lowered.
    #[cfg(target_os = "linux")]
    assert_eq!(
        crate::thread_priority::thread_is_idle_scheduled(super::writer::BACKGROUND_WRITER),
        Some(true),
        "the background writer runs under SCHED_IDLE"
    );
    let mut second = first.to_vec();
    second.truncate(40);
    second[0] = counterparty("onec-0000", "ООО \"Новое имя\"");
    let second: Arc<[Counterparty]> = second.into();
    cache
        .replace_source("onec", "o2", second.clone())
        .await
        .expect("save again");
    let snapshot = cache.load_snapshot().await.expect("load");
    assert_eq!(by_source(&snapshot, "onec").records, second.to_vec());
    assert_eq!(
        by_source(&snapshot, "onec").fingerprint.as_deref(),
        Some("o2")
    );
    assert!(main.load_snapshot().await.expect("load main").is_empty());

    // Each store's writes are counted under its own `db` label.
    let snapshots_of = |db: &str| -> u64 {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == "cti_store_snapshot_writes_total")
            .flat_map(|f| f.get_metric())
            .filter(|m| {
                let labels = m.get_label();
                labels.iter().any(|l| l.name() == "db" && l.value() == db)
                    && labels.iter().any(|l| l.value() == "ok")
            })
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    };
    assert_eq!(snapshots_of("onec"), 2);
    assert_eq!(snapshots_of("main"), 0);
    cache.close().await;
    main.close().await;
}
