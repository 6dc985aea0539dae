//! The periodic sync of a node with the store: its open connections and
//! recent addresses by user (and the other nodes' back), and its bytes
//! toward quotas (and every node's totals back). Run by [`Shared::run`].

use super::{NodeState, Pushed, Shared, UsageDelta, NODE_TTL};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

impl Shared {
    /// Takes the users' counters as already pushed.
    pub(super) fn baseline(&self, users: &crate::policy::users::UserTable) {
        let mut pushed = self.pushed.lock().unwrap_or_else(|p| p.into_inner());
        for u in users.quota_usage() {
            pushed.entry(u.name).or_insert(Pushed {
                life_seen: u.lifetime,
                period_seen: u.period.map_or(0, |p| p.2),
                period_start: u.period.map_or(0, |p| p.0),
                ..Pushed::default()
            });
        }
    }

    /// One exchange of quota usage with the store: this node's bytes since
    /// the last one are added to every node's totals, and the others' part
    /// of the totals goes into `users` (their quotas then count every
    /// node's bytes). A failed exchange is retried whole at the next sync.
    pub async fn sync_usage(&self, users: &crate::policy::users::UserTable) {
        if self.now_ms() < self.down_until.load(Relaxed) {
            return;
        }
        // A user first seen now (made or given a quota since the start)
        // has all its bytes pushed; those at the start were a baseline.
        let now = users.quota_usage();
        let deltas: Vec<UsageDelta> = {
            let mut pushed = self.pushed.lock().unwrap_or_else(|p| p.into_inner());
            pushed.retain(|name, _| now.iter().any(|u| &u.name == name));
            now.iter()
                .map(|u| {
                    let p = pushed.entry(u.name.clone()).or_default();
                    // A reset (admin API) moves the counters back: start over.
                    if u.lifetime < p.life_seen {
                        p.life_seen = u.lifetime;
                        p.life_mine = 0;
                    }
                    let period = u.period.map(|(start, end, used)| {
                        // A new period: its bytes so far are pushed; a reset:
                        // the counter starts over from where it is.
                        if start != p.period_start {
                            p.period_start = start;
                            p.period_seen = 0;
                            p.period_mine = 0;
                        } else if used < p.period_seen {
                            p.period_seen = used;
                            p.period_mine = 0;
                        }
                        (start, end, used.saturating_sub(p.period_seen))
                    });
                    UsageDelta {
                        user: u.name.clone(),
                        bytes: u.lifetime.saturating_sub(p.life_seen),
                        period,
                    }
                })
                .collect()
        };
        if deltas.is_empty() {
            return;
        }
        let wait = self.config.timeout.max(Duration::from_millis(500));
        let totals = match tokio::time::timeout(wait, self.backend.add_usage(&deltas)).await {
            Ok(Ok(t)) if t.len() == deltas.len() => t,
            Ok(Ok(_)) => return self.failed("the store answered a different count"),
            Ok(Err(e)) => return self.failed(&e.to_string()),
            Err(_) => return self.failed("timed out"),
        };
        self.answered();
        let mut remote = std::collections::HashMap::new();
        let mut pushed = self.pushed.lock().unwrap_or_else(|p| p.into_inner());
        for (d, (life, period)) in deltas.iter().zip(totals) {
            let p = pushed.entry(d.user.clone()).or_default();
            p.life_seen = p.life_seen.saturating_add(d.bytes);
            p.life_mine = p.life_mine.saturating_add(d.bytes);
            let mut remote_period = 0;
            if let Some((_, _, bytes)) = d.period {
                p.period_seen = p.period_seen.saturating_add(bytes);
                p.period_mine = p.period_mine.saturating_add(bytes);
                remote_period = period.saturating_sub(p.period_mine);
            }
            remote.insert(
                d.user.clone(),
                (life.saturating_sub(p.life_mine), remote_period),
            );
        }
        drop(pushed);
        users.set_remote_usage(&remote);
    }

    /// One sync of the connection counts with the store.
    pub async fn sync(&self, users: &crate::policy::users::UserTable) {
        if self.now_ms() < self.down_until.load(Relaxed) {
            self.stale(users);
            return;
        }
        let mine = NodeState {
            conns: users
                .stats()
                .per_user
                .into_iter()
                .filter(|u| u.active > 0)
                .map(|u| (u.name.to_string(), u.active))
                .collect(),
            ips: users.recent_ips(),
        };
        let wait = self.config.timeout.max(Duration::from_millis(500));
        let got =
            tokio::time::timeout(wait, self.backend.sync(&self.config.node, &mine, NODE_TTL)).await;
        match got {
            Ok(Ok(view)) => {
                self.answered();
                self.synced.store(self.now_ms().max(1), Relaxed);
                self.stats.nodes.store(view.nodes.len() as u64, Relaxed);
                users.set_remote(&view.remote);
                users.set_remote_ips(&view.remote_ips);
            }
            Ok(Err(e)) => {
                self.failed(&e.to_string());
                self.stale(users);
            }
            Err(_) => {
                self.failed("timed out");
                self.stale(users);
            }
        }
    }

    /// Drops the other nodes' counts once they are older than [`NODE_TTL`].
    pub(super) fn stale(&self, users: &crate::policy::users::UserTable) {
        let last = self.synced.load(Relaxed);
        if last != 0 && self.now_ms().saturating_sub(last) > NODE_TTL.as_millis() as u64 {
            users.set_remote(&Default::default());
            users.set_remote_ips(&Default::default());
            self.stats.nodes.store(1, Relaxed);
            self.synced.store(0, Relaxed);
        }
    }
}
