//! `proxy-multi.conf` (PROTOCOL §7.2): `ProxyMultiConf::parse` on any text.
//! Whatever parses is bounded and self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtgate_proto::me::conf::{ProxyMultiConf, MAX_ADDRESSES};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = ProxyMultiConf::parse(text) {
        assert!(!c.clusters.is_empty());
        let all = c.all_addrs();
        assert!(all.len() <= MAX_ADDRESSES);
        for cl in &c.clusters {
            assert!(!cl.addrs.is_empty());
            assert_eq!(c.clusters.iter().filter(|o| o.dc == cl.dc).count(), 1);
            assert_eq!(c.addrs_for(cl.dc), Some(cl.addrs.as_slice()));
            for a in &cl.addrs {
                assert_ne!(a.port, 0);
                assert!(all.contains(a));
            }
        }
    }
});
