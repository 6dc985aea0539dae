//! Telegram's WEB proxy type (`tg://webproxy`, "WEB proxy protocol v1"):
//! the pure parts. See `shared/WEBPROXY.md`.
//!
//! * [`capability`]: the 43-character bridge capability derived from a
//!   user's plain or `dd` secret and the site host (v1) or host and base
//!   path (v2);
//! * [`Frame`] and [`decode_frames`]: the shared 8-byte-header frame format
//!   (`type:u8 | stream:u24 | len:u32 | payload`) the bridge page and the
//!   relay exchange, with the protocol's limits;
//! * [`check_base_path`] and [`link_secret`]: base paths and link secrets
//!   (the v2 `0x70` marker).
//!
//! Nothing here does I/O; every parser of untrusted bytes has a property
//! test and a fuzz target (`fuzz/fuzz_targets/webproxy_frames.rs`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

/// The capability of `secret` (16 bytes, or 17 with the leading `0xdd`)
/// for host `host` and, for a base-path deployment (v2), `path`.
pub fn capability(secret: &[u8], host: &str, path: Option<&str>) -> String {
    let context = match path {
        None => format!("tdesktop-web-proxy-bridge-v1\n{host}"),
        Some(p) => format!("tdesktop-web-proxy-bridge-v2\n{host}\n{p}"),
    };
    URL_SAFE_NO_PAD.encode(mtgate_crypto::hmac_sha256(secret, &[context.as_bytes()]))
}

/// The length of a capability (and of a token) in base64url: 32 bytes.
pub const TOKEN_LEN: usize = 43;

/// Whether `s` has the shape of a capability or token: 43 base64url
/// characters that decode to 32 bytes (the canonical form only).
pub fn is_token_shaped(s: &str) -> bool {
    s.len() == TOKEN_LEN
        && URL_SAFE_NO_PAD
            .decode(s)
            .is_ok_and(|b| b.len() == 32 && URL_SAFE_NO_PAD.encode(&b) == s)
}

/// Checks a base path: at most 128 bytes of segments `[A-Za-z0-9][A-Za-z0-9_-]*`
/// joined by `/`.
pub fn check_base_path(p: &str) -> Result<(), &'static str> {
    if p.is_empty() || p.len() > 128 {
        return Err("a base path is 1..128 bytes");
    }
    for seg in p.split('/') {
        let mut b = seg.bytes();
        match b.next() {
            Some(c) if c.is_ascii_alphanumeric() => {}
            _ => return Err("each segment starts with a letter or digit"),
        }
        if !b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-') {
            return Err("segments hold letters, digits, `_` and `-` only");
        }
    }
    Ok(())
}

/// The link marker of a base-path secret: old clients refuse such links.
pub const PATH_SECRET_MARKER: u8 = 0x70;

/// The secret as a WEB link carries it: hex for a root deployment,
/// base64url of `0x70 || secret` for a base-path one.
pub fn link_secret(secret: &[u8], with_path: bool) -> String {
    if with_path {
        let mut b = Vec::with_capacity(secret.len() + 1);
        b.push(PATH_SECRET_MARKER);
        b.extend_from_slice(secret);
        URL_SAFE_NO_PAD.encode(b)
    } else {
        hex::encode(secret)
    }
}

/// Frame types (`shared/WEBPROXY.md` §4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    Open = 0x01,
    Data = 0x02,
    Close = 0x03,
    Window = 0x04,
    Ping = 0x05,
    Pong = 0x06,
    Hello = 0x10,
    Welcome = 0x11,
    Bye = 0x1f,
}

impl Kind {
    pub fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            0x01 => Self::Open,
            0x02 => Self::Data,
            0x03 => Self::Close,
            0x04 => Self::Window,
            0x05 => Self::Ping,
            0x06 => Self::Pong,
            0x10 => Self::Hello,
            0x11 => Self::Welcome,
            0x1f => Self::Bye,
            _ => return None,
        })
    }

    /// Frames on a stream (id ≠ 0) versus session frames (id 0).
    pub fn on_stream(self) -> bool {
        matches!(self, Self::Open | Self::Data | Self::Close | Self::Window)
    }
}

/// The frame header's length.
pub const HEADER_LEN: usize = 8;
/// The largest payload of any frame.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// The largest DATA payload the relay sends.
pub const MAX_RELAY_DATA: usize = 64 * 1024;
/// The most frames one carrier body may hold.
pub const MAX_FRAMES_PER_BODY: usize = 4096;
/// The largest stream id (24 bits).
pub const MAX_STREAM: u32 = (1 << 24) - 1;
/// Credit each stream starts with, in each direction.
pub const INITIAL_WINDOW: u32 = 4 << 20;

/// One frame, borrowing its payload from the body it was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub kind: Kind,
    pub stream: u32,
    pub payload: &'a [u8],
}

/// Why a carrier body is not a valid sequence of frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a frame is cut short")]
    Truncated,
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    #[error("payload of {0} bytes is over the 1 MiB limit")]
    TooLong(u32),
    #[error("{0:?} on stream {1}: session frames use stream 0, stream frames a stream id")]
    WrongStream(Kind, u32),
    #[error("{0:?} with a payload of the wrong size ({1})")]
    BadPayload(Kind, usize),
    #[error("more than 4096 frames in one body")]
    TooManyFrames,
    #[error("an empty body")]
    Empty,
}

impl<'a> Frame<'a> {
    /// The WINDOW delta (a WINDOW frame's payload).
    pub fn window_delta(&self) -> Option<u32> {
        (self.kind == Kind::Window)
            .then(|| {
                <[u8; 4]>::try_from(self.payload)
                    .ok()
                    .map(u32::from_be_bytes)
            })
            .flatten()
    }

    /// Checks the payload and stream rules of the frame's type.
    fn check(&self) -> Result<(), FrameError> {
        if self.kind.on_stream() != (self.stream != 0) {
            return Err(FrameError::WrongStream(self.kind, self.stream));
        }
        let n = self.payload.len();
        let ok = match self.kind {
            Kind::Open | Kind::Close | Kind::Welcome => n == 0,
            Kind::Data => n > 0,
            Kind::Window => self.window_delta().is_some_and(|d| d != 0),
            Kind::Hello => self.payload == [1],
            Kind::Ping | Kind::Pong | Kind::Bye => true,
        };
        if ok {
            Ok(())
        } else {
            Err(FrameError::BadPayload(self.kind, n))
        }
    }
}

/// Appends `frame` to `out`. Panics only if the caller breaks the limits
/// it controls (stream id over 24 bits, payload over 4 GiB): never on
/// anything a peer sends.
pub fn encode(kind: Kind, stream: u32, payload: &[u8], out: &mut Vec<u8>) {
    debug_assert!(stream <= MAX_STREAM);
    let head = (u32::from(kind as u8) << 24) | (stream & MAX_STREAM);
    out.extend_from_slice(&head.to_be_bytes());
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    out.extend_from_slice(payload);
}

/// Reads one frame from the front of `buf`: the frame and the bytes it took,
/// `Ok(None)` if `buf` holds only part of one.
pub fn decode_one(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, FrameError> {
    let Some(head) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let kind = Kind::from_u8(head[0]).ok_or(FrameError::UnknownType(head[0]))?;
    let stream = u32::from_be_bytes([0, head[1], head[2], head[3]]);
    let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    if len as usize > MAX_PAYLOAD {
        return Err(FrameError::TooLong(len));
    }
    let end = HEADER_LEN + len as usize;
    let Some(payload) = buf.get(HEADER_LEN..end) else {
        return Ok(None);
    };
    let f = Frame {
        kind,
        stream,
        payload,
    };
    f.check()?;
    Ok(Some((f, end)))
}

/// Every frame of a carrier body (an HTTP body or a WebSocket message): at
/// least one, complete, at most [`MAX_FRAMES_PER_BODY`].
pub fn decode_frames(body: &[u8]) -> Result<Vec<Frame<'_>>, FrameError> {
    if body.is_empty() {
        return Err(FrameError::Empty);
    }
    let mut out = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        if out.len() == MAX_FRAMES_PER_BODY {
            return Err(FrameError::TooManyFrames);
        }
        match decode_one(rest)? {
            Some((f, n)) => {
                out.push(f);
                rest = &rest[n..];
            }
            None => return Err(FrameError::Truncated),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

    fn dd() -> Vec<u8> {
        let mut v = vec![0xdd];
        v.extend_from_slice(&KEY);
        v
    }

    /// The vectors of `shared/WEBPROXY.md` §3.
    #[test]
    fn capability_vectors() {
        let h = "proxy.example.com";
        let p = Some("dobry-cola-super-app");
        assert_eq!(
            capability(&KEY, h, None),
            "MHLEY5PmW1GWqJkSrlmJpvJUiLhBH_QKy6yKg8a0JPk"
        );
        assert_eq!(
            capability(&dd(), h, None),
            "IpJrt3e7sKtzPyoXy6w-Zj6GGEvsvclN66JzQEfPYLA"
        );
        assert_eq!(
            capability(&KEY, h, p),
            "hHz99Xs93EN1j91G9gpNepXwGNNt5YdAFkEVk_LlqdQ"
        );
        assert_eq!(
            capability(&dd(), h, p),
            "TGUkZaevsavLbHvlNWipnRoYxgzZ51ioWvbxgGT3wHo"
        );
        assert!(is_token_shaped(&capability(&KEY, h, None)));
        assert!(!is_token_shaped("short"));
        // 43 characters whose last one has stray low bits: not canonical.
        assert!(!is_token_shaped(
            "MHLEY5PmW1GWqJkSrlmJpvJUiLhBH_QKy6yKg8a0JPl"
        ));
    }

    #[test]
    fn base_paths_and_link_secrets() {
        assert!(check_base_path("dobry-cola-super-app").is_ok());
        assert!(check_base_path("a/b_c/9").is_ok());
        for bad in ["", "/a", "a/", "a//b", "-a", "a b", "a.b", &"a".repeat(129)] {
            assert!(check_base_path(bad).is_err(), "{bad:?}");
        }
        assert_eq!(link_secret(&KEY, false), "000102030405060708090a0b0c0d0e0f");
        let v2 = link_secret(&dd(), true);
        let raw = URL_SAFE_NO_PAD.decode(v2).unwrap();
        assert_eq!(raw[0], PATH_SECRET_MARKER);
        assert_eq!(&raw[1..], &dd()[..]);
    }

    #[test]
    fn frames_round_trip_and_rules() {
        let mut body = Vec::new();
        encode(Kind::Hello, 0, &[1], &mut body);
        encode(Kind::Open, 7, &[], &mut body);
        encode(Kind::Data, 7, b"obfuscated2 bytes", &mut body);
        encode(Kind::Window, 7, &65536u32.to_be_bytes(), &mut body);
        encode(Kind::Close, 7, &[], &mut body);
        let f = decode_frames(&body).unwrap();
        assert_eq!(f.len(), 5);
        assert_eq!(f[2].payload, b"obfuscated2 bytes");
        assert_eq!(f[3].window_delta(), Some(65536));
        let bad = |k: Kind, s: u32, p: &[u8]| {
            let mut b = Vec::new();
            encode(k, s, p, &mut b);
            decode_frames(&b).unwrap_err()
        };
        assert_eq!(
            bad(Kind::Data, 0, b"x"),
            FrameError::WrongStream(Kind::Data, 0)
        );
        assert_eq!(
            bad(Kind::Hello, 1, &[1]),
            FrameError::WrongStream(Kind::Hello, 1)
        );
        assert_eq!(
            bad(Kind::Data, 1, b""),
            FrameError::BadPayload(Kind::Data, 0)
        );
        assert_eq!(
            bad(Kind::Open, 1, b"x"),
            FrameError::BadPayload(Kind::Open, 1)
        );
        assert_eq!(
            bad(Kind::Window, 1, &0u32.to_be_bytes()),
            FrameError::BadPayload(Kind::Window, 4)
        );
        assert_eq!(
            bad(Kind::Hello, 0, &[2]),
            FrameError::BadPayload(Kind::Hello, 1)
        );
        assert_eq!(
            decode_frames(&body[..body.len() - 1]),
            Err(FrameError::Truncated)
        );
        assert_eq!(decode_frames(&[]), Err(FrameError::Empty));
        let mut huge = vec![0x02, 0, 0, 1];
        huge.extend_from_slice(&((MAX_PAYLOAD as u32) + 1).to_be_bytes());
        assert_eq!(
            decode_frames(&huge),
            Err(FrameError::TooLong(MAX_PAYLOAD as u32 + 1))
        );
        assert_eq!(
            decode_frames(&[0x42, 0, 0, 0, 0, 0, 0, 0]),
            Err(FrameError::UnknownType(0x42))
        );
        let mut many = Vec::new();
        for _ in 0..=MAX_FRAMES_PER_BODY {
            encode(Kind::Pong, 0, &[], &mut many);
        }
        assert_eq!(decode_frames(&many), Err(FrameError::TooManyFrames));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_without_panic(b in proptest::collection::vec(any::<u8>(), 0..2048)) {
            if let Ok(frames) = decode_frames(&b) {
                // What decodes re-encodes to the same bytes.
                let mut again = Vec::new();
                for f in &frames {
                    encode(f.kind, f.stream, f.payload, &mut again);
                }
                prop_assert_eq!(again, b);
            }
        }

        #[test]
        fn encoded_data_decodes(stream in 1u32..=MAX_STREAM, p in proptest::collection::vec(any::<u8>(), 1..512)) {
            let mut b = Vec::new();
            encode(Kind::Data, stream, &p, &mut b);
            let f = decode_frames(&b).unwrap();
            prop_assert_eq!(f.len(), 1);
            prop_assert_eq!(f[0].stream, stream);
            prop_assert_eq!(f[0].payload, &p[..]);
        }

        #[test]
        fn capabilities_are_token_shaped(s in proptest::collection::vec(any::<u8>(), 16..18), h in "[a-z]{1,10}\\.[a-z]{2,5}") {
            prop_assert!(is_token_shaped(&capability(&s, &h, None)));
        }
    }
}

/// The `https` carriers' sequencing, as pure state machines: the uplink's
/// `X-Up-Seq` (each body committed once, a byte-identical retry of the last
/// one acknowledged again) and the downlink's `X-Down-Cursor` (each batch
/// handed out once, the last one replayed byte for byte until the client
/// asks for the next).
pub mod poll {
    /// What to do with an uplink body.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Up {
        /// A new body: process it, then acknowledge `seq`.
        Commit,
        /// The last body again, byte for byte: acknowledge it, do nothing.
        Reack,
        /// Out of order, or a different body under a used number: refused.
        Refuse,
    }

    /// The uplink's last committed sequence number and body digest.
    #[derive(Clone, Debug, Default)]
    pub struct Uplink {
        last: u64,
        digest: [u8; 32],
    }

    impl Uplink {
        /// Decides on body `digest` (SHA-256 of the body) under `seq`;
        /// a [`Up::Commit`] records it.
        pub fn offer(&mut self, seq: u64, digest: [u8; 32]) -> Up {
            if seq == self.last + 1 {
                self.last = seq;
                self.digest = digest;
                Up::Commit
            } else if seq == self.last && seq != 0 && digest == self.digest {
                Up::Reack
            } else {
                Up::Refuse
            }
        }

        /// The last committed number (0: none yet).
        pub fn last(&self) -> u64 {
            self.last
        }
    }

    /// What a downlink poll with cursor `c` gets.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub enum Down<'a> {
        /// The batch handed out last, again (the client did not get it).
        Replay(&'a [u8]),
        /// Wait for the next batch; hand it out with [`Downlink::deliver`].
        Next,
        /// A cursor that is neither: refused.
        Refuse,
    }

    /// The downlink's cursor and the last batch handed out.
    #[derive(Clone, Debug, Default)]
    pub struct Downlink {
        /// Batches handed out so far.
        delivered: u64,
        last: Vec<u8>,
    }

    impl Downlink {
        pub fn poll(&self, cursor: u64) -> Down<'_> {
            if cursor == self.delivered {
                Down::Next
            } else if cursor + 1 == self.delivered {
                Down::Replay(&self.last)
            } else {
                Down::Refuse
            }
        }

        /// Hands out `batch` to the poll at the current cursor; the cursor
        /// the answer carries.
        pub fn deliver(&mut self, batch: Vec<u8>) -> u64 {
            self.last = batch;
            self.delivered += 1;
            self.delivered
        }

        pub fn cursor(&self) -> u64 {
            self.delivered
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use proptest::prelude::*;

        #[test]
        fn uplink_commits_in_order_and_reacks_a_retry() {
            let mut u = Uplink::default();
            assert_eq!(u.offer(0, [0; 32]), Up::Refuse);
            assert_eq!(u.offer(1, [1; 32]), Up::Commit);
            assert_eq!(u.offer(1, [1; 32]), Up::Reack);
            assert_eq!(
                u.offer(1, [2; 32]),
                Up::Refuse,
                "another body under a used number"
            );
            assert_eq!(u.offer(3, [3; 32]), Up::Refuse, "a gap");
            assert_eq!(u.offer(2, [2; 32]), Up::Commit);
            assert_eq!(u.last(), 2);
        }

        #[test]
        fn downlink_replays_the_last_batch_until_the_next_is_asked() {
            let mut d = Downlink::default();
            assert_eq!(d.poll(0), Down::Next);
            assert_eq!(d.deliver(b"one".to_vec()), 1);
            assert_eq!(d.poll(0), Down::Replay(b"one"));
            assert_eq!(d.poll(1), Down::Next);
            assert_eq!(d.poll(2), Down::Refuse);
            assert_eq!(d.deliver(b"two".to_vec()), 2);
            assert_eq!(d.poll(0), Down::Refuse, "acknowledged long ago");
            assert_eq!(d.poll(1), Down::Replay(b"two"));
        }

        proptest! {
            /// Whatever order of offers: each number commits at most once,
            /// and commits come in order 1, 2, 3, ...
            #[test]
            fn uplink_commits_each_number_once(offers in proptest::collection::vec((0u64..8, 0u8..3), 0..64)) {
                let mut u = Uplink::default();
                let mut committed = Vec::new();
                for (seq, d) in offers {
                    if u.offer(seq, [d; 32]) == Up::Commit {
                        committed.push(seq);
                    }
                }
                let want: Vec<u64> = (1..=committed.len() as u64).collect();
                prop_assert_eq!(committed, want);
            }

            /// A client that polls with any cursor never gets a batch twice
            /// as new, and a replay is always the last batch.
            #[test]
            fn downlink_never_skips_or_repeats(polls in proptest::collection::vec(0u64..6, 0..64)) {
                let mut d = Downlink::default();
                let mut handed = 0u64;
                for c in polls {
                    match d.poll(c) {
                        Down::Next => {
                            handed += 1;
                            prop_assert_eq!(d.deliver(handed.to_be_bytes().to_vec()), handed);
                        }
                        Down::Replay(b) => prop_assert_eq!(b, &handed.to_be_bytes()[..]),
                        Down::Refuse => prop_assert!(c != d.cursor() && c + 1 != d.cursor()),
                    }
                }
            }
        }
    }
}
