//! Building answers: JSON, plain text, a changed status or an added header.
//!
//! Shared by every endpoint group; what an answer says stays with its
//! endpoint, these only give it a body, a status and a `Content-Type`.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Frame, SizeHint};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Response, StatusCode};
use tokio::sync::mpsc;

/// Every answer's body: whole, in memory (all but one: the largest is
/// `/metrics`), or streamed from a channel (the id-map export, which may be
/// larger than is worth holding). A whole body keeps its exact size, so its
/// answer has a `Content-Length`; a streamed one goes out chunked.
pub struct Body(Kind);

enum Kind {
    Whole(Full<Bytes>),
    /// Chunks as a task produces them. An `Err` ends the answer as a broken
    /// one (hyper closes the connection without the last chunk), so a
    /// client never takes a cut export for a whole one.
    Stream(mpsc::Receiver<Result<Bytes, StreamError>>),
}

/// Why a streamed body stopped before its end.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StreamError(pub String);

impl Body {
    /// A whole body.
    pub fn new(bytes: impl Into<Bytes>) -> Body {
        Body(Kind::Whole(Full::new(bytes.into())))
    }

    /// A body streamed from `chunks`: it ends when every sender is gone,
    /// and breaks off at the first `Err`.
    pub fn stream(chunks: mpsc::Receiver<Result<Bytes, StreamError>>) -> Body {
        Body(Kind::Stream(chunks))
    }
}

impl From<Full<Bytes>> for Body {
    fn from(full: Full<Bytes>) -> Body {
        Body(Kind::Whole(full))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = StreamError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamError>>> {
        match &mut self.get_mut().0 {
            Kind::Whole(full) => Pin::new(full)
                .poll_frame(cx)
                .map_err(|never| match never {}),
            Kind::Stream(chunks) => chunks
                .poll_recv(cx)
                .map(|chunk| chunk.map(|chunk| chunk.map(Frame::data))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Kind::Whole(full) => full.is_end_stream(),
            Kind::Stream(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Kind::Whole(full) => full.size_hint(),
            Kind::Stream(_) => SizeHint::default(),
        }
    }
}

/// `value` as `application/json`, with `status`.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Body::new(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// `{"error": message}` with `status`: how every JSON endpoint refuses.
pub fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    json(status, &serde_json::json!({ "error": message }))
}

/// A fixed `text/plain` answer.
pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// `body` with its `Content-Type`, status 200.
pub fn bytes(body: impl Into<Bytes>, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::new(body));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// `response` with its status replaced.
pub fn with_status(mut response: Response<Body>, status: StatusCode) -> Response<Body> {
    *response.status_mut() = status;
    response
}

/// `response` with one more header (replacing one of the same name).
pub fn with_header(
    mut response: Response<Body>,
    name: HeaderName,
    value: &'static str,
) -> Response<Body> {
    response
        .headers_mut()
        .insert(name, HeaderValue::from_static(value));
    response
}
