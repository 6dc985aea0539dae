//! The admin listener over TLS (rustls), and what plain HTTP may carry.
//!
//! With `[admin] tls_cert` and `tls_key` (PEM files) the admin listener
//! speaks only HTTPS. Without them it is plain HTTP, and then a request that
//! carries a credential (the admin API, the console, `POST /reload`) is
//! answered only from loopback: a token or a secret never crosses a network
//! in clear. `/metrics` and `/health/*` stay open over plain HTTP wherever
//! the listener is bound (the kubelet and Prometheus probe them).

use hyper::{Method, Request};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

/// Why the admin TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AdminTlsError {
    #[error("admin.tls_cert {0}: {1}")]
    Cert(String, String),
    #[error("admin.tls_key {0}: {1}")]
    Key(String, String),
    #[error("admin TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The acceptor for the certificate chain `cert` and private key `key`
/// (PEM files), HTTP/1.1 only.
pub fn acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, AdminTlsError> {
    let c = |e: String| AdminTlsError::Cert(cert.display().to_string(), e);
    let pem = std::fs::read(cert).map_err(|e| c(e.to_string()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| c(e.to_string()))?;
    if chain.is_empty() {
        return Err(c("no certificate in the file".into()));
    }
    let k = |e: String| AdminTlsError::Key(key.display().to_string(), e);
    let pem = zeroize::Zeroizing::new(std::fs::read(key).map_err(|e| k(e.to_string()))?);
    let private = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| k(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, private)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

/// Whether `req` carries a credential: the admin API, the console, or
/// `POST /reload`.
pub fn credentialed<B>(req: &Request<B>) -> bool {
    let path = req.uri().path();
    path.starts_with("/api/")
        || path == "/console"
        || path.starts_with("/console/")
        || (req.method() == Method::POST && path == "/reload")
}

/// Whether a request from `peer` over plain HTTP (`secure` false) must be
/// refused: it carries a credential and does not come from loopback.
pub fn refused<B>(req: &Request<B>, peer: IpAddr, secure: bool) -> bool {
    let loopback = match peer {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
        IpAddr::V4(v4) => v4.is_loopback(),
    };
    !secure && !loopback && credentialed(req)
}

/// The answer to a refused request.
pub const REFUSAL: &str = "{\"error\": \"the admin API, the console and POST /reload take \
credentials over TLS only, or from loopback: set admin.tls_cert and admin.tls_key\"}\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, path: &str) -> Request<()> {
        Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .expect("request")
    }

    #[test]
    fn only_credentials_from_afar_over_plain_http_are_refused() {
        let far: IpAddr = "203.0.113.9".parse().unwrap();
        let near: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        for p in ["/api/v1/users", "/console", "/console/login"] {
            assert!(refused(&req(Method::GET, p), far, false), "{p}");
            assert!(!refused(&req(Method::GET, p), far, true), "{p} over TLS");
            assert!(
                !refused(&req(Method::GET, p), near, false),
                "{p} from loopback"
            );
            assert!(
                !refused(&req(Method::GET, p), mapped, false),
                "{p} from ::ffff:127.0.0.1"
            );
        }
        assert!(refused(&req(Method::POST, "/reload"), far, false));
        for p in ["/metrics", "/health/ready", "/consoles", "/reload"] {
            assert!(!refused(&req(Method::GET, p), far, false), "{p}");
        }
    }

    fn error(cert: &Path, key: &Path) -> String {
        match acceptor(cert, key) {
            Ok(_) => panic!("{} and {} were taken", cert.display(), key.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = error(&missing, &missing);
        assert!(e.starts_with("admin.tls_cert "), "{e}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a pem").unwrap();
        let e = error(&junk, &junk);
        assert!(e.contains("no certificate"), "{e}");
        let ck = rcgen::generate_simple_self_signed(vec!["admin.test".into()]).unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        let e = error(&cert, &junk);
        assert!(e.starts_with("admin.tls_key "), "{e}");
        let key = dir.path().join("key.pem");
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        assert!(acceptor(&cert, &key).is_ok());
    }
}
