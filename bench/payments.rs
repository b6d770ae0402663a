//! Payments from 1C (issue 19, "Speed"): the first read of DOCUMENTS
//! payment documents (ROWS rows each) by the OData poll, and a re-read of
//! the REREAD documents inside the window, all unchanged (it must emit
//! nothing).
//!
//!   cargo run --release --example payments -- --documents 50000 --rows 3 --reread 3000
//!
//! The mock 1C of the tests (`tests/support/mock_onec.rs`) runs on a thread
//! of its own (one core at most); the gateway in this process, with
//! `[payments] source = "odata"` and one subscribed system that confirms
//! every event at once (so each event also costs its outbox row and its
//! send). The older documents are dated a year back, the last REREAD within
//! `reread` (3 days) of the newest: the first read takes them all, the
//! re-read (a reload) the REREAD only. Prints `BENCH_RESULT mode=payments
//! …` (key=value); goals: first read ≤ 10 s, re-read ≤ 2 s with 0 events.
//! Bounded: each wait gives up after `--timeout`.

#[allow(dead_code)]
#[path = "../tests/support/mock_http.rs"]
mod mock_http;
#[allow(dead_code)]
#[path = "../tests/support/mock_onec.rs"]
mod mock_onec;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use cti_gateway::config::Config;
use cti_gateway::sync::inbound::Inbound;
use cti_gateway::sync::system::{
    Outcome, OutgoingRow, Page, PublishedLimit, Remote, RemoteFuture, System, Webhook, WebhookError,
};
use cti_gateway::sync::{Exports, SystemSpec};
use cti_gateway::Gateway;
use mock_onec::{guid, MockOnec, MockPayment, MockPaymentRow, PASSWORD, USERNAME};

#[derive(Parser, Debug)]
#[command(about = "Payments from the mock 1C: first read and unchanged re-read (issue 19)")]
struct Args {
    /// Payment documents in the base.
    #[arg(long, default_value_t = 50_000)]
    documents: usize,
    /// Rows of each document's РасшифровкаПлатежа.
    #[arg(long, default_value_t = 3)]
    rows: usize,
    /// Documents within the re-read window (the newest ones).
    #[arg(long, default_value_t = 3_000)]
    reread: usize,
    /// `[payments] page_size`.
    #[arg(long, default_value_t = 1_000)]
    page_size: usize,
    /// Longest wait for each read.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

/// The subscribed system: every event confirmed at once.
struct Sink(SystemSpec);

impl System for Sink {
    fn spec(&self) -> &SystemSpec {
        &self.0
    }
    fn published_limit(&self) -> PublishedLimit {
        PublishedLimit::Bucket {
            burst: 100_000,
            per_second: 100_000.0,
        }
    }
    fn batch_size(&self) -> usize {
        50
    }
    fn send<'a>(&'a self, rows: &'a [OutgoingRow]) -> RemoteFuture<'a, Vec<Outcome>> {
        Box::pin(async move {
            rows.iter()
                .map(|r| Outcome::Confirmed(Remote::new(r.record_key.clone(), None)))
                .collect()
        })
    }
    fn find_existing<'a>(
        &'a self,
        _row: &'a OutgoingRow,
    ) -> RemoteFuture<'a, Result<Option<Remote>, Outcome>> {
        Box::pin(async { Ok(None) })
    }
    fn authenticate(&self, _hook: &Webhook<'_>) -> bool {
        false
    }
    fn parse(&self, _hook: &Webhook<'_>) -> Result<Vec<Inbound>, WebhookError> {
        Ok(Vec::new())
    }
    fn list<'a>(&'a self, _after: Option<&'a str>) -> RemoteFuture<'a, Result<Page, Outcome>> {
        Box::pin(async { Ok(Page::default()) })
    }
}

/// The base: `documents` payments, the last `reread` within three days.
fn documents(args: &Args) -> Vec<MockPayment> {
    let old = args.documents.saturating_sub(args.reread);
    (0..args.documents)
        .map(|i| {
            // Old ones 10 minutes apart from 2025-01-01; recent ones a minute
            // apart from 2026-12-01 (3,000 minutes: about two days).
            let (base, step, n) = if i < old {
                (1_735_689_600u64, 600, i)
            } else {
                (1_764_547_200u64, 60, i - old)
            };
            let at = humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_secs(base + step * n as u64),
            )
            .to_string();
            let date = at.trim_end_matches('Z').to_owned();
            let mut p = MockPayment::new(&guid(1_000_000 + i as u64), &date, "0", "");
            p.amount = format!("{}.{:02}", 1000 + i % 9000, i % 100);
            p.rows = (0..args.rows)
                .map(|r| MockPaymentRow {
                    amount: if r == 0 { p.amount.clone() } else { "0".into() },
                    invoice: guid(5_000_000 + (i * args.rows + r) as u64),
                    contract: guid(9_000_000 + i as u64),
                })
                .collect();
            p
        })
        .collect()
}

/// The mock on a thread of its own; its URL, and what stops it.
fn start_mock(
    docs: Vec<MockPayment>,
) -> anyhow::Result<(String, tokio::sync::oneshot::Sender<()>)> {
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("mock-1c".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the mock's runtime");
            runtime.block_on(async move {
                let mock = MockOnec::start().await;
                mock.upsert_payments(docs);
                let _ = url_tx.send(mock.url());
                let _ = stopped.await;
                drop(mock);
            });
        })
        .context("starting the mock's thread")?;
    let url = url_rx.recv().context("the mock did not start")?;
    Ok((url, stop))
}

/// A sample of `/metrics` (the value of the first line starting with `name`).
async fn metric(client: &reqwest::Client, addr: std::net::SocketAddr, name: &str) -> f64 {
    let Ok(response) = client.get(format!("http://{addr}/metrics")).send().await else {
        return f64::NAN;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

const POLLS: &str = "cti_payments_poll_seconds_count";
const POLL_SECONDS: &str = "cti_payments_poll_seconds_sum";
const POSTED: &str = "cti_payments_events_total{kind=\"posted\",source=\"odata\"}";
const CHANGED: &str = "cti_payments_events_total{kind=\"changed\",source=\"odata\"}";
const REVERSED: &str = "cti_payments_events_total{kind=\"reversed\",source=\"odata\"}";

/// Waits until `/metrics` shows `polls` polls; gives up after `timeout`.
async fn wait_polls(
    client: &reqwest::Client,
    addr: std::net::SocketAddr,
    polls: f64,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while metric(client, addr, POLLS).await < polls {
        if Instant::now() > deadline {
            bail!("poll {polls} did not end within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let timeout = Duration::from_secs(args.timeout);
    let generated = Instant::now();
    let (url, stop_mock) = start_mock(documents(&args))?;
    eprintln!(
        "mock 1C with {} documents ready in {:.1} s at {url}",
        args.documents,
        generated.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir().context("temp dir")?;
    let path = dir.path().join("gateway.toml");
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[soap]
password = "bench-password"
[store]
path = "{store}"
[api]
token = "bench-api-token-0001"
[onec]
odata_url = "{url}"
username = "{USERNAME}"
password = "{PASSWORD}"
refresh = "1h"
[payments]
source = "odata"
poll = "1h"
page_size = {page}
[sync.benchsink]
"#,
        store = dir.path().join("var/gw.sqlite").display(),
        page = args.page_size,
    );
    let config = Config::parse(&text, &path, &|_| None).context("the bench's config")?;
    let spec = SystemSpec::new("benchsink")?
        .with_exports(Exports::Only(Arc::new(|_| false)))
        .with_payments();
    let started = Instant::now();
    let gateway = Gateway::start_with(config, vec![Arc::new(Sink(spec)) as Arc<dyn System>])
        .await
        .context("the gateway starts")?;
    let addr = gateway.local_addr();
    let client = reqwest::Client::new();

    wait_polls(&client, addr, 1.0, timeout).await?;
    let first_wall = started.elapsed().as_secs_f64();
    let first_poll = metric(&client, addr, POLL_SECONDS).await;
    let posted = metric(&client, addr, POSTED).await;

    let before = metric(&client, addr, POSTED).await
        + metric(&client, addr, CHANGED).await
        + metric(&client, addr, REVERSED).await;
    gateway.reload();
    let reread_started = Instant::now();
    wait_polls(&client, addr, 2.0, timeout).await?;
    let reread_wall = reread_started.elapsed().as_secs_f64();
    let reread_poll = metric(&client, addr, POLL_SECONDS).await - first_poll;
    let after = metric(&client, addr, POSTED).await
        + metric(&client, addr, CHANGED).await
        + metric(&client, addr, REVERSED).await;
    let reread_events = after - before;

    println!(
        "BENCH_RESULT mode=payments documents={} rows={} page_size={} first_read_s={first_poll:.3} first_read_wall_s={first_wall:.3} posted={posted} reread_documents={} reread_s={reread_poll:.3} reread_wall_s={reread_wall:.3} reread_events={reread_events} goal_first_read={} goal_reread={}",
        args.documents,
        args.rows,
        args.page_size,
        args.reread,
        first_poll <= 10.0 && posted as usize == args.documents,
        reread_poll <= 2.0 && reread_events == 0.0,
    );
    gateway.shutdown().await;
    let _ = stop_mock.send(());
    Ok(())
}
