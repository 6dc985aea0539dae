//! Keeps per-connection logging bounded under floods. Two tools:
//!
//! * [`RefusalSummary`]: policy refusals are counted per reason and source
//!   prefix (IPv4 /24, IPv6 /48) and written as one INFO line per interval
//!   ("refused by policy in the last 10s: acl_blocked from 203.0.113.0/24:
//!   9731, …"); the per-connection line is DEBUG. The table holds at most
//!   [`MAX_PREFIXES`] keys; the rest are counted as "other sources".
//! * [`LineBudget`]: a per-second budget for a per-connection log line; past
//!   it lines are dropped and counted, and the count is written once the
//!   next second begins.

use crate::policy::PolicyReason;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Distinct (reason, prefix) keys kept per interval.
pub const MAX_PREFIXES: usize = 64;
/// How often the refusal summary is written.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// The prefix a refusal is summarised under.
pub fn prefix(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    }
}

#[derive(Default)]
struct Table {
    counts: HashMap<(PolicyReason, bool, String), u64>,
    other: u64,
    since: Option<Instant>,
}

/// Policy refusals of the current interval.
#[derive(Default)]
pub struct RefusalSummary {
    table: Mutex<Table>,
}

impl RefusalSummary {
    /// Counts one refusal (`enforced = false`: monitor mode).
    pub fn count(&self, reason: PolicyReason, enforced: bool, source: IpAddr) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        t.since.get_or_insert_with(Instant::now);
        let key = (reason, enforced, prefix(source));
        let full = t.counts.len() >= MAX_PREFIXES;
        match t.counts.get_mut(&key) {
            Some(n) => *n += 1,
            None if full => t.other += 1,
            None => {
                t.counts.insert(key, 1);
            }
        }
    }

    /// The summary line of the interval so far, emptied; `None` when nothing
    /// was refused, or when `min_age` has not passed since the first refusal.
    pub fn take(&self, min_age: Duration) -> Option<String> {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        let since = t.since?;
        if since.elapsed() < min_age {
            return None;
        }
        let mut rows: Vec<_> = t.counts.drain().collect();
        let other = std::mem::take(&mut t.other);
        t.since = None;
        drop(t);
        rows.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0 .2.cmp(&b.0 .2)));
        let total: u64 = rows.iter().map(|r| r.1).sum::<u64>() + other;
        let mut line = format!(
            "{total} connection(s) refused by policy in the last {}s:",
            since.elapsed().as_secs().max(1)
        );
        for ((reason, enforced, prefix), n) in rows.iter().take(16) {
            let m = if *enforced { "" } else { " (monitor)" };
            line.push_str(&format!(" {}{m} from {prefix}: {n};", reason.label()));
        }
        let rest: u64 = rows.iter().skip(16).map(|r| r.1).sum::<u64>() + other;
        if rest > 0 {
            line.push_str(&format!(" other sources: {rest};"));
        }
        Some(line)
    }
}

/// A per-second budget for one kind of per-connection log line.
pub struct LineBudget {
    per_second: u64,
    /// (second since `epoch`, lines in it), packed: second << 32 | count.
    state: AtomicU64,
    dropped: AtomicU64,
    epoch: Instant,
}

impl LineBudget {
    pub fn new(per_second: u32) -> Self {
        Self {
            per_second: u64::from(per_second),
            state: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Whether a line may be written now; the second argument is how many
    /// were dropped since the last line written (to report with it).
    pub fn allow(&self) -> (bool, u64) {
        let sec = self.epoch.elapsed().as_secs() & 0xffff_ffff;
        let mut cur = self.state.load(Relaxed);
        loop {
            let (s, n) = (cur >> 32, cur & 0xffff_ffff);
            let next = if s == sec {
                (s << 32) | (n + 1)
            } else {
                (sec << 32) | 1
            };
            let used = if s == sec { n + 1 } else { 1 };
            if used > self.per_second {
                self.dropped.fetch_add(1, Relaxed);
                return (false, 0);
            }
            match self
                .state
                .compare_exchange_weak(cur, next, Relaxed, Relaxed)
            {
                Ok(_) => return (true, self.dropped.swap(0, Relaxed)),
                Err(now) => cur = now,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_summarised_per_reason_and_prefix_within_bounds() {
        let s = RefusalSummary::default();
        assert_eq!(s.take(Duration::ZERO), None);
        for i in 0..1000u32 {
            s.count(
                PolicyReason::AclBlocked,
                true,
                IpAddr::from([203, 0, 113, (i % 200) as u8]),
            );
        }
        for i in 0..5000u32 {
            // 5000 distinct /24s: the table stays bounded.
            s.count(
                PolicyReason::TooManyConnections,
                true,
                IpAddr::from([10, (i >> 8) as u8, i as u8, 1]),
            );
        }
        s.count(
            PolicyReason::GeoBlocked,
            false,
            "2001:db8:1:2::9".parse().expect("ip"),
        );
        assert!(s.table.lock().expect("lock").counts.len() <= MAX_PREFIXES);
        assert_eq!(s.take(Duration::from_secs(3600)), None, "not yet");
        let line = s.take(Duration::ZERO).expect("a summary");
        assert!(
            line.starts_with("6001 connection(s) refused by policy"),
            "{line}"
        );
        assert!(
            line.contains("acl_blocked from 203.0.113.0/24: 1000;"),
            "{line}"
        );
        assert!(line.contains("other sources:"), "{line}");
        assert_eq!(s.take(Duration::ZERO), None, "emptied");
        assert_eq!(
            prefix("2001:db8:1:2::9".parse().expect("ip")),
            "2001:db8:1::/48"
        );
        assert_eq!(
            prefix("::ffff:192.0.2.7".parse().expect("ip")),
            "192.0.2.0/24"
        );
    }

    #[test]
    fn the_line_budget_drops_and_reports() {
        let b = LineBudget::new(3);
        let allowed = (0..10).filter(|_| b.allow().0).count();
        assert_eq!(allowed, 3);
        assert_eq!(b.dropped.load(Relaxed), 7);
    }
}
