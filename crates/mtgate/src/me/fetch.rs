//! Fetching proxy-secret and proxy-multi.conf over HTTPS (`[me] fetch = true`).
//!
//! One HTTP/1.1 `GET` per file (hyper client over tokio-rustls, ring
//! provider), with a time limit for the whole exchange and a body limit of
//! [`MAX_BODY`]. Only `200 OK` is accepted: redirects are **not** followed (a
//! `3xx` is a failed fetch). A body is checked with the same parsers as a
//! local file before it replaces the last good copy in `state_dir/me/`
//! (temp file + rename), so a failed, refused or broken fetch never replaces
//! a good list; [`super::files::load`] then reads that copy.
//!
//! Trust: without pins, the chain and name are verified against the
//! webpki-roots (Mozilla) roots. With `pins`, the leaf certificate is matched
//! against them (SHA-256 of the whole certificate DER, or of its
//! SubjectPublicKeyInfo); a match is sufficient on its own (no chain or name
//! check, so a pinned self-signed certificate works). Without a match,
//! `pin_mode = "strict"` refuses the connection, `"warn"` logs and counts it
//! and lets the usual webpki-roots verification decide. The handshake
//! signatures are always verified with the provider's algorithms.

use super::files::{check_conf, check_secret, keep_dir, write_atomic, FilesError};
use crate::config::{MeFetch, PinMode};
use base64::Engine;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use mtgate_crypto::sha256;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The largest body accepted (Telegram's files are a few KiB).
pub const MAX_BODY: usize = 1 << 20;

/// One pin: a SHA-256 of the leaf certificate or of its public key.
#[derive(Clone, PartialEq, Eq)]
pub enum Pin {
    /// `cert-sha256:<hex>`: SHA-256 of the certificate's DER.
    Cert([u8; 32]),
    /// `spki-sha256:<base64>` or `sha256/<base64>`: SHA-256 of the DER
    /// SubjectPublicKeyInfo (the HPKP / curl `--pinnedpubkey` value).
    Spki([u8; 32]),
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b64 = base64::engine::general_purpose::STANDARD;
        match self {
            Pin::Cert(h) => write!(f, "cert-sha256:{}", hex::encode(h)),
            Pin::Spki(h) => write!(f, "spki-sha256:{}", b64.encode(h)),
        }
    }
}

impl Pin {
    /// Parses `cert-sha256:<hex>` (colons allowed, as `openssl x509
    /// -fingerprint -sha256` prints), `spki-sha256:<base64>` or `sha256/<base64>`.
    pub fn parse(s: &str) -> Result<Pin, String> {
        let s = s.trim();
        let digest = |v: Vec<u8>| -> Result<[u8; 32], String> {
            v.try_into()
                .map_err(|v: Vec<u8>| format!("`{s}`: {} bytes, want a 32-byte SHA-256", v.len()))
        };
        let b64 = |v: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(v.trim())
                .map_err(|_| format!("`{s}`: not base64"))
        };
        if let Some(h) = s.strip_prefix("cert-sha256:") {
            let h: String = h.chars().filter(|c| *c != ':').collect();
            let v = hex::decode(h.trim()).map_err(|_| format!("`{s}`: not hex"))?;
            Ok(Pin::Cert(digest(v)?))
        } else if let Some(v) = s
            .strip_prefix("spki-sha256:")
            .or_else(|| s.strip_prefix("sha256/"))
        {
            Ok(Pin::Spki(digest(b64(v)?)?))
        } else {
            Err(format!(
                "`{s}`: want cert-sha256:<hex>, spki-sha256:<base64> or sha256/<base64>"
            ))
        }
    }

    /// Whether `cert` (a DER certificate) matches.
    pub fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        match self {
            Pin::Cert(h) => sha256(&[cert.as_ref()])[..] == h[..],
            Pin::Spki(h) => spki(cert).is_some_and(|k| sha256(&[&k])[..] == h[..]),
        }
    }

    /// The pins of `cert`, `(cert-sha256, spki-sha256)`, as the config takes them.
    pub fn of(cert: &CertificateDer<'_>) -> (Pin, Option<Pin>) {
        let c = Pin::Cert(sha256(&[cert.as_ref()]));
        (c, spki(cert).map(|k| Pin::Spki(sha256(&[&k]))))
    }
}

/// The DER SubjectPublicKeyInfo of `cert` (parsed by webpki).
fn spki(cert: &CertificateDer<'_>) -> Option<Vec<u8>> {
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    Some(ee.subject_public_key_info().as_ref().to_vec())
}

/// An `https://host[:port]/path` address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpsUrl {
    /// Without brackets for IPv6.
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written, for the `Host` header.
    pub authority: String,
    /// Starts with `/`.
    pub path: String,
}

impl HttpsUrl {
    /// Parses an `https://` URL (no user info, no fragment).
    pub fn parse(u: &str) -> Result<HttpsUrl, String> {
        let rest = u
            .strip_prefix("https://")
            .ok_or_else(|| format!("`{u}`: want an https:// URL"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') || path.contains('#') {
            return Err(format!("`{u}`: want https://host[:port]/path"));
        }
        let bad_port = || format!("`{u}`: bad port");
        let (host, port) = if let Some(r) = authority.strip_prefix('[') {
            let (h, after) = r
                .split_once(']')
                .ok_or_else(|| format!("`{u}`: bad IPv6 host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad_port())?,
                None if after.is_empty() => 443,
                None => return Err(bad_port()),
            };
            (h, port)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, p.parse().map_err(|_| bad_port())?),
                None => (authority, 443),
            }
        };
        if host.is_empty() || port == 0 {
            return Err(format!("`{u}`: want https://host[:port]/path"));
        }
        Ok(HttpsUrl {
            host: host.to_owned(),
            port,
            authority: authority.to_owned(),
            path: path.to_owned(),
        })
    }
}

/// Why one fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Url(String),
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("HTTP status {0} (redirects are not followed)")]
    Status(u16),
    #[error("body over {MAX_BODY} bytes or unreadable")]
    Body,
    #[error("timed out")]
    Timeout,
    #[error("invalid content: {0}")]
    Invalid(#[from] FilesError),
}

/// The certificate check: pins first, then (unless strict) webpki-roots.
#[derive(Debug)]
struct PinVerifier {
    pins: Vec<Pin>,
    mode: PinMode,
    roots: Arc<WebPkiServerVerifier>,
    provider: Arc<CryptoProvider>,
    mismatches: Arc<AtomicU64>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self.pins.is_empty() {
            if self.pins.iter().any(|p| p.matches(end_entity)) {
                return Ok(ServerCertVerified::assertion());
            }
            self.mismatches.fetch_add(1, Ordering::Relaxed);
            let (cert, key) = Pin::of(end_entity);
            match self.mode {
                PinMode::Strict => {
                    tracing::error!(server = ?server_name, cert = ?cert, spki = ?key, "ME fetch: certificate matches no pin; refused (pin_mode = strict)");
                    return Err(rustls::Error::General(
                        "certificate matches no configured pin".into(),
                    ));
                }
                PinMode::Warn => {
                    tracing::warn!(server = ?server_name, cert = ?cert, spki = ?key, "ME fetch: certificate matches no pin (pin_mode = warn; verifying against the usual roots)");
                }
            }
        }
        self.roots
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What one [`Fetcher::refresh`] did with one file.
#[derive(Debug)]
pub struct Outcome {
    /// `proxy-secret`, `proxy-multi.conf` or `proxy-multi-v6.conf`.
    pub name: &'static str,
    /// `Ok(true)`: a new copy was saved; `Ok(false)`: unchanged.
    pub result: Result<bool, FetchError>,
}

/// Fetches the files of one `[me]` configuration.
pub struct Fetcher {
    cfg: MeFetch,
    tls: tokio_rustls::TlsConnector,
    mismatches: Arc<AtomicU64>,
    failures: AtomicU64,
    /// Unix seconds of the last refresh that got every file; 0: never.
    last_ok: AtomicU64,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher").field("cfg", &self.cfg).finish()
    }
}

impl Fetcher {
    /// A fetcher trusting the webpki-roots (and the pins).
    pub fn new(cfg: &MeFetch) -> Result<Fetcher, rustls::Error> {
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        Self::with_roots(cfg, roots)
    }

    /// A fetcher trusting `roots` instead of webpki-roots (tests, private CAs).
    pub fn with_roots(cfg: &MeFetch, roots: RootCertStore) -> Result<Fetcher, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let mismatches = Arc::new(AtomicU64::new(0));
        let verifier = PinVerifier {
            pins: cfg.pins.clone(),
            mode: cfg.pin_mode,
            roots: webpki,
            provider: provider.clone(),
            mismatches: mismatches.clone(),
        };
        let mut tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Every fetch checks the certificate (and counts a mismatch) anew.
        tls.resumption = rustls::client::Resumption::disabled();
        Ok(Fetcher {
            cfg: cfg.clone(),
            tls: tokio_rustls::TlsConnector::from(Arc::new(tls)),
            mismatches,
            failures: AtomicU64::new(0),
            last_ok: AtomicU64::new(0),
        })
    }

    /// Certificates seen that matched no pin (refused or, in warn mode, let through).
    pub fn pin_mismatches(&self) -> u64 {
        self.mismatches.load(Ordering::Relaxed)
    }

    /// Fetches that failed (network, TLS, status, size or content).
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Unix time of the last refresh in which every file was fetched and valid.
    pub fn last_success(&self) -> Option<u64> {
        Some(self.last_ok.load(Ordering::Relaxed)).filter(|&t| t != 0)
    }

    /// `GET url`: the body of a `200 OK`, at most [`MAX_BODY`] bytes.
    pub async fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        tokio::time::timeout(self.cfg.timeout, self.get_inner(url))
            .await
            .map_err(|_| FetchError::Timeout)?
    }

    async fn get_inner(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let u = HttpsUrl::parse(url).map_err(FetchError::Url)?;
        let name = ServerName::try_from(u.host.clone())
            .map_err(|_| FetchError::Url(format!("`{url}`: bad host name")))?;
        let tcp = tokio::net::TcpStream::connect((u.host.as_str(), u.port)).await?;
        let _ = tcp.set_nodelay(true);
        let tls = self.tls.connect(name, tcp).await?;
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        let driver = tokio::spawn(conn);
        let req = hyper::Request::get(u.path.as_str())
            .header(hyper::header::HOST, u.authority.as_str())
            .header(hyper::header::USER_AGENT, "mtgate")
            .header(hyper::header::ACCEPT, "*/*")
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Url(format!("`{url}`: {e}")))?;
        let res = send.send_request(req).await;
        let out = async {
            let res = res?;
            if res.status() != hyper::StatusCode::OK {
                return Err(FetchError::Status(res.status().as_u16()));
            }
            let body = Limited::new(res.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|_| FetchError::Body)?;
            Ok(body.to_bytes().to_vec())
        }
        .await;
        driver.abort();
        out
    }

    /// Fetches every configured file; each good one that differs from the
    /// copy in `state_dir/me/` replaces it. Failures are logged and leave the
    /// copy alone.
    pub async fn refresh(&self, state_dir: &Path) -> Vec<Outcome> {
        let keep = keep_dir(state_dir);
        let jobs: [(&Option<String>, &'static str, bool); 3] = [
            (&self.cfg.secret_url, "proxy-secret", true),
            (&self.cfg.config_url, "proxy-multi.conf", false),
            (&self.cfg.config_v6_url, "proxy-multi-v6.conf", false),
        ];
        let mut out = Vec::new();
        for (url, name, secret) in jobs {
            let Some(url) = url else { continue };
            let path = keep.join(name);
            let result = async {
                let body = self.get(url).await?;
                let p = Path::new(url.as_str());
                if secret {
                    check_secret(p, body.clone())?;
                } else {
                    check_conf(p, body.clone())?;
                }
                if std::fs::read(&path).ok().as_deref() == Some(&body[..]) {
                    return Ok(false);
                }
                write_atomic(&path, &body)?;
                Ok(true)
            }
            .await;
            match &result {
                Ok(changed) => {
                    tracing::debug!(%url, changed, "ME file fetched")
                }
                Err(e) => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%url, error = %e, "ME file fetch failed; keeping the last good copy");
                }
            }
            out.push(Outcome { name, result });
        }
        if !out.is_empty() && out.iter().all(|o| o.result.is_ok()) {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            self.last_ok.store(now, Ordering::Relaxed);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = HttpsUrl::parse("https://core.telegram.org/getProxySecret").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("core.telegram.org", 443));
        assert_eq!(u.path, "/getProxySecret");
        let u = HttpsUrl::parse("https://[::1]:8443").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 8443, "/")
        );
        assert_eq!(u.authority, "[::1]:8443");
        for bad in [
            "http://x/",
            "https:///a",
            "https://x:0/",
            "https://x:y/",
            "https://u@x/",
            "https://[::1/",
        ] {
            assert!(HttpsUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pins() {
        let h = [0xabu8; 32];
        let b = base64::engine::general_purpose::STANDARD.encode(h);
        assert_eq!(Pin::parse(&format!("sha256/{b}")).unwrap(), Pin::Spki(h));
        assert_eq!(
            Pin::parse(&format!("spki-sha256:{b}")).unwrap(),
            Pin::Spki(h)
        );
        let hx = hex::encode(h);
        assert_eq!(
            Pin::parse(&format!("cert-sha256:{hx}")).unwrap(),
            Pin::Cert(h)
        );
        let colons: Vec<String> = h.iter().map(|x| format!("{x:02X}")).collect();
        assert_eq!(
            Pin::parse(&format!("cert-sha256:{}", colons.join(":"))).unwrap(),
            Pin::Cert(h)
        );
        assert!(Pin::parse("sha256/AAAA").is_err());
        assert!(Pin::parse("md5:00").is_err());
        assert_eq!(format!("{:?}", Pin::Spki(h)), format!("spki-sha256:{b}"));
    }
}
