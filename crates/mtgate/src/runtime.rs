//! The state every session shares: the typed config, the handshake's view of
//! the users, the replay cache and the telemetry fan-out. `Runtime::build` runs
//! at start (and is what `mtgate check` runs); a reload builds the next one with
//! [`Runtime::rebuild`], which keeps the parts that must outlive a config (the
//! replay cache, telemetry, the ME service, drain signals, connection ids) and
//! [`Live`] swaps it in atomically. Each session holds the `Arc<Runtime>` it
//! started with, so a reload never changes a running connection.

use crate::config::{Config, User};
use crate::events::{Event, Telemetry};
use crate::net::target::Target;
use crate::policy::clock::{SharedClock, SystemClock};
use crate::policy::engine::Policy;
use crate::policy::error::PolicyError;
use crate::stop::Drains;
use arc_swap::ArcSwap;
use mtgate_proto::handshake::UserKey;
use mtgate_proto::replay::ReplayCache;
use mtgate_proto::HandshakeConfig;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Runtime {
    pub config: Config,
    pub users: Vec<User>,
    /// Swapped atomically when the mask-site profile is refreshed.
    pub handshake: ArcSwap<HandshakeConfig>,
    pub replay: Arc<Mutex<ReplayCache>>,
    pub telemetry: Telemetry,
    /// Middle-proxy mode (`None` when `[me]` is off).
    pub me: Option<Arc<crate::me::MeService>>,
    /// Per-user drain signals (reload removes or disables users).
    pub drains: Arc<Drains>,
    /// The security policy (shared across reloads; it keeps its counters).
    pub policy: Arc<Policy>,
    /// The fronting budget (shared across reloads; it keeps its counts).
    pub mask_budget: Arc<crate::front::MaskBudget>,
    /// How clients' addresses are learned (see crate::peer).
    pub peer_source: crate::peer::PeerSource,
    /// How DCs are reached in direct mode (see crate::net::connect).
    pub connector: crate::net::connect::Connector,
    /// The named SOCKS5 chains of `via` targets (`[upstream.chains]`).
    pub chains: crate::net::connect::Chains,
    /// Which DC target to try first, and their breakers (shared across reloads).
    pub balancer: Arc<crate::net::balance::Balancer>,
    /// Connections opened ahead to DC targets (shared across reloads).
    pub warm: Arc<crate::net::warm::WarmPool>,
    /// DC connections through WebSocket endpoints (`None`: off).
    pub ws_upstream: Option<Arc<crate::net::ws_upstream::WsUpstream>>,
    /// The own site, the fronting target when configured (shared across reloads).
    pub site: Option<Arc<crate::web::Site>>,
    /// State shared with other nodes (`None`: this node alone; kept across
    /// reloads, `[shared]` changes with a restart).
    pub shared: Option<Arc<crate::shared::Shared>>,
    /// The links to an exit when this node is a bridge (`[link.bridge]`;
    /// kept across reloads that leave it unchanged).
    pub link: Option<Arc<crate::link::Bridge>>,
    /// The link's counters, both roles (kept across reloads).
    pub link_stats: Arc<crate::link::Stats>,
    conn_ids: Arc<AtomicU64>,
}

/// Why a runtime could not be built from a configuration.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Site(#[from] crate::web::SiteError),
    #[error(transparent)]
    Shared(#[from] crate::shared::BackendError),
}

/// The runtime new connections get; swapped by a reload.
#[derive(Debug)]
pub struct Live {
    current: ArcSwap<Runtime>,
}

impl Live {
    pub fn new(rt: Arc<Runtime>) -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::new(rt),
        })
    }
    /// The runtime to give a new connection.
    pub fn current(&self) -> Arc<Runtime> {
        self.current.load_full()
    }
    /// Makes `rt` the runtime of every connection accepted from now on.
    pub fn swap(&self, rt: Arc<Runtime>) -> Arc<Runtime> {
        self.current.swap(rt)
    }
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

fn handshake_config(config: &Config, users: &[User]) -> HandshakeConfig {
    HandshakeConfig {
        users: users
            .iter()
            .enumerate()
            .flat_map(|(owner, u)| {
                u.secrets.iter().map(move |s| UserKey {
                    valid: s.valid,
                    ..UserKey::new(
                        s.key.clone(),
                        owner,
                        u.modes.classic,
                        u.modes.secure,
                        u.modes.fake_tls,
                    )
                })
            })
            .collect(),
        domains: config.domains.clone(),
        max_past_secs: config.max_past.as_secs(),
        max_future_secs: config.max_future.as_secs(),
        fake_cert_len: config.fake_cert_len,
        observed_cert_lens: Vec::new(),
        versions_first: false,
    }
}

impl Runtime {
    /// Builds the shared state for `users` (the configured ones, or the generated default).
    /// Fails only when a file the policy names (ACL list, geo database) cannot be read.
    pub fn build(
        config: Config,
        users: Vec<User>,
        telemetry: Telemetry,
    ) -> Result<Self, RuntimeError> {
        Self::build_with_clock(config, users, telemetry, SystemClock::shared())
    }

    /// [`Runtime::build`] with the policy's clock given (tests move it by hand).
    pub fn build_with_clock(
        config: Config,
        users: Vec<User>,
        telemetry: Telemetry,
        clock: SharedClock,
    ) -> Result<Self, RuntimeError> {
        let window = config.max_past.as_secs() + config.max_future.as_secs();
        let policy = Arc::new(Policy::new(&config, &users, clock)?);
        let shared = match &config.shared {
            None => None,
            Some(c) => {
                let s = crate::shared::Shared::redis(c.clone(), Duration::from_secs(window))?;
                if tokio::runtime::Handle::try_current().is_ok() {
                    tokio::spawn(s.clone().run(policy.clone()));
                }
                Some(s)
            }
        };
        let site = match config.site.enabled() {
            true => Some(crate::web::Site::new(
                &config.site,
                &config.state_dir,
                &users,
            )?),
            false => None,
        };
        let link_stats = Arc::new(crate::link::Stats::default());
        Ok(Self {
            policy,
            mask_budget: crate::front::MaskBudget::new(config.mask_budget),
            peer_source: crate::peer::PeerSource::from_config(&config.proxy_protocol),
            connector: crate::net::connect::Connector::through(
                config.socks5.clone(),
                config.connect_timeout,
            ),
            chains: crate::net::connect::Chains::build(&config.chains, config.connect_timeout),
            balancer: crate::net::balance::Balancer::new(
                config.balance.clone(),
                dc_targets(&config),
            ),
            warm: Arc::new(crate::net::warm::WarmPool::new(config.warm)),
            ws_upstream: crate::net::ws_upstream::WsUpstream::new(&config.ws_upstream),
            site,
            shared,
            link: config
                .link
                .bridge
                .clone()
                .map(|c| crate::link::Bridge::new(c, link_stats.bridge.clone(), telemetry.clone())),
            link_stats,
            me: crate::me::MeService::start(&config).map(Arc::new),
            replay: Arc::new(Mutex::new(ReplayCache::new(
                config.replay_cache_size,
                window,
            ))),
            handshake: ArcSwap::from_pointee(handshake_config(&config, &users)),
            config,
            users,
            telemetry,
            drains: Arc::default(),
            conn_ids: Arc::new(AtomicU64::new(1)),
        })
    }

    /// The runtime for a reloaded `config`: new users, domains, limits and
    /// timeouts; the same replay cache, telemetry, ME service, drain signals and
    /// connection-id counter; the learned mask-site profile carried over. The
    /// policy reads its files first (an error changes nothing), then applies
    /// the new settings in place, keeping usage, blocks and reputation: call
    /// this only when the result will be swapped in.
    pub fn rebuild(&self, config: Config, users: Vec<User>) -> Result<Self, RuntimeError> {
        let prepared = Policy::prepare(&config)?;
        // The site: the same one takes the new settings (checked before
        // anything changes); one turned on by the reload starts now.
        let site = match (&self.site, config.site.enabled()) {
            (Some(s), true) => {
                s.check(&config.site)?;
                Some(s.clone())
            }
            (None, true) => {
                let s = crate::web::Site::new(&config.site, &config.state_dir, &users)?;
                if tokio::runtime::Handle::try_current().is_ok() {
                    tokio::spawn(s.clone().run());
                }
                Some(s)
            }
            (_, false) => None,
        };
        if let (Some(s), true) = (&site, self.site.is_some()) {
            s.reconfigure(&config.site, &users);
        }
        self.policy.apply(&config, &users, prepared);
        let mut hc = handshake_config(&config, &users);
        let old = self.handshake.load();
        hc.observed_cert_lens = old.observed_cert_lens.clone();
        hc.versions_first = old.versions_first;
        self.mask_budget.reconfigure(config.mask_budget);
        self.balancer
            .reconfigure(config.balance.clone(), dc_targets(&config));
        self.warm.reconfigure(config.warm);
        let link = match (&self.link, &config.link.bridge) {
            (Some(b), Some(c)) if b.config() == c => Some(b.clone()),
            (_, c) => c.clone().map(|c| {
                crate::link::Bridge::new(c, self.link_stats.bridge.clone(), self.telemetry.clone())
            }),
        };
        Ok(Self {
            policy: self.policy.clone(),
            mask_budget: self.mask_budget.clone(),
            peer_source: crate::peer::PeerSource::from_config(&config.proxy_protocol),
            connector: crate::net::connect::Connector::through(
                config.socks5.clone(),
                config.connect_timeout,
            ),
            chains: crate::net::connect::Chains::build(&config.chains, config.connect_timeout),
            balancer: self.balancer.clone(),
            warm: self.warm.clone(),
            ws_upstream: crate::net::ws_upstream::WsUpstream::new(&config.ws_upstream),
            site,
            shared: self.shared.clone(),
            link,
            link_stats: self.link_stats.clone(),
            me: self.me.clone(),
            replay: self.replay.clone(),
            handshake: ArcSwap::from_pointee(hc),
            config,
            users,
            telemetry: self.telemetry.clone(),
            drains: self.drains.clone(),
            conn_ids: self.conn_ids.clone(),
        })
    }

    /// The fronting gate for a connection from `source` (`suspect`: the
    /// source is over its per-source limits; see `policy.rate.scope`). An
    /// own site whose WEB proxy opens a connection per stream raises a
    /// source's share to what one app needs.
    pub fn mask_gate(&self, source: std::net::IpAddr, suspect: bool) -> crate::mask::Gate {
        crate::mask::Gate {
            budget: self.mask_budget.clone(),
            source,
            suspect,
            per_source_floor: self.site.as_ref().map_or(0, |s| s.connections_per_app()),
        }
    }

    /// The handshake settings for a connection whose transport already
    /// authenticated user `pin.user` (a WEB proxy stream): every user but
    /// that one refused, that one in the pinned mode only.
    pub fn pinned_handshake(&self, pin: crate::net::inbound::Pin) -> HandshakeConfig {
        let mut cfg = (**self.handshake.load()).clone();
        for (i, u) in cfg.users.iter_mut().enumerate() {
            let me = i == pin.user as usize;
            u.classic = me && !pin.dd;
            u.secure = me && pin.dd;
            u.fake_tls = false;
        }
        cfg
    }

    /// Where connections that are not clients are fronted by default: the
    /// own site when there is one, else `tls.mask_host`.
    pub fn mask_host(&self) -> String {
        match &self.site {
            Some(s) => s.addr().to_string(),
            None => self.config.mask_host.clone(),
        }
    }

    /// How this runtime reaches DCs in direct mode.
    pub fn route(&self) -> crate::upstream::Route<'_> {
        crate::upstream::Route {
            connector: &self.connector,
            chains: &self.chains,
            table: &self.config.dcs,
            balancer: &self.balancer,
            prefer: self.config.prefer,
            warm: &self.warm,
            attempt_delay: self.config.attempt_delay,
            ws: self.ws_upstream.as_deref(),
            link: self.link.as_ref(),
            connect_timeout: self.config.connect_timeout,
            retry: self.config.retry,
        }
    }

    pub fn next_conn_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Relaxed)
    }
}

impl Runtime {
    /// Applies a learned mask-site profile to future handshakes.
    pub fn apply_profile(&self, lens: Vec<u32>, versions_first: bool) {
        let mut hc = HandshakeConfig::clone(&self.handshake.load());
        hc.observed_cert_lens = lens;
        hc.versions_first = versions_first;
        self.handshake.store(Arc::new(hc));
    }
}

/// Learns the mask site's profile now and then every `interval`, in the background.
/// The profile goes to whichever runtime is live (reloads keep it).
pub fn spawn_profiler(
    live: Arc<Live>,
    interval: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    spawn_profiler_with(live, interval, PROFILE_RETRY_FIRST)
}

/// First wait before learning the mask site's profile again after a failure;
/// it doubles on each failure up to the refresh interval (at most 10 min).
pub const PROFILE_RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(5);

/// [`spawn_profiler`] with the first retry delay given (tests).
pub fn spawn_profiler_with(
    live: Arc<Live>,
    interval: std::time::Duration,
    first_retry: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let max_retry = interval.min(std::time::Duration::from_secs(600));
        let mut retry = first_retry;
        loop {
            let rt = live.current();
            let sni = rt.config.domains[0].clone();
            let addr = rt.mask_host();
            let wait = match crate::profile::learn(&addr, &sni, 3, rt.config.connect_timeout).await
            {
                Some((lens, vf)) => {
                    tracing::info!(mask = %addr, ?lens, versions_first = vf, "learned mask site profile");
                    rt.apply_profile(lens, vf);
                    retry = first_retry;
                    interval
                }
                None => {
                    tracing::warn!(
                        mask = %addr,
                        retry_in_s = retry.as_secs_f64(),
                        "mask site profile unavailable; using tls.fake_cert_len until it is learned"
                    );
                    let w = retry;
                    retry = (retry * 2).min(max_retry);
                    w
                }
            };
            tokio::time::sleep(wait).await;
        }
    })
}

/// Whether `config` makes this node a bridge whose DC connections go
/// through its link (`[link.bridge]`, mode `dc`).
pub fn through_link(config: &Config) -> bool {
    config.link.bridge.as_ref().is_some_and(|b| !b.forward)
}

/// Every DC target of `config`, once each: the balancer's targets.
fn dc_targets(config: &Config) -> Vec<Target> {
    let mut v: Vec<_> =
        crate::upstream::all_targets(&config.dcs, &config.ws_upstream, through_link(config))
            .into_iter()
            .map(|(_, t)| t)
            .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Checks the targets the balancer took out, every `upstream.health.check_interval`:
/// a target that answers the MTProto handshake, opened by its kind (the check
/// `mtgate doctor` runs), is put back in service. Runs until the task is dropped.
pub async fn health_checks(live: Arc<Live>) {
    loop {
        let rt = live.current();
        let every = rt.balancer.check_interval();
        if every.is_zero() {
            tokio::time::sleep(Duration::from_secs(5)).await;
            continue;
        }
        tokio::time::sleep(every).await;
        let rt = live.current();
        let route = rt.route();
        for target in rt.balancer.ejected() {
            let dc = match target {
                Target::WebSocket { dc } | Target::Link { dc } => dc,
                _ => 2,
            };
            let timeout = rt.config.connect_timeout;
            let ok = crate::upstream::probe::probe_target(&route, &target, dc, timeout)
                .await
                .is_ok();
            if ok && rt.balancer.restore(&target) == crate::net::balance::Change::Restored {
                rt.telemetry.emit(Event::TargetRestored { target: &target });
            }
        }
    }
}

/// Keeps the warm pool (`[upstream.pool]`) filled for the DC targets in
/// service. Runs until the task is dropped.
pub async fn warm_upkeep(live: Arc<Live>) {
    loop {
        let rt = live.current();
        let Some(period) = rt.warm.period() else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let ejected = rt.balancer.ejected();
        // Plain addresses only: the pool holds connections of the default way.
        let targets: Vec<_> = dc_targets(&rt.config)
            .into_iter()
            .filter(|t| !ejected.contains(t))
            .filter_map(|t| match t {
                Target::Addr(a) => Some(a),
                _ => None,
            })
            .collect();
        rt.warm.refill(&rt.connector, &targets).await;
        drop(rt);
        tokio::time::sleep(period).await;
    }
}
