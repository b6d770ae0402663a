//! What is checked before a store is opened: a missing or empty file where
//! a store was expected is refused unless `new_store` allows it; a file a
//! gateway has open cannot be opened alone; and the messages about a
//! damaged or missing file say what that file holds.

use super::*;

/// `path` with `suffix` appended to its file name.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn open_as(path: &Path, options: &OpenOptions) -> Result<Store, StoreError> {
    Store::open_with_options(path, &Registry::new(), options)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_install_creates_its_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_path(dir.path());
    let companion = dir.path().join("var").join("cti-gateway.onec.sqlite");
    let store = open_as(&path, &OpenOptions::main().companion(&companion)).expect("created");
    store.close().await;
    assert!(std::fs::metadata(&path).expect("file").len() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_store_file_is_refused_and_new_store_begins_there() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.sqlite");
    std::fs::write(&path, b"").expect("empty file");

    let err = open_as(&path, &OpenOptions::main()).expect_err("refused");
    assert!(
        matches!(
            &err,
            StoreError::Missing {
                role: StoreRole::Main,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    for part in [
        path.display().to_string().as_str(),
        "is empty (0 bytes)",
        "call journal",
        "restore the file from a backup",
        "cti-gateway serve --new-store",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    assert_eq!(
        std::fs::metadata(&path).expect("file").len(),
        0,
        "left alone"
    );

    let store = open_as(&path, &OpenOptions::main().new_store(true)).expect("new store");
    store
        .append_call(call("k", 1, "9160000001"))
        .await
        .expect("writable");
    store.close().await;
    // Once written, the file is an ordinary store: no flag needed.
    let store = open_as(&path, &OpenOptions::main()).expect("reopens");
    assert_eq!(store.calls(None, None, 10).await.expect("read").len(), 1);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_store_file_beside_its_wal_is_refused_and_new_store_keeps_the_wal_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.sqlite");
    let wal = beside(&path, "-wal");
    std::fs::write(&wal, b"the last commits of a lost store").expect("wal");

    let err = open_as(&path, &OpenOptions::main()).expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("is missing while") && msg.contains(&wal.display().to_string()),
        "names what shows a store was there: {msg}"
    );
    assert!(!path.exists(), "nothing created");

    let store = open_as(&path, &OpenOptions::main().new_store(true)).expect("new store");
    store.close().await;
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("store.sqlite-wal.before-new-store-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the old WAL is kept aside");
    assert_eq!(
        std::fs::read(aside[0].path()).expect("read"),
        b"the last commits of a lost store"
    );
}

#[test]
fn a_missing_store_file_beside_a_companion_or_a_shm_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.sqlite");
    let companion = dir.path().join("store.onec.sqlite");
    std::fs::write(&companion, b"1C's snapshot").expect("companion");
    let err = open_as(&path, &OpenOptions::main().companion(&companion)).expect_err("refused");
    assert!(
        err.to_string().contains(&format!(
            "is missing while {} is there",
            companion.display()
        )),
        "{err}"
    );
    // Without the companion named, the same folder is a fresh install's.
    std::fs::remove_file(&companion).expect("rm");
    std::fs::write(beside(&path, "-shm"), b"").expect("shm");
    let err = open_as(&path, &OpenOptions::main()).expect_err("refused");
    assert!(matches!(err, StoreError::Missing { .. }), "{err:?}");
}

#[test]
fn an_empty_cache_file_is_refused_saying_it_held_only_a_cache() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.onec.sqlite");
    std::fs::write(&path, b"").expect("empty file");
    let err = open_as(&path, &OpenOptions::cache("onec")).expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("only the `onec` source's snapshot")
            && msg.contains("rebuilds")
            && msg.contains("--new-store"),
        "{msg}"
    );
    assert!(!msg.contains("call journal"), "{msg}");
}

#[test]
fn a_damaged_file_is_refused_saying_what_it_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let main = dir.path().join("store.sqlite");
    let cache = dir.path().join("store.onec.sqlite");
    for path in [&main, &cache] {
        std::fs::write(path, vec![b'x'; 8192]).expect("garbage");
    }

    let err = open_as(&main, &OpenOptions::main()).expect_err("refused");
    assert!(
        matches!(
            &err,
            StoreError::Corrupt {
                role: StoreRole::Main,
                ..
            }
        ),
        "{err:?}"
    );
    let msg = err.to_string();
    for part in [
        "call journal",
        "pushed",
        "move the file aside",
        "--new-store",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }

    let err = open_as(&cache, &OpenOptions::cache("onec")).expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&cache.display().to_string())
            && msg.contains("only the `onec` source's snapshot, a cache")
            && msg.contains("rebuilt by the source's next read"),
        "{msg}"
    );
    assert!(
        !msg.contains("the call journal") && !msg.contains("is lost"),
        "a cache's message speaks of no journal to lose: {msg}"
    );
}

#[test]
fn an_error_met_later_says_what_the_store_it_came_from_holds() {
    let path = Path::new("/var/lib/cti/store.onec.sqlite");
    let corrupt = rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
        None,
    );
    let err = StoreError::sqlite(path, "reading", corrupt).in_role(&StoreRole::Cache {
        source: "onec".into(),
    });
    assert!(
        matches!(&err, StoreError::Corrupt { role: StoreRole::Cache { source }, .. } if source == "onec"),
        "{err:?}"
    );
    let busy =
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None);
    let err = StoreError::sqlite(path, "reading", busy).in_role(&StoreRole::Main);
    assert!(
        matches!(err, StoreError::Busy { .. }),
        "other errors unchanged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_in_use_cannot_be_opened_alone_and_a_closed_one_lists_its_sets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = store_path(dir.path());
    let running = open(&path);
    running
        .replace_source("file", "f1", records("file", 3))
        .await
        .expect("save");
    running
        .apply_changes("push", records("push", 2), &[], &[])
        .await
        .expect("push");

    let err = Store::open_alone(&path, &Registry::new(), &OpenOptions::main())
        .expect_err("refused while open elsewhere");
    assert!(matches!(err, StoreError::InUse { .. }), "{err:?}");
    assert!(err.to_string().contains("stop the gateway first"), "{err}");
    assert_eq!(
        running
            .calls(None, None, 1)
            .await
            .expect("still readable")
            .len(),
        0
    );
    running.close().await;

    let (store, sets) =
        Store::open_alone(&path, &Registry::new(), &OpenOptions::main()).expect("alone");
    assert_eq!(
        sets,
        vec![
            StoredSet {
                source: "file".into(),
                records: 3
            },
            StoredSet {
                source: "push".into(),
                records: 2
            },
        ]
    );
    assert_eq!(store.forget_source("file").await.expect("forget"), 3);
    store.close().await;
}

#[test]
fn opening_alone_refuses_a_missing_or_empty_file_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("store.sqlite");
    let err =
        Store::open_alone(&path, &Registry::new(), &OpenOptions::main()).expect_err("no store");
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    assert!(!path.exists());
    std::fs::write(&path, b"").expect("empty");
    let err = Store::open_alone(&path, &Registry::new(), &OpenOptions::main()).expect_err("empty");
    assert!(err.to_string().contains("empty (0 bytes)"), "{err}");
}
