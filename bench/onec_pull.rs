//! The pull exchange's speed (issue 19, "Speed", pull): one poller drains
//! the `onec` outbox through the gateway's HTTP endpoints.
//!
//! ```text
//! cargo run --release --example onec_pull -- --dir /tmp/p
//! cargo run --profile dev --example onec_pull -- --dir /tmp/p --rows 5000 --samples 5
//! ```
//!
//! A real gateway (`Gateway::start_with`, `[sync.onec] transport = "pull"`,
//! an empty directory file, listening on 127.0.0.1 only) in DIR, with a
//! system `onec` registered that is never called. Rows are put in the
//! outbox through `Store::enqueue` (commands of 1,000, CRM-like JSON of
//! about 400 bytes), as the change feed would. In order:
//!
//! 1. **small**: 1,000 rows pending; `--samples` (20) times: a lease of 500
//!    (`POST …/lease?limit=500`, timed), its ack (all `created`), 500 new
//!    rows: the lease's median with 1,000 pending;
//! 2. **large**: the same with `--rows` (100,000) pending: the median
//!    (goal: at most 1.5x the small one's);
//! 3. **drain**: the `--rows` rows drained by one poller as the 1C sample
//!    does (leases of 500 going on with `after`, an ack after each): the
//!    whole time (goal <= 30 s) and the leases' p99 (goal <= 100 ms).
//!
//! Human-readable lines go to stderr; `BENCH_RESULT` lines (key=value,
//! times in `_s` or `_ms`) to stdout, `goal_met=1|0`. Every request is
//! bounded (10 s), the whole run by the caller's timeout.

use std::path::PathBuf;
use std::process::exit;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cti_gateway::config::Config;
use cti_gateway::store::{NewOutboxRow, OutboxOp, Store};
use cti_gateway::sync::inbound::Inbound;
use cti_gateway::sync::system::{
    Outcome, OutgoingRow, Page, PublishedLimit, Remote, RemoteFuture, System, Webhook, WebhookError,
};
use cti_gateway::sync::SystemSpec;
use cti_gateway::Gateway;
use serde_json::{json, Value};

/// The gateway's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TOKEN: &str = "bench-api-token";
const LEASE_PATH: &str = "/api/v1/exchange/onec/counterparties/lease";
const ACK_PATH: &str = "/api/v1/exchange/onec/ack";
const PORTION: usize = 500;

struct Args {
    dir: PathBuf,
    rows: usize,
    samples: usize,
}

fn args() -> Args {
    let mut out = Args {
        dir: PathBuf::new(),
        rows: 100_000,
        samples: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag.as_str() {
            "--dir" => out.dir = PathBuf::from(value()),
            "--rows" => out.rows = number(&flag, &value()),
            "--samples" => out.samples = number(&flag, &value()),
            _ => usage(&format!("unknown argument {flag}")),
        }
    }
    if out.dir.as_os_str().is_empty() {
        usage("--dir is required");
    }
    if out.rows < 2 * PORTION {
        usage("--rows must be at least 1000");
    }
    out
}

fn number(flag: &str, value: &str) -> usize {
    value
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or_else(|| usage(&format!("{flag} must be a positive number: {value}")))
}

fn usage(problem: &str) -> ! {
    eprintln!("onec_pull: {problem}\nusage: onec_pull --dir DIR [--rows N] [--samples N]");
    exit(2)
}

/// System `onec`, registered so that the feed and the exchange know it;
/// under pull nothing calls it.
struct Pulled(SystemSpec);

impl System for Pulled {
    fn spec(&self) -> &SystemSpec {
        &self.0
    }
    fn published_limit(&self) -> PublishedLimit {
        PublishedLimit::Bucket {
            burst: 1,
            per_second: 1.0,
        }
    }
    fn batch_size(&self) -> usize {
        1
    }
    fn send<'a>(&'a self, rows: &'a [OutgoingRow]) -> RemoteFuture<'a, Vec<Outcome>> {
        Box::pin(async move { vec![Outcome::Retry("pulled, never sent".into()); rows.len()] })
    }
    fn find_existing<'a>(
        &'a self,
        _row: &'a OutgoingRow,
    ) -> RemoteFuture<'a, Result<Option<Remote>, Outcome>> {
        Box::pin(async { Err(Outcome::Retry("pulled, never sent".into())) })
    }
    fn authenticate(&self, _hook: &Webhook<'_>) -> bool {
        false
    }
    fn parse(&self, _hook: &Webhook<'_>) -> Result<Vec<Inbound>, WebhookError> {
        Err(WebhookError {
            what: "no webhooks".into(),
        })
    }
    fn list<'a>(&'a self, _after: Option<&'a str>) -> RemoteFuture<'a, Result<Page, Outcome>> {
        Box::pin(async { Ok(Page::default()) })
    }
}

fn config_text(dir: &std::path::Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[soap]
username = "SOAP"
password = "bench-soap-password"
[directory]
file = "{file}"
[store]
path = "{store}"
[api]
token = "{TOKEN}"
[[operator]]
key = "benchOperatorKey1"
token = "bench-operator-token"
name = "Оператор"
[sync.onec]
transport = "pull"
"#,
        file = dir.join("counterparties.jsonl").display(),
        store = dir.join("cti-gateway.sqlite").display(),
    )
}

/// Rows `from..to` of the outbox, CRM-like bodies.
fn rows(from: usize, to: usize) -> Vec<NewOutboxRow> {
    (from..to)
        .map(|i| {
            let body = json!({
                "id": format!("bitrix24:company:{i}"),
                "name": format!("ООО \"Клиент {i}\""),
                "full_name": format!("Общество с ограниченной ответственностью \"Клиент {i}\""),
                "inn": "7705123452",
                "kpp": format!("77{:07}", i % 10_000_000),
                "phones": [format!("+7912{:07}", i % 10_000_000)],
                "emails": [format!("client{i}@example.ru")],
                "address": "г. Москва, ул. Тверская, д. 1",
            });
            NewOutboxRow {
                system: "onec".into(),
                kind: "company".into(),
                record_key: format!("bitrix24:company:{i}"),
                op: OutboxOp::Upsert,
                body: body.to_string(),
                hash: i as u64 + 1,
            }
        })
        .collect()
}

async fn enqueue(store: &Store, from: usize, to: usize) {
    let mut at = from;
    while at < to {
        let end = (at + 1_000).min(to);
        store
            .enqueue(rows(at, end))
            .await
            .expect("the sync store takes the rows");
        at = end;
    }
}

struct Poller {
    client: reqwest::Client,
    base: String,
}

impl Poller {
    /// One lease: its items' ids, `next_after`, and how long it took.
    async fn lease(&self, after: Option<i64>) -> (Vec<i64>, i64, Duration) {
        let mut url = format!("{}{LEASE_PATH}?format=json&limit={PORTION}", self.base);
        if let Some(after) = after {
            url.push_str(&format!("&after={after}"));
        }
        let started = Instant::now();
        let response = self
            .client
            .post(&url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("the lease is answered");
        let status = response.status();
        let body = response.bytes().await.expect("the lease's body");
        let took = started.elapsed();
        assert!(
            status.is_success(),
            "lease: {status}: {}",
            String::from_utf8_lossy(&body)
        );
        let value: Value = serde_json::from_slice(&body).expect("lease JSON");
        let ids = value["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|i| i["id"].as_i64().expect("id"))
            .collect();
        (ids, value["next_after"].as_i64().expect("next_after"), took)
    }

    /// Acks `ids` as created, each with a ref of its own.
    async fn ack(&self, ids: &[i64]) {
        let results: Vec<Value> = ids
            .iter()
            .map(|id| {
                json!({"id": id, "status": "created",
                       "onec_ref": format!("00000000-0000-4000-8000-{id:012x}"), "code": "", "message": ""})
            })
            .collect();
        let response = self
            .client
            .post(format!("{}{ACK_PATH}", self.base))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(json!({ "results": results }).to_string())
            .send()
            .await
            .expect("the ack is answered");
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(status.is_success(), "ack: {status}: {body}");
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    let rank = ((v.len() as f64) * p).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// `samples` leases of 500 with `pending` rows waiting before each (the
/// leased rows acked and as many new ones queued after each): their times.
async fn leases_at(
    poller: &Poller,
    store: &Store,
    next_row: &mut usize,
    samples: usize,
) -> Vec<Duration> {
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let (ids, _, took) = poller.lease(None).await;
        assert_eq!(ids.len(), PORTION, "a full lease");
        times.push(took);
        poller.ack(&ids).await;
        enqueue(store, *next_row, *next_row + PORTION).await;
        *next_row += PORTION;
    }
    times
}

#[tokio::main]
async fn main() {
    let args = args();
    std::fs::create_dir_all(&args.dir).expect("the bench folder");
    std::fs::write(args.dir.join("counterparties.jsonl"), "").expect("an empty directory file");
    let path = args.dir.join("gateway.toml");
    let config = Config::parse(&config_text(&args.dir), &path, &|_| None).expect("bench config");
    let spec = SystemSpec::new("onec").expect("the system's name");
    let gateway = Gateway::start_with(config, vec![Arc::new(Pulled(spec)) as Arc<dyn System>])
        .await
        .expect("the gateway starts");
    let store = gateway.sync_store().expect("the sync store").clone();
    // reqwest is built without a TLS provider of its own (the gateway's
    // 1C client installs ring the same way); nothing here speaks TLS.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let poller = Poller {
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client"),
        base: format!("http://{}", gateway.local_addr()),
    };

    // 1. 1,000 pending.
    let mut next_row = 0usize;
    enqueue(&store, 0, 2 * PORTION).await;
    next_row += 2 * PORTION;
    let small = leases_at(&poller, &store, &mut next_row, args.samples).await;
    // 2. `rows` pending.
    enqueue(&store, next_row, next_row + args.rows - 2 * PORTION).await;
    next_row += args.rows - 2 * PORTION;
    let large = leases_at(&poller, &store, &mut next_row, args.samples).await;
    let (small_median, large_median) = (median(small), median(large));
    let ratio = large_median.as_secs_f64() / small_median.as_secs_f64().max(1e-9);
    eprintln!(
        "lease of {PORTION}: median {:.2} ms with {} pending, {:.2} ms with {} pending: ratio {ratio:.2}",
        ms(small_median),
        2 * PORTION,
        ms(large_median),
        args.rows
    );
    println!(
        "BENCH_RESULT mode=onec_pull_lease portion={PORTION} samples={} small_pending={} large_pending={} small_median_ms={:.3} large_median_ms={:.3} ratio={ratio:.3} goal_met={}",
        args.samples,
        2 * PORTION,
        args.rows,
        ms(small_median),
        ms(large_median),
        u8::from(ratio <= 1.5)
    );

    // 3. The drain, as the 1C sample polls.
    let started = Instant::now();
    let mut after = None;
    let mut times = Vec::new();
    let mut drained = 0usize;
    loop {
        let (ids, next_after, took) = poller.lease(after).await;
        times.push(took);
        if ids.is_empty() {
            break;
        }
        poller.ack(&ids).await;
        drained += ids.len();
        after = Some(next_after);
    }
    let wall = started.elapsed();
    if let Some((slowest, took)) = times.iter().enumerate().max_by_key(|(_, t)| **t) {
        eprintln!(
            "drain: the slowest lease was number {} of {}: {:.2} ms",
            slowest + 1,
            times.len(),
            ms(*took)
        );
    }
    let p99 = percentile(times.clone(), 0.99);
    let p50 = percentile(times.clone(), 0.50);
    let leases = times.len();
    eprintln!(
        "drain: {drained} rows in {:.2} s ({leases} leases: p50 {:.2} ms, p99 {:.2} ms)",
        wall.as_secs_f64(),
        ms(p50),
        ms(p99)
    );
    println!(
        "BENCH_RESULT mode=onec_pull_drain rows={drained} wall_s={:.3} leases={leases} lease_p50_ms={:.3} lease_p99_ms={:.3} goal_met={}",
        wall.as_secs_f64(),
        ms(p50),
        ms(p99),
        u8::from(wall <= Duration::from_secs(30) && p99 <= Duration::from_millis(100))
    );
    gateway.shutdown().await;
}
