//! Open, close, reopen and drop: what was acknowledged is there after each;
//! a file of an older schema is migrated.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_after_close_keeps_snapshot_and_journal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_path(dir.path());
    let registry = Registry::new();
    let store = Store::open(&path, &registry).expect("open");
    store
        .replace_source("file", "f1", records("file", 4))
        .await
        .expect("save");
    let id = store
        .append_call(call("k1", 1_000, "9235292926"))
        .await
        .expect("append");
    store.close().await;
    // The WAL was folded into the file on close.
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    assert!(
        std::fs::metadata(&wal).map_or(true, |m| m.len() == 0),
        "WAL left non-empty after close"
    );

    // Same registry: close unregistered the metrics.
    let store = Store::open(&path, &registry).expect("reopen");
    let snapshot = store.load_snapshot().await.expect("load");
    assert_eq!(
        by_source(&snapshot, "file").records,
        records("file", 4).to_vec()
    );
    assert_eq!(
        store
            .source_fingerprint("file")
            .await
            .expect("fp")
            .as_deref(),
        Some("f1")
    );
    let calls = store.calls(None, None, 10).await.expect("calls");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].id, id);
    assert_eq!(calls[0].key, "k1");
    // New ids continue after the old ones.
    let next = store
        .append_call(call("k1", 2_000, "1"))
        .await
        .expect("append");
    assert!(next > id);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_is_idempotent_and_later_calls_answer_closed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_path(dir.path());
    let registry = Registry::new();
    let store = Store::open(&path, &registry).expect("open");
    let other = store.clone();
    tokio::join!(store.close(), other.close());
    store.close().await;

    let err = store
        .append_call(call("k", 1, "1"))
        .await
        .expect_err("closed");
    assert!(matches!(err, StoreError::Closed), "{err:?}");
    assert!(matches!(
        store.replace_source("f", "x", records("f", 1)).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        store.load_snapshot().await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        store.calls(None, None, 1).await,
        Err(StoreError::Closed)
    ));
    assert!(matches!(
        store.source_fingerprint("f").await,
        Err(StoreError::Closed)
    ));
    // The metrics left the registry with the store.
    assert!(registry.gather().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_finishes_what_the_writer_was_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_path(dir.path());
    let store = open(&path);
    let tasks: Vec<_> = (0..300u64)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.append_call(call("k", i, "1")).await })
        })
        .collect();
    tokio::task::yield_now().await;
    store.close().await;
    let mut acked = Vec::new();
    for t in tasks {
        match t.await.expect("task") {
            Ok(id) => acked.push(id),
            Err(StoreError::Closed) => {}
            Err(e) => panic!("only Ok or Closed expected around close, got {e:?}"),
        }
    }
    let store = open(&path);
    let mut stored: Vec<i64> = store
        .calls(None, None, 1_000)
        .await
        .expect("calls")
        .iter()
        .map(|c| c.id)
        .collect();
    stored.sort_unstable();
    acked.sort_unstable();
    assert_eq!(stored, acked, "exactly the acknowledged appends are stored");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_store_without_close_keeps_acknowledged_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_path(dir.path());
    let store = open(&path);
    let id = store.append_call(call("k", 1, "1")).await.expect("append");
    store
        .replace_source("file", "f1", records("file", 2))
        .await
        .expect("save");
    // Leak it: no close, no drop, the writer thread never stops or checkpoints.
    std::mem::forget(store);
    let store = open(&path);
    assert_eq!(store.calls(None, None, 10).await.expect("calls")[0].id, id);
    assert_eq!(
        by_source(&store.load_snapshot().await.expect("load"), "file")
            .records
            .len(),
        2
    );
    store.close().await;
}

#[tokio::test]
async fn a_file_of_schema_1_is_migrated_and_its_rows_load_without_receive_times() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = store_path(tmp.path());
    std::fs::create_dir_all(path.parent().expect("folder")).expect("mkdir");
    {
        // Schema 1 as it shipped, with one saved source.
        let conn = rusqlite::Connection::open(&path).expect("open v1");
        conn.execute_batch(
            "CREATE TABLE sources (source TEXT PRIMARY KEY NOT NULL, fingerprint TEXT,
                 saved_at INTEGER NOT NULL, records INTEGER NOT NULL);
             CREATE TABLE counterparties (
                 source TEXT NOT NULL REFERENCES sources(source) ON DELETE CASCADE,
                 id TEXT NOT NULL, body TEXT NOT NULL, PRIMARY KEY (source, id)) WITHOUT ROWID;
             CREATE TABLE calls (id INTEGER PRIMARY KEY, at INTEGER NOT NULL,
                 raw_number TEXT NOT NULL, number TEXT NOT NULL, key TEXT NOT NULL,
                 counterparty_id TEXT, delivered INTEGER NOT NULL);
             CREATE INDEX calls_key_at ON calls (key, at);
             CREATE INDEX calls_at ON calls (at);
             INSERT INTO sources VALUES ('file', 'print', 1000, 1);
             INSERT INTO counterparties VALUES ('file', 'a', '{\"id\":\"a\",\"name\":\"A\"}');
             PRAGMA user_version = 1;",
        )
        .expect("v1 schema");
    }
    let store = open(&path);
    let snapshot = store.load_snapshot().await.expect("load");
    let file = by_source(&snapshot, "file");
    assert_eq!(file.records.len(), 1);
    assert_eq!(file.received_at_ms, [None]);
    assert_eq!(
        file.fingerprint.as_deref(),
        Some("print"),
        "loaded complete"
    );
    store.close().await;
}
