//! A sending system's state and limiter as operations see them: `/readyz`
//! shows it under `sync.<system>` (never under `sources`) and stays 200
//! whatever its state, `failing` and `blocked` systems are listed in
//! `failing_sources`, `/metrics` has `cti_sync_state{system,state}`, and
//! `GET /api/v1/sync/status` adds state, reason, since, last success and
//! the limiter (rate, tokens, paused until).
//!
//! The system here sends nothing: it is only registered, and its health
//! and limiter are moved by hand as its worker would.

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cti_gateway::config::Config;
use cti_gateway::gateway::StartError;
use cti_gateway::sync::inbound::Inbound;
use cti_gateway::sync::system::{
    Outcome, OutgoingRow, Page, PublishedLimit, Remote, RemoteFuture, System, Webhook, WebhookError,
};
use cti_gateway::sync::SystemSpec;
use cti_gateway::Gateway;
use support::*;
use tempfile::TempDir;

const BEARER: &str = "Authorization: Bearer api-token-for-tests";

/// A registered system that is never sent to in this test.
struct QuietSystem {
    spec: SystemSpec,
}

impl System for QuietSystem {
    fn spec(&self) -> &SystemSpec {
        &self.spec
    }

    fn published_limit(&self) -> PublishedLimit {
        PublishedLimit::Bucket {
            burst: 50,
            per_second: 2.0,
        }
    }

    fn batch_size(&self) -> usize {
        50
    }

    fn send<'a>(&'a self, rows: &'a [OutgoingRow]) -> RemoteFuture<'a, Vec<Outcome>> {
        Box::pin(async move {
            rows.iter()
                .map(|_| Outcome::Retry("this test system sends nothing".into()))
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

/// A gateway with `name` registered, `extra` appended to its config.
async fn try_start_quiet(name: &str, extra: &str) -> (Result<Gateway, StartError>, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), DIRECTORY).expect("write directory");
    let path = dir.path().join("gateway.toml");
    let text = config_text(dir.path(), extra);
    let config = Config::parse(&text, &path, &|_| None).expect("test config is valid");
    let system: Arc<dyn System> = Arc::new(QuietSystem {
        spec: SystemSpec::new(name).expect("spec"),
    });
    (Gateway::start_with(config, vec![system]).await, dir)
}

async fn start_quiet(name: &str, extra: &str) -> TestGateway {
    let (gateway, dir) = try_start_quiet(name, extra).await;
    let gateway = gateway.expect("gateway starts");
    TestGateway {
        addr: gateway.local_addr(),
        gateway: Some(gateway),
        dir,
    }
}

fn json(reply: &Reply) -> serde_json::Value {
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.body))
}

#[tokio::test]
async fn a_systems_state_shows_in_readyz_metrics_and_status() {
    let mut gw = start_quiet("testcrm", "[sync.testcrm]\n").await;
    let parts = Arc::clone(
        gw.gateway()
            .sync_systems()
            .get("testcrm")
            .expect("the system's parts"),
    );

    let ready = get(gw.addr, "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let body = json(&ready);
    assert_eq!(body["sync"]["testcrm"]["state"], "ok", "{body}");
    assert!(body["sources"].get("testcrm").is_none(), "{body}");
    assert_eq!(body["failing_sources"], serde_json::json!([]), "{body}");
    let metrics = get(gw.addr, "/metrics").await;
    assert!(
        metrics
            .body
            .contains("cti_sync_state{state=\"ok\",system=\"testcrm\"} 1"),
        "{}",
        metrics.body
    );
    assert!(metrics
        .body
        .contains("cti_sync_state{state=\"blocked\",system=\"testcrm\"} 0"));

    // The worker's report of a block: still ready (calls go on), listed.
    parts.health.blocked("403: the account is blocked");
    let ready = get(gw.addr, "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let body = json(&ready);
    assert_eq!(body["sync"]["testcrm"]["state"], "blocked", "{body}");
    assert!(body["sync"]["testcrm"]["since"].is_string(), "{body}");
    assert_eq!(
        body["failing_sources"],
        serde_json::json!(["sync.testcrm"]),
        "{body}"
    );
    let metrics = get(gw.addr, "/metrics").await;
    assert!(metrics
        .body
        .contains("cti_sync_state{state=\"blocked\",system=\"testcrm\"} 1"));
    assert!(metrics
        .body
        .contains("cti_sync_state{state=\"ok\",system=\"testcrm\"} 0"));

    // A limit: not failing; the status shows the pause and the limiter.
    parts.limiter.acquire().await;
    let until = std::time::Instant::now() + Duration::from_secs(30);
    parts.limiter.pause_until(until);
    parts
        .health
        .limited(SystemTime::now() + Duration::from_secs(30));
    let body = json(&get(gw.addr, "/readyz").await);
    assert_eq!(body["sync"]["testcrm"]["state"], "limited", "{body}");
    assert_eq!(body["failing_sources"], serde_json::json!([]), "{body}");
    let status = request(gw.addr, "GET", "/api/v1/sync/status", &[BEARER], b"").await;
    assert_eq!(status.status, 200, "{}", status.body);
    let body = json(&status);
    let system = body["systems"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["system"] == "testcrm"))
        .unwrap_or_else(|| panic!("testcrm in {body}"))
        .clone();
    assert_eq!(system["state"], "limited", "{system}");
    assert!(system["reason"]
        .as_str()
        .is_some_and(|r| r.contains("limit")));
    assert!(system["since"].is_string(), "{system}");
    assert_eq!(system["limiter"]["rate_per_second"], 2.0, "{system}");
    // Emptied by the limit answer (refilling at 2/s since).
    assert!(
        system["limiter"]["tokens"]
            .as_f64()
            .is_some_and(|t| t < 1.0),
        "{system}"
    );
    assert!(system["limiter"]["paused_until"].is_string(), "{system}");

    parts.health.ok();
    let body = json(&get(gw.addr, "/readyz").await);
    assert_eq!(body["sync"]["testcrm"]["state"], "ok", "{body}");
    assert!(
        body["sync"]["testcrm"]["last_success"].is_string(),
        "{body}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_registered_systems_table_sets_its_limiter_and_a_stray_table_stops_start_up() {
    let mut gw = start_quiet("testcrm", "[sync.testcrm]\nper_second = 1\nburst = 10\n").await;
    let status = request(gw.addr, "GET", "/api/v1/sync/status", &[BEARER], b"").await;
    let body = json(&status);
    let system = body["systems"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["system"] == "testcrm"))
        .unwrap_or_else(|| panic!("testcrm in {body}"))
        .clone();
    assert_eq!(system["limiter"]["rate_per_second"], 1.0, "{system}");
    // One token of headroom: 9 of the bucket's 10.
    assert_eq!(system["limiter"]["tokens"], 9.0, "{system}");
    gw.stop().await;

    // A table no system claims (nor a CRM the gateway knows) is a typo.
    let (started, _dir) = try_start_quiet("testcrm", "[sync.testcmr]\n").await;
    let error = started
        .err()
        .expect("a stray [sync.testcmr] stops start-up");
    let message = error.to_string();
    assert!(
        message.contains("sync.testcmr") && message.contains("gateway.toml"),
        "{message}"
    );
}
