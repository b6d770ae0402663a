//! `soap.path` may not hide one of the gateway's own endpoints: the HTTP
//! front owns the list, and both `serve` (through `Gateway::start`) and
//! `check-config` refuse a colliding path with the same message.

mod support;

use cti_gateway::config::Config;
use cti_gateway::{http, Gateway};

const COLLIDES: &str = "`soap.path` collides with one of the gateway's own endpoints";

#[test]
fn the_reserved_paths_are_the_fronts_endpoints_and_what_lies_under_them() {
    for reserved in [
        "/metrics",
        "/healthz",
        "/readyz",
        "/operator",
        "/operator/",
        "/operator/ws",
        "/api",
        "/api/v1/counterparties",
        "/api/v1/calls",
    ] {
        assert!(http::reserved_path(reserved), "{reserved}");
    }
    for free in [
        "/telephony/ws/VATS",
        "/",
        "/apis",
        "/metricsx",
        "/operators",
        "/x/api",
    ] {
        assert!(!http::reserved_path(free), "{free}");
    }
}

#[tokio::test]
async fn the_gateway_does_not_start_on_a_colliding_soap_path() {
    for path in ["/metrics", "/api/v1/soap", "/operator/ws"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("gateway.toml");
        let text = support::config_text(dir.path(), &format!("soap.path = \"{path}\""));
        let config = Config::parse(&text, &file, &|_| None).expect("the config itself reads");
        let Err(e) = Gateway::start(config).await else {
            panic!("{path}: the gateway started");
        };
        let message = e.to_string();
        assert!(message.contains(COLLIDES), "{path}: {message}");
        assert!(message.contains("gateway.toml"), "{path}: {message}");
    }
}

#[test]
fn check_config_refuses_a_colliding_soap_path_and_accepts_the_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    // check-config also checks that the directory file can be read.
    std::fs::write(dir.path().join("counterparties.jsonl"), support::DIRECTORY)
        .expect("directory file");
    let file = dir.path().join("gateway.toml");
    let check = |text: String| support::process::check_config(&file, &text);
    let refused = check(support::config_text(dir.path(), "soap.path = \"/readyz\""));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains(COLLIDES), "{stderr}");
    assert!(stderr.contains("gateway.toml"), "{stderr}");

    let accepted = check(support::config_text(dir.path(), ""));
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    assert!(String::from_utf8_lossy(&accepted.stdout).contains("OK"));
}
