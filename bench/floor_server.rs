//! The FLOOR for the SayName benchmark: the fastest a hyper 1.x SOAP server
//! can answer on this machine, with no parsing, lookup or rendering at all.
//!
//! It reads each request body to the end (as the gateway must) and answers
//! `200 text/xml; charset=utf-8` with a fixed body of `--size` bytes. Same
//! stack as the gateway: tokio multi-thread runtime with the default worker
//! count, hyper-util `TokioIo`, HTTP/1.1 only, keep-alive.
//!
//! ```text
//! cargo run --release --example floor_server -- --listen 127.0.0.1:9090 --size 512
//! cargo run --release --example floor_server -- --listen 127.0.0.1:9443 --size 512 \
//!     --tls-cert cert.pem --tls-key key.pem
//! ```
//!
//! `bench/run.sh` sizes the body to the gateway's SayName answer, so both
//! servers write the same bytes per request and the ratio gateway/floor shows
//! what the gateway's own work costs.
//!
//! With `--tls-cert` and `--tls-key` it speaks HTTPS only, through the
//! gateway's own TLS setup (`cti_gateway::http::tls::Tls`: rustls with the
//! ring provider, TLS 1.2 and 1.3, ALPN http/1.1, the same certificate
//! resolver), so the TLS floor differs from the gateway by the gateway's
//! work alone (`bench/tls.sh`).
//!
//! With `--spin-ns N` it also busy-waits N nanoseconds per request after
//! reading the body: a floor made that much slower on purpose, to show how
//! a closed-loop benchmark's latency answers to a server's CPU cost per
//! request (`bench/run.sh` with `BENCH_FLOOR_SPIN`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use cti_gateway::http::tls::Tls;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

struct Args {
    listen: SocketAddr,
    size: usize,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    spin: std::time::Duration,
}

fn usage() -> ! {
    eprintln!("usage: floor_server [--listen 127.0.0.1:9090] [--size BYTES] [--tls-cert PEM --tls-key PEM] [--spin-ns N]");
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut args = Args {
        listen: "127.0.0.1:9090".parse().expect("literal address"),
        size: 512,
        tls_cert: None,
        tls_key: None,
        spin: std::time::Duration::ZERO,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--listen" => {
                args.listen = value.parse().unwrap_or_else(|e| {
                    eprintln!("--listen {value}: {e}");
                    std::process::exit(2)
                })
            }
            "--size" => {
                args.size = value.parse().unwrap_or_else(|e| {
                    eprintln!("--size {value}: {e}");
                    std::process::exit(2)
                })
            }
            "--tls-cert" => args.tls_cert = Some(PathBuf::from(value)),
            "--tls-key" => args.tls_key = Some(PathBuf::from(value)),
            "--spin-ns" => {
                let ns: u64 = value.parse().unwrap_or_else(|e| {
                    eprintln!("--spin-ns {value}: {e}");
                    std::process::exit(2)
                });
                args.spin = std::time::Duration::from_nanos(ns);
            }
            _ => usage(),
        }
    }
    if args.tls_cert.is_some() != args.tls_key.is_some() {
        eprintln!("--tls-cert and --tls-key go together");
        std::process::exit(2);
    }
    args
}

/// The gateway's TLS for `cert` and `key`, or the reason it cannot be had.
fn gateway_tls(cert: &Path, key: &Path) -> Tls {
    // The gateway reports the certificate's expiry here; the floor has no
    // /metrics, so the gauge goes nowhere.
    let expiry = prometheus::Gauge::new("floor_tls_expiry", "unused").expect("a valid gauge");
    Tls::new(cert, key, expiry).unwrap_or_else(|e| {
        eprintln!("TLS: {e}");
        std::process::exit(1)
    })
}

/// A body of exactly `size` bytes that looks like a SOAP envelope (so any
/// compression or buffering on the way behaves as it would for a real one).
fn fixed_body(size: usize) -> Bytes {
    const HEAD: &str =
        "<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\"><soap:Body>";
    const TAIL: &str = "</soap:Body></soap:Envelope>\n";
    let mut body = Vec::with_capacity(size);
    if size >= HEAD.len() + TAIL.len() {
        body.extend_from_slice(HEAD.as_bytes());
        body.resize(size - TAIL.len(), b' ');
        body.extend_from_slice(TAIL.as_bytes());
    } else {
        body.resize(size, b' ');
    }
    debug_assert_eq!(body.len(), size);
    Bytes::from(body)
}

/// Busy-waits `spin` (a CPU cost per request, without touching memory).
fn spin_for(spin: std::time::Duration) {
    if spin.is_zero() {
        return;
    }
    let start = std::time::Instant::now();
    while start.elapsed() < spin {
        std::hint::spin_loop();
    }
}

async fn answer(
    req: Request<Incoming>,
    body: Bytes,
    spin: std::time::Duration,
) -> Result<Response<Full<Bytes>>, Infallible> {
    // Read the whole request, as a SOAP server has to before it can answer.
    // A broken connection just ends this request; hyper closes it.
    let _ = req.into_body().collect().await;
    spin_for(spin);
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/xml; charset=utf-8"),
    );
    Ok(resp)
}

#[tokio::main]
async fn main() {
    let args = parse_args();
    let body = fixed_body(args.size);
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(gateway_tls(cert, key))),
        _ => None,
    };
    let listener = TcpListener::bind(args.listen).await.unwrap_or_else(|e| {
        eprintln!("cannot listen on {}: {e}", args.listen);
        std::process::exit(1)
    });
    eprintln!(
        "floor_server listening on {} (body {} bytes, {})",
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        args.size,
        if tls.is_some() { "HTTPS" } else { "HTTP" }
    );
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment, go on.
                eprintln!("accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let body = body.clone();
        let tls = tls.clone();
        let spin = args.spin;
        tokio::spawn(async move {
            let service = service_fn(move |req| answer(req, body.clone(), spin));
            match tls {
                None => {
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
                Some(tls) => {
                    // A failed handshake just ends the connection, as in the gateway.
                    let Ok(stream) = tls.acceptor().accept(stream).await else {
                        return;
                    };
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                }
            }
        });
    }
}
