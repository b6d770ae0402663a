//! Soak load for cti-gateway (`bench/soak.sh`): mixed load at a steady,
//! moderate rate for a fixed time, against a running gateway whose source is
//! the mock 1C (`bench/onec_mock.rs`).
//!
//! ```text
//! cargo run --release --example soak_load -- --addr 127.0.0.1:18082 --duration 10m \
//!     --numbers numbers.txt --api-token T --gateway-pid PID --mock-pid PID
//! ```
//!
//! For `--duration`, in one process (tokio):
//!
//! - `SayName` at `--say-rate` per second over `--say-conns` keep-alive
//!   connections: callers the mock 1C lists (from `--numbers`: the answer must
//!   name them), `--unknown-ratio` nobody knows (`8812…`: the answer must be
//!   empty; the gateway asks 1C live) and `--pushed-ratio` numbers of pushed
//!   records (`8383…`: any well-formed answer, they come and go);
//! - `IncomingCall` at `--call-rate` per second over `--call-conns`
//!   connections, to random operator keys (`key{i}`), callers as above (90%
//!   listed, 10% unknown): the answer must be `1`;
//! - `--keys` x `--screens-per-key` WebSocket screens (`token-{i:08}`)
//!   connected all the time; each checks every frame (its key, `seq` one more
//!   than the last, the card there for a listed caller and null for an
//!   unknown one), answers pings (tungstenite does) and reconnects with
//!   `after=` when cut off (counted as an error);
//! - before the load, the whole pool of `--push-pool` records in one push
//!   (the directory has its steady size from the start); then every
//!   `--push-every` a batch of `--push-batch` of them (cycling through the
//!   pool, a new name each time) to `POST /api/v1/counterparties`; every
//!   `--delete-every` a `DELETE` of one id of the batch just pushed (so it
//!   exists: the answer must be `removed: true`; it comes back when the pool
//!   comes round);
//! - SIGHUP to `--gateway-pid` every `--hup-every` and SIGUSR1 to `--mock-pid`
//!   every `--usr1-every`, the first at 15 s (the mock re-writes every record,
//!   so the next read changes them all: the warm-up holds one such read); a
//!   run shorter than three periods gets three;
//! - `/metrics` read every report (1C refreshes, subscribers, directory size).
//!
//! Every request has a `--timeout`. Errors (non-2xx, SOAP fault, wrong answer,
//! timeout, connection failure, screen cut off or silent, lost, duplicated or
//! misrouted frame, wrong card) are counted and the first ones printed.
//!
//! Every `--report-every` a line: per operation n, p50/p99/max (ms) in that
//! window, errors, frames received vs expected (every screen of the called key
//! gets one per answered IncomingCall), screens up, pings, the gateway's RSS
//! (VmRSS of /proc/PID/status, sampled every second) and load average. At the
//! end a summary and `BENCH_RESULT` lines.
//!
//! RSS at start is the median of the samples over a span (10% of the run,
//! 10-60 s) right after the warm-up (`--warmup`, default 10% of the run, at
//! most 60 s); at end, the median over the last span; growth compares the two.
//! A median over a span, not one sample: the gateway's RSS steps up and down
//! by ~10% between 1C reads (what the allocator keeps after each) and
//! spikes during them, so two single samples compare phases of that cycle
//! more than they measure growth. The single samples and the least-squares
//! trend of every sample after the warm-up are printed as well.
//!
//! Exit status 1 when any error was counted or RSS grew by `--max-growth-pct`
//! or more; 2 when the run could not start.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use http_body_util::Full;
use hyper::{Method, Request};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Unknown callers: `8812` and seven digits (the mock's are `89…` and `8495…`).
const UNKNOWN_PREFIX: u64 = 88_120_000_000;
/// Pushed records' phones (`+7 (383) …`) as the PBX sends them: `8383` and seven digits.
const PUSHED_PREFIX: u64 = 83_830_000_000;
/// A screen that gets nothing (not even a ping) for this long is dead.
const SCREEN_SILENCE: Duration = Duration::from_secs(35);
/// How many errors are printed in full (all are counted).
const PRINT_ERRORS: u64 = 100;

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s}: {e}"))
}

#[derive(Parser, Debug, Clone)]
#[command(about = "Soak load for cti-gateway (bench/soak.sh)")]
struct Args {
    /// The gateway, HOST:PORT.
    #[arg(long)]
    addr: String,
    /// How long the load runs (10m, 60s).
    #[arg(long, value_parser = duration, default_value = "10m")]
    duration: Duration,
    /// Callers the mock 1C lists, one a line (onec_mock --numbers).
    #[arg(long)]
    numbers: PathBuf,
    #[arg(long, default_value_t = 20)]
    keys: usize,
    #[arg(long, default_value_t = 10)]
    screens_per_key: usize,
    /// SayName requests per second (all connections together).
    #[arg(long, default_value_t = 500.0)]
    say_rate: f64,
    #[arg(long, default_value_t = 4)]
    say_conns: usize,
    /// IncomingCall requests per second (all connections together).
    #[arg(long, default_value_t = 5.0)]
    call_rate: f64,
    #[arg(long, default_value_t = 2)]
    call_conns: usize,
    #[arg(long, default_value_t = 10)]
    push_batch: usize,
    #[arg(long, value_parser = duration, default_value = "1s")]
    push_every: Duration,
    /// 0s: no deletes.
    #[arg(long, value_parser = duration, default_value = "10s")]
    delete_every: Duration,
    /// Distinct ids the pushes cycle through.
    #[arg(long, default_value_t = 1000)]
    push_pool: usize,
    /// Share of SayName callers nobody knows.
    #[arg(long, default_value_t = 0.05)]
    unknown_ratio: f64,
    /// Distinct unknown callers.
    #[arg(long, default_value_t = 1000)]
    unknown_pool: usize,
    /// Share of SayName callers from the pushed records.
    #[arg(long, default_value_t = 0.05)]
    pushed_ratio: f64,
    #[arg(long, value_parser = duration, default_value = "10s")]
    report_every: Duration,
    /// Default: 10% of the run, at most 60 s.
    #[arg(long, value_parser = duration)]
    warmup: Option<Duration>,
    #[arg(long)]
    gateway_pid: Option<i32>,
    #[arg(long)]
    mock_pid: Option<i32>,
    /// SIGHUP to the gateway this often (0s: never).
    #[arg(long, value_parser = duration, default_value = "60s")]
    hup_every: Duration,
    /// SIGUSR1 to the mock this often (0s: never).
    #[arg(long, value_parser = duration, default_value = "120s")]
    usr1_every: Duration,
    /// Longest any request may take.
    #[arg(long, value_parser = duration, default_value = "5s")]
    timeout: Duration,
    #[arg(long, default_value = "/telephony/ws/VATS")]
    soap_path: String,
    #[arg(long, default_value = "SOAP")]
    user: String,
    #[arg(long, default_value = "123")]
    password: String,
    #[arg(long)]
    api_token: String,
    #[arg(long, default_value_t = 5.0)]
    max_growth_pct: f64,
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Write the gateway's RSS samples here (seconds since the load started, kB).
    #[arg(long)]
    rss_out: Option<PathBuf>,
}

// ------------------------------------------------------------------ shared state

#[derive(Default)]
struct OpInner {
    window: Vec<u32>,
    all: Vec<u32>,
    errors_window: u64,
    errors: u64,
}

/// Latencies (µs) and error counts of one operation.
#[derive(Default)]
struct Op {
    inner: Mutex<OpInner>,
}

impl Op {
    fn ok(&self, d: Duration) {
        let us = d.as_micros().min(u32::MAX as u128) as u32;
        let mut g = self.inner.lock().expect("op");
        g.window.push(us);
        g.all.push(us);
    }
    fn failed(&self) {
        let mut g = self.inner.lock().expect("op");
        g.errors_window += 1;
        g.errors += 1;
    }
    /// This window's latencies and errors; starts the next window.
    fn take_window(&self) -> (Vec<u32>, u64) {
        let mut g = self.inner.lock().expect("op");
        let e = std::mem::take(&mut g.errors_window);
        (std::mem::take(&mut g.window), e)
    }
    fn take_all(&self) -> (Vec<u32>, u64) {
        let mut g = self.inner.lock().expect("op");
        (std::mem::take(&mut g.all), g.errors)
    }
}

struct State {
    args: Args,
    t0: Instant,
    load_start: OnceLock<Instant>,
    auth: String,
    listed: Vec<String>,
    listed_set: HashSet<String>,
    say: Op,
    /// SayName by caller: listed by 1C, unknown (the gateway asks 1C live), pushed.
    say_by: [Op; 3],
    call: Op,
    push: Op,
    delete: Op,
    scrape: Op,
    errors: Mutex<BTreeMap<&'static str, (u64, u64)>>, // kind -> (window, total)
    errors_printed: AtomicU64,
    frames_expected: AtomicU64,
    frames_received: AtomicU64,
    screens_up: AtomicUsize,
    pings: AtomicU64,
    reconnects: AtomicU64,
    signals: Mutex<Vec<String>>,
    rss: Mutex<Vec<(f64, u64)>>, // (s since t0, kB)
}

impl State {
    /// Seconds since the load started (before it: since the setup started).
    fn secs(&self) -> f64 {
        let base = self.load_start.get().copied().unwrap_or(self.t0);
        Instant::now().saturating_duration_since(base).as_secs_f64()
    }

    fn error(&self, kind: &'static str, detail: impl AsRef<str>) {
        {
            let mut g = self.errors.lock().expect("errors");
            let e = g.entry(kind).or_default();
            e.0 += 1;
            e.1 += 1;
        }
        let n = self.errors_printed.fetch_add(1, Ordering::Relaxed);
        if n < PRINT_ERRORS {
            let detail: String = detail.as_ref().chars().take(400).collect();
            println!("[soak {:7.1}s] ERROR {kind}: {detail}", self.secs());
        } else if n == PRINT_ERRORS {
            println!(
                "[soak {:7.1}s] (further errors are counted, not printed)",
                self.secs()
            );
        }
    }

    fn note(&self, msg: impl AsRef<str>) {
        println!("[soak {:7.1}s] {}", self.secs(), msg.as_ref());
    }
}

// ------------------------------------------------------------------ HTTP

#[path = "http_conn.rs"]
mod http_conn;
use http_conn::{say_name_envelope, Conn};

fn soap_request(st: &State, body: String) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .uri(&st.args.soap_path)
        .header("host", &st.args.addr)
        .header("content-type", "text/xml; charset=utf-8")
        .header("authorization", &st.auth)
        .body(Full::new(Bytes::from(body)))
        .expect("request")
}

fn incoming_call_envelope(number: &str, key: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
    <soap:Body>
        <IncomingCall xmlns="http://VATS">
            <NumFrom>{number}</NumFrom>
            <Key>{key}</Key>
        </IncomingCall>
    </soap:Body>
</soap:Envelope>
"#
    )
}

fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(300).collect()
}

// ------------------------------------------------------------------ callers

#[derive(Clone, Copy, PartialEq)]
enum Caller {
    Listed = 0,
    Unknown = 1,
    Pushed = 2,
}

fn pick_caller(st: &State, rng: &mut StdRng, unknown: f64, pushed: f64) -> (Caller, String) {
    let u: f64 = rng.random();
    if u < unknown {
        let i = rng.random_range(0..st.args.unknown_pool.max(1)) as u64;
        (Caller::Unknown, (UNKNOWN_PREFIX + i).to_string())
    } else if u < unknown + pushed {
        let i = rng.random_range(0..st.args.push_pool.max(1)) as u64;
        (Caller::Pushed, (PUSHED_PREFIX + i).to_string())
    } else {
        let i = rng.random_range(0..st.listed.len());
        (Caller::Listed, st.listed[i].clone())
    }
}

fn caller_of(st: &State, raw: &str) -> Option<Caller> {
    if st.listed_set.contains(raw) {
        return Some(Caller::Listed);
    }
    let n: u64 = raw.parse().ok()?;
    if (UNKNOWN_PREFIX..UNKNOWN_PREFIX + 10_000_000).contains(&n) {
        return Some(Caller::Unknown);
    }
    None
}

// ------------------------------------------------------------------ load tasks

/// Ticks every `period` from `offset` until `end` (missed ticks skipped).
fn ticker(period: Duration, offset: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    t
}

async fn say_name_worker(st: Arc<State>, i: usize, end: tokio::time::Instant) {
    let a = &st.args;
    let period = Duration::from_secs_f64(a.say_conns as f64 / a.say_rate);
    let mut rng = StdRng::seed_from_u64(a.seed ^ (0x5a00 + i as u64));
    let mut conn = Conn::new(&a.addr);
    let mut tick = ticker(period, period.mul_f64(i as f64 / a.say_conns as f64));
    loop {
        tick.tick().await;
        if tokio::time::Instant::now() >= end {
            return;
        }
        let (caller, number) = pick_caller(&st, &mut rng, a.unknown_ratio, a.pushed_ratio);
        let req = soap_request(&st, say_name_envelope(&number));
        let t = Instant::now();
        let res = conn.send(req, a.timeout).await;
        let d = t.elapsed();
        let problem = match &res {
            Err(e) => Some(("say_name_failed", e.clone())),
            Ok((status, body)) => check_say_name(*status, body, caller)
                .map(|why| ("say_name_wrong", format!("{number}: {why}"))),
        };
        match problem {
            None => {
                st.say.ok(d);
                st.say_by[caller as usize].ok(d);
            }
            Some((kind, why)) => {
                st.say.failed();
                st.error(kind, why);
            }
        }
    }
}

fn check_say_name(status: u16, body: &[u8], caller: Caller) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    if status != 200 {
        return Some(format!("HTTP {status}: {}", snippet(body)));
    }
    if text.contains("Fault") || !text.contains("SayNameResponse") {
        return Some(format!("not a SayNameResponse: {}", snippet(body)));
    }
    const TITLE: &str = "&lt;title&gt;";
    let Some(at) = text.find(TITLE) else {
        return Some(format!("no title: {}", snippet(body)));
    };
    let empty = text[at + TITLE.len()..].starts_with("&lt;/title&gt;");
    match caller {
        Caller::Listed if empty => Some("a caller 1C lists answered unknown".into()),
        Caller::Unknown if !empty => Some(format!(
            "an unknown caller answered known: {}",
            snippet(body)
        )),
        _ => None,
    }
}

async fn incoming_call_worker(st: Arc<State>, i: usize, end: tokio::time::Instant) {
    let a = &st.args;
    let period = Duration::from_secs_f64(a.call_conns as f64 / a.call_rate);
    let mut rng = StdRng::seed_from_u64(a.seed ^ (0xca11 + i as u64));
    let mut conn = Conn::new(&a.addr);
    let mut tick = ticker(period, period.mul_f64(i as f64 / a.call_conns as f64));
    loop {
        tick.tick().await;
        if tokio::time::Instant::now() >= end {
            return;
        }
        let (_, number) = pick_caller(&st, &mut rng, 0.1, 0.0);
        let key = rng.random_range(0..a.keys);
        let req = soap_request(&st, incoming_call_envelope(&number, &format!("key{key}")));
        let t = Instant::now();
        let res = conn.send(req, a.timeout).await;
        let d = t.elapsed();
        match res {
            Ok((200, body)) if String::from_utf8_lossy(&body).contains(">1</") => {
                st.call.ok(d);
                st.frames_expected
                    .fetch_add(a.screens_per_key as u64, Ordering::Relaxed);
            }
            Ok((status, body)) => {
                st.call.failed();
                st.error(
                    "incoming_call_wrong",
                    format!("{number} key{key}: HTTP {status}: {}", snippet(&body)),
                );
            }
            Err(e) => {
                st.call.failed();
                st.error("incoming_call_failed", format!("{number} key{key}: {e}"));
            }
        }
    }
}

fn push_id(i: usize) -> String {
    format!("5eed0000-0000-4000-8000-{i:012}")
}

fn push_record(i: usize, version: u64) -> String {
    let phone = format!("{:07}", i % 10_000_000);
    format!(
        r#"{{"id":"{}","name":"ООО \"Пуш {i:04}\" в{version}","inn":"54{:08}","kpp":"540101001","category":{},"manager_phone":"3{:02}","phones":["+7 (383) {}-{}-{}"]}}"#,
        push_id(i),
        i,
        i % 4,
        i % 100,
        &phone[0..3],
        &phone[3..5],
        &phone[5..7],
    )
}

async fn push_worker(st: Arc<State>, end: tokio::time::Instant) {
    let a = &st.args;
    let mut conn = Conn::new(&a.addr);
    let mut tick = ticker(a.push_every, a.push_every / 2);
    let deletes_every = if a.delete_every.is_zero() {
        u64::MAX
    } else {
        (a.delete_every.as_secs_f64() / a.push_every.as_secs_f64())
            .round()
            .max(1.0) as u64
    };
    let bearer = format!("Bearer {}", a.api_token);
    let pool = a.push_pool.max(a.push_batch).max(1);
    let mut next = 0usize;
    for round in 1u64.. {
        tick.tick().await;
        if tokio::time::Instant::now() >= end {
            return;
        }
        let first = next;
        let mut body = String::from("[");
        for j in 0..a.push_batch {
            if j > 0 {
                body.push(',');
            }
            body.push_str(&push_record((first + j) % pool, round));
        }
        body.push(']');
        next = (first + a.push_batch) % pool;
        let req = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/counterparties")
            .header("host", &a.addr)
            .header("content-type", "application/json")
            .header("authorization", &bearer)
            .body(Full::new(Bytes::from(body)))
            .expect("request");
        let t = Instant::now();
        let res = conn.send(req, a.timeout).await;
        let d = t.elapsed();
        let pushed = match res {
            Ok((200, body)) => {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if v["upserted"].as_u64() == Some(a.push_batch as u64) {
                    st.push.ok(d);
                    true
                } else {
                    st.push.failed();
                    st.error("push_wrong", format!("answer {}", snippet(&body)));
                    false
                }
            }
            Ok((status, body)) => {
                st.push.failed();
                st.error("push_wrong", format!("HTTP {status}: {}", snippet(&body)));
                false
            }
            Err(e) => {
                st.push.failed();
                st.error("push_failed", e);
                false
            }
        };
        if !pushed || round % deletes_every != 0 || a.push_batch == 0 {
            continue;
        }
        // The first id of the batch just committed: it exists.
        let id = push_id(first % pool);
        let req = Request::builder()
            .method(Method::DELETE)
            .uri(format!("/api/v1/counterparties/{id}"))
            .header("host", &a.addr)
            .header("authorization", &bearer)
            .body(Full::new(Bytes::new()))
            .expect("request");
        let t = Instant::now();
        let res = conn.send(req, a.timeout).await;
        let d = t.elapsed();
        match res {
            Ok((200, body)) => {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if v["removed"] == Value::Bool(true) {
                    st.delete.ok(d);
                } else {
                    st.delete.failed();
                    st.error("delete_wrong", format!("{id}: answer {}", snippet(&body)));
                }
            }
            Ok((status, body)) => {
                st.delete.failed();
                st.error(
                    "delete_wrong",
                    format!("{id}: HTTP {status}: {}", snippet(&body)),
                );
            }
            Err(e) => {
                st.delete.failed();
                st.error("delete_failed", format!("{id}: {e}"));
            }
        }
    }
}

/// Pushes the whole pool once before the load, so that the directory has its
/// steady size from the start (the pushes of the run replace records, and
/// the deletes take out one at a time until the pool comes round again).
async fn prefill_pool(st: &State) -> Result<(), String> {
    let a = &st.args;
    let pool = a.push_pool.max(a.push_batch).max(1);
    let records: Vec<String> = (0..pool).map(|i| push_record(i, 0)).collect();
    let body = format!("[{}]", records.join(","));
    let req = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/counterparties")
        .header("host", &a.addr)
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {}", a.api_token))
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    match Conn::new(&a.addr).send(req, Duration::from_secs(30)).await {
        Ok((200, body)) => {
            let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if v["upserted"].as_u64() == Some(pool as u64) {
                Ok(())
            } else {
                Err(format!("pushing the pool: answer {}", snippet(&body)))
            }
        }
        Ok((status, body)) => Err(format!(
            "pushing the pool: HTTP {status}: {}",
            snippet(&body)
        )),
        Err(e) => Err(format!("pushing the pool: {e}")),
    }
}

// ------------------------------------------------------------------ screens

fn client_config() -> WebSocketConfig {
    WebSocketConfig::default().read_buffer_size(4 * 1024)
}

async fn connect_screen(
    st: &State,
    token: &str,
    after: u64,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, String> {
    let addr = &st.args.addr;
    tokio::time::timeout(st.args.timeout.max(Duration::from_secs(10)), async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let url = format!("ws://{addr}/operator/ws?token={token}&after={after}");
        let (ws, response) =
            tokio_tungstenite::client_async_with_config(url, tcp, Some(client_config()))
                .await
                .map_err(|e| format!("WebSocket handshake: {e}"))?;
        if response.status().as_u16() != 101 {
            return Err(format!("handshake answered {}", response.status()));
        }
        Ok(ws)
    })
    .await
    .unwrap_or_else(|_| Err("WebSocket connect timed out".into()))
}

/// One screen for the whole run: checks every frame, reconnects after a cut.
async fn screen(
    st: Arc<State>,
    key: usize,
    n: usize,
    mut stop: watch::Receiver<bool>,
    ready: tokio::sync::mpsc::Sender<Result<(), String>>,
) {
    let key_name = format!("key{key}");
    let token = format!("token-{key:08}");
    let who = format!("screen {key_name}/{n}");
    let mut last_seq = 0u64;
    let mut ready = Some(ready);
    loop {
        if *stop.borrow() {
            return;
        }
        let mut ws = match connect_screen(&st, &token, last_seq).await {
            Ok(ws) => ws,
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(format!("{who}: {e}"))).await;
                    return;
                }
                st.error("screen_connect_failed", format!("{who}: {e}"));
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = stop.changed() => return,
                }
            }
        };
        st.screens_up.fetch_add(1, Ordering::Relaxed);
        if let Some(r) = ready.take() {
            let _ = r.send(Ok(())).await;
        }
        let why = loop {
            let frame = tokio::select! {
                biased;
                _ = stop.changed() => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                    st.screens_up.fetch_sub(1, Ordering::Relaxed);
                    return;
                }
                f = tokio::time::timeout(SCREEN_SILENCE, ws.next()) => f,
            };
            match frame {
                Err(_) => break format!("nothing received for {SCREEN_SILENCE:?} (no ping)"),
                Ok(None) => break "connection ended".to_string(),
                Ok(Some(Err(e))) => break format!("read: {e}"),
                Ok(Some(Ok(Message::Close(f)))) => {
                    break format!(
                        "closed by the gateway: {}",
                        f.map_or("no close frame".into(), |f| format!(
                            "{} {}",
                            f.code, f.reason
                        ))
                    )
                }
                Ok(Some(Ok(Message::Ping(_)))) => {
                    // tungstenite queues the pong; the next read sends it.
                    st.pings.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Some(Ok(Message::Text(text)))) => {
                    check_frame(&st, &who, &key_name, &mut last_seq, &text);
                }
                Ok(Some(Ok(other))) => {
                    st.error("frame_unexpected", format!("{who}: {other:?}"));
                }
            }
        };
        st.screens_up.fetch_sub(1, Ordering::Relaxed);
        if *stop.borrow() {
            return;
        }
        st.error(
            "screen_disconnected",
            format!("{who}: {why}; reconnecting with after={last_seq}"),
        );
        st.reconnects.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn check_frame(st: &State, who: &str, key: &str, last_seq: &mut u64, text: &str) {
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            st.error("frame_unparsable", format!("{who}: {e}: {text}"));
            return;
        }
    };
    let Some(seq) = v["seq"].as_u64() else {
        st.error("frame_unparsable", format!("{who}: no seq: {text}"));
        return;
    };
    if v["type"] != "incoming_call" || v["key"].as_str() != Some(key) {
        st.error("frame_misrouted", format!("{who}: {text}"));
        return;
    }
    if seq <= *last_seq {
        st.error(
            "frame_duplicate",
            format!("{who}: seq {seq} after {}", *last_seq),
        );
        return;
    }
    if seq > *last_seq + 1 {
        st.error(
            "frame_lost",
            format!(
                "{who}: seq {seq} after {}: {} frame(s) never arrived",
                *last_seq,
                seq - *last_seq - 1
            ),
        );
    }
    *last_seq = seq;
    st.frames_received.fetch_add(1, Ordering::Relaxed);
    let raw = v["raw_number"].as_str().unwrap_or("");
    let card = &v["counterparty"];
    match caller_of(st, raw) {
        Some(Caller::Listed) if card.is_null() => st.error(
            "frame_wrong_card",
            format!("{who}: seq {seq}: caller {raw} (1C lists it) without a card"),
        ),
        Some(Caller::Unknown) if !card.is_null() => st.error(
            "frame_wrong_card",
            format!("{who}: seq {seq}: unknown caller {raw} with a card: {card}"),
        ),
        None => st.error(
            "frame_wrong_card",
            format!("{who}: seq {seq}: a caller this load never sent: {raw}"),
        ),
        _ => {}
    }
}

// ------------------------------------------------------------------ gateway side

fn rss_kb(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn hwm_kb(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// CPU seconds (user + system) of a process so far.
fn cpu_secs(pid: i32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let t: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(t / 100.0)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

async fn rss_sampler(st: Arc<State>, pid: i32, end: tokio::time::Instant) {
    let mut tick = ticker(Duration::from_secs(1), Duration::ZERO);
    loop {
        tick.tick().await;
        match rss_kb(pid) {
            Some(kb) => st.rss.lock().expect("rss").push((st.secs(), kb)),
            None => {
                st.error("gateway_gone", format!("/proc/{pid}/status unreadable"));
                return;
            }
        }
        if tokio::time::Instant::now() >= end {
            return;
        }
    }
}

/// Sends `sig` to `pid` every `every` from `offset`, up to 5 s before `end`.
/// `what`: "SIGHUP to the gateway".
async fn signaller(
    st: Arc<State>,
    (pid, sig, what): (i32, libc::c_int, &'static str),
    every: Duration,
    offset: Duration,
    end: tokio::time::Instant,
) {
    let mut tick = ticker(every, offset);
    loop {
        tick.tick().await;
        if tokio::time::Instant::now() + Duration::from_secs(5) >= end {
            return;
        }
        // SAFETY: kill(2) on a pid the script started and passed to us.
        let rc = unsafe { libc::kill(pid, sig) };
        if rc == 0 {
            let name = what.split(' ').next().unwrap_or(what);
            st.signals
                .lock()
                .expect("signals")
                .push(format!("{:.0}s {name}", st.secs()));
            st.note(format!("{what} (pid {pid})"));
        } else {
            let e = std::io::Error::last_os_error();
            st.error("signal_failed", format!("{what} (pid {pid}): {e}"));
        }
    }
}

/// The value of a metric line `name value` (name with its labels, as written).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn scrape(st: &State, conn: &mut Conn) -> Option<String> {
    let req = Request::builder()
        .method(Method::GET)
        .uri("/metrics")
        .header("host", &st.args.addr)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let t = Instant::now();
    match conn.send(req, st.args.timeout).await {
        Ok((200, body)) => {
            st.scrape.ok(t.elapsed());
            Some(String::from_utf8_lossy(&body).into_owned())
        }
        Ok((status, body)) => {
            st.scrape.failed();
            st.error(
                "metrics_failed",
                format!("HTTP {status}: {}", snippet(&body)),
            );
            None
        }
        Err(e) => {
            st.scrape.failed();
            st.error("metrics_failed", e);
            None
        }
    }
}

// ------------------------------------------------------------------ figures

struct Dist {
    n: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

fn dist(mut v: Vec<u32>) -> Dist {
    v.sort_unstable();
    let pick = |p: f64| {
        if v.is_empty() {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
        v[rank.clamp(1, v.len()) - 1] as f64 / 1e3
    };
    Dist {
        n: v.len(),
        p50: pick(50.0),
        p99: pick(99.0),
        max: v.last().map_or(f64::NAN, |&m| m as f64 / 1e3),
    }
}

/// The span over which RSS at start and at end are taken: 10% of the run,
/// between 10 s and 60 s.
fn rss_span(run: Duration) -> Duration {
    (run / 10).clamp(Duration::from_secs(10), Duration::from_secs(60))
}

fn median(v: impl Iterator<Item = u64>) -> Option<u64> {
    let mut v: Vec<u64> = v.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[v.len() / 2])
}

/// Least-squares line through (s, kB): its slope (kB/s) and its value at the
/// first sample's time.
fn trend(samples: &[(f64, u64)]) -> Option<(f64, f64)> {
    if samples.len() < 3 {
        return None;
    }
    let n = samples.len() as f64;
    let mx = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let my = samples.iter().map(|s| s.1 as f64).sum::<f64>() / n;
    let sxx: f64 = samples.iter().map(|s| (s.0 - mx).powi(2)).sum();
    let sxy: f64 = samples.iter().map(|s| (s.0 - mx) * (s.1 as f64 - my)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    Some((slope, my + slope * (samples[0].0 - mx)))
}

fn fmt_ms(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn short(d: &Dist) -> String {
    format!(
        "n={} p50={} p99={} max={}",
        d.n,
        fmt_ms(d.p50),
        fmt_ms(d.p99),
        fmt_ms(d.max)
    )
}

// ------------------------------------------------------------------ run

struct Totals {
    window_index: u64,
    frames_expected: u64,
    frames_received: u64,
    gw_cpu: Option<f64>,
    at: Instant,
    refreshes: Option<f64>,
}

async fn run(args: Args) -> Result<bool, String> {
    let text = std::fs::read_to_string(&args.numbers)
        .map_err(|e| format!("{}: {e}", args.numbers.display()))?;
    let listed: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if listed.is_empty() {
        return Err(format!("{}: no numbers", args.numbers.display()));
    }
    if args.keys == 0
        || args.screens_per_key == 0
        || args.say_conns == 0
        || args.call_conns == 0
        || args.say_rate <= 0.0
        || args.call_rate <= 0.0
        || args.push_every.is_zero()
    {
        return Err("keys, screens, connections, rates and push_every must be positive".into());
    }
    let listed_set: HashSet<String> = listed.iter().cloned().collect();
    let warmup = args
        .warmup
        .unwrap_or_else(|| (args.duration / 10).min(Duration::from_secs(60)));
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", args.user, args.password))
    );
    let screens = args.keys * args.screens_per_key;

    let st = Arc::new(State {
        args: args.clone(),
        t0: Instant::now(),
        load_start: OnceLock::new(),
        auth,
        listed,
        listed_set,
        say: Op::default(),
        say_by: Default::default(),
        call: Op::default(),
        push: Op::default(),
        delete: Op::default(),
        scrape: Op::default(),
        errors: Mutex::new(BTreeMap::new()),
        errors_printed: AtomicU64::new(0),
        frames_expected: AtomicU64::new(0),
        frames_received: AtomicU64::new(0),
        screens_up: AtomicUsize::new(0),
        pings: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        signals: Mutex::new(Vec::new()),
        rss: Mutex::new(Vec::new()),
    });

    // ---- screens first: every IncomingCall of the run has all its screens.
    st.note(format!(
        "connecting {screens} screens ({} keys x {})",
        args.keys, args.screens_per_key
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(screens);
    let mut screen_tasks = Vec::with_capacity(screens);
    for key in 0..args.keys {
        for n in 0..args.screens_per_key {
            screen_tasks.push(tokio::spawn(screen(
                Arc::clone(&st),
                key,
                n,
                stop_rx.clone(),
                ready_tx.clone(),
            )));
            if screen_tasks.len() % 25 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    drop(ready_tx);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut connected = 0;
    while connected < screens {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => connected += 1,
            Ok(Some(Err(e))) => {
                let _ = stop_tx.send(true);
                return Err(format!("a screen could not connect: {e}"));
            }
            Ok(None) | Err(_) => {
                let _ = stop_tx.send(true);
                return Err(format!("only {connected} of {screens} screens connected"));
            }
        }
    }
    prefill_pool(&st).await?;
    let mut metrics_conn = Conn::new(&args.addr);
    let before = scrape(&st, &mut metrics_conn).await.unwrap_or_default();
    st.note(format!(
        "{connected} screens connected, {} pushed records; gateway: cti_popup_subscribers={}, cti_directory_counterparties={}; load average {}",
        args.push_pool.max(args.push_batch),
        metric(&before, "cti_popup_subscribers").map_or("?".into(), |v| v.to_string()),
        metric(&before, "cti_directory_counterparties").map_or("?".into(), |v| v.to_string()),
        loadavg()
    ));

    // ---- the load
    // A short run keeps the rhythm: a few SIGHUPs and SIGUSR1s whatever its length.
    let hup_every = args.hup_every.min(args.duration / 3);
    let usr1_every = args.usr1_every.min(args.duration / 3);
    let start = tokio::time::Instant::now();
    let start_std = Instant::now();
    let _ = st.load_start.set(start_std);
    let end = start + args.duration;
    st.note(format!(
        "load for {:?}: SayName {}/s over {} connections ({:.0}% unknown, {:.0}% pushed callers), IncomingCall {}/s over {}, push {} records every {:?}, delete every {:?}, SIGHUP every {:?}, SIGUSR1 (mock) every {:?}; warm-up {:?}",
        args.duration,
        args.say_rate,
        args.say_conns,
        args.unknown_ratio * 100.0,
        args.pushed_ratio * 100.0,
        args.call_rate,
        args.call_conns,
        args.push_batch,
        args.push_every,
        args.delete_every,
        hup_every,
        usr1_every,
        warmup
    ));
    let mut load = Vec::new();
    for i in 0..args.say_conns {
        load.push(tokio::spawn(say_name_worker(Arc::clone(&st), i, end)));
    }
    for i in 0..args.call_conns {
        load.push(tokio::spawn(incoming_call_worker(Arc::clone(&st), i, end)));
    }
    load.push(tokio::spawn(push_worker(Arc::clone(&st), end)));
    if let Some(pid) = args.gateway_pid {
        load.push(tokio::spawn(rss_sampler(Arc::clone(&st), pid, end)));
        if !hup_every.is_zero() {
            load.push(tokio::spawn(signaller(
                Arc::clone(&st),
                (pid, libc::SIGHUP, "SIGHUP to the gateway"),
                hup_every,
                hup_every,
                end,
            )));
        }
    }
    if let Some(pid) = args.mock_pid {
        if !usr1_every.is_zero() {
            // The first early (15 s, or a quarter of a short run), so that the
            // warm-up holds a read in which every record changed; the next timed
            // read or SIGHUP reads each change.
            load.push(tokio::spawn(signaller(
                Arc::clone(&st),
                (pid, libc::SIGUSR1, "SIGUSR1 to the mock 1C"),
                usr1_every,
                Duration::from_secs(15).min(args.duration / 4),
                end,
            )));
        }
    }

    // ---- reports
    let mut totals = Totals {
        window_index: 0,
        frames_expected: 0,
        frames_received: 0,
        gw_cpu: args.gateway_pid.and_then(cpu_secs),
        at: Instant::now(),
        refreshes: metric(&before, "cti_onec_refresh_seconds_count"),
    };
    let mut report = ticker(args.report_every, args.report_every);
    let mut windows = Vec::new();
    loop {
        tokio::select! {
            _ = report.tick() => {}
            _ = tokio::time::sleep_until(end) => {}
        }
        let last = tokio::time::Instant::now() >= end;
        let line = window_line(&st, &mut totals, &mut metrics_conn, start_std).await;
        println!("{line}");
        windows.push(line);
        if last {
            break;
        }
    }

    // ---- drain: requests in flight end within the timeout, frames follow.
    for t in load {
        let _ = tokio::time::timeout(args.timeout + Duration::from_secs(5), t).await;
    }
    let drain_until = Instant::now() + Duration::from_secs(5);
    while st.frames_received.load(Ordering::Relaxed) < st.frames_expected.load(Ordering::Relaxed)
        && Instant::now() < drain_until
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = scrape(&st, &mut metrics_conn).await.unwrap_or_default();
    let screens_up_at_end = st.screens_up.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    for t in screen_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let expected = st.frames_expected.load(Ordering::Relaxed);
    let received = st.frames_received.load(Ordering::Relaxed);
    if received < expected {
        st.error(
            "frames_lost",
            format!(
                "{} frame(s) expected but not received 5 s after the last call",
                expected - received
            ),
        );
    }
    if screens_up_at_end < screens {
        st.error(
            "screens_down",
            format!("{screens_up_at_end} of {screens} screens connected at the end"),
        );
    }
    Ok(summary(
        &st, &args, warmup, expected, received, &before, &after,
    ))
}

async fn window_line(
    st: &State,
    totals: &mut Totals,
    metrics_conn: &mut Conn,
    start: Instant,
) -> String {
    totals.window_index += 1;
    let t = start.elapsed().as_secs_f64();
    let parts: Vec<(&str, Dist, u64)> = [
        ("say", &st.say),
        ("call", &st.call),
        ("push", &st.push),
        ("del", &st.delete),
    ]
    .into_iter()
    .map(|(n, op)| {
        let (v, e) = op.take_window();
        (n, dist(v), e)
    })
    .collect();
    let errors: u64 = {
        let mut g = st.errors.lock().expect("errors");
        g.values_mut().map(|e| std::mem::take(&mut e.0)).sum()
    };
    let exp = st.frames_expected.load(Ordering::Relaxed);
    let rec = st.frames_received.load(Ordering::Relaxed);
    let (d_exp, d_rec) = (exp - totals.frames_expected, rec - totals.frames_received);
    totals.frames_expected = exp;
    totals.frames_received = rec;
    let m = scrape(st, metrics_conn).await.unwrap_or_default();
    let refreshes = metric(&m, "cti_onec_refresh_seconds_count");
    let d_refresh = match (refreshes, totals.refreshes) {
        (Some(a), Some(b)) => format!("+{}", a - b),
        _ => "?".into(),
    };
    totals.refreshes = refreshes.or(totals.refreshes);
    let (rss_now, rss_lo, rss_hi) = {
        let g = st.rss.lock().expect("rss");
        let since = st.secs() - st.args.report_every.as_secs_f64();
        let w: Vec<u64> = g.iter().filter(|s| s.0 >= since).map(|s| s.1).collect();
        (
            g.last().map(|s| s.1),
            w.iter().min().copied(),
            w.iter().max().copied(),
        )
    };
    let mb = |kb: Option<u64>| kb.map_or("?".into(), |kb| format!("{:.1}", kb as f64 / 1024.0));
    let cpu = st.args.gateway_pid.and_then(cpu_secs);
    let now = Instant::now();
    let cpu_pct = match (cpu, totals.gw_cpu) {
        (Some(a), Some(b)) => format!(
            "{:.0}%",
            100.0 * (a - b) / (now - totals.at).as_secs_f64().max(0.001)
        ),
        _ => "?".into(),
    };
    totals.gw_cpu = cpu;
    totals.at = now;
    let by: Vec<Dist> = st
        .say_by
        .iter()
        .map(|op| dist(op.take_window().0))
        .collect();
    let mut line = format!("[soak {t:6.0}s]");
    for (i, (n, d, e)) in parts.iter().enumerate() {
        let _ = write!(line, " | {n} {}", short(d));
        if i == 0 {
            let _ = write!(
                line,
                " (p99 listed {} unknown {})",
                fmt_ms(by[Caller::Listed as usize].p99),
                fmt_ms(by[Caller::Unknown as usize].p99)
            );
        }
        if *e > 0 {
            let _ = write!(line, " ERR={e}");
        }
    }
    let _ = write!(
        line,
        " | errors {errors} | frames +{d_rec} of +{d_exp} (run {rec}/{exp}) screens {}/{} pings {} | 1C reads {d_refresh} | counterparties {} | gw RSS {} MB ({}-{}) CPU {cpu_pct} | load {}",
        st.screens_up.load(Ordering::Relaxed),
        st.args.keys * st.args.screens_per_key,
        st.pings.load(Ordering::Relaxed),
        metric(&m, "cti_directory_counterparties").map_or("?".into(), |v| v.to_string()),
        mb(rss_now),
        mb(rss_lo),
        mb(rss_hi),
        loadavg()
    );
    line
}

fn summary(
    st: &State,
    args: &Args,
    warmup: Duration,
    expected: u64,
    received: u64,
    before: &str,
    after: &str,
) -> bool {
    let ops: Vec<(&str, Dist, u64)> = [
        ("SayName", &st.say),
        ("  listed caller", &st.say_by[Caller::Listed as usize]),
        ("  unknown (1C)", &st.say_by[Caller::Unknown as usize]),
        ("  pushed caller", &st.say_by[Caller::Pushed as usize]),
        ("IncomingCall", &st.call),
        ("push (POST 10)", &st.push),
        ("DELETE", &st.delete),
        ("GET /metrics", &st.scrape),
    ]
    .into_iter()
    .map(|(n, op)| {
        let (v, e) = op.take_all();
        (n, dist(v), e)
    })
    .collect();
    let errors = st.errors.lock().expect("errors").clone();
    let total_errors: u64 = errors.values().map(|e| e.1).sum();

    // RSS (see the module's doc): medians of the 1 s samples over a span
    // right after the warm-up and over the last span; the least-squares trend
    // of every sample after the warm-up; the points themselves.
    let samples = st.rss.lock().expect("rss").clone();
    if let Some(path) = &args.rss_out {
        let mut out = String::from("t_s\trss_kb\n");
        for (t, kb) in &samples {
            let _ = writeln!(out, "{t:.1}\t{kb}");
        }
        if let Err(e) = std::fs::write(path, out) {
            eprintln!("[soak_load] {}: {e}", path.display());
        }
    }
    let w = warmup.as_secs_f64();
    let span = rss_span(args.duration).as_secs_f64();
    let last_t = samples.last().map_or(0.0, |s| s.0);
    let after_warmup: Vec<(f64, u64)> = samples.iter().copied().filter(|s| s.0 >= w).collect();
    let rss_start = median(after_warmup.iter().filter(|s| s.0 < w + span).map(|s| s.1));
    let rss_end = median(
        after_warmup
            .iter()
            .filter(|s| s.0 > last_t - span)
            .map(|s| s.1),
    );
    let rss_at_warmup = after_warmup.first().map(|s| s.1);
    let rss_last = samples.last().map(|s| s.1);
    let rss_min_after = after_warmup.iter().map(|s| s.1).min();
    let rss_max_after = after_warmup.iter().map(|s| s.1).max();
    let rss_first = samples.first().map(|s| s.1);
    let hwm = args.gateway_pid.and_then(hwm_kb);
    let growth = match (rss_start, rss_end) {
        (Some(a), Some(b)) if a > 0 => Some(100.0 * (b as f64 - a as f64) / a as f64),
        _ => None,
    };
    let point_growth = match (rss_at_warmup, rss_last) {
        (Some(a), Some(b)) if a > 0 => Some(100.0 * (b as f64 - a as f64) / a as f64),
        _ => None,
    };
    let trend = trend(&after_warmup);
    let trend_growth = trend.map(|(slope, at_w)| 100.0 * slope * (last_t - w) / at_w);
    let growth_ok = growth.is_some_and(|g| g < args.max_growth_pct);
    let mb = |kb: Option<u64>| kb.map_or("?".into(), |kb| format!("{:.1}", kb as f64 / 1024.0));
    let delta = |n: &str| match (metric(after, n), metric(before, n)) {
        (Some(a), Some(b)) => format!("{}", a - b),
        _ => "?".into(),
    };

    println!();
    println!(
        "== soak summary: {:?} of mixed load, {} screens ({} keys x {}), 127.0.0.1; load average at the end {} ==",
        args.duration,
        args.keys * args.screens_per_key,
        args.keys,
        args.screens_per_key,
        loadavg()
    );
    println!(
        "{:<16} {:>9} {:>7} {:>9} {:>9} {:>9}",
        "operation", "ok", "errors", "p50 ms", "p99 ms", "max ms"
    );
    for (n, d, e) in &ops {
        println!(
            "{:<16} {:>9} {:>7} {:>9} {:>9} {:>9}",
            n,
            d.n,
            e,
            fmt_ms(d.p50),
            fmt_ms(d.p99),
            fmt_ms(d.max)
        );
    }
    println!(
        "frames: expected {expected}, received {received} (lost {}, extra {}); pings from the gateway {}; screen reconnects {}",
        expected.saturating_sub(received),
        received.saturating_sub(expected),
        st.pings.load(Ordering::Relaxed),
        st.reconnects.load(Ordering::Relaxed)
    );
    println!(
        "gateway during the run: 1C reads +{} (changed records in the last: {}), SOAP SayName known +{} unknown +{}, live 1C lookups found +{} unknown +{} failed +{} over budget +{}, pop-ups published +{} delivered +{}, slow disconnects +{}, pushes upsert +{} delete +{}",
        delta("cti_onec_refresh_seconds_count"),
        metric(after, "cti_onec_refresh_changed_records").map_or("?".into(), |v| v.to_string()),
        delta(r#"cti_soap_requests_total{operation="SayName",outcome="known"}"#),
        delta(r#"cti_soap_requests_total{operation="SayName",outcome="unknown"}"#),
        delta(r#"cti_onec_lookups_total{outcome="found"}"#),
        delta(r#"cti_onec_lookups_total{outcome="unknown"}"#),
        delta(r#"cti_onec_lookups_total{outcome="failed"}"#),
        delta(r#"cti_onec_lookups_total{outcome="over_budget"}"#),
        delta("cti_popup_published_total"),
        delta("cti_popup_delivered_total"),
        delta("cti_popup_slow_disconnects_total"),
        delta(r#"cti_push_records_total{op="upsert"}"#),
        delta(r#"cti_push_records_total{op="delete"}"#),
    );
    let signals = st.signals.lock().expect("signals").clone();
    println!(
        "signals sent: {}",
        if signals.is_empty() {
            "none".into()
        } else {
            signals.join(", ")
        }
    );
    if total_errors == 0 {
        println!("errors: 0");
    } else {
        let list: Vec<String> = errors.iter().map(|(k, e)| format!("{k}={}", e.1)).collect();
        println!("errors: {total_errors} ({})", list.join(", "));
    }
    let pct = |g: Option<f64>| g.map_or("?".into(), |g| format!("{g:+.2}%"));
    println!(
        "gateway RSS: start (median of the {span:.0} s after the {:?} warm-up) {} MB, end (median of the last {span:.0} s) {} MB: growth {}",
        warmup,
        mb(rss_start),
        mb(rss_end),
        pct(growth),
    );
    println!(
        "  points: at {:.0} s {} MB, at {:.0} s {} MB ({}); least-squares trend after warm-up {} ({} over the run); after warm-up between {} and {} MB; first sample {} MB; peak (VmHWM) {} MB",
        after_warmup.first().map_or(0.0, |s| s.0),
        mb(rss_at_warmup),
        last_t,
        mb(rss_last),
        pct(point_growth),
        trend.map_or("?".into(), |(slope, _)| format!("{:+.1} MB/h", slope * 3600.0 / 1024.0)),
        pct(trend_growth),
        mb(rss_min_after),
        mb(rss_max_after),
        mb(rss_first),
        mb(hwm)
    );
    println!(
        "goals: errors 0: {}; RSS growth after warm-up < {}%: {}",
        if total_errors == 0 { "met" } else { "MISSED" },
        args.max_growth_pct,
        if growth_ok { "met" } else { "MISSED" }
    );
    for (n, d, e) in &ops {
        let key = match *n {
            "SayName" => "say_name",
            "  listed caller" => "say_name_listed",
            "  unknown (1C)" => "say_name_unknown",
            "  pushed caller" => "say_name_pushed",
            "IncomingCall" => "incoming_call",
            "DELETE" => "delete",
            "GET /metrics" => "metrics",
            _ => "push",
        };
        println!(
            "BENCH_RESULT mode=soak op={key} ok={} errors={e} p50_ms={:.3} p99_ms={:.3} max_ms={:.3}",
            d.n, d.p50, d.p99, d.max
        );
    }
    println!(
        "BENCH_RESULT mode=soak duration_s={} screens={} errors={total_errors} frames_expected={expected} frames_received={received} reconnects={} rss_start_kb={} rss_end_kb={} rss_growth_pct={} rss_point_growth_pct={} rss_trend_growth_pct={} rss_min_kb={} rss_max_kb={} rss_peak_kb={} goal_errors={} goal_rss={}",
        args.duration.as_secs(),
        args.keys * args.screens_per_key,
        st.reconnects.load(Ordering::Relaxed),
        rss_start.map_or("?".into(), |v| v.to_string()),
        rss_end.map_or("?".into(), |v| v.to_string()),
        growth.map_or("?".into(), |g| format!("{g:.2}")),
        point_growth.map_or("?".into(), |g| format!("{g:.2}")),
        trend_growth.map_or("?".into(), |g| format!("{g:.2}")),
        rss_min_after.map_or("?".into(), |v| v.to_string()),
        rss_max_after.map_or("?".into(), |v| v.to_string()),
        hwm.map_or("?".into(), |v| v.to_string()),
        if total_errors == 0 { "met" } else { "missed" },
        if growth_ok { "met" } else { "missed" },
    );
    total_errors == 0 && growth_ok
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let status = match runtime.block_on(run(args)) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("[soak_load] error: {e}");
            2
        }
    };
    runtime.shutdown_timeout(Duration::from_secs(1));
    std::process::exit(status);
}
