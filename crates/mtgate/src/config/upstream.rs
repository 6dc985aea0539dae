//! `[upstream]` and `[dcs]`: how DCs are reached in direct mode. Each DC's
//! entry is its group of targets (`crate::net::target`): addresses, addresses
//! through a named SOCKS5 chain, its WebSocket endpoint, with weights.

use super::raw::RawUpstream;
use super::{invalid, ConfigError, IpPreference};
use crate::dc::{DcTable, UnknownDcRule};
use crate::net::balance::BalanceConfig;
use crate::net::connect::Socks5Hop;
use crate::net::target::{self, Target};
use crate::net::warm::WarmConfig;
use crate::net::ws_upstream::WsUpstreamConfig;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The checked upstream settings, moved into `Config`'s fields.
pub(super) struct Upstream {
    pub prefer: IpPreference,
    pub connect_timeout: Duration,
    pub socks5: Vec<Socks5Hop>,
    pub chains: BTreeMap<Arc<str>, Vec<Socks5Hop>>,
    pub balance: BalanceConfig,
    pub attempt_delay: Duration,
    pub retry: crate::upstream::Retry,
    pub warm: WarmConfig,
    pub ws_upstream: WsUpstreamConfig,
    pub dcs: DcTable,
}

/// Most hops in one chain.
const MAX_HOPS: usize = 8;

fn chain(key: &str, hops: &[String]) -> Result<Vec<Socks5Hop>, ConfigError> {
    let v = hops
        .iter()
        .enumerate()
        .map(|(i, h)| Socks5Hop::parse(h).map_err(|e| invalid(format!("{key}[{i}]"), e)))
        .collect::<Result<Vec<_>, _>>()?;
    if v.len() > MAX_HOPS {
        return Err(invalid(key, "at most 8 proxies in a chain"));
    }
    Ok(v)
}

/// Checks `[upstream]` and `[dcs]`; an error names the key.
pub(super) fn parse(
    u: RawUpstream,
    raw_dcs: &BTreeMap<String, Vec<toml::Value>>,
) -> Result<Upstream, ConfigError> {
    let prefer = match u.prefer.as_deref() {
        None | Some("ipv4") => IpPreference::V4,
        Some("ipv6") => IpPreference::V6,
        Some(o) => {
            return Err(invalid(
                "upstream.prefer",
                format!("`{o}`: use ipv4 or ipv6"),
            ))
        }
    };
    let unknown = match u.unknown_dc.as_deref() {
        None | Some("fallback") => UnknownDcRule::Fallback(u.fallback_dc.unwrap_or(2)),
        Some("close") => UnknownDcRule::Close,
        Some(o) => {
            return Err(invalid(
                "upstream.unknown_dc",
                format!("`{o}`: use fallback or close"),
            ))
        }
    };
    let socks5 = chain("upstream.socks5", u.socks5.as_deref().unwrap_or_default())?;
    let mut chains = BTreeMap::new();
    for (name, hops) in &u.chains {
        let key = format!("upstream.chains.{name}");
        let good = (1..=32).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !good || name == target::DIRECT {
            return Err(invalid(
                &key,
                "a chain's name is 1..32 letters, digits, - or _, and not `direct`",
            ));
        }
        if hops.is_empty() {
            return Err(invalid(&key, "at least one socks5:// proxy"));
        }
        chains.insert(Arc::<str>::from(name.as_str()), chain(&key, hops)?);
    }
    let mut balance = BalanceConfig::from_raw(u.balance.as_deref(), &u.weights, u.health)
        .map_err(|(key, msg)| invalid(key, msg))?;
    let attempt_delay = u.attempt_delay.unwrap_or(Duration::from_millis(250));
    if attempt_delay > Duration::from_secs(10) {
        return Err(invalid(
            "upstream.attempt_delay",
            "use 0 (one target at a time) to 10s",
        ));
    }
    let d = crate::upstream::Retry::default();
    let retry = crate::upstream::Retry {
        passes: u.retries.unwrap_or(d.passes),
        backoff: u.retry_backoff.unwrap_or(d.backoff),
    };
    if retry.passes > 5 {
        return Err(invalid("upstream.retries", "use 0..5"));
    }
    if !(Duration::from_millis(10)..=Duration::from_secs(5)).contains(&retry.backoff) {
        return Err(invalid("upstream.retry_backoff", "use 10ms..5s"));
    }
    let warm = WarmConfig::from_raw(u.pool).map_err(|(key, msg)| invalid(key, msg))?;
    let ws_upstream =
        WsUpstreamConfig::from_raw(u.websocket).map_err(|(key, msg)| invalid(key, msg))?;
    let mut dcs = DcTable::telegram_defaults(unknown);
    let named = |n: &str| {
        if n == target::DIRECT {
            return Some(Arc::from(target::DIRECT));
        }
        chains.get_key_value(n).map(|(k, _)| k.clone())
    };
    for (k, entries) in raw_dcs {
        let key = format!("dcs.{k}");
        let id: u16 = k.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
            invalid(
                &key,
                "DC index must be a positive number (media DCs use the same entry)",
            )
        })?;
        if entries.is_empty() {
            return Err(invalid(&key, "at least one address is required"));
        }
        let mut group = Vec::with_capacity(entries.len());
        for (i, v) in entries.iter().enumerate() {
            let e = target::parse_entry(v, id, &named)
                .map_err(|msg| invalid(format!("{key}[{i}]"), msg))?;
            if matches!(e.target, Target::WebSocket { .. }) && ws_upstream.host(id).is_none() {
                return Err(invalid(
                    format!("{key}[{i}]"),
                    format!("a websocket target needs [upstream.websocket] enabled with a host for DC {id}"),
                ));
            }
            if group.contains(&e.target) {
                return Err(invalid(
                    format!("{key}[{i}]"),
                    format!("`{}` is listed twice", e.target),
                ));
            }
            if let Some(w) = e.weight {
                balance.weights.insert(e.target.clone(), w);
            }
            group.push(e.target);
        }
        dcs.set(id, group);
    }
    if let UnknownDcRule::Fallback(f) = unknown {
        if !dcs.has(f) {
            return Err(invalid(
                "upstream.fallback_dc",
                format!("DC {f} is not in the DC table"),
            ));
        }
    }
    Ok(Upstream {
        prefer,
        connect_timeout: u.connect_timeout.unwrap_or(Duration::from_secs(10)),
        socks5,
        chains,
        balance,
        attempt_delay,
        retry,
        warm,
        ws_upstream,
        dcs,
    })
}
