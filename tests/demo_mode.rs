//! Demo mode as a newcomer meets it: the release binary started with no
//! config, from a folder that is not the checkout.

mod support;

use support::process::{free_port, Child};

#[tokio::test]
async fn demo_mode_serves_the_compiled_in_directory_from_any_folder_and_keeps_nothing_in_it() {
    let cwd = tempfile::tempdir().expect("temp dir");
    let home = tempfile::tempdir().expect("temp dir");
    // The log lives beside the folders, not in the current directory, which must stay empty.
    let log = home.path().join("demo.log");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let out = std::fs::File::create(&log).expect("log file");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_cti-gateway"));
    command
        .args(["serve", "--listen", &addr.to_string()])
        .current_dir(cwd.path())
        .env("HOME", home.path())
        .env_remove("XDG_STATE_HOME")
        .env_remove("CTI_DEMO_DIR")
        .env_remove("CTI_SOAP_PASSWORD")
        .env_remove("CTI_API_TOKEN")
        .env_remove("RUST_LOG")
        .stdout(out.try_clone().expect("fd"))
        .stderr(out);
    let child = Child::start(command, addr, "/readyz").await;

    // The seed's caller is in the demo directory.
    let reply = support::soap(addr, &support::say_name_envelope("89235292926")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let data = support::say_name_data(&reply);
    assert!(
        !data.contains("<title></title>"),
        "the demo caller is known: {data}"
    );
    let ready = support::get(addr, "/readyz").await;
    let counterparties = serde_json::from_str::<serde_json::Value>(&ready.body)
        .expect("readyz is JSON")["counterparties"]
        .as_u64();
    assert!(counterparties.is_some_and(|n| n > 10), "{}", ready.body);
    child.stop().await;

    let printed = std::fs::read_to_string(&log).expect("log");
    let folder = home.path().join(".local/state/cti-gateway/demo");
    assert!(
        printed.contains(&folder.join("cti-gateway.sqlite").display().to_string()),
        "the start-up lines say where the demo store lives: {printed}"
    );
    assert!(folder.join("counterparties.jsonl").is_file());
    assert!(folder.join("cti-gateway.sqlite").is_file());
    let left: Vec<_> = std::fs::read_dir(cwd.path())
        .expect("cwd")
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .expect("entries");
    assert!(
        left.is_empty(),
        "demo mode wrote into the current directory: {left:?}"
    );
}
