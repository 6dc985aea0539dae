//! The DC probe's answer parser (`mtgate_proto::probe`, used by `mtgate doctor`):
//! `check_res_pq` on arbitrary messages never panics, and whatever it accepts
//! round-trips through `ResPq::to_body`.
//!
//! Input: bytes 0..16 are our nonce, the rest is the DC's message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtgate_proto::probe::{check_res_pq, parse_unencrypted, wrap_unencrypted, ResPq};

fuzz_target!(|data: &[u8]| {
    let (nonce, msg) = data.split_at(data.len().min(16));
    let mut n = [0u8; 16];
    n[..nonce.len()].copy_from_slice(nonce);
    if let Ok((msg_id, res)) = check_res_pq(msg, &n) {
        assert_eq!(res.nonce, n);
        let again = wrap_unencrypted(msg_id, &res.to_body());
        assert_eq!(check_res_pq(&again, &n).ok(), Some((msg_id, res)));
    }
    if let Some((_, body)) = parse_unencrypted(msg) {
        if let Some(r) = ResPq::parse(body) {
            assert_eq!(ResPq::parse(&r.to_body()), Some(r));
        }
    }
});
