//! The PROXY protocol (HAProxy's v1 text and v2 binary headers) on the
//! client listener, from trusted front ends only.
//!
//! A connection whose socket peer is in `[proxy_protocol] trusted` must start
//! with a header; the client address in it is then the connection's client
//! (policy, fronting budget, logs, ME requests). A header that is missing,
//! malformed or too long ends the connection (the front end is ours and
//! misconfigured; nothing is fronted on its behalf). A `LOCAL` command (v2)
//! or `UNKNOWN` protocol (v1), which front ends use for their own health
//! checks, leaves the front end itself as the peer. A connection from any
//! other source is served as a direct client: a PROXY header from it is just
//! bytes that are not a handshake, fronted like any other.
//!
//! Reading never takes a byte past the header: [`next_read`] says how many
//! bytes to read next from what is buffered, so the client's first bytes
//! stay in the socket for the handshake. Parsing of a complete header is the
//! `ppp` crate's; this module bounds it (at most [`MAX_HEADER`] bytes) and
//! turns its result into one client address.

use ipnet::IpNet;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// The v2 signature (12 bytes).
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header the specification allows (with its CRLF).
pub const V1_MAX: usize = 107;
/// The longest v2 header accepted: 16 fixed bytes, then addresses and TLVs.
/// Front ends send tens to a few hundred bytes; the format allows 64 KiB.
pub const MAX_HEADER: usize = 16 + 1024;
/// The shortest header of either version (`PROXY UNKNOWN\r\n`), so the first
/// read never takes a byte of the client's own data.
const FIRST_READ: usize = 15;

/// What to do next with the bytes of a header read so far.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Read exactly this many more bytes.
    Read(usize),
    /// The header is complete: the client it names (`None`: the front end's
    /// own connection, `LOCAL` or `UNKNOWN`).
    Done(Option<SocketAddr>),
    /// Not a valid header (or longer than [`MAX_HEADER`]).
    Invalid(&'static str),
}

/// What to read next, given the header bytes `buf` read so far (reads are
/// exact, so `buf` never holds a byte past the header).
pub fn next_read(buf: &[u8]) -> Step {
    if buf.len() < FIRST_READ {
        return Step::Read(FIRST_READ - buf.len());
    }
    if buf.starts_with(&V2_SIGNATURE[..FIRST_READ.min(12)]) {
        if buf.len() < 16 {
            return Step::Read(16 - buf.len());
        }
        let total = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
        if total > MAX_HEADER {
            return Step::Invalid("v2 header longer than accepted");
        }
        if buf.len() < total {
            return Step::Read(total - buf.len());
        }
        return parse_v2(&buf[..total]);
    }
    if !buf.starts_with(b"PROXY ") {
        return Step::Invalid("no PROXY protocol header");
    }
    if !buf.ends_with(b"\r\n") {
        if buf.len() >= V1_MAX || buf.windows(2).any(|w| w == b"\r\n") {
            return Step::Invalid("v1 header without CRLF within 107 bytes");
        }
        // One byte at a time: the CRLF may be the next byte.
        return Step::Read(1);
    }
    parse_v1(buf)
}

fn parse_v1(buf: &[u8]) -> Step {
    match ppp::v1::Header::try_from(buf) {
        Ok(h) if h.header.len() == buf.len() => match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Step::Done(Some(SocketAddr::from((a.source_address, a.source_port))))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Step::Done(Some(SocketAddr::from((a.source_address, a.source_port))))
            }
            ppp::v1::Addresses::Unknown => Step::Done(None),
        },
        _ => Step::Invalid("malformed v1 header"),
    }
}

fn parse_v2(buf: &[u8]) -> Step {
    let Ok(h) = ppp::v2::Header::try_from(buf) else {
        return Step::Invalid("malformed v2 header");
    };
    if h.len() != buf.len() {
        return Step::Invalid("malformed v2 header");
    }
    if h.command == ppp::v2::Command::Local {
        return Step::Done(None);
    }
    match h.addresses {
        ppp::v2::Addresses::IPv4(a) => {
            Step::Done(Some(SocketAddr::from((a.source_address, a.source_port))))
        }
        ppp::v2::Addresses::IPv6(a) => {
            Step::Done(Some(SocketAddr::from((a.source_address, a.source_port))))
        }
        // A stream proxied for a Unix socket or an unspecified family: the
        // front end has no client address to give.
        ppp::v2::Addresses::Unix(_) | ppp::v2::Addresses::Unspecified => Step::Done(None),
    }
}

/// Why a trusted front end's header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeaderError {
    #[error("no complete PROXY protocol header within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Invalid(&'static str),
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one header from `stream` (exactly its bytes) within `limit`.
pub async fn read_header<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    limit: Duration,
) -> Result<Option<SocketAddr>, HeaderError> {
    let read = async {
        let mut buf = Vec::with_capacity(64);
        loop {
            match next_read(&buf) {
                Step::Done(client) => return Ok(client),
                Step::Invalid(why) => return Err(HeaderError::Invalid(why)),
                Step::Read(n) => {
                    let at = buf.len();
                    buf.resize(at + n, 0);
                    stream.read_exact(&mut buf[at..]).await?;
                }
            }
        }
    };
    tokio::time::timeout(limit, read)
        .await
        .map_err(|_| HeaderError::Timeout(limit))?
}

/// `[proxy_protocol]`: the front ends whose connections carry a header.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyProtocolConfig {
    /// Socket peers that must send a header (an empty list: the PROXY
    /// protocol is off).
    pub trusted: Vec<IpNet>,
    /// How long a trusted front end may take to send its header.
    pub header_timeout: Duration,
    /// Announce each fronted connection's client to the mask host with a
    /// header of this version (`None`: send nothing, the default).
    pub mask: Option<Version>,
}

/// A PROXY protocol version to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

/// A fronted connection's client, to announce to the mask host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announce {
    pub version: Version,
    /// The client (behind a trusted front end, the one it named).
    pub client: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
}

impl Announce {
    /// The header's bytes.
    pub fn header(&self) -> Vec<u8> {
        match self.version {
            Version::V1 => v1_header(self.client, self.local),
            Version::V2 => v2_header(self.client, self.local),
        }
    }
}

/// At most this many trusted networks (a list, searched per connection).
pub const MAX_TRUSTED: usize = 256;

/// `[proxy_protocol]` as written.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProxyProtocol {
    /// Front ends (addresses or CIDR networks) whose connections carry a header.
    pub trusted: Option<Vec<String>>,
    #[serde(default, with = "humantime_serde")]
    pub header_timeout: Option<Duration>,
    /// `off`, `v1` or `v2`: announce fronted clients to the mask host.
    pub mask: Option<String>,
}

impl ProxyProtocolConfig {
    /// Checks `[proxy_protocol]`; an error names the key and what is wrong.
    pub fn from_raw(raw: RawProxyProtocol) -> Result<Self, (String, String)> {
        let list = raw.trusted.unwrap_or_default();
        if list.len() > MAX_TRUSTED {
            return Err((
                "proxy_protocol.trusted".into(),
                format!("at most {MAX_TRUSTED} entries"),
            ));
        }
        let mut trusted = Vec::with_capacity(list.len());
        for (i, t) in list.iter().enumerate() {
            let net = t
                .parse::<IpNet>()
                .or_else(|_| t.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    (
                        format!("proxy_protocol.trusted[{i}]"),
                        format!("`{t}` is not an IP address or CIDR network"),
                    )
                })?;
            trusted.push(match net {
                IpNet::V6(v6) if v6.addr().to_ipv4_mapped().is_some() => {
                    return Err((
                        format!("proxy_protocol.trusted[{i}]"),
                        format!("`{t}`: write IPv4 networks in IPv4 form"),
                    ))
                }
                n => n.trunc(),
            });
        }
        let header_timeout = raw.header_timeout.unwrap_or(Duration::from_secs(5));
        if header_timeout.is_zero() || header_timeout > Duration::from_secs(60) {
            return Err((
                "proxy_protocol.header_timeout".into(),
                "use a duration from 1ms to 60s".into(),
            ));
        }
        let mask = match raw.mask.as_deref() {
            None | Some("off") => None,
            Some("v1") => Some(Version::V1),
            Some("v2") => Some(Version::V2),
            Some(o) => {
                return Err((
                    "proxy_protocol.mask".into(),
                    format!("`{o}`: use off, v1 or v2"),
                ))
            }
        };
        Ok(Self {
            trusted,
            header_timeout,
            mask,
        })
    }

    /// Whether any front end is trusted (the PROXY protocol is on).
    pub fn enabled(&self) -> bool {
        !self.trusted.is_empty()
    }
}

impl ProxyProtocolConfig {
    /// Whether connections from `ip` carry a header.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|n| n.contains(&ip))
    }
}

/// An IPv4-mapped IPv6 address (a dual-stack listener's view of an IPv4
/// peer) as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A v2 header (`PROXY`, TCP) saying `client` connected to `local`: what a
/// front end sends, and what mtgate sends ahead of a fronted connection when
/// the mask host wants to see the client.
pub fn v2_header(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (client, local) = match (canonical_addr(client), canonical_addr(local)) {
        (c @ SocketAddr::V4(_), l @ SocketAddr::V4(_)) => (c, l),
        (c @ SocketAddr::V6(_), l @ SocketAddr::V6(_)) => (c, l),
        // Mixed families: both as IPv6 (an IPv4 one mapped).
        (c, l) => (as_v6(c), as_v6(l)),
    };
    let addresses: ppp::v2::Addresses = (client, local).into();
    ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        addresses,
    )
    .build()
    .unwrap_or_default()
}

/// A v1 header (`PROXY TCP4|TCP6 …\r\n`) saying `client` connected to `local`.
pub fn v1_header(client: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let (client, local) = match (canonical_addr(client), canonical_addr(local)) {
        (c @ SocketAddr::V4(_), l @ SocketAddr::V4(_)) => (c, l),
        (c, l) => (as_v6(c), as_v6(l)),
    };
    let (proto, ca, la) = match (client, local) {
        (SocketAddr::V4(c), SocketAddr::V4(l)) => ("TCP4", c.ip().to_string(), l.ip().to_string()),
        (c, l) => ("TCP6", c.ip().to_string(), l.ip().to_string()),
    };
    format!(
        "PROXY {proto} {ca} {la} {} {}\r\n",
        client.port(),
        local.port()
    )
    .into_bytes()
}

fn canonical_addr(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(a.ip()), a.port())
}

fn as_v6(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V4(v4) => SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port()),
        v6 => v6,
    }
}

#[cfg(test)]
mod tests;
