//! A running gateway on 127.0.0.1:0 and a small HTTP client for the tests.
//!
//! Every test starts its own gateway with its own temporary store and
//! directory file, and talks to it over real sockets.
#![allow(dead_code)] // each test binary uses a different part of this module

pub mod mock_crm;
pub mod mock_http;
pub mod mock_onec;
pub mod process;
pub mod test_system;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cti_gateway::config::Config;
use cti_gateway::Gateway;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const SOAP_PATH: &str = "/telephony/ws/VATS";
/// `SOAP:123`, the seed's credentials.
pub const SEED_AUTH: &str = "Basic U09BUDoxMjM=";
pub const OPERATOR_KEY: &str = "gW3cyUJAtl50PhF";
pub const OPERATOR_TOKEN: &str = "operator-token-1";
pub const OTHER_KEY: &str = "otherKey0000001";
pub const OTHER_TOKEN: &str = "operator-token-2";

/// Three counterparties: the seed's caller, one with tricky characters, and
/// one sharing an office phone with the first.
pub const DIRECTORY: &str = concat!(
    r#"{"id":"a1","name":"Фэйковый чиж","inn":"7701234567","kpp":"770101001","category":0,"manager_phone":"244","phones":["8 (923) 529-29-26","+7 495 000-00-01"]}"#,
    "\n",
    r#"{"id":"b2","name":"ООО \"Ромашка\" & <Ко>","inn":"7702345678","category":2,"manager_phone":"301","phones":["+7 916 555-55-55"]}"#,
    "\n",
    r#"{"id":"c3","name":"ИП Сидоров","phones":["84950000001"]}"#,
    "\n",
);

pub struct TestGateway {
    pub gateway: Option<Gateway>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl TestGateway {
    pub fn directory_file(&self) -> PathBuf {
        self.dir.path().join("counterparties.jsonl")
    }

    pub fn store_file(&self) -> PathBuf {
        self.dir.path().join("store.sqlite")
    }

    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("gateway running")
    }

    pub async fn stop(&mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown().await;
        }
    }
}

/// The test configuration. `extra` is appended (whole tables); lines of
/// `extra` that start with `soap.`, `server.` or `api.` go into those tables.
pub fn config_text(dir: &Path, extra: &str) -> String {
    config_text_on(dir, "127.0.0.1:0", extra)
}

/// [`config_text`] listening on `listen` (a child process's fixed port).
pub fn config_text_on(dir: &Path, listen: &str, extra: &str) -> String {
    let (mut soap, mut server, mut rest) = (String::new(), String::new(), String::new());
    let mut api = String::new();
    for line in extra.lines() {
        if let Some(l) = line.strip_prefix("api.") {
            api.push_str(l);
            api.push('\n');
        } else if let Some(l) = line.strip_prefix("soap.") {
            soap.push_str(l);
            soap.push('\n');
        } else if let Some(l) = line.strip_prefix("server.") {
            server.push_str(l);
            server.push('\n');
        } else {
            rest.push_str(line);
            rest.push('\n');
        }
    }
    format!(
        r#"
[server]
listen = "{listen}"
{server}
[soap]
username = "SOAP"
password = "123"
{soap}
[directory]
file = "{file}"
watch_interval = "100ms"
settle = "0s"
[store]
path = "{store}"
[api]
token = "api-token-for-tests"
{api}
[[operator]]
key = "{OPERATOR_KEY}"
token = "{OPERATOR_TOKEN}"
name = "Иванова"
[[operator]]
key = "{OTHER_KEY}"
token = "{OTHER_TOKEN}"
name = "Петров"
{rest}
"#,
        file = dir.join("counterparties.jsonl").display(),
        store = dir.join("store.sqlite").display(),
    )
}

/// Starts a gateway over [`DIRECTORY`]; `extra` is appended to the config.
pub async fn start(extra: &str) -> TestGateway {
    start_with(DIRECTORY, extra).await
}

pub async fn start_with(directory: &str, extra: &str) -> TestGateway {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("counterparties.jsonl"), directory).expect("write directory");
    start_in(dir, extra).await
}

/// Starts a gateway in an existing folder (to restart over the same store).
pub async fn start_in(dir: tempfile::TempDir, extra: &str) -> TestGateway {
    let path = dir.path().join("gateway.toml");
    let text = config_text(dir.path(), extra);
    let config = Config::parse(&text, &path, &|_| None).expect("test config is valid");
    let gateway = Gateway::start(config).await.expect("gateway starts");
    let addr = gateway.local_addr();
    TestGateway {
        gateway: Some(gateway),
        addr,
        dir,
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Sends raw bytes on a new connection and reads the answer until the server
/// closes or the content length is reached. Bounded by a 10 s timeout.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("send");
    read_reply(&mut stream).await
}

/// A connection to `addr` from the local address `source` (any of
/// 127.0.0.0/8 is this machine on Linux): "another client" for the tests of
/// address rules.
pub async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let source: std::net::IpAddr = source.parse().expect("source address");
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source, 0))
        .expect("bind the source address");
    socket.connect(addr).await.expect("connect")
}

/// [`request`] on a connection from `source` (see [`connect_from`]).
pub async fn request_from(
    source: &str,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
) -> Reply {
    let mut stream = connect_from(source, addr).await;
    stream
        .write_all(&request_bytes(addr, method, path, headers, body))
        .await
        .expect("send");
    read_reply(&mut stream).await
}

pub async fn read_reply(stream: &mut TcpStream) -> Reply {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(reply) = parse_reply(&buf) {
            return reply;
        }
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .expect("reply within 10 s")
            .unwrap_or(0);
        if n == 0 {
            return parse_reply(&buf).unwrap_or_else(|| {
                panic!("incomplete reply: {:?}", String::from_utf8_lossy(&buf))
            });
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn parse_reply(buf: &[u8]) -> Option<Reply> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())?;
    let body = buf.get(head_end + 4..head_end + 4 + len)?;
    Some(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(body).into_owned(),
    })
}

/// A POST with the given headers (each "Name: value") and body.
pub async fn post(addr: SocketAddr, path: &str, headers: &[&str], body: &[u8]) -> Reply {
    request(addr, "POST", path, headers, body).await
}

/// Any method, with the given headers (each "Name: value") and body; a
/// Content-Length is sent when the method is not GET or the body is not empty.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
) -> Reply {
    raw(addr, &request_bytes(addr, method, path, headers, body)).await
}

/// The bytes of a request as [`request`] sends it.
pub fn request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &[u8],
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if method != "GET" || !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

pub async fn get(addr: SocketAddr, path_and_query: &str) -> Reply {
    let req = format!("GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    raw(addr, req.as_bytes()).await
}

/// A SOAP 1.1 POST with the seed's credentials.
pub async fn soap(addr: SocketAddr, body: &str) -> Reply {
    post(
        addr,
        SOAP_PATH,
        &[
            "Content-Type: text/xml; charset=utf-8",
            &format!("Authorization: {SEED_AUTH}"),
        ],
        body.as_bytes(),
    )
    .await
}

pub fn say_name_envelope(number: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
    <soap:Body>
        <SayName xmlns="http://VATS">
            <Number>{number}</Number>
        </SayName>
    </soap:Body>
</soap:Envelope>
"#
    )
}

pub fn incoming_call_envelope(number: &str, key: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
    <soap:Body>
        <IncomingCall xmlns="http://VATS">
            <NumFrom>{number}</NumFrom>
            <Key>{key}</Key>
        </IncomingCall>
    </soap:Body>
</soap:Envelope>
"#
    )
}

/// The text of the first `<tag>…</tag>` in `xml` (no unescaping).
pub fn element_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}");
    let start = xml.find(&open)?;
    let after_open = start + xml[start..].find('>')? + 1;
    let close = format!("</{tag}>");
    let end = after_open + xml[after_open..].find(&close)?;
    Some(&xml[after_open..end])
}

/// Unescapes the five XML entities (enough for reading `m:return`).
pub fn unescape(text: &str) -> String {
    text.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

/// The `<data>` document a SayName answer carries, unescaped.
pub fn say_name_data(reply: &Reply) -> String {
    let ret = element_text(&reply.body, "m:return")
        .unwrap_or_else(|| panic!("no m:return in {}", reply.body));
    unescape(ret)
}

/// Polls `cond` every 10 ms until it holds; panics with `what` when it does
/// not within `limit`. For "the server has noticed" (a gauge moved, a screen
/// unregistered) instead of a fixed sleep that guesses how long that takes.
/// The tokio clock, as the sleeps between polls use.
pub async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {limit:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A WebSocket screen presenting its token the way 1C's client does: in
/// `Authorization: Bearer`, the URL (`/operator/ws{query}`) carrying only
/// `after`. The handshake's answer within 5 s.
pub async fn screen_with_bearer(
    addr: SocketAddr,
    token: &str,
    query: &str,
) -> Result<tokio_tungstenite::WebSocketStream<TcpStream>, tokio_tungstenite::tungstenite::Error> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = format!("ws://{addr}/operator/ws{query}")
        .into_client_request()
        .expect("request");
    request.headers_mut().insert(
        "Authorization",
        format!("Bearer {token}").parse().expect("header value"),
    );
    let stream = TcpStream::connect(addr).await.expect("connect");
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio_tungstenite::client_async(request, stream),
    )
    .await
    .expect("answer within 5 s")
    .map(|(ws, _)| ws)
}

/// A push body of `n` records from id `full-{first}` on, each about 1 KB
/// (a long name and address): what fills a store under a small file-size
/// limit in a few pushes.
pub fn bulky_batch(first: usize, n: usize) -> String {
    let records: Vec<serde_json::Value> = (first..first + n)
        .map(|i| {
            serde_json::json!({
                "id": format!("full-{i:06}"),
                "name": format!("ООО \"Запись {i}\" — {}", "длинное название ".repeat(8)),
                "phones": [format!("8913{i:07}")],
                "address": "г. Новосибирск, ".repeat(20),
            })
        })
        .collect();
    serde_json::to_string(&records).expect("json")
}
