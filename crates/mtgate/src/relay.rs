//! The relay hot path: both directions re-encrypted in place between the
//! client's and the DC's ciphers.
//!
//! Per direction: wait for readiness, take a pooled buffer, read, (strip TLS
//! records), decrypt with one key and encrypt with the other in place, write,
//! repeat until the socket would block, then give the buffer back. Both
//! directions, the idle timer and the stop signal are polled by one
//! hand-written future, so an idle session is a few hundred bytes. Nothing is
//! allocated per packet; idle connections hold no buffer. Half-close is
//! forwarded (a FIN from one side becomes a FIN to the other) and the first
//! thing that ends the session becomes its one [`CloseReason`].

use crate::events::CloseReason;
use crate::policy::engine::meter;
use crate::policy::engine::Metered;
use crate::policy::users::Dir;
use crate::pool::{Class, PooledBuf, RECORDS_PER_BUF};
use mtgate_crypto::AesCtr;
use mtgate_proto::faketls::{
    app_record_header, RecordStripper, MAX_RECORD_PAYLOAD, RECORD_HEADER_LEN,
};
use mtgate_proto::obfs2::CipherPair;
use std::future::Future;
use std::io::{ErrorKind, IoSlice};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::AsyncWrite;
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
    /// Counts the connection on its target while it lasts (least-connections
    /// balancing only; `None` otherwise).
    pub lease: Option<crate::net::balance::Lease>,
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

/// The four ciphers and the record stripper, boxed once per session: they are
/// How long a relay may go without traffic.
#[derive(Clone, Copy, Debug)]
pub struct Deadlines {
    /// No bytes either way for this long: closed (`server.idle_timeout`).
    pub idle: Duration,
    /// The client spoke and the DC has not said a byte for this long since
    /// the relay began: closed (`upstream.connect_timeout`), so a client
    /// behind a black-holed DC is not left hanging until the idle timeout.
    pub first_answer: Duration,
}

/// the bulk of an idle session's state, and a box keeps them out of the task
/// while the handshake and dial futures (boxed themselves) come and go.
struct Keys {
    c_dec: AesCtr,
    c_enc: AesCtr,
    u_dec: AesCtr,
    u_enc: AesCtr,
    tls: Option<RecordStripper>,
    /// The upstream target's connection count (least-connections balancing),
    /// kept here, in the box the relay allocates anyway: it rounds up to the
    /// same allocation class, so no connection grows for it.
    _target: Option<crate::net::balance::Lease>,
}

/// Runs the relay until one side ends it; returns the close reason.
///
/// The relay is a hand-written future ([`Relay`]) rather than an `async fn`
/// with `select!` over two pump futures: an idle connection then holds only
/// the two streams, the boxed keys, two small pump states, the idle timer and
/// the stop signal (a few hundred bytes), and its wakers live in tokio's
/// per-socket readiness slots, not in intrusive waiter nodes of ours.
///
/// The relay owns the user's `lease` (it meters every chunk) and `hold`,
/// anything else that must live as long as the session (a policy guard).
pub fn run<'a, H: Send + 'a>(
    client: ClientSide,
    upstream: UpstreamSide,
    deadlines: Deadlines,
    traffic: &'a Traffic,
    shutdown: crate::stop::Stop,
    lease: Option<Metered>,
    hold: H,
) -> impl std::future::Future<Output = CloseReason> + Send + 'a {
    let mut keys = Box::new(Keys {
        c_dec: client.ciphers.dec,
        c_enc: client.ciphers.enc,
        u_dec: upstream.ciphers.dec,
        u_enc: upstream.ciphers.enc,
        tls: client.tls,
        _target: upstream.lease,
    });
    let start = Instant::now();
    traffic.touch(start);
    let mut up = Pump::default();
    let mut fail = None;
    // Client bytes that came with the handshake go first: metered, re-ciphered
    // and queued as the up pump's pending write (the handshake caps them far
    // below a pooled buffer; a larger one would be a bug, so it is refused).
    let early = client.early;
    if !early.is_empty() {
        let class = if early.len() <= Class::Small.size() {
            Class::Small
        } else {
            Class::Large
        };
        let mut buf = PooledBuf::take_class(class);
        if early.len() > buf.len() {
            fail = Some(CloseReason::ClientProtocol);
        } else {
            if let Some(l) = &lease {
                match meter(l, Dir::Up, early.len()) {
                    Err(r) => fail = Some(r),
                    Ok(Some(wait)) => up.throttle = Some(Box::pin(tokio::time::sleep(wait))),
                    Ok(None) => {}
                }
            }
            let data = &mut buf[..early.len()];
            data.copy_from_slice(&early);
            keys.c_dec.apply(data);
            keys.u_enc.apply(data);
            up.end = early.len();
            up.payload = early.len();
            up.buf = Some(buf);
        }
    }
    drop(early);
    Relay {
        client: client.stream,
        upstream: upstream.stream,
        keys,
        up,
        down: Pump::default(),
        traffic,
        lease,
        start,
        idle: deadlines.idle,
        answer_ms: u32::try_from(deadlines.first_answer.as_millis()).unwrap_or(u32::MAX),
        fail,
        first: None,
        _hold: hold,
        timer: tokio::time::sleep_until(tokio::time::Instant::from_std(
            start + deadlines.idle.min(deadlines.first_answer),
        )),
        stop: shutdown.into_wait(),
    }
}

/// One direction's state: the pooled buffer while data is in flight, the
/// part of it still to be written, and a bandwidth wait if one applies.
#[derive(Default)]
struct Pump {
    buf: Option<PooledBuf>,
    /// `buf[pos..end]` is still to be written.
    pos: usize,
    end: usize,
    /// Payload bytes in the pending write (counted once it is all written).
    payload: usize,
    /// The pending write is TLS records: headers at `buf[..DOWN_OFF]`,
    /// payload at `buf[DOWN_OFF..]` (see [`record_slices`]); `pos`/`end`
    /// count framed bytes.
    framed: bool,
    /// The reader hit end of stream: forward the FIN once the write is done.
    read_eof: bool,
    /// The FIN was forwarded; this direction is finished.
    done: bool,
    /// Take a large buffer next: the last read filled its buffer (more is
    /// coming), or the last burst outgrew a small one. Connections that
    /// carry small messages stay on small buffers.
    hot: bool,
    /// Bytes read since this burst began (saturating).
    burst: u32,
    /// A bandwidth cap's wait before the pending write (boxed: rare).
    throttle: Option<Pin<Box<tokio::time::Sleep>>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    /// Client → DC.
    Up,
    /// DC → client.
    Down,
}

pin_project_lite::pin_project! {
    /// The relay future; see [`run`].
    struct Relay<'a, S, H> {
        client: TcpStream,
        upstream: TcpStream,
        keys: Box<Keys>,
        up: Pump,
        down: Pump,
        traffic: &'a Traffic,
        lease: Option<Metered>,
        start: Instant,
        idle: Duration,
        // Until the DC's first byte: see `Deadlines::first_answer`.
        answer_ms: u32,
        fail: Option<CloseReason>,
        first: Option<CloseReason>,
        _hold: H,
        #[pin]
        timer: tokio::time::Sleep,
        #[pin]
        stop: S,
    }
}

impl<S: Future<Output = CloseReason>, H> Future for Relay<'_, S, H> {
    type Output = CloseReason;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<CloseReason> {
        let mut this = self.project();
        if let Some(r) = this.fail.take() {
            return Poll::Ready(r);
        }
        if let Poll::Ready(r) = this.stop.poll(cx) {
            return Poll::Ready(r);
        }
        let ctx = Ctx {
            traffic: this.traffic,
            lease: this.lease.as_ref(),
            start: *this.start,
        };
        for way in [Way::Up, Way::Down] {
            let (p, rd, wr, closed) = match way {
                Way::Up => (
                    &mut *this.up,
                    &*this.client,
                    &mut *this.upstream,
                    CloseReason::ClientClosed,
                ),
                Way::Down => (
                    &mut *this.down,
                    &*this.upstream,
                    &mut *this.client,
                    CloseReason::UpstreamClosed,
                ),
            };
            if p.done {
                continue;
            }
            match poll_pump(cx, p, way, rd, wr, this.keys, &ctx) {
                Poll::Ready(Ok(())) => {
                    this.first.get_or_insert(closed);
                }
                Poll::Ready(Err(r)) => return Poll::Ready(r),
                Poll::Pending => {}
            }
        }
        if this.up.done && this.down.done {
            return Poll::Ready(this.first.unwrap_or(CloseReason::ClientClosed));
        }
        // The idle timer is not reset per chunk (the pumps only stamp
        // `traffic`); when it fires it is moved to the last activity + idle.
        while this.timer.as_mut().poll(cx).is_ready() {
            let last = Duration::from_millis(this.traffic.last_ms.load(Relaxed));
            let elapsed = this.start.elapsed();
            if elapsed >= last + *this.idle {
                return Poll::Ready(CloseReason::IdleTimeout);
            }
            let mut at = *this.start + last + *this.idle;
            if this.traffic.down.load(Relaxed) == 0 {
                // Nothing from the DC yet, so every activity was the client's.
                let answer = Duration::from_millis(u64::from(*this.answer_ms));
                if this.traffic.up.load(Relaxed) > 0 {
                    if elapsed >= last + answer {
                        return Poll::Ready(CloseReason::UpstreamSilent);
                    }
                    at = at.min(*this.start + last + answer);
                } else {
                    // The client has not spoken yet: look again later.
                    at = at.min(Instant::now() + answer.max(Duration::from_millis(100)));
                }
            }
            this.timer
                .as_mut()
                .reset(tokio::time::Instant::from_std(at));
        }
        Poll::Pending
    }
}

/// What both pumps share.
struct Ctx<'a> {
    traffic: &'a Traffic,
    lease: Option<&'a Metered>,
    start: Instant,
}

/// Moves one direction forward until it would block (`Pending`, with the
/// waker registered on the socket or timer that blocks), finishes (`Ok`
/// after forwarding the FIN) or fails (`Err` with the reason).
fn poll_pump(
    cx: &mut Context<'_>,
    p: &mut Pump,
    way: Way,
    rd: &TcpStream,
    wr: &mut TcpStream,
    keys: &mut Keys,
    ctx: &Ctx<'_>,
) -> Poll<Result<(), CloseReason>> {
    let (rd_err, wr_err) = match way {
        Way::Up => (CloseReason::ClientError, CloseReason::UpstreamError),
        Way::Down => (CloseReason::UpstreamError, CloseReason::ClientError),
    };
    loop {
        if let Some(t) = p.throttle.as_mut() {
            ready!(t.as_mut().poll(cx));
            p.throttle = None;
        }
        if p.pos < p.end {
            let Some(buf) = p.buf.as_ref() else {
                return Poll::Ready(Err(wr_err));
            };
            let wrote = if p.framed {
                // TLS records: headers at the front, payload where it was read;
                // one `writev`, no sliding of the payload.
                let mut slices = [IoSlice::new(&[]); 2 * RECORDS_PER_BUF];
                let k = record_slices(buf, p.payload, p.pos, &mut slices);
                Pin::new(&mut *wr).poll_write_vectored(cx, &slices[..k])
            } else {
                Pin::new(&mut *wr).poll_write(cx, &buf[p.pos..p.end])
            };
            match wrote {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(wr_err)),
                Poll::Ready(Ok(n)) => {
                    p.pos += n;
                    if p.pos == p.end {
                        let counter = match way {
                            Way::Up => &ctx.traffic.up,
                            Way::Down => &ctx.traffic.down,
                        };
                        counter.fetch_add(p.payload as u64, Relaxed);
                        ctx.traffic.touch(ctx.start);
                        (p.pos, p.end, p.payload, p.framed) = (0, 0, 0, false);
                        // A burst outgrew the small buffer: swap it for a large one.
                        if p.hot && p.buf.as_ref().is_some_and(|b| b.class() == Class::Small) {
                            p.buf = None;
                        }
                    }
                    continue;
                }
                Poll::Ready(Err(e)) if e.kind() == ErrorKind::Interrupted => continue,
                Poll::Ready(Err(_)) => return Poll::Ready(Err(wr_err)),
                Poll::Pending => return Poll::Pending,
            }
        }
        if p.read_eof {
            // A failed shutdown (the peer is gone) ends this direction too.
            let _ = ready!(Pin::new(&mut *wr).poll_shutdown(cx));
            p.done = true;
            p.buf = None;
            return Poll::Ready(Ok(()));
        }
        if p.buf.is_none() {
            // No buffer is held while waiting: idle connections keep none.
            if ready!(rd.poll_read_ready(cx)).is_err() {
                return Poll::Ready(Err(rd_err));
            }
            let class = if p.hot { Class::Large } else { Class::Small };
            p.buf = Some(PooledBuf::take_class(class));
        }
        let Some(buf) = p.buf.as_mut() else {
            continue;
        };
        let tls = keys.tls.is_some();
        // Down for FakeTLS: read at an offset that leaves room for the record
        // headers, at most RECORDS_PER_BUF records' worth.
        let (lo, hi) = match way {
            Way::Down if tls => (
                DOWN_OFF,
                buf.len()
                    .min(DOWN_OFF + RECORDS_PER_BUF * MAX_RECORD_PAYLOAD),
            ),
            _ => (0, buf.len()),
        };
        let n = match read_some(rd, &mut buf[lo..hi]) {
            Ok(0) => {
                p.read_eof = true;
                p.buf = None;
                continue;
            }
            Ok(n) => {
                p.burst = p.burst.saturating_add(n as u32);
                if n == hi - lo {
                    p.hot = true;
                } else {
                    // A short read drained the socket: the burst is over.
                    p.hot = p.burst as usize > Class::Small.size();
                    p.burst = 0;
                }
                n
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                // Drained: give the buffer back and wait for readiness.
                p.buf = None;
                if p.burst > 0 {
                    p.hot = p.burst as usize > Class::Small.size();
                    p.burst = 0;
                }
                continue;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Poll::Ready(Err(rd_err)),
        };
        let (n, total) = match way {
            Way::Up => {
                let n = match keys.tls.as_mut() {
                    Some(t) => match t.strip_in_place(&mut buf[..n]) {
                        Ok(n) => n,
                        Err(_) => return Poll::Ready(Err(CloseReason::ClientProtocol)),
                    },
                    None => n,
                };
                let data = &mut buf[..n];
                keys.c_dec.apply(data);
                keys.u_enc.apply(data);
                (n, n)
            }
            Way::Down => {
                let data = &mut buf[lo..lo + n];
                keys.u_dec.apply(data);
                keys.c_enc.apply(data);
                let total = if tls { write_record_headers(buf, n) } else { n };
                (n, total)
            }
        };
        if n == 0 {
            continue;
        }
        if let Some(l) = ctx.lease {
            let dir = match way {
                Way::Up => Dir::Up,
                Way::Down => Dir::Down,
            };
            match meter(l, dir, n) {
                Err(r) => return Poll::Ready(Err(r)),
                Ok(Some(wait)) => p.throttle = Some(Box::pin(tokio::time::sleep(wait))),
                Ok(None) => {}
            }
        }
        (p.pos, p.end, p.payload) = (0, total, n);
        p.framed = tls && way == Way::Down;
    }
}

/// Where the down pump reads FakeTLS payload: room for the record headers.
const DOWN_OFF: usize = RECORDS_PER_BUF * RECORD_HEADER_LEN;

/// Reads once from `rd`. A short read (fewer bytes than `buf` holds) means
/// the socket's receive queue was emptied, so the read readiness is cleared
/// right here: the next `try_read` answers `WouldBlock` from tokio's readiness
/// state, without the `recv` syscall that would only have returned EAGAIN.
/// (Tokio keeps the readiness if a new edge arrived meanwhile, so no wakeup
/// is lost.)
fn read_some(stream: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
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

/// Writes the record headers for `n` payload bytes at `buf[DOWN_OFF..]`
/// (records of at most [`MAX_RECORD_PAYLOAD`]) into `buf[..DOWN_OFF]`;
/// returns the framed length. Needs `n <= RECORDS_PER_BUF * MAX_RECORD_PAYLOAD`.
fn write_record_headers(buf: &mut [u8], n: usize) -> usize {
    let records = n.div_ceil(MAX_RECORD_PAYLOAD);
    for i in 0..records {
        let len = (n - i * MAX_RECORD_PAYLOAD).min(MAX_RECORD_PAYLOAD);
        let h = i * RECORD_HEADER_LEN;
        buf[h..h + RECORD_HEADER_LEN].copy_from_slice(&app_record_header(len));
    }
    n + records * RECORD_HEADER_LEN
}

/// The framed stream of [`write_record_headers`] as header and payload
/// slices, its first `skip` bytes left out (already written); returns how
/// many of `out` it filled.
fn record_slices<'b>(
    buf: &'b [u8],
    n: usize,
    mut skip: usize,
    out: &mut [IoSlice<'b>; 2 * RECORDS_PER_BUF],
) -> usize {
    let mut k = 0;
    for i in 0..n.div_ceil(MAX_RECORD_PAYLOAD) {
        let len = (n - i * MAX_RECORD_PAYLOAD).min(MAX_RECORD_PAYLOAD);
        let h = i * RECORD_HEADER_LEN;
        let at = DOWN_OFF + i * MAX_RECORD_PAYLOAD;
        for seg in [&buf[h..h + RECORD_HEADER_LEN], &buf[at..at + len]] {
            if skip >= seg.len() {
                skip -= seg.len();
                continue;
            }
            out[k] = IoSlice::new(&seg[skip..]);
            skip = 0;
            k += 1;
        }
    }
    k
}

#[cfg(test)]
mod keys_size {
    /// The boxed keys stay in the allocation class they had before the
    /// balancer's lease joined them (jemalloc classes: …, 640, 768, …).
    #[test]
    fn the_keys_box_keeps_its_size_class() {
        let n = std::mem::size_of::<super::Keys>();
        let without = n - std::mem::size_of::<Option<crate::net::balance::Lease>>();
        let class = |n: usize| {
            [512usize, 640, 768, 896, 1024]
                .into_iter()
                .find(|c| n <= *c)
        };
        assert_eq!(
            class(n),
            class(without),
            "Keys is {n} bytes (was {without})"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mtgate_proto::faketls::RecordStripper;

    #[test]
    fn records_are_framed_without_moving_the_payload() {
        for n in [
            1,
            100,
            MAX_RECORD_PAYLOAD,
            MAX_RECORD_PAYLOAD + 1,
            3 * MAX_RECORD_PAYLOAD + 7,
            RECORDS_PER_BUF * MAX_RECORD_PAYLOAD,
        ] {
            let mut buf = vec![0u8; crate::pool::BUF_SIZE];
            let payload: Vec<u8> = (0..n).map(|i| (i * 7 + i / 251) as u8).collect();
            buf[DOWN_OFF..DOWN_OFF + n].copy_from_slice(&payload);
            let total = write_record_headers(&mut buf, n);
            assert_eq!(
                total,
                n + n.div_ceil(MAX_RECORD_PAYLOAD) * RECORD_HEADER_LEN
            );
            // Any partial write leaves slices that continue the same stream.
            let full: Vec<u8> = {
                let mut out = [IoSlice::new(&[]); 2 * RECORDS_PER_BUF];
                let k = record_slices(&buf, n, 0, &mut out);
                out[..k].iter().flat_map(|s| s.iter().copied()).collect()
            };
            assert_eq!(full.len(), total);
            for skip in [0, 1, 4, 5, 6, total / 2, total - 1] {
                let mut out = [IoSlice::new(&[]); 2 * RECORDS_PER_BUF];
                let k = record_slices(&buf, n, skip, &mut out);
                let rest: Vec<u8> = out[..k].iter().flat_map(|s| s.iter().copied()).collect();
                assert_eq!(rest, full[skip..], "n {n} skip {skip}");
            }
            let mut framed = full.clone();
            let got = RecordStripper::new().strip_in_place(&mut framed).unwrap();
            assert_eq!(&framed[..got], &payload[..]);
        }
    }
}
