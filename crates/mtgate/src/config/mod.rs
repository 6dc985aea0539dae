//! Configuration: parse once into typed values (DESIGN §3 "parse, don't validate").
//!
//! [`Config::from_toml`] is the only way in: it deserializes the raw file
//! (unknown keys refused), then checks and converts every value, naming the
//! key at fault. `mtgate check` and `mtgate run` call exactly this code.
//! Command-line flags are applied as a [`Overrides`] on the raw form first.

pub mod locate;
pub mod mask;
pub mod me;
mod overrides;
pub mod policy;
pub mod raw;
mod upstream;
pub mod user_limits;
mod users;

use crate::dc::DcTable;
pub use me::{MeConfig, MeFetch, PinMode};
use mtgate_proto::secret::validate_domain;
use overrides::apply_overrides;
pub use overrides::Overrides;
pub use policy::PolicyConfig;
use raw::RawConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use upstream::Upstream;
pub use user_limits::UserLimits;
pub use users::{parse_json as parse_users_json, Modes, Secret, User, Window, MAX_SECRETS};

/// A configuration error, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{key}: {msg}")]
    Invalid { key: String, msg: String },
    /// A syntax or type error at a place in the file.
    #[error("{}", show_at(.file.as_deref(), .at, .key, .msg))]
    At {
        /// The file, when the text came from one.
        file: Option<String>,
        at: locate::Location,
        key: String,
        msg: String,
    },
}

/// `FILE:LINE:COL: KEY: MSG` (compiler style) when the text came from a
/// file, else `KEY: line L, column C: MSG`; then the line with a caret.
fn show_at(file: Option<&str>, at: &locate::Location, key: &str, msg: &str) -> String {
    match file {
        Some(f) => format!("{f}:{}:{}: {key}: {msg}\n{}", at.line, at.col, at.snippet()),
        None => format!(
            "{key}: line {}, column {}: {msg}\n{}",
            at.line,
            at.col,
            at.snippet()
        ),
    }
}

fn invalid(key: impl Into<String>, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        msg: msg.into(),
    }
}

/// Which address family to try first toward Telegram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpPreference {
    V4,
    V6,
}

/// The whole typed configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub public_host: Option<String>,
    pub state_dir: PathBuf,
    pub default_modes: Modes,
    pub max_connections: usize,
    /// Worker threads of the runtime (0 = one per CPU).
    pub workers: usize,
    pub handshake_timeout: Duration,
    pub idle_timeout: Duration,
    /// After a reload, how long a removed/disabled user's connections may go on.
    pub drain_grace: Duration,
    /// Reload when the config file changes (polled every 2 s).
    pub watch_config: bool,
    /// The handover control socket (`server.handover_socket`); `None` when disabled.
    pub handover_socket: Option<PathBuf>,
    /// How long sessions may finish after SIGTERM or a handover (`server.drain_timeout`).
    pub drain_timeout: Duration,
    pub domains: Vec<String>,
    /// Where rejected connections go by default (`host:port`; default: first domain, port 443).
    pub mask_host: String,
    /// Per-SNI mask hosts (lowercase domain → `host:port`).
    pub mask_hosts: std::collections::HashMap<String, String>,
    /// Front rejected connections (true) or close them silently (false).
    pub fronting: bool,
    /// Open the mask connection this long after a client connects, unless the
    /// handshake decided first (`None`: only when fronting).
    pub mask_preconnect: Option<Duration>,
    /// A ClientHello with an unknown SNI is fronted (true) or closed (false).
    pub unknown_sni_mask: bool,
    /// Learn the mask site's answer (sizes, extension order) and imitate it.
    pub learn_profile: bool,
    /// How many mask connections may be open at once; past it, held silent.
    pub mask_budget: mask::MaskBudgetConfig,
    pub profile_interval: Duration,
    pub max_past: Duration,
    pub max_future: Duration,
    pub replay_cache_size: usize,
    pub fake_cert_len: (u32, u32),
    pub prefer: IpPreference,
    pub connect_timeout: Duration,
    pub dcs: DcTable,
    /// Users from the file or flags; empty means "use the generated default user".
    pub users: Vec<User>,
    pub log_level: String,
    pub log_json: bool,
    /// Middle-proxy (ME) mode and the promotion tag (`[me]`).
    pub me: MeConfig,
    /// The admin (metrics, health) listener; `None` when `admin.enabled = false`.
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token for `POST /reload` on the admin listener (`None`: disabled).
    pub admin_token: Option<AdminToken>,
    /// Failed admin authentications an address may make a minute.
    pub admin_auth_failures: u32,
    /// `[admin] tls_cert` and `tls_key`: the admin listener speaks HTTPS.
    pub admin_tls: Option<(PathBuf, PathBuf)>,
    /// State shared with other nodes (`[shared]`; `None`: this node alone).
    pub shared: Option<crate::shared::SharedConfig>,
    /// The proxy-to-proxy link: this node as an exit, or as a bridge.
    pub link: crate::link::LinkConfig,
    /// Security policy (`[policy]`).
    pub policy: PolicyConfig,
    /// Happy eyeballs: how long a DC target may go unanswered before the
    /// next one starts alongside it (`upstream.attempt_delay`).
    pub attempt_delay: Duration,
    /// Passes over a DC whose every target failed (`upstream.retries`, `retry_backoff`).
    pub retry: crate::upstream::Retry,
    /// DC connections through Telegram's WebSocket endpoints (`[upstream.websocket]`).
    pub ws_upstream: crate::net::ws_upstream::WsUpstreamConfig,
    /// Connections opened ahead to DC targets (`[upstream.pool]`).
    pub warm: crate::net::warm::WarmConfig,
    /// How a DC's targets are chosen, and their circuit breakers.
    pub balance: crate::net::balance::BalanceConfig,
    /// SOCKS5 proxies (in order) for direct-mode DC connections (`upstream.socks5`).
    pub socks5: Vec<crate::net::connect::Socks5Hop>,
    /// Named SOCKS5 chains that DC targets name with `via` (`[upstream.chains]`).
    pub chains:
        std::collections::BTreeMap<std::sync::Arc<str>, Vec<crate::net::connect::Socks5Hop>>,
    /// PROXY protocol from trusted front ends (`[proxy_protocol]`).
    pub proxy_protocol: crate::net::proxy_protocol::ProxyProtocolConfig,
    /// WebSocket listeners (`[websocket]`).
    pub websocket: crate::net::websocket::WsConfig,
    /// The own site (`[site]`; off without hosts).
    pub site: crate::web::SiteConfig,
    /// Secrets in an HSM (`[hsm]`): users' `secret = "hsm:LABEL"`.
    pub hsm: Option<crate::hsm::HsmConfig>,
}

/// The admin API token: compared in constant time, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// The token itself (for the token store, which keeps only its hash).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `given` is this token (constant time in the token's length).
    pub fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// `server.drain_timeout` when not set.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// The handover socket's file name in the state directory (the default path).
pub const HANDOVER_SOCKET_NAME: &str = "mtgate.handover.sock";

/// The default client port.
pub const DEFAULT_PORT: u16 = 443;
/// The default FakeTLS domain: a big, always-on HTTPS site. Set your own.
pub const DEFAULT_DOMAIN: &str = "www.google.com";

impl Config {
    /// The mask host for connections whose SNI is unknown or absent.
    pub fn default_mask_host(&self) -> String {
        self.mask_host.clone()
    }

    /// Reads and parses a file.
    pub fn load(path: &std::path::Path, ov: &Overrides) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, ov).map_err(|e| match e {
            ConfigError::At { at, key, msg, .. } => ConfigError::At {
                file: Some(path.display().to_string()),
                at,
                key,
                msg,
            },
            e => e,
        })
    }

    /// Parses TOML text, applies overrides, validates: the startup path.
    pub fn from_toml(text: &str, ov: &Overrides) -> Result<Self, ConfigError> {
        let de = toml::Deserializer::new(text);
        let mut raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.message().trim().replace('\n', "; ");
            let at = inner.span().map(|s| locate::Location::of(text, s.start));
            let key = if path == "." {
                at.as_ref()
                    .and_then(|a| locate::key_at(text, a.line))
                    .unwrap_or_else(|| "config".into())
            } else {
                path
            };
            match at {
                Some(at) => ConfigError::At {
                    file: None,
                    at,
                    key,
                    msg,
                },
                None => invalid(key, msg),
            }
        })?;
        apply_overrides(&mut raw, ov)?;
        Self::from_raw(raw)
    }

    /// Defaults with overrides only (no file).
    pub fn from_overrides(ov: &Overrides) -> Result<Self, ConfigError> {
        Self::from_toml("", ov)
    }

    fn from_raw(raw: RawConfig) -> Result<Self, ConfigError> {
        let s = raw.server;
        let listen = match s.listen {
            None => vec![SocketAddr::from(([0u16; 8], DEFAULT_PORT))],
            Some(l) if l.is_empty() => {
                return Err(invalid("server.listen", "at least one address is required"))
            }
            Some(l) => l
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    a.parse::<SocketAddr>().map_err(|_| {
                        invalid(
                            format!("server.listen[{i}]"),
                            format!("`{a}` is not an ip:port address"),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let default_modes = Modes::parse(
            "server.default_modes",
            &s.default_modes.unwrap_or_else(|| vec!["ee".into()]),
        )?;
        let max_connections = s.max_connections.unwrap_or(65_536);
        if max_connections == 0 {
            return Err(invalid("server.max_connections", "must be at least 1"));
        }
        let handshake_timeout = s.handshake_timeout.unwrap_or(Duration::from_secs(10));
        let idle_timeout = s.idle_timeout.unwrap_or(Duration::from_secs(300));
        for (k, d) in [
            ("server.handshake_timeout", handshake_timeout),
            ("server.idle_timeout", idle_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(k, "must be greater than zero"));
            }
        }
        let drain_timeout = s.drain_timeout.unwrap_or(DEFAULT_DRAIN_TIMEOUT);
        let state_dir = s
            .state_dir
            .clone()
            .map(PathBuf::from)
            .unwrap_or_else(default_state_dir);
        let handover_socket = match s.handover_socket.as_deref() {
            None => Some(state_dir.join(HANDOVER_SOCKET_NAME)),
            Some("") => None,
            Some(p) if p.len() > 100 => {
                return Err(invalid(
                    "server.handover_socket",
                    "path too long for a Unix socket (at most 100 bytes)",
                ))
            }
            Some(p) => Some(PathBuf::from(p)),
        };
        if let Some(h) = &s.public_host {
            if h.is_empty() || h.contains(['/', '?', '&', ' ']) {
                return Err(invalid(
                    "server.public_host",
                    "must be a host name or IP address",
                ));
            }
        }

        let site =
            crate::web::SiteConfig::from_raw(raw.site).map_err(|(key, msg)| invalid(key, msg))?;
        let hsm = match raw.hsm {
            None => None,
            Some(h) => {
                if h.module.trim().is_empty() {
                    return Err(invalid("hsm.module", "the path of the PKCS#11 module"));
                }
                if h.token.trim().is_empty() {
                    return Err(invalid("hsm.token", "the token's label"));
                }
                let mode = match h.mode.as_deref() {
                    None | Some("digest") => crate::hsm::HsmMode::Digest,
                    Some("unwrap") => crate::hsm::HsmMode::Unwrap,
                    Some(_) => return Err(invalid("hsm.mode", "`digest` or `unwrap`")),
                };
                Some(crate::hsm::HsmConfig {
                    module: h.module.into(),
                    token: h.token,
                    pin_file: h.pin_file.map(Into::into),
                    mode,
                })
            }
        };
        let t = raw.tls;
        // With an own site, FakeTLS clients name its hosts by default.
        let domains: Vec<String> = t
            .domains
            .or_else(|| site.enabled().then(|| site.hosts.clone()))
            .unwrap_or_else(|| vec![DEFAULT_DOMAIN.into()])
            .into_iter()
            .map(|d| d.to_ascii_lowercase())
            .collect();
        if domains.is_empty() {
            return Err(invalid("tls.domains", "at least one domain is required"));
        }
        for (i, d) in domains.iter().enumerate() {
            validate_domain(d).map_err(|e| invalid(format!("tls.domains[{i}]"), e.to_string()))?;
        }
        let mask_host = t
            .mask_host
            .clone()
            .unwrap_or_else(|| format!("{}:443", domains[0]));
        crate::dc::check_host_port(&mask_host).map_err(|e| invalid("tls.mask_host", e))?;
        let mut mask_hosts = std::collections::HashMap::new();
        for (d, hp) in t.mask_hosts.clone().unwrap_or_default() {
            let key = format!("tls.mask_hosts.{d}");
            validate_domain(&d).map_err(|e| invalid(&key, e.to_string()))?;
            crate::dc::check_host_port(&hp).map_err(|e| invalid(&key, e))?;
            mask_hosts.insert(d.to_ascii_lowercase(), hp);
        }
        let unknown_sni_mask = match t.unknown_sni.as_deref() {
            None | Some("mask") => true,
            Some("close") => false,
            Some(o) => {
                return Err(invalid(
                    "tls.unknown_sni",
                    format!("`{o}`: use mask or close"),
                ))
            }
        };
        let mask_budget = mask::MaskBudgetConfig::from_raw(
            t.mask_budget,
            t.mask_budget_per_source,
            t.mask_hold_timeout,
            max_connections,
        )?;
        let fake_cert_len = t.fake_cert_len.map(|[a, b]| (a, b)).unwrap_or((2500, 4700));
        if fake_cert_len.0 > fake_cert_len.1 || fake_cert_len.1 > 16_000 || fake_cert_len.0 < 64 {
            return Err(invalid(
                "tls.fake_cert_len",
                "want [min, max] with 64 <= min <= max <= 16000",
            ));
        }
        let replay_cache_size = t.replay_cache_size.unwrap_or(1 << 18);
        if replay_cache_size == 0 {
            return Err(invalid("tls.replay_cache_size", "must be at least 1"));
        }

        let Upstream {
            prefer,
            connect_timeout,
            socks5,
            chains,
            balance,
            attempt_delay,
            retry,
            warm,
            ws_upstream,
            dcs,
        } = upstream::parse(raw.upstream, &raw.dcs)?;

        let (users, user_ad_tags) = users::parse(raw.users, default_modes)?;
        let me = MeConfig::from_raw(raw.me, user_ad_tags)?;
        let policy = PolicyConfig::from_raw(raw.policy)?;
        let proxy_protocol =
            crate::net::proxy_protocol::ProxyProtocolConfig::from_raw(raw.proxy_protocol)
                .map_err(|(key, msg)| invalid(key, msg))?;
        let websocket = crate::net::websocket::WsConfig::from_raw(raw.websocket)
            .map_err(|(key, msg)| invalid(key, msg))?;
        let admin_listen = admin_listen(&raw.admin, &listen)?;
        let admin_token = match raw.admin.token {
            None => None,
            Some(t) if t.len() < 16 || t.chars().any(|c| c.is_whitespace() || c.is_control()) => {
                return Err(invalid(
                    "admin.token",
                    "use at least 16 printable characters without spaces",
                ))
            }
            Some(t) => Some(AdminToken(t)),
        };
        let admin_auth_failures = raw
            .admin
            .auth_failures_per_minute
            .unwrap_or(crate::control::auth::MAX_FAILURES);
        if !(1..=100_000).contains(&admin_auth_failures) {
            return Err(invalid("admin.auth_failures_per_minute", "use 1..100000"));
        }
        let shared =
            crate::shared::SharedConfig::from_raw(raw.shared).map_err(|(k, m)| invalid(k, m))?;
        let link = crate::link::LinkConfig::from_raw(raw.link).map_err(|(k, m)| invalid(k, m))?;
        if link.bridge.as_ref().is_some_and(|b| !b.forward) && me.enabled {
            return Err(invalid(
                "link.bridge",
                "a link in mode `dc` carries direct-mode DC connections: turn [me] off on this bridge, or use mode = \"forward\" and run [me] on the exit",
            ));
        }
        let admin_tls = match (raw.admin.tls_cert, raw.admin.tls_key) {
            (None, None) => None,
            (Some(c), Some(k)) => Some((PathBuf::from(c), PathBuf::from(k))),
            _ => {
                return Err(invalid(
                    "admin.tls_cert",
                    "set both tls_cert and tls_key (PEM files), or neither",
                ))
            }
        };

        let log_level = raw.log.level.unwrap_or_else(|| "info".into());
        if !["error", "warn", "info", "debug", "trace"].contains(&log_level.as_str()) {
            return Err(invalid(
                "log.level",
                "use error, warn, info, debug or trace",
            ));
        }
        let log_json = match raw.log.format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(o) => return Err(invalid("log.format", format!("`{o}`: use text or json"))),
        };

        Ok(Config {
            listen,
            // Links name the site's host when there is one.
            public_host: s.public_host.or_else(|| site.hosts.first().cloned()),
            state_dir,
            default_modes,
            max_connections,
            workers: s.workers.unwrap_or(0),
            handshake_timeout,
            idle_timeout,
            drain_grace: s.drain_grace.unwrap_or(Duration::from_secs(30)),
            watch_config: s.watch_config.unwrap_or(true),
            handover_socket,
            drain_timeout,
            domains,
            mask_host,
            mask_hosts,
            fronting: t.fronting.unwrap_or(true),
            mask_preconnect: t.mask_preconnect.unwrap_or(true).then(|| {
                t.mask_preconnect_delay
                    .unwrap_or(Duration::from_millis(200))
            }),
            unknown_sni_mask,
            learn_profile: t.learn_profile.unwrap_or(true),
            mask_budget,
            profile_interval: t
                .profile_interval
                .unwrap_or(Duration::from_secs(3600))
                .max(Duration::from_secs(10)),
            max_past: t.max_clock_skew_past.unwrap_or(Duration::from_secs(600)),
            max_future: t.max_clock_skew_future.unwrap_or(Duration::from_secs(120)),
            replay_cache_size,
            fake_cert_len,
            prefer,
            connect_timeout,
            socks5,
            chains,
            balance,
            warm,
            attempt_delay,
            retry,
            ws_upstream,
            dcs,
            users,
            log_level,
            log_json,
            me,
            admin_listen,
            admin_token,
            admin_auth_failures,
            admin_tls,
            shared,
            link,
            policy,
            proxy_protocol,
            websocket,
            site,
            hsm,
        })
    }
}

/// `[admin]`: the admin address, refused if it would share a client listener's port.
fn admin_listen(
    a: &raw::RawAdmin,
    listen: &[SocketAddr],
) -> Result<Option<SocketAddr>, ConfigError> {
    if !a.enabled.unwrap_or(true) {
        return Ok(None);
    }
    let text = a.listen.as_deref().unwrap_or(crate::admin::DEFAULT_LISTEN);
    let addr: SocketAddr = text.parse().map_err(|_| {
        invalid(
            "admin.listen",
            format!("`{text}` is not an ip:port address"),
        )
    })?;
    let clash = listen.iter().any(|l| {
        l.port() != 0
            && l.port() == addr.port()
            && (l.ip() == addr.ip() || l.ip().is_unspecified() || addr.ip().is_unspecified())
    });
    if clash {
        return Err(invalid(
            "admin.listen",
            format!("`{addr}` overlaps a server.listen address"),
        ));
    }
    Ok(Some(addr))
}

/// Where state (the generated secret) lives when `server.state_dir` is not set:
/// systemd's `$STATE_DIRECTORY`, else `$XDG_STATE_HOME/mtgate`, else
/// `~/.local/state/mtgate`, else `./mtgate-state`.
pub fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("STATE_DIRECTORY") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(d).join("mtgate");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".local/state/mtgate");
    }
    PathBuf::from("mtgate-state")
}

#[cfg(test)]
mod tests;
