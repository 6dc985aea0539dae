//! Opening one ME link: TCP connect (with keepalive), RPC_NONCE, key
//! derivation with our public (NAT) address and the real local port, and
//! RPC_HANDSHAKE — all under one deadline (PROTOCOL §7.4–7.6).

use mtgate_proto::me::conf::{MeAddr, MeHost};
use mtgate_proto::me::frame::{RpcReader, RpcWriter, DEFAULT_MAX_FRAME_LEN, MIN_FRAME_LEN};
use mtgate_proto::me::handshake::{HandshakeMsg, Nonce, ProcessId, FLAG_CRC32C};
use mtgate_proto::me::{kdf, Checksum, FrameError, HandshakeError, KdfError, MeRx, MeTx};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest plaintext set-up frame accepted from the ME.
const MAX_SETUP_FRAME: usize = 4096;
/// The official proxy's TCP keepalive on ME sockets: idle 40 s, interval 40 s, 5 probes.
const KEEPALIVE: Duration = Duration::from_secs(40);

/// Why a link could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("resolve: {0}")]
    Resolve(String),
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("set-up timed out (the middle-end or the path to it stalls)")]
    Timeout,
    #[error("ME closed the connection during set-up (wrong proxy-secret, NAT address (me.nat_ip, server.public_host) or clock?)")]
    Closed,
    #[error("bad frame during set-up: {0} (a wrong proxy-secret or NAT address looks like this)")]
    Frame(#[from] FrameError),
    #[error("handshake refused: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("key derivation: {0}")]
    Kdf(#[from] KdfError),
}

impl LinkError {
    /// Whether the attempt failed before a TCP connection stood (else it
    /// failed in the nonce/key/handshake exchange).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            LinkError::Resolve(_) | LinkError::Connect(_) | LinkError::ConnectTimeout
        )
    }
}

/// What a link set-up needs to know.
pub struct LinkParams<'a> {
    pub secret: &'a [u8],
    /// Our public address for the key derivation (per family); else the local one.
    pub nat_ip: Option<IpAddr>,
    /// `server.public_host`: learned as the key address when `nat_ip` is unset
    /// and the local address is internal (see [`key_ip`]).
    pub public_host: Option<&'a str>,
    pub offer_crc32c: bool,
    pub timeout: Duration,
    pub pid: u16,
    pub start_time: u32,
}

/// A ready link.
pub struct Link {
    pub stream: TcpStream,
    pub tx: MeTx,
    pub rx: MeRx,
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// Our address as it went into the keys (see [`key_ip`]).
    pub key_ip: IpAddr,
    pub checksum: Checksum,
}

fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as u32)
        .unwrap_or(0)
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// `nat` when it is of `local`'s family, else `local` itself.
pub fn public_ip(local: IpAddr, nat: Option<IpAddr>) -> IpAddr {
    let local = unmap(local);
    match nat.map(unmap) {
        Some(n) if n.is_ipv4() == local.is_ipv4() => n,
        _ => local,
    }
}

fn v4_host_order(ip: IpAddr) -> u32 {
    match unmap(ip) {
        IpAddr::V4(v4) => u32::from(v4),
        IpAddr::V6(_) => 0,
    }
}

async fn resolve(addr: &MeAddr) -> Result<SocketAddr, LinkError> {
    match &addr.host {
        MeHost::Ip(ip) => Ok(SocketAddr::new(*ip, addr.port)),
        MeHost::Name(n) => tokio::net::lookup_host((n.as_str(), addr.port))
            .await
            .map_err(|e| LinkError::Resolve(e.to_string()))?
            .next()
            .ok_or_else(|| LinkError::Resolve(format!("{n}: no address"))),
    }
}

fn set_keepalive(stream: &TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE)
        .with_interval(KEEPALIVE)
        .with_retries(5);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "cannot set TCP keepalive on an ME socket");
    }
}

/// Loopback, private (RFC 1918), shared (100.64/10, carrier NAT), link-local
/// or unique-local: an address the middle-end cannot be seeing us from.
pub fn is_internal(ip: IpAddr) -> bool {
    match unmap(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (s & 0xfe00) == 0xfc00
                || (s & 0xffc0) == 0xfe80
        }
    }
}

/// The address of ours that goes into the key derivation (PROTOCOL §7.5):
/// `nat_ip` when set (and of `local`'s family); else, when `local` is
/// internal ([`is_internal`]) and `public_host` is given, that host: an IP
/// literal as is, a name resolved (its first address of `local`'s family);
/// else `local` itself. A name that does not resolve leaves `local`.
pub async fn key_ip(local: IpAddr, nat: Option<IpAddr>, public_host: Option<&str>) -> IpAddr {
    let local = unmap(local);
    if nat.is_some() {
        return public_ip(local, nat);
    }
    let Some(host) = public_host.map(str::trim).filter(|h| !h.is_empty()) else {
        return local;
    };
    if !is_internal(local) {
        return local;
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return public_ip(local, Some(ip));
    }
    match tokio::net::lookup_host((host, 0)).await {
        Ok(addrs) => {
            let found = addrs
                .map(|a| unmap(a.ip()))
                .find(|ip| ip.is_ipv4() == local.is_ipv4());
            found.unwrap_or(local)
        }
        Err(e) => {
            tracing::debug!(host, error = %e, "cannot resolve server.public_host for the ME keys; using the local address");
            local
        }
    }
}

/// Connects to `addr` and runs the whole set-up within `p.timeout`.
pub async fn open(addr: &MeAddr, p: &LinkParams<'_>) -> Result<Link, LinkError> {
    let deadline = tokio::time::Instant::now() + p.timeout;
    let connect = async {
        let target = resolve(addr).await?;
        TcpStream::connect(target).await.map_err(LinkError::Connect)
    };
    let stream = tokio::time::timeout_at(deadline, connect)
        .await
        .map_err(|_| LinkError::ConnectTimeout)??;
    tokio::time::timeout_at(deadline, set_up(stream, p))
        .await
        .map_err(|_| LinkError::Timeout)?
}

async fn set_up(mut stream: TcpStream, p: &LinkParams<'_>) -> Result<Link, LinkError> {
    let _ = stream.set_nodelay(true);
    set_keepalive(&stream);
    let local = stream.local_addr()?;
    let peer = stream.peer_addr()?;

    // RPC_NONCE: 44 bytes, plaintext, no filler (PROTOCOL §7.3).
    let mut nonce = [0u8; 16];
    mtgate_crypto::fill_random(&mut nonce);
    let ours = Nonce::ours(p.secret, unix_now(), nonce);
    let (mut w, mut r) = (RpcWriter::new(), RpcReader::new(DEFAULT_MAX_FRAME_LEN));
    let mut out = Vec::with_capacity(48);
    w.write(&[&ours.encode()], &mut out)?;
    stream.write_all(&out).await?;

    let mut head = [0u8; 4];
    read_exact(&mut stream, &mut head).await?;
    let len = i32::from_le_bytes(head);
    if len < MIN_FRAME_LEN as i32 || len as usize > MAX_SETUP_FRAME || len % 4 != 0 {
        return Err(FrameError::BadLength(len).into());
    }
    let mut frame = vec![0u8; len as usize];
    frame[..4].copy_from_slice(&head);
    read_exact(&mut stream, &mut frame[4..]).await?;
    let parsed = r.next(&frame)?;
    let body = parsed
        .frame
        .map(|f| &frame[f.body])
        .ok_or(FrameError::BadLength(len))?;
    let theirs = Nonce::parse(body)?;
    theirs.check_answer(&ours, body.len())?;

    let me_ip = key_ip(local.ip(), p.nat_ip, p.public_host).await;
    let keys = kdf::derive(&kdf::KdfInput {
        nonce_server: theirs.nonce,
        nonce_client: nonce,
        client_ts: ours.ts,
        client: SocketAddr::new(me_ip, local.port()),
        server: SocketAddr::new(unmap(peer.ip()), peer.port()),
        secret: p.secret,
    })?;
    let mut tx = MeTx::new(w, &keys.write_key, &keys.write_iv);
    let mut rx = MeRx::new(r, &keys.read_key, &keys.read_iv);

    let peer_v4 = v4_host_order(peer.ip());
    let hs = HandshakeMsg {
        flags: if p.offer_crc32c { FLAG_CRC32C } else { 0 },
        sender_pid: ProcessId {
            ip: v4_host_order(me_ip),
            port: local.port(),
            pid: p.pid,
            utime: p.start_time,
        },
        peer_pid: ProcessId {
            ip: if peer_v4 == 0x7f00_0001 { 0 } else { peer_v4 },
            port: peer.port(),
            pid: 0,
            utime: 0,
        },
    };
    tx.push(&[&hs.encode()])?;
    let sealed = tx.seal();
    stream.write_all(sealed).await?;
    let n = sealed.len();
    tx.consume(n);

    let checksum = loop {
        if let Some((_, body)) = rx.next_frame()? {
            break HandshakeMsg::parse(body)?.check_answer(&hs)?;
        }
        if rx.buffered() > MAX_SETUP_FRAME {
            return Err(FrameError::TooLong(rx.buffered()).into());
        }
        let room = rx.spare(1024);
        let n = stream.read(room).await?;
        if n == 0 {
            return Err(LinkError::Closed);
        }
        rx.commit(n);
    };
    tx.set_checksum(checksum);
    rx.set_checksum(checksum);
    Ok(Link {
        stream,
        tx,
        rx,
        peer,
        local,
        key_ip: me_ip,
        checksum,
    })
}

async fn read_exact(s: &mut TcpStream, buf: &mut [u8]) -> Result<(), LinkError> {
    match s.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(LinkError::Closed),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nat_applies_per_family() {
        let l4: IpAddr = "10.0.0.5".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.0.0.5".parse().unwrap();
        let nat4: IpAddr = "203.0.113.9".parse().unwrap();
        let l6: IpAddr = "2001:db8::5".parse().unwrap();
        assert_eq!(public_ip(l4, Some(nat4)), nat4);
        assert_eq!(public_ip(mapped, Some(nat4)), nat4);
        assert_eq!(public_ip(l6, Some(nat4)), l6);
        assert_eq!(public_ip(mapped, None), l4);
        assert_eq!(v4_host_order(nat4), 0xcb00_7109);
        assert_eq!(v4_host_order(l6), 0);
    }

    #[test]
    fn internal_addresses() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "169.254.1.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_internal(a.parse().unwrap()), "{a}");
        }
        for a in [
            "203.0.113.9",
            "100.128.0.1",
            "172.32.0.1",
            "2001:db8::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_internal(a.parse().unwrap()), "{a}");
        }
    }

    #[tokio::test]
    async fn key_ip_learns_public_host_only_behind_nat() {
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        let public: IpAddr = "203.0.113.9".parse().unwrap();
        let nat: IpAddr = "198.51.100.1".parse().unwrap();
        // Configured NAT wins.
        assert_eq!(key_ip(lo, Some(nat), Some("203.0.113.9")).await, nat);
        // Learned from an IP literal behind NAT.
        assert_eq!(key_ip(lo, None, Some("203.0.113.9")).await, public);
        assert_eq!(key_ip(lo, None, Some("[203.0.113.9]")).await, public);
        // A public local address is used as is.
        assert_eq!(key_ip(public, None, Some("198.51.100.1")).await, public);
        // Other family or nothing: the local address.
        assert_eq!(key_ip(lo, None, Some("2001:db8::1")).await, lo);
        assert_eq!(key_ip(lo, None, None).await, lo);
        // A name is resolved (localhost is always there).
        assert_eq!(
            key_ip("10.0.0.1".parse().unwrap(), None, Some("localhost")).await,
            lo
        );
        // A name that does not resolve leaves the local address.
        assert_eq!(key_ip(lo, None, Some("no-such-host.invalid")).await, lo);
    }
}
