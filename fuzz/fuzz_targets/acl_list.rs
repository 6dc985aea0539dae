//! ACL list files (FireHOL netsets): `mtgate::policy::acl::parse_list` on any
//! text (lossy UTF-8, as `Acl::build` reads files). Whatever parses is a
//! network with its host bits clear that re-parses to itself, IPv4-mapped
//! IPv6 never survives as IPv6, and every non-blank line is counted once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtgate::policy::acl::{parse_list, parse_net};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (nets, skipped) = parse_list(&text);
    let lines = text
        .lines()
        .filter(|l| !l.split(['#', ';']).next().unwrap_or("").trim().is_empty())
        .count();
    assert_eq!(nets.len() + skipped, lines);
    for n in &nets {
        assert_eq!(n.trunc(), *n);
        assert_eq!(parse_net(&n.to_string()), Some(*n));
        if let ipnet::IpNet::V6(v6) = n {
            assert!(v6.prefix_len() < 96 || v6.addr().to_ipv4_mapped().is_none());
        }
    }
});
