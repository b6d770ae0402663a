//! A full disk: the real binary runs with a file-size limit (RLIMIT_FSIZE,
//! SIGXFSZ ignored: every write past the limit fails with EFBIG, as on a
//! full disk), pushes go on until the store refuses them. A refused push is
//! never answered 2xx, SayName keeps answering from memory, IncomingCall
//! answers `1` only for calls it journaled, the log says what happened; and
//! after a restart with room again, everything acknowledged is there.

mod support;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::Path;

use support::process::{free_port, serve_command, Child};
use support::{
    bulky_batch, config_text_on, element_text, get, incoming_call_envelope, request,
    say_name_envelope, soap, unescape, DIRECTORY, OPERATOR_KEY, SEED_AUTH, SOAP_PATH,
};

const API_TOKEN: &str = "api-token-for-tests";

/// Starts the binary over `dir`'s config; with `file_limit`, every file it
/// writes is limited to that many bytes.
async fn start(dir: &Path, addr: SocketAddr, log: &str, file_limit: Option<u64>) -> Child {
    let mut command = serve_command(&dir.join("gateway.toml"), &dir.join(log));
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
    Child::start(command, addr, "/readyz").await
}

async fn title(addr: SocketAddr, number: &str) -> String {
    let reply = request(
        addr,
        "POST",
        SOAP_PATH,
        &[
            "Content-Type: text/xml; charset=utf-8",
            &format!("Authorization: {SEED_AUTH}"),
        ],
        say_name_envelope(number).as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "SayName {number}: {}", reply.body);
    let data = unescape(element_text(&reply.body, "m:return").unwrap_or_default());
    element_text(&data, "title").unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_full_disk_pushes_are_refused_never_acknowledged_and_say_name_keeps_answering() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), DIRECTORY).expect("directory");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let config = config_text_on(dir.path(), &addr.to_string(), "[log]\nlevel = \"info\"");
    std::fs::write(dir.path().join("gateway.toml"), config).expect("config");

    // A first run creates the store and its snapshot of the file.
    start(dir.path(), addr, "run1.log", None).await.stop().await;
    let store_size = std::fs::metadata(dir.path().join("store.sqlite"))
        .expect("store file")
        .len();

    // Room for the store as it is and a little more.
    let limit = store_size + 256 * 1024;
    let gw = start(dir.path(), addr, "run2.log", Some(limit)).await;
    let auth = format!("Authorization: Bearer {API_TOKEN}");
    let mut acknowledged = Vec::new();
    let mut refused = None;
    for round in 0..200 {
        let first = round * 50;
        let reply = request(
            addr,
            "POST",
            "/api/v1/counterparties",
            &["Content-Type: application/json", &auth],
            bulky_batch(first, 50).as_bytes(),
        )
        .await;
        match reply.status {
            200 => acknowledged.extend(first..first + 50),
            503 => {
                refused = Some((first, reply.body));
                break;
            }
            other => panic!("push {round}: {other} {}", reply.body),
        }
    }
    let (refused_first, body) = refused.expect("the store filled up within 10,000 records");
    assert!(
        body.contains("not saved") && body.contains("retry"),
        "the refusal says so: {body}"
    );
    assert!(
        !acknowledged.is_empty(),
        "some pushes fitted before the disk was full"
    );

    // SayName answers from memory: the file's callers and the acknowledged
    // pushes; the refused batch was not applied.
    assert_eq!(title(addr, "89235292926").await, "Фэйковый чиж");
    let last = *acknowledged.last().expect("one");
    assert!(title(addr, &format!("8913{last:07}"))
        .await
        .starts_with(&format!("ООО \"Запись {last}\"")));
    assert_eq!(title(addr, &format!("8913{refused_first:07}")).await, "");

    // IncomingCall: `1` only for a call that was journaled.
    let mut answered_one = Vec::new();
    for i in 0..5 {
        let number = format!("8914000000{i}");
        let reply = soap(addr, &incoming_call_envelope(&number, OPERATOR_KEY)).await;
        match reply.status {
            200 if element_text(&reply.body, "m:return") == Some("1") => answered_one.push(number),
            500 => assert!(reply.body.contains("Fault"), "a SOAP fault: {}", reply.body),
            other => panic!("IncomingCall {number}: {other} {}", reply.body),
        }
    }
    // The metrics say so: the refused push, and every call not journaled.
    let metrics = get(addr, "/metrics").await.body;
    let errors = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && l.contains("outcome=\"error\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(
        errors("cti_store_snapshot_writes_total") >= 1.0,
        "the refused push counts as a failed store write:\n{metrics}"
    );
    assert_eq!(
        errors("cti_store_journal_writes_total"),
        (5 - answered_one.len()) as f64,
        "every call not journaled is counted"
    );
    // A storm: calls and pushes go on against the full store. Each kind of
    // refused work is one line when it begins, not one per request, and the
    // writer's own WARN is not repeated because a small write fits between.
    let mut storm_refused = (0, 0);
    for i in 0..40 {
        let number = format!("8915000{i:04}");
        let reply = soap(addr, &incoming_call_envelope(&number, OPERATOR_KEY)).await;
        if reply.status == 500 {
            storm_refused.0 += 1;
        }
        if i % 4 == 0 {
            let reply = request(
                addr,
                "POST",
                "/api/v1/counterparties",
                &["Content-Type: application/json", &auth],
                bulky_batch(100_000 + i * 50, 50).as_bytes(),
            )
            .await;
            if reply.status == 503 {
                storm_refused.1 += 1;
            }
        }
    }
    let log2 = std::fs::read_to_string(dir.path().join("run2.log")).unwrap_or_default();
    let lines_with = |what: &str| log2.lines().filter(|l| l.contains(what)).count();
    assert!(
        storm_refused.0 >= 10 && storm_refused.1 >= 5,
        "the storm was refused: {storm_refused:?}"
    );
    assert!(
        lines_with("incoming call not journaled") <= 1,
        "one line for refused calls, not one per call:\n{log2}"
    );
    assert!(
        lines_with("push not saved") <= 1,
        "one line for refused pushes, not one per push:\n{log2}"
    );
    assert!(
        lines_with("store write failed") <= 3,
        "the writer's WARN once per kind of failure:\n{log2}"
    );
    assert!(
        log2.lines()
            .any(|l| (l.contains("ERROR") || l.contains("WARN")) && l.contains("store")),
        "the log says the store failed:\n{log2}"
    );
    eprintln!(
        "file limit {limit} bytes: {} records acknowledged, the batch from {refused_first} refused; {} of 5 calls answered 1; store lines in the log:",
        acknowledged.len(),
        answered_one.len()
    );
    for line in log2.lines().filter(|l| l.contains("store")) {
        eprintln!("  {line}");
    }
    gw.stop().await;

    // Room again: everything acknowledged is there, the store opens.
    let gw = start(dir.path(), addr, "run3.log", None).await;
    // /readyz is 200 once the first snapshot set is in; the pushed set
    // follows it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !get(addr, "/readyz").await.body.contains("\"push\"") {
        assert!(
            std::time::Instant::now() < deadline,
            "the push set was not loaded"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    for i in acknowledged.iter().step_by(7).chain(std::iter::once(&last)) {
        assert!(
            title(addr, &format!("8913{i:07}"))
                .await
                .starts_with(&format!("ООО \"Запись {i}\"")),
            "acknowledged record {i} is there after the restart"
        );
    }
    assert_eq!(title(addr, &format!("8913{refused_first:07}")).await, "");
    let calls = request(addr, "GET", "/api/v1/calls?limit=100", &[&auth], b"").await;
    assert_eq!(calls.status, 200, "{}", calls.body);
    for number in &answered_one {
        assert!(
            calls.body.contains(&number[1..]),
            "a call answered 1 is in the journal: {number}: {}",
            calls.body
        );
    }
    gw.stop().await;
}
