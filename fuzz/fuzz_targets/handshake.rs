//! The server handshake state machine (`handshake::Handshake::feed`) with a
//! fixed config (two users, every mode allowed), input cut into read-sized
//! chunks and a deterministic `rand`.
//!
//! Pass 1 feeds the fuzz bytes as the first bytes of a connection (optionally
//! behind a valid obfuscated2 header built by the crate, so `Accepted` is
//! reached). Pass 2 first feeds a VALID FakeTLS ClientHello made with
//! `faketls::build_client_hello`, checks the ServerHello, then feeds the fuzz
//! bytes as the client's TLS records (optionally behind an application-data
//! record carrying a valid obfuscated2 header), so the post-hello record path
//! and the FakeTLS `Accepted` branch are reached.
//!
//! Input: ctl, chunk max, chunk seed, then data. ctl bits:
//!   0: pass 1 prepends a valid obfs2 header (random = first 64 data bytes)
//!   1: pass 2 prepends a record with a valid obfs2 header (same random)
//!   2: which user the crate-built hello/headers are for
//!   3-4: tag of the crate-built obfs2 headers
//!   5-7: hello variant (size, timestamp edge, unknown SNI, replay)
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtgate_crypto::Key16;
use mtgate_fuzz::{chunks, det_rand, take_array, take_u8};
use mtgate_proto::faketls::{app_record_header, build_client_hello, server_hello_len, verify_server_hello};
use mtgate_proto::handshake::{HandshakeConfig, UserKey, MAX_HANDSHAKE_BYTES};
use mtgate_proto::obfs2::{build_header, DcIndex, ProtoTag, HEADER_LEN};
use mtgate_proto::replay::ReplayCache;
use mtgate_proto::{ClientMode, Handshake, Outcome, RejectReason};

/// Chosen so the §12.4 vector (timestamp 1 700 000 000, key 0011..eeff) is in the window.
const NOW: u64 = 1_700_000_100;
const SNI: &str = "www.example.com";
const TAGS: [ProtoTag; 4] = [ProtoTag::Abridged, ProtoTag::Intermediate, ProtoTag::Padded, ProtoTag::Padded];

fn user_keys() -> [[u8; 16]; 2] {
    [
        [0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff],
        [2; 16],
    ]
}

/// The fixed config; `alt` (a bit of the chunk seed) switches the ServerHello
/// shape: supported_versions first and sizes drawn from an observed list
/// (including out-of-range ones, which the machine clamps).
fn config(alt: bool) -> HandshakeConfig {
    HandshakeConfig {
        users: user_keys()
            .iter()
            .enumerate()
            .map(|(i, k)| UserKey::new(Key16::new(*k), i, true, true, true))
            .collect(),
        domains: vec![SNI.into()],
        max_past_secs: 600,
        max_future_secs: 120,
        fake_cert_len: (64, 300),
        observed_cert_lens: if alt { vec![0, 517, 2900, 70_000] } else { Vec::new() },
        versions_first: alt,
    }
}

/// Checks one outcome against the config; returns whether the handshake is over.
fn check_outcome(out: &Outcome, hs: &Handshake, cfg: &HandshakeConfig) -> bool {
    assert!(hs.received().len() <= MAX_HANDSHAKE_BYTES);
    match out {
        Outcome::NeedMore => false,
        Outcome::Respond(resp) => {
            // Only a hello that verified for some user is answered, and the answer verifies for it.
            assert_eq!(server_hello_len(resp), Some(resp.len()));
            let random: [u8; 32] = hs.received()[11..43].try_into().expect("hello holds a random");
            assert!(cfg.users.iter().any(|u| u.key.local().is_some_and(|k| verify_server_hello(resp, &random, k))));
            false
        }
        Outcome::Accepted(a) => {
            assert!(a.user < cfg.users.len());
            match a.mode {
                ClientMode::FakeTls => assert!(a.tls.is_some()),
                ClientMode::Secure => {
                    assert_eq!(a.tag, ProtoTag::Padded);
                    assert!(a.tls.is_none());
                }
                ClientMode::Classic => {
                    assert_ne!(a.tag, ProtoTag::Padded);
                    assert!(a.tls.is_none());
                }
            }
            if a.tls.is_none() {
                assert_eq!(a.early, hs.received()[HEADER_LEN..]);
            }
            true
        }
        Outcome::Reject(r) => {
            // Every mode is allowed for every user here.
            assert!(!matches!(r, RejectReason::NotTls | RejectReason::ModeNotAllowed), "{r:?}");
            true
        }
    }
}

/// Feeds `chunks` until the handshake ends; returns the final outcome (if any)
/// and how many bytes had been fed when it came.
fn drive(
    hs: &mut Handshake,
    parts: &[&[u8]],
    cfg: &HandshakeConfig,
    replay: &mut ReplayCache,
    seed: u64,
) -> (Option<Outcome>, usize) {
    let mut rand = det_rand(seed);
    let mut fed = 0;
    let mut responded = false;
    for (i, part) in parts.iter().enumerate() {
        let out = hs.feed(part, NOW, cfg, replay, &mut rand);
        fed += part.len();
        if let Outcome::Respond(_) = out {
            assert!(!responded, "a second ServerHello");
            responded = true;
        }
        if check_outcome(&out, hs, cfg) {
            // Once over, the machine refuses everything else.
            if let Some(next) = parts.get(i + 1) {
                let again = hs.feed(next, NOW, cfg, replay, &mut rand);
                assert!(matches!(again, Outcome::Reject(RejectReason::BadRecord)), "{again:?}");
            }
            return (Some(out), fed);
        }
    }
    (None, fed)
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let ctl = take_u8(&mut rest);
    let cmax = take_u8(&mut rest);
    let cseed = take_u8(&mut rest);
    let data = rest;
    let cfg = config(cseed & 1 != 0);
    let u = usize::from((ctl >> 2) & 1);
    let key = Key16::new(user_keys()[u]);
    let tag = TAGS[usize::from((ctl >> 3) & 3)];
    let seed = u64::from(ctl) << 16 | u64::from(cmax) << 8 | u64::from(cseed);

    // Optional valid obfs2 header from the first 64 data bytes.
    let mut tail = data;
    let random: [u8; HEADER_LEN] = take_array(&mut tail);
    let dc = DcIndex(i16::from_le_bytes([random[62], random[63]]));
    let (obfs2_wire, _) = build_header(&random, tag, dc, Some(&key));

    // ---- Pass 1: first bytes of a connection.
    {
        let stream: Vec<u8> = if ctl & 1 != 0 {
            [&obfs2_wire[..], tail].concat()
        } else {
            data.to_vec()
        };
        let parts = chunks(&stream, cmax, cseed);
        let mut replay = ReplayCache::new(64, 1000);
        let mut hs = Handshake::new();
        let (out, fed) = drive(&mut hs, &parts, &cfg, &mut replay, seed);
        // A header that does not start like TLS and fits the size cap is accepted as soon as it is in.
        let tls_like = stream.starts_with(&[0x16, 0x03, 0x01]);
        if ctl & 1 != 0 && !tls_like && fed <= MAX_HANDSHAKE_BYTES {
            match out {
                Some(Outcome::Accepted(a)) => {
                    assert!(a.user <= u);
                    if a.user == u {
                        assert_eq!((a.tag, a.dc), (tag, dc));
                    }
                    assert_eq!(a.early, stream[HEADER_LEN..fed]);
                }
                other => panic!("valid obfs2 header not accepted: {other:?}"),
            }
        }
    }

    // ---- Pass 2: a valid FakeTLS hello, then the fuzz bytes as TLS records.
    {
        let variant = ctl >> 5;
        let mut hello_rand = [0u8; 64];
        det_rand(seed ^ 0xfeed)(&mut hello_rand);
        let (ts, sni, total_len) = match variant {
            0 => (NOW as u32, SNI, 517),
            1 => ((NOW - 600) as u32, SNI, 517),   // oldest accepted
            2 => ((NOW + 120) as u32, SNI, 1024),  // newest accepted
            3 => (NOW as u32 - 5, SNI, 16_000),    // a large hello
            4 => (NOW as u32, SNI, 512),           // smallest accepted record
            5 => ((NOW - 601) as u32, SNI, 517),   // one second too old
            6 => (NOW as u32, "other.example", 517),
            _ => (NOW as u32, SNI, 517),           // replayed below
        };
        let hello = build_client_hello(&key, sni, ts, &hello_rand, total_len);
        let mut replay = ReplayCache::new(64, 1000);
        let mut rand = det_rand(seed);
        if variant == 7 {
            let first = Handshake::new().feed(&hello, NOW, &cfg, &mut replay, &mut rand);
            assert!(matches!(first, Outcome::Respond(_)), "{first:?}");
        }
        let mut hs = Handshake::new();
        let out = hs.feed(&hello, NOW, &cfg, &mut replay, &mut rand);
        check_outcome(&out, &hs, &cfg);
        match (variant, &out) {
            (0..=4, Outcome::Respond(resp)) => {
                let random: [u8; 32] = hello[11..43].try_into().unwrap();
                assert!(verify_server_hello(resp, &random, &key));
            }
            (5, Outcome::Reject(RejectReason::BadTimestamp))
            | (6, Outcome::Reject(RejectReason::UnknownSni))
            | (7, Outcome::Reject(RejectReason::Replay)) => return,
            _ => panic!("hello variant {variant}: {out:?}"),
        }

        let stream: Vec<u8> = if ctl & 2 != 0 {
            [&app_record_header(HEADER_LEN)[..], &obfs2_wire[..], tail].concat()
        } else {
            data.to_vec()
        };
        let parts = chunks(&stream, cmax, cseed);
        let (out, fed) = drive(&mut hs, &parts, &cfg, &mut replay, seed);
        if let Some(Outcome::Accepted(a)) = &out {
            assert_eq!(a.mode, ClientMode::FakeTls);
            assert_eq!(a.user, u, "FakeTLS keeps the user whose key signed the hello");
        }
        if ctl & 2 != 0 {
            match out {
                Some(Outcome::Accepted(a)) => {
                    assert_eq!((a.tag, a.dc), (tag, dc));
                    assert!(fed >= 5 + HEADER_LEN);
                }
                // Garbage after the header record, in the same read, fails the whole read.
                Some(Outcome::Reject(RejectReason::BadRecord)) if !tail.is_empty() => {}
                other => panic!("valid inner header not accepted: {other:?}"),
            }
        }
    }
});
