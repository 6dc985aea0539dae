//! The own site (DESIGN §6 `web/`): mtgate's own port as a real website.
//!
//! With `[site] hosts`, mtgate runs an HTTPS server of its own (rustls,
//! certificates by SNI from [`certs`], HTTP/1.1 and HTTP/2 by ALPN through
//! hyper, pages from [`content`]) on an internal listener, and every
//! connection that is not a client is fronted to it instead of to somebody
//! else's site: a TLS hello for a site host that is not a valid FakeTLS hello
//! is answered with the site's own certificate and pages, anything else with
//! what this server answers to it. The fronting path is the one mask sites
//! use (pre-connect, the fronting budget, byte-exact replay), so a connection
//! fronted through the client port and one made to the site directly meet
//! the same server with the same timeouts; the FakeTLS profile is learned
//! from this server, so FakeTLS answers take its shape.
//!
//! The listener is loopback by default (`site.listen`): probes are answered
//! without a connection leaving the host. Certificates and content follow a
//! reload; changed certificate files are picked up within seconds; open
//! connections keep what they started with.

pub mod acme;
pub mod certs;
pub mod content;
mod serve;
pub mod webproxy;

use certs::{CertStore, Source as CertSource};
use content::{Content, Source as ContentSource};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// `[site]`, checked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SiteConfig {
    /// Host names the site answers for (SNI); empty: no own site.
    pub hosts: Vec<String>,
    pub content: Option<ContentSource>,
    /// PEM files; `None`: a self-signed certificate in the state directory.
    pub certs: Option<CertSource>,
    /// The site's own listener (the fronting target).
    pub listen: Option<SocketAddr>,
    /// A `Server:` header on every answer (none by default).
    pub server_header: Option<String>,
    /// Certificates over ACME (`[site.acme]`).
    pub acme: Option<acme::AcmeConfig>,
    /// Telegram's WEB proxy type on this site (`[site.webproxy]`).
    pub webproxy: Option<webproxy::WebProxyConfig>,
}

/// `[site]` as written.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    #[serde(default)]
    pub hosts: Vec<String>,
    pub dir: Option<String>,
    pub upstream: Option<String>,
    pub cert: Option<String>,
    pub key: Option<String>,
    pub listen: Option<String>,
    pub server_header: Option<String>,
    #[serde(default)]
    pub acme: acme::RawAcme,
    #[serde(default)]
    pub webproxy: webproxy::RawWebProxy,
}

impl SiteConfig {
    /// Checks `[site]`; an error names the key.
    pub fn from_raw(raw: RawSite) -> Result<Self, (String, String)> {
        let key = |k: &str| format!("site.{k}");
        let mut hosts = Vec::new();
        for (i, h) in raw.hosts.iter().enumerate() {
            let h = h.to_ascii_lowercase();
            mtgate_proto::secret::validate_domain(&h)
                .map_err(|e| (key(&format!("hosts[{i}]")), e.to_string()))?;
            if !hosts.contains(&h) {
                hosts.push(h);
            }
        }
        let content = match (raw.dir, raw.upstream) {
            (Some(_), Some(_)) => {
                return Err((key("dir"), "use `dir` or `upstream`, not both".into()))
            }
            (Some(d), None) => {
                let p = PathBuf::from(&d);
                if !p.is_dir() {
                    return Err((key("dir"), format!("{d}: not a directory")));
                }
                Some(ContentSource::Dir(p))
            }
            (None, Some(u)) => {
                let uri: hyper::Uri = u
                    .parse()
                    .map_err(|_| (key("upstream"), format!("`{u}` is not a URL")))?;
                if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                    return Err((
                        key("upstream"),
                        format!("`{u}`: want http://host:port of a local server"),
                    ));
                }
                Some(ContentSource::Upstream(uri))
            }
            (None, None) => None,
        };
        let certs = match (raw.cert, raw.key) {
            (Some(c), Some(k)) => Some(CertSource::Files {
                cert: c.into(),
                key: k.into(),
            }),
            (None, None) => None,
            _ => return Err((key("cert"), "set both `cert` and `key`".into())),
        };
        let listen = raw
            .listen
            .map(|l| {
                l.parse::<SocketAddr>()
                    .map_err(|_| (key("listen"), format!("`{l}` is not an ip:port address")))
            })
            .transpose()?;
        if let Some(h) = &raw.server_header {
            if h.is_empty() || h.len() > 64 || h.bytes().any(|b| !(0x20..0x7f).contains(&b)) {
                return Err((
                    key("server_header"),
                    "1..64 printable ASCII characters".into(),
                ));
            }
        }
        let acme = acme::AcmeConfig::from_raw(raw.acme)?;
        let webproxy = webproxy::WebProxyConfig::from_raw(raw.webproxy)?;
        if acme.is_some() && certs.is_some() {
            return Err((
                key("acme"),
                "use `cert`/`key` or `[site.acme]`, not both".into(),
            ));
        }
        if hosts.is_empty()
            && (content.is_some()
                || certs.is_some()
                || listen.is_some()
                || acme.is_some()
                || webproxy.is_some())
        {
            return Err((key("hosts"), "name the site's host names".into()));
        }
        Ok(Self {
            hosts,
            content,
            certs,
            listen,
            server_header: raw.server_header,
            acme,
            webproxy,
        })
    }

    pub fn enabled(&self) -> bool {
        !self.hosts.is_empty()
    }
}

/// Why the site could not start or take a new configuration.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    #[error("site certificate: {0}")]
    Cert(#[from] certs::CertError),
    #[error("site TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("site listener {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What a reload may change while the site runs.
struct Live {
    webproxy: Option<Arc<webproxy::Room>>,
    content: Content,
    certs: Option<CertSource>,
    acme: Option<acme::AcmeConfig>,
    hosts: Vec<String>,
    server_header: Option<hyper::header::HeaderValue>,
}

/// The running site. Shared across reloads.
pub struct Site {
    addr: SocketAddr,
    certs: Arc<CertStore>,
    tls: tokio_rustls::TlsAcceptor,
    live: arc_swap::ArcSwap<Live>,
    /// Taken by [`Site::run`].
    listener: Mutex<Option<std::net::TcpListener>>,
    /// The plain HTTP listener (`[site.acme] http_listen`), taken by [`Site::run`].
    http_listener: Mutex<Option<std::net::TcpListener>>,
    http_addr: Option<SocketAddr>,
    /// HTTP-01 answers by token, while an ACME order runs.
    http_tokens: Mutex<std::collections::HashMap<String, String>>,
    /// The WEB proxy type's bootstrap and session tokens (kept across reloads).
    wp_tokens: Arc<webproxy::Tokens>,
    /// The WEB proxy type's counters.
    wp_stats: Arc<webproxy::Stats>,
    /// How WEB proxy streams reach the proxy (set by the server).
    handoff: std::sync::OnceLock<webproxy::Handoff>,
    state_dir: PathBuf,
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site").field("addr", &self.addr).finish()
    }
}

fn cert_source(cfg: &SiteConfig, state_dir: &Path) -> CertSource {
    cfg.certs.clone().unwrap_or_else(|| CertSource::SelfSigned {
        dir: state_dir.to_path_buf(),
    })
}

impl Site {
    /// Loads the certificates and binds the listener (served once
    /// [`Site::run`] runs; connections wait in the backlog until then).
    pub fn new(
        cfg: &SiteConfig,
        state_dir: &Path,
        users: &[crate::config::User],
    ) -> Result<Arc<Self>, SiteError> {
        let certs = CertStore::new(Vec::new());
        certs.load(&cert_source(cfg, state_dir), &cfg.hosts)?;
        if cfg.acme.is_some() {
            if let Some(l) = acme::stored(state_dir, &cfg.hosts) {
                certs.set(vec![l]);
            }
        }
        let http_listener = match cfg.acme.as_ref().and_then(|a| a.http_listen) {
            Some(a) => Some(
                crate::server::bind_std(a).map_err(|source| SiteError::Bind { addr: a, source })?,
            ),
            None => None,
        };
        let addr = cfg
            .listen
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
        let listener =
            crate::server::bind_std(addr).map_err(|source| SiteError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| SiteError::Bind { addr, source })?;
        Ok(Arc::new(Self {
            addr,
            tls: serve::acceptor(certs.clone())?,
            certs,
            live: arc_swap::ArcSwap::from_pointee(live(cfg, users)),
            listener: Mutex::new(Some(listener)),
            http_addr: http_listener.as_ref().and_then(|l| l.local_addr().ok()),
            http_listener: Mutex::new(http_listener),
            http_tokens: Mutex::default(),
            wp_tokens: Arc::default(),
            wp_stats: Arc::default(),
            handoff: std::sync::OnceLock::new(),
            state_dir: state_dir.to_path_buf(),
        }))
    }

    /// Where the site listens: the fronting target.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the plain HTTP listener listens, if there is one.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The certificates (expiry for metrics, the first screen, the doctor).
    pub fn certs(&self) -> &Arc<CertStore> {
        &self.certs
    }

    /// Checks a reload's `[site]`: its certificate loads. Nothing changes
    /// yet; [`Site::reconfigure`] applies it.
    pub fn check(&self, cfg: &SiteConfig) -> Result<(), SiteError> {
        certs::read_source(&cert_source(cfg, &self.state_dir), &cfg.hosts)?;
        Ok(())
    }

    /// A reload: new content, hosts and certificate source (checked first
    /// with [`Site::check`]; a certificate that still fails leaves the
    /// current one, and says so).
    pub fn reconfigure(&self, cfg: &SiteConfig, users: &[crate::config::User]) {
        match &cfg.acme {
            // ACME's certificate stays; one obtained for other hosts is replaced by the task.
            Some(_) => {}
            None => {
                let source = cert_source(cfg, &self.state_dir);
                if let Err(e) = self.certs.load(&source, &cfg.hosts) {
                    tracing::warn!(error = %e, "site certificate not replaced");
                }
            }
        }
        self.live.store(Arc::new(live(cfg, users)));
    }

    /// How WEB proxy streams reach the proxy (once, by the server).
    pub fn attach(&self, handoff: webproxy::Handoff) {
        let _ = self.handoff.set(handoff);
    }

    /// The WEB proxy type's sessions open now (0 when off).
    pub fn webproxy_sessions(&self) -> usize {
        self.wp_tokens.sessions()
    }

    /// Connections one app may hold open to the site at once, when that is
    /// more than a page's few: `websocket-lanes` opens a TLS connection per
    /// stream (`max_streams`), beside the session's requests. 0 otherwise.
    pub fn connections_per_app(&self) -> usize {
        self.live
            .load()
            .webproxy
            .as_ref()
            .filter(|w| w.cfg.carrier == webproxy::Carrier::WebSocketLanes)
            .map_or(0, |w| w.cfg.max_streams + 8)
    }

    /// The WEB proxy carrier in use, when the WEB proxy type is on.
    pub fn webproxy_carrier(&self) -> Option<&'static str> {
        self.live
            .load()
            .webproxy
            .as_ref()
            .map(|w| w.cfg.carrier.label())
    }

    /// The WEB proxy type's counters, when it is on.
    pub fn webproxy_stats(&self) -> Option<&webproxy::Stats> {
        self.live.load().webproxy.as_ref().map(|_| &*self.wp_stats)
    }

    /// Installs (or removes) an HTTP-01 answer.
    fn set_http_token(&self, token: &str, answer: Option<String>) {
        let mut t = self.http_tokens.lock().unwrap_or_else(|p| p.into_inner());
        match answer {
            Some(a) => t.insert(token.to_owned(), a),
            None => t.remove(token),
        };
    }

    fn clear_http_tokens(&self) {
        self.http_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn http_token(&self, token: &str) -> Option<String> {
        self.http_tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(token)
            .cloned()
    }

    /// Serves the listener until the task is dropped; rereads the
    /// certificate files when they change.
    pub async fn run(self: Arc<Self>) {
        let Some(std) = self.listener.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        let listener = match tokio::net::TcpListener::from_std(std) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "site listener");
                return;
            }
        };
        let mut background = vec![tokio::spawn(watch_files(self.clone()))];
        if let Some(cfg) = self.live.load().acme.clone() {
            background.push(tokio::spawn(acme::run(self.clone(), cfg)));
        }
        let http = self.http_listener.lock().ok().and_then(|mut l| l.take());
        if let Some(l) = http.and_then(|l| tokio::net::TcpListener::from_std(l).ok()) {
            background.push(tokio::spawn(serve::http_loop(self.clone(), l)));
        }
        serve::accept_loop(self, listener).await;
        background.iter().for_each(tokio::task::JoinHandle::abort);
    }
}

fn live(cfg: &SiteConfig, users: &[crate::config::User]) -> Live {
    Live {
        webproxy: cfg.webproxy.clone().map(|w| {
            Arc::new(webproxy::Room::new(
                w,
                &cfg.hosts,
                // A key kept in the HSM (digest mode) has no WEB proxy link.
                users
                    .iter()
                    .filter_map(|u| Some((u.name.as_str(), u.key()?.expose()))),
            ))
        }),
        content: Content::new(cfg.content.clone().unwrap_or(ContentSource::Default)),
        certs: cfg.certs.clone(),
        acme: cfg.acme.clone(),
        hosts: cfg.hosts.clone(),
        server_header: cfg
            .server_header
            .as_deref()
            .and_then(|h| hyper::header::HeaderValue::from_str(h).ok()),
    }
}

/// How often certificate files are checked for a change.
const WATCH_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

async fn watch_files(site: Arc<Site>) {
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let live = site.live.load();
        let Some(source) = &live.certs else {
            continue;
        };
        if site.certs.changed(source) {
            match site.certs.load(source, &live.hosts) {
                Ok(()) => tracing::info!("site certificate reloaded from its files"),
                Err(e) => {
                    tracing::warn!(error = %e, "site certificate changed on disk but cannot be loaded; keeping the current one")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> CertSource {
        let made = rcgen::generate_simple_self_signed(vec!["a.test".into()]).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, made.cert.pem()).unwrap();
        std::fs::write(&k, made.key_pair.serialize_pem()).unwrap();
        CertSource::Files { cert: c, key: k }
    }

    /// A reload naming other certificate files switches to them; one naming
    /// files that do not load is refused before anything changes.
    #[test]
    fn a_reload_checks_then_switches_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = SiteConfig {
            hosts: vec!["a.test".into()],
            certs: Some(pair(dir.path(), "one")),
            ..Default::default()
        };
        let site = Site::new(&cfg, dir.path(), &[]).unwrap();
        let first = site.certs().current()[0].key.cert.clone();
        cfg.certs = Some(pair(dir.path(), "two"));
        site.check(&cfg).unwrap();
        site.reconfigure(&cfg, &[]);
        let second = site.certs().current()[0].key.cert.clone();
        assert_ne!(first, second);
        let bad = SiteConfig {
            certs: Some(CertSource::Files {
                cert: dir.path().join("missing.pem"),
                key: dir.path().join("missing.key"),
            }),
            ..cfg.clone()
        };
        assert!(site.check(&bad).is_err());
        assert_eq!(site.certs().current()[0].key.cert, second, "unchanged");
    }
}
