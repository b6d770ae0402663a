//! The ops kit in `deploy/` (issue 21): the package's config file, the
//! systemd unit and readiness protocol, the container definition, the
//! Prometheus rules and the Grafana dashboard, each checked by the tool
//! that will read it (systemd-analyze, promtool, a real Prometheus server
//! scraping a running gateway). The .deb itself is built and inspected by
//! `.ci/run` (cargo-deb, dpkg-deb, lintian).

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cti_gateway::config::Config;
use cti_gateway::sync::system::System;
use cti_gateway::sync::SystemSpec;
use cti_gateway::Gateway;
use support::mock_crm::MockCrm;
use support::process::{free_port, serve_command};
use support::test_system::TestSystem;
use support::{config_text, config_text_on, incoming_call_envelope, say_name_envelope, soap};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Where the package keeps its state; the config's relative paths go there.
const STATE_DIR: &str = "/var/lib/cti-gateway";

/// The keys whose example values are secrets: the package ships them
/// commented out, so that `check-config` (the unit's `ExecStartPre`)
/// refuses to start until the admin has set them.
const SECRET_KEYS: &[&str] = &["password", "token", "write_password", "secret"];

/// `config/example.toml` as the package installs it: every secret commented
/// out, relative paths made absolute under [`STATE_DIR`], listening on
/// every address (the PBX calls from the network).
fn package_config(example: &str) -> String {
    let mut out = String::from(
        "# /etc/cti-gateway/config.toml, installed by the cti-gateway package from\n\
         # config/example.toml (deploy/debian/config.toml; tests/ops_kit.rs keeps the two\n\
         # in step). The secrets are commented out: the service does not start until\n\
         # they are set here or in /etc/cti-gateway/env (CTI_SOAP_PASSWORD, CTI_API_TOKEN...).\n\
         # The directory file's path and the [[operator]] blocks (commented out) are\n\
         # examples: put your own.\n\n",
    );
    // The example's operators are examples (their tokens are secrets): the
    // admin writes their own blocks.
    let mut in_operator = false;
    for line in example.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            in_operator = trimmed.starts_with("[[operator]]");
        }
        let key = trimmed.split('=').next().unwrap_or("").trim();
        let live = !trimmed.starts_with('#') && !trimmed.is_empty();
        let line = if live && (in_operator || SECRET_KEYS.contains(&key)) {
            format!("# {line}")
        } else if key == "listen" && !trimmed.starts_with('#') {
            line.replacen("127.0.0.1:8080", "0.0.0.0:8080", 1)
        } else {
            line.replacen("= \"../data/demo/", &format!("= \"{STATE_DIR}/"), 1)
                .replacen("= \"var/", &format!("= \"{STATE_DIR}/"), 1)
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[test]
fn the_packaged_config_is_the_example_with_secrets_out_and_absolute_paths() {
    let expected = package_config(&read("config/example.toml"));
    let path = repo("deploy/debian/config.toml");
    if std::env::var_os("CTI_UPDATE_DEPLOY").is_some() {
        std::fs::write(&path, &expected).expect("write deploy/debian/config.toml");
    }
    let shipped = read("deploy/debian/config.toml");
    assert!(
        shipped == expected,
        "deploy/debian/config.toml is not config/example.toml as packaged: run `CTI_UPDATE_DEPLOY=1 cargo test --test ops_kit` and review the diff"
    );
    for line in shipped.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let key = line.split('=').next().unwrap_or("").trim();
        assert!(!SECRET_KEYS.contains(&key), "a secret is set: {line}");
        assert!(
            !line.contains("= \"var/") && !line.contains("= \"../"),
            "{line}"
        );
    }
    assert!(shipped.contains(&format!("path = \"{STATE_DIR}/cti-gateway.sqlite\"")));

    // As shipped it does not start: check-config names the missing password.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = support::process::check_config(&dir.path().join("config.toml"), &shipped);
    assert!(
        !out.status.success(),
        "the packaged config must not start as shipped"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("password"), "{stderr}");
}

#[test]
fn the_package_changelog_names_the_crates_version() {
    let changelog = read("deploy/debian/changelog");
    let first = changelog.lines().next().unwrap_or("");
    let expected = format!("cti-gateway ({}-1) ", env!("CARGO_PKG_VERSION"));
    assert!(
        first.starts_with(&expected),
        "deploy/debian/changelog's first entry is `{first}`: add an entry for {expected}when the crate's version changes"
    );
}

#[test]
fn the_container_runs_as_a_user_with_a_healthcheck_and_a_volume() {
    let file = read("deploy/container/Containerfile");
    let last_stage = file
        .rsplit_once("\nFROM ")
        .map(|(_, stage)| stage)
        .expect("a multi-stage build");
    let directive = |name: &str| {
        last_stage
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .map(|l| l[name.len() + 1..].trim().to_owned())
    };
    let user = directive("USER").expect("a USER in the final stage");
    assert!(user != "root" && user != "0", "USER {user}");
    assert!(
        directive("VOLUME").is_some_and(|v| v.contains("/var/lib/cti-gateway")),
        "VOLUME"
    );
    let healthcheck = last_stage
        .split("HEALTHCHECK ")
        .nth(1)
        .expect("a HEALTHCHECK in the final stage");
    assert!(healthcheck.contains("\"healthcheck\""), "{healthcheck}");
    // The binary it runs is this build's: the subcommand exists.
    let out = Command::new(env!("CARGO_BIN_EXE_cti-gateway"))
        .args(["healthcheck", "--help"])
        .output()
        .expect("run");
    assert!(out.status.success());
}

#[tokio::test]
async fn healthcheck_exits_0_for_a_ready_gateway_and_1_otherwise() {
    let gw = support::start("").await;
    let url = format!("http://{}", gw.addr);
    let (code, stdout, stderr) =
        support::process::run_cli(vec!["healthcheck".into(), "--url".into(), url]).await;
    assert_eq!(code, Some(0), "{stdout}{stderr}");

    // Nothing listens: 1 with a message, no panic.
    let url = format!("http://127.0.0.1:{}", free_port());
    let (code, _, stderr) =
        support::process::run_cli(vec!["healthcheck".into(), "--url".into(), url]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");

    // Up but not ready (/readyz 503): 1, naming the status.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await;
        let body = "{\"ready\":false}";
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(answer.as_bytes()).await.expect("write");
    });
    let (code, _, stderr) = support::process::run_cli(vec![
        "healthcheck".into(),
        "--url".into(),
        format!("http://{addr}"),
    ])
    .await;
    server.await.expect("server");
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("503"), "{stderr}");
}

/// What the gateway told the service manager, as a test's `NOTIFY_SOCKET`
/// received it.
fn next_notification(socket: &UnixDatagram, within: Duration) -> Option<String> {
    socket.set_read_timeout(Some(within)).expect("timeout");
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_is_told_once_the_directory_is_loaded_and_stopping_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("counterparties.jsonl"), support::DIRECTORY).expect("directory");
    let port = free_port();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        config_text_on(dir.path(), &format!("127.0.0.1:{port}"), ""),
    )
    .expect("config");
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");

    let mut command = serve_command(&config, &dir.path().join("log"));
    command.env("NOTIFY_SOCKET", &socket_path);
    let mut child = support::process::Child(command.spawn().expect("start"));

    let ready = tokio::task::block_in_place(|| next_notification(&socket, Duration::from_secs(20)))
        .expect("READY=1 within 20 s");
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready}");
    // Told only once the directory answers: /readyz is 200 at once.
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");
    let readyz = support::get(addr, "/readyz").await;
    assert_eq!(readyz.status, 200, "{}", readyz.body);
    let counterparties = support::DIRECTORY
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count();
    assert!(
        ready.contains(&format!("{counterparties} counterparties")),
        "{ready}"
    );

    // SAFETY: kill only sends a signal to our own child's pid.
    unsafe {
        libc::kill(child.0.id() as libc::pid_t, libc::SIGTERM);
    }
    let stopping =
        tokio::task::block_in_place(|| next_notification(&socket, Duration::from_secs(20)))
            .expect("STOPPING=1 on SIGTERM");
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.0.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
#[ignore = "needs systemd-analyze (Debian package systemd); .ci/run installs it"]
fn the_unit_passes_systemd_analyze_verify() {
    let unit = read("deploy/systemd/cti-gateway.service");
    // verify checks that each Exec line's program exists: point them at
    // this build's binary, in a folder of the unit's own name.
    let binary = env!("CARGO_BIN_EXE_cti-gateway");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cti-gateway.service");
    std::fs::write(&path, unit.replace("/usr/bin/cti-gateway", binary)).expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Lines about the machine, not the unit (no running systemd here).
    let about_the_unit: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("cti-gateway.service"))
        .collect();
    assert!(
        out.status.success() && about_the_unit.is_empty(),
        "systemd-analyze verify: {stderr}"
    );
}

#[test]
#[ignore = "needs promtool (Debian package prometheus); .ci/run installs it"]
fn the_alert_rules_pass_promtool_check_and_their_unit_tests() {
    let dir = repo("deploy/prometheus");
    for args in [
        vec!["check", "rules", "cti-gateway-rules.yml"],
        vec!["test", "rules", "cti-gateway-rules.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("promtool runs");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every `expr:` of the rules file.
fn rule_expressions() -> Vec<(String, String)> {
    let rules = read("deploy/prometheus/cti-gateway-rules.yml");
    let mut out = Vec::new();
    let mut alert = String::new();
    for line in rules.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix("- alert:") {
            alert = name.trim().to_owned();
        } else if let Some(expr) = line.strip_prefix("expr:") {
            out.push((alert.clone(), expr.trim().to_owned()));
        }
    }
    out
}

/// Every panel target's expression of the dashboard, with its title.
fn dashboard_expressions() -> Vec<(String, String)> {
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/cti-gateway.json")).expect("dashboard JSON");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                panel["title"].as_str().unwrap_or("").to_owned(),
                target["expr"].as_str().expect("expr").to_owned(),
            ));
        }
    }
    out
}

/// The metric names an expression reads.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts_word
            && (expr[i..].starts_with("cti_")
                || expr[i..].starts_with("process_")
                || expr[i..].starts_with("up{"))
        {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |e| i + e);
            names.push(expr[i..end].to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    names
}

/// The dashboard's template variables as a query against one instance
/// means them.
fn as_grafana_would_send(expr: &str) -> String {
    expr.replace("$instance", ".*")
        .replace("$__rate_interval", "30s")
        .replace("$__range", "5m")
}

async fn prometheus_query(addr: std::net::SocketAddr, expr: &str) -> serde_json::Value {
    let query: String = url_encode(expr);
    let reply = support::get(addr, &format!("/api/v1/query?query={query}")).await;
    serde_json::from_str(&reply.body)
        .unwrap_or_else(|e| panic!("{expr}: {e}: {} {}", reply.status, reply.body))
}

fn url_encode(text: &str) -> String {
    let mut out = String::new();
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A Prometheus server on loopback, killed when dropped.
struct Prometheus(std::process::Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs prometheus (Debian package prometheus); .ci/run installs it"]
async fn every_rule_and_panel_expression_runs_on_a_real_prometheus_scraping_the_gateway() {
    // A gateway with a sync system, so the sync panels and rules have series.
    let crm = MockCrm::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("counterparties.jsonl"), support::DIRECTORY).expect("directory");
    let text = config_text(dir.path(), "[sync.testcrm]\n");
    let config = Config::parse(&text, &dir.path().join("gateway.toml"), &|_| None).expect("config");
    let system: Arc<dyn System> = Arc::new(TestSystem::new(
        SystemSpec::new("testcrm").expect("name"),
        &crm.url(),
    ));
    let gateway = Gateway::start_with(config, vec![system])
        .await
        .expect("start");
    let gw = gateway.local_addr();

    let port = free_port();
    let prom_dir = dir.path().join("prometheus");
    std::fs::create_dir(&prom_dir).expect("mkdir");
    let prom_config = prom_dir.join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: cti-gateway\n    static_configs:\n      - targets: ['{gw}']\n"
        ),
    )
    .expect("write prometheus.yml");
    let _prometheus = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", prom_config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );
    let prom: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");

    // Calls of both kinds, spread over several scrapes.
    for round in 0..8 {
        for number in ["+7 (495) 111-00-01", "+7 999 000-00-00"] {
            assert_eq!(soap(gw, &say_name_envelope(number)).await.status, 200);
        }
        let call = incoming_call_envelope("84951110001", support::OPERATOR_KEY);
        assert_eq!(soap(gw, &call).await.status, 200, "round {round}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Until Prometheus has scraped the gateway a few times.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if tokio::net::TcpStream::connect(prom).await.is_ok() {
            let answer =
                prometheus_query(prom, "count_over_time(up{job=\"cti-gateway\"}[1m])").await;
            let scrapes = answer["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            if scrapes >= 5.0 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus did not scrape the gateway"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Expressions that have no series on a healthy gateway without TLS.
    let may_be_empty = |expr: &str| expr.contains("cti_tls_certificate_expiry_timestamp_seconds");
    let mut problems = Vec::new();
    for (name, expr) in rule_expressions()
        .into_iter()
        .chain(dashboard_expressions())
    {
        let query = as_grafana_would_send(&expr);
        let answer = prometheus_query(prom, &query).await;
        if answer["status"] != "success" {
            problems.push(format!("{name}: `{query}` does not run: {answer}"));
            continue;
        }
        // Each metric it reads exists under that name (a renamed metric
        // leaves the rule or panel silently empty).
        for metric in metric_names(&expr) {
            let metric = metric.trim_end_matches('{');
            let exists = prometheus_query(prom, &format!("count({{__name__=\"{metric}\"}})")).await;
            let found = exists["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty());
            if !found && !may_be_empty(metric) {
                problems.push(format!("{name}: `{metric}` has no series on the gateway"));
            }
        }
        // A panel (not an alert, which is empty while all is well) shows data.
        let is_panel = !name.starts_with("CtiGateway");
        let empty = answer["data"]["result"]
            .as_array()
            .is_none_or(|r| r.is_empty());
        if is_panel && empty && !may_be_empty(&expr) {
            problems.push(format!("panel {name}: `{query}` has no data"));
        }
    }
    gateway.shutdown().await;
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
