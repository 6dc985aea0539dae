//! Learning the mask site's TLS answer, so the fake ServerHello looks like it.
//!
//! A real TLS client (rustls) connects to the mask host with the configured
//! SNI and completes a handshake while the raw records the site sends are
//! recorded: the ServerHello's extension order and the encrypted flight after
//! ChangeCipherSpec (EncryptedExtensions … Finished). The fake answer must be
//! one application-data record (tdlib checks exactly that shape), so the
//! record length imitated is the site's one flight record, or — if the site
//! splits its flight into several records — the length those records would
//! have as one (sum minus the per-record overhead of 17 bytes).
//!
//! The certificate is deliberately not verified: this is observation, not
//! trust, and nothing learned is ever sent anywhere. Refreshes run in a
//! background task and swap the handshake config atomically, so they never
//! block handshakes. If the site cannot be reached, or speaks only TLS 1.2,
//! the configured `tls.fake_cert_len` range stays in use.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What one handshake with the site showed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// Lengths of the application-data records of the handshake flight.
    pub flight: Vec<u16>,
    /// supported_versions came before key_share in the ServerHello.
    pub versions_first: bool,
}

impl Observation {
    /// The single-record length that imitates this flight.
    pub fn single_record_len(&self) -> Option<u32> {
        if self.flight.is_empty() {
            return None;
        }
        let sum: u32 = self.flight.iter().map(|l| u32::from(*l)).sum();
        let overhead = 17 * (self.flight.len() as u32 - 1);
        Some(sum.saturating_sub(overhead).clamp(1, 16_384))
    }
}

/// Why a probe of the site failed.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("bad server name")]
    Name,
    #[error("timed out")]
    Timeout,
    #[error("the site closed during the handshake")]
    Closed,
}

#[derive(Debug)]
struct Observe(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Observe {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn client_config() -> Result<Arc<ClientConfig>, ProfileError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Observe(provider)))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// One handshake with `addr` (`host:port`) presenting `sni`.
pub async fn probe(addr: &str, sni: &str, timeout: Duration) -> Result<Observation, ProfileError> {
    tokio::time::timeout(timeout, probe_inner(addr, sni))
        .await
        .map_err(|_| ProfileError::Timeout)?
}

async fn probe_inner(addr: &str, sni: &str) -> Result<Observation, ProfileError> {
    let name = ServerName::try_from(sni.to_owned()).map_err(|_| ProfileError::Name)?;
    let mut conn = ClientConnection::new(client_config()?, name)?;
    let mut sock = TcpStream::connect(addr).await?;
    let mut raw: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while conn.is_handshaking() {
        while conn.wants_write() {
            let mut out = Vec::new();
            conn.write_tls(&mut out)?;
            sock.write_all(&out).await?;
        }
        if !conn.is_handshaking() {
            break;
        }
        let n = sock.read(&mut buf).await?;
        if n == 0 {
            return Err(ProfileError::Closed);
        }
        if raw.len() < 256 * 1024 {
            raw.extend_from_slice(&buf[..n]);
        }
        let mut rd = &buf[..n];
        while !rd.is_empty() {
            conn.read_tls(&mut rd)?;
            conn.process_new_packets()?;
        }
    }
    Ok(parse_flight(&raw))
}

/// Walks the raw server records: ServerHello extension order, then the
/// application-data records after ChangeCipherSpec.
pub fn parse_flight(raw: &[u8]) -> Observation {
    let mut flight = Vec::new();
    let mut versions_first = false;
    let mut pos = 0;
    let mut first = true;
    while pos + 5 <= raw.len() {
        let ty = raw[pos];
        let len = u16::from_be_bytes([raw[pos + 3], raw[pos + 4]]) as usize;
        let Some(body) = raw.get(pos + 5..pos + 5 + len) else {
            break;
        };
        if first && ty == 0x16 {
            versions_first = server_hello_versions_first(body).unwrap_or(false);
        }
        first = false;
        if ty == 0x17 {
            flight.push(len as u16);
        }
        pos += 5 + len;
    }
    Observation {
        flight,
        versions_first,
    }
}

fn server_hello_versions_first(b: &[u8]) -> Option<bool> {
    // type(1) len(3) version(2) random(32) sid_len(1) sid suite(2) comp(1) ext_len(2) exts
    let sid_len = *b.get(38)? as usize;
    let ext = 39 + sid_len + 3 + 2;
    let first_type = u16::from_be_bytes([*b.get(ext)?, *b.get(ext + 1)?]);
    Some(first_type == 0x002b)
}

/// Several probes; the lengths seen (deduplicated order kept) and the extension order.
pub async fn learn(
    addr: &str,
    sni: &str,
    probes: usize,
    timeout: Duration,
) -> Option<(Vec<u32>, bool)> {
    let mut lens = Vec::new();
    let mut versions_first = false;
    for _ in 0..probes {
        match probe(addr, sni, timeout).await {
            Ok(o) => {
                if let Some(l) = o.single_record_len() {
                    lens.push(l);
                    versions_first = o.versions_first;
                }
            }
            Err(e) => tracing::debug!(mask = addr, error = %e, "mask site probe failed"),
        }
    }
    (!lens.is_empty()).then_some((lens, versions_first))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flight_parsing() {
        let mut raw = vec![0x16, 3, 3, 0, 50, 2, 0, 0, 46, 3, 3];
        raw.extend_from_slice(&[0; 32]);
        raw.push(0); // sid len
        raw.extend_from_slice(&[0x13, 0x01, 0, 0, 6, 0x00, 0x2b]);
        raw.resize(5 + 50, 0);
        raw.extend_from_slice(&[0x14, 3, 3, 0, 1, 1]);
        raw.extend_from_slice(&[0x17, 3, 3, 0, 3, 9, 9, 9]);
        raw.extend_from_slice(&[0x17, 3, 3, 0, 20]);
        raw.extend_from_slice(&[0; 20]);
        let o = parse_flight(&raw);
        assert_eq!(o.flight, vec![3, 20]);
        assert!(o.versions_first);
        assert_eq!(o.single_record_len(), Some(6));
        assert_eq!(parse_flight(&raw[..7]).flight, Vec::<u16>::new());
    }
}
