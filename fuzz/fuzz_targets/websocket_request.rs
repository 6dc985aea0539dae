//! WebSocket listener request heads: `mtgate::net::websocket::parse_head` on
//! any bytes. It decides or asks for more, never panics; an upgrade's head
//! length lies within the input and its key is what an upgrade needs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtgate::net::websocket::{parse_head, Head, MAX_HEAD};

fuzz_target!(|data: &[u8]| {
    match parse_head(data, "/apiws") {
        Head::Upgrade { len, key, .. } => {
            assert!(len <= data.len());
            assert_eq!(key.len(), 24);
        }
        Head::Incomplete => assert!(data.len() < MAX_HEAD),
        Head::Web { .. } | Head::Invalid => {}
    }
});
