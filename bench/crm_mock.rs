//! The mock CRM of the tests (`tests/support/mock_crm.rs`) as a process, for
//! `bench/sync.sh` (as `onec_mock` is the mock 1C for `bench/onec.sh`).
//!
//!   cargo run --release --example crm_mock -- --capacity 50 --drain 2
//!
//! Listens on `--listen` (127.0.0.1 only; a free port by default), unlimited
//! unless `--capacity` and `--drain` set its exact leaky bucket, and prints
//! `CRM_MOCK url=http://127.0.0.1:PORT` on stdout. Then:
//!
//! - on SIGUSR1 prints `CRM_MOCK stats requests=… writes=… creates=…
//!   updates=… removes=… refused=… limit_answers=… blocked_answers=…
//!   webhooks_sent=… webhooks_failed=… records=… duplicate_creates=…
//!   elapsed_s=…` (`duplicate_creates`: external ids created more than
//!   once; `elapsed_s`: since the url line, for a rate);
//! - on SIGUSR2 switches its bucket off, or on again, and prints
//!   `CRM_MOCK bucket=off` or `CRM_MOCK bucket=on` (on again: starting
//!   empty); with `--start-unlimited` the bucket `--capacity` and `--drain`
//!   set is off until the first SIGUSR2 (`bench/sync.sh drain`: one mock,
//!   so one set of remote ids, first unlimited and then at the published
//!   rate);
//! - on SIGTERM or SIGINT, or after `--max-seconds`, prints the stats line
//!   and `CRM_MOCK stopped` and exits.
//!
//! The request log is off (a drain of 10,000 changes would keep every
//! body); the counters are what the script reads. One thread: the mock
//! takes at most one of the machine's cores (the script runs it under
//! `SCHED_IDLE` on the background core).

#[allow(dead_code)]
#[path = "../tests/support/mock_crm.rs"]
mod mock_crm;
#[allow(dead_code)]
#[path = "../tests/support/mock_http.rs"]
mod mock_http;

use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};

use mock_crm::{Bucket, LimitAnswer, MockCrm, WebhookTarget};

#[derive(Parser, Debug)]
#[command(about = "Mock CRM (tests/support/mock_crm.rs) as a process (bench/sync.sh)")]
struct Args {
    /// Address to listen on; loopback only.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Leaky bucket capacity (requests at once); with --drain. Unlimited without.
    #[arg(long, requires = "drain")]
    capacity: Option<u32>,
    /// Leaky bucket drain, requests per second; with --capacity.
    #[arg(long, requires = "capacity")]
    drain: Option<f64>,
    /// The bucket is off until the first SIGUSR2; with --capacity.
    #[arg(long, requires = "capacity")]
    start_unlimited: bool,
    /// Answer over the bucket: 503 (QUERY_LIMIT_EXCEEDED) or 429 (Retry-After).
    #[arg(long, default_value_t = 503)]
    limit_status: u16,
    /// POST each write to this URL (http://127.0.0.1:PORT/path).
    #[arg(long)]
    webhook_url: Option<String>,
    /// The webhook's token header and value.
    #[arg(long, default_value = "X-Mock-Token")]
    webhook_header: String,
    #[arg(long, default_value = "webhook-token")]
    webhook_token: String,
    /// Exits after this long whatever happens (a script that died never
    /// leaves it running for ever).
    #[arg(long, default_value_t = 3600)]
    max_seconds: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        bail!("--listen must be a loopback address, not {}", args.listen);
    }
    let limit_answer = match args.limit_status {
        503 => LimitAnswer::QueryLimit503,
        429 => LimitAnswer::RetryAfter429,
        other => bail!("--limit-status must be 503 or 429, not {other}"),
    };
    if let Some(drain) = args.drain {
        if !(drain.is_finite() && drain > 0.0) {
            bail!("--drain must be a positive number of requests per second");
        }
    }
    if args.capacity == Some(0) {
        bail!("--capacity must be at least 1");
    }
    if let Some(url) = &args.webhook_url {
        if !url.starts_with("http://127.0.0.1:") {
            bail!("--webhook-url must be http://127.0.0.1:PORT/...: {url}");
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    runtime.block_on(run(args, limit_answer))
}

async fn run(args: Args, limit_answer: LimitAnswer) -> anyhow::Result<()> {
    // Signal handlers first: a signal sent as soon as the url line is out is
    // handled, not fatal.
    let mut usr1 = signal(SignalKind::user_defined1()).context("SIGUSR1 handler")?;
    let mut usr2 = signal(SignalKind::user_defined2()).context("SIGUSR2 handler")?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let mock = MockCrm::start_with(Some(listener)).await;
    mock.set_keep_log(false);
    mock.set_limit_answer(limit_answer);
    let bucket = match (args.capacity, args.drain) {
        (Some(capacity), Some(drain_per_second)) => Some(Bucket {
            capacity,
            drain_per_second,
        }),
        _ => None,
    };
    let mut bucket_on = bucket.is_some() && !args.start_unlimited;
    if bucket_on {
        mock.set_bucket(bucket);
    }
    if let Some(url) = &args.webhook_url {
        mock.set_webhook(Some(WebhookTarget {
            url: url.clone(),
            header: args.webhook_header.clone(),
            token: args.webhook_token.clone(),
        }));
    }
    let limit = match (args.capacity, args.drain) {
        (Some(c), Some(d)) => format!(
            "bucket {c}, drain {d}/s, answer {}{}",
            args.limit_status,
            if bucket_on { "" } else { "; off until SIGUSR2" }
        ),
        _ => "unlimited".to_owned(),
    };
    eprintln!("crm_mock: on {} ({limit})", mock.url());
    say(&format!("CRM_MOCK url={}", mock.url()))?;

    let started = Instant::now();
    let deadline = tokio::time::sleep(Duration::from_secs(args.max_seconds));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = usr1.recv() => say(&stats(&mock, started))?,
            _ = usr2.recv() => {
                bucket_on = !bucket_on && bucket.is_some();
                mock.set_bucket(if bucket_on { bucket } else { None });
                say(if bucket_on { "CRM_MOCK bucket=on" } else { "CRM_MOCK bucket=off" })?;
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = &mut deadline => {
                eprintln!("crm_mock: --max-seconds {} reached", args.max_seconds);
                break;
            }
        }
    }
    say(&stats(&mock, started))?;
    say("CRM_MOCK stopped")?;
    Ok(())
}

fn stats(mock: &MockCrm, started: Instant) -> String {
    let c = mock.counters();
    let duplicates = mock
        .creates_per_external_id()
        .values()
        .filter(|&&n| n > 1)
        .count();
    format!(
        "CRM_MOCK stats requests={} writes={} creates={} updates={} removes={} refused={} \
         limit_answers={} blocked_answers={} webhooks_sent={} webhooks_failed={} records={} \
         duplicate_creates={duplicates} elapsed_s={:.3}",
        c.requests,
        c.writes,
        c.creates,
        c.updates,
        c.removes,
        c.refused_entries,
        c.limit_answers,
        c.blocked_answers,
        c.webhooks_sent,
        c.webhooks_failed,
        mock.record_count(),
        started.elapsed().as_secs_f64(),
    )
}

/// One line on stdout, flushed at once (the script reads it from a file).
fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}
