//! systemd's readiness protocol (`sd_notify(3)`): under `Type=notify` the
//! service manager passes a datagram socket in `$NOTIFY_SOCKET` and waits
//! for `READY=1` before it counts the service as started (so
//! `systemctl start` returns, and units ordered after it start, only once
//! the directory is loaded and the PBX can be answered), and reads
//! `STOPPING=1` when the gateway begins to shut down.
//!
//! The protocol is one datagram of `KEY=VALUE` lines to a Unix socket (a
//! path, or an abstract name written with a leading `@`); twenty lines of
//! std do it, so no crate. Without `$NOTIFY_SOCKET` (not under systemd, or
//! another `Type=`) nothing is sent.

use std::io;
use std::os::unix::net::UnixDatagram;

/// The environment variable systemd names its notification socket in.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Tells the service manager `state` (lines such as `READY=1`,
/// `STATUS=…`). `Ok(false)` when no manager listens (`$NOTIFY_SOCKET`
/// unset or empty); an error when the socket named cannot be reached.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os(NOTIFY_SOCKET).filter(|s| !s.is_empty()) {
        Some(socket) => send(&socket, state).map(|()| true),
        None => Ok(false),
    }
}

/// Sends `state` to the socket `socket` names (a path, or `@` and an
/// abstract name).
fn send(socket: &std::ffi::OsStr, state: &str) -> io::Result<()> {
    let datagram = UnixDatagram::unbound()?;
    let bytes = socket.as_encoded_bytes();
    if let Some(name) = bytes.strip_prefix(b"@") {
        // An abstract socket (Linux): no file, the name after the `@`.
        use std::os::linux::net::SocketAddrExt as _;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        datagram.send_to_addr(state.as_bytes(), &addr)?;
    } else {
        datagram.send_to(state.as_bytes(), std::path::Path::new(socket))?;
    }
    Ok(())
}

/// [`notify`], a failure logged (once per call: it is sent twice in a
/// gateway's life) rather than returned: readiness is reported, never a
/// reason to stop serving.
pub fn notify_logged(state: &str) {
    if let Err(e) = notify(state) {
        tracing::warn!(
            error = %e,
            state = state.lines().next().unwrap_or(""),
            "cannot tell systemd the gateway's state through NOTIFY_SOCKET: check the unit's Type= and NotifyAccess="
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_is_one_datagram_to_the_named_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).expect("bind");
        send(path.as_os_str(), "READY=1\nSTATUS=serving").expect("sent");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
    }

    #[test]
    fn an_abstract_socket_is_reached_by_its_at_name() {
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("cti-gateway-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .expect("abstract name");
        let listener = UnixDatagram::bind_addr(&addr).expect("bind");
        send(std::ffi::OsStr::new(&format!("@{name}")), "STOPPING=1").expect("sent");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"STOPPING=1");
    }

    #[test]
    fn a_socket_that_is_not_there_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(send(dir.path().join("absent").as_os_str(), "READY=1").is_err());
    }
}
