//! HTTPS fetching of the ME files (`[me] fetch = true`) against a local
//! HTTPS server (tokio-rustls, an rcgen CA and leaf) on loopback: pinned
//! fetches are saved and used, a wrong pin is refused (strict) or warned
//! about (warn), and a refused, broken, redirected, oversized or failed fetch
//! never replaces the last good copy. Nothing here leaves the machine.

use mtgate::config::{Config, MeConfig, Overrides};
use mtgate::me::fetch::{FetchError, Fetcher, Pin};
use mtgate::me::files;
use rustls::pki_types::CertificateDer;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONF: &str = "default 2;\nproxy_for 2 127.0.0.1:1;\nproxy_for 4 127.0.0.1:2;\n";
const CONF6: &str = "proxy_for 2 [::1]:3;\n";

/// `(status, body)` per path.
type Routes = Arc<Mutex<HashMap<String, (u16, Vec<u8>)>>>;

struct Site {
    addr: SocketAddr,
    routes: Routes,
    ca: CertificateDer<'static>,
    leaf: CertificateDer<'static>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Site {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Site {
    async fn start() -> Site {
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("leaf")
            .signed_by(&leaf_key, &ca, &ca_key)
            .expect("leaf cert");
        let leaf_der = CertificateDer::from(leaf.der().to_vec());
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![leaf_der.clone()], key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let routes: Routes = Arc::default();
        let r = routes.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let routes = r.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match tls.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let text = String::from_utf8_lossy(&req);
                    let path = text.split(' ').nth(1).unwrap_or("").to_owned();
                    let (status, body) = routes
                        .lock()
                        .unwrap()
                        .get(&path)
                        .cloned()
                        .unwrap_or((404, Vec::new()));
                    let mut out = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                        body.len()
                    );
                    if status == 302 {
                        out.push_str("Location: https://127.0.0.1:1/elsewhere\r\n");
                    }
                    out.push_str("\r\n");
                    let _ = tls.write_all(out.as_bytes()).await;
                    let _ = tls.write_all(&body).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Site {
            addr,
            routes,
            ca: CertificateDer::from(ca.der().to_vec()),
            leaf: leaf_der,
            task,
        }
    }

    fn serve(&self, path: &str, status: u16, body: impl Into<Vec<u8>>) {
        self.routes
            .lock()
            .unwrap()
            .insert(path.to_owned(), (status, body.into()));
    }

    fn serve_good(&self, secret: u8) {
        self.serve("/secret", 200, vec![secret; 128]);
        self.serve("/conf", 200, CONF);
        self.serve("/conf6", 200, CONF6);
    }

    fn spki_pin(&self) -> String {
        format!("{:?}", Pin::of(&self.leaf).1.expect("spki"))
    }

    fn cert_pin(&self) -> String {
        format!("{:?}", Pin::of(&self.leaf).0)
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).expect("root");
        roots
    }
}

fn me_config(addr: SocketAddr, pins: &[String], mode: &str) -> MeConfig {
    let pins: Vec<String> = pins.iter().map(|p| format!("\"{p}\"")).collect();
    let text = format!(
        "[me]\nenabled = true\nfetch = true\nfetch_v6 = true\nfetch_timeout = \"5s\"\n\
         proxy_secret_url = \"https://{addr}/secret\"\n\
         proxy_config_url = \"https://{addr}/conf\"\n\
         proxy_config_v6_url = \"https://{addr}/conf6\"\n\
         pins = [{}]\npin_mode = \"{mode}\"\n",
        pins.join(", ")
    );
    Config::from_toml(&text, &Overrides::default())
        .expect("config")
        .me
}

fn all_ok(out: &[mtgate::me::fetch::Outcome]) -> bool {
    out.len() == 3 && out.iter().all(|o| o.result.is_ok())
}

fn secret_copy(state: &Path) -> Vec<u8> {
    std::fs::read(files::keep_dir(state).join("proxy-secret")).expect("copy")
}

#[tokio::test]
async fn pinned_fetch_saves_and_is_used_wrong_pin_refused() {
    let site = Site::start().await;
    site.serve_good(7);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();

    // No copy yet: the files cannot be loaded before the first fetch.
    let cfg = me_config(site.addr, &[site.spki_pin()], "strict");
    assert!(files::load(&cfg, state, false).is_err());

    // SPKI pin (the self-signed chain is not trusted): fetched, saved, used.
    let f = Fetcher::new(cfg.fetch.as_ref().unwrap()).unwrap();
    let out = f.refresh(state).await;
    assert!(all_ok(&out), "{out:?}");
    assert!(out.iter().all(|o| matches!(o.result, Ok(true))));
    let loaded = files::load(&cfg, state, true).expect("load");
    assert_eq!(loaded.secret, vec![7u8; 128]);
    assert_eq!(loaded.addrs_for(2).unwrap().len(), 2, "v4 + v6 merged");
    assert_eq!(loaded.addrs_for(99).unwrap().len(), 2, "default cluster");
    assert_eq!(f.pin_mismatches(), 0);
    // Unchanged content: nothing rewritten.
    assert!(f
        .refresh(state)
        .await
        .iter()
        .all(|o| matches!(o.result, Ok(false))));

    // The certificate-hash pin, among other pins, works too.
    site.serve_good(8);
    let other = format!("cert-sha256:{}", "00".repeat(32));
    let cfg = me_config(site.addr, &[other.clone(), site.cert_pin()], "strict");
    let f = Fetcher::new(cfg.fetch.as_ref().unwrap()).unwrap();
    assert!(all_ok(&f.refresh(state).await));
    assert_eq!(secret_copy(state), vec![8u8; 128]);

    // A wrong pin in strict mode: refused, even though the CA is trusted;
    // the last good copy stays.
    site.serve_good(9);
    let cfg = me_config(site.addr, &[other], "strict");
    let f = Fetcher::with_roots(cfg.fetch.as_ref().unwrap(), site.roots()).unwrap();
    let out = f.refresh(state).await;
    assert!(
        out.iter()
            .all(|o| matches!(o.result, Err(FetchError::Io(_)))),
        "{out:?}"
    );
    assert_eq!(f.pin_mismatches(), 3);
    assert_eq!(f.failures(), 3);
    assert_eq!(secret_copy(state), vec![8u8; 128]);
    assert_eq!(
        files::load(&cfg, state, true).unwrap().secret,
        vec![8u8; 128]
    );
}

#[tokio::test]
async fn warn_mode_counts_and_falls_back_to_roots() {
    let site = Site::start().await;
    site.serve_good(3);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let wrong = format!("sha256/{}", "A".repeat(43) + "=");
    let cfg = me_config(site.addr, &[wrong], "warn");

    // Warn mode, the chain trusted: warned about, counted, fetched.
    let f = Fetcher::with_roots(cfg.fetch.as_ref().unwrap(), site.roots()).unwrap();
    let out = f.refresh(state).await;
    assert!(all_ok(&out), "{out:?}");
    assert_eq!(f.pin_mismatches(), 3);
    assert_eq!(secret_copy(state), vec![3u8; 128]);

    // Warn mode with the default roots (webpki-roots): the self-signed
    // chain is still refused after the warning; the copy stays.
    site.serve_good(4);
    let f = Fetcher::new(cfg.fetch.as_ref().unwrap()).unwrap();
    let out = f.refresh(state).await;
    assert!(out.iter().all(|o| o.result.is_err()), "{out:?}");
    assert_eq!(f.pin_mismatches(), 3);
    assert_eq!(secret_copy(state), vec![3u8; 128]);

    // No pins at all: webpki-roots alone, which do not know this CA.
    let text = format!(
        "[me]\nenabled = true\nfetch = true\nproxy_secret_url = \"https://{}/secret\"\n\
         proxy_config_url = \"https://{}/conf\"\n",
        site.addr, site.addr
    );
    let cfg = Config::from_toml(&text, &Overrides::default()).unwrap().me;
    let f = Fetcher::new(cfg.fetch.as_ref().unwrap()).unwrap();
    assert!(f.refresh(state).await.iter().all(|o| o.result.is_err()));
    assert_eq!(f.pin_mismatches(), 0);
}

#[tokio::test]
async fn broken_redirected_oversized_or_down_keeps_the_good_copy() {
    let site = Site::start().await;
    site.serve_good(5);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let cfg = me_config(site.addr, &[site.spki_pin()], "strict");
    let f = Fetcher::new(cfg.fetch.as_ref().unwrap()).unwrap();
    assert!(all_ok(&f.refresh(state).await));
    let good = files::load(&cfg, state, true).unwrap();
    let conf_copy = || std::fs::read(files::keep_dir(state).join("proxy-multi.conf")).unwrap();

    // Broken bodies: an invalid conf, a short secret, an empty v6 conf.
    site.serve("/conf", 200, "garbage");
    site.serve("/secret", 200, vec![1u8; 5]);
    site.serve("/conf6", 200, "");
    let out = f.refresh(state).await;
    assert!(
        out.iter()
            .all(|o| matches!(o.result, Err(FetchError::Invalid(_)))),
        "{out:?}"
    );
    assert_eq!(conf_copy(), CONF.as_bytes());
    assert_eq!(files::load(&cfg, state, true).unwrap(), good);

    // A redirect is not followed; an error status and an oversized body fail.
    site.serve("/conf", 302, "");
    site.serve("/secret", 500, "");
    site.serve("/conf6", 200, vec![b'#'; mtgate::me::fetch::MAX_BODY + 1]);
    let out = f.refresh(state).await;
    assert!(
        matches!(out[0].result, Err(FetchError::Status(500))),
        "{out:?}"
    );
    assert!(
        matches!(out[1].result, Err(FetchError::Status(302))),
        "{out:?}"
    );
    assert!(matches!(out[2].result, Err(FetchError::Body)), "{out:?}");
    assert_eq!(files::load(&cfg, state, true).unwrap(), good);

    // The server is down.
    let addr = site.addr;
    drop(site);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let cfg = me_config(
        addr,
        &[format!("cert-sha256:{}", "11".repeat(32))],
        "strict",
    );
    let f = Fetcher::new(cfg.fetch.as_ref().unwrap()).unwrap();
    let out = f.refresh(state).await;
    assert!(out.iter().all(|o| o.result.is_err()), "{out:?}");
    assert_eq!(f.failures(), 3);
    assert_eq!(files::load(&cfg, state, true).unwrap(), good);
}

#[test]
fn config_keys() {
    let parse = |t: &str| Config::from_toml(t, &Overrides::default());
    // Defaults: Telegram's URLs, v6 only on request, strict pins.
    let me = parse("[me]\nenabled = true\nfetch = true\n").unwrap().me;
    let f = me.fetch.unwrap();
    assert_eq!(
        f.secret_url.as_deref(),
        Some("https://core.telegram.org/getProxySecret")
    );
    assert_eq!(
        f.config_url.as_deref(),
        Some("https://core.telegram.org/getProxyConfig")
    );
    assert_eq!(f.config_v6_url, None);
    assert_eq!(f.pin_mode, mtgate::config::PinMode::Strict);
    // A local file wins over fetching.
    let me = parse(
        "[me]\nenabled = true\nfetch = true\nfetch_v6 = true\nproxy_secret_file = \"/x/s\"\n",
    )
    .unwrap()
    .me;
    let f = me.fetch.unwrap();
    assert_eq!(f.secret_url, None);
    assert_eq!(
        f.config_v6_url.as_deref(),
        Some("https://core.telegram.org/getProxyConfigV6")
    );
    // Errors name the key.
    for (t, key) in [
        ("[me]\nfetch = true\npins = [\"md5:00\"]\n", "me.pins"),
        ("[me]\nfetch = true\npin_mode = \"loose\"\n", "me.pin_mode"),
        (
            "[me]\nfetch = true\nproxy_config_url = \"http://x/\"\n",
            "me.proxy_config_url",
        ),
        ("[me]\npins = []\n", "me.pins"),
        ("[me]\nenabled = true\n", "me.proxy_secret_file"),
    ] {
        let e = parse(t).unwrap_err().to_string();
        assert!(e.starts_with(key), "{t}: {e}");
    }
}

/// The service end to end: no copy at start, the first fetch starts the pool,
/// which then connects to the fetched middle-end address.
#[tokio::test]
async fn service_starts_from_the_first_fetch() {
    let me_end = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site = Site::start().await;
    site.serve("/secret", 200, vec![6u8; 128]);
    site.serve(
        "/conf",
        200,
        format!("proxy_for 2 {};\n", me_end.local_addr().unwrap()),
    );
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nstate_dir = \"{}\"\n[me]\nenabled = true\nfetch = true\n\
         proxy_secret_url = \"https://{a}/secret\"\nproxy_config_url = \"https://{a}/conf\"\n\
         pins = [\"{}\"]\n",
        dir.path().display(),
        site.spki_pin(),
        a = site.addr,
    );
    let config = Config::from_toml(&text, &Overrides::default()).expect("config");
    let service = mtgate::me::MeService::start(&config).expect("service");
    let accepted = tokio::time::timeout(Duration::from_secs(10), me_end.accept()).await;
    assert!(
        accepted.is_ok(),
        "the pool never connected to the fetched address"
    );
    assert_eq!(secret_copy(dir.path()), vec![6u8; 128]);
    let st = service.stats();
    assert!(st.fetching && st.last_fetch_ok.is_some(), "{st:?}");
    assert_eq!((st.fetch_failures, st.pin_mismatches), (0, 0), "{st:?}");
    drop(service);
}

/// The first fetch fails (404): the service keeps trying and starts the pool
/// as soon as a fetch succeeds.
#[tokio::test]
async fn service_retries_until_the_first_good_fetch() {
    let me_end = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let site = Site::start().await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[server]\nstate_dir = \"{}\"\n[me]\nenabled = true\nfetch = true\n\
         reload_interval = \"200ms\"\nfallback_direct = false\n\
         proxy_secret_url = \"https://{a}/secret\"\nproxy_config_url = \"https://{a}/conf\"\n\
         pins = [\"{}\"]\n",
        dir.path().display(),
        site.cert_pin(),
        a = site.addr,
    );
    let config = Config::from_toml(&text, &Overrides::default()).expect("config");
    let service = mtgate::me::MeService::start(&config).expect("service");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(service.ready_connections(), 0);
    assert!(!files::keep_dir(dir.path()).join("proxy-secret").exists());
    site.serve("/secret", 200, vec![2u8; 128]);
    site.serve(
        "/conf",
        200,
        format!("proxy_for 2 {};\n", me_end.local_addr().unwrap()),
    );
    let accepted = tokio::time::timeout(Duration::from_secs(10), me_end.accept()).await;
    assert!(
        accepted.is_ok(),
        "the pool never started after a good fetch"
    );
    drop(service);
}

/// `GET /metrics` from the admin listener (HTTP/1.1, connection: close).
async fn scrape(addr: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .expect("admin answers in time")
        .expect("read");
    let text = String::from_utf8(raw).expect("utf-8");
    text.split_once("\r\n\r\n").expect("http head").1.to_owned()
}

/// A pin mismatch on the download host shows in `/metrics` (scraped over the
/// admin socket) as `mtgate_me_fetch_pin_mismatches_total 1`, with the failed
/// fetch counted; the ME link counters are there too. (Services of other
/// tests in this binary never see a mismatch, so the sum is this one's.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_mismatch_is_exported_in_metrics() {
    let site = Site::start().await;
    site.serve_good(3);
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("proxy-multi.conf");
    std::fs::write(&conf, "proxy_for 2 127.0.0.1:1;\n").unwrap();
    // Only the secret is fetched (the config is a local file): one fetch, one mismatch.
    let wrong = format!("sha256/{}", "A".repeat(43) + "=");
    let text = format!(
        "[server]\nstate_dir = \"{}\"\n[me]\nenabled = true\nfetch = true\n\
         proxy_config_file = \"{}\"\nproxy_secret_url = \"https://{a}/secret\"\n\
         pins = [\"{wrong}\"]\npin_mode = \"strict\"\n",
        dir.path().display(),
        conf.display(),
        a = site.addr,
    );
    let config = Config::from_toml(&text, &Overrides::default()).expect("config");
    let metrics = Arc::new(mtgate::admin::Metrics::new(["alice"]));
    let state = mtgate::admin::AdminState::new(metrics);
    let admin = mtgate::admin::AdminServer::start("127.0.0.1:0".parse().unwrap(), state)
        .await
        .expect("admin");

    let service = mtgate::me::MeService::start(&config).expect("service");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while service.stats().fetch_failures == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            service.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = service.stats();
    assert_eq!((st.pin_mismatches, st.fetch_failures), (1, 1), "{st:?}");
    assert_eq!(st.last_fetch_ok, None);
    let body = scrape(admin.local_addr).await;
    let line = |name: &str| {
        body.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing:\n{body}"))
            .to_owned()
    };
    assert_eq!(
        line("mtgate_me_fetch_pin_mismatches_total "),
        "mtgate_me_fetch_pin_mismatches_total 1"
    );
    // (Other tests of this binary run services too; only they add failures.)
    let failures: u64 = line("mtgate_me_fetch_failures_total ")
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("a number");
    assert!(failures >= 1, "{body}");
    assert!(line("mtgate_me_link_failures_total{stage=\"connect\"}")
        .starts_with("mtgate_me_link_failures_total"));
    assert!(
        body.contains("# TYPE mtgate_me_connections_ready gauge"),
        "{body}"
    );
    drop(service);
    admin.stop();
}
