use super::*;
use crate::faketls::{
    app_record_header, build_client_hello, server_hello_len, verify_server_hello, CCS_RECORD,
};
use proptest::prelude::*;

const NOW: u64 = 1_800_000_000;

fn cfg(classic: bool, secure: bool, tls: bool) -> HandshakeConfig {
    HandshakeConfig {
        users: vec![
            UserKey {
                key: Key16::new([1; 16]),
                classic,
                secure,
                fake_tls: tls,
            },
            UserKey {
                key: Key16::new([2; 16]),
                classic,
                secure,
                fake_tls: tls,
            },
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
        assert_eq!(a.early, b"early");
        // The same header again is a replay.
        let mut hs = Handshake::new();
        assert!(matches!(
            hs.feed(&wire, NOW, &c, &mut rc, &mut rng()),
            Outcome::Reject(RejectReason::Replay)
        ));
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
    let c = cfg(false, false, true);
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
        let got = Handshake::new().feed(&hello, NOW, &c, &mut rc, &mut rng());
        assert!(
            matches!(got, Outcome::Reject(r) if r == why),
            "{why:?}: {got:?}"
        );
    }
    // Replay of a valid hello.
    let mut rc = ReplayCache::new(100, 1000);
    let hello = build_client_hello(&key, "www.example.com", NOW as u32, &[5; 64], 600);
    assert!(matches!(
        Handshake::new().feed(&hello, NOW, &c, &mut rc, &mut rng()),
        Outcome::Respond(_)
    ));
    assert!(matches!(
        Handshake::new().feed(&hello, NOW, &c, &mut rc, &mut rng()),
        Outcome::Reject(RejectReason::Replay)
    ));
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
