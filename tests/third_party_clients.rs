//! Real third-party clients against the running gateway: Python's zeep
//! loads the WSDL and calls both operations; Prometheus's promtool checks
//! the metrics exposition. `.ci/run` installs both.

mod support;

use std::process::Stdio;

use support::*;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

const ZEEP_CLIENT: &str = r#"
import sys
import zeep
from requests import Session
from requests.auth import HTTPBasicAuth
from zeep.transports import Transport

session = Session()
session.auth = HTTPBasicAuth("SOAP", "123")
client = zeep.Client(sys.argv[1], transport=Transport(session=session))
print("SAYNAME:" + client.service.SayName(Number="89235292926"))
print("UNKNOWN:" + client.service.SayName(Number="89990000000"))
print("INCOMING:" + client.service.IncomingCall(NumFrom="89235292926", Key=sys.argv[2]))
"#;

#[tokio::test]
#[ignore = "needs Python's zeep; .ci/run installs it"]
async fn zeep_loads_the_wsdl_and_calls_both_operations() {
    let gw = start("").await;
    let mut screen = gw
        .gateway()
        .hub()
        .subscribe(OPERATOR_KEY, None)
        .expect("known key");
    let script = gw.dir.path().join("client.py");
    std::fs::write(&script, ZEEP_CLIENT).expect("write script");
    let output = Command::new("python3")
        .arg(&script)
        .arg(format!("http://{}{SOAP_PATH}?wsdl", gw.addr))
        .arg(OPERATOR_KEY)
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "zeep failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("SAYNAME:<?xml version=\"1.0\"?>"),
        "{stdout}"
    );
    assert!(
        stdout.contains("<title>Фэйковый чиж</title>") && stdout.contains("<phone>244</phone>"),
        "{stdout}"
    );
    assert!(stdout.contains("<title></title>"), "{stdout}");
    assert!(stdout.contains("INCOMING:1"), "{stdout}");
    assert!(
        screen.recv().await.is_ok(),
        "the zeep IncomingCall reached no screen"
    );
}

#[tokio::test]
#[ignore = "needs promtool (Debian package prometheus); .ci/run installs it"]
async fn metrics_pass_promtool_check_metrics() {
    let gw = start("").await;
    // Exercise every family so none is exposed empty.
    soap(gw.addr, &say_name_envelope("89235292926")).await;
    soap(gw.addr, &say_name_envelope("89990000000")).await;
    soap(
        gw.addr,
        &incoming_call_envelope("89235292926", OPERATOR_KEY),
    )
    .await;
    soap(gw.addr, "<broken").await;
    let metrics = get(gw.addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(metrics.body.as_bytes())
        .await
        .expect("feed promtool");
    drop(stdin);
    let output = child.wait_with_output().await.expect("promtool finishes");
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
