//! The per-chunk calls of a user lease (`charge`, `throttle`, `revoked`) never
//! allocate, even across a calendar rollover: counted by a global allocator
//! in this test binary of its own.

use mtgate::config::user_limits::{PeriodQuota, QuotaPeriod, UserLimits};
use mtgate::policy::clock::ManualClock;
use mtgate::policy::users::{Charge, Dir, UserTable};
use mtgate_testkit::alloc::{thread_allocations, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn hot_path_does_not_allocate() {
    let clock = ManualClock::new(1_800_000_000_000);
    let table = UserTable::new(chrono_tz::Europe::Moscow, clock.clone());
    let limits = UserLimits {
        quota: Some(u64::MAX - 1),
        period_quota: Some(PeriodQuota {
            period: QuotaPeriod::Daily,
            bytes: u64::MAX - 1,
        }),
        bandwidth_up: Some(1_000_000),
        bandwidth_down: Some(2_000_000),
        ..Default::default()
    };
    table.reconfigure(&[("a".to_string(), limits)]);
    let lease = table
        .admit("a", "192.0.2.1".parse().unwrap())
        .unwrap()
        .with_conn_bandwidth(500_000);
    let before = thread_allocations();
    for _ in 0..10_000 {
        assert_eq!(lease.charge(Dir::Up, 16_384), Charge::Ok);
        assert_eq!(lease.charge(Dir::Down, 16_384), Charge::Ok);
        let _ = lease.throttle(Dir::Up, 16_384);
        let _ = lease.throttle(Dir::Down, 16_384);
        assert!(lease.revoked().is_none());
        // Crosses several local midnights along the way.
        clock.advance_ms(60_000);
    }
    let after = thread_allocations();
    assert_eq!(after - before, 0, "allocations on the hot path");
    // The counter does count.
    let v: Vec<u8> = std::hint::black_box(Vec::with_capacity(8));
    assert_eq!(thread_allocations() - after, 1);
    drop(v);
    let usage = table.usage("a").unwrap();
    assert_eq!(usage.up, 10_000 * 16_384);
    assert!(
        usage.period.unwrap().used < usage.up,
        "the period rolled over"
    );
}
