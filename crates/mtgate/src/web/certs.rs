//! The own site's certificates: chosen by SNI among those loaded, from PEM
//! files (reloaded when they change on disk or on a reload, without
//! touching open connections), or a self-signed one kept in the state
//! directory when nothing else is configured. ACME (a later room) puts its
//! certificates here the same way.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

/// Why a certificate could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}: no certificate in it")]
    NoCert(String),
    #[error("{0}: no private key in it (PKCS#8, PKCS#1 or SEC1 PEM)")]
    NoKey(String),
    #[error("{path}: the key does not fit: {msg}")]
    BadKey { path: String, msg: String },
    #[error("{path}: the certificate cannot be read: {msg}")]
    BadCert { path: String, msg: String },
    #[error("generating a certificate: {0}")]
    Generate(String),
}

/// One loaded certificate: the key, the names it is valid for, its expiry.
#[derive(Debug)]
pub struct Loaded {
    pub key: Arc<CertifiedKey>,
    /// DNS names of the leaf (SAN entries; `*.example.net` wildcards).
    pub names: Vec<String>,
    /// The leaf's notAfter, Unix seconds.
    pub not_after: i64,
    /// The leaf's issuer is its subject (made here, not by a CA).
    pub self_signed: bool,
}

impl Loaded {
    /// From a PEM chain (leaf first) and a PEM private key.
    pub fn from_pem(chain: &[u8], key: &[u8], what: &str) -> Result<Self, CertError> {
        let certs: Vec<CertificateDer<'static>> = rustls_pemfile_certs(chain);
        if certs.is_empty() {
            return Err(CertError::NoCert(what.into()));
        }
        let key = pem_key(key).ok_or_else(|| CertError::NoKey(what.into()))?;
        let provider = rustls::crypto::ring::default_provider();
        let signing =
            provider
                .key_provider
                .load_private_key(key)
                .map_err(|e| CertError::BadKey {
                    path: what.into(),
                    msg: e.to_string(),
                })?;
        let ck = CertifiedKey::new(certs, signing);
        ck.keys_match().map_err(|e| CertError::BadKey {
            path: what.into(),
            msg: e.to_string(),
        })?;
        let (names, not_after, self_signed) =
            leaf_facts(&ck.cert[0]).map_err(|msg| CertError::BadCert {
                path: what.into(),
                msg,
            })?;
        Ok(Self {
            key: Arc::new(ck),
            names,
            not_after,
            self_signed,
        })
    }

    /// Whether this certificate is valid for `host` (exact, or one wildcard label).
    pub fn covers(&self, host: &str) -> bool {
        self.names.iter().any(|n| name_matches(n, host))
    }
}

fn name_matches(pattern: &str, host: &str) -> bool {
    let (p, h) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    match p.strip_prefix("*.") {
        Some(rest) => h
            .split_once('.')
            .is_some_and(|(first, tail)| !first.is_empty() && tail == rest),
        None => p == h,
    }
}

/// DER certificates of a PEM text.
fn rustls_pemfile_certs(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

/// The first private key of a PEM text.
fn pem_key(pem: &[u8]) -> Option<PrivateKeyDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    PrivateKeyDer::from_pem_slice(pem).ok()
}

/// The leaf's DNS names, notAfter and whether it is self-signed.
fn leaf_facts(der: &CertificateDer<'_>) -> Result<(Vec<String>, i64, bool), String> {
    let cert = webpki::EndEntityCert::try_from(der).map_err(|e| format!("{e:?}"))?;
    let names = cert
        .valid_dns_names()
        .map(|n| n.to_ascii_lowercase())
        .collect();
    let info = crate::x509::cert_info(der.as_ref()).ok_or("not a DER certificate")?;
    Ok((names, info.not_after.unwrap_or(0), info.self_issued()))
}

/// Where the site's certificates come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// PEM chain and key files.
    Files { cert: PathBuf, key: PathBuf },
    /// Made here for the site hosts, kept in the state directory.
    SelfSigned { dir: PathBuf },
}

/// The site's certificates, resolved by SNI. Shared with the TLS config;
/// replaced whole on a change.
#[derive(Debug)]
pub struct CertStore {
    loaded: RwLock<Arc<Vec<Loaded>>>,
    /// The files' modification times when they were last read.
    stamp: RwLock<Option<(SystemTime, SystemTime)>>,
    /// TLS-ALPN-01 challenge certificates by host, while an ACME order runs.
    challenges: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// How ACME renewals went.
    renewal: Mutex<Renewal>,
}

/// ACME's record, for metrics and logs.
#[derive(Clone, Debug, Default)]
pub struct Renewal {
    /// Failed attempts since start.
    pub failures: u64,
    /// Certificates obtained since start.
    pub issued: u64,
    /// The last failure's words, cleared by a success.
    pub last_error: Option<String>,
}

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

impl CertStore {
    pub fn new(first: Vec<Loaded>) -> Arc<Self> {
        Arc::new(Self {
            loaded: RwLock::new(Arc::new(first)),
            stamp: RwLock::new(None),
            challenges: Mutex::default(),
            renewal: Mutex::default(),
        })
    }

    /// Loads `source` for `hosts` and makes it current. On error the
    /// current certificates stay.
    pub fn load(&self, source: &Source, hosts: &[String]) -> Result<(), CertError> {
        let r = read_source(source, hosts);
        if let Source::Files { cert, key } = source {
            // Stamped whatever the outcome: files that fail are tried again
            // only when they change again (as a half-written pair does).
            if let Ok(mut s) = self.stamp.write() {
                *s = mtime(cert).zip(mtime(key));
            }
        }
        self.set(vec![r?]);
        Ok(())
    }

    /// Replaces the certificates (connections already open keep theirs).
    pub fn set(&self, certs: Vec<Loaded>) {
        if let Ok(mut l) = self.loaded.write() {
            *l = Arc::new(certs);
        }
    }

    /// Whether `source`'s files changed on disk since they were read.
    pub fn changed(&self, source: &Source) -> bool {
        let Source::Files { cert, key } = source else {
            return false;
        };
        let now = mtime(cert).zip(mtime(key));
        let then = self.stamp.read().ok().and_then(|s| *s);
        now.is_some() && now != then
    }

    /// The current certificates.
    pub fn current(&self) -> Arc<Vec<Loaded>> {
        self.loaded
            .read()
            .map(|l| l.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Installs (or, with `None`, removes) the TLS-ALPN-01 certificate for `host`.
    pub fn set_challenge(&self, host: &str, cert: Option<Arc<CertifiedKey>>) {
        let mut c = self.challenges.lock().unwrap_or_else(|p| p.into_inner());
        match cert {
            Some(k) => c.insert(host.to_ascii_lowercase(), k),
            None => c.remove(&host.to_ascii_lowercase()),
        };
    }

    pub fn renewal_ok(&self) {
        let mut r = self.renewal.lock().unwrap_or_else(|p| p.into_inner());
        r.issued += 1;
        r.last_error = None;
    }

    pub fn renewal_failed(&self, why: &str) {
        let mut r = self.renewal.lock().unwrap_or_else(|p| p.into_inner());
        r.failures += 1;
        r.last_error = Some(why.to_owned());
    }

    /// How ACME renewals went so far.
    pub fn renewal(&self) -> Renewal {
        self.renewal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The earliest notAfter of the current certificates (Unix seconds).
    pub fn earliest_expiry(&self) -> Option<i64> {
        self.current().iter().map(|l| l.not_after).min()
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // An ACME server validating TLS-ALPN-01 gets the challenge
        // certificate, and only it does (nothing without an order running).
        if hello
            .alpn()
            .is_some_and(|mut a| a.any(|p| p == ACME_TLS_ALPN))
        {
            let sni = hello.server_name()?.to_ascii_lowercase();
            let c = self.challenges.lock().unwrap_or_else(|p| p.into_inner());
            return c.get(&sni).cloned();
        }
        let certs = self.current();
        // The certificate for the name asked for; without a name, or for an
        // unknown one, the first (a web server's default site).
        hello
            .server_name()
            .and_then(|sni| certs.iter().find(|c| c.covers(sni)))
            .or_else(|| certs.first())
            .map(|c| c.key.clone())
    }
}

/// The certificate `source` gives for `hosts`, without installing it.
pub fn read_source(source: &Source, hosts: &[String]) -> Result<Loaded, CertError> {
    match source {
        Source::Files { cert, key } => {
            let chain = read(cert)?;
            let k = read(key)?;
            Loaded::from_pem(&chain, &k, &cert.display().to_string())
        }
        Source::SelfSigned { dir } => self_signed(dir, hosts),
    }
}

fn read(p: &Path) -> Result<Vec<u8>, CertError> {
    std::fs::read(p).map_err(|source| CertError::Read {
        path: p.display().to_string(),
        source,
    })
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// A self-signed certificate for `hosts`, made once and kept in `dir`
/// (`site-selfsigned.pem`, `site-selfsigned.key`, mode 0600) so it stays
/// the same across restarts; made anew when the hosts changed.
fn self_signed(dir: &Path, hosts: &[String]) -> Result<Loaded, CertError> {
    let (cp, kp) = (
        dir.join("site-selfsigned.pem"),
        dir.join("site-selfsigned.key"),
    );
    if let (Ok(c), Ok(k)) = (std::fs::read(&cp), std::fs::read(&kp)) {
        if let Ok(l) = Loaded::from_pem(&c, &k, &cp.display().to_string()) {
            if hosts.iter().all(|h| l.covers(h)) {
                return Ok(l);
            }
        }
    }
    let made = rcgen::generate_simple_self_signed(hosts.to_vec())
        .map_err(|e| CertError::Generate(e.to_string()))?;
    let (cert, key) = (made.cert.pem(), made.key_pair.serialize_pem());
    if std::fs::create_dir_all(dir).is_ok() {
        let _ = crate::state::write_atomic(&cp, cert.as_bytes());
        let _ = crate::state::write_atomic(&kp, key.as_bytes());
    }
    Loaded::from_pem(cert.as_bytes(), key.as_bytes(), "self-signed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_wildcards() {
        assert!(name_matches("a.example", "A.example"));
        assert!(name_matches("*.example", "www.example"));
        assert!(!name_matches("*.example", "example"));
        assert!(!name_matches("*.example", "a.b.example"));
        assert!(!name_matches("b.example", "a.example"));
    }

    #[test]
    fn self_signed_is_kept_and_made_anew_for_other_hosts() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["site.test".to_string()];
        let a = self_signed(dir.path(), &hosts).unwrap();
        assert!(a.covers("site.test") && a.self_signed && a.not_after > 0);
        let b = self_signed(dir.path(), &hosts).unwrap();
        assert_eq!(a.key.cert, b.key.cert, "kept across restarts");
        let c = self_signed(dir.path(), &["other.test".to_string()]).unwrap();
        assert!(c.covers("other.test") && !c.covers("site.test"));
    }

    #[test]
    fn bad_pem_says_what_is_wrong() {
        let made = rcgen::generate_simple_self_signed(vec!["x.test".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["x.test".into()]).unwrap();
        let (c, k) = (made.cert.pem(), made.key_pair.serialize_pem());
        assert!(Loaded::from_pem(c.as_bytes(), k.as_bytes(), "f").is_ok());
        let e = Loaded::from_pem(b"junk", k.as_bytes(), "f").unwrap_err();
        assert!(e.to_string().contains("no certificate"), "{e}");
        let e = Loaded::from_pem(c.as_bytes(), b"junk", "f").unwrap_err();
        assert!(e.to_string().contains("no private key"), "{e}");
        let wrong = other.key_pair.serialize_pem();
        let e = Loaded::from_pem(c.as_bytes(), wrong.as_bytes(), "f").unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
    }
}
