//! The sync limiter against an exact bucket over real HTTP: how close to a
//! system's published limit the gateway sends without a single limit
//! answer.
//!
//! ```text
//! cargo run --release --example sync_limiter -- --seconds 60 --burst 50 --per-second 2
//! cargo run --release --example sync_limiter -- --seconds 60 --gap-ms 143
//! cargo run --release --example sync_limiter -- --seconds 60 --per-window 100 --window-s 30
//! ```
//!
//! An in-process HTTP server on 127.0.0.1:0 keeps the remote's limit
//! exactly, as the request arrives: a leaky bucket of `--burst` draining
//! `--per-second` (Bitrix24: 50 and 2/s; it starts empty, the most
//! generous case for the sender), or requests at least `--gap-ms` apart
//! (amoCRM), or at most `--per-window` in any `--window-s` (Bpium); a
//! request over it is answered 503 (counted as a limit answer), others 200.
//! `--tasks` senders (the worker's concurrency, 4) share one
//! `cti_gateway::sync::limiter::Limiter` on the same published limit, each
//! with its keep-alive connection, and send as fast as it lets them for
//! `--seconds`.
//!
//! Prints one `BENCH_RESULT mode=sync_limiter key=value…` line: requests,
//! requests/s, the remote's allowance over the run, the share of it used,
//! limit answers; `goal_met=1` when there was no limit answer and at least
//! 90% of the allowance was used (issue 18). Bounded: the run stops after
//! `--seconds`, each request after 5 s; the server stops with the program.

// Its SayName envelope is not used here.
#[allow(dead_code)]
#[path = "http_conn.rs"]
mod http_conn;
#[path = "../src/sync/remote_limit.rs"]
mod remote_limit;

use std::convert::Infallible;
use std::process::exit;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cti_gateway::sync::limiter::{LimitSpec, Limiter};
use http_body_util::Full;
use http_conn::Conn;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use remote_limit::RemoteLimit;
use tokio::net::TcpListener;

struct Args {
    seconds: u64,
    tasks: usize,
    spec: LimitSpec,
}

fn usage(problem: &str) -> ! {
    eprintln!("sync_limiter: {problem}");
    eprintln!(
        "usage: sync_limiter [--seconds N] [--tasks N] (--burst N --per-second R | --gap-ms N | --per-window N --window-s N)"
    );
    exit(2)
}

fn args() -> Args {
    let mut seconds = 60;
    let mut tasks = 4;
    let (mut burst, mut per_second, mut gap_ms, mut per_window, mut window_s) =
        (None, None, None, None, None);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let number = |v: &str| -> f64 {
            v.parse::<f64>()
                .ok()
                .filter(|n| n.is_finite() && *n > 0.0)
                .unwrap_or_else(|| usage(&format!("{flag} takes a positive number, not {v:?}")))
        };
        match flag.as_str() {
            "--seconds" => seconds = number(&value) as u64,
            "--tasks" => tasks = number(&value) as usize,
            "--burst" => burst = Some(number(&value) as u32),
            "--per-second" => per_second = Some(number(&value)),
            "--gap-ms" => gap_ms = Some(number(&value)),
            "--per-window" => per_window = Some(number(&value) as u32),
            "--window-s" => window_s = Some(number(&value)),
            _ => usage(&format!("unknown flag {flag}")),
        }
    }
    let spec = match (burst, per_second, gap_ms, per_window, window_s) {
        (None, None, Some(gap), None, None) => LimitSpec::Interval {
            gap: Duration::from_secs_f64(gap / 1000.0),
        },
        (None, None, None, Some(per_window), Some(window)) => LimitSpec::Window {
            per_window,
            window: Duration::from_secs_f64(window),
        },
        (burst, per_second, None, None, None) => LimitSpec::Bucket {
            burst: burst.unwrap_or(50),
            per_second: per_second.unwrap_or(2.0),
        },
        _ => {
            usage("give one limit: --burst/--per-second, --gap-ms, or --per-window with --window-s")
        }
    };
    if seconds == 0 || tasks == 0 {
        usage("--seconds and --tasks must be at least 1");
    }
    Args {
        seconds,
        tasks,
        spec,
    }
}

/// The remote enforcing exactly `spec`.
fn remote_of(spec: LimitSpec) -> RemoteLimit {
    match spec {
        LimitSpec::Bucket { burst, per_second } => RemoteLimit::bucket(burst, per_second),
        LimitSpec::Interval { gap } => RemoteLimit::interval(gap),
        LimitSpec::Window { per_window, window } => RemoteLimit::window(per_window, window),
    }
}

#[derive(Default)]
struct Counts {
    accepted: u64,
    limited: u64,
}

/// Serves the remote on 127.0.0.1:0 until the program ends; its address.
async fn serve(remote: Arc<Mutex<(RemoteLimit, Counts, Instant)>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address").to_string();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let remote = Arc::clone(&remote);
            tokio::spawn(async move {
                let service = service_fn(move |_req: Request<hyper::body::Incoming>| {
                    let remote = Arc::clone(&remote);
                    async move {
                        let ok = {
                            let mut remote = remote.lock().expect("remote");
                            let now = remote.2.elapsed();
                            let ok = remote.0.arrive(now);
                            if ok {
                                remote.1.accepted += 1;
                            } else {
                                remote.1.limited += 1;
                            }
                            ok
                        };
                        let (status, body) = if ok {
                            (200, "{\"result\":true}")
                        } else {
                            (503, "{\"error\":\"QUERY_LIMIT_EXCEEDED\"}")
                        };
                        Ok::<_, Infallible>(
                            Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(body.as_bytes())))
                                .expect("response"),
                        )
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::main]
async fn main() {
    let args = args();
    let remote = Arc::new(Mutex::new((
        remote_of(args.spec),
        Counts::default(),
        Instant::now(),
    )));
    let addr = serve(Arc::clone(&remote)).await;
    let limiter = Arc::new(Limiter::new(args.spec));
    let span = Duration::from_secs(args.seconds);
    // The remote's clock starts with the first request it may see.
    let started = Instant::now();
    *remote.lock().expect("remote") = (remote_of(args.spec), Counts::default(), started);
    let end = tokio::time::Instant::now() + span;
    let mut senders = Vec::new();
    for _ in 0..args.tasks {
        let (limiter, addr) = (Arc::clone(&limiter), addr.clone());
        senders.push(tokio::spawn(async move {
            let mut conn = Conn::new(&addr);
            let mut failures = 0u64;
            loop {
                tokio::select! {
                    () = limiter.acquire() => {}
                    () = tokio::time::sleep_until(end) => return failures,
                }
                if tokio::time::Instant::now() >= end {
                    return failures;
                }
                let req = Request::post("/rest/crm.company.update")
                    .header("host", addr.as_str())
                    .body(Full::new(Bytes::from_static(b"{}")))
                    .expect("request");
                if conn.send(req, Duration::from_secs(5)).await.is_err() {
                    failures += 1;
                }
            }
        }));
    }
    let mut failures = 0;
    for sender in senders {
        failures += sender.await.expect("sender");
    }
    let elapsed = started.elapsed();
    let (accepted, limited) = {
        let remote = remote.lock().expect("remote");
        (remote.1.accepted, remote.1.limited)
    };
    let allowance = remote_of(args.spec).allowance(span);
    let used = accepted as f64 / allowance;
    let (kind, limit) = match args.spec {
        LimitSpec::Bucket { burst, per_second } => {
            ("bucket", format!("burst={burst} per_second={per_second}"))
        }
        LimitSpec::Interval { gap } => ("interval", format!("gap_ms={}", gap.as_millis())),
        LimitSpec::Window { per_window, window } => (
            "window",
            format!("per_window={per_window} window_s={}", window.as_secs_f64()),
        ),
    };
    let goal_met = limited == 0 && failures == 0 && used >= 0.9;
    println!(
        "BENCH_RESULT mode=sync_limiter kind={kind} {limit} tasks={} seconds={:.1} requests={} requests_per_s={:.3} allowance={:.0} used={:.3} limit_answers={limited} failures={failures} goal_met={}",
        args.tasks,
        elapsed.as_secs_f64(),
        accepted + limited,
        (accepted + limited) as f64 / elapsed.as_secs_f64(),
        allowance,
        used,
        u8::from(goal_met),
    );
}
