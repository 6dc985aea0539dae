use super::*;
use crate::faketls::{
    app_record_header, build_client_hello, server_hello_len, verify_server_hello, CCS_RECORD,
};
use mtgate_crypto::Key16;
use proptest::prelude::*;

const NOW: u64 = 1_800_000_000;

fn cfg(classic: bool, secure: bool, tls: bool) -> HandshakeConfig {
    HandshakeConfig {
        users: vec![
            UserKey::new(Key16::new([1; 16]), 0, classic, secure, tls),
            UserKey::new(Key16::new([2; 16]), 1, classic, secure, tls),
        ],
        domains: vec!["www.example.com".into()],
        max_past_secs: 600,
        max_future_secs: 120,
        fake_cert_len: (1000, 1100),
        observed_cert_lens: Vec::new(),
        versions_first: false,
    }
}

fn rng() -> impl FnMut(&mut [u8]) {
    let mut x = 7u8;
    move |b: &mut [u8]| {
        for v in b {
            x = x.wrapping_mul(31).wrapping_add(11);
            *v = x;
        }
    }
}

fn obfs2_client(key: u8, tag: ProtoTag, dc: i16) -> [u8; 64] {
    let mut r = [0u8; 64];
    for (i, b) in r.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(13).wrapping_add(key) | 1;
    }
    obfs2::build_header(&r, tag, DcIndex(dc), Some(&Key16::new([key; 16]))).0
}

#[test]
fn obfs2_accepts_each_tag_for_the_right_user() {
    let c = cfg(true, true, true);
    for (tag, mode) in [
        (ProtoTag::Abridged, ClientMode::Classic),
        (ProtoTag::Intermediate, ClientMode::Classic),
        (ProtoTag::Padded, ClientMode::Secure),
    ] {
        let mut rc = ReplayCache::new(100, 1000);
        let mut hs = Handshake::new();
        let mut wire = obfs2_client(2, tag, -4).to_vec();
        wire.extend_from_slice(b"early");
        // Byte by byte: NeedMore until the header is complete.
        let mut out = Outcome::NeedMore;
        for b in &wire[..63] {
            out = hs.feed(&[*b], NOW, &c, &mut rc, &mut rng());
            assert!(matches!(out, Outcome::NeedMore));
        }
        if let Outcome::NeedMore = out {
            out = hs.feed(&wire[63..], NOW, &c, &mut rc, &mut rng());
        }
        let Outcome::Accepted(a) = out else {
            panic!("{out:?}")
        };
        assert_eq!((a.user, a.mode, a.tag, a.dc), (1, mode, tag, DcIndex(-4)));
        assert_eq!(
            hs.fingerprint().map(|f| f.to_vec()),
            Some(wire[8..24].to_vec())
        );
        assert_eq!(a.early, b"early");
        // The same header again is a replay, of user 1's secret.
        let mut hs = Handshake::new();
        assert!(matches!(
            hs.feed(&wire, NOW, &c, &mut rc, &mut rng()),
            Outcome::Reject(RejectReason::Replay)
        ));
        assert_eq!(hs.matched_user(), Some(1));
    }
    // A stranger's header names nobody.
    let mut hs = Handshake::new();
    let stranger = obfs2_client(9, ProtoTag::Abridged, 2);
    let mut rc = ReplayCache::new(100, 1000);
    assert!(matches!(
        hs.feed(&stranger, NOW, &c, &mut rc, &mut rng()),
        Outcome::Reject(RejectReason::BadObfs2)
    ));
    assert_eq!(hs.matched_user(), None);
    // A mode the user may not use names the user too.
    let only_tls = cfg(false, true, true);
    let mut hs = Handshake::new();
    assert!(matches!(
        hs.feed(
            &obfs2_client(1, ProtoTag::Abridged, 2),
            NOW,
            &only_tls,
            &mut rc,
            &mut rng()
        ),
        Outcome::Reject(RejectReason::ModeNotAllowed)
    ));
    assert_eq!(hs.matched_user(), Some(0));
}

/// User 0 holds two keys (a rotation): the old one valid until `NOW`, the
/// new one from `NOW`; user 1 one key that is not valid yet.
fn rotating() -> HandshakeConfig {
    let mut c = cfg(true, true, true);
    c.users[0].valid = Window {
        not_before: 0,
        not_after: NOW,
    };
    c.users[1].owner = 0;
    c.users[1].valid = Window {
        not_before: NOW,
        not_after: u64::MAX,
    };
    c.users.push(UserKey {
        valid: Window {
            not_before: NOW + 100,
            not_after: u64::MAX,
        },
        ..UserKey::new(Key16::new([3; 16]), 1, true, true, true)
    });
    c
}

#[test]
fn keys_are_tried_only_inside_their_window_and_name_their_owner() {
    let c = rotating();
    let obfs = |key: u8, now: u64| {
        let mut rc = ReplayCache::new(100, 1000);
        Handshake::new().feed(
            &obfs2_client(key, ProtoTag::Padded, 2),
            now,
            &c,
            &mut rc,
            &mut rng(),
        )
    };
    // The old key until its end, the new one from its start, both the owner.
    for (key, now, index) in [
        (1, NOW - 1, 0),
        (1, NOW, 0),
        (2, NOW, 1),
        (2, NOW + 5000, 1),
    ] {
        let Outcome::Accepted(a) = obfs(key, now) else {
            panic!("key {key} at {now}")
        };
        assert_eq!((a.user, a.key), (0, index));
    }
    // Outside their windows: not ours.
    for (key, now) in [(1, NOW + 1), (2, NOW - 1), (3, NOW + 99)] {
        assert!(
            matches!(obfs(key, now), Outcome::Reject(RejectReason::BadObfs2)),
            "key {key} at {now}"
        );
    }
    let Outcome::Accepted(a) = obfs(3, NOW + 100) else {
        panic!("user 1 from its start")
    };
    assert_eq!((a.user, a.key), (1, 2));
    // FakeTLS: the hello's digest is checked only against keys valid now.
    let tls = |key: u8, now: u64| {
        let mut rc = ReplayCache::new(100, 1000);
        let hello = build_client_hello(
            &Key16::new([key; 16]),
            "www.example.com",
            now as u32 - 5,
            &[9; 64],
            517,
        );
        Handshake::new().feed(&hello, now, &c, &mut rc, &mut rng())
    };
    assert!(matches!(tls(1, NOW), Outcome::Respond(_)));
    assert!(matches!(
        tls(1, NOW + 10),
        Outcome::Reject(RejectReason::BadDigest)
    ));
    assert!(matches!(tls(2, NOW + 10), Outcome::Respond(_)));
}

proptest! {
    /// Whatever the windows and the time, a key outside its window is never
    /// accepted and an accepted one names its owner.
    #[test]
    fn windows_hold(nb in 0u64..20, len in 0u64..20, at in 0u64..40, owner in 0usize..3) {
        let mut c = cfg(true, true, true);
        c.users[1].owner = owner;
        c.users[1].valid = Window { not_before: NOW + nb, not_after: NOW + nb + len };
        let now = NOW + at;
        let mut rc = ReplayCache::new(100, 1000);
        let out = Handshake::new().feed(&obfs2_client(2, ProtoTag::Padded, 2), now, &c, &mut rc, &mut rng());
        let inside = at >= nb && at <= nb + len;
        match out {
            Outcome::Accepted(a) => {
                prop_assert!(inside);
                prop_assert_eq!((a.user, a.key), (owner, 1));
            }
            Outcome::Reject(RejectReason::BadObfs2) => prop_assert!(!inside),
            o => prop_assert!(false, "{:?}", o),
        }
    }
}

#[test]
fn modes_are_enforced() {
    let mut rc = ReplayCache::new(100, 1000);
    let c = cfg(false, true, false);
    let w = obfs2_client(1, ProtoTag::Intermediate, 2);
    assert!(matches!(
        Handshake::new().feed(&w, NOW, &c, &mut rc, &mut rng()),
        Outcome::Reject(RejectReason::ModeNotAllowed)
    ));
    // ee-only: anything that is not TLS is refused at the first byte.
    let c = cfg(false, false, true);
    assert!(matches!(
        Handshake::new().feed(&w[..1], NOW, &c, &mut rc, &mut rng()),
        Outcome::Reject(RejectReason::NotTls)
    ));
    let c = cfg(true, true, false);
    assert!(matches!(
        Handshake::new().feed(&[0x55; 64], NOW, &c, &mut rc, &mut rng()),
        Outcome::Reject(RejectReason::BadObfs2)
    ));
}

fn tls_flow(size: usize, split: usize) {
    tls_flow_with(&cfg(false, false, true), size, split);
}

fn tls_flow_with(c: &HandshakeConfig, size: usize, split: usize) {
    let c = c.clone();
    let mut rc = ReplayCache::new(100, 1000);
    let key = Key16::new([2; 16]);
    let hello = build_client_hello(&key, "www.example.com", NOW as u32 - 5, &[9; 64], size);
    assert_eq!(hello.len(), size);
    let mut hs = Handshake::new();
    let mut resp = None;
    for chunk in hello.chunks(split) {
        match hs.feed(chunk, NOW, &c, &mut rc, &mut rng()) {
            Outcome::NeedMore => {}
            Outcome::Respond(r) => resp = Some(r),
            o => panic!("{o:?}"),
        }
    }
    let resp = resp.expect("server hello");
    let mut random = [0u8; 32];
    random.copy_from_slice(&hello[11..43]);
    assert_eq!(
        hs.fingerprint().map(|f| f.to_vec()),
        Some(random[..16].to_vec())
    );
    assert!(verify_server_hello(&resp, &random, &key));
    assert_eq!(server_hello_len(&resp), Some(resp.len()));
    // Client: CCS, then an app record with the obfs2 header + data.
    let hdr = obfs2_client(2, ProtoTag::Padded, 2);
    let mut inner = CCS_RECORD.to_vec();
    inner.extend_from_slice(&app_record_header(70));
    inner.extend_from_slice(&hdr);
    inner.extend_from_slice(b"abcdef");
    let mut acc: Option<Box<Accepted>> = None;
    for chunk in inner.chunks(split) {
        if let Some(a) = acc.as_mut() {
            // After acceptance the relay strips records itself.
            let mut c = chunk.to_vec();
            let n = a.tls.as_mut().unwrap().strip_in_place(&mut c).unwrap();
            a.early.extend_from_slice(&c[..n]);
            continue;
        }
        match hs.feed(chunk, NOW, &c, &mut rc, &mut rng()) {
            Outcome::NeedMore => {}
            Outcome::Accepted(a) => acc = Some(a),
            o => panic!("{o:?}"),
        }
    }
    let a = acc.expect("accepted");
    assert_eq!(
        (a.user, a.mode, a.tag),
        (1, ClientMode::FakeTls, ProtoTag::Padded)
    );
    assert_eq!(a.early, b"abcdef");
    assert!(a.tls.as_ref().unwrap().at_boundary());
}

#[test]
fn faketls_any_size_any_split() {
    for size in [517, 1800, 4000, 16_000] {
        for split in [1, 7, 512, 100_000] {
            tls_flow(size, split);
        }
    }
}

#[test]
fn faketls_rejections() {
    let c = cfg(false, false, true);
    let key = Key16::new([1; 16]);
    let cases: Vec<(Vec<u8>, RejectReason)> = vec![
        (
            build_client_hello(&key, "other.org", NOW as u32, &[1; 64], 517),
            RejectReason::UnknownSni,
        ),
        (
            build_client_hello(&key, "www.example.com", NOW as u32 - 4000, &[2; 64], 517),
            RejectReason::BadTimestamp,
        ),
        (
            build_client_hello(&key, "www.example.com", NOW as u32 + 4000, &[3; 64], 517),
            RejectReason::BadTimestamp,
        ),
        (
            build_client_hello(
                &Key16::new([7; 16]),
                "www.example.com",
                NOW as u32,
                &[4; 64],
                517,
            ),
            RejectReason::BadDigest,
        ),
        (vec![0x16, 3, 1, 0, 20], RejectReason::BadHello),
    ];
    for (hello, why) in cases {
        let mut rc = ReplayCache::new(100, 1000);
        let mut hs = Handshake::new();
        let got = hs.feed(&hello, NOW, &c, &mut rc, &mut rng());
        assert!(
            matches!(got, Outcome::Reject(r) if r == why),
            "{why:?}: {got:?}"
        );
        // Only a hello user 0's key verified names the user.
        let verified = matches!(why, RejectReason::UnknownSni | RejectReason::BadTimestamp);
        assert_eq!(hs.matched_user(), verified.then_some(0), "{why:?}");
    }
    // Replay of a valid hello.
    let mut rc = ReplayCache::new(100, 1000);
    let hello = build_client_hello(&key, "www.example.com", NOW as u32, &[5; 64], 600);
    assert!(matches!(
        Handshake::new().feed(&hello, NOW, &c, &mut rc, &mut rng()),
        Outcome::Respond(_)
    ));
    let mut again = Handshake::new();
    assert!(matches!(
        again.feed(&hello, NOW, &c, &mut rc, &mut rng()),
        Outcome::Reject(RejectReason::Replay)
    ));
    assert_eq!(again.matched_user(), Some(0), "the replayed secret's user");
    // Extra bytes glued to the hello.
    let mut glued = build_client_hello(&key, "www.example.com", NOW as u32, &[6; 64], 600);
    glued.push(0);
    assert!(matches!(
        Handshake::new().feed(&glued, NOW, &c, &mut rc, &mut rng()),
        Outcome::Reject(RejectReason::BadHello)
    ));
}

proptest! {
    #[test]
    fn garbage_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..6), t in 0u8..8) {
        let c = cfg(t & 1 != 0, t & 2 != 0, t & 4 != 0);
        let mut rc = ReplayCache::new(16, 1000);
        let mut hs = Handshake::new();
        for ch in chunks {
            match hs.feed(&ch, NOW, &c, &mut rc, &mut rng()) {
                Outcome::NeedMore | Outcome::Respond(_) => {}
                _ => break,
            }
        }
        prop_assert!(hs.received().len() <= MAX_HANDSHAKE_BYTES);
    }
}

/// A key kept outside the handshake (as an HSM keeps it): its digests come
/// through [`crate::key::SecretOps`], counted, or none at all when "gone".
struct Kept {
    key: Option<Key16>,
    calls: std::sync::atomic::AtomicUsize,
}

impl crate::key::SecretOps for Kept {
    fn sha256_after(&self, prefix: &[u8; 32]) -> Option<[u8; 32]> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.key.as_ref()?.sha256_after(prefix)
    }
    fn hmac(&self, parts: &[&[u8]]) -> Option<[u8; 32]> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.key.as_ref()?.hmac(parts)
    }
}

fn kept(cfg: &mut HandshakeConfig, gone: bool) -> Vec<std::sync::Arc<Kept>> {
    cfg.users
        .iter_mut()
        .map(|u| {
            let k = std::sync::Arc::new(Kept {
                key: (!gone).then(|| u.key.local().expect("local").clone()),
                calls: Default::default(),
            });
            u.key = crate::key::SecretKey::External(k.clone());
            k
        })
        .collect()
}

#[test]
fn keys_kept_elsewhere_handshake_as_keys_in_memory() {
    let mut c = cfg(true, true, true);
    let counters = kept(&mut c, false);
    let mut rc = ReplayCache::new(100, 1000);
    let out = Handshake::new().feed(
        &obfs2_client(2, ProtoTag::Padded, 2),
        NOW,
        &c,
        &mut rc,
        &mut rng(),
    );
    let Outcome::Accepted(a) = out else {
        panic!("{out:?}")
    };
    assert_eq!((a.user, a.mode), (1, ClientMode::Secure));
    // User 0's key: one digest (no match); user 1's: two (a match).
    let calls = |i: usize| counters[i].calls.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!((calls(0), calls(1)), (1, 2));
    let mut tls = cfg(false, false, true);
    kept(&mut tls, false);
    for (size, split) in [(517, 517), (1800, 100)] {
        tls_flow_with(&tls, size, split);
    }
    // A keeper that fails: nothing verifies, the client is a stranger.
    let mut gone = cfg(true, true, true);
    kept(&mut gone, true);
    let mut hs = Handshake::new();
    assert!(matches!(
        hs.feed(
            &obfs2_client(2, ProtoTag::Padded, 2),
            NOW,
            &gone,
            &mut rc,
            &mut rng()
        ),
        Outcome::Reject(RejectReason::BadObfs2)
    ));
    assert_eq!(hs.matched_user(), None);
    let hello = build_client_hello(
        &Key16::new([2; 16]),
        "www.example.com",
        NOW as u32,
        &[8; 64],
        600,
    );
    assert!(matches!(
        Handshake::new().feed(&hello, NOW, &gone, &mut rc, &mut rng()),
        Outcome::Reject(RejectReason::BadDigest)
    ));
}
