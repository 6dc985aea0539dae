//! The client→proxy TLS record layer (PROTOCOL §6.4): `RecordStripper::strip_in_place`
//! over the input cut into read-sized chunks, checked against a one-shot
//! reference model of the same rules run over the whole input.
//!
//! Input: byte 0 = largest chunk (0 = one chunk), byte 1 = chunk-size seed,
//! then the stream. A control bit may prepend a valid CCS record, as tdlib sends.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtgate_fuzz::{chunks, take_u8};
use mtgate_proto::faketls::{RecordStripper, CCS_RECORD, MAX_CLIENT_RECORD, RECORD_HEADER_LEN};

/// The stripper's rules, written plainly over the whole stream: the payload of
/// every application-data record, whether an error was hit, and whether the
/// stream ended on a record boundary.
fn model(stream: &[u8]) -> (Vec<u8>, bool, bool) {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        if pos == stream.len() {
            return (out, false, true);
        }
        if stream.len() - pos < RECORD_HEADER_LEN {
            return (out, false, false);
        }
        let h = &stream[pos..pos + RECORD_HEADER_LEN];
        let len = usize::from(u16::from_be_bytes([h[3], h[4]]));
        if h[1..3] != [3, 3] || !(h[0] == 0x17 || h[0] == 0x14) || len == 0 || len > MAX_CLIENT_RECORD {
            return (out, true, false);
        }
        pos += RECORD_HEADER_LEN;
        let take = len.min(stream.len() - pos);
        if h[0] == 0x17 {
            out.extend_from_slice(&stream[pos..pos + take]);
        }
        pos += take;
        if take < len {
            return (out, false, false);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let max = take_u8(&mut rest);
    let seed = take_u8(&mut rest);
    let mut stream = Vec::with_capacity(rest.len() + CCS_RECORD.len());
    if seed & 0x80 != 0 {
        stream.extend_from_slice(&CCS_RECORD);
    }
    stream.extend_from_slice(rest);

    let (want, want_err, want_boundary) = model(&stream);

    let mut s = RecordStripper::new();
    assert!(s.at_boundary());
    let mut got = Vec::new();
    let mut err = false;
    for chunk in chunks(&stream, max, seed) {
        let mut buf = chunk.to_vec();
        match s.strip_in_place(&mut buf) {
            Ok(n) => {
                assert!(n <= buf.len(), "stripper returned {n} for a {}-byte buffer", buf.len());
                got.extend_from_slice(&buf[..n]);
            }
            Err(_) => {
                err = true;
                break;
            }
        }
    }
    assert_eq!(err, want_err, "chunked stripper and model disagree on the error");
    if err {
        // Payload of the chunk that held the bad header is dropped with the error.
        assert!(want.starts_with(&got));
    } else {
        assert_eq!(got, want);
        assert_eq!(s.at_boundary(), want_boundary);
    }
});
