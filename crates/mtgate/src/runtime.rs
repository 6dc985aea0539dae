//! The state every session shares: the typed config, the handshake's view of
//! the users, the replay cache and the telemetry fan-out. Built once at start
//! (`Runtime::build` is also what `mtgate check` runs).

use crate::config::{Config, User};
use crate::events::Telemetry;
use mtgate_proto::handshake::UserKey;
use mtgate_proto::replay::ReplayCache;
use mtgate_proto::HandshakeConfig;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

pub struct Runtime {
    pub config: Config,
    pub users: Vec<User>,
    pub handshake: HandshakeConfig,
    pub replay: Mutex<ReplayCache>,
    pub telemetry: Telemetry,
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
        };
        let window = config.max_past.as_secs() + config.max_future.as_secs();
        Self {
            replay: Mutex::new(ReplayCache::new(config.replay_cache_size, window)),
            config,
            users,
            handshake,
            telemetry,
            conn_ids: AtomicU64::new(1),
        }
    }

    pub fn next_conn_id(&self) -> u64 {
        self.conn_ids.fetch_add(1, Relaxed)
    }
}
