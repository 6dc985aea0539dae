//! The configuration file as written: serde structs that refuse unknown keys.
//! Only `config::model` turns these into the typed values the service uses.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub tls: RawTls,
    #[serde(default)]
    pub upstream: RawUpstream,
    /// DC index → its targets: `"ip:port"`, `"websocket"`, or tables
    /// (`crate::net::target::parse_entry`); replaces the built-in entry.
    #[serde(default)]
    pub dcs: BTreeMap<String, Vec<toml::Value>>,
    #[serde(default)]
    pub users: BTreeMap<String, RawUser>,
    #[serde(default)]
    pub log: RawLog,
    /// Middle-proxy (ME) mode.
    #[serde(default)]
    pub me: RawMe,
    /// The admin listener (metrics, health).
    #[serde(default)]
    pub admin: RawAdmin,
    /// Security policy (ACL, rate limits, reputation, geo).
    #[serde(default)]
    pub policy: super::policy::RawPolicy,
    /// PROXY protocol from trusted front ends.
    #[serde(default)]
    pub proxy_protocol: crate::net::proxy_protocol::RawProxyProtocol,
    /// WebSocket listeners.
    #[serde(default)]
    pub websocket: crate::net::websocket::RawWs,
    /// The own site (`[site]`).
    #[serde(default)]
    pub site: crate::web::RawSite,
    /// Secrets in an HSM (`[hsm]`, PKCS#11).
    pub hsm: Option<RawHsm>,
    /// State shared with other nodes (`[shared]`, Redis).
    #[serde(default)]
    pub shared: crate::shared::RawShared,
    /// The proxy-to-proxy link (`[link.exit]`, `[link.bridge]`).
    #[serde(default)]
    pub link: crate::link::RawLink,
}

/// `[hsm]`: the PKCS#11 module, the token and where its PIN is.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHsm {
    pub module: String,
    pub token: String,
    /// A file holding the user PIN (else the `MTGATE_HSM_PIN` environment variable).
    pub pin_file: Option<String>,
    /// `digest` (default: the handshake's digests computed in the token) or
    /// `unwrap` (the keys read into memory when the users are built).
    pub mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    pub enabled: Option<bool>,
    pub listen: Option<String>,
    /// Bearer token for the admin API's write endpoints (`POST /reload`).
    pub token: Option<String>,
    /// Failed authentications an address may make a minute.
    pub auth_failures_per_minute: Option<u32>,
    /// PEM certificate chain and private key: the admin listener speaks HTTPS.
    pub tls_cert: Option<String>,
    pub tls_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Vec<String>>,
    pub public_host: Option<String>,
    pub state_dir: Option<String>,
    pub default_modes: Option<Vec<String>>,
    pub max_connections: Option<usize>,
    pub workers: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub handshake_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    /// How long a removed or disabled user's connections may go on after a reload.
    #[serde(default, with = "humantime_serde")]
    pub drain_grace: Option<Duration>,
    /// Reload when the config file changes.
    pub watch_config: Option<bool>,
    /// Unix control socket for the zero-downtime handover ("" disables it).
    pub handover_socket: Option<String>,
    /// How long open sessions may run on after SIGTERM or a handover.
    #[serde(default, with = "humantime_serde")]
    pub drain_timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub domains: Option<Vec<String>>,
    pub mask_host: Option<String>,
    pub mask_hosts: Option<BTreeMap<String, String>>,
    pub fronting: Option<bool>,
    pub mask_preconnect: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub mask_preconnect_delay: Option<Duration>,
    pub unknown_sni: Option<String>,
    pub learn_profile: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub profile_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub max_clock_skew_past: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub max_clock_skew_future: Option<Duration>,
    pub replay_cache_size: Option<usize>,
    pub fake_cert_len: Option<[u32; 2]>,
    pub mask_budget: Option<usize>,
    pub mask_budget_per_source: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    pub mask_hold_timeout: Option<Duration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub prefer: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    pub unknown_dc: Option<String>,
    pub fallback_dc: Option<u16>,
    /// SOCKS5 proxies, in order, for direct-mode DC connections.
    pub socks5: Option<Vec<String>>,
    /// Named SOCKS5 chains for DC targets (`via = "NAME"`).
    #[serde(default)]
    pub chains: BTreeMap<String, Vec<String>>,
    /// How a DC's targets are chosen.
    pub balance: Option<String>,
    /// Happy eyeballs: the next target starts after this long unanswered.
    #[serde(default, with = "humantime_serde")]
    pub attempt_delay: Option<Duration>,
    /// Extra passes over a DC whose every target failed.
    pub retries: Option<u8>,
    /// The first back-off before such a pass.
    #[serde(default, with = "humantime_serde")]
    pub retry_backoff: Option<Duration>,
    /// `"ip:port" = weight`.
    #[serde(default)]
    pub weights: BTreeMap<String, u32>,
    #[serde(default)]
    pub health: crate::net::balance::RawHealth,
    #[serde(default)]
    pub pool: crate::net::warm::RawWarm,
    #[serde(default)]
    pub websocket: crate::net::ws_upstream::RawWsUpstream,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    /// The user's secret; more, each with a validity window, in `secrets`.
    pub secret: Option<String>,
    /// The window of `secret` (RFC 3339); default: always.
    pub not_before: Option<super::user_limits::RawTime>,
    pub not_after: Option<super::user_limits::RawTime>,
    /// More secrets (rotation), each with its own window.
    #[serde(default)]
    pub secrets: Vec<RawSecret>,
    pub modes: Option<Vec<String>>,
    /// This user's promotion tag (32 hex digits); overrides `me.ad_tag`.
    pub ad_tag: Option<String>,
    /// Per-user limits, quotas and bandwidth.
    pub limits: Option<super::user_limits::RawUserLimits>,
}

/// `[[users.NAME.secrets]]`: one more secret of a user and when it is accepted.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecret {
    pub secret: String,
    pub not_before: Option<super::user_limits::RawTime>,
    pub not_after: Option<super::user_limits::RawTime>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<String>,
    pub format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMe {
    pub enabled: Option<bool>,
    pub ad_tag: Option<String>,
    pub proxy_secret_file: Option<String>,
    pub proxy_config_file: Option<String>,
    pub proxy_config_v6_file: Option<String>,
    pub fetch: Option<bool>,
    pub fetch_v6: Option<bool>,
    pub proxy_secret_url: Option<String>,
    pub proxy_config_url: Option<String>,
    pub proxy_config_v6_url: Option<String>,
    pub pins: Option<Vec<String>>,
    pub pin_mode: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub fetch_timeout: Option<Duration>,
    pub nat_ip: Option<String>,
    pub fallback_direct: Option<bool>,
    pub connections_per_addr: Option<usize>,
    pub queue_size: Option<usize>,
    pub max_clients_per_connection: Option<usize>,
    pub crc32c: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub ping_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub handshake_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub backoff_initial: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub backoff_max: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub reload_interval: Option<Duration>,
}
