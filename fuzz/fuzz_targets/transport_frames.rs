//! MTProto transport framing (PROTOCOL §4): `transport::decode` for each tag,
//! looping over the buffer and consuming frames as a reader would, with a
//! re-encode check on every frame decoded.
//!
//! Input: byte 0 picks the payload limit, the rest is the stream.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtgate_fuzz::take_u8;
use mtgate_proto::obfs2::ProtoTag;
use mtgate_proto::transport::{decode, encode_header, Decoded, FrameError, MAX_FRAME_LEN};

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    let ctl = take_u8(&mut rest);
    // Mostly the real limit; sometimes a small one so TooLong is reachable.
    let max = if ctl & 0x80 == 0 { MAX_FRAME_LEN } else { 1usize << (ctl % 25) };

    for tag in [ProtoTag::Abridged, ProtoTag::Intermediate, ProtoTag::Padded] {
        let mut pos = 0;
        let mut frames = 0usize;
        loop {
            let buf = &rest[pos..];
            match decode(tag, buf, max) {
                Ok(Decoded::Frame(f)) => {
                    assert!(f.start <= f.end && f.end <= f.consumed && f.consumed <= buf.len(), "{f:?} for {}", buf.len());
                    assert!(f.consumed > 0, "a frame must consume input");
                    let payload = f.end - f.start;
                    assert!(payload <= max);
                    let wire_len = f.consumed - f.start;
                    match tag {
                        ProtoTag::Abridged => {
                            assert_eq!(payload % 4, 0);
                            assert_eq!(wire_len, payload);
                        }
                        ProtoTag::Intermediate => assert_eq!(wire_len, payload),
                        ProtoTag::Padded => {
                            assert_eq!(payload % 4, 0);
                            assert!(wire_len - payload < 4);
                        }
                    }
                    // Decoding is canonical: re-encoding the header gives the same bytes.
                    let mut hdr = [0u8; 4];
                    let n = encode_header(tag, payload, wire_len - payload, f.quick_ack, &mut hdr)
                        .expect("a decoded frame re-encodes");
                    assert_eq!(n, f.start);
                    assert_eq!(&hdr[..n], &buf[..n]);
                    pos += f.consumed;
                    frames += 1;
                }
                Ok(Decoded::NeedMore(n)) => {
                    // Asking for no more than we have would spin a reader forever.
                    assert!(n > buf.len(), "NeedMore({n}) with {} bytes buffered", buf.len());
                    assert!(n <= 4 + max, "NeedMore({n}) beyond header + limit {max}");
                    break;
                }
                Err(FrameError::TooLong(len)) => {
                    assert!(len > max);
                    break;
                }
                Err(FrameError::Overlong) => {
                    assert_eq!(tag, ProtoTag::Abridged);
                    break;
                }
                Err(FrameError::Unaligned) => panic!("decode never reports Unaligned"),
            }
        }
        assert!(pos <= rest.len());
        assert!(frames <= rest.len() + 1);
    }
});
