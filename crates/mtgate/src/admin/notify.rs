//! systemd readiness notification (`sd_notify`), without a dependency: one
//! datagram to `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace).
//! With no `$NOTIFY_SOCKET` (not started by systemd `Type=notify`) it does nothing.
//!
//! mtgate sends `READY=1` once every client listener is bound,
//! `STOPPING=1` when shutdown begins, `MAINPID=<pid>` when it hands its
//! listeners to a new process, and `WATCHDOG=1` every half
//! [`watchdog_period`] while its runtime and accept loops are alive (the
//! loop lives in `cli`).

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

/// The watchdog period systemd asked for (`WATCHDOG_USEC`, for us when
/// `WATCHDOG_PID` is our pid or absent); `None` when no watchdog is armed.
pub fn watchdog_period() -> Option<std::time::Duration> {
    parse_watchdog(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<std::time::Duration> {
    if let Some(p) = pid {
        if p.trim().parse::<u32>().ok() != Some(me) {
            return None;
        }
    }
    let us: u64 = usec?.trim().parse().ok().filter(|u| *u > 0)?;
    Some(std::time::Duration::from_micros(us))
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
    fn watchdog_period_is_for_us_only() {
        use std::time::Duration;
        assert_eq!(
            parse_watchdog(Some("20000000"), None, 7),
            Some(Duration::from_secs(20))
        );
        assert_eq!(
            parse_watchdog(Some("20000000"), Some("7"), 7),
            Some(Duration::from_secs(20))
        );
        assert_eq!(parse_watchdog(Some("20000000"), Some("8"), 7), None);
        assert_eq!(parse_watchdog(Some("0"), None, 7), None);
        assert_eq!(parse_watchdog(Some("x"), None, 7), None);
        assert_eq!(parse_watchdog(None, None, 7), None);
    }

    #[test]
    fn missing_socket_is_an_error_not_a_panic() {
        assert!(notify_to("/nonexistent/mtgate-notify", "READY=1").is_err());
    }
}
