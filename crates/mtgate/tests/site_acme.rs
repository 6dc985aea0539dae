//! ACME for the own site (issue 25) against a real ACME server: Debian's
//! `pebble` (RFC 8555 test CA) with `pebble-challtestsrv` as its DNS (every
//! name → 127.0.0.1). mtgate obtains a certificate over TLS-ALPN-01 on its
//! client port and over HTTP-01 on its plain HTTP listener, serves it, keeps
//! renewing it while it is due, and when pebble is gone says why and keeps
//! serving the certificate it has.

mod common;

use common::{Proxy, KEY_HEX};
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HOST: &str = "site.test";

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn bin(name: &str) -> PathBuf {
    let p = Path::new("/usr/bin").join(name);
    assert!(
        p.exists(),
        "{name} is needed (Debian package `pebble`; scripts/test.sh installs it)"
    );
    p
}

async fn wait_port(port: u16) {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {port}");
}

/// pebble and its DNS, validating challenges on `tls_port` / `http_port`.
struct Pebble {
    _dns: Killed,
    _ca: Killed,
    _dir: tempfile::TempDir,
}

/// pebble's API and management ports, chosen before mtgate starts (its
/// config names the directory URL).
struct Ports {
    api: u16,
    mgmt: u16,
}

impl Ports {
    fn new() -> Ports {
        Ports {
            api: free_port(),
            mgmt: free_port(),
        }
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.api)
    }
}

impl Pebble {
    /// pebble on `ports`, validating on mtgate's own (already bound) ports.
    async fn start(ports: &Ports, dir: tempfile::TempDir, tls_port: u16, http_port: u16) -> Pebble {
        let (dns_port, dns_mgmt) = (free_port(), free_port());
        let dns = Killed(
            Command::new(bin("pebble-challtestsrv"))
                .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-management", &format!("127.0.0.1:{dns_mgmt}")])
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("pebble-challtestsrv"),
        );
        let (api, mgmt) = (ports.api, ports.mgmt);
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{api}"),
            "managementListenAddress": format!("127.0.0.1:{mgmt}"),
            "certificate": dir.path().join("api.pem"),
            "privateKey": dir.path().join("api.key"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }});
        std::fs::write(dir.path().join("pebble.json"), config.to_string()).unwrap();
        let ca = Killed(
            Command::new(bin("pebble"))
                .arg("-config")
                .arg(dir.path().join("pebble.json"))
                .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("pebble"),
        );
        wait_port(dns_mgmt).await;
        wait_port(api).await;
        Pebble {
            _dns: dns,
            _ca: ca,
            _dir: dir,
        }
    }
}

/// pebble's own HTTPS certificate (trusted by mtgate through `ca_file`),
/// in a directory of its own.
fn pebble_tls() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let made =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    std::fs::write(dir.path().join("api.pem"), made.cert.pem()).unwrap();
    std::fs::write(dir.path().join("api.key"), made.key_pair.serialize_pem()).unwrap();
    let ca = dir.path().join("api.pem");
    (dir, ca)
}

/// The certificate the site serves on `addr` for HOST (not verified: we look at it).
async fn served_cert(addr: SocketAddr) -> Option<CertificateDer<'static>> {
    #[derive(Debug)]
    struct Any;
    impl rustls::client::danger::ServerCertVerifier for Any {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Any))
        .with_no_client_auth();
    let s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(ServerName::try_from(HOST).ok()?, s)
        .await
        .ok()?;
    tls.get_ref().1.peer_certificates()?.first().cloned()
}

fn issued_by_pebble(der: &CertificateDer<'_>) -> bool {
    mtgate::x509::cert_info(der.as_ref())
        .and_then(|i| i.issuer)
        .is_some_and(|i| i.contains("Pebble"))
}

/// mtgate on free ports, its ACME directory at pebble's `ports` (pebble
/// starts after it, validating on the ports mtgate got).
async fn start(ports: &Ports, ca: &Path, acme: &str) -> Proxy {
    let toml = format!(
        "[site]\nhosts = [\"{HOST}\"]\n\
         [site.acme]\nenabled = true\ndirectory = \"{}\"\nca_file = \"{}\"\nemail = \"ops@site.test\"\nretry = \"300ms\"\n{acme}\
         [users.alice]\nsecret = \"{KEY_HEX}\"\nmodes = [\"ee\"]\n",
        ports.directory(),
        ca.display(),
    );
    Proxy::start_full("127.0.0.1:0", "", &toml, &["127.0.0.1:1".parse().unwrap()]).await
}

async fn until_issued(proxy: &Proxy, want: u64, limit: Duration) -> CertificateDer<'static> {
    let site = proxy.runtime.site.as_ref().expect("site");
    let t0 = Instant::now();
    while site.certs().renewal().issued < want {
        assert!(
            t0.elapsed() < limit,
            "no certificate in {limit:?}: {:?}",
            site.certs().renewal()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    served_cert(proxy.addr).await.expect("served")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_on_the_client_port_then_renewal_then_a_dead_ca() {
    let ports = Ports::new();
    let (dir, ca) = pebble_tls();
    // Due again at once (pebble's certificates live 5 years): every
    // issuance is followed by a renewal, `retry` apart.
    let proxy = start(&ports, &ca, "renew_before = \"36500d\"\n").await;
    let before = served_cert(proxy.addr).await.expect("served");
    assert!(!issued_by_pebble(&before), "self-signed until issued");
    let pebble = Pebble::start(&ports, dir, proxy.addr.port(), free_port()).await;
    let first = until_issued(&proxy, 1, Duration::from_secs(30)).await;
    assert!(issued_by_pebble(&first));
    let names = mtgate::web::certs::Loaded::from_pem(
        &std::fs::read(proxy.state.path().join("acme/cert.pem")).unwrap(),
        &std::fs::read(proxy.state.path().join("acme/key.pem")).unwrap(),
        "stored",
    )
    .unwrap()
    .names;
    assert_eq!(names, vec![HOST.to_string()]);
    for f in ["acme/cert.pem", "acme/key.pem", "acme/account.json"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(proxy.state.path().join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    // Renewed: a new certificate is served.
    let second = until_issued(&proxy, 2, Duration::from_secs(30)).await;
    assert!(issued_by_pebble(&second));
    assert_ne!(first, second, "renewed");
    // The CA goes away mid-renewal: a plain error, the last certificate stays.
    // (Attempts before pebble was up failed already; count from here.)
    let site = proxy.runtime.site.as_ref().unwrap();
    let failed_before = site.certs().renewal().failures;
    drop(pebble);
    let t0 = Instant::now();
    while site.certs().renewal().failures == failed_before {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "no failure recorded"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = site.certs().renewal();
    let why = r.last_error.unwrap_or_default();
    assert!(why.starts_with("ACME:"), "{why}");
    let now = served_cert(proxy.addr).await.expect("still served");
    assert!(
        issued_by_pebble(&now),
        "the obtained certificate stays in use"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_on_the_plain_http_listener() {
    let ports = Ports::new();
    let (dir, ca) = pebble_tls();
    let proxy = start(
        &ports,
        &ca,
        "challenge = \"http-01\"\nhttp_listen = \"127.0.0.1:0\"\n",
    )
    .await;
    let site = proxy.runtime.site.clone().expect("site");
    let http = site.http_addr().expect("plain HTTP listener").port();
    let _pebble = Pebble::start(&ports, dir, proxy.addr.port(), http).await;
    let cert = until_issued(&proxy, 1, Duration::from_secs(30)).await;
    assert!(issued_by_pebble(&cert));
    // The plain listener sends everything else to HTTPS.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", http))
        .await
        .unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /page?x=1 HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).to_lowercase();
    assert!(answer.starts_with("http/1.1 301"), "{answer}");
    assert!(
        answer.contains("location: https://site.test/page?x=1"),
        "{answer}"
    );
    proxy.stop().await;
}
