//! The PBX's endpoint: `POST {soap.path}` (SayName, IncomingCall) and
//! `GET {soap.path}?wsdl`.
//!
//! Everything this endpoint answers is SOAP, refusals included (401, 405,
//! 413, 415...): a fault in the version the request's `Content-Type` names,
//! SOAP 1.1 when it names none. The operations themselves are `vats`'s; this
//! file only checks the request, reads its body and picks the status.

use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use super::auth::{self, AuthFailure, BasicAuth, RefusalLog};
use super::body::{self, BodyError};
use super::client::{self, Client, RequestId};
use super::head::RequestHead;
use super::host::KnownHosts;
use super::respond::{self, with_header, with_status, Body};
use crate::config::Config;
use crate::soap::{FaultCode, SoapVersion};
use crate::vats::{ReplyOutcome, SoapReply, Vats};

/// The largest SOAP request accepted; the PBX's requests are a few hundred bytes.
pub const MAX_SOAP_BODY: usize = 64 * 1024;

/// Bad credentials from the PBX side, logged at most once a minute.
static REFUSALS: RefusalLog = RefusalLog::new("SOAP request");

/// The head of a request to `soap.path` that passed [`SoapEndpoint::check`]:
/// its [`SoapCall`] once given the request's body.
pub struct Checked {
    body_head: body::BodyHead,
    version: SoapVersion,
    request: RequestId,
}

impl Checked {
    pub fn call(self, body: Incoming) -> SoapCall {
        SoapCall {
            body,
            body_head: self.body_head,
            version: self.version,
            request: self.request,
        }
    }
}

/// A request to `soap.path` whose head passed [`SoapEndpoint::check`]:
/// its body, still to be read, and the SOAP version it speaks.
pub struct SoapCall {
    body: Incoming,
    body_head: body::BodyHead,
    version: SoapVersion,
    /// The id its log lines name, if it logs any (an IncomingCall).
    request: RequestId,
}

/// The PBX's endpoint, built once at start-up.
pub struct SoapEndpoint {
    path: String,
    wsdl_requires_auth: bool,
    public_url: Option<String>,
    /// `server.names`: the `Host`s the WSDL may name besides the address
    /// a connection reached.
    hosts: KnownHosts,
    /// `server.listen`, for a request that did not say what it reached.
    listen: std::net::SocketAddr,
    body_read_timeout: Duration,
    basic: BasicAuth,
    vats: Vats,
}

impl SoapEndpoint {
    pub fn new(config: &Config, vats: Vats) -> SoapEndpoint {
        let password = config
            .soap
            .password
            .as_ref()
            .map(|p| p.expose())
            .unwrap_or_default();
        SoapEndpoint {
            path: config.soap.path.clone(),
            wsdl_requires_auth: config.soap.wsdl_requires_auth,
            public_url: config.soap.public_url.clone(),
            hosts: KnownHosts::new(&config.server.names),
            listen: config.server.listen,
            body_read_timeout: config.server.body_read_timeout,
            basic: BasicAuth::new(&config.soap.username, password),
            vats,
        }
    }

    /// `soap.path`: where the PBX posts.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Checks the head of a request to `soap.path` (method, credentials,
    /// `Content-Type`) and answers at once what needs no body: the WSDL and
    /// every refusal. A request that passes is handed back as [`Checked`],
    /// which the request's body makes a [`SoapCall`] for
    /// [`SoapEndpoint::answer`]. Split so that the future the PBX's
    /// requests wait on holds neither the request's head nor any of this:
    /// it is moved on every request.
    ///
    /// `head` is `req`'s, read once by the caller; `declared` the SOAP
    /// version its `Content-Type` names (the caller needs it too).
    #[allow(clippy::result_large_err)] // the Err is the answer itself
    pub fn check(
        &self,
        req: &Request<Incoming>,
        head: &RequestHead<'_>,
        client: Client,
        declared: Option<SoapVersion>,
    ) -> Result<Checked, Response<Body>> {
        let hint = declared.unwrap_or(SoapVersion::V11);
        let is_wsdl = req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|p| p.eq_ignore_ascii_case("wsdl")));
        match *req.method() {
            Method::POST => {}
            // HEAD as GET: hyper leaves the body out and keeps its
            // Content-Length (what a monitor checking the WSDL sends).
            Method::GET | Method::HEAD if is_wsdl => return Err(self.wsdl(req, client)),
            _ => {
                let message = format!(
                    "method {} is not allowed here: POST a SOAP request, or GET ?wsdl",
                    req.method()
                );
                let response = fault(hint, StatusCode::METHOD_NOT_ALLOWED, &message);
                return Err(with_header(response, header::ALLOW, "GET, HEAD, POST"));
            }
        }
        self.check_credentials(req.uri().path(), head.authorization(), client, hint)?;
        let Some(version) = declared else {
            let content_type = head.content_type();
            let message = format!("Content-Type '{content_type:.100}' is not SOAP: send text/xml (SOAP 1.1) or application/soap+xml (SOAP 1.2)");
            return Err(fault(hint, StatusCode::UNSUPPORTED_MEDIA_TYPE, &message));
        };
        Ok(Checked {
            body_head: head.body(),
            version,
            request: client.request,
        })
    }

    /// Reads a checked call's body and answers it.
    pub async fn answer(&self, call: SoapCall) -> Response<Body> {
        let SoapCall {
            body,
            body_head,
            version,
            request,
        } = call;
        let read = body::read_body(body, body_head, MAX_SOAP_BODY, self.body_read_timeout);
        match read.await {
            Ok(body) => {
                let answered = self.vats.answer(&body, version, request).await;
                let logged = answered.logged;
                let mut response = reply(answered);
                // An IncomingCall's success is logged: its answer names the
                // line's id (every other answer but a 200 gets it from the
                // front; a SayName's 200 gets none, it logs nothing).
                if logged && response.status() == StatusCode::OK {
                    response.headers_mut().insert(
                        super::X_REQUEST_ID.clone(),
                        client::request_id_header(request),
                    );
                }
                response
            }
            Err(e) => body_refused(version, e),
        }
    }

    /// The PBX's Basic credentials: a SOAP fault with 401 (and
    /// `WWW-Authenticate`) when missing or wrong, 400 when repeated.
    #[allow(clippy::result_large_err)] // the Err is the answer itself
    fn check_credentials(
        &self,
        path: &str,
        authorization: Result<Option<&HeaderValue>, AuthFailure>,
        client: Client,
        version: SoapVersion,
    ) -> Result<(), Response<Body>> {
        let Err(failure) = authorization.and_then(|h| self.basic.check(h)) else {
            return Ok(());
        };
        REFUSALS.refused(path, client, &failure);
        let response = fault(version, failure.status(), &failure.to_string());
        Err(match failure {
            AuthFailure::Repeated => response,
            _ => with_header(
                response,
                header::WWW_AUTHENTICATE,
                "Basic realm=\"cti-gateway\", charset=\"UTF-8\"",
            ),
        })
    }

    /// The WSDL with this gateway's address as the service's: `https://`
    /// when the client reached the gateway or a trusted proxy over HTTPS;
    /// the request's `Host` only when it names the address the connection
    /// reached or one of `server.names` (see `host.rs`). Never stored by a
    /// cache: it depends on the request.
    fn wsdl(&self, req: &Request<Incoming>, client: Client) -> Response<Body> {
        if self.wsdl_requires_auth {
            let authorization = auth::authorization(req.headers());
            if let Err(refused) =
                self.check_credentials(req.uri().path(), authorization, client, SoapVersion::V11)
            {
                return refused;
            }
        }
        let url = match &self.public_url {
            Some(url) => url.clone(),
            None => {
                let host = self.hosts.service_authority(
                    req.headers().get(header::HOST),
                    client.local.unwrap_or(self.listen),
                    client.https,
                );
                let scheme = if client.https { "https" } else { "http" };
                format!("{scheme}://{host}{}", self.path)
            }
        };
        let response = respond::bytes(crate::soap::wsdl(&url), "text/xml; charset=utf-8");
        with_header(response, header::CACHE_CONTROL, "no-store")
    }
}

/// The request's `Content-Type`, or "" when it has none (or not as text).
fn content_type<B>(req: &Request<B>) -> &str {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The SOAP version the request's `Content-Type` names, if any: the
/// version its refusals are written in.
pub fn declared_version<B>(req: &Request<B>) -> Option<SoapVersion> {
    SoapVersion::from_content_type(content_type(req))
}

/// A body that could not be read, as a `soap:Client` fault.
fn body_refused(version: SoapVersion, e: BodyError) -> Response<Body> {
    let message = match e {
        BodyError::TooLarge { limit } => format!("request body is larger than {limit} bytes"),
        BodyError::Broken => "request body could not be read in full".to_owned(),
        BodyError::TimedOut { after } => format!(
            "request body did not arrive within {} s",
            after.as_secs_f64()
        ),
        BodyError::Encoded => {
            "request body has a Content-Encoding, and the gateway decodes none: send it uncompressed".to_owned()
        }
    };
    let response = fault(version, e.status(), &message);
    if e == BodyError::Encoded {
        // RFC 7694: the codings this endpoint takes.
        return with_header(response, header::ACCEPT_ENCODING, "identity");
    }
    response
}

/// A `soap:Client` fault sent with `status` rather than the fault's own.
pub fn fault(version: SoapVersion, status: StatusCode, message: &str) -> Response<Body> {
    let reply = SoapReply::fault(version, FaultCode::Client, message);
    with_status(self::reply(reply), status)
}

/// `vats`'s reply with its status: 200 for an answer; for a fault, 500 in
/// SOAP 1.1 (which sends every fault so), in SOAP 1.2 400 for a Sender
/// fault and 500 for a Receiver fault.
pub fn reply(reply: SoapReply) -> Response<Body> {
    let status = match (reply.outcome, reply.version) {
        (ReplyOutcome::Answer, _) => StatusCode::OK,
        (ReplyOutcome::Fault(FaultCode::Client), SoapVersion::V12) => StatusCode::BAD_REQUEST,
        (ReplyOutcome::Fault(_), _) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    // A boxed slice becomes `Bytes` as it is; a `Vec` with spare capacity
    // would cost a second allocation for its shared header. An answer's
    // writer reserves its exact length, so there is nothing to shrink.
    let body = Bytes::from(reply.body.into_boxed_slice());
    let mut response = Response::new(Body::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, content_type_header(reply.version));
    response
}

/// An answer's `Content-Type` ([`SoapVersion::content_type`]), made when
/// compiled: `HeaderValue::from_static` run on every answer checks each of
/// its bytes (about 250 instructions a SayName, callgrind).
fn content_type_header(version: SoapVersion) -> HeaderValue {
    // A `HeaderValue` holds `Bytes`, whose pointer is atomic: each use of a
    // constant is a fresh copy of it, which is what is wanted here.
    #[allow(clippy::declare_interior_mutable_const)]
    const V11: HeaderValue = HeaderValue::from_static("text/xml; charset=utf-8");
    #[allow(clippy::declare_interior_mutable_const)]
    const V12: HeaderValue = HeaderValue::from_static("application/soap+xml; charset=utf-8");
    match version {
        SoapVersion::V11 => V11,
        SoapVersion::V12 => V12,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(outcome: ReplyOutcome, version: SoapVersion) -> StatusCode {
        let reply = SoapReply {
            outcome,
            version,
            body: Vec::new(),
            logged: false,
        };
        self::reply(reply).status()
    }

    #[test]
    fn each_version_answers_with_its_own_content_type() {
        for version in [SoapVersion::V11, SoapVersion::V12] {
            assert_eq!(content_type_header(version), version.content_type());
        }
    }

    #[test]
    fn each_outcome_keeps_its_status() {
        use SoapVersion::{V11, V12};
        let client = ReplyOutcome::Fault(FaultCode::Client);
        let server = ReplyOutcome::Fault(FaultCode::Server);
        assert_eq!(status(ReplyOutcome::Answer, V11), StatusCode::OK);
        assert_eq!(status(ReplyOutcome::Answer, V12), StatusCode::OK);
        assert_eq!(status(client, V11), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(status(server, V11), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(status(client, V12), StatusCode::BAD_REQUEST);
        assert_eq!(status(server, V12), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
