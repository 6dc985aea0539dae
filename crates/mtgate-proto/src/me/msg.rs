//! Messages on a ready ME link (PROTOCOL §7.7, §7.8).
//!
//! Proxy → ME: [`ProxyReq`] (one client packet, with the ad tag), and the
//! small CLOSE_CONN / PONG (/ PING) messages. ME → proxy: [`MeMsg::parse`]
//! for PROXY_ANS, SIMPLE_ACK, CLOSE_EXT, PING and the rest. The reverse
//! directions (parse a request, build an answer) exist for tests and fakes.

use super::*;
use crate::obfs2::ProtoTag;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// RPC_PROXY_REQ flag bits (PROTOCOL §7.7).
pub mod flags {
    /// The packet's auth_key_id is 0 (an MTProto handshake message).
    pub const NOT_ENCRYPTED: u32 = 0x2;
    /// The extra block holds TL_HTTP_QUERY_INFO (HTTP front-end only).
    pub const HTTP_QUERY_INFO: u32 = 0x4;
    /// The extra block holds TL_PROXY_TAG.
    pub const HAS_AD_TAG: u32 = 0x8;
    /// Always set for TCP transport clients.
    pub const MAGIC: u32 = 0x1000;
    /// The client uses obfuscated2.
    pub const EXTMODE2: u32 = 0x2_0000;
    /// Padded intermediate (sent by mtprotoproxy/mtg, not by the official proxy).
    pub const PAD: u32 = 0x0800_0000;
    /// An earlier packet of this client was dropped.
    pub const DROPPED: u32 = 0x1000_0000;
    /// Intermediate or padded-intermediate framing.
    pub const INTERMEDIATE: u32 = 0x2000_0000;
    /// Abridged framing.
    pub const ABRIDGED: u32 = 0x4000_0000;
    /// The client asked for a quick-ack on this packet.
    pub const QUICK_ACK: u32 = 0x8000_0000;
}

/// Largest client → proxy packet (the official `MAX_POST_SIZE`).
pub const MAX_CLIENT_PACKET: usize = 1_044_480;
/// Bytes of a PROXY_REQ before the extra block.
pub const PROXY_REQ_FIXED: usize = 56;
/// Bytes of a PROXY_ANS before its data.
pub const PROXY_ANS_HEADER: usize = 16;

const REQ_PQ: u32 = 0x6046_9778;
const REQ_PQ_MULTI: u32 = 0xbe7e_8ef1;
const REQ_DH_PARAMS: u32 = 0xd712_e4be;
const SET_CLIENT_DH_PARAMS: u32 = 0xf504_5f1f;

/// Why a message could not be parsed or a packet is not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    #[error("message of {len} bytes is too short for {what}")]
    Short { what: &'static str, len: usize },
    #[error("bad extra block")]
    BadExtra,
    #[error("client packet of {0} bytes refused")]
    BadPacket(usize),
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn need(what: &'static str, b: &[u8], len: usize) -> Result<(), MsgError> {
    if b.len() < len {
        Err(MsgError::Short { what, len: b.len() })
    } else {
        Ok(())
    }
}

/// An address as 16 bytes: IPv6 as is, IPv4 mapped (`::ffff:a.b.c.d`).
pub fn ip16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn ip_from16(b: &[u8]) -> IpAddr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    let v6 = Ipv6Addr::from(a);
    v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4)
}

/// Appends a TL string: short form (`len < 254`) or `fe` + LE24, padded to 4.
pub fn tl_string(bytes: &[u8], out: &mut Vec<u8>) {
    let start = out.len();
    if bytes.len() < 254 {
        out.push(bytes.len() as u8);
    } else {
        let l = (bytes.len() as u32).to_le_bytes();
        out.extend_from_slice(&[0xfe, l[0], l[1], l[2]]);
    }
    out.extend_from_slice(bytes);
    while !(out.len() - start).is_multiple_of(4) {
        out.push(0);
    }
}

/// The flags of one request, official style (no PAD bit).
pub fn req_flags(tag: ProtoTag, packet: &[u8], ad_tag: bool, quick_ack: bool) -> u32 {
    let mut f = flags::MAGIC | flags::EXTMODE2;
    f |= match tag {
        ProtoTag::Abridged => flags::ABRIDGED,
        ProtoTag::Intermediate | ProtoTag::Padded => flags::INTERMEDIATE,
    };
    if packet.len() >= 8 && packet[..8] == [0; 8] {
        f |= flags::NOT_ENCRYPTED;
    }
    if ad_tag {
        f |= flags::HAS_AD_TAG;
    }
    if quick_ack {
        f |= flags::QUICK_ACK;
    }
    f
}

/// The official proxy's checks before forwarding a client packet (PROTOCOL §7.7).
pub fn check_client_packet(p: &[u8]) -> Result<(), MsgError> {
    let bad = Err(MsgError::BadPacket(p.len()));
    if p.len() < 28 || !p.len().is_multiple_of(4) || p.len() > MAX_CLIENT_PACKET {
        return bad;
    }
    if p[..8] != [0; 8] {
        return if p.len() >= 56 { Ok(()) } else { bad };
    }
    let inner = le32(p, 16) as usize;
    if inner < 20 || inner > p.len() - 20 {
        return bad;
    }
    match le32(p, 20) {
        REQ_PQ | REQ_PQ_MULTI | REQ_DH_PARAMS | SET_CLIENT_DH_PARAMS => Ok(()),
        _ => bad,
    }
}

/// One RPC_PROXY_REQ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyReq<'a> {
    pub flags: u32,
    pub conn_id: u64,
    /// The client's address.
    pub client: SocketAddr,
    /// The proxy's address of the client connection (after NAT).
    pub proxy: SocketAddr,
    pub ad_tag: Option<[u8; 16]>,
    /// The client's MTProto packet.
    pub payload: &'a [u8],
}

impl ProxyReq<'_> {
    /// Appends everything before the payload. `HAS_AD_TAG` follows `ad_tag`.
    pub fn encode_header(&self, out: &mut Vec<u8>) {
        let mut f = self.flags & !(flags::HAS_AD_TAG | flags::HTTP_QUERY_INFO);
        if self.ad_tag.is_some() {
            f |= flags::HAS_AD_TAG;
        }
        out.extend_from_slice(&RPC_PROXY_REQ.to_le_bytes());
        out.extend_from_slice(&f.to_le_bytes());
        out.extend_from_slice(&self.conn_id.to_le_bytes());
        out.extend_from_slice(&ip16(self.client.ip()));
        out.extend_from_slice(&u32::from(self.client.port()).to_le_bytes());
        out.extend_from_slice(&ip16(self.proxy.ip()));
        out.extend_from_slice(&u32::from(self.proxy.port()).to_le_bytes());
        if let Some(tag) = &self.ad_tag {
            out.extend_from_slice(&24u32.to_le_bytes());
            out.extend_from_slice(&TL_PROXY_TAG.to_le_bytes());
            tl_string(tag, out);
        }
    }

    /// Appends the whole payload (header and packet).
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_header(out);
        out.extend_from_slice(self.payload);
    }
}

impl<'a> ProxyReq<'a> {
    /// Parses a request (the ME's side; for tests and fakes).
    pub fn parse(b: &'a [u8]) -> Result<Self, MsgError> {
        need("RPC_PROXY_REQ", b, PROXY_REQ_FIXED)?;
        let flags = le32(b, 4);
        let mut at = PROXY_REQ_FIXED;
        let mut ad_tag = None;
        if flags & (flags::HAS_AD_TAG | flags::HTTP_QUERY_INFO) != 0 {
            need("RPC_PROXY_REQ extra", b, at + 4)?;
            let extra = le32(b, at) as usize;
            at += 4;
            let block = b
                .get(at..at.saturating_add(extra))
                .ok_or(MsgError::BadExtra)?;
            at += extra;
            if flags & flags::HAS_AD_TAG != 0 {
                if block.len() < 24 || le32(block, 0) != TL_PROXY_TAG || block[4] != 16 {
                    return Err(MsgError::BadExtra);
                }
                let mut t = [0u8; 16];
                t.copy_from_slice(&block[5..21]);
                ad_tag = Some(t);
            }
        }
        Ok(Self {
            flags,
            conn_id: le64(b, 8),
            client: SocketAddr::new(ip_from16(&b[16..32]), le32(b, 32) as u16),
            proxy: SocketAddr::new(ip_from16(&b[36..52]), le32(b, 52) as u16),
            ad_tag,
            payload: &b[at..],
        })
    }
}

/// A message on a ready link (either direction; the ME side sends the first five).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MeMsg<'a> {
    ProxyAns {
        flags: u32,
        conn_id: u64,
        data: &'a [u8],
    },
    SimpleAck {
        conn_id: u64,
        confirm: u32,
    },
    CloseExt {
        conn_id: u64,
    },
    Ping {
        id: u64,
    },
    /// Proxy → ME normally; the official proxy ignores it from the ME.
    CloseConn {
        conn_id: u64,
    },
    Pong {
        id: u64,
    },
    HandshakeError {
        code: i32,
    },
    /// Ignored (logged) by the proxy.
    Unknown {
        op: u32,
    },
}

impl<'a> MeMsg<'a> {
    /// Parses one frame body.
    pub fn parse(b: &'a [u8]) -> Result<Self, MsgError> {
        need("a constructor", b, 4)?;
        Ok(match le32(b, 0) {
            RPC_PROXY_ANS => {
                need("RPC_PROXY_ANS", b, PROXY_ANS_HEADER)?;
                Self::ProxyAns {
                    flags: le32(b, 4),
                    conn_id: le64(b, 8),
                    data: &b[PROXY_ANS_HEADER..],
                }
            }
            RPC_SIMPLE_ACK => {
                need("RPC_SIMPLE_ACK", b, 16)?;
                Self::SimpleAck {
                    conn_id: le64(b, 4),
                    confirm: le32(b, 12),
                }
            }
            op @ (RPC_CLOSE_EXT | RPC_CLOSE_CONN | RPC_PING | RPC_PONG) => {
                need("a 12-byte message", b, 12)?;
                let v = le64(b, 4);
                match op {
                    RPC_CLOSE_EXT => Self::CloseExt { conn_id: v },
                    RPC_CLOSE_CONN => Self::CloseConn { conn_id: v },
                    RPC_PING => Self::Ping { id: v },
                    _ => Self::Pong { id: v },
                }
            }
            RPC_HANDSHAKE_ERROR => {
                need("RPC_HANDSHAKE_ERROR", b, 8)?;
                Self::HandshakeError {
                    code: le32(b, 4) as i32,
                }
            }
            op => Self::Unknown { op },
        })
    }
}

fn small(op: u32, v: u64) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[..4].copy_from_slice(&op.to_le_bytes());
    b[4..].copy_from_slice(&v.to_le_bytes());
    b
}

/// RPC_CLOSE_CONN: "this client went away" (proxy → ME).
pub fn close_conn(conn_id: u64) -> [u8; 12] {
    small(RPC_CLOSE_CONN, conn_id)
}

/// RPC_CLOSE_EXT: "close this client" (ME → proxy; for fakes).
pub fn close_ext(conn_id: u64) -> [u8; 12] {
    small(RPC_CLOSE_EXT, conn_id)
}

/// RPC_PONG with the ping's id.
pub fn pong(id: u64) -> [u8; 12] {
    small(RPC_PONG, id)
}

/// RPC_PING (optional liveness probe; the official proxy never sends one).
pub fn ping(id: u64) -> [u8; 12] {
    small(RPC_PING, id)
}

/// RPC_SIMPLE_ACK (ME → proxy; for fakes).
pub fn simple_ack(conn_id: u64, confirm: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&RPC_SIMPLE_ACK.to_le_bytes());
    b[4..12].copy_from_slice(&conn_id.to_le_bytes());
    b[12..].copy_from_slice(&confirm.to_le_bytes());
    b
}

/// The 16-byte header of RPC_PROXY_ANS (ME → proxy; for fakes).
pub fn proxy_ans_header(flags: u32, conn_id: u64) -> [u8; PROXY_ANS_HEADER] {
    let mut b = [0u8; PROXY_ANS_HEADER];
    b[..4].copy_from_slice(&RPC_PROXY_ANS.to_le_bytes());
    b[4..8].copy_from_slice(&flags.to_le_bytes());
    b[8..].copy_from_slice(&conn_id.to_le_bytes());
    b
}

#[cfg(test)]
#[path = "msg_tests.rs"]
mod tests;
