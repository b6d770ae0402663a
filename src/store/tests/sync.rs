//! The sync store (`OpenOptions::sync`): its own migration list, the
//! outbox and id-map, the inbox, conflicts, overlay and requisites, and the
//! snapshot tables reused for CRM-only records.

use super::*;
use crate::store::sync::SYNC_MIGRATIONS;

/// The sync store's file in a folder that does not exist yet.
fn sync_path(dir: &Path) -> PathBuf {
    dir.join("var").join("cti-gateway.sync.sqlite")
}

fn open_sync(path: &Path, registry: &Registry) -> Store {
    Store::open_with_options(path, registry, &OpenOptions::sync()).expect("sync store opens")
}

/// An upsert of `key` for `system`'s companies.
fn row(system: &str, key: &str, hash: u64) -> NewOutboxRow {
    NewOutboxRow {
        system: system.to_owned(),
        kind: "company".to_owned(),
        record_key: key.to_owned(),
        op: OutboxOp::Upsert,
        body: format!(r#"{{"id":"{key}","hash":{hash}}}"#),
        hash,
    }
}

/// `PRAGMA user_version` and the table names of the file at `path`.
fn version_and_tables(path: &Path) -> (i64, Vec<String>) {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .expect("raw open");
    let version = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("user_version");
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .expect("prepare");
    let tables = stmt
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("tables");
    (version, tables)
}

/// Marks outbox row `id` dead, as the runtime will after its failures.
async fn kill_row(store: &Store, id: i64) {
    store
        .exec_on_writer(&format!(
            "UPDATE outbox SET state = 'dead', attempts = 10, last_error = 'HTTP 500' WHERE id = {id}"
        ))
        .await
        .expect("mark dead");
}

#[tokio::test]
async fn the_sync_file_is_migrated_from_empty_and_the_main_list_is_untouched() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = open(&store_path(dir.path()));
    let path = sync_path(dir.path());
    let sync = open_sync(&path, &Registry::new());
    sync.close().await;
    main.close().await;

    let (version, tables) = version_and_tables(&path);
    assert_eq!(version, SYNC_MIGRATIONS.len() as i64);
    for table in [
        "idmap",
        "outbox",
        "inbox",
        "conflicts",
        "requisites",
        "overlay",
        "sources",
        "counterparties",
        "tombstones",
    ] {
        assert!(tables.iter().any(|t| t == table), "{table} in {tables:?}");
    }
    assert!(
        !tables.iter().any(|t| t == "calls"),
        "no journal: {tables:?}"
    );

    let (main_version, main_tables) = version_and_tables(&store_path(dir.path()));
    assert_eq!(main_version, schema::Schema::Main.version());
    assert_eq!(main_version, 5, "the shared list is as it shipped");
    assert_eq!(
        main_tables,
        ["calls", "counterparties", "sources", "tombstones"],
        "no sync table in the main store"
    );

    // Opened again: nothing to migrate, the rows stay.
    let sync = open_sync(&path, &Registry::new());
    sync.enqueue(vec![row("crm", "a", 1)])
        .await
        .expect("enqueue");
    sync.close().await;
    let sync = open_sync(&path, &Registry::new());
    assert_eq!(
        sync.outbox_page(OutboxQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("page")
        .len(),
        1
    );
    sync.close().await;
}

#[tokio::test]
async fn a_sync_file_is_never_opened_as_the_main_store_nor_the_other_way_round() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main_path = store_path(dir.path());
    let path = sync_path(dir.path());
    open(&main_path).close().await;
    open_sync(&path, &Registry::new()).close().await;

    let err = Store::open(&path, &Registry::new()).expect_err("a sync file as main");
    let message = err.to_string();
    assert!(
        matches!(err, StoreError::Open { .. }) && message.contains("is a sync store file"),
        "{message}"
    );
    let err = Store::open_with_options(&main_path, &Registry::new(), &OpenOptions::sync())
        .expect_err("a main file as sync");
    assert!(err.to_string().contains("is a main store"), "{err}");
    // Both files are as they were.
    assert_eq!(version_and_tables(&path).0, SYNC_MIGRATIONS.len() as i64);
    assert_eq!(version_and_tables(&main_path).0, 5);
}

#[tokio::test]
async fn a_missing_sync_file_is_created_an_empty_one_is_refused_naming_what_it_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    // An install whose main store has existed: the sync file is new.
    open(&store_path(dir.path())).close().await;
    let path = sync_path(dir.path());
    open_sync(&path, &Registry::new()).close().await;
    assert!(path.exists());

    let empty = dir.path().join("var").join("other.sync.sqlite");
    std::fs::write(&empty, b"").expect("empty file");
    let err = Store::open_with_options(&empty, &Registry::new(), &OpenOptions::sync())
        .expect_err("an empty file where a store was");
    let message = err.to_string();
    assert!(
        matches!(
            &err,
            StoreError::Missing {
                role: StoreRole::Sync,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        message.contains("outbox of changes not yet sent"),
        "{message}"
    );
    assert!(message.contains("relink"), "{message}");
    // `--new-store` lets it begin empty.
    Store::open_with_options(
        &empty,
        &Registry::new(),
        &OpenOptions::sync().new_store(true),
    )
    .expect("new store allowed")
    .close()
    .await;
}

#[tokio::test]
async fn a_damaged_sync_file_names_what_is_lost() {
    let err = StoreError::sqlite(
        Path::new("/x/cti-gateway.sync.sqlite"),
        "reading",
        rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            None,
        ),
    )
    .in_role(&StoreRole::Sync);
    let message = err.to_string();
    assert!(message.contains("the sync store"), "{message}");
    assert!(message.contains("id links to CRM records"), "{message}");
}

#[tokio::test]
async fn enqueue_returns_ids_in_order_and_the_newest_queued_hash_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::new();
    let store = open_sync(&sync_path(dir.path()), &registry);
    let ids = store
        .enqueue(vec![
            row("crm", "a", 1),
            row("crm", "b", 2),
            row("other", "a", 3),
        ])
        .await
        .expect("enqueue");
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // A later change of `a` replaces its hash; the earlier row stays queued.
    store
        .enqueue(vec![row("crm", "a", u64::MAX)])
        .await
        .expect("enqueue");
    let hashes = store.last_hashes("crm", "company").await.expect("hashes");
    assert_eq!(
        hashes,
        HashMap::from([("a".to_owned(), u64::MAX), ("b".to_owned(), 2)])
    );
    assert_eq!(
        store.last_hashes("crm", "contact").await.expect("hashes"),
        HashMap::new()
    );
    let page = store
        .outbox_page(OutboxQuery {
            system: Some("crm".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("page");
    assert_eq!(
        page.iter().map(|r| &*r.record_key).collect::<Vec<_>>(),
        ["a", "b", "a"]
    );
    let first = &page[0];
    assert_eq!(first.op, OutboxOp::Upsert);
    assert_eq!(first.state, OutboxState::Pending);
    assert_eq!(first.attempts, 0);
    assert_eq!(first.kind, "company");
    assert_eq!(first.body, r#"{"id":"a","hash":1}"#);
    assert_eq!(first.next_at, first.created_at);
    assert!(store.enqueue(Vec::new()).await.expect("nothing").is_empty());
    assert_eq!(counter(&registry, "cti_store_outbox_rows_total", "ok"), 4);

    // An enqueue writes no id-map row: that is the confirmation's.
    let conn = Connection::open(sync_path(dir.path())).expect("raw open");
    let links: i64 = conn
        .query_row("SELECT count(*) FROM idmap", [], |r| r.get(0))
        .expect("count");
    assert_eq!(links, 0);
    drop(conn);

    // A confirmed hash counts where nothing newer is queued; closed links
    // (their rows queued or not) and links without a hash are left out.
    store
        .exec_on_writer(
            "INSERT INTO idmap (system, kind, local_id, hash) VALUES ('crm', 'company', 'a', 5);
             INSERT INTO idmap (system, kind, local_id, hash, closed_at) VALUES ('crm', 'company', 'b', 2, 1);
             INSERT INTO idmap (system, kind, local_id, remote_id) VALUES ('crm', 'company', 'c', '17');
             INSERT INTO idmap (system, kind, local_id, remote_id, hash) VALUES ('crm', 'company', 'd', '18', 4);",
        )
        .await
        .expect("links");
    let hashes = store.last_hashes("crm", "company").await.expect("hashes");
    assert_eq!(
        hashes,
        HashMap::from([("a".to_owned(), u64::MAX), ("d".to_owned(), 4)])
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_enqueues_share_few_transactions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sync_path(dir.path());
    let store = open_sync(&path, &Registry::new());
    // Another connection holds the write lock while the enqueues are sent:
    // the writer waits for it (busy timeout) with the first group, and the
    // others queue up behind, as under a burst of changes.
    let blocker = Connection::open(&path).expect("raw open");
    blocker
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    let before = store.transactions();
    const N: usize = 64;
    let start = Arc::new(tokio::sync::Barrier::new(N));
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let (store, start) = (store.clone(), Arc::clone(&start));
            tokio::spawn(async move {
                start.wait().await;
                store
                    .enqueue(vec![row("crm", &format!("r{i:02}"), i as u64)])
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    blocker.execute_batch("ROLLBACK").expect("let go");
    let mut ids = Vec::with_capacity(N);
    for t in tasks {
        ids.extend(t.await.expect("task").expect("enqueue commits"));
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), N, "every row got its own id");
    let transactions = store.transactions() - before;
    eprintln!("{N} enqueues in {transactions} transactions");
    assert!(
        transactions <= 3,
        "group commit: {transactions} transactions for {N} enqueues"
    );
    assert_eq!(
        store
            .last_hashes("crm", "company")
            .await
            .expect("queued hashes")
            .len(),
        N
    );
    store.close().await;
}

#[tokio::test]
async fn the_id_map_is_unique_both_ways() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sync_path(dir.path());
    let store = open_sync(&path, &Registry::new());
    // By local id: one row per (system, kind, local id).
    let conn = Connection::open(&path).expect("raw open");
    conn.execute(
        "INSERT INTO idmap (system, kind, local_id) VALUES ('crm', 'company', 'a')",
        [],
    )
    .expect("the first row");
    let err = conn
        .execute(
            "INSERT INTO idmap (system, kind, local_id) VALUES ('crm', 'company', 'a')",
            [],
        )
        .expect_err("a second row for one local id");
    assert!(err.to_string().contains("UNIQUE"), "{err}");
    // By remote id: one system's record links to one local record...
    conn.execute_batch(
        "INSERT INTO idmap (system, kind, local_id, remote_id) VALUES ('crm', 'company', 'b', '2919');
         -- ...while remote ids not yet known (NULL) may be many, and
         -- another kind or system may use the same remote id.
         INSERT INTO idmap (system, kind, local_id) VALUES ('crm', 'company', 'c');
         INSERT INTO idmap (system, kind, local_id) VALUES ('crm', 'company', 'd');
         INSERT INTO idmap (system, kind, local_id, remote_id) VALUES ('crm', 'contact', 'b', '2919');
         INSERT INTO idmap (system, kind, local_id, remote_id) VALUES ('other', 'company', 'b', '2919');",
    )
    .expect("distinct links");
    let err = conn
        .execute(
            "INSERT INTO idmap (system, kind, local_id, remote_id) VALUES ('crm', 'company', 'e', '2919')",
            [],
        )
        .expect_err("a second local record for one remote id");
    assert!(err.to_string().contains("UNIQUE"), "{err}");
    drop(conn);
    store.close().await;
}

#[tokio::test]
async fn a_link_moves_a_remote_id_keeps_or_sets_the_hash_and_closes_and_opens_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_sync(&sync_path(dir.path()), &Registry::new());
    // `a` has a hash and no remote id yet.
    store
        .exec_on_writer(
            "INSERT INTO idmap (system, kind, local_id, hash) VALUES ('crm', 'company', 'a', 7)",
        )
        .await
        .expect("a's row");
    let link = |local: &str, remote: &str, hash: Option<u64>| IdMapLink {
        system: "crm".to_owned(),
        kind: "company".to_owned(),
        local_id: local.to_owned(),
        remote_id: remote.to_owned(),
        hash,
    };
    store
        .idmap_link(link("a", "2919", None))
        .await
        .expect("link");
    let a = store
        .idmap_by_remote("crm", "company", "2919")
        .await
        .expect("read")
        .expect("linked");
    assert_eq!((a.local_id.as_str(), a.hash), ("a", Some(7)), "hash kept");
    // The remote record linked to another local record: the old link goes.
    store
        .idmap_link(link("b", "2919", Some(9)))
        .await
        .expect("relink");
    let b = store
        .idmap_by_remote("crm", "company", "2919")
        .await
        .expect("read")
        .expect("linked");
    assert_eq!((b.local_id.as_str(), b.hash), ("b", Some(9)));
    assert!(store
        .idmap_get("crm", "company", "a")
        .await
        .expect("read")
        .is_none());
    // Closed once; a second close finds nothing open; a new link opens it.
    assert!(store
        .idmap_close("crm", "company", "b")
        .await
        .expect("close"));
    assert!(!store
        .idmap_close("crm", "company", "b")
        .await
        .expect("close"));
    let closed = store
        .idmap_get("crm", "company", "b")
        .await
        .expect("read")
        .expect("kept");
    assert!(closed.closed_at.is_some());
    store
        .idmap_link(link("b", "2919", None))
        .await
        .expect("link again");
    let open = store
        .idmap_get("crm", "company", "b")
        .await
        .expect("read")
        .expect("kept");
    assert_eq!((open.closed_at, open.hash), (None, Some(9)));
    store.close().await;
}

#[tokio::test]
async fn retry_answers_retried_not_found_or_not_dead() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_sync(&sync_path(dir.path()), &Registry::new());
    let ids = store
        .enqueue(vec![row("crm", "a", 1), row("crm", "b", 2)])
        .await
        .expect("enqueue");
    kill_row(&store, ids[0]).await;
    let dead = store
        .outbox_page(OutboxQuery {
            state: Some(OutboxState::Dead),
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("dead rows");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 10);
    let status = store.sync_status().await.expect("status");
    assert_eq!(status.len(), 1);
    assert_eq!((status[0].pending, status[0].dead), (1, 1));

    assert_eq!(
        store.outbox_retry(ids[0]).await.expect("retry"),
        RetryOutcome::Retried
    );
    let row = &store
        .outbox_page(OutboxQuery {
            limit: 1,
            ..Default::default()
        })
        .await
        .expect("page")[0];
    assert_eq!(row.id, ids[0]);
    assert_eq!(row.state, OutboxState::Pending);
    assert_eq!(row.attempts, 0);
    assert_eq!(
        row.last_error.as_deref(),
        Some("HTTP 500"),
        "why it died stays"
    );
    assert!(row.next_at >= row.created_at);

    assert_eq!(
        store.outbox_retry(ids[0]).await.expect("again"),
        RetryOutcome::NotDead
    );
    assert_eq!(
        store.outbox_retry(ids[1]).await.expect("pending"),
        RetryOutcome::NotDead
    );
    assert_eq!(
        store.outbox_retry(ids[1] + 1000).await.expect("unknown"),
        RetryOutcome::NotFound
    );
    store.close().await;
}

#[tokio::test]
async fn the_outbox_pages_by_id_with_filters_and_a_capped_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_sync(&sync_path(dir.path()), &Registry::new());
    let rows: Vec<NewOutboxRow> = (0..1_500)
        .map(|i| {
            row(
                if i % 3 == 0 { "other" } else { "crm" },
                &format!("r{i:04}"),
                i,
            )
        })
        .collect();
    let ids = store.enqueue(rows).await.expect("enqueue");
    kill_row(&store, ids[1]).await;
    kill_row(&store, ids[2]).await;

    // Every row of one system exactly once, over pages of 400.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .outbox_page(OutboxQuery {
                system: Some("crm".into()),
                after,
                limit: 400,
                ..Default::default()
            })
            .await
            .expect("page");
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        assert!(page.iter().all(|r| r.system == "crm"));
        seen.extend(page.iter().map(|r| r.id));
    }
    assert_eq!(seen.len(), 1_000);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));

    let all = store
        .outbox_page(OutboxQuery {
            limit: 5_000,
            ..Default::default()
        })
        .await
        .expect("all");
    assert_eq!(all.len(), MAX_PAGE as usize, "the limit is capped");
    let dead = store
        .outbox_page(OutboxQuery {
            system: Some("crm".into()),
            state: Some(OutboxState::Dead),
            limit: 10,
            after: Some(ids[1]),
        })
        .await
        .expect("dead after the first");
    assert_eq!(dead.iter().map(|r| r.id).collect::<Vec<_>>(), [ids[2]]);

    let status = store.sync_status().await.expect("status");
    let crm = status.iter().find(|s| s.system == "crm").expect("crm");
    let other = status.iter().find(|s| s.system == "other").expect("other");
    assert_eq!((crm.pending, crm.dead), (998, 2));
    assert_eq!((other.pending, other.dead), (500, 0));
    assert!(crm.oldest_pending_age.is_some());
    store.close().await;
}

#[tokio::test]
async fn conflicts_are_recorded_and_paged_by_system_and_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_sync(&sync_path(dir.path()), &Registry::new());
    let before = SystemTime::now() - Duration::from_secs(1);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            store
                .conflict_add(NewConflict {
                    system: if i == 2 { "other" } else { "crm" }.into(),
                    record_key: format!("r{i}"),
                    field: "inn".into(),
                    ours: Some("7701234567".into()),
                    theirs: (i != 4).then(|| "7701234568".into()),
                    resolution: "kept_ours".into(),
                })
                .await
                .expect("conflict"),
        );
    }
    let crm = store
        .conflicts_page(ConflictQuery {
            system: Some("crm".into()),
            since: Some(before),
            limit: 3,
        })
        .await
        .expect("page");
    assert_eq!(
        crm.iter().map(|c| &*c.record_key).collect::<Vec<_>>(),
        ["r0", "r1", "r3"]
    );
    assert_eq!(crm[0].id, ids[0]);
    assert_eq!(crm[0].theirs.as_deref(), Some("7701234568"));
    assert!(crm[0].at >= before);
    let all = store
        .conflicts_page(ConflictQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("all");
    assert_eq!(all.len(), 5);
    assert_eq!(all[4].theirs, None);
    let none = store
        .conflicts_page(ConflictQuery {
            since: Some(SystemTime::now() + Duration::from_secs(60)),
            limit: 100,
            ..Default::default()
        })
        .await
        .expect("future");
    assert!(none.is_empty());
    store.close().await;
}

#[tokio::test]
async fn the_id_map_export_comes_in_chunks_in_key_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_sync(&sync_path(dir.path()), &Registry::new());
    let n = EXPORT_CHUNK as usize * 2 + 500;
    store
        .exec_on_writer(&format!(
            "WITH RECURSIVE i(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM i WHERE n + 1 < {n})
             INSERT INTO idmap (system, kind, local_id, hash)
                 SELECT 'crm', 'company', printf('r%05d', n), n FROM i;
             INSERT INTO idmap (system, kind, local_id, hash) VALUES ('other', 'company', 'x', 1);"
        ))
        .await
        .expect("links");
    store
        .exec_on_writer(
            "UPDATE idmap SET remote_id = '42', closed_at = 1000 WHERE local_id = 'r00007'",
        )
        .await
        .expect("link one");
    let (sink, mut chunks) = tokio::sync::mpsc::channel(1);
    let export = {
        let store = store.clone();
        tokio::spawn(async move { store.idmap_export("crm", sink).await })
    };
    let mut sizes = Vec::new();
    let mut keys = Vec::new();
    while let Some(chunk) = chunks.recv().await {
        sizes.push(chunk.len());
        for r in chunk {
            if r.local_id == "r00007" {
                assert_eq!(r.remote_id.as_deref(), Some("42"));
                assert_eq!(r.closed_at, Some(at_ms(1000)));
                assert_eq!(r.hash, Some(7));
            }
            keys.push(r.local_id);
        }
    }
    assert_eq!(export.await.expect("task").expect("export"), n as u64);
    assert_eq!(sizes, [1_000, 1_000, 500]);
    assert_eq!(keys.len(), n);
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "key order, each once");

    // A reader that goes away ends the export early, without an error.
    let (sink, mut chunks) = tokio::sync::mpsc::channel(1);
    let export = {
        let store = store.clone();
        tokio::spawn(async move { store.idmap_export("crm", sink).await })
    };
    assert!(chunks.recv().await.is_some());
    drop(chunks);
    let sent = export.await.expect("task").expect("export");
    assert!(sent < n as u64, "{sent}");
    store.close().await;
}

#[tokio::test]
async fn inbox_overlay_and_requisites_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sync_path(dir.path());
    let registry = Registry::new();
    let store = open_sync(&path, &registry);
    let a = store
        .inbox_append("crm", r#"{"event":"ONCRMCOMPANYUPDATE"}"#.into())
        .await
        .expect("inbox");
    let b = store.inbox_append("crm", "{}".into()).await.expect("inbox");
    assert!(b > a);
    assert_eq!(counter(&registry, "cti_store_inbox_rows_total", "ok"), 2);

    store
        .overlay_put(vec![
            ("1c-2".into(), Some(r#"{"managers":[]}"#.into())),
            ("1c-1".into(), Some(r#"{"links":[]}"#.into())),
        ])
        .await
        .expect("overlay");
    store
        .overlay_put(vec![
            ("1c-2".into(), None),
            ("1c-1".into(), Some(r#"{"phones":["+79165555555"]}"#.into())),
            ("never".into(), None),
        ])
        .await
        .expect("overlay again");
    assert_eq!(
        store.overlay_all().await.expect("overlay"),
        [(
            "1c-1".to_owned(),
            r#"{"phones":["+79165555555"]}"#.to_owned()
        )]
    );

    store
        .requisites_put(vec![("1c-1".into(), r#"{"director":"Иванов"}"#.into())])
        .await
        .expect("requisites");
    store
        .requisites_put(vec![("1c-1".into(), r#"{"director":"Петров"}"#.into())])
        .await
        .expect("requisites again");
    assert_eq!(
        store.requisites_get("1c-1").await.expect("get").as_deref(),
        Some(r#"{"director":"Петров"}"#)
    );
    assert_eq!(store.requisites_get("1c-9").await.expect("get"), None);
    store.close().await;

    let conn = Connection::open(&path).expect("raw open");
    let pending: i64 = conn
        .query_row(
            "SELECT count(*) FROM inbox WHERE state = 'pending'",
            [],
            |r| r.get(0),
        )
        .expect("inbox rows");
    assert_eq!(pending, 2);
}

#[tokio::test]
async fn crm_only_records_use_the_snapshot_code_on_the_sync_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sync_path(dir.path());
    let store = open_sync(&path, &Registry::new());
    let crm = records("bitrix24:company", 3);
    let done = store
        .apply_changes("bitrix24", crm, &boxed(&[]), &[])
        .await
        .expect("stored");
    assert_eq!(done.inserted, 3);
    store
        .apply_changes::<Counterparty>(
            "bitrix24",
            Arc::from(Vec::new()),
            &boxed(&["bitrix24:company-0001"]),
            &[],
        )
        .await
        .expect("removed");
    store.close().await;
    let store = open_sync(&path, &Registry::new());
    let snapshot = store.load_snapshot().await.expect("load");
    let loaded = by_source(&snapshot, "bitrix24");
    assert_eq!(
        ids(loaded),
        ["bitrix24:company-0000", "bitrix24:company-0002"]
    );
    assert_eq!(loaded.fingerprint.as_deref(), Some("bitrix24"));
    store.close().await;
}

#[tokio::test]
async fn a_read_only_sync_file_fails_its_writes_and_leaves_the_main_store_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = open(&store_path(dir.path()));
    let sync = open_sync(&sync_path(dir.path()), &Registry::new());
    sync.exec_on_writer("PRAGMA query_only = 1")
        .await
        .expect("read-only from now");
    let err = sync
        .enqueue(vec![row("crm", "a", 1)])
        .await
        .expect_err("a read-only file refuses the enqueue");
    assert!(
        matches!(err, StoreError::ReadOnly { .. } | StoreError::Sqlite { .. }),
        "{err:?}"
    );
    sync.inbox_append("crm", "{}".into())
        .await
        .expect_err("and the inbox append");
    // The journal is another file with another writer.
    main.append_call(call("k", 1, "9235292926"))
        .await
        .expect("calls go on");
    sync.close().await;
    main.close().await;
}

#[tokio::test]
async fn a_full_sync_file_refuses_enqueues_whole_and_serves_again_once_there_is_room() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = open(&store_path(dir.path()));
    let registry = Registry::new();
    let sync = open_sync(&sync_path(dir.path()), &registry);
    sync.enqueue(vec![row("crm", "before", 1)])
        .await
        .expect("room at first");
    // The file may not grow: as a full disk does.
    sync.exec_on_writer("PRAGMA max_page_count = 1")
        .await
        .expect("cap the file");
    let rows: Vec<NewOutboxRow> = (0..2_000)
        .map(|i| row("crm", &format!("r{i}"), i))
        .collect();
    let err = sync.enqueue(rows).await.expect_err("no room");
    assert!(matches!(err, StoreError::DiskFull { .. }), "{err:?}");
    assert!(err.to_string().contains("was not saved"), "{err}");
    assert_eq!(
        counter(&registry, "cti_store_outbox_rows_total", "error"),
        2_000
    );
    // Nothing of it is there: the id-map holds only the row queued before.
    assert_eq!(
        sync.last_hashes("crm", "company").await.expect("map").len(),
        1
    );
    // The journal is another file: calls go on.
    main.append_call(call("k", 1, "9235292926"))
        .await
        .expect("calls go on");
    sync.exec_on_writer("PRAGMA max_page_count = 1073741823")
        .await
        .expect("room again");
    sync.enqueue(vec![row("crm", "after", 2)])
        .await
        .expect("the writer serves again");
    sync.close().await;
    main.close().await;
}

/// `id`'s confirmation by 1C (`onec`), with a `created` outcome.
fn confirmed_with_outcome(id: i64, key: &str) -> [Settle; 2] {
    [
        Settle::Confirmed {
            id,
            system: "onec".to_owned(),
            kind: "company".to_owned(),
            record_key: key.to_owned(),
            remote_id: format!("ref-{key}"),
            remote_version: None,
        },
        Settle::Outcome(RowOutcome {
            outbox_id: id,
            system: "onec".to_owned(),
            kind: "company".to_owned(),
            record_key: key.to_owned(),
            outcome: WriteOutcome::Created,
            remote_ref: Some(format!("ref-{key}")),
            remote_code: Some(format!("code-{key}")),
            message: None,
            at: SystemTime::now(),
        }),
    ]
}

#[tokio::test]
async fn an_outbox_id_is_never_given_twice_so_each_outcome_stays_with_its_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sync = open_sync(&sync_path(dir.path()), &Registry::new());
    let first = sync
        .enqueue(vec![row("crm", "crm:a", 1), row("crm", "crm:b", 2)])
        .await
        .expect("enqueue");
    // The newest rows confirmed (deleted), their outcomes kept: the outbox
    // is empty again, the highest id it held gone with them.
    let settle = first
        .iter()
        .zip(["crm:a", "crm:b"])
        .flat_map(|(&id, key)| confirmed_with_outcome(id, key))
        .collect();
    sync.outbox_settle(settle).await.expect("settle");
    let second = sync
        .enqueue(vec![row("crm", "crm:c", 3)])
        .await
        .expect("enqueue again");
    let highest = first.iter().copied().max().expect("two ids");
    assert!(second[0] > highest, "{second:?} after {first:?}");

    let done = sync
        .outcomes_done(Some("onec".to_owned()), None, 10)
        .await
        .expect("done");
    assert_eq!(
        done.iter().map(|o| o.outbox_id).collect::<Vec<_>>(),
        first,
        "both outcomes listed as done"
    );
    let of_new = sync.outcomes_of(second.clone()).await.expect("outcomes");
    assert!(of_new.is_empty(), "the new row shows none: {of_new:?}");
    // Its own outcome replaces nobody's.
    let settle = confirmed_with_outcome(second[0], "crm:c").into();
    sync.outbox_settle(settle)
        .await
        .expect("settle the new row");
    let done = sync.outcomes_done(None, None, 10).await.expect("done");
    assert_eq!(done.len(), 3, "{done:?}");
    sync.close().await;
}

#[tokio::test]
async fn a_sync_file_from_before_migration_8_goes_on_past_every_id_it_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = sync_path(dir.path());
    std::fs::create_dir_all(path.parent().expect("a folder")).expect("folder");
    // A file as version 7 left it: rows 1-3 queued, 3 (the newest)
    // confirmed with its outcome, 2 marked superseded by a row 5 that is
    // gone too.
    {
        let conn = Connection::open(&path).expect("raw open");
        for migration in &SYNC_MIGRATIONS[..7] {
            conn.execute_batch(migration).expect("migration");
        }
        conn.pragma_update(None, "user_version", 7)
            .expect("user_version");
        conn.execute_batch(
            "INSERT INTO outbox (id, system, kind, record_key, op, body, next_at, created_at, superseded_by)
             VALUES (1, 'crm', 'company', 'crm:a', 'upsert', '{}', 0, 0, NULL),
                    (2, 'crm', 'company', 'crm:b', 'upsert', '{}', 0, 0, 5);
             INSERT INTO outcomes (outbox_id, system, kind, record_key, outcome, at, notify)
             VALUES (3, 'onec', 'company', 'crm:c', 'created', 0, 1);",
        )
        .expect("rows");
    }
    let sync = open_sync(&path, &Registry::new());
    let ids = sync
        .enqueue(vec![row("crm", "crm:d", 4)])
        .await
        .expect("enqueue");
    assert_eq!(ids, [6], "past row 5, named by superseded_by");
    let page = sync
        .outbox_page(OutboxQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("page");
    assert_eq!(
        page.iter().map(|r| r.id).collect::<Vec<_>>(),
        [1, 2, 6],
        "the rows kept"
    );
    let waiting = sync.outcomes_to_notify(10).await.expect("outcomes");
    assert_eq!(waiting.len(), 1, "the outcome kept: {waiting:?}");
    sync.close().await;
    assert_eq!(version_and_tables(&path).0, SYNC_MIGRATIONS.len() as i64);
}
