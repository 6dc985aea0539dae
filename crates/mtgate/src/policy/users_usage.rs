//! What the user table reports and persists: counters for metrics
//! ([`UserStats`]), one user's usage ([`UsageView`]), and the snapshot of
//! lifetime and period usage carried across restarts ([`UsersSnapshot`]).

use super::watch::Watch;
use super::{period_from_code, UserState, UserTable, NONE};
use crate::config::user_limits::QuotaPeriod;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering::{Acquire, Relaxed};
use std::sync::Arc;

/// One user's counters for metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserStat {
    pub name: Arc<str>,
    /// Lifetime bytes client → Telegram.
    pub up: u64,
    /// Lifetime bytes Telegram → client.
    pub down: u64,
    /// Open connections.
    pub active: u32,
    pub over_quota: bool,
}

/// Counters for every user, for metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UserStats {
    /// Users at or over a quota (lifetime or current period).
    pub over_quota: usize,
    /// Sorted by name.
    pub per_user: Vec<UserStat>,
}

/// One user's usage toward its quotas on this node, for the shared state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaUsage {
    pub name: String,
    /// Lifetime bytes relayed here.
    pub lifetime: u64,
    /// (period start, period end, bytes relayed here in it), Unix ms.
    pub period: Option<(i64, i64, u64)>,
}

/// One user's usage, for the admin API and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageView {
    pub up: u64,
    pub down: u64,
    pub active: u32,
    /// Unique IP keys currently recent (0 without `max_ips`).
    pub recent_ips: usize,
    /// The current calendar period, if a calendar quota is set.
    pub period: Option<PeriodUsage>,
    /// Where that period ends (exclusive), Unix ms.
    pub period_end_ms: Option<i64>,
    pub over_quota: bool,
}

/// Usage in one calendar period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodUsage {
    pub period: QuotaPeriod,
    /// Unix ms of the period's start.
    pub start_ms: i64,
    /// Bytes up + down in it.
    pub used: u64,
}

/// One user's persisted usage.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserUsage {
    pub up: u64,
    pub down: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<PeriodUsage>,
    /// Today's and yesterday's access (for `mtgate audit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch: Option<Watch>,
}

/// The persisted usage of every user, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsersSnapshot {
    #[serde(default)]
    pub users: BTreeMap<String, UserUsage>,
}

impl UserTable {
    fn sorted(&self) -> Vec<Arc<UserState>> {
        let mut v: Vec<_> = self.users.load().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Counters for metrics (one pass, no lock on the hot path).
    pub fn stats(&self) -> UserStats {
        let now = self.shared.clock.wall_ms();
        let per_user: Vec<UserStat> = self
            .sorted()
            .iter()
            .map(|st| UserStat {
                name: Arc::clone(&st.name),
                up: st.up.load(Relaxed),
                down: st.down.load(Relaxed),
                active: st.active.load(Relaxed),
                over_quota: st.over_quota(now),
            })
            .collect();
        UserStats {
            over_quota: per_user.iter().filter(|u| u.over_quota).count(),
            per_user,
        }
    }

    /// One user's usage.
    pub fn usage(&self, user: &str) -> Option<UsageView> {
        let st = self.users.load().get(user).cloned()?;
        let now = self.shared.clock.wall_ms();
        let over_quota = st.over_quota(now);
        let period = current_period(&st, now);
        let recent_ips = st.cold().recent.len();
        Some(UsageView {
            up: st.up.load(Relaxed),
            down: st.down.load(Relaxed),
            active: st.active.load(Relaxed),
            recent_ips,
            period,
            period_end_ms: period.map(|_| st.period_end_ms.load(Acquire)),
            over_quota,
        })
    }

    /// Resets `user`'s usage toward its quotas (the admin API): the current
    /// period's bytes, and unless `period_only` the lifetime bytes too (the
    /// per-user byte counters of `/metrics` restart from zero, as after a
    /// restart). `false`: no such user.
    pub fn reset_usage(&self, user: &str, period_only: bool) -> bool {
        let _w = self.writer();
        let Some(st) = self.users.load().get(user).cloned() else {
            return false;
        };
        st.period_used.store(0, Relaxed);
        if !period_only {
            st.up.store(0, Relaxed);
            st.down.store(0, Relaxed);
        }
        true
    }

    /// A handshake `user`'s key verified that was then refused (a replay,
    /// a stale timestamp, a mode or SNI it may not use): for `mtgate audit`.
    pub fn probed(&self, user: &str) {
        if let Some(st) = self.users.load().get(user) {
            st.cold().watch.probed(self.shared.clock.wall_ms());
        }
    }

    /// Sets every user's open connections on the other nodes (shared
    /// state): those named in `remote`, 0 for the rest.
    pub fn set_remote(&self, remote: &std::collections::HashMap<String, u32>) {
        for (name, st) in self.users.load().iter() {
            let n = remote.get(&**name).copied().unwrap_or(0);
            st.remote.store(n, Relaxed);
        }
    }

    /// Every user under a quota: (name, lifetime bytes here, the current
    /// period's start and end in Unix ms and bytes here, if a calendar quota
    /// is set). For the shared state's sync.
    pub fn quota_usage(&self) -> Vec<QuotaUsage> {
        let now = self.shared.clock.wall_ms();
        self.sorted()
            .iter()
            .filter(|st| st.quota.load(Relaxed) != NONE || st.period_quota.load(Relaxed) != NONE)
            .map(|st| QuotaUsage {
                name: st.name.to_string(),
                lifetime: st.lifetime(),
                period: current_period(st, now)
                    .map(|p| (p.start_ms, st.period_end_ms.load(Acquire), p.used)),
            })
            .collect()
    }

    /// Sets the bytes other nodes relayed for each user (lifetime, current
    /// period): those named, 0 for the rest.
    pub fn set_remote_usage(&self, remote: &std::collections::HashMap<String, (u64, u64)>) {
        for (name, st) in self.users.load().iter() {
            let (life, period) = remote.get(&**name).copied().unwrap_or((0, 0));
            st.remote_bytes.store(life, Relaxed);
            st.remote_period.store(period, Relaxed);
        }
    }

    /// The address keys recent here of every user under `max_ips` (for the
    /// shared state): at most `max_ips` a user.
    pub fn recent_ips(&self) -> Vec<(String, Vec<std::net::IpAddr>)> {
        let mono = self.shared.clock.mono_ms();
        self.sorted()
            .iter()
            .filter_map(|st| {
                let cold = st.cold();
                let lim = cold.ips?;
                let window = u64::try_from(lim.window.as_millis()).unwrap_or(u64::MAX);
                let keys: Vec<_> = cold
                    .recent
                    .iter()
                    .filter(|r| r.active > 0 || mono.saturating_sub(r.last_ms) < window)
                    .map(|r| r.key)
                    .collect();
                Some((st.name.to_string(), keys))
            })
            .collect()
    }

    /// Sets the address keys recent on the other nodes, by user (those
    /// named; none for the rest). At most 4 096 are kept a user.
    pub fn set_remote_ips(
        &self,
        remote: &std::collections::HashMap<String, Vec<std::net::IpAddr>>,
    ) {
        for (name, st) in self.users.load().iter() {
            let mut cold = st.cold();
            if cold.ips.is_none() {
                continue;
            }
            cold.remote_ips = remote
                .get(&**name)
                .map(|v| v.iter().take(4096).copied().collect())
                .unwrap_or_default();
        }
    }

    /// Today's and yesterday's access of `user`.
    pub fn watch(&self, user: &str) -> Option<Watch> {
        Some(self.users.load().get(user)?.cold().watch)
    }

    /// The usage to persist: lifetime bytes and the current period's, by user.
    pub fn export(&self) -> UsersSnapshot {
        let now = self.shared.clock.wall_ms();
        let users = self
            .users
            .load()
            .values()
            .map(|st| {
                let watch = st.cold().watch;
                let u = UserUsage {
                    up: st.up.load(Relaxed),
                    down: st.down.load(Relaxed),
                    period: current_period(st, now),
                    watch: (!watch.is_empty()).then_some(watch),
                };
                (st.name.to_string(), u)
            })
            .collect();
        UsersSnapshot { users }
    }

    /// Restores persisted usage into the configured users (call after
    /// [`reconfigure`](Self::reconfigure)). Counters take the larger of the
    /// current and the saved value, so importing twice counts nothing twice.
    /// A period's usage is restored only if it is the current period (same
    /// kind, start within it). Users not configured are ignored. Returns the
    /// number of users restored.
    pub fn import(&self, snap: &UsersSnapshot) -> usize {
        let _w = self.writer();
        let now = self.shared.clock.wall_ms();
        let users = self.users.load();
        let mut restored = 0;
        for (name, u) in &snap.users {
            let Some(st) = users.get(name.as_str()) else {
                continue;
            };
            st.up.fetch_max(u.up, Relaxed);
            st.down.fetch_max(u.down, Relaxed);
            if let Some(w) = &u.watch {
                st.cold().watch.merge(w);
            }
            if let (Some(saved), Some(cur)) = (u.period, current_period(st, now)) {
                let end = st.period_end_ms.load(Acquire);
                if saved.period == cur.period
                    && saved.start_ms >= cur.start_ms
                    && saved.start_ms < end
                {
                    st.period_used.fetch_max(saved.used, Relaxed);
                }
            }
            restored += 1;
        }
        restored
    }
}

fn current_period(st: &UserState, now: i64) -> Option<PeriodUsage> {
    let period = period_from_code(st.period_kind.load(Acquire))?;
    st.roll(now);
    Some(PeriodUsage {
        period,
        start_ms: st.period_start_ms.load(Relaxed),
        used: st.period_used.load(Relaxed),
    })
}
