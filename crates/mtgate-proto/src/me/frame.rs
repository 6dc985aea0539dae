//! RPC packet framing on the ME link (PROTOCOL §7.3).
//!
//! `LE32 total_len | LE32 seq_no | body | LE32 crc`, `total_len = 12 + body`.
//! Each direction numbers its frames `-2` (nonce), `-1` (handshake), `0, 1, …`.
//! The checksum is CRC32 until both handshakes agreed on CRC32C. Once the link
//! is encrypted the sender pads its output to 16 bytes with filler words
//! `04 00 00 00`, and a receiver skips filler wherever a frame may start.
//!
//! [`RpcWriter`] appends frames to a buffer; [`RpcReader`] takes them from the
//! start of a plaintext buffer and checks length, checksum and sequence.

use std::ops::Range;

/// A filler word: `total_len == 4`, skipped by the receiver.
pub const FILLER: [u8; 4] = [4, 0, 0, 0];
/// Bytes a frame adds to its body (length, sequence number, checksum).
pub const FRAME_OVERHEAD: usize = 12;
/// The smallest valid frame (a 4-byte body).
pub const MIN_FRAME_LEN: usize = 16;
/// Default cap on one frame from the ME: 16 MiB of payload plus headers
/// (the official proxy sets none; PROTOCOL §7.3 asks for at least this).
pub const DEFAULT_MAX_FRAME_LEN: usize = (16 << 20) + 4096;
/// Sequence number of the RPC_NONCE frames.
pub const SEQ_NONCE: i32 = -2;
/// Sequence number of the RPC_HANDSHAKE frames.
pub const SEQ_HANDSHAKE: i32 = -1;

/// Which checksum protects frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checksum {
    /// IEEE CRC32 (zlib): always for the nonce and handshake frames.
    Crc32,
    /// Castagnoli: after both handshakes carried flag `0x800`.
    Crc32c,
}

impl Checksum {
    /// The checksum of the concatenation of `parts`.
    pub fn compute(self, parts: &[&[u8]]) -> u32 {
        match self {
            Self::Crc32 => {
                let mut h = crc32fast::Hasher::new();
                for p in parts {
                    h.update(p);
                }
                h.finalize()
            }
            Self::Crc32c => parts.iter().fold(0, |c, p| crc32c::crc32c_append(c, p)),
        }
    }
}

/// Why a frame could not be written or was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("bad frame length {0}")]
    BadLength(i32),
    #[error("frame of {0} bytes exceeds the limit")]
    TooLong(usize),
    #[error("checksum mismatch (got {got:08x}, computed {want:08x})")]
    BadChecksum { got: u32, want: u32 },
    #[error("got frame seq_no {got}, expected {want}")]
    BadSeq { got: i32, want: i32 },
    #[error("frame body of {0} bytes is not a non-empty multiple of 4")]
    BadBody(usize),
}

/// The sending half's frame counter and checksum.
#[derive(Debug, Clone)]
pub struct RpcWriter {
    seq: i32,
    checksum: Checksum,
}

impl Default for RpcWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl RpcWriter {
    /// A writer whose next frame is the nonce (`seq -2`, CRC32).
    pub fn new() -> Self {
        Self {
            seq: SEQ_NONCE,
            checksum: Checksum::Crc32,
        }
    }

    /// The sequence number the next frame will carry.
    pub fn next_seq(&self) -> i32 {
        self.seq
    }

    /// Switches the checksum (after the handshakes).
    pub fn set_checksum(&mut self, c: Checksum) {
        self.checksum = c;
    }

    /// Appends one frame whose body is the concatenation of `parts`.
    pub fn write(&mut self, parts: &[&[u8]], out: &mut Vec<u8>) -> Result<(), FrameError> {
        let body: usize = parts.iter().map(|p| p.len()).sum();
        if body == 0 || !body.is_multiple_of(4) {
            return Err(FrameError::BadBody(body));
        }
        let total = body + FRAME_OVERHEAD;
        if total > i32::MAX as usize {
            return Err(FrameError::TooLong(total));
        }
        let head_start = out.len();
        out.reserve(total);
        out.extend_from_slice(&(total as u32).to_le_bytes());
        out.extend_from_slice(&self.seq.to_le_bytes());
        for p in parts {
            out.extend_from_slice(p);
        }
        let crc = self.checksum.compute(&[&out[head_start..]]);
        out.extend_from_slice(&crc.to_le_bytes());
        self.seq = self.seq.wrapping_add(1);
        Ok(())
    }

    /// Appends filler words until `out.len()` is a multiple of 16.
    pub fn pad(out: &mut Vec<u8>) {
        while !out.len().is_multiple_of(16) {
            out.extend_from_slice(&FILLER);
        }
    }
}

/// One frame found at the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcFrame {
    pub seq: i32,
    /// The body's byte range within the buffer given to [`RpcReader::next`].
    pub body: Range<usize>,
}

/// What [`RpcReader::next`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// Bytes to drop from the front of the buffer (filler and the frame, if any).
    pub consumed: usize,
    /// A whole, checked frame; `None` means more bytes are needed.
    pub frame: Option<RpcFrame>,
}

/// The receiving half's checks: length, checksum, sequence number.
#[derive(Debug, Clone)]
pub struct RpcReader {
    seq: i32,
    checksum: Checksum,
    max_len: usize,
}

impl Default for RpcReader {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_LEN)
    }
}

impl RpcReader {
    /// A reader expecting the nonce frame first, refusing frames over `max_len` bytes.
    pub fn new(max_len: usize) -> Self {
        Self {
            seq: SEQ_NONCE,
            checksum: Checksum::Crc32,
            max_len: max_len.max(MIN_FRAME_LEN),
        }
    }

    /// The sequence number the next frame must carry.
    pub fn next_seq(&self) -> i32 {
        self.seq
    }

    /// Switches the checksum (after the handshakes).
    pub fn set_checksum(&mut self, c: Checksum) {
        self.checksum = c;
    }

    /// Skips filler at the start of `buf` and takes one frame if it is complete.
    ///
    /// An error is fatal for the link: the stream can no longer be trusted.
    pub fn next(&mut self, buf: &[u8]) -> Result<Parsed, FrameError> {
        let mut off = 0;
        while buf.len() >= off + 4 && buf[off..off + 4] == FILLER {
            off += 4;
        }
        let rest = &buf[off..];
        let Some(head) = rest.get(..4) else {
            return Ok(Parsed {
                consumed: off,
                frame: None,
            });
        };
        let raw = i32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        if raw < MIN_FRAME_LEN as i32 || raw % 4 != 0 {
            return Err(FrameError::BadLength(raw));
        }
        let len = raw as usize;
        if len > self.max_len {
            return Err(FrameError::TooLong(len));
        }
        let Some(frame) = rest.get(..len) else {
            return Ok(Parsed {
                consumed: off,
                frame: None,
            });
        };
        let (covered, tail) = frame.split_at(len - 4);
        let got = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
        let want = self.checksum.compute(&[covered]);
        if got != want {
            return Err(FrameError::BadChecksum { got, want });
        }
        let seq = i32::from_le_bytes([covered[4], covered[5], covered[6], covered[7]]);
        if seq != self.seq {
            return Err(FrameError::BadSeq {
                got: seq,
                want: self.seq,
            });
        }
        self.seq = self.seq.wrapping_add(1);
        Ok(Parsed {
            consumed: off + len,
            frame: Some(RpcFrame {
                seq,
                body: off + 8..off + len - 4,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).unwrap()
    }

    #[test]
    fn checksums_12_9() {
        assert_eq!(Checksum::Crc32.compute(&[b"1234", b"56789"]), 0xcbf4_3926);
        assert_eq!(Checksum::Crc32c.compute(&[b"12345", b"6789"]), 0xe306_9283);
    }

    #[test]
    fn nonce_frame_12_6_and_handshake_frame_12_7() {
        let mut w = RpcWriter::new();
        let mut out = Vec::new();
        let nonce = h("aa87cb7a000102030100000000f1536522222222222222222222222222222222");
        w.write(&[&nonce], &mut out).unwrap();
        assert_eq!(
            out,
            h("2c000000feffffffaa87cb7a000102030100000000f1536522222222222222222222222222222222ed282d87")
        );
        out.clear();
        let hs = h("f5ee827600000000495049505052504454494d45495049505052504454494d45");
        w.write(&[&hs[..8], &hs[8..]], &mut out).unwrap();
        RpcWriter::pad(&mut out);
        assert_eq!(
            out,
            h(concat!(
                "2c000000fffffffff5ee827600000000495049505052504454494d4549504950",
                "5052504454494d4502761d8104000000"
            ))
        );
        let mut r = RpcReader {
            seq: SEQ_HANDSHAKE,
            ..Default::default()
        };
        let p = r.next(&out).unwrap();
        assert_eq!(p.consumed, 44);
        assert_eq!(&out[p.frame.unwrap().body], &hs[..]);
        // The trailing filler alone: consumed, no frame.
        assert_eq!(
            r.next(&out[44..]).unwrap(),
            Parsed {
                consumed: 4,
                frame: None
            }
        );
    }

    #[test]
    fn crc32c_frame_12_9_and_captured_12_11() {
        let frame = h(concat!(
            "8800000000000000eef1ce360a10022008070605040302010000000000000000",
            "0000ffffcb00710522c8000000000000000000000000ffffc6336407bb010000",
            "18000000ae261edb100123456789abcdeffedcba987654321000000000000000",
            "0000000004000000c2b1a06514000000f18e7ebea0a1a2a3a4a5a6a7a8a9aaab",
            "acadaeaf9647454b"
        ));
        let mut w = RpcWriter::new();
        w.seq = 0;
        w.set_checksum(Checksum::Crc32c);
        let mut out = Vec::new();
        w.write(&[&frame[8..frame.len() - 4]], &mut out).unwrap();
        assert_eq!(out, frame);
        // §12.11: the official proxy's CLOSE_CONN (seq 1) and PONG (seq 13), CRC32C.
        let mut w = RpcWriter::new();
        w.seq = 1;
        w.set_checksum(Checksum::Crc32c);
        out.clear();
        w.write(&[&h("5d42cf1f0900400000000000")], &mut out)
            .unwrap();
        assert_eq!(out, h("18000000010000005d42cf1f090040000000000087b660a1"));
        // The ME's PING (seq 11) with two filler words.
        let mut r = RpcReader {
            seq: 11,
            ..Default::default()
        };
        r.set_checksum(Checksum::Crc32c);
        let ping = h("180000000b000000dfa2305788776655443322111cdf4eeb0400000004000000");
        let p = r.next(&ping).unwrap();
        assert_eq!(
            &ping[p.frame.unwrap().body],
            &h("dfa230578877665544332211")[..]
        );
        assert_eq!(r.next(&ping[24..]).unwrap().consumed, 8);
    }

    #[test]
    fn refusals() {
        let mut w = RpcWriter::new();
        let mut good = Vec::new();
        w.write(&[b"abcd"], &mut good).unwrap();
        assert_eq!(
            w.write(&[b"abc"], &mut Vec::new()),
            Err(FrameError::BadBody(3))
        );
        assert_eq!(w.write(&[], &mut Vec::new()), Err(FrameError::BadBody(0)));

        let mut bad_crc = good.clone();
        bad_crc[15] ^= 1;
        assert!(matches!(
            RpcReader::default().next(&bad_crc),
            Err(FrameError::BadChecksum { .. })
        ));
        let mut r = RpcReader {
            seq: 5,
            ..Default::default()
        };
        assert_eq!(r.next(&good), Err(FrameError::BadSeq { got: -2, want: 5 }));
        for len in [0i32, -16, 12, 18, 8] {
            let mut b = good.clone();
            b[..4].copy_from_slice(&len.to_le_bytes());
            assert_eq!(
                RpcReader::default().next(&b),
                Err(FrameError::BadLength(len))
            );
        }
        let mut big = good.clone();
        big[..4].copy_from_slice(&64u32.to_le_bytes());
        assert_eq!(RpcReader::new(32).next(&big), Err(FrameError::TooLong(64)));
        // Incomplete input asks for more, after skipping filler.
        let mut r = RpcReader::default();
        let mut b = FILLER.to_vec();
        b.extend_from_slice(&good[..10]);
        assert_eq!(
            r.next(&b).unwrap(),
            Parsed {
                consumed: 4,
                frame: None
            }
        );
    }

    proptest! {
        #[test]
        fn reader_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..128), seq in -3i32..3) {
            let mut r = RpcReader::new(64);
            r.seq = seq;
            if let Ok(p) = r.next(&buf) {
                prop_assert!(p.consumed <= buf.len());
                if let Some(f) = p.frame {
                    prop_assert!(f.body.start <= f.body.end && f.body.end <= p.consumed);
                }
            }
        }

        #[test]
        fn round_trip(bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..40), 1..6),
                      c in any::<bool>(), fill in 0usize..4) {
            let cs = if c { Checksum::Crc32c } else { Checksum::Crc32 };
            let (mut w, mut r) = (RpcWriter::new(), RpcReader::default());
            w.set_checksum(cs);
            r.set_checksum(cs);
            let mut out = Vec::new();
            let bodies: Vec<Vec<u8>> = bodies.into_iter().map(|mut b| { b.truncate(b.len() & !3); if b.is_empty() { b = vec![1, 2, 3, 4]; } b }).collect();
            for b in &bodies {
                w.write(&[b], &mut out).unwrap();
                for _ in 0..fill { out.extend_from_slice(&FILLER); }
            }
            RpcWriter::pad(&mut out);
            prop_assert_eq!(out.len() % 16, 0);
            let mut at = 0;
            for b in &bodies {
                let p = r.next(&out[at..]).unwrap();
                let f = p.frame.unwrap();
                prop_assert_eq!(&out[at + f.body.start..at + f.body.end], &b[..]);
                at += p.consumed;
            }
            let p = r.next(&out[at..]).unwrap();
            prop_assert!(p.frame.is_none());
            prop_assert_eq!(at + p.consumed, out.len());
        }
    }
}
