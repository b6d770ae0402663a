//! No published or trivial secrets, no reflected host, private files
//! (issue 15, item 6), against a running gateway and its binary:
//!
//! - `check-config` and `serve` refuse a published or short secret when the
//!   listener is not on loopback, naming the key;
//! - the WSDL names the `Host` only when it is the address reached or one
//!   of `server.names`, and is never cached;
//! - the store's folder is 0700 and its files 0600 under umask 022, and
//!   files and a folder an earlier version left open are tightened;
//! - `/readyz` shows its error texts only to `metrics.allow_from`.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use cti_gateway::config::Config;
use cti_gateway::Gateway;
use support::*;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn wsdl_address(body: &str) -> &str {
    let start = body.find("location=\"").expect("a soap:address location") + 10;
    let len = body[start..].find('"').expect("closing quote");
    &body[start..start + len]
}

// ------------------------------------------------------------ secrets

#[test]
fn check_config_refuses_published_and_short_secrets_off_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    // check-config also checks that the directory file can be read.
    std::fs::write(dir.path().join("counterparties.jsonl"), support::DIRECTORY)
        .expect("directory file");
    let file = dir.path().join("gateway.toml");
    let check = |text: String| support::process::check_config(&file, &text);
    // The tests' config (password "123") is fine on loopback...
    let loopback = check(config_text_on(dir.path(), "127.0.0.1:8080", ""));
    assert!(
        loopback.status.success(),
        "{}",
        String::from_utf8_lossy(&loopback.stderr)
    );
    // ... and refused on an address other machines reach, by its key.
    let public = config_text_on(dir.path(), "0.0.0.0:8080", "");
    let refused = check(public.clone());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("soap.password") && stderr.contains("published"),
        "{stderr}"
    );
    let own = "a-password-of-our-own";
    let refused = check(public.replace("password = \"123\"", &format!("password = \"{own}\"")));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("operator[0].token") && stderr.contains("published"),
        "{stderr}"
    );
}

#[tokio::test]
async fn serve_with_listen_off_loopback_checks_the_secrets_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("gateway.toml");
    std::fs::write(&file, config_text(dir.path(), "")).expect("write config");
    std::fs::write(dir.path().join("counterparties.jsonl"), DIRECTORY).expect("directory");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cti-gateway"))
        .args(["serve", "--listen", "0.0.0.0:0", "--config"])
        .arg(&file)
        .env_remove("CTI_SOAP_PASSWORD")
        .output()
        .expect("run cti-gateway serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("soap.password"), "{stderr}");
    // Demo mode, whose secrets are all published, stays on loopback.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cti-gateway"))
        .args(["serve", "--listen", "0.0.0.0:0"])
        .env("CTI_DEMO_DIR", dir.path().join("demo"))
        .output()
        .expect("run cti-gateway serve");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("demo mode"), "{stderr}");
}

// ------------------------------------------------------------ WSDL host

#[tokio::test]
async fn the_wsdl_names_only_a_known_host_and_is_never_cached() {
    let gw = start("server.names = [\"gw.corp.ru\", \"pbx-gw.corp.ru:8443\"]").await;
    let wsdl = |host: &'static str| {
        let addr = gw.addr;
        async move {
            let request = format!(
                "GET {SOAP_PATH}?wsdl HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            );
            raw(addr, request.as_bytes()).await
        }
    };
    let reached = format!("http://{}{SOAP_PATH}", gw.addr);
    for (host, expected) in [
        ("gw.corp.ru@evil.example", reached.clone()),
        ("evil.example", reached.clone()),
        ("gw.corp.ru.evil.example:8080", reached.clone()),
        ("pbx-gw.corp.ru:9999", reached.clone()),
        ("127.0.0.1:1", reached.clone()),
        (
            "gw.corp.ru:8080",
            format!("http://gw.corp.ru:8080{SOAP_PATH}"),
        ),
        ("GW.corp.ru", format!("http://GW.corp.ru{SOAP_PATH}")),
        (
            "pbx-gw.corp.ru:8443",
            format!("http://pbx-gw.corp.ru:8443{SOAP_PATH}"),
        ),
    ] {
        let reply = wsdl(host).await;
        assert_eq!(reply.status, 200, "{host}: {}", reply.body);
        assert_eq!(wsdl_address(&reply.body), expected, "Host: {host}");
        assert!(!reply.body.contains("evil"), "{host}");
        assert_eq!(reply.header("cache-control"), Some("no-store"), "{host}");
    }
    // The address reached, as the client wrote it, is taken as it is.
    let reply = get(gw.addr, &format!("{SOAP_PATH}?wsdl")).await;
    assert_eq!(wsdl_address(&reply.body), reached);
}

// ------------------------------------------------------------ store files

/// A gateway whose store is `store` (the rest as the tests' config).
async fn start_with_store(dir: &Path, store: &Path) -> Gateway {
    std::fs::write(dir.join("counterparties.jsonl"), DIRECTORY).expect("directory");
    let default_store = format!("path = \"{}\"", dir.join("store.sqlite").display());
    let text =
        config_text(dir, "").replace(&default_store, &format!("path = \"{}\"", store.display()));
    let config = Config::parse(&text, &dir.join("gateway.toml"), &|_| None).expect("config");
    Gateway::start(config).await.expect("gateway starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_folder_and_files_are_private_whatever_the_umask() {
    // SAFETY: umask only sets this process's file creation mask; no other
    // test in this binary depends on it.
    let before = unsafe { libc::umask(0o022) };
    let dir = tempfile::tempdir().expect("tempdir");

    // A new store in a new folder: 0700 and 0600.
    let store = dir.path().join("var/lib/store.sqlite");
    let gw = start_with_store(dir.path(), &store).await;
    let reply = soap(
        gw.local_addr(),
        &incoming_call_envelope("89235292926", OPERATOR_KEY),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let var = dir.path().join("var");
    assert_eq!(mode(&var), 0o700, "created parents too");
    assert_eq!(mode(&var.join("lib")), 0o700);
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{}{suffix}", store.display());
        assert_eq!(mode(Path::new(&file)), 0o600, "{file}");
    }
    gw.shutdown().await;

    // What an earlier version left: the folder 0755, the files 0644.
    std::fs::set_permissions(var.join("lib"), PermissionsExt::from_mode(0o755)).expect("chmod");
    for entry in std::fs::read_dir(var.join("lib")).expect("ls") {
        let path = entry.expect("entry").path();
        std::fs::set_permissions(&path, PermissionsExt::from_mode(0o644)).expect("chmod");
    }
    let gw = start_with_store(dir.path(), &store).await;
    assert_eq!(
        mode(&var.join("lib")),
        0o700,
        "the store's own folder tightened"
    );
    for entry in std::fs::read_dir(var.join("lib")).expect("ls") {
        let path = entry.expect("entry").path();
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    gw.shutdown().await;

    // A folder shared with other files is left as it is; the store's files
    // in it are private all the same.
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).expect("mkdir");
    std::fs::set_permissions(&shared, PermissionsExt::from_mode(0o755)).expect("chmod");
    std::fs::write(shared.join("README.txt"), "not the store's").expect("write");
    let gw = start_with_store(dir.path(), &shared.join("store.sqlite")).await;
    assert_eq!(mode(&shared), 0o755);
    assert_eq!(mode(&shared.join("store.sqlite")), 0o600);
    gw.shutdown().await;

    // SAFETY: as above.
    unsafe { libc::umask(before) };
}

// ------------------------------------------------------------ /readyz

#[tokio::test]
async fn readyz_error_texts_are_for_metrics_allow_from_only() {
    let gw = start("[metrics]\nallow_from = [\"127.0.0.1\"]").await;
    // An empty file is refused by the shrink guard: the file source fails.
    std::fs::write(gw.directory_file(), "").expect(": > file");
    let readyz_from = |source: &'static str| {
        let addr = gw.addr;
        async move {
            let reply = request_from(source, addr, "GET", "/readyz", &[], b"").await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            serde_json::from_str::<serde_json::Value>(&reply.body).expect("json")
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let allowed = loop {
        let ready = readyz_from("127.0.0.1").await;
        if ready["sources"]["file"]["last_error"].is_string() {
            break ready;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never failing: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(allowed["sources"]["file"]["state"], "failing");
    let other = readyz_from("127.0.0.2").await;
    // The same status, without the text.
    assert_eq!(other["ready"], true, "{other}");
    assert_eq!(other["failing_sources"], serde_json::json!(["file"]));
    assert_eq!(other["sources"]["file"]["state"], "failing", "{other}");
    assert!(
        other["sources"]["file"].get("last_error").is_none(),
        "{other}"
    );
    // And /metrics itself is refused there, as before.
    let reply = request_from("127.0.0.2", gw.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(reply.status, 403);
}
