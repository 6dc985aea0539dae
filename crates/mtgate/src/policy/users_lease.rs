//! The per-connection side of the user table: charging bytes, throttling,
//! revocation, and the lease's release on drop. Runs per relayed chunk:
//! atomics only, no lock, no allocation (the drop takes the user's small lock
//! once per connection, to mark its IP last seen).

use super::{Charge, Dir, UserLease, UserRefusal, NONE};
use crate::policy::bandwidth::Bucket;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

impl UserLease {
    /// Adds a per-connection cap of `bytes_per_sec` in each direction, on top
    /// of the user's caps (for the ACL "limited" level); 0 means no cap.
    pub fn with_conn_bandwidth(mut self, bytes_per_sec: u64) -> Self {
        self.conn_bw = Some([
            Bucket::new(Some(bytes_per_sec)),
            Bucket::new(Some(bytes_per_sec)),
        ]);
        self
    }

    /// The user's name.
    pub fn user(&self) -> &str {
        &self.state.name
    }

    /// Counts `n` relayed bytes; [`Charge::Exhausted`] once a quota is reached.
    /// Atomics only: no lock, no allocation.
    #[inline]
    pub fn charge(&self, dir: Dir, n: u64) -> Charge {
        let st = &*self.state;
        let (mine, other) = match dir {
            Dir::Up => (&st.up, &st.down),
            Dir::Down => (&st.down, &st.up),
        };
        let total = mine
            .fetch_add(n, Relaxed)
            .saturating_add(n)
            .saturating_add(other.load(Relaxed));
        let quota = st.quota.load(Relaxed);
        // Other nodes' bytes (shared state) count only under a quota.
        let mut out =
            if quota != NONE && total.saturating_add(st.remote_bytes.load(Relaxed)) >= quota {
                Charge::Exhausted
            } else {
                Charge::Ok
            };
        let pq = st.period_quota.load(Relaxed);
        if pq != NONE {
            st.roll(st.shared.clock.wall_ms());
            let used = st.period_used.fetch_add(n, Relaxed).saturating_add(n);
            if used.saturating_add(st.remote_period.load(Relaxed)) >= pq {
                out = Charge::Exhausted;
            }
        }
        out
    }

    /// How long to wait before sending `n` bytes in `dir` (`None`: send now),
    /// under the user's cap (shared by all their connections) and this
    /// connection's own cap. The bytes are reserved: call once per send.
    #[inline]
    pub fn throttle(&self, dir: Dir, n: u64) -> Option<Duration> {
        let i = dir as usize;
        let user = self.state.bw[i].rate().is_some();
        if !user && self.conn_bw.is_none() {
            return None;
        }
        let now_ns = self.state.shared.clock.mono_ms().saturating_mul(1_000_000);
        let mut wait = self.state.bw[i].reserve(n, now_ns);
        if let Some(c) = &self.conn_bw {
            wait = wait.max(c[i].reserve(n, now_ns));
        }
        (!wait.is_zero()).then_some(wait)
    }

    /// Whether this connection should end now: the user was disabled, expired,
    /// removed, or is over quota. Lock-free; for the relay's periodic check.
    pub fn revoked(&self) -> Option<UserRefusal> {
        self.state.revoked(self.state.shared.clock.wall_ms())
    }
}

impl Drop for UserLease {
    fn drop(&mut self) {
        let st = &*self.state;
        st.active.fetch_sub(1, Relaxed);
        if let Some(key) = self.ip {
            let mono = st.shared.clock.mono_ms();
            let mut cold = st.cold();
            if let Some(r) = cold.recent.iter_mut().find(|r| r.key == key) {
                r.active = r.active.saturating_sub(1);
                r.last_ms = mono;
            }
        }
    }
}
