//! The doctor's mask-host checks: a real TLS handshake (rustls) with the first
//! domain as SNI, the certificate against webpki-roots (plus `--mask-ca`), an
//! HTTP `HEAD /` on the same connection for the site's `Date:` header, and
//! whether the domain resolves to this server's public address.

use super::system::{format_date, parse_http_date, unix_now};
use super::{Check, DoctorOpts};
use crate::config::Config;
use crate::x509::cert_info;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most bytes of the HTTP answer read while looking for `Date:`.
const MAX_HEAD: usize = 16 * 1024;

/// What the mask checks found.
pub struct MaskResults {
    pub checks: Vec<Check>,
    /// `(site clock from Date:, local clock then)`, Unix seconds.
    pub date: Option<(i64, i64)>,
}

/// Why the mask site could not be reached over TLS.
#[derive(Debug, thiserror::Error)]
pub enum MaskError {
    #[error("TCP connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("`{0}` is not a valid TLS server name")]
    Name(String),
    #[error("TLS set-up: {0}")]
    Setup(String),
}

/// webpki's verdict on the certificate, filled in during the handshake.
type Verdict = Arc<Mutex<Option<Result<(), String>>>>;

/// Accepts any certificate but remembers what webpki thought of it, so an
/// untrusted site is reported (Warn) and still probed for version and clock.
#[derive(Debug)]
struct Recording {
    inner: Arc<WebPkiServerVerifier>,
    verdict: Verdict,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let r = self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
            .map(|_| ())
            .map_err(|e| e.to_string());
        *self.verdict.lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What one TLS visit to the mask site showed.
#[derive(Debug)]
pub struct Visit {
    pub version: String,
    pub took: Duration,
    /// webpki's verdict for the SNI.
    pub verdict: Result<(), String>,
    pub subject: Option<String>,
    pub issuer: Option<String>,
    pub not_after: Option<i64>,
    /// `(Date:, local)` in Unix seconds.
    pub date: Option<(i64, i64)>,
}

fn tls_config(
    extra_ca: &[CertificateDer<'static>],
) -> Result<(Arc<ClientConfig>, Verdict), MaskError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    for c in extra_ca {
        roots
            .add(c.clone())
            .map_err(|e| MaskError::Setup(format!("--mask-ca: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| MaskError::Setup(e.to_string()))?;
    let verdict: Verdict = Arc::new(Mutex::new(None));
    let cfg = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MaskError::Setup(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Recording {
            inner,
            verdict: verdict.clone(),
        }))
        .with_no_client_auth();
    Ok((Arc::new(cfg), verdict))
}

/// Connects to `addr` (`host:port`) with `sni`, completes TLS, asks `HEAD /`.
pub async fn visit(
    addr: &str,
    sni: &str,
    extra_ca: &[CertificateDer<'static>],
    timeout: Duration,
) -> Result<Visit, MaskError> {
    let started = Instant::now();
    let name = ServerName::try_from(sni.to_owned()).map_err(|_| MaskError::Name(sni.into()))?;
    let (cfg, verdict) = tls_config(extra_ca)?;
    let connector = tokio_rustls::TlsConnector::from(cfg);
    let handshake = async {
        let tcp = TcpStream::connect(addr).await.map_err(MaskError::Connect)?;
        let _ = tcp.set_nodelay(true);
        connector.connect(name, tcp).await.map_err(MaskError::Tls)
    };
    let mut tls = tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| MaskError::Timeout(timeout))??;
    let took = started.elapsed();
    let (version, certs) = {
        let (_, conn) = tls.get_ref();
        let v = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_string(),
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_string(),
            Some(v) => format!("{v:?}"),
            None => "TLS".to_string(),
        };
        let certs: Vec<Vec<u8>> = conn
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| c.as_ref().to_vec())
            .collect();
        (v, certs)
    };
    let info = certs.first().map(Vec::as_slice).and_then(cert_info);
    let verdict = verdict
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(|| Err("no certificate was checked".into()));
    // The Date: header, on the same connection; any failure here only loses the clock source.
    let left = timeout.saturating_sub(started.elapsed());
    let date = tokio::time::timeout(left, http_date(&mut tls, sni))
        .await
        .ok()
        .flatten();
    let (subject, issuer, not_after) = match info {
        Some(i) => (i.subject, i.issuer, i.not_after),
        None => (None, None, None),
    };
    Ok(Visit {
        version,
        took,
        verdict,
        subject,
        issuer,
        not_after,
        date,
    })
}

async fn http_date<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    tls: &mut S,
    host: &str,
) -> Option<(i64, i64)> {
    let req = format!(
        "HEAD / HTTP/1.1\r\nHost: {host}\r\nUser-Agent: mtgate-doctor\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await.ok()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        let n = tls.read(&mut buf).await.ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.len() >= MAX_HEAD {
            break;
        }
    }
    let local = unix_now();
    let text = String::from_utf8_lossy(&head);
    let end = text.find("\r\n\r\n").unwrap_or(text.len());
    text[..end].lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("date")
            .then(|| parse_http_date(v.trim()))
            .flatten()
            .map(|t| (t, local))
    })
}

/// Resolves `domain` with a deadline; `Err` on failure or timeout.
pub(super) async fn resolve(domain: &str, timeout: Duration) -> Result<Vec<IpAddr>, String> {
    match tokio::time::timeout(timeout, tokio::net::lookup_host((domain, 443))).await {
        Err(_) => Err(format!("DNS lookup timed out after {timeout:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(it)) => {
            let mut v: Vec<IpAddr> = Vec::new();
            for a in it {
                let ip = unmap(a.ip());
                if !v.contains(&ip) {
                    v.push(ip);
                }
            }
            Ok(v)
        }
    }
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn list(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The mask host (TLS, certificate) and the domain's DNS, run together.
pub async fn check(cfg: &Config, opts: &DoctorOpts, public_ip: Option<IpAddr>) -> MaskResults {
    let domain = cfg.domains.first().cloned().unwrap_or_default();
    let dns_timeout = opts.timeout.min(Duration::from_secs(5));
    let learn = cfg.fronting && cfg.learn_profile;
    let (visit, dns, profile) = tokio::join!(
        visit(&cfg.mask_host, &domain, &opts.mask_ca, opts.timeout),
        resolve(&domain, dns_timeout),
        async {
            if learn {
                crate::profile::learn(&cfg.mask_host, &domain, 2, opts.timeout).await
            } else {
                None
            }
        }
    );
    let mut checks = Vec::new();
    let mut date = None;
    let host = &cfg.mask_host;
    match visit {
        Ok(v) => {
            date = v.date;
            checks.push(Check::ok(
                "mask host",
                format!(
                    "{host}: {} with SNI {domain} in {}{}",
                    v.version,
                    super::ms(v.took),
                    if v.date.is_some() {
                        ", HTTP Date: seen"
                    } else {
                        ""
                    }
                ),
            ));
            checks.push(cert_check(&v, &domain));
        }
        Err(e) => {
            let detail = format!("{host}: {e}");
            let fix = format!(
                "connections that are not clients are forwarded to {host}; make it reachable from this server over TCP+TLS, or point tls.mask_host at a live HTTPS site serving {domain}"
            );
            checks.push(if cfg.fronting {
                Check::fail("mask host", detail, fix)
            } else {
                Check::warn("mask host", format!("{detail} (fronting is off)"), fix)
            });
        }
    }
    checks.push(profile_check(cfg, &domain, learn, profile));
    checks.push(dns_check(&domain, dns, public_ip));
    MaskResults { checks, date }
}

/// Whether the site's TLS answer can be learned (what `run` imitates in the
/// fake ServerHello; it retries with back-off until it is learned).
fn profile_check(
    cfg: &Config,
    domain: &str,
    learn: bool,
    profile: Option<(Vec<u32>, bool)>,
) -> Check {
    let name = "mask profile";
    let host = &cfg.mask_host;
    if !learn {
        return Check::ok(
            name,
            "not learned (tls.learn_profile = false or fronting off): the fake ServerHello uses tls.fake_cert_len",
        );
    }
    match profile {
        Some((lens, _)) => Check::ok(
            name,
            format!("learned from {host}: encrypted flight of {lens:?} bytes; the fake ServerHello imitates it"),
        ),
        None => Check::warn(
            name,
            format!("cannot learn {host}'s TLS 1.3 answer (unreachable, or TLS 1.2 only): the fake ServerHello uses tls.fake_cert_len until it can; mtgate run retries with back-off"),
            format!("point tls.mask_host at a reachable HTTPS site with TLS 1.3 serving {domain}"),
        ),
    }
}

fn cert_check(v: &Visit, domain: &str) -> Check {
    let now = unix_now();
    let who = format!(
        "subject {}, issuer {}",
        v.subject.as_deref().unwrap_or("?"),
        v.issuer.as_deref().unwrap_or("?")
    );
    let expiry = v
        .not_after
        .map(|t| format!(", expires {} ({} days)", format_date(t), (t - now) / 86_400))
        .unwrap_or_default();
    match &v.verdict {
        Ok(()) => {
            if let Some(t) = v.not_after.filter(|t| *t - now < 14 * 86_400) {
                return Check::warn(
                    "mask certificate",
                    format!("valid for {domain} but expires {}: {who}", format_date(t)),
                    "the mask site's certificate expires soon; renew it (or choose another mask site)",
                );
            }
            Check::ok(
                "mask certificate",
                format!("valid for {domain}: {who}{expiry}"),
            )
        }
        Err(e) => Check::warn(
            "mask certificate",
            format!("does not verify for {domain}: {e}; {who}{expiry}"),
            format!("a censor probing this server sees this certificate; use a mask site with a valid public certificate for {domain} (or pass --mask-ca PEM for a private CA)"),
        ),
    }
}

pub(super) fn dns_check(
    domain: &str,
    dns: Result<Vec<IpAddr>, String>,
    public_ip: Option<IpAddr>,
) -> Check {
    let name = "mask dns";
    match (dns, public_ip.map(unmap)) {
        (Err(e), ip) => Check::warn(
            name,
            format!("cannot resolve {domain}: {e}"),
            match ip {
                Some(ip) => format!("point DNS of {domain} at {ip} so the SNI matches this server"),
                None => format!("give {domain} an A/AAAA record pointing at this server"),
            },
        ),
        (Ok(ips), None) => Check::ok(
            name,
            format!(
                "{domain} resolves to {} (public address unknown: set server.public_host to an IP or pass --public-ip to compare)",
                list(&ips)
            ),
        ),
        (Ok(ips), Some(ip)) if ips.contains(&ip) => Check::ok(
            name,
            format!("{domain} resolves to {} (this server: {ip})", list(&ips)),
        ),
        (Ok(ips), Some(ip)) => Check::warn(
            name,
            format!(
                "{domain} resolves to {}, not to this server's public address {ip}",
                list(&ips)
            ),
            format!("point DNS of {domain} at {ip} so the SNI matches this server"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_verdicts() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let other: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(
            dns_check("a.b", Ok(vec![lo]), Some(lo)).status,
            super::super::Status::Ok
        );
        let w = dns_check("a.b", Ok(vec![lo]), Some(other));
        assert_eq!(w.status, super::super::Status::Warn);
        assert_eq!(
            w.fix.as_deref(),
            Some("point DNS of a.b at 192.0.2.1 so the SNI matches this server")
        );
        assert_eq!(
            dns_check("a.b", Err("nx".into()), None).status,
            super::super::Status::Warn
        );
    }
}
