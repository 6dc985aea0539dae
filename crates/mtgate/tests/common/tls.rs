//! A TLS client for the own site's tests: trusts one certificate, offers
//! the ALPN protocols given, optionally from a chosen loopback address.

use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;

pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// A client configuration trusting only `root`, offering `alpn`.
pub fn client_config(root: &CertificateDer<'static>, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

/// A TLS connection to `addr` for `host` (from the loopback address `from`,
/// if given); the handshake's error if the certificate is not trusted.
pub async fn connect(
    addr: SocketAddr,
    host: &str,
    cfg: Arc<rustls::ClientConfig>,
    from: Option<&str>,
) -> std::io::Result<Tls> {
    let s = match from {
        None => TcpStream::connect(addr).await?,
        Some(f) => {
            let sock = tokio::net::TcpSocket::new_v4()?;
            sock.bind(SocketAddr::new(f.parse().expect("ip"), 0))?;
            sock.connect(addr).await?
        }
    };
    let name = ServerName::try_from(host.to_owned()).expect("name");
    tokio_rustls::TlsConnector::from(cfg).connect(name, s).await
}
