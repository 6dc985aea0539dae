//! Admission in scope `unauthenticated` (`policy.rate.scope`, the default):
//! the per-source limits count only connections that have not proven a
//! secret. See [`crate::config::policy::RateScope`].
//!
//! * The cap on connections open at once counts a connection from accept
//!   until it authenticates ([`IpTable::on_authenticated`]) or ends; it is
//!   the only check that refuses before reading, and it feeds no reputation.
//! * The rate is charged at accept and given back when the connection
//!   authenticates: valid handshakes cost nothing. Over it, the connection
//!   is still read, marked suspect.
//! * A source blocked by its reputation, or over its handshake failures, is
//!   also read and marked suspect; a valid client behind it is served.
//! * A valid handshake from a source refused or marked suspect since its
//!   previous valid one counts as a collateral refusal (metrics).

use super::{IpTable, IpVerdict};
use crate::config::policy::ConnLimits;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;

/// A connection let in under scope `unauthenticated`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    /// Why the connection is suspect (`None`: the source is in good standing).
    pub suspect: Option<IpVerdict>,
    /// It took a rate slot, which a valid handshake gives back.
    pub charged: bool,
}

fn slot_us(limits: &ConnLimits) -> u64 {
    (1e6 / limits.rate_per_sec.max(1e-6)).clamp(1.0, 1e15) as u64
}

impl IpTable {
    /// A new connection from `ip` in scope `unauthenticated`. `Err` only for
    /// the cap on unauthenticated connections ([`IpVerdict::TooManyConnections`]).
    /// On `Ok` it counts until [`on_authenticated`](Self::on_authenticated)
    /// or [`on_disconnect`](Self::on_disconnect).
    pub fn on_connect_pending(
        &self,
        ip: IpAddr,
        limits: &ConnLimits,
    ) -> Result<Pending, IpVerdict> {
        let now = self.clock.mono_ms();
        let key = self.key_of(ip);
        let mut s = self.shard(&key);
        let cfg = s.cfg;
        let e = s.slot(key, now, &self.evictions);
        if e.active >= limits.max_concurrent {
            e.flagged = true;
            return Err(IpVerdict::TooManyConnections);
        }
        let mut suspect = None;
        if e.blocked_until_ms > now {
            suspect = Some(IpVerdict::Blocked {
                until_wall_ms: 0, // filled in below, outside the lock
            });
        } else if now.saturating_sub(e.window_start_ms) < super::ms(cfg.rate.failure_window)
            && u32::from(e.failures) >= cfg.rate.max_handshake_failures
        {
            suspect = Some(IpVerdict::TooManyFailures);
        }
        let t = slot_us(limits);
        let now_us = now.saturating_mul(1000);
        let next = e.tat_us.max(now_us).saturating_add(t);
        let charged = next - now_us <= t.saturating_mul(u64::from(limits.burst.max(1)));
        if charged {
            e.tat_us = next;
        } else if suspect.is_none() {
            suspect = Some(IpVerdict::RateLimited);
        }
        e.active = e.active.saturating_add(1);
        if suspect.is_some() {
            e.flagged = true;
        }
        let until = e.blocked_until_ms;
        drop(s);
        if let Some(IpVerdict::Blocked { until_wall_ms }) = &mut suspect {
            *until_wall_ms = self.wall_of(until, now);
        }
        if suspect.is_some() {
            self.suspects.fetch_add(1, Relaxed);
        }
        Ok(Pending { suspect, charged })
    }

    /// A connection from `ip` completed a valid handshake. `release`: it
    /// leaves the count of connections open (scope `unauthenticated`);
    /// `refund`: its rate slot is given back (`limits` are those it was
    /// charged under). Counts a collateral refusal if the source was flagged.
    pub fn on_authenticated(&self, ip: IpAddr, limits: &ConnLimits, release: bool, refund: bool) {
        let now = self.clock.mono_ms();
        let key = self.key_of(ip);
        let mut s = self.shard(&key);
        let Some(e) = s.map.get_mut(&key) else {
            return;
        };
        e.touched_ms = e.touched_ms.max(now);
        if release {
            e.active = e.active.saturating_sub(1);
        }
        if refund {
            e.tat_us = e.tat_us.saturating_sub(slot_us(limits));
        }
        if std::mem::take(&mut e.flagged) {
            self.collateral.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::policy::{IpTableConfig, RateConfig, ReputationConfig, TrackingConfig};
    use crate::policy::clock::{Clock, ManualClock};
    use crate::policy::iptable::Offence;
    use proptest::prelude::*;
    use std::sync::Arc;

    fn table() -> (IpTable, Arc<ManualClock>) {
        let clock = ManualClock::new(1_700_000_000_000);
        let cfg = IpTableConfig {
            rate: RateConfig::default(),
            reputation: ReputationConfig::default(),
            tracking: TrackingConfig { max_tracked: 1024 },
        };
        (IpTable::new(&cfg, clock.clone()), clock)
    }

    fn lim(rate: f64, burst: u32, cap: u32) -> ConnLimits {
        ConnLimits {
            rate_per_sec: rate,
            burst,
            max_concurrent: cap,
        }
    }

    #[test]
    fn valid_handshakes_cost_nothing() {
        let (t, _) = table();
        let a: IpAddr = "203.0.113.1".parse().expect("ip");
        let l = lim(1.0, 3, 5);
        // Thousands of connections at one instant, each authenticating at
        // once: never suspect, never refused, nothing left counted.
        for _ in 0..5000 {
            let p = t.on_connect_pending(a, &l).expect("admitted");
            assert_eq!(
                p,
                Pending {
                    suspect: None,
                    charged: true
                }
            );
            t.on_authenticated(a, &l, true, p.charged);
        }
        assert_eq!(t.active(a), Some(0));
        assert_eq!(t.stats().suspects, 0);
        assert_eq!(t.stats().collateral, 0);
    }

    #[test]
    fn only_unauthenticated_connections_meet_the_cap() {
        let (t, _) = table();
        let a: IpAddr = "203.0.113.2".parse().expect("ip");
        let l = lim(1e6, 1_000_000, 3);
        let held: Vec<_> = (0..3)
            .map(|_| t.on_connect_pending(a, &l).expect("ok"))
            .collect();
        assert_eq!(
            t.on_connect_pending(a, &l),
            Err(IpVerdict::TooManyConnections)
        );
        // One authenticates: its slot is free for the next handshake.
        t.on_authenticated(a, &l, true, held[0].charged);
        assert!(t.on_connect_pending(a, &l).is_ok());
        // The refusal flagged the source: this valid handshake is collateral.
        assert_eq!(t.stats().collateral, 1);
        assert_eq!(t.blocked_until(a), None, "the cap feeds no reputation");
    }

    #[test]
    fn over_the_rate_blocked_or_failing_sources_are_read_as_suspect() {
        let (t, clock) = table();
        let a: IpAddr = "203.0.113.3".parse().expect("ip");
        let l = lim(1.0, 2, 100);
        assert_eq!(t.on_connect_pending(a, &l).expect("1").suspect, None);
        assert_eq!(t.on_connect_pending(a, &l).expect("2").suspect, None);
        let p = t.on_connect_pending(a, &l).expect("read, not refused");
        assert_eq!(
            p,
            Pending {
                suspect: Some(IpVerdict::RateLimited),
                charged: false
            }
        );
        // A suspect that authenticates is served and counted as collateral.
        t.on_authenticated(a, &l, true, p.charged);
        assert_eq!(t.stats().collateral, 1);
        // Failures: past the threshold the source is blocked, still read.
        let b: IpAddr = "203.0.113.4".parse().expect("ip");
        for _ in 0..11 {
            t.on_offence(b, Offence::FailedHandshake);
        }
        assert!(t.blocked_until(b).is_some());
        let p = t.on_connect_pending(b, &l).expect("read");
        assert!(
            matches!(p.suspect, Some(IpVerdict::Blocked { until_wall_ms }) if until_wall_ms > clock.wall_ms())
        );
        assert_eq!(t.stats().suspects, 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any interleaving of connects, authentications and disconnects
        /// keeps the count equal to the connections still unauthenticated,
        /// never refuses while under the cap, and never blocks a source whose
        /// connections all authenticate.
        #[test]
        fn the_count_is_the_unauthenticated_connections(
            ops in proptest::collection::vec((0u8..3, 0u64..50), 1..400),
            cap in 1u32..16,
        ) {
            let (t, clock) = table();
            let a: IpAddr = "198.51.100.1".parse().expect("ip");
            let l = lim(5.0, 4, cap);
            let mut open: Vec<Pending> = Vec::new();
            for (op, dt) in ops {
                clock.advance_ms(dt);
                match op {
                    0 => match t.on_connect_pending(a, &l) {
                        Ok(p) => open.push(p),
                        Err(v) => {
                            prop_assert_eq!(v, IpVerdict::TooManyConnections);
                            prop_assert_eq!(open.len(), cap as usize);
                        }
                    },
                    1 => if let Some(p) = open.pop() {
                        t.on_authenticated(a, &l, true, p.charged);
                    },
                    _ => if open.pop().is_some() {
                        t.on_disconnect(a);
                    },
                }
                prop_assert_eq!(t.active(a).unwrap_or(0) as usize, open.len());
                prop_assert!(open.len() <= cap as usize);
            }
            prop_assert_eq!(t.blocked_until(a), None);
        }
    }
}
