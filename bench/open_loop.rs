//! SayName at a fixed rate, for the latency a PBX sees: `bench/run.sh tail`.
//!
//! wrk (`bench/run.sh`) keeps 32 connections busy back to back, so the
//! server always has work queued and its p99 measures how requests queue
//! behind each other at saturation: a few hundred nanoseconds more CPU per
//! request can double it (a spin of 0.3 µs added to the floor server flips
//! its p99 between 0.5 and 1.5 ms). A PBX sends a few hundred requests a
//! second at most. This client sends them on a schedule instead: `--rate`
//! requests a second spread over `--conns` keep-alive connections, each
//! connection sending its next request at its next slot (or at once when
//! the previous answer came after that slot, which is counted as late), and
//! takes each latency from the moment the request was written to the moment
//! its answer was read whole.
//!
//! ```text
//! cargo run --release --example open_loop -- --addr 127.0.0.1:18080 \
//!     --path /telephony/ws/VATS --numbers numbers.txt --rate 20000 --conns 32 \
//!     --seconds 10 --basic SOAP:123
//! ```
//!
//! Prints one machine-readable line, `TAIL_RESULT key=value ...` (latencies
//! in ms). Every answer must be a 200; anything else, or a connection that
//! fails, is counted in `errors`. Runs on one thread (like `wrk -t1`).

use std::time::{Duration, Instant};

use base64::Engine;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    /// host:port of the server.
    #[arg(long)]
    addr: String,
    /// The SOAP endpoint's path.
    #[arg(long, default_value = "/telephony/ws/VATS")]
    path: String,
    /// One number per line (bench/gen_counterparties.rs writes them).
    #[arg(long)]
    numbers: String,
    /// Requests a second, over all connections.
    #[arg(long, default_value_t = 20_000)]
    rate: u32,
    #[arg(long, default_value_t = 32)]
    conns: u32,
    /// How long to measure (after one second of warm-up).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// user:password for HTTP Basic.
    #[arg(long)]
    basic: Option<String>,
}

/// What one connection measured.
#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    late: u64,
    errors: u64,
}

fn main() {
    let args = Args::parse();
    let numbers: Vec<String> = std::fs::read_to_string(&args.numbers)
        .expect("read --numbers")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
        .collect();
    assert!(!numbers.is_empty(), "--numbers has no number");
    assert!(
        args.rate > 0 && args.conns > 0,
        "--rate and --conns must be > 0"
    );
    let auth = args.basic.as_deref().map(|up| {
        format!(
            "Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(up)
        )
    });
    let requests: Vec<Vec<u8>> = numbers
        .iter()
        .take(10_000)
        .map(|n| request(&args.addr, &args.path, auth.as_deref().unwrap_or(""), n))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let interval = Duration::from_secs_f64(f64::from(args.conns) / f64::from(args.rate));
    let warmup = Duration::from_secs(1);
    let measure = Duration::from_secs(args.seconds);
    let tallies = runtime.block_on(async {
        let start = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..args.conns {
            let requests = requests.clone();
            let addr = args.addr.clone();
            // Connections take their slots in turn, not all at once.
            let offset = interval.mul_f64(f64::from(c) / f64::from(args.conns));
            tasks.push(tokio::spawn(async move {
                connection(
                    &addr,
                    &requests,
                    c as usize,
                    start + offset,
                    interval,
                    start + warmup,
                    start + warmup + measure,
                )
                .await
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.push(t.await.expect("connection task"));
        }
        all
    });
    let mut lat: Vec<u32> = tallies
        .iter()
        .flat_map(|t| t.latencies_us.iter().copied())
        .collect();
    lat.sort_unstable();
    let late: u64 = tallies.iter().map(|t| t.late).sum();
    let errors: u64 = tallies.iter().map(|t| t.errors).sum();
    let q = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1;
        f64::from(lat[i]) / 1000.0
    };
    println!(
        "TAIL_RESULT rate={} conns={} seconds={} requests={} achieved_per_s={:.0} late={} errors={} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} p999_ms={:.3} max_ms={:.3}",
        args.rate,
        args.conns,
        args.seconds,
        lat.len(),
        lat.len() as f64 / args.seconds as f64,
        late,
        errors,
        q(0.50),
        q(0.90),
        q(0.99),
        q(0.999),
        lat.last().map_or(0.0, |&us| f64::from(us) / 1000.0),
    );
}

fn request(addr: &str, path: &str, auth: &str, number: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<soap:Envelope xmlns:soap=\"http://schemas.xmlsoap.org/soap/envelope/\">\n    <soap:Body>\n        <SayName xmlns=\"http://VATS\">\n            <Number>{number}</Number>\n        </SayName>\n    </soap:Body>\n</soap:Envelope>\n"
    );
    format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/xml; charset=utf-8\r\nSOAPAction: \"http://VATS/SayName\"\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// One keep-alive connection sending on its schedule until `end`;
/// latencies are kept for requests written after `from`.
async fn connection(
    addr: &str,
    requests: &[Vec<u8>],
    first: usize,
    mut next: Instant,
    interval: Duration,
    from: Instant,
    end: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut stream: Option<TcpStream> = None;
    let mut buf = vec![0u8; 16 * 1024];
    let mut i = first;
    while next < end {
        let now = Instant::now();
        if now < next {
            tokio::time::sleep_until(next.into()).await;
        } else if now > next + interval {
            tally.late += 1;
        }
        next += interval;
        if stream.is_none() {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    stream = Some(s);
                }
                Err(_) => {
                    tally.errors += 1;
                    continue;
                }
            }
        }
        let Some(s) = stream.as_mut() else { continue };
        let req = &requests[i % requests.len()];
        i += 1;
        let sent = Instant::now();
        let ok = s.write_all(req).await.is_ok() && read_answer(s, &mut buf).await;
        let took = sent.elapsed();
        if !ok {
            tally.errors += 1;
            stream = None;
            continue;
        }
        if sent >= from {
            tally
                .latencies_us
                .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        }
    }
    tally
}

/// Reads one HTTP/1.1 answer with a Content-Length whole; true for a 200.
async fn read_answer(s: &mut TcpStream, buf: &mut [u8]) -> bool {
    let mut have = 0;
    loop {
        match s.read(&mut buf[have..]).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => have += n,
        }
        let Some(head_end) = find(&buf[..have], b"\r\n\r\n") else {
            if have == buf.len() {
                return false;
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let Some(len) = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
        else {
            return false;
        };
        let total = head_end + 4 + len;
        if total > buf.len() {
            return false;
        }
        while have < total {
            match s.read(&mut buf[have..]).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => have += n,
            }
        }
        return head.starts_with("http/1.1 200");
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
