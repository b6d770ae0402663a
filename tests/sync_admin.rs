//! The sync admin API over real HTTP (`/api/v1/sync/...`, Bearer
//! `api.token`) and its command-line client `cti-gateway sync ...` (the real
//! binary): status, outbox paging, retry (200, 404, 409), conflicts, the
//! streamed id-map CSV; 400 naming a bad parameter, 401 without the token;
//! exit 0, 1 with the gateway's message, 2 on a usage error.
//!
//! A system here is any name with rows: "unknown system → 404" needs the
//! registry of systems, which the sync runtime brings.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use cti_gateway::config::Config;
use cti_gateway::store::{NewConflict, NewOutboxRow, OutboxOp, Store};
use cti_gateway::Gateway;
use support::*;

const BEARER: &str = "Authorization: Bearer api-token-for-tests";

/// A gateway on a fixed port (for the command line's `--config`), its
/// config written to `dir/gateway.toml`.
async fn start_gateway() -> TestGateway {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), DIRECTORY).expect("write directory");
    let listen = format!("127.0.0.1:{}", process::free_port());
    let config_path = dir.path().join("gateway.toml");
    // A `[sync.<system>]` keeps the sync store, before any module runs.
    let text = config_text_on(
        dir.path(),
        &listen,
        "\n[sync.amocrm]\n[sync.bitrix24]\n[sync.bpium]\n",
    );
    std::fs::write(&config_path, &text).expect("write config");
    let config = Config::parse(&text, &config_path, &|_| None).expect("test config is valid");
    let gateway = Gateway::start(config).await.expect("gateway starts");
    TestGateway {
        addr: gateway.local_addr(),
        gateway: Some(gateway),
        dir,
    }
}

fn sync_store(gw: &TestGateway) -> Store {
    gw.gateway()
        .sync_store()
        .expect("the sync store is open")
        .clone()
}

fn row(system: &str, key: &str) -> NewOutboxRow {
    NewOutboxRow {
        system: system.into(),
        kind: "company".into(),
        record_key: key.into(),
        op: OutboxOp::Upsert,
        body: format!(r#"{{"TITLE":"{key}"}}"#),
        hash: key.len() as u64,
    }
}

/// 250 rows for `amocrm` (two of them dead, every one in the id-map), 5
/// for `bitrix24`, two conflicts; the ids of the amocrm rows.
async fn fill(gw: &TestGateway) -> Vec<i64> {
    let store = sync_store(gw);
    let ids = store
        .enqueue(
            (0..250)
                .map(|i| row("amocrm", &format!("c{i:03}")))
                .collect(),
        )
        .await
        .expect("enqueue");
    store
        .enqueue((0..5).map(|i| row("bitrix24", &format!("o{i}"))).collect())
        .await
        .expect("enqueue");
    // The runtime that kills rows comes later: its UPDATE, by hand.
    let conn = rusqlite::Connection::open(gw.dir.path().join("store.sync.sqlite")).expect("open");
    conn.busy_timeout(Duration::from_secs(5)).expect("timeout");
    conn.execute(
        "UPDATE outbox SET state = 'dead', attempts = 10, last_error = 'HTTP 500' WHERE id IN (?1, ?2)",
        [ids[3], ids[7]],
    )
    .expect("kill two rows");
    // The id-map rows the runtime writes as a system confirms, by hand too
    // (an enqueue writes none): amocrm's 250 records, their queued hashes.
    conn.execute(
        "INSERT INTO idmap (system, kind, local_id, hash)
         SELECT system, kind, record_key, hash FROM outbox WHERE system = 'amocrm'",
        [],
    )
    .expect("link amocrm's rows");
    for (system, key) in [("amocrm", "c001"), ("bitrix24", "o1")] {
        store
            .conflict_add(NewConflict {
                system: system.into(),
                record_key: key.into(),
                field: "inn".into(),
                ours: Some("7701234567".into()),
                theirs: Some("7701234568".into()),
                resolution: "kept_ours".into(),
            })
            .await
            .expect("conflict");
    }
    ids
}

fn json(reply: &Reply) -> serde_json::Value {
    serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {}", reply.body))
}

async fn get_api(addr: SocketAddr, path: &str) -> Reply {
    request(addr, "GET", path, &[BEARER], b"").await
}

/// A request's whole answer (read to the end: the CSV is chunked), as
/// (status, head, body de-chunked when it was chunked; `None` when the
/// chunks did not end properly).
async fn to_end(addr: SocketAddr, path: &str, headers: &[&str]) -> (u16, String, Option<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(&request_bytes(addr, "GET", path, headers, b""))
        .await
        .expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("answer within 10 s")
        .expect("read");
    let text = String::from_utf8(answer).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split(' ')
        .nth(1)
        .expect("status")
        .parse()
        .expect("number");
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        Some(body.to_owned())
    };
    (status, head.to_owned(), body)
}

fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_outbox_retry_conflicts_and_the_csv_over_http() {
    let mut gw = start_gateway().await;
    let ids = fill(&gw).await;
    let addr = gw.addr;

    // 401 without the token, on every endpoint.
    for (method, path) in [
        ("GET", "/api/v1/sync/status"),
        ("GET", "/api/v1/sync/outbox"),
        ("POST", "/api/v1/sync/outbox/1/retry"),
        ("GET", "/api/v1/sync/conflicts"),
        ("GET", "/api/v1/sync/idmap.csv?system=amocrm"),
    ] {
        let reply = request(addr, method, path, &[], b"").await;
        assert_eq!(reply.status, 401, "{method} {path}: {}", reply.body);
        assert_eq!(reply.header("WWW-Authenticate"), Some("Bearer"));
    }

    let status = json(&get_api(addr, "/api/v1/sync/status").await);
    let systems = status["systems"].as_array().expect("systems");
    // Every system synced is listed, bpium with nothing queued.
    assert_eq!(systems.len(), 3, "{status}");
    assert_eq!(systems[0]["system"], "amocrm");
    assert_eq!(systems[0]["pending"], 248);
    assert_eq!(systems[0]["dead"], 2);
    assert!(systems[0]["oldest_pending_age_s"].as_f64().expect("age") >= 0.0);
    assert_eq!(systems[1]["system"], "bitrix24");
    assert_eq!(systems[1]["pending"], 5);
    assert_eq!(systems[2]["system"], "bpium");
    assert_eq!(
        (&systems[2]["pending"], &systems[2]["dead"]),
        (&0.into(), &0.into())
    );

    // A system this gateway does not sync is a 404 naming those it does (a
    // typo would otherwise read as an empty outbox).
    for path in [
        "/api/v1/sync/outbox?system=amocrn",
        "/api/v1/sync/conflicts?system=amocrn",
        "/api/v1/sync/idmap.csv?system=amocrn",
    ] {
        let reply = get_api(addr, path).await;
        assert_eq!(reply.status, 404, "{path}: {}", reply.body);
        let error = json(&reply)["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            error.contains("unknown system \"amocrn\"")
                && error.contains("amocrm, bitrix24, bpium"),
            "{path}: {error}"
        );
    }

    // Every amocrm row once, 100 a page; next_after is null on the last.
    let mut seen = Vec::new();
    let mut after = String::new();
    for page in 0.. {
        assert!(page < 5, "paging does not end");
        let reply = get_api(
            addr,
            &format!("/api/v1/sync/outbox?system=amocrm&limit=100{after}"),
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let answer = json(&reply);
        let rows = answer["rows"].as_array().expect("rows");
        seen.extend(rows.iter().map(|r| r["id"].as_i64().expect("id")));
        match answer["next_after"].as_i64() {
            Some(next) => after = format!("&after={next}"),
            None => break,
        }
    }
    assert_eq!(seen, ids);
    let dead = json(&get_api(addr, "/api/v1/sync/outbox?state=dead").await);
    let dead = dead["rows"].as_array().expect("rows");
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0]["id"], ids[3]);
    assert_eq!(dead[0]["state"], "dead");
    assert_eq!(dead[0]["op"], "upsert");
    assert_eq!(dead[0]["attempts"], 10);
    assert_eq!(dead[0]["last_error"], "HTTP 500");
    assert_eq!(dead[0]["body"]["TITLE"], "c003", "the body as JSON");

    // No system here reports write outcomes: nothing is done by outcome.
    let done = json(&get_api(addr, "/api/v1/sync/outbox?state=done").await);
    assert_eq!(done["rows"], serde_json::json!([]));
    // Nor does a row carry one.
    assert_eq!(dead[0]["outcome"], serde_json::Value::Null);

    // A bad parameter: 400 naming it.
    for (query, name) in [
        ("state=finished", "state"),
        ("limit=1001", "limit"),
        ("after=-1", "after"),
        ("system=", "system"),
        ("sytem=crm", "sytem"),
    ] {
        let reply = get_api(addr, &format!("/api/v1/sync/outbox?{query}")).await;
        assert_eq!(reply.status, 400, "{query}: {}", reply.body);
        assert!(
            json(&reply)["error"]
                .as_str()
                .expect("error")
                .contains(name),
            "{}",
            reply.body
        );
    }

    // Retry: 200, then 409 (pending now), 404 for no such row, 405 for GET.
    let path = format!("/api/v1/sync/outbox/{}/retry", ids[3]);
    let reply = post(addr, &path, &[BEARER], b"").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(json(&reply)["state"], "pending");
    let reply = post(addr, &path, &[BEARER], b"").await;
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert!(reply.body.contains("not dead"), "{}", reply.body);
    let reply = post(addr, "/api/v1/sync/outbox/999999/retry", &[BEARER], b"").await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    let reply = post(addr, "/api/v1/sync/outbox/x/retry", &[BEARER], b"").await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    let reply = get_api(addr, &path).await;
    assert_eq!(reply.status, 405, "{}", reply.body);
    let status = json(&get_api(addr, "/api/v1/sync/status").await);
    assert_eq!(status["systems"][0]["dead"], 1);

    // Conflicts, by system and time.
    let all = json(&get_api(addr, "/api/v1/sync/conflicts").await);
    assert_eq!(all["conflicts"].as_array().expect("list").len(), 2);
    let crm = json(
        &get_api(
            addr,
            "/api/v1/sync/conflicts?system=amocrm&since=2020-01-01T00:00:00Z",
        )
        .await,
    );
    let crm = crm["conflicts"].as_array().expect("list");
    assert_eq!(crm.len(), 1);
    assert_eq!(crm[0]["record_key"], "c001");
    assert_eq!(crm[0]["theirs"], "7701234568");
    let later = json(&get_api(addr, "/api/v1/sync/conflicts?since=2999-01-01T00:00:00Z").await);
    assert!(later["conflicts"].as_array().expect("list").is_empty());
    let reply = get_api(addr, "/api/v1/sync/conflicts?since=yesterday").await;
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("since"), "{}", reply.body);

    // The id-map as CSV, streamed (chunked), every link once.
    let (status, head, body) =
        to_end(addr, "/api/v1/sync/idmap.csv?system=amocrm", &[BEARER]).await;
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-type: text/csv"),
        "{head}"
    );
    let body = body.expect("the chunks end properly");
    let lines: Vec<&str> = body.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(
        lines[0],
        "kind,local_id,remote_id,remote_version,hash,closed_at"
    );
    assert_eq!(lines.len(), 251);
    assert_eq!(lines[1], "company,c000,,,0000000000000004,");
    let reply = get_api(addr, "/api/v1/sync/idmap.csv").await;
    assert_eq!(reply.status, 400);
    assert!(reply.body.contains("system"), "{}", reply.body);
    // A system synced but with no id-map rows: the header alone.
    let (status, _, body) = to_end(addr, "/api/v1/sync/idmap.csv?system=bpium", &[BEARER]).await;
    assert_eq!(status, 200);
    assert_eq!(
        body.as_deref(),
        Some("kind,local_id,remote_id,remote_version,hash,closed_at\r\n")
    );

    gw.stop().await;
}

/// Runs the binary with `args` (no CTI_API_TOKEN from outside); its exit
/// code, stdout and stderr.
async fn run_cli(args: &[&str], config: &Path) -> (Option<i32>, String, String) {
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.push("--config".into());
    args.push(config.display().to_string());
    process::run_cli(args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_command_is_a_thin_client_of_the_api() {
    let mut gw = start_gateway().await;
    let ids = fill(&gw).await;
    let config = gw.dir.path().join("gateway.toml");

    let (code, stdout, stderr) = run_cli(&["sync", "status"], &config).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let status: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(status["systems"][0]["dead"], 2);

    let (code, stdout, stderr) = run_cli(
        &[
            "sync", "outbox", "--system", "amocrm", "--state", "dead", "--limit", "1",
        ],
        &config,
    )
    .await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let page: serde_json::Value = serde_json::from_str(&stdout).expect("JSON");
    assert_eq!(page["rows"][0]["id"], ids[3]);
    assert_eq!(page["next_after"], ids[3]);

    let id = ids[7].to_string();
    let (code, stdout, stderr) = run_cli(&["sync", "retry", &id], &config).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    // Again: the gateway's 409, its message on one line, exit 1.
    let (code, stdout, stderr) = run_cli(&["sync", "retry", &id], &config).await;
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("409") && stderr.contains("not dead"),
        "{stderr}"
    );
    let (code, _, stderr) = run_cli(&["sync", "outbox", "--state", "finished"], &config).await;
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("400") && stderr.contains("state"),
        "{stderr}"
    );

    let (code, stdout, stderr) =
        run_cli(&["sync", "conflicts", "--system", "bitrix24"], &config).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("\"o1\""), "{stdout}");

    let (code, stdout, stderr) =
        run_cli(&["sync", "export-map", "--system", "amocrm"], &config).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(stdout.lines().count(), 251, "{stdout}");
    assert!(stdout.starts_with("kind,local_id,"), "{stdout}");

    // A system with a table but no module here: the gateway's 404, exit 1.
    let (code, _, stderr) = run_cli(&["sync", "initial", "amocrm"], &config).await;
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("404") && stderr.contains("amocrm"),
        "{stderr}"
    );
    let (code, _, stderr) = run_cli(&["sync", "relink", "Amo CRM"], &config).await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("not a system name"), "{stderr}");

    // Usage errors: exit 2.
    let (code, _, _) = run_cli(&["sync", "initial"], &config).await;
    assert_eq!(code, Some(2));
    let (code, _, _) = run_cli(&["sync", "retry"], &config).await;
    assert_eq!(code, Some(2));
    let (code, _, _) = run_cli(&["sync", "export-map"], &config).await;
    assert_eq!(code, Some(2));

    // No token anywhere: one line naming the variable. No gateway: naming the address.
    let no_token = gw.dir.path().join("no-token.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &no_token,
        text.replace("token = \"api-token-for-tests\"", ""),
    )
    .expect("write");
    let (code, _, stderr) = run_cli(&["sync", "status"], &no_token).await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("CTI_API_TOKEN"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    let (code, _, stderr) =
        run_cli(&["sync", "status", "--url", "http://127.0.0.1:1"], &config).await;
    assert_eq!(code, Some(1));
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");

    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_file_that_does_not_open_costs_the_sync_api_not_the_calls() {
    let mut gw = start("\n[sync.bitrix24]\n").await;
    assert!(gw.gateway().sync_store().is_some(), "opened at first");
    let ready = json(&get_api(gw.addr, "/readyz").await);
    assert_eq!(ready["sync"]["store"], "ok", "{ready}");
    gw.stop().await;
    // An empty file where the sync store was: refused (a lost store), so
    // not opened.
    std::fs::write(gw.dir.path().join("store.sync.sqlite"), b"").expect("empty sync file");
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(gw.dir.path().join(format!("store.sync.sqlite{suffix}")));
    }
    let mut gw = start_in(gw.dir, "\n[sync.bitrix24]\n").await;
    assert!(gw.gateway().sync_store().is_none());
    // Ready (calls go on), and /readyz says the sync store failed.
    let reply = get_api(gw.addr, "/readyz").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(json(&reply)["sync"]["store"], "failed", "{}", reply.body);
    let reply = get_api(gw.addr, "/api/v1/sync/status").await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert!(
        reply.body.contains("sync store is not open"),
        "{}",
        reply.body
    );
    // Calls are answered and journaled.
    let reply = soap(
        gw.addr,
        &incoming_call_envelope("89235292926", OPERATOR_KEY),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let calls = gw
        .gateway()
        .store()
        .calls(None, None, 10)
        .await
        .expect("journal");
    assert_eq!(calls.len(), 1);
    assert_eq!(
        std::fs::metadata(gw.dir.path().join("store.sync.sqlite"))
            .expect("left as it was")
            .len(),
        0
    );
    gw.stop().await;
}
