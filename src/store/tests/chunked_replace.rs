//! Large replaces, committed in chunks: appends commit between them, a
//! second replace waits for the first, any chunk size leaves exactly the
//! new records, and a failure part-way is completed by the next replace.

use super::*;

/// The last record of each id, in id order: what a replace leaves.
fn expected_rows(records: &[Counterparty]) -> Vec<Counterparty> {
    let mut last: std::collections::BTreeMap<&str, &Counterparty> = Default::default();
    for c in records {
        last.insert(&c.id, c);
    }
    last.into_values().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_during_a_large_replace_commits_between_its_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_path(dir.path());
    let store = open(&path);
    // Dozens of chunks in a debug build, about ten in a release one.
    const N: usize = 100_000;
    let recs: Arc<[Counterparty]> = (0..N).map(realistic).collect();
    let started = Instant::now();
    let replace = {
        let (store, recs) = (store.clone(), recs.clone());
        tokio::spawn(async move { store.replace_source("onec", "big", recs).await })
    };
    wait_until_part_way(&path, "onec").await;
    let asked = Instant::now();
    let id = store
        .append_call(call("k", 1, "9235292926"))
        .await
        .expect("append during the replace");
    let waited = asked.elapsed();
    let replace_pending = !replace.is_finished();
    replace.await.expect("task").expect("replace");
    let replace_took = started.elapsed();
    eprintln!("append waited {waited:?}; the {N}-record replace took {replace_took:?}");
    assert!(
        replace_pending,
        "the append ({waited:?}) should have committed while the replace was still being written"
    );
    // Debug builds are slow; a chunk is ~100 ms of work wherever it runs.
    assert!(waited < Duration::from_secs(2), "append waited {waited:?}");

    let snapshot = store.load_snapshot().await.expect("load");
    let onec = by_source(&snapshot, "onec");
    assert_eq!(onec.records.len(), N);
    assert_eq!(onec.records, sorted_by_id(&recs));
    assert_eq!(onec.fingerprint.as_deref(), Some("big"));
    let calls = store.calls(None, None, 10).await.expect("calls");
    assert_eq!(calls.iter().map(|c| c.id).collect::<Vec<_>>(), [id]);
    assert!(
        store.transactions() > 2,
        "the replace took several transactions"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replace_sent_during_another_of_the_same_source_waits_for_it_and_wins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_path(dir.path());
    let store = open(&path);
    // Small chunks: the first replace takes hundreds of them.
    store
        .set_chunk(50, Duration::from_secs(1))
        .await
        .expect("chunk");
    let big: Arc<[Counterparty]> = (0..20_000).map(realistic).collect();
    let first = {
        let (store, big) = (store.clone(), big.clone());
        tokio::spawn(async move { store.replace_source("onec", "v1", big).await })
    };
    wait_until_part_way(&path, "onec").await;
    // Half of the first set changed, the rest gone, some new: written over a
    // half-done first replace, this would leave a mix.
    let second: Arc<[Counterparty]> = big
        .iter()
        .take(10_000)
        .map(|c| {
            let mut c = c.clone();
            c.manager_phone = Some("999".into());
            c
        })
        .chain((50_000..50_100).map(realistic))
        .collect();
    assert!(
        !first.is_finished(),
        "the first replace is still being written"
    );
    store
        .replace_source("onec", "v2", second.clone())
        .await
        .expect("second replace");
    assert!(
        first.is_finished(),
        "the second replace resolved before the first one"
    );
    first.await.expect("task").expect("first replace");
    let snapshot = store.load_snapshot().await.expect("load");
    let onec = by_source(&snapshot, "onec");
    assert_eq!(onec.records, sorted_by_id(&second));
    assert_eq!(onec.fingerprint.as_deref(), Some("v2"));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_replaces_leave_exactly_the_new_records_whatever_the_chunk_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&store_path(dir.path()));
    // Stored rows before the first new id and after the last one, inside
    // changed, gone and unchanged ones, new ones, and a duplicate id.
    let first: Vec<Counterparty> = std::iter::once(counterparty("0000-lead", "lead"))
        .chain((0..600).map(realistic))
        .chain(std::iter::once(counterparty("zzzz-tail", "tail")))
        .collect();
    let second: Vec<Counterparty> = std::iter::once(counterparty("0000-a", "new lead"))
        .chain(
            first[1..first.len() - 1]
                .iter()
                .enumerate()
                .filter(|(i, _)| i % 7 != 3)
                .map(|(i, c)| {
                    let mut c = c.clone();
                    if i % 5 == 0 {
                        c.name = format!("{} (changed)", c.name).into();
                    }
                    c
                }),
        )
        .chain((1_000..1_150).map(realistic))
        .chain([
            counterparty("zzzz-b", "new tail, first"),
            counterparty("zzzz-b", "new tail, last"),
        ])
        .collect();
    let (first, second): (Arc<[Counterparty]>, Arc<[Counterparty]>) = (first.into(), second.into());
    let cases = [
        (1, Duration::from_secs(10)),
        (2, Duration::from_secs(10)),
        (7, Duration::from_secs(10)),
        (10_000, Duration::ZERO),
        (10_000, Duration::from_secs(10)),
    ];
    for (ops, time) in cases {
        for planned in [true, false] {
            let source = format!("s-{ops}-{}-{planned}", time.as_millis());
            store.set_chunk(ops, time).await.expect("chunk");
            for (fingerprint, recs) in [("1", &first), ("2", &second), ("3", &first)] {
                let before = store.transactions();
                let replaced = if planned {
                    store
                        .replace_source(&source, fingerprint, Arc::clone(recs))
                        .await
                } else {
                    // No plan: the writer walks the rows itself.
                    store
                        .request(|reply| Command::ReplaceSource {
                            source: source.clone(),
                            fingerprint: fingerprint.into(),
                            records: held(recs),
                            plan: None,
                            reply,
                        })
                        .await
                };
                replaced.unwrap_or_else(|e| panic!("{source} -> {fingerprint}: {e}"));
                let snapshot = store.load_snapshot().await.expect("load");
                let got = by_source(&snapshot, &source);
                assert_eq!(
                    got.records,
                    expected_rows(recs),
                    "{source} -> {fingerprint}"
                );
                assert_eq!(got.fingerprint.as_deref(), Some(fingerprint));
                let transactions = store.transactions() - before;
                if ops == 1 {
                    assert!(
                        transactions > 100,
                        "{source} -> {fingerprint}: one row change per chunk, yet {transactions} transactions"
                    );
                }
            }
        }
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replace_failing_part_way_leaves_no_fingerprint_and_the_next_completes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_path(dir.path());
    let registry = Registry::new();
    let store = Store::open(&path, &registry).expect("open");
    store
        .replace_source("file", "f1", records("old", 10))
        .await
        .expect("save");
    store
        .set_chunk(100, Duration::from_secs(10))
        .await
        .expect("chunk");
    // The 16th chunk fails: the first 15 are committed.
    store
        .exec_on_writer(
            "CREATE TEMP TRIGGER fail_one BEFORE INSERT ON counterparties
             WHEN NEW.id = 'new-1500' BEGIN SELECT RAISE(ABORT, 'injected'); END",
        )
        .await
        .expect("trigger");
    let new = records("new", 3_000);
    let err = store
        .replace_source("file", "f2", new.clone())
        .await
        .expect_err("the replace fails part-way");
    assert!(err.to_string().contains("injected"), "{err}");
    assert_eq!(
        counter(&registry, "cti_store_snapshot_writes_total", "error"),
        1
    );
    assert_eq!(store.source_fingerprint("file").await.expect("fp"), None);
    let snapshot = store.load_snapshot().await.expect("load");
    let file = by_source(&snapshot, "file");
    assert_eq!(
        file.fingerprint, None,
        "a half-written source has no fingerprint"
    );
    let written = file
        .records
        .iter()
        .filter(|c| c.id.starts_with("new-"))
        .count();
    assert_eq!(written, 1_500, "the chunks before the failure stay");

    store
        .exec_on_writer("DROP TRIGGER fail_one")
        .await
        .expect("drop trigger");
    store
        .replace_source("file", "f2", new.clone())
        .await
        .expect("the next replace completes it");
    let snapshot = store.load_snapshot().await.expect("load");
    assert_eq!(by_source(&snapshot, "file").records, new.to_vec());
    assert_eq!(
        store
            .source_fingerprint("file")
            .await
            .expect("fp")
            .as_deref(),
        Some("f2")
    );
    store.close().await;
}
