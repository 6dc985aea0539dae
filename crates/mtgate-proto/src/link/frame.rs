//! The link multiplexer's frames: many client sessions over one link.
//! Records ([`super::record`]) carry one or more frames each.
//!
//! ```text
//! kind u8 · stream u32 BE · length u16 BE · body (length bytes)
//! ```
//!
//! | kind | name   | body                          | sent by |
//! |------|--------|-------------------------------|---------|
//! | 1    | open   | DC index i16 BE               | bridge  |
//! | 2    | opened | —                             | exit    |
//! | 3    | data   | bytes (1..=MAX_DATA)          | both    |
//! | 4    | window | credit u32 BE (> 0)           | both    |
//! | 5    | fin    | — (no more data this way)     | both    |
//! | 6    | reset  | reason u8                     | both    |
//! | 7    | ping   | u64 BE                        | both    |
//! | 8    | pong   | u64 BE                        | both    |
//! | 9    | client | family u8 (4, 6) · ip · port u16 BE | bridge |
//!
//! `open` asks the exit for a DC connection (the bridge runs the session);
//! `client` hands the exit a client's raw connection (the bridge forwards,
//! the exit runs the session: `[link.bridge] mode = "forward"`).
//!
//! Stream 0 is the link itself (ping, pong); sessions use 1 and up. Every
//! stream starts with [`INITIAL_WINDOW`] bytes of credit each way; a side
//! sends data only within the credit the other gave (window frames add to
//! it), so one slow session never holds up the others on the link.

use std::net::{IpAddr, SocketAddr};
use thiserror::Error;

/// A frame's header.
pub const HEADER_LEN: usize = 7;
/// The most data one frame carries (a record holds a frame of this size).
pub const MAX_DATA: usize = super::record::MAX_PLAINTEXT - 1 - HEADER_LEN;
/// Credit each side has on a new stream before any window frame.
pub const INITIAL_WINDOW: u32 = 256 * 1024;

/// Why a stream was reset (the reset frame's reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The exit could not reach the DC.
    Unreachable = 1,
    /// The exit has no entry for the DC index.
    UnknownDc = 2,
    /// Either side's connection ended abnormally.
    Aborted = 3,
    /// The peer sent beyond its credit or broke the stream's rules.
    Protocol = 4,
    /// The exit is at its limit of streams.
    Busy = 5,
}

impl Reason {
    pub fn from_u8(b: u8) -> Reason {
        match b {
            1 => Reason::Unreachable,
            2 => Reason::UnknownDc,
            4 => Reason::Protocol,
            5 => Reason::Busy,
            _ => Reason::Aborted,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Reason::Unreachable => "unreachable",
            Reason::UnknownDc => "unknown_dc",
            Reason::Aborted => "aborted",
            Reason::Protocol => "protocol",
            Reason::Busy => "busy",
        }
    }
}

/// One frame, borrowing its data from the buffer it was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    Open { stream: u32, dc: i16 },
    Opened { stream: u32 },
    Data { stream: u32, bytes: &'a [u8] },
    Window { stream: u32, credit: u32 },
    Fin { stream: u32 },
    Reset { stream: u32, reason: Reason },
    Ping { stream: u32, value: u64 },
    Pong { stream: u32, value: u64 },
    Client { stream: u32, addr: SocketAddr },
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FrameError {
    #[error("link frame: unknown kind {0}")]
    Kind(u8),
    #[error("link frame: kind {kind} with a body of {len} bytes")]
    Length { kind: u8, len: usize },
    #[error("link frame: a {0} frame on stream 0")]
    StreamZero(&'static str),
    #[error("link frame: a {0} frame off stream 0")]
    NotStreamZero(&'static str),
    #[error("link frame: a window of 0")]
    ZeroWindow,
    #[error("link frame: cut short")]
    Truncated,
}

impl Frame<'_> {
    fn kind(&self) -> u8 {
        match self {
            Frame::Open { .. } => 1,
            Frame::Opened { .. } => 2,
            Frame::Data { .. } => 3,
            Frame::Window { .. } => 4,
            Frame::Fin { .. } => 5,
            Frame::Reset { .. } => 6,
            Frame::Ping { .. } => 7,
            Frame::Pong { .. } => 8,
            Frame::Client { .. } => 9,
        }
    }

    pub fn stream(&self) -> u32 {
        match *self {
            Frame::Open { stream, .. }
            | Frame::Opened { stream }
            | Frame::Data { stream, .. }
            | Frame::Window { stream, .. }
            | Frame::Fin { stream }
            | Frame::Reset { stream, .. }
            | Frame::Ping { stream, .. }
            | Frame::Pong { stream, .. }
            | Frame::Client { stream, .. } => stream,
        }
    }

    /// The frame's length on the wire.
    pub fn wire_len(&self) -> usize {
        HEADER_LEN
            + match self {
                Frame::Open { .. } => 2,
                Frame::Opened { .. } | Frame::Fin { .. } => 0,
                Frame::Data { bytes, .. } => bytes.len(),
                Frame::Window { .. } => 4,
                Frame::Reset { .. } => 1,
                Frame::Ping { .. } | Frame::Pong { .. } => 8,
                Frame::Client { addr, .. } => match addr {
                    SocketAddr::V4(_) => 1 + 4 + 2,
                    SocketAddr::V6(_) => 1 + 16 + 2,
                },
            }
    }

    /// Appends the frame to `out`. A data frame must hold 1..=MAX_DATA
    /// bytes (the caller cuts).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.kind());
        out.extend_from_slice(&self.stream().to_be_bytes());
        out.extend_from_slice(&((self.wire_len() - HEADER_LEN) as u16).to_be_bytes());
        match *self {
            Frame::Open { dc, .. } => out.extend_from_slice(&dc.to_be_bytes()),
            Frame::Opened { .. } | Frame::Fin { .. } => {}
            Frame::Data { bytes, .. } => out.extend_from_slice(bytes),
            Frame::Window { credit, .. } => out.extend_from_slice(&credit.to_be_bytes()),
            Frame::Reset { reason, .. } => out.push(reason as u8),
            Frame::Ping { value, .. } | Frame::Pong { value, .. } => {
                out.extend_from_slice(&value.to_be_bytes())
            }
            Frame::Client { addr, .. } => {
                match addr.ip() {
                    IpAddr::V4(ip) => {
                        out.push(4);
                        out.extend_from_slice(&ip.octets());
                    }
                    IpAddr::V6(ip) => {
                        out.push(6);
                        out.extend_from_slice(&ip.octets());
                    }
                }
                out.extend_from_slice(&addr.port().to_be_bytes());
            }
        }
    }

    /// Reads the frame at the front of `buf` (a record's body, which holds
    /// whole frames): the frame and the bytes it took.
    pub fn decode(buf: &[u8]) -> Result<(Frame<'_>, usize), FrameError> {
        let [kind, s0, s1, s2, s3, l0, l1, rest @ ..] = buf else {
            return Err(FrameError::Truncated);
        };
        let stream = u32::from_be_bytes([*s0, *s1, *s2, *s3]);
        let len = usize::from(u16::from_be_bytes([*l0, *l1]));
        let body = rest.get(..len).ok_or(FrameError::Truncated)?;
        let bad = || FrameError::Length { kind: *kind, len };
        let frame = match kind {
            1 => Frame::Open {
                stream,
                dc: i16::from_be_bytes(body.try_into().map_err(|_| bad())?),
            },
            2 if len == 0 => Frame::Opened { stream },
            3 if (1..=MAX_DATA).contains(&len) => Frame::Data {
                stream,
                bytes: body,
            },
            4 => {
                let credit = u32::from_be_bytes(body.try_into().map_err(|_| bad())?);
                if credit == 0 {
                    return Err(FrameError::ZeroWindow);
                }
                Frame::Window { stream, credit }
            }
            5 if len == 0 => Frame::Fin { stream },
            6 if len == 1 => Frame::Reset {
                stream,
                reason: Reason::from_u8(body[0]),
            },
            7 | 8 => {
                let value = u64::from_be_bytes(body.try_into().map_err(|_| bad())?);
                if *kind == 7 {
                    Frame::Ping { stream, value }
                } else {
                    Frame::Pong { stream, value }
                }
            }
            9 => {
                let addr = match body {
                    [4, a, b, c, d, p0, p1] => SocketAddr::new(
                        IpAddr::from([*a, *b, *c, *d]),
                        u16::from_be_bytes([*p0, *p1]),
                    ),
                    [6, rest @ ..] if rest.len() == 18 => {
                        let mut ip = [0u8; 16];
                        ip.copy_from_slice(&rest[..16]);
                        SocketAddr::new(IpAddr::from(ip), u16::from_be_bytes([rest[16], rest[17]]))
                    }
                    _ => return Err(bad()),
                };
                Frame::Client { stream, addr }
            }
            1..=8 => return Err(bad()),
            k => return Err(FrameError::Kind(*k)),
        };
        match (&frame, stream) {
            (Frame::Ping { .. }, s) | (Frame::Pong { .. }, s) if s != 0 => {
                return Err(FrameError::NotStreamZero("ping"))
            }
            (Frame::Ping { .. } | Frame::Pong { .. }, _) => {}
            (_, 0) => return Err(FrameError::StreamZero("session")),
            _ => {}
        }
        Ok((frame, HEADER_LEN + len))
    }
}

/// Iterates over the frames of a record's body; stops at the first error.
pub fn frames(body: &[u8]) -> impl Iterator<Item = Result<Frame<'_>, FrameError>> {
    let mut at = 0;
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || at >= body.len() {
            return None;
        }
        match Frame::decode(&body[at..]) {
            Ok((f, n)) => {
                at += n;
                Some(Ok(f))
            }
            Err(e) => {
                failed = true;
                Some(Err(e))
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn all() -> Vec<Frame<'static>> {
        vec![
            Frame::Open { stream: 1, dc: -2 },
            Frame::Opened { stream: 1 },
            Frame::Data {
                stream: 7,
                bytes: b"abc",
            },
            Frame::Window {
                stream: 7,
                credit: 65536,
            },
            Frame::Fin { stream: 7 },
            Frame::Reset {
                stream: 9,
                reason: Reason::Unreachable,
            },
            Frame::Ping {
                stream: 0,
                value: 42,
            },
            Frame::Pong {
                stream: 0,
                value: 42,
            },
            Frame::Client {
                stream: 11,
                addr: "203.0.113.9:40000".parse().unwrap(),
            },
            Frame::Client {
                stream: 12,
                addr: "[2001:db8::1]:443".parse().unwrap(),
            },
        ]
    }

    #[test]
    fn every_kind_round_trips_in_one_body() {
        let mut body = Vec::new();
        for f in all() {
            f.encode(&mut body);
        }
        let back: Vec<_> = frames(&body).collect::<Result<_, _>>().unwrap();
        assert_eq!(back, all());
        assert_eq!(body.len(), all().iter().map(Frame::wire_len).sum::<usize>());
    }

    #[test]
    fn malformed_frames_are_named() {
        assert_eq!(
            Frame::decode(&[3, 0, 0, 0, 1, 0]),
            Err(FrameError::Truncated)
        );
        assert_eq!(
            Frame::decode(&[3, 0, 0, 0, 1, 0, 5, 1]),
            Err(FrameError::Truncated)
        );
        assert_eq!(
            Frame::decode(&[10, 0, 0, 0, 1, 0, 0]),
            Err(FrameError::Kind(10))
        );
        assert_eq!(
            Frame::decode(&[9, 0, 0, 0, 1, 0, 3, 4, 1, 2]),
            Err(FrameError::Length { kind: 9, len: 3 })
        );
        assert_eq!(
            Frame::decode(&[3, 0, 0, 0, 1, 0, 0]),
            Err(FrameError::Length { kind: 3, len: 0 })
        );
        assert_eq!(
            Frame::decode(&[4, 0, 0, 0, 1, 0, 4, 0, 0, 0, 0]),
            Err(FrameError::ZeroWindow)
        );
        assert_eq!(
            Frame::decode(&[5, 0, 0, 0, 0, 0, 0]),
            Err(FrameError::StreamZero("session"))
        );
        let mut ping = Vec::new();
        Frame::Ping {
            stream: 0,
            value: 1,
        }
        .encode(&mut ping);
        ping[4] = 3;
        assert_eq!(Frame::decode(&ping), Err(FrameError::NotStreamZero("ping")));
    }

    #[test]
    fn the_largest_data_frame_fills_a_record() {
        let data = vec![1u8; MAX_DATA];
        let mut body = Vec::new();
        Frame::Data {
            stream: 1,
            bytes: &data,
        }
        .encode(&mut body);
        assert_eq!(body.len() + 1, super::super::record::MAX_PLAINTEXT);
        let big = [3, 0, 0, 0, 1, 0xff, 0xff];
        assert!(Frame::decode(&big).is_err());
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            for f in frames(&bytes).flatten() {
                let mut again = Vec::new();
                f.encode(&mut again);
                prop_assert_eq!(Frame::decode(&again).map(|x| x.0), Ok(f));
            }
        }

        #[test]
        fn data_round_trips(stream in 1u32.., data in proptest::collection::vec(any::<u8>(), 1..2000)) {
            let mut body = Vec::new();
            Frame::Data { stream, bytes: &data }.encode(&mut body);
            let (f, n) = Frame::decode(&body).unwrap();
            prop_assert_eq!(n, body.len());
            prop_assert_eq!(f, Frame::Data { stream, bytes: &data });
        }
    }
}
