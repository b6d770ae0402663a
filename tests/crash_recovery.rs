//! Crash recovery: `kill -9` in the middle of a stream of pushes and
//! IncomingCalls, then a restart on the same store. Every change the gateway
//! acknowledged (a push answered 200, an IncomingCall answered `1`) must be
//! there after the restart, and the store must open cleanly.
//!
//! The real binary runs as a child process (a SIGKILL of the test's own
//! process is not what a crash looks like), three times in a row over the
//! same store: each cycle drives pushes and calls on several connections,
//! kills the gateway while they are in flight, restarts it and checks
//! everything acknowledged so far, so the later kills hit a store whose WAL
//! already holds the earlier cycles' writes.
//!
//! The run is seeded; the seed is printed, and `CRASH_RECOVERY_SEED=N`
//! replays its choices (batch sizes, when to kill). What the kill interrupts
//! is up to the scheduler, so a replay is the same test, not the same crash.

mod support;

use std::collections::{HashMap, HashSet};
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
// The child binds the port; `start` tries another if someone took it in between.
use support::process::free_port;
use support::{
    config_text_on, element_text, incoming_call_envelope, say_name_envelope, unescape, SEED_AUTH,
    SOAP_PATH,
};

/// `api.token` of [`config_text_on`].
const BEARER: &str = "Bearer api-token-for-tests";
/// Counterparties in [`support::DIRECTORY`], the directory file.
const FILE_RECORDS: usize = 3;
const CYCLES: u32 = 3;
const PUSH_TASKS: u32 = 4;
const CALL_TASKS: u32 = 4;
/// Records in one push, at most.
const MAX_BATCH: usize = 12;
/// Calls sent under one operator key, at most: `GET /api/v1/calls` answers
/// at most 1000 rows, and every row of a key must be seen.
const MAX_CALLS_PER_KEY: u32 = 990;
/// The kill comes this long after the traffic starts (drawn from the seed)...
const KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 300..=800;
/// ...and not before this many pushes and calls were acknowledged.
const MIN_ACKED_BEFORE_KILL: usize = 5;
/// Any one request, start-up, and the wait for acknowledgements.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const START_TIMEOUT: Duration = Duration::from_secs(15);
const TRAFFIC_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent requests while checking.
const CHECKERS: usize = 8;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(5))
        .build_http()
}

struct Answer {
    status: u16,
    body: String,
}

/// One request; any failure to get a whole answer (refused, reset, cut
/// short, slower than [`REQUEST_TIMEOUT`]) is an `Err`.
async fn send(
    client: &HttpClient,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Answer, String> {
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("{e:?}"))?
            .to_bytes();
        Ok(Answer {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))?
}

async fn get(client: &HttpClient, addr: SocketAddr, path: &str) -> Result<Answer, String> {
    send(
        client,
        addr,
        "GET",
        path,
        &[("Authorization", BEARER)],
        Vec::new(),
    )
    .await
}

async fn soap(client: &HttpClient, addr: SocketAddr, envelope: String) -> Result<Answer, String> {
    let headers = [
        ("Content-Type", "text/xml; charset=utf-8"),
        ("Authorization", SEED_AUTH),
    ];
    send(
        client,
        addr,
        "POST",
        SOAP_PATH,
        &headers,
        envelope.into_bytes(),
    )
    .await
}

fn json(answer: &Answer) -> serde_json::Value {
    serde_json::from_str(&answer.body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", answer.status, answer.body))
}

/// The gateway binary running as a child process. Dropping it kills it
/// (SIGKILL) and reaps it, so a failing test leaves no process behind.
struct Running {
    child: Child,
    addr: SocketAddr,
    /// Its stderr: the log, one JSON object per line.
    log: PathBuf,
}

impl Running {
    /// `kill -9`, and waits until the process is gone.
    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL the gateway");
        let status = self.child.wait().expect("reap the gateway");
        assert!(!status.success(), "the gateway exited on its own: {status}");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Operator key `task`'s calls use in `cycle`: one key per (cycle, task), so
/// that `GET /api/v1/calls?key=` returns each one's rows whole.
fn call_key(cycle: u32, task: u32) -> String {
    format!("crash-key-c{cycle}-t{task}")
}

/// Appended to [`config_text_on`]: JSON logs, and one operator per call key.
fn config_extra() -> String {
    let mut extra = String::from("[log]\nformat = \"json\"\nlevel = \"info\"\n");
    for cycle in 1..=CYCLES {
        for task in 0..CALL_TASKS {
            extra.push_str(&format!(
                "[[operator]]\nkey = \"{}\"\ntoken = \"crash-token-c{cycle}-t{task}\"\nname = \"Оператор {cycle}-{task}\"\n",
                call_key(cycle, task)
            ));
        }
    }
    extra
}

/// Starts the gateway over `dir` (its config, directory file and store) and
/// waits for `/readyz` to answer 200. `run` names the log files.
async fn start(dir: &Path, run: &str, client: &HttpClient) -> Running {
    for attempt in 0..5 {
        let port = free_port();
        let text = config_text_on(dir, &format!("127.0.0.1:{port}"), &config_extra());
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        let config = dir.join("gateway.toml");
        fs::write(&config, text).expect("write the config");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            fs::set_permissions(&config, fs::Permissions::from_mode(0o600)).expect("chmod 600");
        }
        let log = dir.join(format!("{run}.{attempt}.log"));
        let out = dir.join(format!("{run}.{attempt}.out"));
        let child = Command::new(env!("CARGO_BIN_EXE_cti-gateway"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out).expect("stdout file"))
            .stderr(fs::File::create(&log).expect("stderr file"))
            .spawn()
            .expect("start the gateway binary");
        let mut running = Running {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            log,
        };
        let started = Instant::now();
        let deadline = started + START_TIMEOUT;
        loop {
            if let Some(status) = running.child.try_wait().expect("child status") {
                let log = fs::read_to_string(&running.log).unwrap_or_default();
                if log.contains("cannot listen") {
                    eprintln!("{run}: port {port} was taken; trying another");
                    break;
                }
                panic!("{run}: the gateway exited during start-up ({status}); its log:\n{log}");
            }
            // The line the binary prints once it is up, so that /readyz is
            // asked of this child and not of whoever else holds the port.
            let printed = fs::read_to_string(&out).unwrap_or_default();
            if printed.contains(&format!("listening on http://127.0.0.1:{port}/")) {
                if let Ok(ready) = get(client, running.addr, "/readyz").await {
                    if ready.status == 200 {
                        println!(
                            "{run}: ready on port {port} after {} ms",
                            started.elapsed().as_millis()
                        );
                        return running;
                    }
                }
            }
            assert!(
                Instant::now() < deadline,
                "{run}: /readyz did not answer 200 within {START_TIMEOUT:?}; log:\n{}",
                fs::read_to_string(&running.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(running);
    }
    panic!("{run}: could not find a free port in 5 attempts");
}

#[derive(Debug, Clone)]
struct Record {
    id: String,
    name: String,
    phone: String,
}

/// What one push task saw: the batches answered 200, those that got no
/// answer (in flight at the kill), and any other answer.
#[derive(Default)]
struct PushOutcome {
    acked: Vec<Vec<Record>>,
    unanswered: Vec<Vec<Record>>,
    refused: Vec<String>,
}

#[derive(Default)]
struct CallOutcome {
    key: String,
    acked: Vec<String>,
    unanswered: Vec<String>,
    refused: Vec<String>,
}

/// Pushes batches of new counterparties, one request after the other, until
/// `stop`. Ids and phones are unique across the whole test.
async fn push_task(
    client: HttpClient,
    addr: SocketAddr,
    cycle: u32,
    task: u32,
    seed: u64,
    stop: Arc<AtomicBool>,
    acked_count: Arc<AtomicUsize>,
) -> PushOutcome {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut outcome = PushOutcome::default();
    let mut seq = 0u32;
    while !stop.load(Ordering::Acquire) && seq < 99_000 {
        let size = rng.random_range(1..=MAX_BATCH);
        let batch: Vec<Record> = (0..size)
            .map(|_| {
                seq += 1;
                Record {
                    id: format!("crash-{cycle}-{task}-{seq}"),
                    name: format!("Клиент «{cycle}-{task}-{seq}» & Ко"),
                    phone: format!("8917{cycle}{task}{seq:05}"),
                }
            })
            .collect();
        let body: Vec<serde_json::Value> = batch
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id, "name": r.name, "category": 1,
                    "manager_phone": "512", "phones": [r.phone],
                })
            })
            .collect();
        let answer = send(
            &client,
            addr,
            "POST",
            "/api/v1/counterparties",
            &[
                ("Content-Type", "application/json"),
                ("Authorization", BEARER),
            ],
            serde_json::Value::from(body).to_string().into_bytes(),
        )
        .await;
        match answer {
            Ok(a) if a.status == 200 => {
                outcome.acked.push(batch);
                acked_count.fetch_add(1, Ordering::AcqRel);
            }
            Ok(a) => {
                outcome
                    .refused
                    .push(format!("push of {}: {} {}", batch[0].id, a.status, a.body));
                outcome.unanswered.push(batch);
            }
            Err(_) => outcome.unanswered.push(batch),
        }
    }
    outcome
}

/// Sends IncomingCalls from new numbers under this task's key until `stop`.
async fn call_task(
    client: HttpClient,
    addr: SocketAddr,
    cycle: u32,
    task: u32,
    stop: Arc<AtomicBool>,
    acked_count: Arc<AtomicUsize>,
) -> CallOutcome {
    let key = call_key(cycle, task);
    let mut outcome = CallOutcome {
        key: key.clone(),
        ..CallOutcome::default()
    };
    let mut seq = 0u32;
    while !stop.load(Ordering::Acquire) && seq < MAX_CALLS_PER_KEY {
        seq += 1;
        let number = format!("8918{cycle}{task}{seq:05}");
        match soap(&client, addr, incoming_call_envelope(&number, &key)).await {
            Ok(a) if a.status == 200 && element_text(&a.body, "m:return") == Some("1") => {
                outcome.acked.push(number);
                acked_count.fetch_add(1, Ordering::AcqRel);
            }
            Ok(a) => {
                outcome
                    .refused
                    .push(format!("IncomingCall {number}: {} {}", a.status, a.body));
                outcome.unanswered.push(number);
            }
            Err(_) => outcome.unanswered.push(number),
        }
    }
    outcome
}

/// Everything sent so far, cycle after cycle.
#[derive(Default)]
struct Ledger {
    acked_batches: Vec<Vec<Record>>,
    unanswered_batches: Vec<Vec<Record>>,
    /// Per key: numbers answered `1`, and numbers sent without an answer.
    acked_calls: HashMap<String, Vec<String>>,
    unanswered_calls: HashMap<String, Vec<String>>,
    refused: Vec<String>,
    /// Requests the kills cut off in flight.
    cut_off: usize,
}

impl Ledger {
    fn acked_records(&self) -> usize {
        self.acked_batches.iter().map(Vec::len).sum()
    }

    fn acked_call_count(&self) -> usize {
        self.acked_calls.values().map(Vec::len).sum()
    }
}

/// One cycle's traffic against `gw`, killed with SIGKILL part-way.
async fn drive_and_kill(
    gw: &mut Running,
    dir: &Path,
    cycle: u32,
    rng: &mut StdRng,
    client: &HttpClient,
    ledger: &mut Ledger,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let pushes_acked = Arc::new(AtomicUsize::new(0));
    let calls_acked = Arc::new(AtomicUsize::new(0));
    let pushers: Vec<_> = (0..PUSH_TASKS)
        .map(|task| {
            tokio::spawn(push_task(
                client.clone(),
                gw.addr,
                cycle,
                task,
                rng.random(),
                Arc::clone(&stop),
                Arc::clone(&pushes_acked),
            ))
        })
        .collect();
    let callers: Vec<_> = (0..CALL_TASKS)
        .map(|task| {
            tokio::spawn(call_task(
                client.clone(),
                gw.addr,
                cycle,
                task,
                Arc::clone(&stop),
                Arc::clone(&calls_acked),
            ))
        })
        .collect();

    let kill_after = Duration::from_millis(rng.random_range(KILL_AFTER_MS));
    let started = Instant::now();
    loop {
        let elapsed = started.elapsed();
        if elapsed >= kill_after
            && pushes_acked.load(Ordering::Acquire) >= MIN_ACKED_BEFORE_KILL
            && calls_acked.load(Ordering::Acquire) >= MIN_ACKED_BEFORE_KILL
        {
            break;
        }
        if elapsed >= TRAFFIC_TIMEOUT {
            stop.store(true, Ordering::Release);
            panic!(
                "cycle {cycle}: {} pushes and {} calls acknowledged in {TRAFFIC_TIMEOUT:?}; log:\n{}",
                pushes_acked.load(Ordering::Acquire),
                calls_acked.load(Ordering::Acquire),
                fs::read_to_string(&gw.log).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let wal = fs::metadata(dir.join("store.sqlite-wal")).map_or(0, |m| m.len());
    // No request starts after this: every request without an answer was
    // in flight when the SIGKILL came.
    stop.store(true, Ordering::Release);
    gw.kill9();
    let killed_at = started.elapsed();

    let (mut acked_pushes, mut unanswered_pushes, mut acked_calls, mut unanswered_calls) =
        (0, 0, 0, 0);
    for task in pushers {
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT * 2, task)
            .await
            .expect("a push task ends after the kill")
            .expect("push task");
        acked_pushes += outcome.acked.len();
        unanswered_pushes += outcome.unanswered.len();
        ledger.acked_batches.extend(outcome.acked);
        ledger.unanswered_batches.extend(outcome.unanswered);
        ledger.refused.extend(outcome.refused);
    }
    for task in callers {
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT * 2, task)
            .await
            .expect("a call task ends after the kill")
            .expect("call task");
        acked_calls += outcome.acked.len();
        unanswered_calls += outcome.unanswered.len();
        ledger
            .acked_calls
            .entry(outcome.key.clone())
            .or_default()
            .extend(outcome.acked);
        ledger
            .unanswered_calls
            .entry(outcome.key)
            .or_default()
            .extend(outcome.unanswered);
        ledger.refused.extend(outcome.refused);
    }
    ledger.cut_off += unanswered_pushes + unanswered_calls;
    println!(
        "cycle {cycle}: killed after {} ms (WAL {} KiB); pushes: {acked_pushes} acknowledged, \
         {unanswered_pushes} cut off in flight; calls: {acked_calls} acknowledged, \
         {unanswered_calls} cut off in flight",
        killed_at.as_millis(),
        wal / 1024
    );
    assert!(
        ledger.refused.is_empty(),
        "cycle {cycle}: the gateway refused requests before the kill:\n{}",
        ledger.refused.join("\n")
    );
}

/// Copies the killed gateway's store (database and WAL, as the crash left
/// them) aside and runs SQLite's integrity check on the copy; the original
/// stays untouched for the restart to recover.
fn check_store_copy(dir: &Path, cycle: u32) {
    let copy = dir.join(format!("copy-{cycle}"));
    fs::create_dir_all(&copy).expect("copy dir");
    for name in ["store.sqlite", "store.sqlite-wal"] {
        let from = dir.join(name);
        if from.exists() {
            fs::copy(&from, copy.join(name)).expect("copy the store");
        }
    }
    let conn = rusqlite::Connection::open(copy.join("store.sqlite")).expect("open the copy");
    let integrity: Vec<String> = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .expect("integrity_check runs");
    assert_eq!(
        integrity,
        ["ok"],
        "cycle {cycle}: the store left by the kill fails SQLite's integrity check"
    );
}

/// What the restarted gateway answers for `phone`: the SayName title.
async fn title(client: &HttpClient, addr: SocketAddr, phone: &str) -> String {
    let answer = soap(client, addr, say_name_envelope(phone))
        .await
        .unwrap_or_else(|e| panic!("SayName {phone}: {e}"));
    assert_eq!(answer.status, 200, "SayName {phone}: {}", answer.body);
    let data = unescape(
        element_text(&answer.body, "m:return")
            .unwrap_or_else(|| panic!("no m:return: {}", answer.body)),
    );
    unescape(element_text(&data, "title").unwrap_or_default())
}

/// Titles of many phones, [`CHECKERS`] requests at a time.
async fn titles(client: &HttpClient, addr: SocketAddr, phones: Vec<String>) -> Vec<String> {
    let chunk = phones.len().div_ceil(CHECKERS).max(1);
    let tasks: Vec<_> = phones
        .chunks(chunk)
        .map(|part| {
            let (client, part) = (client.clone(), part.to_vec());
            tokio::spawn(async move {
                let mut out = Vec::with_capacity(part.len());
                for phone in &part {
                    out.push(title(&client, addr, phone).await);
                }
                out
            })
        })
        .collect();
    let mut out = Vec::with_capacity(phones.len());
    for task in tasks {
        out.extend(task.await.expect("SayName checker"));
    }
    out
}

/// Every acknowledged push answers SayName with its name; every push that
/// got no answer is there whole or not at all; `/readyz` counts exactly that.
async fn check_pushes(client: &HttpClient, addr: SocketAddr, ledger: &Ledger, cycle: u32) {
    let acked: Vec<&Record> = ledger.acked_batches.iter().flatten().collect();
    let got = titles(
        client,
        addr,
        acked.iter().map(|r| r.phone.clone()).collect(),
    )
    .await;
    let lost: Vec<String> = acked
        .iter()
        .zip(&got)
        .filter(|(r, title)| **title != r.name)
        .map(|(r, title)| format!("{} ({}): answered {title:?}", r.id, r.phone))
        .collect();
    assert!(
        lost.is_empty(),
        "after kill {cycle}: {} of {} acknowledged pushed counterparties are lost, e.g.:\n{}",
        lost.len(),
        acked.len(),
        lost[..lost.len().min(20)].join("\n")
    );

    let mut present_unanswered = 0;
    for batch in &ledger.unanswered_batches {
        let got = titles(
            client,
            addr,
            batch.iter().map(|r| r.phone.clone()).collect(),
        )
        .await;
        let present = batch
            .iter()
            .zip(&got)
            .filter(|(r, t)| **t == r.name)
            .count();
        let strangers: Vec<&String> = got.iter().filter(|t| !t.is_empty()).collect();
        assert!(
            present == 0 || present == batch.len(),
            "after kill {cycle}: a push that was not answered is there in part ({present} of {}): \
             a push is all or nothing; {batch:?} answered {got:?}",
            batch.len()
        );
        assert_eq!(
            strangers.len(),
            present,
            "after kill {cycle}: unexpected names for {batch:?}: {got:?}"
        );
        present_unanswered += present;
    }

    let ready = get(client, addr, "/readyz").await.expect("/readyz");
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(
        json(&ready)["counterparties"].as_u64(),
        Some((FILE_RECORDS + acked.len() + present_unanswered) as u64),
        "after kill {cycle}: the directory holds the file's {FILE_RECORDS}, the {} acknowledged \
         and the {present_unanswered} unanswered-but-committed records, and nothing else: {}",
        acked.len(),
        ready.body
    );
    println!(
        "after kill {cycle}: all {} acknowledged pushed records answer; of pushes cut off in \
         flight so far, {present_unanswered} records were committed anyway",
        acked.len()
    );
}

/// Every acknowledged IncomingCall is in the journal once; nothing is there
/// that was not sent.
async fn check_calls(client: &HttpClient, addr: SocketAddr, ledger: &Ledger, cycle: u32) {
    let mut committed_unanswered = 0;
    for (key, acked) in &ledger.acked_calls {
        let unanswered: HashSet<&String> = ledger
            .unanswered_calls
            .get(key)
            .into_iter()
            .flatten()
            .collect();
        let acked_set: HashSet<&String> = acked.iter().collect();
        let answer = get(client, addr, &format!("/api/v1/calls?key={key}&limit=1000"))
            .await
            .expect("GET /api/v1/calls");
        assert_eq!(answer.status, 200, "{}", answer.body);
        let rows = json(&answer)["calls"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("no calls array: {}", answer.body));
        assert!(
            rows.len() < 1000,
            "{key}: the journal holds more rows than one page shows"
        );
        let mut seen = HashSet::new();
        for row in &rows {
            let raw = row["raw_number"].as_str().expect("raw_number").to_owned();
            assert_eq!(row["key"].as_str(), Some(key.as_str()), "{row}");
            assert_eq!(
                row["number"].as_str(),
                Some(format!("+7{}", &raw[1..]).as_str()),
                "{row}"
            );
            assert!(
                acked_set.contains(&raw) || unanswered.contains(&raw),
                "after kill {cycle}: {key}: a call that was never sent is in the journal: {row}"
            );
            assert!(
                seen.insert(raw),
                "after kill {cycle}: {key}: a call is in the journal twice: {row}"
            );
        }
        let lost: Vec<&String> = acked.iter().filter(|n| !seen.contains(*n)).collect();
        assert!(
            lost.is_empty(),
            "after kill {cycle}: {key}: {} of {} acknowledged IncomingCalls are not in the journal: {lost:?}",
            lost.len(),
            acked.len()
        );
        committed_unanswered += seen.len() - acked.len();
    }
    println!(
        "after kill {cycle}: all {} acknowledged calls are journaled; of calls cut off in \
         flight so far, {committed_unanswered} were committed anyway",
        ledger.acked_call_count()
    );
}

/// The restarted gateway's log: it opened the store and loaded the
/// snapshot, and said nothing of an error, a corrupt or malformed file, or a
/// snapshot that loaded incomplete.
fn check_restart_log(log: &Path, cycle: u32) {
    let text = fs::read_to_string(log).expect("read the log");
    let mut store_opened = false;
    let mut snapshot_loaded = false;
    let mut bad = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let event: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"));
        let message = event["message"].as_str().unwrap_or_default();
        let level = event["level"].as_str().unwrap_or_default();
        store_opened |= message == "store opened";
        snapshot_loaded |= message == "store: snapshot loaded";
        let lower = line.to_lowercase();
        if level == "ERROR"
            || lower.contains("corrupt")
            || lower.contains("malformed")
            || (level == "WARN" && (lower.contains("store") || lower.contains("snapshot")))
        {
            bad.push(line);
        }
    }
    assert!(
        store_opened && snapshot_loaded,
        "after kill {cycle}: the restart did not log opening the store and loading the snapshot:\n{text}"
    );
    assert!(
        bad.is_empty(),
        "after kill {cycle}: the restart logged trouble:\n{}",
        bad.join("\n")
    );
}

/// Every line of a killed gateway's log: no errors while it served.
fn check_serving_log(log: &Path, run: &str) {
    let text = fs::read_to_string(log).expect("read the log");
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(r#""level":"ERROR""#))
        .collect();
    assert!(
        errors.is_empty(),
        "{run}: errors logged while serving:\n{}",
        errors.join("\n")
    );
}

/// The test's folder (config, directory file, store, logs); kept when the
/// test fails, or always with `CRASH_RECOVERY_KEEP=1`, and its path printed.
struct Workdir(Option<tempfile::TempDir>);

impl Drop for Workdir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("CRASH_RECOVERY_KEEP").is_some() {
            if let Some(dir) = self.0.take() {
                eprintln!(
                    "crash_recovery: logs and store kept in {}",
                    dir.keep().display()
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_push_and_call_survives_kill_9_and_the_store_reopens_cleanly() {
    let seed = std::env::var("CRASH_RECOVERY_SEED")
        .ok()
        .map(|s| s.parse().expect("CRASH_RECOVERY_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos() as u64
        });
    println!("crash_recovery seed {seed} (replay its choices with CRASH_RECOVERY_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let test_started = Instant::now();

    let workdir = Workdir(Some(tempfile::tempdir().expect("temp dir")));
    let dir = workdir.0.as_ref().expect("temp dir");
    fs::write(dir.path().join("counterparties.jsonl"), support::DIRECTORY).expect("directory");
    let client = http_client();
    let mut ledger = Ledger::default();
    let mut gw = start(dir.path(), "start-0", &client).await;
    for cycle in 1..=CYCLES {
        drive_and_kill(&mut gw, dir.path(), cycle, &mut rng, &client, &mut ledger).await;
        check_serving_log(&gw.log, &format!("run {}", cycle - 1));
        check_store_copy(dir.path(), cycle);
        gw = start(dir.path(), &format!("restart-{cycle}"), &client).await;
        let checking = Instant::now();
        check_restart_log(&gw.log, cycle);
        check_pushes(&client, gw.addr, &ledger, cycle).await;
        check_calls(&client, gw.addr, &ledger, cycle).await;
        println!(
            "after kill {cycle}: checked in {} ms ({} pushed records, {} calls acknowledged so far)",
            checking.elapsed().as_millis(),
            ledger.acked_records(),
            ledger.acked_call_count()
        );
    }
    drop(gw);
    assert!(
        ledger.cut_off > 0,
        "no kill cut off a request in flight: the test did not crash the gateway mid-stream"
    );
    println!("done in {} ms", test_started.elapsed().as_millis());
}
