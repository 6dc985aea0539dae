//! The typed `[me]` section: middle-proxy mode and the promotion (ad) tag.
//! See docs/config.md `## [me]` for every key.

use super::{invalid, raw::RawMe, ConfigError};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Middle-proxy (ME) mode settings.
#[derive(Clone, Debug)]
pub struct MeConfig {
    /// Serve clients through Telegram's middle-ends (default: when an ad tag is set).
    pub enabled: bool,
    /// The promotion tag sent with every request (16 bytes).
    pub ad_tag: Option<[u8; 16]>,
    /// Per-user tags (`users.NAME.ad_tag`), overriding `ad_tag`.
    pub user_ad_tags: BTreeMap<String, [u8; 16]>,
    pub proxy_secret_file: Option<PathBuf>,
    pub proxy_config_file: Option<PathBuf>,
    pub proxy_config_v6_file: Option<PathBuf>,
    /// HTTPS fetching of the files without a local path (see [`MeFetch`]).
    pub fetch: Option<MeFetch>,
    /// Our public address as the middle-ends see it (NAT), per family.
    pub nat_ip: Option<IpAddr>,
    /// Use direct mode for a client whose DC has no ready middle-end connection.
    pub fallback_direct: bool,
    /// Connections kept to each middle-end address.
    pub connections_per_addr: usize,
    /// Whether `connections_per_addr` was set (else the file's
    /// `min_connections` decides, when it has one).
    pub connections_per_addr_set: bool,
    /// Messages queued toward one middle-end connection before clients wait.
    pub queue_size: usize,
    /// Clients multiplexed on one middle-end connection at most.
    pub max_clients_per_connection: usize,
    /// Offer CRC32C in the RPC handshake.
    pub crc32c: bool,
    /// Send our own RPC_PING this often (off by default).
    pub ping_interval: Option<Duration>,
    /// Time for TCP connect + nonce + handshake.
    pub handshake_timeout: Duration,
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// How often the files are read again (changes are applied live).
    pub reload_interval: Duration,
}

/// Where and how the files are fetched over HTTPS (`[me] fetch = true`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeFetch {
    /// `None` when `proxy_secret_file` is set (the local file wins).
    pub secret_url: Option<String>,
    pub config_url: Option<String>,
    /// Only with `fetch_v6 = true` and no `proxy_config_v6_file`.
    pub config_v6_url: Option<String>,
    pub pins: Vec<crate::me::fetch::Pin>,
    pub pin_mode: PinMode,
    pub timeout: Duration,
}

/// What a certificate that matches no pin gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinMode {
    /// Refused.
    Strict,
    /// Logged and counted; the usual (webpki-roots) verification decides.
    Warn,
}

impl MeConfig {
    /// The tag for `user`: their own, else the global one.
    pub fn ad_tag_for(&self, user: &str) -> Option<[u8; 16]> {
        self.user_ad_tags.get(user).copied().or(self.ad_tag)
    }
}

/// Parses a 32-hex-digit ad tag, naming `key` on error.
pub fn parse_ad_tag(key: &str, s: &str) -> Result<[u8; 16], ConfigError> {
    let mut tag = [0u8; 16];
    hex::decode_to_slice(s.trim(), &mut tag)
        .map_err(|_| invalid(key, "want 32 hex digits (the tag @MTProxybot gave)"))?;
    Ok(tag)
}

/// Default `me.proxy_secret_url`.
pub const DEFAULT_SECRET_URL: &str = "https://core.telegram.org/getProxySecret";
/// Default `me.proxy_config_url`.
pub const DEFAULT_CONFIG_URL: &str = "https://core.telegram.org/getProxyConfig";
/// Default `me.proxy_config_v6_url`.
pub const DEFAULT_CONFIG_V6_URL: &str = "https://core.telegram.org/getProxyConfigV6";

fn range(
    key: &str,
    v: Option<usize>,
    default: usize,
    lo: usize,
    hi: usize,
) -> Result<usize, ConfigError> {
    let v = v.unwrap_or(default);
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(invalid(key, format!("must be {lo}..={hi}")))
    }
}

impl MeConfig {
    pub(super) fn from_raw(
        r: RawMe,
        user_ad_tags: BTreeMap<String, [u8; 16]>,
    ) -> Result<Self, ConfigError> {
        let ad_tag = r
            .ad_tag
            .as_deref()
            .map(|t| parse_ad_tag("me.ad_tag", t))
            .transpose()?;
        let enabled = r
            .enabled
            .unwrap_or(ad_tag.is_some() || !user_ad_tags.is_empty());
        let file = |key: &str, v: Option<String>| -> Result<Option<PathBuf>, ConfigError> {
            match v {
                Some(p) if p.trim().is_empty() => Err(invalid(key, "must not be empty")),
                Some(p) => Ok(Some(PathBuf::from(p))),
                None => Ok(None),
            }
        };
        let proxy_secret_file = file("me.proxy_secret_file", r.proxy_secret_file)?;
        let proxy_config_file = file("me.proxy_config_file", r.proxy_config_file)?;
        let proxy_config_v6_file = file("me.proxy_config_v6_file", r.proxy_config_v6_file)?;
        let fetch = if r.fetch.unwrap_or(false) {
            let url =
                |key: &str, v: Option<String>, default: &str| -> Result<String, ConfigError> {
                    let u = v.unwrap_or_else(|| default.to_owned());
                    crate::me::fetch::HttpsUrl::parse(&u).map_err(|e| invalid(key, e))?;
                    Ok(u)
                };
            let secret_url = url(
                "me.proxy_secret_url",
                r.proxy_secret_url,
                DEFAULT_SECRET_URL,
            )?;
            let config_url = url(
                "me.proxy_config_url",
                r.proxy_config_url,
                DEFAULT_CONFIG_URL,
            )?;
            let config_v6_url = url(
                "me.proxy_config_v6_url",
                r.proxy_config_v6_url,
                DEFAULT_CONFIG_V6_URL,
            )?;
            let pins = r
                .pins
                .unwrap_or_default()
                .iter()
                .map(|p| crate::me::fetch::Pin::parse(p).map_err(|e| invalid("me.pins", e)))
                .collect::<Result<Vec<_>, _>>()?;
            let pin_mode = match r.pin_mode.as_deref().unwrap_or("strict") {
                "strict" => PinMode::Strict,
                "warn" => PinMode::Warn,
                o => {
                    return Err(invalid(
                        "me.pin_mode",
                        format!("`{o}`: want \"strict\" or \"warn\""),
                    ))
                }
            };
            let timeout = r.fetch_timeout.unwrap_or(Duration::from_secs(30));
            if timeout.is_zero() {
                return Err(invalid("me.fetch_timeout", "must be greater than zero"));
            }
            Some(MeFetch {
                secret_url: proxy_secret_file.is_none().then_some(secret_url),
                config_url: proxy_config_file.is_none().then_some(config_url),
                config_v6_url: (r.fetch_v6.unwrap_or(false) && proxy_config_v6_file.is_none())
                    .then_some(config_v6_url),
                pins,
                pin_mode,
                timeout,
            })
        } else {
            for (k, set) in [
                ("me.fetch_v6", r.fetch_v6.is_some()),
                ("me.proxy_secret_url", r.proxy_secret_url.is_some()),
                ("me.proxy_config_url", r.proxy_config_url.is_some()),
                ("me.proxy_config_v6_url", r.proxy_config_v6_url.is_some()),
                ("me.pins", r.pins.is_some()),
                ("me.pin_mode", r.pin_mode.is_some()),
                ("me.fetch_timeout", r.fetch_timeout.is_some()),
            ] {
                if set {
                    return Err(invalid(k, "only used with me.fetch = true"));
                }
            }
            None
        };
        if enabled && fetch.is_none() {
            if proxy_secret_file.is_none() {
                return Err(invalid(
                    "me.proxy_secret_file",
                    "required when ME mode is on without me.fetch = true (the proxy-secret from core.telegram.org/getProxySecret)",
                ));
            }
            if proxy_config_file.is_none() && proxy_config_v6_file.is_none() {
                return Err(invalid(
                    "me.proxy_config_file",
                    "required when ME mode is on without me.fetch = true (proxy-multi.conf from core.telegram.org/getProxyConfig)",
                ));
            }
        }
        let nat_ip = r
            .nat_ip
            .as_deref()
            .map(|s| {
                s.parse::<IpAddr>()
                    .map_err(|_| invalid("me.nat_ip", format!("`{s}` is not an IP address")))
            })
            .transpose()?;
        let handshake_timeout = r.handshake_timeout.unwrap_or(Duration::from_secs(5));
        let backoff_initial = r.backoff_initial.unwrap_or(Duration::from_secs(1));
        let backoff_max = r.backoff_max.unwrap_or(Duration::from_secs(30));
        for (k, d) in [
            ("me.handshake_timeout", handshake_timeout),
            ("me.backoff_initial", backoff_initial),
        ] {
            if d.is_zero() {
                return Err(invalid(k, "must be greater than zero"));
            }
        }
        if backoff_max < backoff_initial {
            return Err(invalid(
                "me.backoff_max",
                "must be at least me.backoff_initial",
            ));
        }
        let reload_interval = r.reload_interval.unwrap_or(Duration::from_secs(600));
        if reload_interval < Duration::from_millis(100) {
            return Err(invalid("me.reload_interval", "must be at least 100ms"));
        }
        if r.ping_interval
            .is_some_and(|d| d < Duration::from_millis(100))
        {
            return Err(invalid("me.ping_interval", "must be at least 100ms"));
        }
        Ok(Self {
            enabled,
            ad_tag,
            user_ad_tags,
            proxy_secret_file,
            proxy_config_file,
            proxy_config_v6_file,
            fetch,
            nat_ip,
            fallback_direct: r.fallback_direct.unwrap_or(true),
            connections_per_addr: range(
                "me.connections_per_addr",
                r.connections_per_addr,
                2,
                1,
                64,
            )?,
            connections_per_addr_set: r.connections_per_addr.is_some(),
            queue_size: range("me.queue_size", r.queue_size, 1024, 1, 1 << 20)?,
            max_clients_per_connection: range(
                "me.max_clients_per_connection",
                r.max_clients_per_connection,
                65_536,
                1,
                1 << 22,
            )?,
            crc32c: r.crc32c.unwrap_or(false),
            ping_interval: r.ping_interval,
            handshake_timeout,
            backoff_initial,
            backoff_max,
            reload_interval,
        })
    }
}
