//! systemd readiness notification (`sd_notify`), without a dependency: one
//! datagram to `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
//! With no `$NOTIFY_SOCKET` (not started by systemd `Type=notify`) it does nothing.
//!
//! mtgate sends `READY=1` once every client listener is bound and
//! `STOPPING=1` when shutdown begins. No watchdog pings are sent.

use std::io;
use std::os::unix::net::UnixDatagram;

/// Sends `state` (e.g. `"READY=1"`) to systemd if it asked for notifications.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = notify_to(&path.to_string_lossy(), state) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// Sends `state` to the notification socket at `path`.
pub fn notify_to(path: &str, state: &str) -> io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    match path.strip_prefix('@') {
        #[cfg(target_os = "linux")]
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sock.send_to_addr(state.as_bytes(), &addr)?;
        }
        _ => {
            sock.send_to(state.as_bytes(), path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_one_datagram() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).expect("bind");
        notify_to(&path.to_string_lossy(), "READY=1").expect("send");
        let mut buf = [0u8; 64];
        let n = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn missing_socket_is_an_error_not_a_panic() {
        assert!(notify_to("/nonexistent/mtgate-notify", "READY=1").is_err());
    }
}
