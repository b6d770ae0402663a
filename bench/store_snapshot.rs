//! The store under a large snapshot: how long a replace of COUNT records
//! takes, how long a call's journal append waits meanwhile, how fast a
//! fresh process loads the snapshot, and the journal's append rate.
//!
//! ```text
//! cargo run --release --example store_snapshot -- --count 1000000 --dir /tmp/s
//! cargo run --release --example store_snapshot -- --count 20000 --dir /tmp/s --chunk 5000,100
//! ```
//!
//! Through the public [`Store`] API only, in the store file `DIR/store.sqlite`
//! (created; it must not exist). In order:
//!
//! 1. three replaces of source `onec`: COUNT records into an empty store;
//!    the same records again (nothing to write); then with 1% of them
//!    changed, 0.1% gone and 0.1% new. Each is timed (wall and this process's
//!    CPU), while a call is appended every 10 ms: the slowest, median and p99
//!    of those appends' waits, and the write transactions the replace took;
//! 2. the close (the WAL checkpoint), the file's size and the JSON per row;
//! 3. three loads of the snapshot, each in a fresh process (this program
//!    again, `load PATH COUNT`) as at start-up: a process that holds nothing
//!    else, so the figure is not flattered by what the replaces left cached
//!    in this one's allocator;
//! 4. 200 appends one at a time (a commit, so an fsync, each), then 20,000
//!    from as many concurrent tasks (group commit).
//!
//! `--chunk OPS[,MS]` sets a replace's chunks (at most OPS row changes and
//! about MS ms each, 100 if not given) instead of the store's defaults, to
//! compare chunk sizes.
//!
//! It allocates with mimalloc, as the gateway does (`src/main.rs`), so the
//! load figures are the gateway's.
//!
//! Records are as big as real 1C ones, with random-looking GUIDs (so rows do
//! not arrive in key order). Human-readable lines go to stderr; lines
//! starting with `BENCH_RESULT` (key=value, times in seconds `_s` or
//! milliseconds `_ms`) to stdout.

use std::path::{Path, PathBuf};
use std::process::{exit, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use cti_gateway::directory::Counterparty;
use cti_gateway::store::{CallRecord, Store};
use prometheus::Registry;

/// The gateway's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Appends measured one at a time, then from concurrent tasks.
const SERIAL_APPENDS: u64 = 200;
const GROUPED_APPENDS: u64 = 20_000;

/// Loads of the snapshot, each in a fresh process.
const LOAD_ROUNDS: usize = 3;

struct Args {
    count: usize,
    dir: PathBuf,
    chunk: Option<(usize, Duration)>,
}

fn usage() -> ! {
    eprintln!(
        "usage: store_snapshot --count N --dir DIR [--chunk OPS[,MS]]\n\
         \x20      store_snapshot load PATH COUNT   (one timed load; what the run does in a fresh process)"
    );
    exit(2);
}

fn number<T: std::str::FromStr>(flag: &str, v: &str) -> T {
    v.parse().unwrap_or_else(|_| {
        eprintln!("{flag}: not a number: {v:?}");
        usage()
    })
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Args {
    let (mut count, mut dir, mut chunk) = (None, None, None);
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else { usage() };
        match flag.as_str() {
            "--count" => count = Some(number::<usize>(&flag, &value)),
            "--dir" => dir = Some(PathBuf::from(value)),
            "--chunk" => {
                let (ops, ms) = value.split_once(',').unwrap_or((&value, "100"));
                let time = Duration::from_millis(number(&flag, ms));
                chunk = Some((number(&flag, ops), time));
            }
            _ => usage(),
        }
    }
    match (count, dir) {
        (Some(count), Some(dir)) if count > 0 => Args { count, dir, chunk },
        _ => usage(),
    }
}

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if args.peek().map(String::as_str) == Some("load") {
        let (Some(path), Some(count)) = (args.nth(1), args.next()) else {
            usage()
        };
        let count: usize = number("COUNT", &count);
        exit(rt.block_on(load_once(Path::new(&path), count)));
    }
    let args = parse_args(args);
    let path = args.dir.join("store.sqlite");
    if path.exists() {
        eprintln!("{} exists: give a folder without a store", path.display());
        exit(2);
    }
    rt.block_on(run(&args, &path));
}

/// The measurement, steps 1 to 4 (see the top of this file).
async fn run(args: &Args, path: &Path) {
    let n = args.count;
    let records: Arc<[Counterparty]> = (0..n).map(realistic).collect();
    let changed = changed(&records);
    let json_bytes = json_bytes_per_row(&records);
    let registry = Registry::new();
    let store = Store::open(path, &registry).unwrap_or_else(|e| fail(&e));
    if let Some((ops, time)) = args.chunk {
        eprintln!(
            "chunks of at most {ops} row changes and {} ms",
            time.as_millis()
        );
        store
            .set_chunk(ops, time)
            .await
            .unwrap_or_else(|e| fail(&e));
    }
    let steps = [
        (
            "save",
            "save into an empty store",
            "fp1",
            Arc::clone(&records),
        ),
        (
            "same",
            "replace, nothing changed",
            "fp2",
            Arc::clone(&records),
        ),
        (
            "changed",
            "replace, 1% changed, 0.1% gone, 0.1% new",
            "fp3",
            changed,
        ),
    ];
    for (key, what, fingerprint, set) in steps {
        let replace = replace_under_calls(&store, &registry, fingerprint, set).await;
        eprintln!(
            "{n} {what}: {:.2} s wall, {:.2} s CPU, {} transactions; slowest journal append meanwhile {:?} (of {}; median {:?}, p99 {:?})",
            replace.wall_s, replace.cpu_s, replace.transactions,
            replace.waits.max, replace.waits.count, replace.waits.median, replace.waits.p99
        );
        println!(
            "BENCH_RESULT mode=store_replace step={key} count={n} wall_s={:.3} cpu_s={:.3} transactions={} appends={} append_max_ms={:.1} append_median_ms={:.1} append_p99_ms={:.1}",
            replace.wall_s, replace.cpu_s, replace.transactions, replace.waits.count,
            ms(replace.waits.max), ms(replace.waits.median), ms(replace.waits.p99)
        );
    }
    let (close_s, _) = timed(store.close()).await;
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    let hwm_kb = peak_memory_kb();
    eprintln!(
        "close (checkpoint) {close_s:.2} s; ~{json_bytes} B JSON per row, file {} MiB; peak memory {} MiB",
        size >> 20,
        hwm_kb >> 10
    );
    println!("BENCH_RESULT mode=store_file count={n} close_s={close_s:.3} json_bytes_per_row={json_bytes} file_bytes={size} hwm_kb={hwm_kb}");

    for round in 1..=LOAD_ROUNDS {
        let line = load_in_fresh_process(path, n);
        eprintln!("{n} load in a fresh process (round {round}): {line}");
        println!("BENCH_RESULT mode=store_load count={n} round={round} {line}");
    }

    let store = Store::open(path, &registry).unwrap_or_else(|e| fail(&e));
    let (serial, grouped, per_commit) = append_rates(&store, &registry).await;
    eprintln!(
        "appends: {serial:.0}/s one at a time; {grouped:.0}/s from {GROUPED_APPENDS} concurrent tasks ({per_commit:.1} appends per commit)"
    );
    println!("BENCH_RESULT mode=store_appends serial_per_s={serial:.0} grouped_per_s={grouped:.0} appends_per_commit={per_commit:.1}");
    store.close().await;
}

/// What one replace took, and how the appends made during it waited.
struct Replace {
    wall_s: f64,
    cpu_s: f64,
    transactions: u64,
    waits: Waits,
}

/// Replaces source `onec` with `set` while a call is appended every 10 ms.
async fn replace_under_calls(
    store: &Store,
    registry: &Registry,
    fingerprint: &str,
    set: Arc<[Counterparty]>,
) -> Replace {
    let stop = Arc::new(AtomicBool::new(false));
    let appender = {
        let (store, stop) = (store.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut waits = Vec::new();
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let asked = Instant::now();
                store
                    .append_call(call(i))
                    .await
                    .unwrap_or_else(|e| fail(&e));
                waits.push(asked.elapsed());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            waits
        })
    };
    let before = transactions(registry);
    let (wall_s, (cpu_s, replaced)) = timed(async {
        let cpu = process_cpu();
        let replaced = store.replace_source("onec", fingerprint, set).await;
        (process_cpu() - cpu, replaced)
    })
    .await;
    replaced.unwrap_or_else(|e| fail(&e));
    let transactions = transactions(registry) - before;
    stop.store(true, Ordering::Relaxed);
    let waits = appender.await.expect("appender task");
    Replace {
        wall_s,
        cpu_s,
        transactions,
        waits: Waits::of(waits),
    }
}

/// The appends made during a replace: how many, and their waits.
struct Waits {
    count: usize,
    max: Duration,
    median: Duration,
    p99: Duration,
}

impl Waits {
    fn of(mut waits: Vec<Duration>) -> Waits {
        waits.sort_unstable();
        let at = |q: f64| {
            let last = waits.len().saturating_sub(1);
            waits
                .get((last as f64 * q) as usize)
                .copied()
                .unwrap_or_default()
        };
        Waits {
            count: waits.len(),
            max: at(1.0),
            median: at(0.5),
            p99: at(0.99),
        }
    }
}

/// Runs this program again as `load PATH COUNT`; its figure line, or why
/// there is none.
fn load_in_fresh_process(path: &Path, count: usize) -> String {
    let exe = std::env::current_exe().expect("this program's path");
    let out = Command::new(exe)
        .arg("load")
        .arg(path)
        .arg(count.to_string())
        .output();
    match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        Ok(out) => format!(
            "failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("failed to start: {e}"),
    }
}

/// `load PATH COUNT`: opens the store, loads the snapshot once and prints
/// `wall_s=… cpu_s=… records=…`; exit status 1 unless it holds COUNT records.
async fn load_once(path: &Path, count: usize) -> i32 {
    let store = Store::open(path, &Registry::new()).unwrap_or_else(|e| fail(&e));
    let cpu = process_cpu();
    let (wall_s, loaded) = timed(store.load_snapshot()).await;
    let cpu_s = process_cpu() - cpu;
    let loaded = loaded.unwrap_or_else(|e| fail(&e));
    store.close().await;
    let records: usize = loaded.iter().map(|s| s.records.len()).sum();
    println!("wall_s={wall_s:.3} cpu_s={cpu_s:.3} records={records}");
    if records == count {
        0
    } else {
        eprintln!("loaded {records} records, expected {count}");
        1
    }
}

/// Appends per second one at a time, from concurrent tasks, and how many
/// appends each commit of the latter held.
async fn append_rates(store: &Store, registry: &Registry) -> (f64, f64, f64) {
    let started = Instant::now();
    for i in 0..SERIAL_APPENDS {
        store
            .append_call(call(i))
            .await
            .unwrap_or_else(|e| fail(&e));
    }
    let serial = SERIAL_APPENDS as f64 / started.elapsed().as_secs_f64();
    let before = transactions(registry);
    let started = Instant::now();
    let tasks: Vec<_> = (0..GROUPED_APPENDS)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.append_call(call(i)).await })
        })
        .collect();
    for task in tasks {
        task.await
            .expect("append task")
            .unwrap_or_else(|e| fail(&e));
    }
    let grouped = GROUPED_APPENDS as f64 / started.elapsed().as_secs_f64();
    let commits = (transactions(registry) - before).max(1);
    (serial, grouped, GROUPED_APPENDS as f64 / commits as f64)
}

/// Write transactions the store ran so far: the count of its commit-time
/// histogram (each group commit and each chunk of a replace counts once).
fn transactions(registry: &Registry) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|f| f.name() == "cti_store_commit_seconds")
        .flat_map(|f| f.get_metric())
        .map(|m| m.get_histogram().get_sample_count())
        .sum()
}

/// The records with 1% changed, 0.1% gone and 0.1% new.
fn changed(records: &[Counterparty]) -> Arc<[Counterparty]> {
    let n = records.len();
    records
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 1000 != 7)
        .map(|(i, c)| {
            let mut c = c.clone();
            if i % 100 == 3 {
                c.name = format!("{} (changed)", c.name).into();
            }
            c
        })
        .chain((n..n + n / 1000).map(realistic))
        .collect()
}

/// The mean JSON size of the first thousand records.
fn json_bytes_per_row(records: &[Counterparty]) -> usize {
    let sample = &records[..records.len().min(1000)];
    let total: usize = sample
        .iter()
        .map(|c| serde_json::to_string(c).map_or(0, |s| s.len()))
        .sum();
    total / sample.len().max(1)
}

/// A counterparty about as big as a real 1C one, with a random-looking
/// GUID as 1C gives (so rows do not arrive in key order).
fn realistic(i: usize) -> Counterparty {
    // splitmix64: a cheap, well-spread hash of the index.
    let mut z = (i as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    Counterparty {
        id: format!(
            "{:08x}-{:04x}-11ee-8c90-{:012x}",
            z >> 32,
            (z >> 16) & 0xffff,
            i
        )
        .into(),
        name: format!("ООО \"Ромашка-{i}\"").into(),
        full_name: Some(format!("Общество с ограниченной ответственностью \"Ромашка-{i}\"").into()),
        inn: Some(format!("77{i:08}").into()),
        kpp: Some("770101001".into()),
        ogrn: None,
        category: Some((i % 3) as i64),
        manager_phone: Some(format!("{}", 200 + i % 50).into()),
        manager_name: Some("Иванова Мария".into()),
        phones: vec![
            format!(
                "+7 916 {:03}-{:02}-{:02}",
                i % 1000,
                i % 100,
                (i / 100) % 100
            )
            .into(),
            format!("8495{i:07}").into(),
        ],
        emails: vec![format!("client{i}@example.ru").into()],
        address: Some(format!("г. Москва, ул. Ленина, д. {}, офис {}", i % 200, i % 50).into()),
        data_version: Some(format!("AAAAAA{i:06}").into()),
        ..Default::default()
    }
}

/// A journal row as an IncomingCall writes it.
fn call(i: u64) -> CallRecord {
    CallRecord {
        at: UNIX_EPOCH + Duration::from_millis(i),
        raw_number: "81".to_owned(),
        number: "+71".to_owned(),
        key: "k".to_owned(),
        counterparty_id: None,
        delivered: 0,
        seq: Some(i),
    }
}

/// Runs `f`; its wall time in seconds, and its output.
async fn timed<T>(f: impl std::future::Future<Output = T>) -> (f64, T) {
    let started = Instant::now();
    let out = f.await;
    (started.elapsed().as_secs_f64(), out)
}

/// CPU seconds this process has used (user + system), where /proc tells.
fn process_cpu() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let after = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            let ticks =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(f64::NAN)
}

/// This process's peak resident memory (VmHWM) in KiB; 0 where /proc does
/// not tell.
fn peak_memory_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Stops the run on a store error: the figures would mean nothing.
fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("store error: {e}");
    exit(1);
}
