//! Carrier bodies of the WEB proxy type (HTTP bodies, WebSocket messages):
//! `mtgate_proto::webproxy::decode_frames` over any bytes never panics, never
//! returns more than the per-body frame limit, and what it accepts
//! re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtgate_proto::webproxy::{decode_frames, encode, MAX_FRAMES_PER_BODY};

fuzz_target!(|data: &[u8]| {
    if let Ok(frames) = decode_frames(data) {
        assert!(frames.len() <= MAX_FRAMES_PER_BODY);
        let mut again = Vec::new();
        for f in &frames {
            encode(f.kind, f.stream, f.payload, &mut again);
        }
        assert_eq!(again, data);
    }
});
