//! Reputation blocks as the control plane sees them: the sources blocked
//! now (listed up to a bound, every shard visited under its own lock) and
//! lifting one by hand (its score forgiven, so it starts afresh).

use super::{lock, IpTable};
use std::net::IpAddr;

impl IpTable {
    /// Sources blocked now and when each block ends (Unix ms), longest
    /// first, at most `max`.
    pub fn blocks(&self, max: usize) -> Vec<(IpAddr, i64)> {
        let now = self.clock.mono_ms();
        let mut out: Vec<(IpAddr, u64)> = Vec::new();
        for s in self.shards.iter() {
            let s = lock(s);
            out.extend(
                s.map
                    .iter()
                    .filter(|(_, e)| e.blocked_until_ms > now)
                    .map(|(k, e)| (k.addr(), e.blocked_until_ms)),
            );
        }
        out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        out.truncate(max);
        out.into_iter()
            .map(|(ip, until)| (ip, self.wall_of(until, now)))
            .collect()
    }

    /// Blocks `ip`'s source for `for_ms` (a block another node's reputation
    /// made: shared state), unless it is blocked longer already; not logged
    /// as a block that began here. A full table makes room as for any new
    /// source.
    pub fn block(&self, ip: IpAddr, for_ms: u64) {
        let now = self.clock.mono_ms();
        let key = self.key_of(ip);
        let mut s = self.shard(&key);
        let e = s.slot(key, now, &self.evictions);
        e.blocked_until_ms = e.blocked_until_ms.max(now.saturating_add(for_ms));
    }

    /// Lifts the block of `ip`'s source and forgives its score; `false`
    /// when it was not blocked.
    pub fn unblock(&self, ip: IpAddr) -> bool {
        let now = self.clock.mono_ms();
        let key = self.key_of(ip);
        let mut s = self.shard(&key);
        let Some(e) = s.map.get_mut(&key) else {
            return false;
        };
        if e.blocked_until_ms <= now {
            return false;
        }
        e.blocked_until_ms = 0;
        e.score = 0.0;
        e.failures = 0;
        true
    }
}
