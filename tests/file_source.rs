//! The JSON Lines file source over a real gateway: a file is taken whole
//! or not at all even while it is being written (`directory.settle`), a
//! file that would empty or gut the directory is refused until an operator
//! accepts it (`directory.max_shrink`, `POST /api/v1/admin/accept-file`,
//! `cti-gateway accept-file`), a replacement by rename is noticed by its
//! inode, and `/readyz` is 503 until some directory is loaded.

mod support;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use cti_gateway::config::Config;
use cti_gateway::Gateway;
use support::*;

const ACCEPT: &str = "/api/v1/admin/accept-file";
const BEARER: &str = "Authorization: Bearer api-token-for-tests";
/// Long enough for a loaded machine to notice and settle a change.
const WITHIN: Duration = Duration::from_secs(15);

/// `n` JSON Lines records, ids `r0`…, each with its own phone.
fn records(ids: std::ops::Range<usize>) -> String {
    ids.map(|i| {
        format!(
            "{{\"id\":\"r{i}\",\"name\":\"Клиент {i:03}\",\"manager_phone\":\"244\",\"phones\":[\"8 916 000-{i:04}\"]}}\n"
        )
    })
    .collect()
}

/// The test configuration with these file-source settings.
fn config_with(dir: &Path, listen: &str, settle: &str, max_shrink: f64) -> String {
    let text = config_text_on(dir, listen, "");
    let keys = format!("settle = \"{settle}\"\nmax_shrink = {max_shrink}");
    assert!(
        text.contains("settle = \"0s\""),
        "the test config changed shape"
    );
    text.replace("settle = \"0s\"", &keys)
}

/// Starts a gateway in `dir` (its directory file as the test left it).
async fn start_file(dir: tempfile::TempDir, settle: &str, max_shrink: f64) -> TestGateway {
    let text = config_with(dir.path(), "127.0.0.1:0", settle, max_shrink);
    let config = Config::parse(&text, &dir.path().join("gateway.toml"), &|_| None)
        .expect("test config is valid");
    let gateway = Gateway::start(config).await.expect("gateway starts");
    let addr = gateway.local_addr();
    TestGateway {
        gateway: Some(gateway),
        addr,
        dir,
    }
}

/// A folder whose directory file holds `content`.
fn folder_with(content: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), content).expect("write directory");
    dir
}

fn counterparties(gw: &TestGateway) -> usize {
    gw.gateway().directory().snapshot().len()
}

/// Loads of the file the guard refused so far.
fn refusals(gw: &TestGateway) -> u64 {
    gw.gateway()
        .metrics()
        .directory_reloads
        .with_label_values(&["file", "refused"])
        .get()
}

fn name_of(gw: &TestGateway, id: &str) -> Option<String> {
    let entry = gw.gateway().directory().lookup_id(id)?;
    Some(entry.counterparty().expect("entry parses").name.into())
}

/// `/readyz`: its status and document.
async fn readyz(gw: &TestGateway) -> (u16, serde_json::Value) {
    let reply = get(gw.addr, "/readyz").await;
    let doc = serde_json::from_str(&reply.body)
        .unwrap_or_else(|e| panic!("/readyz is not JSON ({e}): {}", reply.body));
    (reply.status, doc)
}

/// The SayName title for `number`; the answer must be a SOAP answer, never a fault.
async fn title(gw: &TestGateway, number: &str) -> String {
    let reply = soap(gw.addr, &say_name_envelope(number)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let data = say_name_data(&reply);
    element_text(&data, "title").unwrap_or_default().to_owned()
}

async fn accept(gw: &TestGateway, headers: &[&str]) -> (u16, serde_json::Value) {
    let reply = request(gw.addr, "POST", ACCEPT, headers, b"").await;
    let doc = serde_json::from_str(&reply.body)
        .unwrap_or_else(|e| panic!("accept-file is not JSON ({e}): {}", reply.body));
    (reply.status, doc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_rewritten_in_place_in_pieces_is_never_loaded_partially() {
    let gw = start_file(folder_with(&records(0..3)), "2s", 0.5).await;
    assert_eq!(counterparties(&gw), 3);
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let sampler = {
        let (directory, seen) = (Arc::clone(gw.gateway().directory()), Arc::clone(&seen));
        tokio::spawn(async move {
            loop {
                let n = directory.snapshot().len();
                seen.lock().expect("sampler").insert(n);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    // An export rewrites the file in place: truncated, then 40 records in
    // four flushes a moment apart, each ending at a line's end.
    let full = records(0..40);
    let lines: Vec<&str> = full.split_inclusive('\n').collect();
    let mut file = std::fs::File::create(gw.directory_file()).expect("truncate");
    for piece in lines.chunks(10) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        file.write_all(piece.concat().as_bytes())
            .expect("write a piece");
        file.flush().expect("flush");
    }
    drop(file);
    let directory = Arc::clone(gw.gateway().directory());
    eventually(WITHIN, "the whole new file loaded", || {
        directory.snapshot().len() == 40
    })
    .await;
    sampler.abort();
    // The sampler may be stopped before it saw the last change: add it.
    seen.lock()
        .expect("sampler")
        .insert(directory.snapshot().len());
    let seen = seen.lock().expect("sampler").clone();
    assert_eq!(
        seen,
        BTreeSet::from([3, 40]),
        "the directory went from the old set straight to the new one"
    );
    assert_eq!(refusals(&gw), 0, "the empty file was never even read");
}

#[tokio::test]
async fn an_empty_file_is_refused_and_the_old_directory_keeps_answering() {
    let gw = start_file(folder_with(DIRECTORY), "0s", 0.5).await;
    std::fs::write(gw.directory_file(), "").expect(": > file");
    eventually(WITHIN, "the empty file refused", || refusals(&gw) == 1).await;
    assert_eq!(title(&gw, "89235292926").await, "Фэйковый чиж");
    let (status, ready) = readyz(&gw).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["counterparties"], 3, "{ready}");
    assert_eq!(ready["failing_sources"], serde_json::json!(["file"]));
    let file = &ready["sources"]["file"];
    assert_eq!(file["state"], "failing", "{ready}");
    let error = file["last_error"].as_str().unwrap_or_default();
    for words in ["no records", "holds 3", "cti-gateway accept-file"] {
        assert!(error.contains(words), "{words}: {error}");
    }

    // SIGHUP reads it again, and the guard still applies.
    gw.gateway().reload();
    eventually(WITHIN, "the empty file refused again", || {
        refusals(&gw) == 2
    })
    .await;
    assert_eq!(counterparties(&gw), 3);

    // An operator who means it accepts it.
    let (status, answer) = accept(&gw, &[BEARER]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["records"], 0, "{answer}");
    assert_eq!(answer["previous_records"], 3, "{answer}");
    assert_eq!(counterparties(&gw), 0);
    let (status, ready) = readyz(&gw).await;
    assert_eq!(status, 200, "an empty directory is still a directory");
    assert_eq!(ready["sources"]["file"]["state"], "ok", "{ready}");
}

#[tokio::test]
async fn a_file_that_drops_60_percent_is_refused_until_accept_file_loads_it() {
    let gw = start_file(folder_with(&records(0..10)), "0s", 0.5).await;
    std::fs::write(gw.directory_file(), records(0..4)).expect("rewrite");
    eventually(WITHIN, "the shrunk file refused", || refusals(&gw) == 1).await;
    assert_eq!(counterparties(&gw), 10);
    assert_eq!(title(&gw, "89160000007").await, "Клиент 007");
    let (_, ready) = readyz(&gw).await;
    let error = ready["sources"]["file"]["last_error"]
        .as_str()
        .unwrap_or_default();
    for words in [
        "lists 4",
        "remove 6 of the 10",
        "60%",
        "directory.max_shrink",
    ] {
        assert!(error.contains(words), "{words}: {error}");
    }

    // Only POST, only with the API token.
    let (status, answer) = accept(&gw, &[]).await;
    assert_eq!(status, 401, "{answer}");
    let reply = get(gw.addr, ACCEPT).await;
    assert_eq!(reply.status, 405, "{}", reply.body);
    assert_eq!(reply.header("allow"), Some("POST"));
    assert_eq!(counterparties(&gw), 10, "nothing taken yet");

    let (status, answer) = accept(&gw, &[BEARER]).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (
            &answer["accepted"],
            &answer["changed"],
            &answer["previous_records"],
            &answer["records"],
            &answer["counterparties"],
        ),
        (
            &serde_json::json!(true),
            &serde_json::json!(true),
            &serde_json::json!(10),
            &serde_json::json!(4),
            &serde_json::json!(4),
        ),
        "{answer}"
    );
    assert_eq!(counterparties(&gw), 4);
    assert_eq!(title(&gw, "89160000007").await, "");
    let (_, ready) = readyz(&gw).await;
    assert_eq!(ready["sources"]["file"]["state"], "ok", "{ready}");
    // Once taken, accepting again changes nothing.
    let (status, answer) = accept(&gw, &[BEARER]).await;
    assert_eq!(
        (status, &answer["changed"]),
        (200, &serde_json::json!(false))
    );
}

#[tokio::test]
async fn a_file_that_removes_no_more_than_max_shrink_loads() {
    let gw = start_file(folder_with(&records(0..10)), "0s", 0.5).await;
    std::fs::write(gw.directory_file(), records(0..5)).expect("rewrite");
    eventually(WITHIN, "half the records removed", || {
        counterparties(&gw) == 5
    })
    .await;
    assert_eq!(refusals(&gw), 0);

    // max_shrink = 1 turns the guard off (an empty file is still refused).
    let gw = start_file(folder_with(&records(0..10)), "0s", 1.0).await;
    std::fs::write(gw.directory_file(), records(9..10)).expect("rewrite");
    eventually(WITHIN, "90% removed", || counterparties(&gw) == 1).await;
    assert_eq!(refusals(&gw), 0);
}

#[tokio::test]
async fn accept_file_answers_409_for_a_missing_file_and_422_for_an_invalid_one() {
    let gw = start_file(folder_with(DIRECTORY), "0s", 0.5).await;
    std::fs::write(gw.directory_file(), "{\"id\":\"x\",\"name\":").expect("rewrite");
    let (status, answer) = accept(&gw, &[BEARER]).await;
    assert_eq!(status, 422, "{answer}");
    let error = answer["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("line 1") && error.contains("nothing was changed"),
        "{error}"
    );
    std::fs::remove_file(gw.directory_file()).expect("remove");
    let (status, answer) = accept(&gw, &[BEARER]).await;
    assert_eq!(status, 409, "{answer}");
    assert_eq!(answer["accepted"], false, "{answer}");
    assert_eq!(counterparties(&gw), 3, "the directory as it was");
}

#[tokio::test]
async fn a_replacement_with_the_same_size_and_mtime_is_noticed() {
    let content = |version: &str| DIRECTORY.replace("ИП Сидоров", &format!("Версия {version}"));
    let gw = start_file(folder_with(&content("A")), "0s", 0.5).await;
    assert_eq!(name_of(&gw, "c3").as_deref(), Some("Версия A"));
    let old = std::fs::metadata(gw.directory_file()).expect("stat");
    // cp -p + mv: a new file with the old one's size and modification
    // time, renamed over it.
    let tmp = gw.dir.path().join("counterparties.jsonl.tmp");
    let new = std::fs::File::create(&tmp).expect("create");
    (&new).write_all(content("B").as_bytes()).expect("write");
    new.set_modified(old.modified().expect("mtime"))
        .expect("set mtime");
    drop(new);
    let replacement = std::fs::metadata(&tmp).expect("stat");
    assert_eq!(replacement.len(), old.len());
    assert_eq!(replacement.modified().ok(), old.modified().ok());
    std::fs::rename(&tmp, gw.directory_file()).expect("mv");
    eventually(WITHIN, "the replacement read", || {
        name_of(&gw, "c3").as_deref() == Some("Версия B")
    })
    .await;
}

#[tokio::test]
async fn readyz_is_503_with_no_snapshot_and_no_file_and_200_once_the_file_appears() {
    let gw = start_file(tempfile::tempdir().expect("temp dir"), "0s", 0.5).await;
    let (status, ready) = readyz(&gw).await;
    assert_eq!(status, 503, "{ready}");
    assert_eq!(ready["ready"], false, "{ready}");
    assert_eq!(ready["sources"]["file"]["state"], "failing", "{ready}");
    // The PBX still gets an answer: an unknown caller, not a fault.
    assert_eq!(title(&gw, "89235292926").await, "");

    std::fs::write(gw.directory_file(), DIRECTORY).expect("the file appears");
    let directory = Arc::clone(gw.gateway().directory());
    eventually(WITHIN, "the file loaded", || directory.is_loaded()).await;
    let (status, ready) = readyz(&gw).await;
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["counterparties"], 3, "{ready}");
    assert_eq!(title(&gw, "89235292926").await, "Фэйковый чиж");
}

#[tokio::test]
async fn at_start_an_old_file_is_taken_at_once_and_a_young_one_once_settled() {
    // Last written an hour ago: settled long since, whatever `settle` is.
    let dir = folder_with(DIRECTORY);
    let file = std::fs::File::options()
        .append(true)
        .open(dir.path().join("counterparties.jsonl"))
        .expect("open");
    file.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .expect("set mtime");
    drop(file);
    let started = Instant::now();
    let gw = start_file(dir, "30s", 0.5).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(counterparties(&gw), 3);

    // Written just now: the start waits until it is `settle` old.
    let gw = start_file(folder_with(DIRECTORY), "1s", 0.5).await;
    assert_eq!(counterparties(&gw), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_accept_file_command_makes_the_running_gateway_take_the_file() {
    let dir = folder_with(&records(0..10));
    let port = support::process::free_port();
    let config_path = dir.path().join("gateway.toml");
    let text = config_with(dir.path(), &format!("127.0.0.1:{port}"), "0s", 0.5);
    std::fs::write(&config_path, &text).expect("write config");
    let config = Config::parse(&text, &config_path, &|_| None).expect("config");
    let gateway = Gateway::start(config).await.expect("gateway starts");
    let gw = TestGateway {
        addr: gateway.local_addr(),
        gateway: Some(gateway),
        dir,
    };
    std::fs::write(gw.directory_file(), records(0..4)).expect("rewrite");
    eventually(WITHIN, "the shrunk file refused", || refusals(&gw) == 1).await;

    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_cti-gateway"))
                .args(args)
                .env_remove("CTI_API_TOKEN")
                .output()
                .expect("the binary runs")
        })
    };
    let config_arg = config_path.display().to_string();
    let out = run(vec![
        "accept-file".into(),
        "--config".into(),
        config_arg.clone(),
    ])
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value =
        serde_json::from_str(stdout.trim()).expect("prints the JSON answer");
    assert_eq!(answer["records"], 4, "{answer}");
    assert_eq!(counterparties(&gw), 4);

    // A file that cannot be taken: the answer printed, a failing exit.
    std::fs::write(gw.directory_file(), "not json\n").expect("rewrite");
    let out = run(vec![
        "accept-file".into(),
        "--config".into(),
        config_arg.clone(),
        "--url".into(),
        format!("http://{}", gw.addr),
    ])
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("line 1"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("422"));
    assert_eq!(counterparties(&gw), 4);

    // No gateway there: a failing exit that says so.
    let closed = format!("http://127.0.0.1:{}", support::process::free_port());
    let out = run(vec![
        "accept-file".into(),
        "-c".into(),
        config_arg,
        "--url".into(),
        closed,
    ])
    .await
    .expect("join");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot connect"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
