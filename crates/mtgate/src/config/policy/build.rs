//! `[policy]` section by section: each raw table checked and turned into its
//! typed form, every error naming its TOML key.

use super::raw::{RawAcl, RawGeo, RawLimited, RawRate, RawReputation, RawTracking};
use super::*;

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

pub(super) fn acl(r: RawAcl, timezone: Tz) -> Result<AclConfig, ConfigError> {
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
            until_ms: None,
            managed: false,
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

pub(super) fn limited(r: RawLimited) -> Result<LimitedCaps, ConfigError> {
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

pub(super) fn rate(r: RawRate) -> Result<RateConfig, ConfigError> {
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

pub(super) fn reputation(r: RawReputation) -> Result<ReputationConfig, ConfigError> {
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

pub(super) fn tracking(r: RawTracking) -> Result<TrackingConfig, ConfigError> {
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

pub(super) fn geo(r: RawGeo) -> Result<GeoConfig, ConfigError> {
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
