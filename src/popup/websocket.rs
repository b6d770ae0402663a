//! The WebSocket transport: `GET /operator/ws?token=T[&after=N]`.
//!
//! The HTTP front authenticates the token and parses `after`; this module
//! checks that the request is a WebSocket handshake ([`Handshake::check`]),
//! subscribes to the hub *before* the `101` goes out (so a screen that has
//! its `101` cannot miss a message published after it), and runs one task
//! per screen that writes each message's frame ([`Message::frame`]) to the
//! socket as it is: the hub encoded it once for every screen, so sending it
//! neither allocates nor copies. tungstenite reads the screen's frames,
//! answers its pings and writes pings and closes; its own output is flushed
//! before a message frame goes out, so frames never interleave.
//!
//! What a screen can rely on, and what it must do:
//!
//! - Keep-alive: the gateway pings every `popup.ping_interval`; a screen
//!   from which no frame at all (a pong, typically) has come for two
//!   intervals is dropped, and so is one whose socket takes more than an
//!   interval to accept a frame. Browsers and tungstenite answer pings by
//!   themselves.
//! - Bounded input: a screen has nothing to say but pongs and a close. Frames
//!   over [`MAX_CLIENT_MESSAGE`] bytes are refused (close 1009); more than
//!   [`MAX_CLIENT_FRAMES_PER_INTERVAL`] frames within one ping interval are a
//!   flood (close 1008).
//! - Close codes from the gateway: 1013 (try again later) when the screen was
//!   cut off for not reading fast enough, with the reason
//!   `too slow: reconnect with after=<last seq sent>`; 1001 (going away) on
//!   shutdown; 1008 for a flood or a missing pong; 1009 for a frame too big;
//!   1002/1007 for protocol or UTF-8 errors. A screen reconnects with
//!   `after=<last seq it saw>` and catches up from the replay buffer.
//! - Bounded output: the socket's kernel send buffer is capped at
//!   [`SEND_BUFFER`], so a screen that stops reading backs up into its hub
//!   queue (`popup.queue_len`) within a few dozen messages and is cut off,
//!   instead of the kernel buffering megabytes for it.
//!
//! Nothing here runs on the PBX's request path: the hub hands messages over
//! with `try_send`, and each screen's task does its own writing.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use super::{Closed, Hub, HubError, Message, Subscription};
use crate::logging::RequestId;

/// Largest frame or message a screen may send (it only ever sends pongs and
/// a close, a few bytes each).
pub const MAX_CLIENT_MESSAGE: usize = 4 * 1024;
/// Frames a screen may send within one ping interval before it counts as a
/// flood: one pong is normal, a few pings of its own are tolerated.
pub const MAX_CLIENT_FRAMES_PER_INTERVAL: u32 = 16;
/// Bytes a screen may send within one ping interval: as many frames of the
/// largest size as the flood rule allows. Counted at the socket, so that
/// fragments and control frames count too (tungstenite hands over whole
/// messages only, and answers pings by itself).
pub const MAX_CLIENT_BYTES_PER_INTERVAL: usize =
    MAX_CLIENT_FRAMES_PER_INTERVAL as usize * (MAX_CLIENT_MESSAGE + 14);
/// Kernel send buffer asked for each screen's socket (Linux doubles it).
pub const SEND_BUFFER: usize = 32 * 1024;
/// How long a close handshake may take before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The one protocol version (RFC 6455).
const VERSION: &str = "13";

/// Why a request is not a WebSocket handshake this gateway accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// 400, or 426 (Upgrade Required) for a protocol version other than 13:
    /// the answer must then carry `Sec-WebSocket-Version: 13` (RFC 6455 §4.4),
    /// see [`Refusal::headers`].
    pub status: StatusCode,
    pub message: &'static str,
}

impl Refusal {
    fn bad(message: &'static str) -> Refusal {
        Refusal {
            status: StatusCode::BAD_REQUEST,
            message,
        }
    }

    /// Headers the refusal must carry.
    pub fn headers(&self) -> Vec<(header::HeaderName, HeaderValue)> {
        if self.status == StatusCode::UPGRADE_REQUIRED {
            vec![(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static(VERSION),
            )]
        } else {
            Vec::new()
        }
    }
}

/// A request checked to be a WebSocket handshake, with its upgrade taken.
pub struct Handshake {
    accept: HeaderValue,
    on_upgrade: OnUpgrade,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake").finish_non_exhaustive()
    }
}

impl Handshake {
    /// Checks RFC 6455's opening handshake (§4.2.1): HTTP/1.1 GET with
    /// `Connection: Upgrade`, `Upgrade: websocket`, `Sec-WebSocket-Version: 13`
    /// and a `Sec-WebSocket-Key` of 16 bytes in base64. No subprotocol and no
    /// extension is ever agreed to.
    pub fn check<B>(req: &mut Request<B>) -> Result<Handshake, Refusal> {
        let headers = req.headers();
        if req.version() != Version::HTTP_11 {
            return Err(Refusal::bad("a WebSocket handshake needs HTTP/1.1"));
        }
        if !has_token(headers, &header::CONNECTION, "upgrade")
            || !has_token(headers, &header::UPGRADE, "websocket")
        {
            return Err(Refusal::bad(
                "not a WebSocket handshake: send Connection: Upgrade and Upgrade: websocket",
            ));
        }
        match single(headers, &header::SEC_WEBSOCKET_VERSION) {
            None => {
                return Err(Refusal::bad(
                    "not a WebSocket handshake: Sec-WebSocket-Version is missing",
                ))
            }
            Some(v) if v.as_bytes() == VERSION.as_bytes() => {}
            Some(_) => {
                return Err(Refusal {
                    status: StatusCode::UPGRADE_REQUIRED,
                    message: "unsupported WebSocket version: this gateway speaks version 13",
                })
            }
        }
        let key = single(headers, &header::SEC_WEBSOCKET_KEY)
            .filter(|k| is_valid_key(k.as_bytes()))
            .ok_or(Refusal::bad(
                "not a WebSocket handshake: Sec-WebSocket-Key is missing or not 16 bytes in base64",
            ))?;
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .map_err(|_| Refusal::bad("Sec-WebSocket-Key cannot be answered"))?;
        let on_upgrade = hyper::upgrade::on(req);
        Ok(Handshake { accept, on_upgrade })
    }

    /// Subscribes the screen to its operator's `key` (with `after`, see
    /// [`Hub::subscribe`]), starts the screen's task and returns the `101`.
    /// `operator` is the operator's name, `request` the handshake's id
    /// (its `X-Request-Id`), for the logs: every line of the screen's
    /// connection, to its end, names that id.
    #[allow(clippy::too_many_arguments)] // each is one thing the screen's task needs
    pub fn accept(
        self,
        hub: &Hub,
        key: &str,
        operator: &str,
        after: Option<u64>,
        ping_interval: Duration,
        slot: impl Send + 'static,
        request: RequestId,
    ) -> Result<Response<Full<Bytes>>, HubError> {
        // Where the screen stands if it is cut off before it is sent anything.
        let resume = match after {
            Some(n) => n,
            None => hub.last_seq(key).ok_or(HubError::UnknownKey)?,
        };
        let subscription = hub.subscribe(key, after)?;
        tracing::debug!(%key, %operator, after, request_id = %request, "operator screen connected (WebSocket)");
        let (key, operator) = (key.to_owned(), operator.to_owned());
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            let end = match on_upgrade.await {
                Ok(upgraded) => run(upgraded, subscription, resume, ping_interval, request).await,
                Err(e) => End::Broken(format!("upgrade failed: {e}")),
            };
            end.log(&key, &operator, request);
            drop(slot); // the screen's connection slot, held while it lives
        });

        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, self.accept);
        Ok(response)
    }
}

/// Whether a comma-separated header (any of its lines) lists `token`.
fn has_token(headers: &HeaderMap, name: &header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// The header's value if it is given exactly once.
fn single<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> Option<&'a HeaderValue> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    values.next().is_none().then_some(first)
}

/// A key is 16 random bytes in base64: 24 characters ending in `==`.
fn is_valid_key(key: &[u8]) -> bool {
    use base64::Engine as _;
    key.len() == 24
        && base64::engine::general_purpose::STANDARD
            .decode(key)
            .is_ok_and(|k| k.len() == 16)
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        // Many screens, each reading a pong now and then: small buffers.
        .read_buffer_size(MAX_CLIENT_MESSAGE)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * 1024 * 1024)
        .max_message_size(Some(MAX_CLIENT_MESSAGE))
        .max_frame_size(Some(MAX_CLIENT_MESSAGE))
}

/// Takes the socket back from hyper and serves the screen until it ends.
async fn run(
    upgraded: hyper::upgrade::Upgraded,
    subscription: Subscription,
    resume: u64,
    ping_interval: Duration,
    request: RequestId,
) -> End {
    // The server hands hyper a `TokioIo<TcpStream>`: take the plain socket
    // back (to cap its send buffer) with what hyper read past the request,
    // and register it with this task's runtime (the screens'), so that its
    // readiness events are not handled by the HTTP runtime's workers.
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let tcp = match parts
                .io
                .into_inner()
                .into_std()
                .and_then(TcpStream::from_std)
            {
                Ok(tcp) => tcp,
                Err(e) => return End::Broken(format!("cannot move the socket: {e}")),
            };
            if let Err(e) = socket2::SockRef::from(&tcp).set_send_buffer_size(SEND_BUFFER) {
                tracing::debug!(error = %e, request_id = %request, "cannot cap a screen's send buffer");
            }
            let ws = WebSocketStream::from_partially_read(
                Metered::new(tcp),
                parts.read_buf.to_vec(),
                Role::Server,
                Some(config()),
            )
            .await;
            serve(ws, subscription, resume, ping_interval).await
        }
        Err(upgraded) => {
            let ws = WebSocketStream::from_raw_socket(
                Metered::new(TokioIo::new(upgraded)),
                Role::Server,
                Some(config()),
            )
            .await;
            serve(ws, subscription, resume, ping_interval).await
        }
    }
}

/// How a screen's connection ended, for the log.
#[derive(Debug)]
enum End {
    /// The screen sent a close frame.
    ClientClosed,
    /// The connection ended without a close frame.
    ClientGone,
    /// Cut off by the hub for not reading (close 1013).
    Slow,
    /// The hub shut down (close 1001).
    Shutdown,
    /// No frame for two ping intervals.
    Dead,
    /// A frame could not be written within a ping interval.
    Stalled,
    /// Too many frames from the screen (close 1008).
    Flood,
    /// A frame over the limit (close 1009).
    TooBig,
    /// A protocol or I/O error.
    Broken(String),
}

impl End {
    /// Why the screen's connection ended, in words an admin can act on.
    fn reason(&self) -> &'static str {
        match self {
            End::ClientClosed => "the screen closed the connection",
            End::ClientGone => "the connection ended without a close frame (the page closed, the network dropped)",
            End::Slow => "the screen did not read its messages: its queue (popup.queue_len) filled up",
            End::Shutdown => "the gateway is shutting down",
            End::Dead => "the screen answered no ping: nothing came from it for two popup.ping_interval",
            End::Stalled => "a message could not be written to the screen within popup.ping_interval (its network or browser is stuck)",
            End::Flood => "the screen sent too many frames",
            End::TooBig => "the screen sent a frame over the size limit",
            End::Broken(_) => "protocol or network error",
        }
    }

    fn log(&self, key: &str, name: &str, request: RequestId) {
        let reason = self.reason();
        match self {
            End::ClientClosed | End::ClientGone | End::Shutdown => {
                tracing::debug!(%key, operator = %name, reason, request_id = %request, "operator screen disconnected");
            }
            End::Broken(error) => {
                tracing::debug!(%key, operator = %name, reason, %error, request_id = %request, "operator screen connection failed");
            }
            End::Slow | End::Dead | End::Stalled | End::Flood | End::TooBig => {
                tracing::info!(%key, operator = %name, reason, request_id = %request, "operator screen dropped");
            }
        }
    }
}

/// What is left to do with the socket once the screen's loop is over.
enum Then {
    /// Send this close frame and wait, briefly, for the screen's answer.
    Close(CloseCode, Utf8Bytes),
    /// The screen closed: let tungstenite send the answering close.
    Finish,
    /// Nothing can be said any more: drop the socket.
    Drop,
}

/// Serves a screen until it ends. The subscription is dropped (the hub stops
/// queuing to this screen) before the closing handshake.
async fn serve<S>(
    mut ws: WebSocketStream<Metered<S>>,
    subscription: Subscription,
    resume: u64,
    ping_interval: Duration,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (end, then) = pump(&mut ws, subscription, resume, ping_interval).await;
    match then {
        Then::Close(code, reason) => {
            let frame = CloseFrame { code, reason };
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                if ws.close(Some(frame)).await.is_ok() {
                    drain(&mut ws).await;
                }
            })
            .await;
        }
        Then::Finish => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain(&mut ws)).await;
        }
        Then::Drop => {}
    }
    end
}

/// The screen's loop: messages out, pongs in, a ping every interval.
async fn pump<S>(
    ws: &mut WebSocketStream<Metered<S>>,
    mut subscription: Subscription,
    mut resume: u64,
    ping_interval: Duration,
) -> (End, Then)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let close = |code, reason: &str| Then::Close(code, Utf8Bytes::from(reason));
    let started = Instant::now();
    let mut ping = tokio::time::interval_at(started + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = started;
    let mut frames_this_interval: u32 = 0;
    // Whether tungstenite may have output of its own waiting (a pong for a
    // ping it just read): then it is flushed before the next message frame.
    let mut owed = false;
    loop {
        tokio::select! {
            // Frames from the screen first: a pong waiting to be read must
            // count before the keep-alive check.
            biased;
            frame = ws.next() => match frame {
                None => return (End::ClientGone, Then::Drop),
                Some(Ok(WsMessage::Close(_))) => return (End::ClientClosed, Then::Finish),
                Some(Ok(_)) => {
                    last_heard = Instant::now();
                    owed = true;
                    frames_this_interval += 1;
                    if frames_this_interval > MAX_CLIENT_FRAMES_PER_INTERVAL {
                        return (End::Flood, close(CloseCode::Policy, "too many frames: a screen sends only pongs and close"));
                    }
                }
                Some(Err(_)) if ws.get_ref().flooded => {
                    return (End::Flood, close(CloseCode::Policy, "too many bytes: a screen sends only pongs and close"));
                }
                Some(Err(e)) => return match e {
                    WsError::Capacity(_) => (End::TooBig, close(CloseCode::Size, "frame too big: a screen sends only pongs and close")),
                    WsError::Utf8(_) => (End::Broken(e.to_string()), close(CloseCode::Invalid, "text frame is not UTF-8")),
                    WsError::Protocol(_) => (End::Broken(e.to_string()), close(CloseCode::Protocol, "WebSocket protocol error")),
                    // I/O errors: the connection is gone, nothing to say.
                    _ => (End::Broken(e.to_string()), Then::Drop),
                },
            },
            _ = ping.tick() => {
                frames_this_interval = 0;
                ws.get_mut().read_this_interval = 0;
                if last_heard.elapsed() > 2 * ping_interval {
                    return (End::Dead, close(CloseCode::Policy, "no answer to ping"));
                }
                if let Err(end) = send(ws, WsMessage::Ping(Bytes::new()), ping_interval).await {
                    return (end, Then::Drop);
                }
            },
            next = subscription.recv() => match next {
                Ok(message) => {
                    if let Err(end) = send_message(ws, &message, owed, ping_interval).await {
                        return (end, Then::Drop);
                    }
                    owed = false;
                    resume = message.seq;
                }
                Err(Closed::SlowConsumer) => {
                    let reason = format!("too slow: reconnect with after={resume}");
                    return (End::Slow, Then::Close(CloseCode::Again, reason.into()));
                }
                Err(Closed::HubShutdown) => {
                    return (End::Shutdown, close(CloseCode::Away, "gateway shutting down"));
                }
            },
        }
    }
}

/// A screen's socket that counts the bytes the screen sends in the current
/// ping interval, and fails every read once they pass
/// [`MAX_CLIENT_BYTES_PER_INTERVAL`]: a flood of fragments or control
/// frames never surfaces as messages, so the frame count cannot see it.
struct Metered<S> {
    inner: S,
    read_this_interval: usize,
    flooded: bool,
}

impl<S> Metered<S> {
    fn new(inner: S) -> Metered<S> {
        Metered {
            inner,
            read_this_interval: 0,
            flooded: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let flood = || std::io::Error::other("the screen sends more than a screen may");
        if self.flooded {
            return std::task::Poll::Ready(Err(flood()));
        }
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = &polled {
            self.read_this_interval += buf.filled().len() - before;
            if self.read_this_interval > MAX_CLIENT_BYTES_PER_INTERVAL {
                self.flooded = true;
                return std::task::Poll::Ready(Err(flood()));
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Sends one frame within `limit`: a socket that takes longer belongs to a
/// screen that does not read ([`End::Stalled`]).
async fn send<S>(ws: &mut WebSocketStream<S>, frame: WsMessage, limit: Duration) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(limit, ws.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(End::Broken(e.to_string())),
        Err(_) => Err(End::Stalled),
    }
}

/// Writes a message's frame, encoded once by the hub for every screen, to
/// the screen's socket within `limit` ([`End::Stalled`] otherwise).
///
/// With `owed`, tungstenite is flushed first: a pong it owes goes out before,
/// so the frames stay whole and in order (its own frames, pings and closes,
/// are awaited until written). Only this task writes, and only between two
/// reads of the loop in [`pump`], where no close has been received (the loop
/// ends on one) and none sent yet.
///
/// A frame the socket takes at once (nearly always) costs one write and no
/// timer: the timeout starts only if the first attempt has to wait.
async fn send_message<S>(
    ws: &mut WebSocketStream<S>,
    message: &Message,
    owed: bool,
    limit: Duration,
) -> Result<(), End>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let write = async {
        if owed {
            ws.flush().await.map_err(|e| End::Broken(e.to_string()))?;
        }
        ws.get_mut()
            .write_all(message.frame())
            .await
            .map_err(|e| End::Broken(e.to_string()))
    };
    let mut write = std::pin::pin!(write);
    match std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
        Poll::Ready(written) => written,
        Poll::Pending => tokio::time::timeout(limit, write)
            .await
            .unwrap_or(Err(End::Stalled)),
    }
}

/// Reads (and drops) frames until the close handshake is over.
async fn drain<S>(ws: &mut WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(Ok(_)) = ws.next().await {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_reasons_are_words_not_variant_names() {
        // Issue #16: the log said `end="Dead"`.
        for end in [
            End::ClientClosed,
            End::ClientGone,
            End::Slow,
            End::Shutdown,
            End::Dead,
            End::Stalled,
            End::Flood,
            End::TooBig,
            End::Broken("x".into()),
        ] {
            let reason = end.reason();
            let variant = format!("{end:?}");
            let variant = variant.split('(').next().unwrap_or_default();
            assert!(!reason.contains(variant), "{reason}");
            assert!(reason.contains(' '), "{reason}");
        }
        assert!(End::Dead.reason().contains("ping"));
    }

    fn request(headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::get("/operator/ws?token=x");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request")
    }

    const GOOD: [(&str, &str); 4] = [
        ("Connection", "keep-alive, Upgrade"),
        ("Upgrade", "WebSocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn a_handshake_is_answered_with_the_rfc_accept_key() {
        let mut req = request(&GOOD);
        let handshake = Handshake::check(&mut req).expect("a handshake");
        // RFC 6455 §1.3's example.
        assert_eq!(handshake.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn what_is_not_a_handshake_is_refused() {
        let without = |name: &str| -> Vec<(&str, &str)> {
            GOOD.iter().copied().filter(|(n, _)| *n != name).collect()
        };
        let with = |name: &'static str, value: &'static str| -> Vec<(&str, &str)> {
            let mut h = without(name);
            h.push((name, value));
            h
        };
        for headers in [
            without("Connection"),
            without("Upgrade"),
            without("Sec-WebSocket-Version"),
            without("Sec-WebSocket-Key"),
            with("Upgrade", "h2c"),
            with("Connection", "keep-alive"),
            with("Sec-WebSocket-Key", "short"),
            with("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ"),
            with("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZSEh"),
        ] {
            let refusal = Handshake::check(&mut request(&headers)).expect_err("refused");
            assert_eq!(refusal.status, StatusCode::BAD_REQUEST, "{headers:?}");
            assert!(refusal.headers().is_empty());
        }
        let refusal = Handshake::check(&mut request(&with("Sec-WebSocket-Version", "8")))
            .expect_err("refused");
        assert_eq!(refusal.status, StatusCode::UPGRADE_REQUIRED);
        assert_eq!(
            refusal.headers(),
            vec![(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13")
            )]
        );

        let mut twice = request(&GOOD);
        twice.headers_mut().append(
            header::SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        assert!(Handshake::check(&mut twice).is_err());

        let mut old = request(&GOOD);
        *old.version_mut() = Version::HTTP_10;
        assert!(Handshake::check(&mut old).is_err());
    }
}
