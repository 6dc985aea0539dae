use super::*;
use proptest::prelude::*;

pub(crate) fn h(s: &str) -> Vec<u8> {
    hex::decode(s.split_whitespace().collect::<String>()).unwrap()
}

pub(crate) const HELLO_12_4: &str = "
1603010200010001fc03033379e208d66f182b0df55e95f1511b69cba51ebc58
a78aa4ec027ee562d3d73020202122232425262728292a2b2c2d2e2f30313233
3435363738393a3b3c3d3e3f00220a0a130113021303c02bc02fc02cc030cca9
cca8c013c014009c009d002f0035000a010001912a2a00000000001400120000
0f7777772e6578616d706c652e636f6d00170000ff01000100000a000a00084a
4a001d00170018000b00020100002300000010000e000c02683208687474702f
312e31000500050100000000000d001400120403080404010503080505010806
06010201001200000033002b00294a4a000100001d002000b07073c33205db6b
18bd3b4370e7ba7525e1330e44772d02d78919871808a7002d00020101002b00
0b0a6a6a0304030303020301001b00030200023a3a000100001500c900000000
0000000000000000000000000000000000000000000000000000000000000000
0000000000000000000000000000000000000000000000000000000000000000
0000000000000000000000000000000000000000000000000000000000000000
0000000000000000000000000000000000000000000000000000000000000000
0000000000000000000000000000000000000000000000000000000000000000
0000000000000000000000000000000000000000000000000000000000000000
0000000000";

fn key() -> Key16 {
    Key16::new(h("00112233445566778899aabbccddeeff").try_into().unwrap())
}

#[test]
fn client_hello_vector_12_4() {
    let rec = h(HELLO_12_4);
    assert_eq!(hello_record_len(&rec), Ok(Some(517)));
    let ch = parse_client_hello(&rec).unwrap();
    assert_eq!(ch.sni.as_deref(), Some("www.example.com"));
    assert_eq!(ch.tls13_suite, Some(0x1301));
    assert_eq!(ch.session_id, (0x20..0x40).collect::<Vec<u8>>());
    assert_eq!(verify_hello_digest(&rec, &key()), Some(1_700_000_000));
    assert_eq!(verify_hello_digest(&rec, &Key16::new([1; 16])), None);
    // Re-signing reproduces the wire bytes.
    let mut again = rec.clone();
    sign_hello(&mut again, &key(), 1_700_000_000);
    assert_eq!(again, rec);
}

#[test]
fn server_hello_vector_12_5() {
    let ch = parse_client_hello(&h(HELLO_12_4)).unwrap();
    let mut share = [0u8; 32];
    share.copy_from_slice(&mtgate_crypto::sha256(&[b"vector server key share"]));
    let payload: Vec<u8> = (0..64).collect();
    let resp = build_server_hello(&ch, &key(), &share, &payload);
    let want = h("
160303007a020000760303bcc83b260a6bc34f5530ffed1efab6e53f61a55077
c1717d7d9e72cfd16dd81320202122232425262728292a2b2c2d2e2f30313233
3435363738393a3b3c3d3e3f130100002e00330024001d0020c9c712c4d333ac
45c8a85dcd52115a5c387df8564abc38d2743699b1a91c9f69002b0002030414
03030001011703030040000102030405060708090a0b0c0d0e0f101112131415
161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435
363738393a3b3c3d3e3f");
    assert_eq!(resp, want);
    assert!(verify_server_hello(&resp, &ch.random, &key()));
    assert_eq!(server_hello_len(&resp), Some(resp.len()));
}

#[test]
fn truncated_and_bad_hellos() {
    let rec = h(HELLO_12_4);
    for cut in [0, 3, 5, 100, 516] {
        assert!(parse_client_hello(&rec[..cut]).is_err());
    }
    assert_eq!(
        hello_record_len(b"GET / HTTP/1.1"),
        Err(TlsError::NotHandshake)
    );
    assert_eq!(
        hello_record_len(&[0x16, 3, 1, 0, 10]),
        Err(TlsError::Length)
    );
    assert_eq!(hello_record_len(&[0x16, 3, 1]), Ok(None));
}

#[test]
fn stripper_handles_split_records() {
    let mut wire = CCS_RECORD.to_vec();
    wire.extend_from_slice(&app_record_header(3));
    wire.extend_from_slice(b"abc");
    wire.extend_from_slice(&app_record_header(2));
    wire.extend_from_slice(b"de");
    for split in 0..wire.len() {
        let mut s = RecordStripper::new();
        let mut a = wire[..split].to_vec();
        let mut b = wire[split..].to_vec();
        let na = s.strip_in_place(&mut a).unwrap();
        let nb = s.strip_in_place(&mut b).unwrap();
        let mut got = a[..na].to_vec();
        got.extend_from_slice(&b[..nb]);
        assert_eq!(got, b"abcde");
        assert!(s.at_boundary());
    }
    let mut bad = vec![0x15, 3, 3, 0, 2, 2, 40];
    assert_eq!(
        RecordStripper::new().strip_in_place(&mut bad),
        Err(TlsError::RecordType(0x15))
    );
}

proptest! {
    #[test]
    fn hello_parser_never_panics(mut b in proptest::collection::vec(any::<u8>(), 0..2048), len in 507u16..2000) {
        if b.len() >= 5 {
            b[0] = 0x16; b[1] = 3; b[2] = 1;
            b[3..5].copy_from_slice(&len.to_be_bytes());
        }
        let _ = parse_client_hello(&b);
        let _ = verify_hello_digest(&b, &key());
    }

    #[test]
    fn mutated_hello_never_panics(pos in 0usize..517, val in any::<u8>()) {
        let mut rec = h(HELLO_12_4);
        rec[pos] = val;
        let _ = parse_client_hello(&rec);
        if (11..39).contains(&pos) {
            prop_assert_eq!(verify_hello_digest(&rec, &key()).is_some(), rec == h(HELLO_12_4));
        }
    }

    #[test]
    fn stripper_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8)) {
        let mut s = RecordStripper::new();
        for mut c in chunks {
            match s.strip_in_place(&mut c) {
                Ok(n) => prop_assert!(n <= c.len()),
                Err(_) => break,
            }
        }
    }

    #[test]
    fn stripper_round_trip(payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 1..6),
                           cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..5)) {
        let mut wire = Vec::new();
        let mut want = Vec::new();
        for p in &payloads {
            wire.extend_from_slice(&app_record_header(p.len()));
            wire.extend_from_slice(p);
            want.extend_from_slice(p);
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len())).collect();
        points.push(0);
        points.push(wire.len());
        points.sort_unstable();
        let mut s = RecordStripper::new();
        let mut got = Vec::new();
        for w in points.windows(2) {
            let mut chunk = wire[w[0]..w[1]].to_vec();
            let n = s.strip_in_place(&mut chunk).unwrap();
            got.extend_from_slice(&chunk[..n]);
        }
        prop_assert_eq!(got, want);
    }
}
