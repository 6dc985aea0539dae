//! ACL tests: parsing, windows across time zones, list files, and a proptest
//! against a naive linear scan.

use super::*;
use crate::config::policy::{AclConfig, AclFile, AclRule};
use proptest::prelude::*;
use std::io::Write;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn rule(cidr: &str, level: Level, window: Option<TimeWindow>) -> AclRule {
    AclRule {
        net: parse_net(cidr).unwrap(),
        level,
        window,
        until_ms: None,
        managed: false,
    }
}

fn win(days: Option<&[&str]>, hours: Option<&str>) -> TimeWindow {
    let days: Option<Vec<String>> = days.map(|d| d.iter().map(|s| s.to_string()).collect());
    TimeWindow::parse(days.as_deref(), hours).unwrap()
}

fn cfg(rules: Vec<AclRule>) -> AclConfig {
    AclConfig {
        rules,
        ..AclConfig::default()
    }
}

// 2026-11-23 is a Monday. 12:00 UTC.
const MON_NOON_UTC: i64 = 1_795_435_200_000;
const HOUR: i64 = 3_600_000;

#[test]
fn monday_constant_is_a_monday_noon() {
    assert_eq!(local_time(Tz::UTC, MON_NOON_UTC), Some((0, 12 * 60)));
}

#[test]
fn parse_net_forms() {
    assert_eq!(parse_net("1.2.3.4").unwrap().to_string(), "1.2.3.4/32");
    assert_eq!(parse_net("1.2.3.4/8").unwrap().to_string(), "1.0.0.0/8");
    assert_eq!(
        parse_net("2001:db8::1").unwrap().to_string(),
        "2001:db8::1/128"
    );
    assert_eq!(
        parse_net("::ffff:10.1.2.3").unwrap().to_string(),
        "10.1.2.3/32"
    );
    assert_eq!(
        parse_net("::ffff:10.0.0.0/104").unwrap().to_string(),
        "10.0.0.0/8"
    );
    for bad in [
        "",
        "1.2.3",
        "1.2.3.4/33",
        "::/129",
        "x",
        "1.2.3.4/",
        "1.2.3.4 5",
    ] {
        assert_eq!(parse_net(bad), None, "{bad}");
    }
}

#[test]
fn firehol_list_parsing() {
    let text = "# FireHOL level1\n\n  10.0.0.0/8  \n1.2.3.4 # a host\n2001:db8::/32\n\
                bogus line\n300.1.1.1\n; comment\n5.6.7.8/24;x\n\t\n::1\n";
    let (nets, skipped) = parse_list(text);
    let got: Vec<String> = nets.iter().map(|n| n.to_string()).collect();
    assert_eq!(
        got,
        [
            "10.0.0.0/8",
            "1.2.3.4/32",
            "2001:db8::/32",
            "5.6.7.0/24",
            "::1/128"
        ]
    );
    assert_eq!(skipped, 2);
}

#[test]
fn window_parsing() {
    assert!(TimeWindow::parse(None, Some("25:00-26:00")).is_err());
    assert!(TimeWindow::parse(None, Some("10:00-10:00")).is_err());
    assert!(TimeWindow::parse(None, Some("10:60-11:00")).is_err());
    assert!(TimeWindow::parse(None, Some("9-10")).is_err());
    assert!(TimeWindow::parse(Some(&["moon".into()]), None).is_err());
    assert!(TimeWindow::parse(Some(&["mé".into()]), None).is_err());
    assert!(TimeWindow::parse(Some(&[]), None).is_err());
    let w = win(Some(&["Monday", "weekend"]), Some("00:00-24:00"));
    assert!(w.is_open(0, 0) && w.is_open(6, 1439) && w.is_open(5, 600));
    assert!(!w.is_open(1, 600));
}

#[test]
fn windows_wrap_midnight_on_the_start_day() {
    let w = win(Some(&["fri"]), Some("22:00-06:00"));
    assert!(w.is_open(4, 22 * 60)); // Fri 22:00
    assert!(w.is_open(5, 5 * 60 + 59)); // Sat 05:59
    assert!(!w.is_open(5, 6 * 60)); // Sat 06:00
    assert!(!w.is_open(4, 5 * 60)); // Fri 05:00 belongs to Thursday's window
    assert!(!w.is_open(5, 22 * 60));
    let daily = win(None, Some("22:00-06:00"));
    assert!(daily.is_open(0, 23 * 60) && daily.is_open(0, 60) && !daily.is_open(0, 12 * 60));
    // Sunday night wraps into Monday.
    let sun = win(Some(&["sun"]), Some("23:00-01:00"));
    assert!(sun.is_open(0, 30) && !sun.is_open(6, 30));
}

#[test]
fn windows_open_and_close_in_the_configured_time_zone() {
    // Monday 09:00-18:00 in Berlin (UTC+1 in November).
    let mut c = cfg(vec![rule(
        "203.0.113.0/24",
        Level::Blocked,
        Some(win(Some(&["mon"]), Some("09:00-18:00"))),
    )]);
    c.timezone = "Europe/Berlin".parse().unwrap();
    let acl = Acl::build(&c).unwrap();
    let a = ip("203.0.113.7");
    let clock = crate::policy::clock::ManualClock::new(MON_NOON_UTC - 4 * HOUR); // 08:00 UTC = 09:00 Berlin
    use crate::policy::clock::Clock;
    assert_eq!(acl.lookup(a, clock.wall_ms() - 1), None); // 08:59:59.999 Berlin
    assert_eq!(acl.lookup(a, clock.wall_ms()), Some(Level::Blocked));
    clock.advance_ms(9 * HOUR as u64 - 1); // 17:59:59.999 Berlin
    assert_eq!(acl.lookup(a, clock.wall_ms()), Some(Level::Blocked));
    clock.advance_ms(1); // 18:00 Berlin = 17:00 UTC: still "open" in UTC, closed here
    assert_eq!(acl.lookup(a, clock.wall_ms()), None);
    // The same rule read in UTC is open at 17:00 UTC.
    c.timezone = Tz::UTC;
    assert_eq!(
        Acl::build(&c).unwrap().lookup(a, clock.wall_ms()),
        Some(Level::Blocked)
    );
    // Tuesday: closed all day.
    assert_eq!(acl.lookup(a, MON_NOON_UTC + 24 * HOUR), None);
}

#[test]
fn windows_follow_daylight_saving_time() {
    let mut c = cfg(vec![rule(
        "192.0.2.0/24",
        Level::Limited,
        Some(win(Some(&["mon"]), Some("09:00-10:00"))),
    )]);
    c.timezone = chrono_tz::Europe::Berlin;
    let acl = Acl::build(&c).unwrap();
    let a = ip("192.0.2.1");
    // Monday 2026-07-06: Berlin is UTC+2, so 09:00 local is 07:00 UTC.
    let july = 1_783_321_200_000; // 2026-07-06 07:00 UTC
    assert_eq!(local_time(Tz::UTC, july), Some((0, 7 * 60)));
    assert_eq!(acl.lookup(a, july - 1), None);
    assert_eq!(acl.lookup(a, july), Some(Level::Limited));
    assert_eq!(acl.lookup(a, july + HOUR), None);
    // In November (UTC+1) the same window is 08:00-09:00 UTC.
    assert_eq!(acl.lookup(a, MON_NOON_UTC - 4 * HOUR), Some(Level::Limited));
    assert_eq!(acl.lookup(a, MON_NOON_UTC - 5 * HOUR), None);
}

#[test]
fn most_specific_open_rule_wins() {
    let night = win(None, Some("22:00-06:00"));
    let acl = Acl::build(&cfg(vec![
        rule("10.0.0.0/8", Level::Blocked, None),
        rule("10.1.0.0/16", Level::Full, None),
        rule("10.1.2.0/24", Level::Limited, Some(night)),
        rule(
            "10.1.2.0/24",
            Level::Blocked,
            Some(win(Some(&["tue"]), None)),
        ),
        rule("2001:db8::/32", Level::Limited, None),
        rule("2001:db8:1::/48", Level::Blocked, None),
    ]))
    .unwrap();
    let noon = MON_NOON_UTC;
    let night_t = MON_NOON_UTC + 11 * HOUR; // 23:00 Monday
    assert_eq!(acl.lookup(ip("10.9.9.9"), noon), Some(Level::Blocked));
    assert_eq!(acl.lookup(ip("10.1.9.9"), noon), Some(Level::Full));
    // The /24 window is closed at noon: the /16 answers.
    assert_eq!(acl.lookup(ip("10.1.2.3"), noon), Some(Level::Full));
    assert_eq!(acl.lookup(ip("10.1.2.3"), night_t), Some(Level::Limited));
    // Tuesday noon: the Tuesday rule on the same /24.
    assert_eq!(
        acl.lookup(ip("10.1.2.3"), noon + 24 * HOUR),
        Some(Level::Blocked)
    );
    // Mapped IPv6 is IPv4.
    assert_eq!(
        acl.lookup(ip("::ffff:10.1.2.3"), night_t),
        Some(Level::Limited)
    );
    assert_eq!(acl.lookup(ip("11.0.0.1"), noon), None);
    assert_eq!(acl.level(ip("11.0.0.1"), noon), Level::Full);
    assert_eq!(acl.lookup(ip("2001:db8:2::1"), noon), Some(Level::Limited));
    assert_eq!(acl.lookup(ip("2001:db8:1::1"), noon), Some(Level::Blocked));
    assert_eq!(acl.lookup(ip("2001:db9::1"), noon), None);
}

#[test]
fn list_files_load_count_skips_and_notice_changes() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("block.netset");
    std::fs::write(&p, "# list\n198.51.100.0/24\n2001:db8::5\nnot-an-ip\n").unwrap();
    let mut c = cfg(vec![rule("198.51.100.7", Level::Full, None)]);
    c.files.push(AclFile {
        path: p.clone(),
        level: Level::Blocked,
        window: None,
    });
    let acl = Acl::build(&c).unwrap();
    assert_eq!(acl.skipped_total(), 1);
    assert_eq!(acl.skipped_lines()[0], (p.clone(), 1));
    assert_eq!(acl.lookup(ip("198.51.100.1"), 0), Some(Level::Blocked));
    assert_eq!(acl.lookup(ip("198.51.100.7"), 0), Some(Level::Full));
    assert_eq!(acl.lookup(ip("2001:db8::5"), 0), Some(Level::Blocked));
    assert_eq!(acl.lookup(ip("2001:db8::6"), 0), None);
    assert!(!acl.files_changed());
    let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
    writeln!(f, "192.0.2.1").unwrap();
    drop(f);
    assert!(acl.files_changed());
    let acl2 = acl.rebuild_if_changed(&c).unwrap().expect("changed");
    assert!(acl2.rebuild_if_changed(&c).unwrap().is_none());
    assert_eq!(acl2.lookup(ip("192.0.2.1"), 0), Some(Level::Blocked));
    std::fs::remove_file(&p).unwrap();
    assert!(acl2.files_changed());
    let e = Acl::build(&c).unwrap_err();
    assert!(matches!(e, PolicyError::Read { .. }));
    assert!(e.to_string().contains("block.netset"), "{e}");
}

/// The reference: scan every rule, keep the longest open prefix; on the same
/// prefix windowed rules rank first, then config order.
fn naive(rules: &[AclRule], tz: Tz, a: IpAddr, t: i64) -> Option<Level> {
    let a = a.to_canonical();
    let mut best: Option<(u8, bool, usize, Level)> = None;
    for (i, r) in rules.iter().enumerate() {
        if !r.net.contains(&a) {
            continue;
        }
        if r.window.is_some_and(|w| !w.is_open_at(tz, t)) {
            continue;
        }
        // Duplicates (same prefix, level, window) collapse to the first.
        let cand = (r.net.prefix_len(), r.window.is_some(), i, r.level);
        let better = match best {
            None => true,
            Some((l, w, j, _)) => {
                cand.0 > l || (cand.0 == l && ((cand.1 && !w) || (cand.1 == w && i < j)))
            }
        };
        if better {
            best = Some(cand);
        }
    }
    best.map(|b| b.3)
}

fn arb_window() -> impl Strategy<Value = Option<TimeWindow>> {
    prop_oneof![
        Just(None),
        (1u8..=0x7f, 0u16..1440, 1u16..=1440).prop_filter_map("empty", |(d, s, e)| {
            (s != e).then_some(Some(TimeWindow {
                days: d,
                start: s,
                end: e,
            }))
        }),
    ]
}

fn arb_level() -> impl Strategy<Value = Level> {
    prop_oneof![
        Just(Level::Full),
        Just(Level::Limited),
        Just(Level::Blocked)
    ]
}

fn arb_rule() -> impl Strategy<Value = AclRule> {
    // Few distinct high bits so rules overlap and nest.
    let v4 = (0u32..4, any::<u32>(), 0u8..=32).prop_map(|(hi, lo, len)| {
        let a = Ipv4Addr::from((10u32 << 24) | (hi << 22) | (lo >> 10));
        IpNet::V4(Ipv4Net::new(a, len).unwrap().trunc())
    });
    let v6 = (0u128..4, any::<u128>(), 0u8..=128).prop_map(|(hi, lo, len)| {
        let a = Ipv6Addr::from((0x2001_0db8u128 << 96) | (hi << 94) | (lo >> 34));
        IpNet::V6(Ipv6Net::new(a, len).unwrap().trunc())
    });
    (prop_oneof![v4, v6], arb_level(), arb_window()).prop_map(|(net, level, window)| AclRule {
        net,
        level,
        window,
        until_ms: None,
        managed: false,
    })
}

use std::net::{Ipv4Addr, Ipv6Addr};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn trie_agrees_with_a_linear_scan(
        rules in proptest::collection::vec(arb_rule(), 0..40),
        probes in proptest::collection::vec((0u32..4, any::<u32>(), 0u128..4, any::<u128>(), any::<bool>(), 0i64..(14 * 24 * 3_600_000)), 1..40),
        berlin in any::<bool>(),
    ) {
        let tz: Tz = if berlin { chrono_tz::Europe::Berlin } else { Tz::UTC };
        let mut c = cfg(rules.clone());
        c.timezone = tz;
        let acl = Acl::build(&c).unwrap();
        for (h4, l4, h6, l6, v4, dt) in probes {
            let a = if v4 {
                IpAddr::V4(Ipv4Addr::from((10u32 << 24) | (h4 << 22) | (l4 >> 10)))
            } else {
                IpAddr::V6(Ipv6Addr::from((0x2001_0db8u128 << 96) | (h6 << 94) | (l6 >> 34)))
            };
            let t = MON_NOON_UTC + dt;
            prop_assert_eq!(acl.lookup(a, t), naive(&rules, tz, a, t), "{} at {}", a, t);
        }
    }

    #[test]
    fn parse_list_never_panics_and_round_trips(lines in proptest::collection::vec("[0-9a-f:./# ;x]{0,24}", 0..30)) {
        let text = lines.join("\n");
        let (nets, skipped) = parse_list(&text);
        prop_assert!(nets.len() + skipped <= lines.len());
        for n in &nets {
            prop_assert_eq!(parse_net(&n.to_string()), Some(*n));
        }
    }
}

#[test]
fn a_rule_with_an_end_is_out_of_force_after_it() {
    let mut blocked = rule("10.0.0.0/8", Level::Blocked, None);
    blocked.until_ms = Some(5_000);
    let acl = Acl::build(&cfg(vec![rule("10.1.0.0/16", Level::Full, None), blocked])).unwrap();
    assert_eq!(acl.lookup(ip("10.2.3.4"), 5_000), Some(Level::Blocked));
    assert_eq!(acl.lookup(ip("10.2.3.4"), 5_001), None);
    // The more specific rule still wins while both are in force.
    assert_eq!(acl.lookup(ip("10.1.3.4"), 1_000), Some(Level::Full));
    // Two rules of one network: the one with an end ranks first while in force.
    let mut limited = rule("10.0.0.0/8", Level::Limited, None);
    limited.until_ms = Some(5_000);
    let acl = Acl::build(&cfg(vec![
        rule("10.0.0.0/8", Level::Blocked, None),
        limited,
    ]))
    .unwrap();
    assert_eq!(acl.lookup(ip("10.2.3.4"), 4_000), Some(Level::Limited));
    assert_eq!(acl.lookup(ip("10.2.3.4"), 6_000), Some(Level::Blocked));
}
