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

mod raw;
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

fn level(key: &str, s: &str) -> Result<Level, ConfigError> {
    Level::parse(s).ok_or_else(|| invalid(key, format!("`{s}`: use full, limited or blocked")))
}

fn window(
    key: &str,
    days: Option<&[String]>,
    hours: Option<&str>,
) -> Result<Option<TimeWindow>, ConfigError> {
    if days.is_none() && hours.is_none() {
        return Ok(None);
    }
    TimeWindow::parse(days, hours)
        .map(Some)
        .map_err(|msg| invalid(key, msg))
}

fn acl(r: RawAcl, timezone: Tz) -> Result<AclConfig, ConfigError> {
    let default = match &r.default {
        None => Level::Full,
        Some(s) => level("policy.acl.default", s)?,
    };
    if r.rules.len() > MAX_ACL_RULES {
        return Err(invalid(
            "policy.acl.rules",
            format!("at most {MAX_ACL_RULES} rules (use files for big lists)"),
        ));
    }
    if r.files.len() > MAX_ACL_FILES {
        return Err(invalid(
            "policy.acl.files",
            format!("at most {MAX_ACL_FILES} files"),
        ));
    }
    let mut rules = Vec::with_capacity(r.rules.len());
    for (i, rr) in r.rules.iter().enumerate() {
        let key = format!("policy.acl.rules[{i}]");
        let net = crate::policy::acl::parse_net(rr.cidr.trim()).ok_or_else(|| {
            invalid(
                format!("{key}.cidr"),
                format!("`{}` is not an address or CIDR", rr.cidr),
            )
        })?;
        rules.push(AclRule {
            net,
            level: level(&format!("{key}.level"), &rr.level)?,
            window: window(&key, rr.days.as_deref(), rr.hours.as_deref())?,
        });
    }
    let mut files = Vec::with_capacity(r.files.len());
    for (i, rf) in r.files.iter().enumerate() {
        let key = format!("policy.acl.files[{i}]");
        if rf.path.is_empty() {
            return Err(invalid(format!("{key}.path"), "must not be empty"));
        }
        files.push(AclFile {
            path: PathBuf::from(&rf.path),
            level: level(&format!("{key}.level"), &rf.level)?,
            window: window(&key, rf.days.as_deref(), rf.hours.as_deref())?,
        });
    }
    let reload_interval = r.reload_interval.unwrap_or(Duration::from_secs(30));
    if reload_interval < Duration::from_secs(1) {
        return Err(invalid("policy.acl.reload_interval", "must be at least 1s"));
    }
    Ok(AclConfig {
        mode: r.mode.unwrap_or_default(),
        default,
        rules,
        files,
        reload_interval,
        timezone,
    })
}

fn rate_value(key: &str, v: f64) -> Result<f64, ConfigError> {
    if !(v.is_finite() && v > 0.0 && v <= 1_000_000.0) {
        return Err(invalid(key, "must be a number above 0 and at most 1000000"));
    }
    Ok(v)
}

fn at_least_one(key: &str, v: u32) -> Result<u32, ConfigError> {
    if v == 0 {
        return Err(invalid(key, "must be at least 1"));
    }
    Ok(v)
}

fn limited(r: RawLimited) -> Result<LimitedCaps, ConfigError> {
    let d = LimitedCaps::default();
    let bandwidth = r.bandwidth.unwrap_or(d.bandwidth);
    if bandwidth < 1024 {
        return Err(invalid(
            "policy.limited.bandwidth",
            "must be at least 1024 (bytes per second)",
        ));
    }
    Ok(LimitedCaps {
        new_connections_per_second: rate_value(
            "policy.limited.new_connections_per_second",
            r.new_connections_per_second
                .unwrap_or(d.new_connections_per_second),
        )?,
        burst: at_least_one("policy.limited.burst", r.burst.unwrap_or(d.burst))?,
        max_connections_per_ip: at_least_one(
            "policy.limited.max_connections_per_ip",
            r.max_connections_per_ip.unwrap_or(d.max_connections_per_ip),
        )?,
        bandwidth,
    })
}

fn rate(r: RawRate) -> Result<RateConfig, ConfigError> {
    let d = RateConfig::default();
    let failure_window = r.failure_window.unwrap_or(d.failure_window);
    if failure_window < Duration::from_secs(1) {
        return Err(invalid("policy.rate.failure_window", "must be at least 1s"));
    }
    let ipv6_prefix = r.ipv6_prefix.unwrap_or(d.ipv6_prefix);
    if !(16..=128).contains(&ipv6_prefix) {
        return Err(invalid(
            "policy.rate.ipv6_prefix",
            "must be between 16 and 128",
        ));
    }
    let scope = match r.scope.as_deref() {
        None | Some("unauthenticated") => RateScope::Unauthenticated,
        Some("all") => RateScope::All,
        Some(other) => {
            return Err(invalid(
                "policy.rate.scope",
                format!("`{other}`: use \"unauthenticated\" (the default) or \"all\""),
            ))
        }
    };
    Ok(RateConfig {
        mode: r.mode.unwrap_or_default(),
        scope,
        new_connections_per_second: rate_value(
            "policy.rate.new_connections_per_second",
            r.new_connections_per_second
                .unwrap_or(d.new_connections_per_second),
        )?,
        burst: at_least_one("policy.rate.burst", r.burst.unwrap_or(d.burst))?,
        max_connections_per_ip: at_least_one(
            "policy.rate.max_connections_per_ip",
            r.max_connections_per_ip.unwrap_or(d.max_connections_per_ip),
        )?,
        max_handshake_failures: at_least_one(
            "policy.rate.max_handshake_failures",
            r.max_handshake_failures.unwrap_or(d.max_handshake_failures),
        )?
        .min(u16::MAX as u32),
        failure_window,
        ipv6_prefix,
    })
}

fn weight(key: &str, v: Option<f64>, d: f64) -> Result<f64, ConfigError> {
    let v = v.unwrap_or(d);
    if !(v.is_finite() && (0.0..=1e9).contains(&v)) {
        return Err(invalid(key, "must be a number from 0 to 1e9"));
    }
    Ok(v)
}

fn reputation(r: RawReputation) -> Result<ReputationConfig, ConfigError> {
    let d = ReputationConfig::default();
    let threshold = weight("policy.reputation.threshold", r.threshold, d.threshold)?;
    if threshold <= 0.0 {
        return Err(invalid("policy.reputation.threshold", "must be above 0"));
    }
    let half_life = r.half_life.unwrap_or(d.half_life);
    if half_life < Duration::from_secs(1) {
        return Err(invalid(
            "policy.reputation.half_life",
            "must be at least 1s",
        ));
    }
    let block_time = r.block_time.unwrap_or(d.block_time);
    if block_time < Duration::from_secs(1) {
        return Err(invalid(
            "policy.reputation.block_time",
            "must be at least 1s",
        ));
    }
    let block_time_max = r.block_time_max.unwrap_or(d.block_time_max.max(block_time));
    if block_time_max < block_time {
        return Err(invalid(
            "policy.reputation.block_time_max",
            "must be at least block_time",
        ));
    }
    if block_time_max > Duration::from_secs(365 * 86_400) {
        return Err(invalid(
            "policy.reputation.block_time_max",
            "must be at most a year",
        ));
    }
    let block_multiplier = r.block_multiplier.unwrap_or(d.block_multiplier);
    if !(block_multiplier.is_finite() && (1.0..=100.0).contains(&block_multiplier)) {
        return Err(invalid(
            "policy.reputation.block_multiplier",
            "must be a number from 1 to 100",
        ));
    }
    Ok(ReputationConfig {
        mode: r.mode.unwrap_or_default(),
        threshold,
        half_life,
        failed_handshake: weight(
            "policy.reputation.failed_handshake",
            r.failed_handshake,
            d.failed_handshake,
        )?,
        replay: weight("policy.reputation.replay", r.replay, d.replay)?,
        rate_limited: weight(
            "policy.reputation.rate_limited",
            r.rate_limited,
            d.rate_limited,
        )?,
        flood: weight("policy.reputation.flood", r.flood, d.flood)?,
        block_time,
        block_time_max,
        block_multiplier,
    })
}

fn tracking(r: RawTracking) -> Result<TrackingConfig, ConfigError> {
    let max_tracked = r
        .max_tracked
        .unwrap_or(TrackingConfig::default().max_tracked);
    if !(1024..=MAX_TRACKED).contains(&max_tracked) {
        return Err(invalid(
            "policy.tracking.max_tracked",
            format!("must be between 1024 and {MAX_TRACKED}"),
        ));
    }
    Ok(TrackingConfig { max_tracked })
}

fn country_list(key: &str, list: &[String]) -> Result<Vec<[u8; 2]>, ConfigError> {
    if list.is_empty() {
        return Err(invalid(key, "at least one country code is required"));
    }
    list.iter()
        .map(|c| {
            crate::policy::geo::country_code(c)
                .ok_or_else(|| invalid(key, format!("`{c}` is not a two-letter ISO country code")))
        })
        .collect()
}

fn geo(r: RawGeo) -> Result<GeoConfig, ConfigError> {
    let database = match r.database.as_deref() {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => {
            return Err(invalid(
                "policy.geo.database",
                "the path of a MaxMind country database is required with [policy.geo]",
            ))
        }
    };
    let list = match (&r.allow, &r.deny) {
        (Some(_), Some(_)) => return Err(invalid("policy.geo", "set allow or deny, not both")),
        (Some(a), None) => GeoList::Allow(country_list("policy.geo.allow", a)?),
        (None, Some(d)) => GeoList::Deny(country_list("policy.geo.deny", d)?),
        (None, None) => {
            return Err(invalid(
                "policy.geo",
                "set allow = [...] or deny = [...] (country codes)",
            ))
        }
    };
    let unknown_allowed = match r.unknown.as_deref() {
        None | Some("allow") => true,
        Some("deny") => false,
        Some(o) => {
            return Err(invalid(
                "policy.geo.unknown",
                format!("`{o}`: use allow or deny"),
            ))
        }
    };
    let reload_interval = r.reload_interval.unwrap_or(Duration::from_secs(3600));
    if reload_interval < Duration::from_secs(1) {
        return Err(invalid("policy.geo.reload_interval", "must be at least 1s"));
    }
    Ok(GeoConfig {
        mode: r.mode.unwrap_or_default(),
        database,
        list,
        unknown_allowed,
        reload_interval,
    })
}

#[cfg(test)]
mod tests;
