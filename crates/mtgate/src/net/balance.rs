//! Choosing among a DC's upstream targets: a strategy, weights, and a
//! circuit breaker per target fed by every connect (passive) and by active
//! checks of the targets it took out.
//!
//! [`Balancer::order`] gives, for one connection, the order in which its
//! targets are tried (the session tries the next one only when a connect
//! failed, before any client byte was forwarded): the healthy targets of the
//! preferred family in the strategy's order, then those of the other family,
//! then the ejected ones as a last resort (a DC with every target ejected is
//! still tried rather than refused). [`Balancer::record`] feeds the breaker:
//! `failures` consecutive failures eject a target for a cooldown that
//! doubles with each ejection up to `max_cooldown`; after the cooldown one
//! connection is let through (half-open) and a success brings it back. The
//! state is shared across reloads and bounded by the configured targets.

use crate::config::IpPreference;
use crate::net::target::Target;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// How the first target of a connection is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    /// The listed order: the first healthy target takes everything.
    #[default]
    Failover,
    /// Weighted round-robin.
    RoundRobin,
    /// The fewest open connections per unit of weight.
    LeastConnections,
    /// A hash of the client's address, weighted: a client keeps its target
    /// while the healthy set is unchanged.
    ClientHash,
}

impl Strategy {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "failover" => Self::Failover,
            "round_robin" => Self::RoundRobin,
            "least_connections" => Self::LeastConnections,
            "client_hash" => Self::ClientHash,
            _ => return None,
        })
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Failover => "failover",
            Self::RoundRobin => "round_robin",
            Self::LeastConnections => "least_connections",
            Self::ClientHash => "client_hash",
        }
    }
}

/// `[upstream]` balancing and health settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BalanceConfig {
    pub strategy: Strategy,
    /// Per-target weights (1 when not listed; 0 is not allowed).
    pub weights: HashMap<Target, u32>,
    /// Consecutive failures that eject a target.
    pub failures: u32,
    /// The first ejection's length; each further one doubles it.
    pub cooldown: Duration,
    pub max_cooldown: Duration,
    /// How often ejected targets are checked actively (zero: never).
    pub check_interval: Duration,
}

impl Default for BalanceConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::Failover,
            weights: HashMap::new(),
            failures: 3,
            cooldown: Duration::from_secs(10),
            max_cooldown: Duration::from_secs(300),
            check_interval: Duration::from_secs(10),
        }
    }
}

/// One target's counters.
#[derive(Debug, Default)]
struct TargetState {
    /// Connections open through it now (least-connections).
    active: AtomicU32,
    /// Consecutive failures.
    failures: AtomicU32,
    /// Ejections in a row (the cooldown's exponent).
    ejections: AtomicU32,
    /// Ejected until this many ms after the balancer's epoch (0: in service).
    until_ms: AtomicU64,
}

/// A target's place in service, as [`Balancer::status`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    InService,
    /// Ejected for this long still.
    Ejected(Duration),
}

/// What a recorded result changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    None,
    /// The target was taken out for this long.
    Ejected(Duration),
    /// The target is back in service.
    Restored,
}

/// The balancer: settings and per-target state. Shared across reloads.
#[derive(Debug)]
pub struct Balancer {
    config: RwLock<BalanceConfig>,
    targets: RwLock<HashMap<Target, Arc<TargetState>>>,
    rr: AtomicU64,
    epoch: Instant,
}

/// A connection open through a target (least-connections counts these).
#[derive(Debug)]
pub struct Lease(Arc<TargetState>);

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

impl Balancer {
    /// A balancer for `targets` (every DC target).
    pub fn new(config: BalanceConfig, targets: impl IntoIterator<Item = Target>) -> Arc<Self> {
        let b = Arc::new(Self {
            config: RwLock::new(config),
            targets: RwLock::default(),
            rr: AtomicU64::new(0),
            epoch: Instant::now(),
        });
        b.set_targets(targets);
        b
    }

    /// New settings and targets (a reload): known targets keep their state,
    /// gone ones are forgotten.
    pub fn reconfigure(&self, config: BalanceConfig, targets: impl IntoIterator<Item = Target>) {
        if let Ok(mut c) = self.config.write() {
            *c = config;
        }
        self.set_targets(targets);
    }

    fn set_targets(&self, targets: impl IntoIterator<Item = Target>) {
        let Ok(mut map) = self.targets.write() else {
            return;
        };
        let mut next = HashMap::new();
        for t in targets {
            let state = map.remove(&t).unwrap_or_default();
            next.insert(t, state);
        }
        *map = next;
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn state(&self, t: &Target) -> Option<Arc<TargetState>> {
        self.targets.read().ok()?.get(t).cloned()
    }

    fn weight(cfg: &BalanceConfig, t: &Target) -> u64 {
        u64::from(cfg.weights.get(t).copied().unwrap_or(1).max(1))
    }

    /// The order in which to try `targets` for a client at `client`. A
    /// target without an address of its own (a WebSocket endpoint) counts
    /// as of the preferred family.
    pub fn order(&self, targets: &[Target], prefer: IpPreference, client: IpAddr) -> Vec<Target> {
        let Ok(cfg) = self.config.read() else {
            return targets.to_vec();
        };
        let now = self.now_ms();
        let mut healthy = [Vec::new(), Vec::new()];
        let mut trials = [Vec::new(), Vec::new()];
        let mut ejected = Vec::new();
        for a in targets {
            let family = usize::from(a.addr().is_some_and(|a| {
                !matches!(
                    (prefer, a.is_ipv6()),
                    (IpPreference::V6, true) | (IpPreference::V4, false)
                )
            }));
            let a = a.clone();
            let Some(s) = self.state(&a) else {
                healthy[family].push(a);
                continue;
            };
            let until = s.until_ms.load(Relaxed);
            if until == 0 {
                healthy[family].push(a);
            } else if now >= until
                && s.until_ms
                    .compare_exchange(until, now + half_open_ms(&cfg), Relaxed, Relaxed)
                    .is_ok()
            {
                // Past its cooldown: this connection is its one trial
                // (half-open), tried first; others keep away meanwhile.
                trials[family].push(a);
            } else {
                ejected.push(a);
            }
        }
        let mut out = Vec::with_capacity(targets.len());
        for (group, trial) in healthy.iter_mut().zip(&mut trials) {
            self.arrange(&cfg, group, client);
            out.append(trial);
            out.append(group);
        }
        out.extend(ejected);
        out
    }

    /// Puts the strategy's first choice first (the rest keep their order).
    fn arrange(&self, cfg: &BalanceConfig, group: &mut [Target], client: IpAddr) {
        if group.len() < 2 {
            return;
        }
        let pick = match cfg.strategy {
            Strategy::Failover => return,
            Strategy::RoundRobin => weighted_pick(cfg, group, self.rr.fetch_add(1, Relaxed)),
            Strategy::ClientHash => {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                client.hash(&mut h);
                weighted_pick(cfg, group, h.finish())
            }
            Strategy::LeastConnections => {
                // Ties rotate, so equal targets share the load.
                let start = self.rr.fetch_add(1, Relaxed) as usize % group.len();
                (0..group.len())
                    .map(|i| (start + i) % group.len())
                    .min_by_key(|&i| {
                        let active = self
                            .state(&group[i])
                            .map_or(0, |s| u64::from(s.active.load(Relaxed)));
                        // active / weight, compared without division.
                        (active * 1_000_000) / Self::weight(cfg, &group[i])
                    })
                    .unwrap_or(0)
            }
        };
        group[..=pick].rotate_right(1);
    }

    /// Counts a connection open through `target` until the lease drops.
    pub fn lease(&self, target: &Target) -> Option<Lease> {
        let s = self.state(target)?;
        s.active.fetch_add(1, Relaxed);
        Some(Lease(s))
    }

    /// A lease on `target` when the strategy counts connections (least
    /// connections); `None` otherwise, so other strategies keep nothing per
    /// connection.
    pub fn lease_for_strategy(&self, target: &Target) -> Option<Lease> {
        let counts = self
            .config
            .read()
            .map(|c| c.strategy == Strategy::LeastConnections)
            .unwrap_or(false);
        if counts {
            self.lease(target)
        } else {
            None
        }
    }

    /// Feeds the breaker with one connect's result.
    pub fn record(&self, target: &Target, ok: bool) -> Change {
        let Some(s) = self.state(target) else {
            return Change::None;
        };
        let Ok(cfg) = self.config.read() else {
            return Change::None;
        };
        if ok {
            s.failures.store(0, Relaxed);
            s.ejections.store(0, Relaxed);
            return if s.until_ms.swap(0, Relaxed) != 0 {
                Change::Restored
            } else {
                Change::None
            };
        }
        let failures = s.failures.fetch_add(1, Relaxed) + 1;
        let until = s.until_ms.load(Relaxed);
        // A failed half-open trial, or enough failures in a row, ejects.
        if failures >= cfg.failures.max(1) || until != 0 {
            let n = s.ejections.fetch_add(1, Relaxed).min(16);
            let cooldown = cfg
                .cooldown
                .saturating_mul(1u32 << n)
                .min(cfg.max_cooldown.max(cfg.cooldown));
            let ms = u64::try_from(cooldown.as_millis()).unwrap_or(u64::MAX);
            s.until_ms
                .store(self.now_ms().saturating_add(ms).max(1), Relaxed);
            s.failures.store(0, Relaxed);
            return Change::Ejected(cooldown);
        }
        Change::None
    }

    /// Where `target` stands now.
    pub fn status(&self, target: &Target) -> Status {
        let until = self.state(target).map_or(0, |s| s.until_ms.load(Relaxed));
        let now = self.now_ms();
        if until == 0 || until <= now {
            Status::InService
        } else {
            Status::Ejected(Duration::from_millis(until - now))
        }
    }

    /// Targets taken out of service now.
    pub fn ejected(&self) -> Vec<Target> {
        let now = self.now_ms();
        self.targets
            .read()
            .map(|m| {
                m.iter()
                    .filter(|(_, s)| {
                        let u = s.until_ms.load(Relaxed);
                        u != 0 && u > now
                    })
                    .map(|(a, _)| a.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The active-check interval (zero: no active checks).
    pub fn check_interval(&self) -> Duration {
        self.config
            .read()
            .map(|c| c.check_interval)
            .unwrap_or_default()
    }

    /// An active check of an ejected target succeeded: back in service now.
    pub fn restore(&self, target: &Target) -> Change {
        self.record(target, true)
    }
}

/// How long one half-open trial holds the target for itself.
fn half_open_ms(cfg: &BalanceConfig) -> u64 {
    u64::try_from(cfg.cooldown.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The index that `n` falls on when each target owns `weight` slots.
fn weighted_pick(cfg: &BalanceConfig, group: &[Target], n: u64) -> usize {
    let total: u64 = group.iter().map(|t| Balancer::weight(cfg, t)).sum();
    let mut slot = n % total.max(1);
    for (i, t) in group.iter().enumerate() {
        let w = Balancer::weight(cfg, t);
        if slot < w {
            return i;
        }
        slot -= w;
    }
    0
}

#[cfg(test)]
mod tests;

/// `[upstream.health]` as written.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealth {
    pub failures: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    pub cooldown: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub max_cooldown: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub check_interval: Option<Duration>,
}

impl BalanceConfig {
    /// Checks `upstream.balance`, `upstream.weights` and `[upstream.health]`;
    /// an error names the key and what is wrong.
    pub fn from_raw(
        balance: Option<&str>,
        weights: &std::collections::BTreeMap<String, u32>,
        health: RawHealth,
    ) -> Result<Self, (String, String)> {
        let d = Self::default();
        let strategy = match balance {
            None => d.strategy,
            Some(s) => Strategy::parse(s).ok_or_else(|| {
                (
                    "upstream.balance".to_owned(),
                    format!("`{s}`: use failover, round_robin, least_connections or client_hash"),
                )
            })?,
        };
        let mut w = HashMap::new();
        for (k, v) in weights {
            let key = format!("upstream.weights.\"{k}\"");
            let addr: SocketAddr = k
                .parse()
                .map_err(|_| (key.clone(), format!("`{k}` is not an ip:port address")))?;
            if !(1..=1000).contains(v) {
                return Err((key, "a weight is 1..1000".into()));
            }
            w.insert(Target::Addr(addr), *v);
        }
        let failures = health.failures.unwrap_or(d.failures);
        if !(1..=1000).contains(&failures) {
            return Err(("upstream.health.failures".into(), "use 1..1000".into()));
        }
        let cooldown = health.cooldown.unwrap_or(d.cooldown);
        let max_cooldown = health.max_cooldown.unwrap_or(d.max_cooldown.max(cooldown));
        if cooldown < Duration::from_millis(10) || max_cooldown < cooldown {
            return Err((
                "upstream.health.cooldown".into(),
                "use at least 10ms, and max_cooldown at least cooldown".into(),
            ));
        }
        let check_interval = health.check_interval.unwrap_or(d.check_interval);
        if !check_interval.is_zero() && check_interval < Duration::from_millis(100) {
            return Err((
                "upstream.health.check_interval".into(),
                "use 0 (no active checks) or at least 100ms".into(),
            ));
        }
        Ok(Self {
            strategy,
            weights: w,
            failures,
            cooldown,
            max_cooldown,
            check_interval,
        })
    }
}
