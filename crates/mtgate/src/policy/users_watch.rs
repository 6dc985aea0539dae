//! What a day of one user's access looked like, for `mtgate audit`'s
//! "suspicious access patterns": how many distinct client addresses used the
//! user's secret (far more than `max_ips` allows means the link is shared
//! beyond its owner), how many of its connections the user's limits refused,
//! and how many handshakes its key verified that were then refused (replays,
//! stale FakeTLS timestamps, a mode or SNI the user may not use: someone who
//! holds the link probing the proxy with it).
//!
//! Fixed size per user (two UTC days of 256-bit linear-counting bitmaps and
//! counters, no allocation), kept in the user's cold state and persisted with
//! its usage, so the audit can read it from the state directory.

use serde::{Deserialize, Serialize};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

/// One UTC day in ms.
pub const DAY_MS: i64 = 86_400_000;
const WORDS: usize = 4;
const BITS: u32 = 64 * WORDS as u32;

/// One UTC day of one user's access.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayWatch {
    /// Days since the Unix epoch (UTC).
    pub day: i64,
    /// Linear-counting bitmap of the address keys seen (IPv4 /32, IPv6 /64).
    pub ips: [u64; WORDS],
    /// Connections the user's limits refused.
    pub refused: u64,
    /// Handshakes the user's key verified that were then refused.
    pub probes: u64,
}

impl DayWatch {
    fn is_empty(&self) -> bool {
        self.ips == [0; WORDS] && self.refused == 0 && self.probes == 0
    }

    /// Distinct addresses seen, estimated (linear counting: exact for a few,
    /// within a few percent up to several hundred; a full bitmap reads as
    /// its saturation point, about 1 400).
    pub fn distinct_ips(&self) -> u64 {
        let set: u32 = self.ips.iter().map(|w| w.count_ones()).sum();
        let zeros = f64::from(BITS - set).max(0.5);
        let m = f64::from(BITS);
        // n = m ln(m / zeros); rounded, as a count. Casting a small
        // non-negative float to u64 is exact enough here.
        (m * (m / zeros).ln()).round() as u64
    }

    fn merge(&mut self, o: &DayWatch) {
        for (a, b) in self.ips.iter_mut().zip(o.ips) {
            *a |= b;
        }
        self.refused = self.refused.max(o.refused);
        self.probes = self.probes.max(o.probes);
    }
}

/// Today and the day before, so an audit just after midnight still sees a
/// whole day.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watch {
    pub today: DayWatch,
    pub before: DayWatch,
}

fn bit(key: IpAddr) -> u32 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    // The low bits of SipHash are uniform; BITS is a power of two.
    (h.finish() % u64::from(BITS)) as u32
}

impl Watch {
    /// True when nothing was seen on either day.
    pub fn is_empty(&self) -> bool {
        self.today.is_empty() && self.before.is_empty()
    }

    /// The day for `now_ms`, rolled over if it is a new one.
    fn day(&mut self, now_ms: i64) -> &mut DayWatch {
        let day = now_ms.div_euclid(DAY_MS);
        if self.today.day != day {
            self.before = if self.today.day + 1 == day {
                self.today
            } else {
                DayWatch::default()
            };
            self.today = DayWatch {
                day,
                ..DayWatch::default()
            };
        }
        &mut self.today
    }

    /// A connection of the user from address key `ip` at `now_ms`.
    pub fn saw(&mut self, now_ms: i64, ip: IpAddr) {
        let b = bit(ip);
        self.day(now_ms).ips[(b / 64) as usize] |= 1 << (b % 64);
    }

    /// A connection the user's limits refused.
    pub fn refused(&mut self, now_ms: i64) {
        let d = self.day(now_ms);
        d.refused = d.refused.saturating_add(1);
    }

    /// A handshake the user's key verified that was then refused.
    pub fn probed(&mut self, now_ms: i64) {
        let d = self.day(now_ms);
        d.probes = d.probes.saturating_add(1);
    }

    /// Joins a saved watch into this one (restart): days that match are
    /// merged, others kept if newer.
    pub fn merge(&mut self, saved: &Watch) {
        for s in [saved.before, saved.today] {
            if s.is_empty() {
                continue;
            }
            if s.day == self.today.day {
                self.today.merge(&s);
            } else if s.day == self.before.day {
                self.before.merge(&s);
            } else if s.day > self.today.day {
                // Saved data newer than ours (ours is empty or older).
                self.before = if self.today.day + 1 == s.day {
                    self.today
                } else {
                    DayWatch::default()
                };
                self.today = s;
            } else if s.day + 1 == self.today.day && self.before.is_empty() {
                self.before = s;
            }
        }
    }

    /// The busiest of the days seen at or after `since_day`, by distinct
    /// addresses, then refusals, then probes: (the day, its figures).
    pub fn worst(&self, since_day: i64) -> Option<DayWatch> {
        [self.today, self.before]
            .into_iter()
            .filter(|d| !d.is_empty() && d.day >= since_day)
            .max_by_key(|d| (d.distinct_ips(), d.refused, d.probes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: i64 = 1_800_000_000_000;

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))
    }

    #[test]
    fn counts_distinct_addresses_per_day_and_rolls_over() {
        let mut w = Watch::default();
        for i in 0..7 {
            // Each address several times: counted once.
            for _ in 0..3 {
                w.saw(T, ip(i));
            }
        }
        w.refused(T);
        w.probed(T);
        w.probed(T);
        let d = w.today;
        assert!((6..=8).contains(&d.distinct_ips()), "{}", d.distinct_ips());
        assert_eq!((d.refused, d.probes), (1, 2));
        // The next day starts afresh and keeps this one as the day before.
        w.saw(T + DAY_MS, ip(1));
        assert_eq!(w.today.distinct_ips(), 1);
        assert_eq!(w.before, d);
        assert_eq!(w.worst(d.day), Some(d));
        assert_eq!(w.worst(d.day + 1), Some(w.today));
        // Two days later nothing of the first is left.
        w.saw(T + 3 * DAY_MS, ip(1));
        assert!(w.before.is_empty() && w.worst(0) == Some(w.today));
    }

    #[test]
    fn estimates_hundreds_within_ten_percent() {
        let mut w = Watch::default();
        for i in 0..300 {
            w.saw(T, ip(i * 7919));
        }
        let n = w.today.distinct_ips();
        assert!((270..=330).contains(&n), "{n}");
    }

    #[test]
    fn merging_a_saved_watch_joins_the_same_day() {
        let mut saved = Watch::default();
        saved.saw(T, ip(1));
        saved.probed(T);
        let mut live = Watch::default();
        live.saw(T, ip(2));
        live.merge(&saved);
        assert_eq!(live.today.distinct_ips(), 2);
        assert_eq!(live.today.probes, 1);
        // Merging twice counts nothing twice.
        live.merge(&saved);
        assert_eq!((live.today.distinct_ips(), live.today.probes), (2, 1));
        // An empty live watch takes the saved days as they are.
        let mut fresh = Watch::default();
        fresh.merge(&saved);
        assert_eq!(fresh, saved);
    }

    proptest! {
        /// Whatever the order of events and days, the estimate never panics,
        /// never counts fewer than one for a day with an address, and the two
        /// days are consecutive or the older is empty.
        #[test]
        fn any_events_keep_the_days_consistent(ops in prop::collection::vec((0u8..3, 0u32..50, 0i64..4), 0..200)) {
            let mut w = Watch::default();
            let mut day = 0i64;
            for (op, a, step) in ops {
                day += step / 3;
                let now = T + day * DAY_MS;
                match op {
                    0 => w.saw(now, ip(a)),
                    1 => w.refused(now),
                    _ => w.probed(now),
                }
                prop_assert!(w.today.ips == [0; WORDS] || w.today.distinct_ips() >= 1);
                prop_assert!(w.before.is_empty() || w.before.day + 1 == w.today.day);
                let mut copy = Watch::default();
                copy.merge(&w);
                prop_assert_eq!(copy, w);
            }
        }
    }
}
