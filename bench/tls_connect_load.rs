//! New TLS connections per second, one SayName each: the load of a PBX that
//! opens a connection for every call. `bench/tls.sh` runs it against the
//! gateway and the TLS floor (`floor_server --tls-cert ...`) in turn.
//!
//! `--conns` tasks each loop until `--duration` is over: TCP connect, a full
//! TLS handshake (rustls, ring, TLS 1.3 unless `--tls12`; the server's
//! certificate verified against `--ca`, and session resumption off, so
//! every handshake does the server's whole work: key exchange and a
//! certificate signature), one SayName `POST` with `Connection: close`,
//! the whole answer read (by its `Content-Length`), the connection closed.
//! One thread (like `wrk -t1` in `bench/run.sh`), so the client takes the
//! same share of the machine against either server.
//!
//! ```text
//! cargo run --release --example tls_connect_load -- --addr 127.0.0.1:18443 \
//!     --path /telephony/ws/VATS --ca ca.pem --numbers numbers.txt --conns 32 --duration 10
//! ```
//!
//! Prints one line, with the keys `bench/lib.sh`'s `field` reads:
//! `CONNECT_RESULT connections=N duration_s=S rps=R p50_ms=.. p90_ms=..
//! p99_ms=.. p999_ms=.. max_ms=.. non2xx=N socket_errors=N` (`rps`: new
//! connections, each with its SayName answered, per second; latencies from
//! the TCP connect to the answer's last byte).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Longest one connection may take before it counts as an error.
const CONNECTION_LIMIT: Duration = Duration::from_secs(10);

struct Args {
    addr: SocketAddr,
    path: String,
    ca: PathBuf,
    numbers: PathBuf,
    conns: usize,
    duration: Duration,
    user: String,
    password: String,
    tls12: bool,
}

fn usage() -> ! {
    eprintln!(
        "usage: tls_connect_load --addr HOST:PORT --ca CA.pem --numbers FILE [--path /telephony/ws/VATS] \
         [--conns 32] [--duration SECONDS] [--user SOAP] [--password 123] [--tls12]"
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut addr = None;
    let mut ca = None;
    let mut numbers = None;
    let mut args = Args {
        addr: "127.0.0.1:18443".parse().expect("literal address"),
        path: "/telephony/ws/VATS".into(),
        ca: PathBuf::new(),
        numbers: PathBuf::new(),
        conns: 32,
        duration: Duration::from_secs(10),
        user: "SOAP".into(),
        password: "123".into(),
        tls12: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "--tls12" {
            args.tls12 = true;
            continue;
        }
        let value = it.next().unwrap_or_else(|| usage());
        let bad = |e: &dyn std::fmt::Display| -> ! {
            eprintln!("{flag} {value}: {e}");
            std::process::exit(2)
        };
        match flag.as_str() {
            "--addr" => addr = Some(value.parse().unwrap_or_else(|e| bad(&e))),
            "--path" => args.path = value,
            "--ca" => ca = Some(PathBuf::from(value)),
            "--numbers" => numbers = Some(PathBuf::from(value)),
            "--conns" => args.conns = value.parse().unwrap_or_else(|e| bad(&e)),
            "--duration" => {
                let secs: f64 = value.parse().unwrap_or_else(|e| bad(&e));
                args.duration = Duration::from_secs_f64(secs);
            }
            "--user" => args.user = value,
            "--password" => args.password = value,
            _ => usage(),
        }
    }
    args.addr = addr.unwrap_or_else(|| usage());
    args.ca = ca.unwrap_or_else(|| usage());
    args.numbers = numbers.unwrap_or_else(|| usage());
    if args.conns == 0 {
        usage();
    }
    args
}

/// A client that verifies the server against `ca` and never resumes.
fn connector(args: &Args) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&args.ca).expect("--ca is a PEM file") {
        roots
            .add(cert.expect("--ca holds certificates"))
            .expect("--ca certificate accepted as a root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = if args.tls12 {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13]
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // A full handshake every time: the server's whole work per connection.
    config.resumption = rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(config))
}

/// The requests, one per caller number, as the PBX sends them.
fn requests(args: &Args) -> Vec<Vec<u8>> {
    let text = std::fs::read_to_string(&args.numbers).expect("--numbers readable");
    let auth = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", args.user, args.password));
    let requests: Vec<Vec<u8>> = text
        .lines()
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|number| {
            let body = format!(
                "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\">\n    <soap:Body>\n        <SayName xmlns=\"http://VATS\">\n            <Number>{number}</Number>\n        </SayName>\n    </soap:Body>\n</soap:Envelope>\n"
            );
            format!(
                "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/xml\r\nAuthorization: Basic {auth}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                args.path,
                args.addr,
                body.len()
            )
            .into_bytes()
        })
        .collect();
    assert!(!requests.is_empty(), "--numbers has no numbers");
    requests
}

/// How one connection went.
enum Outcome {
    Answered(u16),
    Failed,
}

/// One connection, one SayName, the whole answer read.
async fn one(
    addr: SocketAddr,
    name: ServerName<'static>,
    connector: &TlsConnector,
    request: &[u8],
) -> std::io::Result<u16> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut tls = connector.connect(name, tcp).await?;
    tls.write_all(request).await?;
    let mut buf = Vec::with_capacity(2048);
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((status, complete)) = answer_read(&buf) {
            if complete {
                return Ok(status);
            }
        }
        let n = tls.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The status of the answer in `buf` and whether it is all there.
fn answer_read(buf: &[u8]) -> Option<(u16, bool)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let length: usize = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())?;
    Some((status, buf.len() >= end + 4 + length))
}

fn percentile(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted_us.len() as f64).ceil() as usize;
    sorted_us[rank.clamp(1, sorted_us.len()) - 1] as f64 / 1000.0
}

fn main() {
    let args = parse_args();
    let connector = connector(&args);
    let requests = Arc::new(requests(&args));
    let name = ServerName::IpAddress(args.addr.ip().into());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let started = Instant::now();
    let deadline = started + args.duration;
    let results = runtime.block_on(async {
        let mut tasks = Vec::with_capacity(args.conns);
        for task in 0..args.conns {
            let (connector, requests, name) =
                (connector.clone(), Arc::clone(&requests), name.clone());
            let addr = args.addr;
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                // Tasks start far apart in the numbers, as saynames.lua's threads do.
                let mut next = task * 7919 % requests.len();
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    let request = &requests[next];
                    next = (next + 1) % requests.len();
                    let outcome = match tokio::time::timeout(
                        CONNECTION_LIMIT,
                        one(addr, name.clone(), &connector, request),
                    )
                    .await
                    {
                        Ok(Ok(status)) => Outcome::Answered(status),
                        Ok(Err(_)) | Err(_) => Outcome::Failed,
                    };
                    seen.push((outcome, t0.elapsed()));
                }
                seen
            }));
        }
        let mut all = Vec::new();
        for task in tasks {
            all.extend(task.await.expect("a connection task"));
        }
        all
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut latencies_us = Vec::with_capacity(results.len());
    let (mut ok, mut non2xx, mut errors) = (0u64, 0u64, 0u64);
    for (outcome, took) in &results {
        match outcome {
            Outcome::Answered(status) if (200..300).contains(status) => {
                ok += 1;
                latencies_us.push(took.as_micros() as u64);
            }
            Outcome::Answered(_) => non2xx += 1,
            Outcome::Failed => errors += 1,
        }
    }
    latencies_us.sort_unstable();
    println!(
        "CONNECT_RESULT connections={ok} duration_s={elapsed:.2} rps={:.1} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} p999_ms={:.3} max_ms={:.3} non2xx={non2xx} socket_errors={errors} tls={}",
        ok as f64 / elapsed,
        percentile(&latencies_us, 50.0),
        percentile(&latencies_us, 90.0),
        percentile(&latencies_us, 99.0),
        percentile(&latencies_us, 99.9),
        latencies_us.last().map_or(0.0, |&us| us as f64 / 1000.0),
        if args.tls12 { "1.2" } else { "1.3" },
    );
}
