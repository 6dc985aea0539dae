//! Memory test (issue 4): one million unique valid handshakes through the
//! handshake machine leave the replay cache's heap at its stated, fixed cap.
//! A counting global allocator measures live heap bytes for real.

use mtgate_crypto::Key16;
use mtgate_proto::handshake::UserKey;
use mtgate_proto::obfs2::{build_header, DcIndex, ProtoTag};
use mtgate_proto::replay::ReplayCache;
use mtgate_proto::{Handshake, HandshakeConfig, Outcome};
use mtgate_testkit::alloc::{live_bytes, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn a_million_unique_handshakes_keep_replay_memory_at_its_cap() {
    const CAP: usize = 65_536;
    let key = Key16::new([3; 16]);
    let cfg = HandshakeConfig {
        users: vec![UserKey::new(key.clone(), 0, true, true, false)],
        domains: vec![],
        max_past_secs: 600,
        max_future_secs: 120,
        fake_cert_len: (100, 200),
        observed_cert_lens: vec![],
        versions_first: false,
    };
    let base = live_bytes();
    let mut cache = ReplayCache::new(CAP, 1_000_000);
    let allocated = live_bytes() - base;
    let stated = cache.memory_bytes() as isize;
    // The cache states its own footprint; the allocator agrees within 10 %.
    assert!(
        (allocated - stated).abs() * 10 <= stated,
        "allocated {allocated} vs stated {stated}"
    );

    let mut random = [0u8; 64];
    let mut accepted = 0u32;
    let mut peak = 0isize;
    for i in 0u32..1_000_000 {
        random[..4].copy_from_slice(&[0x42, 1, 2, 3]);
        random[4..8].copy_from_slice(&[1, 1, 1, 1]);
        random[8..12].copy_from_slice(&i.to_le_bytes());
        let (hdr, _) = build_header(&random, ProtoTag::Padded, DcIndex(2), Some(&key));
        let mut hs = Handshake::new();
        match hs.feed(&hdr, 1_700_000_000, &cfg, &mut cache, &mut |_| {}) {
            Outcome::Accepted(_) => accepted += 1,
            o => panic!("handshake {i}: {o:?}"),
        }
        drop(hs);
        if i % 50_000 == 0 {
            peak = peak.max(live_bytes() - base);
        }
    }
    let after = live_bytes() - base;
    assert_eq!(accepted, 1_000_000);
    assert!(cache.len() <= cache.capacity());
    assert_eq!(
        after, allocated,
        "replay cache heap changed under the flood"
    );
    assert!(peak <= allocated, "peak {peak} above the cap {allocated}");
    println!(
        "replay cache: capacity {} entries, {} bytes allocated, unchanged after 1e6 handshakes",
        cache.capacity(),
        allocated
    );
    // The most recent handshakes are still refused as replays.
    random[8..12].copy_from_slice(&999_999u32.to_le_bytes());
    let (hdr, _) = build_header(&random, ProtoTag::Padded, DcIndex(2), Some(&key));
    assert!(matches!(
        Handshake::new().feed(&hdr, 1_700_000_000, &cfg, &mut cache, &mut |_| {}),
        Outcome::Reject(_)
    ));
}
