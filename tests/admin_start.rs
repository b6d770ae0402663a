//! Start-up as an admin meets it (issue #16, items 2-4): a config that
//! cannot silently turn logging or a feature off, paths that mean the same
//! from any folder, fatal errors that read as messages (in the log's own
//! format), and signals that find a handler from the first instant.
//!
//! The binary runs as a child process: its output, its exit and the signals
//! it gets are what is checked.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::process::{free_port, run_to_end, Child};
use support::{element_text, say_name_data, say_name_envelope, soap, DIRECTORY};

/// A config that names its files relative to its own folder.
fn relative_config(listen: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "{listen}"
[soap]
username = "SOAP"
password = "123"
[directory]
file = "counterparties.jsonl"
watch_interval = "0s"
settle = "0s"
[store]
path = "var/store.sqlite"
{extra}
"#
    )
}

fn binary() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cti-gateway"));
    command.env_remove("RUST_LOG");
    command
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn check_config(config: &Path) -> Output {
    let mut command = binary();
    command.arg("check-config").arg("--config").arg(config);
    run_to_end(command)
}

#[test]
fn a_misspelt_log_level_stops_check_config_and_serve_naming_the_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), DIRECTORY).expect("directory");
    for level in ["warning", "verbose"] {
        let config = dir.path().join("gateway.toml");
        std::fs::write(
            &config,
            relative_config("127.0.0.1:1", &format!("[log]\nlevel = \"{level}\"\n")),
        )
        .expect("config");
        let checked = check_config(&config);
        assert!(!checked.status.success(), "{level}: {}", stdout(&checked));
        assert!(
            stderr(&checked).contains("log.level"),
            "{}",
            stderr(&checked)
        );
        let mut serve = binary();
        serve.arg("serve").arg("--config").arg(&config);
        let served = run_to_end(serve);
        assert!(!served.status.success());
        assert!(stderr(&served).contains("log.level"), "{}", stderr(&served));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_paths_mean_the_config_files_folder_from_any_current_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let elsewhere = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), DIRECTORY).expect("directory");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, relative_config(&addr.to_string(), "")).expect("config");

    let mut checked = binary();
    checked
        .arg("check-config")
        .arg("--config")
        .arg(&config)
        .current_dir(elsewhere.path());
    let checked = run_to_end(checked);
    assert!(checked.status.success(), "{}", stderr(&checked));

    let log = elsewhere.path().join("serve.log");
    let out = std::fs::File::create(&log).expect("log");
    let mut serve = binary();
    serve
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .current_dir(elsewhere.path())
        .stdout(out.try_clone().expect("fd"))
        .stderr(out);
    let child = Child::start(serve, addr, "/readyz").await;
    let reply = soap(addr, &say_name_envelope("89235292926")).await;
    let title = element_text(&say_name_data(&reply), "title")
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        title, "Фэйковый чиж",
        "the directory beside the config is read"
    );
    child.stop().await;
    assert!(dir.path().join("var/store.sqlite").is_file());
    assert!(
        !elsewhere.path().join("var").exists(),
        "nothing is made in the current directory"
    );
    let printed = std::fs::read_to_string(&log).expect("log");
    assert!(printed.contains("(3 counterparties loaded)"), "{printed}");
}

#[test]
fn check_config_checks_the_directory_file_and_the_store_folder() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("gateway.toml");
    // No directory file, and a store under a plain file (which no user can
    // make a folder of, root included).
    std::fs::write(dir.path().join("not-a-folder"), "x").expect("file");
    std::fs::write(
        &config,
        relative_config("127.0.0.1:1", "").replace("var/store.sqlite", "not-a-folder/s.sqlite"),
    )
    .expect("config");
    let checked = check_config(&config);
    assert!(!checked.status.success(), "{}", stdout(&checked));
    let said = stderr(&checked);
    assert!(
        said.contains("directory.file") && said.contains("counterparties.jsonl"),
        "{said}"
    );
    assert!(
        said.contains("store.path") && said.contains("not a folder"),
        "{said}"
    );
    assert_eq!(said.lines().count(), 1, "one line: {said}");

    // Both fixed: OK, and the features left off are noted.
    std::fs::write(dir.path().join("counterparties.jsonl"), DIRECTORY).expect("directory");
    std::fs::write(&config, relative_config("127.0.0.1:1", "")).expect("config");
    let checked = check_config(&config);
    assert!(checked.status.success(), "{}", stderr(&checked));
    let said = stdout(&checked);
    assert!(said.contains("OK"), "{said}");
    assert!(said.contains("api.token is not set"), "{said}");
    assert!(said.contains("no [[operator]]"), "{said}");
}

#[test]
fn a_fatal_error_is_one_message_without_a_backtrace_or_repeated_causes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut serve = binary();
    serve
        .arg("serve")
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .env("RUST_BACKTRACE", "1");
    let served = run_to_end(serve);
    assert!(!served.status.success());
    let said = stderr(&served);
    assert_eq!(said.lines().count(), 1, "one line: {said}");
    assert!(said.contains("missing.toml"), "{said}");
    assert_eq!(said.matches("os error 2").count(), 1, "{said}");
    assert!(
        !said.contains("Caused by") && !said.contains("backtrace"),
        "{said}"
    );

    // --verbose asks for the details.
    let mut serve = binary();
    serve
        .arg("--verbose")
        .arg("serve")
        .arg("--config")
        .arg(dir.path().join("missing.toml"));
    let said = stderr(&run_to_end(serve));
    assert!(said.lines().count() > 1, "{said}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_clash_is_a_json_line_with_json_logs_and_leaves_no_store_behind() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), DIRECTORY).expect("directory");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = taken.local_addr().expect("addr");
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        relative_config(&addr.to_string(), "[log]\nformat = \"json\"\n"),
    )
    .expect("config");
    let mut serve = binary();
    serve
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("RUST_BACKTRACE", "full");
    let served = run_to_end(serve);
    assert!(!served.status.success());
    let said = stderr(&served);
    for line in said.lines() {
        let parsed: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n{said}"));
        assert!(parsed.get("level").is_some(), "{line}");
    }
    let last: serde_json::Value =
        serde_json::from_str(said.lines().last().expect("a line")).expect("json");
    assert_eq!(last["level"], "ERROR", "{said}");
    assert!(
        last["message"]
            .as_str()
            .is_some_and(|m| m.contains(&addr.to_string())),
        "{said}"
    );
    assert!(
        !dir.path().join("var").exists(),
        "a port clash created the store's folder"
    );

    // A config that does not load is still reported in its log format.
    std::fs::write(
        &config,
        relative_config(
            &addr.to_string(),
            "[log]\nformat = \"json\"\nlevel = \"loud\"\n",
        ),
    )
    .expect("config");
    let mut serve = binary();
    serve.arg("serve").arg("--config").arg(&config);
    let said = stderr(&run_to_end(serve));
    let line: serde_json::Value = serde_json::from_str(said.trim()).expect("one JSON line");
    assert!(
        line["message"]
            .as_str()
            .is_some_and(|m| m.contains("log.level")),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn features_left_off_are_said_at_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), DIRECTORY).expect("directory");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, relative_config(&addr.to_string(), "")).expect("config");
    let log = dir.path().join("serve.log");
    let child = Child::start(
        support::process::serve_command(&config, &log),
        addr,
        "/readyz",
    )
    .await;
    child.stop().await;
    let printed = std::fs::read_to_string(&log).expect("log");
    for line in [
        "push API, call journal and admin endpoints off: api.token is not set",
        "operator screens off: no [[operator]]",
        "directory file watching off",
    ] {
        assert!(printed.contains(line), "{line}: {printed}");
    }
}

/// 20,000 counterparties: a load long enough that a signal lands during it.
fn big_directory(extra: usize) -> String {
    let mut text = String::new();
    for i in 0..20_000 + extra {
        text.push_str(&format!(
            "{{\"id\":\"big-{i}\",\"name\":\"Контрагент {i}\",\"phones\":[\"8913{i:07}\"]}}\n"
        ));
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_50_ms_after_exec_is_a_reload_not_a_death() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), big_directory(0)).expect("directory");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, relative_config(&addr.to_string(), "")).expect("config");
    let log = dir.path().join("serve.log");
    let mut child = support::process::serve_command(&config, &log)
        .spawn()
        .expect("the binary starts");
    std::thread::sleep(Duration::from_millis(50));
    // SAFETY: kill only sends a signal to our own child's pid.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGHUP);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            panic!(
                "the gateway died of an early SIGHUP: {status}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if tokio::net::TcpStream::connect(addr).await.is_ok()
            && support::get(addr, "/readyz").await.status == 200
        {
            break;
        }
        assert!(Instant::now() < deadline, "not ready within 30 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let child = Child(child);

    // Later, a SIGHUP still reloads: one more record, found after it.
    std::fs::write(dir.path().join("counterparties.jsonl"), big_directory(1)).expect("directory");
    // SAFETY: as above.
    unsafe {
        libc::kill(child.0.id() as libc::pid_t, libc::SIGHUP);
    }
    let number = "89130020000";
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = soap(addr, &say_name_envelope(number)).await;
        let title = element_text(&say_name_data(&reply), "title")
            .unwrap_or_default()
            .to_owned();
        if title == "Контрагент 20000" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reload did not come: {title:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.stop().await;
    let printed = std::fs::read_to_string(&log).expect("log");
    assert!(
        printed.matches("SIGHUP: reloading").count() >= 2,
        "{printed}"
    );
}
