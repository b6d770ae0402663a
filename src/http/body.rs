//! The one bounded request body reader: a size cap (checked against the
//! declared `Content-Length` first, then while streaming, chunked or not)
//! and a read timeout. A body with a `Content-Encoding` (gzip...) is not
//! read at all: the gateway decodes none, and compressed bytes read as the
//! plain body would be misread, or a small request could stand for a large
//! one.
//!
//! It answers nothing itself: a [`BodyError`] says what went wrong and its
//! status, and each protocol words it its own way (a SOAP fault for the PBX,
//! JSON for the push API).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::BodyExt;
use hyper::header;
use hyper::{Request, StatusCode};

/// Why a body was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    /// Larger than the limit, as declared or as it arrived.
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// The connection broke or the framing was wrong.
    #[error("the request body could not be read in full")]
    Broken,
    /// Not all there within the timeout.
    #[error("the request body did not arrive within {} s", .after.as_secs_f64())]
    TimedOut { after: Duration },
    /// Sent with a `Content-Encoding` other than `identity`.
    #[error("the request body has a Content-Encoding, and the gateway decodes none: send it uncompressed")]
    Encoded,
}

impl BodyError {
    /// The HTTP status of the refusal, whatever the protocol.
    pub fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Broken => StatusCode::BAD_REQUEST,
            BodyError::TimedOut { .. } => StatusCode::REQUEST_TIMEOUT,
            BodyError::Encoded => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }
}

/// What a request's head says about its body: its declared length and
/// whether it is sent as is. Taken from the head before the body is parted
/// from it ([`read_body`]).
#[derive(Debug, Clone, Copy)]
pub struct BodyHead {
    declared_len: Option<u64>,
    encoded: bool,
}

impl BodyHead {
    /// A body of `declared_len` bytes (its `Content-Length`), sent with a
    /// coding other than `identity` when `encoded`.
    pub fn new(declared_len: Option<u64>, encoded: bool) -> BodyHead {
        BodyHead {
            declared_len,
            encoded,
        }
    }

    /// Reads the head's `Content-Length` and `Content-Encoding`.
    pub fn of(headers: &header::HeaderMap) -> BodyHead {
        let declared_len = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        BodyHead {
            declared_len,
            encoded: !unencoded(headers),
        }
    }
}

/// Whether the body is sent as is: no `Content-Encoding`, or only
/// `identity`. One header lookup when there is none (the PBX's case).
fn unencoded(headers: &header::HeaderMap) -> bool {
    headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .all(is_identity_coding)
}

/// Whether a `Content-Encoding` value names no coding but `identity`.
pub fn is_identity_coding(value: &header::HeaderValue) -> bool {
    value.as_bytes().split(|&b| b == b',').all(|coding| {
        let coding = coding.trim_ascii();
        coding.is_empty() || coding.eq_ignore_ascii_case(b"identity")
    })
}

/// Reads `req`'s body whole: at most `limit` bytes, within `timeout`.
pub async fn read<B>(req: Request<B>, limit: usize, timeout: Duration) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let head = BodyHead::of(req.headers());
    read_body(req.into_body(), head, limit, timeout).await
}

/// Reads a body whole, already parted from its head ([`read`]): at most
/// `limit` bytes, within `timeout`; an encoded one not at all.
pub async fn read_body<B>(
    body: B,
    head: BodyHead,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if head.encoded {
        return Err(BodyError::Encoded);
    }
    if head.declared_len.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let whole = read_whole(body, limit);
    tokio::pin!(whole);
    // The PBX's request usually arrives in one packet with its headers: the
    // body is then complete at the first poll and no timer is armed for it.
    // The timer is boxed: inline, it would make every request's future (the
    // SayName path's too) larger by its size, moved on every request.
    match poll_once(whole.as_mut()) {
        Some(done) => done,
        None => Box::pin(tokio::time::timeout(timeout, whole))
            .await
            .map_err(|_| BodyError::TimedOut { after: timeout })?,
    }
}

/// The body's data frames, at most `limit` bytes in all. One frame (the
/// PBX's request, any small body) is kept as it is, not copied; more are
/// joined. http-body-util's `Limited` and `collect` did the same with a
/// queue of frames and a copy of the lone one, about 1,500 instructions of
/// every SayName (callgrind).
async fn read_whole<B>(body: B, limit: usize) -> Result<Bytes, BodyError>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut body = std::pin::pin!(body);
    let mut first: Option<Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = body.as_mut().frame().await {
        let frame = frame.map_err(|e| {
            let e: Box<dyn std::error::Error + Send + Sync> = e.into();
            tracing::debug!(error = %e, "request body could not be read");
            BodyError::Broken
        })?;
        // Trailers say nothing about the body's bytes.
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        // `Bytes` (hyper's) hands itself over without a copy.
        let data = data.copy_to_bytes(data.remaining());
        len = len.saturating_add(data.len());
        if len > limit {
            return Err(BodyError::TooLarge { limit });
        }
        match first.take() {
            None if joined.is_empty() => first = Some(data),
            None => joined.extend_from_slice(&data),
            Some(lone) => {
                joined.reserve(lone.len() + data.len());
                joined.extend_from_slice(&lone);
                joined.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(joined)))
}

/// Polls a future once, with a waker that does nothing: `Some` if it was
/// already complete. A `None` leaves the future as it was, to be awaited.
fn poll_once<F: Future>(fut: Pin<&mut F>) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match fut.poll(&mut cx) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt as _;
    use http_body_util::{Full, StreamBody};
    use hyper::body::Frame;

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn request<B>(body: B, content_length: Option<usize>) -> Request<B> {
        let mut builder = Request::post("/");
        if let Some(n) = content_length {
            builder = builder.header(header::CONTENT_LENGTH, n);
        }
        builder.body(body).expect("request")
    }

    /// A body that sends `chunks`, then never ends.
    fn stalled(chunks: Vec<&'static [u8]>) -> impl hyper::body::Body<Error = std::io::Error> {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(c))));
        StreamBody::new(futures_util::stream::iter(frames).chain(futures_util::stream::pending()))
    }

    #[tokio::test]
    async fn a_body_within_the_limit_is_read_whole() {
        let got = read(
            request(Full::new(Bytes::from_static(b"abc")), Some(3)),
            3,
            TIMEOUT,
        )
        .await;
        assert_eq!(got, Ok(Bytes::from_static(b"abc")));
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_refused_declared_or_streamed() {
        let declared = request(Full::new(Bytes::from_static(b"ab")), Some(5));
        assert_eq!(
            read(declared, 4, TIMEOUT).await,
            Err(BodyError::TooLarge { limit: 4 })
        );
        let undeclared = request(Full::new(Bytes::from_static(b"abcde")), None);
        assert_eq!(
            read(undeclared, 4, TIMEOUT).await,
            Err(BodyError::TooLarge { limit: 4 })
        );
        assert_eq!(
            BodyError::TooLarge { limit: 4 }.status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_arriving_times_out() {
        let got = read(request(stalled(vec![b"ab"]), None), 100, TIMEOUT).await;
        assert_eq!(got, Err(BodyError::TimedOut { after: TIMEOUT }));
        assert_eq!(
            BodyError::TimedOut { after: TIMEOUT }.to_string(),
            "the request body did not arrive within 10 s"
        );
    }

    #[tokio::test]
    async fn an_encoded_body_is_not_read_and_identity_is_no_encoding() {
        for coding in ["gzip", "identity, gzip", "br", "x-anything"] {
            let mut req = request(Full::new(Bytes::from_static(b"abc")), Some(3));
            req.headers_mut()
                .insert(header::CONTENT_ENCODING, coding.parse().expect("value"));
            assert_eq!(
                read(req, 100, TIMEOUT).await,
                Err(BodyError::Encoded),
                "{coding}"
            );
        }
        for coding in ["identity", "IDENTITY", ""] {
            let mut req = request(Full::new(Bytes::from_static(b"abc")), Some(3));
            req.headers_mut()
                .insert(header::CONTENT_ENCODING, coding.parse().expect("value"));
            assert_eq!(
                read(req, 100, TIMEOUT).await,
                Ok(Bytes::from_static(b"abc")),
                "{coding:?}"
            );
        }
        assert_eq!(
            BodyError::Encoded.status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
    }

    #[tokio::test]
    async fn a_broken_body_is_told_apart() {
        let frames = vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Err(std::io::Error::other("reset")),
        ];
        let body = StreamBody::new(futures_util::stream::iter(frames));
        let got = read(request(body, None), 100, TIMEOUT).await;
        assert_eq!(got, Err(BodyError::Broken));
        assert_eq!(BodyError::Broken.status(), StatusCode::BAD_REQUEST);
    }
}
