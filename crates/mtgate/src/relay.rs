//! The relay hot path: both directions re-encrypted in place between the
//! client's and the DC's ciphers.
//!
//! Per direction: wait for readiness, take a pooled buffer, read, (strip TLS
//! records), decrypt with one key and encrypt with the other in place, write,
//! repeat until the socket would block, then give the buffer back. Nothing is
//! allocated per packet; idle connections hold no buffer. Half-close is
//! forwarded (a FIN from one side becomes a FIN to the other) and the first
//! thing that ends the session becomes its one [`CloseReason`].

use crate::events::CloseReason;
use crate::policy::engine::Metered;
use crate::policy::engine::{meter, throttle};
use crate::policy::users::Dir;
use crate::pool::{PooledBuf, RECORDS_PER_BUF};
use mtgate_crypto::AesCtr;
use mtgate_proto::faketls::{
    app_record_header, RecordStripper, MAX_RECORD_PAYLOAD, RECORD_HEADER_LEN,
};
use mtgate_proto::obfs2::CipherPair;
use std::io::ErrorKind;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// What the relay needs to know about the client side.
pub struct ClientSide {
    pub stream: TcpStream,
    pub ciphers: CipherPair,
    /// `Some` for FakeTLS clients: strips records inbound, adds them outbound.
    pub tls: Option<RecordStripper>,
    /// Stream bytes that arrived with the handshake (TLS-stripped, still encrypted).
    pub early: Vec<u8>,
}

/// The DC side: a connected stream whose header has been sent.
pub struct UpstreamSide {
    pub stream: TcpStream,
    pub ciphers: CipherPair,
}

/// Byte counters of one session, readable while it runs.
#[derive(Debug, Default)]
pub struct Traffic {
    pub up: AtomicU64,
    pub down: AtomicU64,
    last_ms: AtomicU64,
}

impl Traffic {
    fn touch(&self, start: Instant) {
        self.last_ms
            .store(start.elapsed().as_millis() as u64, Relaxed);
    }
}

/// The four ciphers and the record stripper, boxed once per session so an idle
/// session's future holds a pointer, not ~4 KB of key schedules (async fns keep
/// their arguments for their whole life, so passing these by value would store
/// them twice).
struct Keys {
    c_dec: AesCtr,
    c_enc: AesCtr,
    u_dec: AesCtr,
    u_enc: AesCtr,
    tls: Option<RecordStripper>,
    /// Client bytes that came with the handshake (sent first, then freed).
    early: Vec<u8>,
}

/// Runs the relay until one side ends it; returns the close reason.
pub fn run<'a>(
    client: ClientSide,
    upstream: UpstreamSide,
    idle: Duration,
    traffic: &'a Traffic,
    shutdown: crate::stop::Stop,
    lease: Option<&'a Metered>,
) -> impl std::future::Future<Output = CloseReason> + Send + 'a {
    let keys = Box::new(Keys {
        c_dec: client.ciphers.dec,
        c_enc: client.ciphers.enc,
        u_dec: upstream.ciphers.dec,
        u_enc: upstream.ciphers.enc,
        tls: client.tls,
        early: client.early,
    });
    run_boxed(
        client.stream,
        upstream.stream,
        keys,
        idle,
        traffic,
        shutdown,
        lease,
    )
}

async fn run_boxed(
    client: TcpStream,
    upstream: TcpStream,
    mut keys: Box<Keys>,
    idle: Duration,
    traffic: &Traffic,
    mut shutdown: crate::stop::Stop,
    lease: Option<&Metered>,
) -> CloseReason {
    let start = Instant::now();
    traffic.touch(start);
    let (c_rd, mut c_wr) = client.into_split();
    let (u_rd, mut u_wr) = upstream.into_split();
    let Keys {
        c_dec,
        c_enc,
        u_dec,
        u_enc,
        tls,
        early,
    } = &mut *keys;
    let early = std::mem::take(early);
    let is_tls = tls.is_some();

    if !early.is_empty() {
        let mut early = early;
        if let Some(l) = lease {
            match meter(l, Dir::Up, early.len()) {
                Err(r) => return r,
                Ok(Some(wait)) => throttle(wait).await,
                Ok(None) => {}
            }
        }
        c_dec.apply(&mut early);
        u_enc.apply(&mut early);
        if u_wr.write_all(&early).await.is_err() {
            return CloseReason::UpstreamError;
        }
        traffic.up.fetch_add(early.len() as u64, Relaxed);
    }

    let up = pump_up(c_rd, &mut u_wr, c_dec, u_enc, tls, traffic, start, lease);
    let down = pump_down(u_rd, &mut c_wr, u_dec, c_enc, is_tls, traffic, start, lease);
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    let mut first: Option<CloseReason> = None;
    loop {
        let last = Duration::from_millis(traffic.last_ms.load(Relaxed));
        let deadline = tokio::time::Instant::from_std(start + last + idle);
        tokio::select! {
            r = &mut up, if !up_done => match r {
                Ok(()) => {
                    up_done = true;
                    first.get_or_insert(CloseReason::ClientClosed);
                    if down_done { break; }
                }
                Err(reason) => return reason,
            },
            r = &mut down, if !down_done => match r {
                Ok(()) => {
                    down_done = true;
                    first.get_or_insert(CloseReason::UpstreamClosed);
                    if up_done { break; }
                }
                Err(reason) => return reason,
            },
            _ = tokio::time::sleep_until(deadline) => {
                let last = Duration::from_millis(traffic.last_ms.load(Relaxed));
                if start.elapsed() >= last + idle {
                    return CloseReason::IdleTimeout;
                }
            }
            r = shutdown.wait() => return r,
        }
    }
    first.unwrap_or(CloseReason::ClientClosed)
}

/// Reads once from `rd`. A short read (fewer bytes than `buf` holds) means
/// the socket's receive queue was emptied, so the read readiness is cleared
/// right here: the next `try_read` answers `WouldBlock` from tokio's readiness
/// state, without the `recv` syscall that would only have returned EAGAIN.
/// (Tokio keeps the readiness if a new edge arrived meanwhile, so no wakeup
/// is lost.)
fn read_some(rd: &OwnedReadHalf, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let stream: &TcpStream = rd.as_ref();
    let cap = buf.len();
    let mut got = None;
    let r = stream.try_io(tokio::io::Interest::READABLE, || {
        let sock = socket2::SockRef::from(stream);
        let n = (&*sock).read(buf)?;
        got = Some(n);
        if n > 0 && n < cap {
            Err(ErrorKind::WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match (r, got) {
        (Ok(n), _) => Ok(n),
        (Err(e), Some(n)) if e.kind() == ErrorKind::WouldBlock => Ok(n),
        (Err(e), _) => Err(e),
    }
}

/// Client → DC.
#[allow(clippy::too_many_arguments)]
async fn pump_up(
    rd: OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    dec: &mut AesCtr,
    enc: &mut AesCtr,
    tls: &mut Option<RecordStripper>,
    traffic: &Traffic,
    start: Instant,
    lease: Option<&Metered>,
) -> Result<(), CloseReason> {
    loop {
        rd.readable().await.map_err(|_| CloseReason::ClientError)?;
        let mut buf = PooledBuf::take();
        loop {
            let n = match read_some(&rd, &mut buf) {
                Ok(0) => {
                    let _ = wr.shutdown().await;
                    return Ok(());
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Err(CloseReason::ClientError),
            };
            let n = match tls {
                Some(t) => t
                    .strip_in_place(&mut buf[..n])
                    .map_err(|_| CloseReason::ClientProtocol)?,
                None => n,
            };
            if n == 0 {
                continue;
            }
            if let Some(l) = lease {
                if let Some(wait) = meter(l, Dir::Up, n)? {
                    throttle(wait).await;
                }
            }
            let data = &mut buf[..n];
            dec.apply(data);
            enc.apply(data);
            wr.write_all(data)
                .await
                .map_err(|_| CloseReason::UpstreamError)?;
            traffic.up.fetch_add(n as u64, Relaxed);
            traffic.touch(start);
        }
    }
}

/// DC → client (wrapped in TLS application-data records for FakeTLS clients).
///
/// For FakeTLS one read fills up to [`RECORDS_PER_BUF`] records' worth of payload
/// at an offset that leaves room for the headers; the payload is ciphered in one
/// pass and then slid forward record by record (each destination lies before its
/// source), so several records leave in one write.
#[allow(clippy::too_many_arguments)]
async fn pump_down(
    rd: OwnedReadHalf,
    wr: &mut OwnedWriteHalf,
    dec: &mut AesCtr,
    enc: &mut AesCtr,
    tls: bool,
    traffic: &Traffic,
    start: Instant,
    lease: Option<&Metered>,
) -> Result<(), CloseReason> {
    const REC: usize = MAX_RECORD_PAYLOAD;
    let off = if tls {
        RECORDS_PER_BUF * RECORD_HEADER_LEN
    } else {
        0
    };
    loop {
        rd.readable()
            .await
            .map_err(|_| CloseReason::UpstreamError)?;
        let mut buf = PooledBuf::take();
        let cap = if tls {
            off + RECORDS_PER_BUF * REC
        } else {
            buf.len()
        };
        loop {
            let n = match read_some(&rd, &mut buf[off..cap]) {
                Ok(0) => {
                    let _ = wr.shutdown().await;
                    return Ok(());
                }
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return Err(CloseReason::UpstreamError),
            };
            if let Some(l) = lease {
                if let Some(wait) = meter(l, Dir::Down, n)? {
                    throttle(wait).await;
                }
            }
            let data = &mut buf[off..off + n];
            dec.apply(data);
            enc.apply(data);
            let total = if tls {
                frame_records(&mut buf, off, n)
            } else {
                n
            };
            wr.write_all(&buf[..total])
                .await
                .map_err(|_| CloseReason::ClientError)?;
            traffic.down.fetch_add(n as u64, Relaxed);
            traffic.touch(start);
        }
    }
}

/// Turns `n` payload bytes at `buf[off..]` into consecutive TLS records starting
/// at `buf[0]`; returns the framed length. Needs `off >= RECORDS_PER_BUF * 5` and
/// `n <= RECORDS_PER_BUF * MAX_RECORD_PAYLOAD`.
fn frame_records(buf: &mut [u8], off: usize, n: usize) -> usize {
    let mut src = off;
    let mut dst = 0;
    let mut left = n;
    while left > 0 {
        let len = left.min(MAX_RECORD_PAYLOAD);
        buf[dst..dst + RECORD_HEADER_LEN].copy_from_slice(&app_record_header(len));
        buf.copy_within(src..src + len, dst + RECORD_HEADER_LEN);
        dst += RECORD_HEADER_LEN + len;
        src += len;
        left -= len;
    }
    dst
}

#[cfg(test)]
mod tests {
    use super::*;
    use mtgate_proto::faketls::RecordStripper;

    #[test]
    fn records_are_framed_in_place() {
        for n in [
            1,
            100,
            MAX_RECORD_PAYLOAD,
            MAX_RECORD_PAYLOAD + 1,
            3 * MAX_RECORD_PAYLOAD + 7,
            RECORDS_PER_BUF * MAX_RECORD_PAYLOAD,
        ] {
            let off = RECORDS_PER_BUF * RECORD_HEADER_LEN;
            let mut buf = vec![0u8; crate::pool::BUF_SIZE];
            let payload: Vec<u8> = (0..n).map(|i| (i * 7 + i / 251) as u8).collect();
            buf[off..off + n].copy_from_slice(&payload);
            let total = frame_records(&mut buf, off, n);
            assert_eq!(
                total,
                n + n.div_ceil(MAX_RECORD_PAYLOAD) * RECORD_HEADER_LEN
            );
            let mut framed = buf[..total].to_vec();
            let got = RecordStripper::new().strip_in_place(&mut framed).unwrap();
            assert_eq!(&framed[..got], &payload[..]);
        }
    }
}
