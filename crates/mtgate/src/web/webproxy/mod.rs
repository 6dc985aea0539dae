//! Telegram's WEB proxy type (`tg://webproxy`, DESIGN §6 `web/`), served
//! from the own site: the bridge page, the session API and the carriers.
//! The pure parts (capability, frames) are `mtgate_proto::webproxy`.
//!
//! This room answers only requests that prove themselves: an exact bridge
//! query carrying a user's capability, API calls with a live token. Every
//! other request, including each one that fails to authenticate, is left
//! to the site, answered before its body is read, so carrier paths and site
//! paths look the same to a prober. Tokens, capabilities and subprotocols
//! are never logged.

pub mod carrier_https;
pub mod carrier_ws;
pub mod mux;
mod page;
mod registry;
pub mod routes;
mod tokens;

pub use registry::{Credential, Registry, WebMode};
pub use tokens::{Tokens, BOOTSTRAP_LIFETIME};

/// The WEB proxy's counters (`/metrics`).
#[derive(Debug, Default)]
pub struct Stats {
    pub sessions_opened: std::sync::atomic::AtomicU64,
    pub streams_opened: std::sync::atomic::AtomicU64,
    /// Streams open now (every carrier's).
    pub streams_open: std::sync::atomic::AtomicU64,
    /// Streams refused, by [`REFUSAL_REASONS`]: over `max_streams`, a
    /// reused id, data past the stream's credit.
    pub streams_refused: [std::sync::atomic::AtomicU64; 3],
    pub bytes_up: std::sync::atomic::AtomicU64,
    pub bytes_down: std::sync::atomic::AtomicU64,
    /// Session creations refused at capacity (`503`).
    pub full: std::sync::atomic::AtomicU64,
}

/// The `reason` label of `mtgate_webproxy_streams_refused_total`, by index.
pub const REFUSAL_REASONS: [&str; 3] = ["max_streams", "reused_id", "credit"];
pub const REFUSED_MAX_STREAMS: usize = 0;
pub const REFUSED_REUSED_ID: usize = 1;
pub const REFUSED_CREDIT: usize = 2;

/// How the room hands streams to the proxy (set by the server at start).
pub struct Handoff {
    pub sink: std::sync::Arc<dyn mux::StreamSink>,
    pub pairs: std::sync::Arc<crate::net::websocket::Pairs>,
}

/// What a reload may change: the settings, the site hosts and the
/// capabilities of the users.
#[derive(Debug)]
pub struct Room {
    pub cfg: WebProxyConfig,
    pub hosts: Vec<String>,
    pub registry: Registry,
}

impl Room {
    /// The room for `cfg` on `hosts`, with `users`' capabilities.
    pub fn new<'a>(
        cfg: WebProxyConfig,
        hosts: &[String],
        users: impl IntoIterator<Item = (&'a str, &'a [u8; 16])>,
    ) -> Self {
        let registry = Registry::build(users, hosts, cfg.path.as_deref());
        Self {
            cfg,
            hosts: hosts.to_vec(),
            registry,
        }
    }
}

use mtgate_proto::webproxy::check_base_path;

/// Which carrier the bridge page uses between the page and mtgate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Carrier {
    Https,
    HttpsLanes,
    WebSocket,
    WebSocketLanes,
}

impl Carrier {
    /// The `X-Carrier-Mode` word.
    pub fn label(self) -> &'static str {
        match self {
            Self::Https => "https",
            Self::HttpsLanes => "https-lanes",
            Self::WebSocket => "websocket",
            Self::WebSocketLanes => "websocket-lanes",
        }
    }
}

/// `[site.webproxy]`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebProxyConfig {
    /// The base path of a v2 deployment (`https://HOST/PATH/?bridge=…`).
    pub path: Option<String>,
    pub carrier: Carrier,
    /// Sessions open at once (past it: `503 Retry-After: 1`).
    pub max_sessions: usize,
    /// Streams per session.
    pub max_streams: usize,
}

/// `[site.webproxy]` as written.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebProxy {
    pub enabled: Option<bool>,
    pub path: Option<String>,
    pub carrier: Option<String>,
    pub max_sessions: Option<usize>,
    pub max_streams: Option<usize>,
}

impl WebProxyConfig {
    /// Checks `[site.webproxy]` (`None` when off); an error names the key.
    pub fn from_raw(raw: RawWebProxy) -> Result<Option<Self>, (String, String)> {
        let key = |k: &str| format!("site.webproxy.{k}");
        if !raw.enabled.unwrap_or(false) {
            return Ok(None);
        }
        if let Some(p) = &raw.path {
            check_base_path(p).map_err(|e| (key("path"), e.to_owned()))?;
        }
        let carrier = match raw.carrier.as_deref() {
            None | Some("websocket") => Carrier::WebSocket,
            Some("https") => Carrier::Https,
            Some("https-lanes") => Carrier::HttpsLanes,
            Some("websocket-lanes") => Carrier::WebSocketLanes,
            Some(o) => {
                return Err((
                    key("carrier"),
                    format!("`{o}`: use websocket, websocket-lanes, https or https-lanes"),
                ))
            }
        };
        let max_sessions = raw.max_sessions.unwrap_or(1024);
        let max_streams = raw.max_streams.unwrap_or(64);
        if !(1..=65_536).contains(&max_sessions) {
            return Err((key("max_sessions"), "use 1..65536".into()));
        }
        if !(1..=4096).contains(&max_streams) {
            return Err((key("max_streams"), "use 1..4096".into()));
        }
        Ok(Some(Self {
            path: raw.path,
            carrier,
            max_sessions,
            max_streams,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config() {
        assert!(WebProxyConfig::from_raw(RawWebProxy::default())
            .unwrap()
            .is_none());
        let on = WebProxyConfig::from_raw(RawWebProxy {
            enabled: Some(true),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        assert_eq!(on.carrier, Carrier::WebSocket);
        assert_eq!(on.path, None);
        let bad = |r: RawWebProxy| WebProxyConfig::from_raw(r).unwrap_err().0;
        assert_eq!(
            bad(RawWebProxy {
                enabled: Some(true),
                path: Some("/x".into()),
                ..Default::default()
            }),
            "site.webproxy.path"
        );
        assert_eq!(
            bad(RawWebProxy {
                enabled: Some(true),
                carrier: Some("carrier-pigeon".into()),
                ..Default::default()
            }),
            "site.webproxy.carrier"
        );
    }
}
