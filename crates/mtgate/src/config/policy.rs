//! `[policy]`: the IP-side policies (ACL, rate limits, reputation, geo) as
//! written (`Raw*`, unknown keys refused) and typed ([`PolicyConfig`]).
//!
//! Every value is checked here and an error names its TOML key. The defaults
//! give a permissive but protective public proxy: no ACL rules (everyone is
//! `full`), no geo database, and the per-IP rate limits and reputation on in
//! `enforce` mode with generous numbers. See docs/config.md `## [policy]`.

use super::{invalid, ConfigError};
use crate::policy::acl::{Level, TimeWindow};
use crate::policy::Mode;
use chrono_tz::Tz;
use ipnet::IpNet;
use std::path::PathBuf;
use std::time::Duration;

mod build;
mod raw;
use build::{acl, geo, limited, rate, reputation, tracking};
pub use raw::{
    RawAcl, RawAclFile, RawAclRule, RawGeo, RawLimited, RawPolicy, RawRate, RawReputation,
    RawTracking,
};

/// What a refused client sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RefuseAction {
    /// Fronted to the mask host, like any other rejected connection.
    #[default]
    Front,
    /// Closed at once.
    Close,
}

/// `[policy]`, typed.
#[derive(Clone, Debug)]
pub struct PolicyConfig {
    /// What a client refused by the ACL, geo or user limits sees.
    pub refuse_action: RefuseAction,
    /// What a client refused for flooding (rate, concurrency, failures,
    /// reputation) sees: fronted by default, like every refusal, so a prober
    /// never sees a switch from "website" to "firewall"; the fronting gate's
    /// budget (`tls.mask_budget*`) keeps a flood from opening one mask
    /// connection per attempt. `close` is an opt-in that can be fingerprinted.
    pub flood_action: RefuseAction,
    /// Monitor or enforce the per-user limits (`[users.NAME.limits]`).
    pub users_mode: Mode,
    /// How often usage, blocks and reputation are written to the state directory.
    pub persist_interval: Duration,
    /// Time zone of the ACL time windows (also in [`AclConfig::timezone`]).
    pub timezone: Tz,
    pub acl: AclConfig,
    /// The caps of ACL level `limited`.
    pub limited: LimitedCaps,
    pub rate: RateConfig,
    pub reputation: ReputationConfig,
    pub tracking: TrackingConfig,
    /// `None` unless `policy.geo.database` is set.
    pub geo: Option<GeoConfig>,
}

/// `[policy.acl]`, typed.
#[derive(Clone, Debug)]
pub struct AclConfig {
    pub mode: Mode,
    /// The level of an address no rule matches.
    pub default: Level,
    /// Inline rules, in file order.
    pub rules: Vec<AclRule>,
    /// List files (FireHOL netsets), in file order; they rank after inline rules.
    pub files: Vec<AclFile>,
    pub reload_interval: Duration,
    /// The time zone windows are read in (copied from `policy.timezone`).
    pub timezone: Tz,
}

impl Default for AclConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Enforce,
            default: Level::Full,
            rules: Vec::new(),
            files: Vec::new(),
            reload_interval: Duration::from_secs(30),
            timezone: Tz::UTC,
        }
    }
}

/// One inline ACL rule.
#[derive(Clone, Debug, PartialEq)]
pub struct AclRule {
    pub net: IpNet,
    pub level: Level,
    /// `None`: always in force.
    pub window: Option<TimeWindow>,
    /// In force until then (Unix ms); `None`: no end.
    pub until_ms: Option<i64>,
    /// Made through the admin API (`state_dir/rules.json`), not the file.
    pub managed: bool,
}

/// One ACL list file: every address in it gets `level` (within `window`).
#[derive(Clone, Debug, PartialEq)]
pub struct AclFile {
    pub path: PathBuf,
    pub level: Level,
    pub window: Option<TimeWindow>,
}

/// Per-IP caps of a level, as the per-source table takes them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConnLimits {
    /// New connections per second (GCRA emission rate).
    pub rate_per_sec: f64,
    /// New connections allowed at once.
    pub burst: u32,
    /// Concurrent connections per source.
    pub max_concurrent: u32,
}

/// `[policy.limited]`: the caps of ACL level `limited`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LimitedCaps {
    pub new_connections_per_second: f64,
    pub burst: u32,
    pub max_connections_per_ip: u32,
    /// Bytes per second per connection, each direction.
    pub bandwidth: u64,
}

impl Default for LimitedCaps {
    fn default() -> Self {
        Self {
            new_connections_per_second: 1.0,
            burst: 3,
            max_connections_per_ip: 4,
            bandwidth: 65_536,
        }
    }
}

impl LimitedCaps {
    pub fn conn_limits(&self) -> ConnLimits {
        ConnLimits {
            rate_per_sec: self.new_connections_per_second,
            burst: self.burst,
            max_concurrent: self.max_connections_per_ip,
        }
    }
}

/// What the per-source limits of level `full` count (`policy.rate.scope`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RateScope {
    /// Only work that proves nothing: connections that have not authenticated
    /// (handshaking, fronted, held). A valid handshake takes its connection
    /// out of the count and gives its rate slot back, so a crowd of valid
    /// users behind one address is never refused for volume. Over the rate,
    /// or blocked by reputation, a source's connections are still read (a
    /// valid client among them is served) but marked suspect: a suspect's
    /// failed handshakes get a quarter of the per-source fronting budget.
    /// Only the cap on unauthenticated connections refuses before reading.
    #[default]
    Unauthenticated,
    /// Every connection counts and every limit refuses before reading (the
    /// strict behaviour of earlier versions). Unsafe behind shared addresses:
    /// a carrier-grade NAT or a tunnel in front of mtgate looks like a flood.
    All,
}

/// Default cap on a source's unauthenticated connections open at once. What
/// it bounds is memory: a connection still handshaking holds at most a
/// ClientHello (16 KiB) and its session (≈ 3 KB), so ≈ 20 MiB per source
/// at the cap; the mask connections among them are bounded by
/// `tls.mask_budget_per_source`. A crowd's valid clients leave the count as
/// soon as they authenticate, so only handshakes in flight count.
pub const DEFAULT_PENDING_PER_SOURCE: u32 = 1024;

/// `[policy.rate]`: per-source limits for level `full`, and failure counting.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateConfig {
    pub mode: Mode,
    pub scope: RateScope,
    pub new_connections_per_second: f64,
    pub burst: u32,
    pub max_connections_per_ip: u32,
    /// Failed handshakes per `failure_window` before new connections are refused.
    pub max_handshake_failures: u32,
    pub failure_window: Duration,
    /// IPv6 sources are tracked per prefix of this length.
    pub ipv6_prefix: u8,
}

impl Default for RateConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Enforce,
            scope: RateScope::Unauthenticated,
            new_connections_per_second: 50.0,
            burst: 200,
            max_connections_per_ip: DEFAULT_PENDING_PER_SOURCE,
            max_handshake_failures: 20,
            failure_window: Duration::from_secs(60),
            ipv6_prefix: 64,
        }
    }
}

impl RateConfig {
    /// One line for `mtgate check`: what the per-source limits count, and a
    /// warning when they are the strict ones.
    pub fn summary(&self) -> String {
        match self.scope {
            RateScope::Unauthenticated => format!(
                "per-source limits count only unauthenticated connections (at most {} open, {}/s with a burst of {}); \
                 valid handshakes never count, so a crowd behind one address is served",
                self.max_connections_per_ip, self.new_connections_per_second, self.burst
            ),
            RateScope::All => format!(
                "WARNING: strict per-address limits (policy.rate.scope = \"all\": {} connections, {}/s with a burst of {}, \
                 refusing before reading): unsafe behind shared addresses (carrier-grade NAT, tunnels), \
                 whose valid users are refused as a flood",
                self.max_connections_per_ip, self.new_connections_per_second, self.burst
            ),
        }
    }

    /// The caps of level `full`.
    pub fn conn_limits(&self) -> ConnLimits {
        ConnLimits {
            rate_per_sec: self.new_connections_per_second,
            burst: self.burst,
            max_concurrent: self.max_connections_per_ip,
        }
    }
}

/// `[policy.reputation]`: score weights, decay and blocks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ReputationConfig {
    pub mode: Mode,
    /// A score at or above this blocks the source.
    pub threshold: f64,
    /// The score halves in this time.
    pub half_life: Duration,
    pub failed_handshake: f64,
    pub replay: f64,
    pub rate_limited: f64,
    pub flood: f64,
    /// The first block lasts this long...
    pub block_time: Duration,
    /// ...each repeat `block_multiplier` times longer, up to this.
    pub block_time_max: Duration,
    pub block_multiplier: f64,
}

impl Default for ReputationConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Enforce,
            threshold: 100.0,
            half_life: Duration::from_secs(600),
            failed_handshake: 10.0,
            replay: 40.0,
            rate_limited: 0.0,
            flood: 20.0,
            block_time: Duration::from_secs(600),
            block_time_max: Duration::from_secs(86_400),
            block_multiplier: 2.0,
        }
    }
}

/// `[policy.tracking]`: the size of the per-source table.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TrackingConfig {
    pub max_tracked: usize,
}

impl Default for TrackingConfig {
    fn default() -> Self {
        Self {
            max_tracked: 100_000,
        }
    }
}

/// What [`crate::policy::iptable::IpTable`] takes: rate + reputation + tracking.
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct IpTableConfig {
    pub rate: RateConfig,
    pub reputation: ReputationConfig,
    pub tracking: TrackingConfig,
}

/// `[policy.geo]`, typed (only when a database is configured).
#[derive(Clone, Debug, PartialEq)]
pub struct GeoConfig {
    pub mode: Mode,
    pub database: PathBuf,
    /// `Allow`: only these countries; `Deny`: all but these.
    pub list: GeoList,
    /// Whether an address the database does not place is allowed.
    pub unknown_allowed: bool,
    pub reload_interval: Duration,
}

/// The country list of [`GeoConfig`] (upper-case ISO 3166-1 alpha-2 codes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GeoList {
    Allow(Vec<[u8; 2]>),
    Deny(Vec<[u8; 2]>),
}

/// The most rules (inline) and list files accepted.
pub const MAX_ACL_RULES: usize = 100_000;
pub const MAX_ACL_FILES: usize = 64;
/// The largest per-source table accepted.
pub const MAX_TRACKED: usize = 50_000_000;

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            refuse_action: RefuseAction::Front,
            flood_action: RefuseAction::Front,
            users_mode: Mode::Enforce,
            persist_interval: Duration::from_secs(2),
            timezone: Tz::UTC,
            acl: AclConfig::default(),
            limited: LimitedCaps::default(),
            rate: RateConfig::default(),
            reputation: ReputationConfig::default(),
            tracking: TrackingConfig::default(),
            geo: None,
        }
    }
}

impl PolicyConfig {
    /// The per-source table's share of the configuration.
    pub fn ip_table(&self) -> IpTableConfig {
        IpTableConfig {
            rate: self.rate,
            reputation: self.reputation,
            tracking: self.tracking,
        }
    }

    pub fn from_raw(raw: RawPolicy) -> Result<Self, ConfigError> {
        let action = |key: &str, v: Option<&str>, default| match v {
            None => Ok(default),
            Some("front") => Ok(RefuseAction::Front),
            Some("close") => Ok(RefuseAction::Close),
            Some(o) => Err(invalid(key, format!("`{o}`: use front or close"))),
        };
        let refuse_action = action(
            "policy.refuse_action",
            raw.refuse_action.as_deref(),
            RefuseAction::Front,
        )?;
        let flood_action = action(
            "policy.flood_action",
            raw.flood_action.as_deref(),
            RefuseAction::Front,
        )?;
        let persist_interval = raw.persist_interval.unwrap_or(Duration::from_secs(2));
        if persist_interval < Duration::from_millis(100)
            || persist_interval > Duration::from_secs(60)
        {
            return Err(invalid(
                "policy.persist_interval",
                "use a duration from 100ms to 60s (a crash loses at most this much accounting)",
            ));
        }
        let timezone = match raw.timezone.as_deref() {
            None => Tz::UTC,
            Some(t) => t.parse::<Tz>().map_err(|_| {
                invalid(
                    "policy.timezone",
                    format!("`{t}` is not an IANA time zone name (e.g. UTC, Europe/Berlin)"),
                )
            })?,
        };
        Ok(Self {
            refuse_action,
            flood_action,
            users_mode: raw.users_mode.unwrap_or_default(),
            persist_interval,
            timezone,
            acl: acl(raw.acl.unwrap_or_default(), timezone)?,
            limited: limited(raw.limited.unwrap_or_default())?,
            rate: rate(raw.rate.unwrap_or_default())?,
            reputation: reputation(raw.reputation.unwrap_or_default())?,
            tracking: tracking(raw.tracking.unwrap_or_default())?,
            geo: raw.geo.map(geo).transpose()?,
        })
    }
}

#[cfg(test)]
mod tests;
