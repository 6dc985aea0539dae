//! Tests for the user table: admission, IP window, quotas at calendar
//! boundaries, bandwidth, reconfigure and persistence round trips.

use super::*;
use crate::config::user_limits::PeriodQuota;
use crate::policy::clock::{Clock, ManualClock};
use proptest::prelude::*;
use std::time::Duration;

const HOUR: u64 = 3_600_000;
const MOSCOW: Tz = chrono_tz::Europe::Moscow;
const NY: Tz = chrono_tz::America::New_York;

fn ms(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap()
        .timestamp_millis()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn table(tz: Tz, at: &str, users: &[(&str, UserLimits)]) -> (UserTable, Arc<ManualClock>) {
    let clock = ManualClock::new(ms(at));
    let t = UserTable::new(tz, clock.clone());
    t.reconfigure(&with_names(users));
    (t, clock)
}

fn with_names(users: &[(&str, UserLimits)]) -> Vec<(String, UserLimits)> {
    users
        .iter()
        .map(|(n, l)| (n.to_string(), l.clone()))
        .collect()
}

fn period(period: QuotaPeriod, bytes: u64) -> UserLimits {
    UserLimits {
        period_quota: Some(PeriodQuota { period, bytes }),
        ..Default::default()
    }
}

const A: &str = "10.0.0.1";

#[test]
fn default_limits_admit_anyone() {
    let (t, _) = table(
        MOSCOW,
        "2026-01-01T00:00:00Z",
        &[("a", UserLimits::default())],
    );
    let leases: Vec<_> = (0..100)
        .map(|i| {
            t.admit("a", IpAddr::from([10, 0, (i / 250) as u8, i as u8]))
                .unwrap()
        })
        .collect();
    assert_eq!(t.usage("a").unwrap().active, 100);
    assert_eq!(leases[0].charge(Dir::Up, u64::MAX / 4), Charge::Ok);
    assert_eq!(leases[0].throttle(Dir::Up, 1 << 30), None);
    assert_eq!(t.admit("nobody", ip(A)).unwrap_err(), UserRefusal::Unknown);
    drop(leases);
    assert_eq!(t.usage("a").unwrap().active, 0);
}

#[test]
fn disabled_and_expired() {
    let expires = ms("2026-06-01T00:00:00Z");
    let (t, clock) = table(
        NY,
        "2026-05-31T23:59:59Z",
        &[
            (
                "off",
                UserLimits {
                    enabled: false,
                    ..Default::default()
                },
            ),
            (
                "exp",
                UserLimits {
                    expires_ms: Some(expires),
                    ..Default::default()
                },
            ),
        ],
    );
    assert_eq!(t.admit("off", ip(A)).unwrap_err(), UserRefusal::Disabled);
    assert_eq!(UserRefusal::Disabled.name(), "user_disabled");
    let lease = t.admit("exp", ip(A)).unwrap();
    assert_eq!(lease.revoked(), None);
    clock.advance_ms(999);
    assert!(t.admit("exp", ip(A)).is_ok());
    clock.advance_ms(1);
    assert_eq!(t.admit("exp", ip(A)).unwrap_err(), UserRefusal::Expired);
    assert_eq!(lease.revoked(), Some(UserRefusal::Expired));
}

#[test]
fn concurrent_limit_with_leases_dropping() {
    let lim = UserLimits {
        max_connections: Some(2),
        ..Default::default()
    };
    let (t, _) = table(MOSCOW, "2026-01-01T00:00:00Z", &[("a", lim)]);
    let l1 = t.admit("a", ip(A)).unwrap();
    let l2 = t.admit("a", ip("10.0.0.2")).unwrap();
    assert_eq!(
        t.admit("a", ip(A)).unwrap_err(),
        UserRefusal::TooManyConnections
    );
    drop(l1);
    let l3 = t.admit("a", ip(A)).unwrap();
    assert_eq!(
        t.admit("a", ip(A)).unwrap_err(),
        UserRefusal::TooManyConnections
    );
    drop((l2, l3));
    assert_eq!(t.usage("a").unwrap().active, 0);
    let _l = (t.admit("a", ip(A)).unwrap(), t.admit("a", ip(A)).unwrap());
}

#[test]
fn unique_ip_window() {
    let lim = UserLimits {
        max_ips: Some(IpLimit {
            max: 3,
            window: Duration::from_secs(3600),
        }),
        ..Default::default()
    };
    let (t, clock) = table(MOSCOW, "2026-01-01T00:00:00Z", &[("a", lim)]);
    for i in 1..=3 {
        drop(t.admit("a", IpAddr::from([10, 0, 0, i])).unwrap());
        clock.advance_ms(60_000);
    }
    // 3 recent: a 4th is refused, a known one always comes back.
    assert_eq!(
        t.admit("a", ip("10.0.0.4")).unwrap_err(),
        UserRefusal::TooManyIps
    );
    let back = t.admit("a", ip("10.0.0.1")).unwrap();
    assert_eq!(t.usage("a").unwrap().recent_ips, 3);
    // An hour after .2 and .3 were last seen they expire; .1 stays (open).
    clock.advance_ms(HOUR);
    let four = t.admit("a", ip("10.0.0.4")).unwrap();
    let five = t.admit("a", ip("10.0.0.5")).unwrap();
    assert_eq!(
        t.admit("a", ip("10.0.0.6")).unwrap_err(),
        UserRefusal::TooManyIps
    );
    // An open connection keeps its IP recent however long it lasts.
    clock.advance_ms(10 * HOUR);
    drop((four, five));
    assert_eq!(
        t.admit("a", ip("10.0.0.6")).unwrap_err(),
        UserRefusal::TooManyIps
    );
    clock.advance_ms(HOUR);
    drop(t.admit("a", ip("10.0.0.6")).unwrap());
    assert_eq!(t.usage("a").unwrap().recent_ips, 2);
    drop(back);
}

#[test]
fn ipv6_counts_by_64_and_mapped_as_v4() {
    let lim = UserLimits {
        max_ips: Some(IpLimit {
            max: 1,
            window: Duration::from_secs(60),
        }),
        ..Default::default()
    };
    let (t, _) = table(
        MOSCOW,
        "2026-01-01T00:00:00Z",
        &[("a", lim.clone()), ("b", lim)],
    );
    let _a = t.admit("a", ip("2001:db8:1:2::1")).unwrap();
    let _a2 = t.admit("a", ip("2001:db8:1:2:ffff::9")).unwrap();
    assert_eq!(
        t.admit("a", ip("2001:db8:1:3::1")).unwrap_err(),
        UserRefusal::TooManyIps
    );
    let _b = t.admit("b", ip("192.0.2.7")).unwrap();
    let _b2 = t.admit("b", ip("::ffff:192.0.2.7")).unwrap();
    assert_eq!(
        t.admit("b", ip("192.0.2.8")).unwrap_err(),
        UserRefusal::TooManyIps
    );
}

#[test]
fn lifetime_quota_reached_exactly() {
    let lim = UserLimits {
        quota: Some(1000),
        ..Default::default()
    };
    let (t, _) = table(MOSCOW, "2026-01-01T00:00:00Z", &[("a", lim)]);
    let l = t.admit("a", ip(A)).unwrap();
    assert_eq!(l.charge(Dir::Up, 600), Charge::Ok);
    assert_eq!(l.charge(Dir::Down, 399), Charge::Ok);
    assert!(t.admit("a", ip(A)).is_ok());
    assert_eq!(t.stats().over_quota, 0);
    assert_eq!(l.charge(Dir::Down, 1), Charge::Exhausted);
    assert_eq!(
        t.admit("a", ip(A)).unwrap_err(),
        UserRefusal::QuotaExhausted
    );
    assert_eq!(l.revoked(), Some(UserRefusal::QuotaExhausted));
    let s = t.stats();
    assert_eq!(s.over_quota, 1);
    assert_eq!((s.per_user[0].up, s.per_user[0].down), (600, 400));
    // Raising the quota lets the user back.
    t.reconfigure(&with_names(&[(
        "a",
        UserLimits {
            quota: Some(2000),
            ..Default::default()
        },
    )]));
    assert!(t.admit("a", ip(A)).is_ok());
    assert_eq!(t.stats().over_quota, 0);
}

#[test]
fn daily_quota_resets_at_local_midnight_moscow() {
    // 23:59:59 in Moscow (+03).
    let (t, clock) = table(
        MOSCOW,
        "2026-03-10T20:59:59Z",
        &[("a", period(QuotaPeriod::Daily, 100))],
    );
    let l = t.admit("a", ip(A)).unwrap();
    assert_eq!(l.charge(Dir::Up, 99), Charge::Ok);
    assert_eq!(l.charge(Dir::Up, 1), Charge::Exhausted);
    assert_eq!(
        t.admit("a", ip(A)).unwrap_err(),
        UserRefusal::QuotaExhausted
    );
    assert_eq!(t.stats().over_quota, 1);
    clock.advance_ms(999);
    assert_eq!(
        t.admit("a", ip(A)).unwrap_err(),
        UserRefusal::QuotaExhausted
    );
    clock.advance_ms(1); // 00:00:00 local
    assert_eq!(t.stats().over_quota, 0);
    let u = t.usage("a").unwrap();
    assert_eq!(u.period.unwrap().used, 0);
    assert_eq!(u.period.unwrap().start_ms, ms("2026-03-11T00:00:00+03:00"));
    assert_eq!(u.period_end_ms, Some(ms("2026-03-12T00:00:00+03:00")));
    assert_eq!(u.up, 100, "lifetime usage is kept");
    assert!(t.admit("a", ip(A)).is_ok());
    assert_eq!(l.charge(Dir::Down, 50), Charge::Ok);
    assert_eq!(t.usage("a").unwrap().period.unwrap().used, 50);
}

#[test]
fn daily_quota_across_dst_new_york() {
    // 2026-11-01 00:00 EDT (-04); the day is 25 hours long.
    let (t, clock) = table(
        NY,
        "2026-11-01T04:00:00Z",
        &[("a", period(QuotaPeriod::Daily, 10))],
    );
    let l = t.admit("a", ip(A)).unwrap();
    assert_eq!(l.charge(Dir::Up, 10), Charge::Exhausted);
    clock.advance_ms(24 * HOUR); // 23:00 EST, same local day
    assert_eq!(l.charge(Dir::Up, 0), Charge::Exhausted);
    clock.advance_ms(HOUR); // midnight EST
    assert_eq!(l.charge(Dir::Up, 1), Charge::Ok);
    assert_eq!(
        t.usage("a").unwrap().period.unwrap().start_ms,
        ms("2026-11-02T00:00:00-05:00")
    );
}

#[test]
fn weekly_and_monthly_rollover() {
    // Sunday 2026-11-22 23:30 in New York.
    let (t, clock) = table(
        NY,
        "2026-11-22T23:30:00-05:00",
        &[
            ("w", period(QuotaPeriod::Weekly, 5)),
            ("m", period(QuotaPeriod::Monthly, 5)),
        ],
    );
    let w = t.admit("w", ip(A)).unwrap();
    let m = t.admit("m", ip(A)).unwrap();
    assert_eq!(w.charge(Dir::Down, 5), Charge::Exhausted);
    assert_eq!(m.charge(Dir::Down, 5), Charge::Exhausted);
    clock.advance_ms(HOUR); // Monday 00:30
    assert_eq!(w.charge(Dir::Down, 1), Charge::Ok);
    assert_eq!(m.charge(Dir::Down, 1), Charge::Exhausted);
    clock.set_wall_ms(ms("2026-11-30T23:59:59.999-05:00"));
    assert_eq!(m.charge(Dir::Down, 0), Charge::Exhausted);
    clock.advance_ms(1);
    assert_eq!(m.charge(Dir::Down, 4), Charge::Ok);
    assert_eq!(
        t.usage("m").unwrap().period.unwrap().start_ms,
        ms("2026-12-01T00:00:00-05:00")
    );
}

#[test]
fn monthly_in_march_new_york_spans_dst() {
    let (t, clock) = table(
        NY,
        "2026-03-31T23:59:00-04:00",
        &[("m", period(QuotaPeriod::Monthly, 1))],
    );
    let u = t.usage("m").unwrap();
    assert_eq!(u.period.unwrap().start_ms, ms("2026-03-01T00:00:00-05:00"));
    assert_eq!(u.period_end_ms, Some(ms("2026-04-01T00:00:00-04:00")));
    let l = t.admit("m", ip(A)).unwrap();
    assert_eq!(l.charge(Dir::Up, 1), Charge::Exhausted);
    clock.advance_ms(60_000);
    assert!(t.admit("m", ip(A)).is_ok());
}

#[test]
fn reconfigure_keeps_usage_and_drops_removed() {
    let (t, _) = table(
        MOSCOW,
        "2026-01-01T00:00:00Z",
        &[("a", UserLimits::default()), ("b", UserLimits::default())],
    );
    let la = t.admit("a", ip(A)).unwrap();
    let lb = t.admit("b", ip(A)).unwrap();
    let _ = la.charge(Dir::Up, 70);
    let _ = lb.charge(Dir::Up, 5);
    t.reconfigure(&with_names(&[
        (
            "a",
            UserLimits {
                quota: Some(50),
                ..Default::default()
            },
        ),
        ("c", UserLimits::default()),
    ]));
    assert_eq!(t.len(), 2);
    assert_eq!(t.usage("a").unwrap().up, 70);
    assert_eq!(t.usage("a").unwrap().active, 1);
    assert!(t.usage("b").is_none());
    assert_eq!(lb.revoked(), Some(UserRefusal::Unknown));
    assert_eq!(la.revoked(), Some(UserRefusal::QuotaExhausted));
    assert_eq!(t.admit("b", ip(A)).unwrap_err(), UserRefusal::Unknown);
    // A removed user that comes back starts afresh.
    t.reconfigure(&with_names(&[("b", UserLimits::default())]));
    assert_eq!(t.usage("b").unwrap().up, 0);
}

#[test]
fn changing_the_period_starts_it_afresh_and_timezone_moves_the_end() {
    let (t, _) = table(
        MOSCOW,
        "2026-01-10T12:00:00Z",
        &[("a", period(QuotaPeriod::Daily, 100))],
    );
    let _ = t.admit("a", ip(A)).unwrap().charge(Dir::Up, 40);
    t.reconfigure(&with_names(&[("a", period(QuotaPeriod::Daily, 200))]));
    assert_eq!(t.usage("a").unwrap().period.unwrap().used, 40);
    t.reconfigure(&with_names(&[("a", period(QuotaPeriod::Monthly, 200))]));
    let u = t.usage("a").unwrap();
    assert_eq!(u.period.unwrap().used, 0);
    assert_eq!(u.period.unwrap().start_ms, ms("2026-01-01T00:00:00+03:00"));
    t.set_timezone(NY);
    assert_eq!(t.timezone(), NY);
    assert_eq!(
        t.usage("a").unwrap().period_end_ms,
        Some(ms("2026-02-01T00:00:00-05:00"))
    );
}

#[test]
fn export_import_round_trip() {
    let users = [
        ("a", period(QuotaPeriod::Daily, 1000)),
        ("b", UserLimits::default()),
    ];
    let (t, clock) = table(MOSCOW, "2026-05-05T10:00:00Z", &users);
    let la = t.admit("a", ip(A)).unwrap();
    let _ = la.charge(Dir::Up, 300);
    let _ = la.charge(Dir::Down, 200);
    let _ = t.admit("b", ip(A)).unwrap().charge(Dir::Down, 7);
    let snap = t.export();
    let json = serde_json::to_string(&snap).unwrap();
    let back: UsersSnapshot = serde_json::from_str(&json).unwrap();
    assert_eq!(back, snap);

    // A restart within the same day restores everything.
    let t2 = UserTable::new(MOSCOW, clock.clone());
    t2.reconfigure(&with_names(&users));
    assert_eq!(t2.import(&back), 2);
    assert_eq!(t2.export(), snap);
    assert_eq!(t2.usage("a").unwrap().period.unwrap().used, 500);
    // Importing twice counts nothing twice.
    t2.import(&back);
    assert_eq!(t2.export(), snap);

    // A restart the next day restores lifetime usage, not the old period's.
    clock.advance_ms(24 * HOUR);
    let t3 = UserTable::new(MOSCOW, clock.clone());
    t3.reconfigure(&with_names(&users));
    t3.import(&back);
    let u = t3.usage("a").unwrap();
    assert_eq!((u.up, u.down), (300, 200));
    assert_eq!(u.period.unwrap().used, 0);
    // Unknown users in the snapshot are ignored.
    let t4 = UserTable::new(MOSCOW, clock);
    assert_eq!(t4.import(&back), 0);
    assert!(t4.is_empty());
}

#[test]
fn survives_a_restart_through_the_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(crate::policy::persist::STATE_FILE);
    let users = [(
        "a",
        UserLimits {
            quota: Some(1000),
            ..period(QuotaPeriod::Weekly, 500)
        },
    )];
    let (t, clock) = table(NY, "2026-07-01T12:00:00Z", &users);
    let l = t.admit("a", ip(A)).unwrap();
    assert_eq!(l.charge(Dir::Up, 499), Charge::Ok);
    crate::policy::persist::save(&path, &t.export()).unwrap();
    drop((l, t));

    let t2 = UserTable::new(NY, clock);
    t2.reconfigure(&with_names(&users));
    let snap: UsersSnapshot = crate::policy::persist::load(&path).unwrap().unwrap();
    t2.import(&snap);
    let l = t2.admit("a", ip(A)).unwrap();
    assert_eq!(
        l.charge(Dir::Down, 1),
        Charge::Exhausted,
        "the week's usage came back"
    );
}

#[test]
fn shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<UserTable>();
    send_sync::<UserLease>();
}

#[test]
fn user_bandwidth_is_shared_by_connections() {
    let rate = 1_000_000;
    let lim = UserLimits {
        bandwidth_up: Some(rate),
        ..Default::default()
    };
    let (t, clock) = table(MOSCOW, "2026-01-01T00:00:00Z", &[("a", lim)]);
    let leases = [t.admit("a", ip(A)).unwrap(), t.admit("a", ip(A)).unwrap()];
    assert_eq!(leases[0].throttle(Dir::Down, 1 << 30), None, "no down cap");
    // Two connections alternate sending 16 KiB at full speed for 10 s.
    let start = clock.mono_ms();
    let mut sent = 0u64;
    let mut i = 0;
    while clock.mono_ms() < start + 10_000 {
        if let Some(w) = leases[i % 2].throttle(Dir::Up, 16_384) {
            clock.advance_ms((w.as_nanos() as u64).div_ceil(1_000_000));
        }
        if clock.mono_ms() < start + 10_000 {
            sent += 16_384;
        }
        i += 1;
    }
    let ratio = sent as f64 / 10.0 / rate as f64;
    assert!((0.9..=1.1).contains(&ratio), "{ratio}");
}

#[test]
fn per_connection_cap() {
    let (t, clock) = table(
        MOSCOW,
        "2026-01-01T00:00:00Z",
        &[("a", UserLimits::default())],
    );
    let l = t.admit("a", ip(A)).unwrap().with_conn_bandwidth(100_000);
    let free = t.admit("a", ip(A)).unwrap();
    let mut sent = 0u64;
    let end = clock.mono_ms() + 10_000;
    while clock.mono_ms() < end {
        if let Some(w) = l.throttle(Dir::Down, 4096) {
            clock.advance_ms((w.as_nanos() as u64).div_ceil(1_000_000));
        }
        if clock.mono_ms() < end {
            sent += 4096;
        }
    }
    let ratio = sent as f64 / 10.0 / 100_000.0;
    assert!((0.9..=1.1).contains(&ratio), "{ratio}");
    assert_eq!(free.throttle(Dir::Down, 1 << 30), None);
}

#[test]
fn charge_from_many_threads_loses_nothing() {
    let lim = UserLimits {
        quota: Some(u64::MAX - 1),
        ..period(QuotaPeriod::Daily, u64::MAX - 1)
    };
    let (t, _) = table(MOSCOW, "2026-01-01T12:00:00Z", &[("a", lim)]);
    std::thread::scope(|s| {
        for k in 0..4 {
            let l = t.admit("a", ip(A)).unwrap();
            s.spawn(move || {
                let dir = if k % 2 == 0 { Dir::Up } else { Dir::Down };
                for _ in 0..10_000 {
                    assert_eq!(l.charge(dir, 3), Charge::Ok);
                }
            });
        }
    });
    let u = t.usage("a").unwrap();
    assert_eq!((u.up, u.down, u.active), (60_000, 60_000, 0));
    assert_eq!(u.period.unwrap().used, 120_000);
}

#[derive(Debug, Clone)]
enum Op {
    Admit(u8),
    Drop(usize),
    Wait(u32),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..8).prop_map(Op::Admit),
        any::<usize>().prop_map(Op::Drop),
        (0u32..2000).prop_map(Op::Wait),
    ]
}

proptest! {
    /// Whatever happens, open connections stay within max_connections, the
    /// recent-IP set within max_ips, and every lease dropped is counted out.
    #[test]
    fn limits_and_bounds_hold(max_conn in 1u32..6, max_ips in 1u32..5, ops in prop::collection::vec(op(), 0..200)) {
        let lim = UserLimits {
            max_connections: Some(max_conn),
            max_ips: Some(IpLimit { max: max_ips, window: Duration::from_secs(1) }),
            ..Default::default()
        };
        let (t, clock) = table(MOSCOW, "2026-01-01T00:00:00Z", &[("a", lim)]);
        let mut open: Vec<UserLease> = Vec::new();
        for op in ops {
            match op {
                Op::Admit(i) => match t.admit("a", IpAddr::from([10, 0, 0, i])) {
                    Ok(l) => open.push(l),
                    Err(e) => prop_assert!(matches!(e, UserRefusal::TooManyConnections | UserRefusal::TooManyIps)),
                },
                Op::Drop(i) => if !open.is_empty() {
                    let n = open.len();
                    open.remove(i % n);
                },
                Op::Wait(ms) => clock.advance_ms(u64::from(ms)),
            }
            let u = t.usage("a").unwrap();
            prop_assert_eq!(u.active as usize, open.len());
            prop_assert!(u.active <= max_conn);
            prop_assert!(u.recent_ips <= max_ips as usize);
        }
        drop(open);
        prop_assert_eq!(t.usage("a").unwrap().active, 0);
    }
}
