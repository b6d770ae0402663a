//! Journal retention: rows older than the cutoff go in batches, the
//! recent ones stay, the metric counts what went, and a zero retention
//! keeps everything.

use super::*;

/// The value of `cti_store_journal_pruned_total` in `registry`.
fn pruned_total(registry: &Registry) -> f64 {
    registry
        .gather()
        .iter()
        .find(|f| f.name() == "cti_store_journal_pruned_total")
        .and_then(|f| f.get_metric().first().map(|m| m.get_counter().get_value()))
        .expect("the pruned counter is registered")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_older_than_the_cutoff_are_pruned_in_batches_and_recent_ones_stay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::new();
    let store = Store::open(&store_path(dir.path()), &registry).expect("store opens");
    let now_ms = unix_ms(SystemTime::now()) as u64;
    let day_ms = 86_400_000u64;
    // 25 calls from 500 days ago on, one a minute; 5 from the last hour.
    for i in 0..25u64 {
        let at = now_ms - 500 * day_ms + i * 60_000;
        store
            .append_call(call("old", at, &format!("91600000{i:02}")))
            .await
            .expect("append");
    }
    let mut recent = Vec::new();
    for i in 0..5u64 {
        let at = now_ms - 3_600_000 + i * 60_000;
        recent.push(
            store
                .append_call(call("new", at, &format!("91611111{i:02}")))
                .await
                .expect("append"),
        );
    }
    let before = store.transactions();

    // 400 days, in batches of 10: three deleting transactions (10, 10, 5).
    let cutoff = SystemTime::now() - Duration::from_secs(400 * 86_400);
    let n = store
        .prune_calls_before(cutoff, 10, Duration::from_millis(1))
        .await
        .expect("prune");
    assert_eq!(n, 25);
    assert_eq!(
        store.transactions() - before,
        3,
        "one transaction per batch"
    );
    let left = store.calls(None, None, 100).await.expect("calls");
    let mut ids: Vec<i64> = left.iter().map(|c| c.id).collect();
    ids.sort();
    assert_eq!(ids, recent, "the recent calls stay, every old one went");
    assert_eq!(pruned_total(&registry), 25.0);

    // A second pass finds nothing.
    let n = store
        .prune_calls_before(cutoff, 10, Duration::from_millis(1))
        .await
        .expect("prune again");
    assert_eq!(n, 0);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_task_prunes_at_start_and_a_zero_retention_keeps_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&store_path(dir.path()));
    let now_ms = unix_ms(SystemTime::now()) as u64;
    for (i, age_ms) in [10 * 86_400_000u64, 2 * 86_400_000, 60_000]
        .iter()
        .enumerate()
    {
        store
            .append_call(call("k", now_ms - age_ms, &format!("91622222{i:02}")))
            .await
            .expect("append");
    }
    let (stop, stopped) = tokio::sync::watch::channel(false);

    // Zero: the task returns at once and nothing goes.
    keep_journal_for(store.clone(), Duration::ZERO, stopped.clone()).await;
    assert_eq!(store.calls(None, None, 100).await.expect("calls").len(), 3);

    // Three days: the ten-day-old call goes in the first pass.
    let task = tokio::spawn(keep_journal_for(
        store.clone(),
        Duration::from_secs(3 * 86_400),
        stopped,
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = store.calls(None, None, 100).await.expect("calls").len();
        if left == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first pass did not prune: {left} rows"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the task stops when told")
        .expect("task");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_store_exports_only_the_counters_it_can_move() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::new();
    let main = Store::open(&store_path(dir.path()), &registry).expect("main store");
    let onec = Store::open_with_options(
        &dir.path().join("store.onec.sqlite"),
        &registry,
        &OpenOptions::cache("onec").new_store(true),
    )
    .expect("1C's store");
    let sync = Store::open_with_options(
        &dir.path().join("store.sync.sqlite"),
        &registry,
        &OpenOptions::sync().new_store(true),
    )
    .expect("sync store");
    // The db labels each family is exported with.
    let dbs = |family: &str| -> Vec<String> {
        let mut dbs: Vec<String> = registry
            .gather()
            .iter()
            .filter(|f| f.name() == family)
            .flat_map(|f| f.get_metric().to_vec())
            .flat_map(|m| m.get_label().to_vec())
            .filter(|l| l.name() == "db")
            .map(|l| l.value().to_owned())
            .collect();
        dbs.sort();
        dbs.dedup();
        dbs
    };
    // A journal counter of 1C's cache or the sync store would stay 0 for
    // ever: an impossible pair on a dashboard.
    assert_eq!(dbs("cti_store_journal_writes_total"), ["main"]);
    assert_eq!(dbs("cti_store_journal_pruned_total"), ["main"]);
    assert_eq!(dbs("cti_store_outbox_rows_total"), ["sync"]);
    assert_eq!(dbs("cti_store_inbox_rows_total"), ["sync"]);
    assert_eq!(
        dbs("cti_store_snapshot_writes_total"),
        ["main", "onec", "sync"]
    );
    for store in [sync, onec, main] {
        store.close().await;
    }
}
