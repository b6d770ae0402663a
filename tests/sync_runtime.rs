//! The sync runtime over a real gateway: a worker sends the outbox to a
//! CRM on loopback. Until the shared mock CRM and test system of
//! `tests/support` (the harness's) merge, this file has its own small CRM
//! ([`crm`]: batch upsert by external id with an outcome per row, lookup by
//! external id, pause, per-record failures and validation errors, block)
//! and a `System` speaking HTTP to it ([`CrmSystem`]).

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cti_gateway::config::Config;
use cti_gateway::store::{OutboxQuery, OutboxRow, OutboxState};
use cti_gateway::sync::inbound::Inbound;
use cti_gateway::sync::system::{
    Outcome, OutgoingRow, Page, PublishedLimit, Remote, RemoteFuture, System, Webhook, WebhookError,
};
use cti_gateway::sync::SystemSpec;
use cti_gateway::Gateway;
use serde_json::{json, Value};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SYSTEM: &str = "testcrm";
const PATH: &str = "/api/v1/counterparties";
const BEARER: &str = "Authorization: Bearer api-token-for-tests";
const JSON: &str = "Content-Type: application/json";

/// Three records; each sent to the CRM at start.
const FILE: &str = concat!(
    r#"{"id":"k1","name":"Альфа","phones":["84951110001"]}"#,
    "\n",
    r#"{"id":"k2","name":"Бета","phones":["84951110002"]}"#,
    "\n",
    r#"{"id":"k3","name":"Гамма","phones":["84951110003"]}"#,
    "\n",
);

/// The CRM on loopback.
mod crm {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::{Request, Response, StatusCode};
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;
    use tokio::sync::watch;

    /// One record the CRM holds.
    #[derive(Debug, Clone)]
    pub struct Record {
        #[allow(dead_code)] // what a real CRM keeps; shown in failure output
        pub external_id: String,
        pub body: Value,
        pub removed: bool,
        pub version: u64,
    }

    #[derive(Default)]
    pub struct State {
        pub records: HashMap<String, Record>,
        pub by_external: HashMap<String, String>,
        pub creates: HashMap<String, u32>,
        /// Every row write (external id, op, body), in order of arrival.
        pub writes: Vec<(String, String, Value)>,
        /// Rows of these external ids fail (a 5xx of the row).
        pub failing: HashMap<String, u32>,
        /// Rows of these external ids are refused with this message.
        pub invalid: HashMap<String, String>,
        /// Every request answers 403 "blocked".
        pub blocked: bool,
        /// Every request answers 503 (an outage).
        pub down: bool,
        /// Requests now carrying a row of each external id: > 1 breaks the
        /// order per record.
        pub in_flight: HashMap<String, u32>,
        pub overlaps: u32,
        pub requests: u32,
        /// The next batch is written, then its answer held until `release`
        /// (a crash between the CRM's accept and the gateway's commit).
        pub hold_once: bool,
        pub held: u32,
        pub release: bool,
        /// Lookups that found a record (a create the gateway adopts).
        pub found: u32,
        /// The next batch answers 429 with this `Retry-After` (seconds).
        pub limit_once: Option<u64>,
        /// When each 429 was answered.
        pub limited_at: Vec<std::time::Instant>,
        /// When each request arrived.
        pub arrived: Vec<std::time::Instant>,
        next_id: u64,
    }

    pub struct Crm {
        pub addr: SocketAddr,
        pub state: Arc<Mutex<State>>,
        paused: watch::Sender<bool>,
        server: tokio::task::JoinHandle<()>,
    }

    impl Drop for Crm {
        fn drop(&mut self) {
            self.server.abort();
        }
    }

    impl Crm {
        pub async fn start() -> Crm {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            let state = Arc::new(Mutex::new(State::default()));
            let (paused, _) = watch::channel(false);
            let server = tokio::spawn(serve(listener, Arc::clone(&state), paused.clone()));
            Crm {
                addr,
                state,
                paused,
                server,
            }
        }

        pub fn lock(&self) -> std::sync::MutexGuard<'_, State> {
            self.state.lock().expect("crm state")
        }

        /// Holds every request until [`Crm::resume`].
        pub fn pause(&self) {
            self.paused.send_replace(true);
        }

        pub fn resume(&self) {
            self.paused.send_replace(false);
        }

        /// A record the CRM holds already (created before a crash, say).
        pub fn seed(&self, external_id: &str, body: Value) -> String {
            let mut state = self.lock();
            state.next_id += 1;
            let id = format!("r{}", state.next_id);
            state.records.insert(
                id.clone(),
                Record {
                    external_id: external_id.into(),
                    body,
                    removed: false,
                    version: 1,
                },
            );
            state.by_external.insert(external_id.into(), id.clone());
            id
        }

        pub fn writes_of(&self, external_id: &str) -> Vec<Value> {
            self.lock()
                .writes
                .iter()
                .filter(|(e, _, _)| e == external_id)
                .map(|(_, _, b)| b.clone())
                .collect()
        }
    }

    async fn serve(listener: TcpListener, state: Arc<Mutex<State>>, paused: watch::Sender<bool>) {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = Arc::clone(&state);
            let paused = paused.subscribe();
            connections.spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    handle(Arc::clone(&state), paused.clone(), req)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    async fn handle(
        state: Arc<Mutex<State>>,
        mut paused: watch::Receiver<bool>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
        let path = req.uri().path().to_owned();
        let query = req.uri().query().unwrap_or_default().to_owned();
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let externals: Vec<String> = match (&*path, &body) {
            ("/batch", Value::Array(rows)) => rows
                .iter()
                .filter_map(|r| r["external_id"].as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        {
            let mut s = state.lock().expect("crm state");
            s.requests += 1;
            s.arrived.push(std::time::Instant::now());
            for e in &externals {
                let n = s.in_flight.entry(e.clone()).or_default();
                *n += 1;
                if *n > 1 {
                    s.overlaps += 1;
                }
            }
        }
        let _ = paused.wait_for(|p| !*p).await;
        // A little time in flight, so that overlaps would show.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let mut held = false;
        let answer = {
            let mut s = state.lock().expect("crm state");
            respond(&mut s, &path, &query, &body, &externals, &mut held)
        };
        while held && !state.lock().expect("crm state").release {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(answer)
    }

    fn respond(
        s: &mut State,
        path: &str,
        query: &str,
        body: &Value,
        externals: &[String],
        held: &mut bool,
    ) -> Response<Full<Bytes>> {
        for e in externals {
            if let Some(n) = s.in_flight.get_mut(e) {
                *n -= 1;
            }
        }
        if s.blocked {
            return answer(StatusCode::FORBIDDEN, json!({"error": "account blocked"}));
        }
        if s.down {
            return answer(StatusCode::SERVICE_UNAVAILABLE, json!({"error": "down"}));
        }
        if path == "/batch" {
            if let Some(seconds) = s.limit_once.take() {
                s.limited_at.push(std::time::Instant::now());
                return answer(
                    StatusCode::TOO_MANY_REQUESTS,
                    json!({"error": "limit", "retry_after": seconds}),
                );
            }
        }
        match path {
            "/find" => {
                let external = query.strip_prefix("external_id=").unwrap_or_default();
                match s.by_external.get(external) {
                    Some(id) => {
                        let id = id.clone();
                        s.found += 1;
                        let version = s.records[&id].version;
                        answer(StatusCode::OK, json!({"id": id, "version": version}))
                    }
                    None => answer(StatusCode::NOT_FOUND, json!({"error": "not found"})),
                }
            }
            "/batch" => {
                let rows = body.as_array().cloned().unwrap_or_default();
                let results: Vec<Value> = rows.iter().map(|row| write(s, row)).collect();
                if std::mem::take(&mut s.hold_once) {
                    s.held += 1;
                    *held = true;
                }
                answer(StatusCode::OK, Value::Array(results))
            }
            _ => answer(StatusCode::NOT_FOUND, json!({"error": "no such endpoint"})),
        }
    }

    /// One row of a batch.
    fn write(s: &mut State, row: &Value) -> Value {
        let external = row["external_id"].as_str().unwrap_or_default().to_owned();
        if let Some(left) = s.failing.get_mut(&external) {
            if *left > 0 {
                *left -= 1;
                return json!({"status": "error", "error": format!("500 for {external}")});
            }
        }
        if let Some(message) = s.invalid.get(&external) {
            return json!({"status": "invalid", "message": message});
        }
        let op = row["op"].as_str().unwrap_or_default().to_owned();
        let body: Value =
            serde_json::from_str(row["body"].as_str().unwrap_or("null")).unwrap_or(Value::Null);
        s.writes.push((external.clone(), op.clone(), body.clone()));
        let id = match row["remote_id"].as_str() {
            Some(id) if s.records.contains_key(id) => id.to_owned(),
            Some(_) => return json!({"status": "invalid", "message": "no such record"}),
            None => {
                s.next_id += 1;
                let id = format!("r{}", s.next_id);
                *s.creates.entry(external.clone()).or_default() += 1;
                s.by_external.insert(external.clone(), id.clone());
                s.records.insert(
                    id.clone(),
                    Record {
                        external_id: external.clone(),
                        body: Value::Null,
                        removed: false,
                        version: 0,
                    },
                );
                id
            }
        };
        let record = s.records.get_mut(&id).expect("record");
        record.version += 1;
        if op == "remove" {
            record.removed = true;
        } else {
            record.body = body;
            record.removed = false;
        }
        json!({"status": "ok", "id": id, "version": record.version})
    }

    fn answer(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        response
    }
}

/// A `System` speaking HTTP to [`crm::Crm`].
struct CrmSystem {
    spec: SystemSpec,
    addr: SocketAddr,
    batch: usize,
}

impl CrmSystem {
    /// A plain HTTP/1.1 exchange on a connection of its own: status and body.
    async fn call(&self, method: &str, target: &str, body: &str) -> Result<(u16, Value), String> {
        let mut stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: crm\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut answer = Vec::new();
        stream
            .read_to_end(&mut answer)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&answer);
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or("no status line")?;
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        // Chunked or not: the JSON is between the first { or [ and the end.
        let start = body.find(['{', '[']).unwrap_or(body.len());
        let end = body.rfind(['}', ']']).map_or(start, |e| e + 1);
        let json = serde_json::from_str(&body[start..end.max(start)]).unwrap_or(Value::Null);
        Ok((status, json))
    }

    async fn send_rows(&self, rows: &[OutgoingRow]) -> Vec<Outcome> {
        let batch: Vec<Value> = rows
            .iter()
            .map(|r| {
                json!({
                    "external_id": r.record_key,
                    "op": r.op.as_str(),
                    "body": r.body,
                    "remote_id": r.remote_id,
                })
            })
            .collect();
        let every = |o: Outcome| rows.iter().map(|_| o.clone()).collect();
        match self
            .call("POST", "/batch", &Value::Array(batch).to_string())
            .await
        {
            Err(e) => every(Outcome::Retry(e)),
            Ok((403, _)) => every(Outcome::Blocked("403: account blocked".into())),
            Ok((429, answer)) => every(Outcome::Limited {
                retry_after: answer["retry_after"].as_u64().map(Duration::from_secs),
            }),
            Ok((200, Value::Array(results))) if results.len() == rows.len() => results
                .iter()
                .map(|r| match r["status"].as_str() {
                    Some("ok") => Outcome::Confirmed(Remote {
                        remote_id: r["id"].as_str().unwrap_or_default().to_owned(),
                        remote_version: r["version"].as_u64().map(|v| v.to_string()),
                    }),
                    Some("invalid") => {
                        Outcome::Permanent(r["message"].as_str().unwrap_or_default().to_owned())
                    }
                    _ => Outcome::Retry(r["error"].as_str().unwrap_or("error").to_owned()),
                })
                .collect(),
            Ok((status, _)) => every(Outcome::Retry(format!("status {status}"))),
        }
    }

    async fn find(&self, row: &OutgoingRow) -> Result<Option<Remote>, Outcome> {
        match self
            .call("GET", &format!("/find?external_id={}", row.record_key), "")
            .await
        {
            Err(e) => Err(Outcome::Retry(e)),
            Ok((403, _)) => Err(Outcome::Blocked("403: account blocked".into())),
            Ok((404, _)) => Ok(None),
            Ok((200, found)) => Ok(Some(Remote {
                remote_id: found["id"].as_str().unwrap_or_default().to_owned(),
                remote_version: found["version"].as_u64().map(|v| v.to_string()),
            })),
            Ok((status, _)) => Err(Outcome::Retry(format!("status {status}"))),
        }
    }
}

impl System for CrmSystem {
    fn spec(&self) -> &SystemSpec {
        &self.spec
    }

    fn published_limit(&self) -> PublishedLimit {
        PublishedLimit::Bucket {
            burst: 1_000,
            per_second: 10_000.0,
        }
    }

    fn batch_size(&self) -> usize {
        self.batch
    }

    fn send<'a>(&'a self, rows: &'a [OutgoingRow]) -> RemoteFuture<'a, Vec<Outcome>> {
        Box::pin(self.send_rows(rows))
    }

    fn find_existing<'a>(
        &'a self,
        row: &'a OutgoingRow,
    ) -> RemoteFuture<'a, Result<Option<Remote>, Outcome>> {
        Box::pin(self.find(row))
    }

    fn authenticate(&self, _hook: &Webhook<'_>) -> bool {
        false
    }

    fn parse(&self, _hook: &Webhook<'_>) -> Result<Vec<Inbound>, WebhookError> {
        Err(WebhookError {
            what: "no webhooks here".into(),
        })
    }

    fn list<'a>(&'a self, _after: Option<&'a str>) -> RemoteFuture<'a, Result<Page, Outcome>> {
        Box::pin(async { Ok(Page::default()) })
    }
}

const FAST_RETRIES: &str = "retry_first = \"10ms\"\nretry_max = \"100ms\"\n";

async fn start(crm: &crm::Crm, table: &str, batch: usize) -> TestGateway {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), FILE).expect("write directory");
    let path = dir.path().join("gateway.toml");
    let text = config_text(dir.path(), &format!("\n[sync.{SYSTEM}]\n{table}"));
    let config = Config::parse(&text, &path, &|_| None).expect("test config is valid");
    let system = CrmSystem {
        spec: SystemSpec::new(SYSTEM)
            .expect("name")
            .with_fields(&["name", "phones"])
            .expect("fields"),
        addr: crm.addr,
        batch,
    };
    let gateway = Gateway::start_with(config, vec![Arc::new(system) as Arc<dyn System>])
        .await
        .expect("gateway starts");
    let addr = gateway.local_addr();
    TestGateway {
        gateway: Some(gateway),
        addr,
        dir,
    }
}

async fn push(addr: SocketAddr, id: &str, name: &str, phone: &str) {
    let body = format!(r#"[{{"id":"{id}","name":"{name}","phones":["{phone}"]}}]"#);
    let reply = request(addr, "POST", PATH, &[JSON, BEARER], body.as_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
}

async fn outbox(gw: &TestGateway, state: Option<OutboxState>) -> Vec<OutboxRow> {
    gw.gateway()
        .sync_store()
        .expect("sync store")
        .outbox_page(OutboxQuery {
            system: Some(SYSTEM.into()),
            state,
            limit: 1_000,
            ..OutboxQuery::default()
        })
        .await
        .expect("outbox read")
}

/// Polls (async) until `cond` holds, or panics naming `what`.
async fn until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The feed has queued every change so far, and the worker sent them all.
async fn drained(gw: &TestGateway) {
    settled(gw).await;
    until(Duration::from_secs(20), "the outbox drains", || async {
        outbox(gw, Some(OutboxState::Pending)).await.is_empty()
    })
    .await;
}

/// The feed has queued every change so far.
async fn settled(gw: &TestGateway) {
    let feed = gw.gateway().sync_feed().expect("a feed");
    tokio::time::timeout(Duration::from_secs(20), feed.settled())
        .await
        .expect("the feed settles");
}

/// The dead row of record `key`, once there is one (10 s at most).
async fn dead_row(gw: &TestGateway, key: &str) -> OutboxRow {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let dead = outbox(gw, Some(OutboxState::Dead)).await;
        if let Some(row) = dead.into_iter().find(|r| r.record_key == key) {
            return row;
        }
        assert!(tokio::time::Instant::now() < deadline, "{key} never dead");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn remote_id(gw: &TestGateway, id: &str) -> Option<String> {
    gw.gateway()
        .sync_store()
        .expect("sync store")
        .idmap_get(SYSTEM, "company", id)
        .await
        .expect("id-map read")
        .and_then(|row| row.remote_id)
}

#[tokio::test]
async fn records_go_out_in_order_per_record_under_concurrency_four() {
    let crm = crm::Crm::start().await;
    let gw = start(&crm, "concurrency = 4\n", 3).await;
    drained(&gw).await;
    // 20 records, 5 versions each, pushed as fast as the API takes them.
    for version in 1..=5 {
        for n in 0..20 {
            push(
                gw.addr,
                &format!("p{n}"),
                &format!("P{n} v{version}"),
                &format!("8912555{n:04}"),
            )
            .await;
        }
    }
    drained(&gw).await;
    {
        let state = crm.lock();
        assert_eq!(state.overlaps, 0, "two requests carried one record at once");
        for n in 0..20 {
            let external = format!("p{n}");
            let versions: Vec<u32> = state
                .writes
                .iter()
                .filter(|(e, _, _)| *e == external)
                .map(|(_, _, b)| {
                    let name = b["name"].as_str().unwrap_or_default();
                    name.rsplit('v')
                        .next()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                })
                .collect();
            assert!(
                versions.windows(2).all(|w| w[0] < w[1]),
                "{external}: {versions:?}"
            );
            assert_eq!(
                versions.last(),
                Some(&5),
                "{external} ends at its last state"
            );
            assert_eq!(
                state.creates.get(&external),
                Some(&1),
                "{external} created once"
            );
        }
    }
    for n in 0..20 {
        assert!(remote_id(&gw, &format!("p{n}")).await.is_some());
    }
    assert!(
        outbox(&gw, None).await.is_empty(),
        "every row confirmed and deleted"
    );
}

#[tokio::test]
async fn a_hundred_updates_while_the_crm_is_paused_make_one_write_of_the_last_state() {
    let crm = crm::Crm::start().await;
    let gw = start(&crm, "", 10).await;
    drained(&gw).await;
    let before = crm.writes_of("k1").len();
    crm.pause();
    for i in 1..=100 {
        push(gw.addr, "k1", &format!("Альфа {i}"), "84951110001").await;
    }
    // Everything queued (the feed has written the last state).
    until(
        Duration::from_secs(10),
        "the last change queued",
        || async {
            outbox(&gw, Some(OutboxState::Pending))
                .await
                .iter()
                .any(|r| r.body.contains("Альфа 100"))
        },
    )
    .await;
    crm.resume();
    drained(&gw).await;
    let writes = crm.writes_of("k1");
    let after = &writes[before..];
    assert!(
        after.len() <= 2,
        "at most the write in flight when paused and one of the last state: {after:?}"
    );
    assert_eq!(
        after.last().map(|b| b["name"].clone()),
        Some(json!("Альфа 100"))
    );
}

#[tokio::test]
async fn failures_are_retried_at_the_backoff_and_a_record_failing_ten_times_is_dead() {
    let crm = crm::Crm::start().await;
    let gw = start(&crm, FAST_RETRIES, 5).await;
    drained(&gw).await;
    // Three failures, then it goes through.
    crm.lock().failing.insert("k2".into(), 3);
    push(gw.addr, "k2", "Бета 2", "84951110002").await;
    drained(&gw).await;
    assert_eq!(
        crm.writes_of("k2").last().map(|b| b["name"].clone()),
        Some(json!("Бета 2"))
    );
    assert_eq!(crm.lock().failing["k2"], 0, "tried until it passed");

    // Failing for good while the CRM answers others: dead after 10.
    crm.lock().failing.insert("k3".into(), u32::MAX);
    push(gw.addr, "k3", "Гамма 2", "84951110003").await;
    let mut n = 0;
    let dead = loop {
        let dead = outbox(&gw, Some(OutboxState::Dead)).await;
        if let Some(row) = dead.into_iter().find(|r| r.record_key == "k3") {
            break row;
        }
        n += 1;
        assert!(n < 1_500, "k3 never dead");
        // Another record's change, so the system keeps answering.
        push(gw.addr, "k1", &format!("Альфа {n}"), "84951110001").await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(dead.attempts, 10);
    assert!(
        dead.last_error
            .as_deref()
            .unwrap_or_default()
            .contains("500 for k3"),
        "{dead:?}"
    );

    // The admin retry sends it once, now that the CRM takes it.
    crm.lock().failing.remove("k3");
    let writes = crm.writes_of("k3").len();
    let reply = request(
        gw.addr,
        "POST",
        &format!("/api/v1/sync/outbox/{}/retry", dead.id),
        &[BEARER],
        b"",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    drained(&gw).await;
    assert_eq!(crm.writes_of("k3").len(), writes + 1, "sent once");
    assert!(outbox(&gw, None).await.iter().all(|r| r.record_key != "k3"));
}

#[tokio::test]
async fn a_validation_error_is_dead_at_once_with_the_crms_message_and_a_newer_confirmed_row_supersedes_it(
) {
    let crm = crm::Crm::start().await;
    let gw = start(&crm, FAST_RETRIES, 5).await;
    drained(&gw).await;
    crm.lock()
        .invalid
        .insert("k2".into(), "ИНН: неверная контрольная сумма".into());
    push(gw.addr, "k2", "Бета 2", "84951110002").await;
    let dead = dead_row(&gw, "k2").await;
    assert_eq!(dead.attempts, 1, "dead at once");
    assert_eq!(
        dead.last_error.as_deref(),
        Some("ИНН: неверная контрольная сумма")
    );

    // A later change of k2 goes through: retrying the dead one is refused.
    crm.lock().invalid.clear();
    push(gw.addr, "k2", "Бета 3", "84951110002").await;
    drained(&gw).await;
    let reply = request(
        gw.addr,
        "POST",
        &format!("/api/v1/sync/outbox/{}/retry", dead.id),
        &[BEARER],
        b"",
    )
    .await;
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(reply.body.contains("superseded by row"), "{}", reply.body);
}

#[tokio::test]
async fn a_record_the_crm_holds_already_is_adopted_not_created_again() {
    let crm = crm::Crm::start().await;
    // As if the gateway had crashed after the CRM created k1 and before
    // the commit: the CRM has it, the id-map does not.
    let seeded = crm.seed("k1", json!({"name": "Альфа"}));
    let gw = start(&crm, "", 10).await;
    drained(&gw).await;
    {
        let state = crm.lock();
        assert_eq!(state.creates.get("k1"), None, "not created again");
        assert_eq!(state.creates.get("k2"), Some(&1));
    }
    assert_eq!(remote_id(&gw, "k1").await.as_deref(), Some(seeded.as_str()));
    assert_eq!(crm.writes_of("k1").len(), 1, "updated once");
}

#[tokio::test]
async fn a_blocked_crm_gets_probes_only_and_resume_probes_now() {
    let crm = crm::Crm::start().await;
    let gw = start(&crm, "block_probe = \"1h\"\n", 10).await;
    drained(&gw).await;
    crm.lock().blocked = true;
    push(gw.addr, "k1", "Альфа 2", "84951110001").await;
    until(Duration::from_secs(10), "a blocked answer", || async {
        crm.lock().requests > 0 && !outbox(&gw, Some(OutboxState::Pending)).await.is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let requests = crm.lock().requests;
    push(gw.addr, "k2", "Бета 2", "84951110002").await;
    settled(&gw).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(crm.lock().requests, requests, "nothing sent while blocked");
    assert_eq!(
        outbox(&gw, Some(OutboxState::Pending)).await.len(),
        2,
        "changes keep queuing"
    );
    crm.lock().blocked = false;
    let reply = request(
        gw.addr,
        "POST",
        "/api/v1/sync/testcrm/resume",
        &[BEARER],
        b"",
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    drained(&gw).await;
    assert_eq!(
        crm.writes_of("k2").last().map(|b| b["name"].clone()),
        Some(json!("Бета 2"))
    );
    let metrics = get(gw.addr, "/metrics").await.body;
    assert!(
        metrics.contains("cti_sync_requests_total{outcome=\"blocked\",system=\"testcrm\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_limit_answer_pauses_the_system_for_its_retry_after_and_costs_no_attempt() {
    let crm = crm::Crm::start().await;
    let gw = start(&crm, FAST_RETRIES, 10).await;
    drained(&gw).await;
    crm.lock().limit_once = Some(1);
    push(gw.addr, "k1", "Альфа 2", "84951110001").await;
    until(Duration::from_secs(10), "a limit answer", || async {
        !crm.lock().limited_at.is_empty()
    })
    .await;
    let (limited_at, requests) = {
        let state = crm.lock();
        (state.limited_at[0], state.requests)
    };
    push(gw.addr, "k2", "Бета 2", "84951110002").await;
    settled(&gw).await;
    let pending = outbox(&gw, Some(OutboxState::Pending)).await;
    assert!(
        pending.iter().all(|r| r.attempts == 0),
        "attempts unchanged: {pending:?}"
    );
    drained(&gw).await;
    let state = crm.lock();
    assert!(state.requests > requests, "sent after the pause");
    let early: Vec<_> = state
        .arrived
        .iter()
        .filter(|at| {
            **at > limited_at && at.duration_since(limited_at) < Duration::from_millis(900)
        })
        .collect();
    assert!(early.is_empty(), "requests before Retry-After: {early:?}");
    let writes: Vec<_> = state
        .writes
        .iter()
        .map(|(e, _, b)| (e.clone(), b["name"].clone()))
        .collect();
    assert!(
        writes.contains(&("k1".into(), json!("Альфа 2"))),
        "{writes:?}"
    );
    assert!(
        writes.contains(&("k2".into(), json!("Бета 2"))),
        "{writes:?}"
    );
}

#[tokio::test]
async fn an_outage_grows_the_systems_backoff_not_the_rows_attempts() {
    let crm = crm::Crm::start().await;
    let gw = start(&crm, FAST_RETRIES, 1).await;
    drained(&gw).await;
    crm.lock().down = true;
    for (id, name, phone) in [
        ("k1", "Альфа 2", "84951110001"),
        ("k2", "Бета 2", "84951110002"),
        ("k3", "Гамма 2", "84951110003"),
    ] {
        push(gw.addr, id, name, phone).await;
    }
    settled(&gw).await;
    // Many times the row backoff (10-100 ms): each row would be dead by now
    // if the outage counted against it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let requests = crm.lock().requests;
    let pending = outbox(&gw, Some(OutboxState::Pending)).await;
    assert_eq!(pending.len(), 3, "{pending:?}");
    assert!(pending.iter().all(|r| r.attempts <= 1), "{pending:?}");
    assert!(outbox(&gw, Some(OutboxState::Dead)).await.is_empty());
    // One request per system wait, not one per row per row wait.
    assert!(requests < 60, "{requests} requests in 2 s of outage");
    crm.lock().down = false;
    drained(&gw).await;
    assert_eq!(
        crm.writes_of("k3").last().map(|b| b["name"].clone()),
        Some(json!("Гамма 2"))
    );
}

/// Set in the child gateway's environment: `<config file>|<CRM address>`.
const CHILD: &str = "CTI_SYNC_RUNTIME_CHILD";

/// Not a test of its own: the child gateway of
/// [`kill_9_during_a_drain_loses_nothing_and_creates_nothing_twice`], run
/// by it as this binary with [`CHILD`] set; without it, does nothing.
#[tokio::test]
async fn child_gateway() {
    let Ok(spec) = std::env::var(CHILD) else {
        return;
    };
    let (config, crm) = spec.split_once('|').expect("config|crm");
    let config = Config::load(Path::new(config), &|_| None).expect("child config");
    let system = CrmSystem {
        spec: SystemSpec::new(SYSTEM)
            .expect("name")
            .with_fields(&["name", "phones"])
            .expect("fields"),
        addr: crm.parse().expect("crm address"),
        batch: 50,
    };
    let _gateway = Gateway::start_with(config, vec![Arc::new(system) as Arc<dyn System>])
        .await
        .expect("child gateway starts");
    // Until killed.
    loop {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
}

fn spawn_child(config: &Path, crm: SocketAddr) -> tokio::process::Child {
    tokio::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "child_gateway",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, format!("{}|{crm}", config.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("child gateway")
}

/// Rows in the sync file's outbox, read beside the running child (WAL).
fn outbox_rows(sync_file: &Path) -> Option<i64> {
    let conn = rusqlite::Connection::open_with_flags(
        sync_file,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .ok()?;
    conn.query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
        .ok()
}

#[tokio::test]
async fn kill_9_during_a_drain_loses_nothing_and_creates_nothing_twice() {
    const RECORDS: usize = 2_000;
    let crm = crm::Crm::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let file: String = (0..RECORDS)
        .map(|i| {
            format!("{{\"id\":\"c{i:04}\",\"name\":\"Клиент {i}\",\"phones\":[\"8916{i:07}\"]}}\n")
        })
        .collect();
    std::fs::write(dir.path().join("counterparties.jsonl"), file).expect("write directory");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        config_text(dir.path(), &format!("\n[sync.{SYSTEM}]\n{FAST_RETRIES}")),
    )
    .expect("write config");
    let sync_file = cti_gateway::gateway::sync_store_path(&dir.path().join("store.sqlite"));
    let writes = || crm.lock().writes.len();

    // Three kills at a random moment of the drain...
    for round in 0..3 {
        let mut child = spawn_child(&config, crm.addr);
        let from = writes();
        let wait = 50 + round * 150;
        until(Duration::from_secs(60), "the child sends", || async {
            writes() >= from + wait
        })
        .await;
        child.kill().await.expect("SIGKILL");
    }
    // ...and one between the CRM's accept and the gateway's commit.
    crm.lock().hold_once = true;
    let mut child = spawn_child(&config, crm.addr);
    until(Duration::from_secs(60), "a write held", || async {
        crm.lock().held == 1
    })
    .await;
    child.kill().await.expect("SIGKILL");
    crm.lock().release = true;

    // The last run drains everything.
    let mut child = spawn_child(&config, crm.addr);
    until(
        Duration::from_secs(120),
        "every record in the CRM",
        || async { crm.lock().by_external.len() == RECORDS },
    )
    .await;
    until(Duration::from_secs(60), "the outbox drained", || async {
        outbox_rows(&sync_file) == Some(0)
    })
    .await;
    child.kill().await.expect("SIGKILL");
    let state = crm.lock();
    let twice: Vec<_> = state.creates.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "created other than once: {twice:?}");
    assert_eq!(state.creates.len(), RECORDS);
    assert!(
        state.found >= 1,
        "the write held at the kill was adopted, not created again"
    );
    drop(state);
    let conn = rusqlite::Connection::open(&sync_file).expect("sync file");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity check");
    assert_eq!(check, "ok");
    let unlinked: i64 = conn
        .query_row(
            "SELECT count(*) FROM idmap WHERE system = ?1 AND remote_id IS NULL",
            [SYSTEM],
            |r| r.get(0),
        )
        .expect("id-map");
    assert_eq!(unlinked, 0, "every record linked to its CRM copy");
}

#[tokio::test]
async fn resume_names_what_it_cannot_resume() {
    // Configured, but no module of this build sends to it.
    let gw = support::start("\n[sync.bitrix24]\n").await;
    let resume = |system: &'static str| {
        let path = format!("/api/v1/sync/{system}/resume");
        async move { request(gw.addr, "POST", &path, &[BEARER], b"").await }
    };
    let reply = resume("bitrix24").await;
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(reply.body.contains("no worker"), "{}", reply.body);
    assert_eq!(resume("nosuch").await.status, 404);
    let reply = request(gw.addr, "POST", "/api/v1/sync/bitrix24/resume", &[], b"").await;
    assert_eq!(reply.status, 401);
    let reply = request(
        gw.addr,
        "GET",
        "/api/v1/sync/bitrix24/resume",
        &[BEARER],
        b"",
    )
    .await;
    assert_eq!(reply.status, 405);
}

#[tokio::test]
async fn a_blocked_crm_is_probed_every_block_probe_and_sending_resumes_when_it_answers() {
    let crm = crm::Crm::start().await;
    let gw = start(&crm, "block_probe = \"1s\"\n", 10).await;
    drained(&gw).await;
    crm.lock().blocked = true;
    let before = crm.lock().requests;
    push(gw.addr, "k1", "Альфа 2", "84951110001").await;
    push(gw.addr, "k2", "Бета 2", "84951110002").await;
    settled(&gw).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let during = crm.lock().requests - before;
    // The first request, then a probe a second: never a request per row.
    assert!((1..=4).contains(&during), "{during} requests while blocked");
    crm.lock().blocked = false;
    drained(&gw).await;
    assert_eq!(
        crm.writes_of("k1").last().map(|b| b["name"].clone()),
        Some(json!("Альфа 2"))
    );
    assert_eq!(
        crm.writes_of("k2").last().map(|b| b["name"].clone()),
        Some(json!("Бета 2"))
    );
}
