//! Zero-downtime restart: passing the listening sockets to a new process, and
//! inheriting them from systemd (socket activation).
//!
//! # Handover by fd passing
//!
//! A running `mtgate run` listens on a Unix stream socket, the *control socket*
//! (`server.handover_socket`, default `<state_dir>/mtgate.handover.sock`, mode
//! 0600, peers of another uid than ours or root refused). The **new** process initiates: started
//! with `mtgate run --takeover`, it connects and speaks this line protocol
//! (every message is ASCII lines; at most [`MAX_MESSAGE`] bytes):
//!
//! ```text
//! new → old   MTGATE-HANDOVER/1 GET
//! old → new   OK <n>                       (one sendmsg carrying n fds by SCM_RIGHTS,
//!             <configured> <local> [admin|websocket]  one line per fd, in fd
//!             ...                           order; `admin` marks the admin listener
//!                                           (at most one), `websocket` a
//!                                           `[websocket]` listener)
//!         or  ERR <reason>
//! new         starts accepting on the fds (and binds any address the old one lacked)
//! new → old   TAKEN <pid>
//! old         stops accepting (closes its own copies only: the kernel socket stays
//!             open through the new process's fds, so no SYN is refused), then
//! old → new   BYE
//! old         marks itself draining (`/health/ready` 503; to systemd it sends
//!             `MAINPID=<new pid>` rather than `STOPPING=1`: the service goes on),
//!             drains its sessions up to `server.drain_timeout`, exits 0
//! ```
//!
//! If the connection ends (or [`TAKEN_TIMEOUT`] passes) before `TAKEN`, the old
//! process never stopped accepting, so nothing is lost: it logs the aborted
//! handover and keeps serving, and a later takeover may try again (rollback).
//! Both processes accept on the same sockets for the moment between the new
//! one starting and the old one stopping; the kernel gives each connection to
//! exactly one of them.
//!
//! # systemd socket activation
//!
//! [`systemd_listeners`] takes the fds systemd passes (`LISTEN_FDS`, for our
//! `LISTEN_PID`), starting at fd 3, and unsets the variables.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// The first line the new process sends.
pub const HELLO: &str = "MTGATE-HANDOVER/1 GET";
/// Largest protocol message (the listener list), in bytes.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Most listeners one handover carries.
pub const MAX_LISTENERS: usize = 64;
/// How long the old process waits for `TAKEN` after sending the fds.
pub const TAKEN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long each side waits for any single protocol step otherwise.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a handover (either side) or socket activation failed.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("handover socket {path}: {source}")]
    Socket { path: String, source: io::Error },
    #[error("handover: {0}")]
    Io(#[from] io::Error),
    #[error("handover: the running process refused: {0}")]
    Refused(String),
    #[error("handover protocol: {0}")]
    Protocol(String),
    #[error("handover: timed out {0}")]
    Timeout(&'static str),
    #[error("socket activation: {0}")]
    Activation(String),
}

fn proto(msg: impl Into<String>) -> HandoverError {
    HandoverError::Protocol(msg.into())
}

/// A listening socket with the configured address it serves (for systemd
/// fds, the configured address is the socket's own local address).
#[derive(Debug)]
pub struct Inherited {
    pub configured: SocketAddr,
    pub listener: std::net::TcpListener,
}

// ---------------------------------------------------------------------------
// systemd socket activation

/// The listening sockets systemd passed to this process, if any: fds
/// `3..3+LISTEN_FDS` when `LISTEN_PID` is our pid. Each must be a listening
/// TCP socket. The variables are removed so children do not inherit them.
///
/// Call before any thread is started (it edits the environment).
pub fn systemd_listeners() -> Result<Vec<Inherited>, HandoverError> {
    let pid = std::env::var("LISTEN_PID").ok();
    let fds = std::env::var("LISTEN_FDS").ok();
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(Vec::new());
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        return Ok(Vec::new());
    }
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    let n: RawFd = fds
        .trim()
        .parse()
        .ok()
        .filter(|n| (0..=MAX_LISTENERS as RawFd).contains(n))
        .ok_or_else(|| HandoverError::Activation(format!("LISTEN_FDS=`{fds}` is not 0..64")))?;
    let mut out = Vec::new();
    for fd in 3..3 + n {
        // SAFETY: the sd_listen_fds protocol hands fds 3..3+LISTEN_FDS to the
        // process whose pid is LISTEN_PID, which we checked is us. They are open
        // for the whole life of the process and nothing else in mtgate names
        // them: this is the only place that reads LISTEN_FDS, and it removed
        // the variables above, so each fd gets exactly one owner here. Files
        // opened before this point got other numbers, because the inherited
        // fds were already taken.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        out.push(
            into_listener(owned, None)
                .map_err(|e| HandoverError::Activation(format!("fd {fd} from systemd: {e}")))?,
        );
    }
    Ok(out)
}

/// Checks that `fd` is a listening TCP socket and makes it a non-blocking,
/// close-on-exec std listener. `configured` defaults to its local address.
fn into_listener(fd: OwnedFd, configured: Option<SocketAddr>) -> io::Result<Inherited> {
    let sock = socket2::Socket::from(fd);
    if sock.r#type()? != socket2::Type::STREAM || !sock.is_listener()? {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a listening stream socket",
        ));
    }
    let local = sock
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IPv4/IPv6 socket"))?;
    sock.set_nonblocking(true)?;
    sock.set_cloexec(true)?;
    Ok(Inherited {
        configured: configured.unwrap_or(local),
        listener: sock.into(),
    })
}

// ---------------------------------------------------------------------------
// the old (running) process

/// One listener offered to a taker: configured address and a duplicate fd.
pub struct Offer {
    pub configured: SocketAddr,
    pub fd: OwnedFd,
    /// This is the admin (metrics, health) listener, not a client one.
    pub admin: bool,
    /// This is a `[websocket]` listener.
    pub websocket: bool,
}

/// A new process has taken the listeners over. Stop accepting, then answer
/// `done` so the new process learns it (it carries the taker's pid).
pub struct TakenOver {
    pub pid: u32,
    pub done: oneshot::Sender<()>,
}

/// The control socket of a running process.
pub struct ControlSocket {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl ControlSocket {
    /// Binds `path` (a stale socket file there is replaced; one that another
    /// running process still answers on is an error), restricted to our user,
    /// and serves takeover requests in the background. `offer` is called
    /// per request for fresh duplicates of the listeners. After one successful
    /// takeover it sends one [`TakenOver`] on `taken` and stops.
    pub fn start<F>(
        path: &Path,
        offer: F,
        taken: mpsc::Sender<TakenOver>,
    ) -> Result<Self, HandoverError>
    where
        F: Fn() -> io::Result<Vec<Offer>> + Send + Sync + 'static,
    {
        let err = |source| HandoverError::Socket {
            path: path.display().to_string(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err(io::Error::new(
                io::ErrorKind::AddrInUse,
                "another running mtgate answers there (start with --takeover to replace it)",
            )));
        }
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        let uid = nix::unistd::geteuid().as_raw();
        let task = tokio::spawn(serve(listener, uid, offer, taken));
        Ok(Self {
            path: path.to_owned(),
            task,
        })
    }

    /// Stops serving and removes the socket file (only when no takeover
    /// happened: after one, the path belongs to the new process).
    pub fn close(self, remove_file: bool) {
        self.task.abort();
        if remove_file {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

async fn serve<F>(listener: UnixListener, uid: u32, offer: F, taken: mpsc::Sender<TakenOver>)
where
    F: Fn() -> io::Result<Vec<Offer>> + Send + Sync + 'static,
{
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "handover socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match stream.peer_cred() {
            Ok(c) if c.uid() == uid || c.uid() == 0 => {}
            Ok(c) => {
                tracing::warn!(peer_uid = c.uid(), "handover refused: another user");
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "handover refused: no peer credentials");
                continue;
            }
        }
        match give(stream, &offer).await {
            Ok(Some((pid, stream))) => {
                let (done, wait) = oneshot::channel();
                if taken.send(TakenOver { pid, done }).await.is_err() {
                    return;
                }
                let mut stream = stream;
                // Free the path before `BYE`: the new process binds it next.
                drop(listener);
                if wait.await.is_ok() {
                    let _ = tokio::time::timeout(STEP_TIMEOUT, stream.write_all(b"BYE\n")).await;
                }
                return;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "handover aborted; still serving");
            }
        }
    }
}

/// Serves one takeover request: sends the fds, waits for `TAKEN`. `None`
/// when the request was refused (nothing was handed over).
async fn give<F>(stream: UnixStream, offer: &F) -> Result<Option<(u32, UnixStream)>, HandoverError>
where
    F: Fn() -> io::Result<Vec<Offer>>,
{
    let mut stream = BufReader::new(stream);
    let hello = read_line(&mut stream, STEP_TIMEOUT, "waiting for the request").await?;
    if hello != HELLO {
        let _ = stream.get_mut().write_all(b"ERR unknown request\n").await;
        return Err(proto(format!("unknown request `{}`", clip(&hello))));
    }
    let offers = match offer() {
        Ok(o) if !o.is_empty() && o.len() <= MAX_LISTENERS => o,
        Ok(_) => {
            let _ = stream.get_mut().write_all(b"ERR not accepting\n").await;
            return Ok(None);
        }
        Err(e) => {
            let _ = stream.get_mut().write_all(b"ERR no listeners\n").await;
            return Err(e.into());
        }
    };
    let mut text = format!("OK {}\n", offers.len());
    for o in &offers {
        let local = socket2::SockRef::from(&o.fd)
            .local_addr()?
            .as_socket()
            .ok_or_else(|| proto("a listener is not an inet socket"))?;
        let tag = match (o.admin, o.websocket) {
            (true, _) => " admin",
            (false, true) => " websocket",
            (false, false) => "",
        };
        text.push_str(&format!("{} {}{tag}\n", o.configured, local));
    }
    let fds: Vec<RawFd> = offers.iter().map(|o| o.fd.as_raw_fd()).collect();
    send_with_fds(stream.get_ref(), text.as_bytes(), &fds).await?;
    drop(offers); // our duplicates; the listeners stay open in the server
    let line = read_line(&mut stream, TAKEN_TIMEOUT, "waiting for TAKEN").await?;
    let pid = line
        .strip_prefix("TAKEN ")
        .and_then(|p| p.trim().parse::<u32>().ok())
        .ok_or_else(|| proto(format!("expected TAKEN <pid>, got `{}`", clip(&line))))?;
    Ok(Some((pid, stream.into_inner())))
}

// ---------------------------------------------------------------------------
// the new process

/// The listeners received from the running process; [`Takeover::complete`]
/// tells it to stop accepting.
pub struct Takeover {
    /// The client listeners.
    pub listeners: Vec<Inherited>,
    /// The admin listener, when the running process had one.
    pub admin: Option<Inherited>,
    /// The `[websocket]` listeners.
    pub websocket: Vec<Inherited>,
    stream: BufReader<UnixStream>,
}

impl std::fmt::Debug for Takeover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Takeover")
            .field("listeners", &self.listeners)
            .field("admin", &self.admin)
            .finish()
    }
}

/// Asks the process behind `path` for its listeners. `Ok(None)` when no
/// process answers there (no socket file, or nobody listening): start fresh.
pub async fn request(path: &Path) -> Result<Option<Takeover>, HandoverError> {
    let stream = match tokio::time::timeout(STEP_TIMEOUT, UnixStream::connect(path)).await {
        Err(_) => return Err(HandoverError::Timeout("connecting to the running process")),
        Ok(Err(e))
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Ok(Err(source)) => {
            return Err(HandoverError::Socket {
                path: path.display().to_string(),
                source,
            })
        }
        Ok(Ok(s)) => s,
    };
    let mut stream = BufReader::new(stream);
    tokio::time::timeout(
        STEP_TIMEOUT,
        stream.get_mut().write_all(format!("{HELLO}\n").as_bytes()),
    )
    .await
    .map_err(|_| HandoverError::Timeout("sending the request"))??;
    let (text, fds) = tokio::time::timeout(STEP_TIMEOUT, recv_with_fds(stream.get_ref()))
        .await
        .map_err(|_| HandoverError::Timeout("waiting for the listeners"))??;
    // The first recvmsg carries the fds and usually the whole text; the rest,
    // if the kernel split it, is read as plain bytes.
    let mut text = text;
    let first = text.split('\n').next().unwrap_or("").to_owned();
    if let Some(reason) = first.strip_prefix("ERR ") {
        return Err(HandoverError::Refused(clip(reason)));
    }
    let n: usize = first
        .strip_prefix("OK ")
        .and_then(|n| n.trim().parse().ok())
        .filter(|n| *n <= MAX_LISTENERS)
        .ok_or_else(|| proto(format!("expected OK <n>, got `{}`", clip(&first))))?;
    while text.matches('\n').count() < n + 1 {
        let line = read_line(&mut stream, STEP_TIMEOUT, "reading the listener list").await?;
        text.push_str(&line);
        text.push('\n');
        if text.len() > MAX_MESSAGE {
            return Err(proto("listener list too long"));
        }
    }
    if fds.len() != n {
        return Err(proto(format!("{n} listeners announced, {} fds", fds.len())));
    }
    let mut listeners = Vec::with_capacity(n);
    let mut admin = None;
    let mut websocket = Vec::new();
    for (line, fd) in text.lines().skip(1).zip(fds) {
        let mut parts = line.split(' ');
        let configured = parts
            .next()
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .ok_or_else(|| proto(format!("bad listener line `{}`", clip(line))))?;
        let inherited = into_listener(fd, Some(configured))?;
        match parts.nth(1) {
            Some("admin") if admin.is_none() => admin = Some(inherited),
            Some("admin") => return Err(proto("two admin listeners")),
            Some("websocket") => websocket.push(inherited),
            _ => listeners.push(inherited),
        }
    }
    Ok(Some(Takeover {
        listeners,
        admin,
        websocket,
        stream,
    }))
}

impl Takeover {
    /// Tells the old process we accept now (`TAKEN <pid>`) and waits, bounded,
    /// for its `BYE` (it has stopped accepting). Returns whether `BYE` came.
    pub async fn complete(mut self) -> Result<bool, HandoverError> {
        let msg = format!("TAKEN {}\n", std::process::id());
        tokio::time::timeout(
            STEP_TIMEOUT,
            self.stream.get_mut().write_all(msg.as_bytes()),
        )
        .await
        .map_err(|_| HandoverError::Timeout("sending TAKEN"))??;
        match read_line(&mut self.stream, STEP_TIMEOUT, "waiting for BYE").await {
            Ok(l) if l == "BYE" => Ok(true),
            Ok(l) => Err(proto(format!("expected BYE, got `{}`", clip(&l)))),
            Err(HandoverError::Timeout(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

// ---------------------------------------------------------------------------
// wire helpers

fn clip(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(80)
        .collect::<String>()
}

/// Reads one `\n`-terminated line (without it), bounded in time and length.
async fn read_line(
    r: &mut BufReader<UnixStream>,
    limit: Duration,
    what: &'static str,
) -> Result<String, HandoverError> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut lim = r.take(MAX_MESSAGE as u64);
    let n = tokio::time::timeout(limit, lim.read_until(b'\n', &mut buf))
        .await
        .map_err(|_| HandoverError::Timeout(what))??;
    if n == 0 || buf.last() != Some(&b'\n') {
        return Err(proto(format!("connection closed while {what}")));
    }
    buf.pop();
    String::from_utf8(buf).map_err(|_| proto("not UTF-8"))
}

/// One `sendmsg` with `data` and `fds` (SCM_RIGHTS); the rest of `data`, if
/// the kernel took only part, follows as plain writes.
async fn send_with_fds(s: &UnixStream, data: &[u8], fds: &[RawFd]) -> Result<(), HandoverError> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    let raw = s.as_raw_fd();
    let sent = tokio::time::timeout(
        STEP_TIMEOUT,
        s.async_io(Interest::WRITABLE, || {
            let iov = [io::IoSlice::new(data)];
            let cmsg = [ControlMessage::ScmRights(fds)];
            sendmsg::<UnixAddr>(raw, &iov, &cmsg, MsgFlags::MSG_NOSIGNAL, None)
                .map_err(io::Error::from)
        }),
    )
    .await
    .map_err(|_| HandoverError::Timeout("sending the listeners"))??;
    let mut rest = &data[sent..];
    while !rest.is_empty() {
        let n = tokio::time::timeout(
            STEP_TIMEOUT,
            s.async_io(Interest::WRITABLE, || {
                nix::sys::socket::send(raw, rest, MsgFlags::MSG_NOSIGNAL).map_err(io::Error::from)
            }),
        )
        .await
        .map_err(|_| HandoverError::Timeout("sending the listeners"))??;
        rest = &rest[n..];
    }
    Ok(())
}

/// One `recvmsg`: the bytes that came and the fds attached (close-on-exec).
async fn recv_with_fds(s: &UnixStream) -> Result<(String, Vec<OwnedFd>), HandoverError> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    let raw = s.as_raw_fd();
    let mut buf = vec![0u8; MAX_MESSAGE];
    let (n, fds) = s
        .async_io(Interest::READABLE, || {
            let mut cmsg = nix::cmsg_space!([RawFd; MAX_LISTENERS]);
            let mut iov = [io::IoSliceMut::new(&mut buf)];
            let msg =
                recvmsg::<UnixAddr>(raw, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC)
                    .map_err(io::Error::from)?;
            let mut fds = Vec::new();
            // `cmsgs()` fails on MSG_CTRUNC; the buffer holds MAX_LISTENERS fds,
            // and the sender never sends more.
            for c in msg.cmsgs().map_err(io::Error::from)? {
                if let ControlMessageOwned::ScmRights(list) = c {
                    for fd in list {
                        // SAFETY: SCM_RIGHTS just installed `fd` in this process's
                        // fd table for this message; the kernel gives each
                        // received fd a fresh number that nothing else in the
                        // process refers to, and we wrap each exactly once.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
            Ok((msg.bytes, fds))
        })
        .await?;
    if n == 0 {
        return Err(proto("connection closed before the listeners came"));
    }
    buf.truncate(n);
    let text = String::from_utf8(buf).map_err(|_| proto("not UTF-8"))?;
    Ok((text, fds))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener() -> std::net::TcpListener {
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind")
    }

    #[tokio::test]
    async fn fds_pass_and_rollback_keeps_the_offer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("h.sock");
        let l = listener();
        let local = l.local_addr().expect("addr");
        let dup = l.try_clone().expect("dup");
        let admin = listener();
        let admin_local = admin.local_addr().expect("addr");
        let configured: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let ws = listener();
        let ws_local = ws.local_addr().expect("addr");
        let ws_configured: SocketAddr = "[::]:8080".parse().expect("addr");
        let (tx, mut rx) = mpsc::channel(1);
        let ctl = ControlSocket::start(
            &path,
            move || {
                Ok(vec![
                    Offer {
                        configured,
                        fd: OwnedFd::from(admin.try_clone()?),
                        admin: true,
                        websocket: false,
                    },
                    Offer {
                        configured: ws_configured,
                        fd: OwnedFd::from(ws.try_clone()?),
                        admin: false,
                        websocket: true,
                    },
                    Offer {
                        configured,
                        fd: OwnedFd::from(dup.try_clone()?),
                        admin: false,
                        websocket: false,
                    },
                ])
            },
            tx,
        )
        .expect("control socket");

        // First taker gives up after receiving the fds: the old side goes on.
        let t = request(&path).await.expect("request").expect("answered");
        assert_eq!(t.listeners.len(), 1);
        assert_eq!(t.listeners[0].configured, configured);
        assert_eq!(t.listeners[0].listener.local_addr().expect("a"), local);
        let a = t.admin.as_ref().expect("admin listener handed over");
        assert_eq!(a.listener.local_addr().expect("a"), admin_local);
        assert_eq!(t.websocket.len(), 1, "the websocket listener is marked");
        assert_eq!(t.websocket[0].configured, ws_configured);
        assert_eq!(t.websocket[0].listener.local_addr().expect("a"), ws_local);
        drop(t);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(rx.try_recv().is_err(), "no takeover reported");

        // Second taker completes.
        let t = request(&path).await.expect("request").expect("answered");
        let inherited = t.listeners[0].listener.try_clone().expect("dup");
        let done = tokio::spawn(t.complete());
        let taken = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("in time")
            .expect("taken");
        assert_eq!(taken.pid, std::process::id());
        let _ = taken.done.send(());
        assert!(done.await.expect("join").expect("complete"), "BYE received");
        // The inherited fd is the same socket.
        drop(l);
        let c = std::net::TcpStream::connect(local).expect("connect");
        let (s, _) = inherited.accept().expect("accept");
        assert_eq!(s.peer_addr().expect("peer"), c.local_addr().expect("local"));
        ctl.close(true);
    }

    #[tokio::test]
    async fn no_process_means_start_fresh() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(request(&dir.path().join("none.sock"))
            .await
            .expect("ok")
            .is_none());
    }
}
