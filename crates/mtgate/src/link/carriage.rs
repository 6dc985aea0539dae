//! What a link travels in: plain TCP, TLS that looks like any HTTPS
//! connection, or WebSocket (over TLS or not) so that a CDN can sit between
//! the bridge and the exit. The link's own handshake and records are the
//! same in each; the carriage only hides them.
//!
//! The exit's answer to a connection that is not a link depends on what it
//! can still do: over TCP the bytes go to the mask host, byte for byte, as
//! with any failed client handshake; inside TLS or HTTP (which the exit
//! terminated) it answers like a web server (`404`, nginx's page) and
//! closes.

use super::mux::Carriage;
use crate::net::connect::{ConnectError, ErrorClass};
use crate::net::websocket::{self, Head};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

/// The in-memory pipe between a WebSocket and the link (bytes in flight).
const PIPE: usize = 256 * 1024;
/// The default WebSocket path.
pub const DEFAULT_PATH: &str = "/link";

/// The carriage, as `carriage = "…"` names it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    #[default]
    Tcp,
    Tls,
    Websocket,
}

/// A boxed carriage.
pub type Boxed = Box<dyn Carriage>;

fn err(class: ErrorClass, detail: impl Into<String>) -> ConnectError {
    ConnectError {
        class,
        detail: detail.into(),
    }
}

/// The bridge's way to its exit.
#[derive(Clone)]
pub struct Dialer {
    pub kind: Kind,
    /// TLS server name and HTTP `Host` (default: the exit's address).
    pub server_name: String,
    /// WebSocket path.
    pub path: String,
    /// WebSocket over TLS (`wss`); TLS carriage always is.
    pub tls: bool,
    connector: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("kind", &self.kind)
            .field("server_name", &self.server_name)
            .field("path", &self.path)
            .field("tls", &self.tls)
            .finish()
    }
}

impl PartialEq for Dialer {
    fn eq(&self, o: &Self) -> bool {
        (self.kind, &self.server_name, &self.path, self.tls)
            == (o.kind, &o.server_name, &o.path, o.tls)
    }
}

impl Dialer {
    /// A dialer for `kind`; `ca` adds trust roots to the web PKI's.
    pub fn new(
        kind: Kind,
        server_name: String,
        path: String,
        tls: bool,
        ca: &[rustls::pki_types::CertificateDer<'static>],
    ) -> Result<Self, String> {
        let tls = tls || kind == Kind::Tls;
        let connector = match (kind, tls) {
            (Kind::Tcp, _) | (_, false) => None,
            _ => {
                rustls::pki_types::ServerName::try_from(server_name.clone())
                    .map_err(|_| format!("`{server_name}` is not a TLS server name"))?;
                let mut roots = rustls::RootCertStore {
                    roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
                };
                for c in ca {
                    roots.add(c.clone()).map_err(|e| format!("ca_file: {e}"))?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
                Some(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
            }
        };
        Ok(Self {
            kind,
            server_name,
            path,
            tls,
            connector,
        })
    }

    /// Connects to `exit` (`host:port`) and sets the carriage up (TLS, the
    /// upgrade); the carriage and the address connected to.
    pub async fn connect(&self, exit: &str) -> Result<(Boxed, SocketAddr), ConnectError> {
        let tcp = TcpStream::connect(exit).await.map_err(|e| ConnectError {
            class: ErrorClass::of_io(&e),
            detail: format!("link exit {exit}: {e}"),
        })?;
        let _ = tcp.set_nodelay(true);
        let addr = tcp.peer_addr().map_err(|e| ConnectError {
            class: ErrorClass::of_io(&e),
            detail: format!("link exit {exit}: {e}"),
        })?;
        let stream: Boxed = match &self.connector {
            None => Box::new(tcp),
            Some(c) => {
                let name = rustls::pki_types::ServerName::try_from(self.server_name.clone())
                    .map_err(|e| err(ErrorClass::Tls, e.to_string()))?;
                let tls = c.connect(name, tcp).await.map_err(|e| {
                    err(
                        ErrorClass::Tls,
                        format!("link exit {exit} ({}): {e}", self.server_name),
                    )
                })?;
                Box::new(tls)
            }
        };
        if self.kind != Kind::Websocket {
            return Ok((stream, addr));
        }
        let scheme = if self.tls { "wss" } else { "ws" };
        let req = format!("{scheme}://{}{}", self.server_name, self.path)
            .into_client_request()
            .map_err(|e| err(ErrorClass::Protocol, e.to_string()))?;
        let (ws, _) = tokio_tungstenite::client_async(req, stream)
            .await
            .map_err(|e| {
                err(
                    ErrorClass::Protocol,
                    format!("link exit {exit}: upgrade: {e}"),
                )
            })?;
        Ok((piped(ws), addr))
    }
}

/// A WebSocket as a byte stream: a pump between its binary messages and
/// one end of an in-memory pipe, whose other end comes back.
fn piped<S>(ws: WebSocketStream<S>) -> Boxed
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (ours, theirs) = tokio::io::duplex(PIPE);
    let (rd, wr) = tokio::io::split(ours);
    tokio::spawn(websocket::pump_halves(ws, rd, wr));
    Box::new(theirs)
}

/// The exit's side of its carriage.
#[derive(Clone)]
pub struct Acceptor {
    pub kind: Kind,
    pub path: String,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// The certificate and key files (for equality across reloads).
    files: Option<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("kind", &self.kind)
            .field("path", &self.path)
            .field("tls", &self.files)
            .finish()
    }
}

/// What the exit made of a new connection's carriage.
pub enum Opened {
    /// Plain TCP: the link's first bytes are read from it next (and
    /// fronted byte for byte if they are not a link's).
    Tcp(TcpStream),
    /// TLS or WebSocket, set up: the link's bytes are inside.
    Inside(Boxed),
    /// Answered as a web server would, or dropped.
    Done,
}

/// The longest time a TLS handshake and a request head may take.
const SETUP: Duration = Duration::from_secs(10);

impl Acceptor {
    /// The acceptor for `kind`; TLS from the `cert`/`key` files (required
    /// for `tls`, optional for `websocket`).
    pub fn new(
        kind: Kind,
        path: String,
        files: Option<(PathBuf, PathBuf)>,
    ) -> Result<Self, String> {
        let tls = match &files {
            Some((c, k)) if kind != Kind::Tcp => {
                Some(crate::admin::tls::acceptor(c, k).map_err(|e| e.to_string())?)
            }
            _ => None,
        };
        if kind == Kind::Tls && tls.is_none() {
            return Err("carriage = \"tls\" needs tls_cert and tls_key".into());
        }
        Ok(Self {
            kind,
            path,
            tls,
            files,
        })
    }

    pub fn tcp() -> Self {
        Self {
            kind: Kind::Tcp,
            path: DEFAULT_PATH.into(),
            tls: None,
            files: None,
        }
    }

    /// Sets the carriage up on a new connection.
    pub async fn open(&self, tcp: TcpStream) -> Opened {
        match tokio::time::timeout(SETUP, self.setup(tcp)).await {
            Ok(o) => o,
            Err(_) => Opened::Done,
        }
    }

    async fn setup(&self, tcp: TcpStream) -> Opened {
        let stream: Boxed = match (self.kind, &self.tls) {
            (Kind::Tcp, _) => return Opened::Tcp(tcp),
            (_, Some(a)) => match a.accept(tcp).await {
                Ok(s) => Box::new(s),
                Err(_) => return Opened::Done,
            },
            (_, None) => Box::new(tcp),
        };
        if self.kind == Kind::Tls {
            return Opened::Inside(stream);
        }
        self.upgrade(stream).await
    }

    /// Reads a request head: an upgrade on our path becomes the carriage,
    /// anything else gets a web server's answer.
    async fn upgrade(&self, mut s: Boxed) -> Opened {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        let head = loop {
            match websocket::parse_head(&buf, &self.path) {
                Head::Incomplete => {}
                done => break done,
            }
            match s.read(&mut chunk).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return Opened::Done,
            }
        };
        let (len, key) = match head {
            Head::Upgrade { len, key, .. } => (len, key),
            other => {
                let status = match other {
                    Head::Web { status } => status,
                    _ => 400,
                };
                let _ = s.write_all(&websocket::web_answer(status)).await;
                let _ = s.shutdown().await;
                return Opened::Done;
            }
        };
        if s.write_all(websocket::upgrade_response(&key, false).as_bytes())
            .await
            .is_err()
        {
            return Opened::Done;
        }
        let ws =
            WebSocketStream::from_partially_read(s, buf[len..].to_vec(), Role::Server, None).await;
        Opened::Inside(piped(ws))
    }

    /// The answer inside TLS or HTTP to bytes that are not a link's.
    pub async fn refuse_inside(&self, mut s: Boxed) {
        if self.kind == Kind::Tls {
            let _ = s.write_all(&websocket::web_answer(404)).await;
        }
        let _ = s.shutdown().await;
    }
}

impl PartialEq for Acceptor {
    fn eq(&self, o: &Self) -> bool {
        (self.kind, &self.path, &self.files) == (o.kind, &o.path, &o.files)
    }
}
