//! The call journal: ids, the queries (filters, order, limit, the indexes
//! they walk) and group commit.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_ids_increase_and_calls_filter_by_key_since_limit_newest_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&store_path(dir.path()));
    let mut ids = Vec::new();
    for i in 0..10u64 {
        let key = if i % 2 == 0 { "even" } else { "odd" };
        let mut c = call(key, 1_000_000 + i * 1_000, &format!("92352929{i:02}"));
        c.counterparty_id = (i == 3).then(|| "cp-3".to_owned());
        c.delivered = i as u32;
        c.seq = Some(i);
        ids.push(store.append_call(c).await.expect("append"));
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");

    let all = store.calls(None, None, 100).await.expect("all");
    assert_eq!(all.len(), 10);
    let got: Vec<i64> = all.iter().map(|c| c.id).collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(got, newest_first);
    // Every field comes back as written.
    let third = all.iter().find(|c| c.id == ids[3]).expect("row 3");
    assert_eq!(
        third,
        &StoredCall {
            id: ids[3],
            at: at_ms(1_003_000),
            raw_number: "89235292903".into(),
            number: "+79235292903".into(),
            key: "odd".into(),
            counterparty_id: Some("cp-3".into()),
            delivered: 3,
            seq: Some(3),
        }
    );

    let odd = store.calls(Some("odd"), None, 100).await.expect("odd");
    assert_eq!(
        odd.iter().map(|c| c.id).collect::<Vec<_>>(),
        [ids[9], ids[7], ids[5], ids[3], ids[1]]
    );

    // `since` is inclusive.
    let recent = store
        .calls(None, Some(at_ms(1_007_000)), 100)
        .await
        .expect("since");
    assert_eq!(
        recent.iter().map(|c| c.id).collect::<Vec<_>>(),
        [ids[9], ids[8], ids[7]]
    );

    let both = store
        .calls(Some("even"), Some(at_ms(1_004_000)), 100)
        .await
        .expect("both");
    assert_eq!(
        both.iter().map(|c| c.id).collect::<Vec<_>>(),
        [ids[8], ids[6], ids[4]]
    );

    let limited = store.calls(Some("even"), None, 2).await.expect("limit");
    assert_eq!(
        limited.iter().map(|c| c.id).collect::<Vec<_>>(),
        [ids[8], ids[6]]
    );
    assert!(store.calls(None, None, 0).await.expect("zero").is_empty());
    assert!(store
        .calls(Some("nobody"), None, 10)
        .await
        .expect("none")
        .is_empty());

    // By number (the journal's form), alone and with the other filters.
    let by_number = |number: &str, key: Option<&str>, since: Option<u64>| CallQuery {
        key: key.map(str::to_owned),
        number: Some(number.to_owned()),
        since: since.map(at_ms),
        before: None,
        limit: 100,
    };
    let third = store
        .calls_page(by_number("+79235292903", None, None))
        .await
        .expect("by number");
    assert_eq!(third.iter().map(|c| c.id).collect::<Vec<_>>(), [ids[3]]);
    for (key, since) in [(Some("even"), None), (None, Some(1_004_000))] {
        let none = store
            .calls_page(by_number("+79235292903", key, since))
            .await
            .expect("by number");
        assert!(none.is_empty(), "{key:?} {since:?}: {none:?}");
    }
    let both = store
        .calls_page(by_number("+79235292903", Some("odd"), Some(1_003_000)))
        .await
        .expect("by number");
    assert_eq!(both.len(), 1);

    // Newest means by `at`, not by id: a late-committed older call sorts after.
    let late = store
        .append_call(call("odd", 1_000_500, "1"))
        .await
        .expect("append");
    let odd = store
        .calls(Some("odd"), Some(at_ms(1_000_000)), 100)
        .await
        .expect("odd");
    assert_eq!(odd.last().map(|c| c.id), Some(late));
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_queries_walk_an_index_without_sorting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_path(dir.path());
    open(&path).close().await;
    let conn = Connection::open(&path).expect("raw open");
    for (by_key, by_number, since) in [
        (true, false, true),
        (true, false, false),
        (false, false, true),
        (false, false, false),
        (false, true, false),
        (false, true, true),
        (true, true, true),
    ] {
        let sql = read::calls_sql(by_key, by_number, since);
        let mut stmt = conn
            .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
            .expect("explain");
        let plan: Vec<String> = stmt
            .query_map(
                rusqlite::params_from_iter(std::iter::repeat_n(
                    1,
                    1 + by_key as usize + by_number as usize + since as usize,
                )),
                |r| r.get::<_, String>(3),
            )
            .expect("plan")
            .collect::<Result<_, _>>()
            .expect("plan rows");
        let plan = plan.join("; ");
        assert!(!plan.contains("TEMP B-TREE"), "{sql}: sorts: {plan}");
        assert!(
            plan.contains("USING INDEX calls_"),
            "{sql}: no index: {plan}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_all_commit_in_fewer_transactions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::new();
    let store = Store::open(&store_path(dir.path()), &registry).expect("open");
    let before = store.transactions();
    const N: usize = 500;
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .append_call(call(&format!("k{}", i % 7), i as u64, "9235292926"))
                    .await
            })
        })
        .collect();
    let mut ids = Vec::with_capacity(N);
    for t in tasks {
        ids.push(t.await.expect("task").expect("append commits"));
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), N, "every append got its own id");
    let transactions = store.transactions() - before;
    eprintln!("{N} appends in {transactions} transactions");
    assert!(
        transactions < N as u64,
        "group commit: {transactions} transactions for {N} appends"
    );
    assert_eq!(
        store.calls(None, None, 1_000).await.expect("calls").len(),
        N
    );
    assert_eq!(
        counter(&registry, "cti_store_journal_writes_total", "ok"),
        N as u64
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_adds_to_its_row_whether_it_comes_before_or_after_the_append() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&store_path(dir.path()));
    let with_seq = |key: &str, seq: u64, delivered: u32| CallRecord {
        seq: Some(seq),
        delivered,
        ..call(key, 1_000_000 + seq, "9235292926")
    };
    // After: the row is there.
    store
        .append_call(with_seq("k", 1, 2))
        .await
        .expect("append");
    assert_eq!(
        store.add_delivered("k", vec![1]).await.expect("delivered"),
        1
    );
    // Before: kept, then added to the row when it is written.
    assert_eq!(
        store.add_delivered("k", vec![2]).await.expect("delivered"),
        0
    );
    assert_eq!(
        store.add_delivered("k", vec![2]).await.expect("delivered"),
        0
    );
    store
        .append_call(with_seq("k", 2, 0))
        .await
        .expect("append");
    // Another key's seq 1 is another row; a seq no call gets is harmless.
    store
        .append_call(with_seq("other", 1, 0))
        .await
        .expect("append");
    assert_eq!(
        store
            .add_delivered("k", vec![1, 2, 99])
            .await
            .expect("delivered"),
        2
    );
    let delivered = |calls: &[StoredCall], key: &str, seq: u64| {
        calls
            .iter()
            .find(|c| c.key == key && c.seq == Some(seq))
            .map(|c| c.delivered)
    };
    let calls = store.calls(None, None, 100).await.expect("calls");
    assert_eq!(delivered(&calls, "k", 1), Some(4));
    assert_eq!(delivered(&calls, "k", 2), Some(3));
    assert_eq!(delivered(&calls, "other", 1), Some(0));
    store.close().await;
}

#[test]
fn unix_ms_round_trips_both_sides_of_the_epoch() {
    for ms in [0i64, 1, 1_763_800_000_123, -1, -86_400_000] {
        assert_eq!(unix_ms(from_unix_ms(ms)), ms);
    }
}
