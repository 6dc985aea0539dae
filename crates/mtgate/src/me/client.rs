//! One client in ME mode (PROTOCOL §7.7, §7.10): cut the client's stream
//! into MTProto packets (after TLS records and obfuscated2), send each as an
//! RPC_PROXY_REQ carrying the ad tag, and write the ME's answers and
//! quick-acks back in the client's transport, obfuscated2-encrypted and (for
//! FakeTLS) in `17 03 03` records of at most 16 384 bytes.

use super::mux::{Bound, Down, MeConn, Up};
use crate::events::CloseReason;
use crate::policy::engine::Metered;
use crate::policy::engine::{meter, throttle};
use crate::policy::users::Dir;
use crate::pool::PooledBuf;
use crate::relay::Traffic;
use mtgate_crypto::AesCtr;
use mtgate_proto::faketls::{app_record_header, RecordStripper, MAX_RECORD_PAYLOAD};
use mtgate_proto::me::msg::{check_client_packet, flags, req_flags, ProxyReq, MAX_CLIENT_PACKET};
use mtgate_proto::me::reframe;
use mtgate_proto::obfs2::{CipherPair, ProtoTag};
use mtgate_proto::transport::{self, Decoded};
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Bytes written to the client per batch of answers.
const DOWN_BATCH: usize = 256 << 10;
/// Buffer capacity kept by an idle client.
const IDLE_KEEP: usize = 16 << 10;
/// A frame may carry up to 15 padding bytes on top of the packet limit.
const MAX_CLIENT_FRAME: usize = MAX_CLIENT_PACKET + 16;

/// The client side of an accepted connection, as the handshake left it.
pub struct MeClient {
    pub stream: TcpStream,
    /// `dec` at stream offset 64, `enc` at 0.
    pub ciphers: CipherPair,
    /// `Some` for FakeTLS clients.
    pub tls: Option<RecordStripper>,
    /// Stream bytes that came with the handshake (TLS-stripped, still encrypted).
    pub early: Vec<u8>,
    pub tag: ProtoTag,
    /// The promotion tag for this user, if any.
    pub ad_tag: Option<[u8; 16]>,
    /// The client's address.
    pub peer: SocketAddr,
    /// The proxy's address of this connection, as the client sees it (after NAT).
    pub local: SocketAddr,
}

/// Last activity in either direction, for the idle timeout.
struct Clock {
    start: Instant,
    last_ms: AtomicU64,
}

impl Clock {
    fn touch(&self) {
        self.last_ms
            .store(self.start.elapsed().as_millis() as u64, Relaxed);
    }
    fn deadline(&self, idle: Duration) -> tokio::time::Instant {
        let last = Duration::from_millis(self.last_ms.load(Relaxed));
        tokio::time::Instant::from_std(self.start + last + idle)
    }
}

/// Serves one client over its bound ME connection until either side ends it.
pub async fn serve_client(
    mut bound: Bound,
    client: MeClient,
    idle: Duration,
    traffic: &Traffic,
    mut shutdown: crate::stop::Stop,
    lease: Option<&Metered>,
) -> CloseReason {
    let clock = Clock {
        start: Instant::now(),
        last_ms: AtomicU64::new(0),
    };
    let (rd, wr) = client.stream.into_split();
    let CipherPair { dec, enc } = client.ciphers;
    let is_tls = client.tls.is_some();
    let up = Upstream {
        dec,
        tls: client.tls,
        tag: client.tag,
        conn: &bound.conn,
        conn_id: bound.conn_id,
        peer: client.peer,
        local: client.local,
        ad_tag: client.ad_tag,
        pending: Vec::new(),
        dropped: false,
        traffic,
        clock: &clock,
        lease,
    }
    .run(rd, client.early);
    let down = Downstream {
        conn: &bound.conn,
        enc,
        tls: is_tls,
        tag: client.tag,
        queued: &bound.queued,
        traffic,
        clock: &clock,
        lease,
    }
    .run(wr, &mut bound.down);
    tokio::pin!(up, down);
    loop {
        tokio::select! {
            r = &mut up => return r.err().unwrap_or(CloseReason::ClientClosed),
            r = &mut down => return r.err().unwrap_or(CloseReason::UpstreamClosed),
            _ = tokio::time::sleep_until(clock.deadline(idle)) => {
                if tokio::time::Instant::now() >= clock.deadline(idle) {
                    return CloseReason::IdleTimeout;
                }
            }
            r = shutdown.wait() => return r,
        }
    }
}

/// Client → ME.
struct Upstream<'a> {
    dec: AesCtr,
    tls: Option<RecordStripper>,
    tag: ProtoTag,
    conn: &'a MeConn,
    conn_id: u64,
    peer: SocketAddr,
    local: SocketAddr,
    ad_tag: Option<[u8; 16]>,
    /// Decrypted client bytes not yet cut into packets (at most one frame).
    pending: Vec<u8>,
    /// A packet of this client was dropped (flag DROPPED from then on).
    dropped: bool,
    traffic: &'a Traffic,
    clock: &'a Clock,
    /// The user's lease: quota and bandwidth (see `policy::engine::meter`).
    lease: Option<&'a Metered>,
}

impl Upstream<'_> {
    /// Ok on the client's EOF.
    async fn run(mut self, rd: OwnedReadHalf, mut early: Vec<u8>) -> Result<(), CloseReason> {
        if !early.is_empty() {
            if let Some(l) = self.lease {
                if let Some(wait) = meter(l, Dir::Up, early.len())? {
                    throttle(wait).await;
                }
            }
            self.dec.apply(&mut early);
            self.traffic.up.fetch_add(early.len() as u64, Relaxed);
            self.pending = early;
            self.forward().await?;
        }
        loop {
            // Like the relay: a pooled buffer only while bytes are in flight.
            rd.readable().await.map_err(|_| CloseReason::ClientError)?;
            let mut buf = PooledBuf::take();
            loop {
                let n = match rd.try_read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => return Err(CloseReason::ClientError),
                };
                self.clock.touch();
                let n = match &mut self.tls {
                    Some(t) => t
                        .strip_in_place(&mut buf[..n])
                        .map_err(|_| CloseReason::ClientProtocol)?,
                    None => n,
                };
                if let Some(l) = self.lease {
                    if let Some(wait) = meter(l, Dir::Up, n)? {
                        throttle(wait).await;
                    }
                }
                let data = &mut buf[..n];
                self.dec.apply(data);
                self.pending.extend_from_slice(data);
                self.traffic.up.fetch_add(n as u64, Relaxed);
                self.forward().await?;
            }
            drop(buf);
            if self.pending.is_empty() && self.pending.capacity() > IDLE_KEEP {
                self.pending = Vec::new();
            }
        }
    }

    /// Sends every whole packet in `pending` as an RPC_PROXY_REQ.
    async fn forward(&mut self) -> Result<(), CloseReason> {
        let mut at = 0;
        let res = loop {
            let f = match transport::decode(self.tag, &self.pending[at..], MAX_CLIENT_FRAME) {
                Ok(Decoded::Frame(f)) => f,
                Ok(Decoded::NeedMore(_)) => break Ok(()),
                Err(_) => break Err(CloseReason::ClientProtocol),
            };
            let pkt = &self.pending[at + f.start..at + f.end];
            at += f.consumed;
            if let Err(e) = check_client_packet(pkt) {
                // The official proxy drops such packets and flags the client.
                tracing::debug!(conn_id = self.conn_id, error = %e, "client packet dropped");
                self.dropped = true;
                continue;
            }
            let mut fl = req_flags(self.tag, pkt, self.ad_tag.is_some(), f.quick_ack);
            if self.dropped {
                fl |= flags::DROPPED;
            }
            let mut body = self.conn.take_buf();
            body.reserve(96 + pkt.len());
            ProxyReq {
                flags: fl,
                conn_id: self.conn_id,
                client: self.peer,
                proxy: self.local,
                ad_tag: self.ad_tag,
                payload: pkt,
            }
            .encode(&mut body);
            if self.conn.send(Up::Req(body)).await.is_err() {
                break Err(CloseReason::UpstreamError);
            }
        };
        self.pending.drain(..at);
        res
    }
}

/// ME → client.
struct Downstream<'a> {
    conn: &'a MeConn,
    enc: AesCtr,
    tls: bool,
    tag: ProtoTag,
    queued: &'a AtomicUsize,
    traffic: &'a Traffic,
    clock: &'a Clock,
    lease: Option<&'a Metered>,
}

impl Downstream<'_> {
    /// Ok when the ME side closed this client (CLOSE_EXT or the link was lost).
    async fn run(
        mut self,
        mut wr: OwnedWriteHalf,
        down: &mut mpsc::Receiver<Down>,
    ) -> Result<(), CloseReason> {
        let (mut plain, mut wire) = (Vec::new(), Vec::new());
        while let Some(first) = down.recv().await {
            let mut next = Some(first);
            let mut took = 0;
            while let Some(d) = next.take() {
                self.frame(d, &mut plain, &mut took);
                if plain.len() < DOWN_BATCH {
                    next = down.try_recv().ok();
                }
            }
            self.queued.fetch_sub(took, Relaxed);
            if let Some(l) = self.lease {
                if let Some(wait) = meter(l, Dir::Down, plain.len())? {
                    throttle(wait).await;
                }
            }
            self.enc.apply(&mut plain);
            let out = if self.tls {
                wire.clear();
                for rec in plain.chunks(MAX_RECORD_PAYLOAD) {
                    wire.extend_from_slice(&app_record_header(rec.len()));
                    wire.extend_from_slice(rec);
                }
                &wire
            } else {
                &plain
            };
            wr.write_all(out)
                .await
                .map_err(|_| CloseReason::ClientError)?;
            self.traffic.down.fetch_add(plain.len() as u64, Relaxed);
            self.clock.touch();
            plain.clear();
            if down.is_empty() && plain.capacity() > IDLE_KEEP {
                // Nothing more queued: an idle client holds no large buffers.
                (plain, wire) = (Vec::new(), Vec::new());
            }
        }
        Ok(())
    }

    fn frame(&self, d: Down, plain: &mut Vec<u8>, took: &mut usize) {
        match d {
            Down::Data(data) => {
                *took += data.len();
                let mut pad = [0u8; reframe::MAX_ANSWER_PAD];
                let n = if self.tag == ProtoTag::Padded {
                    mtgate_crypto::random_range(0, reframe::MAX_ANSWER_PAD as u32) as usize
                } else {
                    0
                };
                mtgate_crypto::fill_random(&mut pad[..n]);
                if let Err(e) = reframe::answer(self.tag, &data, &pad[..n], plain) {
                    tracing::debug!(error = %e, len = data.len(), "ME answer cannot be framed for this client; dropped");
                }
                self.conn.give_buf(data);
            }
            Down::Ack(confirm) => {
                *took += 4;
                reframe::quick_ack(self.tag, confirm, &[], plain);
            }
        }
    }
}
