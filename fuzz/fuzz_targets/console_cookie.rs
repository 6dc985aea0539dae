//! The console's session cookie (`mtgate::admin::console::session_from_cookies`),
//! read before authentication from `Cookie` header values: any bytes (split at
//! newlines into header values, lossy UTF-8) never panic, and a session found
//! is the value of a pair named `mtgate_console` holding no `;`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtgate::admin::console::session_from_cookies;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let values: Vec<&str> = text.split('\n').collect();
    if let Some(v) = session_from_cookies(values.iter().copied()) {
        assert!(!v.contains(';'));
        assert!(values
            .iter()
            .any(|h| h.contains(&format!("mtgate_console={v}"))));
    }
});
