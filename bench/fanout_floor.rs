//! The FLOOR for the pop-up fan-out benchmark: the least a server can do to
//! push an `IncomingCall` to WebSocket screens on this machine.
//!
//! One `tokio::sync::broadcast` channel per operator key (with one key, as in
//! the 1 key × 1,000 screens case, exactly one), no hub, no journal, no
//! directory lookup on the request path, no pings. It speaks the gateway's
//! URLs, so `bench/popup_latency.rs` drives it unchanged:
//!
//! - `GET /operator/ws?token=token-{i:08}` upgrades to a WebSocket for key
//!   `key{i}` (the operators `bench/popup.sh` writes into the gateway's
//!   config); the screen's task subscribes before the `101` goes out.
//! - `POST <soap path>` with an `IncomingCall` sends the pop-up to the key's
//!   screens and answers a fixed `IncomingCall` `1` answer.
//! - `GET /readyz` answers 200, `GET /metrics` an empty 200.
//!
//! The frame has the gateway's pop-up message's shape and size: the same
//! fields, the counterparty card being the caller's line of `--directory`
//! (the JSON Lines file `popup_latency --write-directory` writes and the
//! gateway loads), looked up once at start. Same stack as the gateway: tokio
//! multi-thread runtime with the default worker count, hyper 1.x HTTP/1.1,
//! the upgraded socket taken back as a plain `TcpStream`, tokio-tungstenite
//! with the gateway's buffer sizes ([`config`]).
//!
//! ```text
//! cargo run --release --example fanout_floor -- --listen 127.0.0.1:18081 \
//!     --keys 100 --directory counterparties.jsonl --soap-path /telephony/ws/VATS
//! ```

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// The gateway's `popup.queue_len` in `bench/popup.sh`'s config.
const QUEUE_LEN: usize = 1024;

const ANSWER: &str = r#"<?xml version="1.0" encoding="utf-8"?><soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body><IncomingCallResponse xmlns="http://VATS"><IncomingCallResult>1</IncomingCallResult></IncomingCallResponse></soap:Body></soap:Envelope>"#;

struct Args {
    listen: SocketAddr,
    keys: usize,
    directory: Option<String>,
    soap_path: String,
}

fn usage() -> ! {
    eprintln!(
        "usage: fanout_floor [--listen 127.0.0.1:18081] [--keys K] [--directory FILE] [--soap-path /telephony/ws/VATS]"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut args = Args {
        listen: "127.0.0.1:18081".parse().expect("literal address"),
        keys: 1,
        directory: None,
        soap_path: "/telephony/ws/VATS".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        let bad = |e: &dyn std::fmt::Display| -> ! {
            eprintln!("{flag} {value}: {e}");
            std::process::exit(2)
        };
        match flag.as_str() {
            "--listen" => args.listen = value.parse().unwrap_or_else(|e| bad(&e)),
            "--keys" => args.keys = value.parse().unwrap_or_else(|e| bad(&e)),
            "--directory" => args.directory = Some(value),
            "--soap-path" => args.soap_path = value,
            _ => usage(),
        }
    }
    args
}

/// The gateway's buffer sizes. tungstenite's default read buffer (128 KiB) is
/// zeroed on every read attempt, and a screen's task tries a read each time it
/// wakes: with it, half of this server's CPU went to `memset`, which is not
/// what a floor should measure.
fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
}

/// One operator key: its screens' channel and its sequence numbers. The lock
/// keeps numbering and sending in one order when two calls race.
struct Key {
    name: String,
    seq: Mutex<u64>,
    tx: broadcast::Sender<Utf8Bytes>,
}

struct Floor {
    keys: HashMap<String, Arc<Key>>,
    /// Caller number (digits as the PBX sends them) → card JSON.
    cards: HashMap<String, String>,
    soap_path: String,
}

/// The directory's lines by their first phone (what the benchmark calls from).
fn load_cards(path: &str) -> std::io::Result<HashMap<String, String>> {
    let mut cards = HashMap::new();
    for line in std::fs::read_to_string(path)?.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(phone) = v["phones"][0].as_str() {
            cards.insert(phone.to_owned(), line.to_owned());
        }
    }
    Ok(cards)
}

/// The text between `<tag>` and `</tag>` (no XML parser: this is the floor).
fn between<'a>(body: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = body.find(&open)? + open.len();
    let len = body[start..].find(&format!("</{tag}>"))?;
    Some(body[start..start + len].trim())
}

/// The pop-up message, field for field as the gateway writes it.
fn message(seq: u64, key: &str, raw: &str, card: Option<&str>) -> String {
    // National numbers as E.164 (8XXXXXXXXXX → +7XXXXXXXXXX), as the gateway shows them.
    let number = match raw.strip_prefix('8') {
        Some(rest) if raw.len() == 11 => format!("+7{rest}"),
        _ => format!("+{raw}"),
    };
    let at = humantime::format_rfc3339_seconds(SystemTime::now());
    let mut json = String::with_capacity(160 + card.map_or(4, str::len));
    let _ = write!(
        json,
        r#"{{"type":"incoming_call","seq":{seq},"at":"{at}","number":"{number}","raw_number":"{raw}","key":"{key}","counterparty":{}}}"#,
        card.unwrap_or("null")
    );
    json
}

fn respond(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

impl Floor {
    fn key_of_token(&self, query: &str) -> Option<Arc<Key>> {
        let token = query.split('&').find_map(|p| p.strip_prefix("token="))?;
        let i: usize = token.strip_prefix("token-")?.parse().ok()?;
        self.keys.get(&format!("key{i}")).cloned()
    }

    async fn incoming_call(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let Ok(body) = req.into_body().collect().await else {
            return respond(StatusCode::BAD_REQUEST, "body");
        };
        let body = String::from_utf8_lossy(&body.to_bytes()).into_owned();
        let (Some(raw), Some(key)) = (between(&body, "NumFrom"), between(&body, "Key")) else {
            return respond(StatusCode::BAD_REQUEST, "not an IncomingCall");
        };
        if let Some(key) = self.keys.get(key) {
            let card = self.cards.get(raw).map(String::as_str);
            let mut seq = key.seq.lock().unwrap_or_else(|e| e.into_inner());
            *seq += 1;
            let text = Utf8Bytes::from(message(*seq, &key.name, raw, card));
            // No screen connected is not an error for the PBX.
            let _ = key.tx.send(text);
        }
        let mut r = respond(StatusCode::OK, ANSWER);
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/xml; charset=utf-8"),
        );
        r
    }

    fn screen(&self, mut req: Request<Incoming>) -> Response<Full<Bytes>> {
        let Some(key) = req.uri().query().and_then(|q| self.key_of_token(q)) else {
            return respond(StatusCode::UNAUTHORIZED, "no such token");
        };
        let Some(accept) = req
            .headers()
            .get(header::SEC_WEBSOCKET_KEY)
            .map(|k| derive_accept_key(k.as_bytes()))
        else {
            return respond(StatusCode::BAD_REQUEST, "not a WebSocket handshake");
        };
        let rx = key.tx.subscribe();
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                if let Ok(parts) = upgraded.downcast::<TokioIo<TcpStream>>() {
                    let ws = WebSocketStream::from_partially_read(
                        parts.io.into_inner(),
                        parts.read_buf.to_vec(),
                        Role::Server,
                        Some(config()),
                    )
                    .await;
                    serve(ws, rx).await;
                }
            }
        });
        let mut r = respond(StatusCode::SWITCHING_PROTOCOLS, "");
        let h = r.headers_mut();
        h.insert(
            header::UPGRADE,
            header::HeaderValue::from_static("websocket"),
        );
        h.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("Upgrade"),
        );
        if let Ok(v) = header::HeaderValue::from_str(&accept) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        r
    }

    async fn route(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        match req.uri().path() {
            "/operator/ws" => self.screen(req),
            "/readyz" => respond(StatusCode::OK, "ready"),
            "/metrics" => respond(StatusCode::OK, ""),
            p if p == self.soap_path => self.incoming_call(req).await,
            _ => respond(StatusCode::NOT_FOUND, "not found"),
        }
    }
}

/// A screen: every message of its key out, frames in until it closes.
async fn serve(mut ws: WebSocketStream<TcpStream>, mut rx: broadcast::Receiver<Utf8Bytes>) {
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Ok(text) => {
                    if ws.send(Message::Text(text)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    eprintln!("[fanout_floor] a screen lagged by {n} messages");
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            frame = ws.next() => match frame {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let cards = match &args.directory {
        Some(path) => load_cards(path).unwrap_or_else(|e| {
            eprintln!("[fanout_floor] {path}: {e}");
            std::process::exit(1)
        }),
        None => HashMap::new(),
    };
    let keys = (0..args.keys)
        .map(|i| {
            let name = format!("key{i}");
            let key = Key {
                name: name.clone(),
                seq: Mutex::new(0),
                tx: broadcast::channel(QUEUE_LEN).0,
            };
            (name, Arc::new(key))
        })
        .collect();
    let floor = Arc::new(Floor {
        keys,
        cards,
        soap_path: args.soap_path,
    });
    let listener = TcpListener::bind(args.listen).await.unwrap_or_else(|e| {
        eprintln!("[fanout_floor] bind {}: {e}", args.listen);
        std::process::exit(1)
    });
    eprintln!(
        "[fanout_floor] listening on {} ({} keys, {} cards)",
        args.listen,
        floor.keys.len(),
        floor.cards.len()
    );
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let floor = Arc::clone(&floor);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let floor = Arc::clone(&floor);
                async move { Ok::<_, Infallible>(floor.route(req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}
