//! Geo policy against a MaxMind-format database written by the test itself
//! (`mtgate_testkit::write_mmdb`): IPv4, IPv6 and mapped lookups, allow/deny,
//! unknown addresses, and reloads (a broken file keeps the old database).

use mtgate::config::policy::{GeoConfig, GeoList};
use mtgate::policy::geo::{GeoDb, GeoPolicy, GeoVerdict};
use mtgate::policy::Mode;
use mtgate_testkit::write_mmdb;
use std::net::IpAddr;
use std::time::Duration;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const NETS: &[(&str, &str)] = &[
    ("81.0.0.0/8", "DE"),
    ("81.2.0.0/16", "NL"),
    ("203.0.113.5", "US"),
    ("2001:db8::/32", "DE"),
    ("2001:db8:ff::/48", "FR"),
];

#[test]
fn geodb_reads_countries_for_ipv4_and_ipv6() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("test.mmdb");
    write_mmdb(&p, NETS).unwrap();
    let db = GeoDb::open(&p).unwrap();
    assert_eq!(db.country(ip("81.1.2.3")), Some(*b"DE"));
    assert_eq!(db.country(ip("81.2.200.1")), Some(*b"NL"));
    assert_eq!(db.country(ip("81.3.0.0")), Some(*b"DE"));
    assert_eq!(db.country(ip("::ffff:81.2.0.1")), Some(*b"NL"));
    assert_eq!(db.country(ip("203.0.113.5")), Some(*b"US"));
    assert_eq!(db.country(ip("203.0.113.6")), None);
    assert_eq!(db.country(ip("2001:db8:1::1")), Some(*b"DE"));
    assert_eq!(db.country(ip("2001:db8:ff:1::1")), Some(*b"FR"));
    assert_eq!(db.country(ip("2001:db9::1")), None);
    assert_eq!(db.country(ip("10.0.0.1")), None);
}

fn policy(path: &std::path::Path, list: GeoList, unknown_allowed: bool) -> GeoPolicy {
    GeoPolicy::new(&GeoConfig {
        mode: Mode::Enforce,
        database: path.to_owned(),
        list,
        unknown_allowed,
        reload_interval: Duration::from_secs(3600),
    })
    .unwrap()
}

#[test]
fn allow_and_deny_lists() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("test.mmdb");
    write_mmdb(&p, NETS).unwrap();
    let allow = policy(&p, GeoList::Allow(vec![*b"DE", *b"NL"]), true);
    assert_eq!(allow.decide(ip("81.1.1.1")), GeoVerdict::Allowed);
    assert_eq!(allow.decide(ip("2001:db8::1")), GeoVerdict::Allowed);
    assert_eq!(
        allow.decide(ip("2001:db8:ff::1")),
        GeoVerdict::Denied {
            country: Some(*b"FR")
        }
    );
    assert_eq!(allow.decide(ip("10.0.0.1")), GeoVerdict::Allowed);
    let deny = policy(&p, GeoList::Deny(vec![*b"US"]), false);
    assert_eq!(
        deny.decide(ip("203.0.113.5")),
        GeoVerdict::Denied {
            country: Some(*b"US")
        }
    );
    assert_eq!(deny.decide(ip("81.2.3.4")), GeoVerdict::Allowed);
    assert_eq!(
        deny.decide(ip("10.0.0.1")),
        GeoVerdict::Denied { country: None }
    );
}

#[test]
fn reload_swaps_the_database_and_keeps_it_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("test.mmdb");
    write_mmdb(&p, NETS).unwrap();
    let pol = policy(&p, GeoList::Deny(vec![*b"RU"]), true);
    assert!(!pol.reload_if_changed().unwrap());
    assert_eq!(pol.db().country(ip("81.1.1.1")), Some(*b"DE"));
    write_mmdb(&p, &[("81.0.0.0/8", "RU"), ("2001:db8::/32", "RU")]).unwrap();
    assert!(pol.reload_if_changed().unwrap());
    assert_eq!(
        pol.decide(ip("81.1.1.1")),
        GeoVerdict::Denied {
            country: Some(*b"RU")
        }
    );
    // A truncated file: the reload fails, the last good database stays.
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
    assert!(pol.reload_if_changed().is_err());
    assert_eq!(pol.db().country(ip("2001:db8::1")), Some(*b"RU"));
    std::fs::remove_file(&p).unwrap();
    assert!(pol.reload_if_changed().is_err());
    assert_eq!(pol.db().country(ip("81.1.1.1")), Some(*b"RU"));
}

/// The reference: the longest written prefix containing the address (the
/// last written among equals).
fn naive(nets: &[(String, String)], a: IpAddr) -> Option<[u8; 2]> {
    let mut best: Option<(u8, [u8; 2])> = None;
    for (cidr, cc) in nets {
        let n: ipnet::IpNet = cidr.parse().unwrap();
        if n.contains(&a) && best.is_none_or(|(l, _)| n.prefix_len() >= l) {
            best = Some((n.prefix_len(), [cc.as_bytes()[0], cc.as_bytes()[1]]));
        }
    }
    best.map(|b| b.1)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    #[test]
    fn written_databases_read_back_as_longest_prefix_match(
        raw in proptest::collection::vec((proptest::bool::ANY, 0u32..4, proptest::num::u32::ANY, 0u8..=32, 0u8..=96, 0usize..4), 1..25),
        probes in proptest::collection::vec((proptest::bool::ANY, 0u32..4, proptest::num::u32::ANY), 1..40),
    ) {
        const CCS: [&str; 4] = ["DE", "NL", "US", "FR"];
        let v4 = |hi: u32, lo: u32| std::net::Ipv4Addr::from((81u32 << 24) | (hi << 22) | (lo >> 10));
        let v6 = |hi: u32, lo: u32| std::net::Ipv6Addr::from((0x2001_0db8u128 << 96) | (u128::from(hi) << 94) | (u128::from(lo) << 62));
        let nets: Vec<(String, String)> = raw
            .iter()
            .map(|&(is4, hi, lo, l4, l6, c)| {
                let n = if is4 {
                    ipnet::IpNet::new(IpAddr::V4(v4(hi, lo)), l4.max(1)).unwrap()
                } else {
                    // At least /16: a shorter IPv6 prefix would cover ::/96, where a
                    // MaxMind tree keeps IPv4, which the naive reference does not model.
                    ipnet::IpNet::new(IpAddr::V6(v6(hi, lo)), l6.max(16)).unwrap()
                };
                (n.trunc().to_string(), CCS[c].to_string())
            })
            .collect();
        let refs: Vec<(&str, &str)> = nets.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.mmdb");
        write_mmdb(&p, &refs).unwrap();
        let db = GeoDb::open(&p).unwrap();
        for (is4, hi, lo) in probes {
            let a = if is4 { IpAddr::V4(v4(hi, lo)) } else { IpAddr::V6(v6(hi, lo)) };
            proptest::prop_assert_eq!(db.country(a), naive(&nets, a), "{}", a);
        }
    }
}
