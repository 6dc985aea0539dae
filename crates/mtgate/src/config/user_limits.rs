//! `[users.NAME.limits]`: per-user limits, quotas and bandwidth, as written
//! ([`RawUserLimits`], unknown keys refused) and typed ([`UserLimits`]).
//!
//! ```toml
//! [users.alice.limits]
//! enabled = true                     # default true
//! expires = "2027-01-01T00:00:00Z"   # RFC 3339 with an offset (string or TOML datetime); default never
//! max_connections = 8                # concurrent; default unlimited
//! max_ips = 3                        # unique client IPs ...
//! ips_window = "1h"                  # ... seen within this window (default 1h; needs max_ips)
//! quota = "100GB"                    # lifetime bytes, up + down; default unlimited
//! quota_period = "monthly"           # daily | weekly | monthly (calendar, in policy.timezone)
//! quota_per_period = "10GB"          # bytes per period, up + down (needs quota_period)
//! bandwidth_up = "1MB"               # bytes per second, client → Telegram ("/s" allowed)
//! bandwidth_down = "4MB"             # bytes per second, Telegram → client
//! ```
//!
//! Sizes are a non-negative integer (bytes) or a string: a number (a decimal
//! fraction is allowed: `"1.5GB"`) and an optional unit, case-insensitive:
//! `B`, `K`/`KB`, `M`/`MB`, `G`/`GB`, `T`/`TB` (powers of 1000) or
//! `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024).

use super::ConfigError;
use serde::Deserialize;
use std::time::Duration;

/// The most unique IPs a user may be allowed (bounds the recent-IP set).
pub const MAX_IPS_LIMIT: u32 = 1024;
/// `ips_window` when `max_ips` is set without one.
pub const DEFAULT_IPS_WINDOW: Duration = Duration::from_secs(3600);
/// The longest `ips_window`.
pub const MAX_IPS_WINDOW: Duration = Duration::from_secs(366 * 24 * 3600);

/// `[users.NAME.limits]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUserLimits {
    pub enabled: Option<bool>,
    pub expires: Option<RawTime>,
    pub max_connections: Option<u32>,
    pub max_ips: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub ips_window: Option<Duration>,
    pub quota: Option<RawSize>,
    pub quota_period: Option<String>,
    pub quota_per_period: Option<RawSize>,
    pub bandwidth_up: Option<RawSize>,
    pub bandwidth_down: Option<RawSize>,
}

/// A size as written: an integer or a string with a unit.
#[derive(Debug, Clone, PartialEq)]
pub enum RawSize {
    Int(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = RawSize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size: an integer (bytes) or a string such as \"10GB\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawSize, E> {
                Ok(RawSize::Int(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawSize, E> {
                Ok(RawSize::Int(i64::try_from(v).unwrap_or(i64::MAX)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A point in time as written: an RFC 3339 string or a TOML datetime.
#[derive(Debug, Clone, PartialEq)]
pub struct RawTime(pub String);

impl<'de> Deserialize<'de> for RawTime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawTime;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an RFC 3339 time such as \"2027-01-01T00:00:00Z\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawTime, E> {
                Ok(RawTime(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawTime, A::Error> {
                let dt = toml::value::Datetime::deserialize(
                    serde::de::value::MapAccessDeserializer::new(map),
                )?;
                Ok(RawTime(dt.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A calendar period for `quota_per_period`, in the policy time zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuotaPeriod {
    /// From local midnight to the next.
    Daily,
    /// From Monday 00:00 local to the next Monday.
    Weekly,
    /// From the 1st at 00:00 local to the next 1st.
    Monthly,
}

impl QuotaPeriod {
    pub fn name(self) -> &'static str {
        match self {
            QuotaPeriod::Daily => "daily",
            QuotaPeriod::Weekly => "weekly",
            QuotaPeriod::Monthly => "monthly",
        }
    }
}

/// A calendar quota: at most `bytes` (up + down) per `period`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeriodQuota {
    pub period: QuotaPeriod,
    pub bytes: u64,
}

/// At most `max` unique client IPs seen within `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpLimit {
    pub max: u32,
    pub window: Duration,
}

/// A user's limits, typed. The default is "enabled, no limits".
#[derive(Clone, Debug, PartialEq)]
pub struct UserLimits {
    pub enabled: bool,
    /// Unix milliseconds after which the user is refused.
    pub expires_ms: Option<i64>,
    pub max_connections: Option<u32>,
    pub max_ips: Option<IpLimit>,
    /// Lifetime bytes, up + down.
    pub quota: Option<u64>,
    pub period_quota: Option<PeriodQuota>,
    /// Bytes per second, client → Telegram.
    pub bandwidth_up: Option<u64>,
    /// Bytes per second, Telegram → client.
    pub bandwidth_down: Option<u64>,
}

impl Default for UserLimits {
    fn default() -> Self {
        Self {
            enabled: true,
            expires_ms: None,
            max_connections: None,
            max_ips: None,
            quota: None,
            period_quota: None,
            bandwidth_up: None,
            bandwidth_down: None,
        }
    }
}

fn invalid(key: &str, field: &str, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: format!("{key}.{field}"),
        msg: msg.into(),
    }
}

impl UserLimits {
    /// `key` is the TOML path of the table (`users.NAME.limits`) for errors.
    pub fn from_raw(key: &str, raw: Option<RawUserLimits>) -> Result<Self, ConfigError> {
        let Some(raw) = raw else {
            return Ok(Self::default());
        };
        let expires_ms = match &raw.expires {
            None => None,
            Some(RawTime(t)) => Some(
                chrono::DateTime::parse_from_rfc3339(t)
                    .map_err(|e| {
                        invalid(
                            key,
                            "expires",
                            format!("{t:?} is not an RFC 3339 time with an offset ({e}); e.g. \"2027-01-01T00:00:00Z\""),
                        )
                    })?
                    .timestamp_millis(),
            ),
        };
        let positive = |field: &str, v: Option<u32>| -> Result<Option<u32>, ConfigError> {
            match v {
                Some(0) => Err(invalid(
                    key,
                    field,
                    "must be at least 1 (to refuse the user, set enabled = false)",
                )),
                v => Ok(v),
            }
        };
        let max_connections = positive("max_connections", raw.max_connections)?;
        let max_ips = match (positive("max_ips", raw.max_ips)?, raw.ips_window) {
            (None, None) => None,
            (None, Some(_)) => return Err(invalid(key, "ips_window", "needs max_ips")),
            (Some(max), window) => {
                if max > MAX_IPS_LIMIT {
                    return Err(invalid(key, "max_ips", format!("at most {MAX_IPS_LIMIT}")));
                }
                let window = window.unwrap_or(DEFAULT_IPS_WINDOW);
                if window.is_zero() || window > MAX_IPS_WINDOW {
                    return Err(invalid(
                        key,
                        "ips_window",
                        "must be more than 0 and at most 366 days",
                    ));
                }
                Some(IpLimit { max, window })
            }
        };
        let size =
            |field: &str, v: &Option<RawSize>, rate: bool| -> Result<Option<u64>, ConfigError> {
                let Some(v) = v else { return Ok(None) };
                let n = match v {
                    RawSize::Int(i) => u64::try_from(*i)
                        .map_err(|_| invalid(key, field, "must not be negative"))?,
                    RawSize::Text(t) => {
                        let t = if rate {
                            t.trim().strip_suffix("/s").unwrap_or(t)
                        } else {
                            t
                        };
                        parse_size(t).map_err(|e| invalid(key, field, e.to_string()))?
                    }
                };
                if n == 0 {
                    return Err(invalid(
                        key,
                        field,
                        "must be more than 0 (leave it out for no limit)",
                    ));
                }
                Ok(Some(n))
            };
        let quota = size("quota", &raw.quota, false)?;
        let per_period = size("quota_per_period", &raw.quota_per_period, false)?;
        let period = match raw.quota_period.as_deref() {
            None => None,
            Some("daily") => Some(QuotaPeriod::Daily),
            Some("weekly") => Some(QuotaPeriod::Weekly),
            Some("monthly") => Some(QuotaPeriod::Monthly),
            Some(other) => {
                return Err(invalid(
                    key,
                    "quota_period",
                    format!("{other:?}: expected daily, weekly or monthly"),
                ))
            }
        };
        let period_quota = match (period, per_period) {
            (None, None) => None,
            (Some(period), Some(bytes)) => Some(PeriodQuota { period, bytes }),
            (Some(_), None) => {
                return Err(invalid(key, "quota_per_period", "needed with quota_period"))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    key,
                    "quota_period",
                    "needed with quota_per_period (daily, weekly or monthly)",
                ))
            }
        };
        Ok(Self {
            enabled: raw.enabled.unwrap_or(true),
            expires_ms,
            max_connections,
            max_ips,
            quota,
            period_quota,
            bandwidth_up: size("bandwidth_up", &raw.bandwidth_up, true)?,
            bandwidth_down: size("bandwidth_down", &raw.bandwidth_down, true)?,
        })
    }

    /// Whether any quota (lifetime or calendar) is set.
    pub fn has_quota(&self) -> bool {
        self.quota.is_some() || self.period_quota.is_some()
    }
}

/// Why a size does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("empty size")]
    Empty,
    #[error("{0:?} is not a size: expected a number and an optional unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")]
    Syntax(String),
    #[error("unknown unit {0:?}: expected B, KB, MB, GB, TB, KiB, MiB, GiB or TiB")]
    Unit(String),
    #[error("{0:?} is too large")]
    Overflow(String),
    #[error("{0:?} is not a whole number of bytes")]
    Fraction(String),
}

fn unit_multiplier(unit: &str) -> Option<u64> {
    const K: u64 = 1000;
    const KI: u64 = 1024;
    Some(match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => K,
        "m" | "mb" => K * K,
        "g" | "gb" => K * K * K,
        "t" | "tb" => K * K * K * K,
        "ki" | "kib" => KI,
        "mi" | "mib" => KI * KI,
        "gi" | "gib" => KI * KI * KI,
        "ti" | "tib" => KI * KI * KI * KI,
        _ => return None,
    })
}

/// Parses a size such as `"100GB"`, `"1.5 MiB"` or `"4096"` into bytes.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(SizeError::Empty);
    }
    let num_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(num_end);
    let unit = unit.trim();
    let mult = unit_multiplier(unit).ok_or_else(|| SizeError::Unit(unit.to_owned()))?;
    let (int, frac) = match num.split_once('.') {
        Some((i, f)) => (i, f),
        None => (num, ""),
    };
    if int.is_empty() && frac.is_empty()
        || frac.contains('.')
        || (num.contains('.') && frac.is_empty())
    {
        return Err(SizeError::Syntax(text.to_owned()));
    }
    let overflow = || SizeError::Overflow(text.to_owned());
    let mut whole: u128 = 0;
    for d in int.bytes() {
        whole = whole
            .checked_mul(10)
            .and_then(|w| w.checked_add(u128::from(d - b'0')))
            .filter(|w| *w <= u128::from(u64::MAX))
            .ok_or_else(overflow)?;
    }
    let mut value = whole.checked_mul(u128::from(mult)).ok_or_else(overflow)?;
    let frac = frac.trim_end_matches('0');
    if !frac.is_empty() {
        // frac digits × mult / 10^len must be a whole number of bytes.
        if frac.len() > 30 {
            return Err(SizeError::Fraction(text.to_owned()));
        }
        let mut f: u128 = 0;
        let mut scale: u128 = 1;
        for d in frac.bytes() {
            f = f * 10 + u128::from(d - b'0');
            scale *= 10;
        }
        let scaled = f.checked_mul(u128::from(mult)).ok_or_else(overflow)?;
        if !scaled.is_multiple_of(scale) {
            return Err(SizeError::Fraction(text.to_owned()));
        }
        value = value.checked_add(scaled / scale).ok_or_else(overflow)?;
    }
    u64::try_from(value).map_err(|_| overflow())
}

/// Writes `bytes` with the largest unit that divides it exactly (`"10GiB"`, `"1500B"`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 8] = [
        ("TiB", 1 << 40),
        ("TB", 1_000_000_000_000),
        ("GiB", 1 << 30),
        ("GB", 1_000_000_000),
        ("MiB", 1 << 20),
        ("MB", 1_000_000),
        ("KiB", 1 << 10),
        ("KB", 1000),
    ];
    if bytes != 0 {
        for (name, m) in UNITS {
            if bytes.is_multiple_of(m) {
                return format!("{}{name}", bytes / m);
            }
        }
    }
    format!("{bytes}B")
}

#[cfg(test)]
#[path = "user_limits_tests.rs"]
mod tests;
