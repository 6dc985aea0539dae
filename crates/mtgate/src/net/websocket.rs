//! The WebSocket inbound transport (PROTOCOL §8): clients (or a CDN that only
//! passes WebSocket) reach mtgate with binary messages whose payloads,
//! concatenated, are exactly the stream a TCP client sends.
//!
//! A `[websocket]` listener reads one HTTP request head (bounded in size
//! and time). A WebSocket upgrade on the configured path is accepted
//! (`Sec-WebSocket-Protocol: binary` echoed when offered); anything else gets
//! an ordinary web answer, a `404` page as a web server gives, and is closed.
//! An upgraded connection enters the session as one more [`Inbound`] of
//! transport [`Transport::WebSocket`]: its messages are pumped into one end
//! of a loopback TCP pair whose other end the session serves, so the relay,
//! ME mode and the policy work unchanged and plain TCP pays nothing for this
//! room. A peer in `[proxy_protocol] trusted` (the CDN) may name the client
//! with `X-Forwarded-For` (its last entry, the address the CDN saw).

use crate::net::inbound::{Inbound, Meta, Transport};
use crate::runtime::Live;
use futures_util::{SinkExt, StreamExt};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// The largest request head read.
pub const MAX_HEAD: usize = 8 * 1024;
/// The most headers parsed.
const MAX_HEADERS: usize = 48;

/// `[websocket]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WsConfig {
    /// Listeners (none: the WebSocket transport is off).
    pub listen: Vec<SocketAddr>,
    /// The path upgrades are accepted on (Telegram Web's `/apiws`).
    pub path: String,
}

/// `[websocket]` as written.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWs {
    pub listen: Option<Vec<String>>,
    pub path: Option<String>,
}

impl WsConfig {
    /// Checks `[websocket]`; an error names the key.
    pub fn from_raw(raw: RawWs) -> Result<Self, (String, String)> {
        let mut listen = Vec::new();
        for (i, a) in raw.listen.unwrap_or_default().iter().enumerate() {
            listen.push(a.parse().map_err(|_| {
                (
                    format!("websocket.listen[{i}]"),
                    format!("`{a}` is not an ip:port address"),
                )
            })?);
        }
        let path = raw.path.unwrap_or_else(|| "/apiws".into());
        if !path.starts_with('/')
            || path.len() > 256
            || path.bytes().any(|b| b <= b' ' || b == 0x7f)
        {
            return Err((
                "websocket.path".into(),
                "an absolute path without spaces, up to 256 bytes".into(),
            ));
        }
        Ok(Self { listen, path })
    }
}

/// What a request head asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Head {
    /// Not all of it yet.
    Incomplete,
    /// A head longer than [`MAX_HEAD`], or not HTTP at all.
    Invalid,
    /// A WebSocket upgrade on our path; `len` bytes of head.
    Upgrade {
        len: usize,
        key: String,
        binary: bool,
        forwarded_for: Option<IpAddr>,
    },
    /// Any other request: answer it as a web server would.
    Web { status: u16 },
}

/// Reads a request head from `buf` (everything received so far).
pub fn parse_head(buf: &[u8], path: &str) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Head::Incomplete,
        _ => return Head::Invalid,
    };
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let has_token = |name: &str, token: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .filter_map(|h| std::str::from_utf8(h.value).ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    let target = req.path.unwrap_or("");
    let target = target.split('?').next().unwrap_or("");
    if req.method != Some("GET") {
        return Head::Web { status: 405 };
    }
    if target != path {
        return Head::Web { status: 404 };
    }
    let key = header("Sec-WebSocket-Key").filter(|k| k.len() == 24);
    let upgrade = has_token("Upgrade", "websocket") && has_token("Connection", "upgrade");
    match (key, upgrade, header("Sec-WebSocket-Version")) {
        (Some(key), true, Some("13")) => Head::Upgrade {
            len,
            key: key.to_owned(),
            binary: has_token("Sec-WebSocket-Protocol", "binary"),
            forwarded_for: header("X-Forwarded-For")
                .and_then(|v| v.rsplit(',').next())
                .and_then(|v| v.trim().parse().ok()),
        },
        // Our path, but not a WebSocket request: what a web server says then.
        _ => Head::Web { status: 400 },
    }
}

/// The `101 Switching Protocols` answer to an upgrade with `key`.
pub fn upgrade_response(key: &str, binary: bool) -> String {
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let proto = if binary {
        "Sec-WebSocket-Protocol: binary\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n{proto}\r\n"
    )
}

/// An ordinary web server's answer (nginx's shape) with `status`.
pub fn web_answer(status: u16) -> Vec<u8> {
    let reason = match status {
        400 => "Bad Request",
        405 => "Not Allowed",
        _ => "Not Found",
    };
    let body = format!(
        "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    );
    let date = httpdate_now();
    format!(
        "HTTP/1.1 {status} {reason}\r\nServer: nginx\r\nDate: {date}\r\nContent-Type: text/html\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn httpdate_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    chrono::DateTime::from_timestamp(now, 0)
        .map(|t| t.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
        .unwrap_or_default()
}

/// Loopback TCP pairs: the WebSocket side writes into one end, the session
/// serves the other.
pub struct Pairs {
    listener: TcpListener,
    lock: tokio::sync::Mutex<()>,
}

impl Pairs {
    pub async fn new() -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind("127.0.0.1:0").await?,
            lock: tokio::sync::Mutex::new(()),
        })
    }

    /// [`Pairs::new`] without awaiting (inside a tokio runtime).
    pub fn bind_now() -> std::io::Result<Self> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.set_nonblocking(true)?;
        Ok(Self {
            listener: TcpListener::from_std(l)?,
            lock: tokio::sync::Mutex::new(()),
        })
    }

    /// A connected pair (ours, the session's).
    pub async fn pair(&self) -> std::io::Result<(TcpStream, TcpStream)> {
        let _one_at_a_time = self.lock.lock().await;
        let addr = self.listener.local_addr()?;
        let (ours, theirs) = tokio::join!(TcpStream::connect(addr), self.listener.accept());
        let ours = ours?;
        let (theirs, _) = theirs?;
        let _ = ours.set_nodelay(true);
        let _ = theirs.set_nodelay(true);
        Ok((ours, theirs))
    }
}

/// Accepts WebSocket clients on `listener` until the task is dropped; each
/// holds a slot of the connection cap while it lasts.
pub async fn accept_loop(
    listener: Arc<TcpListener>,
    configured: SocketAddr,
    live: Arc<Live>,
    conns: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
) {
    let Ok(pairs) = Pairs::new().await.map(Arc::new) else {
        tracing::error!(%configured, "websocket listener: no loopback pair listener");
        return;
    };
    let mut backoff = Duration::from_millis(5);
    loop {
        let Ok(permit) = conns.clone().acquire_owned().await else {
            return;
        };
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => {
                backoff = Duration::from_millis(5);
                x
            }
            Err(e) => {
                tracing::warn!(error = %e, "websocket accept failed; backing off");
                drop(permit);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let (live, pairs, sd) = (live.clone(), pairs.clone(), shutdown.clone());
        tokio::spawn(async move {
            serve(tcp, peer, configured, live, &pairs, sd).await;
            drop(permit);
        });
    }
}

/// One WebSocket listener connection: the head, then the web answer or the
/// session with its pump.
async fn serve(
    mut tcp: TcpStream,
    peer: SocketAddr,
    configured: SocketAddr,
    live: Arc<Live>,
    pairs: &Pairs,
    shutdown: watch::Receiver<bool>,
) {
    let rt = live.current();
    let path = rt.config.websocket.path.clone();
    let limit = rt.config.handshake_timeout;
    let read = async {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        loop {
            match parse_head(&buf, &path) {
                Head::Incomplete => {}
                done => return Some((done, buf)),
            }
            let n = tcp.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let Ok(Some((head, buf))) = tokio::time::timeout(limit, read).await else {
        return;
    };
    let (len, key, binary, forwarded_for) = match head {
        Head::Upgrade {
            len,
            key,
            binary,
            forwarded_for,
        } => (len, key, binary, forwarded_for),
        // Not an upgrade (or not HTTP at all): a web server's answer, then FIN.
        other => {
            let status = match other {
                Head::Web { status } => status,
                _ => 400,
            };
            let _ = tcp.write_all(&web_answer(status)).await;
            let _ = tcp.shutdown().await;
            return;
        }
    };
    if tcp
        .write_all(upgrade_response(&key, binary).as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let _ = tcp.set_nodelay(true);
    let ws =
        WebSocketStream::from_partially_read(tcp, buf[len..].to_vec(), Role::Server, None).await;
    let Ok((ours, theirs)) = pairs.pair().await else {
        return;
    };
    // A trusted front end (the CDN) names the client.
    let vouched = forwarded_for.filter(|_| rt.config.proxy_protocol.trusts(peer.ip()));
    let inbound = Inbound {
        stream: theirs,
        meta: Meta {
            peer,
            listener: configured,
            transport: Transport::WebSocket,
            vouched,
            pin: None,
        },
    };
    drop(rt);
    let session = tokio::spawn(crate::session::serve(inbound, live.current(), shutdown));
    pump(ws, ours).await;
    let _ = session.await;
}

/// Moves bytes between a WebSocket (binary messages) and a loopback TCP end
/// until either side ends (both transports, both roles).
pub async fn pump<S>(ws: WebSocketStream<S>, tcp: TcpStream)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
{
    let (rd, wr) = tcp.into_split();
    pump_halves(ws, rd, wr).await
}

/// [`pump`] with any byte stream's two halves in place of a TCP socket
/// (the link's WebSocket carriage pumps into an in-memory pipe).
pub async fn pump_halves<S, R, W>(ws: WebSocketStream<S>, mut rd: R, mut wr: W)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    R: tokio::io::AsyncRead + Unpin,
    W: tokio::io::AsyncWrite + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let up = async {
        while let Some(Ok(m)) = stream.next().await {
            match m {
                Message::Binary(b) => {
                    if wr.write_all(&b).await.is_err() {
                        break;
                    }
                }
                // Pings are answered by the library; text is not ours.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                Message::Text(_) | Message::Close(_) => break,
            }
        }
        let _ = wr.shutdown().await;
    };
    let down = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if sink
                        .send(Message::Binary(buf[..n].to_vec().into()))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        let _ = sink.close().await;
    };
    tokio::pin!(up, down);
    // When one way ends, the other gets a moment to finish (the close
    // handshake, the last bytes), never longer.
    let grace = Duration::from_secs(5);
    tokio::select! {
        _ = &mut up => { let _ = tokio::time::timeout(grace, down).await; }
        _ = &mut down => { let _ = tokio::time::timeout(grace, up).await; }
    }
}

#[cfg(test)]
mod tests;
