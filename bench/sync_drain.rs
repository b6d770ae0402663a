//! A gateway sending a CRM its outbox while it answers SayName: the host
//! process of `bench/sync.sh drain` (issue 18, "Speed").
//!
//! ```text
//! cargo run --release --example sync_drain -- --dir DIR \
//!     --directory counterparties.jsonl --crm http://127.0.0.1:PORT \
//!     --listen 127.0.0.1:18085 --limit published --changes 10000
//! ```
//!
//! An in-process gateway (`Gateway::start_with`, on a multi-threaded
//! runtime as the binary's) listening on `--listen`, its store in `--dir`
//! (kept: a second run on the same folder starts with the first's id-map,
//! so nothing is sent at start), the counterparties of `--directory` (JSON
//! Lines, `bench/gen_counterparties.rs`) as its directory file, SOAP
//! `SOAP`/`123` at `/telephony/ws/VATS`, the push API's token
//! `bench-api-token`, and one sync system: the tests' `TestSystem`
//! (`tests/support/test_system.rs`) named `testcrm`, over the mock CRM at
//! `--crm` (`bench/crm_mock.rs`, its own process). `--limit published`
//! keeps the system's published limit (Bitrix24's bucket of 50 and 2/s,
//! as the mock's `--capacity 50 --drain 2`); `--limit unlimited` sets
//! `burst = 10000`, `per_second = 100000` in `[sync.testcrm]`.
//!
//! At start the change feed's reconcile queues every record the id-map
//! lacks (all of them on an empty store) and the worker sends them; once
//! the directory is loaded and the outbox empty it prints (stdout, each
//! line flushed):
//!
//! - `SYNC_DRAIN initial counterparties=N linked=N seconds=S requests=R`
//!   (the initial load, if any: from the gateway's start to every record
//!   linked in the id-map, or no more linked with the outbox empty);
//! - `SYNC_DRAIN url=http://127.0.0.1:PORT`.
//!
//! Then each SIGUSR1 is one drain: `--changes` records of the file (the
//! next ones after the last drain's, wrapping), each with a new name
//! (`(published 3)`, `(unlimited 1)` appended: never one of an earlier
//! run on the same store), are
//! pushed through the push API (`POST /api/v1/counterparties`, 1,000 a
//! request, as a 1C would), which the feed queues for the system:
//!
//! - `SYNC_DRAIN draining round=N rows=N push_ms=… queued_ms=… pending=P
//!   at_ms=UNIX_MS` once every change is queued (the feed settled; the
//!   worker sends from the first one queued, `pending` is what is left);
//! - `SYNC_DRAIN drained round=N rows=N seconds=S rows_per_s=R requests=N
//!   limited=N retried=N dead=N at_ms=UNIX_MS` once the outbox is empty
//!   (`seconds` from the first push; `requests` the sync requests of the
//!   drain, `limited` those answered with a limit, `retried` those that
//!   failed otherwise; `dead` the outbox's dead rows);
//! - `SYNC_DRAIN failed what=…` when something does not happen within
//!   `--drain-timeout` (the process goes on; the script stops it).
//!
//! A failure before the url line (the gateway does not start, the
//! initial load does not end) is a `SYNC_DRAIN failed what=…` line too, and
//! the process exits 1.
//!
//! SIGTERM or SIGINT (or `--max-seconds`) shut the gateway down and print
//! `SYNC_DRAIN stopped`. Everything listens on 127.0.0.1 only.

#[allow(dead_code)]
#[path = "../tests/support/test_system.rs"]
mod test_system;

use std::collections::HashMap;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use cti_gateway::config::Config;
use cti_gateway::sync::system::System;
use cti_gateway::sync::SystemSpec;
use cti_gateway::Gateway;
use serde_json::Value;
use tokio::signal::unix::{signal, Signal, SignalKind};

use test_system::TestSystem;

/// The sync system's name (its `[sync.<name>]` table).
const SYSTEM: &str = "testcrm";
/// The push API's Bearer token in the bench config.
const API_TOKEN: &str = "bench-api-token";
/// Records per push request: a 1C pushing in batches (the API takes up to 10,000).
const PUSH_BATCH: usize = 1_000;
/// How often the outbox's depth is read while waiting for it to empty: one
/// count over an index, cheap beside the drain it watches.
const POLL: Duration = Duration::from_millis(100);
/// Longest between a source's swap and its change report reaching the feed.
const REPORT_LAG: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Limit {
    /// The test system's published limit (Bitrix24's 50 and 2/s).
    Published,
    /// A limiter that never waits (for a mock without a bucket).
    Unlimited,
}

#[derive(Parser, Debug)]
#[command(about = "A gateway draining its outbox to the mock CRM (bench/sync.sh drain)")]
struct Args {
    /// The gateway's store folder (kept between runs).
    #[arg(long)]
    dir: PathBuf,
    /// The counterparties (JSON Lines): the directory file, and the records
    /// each drain changes.
    #[arg(long)]
    directory: PathBuf,
    /// The mock CRM's base URL (http://127.0.0.1:PORT).
    #[arg(long)]
    crm: String,
    /// The gateway's address; loopback only.
    #[arg(long, default_value = "127.0.0.1:18085")]
    listen: SocketAddr,
    /// The sync limiter.
    #[arg(long, value_enum, default_value = "published")]
    limit: Limit,
    /// Records changed (and so rows queued) per drain.
    #[arg(long, default_value_t = 10_000)]
    changes: usize,
    /// Longest the initial load, a push, the feed or one drain may take (s).
    #[arg(long, default_value_t = 600)]
    drain_timeout: u64,
    /// Exits after this long whatever happens (s): a script that died never
    /// leaves it running for ever.
    #[arg(long, default_value_t = 3600)]
    max_seconds: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        bail!("--listen must be a loopback address, not {}", args.listen);
    }
    if !args.crm.starts_with("http://127.0.0.1:") {
        bail!("--crm must be http://127.0.0.1:PORT: {}", args.crm);
    }
    if args.changes == 0 {
        bail!("--changes must be at least 1");
    }
    // The gateway's warnings (a limit answer, a failing system) on stderr,
    // which the script keeps as the log.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    // As the binary's runtime: a worker per core.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    let result = runtime.block_on(run(args));
    if let Err(e) = &result {
        // The script waits for a line, not for the exit.
        let _ = say(&format!(
            "SYNC_DRAIN failed what={}",
            one_word(&format!("{e:#}"))
        ));
    }
    result
}

/// SIGTERM, SIGINT and the `--max-seconds` deadline: whichever comes first
/// stops the run.
struct Stop {
    term: Signal,
    int: Signal,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Stop {
    async fn stopped(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
            _ = &mut self.deadline => eprintln!("sync_drain: --max-seconds reached"),
        }
    }

    /// `work`, unless a stop comes first (then `None`).
    async fn unless_stopped<T>(&mut self, work: impl Future<Output = T>) -> Option<T> {
        tokio::select! {
            out = work => Some(out),
            () = self.stopped() => None,
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    // Handlers first: a signal sent during start-up is handled, not fatal.
    let mut usr1 = signal(SignalKind::user_defined1()).context("SIGUSR1 handler")?;
    let mut stop = Stop {
        term: signal(SignalKind::terminate()).context("SIGTERM handler")?,
        int: signal(SignalKind::interrupt()).context("SIGINT handler")?,
        deadline: Box::pin(tokio::time::sleep(Duration::from_secs(args.max_seconds))),
    };
    let records = count_records(&args.directory)?;
    if args.changes > records {
        bail!(
            "--changes {} is more than the {records} records of {}: a push may not hold one id twice",
            args.changes,
            args.directory.display()
        );
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let limit = Duration::from_secs(args.drain_timeout);

    let started = Instant::now();
    let system = TestSystem::new(SystemSpec::new(SYSTEM).context("system name")?, &args.crm);
    let gateway = match stop
        .unless_stopped(Gateway::start_with(
            config(&args)?,
            vec![Arc::new(system) as Arc<dyn System>],
        ))
        .await
    {
        Some(gateway) => gateway.context("the gateway did not start")?,
        None => {
            say("SYNC_DRAIN stopped")?;
            return Ok(());
        }
    };
    let mut drains = Drains {
        gateway: &gateway,
        file: args.directory.clone(),
        records,
        changes: args.changes,
        limit,
        client: reqwest::Client::builder()
            .timeout(limit)
            .build()
            .context("an HTTP client")?,
        round: 0,
        label: match args.limit {
            Limit::Published => "published",
            Limit::Unlimited => "unlimited",
        },
    };
    if let Some(ready) = stop.unless_stopped(drains.initial(started)).await {
        if let Err(e) = ready {
            gateway.shutdown().await;
            return Err(e);
        }
        say(&format!("SYNC_DRAIN url=http://{}", gateway.local_addr()))?;
        loop {
            tokio::select! {
                _ = usr1.recv() => {
                    let Some(drained) = stop.unless_stopped(drains.drain()).await else { break };
                    if let Err(e) = drained {
                        say(&format!("SYNC_DRAIN failed what={}", one_word(&format!("{e:#}"))))?;
                    }
                }
                () = stop.stopped() => break,
            }
        }
    }
    gateway.shutdown().await;
    say("SYNC_DRAIN stopped")?;
    Ok(())
}

/// The file's records: its non-empty lines.
fn count_records(path: &Path) -> anyhow::Result<usize> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let records = text.lines().filter(|l| !l.trim().is_empty()).count();
    if records == 0 {
        bail!("{} holds no record", path.display());
    }
    Ok(records)
}

fn config(args: &Args) -> anyhow::Result<Config> {
    let limiter = match args.limit {
        Limit::Published => "",
        Limit::Unlimited => "burst = 10000\nper_second = 100000\n",
    };
    let directory = std::fs::canonicalize(&args.directory)
        .with_context(|| format!("{}", args.directory.display()))?;
    let text = format!(
        r#"
[server]
listen = "{listen}"
max_connections_per_address = 100000   # every bench client comes from 127.0.0.1
[soap]
path = "/telephony/ws/VATS"
username = "SOAP"
password = "123"
[directory]
file = "{file}"
[store]
path = "{store}"
[api]
token = "{API_TOKEN}"
[log]
level = "warn"
[sync.{SYSTEM}]
{limiter}"#,
        listen = args.listen,
        file = directory.display(),
        store = args.dir.join("store.sqlite").display(),
    );
    Config::parse(&text, &args.dir.join("gateway.toml"), &|_| None)
        .context("the bench config is refused")
}

/// The drains of one gateway.
struct Drains<'a> {
    gateway: &'a Gateway,
    /// The directory file, read again for each drain's records (kept in
    /// memory they would be a large share of the process's).
    file: PathBuf,
    /// Its records.
    records: usize,
    changes: usize,
    limit: Duration,
    client: reqwest::Client,
    round: u64,
    /// Part of each new name: the names differ from the last run's on the
    /// same store (`--limit`'s name), so every change is one.
    label: &'static str,
}

impl Drains<'_> {
    /// Waits for the directory to hold the file's records and for the
    /// start-up reconcile's rows to be sent; prints the initial line.
    async fn initial(&self, started: Instant) -> anyhow::Result<()> {
        let directory = self.gateway.directory();
        self.within("the directory file loads", async {
            while directory.snapshot().len() < self.records {
                tokio::time::sleep(POLL).await;
            }
        })
        .await?;
        // The load's change report is handed to the feed just after the
        // swap that made the records visible: a moment, so that `settled`
        // waits for it too (else the outbox may look empty before the
        // feed has queued anything).
        tokio::time::sleep(REPORT_LAG).await;
        // Every record sent and confirmed: the id-map links them all, or
        // (a record the feed holds back, such as one whose requisites fail
        // their check) no more get linked with the feed settled and the
        // outbox empty.
        let linked = self
            .within("the initial load", async {
                let mut last = None;
                loop {
                    self.settled().await?;
                    self.empty().await?;
                    let linked = self.linked().await?;
                    if linked >= self.records || last == Some(linked) {
                        return anyhow::Ok(linked);
                    }
                    last = Some(linked);
                    tokio::time::sleep(REPORT_LAG).await;
                }
            })
            .await??;
        if linked < self.records {
            eprintln!(
                "sync_drain: {linked} of {} records linked after the initial load",
                self.records
            );
        }
        say(&format!(
            "SYNC_DRAIN initial counterparties={} linked={linked} seconds={:.3} requests={}",
            directory.snapshot().len(),
            started.elapsed().as_secs_f64(),
            self.requests().total(),
        ))
    }

    /// The system's records linked in the id-map (or queued).
    async fn linked(&self) -> anyhow::Result<usize> {
        Ok(self
            .sync_store()?
            .last_hashes(SYSTEM, "company")
            .await
            .context("reading the id-map")?
            .len())
    }

    /// One drain: the next `changes` records pushed with a new name, then
    /// waited out until the outbox is empty.
    async fn drain(&mut self) -> anyhow::Result<()> {
        self.round += 1;
        let round = self.round;
        let changed = self.changed_records(round)?;
        let requests0 = self.requests();
        let t0 = Instant::now();
        for batch in changed.chunks(PUSH_BATCH) {
            self.push(batch).await?;
        }
        let pushed = t0.elapsed();
        self.settled().await?;
        let queued = t0.elapsed();
        let pending = self.depth().await?;
        say(&format!(
            "SYNC_DRAIN draining round={round} rows={} push_ms={} queued_ms={} pending={pending} at_ms={}",
            changed.len(),
            pushed.as_millis(),
            queued.as_millis(),
            unix_ms(),
        ))?;
        self.empty().await?;
        let seconds = t0.elapsed().as_secs_f64();
        let requests = self.requests();
        let dead = self.dead().await?;
        say(&format!(
            "SYNC_DRAIN drained round={round} rows={} seconds={seconds:.3} rows_per_s={:.0} requests={} limited={} retried={} dead={dead} at_ms={}",
            changed.len(),
            changed.len() as f64 / seconds,
            requests.total() - requests0.total(),
            requests.of("limited") - requests0.of("limited"),
            requests.of("retry") + requests.of("timeout")
                - requests0.of("retry")
                - requests0.of("timeout"),
            unix_ms(),
        ))
    }

    /// Round `round`'s records (JSON objects), renamed: the `changes`
    /// after the last round's, from the first again after the last.
    fn changed_records(&self, round: u64) -> anyhow::Result<Vec<String>> {
        let first = (round as usize - 1) * self.changes % self.records;
        let text = std::fs::read_to_string(&self.file)
            .with_context(|| format!("reading {}", self.file.display()))?;
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        if lines.is_empty() {
            bail!("{} holds no record any more", self.file.display());
        }
        (first..first + self.changes)
            .map(|k| {
                let line = lines[k % lines.len()];
                let Ok(Value::Object(mut record)) = serde_json::from_str::<Value>(line) else {
                    bail!(
                        "{} record {}: not a JSON object",
                        self.file.display(),
                        k % lines.len() + 1
                    );
                };
                let name = record.get("name").and_then(Value::as_str).unwrap_or("");
                let renamed = format!("{name} ({} {round})", self.label);
                record.insert("name".to_owned(), Value::String(renamed));
                Ok(Value::Object(record).to_string())
            })
            .collect()
    }

    /// One push of `records` (JSON objects) through the push API.
    async fn push(&self, records: &[String]) -> anyhow::Result<()> {
        let body = format!("[{}]", records.join(","));
        let reply = self
            .client
            .post(format!(
                "http://{}/api/v1/counterparties",
                self.gateway.local_addr()
            ))
            .header("authorization", format!("Bearer {API_TOKEN}"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .context("the push API did not answer")?;
        let status = reply.status();
        if !status.is_success() {
            let text = reply.text().await.unwrap_or_default();
            bail!(
                "the push API answered {status}: {}",
                text.chars().take(300).collect::<String>()
            );
        }
        Ok(())
    }

    /// Until the feed has queued every change so far.
    async fn settled(&self) -> anyhow::Result<()> {
        let feed = self
            .gateway
            .sync_feed()
            .context("the gateway has no change feed")?;
        self.within("the feed queues the changes", feed.settled())
            .await
    }

    /// Until no row of the system is pending.
    async fn empty(&self) -> anyhow::Result<()> {
        self.within("the outbox drains", async {
            loop {
                match self.depth().await {
                    Ok(0) => return Ok(()),
                    Ok(_) => tokio::time::sleep(POLL).await,
                    Err(e) => return Err(e),
                }
            }
        })
        .await?
    }

    async fn depth(&self) -> anyhow::Result<u64> {
        Ok(self
            .sync_store()?
            .sync_depth(SYSTEM)
            .await
            .context("reading the outbox's depth")?
            .outbox)
    }

    async fn dead(&self) -> anyhow::Result<u64> {
        let status = self
            .sync_store()?
            .sync_status()
            .await
            .context("reading the sync status")?;
        Ok(status
            .iter()
            .find(|s| s.system == SYSTEM)
            .map_or(0, |s| s.dead))
    }

    fn sync_store(&self) -> anyhow::Result<&cti_gateway::store::Store> {
        self.gateway
            .sync_store()
            .context("the gateway has no sync store")
    }

    /// The system's requests so far by outcome (`cti_sync_requests_total`).
    fn requests(&self) -> Requests {
        let mut by_outcome = HashMap::new();
        for family in self.gateway.metrics().registry().gather() {
            if family.name() != "cti_sync_requests_total" {
                continue;
            }
            for metric in family.get_metric() {
                let label = |name: &str| {
                    metric
                        .get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_owned())
                };
                if label("system").as_deref() == Some(SYSTEM) {
                    if let Some(outcome) = label("outcome") {
                        by_outcome.insert(outcome, metric.get_counter().get_value() as u64);
                    }
                }
            }
        }
        Requests(by_outcome)
    }

    /// `work` within the time limit, or an error naming `what`.
    async fn within<T>(&self, what: &str, work: impl Future<Output = T>) -> anyhow::Result<T> {
        tokio::time::timeout(self.limit, work)
            .await
            .map_err(|_| anyhow::anyhow!("{what}: not within {:?}", self.limit))
    }
}

/// `cti_sync_requests_total` of the system, by outcome.
struct Requests(HashMap<String, u64>);

impl Requests {
    fn of(&self, outcome: &str) -> u64 {
        self.0.get(outcome).copied().unwrap_or(0)
    }

    fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// `text` as one key=value token (spaces to underscores).
fn one_word(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join("_")
}

/// One line on stdout, flushed at once (the script reads it from a file).
fn say(line: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()?;
    Ok(())
}
