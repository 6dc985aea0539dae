//! The policy engine: the one interface the session sees. It combines the
//! tables ([`Acl`], [`GeoPolicy`], [`IpTable`], [`UserTable`]), applies each
//! policy's [`Mode`] (monitor only reports, enforce refuses), chooses what a
//! refused client sees, and owns the state file that carries usage, blocks
//! and reputation across reloads and restarts.
//!
//! It lives in the runtime's shared part: a reload calls [`Policy::prepare`]
//! (reads list files and the geo database; an error refuses the reload) and
//! then [`Policy::apply`], which keeps every counter.

use super::acl::{canonical, Acl, Level};
use super::clock::SharedClock;
use super::error::PolicyError;
use super::geo::{GeoPolicy, GeoVerdict};
use super::iptable::{IpSnapshot, IpTable, IpTableStats, IpVerdict, Offence};
use super::persist::{self, PersistError};
use super::users::UsersSnapshot;
use super::users::{Charge, Dir, UserLease, UserRefusal, UserTable};
use super::{Mode, PolicyReason};
use crate::config::policy::{IpTableConfig, PolicyConfig, RateScope, RefuseAction};
use crate::config::{Config, User};
use crate::events::CloseReason;
use arc_swap::{ArcSwap, ArcSwapOption};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The state file's name in the state directory.
pub const STATE_FILE: &str = "policy-state.json";

/// What is persisted: blocks and reputation, and user usage.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PolicyState {
    #[serde(default)]
    pub ips: IpSnapshot,
    #[serde(default)]
    pub users: UsersSnapshot,
}

/// A refusal: why, and whether the client is fronted or closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub reason: PolicyReason,
    pub action: RefuseAction,
}

/// Files read for a config (ACL lists, geo database), before it is applied.
pub struct Prepared {
    acl: Acl,
    geo: Option<GeoPolicy>,
}

/// Counts one admitted connection against its source until dropped (or, in
/// scope `unauthenticated`, until it authenticates).
#[derive(Debug)]
pub struct SourceGuard {
    policy: Arc<Policy>,
    ip: IpAddr,
    /// The ACL level of the source (the "limited" caps apply).
    pub limited: bool,
    /// Admitted although the source is over its rate, failures or
    /// reputation (scope `unauthenticated`): its failures get a smaller
    /// share of the fronting budget. `None`: in good standing.
    pub suspect: Option<PolicyReason>,
    /// Counted against the cap of unauthenticated connections, and whether
    /// it took a rate slot (scope `unauthenticated`).
    pending: Option<bool>,
    /// Still counted as open against the source.
    counted: bool,
}

impl SourceGuard {
    /// The client proved a secret: in scope `unauthenticated` it leaves the
    /// source's count and gives its rate slot back; in any scope a source
    /// refused or suspected before counts one collateral refusal.
    pub fn authenticated(&mut self) {
        let limits = self.policy.cfg.load().rate.conn_limits();
        match self.pending.take() {
            Some(charged) => {
                self.policy
                    .ips
                    .on_authenticated(self.ip, &limits, self.counted, charged);
                self.counted = false;
            }
            None => self
                .policy
                .ips
                .on_authenticated(self.ip, &limits, false, false),
        }
    }
}

impl Drop for SourceGuard {
    fn drop(&mut self) {
        if self.counted {
            self.policy.ips.on_disconnect(self.ip);
        }
    }
}

fn ip_reason(v: IpVerdict) -> PolicyReason {
    match v {
        IpVerdict::Blocked { .. } => PolicyReason::ReputationBlocked,
        IpVerdict::RateLimited => PolicyReason::RateLimited,
        IpVerdict::TooManyConnections => PolicyReason::TooManyConnections,
        IpVerdict::TooManyFailures => PolicyReason::TooManyFailures,
    }
}

/// Figures for metrics.
#[derive(Clone, Debug, Default)]
pub struct PolicyStats {
    pub ips: IpTableStats,
    pub users_over_quota: usize,
    /// (user, bytes up, bytes down, connections now): live, persisted usage.
    pub per_user: Vec<(Arc<str>, u64, u64, u64)>,
}

pub struct Policy {
    clock: SharedClock,
    cfg: ArcSwap<PolicyConfig>,
    acl: ArcSwap<Acl>,
    geo: ArcSwapOption<GeoPolicy>,
    ips: IpTable,
    users: UserTable,
    state_path: PathBuf,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("state_path", &self.state_path)
            .finish_non_exhaustive()
    }
}

fn ip_cfg(p: &PolicyConfig) -> IpTableConfig {
    p.ip_table()
}

fn user_limits(users: &[User]) -> Vec<(String, crate::config::UserLimits)> {
    users
        .iter()
        .map(|u| (u.name.clone(), u.limits.clone()))
        .collect()
}

impl Policy {
    /// Reads the files `cfg` names (ACL lists, geo database).
    pub fn prepare(cfg: &Config) -> Result<Prepared, PolicyError> {
        Ok(Prepared {
            acl: Acl::build(&cfg.policy.acl)?,
            geo: cfg.policy.geo.as_ref().map(GeoPolicy::new).transpose()?,
        })
    }

    /// Builds the engine for `cfg` and restores the state file from the state
    /// directory (a corrupt file is set aside and logged by `persist::load`).
    pub fn new(cfg: &Config, users: &[User], clock: SharedClock) -> Result<Self, PolicyError> {
        let prepared = Self::prepare(cfg)?;
        let p = Self {
            ips: IpTable::new(&ip_cfg(&cfg.policy), clock.clone()),
            users: UserTable::new(cfg.policy.timezone, clock.clone()),
            clock,
            cfg: ArcSwap::from_pointee(cfg.policy.clone()),
            acl: ArcSwap::from_pointee(prepared.acl),
            geo: ArcSwapOption::from(prepared.geo.map(Arc::new)),
            state_path: cfg.state_dir.join(STATE_FILE),
        };
        p.users.reconfigure(&user_limits(users));
        match persist::load::<PolicyState>(&p.state_path) {
            Ok(Some(state)) => p.restore(state),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "policy state not restored"),
        }
        Ok(p)
    }

    /// Applies a reloaded config; counters, blocks and usage are kept.
    pub fn apply(&self, cfg: &Config, users: &[User], prepared: Prepared) {
        self.ips.reconfigure(&ip_cfg(&cfg.policy));
        self.users.set_timezone(cfg.policy.timezone);
        self.users.reconfigure(&user_limits(users));
        self.acl.store(Arc::new(prepared.acl));
        self.geo.store(prepared.geo.map(Arc::new));
        self.cfg.store(Arc::new(cfg.policy.clone()));
    }

    /// Re-reads ACL list files and the geo database if they changed on disk.
    /// A failed read keeps the previous lists (and is logged).
    pub fn refresh_files(&self) {
        if self.acl.load().files_changed() {
            match Acl::build(&self.cfg.load().acl) {
                Ok(acl) => {
                    tracing::info!(rules = acl.len(), "ACL lists reread");
                    self.acl.store(Arc::new(acl));
                }
                Err(e) => {
                    tracing::error!(error = %e, "ACL list reread failed; keeping the old lists")
                }
            }
        }
        if let Some(geo) = self.geo.load_full() {
            match geo.reload_if_changed() {
                Ok(true) => tracing::info!("geo database reloaded"),
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(error = %e, "geo database reload failed; keeping the old one")
                }
            }
        }
    }

    /// How often [`Policy::refresh_files`] should run.
    pub fn refresh_interval(&self) -> std::time::Duration {
        self.cfg.load().acl.reload_interval
    }

    fn refusal(&self, reason: PolicyReason) -> Refusal {
        let cfg = self.cfg.load();
        let action = if reason.is_flood() {
            cfg.flood_action
        } else {
            cfg.refuse_action
        };
        Refusal { reason, action }
    }

    /// A new connection from `peer`: ACL, geo, then rate, concurrency and
    /// reputation. `hit` is told of every rule that refused (or, in monitor
    /// mode, would have: `enforced = false`).
    pub fn admit(
        self: &Arc<Self>,
        peer: IpAddr,
        hit: &mut dyn FnMut(PolicyReason, bool),
    ) -> Result<SourceGuard, Refusal> {
        let ip = canonical(peer);
        let cfg = self.cfg.load();
        let level = self.acl.load().level(ip, self.clock.wall_ms());
        if level == Level::Blocked {
            let enforce = cfg.acl.mode == Mode::Enforce;
            hit(PolicyReason::AclBlocked, enforce);
            if enforce {
                return Err(self.refusal(PolicyReason::AclBlocked));
            }
        }
        if let Some(geo) = self.geo.load().as_deref() {
            if let (GeoVerdict::Denied { .. }, Some(g)) = (geo.decide(ip), cfg.geo.as_ref()) {
                let enforce = g.mode == Mode::Enforce;
                hit(PolicyReason::GeoBlocked, enforce);
                if enforce {
                    return Err(self.refusal(PolicyReason::GeoBlocked));
                }
            }
        }
        let limited = level == Level::Limited;
        let limits = if limited {
            cfg.limited.conn_limits()
        } else {
            cfg.rate.conn_limits()
        };
        let guard = |suspect, pending, counted| SourceGuard {
            policy: self.clone(),
            ip,
            limited,
            suspect,
            pending,
            counted,
        };
        // Level `full` in scope `unauthenticated`: only the cap on connections
        // that have not authenticated refuses; see `iptable::pending`.
        if !limited && cfg.rate.scope == RateScope::Unauthenticated {
            return match self.ips.on_connect_pending(ip, &limits) {
                Ok(p) => Ok(guard(p.suspect.map(ip_reason), Some(p.charged), true)),
                Err(v) => {
                    let reason = ip_reason(v);
                    let enforce = cfg.rate.mode == Mode::Enforce;
                    hit(reason, enforce);
                    if enforce {
                        return Err(self.refusal(reason));
                    }
                    self.ips.admit(ip);
                    Ok(guard(None, Some(false), true))
                }
            };
        }
        if let Err(v) = self.ips.on_connect(ip, &limits) {
            let (reason, mode) = match v {
                IpVerdict::Blocked { .. } => (PolicyReason::ReputationBlocked, cfg.reputation.mode),
                IpVerdict::RateLimited => (PolicyReason::RateLimited, cfg.rate.mode),
                IpVerdict::TooManyConnections => (PolicyReason::TooManyConnections, cfg.rate.mode),
                IpVerdict::TooManyFailures => (PolicyReason::TooManyFailures, cfg.rate.mode),
            };
            let enforce = mode == Mode::Enforce;
            hit(reason, enforce);
            if enforce {
                return Err(self.refusal(reason));
            }
            self.ips.admit(ip);
        }
        Ok(guard(None, None, true))
    }

    /// A handshake from `peer` failed (`replay`: it was a replayed one).
    /// `user`: the user whose key verified the refused handshake, if one
    /// did (its access watch counts it).
    pub fn handshake_failed(&self, peer: IpAddr, replay: bool, user: Option<&str>) {
        if let Some(u) = user {
            self.users.probed(u);
        }
        let offence = if replay {
            Offence::Replay
        } else {
            Offence::FailedHandshake
        };
        self.ips.on_offence(canonical(peer), offence);
    }

    /// An authenticated client of `user` from `peer`: the user's limits.
    pub fn admit_user(
        &self,
        user: &str,
        peer: IpAddr,
        limited: bool,
        hit: &mut dyn FnMut(PolicyReason, bool),
    ) -> Result<Option<Metered>, Refusal> {
        let cfg = self.cfg.load();
        let enforce = cfg.users_mode == Mode::Enforce;
        let metered = |lease| Some(Metered { lease, enforce });
        match self.users.admit(user, canonical(peer)) {
            Ok(lease) if limited => Ok(metered(lease.with_conn_bandwidth(cfg.limited.bandwidth))),
            Ok(lease) => Ok(metered(lease)),
            // A user the table does not know (none configured yet): no limits.
            Err(UserRefusal::Unknown) => Ok(None),
            Err(r) => {
                let reason = match r {
                    UserRefusal::Disabled => PolicyReason::UserDisabled,
                    UserRefusal::Expired => PolicyReason::UserExpired,
                    UserRefusal::TooManyConnections => PolicyReason::UserConnections,
                    UserRefusal::TooManyIps => PolicyReason::UserIps,
                    UserRefusal::QuotaExhausted | UserRefusal::Unknown => PolicyReason::UserQuota,
                };
                let enforce = cfg.users_mode == Mode::Enforce;
                hit(reason, enforce);
                if enforce {
                    Err(self.refusal(reason))
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// What the state file holds.
    pub fn snapshot(&self) -> PolicyState {
        PolicyState {
            ips: self.ips.export(),
            users: self.users.export(),
        }
    }

    fn restore(&self, state: PolicyState) {
        let users = self.users.import(&state.users);
        let sources = state.ips.entries.len();
        self.ips.import(state.ips);
        tracing::info!(users, sources, "policy state restored");
    }

    /// Reads the state file again and takes in what it holds (usage counters
    /// take the larger value, so nothing counts twice): after a handover, the
    /// old process's last state.
    pub fn reload_state(&self) {
        match persist::load::<PolicyState>(&self.state_path) {
            Ok(Some(state)) => self.restore(state),
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "policy state not reread"),
        }
    }

    /// Writes the state file now (atomically).
    pub fn save(&self) -> Result<(), PersistError> {
        persist::save(&self.state_path, &self.snapshot())
    }

    /// The state file's path.
    pub fn state_path(&self) -> &std::path::Path {
        &self.state_path
    }

    /// Figures for metrics.
    pub fn stats(&self) -> PolicyStats {
        let u = self.users.stats();
        PolicyStats {
            ips: self.ips.stats(),
            users_over_quota: u.over_quota,
            per_user: u
                .per_user
                .into_iter()
                .map(|s| (s.name, s.up, s.down, s.active as u64))
                .collect(),
        }
    }

    /// The per-source table (tests, diagnostics).
    pub fn ips(&self) -> &IpTable {
        &self.ips
    }

    /// The user table (tests, diagnostics).
    pub fn users(&self) -> &UserTable {
        &self.users
    }
}

/// An authenticated connection's hold on its user: usage is always counted;
/// quotas and bandwidth caps bite only when the user policy enforces.
#[derive(Debug)]
pub struct Metered {
    pub lease: UserLease,
    pub enforce: bool,
}

/// Charges `n` relayed bytes to the lease. When enforcing: `Err` ends the
/// connection at a quota, `Ok(Some(wait))` asks the caller to wait that long
/// (a bandwidth cap) with [`throttle`]. Atomics only, no allocation.
#[inline]
pub fn meter(m: &Metered, dir: Dir, n: usize) -> Result<Option<Duration>, CloseReason> {
    let exhausted = m.lease.charge(dir, n as u64) == Charge::Exhausted;
    if !m.enforce {
        return Ok(None);
    }
    if exhausted {
        return Err(CloseReason::QuotaExhausted);
    }
    Ok(m.lease.throttle(dir, n as u64))
}

/// Waits out a bandwidth cap. The timer is boxed so that it takes no room in
/// the relay's futures (which every idle connection holds) when no cap applies.
pub async fn throttle(wait: Duration) {
    Box::pin(tokio::time::sleep(wait)).await
}
