//! The feed over an outbox in memory (the sync store's is tested in
//! `tests/sync_foundation.rs`).

use std::sync::Mutex;
use std::time::SystemTime;

use super::*;
use crate::directory::Counterparty;

/// An outbox and id-map in memory; `fail` makes every call fail.
#[derive(Clone, Default)]
struct Memory {
    rows: Arc<Mutex<Vec<FeedRow>>>,
    idmap: Arc<Mutex<HashMap<(String, String), u64>>>,
    fail: Arc<AtomicBool>,
}

impl Memory {
    fn taken(&self) -> Vec<(String, String, Op)> {
        let mut rows: Vec<_> = std::mem::take(&mut *self.rows.lock().expect("lock"))
            .into_iter()
            .map(|r| (r.system, r.record_key, r.op))
            .collect();
        rows.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        rows
    }

    fn failing(&self) -> Result<(), OutboxError> {
        if self.fail.load(Ordering::SeqCst) {
            Err("the sync file is read-only".into())
        } else {
            Ok(())
        }
    }
}

impl Outbox for Memory {
    async fn enqueue(&self, rows: Vec<FeedRow>) -> Result<(), OutboxError> {
        self.failing()?;
        let mut idmap = self.idmap.lock().expect("lock");
        for row in &rows {
            idmap.insert((row.system.clone(), row.record_key.clone()), row.hash);
        }
        self.rows.lock().expect("lock").extend(rows);
        Ok(())
    }

    async fn hashes(&self, system: &str, _kind: &str) -> Result<HashMap<String, u64>, OutboxError> {
        self.failing()?;
        Ok(self
            .idmap
            .lock()
            .expect("lock")
            .iter()
            .filter(|((s, _), _)| s == system)
            .map(|((_, k), h)| (k.clone(), *h))
            .collect())
    }
}

fn render(c: &Counterparty) -> Box<[u8]> {
    c.name.as_bytes().into()
}

fn record(id: &str, name: &str) -> Counterparty {
    Counterparty {
        id: id.into(),
        name: name.into(),
        inn: Some("7707083893".into()),
        phones: vec![format!("8916000000{}", id.len()).into()],
        ..Default::default()
    }
}

struct Running {
    directory: Arc<Directory>,
    feed: Feed,
    outbox: Memory,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.stop.send_replace(true);
        self.task.await.expect("feed task");
    }
}

fn registry() -> Registry {
    let crm = SystemSpec::new("crm").expect("spec");
    let names_only = SystemSpec::new("names")
        .expect("spec")
        .with_fields(&["name"])
        .expect("fields");
    Registry::new(vec![crm, names_only]).expect("registry")
}

fn start(capacity: usize, outbox: Memory, existing: Vec<Counterparty>) -> Running {
    let registry = registry();
    let metrics = FeedMetrics::new(&prometheus::Registry::new(), &registry).expect("metrics");
    let settings = FeedSettings {
        capacity,
        retry_after: Duration::from_millis(20),
    };
    let (feed, input) = channel(&settings, metrics);
    let directory = Arc::new(Directory::new(render).reporting_changes(feed.sink()));
    if !existing.is_empty() {
        directory.replace_source("file", existing, None, SystemTime::now());
    }
    let (stop, stopped) = watch::channel(false);
    let task = spawn(
        input,
        Arc::clone(&directory),
        registry,
        outbox.clone(),
        stopped,
    )
    .expect("feed thread");
    Running {
        directory,
        feed,
        outbox,
        stop,
        task,
    }
}

fn push(dir: &Directory, records: Vec<Counterparty>, removals: &[&str]) {
    let removals: Vec<Box<str>> = removals.iter().map(|r| (*r).into()).collect();
    dir.apply_changes("push", records, &removals, &[], SystemTime::now());
}

#[tokio::test]
async fn the_start_up_reconcile_then_each_change_once_per_system_whose_fields_moved() {
    let outbox = Memory::default();
    let gw = start(16, outbox.clone(), vec![record("1", "A"), record("2", "B")]);
    gw.feed.settled().await;
    assert_eq!(gw.outbox.taken().len(), 4, "both records for both systems");
    // A phone changed: only the system that keeps phones.
    let mut one = record("1", "A");
    one.phones = vec!["89169999999".into()];
    push(&gw.directory, vec![one], &[]);
    gw.feed.settled().await;
    assert_eq!(gw.outbox.taken(), [("crm".into(), "1".into(), Op::Upsert)]);
    // The same phone written another way, and a change marker: nothing.
    let mut again = record("1", "A");
    again.phones = vec!["+7 916 999-99-99".into()];
    again.data_version = Some("v2".into());
    push(&gw.directory, vec![again], &[]);
    gw.feed.settled().await;
    assert!(gw.outbox.taken().is_empty());
    // Removed: a remove for each system that had it.
    push(&gw.directory, vec![], &["2"]);
    gw.directory
        .replace_source("file", vec![record("1", "A")], None, SystemTime::now());
    gw.feed.settled().await;
    assert_eq!(
        gw.outbox.taken(),
        [
            ("crm".into(), "2".into(), Op::Remove),
            ("names".into(), "2".into(), Op::Remove)
        ]
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_record_with_a_bad_inn_is_never_enqueued() {
    let outbox = Memory::default();
    let gw = start(16, outbox, vec![]);
    gw.feed.settled().await;
    let mut typo = record("1", "A");
    typo.inn = Some("7707083894".into());
    push(&gw.directory, vec![typo], &[]);
    gw.feed.settled().await;
    assert!(gw.outbox.taken().is_empty());
    assert!(
        gw.directory.lookup_id("1").is_some(),
        "it answers all the same"
    );
    let counted = |gw: &Running| gw.feed.metrics().held_back_total("crm");
    assert_eq!(counted(&gw), 1);
    // Looked at again (another change of the push set, a reconcile): the
    // same content is not counted again.
    push(&gw.directory, vec![record("2", "B")], &[]);
    gw.feed.inlet.reconcile_later();
    gw.feed.settled().await;
    let reconciles = gw.feed.reconciles();
    gw.feed.inlet.reconcile_later();
    gw.feed.settled().await;
    assert!(gw.feed.reconciles() > reconciles, "a reconcile ran");
    assert_eq!(counted(&gw), 1, "once per content");
    // Its content changed, still failing: counted once more.
    let mut renamed = record("1", "A2");
    renamed.inn = Some("7707083894".into());
    push(&gw.directory, vec![renamed], &[]);
    gw.feed.settled().await;
    assert_eq!(counted(&gw), 2);
    gw.stop().await;
}

#[tokio::test]
async fn a_full_channel_drops_reports_for_a_reconcile_and_a_source_never_waits() {
    let outbox = Memory::default();
    let gw = start(1, outbox, vec![]);
    gw.feed.settled().await;
    let reconciles = gw.feed.reconciles();
    // Many changes at once: the channel of one holds one.
    for i in 0..50 {
        push(&gw.directory, vec![record(&format!("r{i}"), "A")], &[]);
    }
    gw.feed.settled().await;
    assert!(gw.feed.reconciles() > reconciles, "a reconcile ran");
    let rows = gw.outbox.taken();
    assert_eq!(rows.len(), 100, "each record once per system: {rows:?}");
    gw.stop().await;
}

#[tokio::test]
async fn a_failed_enqueue_is_made_good_by_a_reconcile() {
    let outbox = Memory::default();
    let gw = start(16, outbox.clone(), vec![]);
    gw.feed.settled().await;
    outbox.fail.store(true, Ordering::SeqCst);
    push(&gw.directory, vec![record("1", "A")], &[]);
    // The enqueue fails, then the reconcile, tried again until it passes.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(outbox.taken().is_empty());
    outbox.fail.store(false, Ordering::SeqCst);
    gw.feed.settled().await;
    assert_eq!(outbox.taken().len(), 2);
    gw.stop().await;
}

#[tokio::test]
async fn reports_dropped_as_by_a_crash_are_found_by_the_next_start_up() {
    let outbox = Memory::default();
    let gw = start(16, outbox.clone(), vec![record("1", "A"), record("2", "B")]);
    gw.feed.settled().await;
    outbox.taken();
    gw.feed.drop_reports_for_tests(true);
    push(
        &gw.directory,
        vec![record("1", "A2"), record("3", "C")],
        &["2"],
    );
    gw.directory
        .replace_source("file", vec![record("1", "A")], None, SystemTime::now());
    gw.feed.settled().await;
    assert!(outbox.taken().is_empty(), "lost with the crash");
    let records: Vec<Counterparty> = gw
        .directory
        .snapshot()
        .answering()
        .map(|e| e.counterparty().expect("json"))
        .collect();
    gw.stop().await;
    // "Restart": the same directory content and id-map, a new feed.
    let again = start(16, outbox.clone(), records);
    again.feed.settled().await;
    let rows = outbox.taken();
    let crm: Vec<_> = rows
        .iter()
        .filter(|r| r.0 == "crm")
        .map(|r| (r.1.as_str(), r.2))
        .collect();
    assert_eq!(
        crm,
        [("1", Op::Upsert), ("2", Op::Remove), ("3", Op::Upsert)]
    );
    again.stop().await;
}

#[tokio::test]
async fn a_hash_the_runtime_noted_is_not_sent_back_to_its_system() {
    let outbox = Memory::default();
    let gw = start(16, outbox.clone(), vec![record("1", "A")]);
    gw.feed.settled().await;
    outbox.taken();
    // "crm" sent a new name: its runtime committed the hash, notes it, then
    // applies the record.
    let from_crm = record("1", "From CRM");
    let registry = registry();
    let crm = registry.get("crm").expect("crm");
    gw.feed.note_hashes(
        "crm",
        vec![("1".into(), hash::hash(&from_crm, crm.fields()))],
    );
    push(&gw.directory, vec![from_crm], &[]);
    gw.feed.settled().await;
    assert_eq!(
        outbox.taken(),
        [("names".into(), "1".into(), Op::Upsert)],
        "only the other system is sent the change"
    );
    gw.stop().await;
}
