//! The link's cipher offer (issue 15, `mtgate_proto::link::negotiate`):
//! any bytes decode without a panic, an offer that decodes encodes back to
//! the same bytes, and negotiating two decoded offers picks a cipher both
//! hold (or none) and hashes a transcript.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtgate_proto::link::negotiate::{choose, transcript, Offer};

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(0, |b| usize::from(*b) % (data.len().max(1)));
    let (a, b) = data.split_at(cut.min(data.len()));
    let left = Offer::decode(a);
    if let Ok(o) = &left {
        assert_eq!(o.encode(), a);
    }
    if let (Ok(bridge), Ok(exit)) = (left, Offer::decode(b)) {
        if let Ok(c) = choose(&bridge, &exit) {
            assert!(bridge.ciphers().contains(&c) && exit.ciphers().contains(&c));
            let _ = transcript(&bridge, &exit, c);
        }
    }
});
