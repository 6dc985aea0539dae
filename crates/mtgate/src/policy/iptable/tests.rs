//! Per-source table tests: GCRA, concurrency, failures, decay, blocks,
//! eviction, bounds (proptest) and snapshots.

use super::*;
use crate::config::policy::{RateConfig, ReputationConfig, TrackingConfig};
use crate::policy::clock::{Clock, ManualClock};
use proptest::prelude::*;
use std::sync::Arc;
use std::time::Duration;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn table(max_tracked: usize) -> (IpTable, Arc<ManualClock>, IpTableConfig) {
    let clock = ManualClock::new(1_700_000_000_000);
    let cfg = IpTableConfig {
        rate: RateConfig::default(),
        reputation: ReputationConfig::default(),
        tracking: TrackingConfig { max_tracked },
    };
    (IpTable::new(&cfg, clock.clone()), clock, cfg)
}

const BIG: ConnLimits = ConnLimits {
    rate_per_sec: 1e6,
    burst: 1_000_000,
    max_concurrent: 1_000_000,
};

#[test]
fn entry_is_64_bytes_with_its_key() {
    assert_eq!(std::mem::size_of::<Entry>(), 48);
    assert_eq!(ENTRY_BYTES, 64);
}

#[test]
fn keys_normalize_and_mask() {
    assert_eq!(
        Key::of(ip("::ffff:1.2.3.4"), 64),
        Key::of(ip("1.2.3.4"), 64)
    );
    assert_eq!(Key::of(ip("1.2.3.4"), 64).addr(), ip("1.2.3.4"));
    assert_eq!(
        Key::of(ip("2001:db8:1:2:3:4:5:6"), 64),
        Key::of(ip("2001:db8:1:2::9"), 64)
    );
    assert_ne!(
        Key::of(ip("2001:db8:1:2::1"), 64),
        Key::of(ip("2001:db8:1:3::1"), 64)
    );
    assert_eq!(
        Key::of(ip("2001:db8:1:2::1"), 64).addr(),
        ip("2001:db8:1:2::")
    );
    assert_ne!(
        Key::of(ip("2001:db8::1"), 128),
        Key::of(ip("2001:db8::2"), 128)
    );
    assert_ne!(Key::of(ip("::"), 64), Key::of(ip("0.0.0.0"), 64));
}

#[test]
fn gcra_allows_burst_then_rate() {
    let (t, clock, mut cfg) = table(1024);
    // Refusals here must not add up to a block.
    cfg.reputation.rate_limited = 0.0;
    t.reconfigure(&cfg);
    let a = ip("192.0.2.1");
    let lim = ConnLimits {
        rate_per_sec: 2.0,
        burst: 5,
        max_concurrent: 1000,
    };
    for i in 0..5 {
        assert_eq!(t.on_connect(a, &lim), Ok(()), "burst {i}");
    }
    assert_eq!(t.on_connect(a, &lim), Err(IpVerdict::RateLimited));
    clock.advance_ms(499);
    assert_eq!(t.on_connect(a, &lim), Err(IpVerdict::RateLimited));
    clock.advance_ms(1);
    assert_eq!(t.on_connect(a, &lim), Ok(()));
    assert_eq!(t.on_connect(a, &lim), Err(IpVerdict::RateLimited));
    // Over 10 s at 2/s: 20 more, not 21.
    let mut ok = 0;
    for _ in 0..100 {
        clock.advance_ms(100);
        if t.on_connect(a, &lim).is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 20);
    // A long pause refills the burst, not more.
    clock.advance_ms(60_000);
    let ok = (0..10).filter(|_| t.on_connect(a, &lim).is_ok()).count();
    assert_eq!(ok, 5);
    // Another source is independent.
    assert_eq!(t.on_connect(ip("192.0.2.2"), &lim), Ok(()));
}

#[test]
fn concurrency_cap_and_disconnects() {
    let (t, _, _) = table(1024);
    let a = ip("2001:db8:5:6::1");
    let lim = ConnLimits {
        max_concurrent: 3,
        ..BIG
    };
    for _ in 0..3 {
        t.on_connect(a, &lim).unwrap();
    }
    // Another address in the same /64 shares the count.
    assert_eq!(
        t.on_connect(ip("2001:db8:5:6::2"), &lim),
        Err(IpVerdict::TooManyConnections)
    );
    assert_eq!(t.active(a), Some(3));
    t.on_disconnect(a);
    assert_eq!(t.on_connect(a, &lim), Ok(()));
    for _ in 0..10 {
        t.on_disconnect(a);
    }
    assert_eq!(t.active(a), Some(0));
    t.on_disconnect(ip("198.51.100.1")); // unknown: nothing tracked
    assert_eq!(t.active(ip("198.51.100.1")), None);
    // Concurrency refusals feed no reputation by default (weight 0).
    assert_eq!(t.score(a), 0.0);
}

#[test]
fn handshake_failures_per_window() {
    let (t, clock, mut cfg) = table(1024);
    cfg.rate.max_handshake_failures = 3;
    cfg.reputation.failed_handshake = 0.0;
    t.reconfigure(&cfg);
    let a = ip("203.0.113.9");
    for _ in 0..3 {
        assert_eq!(t.on_connect(a, &BIG), Ok(()));
        t.on_offence(a, Offence::FailedHandshake);
    }
    assert_eq!(t.on_connect(a, &BIG), Err(IpVerdict::TooManyFailures));
    clock.advance_ms(59_999);
    assert_eq!(t.on_connect(a, &BIG), Err(IpVerdict::TooManyFailures));
    clock.advance_ms(1);
    assert_eq!(t.on_connect(a, &BIG), Ok(()));
}

#[test]
fn score_halves_every_half_life() {
    let (t, clock, _) = table(1024);
    let a = ip("198.51.100.20");
    t.on_offence(a, Offence::Replay); // 40
    assert!((t.score(a) - 40.0).abs() < 1e-3);
    clock.advance_ms(600_000);
    assert!((t.score(a) - 20.0).abs() < 1e-3, "{}", t.score(a));
    clock.advance_ms(300_000);
    assert!((t.score(a) - 20.0 / 2f64.sqrt()).abs() < 1e-3);
    t.on_offence(a, Offence::FailedHandshake); // + 10
    assert!((t.score(a) - (10.0 + 20.0 / 2f64.sqrt())).abs() < 1e-3);
    clock.advance_ms(100 * 600_000);
    assert!(t.score(a) < 1e-6);
}

#[test]
fn blocks_grow_on_repeat_offences_and_cap() {
    let (t, clock, mut cfg) = table(1024);
    cfg.reputation.block_time = Duration::from_secs(60);
    cfg.reputation.block_time_max = Duration::from_secs(300);
    cfg.reputation.block_multiplier = 2.0;
    t.reconfigure(&cfg);
    let a = ip("192.0.2.77");
    let mut durations = Vec::new();
    for _ in 0..5 {
        for _ in 0..3 {
            t.on_offence(a, Offence::Replay); // 40 each: blocks at 120
        }
        let start = clock.wall_ms();
        let until = t.blocked_until(a).expect("blocked");
        durations.push((until - start) / 1000);
        assert_eq!(t.score(a), 0.0, "score resets on block");
        assert_eq!(
            t.on_connect(a, &BIG),
            Err(IpVerdict::Blocked {
                until_wall_ms: until
            })
        );
        // Offences while blocked change nothing.
        t.on_offence(a, Offence::Flood);
        assert_eq!(t.blocked_until(a), Some(until));
        clock.advance_ms((until - start) as u64);
        assert_eq!(t.blocked_until(a), None);
        assert_eq!(t.on_connect(a, &BIG), Ok(()));
        t.on_disconnect(a);
    }
    assert_eq!(durations, [60, 120, 240, 300, 300]);
    let st = t.stats();
    assert_eq!(st.blocks_total, 5);
    assert_eq!(st.active_blocks, 0);
    // A quiet period of block_time_max forgets the repeats.
    clock.advance_ms(300_000);
    for _ in 0..3 {
        t.on_offence(a, Offence::Replay);
    }
    assert_eq!((t.blocked_until(a).unwrap() - clock.wall_ms()) / 1000, 60);
    assert_eq!(t.stats().active_blocks, 1);
}

#[test]
fn rate_limit_hits_lead_to_a_block_only_when_weighted() {
    // By default rate refusals feed no reputation (a crowd is not a flood)...
    let (t, _, _) = table(1024);
    let a = ip("192.0.2.200");
    let lim = ConnLimits {
        rate_per_sec: 1.0,
        burst: 1,
        max_concurrent: 100,
    };
    assert_eq!(t.on_connect(a, &lim), Ok(()));
    for _ in 0..200 {
        assert_eq!(t.on_connect(a, &lim), Err(IpVerdict::RateLimited));
    }
    assert_eq!(t.blocked_until(a), None);
    // ...an operator of the strict scope may weigh them.
    let clock = ManualClock::new(1_700_000_000_000);
    let cfg = IpTableConfig {
        rate: RateConfig::default(),
        reputation: ReputationConfig {
            rate_limited: 5.0,
            ..ReputationConfig::default()
        },
        tracking: TrackingConfig { max_tracked: 1024 },
    };
    let t = IpTable::new(&cfg, clock);
    let lim = ConnLimits {
        rate_per_sec: 1.0,
        burst: 1,
        max_concurrent: 100,
    };
    assert_eq!(t.on_connect(a, &lim), Ok(()));
    let mut verdicts = Vec::new();
    for _ in 0..25 {
        verdicts.push(t.on_connect(a, &lim).unwrap_err());
    }
    // 20 hits × 5 = 100 = threshold.
    assert!(verdicts[..20].iter().all(|v| *v == IpVerdict::RateLimited));
    assert!(matches!(verdicts[20], IpVerdict::Blocked { .. }));
}

#[test]
fn eviction_spares_active_and_blocked_sources() {
    let (t, clock, _) = table(1024);
    let keep = ip("192.0.2.1");
    let bad = ip("192.0.2.2");
    t.on_connect(keep, &BIG).unwrap();
    for _ in 0..3 {
        t.on_offence(bad, Offence::Replay);
    }
    assert!(t.blocked_until(bad).is_some());
    for i in 0..200_000u32 {
        let a = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
        let _ = t.on_connect(a, &BIG);
        t.on_disconnect(a);
        if i % 1000 == 0 {
            clock.advance_ms(10);
        }
    }
    let st = t.stats();
    assert!(st.tracked <= t.capacity() && t.capacity() == 1024);
    assert!(st.evictions >= 200_000 - 1024);
    assert_eq!(t.active(keep), Some(1));
    assert!(t.blocked_until(bad).is_some());
}

#[test]
fn snapshot_round_trip_keeps_blocks_and_scores() {
    let (t, clock, _) = table(1024);
    let blocked = ip("192.0.2.9");
    let scored = ip("2001:db8:aa:bb::1");
    for _ in 0..3 {
        t.on_offence(blocked, Offence::Replay);
    }
    t.on_offence(scored, Offence::Replay);
    t.on_connect(ip("192.0.2.10"), &BIG).unwrap(); // nothing worth saving
    let until = t.blocked_until(blocked).unwrap();
    let snap = t.export();
    assert_eq!(snap.entries.len(), 2);
    let json = serde_json::to_string(&snap).unwrap();
    let back: IpSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, snap);

    // A restart 5 minutes later (a new table, a new monotonic origin).
    let clock2 = ManualClock::new(clock.wall_ms() + 300_000);
    let t2 = IpTable::new(
        &IpTableConfig {
            tracking: TrackingConfig { max_tracked: 2048 },
            ..IpTableConfig::default()
        },
        clock2.clone(),
    );
    t2.import(back);
    assert_eq!(t2.blocked_until(blocked), Some(until));
    assert!(matches!(
        t2.on_connect(blocked, &BIG),
        Err(IpVerdict::Blocked { .. })
    ));
    // Half a half-life passed: 40 → 40/√2.
    let want = 40.0 / 2f64.sqrt();
    assert!(
        (t2.score(scored) - want).abs() < 0.01,
        "{}",
        t2.score(scored)
    );
    // The block still counts as a repeat: the next one lasts twice as long.
    clock2.advance_ms((until - clock2.wall_ms()) as u64);
    for _ in 0..3 {
        t2.on_offence(blocked, Offence::Replay);
    }
    assert_eq!(
        (t2.blocked_until(blocked).unwrap() - clock2.wall_ms()) / 1000,
        1200
    );
}

#[test]
fn reconfigure_shrinks_and_grows() {
    let (t, _, mut cfg) = table(4096);
    for i in 0..10_000u32 {
        t.on_offence(IpAddr::V4(Ipv4Addr::from(i)), Offence::Flood);
    }
    assert!(t.stats().tracked <= 4096);
    cfg.tracking.max_tracked = 1024;
    t.reconfigure(&cfg);
    assert!(t.stats().tracked <= 1024);
    assert_eq!(t.capacity(), 1024);
    cfg.tracking.max_tracked = 8192;
    t.reconfigure(&cfg);
    assert_eq!(t.capacity(), 8192);
    for i in 0..10_000u32 {
        t.on_offence(IpAddr::V4(Ipv4Addr::from(i)), Offence::Flood);
    }
    let n = t.stats().tracked;
    assert!(n <= 8192 && n > 4096, "{n}");
}

#[test]
fn admit_counts_and_prefix_change_drops_ipv6_counts() {
    let (t, _, mut cfg) = table(1024);
    let lim = ConnLimits {
        max_concurrent: 1,
        ..BIG
    };
    let a = ip("192.0.2.5");
    let b = ip("2001:db8:1:2::1");
    t.on_connect(a, &lim).unwrap();
    assert_eq!(t.on_connect(a, &lim), Err(IpVerdict::TooManyConnections));
    t.admit(a); // monitor mode let it in anyway
    assert_eq!(t.active(a), Some(2));
    t.on_connect(b, &lim).unwrap();
    cfg.rate.ipv6_prefix = 48;
    t.reconfigure(&cfg);
    assert_eq!(t.active(a), Some(2));
    assert_eq!(t.on_connect(b, &lim), Ok(())); // a fresh /48 source
    t.on_disconnect(b);
    t.on_disconnect(b);
    assert_eq!(t.active(b), Some(0));
    assert_eq!(t.active(ip("2001:db8:1::")), Some(0));
}

#[test]
fn many_threads_keep_counts_consistent() {
    let (t, _, mut cfg) = table(4096);
    cfg.reputation.rate_limited = 0.1; // offences exercised, never a block
    t.reconfigure(&cfg);
    let t = Arc::new(t);
    let lim = ConnLimits {
        max_concurrent: 1_000_000,
        ..BIG
    };
    let threads: Vec<_> = (0..4u32)
        .map(|n| {
            let t = t.clone();
            std::thread::spawn(move || {
                for i in 0..20_000u32 {
                    let a = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i % 64)));
                    t.on_connect(a, &lim).unwrap();
                    if i % 7 == n {
                        t.on_offence(a, Offence::RateLimited);
                    }
                    t.on_disconnect(a);
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    for i in 0..64u32 {
        assert_eq!(
            t.active(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))),
            Some(0)
        );
    }
    assert_eq!(t.stats().tracked, 64);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_table_never_exceeds_its_cap(
        ops in proptest::collection::vec((0u8..4, any::<u32>(), any::<bool>(), 0u64..5000), 1..3000),
    ) {
        let (t, clock, _) = table(1024);
        let lim = ConnLimits { rate_per_sec: 5.0, burst: 2, max_concurrent: 2 };
        for (op, a, v6, dt) in ops {
            let ip = if v6 {
                IpAddr::V6(Ipv6Addr::from((u128::from(a) << 64) | 0x2001_0db8))
            } else {
                IpAddr::V4(Ipv4Addr::from(a % 5000))
            };
            match op {
                0 => { let _ = t.on_connect(ip, &lim); }
                1 => t.on_disconnect(ip),
                2 => t.on_offence(ip, Offence::FailedHandshake),
                _ => t.on_offence(ip, Offence::Replay),
            }
            clock.advance_ms(dt);
            prop_assert!(t.stats().tracked <= 1024);
        }
        let snap = t.export();
        prop_assert!(snap.entries.len() <= 1024);
    }
}

#[test]
fn tables_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<IpTable>();
    check::<crate::policy::acl::Acl>();
    check::<crate::policy::geo::GeoPolicy>();
}

#[test]
fn started_blocks_are_logged_for_the_audit_trail_within_a_bound() {
    let (t, _clock, _cfg) = table(4096);
    let a = ip("192.0.2.88");
    for _ in 0..3 {
        t.on_offence(a, Offence::Replay); // 40 each: blocks at 120
    }
    // Offences while blocked start no new block.
    t.on_offence(a, Offence::Replay);
    let (blocks, more) = t.take_blocks();
    assert_eq!(more, 0);
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].source, a);
    assert!(blocks[0].for_ms > 0);
    assert_eq!(t.take_blocks(), (Vec::new(), 0), "taken once");
    // A flood of blocks: the log keeps BLOCK_LOG, the rest is a count.
    for i in 0..(BLOCK_LOG as u32 + 10) {
        let src = IpAddr::from((0x0a00_0000u32 + i).to_be_bytes());
        for _ in 0..3 {
            t.on_offence(src, Offence::Replay);
        }
    }
    let (blocks, more) = t.take_blocks();
    assert_eq!((blocks.len(), more), (BLOCK_LOG, 10));
}

#[test]
fn blocks_are_listed_and_lifted_by_hand() {
    let (t, clock, _) = table(1000);
    for who in ["10.0.0.1", "10.0.0.2"] {
        for _ in 0..1000 {
            if t.blocked_until(ip(who)).is_some() {
                break;
            }
            t.on_offence(ip(who), Offence::Flood);
        }
        assert!(t.blocked_until(ip(who)).is_some(), "{who} blocked");
        clock.advance_ms(10);
    }
    let listed = t.blocks(10);
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|(_, until)| *until > clock.wall_ms()));
    assert_eq!(t.blocks(1).len(), 1, "bounded");
    assert!(t.unblock(ip("10.0.0.1")));
    assert!(!t.unblock(ip("10.0.0.1")), "not blocked any more");
    assert!(!t.unblock(ip("10.9.9.9")), "never seen");
    assert_eq!(
        t.blocks(10),
        vec![listed
            .iter()
            .find(|b| b.0 == ip("10.0.0.2"))
            .copied()
            .unwrap()]
    );
    assert!(t.on_connect(ip("10.0.0.1"), &BIG).is_ok(), "served again");
    assert_eq!(t.score(ip("10.0.0.1")), 0.0, "its score forgiven");
}
