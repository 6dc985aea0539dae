//! Middle-proxy (ME) mode: clients reach Telegram through its middle-ends,
//! multiplexed over a few encrypted RPC links, with the promotion (ad) tag on
//! every request (PROTOCOL §7). The codecs are in `mtgate_proto::me`; this
//! module is the I/O around them:
//!
//! * [`files`]: proxy-secret and proxy-multi.conf from local files, with a
//!   last good copy in the state directory;
//! * [`fetch`]: those files over HTTPS (`fetch = true`), with certificate
//!   pinning, saved as that last good copy only when valid;
//! * [`conn`]: opening one link (connect, nonce, keys with the NAT address,
//!   handshake);
//! * [`mux`]: one ready link carrying many clients;
//! * [`pool`]: links per address, reconnecting with back-off; binding clients;
//! * [`client`]: one client's packets in, answers and quick-acks out;
//! * [`stats`]: failure counters and ready links for `/metrics`.
//!
//! [`MeService`] is built with the runtime; the session calls [`route`] after
//! the handshake, which serves the client over ME or hands it back for direct
//! mode (fallback) when no middle-end of its DC is ready.

pub mod client;
pub mod conn;
pub mod fetch;
pub mod files;
pub mod mux;
pub mod pool;
pub mod stats;

pub use client::{serve_client, MeClient};
pub use mux::Bound;

use crate::config::{Config, IpPreference, MeConfig};
use crate::events::{CloseReason, Event};
use crate::relay::Traffic;
use crate::runtime::Runtime;
use mtgate_proto::{Accepted, DcIndex};
use pool::{Pool, PoolEnv};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// ME mode for one runtime. Dropping it stops its connections.
pub struct MeService {
    cfg: MeConfig,
    prefer_v6: bool,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

type Slot = Arc<std::sync::OnceLock<Arc<Pool>>>;

/// What the service shares with its background tasks and [`stats::live`].
struct Shared {
    /// Unset while the files could not be loaded (yet) or no async runtime was running.
    pool: Slot,
    fetcher: Option<Arc<fetch::Fetcher>>,
    links: Arc<stats::LinkStats>,
}

impl stats::Source for Shared {
    fn stats(&self) -> stats::MeStats {
        let l = &self.links;
        let f = self.fetcher.as_deref();
        stats::MeStats {
            connect_failures: l
                .connect_failures
                .load(std::sync::atomic::Ordering::Relaxed),
            handshake_failures: l
                .handshake_failures
                .load(std::sync::atomic::Ordering::Relaxed),
            lost: l.lost.load(std::sync::atomic::Ordering::Relaxed),
            fetch_failures: f.map_or(0, fetch::Fetcher::failures),
            pin_mismatches: f.map_or(0, fetch::Fetcher::pin_mismatches),
            last_fetch_ok: f.and_then(fetch::Fetcher::last_success),
            fetching: f.is_some(),
            ready_by_dc: self.pool.get().map_or_else(Vec::new, |p| p.ready_by_dc()),
        }
    }
}

impl std::fmt::Debug for MeService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeService")
            .field("ready", &self.ready_connections())
            .finish()
    }
}

impl MeService {
    /// Loads the files and starts the pool when `[me]` is enabled. Without a
    /// running tokio runtime (as in `mtgate check`) only the files are checked.
    pub fn start(config: &Config) -> Option<Self> {
        let cfg = config.me.clone();
        if !cfg.enabled {
            return None;
        }
        let (stop, stop_rx) = watch::channel(false);
        let running = tokio::runtime::Handle::try_current().is_ok();
        let pool: Slot = Arc::new(std::sync::OnceLock::new());
        let env = PoolEnv {
            public_host: config.public_host.clone(),
            stats: Arc::default(),
        };
        let fetcher = match cfg.fetch.as_ref().map(fetch::Fetcher::new).transpose() {
            Ok(f) => f.map(Arc::new),
            Err(e) => {
                tracing::error!(error = %e, "ME mode: cannot set up HTTPS fetching");
                None
            }
        };
        match files::load(&cfg, &config.state_dir, running) {
            Err(e) if fetcher.is_some() && running => {
                tracing::info!(error = %e, "ME mode: no usable copy of the middle-end files yet; fetching them");
            }
            Err(e) => {
                tracing::error!(error = %e, fallback_direct = cfg.fallback_direct, "ME mode: cannot load the middle-end files");
            }
            Ok(f) if running => {
                tracing::info!(
                    addresses = f.all_addrs().len(),
                    clusters = f.clusters.len(),
                    "ME mode on"
                );
                let _ = pool.set(Pool::start(f, cfg.clone(), stop_rx.clone(), env.clone()));
            }
            Ok(_) => {}
        }
        if running && (pool.get().is_some() || fetcher.is_some()) {
            tokio::spawn(reload(
                pool.clone(),
                fetcher.clone(),
                cfg.clone(),
                config.state_dir.clone(),
                stop_rx,
                env.clone(),
            ));
        }
        let shared = Arc::new(Shared {
            pool,
            fetcher,
            links: env.stats,
        });
        if running {
            let source: Arc<dyn stats::Source> = shared.clone();
            stats::register(&source);
        }
        Some(Self {
            prefer_v6: config.prefer == IpPreference::V6,
            cfg,
            shared,
            stop,
        })
    }

    /// Binds a client of `dc` to a ready middle-end link of its cluster.
    pub async fn bind(&self, dc: DcIndex) -> Option<Bound> {
        self.shared.pool.get()?.bind(dc.0, self.prefer_v6).await
    }

    /// Failure counters, fetch figures and ready links per DC now.
    pub fn stats(&self) -> stats::MeStats {
        stats::Source::stats(&*self.shared)
    }

    /// Our client-facing address as announced in requests: `nat_ip`, else the
    /// address learned for the keys behind NAT (see [`conn::key_ip`]), else `local`.
    pub fn public_ip(&self, local: std::net::IpAddr) -> std::net::IpAddr {
        if self.cfg.nat_ip.is_some() {
            return conn::public_ip(local, self.cfg.nat_ip);
        }
        let local = conn::public_ip(local, None);
        if !conn::is_internal(local) {
            return local;
        }
        self.shared
            .pool
            .get()
            .map_or(local, |p| p.learned_ip(local))
    }

    /// Whether a client with no ready middle-end goes direct (else it is closed).
    pub fn fallback_direct(&self) -> bool {
        self.cfg.fallback_direct
    }

    /// Ready middle-end links now.
    pub fn ready_connections(&self) -> usize {
        self.shared.pool.get().map_or(0, |p| p.ready())
    }

    /// Waits until at least `n` links are ready (for tests and start-up checks).
    pub async fn wait_ready(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.ready_connections() < n {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

/// Fetches (when configured, at once and then) and reads the files again
/// every `reload_interval` and applies what changed; starts the pool once the
/// files are first usable. A file that is missing, broken or not fetched
/// keeps the last good copy in force.
async fn reload(
    slot: Slot,
    fetcher: Option<Arc<fetch::Fetcher>>,
    cfg: MeConfig,
    state_dir: std::path::PathBuf,
    mut stop: watch::Receiver<bool>,
    env: PoolEnv,
) {
    let mut first = fetcher.is_some();
    loop {
        if !first {
            // Until the files are first usable, try again sooner.
            let wait = if slot.get().is_some() {
                cfg.reload_interval
            } else {
                cfg.reload_interval.min(Duration::from_secs(30))
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        first = false;
        if let Some(f) = &fetcher {
            tokio::select! {
                _ = f.refresh(&state_dir) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        let Some(pool) = slot.get() else {
            match files::load(&cfg, &state_dir, true) {
                Ok(f) => {
                    tracing::info!(addresses = f.all_addrs().len(), "ME mode on");
                    let _ = slot.set(Pool::start(f, cfg.clone(), stop.clone(), env.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "ME files still unusable; clients go direct or are refused")
                }
            }
            continue;
        };
        match files::load(&cfg, &state_dir, true) {
            Ok(f) if f != pool.files() => {
                tracing::info!(
                    addresses = f.all_addrs().len(),
                    "ME files changed; applying"
                );
                pool.apply(f);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "ME files unreadable; keeping the ones in force"),
        }
    }
}

impl Drop for MeService {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// Where [`route`] sent a client.
pub enum Routed {
    /// Served over ME (or refused); the session is over.
    Done(CloseReason),
    /// Not for ME (off, or no middle-end ready and fallback on): go direct.
    Direct(TcpStream, Box<Accepted>),
}

/// The session a route is for: its id (events) and its client (as the
/// policy saw it; behind a trusted front end, the address it vouched for).
#[derive(Clone, Copy, Debug)]
pub struct Conn {
    pub id: u64,
    pub client: SocketAddr,
}

/// After the handshake: serve the client over ME, or hand it back for direct mode.
pub async fn route(
    rt: &Runtime,
    conn: Conn,
    stream: TcpStream,
    accepted: Box<Accepted>,
    traffic: &Traffic,
    shutdown: crate::stop::Stop,
    lease: Option<&crate::policy::engine::Metered>,
) -> Routed {
    let Some(me) = rt.me.as_ref() else {
        return Routed::Direct(stream, accepted);
    };
    let Conn { id, client } = conn;
    let started = Instant::now();
    let dc = accepted.dc;
    let Some(bound) = me.bind(dc).await else {
        let error = if me.fallback_direct() {
            "no ready middle-end; falling back to direct"
        } else {
            "no ready middle-end"
        };
        rt.telemetry.emit(Event::UpstreamFailed {
            id,
            dc: dc.abs(),
            // No link to any middle-end of the DC is up.
            class: crate::net::connect::ErrorClass::Unreachable,
            error,
        });
        return if me.fallback_direct() {
            Routed::Direct(stream, accepted)
        } else {
            Routed::Done(CloseReason::UpstreamConnectFailed)
        };
    };
    rt.telemetry.emit(Event::UpstreamConnected {
        id,
        dc: dc.abs(),
        addr: bound.conn.peer,
        took: started.elapsed(),
    });
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    // The client as the policy saw it (behind a trusted front end, the
    // address it vouched for): the middle-end's view of who connected.
    let peer = client;
    let local = stream.local_addr().unwrap_or(unspecified);
    let local = SocketAddr::new(me.public_ip(local.ip()), local.port());
    let a = *accepted;
    let client = MeClient {
        stream,
        ciphers: a.ciphers,
        tls: a.tls,
        early: a.early,
        tag: a.tag,
        ad_tag: rt.config.me.ad_tag_for(&rt.users[a.user].name),
        peer,
        local,
    };
    Routed::Done(
        serve_client(
            bound,
            client,
            rt.config.idle_timeout,
            traffic,
            shutdown,
            lease,
        )
        .await,
    )
}

#[cfg(test)]
mod tests;
