//! The disk gate between the call journal and the sync store (`gate.rs`),
//! and the sync file's checkpoints off its writer (`writer/checkpoint.rs`).

use super::*;
use crate::store::DiskGate;

/// Longest a sync write waits at the gate (`writer::GATE_MAX`).
const GATE_MAX: Duration = Duration::from_millis(20);

fn outbox_row(key: &str, body_bytes: usize) -> NewOutboxRow {
    NewOutboxRow {
        system: "bitrix24".to_owned(),
        kind: "company".to_owned(),
        record_key: key.to_owned(),
        op: OutboxOp::Upsert,
        body: "x".repeat(body_bytes),
        hash: 1,
    }
}

fn open_pair(dir: &Path, gate: &DiskGate) -> (Store, Store, PathBuf) {
    let registry = Registry::new();
    let main = Store::open_with_options(
        &store_path(dir),
        &registry,
        &OpenOptions::main().disk_gate(gate),
    )
    .expect("main store opens");
    let sync_path = dir.join("var").join("cti-gateway.sync.sqlite");
    let sync =
        Store::open_with_options(&sync_path, &registry, &OpenOptions::sync().disk_gate(gate))
            .expect("sync store opens");
    (main, sync, sync_path)
}

#[test]
fn an_open_gate_lets_through_at_once() {
    let gate = DiskGate::new();
    assert!(!gate.journal_busy());
    assert!(gate.wait_clear(Duration::from_secs(5)) < Duration::from_secs(1));
}

#[test]
fn a_marked_commit_holds_the_sync_side_until_it_ends() {
    let gate = DiskGate::new();
    let marked = std::sync::Arc::new(std::sync::Barrier::new(2));
    let journal = {
        let (gate, marked) = (gate.clone(), Arc::clone(&marked));
        std::thread::spawn(move || {
            let _commit = gate.journal_commit();
            marked.wait();
            std::thread::sleep(Duration::from_millis(30));
        })
    };
    marked.wait();
    // From the barrier, not from the call: a loaded machine may run this
    // thread late, and the wait then is shorter, but never ends before the
    // commit (30 ms after the barrier) does.
    let since = Instant::now();
    assert!(gate.journal_busy());
    gate.wait_clear(Duration::from_secs(30));
    assert!(
        since.elapsed() >= Duration::from_millis(25),
        "held while the journal committed: {:?}",
        since.elapsed()
    );
    assert!(!gate.journal_busy(), "open again once the commit ended");
    journal.join().expect("journal thread");
}

#[test]
fn the_wait_is_bounded_while_the_journal_stays_busy() {
    let gate = DiskGate::new();
    let _commit = gate.journal_commit();
    let _another = gate.journal_commit();
    let waited = gate.wait_clear(Duration::from_millis(30));
    assert!(waited >= Duration::from_millis(30), "{waited:?}");
    assert!(gate.journal_busy());
    drop(_commit);
    assert!(gate.journal_busy(), "one commit still marked");
    drop(_another);
    assert!(!gate.journal_busy());
}

#[tokio::test]
async fn a_sync_commit_waits_at_the_gate_and_goes_through_after_its_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = DiskGate::new();
    let (main, sync, _) = open_pair(dir.path(), &gate);

    // A journal commit that never ends: the enqueue waits its bound, then
    // commits anyway (the sync store never stops for good).
    let commit = gate.journal_commit();
    let started = Instant::now();
    let ids = tokio::time::timeout(
        Duration::from_secs(30),
        sync.enqueue(vec![outbox_row("a", 10)]),
    )
    .await
    .expect("the gate's wait is bounded")
    .expect("enqueued");
    assert_eq!(ids.len(), 1);
    assert!(
        started.elapsed() >= GATE_MAX,
        "the commit waited at the gate: {:?}",
        started.elapsed()
    );
    drop(commit);

    // The journal's own appends mark the gate and never wait at it.
    main.append_call(call("k", 1, "+79161234567"))
        .await
        .expect("appended");
    assert!(!gate.journal_busy(), "the mark ends with the commit");
    sync.close().await;
    main.close().await;
}

#[tokio::test]
async fn the_sync_file_is_checkpointed_once_its_writer_is_idle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gate = DiskGate::new();
    let (main, sync, sync_path) = open_pair(dir.path(), &gate);
    let before = std::fs::metadata(&sync_path).expect("sync file").len();
    // About 1 MB: far below the WAL's cap, so only the checkpoint thread
    // can bring it into the database file.
    for batch in 0..10 {
        let rows = (0..100)
            .map(|i| outbox_row(&format!("r{batch:02}-{i:03}"), 1_000))
            .collect();
        sync.enqueue(rows).await.expect("enqueued");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = std::fs::metadata(&sync_path).expect("sync file").len();
        if now > before + 900_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not checkpointed: the file stayed at {now} bytes (from {before})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sync.close().await;
    main.close().await;
}
