//! obfuscated2 init headers (PROTOCOL §3, §5): `parse_client_header` with a
//! couple of keys and `parse_dc_side_header`, on raw bytes and on headers the
//! crate itself built from fuzz-chosen randomness (so the "match" branch and
//! the cipher agreement are checked too, not only the reject path).
//!
//! Input: 64 header bytes, then 1 control byte, 2 DC bytes, then payload.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtgate_crypto::Key16;
use mtgate_fuzz::{take_array, take_u8};
use mtgate_proto::obfs2::{
    build_dc_header, build_header, is_valid_init, parse_client_header, parse_dc_side_header, DcIndex, ProtoTag,
    HEADER_LEN,
};

const TAGS: [ProtoTag; 3] = [ProtoTag::Abridged, ProtoTag::Intermediate, ProtoTag::Padded];

fn keys() -> [Key16; 2] {
    let mut k = [0u8; 16];
    hex_into(&mut k, "00112233445566778899aabbccddeeff");
    [Key16::new([9; 16]), Key16::new(k)]
}

fn hex_into(out: &mut [u8], s: &str) {
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap_or(0);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let header: [u8; HEADER_LEN] = take_array(&mut rest);
    let ctl = take_u8(&mut rest);
    let dc = i16::from_le_bytes(take_array(&mut rest));
    let payload = rest;

    let keys = keys();
    let key_refs = [&keys[0], &keys[1]];

    // 1. Raw bytes, as received from an unknown client.
    assert!(parse_client_header(&header, &[]).is_none());
    if let Some(h) = parse_client_header(&header, &key_refs) {
        assert!(h.key_index < key_refs.len());
        // Only the matching key may be reported; a lone retry must agree.
        let again = parse_client_header(&header, &[key_refs[h.key_index]]).expect("same key matches again");
        assert_eq!((again.tag, again.dc), (h.tag, h.dc));
    }
    if let Some((tag, dc, _)) = parse_dc_side_header(&header) {
        assert_eq!(ProtoTag::from_bytes(tag.to_bytes()), Some(tag));
        let _ = (dc.abs(), dc.is_media());
    }
    let _ = is_valid_init(&header);

    // 2. A header the crate built with fuzz randomness: it must round-trip and
    //    both sides' ciphers must agree on the payload.
    let tag = TAGS[usize::from(ctl % 3)];
    let which = usize::from((ctl >> 2) & 1);
    let (wire, mut client) = build_header(&header, tag, DcIndex(dc), Some(&keys[which]));
    assert_eq!(&wire[..56], &header[..56], "bytes 0..56 go out in the clear");
    let mut srv = parse_client_header(&wire, &key_refs).expect("a header built for a key must match it");
    // Another key may match first by accident (probability 3*2^-32), never a later one.
    assert!(srv.key_index <= which);
    if srv.key_index == which {
        assert_eq!((srv.tag, srv.dc), (tag, DcIndex(dc)));
        let mut up = payload.to_vec();
        client.enc.apply(&mut up);
        srv.ciphers.dec.apply(&mut up);
        assert_eq!(up, payload);
        let mut down = payload.to_vec();
        srv.ciphers.enc.apply(&mut down);
        client.dec.apply(&mut down);
        assert_eq!(down, payload);
    }

    // 3. The proxy→DC direction (no secret).
    let (wire, _) = build_dc_header(&header, tag, DcIndex(dc));
    let (t, d, _) = parse_dc_side_header(&wire).expect("a DC header the crate built must parse");
    assert_eq!((t, d), (tag, DcIndex(dc)));
});
