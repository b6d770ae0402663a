//! What a start makes of the store it finds: snapshot sets whose source is
//! no longer configured are kept but not loaded (a warning names them, and
//! `cti-gateway forget-source` drops them); a missing or empty store file
//! where a store was is refused unless `--new-store` is given; a damaged
//! file is refused with what that file holds.
//!
//! The binary runs as a child process where its log, its exit and its
//! subcommands are what is checked; the rest runs in-process.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cti_gateway::config::Config;
use cti_gateway::gateway::{onec_store_path, StartError};
use cti_gateway::store::{Store, StoreError};
use cti_gateway::Gateway;
use support::process::{free_port, run_to_end, serve_command, Child};
use support::*;

/// The seed's caller, listed in [`DIRECTORY`] (the file source).
const FILE_CALLER: &str = "89235292926";
/// The caller the tests push.
const PUSHED_CALLER: &str = "89120000001";
const PUSHED: &str =
    r#"[{"id":"p-1","name":"ООО Пушкин","manager_phone":"512","phones":["+7 912 000-00-01"]}]"#;
const BEARER: &str = "Authorization: Bearer api-token-for-tests";

/// The SayName `<title>` for `number` ("" when unknown).
async fn title(addr: SocketAddr, number: &str) -> String {
    let reply = soap(addr, &say_name_envelope(number)).await;
    assert_eq!(reply.status, 200, "SayName({number}): {}", reply.body);
    element_text(&say_name_data(&reply), "title")
        .unwrap_or_default()
        .to_owned()
}

/// A gateway over [`DIRECTORY`] in `dir`, with [`PUSHED`] pushed and both
/// the file's and the push's sets saved in the store; stopped when it returns.
async fn store_with_file_and_push_sets() -> tempfile::TempDir {
    let mut gw = start("").await;
    let reply = post(
        gw.addr,
        "/api/v1/counterparties",
        &["Content-Type: application/json", BEARER],
        PUSHED.as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(title(gw.addr, FILE_CALLER).await, "Фэйковый чиж");
    assert_eq!(title(gw.addr, PUSHED_CALLER).await, "ООО Пушкин");
    // The file's set is saved in the background after its load.
    let deadline = Instant::now() + Duration::from_secs(10);
    while gw
        .gateway()
        .store()
        .source_fingerprint("file")
        .await
        .expect("store readable")
        .is_none()
    {
        assert!(Instant::now() < deadline, "the file's set was never saved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.stop().await;
    gw.dir
}

/// A configuration with no `[directory]`, the push API's token, and
/// `[onec]` pointing where nothing listens: 1C is down from the start.
fn only_onec_config(dir: &Path, listen: &str) -> String {
    let store = dir.join("store.sqlite");
    format!(
        r#"
[server]
listen = "{listen}"
[soap]
username = "SOAP"
password = "123"
[store]
path = "{store}"
[api]
token = "api-token-for-tests"
[onec]
odata_url = "http://127.0.0.1:{closed}/base/odata/standard.odata"
username = "odata"
password = "secret"
refresh = "1h"
lookup_budget_ms = 100
timeout = "1s"
"#,
        store = store.display(),
        closed = free_port(),
    )
}

/// `cti-gateway forget-source ARGS…`, run to its end (20 s at most).
fn forget_source(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cti-gateway"));
    command
        .arg("forget-source")
        .args(args)
        .env_remove("RUST_LOG");
    run_to_end(command)
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sets_of_sources_no_longer_configured_stay_unloaded_until_forget_source_drops_them() {
    let dir = store_with_file_and_push_sets().await;
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let config = dir.path().join("only-onec.toml");
    std::fs::write(&config, only_onec_config(dir.path(), &addr.to_string())).expect("config");
    let config_arg = config.to_str().expect("utf-8 path");
    let log = dir.path().join("gateway.log");

    let child = Child::start(serve_command(&config, &log), addr, "/readyz").await;
    assert_eq!(
        title(addr, FILE_CALLER).await,
        "",
        "the file's set is not loaded without directory.file"
    );
    assert_eq!(
        title(addr, PUSHED_CALLER).await,
        "ООО Пушкин",
        "the push set is loaded while api.token is set"
    );
    // The running gateway has the store open: the command refuses and says why.
    let busy = forget_source(&["file", "--config", config_arg]);
    assert!(!busy.status.success(), "{}", text(&busy));
    assert!(
        text(&busy).contains("in use by another process")
            && text(&busy).contains("stop the gateway first"),
        "{}",
        text(&busy)
    );
    assert_eq!(title(addr, PUSHED_CALLER).await, "ООО Пушкин");
    child.stop().await;

    let printed = std::fs::read_to_string(&log).expect("log");
    let warning = printed
        .lines()
        .find(|l| l.contains("snapshot set not loaded"))
        .unwrap_or_else(|| panic!("a warning names the set not loaded: {printed}"));
    assert!(
        warning.contains("WARN")
            && warning.contains("source=file")
            && warning.contains("directory.file is not set")
            && warning.contains(&format!(
                "cti-gateway forget-source file --config {config_arg}"
            )),
        "{warning}"
    );
    assert!(
        !printed.contains("source=push"),
        "the push set is not reported: {printed}"
    );

    let unknown = forget_source(&["files", "--config", config_arg]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("no snapshot set named `files`")
            && text(&unknown).contains("file (3 rows, in")
            && text(&unknown).contains("push (1 row, in"),
        "an unknown name is refused with the names held: {}",
        text(&unknown)
    );

    let forgotten = forget_source(&["file", "--config", config_arg]);
    assert!(forgotten.status.success(), "{}", text(&forgotten));
    assert!(
        text(&forgotten).contains("removed 3 rows of the `file` snapshot set"),
        "{}",
        text(&forgotten)
    );

    let child = Child::start(serve_command(&config, &log), addr, "/readyz").await;
    assert_eq!(title(addr, PUSHED_CALLER).await, "ООО Пушкин");
    assert_eq!(title(addr, FILE_CALLER).await, "");
    child.stop().await;
    let printed = std::fs::read_to_string(&log).expect("log");
    assert!(
        !printed.contains("snapshot set not loaded"),
        "nothing left to warn about: {printed}"
    );
}

/// Starts a gateway from the test configuration with `edit` applied to its text.
async fn start_edited(
    dir: &Path,
    edit: impl FnOnce(String) -> String,
) -> Result<Gateway, StartError> {
    let path = dir.join("gateway.toml");
    let text = edit(config_text(dir, ""));
    let config = Config::parse(&text, &path, &|_| None).expect("valid config");
    Gateway::start(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_set_is_not_loaded_without_api_token_and_comes_back_with_it() {
    let dir = store_with_file_and_push_sets().await;
    let without_token = |text: String| text.replace("token = \"api-token-for-tests\"", "");
    let gw = start_edited(dir.path(), without_token)
        .await
        .expect("starts");
    let addr = gw.local_addr();
    assert_eq!(title(addr, PUSHED_CALLER).await, "");
    assert_eq!(title(addr, FILE_CALLER).await, "Фэйковый чиж");
    gw.shutdown().await;

    let gw = start_in(dir, "").await;
    assert_eq!(
        title(gw.addr, PUSHED_CALLER).await,
        "ООО Пушкин",
        "kept on disk meanwhile"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_store_file_is_refused_at_start_until_new_store_is_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("counterparties.jsonl"), DIRECTORY).expect("directory");
    let store = dir.path().join("store.sqlite");
    std::fs::write(&store, b"").expect("empty store file");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, config_text_on(dir.path(), &addr.to_string(), "")).expect("config");
    let log = dir.path().join("gateway.log");

    let refused = run_to_end(serve_command(&config, &log));
    assert!(
        !refused.status.success(),
        "a start on an empty store file is refused"
    );
    let printed = text(&refused);
    for part in [
        store.display().to_string().as_str(),
        "is empty (0 bytes)",
        "restore the file from a backup",
        "cti-gateway serve --new-store",
    ] {
        assert!(printed.contains(part), "{part:?} missing from: {printed}");
    }
    assert!(!printed.contains("migrated"), "{printed}");
    assert_eq!(
        std::fs::metadata(&store).expect("file").len(),
        0,
        "left alone"
    );

    let mut command = serve_command(&config, &log);
    command.arg("--new-store");
    let child = Child::start(command, addr, "/readyz").await;
    assert_eq!(title(addr, FILE_CALLER).await, "Фэйковый чиж");
    child.stop().await;
    let printed = std::fs::read_to_string(&log).expect("log");
    assert!(
        printed.contains("beginning with an empty store, as --new-store asks"),
        "{printed}"
    );

    // Written once, the store is an ordinary one: no flag needed.
    let child = Child::start(serve_command(&config, &log), addr, "/readyz").await;
    child.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_store_file_beside_1c_s_snapshot_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("counterparties.jsonl"), DIRECTORY).expect("directory");
    let onec_file = onec_store_path(&dir.path().join("store.sqlite"));
    Store::open_background(&onec_file, &prometheus::Registry::new(), "onec")
        .expect("1C's snapshot file")
        .close()
        .await;

    let err = start_edited(dir.path(), |t| t)
        .await
        .err()
        .expect("refused");
    let StartError::Store(err @ StoreError::Missing { .. }) = err else {
        panic!("{err:?}");
    };
    assert!(
        err.to_string().contains(&format!(
            "is missing while {} is there",
            onec_file.display()
        )),
        "{err}"
    );
    assert!(!dir.path().join("store.sqlite").exists(), "nothing created");

    let path = dir.path().join("gateway.toml");
    let mut config = Config::parse(&config_text(dir.path(), ""), &path, &|_| None).expect("config");
    config.store.new_store = true;
    let gw = Gateway::start(config).await.expect("--new-store starts");
    assert_eq!(title(gw.local_addr(), FILE_CALLER).await, "Фэйковый чиж");
    gw.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_1c_snapshot_file_is_refused_as_a_cache_that_can_be_deleted() {
    let mut gw = start("").await;
    gw.stop().await;
    let onec_file: PathBuf = onec_store_path(&gw.store_file());
    std::fs::write(&onec_file, vec![b'x'; 8192]).expect("garbage");
    let onec = format!(
        "[onec]\nodata_url = \"http://127.0.0.1:{}/base/odata/standard.odata\"\n",
        free_port()
    );
    let err = start_edited(gw.dir.path(), |t| format!("{t}{onec}"))
        .await
        .err()
        .expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&onec_file.display().to_string())
            && msg.contains("only the `onec` source's snapshot, a cache")
            && msg.contains("delete it")
            && msg.contains("rebuilt by the source's next read"),
        "{msg}"
    );
    assert!(
        !msg.contains("the call journal in that file is lost"),
        "{msg}"
    );
}

#[test]
fn new_store_is_a_command_line_flag_not_a_setting() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = config_text(dir.path(), "").replace("[store]", "[store]\nnew_store = true");
    let err =
        Config::parse(&text, &dir.path().join("gateway.toml"), &|_| None).expect_err("refused");
    assert!(err.to_string().contains("new_store"), "{err}");
}
