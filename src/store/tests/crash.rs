//! A writer killed with SIGKILL (no destructors, no close, writes in
//! flight): what it acknowledged is there, the file opens whole, and a
//! replace cut between two chunks is recognized and completed.
//!
//! Each test here plays two roles. Run by `cargo test`, it is the parent: it
//! runs this same test again in a child process (the test binary, filtered
//! to it with `--exact`) with an environment variable naming a folder, kills
//! that child part-way and checks the store the child left. In the child the
//! variable is set, so the test plays the child: it writes into that folder,
//! says on stdout how far it got, and waits to be killed.
//!
//! Why not a separate `#[ignore]`d test for the child's part: run on its own
//! (`cargo test -- --include-ignored`, as `.ci/run` does) such a test had no
//! folder, returned early and passed, having tested nothing. Here the
//! child's part is a plain function that only its parent's environment
//! reaches, and every test that runs, whatever the filter, tests something.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};

use super::*;

/// Set, to the store's folder, in the child of
/// `acknowledged_writes_survive_a_crash`.
const CRASH_CHILD_DIR: &str = "CTI_STORE_TEST_CRASH_CHILD_DIR";

/// Set, to the store's folder, in the child of
/// `a_crash_between_chunks_leaves_the_source_without_fingerprint`.
const CHUNK_CRASH_CHILD_DIR: &str = "CTI_STORE_TEST_CHUNK_CRASH_CHILD_DIR";

/// The folder the parent gave, when this process is a test's child.
fn child_dir(env: &str) -> Option<PathBuf> {
    std::env::var_os(env).map(PathBuf::from)
}

/// Runs `test` (a test of this module) again in a child process, to be
/// killed part-way, with `env` set to `dir`; its stdout is piped back. A
/// name that matches no test makes a child that prints nothing: the
/// parent's first assertion then fails.
fn spawn_child(test: &str, env: &str, dir: &Path) -> Child {
    // libtest names a test by its module path without the crate's name.
    let module = module_path!()
        .split_once("::")
        .map_or(module_path!(), |(_, path)| path);
    let exe = std::env::current_exe().expect("test binary");
    Command::new(exe)
        .args([
            "--exact",
            &format!("{module}::{test}"),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(env, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run child")
}

#[test]
fn acknowledged_writes_survive_a_crash() {
    if let Some(dir) = child_dir(CRASH_CHILD_DIR) {
        return write_until_killed(&dir);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = spawn_child(
        "acknowledged_writes_survive_a_crash",
        CRASH_CHILD_DIR,
        dir.path(),
    );
    let stdout = child.stdout.take().expect("child stdout");
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.expect("child output");
        if line == "DONE" {
            // Kill it while more appends are on their way.
            std::thread::sleep(Duration::from_millis(5));
            child.kill().expect("kill child");
        }
        lines.push(line);
    }
    let status = child.wait().expect("child exit");
    assert!(
        lines.iter().any(|l| l == "DONE"),
        "child never finished its first writes ({status}): {lines:?}"
    );
    let mut acked: Vec<i64> = lines
        .iter()
        .filter_map(|l| l.trim().strip_prefix("ACK call "))
        .map(|id| id.parse().expect("id"))
        .collect();
    assert!(acked.len() >= 100, "{lines:?}");
    acked.sort_unstable();

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let path = dir.path().join("store.sqlite");
        let store = open(&path);
        let stored: std::collections::HashSet<i64> = store
            .calls(None, None, 10_000)
            .await
            .expect("calls")
            .iter()
            .map(|c| c.id)
            .collect();
        eprintln!(
            "killed child ({status}): {} appends acknowledged, {} stored",
            acked.len(),
            stored.len()
        );
        let lost: Vec<i64> = acked
            .iter()
            .copied()
            .filter(|id| !stored.contains(id))
            .collect();
        assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
        let snapshot = store.load_snapshot().await.expect("load");
        assert_eq!(
            by_source(&snapshot, "file").records,
            records("file", 50).to_vec()
        );
        assert_eq!(
            by_source(&snapshot, "file").fingerprint.as_deref(),
            Some("f-crash")
        );
        store.close().await;
        let conn = Connection::open(&path).expect("raw open");
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(check, "ok");
    });
}

/// The child's part of `acknowledged_writes_survive_a_crash`: writes,
/// prints each acknowledged write, says DONE and keeps appending until the
/// parent kills it.
fn write_until_killed(dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let store = open(dir.join("store.sqlite").as_path());
        store
            .replace_source("file", "f-crash", records("file", 50))
            .await
            .expect("save");
        println!("ACK snapshot");
        let append_many = |from: u64| {
            let tasks: Vec<_> = (from..from + 100)
                .map(|i| {
                    let store = store.clone();
                    tokio::spawn(async move { store.append_call(call("k", i, "1")).await })
                })
                .collect();
            async move {
                for t in tasks {
                    let id = t.await.expect("task").expect("append");
                    println!("ACK call {id}");
                }
            }
        };
        append_many(0).await;
        println!("DONE");
        // Bounded, in case nobody kills us.
        for round in 1..100 {
            append_many(round * 100).await;
        }
    });
}

#[test]
fn a_crash_between_chunks_leaves_the_source_without_fingerprint() {
    if let Some(dir) = child_dir(CHUNK_CRASH_CHILD_DIR) {
        return replace_until_killed(&dir);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = spawn_child(
        "a_crash_between_chunks_leaves_the_source_without_fingerprint",
        CHUNK_CRASH_CHILD_DIR,
        dir.path(),
    );
    let stdout = child.stdout.take().expect("child stdout");
    let mut lines = Vec::new();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.expect("child output");
        if line == "MIDWAY" {
            // SIGKILL: no destructors, the replace's next chunk in flight.
            child.kill().expect("kill child");
        }
        lines.push(line);
    }
    let status = child.wait().expect("child exit");
    assert!(
        lines.iter().any(|l| l == "MIDWAY"),
        "child never got part-way ({status}): {lines:?}"
    );
    assert!(
        !lines.iter().any(|l| l == "REPLACED"),
        "the replace finished before the kill; nothing was tested: {lines:?}"
    );

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let path = dir.path().join("store.sqlite");
        let store = open(&path);
        let snapshot = store.load_snapshot().await.expect("load");
        let file = by_source(&snapshot, "file");
        assert_eq!(
            file.fingerprint, None,
            "a source whose replace was cut short has no fingerprint"
        );
        assert_eq!(store.source_fingerprint("file").await.expect("fp"), None);
        let new_rows = file
            .records
            .iter()
            .filter(|c| c.id.starts_with("new-"))
            .count();
        eprintln!(
            "killed child ({status}) part-way: {new_rows} of 20000 new rows, {} rows in all",
            file.records.len()
        );
        assert!(
            new_rows > 0 && new_rows < 20_000,
            "part of the replace: {new_rows} new rows"
        );

        // The source, seeing no fingerprint, saves again: that completes it.
        store
            .replace_source("file", "f-new", records("new", 20_000))
            .await
            .expect("replace again");
        let snapshot = store.load_snapshot().await.expect("load");
        assert_eq!(
            by_source(&snapshot, "file").records,
            sorted_by_id(&records("new", 20_000))
        );
        assert_eq!(
            store
                .source_fingerprint("file")
                .await
                .expect("fp")
                .as_deref(),
            Some("f-new")
        );
        store.close().await;
        let conn = Connection::open(&path).expect("raw open");
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(check, "ok");
    });
}

/// The child's part of
/// `a_crash_between_chunks_leaves_the_source_without_fingerprint`: saves a
/// snapshot, then starts replacing it in many small chunks, says MIDWAY once
/// some are committed, and waits to be killed.
fn replace_until_killed(dir: &Path) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let path = dir.join("store.sqlite");
        let store = open(&path);
        store
            .replace_source("file", "f-old", records("old", 1_000))
            .await
            .expect("save");
        println!("ACK old");
        store
            .set_chunk(100, Duration::from_secs(10))
            .await
            .expect("chunk");
        let replace = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .replace_source("file", "f-new", records("new", 20_000))
                    .await
            })
        };
        wait_until_part_way(&path, "file").await;
        println!("MIDWAY");
        replace.await.expect("task").expect("replace");
        println!("REPLACED");
    });
}
