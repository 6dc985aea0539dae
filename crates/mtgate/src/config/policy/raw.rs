//! `[policy]` as written: serde structs that refuse unknown keys. Only
//! [`super::PolicyConfig::from_raw`] turns them into typed values.

use crate::policy::Mode;
use serde::Deserialize;
use std::time::Duration;

/// `[policy]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub refuse_action: Option<String>,
    pub flood_action: Option<String>,
    pub users_mode: Option<Mode>,
    #[serde(default, with = "humantime_serde")]
    pub persist_interval: Option<Duration>,
    pub timezone: Option<String>,
    pub acl: Option<RawAcl>,
    pub limited: Option<RawLimited>,
    pub rate: Option<RawRate>,
    pub reputation: Option<RawReputation>,
    pub tracking: Option<RawTracking>,
    pub geo: Option<RawGeo>,
}

/// `[policy.acl]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAcl {
    pub mode: Option<Mode>,
    pub default: Option<String>,
    #[serde(default)]
    pub rules: Vec<RawAclRule>,
    #[serde(default)]
    pub files: Vec<RawAclFile>,
    #[serde(default, with = "humantime_serde")]
    pub reload_interval: Option<Duration>,
}

/// One `policy.acl.rules` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAclRule {
    pub cidr: String,
    pub level: String,
    pub days: Option<Vec<String>>,
    pub hours: Option<String>,
}

/// One `policy.acl.files` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAclFile {
    pub path: String,
    pub level: String,
    pub days: Option<Vec<String>>,
    pub hours: Option<String>,
}

/// `[policy.limited]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimited {
    pub new_connections_per_second: Option<f64>,
    pub burst: Option<u32>,
    pub max_connections_per_ip: Option<u32>,
    pub bandwidth: Option<u64>,
}

/// `[policy.rate]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRate {
    pub mode: Option<Mode>,
    pub scope: Option<String>,
    pub new_connections_per_second: Option<f64>,
    pub burst: Option<u32>,
    pub max_connections_per_ip: Option<u32>,
    pub max_handshake_failures: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub failure_window: Option<Duration>,
    pub ipv6_prefix: Option<u8>,
}

/// `[policy.reputation]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReputation {
    pub mode: Option<Mode>,
    pub threshold: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    pub half_life: Option<Duration>,
    pub failed_handshake: Option<f64>,
    pub replay: Option<f64>,
    pub rate_limited: Option<f64>,
    pub flood: Option<f64>,
    #[serde(default, with = "humantime_serde")]
    pub block_time: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub block_time_max: Option<Duration>,
    pub block_multiplier: Option<f64>,
}

/// `[policy.tracking]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTracking {
    pub max_tracked: Option<usize>,
}

/// `[policy.geo]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGeo {
    pub mode: Option<Mode>,
    pub database: Option<String>,
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
    pub unknown: Option<String>,
    #[serde(default, with = "humantime_serde")]
    pub reload_interval: Option<Duration>,
}
