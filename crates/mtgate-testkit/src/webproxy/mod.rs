//! A client of Telegram's WEB proxy type written from the protocol, for
//! mtgate's tests and benchmark: the bridge page's bootstrap token, a
//! session, and any of the four carriers bridged to a local TCP port whose
//! every accepted connection is one stream (so any obfuscated2 client can
//! run over it): [`bridge::bridge`].

pub mod bridge;
pub mod http;

pub use bridge::{bridge, Bridge, BridgeStats, Carrier, Faults};

use anyhow::{bail, Context as _};
use mtgate_proto::webproxy::{self, Kind};
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;
pub type Ws = tokio_tungstenite::WebSocketStream<Tls>;

/// An own site that serves the WEB proxy type.
#[derive(Clone)]
pub struct Site {
    pub addr: SocketAddr,
    pub host: String,
    tls: Arc<rustls::ClientConfig>,
}

impl Site {
    /// The site at `addr` for `host`, its certificate `root` trusted.
    pub fn new(
        addr: SocketAddr,
        host: &str,
        root: &CertificateDer<'static>,
    ) -> anyhow::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(root.clone())?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            addr,
            host: host.to_owned(),
            tls: Arc::new(cfg),
        })
    }

    /// A TLS connection speaking HTTP/1.1.
    pub async fn tls(&self) -> anyhow::Result<Tls> {
        self.tls_alpn(b"http/1.1").await
    }

    /// A TLS connection offering the one ALPN protocol `alpn`.
    pub async fn tls_alpn(&self, alpn: &[u8]) -> anyhow::Result<Tls> {
        let s = TcpStream::connect(self.addr).await?;
        s.set_nodelay(true)?;
        let name = ServerName::try_from(self.host.clone())?;
        let mut cfg = (*self.tls).clone();
        cfg.alpn_protocols = vec![alpn.to_vec()];
        Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, s)
            .await?)
    }

    /// One HTTP/1.1 request (the connection closed after it): head and body.
    pub async fn http(&self, req: &[u8]) -> anyhow::Result<(String, Vec<u8>)> {
        let mut t = self.tls().await?;
        t.write_all(req).await?;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), t.read_to_end(&mut out)).await;
        let at = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(out.len(), |i| i + 4);
        Ok((
            String::from_utf8_lossy(&out[..at]).into_owned(),
            out[at..].to_vec(),
        ))
    }

    /// `GET path` (closing): head and body.
    pub async fn get(&self, path: &str) -> anyhow::Result<(String, Vec<u8>)> {
        let host = &self.host;
        self.http(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
    }

    /// The bridge page for capability `cap`: its head and bootstrap token.
    pub async fn bootstrap(&self, cap: &str) -> anyhow::Result<(String, String)> {
        let (head, body) = self.get(&format!("/?bridge={cap}")).await?;
        let body = String::from_utf8_lossy(&body);
        let at = body
            .find("\"bootstrap\":\"")
            .context("no bootstrap token in the page")?
            + 13;
        let token = body
            .get(at..at + webproxy::TOKEN_LEN)
            .context("short token")?
            .to_owned();
        Ok((head, token))
    }

    /// `POST /api/v1/session` with a HELLO: the head, the session token and the body.
    pub async fn session(&self, boot: &str) -> anyhow::Result<(String, String, Vec<u8>)> {
        let mut hello = Vec::new();
        webproxy::encode(Kind::Hello, 0, &[1], &mut hello);
        let mut req = format!(
            "POST /api/v1/session HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {boot}\r\n\
             Content-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.host,
            hello.len()
        )
        .into_bytes();
        req.extend_from_slice(&hello);
        let (head, body) = self.http(&req).await?;
        if !head.starts_with("HTTP/1.1 200") {
            bail!("session refused: {head}");
        }
        let token = head
            .lines()
            .find_map(|l| l.strip_prefix("x-session-token: "))
            .map(str::to_owned)
            .unwrap_or_default();
        Ok((head, token, body))
    }

    /// `GET /api/v1/ws` with subprotocol `protocol`.
    pub async fn websocket(&self, protocol: &str) -> anyhow::Result<Ws> {
        let mut req = format!("wss://{}/api/v1/ws", self.host).into_client_request()?;
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", protocol.parse()?);
        req.headers_mut()
            .insert("Origin", format!("https://{}", self.host).parse()?);
        let t = self.tls().await?;
        Ok(tokio_tungstenite::client_async(req, t).await?.0)
    }
}
