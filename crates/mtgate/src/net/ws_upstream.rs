//! The WebSocket upstream (PROTOCOL §8): DC connections through Telegram's
//! `wss://<name>.web.telegram.org/apiws` endpoints instead of raw TCP to DC
//! addresses, for hosts whose way to the DC addresses is blocked but whose
//! way to Telegram's web endpoints is not.
//!
//! `[upstream.websocket]` names a host per DC (defaults: Telegram Web's
//! `pluto`, `venus`, `aurora`, `vesta`, `flora` for DCs 1–5; media DCs use
//! the `-1` names). A connection is TLS (rustls, the web PKI or `ca_file`),
//! a WebSocket upgrade with `Sec-WebSocket-Protocol: binary`, then binary
//! messages pumped to a loopback TCP pair whose other end the session relays
//! on as on any DC connection: the proxy's own obfuscated2 header first.
//! A DC without a host here is reached over TCP as before.

use crate::net::connect::{ConnectError, ErrorClass};
use crate::net::websocket::{pump, Pairs};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// `[upstream.websocket]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WsUpstreamConfig {
    /// DC number → host name (empty: the WebSocket upstream is off).
    pub hosts: BTreeMap<u16, String>,
    pub path: String,
    pub port: u16,
    /// `wss://` (true) or `ws://`.
    pub tls: bool,
    /// Host → address, instead of DNS (tests; pinning an address).
    pub resolve: HashMap<String, SocketAddr>,
    /// Extra trust roots (from `ca_file`), besides the web PKI.
    pub ca: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// Only when every TCP address of the DC failed (`mode = "fallback"`).
    pub fallback: bool,
}

/// `[upstream.websocket]` as written.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWsUpstream {
    pub enabled: Option<bool>,
    /// `"N" = "host"`; unset: Telegram Web's names for DCs 1–5.
    #[serde(default)]
    pub hosts: BTreeMap<String, String>,
    pub path: Option<String>,
    pub port: Option<u16>,
    pub tls: Option<bool>,
    #[serde(default)]
    pub resolve: BTreeMap<String, String>,
    pub ca_file: Option<String>,
    /// `only` (the default) or `fallback` (after the DC's TCP addresses).
    pub mode: Option<String>,
}

const WEB_NAMES: [(u16, &str); 5] = [
    (1, "pluto"),
    (2, "venus"),
    (3, "aurora"),
    (4, "vesta"),
    (5, "flora"),
];

impl WsUpstreamConfig {
    /// Checks `[upstream.websocket]`; an error names the key.
    pub fn from_raw(raw: RawWsUpstream) -> Result<Self, (String, String)> {
        if !raw.enabled.unwrap_or(false) {
            return Ok(Self::default());
        }
        let key = |k: &str| format!("upstream.websocket.{k}");
        let mut hosts = BTreeMap::new();
        if raw.hosts.is_empty() {
            for (dc, name) in WEB_NAMES {
                hosts.insert(dc, format!("{name}.web.telegram.org"));
            }
        }
        for (dc, host) in raw.hosts {
            let n: u16 = dc
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| (key("hosts"), format!("`{dc}` is not a DC number")))?;
            mtgate_proto::secret::validate_domain(&host)
                .map_err(|e| (key(&format!("hosts.{dc}")), e.to_string()))?;
            hosts.insert(n, host);
        }
        let path = raw.path.unwrap_or_else(|| "/apiws".into());
        if !path.starts_with('/') || path.bytes().any(|b| b <= b' ') {
            return Err((key("path"), "an absolute path without spaces".into()));
        }
        let tls = raw.tls.unwrap_or(true);
        let port = raw.port.unwrap_or(if tls { 443 } else { 80 });
        let mut resolve = HashMap::new();
        for (h, a) in raw.resolve {
            let addr = a.parse().map_err(|_| {
                (
                    key(&format!("resolve.{h}")),
                    format!("`{a}` is not an ip:port address"),
                )
            })?;
            resolve.insert(h, addr);
        }
        let ca = match raw.ca_file {
            None => Vec::new(),
            Some(f) => {
                let pem = std::fs::read(&f).map_err(|e| (key("ca_file"), format!("{f}: {e}")))?;
                let certs = pem_certs(&pem);
                if certs.is_empty() {
                    return Err((key("ca_file"), format!("{f}: no certificate in it")));
                }
                certs
            }
        };
        let fallback = match raw.mode.as_deref() {
            None | Some("only") => false,
            Some("fallback") => true,
            Some(o) => return Err((key("mode"), format!("`{o}`: use only or fallback"))),
        };
        Ok(Self {
            hosts,
            path,
            port,
            tls,
            resolve,
            ca,
            fallback,
        })
    }

    pub fn enabled(&self) -> bool {
        !self.hosts.is_empty()
    }

    /// DC `dc`'s host name, if it has one.
    pub fn host(&self, dc: u16) -> Option<&str> {
        self.hosts.get(&dc).map(String::as_str)
    }
}

/// Opens WebSocket connections to DCs.
pub struct WsUpstream {
    cfg: WsUpstreamConfig,
    tls: tokio_rustls::TlsConnector,
    /// Made on first use (it needs the I/O runtime).
    pairs: tokio::sync::OnceCell<Pairs>,
}

impl std::fmt::Debug for WsUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsUpstream")
            .field("cfg", &self.cfg)
            .finish()
    }
}

fn err(class: ErrorClass, detail: impl Into<String>) -> ConnectError {
    ConnectError {
        class,
        detail: detail.into(),
    }
}

impl WsUpstream {
    /// The upstream `cfg` describes (`None` when it is off).
    pub fn new(cfg: &WsUpstreamConfig) -> Option<Arc<Self>> {
        if !cfg.enabled() {
            return None;
        }
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for c in &cfg.ca {
            if let Err(e) = roots.add(c.clone()) {
                tracing::warn!(error = %e, "upstream.websocket.ca_file: a certificate was not added");
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Some(Arc::new(Self {
            cfg: cfg.clone(),
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            pairs: tokio::sync::OnceCell::new(),
        }))
    }

    /// Whether the endpoint is used only after the DC's TCP addresses failed.
    pub fn fallback_only(&self) -> bool {
        self.cfg.fallback
    }

    /// The host for DC `dc` (`media`: the `-1` name), if this upstream serves it.
    pub fn host(&self, dc: u16, media: bool) -> Option<String> {
        let h = self.cfg.hosts.get(&dc)?;
        Some(match (media, h.split_once('.')) {
            (true, Some((first, rest))) => format!("{first}-1.{rest}"),
            _ => h.clone(),
        })
    }

    /// A stream to DC `dc` through its WebSocket endpoint (the loopback end
    /// of a pumped pair) and the endpoint's address, within `timeout`.
    pub async fn connect(
        &self,
        dc: u16,
        media: bool,
        timeout: Duration,
    ) -> Option<Result<(TcpStream, SocketAddr), ConnectError>> {
        let host = self.host(dc, media)?;
        Some(
            tokio::time::timeout(timeout, self.open(&host))
                .await
                .unwrap_or_else(|_| {
                    Err(err(
                        ErrorClass::Timeout,
                        format!("{host}: no connection within {timeout:?}"),
                    ))
                }),
        )
    }

    async fn open(&self, host: &str) -> Result<(TcpStream, SocketAddr), ConnectError> {
        let addr = match self.cfg.resolve.get(host) {
            Some(a) => *a,
            None => tokio::net::lookup_host((host, self.cfg.port))
                .await
                .map_err(|e| err(ErrorClass::Dns, format!("{host}: {e}")))?
                .next()
                .ok_or_else(|| err(ErrorClass::Dns, format!("{host}: no address")))?,
        };
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| err(ErrorClass::of_io(&e), format!("{host} ({addr}): {e}")))?;
        let _ = tcp.set_nodelay(true);
        let scheme = if self.cfg.tls { "wss" } else { "ws" };
        // The scheme's own port is left out of the URL (and so of `Host:`),
        // as a browser does.
        let port = match (self.cfg.tls, self.cfg.port) {
            (true, 443) | (false, 80) => String::new(),
            (_, p) => format!(":{p}"),
        };
        let mut req = format!("{scheme}://{host}{port}{}", self.cfg.path)
            .into_client_request()
            .map_err(|e| err(ErrorClass::Protocol, e.to_string()))?;
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", http_value("binary"));
        let pairs = self
            .pairs
            .get_or_try_init(Pairs::new)
            .await
            .map_err(|e| err(ErrorClass::Local, format!("loopback pair listener: {e}")))?;
        let (ours, theirs) = pairs
            .pair()
            .await
            .map_err(|e| err(ErrorClass::Local, format!("loopback pair: {e}")))?;
        if self.cfg.tls {
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|e| err(ErrorClass::Tls, format!("{host}: {e}")))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| err(ErrorClass::Tls, format!("{host}: {e}")))?;
            let (ws, _) = tokio_tungstenite::client_async(req, tls)
                .await
                .map_err(|e| err(ErrorClass::Protocol, format!("{host}: upgrade: {e}")))?;
            tokio::spawn(pump(ws, ours));
        } else {
            let (ws, _) = tokio_tungstenite::client_async(req, tcp)
                .await
                .map_err(|e| err(ErrorClass::Protocol, format!("{host}: upgrade: {e}")))?;
            tokio::spawn(pump(ws, ours));
        }
        Ok((theirs, addr))
    }
}

fn http_value(s: &'static str) -> tokio_tungstenite::tungstenite::http::HeaderValue {
    tokio_tungstenite::tungstenite::http::HeaderValue::from_static(s)
}

/// The certificates of a PEM file (other blocks are skipped).
fn pem_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_default_to_telegram_webs_and_media_take_the_dash_one_name() {
        let off = WsUpstreamConfig::from_raw(RawWsUpstream::default()).unwrap();
        assert!(!off.enabled());
        let c = WsUpstreamConfig::from_raw(RawWsUpstream {
            enabled: Some(true),
            ..RawWsUpstream::default()
        })
        .unwrap();
        assert_eq!(c.hosts[&2], "venus.web.telegram.org");
        assert_eq!((c.port, c.tls, c.path.as_str()), (443, true, "/apiws"));
        let bad = RawWsUpstream {
            enabled: Some(true),
            hosts: [("x".to_string(), "h".to_string())].into(),
            ..RawWsUpstream::default()
        };
        assert!(WsUpstreamConfig::from_raw(bad).is_err());
    }
}
