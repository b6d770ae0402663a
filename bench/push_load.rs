//! Push API load for cti-gateway (`bench/push.sh`): `POST /api/v1/counterparties`
//! against a running gateway whose directory holds the records of
//! `bench/gen_counterparties.rs`, with SayName asked right after a push to
//! see that the pushed record answers.
//!
//! ```text
//! cargo run --release --example push_load -- single --addr 127.0.0.1:18083 \
//!     --token T --seed 42 --run 1712345678 --first-slot 0 --pushes 200 --updates 10
//! cargo run --release --example push_load -- batch ... --pushes 20 --size 1000
//! cargo run --release --example push_load -- concurrent ... --clients 64 --seconds 60
//! ```
//!
//! - `single`: `--pushes` sequential one-record pushes, each a new id and a
//!   new phone; after each 200 one SayName for that phone, which must answer
//!   the record's name (else a miss). Then `--updates` one-record pushes that
//!   rename records pushed before, each followed by a SayName that must answer
//!   the new name.
//! - `batch`: `--pushes` sequential pushes of `--size` new records each; after
//!   each 200 one SayName for the batch's last record.
//! - `concurrent`: `--clients` connections, each pushing one new record at a
//!   time, back to back, for `--seconds`; records/s counts the records whose
//!   200 arrived within that time (pushes still waiting then are let finish
//!   and counted apart), and the slowest whole second of the run is printed.
//!
//! Records are new counterparties: id `pushbench-{run}-{phase}-{slot}` (unique
//! per run and phase), a Cyrillic name, INN, category, the manager's
//! extension and one mobile phone, `+7 9xx xxx-xx-xx`, of fresh phone slot
//! `--first-slot` + n (`bench/phone_slots.rs`: a number that no generated
//! record has, given the data's `--seed`). Every connection is kept alive.
//!
//! Each phase ends with one machine-readable line on stdout,
//! `PUSH_RESULT phase=... key=value ...` (latencies in ms; `next_slot` is the
//! first fresh slot left unused, for the next phase), and says the same in
//! words on stderr with the first errors. Any answer but a 2xx, and any
//! request without an answer within `--timeout`, is an error.
//! Exit status 0 when the phase ran (whatever it measured), 2 when it could
//! not (bad arguments).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use clap::{Args as ClapArgs, Parser, Subcommand};
use http_body_util::Full;
use hyper::{Method, Request};

#[allow(dead_code)] // gen_counterparties uses the rest
#[path = "phone_slots.rs"]
mod phone_slots;

const API_PATH: &str = "/api/v1/counterparties";
/// How many errors are printed in full (all are counted).
const PRINT_ERRORS: u64 = 20;

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s}: {e}"))
}

#[derive(Parser, Debug)]
#[command(about = "Push API load for cti-gateway (bench/push.sh)")]
struct Cli {
    #[command(subcommand)]
    phase: Phase,
}

#[derive(Subcommand, Debug)]
enum Phase {
    /// Sequential one-record pushes, each checked with a SayName.
    Single {
        #[command(flatten)]
        common: Common,
        /// One-record pushes of new records.
        #[arg(long, default_value_t = 200)]
        pushes: u64,
        /// One-record pushes that rename records pushed before.
        #[arg(long, default_value_t = 10)]
        updates: u64,
    },
    /// Sequential pushes of `--size` new records each.
    Batch {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 20)]
        pushes: u64,
        #[arg(long, default_value_t = 1000)]
        size: u64,
    },
    /// Clients pushing one new record at a time, concurrently.
    Concurrent {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 64)]
        clients: u64,
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
}

#[derive(ClapArgs, Debug, Clone)]
struct Common {
    /// The gateway, HOST:PORT.
    #[arg(long)]
    addr: String,
    /// The push API's Bearer token (`[api] token`).
    #[arg(long)]
    token: String,
    #[arg(long, default_value = "/telephony/ws/VATS")]
    soap_path: String,
    #[arg(long, default_value = "SOAP")]
    soap_user: String,
    #[arg(long, default_value = "123")]
    soap_password: String,
    /// The `--seed` the data was generated with (fresh phones depend on it).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Tells this run's ids from another's.
    #[arg(long)]
    run: String,
    /// The fresh phone slot of the first new record (see bench/phone_slots.rs).
    #[arg(long, default_value_t = 0)]
    first_slot: u64,
    /// Longest wait for one answer.
    #[arg(long, value_parser = duration, default_value = "120s")]
    timeout: Duration,
}

// ------------------------------------------------------------------ HTTP

#[path = "http_conn.rs"]
mod http_conn;
use http_conn::{say_name_envelope, Conn};

fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(300).collect()
}

/// What every request needs: the address, the headers, the phone offset.
struct Target {
    common: Common,
    bearer: String,
    basic: String,
    /// The slot bijection's offset of the data's seed.
    offset: u64,
}

impl Target {
    fn new(common: Common) -> Target {
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", common.soap_user, common.soap_password));
        Target {
            bearer: format!("Bearer {}", common.token),
            basic: format!("Basic {basic}"),
            offset: phone_slots::offset_of_seed(common.seed),
            common,
        }
    }

    fn push_request(&self, body: String) -> Request<Full<Bytes>> {
        Request::builder()
            .method(Method::POST)
            .uri(API_PATH)
            .header("host", &self.common.addr)
            .header("content-type", "application/json")
            .header("authorization", &self.bearer)
            .body(Full::new(Bytes::from(body)))
            .expect("a well-formed push request")
    }

    fn say_name_request(&self, number: &str) -> Request<Full<Bytes>> {
        let body = say_name_envelope(number);
        Request::builder()
            .method(Method::POST)
            .uri(&self.common.soap_path)
            .header("host", &self.common.addr)
            .header("content-type", "text/xml; charset=utf-8")
            .header("authorization", &self.basic)
            .body(Full::new(Bytes::from(body)))
            .expect("a well-formed SayName request")
    }

    /// The ten-digit national number of fresh slot `slot`.
    fn phone(&self, slot: u64) -> u64 {
        phone_slots::fresh_mobile(slot, self.offset)
    }

    fn id(&self, phase: &str, slot: u64) -> String {
        format!("pushbench-{}-{phase}-{slot}", self.common.run)
    }

    /// One record in the contract's shape (`{"id", "name", "phones", ...}`).
    /// The name is plain Cyrillic, digits and spaces, so SayName's answer
    /// carries it unescaped.
    fn record(&self, out: &mut String, phase: &str, slot: u64, name: &str) {
        let d = format!("{:010}", self.phone(slot));
        let _ = write!(
            out,
            r#"{{"id":"{}","name":"{name}","inn":"77{:08}","kpp":"770101001","category":{},"manager_phone":"{}","phones":["+7 {} {}-{}-{}"]}}"#,
            self.id(phase, slot),
            slot % 100_000_000,
            slot % 4,
            101 + slot % 150,
            &d[0..3],
            &d[3..6],
            &d[6..8],
            &d[8..10],
        );
    }

    fn one_record_body(&self, phase: &str, slot: u64, name: &str) -> String {
        let mut body = String::with_capacity(300);
        body.push('[');
        self.record(&mut body, phase, slot, name);
        body.push(']');
        body
    }
}

fn new_name(phase: &str, slot: u64) -> String {
    format!("ООО Пушбенч {phase} {slot}")
}

fn renamed(phase: &str, slot: u64, round: u64) -> String {
    format!("ООО Пушбенч {phase} {slot} переименовано {round}")
}

/// Pushes `body`; Ok(latency) on a 2xx, else why not.
async fn push(t: &Target, conn: &mut Conn, body: String) -> Result<Duration, String> {
    let started = Instant::now();
    match conn.send(t.push_request(body), t.common.timeout).await {
        Ok((status, _)) if (200..300).contains(&status) => Ok(started.elapsed()),
        Ok((status, body)) => Err(format!("HTTP {status}: {}", snippet(&body))),
        Err(e) => Err(e),
    }
}

/// Asks SayName for fresh slot `slot`'s phone (as the PBX sends it,
/// `8XXXXXXXXXX`); Ok(latency) when the answer's title is `name`, else what
/// it answered.
async fn say_name_is(
    t: &Target,
    conn: &mut Conn,
    slot: u64,
    name: &str,
) -> Result<Duration, String> {
    let number = format!("8{:010}", t.phone(slot));
    let started = Instant::now();
    let (status, body) = conn
        .send(t.say_name_request(&number), t.common.timeout)
        .await
        .map_err(|e| format!("SayName {number}: {e}"))?;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&body);
    if status != 200 {
        return Err(format!(
            "SayName {number}: HTTP {status}: {}",
            snippet(&body)
        ));
    }
    // The answer escapes its inner document: &lt;title&gt;NAME&lt;/title&gt;
    let expected = format!("&lt;title&gt;{name}&lt;/title&gt;");
    if text.contains(&expected) {
        Ok(took)
    } else {
        const TITLE: &str = "&lt;title&gt;";
        let answered = text
            .find(TITLE)
            .map(|at| {
                let rest = &text[at + TITLE.len()..];
                rest[..rest.find("&lt;/title&gt;").unwrap_or(rest.len())].to_owned()
            })
            .unwrap_or_else(|| snippet(&body));
        Err(format!(
            "SayName {number}: answered {answered:?}, not {name:?}"
        ))
    }
}

// ------------------------------------------------------------------ figures

/// Latencies of one kind of request, and its errors.
#[derive(Default)]
struct Series {
    micros: Vec<u64>,
    errors: u64,
}

impl Series {
    fn ok(&mut self, d: Duration) {
        self.micros.push(d.as_micros() as u64);
    }

    fn failed(&mut self, what: &str, e: &str) {
        self.errors += 1;
        if self.errors <= PRINT_ERRORS {
            eprintln!("[push_load] {what}: {e}");
        }
    }

    /// `p50_ms=.. p99_ms=.. max_ms=..` with `prefix` before each key.
    fn figures(&self, prefix: &str) -> String {
        let mut v = self.micros.clone();
        v.sort_unstable();
        let ms = |us: Option<&u64>| {
            us.map_or("-".to_owned(), |&us| format!("{:.3}", us as f64 / 1000.0))
        };
        format!(
            "{prefix}p50_ms={} {prefix}p99_ms={} {prefix}max_ms={}",
            ms(percentile(&v, 50.0)),
            ms(percentile(&v, 99.0)),
            ms(v.last()),
        )
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> Option<&u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1)
}

// ------------------------------------------------------------------ phases

async fn single(t: Target, pushes: u64, updates: u64) {
    const PHASE: &str = "single";
    let mut api = Conn::new(&t.common.addr);
    let mut soap = Conn::new(&t.common.addr);
    let (mut inserts, mut says, mut renames) =
        (Series::default(), Series::default(), Series::default());
    let mut misses = 0u64;
    let first = t.common.first_slot;
    let mut pushed = Vec::with_capacity(pushes as usize);
    for slot in first..first + pushes {
        let name = new_name(PHASE, slot);
        match push(&t, &mut api, t.one_record_body(PHASE, slot, &name)).await {
            Ok(d) => inserts.ok(d),
            Err(e) => {
                inserts.failed("push", &e);
                continue;
            }
        }
        pushed.push(slot);
        match say_name_is(&t, &mut soap, slot, &name).await {
            Ok(d) => says.ok(d),
            Err(e) => {
                misses += 1;
                says.failed("miss", &e);
            }
        }
    }
    // Renames of records spread over those pushed: the new name must answer.
    let n = pushed.len() as u64;
    for round in 0..updates.min(n) {
        let slot = pushed[(round * n / updates.min(n).max(1)) as usize];
        let name = renamed(PHASE, slot, round);
        match push(&t, &mut api, t.one_record_body(PHASE, slot, &name)).await {
            Ok(d) => renames.ok(d),
            Err(e) => {
                renames.failed("rename push", &e);
                continue;
            }
        }
        match say_name_is(&t, &mut soap, slot, &name).await {
            Ok(d) => says.ok(d),
            Err(e) => {
                misses += 1;
                says.failed("miss after a rename", &e);
            }
        }
    }
    // The goal's figure: every one-record push, new records and renames.
    let mut all = Series::default();
    all.micros.extend(&inserts.micros);
    all.micros.extend(&renames.micros);
    all.errors = inserts.errors + renames.errors;
    eprintln!(
        "[push_load] single: {} new-record pushes ({} errors), {} renames ({} errors), {misses} SayName misses",
        inserts.micros.len(),
        inserts.errors,
        renames.micros.len(),
        renames.errors,
    );
    println!(
        "PUSH_RESULT phase=single pushes={} errors={} {} {} rename_pushes={} rename_errors={} {} say_checks={} say_misses={misses} {} next_slot={}",
        all.micros.len(),
        all.errors,
        all.figures(""),
        inserts.figures("insert_"),
        renames.micros.len(),
        renames.errors,
        renames.figures("rename_"),
        says.micros.len() as u64 + misses,
        says.figures("say_"),
        first + pushes,
    );
}

async fn batch(t: Target, pushes: u64, size: u64) {
    const PHASE: &str = "batch";
    let mut api = Conn::new(&t.common.addr);
    let mut soap = Conn::new(&t.common.addr);
    let (mut batches, mut says) = (Series::default(), Series::default());
    let mut misses = 0u64;
    let mut slot = t.common.first_slot;
    for _ in 0..pushes {
        let mut body = String::with_capacity(300 * size as usize);
        body.push('[');
        let mut last = slot;
        for i in 0..size {
            if i > 0 {
                body.push(',');
            }
            last = slot;
            t.record(&mut body, PHASE, slot, &new_name(PHASE, slot));
            slot += 1;
        }
        body.push(']');
        match push(&t, &mut api, body).await {
            Ok(d) => batches.ok(d),
            Err(e) => {
                batches.failed("push", &e);
                continue;
            }
        }
        match say_name_is(&t, &mut soap, last, &new_name(PHASE, last)).await {
            Ok(d) => says.ok(d),
            Err(e) => {
                misses += 1;
                says.failed("miss", &e);
            }
        }
    }
    eprintln!(
        "[push_load] batch: {} pushes of {size} records ({} errors), {misses} SayName misses",
        batches.micros.len(),
        batches.errors
    );
    println!(
        "PUSH_RESULT phase=batch size={size} pushes={} errors={} {} say_checks={} say_misses={misses} {} next_slot={slot}",
        batches.micros.len(),
        batches.errors,
        batches.figures(""),
        says.micros.len() as u64 + misses,
        says.figures("say_"),
    );
}

async fn concurrent(t: Target, clients: u64, seconds: u64) {
    const PHASE: &str = "concurrent";
    let t = Arc::new(t);
    let next = Arc::new(AtomicU64::new(t.common.first_slot));
    // Completions per whole second of the run, for the slowest second.
    let per_second: Arc<Vec<AtomicU64>> =
        Arc::new((0..seconds).map(|_| AtomicU64::new(0)).collect());
    let series = Arc::new(Mutex::new(Series::default()));
    let late = Arc::new(AtomicU64::new(0));
    let window = Duration::from_secs(seconds);
    let started = Instant::now();
    let deadline = started + window;
    let mut tasks = Vec::with_capacity(clients as usize);
    for _ in 0..clients {
        let (t, next, per_second, series, late) = (
            Arc::clone(&t),
            Arc::clone(&next),
            Arc::clone(&per_second),
            Arc::clone(&series),
            Arc::clone(&late),
        );
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::new(&t.common.addr);
            let mut mine = Series::default();
            while Instant::now() < deadline {
                let slot = next.fetch_add(1, Ordering::Relaxed);
                let body = t.one_record_body(PHASE, slot, &new_name(PHASE, slot));
                match push(&t, &mut conn, body).await {
                    Ok(d) => {
                        mine.ok(d);
                        let at = started.elapsed();
                        if at < window {
                            per_second[at.as_secs() as usize].fetch_add(1, Ordering::Relaxed);
                        } else {
                            late.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        let mut all = series.lock().expect("series lock");
                        all.failed("push", &e);
                    }
                }
            }
            let mut all = series.lock().expect("series lock");
            all.micros.extend(mine.micros);
        }));
    }
    for task in tasks {
        task.await.expect("a client task panicked");
    }
    let ended = started.elapsed();
    let series = series.lock().expect("series lock");
    let in_window: u64 = per_second.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    let slowest = per_second
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .min()
        .unwrap_or(0);
    let rate = in_window as f64 / window.as_secs_f64().max(1e-9);
    eprintln!(
        "[push_load] concurrent: {clients} clients, {in_window} records in {seconds} s = {rate:.1}/s (slowest second {slowest}), {} more after it, {} errors; drained in {:.1} s",
        late.load(Ordering::Relaxed),
        series.errors,
        ended.as_secs_f64()
    );
    println!(
        "PUSH_RESULT phase=concurrent clients={clients} seconds={seconds} records={in_window} records_per_s={rate:.1} slowest_second={slowest} late={} errors={} {} run_s={:.2} next_slot={}",
        late.load(Ordering::Relaxed),
        series.errors,
        series.figures(""),
        ended.as_secs_f64(),
        next.load(Ordering::Relaxed),
    );
}

fn main() {
    let cli = Cli::parse();
    // One thread: the client should take as little of the machine as it can
    // (the gateway under test shares it).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async move {
        match cli.phase {
            Phase::Single {
                common,
                pushes,
                updates,
            } => single(Target::new(common), pushes, updates).await,
            Phase::Batch {
                common,
                pushes,
                size,
            } => batch(Target::new(common), pushes, size).await,
            Phase::Concurrent {
                common,
                clients,
                seconds,
            } => {
                if seconds == 0 || clients == 0 {
                    eprintln!("--clients and --seconds must be at least 1");
                    std::process::exit(2);
                }
                concurrent(Target::new(common), clients, seconds).await
            }
        }
    });
}
