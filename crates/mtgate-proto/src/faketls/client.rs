//! The client side of FakeTLS, for scripted clients, tests and the benchmark:
//! a ClientHello shaped like a browser's (GREASE, SNI, key share, padding to
//! any size) and signed for a key and timestamp.

use super::{sign_hello, RECORD_HEADER_LEN};
use mtgate_crypto::Key16;

fn ext(out: &mut Vec<u8>, ty: u16, data: &[u8]) {
    out.extend_from_slice(&ty.to_be_bytes());
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
}

/// Builds a signed ClientHello record of exactly `total_len` bytes (at least
/// about 150 + SNI length; clamped up to that) for `sni`, `key` and `timestamp`.
/// `random` supplies the session id and key share (64 bytes).
pub fn build_client_hello(
    key: &Key16,
    sni: &str,
    timestamp: u32,
    random: &[u8; 64],
    total_len: usize,
) -> Vec<u8> {
    let mut exts = Vec::new();
    ext(&mut exts, 0x0a0a, &[]);
    let mut sni_data = Vec::new();
    sni_data.extend_from_slice(&((sni.len() + 3) as u16).to_be_bytes());
    sni_data.push(0);
    sni_data.extend_from_slice(&(sni.len() as u16).to_be_bytes());
    sni_data.extend_from_slice(sni.as_bytes());
    ext(&mut exts, 0x0000, &sni_data);
    ext(&mut exts, 0x0017, &[]);
    ext(&mut exts, 0xff01, &[0]);
    ext(
        &mut exts,
        0x000a,
        &[0x00, 0x06, 0x4a, 0x4a, 0x00, 0x1d, 0x00, 0x17],
    );
    ext(&mut exts, 0x0010, b"\x00\x0c\x02h2\x08http/1.1");
    ext(&mut exts, 0x000d, &[0x00, 0x04, 0x04, 0x03, 0x08, 0x04]);
    let mut ks = vec![0x00, 0x24, 0x00, 0x1d, 0x00, 0x20];
    ks.extend_from_slice(&random[32..64]);
    ext(&mut exts, 0x0033, &ks);
    ext(&mut exts, 0x002b, &[0x04, 0x03, 0x04, 0x03, 0x03]);

    let mut body = Vec::new();
    body.extend_from_slice(&[0x03, 0x03]);
    body.extend_from_slice(&[0u8; 32]);
    body.push(32);
    body.extend_from_slice(&random[..32]);
    body.extend_from_slice(&[0x00, 0x08, 0x1a, 0x1a, 0x13, 0x01, 0x13, 0x02, 0x13, 0x03]);
    body.extend_from_slice(&[0x01, 0x00]);
    // record(5) + hs header(4) + body + ext length(2) + exts + padding ext (4 + n)
    let fixed = RECORD_HEADER_LEN + 4 + body.len() + 2 + exts.len() + 4;
    let pad = total_len.saturating_sub(fixed);
    ext(&mut exts, 0x0015, &vec![0u8; pad]);
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);

    let mut rec = Vec::with_capacity(RECORD_HEADER_LEN + 4 + body.len());
    rec.extend_from_slice(&[0x16, 0x03, 0x01]);
    rec.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
    rec.push(0x01);
    rec.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    rec.extend_from_slice(&body);
    sign_hello(&mut rec, key, timestamp);
    rec
}
