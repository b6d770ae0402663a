//! The sync store's write rates, and what its bulk writes cost the call
//! journal in the main store beside it (issue 17, "Speed").
//!
//! ```text
//! cargo run --release --example sync_store -- --dir /tmp/s
//! cargo run --release --example sync_store -- --dir /tmp/s --rows 5000 --single 2000 --idle-s 2
//! ```
//!
//! Through the public [`Store`] API only, with the main store
//! (`DIR/cti-gateway.sqlite`) and the sync store (`DIR/cti-gateway.sync.sqlite`)
//! opened as the gateway opens them (created; DIR must hold neither). In
//! order:
//!
//! 1. **idle**: a call's journal append (`Store::append_call` on the main
//!    store) `--rate` times a second (100) for `--idle-s` seconds (5), each
//!    in a task of its own as the PBX's requests come: their waits' median
//!    and p99;
//! 2. **bulk**: `--rows` outbox rows (100,000) enqueued in commands of
//!    `--batch` (1,000), one command after the other, while the appends go
//!    on at the same rate: rows per second committed (goal >= 50,000), the
//!    transactions, the sync file's size (and its WAL), and the appends'
//!    median and p99 during it against idle (goal p99 <= 2x idle). Done
//!    `--bulk-rounds` times (5), each of new rows, [`ROUND_GAP`] apart:
//!    a bulk of 100,000 rows lasts under a second, under 100 appends, and
//!    the p99 of 100 samples is their second worst; the rounds' appends are
//!    pooled, the rate is the rounds' median (and slowest). The pause lets
//!    the idle sync file's checkpoint end before the next bulk (a round
//!    that starts during it measures that checkpoint, not a bulk); the
//!    appends of the pauses, checkpoints and all, are reported apart;
//! 3. **single**: `--single` rows (20,000) enqueued one per command from
//!    `--tasks` (64) concurrent tasks: rows per second (goal >= 5,000) and
//!    rows per commit (group commit).
//!
//! The stores share a disk gate, as the gateway opens them (`--no-gate`:
//! without it, to measure what it does). After closing, the sync file's
//! size (WAL folded in) per row of both phases.
//!
//! Row bodies are CRM-like JSON of about 400 bytes. It allocates with
//! mimalloc, as the gateway does. Human-readable lines go to stderr; lines
//! starting with `BENCH_RESULT` (key=value, times in seconds `_s` or
//! milliseconds `_ms`) to stdout. `goal_met=1|0` says whether the issue's
//! goal was met in this run.

use std::path::{Path, PathBuf};
use std::process::exit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use cti_gateway::store::{CallRecord, DiskGate, NewOutboxRow, OpenOptions, OutboxOp, Store};
use prometheus::Registry;
use tokio::task::JoinHandle;

/// The gateway's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Between bulk rounds: time for the checkpoint of a bulk's WAL (about
/// 60 MB), which starts once the writer is idle.
const ROUND_GAP: Duration = Duration::from_secs(5);

/// The issue's goals.
const GOAL_BULK_ROWS_PER_S: f64 = 50_000.0;
const GOAL_SINGLE_ROWS_PER_S: f64 = 5_000.0;
const GOAL_P99_RATIO: f64 = 2.0;

struct Args {
    dir: PathBuf,
    rows: usize,
    batch: usize,
    single: usize,
    tasks: usize,
    rate: u32,
    idle: Duration,
    /// Opens the stores without their disk gate (to measure what it does).
    no_gate: bool,
    bulk_rounds: usize,
}

fn usage() -> ! {
    eprintln!(
        "usage: sync_store --dir DIR [--rows N] [--batch N] [--single N] [--tasks N] [--rate PER_S] [--idle-s S] [--bulk-rounds N] [--no-gate]"
    );
    exit(2);
}

fn number<T: std::str::FromStr>(flag: &str, v: Option<String>) -> T {
    let v = v.unwrap_or_else(|| usage());
    v.parse().unwrap_or_else(|_| {
        eprintln!("{flag}: not a number: {v:?}");
        usage()
    })
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Args {
    let mut parsed = Args {
        dir: PathBuf::new(),
        rows: 100_000,
        batch: 1_000,
        single: 20_000,
        tasks: 64,
        rate: 100,
        idle: Duration::from_secs(5),
        no_gate: false,
        bulk_rounds: 5,
    };
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--dir" => parsed.dir = args.next().map(PathBuf::from).unwrap_or_else(|| usage()),
            "--rows" => parsed.rows = number(&flag, args.next()),
            "--batch" => parsed.batch = number(&flag, args.next()),
            "--single" => parsed.single = number(&flag, args.next()),
            "--tasks" => parsed.tasks = number(&flag, args.next()),
            "--rate" => parsed.rate = number(&flag, args.next()),
            "--idle-s" => parsed.idle = Duration::from_secs_f64(number(&flag, args.next())),
            "--no-gate" => parsed.no_gate = true,
            "--bulk-rounds" => parsed.bulk_rounds = number(&flag, args.next()),
            _ => usage(),
        }
    }
    if parsed.dir.as_os_str().is_empty()
        || parsed.rows == 0
        || parsed.batch == 0
        || parsed.tasks == 0
        || parsed.rate == 0
        || parsed.bulk_rounds == 0
        || parsed.rows * parsed.bulk_rounds >= FIRST_SINGLE_KEY
    {
        usage();
    }
    parsed
}

fn main() {
    let args = parse_args(std::env::args().skip(1));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(&args));
}

async fn run(args: &Args) {
    let main_path = args.dir.join("cti-gateway.sqlite");
    let sync_path = args.dir.join("cti-gateway.sync.sqlite");
    for path in [&main_path, &sync_path] {
        if path.exists() {
            eprintln!("{} exists; give an empty --dir", path.display());
            exit(2);
        }
    }
    let registry = Registry::new();
    // As the gateway opens them: one disk gate shared by both stores.
    let (mut main_options, mut sync_options) = (OpenOptions::main(), OpenOptions::sync());
    if !args.no_gate {
        let gate = DiskGate::new();
        main_options = main_options.disk_gate(&gate);
        sync_options = sync_options.disk_gate(&gate);
    }
    let main =
        Store::open_with_options(&main_path, &registry, &main_options).unwrap_or_else(|e| fail(&e));
    let sync =
        Store::open_with_options(&sync_path, &registry, &sync_options).unwrap_or_else(|e| fail(&e));

    // 1. Idle: the journal's appends alone.
    eprintln!(
        "idle: {} appends/s for {:.1} s",
        args.rate,
        args.idle.as_secs_f64()
    );
    let idle = {
        let appender = Appender::start(&main, args.rate);
        tokio::time::sleep(args.idle).await;
        Waits::of(appender.stop().await)
    };

    // 2. Bulk: commands of `batch` rows, one after the other, appends on;
    // `bulk_rounds` times, new rows each, with a pause between.
    let mut during = Vec::new();
    let mut between = Vec::new();
    let mut rates = Vec::with_capacity(args.bulk_rounds);
    let mut bulk_s = 0.0;
    let before = transactions(&registry, "sync");
    for round in 0..args.bulk_rounds {
        eprintln!(
            "bulk {}/{}: {} rows in commands of {}",
            round + 1,
            args.bulk_rounds,
            args.rows,
            args.batch
        );
        let appender = Appender::start(&main, args.rate);
        let started = Instant::now();
        let mut next = round * args.rows;
        let last = next + args.rows;
        while next < last {
            let end = (next + args.batch).min(last);
            let rows = (next..end).map(outbox_row).collect();
            sync.enqueue(rows).await.unwrap_or_else(|e| fail(&e));
            next = end;
        }
        let took = started.elapsed().as_secs_f64();
        during.extend(appender.stop().await);
        bulk_s += took;
        rates.push(args.rows as f64 / took);
        let appender = Appender::start(&main, args.rate);
        tokio::time::sleep(ROUND_GAP).await;
        between.extend(appender.stop().await);
    }
    rates.sort_by(f64::total_cmp);
    let (bulk_rate, slowest) = (rates[rates.len() / 2], rates[0]);
    let busy = Waits::of(during);
    let after = Waits::of(between);
    let bulk_transactions = transactions(&registry, "sync") - before;
    let (file, wal) = (file_size(&sync_path), file_size(&wal_of(&sync_path)));
    let queued = (args.rows * args.bulk_rounds) as u64;
    let ratio = busy.p99_ms / idle.p99_ms.max(0.001);
    println!(
        "BENCH_RESULT mode=sync_bulk rows={} batch={} rounds={} wall_s={bulk_s:.3} rows_per_s={bulk_rate:.0} rows_per_s_slowest={slowest:.0} transactions={bulk_transactions} file_bytes={file} wal_bytes={wal} bytes_per_row={} goal_rows_per_s={GOAL_BULK_ROWS_PER_S:.0} goal_met={}",
        args.rows,
        args.batch,
        args.bulk_rounds,
        (file + wal) / queued,
        u8::from(bulk_rate >= GOAL_BULK_ROWS_PER_S),
    );
    println!(
        "BENCH_RESULT mode=sync_journal_between rate={} appends={} median_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        args.rate, after.count, after.median_ms, after.p99_ms, after.max_ms,
    );
    println!(
        "BENCH_RESULT mode=sync_journal rate={} idle_appends={} idle_median_ms={:.2} idle_p99_ms={:.2} idle_max_ms={:.2} bulk_appends={} bulk_median_ms={:.2} bulk_p99_ms={:.2} bulk_max_ms={:.2} p99_ratio={ratio:.2} goal_ratio={GOAL_P99_RATIO} goal_met={}",
        args.rate,
        idle.count,
        idle.median_ms,
        idle.p99_ms,
        idle.max_ms,
        busy.count,
        busy.median_ms,
        busy.p99_ms,
        busy.max_ms,
        u8::from(ratio <= GOAL_P99_RATIO),
    );

    // 3. Single rows from concurrent tasks.
    eprintln!("single: {} rows from {} tasks", args.single, args.tasks);
    let before = transactions(&registry, "sync");
    let started = Instant::now();
    let tasks: Vec<JoinHandle<()>> = (0..args.tasks)
        .map(|t| {
            let sync = sync.clone();
            let (tasks, total) = (args.tasks, args.single);
            tokio::spawn(async move {
                // Task t enqueues rows t, t + tasks, t + 2 * tasks...
                for i in (t..total).step_by(tasks) {
                    sync.enqueue(vec![outbox_row(args_offset(i))])
                        .await
                        .unwrap_or_else(|e| fail(&e));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("enqueue task");
    }
    let single_s = started.elapsed().as_secs_f64();
    let commits = (transactions(&registry, "sync") - before).max(1);
    let single_rate = args.single as f64 / single_s;
    println!(
        "BENCH_RESULT mode=sync_single rows={} tasks={} wall_s={single_s:.3} rows_per_s={single_rate:.0} transactions={commits} rows_per_commit={:.1} goal_rows_per_s={GOAL_SINGLE_ROWS_PER_S:.0} goal_met={}",
        args.single,
        args.tasks,
        args.single as f64 / commits as f64,
        u8::from(single_rate >= GOAL_SINGLE_ROWS_PER_S),
    );

    sync.close().await;
    main.close().await;
    // The WAL measured after the bulk is not folded in yet (the sync file is
    // checkpointed once its writer is idle): the closed file is what rows cost.
    let closed = file_size(&sync_path);
    eprintln!("closed; sync file {closed} bytes after the checkpoint");
    let rows = args.rows * args.bulk_rounds + args.single;
    println!(
        "BENCH_RESULT mode=sync_file rows={rows} file_bytes={closed} bytes_per_row={}",
        closed / rows as u64,
    );
}

/// Rows of the single-row phase get keys after the bulk phases'.
const FIRST_SINGLE_KEY: usize = 1_000_000_000;

fn args_offset(i: usize) -> usize {
    FIRST_SINGLE_KEY + i
}

/// A call's journal append `rate` times a second, each in a task of its
/// own (a slow append does not delay the next call), until stopped.
struct Appender {
    stop: Arc<AtomicBool>,
    ticker: JoinHandle<Vec<JoinHandle<Duration>>>,
}

impl Appender {
    fn start(store: &Store, rate: u32) -> Appender {
        let stop = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (store, stop) = (store.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut appends = Vec::new();
                for i in 0u64.. {
                    tick.tick().await;
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let store = store.clone();
                    appends.push(tokio::spawn(async move {
                        let asked = Instant::now();
                        store
                            .append_call(call(i))
                            .await
                            .unwrap_or_else(|e| fail(&e));
                        asked.elapsed()
                    }));
                }
                appends
            })
        };
        Appender { stop, ticker }
    }

    /// Stops the appends; the waits of those made.
    async fn stop(self) -> Vec<Duration> {
        self.stop.store(true, Ordering::Relaxed);
        let appends = self.ticker.await.expect("append ticker");
        let mut waits = Vec::with_capacity(appends.len());
        for append in appends {
            waits.push(append.await.expect("append task"));
        }
        waits
    }
}

/// The waits of a phase's appends.
struct Waits {
    count: usize,
    median_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

impl Waits {
    fn of(mut waits: Vec<Duration>) -> Waits {
        waits.sort_unstable();
        let at = |q: f64| {
            let last = waits.len().saturating_sub(1);
            let d = waits
                .get((last as f64 * q).round() as usize)
                .copied()
                .unwrap_or_default();
            d.as_secs_f64() * 1000.0
        };
        Waits {
            count: waits.len(),
            median_ms: at(0.5),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

/// Outbox row `i`: an upsert of a company for a CRM, about 400 bytes.
fn outbox_row(i: usize) -> NewOutboxRow {
    let key = format!("{:08x}-11ee-8c90-{i:012x}", splitmix(i as u64) >> 32);
    let body = format!(
        r#"{{"fields":{{"TITLE":"ООО \"Ромашка-{i}\"","COMPANY_TYPE":"CUSTOMER","ORIGIN_ID":"{key}","RQ_INN":"77{i:08}","RQ_KPP":"770101001","PHONE":[{{"VALUE":"+7916{:07}","VALUE_TYPE":"WORK"}}],"EMAIL":[{{"VALUE":"client{i}@example.ru","VALUE_TYPE":"WORK"}}],"ADDRESS":"г. Москва, ул. Ленина, д. {}","ASSIGNED_BY_ID":{}}}}}"#,
        i % 10_000_000,
        i % 200,
        1 + i % 50
    );
    NewOutboxRow {
        system: "bitrix24".to_owned(),
        kind: "company".to_owned(),
        record_key: key,
        op: OutboxOp::Upsert,
        body,
        hash: splitmix(i as u64 ^ 0x5eed),
    }
}

/// splitmix64: a cheap, well-spread hash.
fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A journal row as an IncomingCall writes it.
fn call(i: u64) -> CallRecord {
    CallRecord {
        at: UNIX_EPOCH + Duration::from_millis(i),
        raw_number: "89161234567".to_owned(),
        number: "+79161234567".to_owned(),
        key: "k".to_owned(),
        counterparty_id: None,
        delivered: 0,
        seq: Some(i),
    }
}

/// Write transactions store `db` ran so far: the count of its commit-time
/// histogram (each group commit counts once).
fn transactions(registry: &Registry, db: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "cti_store_commit_seconds")
        .flat_map(|f| f.get_metric())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "db" && l.value() == db)
        })
        .map(|m| m.get_histogram().get_sample_count())
        .sum()
}

fn wal_of(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// The file's size in bytes; 0 when it is not there.
fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Stops the run on a store error: the figures would mean nothing.
fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("store error: {e}");
    exit(1);
}
