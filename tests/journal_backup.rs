//! The admin's journal: retention (`store.journal_retention`) over a real
//! gateway, and live backups through `POST /api/v1/admin/backup` and its
//! command-line client `cti-gateway backup --to DIR` (exit 0 with the files
//! written, 1 with the gateway's message, 2 on a usage error).

mod support;

use std::path::Path;
use std::time::{Duration, SystemTime};

use cti_gateway::config::Config;
use cti_gateway::store::{CallRecord, Store};
use cti_gateway::Gateway;
use support::process::run_cli;
use support::*;

const BACKUP: &str = "/api/v1/admin/backup";
const BEARER: &str = "Authorization: Bearer api-token-for-tests";
const JSON: &str = "Content-Type: application/json";
const DAY: Duration = Duration::from_secs(86_400);

/// A journal row of `key` from `age` ago.
fn call_aged(age: Duration, number: &str) -> CallRecord {
    CallRecord {
        at: SystemTime::now() - age,
        raw_number: format!("8{number}"),
        number: format!("+7{number}"),
        key: OPERATOR_KEY.into(),
        counterparty_id: None,
        delivered: 0,
        seq: None,
    }
}

/// The test configuration with `store.journal_retention = retention`.
fn config_with_retention(dir: &Path, listen: &str, retention: &str) -> String {
    let text = config_text_on(dir, listen, "");
    assert!(text.contains("[store]\n"), "the test config changed shape");
    text.replace(
        "[store]\n",
        &format!("[store]\njournal_retention = \"{retention}\"\n"),
    )
}

/// A gateway over `dir` (written config at `dir/gateway.toml`).
async fn start_gateway(dir: tempfile::TempDir, listen: &str, retention: &str) -> TestGateway {
    let config_path = dir.path().join("gateway.toml");
    let text = config_with_retention(dir.path(), listen, retention);
    std::fs::write(&config_path, &text).expect("write config");
    let config = Config::parse(&text, &config_path, &|_| None).expect("test config is valid");
    let gateway = Gateway::start(config).await.expect("gateway starts");
    TestGateway {
        addr: gateway.local_addr(),
        gateway: Some(gateway),
        dir,
    }
}

fn folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), DIRECTORY).expect("write directory");
    dir
}

#[test]
fn journal_retention_parses_durations_and_zero_and_defaults_to_400_days() {
    let dir = folder();
    let path = dir.path().join("gateway.toml");
    let parse = |text: &str| Config::parse(text, &path, &|_| None);
    let default = parse(&config_text(dir.path(), "")).expect("default");
    assert_eq!(default.store.journal_retention, 400 * DAY);
    let days = parse(&config_with_retention(dir.path(), "127.0.0.1:0", "30d")).expect("30d");
    assert_eq!(days.store.journal_retention, 30 * DAY);
    let forever = parse(&config_with_retention(dir.path(), "127.0.0.1:0", "0")).expect("0");
    assert_eq!(forever.store.journal_retention, Duration::ZERO);
    let bad = parse(&config_with_retention(dir.path(), "127.0.0.1:0", "a year")).expect_err("bad");
    assert!(format!("{bad:#}").contains("journal_retention"), "{bad:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_older_than_the_retention_are_pruned_at_start_and_counted() {
    let dir = folder();
    // A journal with 1,500 calls from a year ago and 3 from this week,
    // written before the gateway starts.
    let store_path = dir.path().join("store.sqlite");
    let store = Store::open(&store_path, &prometheus::Registry::new()).expect("store");
    for i in 0..1_500 {
        store
            .append_call(call_aged(365 * DAY, &format!("916{i:07}")))
            .await
            .expect("old call");
    }
    for i in 0..3 {
        store
            .append_call(call_aged(
                Duration::from_secs(3_600 * (i + 1)),
                "9160000999",
            ))
            .await
            .expect("recent call");
    }
    store.close().await;

    let mut gw = start_gateway(dir, "127.0.0.1:0", "30d").await;
    let store = gw.gateway().store().clone();
    let mut left = usize::MAX;
    for _ in 0..200 {
        left = store.calls(None, None, 10_000).await.expect("calls").len();
        if left == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(left, 3, "the year-old calls went, this week's stayed");
    let metrics = get(gw.addr, "/metrics").await;
    assert!(
        metrics
            .body
            .contains("cti_store_journal_pruned_total{db=\"main\"} 1500"),
        "{}",
        metrics.body
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backup_endpoint_refuses_what_it_cannot_do_with_a_message() {
    let mut gw = start_gateway(folder(), "127.0.0.1:0", "400d").await;
    let target = tempfile::tempdir().expect("backup dir");
    let body = |dir: &Path| serde_json::json!({ "to": dir }).to_string();

    let no_token = post(gw.addr, BACKUP, &[JSON], body(target.path()).as_bytes()).await;
    assert_eq!(no_token.status, 401, "{}", no_token.body);
    let get_it = request(gw.addr, "GET", BACKUP, &[BEARER], b"").await;
    assert_eq!(get_it.status, 405, "{}", get_it.body);

    let cases = [
        (r#"{"to": "backups"}"#.to_owned(), 400, "absolute"),
        ("not json".to_owned(), 400, "/absolute/folder"),
        (body(&target.path().join("missing")), 409, "create it first"),
        (body(gw.dir.path()), 409, "store's own folder"),
    ];
    for (request_body, status, words) in cases {
        let reply = post(gw.addr, BACKUP, &[BEARER, JSON], request_body.as_bytes()).await;
        assert_eq!(reply.status, status, "{}", reply.body);
        let answer: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON");
        let message = answer["error"].as_str().expect("an error message");
        assert!(message.contains(words), "{message}");
        assert!(message.contains("no backup was made"), "{message}");
    }
    assert_eq!(
        std::fs::read_dir(target.path()).expect("read dir").count(),
        0,
        "nothing written on a refusal"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backup_command_copies_a_live_store_while_calls_come_in() {
    let port = process::free_port();
    let mut gw = start_gateway(folder(), &format!("127.0.0.1:{port}"), "400d").await;
    let config_arg = gw.dir.path().join("gateway.toml").display().to_string();
    let store = gw.gateway().store().clone();
    let mut committed = Vec::new();
    for i in 0..200 {
        committed.push(
            store
                .append_call(call_aged(Duration::from_secs(60), &format!("917{i:07}")))
                .await
                .expect("append"),
        );
    }
    // Calls keep coming through SOAP while the backup runs.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let addr = gw.addr;
    let caller = tokio::spawn(async move {
        let mut answered = 0u32;
        while !*stopped.borrow() {
            let reply = soap(addr, &incoming_call_envelope("89160000001", OPERATOR_KEY)).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            answered += 1;
        }
        answered
    });

    let target = tempfile::tempdir().expect("backup dir");
    let (code, stdout, stderr) = run_cli(vec![
        "backup".into(),
        "--to".into(),
        target.path().display().to_string(),
        "--config".into(),
        config_arg.clone(),
    ])
    .await;
    stop.send_replace(true);
    let answered = caller.await.expect("caller");
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    let answer: serde_json::Value =
        serde_json::from_str(stdout.trim()).expect("prints the JSON answer");
    let copy = target
        .path()
        .canonicalize()
        .expect("dir")
        .join("store.sqlite");
    assert_eq!(
        answer["files"][0]["path"],
        copy.display().to_string(),
        "{answer}"
    );
    assert!(answered > 0, "calls were answered during the backup");

    let conn =
        rusqlite::Connection::open_with_flags(&copy, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("the copy opens");
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .expect("integrity_check");
    assert_eq!(check, "ok");
    for id in &committed {
        let found: i64 = conn
            .query_row("SELECT count(*) FROM calls WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .expect("query");
        assert_eq!(
            found, 1,
            "call {id} committed before the backup is in the copy"
        );
    }
    drop(conn);

    // The store's own folder: exit 1 with the gateway's message.
    let (code, _, stderr) = run_cli(vec![
        "backup".into(),
        "--to".into(),
        gw.dir.path().display().to_string(),
        "-c".into(),
        config_arg.clone(),
    ])
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("409"), "{stderr}");
    assert!(stderr.contains("store's own folder"), "{stderr}");

    // No gateway there: exit 1 saying so.
    let (code, _, stderr) = run_cli(vec![
        "backup".into(),
        "--to".into(),
        target.path().display().to_string(),
        "-c".into(),
        config_arg.clone(),
        "--url".into(),
        format!("http://127.0.0.1:{}", process::free_port()),
    ])
    .await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");

    // Usage: no --to, exit 2.
    let (code, _, stderr) = run_cli(vec!["backup".into(), "-c".into(), config_arg]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("--to"), "{stderr}");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_onec_and_sync_the_backup_copies_every_store_file() {
    let mock = mock_onec::MockOnec::start().await;
    let onec = format!(
        "\n[onec]\nodata_url = \"{}\"\nusername = \"{}\"\npassword = \"{}\"\nrefresh = \"1h\"\ntimeout = \"2s\"\n[sync.bitrix24]\n",
        mock.url(),
        mock_onec::USERNAME,
        mock_onec::PASSWORD
    );
    let mut gw = start_with(DIRECTORY, &onec).await;
    let target = tempfile::tempdir().expect("backup dir");
    let body = serde_json::json!({ "to": target.path() }).to_string();
    let reply = post(gw.addr, BACKUP, &[BEARER, JSON], body.as_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let answer: serde_json::Value = serde_json::from_str(&reply.body).expect("JSON");
    let mut names: Vec<String> = answer["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            Path::new(f["path"].as_str().expect("path"))
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["store.onec.sqlite", "store.sqlite", "store.sync.sqlite"],
        "{answer}"
    );
    for name in names {
        let conn = rusqlite::Connection::open_with_flags(
            target.path().join(&name),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("the copy opens");
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(check, "ok", "{name}");
    }
    gw.stop().await;
}
