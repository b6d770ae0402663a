//! The request id on every log line of a request (issue #16, item 5), on
//! the real binary and its JSON log: each line a request writes names it as
//! `request_id`, the value its answer's `X-Request-Id` header had (for a
//! WebSocket screen, the upgrade answer's, on every line of the screen's
//! connection to its end). A push committed with others names each of their
//! ids, comma-separated.
//!
//! Covered: a push, a refused push, a delete, a journal query refused, an
//! IncomingCall (its 200 names its id too), one for a key no operator has,
//! a SOAP fault, a WebSocket screen's connect and close, a long-poll,
//! accept-file, a backup; and on a full disk, the refused push's and the
//! refused IncomingCall's lines.

mod support;

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use support::process::{free_port, serve_command, Child};
use support::{
    bulky_batch, config_text_on, get, incoming_call_envelope, request, soap, DIRECTORY,
    OPERATOR_KEY, OPERATOR_TOKEN,
};

const API_TOKEN: &str = "api-token-for-tests";

/// Modules whose lines are written while serving a request. The store's
/// writer and the sources' background loops serve no request of their own.
const REQUEST_TARGETS: &[&str] = &[
    "cti_gateway::http",
    "cti_gateway::vats",
    "cti_gateway::sources::push",
    "cti_gateway::popup::websocket",
];

/// The binary over `dir`'s config, its stdout and stderr copied line by
/// line into `dir/<log>` by threads of this process (so that a file-size
/// limit on the gateway does not cut its log); with `file_limit`, every
/// file the gateway writes is limited to that many bytes (RLIMIT_FSIZE,
/// SIGXFSZ ignored: a write past it fails as on a full disk).
async fn start(
    dir: &Path,
    addr: SocketAddr,
    log: &str,
    file_limit: Option<u64>,
) -> (Child, PathBuf) {
    let log_path = dir.join(log);
    let mut command = serve_command(&dir.join("gateway.toml"), &dir.join("unused.log"));
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(limit) = file_limit {
        // SAFETY: between fork and exec only async-signal-safe calls
        // (signal, setrlimit) on plain values.
        unsafe {
            command.pre_exec(move || {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let rlimit = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &rlimit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = Child(command.spawn().expect("the gateway binary starts"));
    let file = std::fs::File::create(&log_path).expect("log file");
    let out = child.0.stdout.take().expect("stdout");
    let err = child.0.stderr.take().expect("stderr");
    for pipe in [
        Box::new(out) as Box<dyn std::io::Read + Send>,
        Box::new(err) as Box<dyn std::io::Read + Send>,
    ] {
        let mut file = file.try_clone().expect("log fd");
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                // One write per line: the two threads' lines never interleave.
                let _ = file.write_all(format!("{line}\n").as_bytes());
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(status)) = child.0.try_wait() {
            panic!(
                "the gateway exited at start: {status}\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && get(addr, "/readyz").await.status == 200
        {
            return (child, log_path);
        }
        assert!(
            Instant::now() < deadline,
            "the gateway was not ready within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A config in JSON log format, the gateway's own debug lines included.
fn write_config(dir: &Path, addr: SocketAddr) {
    std::fs::write(dir.join("counterparties.jsonl"), DIRECTORY).expect("directory");
    let config = config_text_on(
        dir,
        &addr.to_string(),
        "[log]\nlevel = \"info,cti_gateway=debug\"\nformat = \"json\"",
    );
    std::fs::write(dir.join("gateway.toml"), config).expect("config");
}

/// The log's lines as JSON, from byte `from` on.
fn lines_from(log: &Path, from: usize) -> Vec<serde_json::Value> {
    let text = std::fs::read(log).unwrap_or_default();
    String::from_utf8_lossy(text.get(from..).unwrap_or_default())
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn log_len(log: &Path) -> usize {
    std::fs::metadata(log).map_or(0, |m| m.len() as usize)
}

fn message(line: &serde_json::Value) -> &str {
    line["message"].as_str().unwrap_or("")
}

/// Whether `line` names `id` in its `request_id` (alone or in a list).
fn names(line: &serde_json::Value, id: &str) -> bool {
    line["request_id"]
        .as_str()
        .is_some_and(|ids| ids.split(',').any(|i| i == id))
}

/// Waits (5 s at most) until the log has, from byte `from` on, a line for
/// each of `messages` (a line whose message starts with it) that names
/// `id`; checks that every line a request's module wrote meanwhile names a
/// request (lines of the request before may still come in: the log is
/// copied from the gateway's pipes). Answers the lines.
async fn lines_name(
    log: &Path,
    from: usize,
    messages: &[&str],
    id: &str,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let lines = lines_from(log, from);
        let all_there = messages.iter().all(|m| {
            lines
                .iter()
                .any(|l| message(l).starts_with(m) && names(l, id))
        });
        if all_there {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "no line naming request {id} for each of {messages:?} in the log since it was sent:\n{lines:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for line in &lines {
        let target = line["target"].as_str().unwrap_or("");
        if REQUEST_TARGETS.iter().any(|t| target.starts_with(t)) {
            assert!(
                line["request_id"].as_str().is_some_and(|r| !r.is_empty()),
                "a line written for a request names none:\n{line:#}"
            );
        }
    }
    lines
}

fn request_id(reply: &support::Reply) -> String {
    reply
        .header("x-request-id")
        .unwrap_or_else(|| panic!("no X-Request-Id: {} {}", reply.status, reply.body))
        .to_owned()
}

async fn api(addr: SocketAddr, method: &str, path: &str, body: &str) -> support::Reply {
    let auth = format!("Authorization: Bearer {API_TOKEN}");
    request(
        addr,
        method,
        path,
        &["Content-Type: application/json", &auth],
        body.as_bytes(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_of_a_request_names_the_id_its_answer_had() {
    let dir = tempfile::tempdir().expect("temp dir");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    write_config(dir.path(), addr);
    let (gw, log) = start(dir.path(), addr, "gateway.log", None).await;

    // A push, accepted.
    let from = log_len(&log);
    let body = r#"[{"id":"rid-1","name":"ООО Тест","phones":["89130000001"]}]"#;
    let reply = api(addr, "POST", "/api/v1/counterparties", body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    lines_name(
        &log,
        from,
        &["push: counterparties upserted"],
        &request_id(&reply),
    )
    .await;

    // A push refused: the endpoint's reason and the front's warning.
    let from = log_len(&log);
    let reply = api(addr, "POST", "/api/v1/counterparties", "[{").await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let id = request_id(&reply);
    lines_name(
        &log,
        from,
        &["push API request refused", "request refused"],
        &id,
    )
    .await;

    // Deletes: one that removes, one of an id no source has.
    let from = log_len(&log);
    let reply = api(addr, "DELETE", "/api/v1/counterparties/rid-1", "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    lines_name(
        &log,
        from,
        &["push: counterparty removed"],
        &request_id(&reply),
    )
    .await;
    let from = log_len(&log);
    let reply = api(addr, "DELETE", "/api/v1/counterparties/nobody", "").await;
    assert_eq!(reply.status, 404, "{}", reply.body);
    lines_name(
        &log,
        from,
        &["push: delete of an id no source has"],
        &request_id(&reply),
    )
    .await;

    // A journal query refused.
    let from = log_len(&log);
    let reply = api(addr, "GET", "/api/v1/calls?nmber=1", "").await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    lines_name(&log, from, &["request refused"], &request_id(&reply)).await;

    // An IncomingCall: its 200 names the id of its line.
    let from = log_len(&log);
    let reply = soap(addr, &incoming_call_envelope("89235292926", OPERATOR_KEY)).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    lines_name(&log, from, &["incoming call"], &request_id(&reply)).await;
    // For a key no operator has: the warning names it.
    let from = log_len(&log);
    let reply = soap(addr, &incoming_call_envelope("89235292926", "nobodys-key")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let id = request_id(&reply);
    lines_name(
        &log,
        from,
        &[
            "incoming call for a key no [[operator]] has",
            "incoming call",
        ],
        &id,
    )
    .await;
    // A SOAP request that cannot be read: a fault.
    let from = log_len(&log);
    let reply = soap(addr, "<not-soap/>").await;
    assert_eq!(reply.status, 500, "{}", reply.body);
    lines_name(
        &log,
        from,
        &["unreadable SOAP request", "request refused"],
        &request_id(&reply),
    )
    .await;
    // A SayName answer carries no id: it logs nothing.
    let reply = soap(addr, &support::say_name_envelope("89235292926")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-request-id"), None);

    // A WebSocket screen: connect and close name the upgrade's id.
    let from = log_len(&log);
    let ws_request = format!("ws://{addr}/operator/ws?token={OPERATOR_TOKEN}")
        .into_client_request()
        .expect("request");
    let (mut screen, upgrade) = tokio_tungstenite::connect_async(ws_request)
        .await
        .expect("a screen connects");
    let id = upgrade
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("the upgrade answer has an X-Request-Id")
        .to_owned();
    lines_name(&log, from, &["operator screen connected (WebSocket)"], &id).await;
    screen.close(None).await.expect("close");
    drop(screen);
    lines_name(&log, from, &["operator screen disconnected"], &id).await;

    // A long-poll.
    let from = log_len(&log);
    let reply = get(
        addr,
        &format!("/operator/events?token={OPERATOR_TOKEN}&after=0&wait=1"),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    lines_name(
        &log,
        from,
        &["operator screen's long-poll answered"],
        &request_id(&reply),
    )
    .await;

    // The admin's: accept-file and a backup.
    let from = log_len(&log);
    let reply = api(addr, "POST", "/api/v1/admin/accept-file", "").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    lines_name(
        &log,
        from,
        &["accept-file: taking the directory file"],
        &request_id(&reply),
    )
    .await;
    let backups = dir.path().join("backups");
    std::fs::create_dir(&backups).expect("backup folder");
    let from = log_len(&log);
    let body = serde_json::json!({ "to": backups }).to_string();
    let reply = api(addr, "POST", "/api/v1/admin/backup", &body).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let id = request_id(&reply);
    lines_name(
        &log,
        from,
        &[
            "backup: copying the store files",
            "backup: store file copied",
        ],
        &id,
    )
    .await;

    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_full_disk_the_refused_push_and_call_are_named() {
    let dir = tempfile::tempdir().expect("temp dir");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    write_config(dir.path(), addr);
    // A first run creates the store.
    start(dir.path(), addr, "run1.log", None)
        .await
        .0
        .stop()
        .await;
    let store_size = std::fs::metadata(dir.path().join("store.sqlite"))
        .expect("store file")
        .len();
    let (gw, log) = start(dir.path(), addr, "run2.log", Some(store_size + 256 * 1024)).await;

    // Pushes until the store refuses one: the refusal's line names it.
    let mut refused = None;
    for round in 0..200 {
        let from = log_len(&log);
        let reply = api(
            addr,
            "POST",
            "/api/v1/counterparties",
            &bulky_batch(round * 50, 50),
        )
        .await;
        match reply.status {
            200 => {}
            503 => {
                refused = Some((from, request_id(&reply)));
                break;
            }
            other => panic!("push {round}: {other} {}", reply.body),
        }
    }
    let (from, id) = refused.expect("the store filled up within 10,000 records");
    lines_name(&log, from, &["push not saved"], &id).await;

    // IncomingCalls until one is not journaled: its fault and its line name it.
    for i in 0..20 {
        let from = log_len(&log);
        let reply = soap(
            addr,
            &incoming_call_envelope(&format!("8914000{i:04}"), OPERATOR_KEY),
        )
        .await;
        if reply.status == 500 {
            let id = request_id(&reply);
            lines_name(&log, from, &["incoming call not journaled"], &id).await;
            gw.stop().await;
            return;
        }
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    panic!("no IncomingCall was refused by the full store");
}
