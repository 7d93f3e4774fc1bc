//! systemd readiness notification (`Type=notify`), without libsystemd: systemd passes the path
//! of a unix datagram socket in `$NOTIFY_SOCKET`, and a service says it is ready by sending
//! `READY=1` to it (sd_notify(3)). Outside systemd the variable is unset and nothing is sent.
//!
//! `serve` sends `READY=1` once every listener and the admin API are bound, so
//! `systemctl start` returns (and units ordered after handover start) only when clients can
//! connect; `RELOADING=1` then `READY=1` around a SIGHUP reload; and `STOPPING=1` when SIGTERM
//! starts the graceful close.

use std::io;
use std::os::unix::net::UnixDatagram;

/// The environment variable systemd sets for `Type=notify` services.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Sends `state` (newline-separated `KEY=VALUE` assignments) to `$NOTIFY_SOCKET`.
/// `Ok(false)` when the variable is unset or empty: not running under systemd's notify.
pub fn notify(state: &str) -> io::Result<bool> {
    match std::env::var_os(NOTIFY_SOCKET) {
        Some(path) if !path.is_empty() => {
            let path = path.into_string().map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "NOTIFY_SOCKET is not UTF-8")
            })?;
            send_to(&path, state)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Sends one datagram to the notify socket at `path`; a leading `@` names a Linux abstract
/// socket, as in systemd.
pub fn send_to(path: &str, state: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    match path.strip_prefix('@') {
        Some(name) => send_abstract(&socket, name, state),
        None => socket.send_to(state.as_bytes(), path).map(|_| ()),
    }
}

#[cfg(target_os = "linux")]
fn send_abstract(socket: &UnixDatagram, name: &str, state: &str) -> io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    socket.send_to_addr(state.as_bytes(), &addr).map(|_| ())
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_: &UnixDatagram, _: &str, _: &str) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "abstract notify sockets exist only on Linux",
    ))
}

/// Tells systemd that `serve` is ready; logs (never fails) when the message cannot be sent,
/// since the proxy works either way and systemd will report the missing readiness itself.
pub fn ready(status: &str) {
    report(&format!(
        "READY=1\nSTATUS={status}\nMAINPID={}",
        std::process::id()
    ));
}

/// Tells systemd that a config reload has begun; [`ready`] says when it is over.
pub fn reloading(status: &str) {
    report(&format!("RELOADING=1\nSTATUS={status}"));
}

/// Tells systemd that a graceful stop has begun.
pub fn stopping(status: &str) {
    report(&format!("STOPPING=1\nSTATUS={status}"));
}

fn report(state: &str) {
    match notify(state) {
        Ok(true) => tracing::debug!(state, "told systemd"),
        Ok(false) => {}
        Err(e) => tracing::warn!("cannot notify systemd through {NOTIFY_SOCKET}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sends_one_datagram_to_a_path_socket() {
        let dir = std::env::temp_dir().join(format!("handover-notify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("notify.sock");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        send_to(path.to_str().unwrap(), "READY=1\nSTATUS=x").unwrap();
        let mut buf = [0u8; 128];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=x");
        std::fs::remove_dir_all(dir).ok();
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("handover-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        send_to(&format!("@{name}"), "READY=1").unwrap();
        let mut buf = [0u8; 16];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_panic() {
        assert!(send_to("/nonexistent/handover/notify.sock", "READY=1").is_err());
    }
}
