//! No lock-out by connection count (issue 15, item 4), over real sockets:
//! a client bound to 127.0.0.2 is "another address" (Linux routes all of
//! 127.0.0.0/8 to this machine).
//!
//! - one address holding 2,000 idle connections gets
//!   `server.max_connections_per_address` of them, and SayName from
//!   another address keeps being answered;
//! - a connection that sends no whole request head within
//!   `server.first_request_timeout` is closed, one that did is not;
//! - with every other slot taken, the address in `soap.allow_from` (the
//!   PBX) still gets one of `server.reserved_connections`.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

const LOCAL: &str = "127.0.0.1";
const OTHER: &str = "127.0.0.2";
const THIRD: &str = "127.0.0.3";

/// SayName from `source`, answered 200 with the known caller, within a
/// generous deadline (the figure of its latency belongs in bench/).
async fn say_name_answered_from(source: &str, addr: SocketAddr) {
    let body = say_name_envelope("89235292926");
    let headers = [
        "Content-Type: text/xml; charset=utf-8".to_owned(),
        format!("Authorization: {SEED_AUTH}"),
    ];
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    let reply = timeout(
        Duration::from_secs(10),
        request_from(source, addr, "POST", SOAP_PATH, &headers, body.as_bytes()),
    )
    .await
    .expect("SayName answered within 10 s");
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(reply.body.contains("Фэйковый чиж"), "{}", reply.body);
}

/// A connection from `source` the server can see open, or `None` when the
/// connect itself failed (the listen backlog full for a moment).
async fn try_connect_from(source: &str, addr: SocketAddr) -> Option<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source.parse().expect("source"), 0))
        .expect("bind the source address");
    timeout(Duration::from_secs(5), socket.connect(addr))
        .await
        .ok()?
        .ok()
}

/// Whether the server closed `stream` (EOF or reset) within `limit`.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match timeout(limit, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// `cti_http_refused_total{endpoint="connection",reason}` now.
fn refused(gw: &TestGateway, reason: &str) -> u64 {
    gw.gateway()
        .metrics()
        .http_refused
        .with_label_values(&["connection", reason])
        .get()
}

/// Room for `wanted` more descriptors: the soft RLIMIT_NOFILE raised
/// toward the hard one if needed (this process holds both ends).
fn make_room_for_descriptors(wanted: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_from_one_address_leave_say_name_answered() {
    make_room_for_descriptors(8192);
    let gw = start("server.first_request_timeout = \"30s\"").await;
    let metrics = gw.gateway().metrics();

    // The idle connections are opened while SayName keeps being asked.
    let addr = gw.addr;
    let opener = tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..2_000 {
            if let Some(stream) = try_connect_from(OTHER, addr).await {
                held.push(stream);
            }
        }
        held
    });
    let mut asked = 0;
    while !opener.is_finished() {
        say_name_answered_from(LOCAL, gw.addr).await;
        asked += 1;
    }
    let mut held = opener.await.expect("opener");
    assert!(held.len() >= 1_900, "only {} connected", held.len());

    // The server keeps 64 of them and has closed the rest at accept.
    eventually(
        Duration::from_secs(10),
        "every connection over the limit refused",
        || refused(&gw, "per_address") as usize + 64 >= held.len(),
    )
    .await;
    eventually(Duration::from_secs(5), "64 connections open", || {
        metrics.http_connections.get() == 64
    })
    .await;
    assert_eq!(refused(&gw, "max_connections"), 0);
    let mut open = 0;
    for stream in &mut held {
        if !closed_within(stream, Duration::from_millis(1)).await {
            open += 1;
        }
    }
    assert_eq!(open, 64, "open from {OTHER}");

    // And SayName is answered, again and again, from the PBX's address.
    for _ in 0..20 {
        say_name_answered_from(LOCAL, gw.addr).await;
    }
    eprintln!("SayName answered {asked} times while 2,000 connections were opened");

    // Closing them gives the address its connections back.
    drop(held);
    eventually(Duration::from_secs(5), "the connections closed", || {
        metrics.http_connections.get() == 0
    })
    .await;
    let mut again = Vec::new();
    for _ in 0..64 {
        again.push(try_connect_from(OTHER, gw.addr).await.expect("connect"));
    }
    eventually(Duration::from_secs(5), "64 open again", || {
        metrics.http_connections.get() == 64
    })
    .await;
}

#[tokio::test]
async fn a_connection_without_a_request_head_in_time_is_closed() {
    let gw = start("server.first_request_timeout = \"300ms\"").await;
    let opened = Instant::now();
    // Silent, and half a request line.
    let mut silent = connect_from(OTHER, gw.addr).await;
    let mut half = connect_from(OTHER, gw.addr).await;
    half.write_all(b"POST /telephony/ws/V").await.expect("send");
    // A whole request, then idle on keep-alive: header_read_timeout's
    // business (30 s), not this one's.
    let mut kept = connect_from(LOCAL, gw.addr).await;
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    let reply = read_reply(&mut kept).await;
    assert_eq!(reply.status, 200);

    assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
    assert!(closed_within(&mut half, Duration::from_secs(3)).await);
    let cut = opened.elapsed();
    assert!(
        cut >= Duration::from_millis(250) && cut < Duration::from_secs(3),
        "{cut:?}"
    );
    assert_eq!(refused(&gw, "first_request_timeout"), 2);
    // The keep-alive connection outlives the first-request deadline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("a second request on the kept connection");
    let reply = read_reply(&mut kept).await;
    assert_eq!(reply.status, 200);
    say_name_answered_from(LOCAL, gw.addr).await;
}

#[tokio::test]
async fn the_reserved_slots_admit_the_pbx_when_strangers_hold_the_rest() {
    // 40 slots, the last 8 for soap.allow_from; strangers from two
    // addresses take the 32 others.
    let gw = start(
        "server.max_connections = 40\nserver.reserved_connections = 8\nserver.max_connections_per_address = 20\nserver.first_request_timeout = \"30s\"\nsoap.allow_from = [\"127.0.0.1\"]",
    )
    .await;
    let metrics = gw.gateway().metrics();
    let mut strangers = Vec::new();
    for source in [OTHER, THIRD] {
        for _ in 0..20 {
            strangers.push(connect_from(source, gw.addr).await);
        }
    }
    eventually(Duration::from_secs(5), "32 general slots taken", || {
        metrics.http_connections.get() == 32
    })
    .await;
    eventually(Duration::from_secs(5), "8 strangers refused", || {
        refused(&gw, "reserved") == 8
    })
    .await;
    assert_eq!(refused(&gw, "per_address"), 0);
    // A stranger now is closed at accept...
    let mut late = connect_from(THIRD, gw.addr).await;
    assert!(closed_within(&mut late, Duration::from_secs(3)).await);
    assert_eq!(refused(&gw, "reserved"), 9);
    // ... and the PBX is answered, over and over, on reserved slots.
    for _ in 0..10 {
        say_name_answered_from(LOCAL, gw.addr).await;
    }
    // The PBX holds all 8 reserved slots: then it too is refused.
    let mut pbx = Vec::new();
    for _ in 0..8 {
        pbx.push(connect_from(LOCAL, gw.addr).await);
    }
    eventually(Duration::from_secs(5), "every slot taken", || {
        metrics.http_connections.get() == 40
    })
    .await;
    let mut ninth = connect_from(LOCAL, gw.addr).await;
    assert!(closed_within(&mut ninth, Duration::from_secs(3)).await);
    assert_eq!(refused(&gw, "max_connections"), 1);
    drop(pbx);
    drop(strangers);
    eventually(Duration::from_secs(5), "slots given back", || {
        metrics.http_connections.get() == 0
    })
    .await;
    let text = get(gw.addr, "/metrics").await.body;
    for line in [
        r#"cti_http_refused_total{endpoint="connection",reason="reserved"} 9"#,
        r#"cti_http_refused_total{endpoint="connection",reason="max_connections"} 1"#,
        "cti_http_connections_refused_total 10",
    ] {
        assert!(text.contains(line), "{line} missing");
    }
}
