//! The 1C writer's throughput against the mock 1C (issue 19), for
//! `bench/onec_writer.sh`:
//!
//!   cargo run --release --example onec_writer -- --count 10000 --per-second 200
//!
//! Starts the mock 1C of the tests (`tests/support/mock_onec.rs`, empty, on
//! 127.0.0.1) and, in the same process, a gateway whose directory file holds
//! COUNT companies 1C lacks (distinct valid INNs, a phone and an e-mail
//! each) and whose `[sync.onec]` writes them at `per_second`. Each create is
//! a search by INN and a POST with two contact rows. Waits (at most
//! `--timeout`) until 1C holds COUNT counterparties, then prints, from the
//! times the requests reached the mock: requests, the span from the first
//! write request to the last, requests per second over it, and the most
//! requests in any 1 s window.
//!
//! Lines starting with BENCH_RESULT are machine-readable (key=value).

#[allow(dead_code)]
#[path = "../tests/support/mock_http.rs"]
mod mock_http;
#[allow(dead_code)]
#[path = "../tests/support/mock_onec.rs"]
mod mock_onec;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use cti_gateway::config::Config;
use cti_gateway::Gateway;

use mock_onec::{MockOnec, PASSWORD, USERNAME, WRITE_PASSWORD, WRITE_USERNAME};

#[derive(Parser, Debug)]
#[command(about = "The 1C writer's request rate against the mock 1C (bench/onec_writer.sh)")]
struct Args {
    /// Companies to create in 1C.
    #[arg(long, default_value_t = 10_000)]
    count: usize,
    /// `[sync.onec] per_second`.
    #[arg(long, default_value_t = 200.0)]
    per_second: f64,
    /// `[sync.onec] concurrency`.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Longest wait for every create, in seconds.
    #[arg(long, default_value_t = 180)]
    timeout: u64,
    /// Folder for the config, the directory file and the stores (a temporary one if unset).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

/// A valid 10-digit INN for `n` (the tax service's check digit).
fn inn(n: usize) -> String {
    let body = format!("77{:07}", n % 10_000_000);
    let weights = [2, 4, 10, 3, 5, 9, 4, 6, 8];
    let sum: u32 = body
        .bytes()
        .zip(weights)
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    format!("{body}{}", sum % 11 % 10)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let temp = tempfile_dir(args.dir.as_deref())?;
    let dir = temp.as_path();
    let mock = MockOnec::start_for_writes().await;
    let file: String = (0..args.count)
        .map(|i| {
            format!(
                "{}\n",
                serde_json::json!({"id": format!("w{i:06}"), "name": format!("Клиент {i}"),
                    "inn": inn(i), "kpp": "770101001",
                    "phones": [format!("8916{:07}", i % 10_000_000)],
                    "emails": [format!("c{i}@example.ru")]})
            )
        })
        .collect();
    std::fs::write(dir.join("counterparties.jsonl"), file).context("directory file")?;
    let config = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[soap]
password = "bench-soap-password"
[directory]
file = "{file}"
[store]
path = "{store}"
[onec]
odata_url = "{url}"
username = "{USERNAME}"
password = "{PASSWORD}"
refresh = "1h"
timeout = "10s"
[sync.onec]
write_username = "{WRITE_USERNAME}"
write_password = "{WRITE_PASSWORD}"
per_second = {per_second}
concurrency = {concurrency}
timeout = "10s"
[log]
level = "warn"
"#,
        file = dir.join("counterparties.jsonl").display(),
        store = dir.join("store.sqlite").display(),
        url = mock.url(),
        per_second = args.per_second,
        concurrency = args.concurrency,
    );
    let config_path = dir.join("gateway.toml");
    std::fs::write(&config_path, &config).context("config")?;
    let config = Config::parse(&config, &config_path, &|_| None).context("config")?;
    let started = Instant::now();
    let gateway = Gateway::start(config).await.context("the gateway starts")?;
    let deadline = started + Duration::from_secs(args.timeout);
    let mut created = 0;
    while Instant::now() < deadline {
        created = mock.counterparties().len();
        if created >= args.count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed();
    let arrivals = mock.arrivals();
    let writes = mock.writes().len();
    gateway.shutdown().await;
    // The writer's requests: from the first search on (the start-up read of
    // 1C comes before it and is not the writer's).
    let first_write = mock
        .requests()
        .iter()
        .position(|r| r.option("$top") == Some("2"))
        .unwrap_or(0);
    let times = &arrivals[first_write.min(arrivals.len())..];
    let span = match (times.first(), times.last()) {
        (Some(a), Some(b)) => b.duration_since(*a),
        _ => Duration::ZERO,
    };
    let rate = if span.is_zero() {
        0.0
    } else {
        times.len().saturating_sub(1) as f64 / span.as_secs_f64()
    };
    let mut max_window = 0;
    let mut from = 0;
    for (to, t) in times.iter().enumerate() {
        while t.duration_since(times[from]) >= Duration::from_secs(1) {
            from += 1;
        }
        max_window = max_window.max(to - from + 1);
    }
    println!(
        "onec writer: {created} of {} created in {:.1} s; {} requests ({writes} writes) over {:.2} s: {rate:.1} req/s, at most {max_window} in any 1 s (per_second {})",
        args.count,
        elapsed.as_secs_f64(),
        times.len(),
        span.as_secs_f64(),
        args.per_second
    );
    println!(
        "BENCH_RESULT bench=onec_writer count={} created={created} requests={} writes={writes} span_s={:.3} req_per_s={rate:.1} max_1s={max_window} per_second={}",
        args.count,
        times.len(),
        span.as_secs_f64(),
        args.per_second
    );
    anyhow::ensure!(
        created >= args.count,
        "only {created} of {} created before the timeout",
        args.count
    );
    Ok(())
}

/// `dir`, or a new temporary folder (removed when the process ends).
fn tempfile_dir(dir: Option<&Path>) -> anyhow::Result<Folder> {
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).context("--dir")?;
            Ok(Folder::Given(dir.to_owned()))
        }
        None => Ok(Folder::Temp(tempfile::tempdir().context("temp dir")?)),
    }
}

enum Folder {
    Given(std::path::PathBuf),
    Temp(tempfile::TempDir),
}

impl Folder {
    fn as_path(&self) -> &Path {
        match self {
            Folder::Given(p) => p,
            Folder::Temp(t) => t.path(),
        }
    }
}
