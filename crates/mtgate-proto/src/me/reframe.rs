//! What the proxy writes to a client in ME mode (PROTOCOL §4.4, §7.10): each
//! RPC_PROXY_ANS payload framed in the client's transport, and each
//! RPC_SIMPLE_ACK as the client's quick-ack token.

use crate::obfs2::ProtoTag;
use crate::transport::{encode_header, FrameError};

/// Most random padding bytes put after a padded-intermediate answer.
pub const MAX_ANSWER_PAD: usize = 3;
/// Most random bytes after a padded-intermediate quick-ack token.
pub const MAX_ACK_PAD: usize = 8;

/// Appends `data` framed for the client: abridged, intermediate, or padded
/// intermediate with `padding` (0..=15 random bytes) after the payload.
///
/// Abridged frames carry whole words only: a length that is not a multiple of
/// 4 is refused (such an answer cannot be delivered to that client).
pub fn answer(
    tag: ProtoTag,
    data: &[u8],
    padding: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let pad = if tag == ProtoTag::Padded {
        padding
    } else {
        &[]
    };
    let mut hdr = [0u8; 4];
    let n = encode_header(tag, data.len(), pad.len(), false, &mut hdr)?;
    out.reserve(n + data.len() + pad.len());
    out.extend_from_slice(&hdr[..n]);
    out.extend_from_slice(data);
    out.extend_from_slice(pad);
    Ok(())
}

/// Appends the quick-ack token `confirm` in the client's form (PROTOCOL §4.4):
/// abridged gets the LE32 byte-swapped, intermediate gets it as is, padded
/// intermediate gets the documented frame `LE32(8 + p) ff ff ff ff token` plus
/// `padding` (at most 8 random bytes).
pub fn quick_ack(tag: ProtoTag, confirm: u32, padding: &[u8], out: &mut Vec<u8>) {
    match tag {
        ProtoTag::Abridged => out.extend_from_slice(&confirm.to_be_bytes()),
        ProtoTag::Intermediate => out.extend_from_slice(&confirm.to_le_bytes()),
        ProtoTag::Padded => {
            let pad = &padding[..padding.len().min(MAX_ACK_PAD)];
            out.extend_from_slice(&(8 + pad.len() as u32).to_le_bytes());
            out.extend_from_slice(&[0xff; 4]);
            out.extend_from_slice(&confirm.to_le_bytes());
            out.extend_from_slice(pad);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{decode, Decoded};
    use proptest::prelude::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn tokens_12_10() {
        let mut out = Vec::new();
        quick_ack(ProtoTag::Abridged, 0x89ab_cdef, &[], &mut out);
        assert_eq!(out, h("89abcdef"));
        out.clear();
        quick_ack(ProtoTag::Intermediate, 0x89ab_cdef, &[1, 2], &mut out);
        assert_eq!(out, h("efcdab89"));
        out.clear();
        quick_ack(ProtoTag::Padded, 0x89ab_cdef, &[], &mut out);
        assert_eq!(out, h("08000000ffffffffefcdab89"));
        out.clear();
        quick_ack(ProtoTag::Padded, 0x89ab_cdef, &[7; 12], &mut out);
        assert_eq!(out.len(), 4 + 8 + 8);
        assert_eq!(&out[..4], &16u32.to_le_bytes());
    }

    #[test]
    fn answers_12_10() {
        let p: Vec<u8> = (0..8).collect();
        let mut out = Vec::new();
        answer(ProtoTag::Abridged, &p, &[9], &mut out).unwrap();
        assert_eq!(out, h("020001020304050607"));
        out.clear();
        answer(ProtoTag::Intermediate, &p, &[9], &mut out).unwrap();
        assert_eq!(out, h("080000000001020304050607"));
        out.clear();
        answer(ProtoTag::Padded, &p, &[0xaa, 0xbb, 0xcc], &mut out).unwrap();
        assert_eq!(out, h("0b0000000001020304050607aabbcc"));
        assert!(answer(ProtoTag::Abridged, &[1, 2, 3], &[], &mut out).is_err());
    }

    proptest! {
        #[test]
        fn answers_decode_back(t in 0u8..3, words in 0usize..300, pad in 0usize..=MAX_ANSWER_PAD) {
            let tag = [ProtoTag::Abridged, ProtoTag::Intermediate, ProtoTag::Padded][t as usize];
            let data: Vec<u8> = (0..words * 4).map(|i| (i * 13) as u8).collect();
            let mut out = Vec::new();
            answer(tag, &data, &vec![0x5a; pad], &mut out).unwrap();
            match decode(tag, &out, 1 << 20).unwrap() {
                Decoded::Frame(f) => {
                    prop_assert_eq!(&out[f.start..f.end], &data[..]);
                    prop_assert_eq!(f.consumed, out.len());
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }
}
