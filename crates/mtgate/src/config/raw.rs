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
    /// DC index → list of `ip:port` addresses (replaces the built-in entry).
    #[serde(default)]
    pub dcs: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub users: BTreeMap<String, RawUser>,
    #[serde(default)]
    pub log: RawLog,
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub domains: Option<Vec<String>>,
    pub mask_host: Option<String>,
    pub mask_hosts: Option<BTreeMap<String, String>>,
    pub fronting: Option<bool>,
    pub mask_preconnect: Option<bool>,
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
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    pub prefer: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub connect_timeout: Option<Duration>,
    pub unknown_dc: Option<String>,
    pub fallback_dc: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    pub secret: String,
    pub modes: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    pub level: Option<String>,
    pub format: Option<String>,
}
