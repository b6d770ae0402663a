//! Pop-up latency benchmark: from sending `IncomingCall(NumFrom, Key)` over
//! SOAP to each WebSocket screen of that key having the message.
//!
//! It starts nothing but clients. Against a running gateway it connects
//! `--keys` × `--screens-per-key` screens to `GET /operator/ws?token=T`,
//! sends `--calls` IncomingCall requests to random keys, `--interval-ms`
//! apart (open loop: a slow answer does not delay the next call), and matches
//! every frame a screen receives to its call by `raw_number` (each call has
//! its own `NumFrom`). It prints, in milliseconds:
//!
//! - per screen: request written → this screen has the frame, one sample per
//!   (call, screen);
//! - per call, last screen: request written → the last screen of the key has
//!   it (the issue's "received by every screen");
//! - per call, first screen; and the SOAP answer (`1`, after the journal commit);
//! - with `--idle-calls N`: the SOAP answer of N calls sent the same way
//!   before any screen connects (after a warm-up), the yardstick for the
//!   answer's latency while the screens are served;
//!
//! and the counts: frames expected, received, lost, duplicated, misrouted
//! (a screen got another key's call), wrong card, out of order, screens that
//! closed early. Lines starting with `BENCH_RESULT` are key=value.
//!
//! ```text
//! cargo run --release --example popup_latency -- --addr 127.0.0.1:18081 \
//!     --keys 100 --screens-per-key 10 --calls 1000
//! cargo run --release --example popup_latency -- --write-directory dir.jsonl --calls 1000
//! ```
//!
//! Operators: key `key{i}`, token `token-{i:08}` for i in 0..keys (what
//! `bench/popup.sh` writes into the config), or `--tokens-file` with one
//! `KEY TOKEN` pair a line. Callers: call i of the measured run sends
//! `NumFrom` `8900` + i in 7 digits (a counterparty of `--write-directory`,
//! id `00000000-0000-4000-8000-{i:012}`) or, for `--unknown-ratio` of the
//! calls, `8910` + i (nobody: `counterparty` null); warm-up calls send `8920…`.
//!
//! How the time is taken: `Instant::now()` just before the request is written
//! to an open keep-alive connection, and just after a screen's task gets the
//! text frame from its socket (the frame is kept and parsed after the run, so
//! that parsing does not delay the other screens). Clients and gateway share
//! the machine: the figures include the clients' own scheduling. The PBX's
//! side (the calls and their answers) runs on a runtime of its own (one
//! thread, `pbx`), as a PBX is another machine: a SOAP answer is not read late
//! because this client's screens have a thousand frames to read.
//!
//! CPU: over the measured calls it reads /proc for its own CPU time, the
//! gateway's (`--gateway-pid`) and the machine's idle time, and prints the
//! gateway's and its own CPU per call and what other processes used meanwhile
//! (a busy neighbour explains a bad p99), and the hypervisor's steal time
//! over the same span. Exit status 1 when anything was
//! lost, misrouted or failed, or `--goal-p99-ms` (on the last screen) was missed.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use futures_util::StreamExt;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

const KNOWN_PREFIX: u64 = 89_000_000_000;
const UNKNOWN_PREFIX: u64 = 89_100_000_000;
const WARMUP_PREFIX: u64 = 89_200_000_000;
const CALL_RANGE: u64 = 10_000_000;
/// Longest a SOAP request may take before it counts as failed.
const SOAP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
struct Args {
    addr: String,
    keys: usize,
    screens_per_key: usize,
    calls: usize,
    interval: Duration,
    warmup: usize,
    idle_calls: usize,
    seed: u64,
    tokens_file: Option<PathBuf>,
    soap_path: String,
    user: String,
    password: String,
    unknown_ratio: f64,
    drain: Duration,
    connect_concurrency: usize,
    connect_timeout: Duration,
    client_threads: usize,
    soap_conns: usize,
    label: String,
    goal_p99_ms: Option<f64>,
    gateway_pid: Option<u32>,
    write_directory: Option<PathBuf>,
}

fn usage() -> ! {
    eprintln!(
        "usage: popup_latency --addr HOST:PORT [--keys K] [--screens-per-key S] [--calls N]
         [--interval-ms 20] [--warmup 20] [--idle-calls 0] [--seed 42] [--tokens-file FILE]
         [--soap-path /telephony/ws/VATS] [--user SOAP] [--password 123]
         [--unknown-ratio 0.1] [--drain-ms 3000] [--connect-concurrency 32]
         [--connect-timeout-s 60] [--client-threads 2] [--soap-conns 4]
         [--label NAME] [--goal-p99-ms MS] [--gateway-pid PID]
       popup_latency --write-directory FILE --calls N
Operators are key{{i}} / token-{{i:08}} unless --tokens-file gives KEY TOKEN lines."
    );
    std::process::exit(2);
}

fn parse_args() -> Args {
    let mut a = Args {
        addr: String::new(),
        keys: 1,
        screens_per_key: 1,
        calls: 200,
        interval: Duration::from_millis(20),
        warmup: 20,
        idle_calls: 0,
        seed: 42,
        tokens_file: None,
        soap_path: "/telephony/ws/VATS".into(),
        user: "SOAP".into(),
        password: "123".into(),
        unknown_ratio: 0.1,
        drain: Duration::from_millis(3000),
        connect_concurrency: 32,
        connect_timeout: Duration::from_secs(60),
        client_threads: 2,
        soap_conns: 4,
        label: String::new(),
        goal_p99_ms: None,
        gateway_pid: None,
        write_directory: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            usage();
        }
        let Some(v) = it.next() else { usage() };
        fn num<T: std::str::FromStr>(flag: &str, v: &str) -> T {
            v.parse().unwrap_or_else(|_| {
                eprintln!("{flag}: not a number: {v}");
                std::process::exit(2)
            })
        }
        match flag.as_str() {
            "--addr" => a.addr = v,
            "--keys" => a.keys = num(&flag, &v),
            "--screens-per-key" => a.screens_per_key = num(&flag, &v),
            "--calls" => a.calls = num(&flag, &v),
            "--interval-ms" => a.interval = Duration::from_secs_f64(num::<f64>(&flag, &v) / 1e3),
            "--warmup" => a.warmup = num(&flag, &v),
            "--idle-calls" => a.idle_calls = num(&flag, &v),
            "--seed" => a.seed = num(&flag, &v),
            "--tokens-file" => a.tokens_file = Some(v.into()),
            "--soap-path" => a.soap_path = v,
            "--user" => a.user = v,
            "--password" => a.password = v,
            "--unknown-ratio" => a.unknown_ratio = num(&flag, &v),
            "--drain-ms" => a.drain = Duration::from_millis(num(&flag, &v)),
            "--connect-concurrency" => a.connect_concurrency = num::<usize>(&flag, &v).max(1),
            "--connect-timeout-s" => a.connect_timeout = Duration::from_secs(num(&flag, &v)),
            "--client-threads" => a.client_threads = num::<usize>(&flag, &v).max(1),
            "--soap-conns" => a.soap_conns = num::<usize>(&flag, &v).max(1),
            "--label" => a.label = v,
            "--goal-p99-ms" => a.goal_p99_ms = Some(num(&flag, &v)),
            "--gateway-pid" => a.gateway_pid = Some(num(&flag, &v)),
            "--write-directory" => a.write_directory = Some(v.into()),
            _ => usage(),
        }
    }
    if a.write_directory.is_none() && a.addr.is_empty() {
        usage();
    }
    if a.calls as u64 >= CALL_RANGE || a.warmup as u64 >= CALL_RANGE {
        eprintln!("--calls and --warmup must be below {CALL_RANGE}");
        std::process::exit(2);
    }
    if a.keys == 0 || a.screens_per_key == 0 {
        eprintln!("--keys and --screens-per-key must be at least 1");
        std::process::exit(2);
    }
    if a.label.is_empty() {
        a.label = format!("{}x{}", a.keys, a.screens_per_key);
    }
    a
}

fn counterparty_id(i: usize) -> String {
    format!("00000000-0000-4000-8000-{i:012}")
}

/// `--write-directory`: one counterparty per measured call number.
fn write_directory(path: &PathBuf, calls: usize) -> std::io::Result<()> {
    let mut out = String::with_capacity(calls * 200);
    for i in 0..calls {
        let _ = writeln!(
            out,
            r#"{{"id":"{}","name":"ООО \"Бенчмарк {i}\"","inn":"77{:08}","kpp":"770101001","category":{},"manager_phone":"{}","phones":["{}","+7 495 000-{:02}-{:02}"]}}"#,
            counterparty_id(i),
            i,
            i % 3,
            200 + i % 50,
            KNOWN_PREFIX + i as u64,
            (i / 100) % 100,
            i % 100,
        );
    }
    std::fs::write(path, out)
}

/// The operators: (key, token).
fn operators(args: &Args) -> Result<Vec<(String, String)>, String> {
    let Some(path) = &args.tokens_file else {
        return Ok((0..args.keys)
            .map(|i| (format!("key{i}"), format!("token-{i:08}")))
            .collect());
    };
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut seen = std::collections::HashSet::new();
    let mut ops = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(key), Some(token)) = (parts.next(), parts.next()) else {
            return Err(format!("{}: want `KEY TOKEN`: {line}", path.display()));
        };
        if seen.insert(key.to_owned()) {
            ops.push((key.to_owned(), token.to_owned()));
        }
    }
    if ops.len() < args.keys {
        return Err(format!(
            "{} has {} keys, --keys asks for {}",
            path.display(),
            ops.len(),
            args.keys
        ));
    }
    ops.truncate(args.keys);
    Ok(ops)
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

// ------------------------------------------------------------------ screens

enum ScreenEnd {
    Stopped,
    Closed(String),
    Error(String),
}

struct ScreenResult {
    key: usize,
    frames: Vec<(Instant, Utf8Bytes)>,
    end: ScreenEnd,
}

fn client_config() -> WebSocketConfig {
    // Small read buffers: a thousand screens, a few hundred bytes a message.
    WebSocketConfig::default().read_buffer_size(2 * 1024)
}

async fn connect_screen(addr: &str, token: &str) -> Result<WebSocketStream<TcpStream>, String> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let url = format!("ws://{addr}/operator/ws?token={}", percent_encode(token));
    let (ws, response) =
        tokio_tungstenite::client_async_with_config(url, tcp, Some(client_config()))
            .await
            .map_err(|e| format!("WebSocket handshake: {e}"))?;
    if response.status().as_u16() != 101 {
        return Err(format!("handshake answered {}", response.status()));
    }
    Ok(ws)
}

async fn run_screen(
    mut ws: WebSocketStream<TcpStream>,
    key: usize,
    mut stop: watch::Receiver<bool>,
    received: Arc<AtomicUsize>,
    capacity: usize,
) -> ScreenResult {
    let mut frames = Vec::with_capacity(capacity);
    // One stop future for the whole loop (not a new one per frame).
    let stopped = stop.changed();
    tokio::pin!(stopped);
    let end = loop {
        tokio::select! {
            biased;
            frame = ws.next() => match frame {
                Some(Ok(WsMessage::Text(text))) => {
                    let now = Instant::now();
                    frames.push((now, text));
                    received.fetch_add(1, Ordering::Relaxed);
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    break ScreenEnd::Closed(frame.map_or("no close frame".into(), |f| format!("{} {}", f.code, f.reason)));
                }
                Some(Ok(_)) => {} // pings are answered by tungstenite
                Some(Err(e)) => break ScreenEnd::Error(e.to_string()),
                None => break ScreenEnd::Closed("connection ended".into()),
            },
            _ = &mut stopped => {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                break ScreenEnd::Stopped;
            }
        }
    };
    ScreenResult { key, frames, end }
}

// ------------------------------------------------------------------ SOAP

struct Soap {
    addr: String,
    path: String,
    auth: String,
    pool: Mutex<Vec<TcpStream>>,
}

impl Soap {
    fn request(&self, num_from: u64, key: &str) -> Vec<u8> {
        let body = format!(
            r#"<?xml version="1.0" encoding="utf-8"?>
<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/">
    <soap:Body>
        <IncomingCall xmlns="http://VATS">
            <NumFrom>{num_from}</NumFrom>
            <Key>{key}</Key>
        </IncomingCall>
    </soap:Body>
</soap:Envelope>"#
        );
        let mut req = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: text/xml; charset=utf-8\r\nAuthorization: Basic {}\r\nContent-Length: {}\r\n\r\n",
            self.path,
            self.addr,
            self.auth,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body.as_bytes());
        req
    }

    async fn connection(&self) -> Result<TcpStream, String> {
        if let Some(c) = self.pool.lock().expect("pool").pop() {
            return Ok(c);
        }
        let c = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| format!("connect {}: {e}", self.addr))?;
        let _ = c.set_nodelay(true);
        stamp_arrivals(&c).map_err(|e| format!("SO_TIMESTAMPNS: {e}"))?;
        Ok(c)
    }

    /// Sends one IncomingCall; returns when it was written, when its answer
    /// arrived and when it was read.
    async fn call(&self, num_from: u64, key: &str) -> Result<Answered, String> {
        let request = self.request(num_from, key);
        let mut conn = self.connection().await?;
        let sent = Instant::now();
        let sent_at = SystemTime::now();
        let answer = tokio::time::timeout(SOAP_TIMEOUT, async {
            conn.write_all(&request)
                .await
                .map_err(|e| format!("write: {e}"))?;
            read_response(&mut conn).await
        })
        .await
        .map_err(|_| format!("no answer within {SOAP_TIMEOUT:?}"))??;
        let answered = Instant::now();
        let (status, body, keep_alive, arrived_at) = answer;
        if status != 200 || !body.contains(">1</") {
            return Err(format!(
                "HTTP {status}: {}",
                body.chars().take(300).collect::<String>()
            ));
        }
        if keep_alive {
            self.pool.lock().expect("pool").push(conn);
        }
        Ok(Answered {
            sent,
            read: answered - sent,
            arrived: arrived_at.and_then(|at| at.duration_since(sent_at).ok()),
        })
    }
}

/// One IncomingCall's times.
#[derive(Debug, Clone, Copy)]
struct Answered {
    /// Just before the request was written.
    sent: Instant,
    /// Until this client read the answer.
    read: Duration,
    /// Until the answer's last bytes arrived in this client's socket (the
    /// kernel's receive time stamp): what a PBX on another machine would see
    /// (less the network), whatever this process's scheduling.
    arrived: Option<Duration>,
}

/// Asks the kernel to stamp each segment `c` receives (SO_TIMESTAMPNS), for
/// [`read_chunk`].
fn stamp_arrivals(c: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket, an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            c.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            std::ptr::from_ref(&on).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Reads what has arrived (at least one byte, or 0 at the end), with the
/// receive time stamp of the last segment read when the socket stamps them.
async fn read_chunk(
    conn: &TcpStream,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<SystemTime>)> {
    use std::os::fd::AsRawFd;
    loop {
        conn.readable().await?;
        let fd = conn.as_raw_fd();
        match conn.try_io(tokio::io::Interest::READABLE, || recv_stamped(fd, buf)) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// recvmsg(2) with room for an SCM_TIMESTAMPNS control message.
fn recv_stamped(
    fd: std::os::fd::RawFd,
    buf: &mut [u8],
) -> std::io::Result<(usize, Option<SystemTime>)> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain data; every pointer set below outlives the call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: fd is an open socket; msg describes valid buffers.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the CMSG_* macros walk the control buffer recvmsg filled in.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS
            {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                stamp = Some(UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    Ok((n as usize, stamp))
}

/// Reads one HTTP/1.1 response with a Content-Length body; with it, the
/// arrival time of its last bytes if the socket stamps them.
async fn read_response(
    conn: &mut TcpStream,
) -> Result<(u16, String, bool, Option<SystemTime>), String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let mut arrived = None;
    let head_end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err("response head too long".into());
        }
        let (n, at) = read_chunk(conn, &mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed before the answer".into());
        }
        arrived = at.or(arrived);
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line: {head}"))?;
    let mut length = None;
    let mut keep_alive = true;
    for line in head.lines().skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close")
            {
                keep_alive = false;
            }
        }
    }
    let length = length.ok_or("answer without Content-Length")?;
    while buf.len() < head_end + length {
        let (n, at) = read_chunk(conn, &mut chunk)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("connection closed in the body".into());
        }
        arrived = at.or(arrived);
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
    Ok((status, body, keep_alive, arrived))
}

/// One plain GET (for /metrics), Connection: close.
async fn http_get(addr: &str, path: &str) -> Result<String, String> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut c = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        c.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let (status, body, _, _) = read_response(&mut c).await?;
        if status != 200 {
            return Err(format!("HTTP {status}"));
        }
        Ok(body)
    })
    .await
    .map_err(|_| "timeout".to_string())?
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn metrics_snapshot(addr: &str) -> HashMap<&'static str, f64> {
    const NAMES: [&str; 5] = [
        "cti_popup_subscribers",
        "cti_popup_published_total",
        "cti_popup_delivered_total",
        "cti_popup_slow_disconnects_total",
        "process_resident_memory_bytes",
    ];
    let mut out = HashMap::new();
    match http_get(addr, "/metrics").await {
        Ok(text) => {
            for name in NAMES {
                if let Some(v) = metric(&text, name) {
                    out.insert(name, v);
                }
            }
        }
        Err(e) => eprintln!("[popup_latency] GET /metrics: {e}"),
    }
    out
}

// ------------------------------------------------------------------ CPU

/// Clock ticks per second of /proc (USER_HZ): 100 on Linux x86 and arm.
const TICKS_PER_SEC: f64 = 100.0;

/// CPU time so far (user + system, seconds) of a process, from /proc.
fn process_cpu(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) end with ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SEC)
}

/// Idle time of the whole machine so far (all CPUs, idle + iowait, seconds).
/// Busy time is taken as wall time × CPUs − idle: the kernel measures idle
/// periods exactly, while its busy counters are sampled at each tick and miss
/// short bursts such as an event loop's.
fn machine_idle() -> Option<f64> {
    let v = machine_times()?;
    Some((v.get(3)? + v.get(4)?) / TICKS_PER_SEC)
}

/// CPU time the hypervisor stole from this VM so far (all CPUs, seconds).
fn machine_steal() -> Option<f64> {
    Some(machine_times()?.get(7)? / TICKS_PER_SEC)
}

/// The `cpu` line of /proc/stat: user nice system idle iowait irq softirq steal …
fn machine_times() -> Option<Vec<f64>> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    Some(
        line.split_whitespace()
            .filter_map(|f| f.parse().ok())
            .collect(),
    )
}

#[derive(Clone, Copy)]
struct CpuMark {
    at: Instant,
    idle: Option<f64>,
    steal: Option<f64>,
    gateway: Option<f64>,
    client: Option<f64>,
}

fn cpu_mark(gateway_pid: Option<u32>) -> CpuMark {
    CpuMark {
        at: Instant::now(),
        idle: machine_idle(),
        steal: machine_steal(),
        gateway: gateway_pid.and_then(|p| process_cpu(&p.to_string())),
        client: process_cpu("self"),
    }
}

/// CPU used between two marks, in CPU seconds.
struct CpuUsed {
    wall: f64,
    machine: Option<f64>,
    gateway: Option<f64>,
    client: Option<f64>,
    /// Everything else the machine ran meanwhile.
    others: Option<f64>,
    /// What the hypervisor stole meanwhile (counted in `others` too).
    steal: Option<f64>,
}

fn cpu_used(a: CpuMark, b: CpuMark) -> CpuUsed {
    let d = |x: Option<f64>, y: Option<f64>| Some(y? - x?);
    let wall = (b.at - a.at).as_secs_f64();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let machine = d(a.idle, b.idle).map(|idle| (wall * cpus - idle).max(0.0));
    let gateway = d(a.gateway, b.gateway);
    let client = d(a.client, b.client);
    let others = match (machine, gateway, client) {
        (Some(m), Some(g), Some(c)) => Some((m - g - c).max(0.0)),
        _ => None,
    };
    CpuUsed {
        wall,
        machine,
        gateway,
        client,
        others,
        steal: d(a.steal, b.steal),
    }
}

// ------------------------------------------------------------------ figures

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

struct Dist {
    n: usize,
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
}

fn dist(mut v: Vec<f64>) -> Dist {
    v.sort_by(f64::total_cmp);
    Dist {
        n: v.len(),
        p50: percentile(&v, 50.0),
        p90: percentile(&v, 90.0),
        p99: percentile(&v, 99.0),
        max: v.last().copied().unwrap_or(f64::NAN),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ------------------------------------------------------------------ run

struct Call {
    key: usize,
    known: bool,
}

fn log(msg: impl AsRef<str>) {
    eprintln!("[popup_latency] {}", msg.as_ref());
}

async fn run(args: Args, pbx_runtime: tokio::runtime::Handle) -> Result<bool, String> {
    let ops = Arc::new(operators(&args)?);
    let k = ops.len();
    let s = args.screens_per_key;
    let screens = k * s;
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);

    let before = metrics_snapshot(&args.addr).await;
    let soap = Soap {
        addr: args.addr.clone(),
        path: args.soap_path.clone(),
        auth: base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", args.user, args.password)),
        pool: Mutex::new(Vec::new()),
    };
    let pbx = Pbx::connect(soap, args.soap_conns, pbx_runtime).await?;

    // ---- SOAP with no screen connected (the answer's own latency)
    let (idle_soap, idle_arrived) = idle_soap(&args, &pbx, &ops, &mut rng).await?;

    // ---- screens
    log(format!("connecting {screens} screens ({k} keys x {s})"));
    let received = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel::<Result<(), String>>(screens.min(1024));
    let gate = Arc::new(Semaphore::new(args.connect_concurrency));
    let per_screen_capacity = args.calls + args.warmup + 8;
    let mut tasks = Vec::with_capacity(screens);
    let t_connect = Instant::now();
    for key in 0..k {
        for _ in 0..s {
            let (addr, ops) = (args.addr.clone(), Arc::clone(&ops));
            let (gate, ready, stop, received) = (
                Arc::clone(&gate),
                ready_tx.clone(),
                stop_rx.clone(),
                Arc::clone(&received),
            );
            // Roughly what each screen will get: its key's share of the calls.
            let capacity = per_screen_capacity * 2 / k + 8;
            let capacity = capacity.min(per_screen_capacity);
            tasks.push(tokio::spawn(async move {
                let ws = {
                    let _permit = gate.acquire().await.expect("semaphore");
                    match connect_screen(&addr, &ops[key].1).await {
                        Ok(ws) => ws,
                        Err(e) => {
                            let _ = ready.send(Err(e.clone())).await;
                            return ScreenResult {
                                key,
                                frames: Vec::new(),
                                end: ScreenEnd::Error(e),
                            };
                        }
                    }
                };
                let _ = ready.send(Ok(())).await;
                drop(ready);
                run_screen(ws, key, stop, received, capacity).await
            }));
        }
    }
    drop(ready_tx);
    let mut connected = 0usize;
    let deadline = tokio::time::Instant::now() + args.connect_timeout;
    while connected < screens {
        match tokio::time::timeout_at(deadline, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => connected += 1,
            Ok(Some(Err(e))) => {
                let _ = stop_tx.send(true);
                return Err(format!("screen {} of {screens} failed: {e}", connected + 1));
            }
            Ok(None) => break,
            Err(_) => {
                let _ = stop_tx.send(true);
                return Err(format!(
                    "only {connected} of {screens} screens connected within {:?}",
                    args.connect_timeout
                ));
            }
        }
    }
    let connect_ms = ms(t_connect.elapsed());
    let after_connect = metrics_snapshot(&args.addr).await;
    let subscribers = after_connect.get("cti_popup_subscribers").copied();
    log(format!(
        "{connected} screens connected in {connect_ms:.0} ms; gateway reports cti_popup_subscribers={}",
        subscribers.map_or("?".into(), |v| v.to_string())
    ));

    // ---- warm-up (not measured)
    let mut expected_frames = 0usize;
    if args.warmup > 0 {
        log(format!("warm-up: {} calls", args.warmup));
        let calls = (0..args.warmup)
            .map(|i| {
                (
                    WARMUP_PREFIX + i as u64,
                    ops[rng.random_range(0..k)].0.clone(),
                )
            })
            .collect();
        for (i, answer) in pbx
            .open_loop(args.interval, calls)
            .await
            .into_iter()
            .enumerate()
        {
            answer.map_err(|e| format!("warm-up call {i}: {e}"))?;
            expected_frames += s;
        }
        wait_for(&received, expected_frames, Duration::from_secs(5)).await;
    }
    let warmup_frames = received.load(Ordering::Relaxed);

    // ---- measured calls, open loop
    let plan: Vec<Call> = (0..args.calls)
        .map(|_| Call {
            key: rng.random_range(0..k),
            known: !rng.random_bool(args.unknown_ratio.clamp(0.0, 1.0)),
        })
        .collect();
    log(format!(
        "{} calls, one every {:?}, to random keys ({:.0}% unknown callers)",
        args.calls,
        args.interval,
        args.unknown_ratio * 100.0
    ));
    let cpu_start = cpu_mark(args.gateway_pid);
    let start = tokio::time::Instant::now();
    let to_send = plan.iter().enumerate().map(|(i, c)| {
        let prefix = if c.known {
            KNOWN_PREFIX
        } else {
            UNKNOWN_PREFIX
        };
        (prefix + i as u64, ops[c.key].0.clone())
    });
    let answers = pbx.open_loop(args.interval, to_send.collect()).await;
    expected_frames += args.calls * s;
    let mut sent: Vec<Option<Instant>> = vec![None; args.calls];
    let mut soap_ms = Vec::with_capacity(args.calls);
    let mut arrived_ms = Vec::with_capacity(args.calls);
    let mut soap_errors = Vec::new();
    for (i, answer) in answers.into_iter().enumerate() {
        match answer {
            Ok(a) => {
                sent[i] = Some(a.sent);
                soap_ms.push(ms(a.read));
                arrived_ms.extend(a.arrived.map(ms));
            }
            Err(e) => soap_errors.push(format!("call {i}: {e}")),
        }
    }
    let send_span = start.elapsed();
    wait_for(&received, expected_frames, args.drain).await;
    let cpu_end = cpu_mark(args.gateway_pid);
    let after = metrics_snapshot(&args.addr).await;

    // ---- stop the screens and collect
    let _ = stop_tx.send(true);
    let mut results = Vec::with_capacity(screens);
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(10), t).await {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(e)) => return Err(format!("screen task: {e}")),
            Err(_) => return Err("a screen did not stop within 10 s".into()),
        }
    }

    // ---- match frames to calls
    let mut per_screen = Vec::with_capacity(args.calls * s);
    let mut last: Vec<Option<Duration>> = vec![None; args.calls];
    let mut first: Vec<Option<Duration>> = vec![None; args.calls];
    let mut got: Vec<usize> = vec![0; args.calls];
    let (mut duplicates, mut misrouted, mut wrong_card, mut out_of_order, mut unparsable) =
        (0usize, 0usize, 0usize, 0usize, 0usize);
    let mut closed_early = Vec::new();
    let mut frame_bytes = 0usize;
    for r in &results {
        match &r.end {
            ScreenEnd::Stopped => {}
            ScreenEnd::Closed(why) => closed_early.push(format!("key{}: closed: {why}", r.key)),
            ScreenEnd::Error(e) => closed_early.push(format!("key{}: error: {e}", r.key)),
        }
        let mut seen = vec![false; args.calls];
        let mut last_seq = 0u64;
        for (at, text) in &r.frames {
            let Ok(v) = serde_json::from_str::<Value>(text) else {
                unparsable += 1;
                continue;
            };
            let seq = v["seq"].as_u64().unwrap_or(0);
            if seq <= last_seq {
                out_of_order += 1;
            }
            last_seq = last_seq.max(seq);
            if v["type"] != "incoming_call" || v["key"].as_str() != Some(&ops[r.key].0) {
                misrouted += 1;
                continue;
            }
            let Some(raw) = v["raw_number"].as_str().and_then(|n| n.parse::<u64>().ok()) else {
                unparsable += 1;
                continue;
            };
            let (i, known) = if (KNOWN_PREFIX..KNOWN_PREFIX + CALL_RANGE).contains(&raw) {
                ((raw - KNOWN_PREFIX) as usize, true)
            } else if (UNKNOWN_PREFIX..UNKNOWN_PREFIX + CALL_RANGE).contains(&raw) {
                ((raw - UNKNOWN_PREFIX) as usize, false)
            } else {
                continue; // warm-up
            };
            if i >= args.calls {
                unparsable += 1;
                continue;
            }
            if plan[i].key != r.key || plan[i].known != known {
                misrouted += 1;
                continue;
            }
            let card_ok = if known {
                v["counterparty"]["id"].as_str() == Some(&counterparty_id(i))
            } else {
                v["counterparty"].is_null()
            };
            if !card_ok {
                wrong_card += 1;
            }
            if seen[i] {
                duplicates += 1;
                continue;
            }
            seen[i] = true;
            got[i] += 1;
            frame_bytes += text.len();
            let Some(t0) = sent[i] else { continue };
            let lat = at.saturating_duration_since(t0);
            per_screen.push(ms(lat));
            last[i] = Some(last[i].map_or(lat, |l| l.max(lat)));
            first[i] = Some(first[i].map_or(lat, |f| f.min(lat)));
        }
    }
    let expected = args.calls * s;
    let delivered: usize = got.iter().sum();
    let lost = expected - delivered;
    let complete: Vec<f64> = (0..args.calls)
        .filter(|&i| got[i] == s && sent[i].is_some())
        .filter_map(|i| last[i].map(ms))
        .collect();
    let incomplete_calls = (0..args.calls).filter(|&i| got[i] != s).count();
    let firsts: Vec<f64> = first.iter().flatten().copied().map(ms).collect();

    let screen_d = dist(per_screen);
    let last_d = dist(complete);
    let first_d = dist(firsts);
    let soap_d = dist(soap_ms);
    let arrived_d = dist(arrived_ms);

    // ---- report
    let gauge = |m: &HashMap<&str, f64>, n: &str| m.get(n).copied();
    let delta = |n: &str| match (gauge(&after, n), gauge(&before, n)) {
        (Some(a), Some(b)) => format!("{}", a - b),
        _ => "?".into(),
    };
    println!();
    println!(
        "== pop-up latency, {}: {k} key(s) x {s} screens = {screens} WebSocket screens; {} calls every {:?} (sent over {:.1} s) ==",
        args.label,
        args.calls,
        args.interval,
        send_span.as_secs_f64()
    );
    println!(
        "screens connected in {connect_ms:.0} ms; gateway: cti_popup_subscribers={} after connecting; during the run: published +{}, delivered +{}, slow disconnects +{}; RSS {} MB",
        subscribers.map_or("?".into(), |v| v.to_string()),
        delta("cti_popup_published_total"),
        delta("cti_popup_delivered_total"),
        delta("cti_popup_slow_disconnects_total"),
        gauge(&after, "process_resident_memory_bytes").map_or("?".into(), |v| format!("{:.0}", v / 1048576.0)),
    );
    println!(
        "frames: expected {expected}, received {delivered}, lost {lost} (calls missing a screen: {incomplete_calls}); duplicates {duplicates}, misrouted {misrouted}, wrong card {wrong_card}, out of order {out_of_order}, unparsable {unparsable}; warm-up frames {warmup_frames}; SOAP errors {}; screens closed early {}",
        soap_errors.len(),
        closed_early.len()
    );
    let CpuUsed {
        wall,
        machine,
        gateway: gw_cpu,
        client: cl_cpu,
        others,
        steal,
    } = cpu_used(cpu_start, cpu_end);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let per_call = |v: Option<f64>| v.map(|v| v * 1e3 / args.calls.max(1) as f64);
    let show = |v: Option<f64>| v.map_or("?".to_string(), |v| format!("{v:.2}"));
    println!(
        "CPU during the measured calls ({wall:.1} s wall, {cpus} CPUs): machine busy {} CPU-s; gateway {} CPU-s ({} ms a call); this client {} CPU-s ({} ms a call); other processes {} CPU-s ({}% of the machine)",
        show(machine),
        show(gw_cpu),
        show(per_call(gw_cpu)),
        show(cl_cpu),
        show(per_call(cl_cpu)),
        show(others),
        others.map_or("?".into(), |o| format!("{:.0}", 100.0 * o / (wall * cpus))),
    );
    println!(
        "hypervisor steal meanwhile: {} CPU-s; WebSocket payload {:.0} bytes a frame on average",
        show(steal),
        frame_bytes as f64 / delivered.max(1) as f64
    );
    for e in soap_errors.iter().take(5) {
        println!("  SOAP error: {e}");
    }
    for e in closed_early.iter().take(5) {
        println!("  screen: {e}");
    }
    println!(
        "{:<48} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "latency (ms)", "n", "p50", "p90", "p99", "max"
    );
    for (name, d) in [
        ("per screen: IncomingCall sent -> screen has it", &screen_d),
        ("per call: ... -> LAST screen of the key has it", &last_d),
        ("per call: ... -> first screen has it", &first_d),
        ("SOAP answer (IncomingCall -> \"1\", journaled)", &soap_d),
        ("SOAP answer, no screen connected", &idle_soap),
        ("SOAP answer arrived (kernel stamp), screens", &arrived_d),
        ("SOAP answer arrived, no screen connected", &idle_arrived),
    ] {
        println!(
            "{:<48} {:>8} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            name, d.n, d.p50, d.p90, d.p99, d.max
        );
    }
    let clean = lost == 0
        && duplicates == 0
        && misrouted == 0
        && wrong_card == 0
        && out_of_order == 0
        && unparsable == 0
        && soap_errors.is_empty()
        && closed_early.is_empty();
    let goal_ok = args.goal_p99_ms.map(|g| last_d.p99 <= g);
    if let Some(g) = args.goal_p99_ms {
        println!(
            "goal: p99 of the last screen <= {g} ms: {} ({:.3} ms); nothing lost or misrouted: {}",
            if goal_ok == Some(true) {
                "met"
            } else {
                "NOT met"
            },
            last_d.p99,
            if clean { "yes" } else { "NO" }
        );
    }
    println!(
        "BENCH_RESULT mode=popup scenario={} keys={k} screens_per_key={s} screens={screens} calls={} interval_ms={} client_threads={} connect_ms={connect_ms:.0} expected={expected} received={delivered} lost={lost} duplicates={duplicates} misrouted={misrouted} wrong_card={wrong_card} out_of_order={out_of_order} soap_errors={} closed_early={} screen_p50_ms={:.3} screen_p90_ms={:.3} screen_p99_ms={:.3} screen_max_ms={:.3} last_p50_ms={:.3} last_p90_ms={:.3} last_p99_ms={:.3} last_max_ms={:.3} soap_p50_ms={:.3} soap_p99_ms={:.3} idle_soap_p50_ms={:.3} idle_soap_p99_ms={:.3} soap_arrived_p50_ms={:.3} soap_arrived_p99_ms={:.3} idle_soap_arrived_p50_ms={:.3} idle_soap_arrived_p99_ms={:.3} frame_bytes={:.0} steal_s={} gateway_cpu_ms_per_call={} client_cpu_ms_per_call={} other_cpu_pct={} goal_p99_ms={} goal_met={}",
        args.label,
        args.calls,
        ms(args.interval),
        args.client_threads,
        soap_errors.len(),
        closed_early.len(),
        screen_d.p50, screen_d.p90, screen_d.p99, screen_d.max,
        last_d.p50, last_d.p90, last_d.p99, last_d.max,
        soap_d.p50, soap_d.p99,
        idle_soap.p50, idle_soap.p99,
        arrived_d.p50, arrived_d.p99,
        idle_arrived.p50, idle_arrived.p99,
        frame_bytes as f64 / delivered.max(1) as f64,
        show(steal),
        show(per_call(gw_cpu)),
        show(per_call(cl_cpu)),
        others.map_or("?".into(), |o| format!("{:.0}", 100.0 * o / (wall * cpus))),
        args.goal_p99_ms.map_or("none".into(), |g| g.to_string()),
        match goal_ok { Some(true) if clean => "1", None => "-", _ => "0" },
    );
    Ok(clean && goal_ok != Some(false))
}

/// The PBX's side: SOAP calls on a runtime of their own.
struct Pbx {
    soap: Arc<Soap>,
    runtime: tokio::runtime::Handle,
}

impl Pbx {
    /// Opens `conns` keep-alive connections on the PBX's runtime.
    async fn connect(
        soap: Soap,
        conns: usize,
        runtime: tokio::runtime::Handle,
    ) -> Result<Pbx, String> {
        let soap = Arc::new(soap);
        let pool = Arc::clone(&soap);
        runtime
            .spawn(async move {
                for _ in 0..conns {
                    let c = pool.connection().await?;
                    pool.pool.lock().expect("pool").push(c);
                }
                Ok::<_, String>(())
            })
            .await
            .map_err(|e| format!("PBX task: {e}"))??;
        Ok(Pbx { soap, runtime })
    }

    /// [`open_loop`] on the PBX's runtime.
    async fn open_loop(
        &self,
        interval: Duration,
        calls: Vec<(u64, String)>,
    ) -> Vec<Result<Answered, String>> {
        let n = calls.len();
        self.runtime
            .spawn(open_loop(Arc::clone(&self.soap), interval, calls))
            .await
            .unwrap_or_else(|e| vec![Err(format!("PBX task: {e}")); n])
    }
}

/// Sends `calls` (NumFrom, key) `interval` apart, open loop (a slow answer
/// does not delay the next call); for each, when it was written and answered.
async fn open_loop(
    soap: Arc<Soap>,
    interval: Duration,
    calls: Vec<(u64, String)>,
) -> Vec<Result<Answered, String>> {
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(calls.len());
    for (i, (num, key)) in calls.into_iter().enumerate() {
        tokio::time::sleep_until(start + interval.mul_f64(i as f64)).await;
        let soap = Arc::clone(&soap);
        tasks.push(tokio::spawn(async move { soap.call(num, &key).await }));
    }
    let mut answers = Vec::with_capacity(tasks.len());
    for task in tasks {
        answers.push(task.await.unwrap_or_else(|e| Err(format!("task: {e}"))));
    }
    answers
}

/// `--idle-calls`: a warm-up, then IncomingCall to random keys with no
/// screen connected, as the measured calls are sent; their SOAP answer times
/// (read, arrived).
async fn idle_soap(
    args: &Args,
    pbx: &Pbx,
    ops: &[(String, String)],
    rng: &mut rand::rngs::StdRng,
) -> Result<(Dist, Dist), String> {
    if args.idle_calls == 0 {
        return Ok((dist(Vec::new()), dist(Vec::new())));
    }
    log(format!(
        "no screen connected: {} warm-up and {} measured calls",
        args.warmup, args.idle_calls
    ));
    let mut pick = |prefix: u64, i: usize| {
        (
            prefix + i as u64,
            ops[rng.random_range(0..ops.len())].0.clone(),
        )
    };
    let warmup: Vec<_> = (0..args.warmup).map(|i| pick(WARMUP_PREFIX, i)).collect();
    for answer in pbx.open_loop(args.interval, warmup).await {
        answer.map_err(|e| format!("warm-up call with no screen: {e}"))?;
    }
    // Callers the directory knows, as most measured calls are.
    let calls: Vec<_> = (0..args.idle_calls)
        .map(|i| pick(KNOWN_PREFIX, i % args.calls.max(1)))
        .collect();
    let (mut read, mut arrived) = (Vec::with_capacity(calls.len()), Vec::new());
    for answer in pbx.open_loop(args.interval, calls).await {
        let a = answer.map_err(|e| format!("call with no screen: {e}"))?;
        read.push(ms(a.read));
        arrived.extend(a.arrived.map(ms));
    }
    Ok((dist(read), dist(arrived)))
}

/// Waits until `counter` reaches `target` or `limit` passes.
async fn wait_for(counter: &AtomicUsize, target: usize, limit: Duration) {
    let deadline = Instant::now() + limit;
    while counter.load(Ordering::Relaxed) < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn main() {
    let args = parse_args();
    if let Some(path) = &args.write_directory {
        if let Err(e) = write_directory(path, args.calls) {
            eprintln!("{}: {e}", path.display());
            std::process::exit(1);
        }
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let pbx = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("pbx")
        .enable_all()
        .build()
        .expect("tokio runtime of the PBX side");
    match runtime.block_on(run(args, pbx.handle().clone())) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("[popup_latency] error: {e}");
            std::process::exit(1);
        }
    }
    // Screens still open (after an error) are dropped with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(1));
    pbx.shutdown_timeout(Duration::from_secs(1));
}
