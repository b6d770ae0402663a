//! Backups of a live store: a consistent copy made while calls are
//! appended, appends not held up by it, and the folders refused.

use super::*;

/// Opens a copy and answers its integrity check and its journal's ids.
fn inspect_copy(path: &Path) -> (String, Vec<i64>) {
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("the copy opens");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check runs");
    let mut stmt = conn
        .prepare("SELECT id FROM calls ORDER BY id")
        .expect("prepare");
    let ids = stmt
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<Vec<i64>, _>>()
        .expect("ids");
    (check, ids)
}

/// The largest time one append took while `during` ran, appending
/// steadily from another task.
async fn slowest_append_while<F: std::future::Future>(
    store: &Store,
    during: F,
) -> (Duration, F::Output) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let appender = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            let mut i = 0u64;
            while !*stopped.borrow() {
                let started = Instant::now();
                store
                    .append_call(call(
                        "live",
                        2_000_000 + i,
                        &format!("9{:09}", i % 1_000_000_000),
                    ))
                    .await
                    .expect("append during the backup");
                slowest = slowest.max(started.elapsed());
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            slowest
        })
    };
    let output = during.await;
    stop.send_replace(true);
    (appender.await.expect("appender"), output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_a_live_store_is_whole_and_holds_the_calls_committed_before_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(&store_path(dir.path()));
    // Some bulk, so that the copy takes many steps: about 4 MB of snapshot.
    store
        .replace_source("file", "fp-1", records("cp", 8_000))
        .await
        .expect("replace");
    let mut committed = Vec::new();
    for i in 0..300u64 {
        committed.push(
            store
                .append_call(call("k", 1_000_000 + i, &format!("91633333{:02}", i % 100)))
                .await
                .expect("append"),
        );
    }
    let target = tempfile::tempdir().expect("backup dir");
    let checked =
        check_backup_target(target.path(), std::slice::from_ref(&store)).expect("target ok");

    // Appends without a backup, for the baseline of this machine's disk.
    let (baseline, ()) =
        slowest_append_while(&store, tokio::time::sleep(Duration::from_millis(300))).await;
    let (slowest, copied) = slowest_append_while(&store, store.backup_into(&checked)).await;
    let copied = copied.expect("backup");
    eprintln!(
        "backup: {} bytes in {:?}; slowest append {slowest:?} (without a backup: {baseline:?})",
        copied.bytes, copied.elapsed
    );
    assert_eq!(copied.path, checked.join("cti-gateway.sqlite"));
    assert!(copied.bytes > 1_000_000, "{copied:?}");
    assert!(
        slowest < baseline + Duration::from_millis(100),
        "an append waited {slowest:?} during the backup (without: {baseline:?})"
    );

    let (check, ids) = inspect_copy(&copied.path);
    assert_eq!(check, "ok");
    for id in &committed {
        assert!(
            ids.contains(id),
            "call {id} committed before the backup is in the copy"
        );
    }
    // Nothing beside the copy: no WAL, no partial file.
    let mut names: Vec<String> = std::fs::read_dir(target.path())
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["cti-gateway.sqlite"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&copied.path)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the copy is private: {mode:o}");
    }

    // A second backup replaces the first, and the copy opens as a store.
    let again = store.backup_into(&checked).await.expect("second backup");
    store.close().await;
    let reopened = open(&again.path);
    let calls = reopened.calls(None, None, 10_000).await.expect("calls");
    assert!(calls.len() >= committed.len());
    reopened.close().await;
}

#[test]
fn a_relative_missing_or_own_folder_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let path = store_path(dir.path());
    let store = runtime.block_on(async { open(&path) });
    let stores = std::slice::from_ref(&store);

    let relative = check_backup_target(Path::new("backups"), stores).expect_err("relative");
    assert!(matches!(relative, BackupError::BadTarget(_)), "{relative}");
    assert!(relative.to_string().contains("absolute"), "{relative}");

    let missing = check_backup_target(&dir.path().join("nope"), stores).expect_err("missing");
    assert!(matches!(missing, BackupError::Unusable(_)), "{missing}");

    let own = check_backup_target(path.parent().expect("folder"), stores).expect_err("own folder");
    assert!(matches!(own, BackupError::Unusable(_)), "{own}");
    assert!(own.to_string().contains("store's own folder"), "{own}");

    let file = check_backup_target(&path, stores).expect_err("a file");
    assert!(file.to_string().contains("not a folder"), "{file}");

    // Not writable, even for root: /proc takes no new files.
    #[cfg(target_os = "linux")]
    {
        let proc = check_backup_target(Path::new("/proc"), stores).expect_err("/proc");
        assert!(proc.to_string().contains("not writable"), "{proc}");
    }
    runtime.block_on(store.close());
}
