//! Memory test (issue 7): one million distinct sources (IPv4 addresses and
//! IPv6 /64s) through the per-source table with a cap of 50 000 leave it at
//! its cap and its heap where it was allocated, and a legitimate source with
//! an active connection, and a blocked one, survive the flood.
//! A counting global allocator measures live heap bytes for real.

use mtgate::config::policy::{IpTableConfig, TrackingConfig};
use mtgate::policy::clock::ManualClock;
use mtgate::policy::iptable::{ConnLimits, IpTable, IpVerdict, Offence, ENTRY_BYTES};
use mtgate_testkit::alloc::{live_bytes, Counting};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap allowed per tracked source: the 64-byte entry, the map's stored
/// hash, and its index (8 + 1 bytes a bucket, at most ~4.6 buckets per entry
/// after the index's one doubling under churn).
const BYTES_PER_SOURCE: usize = ENTRY_BYTES + 8 + 48;
/// Other threads (the test harness) allocate too; the counter is global.
const NOISE: isize = 8 * 1024;

#[test]
fn a_million_sources_keep_the_table_at_its_cap() {
    const CAP: usize = 50_000;
    let clock = ManualClock::new(1_700_000_000_000);
    let cfg = IpTableConfig {
        tracking: TrackingConfig { max_tracked: CAP },
        ..IpTableConfig::default()
    };
    let base = live_bytes();
    let table = IpTable::new(&cfg, clock.clone());
    let allocated = live_bytes() - base;
    let bound = (CAP * BYTES_PER_SOURCE) as isize;
    let stated = table.memory_bytes() as isize;
    assert!(stated <= bound, "stated {stated} > bound {bound}");
    assert!(
        (allocated - stated).abs() <= NOISE,
        "allocated {allocated} vs stated {stated}"
    );

    let limits = ConnLimits {
        rate_per_sec: 20.0,
        burst: 40,
        max_concurrent: 128,
    };
    let legit = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    let legit6 = IpAddr::V6("2001:db8:1:2::1".parse::<Ipv6Addr>().unwrap());
    let bad = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 66));
    table.on_connect(legit, &limits).unwrap();
    table.on_connect(legit6, &limits).unwrap();
    for _ in 0..3 {
        table.on_offence(bad, Offence::Replay);
    }
    let bad_until = table.blocked_until(bad).expect("blocked");

    let mut peak = 0isize;
    let mut at_half = 0isize;
    for i in 0u32..1_000_000 {
        let ip = if i % 2 == 0 {
            IpAddr::V4(Ipv4Addr::from(0x0a00_0000u32.wrapping_add(i)))
        } else {
            // A distinct /64 each time (the low 64 bits vary too, and are masked away).
            let v = (0x2a00u128 << 112) | (u128::from(i) << 64) | u128::from(i.wrapping_mul(7919));
            IpAddr::V6(Ipv6Addr::from(v))
        };
        assert_eq!(table.on_connect(ip, &limits), Ok(()));
        table.on_disconnect(ip);
        table.on_offence(ip, Offence::FailedHandshake);
        if i % 10_000 == 0 {
            clock.advance_ms(50);
            peak = peak.max(live_bytes() - base);
            assert!(table.stats().tracked <= CAP);
        }
        if i == 500_000 {
            at_half = live_bytes() - base;
        }
    }
    let after = live_bytes() - base;
    let st = table.stats();
    assert!(st.tracked <= CAP && st.tracked > CAP * 9 / 10, "{st:?}");
    assert!(st.evictions >= 1_000_000 - CAP as u64, "{st:?}");
    // Nothing was allocated by the flood: the table's heap is what `new` took.
    // The smallest growth the table could make (one shard's index doubling)
    // is 36 KiB; NOISE only covers the test harness allocating beside us.
    assert!(
        peak <= stated + NOISE,
        "peak {peak} above the stated {stated}"
    );
    assert!(
        (after - allocated).abs() <= NOISE,
        "table heap changed under the flood: {allocated} -> {after}"
    );
    assert!(
        (after - at_half).abs() <= NOISE,
        "table heap still growing in the second half: {at_half} -> {after}"
    );

    // The legitimate sources kept their connection counts; the bad one its block.
    assert_eq!(table.active(legit), Some(1));
    assert_eq!(table.active(legit6), Some(1));
    assert_eq!(table.blocked_until(bad), Some(bad_until));
    assert!(matches!(
        table.on_connect(bad, &limits),
        Err(IpVerdict::Blocked { .. })
    ));
    println!(
        "ip table: cap {CAP}, {allocated} bytes at start, {after} after 1e6 sources \
         ({} per source, {} B entry, stated max {stated}); {} evictions",
        after as usize / CAP,
        ENTRY_BYTES,
        st.evictions
    );
}
