//! MTProto transport framing inside the obfuscated stream (PROTOCOL §4).
//!
//! Direct mode relays bytes without parsing them; these codecs serve the fake
//! DC, scripted clients and (later) middle-proxy mode, which must cut the
//! client's stream into packets. Decoding is sans-I/O: hand in what you have,
//! get a frame back with how many bytes it used, or "need more".

use crate::obfs2::ProtoTag;

/// Largest payload accepted from a peer (the official proxy's `MAX_POST_SIZE` is 1 044 480).
pub const MAX_FRAME_LEN: usize = 1 << 24;

/// A decoded frame: where its payload lies in the input and whether a quick-ack was asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Byte range of the payload within the decoded buffer.
    pub start: usize,
    pub end: usize,
    /// Bytes of input this frame used (header + payload + padding).
    pub consumed: usize,
    pub quick_ack: bool,
}

/// What [`decode`] found at the start of the buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    Frame(Frame),
    /// At least this many bytes in total are needed.
    NeedMore(usize),
}

/// Why a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {0} exceeds the limit")]
    TooLong(usize),
    #[error("abridged long form used for a short length")]
    Overlong,
    #[error("frame length is not a multiple of 4")]
    Unaligned,
}

/// Decodes one client→server frame from the start of `buf`, with at most `max` payload bytes.
///
/// Padded-intermediate payloads are truncated down to a multiple of 4, as the
/// official proxy does (PROTOCOL §4.3); the padding stays counted in `consumed`.
pub fn decode(tag: ProtoTag, buf: &[u8], max: usize) -> Result<Decoded, FrameError> {
    match tag {
        ProtoTag::Abridged => {
            let Some(&first) = buf.first() else {
                return Ok(Decoded::NeedMore(1));
            };
            let quick_ack = first & 0x80 != 0;
            let (hdr, words) = if first & 0x7f == 0x7f {
                if buf.len() < 4 {
                    return Ok(Decoded::NeedMore(4));
                }
                let w = u32::from_le_bytes([buf[1], buf[2], buf[3], 0]) as usize;
                if w < 0x7f {
                    return Err(FrameError::Overlong);
                }
                (4, w)
            } else {
                (1, (first & 0x7f) as usize)
            };
            let len = words * 4;
            if len > max {
                return Err(FrameError::TooLong(len));
            }
            finish(buf, hdr, len, len, quick_ack)
        }
        ProtoTag::Intermediate | ProtoTag::Padded => {
            if buf.len() < 4 {
                return Ok(Decoded::NeedMore(4));
            }
            let raw = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
            let quick_ack = raw & 0x8000_0000 != 0;
            let len = (raw & 0x7fff_ffff) as usize;
            if len > max {
                return Err(FrameError::TooLong(len));
            }
            let payload = if tag == ProtoTag::Padded {
                len & !3
            } else {
                len
            };
            finish(buf, 4, len, payload, quick_ack)
        }
    }
}

fn finish(
    buf: &[u8],
    hdr: usize,
    wire_len: usize,
    payload: usize,
    quick_ack: bool,
) -> Result<Decoded, FrameError> {
    let total = hdr + wire_len;
    if buf.len() < total {
        return Ok(Decoded::NeedMore(total));
    }
    Ok(Decoded::Frame(Frame {
        start: hdr,
        end: hdr + payload,
        consumed: total,
        quick_ack,
    }))
}

/// Writes the frame header for a `len`-byte payload (plus `pad` padding bytes for
/// padded intermediate) into `out`, returning the header length (1..=4).
pub fn encode_header(
    tag: ProtoTag,
    len: usize,
    pad: usize,
    quick_ack: bool,
    out: &mut [u8; 4],
) -> Result<usize, FrameError> {
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLong(len));
    }
    match tag {
        ProtoTag::Abridged => {
            if !len.is_multiple_of(4) {
                return Err(FrameError::Unaligned);
            }
            let w = len / 4;
            let ack = if quick_ack { 0x80 } else { 0 };
            if w < 0x7f {
                out[0] = w as u8 | ack;
                Ok(1)
            } else {
                let b = (w as u32).to_le_bytes();
                *out = [0x7f | ack, b[0], b[1], b[2]];
                Ok(4)
            }
        }
        ProtoTag::Intermediate | ProtoTag::Padded => {
            let total = len + if tag == ProtoTag::Padded { pad } else { 0 };
            let v = total as u32 | if quick_ack { 0x8000_0000 } else { 0 };
            *out = v.to_le_bytes();
            Ok(4)
        }
    }
}

/// Appends one whole frame (header, payload, `pad` zero-or-random bytes from `padding`) to `out`.
pub fn encode_frame(
    tag: ProtoTag,
    payload: &[u8],
    padding: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let mut hdr = [0u8; 4];
    let n = encode_header(tag, payload.len(), padding.len(), false, &mut hdr)?;
    out.extend_from_slice(&hdr[..n]);
    out.extend_from_slice(payload);
    if tag == ProtoTag::Padded {
        out.extend_from_slice(padding);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn vectors_12_10() {
        let p: Vec<u8> = (0..8).collect();
        let mut out = Vec::new();
        encode_frame(ProtoTag::Abridged, &p, &[], &mut out).unwrap();
        assert_eq!(out, h("020001020304050607"));
        let mut hdr = [0u8; 4];
        assert_eq!(
            encode_header(ProtoTag::Abridged, 512, 0, false, &mut hdr),
            Ok(4)
        );
        assert_eq!(hdr.to_vec(), h("7f800000"));
        encode_header(ProtoTag::Abridged, 512, 0, true, &mut hdr).unwrap();
        assert_eq!(hdr.to_vec(), h("ff800000"));
        out.clear();
        encode_frame(ProtoTag::Intermediate, &p, &[], &mut out).unwrap();
        assert_eq!(out, h("080000000001020304050607"));
        out.clear();
        encode_frame(ProtoTag::Padded, &p, &[0xaa, 0xbb, 0xcc], &mut out).unwrap();
        assert_eq!(out, h("0b0000000001020304050607aabbcc"));

        let d = decode(ProtoTag::Abridged, &h("820001020304050607"), 1 << 20).unwrap();
        assert_eq!(
            d,
            Decoded::Frame(Frame {
                start: 1,
                end: 9,
                consumed: 9,
                quick_ack: true
            })
        );
        let d = decode(
            ProtoTag::Intermediate,
            &h("080000800001020304050607"),
            1 << 20,
        )
        .unwrap();
        assert_eq!(
            d,
            Decoded::Frame(Frame {
                start: 4,
                end: 12,
                consumed: 12,
                quick_ack: true
            })
        );
        let d = decode(
            ProtoTag::Padded,
            &h("0b0000000001020304050607aabbcc"),
            1 << 20,
        )
        .unwrap();
        assert_eq!(
            d,
            Decoded::Frame(Frame {
                start: 4,
                end: 12,
                consumed: 15,
                quick_ack: false
            })
        );
    }

    #[test]
    fn limits() {
        assert_eq!(
            decode(ProtoTag::Intermediate, &[0, 0, 0x10, 0], 1024),
            Err(FrameError::TooLong(0x100000))
        );
        assert_eq!(
            decode(ProtoTag::Abridged, &[0x7f, 1, 0, 0], 1024),
            Err(FrameError::Overlong)
        );
        assert_eq!(
            decode(ProtoTag::Abridged, &[0x7f, 1], 1024),
            Ok(Decoded::NeedMore(4))
        );
        assert_eq!(
            decode(ProtoTag::Padded, &[], 1024),
            Ok(Decoded::NeedMore(4))
        );
    }

    proptest! {
        #[test]
        fn decode_never_panics(t in 0u8..3, b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let tag = [ProtoTag::Abridged, ProtoTag::Intermediate, ProtoTag::Padded][t as usize];
            if let Ok(Decoded::Frame(f)) = decode(tag, &b, 1 << 20) {
                prop_assert!(f.start <= f.end && f.end <= f.consumed && f.consumed <= b.len());
            }
        }

        #[test]
        fn round_trip(t in 0u8..3, words in 0usize..600, pad in 0usize..16) {
            let tag = [ProtoTag::Abridged, ProtoTag::Intermediate, ProtoTag::Padded][t as usize];
            let payload: Vec<u8> = (0..words * 4).map(|i| i as u8).collect();
            let padding = vec![0x55u8; pad];
            let mut out = Vec::new();
            encode_frame(tag, &payload, &padding, &mut out).unwrap();
            match decode(tag, &out, 1 << 20).unwrap() {
                Decoded::Frame(f) => {
                    // Padded frames keep whole words of padding (PROTOCOL §4.3).
                    prop_assert!(out[f.start..f.end].starts_with(&payload));
                    prop_assert!(f.end - f.start <= payload.len() + (pad & !3));
                    prop_assert_eq!(f.consumed, out.len());
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }
}
