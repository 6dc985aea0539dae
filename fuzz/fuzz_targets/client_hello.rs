//! The FakeTLS ClientHello (PROTOCOL §6.2): `hello_record_len`,
//! `parse_client_hello`, `verify_hello_digest`, and (for hellos that parse)
//! the ServerHello built from them.
//!
//! Input: byte 0 is a control byte; the rest is tried twice, once as a raw
//! record and once as a record body behind a header the harness makes
//! consistent (`16 03 01 len`, body zero-padded to the minimum size), so the
//! fuzzer spends its time inside the handshake message, not on the length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtgate_crypto::Key16;
use mtgate_proto::faketls::{
    build_server_hello, build_server_hello_ordered, hello_record_len, parse_client_hello, server_hello_len, sign_hello, verify_hello_digest,
    verify_server_hello, TlsError, MAX_HELLO_BODY, MIN_HELLO_BODY, RECORD_HEADER_LEN,
};

fn keys() -> [Key16; 2] {
    [
        Key16::new([0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff]),
        Key16::new([1; 16]),
    ]
}

fn check(record: &[u8], ctl: u8) {
    // Length check on every prefix length the caller might see while reading.
    match hello_record_len(record) {
        Ok(None) => assert!(record.len() < RECORD_HEADER_LEN),
        Ok(Some(n)) => {
            assert!(record.len() >= RECORD_HEADER_LEN);
            assert!((RECORD_HEADER_LEN + MIN_HELLO_BODY..=RECORD_HEADER_LEN + MAX_HELLO_BODY).contains(&n));
        }
        Err(TlsError::NotHandshake) => assert!(record.len() >= 3),
        Err(e) => assert_eq!(e, TlsError::Length),
    }
    let keys = keys();
    for k in &keys {
        let _ = verify_hello_digest(record, k);
    }

    let parsed = parse_client_hello(record);
    if let Ok(h) = &parsed {
        assert_eq!(hello_record_len(record), Ok(Some(record.len())));
        assert!(h.session_id.len() <= 32);
        if let Some(s) = h.tls13_suite {
            assert!((0x1301..=0x1303).contains(&s));
        }
        if let Some(sni) = &h.sni {
            assert_eq!(*sni, sni.to_ascii_lowercase());
        }
        // Our ServerHello for any hello we accept is well-formed and verifies.
        let key = &keys[usize::from(ctl & 1)];
        let share = [ctl; 32];
        let fake = vec![0x5a; usize::from(ctl) * 8];
        let resp = if ctl & 2 == 0 {
            build_server_hello(h, key, &share, &fake)
        } else {
            build_server_hello_ordered(h, key, &share, &fake, ctl & 4 != 0)
        };
        assert_eq!(server_hello_len(&resp), Some(resp.len()));
        assert!(verify_server_hello(&resp, &h.random, key));
    }

    // Signing then verifying gives the timestamp back, and only the random changes.
    if record.len() >= 43 {
        let ts = u32::from_le_bytes([record[0], ctl, record[record.len() - 1], 0x65]);
        let key = &keys[usize::from(ctl >> 7)];
        let mut signed = record.to_vec();
        sign_hello(&mut signed, key, ts);
        assert_eq!(verify_hello_digest(&signed, key), Some(ts));
        assert_eq!(&signed[..11], &record[..11]);
        assert_eq!(&signed[43..], &record[43..]);
        match (&parsed, parse_client_hello(&signed)) {
            (Ok(a), Ok(b)) => {
                assert_eq!((&a.session_id, a.tls13_suite, &a.sni), (&b.session_id, b.tls13_suite, &b.sni));
                assert_eq!(&b.random[..], &signed[11..43]);
            }
            (Err(a), Err(b)) => assert_eq!(*a, b),
            (a, b) => panic!("signing changed the parse: {a:?} vs {b:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, body)) = data.split_first() else {
        return;
    };
    // As received.
    check(body, ctl);
    // Behind a consistent record header.
    let body = &body[..body.len().min(MAX_HELLO_BODY)];
    let mut rec = Vec::with_capacity(RECORD_HEADER_LEN + body.len().max(MIN_HELLO_BODY));
    rec.extend_from_slice(&[0x16, 0x03, 0x01, 0, 0]);
    rec.extend_from_slice(body);
    rec.resize(RECORD_HEADER_LEN + body.len().max(MIN_HELLO_BODY), 0);
    let n = (rec.len() - RECORD_HEADER_LEN) as u16;
    rec[3..5].copy_from_slice(&n.to_be_bytes());
    check(&rec, ctl);
});
