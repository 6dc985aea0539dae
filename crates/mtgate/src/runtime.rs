//! The state every session shares: the typed config, the handshake's view of
//! the users, the replay cache and the telemetry fan-out. Built once at start
//! (`Runtime::build` is also what `mtgate check` runs).

use crate::config::{Config, User};
use crate::events::Telemetry;
use arc_swap::ArcSwap;
use mtgate_proto::handshake::UserKey;
use mtgate_proto::replay::ReplayCache;
use mtgate_proto::HandshakeConfig;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

pub struct Runtime {
    pub config: Config,
    pub users: Vec<User>,
    /// Swapped atomically when the mask-site profile is refreshed.
    pub handshake: ArcSwap<HandshakeConfig>,
    pub replay: Mutex<ReplayCache>,
    pub telemetry: Telemetry,
    /// Middle-proxy mode (`None` when `[me]` is off).
    pub me: Option<crate::me::MeService>,
    conn_ids: AtomicU64,
}

impl Runtime {
    /// Builds the shared state for `users` (the configured ones, or the generated default).
    pub fn build(config: Config, users: Vec<User>, telemetry: Telemetry) -> Self {
        let handshake = HandshakeConfig {
            users: users
                .iter()
                .map(|u| UserKey {
                    key: u.key.clone(),
                    classic: u.modes.classic,
                    secure: u.modes.secure,
                    fake_tls: u.modes.fake_tls,
                })
                .collect(),
            domains: config.domains.clone(),
            max_past_secs: config.max_past.as_secs(),
            max_future_secs: config.max_future.as_secs(),
            fake_cert_len: config.fake_cert_len,
            observed_cert_lens: Vec::new(),
            versions_first: false,
        };
        let window = config.max_past.as_secs() + config.max_future.as_secs();
        Self {
            me: crate::me::MeService::start(&config),
            replay: Mutex::new(ReplayCache::new(config.replay_cache_size, window)),
            config,
            users,
            handshake: ArcSwap::from_pointee(handshake),
            telemetry,
            conn_ids: AtomicU64::new(1),
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
        self.handshake.store(std::sync::Arc::new(hc));
    }
}

/// Learns the mask site's profile now and then every `interval`, in the background.
pub fn spawn_profiler(
    rt: std::sync::Arc<Runtime>,
    interval: std::time::Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let sni = rt.config.domains[0].clone();
        let addr = rt.config.mask_host.clone();
        loop {
            match crate::profile::learn(&addr, &sni, 3, rt.config.connect_timeout).await {
                Some((lens, vf)) => {
                    tracing::info!(mask = %addr, ?lens, versions_first = vf, "learned mask site profile");
                    rt.apply_profile(lens, vf);
                }
                None => {
                    tracing::warn!(mask = %addr, "mask site profile unavailable; using tls.fake_cert_len")
                }
            }
            tokio::time::sleep(interval).await;
        }
    })
}
