//! Certificates from a mask site or from the own site's files:
//! `mtgate::x509::cert_info` over any bytes never panics, and a notAfter it
//! reads is a real calendar time (formattable back).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(info) = mtgate::x509::cert_info(data) {
        if let Some(t) = info.not_after {
            let _ = mtgate::civil::format_date(t);
        }
        let _ = info.self_issued();
    }
});
