//! The multiplexer: many client sessions over one link connection.
//!
//! A [`Mux`] owns one established link (its carriage and the two record
//! halves) through two tasks: the writer gathers the frames every stream
//! sends into records (several frames a record, several records a write),
//! seals them and rekeys on the configured volume or time; the reader
//! opens records and hands each frame to its stream without ever waiting
//! on one. Each stream has its own credit both ways
//! ([`frame::INITIAL_WINDOW`]): a side sends data only within the credit
//! the other gave back, so a session whose client reads slowly holds at most
//! one window of bytes here and never stalls the others. A peer that sends
//! past its credit has its stream reset.
//!
//! A stream is bound to a local TCP socket by [`Stream::pump`]: on the exit
//! the DC connection, on the bridge one end of a loopback pair whose other
//! end the session relays on as on any DC connection.
//!
//! The link ends on a record that fails to open (tampered, replayed,
//! reordered), a frame that breaks the rules, a carriage error, or silence
//! past [`IDLE`] (each side pings every [`KEEPALIVE`]); every stream on it
//! is then reset.

mod wire;

use super::config::Rekey;
use super::stats::LinkStats;
use mtgate_proto::link::frame::{Frame, Reason, INITIAL_WINDOW, MAX_DATA};
use mtgate_proto::link::record::{Opener, Sealer};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Semaphore};

/// Each side pings this often.
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// A link silent this long is dead.
pub const IDLE: Duration = Duration::from_secs(45);
/// Frames queued for the writer before senders wait.
const OUT_QUEUE: usize = 1024;
/// Credit is given back once this much was delivered.
const GRANT_AT: usize = INITIAL_WINDOW as usize / 4;
/// Most credit a peer may pile up on one stream.
const MAX_CREDIT: usize = 16 << 20;
/// Bytes of sealed records gathered into one write.
const WRITE_BATCH: usize = 64 * 1024;

/// What a link's carriage must be: a byte stream both ways.
pub trait Carriage: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Carriage for T {}

/// What a stream hears from the link.
#[derive(Debug)]
enum Inbound {
    Opened,
    Data(Vec<u8>),
    Fin,
    Reset(Reason),
}

struct Slot {
    tx: mpsc::UnboundedSender<Inbound>,
    /// Bytes this side may still send.
    credit: Semaphore,
    /// Bytes received and not yet given back as credit.
    outstanding: AtomicUsize,
}

/// What a bridge opens a stream for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opening {
    /// A connection to DC index `dc` (the bridge runs the session).
    Dc(i16),
    /// A client's raw connection (the exit runs the session).
    Client(std::net::SocketAddr),
}

/// Called on the exit for every stream a bridge opens.
pub trait OnOpen: Send + Sync + 'static {
    fn open(&self, stream: Stream, what: Opening);
}

struct Inner {
    out: mpsc::Sender<Vec<u8>>,
    streams: Mutex<HashMap<u32, Arc<Slot>>>,
    next: AtomicU32,
    max_streams: usize,
    /// Why the link ended (`None` while it is up).
    closed: watch::Sender<Option<String>>,
    /// Close once the last stream ends (a replaced bridge's links).
    retiring: std::sync::atomic::AtomicBool,
    stats: Arc<LinkStats>,
    /// Where rekeys are told (logs, the audit trail), as whose link.
    events: super::Events,
    role: &'static str,
    peer: std::net::SocketAddr,
}

impl Inner {
    /// A direction moved to its next key (`out`: ours; `in`: the peer's).
    fn rekeyed(&self, direction: &'static str) {
        self.stats.rekeyed();
        super::emit(
            &self.events,
            super::LinkEvent::Rekeyed {
                role: self.role,
                peer: self.peer.to_string(),
                direction,
            },
        );
    }

    fn close(&self, why: &str) {
        // Under the streams' lock, so no stream registers after the drain
        // on a link that is already closed (it would wait for an answer
        // nobody sends).
        let Ok(mut m) = self.streams.lock() else {
            return;
        };
        let first = self.closed.send_if_modified(|c| {
            if c.is_none() {
                *c = Some(why.to_owned());
                true
            } else {
                false
            }
        });
        if first {
            let slots: Vec<_> = m.drain().map(|(_, s)| s).collect();
            drop(m);
            for s in slots {
                let _ = s.tx.send(Inbound::Reset(Reason::Aborted));
                s.credit.close();
            }
        }
    }

    fn slot(&self, id: u32) -> Option<Arc<Slot>> {
        self.streams.lock().ok()?.get(&id).cloned()
    }

    fn remove(&self, id: u32) {
        let left = match self.streams.lock() {
            Ok(mut m) => {
                m.remove(&id);
                m.len()
            }
            Err(_) => 0,
        };
        if left == 0 && self.retiring.load(Relaxed) {
            self.close("retired");
        }
    }

    fn register(&self, id: u32) -> Result<(Arc<Slot>, mpsc::UnboundedReceiver<Inbound>), Reason> {
        let (tx, rx) = mpsc::unbounded_channel();
        let slot = Arc::new(Slot {
            tx,
            credit: Semaphore::new(INITIAL_WINDOW as usize),
            outstanding: AtomicUsize::new(0),
        });
        let mut m = self.streams.lock().map_err(|_| Reason::Aborted)?;
        if self.closed.borrow().is_some() {
            return Err(Reason::Aborted);
        }
        if m.len() >= self.max_streams {
            return Err(Reason::Busy);
        }
        if m.contains_key(&id) {
            return Err(Reason::Protocol);
        }
        m.insert(id, slot.clone());
        Ok((slot, rx))
    }

    fn send_now(&self, f: Frame<'_>) {
        let mut v = Vec::with_capacity(f.wire_len());
        f.encode(&mut v);
        let _ = self.out.try_send(v);
    }

    async fn send(&self, f: Frame<'_>) -> Result<(), ()> {
        let mut v = Vec::with_capacity(f.wire_len());
        f.encode(&mut v);
        self.out.send(v).await.map_err(|_| ())
    }
}

/// How a link runs, besides its carriage and keys.
pub struct Setup {
    /// The other node's address.
    pub peer: std::net::SocketAddr,
    pub rekey: Rekey,
    /// Streams the other side may open at once (the exit's limit).
    pub max_streams: usize,
    /// Called for each stream the other side opens (the exit).
    pub on_open: Option<Arc<dyn OnOpen>>,
    pub stats: Arc<LinkStats>,
    /// Where rekeys are told, and this side's role (`bridge`, `exit`).
    pub events: super::Events,
    pub role: &'static str,
}

/// One link connection. Cheap to clone.
#[derive(Clone)]
pub struct Mux {
    inner: Arc<Inner>,
    peer: std::net::SocketAddr,
}

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the link is down: {0}")]
    Closed(String),
    #[error("the exit refused the stream: {}", .0.label())]
    Refused(Reason),
    #[error("no answer from the exit within {0:?}")]
    Timeout(Duration),
}

impl Mux {
    /// Runs an established link over `carriage`: `sealer` for what this
    /// side sends, `opener` for what it reads.
    pub fn start<C: Carriage>(carriage: C, sealer: Sealer, opener: Opener, setup: Setup) -> Mux {
        let Setup {
            peer,
            rekey,
            max_streams,
            on_open,
            stats,
            events,
            role,
        } = setup;
        let (out, rx) = mpsc::channel(OUT_QUEUE);
        let (closed, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            out,
            streams: Mutex::new(HashMap::new()),
            next: AtomicU32::new(1),
            max_streams,
            closed,
            retiring: Default::default(),
            stats,
            events,
            role,
            peer,
        });
        let (rd, wr) = tokio::io::split(carriage);
        let w = inner.clone();
        tokio::spawn(async move {
            let r = wire::writer(&w, wr, sealer, rx, rekey).await;
            w.close(&r.err().unwrap_or_else(|| "closed".into()));
        });
        let r = inner.clone();
        tokio::spawn(async move {
            let res = wire::reader(&r, rd, opener, on_open).await;
            r.close(&res.err().unwrap_or_else(|| "closed".into()));
        });
        Mux { inner, peer }
    }

    /// The other node's address.
    pub fn peer(&self) -> std::net::SocketAddr {
        self.peer
    }

    /// Why the link ended, once it has.
    pub fn closed(&self) -> Option<String> {
        self.inner.closed.borrow().clone()
    }

    /// Waits until the link ends; why.
    pub async fn wait_closed(&self) -> String {
        let mut rx = self.inner.closed.subscribe();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                return "closed".into();
            }
        }
    }

    /// Ends the link now.
    pub fn close(&self, why: &str) {
        self.inner.close(why);
    }

    /// Lets the streams on it finish, then closes it.
    pub fn retire(&self) {
        self.inner.retiring.store(true, Relaxed);
        if self.streams() == 0 {
            self.inner.close("retired");
        }
    }

    /// Streams open on it.
    pub fn streams(&self) -> usize {
        self.inner.streams.lock().map_or(0, |m| m.len())
    }

    /// Opens a stream for `what` (bridge side) and waits for the exit's
    /// answer.
    pub async fn open(&self, what: Opening, wait: Duration) -> Result<Stream, OpenError> {
        if let Some(why) = self.closed() {
            return Err(OpenError::Closed(why));
        }
        let id = self.inner.next.fetch_add(1, Relaxed);
        let (slot, mut rx) = self.inner.register(id).map_err(|r| match self.closed() {
            Some(why) => OpenError::Closed(why),
            None => OpenError::Refused(r),
        })?;
        let mut stream = Stream {
            id,
            slot,
            rx: None,
            inner: self.inner.clone(),
        };
        let frame = match what {
            Opening::Dc(dc) => Frame::Open { stream: id, dc },
            Opening::Client(addr) => Frame::Client { stream: id, addr },
        };
        if self.inner.send(frame).await.is_err() {
            return Err(OpenError::Closed("writer gone".into()));
        }
        match tokio::time::timeout(wait, rx.recv()).await {
            Ok(Some(Inbound::Opened)) => {
                stream.rx = Some(rx);
                Ok(stream)
            }
            Ok(Some(Inbound::Reset(r))) => Err(OpenError::Refused(r)),
            Ok(_) => Err(OpenError::Closed(
                self.closed().unwrap_or_else(|| "closed".into()),
            )),
            Err(_) => {
                self.inner.send_now(Frame::Reset {
                    stream: id,
                    reason: Reason::Aborted,
                });
                Err(OpenError::Timeout(wait))
            }
        }
    }
}

/// One session's stream on a link.
pub struct Stream {
    id: u32,
    slot: Arc<Slot>,
    rx: Option<mpsc::UnboundedReceiver<Inbound>>,
    inner: Arc<Inner>,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.inner.remove(self.id);
    }
}

impl Stream {
    /// Tells the bridge its stream is open (exit side).
    pub async fn opened(&self) -> bool {
        self.inner
            .send(Frame::Opened { stream: self.id })
            .await
            .is_ok()
    }

    /// Refuses the stream (exit side).
    pub fn refuse(self, reason: Reason) {
        self.inner.send_now(Frame::Reset {
            stream: self.id,
            reason,
        });
    }

    /// Relays between the stream and `tcp` until both directions end, or
    /// either side aborts (then the other hears a reset).
    pub async fn pump(mut self, tcp: TcpStream) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let (rd, mut wr) = tcp.into_split();
        let (id, slot, inner) = (self.id, &self.slot, &self.inner);
        // The read buffer exists only while bytes are coming: an idle
        // session on a link holds none.
        let up = async {
            loop {
                rd.readable().await.map_err(|_| ())?;
                let mut buf = vec![0u8; MAX_DATA];
                loop {
                    let n = match rd.try_read(&mut buf) {
                        Ok(0) => return inner.send(Frame::Fin { stream: id }).await,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => return Err(()),
                    };
                    // n ≤ MAX_DATA fits a u32.
                    slot.credit
                        .acquire_many(n as u32)
                        .await
                        .map_err(|_| ())?
                        .forget();
                    inner
                        .send(Frame::Data {
                            stream: id,
                            bytes: &buf[..n],
                        })
                        .await?;
                    inner.stats.add_up(n);
                }
            }
        };
        let down = async {
            let mut delivered = 0usize;
            while let Some(m) = rx.recv().await {
                match m {
                    Inbound::Data(v) => {
                        wr.write_all(&v).await.map_err(|_| ())?;
                        inner.stats.add_down(v.len());
                        delivered += v.len();
                        if delivered >= GRANT_AT {
                            slot.outstanding.fetch_sub(delivered, Relaxed);
                            // delivered < 2 × INITIAL_WINDOW fits a u32.
                            inner
                                .send(Frame::Window {
                                    stream: id,
                                    credit: delivered as u32,
                                })
                                .await?;
                            delivered = 0;
                        }
                    }
                    Inbound::Fin => {
                        let _ = wr.shutdown().await;
                        return Ok(());
                    }
                    Inbound::Reset(_) => return Err(()),
                    Inbound::Opened => {}
                }
            }
            Err(())
        };
        if tokio::try_join!(up, down).is_err() {
            inner.send_now(Frame::Reset {
                stream: id,
                reason: Reason::Aborted,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mtgate_proto::link::negotiate::Cipher;
    use zeroize::Zeroizing;

    /// A stream asked for on a link that closed is refused at once, never
    /// left waiting for an answer nobody sends.
    #[tokio::test]
    async fn no_stream_waits_on_a_closed_link() {
        let (a, _b) = tokio::io::duplex(1024);
        let key = || Zeroizing::new([9u8; 32]);
        let mux = Mux::start(
            a,
            Sealer::new(Cipher::Aes256Gcm, key()),
            Opener::new(Cipher::Aes256Gcm, key()),
            Setup {
                peer: "127.0.0.1:1".parse().expect("addr"),
                rekey: Rekey::default(),
                max_streams: 8,
                on_open: None,
                stats: Arc::default(),
                events: Default::default(),
                role: "bridge",
            },
        );
        mux.close("test");
        let t = std::time::Instant::now();
        let r = mux.open(Opening::Dc(2), Duration::from_secs(10)).await;
        assert!(matches!(r, Err(OpenError::Closed(_))), "{:?}", r.err());
        assert!(t.elapsed() < Duration::from_secs(1));
        // Registering directly on the closed link is refused too.
        assert!(mux.inner.register(99).is_err());
        assert_eq!(mux.streams(), 0);
    }
}
