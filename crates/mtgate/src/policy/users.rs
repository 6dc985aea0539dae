//! Per-user limits: enable/disable, expiry, concurrent connections, unique
//! client IPs within a window, quotas (lifetime and calendar) and bandwidth.
//!
//! [`UserTable`] holds one state per configured user behind an `Arc`; the map
//! is swapped whole on [`UserTable::reconfigure`] (lock-free reads), which keeps
//! the usage of users that remain. [`UserTable::admit`] hands out a
//! [`UserLease`] per connection; the relay calls [`UserLease::charge`] and
//! [`UserLease::throttle`] per chunk: atomics only, no lock, no allocation
//! (the calendar is only consulted once the cached period end has passed).
//!
//! Unique IPs: IPv4 addresses count one by one, IPv6 ones by /64 (privacy
//! addresses rotate within a prefix), IPv4-mapped IPv6 as IPv4. An IP is
//! "recent" while a connection from it is open and for `ips_window` after its
//! last connection began or ended. The set never holds more than `max_ips`
//! entries (at most [`MAX_IPS_LIMIT`](crate::config::user_limits::MAX_IPS_LIMIT)).
//!
//! Quotas count bytes up + down; "reached" means usage ≥ quota. The chunk that
//! reaches a quota still counts, its [`charge`](UserLease::charge) returns
//! [`Charge::Exhausted`] (that connection ends, and every other one of the user
//! at its next chunk), and `admit` refuses until the period rolls over or the
//! quota is raised.

use super::bandwidth::Bucket;
use super::clock::SharedClock;
use super::quota::{period_bounds, NO_END};
use crate::config::user_limits::{IpLimit, QuotaPeriod, UserLimits};
use arc_swap::ArcSwap;
use chrono_tz::Tz;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8};
use std::sync::{Arc, Mutex, MutexGuard};

/// "No limit" in the atomic limit fields.
const NONE: u64 = u64::MAX;

/// A direction of relayed bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Client → Telegram.
    Up = 0,
    /// Telegram → client.
    Down = 1,
}

/// What [`UserLease::charge`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Charge {
    Ok,
    /// A quota is reached: end this connection.
    Exhausted,
}

/// Why a user's connection is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UserRefusal {
    #[error("user disabled")]
    Disabled,
    #[error("user expired")]
    Expired,
    #[error("too many concurrent connections for this user")]
    TooManyConnections,
    #[error("too many unique client IPs for this user")]
    TooManyIps,
    #[error("user quota exhausted")]
    QuotaExhausted,
    /// Not in the table (removed by a reload, or not configured yet).
    #[error("unknown user")]
    Unknown,
}

impl UserRefusal {
    /// A stable label for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            UserRefusal::Disabled => "user_disabled",
            UserRefusal::Expired => "user_expired",
            UserRefusal::TooManyConnections => "user_too_many_connections",
            UserRefusal::TooManyIps => "user_too_many_ips",
            UserRefusal::QuotaExhausted => "user_quota_exhausted",
            UserRefusal::Unknown => "user_unknown",
        }
    }
}

fn period_code(p: Option<QuotaPeriod>) -> u8 {
    match p {
        None => 0,
        Some(QuotaPeriod::Daily) => 1,
        Some(QuotaPeriod::Weekly) => 2,
        Some(QuotaPeriod::Monthly) => 3,
    }
}

fn period_from_code(c: u8) -> Option<QuotaPeriod> {
    match c {
        1 => Some(QuotaPeriod::Daily),
        2 => Some(QuotaPeriod::Weekly),
        3 => Some(QuotaPeriod::Monthly),
        _ => None,
    }
}

/// The key an IP counts under for `max_ips`.
fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

struct Shared {
    clock: SharedClock,
    tz: ArcSwap<Tz>,
}

#[derive(Debug)]
struct RecentIp {
    key: IpAddr,
    /// Monotonic ms of the last connect or disconnect.
    last_ms: u64,
    /// Open connections from it.
    active: u32,
}

#[derive(Debug, Default)]
struct Cold {
    max_connections: Option<u32>,
    ips: Option<IpLimit>,
    recent: Vec<RecentIp>,
    /// Today's and yesterday's access, for `mtgate audit`.
    watch: Watch,
    /// The address keys recent on the other nodes (shared state; empty on a
    /// node alone), refreshed about once a second.
    remote_ips: Vec<IpAddr>,
}

/// One user's state, shared by the table and the user's leases.
struct UserState {
    name: Arc<str>,
    shared: Arc<Shared>,
    removed: AtomicBool,
    enabled: AtomicBool,
    /// Unix ms; `i64::MAX` = never.
    expires_ms: AtomicI64,
    quota: AtomicU64,
    period_quota: AtomicU64,
    period_kind: AtomicU8,
    period_start_ms: AtomicI64,
    /// `NO_END` when no calendar quota is set.
    period_end_ms: AtomicI64,
    period_used: AtomicU64,
    up: AtomicU64,
    down: AtomicU64,
    active: AtomicU32,
    /// Open connections of this user on the other nodes (shared state; 0
    /// on a node alone), refreshed about once a second.
    remote: AtomicU32,
    /// Bytes the other nodes relayed for this user toward its lifetime and
    /// current-period quotas (shared state; 0 on a node alone).
    remote_bytes: AtomicU64,
    remote_period: AtomicU64,
    bw: [Bucket; 2],
    cold: Mutex<Cold>,
}

impl UserState {
    fn new(name: &str, shared: Arc<Shared>) -> Self {
        Self {
            name: Arc::from(name),
            shared,
            removed: AtomicBool::new(false),
            enabled: AtomicBool::new(true),
            expires_ms: AtomicI64::new(i64::MAX),
            quota: AtomicU64::new(NONE),
            period_quota: AtomicU64::new(NONE),
            period_kind: AtomicU8::new(0),
            period_start_ms: AtomicI64::new(0),
            period_end_ms: AtomicI64::new(NO_END),
            period_used: AtomicU64::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            active: AtomicU32::new(0),
            remote: AtomicU32::new(0),
            remote_bytes: AtomicU64::new(0),
            remote_period: AtomicU64::new(0),
            bw: [Bucket::new(None), Bucket::new(None)],
            cold: Mutex::new(Cold::default()),
        }
    }

    fn cold(&self) -> MutexGuard<'_, Cold> {
        self.cold.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tz(&self) -> Tz {
        **self.shared.tz.load()
    }

    /// Applies new limits, keeping usage; a changed calendar period starts afresh.
    fn apply(&self, l: &UserLimits, now: i64) {
        self.enabled.store(l.enabled, Relaxed);
        self.expires_ms
            .store(l.expires_ms.unwrap_or(i64::MAX), Relaxed);
        self.quota.store(l.quota.unwrap_or(NONE), Relaxed);
        self.period_quota
            .store(l.period_quota.map_or(NONE, |p| p.bytes), Relaxed);
        let kind = l.period_quota.map(|p| p.period);
        let code = period_code(kind);
        if self.period_kind.swap(code, AcqRel) != code {
            self.reset_period(kind, now);
        }
        self.bw[Dir::Up as usize].set_rate(l.bandwidth_up);
        self.bw[Dir::Down as usize].set_rate(l.bandwidth_down);
        let mut cold = self.cold();
        cold.max_connections = l.max_connections;
        cold.ips = l.max_ips;
        if l.max_ips.is_none() {
            cold.recent = Vec::new();
            cold.remote_ips = Vec::new();
        }
    }

    fn reset_period(&self, kind: Option<QuotaPeriod>, now: i64) {
        let (start, end) = match kind {
            Some(k) => period_bounds(k, self.tz(), now),
            None => (0, NO_END),
        };
        self.period_start_ms.store(start, Relaxed);
        self.period_end_ms.store(end, Release);
        self.period_used.store(0, Relaxed);
    }

    /// Starts the next period if the cached end has passed. Cheap otherwise.
    #[inline]
    fn roll(&self, now: i64) {
        let end = self.period_end_ms.load(Acquire);
        if now < end {
            return;
        }
        self.roll_slow(now, end);
    }

    #[cold]
    fn roll_slow(&self, now: i64, end: i64) {
        let Some(kind) = period_from_code(self.period_kind.load(Acquire)) else {
            return;
        };
        let (start, new_end) = period_bounds(kind, self.tz(), now);
        // One caller wins the rollover; bytes charged by others in the same
        // instant may land in either period.
        if self
            .period_end_ms
            .compare_exchange(end, new_end, AcqRel, Acquire)
            .is_ok()
        {
            self.period_start_ms.store(start, Relaxed);
            self.period_used.store(0, Relaxed);
        }
    }

    fn lifetime(&self) -> u64 {
        self.up
            .load(Relaxed)
            .saturating_add(self.down.load(Relaxed))
    }

    fn over_quota(&self, now: i64) -> bool {
        let q = self.quota.load(Relaxed);
        if q != NONE
            && self
                .lifetime()
                .saturating_add(self.remote_bytes.load(Relaxed))
                >= q
        {
            return true;
        }
        let pq = self.period_quota.load(Relaxed);
        if pq != NONE {
            self.roll(now);
            let used = self.period_used.load(Relaxed);
            return used.saturating_add(self.remote_period.load(Relaxed)) >= pq;
        }
        false
    }

    /// Disabled, expired, removed or over quota, checked without a lock.
    fn revoked(&self, now: i64) -> Option<UserRefusal> {
        if self.removed.load(Relaxed) {
            Some(UserRefusal::Unknown)
        } else if !self.enabled.load(Relaxed) {
            Some(UserRefusal::Disabled)
        } else if now >= self.expires_ms.load(Relaxed) {
            Some(UserRefusal::Expired)
        } else if self.over_quota(now) {
            Some(UserRefusal::QuotaExhausted)
        } else {
            None
        }
    }
}

/// Per-user limits and usage for every configured user.
pub struct UserTable {
    shared: Arc<Shared>,
    users: ArcSwap<HashMap<Arc<str>, Arc<UserState>>>,
    /// Serializes writers (reconfigure, import, time zone).
    write: Mutex<()>,
}

impl std::fmt::Debug for UserTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserTable")
            .field("users", &self.users.load().len())
            .field("tz", &self.shared.tz.load().name())
            .finish()
    }
}

/// A connection's hold on its user: counts as one concurrent connection until dropped.
pub struct UserLease {
    state: Arc<UserState>,
    /// The IP key recorded in the recent set, if the user has `max_ips`.
    ip: Option<IpAddr>,
    conn_bw: Option<[Bucket; 2]>,
}

impl std::fmt::Debug for UserLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserLease")
            .field("user", &self.state.name)
            .field("conn_bw", &self.conn_bw.as_ref().and_then(|b| b[0].rate()))
            .finish()
    }
}

impl UserTable {
    /// An empty table; calendars are in `tz`.
    pub fn new(tz: Tz, clock: SharedClock) -> Self {
        Self {
            shared: Arc::new(Shared {
                clock,
                tz: ArcSwap::from_pointee(tz),
            }),
            users: ArcSwap::from_pointee(HashMap::new()),
            write: Mutex::new(()),
        }
    }

    fn writer(&self) -> MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the users and their limits. Users that remain (by name) keep their
    /// usage, recent IPs and open leases; removed ones are dropped (their open
    /// leases report [`UserRefusal::Unknown`] from [`UserLease::revoked`]).
    pub fn reconfigure(&self, users: &[(String, UserLimits)]) {
        let _w = self.writer();
        let now = self.shared.clock.wall_ms();
        let old = self.users.load_full();
        let mut new = HashMap::with_capacity(users.len());
        for (name, limits) in users {
            let st = old
                .get(name.as_str())
                .cloned()
                .unwrap_or_else(|| Arc::new(UserState::new(name, Arc::clone(&self.shared))));
            st.apply(limits, now);
            new.insert(Arc::clone(&st.name), st);
        }
        for (name, st) in old.iter() {
            if !new.contains_key(name) {
                st.removed.store(true, Relaxed);
            }
        }
        self.users.store(Arc::new(new));
    }

    /// Changes the calendar time zone; current periods end at the new zone's
    /// boundary, their usage kept.
    pub fn set_timezone(&self, tz: Tz) {
        let _w = self.writer();
        self.shared.tz.store(Arc::new(tz));
        let now = self.shared.clock.wall_ms();
        for st in self.users.load().values() {
            if let Some(kind) = period_from_code(st.period_kind.load(Acquire)) {
                let (start, end) = period_bounds(kind, tz, now);
                st.period_start_ms.store(start, Relaxed);
                st.period_end_ms.store(end, Release);
            }
        }
    }

    /// The calendar time zone.
    pub fn timezone(&self) -> Tz {
        **self.shared.tz.load()
    }

    /// Number of configured users.
    pub fn len(&self) -> usize {
        self.users.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Admits a connection of `user` from `ip`, or says why not.
    pub fn admit(&self, user: &str, ip: IpAddr) -> Result<UserLease, UserRefusal> {
        let st = self
            .users
            .load()
            .get(user)
            .cloned()
            .ok_or(UserRefusal::Unknown)?;
        let now = self.shared.clock.wall_ms();
        let key = ip_key(ip);
        let mut cold = st.cold();
        cold.watch.saw(now, key);
        let refused = |mut cold: MutexGuard<'_, Cold>, r| {
            cold.watch.refused(now);
            Err(r)
        };
        if let Some(r) = st.revoked(now) {
            return refused(cold, r);
        }
        let mono = self.shared.clock.mono_ms();
        if let Some(max) = cold.max_connections {
            let all = st
                .active
                .load(Relaxed)
                .saturating_add(st.remote.load(Relaxed));
            if all >= max {
                return refused(cold, UserRefusal::TooManyConnections);
            }
        }
        let recorded = match cold.ips {
            None => None,
            Some(lim) => {
                let window = u64::try_from(lim.window.as_millis()).unwrap_or(u64::MAX);
                cold.recent
                    .retain(|r| r.active > 0 || mono.saturating_sub(r.last_ms) < window);
                // Addresses recent on other nodes count too (shared state):
                // one of them is no new address here.
                let known_elsewhere = cold.remote_ips.contains(&key);
                let elsewhere = cold
                    .remote_ips
                    .iter()
                    .filter(|k| !cold.recent.iter().any(|r| r.key == **k))
                    .count();
                if let Some(r) = cold.recent.iter_mut().find(|r| r.key == key) {
                    r.active = r.active.saturating_add(1);
                    r.last_ms = mono;
                } else if !known_elsewhere && cold.recent.len() + elsewhere >= lim.max as usize {
                    return refused(cold, UserRefusal::TooManyIps);
                } else {
                    cold.recent.push(RecentIp {
                        key,
                        last_ms: mono,
                        active: 1,
                    });
                }
                Some(key)
            }
        };
        st.active.fetch_add(1, Relaxed);
        drop(cold);
        Ok(UserLease {
            state: st,
            ip: recorded,
            conn_bw: None,
        })
    }
}

#[path = "users_lease.rs"]
mod lease;
#[path = "users_usage.rs"]
mod usage;
#[path = "users_watch.rs"]
pub mod watch;
pub use usage::{
    PeriodUsage, QuotaUsage, UsageView, UserStat, UserStats, UserUsage, UsersSnapshot,
};
use watch::Watch;

#[cfg(test)]
#[path = "users_tests.rs"]
mod tests;
