//! Hot reload (issue 6): parse, validate, diff, swap.
//!
//! Triggers: SIGHUP, a change of the config file (polled), and `POST /reload`
//! on the admin listener. A reload reads the file with exactly the code `run`
//! uses; an invalid file changes nothing (the running config stays: that is the
//! rollback) and is logged and counted. A valid one becomes a new
//! [`Runtime`](crate::runtime::Runtime) that new connections get; established
//! connections keep the runtime they started with. Users removed (or whose
//! secret changed, or who were disabled) keep their connections for
//! `server.drain_grace`, then those connections are ended.
//!
//! Settings bound at start (listeners, admin address, workers, state directory,
//! `[me]`) are reported as "restart needed" and keep their running values.

use crate::admin::Metrics;
use crate::config::{Config, ConfigError, Overrides, User};
use crate::events::Event;
use crate::runtime::{Live, Runtime};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("state: {0}")]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    /// The rules made through the admin API could not be taken.
    #[error("managed rules: {0}")]
    Managed(String),
}

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub added: Vec<String>,
    /// Removed, disabled, or given a new secret: drained after the grace time.
    pub drained: Vec<String>,
    /// Kept, with other changes (modes, limits, tags).
    pub changed: Vec<String>,
    /// Settings that differ but only apply after a restart.
    pub restart_needed: Vec<&'static str>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "users added [{}], drained [{}], changed [{}]",
            self.added.join(","),
            self.drained.join(","),
            self.changed.join(",")
        )?;
        if !self.restart_needed.is_empty() {
            write!(
                f,
                "; needs a restart to apply: {}",
                self.restart_needed.join(", ")
            )?;
        }
        Ok(())
    }
}

fn same_user(a: &User, b: &User) -> bool {
    a.secrets == b.secrets && a.modes == b.modes && a.limits == b.limits
}

/// Whether a secret of `old` is gone in `new` (changed or revoked): its
/// sessions are drained. Adding a secret (a rotation) or moving a window
/// drains nothing; a secret past its window is refused to new connections.
fn lost_a_secret(old: &User, new: &User) -> bool {
    old.secrets
        .iter()
        .any(|o| !new.secrets.iter().any(|n| n.key == o.key))
}

/// Compares the running runtime with a new config and its users.
pub fn diff(old: &Runtime, cfg: &Config, users: &[User]) -> Summary {
    let mut s = Summary::default();
    for u in users {
        match old.users.iter().find(|o| o.name == u.name) {
            None => s.added.push(u.name.clone()),
            Some(o) if lost_a_secret(o, u) || !user_enabled(u) && user_enabled(o) => {
                s.drained.push(u.name.clone())
            }
            Some(o) if !same_user(o, u) => s.changed.push(u.name.clone()),
            Some(_) => {}
        }
    }
    for o in &old.users {
        if !users.iter().any(|u| u.name == o.name) {
            s.drained.push(o.name.clone());
        }
    }
    let c = &old.config;
    let checks: [(&'static str, bool); 5] = [
        ("server.listen", c.listen != cfg.listen),
        ("admin.listen", c.admin_listen != cfg.admin_listen),
        ("server.workers", c.workers != cfg.workers),
        ("server.state_dir", c.state_dir != cfg.state_dir),
        ("me", format!("{:?}", c.me) != format!("{:?}", cfg.me)),
    ];
    s.restart_needed = checks.iter().filter(|(_, d)| *d).map(|(k, _)| *k).collect();
    s
}

/// Whether a user may connect at all under its limits.
fn user_enabled(u: &User) -> bool {
    u.limits.enabled
}

/// Reloads on request; shared by the signal handler, the file watcher and the admin API.
pub struct Reloader {
    path: Option<PathBuf>,
    overrides: Overrides,
    live: Arc<Live>,
    metrics: Option<Arc<Metrics>>,
    /// One reload at a time; also the hash of the file text last tried.
    last: Mutex<Option<u64>>,
    /// The last reload's outcome: when (Unix seconds), whether it applied,
    /// and its summary or error.
    outcome: Mutex<Option<(u64, bool, String)>>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("path", &self.path)
            .finish()
    }
}

fn text_hash(t: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

impl Reloader {
    /// `path`: the config file (`None`: flags only — a reload then re-applies them).
    pub fn new(
        path: Option<PathBuf>,
        overrides: Overrides,
        live: Arc<Live>,
        metrics: Option<Arc<Metrics>>,
    ) -> Arc<Self> {
        let first = path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .map(|t| text_hash(&t));
        Arc::new(Self {
            path,
            overrides,
            live,
            metrics,
            last: Mutex::new(first),
            outcome: Mutex::new(None),
        })
    }

    /// Reloads now. On error nothing changes; either way the outcome is emitted
    /// as an [`Event::Reloaded`] (logged and counted).
    pub fn reload(&self) -> Result<Summary, ReloadError> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.live.current();
        let res = self.try_reload(&old, &mut last);
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(match &res {
            Ok(s) => (crate::control::now(), true, s.to_string()),
            Err(e) => (crate::control::now(), false, e.to_string()),
        });
        match &res {
            Ok(s) => old.telemetry.emit(Event::Reloaded {
                ok: true,
                detail: &s.to_string(),
            }),
            Err(e) => old.telemetry.emit(Event::Reloaded {
                ok: false,
                detail: &e.to_string(),
            }),
        }
        res
    }

    fn try_reload(&self, old: &Runtime, last: &mut Option<u64>) -> Result<Summary, ReloadError> {
        let cfg = match &self.path {
            Some(p) => {
                let text = std::fs::read(p).map_err(|source| ConfigError::Read {
                    path: p.display().to_string(),
                    source,
                })?;
                *last = Some(text_hash(&text));
                Config::load(p, &self.overrides)?
            }
            None => Config::from_overrides(&self.overrides)?,
        };
        self.swap_in(old, cfg)
    }

    /// Applies a change of the users or rules managed through the control
    /// plane: the running config with the rules [`crate::control::rules::merge`]
    /// and the users [`crate::state::users_for`] now join, through the same rebuild, swap and drains as a reload
    /// (not emitted as a reload: the control plane records its own entry).
    pub fn apply_managed(&self) -> Result<Summary, ReloadError> {
        let _one = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.live.current();
        let cfg = old.config.clone();
        let summary = self.swap_in(&old, cfg)?;
        tracing::info!(%summary, "managed users and rules applied");
        Ok(summary)
    }

    fn swap_in(&self, old: &Runtime, mut cfg: Config) -> Result<Summary, ReloadError> {
        crate::control::rules::merge(&mut cfg).map_err(|e| ReloadError::Managed(e.to_string()))?;
        let (users, _) = crate::state::users_for(&cfg)?;
        let summary = diff(old, &cfg, &users);
        let grace = cfg.drain_grace;
        // Detach the drain signals of drained users first, so sessions that start
        // after the swap subscribe to fresh ones and are not ended with them.
        let new = Arc::new(old.rebuild(cfg, users)?);
        let detached: Vec<_> = summary
            .drained
            .iter()
            .filter_map(|u| old.drains.detach(u))
            .collect();
        if let Some(m) = &self.metrics {
            m.set_users(new.users.iter().map(|u| u.name.as_str()));
        }
        self.live.swap(new);
        if !detached.is_empty() {
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                for signal in detached {
                    signal.fire();
                }
            });
        }
        Ok(summary)
    }

    /// Reloads when the file's content changes (checked every `interval`).
    pub fn spawn_watcher(
        self: Arc<Self>,
        interval: Duration,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let path = self.path.clone()?;
        Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Ok(text) = tokio::fs::read(&path).await else {
                    continue;
                };
                let h = text_hash(&text);
                let seen = *self.last.lock().unwrap_or_else(|p| p.into_inner());
                if seen != Some(h) {
                    tracing::info!(path = %path.display(), "config file changed; reloading");
                    let _ = self.reload();
                }
            }
        }))
    }
}

impl crate::control::Apply for Reloader {
    fn apply_managed(&self) -> Result<(), String> {
        Reloader::apply_managed(self)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn block(&self, ip: std::net::IpAddr, for_ms: u64) {
        self.live.current().policy.ips().block(ip, for_ms);
    }

    fn unblock(&self, ip: std::net::IpAddr) -> bool {
        self.live.current().policy.ips().unblock(ip)
    }

    fn reload(&self) -> Result<String, String> {
        Reloader::reload(self)
            .map(|s| s.to_string())
            .map_err(|e| e.to_string())
    }

    fn config(&self) -> serde_json::Value {
        let outcome = self
            .outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let file = self.path.as_ref().map(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            let tree = toml::from_str::<toml::Value>(&text)
                .ok()
                .and_then(|v| serde_json::to_value(v).ok())
                .map(redact);
            serde_json::json!({ "path": p.display().to_string(), "settings": tree })
        });
        let rt = self.live.current();
        serde_json::json!({
            "file": file,
            "users": rt.users.len(),
            "listen": rt.config.listen.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "last_reload": outcome.map(|(at, ok, detail)| serde_json::json!({
                "at": at, "ok": ok, "detail": detail,
            })),
        })
    }

    fn reset_quota(&self, user: &str, period_only: bool) -> Result<bool, String> {
        let policy = self.live.current().policy.clone();
        if !policy.users().reset_usage(user, period_only) {
            return Ok(false);
        }
        policy.save().map(|()| true).map_err(|e| e.to_string())
    }
}

/// The keys whose values are never shown (`secret`, `token`, `ad_tag` and
/// any key naming a password or a private key).
fn secret_key(k: &str) -> bool {
    matches!(k, "secret" | "token" | "ad_tag" | "password" | "key")
        || k.ends_with("_token")
        || k.ends_with("password")
}

/// `v` with every secret value replaced by `"<redacted>"`.
fn redact(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let v = if secret_key(&k) {
                        Value::String("<redacted>".into())
                    } else {
                        redact(v)
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(redact).collect()),
        // Credentials in a URL (`socks5://user:pass@host`).
        Value::String(s) => match s.split_once("://") {
            Some((scheme, rest))
                if rest
                    .split('/')
                    .next()
                    .is_some_and(|auth| auth.contains('@')) =>
            {
                let host = rest.split_once('@').map_or(rest, |(_, h)| h);
                Value::String(format!("{scheme}://<redacted>@{host}"))
            }
            _ => Value::String(s),
        },
        other => other,
    }
}

#[cfg(test)]
mod redact_tests {
    #[test]
    fn secrets_are_never_shown() {
        let v = serde_json::json!({
            "admin": { "token": "t0ps3cret", "listen": "127.0.0.1:9090" },
            "users": { "alice": { "secret": "0011", "secrets": [{ "secret": "2233" }], "ad_tag": "aa" } },
            "site": { "key": "/etc/k.pem" },
            "upstream": { "socks5": ["socks5://u:p@h:1"] },
        });
        let r = super::redact(v).to_string();
        for s in ["t0ps3cret", "0011", "2233", "\"aa\"", "/etc/k.pem", "u:p"] {
            assert!(!r.contains(s), "{s} shown in {r}");
        }
        assert!(
            r.contains("127.0.0.1:9090") && r.contains("socks5://<redacted>@h:1"),
            "{r}"
        );
    }
}
