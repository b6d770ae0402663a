//! TLS on the gateway's own listener, over real sockets: certificates made
//! by `openssl` for the test (a CA and a leaf for 127.0.0.1), a client that
//! verifies them, rotation while a keep-alive connection stays up.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use support::*;

/// A CA and a leaf certificate for 127.0.0.1 signed by it, in `dir` under
/// `name`: `name.ca.pem`, `name.cert.pem` (the leaf then the CA: a chain),
/// `name.key.pem`.
fn make_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let p = |suffix: &str| dir.join(format!("{name}.{suffix}"));
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (ca_key, ca, key, csr, leaf) = (
        p("ca.key"),
        p("ca.pem"),
        p("key.pem"),
        p("csr"),
        p("leaf.pem"),
    );
    let s = |path: &PathBuf| path.to_str().expect("utf-8 path").to_owned();
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN=test CA {name}"),
        "-keyout",
        &s(&ca_key),
        "-out",
        &s(&ca),
    ]);
    run(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &s(&key),
        "-out",
        &s(&csr),
    ]);
    let ext = p("ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        &s(&csr),
        "-CA",
        &s(&ca),
        "-CAkey",
        &s(&ca_key),
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &s(&ext),
        "-out",
        &s(&leaf),
    ]);
    let chain = p("cert.pem");
    let mut text = std::fs::read(&leaf).expect("leaf");
    text.extend(std::fs::read(&ca).expect("ca"));
    std::fs::write(&chain, text).expect("chain");
    (ca, chain, key)
}

fn connector(ca: &Path) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("ca file") {
        roots.add(cert.expect("ca pem")).expect("ca added");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

async fn connect(addr: SocketAddr, ca: &Path) -> Result<TlsStream<TcpStream>, std::io::Error> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    connector(ca).connect(name, tcp).await
}

/// One SayName on an open TLS connection, keep-alive; the answer's status and body.
async fn say_name_on(stream: &mut TlsStream<TcpStream>, addr: SocketAddr) -> (u16, String) {
    let body = say_name_envelope("89235292926");
    let head = format!(
        "POST {SOAP_PATH} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/xml; charset=utf-8\r\nAuthorization: {SEED_AUTH}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("send head");
    stream.write_all(body.as_bytes()).await.expect("send body");
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("answer within 10 s")
            .expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().expect("length"))
                })
                .expect("content-length");
            if buf.len() >= end + 4 + len {
                let status = text[9..12].parse().expect("status");
                return (status, text[end + 4..end + 4 + len].to_owned());
            }
        }
    }
}

/// `GET path` over a new TLS connection; the whole answer as text.
async fn https_get(addr: SocketAddr, ca: &Path, path: &str) -> String {
    let mut stream = connect(addr, ca).await.expect("handshake");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

fn tls_config(cert: &Path, key: &Path) -> String {
    format!(
        "server.tls_cert = \"{}\"\nserver.tls_key = \"{}\"\n",
        cert.display(),
        key.display()
    )
}

#[tokio::test]
#[ignore = "needs the openssl command line; .ci/run installs it"]
async fn the_listener_speaks_https_with_the_configured_certificate() {
    let certs = tempfile::tempdir().expect("temp dir");
    let (ca, cert, key) = make_pair(certs.path(), "first");
    let gw = start(&tls_config(&cert, &key)).await;
    let mut stream = connect(gw.addr, &ca).await.expect("handshake verifies");
    let (_, session) = stream.get_ref();
    assert_eq!(session.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (status, body) = say_name_on(&mut stream, gw.addr).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Фэйковый чиж"), "{body}");
    // Keep-alive: a second request on the same connection.
    assert_eq!(say_name_on(&mut stream, gw.addr).await.0, 200);
    // The WSDL says https.
    let mut stream = connect(gw.addr, &ca).await.expect("handshake");
    stream
        .write_all(
            format!(
                "GET {SOAP_PATH}?wsdl HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
                gw.addr
            )
            .as_bytes(),
        )
        .await
        .expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.contains(&format!("https://{}{SOAP_PATH}", gw.addr)),
        "{answer}"
    );
    // The certificate's expiry, for Prometheus and /readyz (openssl -days 2).
    let metrics = https_get(gw.addr, &ca, "/metrics").await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with("cti_tls_certificate_expiry_timestamp_seconds "))
        .unwrap_or_else(|| panic!("no expiry in {metrics}"));
    let expires: f64 = line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a number");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    assert!(
        expires > now + 86_400.0 && expires < now + 3.0 * 86_400.0,
        "{expires} vs {now}"
    );
    let ready = https_get(gw.addr, &ca, "/readyz").await;
    assert!(ready.contains(r#""certificate_expires":"20"#), "{ready}");
}

#[tokio::test]
#[ignore = "needs the openssl command line; .ci/run installs it"]
async fn plain_http_to_the_tls_port_gets_no_answer_and_others_are_served() {
    let certs = tempfile::tempdir().expect("temp dir");
    let (ca, cert, key) = make_pair(certs.path(), "first");
    let gw = start(&tls_config(&cert, &key)).await;
    let mut plain = TcpStream::connect(gw.addr).await.expect("connect");
    let request = format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", gw.addr);
    plain.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut answer))
        .await
        .expect("closed");
    assert!(
        !String::from_utf8_lossy(&answer).contains("200"),
        "{answer:?}"
    );
    let mut stream = connect(gw.addr, &ca).await.expect("handshake");
    assert_eq!(say_name_on(&mut stream, gw.addr).await.0, 200);
}

#[tokio::test]
#[ignore = "needs the openssl command line; .ci/run installs it"]
async fn a_new_certificate_is_picked_up_and_open_connections_stay_up() {
    let certs = tempfile::tempdir().expect("temp dir");
    let (ca1, cert, key) = make_pair(certs.path(), "first");
    let gw = start(&tls_config(&cert, &key)).await;
    let mut kept = connect(gw.addr, &ca1).await.expect("handshake");
    assert_eq!(say_name_on(&mut kept, gw.addr).await.0, 200);

    // A bad new pair (a key of another certificate) is refused: the old one keeps serving.
    let (ca2, cert2, key2) = make_pair(certs.path(), "second");
    std::fs::copy(&cert2, &cert).expect("copy cert only");
    gw.gateway().reload();
    tokio::time::sleep(Duration::from_millis(300)).await;
    connect(gw.addr, &ca1)
        .await
        .expect("the old pair still serves");
    let ready = https_get(gw.addr, &ca1, "/readyz").await;
    assert!(
        ready.contains(r#""state":"reload_failed""#) && ready.contains("server.tls_key"),
        "{ready}"
    );

    // The whole new pair: new handshakes get it (by SIGHUP or the files' change).
    std::fs::copy(&key2, &key).expect("copy key");
    let mut verified = false;
    for _ in 0..100 {
        if connect(gw.addr, &ca2).await.is_ok() {
            verified = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(verified, "the new certificate was not picked up");
    assert!(
        connect(gw.addr, &ca1).await.is_err(),
        "the old CA no longer verifies"
    );
    let ready = https_get(gw.addr, &ca2, "/readyz").await;
    assert!(ready.contains(r#""state":"ok""#), "{ready}");
    // The connection opened before the rotation is still served.
    assert_eq!(say_name_on(&mut kept, gw.addr).await.0, 200);
}

#[tokio::test]
#[ignore = "needs the openssl command line; .ci/run installs it"]
async fn a_missing_or_mismatched_pair_stops_start_up_naming_the_file() {
    let certs = tempfile::tempdir().expect("temp dir");
    let (_, cert, key) = make_pair(certs.path(), "first");
    let (_, _, other_key) = make_pair(certs.path(), "second");
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), DIRECTORY).expect("directory");
    let start_with = |extra: String| {
        let text = config_text(dir.path(), &extra);
        let config =
            cti_gateway::config::Config::parse(&text, &dir.path().join("gateway.toml"), &|_| None);
        async move {
            match config {
                Err(e) => e.to_string(),
                Ok(config) => match cti_gateway::Gateway::start(config).await {
                    Err(e) => e.to_string(),
                    Ok(_) => "started".to_owned(),
                },
            }
        }
    };
    let missing = certs.path().join("missing.pem");
    let msg = start_with(tls_config(&missing, &key)).await;
    assert!(
        msg.contains("server.tls_cert") && msg.contains("missing.pem"),
        "{msg}"
    );
    let msg = start_with(tls_config(&cert, &other_key)).await;
    assert!(
        msg.contains("server.tls_key") && msg.contains("second.key.pem"),
        "{msg}"
    );
    let msg = start_with(format!("server.tls_cert = \"{}\"\n", cert.display())).await;
    assert!(msg.contains("server.tls_key"), "{msg}");
}

#[tokio::test]
#[ignore = "needs the openssl command line; .ci/run installs it"]
async fn tls_1_2_is_spoken_and_a_silent_client_is_cut_at_the_header_timeout() {
    let certs = tempfile::tempdir().expect("temp dir");
    let (ca, cert, key) = make_pair(certs.path(), "first");
    let extra = format!(
        "{}server.header_read_timeout = \"1s\"\n",
        tls_config(&cert, &key)
    );
    let gw = start(&extra).await;

    // A client that speaks TLS 1.2 only.
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&ca).expect("ca file") {
        roots.add(cert.expect("ca pem")).expect("ca added");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(gw.addr).await.expect("connect");
    let name = ServerName::IpAddress(gw.addr.ip().into());
    let mut stream = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("TLS 1.2 handshake");
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(say_name_on(&mut stream, gw.addr).await.0, 200);

    // A connection that never starts its handshake is closed at the header
    // timeout and counted; SayName on other connections is unaffected.
    let failures = gw.gateway().metrics().tls_handshake_failures.get();
    let mut silent = TcpStream::connect(gw.addr).await.expect("connect");
    let mut fresh = connect(gw.addr, &ca).await.expect("handshake");
    assert_eq!(say_name_on(&mut fresh, gw.addr).await.0, 200);
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest))
        .await
        .expect("cut within the header timeout")
        .expect("closed");
    assert!(rest.is_empty());
    let metrics = gw.gateway().metrics();
    eventually(
        Duration::from_secs(5),
        "the silent handshake counted",
        || metrics.tls_handshake_failures.get() > failures,
    )
    .await;
}

#[tokio::test]
#[ignore = "needs the openssl command line; .ci/run installs it"]
async fn operator_screens_connect_over_wss() {
    use futures_util::StreamExt;
    let certs = tempfile::tempdir().expect("temp dir");
    let (ca, cert, key) = make_pair(certs.path(), "first");
    let gw = start(&tls_config(&cert, &key)).await;
    let stream = connect(gw.addr, &ca).await.expect("handshake");
    let url = format!("wss://{}/operator/ws?token={OPERATOR_TOKEN}", gw.addr);
    let (mut ws, response) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("WebSocket over TLS");
    assert_eq!(response.status(), 101);

    let body = incoming_call_envelope("89235292926", OPERATOR_KEY);
    let mut pbx = connect(gw.addr, &ca).await.expect("handshake");
    let head = format!(
        "POST {SOAP_PATH} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/xml; charset=utf-8\r\nAuthorization: {SEED_AUTH}\r\nContent-Length: {}\r\n\r\n{body}",
        gw.addr,
        body.len()
    );
    pbx.write_all(head.as_bytes()).await.expect("send");
    let message = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("a pop-up within 10 s")
        .expect("a message")
        .expect("readable");
    assert!(message.to_string().contains("Фэйковый чиж"), "{message}");
}

/// Python's zeep, as a PBX-side SOAP client would be set up for `https://`:
/// it loads the WSDL over TLS, verifies the certificate against the CA,
/// follows the WSDL's `https://` address and calls both operations.
const ZEEP_OVER_HTTPS: &str = r#"
import sys
import zeep
from requests import Session
from requests.auth import HTTPBasicAuth
from zeep.transports import Transport

session = Session()
session.auth = HTTPBasicAuth("SOAP", "123")
session.verify = sys.argv[2]
# REQUESTS_CA_BUNDLE in the environment would win over session.verify.
session.trust_env = False
client = zeep.Client(sys.argv[1], transport=Transport(session=session))
print("SAYNAME:" + client.service.SayName(Number="89235292926"))
print("INCOMING:" + client.service.IncomingCall(NumFrom="89235292926", Key=sys.argv[3]))
"#;

#[tokio::test]
#[ignore = "needs the openssl command line and Python's zeep; .ci/run installs them"]
async fn zeep_calls_both_operations_over_https_verifying_the_certificate() {
    https_client_calls_both_operations("python3", "client.py", ZEEP_OVER_HTTPS).await;
}

/// PHP's SoapClient over `https://`, the certificate verified against the
/// CA: it loads the WSDL, follows its `https://` address, calls both
/// operations with Basic credentials.
const PHP_OVER_HTTPS: &str = r#"<?php
[$wsdl, $ca, $key] = array_slice($argv, 1);
$context = stream_context_create(['ssl' => ['cafile' => $ca, 'verify_peer' => true, 'verify_peer_name' => true]]);
$client = new SoapClient($wsdl, [
    'login' => 'SOAP',
    'password' => '123',
    'authentication' => SOAP_AUTHENTICATION_BASIC,
    'stream_context' => $context,
    'cache_wsdl' => WSDL_CACHE_NONE,
    'exceptions' => true,
]);
$said = $client->SayName(['Number' => '89235292926']);
echo "SAYNAME:", $said->return, "\n";
$rang = $client->IncomingCall(['NumFrom' => '89235292926', 'Key' => $key]);
echo "INCOMING:", $rang->return, "\n";
"#;

#[tokio::test]
#[ignore = "needs the openssl command line and PHP's soap extension; .ci/run installs them"]
async fn php_soap_client_calls_both_operations_over_https_verifying_the_certificate() {
    https_client_calls_both_operations("php", "client.php", PHP_OVER_HTTPS).await;
}

/// Runs a third-party client's `script` with `interpreter` against a TLS
/// gateway: arguments the WSDL's https URL, the CA file, the operator key.
/// It must print `SAYNAME:<answer>` and `INCOMING:<answer>`.
async fn https_client_calls_both_operations(interpreter: &str, file: &str, script: &str) {
    let certs = tempfile::tempdir().expect("temp dir");
    let (ca, cert, key) = make_pair(certs.path(), "client");
    let gw = start(&tls_config(&cert, &key)).await;
    let path = certs.path().join(file);
    std::fs::write(&path, script).expect("write script");
    let output = tokio::process::Command::new(interpreter)
        .arg(&path)
        .arg(format!("https://{}{SOAP_PATH}?wsdl", gw.addr))
        .arg(&ca)
        .arg(OPERATOR_KEY)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{interpreter} runs: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{interpreter} failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("<title>Фэйковый чиж</title>"), "{stdout}");
    assert!(stdout.contains("INCOMING:1"), "{stdout}");
}
